//! Every invocation hpcc does not cache behaves exactly like the plain compiler.
//!
//! Each case runs the plain compiler twice, puts the project back as it was, runs the same argv
//! through hpcc twice, and compares each pair: exit code, stdout, stderr and every file in the
//! project (names and bytes). The argv uses relative paths and all runs happen in the same
//! directory, so diagnostics and outputs that name paths match. The second runs show nothing
//! was cached, and `hpcc stats` must count exactly the two hpcc runs under the expected reason
//! and nothing else. A missing output directory is checked on its own, hit and miss, with and
//! without a daemon.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::Output;

use crate::ensure;
use crate::harness::{self, Context, Need, Sandbox, TestResult};

/// The project every case runs in.
const FILES: &[(&str, &str)] = &[
    ("x.h", "#define TWICE(v) ((v) * 2)\n"),
    (
        "x.c",
        "#include \"x.h\"\nint twice(int v) { return TWICE(v); }\nint main(void) { return twice(0); }\n",
    ),
    ("a.c", "int a(void) { return 1; }\n"),
    ("b.c", "int b(void) { return 2; }\n"),
    ("bad.c", "int main(void) { return 0 }\n"),
    (
        "x.cpp",
        "#include <vector>\nint main() { std::vector<int> v{1, 2}; return v[0] - 1; }\n",
    ),
    ("bad.cpp", "int main() { undeclared_thing(); }\n"),
    // The time macros are used only through `sizeof` (or the file's own timestamp), so the
    // objects are the same whenever they are built and can be compared byte for byte.
    (
        "time.c",
        "unsigned long time_len = sizeof __TIME__;\nint main(void) { return 0; }\n",
    ),
    ("date.h", "#define DATE_LEN sizeof __DATE__\n"),
    ("date.c", "#include \"date.h\"\nunsigned long date_len = DATE_LEN;\n"),
    ("stamp.c", "const char *stamp = __TIMESTAMP__;\n"),
];

/// Source fed on stdin.
const STDIN_SOURCE: &[u8] = b"int from_stdin(void) { return 42; }\n";

/// One invocation to compare.
struct Case {
    /// argv, compiler first, paths relative to the project.
    argv: &'static [&'static str],
    /// The `uncacheable.<reason>` hpcc must count it under.
    reason: &'static str,
    /// Bytes piped to stdin (otherwise stdin is empty).
    stdin: Option<&'static [u8]>,
    /// Extra environment for both runs.
    env: &'static [(&'static str, &'static str)],
}

const fn case(argv: &'static [&'static str], reason: &'static str) -> Case {
    Case {
        argv,
        reason,
        stdin: None,
        env: &[],
    }
}

fn run(sandbox: &Sandbox, case: &Case, through_hpcc: bool) -> Result<Output, String> {
    let mut command = if through_hpcc {
        sandbox.hpcc_command(case.argv)
    } else {
        sandbox.plain_command(case.argv)
    };
    for (name, value) in case.env {
        command.env(name, value);
    }
    let what = if through_hpcc { "hpcc" } else { "the compiler" };
    match case.stdin {
        Some(input) => harness::run_with_stdin(&mut command, input),
        None => command.output().ctx(&format!("running {what}")),
    }
}

/// Puts the project back to `before`: removes new files and restores changed ones.
fn restore(
    sandbox: &Sandbox,
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
) -> TestResult {
    for (path, bytes) in after {
        let full = sandbox.project.join(path);
        match before.get(path) {
            None => fs::remove_file(&full).ctx(&format!("removing {}", full.display()))?,
            Some(original) if original != bytes => harness::write_aged(&full, original),
            Some(_) => {}
        }
    }
    for (path, original) in before {
        if !after.contains_key(path) {
            harness::write_aged(&sandbox.project.join(path), original);
        }
    }
    Ok(())
}

