//! The ways hpcc is invoked: masquerade symlinks, `hpcc wrap`, a build system's compiler
//! launcher, an explicit compiler path or name; the user commands; odd argv.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::ensure;
use crate::harness::{self, Context, Need, Sandbox, TestResult};

const HEADER: &str = "#define SCALE 3\n";
const SOURCE: &str = "#include \"x.h\"\nint scaled(int v) { return v * SCALE; }\n";
const CXX_SOURCE: &str =
    "#include <string>\nstd::size_t size(const std::string &s) { return s.size(); }\n";

/// A sandbox with `x.c`, `x.h` and `y.cpp`.
fn project() -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.write("x.h", HEADER);
    sandbox.write("x.c", SOURCE);
    sandbox.write("y.cpp", CXX_SOURCE);
    sandbox
}

/// The plain compiler's object for `<compiler> -c <source>` (built outside the project).
fn plain_object(sandbox: &Sandbox, compiler: &str, source: &str) -> Result<Vec<u8>, String> {
    let output = sandbox.base.join("plain-reference.o");
    let out = sandbox.plain_compiler(&[compiler, "-c", source, "-o", harness::arg(&output)]);
    harness::succeeded(&out, &format!("plain {compiler}"))?;
    let object = fs::read(&output).ctx("reading the plain object")?;
    fs::remove_file(&output).ctx("removing the plain object")?;
    Ok(object)
}

/// Runs `command`, killing it if it takes longer than `limit` (a recursive wrapper would hang).
fn output_within(command: &mut Command, limit: Duration) -> Result<Output, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(&format!("spawning {command:?}"))?;
    let mut pipes = Vec::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ] {
        let mut pipe = pipe.ok_or_else(|| "a pipe is missing".to_owned())?;
        pipes.push(std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        }));
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().ctx("waiting for the child")? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{command:?} did not finish within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut outputs = pipes
        .into_iter()
        .map(|thread| thread.join().unwrap_or_default());
    Ok(Output {
        status,
        stdout: outputs.next().unwrap_or_default(),
        stderr: outputs.next().unwrap_or_default(),
    })
}

const LIMIT: Duration = Duration::from_secs(120);

/// Creates `dir` with symlinks `names` pointing at the hpcc binary.
fn link_dir(dir: &Path, names: &[&str]) -> TestResult {
    fs::create_dir_all(dir).ctx("creating the link dir")?;
    for name in names {
        std::os::unix::fs::symlink(harness::hpcc_binary(), dir.join(name))
            .ctx(&format!("linking {name}"))?;
    }
    Ok(())
}

/// `dirs` prepended to the current PATH.
fn path_with(dirs: &[&Path]) -> OsString {
    let mut all: Vec<PathBuf> = dirs.iter().map(|dir| dir.to_path_buf()).collect();
    all.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(all).unwrap_or_default()
}

/// The first executable `name` on PATH.
fn which(name: &str) -> Result<PathBuf, String> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| format!("{name} is not on PATH"))
}

/// Runs `program <args>` (a masquerade name looked up on `path`) in the project.
fn masqueraded(sandbox: &Sandbox, path: &OsStr, program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args).current_dir(&sandbox.project);
    sandbox.environment(&mut command);
    command.env("PATH", path);
    command
}

/// Compiles `source` to `output` with `command`, checks the object, and returns the change in
/// (hits, misses).
fn compile_counted(
    sandbox: &Sandbox,
    command: &mut Command,
    output: &str,
    expected: &[u8],
    what: &str,
) -> Result<(u64, u64), String> {
    let (d0, p0, m0) = sandbox.counts();
    let _ = fs::remove_file(sandbox.project.join(output));
    let out = output_within(command, LIMIT)?;
    harness::succeeded(&out, what)?;
    let object =
        fs::read(sandbox.project.join(output)).ctx(&format!("{what}: reading {output}"))?;
    ensure!(
        object == expected,
        "{what}: {output} differs from the plain compiler's"
    );
    let (d1, p1, m1) = sandbox.counts();
    Ok((d1 + p1 - d0 - p0, m1 - m0))
}

