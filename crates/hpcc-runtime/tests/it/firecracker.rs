//! The Firecracker runtime against `fake-firecracker`, a test double of the Firecracker binary
//! that serves its API and boots the guest with QEMU: the runtime's API requests are accepted,
//! its guests compile byte-identically to the QEMU runtime's, and a refused request fails the
//! start clearly and leaves nothing behind.
//!
//! Through `fake-jailer`, a double of Firecracker's jailer (see its docs for what it does for
//! real and what it relaxes: the chroot), a jailed session is looked at from outside while it
//! runs (uid, capabilities, namespaces, network interfaces, cgroup limits, the jail's files),
//! bad jailer arguments fail the start with the jailer's message, the jail dies with the
//! process the worker holds, and snapshots go through the API in both modes (the double does
//! not restore guest memory; see fake-firecracker's docs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hpcc_runtime::testing::{guest_kernel, target_dir, vm_tools};
use hpcc_runtime::vm::firecracker::{
    CgroupVersion, FirecrackerConfig, FirecrackerRuntime, JailerConfig,
};
use hpcc_runtime::vm::qemu::TCG_KERNEL_ARGS;
use hpcc_runtime::vm::GuestConfig;
use hpcc_runtime::Runtime;

use crate::harness::{self, block_on, ensure, error_chain, TestResult};
use crate::qemu::{compile, qemu_processes, spec, VM};
use crate::Case;

/// Every case of this module.
pub fn cases() -> Vec<Case> {
    vec![
        ("firecracker_compiles_like_qemu", VM, compiles_like_qemu),
        ("firecracker_api_errors_are_clear", VM, api_errors_are_clear),
        (
            "firecracker_jailed_session_from_outside",
            VM,
            jailed_session_from_outside,
        ),
        (
            "firecracker_jailer_errors_are_clear",
            VM,
            jailer_errors_are_clear,
        ),
        ("firecracker_snapshot_round_trip", VM, snapshot_round_trip),
        (
            "firecracker_snapshot_round_trip_unjailed",
            VM,
            snapshot_round_trip_unjailed,
        ),
        (
            "firecracker_jail_dies_with_its_keeper",
            VM,
            jail_dies_with_its_keeper,
        ),
        (
            "firecracker_jail_cgroup_stops_a_guest_filling_memory",
            VM,
            jail_cgroup_stops_a_guest_filling_memory,
        ),
    ]
}

/// A `firecracker` for the runtime: a script in `dir` that runs the test double (built by
/// cargo for this package's tests) with its environment, naming this machine's QEMU and vsock
/// backend and any `extra` settings. A script rather than the test process's environment, so
/// each runtime's double gets its own settings and no test changes the environment of others.
fn double(dir: &Path, extra: &[(&str, &str)]) -> Result<PathBuf, String> {
    let (qemu, vhost_vsock) = vm_tools()?;
    let mut script = format!(
        "#!/bin/sh\nexport FAKE_FIRECRACKER_QEMU='{}' FAKE_FIRECRACKER_VHOST='{}'\n",
        qemu.display(),
        vhost_vsock.display()
    );
    for (name, value) in extra {
        script.push_str(&format!("export {name}='{value}'\n"));
    }
    script.push_str(&format!(
        "exec '{}' \"$@\"\n",
        env!("CARGO_BIN_EXE_fake-firecracker")
    ));
    let path = dir.join("firecracker");
    std::fs::write(&path, script).map_err(|error| error.to_string())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|error| error.to_string())?;
    Ok(path)
}

/// A runtime over `firecracker`, with state (disks, sessions) shared with the QEMU tests.
fn runtime(firecracker: PathBuf, boot_timeout: Duration) -> Result<FirecrackerRuntime, String> {
    let kernel = guest_kernel()?;
    let mut guest = GuestConfig::new(kernel.kernel, kernel.modules, harness::agent_binary()?);
    guest.state_dir = target_dir().join("test-vm/state");
    guest.memory_mib = 512;
    guest.boot_timeout = boot_timeout;
    FirecrackerRuntime::new(FirecrackerConfig {
        guest,
        firecracker,
        // The double runs guests under TCG, which needs these (see qemu::TCG_KERNEL_ARGS).
        boot_args_extra: TCG_KERNEL_ARGS.to_owned(),
        jailer: None,
        jail: None,
    })
    .map_err(|error| error_chain(&error))
}

