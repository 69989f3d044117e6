//! Remote tiers on real servers: two caches sharing one Redis or S3 store stand in for two
//! machines; backfill from a slower tier; a store killed mid-build; stores that never answer
//! or trickle; a cluster with a member down; a corrupted remote object; fresh machines whose
//! builds start their own daemons (or run without one) and still share every entry.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::daemon::{check_objects, eventually, make, make_project};
use crate::ensure;
use crate::harness::{self, Context, Need, Sandbox, TestResult};
use crate::servers::{self, Misbehaving, S3_ENV};

/// A daemon sandbox with these remote tiers (`HPCC_REMOTE`) and the S3 test credentials.
fn machine(remote: &str, marker: bool) -> Sandbox {
    let mut settings: Vec<(&str, &str)> = S3_ENV.to_vec();
    settings.push(("HPCC_REMOTE", remote));
    let sandbox = Sandbox::with_daemon(&settings);
    if marker {
        fs::write(sandbox.project.join(".hpcc"), "").expect("writing the marker");
    }
    sandbox
}

fn redis_tier(name: &str, port: u16) -> String {
    format!("{{type = \"redis\", name = \"{name}\", endpoint = \"redis://127.0.0.1:{port}\", read_timeout_ms = 1000, write_timeout_ms = 2000, cooldown_secs = 5}}")
}

fn s3_tier(name: &str, port: u16) -> String {
    format!("{{type = \"s3\", name = \"{name}\", bucket = \"hpcc\", endpoint = \"http://127.0.0.1:{port}\", read_timeout_ms = 2000}}")
}

/// One counter of one remote tier from `hpcc stats --json`.
fn tier_count(sandbox: &Sandbox, tier: &str, counter: &str) -> u64 {
    sandbox.stats()["remote"][tier][counter]
        .as_u64()
        .unwrap_or(0)
}

fn build(sandbox: &Sandbox, what: &str) -> TestResult {
    let out = make(sandbox).output().ctx("running make")?;
    harness::succeeded(&out, what)
}

/// Stops the sandbox's daemon, which writes its queued uploads first.
fn stop(sandbox: &Sandbox) -> TestResult {
    harness::succeeded(&sandbox.hpcc(&["stop"]), "hpcc stop")
}

/// The project files of `from` (sources, headers, Makefile) copied into `to`'s project.
fn copy_sources(from: &Sandbox, to: &Sandbox) -> TestResult {
    for entry in fs::read_dir(&from.project).ctx("listing the project")? {
        let path = entry.ctx("listing the project")?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".o") || name == ".hpcc" {
            continue;
        }
        let text = fs::read_to_string(&path).ctx("reading a source")?;
        to.write(name, &text);
    }
    Ok(())
}

fn objects(sandbox: &Sandbox, count: usize) -> Result<Vec<(String, Vec<u8>)>, String> {
    (0..count)
        .map(|index| {
            let name = format!("f{index}.o");
            let bytes = fs::read(sandbox.project.join(&name)).ctx(&format!("reading {name}"))?;
            Ok((name, bytes))
        })
        .collect()
}

/// Machine A: a new project of `count` files built once through `remote`, daemon stopped
/// (uploads written).
fn first_machine(remote: &str, count: usize) -> Result<Sandbox, String> {
    let a = machine(remote, true);
    make_project(&a, count)?;
    harness::settle();
    a.start_daemon()?;
    build(&a, "machine A's build")?;
    stop(&a)?;
    Ok(a)
}

/// Another machine: an empty cache, `from`'s sources at another path, built once through
/// `remote`, daemon stopped.
fn next_machine(from: &Sandbox, remote: &str, what: &str) -> Result<Sandbox, String> {
    let next = machine(remote, true);
    copy_sources(from, &next)?;
    harness::settle();
    next.start_daemon()?;
    build(&next, what)?;
    stop(&next)?;
    Ok(next)
}

/// Machine A builds `count` files through `remote` and stops; machine B, with an empty
/// cache, a checkout at another path and the same tiers, must get every object remotely,
/// byte-identical to A's. Returns B, stopped, for more checks.
fn second_machine_hits(remote: &str, count: usize) -> Result<Sandbox, String> {
    let a = first_machine(remote, count)?;
    let (_, _, misses) = a.counts();
    ensure!(misses == count as u64, "A: {misses} misses of {count}");
    let built = objects(&a, count)?;

    let b = next_machine(&a, remote, "machine B's build")?;
    let (direct, _, misses) = b.counts();
    ensure!(
        direct == count as u64 && misses == 0,
        "B: {direct} hits and {misses} misses of {count}; stats: {}",
        b.stats()
    );
    check_objects(&b, &built)?;
    Ok(b)
}

