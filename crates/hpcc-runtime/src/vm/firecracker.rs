//! The `firecracker` runtime: each session is a Firecracker microVM with no NIC, configured
//! through Firecracker's API socket, run directly (jailed by hpcc's own jail, [`super::jail`], or
//! not) or through Firecracker's `jailer`.
//!
//! Starting a session ([`FirecrackerRuntime::start`]):
//! 1. The image's root disk is built if this host has not built it before ([`super::disk`]).
//! 2. The session gets a directory: `<state_dir>/sessions/<id>/` when Firecracker runs
//!    directly, `<state_dir>/jails/<id>/` in hpcc's own jail (below), or the jail
//!    `<chroot_base>/<exec_name>/<id>/` under the jailer (below). It (or its `root/`, jailed)
//!    holds `api.sock` (Firecracker's API), `vsock.sock` (hybrid vsock to the guest),
//!    `console.log` (Firecracker's standard output, which carries the guest's serial console)
//!    and `firecracker.log` (its standard error, and the jailer's).
//! 3. Firecracker is started, and once its API socket exists it is configured over HTTP/1.1,
//!    in the order and with the bodies of Firecracker's API specification:
//!    `PUT /machine-config`, `PUT /boot-source` (kernel, the initramfs holding the agent, the
//!    command line), `PUT /drives/rootfs` (the root disk, read-only; not a root device, since
//!    the agent mounts it itself from the initramfs), `PUT /vsock`, and `PUT /actions`
//!    `InstanceStart`. No network interface is ever configured, so the guest has no NIC. A
//!    refused request fails the start with the request's path and Firecracker's
//!    `fault_message`.
//! 4. `start` returns once the agent answers on its vsock port.
//!
//! **hpcc's jail.** With [`FirecrackerConfig::jail`] (and no `jailer`) the binary runs in the
//! session's jail ([`super::jail`]: its own namespaces, uid, cgroup and seccomp allow-list),
//! `pivot_root`ed into `<state_dir>/jails/<id>/root`, which holds the binary (and its
//! libraries, if it is not static) and, bound read-only, the kernel (`/kernel`), the initramfs
//! (`/initramfs.cpio`) and the root disk (`/root.ext4`), plus the sockets `api.sock` and
//! `vsock.sock` Firecracker creates; the API requests name the files as the jailed process
//! sees them. The logs stay beside the root. Snapshots are written into and loaded from the
//! jail root as under the jailer.
//!
//! **Jailer.** With [`FirecrackerConfig::jailer`] set (which takes precedence: hpcc's jail is
//! then not applied on top of Firecracker's own), Firecracker is started by its `jailer`
//! with the documented arguments: `--id <session> --exec-file <firecracker> --uid U --gid U
//! --chroot-base-dir <base> --cgroup-version 1|2 --parent-cgroup <parent> --new-pid-ns`, a
//! `--cgroup` for each of memory (guest memory plus [`JailerConfig::memory_overhead_mib`]),
//! CPU (`vcpus + 1` CPUs of quota) and pids, `--resource-limit no-file=…` and `fsize=…`
//! (room for a snapshot of guest memory), then `--` and Firecracker's own `--api-sock
//! /api.sock`. No `--daemonize`: the worker supervises the process and keeps its output.
//! Before that, the runtime creates `<chroot_base>/<exec_name>/<id>/root/` (the jail's `/`) and
//! hard-links into it (copying when it cannot link, or when the file is not readable by others)
//! the kernel as `/vmlinux`, the initramfs as `/initramfs.cpio` and the root disk as
//! `/rootfs.ext4`; the API requests name those jail paths, and the host reaches the API and
//! vsock sockets at `<root>/api.sock` and `<root>/vsock.sock`. Each session gets a uid (and
//! the same gid) of its own from [`JailerConfig::uid_base`] on, returned when it stops.
//!
//! The jailer gives Firecracker its own mount namespace (and PID namespace, with
//! `--new-pid-ns`) but no network, IPC or UTS namespace of its own (it only joins an existing
//! network namespace with `--netns`, passed when [`JailerConfig::netns`] is set); so the
//! runtime starts the jailer itself in new PID, network (no interface but a down `lo`), IPC
//! and UTS namespaces, under a root `init` that ties the whole jail to the worker: if the
//! worker dies, so does everything in the jail, although the jailer's change of uid clears
//! Firecracker's own parent-death signal (see `sys::set_jailer_pre_exec`). Stopping a jailed
//! session kills the jail's processes, waits for its cgroups to empty, removes them
//! (`<cgroup mount>/<parent>/<id>` for each controller) and the whole jail directory.
//!
//! **Snapshots.** [`Session::snapshot`] pauses the guest (`PATCH /vm` `Paused`), has
//! Firecracker write a full snapshot (`PUT /snapshot/create`: `vmstate` and `memory`, inside
//! the jail when jailed, then moved into the caller's directory, owned by root, mode 0600), and
//! stops the session. [`Runtime::restore`] starts a fresh Firecracker in a fresh session
//! directory (the jail holding the same files at the same paths, which the snapshot names),
//! sends only `PUT /snapshot/load` (`mem_backend` `File`, `resume_vm`, and `vsock_override`
//! with this session's socket), and then dials the agent afresh: Firecracker resets vsock
//! connections on restore. Snapshot files are linked into a jail only while Firecracker loads
//! them, owned by the jail's uid meanwhile, and given back to root afterwards. A snapshot
//! depends on the guest kernel and the Firecracker version
//! ([`Runtime::snapshot_identity`]: the kernel's BLAKE3 and `firecracker --version`).
//!
//! **Guest kernel.** Firecracker describes its devices to the guest only as
//! `virtio_mmio.device=` kernel arguments, so the guest kernel needs
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y`; Debian's cloud kernel does not have it (it runs under
//! the `qemu` runtime, whose `microvm` machine describes devices through ACPI). virtio-mmio,
//! virtio-blk and virtio-vsock must be built in or listed in [`GuestConfig::modules`].
//!
//! The integration tests run this runtime against test doubles of the Firecracker and jailer
//! binaries (`src/bin/fake-firecracker.rs`, `src/bin/fake-jailer.rs`), which serve the same
//! API and boot the guest with QEMU.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixStream;
use tokio::process::Command;

use super::jail::{self as vmm_jail, JailConfig, JailedProgram, Profile, Spawned};
use super::{disk, hybrid, initramfs, GuestConfig, AGENT_PORT, GUEST_CID};
use crate::session;
use crate::{AgentStream, Runtime, RuntimeError, Session, SessionSpec};

const RUNTIME: &str = "firecracker";

/// The hostname of every guest.
pub const GUEST_HOSTNAME: &str = "hpcc";

/// Kernel arguments every Firecracker guest gets: `reboot=k` so that a guest reboot (or a
/// panic, with `panic=-1`) ends the VMM, and `pci=off` since Firecracker has no PCI bus.
const FIRECRACKER_KERNEL_ARGS: &str = "reboot=k pci=off";

/// How long one API request may take (a snapshot of a large guest takes a while).
const API_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one probe of the guest's agent may wait for the VMM's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest API reply read (Firecracker's replies are small JSON objects).
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// The files of a snapshot, in the directory given to [`Session::snapshot`].
pub const SNAPSHOT_STATE: &str = "vmstate";
/// The guest memory file of a snapshot.
pub const SNAPSHOT_MEMORY: &str = "memory";

/// The files a jail's root holds, as Firecracker sees them.
const JAIL_KERNEL: &str = "vmlinux";
const JAIL_INITRAMFS: &str = "initramfs.cpio";
const JAIL_ROOT_DISK: &str = "rootfs.ext4";
const API_SOCKET: &str = "api.sock";
const VSOCK_SOCKET: &str = "vsock.sock";

/// The files of a session in hpcc's jail, as Firecracker sees them.
const OWN_JAIL_KERNEL: &str = "/kernel";
const OWN_JAIL_INITRAMFS: &str = "/initramfs.cpio";
const OWN_JAIL_ROOT_DISK: &str = "/root.ext4";

/// The CFS period given to jails, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// How the Firecracker runtime is set up on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerConfig {
    /// The guest.
    pub guest: GuestConfig,
    /// The `firecracker` binary.
    pub firecracker: PathBuf,
    /// Kernel arguments added to every guest's command line (e.g. timer settings for an
    /// emulated guest).
    pub boot_args_extra: String,
    /// Start Firecracker through its `jailer`; `None` runs it directly.
    pub jailer: Option<JailerConfig>,
    /// hpcc's own jail for Firecracker run directly ([`super::jail`]); ignored when `jailer`
    /// is set (Firecracker's jailer confines it then); `None` with no `jailer` runs it as the
    /// worker's user in the host's namespaces.
    pub jail: Option<JailConfig>,
}

/// Which cgroup hierarchy the jailer creates a session's cgroup in (`--cgroup-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Per-controller v1 hierarchies (`/sys/fs/cgroup/memory`, `…/cpu`, `…/pids`).
    V1,
    /// The unified v2 hierarchy.
    V2,
}

