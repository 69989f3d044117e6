//! The build never fails because of hpcc: concurrent compiles, read-only and full cache
//! directories, corrupt entries, bad configuration and odd cache paths all end in the right
//! object.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::ensure;
use crate::harness::{self, Context, Need, Sandbox, TestResult};

const HEADER: &str = "#define SCALE 3\n";
const SOURCE: &str = "#include <stdio.h>\n#include \"x.h\"\n\
int scaled(int v) { return v * SCALE; }\n\
int main(void) { printf(\"%d\\n\", scaled(2)); return 0; }\n";

/// A sandbox with `x.c` and `x.h`, and the plain compiler's object for `gcc -c x.c`.
fn project() -> Result<(Sandbox, Vec<u8>), String> {
    let sandbox = Sandbox::new();
    sandbox.write("x.h", HEADER);
    sandbox.write("x.c", SOURCE);
    let object = plain_object(&sandbox, "x.c", &[])?;
    Ok((sandbox, object))
}

/// The plain compiler's object for `gcc -c <source> <extra>`, built beside the project
/// (without `-g`, an object does not depend on its own name or on `-ffile-prefix-map`).
fn plain_object(sandbox: &Sandbox, source: &str, extra: &[&str]) -> Result<Vec<u8>, String> {
    let output = sandbox.base.join("plain-reference.o");
    let output = harness::arg(&output);
    let mut argv = vec!["gcc", "-c", source, "-o", output];
    argv.extend_from_slice(extra);
    let out = sandbox.plain_compiler(&argv);
    harness::succeeded(&out, "the plain compile")?;
    let object = fs::read(output).ctx("reading the plain object")?;
    fs::remove_file(output).ctx("removing the plain object")?;
    Ok(object)
}

/// Runs `command` (an hpcc compile) and checks it succeeded silently and wrote `expected`.
fn compiles_to(
    sandbox: &Sandbox,
    command: &mut Command,
    output: &str,
    expected: &[u8],
    what: &str,
) -> TestResult {
    let _ = fs::remove_file(sandbox.project.join(output));
    let out = command.output().ctx(what)?;
    harness::succeeded(&out, what)?;
    ensure!(
        out.stderr.is_empty() && out.stdout.is_empty(),
        "{what}: unexpected output:\n{}{}",
        harness::text(&out.stdout),
        harness::text(&out.stderr)
    );
    let object =
        fs::read(sandbox.project.join(output)).ctx(&format!("{what}: reading {output}"))?;
    ensure!(
        object == expected,
        "{what}: {output} differs from the plain compiler's object"
    );
    Ok(())
}

/// `hpcc gcc -c x.c` compiles to the plain object, silently.
fn compile_x(sandbox: &Sandbox, expected: &[u8], what: &str) -> TestResult {
    compiles_to(
        sandbox,
        &mut sandbox.hpcc_command(&["gcc", "-c", "x.c"]),
        "x.o",
        expected,
        what,
    )
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough to defeat zstd.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// A C source whose object carries `len` bytes of incompressible data.
fn big_source(len: usize) -> String {
    let mut text = String::from("const unsigned char blob[] = {\n");
    for (index, byte) in noise(len).iter().enumerate() {
        text.push_str(&byte.to_string());
        text.push(',');
        if index % 32 == 31 {
            text.push('\n');
        }
    }
    text.push_str("};\nint main(void) { return blob[7]; }\n");
    text
}

/// A file system mounted for a test, unmounted when dropped (also on failure or panic).
struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn tmpfs(dir: &Path, options: &str) -> Result<Mount, String> {
        fs::create_dir_all(dir).ctx("creating the mount point")?;
        run_tool(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", options, "tmpfs"])
                .arg(dir),
        )?;
        Ok(Mount {
            dir: dir.to_path_buf(),
        })
    }

    /// Makes `dir` read-only in place with a read-only bind mount of itself.
    fn read_only_bind(dir: &Path) -> Result<Mount, String> {
        run_tool(Command::new("mount").arg("--bind").arg(dir).arg(dir))?;
        let mount = Mount {
            dir: dir.to_path_buf(),
        };
        run_tool(
            Command::new("mount")
                .args(["-o", "remount,ro,bind"])
                .arg(dir),
        )?;
        Ok(mount)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status();
    }
}