fn masquerade_gcc() -> TestResult {
    let sandbox = project();
    let x = plain_object(&sandbox, "gcc", "x.c")?;
    let y = plain_object(&sandbox, "g++", "y.cpp")?;
    let bin = sandbox.base.join("bin");
    link_dir(&bin, &["gcc", "g++", "cc", "c++"])?;
    let path = path_with(&[&bin]);
    for (program, source, output, expected) in [
        ("gcc", "x.c", "x.o", &x),
        ("g++", "y.cpp", "y.o", &y),
        ("cc", "x.c", "x.o", &x),
        ("c++", "y.cpp", "y.o", &y),
    ] {
        for attempt in ["first", "second"] {
            let what = format!("masqueraded `{program} -c {source}`, {attempt} run");
            let mut command = masqueraded(&sandbox, &path, program, &["-c", source]);
            let (hits, misses) = compile_counted(&sandbox, &mut command, output, expected, &what)?;
            ensure!(
                hits + misses == 1,
                "{what}: not counted by hpcc (did the real compiler run directly?)"
            );
            if attempt == "second" {
                ensure!(hits == 1, "{what}: not a hit");
            }
        }
    }
    // The masqueraded compiler answers queries like the real one.
    let out = output_within(
        &mut masqueraded(&sandbox, &path, "gcc", &["--version"]),
        LIMIT,
    )?;
    harness::same_behaviour(
        &sandbox.plain_compiler(&["gcc", "--version"]),
        &out,
        "masqueraded gcc --version",
    )?;
    Ok(())
}

/// hpcc's own links are skipped wherever they are on PATH, however many there are.
fn masquerade_several_link_dirs() -> TestResult {
    let sandbox = project();
    let x = plain_object(&sandbox, "gcc", "x.c")?;
    let first = sandbox.base.join("bin1");
    let second = sandbox.base.join("bin2");
    link_dir(&first, &["gcc"])?;
    link_dir(&second, &["gcc"])?;
    // A link to a link to hpcc.
    let third = sandbox.base.join("bin3");
    fs::create_dir_all(&third).ctx("creating bin3")?;
    std::os::unix::fs::symlink(first.join("gcc"), third.join("gcc")).ctx("linking bin3/gcc")?;
    let path = path_with(&[&first, &second, &third, &first]);
    for attempt in ["first", "second"] {
        let what = format!("gcc through three link dirs, {attempt} run");
        let mut command = masqueraded(&sandbox, &path, "gcc", &["-c", "x.c"]);
        let (hits, misses) = compile_counted(&sandbox, &mut command, "x.o", &x, &what)?;
        ensure!(hits + misses == 1, "{what}: not counted once");
    }
    // Only hpcc's links on PATH: a clear error, not a loop.
    let mut command = Command::new(first.join("gcc"));
    command.args(["-c", "x.c"]).current_dir(&sandbox.project);
    sandbox.environment(&mut command);
    command.env("PATH", std::env::join_paths([&first, &second]).ctx("PATH")?);
    let out = output_within(&mut command, LIMIT)?;
    ensure!(
        !out.status.success(),
        "a compile with no real gcc on PATH succeeded"
    );
    ensure!(
        harness::contains(&out.stderr, b"gcc"),
        "the error does not name the compiler: {}",
        harness::text(&out.stderr)
    );
    ensure!(
        !harness::contains(&out.stderr, b"panicked"),
        "hpcc panicked: {}",
        harness::text(&out.stderr)
    );
    Ok(())
}

fn masquerade_clang() -> TestResult {
    let sandbox = project();
    let x = plain_object(&sandbox, "clang", "x.c")?;
    let y = plain_object(&sandbox, "clang++", "y.cpp")?;
    let bin = sandbox.base.join("bin");
    link_dir(&bin, &["clang", "clang++"])?;
    let path = path_with(&[&bin]);
    for (program, source, output, expected) in
        [("clang", "x.c", "x.o", &x), ("clang++", "y.cpp", "y.o", &y)]
    {
        for attempt in ["first", "second"] {
            let what = format!("masqueraded `{program} -c {source}`, {attempt} run");
            let mut command = masqueraded(&sandbox, &path, program, &["-c", source]);
            let (hits, misses) = compile_counted(&sandbox, &mut command, output, expected, &what)?;
            ensure!(hits + misses == 1, "{what}: not counted by hpcc");
            if attempt == "second" {
                ensure!(hits == 1, "{what}: not a hit");
            }
        }
    }
    Ok(())
}

/// The names `hpcc wrap` links.
const WRAPPED: &[&str] = &[
    "cc", "c++", "gcc", "g++", "clang", "clang++", "cl", "clang-cl",
];