/// The same files with the same bytes.
fn same_files(
    a: &BTreeMap<PathBuf, Vec<u8>>,
    b: &BTreeMap<PathBuf, Vec<u8>>,
    what: &str,
) -> TestResult {
    let only_a: Vec<_> = a.keys().filter(|path| !b.contains_key(*path)).collect();
    let only_b: Vec<_> = b.keys().filter(|path| !a.contains_key(*path)).collect();
    ensure!(
        only_a.is_empty() && only_b.is_empty(),
        "{what}: different files: only in the first {only_a:?}, only in the second {only_b:?}"
    );
    let differing: Vec<_> = a
        .iter()
        .filter(|(path, bytes)| b.get(*path) != Some(*bytes))
        .map(|(path, _)| path)
        .collect();
    ensure!(
        differing.is_empty(),
        "{what}: files with different bytes: {differing:?}"
    );
    Ok(())
}

fn check(case: &Case) -> TestResult {
    let sandbox = Sandbox::new();
    for (name, text) in FILES {
        sandbox.write(name, text);
    }
    let what = format!("`{}`", case.argv.join(" "));
    let before = harness::tree(&sandbox.project);
    // Twice each, since a second run can see the first one's files (and nothing may be cached
    // in between): plain, plain, then from the same start hpcc, hpcc.
    let mut runs = Vec::new();
    for through_hpcc in [false, true] {
        for _ in 0..2 {
            let output = run(&sandbox, case, through_hpcc)?;
            runs.push((output, harness::tree(&sandbox.project)));
        }
        let after = harness::tree(&sandbox.project);
        restore(&sandbox, &before, &after)?;
        ensure!(
            harness::tree(&sandbox.project) == before,
            "{what}: could not restore the project"
        );
    }
    for (index, nth) in ["first", "second"].iter().enumerate() {
        let (plain, plain_files) = &runs[index];
        let (hpcc, hpcc_files) = &runs[index + 2];
        let label = format!("{what}: {nth} run, plain vs hpcc");
        harness::same_behaviour(plain, hpcc, &label)?;
        same_files(plain_files, hpcc_files, &label)?;
    }

    let stats = sandbox.stats();
    let expected = serde_json::json!({ case.reason: 2 });
    ensure!(
        stats["uncacheable"] == expected,
        "{what}: uncacheable counts {} (expected {expected}); all stats: {stats}",
        stats["uncacheable"]
    );
    // A reason found only after the cache lookup (the compile failed, a time macro was seen)
    // also counts the lookup as a miss; one found from argv or the environment counts nothing.
    let expected_misses = match case.reason {
        "compile_failed" | "time_macros" => 2,
        _ => 0,
    };
    let (direct, preprocessor, misses) = sandbox.counts();
    ensure!(
        (direct, preprocessor, misses) == (0, 0, expected_misses),
        "{what}: counted as hits/misses ({direct}, {preprocessor}, {misses}), \
         expected {expected_misses} misses and no hits"
    );
    ensure!(
        stats["errors"] == serde_json::json!({}),
        "{what}: errors recorded: {}",
        stats["errors"]
    );
    Ok(())
}

fn check_all(cases: &[Case]) -> TestResult {
    for case in cases {
        check(case)?;
    }
    Ok(())
}

fn linking() -> TestResult {
    check_all(&[
        case(&["gcc", "x.c", "-o", "prog"], "linking"),
        case(&["gcc", "x.c"], "linking"),
        case(&["gcc", "-O2", "x.c", "-o", "prog"], "linking"),
        case(&["g++", "x.cpp", "-o", "prog"], "linking"),
        // A link that fails (undefined `main`): the linker's error passes through.
        case(&["gcc", "a.c", "-o", "prog"], "linking"),
    ])
}

fn preprocessing() -> TestResult {
    check_all(&[
        case(&["gcc", "-E", "x.c"], "preprocessing"),
        case(&["gcc", "-E", "x.c", "-o", "x.i"], "preprocessing"),
        case(&["gcc", "-E", "-c", "x.c"], "preprocessing"),
        case(&["gcc", "-E", "-DTWICE=3", "x.c"], "preprocessing"),
        case(&["gcc", "-E", "missing.c"], "preprocessing"),
    ])
}