/// A session through the Firecracker API compiles the same object as a QEMU guest for the
/// same job, and stopping it ends the double and its guest and removes the session dir.
fn compiles_like_qemu() -> TestResult {
    block_on(async {
        let scripts = tempfile::tempdir().map_err(|error| error.to_string())?;
        let runtime = runtime(double(scripts.path(), &[])?, Duration::from_secs(120))?;
        ensure(runtime.name() == "firecracker", || "wrong name".into())?;
        let session = runtime
            .start(&spec("fccompile")?)
            .await
            .map_err(|error| error_chain(&error))?;
        let id = session.id().to_owned();
        let dir = target_dir().join("test-vm/state/sessions").join(&id);
        ensure(session.is_alive() && dir.join("api.sock").exists(), || {
            format!("{id}: not alive, or no API socket")
        })?;
        let object = compile(session.as_ref()).await;
        let log = std::fs::read_to_string(dir.join("firecracker.log")).unwrap_or_default();
        session.stop().await.map_err(|error| error_chain(&error))?;
        let object = object?;
        for request in [
            "PUT /machine-config -> 204",
            "PUT /boot-source -> 204",
            "PUT /drives/rootfs -> 204",
            "PUT /vsock -> 204",
            "PUT /actions -> 204",
        ] {
            ensure(log.contains(request), || {
                format!("the double did not log {request:?}: {log}")
            })?;
        }
        ensure(!log.contains("network-interfaces"), || {
            format!("a network interface was configured: {log}")
        })?;
        ensure(!dir.exists(), || format!("{} left behind", dir.display()))?;
        // The guest's processes die with the double (parent-death signal), a moment later.
        let mut processes = qemu_processes(&id);
        for _ in 0..50 {
            if processes == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            processes = qemu_processes(&id);
        }
        ensure(processes == 0, || format!("{id}: processes outlive stop"))?;

        let qemu = crate::qemu::runtime()?;
        let reference = qemu
            .start(&spec("fcreference")?)
            .await
            .map_err(|error| error_chain(&error))?;
        let expected = compile(reference.as_ref()).await;
        reference
            .stop()
            .await
            .map_err(|error| error_chain(&error))?;
        ensure(object == expected?, || {
            "the Firecracker guest's object differs from the QEMU guest's".into()
        })
    })
}

/// A double told to refuse `PUT /boot-source` makes the start fail with the path and its
/// `fault_message`, and the failed start leaves no session directory.
fn api_errors_are_clear() -> TestResult {
    block_on(async {
        let scripts = tempfile::tempdir().map_err(|error| error.to_string())?;
        let refusing = double(
            scripts.path(),
            &[(
                "FAKE_FIRECRACKER_REJECT",
                "/boot-source kernel refused by the test",
            )],
        )?;
        let runtime = runtime(refusing, Duration::from_secs(30))?;
        let error = match runtime.start(&spec("fcrefused")?).await {
            Ok(session) => {
                let _ = session.stop().await;
                return Err("a start with a refused boot source succeeded".into());
            }
            Err(error) => error_chain(&error),
        };
        ensure(
            error.contains("/boot-source") && error.contains("kernel refused by the test"),
            || format!("unclear error: {error}"),
        )?;
        let leftovers: Vec<String> = std::fs::read_dir(target_dir().join("test-vm/state/sessions"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with("fc-fcrefused-"))
                    .collect()
            })
            .unwrap_or_default();
        ensure(leftovers.is_empty(), || {
            format!("the failed start left {leftovers:?}")
        })
    })
}

/// [`compile`], failing after 10 minutes rather than waiting for ever.
async fn bounded_compile(session: &dyn hpcc_runtime::Session) -> Result<Vec<u8>, String> {
    tokio::time::timeout(Duration::from_secs(600), compile(session))
        .await
        .unwrap_or_else(|_| Err(format!("{}: no compile result in 10 minutes", session.id())))
}

