use std::ffi::OsString;
use std::fs;

use hpcc_core::args::{classify, Classification, CompileInvocation, Family};

use super::*;

fn invocation(words: &str) -> CompileInvocation {
    let args: Vec<OsString> = words.split(' ').map(OsString::from).collect();
    match classify(Family::Gnu, &args) {
        Classification::Compile(invocation) => invocation,
        other => panic!("{words}: {other:?}"),
    }
}

#[test]
fn every_output_directory_must_exist() {
    let cwd = tempfile::tempdir().unwrap();
    fs::create_dir(cwd.path().join("out")).unwrap();
    let missing = |words: &str| missing_output_dir(&invocation(words), cwd.path());
    assert_eq!(missing("-c x.c"), None);
    assert_eq!(missing("-c x.c -o out/x.o -MD"), None);
    assert_eq!(
        missing("-c x.c -o nodir/x.o"),
        Some(cwd.path().join("nodir"))
    );
    // The object's directory exists; the dependency file's does not.
    assert_eq!(
        missing("-c x.c -o out/x.o -MD -MF deps/x.d"),
        Some(cwd.path().join("deps"))
    );
    // A file where the directory should be.
    fs::write(cwd.path().join("file"), "").unwrap();
    assert_eq!(missing("-c x.c -o file/x.o"), Some(cwd.path().join("file")));
}

// ---- Direct and preprocessor modes, call by call, with a runner that plays gcc ----

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::Mutex;
use std::time::Duration;

use hpcc_core::config::{Config, Mode};
use hpcc_store::{DiskConfig, DiskStore};

use crate::caller::Caller;

/// What the fake compiler was asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Version,
    ProgName,
    SearchList,
    DependencyPass,
    Preprocess,
    Compile,
}

/// A runner that behaves like gcc on a tiny language: `#include "x"` lines pull in `x` from the
/// working directory, `#error` fails the compile, `warn` in the source prints a warning. The
/// object is the preprocessed text, so a stale hit shows in its bytes.
struct FakeGcc {
    calls: Mutex<Vec<Call>>,
    system_dir: PathBuf,
    /// Spawning fails (the compiler vanished).
    broken: bool,
    /// Written when the include search list is asked for (after a miss's compile): another
    /// process writing the same output meanwhile.
    rewrite: Mutex<Option<(PathBuf, Vec<u8>)>>,
}

impl FakeGcc {
    fn new(system_dir: &Path) -> FakeGcc {
        FakeGcc {
            calls: Mutex::new(Vec::new()),
            system_dir: system_dir.to_owned(),
            broken: false,
            rewrite: Mutex::new(None),
        }
    }