fn multiple_sources() -> TestResult {
    check_all(&[
        case(&["gcc", "-c", "a.c", "b.c"], "multiple_sources"),
        case(&["gcc", "-S", "a.c", "b.c"], "multiple_sources"),
        case(&["gcc", "-c", "a.c", "bad.c"], "multiple_sources"),
    ])
}

fn stdin_source() -> TestResult {
    check_all(&[
        Case {
            stdin: Some(STDIN_SOURCE),
            ..case(
                &["gcc", "-x", "c", "-c", "-", "-o", "stdin.o"],
                "stdin_source",
            )
        },
        Case {
            stdin: Some(STDIN_SOURCE),
            ..case(&["gcc", "-x", "c", "-c", "-"], "stdin_source")
        },
        Case {
            stdin: Some(STDIN_SOURCE),
            ..case(&["gcc", "-x", "c", "-S", "-", "-o", "-"], "stdin_source")
        },
        Case {
            stdin: Some(b"int broken(void) { return }\n"),
            ..case(
                &["gcc", "-x", "c", "-c", "-", "-o", "stdin.o"],
                "stdin_source",
            )
        },
    ])
}

fn output_to_stdout() -> TestResult {
    check_all(&[
        case(&["gcc", "-S", "x.c", "-o", "-"], "output_to_stdout"),
        case(&["gcc", "-c", "x.c", "-o", "-"], "output_to_stdout"),
    ])
}

fn output_not_a_file() -> TestResult {
    check_all(&[
        case(
            &["gcc", "-c", "x.c", "-o", "/dev/null"],
            "output_not_a_file",
        ),
        case(
            &["gcc", "-S", "x.c", "-o", "/dev/null"],
            "output_not_a_file",
        ),
        case(
            &["gcc", "-c", "bad.c", "-o", "/dev/null"],
            "output_not_a_file",
        ),
    ])
}

fn save_temps() -> TestResult {
    check_all(&[
        case(&["gcc", "-c", "x.c", "-save-temps"], "save_temps"),
        case(
            &["gcc", "-c", "x.c", "-save-temps=obj", "-o", "out.o"],
            "save_temps",
        ),
        case(&["g++", "-c", "x.cpp", "--save-temps"], "save_temps"),
    ])
}

fn unknown_option() -> TestResult {
    check_all(&[
        // gcc rejects it: same exit code and message.
        case(
            &["gcc", "-c", "x.c", "--hpcc-made-up-flag"],
            "unknown_option",
        ),
        // gcc accepts it (an option missing from hpcc's table): the object is gcc's.
        case(
            &["gcc", "-no-integrated-cpp", "-c", "x.c"],
            "unknown_option",
        ),
        // `-B` changes which tools run.
        case(&["gcc", "-B/nonexistent/", "-c", "x.c"], "unknown_option"),
    ])
}

fn dependencies_only() -> TestResult {
    check_all(&[
        case(&["gcc", "-M", "x.c"], "dependencies_only"),
        case(&["gcc", "-MM", "x.c"], "dependencies_only"),
        case(&["gcc", "-MM", "-MF", "x.d", "x.c"], "dependencies_only"),
        case(&["gcc", "-MM", "-MT", "target", "x.c"], "dependencies_only"),
        // `-M` implies `-E`: with `-c` gcc still only writes the dependencies.
        case(&["gcc", "-MM", "-c", "x.c"], "dependencies_only"),
    ])
}

fn no_source() -> TestResult {
    check_all(&[
        case(&["gcc", "-c"], "no_source"),
        case(&["gcc", "-S", "-O2"], "no_source"),
        case(&["gcc", "-c", "-o", "x.o"], "no_source"),
    ])
}

