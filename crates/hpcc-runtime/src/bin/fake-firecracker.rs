//! `fake-firecracker`: a test double of the Firecracker binary, for the `firecracker` runtime's
//! integration tests on hosts without Firecracker (or without a usable KVM).
//!
//! `fake-firecracker --api-sock PATH --id ID` serves Firecracker's API on the Unix socket
//! `PATH` over HTTP/1.1 and checks requests against Firecracker's API specification: the
//! resources the runtime uses (`/machine-config`, `/boot-source`, `/drives/{id}`, `/vsock`,
//! `/actions`, `PATCH /vm`, `PUT /snapshot/create`, `PUT /snapshot/load`, `GET /`,
//! `GET /version`) with their required fields, types and bounds, and no unknown fields
//! (Firecracker rejects those too). Anything else is `400` with `{"fault_message": ...}`, as is
//! configuration after the start, a second `InstanceStart`, and a request in the wrong VM
//! state. It also takes the arguments the jailer adds (`--start-time-us`,
//! `--start-time-cpu-us`, `--parent-cpu-time-us`), and `--version` prints
//! `Firecracker v<version>-fake`.
//!
//! On `InstanceStart` it boots the configured guest with QEMU's `microvm` machine, through the
//! same command line as the `qemu` runtime (`hpcc_runtime::vm::qemu::microvm_command`), and
//! `vhost-device-vsock` whose `--uds-path` is the `uds_path` of `PUT /vsock`: the host side sees
//! Firecracker's hybrid vsock exactly. The guest's serial console goes to standard output, as
//! with Firecracker. Deviations from Firecracker: `InstanceStart` also needs a vsock device
//! and exactly one drive (a guest without them is of no use to the runtime), and only
//! virtio-block drives with `path_on_host` are accepted.
//!
//! **VM state and snapshots.** `PATCH /vm` is accepted once the guest runs: `Paused` stops
//! QEMU and the vsock backend (`SIGSTOP`), `Resumed` lets them go on (`SIGCONT`).
//! `PUT /snapshot/create` is accepted only while paused (and `Diff` only with
//! `track_dirty_pages`); `PUT /snapshot/load` only in a fresh process, before any resource is
//! configured, with exactly one of `mem_file_path` and `mem_backend` (`File` only: no
//! userfaultfd here), no network override (no snapshot has an interface), and an optional
//! `vsock_override`; after a load, configuration is refused as after a start, and the guest
//! runs or stays paused as `resume_vm` says. **Limitation:** the double does not save or
//! restore guest state. Its state file records the configuration the guest was booted with
//! (format `fake-firecracker-snapshot-1`), and its memory file is a sparse file of the guest's
//! memory size that holds no guest memory; a load checks both (the memory file's size against
//! the recorded guest) and every file the recorded guest uses, and then *boots* that
//! configuration afresh. QEMU could migrate a guest to a file, but not one with a
//! `vhost-user-vsock` device: QEMU 7.2 refuses `migrate` with "State blocked by
//! non-migratable device '…/vhost-user-vsock'" (and `vhost-device-vsock` lacks the
//! `LOG_SHMFD` protocol feature migration needs). So the runtime's side of a snapshot (the
//! requests, their order and states, the files, a fresh process, dialling the agent again) is
//! tested against this double; that a restored guest resumes where it was is not.
//!
//! **Under `fake-jailer`** (`FAKE_JAILER_ROOT` set, to the current directory), every absolute
//! path it is given, `--api-sock` and the API's paths alike, is taken as the jail's: resolved
//! beneath the current directory, never with `..`, and handed to QEMU and
//! `vhost-device-vsock` as a relative path, which these (dynamically linked, outside the jail)
//! programs then open from the jail's directory. See `fake-jailer.rs` for what that double
//! does and does not do.
//!
//! Environment: `FAKE_FIRECRACKER_QEMU` and `FAKE_FIRECRACKER_VHOST` name `qemu-system-x86_64`
//! and `vhost-device-vsock` (default: found on `PATH`); guests run under TCG, since the point
//! is to run anywhere. `FAKE_FIRECRACKER_REJECT="<path> <message>"` makes every `PUT <path>`
//! fail with `400` and that `fault_message`, for testing how errors reach the runtime's caller.
//!
//! **Vsock gate.** `vhost-device-vsock` 0.3 stops for good when a host connection arrives
//! after the guest's driver has given it guest memory but before its queues are ready (its
//! event handler returns `QueueNotReady` and vhost-user-backend ends the event thread); every
//! later `CONNECT` is then accepted by the kernel and never answered. The runtime dials the
//! agent in a loop from the moment the VM starts, as it must with Firecracker, and so hit that
//! window now and then (one start in a CI run; with the loop's pause cut from 50 ms to 0.2 ms,
//! three boots in eight). So the backend binds a hidden `<uds_path>.pending`, the double copies the
//! guest's console to its standard output, and renames the socket to `uds_path` once the
//! console shows the agent listening: until then a dial finds no socket and retries, as it
//! would with a Firecracker whose guest is not yet up.
//!
//! It logs every request to standard error and exits when QEMU exits or on SIGTERM/SIGINT.
//! Its children get `SIGKILL` as their parent-death signal, so they end with it even when it
//! is killed with `SIGKILL` itself (as the runtime's `stop` does): like the real Firecracker,
//! killing the one process ends the whole VM.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use hpcc_runtime::vm::qemu::{microvm_command, Accel, AgentDevice, MicrovmGuest, Serial};

/// Firecracker's own cap on an API request body.
const MAX_BODY_BYTES: usize = 51_200;

/// The spec's `MachineConfiguration` (the fields a guest launch uses, plus the optional ones
/// that are accepted and ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineConfiguration {
    vcpu_count: u32,
    mem_size_mib: u32,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted as the spec allows; the double has no use for it"
    )]
    smt: Option<bool>,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted as the spec allows; the double has no use for it"
    )]
    track_dirty_pages: Option<bool>,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted as the spec allows; the double has no use for it"
    )]
    huge_pages: Option<String>,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted as the spec allows; the double has no use for it"
    )]
    cpu_template: Option<String>,
}