fn wrap_command() -> TestResult {
    let sandbox = project();
    let x = plain_object(&sandbox, "gcc", "x.c")?;
    // A directory name that needs quoting in the shell line.
    let dir = sandbox.base.join("wrap dir $HOME `x`");
    let hpcc = harness::hpcc_binary()
        .canonicalize()
        .ctx("resolving the hpcc binary")?;
    for attempt in ["first", "second"] {
        let out = sandbox.hpcc(&["wrap", harness::arg(&dir)]);
        harness::succeeded(&out, &format!("{attempt} hpcc wrap"))?;
        let stdout = harness::text(&out.stdout);
        ensure!(
            stdout.starts_with("export PATH=\"") && stdout.trim_end().ends_with(":$PATH\""),
            "{attempt} hpcc wrap printed {stdout:?}"
        );
        for name in WRAPPED {
            let link = dir.join(name);
            let meta = fs::symlink_metadata(&link).ctx(&format!("{attempt}: {name} missing"))?;
            ensure!(meta.file_type().is_symlink(), "{name} is not a symlink");
            let target = link.canonicalize().ctx("resolving a link")?;
            ensure!(target == hpcc, "{name} points at {target:?}, not hpcc");
        }
    }

    // The printed line, evaluated by a shell, puts the links first on PATH.
    let script = format!(
        "eval \"$('{}' wrap '{}')\" && command -v gcc && gcc -c x.c && gcc -c x.c",
        harness::arg(harness::hpcc_binary()),
        harness::arg(&dir)
    );
    let mut command = Command::new("sh");
    command.args(["-c", &script]).current_dir(&sandbox.project);
    sandbox.environment(&mut command);
    let out = output_within(&mut command, LIMIT)?;
    harness::succeeded(&out, "sh using the wrap line")?;
    let found = harness::text(&out.stdout);
    ensure!(
        found.trim() == harness::arg(&dir.join("gcc")),
        "command -v gcc after the wrap line gave {found:?}"
    );
    let object = fs::read(sandbox.project.join("x.o")).ctx("reading x.o")?;
    ensure!(object == x, "the wrapped gcc produced a different object");
    let (direct, preprocessor, misses) = sandbox.counts();
    ensure!(
        (direct + preprocessor, misses) == (1, 1),
        "two compiles through the wrap dir: expected a miss then a hit, got {direct}+{preprocessor} hits, {misses} misses"
    );

    // A real file of the same name is never replaced.
    let other = sandbox.base.join("other");
    fs::create_dir_all(&other).ctx("creating a dir")?;
    fs::write(other.join("gcc"), "keep me\n").ctx("writing a file")?;
    let out = sandbox.hpcc(&["wrap", harness::arg(&other)]);
    ensure!(
        !out.status.success(),
        "hpcc wrap replaced or ignored a regular file"
    );
    ensure!(
        harness::contains(&out.stderr, b"gcc"),
        "the error does not name the file: {}",
        harness::text(&out.stderr)
    );
    let kept = fs::read_to_string(other.join("gcc")).ctx("reading the file")?;
    ensure!(kept == "keep me\n", "the regular file was changed");

    for args in [&["wrap"][..], &["wrap", "a", "b"][..]] {
        let out = sandbox.hpcc(args);
        ensure!(
            !out.status.success() && harness::contains(&out.stderr, b"wrap"),
            "`hpcc {}`: expected a usage error, got {} {}",
            args.join(" "),
            out.status,
            harness::text(&out.stderr)
        );
    }
    Ok(())
}

fn launcher_cmake() -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write(
        "src/CMakeLists.txt",
        "cmake_minimum_required(VERSION 3.10)\nproject(demo C)\n\
         add_library(util STATIC util.c)\nadd_executable(demo main.c)\n\
         target_link_libraries(demo util)\n",
    );
    sandbox.write("src/util.h", "int util(int v);\n");
    sandbox.write(
        "src/util.c",
        "#include \"util.h\"\nint util(int v) { return v * 2; }\n",
    );
    sandbox.write(
        "src/main.c",
        "#include <stdio.h>\n#include \"util.h\"\n\
         int main(void) { printf(\"%d\\n\", util(21)); return 0; }\n",
    );
    let cmake = |args: &[&str], what: &str| -> TestResult {
        let mut command = Command::new("cmake");
        command.args(args).current_dir(&sandbox.project);
        sandbox.environment(&mut command);
        let out = output_within(&mut command, Duration::from_secs(300))?;
        harness::succeeded(&out, what)
            .map_err(|error| format!("{error}\nstdout:\n{}", harness::text(&out.stdout)))
    };
    let launcher = format!(
        "-DCMAKE_C_COMPILER_LAUNCHER={}",
        harness::arg(harness::hpcc_binary())
    );
    cmake(
        &[
            "-S",
            "src",
            "-B",
            "build",
            "-G",
            "Unix Makefiles",
            "-DCMAKE_C_COMPILER=gcc",
            &launcher,
        ],
        "cmake configure",
    )?;
    let objects = [
        "build/CMakeFiles/util.dir/util.c.o",
        "build/CMakeFiles/demo.dir/main.c.o",
    ];
    let zero = sandbox.hpcc(&["stats", "--zero"]);
    harness::succeeded(&zero, "hpcc stats --zero")?;
    cmake(&["--build", "build"], "the first build")?;
    let (direct, preprocessor, misses) = sandbox.counts();
    ensure!(
        (direct + preprocessor, misses) == (0, 2),
        "first build: expected 2 misses, got {direct}+{preprocessor} hits, {misses} misses"
    );
    let first: Vec<Vec<u8>> = objects.iter().map(|path| sandbox.read(path)).collect();

    cmake(&["--build", "build", "--target", "clean"], "cmake clean")?;
    for path in objects {
        ensure!(
            !sandbox.project.join(path).exists(),
            "{path} survived the clean"
        );
    }
    harness::succeeded(&sandbox.hpcc(&["stats", "--zero"]), "hpcc stats --zero")?;
    cmake(&["--build", "build"], "the second build")?;
    let (direct, preprocessor, misses) = sandbox.counts();
    ensure!(
        (direct + preprocessor, misses) == (2, 0),
        "second build: expected 2 hits, got {direct}+{preprocessor} hits, {misses} misses"
    );
    for (path, before) in objects.iter().zip(&first) {
        ensure!(
            &sandbox.read(path) == before,
            "{path} differs between the built and the cached build"
        );
    }
    let run = Command::new(sandbox.project.join("build/demo"))
        .output()
        .ctx("running the demo")?;
    ensure!(
        run.status.success() && run.stdout == b"42\n",
        "the demo built from cached objects printed {:?}",
        harness::text(&run.stdout)
    );
    Ok(())
}

