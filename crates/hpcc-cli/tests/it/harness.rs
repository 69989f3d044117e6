//! Shared test plumbing: temporary projects, running hpcc and the plain compiler, stats.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A test's outcome: `Err` carries the failure message.
pub type TestResult = Result<(), String>;

/// Something a test needs from the machine.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// gcc and g++ on PATH.
    Gcc,
    /// clang on PATH.
    Clang,
    /// Running as root (to mount a small tmpfs).
    Root,
    /// Not running as root (permission bits are enforced).
    NotRoot,
    /// cmake on PATH (for the launcher-style test).
    Cmake,
    /// GNU make on PATH.
    Make,
    /// redis-server and redis-cli on PATH.
    Redis,
    /// memcached on PATH.
    Memcached,
    /// moto's S3 server (`python3 -m moto.server`).
    S3,
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

fn on_path_with(program: &str, flag: &str) -> bool {
    Command::new(program)
        .arg(flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

fn moto_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import moto.server, flask"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The first unmet need, as a reason.
pub fn missing(needs: &[Need]) -> Option<String> {
    for need in needs {
        let unmet = match need {
            Need::Gcc => (!on_path("gcc") || !on_path("g++")).then_some("gcc/g++ not installed"),
            Need::Clang => (!on_path("clang")).then_some("clang not installed"),
            Need::Root => (!is_root()).then_some("needs root (mounts a tmpfs)"),
            Need::NotRoot => is_root().then_some("running as root: permission bits not enforced"),
            Need::Cmake => (!on_path("cmake")).then_some("cmake not installed"),
            Need::Make => (!on_path("make")).then_some("make not installed"),
            Need::Redis => (!on_path("redis-server") || !on_path("redis-cli"))
                .then_some("redis-server not installed"),
            Need::Memcached => {
                (!on_path_with("memcached", "-h")).then_some("memcached not installed")
            }
            Need::S3 => {
                (!moto_installed()).then_some("moto (pip install 'moto[server]') not installed")
            }
        };
        if let Some(reason) = unmet {
            return Some(reason.to_owned());
        }
    }
    None
}

/// Fails the test with a message unless `condition` holds.
#[macro_export]
macro_rules! ensure {
    ($condition:expr, $($message:tt)*) => {
        if !$condition {
            return Err(format!($($message)*));
        }
    };
}

/// Turns any displayable error into a test failure with context.
pub trait Context<T> {
    /// Adds what was being done.
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|error| format!("{what}: {error}"))
    }
}

/// A scratch area: a project directory and a private cache.
pub struct Sandbox {
    _temp: tempfile::TempDir,
    /// The scratch root.
    pub base: PathBuf,
    /// The cache directory hpcc uses.
    pub cache: PathBuf,
    /// A project directory (with a `.hpcc` marker unless `plain` was asked).
    pub project: PathBuf,
    /// When [`Sandbox::write`] last wrote a file: hpcc commands wait until its ctime is old
    /// enough to be trusted, so that counts of hits do not depend on how fast the test ran.
    last_write: std::sync::Mutex<Option<std::time::Instant>>,
    /// Whether hpcc may use a daemon (its own: `XDG_RUNTIME_DIR` is private to the sandbox).
    daemon: bool,
    /// Extra variables for every hpcc run (daemon settings).
    extra_env: Vec<(String, String)>,
}

impl Sandbox {
    /// A sandbox whose project has a `.hpcc` marker.
    pub fn new() -> Sandbox {
        let sandbox = Sandbox::plain();
        fs::write(sandbox.project.join(".hpcc"), "").expect("writing the marker");
        sandbox
    }

    /// A sandbox whose hpcc runs use a daemon (not started automatically; see
    /// [`Sandbox::start_daemon`]), with these extra `HPCC_*` settings. The daemon is stopped
    /// when the sandbox is dropped. Its project has no marker, so objects equal the plain
    /// compiler's. It lives under the target directory rather than `/tmp`, whose constant
    /// directory churn would keep the daemon's hot-file table empty.
    pub fn with_daemon(settings: &[(&str, &str)]) -> Sandbox {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(&base).expect("creating the target tmp dir");
        let temp = tempfile::tempdir_in(base).expect("creating a temporary directory");
        let mut sandbox = Sandbox::from_temp(temp);
        sandbox.daemon = true;
        sandbox.extra_env = settings
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        sandbox
    }

    /// A sandbox whose project has no marker.
    pub fn plain() -> Sandbox {
        Sandbox::from_temp(tempfile::tempdir().expect("creating a temporary directory"))
    }

    fn from_temp(temp: tempfile::TempDir) -> Sandbox {
        let base = temp.path().to_path_buf();
        let cache = base.join("cache");
        let project = base.join("project");
        fs::create_dir_all(&project).expect("creating the project dir");
        Sandbox {
            _temp: temp,
            base,
            cache,
            project,
            last_write: std::sync::Mutex::new(None),
            daemon: false,
            extra_env: Vec::new(),
        }
    }