/// The spec's `BootSource`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootSource {
    kernel_image_path: PathBuf,
    #[serde(default)]
    initrd_path: Option<PathBuf>,
    #[serde(default)]
    boot_args: Option<String>,
}

/// The spec's `Drive` (virtio-block only).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Drive {
    drive_id: String,
    is_root_device: bool,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted as the spec allows; the double has no use for it"
    )]
    partuuid: Option<String>,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted as the spec allows; the double has no use for it"
    )]
    cache_type: Option<String>,
    #[serde(default)]
    is_read_only: Option<bool>,
    #[serde(default)]
    path_on_host: Option<PathBuf>,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted as the spec allows; the double has no use for it"
    )]
    rate_limiter: Option<serde_json::Value>,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted as the spec allows; the double has no use for it"
    )]
    io_engine: Option<String>,
    #[serde(default)]
    socket: Option<PathBuf>,
}

/// The spec's `Vsock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vsock {
    guest_cid: u32,
    uds_path: PathBuf,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted as the spec allows; the double has no use for it"
    )]
    vsock_id: Option<String>,
}

/// The spec's `InstanceActionInfo`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceActionInfo {
    action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum ActionType {
    FlushMetrics,
    InstanceStart,
    SendCtrlAltDel,
}

/// The spec's `Vm` (`PATCH /vm`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vm {
    state: VmStateRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum VmStateRequest {
    Paused,
    Resumed,
}

/// The spec's `SnapshotCreateParams`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotCreateParams {
    mem_file_path: PathBuf,
    snapshot_path: PathBuf,
    #[serde(default)]
    snapshot_type: Option<SnapshotType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum SnapshotType {
    Full,
    Diff,
}

/// The spec's `SnapshotLoadParams`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotLoadParams {
    snapshot_path: PathBuf,
    #[serde(default)]
    mem_file_path: Option<PathBuf>,
    #[serde(default)]
    mem_backend: Option<MemoryBackend>,
    #[serde(default)]
    resume_vm: Option<bool>,
    #[serde(default)]
    enable_diff_snapshots: Option<bool>,
    #[serde(default)]
    track_dirty_pages: Option<bool>,
    #[serde(default)]
    network_overrides: Option<Vec<NetworkOverride>>,
    #[serde(default)]
    vsock_override: Option<VsockOverride>,
    #[serde(default)]
    clock_realtime: Option<bool>,
    #[serde(default)]
    huge_pages: Option<HugePages>,
}

/// The spec's `MemoryBackend`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryBackend {
    backend_type: BackendType,
    backend_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum BackendType {
    File,
    Uffd,
}

/// The spec's `NetworkOverride`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkOverride {
    iface_id: String,
    #[allow(
        dead_code,
        reason = "accepted as the spec allows; a snapshot of this double has no interface"
    )]
    host_dev_name: String,
}

/// The spec's `VsockOverride`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct VsockOverride {
    uds_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum HugePages {
    Snapshot,
    None,
    Transparent,
    #[serde(rename = "2M")]
    TwoM,
}

/// What this double writes as a snapshot's state file: the configuration the guest was
/// booted with (not its memory or device state; see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotState {
    format: String,
    machine: MachineConfiguration,
    boot_source: BootSource,
    drives: BTreeMap<String, Drive>,
    vsock: Vsock,
}

/// The `format` of [`SnapshotState`].
const SNAPSHOT_FORMAT: &str = "fake-firecracker-snapshot-1";

/// The microVM's state, as `GET /` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VmState {
    NotStarted,
    Running,
    Paused,
}

/// Where the paths the process is given lead: as they are, or (under `fake-jailer`) beneath
/// the current directory, the jail's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Host,
    Jail,
}

impl Root {
    /// `path` as this process opens it: under a jail, an absolute path without `..`, turned
    /// relative to the current directory (the jail's root).
    fn resolve(self, path: &Path) -> Result<PathBuf, String> {
        match self {
            Root::Host => Ok(path.to_owned()),
            Root::Jail => {
                let mut components = path.components();
                if components.next() != Some(std::path::Component::RootDir) {
                    return Err(format!(
                        "{} is not an absolute path inside the jail",
                        path.display()
                    ));
                }
                let mut relative = PathBuf::new();
                for component in components {
                    match component {
                        std::path::Component::Normal(part) => relative.push(part),
                        _ => {
                            return Err(format!("{} leaves the jail", path.display()));
                        }
                    }
                }
                if relative.as_os_str().is_empty() {
                    return Err("the jail's root is not a file".into());
                }
                Ok(relative)
            }
        }
    }
}

/// What the API has been told so far.
#[derive(Debug, Clone)]
struct Instance {
    id: String,
    machine: MachineConfiguration,
    boot_source: Option<BootSource>,
    drives: BTreeMap<String, Drive>,
    vsock: Option<Vsock>,
    state: VmState,
    /// Whether any resource was configured (a snapshot loads only into a fresh process).
    configured: bool,
    root: Root,
    /// `(path, message)`: `PUT path` is refused with `message`.
    reject: Option<(String, String)>,
}

impl Instance {
    fn new(id: String, root: Root, reject: Option<(String, String)>) -> Instance {
        Instance {
            id,
            // Firecracker's defaults.
            machine: MachineConfiguration {
                vcpu_count: 1,
                mem_size_mib: 128,
                smt: None,
                track_dirty_pages: None,
                huge_pages: None,
                cpu_template: None,
            },
            boot_source: None,
            drives: BTreeMap::new(),
            vsock: None,
            state: VmState::NotStarted,
            configured: false,
            root,
            reject,
        }
    }

    fn started(&self) -> bool {
        self.state != VmState::NotStarted
    }

    /// An existing file at `path` (as the API names it), or the error `what` names.
    fn file(&self, path: &Path, what: &str) -> Result<PathBuf, String> {
        let resolved = self.root.resolve(path)?;
        if resolved.is_file() {
            Ok(resolved)
        } else {
            Err(format!("{what} cannot be opened: {}", path.display()))
        }
    }
}