/// The jailer tests' chroot base: short, since socket paths in jails are limited.
fn chroot_base() -> PathBuf {
    target_dir().join("test-vm/jail")
}

/// A `firecracker` double the jail's uid can run: the script of [`double`], naming a copy of
/// `vhost-device-vsock` outside `/root` (whose mode keeps other uids out).
fn jailable_double(dir: &Path) -> Result<PathBuf, String> {
    let (_, vhost_vsock) = vm_tools()?;
    let tools = target_dir().join("test-vm/tools");
    std::fs::create_dir_all(&tools).map_err(|error| error.to_string())?;
    let copy = tools.join("vhost-device-vsock");
    let partial = tools.join(format!(".vhost-device-vsock.{}", std::process::id()));
    std::fs::copy(&vhost_vsock, &partial)
        .and_then(|_| std::fs::rename(&partial, &copy))
        .map_err(|error| format!("copying {}: {error}", vhost_vsock.display()))?;
    let copy = copy.to_string_lossy().into_owned();
    double(dir, &[("FAKE_FIRECRACKER_VHOST", copy.as_str())])
}

/// A runtime starting `firecracker` through `fake-jailer`, changed by `adjust`.
fn jailed_runtime(
    firecracker: PathBuf,
    adjust: impl FnOnce(&mut JailerConfig),
) -> Result<FirecrackerRuntime, String> {
    let kernel = guest_kernel()?;
    let mut guest = GuestConfig::new(kernel.kernel, kernel.modules, harness::agent_binary()?);
    guest.state_dir = target_dir().join("test-vm/state");
    guest.memory_mib = 512;
    guest.boot_timeout = Duration::from_secs(120);
    let mut jailer = JailerConfig::new(
        PathBuf::from(env!("CARGO_BIN_EXE_fake-jailer")),
        chroot_base(),
    );
    // QEMU under TCG needs far more than Firecracker's few MiB beside guest memory (its
    // translation cache grows with the code the guest runs).
    jailer.memory_overhead_mib = 512;
    adjust(&mut jailer);
    FirecrackerRuntime::new(FirecrackerConfig {
        guest,
        firecracker,
        boot_args_extra: TCG_KERNEL_ARGS.to_owned(),
        jailer: Some(jailer),
        // Ignored under the jailer (hpcc's jail is not applied on top of it): the checks from
        // outside find the jailer's uid range and cgroups, not these.
        jail: Some(hpcc_runtime::vm::jail::JailConfig::default()),
    })
    .map_err(|error| error_chain(&error))
}

/// One line of `/proc/<pid>/status`, after its `Name:`.
fn status_field(pid: u32, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| {
            line.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_owned())
        })
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Whether a process still exists (and is not a zombie waiting to be reaped).
fn running(pid: u32) -> bool {
    status_field(pid, "State").is_some_and(|state| !state.starts_with('Z'))
}