fn compile_failed() -> TestResult {
    check_all(&[
        case(&["gcc", "-c", "bad.c"], "compile_failed"),
        case(
            &["gcc", "-c", "bad.c", "-o", "bad.o", "-MD"],
            "compile_failed",
        ),
        case(&["g++", "-c", "bad.cpp"], "compile_failed"),
        // An unknown `-f` option is accepted by hpcc's `-f` prefix row, so the compile is
        // attempted through the cache; gcc rejects it and the failure is not cached.
        case(
            &["gcc", "-c", "x.c", "-fhpcc-made-up-flag"],
            "compile_failed",
        ),
    ])
}

/// A source file that does not exist: the compiler's error passes through, and the failure is
/// the compiler's (counted as a failed compile), not an internal hpcc error.
fn missing_source() -> TestResult {
    check_all(&[
        case(&["gcc", "-c", "missing.c"], "compile_failed"),
        case(
            &["gcc", "-c", "missing.c", "-o", "missing.o"],
            "compile_failed",
        ),
    ])
}

fn time_macros() -> TestResult {
    check_all(&[
        case(&["gcc", "-c", "time.c"], "time_macros"),
        case(&["gcc", "-c", "stamp.c", "-o", "stamp.o"], "time_macros"),
        // In a header, not the source.
        case(&["gcc", "-c", "date.c"], "time_macros"),
    ])
}

fn environment() -> TestResult {
    check_all(&[
        Case {
            env: &[("DEPENDENCIES_OUTPUT", "deps.txt")],
            ..case(&["gcc", "-c", "x.c"], "environment")
        },
        Case {
            env: &[("DEPENDENCIES_OUTPUT", "deps.txt x.o")],
            ..case(&["gcc", "-c", "x.c", "-o", "x.o"], "environment")
        },
        Case {
            env: &[("SUNPRO_DEPENDENCIES", "deps.txt")],
            ..case(&["gcc", "-c", "x.c"], "environment")
        },
    ])
}

fn query() -> TestResult {
    check_all(&[
        case(&["gcc", "--version"], "query"),
        case(&["gcc", "-dumpversion"], "query"),
        case(&["gcc", "-dumpfullversion"], "query"),
        case(&["gcc", "-dumpmachine"], "query"),
        case(&["gcc", "-print-prog-name=cc1"], "query"),
        case(&["gcc", "-print-search-dirs"], "query"),
        case(&["gcc", "-print-libgcc-file-name"], "query"),
        case(&["gcc", "--help"], "query"),
        case(&["g++", "--version"], "query"),
        case(&["gcc", "-c", "x.c", "--version"], "query"),
    ])
}

fn clang() -> TestResult {
    check_all(&[
        case(&["clang", "x.c", "-o", "prog"], "linking"),
        case(&["clang", "-E", "x.c"], "preprocessing"),
        case(&["clang", "-c", "a.c", "b.c"], "multiple_sources"),
        case(
            &["clang", "-c", "x.c", "-o", "/dev/null"],
            "output_not_a_file",
        ),
        case(&["clang", "-c", "x.c", "-save-temps"], "save_temps"),
        case(&["clang", "-MM", "x.c"], "dependencies_only"),
        case(&["clang", "-c", "bad.c"], "compile_failed"),
        case(&["clang", "--version"], "query"),
        case(&["clang", "-print-resource-dir"], "query"),
    ])
}