impl CgroupVersion {
    /// v2 when a cgroup2 hierarchy of this host has the memory, cpu and pids controllers;
    /// v1 otherwise (as on hosts whose controllers are all on v1 hierarchies next to an
    /// empty v2 mount).
    pub fn detect() -> CgroupVersion {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let v2 = cgroup_mounts(&mounts, CgroupVersion::V2, "memory")
            .and_then(|mount| std::fs::read_to_string(mount.join("cgroup.controllers")).ok())
            .is_some_and(|controllers| {
                let controllers: Vec<&str> = controllers.split_whitespace().collect();
                ["memory", "cpu", "pids"]
                    .iter()
                    .all(|needed| controllers.contains(needed))
            });
        if v2 {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        }
    }

    fn as_arg(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "1",
            CgroupVersion::V2 => "2",
        }
    }
}

/// Where `controller`'s hierarchy of `version` is mounted, from `/proc/mounts` text (for v2,
/// the unified mount whatever the controller).
fn cgroup_mounts(mounts: &str, version: CgroupVersion, controller: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, kind, options) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let found = match version {
            CgroupVersion::V1 => kind == "cgroup" && options.split(',').any(|o| o == controller),
            CgroupVersion::V2 => kind == "cgroup2",
        };
        found.then(|| PathBuf::from(target))
    })
}

/// How Firecracker's `jailer` confines each session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerConfig {
    /// The `jailer` binary.
    pub jailer: PathBuf,
    /// `--chroot-base-dir`: jails are `<chroot_base>/<exec_name>/<id>/root`. On the same file
    /// system as the state directory, so disks are hard-linked rather than copied.
    pub chroot_base: PathBuf,
    /// The first uid (and gid) handed to sessions.
    pub uid_base: u32,
    /// How many uids from `uid_base` on are for sessions: at most this many jailed sessions
    /// run at once.
    pub uid_count: u32,
    /// `--cgroup-version`.
    pub cgroup_version: CgroupVersion,
    /// `--parent-cgroup`: sessions' cgroups are `<parent>/<id>` in each hierarchy.
    pub parent_cgroup: String,
    /// Memory a session's cgroup allows beyond the guest's own, MiB (the VMM itself).
    pub memory_overhead_mib: u32,
    /// Processes and threads a session's cgroup allows.
    pub pids_max: u32,
    /// `--netns`: a network namespace (a bind-mounted `/proc/<pid>/ns/net`, as `ip netns`
    /// makes) for the jailer to join. `None`: each jail gets a new one of its own, with no
    /// interface but a down `lo`.
    pub netns: Option<PathBuf>,
}

impl JailerConfig {
    /// Defaults for `jailer` with jails under `chroot_base`: uids 900000 to 900999, the
    /// cgroup version this host runs ([`CgroupVersion::detect`]), cgroups under `hpcc`, 128
    /// MiB over guest memory, 256 pids.
    pub fn new(jailer: PathBuf, chroot_base: PathBuf) -> JailerConfig {
        JailerConfig {
            jailer,
            chroot_base,
            uid_base: 900_000,
            uid_count: 1000,
            cgroup_version: CgroupVersion::detect(),
            parent_cgroup: "hpcc".to_owned(),
            memory_overhead_mib: 128,
            pids_max: 256,
            netns: None,
        }
    }
}

/// The uids of a jailer configuration, each leased to one session at a time.
#[derive(Debug)]
struct UidPool {
    base: u32,
    count: u32,
    used: Mutex<std::collections::BTreeSet<u32>>,
}

impl UidPool {
    fn new(base: u32, count: u32) -> Arc<UidPool> {
        Arc::new(UidPool {
            base,
            count,
            used: Mutex::new(std::collections::BTreeSet::new()),
        })
    }

    /// The lowest free uid of the range. (The first gap lies within the leases plus one, so
    /// the search is short whatever the range's size.)
    fn lease(self: &Arc<UidPool>) -> Option<UidLease> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let uid = (0..self.count)
            .filter_map(|offset| self.base.checked_add(offset))
            .find(|uid| !used.contains(uid))?;
        used.insert(uid);
        Some(UidLease {
            uid,
            pool: self.clone(),
        })
    }
}

/// A uid leased to a session, returned to the pool when dropped.
#[derive(Debug)]
struct UidLease {
    uid: u32,
    pool: Arc<UidPool>,
}

impl UidLease {
    /// A lease of no pool's uid, for jails found on disk rather than started.
    fn detached() -> UidLease {
        UidLease {
            uid: 0,
            pool: UidPool::new(0, 0),
        }
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        let mut used = self.pool.used.lock().unwrap_or_else(|p| p.into_inner());
        used.remove(&self.uid);
    }
}