/// A session started through the jailer, seen from outside while it runs: every process of
/// the jail runs as the session's uid, with no supplementary groups, no capabilities and
/// no_new_privs, in network, IPC, UTS, mount and PID namespaces that are not the host's, the network one with no
/// interface but `lo`; the jail's cgroups hold the configured limits; the jail's root holds
/// only the guest's files, the sockets and what the jailer makes; the guest compiles the
/// sandbox's object byte for byte. Stopping it leaves no process, cgroup or directory.
fn jailed_session_from_outside() -> TestResult {
    block_on(async {
        let scripts = tempfile::tempdir().map_err(|error| error.to_string())?;
        let runtime = jailed_runtime(jailable_double(scripts.path())?, |_| {})?;
        let session = runtime
            .start(&spec("fcjail")?)
            .await
            .map_err(|error| error_chain(&error))?;
        let id = session.id().to_owned();
        let jail = chroot_base().join("firecracker").join(&id);
        let pids = session.host_pids();
        let seen = inspect_jail(&id, &jail, &pids);
        let object = bounded_compile(session.as_ref()).await;
        let usage = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/memory/hpcc/{id}/memory.max_usage_in_bytes"
        ))
        .unwrap_or_default();
        let read = |file: String| {
            std::fs::read_to_string(format!("/sys/fs/cgroup/{file}")).unwrap_or_default()
        };
        println!(
            "{id}: jail processes {pids:?}, peak memory {}, tasks {}, refused forks {}",
            usage.trim(),
            read(format!("pids/hpcc/{id}/pids.current")).trim(),
            read(format!("pids/hpcc/{id}/pids.events")).trim()
        );
        session.stop().await.map_err(|error| error_chain(&error))?;
        seen?;
        let object = object?;
        ensure(!jail.exists(), || format!("{} left behind", jail.display()))?;
        for controller in ["memory", "cpu", "pids"] {
            let cgroup = PathBuf::from(format!("/sys/fs/cgroup/{controller}/hpcc/{id}"));
            ensure(!cgroup.exists(), || {
                format!("{} left behind", cgroup.display())
            })?;
        }
        let survivors: Vec<u32> = pids.iter().copied().filter(|pid| running(*pid)).collect();
        ensure(survivors.is_empty(), || {
            format!("jail processes {survivors:?} outlive stop")
        })?;
        let sandbox = harness::sandbox()?;
        let local = sandbox.start("fcjail").await?;
        let reference = compile(local.as_ref()).await;
        local.stop().await.map_err(|error| error_chain(&error))?;
        ensure(object == reference?, || {
            "the jailed guest's object differs from the sandbox's".into()
        })
    })
}

/// The checks of [`jailed_session_from_outside`] on a running jail.
fn inspect_jail(id: &str, jail: &Path, pids: &[u32]) -> TestResult {
    ensure(pids.len() >= 3, || {
        format!("the jail's cgroup holds {pids:?}, not Firecracker, QEMU and vhost-device-vsock")
    })?;
    let own = |kind: &str| std::fs::read_link(format!("/proc/self/ns/{kind}")).ok();
    for pid in pids {
        let uids = status_field(*pid, "Uid").unwrap_or_default();
        let gids = status_field(*pid, "Gid").unwrap_or_default();
        ensure(
            !uids.is_empty()
                && uids
                    .split_whitespace()
                    .all(|uid| uid.parse::<u32>().is_ok_and(|uid| uid >= 900_000)),
            || format!("process {pid} of {id} runs as uids {uids:?}"),
        )?;
        ensure(gids.split_whitespace().all(|gid| gid != "0"), || {
            format!("process {pid} of {id} has gids {gids:?}")
        })?;
        for (field, expected) in [
            ("CapEff", "0000000000000000"),
            ("CapPrm", "0000000000000000"),
            ("NoNewPrivs", "1"),
            ("Groups", ""),
        ] {
            let value = status_field(*pid, field).unwrap_or_default();
            ensure(value == expected, || {
                format!("process {pid}: {field} is {value:?}")
            })?;
        }
        for kind in ["net", "ipc", "uts", "mnt", "pid"] {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
            ensure(theirs.is_some() && theirs != own(kind), || {
                format!("process {pid} shares the host's {kind} namespace")
            })?;
        }
        let interfaces: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
            .unwrap_or_default()
            .lines()
            .skip(2)
            .filter_map(|line| line.split(':').next().map(|name| name.trim().to_owned()))
            .collect();
        ensure(interfaces == ["lo"], || {
            format!("process {pid} sees network interfaces {interfaces:?}")
        })?;
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        for controller in ["memory", "cpu", "pids"] {
            ensure(
                cgroups.lines().any(|line| {
                    line.split(':')
                        .nth(1)
                        .is_some_and(|c| c.split(',').any(|c| c == controller))
                        && line.ends_with(&format!("/hpcc/{id}"))
                }),
                || format!("process {pid} is not in the jail's {controller} cgroup: {cgroups}"),
            )?;
        }
    }
    let limit = |file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{file}"))
            .map(|value| value.trim().to_owned())
            .unwrap_or_default()
    };
    for (file, expected) in [
        (
            format!("memory/hpcc/{id}/memory.limit_in_bytes"),
            ((512u64 + 512) << 20).to_string(),
        ),
        (
            format!("cpu/hpcc/{id}/cpu.cfs_quota_us"),
            "300000".to_owned(),
        ),
        (format!("pids/hpcc/{id}/pids.max"), "256".to_owned()),
    ] {
        let value = limit(&file);
        ensure(value == expected, || {
            format!("{file} is {value:?}, not {expected}")
        })?;
    }
    ensure(
        names(jail) == ["console.log", "firecracker.log", "root"],
        || format!("the jail dir holds {:?}", names(jail)),
    )?;
    let root = jail.join("root");
    let expected = [
        "api.sock",
        "dev",
        "firecracker",
        "firecracker.pid",
        "initramfs.cpio",
        "rootfs.ext4",
        "run",
        "vmlinux",
        "vsock.sock",
    ];
    ensure(names(&root) == expected, || {
        format!(
            "the jail's root holds {:?}, expected {expected:?}",
            names(&root)
        )
    })?;
    ensure(
        names(&root.join("dev")) == ["kvm", "net", "urandom"],
        || format!("the jail's /dev holds {:?}", names(&root.join("dev"))),
    )?;
    use std::os::unix::fs::MetadataExt;
    for file in ["rootfs.ext4", "vmlinux", "initramfs.cpio"] {
        let meta = std::fs::metadata(root.join(file)).map_err(|error| error.to_string())?;
        ensure(meta.uid() == 0 && meta.mode() & 0o022 == 0, || {
            format!(
                "{file} in the jail is writable by the jail (uid {}, mode {:o})",
                meta.uid(),
                meta.mode()
            )
        })?;
    }
    let owner = std::fs::metadata(&root)
        .map_err(|error| error.to_string())?
        .uid();
    ensure(owner >= 900_000, || {
        format!("the jail's root belongs to uid {owner}")
    })
}