/// `hpcc gcc`, `hpcc /abs/path/gcc` and `hpcc cc` all work and share the cache.
fn compiler_by_name_and_path() -> TestResult {
    let sandbox = project();
    let x = plain_object(&sandbox, "gcc", "x.c")?;
    let gcc = which("gcc")?;
    for (index, compiler) in ["gcc", harness::arg(&gcc), "cc"].into_iter().enumerate() {
        let what = format!("hpcc {compiler} -c x.c");
        let mut command = sandbox.hpcc_command(&[compiler, "-c", "x.c"]);
        let (hits, misses) = compile_counted(&sandbox, &mut command, "x.o", &x, &what)?;
        ensure!(hits + misses == 1, "{what}: not counted once");
        if index == 1 {
            // The same compiler by name and by path: the same entry.
            ensure!(hits == 1, "{what}: not a hit after `hpcc gcc`");
        }
    }
    // Naming hpcc itself as the compiler: an error, not a loop.
    let mut command = sandbox.hpcc_command(&[harness::arg(harness::hpcc_binary()), "-c", "x.c"]);
    let out = output_within(&mut command, LIMIT)?;
    ensure!(
        !out.status.success(),
        "hpcc accepted itself as the compiler"
    );
    ensure!(
        harness::contains(&out.stderr, b"hpcc itself"),
        "unclear error for hpcc as its own compiler: {}",
        harness::text(&out.stderr)
    );
    // A compiler that does not exist.
    let out = sandbox.hpcc(&["no-such-compiler-hpcc", "-c", "x.c"]);
    ensure!(
        out.status.code() == Some(127),
        "a missing compiler: exit {:?}",
        out.status.code()
    );
    ensure!(
        harness::contains(&out.stderr, b"no-such-compiler-hpcc"),
        "the error does not name the missing compiler: {}",
        harness::text(&out.stderr)
    );
    Ok(())
}

fn version_and_help() -> TestResult {
    let sandbox = Sandbox::new();
    let expected = format!("hpcc {}\n", env!("CARGO_PKG_VERSION"));
    for flag in ["--version", "-V", "version"] {
        let out = sandbox.hpcc(&[flag]);
        harness::succeeded(&out, &format!("hpcc {flag}"))?;
        ensure!(
            out.stdout == expected.as_bytes(),
            "hpcc {flag} printed {:?}",
            harness::text(&out.stdout)
        );
    }
    for flag in ["--help", "-h", "help"] {
        let out = sandbox.hpcc(&[flag]);
        harness::succeeded(&out, &format!("hpcc {flag}"))?;
        for word in ["usage: hpcc", "stats", "config", "clean", "wrap"] {
            ensure!(
                harness::contains(&out.stdout, word.as_bytes()),
                "hpcc {flag} does not mention {word:?}: {}",
                harness::text(&out.stdout)
            );
        }
    }
    Ok(())
}

