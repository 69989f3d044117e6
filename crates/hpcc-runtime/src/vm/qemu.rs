//! The `qemu` runtime: each session is a QEMU `microvm` guest with no NIC.
//!
//! Starting a session ([`QemuRuntime::start`]):
//! 1. The image's root disk is built if this host has not built it before ([`super::disk`]).
//! 2. A session directory `<state_dir>/sessions/<id>/` gets `vhost.sock` (the vhost-user
//!    control socket), `vsock.sock` (hybrid vsock to the guest), `console.log` (the guest's
//!    serial console: kernel and agent messages) and `qemu.log`.
//! 3. `vhost-device-vsock` serves the guest's vsock device; QEMU boots the kernel with the
//!    initramfs (the agent as `/init`), the root disk read-only as virtio-blk, and the vsock
//!    device, on shared memory (vhost-user needs it). `-nodefaults -nic none`: the guest has
//!    no network device at all.
//! 4. `start` returns once the agent answers on its vsock port.
//!
//! [`Session::stop`] kills QEMU and the vsock backend and removes the session directory;
//! dropping a session kills both too (`kill_on_drop`), and both die with the worker
//! (`PR_SET_PDEATHSIG`) if it is killed outright.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use tokio::process::{Child, Command};

use super::{disk, hybrid, initramfs, GuestConfig, AGENT_PORT, GUEST_CID};
use crate::{AgentStream, Runtime, RuntimeError, Session, SessionSpec};

const RUNTIME: &str = "qemu";

/// The hostname of every guest.
pub const GUEST_HOSTNAME: &str = "hpcc";

/// Kernel settings for emulated guests: under TCG the kernel's timer calibration against the
/// PIT sometimes fails and the boot then hangs, so the TSC rate and loop count are given and
/// the timer check is skipped (they only affect delay loops, not what a job computes).
pub const TCG_KERNEL_ARGS: &str = "lpj=2000000 tsc_early_khz=2000000 no_timer_check";

/// How QEMU accelerates guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (`/dev/kvm`).
    Kvm,
    /// Software emulation: slow, but runs anywhere.
    Tcg,
}

/// How the QEMU runtime is set up on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// The guest.
    pub guest: GuestConfig,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// `vhost-device-vsock` (`cargo install vhost-device-vsock`).
    pub vhost_vsock: PathBuf,
    /// The accelerator.
    pub accel: Accel,
}

