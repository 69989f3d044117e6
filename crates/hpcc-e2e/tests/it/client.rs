//! The real `hpcc` wrapper and `hpccd` daemon with `[remote_compile]`: misses compiled on the
//! farm (scheduler and two sandbox workers), then served from the local cache; the same
//! project at another path compiled to the same objects; a dead farm falling back to local
//! compiles; paranoid mode keeping no cache on the client.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::farm::Farmland;
use crate::scheduler::now;
use crate::{Case, Need, TestResult};

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

/// `hpcc`, `hpccd` and `hpcc-worker`, built on first use (see [`crate::login::binaries`]).
pub fn client_binaries() -> Result<PathBuf, String> {
    crate::login::binaries().map(Path::to_path_buf)
}

/// One user's machine: a cache directory, a state directory with a token, and the farm.
struct Client {
    bin: PathBuf,
    home: tempfile::TempDir,
    remote_compile: String,
}

impl Client {
    fn new(
        scheduler: &str,
        image: &str,
        token: Option<&str>,
        paranoid: bool,
    ) -> Result<Client, String> {
        let home = tempfile::Builder::new()
            .prefix("hpcc-e2e-client-")
            .tempdir()
            .map_err(text)?;
        if let Some(token) = token {
            let dir = home.path().join("state/hpcc/tokens");
            std::fs::create_dir_all(&dir).map_err(text)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(text)?;
            let file = dir.join("a.json");
            let body = serde_json::json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_at": now() + 600,
                "tenant": "a",
                "token_endpoint": "http://127.0.0.1:1/token",
                "client_id": "hpcc",
            });
            std::fs::write(&file, body.to_string()).map_err(text)?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(text)?;
        }
        let client = Client {
            bin: client_binaries()?,
            home,
            remote_compile: format!(
                "{{tenant_id = \"a\", scheduler = \"{scheduler}\", insecure_plaintext = true, \
                 image = \"{image}\", timeout_secs = 120, paranoid = {paranoid}}}"
            ),
        };
        // Started first, so that tests begin with a daemon up (a wrapper waits for the one it
        // autostarts: `the_first_compile_waits_for_the_daemon_it_starts`).
        let started = client.command("hpcc").arg("start").output().map_err(text)?;
        ok(&started, "hpcc start")?;
        Ok(client)
    }

    /// Stops this client's daemon.
    fn stop(&self) -> TestResult {
        ok(
            &self.command("hpcc").arg("stop").output().map_err(text)?,
            "hpcc stop",
        )
    }

    /// A client of `land`'s farm with tenant A's token.
    fn on(land: &Farmland, paranoid: bool) -> Result<Client, String> {
        Client::new(
            &land.scheduler_url,
            &land.image,
            Some(&land.token_a()),
            paranoid,
        )
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_STATE_HOME", self.home.path().join("state"))
            .env("XDG_RUNTIME_DIR", self.home.path().join("run"))
            .env("HPCC_CACHE_DIR", self.home.path().join("cache"))
            .env("HPCC_REMOTE_COMPILE", &self.remote_compile)
            .env("HPCC_DAEMON_IDLE_TIMEOUT", "120");
        command
    }

    /// The tail of the daemon's log (its warnings say why a compile fell back), for failure
    /// messages.
    fn daemon_log(&self) -> String {
        let dir = self.home.path().join("run/hpcc");
        let mut text = String::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|ext| ext == "log") {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `hpcc gcc <args>` in `dir`.
    fn gcc(&self, dir: &Path, args: &[&str]) -> Result<Output, String> {
        self.command("hpcc")
            .current_dir(dir)
            .arg("gcc")
            .args(args)
            .output()
            .map_err(text)
    }

    fn stats(&self) -> Result<serde_json::Value, String> {
        let output = self
            .command("hpcc")
            .args(["stats", "--json"])
            .output()
            .map_err(text)?;
        serde_json::from_slice(&output.stdout).map_err(|error| {
            format!(
                "hpcc stats --json: {error}: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    fn cache_entries(&self) -> Result<u64, String> {
        Ok(self.stats()?["cache_entries"].as_u64().unwrap_or(0))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.command("hpcc").arg("stop").output();
    }
}

fn ok(output: &Output, what: &str) -> TestResult {
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A project with a `.hpcc` root marker: `count` sources, a header, a `main.c`.
fn project(parent: &Path, count: usize) -> Result<PathBuf, String> {
    let root = parent.join("project");
    std::fs::create_dir_all(root.join("include")).map_err(text)?;
    std::fs::create_dir_all(root.join("src")).map_err(text)?;
    std::fs::write(root.join(".hpcc"), "").map_err(text)?;
    std::fs::write(
        root.join("include/common.h"),
        "#include <stdio.h>\nstatic inline int twice(int v) { return 2 * v; }\n",
    )
    .map_err(text)?;
    let mut main = String::from("#include \"common.h\"\n");
    for index in 0..count {
        main.push_str(&format!("int f{index}(int);\n"));
        std::fs::write(
            root.join(format!("src/f{index}.c")),
            format!(
                "#include \"common.h\"\nint f{index}(int v) {{ const char *at = __FILE__; (void)at; return twice(v) + {index}; }}\n"
            ),
        )
        .map_err(text)?;
    }
    main.push_str("int main(void) { int sum = 0;\n");
    for index in 0..count {
        main.push_str(&format!("  sum += f{index}(1);\n"));
    }
    main.push_str("  printf(\"%d\\n\", sum); return 0; }\n");
    std::fs::write(root.join("src/main.c"), main).map_err(text)?;
    Ok(root)
}

const FLAGS: &[&str] = &["-O2", "-g", "-Wall", "-Iinclude"];

/// Compiles every source of `root` with `hpcc gcc -c`, one with `-MD`.
fn build(client: &Client, root: &Path, count: usize) -> TestResult {
    let mut names: Vec<String> = (0..count).map(|index| format!("f{index}")).collect();
    names.push("main".into());
    for name in &names {
        let source = format!("src/{name}.c");
        let object = format!("{name}.o");
        let mut args: Vec<&str> = FLAGS.to_vec();
        if name == "f0" {
            args.push("-MD");
        }
        args.extend(["-c", source.as_str(), "-o", object.as_str()]);
        ok(&client.gcc(root, &args)?, &format!("hpcc gcc {args:?}"))?;
    }
    Ok(())
}

fn link_and_run(root: &Path, count: usize) -> TestResult {
    let mut objects: Vec<String> = (0..count).map(|index| format!("f{index}.o")).collect();
    objects.push("main.o".into());
    let linked = Command::new("gcc")
        .current_dir(root)
        .args(&objects)
        .args(["-o", "prog"])
        .output()
        .map_err(text)?;
    ok(&linked, "linking")?;
    let run = Command::new(root.join("prog")).output().map_err(text)?;
    ok(&run, "running the program")?;
    let expected: usize = (0..count).map(|index| 2 + index).sum();
    let printed = String::from_utf8_lossy(&run.stdout).trim().to_owned();
    if printed != expected.to_string() {
        return Err(format!(
            "the program printed {printed}, expected {expected}"
        ));
    }
    Ok(())
}

fn all_rows(land: &Farmland) -> Result<Vec<hpcc_worker::audit::AuditRow>, String> {
    let mut rows = land.audit_rows(0)?;
    rows.extend(land.audit_rows(1)?);
    Ok(rows)
}

fn audit_count(land: &Farmland) -> Result<usize, String> {
    Ok(all_rows(land)?.len())
}

fn wrapper_compiles_misses_on_the_farm() -> TestResult {
    const COUNT: usize = 6;
    let land = Farmland::new()?;
    let client = Client::on(&land, false)?;
    let first = tempfile::tempdir().map_err(text)?;
    let root = project(first.path(), COUNT)?;
    build(&client, &root, COUNT)?;
    let stats = client.stats()?;
    let compiled = stats["remote_compile"]["compiled"].as_u64().unwrap_or(0);
    if compiled != COUNT as u64 + 1 {
        return Err(format!(
            "{compiled} remote compiles, expected {}: {stats}",
            COUNT + 1
        ));
    }
    let rows = audit_count(&land)?;
    if rows != COUNT + 1 {
        return Err(format!("{rows} audit rows, expected {}", COUNT + 1));
    }
    link_and_run(&root, COUNT)?;
    // The dependency file is the one a local compile writes.
    let deps = std::fs::read_to_string(root.join("f0.d")).map_err(text)?;
    if !deps.starts_with("f0.o:") || !deps.contains("include/common.h") {
        return Err(format!("f0.d is not a dependency file for f0.o: {deps}"));
    }
    // No host path in an object.
    let object = std::fs::read(root.join("f1.o")).map_err(text)?;
    let root_text = root.display().to_string();
    if object
        .windows(root_text.len())
        .any(|window| window == root_text.as_bytes())
    {
        return Err(format!("f1.o names the project root {root_text}"));
    }

    // A rebuild: all local hits, nothing sent.
    for index in 0..COUNT {
        std::fs::remove_file(root.join(format!("f{index}.o"))).map_err(text)?;
    }
    build(&client, &root, COUNT)?;
    let stats = client.stats()?;
    let direct = stats["hits"]["direct"].as_u64().unwrap_or(0);
    if direct != COUNT as u64 + 1 {
        return Err(format!("{direct} direct hits on the rebuild: {stats}"));
    }
    if audit_count(&land)? != rows {
        return Err("the rebuild reached a worker".into());
    }
    link_and_run(&root, COUNT)?;

    // Another checkout at another path and another cache: the worker's cache answers (the
    // rewritten sources are the same), and the objects are byte-identical.
    let other_client = Client::on(&land, false)?;
    let second = tempfile::tempdir().map_err(text)?;
    let other_root = project(&second.path().join("elsewhere"), COUNT)?;
    build(&other_client, &other_root, COUNT)?;
    let rows_before: std::collections::HashMap<String, String> = all_rows(&land)?
        .into_iter()
        .map(|row| (row.source_digest, row.output_digest))
        .collect();
    let stats = other_client.stats()?;
    let compiled = stats["remote_compile"]["compiled"].as_u64().unwrap_or(0);
    if compiled != COUNT as u64 + 1 {
        return Err(format!(
            "second checkout: {compiled} remote compiles: {stats}"
        ));
    }
    // Each worker caches its own jobs: a source routed to the other worker is compiled again,
    // from the same (path-free) source, to the same object.
    for row in all_rows(&land)? {
        match rows_before.get(&row.source_digest) {
            Some(output) if *output == row.output_digest => {}
            Some(output) => {
                return Err(format!(
                    "source {} compiled to {output} and to {}",
                    row.source_digest, row.output_digest
                ))
            }
            None => {
                return Err(format!(
                    "the second checkout sent a source the first did not: {}",
                    row.source_digest
                ))
            }
        }
    }
    for index in 0..COUNT {
        let name = format!("f{index}.o");
        if std::fs::read(root.join(&name)).map_err(text)?
            != std::fs::read(other_root.join(&name)).map_err(text)?
        {
            return Err(format!("{name} differs between the two checkouts"));
        }
    }

    // Diagnostics name the local files; a failing compile fails with the compiler's message.
    std::fs::write(
        root.join("src/bad.c"),
        "int bad(void) { return missing; }\n",
    )
    .map_err(text)?;
    let failed = client.gcc(&root, &["-c", "src/bad.c", "-o", "bad.o"])?;
    let stderr = String::from_utf8_lossy(&failed.stderr).into_owned();
    if failed.status.success() || !stderr.contains("'missing' undeclared") {
        return Err(format!("a failing compile: {}: {stderr}", failed.status));
    }
    // Word for word what the compiler says here (it names the file as given), in the
    // worker's pinned C locale; a worker cannot quote source lines (it has no sources, only
    // the preprocessed text), so the local run is asked not to either.
    let local = Command::new("gcc")
        .current_dir(&root)
        .env("LC_ALL", "C")
        .args([
            "-fno-diagnostics-show-caret",
            "-c",
            "src/bad.c",
            "-o",
            "bad.o",
        ])
        .output()
        .map_err(text)?;
    if local.stderr != failed.stderr || local.status.code() != failed.status.code() {
        return Err(format!(
            "remote diagnostics differ from local ones:\n{stderr}\nlocal:\n{}",
            String::from_utf8_lossy(&local.stderr)
        ));
    }
    Ok(())
}

fn dead_farm_falls_back_to_local() -> TestResult {
    // A port nothing listens on, and (second client) no token at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").map_err(text)?;
    let address = closed.local_addr().map_err(text)?;
    drop(closed);
    let image = format!("sha256:{}", "0".repeat(64));
    for (token, what) in [(Some("not-a-jwt"), "scheduler down"), (None, "no token")] {
        let client = Client::new(&format!("http://{address}"), &image, token, false)?;
        let dir = tempfile::tempdir().map_err(text)?;
        let root = project(dir.path(), 2)?;
        build(&client, &root, 2)?;
        link_and_run(&root, 2)?;
        let stats = client.stats()?;
        let fallbacks = stats["remote_compile"]["fallbacks"].as_u64().unwrap_or(0);
        if fallbacks != 3 {
            return Err(format!(
                "{what}: {fallbacks} fallbacks, expected 3: {stats}"
            ));
        }
        // The local compiles were cached (under the local compiler's key) and hit next time.
        std::fs::remove_file(root.join("f1.o")).map_err(text)?;
        build(&client, &root, 2)?;
        let direct = client.stats()?["hits"]["direct"].as_u64().unwrap_or(0);
        if direct != 3 {
            return Err(format!("{what}: {direct} local hits after fallbacks"));
        }
    }
    Ok(())
}

fn paranoid_client_keeps_no_cache() -> TestResult {
    let land = Farmland::new()?;
    let client = Client::on(&land, true)?;
    let dir = tempfile::tempdir().map_err(text)?;
    let root = project(dir.path(), 2)?;
    build(&client, &root, 2)?;
    build(&client, &root, 2)?;
    link_and_run(&root, 2)?;
    let entries = client.cache_entries()?;
    if entries != 0 {
        return Err(format!("a paranoid client's cache holds {entries} entries"));
    }
    let rows = all_rows(&land)?;
    if rows.len() != 6 {
        return Err(format!(
            "{} audit rows, expected 6 (every compile on a worker)",
            rows.len()
        ));
    }
    let sources: std::collections::HashSet<_> = rows.iter().map(|row| &row.source_digest).collect();
    if sources.len() != 3 {
        return Err(format!(
            "{} distinct sources in 6 jobs, expected 3",
            sources.len()
        ));
    }
    // Paranoid mode with a store of its own is refused, naming the key.
    let refused = client
        .command("hpcc")
        .env(
            "HPCC_REMOTE",
            "[{type = \"redis\", endpoint = \"redis://127.0.0.1:1\"}]",
        )
        .args(["stats"])
        .output()
        .map_err(text)?;
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    if refused.status.success() || !stderr.contains("paranoid") {
        return Err(format!(
            "paranoid with [[remote]] was not refused: {stderr}"
        ));
    }
    Ok(())
}

/// An `hpcc-worker` process registered with `land`'s scheduler.
pub(crate) struct WorkerProcess {
    child: std::process::Child,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

impl WorkerProcess {
    pub(crate) fn start(land: &Farmland, id: &str) -> Result<WorkerProcess, String> {
        let (layout, _) = crate::image::layout()?;
        let images = format!(
            "images = [{:?}]\nruntime = \"sandbox\"\n",
            layout.display().to_string()
        );
        WorkerProcess::start_with(land, id, &images)
    }

    /// Starts a worker whose config ends with `images` (its `images` or `pull` lines, and
    /// its `runtime`, which a worker config must name).
    pub(crate) fn start_with(
        land: &Farmland,
        id: &str,
        images: &str,
    ) -> Result<WorkerProcess, String> {
        let dir = tempfile::Builder::new()
            .prefix("hpcc-e2e-worker-")
            .tempdir()
            .map_err(text)?;
        let secret = dir.path().join("secret");
        std::fs::write(&secret, crate::scheduler::SECRET).map_err(text)?;
        // The image store the in-process workers share (the layout imported and flattened
        // once per machine), not a store of the worker's own: an image flattened afresh for
        // every worker process costs half a gigabyte of writes and seconds each time.
        std::fs::create_dir_all(dir.path().join("state")).map_err(text)?;
        std::os::unix::fs::symlink(
            crate::farm::shared_image_store()?,
            dir.path().join("state/images"),
        )
        .map_err(text)?;
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(text)?;
            probe.local_addr().map_err(text)?.port()
        };
        let config = format!(
            "id = \"{id}\"\nlisten = \"127.0.0.1:{port}\"\ninsecure_plaintext = true\n\
             scheduler = \"{}\"\nworker_secret_file = {:?}\nrouting_public_key = \"{}\"\n\
             capacity = 2\nstate_dir = {:?}\nagent = {:?}\nmetrics_listen = \"127.0.0.1:0\"\n{images}",
            land.scheduler_url,
            secret.display().to_string(),
            land.key.public_base64(),
            dir.path().join("state").display().to_string(),
            hpcc_runtime::testing::agent_binary()?.display().to_string(),
        );
        let config_path = dir.path().join("worker.toml");
        std::fs::write(&config_path, config).map_err(text)?;
        let child = Command::new(client_binaries()?.join("hpcc-worker"))
            .arg("--config")
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("worker.log")).map_err(text)?)
            .spawn()
            .map_err(text)?;
        let worker = WorkerProcess {
            child,
            audit: dir.path().join("state/audit.tsv"),
            _dir: dir,
        };
        // Registered and able to compile: one compile through the farm succeeds.
        let farm = land.farm("a")?;
        // Generous: a microVM worker builds its image's root disk and boots a guest first.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
        loop {
            let probe = crate::farm::request(b"int probe;\n".to_vec(), &[]);
            match land.runtime.block_on(farm.compile(probe, &land.token_a())) {
                Ok(outcome) if outcome.exit_code == 0 => return Ok(worker),
                _ if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(200))
                }
                other => {
                    return Err(format!(
                        "the worker process never served: {other:?}\n{}",
                        std::fs::read_to_string(worker._dir.path().join("worker.log"))
                            .unwrap_or_default()
                    ))
                }
            }
        }
    }

    /// Kills the worker (SIGKILL: no destructor runs) and waits up to 10 s for every process
    /// it started to die with it: sandbox sessions, VMMs. They are the processes whose command
    /// line names the worker's directory (the worker, a sandbox's host-side process, which
    /// keeps the worker's command line, an unjailed VMM, which names its session directory),
    /// and jailed VMMs, whose root is a jail under the worker's state (`farm::pids_under`).
    fn kill_and_check_nothing_is_left(&mut self) -> TestResult {
        let dir = self._dir.path().to_owned();
        let running = crate::farm::pids_under(&dir);
        if !running.contains(&self.child.id()) {
            return Err(format!(
                "the worker process itself is not among {running:?} found under {}",
                dir.display()
            ));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = crate::farm::pids_under(&dir);
            if left.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "processes {left:?} of the killed worker ({}) still run",
                    dir.display()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// A sandbox worker says at start that it is not a kernel boundary, and its audit rows
    /// say the sandbox ran their jobs.
    fn check_sandbox_is_announced(&self) -> TestResult {
        let log = std::fs::read_to_string(self._dir.path().join("worker.log")).map_err(text)?;
        if !log.contains("runtime sandbox: not a kernel boundary") {
            return Err(format!("the worker did not announce its sandbox:\n{log}"));
        }
        // Its status says so too, while it serves.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            let shown = Command::new(client_binaries()?.join("hpcc-worker"))
                .arg("status")
                .arg("--config")
                .arg(self._dir.path().join("worker.toml"))
                .output()
                .map_err(text)?;
            let stdout = String::from_utf8_lossy(&shown.stdout).into_owned();
            if shown.status.success() || std::time::Instant::now() > deadline {
                break stdout;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        if !status.contains("runtime = sandbox")
            || !status.contains("boundary = NOT a kernel boundary")
            || !status.contains("state = serving")
        {
            return Err(format!(
                "hpcc-worker status does not name the sandbox:\n{status}"
            ));
        }
        let rows = std::fs::read_to_string(&self.audit).map_err(text)?;
        for line in rows.lines() {
            let row = hpcc_worker::audit::AuditRow::parse(line).map_err(text)?;
            if !row.vm.starts_with("sandbox-") && row.vm != "cache" {
                return Err(format!("a row does not name its boundary: {line}"));
            }
        }
        if rows.is_empty() {
            return Err("no audit row after the probe".into());
        }
        Ok(())
    }

    fn audit_rows(&self) -> usize {
        std::fs::read_to_string(&self.audit)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn worker_killed_mid_build() -> TestResult {
    const COUNT: usize = 24;
    let land = Farmland::with_workers(0)?;
    let mut worker = WorkerProcess::start(&land, "wk")?;
    worker.check_sandbox_is_announced()?;
    let client = Client::on(&land, false)?;
    let dir = tempfile::tempdir().map_err(text)?;
    let root = project(dir.path(), COUNT)?;
    let baseline = worker.audit_rows();
    // Four compiles at a time, as `make -j4` would; the worker dies after a few.
    let names: Vec<String> = (0..COUNT)
        .map(|index| format!("f{index}"))
        .chain(["main".to_owned()])
        .collect();
    let (killed, results): (TestResult, Vec<Result<(), String>>) = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .chunks(names.len().div_ceil(4))
            .map(|chunk| {
                let (client, root) = (&client, &root);
                scope.spawn(move || -> Result<(), String> {
                    for name in chunk {
                        let source = format!("src/{name}.c");
                        let object = format!("{name}.o");
                        let mut args: Vec<&str> = FLAGS.to_vec();
                        args.extend(["-c", source.as_str(), "-o", object.as_str()]);
                        ok(&client.gcc(root, &args)?, &format!("hpcc gcc -c {source}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        // Killed once the client has three remote results back (a row on the worker is not
        // enough: its reply may still be in flight when the worker dies).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let remote_results = || {
            client
                .stats()
                .map(|stats| stats["remote_compile"]["compiled"].as_u64().unwrap_or(0))
                .unwrap_or(0)
        };
        while worker.audit_rows() < baseline + 3 || remote_results() < 3 {
            if std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let killed = worker.kill_and_check_nothing_is_left();
        let results = handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("a build thread panicked".into()))
            })
            .collect();
        (killed, results)
    });
    for result in results {
        result?;
    }
    killed?;
    link_and_run(&root, COUNT)?;
    let stats = client.stats()?;
    let compiled = stats["remote_compile"]["compiled"].as_u64().unwrap_or(0);
    let fallbacks = stats["remote_compile"]["fallbacks"].as_u64().unwrap_or(0);
    if compiled < 3 || fallbacks == 0 || compiled + fallbacks != COUNT as u64 + 1 {
        return Err(format!(
            "{compiled} remote and {fallbacks} fallback compiles of {}: {stats}",
            COUNT + 1
        ));
    }
    // Nothing wrong was cached. With a healthy farm again (a new worker; the daemon
    // restarted, so out of its cooldown), a clean rebuild takes what the first build cached
    // and compiles the rest remotely; a fresh client compiles everything on the new worker.
    // Remote compiles are deterministic, so the two must agree object for object.
    let _worker = WorkerProcess::start(&land, "wk2")?;
    ok(
        &client.command("hpcc").arg("stop").output().map_err(text)?,
        "hpcc stop",
    )?;
    ok(
        &client.command("hpcc").arg("start").output().map_err(text)?,
        "hpcc start",
    )?;
    let clean = |root: &Path| -> TestResult {
        for name in &names {
            std::fs::remove_file(root.join(format!("{name}.o"))).map_err(text)?;
        }
        Ok(())
    };
    // A compile that falls back (the new worker slow to answer on a loaded machine) is local
    // and not comparable; such builds are redone until one ran entirely on the farm.
    let remote_build = |client: &Client, root: &Path| -> Result<(), String> {
        let fallbacks = || -> Result<u64, String> {
            Ok(client.stats()?["remote_compile"]["fallbacks"]
                .as_u64()
                .unwrap_or(0))
        };
        for _ in 0..3 {
            let before = fallbacks()?;
            build(client, root, COUNT)?;
            if fallbacks()? == before {
                return Ok(());
            }
            clean(root)?;
        }
        Err(format!(
            "three rebuilds in a row fell back to local compiles: {}\ndaemon log:\n{}",
            client.stats()?,
            client.daemon_log()
        ))
    };
    clean(&root)?;
    remote_build(&client, &root)?;
    link_and_run(&root, COUNT)?;
    let fresh = Client::on(&land, false)?;
    let other = tempfile::tempdir().map_err(text)?;
    let fresh_root = project(other.path(), COUNT)?;
    remote_build(&fresh, &fresh_root)?;
    for name in &names {
        let object = format!("{name}.o");
        if std::fs::read(root.join(&object)).map_err(text)?
            != std::fs::read(fresh_root.join(&object)).map_err(text)?
        {
            return Err(format!(
                "{object} from the cache differs from a fresh remote compile; stats: {}; fresh: {}",
                client.stats()?,
                fresh.stats()?
            ));
        }
    }
    Ok(())
}

/// On a fresh machine the first compile of a build autostarts the daemon; with a farm
/// configured it waits for it and goes to the farm, instead of compiling here uncounted.
fn the_first_compile_waits_for_the_daemon_it_starts() -> TestResult {
    const COUNT: usize = 2;
    let land = Farmland::new()?;
    let client = Client::on(&land, false)?;
    client.stop()?;
    let dir = tempfile::tempdir().map_err(text)?;
    let root = project(dir.path(), COUNT)?;
    build(&client, &root, COUNT)?;
    let stats = client.stats()?;
    let compiled = stats["remote_compile"]["compiled"].as_u64().unwrap_or(0);
    let fallbacks = stats["remote_compile"]["fallbacks"].as_u64().unwrap_or(0);
    if compiled != COUNT as u64 + 1 || fallbacks != 0 {
        return Err(format!(
            "{compiled} remote compiles and {fallbacks} fallbacks of {}: {stats}\ndaemon log:\n{}",
            COUNT + 1,
            client.daemon_log()
        ));
    }
    // No daemon can come (autostart off): the compile runs here and is counted a fallback.
    client.stop()?;
    std::fs::remove_file(root.join("f0.o")).map_err(text)?;
    std::fs::write(root.join("src/f0.c"), "int changed(void) { return 1; }\n").map_err(text)?;
    let output = client
        .command("hpcc")
        .env("HPCC_DAEMON_AUTOSTART", "false")
        .current_dir(&root)
        .args(["gcc", "-c", "src/f0.c", "-o", "f0.o"])
        .output()
        .map_err(text)?;
    ok(&output, "hpcc gcc without a daemon")?;
    let fallbacks = client.stats()?["remote_compile"]["fallbacks"]
        .as_u64()
        .unwrap_or(0);
    if fallbacks != 1 {
        return Err(format!(
            "a compile without the daemon should count one fallback, not {fallbacks}"
        ));
    }
    Ok(())
}

fn peak_rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(text)?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM in /proc/<pid>/status".into())
}

/// 200 compiles at once from four clients against one worker process: all succeed, and the
/// worker's peak memory stays far below what holding them all would take (it holds at most
/// its source budget, and queued jobs wait without sessions of their own).
fn worker_memory_stays_bounded_under_load() -> TestResult {
    const JOBS: usize = 200;
    /// The peak the worker process may reach, in MiB.
    const BOUND_MIB: u64 = 128;
    let land = Farmland::with_workers(0)?;
    let worker = WorkerProcess::start(&land, "loaded")?;
    let header = Command::new("gcc")
        .args(["-E", "-x", "c", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(
                    b"#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include <math.h>\n",
                )?;
            }
            child.wait_with_output()
        })
        .map_err(text)?
        .stdout;
    let farms: Vec<std::sync::Arc<hpcc_daemon::farm::Farm>> = (0..4)
        .map(|_| land.farm("a").map(std::sync::Arc::new))
        .collect::<Result<_, _>>()?;
    let token = land.token_a();
    let sent: usize = JOBS * header.len();
    let outcomes = land.runtime.block_on(async {
        let mut handles = Vec::new();
        for index in 0..JOBS {
            let mut source = header.clone();
            source.extend_from_slice(
                format!("int job_{index}(int v) {{ return abs(v) + {index}; }}\n").as_bytes(),
            );
            let farm = std::sync::Arc::clone(&farms[index % farms.len()]);
            let token = token.clone();
            handles.push(tokio::spawn(async move {
                farm.compile(crate::farm::request(source, &["-O2".into()]), &token)
                    .await
            }));
        }
        let mut outcomes = Vec::new();
        for handle in handles {
            outcomes.push(handle.await.map_err(text));
        }
        outcomes
    });
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let outcome = outcome?.map_err(|error| format!("compile {index}: {error}"))?;
        if outcome.exit_code != 0 || outcome.object.is_none() {
            return Err(format!(
                "compile {index}: exit {}: {}",
                outcome.exit_code,
                String::from_utf8_lossy(&outcome.stderr)
            ));
        }
    }
    if worker.audit_rows() != JOBS + 1 {
        return Err(format!(
            "{} audit rows for {} jobs",
            worker.audit_rows(),
            JOBS + 1
        ));
    }
    let peak = peak_rss_kib(worker.child.id())? >> 10;
    println!(
        "worker peak RSS {peak} MiB for {JOBS} concurrent compiles ({} MiB of sources)",
        sent >> 20
    );
    if peak > BOUND_MIB {
        return Err(format!(
            "the worker's peak RSS was {peak} MiB, over {BOUND_MIB} MiB"
        ));
    }
    Ok(())
}

/// Pushes the OCI layout at `layout` to `registry` as `toolchain`, returning the reference
/// by digest.
fn push_layout(
    land: &Farmland,
    registry: &crate::registry::Registry,
    layout: &Path,
) -> Result<String, String> {
    use oci_client::client::{Client as OciClient, ClientConfig, ClientProtocol};
    use oci_client::secrets::RegistryAuth;
    let blob = |digest: &str| -> Result<Vec<u8>, String> {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or("a non-sha256 digest")?;
        std::fs::read(layout.join("blobs/sha256").join(hex)).map_err(text)
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).map_err(text)?)
            .map_err(text)?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .ok_or("the layout's index names no manifest")?
        .to_owned();
    let manifest_bytes = blob(&manifest_digest)?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).map_err(text)?;
    let mut blobs = vec![manifest["config"]["digest"]
        .as_str()
        .ok_or("no config")?
        .to_owned()];
    for layer in manifest["layers"].as_array().ok_or("no layers")? {
        blobs.push(
            layer["digest"]
                .as_str()
                .ok_or("a layer without digest")?
                .to_owned(),
        );
    }
    let media_type = manifest["mediaType"]
        .as_str()
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_owned();
    let client = OciClient::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(vec![registry.address.clone()]),
        ..ClientConfig::default()
    });
    let tagged: oci_client::Reference = format!("{}/toolchain:gcc", registry.address)
        .parse()
        .map_err(text)?;
    land.runtime.block_on(async {
        client
            .store_auth_if_needed(tagged.resolve_registry(), &RegistryAuth::Anonymous)
            .await;
        for digest in &blobs {
            client
                .push_blob(&tagged, blob(digest)?, digest)
                .await
                .map_err(|error| format!("push blob {digest}: {error}"))?;
        }
        let content_type = http::HeaderValue::from_str(&media_type).map_err(text)?;
        client
            .push_manifest_raw(&tagged, manifest_bytes, content_type)
            .await
            .map_err(|error| format!("push manifest: {error}\n{}", registry.log()))?;
        Ok::<(), String>(())
    })?;
    Ok(format!("{}/toolchain@{manifest_digest}", registry.address))
}