/// A miss, a hit and a link, for commands to report on.
fn some_activity(sandbox: &Sandbox) -> TestResult {
    for _ in 0..2 {
        harness::succeeded(&sandbox.hpcc(&["gcc", "-c", "x.c"]), "hpcc gcc -c x.c")?;
    }
    sandbox.write("main.c", "int main(void) { return 0; }\n");
    harness::succeeded(
        &sandbox.hpcc(&["gcc", "main.c", "-o", "main"]),
        "hpcc gcc main.c -o main",
    )
}

fn stats_command() -> TestResult {
    let sandbox = project();
    some_activity(&sandbox)?;
    let out = sandbox.hpcc(&["stats"]);
    harness::succeeded(&out, "hpcc stats")?;
    let text = harness::text(&out.stdout);
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let has = |words: &[&str]| lines.iter().any(|line| line.as_slice() == words);
    ensure!(
        text.contains(harness::arg(&sandbox.cache)),
        "hpcc stats does not show the cache dir:\n{text}"
    );
    ensure!(
        has(&["hits", "(direct)", "1"]) && has(&["misses", "1"]),
        "hpcc stats does not show 1 hit and 1 miss:\n{text}"
    );
    ensure!(
        has(&["uncacheable:", "linking", "1"]),
        "hpcc stats does not show the link:\n{text}"
    );

    let out = sandbox.hpcc(&["stats", "--json"]);
    harness::succeeded(&out, "hpcc stats --json")?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).ctx("hpcc stats --json is not JSON")?;
    ensure!(
        json["hits"]["direct"] == 1
            && json["misses"] == 1
            && json["uncacheable"]["linking"] == 1
            && json["hit_rate"] == 0.5
            && json["cache_dir"] == harness::arg(&sandbox.cache),
        "unexpected stats: {json}"
    );
    ensure!(
        json["cache_entries"].as_u64().unwrap_or(0) >= 1
            && json["cache_size_bytes"].as_u64().unwrap_or(0) > 0,
        "stats show an empty cache after a miss: {json}"
    );
    // Stats of a cache that does not exist yet: zeros, not an error.
    let out = sandbox
        .hpcc_command(&["stats", "--json"])
        .env("HPCC_CACHE_DIR", sandbox.base.join("fresh"))
        .output()
        .ctx("hpcc stats on a fresh dir")?;
    harness::succeeded(&out, "hpcc stats on a missing cache dir")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ctx("JSON")?;
    ensure!(
        json["misses"] == 0 && json["cache_entries"] == 0,
        "stats of a missing cache: {json}"
    );
    Ok(())
}

fn stats_zero() -> TestResult {
    let sandbox = project();
    some_activity(&sandbox)?;
    let entries = sandbox.stats()["cache_entries"].clone();
    for flag in ["--zero", "-z"] {
        let out = sandbox.hpcc(&["stats", flag]);
        harness::succeeded(&out, &format!("hpcc stats {flag}"))?;
        let stats = sandbox.stats();
        ensure!(
            sandbox.counts() == (0, 0, 0) && stats["uncacheable"] == serde_json::json!({}),
            "counts after stats {flag}: {stats}"
        );
        ensure!(
            stats["cache_entries"] == entries,
            "stats {flag} changed the cache: {stats}"
        );
    }
    // The cache itself is untouched: the next compile is a hit.
    harness::succeeded(&sandbox.hpcc(&["gcc", "-c", "x.c"]), "hpcc gcc -c x.c")?;
    ensure!(
        sandbox.counts() == (1, 0, 0),
        "the compile after zeroing was not a hit: {}",
        sandbox.stats()
    );
    Ok(())
}

fn clean_command() -> TestResult {
    let sandbox = project();
    let x = plain_object(&sandbox, "gcc", "x.c")?;
    some_activity(&sandbox)?;
    ensure!(
        sandbox.stats()["cache_entries"].as_u64().unwrap_or(0) > 0,
        "nothing was cached before the clean"
    );
    let out = sandbox.hpcc(&["clean"]);
    harness::succeeded(&out, "hpcc clean")?;
    let stats = sandbox.stats();
    ensure!(
        stats["cache_size_bytes"] == 0 && stats["cache_entries"] == 0,
        "the cache is not empty after hpcc clean: {stats}"
    );
    for kind in ["manifests", "results"] {
        let left = harness::tree(&sandbox.cache.join(kind));
        ensure!(
            left.is_empty(),
            "{kind} left after hpcc clean: {:?}",
            left.keys().collect::<Vec<_>>()
        );
    }
    let mut command = sandbox.hpcc_command(&["gcc", "-c", "x.c"]);
    let (hits, misses) = compile_counted(&sandbox, &mut command, "x.o", &x, "after clean")?;
    ensure!(
        (hits, misses) == (0, 1),
        "the compile after hpcc clean was not a miss"
    );
    let mut command = sandbox.hpcc_command(&["gcc", "-c", "x.c"]);
    let (hits, _) = compile_counted(&sandbox, &mut command, "x.o", &x, "after clean, again")?;
    ensure!(hits == 1, "the cache does not work after hpcc clean");
    Ok(())
}

