//! Direct mode, the default: the key is the common part ([`super::key`]), the arguments (option
//! names and root-rewritten values; not the source, the output, `-MF`, `-MT` or `-MQ`, which a hit
//! reproduces for itself) and the source's content. It names a manifest ([`hpcc_core::manifest`])
//! of the newest header sets seen under it; each entry names a result whose key is the direct key
//! and the digest of every file the entry records. A hit needs one entry whose files are all
//! unchanged and whose absent names are all still absent ([`crate::includes::verify`]).
//!
//! A miss compiles with a full list of the files it reads: `-MD -MF <tmp>` added when no
//! dependency file was asked for, the caller's own file under `-MD`, and under `-MMD` (user headers
//! only) an extra preprocessor-only `-M` pass (`dependency_pass`). [`crate::deps::parse_list`]
//! reads the list and [`crate::includes::record`] turns it into a manifest entry, or refuses to
//! store the result (counted as `uncacheable.<reason>`):
//!
//! - a file uses `__DATE__`, `__TIME__` or `__TIMESTAMP__` (`SOURCE_DATE_EPOCH` pins the first two
//!   for GCC; Clang honours it only from version 16, so for Clang they count as unpinned);
//! - a file uses `.incbin`, whose file no dependency list names;
//! - a file changed after the compile started (less a small trust margin) or while it was hashed.
//!
//! The search directories that absent names are recorded against are the command line's `-I`
//! family and the compiler's own list (`search_dirs`, cached per identity and flags by
//! [`crate::identity`]). A failure to store is logged and counted (`errors.store`) and changes
//! nothing else: the compile's outputs and exit code stand.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use hpcc_core::args::{DepScope, NotCacheable, Role};
use hpcc_core::digest::KeyHasher;
use hpcc_core::entry::{ResultEntry, SectionKind};
use hpcc_core::manifest::Manifest;
use hpcc_store::{Fetched, Kind};

use super::restore::temp_sibling;
use super::runner::RunWith;
use super::{Job, Outcome, Prepared, PreparedManifest};
use crate::deps;
use crate::identity;
use crate::includes::{self, Recorded};