/// The jailer's arguments for session `id` as uid (and gid) `uid`, Firecracker's after `--`.
fn jailer_args(
    jailer: &JailerConfig,
    exec_file: &Path,
    guest: &GuestConfig,
    id: &str,
    uid: u32,
) -> Vec<OsString> {
    let memory_bytes = (u64::from(guest.memory_mib) + u64::from(jailer.memory_overhead_mib)) << 20;
    let cpu_quota = (u64::from(guest.vcpus) + 1) * CPU_PERIOD_US;
    let cgroups = match jailer.cgroup_version {
        CgroupVersion::V1 => vec![
            format!("memory.limit_in_bytes={memory_bytes}"),
            format!("cpu.cfs_period_us={CPU_PERIOD_US}"),
            format!("cpu.cfs_quota_us={cpu_quota}"),
            format!("pids.max={}", jailer.pids_max),
        ],
        CgroupVersion::V2 => vec![
            format!("memory.max={memory_bytes}"),
            format!("cpu.max={cpu_quota} {CPU_PERIOD_US}"),
            format!("pids.max={}", jailer.pids_max),
        ],
    };
    // Room for a snapshot's memory file, the largest file Firecracker writes.
    let file_size = (u64::from(guest.memory_mib) + 64) << 20;
    let mut args: Vec<OsString> = vec![
        "--id".into(),
        id.into(),
        "--exec-file".into(),
        exec_file.into(),
        "--uid".into(),
        uid.to_string().into(),
        "--gid".into(),
        uid.to_string().into(),
        "--chroot-base-dir".into(),
        jailer.chroot_base.clone().into(),
        "--cgroup-version".into(),
        jailer.cgroup_version.as_arg().into(),
        "--parent-cgroup".into(),
        jailer.parent_cgroup.clone().into(),
        "--new-pid-ns".into(),
    ];
    if let Some(netns) = &jailer.netns {
        args.push("--netns".into());
        args.push(netns.clone().into());
    }
    for cgroup in cgroups {
        args.push("--cgroup".into());
        args.push(cgroup.into());
    }
    for limit in ["no-file=2048".to_owned(), format!("fsize={file_size}")] {
        args.push("--resource-limit".into());
        args.push(limit.into());
    }
    args.extend([
        "--".into(),
        "--api-sock".into(),
        format!("/{API_SOCKET}").into(),
    ]);
    args
}

/// The Firecracker microVM runtime.
#[derive(Debug)]
pub struct FirecrackerRuntime {
    config: FirecrackerConfig,
    initramfs: PathBuf,
    disks: disk::RootDisks,
    /// The jailer's setup, when Firecracker runs jailed by its `jailer`.
    jail: Option<JailSetup>,
    /// hpcc's jailer and the binary's absolute path, when Firecracker runs in hpcc's jail.
    own_jail: Option<(vmm_jail::Jailer, PathBuf)>,
    /// See [`Runtime::snapshot_identity`]; `None` if the version could not be read.
    identity: Option<String>,
}

/// What the runtime resolved of its [`JailerConfig`] once.
#[derive(Debug)]
struct JailSetup {
    config: JailerConfig,
    /// `--exec-file`, canonical, so its file name is the jailer's `<exec_name>`.
    exec_file: PathBuf,
    uids: Arc<UidPool>,
}

fn start_error(step: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let step = step.into();
    move |source| RuntimeError::Start {
        runtime: RUNTIME,
        step,
        source,
    }
}

/// `PUT /machine-config` (the spec's `MachineConfiguration`).
#[derive(Debug, Serialize)]
struct MachineConfiguration {
    vcpu_count: u32,
    mem_size_mib: u32,
}

/// `PUT /boot-source` (`BootSource`).
#[derive(Debug, Serialize)]
struct BootSource<'a> {
    kernel_image_path: &'a str,
    initrd_path: &'a str,
    boot_args: &'a str,
}

/// `PUT /drives/{drive_id}` (`Drive`, virtio-block).
#[derive(Debug, Serialize)]
struct Drive<'a> {
    drive_id: &'a str,
    path_on_host: &'a str,
    is_root_device: bool,
    is_read_only: bool,
}

/// `PUT /vsock` (`Vsock`).
#[derive(Debug, Serialize)]
struct Vsock<'a> {
    guest_cid: u32,
    uds_path: &'a str,
}

/// `PUT /actions` (`InstanceActionInfo`).
#[derive(Debug, Serialize)]
struct InstanceActionInfo {
    action_type: &'static str,
}

/// `PATCH /vm` (`Vm`).
#[derive(Debug, Serialize)]
struct Vm {
    state: &'static str,
}

/// `PUT /snapshot/create` (`SnapshotCreateParams`).
#[derive(Debug, Serialize)]
struct SnapshotCreateParams<'a> {
    snapshot_type: &'static str,
    snapshot_path: &'a str,
    mem_file_path: &'a str,
}

/// `PUT /snapshot/load` (`SnapshotLoadParams`, with a `File` `MemoryBackend`).
#[derive(Debug, Serialize)]
struct SnapshotLoadParams<'a> {
    snapshot_path: &'a str,
    mem_backend: MemoryBackend<'a>,
    resume_vm: bool,
    vsock_override: VsockOverride<'a>,
}

/// `MemoryBackend`.
#[derive(Debug, Serialize)]
struct MemoryBackend<'a> {
    backend_type: &'static str,
    backend_path: &'a str,
}

/// `VsockOverride`.
#[derive(Debug, Serialize)]
struct VsockOverride<'a> {
    uds_path: &'a str,
}

/// What a guest is booted from, as the API's requests name it.
#[derive(Debug, Clone, Copy)]
struct Boot<'a> {
    vcpus: u32,
    memory_mib: u32,
    kernel: &'a Path,
    initrd: &'a Path,
    boot_args: &'a str,
    root_disk: &'a Path,
    vsock_socket: &'a Path,
}

/// A path as the API's JSON string: Firecracker's paths are strings, so a path that is not
/// UTF-8 cannot be passed.
fn api_path(path: &Path) -> io::Result<&str> {
    path.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "passing {} to Firecracker: the path is not UTF-8",
                path.display()
            ),
        )
    })
}

fn json(value: impl Serialize) -> io::Result<serde_json::Value> {
    serde_json::to_value(value).map_err(io::Error::other)
}

/// The requests that configure and start a guest, in order: `(path, body)`, all `PUT`.
fn configuration(boot: &Boot<'_>) -> io::Result<Vec<(&'static str, serde_json::Value)>> {
    Ok(vec![
        (
            "/machine-config",
            json(MachineConfiguration {
                vcpu_count: boot.vcpus,
                mem_size_mib: boot.memory_mib,
            })?,
        ),
        (
            "/boot-source",
            json(BootSource {
                kernel_image_path: api_path(boot.kernel)?,
                initrd_path: api_path(boot.initrd)?,
                boot_args: boot.boot_args,
            })?,
        ),
        (
            "/drives/rootfs",
            json(Drive {
                drive_id: "rootfs",
                path_on_host: api_path(boot.root_disk)?,
                is_root_device: false,
                is_read_only: true,
            })?,
        ),
        (
            "/vsock",
            json(Vsock {
                guest_cid: GUEST_CID,
                uds_path: api_path(boot.vsock_socket)?,
            })?,
        ),
        (
            "/actions",
            json(InstanceActionInfo {
                action_type: "InstanceStart",
            })?,
        ),
    ])
}

/// `PUT /snapshot/create`'s body: a full snapshot into `state` and `memory` (Firecracker's
/// paths).
fn snapshot_create(state: &Path, memory: &Path) -> io::Result<serde_json::Value> {
    json(SnapshotCreateParams {
        snapshot_type: "Full",
        snapshot_path: api_path(state)?,
        mem_file_path: api_path(memory)?,
    })
}

/// `PUT /snapshot/load`'s body: resume from `state` and `memory` with vsock on `vsock`.
fn snapshot_load(state: &Path, memory: &Path, vsock: &Path) -> io::Result<serde_json::Value> {
    json(SnapshotLoadParams {
        snapshot_path: api_path(state)?,
        mem_backend: MemoryBackend {
            backend_type: "File",
            backend_path: api_path(memory)?,
        },
        resume_vm: true,
        vsock_override: VsockOverride {
            uds_path: api_path(vsock)?,
        },
    })
}

