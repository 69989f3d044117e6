//! The local daemon, as real processes: lifecycle, stale sockets, racing starts, refused
//! connections, deduplication, the compile limit, killed and frozen daemons mid-build, and
//! header edits it must notice.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use prost::Message;

use crate::ensure;
use crate::harness::{self, Context, Need, Sandbox, TestResult};

const HEADER: &str = "#define SCALE 3\n";
const SOURCE: &str = "#include \"x.h\"\nint scaled(int v) { return v * SCALE; }\n";

/// The plain compiler's object for `gcc -c <source> -o <...>` in the sandbox's project.
fn plain_object(sandbox: &Sandbox, source: &str) -> Result<Vec<u8>, String> {
    let output = sandbox.base.join("plain-reference.o");
    let out = sandbox.plain_compiler(&["gcc", "-c", source, "-o", harness::arg(&output)]);
    harness::succeeded(&out, "the plain compile")?;
    let object = fs::read(&output).ctx("reading the plain object")?;
    fs::remove_file(&output).ctx("removing the plain object")?;
    Ok(object)
}

fn compile(sandbox: &Sandbox, source: &str, object: &str) -> Result<Output, String> {
    let _ = fs::remove_file(sandbox.project.join(object));
    let out = sandbox.hpcc(&["gcc", "-c", source, "-o", object]);
    harness::succeeded(&out, &format!("hpcc gcc -c {source}"))?;
    Ok(out)
}

fn status(sandbox: &Sandbox) -> Output {
    sandbox.hpcc(&["status"])
}

/// A number from `hpcc status` (`compile requests`, `hot files`, ...), 0 if absent.
fn status_count(sandbox: &Sandbox, label: &str) -> u64 {
    harness::text(&status(sandbox).stdout)
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// A daemon sandbox with `x.c` including `x.h`, the plain compiler's object for it, and its
/// daemon started.
fn started_project(settings: &[(&str, &str)]) -> Result<(Sandbox, Vec<u8>), String> {
    let sandbox = Sandbox::with_daemon(settings);
    sandbox.write("x.h", HEADER);
    sandbox.write("x.c", SOURCE);
    let expected = plain_object(&sandbox, "x.c")?;
    sandbox.start_daemon()?;
    Ok((sandbox, expected))
}

/// Waits up to `limit` for `condition`.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_stop_status_and_stats() -> TestResult {
    let sandbox = Sandbox::with_daemon(&[]);
    sandbox.write("x.h", HEADER);
    sandbox.write("x.c", SOURCE);
    let expected = plain_object(&sandbox, "x.c")?;
    ensure!(
        !status(&sandbox).status.success(),
        "status must fail before a start"
    );
    sandbox.start_daemon()?;
    let shown = status(&sandbox);
    harness::succeeded(&shown, "hpcc status")?;
    ensure!(
        harness::contains(&shown.stdout, b"running, pid"),
        "status output: {}",
        harness::text(&shown.stdout)
    );
    let socket = sandbox.runtime_files("sock");
    ensure!(socket.len() == 1, "one socket expected: {socket:?}");
    let mode = fs::metadata(&socket[0]).ctx("socket")?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "socket mode {mode:o}");
    let again = sandbox.hpcc(&["start"]);
    harness::succeeded(&again, "a second hpcc start")?;
    ensure!(
        harness::contains(&again.stdout, b"already running"),
        "second start: {}",
        harness::text(&again.stdout)
    );

    compile(&sandbox, "x.c", "x.o")?;
    ensure!(sandbox.read("x.o") == expected, "miss object differs");
    compile(&sandbox, "x.c", "x.o")?;
    ensure!(sandbox.read("x.o") == expected, "daemon hit object differs");
    // The hit was served by the daemon and counted by it.
    let (direct, _, misses) = sandbox.counts();
    ensure!(
        (direct, misses) == (1, 1),
        "stats after miss+hit: {direct} direct hits, {misses} misses"
    );
    let requests = status_count(&sandbox, "compile requests");
    ensure!(requests == 2, "the daemon saw both compiles: {requests}");

    let stopped = sandbox.hpcc(&["stop"]);
    harness::succeeded(&stopped, "hpcc stop")?;
    ensure!(
        !status(&sandbox).status.success(),
        "status must fail after a stop"
    );
    ensure!(
        sandbox.runtime_files("sock").is_empty(),
        "the socket is removed on stop"
    );
    // Without a daemon the wrapper still works (autostart is off in tests).
    compile(&sandbox, "x.c", "x.o")?;
    ensure!(sandbox.read("x.o") == expected, "in-process hit differs");
    Ok(())
}

