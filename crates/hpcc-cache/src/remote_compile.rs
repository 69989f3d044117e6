//! What a cache miss needs to be compiled on the farm instead of here: which invocations
//! qualify, the flags a worker is sent, and the path rewriting between this machine and the
//! worker.
//!
//! An invocation qualifies ([`ineligible`] says why not) when a GCC-style driver a worker runs
//! compiles C or C++ to an object, writing nothing besides the object and its dependency file (no
//! `.dwo`, no `.gcno`) and reading nothing besides its source and headers (no profiles, no
//! plugins). The worker is sent the code-generation and diagnostic options only
//! ([`worker_flags`]); everything the preprocessor needs stays here.
//!
//! The client preprocesses (with the caller's environment, directory and headers), so the
//! worker needs only the image's compiler proper. The project root is rewritten to `/src` in
//! the line markers of the preprocessed text (the worker maps `/src` to `.` in what it
//! writes), and back to the root in the diagnostics it returns, so messages name files as a
//! local compile would.
//!
//! A result compiled by the farm is only ever stored under a key that names its image (see
//! `cache::key`), never under one that stands for the local compiler.
//!
//! The farm client itself (async, with TLS and tokens) lives in the daemon; this module and
//! [`RemoteCompiler`] are the synchronous boundary the compile flow calls.

use std::ffi::OsString;

use hpcc_core::args::{CompileInvocation, Family, Language, OutputKind, Role};

/// The prefix the project root becomes in a remote job.
pub const REMOTE_ROOT: &[u8] = b"/src";

/// Drivers a worker accepts (the image's compilers).
const DRIVERS: &[&str] = &["gcc", "g++", "cc", "c++", "clang", "clang++"];

/// A compile for the farm: a preprocessed source and the flags that compile it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJob {
    /// The driver's name (`gcc`, `g++`, `clang`, ...), run from the image.
    pub driver: String,
    /// `cpp-output` or `c++-cpp-output`.
    pub language: String,
    /// The compile flags: no source, output, `-c`, preprocessor or dependency options.
    pub flags: Vec<String>,
    /// The preprocessed source, root rewritten to [`REMOTE_ROOT`].
    pub source: Vec<u8>,
}

/// What the farm made of a [`RemoteJob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteResult {
    /// The compiler's exit code on the worker.
    pub exit: i32,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr, paths as the worker saw them.
    pub stderr: Vec<u8>,
    /// The object, when `exit` is 0.
    pub object: Option<Vec<u8>>,
}

/// Compiles jobs elsewhere. Implemented by the daemon's farm client.
pub trait RemoteCompiler {
    /// The toolchain image digest: results of this compiler are keyed by it.
    fn image(&self) -> &str;
    /// Paranoid mode: no cache entry is read or written on this machine.
    fn paranoid(&self) -> bool;
    /// Runs `job`. An `Err` is an infrastructure failure (no token, farm down, refusal,
    /// timeout): the caller then compiles locally. A failed compile is an `Ok`.
    fn compile(&self, job: RemoteJob) -> Result<RemoteResult, String>;
}

/// Why an invocation is compiled here even with a farm configured, or `None` if it qualifies.
pub fn ineligible(driver: &str, invocation: &CompileInvocation) -> Option<&'static str> {
    if invocation.family != Family::Gnu {
        return Some("not a GCC-style driver");
    }
    if !DRIVERS.contains(&driver) {
        return Some("the driver is not one a worker runs");
    }
    if !matches!(invocation.language, Language::C | Language::Cxx) {
        return Some("only C and C++ sources are compiled remotely");
    }
    if invocation.output_kind != OutputKind::Object {
        return Some("only objects (-c) are compiled remotely");
    }
    if invocation.split_dwarf || invocation.coverage {
        return Some("the compile writes files besides the object");
    }
    if !invocation.content_inputs.is_empty() {
        return Some("the compile reads files besides its source (profiles, plugins)");
    }
    for arg in &invocation.args {
        if arg.role == Role::Preprocessor
            && arg
                .words
                .iter()
                .any(|word| word.as_encoded_bytes().starts_with(b"-Wp,-M"))
        {
            return Some("dependency output through -Wp");
        }
    }
    None
}

/// The remote language name of a (not yet preprocessed) source language.
pub fn remote_language(language: Language) -> &'static str {
    match language {
        Language::Cxx | Language::PreprocessedCxx => "c++-cpp-output",
        _ => "cpp-output",
    }
}

/// The flags a worker is sent for `invocation`: the code-generation and diagnostic options,
/// in order, plus `extra` (the colour flag the cache injects). `None` if a flag is not text.
pub fn worker_flags(invocation: &CompileInvocation, extra: &[OsString]) -> Option<Vec<String>> {
    let mut flags = Vec::new();
    for arg in &invocation.args {
        match arg.role {
            Role::Codegen | Role::Debug => {
                for word in &arg.words {
                    flags.push(word.to_str()?.to_owned());
                }
            }
            _ => {}
        }
    }
    for word in extra {
        flags.push(word.to_str()?.to_owned());
    }
    Some(flags)
}

/// The dependency options to give the preprocessing run so it writes the dependency file the
/// compile would: the original `-MD`/`-MMD`/`-MP`/`-MF`/`-MT`/`-MQ` words, plus the file and
/// target GCC derives from `-o` when they are not given.
pub fn dependency_words(invocation: &CompileInvocation) -> Vec<OsString> {
    let Some(dep) = &invocation.dep else {
        return Vec::new();
    };
    let mut words = Vec::new();
    let mut has_file = false;
    for arg in &invocation.args {
        match arg.role {
            Role::DepFlag | Role::DepTarget => words.extend(arg.words.iter().cloned()),
            Role::DepFile => {
                has_file = true;
                words.extend(arg.words.iter().cloned());
            }
            _ => {}
        }
    }
    if !has_file {
        words.push("-MF".into());
        words.push(dep.path.clone());
    }
    if dep.targets.is_empty() {
        words.push("-MQ".into());
        words.push(invocation.output.clone());
    }
    words
}

