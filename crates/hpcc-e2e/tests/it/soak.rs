//! A QEMU worker under load and under faults: every job gets an answer, nothing hangs, and
//! nothing of a session is left behind.
//!
//! The worker is the library's [`Worker`] with the `qemu` runtime (software emulation here),
//! its guests jailed as in production (`[vm.jail]`: a uid range and parent cgroup per rig),
//! called as the gRPC service calls it; a client that gives up is a dropped compile future,
//! which is what the service does when its client goes away.
//!
//! - `soak`: 300 jobs from two tenants, mixing good compiles, failing ones, compiles that run
//!   past the job deadline, and clients that cancel after a while.
//! - fault cases: while a job runs, its guest's VMM is killed, or frozen (SIGSTOP: a guest that
//!   stops answering without dying: a hung kernel, a stuck agent channel). The session is noticed as broken
//!   within seconds, killed with everything it owns, and the job runs once more on a fresh
//!   session.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hpcc_auth::{RoutingKey, RoutingVerifier};
use hpcc_image::ImageStore;
use hpcc_runtime::health::HealthPolicy;
use hpcc_runtime::vm::jail::JailConfig;
use hpcc_runtime::vm::qemu::{Accel, QemuConfig, QemuRuntime};
use hpcc_runtime::vm::GuestConfig;
use hpcc_runtime::Limits;
use hpcc_worker::audit::{AuditLog, AuditRow};
use hpcc_worker::cache::WorkerCache;
use hpcc_worker::sessions::{PoolConfig, SessionPool};
use hpcc_worker::sources::SourceStore;
use hpcc_worker::{CompileJob, CompileOutput, StoreRootfs, Worker, WorkerError, WorkerSettings};

use crate::farm::text;
use crate::{Case, Need, TestResult};

const VM: &[Need] = &[Need::Sandbox, Need::Vm, Need::Jail];

/// Every case of this module.
pub fn cases() -> Vec<Case> {
    vec![
        ("soak::qemu_worker_answers_300_mixed_jobs", VM, soak),
        ("soak::killed_vmm_is_replaced", VM, killed_vmm),
        ("soak::frozen_guest_is_replaced", VM, frozen_vmm),
    ]
}

/// A worker over the qemu runtime, its state in a temporary directory.
struct Rig {
    runtime: tokio::runtime::Runtime,
    worker: Arc<Worker>,
    image: String,
    state: PathBuf,
    audit: PathBuf,
    /// The parent cgroup of this rig's jails (under each v1 controller, or the v2 root).
    cgroup_parent: String,
    _dir: tempfile::TempDir,
}