/// What a valid request asks for.
#[derive(Debug)]
enum Reply {
    /// `200` with this JSON.
    Json(serde_json::Value),
    /// `204`: accepted.
    NoContent,
    /// `204`, and the guest is to be launched now (and paused at once, when `paused`).
    Launch { paused: bool },
    /// `204`, and the guest's processes are to be stopped (`SIGSTOP`).
    Pause,
    /// `204`, and the guest's processes are to go on (`SIGCONT`).
    Resume,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|error| {
        format!("An error occurred when deserializing the json body of a request: {error}.")
    })
}

/// The version this double reports (`--version`, `GET /version`, `GET /`).
fn version() -> String {
    concat!("v", env!("CARGO_PKG_VERSION"), "-fake").to_owned()
}

/// Validates one request against the spec and the instance's state and applies it: the
/// whole API, without sockets or processes, so the unit tests drive it directly. (Snapshot
/// files are written and read here.)
fn handle(
    instance: &mut Instance,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<Reply, String> {
    if *method == Method::PUT {
        if let Some((rejected, message)) = &instance.reject {
            if rejected == path {
                return Err(message.clone());
            }
        }
        let configures = !matches!(path, "/actions" | "/snapshot/create" | "/snapshot/load");
        if configures && instance.started() {
            return Err(
                "The requested operation is not supported after starting the microVM.".into(),
            );
        }
    }
    let reply = match (method.clone(), path) {
        (Method::GET, "/") => Reply::Json(serde_json::json!({
            "app_name": "Firecracker",
            "id": instance.id,
            "state": match instance.state {
                VmState::NotStarted => "Not started",
                VmState::Running => "Running",
                VmState::Paused => "Paused",
            },
            "vmm_version": version(),
        })),
        (Method::GET, "/version") => {
            Reply::Json(serde_json::json!({ "firecracker_version": version() }))
        }
        (Method::GET, "/machine-config") => Reply::Json(serde_json::json!({
            "vcpu_count": instance.machine.vcpu_count,
            "mem_size_mib": instance.machine.mem_size_mib,
        })),
        (Method::PUT, "/machine-config") => {
            let machine: MachineConfiguration = parse(body)?;
            if !(1..=32).contains(&machine.vcpu_count)
                || (machine.vcpu_count != 1 && !machine.vcpu_count.is_multiple_of(2))
            {
                return Err(format!(
                    "Invalid vCPU count {}: must be 1 or an even number up to 32.",
                    machine.vcpu_count
                ));
            }
            if machine.mem_size_mib == 0 {
                return Err("The memory size (MiB) is invalid.".into());
            }
            instance.machine = machine;
            Reply::NoContent
        }
        (Method::PUT, "/boot-source") => {
            let boot: BootSource = parse(body)?;
            instance.file(&boot.kernel_image_path, "The kernel file")?;
            if let Some(initrd) = &boot.initrd_path {
                instance.file(initrd, "The initrd file")?;
            }
            instance.boot_source = Some(boot);
            Reply::NoContent
        }
        (Method::PUT, drive_path) if drive_path.starts_with("/drives/") => {
            let drive_id = &drive_path["/drives/".len()..];
            let drive: Drive = parse(body)?;
            if drive.drive_id != drive_id {
                return Err(format!(
                    "The id from the path [{drive_id}] does not match the id from the body [{}]!",
                    drive.drive_id
                ));
            }
            if drive.socket.is_some() {
                return Err("vhost-user-block drives are not supported by this double".into());
            }
            let Some(path_on_host) = drive.path_on_host.as_deref() else {
                return Err("path_on_host is required for a virtio-block drive".into());
            };
            if drive.is_read_only.is_none() {
                return Err("is_read_only is required for a virtio-block drive".into());
            }
            instance.file(path_on_host, "The block device backing file")?;
            instance.drives.insert(drive.drive_id.clone(), drive);
            Reply::NoContent
        }
        (Method::PUT, "/vsock") => {
            let vsock: Vsock = parse(body)?;
            if vsock.guest_cid < 3 {
                return Err(format!(
                    "Invalid guest CID {}: must be at least 3.",
                    vsock.guest_cid
                ));
            }
            instance.root.resolve(&vsock.uds_path)?;
            instance.vsock = Some(vsock);
            Reply::NoContent
        }
        (Method::PUT, "/actions") => {
            let action: InstanceActionInfo = parse(body)?;
            match action.action_type {
                ActionType::InstanceStart => {
                    if instance.started() {
                        return Err("The microVM is already running.".into());
                    }
                    if instance.boot_source.is_none() {
                        return Err("Cannot start microvm without kernel configuration.".into());
                    }
                    if instance.drives.len() != 1 {
                        return Err(format!(
                            "this double starts guests with exactly one drive, not {}",
                            instance.drives.len()
                        ));
                    }
                    if instance.vsock.is_none() {
                        return Err("this double starts only guests with a vsock device".into());
                    }
                    instance.state = VmState::Running;
                    return Ok(Reply::Launch { paused: false });
                }
                ActionType::FlushMetrics | ActionType::SendCtrlAltDel => {
                    return Err(format!(
                        "{:?} is not supported by this double",
                        action.action_type
                    ))
                }
            }
        }
        (Method::PATCH, "/vm") => {
            let vm: Vm = parse(body)?;
            if !instance.started() {
                return Err(
                    "The microVM has not been started, so it cannot be paused or resumed.".into(),
                );
            }
            match vm.state {
                VmStateRequest::Paused => {
                    instance.state = VmState::Paused;
                    Reply::Pause
                }
                VmStateRequest::Resumed => {
                    instance.state = VmState::Running;
                    Reply::Resume
                }
            }
        }
        (Method::PUT, "/snapshot/create") => {
            let params: SnapshotCreateParams = parse(body)?;
            create_snapshot(instance, &params)?;
            Reply::NoContent
        }
        (Method::PUT, "/snapshot/load") => {
            let params: SnapshotLoadParams = parse(body)?;
            let paused = !load_snapshot(instance, &params)?;
            return Ok(Reply::Launch { paused });
        }
        (method, path) => {
            return Err(format!(
                "Invalid request method and/or path: {method} {path}."
            ))
        }
    };
    if *method == Method::PUT && path != "/snapshot/create" {
        instance.configured = true;
    }
    Ok(reply)
}

/// `PUT /snapshot/create`: allowed only while the guest is paused. Writes the state file
/// ([`SnapshotState`]) and a memory file of the guest's memory size (sparse: see the module
/// docs).
fn create_snapshot(instance: &Instance, params: &SnapshotCreateParams) -> Result<(), String> {
    match instance.state {
        VmState::Paused => {}
        VmState::NotStarted => {
            return Err("Cannot create a snapshot of a microVM that has not been started.".into())
        }
        VmState::Running => {
            return Err(
                "Cannot create a snapshot of a running microVM: pause it first (PATCH /vm).".into(),
            )
        }
    }
    if params.snapshot_type == Some(SnapshotType::Diff)
        && instance.machine.track_dirty_pages != Some(true)
    {
        return Err(
            "Diff snapshots need dirty page tracking (track_dirty_pages in /machine-config)."
                .into(),
        );
    }
    let (Some(boot_source), Some(vsock)) = (&instance.boot_source, &instance.vsock) else {
        return Err("the microVM has no boot source or vsock to record".into());
    };
    let state = SnapshotState {
        format: SNAPSHOT_FORMAT.into(),
        machine: instance.machine.clone(),
        boot_source: boot_source.clone(),
        drives: instance.drives.clone(),
        vsock: vsock.clone(),
    };
    let state_path = instance.root.resolve(&params.snapshot_path)?;
    let memory_path = instance.root.resolve(&params.mem_file_path)?;
    let text = serde_json::to_vec(&state).map_err(|error| error.to_string())?;
    std::fs::write(&state_path, text).map_err(|error| {
        format!(
            "Cannot write the snapshot file {}: {error}",
            params.snapshot_path.display()
        )
    })?;
    std::fs::File::create(&memory_path)
        .and_then(|file| file.set_len(u64::from(instance.machine.mem_size_mib) << 20))
        .map_err(|error| {
            format!(
                "Cannot write the memory file {}: {error}",
                params.mem_file_path.display()
            )
        })
}

/// `PUT /snapshot/load`: allowed only in a fresh process. Takes the recorded configuration
/// (with the vsock override), checking the memory file and every file the guest uses;
/// returns whether the guest resumes.
fn load_snapshot(instance: &mut Instance, params: &SnapshotLoadParams) -> Result<bool, String> {
    if instance.started() || instance.configured {
        return Err("Loading a snapshot is only allowed before any resource is configured.".into());
    }
    let memory = match (&params.mem_file_path, &params.mem_backend) {
        (Some(path), None) => path.clone(),
        (None, Some(backend)) if backend.backend_type == BackendType::File => {
            backend.backend_path.clone()
        }
        (None, Some(_)) => {
            return Err("Uffd memory backends are not supported by this double".into())
        }
        _ => {
            return Err("Exactly one of mem_file_path and mem_backend must be given.".into());
        }
    };
    if let Some(overrides) = params.network_overrides.as_ref().filter(|o| !o.is_empty()) {
        return Err(format!(
            "Network override for {} names an interface the snapshot does not have.",
            overrides[0].iface_id
        ));
    }
    let _ = (
        params.enable_diff_snapshots,
        params.track_dirty_pages,
        params.clock_realtime,
        params.huge_pages,
    );
    let state_path = instance.file(&params.snapshot_path, "The snapshot file")?;
    let text = std::fs::read(&state_path).map_err(|error| {
        format!(
            "Cannot read the snapshot file {}: {error}",
            params.snapshot_path.display()
        )
    })?;
    let mut state: SnapshotState = serde_json::from_slice(&text)
        .ok()
        .filter(|state: &SnapshotState| state.format == SNAPSHOT_FORMAT)
        .ok_or_else(|| {
            format!(
                "The snapshot file {} is not a snapshot of this VMM.",
                params.snapshot_path.display()
            )
        })?;
    let memory_path = instance.file(&memory, "The memory file")?;
    let size = std::fs::metadata(&memory_path)
        .map_err(|error| error.to_string())?
        .len();
    let expected = u64::from(state.machine.mem_size_mib) << 20;
    if size != expected {
        return Err(format!(
            "The memory file {} holds {size} bytes, the snapshot's guest {expected}.",
            memory.display()
        ));
    }
    if let Some(vsock) = &params.vsock_override {
        instance.root.resolve(&vsock.uds_path)?;
        state.vsock.uds_path = vsock.uds_path.clone();
    }
    instance.file(
        &state.boot_source.kernel_image_path,
        "The snapshot's kernel file",
    )?;
    if let Some(initrd) = &state.boot_source.initrd_path {
        instance.file(initrd, "The snapshot's initrd file")?;
    }
    for drive in state.drives.values() {
        if let Some(path) = &drive.path_on_host {
            instance.file(path, "The snapshot's block device backing file")?;
        }
    }
    instance.machine = state.machine;
    instance.boot_source = Some(state.boot_source);
    instance.drives = state.drives;
    instance.vsock = Some(state.vsock);
    let resume = params.resume_vm.unwrap_or(false);
    instance.state = if resume {
        VmState::Running
    } else {
        VmState::Paused
    };
    Ok(resume)
}

/// Where the helper programs are.
#[derive(Debug, Clone)]
struct Tools {
    qemu: PathBuf,
    vhost: PathBuf,
}

/// The running guest: QEMU and its vsock backend.
#[derive(Debug, Default)]
struct Guest {
    children: Vec<Child>,
}

/// Starts vhost-device-vsock and QEMU for `instance`, which `handle` has checked complete.
async fn launch(instance: &Instance, tools: &Tools, api_socket: &Path) -> anyhow::Result<Guest> {
    use anyhow::Context;
    let boot = instance.boot_source.as_ref().context("no boot source")?;
    let vsock = instance.vsock.as_ref().context("no vsock")?;
    let drive = instance.drives.values().next().context("no drive")?;
    let resolve = |path: &Path| instance.root.resolve(path).map_err(anyhow::Error::msg);
    let disk = resolve(drive.path_on_host.as_deref().context("no path_on_host")?)?;
    let kernel = resolve(&boot.kernel_image_path)?;
    let initrd = boot.initrd_path.as_deref().map(resolve).transpose()?;
    let uds_path = resolve(&vsock.uds_path)?;
    // The backend binds a hidden name; `gate_vsock` gives the socket its real one once the
    // guest's agent listens (see the module docs, "vsock gate").
    let mut pending_name = uds_path.file_name().unwrap_or_default().to_owned();
    pending_name.push(".pending");
    let pending_uds = uds_path.with_file_name(pending_name);
    let _ = std::fs::remove_file(&pending_uds);
    let vhost_socket = api_socket.with_file_name("fake-firecracker-vhost.sock");
    let _ = std::fs::remove_file(&vhost_socket);
    let mut guest = Guest::default();
    let mut backend = Command::new(&tools.vhost);
    backend
        .arg("--guest-cid")
        .arg(vsock.guest_cid.to_string())
        .arg("--socket")
        .arg(&vhost_socket)
        .arg("--uds-path")
        .arg(&pending_uds)
        // Its warnings (refused or malformed connections) go to the double's standard
        // error, which is the session's firecracker.log.
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    hpcc_runtime::kill_with_parent(&mut backend);
    guest.children.push(
        backend
            .spawn()
            .with_context(|| format!("starting {}", tools.vhost.display()))?,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !vhost_socket.exists() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "vhost-device-vsock did not create {}",
            vhost_socket.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let no_initrd = PathBuf::new();
    // Firecracker names a root device on the command line itself, before the init's
    // arguments (those after `--`).
    let mut boot_args = boot.boot_args.clone().unwrap_or_default();
    if drive.is_root_device {
        let mode = if drive.is_read_only == Some(true) {
            "ro"
        } else {
            "rw"
        };
        boot_args = match boot_args.split_once(" -- ") {
            Some((kernel, init)) => format!("{kernel} root=/dev/vda {mode} -- {init}"),
            None => format!("{boot_args} root=/dev/vda {mode}"),
        };
    }
    let mut qemu = microvm_command(&MicrovmGuest {
        qemu: &tools.qemu,
        kernel: &kernel,
        initrd: initrd.as_deref().unwrap_or(&no_initrd),
        boot_args: &boot_args,
        root_disk: &disk,
        root_read_only: drive.is_read_only.unwrap_or(false),
        agent: AgentDevice::VhostVsock(&vhost_socket),
        serial: Serial::Stdout,
        vcpus: instance.machine.vcpu_count,
        memory_mib: instance.machine.mem_size_mib,
        accel: Accel::Tcg,
    });
    qemu.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    hpcc_runtime::kill_with_parent(&mut qemu);
    let mut qemu = qemu
        .spawn()
        .with_context(|| format!("starting {}", tools.qemu.display()))?;
    let console = qemu
        .stdout
        .take()
        .context("QEMU's standard output")?
        .into_owned_fd()
        .context("QEMU's standard output")?;
    gate_vsock(std::fs::File::from(console), pending_uds, uds_path);
    guest.children.push(qemu);
    Ok(guest)
}

/// What the agent prints once it listens on vsock (`hpcc-agent`'s `listen`).
const AGENT_LISTENING: &[u8] = b"listening on vsock";

/// Copies the guest's serial console from `console` to standard output and, once it shows
/// the agent listening, renames the backend's socket `pending` to the `uds_path` the API was
/// given (a renamed Unix socket keeps accepting connections). On a thread of its own, which
/// ends when QEMU closes its output.
fn gate_vsock(mut console: std::fs::File, pending: PathBuf, uds_path: PathBuf) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        // The end of what was read before, so a marker split across reads is still found.
        let mut carry: Vec<u8> = Vec::new();
        let mut open = false;
        loop {
            let read = match console.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&buffer[..read]);
            let _ = stdout.flush();
            drop(stdout);
            if open {
                continue;
            }
            carry.extend_from_slice(&buffer[..read]);
            if carry
                .windows(AGENT_LISTENING.len())
                .any(|window| window == AGENT_LISTENING)
            {
                if let Err(error) = std::fs::rename(&pending, &uds_path) {
                    eprintln!(
                        "fake-firecracker: renaming {} to {}: {error}",
                        pending.display(),
                        uds_path.display()
                    );
                }
                open = true;
            }
            let keep = carry.len().saturating_sub(AGENT_LISTENING.len());
            carry.drain(..keep);
        }
    });
}

