//! Remote compilation against local compilation, per compile, on loopback.
//!
//! `cargo bench -p hpcc-e2e --bench remote_compile` (as root: the worker's sandbox needs it),
//! with the corpus of `bench/corpus.sh` in `$CORPUS` (default `~/.cache/hpcc-bench/corpus`).
//!
//! For every Lua and zstd source, one at a time: the plain local compile (`gcc -O2 -g -c`),
//! then what the daemon does for a miss on the farm (`gcc -E` here, the root rewritten to
//! `/src`, the farm client's route and compile through the scheduler and one `hpcc-worker`
//! process running the sandbox), first on a cold worker cache and then again (a worker-cache
//! hit). Prints per-compile overhead percentiles and the bytes on the wire with and without
//! zstd, as a Markdown table for docs/BENCHMARKS.md.
//!
//! Then the fleet: two in-process workers sharing a real `redis-server` as their
//! `[[cache.remote]]` tier. One client builds every source on worker 1; a second client, on
//! another machine as far as the farm knows, builds them all again routed to worker 2: every
//! compile should be a hit from the shared tier, and the table gives that second build's time.
// Test servers and clients are spawned directly: the spawn rule is for the services.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code, unused_imports)] // the test modules below carry what only the tests use

#[path = "../tests/it/client.rs"]
mod client;
#[path = "../tests/it/farm.rs"]
mod farm;
use hpcc_testkit::idp;
#[path = "../tests/it/image.rs"]
mod image;
#[path = "../tests/it/login.rs"]
mod login;
#[path = "../../hpcc-image/tests/it/registry.rs"]
mod registry;
#[path = "../tests/it/scheduler.rs"]
mod scheduler;
#[path = "../../hpcc-cli/tests/it/servers.rs"]
mod servers;

/// What `servers` asks of its harness.
mod harness {
    pub fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }
}

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// What the shared test modules return.
pub type TestResult = Result<(), String>;

/// As in the test binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Root, the agent and the image.
    Sandbox,
    /// `docker-registry`.
    Registry,
    /// Cargo.
    Cargo,
    /// QEMU and the guest kernel.
    Vm,
    /// cgroups for jailed VMMs.
    Jail,
    /// redis-server.
    Redis,
    /// moto's S3 server.
    S3,
}

/// As in the test binary.
pub type Case = (&'static str, &'static [Need], fn() -> TestResult);

struct Source {
    path: PathBuf,
    defines: Vec<String>,
}

fn sources(corpus: &Path) -> Result<Vec<Source>, String> {
    let mut found = Vec::new();
    let mut add = |dir: PathBuf, defines: &[&str]| -> Result<(), String> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|error| format!("{}: {error}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "c"))
            .collect();
        paths.sort();
        for path in paths {
            found.push(Source {
                path: path.strip_prefix(corpus).unwrap_or(&path).to_path_buf(),
                defines: defines.iter().map(|flag| (*flag).to_owned()).collect(),
            });
        }
        Ok(())
    };
    add(corpus.join("lua"), &["-DLUA_USE_LINUX"])?;
    let zstd = [
        "-Izstd",
        "-Izstd/common",
        "-DZSTD_MULTITHREAD=0",
        "-DZSTD_DISABLE_ASM",
    ];
    for part in ["common", "compress", "decompress", "dictBuilder"] {
        add(corpus.join("zstd").join(part), &zstd)?;
    }
    Ok(found)
}

const FLAGS: [&str; 2] = ["-O2", "-g"];