/// The worker has no image file: it pulls the toolchain by digest from a registry.
fn worker_pulls_its_image_from_a_registry() -> TestResult {
    const COUNT: usize = 3;
    let land = Farmland::with_workers(0)?;
    let registry = crate::registry::Registry::start()?;
    let (layout, digest) = crate::image::layout()?;
    let reference = push_layout(&land, &registry, &layout)?;
    if !reference.ends_with(&digest) {
        return Err(format!(
            "pushed {reference}, the layout's image is {digest}"
        ));
    }
    let _worker = WorkerProcess::start_with(
        &land,
        "puller",
        &format!("pull = [{reference:?}]\nruntime = \"sandbox\"\n"),
    )?;
    let client = Client::on(&land, false)?;
    let dir = tempfile::tempdir().map_err(text)?;
    let root = project(dir.path(), COUNT)?;
    build(&client, &root, COUNT)?;
    link_and_run(&root, COUNT)?;
    let stats = client.stats()?;
    let compiled = stats["remote_compile"]["compiled"].as_u64().unwrap_or(0);
    if compiled != COUNT as u64 + 1 {
        return Err(format!("{compiled} remote compiles: {stats}"));
    }
    Ok(())
}

/// The `[vm]` settings of a QEMU worker (software emulation here), with its images; its jails'
/// parent cgroup is named for `test`.
fn qemu_settings(test: &str) -> Result<String, String> {
    let (layout, _) = crate::image::layout()?;
    let (qemu, vhost_vsock) = hpcc_runtime::testing::vm_tools()?;
    let kernel = hpcc_runtime::testing::guest_kernel()?;
    let modules: Vec<String> = kernel
        .modules
        .iter()
        .map(|module| module.display().to_string())
        .collect();
    // Jailed (the default), under a parent cgroup and uid range of these tests' own
    // ([`QEMU_CGROUP_PARENT`]).
    Ok(format!(
        "images = [{:?}]\nruntime = \"qemu\"\n[vm]\nkernel = {:?}\nmodules = {modules:?}\n\
         accel = \"tcg\"\nmemory_mib = 512\nboot_timeout_secs = 120\nqemu = {:?}\n\
         vhost_vsock = {:?}\n[vm.jail]\ncgroup_parent = {:?}\n\
         uid_base = 320000\nuid_count = 100\n",
        layout.display().to_string(),
        kernel.kernel.display().to_string(),
        qemu.display().to_string(),
        vhost_vsock.display().to_string(),
        qemu_cgroup_parent(test),
    ))
}