    fn count(&self, call: Call) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|made| **made == call)
            .count()
    }

    fn note(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    /// The source text with its includes expanded, and the files read.
    fn preprocess(cwd: &Path, source: &str) -> io::Result<(String, Vec<String>)> {
        let mut text = format!("# 1 \"{source}\"\n");
        let mut read = vec![source.to_owned()];
        for line in fs::read_to_string(cwd.join(source))?.lines() {
            match line
                .strip_prefix("#include \"")
                .and_then(|rest| rest.strip_suffix('"'))
            {
                Some(header) => {
                    text.push_str(&format!("# 1 \"{header}\"\n"));
                    text.push_str(&fs::read_to_string(cwd.join(header))?);
                    read.push(header.to_owned());
                }
                None => {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        Ok((text, read))
    }
}

fn exited(code: i32, stdout: Vec<u8>, stderr: Vec<u8>) -> Output {
    Output {
        status: ExitStatus::from_raw(code << 8),
        stdout,
        stderr,
    }
}

impl Runner for FakeGcc {
    fn output(&self, command: &mut Command) -> io::Result<Output> {
        if self.broken {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such compiler"));
        }
        let args: Vec<String> = command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        let cwd = command
            .get_current_dir()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let has = |flag: &str| args.iter().any(|arg| arg == flag);
        let after = |flag: &str| {
            args.iter()
                .rposition(|arg| arg == flag)
                .and_then(|index| args.get(index + 1))
                .cloned()
        };
        if has("--version") {
            self.note(Call::Version);
            return Ok(exited(0, b"gcc (Fake) 1.0\n".to_vec(), Vec::new()));
        }
        if args.iter().any(|arg| arg.starts_with("-print-prog-name=")) {
            self.note(Call::ProgName);
            return Ok(exited(0, b"cc1\n".to_vec(), Vec::new()));
        }
        if has("-v") && has("-") {
            self.note(Call::SearchList);
            if let Some((path, bytes)) = self.rewrite.lock().unwrap().take() {
                fs::write(path, bytes)?;
            }
            let list = format!(
                "#include \"...\" search starts here:\n#include <...> search starts here:\n {}\nEnd of search list.\n",
                self.system_dir.display()
            );
            return Ok(exited(0, Vec::new(), list.into_bytes()));
        }
        let skip = ["-o", "-MF", "-MT", "-MQ"];
        let source = args
            .iter()
            .enumerate()
            .find(|(index, arg)| {
                (arg.ends_with(".c") || arg.ends_with(".i"))
                    && (*index == 0 || !skip.contains(&args[index - 1].as_str()))
            })
            .map(|(_, arg)| arg.clone())
            .ok_or_else(|| io::Error::other(format!("no source in {args:?}")))?;
        let (text, read) = FakeGcc::preprocess(&cwd, &source)?;
        let object = after("-o").unwrap_or_else(|| source.replace(".c", ".o"));
        let dep_line = format!("{object}: {}\n", read.join(" "));
        if has("-M") {
            self.note(Call::DependencyPass);
            fs::write(cwd.join(after("-MF").expect("-MF")), &dep_line)?;
            return Ok(exited(0, Vec::new(), Vec::new()));
        }
        if has("-E") {
            self.note(Call::Preprocess);
            if has("-MD") || has("-MMD") {
                let path = after("-MF").unwrap_or_else(|| object.replace(".o", ".d"));
                fs::write(cwd.join(path), &dep_line)?;
            }
            return Ok(exited(0, text.into_bytes(), Vec::new()));
        }
        self.note(Call::Compile);
        if text.contains("#error") {
            return Ok(exited(
                1,
                Vec::new(),
                format!("{source}: error: #error\n").into_bytes(),
            ));
        }
        fs::write(cwd.join(&object), format!("OBJ\n{text}"))?;
        if has("-MD") || has("-MMD") {
            // Every file here is a user header, so -MD and -MMD list the same.
            let path = after("-MF").unwrap_or_else(|| object.replace(".o", ".d"));
            fs::write(cwd.join(path), &dep_line)?;
        }
        let stderr = if text.contains("warn") {
            format!("{source}: warning: you asked for it\n").into_bytes()
        } else {
            Vec::new()
        };
        Ok(exited(0, Vec::new(), stderr))
    }
}

/// A project directory, a cache and a caller in it.
struct Bench {
    _dir: tempfile::TempDir,
    cwd: PathBuf,
    cache: PathBuf,
    compiler: PathBuf,
    store: DiskStore,
    caller: Caller,
    fake: FakeGcc,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().join("src");
        let cache = dir.path().join("cache");
        let system = dir.path().join("system");
        for path in [&cwd, &cache, &system] {
            fs::create_dir_all(path).unwrap();
        }
        // The identity hashes the driver's bytes, so it must exist.
        let compiler = dir.path().join("gcc");
        fs::write(&compiler, b"not really gcc").unwrap();
        let store = DiskStore::open(&cache, DiskConfig::default()).unwrap();
        let caller = Caller {
            cwd: cwd.clone(),
            vars: vec![("PATH".into(), "/usr/bin:/bin".into())],
            umask: 0o022,
            stderr_is_terminal: false,
        };
        Bench {
            _dir: dir,
            cwd,
            cache,
            compiler,
            store,
            caller,
            fake: FakeGcc::new(&system),
        }
    }

    /// Writes project files, then lets the clock pass the compile's trust margin for file
    /// stamps (a file changed within it of a compile is never recorded).
    fn files(&self, files: &[(&str, &str)]) {
        for (name, text) in files {
            fs::write(self.cwd.join(name), text).unwrap();
        }
        std::thread::sleep(Duration::from_millis(60));
    }

    /// Runs `words` through the cache in `mode`, looking up only when `lookup_only`.
    fn serve(&self, mode: Mode, words: &str, lookup_only: bool) -> anyhow::Result<Served> {
        let invocation = invocation(words);
        let config = Config {
            mode,
            ..Config::default()
        };
        let job = self.job(&invocation, &config);
        if lookup_only {
            job.lookup_only(None).run()
        } else {
            job.run()
        }
    }

    /// A job for `invocation` in this project, its compiler played by the fake.
    fn job<'b>(&'b self, invocation: &'b CompileInvocation, config: &'b Config) -> Job<'b> {
        Job::new(
            &self.compiler,
            invocation,
            config,
            &self.cache,
            &self.store,
            &self.caller,
        )
        .with_runner(&self.fake)
    }

    fn run(&self, mode: Mode, words: &str) -> anyhow::Result<Served> {
        self.serve(mode, words, false)
    }

    fn lookup(&self, mode: Mode, words: &str) -> Outcome {
        self.serve(mode, words, true).unwrap().outcome
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.cwd.join(name)).unwrap()
    }
}