fn redis_shared_by_two_machines() -> TestResult {
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let redis = servers::redis(dir.path())?;
    let remote = format!("[{}]", redis_tier("redis", redis.port));
    let b = second_machine_hits(&remote, 8)?;
    // A manifest and a result per object, each fetched once.
    let hits = tier_count(&b, "redis", "hits");
    ensure!(hits == 16, "B's remote hits: {hits}; stats: {}", b.stats());
    ensure!(
        tier_count(&b, "redis", "bytes_read") > 0,
        "bytes read are counted"
    );
    Ok(())
}

fn memcached_shared_by_two_machines() -> TestResult {
    let memcached = servers::memcached()?;
    let remote = format!(
        "[{{type = \"memcached\", name = \"mc\", endpoint = \"tcp://127.0.0.1:{}\"}}]",
        memcached.port
    );
    let b = second_machine_hits(&remote, 4)?;
    ensure!(tier_count(&b, "mc", "hits") == 8, "{}", b.stats());
    Ok(())
}

fn sigterm_stops_the_daemon_after_its_uploads() -> TestResult {
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let redis = servers::redis(dir.path())?;
    let remote = format!("[{}]", redis_tier("redis", redis.port));
    let a = machine(&remote, true);
    make_project(&a, 4)?;
    harness::settle();
    a.start_daemon()?;
    let pid = a.daemon_pid().ok_or("no daemon pid")?;
    build(&a, "the build")?;
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .ctx("kill -TERM")?;
    ensure!(
        eventually(Duration::from_secs(15), || !harness::process_alive(pid)),
        "the daemon ignored SIGTERM"
    );
    let keys = servers::redis_cli(redis.port, &["DBSIZE"])?;
    ensure!(
        keys.trim() == "8",
        "Redis holds {} objects of 8",
        keys.trim()
    );
    ensure!(
        tier_count(&a, "redis", "writes") == 8,
        "statistics were flushed on SIGTERM: {}",
        a.stats()
    );
    Ok(())
}

fn s3_behind_redis_backfills_it() -> TestResult {
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let redis = servers::redis(dir.path())?;
    let s3 = servers::s3("hpcc")?;
    let remote = format!(
        "[{}, {}]",
        redis_tier("redis", redis.port),
        s3_tier("s3", s3.port)
    );
    // Machine A writes both tiers; then Redis loses everything (a restart, an eviction).
    let a = first_machine(&remote, 6)?;
    ensure!(
        tier_count(&a, "s3", "writes") == 12 && tier_count(&a, "redis", "writes") == 12,
        "A wrote both tiers: {}",
        a.stats()
    );
    servers::redis_cli(redis.port, &["FLUSHALL"])?;
    let built = objects(&a, 6)?;

    let b = next_machine(&a, &remote, "machine B's build")?;
    check_objects(&b, &built)?;
    ensure!(
        tier_count(&b, "s3", "hits") == 12 && tier_count(&b, "redis", "misses") == 12,
        "B: served by S3 after Redis missed: {}",
        b.stats()
    );
    // The hits were copied into Redis, the faster tier.
    let keys = servers::redis_cli(redis.port, &["DBSIZE"])?;
    ensure!(
        keys.trim() == "12",
        "Redis holds {} keys after backfill",
        keys.trim()
    );
    ensure!(
        tier_count(&b, "redis", "writes") == 12,
        "backfill writes: {}",
        b.stats()
    );
    Ok(())
}

fn s3_bucket_created_only_when_asked() -> TestResult {
    let s3 = servers::s3("existing")?;
    // Without auto_create a missing bucket stays missing: its calls fail (and the store sits
    // out its cooldown), nothing is written, and the build still passes.
    let plain = format!("[{{type = \"s3\", name = \"s3\", bucket = \"fresh\", endpoint = \"http://127.0.0.1:{}\"}}]", s3.port);
    let a = first_machine(&plain, 2)?;
    ensure!(
        tier_count(&a, "s3", "errors") >= 1 && tier_count(&a, "s3", "writes") == 0,
        "writes to a missing bucket fail: {}",
        a.stats()
    );
    // With auto_create the daemon makes it at start-up, and the cache is shared through it.
    let creating = format!("[{{type = \"s3\", name = \"s3\", bucket = \"fresh\", auto_create = true, endpoint = \"http://127.0.0.1:{}\"}}]", s3.port);
    let b = second_machine_hits(&creating, 4)?;
    ensure!(tier_count(&b, "s3", "hits") == 8, "{}", b.stats());
    Ok(())
}