fn config_text(command: &mut Command) -> Result<String, String> {
    let out = command.output().ctx("running hpcc config")?;
    harness::succeeded(&out, "hpcc config")?;
    Ok(harness::text(&out.stdout))
}

fn config_command() -> TestResult {
    let sandbox = project();
    let text = config_text(&mut sandbox.hpcc_command(&["config"]))?;
    let config_path = sandbox.base.join("no-config.toml");
    for needle in [
        harness::arg(&config_path),
        "absent",
        harness::arg(&sandbox.cache),
        "-ffile-prefix-map",
    ] {
        ensure!(
            text.contains(needle),
            "hpcc config does not mention {needle:?}:\n{text}"
        );
    }

    // A config file's settings show, and HPCC_CACHE_DIR beats its cache_dir.
    let file_cache = sandbox.base.join("file-cache");
    let config = sandbox.base.join("config.toml");
    fs::write(
        &config,
        format!(
            "cache_dir = \"{}\"\nmax_size = \"2G\"\nfile_prefix_map = false\n",
            harness::arg(&file_cache)
        ),
    )
    .ctx("writing the config")?;
    let text = config_text(
        sandbox
            .hpcc_command(&["config"])
            .env("HPCC_CONFIG", &config),
    )?;
    for needle in [
        harness::arg(&config),
        "present",
        harness::arg(&sandbox.cache),
        "max_size = \"2G\"",
        "file_prefix_map = false",
    ] {
        ensure!(
            text.contains(needle),
            "hpcc config with a file does not mention {needle:?}:\n{text}"
        );
    }
    ensure!(
        !text.contains(harness::arg(&file_cache)),
        "HPCC_CACHE_DIR did not override the file's cache_dir:\n{text}"
    );
    let out = sandbox
        .hpcc_command(&["gcc", "-c", "x.c"])
        .env("HPCC_CONFIG", &config)
        .output()
        .ctx("compiling")?;
    harness::succeeded(&out, "compile with a config file")?;
    ensure!(
        sandbox.counts() == (0, 0, 1) && !file_cache.exists(),
        "the compile did not use HPCC_CACHE_DIR over the file's cache_dir"
    );
    // Without the variable, the file's cache_dir is used.
    let mut without = sandbox.hpcc_command(&["config"]);
    without
        .env("HPCC_CONFIG", &config)
        .env_remove("HPCC_CACHE_DIR");
    let text = config_text(&mut without)?;
    ensure!(
        text.contains(harness::arg(&file_cache)),
        "the file's cache_dir is not in effect without HPCC_CACHE_DIR:\n{text}"
    );
    let out = sandbox
        .hpcc_command(&["gcc", "-c", "x.c"])
        .env("HPCC_CONFIG", &config)
        .env_remove("HPCC_CACHE_DIR")
        .output()
        .ctx("compiling")?;
    harness::succeeded(&out, "compile with the file's cache_dir")?;
    ensure!(
        file_cache.join("stats").is_dir(),
        "the compile did not use the file's cache_dir"
    );

    // An environment override of another key.
    let text = config_text(
        sandbox
            .hpcc_command(&["config"])
            .env("HPCC_MAX_SIZE", "123M"),
    )?;
    ensure!(
        text.contains("max_size = \"123M\""),
        "HPCC_MAX_SIZE=123M does not show in hpcc config:\n{text}"
    );
    Ok(())
}

fn command_argument_errors() -> TestResult {
    let sandbox = Sandbox::new();
    for args in [
        &["stats", "--bogus"][..],
        &["stats", "--json", "extra"][..],
        &["config", "--bogus"][..],
        &["clean", "--bogus"][..],
    ] {
        let out = sandbox.hpcc(args);
        let culprit = args[args.len() - 1];
        ensure!(!out.status.success(), "`hpcc {}` succeeded", args.join(" "));
        ensure!(
            harness::contains(&out.stderr, culprit.as_bytes())
                && !harness::contains(&out.stderr, b"panicked"),
            "`hpcc {}` does not name {culprit:?}: {}",
            args.join(" "),
            harness::text(&out.stderr)
        );
    }
    Ok(())
}

