//! What a worker runs for a compile request: the client's flags, checked, behind the
//! reproducibility flags the worker injects; and the key of the worker's cache.
//!
//! Injected for GCC and Clang, before the client's flags:
//! - `-ffile-prefix-map=/src=.`: clients rewrite their project root to `/src` in the line
//!   markers of the preprocessed source, so paths in the object are relative;
//! - `-ffile-prefix-map=@JOBDIR@=.`: the agent replaces `@JOBDIR@` with the job's staging
//!   directory, so it never appears in an output (the compilation directory in debug
//!   information is the one path the preprocessed source does not carry);
//! - `-Werror=date-time`: `__DATE__`/`__TIME__` would make the output depend on when;
//! - `-frandom-seed=<source digest>`: GCC's per-compile random names become a function of
//!   the input.

use hpcc_core::digest::{Digest, KeyHasher};

/// The placeholder the agent replaces with the job's directory.
pub const JOB_DIR_PLACEHOLDER: &str = "@JOBDIR@";

/// Drivers a client may ask for (looked up on the image's `PATH`).
pub const COMPILERS: &[&str] = &["gcc", "g++", "cc", "c++", "clang", "clang++"];

/// Languages of preprocessed sources.
pub const LANGUAGES: &[&str] = &["cpp-output", "c++-cpp-output"];

/// The flags injected before the client's, for a source with `source_digest`.
pub fn injected_flags(source_digest: &Digest) -> Vec<String> {
    vec![
        "-ffile-prefix-map=/src=.".into(),
        format!("-ffile-prefix-map={JOB_DIR_PLACEHOLDER}=."),
        "-Werror=date-time".into(),
        format!("-frandom-seed={}", source_digest.to_hex()),
    ]
}

/// Options that name inputs or outputs the worker does not stage, change what is run, or
/// write files it would not return; a request carrying one is refused.
const REFUSED_PREFIXES: &[&str] = &[
    "-o",
    "-c",
    "-S",
    "-E",
    "-x",
    "-M",
    "-Wp,",
    "-Wa,",
    "-Wl,",
    "-B",
    "-specs",
    "-wrapper",
    "-fplugin",
    "-save-temps",
    "-fdump-",
    "-include",
    "-imacros",
    "-iquote",
    "-I",
    "-isystem",
    "-idirafter",
    "-L",
    "-l",
    "-fprofile-use",
    "-fprofile-generate",
    "-fsanitize-blacklist",
    "-fsanitize-ignorelist",
    "--coverage",
    "-ftest-coverage",
    "-fcallgraph-info",
    "-fstack-usage",
    "--output",
    "--sysroot",
    "-isysroot",
];

/// A client flag the worker will not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("flag {flag:?} is not accepted for a remote compile: {why}")]
pub struct RefusedFlag {
    /// The flag.
    pub flag: String,
    /// Why.
    pub why: &'static str,
}

/// Checks the client's flags: each is an option (starts with `-`, no `@file`), none from
/// [`REFUSED_PREFIXES`], no NUL.
pub fn check_flags(flags: &[String]) -> Result<(), RefusedFlag> {
    for flag in flags {
        let refuse = |why| {
            Err(RefusedFlag {
                flag: flag.clone(),
                why,
            })
        };
        if flag.contains('\0') {
            return refuse("contains NUL");
        }
        if !flag.starts_with('-') {
            return refuse("inputs are staged by the worker, not named in flags");
        }
        if REFUSED_PREFIXES
            .iter()
            .any(|prefix| flag.starts_with(prefix))
        {
            return refuse("names files or changes what runs");
        }
    }
    Ok(())
}

/// What determines a remote compile's outputs, and so its key in the worker's cache.
#[derive(Debug, Clone, Copy)]
pub struct KeyInputs<'a> {
    /// The image (the toolchain identity).
    pub image: &'a str,
    /// The driver.
    pub compiler: &'a str,
    /// The source language.
    pub language: &'a str,
    /// The client's flags.
    pub flags: &'a [String],
    /// The injected flags.
    pub injected: &'a [String],
    /// The source.
    pub source_digest: &'a Digest,
    /// Extra outputs asked for.
    pub extra_outputs: &'a [String],
}

/// The cache key of a remote compile.
pub fn cache_key(inputs: KeyInputs<'_>) -> Digest {
    let mut hasher = KeyHasher::new();
    hasher.field("format", b"hpcc-remote-key-1");
    hasher.field("image", inputs.image.as_bytes());
    hasher.field("compiler", inputs.compiler.as_bytes());
    hasher.field("language", inputs.language.as_bytes());
    for flag in inputs.injected {
        hasher.field("injected", flag.as_bytes());
    }
    for flag in inputs.flags {
        hasher.field("flag", flag.as_bytes());
    }
    hasher.digest("source", inputs.source_digest);
    for output in inputs.extra_outputs {
        hasher.field("extra", output.as_bytes());
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(flags: &[&str], accepted: bool) {
        let flags: Vec<String> = flags.iter().map(|flag| (*flag).to_owned()).collect();
        assert_eq!(check_flags(&flags).is_ok(), accepted, "{flags:?}");
    }

    #[test]
    fn flags_are_options_that_touch_no_files() {
        check(
            &[
                "-O2",
                "-g",
                "-DX=1",
                "-Wall",
                "-std=c++17",
                "-fPIC",
                "-march=x86-64",
            ],
            true,
        );
        for bad in [
            "x.c",
            "@args",
            "-o",
            "-ofile",
            "-c",
            "-E",
            "-xc",
            "-MD",
            "-MFdeps",
            "-Wl,-rpath",
            "-fplugin=p.so",
            "-specs=s",
            "-Bdir",
            "-save-temps",
            "-fdump-tree-all",
            "-I/etc",
            "-include",
            "--coverage",
            "-fprofile-use=p",
            "-D\0",
        ] {
            check(&["-O2", bad], false);
        }
    }

    #[test]
    fn keys_change_with_every_input() {
        let digest = Digest::of(b"source");
        let flags = vec!["-O2".to_owned()];
        let injected = injected_flags(&digest);
        let base = KeyInputs {
            image: "sha256:a",
            compiler: "gcc",
            language: "cpp-output",
            flags: &flags,
            injected: &injected,
            source_digest: &digest,
            extra_outputs: &[],
        };
        let other_digest = Digest::of(b"other");
        let other_flags = vec!["-O3".to_owned()];
        let extra = vec!["x.dwo".to_owned()];
        let variants = [
            KeyInputs {
                image: "sha256:b",
                ..base
            },
            KeyInputs {
                compiler: "clang",
                ..base
            },
            KeyInputs {
                language: "c++-cpp-output",
                ..base
            },
            KeyInputs {
                flags: &other_flags,
                ..base
            },
            KeyInputs {
                source_digest: &other_digest,
                ..base
            },
            KeyInputs {
                extra_outputs: &extra,
                ..base
            },
        ];
        let key = cache_key(base);
        assert_eq!(key, cache_key(base));
        for variant in variants {
            assert_ne!(cache_key(variant), key, "{variant:?}");
        }
        assert!(injected[3].ends_with(&digest.to_hex()));
    }
}