/// Rigs made by this process, for their uid ranges.
static RIGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Where the cgroup file systems are.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Rig {
    fn new(job_timeout: Duration) -> Result<Rig, String> {
        let runtime = tokio::runtime::Runtime::new().map_err(text)?;
        let (layout, _) = crate::image::layout()?;
        let store_dir = crate::farm::shared_image_store()?;
        let store = ImageStore::open(&store_dir, hpcc_image::Limits::default()).map_err(text)?;
        let image = store.import_layout(&layout).map_err(text)?.to_string();
        // Short: the session's socket paths must stay under 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("hpcc-soak-")
            .tempdir_in("/tmp")
            .map_err(text)?;
        let state = dir.path().join("vm");
        let (qemu, _) = hpcc_runtime::testing::vm_tools()?;
        let kernel = hpcc_runtime::testing::guest_kernel()?;
        let mut guest = GuestConfig::new(
            kernel.kernel,
            kernel.modules,
            hpcc_runtime::testing::agent_binary()?,
        );
        guest.state_dir = state.clone();
        guest.memory_mib = 512;
        guest.boot_timeout = Duration::from_secs(120);
        // Jailed, as a production worker's guests are (Need::Sandbox: root), in a uid range
        // and parent cgroup of this rig's own, so rigs running at once never share a uid and
        // the rig finds its sessions' processes by cgroup.
        let rig_number = RIGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cgroup_parent = format!(
            "hpcc-e2e-{}",
            dir.path()
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let jail = JailConfig {
            uid_base: 310_000 + rig_number * 100,
            uid_count: 100,
            cgroup_parent: cgroup_parent.clone(),
            ..JailConfig::default()
        };
        let qemu = QemuRuntime::new(QemuConfig {
            guest,
            qemu,
            accel: Accel::Tcg,
            jail: Some(jail),
        })
        .map_err(text)?;
        let pool = SessionPool::new(Arc::new(qemu), PoolConfig::default(), None);
        let audit = dir.path().join("audit.tsv");
        let key = RoutingKey::generate().map_err(text)?;
        let worker = Worker::new(
            WorkerSettings {
                id: "soak".into(),
                capacity: 4,
                limits: Limits {
                    job_timeout,
                    ..Limits::default()
                },
                source_date_epoch: 0,
                health: HealthPolicy::default(),
            },
            RoutingVerifier::from_public_base64(&key.public_base64()).map_err(text)?,
            pool,
            Arc::new(StoreRootfs(store)),
            WorkerCache::open(
                &dir.path().join("cache"),
                &hpcc_core::config::WorkerCacheConfig::default(),
            )
            .map_err(text)?,
            AuditLog::open(&audit).map_err(text)?,
            SourceStore::open(&dir.path().join("sources"), 64 << 20).map_err(text)?,
        );
        Ok(Rig {
            runtime,
            worker: Arc::new(worker),
            image,
            state,
            audit,
            cgroup_parent,
            _dir: dir,
        })
    }

    fn job(&self, tenant: &str, compiler: &str, source: String) -> CompileJob {
        CompileJob {
            tenant: tenant.into(),
            image: self.image.clone(),
            compiler: compiler.into(),
            language: if compiler == "g++" {
                "c++-cpp-output".into()
            } else {
                "cpp-output".into()
            },
            flags: vec!["-O2".into()],
            source: source.into_bytes(),
            extra_outputs: Vec::new(),
            policy: hpcc_auth::TenantPolicy::default(),
        }
    }

    fn rows(&self) -> Result<Vec<AuditRow>, String> {
        let log = std::fs::read_to_string(&self.audit).unwrap_or_default();
        log.lines()
            .map(AuditRow::parse)
            .collect::<Result<_, _>>()
            .map_err(text)
    }

    /// Host processes of this rig's sessions: a jailed QEMU names only paths inside its jail,
    /// and the process that waits for it outside its PID namespace keeps this test's command
    /// line, so both are found by their cgroup (under this rig's parent) and the QEMU also by
    /// its root (a jail under the state directory); an unjailed QEMU by its command line,
    /// which names the state directory.
    fn processes(&self) -> Vec<u32> {
        let mut pids = crate::farm::pids_under(&self.state);
        let in_parent = format!("/{}/", self.cgroup_parent);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            let grouped = cgroup.lines().any(|line| {
                line.rsplit(':')
                    .next()
                    .is_some_and(|path| path.starts_with(&in_parent))
            });
            if grouped && alive(pid) && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        pids.retain(|pid| alive(*pid));
        pids
    }

    /// After every session is stopped: no process, socket or session directory is left; only
    /// the per-image root disk cache and the runtime's initramfs remain.
    fn check_nothing_left(&self) -> TestResult {
        self.runtime.block_on(self.worker.pool().stop_all());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.processes().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let left = self.processes();
        if !left.is_empty() {
            return Err(format!("processes of the sessions left: {left:?}"));
        }
        let sessions = self.state.join("sessions");
        let leftover: Vec<String> = std::fs::read_dir(&sessions)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path().display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        if !leftover.is_empty() {
            return Err(format!("session directories left: {leftover:?}"));
        }
        let jails: Vec<String> = std::fs::read_dir(self.state.join("jails"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path().display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        if !jails.is_empty() {
            return Err(format!("jail directories left: {jails:?}"));
        }
        let cgroups: Vec<String> = ["memory", "cpu", "pids", ""]
            .iter()
            .map(|controller| {
                Path::new(CGROUP_ROOT)
                    .join(controller)
                    .join(&self.cgroup_parent)
            })
            .filter_map(|parent| std::fs::read_dir(parent).ok())
            .flat_map(|entries| entries.filter_map(Result::ok))
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
            .map(|entry| entry.path().display().to_string())
            .collect();
        if !cgroups.is_empty() {
            return Err(format!("session cgroups left: {cgroups:?}"));
        }
        let sockets = files_under(&self.state)
            .into_iter()
            .filter(|path| {
                std::fs::symlink_metadata(path)
                    .is_ok_and(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()))
            })
            .collect::<Vec<_>>();
        if !sockets.is_empty() {
            return Err(format!("sockets left: {sockets:?}"));
        }
        Ok(())
    }
}

impl Drop for Rig {
    /// Removes the rig's parent cgroups (its sessions' own are gone with them).
    fn drop(&mut self) {
        self.runtime.block_on(self.worker.pool().stop_all());
        for controller in ["memory", "cpu", "pids", ""] {
            let parent = Path::new(CGROUP_ROOT)
                .join(controller)
                .join(&self.cgroup_parent);
            let _ = std::fs::remove_dir(&parent);
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// A C source unique to `n`, that compiles.
fn good_source(n: usize) -> String {
    format!("int value_{n}(int x) {{ return x * {n} + {}; }}\n", n % 7)
}

/// A C++ source whose constant evaluation runs far longer than any job deadline here.
fn endless_source(n: usize) -> String {
    format!(
        "constexpr long spin(long n) {{ long s = {n}; for (long i = 0; i < n; ++i) \
         for (long j = 0; j < n; ++j) s += (i ^ j) & 3; return s; }}\n\
         constexpr long value = spin(200000);\nlong get() {{ return value; }}\n"
    )
}

#[derive(Debug, Default)]
struct Tally {
    good: usize,
    failed: usize,
    timed_out: usize,
    cancelled: usize,
    errors: Vec<String>,
}

/// 300 jobs from two tenants, at most 8 outstanding: every job ends within its bound with the
/// answer its kind calls for, and afterwards nothing of the sessions is left.
fn soak() -> TestResult {
    const JOBS: usize = 300;
    let rig = Rig::new(Duration::from_secs(20))?;
    let started = Instant::now();
    let tally = rig.runtime.block_on(async {
        let gate = Arc::new(tokio::sync::Semaphore::new(8));
        let mut tasks = Vec::new();
        for n in 0..JOBS {
            let tenant = if n % 2 == 0 { "a" } else { "b" };
            // One job in 25 runs past the deadline, one in 10 fails, one in 6 is cancelled.
            let (kind, job) = if n % 25 == 3 {
                ("slow", rig.job(tenant, "g++", endless_source(n)))
            } else if n % 10 == 1 {
                (
                    "bad",
                    rig.job(tenant, "gcc", format!("int broken_{n}( {{\n")),
                )
            } else if n % 6 == 5 {
                ("cancel", rig.job(tenant, "gcc", good_source(n)))
            } else {
                ("good", rig.job(tenant, "gcc", good_source(n)))
            };
            let worker = Arc::clone(&rig.worker);
            let permit = Arc::clone(&gate).acquire_owned().await.map_err(text)?;
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let compile = worker.compile(job);
                // Every job's bound: a deadline of 20 s, a restart and a retry fit well inside.
                let bound = if kind == "cancel" {
                    Duration::from_millis(100 + (n as u64 * 97) % 2_000)
                } else {
                    Duration::from_secs(240)
                };
                (n, kind, tokio::time::timeout(bound, compile).await)
            }));
        }
        let mut tally = Tally::default();
        for task in tasks {
            let (n, kind, answer) = task.await.map_err(text)?;
            classify(&mut tally, n, kind, answer);
        }
        Ok::<_, String>(tally)
    })?;
    let elapsed = started.elapsed();
    println!(
        "soak: {JOBS} jobs in {:.0} s: {} good, {} failed, {} past the deadline, {} cancelled",
        elapsed.as_secs_f64(),
        tally.good,
        tally.failed,
        tally.timed_out,
        tally.cancelled
    );
    if !tally.errors.is_empty() {
        return Err(format!(
            "{} jobs went wrong: {}",
            tally.errors.len(),
            tally.errors.join("; ")
        ));
    }
    if tally.good < 150 || tally.failed < 20 || tally.timed_out < 5 || tally.cancelled < 10 {
        return Err(format!("the mix did not happen: {tally:?}"));
    }
    // Sessions served many jobs each (the audit rows name them), and never across tenants.
    let rows = rig.rows()?;
    let mut sessions: std::collections::HashMap<String, (String, usize)> = Default::default();
    for row in rows.iter().filter(|row| row.vm != "cache") {
        let entry = sessions
            .entry(row.vm.clone())
            .or_insert_with(|| (row.tenant.clone(), 0));
        if entry.0 != row.tenant {
            return Err(format!(
                "session {} served {} and {}",
                row.vm, entry.0, row.tenant
            ));
        }
        entry.1 += 1;
    }
    if sessions.values().all(|(_, jobs)| *jobs < 20) {
        return Err(format!("sessions were not reused: {sessions:?}"));
    }
    rig.check_nothing_left()
}

fn classify(
    tally: &mut Tally,
    n: usize,
    kind: &str,
    answer: Result<Result<CompileOutput, WorkerError>, tokio::time::error::Elapsed>,
) {
    match (kind, answer) {
        ("cancel", Err(_)) => tally.cancelled += 1,
        (_, Err(_)) => tally.errors.push(format!("job {n} ({kind}) hung")),
        ("good" | "cancel", Ok(Ok(output))) if output.exit_code == 0 && output.object.is_some() => {
            tally.good += 1;
        }
        ("bad", Ok(Ok(output))) if output.exit_code > 0 && output.object.is_none() => {
            tally.failed += 1;
        }
        ("slow", Ok(Ok(output))) if output.exit_code == -1 && output.object.is_none() => {
            tally.timed_out += 1;
        }
        (_, Ok(Ok(output))) => tally.errors.push(format!(
            "job {n} ({kind}): exit {} object {} stderr {}",
            output.exit_code,
            output.object.is_some(),
            String::from_utf8_lossy(&output.stderr)
        )),
        (_, Ok(Err(error))) => tally.errors.push(format!("job {n} ({kind}): {error}")),
    }
}

/// Which process of a session a fault hits, and how.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Freeze,
}

/// A job runs past its start in a warm guest; then `fault` hits the process of that guest
/// whose command is `program`. The broken session is noticed within `notice`, every process
/// of it is gone, the job is answered (it runs once more on a fresh session, where it runs to
/// its deadline), and a next job is served by another session.
fn fault_case(program: &str, fault: Fault, notice: Duration) -> TestResult {
    let rig = Rig::new(Duration::from_secs(15))?;
    rig.runtime.block_on(async {
        // Warm a session.
        let first = rig
            .worker
            .compile(rig.job("a", "gcc", good_source(1)))
            .await
            .map_err(text)?;
        if first.exit_code != 0 {
            return Err(format!("first compile failed: {first:?}"));
        }
        let victims: Vec<u32> = rig
            .processes()
            .into_iter()
            .filter(|pid| command_of(*pid).contains(program))
            .collect();
        let others: Vec<u32> = rig
            .processes()
            .into_iter()
            .filter(|pid| !victims.contains(pid))
            .collect();
        if victims.len() != 1 {
            return Err(format!("expected one {program} process, found {victims:?}"));
        }
        let worker = Arc::clone(&rig.worker);
        let job = rig.job("a", "g++", endless_source(2));
        let running = tokio::spawn(async move { worker.compile(job).await });
        tokio::time::sleep(Duration::from_secs(2)).await;
        let signal = match fault {
            Fault::Kill => rustix::process::Signal::KILL,
            Fault::Freeze => rustix::process::Signal::STOP,
        };
        let victim = rustix::process::Pid::from_raw(victims[0] as i32).ok_or("pid 0")?;
        rustix::process::kill_process(victim, signal).map_err(text)?;
        let hit = Instant::now();
        // Noticed and killed: every process of the old session is gone.
        let old: Vec<u32> = victims.iter().chain(&others).copied().collect();
        while old.iter().any(|pid| alive(*pid)) {
            if hit.elapsed() > notice {
                let _ = rustix::process::kill_process(victim, rustix::process::Signal::KILL);
                return Err(format!(
                    "old session's processes {old:?} still there {} s after the fault",
                    notice.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let noticed = hit.elapsed();
        let answer = tokio::time::timeout(Duration::from_secs(240), running)
            .await
            .map_err(|_| "the job hung after the fault".to_owned())?
            .map_err(text)?;
        let output = answer.map_err(|error| format!("the retried job failed: {error}"))?;
        if output.exit_code != -1 {
            return Err(format!(
                "the retried job should have hit its deadline: {output:?}"
            ));
        }
        let next = rig
            .worker
            .compile(rig.job("a", "gcc", good_source(3)))
            .await
            .map_err(text)?;
        if next.exit_code != 0 || next.session_id == first.session_id {
            return Err(format!(
                "next job: exit {} in session {} (the broken one was {})",
                next.exit_code, next.session_id, first.session_id
            ));
        }
        println!(
            "{program} {fault:?}: noticed and cleaned up in {} ms",
            noticed.as_millis()
        );
        Ok(())
    })?;
    rig.check_nothing_left()
}

fn command_of(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

/// Whether `pid` still exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn killed_vmm() -> TestResult {
    fault_case("qemu-system", Fault::Kill, Duration::from_secs(5))
}

fn frozen_vmm() -> TestResult {
    fault_case("qemu-system", Fault::Freeze, Duration::from_secs(30))
}
