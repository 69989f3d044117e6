//! The VMM jail, seen from outside: a jailed QEMU session's processes run as an unprivileged
//! uid of the configured range with no capabilities, no_new_privs and a seccomp filter, in
//! namespaces of their own (a network namespace with only `lo`), `pivot_root`ed into a
//! directory holding only their files, in a cgroup with the limits written; the guest still
//! compiles byte-identically to the sandbox; stop leaves no process, jail directory or cgroup;
//! a guest that exhausts its memory gets its VMM killed by the cgroup, its job fails, and the
//! runtime goes on serving.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hpcc_runtime::testing::{guest_kernel, target_dir, vm_tools};
use hpcc_runtime::vm::jail::{libs, CgroupVersion, JailConfig, DEFAULT_MEMORY_OVERHEAD};
use hpcc_runtime::vm::qemu::{Accel, QemuConfig, QemuRuntime, AGENT_PORTS};
use hpcc_runtime::vm::GuestConfig;
use hpcc_runtime::{Runtime, Session};

use crate::harness::{self, block_on, ensure, error_chain, header, run, Need, TestResult};
use crate::qemu::{compile, spec};
use crate::Case;

const JAILED_VM: &[Need] = &[
    Need::Root,
    Need::Agent,
    Need::Image,
    Need::Vm,
    Need::Cgroups,
];

/// Every case of this module.
pub fn cases() -> Vec<Case> {
    vec![
        (
            "jail_confines_a_qemu_session",
            JAILED_VM,
            confines_a_qemu_session,
        ),
        (
            "jail_oom_kills_the_vmm_not_the_worker",
            JAILED_VM,
            oom_kills_the_vmm,
        ),
        (
            "jail_vmm_dies_with_its_worker",
            JAILED_VM,
            vmm_dies_with_its_worker,
        ),
        (
            "jail_snapshot_restores_into_a_new_jail",
            JAILED_VM,
            snapshot_restores_into_a_new_jail,
        ),
        (
            "jail_firecracker_is_served_from_its_jail",
            JAILED_VM,
            firecracker_is_served_from_its_jail,
        ),
    ]
}

/// The uid range and cgroup parent of these tests (apart from a production worker's).
const UID_BASE: u32 = 300_000;
const UID_COUNT: u32 = 50;
const CGROUP_PARENT: &str = "hpcc-it";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const GUEST_MIB: u32 = 512;

fn jail_config(memory_bytes: Option<u64>) -> JailConfig {
    JailConfig {
        uid_base: UID_BASE,
        uid_count: UID_COUNT,
        cgroup_parent: CGROUP_PARENT.into(),
        memory_bytes,
        ..JailConfig::default()
    }
}

/// A jailed QEMU runtime sharing the disk cache of the `qemu` tests.
fn runtime(memory_bytes: Option<u64>) -> Result<QemuRuntime, String> {
    let (qemu, _) = vm_tools()?;
    let kernel = guest_kernel()?;
    let mut guest = GuestConfig::new(kernel.kernel, kernel.modules, harness::agent_binary()?);
    guest.state_dir = target_dir().join("test-vm/state");
    guest.memory_mib = GUEST_MIB;
    guest.boot_timeout = Duration::from_secs(120);
    QemuRuntime::new(QemuConfig {
        guest,
        qemu,
        accel: Accel::Tcg,
        jail: Some(jail_config(memory_bytes)),
    })
    .map_err(|error| error_chain(&error))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))
}

/// The value of `field:` in `/proc/<pid>/status`.
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// Every non-directory entry under `dir`, as absolute paths inside it (symlinks not followed).
fn walk(dir: &Path) -> Result<BTreeSet<PathBuf>, String> {
    let mut found = BTreeSet::new();
    let mut pending = vec![PathBuf::from("/")];
    while let Some(inside) = pending.pop() {
        let host = dir.join(inside.strip_prefix("/").unwrap_or(&inside));
        let entries =
            std::fs::read_dir(&host).map_err(|error| format!("{}: {error}", host.display()))?;
        for entry in entries {
            let entry = entry.map_err(|error| error.to_string())?;
            let path = inside.join(entry.file_name());
            let kind = entry.file_type().map_err(|error| error.to_string())?;
            if kind.is_dir() {
                pending.push(path);
            } else {
                found.insert(path);
            }
        }
    }
    Ok(found)
}