fn local(corpus: &Path, source: &Source, out: &Path) -> Result<Duration, String> {
    let started = Instant::now();
    let output = Command::new("gcc")
        .current_dir(corpus)
        .args(FLAGS)
        .args(&source.defines)
        .arg("-c")
        .arg(&source.path)
        .arg("-o")
        .arg(out)
        .output()
        .map_err(|error| error.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "gcc {}: {}",
            source.path.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(started.elapsed())
}

struct Remote {
    elapsed: Duration,
    source_bytes: u64,
    sent_bytes: u64,
    object_bytes: u64,
    received_bytes: u64,
    cache_hit: bool,
}

fn remote(
    land: &farm::Farmland,
    farm_client: &hpcc_daemon::farm::Farm,
    token: &str,
    corpus: &Path,
    source: &Source,
) -> Result<Remote, String> {
    let started = Instant::now();
    let output = Command::new("gcc")
        .current_dir(corpus)
        .args(FLAGS)
        .args(&source.defines)
        .arg("-E")
        .arg(&source.path)
        .output()
        .map_err(|error| error.to_string())?;
    if !output.status.success() {
        return Err(format!("gcc -E {}", source.path.display()));
    }
    let text = String::from_utf8_lossy(&output.stdout)
        .replace(&format!("\"{}/", corpus.display()), "\"/src/")
        .into_bytes();
    let flags: Vec<String> = FLAGS.iter().map(|flag| (*flag).to_owned()).collect();
    let request = farm::request(text, &flags);
    let source_bytes = request.source.len() as u64;
    let outcome = land
        .runtime
        .block_on(farm_client.compile(request, token))
        .map_err(|error| format!("{}: {error}", source.path.display()))?;
    let elapsed = started.elapsed();
    let object = outcome
        .object
        .as_ref()
        .ok_or_else(|| format!("{}: exit {}", source.path.display(), outcome.exit_code))?;
    Ok(Remote {
        elapsed,
        source_bytes,
        sent_bytes: outcome.sent_bytes,
        object_bytes: object.len() as u64,
        received_bytes: outcome.received_bytes,
        cache_hit: outcome.cache_hit,
    })
}

fn percentile(sorted: &[f64], permille: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = (sorted.len() * permille).div_ceil(1000).saturating_sub(1);
    sorted[index.min(sorted.len() - 1)]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn corpus() -> Result<PathBuf, String> {
    let corpus = std::env::var_os("CORPUS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/hpcc-bench/corpus"))
        })
        .ok_or("no CORPUS and no HOME")?;
    let corpus = std::fs::canonicalize(&corpus).map_err(|error| {
        format!(
            "the corpus {} is missing ({error}); make it with bench/corpus.sh DIR and set CORPUS=DIR",
            corpus.display()
        )
    })?;
    Ok(corpus)
}

fn run() -> Result<(), String> {
    let corpus = corpus()?;
    let sources = sources(&corpus)?;
    // Built before the farm starts: the build takes minutes the first time.
    client::client_binaries()?;
    let land = farm::Farmland::with_workers(0)?;
    let _worker = client::WorkerProcess::start(&land, "bench")?;
    let farm_client = land.farm("a")?;
    let token = land.token_a();
    let scratch = tempfile::tempdir().map_err(|error| error.to_string())?;
    let out = scratch.path().join("out.o");
    let mut local_ms = Vec::new();
    let mut cold = Vec::new();
    let mut hit = Vec::new();
    for source in &sources {
        local_ms.push(local(&corpus, source, &out)?);
        cold.push(remote(&land, &farm_client, &token, &corpus, source)?);
    }
    for source in &sources {
        hit.push(remote(&land, &farm_client, &token, &corpus, source)?);
    }
    if cold.iter().any(|run| run.cache_hit) || hit.iter().any(|run| !run.cache_hit) {
        return Err("the first pass hit the worker cache, or the second missed it".into());
    }
    let summary = |runs: &[Remote]| -> (f64, f64, f64, f64, f64) {
        let mut overhead: Vec<f64> = runs
            .iter()
            .zip(&local_ms)
            .map(|(run, local)| millis(run.elapsed) - millis(*local))
            .collect();
        overhead.sort_by(f64::total_cmp);
        let mut ratio: Vec<f64> = runs
            .iter()
            .zip(&local_ms)
            .map(|(run, local)| run.elapsed.as_secs_f64() / local.as_secs_f64())
            .collect();
        ratio.sort_by(f64::total_cmp);
        let total: f64 = runs.iter().map(|run| millis(run.elapsed)).sum();
        (
            percentile(&overhead, 500),
            percentile(&overhead, 990),
            percentile(&ratio, 500),
            percentile(&ratio, 990),
            total,
        )
    };
    let local_total: f64 = local_ms.iter().copied().map(millis).sum();
    let mut sorted_local: Vec<f64> = local_ms.iter().copied().map(millis).collect();
    sorted_local.sort_by(f64::total_cmp);
    println!(
        "{} sources (Lua, zstd), one compile at a time, scheduler + one hpcc-worker process on loopback\n",
        sources.len()
    );
    println!("| per compile | p50 | p99 | total |");
    println!("|---|---|---|---|");
    println!(
        "| local `gcc -O2 -g -c` | {:.0} ms | {:.0} ms | {:.1} s |",
        percentile(&sorted_local, 500),
        percentile(&sorted_local, 990),
        local_total / 1000.0
    );
    for (label, runs) in [
        ("remote, cold worker cache", &cold),
        ("remote, worker-cache hit", &hit),
    ] {
        let (p50, p99, ratio50, ratio99, total) = summary(runs);
        println!(
            "| {label}: overhead over local | {p50:+.0} ms ({ratio50:.2}×) | {p99:+.0} ms ({ratio99:.2}×) | {:.1} s ({:.2}× local) |",
            total / 1000.0,
            total / local_total
        );
    }
    let sum = |field: fn(&Remote) -> u64| -> u64 { cold.iter().map(field).sum() };
    let (source, sent) = (sum(|run| run.source_bytes), sum(|run| run.sent_bytes));
    let (object, received) = (sum(|run| run.object_bytes), sum(|run| run.received_bytes));
    println!("\n| on the wire (all sources) | without zstd | with zstd | ratio |");
    println!("|---|---|---|---|");
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    println!(
        "| preprocessed sources, client → worker | {:.1} MiB | {:.1} MiB | {:.1}× |",
        mib(source),
        mib(sent),
        source as f64 / sent.max(1) as f64
    );
    println!(
        "| objects, worker → client | {:.1} MiB | {:.1} MiB | {:.1}× |",
        mib(object),
        mib(received),
        object as f64 / received.max(1) as f64
    );
    Ok(())
}