fn store_killed_mid_build() -> TestResult {
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let mut redis = servers::redis(dir.path())?;
    let remote = format!("[{}]", redis_tier("redis", redis.port));
    let sandbox = machine(&remote, false);
    let expected = make_project(&sandbox, 24)?;
    harness::settle();
    sandbox.start_daemon()?;
    let build = make(&sandbox).spawn().ctx("starting make")?;
    let started = eventually(Duration::from_secs(60), || {
        (0..24).any(|index| sandbox.project.join(format!("f{index}.o")).exists())
    });
    redis.kill();
    let out = build.wait_with_output().ctx("waiting for make")?;
    harness::succeeded(&out, "make with the store killed mid-build")?;
    ensure!(started, "the build never started");
    check_objects(&sandbox, &expected)?;
    // A rebuild with the store still gone: local hits, correct objects.
    for (name, _) in &expected {
        let _ = fs::remove_file(sandbox.project.join(name));
    }
    build_and_check(&sandbox, &expected)?;
    stop(&sandbox)
}

fn build_and_check(sandbox: &Sandbox, expected: &[(String, Vec<u8>)]) -> TestResult {
    build(sandbox, "rebuild")?;
    check_objects(sandbox, expected)
}

fn silent_and_trickling_stores_time_out() -> TestResult {
    let hole = Misbehaving::start(false)?;
    let trickle = Misbehaving::start(true)?;
    let remote = format!(
        "[{{type = \"redis\", name = \"hole\", endpoint = \"redis://{}\", read_timeout_ms = 300, write_timeout_ms = 300, cooldown_secs = 2}}, \
          {{type = \"s3\", name = \"trickle\", bucket = \"b\", endpoint = \"http://{}\", read_timeout_ms = 300, write_timeout_ms = 300, cooldown_secs = 2}}]",
        hole.address, trickle.address
    );
    let sandbox = machine(&remote, false);
    let expected = make_project(&sandbox, 8)?;
    harness::settle();
    sandbox.start_daemon()?;
    let began = Instant::now();
    build(&sandbox, "make against stores that never answer")?;
    let took = began.elapsed();
    check_objects(&sandbox, &expected)?;
    stop(&sandbox)?;
    for tier in ["hole", "trickle"] {
        let timeouts = tier_count(&sandbox, tier, "timeouts");
        ensure!(
            timeouts >= 1,
            "{tier}: no timeout counted: {}",
            sandbox.stats()
        );
    }
    // Each store costs at most a timeout per cooldown, never one per lookup (16 lookups
    // here); the bound is loose because it is a correctness bound, not a benchmark.
    ensure!(
        took < Duration::from_secs(60),
        "the build took {took:?} against silent stores"
    );
    ensure!(
        tier_count(&sandbox, "hole", "skipped") >= 1,
        "the silent store was never skipped: {}",
        sandbox.stats()
    );
    Ok(())
}

fn cluster_with_a_member_down_still_hits() -> TestResult {
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let mut members = Vec::new();
    for index in 0..3 {
        let sub = dir.path().join(index.to_string());
        fs::create_dir_all(&sub).ctx("redis dir")?;
        members.push(servers::redis(&sub)?);
    }
    let endpoints: Vec<String> = members
        .iter()
        .map(|member| format!("{{type = \"redis\", endpoint = \"redis://127.0.0.1:{}\", read_timeout_ms = 500, cooldown_secs = 30}}", member.port))
        .collect();
    let remote = format!(
        "[{{type = \"cluster\", name = \"ring\", replicas = 2, endpoints = [{}]}}]",
        endpoints.join(", ")
    );
    let a = first_machine(&remote, 10)?;
    // 20 objects, two copies each, spread over the three members.
    let mut copies = 0;
    for member in &members {
        let keys: u64 = servers::redis_cli(member.port, &["DBSIZE"])?
            .trim()
            .parse()
            .ctx("DBSIZE")?;
        ensure!(keys > 0, "member {} holds nothing", member.port);
        copies += keys;
    }
    ensure!(
        copies == 40,
        "{copies} copies of 20 objects with replicas = 2"
    );
    let built = objects(&a, 10)?;
    members[0].kill();

    let b = next_machine(&a, &remote, "machine B's build with a member down")?;
    check_objects(&b, &built)?;
    let (direct, _, misses) = b.counts();
    ensure!(
        direct == 10 && misses == 0,
        "B: {direct} hits, {misses} misses with one member of three down"
    );
    ensure!(tier_count(&b, "ring", "hits") == 20, "{}", b.stats());
    Ok(())
}