fn stored_miss(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Miss {
            exit: 0,
            not_stored: None,
            corrupt: false
        }
    )
}

#[test]
fn direct_mode_stores_then_hits_without_running_the_compiler() {
    let bench = Bench::new();
    bench.files(&[
        ("x.c", "#include \"a.h\"\nint x = A;\n"),
        ("a.h", "#define A 1\n"),
    ]);
    let first = bench.run(Mode::Direct, "-c x.c -o x.o").unwrap();
    assert!(stored_miss(&first.outcome), "{:?}", first.outcome);
    assert_eq!(bench.fake.count(Call::Compile), 1);
    // The identity and the include search list were asked once, then kept in the cache.
    assert_eq!(bench.fake.count(Call::Version), 1);
    assert_eq!(bench.fake.count(Call::SearchList), 1);
    let object = bench.read("x.o");
    assert!(object.contains("#define A 1"), "{object}");
    fs::remove_file(bench.cwd.join("x.o")).unwrap();

    let second = bench.run(Mode::Direct, "-c x.c -o x.o").unwrap();
    assert!(
        matches!(second.outcome, Outcome::DirectHit),
        "{:?}",
        second.outcome
    );
    assert_eq!(bench.fake.count(Call::Compile), 1, "a hit runs nothing");
    assert_eq!(
        bench.fake.count(Call::Preprocess),
        0,
        "direct mode never runs -E"
    );
    assert_eq!(bench.fake.count(Call::Version), 1);
    assert_eq!(bench.read("x.o"), object);
}

#[test]
fn direct_mode_misses_when_a_header_changes_and_hits_each_version_after() {
    let bench = Bench::new();
    bench.files(&[
        ("x.c", "#include \"a.h\"\nint x = A;\n"),
        ("a.h", "#define A 1\n"),
    ]);
    assert!(stored_miss(
        &bench.run(Mode::Direct, "-c x.c").unwrap().outcome
    ));
    bench.files(&[("a.h", "#define A 2\n")]);
    let changed = bench.run(Mode::Direct, "-c x.c").unwrap();
    assert!(stored_miss(&changed.outcome), "{:?}", changed.outcome);
    assert!(bench.read("x.o").contains("#define A 2"));
    assert_eq!(bench.fake.count(Call::Compile), 2);
    // Both versions now live in the manifest: going back is a hit, with the old object.
    bench.files(&[("a.h", "#define A 1\n")]);
    let back = bench.run(Mode::Direct, "-c x.c").unwrap();
    assert!(
        matches!(back.outcome, Outcome::DirectHit),
        "{:?}",
        back.outcome
    );
    assert!(bench.read("x.o").contains("#define A 1"));
    assert_eq!(bench.fake.count(Call::Compile), 2);
}

#[test]
fn what_a_compile_printed_is_replayed_on_a_hit() {
    let bench = Bench::new();
    bench.files(&[("w.c", "int warn;\n")]);
    let miss = bench.run(Mode::Direct, "-c w.c").unwrap();
    assert!(stored_miss(&miss.outcome));
    assert_eq!(miss.printed.stderr, b"w.c: warning: you asked for it\n");
    let hit = bench.run(Mode::Direct, "-c w.c").unwrap();
    assert!(matches!(hit.outcome, Outcome::DirectHit));
    assert_eq!(hit.printed, miss.printed);
}

/// Outcomes that store nothing, each with its reason, and compile again next time.
#[test]
fn compiles_that_must_not_be_stored_say_why() {
    type Check = fn(&Option<NotCacheable>) -> bool;
    let cases: &[(&str, &str, Check)] = &[
        ("fails.c", "#error no\n", |reason| {
            matches!(reason, Some(NotCacheable::CompileFailed))
        }),
        ("date.c", "const char *d = __DATE__;\n", |reason| {
            matches!(reason, Some(NotCacheable::TimeMacros))
        }),
    ];
    for (name, text, expected) in cases {
        let bench = Bench::new();
        bench.files(&[(name, text)]);
        let words = format!("-c {name}");
        for round in 1..=2 {
            let served = bench.run(Mode::Direct, &words).unwrap();
            match &served.outcome {
                Outcome::Miss { not_stored, .. } => {
                    assert!(expected(not_stored), "{name}: {not_stored:?}")
                }
                other => panic!("{name}: {other:?}"),
            }
            assert_eq!(bench.fake.count(Call::Compile), round, "{name}");
        }
    }
}