/// The parent cgroup of a qemu worker test's jails (one per test, since tests run at once): a
/// worker killed outright leaves its sessions' cgroups (the next worker on its state directory
/// would sweep them), which [`remove_qemu_cgroups`] removes.
fn qemu_cgroup_parent(test: &str) -> String {
    format!("hpcc-e2e-{test}-{}", std::process::id())
}

/// Removes the (empty) cgroups a qemu worker test's jails left, and their parent.
fn remove_qemu_cgroups(test: &str) {
    for controller in ["memory", "cpu", "pids", ""] {
        let parent = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(qemu_cgroup_parent(test));
        for session in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            if session.file_type().is_ok_and(|kind| kind.is_dir()) {
                let _ = std::fs::remove_dir(session.path());
            }
        }
        let _ = std::fs::remove_dir(&parent);
    }
}

/// The pool of a QEMU worker, seen from outside: one tenant's jobs reuse its guest (the same
/// session in their audit rows and results), another tenant's run in another guest, and once
/// idle for the idle TTL both guests are stopped: no QEMU or vsock backend of the worker is
/// left, and no session directory.
fn qemu_worker_pools_guests_per_tenant() -> TestResult {
    let land = Farmland::with_workers(0)?;
    // Top-level keys go before the `[vm]` table.
    let settings = format!("session_idle_secs = 6\n{}", qemu_settings("pool")?);
    let mut worker = WorkerProcess::start_with(&land, "pooled", &settings)?;
    let compile = |tenant: &str, token: String, code: &str| -> Result<String, String> {
        let farm = land.farm(tenant)?;
        let outcome = land
            .runtime
            .block_on(farm.compile(crate::farm::request(code.as_bytes().to_vec(), &[]), &token))
            .map_err(text)?;
        crate::farm::succeeded(&outcome, tenant)?;
        if outcome.cache_hit {
            return Err(format!("{tenant}: a cache hit, not a guest job"));
        }
        Ok(outcome.session)
    };
    let first = compile("a", land.token_a(), "int pool_first(void) { return 1; }\n")?;
    let second = compile("a", land.token_a(), "int pool_second(void) { return 2; }\n")?;
    let other = compile("b", land.token_b(), "int pool_other(void) { return 3; }\n")?;
    if !first.starts_with("qemu-") || first != second {
        return Err(format!("tenant a's jobs ran in {first} and {second}"));
    }
    if !other.starts_with("qemu-") || other == first {
        return Err(format!("tenant b's job ran in {other}, a's in {first}"));
    }
    let log = std::fs::read_to_string(&worker.audit).map_err(text)?;
    let rows: Vec<hpcc_worker::audit::AuditRow> = log
        .lines()
        .map(hpcc_worker::audit::AuditRow::parse)
        .collect::<Result<_, _>>()
        .map_err(text)?;
    let sessions_of = |tenant: &str| -> Vec<&str> {
        rows.iter()
            .filter(|row| row.tenant == tenant)
            .map(|row| row.vm.as_str())
            .collect()
    };
    // The probe that waited for the worker was tenant a's too.
    let a_sessions = sessions_of("a");
    if a_sessions.len() < 3 || a_sessions.iter().any(|vm| *vm != first) {
        return Err(format!("tenant a's rows: {a_sessions:?}\n{log}"));
    }
    if sessions_of("b") != [other.as_str()] {
        return Err(format!("tenant b's rows: {:?}\n{log}", sessions_of("b")));
    }
    // Both guests run now; idle for 6 s, they are stopped (the worker reaps every heartbeat).
    let state = worker._dir.path().join("state");
    // Jailed guests name only paths inside their jails: found by their root (and unjailed
    // ones by their command line), `farm::pids_under`.
    let guests = || crate::farm::pids_under(&state).len();
    if guests() == 0 {
        return Err("no guest process of the worker runs".into());
    }
    // Stopping a guest ends its processes first, then removes its session and jail
    // directories: everything must be gone within the minute.
    let names = |dir: std::path::PathBuf| -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name())
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let processes = guests();
        let sessions = names(state.join("vm/sessions"));
        let jails = names(state.join("vm/jails"));
        if processes == 0 && sessions.is_empty() && jails.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "a minute after the jobs: {processes} guest processes, session directories \
                 {sessions:?}, jail directories {jails:?} left"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    // A job after the TTL boots a new guest.
    let later = compile("a", land.token_a(), "int pool_later(void) { return 4; }\n")?;
    if later == first || !later.starts_with("qemu-") {
        return Err(format!("after the idle TTL tenant a's job ran in {later}"));
    }
    let killed = worker.kill_and_check_nothing_is_left();
    remove_qemu_cgroups("pool");
    killed
}