fn hits_replay_warnings_exactly() -> TestResult {
    let sandbox = Sandbox::with_daemon(&[]);
    sandbox.write("w.c", "int f(int x) { int unused; return x; }\n");
    let plain = sandbox.plain_compiler(&["gcc", "-Wall", "-c", "w.c", "-o", "plain.o"]);
    harness::succeeded(&plain, "plain compile")?;
    sandbox.start_daemon()?;
    let miss = sandbox.hpcc(&["gcc", "-Wall", "-c", "w.c", "-o", "w.o"]);
    let hit = sandbox.hpcc(&["gcc", "-Wall", "-c", "w.c", "-o", "w.o"]);
    harness::same_behaviour(&plain, &miss, "miss through the daemon")?;
    harness::same_behaviour(&plain, &hit, "hit through the daemon")?;
    ensure!(
        harness::contains(&hit.stderr, b"unused"),
        "the warning is replayed"
    );
    ensure!(
        sandbox.read("w.o") == sandbox.read("plain.o"),
        "objects differ"
    );
    let (direct, _, _) = sandbox.counts();
    ensure!(direct == 1, "the second compile was a hit ({direct})");
    Ok(())
}

fn stale_socket_of_a_killed_daemon() -> TestResult {
    let (sandbox, expected) = started_project(&[])?;
    let pid = sandbox.daemon_pid().ok_or("no daemon pid")?;
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .ctx("kill -9")?;
    ensure!(
        eventually(Duration::from_secs(5), || !harness::process_alive(pid)),
        "the daemon survived kill -9"
    );
    ensure!(
        sandbox.runtime_files("sock").len() == 1,
        "the killed daemon's socket stays behind"
    );
    // The compile notices nobody answers and compiles by itself.
    compile(&sandbox, "x.c", "x.o")?;
    ensure!(sandbox.read("x.o") == expected, "fallback object differs");
    // A new daemon takes over the stale socket.
    sandbox.start_daemon()?;
    let new_pid = sandbox.daemon_pid().ok_or("no new daemon pid")?;
    ensure!(new_pid != pid, "a new daemon runs");
    compile(&sandbox, "x.c", "x.o")?;
    ensure!(sandbox.read("x.o") == expected, "hit after restart differs");
    let (direct, _, misses) = sandbox.counts();
    ensure!(
        (direct, misses) == (1, 1),
        "{direct} direct hits, {misses} misses"
    );
    Ok(())
}

fn racing_daemons_one_wins() -> TestResult {
    let sandbox = Sandbox::with_daemon(&[]);
    let spawn = || {
        sandbox
            .hpcc_command(&["daemon"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let first = spawn().ctx("first daemon")?;
    let second = spawn().ctx("second daemon")?;
    ensure!(
        eventually(Duration::from_secs(10), || status(&sandbox)
            .status
            .success()),
        "no daemon came up"
    );
    // The loser exits by itself, successfully; the winner keeps running.
    let mut children = vec![first, second];
    let mut exited = None;
    ensure!(
        eventually(Duration::from_secs(10), || {
            for (index, child) in children.iter_mut().enumerate() {
                if let Ok(Some(code)) = child.try_wait() {
                    exited = Some((index, code));
                    return true;
                }
            }
            false
        }),
        "neither racing daemon exited"
    );
    let (loser, code) = exited.ok_or("no loser")?;
    ensure!(code.success(), "the losing daemon exited with {code}");
    let loser = children.remove(loser);
    let output = loser.wait_with_output().ctx("loser output")?;
    ensure!(
        harness::contains(&output.stderr, b"already running"),
        "the loser says why: {}",
        harness::text(&output.stderr)
    );
    let mut winner = children.remove(0);
    ensure!(
        matches!(winner.try_wait(), Ok(None)),
        "the winner still runs"
    );
    harness::succeeded(&sandbox.hpcc(&["stop"]), "hpcc stop")?;
    let status = winner.wait().ctx("waiting for the winner")?;
    ensure!(
        status.success(),
        "the winner exited with {status} after stop"
    );
    Ok(())
}

/// A raw connection to the sandbox's TCP daemon.
fn tcp_connection(sandbox: &Sandbox) -> Result<(std::net::TcpStream, Vec<u8>), String> {
    let files = sandbox.runtime_files("tcp");
    let file = files.first().ok_or("no tcp endpoint file")?;
    let mode = fs::metadata(file).ctx("tcp file")?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "tcp endpoint file mode {mode:o}");
    let text = fs::read_to_string(file).ctx("reading the tcp file")?;
    let mut lines = text.lines();
    let address = lines.next().ok_or("no address")?.to_owned();
    let token_hex = lines.next().ok_or("no token")?;
    let token: Vec<u8> = (0..token_hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&token_hex[at..at + 2], 16).unwrap_or(0))
        .collect();
    let stream = std::net::TcpStream::connect(address).ctx("connecting")?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ctx("timeout")?;
    Ok((stream, token))
}

fn send_frame(stream: &mut impl Write, body: &[u8]) -> TestResult {
    let len = u32::try_from(body.len()).ctx("frame length")?;
    stream
        .write_all(&len.to_le_bytes())
        .ctx("writing a prefix")?;
    stream.write_all(body).ctx("writing a body")
}

fn read_frame(stream: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).ctx("reading a prefix")?;
    let len = u32::from_le_bytes(prefix);
    ensure!(len < 1 << 20, "reply frame of {len} bytes");
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).ctx("reading a body")?;
    Ok(body)
}