/// A change to a jailer configuration.
type Adjust = Box<dyn FnOnce(&mut JailerConfig)>;

/// Bad jailer arguments fail the start with the jailer's message naming the problem, and
/// leave no jail: a parent cgroup that escapes its hierarchy, and cgroup v2 on a host whose
/// unified hierarchy has no controllers.
fn jailer_errors_are_clear() -> TestResult {
    block_on(async {
        let scripts = tempfile::tempdir().map_err(|error| error.to_string())?;
        let firecracker = jailable_double(scripts.path())?;
        let v2_has_memory = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
            .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "memory"));
        let mut cases: Vec<(Adjust, &str)> = vec![(
            Box::new(|jailer| jailer.parent_cgroup = "../escape".into()),
            "Parent cgroup path ../escape is invalid",
        )];
        if !v2_has_memory {
            cases.push((
                Box::new(|jailer| jailer.cgroup_version = CgroupVersion::V2),
                "Controller memory is unavailable",
            ));
        }
        for (adjust, expected) in cases {
            let runtime = jailed_runtime(firecracker.clone(), adjust)?;
            let error = match runtime.start(&spec("fcbadjail")?).await {
                Ok(session) => {
                    let _ = session.stop().await;
                    return Err(format!(
                        "a start that should fail with {expected:?} succeeded"
                    ));
                }
                Err(error) => error_chain(&error),
            };
            ensure(error.contains(expected), || {
                format!("unclear error: {error}")
            })?;
            let leftovers: Vec<String> = names(&chroot_base().join("firecracker"))
                .into_iter()
                .filter(|name| name.starts_with("fc-fcbadjail-"))
                .collect();
            ensure(leftovers.is_empty(), || {
                format!("the failed start left {leftovers:?}")
            })?;
        }
        Ok(())
    })
}