    /// Writes a file under the project, creating directories. Its mtime is set a few seconds
    /// into the past, as for a checked-out file (a file written in the same instant as the
    /// compile is, correctly, too new to cache).
    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.project.join(relative);
        write_aged(&path, text.as_bytes());
        *self.last_write.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now());
        path
    }

    /// Sleeps until the last [`Sandbox::write`] is [`SETTLE`] old.
    fn settle_writes(&self) {
        let last = *self.last_write.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(remaining) = last.and_then(|at| SETTLE.checked_sub(at.elapsed())) {
            std::thread::sleep(remaining);
        }
    }

    /// Runs `hpcc <args>` in the project directory.
    pub fn hpcc(&self, args: &[&str]) -> Output {
        self.hpcc_in(&self.project, args)
    }

    /// Runs `hpcc <args>` in `dir`.
    pub fn hpcc_in(&self, dir: &Path, args: &[&str]) -> Output {
        self.settle_writes();
        let mut command = Command::new(hpcc_binary());
        command.args(args).current_dir(dir);
        self.environment(&mut command);
        command.output().expect("running hpcc")
    }

    /// Sets the isolated environment on a command.
    pub fn environment(&self, command: &mut Command) {
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("HPCC_") {
                command.env_remove(name);
            }
        }
        command
            .env("HPCC_CACHE_DIR", &self.cache)
            .env("HPCC_CONFIG", self.base.join("no-config.toml"))
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("DEPENDENCIES_OUTPUT")
            .env_remove("SUNPRO_DEPENDENCIES")
            .env("LC_ALL", "C")
            // Each sandbox has its own runtime directory, so its own daemon if any.
            .env("XDG_RUNTIME_DIR", self.base.join("run"))
            .env(
                "HPCC_DAEMON_ENABLED",
                if self.daemon { "true" } else { "false" },
            )
            .env("HPCC_DAEMON_AUTOSTART", "false");
        for (name, value) in &self.extra_env {
            command.env(name, value);
        }
    }

    /// `hpcc start`, checked.
    pub fn start_daemon(&self) -> TestResult {
        let out = self.hpcc(&["start"]);
        succeeded(&out, "hpcc start")
    }

    /// The pid of the daemon holding this sandbox's lock, from its lock file.
    pub fn daemon_pid(&self) -> Option<u32> {
        let run = self.base.join("run").join("hpcc");
        let entries = fs::read_dir(run).ok()?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension() == Some(OsStr::new("lock")) {
                if let Ok(text) = fs::read_to_string(&path) {
                    if let Ok(pid) = text.trim().parse() {
                        return Some(pid);
                    }
                }
            }
        }
        None
    }

    /// The files in this sandbox's daemon runtime directory with `extension`.
    pub fn runtime_files(&self, extension: &str) -> Vec<PathBuf> {
        let run = self.base.join("run").join("hpcc");
        let mut found: Vec<PathBuf> = fs::read_dir(run)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| path.extension() == Some(OsStr::new(extension)))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    }

    /// Runs the plain compiler in the project directory.
    pub fn plain_compiler(&self, args: &[&str]) -> Output {
        self.plain_compiler_in(&self.project, args)
    }

    /// Runs the plain compiler in `dir`.
    pub fn plain_compiler_in(&self, dir: &Path, args: &[&str]) -> Output {
        let (program, rest) = args.split_first().expect("a compiler");
        let mut command = Command::new(program);
        command.args(rest).current_dir(dir);
        self.environment(&mut command);
        command.output().expect("running the compiler")
    }

    /// `hpcc stats --json`, parsed.
    pub fn stats(&self) -> serde_json::Value {
        let out = self.hpcc(&["stats", "--json"]);
        assert!(
            out.status.success(),
            "hpcc stats failed: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("stats --json is JSON")
    }

    /// (direct hits, preprocessor hits, misses).
    pub fn counts(&self) -> (u64, u64, u64) {
        let stats = self.stats();
        (
            stats["hits"]["direct"].as_u64().unwrap_or(0),
            stats["hits"]["preprocessor"].as_u64().unwrap_or(0),
            stats["misses"].as_u64().unwrap_or(0),
        )
    }

    /// The count of one uncacheable reason.
    pub fn uncacheable(&self, reason: &str) -> u64 {
        self.stats()["uncacheable"][reason].as_u64().unwrap_or(0)
    }

    /// Reads a project file.
    pub fn read(&self, relative: &str) -> Vec<u8> {
        fs::read(self.project.join(relative))
            .unwrap_or_else(|error| panic!("reading {relative}: {error}"))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.daemon {
            let _ = self.hpcc(&["stop"]);
            // A daemon that was stopped with SIGSTOP or cannot answer is killed.
            if let Some(pid) = self.daemon_pid() {
                if process_alive(pid) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
    }
}

/// Whether process `pid` exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            // The state follows the parenthesized command name.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Writes `bytes` to `path` and ages its timestamps by ten seconds.
pub fn write_aged(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("creating parent directories");
    }
    fs::write(path, bytes).expect("writing a file");
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
    let file = fs::File::options()
        .write(true)
        .open(path)
        .expect("reopening a file");
    file.set_modified(past).expect("setting mtime");
}

/// The hpcc binary under test, with `hpccd` (another package's binary, which cargo does not
/// build for this package's tests) built beside it on first use.
pub fn hpcc_binary() -> &'static Path {
    static DAEMON: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let hpcc = Path::new(env!("CARGO_BIN_EXE_hpcc"));
    if let Err(error) = DAEMON.get_or_init(|| build_daemon_beside(hpcc)) {
        panic!("{error}");
    }
    hpcc
}