#[test]
fn a_failed_compile_passes_its_exit_code_and_message_through() {
    let bench = Bench::new();
    bench.files(&[("bad.c", "#error no\n")]);
    let served = bench.run(Mode::Direct, "-c bad.c").unwrap();
    assert!(
        matches!(served.outcome, Outcome::Miss { exit: 1, .. }),
        "{:?}",
        served.outcome
    );
    assert_eq!(served.printed.stderr, b"bad.c: error: #error\n");
    assert!(!bench.cwd.join("bad.o").exists());
}

#[test]
fn user_only_dependency_files_get_a_dependency_pass_and_are_restored() {
    let bench = Bench::new();
    bench.files(&[("x.c", "#include \"a.h\"\nint x;\n"), ("a.h", "int a;\n")]);
    let words = "-c x.c -o x.o -MMD -MF x.d";
    assert!(stored_miss(
        &bench.run(Mode::Direct, words).unwrap().outcome
    ));
    assert_eq!(bench.fake.count(Call::DependencyPass), 1);
    let deps = bench.read("x.d");
    assert!(deps.starts_with("x.o:") && deps.contains("a.h"), "{deps}");
    fs::remove_file(bench.cwd.join("x.d")).unwrap();
    let hit = bench.run(Mode::Direct, words).unwrap();
    assert!(
        matches!(hit.outcome, Outcome::DirectHit),
        "{:?}",
        hit.outcome
    );
    assert_eq!(bench.read("x.d"), deps);
    assert_eq!(bench.fake.count(Call::DependencyPass), 1);
    // hpcc's own temporaries are gone.
    let left: Vec<_> = fs::read_dir(&bench.cwd)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".hpcc-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn preprocessor_mode_keys_on_the_preprocessed_text() {
    let bench = Bench::new();
    bench.files(&[("x.c", "#include \"a.h\"\nint x;\n"), ("a.h", "int a;\n")]);
    assert!(stored_miss(
        &bench.run(Mode::Preprocessor, "-c x.c").unwrap().outcome
    ));
    assert_eq!(bench.fake.count(Call::Preprocess), 1);
    assert_eq!(bench.fake.count(Call::Compile), 1);
    // Rewriting the header with the same text changes its stamp, not the -E output: a hit.
    bench.files(&[("a.h", "int a;\n")]);
    let hit = bench.run(Mode::Preprocessor, "-c x.c").unwrap();
    assert!(
        matches!(hit.outcome, Outcome::PreprocessorHit),
        "{:?}",
        hit.outcome
    );
    assert_eq!(
        bench.fake.count(Call::Preprocess),
        2,
        "every lookup runs -E"
    );
    assert_eq!(bench.fake.count(Call::Compile), 1);
    // New text: a miss.
    bench.files(&[("a.h", "int b;\n")]);
    assert!(stored_miss(
        &bench.run(Mode::Preprocessor, "-c x.c").unwrap().outcome
    ));
    assert_eq!(bench.fake.count(Call::Compile), 2);
    assert!(bench.read("x.o").contains("int b;"));
}

#[test]
fn direct_and_preprocessor_entries_do_not_serve_each_other() {
    let bench = Bench::new();
    bench.files(&[("x.c", "int x;\n")]);
    assert!(stored_miss(
        &bench.run(Mode::Direct, "-c x.c").unwrap().outcome
    ));
    assert!(stored_miss(
        &bench.run(Mode::Preprocessor, "-c x.c").unwrap().outcome
    ));
    assert_eq!(bench.fake.count(Call::Compile), 2);
}

