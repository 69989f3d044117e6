//! The `firecracker` runtime: each session is a Firecracker microVM with no NIC, configured
//! through Firecracker's API socket.
//!
//! Starting a session ([`FirecrackerRuntime::start`]):
//! 1. The image's root disk is built if this host has not built it before ([`super::disk`]).
//! 2. A session directory `<state_dir>/sessions/<id>/` gets `api.sock` (Firecracker's API),
//!    `vsock.sock` (hybrid vsock to the guest), `console.log` (Firecracker's standard output,
//!    which carries the guest's serial console) and `firecracker.log` (its standard error).
//! 3. `firecracker --api-sock <dir>/api.sock --id <id>` is started, and once its API socket
//!    exists it is configured over HTTP/1.1, in the order and with the bodies of Firecracker's
//!    API specification: `PUT /machine-config`, `PUT /boot-source` (kernel, the initramfs
//!    holding the agent, the command line), `PUT /drives/rootfs` (the root disk, read-only; not
//!    a root device, since the agent mounts it itself from the initramfs), `PUT /vsock`, and
//!    `PUT /actions` `InstanceStart`. No network interface is ever configured, so the guest
//!    has no NIC. A refused request fails the start with the request's path and Firecracker's
//!    `fault_message`.
//! 4. `start` returns once the agent answers on its vsock port.
//!
//! **Guest kernel.** Firecracker describes its devices to the guest only as
//! `virtio_mmio.device=` kernel arguments, so the guest kernel needs
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y`; Debian's cloud kernel does not have it (it runs under
//! the `qemu` runtime, whose `microvm` machine describes devices through ACPI). virtio-mmio,
//! virtio-blk and virtio-vsock must be built in or listed in [`GuestConfig::modules`].
//!
//! **Jailer.** In production Firecracker should run under its `jailer` (chroot, namespaces,
//! cgroups, an unprivileged uid). This runtime does not do that yet: it runs the binary directly.
//!
//! The integration tests run this runtime against a test double of the Firecracker binary
//! (`src/bin/fake-firecracker.rs`), which serves the same API and boots the guest with QEMU.

use std::io;
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
use tokio::process::{Child, Command};

use super::{disk, hybrid, initramfs, GuestConfig, AGENT_PORT, GUEST_CID};
use crate::{AgentStream, Runtime, RuntimeError, Session, SessionSpec};

const RUNTIME: &str = "firecracker";

/// The hostname of every guest.
pub const GUEST_HOSTNAME: &str = "hpcc";

/// Kernel arguments every Firecracker guest gets: `reboot=k` so that a guest reboot (or a
/// panic, with `panic=-1`) ends the VMM, and `pci=off` since Firecracker has no PCI bus.
const FIRECRACKER_KERNEL_ARGS: &str = "reboot=k pci=off";

/// How long one API request may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest API reply read (Firecracker's replies are small JSON objects).
const MAX_REPLY_BYTES: usize = 64 * 1024;

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
}

/// The Firecracker microVM runtime.
#[derive(Debug)]
pub struct FirecrackerRuntime {
    config: FirecrackerConfig,
    initramfs: PathBuf,
    disks: Arc<tokio::sync::Mutex<()>>,
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
fn api_path(path: &Path) -> Result<&str, RuntimeError> {
    path.to_str().ok_or_else(|| {
        start_error(format!("passing {} to Firecracker", path.display()))(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path is not UTF-8",
        ))
    })
}

fn json(value: impl Serialize) -> Result<serde_json::Value, RuntimeError> {
    serde_json::to_value(value).map_err(|error| start_error("encoding a request")(error.into()))
}

/// The requests that configure and start a guest, in order: `(path, body)`, all `PUT`.
fn configuration(boot: &Boot<'_>) -> Result<Vec<(&'static str, serde_json::Value)>, RuntimeError> {
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

/// Sends `PUT path` with a JSON body to the API socket at `socket`, on a connection of its
/// own: the connection is driven in this future (no task is spawned for it), and Firecracker
/// serves connections one after another anyway.
async fn put(socket: &Path, path: &str, body: &serde_json::Value) -> Result<(), RuntimeError> {
    let step = || format!("PUT {path}");
    let exchange = async {
        let stream = UnixStream::connect(socket).await?;
        let (mut sender, mut connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(io::Error::other)?;
        let request = hyper::Request::put(path)
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
            start_error(step())(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no reply in {} s", API_TIMEOUT.as_secs()),
            ))
        })?
        .map_err(start_error(step()))?;
    if status.is_success() {
        return Ok(());
    }
    Err(start_error(step())(io::Error::other(format!(
        "Firecracker refused it ({status}): {}",
        fault_message(&reply)
    ))))
}

impl FirecrackerRuntime {
    /// Checks the binary and the kernel, and writes the initramfs.
    pub fn new(config: FirecrackerConfig) -> Result<FirecrackerRuntime, RuntimeError> {
        let unavailable = |reason: String| RuntimeError::Unavailable {
            runtime: RUNTIME,
            reason,
        };
        if super::qemu::find_program(&config.firecracker).is_none() {
            return Err(unavailable(format!(
                "Firecracker binary {} not found",
                config.firecracker.display()
            )));
        }
        if !config.guest.kernel.is_file() {
            return Err(unavailable(format!(
                "guest kernel {} not found",
                config.guest.kernel.display()
            )));
        }
        let initramfs = initramfs::write(&config.guest, "firecracker").map_err(unavailable)?;
        Ok(FirecrackerRuntime {
            config,
            initramfs,
            disks: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The root disk of `spec`'s image, built at most once at a time.
    async fn root_disk(&self, spec: &SessionSpec) -> Result<PathBuf, RuntimeError> {
        let _building = self.disks.lock().await;
        let state = self.config.guest.state_dir.clone();
        let digest = spec.image_digest.clone();
        let rootfs = spec.rootfs.clone();
        tokio::task::spawn_blocking(move || disk::root_disk(&state, &digest, &rootfs))
            .await
            .unwrap_or_else(|error| Err(io::Error::other(error)))
            .map_err(start_error(format!(
                "building the root disk of {}",
                spec.image_digest
            )))
    }

    /// Starts Firecracker in `session`'s directory and boots the guest; the session is
    /// dropped (and so cleaned up) by the caller if this fails.
    async fn boot(
        &self,
        spec: &SessionSpec,
        session: &mut FirecrackerSession,
        root_disk: &Path,
    ) -> Result<(), RuntimeError> {
        let dir = session.dir.clone();
        let api_socket = dir.join("api.sock");
        let child = Command::new(&self.config.firecracker)
            .arg("--api-sock")
            .arg(&api_socket)
            .arg("--id")
            .arg(&session.id)
            .stdin(Stdio::null())
            .stdout(log_file(&dir.join("console.log"))?)
            .stderr(log_file(&dir.join("firecracker.log"))?)
            .kill_on_drop(true)
            .spawn()
            .map_err(start_error(format!(
                "starting {}",
                self.config.firecracker.display()
            )))?;
        *session
            .firecracker
            .get_mut()
            .unwrap_or_else(|p| p.into_inner()) = Some(child);
        let exited = |session: &FirecrackerSession, step: &str| {
            if session.is_alive() {
                return Ok(());
            }
            Err(start_error(step.to_owned())(io::Error::other(format!(
                "Firecracker exited; {}; console: {}",
                super::tail(&dir.join("firecracker.log"), 1000),
                super::tail(&dir.join("console.log"), 2000)
            ))))
        };
        let deadline = Instant::now() + self.config.guest.boot_timeout;
        while !api_socket.exists() {
            exited(session, "waiting for Firecracker's API socket")?;
            if Instant::now() > deadline {
                return Err(start_error("waiting for Firecracker's API socket")(
                    io::Error::other(super::tail(&dir.join("firecracker.log"), 2000)),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let boot_args = super::kernel_command_line(
            spec,
            GUEST_HOSTNAME,
            &format!("{FIRECRACKER_KERNEL_ARGS} {}", self.config.boot_args_extra),
        );
        let guest = &self.config.guest;
        let requests = configuration(&Boot {
            vcpus: guest.vcpus,
            memory_mib: guest.memory_mib,
            kernel: &guest.kernel,
            initrd: &self.initramfs,
            boot_args: &boot_args,
            root_disk,
            vsock_socket: &session.vsock_socket,
        })?;
        for (path, body) in &requests {
            put(&api_socket, path, body).await?;
        }
        loop {
            exited(session, "booting the guest")?;
            match hybrid::connect(&session.vsock_socket, AGENT_PORT).await {
                Ok(_probe) => return Ok(()),
                Err(error) if Instant::now() > deadline => {
                    return Err(start_error(format!(
                        "waiting {} s for the guest's agent",
                        guest.boot_timeout.as_secs()
                    ))(io::Error::other(format!(
                        "{error}; console: {}",
                        super::tail(&dir.join("console.log"), 2000)
                    ))));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
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
        let id = super::session_id("fc", &spec.tenant);
        let dir = self.config.guest.state_dir.join("sessions").join(&id);
        for socket in ["api.sock", "vsock.sock"] {
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
        std::fs::create_dir_all(&dir)
            .map_err(start_error(format!("creating {}", dir.display())))?;
        let mut session = FirecrackerSession {
            id,
            vsock_socket: dir.join("vsock.sock"),
            dir,
            firecracker: Mutex::new(None),
        };
        // On failure `session` is dropped here, which kills Firecracker and removes the
        // directory.
        self.boot(spec, &mut session, &root_disk).await?;
        tracing::info!(session = %session.id, image = %spec.image_digest, "firecracker guest up");
        Ok(Box::new(session))
    }
}

/// A running guest.
#[derive(Debug)]
struct FirecrackerSession {
    id: String,
    dir: PathBuf,
    vsock_socket: PathBuf,
    firecracker: Mutex<Option<Child>>,
}

#[async_trait]
impl Session for FirecrackerSession {
    fn id(&self) -> &str {
        &self.id
    }

    async fn connect(&self) -> Result<Box<dyn AgentStream>, RuntimeError> {
        let stream = hybrid::connect(&self.vsock_socket, AGENT_PORT)
            .await
            .map_err(|source| RuntimeError::Io {
                session: self.id.clone(),
                source,
            })?;
        Ok(Box::new(stream))
    }

    fn is_alive(&self) -> bool {
        let mut guard = self.firecracker.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    async fn stop(mut self: Box<Self>) -> Result<(), RuntimeError> {
        let child = self
            .firecracker
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut child) = child {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir))
            .await
            .unwrap_or_else(|error| Err(io::Error::other(error)))
            .map_err(|source| RuntimeError::Io {
                session: self.id.clone(),
                source,
            })
    }
}

impl Drop for FirecrackerSession {
    fn drop(&mut self) {
        // Firecracker is killed by `kill_on_drop`; the directory goes too if `stop` did not run.
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
}