fn corrupted_remote_object_is_recompiled() -> TestResult {
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let redis = servers::redis(dir.path())?;
    let remote = format!("[{}]", redis_tier("redis", redis.port));
    let a = first_machine(&remote, 1)?;
    let built = objects(&a, 1)?;
    // Damage the stored result: overwrite bytes in the middle of its payload.
    let keys = servers::redis_cli(redis.port, &["--scan", "--pattern", "*cache/r/*"])?;
    let result_key = keys
        .lines()
        .next()
        .ok_or("no result object in Redis")?
        .to_owned();
    servers::redis_cli(redis.port, &["SETRANGE", &result_key, "200", "damaged!"])?;

    let b = next_machine(&a, &remote, "machine B's build")?;
    check_objects(&b, &built)?;
    let (direct, _, misses) = b.counts();
    ensure!(
        misses == 1 && direct == 0,
        "B: {direct} hits, {misses} misses"
    );
    ensure!(
        tier_count(&b, "redis", "corrupt") == 1,
        "the corrupt object is counted: {}",
        b.stats()
    );
    // Nothing corrupt reached B's local cache: a local rebuild hits and is correct.
    for (name, _) in &built {
        fs::remove_file(b.project.join(name)).ctx("removing the object")?;
    }
    b.start_daemon()?;
    build_and_check(&b, &built)?;
    stop(&b)?;
    ensure!(b.counts().0 == 1, "B's rebuild hits locally: {}", b.stats());

    // B's recompile replaced the damaged object: a third machine hits it.
    let c = next_machine(&a, &remote, "machine C's build")?;
    check_objects(&c, &built)?;
    ensure!(
        c.counts().0 == 1,
        "C hits the repaired object: {}",
        c.stats()
    );
    Ok(())
}

/// A machine as a fresh CI runner is: remote tiers configured, no daemon running, and
/// `daemon.autostart` on, so the first compile of a build starts the daemon.
fn fresh_machine(remote: &str) -> Sandbox {
    let mut settings: Vec<(&str, &str)> = S3_ENV.to_vec();
    settings.push(("HPCC_REMOTE", remote));
    settings.push(("HPCC_DAEMON_AUTOSTART", "true"));
    let sandbox = Sandbox::with_daemon(&settings);
    fs::write(sandbox.project.join(".hpcc"), "").expect("writing the marker");
    sandbox
}

/// `make` with as many compiles at once as there are files, so that many wrappers start
/// while no daemon runs; `env` is set for every compile.
fn build_all_at_once(sandbox: &Sandbox, files: usize, env: &[(&str, &str)]) -> TestResult {
    let cc = format!("CC={} gcc", harness::hpcc_binary().display());
    let jobs = format!("-j{files}");
    let mut command = sandbox.plain_command(&["make", "-s", &jobs, &cc]);
    command.envs(env.iter().copied());
    let out = command.output().ctx("running make")?;
    harness::succeeded(&out, "make")
}

/// The files of the shared-tier scenario: enough that a build outruns a starting daemon.
const FRESH_FILES: usize = 20;

/// Machine B, fresh like A, builds A's sources at another path: every compile must be a
/// hit from the remote tier, byte-identical to A's objects.
fn second_fresh_machine_hits(a: &Sandbox, remote: &str) -> TestResult {
    let (_, _, misses) = a.counts();
    ensure!(
        misses == FRESH_FILES as u64,
        "A: {misses} misses of {FRESH_FILES}; stats: {}",
        a.stats()
    );
    let built = objects(a, FRESH_FILES)?;
    let b = fresh_machine(remote);
    copy_sources(a, &b)?;
    harness::settle();
    build_all_at_once(&b, FRESH_FILES, &[])?;
    stop(&b)?;
    let (direct, preprocessor, misses) = b.counts();
    ensure!(
        direct + preprocessor == FRESH_FILES as u64 && misses == 0,
        "B: {direct} + {preprocessor} hits and {misses} misses of {FRESH_FILES}; stats: {}",
        b.stats()
    );
    check_objects(&b, &built)
}