/// An output directory that does not exist: the compiler's own error (`can't create
/// nodir/x.o`, or `opening dependency file nodir/x.d` with `-MD`) and exit code, never one
/// about hpcc's temporaries, on a miss and on a would-be hit (the same compile cached with an
/// output that had a directory), in-process and through a daemon, with and without `-MD`.
fn missing_output_dir(compiler: &str) -> TestResult {
    for with_daemon in [false, true] {
        let sandbox = if with_daemon {
            Sandbox::with_daemon(&[])
        } else {
            Sandbox::new()
        };
        for (name, text) in FILES {
            sandbox.write(name, text);
        }
        if with_daemon {
            sandbox.start_daemon()?;
        }
        let mode = if with_daemon { "daemon" } else { "in-process" };
        fs::create_dir(sandbox.project.join("out")).ctx("creating out/")?;
        let mut passed = 0;
        for md in [false, true] {
            let dep: &[&str] = if md { &["-MD"] } else { &[] };
            let argv = |source: &'static str, output: &'static str| -> Vec<&str> {
                let mut argv = vec![compiler, "-c", source, "-o", output];
                argv.extend_from_slice(dep);
                argv
            };
            // x.c is cached (one miss, then a hit) with an output directory that exists.
            for _ in 0..2 {
                let out = sandbox.hpcc(&argv("x.c", "out/x.o"));
                harness::succeeded(&out, &format!("{mode}: caching x.c"))?;
            }
            let (direct, preprocessor, _) = sandbox.counts();
            ensure!(
                direct + preprocessor >= 1,
                "{mode}: x.c was not cached: {}",
                sandbox.stats()
            );
            // x.c would be a hit, a.c is a miss: both into a directory that does not exist.
            for (source, output) in [("x.c", "nodir/x.o"), ("a.c", "nodir/a.o")] {
                let argv = argv(source, output);
                let what = format!("{mode}: `{}`", argv.join(" "));
                let plain = sandbox.plain_compiler(&argv);
                ensure!(
                    !plain.status.success()
                        && harness::contains(&plain.stderr, b"nodir/")
                        && !harness::contains(&plain.stderr, b".hpcc-"),
                    "{what}: the plain compiler did not fail on nodir: {}",
                    harness::text(&plain.stderr)
                );
                let through = sandbox.hpcc(&argv);
                harness::same_behaviour(&plain, &through, &what)?;
                passed += 1;
                ensure!(
                    !sandbox.project.join("nodir").exists(),
                    "{what}: nodir was created"
                );
            }
        }
        let stray: Vec<_> = harness::tree(&sandbox.project)
            .into_keys()
            .filter(|path| path.to_string_lossy().contains(".hpcc-"))
            .collect();
        ensure!(stray.is_empty(), "{mode}: temporaries left: {stray:?}");
        let counted = sandbox.uncacheable("output_dir_missing");
        ensure!(
            counted == passed,
            "{mode}: {counted} compiles counted as output_dir_missing, expected {passed}; stats: {}",
            sandbox.stats()
        );
    }
    Ok(())
}

fn missing_output_dir_gcc() -> TestResult {
    missing_output_dir("gcc")
}

fn missing_output_dir_clang() -> TestResult {
    missing_output_dir("clang")
}

pub fn cases() -> Vec<crate::Case> {
    const GCC: &[Need] = &[Need::Gcc];
    vec![
        ("passthrough::linking", GCC, linking),
        ("passthrough::preprocessing", GCC, preprocessing),
        ("passthrough::multiple_sources", GCC, multiple_sources),
        ("passthrough::stdin_source", GCC, stdin_source),
        ("passthrough::output_to_stdout", GCC, output_to_stdout),
        ("passthrough::output_not_a_file", GCC, output_not_a_file),
        ("passthrough::save_temps", GCC, save_temps),
        ("passthrough::unknown_option", GCC, unknown_option),
        ("passthrough::dependencies_only", GCC, dependencies_only),
        ("passthrough::no_source", GCC, no_source),
        ("passthrough::compile_failed", GCC, compile_failed),
        ("passthrough::missing_source", GCC, missing_source),
        ("passthrough::time_macros", GCC, time_macros),
        ("passthrough::environment", GCC, environment),
        ("passthrough::query", GCC, query),
        ("passthrough::clang", &[Need::Clang], clang),
        (
            "passthrough::missing_output_dir_gcc",
            GCC,
            missing_output_dir_gcc,
        ),
        (
            "passthrough::missing_output_dir_clang",
            &[Need::Clang],
            missing_output_dir_clang,
        ),
    ]
}