/// What a jailed QEMU session's root must hold, and nothing else: its files, the agent's
/// port sockets and QMP's (a restored guest's incoming socket is gone: QEMU removes it once
/// the stream is in).
fn expected_root() -> Result<BTreeSet<PathBuf>, String> {
    let (qemu, _) = vm_tools()?;
    let mut expected: BTreeSet<PathBuf> = [
        "/kernel",
        "/initramfs.cpio",
        "/root.ext4",
        "/qmp.sock",
        "/dev/null",
        "/dev/urandom",
        "/usr/share/qemu/bios-microvm.bin",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    expected.extend((0..=AGENT_PORTS).map(|port| PathBuf::from(format!("/port-{port}.sock"))));
    // Debian's QEMU loads TCG as a module, found relative to its binary.
    let module = qemu
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so"))
        .filter(|path| path.is_file());
    for binary in [qemu].into_iter().chain(module) {
        expected.extend(libs::needed(&binary).map_err(|error| error.to_string())?);
        expected.insert(std::path::absolute(&binary).map_err(|error| error.to_string())?);
    }
    Ok(expected)
}

fn namespace(pid: &str, kind: &str) -> Result<PathBuf, String> {
    let link = Path::new("/proc").join(pid).join("ns").join(kind);
    std::fs::read_link(&link).map_err(|error| format!("{}: {error}", link.display()))
}

/// Checks one jailed process from outside; returns its uid.
fn check_process(pid: u32, id: &str, expected_files: &BTreeSet<PathBuf>) -> Result<u32, String> {
    let pid = pid.to_string();
    let proc_dir = Path::new("/proc").join(&pid);
    let status = read(&proc_dir.join("status"))?;
    let name = status_field(&status, "Name");
    let uids: Vec<u32> = status_field(&status, "Uid")
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    let gids: Vec<u32> = status_field(&status, "Gid")
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    let uid = uids.first().copied().unwrap_or(0);
    ensure(
        uids.len() == 4
            && uids.iter().all(|each| *each == uid)
            && gids == uids
            && (UID_BASE..UID_BASE + UID_COUNT).contains(&uid),
        || format!("{name} ({pid}): uids {uids:?}, gids {gids:?}"),
    )?;
    for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let value = status_field(&status, field);
        ensure(value.chars().all(|c| c == '0') && !value.is_empty(), || {
            format!("{name} ({pid}): {field} {value}")
        })?;
    }
    ensure(status_field(&status, "NoNewPrivs") == "1", || {
        format!("{name} ({pid}): no_new_privs not set")
    })?;
    ensure(status_field(&status, "Seccomp") == "2", || {
        format!("{name} ({pid}): no seccomp filter")
    })?;
    for kind in ["mnt", "pid", "net", "ipc", "uts"] {
        let theirs = namespace(&pid, kind)?;
        let ours = namespace("self", kind)?;
        ensure(theirs != ours, || {
            format!("{name} ({pid}): shares the host's {kind} namespace {ours:?}")
        })?;
    }
    // The network namespace as the process sees it: nothing but lo, and lo down.
    let net_dev = read(&proc_dir.join("net/dev"))?;
    let interfaces: Vec<&str> = net_dev
        .lines()
        .skip(2)
        .filter_map(|line| line.split(':').next())
        .map(str::trim)
        .collect();
    ensure(interfaces == ["lo"], || {
        format!("{name} ({pid}): interfaces {interfaces:?}")
    })?;
    let links = std::process::Command::new("nsenter")
        .arg(format!("--net={}", proc_dir.join("ns/net").display()))
        .args(["ip", "-o", "link", "show"])
        .output()
        .map_err(|error| format!("nsenter: {error}"))?;
    let links = String::from_utf8_lossy(&links.stdout);
    ensure(
        links.lines().count() == 1 && links.contains("lo:") && !links.contains("UP"),
        || format!("{name} ({pid}): links {links}"),
    )?;
    // Its root holds only what the session needs, with content bound in.
    let root = proc_dir.join("root");
    let files = walk(&root)?;
    ensure(&files == expected_files, || {
        format!(
            "{name} ({pid}): its root holds {:?} beyond, and lacks {:?}",
            files.difference(expected_files).collect::<Vec<_>>(),
            expected_files.difference(&files).collect::<Vec<_>>()
        )
    })?;
    // Its cgroup is the session's, in each controller.
    let cgroups = read(&proc_dir.join("cgroup"))?;
    for controller in ["memory", "cpu", "pids"] {
        let wanted = format!("/{CGROUP_PARENT}/{id}");
        ensure(
            cgroups.lines().any(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
                controllers.is_some_and(|list| list.split(',').any(|each| each == controller))
                    && path == Some(wanted.as_str())
            }),
            || format!("{name} ({pid}): not in {controller} {wanted}: {cgroups}"),
        )?;
    }
    Ok(uid)
}