/// The `fault_message` of an error reply, or the body itself if it has none.
fn fault_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| {
            value
                .get("fault_message")
                .and_then(|message| message.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

/// Sends `method path` with a JSON body to the API socket at `socket`, on a connection of its
/// own: the connection is driven in this future (no task is spawned for it), and Firecracker
/// serves connections one after another anyway. The error names the request.
async fn request(
    socket: &Path,
    method: hyper::Method,
    path: &str,
    body: &serde_json::Value,
) -> io::Result<()> {
    let step = format!("{method} {path}");
    let exchange = async {
        let stream = UnixStream::connect(socket).await?;
        let (mut sender, mut connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(io::Error::other)?;
        let request = hyper::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(io::Error::other)?;
        let reply = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
                .collect()
                .await
                .map_err(io::Error::other)?
                .to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        };
        tokio::select! {
            reply = reply => reply.map_err(io::Error::other),
            closed = &mut connection => Err(match closed {
                Ok(()) => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the API server closed the connection without a reply",
                ),
                Err(error) => io::Error::other(error),
            }),
        }
    };
    let (status, reply) = tokio::time::timeout(API_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{step}: no reply in {} s", API_TIMEOUT.as_secs()),
            )
        })?
        .map_err(|error| io::Error::new(error.kind(), format!("{step}: {error}")))?;
    if status.is_success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{step}: Firecracker refused it ({status}): {}",
        fault_message(&reply)
    )))
}

/// Puts `source` at `target` for a jail whose uid is `uid`: a hard link when the file is
/// readable by others (the jail can read it without owning it, and cannot write it), else a
/// copy owned by `uid`.
fn place(source: &Path, target: &Path, uid: u32) -> io::Result<()> {
    // A link to a symlink would lead out of the jail: link what it names.
    let source = &std::fs::canonicalize(source)?;
    let readable = std::fs::metadata(source)?.mode() & 0o004 != 0;
    if readable && std::fs::hard_link(source, target).is_ok() {
        return Ok(());
    }
    std::fs::copy(source, target)?;
    std::os::unix::fs::chown(target, Some(uid), Some(uid))?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o400))
}

