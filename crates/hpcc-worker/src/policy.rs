//! What a worker runs for a compile request: the client's flags, checked, behind the
//! reproducibility flags the worker injects ([`job_argv`], and its inverse [`JobCommand::parse`]
//! for audit rows); and the key of the worker's cache.
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

/// The name of the staged source in a job's directory.
pub const SOURCE_FILE: &str = "in.i";

/// The name of the object in a job's directory.
pub const OBJECT_FILE: &str = "out.o";

/// The argv a session runs for a job: `compiler`, the `injected` flags, the client's `flags`,
/// then `-x <language> -c in.i -o out.o`. Audit rows record exactly this.
pub fn job_argv(
    compiler: &str,
    language: &str,
    injected: &[String],
    flags: &[String],
) -> Vec<String> {
    let mut argv = Vec::with_capacity(injected.len() + flags.len() + 7);
    argv.push(compiler.to_owned());
    argv.extend(injected.iter().cloned());
    argv.extend(flags.iter().cloned());
    argv.extend(
        ["-x", language, "-c", SOURCE_FILE, "-o", OBJECT_FILE]
            .iter()
            .map(|word| (*word).to_owned()),
    );
    argv
}

/// A job's command, read back from the argv an audit row recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCommand {
    /// The driver.
    pub compiler: String,
    /// The source language.
    pub language: String,
    /// The injected flags (those of [`injected_flags`] for the row's source).
    pub injected: Vec<String>,
    /// The client's flags.
    pub flags: Vec<String>,
}

/// Why a recorded argv is not a command this worker would run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// The argv is empty.
    #[error("the command is empty")]
    Empty,
    /// The argv starts with a flag: a row from before the command was recorded whole.
    #[error(
        "the command starts with {0:?}, not a compiler driver (a row written before rows \
         recorded the whole command; it cannot be re-run)"
    )]
    NoDriver(String),
    /// A driver the worker does not run.
    #[error("driver {0:?} is not one a worker runs")]
    Driver(String),
    /// The argv does not end as [`job_argv`] ends it.
    #[error("the command does not end with `-x <language> -c in.i -o out.o`")]
    Tail,
    /// A language the worker does not compile.
    #[error("language {0:?} is not a preprocessed source's")]
    Language(String),
    /// The flags after the driver are not the injected ones for the source.
    #[error("the command does not start with the flags injected for source {source_digest}: {expected:?}")]
    Injected {
        /// The row's source digest.
        source_digest: String,
        /// The flags the policy injects for it.
        expected: Vec<String>,
    },
    /// A client flag the worker refuses.
    #[error(transparent)]
    Flag(#[from] RefusedFlag),
}

impl JobCommand {
    /// Reads back an argv built by [`job_argv`] for a source with `source_digest`, and checks
    /// that it is a command this worker would run: a known driver and language, exactly the
    /// injected flags of this policy, client flags that [`check_flags`] accepts.
    pub fn parse(argv: &[String], source_digest: &Digest) -> Result<JobCommand, CommandError> {
        let (compiler, rest) = argv.split_first().ok_or(CommandError::Empty)?;
        if compiler.starts_with('-') {
            return Err(CommandError::NoDriver(compiler.clone()));
        }
        if !COMPILERS.contains(&compiler.as_str()) {
            return Err(CommandError::Driver(compiler.clone()));
        }
        let (middle, tail) = rest
            .split_at_checked(rest.len().saturating_sub(6))
            .ok_or(CommandError::Tail)?;
        let [dash_x, language, dash_c, source, dash_o, object] = tail else {
            return Err(CommandError::Tail);
        };
        let fixed = [dash_x, dash_c, source, dash_o, object];
        if fixed
            .iter()
            .zip(["-x", "-c", SOURCE_FILE, "-o", OBJECT_FILE])
            .any(|(word, wanted)| word.as_str() != wanted)
        {
            return Err(CommandError::Tail);
        }
        if !LANGUAGES.contains(&language.as_str()) {
            return Err(CommandError::Language(language.clone()));
        }
        let expected = injected_flags(source_digest);
        let Some(flags) = middle.strip_prefix(expected.as_slice()) else {
            return Err(CommandError::Injected {
                source_digest: source_digest.to_hex(),
                expected,
            });
        };
        check_flags(flags)?;
        Ok(JobCommand {
            compiler: compiler.clone(),
            language: language.clone(),
            injected: expected,
            flags: flags.to_vec(),
        })
    }

    /// The argv again ([`job_argv`]).
    pub fn argv(&self) -> Vec<String> {
        job_argv(&self.compiler, &self.language, &self.injected, &self.flags)
    }
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
/// `REFUSED_PREFIXES`, no NUL.
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
    /// The storage namespace (the tenant's, or its sharing group's): two namespaces never
    /// share a key, whatever else they share.
    pub namespace: &'a str,
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
    hasher.field("format", b"hpcc-remote-key-2");
    hasher.field("namespace", inputs.namespace.as_bytes());
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

    fn words(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn recorded_commands_read_back_only_if_a_worker_would_run_them() {
        let digest = Digest::of(b"int x;");
        let injected = injected_flags(&digest);
        let flags = words("-O2 -g -DMSG=a\tb");
        let argv = job_argv("g++", "c++-cpp-output", &injected, &flags);
        assert_eq!(argv[0], "g++");
        assert_eq!(argv[1..=injected.len()], injected[..]);
        assert_eq!(
            argv[argv.len() - 6..],
            words("-x c++-cpp-output -c in.i -o out.o")[..]
        );
        let command = JobCommand::parse(&argv, &digest).expect("a worker's own command");
        assert_eq!(command.flags, flags);
        assert_eq!(command.argv(), argv);
        let no_flags = job_argv("gcc", "cpp-output", &injected, &[]);
        assert_eq!(
            JobCommand::parse(&no_flags, &digest).map(|command| command.flags),
            Ok(Vec::new())
        );

        let replaced = |index: usize, word: &str| {
            let mut changed = argv.clone();
            changed[index] = word.to_owned();
            JobCommand::parse(&changed, &digest)
        };
        let last = argv.len() - 1;
        let old_row: Vec<String> = injected.iter().chain(&flags).cloned().collect();
        let cases: Vec<(Result<JobCommand, CommandError>, &str)> = vec![
            (JobCommand::parse(&[], &digest), "empty"),
            (
                JobCommand::parse(&old_row, &digest),
                "not a compiler driver",
            ),
            (replaced(0, "sh"), "driver \"sh\""),
            (replaced(last, "/etc/passwd"), "does not end with"),
            (replaced(last - 4, "c"), "language \"c\""),
            (replaced(4, "-frandom-seed=0"), "injected for source"),
            (replaced(injected.len() + 1, "-fplugin=x.so"), "fplugin"),
            (JobCommand::parse(&argv[..5], &digest), "does not end with"),
            (
                JobCommand::parse(&argv, &Digest::of(b"other")),
                "injected for source",
            ),
        ];
        for (result, needle) in cases {
            let error = result.expect_err(needle).to_string();
            assert!(error.contains(needle), "{needle}: {error}");
        }
    }

    #[test]
    fn keys_change_with_every_input() {
        let digest = Digest::of(b"source");
        let flags = vec!["-O2".to_owned()];
        let injected = injected_flags(&digest);
        let base = KeyInputs {
            namespace: "tenant-a",
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
                namespace: "tenant-b",
                ..base
            },
            KeyInputs {
                namespace: "group-a",
                ..base
            },
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
