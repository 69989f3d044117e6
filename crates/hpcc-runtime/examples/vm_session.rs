//! Measures the `qemu` runtime's sessions: cold boot against restore from a snapshot, a warm
//! guest's per-job time against the sandbox's for the same job, and the host memory of an idle
//! guest. Run by `bench/vm-session.sh`, which documents the settings; prints Markdown.
//!
//! Uses the test image and guest kernel of `hpcc_runtime::testing` (built once per target
//! directory), so it needs what the runtime's VM tests need (root, debootstrap, QEMU).

use std::time::{Duration, Instant};

use hpcc_proto::agent::JobHeader;
use hpcc_runtime::agent_client::{run_job, InputFile};
use hpcc_runtime::sandbox::{SandboxConfig, SandboxRuntime};
use hpcc_runtime::testing::{agent_binary, guest_kernel, image, target_dir, vm_tools};
use hpcc_runtime::vm::qemu::{Accel, QemuConfig, QemuRuntime, SNAPSHOT_MEMORY};
use hpcc_runtime::vm::GuestConfig;
use hpcc_runtime::{Limits, Runtime, Session, SessionSpec};

type Result<T> = std::result::Result<T, String>;

/// `error` with its sources.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn spec() -> Result<SessionSpec> {
    Ok(SessionSpec {
        tenant: "bench".into(),
        image_digest: format!("sha256:{}", "0b".repeat(32)),
        rootfs: image()?,
        limits: Limits {
            work_bytes: 256 << 20,
            job_timeout: Duration::from_secs(300),
            ..Limits::default()
        },
        source_date_epoch: 1_700_000_000,
    })
}

const HELLO_C: &[u8] = b"#include <stdio.h>\n\
int square(int x) { return x * x; }\n\
int main(void) { printf(\"%d\\n\", square(7)); return 0; }\n";

fn header(argv: &[&str], outputs: &[&str]) -> JobHeader {
    JobHeader {
        job_id: "bench".into(),
        argv: argv.iter().map(|word| (*word).to_owned()).collect(),
        outputs: outputs.iter().map(|path| (*path).to_owned()).collect(),
        ..JobHeader::default()
    }
}

/// Runs the compile job (or `true`) once; returns its wall time.
async fn job(session: &dyn Session, compile: bool) -> Result<Duration> {
    let started = Instant::now();
    let stream = session.connect().await.map_err(|error| chain(&error))?;
    let (job, inputs) = if compile {
        (
            header(
                &["gcc", "-O2", "-g", "-c", "src/hello.c", "-o", "hello.o"],
                &["hello.o"],
            ),
            vec![InputFile {
                path: "src/hello.c".into(),
                mode: 0o644,
                data: HELLO_C.to_vec(),
            }],
        )
    } else {
        (header(&["true"], &[]), Vec::new())
    };
    let outcome = run_job(session.id(), stream, job, inputs)
        .await
        .map_err(|error| chain(&error))?;
    if outcome.result.exit_code != 0 {
        return Err(format!("job failed: {:?}", outcome.result));
    }
    Ok(started.elapsed())
}

/// (p50, p99, max) in milliseconds, nearest rank.
fn percentiles(samples: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    // Nearest rank: the smallest sample with at least `percent`% of samples at or below it.
    let rank = |percent: usize| ms[(percent * ms.len()).div_ceil(100).clamp(1, ms.len()) - 1];
    (rank(50), rank(99), ms[ms.len() - 1])
}

/// Resident memory of `pid` from `/proc/<pid>/status`: (VmRSS, RssAnon, RssFile, RssShmem) KiB.
fn rss(pid: u32) -> (u64, u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
        field("RssShmem:"),
    )
}