/// BLAKE3 of a file, hex.
fn file_digest(path: &Path) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// The first line `firecracker --version` prints.
fn firecracker_version(firecracker: &Path) -> io::Result<String> {
    let output = std::process::Command::new(firecracker)
        .arg("--version")
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.lines().map(str::trim).find(|line| !line.is_empty()) {
        Some(line) if output.status.success() => Ok(line.to_owned()),
        _ => Err(io::Error::other(format!(
            "`{} --version` failed ({}): {}",
            firecracker.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
    }
}

impl FirecrackerRuntime {
    /// Checks the binaries and the kernel, writes the initramfs, and reads what snapshots
    /// depend on.
    pub fn new(config: FirecrackerConfig) -> Result<FirecrackerRuntime, RuntimeError> {
        let unavailable = |reason: String| RuntimeError::Unavailable {
            runtime: RUNTIME,
            reason,
        };
        let Some(firecracker) = super::qemu::find_program(&config.firecracker) else {
            return Err(unavailable(format!(
                "Firecracker binary {} not found",
                config.firecracker.display()
            )));
        };
        if !config.guest.kernel.is_file() {
            return Err(unavailable(format!(
                "guest kernel {} not found",
                config.guest.kernel.display()
            )));
        }
        let jail = match &config.jailer {
            None => None,
            Some(jailer) => {
                if super::qemu::find_program(&jailer.jailer).is_none() {
                    return Err(unavailable(format!(
                        "jailer binary {} not found",
                        jailer.jailer.display()
                    )));
                }
                if jailer.uid_base == 0 || jailer.uid_count == 0 {
                    return Err(unavailable(
                        "the jail uid range must start above 0 and hold at least one uid".into(),
                    ));
                }
                let exec_file = std::fs::canonicalize(&firecracker)
                    .map_err(|error| unavailable(format!("{}: {error}", firecracker.display())))?;
                std::fs::create_dir_all(&jailer.chroot_base).map_err(|error| {
                    unavailable(format!("{}: {error}", jailer.chroot_base.display()))
                })?;
                sweep_stale_jails(jailer, &exec_file);
                Some(JailSetup {
                    config: jailer.clone(),
                    exec_file,
                    uids: UidPool::new(jailer.uid_base, jailer.uid_count),
                })
            }
        };
        let own_jail = match (&config.jailer, &config.jail) {
            (None, Some(settings)) => {
                let jailer = vmm_jail::Jailer::new(settings.clone(), &config.guest.state_dir)
                    .map_err(&unavailable)?;
                let binary = std::path::absolute(&firecracker)
                    .map_err(|error| unavailable(format!("{}: {error}", firecracker.display())))?;
                Some((jailer, binary))
            }
            (Some(_), Some(_)) => {
                tracing::info!(
                    "firecracker runs under its jailer; [vm.jail] is not applied on top"
                );
                None
            }
            (_, None) => None,
        };
        let identity = firecracker_version(&firecracker)
            .and_then(|version| {
                let kernel = file_digest(&config.guest.kernel)?;
                Ok(format!("{version}; kernel blake3:{kernel}"))
            })
            .map_err(|error| tracing::warn!(%error, "firecracker sessions cannot be snapshotted"))
            .ok();
        let initramfs = initramfs::write(&config.guest, "firecracker").map_err(unavailable)?;
        Ok(FirecrackerRuntime {
            config,
            initramfs,
            disks: disk::RootDisks::default(),
            jail,
            own_jail,
            identity,
        })
    }

    /// The root disk of `spec`'s image.
    async fn root_disk(&self, spec: &SessionSpec) -> Result<PathBuf, RuntimeError> {
        self.disks
            .get(RUNTIME, &self.config.guest.state_dir, spec)
            .await
    }

    /// A new session's directory (or jail), with what its guest boots from in place; not
    /// started yet. Dropping it removes what it made.
    async fn prepare(
        &self,
        spec: &SessionSpec,
        root_disk: &Path,
    ) -> Result<FirecrackerSession, RuntimeError> {
        let id = super::session_id("fc", &spec.tenant);
        if let Some((jailer, _)) = &self.own_jail {
            let guest = &self.config.guest;
            let own_jail = jailer
                .create(&id, &jailer.limits(guest.memory_mib, guest.vcpus))
                .map_err(start_error(format!("creating the jail of {id}")))?;
            let root = own_jail.root().to_owned();
            // On failure `own_jail` is dropped, which removes its directory and cgroup.
            check_socket_paths(&root)?;
            return Ok(FirecrackerSession {
                id,
                api_socket: root.join(API_SOCKET),
                vsock_socket: root.join(VSOCK_SOCKET),
                kernel: PathBuf::from(OWN_JAIL_KERNEL),
                initramfs: PathBuf::from(OWN_JAIL_INITRAMFS),
                root_disk: PathBuf::from(OWN_JAIL_ROOT_DISK),
                binds: vec![
                    (guest.kernel.clone(), PathBuf::from(OWN_JAIL_KERNEL)),
                    (self.initramfs.clone(), PathBuf::from(OWN_JAIL_INITRAMFS)),
                    (root_disk.to_owned(), PathBuf::from(OWN_JAIL_ROOT_DISK)),
                ],
                dir: own_jail.dir().to_owned(),
                process: Mutex::new(None),
                jail: None,
                own_jail: Some(own_jail),
            });
        }
        let Some(jail) = &self.jail else {
            let dir = self.config.guest.state_dir.join("sessions").join(&id);
            check_socket_paths(&dir)?;
            std::fs::create_dir_all(&dir)
                .map_err(start_error(format!("creating {}", dir.display())))?;
            return Ok(FirecrackerSession {
                id,
                api_socket: dir.join(API_SOCKET),
                vsock_socket: dir.join(VSOCK_SOCKET),
                kernel: self.config.guest.kernel.clone(),
                initramfs: self.initramfs.clone(),
                root_disk: root_disk.to_owned(),
                binds: Vec::new(),
                dir,
                process: Mutex::new(None),
                jail: None,
                own_jail: None,
            });
        };
        let exec_name = jail.exec_file.file_name().unwrap_or_default();
        let dir = jail.config.chroot_base.join(exec_name).join(&id);
        let root = dir.join("root");
        check_socket_paths(&root)?;
        let uid = jail.uids.lease().ok_or_else(|| {
            start_error("leasing a jail uid")(io::Error::other(format!(
                "all {} uids from {} are in use",
                jail.config.uid_count, jail.config.uid_base
            )))
        })?;
        let cgroups = session_cgroups(&jail.config, &id).map_err(|error| {
            start_error("finding the cgroup hierarchies")(io::Error::new(
                io::ErrorKind::NotFound,
                error,
            ))
        })?;
        let session = FirecrackerSession {
            id,
            api_socket: root.join(API_SOCKET),
            vsock_socket: root.join(VSOCK_SOCKET),
            kernel: PathBuf::from("/").join(JAIL_KERNEL),
            initramfs: PathBuf::from("/").join(JAIL_INITRAMFS),
            root_disk: PathBuf::from("/").join(JAIL_ROOT_DISK),
            binds: Vec::new(),
            dir,
            process: Mutex::new(None),
            jail: Some(Jail {
                root: root.clone(),
                uid,
                cgroups,
            }),
            own_jail: None,
        };
        let uid = session.jail.as_ref().map_or(0, |jail| jail.uid.uid);
        let files = [
            (self.config.guest.kernel.clone(), root.join(JAIL_KERNEL)),
            (self.initramfs.clone(), root.join(JAIL_INITRAMFS)),
            (root_disk.to_owned(), root.join(JAIL_ROOT_DISK)),
        ];
        let placed = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&root)?;
            for (source, target) in &files {
                place(source, target, uid).map_err(|error| {
                    io::Error::new(
                        error.kind(),
                        format!("{} -> {}: {error}", source.display(), target.display()),
                    )
                })?;
            }
            Ok::<_, io::Error>(())
        })
        .await
        .unwrap_or_else(|error| Err(io::Error::other(error)));
        // On failure `session` is dropped, which removes the jail directory.
        placed.map_err(start_error("putting the guest's files into the jail"))?;
        Ok(session)
    }

    /// Starts Firecracker (directly, in hpcc's jail, or under its jailer) for `session` and
    /// waits for its API socket.
    async fn launch(&self, session: &mut FirecrackerSession) -> Result<(), RuntimeError> {
        let dir = session.dir.clone();
        let stdout = log_file(&dir.join("console.log"))?;
        let stderr = log_file(&dir.join("firecracker.log"))?;
        let child = match &self.jail {
            None => {
                let binary = match &self.own_jail {
                    Some((_, binary)) => binary.clone(),
                    None => self.config.firecracker.clone(),
                };
                let api_socket = session.inside(&session.api_socket);
                vmm_jail::spawn(
                    session.own_jail.as_ref(),
                    &JailedProgram {
                        binary: &binary,
                        files: &session.binds,
                        kvm: true,
                        profile: Profile::Firecracker,
                    },
                    |command| {
                        command
                            .arg("--api-sock")
                            .arg(&api_socket)
                            .arg("--id")
                            .arg(&session.id)
                            .stdin(Stdio::null())
                            .stdout(stdout)
                            .stderr(stderr);
                    },
                )
                .map_err(start_error("starting Firecracker"))?
            }
            Some(jail) => {
                let uid = session.jail.as_ref().map_or(0, |jail| jail.uid.uid);
                let mut command = Command::new(&jail.config.jailer);
                command.args(jailer_args(
                    &jail.config,
                    &jail.exec_file,
                    &self.config.guest,
                    &session.id,
                    uid,
                ));
                crate::sys::set_jailer_pre_exec(&mut command);
                let child = command
                    .stdin(Stdio::null())
                    .stdout(stdout)
                    .stderr(stderr)
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(start_error("starting the jailer"))?;
                Spawned::from_child(child)
            }
        };
        *session.process.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let deadline = Instant::now() + self.config.guest.boot_timeout;
        while !session.api_socket.exists() {
            session.exited("waiting for Firecracker's API socket")?;
            if Instant::now() > deadline {
                return Err(start_error("waiting for Firecracker's API socket")(
                    io::Error::other(super::tail(&dir.join("firecracker.log"), 2000)),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Configures and starts the guest of a launched `session`.
    async fn boot(
        &self,
        spec: &SessionSpec,
        session: &FirecrackerSession,
    ) -> Result<(), RuntimeError> {
        let boot_args = super::kernel_command_line(
            spec,
            GUEST_HOSTNAME,
            &format!("{FIRECRACKER_KERNEL_ARGS} {}", self.config.boot_args_extra),
        );
        let guest = &self.config.guest;
        let vsock = session.inside(&session.vsock_socket);
        let requests = configuration(&Boot {
            vcpus: guest.vcpus,
            memory_mib: guest.memory_mib,
            kernel: &session.kernel,
            initrd: &session.initramfs,
            boot_args: &boot_args,
            root_disk: &session.root_disk,
            vsock_socket: &vsock,
        })
        .map_err(start_error("encoding the configuration"))?;
        for (path, body) in &requests {
            request(&session.api_socket, hyper::Method::PUT, path, body)
                .await
                .map_err(start_error(format!("PUT {path}")))?;
        }
        Ok(())
    }

    /// Waits until the guest's agent answers (after a boot or a restore).
    async fn await_agent(&self, session: &FirecrackerSession) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + self.config.guest.boot_timeout;
        loop {
            session.exited("booting the guest")?;
            // A probe that the VMM accepts but never answers (the guest's vsock not up yet)
            // must not outlast the deadline.
            let probe = tokio::time::timeout(
                PROBE_TIMEOUT,
                hybrid::connect(&session.vsock_socket, AGENT_PORT),
            )
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer to CONNECT in {} s", PROBE_TIMEOUT.as_secs()),
                ))
            });
            match probe {
                Ok(_probe) => return Ok(()),
                Err(error) if Instant::now() > deadline => {
                    return Err(start_error(format!(
                        "waiting {} s for the guest's agent",
                        self.config.guest.boot_timeout.as_secs()
                    ))(io::Error::other(format!(
                        "{error}; console: {}; firecracker.log: {}",
                        super::tail(&session.dir.join("console.log"), 2000),
                        super::tail(&session.dir.join("firecracker.log"), 2000)
                    ))));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Hands out a started session, or tears it down (processes, cgroups, directory) and
    /// returns the error of the step that failed.
    async fn finish(
        &self,
        mut session: FirecrackerSession,
        outcome: Result<(), RuntimeError>,
    ) -> Result<Box<dyn Session>, RuntimeError> {
        match outcome {
            Ok(()) => Ok(Box::new(session)),
            Err(error) => {
                if let Err(cleanup) = session.teardown().await {
                    tracing::warn!(session = %session.id, %cleanup, "cleaning up a failed start");
                }
                Err(error)
            }
        }
    }

    /// Loads the snapshot in `dir` into a launched `session`. In a jail, the snapshot's files
    /// are linked in and owned by the jail's uid only while Firecracker loads them.
    async fn load(&self, session: &FirecrackerSession, dir: &Path) -> Result<(), RuntimeError> {
        let sources = [dir.join(SNAPSHOT_STATE), dir.join(SNAPSHOT_MEMORY)];
        for source in &sources {
            if !source.is_file() {
                return Err(start_error(format!(
                    "reading the snapshot {}",
                    source.display()
                ))(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such file",
                )));
            }
        }
        let vsock = session.inside(&session.vsock_socket);
        let Some((root, uid)) = session.jail_root_and_uid() else {
            let body = snapshot_load(&sources[0], &sources[1], &vsock)
                .map_err(start_error("encoding the snapshot load"))?;
            return request(
                &session.api_socket,
                hyper::Method::PUT,
                "/snapshot/load",
                &body,
            )
            .await
            .map_err(start_error("PUT /snapshot/load"));
        };
        let linked = [root.join(SNAPSHOT_STATE), root.join(SNAPSHOT_MEMORY)];
        let result = async {
            for (source, target) in sources.iter().zip(&linked) {
                // A copy when the snapshot is on another file system than the jail.
                std::fs::hard_link(source, target)
                    .or_else(|_| std::fs::copy(source, target).map(|_| ()))
                    .map_err(|error| {
                        io::Error::new(
                            error.kind(),
                            format!("putting {} into the jail: {error}", source.display()),
                        )
                    })?;
                std::os::unix::fs::chown(target, Some(uid), Some(uid))?;
            }
            let body = snapshot_load(
                &session.inside(&linked[0]),
                &session.inside(&linked[1]),
                &vsock,
            )?;
            request(
                &session.api_socket,
                hyper::Method::PUT,
                "/snapshot/load",
                &body,
            )
            .await
        }
        .await;
        // Firecracker has read the state and mapped the memory (privately) by now, or failed:
        // the files go back to root either way.
        for (source, target) in sources.iter().zip(&linked) {
            let _ = std::fs::remove_file(target);
            let _ = std::os::unix::fs::chown(source, Some(0), Some(0));
        }
        result.map_err(start_error("PUT /snapshot/load"))
    }
}

/// The cgroup directories of session `id`, one per hierarchy its jail is created in.
fn session_cgroups(jailer: &JailerConfig, id: &str) -> Result<Vec<PathBuf>, String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let controllers: &[&str] = match jailer.cgroup_version {
        CgroupVersion::V1 => &["memory", "cpu", "pids"],
        CgroupVersion::V2 => &["memory"],
    };
    let mut cgroups = Vec::new();
    for controller in controllers {
        let mount = cgroup_mounts(&mounts, jailer.cgroup_version, controller)
            .ok_or_else(|| format!("no {controller} cgroup hierarchy is mounted"))?;
        let cgroup = mount.join(&jailer.parent_cgroup).join(id);
        if !cgroups.contains(&cgroup) {
            cgroups.push(cgroup);
        }
    }
    Ok(cgroups)
}

/// Removes the jails (directories and cgroups) of sessions whose worker is gone: a worker
/// killed outright takes its jails' processes with it (see `sys::set_jailer_pre_exec`) but
/// cannot remove what they leave on disk. A session id names its worker's pid
/// (`fc-<tenant>-<pid>-<n>`).
fn sweep_stale_jails(jailer: &JailerConfig, exec_file: &Path) {
    let dir = jailer
        .chroot_base
        .join(exec_file.file_name().unwrap_or_default());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let worker = name
            .strip_prefix("fc-")
            .and_then(|rest| rest.rsplit('-').nth(1))
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(worker) = worker else { continue };
        if Path::new(&format!("/proc/{worker}")).exists() {
            continue;
        }
        let jail = Jail {
            root: entry.path().join("root"),
            uid: UidLease::detached(),
            cgroups: session_cgroups(jailer, &name).unwrap_or_default(),
        };
        for pid in jail.pids() {
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !jail.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for cgroup in &jail.cgroups {
            let _ = std::fs::remove_dir(cgroup);
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => tracing::info!(jail = %name, "removed the jail of a worker that is gone"),
            Err(error) => tracing::warn!(jail = %name, %error, "removing a stale jail"),
        }
    }
}

/// Fails unless the API and vsock sockets under `dir` fit a Unix socket path.
fn check_socket_paths(dir: &Path) -> Result<(), RuntimeError> {
    for socket in [API_SOCKET, VSOCK_SOCKET] {
        let path = dir.join(socket);
        if path.as_os_str().len() > 107 {
            return Err(start_error(format!("socket path {}", path.display()))(
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "longer than a Unix socket path may be",
                ),
            ));
        }
    }
    Ok(())
}

fn log_file(path: &Path) -> Result<std::fs::File, RuntimeError> {
    std::fs::File::create(path).map_err(start_error(format!("creating {}", path.display())))
}

#[async_trait]
impl Runtime for FirecrackerRuntime {
    fn name(&self) -> &'static str {
        RUNTIME
    }

    async fn start(&self, spec: &SessionSpec) -> Result<Box<dyn Session>, RuntimeError> {
        let root_disk = self.root_disk(spec).await?;
        let mut session = self.prepare(spec, &root_disk).await?;
        let outcome = async {
            self.launch(&mut session).await?;
            self.boot(spec, &session).await?;
            self.await_agent(&session).await
        }
        .await;
        if outcome.is_ok() {
            tracing::info!(session = %session.id, image = %spec.image_digest, jailed = session.jail.is_some(), "firecracker guest up");
        }
        self.finish(session, outcome).await
    }

    fn session_memory(&self) -> u64 {
        let overhead = self
            .jail
            .as_ref()
            .map_or(64, |jail| jail.config.memory_overhead_mib);
        (u64::from(self.config.guest.memory_mib) + u64::from(overhead)) << 20
    }

    fn snapshot_identity(&self) -> Option<String> {
        self.identity.clone()
    }

    async fn restore(
        &self,
        spec: &SessionSpec,
        dir: &Path,
    ) -> Result<Box<dyn Session>, RuntimeError> {
        if self.identity.is_none() {
            return Err(RuntimeError::Unavailable {
                runtime: RUNTIME,
                reason: "the Firecracker version could not be read, so snapshots are off".into(),
            });
        }
        let root_disk = self.root_disk(spec).await?;
        let mut session = self.prepare(spec, &root_disk).await?;
        let outcome = async {
            self.launch(&mut session).await?;
            self.load(&session, dir).await?;
            self.await_agent(&session).await
        }
        .await;
        if outcome.is_ok() {
            tracing::info!(session = %session.id, image = %spec.image_digest, "firecracker guest restored");
        }
        self.finish(session, outcome).await
    }
}