/// Rewrites `root` to [`REMOTE_ROOT`] in the line markers (`# <line> "<path>"`) of
/// preprocessed text; the rest of the text is left as the preprocessor wrote it.
pub fn to_remote(preprocessed: &[u8], root: Option<&[u8]>) -> Vec<u8> {
    let Some(root) = root.filter(|root| root.len() > 1) else {
        return preprocessed.to_vec();
    };
    let mut out = Vec::with_capacity(preprocessed.len());
    for line in preprocessed.split_inclusive(|&byte| byte == b'\n') {
        match marker_path_start(line) {
            Some(start)
                if line[start..].starts_with(root)
                    && matches!(line.get(start + root.len()), Some(b'/' | b'"')) =>
            {
                out.extend_from_slice(&line[..start]);
                out.extend_from_slice(REMOTE_ROOT);
                out.extend_from_slice(&line[start + root.len()..]);
            }
            _ => out.extend_from_slice(line),
        }
    }
    out
}

/// Where the quoted path of a line marker starts, if `line` is one.
fn marker_path_start(line: &[u8]) -> Option<usize> {
    let rest = line.strip_prefix(b"# ")?;
    let digits = rest.iter().take_while(|byte| byte.is_ascii_digit()).count();
    if digits == 0 || rest.get(digits..digits + 2) != Some(b" \"") {
        return None;
    }
    Some(2 + digits + 2)
}

/// Rewrites [`REMOTE_ROOT`] back to `root` in diagnostics from a worker, where it starts a
/// path (at the start of a line or after a space, quote or parenthesis).
pub fn from_remote(diagnostics: &[u8], root: Option<&[u8]>) -> Vec<u8> {
    let Some(root) = root.filter(|root| root.len() > 1) else {
        return diagnostics.to_vec();
    };
    let mut out = Vec::with_capacity(diagnostics.len());
    let mut index = 0;
    while index < diagnostics.len() {
        let starts_path = index == 0
            || matches!(
                diagnostics[index - 1],
                b'\n' | b' ' | b'"' | b'\'' | b'(' | b'\t'
            );
        if starts_path
            && diagnostics[index..].starts_with(REMOTE_ROOT)
            && diagnostics.get(index + REMOTE_ROOT.len()) == Some(&b'/')
        {
            out.extend_from_slice(root);
            index += REMOTE_ROOT.len();
        } else {
            out.push(diagnostics[index]);
            index += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpcc_core::args::{classify, Classification};

    fn invocation(words: &[&str]) -> CompileInvocation {
        let args: Vec<OsString> = words.iter().map(OsString::from).collect();
        match classify(Family::Gnu, &args) {
            Classification::Compile(invocation) => invocation,
            other => panic!("{words:?}: {other:?}"),
        }
    }

    #[test]
    fn line_markers_lose_the_root_and_diagnostics_get_it_back() {
        let text = b"# 1 \"/home/u/p/src/a.c\"\n# 1 \"/usr/include/stdio.h\" 1 3 4\nchar *s = \"/home/u/p/x\";\n# 7 \"/home/u/pother/b.h\"\n";
        let remote = to_remote(text, Some(b"/home/u/p"));
        assert_eq!(
            remote,
            b"# 1 \"/src/src/a.c\"\n# 1 \"/usr/include/stdio.h\" 1 3 4\nchar *s = \"/home/u/p/x\";\n# 7 \"/home/u/pother/b.h\"\n"
        );
        let stderr = b"/src/src/a.c:3:1: warning: x\nIn file included from /src/a.h:2,\n/srcx/y\n";
        assert_eq!(
            from_remote(stderr, Some(b"/home/u/p")),
            b"/home/u/p/src/a.c:3:1: warning: x\nIn file included from /home/u/p/a.h:2,\n/srcx/y\n"
        );
        assert_eq!(to_remote(text, None), text);
    }

    #[test]
    fn flags_keep_codegen_and_drop_files_and_preprocessor_options() {
        let plain = invocation(&[
            "-c", "-O2", "-g", "-Iinc", "-DX=1", "-Wall", "-o", "a.o", "a.c",
        ]);
        assert_eq!(ineligible("gcc", &plain), None);
        assert_eq!(
            worker_flags(&plain, &["-fdiagnostics-color=always".into()]),
            Some(vec![
                "-O2".into(),
                "-g".into(),
                "-Wall".into(),
                "-fdiagnostics-color=always".into()
            ])
        );
        assert!(ineligible("gcc-12", &plain).is_some());
        assert!(ineligible("gcc", &invocation(&["-S", "a.c"])).is_some());
        assert!(ineligible("gcc", &invocation(&["-c", "--coverage", "a.c"])).is_some());
    }

    #[test]
    fn dependency_words_name_the_file_and_target_gcc_would() {
        let derived = invocation(&["-c", "-MD", "-o", "obj/a.o", "a.c"]);
        assert_eq!(
            dependency_words(&derived),
            ["-MD", "-MF", "obj/a.d", "-MQ", "obj/a.o"]
                .map(OsString::from)
                .to_vec()
        );
        let explicit = invocation(&["-c", "-MMD", "-MT", "t", "-MF", "x.d", "a.c"]);
        assert_eq!(
            dependency_words(&explicit),
            ["-MMD", "-MT", "t", "-MF", "x.d"]
                .map(OsString::from)
                .to_vec()
        );
        assert!(dependency_words(&invocation(&["-c", "a.c"])).is_empty());
    }
}