/// A worker whose sessions are QEMU microVMs (software emulation here) serves a real build:
/// the objects link and run, and every audit row names a guest in its `vm` column.
fn qemu_worker_compiles_a_build() -> TestResult {
    const COUNT: usize = 3;
    let land = Farmland::with_workers(0)?;
    let worker = WorkerProcess::start_with(&land, "guest", &qemu_settings("build")?)?;
    let client = Client::on(&land, false)?;
    let dir = tempfile::tempdir().map_err(text)?;
    let root = project(dir.path(), COUNT)?;
    build(&client, &root, COUNT)?;
    link_and_run(&root, COUNT)?;
    let stats = client.stats()?;
    let compiled = stats["remote_compile"]["compiled"].as_u64().unwrap_or(0);
    if compiled != COUNT as u64 + 1 {
        return Err(format!("{compiled} remote compiles: {stats}"));
    }
    let log = std::fs::read_to_string(&worker.audit).map_err(text)?;
    let rows: Vec<hpcc_worker::audit::AuditRow> = log
        .lines()
        .map(hpcc_worker::audit::AuditRow::parse)
        .collect::<Result<_, _>>()
        .map_err(text)?;
    if rows.len() < COUNT + 1 || !rows.iter().all(|row| row.vm.starts_with("qemu-")) {
        return Err(format!("audit rows do not name guests: {log}"));
    }
    // Its guests run in jails (the default for runtime = "qemu"): found from outside by their
    // root under the worker's state, as an unprivileged uid.
    let jailed = crate::farm::jailed_under(worker._dir.path());
    if jailed.is_empty() {
        return Err(format!(
            "no jailed QEMU of the worker's warm session was found among {:?}; worker log:\n{}",
            crate::farm::pids_under(worker._dir.path()),
            std::fs::read_to_string(worker._dir.path().join("worker.log")).unwrap_or_default()
        ));
    }
    for pid in &jailed {
        match crate::farm::uid_of(*pid) {
            Some(uid) if uid != 0 => {}
            other => return Err(format!("jailed VMM {pid} runs as uid {other:?}")),
        }
    }
    // Its guests die with a worker killed outright; their cgroups stay (the next worker on the
    // same state directory would sweep them) and are removed here, empty.
    let mut worker = worker;
    let killed = worker.kill_and_check_nothing_is_left();
    remove_qemu_cgroups("build");
    killed
}