/// `hpcc audit verify ...` hands over to `hpcc-worker audit-verify ...`: beside hpcc when it
/// is built there, else on `PATH` (empty here). Either way a row that cannot be checked exits
/// 2 naming the worker or its config.
fn audit_verify_hands_over_to_the_worker() -> TestResult {
    let sandbox = Sandbox::new();
    for args in [&["audit"][..], &["audit", "check"][..]] {
        let out = sandbox.hpcc(args);
        ensure!(
            out.status.code() == Some(2) && harness::contains(&out.stderr, b"expected `verify`"),
            "`hpcc {}`: {} {}",
            args.join(" "),
            out.status,
            harness::text(&out.stderr)
        );
    }
    let empty = sandbox.base.join("empty-path");
    fs::create_dir_all(&empty).ctx("creating an empty PATH directory")?;
    let missing = sandbox.base.join("no-worker.toml");
    let out = sandbox
        .hpcc_command(&[
            "audit",
            "verify",
            "--config",
            harness::arg(&missing),
            "a\tb",
        ])
        .env("PATH", &empty)
        .output()
        .ctx("running hpcc audit verify")?;
    let stderr = harness::text(&out.stderr);
    let handed_over = stderr.contains(harness::arg(&missing));
    let not_found = stderr.contains("hpcc-worker is neither beside hpcc nor on PATH");
    ensure!(
        out.status.code() == Some(2) && (handed_over || not_found),
        "hpcc audit verify: {} {stderr}",
        out.status
    );
    Ok(())
}

fn no_arguments() -> TestResult {
    let sandbox = Sandbox::new();
    let out = sandbox.hpcc(&[]);
    ensure!(
        !out.status.success() && out.status.code().is_some(),
        "hpcc with no arguments: {}",
        out.status
    );
    ensure!(
        harness::contains(&out.stderr, b"usage")
            && !harness::contains(&out.stderr, b"panicked")
            && out.stdout.is_empty(),
        "hpcc with no arguments printed: {}{}",
        harness::text(&out.stdout),
        harness::text(&out.stderr)
    );
    Ok(())
}

fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

/// Runs the plain compiler and then hpcc on the same argv in the same project, with the
/// project's new files removed in between; compares behaviour and files.
fn same_as_plain(sandbox: &Sandbox, argv: &[OsString], what: &str) -> TestResult {
    let before = harness::tree(&sandbox.project);
    let plain = sandbox.plain_command(argv).output().ctx("running gcc")?;
    let plain_files = harness::tree(&sandbox.project);
    for path in plain_files.keys() {
        if !before.contains_key(path) {
            fs::remove_file(sandbox.project.join(path)).ctx("removing an output")?;
        }
    }
    let hpcc = sandbox.hpcc_command(argv).output().ctx("running hpcc")?;
    ensure!(
        !harness::contains(&hpcc.stderr, b"panicked"),
        "{what}: hpcc panicked: {}",
        harness::text(&hpcc.stderr)
    );
    harness::same_behaviour(&plain, &hpcc, what)?;
    ensure!(
        harness::tree(&sandbox.project) == plain_files,
        "{what}: the files differ from the plain compiler's"
    );
    Ok(())
}

fn non_utf8_arguments() -> TestResult {
    let sandbox = project();
    // A non-UTF-8 option: not understood, passed through untouched.
    let argv = [os(b"gcc"), os(b"-c"), os(b"x.c"), os(b"-DNAME=caf\xe9")];
    same_as_plain(&sandbox, &argv, "a non-UTF-8 -D value")?;
    let argv = [os(b"gcc"), os(b"-c"), os(b"x.c"), os(b"-D\xff=1")];
    same_as_plain(&sandbox, &argv, "a non-UTF-8 macro name")?;
    ensure!(
        sandbox.uncacheable("unknown_option") == 2,
        "non-UTF-8 options not counted as unknown: {}",
        sandbox.stats()
    );

    // A non-UTF-8 source and output name.
    harness::write_aged(
        &sandbox.project.join(OsStr::from_bytes(b"caf\xe9.c")),
        SOURCE.as_bytes(),
    );
    let argv = [os(b"gcc"), os(b"-c"), os(b"caf\xe9.c")];
    same_as_plain(&sandbox, &argv, "a non-UTF-8 source name")?;
    let argv = [
        os(b"gcc"),
        os(b"-c"),
        os(b"caf\xe9.c"),
        os(b"-o"),
        os(b"\xff.o"),
    ];
    same_as_plain(&sandbox, &argv, "a non-UTF-8 output name")?;
    // A missing non-UTF-8 source: the compiler's error.
    let argv = [os(b"gcc"), os(b"-c"), os(b"missing\xff.c")];
    same_as_plain(&sandbox, &argv, "a missing non-UTF-8 source")?;

    // A non-UTF-8 compiler name and command argument: errors, not panics.
    for argv in [
        vec![os(b"\xffcc"), os(b"-c"), os(b"x.c")],
        vec![os(b"stats"), os(b"--\xff")],
    ] {
        let out = sandbox.hpcc_command(&argv).output().ctx("running hpcc")?;
        ensure!(
            !out.status.success() && !harness::contains(&out.stderr, b"panicked"),
            "hpcc {argv:?}: {} {}",
            out.status,
            harness::text(&out.stderr)
        );
    }
    Ok(())
}

