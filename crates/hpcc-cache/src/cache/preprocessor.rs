//! Preprocessor mode: the key is the common part ([`super::key`]), the arguments without those the
//! preprocessor consumes (include directories, `-include`, `-D`/`-U` and the like), and the output
//! of `compiler -E` with the project root rewritten. For a language the compiler does not
//! preprocess (`.i`, `.ii`, `.s`) the source's content stands in for that output.
//!
//! It serves `mode = "preprocessor"`, and those languages in either mode. Options that change what
//! `-E` prints (`-P`, `-dM` and kin, `-fdirectives-only`: [`alters_preprocessed_output`]) send a
//! compile to direct mode instead, since the output would no longer stand for the compile.
//!
//! A miss is stored only if neither the source nor any file the `-E` line markers name changed
//! after the lookup began: the compile may have read other content than the `-E` run that made
//! the key.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::SystemTime;

use anyhow::{Context, Result};
use hpcc_core::args::{NotCacheable, Role};
use hpcc_core::entry::{ResultEntry, SectionKind};
use hpcc_store::{Fetched, Kind};

use super::runner::RunWith;
use super::{Job, Outcome, Prepared};
use crate::includes;

impl Job<'_> {
    pub(super) fn run_preprocessor(&self, prepared: &Prepared) -> Result<Outcome> {
        let invocation = self.invocation;
        let mut key = prepared.common_key.clone();
        key.field("mode", b"preprocessor");
        Self::hash_args(
            &mut key,
            &prepared.rewriter,
            invocation.key_args().filter(|arg| {
                !matches!(
                    arg.role,
                    Role::IncludeDir | Role::IncludeFile | Role::Define | Role::Preprocessor
                )
            }),
        );
        let started = SystemTime::now();
        let mut inputs_read = Vec::new();
        let mut refused = None;
        let mut preprocessed_text = None;
        if invocation.language.is_preprocessed_by_compiler() {
            let preprocessed = self
                .caller
                .command(self.compiler)
                .args(&prepared.injected)
                .args(invocation.preprocessor_words())
                .arg("-E")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .run_with(self.runner)
                .with_context(|| format!("running {:?} -E", self.compiler))?;
            if !preprocessed.status.success() {
                anyhow::bail!("the preprocessor failed");
            }
            if self.caller.var("SOURCE_DATE_EPOCH").is_none()
                && memchr::memmem::find(&preprocessed.stdout, b"__TIMESTAMP__").is_some()
            {
                // Cannot happen after expansion; kept as a guard against odd preprocessors.
                anyhow::bail!("time macro survived preprocessing");
            }
            key.field(
                "preprocessed",
                &prepared.rewriter.rewrite(&preprocessed.stdout),
            );
            inputs_read = line_marker_files(&preprocessed.stdout);
            if includes::uses_incbin(&preprocessed.stdout) {
                refused = Some(NotCacheable::Incbin);
            }
            preprocessed_text = Some(preprocessed.stdout);
        } else {
            let mut buffer = Vec::new();
            let source = self.cwd.join(&invocation.source);
            let (_, digest) = includes::hash_file(&source, &mut buffer)
                .with_context(|| format!("reading source {source:?}"))?;
            if includes::uses_incbin(&buffer) {
                refused = Some(NotCacheable::Incbin);
            }
            key.digest("source-content", &digest);
        }
        let result_key = key.finish();
        let mut corrupt = false;
        match self.fetch(Kind::Result, &result_key)? {
            Fetched::Hit(bytes) => match ResultEntry::decode(&bytes) {
                Ok(result) => {
                    if self.restore(&result, prepared)? {
                        return Ok(Outcome::PreprocessorHit);
                    }
                }
                Err(_) => {
                    corrupt = true;
                    self.discard(Kind::Result, &result_key);
                }
            },
            Fetched::Corrupt => corrupt = true,
            Fetched::Miss => {}
        }
        if self.lookup_only {
            return Ok(Outcome::NotFound {
                key: Some(result_key),
                corrupt,
            });
        }
        let output = self.execute(prepared, &[], preprocessed_text)?;
        let exit = output.status.code().unwrap_or(1);
        let mut result = ResultEntry::default();
        result.set(SectionKind::Stdout, output.stdout);
        result.set(SectionKind::Stderr, output.stderr);
        let mut not_stored = None;
        if exit != 0 {
            not_stored = Some(NotCacheable::CompileFailed);
        } else if refused.is_some() {
            not_stored = refused;
        } else if let Some(path) = includes::changed_since(
            std::iter::once(self.cwd.join(&invocation.source))
                .chain(inputs_read.iter().map(|path| self.cwd.join(path))),
            started,
        ) {
            // The compile may have read other content than the `-E` run that made the key.
            tracing::debug!(?path, "input changed during the compile; not storing");
            not_stored = Some(NotCacheable::InputChanged(path.display().to_string()));
        } else if let Err(error) = self
            .collect_outputs(&mut result, prepared)
            .and_then(|()| self.put(Kind::Result, &result_key, &result.encode()))
        {
            tracing::warn!("not storing the result: {error:#}");
            crate::record_error("store");
        }
        self.replay(&result);
        Ok(Outcome::Miss {
            exit,
            not_stored,
            corrupt,
        })
    }
}

/// Whether `word` makes `-E` print something other than the translation unit the compile
/// sees: no line markers (`-P`), only macro definitions (`-dM`, `-dD`, ...), or unexpanded
/// macros (`-fdirectives-only`).
pub(super) fn alters_preprocessed_output(word: &OsStr) -> bool {
    let bytes = word.as_bytes();
    bytes == b"-P"
        || bytes == b"-fdirectives-only"
        || bytes == b"-fpreprocessed"
        || (bytes.len() > 2
            && bytes.starts_with(b"-d")
            && bytes[2..].iter().all(|byte| b"MDNIU".contains(byte)))
}

/// The files named by `# <line> "<file>"` markers in preprocessed output, without
/// duplicates and without the `<built-in>`-style pseudo files.
pub(super) fn line_marker_files(preprocessed: &[u8]) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    let mut files = Vec::new();
    for line in preprocessed.split(|&byte| byte == b'\n') {
        let Some(rest) = line.strip_prefix(b"# ") else {
            continue;
        };
        let Some(open) = memchr::memchr(b'"', rest) else {
            continue;
        };
        let name = &rest[open + 1..];
        let Some(close) = memchr::memrchr(b'"', name) else {
            continue;
        };
        let name = &name[..close];
        if name.is_empty() || name.starts_with(b"<") || name.contains(&b'\\') {
            continue;
        }
        if seen.insert(name.to_vec()) {
            files.push(PathBuf::from(OsStr::from_bytes(name)));
        }
    }
    files
}