/// Two workers sharing a Redis tier: a build on worker 1 from one client, then the same build
/// from a second client routed to worker 2.
fn fleet(corpus: &Path, sources: &[Source]) -> Result<(), String> {
    let redis_dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let redis = servers::redis(redis_dir.path())?;
    let cache: hpcc_core::config::WorkerCacheConfig = toml::from_str(&format!(
        "[[remote]]\ntype = \"redis\"\nendpoint = \"redis://127.0.0.1:{}\"\n",
        redis.port
    ))
    .map_err(|error| error.to_string())?;
    let land = farm::Farmland::build(farm::FarmSpec {
        workers: 2,
        cache,
        ..farm::FarmSpec::default()
    })?;
    let token = land.token_a();
    let build = |worker: &str| -> Result<(Duration, usize, Vec<Duration>), String> {
        let other = if worker == "w1" { "w2" } else { "w1" };
        land.unfill(worker)?;
        land.fill(other)?;
        // A client of its own: as another developer's daemon would be.
        let client = land.farm("a")?;
        let started = Instant::now();
        let mut hits = 0;
        let mut each = Vec::new();
        for source in sources {
            let run = remote(&land, &client, &token, corpus, source)?;
            hits += usize::from(run.cache_hit);
            each.push(run.elapsed);
        }
        Ok((started.elapsed(), hits, each))
    };
    let (first, first_hits, _) = build("w1")?;
    for worker in &land.workers {
        land.runtime
            .block_on(worker.worker.cache().settle(Duration::from_secs(30)));
    }
    let (second, second_hits, mut each) = build("w2")?;
    each.sort();
    let from_tier = land.workers[1]
        .worker
        .cache()
        .counters()
        .snapshot()
        .into_iter()
        .find(|(name, _)| *name == "remote_hits")
        .map_or(0, |(_, value)| value);
    println!(
        "\nFleet: two workers sharing one redis-server tier; one client builds on worker 1, a second client builds again routed to worker 2\n"
    );
    println!("| build | hits | time | per compile p50 |");
    println!("|---|---|---|---|");
    println!(
        "| client 1 on worker 1 (cold) | {first_hits}/{} | {:.1} s | |",
        sources.len(),
        first.as_secs_f64()
    );
    println!(
        "| client 2 on worker 2 | {second_hits}/{} ({from_tier} from the shared tier) | {:.1} s ({:.2}× the cold build) | {:.0} ms |",
        sources.len(),
        second.as_secs_f64(),
        second.as_secs_f64() / first.as_secs_f64(),
        millis(each[each.len() / 2])
    );
    if second_hits != sources.len() {
        return Err(format!(
            "the second build hit {second_hits} of {}",
            sources.len()
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    // `cargo test --benches` runs this with `--bench` absent; only `cargo bench` measures.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("skipped: remote_compile: run with cargo bench");
        return ExitCode::SUCCESS;
    }
    if !rustix::process::geteuid().is_root() {
        println!("skipped: remote_compile: needs root (the sandbox runtime)");
        return ExitCode::SUCCESS;
    }
    let fleet_only = std::env::var_os("FLEET_ONLY").is_some();
    let result = if fleet_only { Ok(()) } else { run() }.and_then(|()| {
        let corpus = corpus()?;
        fleet(&corpus, &sources(&corpus)?)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("remote_compile: {error}");
            ExitCode::FAILURE
        }
    }
}