/// Everything about a jailed session from outside, then a compile identical to the sandbox's,
/// then nothing left after stop.
fn confines_a_qemu_session() -> TestResult {
    block_on(async {
        let runtime = runtime(None)?;
        let session = runtime
            .start(&spec("jailed")?)
            .await
            .map_err(|error| error_chain(&error))?;
        let id = session.id().to_owned();
        let pids = session.host_pids();
        let checked = check_session(session.as_ref(), &id, &pids).await;
        let object = compile(session.as_ref()).await;
        let memory_dir = Path::new(CGROUP_ROOT)
            .join("memory")
            .join(CGROUP_PARENT)
            .join(&id);
        let peak = read(&memory_dir.join("memory.max_usage_in_bytes"));
        session.stop().await.map_err(|error| error_chain(&error))?;
        checked?;
        check_gone(&id, &pids)?;
        if let Ok(peak) = peak {
            println!(
                "jailed session {id}: peak memory {} MiB",
                peak.trim().parse::<u64>().unwrap_or(0) >> 20
            );
        }
        let object = object?;
        let sandbox = harness::sandbox()?;
        let local = sandbox.start("jailed").await?;
        let reference = compile(local.as_ref()).await;
        local.stop().await.map_err(|error| error_chain(&error))?;
        ensure(object == reference?, || {
            "the jailed guest's object differs from the sandbox's".into()
        })
    })
}

/// Checks a running jailed session from outside (its processes, root, cgroup and limits).
/// Returns the jail's uid.
async fn check_session(session: &dyn Session, id: &str, pids: &[u32]) -> Result<u32, String> {
    ensure(pids.len() == 1, || {
        format!("host pids {pids:?}: expected QEMU alone")
    })?;
    let expected = expected_root()?;
    let mut uids = BTreeSet::new();
    for pid in pids {
        uids.insert(check_process(*pid, id, &expected)?);
    }
    ensure(uids.len() == 1, || {
        format!("one session, several uids: {uids:?}")
    })?;
    // The kernel, initramfs and disk are bound in with their content, read-only.
    let qemu_root = Path::new("/proc").join(pids[0].to_string()).join("root");
    let kernel = guest_kernel()?.kernel;
    let inside = std::fs::metadata(qemu_root.join("kernel")).map_err(|error| error.to_string())?;
    let host = std::fs::metadata(&kernel).map_err(|error| error.to_string())?;
    ensure(inside.len() == host.len() && inside.len() > 0, || {
        "the jail's /kernel is not the guest kernel".into()
    })?;
    // The limits are written.
    let base = Path::new(CGROUP_ROOT);
    let memory = read(
        &base
            .join("memory")
            .join(CGROUP_PARENT)
            .join(id)
            .join("memory.limit_in_bytes"),
    )?;
    let expected_memory = (u64::from(GUEST_MIB) << 20) + DEFAULT_MEMORY_OVERHEAD;
    ensure(memory.trim() == expected_memory.to_string(), || {
        format!("memory.limit_in_bytes {memory}")
    })?;
    let quota = read(
        &base
            .join("cpu")
            .join(CGROUP_PARENT)
            .join(id)
            .join("cpu.cfs_quota_us"),
    )?;
    ensure(quota.trim() == "200000", || {
        format!("cpu.cfs_quota_us {quota}")
    })?;
    let pids_max = read(
        &base
            .join("pids")
            .join(CGROUP_PARENT)
            .join(id)
            .join("pids.max"),
    )?;
    ensure(pids_max.trim() == "512", || format!("pids.max {pids_max}"))?;
    // Every process of the session's cgroup (QEMU and the process outside its PID namespace
    // that waits for it) runs as the jail's uid.
    let procs = read(
        &base
            .join("pids")
            .join(CGROUP_PARENT)
            .join(id)
            .join("cgroup.procs"),
    )?;
    let members: Vec<&str> = procs.split_whitespace().collect();
    ensure(members.len() == 2, || format!("cgroup.procs {members:?}"))?;
    let jail_uid = uids.iter().next().copied().unwrap_or(0);
    // What the tests that look for a session's processes find (by cgroup and by root, its
    // command line naming neither the session nor its directory): QEMU and its waiting parent.
    let found = crate::qemu::qemu_processes(id);
    ensure(found == 2, || {
        format!("qemu_processes finds {found} processes of {id}, expected 2")
    })?;
    for member in members {
        let status = read(&Path::new("/proc").join(member).join("status"))?;
        let member_uids = status_field(&status, "Uid");
        ensure(
            member_uids
                .split_whitespace()
                .all(|uid| uid == jail_uid.to_string()),
            || format!("process {member} of the session's cgroup has uids {member_uids}"),
        )?;
    }
    ensure(session.is_alive(), || {
        "a jailed session is not alive".into()
    })?;
    Ok(jail_uid)
}