/// Machine A, fresh, builds a new project with a Redis tier and stops; machine B, fresh too,
/// must get every object from Redis (see [`second_fresh_machine_hits`]). With `daemon_on_a`,
/// A's build starts its daemon itself; without, A builds with the daemon disabled, and a
/// daemon started afterwards must upload what A's wrappers journaled.
fn fresh_machines(daemon_on_a: bool) -> TestResult {
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let redis = servers::redis(dir.path())?;
    let remote = format!("[{}]", redis_tier("redis", redis.port));
    let a = fresh_machine(&remote);
    make_project(&a, FRESH_FILES)?;
    harness::settle();
    ensure!(
        a.daemon_pid().is_none(),
        "A: a daemon runs before the build"
    );
    let journal = a.cache.join("upload-journal");
    if daemon_on_a {
        build_all_at_once(&a, FRESH_FILES, &[])?;
    } else {
        build_all_at_once(&a, FRESH_FILES, &[("HPCC_DAEMON_ENABLED", "false")])?;
        ensure!(a.daemon_pid().is_none(), "A: a daemon ran during the build");
        let text = fs::read_to_string(&journal).ctx("reading A's upload journal")?;
        // A manifest and a result per object.
        let lines = text.lines().count();
        ensure!(
            lines == 2 * FRESH_FILES,
            "A's journal lists {lines} entries, expected {}",
            2 * FRESH_FILES
        );
        a.start_daemon()?;
    }
    stop(&a)?;
    ensure!(
        !journal.exists(),
        "A's daemon left the upload journal behind"
    );
    second_fresh_machine_hits(&a, &remote)
}

/// The scenario: neither machine starts its daemon beforehand, so the first compiles
/// of each build find none running, start it, and must still use the remote tier.
fn fresh_machines_share_every_entry() -> TestResult {
    fresh_machines(true)
}

/// Entries stored with no daemon at all are journaled and uploaded by the next daemon.
fn entries_stored_without_a_daemon_are_uploaded_later() -> TestResult {
    fresh_machines(false)
}

pub fn cases() -> Vec<crate::Case> {
    const REDIS: &[Need] = &[Need::Gcc, Need::Make, Need::Redis];
    const REDIS_S3: &[Need] = &[Need::Gcc, Need::Make, Need::Redis, Need::S3];
    const MAKE: &[Need] = &[Need::Gcc, Need::Make];
    const S3: &[Need] = &[Need::Gcc, Need::Make, Need::S3];
    vec![
        (
            "remote::redis_shared_by_two_machines",
            REDIS,
            redis_shared_by_two_machines,
        ),
        (
            "remote::memcached_shared_by_two_machines",
            &[Need::Gcc, Need::Make, Need::Memcached],
            memcached_shared_by_two_machines,
        ),
        (
            "remote::sigterm_stops_the_daemon_after_its_uploads",
            REDIS,
            sigterm_stops_the_daemon_after_its_uploads,
        ),
        (
            "remote::s3_behind_redis_backfills_it",
            REDIS_S3,
            s3_behind_redis_backfills_it,
        ),
        (
            "remote::s3_bucket_created_only_when_asked",
            S3,
            s3_bucket_created_only_when_asked,
        ),
        (
            "remote::store_killed_mid_build",
            REDIS,
            store_killed_mid_build,
        ),
        (
            "remote::silent_and_trickling_stores_time_out",
            MAKE,
            silent_and_trickling_stores_time_out,
        ),
        (
            "remote::cluster_with_a_member_down_still_hits",
            REDIS,
            cluster_with_a_member_down_still_hits,
        ),
        (
            "remote::fresh_machines_share_every_entry",
            REDIS,
            fresh_machines_share_every_entry,
        ),
        (
            "remote::entries_stored_without_a_daemon_are_uploaded_later",
            REDIS,
            entries_stored_without_a_daemon_are_uploaded_later,
        ),
        (
            "remote::corrupted_remote_object_is_recompiled",
            REDIS,
            corrupted_remote_object_is_recompiled,
        ),
    ]
}
