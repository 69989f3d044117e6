//! `fake-firecracker`: a test double of the Firecracker binary, for the `firecracker` runtime's
//! integration tests on hosts without Firecracker (or without a usable KVM).
//!
//! `fake-firecracker --api-sock PATH --id ID` serves Firecracker's API on the Unix socket
//! `PATH` over HTTP/1.1 and checks requests against Firecracker's API specification: the
//! resources the runtime uses (`/machine-config`, `/boot-source`, `/drives/{id}`, `/vsock`,
//! `/actions`, `GET /`) with their required fields, types and bounds, and no unknown fields
//! (Firecracker rejects those too). Anything else is `400` with `{"fault_message": ...}`, as is
//! configuration after the start and a second `InstanceStart`.
//!
//! On `InstanceStart` it boots the configured guest with QEMU's `microvm` machine, through the
//! same command line as the `qemu` runtime (`hpcc_runtime::vm::qemu::microvm_command`), and
//! `vhost-device-vsock` whose `--uds-path` is the `uds_path` of `PUT /vsock`: the host side sees
//! Firecracker's hybrid vsock exactly. The guest's serial console goes to standard output, as
//! with Firecracker. Deviations from Firecracker: `InstanceStart` also needs a vsock device
//! and exactly one drive (a guest without them is of no use to the runtime), and only
//! virtio-block drives with `path_on_host` are accepted.
//!
//! Environment: `FAKE_FIRECRACKER_QEMU` and `FAKE_FIRECRACKER_VHOST` name `qemu-system-x86_64`
//! and `vhost-device-vsock` (default: found on `PATH`); guests run under TCG, since the point
//! is to run anywhere. `FAKE_FIRECRACKER_REJECT="<path> <message>"` makes every `PUT <path>`
//! fail with `400` and that `fault_message`, for testing how errors reach the runtime's caller.
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
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use hpcc_runtime::vm::qemu::{microvm_command, Accel, MicrovmGuest, Serial};

/// Firecracker's own cap on an API request body.
const MAX_BODY_BYTES: usize = 51_200;

/// The spec's `MachineConfiguration` (the fields a guest launch uses, plus the optional ones
/// that are accepted and ignored).
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootSource {
    kernel_image_path: PathBuf,
    #[serde(default)]
    initrd_path: Option<PathBuf>,
    #[serde(default)]
    boot_args: Option<String>,
}

/// The spec's `Drive` (virtio-block only).
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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

/// What the API has been told so far.
#[derive(Debug, Clone)]
struct Instance {
    id: String,
    machine: MachineConfiguration,
    boot_source: Option<BootSource>,
    drives: BTreeMap<String, Drive>,
    vsock: Option<Vsock>,
    started: bool,
    /// `(path, message)`: `PUT path` is refused with `message`.
    reject: Option<(String, String)>,
}

impl Instance {
    fn new(id: String, reject: Option<(String, String)>) -> Instance {
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
            started: false,
            reject,
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
    /// `204`, and the guest is to be launched now.
    Launch,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|error| {
        format!("An error occurred when deserializing the json body of a request: {error}.")
    })
}