/// After a jailed session's stop: no jail directory, cgroup or process of it is left.
fn check_gone(id: &str, pids: &[u32]) -> TestResult {
    let jail_dir = target_dir().join("test-vm/state/jails").join(id);
    ensure(!jail_dir.exists(), || {
        format!("{} left behind", jail_dir.display())
    })?;
    for controller in ["memory", "cpu", "pids"] {
        let dir = Path::new(CGROUP_ROOT)
            .join(controller)
            .join(CGROUP_PARENT)
            .join(id);
        ensure(!dir.exists(), || format!("{} left behind", dir.display()))?;
    }
    for pid in pids {
        ensure(!Path::new("/proc").join(pid.to_string()).exists(), || {
            format!("process {pid} outlives stop")
        })?;
    }
    ensure(crate::qemu::qemu_processes(id) == 0, || {
        format!("{id}: processes outlive stop")
    })
}

/// A jailed guest that compiled is snapshotted (QEMU migrates out of its jail to the worker's
/// socket) and restored into a new jail (a new session id, cgroup and root; QEMU takes the
/// stream on its incoming socket inside that jail), which is confined like a booted one and
/// compiles the same object byte for byte. Neither jail is left afterwards.
fn snapshot_restores_into_a_new_jail() -> TestResult {
    use hpcc_runtime::vm::qemu::{SNAPSHOT_MEMORY, SNAPSHOT_METADATA};
    block_on(async {
        let runtime = runtime(None)?;
        let spec = spec("jailsnap")?;
        let booted = runtime
            .start(&spec)
            .await
            .map_err(|error| error_chain(&error))?;
        let booted_id = booted.id().to_owned();
        let booted_pids = booted.host_pids();
        let reference = compile(booted.as_ref()).await?;
        // Beside the state directory (the snapshot holds a tenant's memory: not in /tmp).
        let snapshots = tempfile::tempdir_in(target_dir().join("test-vm"))
            .map_err(|error| error.to_string())?;
        booted
            .snapshot(snapshots.path())
            .await
            .map_err(|error| error_chain(&error))?;
        check_gone(&booted_id, &booted_pids)?;
        for name in [SNAPSHOT_MEMORY, SNAPSHOT_METADATA] {
            ensure(snapshots.path().join(name).is_file(), || {
                format!("the snapshot has no {name}")
            })?;
        }
        let restored = runtime
            .restore(&spec, snapshots.path())
            .await
            .map_err(|error| error_chain(&error))?;
        let id = restored.id().to_owned();
        let pids = restored.host_pids();
        let checked = async {
            ensure(id != booted_id, || {
                "the restored session reuses the old session's id".into()
            })?;
            let uid = check_session(restored.as_ref(), &id, &pids).await?;
            println!("restored {booted_id} as {id}, jail uid {uid}");
            let object = compile(restored.as_ref()).await?;
            ensure(object == reference, || {
                "the restored jailed guest's object differs from the booted one's".into()
            })
        }
        .await;
        restored.stop().await.map_err(|error| error_chain(&error))?;
        checked?;
        check_gone(&id, &pids)
    })
}