/// Snapshot and restore through the API, jailed: the snapshot pauses the guest (the double
/// refuses `PUT /snapshot/create` on a running one), writes `vmstate` and a memory file of
/// the guest's size into the caller's directory, root-owned and 0600, and stops the session;
/// the restore is a fresh process given only `PUT /snapshot/load`, whose guest the host
/// dials afresh and which compiles. The double cold-boots the recorded configuration rather
/// than restoring memory (see fake-firecracker's docs), so this tests the exchange and the
/// runtime's handling of it, not a resumed guest.
fn snapshot_round_trip() -> TestResult {
    use std::os::unix::fs::MetadataExt;
    block_on(async {
        let scripts = tempfile::tempdir().map_err(|error| error.to_string())?;
        let runtime = jailed_runtime(jailable_double(scripts.path())?, |_| {})?;
        let identity = runtime.snapshot_identity().unwrap_or_default();
        ensure(
            identity.contains("-fake") && identity.contains("kernel blake3:"),
            || format!("snapshot identity {identity:?}"),
        )?;
        let spec = spec("fcsnap")?;
        let session = runtime
            .start(&spec)
            .await
            .map_err(|error| error_chain(&error))?;
        let first_id = session.id().to_owned();
        let snapshots = tempfile::Builder::new()
            .prefix("snap-")
            .tempdir_in(target_dir().join("test-vm"))
            .map_err(|error| error.to_string())?;
        session
            .snapshot(snapshots.path())
            .await
            .map_err(|error| error_chain(&error))?;
        ensure(
            !chroot_base().join("firecracker").join(&first_id).exists(),
            || "the snapshotted session's jail is left".into(),
        )?;
        for (file, size) in [("vmstate", None), ("memory", Some(512u64 << 20))] {
            let meta = std::fs::metadata(snapshots.path().join(file))
                .map_err(|error| format!("{file}: {error}"))?;
            ensure(meta.uid() == 0 && meta.mode() & 0o777 == 0o600, || {
                format!("{file}: uid {} mode {:o}", meta.uid(), meta.mode())
            })?;
            ensure(size.is_none_or(|size| meta.len() == size), || {
                format!("{file} holds {} bytes", meta.len())
            })?;
        }
        let restored = runtime
            .restore(&spec, snapshots.path())
            .await
            .map_err(|error| error_chain(&error))?;
        let id = restored.id().to_owned();
        let log = std::fs::read_to_string(
            chroot_base()
                .join("firecracker")
                .join(&id)
                .join("firecracker.log"),
        )
        .unwrap_or_default();
        let object = bounded_compile(restored.as_ref()).await;
        restored.stop().await.map_err(|error| error_chain(&error))?;
        ensure(log.contains("PUT /snapshot/load -> 204"), || {
            format!("no load: {log}")
        })?;
        ensure(
            !log.contains("PUT /boot-source") && !log.contains("PUT /actions"),
            || format!("the restore configured a boot: {log}"),
        )?;
        ensure(object?.starts_with(b"\x7fELF"), || "not an object".into())?;
        for file in ["vmstate", "memory"] {
            let meta = std::fs::metadata(snapshots.path().join(file))
                .map_err(|error| error.to_string())?;
            ensure(meta.uid() == 0 && meta.mode() & 0o777 == 0o600, || {
                format!(
                    "after the restore {file} has uid {} mode {:o}",
                    meta.uid(),
                    meta.mode()
                )
            })?;
        }
        ensure(
            !chroot_base().join("firecracker").join(&id).exists(),
            || "the restored session's jail is left".into(),
        )
    })
}