/// Runs `cargo build -p hpcc-daemon` into the target directory holding `hpcc`, so the daemon
/// under test is never missing or older than the sources.
fn build_daemon_beside(hpcc: &Path) -> Result<(), String> {
    let profile_dir = hpcc.parent().ok_or("hpcc has no parent directory")?;
    let target_dir = profile_dir.parent().ok_or("hpcc is not in a target dir")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&workspace)
        .args(["build", "--quiet", "-p", "hpcc-daemon", "--bin", "hpccd"])
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name() == Some(OsStr::new("release")) {
        build.arg("--release");
    }
    let output = build
        .output()
        .map_err(|error| format!("cannot run cargo to build hpccd: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "building hpccd failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let daemon = profile_dir.join("hpccd");
    if !daemon.is_file() {
        return Err(format!("{} is missing after cargo build", daemon.display()));
    }
    Ok(())
}

/// Lossy text of some output, for messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a successful exit, with the stderr in the message.
pub fn succeeded(out: &Output, what: &str) -> TestResult {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            text(&out.stderr)
        ))
    }
}

/// Compares two runs: exit code, stdout and stderr identical.
pub fn same_behaviour(a: &Output, b: &Output, what: &str) -> TestResult {
    ensure!(
        a.status.code() == b.status.code(),
        "{what}: exit {:?} vs {:?}",
        a.status.code(),
        b.status.code()
    );
    ensure!(
        a.stdout == b.stdout,
        "{what}: stdout differs:\n{}\n---\n{}",
        text(&a.stdout),
        text(&b.stdout)
    );
    ensure!(
        a.stderr == b.stderr,
        "{what}: stderr differs:\n{}\n---\n{}",
        text(&a.stderr),
        text(&b.stderr)
    );
    Ok(())
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// `OsStr` of a path, for argv.
pub fn arg(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 test path {path:?}"))
}

/// Recursively copies a directory.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("creating the copy");
    for entry in fs::read_dir(from).expect("reading a directory") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            let bytes = fs::read(entry.path()).expect("reading a file");
            write_aged(&target, &bytes);
        }
    }
}

/// Unused-import guard for `OsStr` in helpers that may need it.
pub fn _os(value: &str) -> &OsStr {
    OsStr::new(value)
}

// --- Helpers for passthrough, robustness and invocation tests. ---

impl Sandbox {
    /// A command for `hpcc <args>` in the project directory with the isolated environment, for
    /// tests that add variables, pipe stdin or spawn several processes at once.
    pub fn hpcc_command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        self.settle_writes();
        let mut command = Command::new(hpcc_binary());
        command.args(args).current_dir(&self.project);
        self.environment(&mut command);
        command
    }

    /// A command for the plain compiler (`args[0]`) in the project directory, isolated likewise.
    pub fn plain_command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let (program, rest) = args.split_first().expect("a compiler");
        let mut command = Command::new(program);
        command.args(rest).current_dir(&self.project);
        self.environment(&mut command);
        command
    }
}

/// Runs `command` with `input` piped to its stdin and collects its output.
pub fn run_with_stdin(command: &mut Command, input: &[u8]) -> Result<Output, String> {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx("spawning a command with piped stdin")?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| "the child has no stdin pipe".to_owned())?;
    let writer = std::thread::spawn({
        let input = input.to_vec();
        move || stdin.write_all(&input)
    });
    let output = child.wait_with_output().ctx("waiting for the command")?;
    // A compiler may exit without reading all of its input; a broken pipe is not a failure.
    let _ = writer.join();
    Ok(output)
}

/// Every regular file under `dir`, relative path to content (symlinks and directories skipped).
pub fn tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => walk(base, &path, out),
                Ok(kind) if kind.is_file() => {
                    if let (Ok(bytes), Ok(relative)) = (fs::read(&path), path.strip_prefix(base)) {
                        out.insert(relative.to_path_buf(), bytes);
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Waits until files written just now are old enough for hpcc to trust their timestamps
/// (a file changed within a few milliseconds of a compile is, correctly, not cached).
pub fn settle() {
    std::thread::sleep(SETTLE);
}

/// How long [`settle`] waits: hpcc distrusts timestamps within 20 ms of a compile.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(60);