/// A cgroup memory limit below what the guest will touch: a job that fills the guest's memory
/// gets QEMU killed by the cgroup's OOM killer; the job fails (no hang), the session reports
/// dead, its stop cleans up, and a new session of the same runtime still compiles.
fn oom_kills_the_vmm() -> TestResult {
    block_on(async {
        // A guest's RAM is mapped, not touched: a jailed 512 MiB guest's processes peak at
        // about 370 MiB through boot and a compile. 480 MiB leaves room for that, and not for
        // a job holding 400 MiB.
        let limit: u64 = 480 << 20;
        let runtime = runtime(Some(limit))?;
        let session = runtime
            .start(&spec("oom")?)
            .await
            .map_err(|error| error_chain(&error))?;
        let id = session.id().to_owned();
        let memory_dir = Path::new(CGROUP_ROOT)
            .join("memory")
            .join(CGROUP_PARENT)
            .join(&id);
        let booted = read(&memory_dir.join("memory.usage_in_bytes")).unwrap_or_default();
        println!(
            "{id}: {} MiB after boot",
            booted.trim().parse::<u64>().unwrap_or(0) >> 20
        );
        // `tail` keeps the whole 400 MiB "line" in memory.
        let job = tokio::time::timeout(
            Duration::from_secs(300),
            run(
                session.as_ref(),
                header(&["sh", "-c", "head -c 400M /dev/zero | tail | wc -c"], &[]),
                Vec::new(),
            ),
        )
        .await;
        let mut alive = session.is_alive();
        for _ in 0..50 {
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            alive = session.is_alive();
        }
        let oom_control = read(&memory_dir.join("memory.oom_control")).unwrap_or_default();
        session.stop().await.map_err(|error| error_chain(&error))?;
        let job = job.map_err(|_| "the job hung after its VMM was OOM-killed".to_owned())?;
        ensure(job.is_err(), || {
            format!("the job succeeded: {:?}", job.map(|outcome| outcome.result))
        })?;
        ensure(!alive, || "the session still reports alive".into())?;
        let kills = harness::oom_kills(&oom_control);
        ensure(kills >= 1, || {
            format!("no OOM kill in the cgroup: {oom_control}")
        })?;
        ensure(!memory_dir.exists(), || {
            format!("{} left behind", memory_dir.display())
        })?;

        let next = runtime
            .start(&spec("oom")?)
            .await
            .map_err(|error| error_chain(&error))?;
        let object = compile(next.as_ref()).await;
        next.stop().await.map_err(|error| error_chain(&error))?;
        let object = object?;
        ensure(object.starts_with(b"\x7fELF"), || {
            "not an ELF object".into()
        })
    })
}

/// Whether this host has what the tests' jails need: cgroup v1 or v2 with the controllers.
pub fn cgroups_missing() -> Option<String> {
    hpcc_runtime::vm::jail::cgroup::resolve(CgroupVersion::Auto, Path::new(CGROUP_ROOT))
        .err()
        .or_else(|| {
            // The tests read v1 files; a v2-only host would need their v2 names.
            let v1 =
                hpcc_runtime::vm::jail::cgroup::resolve(CgroupVersion::V1, Path::new(CGROUP_ROOT));
            v1.err()
                .map(|reason| format!("these tests read cgroup v1 files: {reason}"))
        })
}

/// The variable that makes this test binary hold a jailed session instead of running tests.
pub const HOLD_SESSION: &str = "HPCC_IT_HOLD_JAILED_SESSION";

/// As a stand-in worker: starts a jailed session, prints `session <id> <pid> <pid>` and waits
/// to be killed. Returns the exit code (1 if the session did not start).
pub fn hold_session() -> i32 {
    block_on(async {
        let started = async {
            let runtime = runtime(None)?;
            let session = runtime
                .start(&spec("held")?)
                .await
                .map_err(|error| error_chain(&error))?;
            Ok::<_, String>((runtime, session))
        };
        match started.await {
            Ok((_runtime, session)) => {
                let pids: Vec<String> = session.host_pids().iter().map(u32::to_string).collect();
                println!("session {} {}", session.id(), pids.join(" "));
                tokio::time::sleep(Duration::from_secs(600)).await;
                0
            }
            Err(error) => {
                eprintln!("{error}");
                1
            }
        }
    })
}