fn respond(status: StatusCode, body: Option<serde_json::Value>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(
        body.map(|body| Bytes::from(body.to_string()))
            .unwrap_or_default(),
    ));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Shared by the connections: the instance, and where a launched guest is handed to `main`.
struct Server {
    instance: Mutex<Instance>,
    tools: Tools,
    api_socket: PathBuf,
    launched: mpsc::UnboundedSender<Guest>,
    /// The launched guest's processes, for pausing and resuming it.
    guest_pids: Mutex<Vec<u32>>,
}

/// Sends `signal` to every process of the launched guest.
fn signal_guest(server: &Server, signal: rustix::process::Signal) {
    let pids = server.guest_pids.lock().unwrap_or_else(|p| p.into_inner());
    for pid in pids.iter() {
        if let Some(pid) = i32::try_from(*pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

async fn serve(
    server: Arc<Server>,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            eprintln!("fake-firecracker: {method} {path}: body: {error}");
            return respond(
                StatusCode::BAD_REQUEST,
                Some(serde_json::json!({ "fault_message": format!("reading the body: {error}") })),
            );
        }
    };
    let (reply, snapshot) = {
        let mut instance = server.instance.lock().unwrap_or_else(|p| p.into_inner());
        let reply = handle(&mut instance, &method, &path, &body);
        (reply, instance.clone())
    };
    let outcome = match reply {
        Ok(Reply::Json(value)) => Ok(respond(StatusCode::OK, Some(value))),
        Ok(Reply::NoContent) => Ok(respond(StatusCode::NO_CONTENT, None)),
        Ok(Reply::Pause) => {
            signal_guest(&server, rustix::process::Signal::STOP);
            Ok(respond(StatusCode::NO_CONTENT, None))
        }
        Ok(Reply::Resume) => {
            signal_guest(&server, rustix::process::Signal::CONT);
            Ok(respond(StatusCode::NO_CONTENT, None))
        }
        Ok(Reply::Launch { paused }) => {
            match launch(&snapshot, &server.tools, &server.api_socket).await {
                Ok(guest) => {
                    *server.guest_pids.lock().unwrap_or_else(|p| p.into_inner()) =
                        guest.children.iter().filter_map(Child::id).collect();
                    if paused {
                        signal_guest(&server, rustix::process::Signal::STOP);
                    }
                    let _ = server.launched.send(guest);
                    Ok(respond(StatusCode::NO_CONTENT, None))
                }
                Err(error) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"))),
            }
        }
        Err(message) => Err((StatusCode::BAD_REQUEST, message)),
    };
    match outcome {
        Ok(response) => {
            eprintln!("fake-firecracker: {method} {path} -> {}", response.status());
            response
        }
        Err((status, message)) => {
            eprintln!("fake-firecracker: {method} {path} -> {status}: {message}");
            respond(
                status,
                Some(serde_json::json!({ "fault_message": message })),
            )
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Invocation {
    Version,
    Serve { api_socket: PathBuf, id: String },
}

/// `--api-sock PATH --id ID`, plus the timing arguments the jailer adds
/// (`--start-time-us`, `--start-time-cpu-us`, `--parent-cpu-time-us`, numbers), or
/// `--version`.
fn arguments(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<Invocation> {
    const USAGE: &str = "usage: fake-firecracker --api-sock PATH --id ID | --version";
    let mut api_socket = None;
    let mut id = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let name = arg.to_str().unwrap_or_default();
        if name == "--version" {
            return Ok(Invocation::Version);
        }
        let Some(value) = args.next() else {
            anyhow::bail!("{arg:?} needs a value ({USAGE})");
        };
        match name {
            "--api-sock" => api_socket = Some(PathBuf::from(value)),
            "--id" => id = Some(value.to_string_lossy().into_owned()),
            "--start-time-us" | "--start-time-cpu-us" | "--parent-cpu-time-us" => {
                if value.to_str().and_then(|v| v.parse::<u64>().ok()).is_none() {
                    anyhow::bail!("{name} {value:?}: not a number");
                }
            }
            _ => anyhow::bail!("unknown argument {arg:?} ({USAGE})"),
        }
    }
    match (api_socket, id) {
        (Some(api_socket), Some(id)) => Ok(Invocation::Serve { api_socket, id }),
        _ => anyhow::bail!("{USAGE}"),
    }
}

fn tool(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(OsString::from(default)))
}

async fn run() -> anyhow::Result<()> {
    use anyhow::Context;
    let (api_socket, id) = match arguments(std::env::args_os().skip(1))? {
        Invocation::Version => {
            println!("Firecracker {}", version());
            return Ok(());
        }
        Invocation::Serve { api_socket, id } => (api_socket, id),
    };
    // Under fake-jailer, paths are the jail's (see the module docs).
    let root = match std::env::var_os("FAKE_JAILER_ROOT") {
        Some(jail) => {
            let here = std::env::current_dir().context("the current directory")?;
            anyhow::ensure!(
                here == Path::new(&jail),
                "FAKE_JAILER_ROOT is {jail:?} but the current directory is {}",
                here.display()
            );
            Root::Jail
        }
        None => Root::Host,
    };
    let api_socket = root
        .resolve(&api_socket)
        .map_err(|error| anyhow::anyhow!("--api-sock: {error}"))?;
    let reject = std::env::var("FAKE_FIRECRACKER_REJECT")
        .ok()
        .and_then(|value| {
            value
                .split_once(' ')
                .map(|(path, message)| (path.to_owned(), message.to_owned()))
        });
    let tools = Tools {
        qemu: tool("FAKE_FIRECRACKER_QEMU", "qemu-system-x86_64"),
        vhost: tool("FAKE_FIRECRACKER_VHOST", "vhost-device-vsock"),
    };
    let listener = UnixListener::bind(&api_socket)
        .with_context(|| format!("binding {}", api_socket.display()))?;
    eprintln!("fake-firecracker {id}: serving {}", api_socket.display());
    let (launched, mut guests) = mpsc::unbounded_channel();
    let server = Arc::new(Server {
        instance: Mutex::new(Instance::new(id, root, reject)),
        tools,
        api_socket: api_socket.clone(),
        launched,
        guest_pids: Mutex::new(Vec::new()),
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut guest: Option<Guest> = None;
    let ending = loop {
        // The guest ends when any of its processes does: real Firecracker is one process, so
        // an OOM kill in its cgroup ends the VMM whichever of the double's processes (QEMU,
        // or the vsock backend, which maps guest memory too) the kernel picks.
        let qemu_exit = async {
            match guest.as_mut() {
                Some(guest) if !guest.children.is_empty() => loop {
                    for child in &mut guest.children {
                        match child.try_wait() {
                            Ok(None) => {}
                            Ok(Some(status)) => return Ok(status),
                            Err(error) => return Err(error),
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                },
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting an API connection")?;
                let server = server.clone();
                // Connections are served one at a time, like Firecracker's API thread.
                let service = hyper::service::service_fn(move |request| {
                    let server = server.clone();
                    async move { Ok::<_, std::convert::Infallible>(serve(server, request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                {
                    let mut next_guest = std::pin::pin!(guests.recv());
                    // Only one guest is ever launched, so once it is here the branch stays off.
                    let mut connection = std::pin::pin!(connection);
                    // A launch hands its guest over while the connection is still open, so both
                    // are polled.
                    loop {
                        tokio::select! {
                            served = &mut connection => {
                                if let Err(error) = served {
                                    eprintln!("fake-firecracker: connection: {error}");
                                }
                                break;
                            }
                            Some(started) = &mut next_guest, if guest.is_none() => {
                                guest = Some(started);
                            }
                        }
                    }
                }
                // Both may have been ready at once, and `select!` picks at random: a guest
                // left in the channel would never be watched, so its QEMU's death (an OOM
                // kill) would not end the double.
                if guest.is_none() {
                    if let Ok(started) = guests.try_recv() {
                        guest = Some(started);
                    }
                }
            }
            status = qemu_exit => {
                break format!("the guest's QEMU or vsock backend exited: {status:?}");
            }
            _ = terminate.recv() => break "terminated".to_owned(),
            _ = tokio::signal::ctrl_c() => break "interrupted".to_owned(),
        }
    };
    eprintln!("fake-firecracker: {ending}; exiting");
    if let Some(mut guest) = guest {
        for child in &mut guest.children {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
    let _ = std::fs::remove_file(&api_socket);
    Ok(())
}

// One thread: the children's parent-death signal fires when the thread that spawned them
// exits, so they must be spawned by the thread that lives as long as the process.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fake-firecracker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> Instance {
        Instance::new("test".into(), Root::Host, None)
    }

    fn put(instance: &mut Instance, path: &str, body: &str) -> Result<Reply, String> {
        handle(instance, &Method::PUT, path, body.as_bytes())
    }

    /// A file that exists, for the paths the API opens.
    fn existing() -> String {
        std::env::current_exe()
            .expect("the test binary has a path")
            .to_string_lossy()
            .into_owned()
    }

    fn configured() -> Instance {
        let file = existing();
        let mut instance = instance();
        for (path, body) in [
            (
                "/machine-config",
                r#"{"vcpu_count": 2, "mem_size_mib": 256}"#.to_owned(),
            ),
            (
                "/boot-source",
                format!(
                    r#"{{"kernel_image_path": "{file}", "initrd_path": "{file}", "boot_args": "x"}}"#
                ),
            ),
            (
                "/drives/rootfs",
                format!(
                    r#"{{"drive_id": "rootfs", "path_on_host": "{file}", "is_root_device": false, "is_read_only": true}}"#
                ),
            ),
            (
                "/vsock",
                r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#.to_owned(),
            ),
        ] {
            put(&mut instance, path, &body).unwrap_or_else(|error| panic!("{path}: {error}"));
        }
        instance
    }

    /// Each refused request, and a word its fault message must contain.
    #[test]
    fn invalid_requests_are_refused() {
        let file = existing();
        let check = |path: &str, body: &str, expected: &str| {
            let mut instance = instance();
            match put(&mut instance, path, body) {
                Err(message) => assert!(message.contains(expected), "{path} {body}: {message}"),
                Ok(reply) => panic!("{path} {body} accepted: {reply:?}"),
            }
        };
        check(
            "/boot-source",
            r#"{"initrd_path": "/x"}"#,
            "kernel_image_path",
        );
        check(
            "/boot-source",
            r#"{"kernel_image_path": 7}"#,
            "invalid type",
        );
        check(
            "/boot-source",
            &format!(r#"{{"kernel_image_path": "{file}", "nic": 1}}"#),
            "unknown field",
        );
        check(
            "/boot-source",
            r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#,
            "kernel file",
        );
        check("/machine-config", r#"{"vcpu_count": 2}"#, "mem_size_mib");
        check(
            "/machine-config",
            r#"{"vcpu_count": 3, "mem_size_mib": 128}"#,
            "vCPU count",
        );
        check(
            "/machine-config",
            r#"{"vcpu_count": -1, "mem_size_mib": 128}"#,
            "invalid value",
        );
        check(
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/x"}"#,
            "is_root_device",
        );
        check(
            "/drives/rootfs",
            &format!(
                r#"{{"drive_id": "other", "path_on_host": "{file}", "is_root_device": false, "is_read_only": true}}"#
            ),
            "does not match",
        );
        check("/vsock", r#"{"guest_cid": 2, "uds_path": "/v"}"#, "CID");
        check("/vsock", r#"{"guest_cid": 3}"#, "uds_path");
        check(
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#,
            "Invalid request",
        );
        check(
            "/actions",
            r#"{"action_type": "Reboot"}"#,
            "unknown variant",
        );
        check("/actions", r#"{"action_type": "InstanceStart"}"#, "kernel");
        check("/machine-config", "not json", "deserializing");
    }

    #[test]
    fn instance_start_needs_a_drive_and_happens_once() {
        let file = existing();
        let mut instance = instance();
        put(
            &mut instance,
            "/boot-source",
            &format!(r#"{{"kernel_image_path": "{file}"}}"#),
        )
        .expect("boot source");
        let error = put(
            &mut instance,
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
        )
        .expect_err("no drive");
        assert!(error.contains("drive"), "{error}");

        let mut instance = configured();
        assert!(matches!(
            put(
                &mut instance,
                "/actions",
                r#"{"action_type": "InstanceStart"}"#
            ),
            Ok(Reply::Launch { paused: false })
        ));
        let again = put(
            &mut instance,
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
        )
        .expect_err("second start");
        assert!(again.contains("already running"), "{again}");
        let late = put(
            &mut instance,
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
        )
        .expect_err("after start");
        assert!(late.contains("after starting"), "{late}");
    }

    #[test]
    fn instance_info_and_unknown_paths() {
        let mut instance = configured();
        match handle(&mut instance, &Method::GET, "/", b"") {
            Ok(Reply::Json(info)) => {
                assert_eq!(info["id"], "test");
                assert_eq!(info["state"], "Not started");
                assert_eq!(info["app_name"], "Firecracker");
            }
            other => panic!("GET / gave {other:?}"),
        }
        let error = handle(&mut instance, &Method::GET, "/nothing", b"").expect_err("unknown path");
        assert!(
            error.contains("Invalid request method and/or path"),
            "{error}"
        );
    }

    #[test]
    fn a_configured_rejection_names_its_message() {
        let mut instance = Instance::new(
            "test".into(),
            Root::Host,
            Some(("/boot-source".into(), "no kernels today".into())),
        );
        let error = put(
            &mut instance,
            "/boot-source",
            r#"{"kernel_image_path": "/k"}"#,
        )
        .expect_err("rejected");
        assert_eq!(error, "no kernels today");
    }

    fn patch(instance: &mut Instance, state: &str) -> Result<Reply, String> {
        handle(
            instance,
            &Method::PATCH,
            "/vm",
            format!(r#"{{"state": "{state}"}}"#).as_bytes(),
        )
    }

    /// Pausing needs a started guest; a snapshot needs a paused one and writes the state
    /// file and a memory file of the guest's size; a snapshot loads only into a fresh
    /// process, resumes as asked, and leaves the instance configured as recorded.
    #[test]
    fn snapshots_follow_the_vm_state() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("vmstate");
        let memory = dir.path().join("memory");
        let create = format!(
            r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            state.display(),
            memory.display()
        );
        let mut instance = configured();
        let early = patch(&mut instance, "Paused").expect_err("not started");
        assert!(early.contains("not been started"), "{early}");
        let early = put(&mut instance, "/snapshot/create", &create).expect_err("not started");
        assert!(early.contains("not been started"), "{early}");
        put(
            &mut instance,
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
        )
        .expect("start");
        let running = put(&mut instance, "/snapshot/create", &create).expect_err("running");
        assert!(running.contains("pause it first"), "{running}");
        assert!(!state.exists());
        let bad = patch(&mut instance, "Stopped").expect_err("no such state");
        assert!(bad.contains("unknown variant"), "{bad}");
        assert!(matches!(patch(&mut instance, "Paused"), Ok(Reply::Pause)));
        let diff = create.replace("Full", "Diff");
        let error = put(&mut instance, "/snapshot/create", &diff).expect_err("no dirty pages");
        assert!(error.contains("dirty page tracking"), "{error}");
        let extra = create.replace("}", r#", "compress": true}"#);
        let error = put(&mut instance, "/snapshot/create", &extra).expect_err("unknown field");
        assert!(error.contains("unknown field"), "{error}");
        assert!(matches!(
            put(&mut instance, "/snapshot/create", &create),
            Ok(Reply::NoContent)
        ));
        assert_eq!(
            std::fs::metadata(&memory).expect("memory file").len(),
            256 << 20
        );
        assert!(matches!(patch(&mut instance, "Resumed"), Ok(Reply::Resume)));

        let load = |extra: &str| format!(r#"{{"snapshot_path": "{}", {extra}}}"#, state.display());
        let backend = format!(
            r#""mem_backend": {{"backend_type": "File", "backend_path": "{}"}}"#,
            memory.display()
        );
        let mut used = configured();
        let error = put(&mut used, "/snapshot/load", &load(&backend)).expect_err("configured");
        assert!(
            error.contains("before any resource is configured"),
            "{error}"
        );
        for (body, expected) in [
            (
                load(&format!(
                    r#"{backend}, "mem_file_path": "{}""#,
                    memory.display()
                )),
                "Exactly one",
            ),
            (r#"{"snapshot_path": "/x"}"#.to_owned(), "Exactly one"),
            (load(&backend.replace("File", "Uffd")), "Uffd"),
            (
                load(&format!(
                    r#"{backend}, "network_overrides": [{{"iface_id": "eth0", "host_dev_name": "tap0"}}]"#
                )),
                "eth0",
            ),
            (
                load(&backend.replace("backend_path", "path")),
                "backend_path",
            ),
        ] {
            let error = put(&mut instance_fresh(), "/snapshot/load", &body).expect_err(&body);
            assert!(error.contains(expected), "{body}: {error}");
        }
        let mut fresh = instance_fresh();
        let resumed = format!(
            r#"{backend}, "resume_vm": true, "vsock_override": {{"uds_path": "/tmp/other.sock"}}"#
        );
        assert!(matches!(
            put(&mut fresh, "/snapshot/load", &load(&resumed)),
            Ok(Reply::Launch { paused: false })
        ));
        assert_eq!(fresh.state, VmState::Running);
        assert_eq!(fresh.machine.mem_size_mib, 256);
        assert_eq!(
            fresh.vsock.as_ref().map(|v| v.uds_path.clone()),
            Some(PathBuf::from("/tmp/other.sock"))
        );
        let late = put(
            &mut fresh,
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
        )
        .expect_err("after load");
        assert!(late.contains("after starting"), "{late}");
        let mut paused = instance_fresh();
        assert!(matches!(
            put(&mut paused, "/snapshot/load", &load(&backend)),
            Ok(Reply::Launch { paused: true })
        ));
        std::fs::File::create(&memory)
            .and_then(|f| f.set_len(1))
            .expect("truncate");
        let error =
            put(&mut instance_fresh(), "/snapshot/load", &load(&backend)).expect_err("short");
        assert!(error.contains("holds 1 bytes"), "{error}");
    }

    fn instance_fresh() -> Instance {
        instance()
    }

    /// Under the jailer double, API paths are the jail's: absolute, resolved beneath the
    /// current directory, and never out of it.
    #[test]
    fn jail_paths_stay_in_the_jail() {
        assert_eq!(
            Root::Jail.resolve(Path::new("/api.sock")),
            Ok(PathBuf::from("api.sock"))
        );
        assert_eq!(
            Root::Jail.resolve(Path::new("/a/b")),
            Ok(PathBuf::from("a/b"))
        );
        for bad in ["relative", "/../etc/passwd", "/a/../../b", "/"] {
            assert!(Root::Jail.resolve(Path::new(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            Root::Host.resolve(Path::new("/x/../y")),
            Ok(PathBuf::from("/x/../y"))
        );
    }

    #[test]
    fn command_lines_of_firecracker_and_of_the_jailer_parse() {
        let args = |text: &str| {
            text.split_whitespace()
                .map(OsString::from)
                .collect::<Vec<_>>()
        };
        let jailed = arguments(args(
            "--id fc-1 --start-time-us 5 --start-time-cpu-us 0 --parent-cpu-time-us 0 --api-sock /api.sock",
        ))
        .expect("the jailer's command line");
        assert_eq!(
            jailed,
            Invocation::Serve {
                api_socket: "/api.sock".into(),
                id: "fc-1".into()
            }
        );
        assert_eq!(
            arguments(args("--version")).expect("version"),
            Invocation::Version
        );
        for bad in [
            "--id x",
            "--id x --api-sock /a --bogus 1",
            "--id x --api-sock /a --start-time-us soon",
            "--api-sock",
        ] {
            assert!(arguments(args(bad)).is_err(), "{bad}");
        }
    }
}