impl Job<'_> {
    pub(super) fn run_direct(&self, prepared: &Prepared) -> Result<Outcome> {
        let invocation = self.invocation;
        let root = prepared.root.as_deref();
        let mut key = prepared.common_key.clone();
        key.field("mode", b"direct");
        Self::hash_args(&mut key, &prepared.rewriter, invocation.key_args());
        let source_path = self.cwd.join(&invocation.source);
        let mut contents = includes::Contents::new(self.cache_dir).with_hot(self.hot);
        let source_digest = contents
            .digest_of_path(&source_path)
            .with_context(|| format!("reading source {source_path:?}"))?;
        key.digest("source-content", &source_digest);
        let direct_key = key.finish();
        if let Some(fields) = key.explanation() {
            tracing::debug!(key = %direct_key.to_hex(), ?fields, "direct key");
        }
        let source_stored = includes::store_path(&source_path, self.cwd, root);

        let mut corrupt = false;
        let hot = self.hot.is_some();
        let prepared_manifest = match self.fetch(Kind::Manifest, &direct_key)? {
            Fetched::Hit(bytes) => {
                match self
                    .manifests
                    .and_then(|cache| cache.get(&direct_key, &bytes, root))
                {
                    Some(known) => known,
                    None => match Manifest::decode(&bytes) {
                        Ok(manifest) => {
                            let decoded = Arc::new(PreparedManifest::new(manifest, root, hot));
                            if let Some(cache) = self.manifests {
                                cache.insert(direct_key, &bytes, &decoded);
                            }
                            decoded
                        }
                        Err(_) => {
                            corrupt = true;
                            self.discard(Kind::Manifest, &direct_key);
                            Arc::new(PreparedManifest::new(Manifest::default(), root, hot))
                        }
                    },
                }
            }
            Fetched::Corrupt => {
                corrupt = true;
                Arc::new(PreparedManifest::new(Manifest::default(), root, hot))
            }
            Fetched::Miss => Arc::new(PreparedManifest::new(Manifest::default(), root, hot)),
        };
        let entries = &prepared_manifest.manifest.entries;
        let mut digests = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            let resolved;
            let paths = match prepared_manifest.paths.get(index) {
                Some(paths) => paths,
                None => {
                    resolved = includes::EntryPaths::resolve(entry, root, hot);
                    &resolved
                }
            };
            // Remembering digests only pays when several entries may check the same files.
            let remember = (entries.len() > 1).then_some(&mut digests);
            if !includes::verify(entry, paths, Some(&source_stored), &mut contents, remember)? {
                continue;
            }
            match self.fetch(Kind::Result, &entry.result)? {
                Fetched::Hit(bytes) => match ResultEntry::decode(&bytes) {
                    Ok(result) => {
                        if self.restore(&result, prepared)? {
                            contents.commit_hot();
                            return Ok(Outcome::DirectHit);
                        }
                    }
                    Err(_) => {
                        corrupt = true;
                        self.discard(Kind::Result, &entry.result);
                    }
                },
                Fetched::Corrupt => corrupt = true,
                Fetched::Miss => {}
            }
        }

        contents.commit_hot();
        if self.lookup_only {
            return Ok(Outcome::NotFound {
                key: Some(direct_key),
                corrupt,
            });
        }
        let mut manifest = Arc::try_unwrap(prepared_manifest)
            .map(|prepared| prepared.manifest)
            .unwrap_or_else(|shared| shared.manifest.clone());

        // Miss: compile, asking for a full dependency list to learn which files were read.
        let started = SystemTime::now();
        let own_dep_file = match &invocation.dep {
            Some(dep) if dep.scope == DepScope::All => None,
            _ => Some(temp_sibling(&self.cwd.join(&invocation.output), "d")),
        };
        let mut extra = Vec::new();
        if invocation.dep.is_none() {
            if let Some(path) = &own_dep_file {
                extra.extend([
                    OsString::from("-MD"),
                    OsString::from("-MF"),
                    path.clone().into(),
                ]);
            }
        }
        let output = match self.execute(prepared, &extra, None) {
            Ok(output) => output,
            Err(error) => {
                if let Some(path) = &own_dep_file {
                    let _ = fs::remove_file(path);
                }
                return Err(error);
            }
        };
        let exit = output.status.code().unwrap_or(1);
        let mut result = ResultEntry::default();
        result.set(SectionKind::Stdout, output.stdout);
        result.set(SectionKind::Stderr, output.stderr);
        if exit != 0 {
            if let Some(path) = &own_dep_file {
                let _ = fs::remove_file(path);
            }
            self.replay(&result);
            return Ok(Outcome::Miss {
                exit,
                not_stored: Some(NotCacheable::CompileFailed),
                corrupt,
            });
        }
        let dep_list_path = own_dep_file
            .clone()
            .or_else(|| invocation.dep.as_ref().map(|dep| self.cwd.join(&dep.path)));
        let stored = (|| -> Result<Option<NotCacheable>> {
            // -MMD lists user headers only: learn the full list with a preprocessor-only pass.
            // Inside this closure, as the compile already ran: a failure only skips storing.
            if let (Some(dep), Some(path)) = (&invocation.dep, &own_dep_file) {
                if dep.scope == DepScope::UserOnly {
                    self.dependency_pass(&prepared.injected, path)?;
                }
            }
            let dep_text = match &dep_list_path {
                Some(path) => {
                    fs::read(path).with_context(|| format!("reading dependency list {path:?}"))?
                }
                None => return Ok(Some(NotCacheable::NoOutput)),
            };
            let parsed = deps::parse_list(&dep_text)?;
            let search_dirs = self.search_dirs(prepared)?;
            // GCC (since 7) honours SOURCE_DATE_EPOCH; Clang only from 16, so for Clang the
            // macros are treated as unpinned rather than trusting a version guess.
            let time_pinned =
                self.caller.var("SOURCE_DATE_EPOCH").is_some() && !prepared.identity.is_clang;
            let recorded = includes::record(
                &includes::RecordInputs {
                    files: &parsed,
                    search_dirs: &search_dirs,
                    cwd: self.cwd,
                    root,
                    compile_started: started,
                    time_pinned,
                },
                &mut includes::Contents::new(self.cache_dir),
            )?;
            let mut entry = match recorded {
                Recorded::Entry(entry) => entry,
                Recorded::TimeMacros => return Ok(Some(NotCacheable::TimeMacros)),
                Recorded::Incbin => return Ok(Some(NotCacheable::Incbin)),
                Recorded::Raced(path) => {
                    tracing::debug!(?path, "input changed during the compile; not storing");
                    return Ok(Some(NotCacheable::InputChanged(path.display().to_string())));
                }
            };
            entry.files.retain(|file| file.path != source_stored);
            let mut result_key = KeyHasher::new();
            result_key.digest("direct", &direct_key);
            for file in &entry.files {
                result_key.digest("file", &file.digest);
            }
            entry.result = result_key.finish();
            self.collect_outputs(&mut result, prepared)?;
            self.put(Kind::Result, &entry.result, &result.encode())?;
            manifest.add(entry);
            self.put(Kind::Manifest, &direct_key, &manifest.encode())?;
            Ok(None)
        })();
        if let Some(path) = &own_dep_file {
            let _ = fs::remove_file(path);
        }
        self.replay(&result);
        let not_stored = match stored {
            Ok(reason) => reason,
            Err(error) => {
                tracing::warn!("not storing the result: {error:#}");
                crate::record_error("store");
                None
            }
        };
        Ok(Outcome::Miss {
            exit,
            not_stored,
            corrupt,
        })
    }

    /// Writes the full dependency list to `path` with a preprocessor-only run.
    pub(super) fn dependency_pass(&self, injected: &[OsString], path: &Path) -> Result<()> {
        let status = self
            .caller
            .command(self.compiler)
            .args(injected)
            .args(self.invocation.preprocessor_words())
            .arg("-M")
            .arg("-MF")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .run_with(self.runner)
            .map(|output| output.status)
            .with_context(|| format!("running {:?} -M", self.compiler))?;
        anyhow::ensure!(status.success(), "dependency pass failed: {status}");
        Ok(())
    }

    /// `-I`-style directories from the command line, then the compiler's own list.
    pub(super) fn search_dirs(&self, prepared: &Prepared) -> Result<Vec<PathBuf>> {
        let invocation = self.invocation;
        let mut dirs = Vec::new();
        let mut system_words = Vec::new();
        let mut key = KeyHasher::new();
        key.digest("compiler", &prepared.identity.digest)
            .field("language", invocation.language.gnu_name().as_bytes());
        for arg in &invocation.args {
            match arg.role {
                Role::IncludeDir => {
                    if let Some(value) = &arg.value {
                        dirs.push(PathBuf::from(value));
                    }
                }
                Role::Preprocessor | Role::Codegen | Role::Debug => {
                    for word in &arg.words {
                        key.field("word", word.as_bytes());
                    }
                    system_words.extend(arg.words.iter().cloned());
                }
                _ => {}
            }
        }
        for name in ["CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH"] {
            if let Some(value) = self.caller.var(name) {
                // As a digest, so that explaining a key never prints an environment value.
                key.digest(name, &hpcc_core::digest::Digest::of(value.as_bytes()));
            }
        }
        let language = match invocation.language {
            hpcc_core::args::Language::PreprocessedC => "c",
            hpcc_core::args::Language::PreprocessedCxx => "c++",
            other => other.gnu_name(),
        };
        let system = identity::system_include_dirs(
            self.runner,
            self.caller,
            self.compiler,
            self.cache_dir,
            &key.finish(),
            &system_words,
            language,
        )?;
        dirs.extend(system);
        Ok(dirs)
    }
}