/// A source whose name is not UTF-8 is an ordinary file: compiled, cached and hit like any
/// other, and never counted as an internal error.
fn non_utf8_source_name_is_cached() -> TestResult {
    let sandbox = project();
    let name = OsStr::from_bytes(b"caf\xe9.c");
    harness::write_aged(&sandbox.project.join(name), SOURCE.as_bytes());
    let expected = {
        let out = sandbox
            .plain_command(&[OsStr::new("gcc"), OsStr::new("-c"), name])
            .output()
            .ctx("running gcc")?;
        harness::succeeded(&out, "plain gcc on a non-UTF-8 name")?;
        let object = sandbox.project.join(OsStr::from_bytes(b"caf\xe9.o"));
        let bytes = fs::read(&object).ctx("reading the plain object")?;
        fs::remove_file(&object).ctx("removing the plain object")?;
        bytes
    };
    let output = "out.o";
    for attempt in ["first", "second"] {
        let mut command = sandbox.hpcc_command(&[
            OsStr::new("gcc"),
            OsStr::new("-c"),
            name,
            OsStr::new("-o"),
            OsStr::new(output),
        ]);
        compile_counted(
            &sandbox,
            &mut command,
            output,
            &expected,
            &format!("{attempt} compile of a non-UTF-8 source name"),
        )?;
    }
    let stats = sandbox.stats();
    ensure!(
        stats["errors"] == serde_json::json!({}),
        "a non-UTF-8 source name is counted as an hpcc error: {stats}"
    );
    ensure!(
        sandbox.counts() == (1, 0, 1),
        "a non-UTF-8 source name: expected a miss then a hit: {stats}"
    );
    Ok(())
}

/// A non-UTF-8 `HPCC_CACHE_DIR` is used as given, not a lossy copy of it.
fn non_utf8_cache_dir() -> TestResult {
    let sandbox = project();
    let cache = sandbox.base.join(OsStr::from_bytes(b"cache-\xe9"));
    let out = sandbox
        .hpcc_command(&["gcc", "-c", "x.c"])
        .env("HPCC_CACHE_DIR", &cache)
        .output()
        .ctx("running hpcc")?;
    harness::succeeded(&out, "a compile with a non-UTF-8 cache dir")?;
    ensure!(
        cache.join("stats").is_dir(),
        "the non-UTF-8 cache dir was not used; the base holds {:?}",
        fs::read_dir(&sandbox.base)
            .map(|entries| entries
                .flatten()
                .map(|entry| entry.file_name())
                .collect::<Vec<_>>())
            .unwrap_or_default()
    );
    Ok(())
}

pub fn cases() -> Vec<crate::Case> {
    const GCC: &[Need] = &[Need::Gcc];
    vec![
        ("invocation::masquerade_gcc", GCC, masquerade_gcc),
        (
            "invocation::masquerade_several_link_dirs",
            GCC,
            masquerade_several_link_dirs,
        ),
        (
            "invocation::masquerade_clang",
            &[Need::Clang],
            masquerade_clang,
        ),
        ("invocation::wrap_command", GCC, wrap_command),
        (
            "invocation::launcher_cmake",
            &[Need::Gcc, Need::Cmake],
            launcher_cmake,
        ),
        (
            "invocation::compiler_by_name_and_path",
            GCC,
            compiler_by_name_and_path,
        ),
        ("invocation::version_and_help", &[], version_and_help),
        ("invocation::stats_command", GCC, stats_command),
        ("invocation::stats_zero", GCC, stats_zero),
        ("invocation::clean_command", GCC, clean_command),
        ("invocation::config_command", GCC, config_command),
        (
            "invocation::command_argument_errors",
            &[],
            command_argument_errors,
        ),
        ("invocation::no_arguments", &[], no_arguments),
        (
            "invocation::audit_verify_hands_over_to_the_worker",
            &[],
            audit_verify_hands_over_to_the_worker,
        ),
        ("invocation::non_utf8_arguments", GCC, non_utf8_arguments),
        (
            "invocation::non_utf8_source_name_is_cached",
            GCC,
            non_utf8_source_name_is_cached,
        ),
        ("invocation::non_utf8_cache_dir", GCC, non_utf8_cache_dir),
    ]
}