fn run_tool(command: &mut Command) -> TestResult {
    let out = command.output().ctx(&format!("running {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed: {}",
        harness::text(&out.stderr)
    );
    Ok(())
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    harness::tree(dir)
        .into_keys()
        .map(|relative| dir.join(relative))
        .collect()
}

fn counts_sum(sandbox: &Sandbox) -> (u64, u64) {
    let (direct, preprocessor, misses) = sandbox.counts();
    (direct + preprocessor, misses)
}

fn concurrent_cold_compiles() -> TestResult {
    let (sandbox, expected) = project()?;
    let outputs: Vec<String> = (0..16).map(|index| format!("out{index}.o")).collect();
    let mut children = Vec::new();
    for output in &outputs {
        let child = sandbox
            .hpcc_command(&["gcc", "-c", "x.c", "-o", output])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ctx("spawning hpcc")?;
        children.push(child);
    }
    let results: Vec<Output> = children
        .into_iter()
        .map(|child| child.wait_with_output().ctx("waiting for hpcc"))
        .collect::<Result<_, _>>()?;
    for (output, out) in outputs.iter().zip(&results) {
        harness::succeeded(out, &format!("concurrent compile to {output}"))?;
        ensure!(
            out.stderr.is_empty(),
            "{output}: stderr {}",
            harness::text(&out.stderr)
        );
        let object = fs::read(sandbox.project.join(output)).ctx(output)?;
        ensure!(object == expected, "{output} differs from the plain object");
    }
    let stats = sandbox.stats();
    let (hits, misses) = counts_sum(&sandbox);
    ensure!(
        hits + misses == 16,
        "hits {hits} + misses {misses} != 16 (stats {stats})"
    );
    ensure!(misses >= 1, "no compile was a miss (stats {stats})");
    ensure!(
        stats["errors"] == serde_json::json!({}) && stats["uncacheable"] == serde_json::json!({}),
        "errors or uncacheable compiles: {stats}"
    );
    ensure!(
        stats["corrupt_entries"].as_u64() == Some(0),
        "corrupt entries seen: {stats}"
    );
    compile_x(&sandbox, &expected, "the compile after the concurrent ones")?;
    let (after, _) = counts_sum(&sandbox);
    ensure!(after == hits + 1, "the compile after was not a hit");
    Ok(())
}

fn concurrent_hits_on_one_output() -> TestResult {
    let (sandbox, expected) = project()?;
    compile_x(&sandbox, &expected, "warming the cache")?;
    let mut children = Vec::new();
    for _ in 0..16 {
        let child = sandbox
            .hpcc_command(&["gcc", "-c", "x.c", "-o", "same.o"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ctx("spawning hpcc")?;
        children.push(child);
    }
    for child in children {
        let out = child.wait_with_output().ctx("waiting for hpcc")?;
        harness::succeeded(&out, "a concurrent hit")?;
    }
    let object = fs::read(sandbox.project.join("same.o")).ctx("same.o")?;
    ensure!(object == expected, "same.o differs from the plain object");
    let (direct, preprocessor, misses) = sandbox.counts();
    ensure!(
        (direct + preprocessor, misses) == (16, 1),
        "expected 16 hits and the warming miss, got {direct}+{preprocessor} hits, {misses} misses"
    );
    let leftovers: Vec<_> = fs::read_dir(&sandbox.project)
        .ctx("listing the project")?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("hpcc-"))
        .collect();
    ensure!(
        leftovers.is_empty(),
        "temporary files left in the project: {leftovers:?}"
    );
    Ok(())
}

/// Restores write permission on a tree when dropped, so the temporary directory can go.
struct Writable(PathBuf);

impl Drop for Writable {
    fn drop(&mut self) {
        let _ = set_mode_tree(&self.0, 0o755, 0o644);
    }
}

fn set_mode_tree(dir: &Path, dir_mode: u32, file_mode: u32) -> std::io::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_mode_tree(&entry.path(), dir_mode, file_mode)?;
        } else {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(file_mode))?;
        }
    }
    Ok(())
}