/// Snapshot and restore without the jailer: Firecracker writes straight into the caller's
/// directory, and the restored guest's vsock socket (in a new session directory) reaches the
/// double through `vsock_override`.
fn snapshot_round_trip_unjailed() -> TestResult {
    use std::os::unix::fs::MetadataExt;
    block_on(async {
        let scripts = tempfile::tempdir().map_err(|error| error.to_string())?;
        let runtime = runtime(double(scripts.path(), &[])?, Duration::from_secs(120))?;
        let spec = spec("fcsnapdirect")?;
        let session = runtime
            .start(&spec)
            .await
            .map_err(|error| error_chain(&error))?;
        let snapshots = tempfile::Builder::new()
            .prefix("snap-")
            .tempdir_in(target_dir().join("test-vm"))
            .map_err(|error| error.to_string())?;
        session
            .snapshot(snapshots.path())
            .await
            .map_err(|error| error_chain(&error))?;
        for file in ["vmstate", "memory"] {
            let meta = std::fs::metadata(snapshots.path().join(file))
                .map_err(|error| format!("{file}: {error}"))?;
            ensure(meta.mode() & 0o777 == 0o600, || {
                format!("{file}: mode {:o}", meta.mode())
            })?;
        }
        let restored = runtime
            .restore(&spec, snapshots.path())
            .await
            .map_err(|error| error_chain(&error))?;
        let dir = target_dir()
            .join("test-vm/state/sessions")
            .join(restored.id());
        let log = std::fs::read_to_string(dir.join("firecracker.log")).unwrap_or_default();
        let object = bounded_compile(restored.as_ref()).await;
        restored.stop().await.map_err(|error| error_chain(&error))?;
        ensure(log.contains("PUT /snapshot/load -> 204"), || {
            format!("no load: {log}")
        })?;
        ensure(object?.starts_with(b"\x7fELF"), || "not an object".into())?;
        ensure(!dir.exists(), || format!("{} left behind", dir.display()))
    })
}

/// The parent of process `pid`, from `/proc`.
fn parent(pid: u32) -> Option<u32> {
    status_field(pid, "PPid").and_then(|ppid| ppid.parse().ok())
}

/// A jail's processes hang off the worker through two root processes: the one the worker
/// spawned, and the jail's PID-namespace init below it. Killing the first (as its
/// parent-death signal does when the worker dies) ends every process of the jail within
/// seconds, although the jailed ones changed uid (which clears their own parent-death
/// signal); the session then reports itself dead, and stopping it still removes its cgroups
/// and jail.
fn jail_dies_with_its_keeper() -> TestResult {
    block_on(async {
        let scripts = tempfile::tempdir().map_err(|error| error.to_string())?;
        let runtime = jailed_runtime(jailable_double(scripts.path())?, |_| {})?;
        let session = runtime
            .start(&spec("fckeeper")?)
            .await
            .map_err(|error| error_chain(&error))?;
        let id = session.id().to_owned();
        let pids = session.host_pids();
        let vmm = pids.iter().copied().find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("fake-firecracker"))
        });
        let init = vmm.and_then(parent);
        let keeper = init.and_then(parent);
        let chain = (vmm, init, keeper);
        let checked = match chain {
            (Some(_), Some(init), Some(keeper)) => {
                let ours = std::process::id();
                let root = |pid| {
                    status_field(pid, "Uid")
                        .is_some_and(|uid| uid.starts_with("0\t") || uid.starts_with("0 "))
                };
                if parent(keeper) != Some(ours) || !root(init) || !root(keeper) {
                    Err(format!("unexpected process chain {chain:?} under {ours}"))
                } else {
                    rustix::process::kill_process(
                        rustix::process::Pid::from_raw(i32::try_from(keeper).unwrap_or(0))
                            .ok_or("no pid")?,
                        rustix::process::Signal::KILL,
                    )
                    .map_err(|error| error.to_string())
                }
            }
            _ => Err(format!("no process chain for {id}: {chain:?}")),
        };
        let mut survivors = pids.clone();
        for _ in 0..100 {
            survivors.retain(|pid| running(*pid));
            if survivors.is_empty() && !session.is_alive() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let alive = session.is_alive();
        let stopped = session.stop().await.map_err(|error| error_chain(&error));
        checked?;
        ensure(survivors.is_empty(), || {
            format!("jail processes {survivors:?} outlive the keeper")
        })?;
        ensure(!alive, || format!("{id} still reports itself alive"))?;
        stopped?;
        ensure(
            !chroot_base().join("firecracker").join(&id).exists(),
            || format!("the jail of {id} is left"),
        )?;
        ensure(
            !Path::new(&format!("/sys/fs/cgroup/memory/hpcc/{id}")).exists(),
            || format!("the cgroup of {id} is left"),
        )
    })
}