/// A session's jail.
#[derive(Debug)]
struct Jail {
    /// The jail's `/` on the host.
    root: PathBuf,
    uid: UidLease,
    /// The session's cgroup directories, one per hierarchy.
    cgroups: Vec<PathBuf>,
}

impl Jail {
    /// The processes in the jail's cgroup (host pids).
    fn pids(&self) -> Vec<u32> {
        self.cgroups
            .first()
            .and_then(|cgroup| std::fs::read_to_string(cgroup.join("cgroup.procs")).ok())
            .map(|text| {
                text.lines()
                    .filter_map(|line| line.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A running guest.
#[derive(Debug)]
struct FirecrackerSession {
    id: String,
    /// Removed at stop: the session directory, or the whole jail (`<base>/<exec>/<id>`).
    dir: PathBuf,
    /// The API and vsock sockets, host paths.
    api_socket: PathBuf,
    vsock_socket: PathBuf,
    /// What the guest boots from, as Firecracker names them.
    kernel: PathBuf,
    initramfs: PathBuf,
    root_disk: PathBuf,
    /// In hpcc's jail: the files bound into it, `(host path, path inside)`.
    binds: Vec<(PathBuf, PathBuf)>,
    /// Firecracker (in hpcc's jail: the intermediate process waiting for it), or under the
    /// jailer the worker's end of the jail's process tree.
    process: Mutex<Option<Spawned>>,
    /// Firecracker's jailer's jail.
    jail: Option<Jail>,
    /// hpcc's jail.
    own_jail: Option<vmm_jail::Jail>,
}

impl FirecrackerSession {
    /// The jail's root on the host and the jail's uid, in either kind of jail.
    fn jail_root_and_uid(&self) -> Option<(&Path, u32)> {
        match (&self.jail, &self.own_jail) {
            (Some(jail), _) => Some((&jail.root, jail.uid.uid)),
            (None, Some(own_jail)) => Some((own_jail.root(), own_jail.uid())),
            (None, None) => None,
        }
    }

    /// `host` (a path under the session) as Firecracker sees it: beneath the jail's `/`.
    fn inside(&self, host: &Path) -> PathBuf {
        match self.jail_root_and_uid() {
            Some((root, _)) => host.strip_prefix(root).map_or_else(
                |_| host.to_owned(),
                |relative| Path::new("/").join(relative),
            ),
            None => host.to_owned(),
        }
    }

    /// Fails the start at `step` if the process has exited, with its logs.
    fn exited(&self, step: &str) -> Result<(), RuntimeError> {
        if self.is_alive() {
            return Ok(());
        }
        Err(start_error(step.to_owned())(io::Error::other(format!(
            "Firecracker exited; {}; console: {}",
            super::tail(&self.dir.join("firecracker.log"), 1000),
            super::tail(&self.dir.join("console.log"), 2000)
        ))))
    }

    /// Kills the session's processes and removes its cgroups and directory.
    async fn teardown(&mut self) -> io::Result<()> {
        let child = self
            .process
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(jail) = &self.jail {
            for pid in jail.pids() {
                if let Some(pid) = i32::try_from(pid)
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        if let Some(mut child) = child {
            child.kill();
            child.wait().await;
        }
        let mut result = Ok(());
        if let Some(own_jail) = self.own_jail.take() {
            // Its cgroup, directory (which is `dir`) and uid.
            result = tokio::task::spawn_blocking(move || own_jail.remove())
                .await
                .unwrap_or_else(|error| Err(io::Error::other(error)));
        }
        if let Some(jail) = &self.jail {
            // The jail's processes die with its init, a moment after; a cgroup with
            // processes cannot be removed.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !jail.pids().is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for cgroup in &jail.cgroups {
                match std::fs::remove_dir(cgroup) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => {
                        result = Err(io::Error::new(
                            error.kind(),
                            format!("removing the cgroup {}: {error}", cgroup.display()),
                        ))
                    }
                }
            }
        }
        let dir = self.dir.clone();
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.map_err(|error| {
                io::Error::new(error.kind(), format!("removing {}: {error}", dir.display()))
            }),
        })
        .await
        .unwrap_or_else(|error| Err(io::Error::other(error)));
        result.and(removed)
    }

    /// Pauses the guest and has Firecracker write a full snapshot into `dir` (through the
    /// jail, when jailed).
    async fn save(&self, dir: &Path) -> io::Result<()> {
        let (state, memory) = match self.jail_root_and_uid() {
            Some((root, _)) => (root.join(SNAPSHOT_STATE), root.join(SNAPSHOT_MEMORY)),
            None => (dir.join(SNAPSHOT_STATE), dir.join(SNAPSHOT_MEMORY)),
        };
        let paused = json(Vm { state: "Paused" })?;
        request(&self.api_socket, hyper::Method::PATCH, "/vm", &paused).await?;
        let body = snapshot_create(&self.inside(&state), &self.inside(&memory))?;
        request(
            &self.api_socket,
            hyper::Method::PUT,
            "/snapshot/create",
            &body,
        )
        .await?;
        for (written, name) in [(state, SNAPSHOT_STATE), (memory, SNAPSHOT_MEMORY)] {
            let target = dir.join(name);
            if written != target && std::fs::rename(&written, &target).is_err() {
                std::fs::copy(&written, &target)?;
                std::fs::remove_file(&written)?;
            }
            std::os::unix::fs::chown(&target, Some(0), Some(0))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Session for FirecrackerSession {
    fn id(&self) -> &str {
        &self.id
    }

    async fn connect(&self) -> Result<Box<dyn AgentStream>, RuntimeError> {
        session::agent_stream(
            &self.id,
            hybrid::connect(&self.vsock_socket, AGENT_PORT).await,
        )
    }

    fn is_alive(&self) -> bool {
        session::alive(&self.process)
    }

    fn host_pids(&self) -> Vec<u32> {
        match &self.jail {
            Some(jail) => jail.pids(),
            None => self
                .process
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .and_then(Spawned::pid)
                .into_iter()
                .collect(),
        }
    }

    async fn stop(mut self: Box<Self>) -> Result<(), RuntimeError> {
        let stopped = self.teardown().await;
        stopped.map_err(session::io_error(&self.id))
    }

    async fn snapshot(self: Box<Self>, dir: &Path) -> Result<(), RuntimeError> {
        let saved = self.save(dir).await;
        let id = self.id.clone();
        self.stop().await?;
        saved.map_err(session::io_error(&id))
    }
}

impl Drop for FirecrackerSession {
    fn drop(&mut self) {
        // The process is killed by `kill_on_drop` (and a jail's with it, by their parent-death
        // signals); the directory goes too if `stop` did not run. A jail's cgroups can only be
        // removed once its processes are gone, which `teardown` waits for and this cannot
        // (hpcc's jail, dropped after this, tries for a moment).
        if let Some(spawned) = self
            .process
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            spawned.kill();
        }
        if let Some(jail) = &self.jail {
            for pid in jail.pids() {
                if let Some(pid) = i32::try_from(pid)
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            for cgroup in &jail.cgroups {
                let _ = std::fs::remove_dir(cgroup);
            }
        }
        if self.dir.exists() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for FirecrackerRuntime {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.initramfs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The requests carry exactly the spec's field names and types, in the order Firecracker
    /// needs them, and no network interface.
    #[test]
    fn requests_follow_the_spec() {
        let boot = Boot {
            vcpus: 2,
            memory_mib: 512,
            kernel: Path::new("/k/vmlinux"),
            initrd: Path::new("/s/initramfs.cpio"),
            boot_args: "console=ttyS0",
            root_disk: Path::new("/s/disks/ab.ext4"),
            vsock_socket: Path::new("/s/sessions/x/vsock.sock"),
        };
        let requests = configuration(&boot).expect("UTF-8 paths encode");
        let expected = vec![
            (
                "/machine-config",
                json!({"vcpu_count": 2, "mem_size_mib": 512}),
            ),
            (
                "/boot-source",
                json!({
                    "kernel_image_path": "/k/vmlinux",
                    "initrd_path": "/s/initramfs.cpio",
                    "boot_args": "console=ttyS0",
                }),
            ),
            (
                "/drives/rootfs",
                json!({
                    "drive_id": "rootfs",
                    "path_on_host": "/s/disks/ab.ext4",
                    "is_root_device": false,
                    "is_read_only": true,
                }),
            ),
            (
                "/vsock",
                json!({"guest_cid": 3, "uds_path": "/s/sessions/x/vsock.sock"}),
            ),
            ("/actions", json!({"action_type": "InstanceStart"})),
        ];
        assert_eq!(requests, expected);
        assert!(!requests
            .iter()
            .any(|(path, _)| path.starts_with("/network-interfaces")));
    }

    #[test]
    fn a_path_that_is_not_utf8_is_refused() {
        use std::os::unix::ffi::OsStrExt;
        let kernel = Path::new(std::ffi::OsStr::from_bytes(b"/k/\xff"));
        let boot = Boot {
            vcpus: 1,
            memory_mib: 128,
            kernel,
            initrd: Path::new("/i"),
            boot_args: "",
            root_disk: Path::new("/d"),
            vsock_socket: Path::new("/v"),
        };
        let error = configuration(&boot).expect_err("a non-UTF-8 path cannot be sent");
        assert!(error.to_string().contains("passing /k/"), "{error}");
    }

    #[test]
    fn fault_messages_are_extracted() {
        fn check(body: &[u8], expected: &str) {
            assert_eq!(fault_message(body), expected);
        }
        check(br#"{"fault_message": "bad kernel"}"#, "bad kernel");
        check(b"not json\n", "not json");
        check(br#"{"other": 1}"#, r#"{"other": 1}"#);
    }

    fn jailer(version: CgroupVersion) -> JailerConfig {
        JailerConfig {
            jailer: PathBuf::from("/usr/bin/jailer"),
            chroot_base: PathBuf::from("/srv/hpcc-jail"),
            uid_base: 900_000,
            uid_count: 2,
            cgroup_version: version,
            parent_cgroup: "hpcc".into(),
            memory_overhead_mib: 128,
            pids_max: 64,
            netns: None,
        }
    }

    fn guest() -> GuestConfig {
        let mut guest = GuestConfig::new("/k".into(), Vec::new(), "/a".into());
        guest.vcpus = 2;
        guest.memory_mib = 512;
        guest
    }

    fn words(args: &[OsString]) -> String {
        args.iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The jailer gets its documented arguments, the limits as `--cgroup` files of the
    /// chosen hierarchy version, and Firecracker's own after `--`, with a jail-relative API
    /// socket.
    #[test]
    fn jailer_arguments_follow_its_documentation() {
        let exec = Path::new("/usr/bin/firecracker");
        let v1 = words(&jailer_args(
            &jailer(CgroupVersion::V1),
            exec,
            &guest(),
            "fc-a-1-0",
            900_001,
        ));
        assert_eq!(
            v1,
            "--id fc-a-1-0 --exec-file /usr/bin/firecracker --uid 900001 --gid 900001 \
             --chroot-base-dir /srv/hpcc-jail --cgroup-version 1 --parent-cgroup hpcc --new-pid-ns \
             --cgroup memory.limit_in_bytes=671088640 --cgroup cpu.cfs_period_us=100000 \
             --cgroup cpu.cfs_quota_us=300000 --cgroup pids.max=64 \
             --resource-limit no-file=2048 --resource-limit fsize=603979776 \
             -- --api-sock /api.sock"
        );
        let v2 = jailer_args(
            &jailer(CgroupVersion::V2),
            exec,
            &guest(),
            "fc-a-1-0",
            900_001,
        );
        let v2_words = words(&v2);
        assert!(v2_words.contains("--cgroup-version 2"), "{v2_words}");
        assert!(
            v2_words.contains(
                "--cgroup memory.max=671088640 --cgroup cpu.max=300000 100000 --cgroup pids.max=64"
            ),
            "{v2_words}"
        );
        // `cpu.max`'s value holds a space: it stays one argument.
        assert!(v2.contains(&OsString::from("cpu.max=300000 100000")));
        assert!(!v2_words.contains("--daemonize") && !v2_words.contains("--netns"));
        let mut joined = jailer(CgroupVersion::V1);
        joined.netns = Some(PathBuf::from("/var/run/netns/none"));
        let joined = words(&jailer_args(&joined, exec, &guest(), "fc-a-1-0", 900_001));
        assert!(
            joined.contains("--new-pid-ns --netns /var/run/netns/none --cgroup"),
            "{joined}"
        );
    }

    #[test]
    fn cgroup_hierarchies_are_found_in_proc_mounts() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        let find = |version, controller| cgroup_mounts(mounts, version, controller);
        assert_eq!(
            find(CgroupVersion::V1, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            find(CgroupVersion::V1, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(find(CgroupVersion::V1, "pids"), None);
        assert_eq!(
            find(CgroupVersion::V2, "pids"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    /// Uids are leased from the range, never twice at once, and come back when dropped.
    #[test]
    fn jail_uids_are_leased_from_the_range() {
        let pool = UidPool::new(900_000, 2);
        let first = pool.lease().expect("a free uid");
        let second = pool.lease().expect("another free uid");
        assert_eq!((first.uid, second.uid), (900_000, 900_001));
        assert!(pool.lease().is_none(), "the range is exhausted");
        drop(first);
        assert_eq!(pool.lease().map(|lease| lease.uid), Some(900_000));
        // A range as large as uids go costs nothing until it is used.
        let huge = UidPool::new(1, u32::MAX - 1);
        let leases: Vec<UidLease> = (0..3).filter_map(|_| huge.lease()).collect();
        assert_eq!(leases.iter().map(|l| l.uid).collect::<Vec<_>>(), [1, 2, 3]);
    }

    /// The snapshot requests carry the spec's fields: a full snapshot, and a load with a
    /// `File` memory backend, resumed, with the session's own vsock socket.
    #[test]
    fn snapshot_requests_follow_the_spec() {
        let create = snapshot_create(Path::new("/vmstate"), Path::new("/memory")).expect("UTF-8");
        assert_eq!(
            create,
            json!({"snapshot_type": "Full", "snapshot_path": "/vmstate", "mem_file_path": "/memory"})
        );
        let load = snapshot_load(
            Path::new("/vmstate"),
            Path::new("/memory"),
            Path::new("/vsock.sock"),
        )
        .expect("UTF-8");
        assert_eq!(
            load,
            json!({
                "snapshot_path": "/vmstate",
                "mem_backend": {"backend_type": "File", "backend_path": "/memory"},
                "resume_vm": true,
                "vsock_override": {"uds_path": "/vsock.sock"},
            })
        );
        assert_eq!(
            json(Vm { state: "Paused" }).expect("encodes"),
            json!({"state": "Paused"})
        );
    }
}