/// A worker killed outright (SIGKILL: no destructor runs) takes its jailed VMMs with it, and
/// the next jailed runtime on the host removes the jail directory and cgroup it left.
fn vmm_dies_with_its_worker() -> TestResult {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let mut worker = std::process::Command::new(exe)
        .env(HOLD_SESSION, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|error| error.to_string())?;
    let stdout = worker.stdout.take().ok_or("no stdout")?;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Other lines (the agent's build) may come first.
        let session = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("session ").map(str::to_owned));
        let _ = sender.send(session.unwrap_or_default());
    });
    let line = receiver.recv_timeout(Duration::from_secs(180));
    let _ = worker.kill();
    let _ = worker.wait();
    let line = line.map_err(|_| "the stand-in worker started no session".to_owned())?;
    let mut words = line.split_whitespace();
    let id = words
        .next()
        .ok_or_else(|| format!("no session: {line:?}"))?
        .to_owned();
    let pids: Vec<u32> = words.filter_map(|word| word.parse().ok()).collect();
    ensure(pids.len() == 1, || format!("host pids: {line:?}"))?;
    let gone = |pid: &u32| !Path::new("/proc").join(pid.to_string()).exists();
    for _ in 0..100 {
        if pids.iter().all(gone) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure(pids.iter().all(gone), || {
        format!("VMM processes {pids:?} outlive their killed worker")
    })?;
    let jail_dir = target_dir().join("test-vm/state/jails").join(&id);
    ensure(jail_dir.exists(), || {
        "the killed worker's jail is gone already (nothing to sweep?)".into()
    })?;
    // A new runtime (a restarted worker) sweeps what the killed one left.
    let _runtime = runtime(None)?;
    ensure(!jail_dir.exists(), || {
        format!("{} left behind", jail_dir.display())
    })?;
    for controller in ["memory", "cpu", "pids"] {
        let dir = Path::new(CGROUP_ROOT)
            .join(controller)
            .join(CGROUP_PARENT)
            .join(&id);
        ensure(!dir.exists(), || format!("{} left behind", dir.display()))?;
    }
    Ok(())
}

/// The `firecracker` runtime, jailed, with the test double's binary as its Firecracker: the
/// double serves the API from inside its jail (its socket reached by the host path under the
/// jail root) and accepts the configuration up to `InstanceStart`, with the guest's files named
/// as the jail holds them (the runtime stops at the first refused request, so an error at
/// `PUT /actions` means the four before it were accepted). The double cannot boot a guest
/// there: it would run QEMU and vhost-device-vsock as its own children, which a Firecracker
/// jail neither holds nor allows (its seccomp filter kills the double as it sets up the
/// child). The failed start leaves no jail directory or cgroup.
fn firecracker_is_served_from_its_jail() -> TestResult {
    use hpcc_runtime::vm::firecracker::{FirecrackerConfig, FirecrackerRuntime};
    block_on(async {
        let kernel = guest_kernel()?;
        let mut guest = GuestConfig::new(kernel.kernel, kernel.modules, harness::agent_binary()?);
        guest.state_dir = target_dir().join("test-vm/state");
        guest.memory_mib = GUEST_MIB;
        guest.boot_timeout = Duration::from_secs(60);
        let runtime = FirecrackerRuntime::new(FirecrackerConfig {
            guest,
            firecracker: PathBuf::from(env!("CARGO_BIN_EXE_fake-firecracker")),
            boot_args_extra: String::new(),
            jailer: None,
            jail: Some(jail_config(None)),
        })
        .map_err(|error| error_chain(&error))?;
        let error = match runtime.start(&spec("fcjailed")?).await {
            Ok(session) => {
                let _ = session.stop().await;
                return Err("the double booted a guest inside a Firecracker jail".into());
            }
            Err(error) => error_chain(&error),
        };
        ensure(error.contains("PUT /actions"), || {
            format!("the jailed double did not get as far as InstanceStart: {error}")
        })?;
        let jails = target_dir().join("test-vm/state/jails");
        let leftovers: Vec<String> = std::fs::read_dir(&jails)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with("fc-fcjailed-"))
                    .collect()
            })
            .unwrap_or_default();
        ensure(leftovers.is_empty(), || {
            format!("the failed start left {leftovers:?}")
        })?;
        for controller in ["memory", "cpu", "pids"] {
            let parent = Path::new(CGROUP_ROOT).join(controller).join(CGROUP_PARENT);
            let left: Vec<String> = std::fs::read_dir(&parent)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|entry| entry.file_name().to_string_lossy().into_owned())
                        .filter(|name| name.starts_with("fc-fcjailed-"))
                        .collect()
                })
                .unwrap_or_default();
            ensure(left.is_empty(), || {
                format!(
                    "the failed start left cgroups {left:?} in {}",
                    parent.display()
                )
            })?;
        }
        Ok(())
    })
}