/// A guest that fills its memory is stopped by its jail's memory cgroup: with no room over
/// guest memory for the VMM itself, a job writing ~450 MB into the guest's tmpfs directories
/// makes the host's OOM killer end the VMM in that cgroup. The job fails (no result), the
/// cgroup counts the kill, the session reports itself dead, and stopping it cleans up.
fn jail_cgroup_stops_a_guest_filling_memory() -> TestResult {
    block_on(async {
        let scripts = tempfile::tempdir().map_err(|error| error.to_string())?;
        let runtime = jailed_runtime(jailable_double(scripts.path())?, |jailer| {
            jailer.memory_overhead_mib = 0;
        })?;
        let session = runtime
            .start(&spec("fcoom")?)
            .await
            .map_err(|error| error_chain(&error))?;
        let id = session.id().to_owned();
        let memory = format!("/sys/fs/cgroup/memory/hpcc/{id}");
        println!(
            "{id}: {} MiB after boot, peak {} MiB",
            harness::mib(&format!("{memory}/memory.usage_in_bytes")),
            harness::mib(&format!("{memory}/memory.max_usage_in_bytes"))
        );
        // The guest works until it fills its memory.
        let ready = harness::shell(session.as_ref(), "echo ready").await;
        if ready.as_deref().map(str::trim) != Ok("ready") {
            let _ = session.stop().await;
            return Err(format!("{id} did not run a first job: {ready:?}"));
        }
        let script = "head -c 250000000 /dev/zero > fill; \
                      head -c 200000000 /dev/zero > /tmp/fill; echo survived";
        let job = tokio::time::timeout(
            Duration::from_secs(600),
            harness::run(
                session.as_ref(),
                harness::header(&["sh", "-c", script], &[]),
                Vec::new(),
            ),
        )
        .await;
        let oom = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/memory/hpcc/{id}/memory.oom_control"
        ))
        .unwrap_or_default();
        // The VMM's death reaches the session through the double's exit and then its jail's
        // keeper, each noticed by polling: allow a loaded machine up to 30 s.
        let mut alive = session.is_alive();
        for _ in 0..600 {
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            alive = session.is_alive();
        }
        // What is still in the jail's cgroup, for the failure message.
        let remaining = if alive {
            cgroup_processes(&format!("{memory}/cgroup.procs"))
        } else {
            String::new()
        };
        let stopped = session.stop().await.map_err(|error| error_chain(&error));
        let outcome =
            job.map_err(|_| format!("{id}: the job neither ended nor failed in 10 minutes"))?;
        if let Ok(outcome) = &outcome {
            return Err(format!(
                "the job came back ({:?}, stdout {:?}) from a guest that should have been stopped",
                outcome.result,
                String::from_utf8_lossy(&outcome.stdout)
            ));
        }
        let kills = harness::oom_kills(&oom);
        ensure(kills >= 1, || {
            format!("the cgroup counted no OOM kill: {oom}")
        })?;
        ensure(!alive, || {
            format!(
                "{id} still reports itself alive, with in its cgroup: {remaining}; {oom}; {} MiB",
                harness::mib(&format!("{memory}/memory.usage_in_bytes"))
            )
        })?;
        stopped?;
        ensure(
            !Path::new(&format!("/sys/fs/cgroup/memory/hpcc/{id}")).exists(),
            || format!("the cgroup of {id} is left"),
        )
    })
}

/// The processes listed in a cgroup's `procs` file: pid, name, state and kernel wait channel.
fn cgroup_processes(procs: &str) -> String {
    std::fs::read_to_string(procs)
        .unwrap_or_default()
        .lines()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
            // `pid (comm) state …`: the name may hold spaces, the state follows its `)`.
            let state = stat.rsplit_once(')').map_or("", |(_, rest)| rest.trim());
            let name = stat
                .split_once('(')
                .and_then(|(_, rest)| rest.rsplit_once(')'))
                .map_or("", |(name, _)| name);
            format!(
                "{pid} {name} {} {wchan}",
                state.split(' ').next().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