/// Validates one request against the spec and the instance's state and applies it: the
/// whole API, without sockets or processes, so the unit tests drive it directly.
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
        let configures = path != "/actions";
        if configures && instance.started {
            return Err(
                "The requested operation is not supported after starting the microVM.".into(),
            );
        }
    }
    match (method.clone(), path) {
        (Method::GET, "/") => Ok(Reply::Json(serde_json::json!({
            "app_name": "Firecracker",
            "id": instance.id,
            "state": if instance.started { "Running" } else { "Not started" },
            "vmm_version": concat!("fake-", env!("CARGO_PKG_VERSION")),
        }))),
        (Method::GET, "/machine-config") => Ok(Reply::Json(serde_json::json!({
            "vcpu_count": instance.machine.vcpu_count,
            "mem_size_mib": instance.machine.mem_size_mib,
        }))),
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
            Ok(Reply::NoContent)
        }
        (Method::PUT, "/boot-source") => {
            let boot: BootSource = parse(body)?;
            if !boot.kernel_image_path.is_file() {
                return Err(format!(
                    "The kernel file cannot be opened: {}",
                    boot.kernel_image_path.display()
                ));
            }
            if let Some(initrd) = boot
                .initrd_path
                .as_deref()
                .filter(|initrd| !initrd.is_file())
            {
                return Err(format!(
                    "The initrd file cannot be opened: {}",
                    initrd.display()
                ));
            }
            instance.boot_source = Some(boot);
            Ok(Reply::NoContent)
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
            if !path_on_host.is_file() {
                return Err(format!(
                    "Unable to open the block device backing file: {}",
                    path_on_host.display()
                ));
            }
            instance.drives.insert(drive.drive_id.clone(), drive);
            Ok(Reply::NoContent)
        }
        (Method::PUT, "/vsock") => {
            let vsock: Vsock = parse(body)?;
            if vsock.guest_cid < 3 {
                return Err(format!(
                    "Invalid guest CID {}: must be at least 3.",
                    vsock.guest_cid
                ));
            }
            instance.vsock = Some(vsock);
            Ok(Reply::NoContent)
        }
        (Method::PUT, "/actions") => {
            let action: InstanceActionInfo = parse(body)?;
            match action.action_type {
                ActionType::InstanceStart => {
                    if instance.started {
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
                    instance.started = true;
                    Ok(Reply::Launch)
                }
                ActionType::FlushMetrics | ActionType::SendCtrlAltDel => Err(format!(
                    "{:?} is not supported by this double",
                    action.action_type
                )),
            }
        }
        (method, path) => Err(format!(
            "Invalid request method and/or path: {method} {path}."
        )),
    }
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
    let disk = drive.path_on_host.as_deref().context("no path_on_host")?;
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
        .arg(&vsock.uds_path)
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
        kernel: &boot.kernel_image_path,
        initrd: boot.initrd_path.as_deref().unwrap_or(&no_initrd),
        boot_args: &boot_args,
        root_disk: disk,
        root_read_only: drive.is_read_only.unwrap_or(false),
        vhost_socket: &vhost_socket,
        serial: Serial::Stdout,
        vcpus: instance.machine.vcpu_count,
        memory_mib: instance.machine.mem_size_mib,
        accel: Accel::Tcg,
    });
    qemu.stdin(Stdio::null()).kill_on_drop(true);
    hpcc_runtime::kill_with_parent(&mut qemu);
    guest.children.push(
        qemu.spawn()
            .with_context(|| format!("starting {}", tools.qemu.display()))?,
    );
    Ok(guest)
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
        Ok(Reply::Launch) => match launch(&snapshot, &server.tools, &server.api_socket).await {
            Ok(guest) => {
                let _ = server.launched.send(guest);
                Ok(respond(StatusCode::NO_CONTENT, None))
            }
            Err(error) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"))),
        },
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

/// `--api-sock PATH --id ID`.
fn arguments() -> anyhow::Result<(PathBuf, String)> {
    let mut api_socket = None;
    let mut id = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match arg.to_str() {
            Some("--api-sock") => api_socket = value.map(PathBuf::from),
            Some("--id") => id = value.map(|id| id.to_string_lossy().into_owned()),
            _ => anyhow::bail!("unknown argument {arg:?} (usage: --api-sock PATH --id ID)"),
        }
    }
    match (api_socket, id) {
        (Some(api_socket), Some(id)) => Ok((api_socket, id)),
        _ => anyhow::bail!("usage: fake-firecracker --api-sock PATH --id ID"),
    }
}

fn tool(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(OsString::from(default)))
}

async fn run() -> anyhow::Result<()> {
    use anyhow::Context;
    let (api_socket, id) = arguments()?;
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
        instance: Mutex::new(Instance::new(id, reject)),
        tools,
        api_socket: api_socket.clone(),
        launched,
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut guest: Option<Guest> = None;
    let ending = loop {
        let qemu_exit = async {
            match guest.as_mut().and_then(|guest| guest.children.last_mut()) {
                Some(qemu) => qemu.wait().await,
                None => std::future::pending().await,
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
            status = qemu_exit => {
                break format!("QEMU exited: {status:?}");
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
        Instance::new("test".into(), None)
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
            Ok(Reply::Launch)
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
}