/// The reason of a `Refused` hello reply, or an error if the daemon welcomed us.
fn refusal(stream: &mut impl Read) -> Result<String, String> {
    use hpcc_proto::daemon::{hello_reply, HelloReply};
    let reply = HelloReply::decode(read_frame(stream)?.as_slice()).ctx("decoding the reply")?;
    match reply.reply {
        Some(hello_reply::Reply::Refused(refused)) => Ok(refused.reason),
        other => Err(format!("expected a refusal, got {other:?}")),
    }
}

fn wrong_token_and_garbage_are_refused() -> TestResult {
    use hpcc_proto::daemon::Hello;
    let (sandbox, expected) = started_project(&[("HPCC_DAEMON_TRANSPORT", "tcp")])?;
    compile(&sandbox, "x.c", "x.o")?;

    // A wrong token.
    let (mut stream, token) = tcp_connection(&sandbox)?;
    let mut wrong = token.clone();
    wrong[0] ^= 1;
    let hello = Hello {
        protocol_version: hpcc_proto::DAEMON_PROTOCOL_VERSION,
        client_version: "test".into(),
        token: wrong,
    };
    send_frame(&mut stream, &hello.encode_to_vec())?;
    let reason = refusal(&mut stream)?;
    ensure!(reason.contains("wrong token"), "refusal: {reason}");

    // A wrong protocol version, with the right token.
    let (mut stream, token) = tcp_connection(&sandbox)?;
    let hello = Hello {
        protocol_version: 999,
        client_version: "test".into(),
        token,
    };
    send_frame(&mut stream, &hello.encode_to_vec())?;
    let reason = refusal(&mut stream)?;
    ensure!(reason.contains("999"), "refusal: {reason}");

    // Garbage in a frame, and a length prefix of 4 GiB (refused before allocating).
    let (mut stream, _) = tcp_connection(&sandbox)?;
    send_frame(&mut stream, &[0xff; 37])?;
    let reason = refusal(&mut stream)?;
    ensure!(reason.contains("bad hello"), "refusal: {reason}");
    let (mut stream, _) = tcp_connection(&sandbox)?;
    stream
        .write_all(&u32::MAX.to_le_bytes())
        .ctx("huge prefix")?;
    let reason = refusal(&mut stream)?;
    ensure!(reason.contains("limit"), "refusal: {reason}");
    // A connection that says nothing and one that hangs up half way do not matter either.
    let (_silent, _) = tcp_connection(&sandbox)?;
    let (mut half, _) = tcp_connection(&sandbox)?;
    half.write_all(&[10, 0]).ctx("half a prefix")?;
    drop(half);

    // The daemon still serves everybody else.
    compile(&sandbox, "x.c", "x.o")?;
    ensure!(sandbox.read("x.o") == expected, "object after the abuse");
    let (direct, _, misses) = sandbox.counts();
    ensure!(
        (direct, misses) == (1, 1),
        "{direct} direct hits, {misses} misses"
    );
    Ok(())
}