/// The QEMU microVM runtime.
#[derive(Debug)]
pub struct QemuRuntime {
    config: QemuConfig,
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

impl QemuRuntime {
    /// Checks the binaries and the kernel, and writes the initramfs.
    pub fn new(config: QemuConfig) -> Result<QemuRuntime, RuntimeError> {
        let unavailable = |reason: String| RuntimeError::Unavailable {
            runtime: RUNTIME,
            reason,
        };
        for (what, path) in [
            ("QEMU", &config.qemu),
            ("vhost-device-vsock", &config.vhost_vsock),
        ] {
            if find_program(path).is_none() {
                return Err(unavailable(format!(
                    "{what} binary {} not found",
                    path.display()
                )));
            }
        }
        if !config.guest.kernel.is_file() {
            return Err(unavailable(format!(
                "guest kernel {} not found",
                config.guest.kernel.display()
            )));
        }
        if config.accel == Accel::Kvm
            && std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_err()
        {
            return Err(unavailable(
                "accel = kvm but /dev/kvm cannot be opened (use accel = tcg)".into(),
            ));
        }
        let initramfs = initramfs::write(&config.guest, "qemu").map_err(unavailable)?;
        Ok(QemuRuntime {
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

    /// QEMU's command line for a session in `dir`.
    fn qemu_command(&self, spec: &SessionSpec, dir: &Path, root_disk: &Path) -> Command {
        let guest = &self.config.guest;
        let boot_args = super::kernel_command_line(
            spec,
            GUEST_HOSTNAME,
            match self.config.accel {
                Accel::Kvm => "",
                Accel::Tcg => TCG_KERNEL_ARGS,
            },
        );
        microvm_command(&MicrovmGuest {
            qemu: &self.config.qemu,
            kernel: &guest.kernel,
            initrd: &self.initramfs,
            boot_args: &boot_args,
            root_disk,
            root_read_only: true,
            vhost_socket: &dir.join("vhost.sock"),
            serial: Serial::File(&dir.join("console.log")),
            vcpus: guest.vcpus,
            memory_mib: guest.memory_mib,
            accel: self.config.accel,
        })
    }
}

/// Where a guest's serial console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serial<'a> {
    /// Into this file (created or truncated).
    File(&'a Path),
    /// To QEMU's own standard output, as Firecracker does with its guest's console.
    Stdout,
}

/// Everything QEMU's command line for a `microvm` guest is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MicrovmGuest<'a> {
    /// `qemu-system-x86_64`.
    pub qemu: &'a Path,
    /// The guest kernel.
    pub kernel: &'a Path,
    /// The initramfs.
    pub initrd: &'a Path,
    /// The whole kernel command line.
    pub boot_args: &'a str,
    /// The root disk (raw), the guest's `/dev/vda`.
    pub root_disk: &'a Path,
    /// Whether the guest may not write the root disk.
    pub root_read_only: bool,
    /// The vhost-user control socket of the vsock backend (`vhost-device-vsock --socket`).
    pub vhost_socket: &'a Path,
    /// Where the serial console goes.
    pub serial: Serial<'a>,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// The accelerator.
    pub accel: Accel,
}

/// QEMU's command for a `microvm` guest with no NIC: the kernel and initramfs, the root disk as
/// virtio-blk, vsock through vhost-user on shared memory (vhost-user needs it). The `qemu`
/// runtime and the Firecracker test double both launch guests with it, so they boot the same
/// machine.
pub fn microvm_command(guest: &MicrovmGuest<'_>) -> Command {
    let memory = format!("{}M", guest.memory_mib);
    let mut command = Command::new(guest.qemu);
    command
        .arg("-M")
        .arg("microvm,x-option-roms=off,isa-serial=on,memory-backend=mem")
        .arg("-object")
        .arg(format!(
            "memory-backend-memfd,id=mem,size={memory},share=on"
        ))
        .args(["-m", &memory])
        .args(["-smp", &guest.vcpus.to_string()]);
    match guest.accel {
        Accel::Kvm => command.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => command.args(["-accel", "tcg", "-cpu", "max"]),
    };
    command
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-nic", "none"])
        .arg("-serial");
    match guest.serial {
        Serial::File(path) => command.arg(file_arg(path)),
        Serial::Stdout => command.arg("stdio"),
    };
    command
        .arg("-kernel")
        .arg(guest.kernel)
        .arg("-initrd")
        .arg(guest.initrd)
        .arg("-append")
        .arg(guest.boot_args)
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none,readonly={}",
            escape_option(guest.root_disk),
            if guest.root_read_only { "on" } else { "off" }
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=vsock,path={}",
            escape_option(guest.vhost_socket)
        ))
        .args(["-device", "vhost-user-vsock-device,chardev=vsock"]);
    command
}

/// A path as a QEMU option value (commas doubled).
fn escape_option(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

fn file_arg(path: &Path) -> String {
    format!("file:{}", path.to_string_lossy())
}

/// `path` itself if it has a slash, else where `PATH` finds it.
pub(crate) fn find_program(path: &Path) -> Option<PathBuf> {
    if path.components().count() > 1 {
        return path.is_file().then(|| path.to_owned());
    }
    let search = std::env::var_os("PATH")?;
    std::env::split_paths(&search)
        .map(|dir| dir.join(path))
        .find(|candidate| candidate.is_file())
}

fn log_file(path: &Path) -> Result<std::fs::File, RuntimeError> {
    std::fs::File::create(path).map_err(start_error(format!("creating {}", path.display())))
}

#[async_trait]
impl Runtime for QemuRuntime {
    fn name(&self) -> &'static str {
        RUNTIME
    }

    async fn start(&self, spec: &SessionSpec) -> Result<Box<dyn Session>, RuntimeError> {
        let root_disk = self.root_disk(spec).await?;
        let id = super::session_id("vm", &spec.tenant);
        let dir = self.config.guest.state_dir.join("sessions").join(&id);
        let vhost_socket = dir.join("vhost.sock");
        let vsock_socket = dir.join("vsock.sock");
        if vhost_socket.as_os_str().len() > 107 {
            return Err(start_error(format!(
                "socket path {}",
                vhost_socket.display()
            ))(io::Error::new(
                io::ErrorKind::InvalidInput,
                "longer than a Unix socket path may be",
            )));
        }
        std::fs::create_dir_all(&dir)
            .map_err(start_error(format!("creating {}", dir.display())))?;
        let mut session = QemuSession {
            id,
            dir: dir.clone(),
            vsock_socket: vsock_socket.clone(),
            qemu: Mutex::new(None),
            backend: None,
        };
        let mut backend = Command::new(&self.config.vhost_vsock);
        crate::kill_with_parent(&mut backend);
        let backend = backend
            .arg("--guest-cid")
            .arg(GUEST_CID.to_string())
            .arg("--socket")
            .arg(&vhost_socket)
            .arg("--uds-path")
            .arg(&vsock_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&dir.join("vsock.log"))?)
            .kill_on_drop(true)
            .spawn()
            .map_err(start_error(format!(
                "starting {}",
                self.config.vhost_vsock.display()
            )))?;
        session.backend = Some(backend);
        let deadline = Instant::now() + self.config.guest.boot_timeout;
        while !vhost_socket.exists() {
            if Instant::now() > deadline || session.backend_exited() {
                return Err(start_error("waiting for vhost-device-vsock's socket")(
                    io::Error::other(super::tail(&dir.join("vsock.log"), 2000)),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut qemu = self.qemu_command(spec, &dir, &root_disk);
        crate::kill_with_parent(&mut qemu);
        let qemu = qemu
            .stdin(Stdio::null())
            .stdout(log_file(&dir.join("qemu.log"))?)
            .stderr(log_file(&dir.join("qemu.err"))?)
            .kill_on_drop(true)
            .spawn()
            .map_err(start_error(format!(
                "starting {}",
                self.config.qemu.display()
            )))?;
        *session.qemu.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(qemu);
        loop {
            if !session.is_alive() {
                return Err(start_error("booting the guest")(io::Error::other(format!(
                    "QEMU exited; {}; console: {}",
                    super::tail(&dir.join("qemu.err"), 1000),
                    super::tail(&dir.join("console.log"), 2000)
                ))));
            }
            match hybrid::connect(&vsock_socket, AGENT_PORT).await {
                Ok(_probe) => break,
                Err(error) if Instant::now() > deadline => {
                    return Err(start_error(format!(
                        "waiting {} s for the guest's agent",
                        self.config.guest.boot_timeout.as_secs()
                    ))(io::Error::other(format!(
                        "{error}; console: {}",
                        super::tail(&dir.join("console.log"), 2000)
                    ))));
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        tracing::info!(session = %session.id, image = %spec.image_digest, "qemu guest up");
        Ok(Box::new(session))
    }
}

/// A running guest.
#[derive(Debug)]
struct QemuSession {
    id: String,
    dir: PathBuf,
    vsock_socket: PathBuf,
    qemu: Mutex<Option<Child>>,
    backend: Option<Child>,
}

impl QemuSession {
    fn backend_exited(&mut self) -> bool {
        match self.backend.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }
}

#[async_trait]
impl Session for QemuSession {
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
        let mut guard = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    async fn stop(mut self: Box<Self>) -> Result<(), RuntimeError> {
        let qemu = self
            .qemu
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for mut child in qemu.into_iter().chain(self.backend.take()) {
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

impl Drop for QemuSession {
    fn drop(&mut self) {
        // Children are killed by `kill_on_drop`; the directory goes too if `stop` did not run.
        if self.dir.exists() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for QemuRuntime {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.initramfs);
    }
}