/// With the cache read-only (`make_read_only` applied to an empty and then to a warm cache),
/// compiles still produce the right objects, silently.
fn read_only_cases(
    make_read_only: impl Fn(&Sandbox) -> Result<Box<dyn std::any::Any>, String>,
) -> TestResult {
    // An empty cache that cannot be written.
    let (sandbox, expected) = project()?;
    fs::create_dir_all(&sandbox.cache).ctx("creating the cache dir")?;
    let guard = make_read_only(&sandbox)?;
    compile_x(
        &sandbox,
        &expected,
        "compiling with an empty read-only cache",
    )?;
    compile_x(&sandbox, &expected, "compiling again")?;
    drop(guard);

    // A warm cache made read-only: the cached compile and a new one both work.
    let (sandbox, expected) = project()?;
    sandbox.write("y.c", "int y(void) { return 7; }\n");
    let expected_y = plain_object(&sandbox, "y.c", &[])?;
    compile_x(&sandbox, &expected, "warming the cache")?;
    let guard = make_read_only(&sandbox)?;
    compile_x(&sandbox, &expected, "compiling a cached source read-only")?;
    compiles_to(
        &sandbox,
        &mut sandbox.hpcc_command(&["gcc", "-c", "y.c"]),
        "y.o",
        &expected_y,
        "compiling a new source read-only",
    )?;
    drop(guard);
    Ok(())
}

fn read_only_cache_permissions() -> TestResult {
    read_only_cases(|sandbox| {
        let guard = Writable(sandbox.cache.clone());
        set_mode_tree(&sandbox.cache, 0o555, 0o444).ctx("making the cache read-only")?;
        Ok(Box::new(guard))
    })
}

fn read_only_cache_mount() -> TestResult {
    read_only_cases(|sandbox| Ok(Box::new(Mount::read_only_bind(&sandbox.cache)?)))?;
    // A read-only file system mounted where the cache would be.
    let (sandbox, expected) = project()?;
    let _mount = Mount::tmpfs(&sandbox.cache, "ro,size=1m")?;
    compile_x(
        &sandbox,
        &expected,
        "compiling with a read-only tmpfs cache",
    )
}

fn full_cache() -> TestResult {
    let sandbox = Sandbox::new();
    sandbox.write("big.c", &big_source(700 * 1024));
    let expected = plain_object(&sandbox, "big.c", &[])?;
    ensure!(
        expected.len() > 512 * 1024,
        "the test object is only {} bytes",
        expected.len()
    );
    // Room for small entries and the pages the shared digest table touches (one per header
    // remembered), not for the incompressible 700 KiB object.
    let _mount = Mount::tmpfs(&sandbox.cache, "size=512k")?;
    for attempt in ["first", "second"] {
        compiles_to(
            &sandbox,
            &mut sandbox.hpcc_command(&["gcc", "-c", "big.c"]),
            "big.o",
            &expected,
            &format!("{attempt} compile into a full cache"),
        )?;
    }
    let leftovers: Vec<_> = files_under(&sandbox.cache)
        .into_iter()
        .filter(|path| path.to_string_lossy().contains(".tmp-"))
        .collect();
    ensure!(
        leftovers.is_empty(),
        "temporary files left in the full cache: {leftovers:?}"
    );
    let (hits, _) = counts_sum(&sandbox);
    ensure!(hits == 0, "an entry that cannot fit was served as a hit");
    // Small objects still get cached in what space there is.
    sandbox.write("x.h", HEADER);
    sandbox.write("x.c", SOURCE);
    let expected = plain_object(&sandbox, "x.c", &[])?;
    compile_x(&sandbox, &expected, "a small compile in the full cache")?;
    compile_x(&sandbox, &expected, "the small compile again")?;
    let (hits, _) = counts_sum(&sandbox);
    ensure!(
        hits == 1,
        "the small object was not cached beside the big one"
    );
    Ok(())
}

fn tiny_max_size() -> TestResult {
    let (sandbox, expected) = project()?;
    for attempt in ["first", "second", "third"] {
        compiles_to(
            &sandbox,
            sandbox
                .hpcc_command(&["gcc", "-c", "x.c"])
                .env("HPCC_MAX_SIZE", "100"),
            "x.o",
            &expected,
            &format!("{attempt} compile with max_size 100 bytes"),
        )?;
    }
    Ok(())
}