/// Writes `bin/gcc`: a script that appends a line to `log` for every compile (`-c`), then
/// sleeps `sleep` seconds and runs the real gcc. Returns its path.
fn counting_compiler(sandbox: &Sandbox, log: &Path, sleep: &str, exclusive: bool) -> PathBuf {
    let bin = sandbox.base.join("bin");
    fs::create_dir_all(&bin).expect("bin dir");
    let script = bin.join("gcc");
    let guard = if exclusive {
        // mkdir is atomic: it fails while another compile holds the directory.
        format!(
            "mkdir {dir} 2>/dev/null || echo overlap >> {log}\n    sleep {sleep}\n    rmdir {dir} 2>/dev/null\n",
            dir = sandbox.base.join("running").display(),
            log = log.display()
        )
    } else {
        format!("sleep {sleep}\n")
    };
    let text = format!(
        "#!/bin/sh\ncase \" $* \" in\n  *\" -c \"*)\n    echo compile >> {log}\n    {guard}    ;;\nesac\nexec /usr/bin/gcc \"$@\"\n",
        log = log.display()
    );
    harness::write_aged(&script, text.as_bytes());
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

fn lines(path: &Path, word: &str) -> usize {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| *line == word)
        .count()
}

/// Runs 16 identical compiles at once.
fn sixteen(sandbox: &Sandbox, compiler: &Path, source: &str) -> Result<Vec<Output>, String> {
    let children: Vec<_> = (0..16)
        .map(|_| {
            sandbox
                .hpcc_command(&[harness::arg(compiler), "-c", source, "-o", "d.o"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()
        .ctx("spawning 16 compiles")?;
    children
        .into_iter()
        .map(|child| child.wait_with_output().ctx("waiting for a compile"))
        .collect()
}

fn dedup_sixteen_identical_compiles() -> TestResult {
    let sandbox = Sandbox::with_daemon(&[]);
    sandbox.write("x.h", HEADER);
    sandbox.write("x.c", SOURCE);
    let expected = plain_object(&sandbox, "x.c")?;
    let log = sandbox.base.join("compiles.log");
    let compiler = counting_compiler(&sandbox, &log, "1", false);
    sandbox.start_daemon()?;
    for out in sixteen(&sandbox, &compiler, "x.c")? {
        harness::succeeded(&out, "one of 16 compiles")?;
    }
    ensure!(
        lines(&log, "compile") == 1,
        "the compiler ran {} times for 16 identical compiles",
        lines(&log, "compile")
    );
    ensure!(sandbox.read("d.o") == expected, "object differs");
    let (direct, _, misses) = sandbox.counts();
    ensure!(
        (direct, misses) == (15, 1),
        "{direct} direct hits, {misses} misses"
    );

    // A failing compile is shared too: one run, sixteen identical diagnostics.
    sandbox.write("bad.c", "int broken(void) { return nope; }\n");
    fs::remove_file(&log).ctx("clearing the log")?;
    let plain = sandbox.plain_compiler(&["gcc", "-c", "bad.c", "-o", "d.o"]);
    let outs = sixteen(&sandbox, &compiler, "bad.c")?;
    ensure!(
        lines(&log, "compile") == 1,
        "the failing compiler ran {} times",
        lines(&log, "compile")
    );
    for out in &outs {
        ensure!(
            out.status.code() == plain.status.code(),
            "exit {:?}, plain {:?}",
            out.status.code(),
            plain.status.code()
        );
        ensure!(
            harness::contains(&out.stderr, b"nope"),
            "diagnostic missing: {}",
            harness::text(&out.stderr)
        );
    }
    ensure!(
        outs.iter().all(|out| out.stderr == outs[0].stderr),
        "all sixteen print the same diagnostics"
    );
    Ok(())
}

fn compile_limit_is_respected() -> TestResult {
    let sandbox = Sandbox::with_daemon(&[("HPCC_DAEMON_MAX_JOBS", "1")]);
    let log = sandbox.base.join("compiles.log");
    let compiler = counting_compiler(&sandbox, &log, "0.3", true);
    for index in 0..4 {
        sandbox.write(
            &format!("s{index}.c"),
            &format!("int s{index}(void) {{ return {index}; }}\n"),
        );
    }
    sandbox.start_daemon()?;
    let children: Vec<_> = (0..4)
        .map(|index| {
            let source = format!("s{index}.c");
            let object = format!("s{index}.o");
            sandbox
                .hpcc_command(&[harness::arg(&compiler), "-c", &source, "-o", &object])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()
        .ctx("spawning 4 compiles")?;
    for child in children {
        let out = child.wait_with_output().ctx("waiting")?;
        harness::succeeded(&out, "a limited compile")?;
    }
    ensure!(lines(&log, "compile") == 4, "four compiles ran");
    ensure!(
        lines(&log, "overlap") == 0,
        "compiles overlapped under max_jobs = 1"
    );
    Ok(())
}

/// A project of `count` C files sharing headers, with a Makefile; the `.o` files the plain
/// compiler makes for them, by name.
pub fn make_project(sandbox: &Sandbox, count: usize) -> Result<Vec<(String, Vec<u8>)>, String> {
    sandbox.write(
        "common.h",
        "#define BIAS 7\nstatic inline int twice(int v) { return 2 * v; }\n",
    );
    let mut rules = String::from("OBJS =");
    for index in 0..count {
        // Enough code that a compile takes a noticeable moment.
        let mut body = format!(
            "#include \"common.h\"\nint f{index}(int v) {{ return twice(v) + BIAS + {index}; }}\n"
        );
        for extra in 0..40 {
            body.push_str(&format!(
                "int g{index}_{extra}(int *a, int n) {{ int s = 0; for (int i = 0; i < n; i++) s += a[i] * {extra} + f{index}(i); return s; }}\n"
            ));
        }
        sandbox.write(&format!("f{index}.c"), &body);
        rules.push_str(&format!(" f{index}.o"));
    }
    rules.push_str("\nall: $(OBJS)\n%.o: %.c common.h\n\t$(CC) -O2 -c $< -o $@\n");
    sandbox.write("Makefile", &rules);
    let mut expected = Vec::new();
    for index in 0..count {
        let output = sandbox.base.join("ref.o");
        let source = format!("f{index}.c");
        let out =
            sandbox.plain_compiler(&["gcc", "-O2", "-c", &source, "-o", harness::arg(&output)]);
        harness::succeeded(&out, "plain reference compile")?;
        expected.push((format!("f{index}.o"), fs::read(&output).ctx("reference")?));
    }
    Ok(expected)
}

pub fn check_objects(sandbox: &Sandbox, expected: &[(String, Vec<u8>)]) -> TestResult {
    for (name, bytes) in expected {
        let built = fs::read(sandbox.project.join(name)).ctx(&format!("reading {name}"))?;
        ensure!(&built == bytes, "{name} differs from the plain compiler's");
    }
    Ok(())
}

pub fn make(sandbox: &Sandbox) -> Command {
    let cc = format!("CC={} gcc", harness::hpcc_binary().display());
    let mut command = sandbox.plain_command(&["make", "-s", "-j4", &cc]);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

fn killed_mid_build() -> TestResult {
    let sandbox = Sandbox::with_daemon(&[]);
    let expected = make_project(&sandbox, 24)?;
    harness::settle();
    sandbox.start_daemon()?;
    let pid = sandbox.daemon_pid().ok_or("no daemon pid")?;
    let build = make(&sandbox).spawn().ctx("starting make")?;
    // Kill it once the build is under way.
    let started = eventually(Duration::from_secs(30), || {
        sandbox.project.join("f0.o").exists() || sandbox.project.join("f1.o").exists()
    });
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .ctx("kill -9")?;
    let out = build.wait_with_output().ctx("waiting for make")?;
    harness::succeeded(&out, "make with the daemon killed mid-build")?;
    ensure!(started, "the build never started");
    check_objects(&sandbox, &expected)?;

    // A clean rebuild with a new daemon: everything correct, served from the cache.
    for (name, _) in &expected {
        let _ = fs::remove_file(sandbox.project.join(name));
    }
    sandbox.start_daemon()?;
    let out = make(&sandbox).output().ctx("second make")?;
    harness::succeeded(&out, "rebuild")?;
    check_objects(&sandbox, &expected)
}

fn frozen_daemon_times_out() -> TestResult {
    let (sandbox, expected) = started_project(&[("HPCC_DAEMON_REPLY_TIMEOUT_MS", "300")])?;
    let pid = sandbox.daemon_pid().ok_or("no daemon pid")?;
    Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .ctx("kill -STOP")?;
    let began = Instant::now();
    let result = compile(&sandbox, "x.c", "x.o");
    let took = began.elapsed();
    let _ = Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
    result?;
    ensure!(sandbox.read("x.o") == expected, "object differs");
    ensure!(
        took < Duration::from_secs(5),
        "the wrapper waited {took:?} for a frozen daemon"
    );
    Ok(())
}

fn header_edit_seen_by_the_daemon() -> TestResult {
    let sandbox = Sandbox::with_daemon(&[]);
    sandbox.write("x.h", HEADER);
    sandbox.write("x.c", SOURCE);
    sandbox.start_daemon()?;
    compile(&sandbox, "x.c", "x.o")?;
    compile(&sandbox, "x.c", "x.o")?;
    compile(&sandbox, "x.c", "x.o")?;
    let (direct, _, misses) = sandbox.counts();
    ensure!(
        (direct, misses) == (2, 1),
        "before the edit: {direct} direct hits, {misses} misses"
    );
    // The daemon knows the header without looking (a directory created by a test running in
    // parallel may have emptied its table: another hit fills it again).
    let mut extra_hits = 0;
    while status_count(&sandbox, "hot files") == 0 && extra_hits < 5 {
        compile(&sandbox, "x.c", "x.o")?;
        extra_hits += 1;
    }
    ensure!(
        status_count(&sandbox, "hot files") > 0,
        "the daemon holds no hot files after hits"
    );
    // Same size, same mtime: only the content differs.
    let header = sandbox.project.join("x.h");
    let mtime = fs::metadata(&header)
        .and_then(|meta| meta.modified())
        .ctx("mtime")?;
    fs::write(&header, "#define SCALE 5\n").ctx("editing the header")?;
    fs::File::options()
        .write(true)
        .open(&header)
        .and_then(|file| file.set_modified(mtime))
        .ctx("restoring the mtime")?;
    harness::settle();
    let expected = plain_object(&sandbox, "x.c")?;
    compile(&sandbox, "x.c", "x.o")?;
    ensure!(
        sandbox.read("x.o") == expected,
        "the daemon served the object of the old header"
    );
    let (direct, _, misses) = sandbox.counts();
    ensure!(
        (direct, misses) == (2 + extra_hits, 2),
        "after the edit: {direct} direct hits, {misses} misses"
    );
    Ok(())
}

fn idle_daemon_exits() -> TestResult {
    let sandbox = Sandbox::with_daemon(&[("HPCC_DAEMON_IDLE_TIMEOUT", "1")]);
    sandbox.start_daemon()?;
    let pid = sandbox.daemon_pid().ok_or("no daemon pid")?;
    ensure!(
        eventually(Duration::from_secs(10), || !harness::process_alive(pid)),
        "the idle daemon did not exit"
    );
    ensure!(
        sandbox.runtime_files("sock").is_empty(),
        "the idle daemon removed its socket"
    );
    Ok(())
}

fn autostart_starts_one_daemon() -> TestResult {
    let sandbox = Sandbox::with_daemon(&[("HPCC_DAEMON_AUTOSTART", "true")]);
    sandbox.write("x.h", HEADER);
    sandbox.write("x.c", SOURCE);
    let expected = plain_object(&sandbox, "x.c")?;
    compile(&sandbox, "x.c", "x.o")?;
    ensure!(sandbox.read("x.o") == expected, "first object differs");
    ensure!(
        eventually(Duration::from_secs(10), || status(&sandbox)
            .status
            .success()),
        "the first compile did not start a daemon"
    );
    compile(&sandbox, "x.c", "x.o")?;
    ensure!(sandbox.read("x.o") == expected, "daemon hit differs");
    let requests = status_count(&sandbox, "compile requests");
    ensure!(
        requests == 1,
        "the second compile went through the daemon: {requests} requests"
    );
    Ok(())
}

/// A lookup the daemon cannot serve (here: a profile named by `-fprofile-use=` that does not
/// exist, whose content would be part of the key) leaves the wrapper to compile by itself,
/// exactly as the plain compiler would.
fn daemon_errors_fall_back_to_the_compiler() -> TestResult {
    let sandbox = Sandbox::with_daemon(&[]);
    sandbox.write("x.h", HEADER);
    sandbox.write("x.c", SOURCE);
    sandbox.start_daemon()?;
    // The same output name for both: it appears in the warning about the profile.
    let args = [
        "gcc",
        "-c",
        "x.c",
        "-fprofile-use=missing.gcda",
        "-o",
        "x.o",
    ];
    let plain = sandbox.plain_compiler(&args);
    let plain_object = sandbox.read("x.o");
    fs::remove_file(sandbox.project.join("x.o")).ctx("removing the plain object")?;
    let through = sandbox.hpcc(&args);
    harness::same_behaviour(&plain, &through, "a compile the daemon cannot serve")?;
    ensure!(sandbox.read("x.o") == plain_object, "objects differ");
    let requests = status_count(&sandbox, "compile requests");
    ensure!(
        requests == 1,
        "the request reached the daemon: {requests} requests"
    );
    Ok(())
}

/// `GET /metrics` on loopback `port`: the body, or why not.
fn scrape(port: u16) -> Result<String, String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ctx("connecting")?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ctx("a timeout")?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ctx("asking")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ctx("reading")?;
    ensure!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
    Ok(reply)
}

/// With `daemon.metrics_listen` the daemon serves its counters at `GET /metrics`: a miss and
/// a hit show there as soon as they happen (not only after the stats flush); an address off
/// loopback is refused and the daemon does not start.
fn metrics_endpoint_counts_what_it_serves() -> TestResult {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").ctx("a port")?;
        probe.local_addr().ctx("a port")?.port()
    };
    let listen = format!("127.0.0.1:{port}");
    let (sandbox, expected) = started_project(&[("HPCC_DAEMON_METRICS_LISTEN", &listen)])?;
    compile(&sandbox, "x.c", "x.o")?;
    compile(&sandbox, "x.c", "x.o")?;
    ensure!(sandbox.read("x.o") == expected, "the hit's object differs");
    let text = scrape(port)?;
    for line in [
        "hpcc_daemon_hits_total{kind=\"direct\"} 1",
        "hpcc_daemon_misses_total 1",
    ] {
        ensure!(text.contains(line), "no {line:?} in {text}");
    }
    let stopped = sandbox.hpcc(&["stop"]);
    harness::succeeded(&stopped, "hpcc stop")?;

    let open = Sandbox::with_daemon(&[("HPCC_DAEMON_METRICS_LISTEN", "0.0.0.0:9")]);
    open.write("x.c", SOURCE);
    match open.start_daemon() {
        Ok(()) => return Err("a daemon started with its metrics off loopback".into()),
        Err(error) => ensure!(
            error.contains("metrics_listen"),
            "the refusal does not name daemon.metrics_listen: {error}"
        ),
    }
    Ok(())
}

pub fn cases() -> Vec<crate::Case> {
    const GCC: &[Need] = &[Need::Gcc];
    vec![
        (
            "daemon::start_stop_status_and_stats",
            GCC,
            start_stop_status_and_stats,
        ),
        (
            "daemon::metrics_endpoint_counts_what_it_serves",
            GCC,
            metrics_endpoint_counts_what_it_serves,
        ),
        (
            "daemon::hits_replay_warnings_exactly",
            GCC,
            hits_replay_warnings_exactly,
        ),
        (
            "daemon::stale_socket_of_a_killed_daemon",
            GCC,
            stale_socket_of_a_killed_daemon,
        ),
        (
            "daemon::racing_daemons_one_wins",
            GCC,
            racing_daemons_one_wins,
        ),
        (
            "daemon::wrong_token_and_garbage_are_refused",
            GCC,
            wrong_token_and_garbage_are_refused,
        ),
        (
            "daemon::dedup_sixteen_identical_compiles",
            GCC,
            dedup_sixteen_identical_compiles,
        ),
        (
            "daemon::compile_limit_is_respected",
            GCC,
            compile_limit_is_respected,
        ),
        (
            "daemon::killed_mid_build",
            &[Need::Gcc, Need::Make],
            killed_mid_build,
        ),
        (
            "daemon::frozen_daemon_times_out",
            GCC,
            frozen_daemon_times_out,
        ),
        (
            "daemon::header_edit_seen_by_the_daemon",
            GCC,
            header_edit_seen_by_the_daemon,
        ),
        ("daemon::idle_daemon_exits", GCC, idle_daemon_exits),
        (
            "daemon::daemon_errors_fall_back_to_the_compiler",
            GCC,
            daemon_errors_fall_back_to_the_compiler,
        ),
        (
            "daemon::autostart_starts_one_daemon",
            GCC,
            autostart_starts_one_daemon,
        ),
    ]
}