#[test]
fn a_lookup_only_job_runs_no_compile() {
    let bench = Bench::new();
    bench.files(&[("x.c", "int x;\n")]);
    let outcome = bench.lookup(Mode::Direct, "-c x.c");
    assert!(
        matches!(
            outcome,
            Outcome::NotFound {
                key: Some(_),
                corrupt: false
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(bench.fake.count(Call::Compile), 0);
    assert!(stored_miss(
        &bench.run(Mode::Direct, "-c x.c").unwrap().outcome
    ));
    assert!(matches!(
        bench.lookup(Mode::Direct, "-c x.c"),
        Outcome::DirectHit
    ));
}

#[test]
fn a_compiler_that_cannot_run_is_an_error_for_the_caller_to_fall_back_on() {
    for mode in [Mode::Direct, Mode::Preprocessor] {
        let mut bench = Bench::new();
        bench.fake.broken = true;
        bench.files(&[("x.c", "int x;\n")]);
        let error = bench.run(mode, "-c x.c").expect_err("no compiler");
        assert!(
            format!("{error:#}").contains("no such compiler"),
            "{error:#}"
        );
        assert!(!bench.cwd.join("x.o").exists());
    }
}

#[test]
fn a_corrupt_result_is_a_miss_that_recompiles() {
    let bench = Bench::new();
    bench.files(&[("x.c", "int x;\n")]);
    let invocation = invocation("-c x.c");
    let config = Config {
        mode: Mode::Preprocessor,
        ..Config::default()
    };
    let job = bench.job(&invocation, &config);
    assert!(stored_miss(&job.run().unwrap().outcome));
    let stored = job.stored();
    let (kind, key) = stored.first().copied().expect("one entry");
    // Bytes that pass the store's checksum but are no result entry.
    bench.store.put(kind, &key, b"not an entry").unwrap();
    let served = bench.run(Mode::Preprocessor, "-c x.c").unwrap();
    assert!(
        matches!(
            served.outcome,
            Outcome::Miss {
                exit: 0,
                corrupt: true,
                ..
            }
        ),
        "{:?}",
        served.outcome
    );
    assert_eq!(bench.fake.count(Call::Compile), 2);
    assert!(matches!(
        bench.run(Mode::Preprocessor, "-c x.c").unwrap().outcome,
        Outcome::PreprocessorHit
    ));
}

/// A farm that answers every job with the same object.
struct FakeFarm {
    jobs: Mutex<usize>,
}

impl RemoteCompiler for FakeFarm {
    fn image(&self) -> &str {
        "sha256:1111111111111111111111111111111111111111111111111111111111111111"
    }

    fn paranoid(&self) -> bool {
        false
    }

    fn compile(
        &self,
        _job: remote_compile::RemoteJob,
    ) -> Result<remote_compile::RemoteResult, String> {
        *self.jobs.lock().unwrap() += 1;
        Ok(remote_compile::RemoteResult {
            exit: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            object: Some(b"REMOTE OBJECT".to_vec()),
        })
    }
}

/// The entry under the farm's key holds the farm's object, even when the output file is
/// rewritten between the remote compile and the store (a wrapper that stopped waiting for the
/// daemon compiles the same file itself): a local object must never be served as the farm's.
#[test]
fn a_farm_entry_holds_the_farms_object_whoever_writes_the_file() {
    let bench = Bench::new();
    bench.files(&[("x.c", "int x;\n")]);
    let farm = FakeFarm {
        jobs: Mutex::new(0),
    };
    let farm_ref = &farm;
    *bench.fake.rewrite.lock().unwrap() = Some((bench.cwd.join("x.o"), b"LOCAL OBJECT".to_vec()));
    let invocation = invocation("-c x.c -o x.o");
    let config = Config {
        mode: Mode::Direct,
        ..Config::default()
    };
    let job = |on_farm: bool| {
        bench
            .job(&invocation, &config)
            .remote_compile(on_farm.then_some(farm_ref as &dyn RemoteCompiler))
    };
    let first = job(true).run().unwrap();
    assert!(stored_miss(&first.outcome), "{:?}", first.outcome);
    assert_eq!(*farm.jobs.lock().unwrap(), 1);
    assert_eq!(bench.fake.count(Call::Compile), 0, "compiled on the farm");
    assert_eq!(
        bench.read("x.o"),
        "LOCAL OBJECT",
        "the other writer came last"
    );
    let hit = job(true).run().unwrap();
    assert!(
        matches!(hit.outcome, Outcome::DirectHit),
        "{:?}",
        hit.outcome
    );
    assert_eq!(bench.read("x.o"), "REMOTE OBJECT");
    assert_eq!(*farm.jobs.lock().unwrap(), 1);
    // Without the farm the key is another: a local compile, not the farm's entry.
    let local = job(false).run().unwrap();
    assert!(stored_miss(&local.outcome), "{:?}", local.outcome);
    assert!(bench.read("x.o").starts_with("OBJ"));
}