pub fn cases() -> Vec<Case> {
    vec![
        (
            "client::qemu_worker_compiles_a_build",
            &[Need::Sandbox, Need::Vm, Need::Jail],
            qemu_worker_compiles_a_build,
        ),
        (
            "client::qemu_worker_pools_guests_per_tenant",
            &[Need::Sandbox, Need::Vm, Need::Jail],
            qemu_worker_pools_guests_per_tenant,
        ),
        (
            "client::wrapper_compiles_misses_on_the_farm",
            &[Need::Sandbox],
            wrapper_compiles_misses_on_the_farm,
        ),
        (
            "client::the_first_compile_waits_for_the_daemon_it_starts",
            &[Need::Sandbox],
            the_first_compile_waits_for_the_daemon_it_starts,
        ),
        (
            "client::dead_farm_falls_back_to_local",
            &[],
            dead_farm_falls_back_to_local,
        ),
        (
            "client::worker_killed_mid_build",
            &[Need::Sandbox],
            worker_killed_mid_build,
        ),
        (
            "client::worker_pulls_its_image_from_a_registry",
            &[Need::Sandbox, Need::Registry],
            worker_pulls_its_image_from_a_registry,
        ),
        (
            "client::worker_memory_stays_bounded_under_load",
            &[Need::Sandbox],
            worker_memory_stays_bounded_under_load,
        ),
        (
            "client::paranoid_client_keeps_no_cache",
            &[Need::Sandbox],
            paranoid_client_keeps_no_cache,
        ),
    ]
}