type Corruption = (&'static str, fn(&[u8]) -> Vec<u8>);

const CORRUPTIONS: &[Corruption] = &[
    ("flip bytes", |bytes| {
        let mut bytes = bytes.to_vec();
        let len = bytes.len();
        for index in [len / 3, len / 2, len.saturating_sub(1)] {
            if let Some(byte) = bytes.get_mut(index) {
                *byte ^= 0x5a;
            }
        }
        bytes
    }),
    ("truncate to half", |bytes| {
        bytes[..bytes.len() / 2].to_vec()
    }),
    ("truncate to nothing", |_| Vec::new()),
    ("replace with text", |_| b"not a cache entry\n".to_vec()),
    ("append garbage", |bytes| {
        let mut bytes = bytes.to_vec();
        bytes.extend_from_slice(&noise(100));
        bytes
    }),
];

/// Applies `corrupt` to every entry (manifests and results); returns how many files it hit.
fn corrupt_entries(cache: &Path, corrupt: fn(&[u8]) -> Vec<u8>) -> Result<usize, String> {
    let mut count = 0;
    for kind in ["manifests", "results"] {
        for path in files_under(&cache.join(kind)) {
            let bytes = fs::read(&path).ctx("reading an entry")?;
            fs::write(&path, corrupt(&bytes)).ctx("corrupting an entry")?;
            count += 1;
        }
    }
    Ok(count)
}

fn corrupt_entries_in_mode(mode: &str) -> TestResult {
    for (name, corrupt) in CORRUPTIONS {
        let (sandbox, expected) = project()?;
        let compile = |what: &str| {
            compiles_to(
                &sandbox,
                sandbox
                    .hpcc_command(&["gcc", "-c", "x.c"])
                    .env("HPCC_MODE", mode),
                "x.o",
                &expected,
                &format!("{mode} mode, {name}: {what}"),
            )
        };
        compile("the first compile")?;
        let (hits, misses) = counts_sum(&sandbox);
        ensure!((hits, misses) == (0, 1), "{name}: first compile not a miss");
        let corrupted = corrupt_entries(&sandbox.cache, *corrupt)?;
        ensure!(corrupted >= 1, "{name}: no entry files found to corrupt");
        compile("the compile after corruption")?;
        let stats = sandbox.stats();
        let (hits, misses) = counts_sum(&sandbox);
        let corrupt_seen = stats["corrupt_entries"].as_u64().unwrap_or(0);
        ensure!(
            hits == 0 && (misses == 2 || corrupt_seen > 0),
            "{mode} mode, {name}: corrupt entry served as a hit or not counted: {stats}"
        );
        ensure!(
            stats["errors"] == serde_json::json!({}),
            "{mode} mode, {name}: a corrupt entry counted as an error: {stats}"
        );
        compile("the compile after the repair")?;
        let (hits, _) = counts_sum(&sandbox);
        ensure!(
            hits == 1,
            "{mode} mode, {name}: the entry was not stored again after the corrupt one"
        );
    }
    Ok(())
}

fn corrupt_entries_direct() -> TestResult {
    corrupt_entries_in_mode("direct")
}

fn corrupt_entries_preprocessor() -> TestResult {
    corrupt_entries_in_mode("preprocessor")
}

/// Garbage in the bookkeeping beside the entries (compiler records, stats, size counters).
fn corrupt_bookkeeping() -> TestResult {
    let (sandbox, expected) = project()?;
    compile_x(&sandbox, &expected, "the first compile")?;
    let mut corrupted = Vec::new();
    for dir in ["compilers", "stats", "size"] {
        for path in files_under(&sandbox.cache.join(dir)) {
            fs::write(&path, noise(300)).ctx("corrupting a file")?;
            corrupted.push(path);
        }
    }
    ensure!(
        corrupted
            .iter()
            .any(|path| path.starts_with(sandbox.cache.join("compilers"))),
        "no compiler records found to corrupt: {corrupted:?}"
    );
    compile_x(&sandbox, &expected, "the compile after corruption")?;
    compile_x(&sandbox, &expected, "the next compile")?;
    let out = sandbox.hpcc(&["stats", "--json"]);
    harness::succeeded(&out, "hpcc stats over corrupt stats files")?;
    let stats: serde_json::Value =
        serde_json::from_slice(&out.stdout).ctx("stats --json is JSON")?;
    ensure!(
        stats["hits"]["direct"].as_u64().unwrap_or(0) >= 1,
        "no hit after the bookkeeping was repaired: {stats}"
    );
    Ok(())
}

/// A config problem (file text, or environment variables) that must not fail the build and
/// that `hpcc config` reports by naming `culprit`.
struct BadConfig {
    file: Option<&'static str>,
    env: &'static [(&'static str, &'static str)],
    culprit: &'static str,
}

const BAD_CONFIGS: &[BadConfig] = &[
    BadConfig {
        file: Some("max_sise = \"1G\"\n"),
        env: &[],
        culprit: "max_sise",
    },
    BadConfig {
        file: Some("[cache\nmax_size = \n"),
        env: &[],
        culprit: "bad-config.toml",
    },
    BadConfig {
        file: Some("max_size = \"lots\"\n"),
        env: &[],
        culprit: "lots",
    },
    BadConfig {
        file: Some("mode = \"fast\"\n"),
        env: &[],
        culprit: "fast",
    },
    BadConfig {
        file: None,
        env: &[("HPCC_CACHEDIR", "/tmp/nowhere")],
        culprit: "HPCC_CACHEDIR",
    },
    BadConfig {
        file: None,
        env: &[("HPCC_MODE", "fast")],
        culprit: "HPCC_MODE",
    },
    BadConfig {
        file: None,
        env: &[("HPCC_MAX_SIZE", "a lot")],
        culprit: "HPCC_MAX_SIZE",
    },
];

fn bad_config() -> TestResult {
    for bad in BAD_CONFIGS {
        let (sandbox, expected) = project()?;
        let path = sandbox.base.join("bad-config.toml");
        if let Some(text) = bad.file {
            fs::write(&path, text).ctx("writing the config")?;
        }
        let configure = |command: &mut Command| {
            if bad.file.is_some() {
                command.env("HPCC_CONFIG", &path);
            }
            for (name, value) in bad.env {
                command.env(name, value);
            }
        };
        let what = bad.culprit;
        for attempt in ["first", "second"] {
            let _ = fs::remove_file(sandbox.project.join("x.o"));
            let mut command = sandbox.hpcc_command(&["gcc", "-c", "x.c"]);
            configure(&mut command);
            let out = command.output().ctx("running hpcc")?;
            harness::succeeded(&out, &format!("{what}: {attempt} compile"))?;
            let object = fs::read(sandbox.project.join("x.o")).ctx("reading x.o")?;
            ensure!(object == expected, "{what}: wrong object");
            ensure!(
                harness::contains(&out.stderr, what.as_bytes()),
                "{what}: the compile does not say what is wrong with the config: {}",
                harness::text(&out.stderr)
            );
        }
        let mut command = sandbox.hpcc_command(&["config"]);
        configure(&mut command);
        let out = command.output().ctx("running hpcc config")?;
        ensure!(
            !out.status.success(),
            "{what}: hpcc config succeeded with a bad config"
        );
        ensure!(
            harness::contains(&out.stderr, what.as_bytes()),
            "{what}: hpcc config does not name it: {}",
            harness::text(&out.stderr)
        );
        ensure!(
            !harness::contains(&out.stderr, b"panicked"),
            "{what}: hpcc config panicked"
        );
    }
    Ok(())
}

fn config_path_is_a_directory() -> TestResult {
    let (sandbox, expected) = project()?;
    let dir = sandbox.base.join("config-dir");
    fs::create_dir_all(&dir).ctx("creating the directory")?;
    let mut command = sandbox.hpcc_command(&["gcc", "-c", "x.c"]);
    command.env("HPCC_CONFIG", &dir);
    let out = command.output().ctx("running hpcc")?;
    harness::succeeded(&out, "compile with HPCC_CONFIG a directory")?;
    let object = fs::read(sandbox.project.join("x.o")).ctx("reading x.o")?;
    ensure!(object == expected, "wrong object");
    let out = sandbox
        .hpcc_command(&["config"])
        .env("HPCC_CONFIG", &dir)
        .output()
        .ctx("running hpcc config")?;
    ensure!(!out.status.success(), "hpcc config accepted a directory");
    ensure!(
        harness::contains(&out.stderr, b"config-dir"),
        "hpcc config does not name the path: {}",
        harness::text(&out.stderr)
    );
    Ok(())
}

fn cache_dir_is_a_file() -> TestResult {
    let (sandbox, expected) = project()?;
    let file = sandbox.base.join("not-a-dir");
    fs::write(&file, "precious\n").ctx("writing the file")?;
    for attempt in ["first", "second"] {
        compiles_to(
            &sandbox,
            sandbox
                .hpcc_command(&["gcc", "-c", "x.c"])
                .env("HPCC_CACHE_DIR", &file),
            "x.o",
            &expected,
            &format!("{attempt} compile with the cache dir a regular file"),
        )?;
    }
    let text = fs::read_to_string(&file).ctx("reading the file")?;
    ensure!(text == "precious\n", "the file was changed: {text:?}");
    // A cache dir *below* a regular file cannot be created either.
    compiles_to(
        &sandbox,
        sandbox
            .hpcc_command(&["gcc", "-c", "x.c"])
            .env("HPCC_CACHE_DIR", file.join("cache")),
        "x.o",
        &expected,
        "compile with the cache dir below a regular file",
    )
}

fn cache_dir_is_created() -> TestResult {
    let (sandbox, expected) = project()?;
    let cache = sandbox.base.join("does/not/exist/yet");
    let compile = |what: &str| {
        compiles_to(
            &sandbox,
            sandbox
                .hpcc_command(&["gcc", "-c", "x.c"])
                .env("HPCC_CACHE_DIR", &cache),
            "x.o",
            &expected,
            what,
        )
    };
    compile("the first compile")?;
    ensure!(cache.is_dir(), "the cache dir was not created");
    compile("the second compile")?;
    let out = sandbox
        .hpcc_command(&["stats", "--json"])
        .env("HPCC_CACHE_DIR", &cache)
        .output()
        .ctx("running hpcc stats")?;
    harness::succeeded(&out, "hpcc stats")?;
    let stats: serde_json::Value =
        serde_json::from_slice(&out.stdout).ctx("stats --json is JSON")?;
    ensure!(
        stats["misses"].as_u64() == Some(1) && stats["hits"]["direct"].as_u64() == Some(1),
        "expected a miss then a hit in the new cache dir: {stats}"
    );
    ensure!(
        !sandbox.cache.exists(),
        "the default sandbox cache was used instead"
    );
    Ok(())
}

pub fn cases() -> Vec<crate::Case> {
    const GCC: &[Need] = &[Need::Gcc];
    vec![
        (
            "robustness::concurrent_cold_compiles",
            GCC,
            concurrent_cold_compiles,
        ),
        (
            "robustness::concurrent_hits_on_one_output",
            GCC,
            concurrent_hits_on_one_output,
        ),
        (
            "robustness::read_only_cache_permissions",
            &[Need::Gcc, Need::NotRoot],
            read_only_cache_permissions,
        ),
        (
            "robustness::read_only_cache_mount",
            &[Need::Gcc, Need::Root],
            read_only_cache_mount,
        ),
        (
            "robustness::full_cache",
            &[Need::Gcc, Need::Root],
            full_cache,
        ),
        ("robustness::tiny_max_size", GCC, tiny_max_size),
        (
            "robustness::corrupt_entries_direct",
            GCC,
            corrupt_entries_direct,
        ),
        (
            "robustness::corrupt_entries_preprocessor",
            GCC,
            corrupt_entries_preprocessor,
        ),
        ("robustness::corrupt_bookkeeping", GCC, corrupt_bookkeeping),
        ("robustness::bad_config", GCC, bad_config),
        (
            "robustness::config_path_is_a_directory",
            GCC,
            config_path_is_a_directory,
        ),
        ("robustness::cache_dir_is_a_file", GCC, cache_dir_is_a_file),
        (
            "robustness::cache_dir_is_created",
            GCC,
            cache_dir_is_created,
        ),
    ]
}