async fn measure() -> Result<()> {
    let boots = env_number("BOOTS", 10);
    let jobs = env_number("JOBS", 30);
    let (qemu, _) = vm_tools()?;
    let kernel = guest_kernel()?;
    let agent = agent_binary()?;
    let mut guest = GuestConfig::new(kernel.kernel, kernel.modules, agent.clone());
    guest.state_dir = target_dir().join("test-vm/state");
    guest.memory_mib = u32::try_from(env_number("MEMORY_MIB", 1024)).unwrap_or(1024);
    guest.vcpus = u32::try_from(env_number("VCPUS", 2)).unwrap_or(2);
    guest.boot_timeout = Duration::from_secs(120);
    let (memory_mib, vcpus) = (guest.memory_mib, guest.vcpus);
    let runtime = QemuRuntime::new(QemuConfig {
        guest,
        qemu,
        accel: Accel::Tcg,
        jail: None,
    })
    .map_err(|error| chain(&error))?;
    let spec = spec()?;
    let snapshot_root = tempfile::tempdir().map_err(|error| chain(&error))?;
    let snapshot = snapshot_root.path();
    // Cold boots; the first guest compiles once (an idle guest that has worked), is measured
    // idle, and is snapshotted.
    let mut boot_times = Vec::new();
    let mut idle_rss = (0, 0, 0, 0);
    let mut snapshot_time = Duration::ZERO;
    for round in 0..boots {
        let started = Instant::now();
        let session = runtime.start(&spec).await.map_err(|error| chain(&error))?;
        boot_times.push(started.elapsed());
        if round == 0 {
            job(session.as_ref(), true).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let pid = session.host_pids().first().copied().ok_or("no QEMU pid")?;
            idle_rss = rss(pid);
            let started = Instant::now();
            session
                .snapshot(snapshot)
                .await
                .map_err(|error| chain(&error))?;
            snapshot_time = started.elapsed();
        } else {
            session.stop().await.map_err(|error| chain(&error))?;
        }
    }
    let snapshot_bytes = std::fs::metadata(snapshot.join(SNAPSHOT_MEMORY))
        .map(|metadata| metadata.len())
        .unwrap_or(0);

    // Restores.
    let mut restore_times = Vec::new();
    let mut restored_rss = (0, 0, 0, 0);
    let mut warm = None;
    for round in 0..boots {
        let started = Instant::now();
        let session = runtime
            .restore(&spec, snapshot)
            .await
            .map_err(|error| chain(&error))?;
        restore_times.push(started.elapsed());
        if round + 1 == boots {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let pid = session.host_pids().first().copied().ok_or("no QEMU pid")?;
            restored_rss = rss(pid);
            warm = Some(session);
        } else {
            session.stop().await.map_err(|error| chain(&error))?;
        }
    }
    let warm = warm.ok_or("no restore")?;

    // Per-job times: the warm (restored) guest against a sandbox session, same jobs.
    let sandbox_state = tempfile::tempdir_in("/tmp").map_err(|error| chain(&error))?;
    let mut config = SandboxConfig::new(agent);
    config.state_dir = sandbox_state.path().to_owned();
    let sandbox = SandboxRuntime::new(config).map_err(|error| chain(&error))?;
    let mut sandbox_spec = spec.clone();
    sandbox_spec.image_digest = "sha256:bench".into();
    let local = sandbox
        .start(&sandbox_spec)
        .await
        .map_err(|error| chain(&error))?;
    let mut rows = Vec::new();
    for (name, compile) in [("`true`", false), ("gcc -O2 -g -c hello.c", true)] {
        let (mut vm, mut sb) = (Vec::new(), Vec::new());
        // One of each first, not counted (first-use costs: page cache, job slot).
        job(warm.as_ref(), compile).await?;
        job(local.as_ref(), compile).await?;
        for _ in 0..jobs {
            vm.push(job(warm.as_ref(), compile).await?);
            sb.push(job(local.as_ref(), compile).await?);
        }
        rows.push((name, percentiles(&vm), percentiles(&sb)));
    }
    warm.stop().await.map_err(|error| chain(&error))?;
    local.stop().await.map_err(|error| chain(&error))?;

    let (boot_p50, boot_p99, boot_max) = percentiles(&boot_times);
    let (restore_p50, restore_p99, restore_max) = percentiles(&restore_times);
    println!("## qemu sessions under TCG ({vcpus} vCPUs, {memory_mib} MiB guests)\n");
    println!("| session start ({boots} each) | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|");
    println!("| cold boot | {boot_p50:.0} | {boot_p99:.0} | {boot_max:.0} |");
    println!("| restore from snapshot | {restore_p50:.0} | {restore_p99:.0} | {restore_max:.0} |");
    println!(
        "\nrestore/boot at p50: {:.3} (target <= 0.2); p99: {:.3}",
        restore_p50 / boot_p50,
        restore_p99 / boot_p99
    );
    println!(
        "snapshot: {:.0} ms to save, {:.1} MiB of memory stream\n",
        snapshot_time.as_secs_f64() * 1000.0,
        snapshot_bytes as f64 / f64::from(1 << 20)
    );
    println!("| job ({jobs} each, warm session) | qemu p50 ms | qemu p99 ms | sandbox p50 ms | sandbox p99 ms | overhead p50 ms | overhead p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, (vm50, vm99, _), (sb50, sb99, _)) in rows {
        println!(
            "| {name} | {vm50:.1} | {vm99:.1} | {sb50:.1} | {sb99:.1} | {:.1} | {:.1} |",
            vm50 - sb50,
            vm99 - sb99
        );
    }
    let per_gib = |kib: u64| {
        if kib == 0 {
            0.0
        } else {
            (1u64 << 20) as f64 / kib as f64
        }
    };
    println!("\n| idle guest, QEMU process | VmRSS MiB | RssAnon | RssFile | RssShmem | guests per GiB |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, (total, anon, file, shmem)) in [
        ("booted, after one job", idle_rss),
        ("restored", restored_rss),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |",
            total as f64 / 1024.0,
            anon as f64 / 1024.0,
            file as f64 / 1024.0,
            shmem as f64 / 1024.0,
            per_gib(total)
        );
    }
    println!("\n(no vsock backend process: the qemu runtime's agent channel is virtio-serial inside QEMU)");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("vm_session: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(measure()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("vm_session: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
