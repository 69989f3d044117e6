//! The `qemu` runtime: each session is a QEMU `microvm` guest with no NIC, which can be
//! snapshotted to files and restored from them.
//!
//! Starting a session ([`QemuRuntime::start`]):
//! 1. The image's root disk is built if this host has not built it before ([`super::disk`]).
//! 2. A session directory `<state_dir>/sessions/<id>/` (jailed: the jail root, below) gets `port-<n>.sock` (the agent's
//!    virtio-serial ports, [`AGENT_PORTS`] of them: one job per connection, so that many jobs
//!    at once), `qmp.sock` (QEMU's control socket), `console.log` (the guest's serial
//!    console: kernel and agent messages), `qemu.log` and `qemu.err`.
//! 3. QEMU boots the kernel with the initramfs (the agent as `/init`), the root disk
//!    read-only as virtio-blk, and a virtio-serial device. `-nodefaults -nic none`: the guest
//!    has no network device at all.
//! 4. `start` returns once the agent answers on a port ([`super::serial`]).
//!
//! Why virtio-serial and not vsock: QEMU 7.2 refuses to migrate a guest with a
//! `vhost-user-vsock-device` ("State blocked by non-migratable device ... vhost-user-vsock";
//! `vhost-device-vsock` also lacks the dirty-log feature migration needs), and a snapshot is a
//! migration. virtio-serial ports on Unix-socket chardevs migrate, need no backend process,
//! and carry the same `hpcc.agent.v1` connections.
//!
//! Snapshots ([`Session::snapshot`]): over QMP the guest is stopped and migrated to a Unix
//! socket the runtime listens on, which it streams into `<dir>/memory`; `<dir>/snapshot.json`
//! records what a restore must match (the runtime's [`Runtime::snapshot_identity`], the image,
//! the kernel command line, the root disk's digest). QEMU is then killed and the session
//! directory removed. [`Runtime::restore`] starts QEMU with the same devices and `-incoming`,
//! streams the file in (QEMU is never given a file or a shell command, so a jailed VMM needs
//! neither), resumes the guest with `cont` and returns once the agent answers a new connection
//! (connections from before the snapshot are gone with the old QEMU; the agent only listens).
//! `snapshot.json` carries a `format` (1); a snapshot of another format is not restored.
//!
//! [`Session::stop`] kills QEMU and removes the session directory; dropping a session kills
//! QEMU too (`kill_on_drop`), and QEMU dies with the worker (`PR_SET_PDEATHSIG`) if it is
//! killed outright.
//!
//! **Jailed** ([`QemuConfig::jail`], the production setting): QEMU runs in the session's jail
//! ([`super::jail`]): its own namespaces, uid, cgroup and seccomp allow-list, `pivot_root`ed
//! into `<state_dir>/jails/<id>/root`, which holds QEMU and its libraries, the `microvm`
//! firmware (and, under TCG, QEMU's TCG module if it is built as one), and bound read-only the
//! kernel (`/kernel`), the initramfs (`/initramfs.cpio`) and the root disk (`/root.ext4`).
//! QEMU's command line names only those paths and its sockets at the root (`/port-<n>.sock`,
//! `/qmp.sock`, `/incoming.sock`), which it creates there; the worker reaches them by their
//! host paths under the jail root. For a snapshot the worker listens on `<root>/migrate.sock`
//! (owned by the jail's uid, so QEMU may connect) and QEMU migrates to `unix:/migrate.sock`;
//! a restore starts a fresh jail (a new uid and cgroup) with `-incoming unix:/incoming.sock`.
//! The console goes to QEMU's standard output, which is `<state_dir>/jails/<id>/console.log`,
//! beside `qemu.err`, outside the root. Stop removes the jail directory and the cgroup once
//! QEMU is gone and returns the uid.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::jail::{self, Jail, JailConfig, JailedProgram, Jailer, Profile, Spawned};
use super::qmp::Qmp;
use super::serial::{self, Ports};
use super::{disk, initramfs, GuestConfig};
use crate::session;
use crate::{AgentStream, Runtime, RuntimeError, Session, SessionSpec};

const RUNTIME: &str = "qemu";

/// The hostname of every guest.
pub const GUEST_HOSTNAME: &str = "hpcc";

/// Kernel settings for emulated guests: under TCG the kernel's timer calibration against the
/// PIT sometimes fails and the boot then hangs, so the TSC rate and loop count are given and
/// the timer check is skipped (they only affect delay loops, not what a job computes).
pub const TCG_KERNEL_ARGS: &str = "lpj=2000000 tsc_early_khz=2000000 no_timer_check";

/// Agent ports per guest for jobs: the most jobs one session runs at once.
pub const AGENT_PORTS: u32 = 8;

/// One more port, after the job ports, only for health checks ([`Session::ping`]), so a
/// session busy with [`AGENT_PORTS`] jobs still answers them.
const HEALTH_PORT: u32 = AGENT_PORTS;

/// Every port of a guest: the job ports and the health port.
const ALL_PORTS: u32 = AGENT_PORTS + 1;

/// What QEMU itself takes besides guest RAM, for [`Runtime::session_memory`]: its code, heap
/// and device state, rounded up from what `bench/vm-session.sh` measured (see
/// `docs/BENCHMARKS.md`, "MicroVM sessions"). Under TCG add [`TCG_CACHE_MIB`].
pub const VMM_OVERHEAD_MIB: u64 = 64;

/// TCG's translation cache, MiB. QEMU 7.2 sizes it at 1 GiB by default for system emulation
/// (allocated as it fills), which would make an emulated guest's memory unbounded for the
/// pool's accounting; gcc's code fits well within this.
pub const TCG_CACHE_MIB: u64 = 128;

/// How long a connection waits for a free agent port.
const PORT_WAIT: Duration = Duration::from_secs(60);

/// How long a running agent may take to answer a new connection.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// How long saving or loading a snapshot's memory may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

/// The snapshot's metadata file in a snapshot directory.
pub const SNAPSHOT_METADATA: &str = "snapshot.json";

/// The snapshot's memory (QEMU's migration stream) in a snapshot directory.
pub const SNAPSHOT_MEMORY: &str = "memory";

/// QEMU's control socket, in the session directory or jail root.
const QMP_SOCKET: &str = "qmp.sock";

/// Where a restoring QEMU listens for the migration stream (`-incoming`).
const INCOMING_SOCKET: &str = "incoming.sock";

/// Where the worker listens for a snapshot's migration stream.
const MIGRATE_SOCKET: &str = "migrate.sock";

/// The version of [`SNAPSHOT_METADATA`]'s layout.
const SNAPSHOT_FORMAT: u32 = 1;

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
    /// The accelerator.
    pub accel: Accel,
    /// How QEMU is jailed; `None` runs it as the worker's user in the host's namespaces
    /// (tests, and hosts that cannot jail).
    pub jail: Option<JailConfig>,
}

/// The QEMU microVM runtime.
#[derive(Debug)]
pub struct QemuRuntime {
    config: QemuConfig,
    initramfs: PathBuf,
    disks: disk::RootDisks,
    identity: String,
    jailed: Option<Jailed>,
}

/// What a jailed runtime needs besides the configuration.
#[derive(Debug)]
struct Jailed {
    jailer: Jailer,
    /// QEMU, found on `PATH`.
    qemu: PathBuf,
    /// The `microvm` firmware, `(host file, where QEMU looks for it)`.
    firmware: (PathBuf, PathBuf),
    /// QEMU's TCG module and the libraries it needs, `(host file, path inside)`, for
    /// `accel = tcg` with a QEMU that builds its accelerators as modules (Debian's does).
    tcg_module: Vec<(PathBuf, PathBuf)>,
}

/// The firmware QEMU loads for the `microvm` machine.
const MICROVM_FIRMWARE: &str = "bios-microvm.bin";

/// Where `qemu` looks for its firmware: `../share/qemu` beside its binary (QEMU finds its data
/// relative to itself), then the usual install prefixes. Returns `(host file, path as QEMU
/// opens it)`, the first being the second with symlinks resolved.
fn find_firmware(qemu: &Path) -> Option<(PathBuf, PathBuf)> {
    let beside = qemu
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("share/qemu").join(MICROVM_FIRMWARE));
    beside
        .into_iter()
        .chain(
            ["/usr/share/qemu", "/usr/local/share/qemu"]
                .iter()
                .map(|dir| Path::new(dir).join(MICROVM_FIRMWARE)),
        )
        .find_map(|path| Some((std::fs::canonicalize(&path).ok()?, path)))
}

/// QEMU's TCG accelerator when built as a loadable module.
const TCG_MODULE: &str = "accel-tcg-x86_64.so";

/// QEMU's TCG module, looked for where QEMU looks (`../lib/<multiarch>/qemu` beside its
/// binary, or `../lib/qemu`), and the libraries it loads, as `(host file, path inside)`; empty
/// if QEMU has TCG built in.
fn find_tcg_module(qemu: &Path) -> io::Result<Vec<(PathBuf, PathBuf)>> {
    let Some(prefix) = qemu.parent().and_then(Path::parent) else {
        return Ok(Vec::new());
    };
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    let candidates = [
        prefix
            .join("lib")
            .join(multiarch)
            .join("qemu")
            .join(TCG_MODULE),
        prefix.join("lib/qemu").join(TCG_MODULE),
        prefix.join("lib64/qemu").join(TCG_MODULE),
    ];
    let Some(module) = candidates.into_iter().find(|path| path.is_file()) else {
        return Ok(Vec::new());
    };
    let mut files = vec![(std::fs::canonicalize(&module)?, module.clone())];
    for library in jail::libs::needed(&module)? {
        files.push((std::fs::canonicalize(&library)?, library));
    }
    Ok(files)
}

/// Paths inside a jail: the guest's files.
const JAILED_KERNEL: &str = "/kernel";
const JAILED_INITRAMFS: &str = "/initramfs.cpio";
const JAILED_ROOT_DISK: &str = "/root.ext4";

fn start_error(step: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let step = step.into();
    move |source| RuntimeError::Start {
        runtime: RUNTIME,
        step,
        source,
    }
}

/// What `<dir>/snapshot.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotMetadata {
    format: u32,
    /// [`Runtime::snapshot_identity`] of the runtime that took it.
    identity: String,
    /// The image (`sha256:<hex>`).
    image_digest: String,
    /// The kernel command line the guest booted with (the agent's settings, the limits).
    boot_args: String,
    /// BLAKE3 of the root disk the guest had mounted ([`disk::digest`]).
    root_disk_digest: String,
    /// The length of [`SNAPSHOT_MEMORY`].
    memory_bytes: u64,
}

impl QemuRuntime {
    /// Checks the binaries and the kernel, writes the initramfs, and works out the
    /// snapshot identity.
    pub fn new(config: QemuConfig) -> Result<QemuRuntime, RuntimeError> {
        let unavailable = |reason: String| RuntimeError::Unavailable {
            runtime: RUNTIME,
            reason,
        };
        let Some(qemu) = find_program(&config.qemu) else {
            return Err(unavailable(format!(
                "QEMU binary {} not found",
                config.qemu.display()
            )));
        };
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
        let version = std::process::Command::new(&qemu)
            .arg("--version")
            .output()
            .map_err(|error| {
                unavailable(format!("running {} --version: {error}", qemu.display()))
            })?;
        let version = String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let jailed = match &config.jail {
            None => None,
            Some(settings) => {
                let jailer =
                    Jailer::new(settings.clone(), &config.guest.state_dir).map_err(&unavailable)?;
                let qemu = std::path::absolute(&qemu)
                    .map_err(|error| unavailable(format!("{}: {error}", qemu.display())))?;
                let firmware = find_firmware(&qemu).ok_or_else(|| {
                    unavailable(format!(
                        "the microvm firmware {MICROVM_FIRMWARE} of {} not found",
                        qemu.display()
                    ))
                })?;
                let tcg_module = match config.accel {
                    Accel::Tcg => find_tcg_module(&qemu)
                        .map_err(|error| unavailable(format!("QEMU's TCG module: {error}")))?,
                    Accel::Kvm => Vec::new(),
                };
                Some(Jailed {
                    jailer,
                    qemu,
                    firmware,
                    tcg_module,
                })
            }
        };
        let initramfs = initramfs::write(&config.guest, "qemu").map_err(unavailable)?;
        let digest = |path: &Path| -> Result<String, RuntimeError> {
            std::fs::read(path)
                .map(|bytes| blake3::hash(&bytes).to_hex().to_string())
                .map_err(|error| unavailable(format!("reading {}: {error}", path.display())))
        };
        let identity = format!(
            "{version}; kernel blake3:{}; initramfs blake3:{}; {} vcpus, {} MiB, {:?}, {AGENT_PORTS} ports",
            digest(&config.guest.kernel)?,
            digest(&initramfs)?,
            config.guest.vcpus,
            config.guest.memory_mib,
            config.accel,
        );
        Ok(QemuRuntime {
            config,
            initramfs,
            disks: disk::RootDisks::default(),
            identity,
            jailed,
        })
    }

    /// The root disk of `spec`'s image.
    async fn root_disk(&self, spec: &SessionSpec) -> Result<PathBuf, RuntimeError> {
        self.disks
            .get(RUNTIME, &self.config.guest.state_dir, spec)
            .await
    }

    /// The kernel command line of a guest for `spec`.
    fn boot_args(&self, spec: &SessionSpec) -> String {
        let command_line = super::kernel_command_line(
            spec,
            GUEST_HOSTNAME,
            match self.config.accel {
                Accel::Kvm => "",
                Accel::Tcg => TCG_KERNEL_ARGS,
            },
        );
        command_line.replace(
            &format!("--listen vsock:{}", super::AGENT_PORT),
            &format!("--listen serial:{ALL_PORTS}"),
        )
    }

    /// Creates a session directory (or jail) and starts QEMU in it: booting, or with
    /// `incoming`, waiting for a migration stream on its incoming socket.
    fn launch(
        &self,
        spec: &SessionSpec,
        boot_args: &str,
        root_disk: &Path,
        incoming: bool,
    ) -> Result<QemuSession, RuntimeError> {
        let id = super::session_id("vm", &spec.tenant);
        let guest = &self.config.guest;
        let jail = match &self.jailed {
            Some(jailed) => Some(
                jailed
                    .jailer
                    .create(&id, &jailed.jailer.limits(guest.memory_mib, guest.vcpus))
                    .map_err(start_error(format!("creating the jail of {id}")))?,
            ),
            None => None,
        };
        // An unjailed session keeps everything in its session directory; a jailed one its
        // sockets in the jail root (`sock_dir`, which QEMU sees as `/`) and its logs beside it.
        // On failure below, `jail` (or later the session) is dropped and removes it all.
        let (dir, sock_dir) = match &jail {
            Some(jail) => (jail.dir().to_owned(), jail.root().to_owned()),
            None => {
                let dir = guest.state_dir.join("sessions").join(&id);
                (dir.clone(), dir)
            }
        };
        let longest = serial::socket_path(&sock_dir, ALL_PORTS - 1);
        if longest.as_os_str().len() > 107 {
            return Err(start_error(format!("socket path {}", longest.display()))(
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "longer than a Unix socket path may be",
                ),
            ));
        }
        std::fs::create_dir_all(&dir)
            .map_err(start_error(format!("creating {}", dir.display())))?;
        let mut session = QemuSession {
            id,
            dir: dir.clone(),
            sock_dir: sock_dir.clone(),
            ports: Ports::new(&sock_dir, AGENT_PORTS),
            health: Ports::range(&sock_dir, HEALTH_PORT, 1),
            qemu: Mutex::new(None),
            saved: Saved {
                identity: self.identity.clone(),
                image_digest: spec.image_digest.clone(),
                boot_args: boot_args.to_owned(),
                root_disk: root_disk.to_owned(),
            },
            jail,
        };
        // The files and sockets as QEMU names them: inside its jail, or on the host.
        let jailed = self.jailed.as_ref().filter(|_| session.jail.is_some());
        let (kernel, initrd, disk, qemu_sock_dir) = match jailed {
            Some(_) => (
                PathBuf::from(JAILED_KERNEL),
                PathBuf::from(JAILED_INITRAMFS),
                PathBuf::from(JAILED_ROOT_DISK),
                PathBuf::from("/"),
            ),
            None => (
                guest.kernel.clone(),
                self.initramfs.clone(),
                root_disk.to_owned(),
                sock_dir.clone(),
            ),
        };
        let console = dir.join("console.log");
        let arguments = microvm_command(&MicrovmGuest {
            qemu: &self.config.qemu,
            kernel: &kernel,
            initrd: &initrd,
            boot_args,
            root_disk: &disk,
            root_read_only: true,
            agent: AgentDevice::Serial {
                dir: &qemu_sock_dir,
                ports: ALL_PORTS,
            },
            // Jailed, QEMU cannot open a file outside its root: its standard output is the
            // console log.
            serial: match jailed {
                Some(_) => Serial::Stdout,
                None => Serial::File(&console),
            },
            vcpus: guest.vcpus,
            memory_mib: guest.memory_mib,
            accel: self.config.accel,
        });
        let qmp_argument = format!(
            "unix:{},server=on,wait=off",
            escape_option(&qemu_sock_dir.join(QMP_SOCKET))
        );
        let incoming_argument = format!("unix:{}", qemu_sock_dir.join(INCOMING_SOCKET).display());
        let (binary, files) = match jailed {
            Some(jailed) => (
                jailed.qemu.clone(),
                [
                    (guest.kernel.clone(), kernel.clone()),
                    (self.initramfs.clone(), initrd.clone()),
                    (root_disk.to_owned(), disk.clone()),
                    jailed.firmware.clone(),
                ]
                .into_iter()
                .chain(jailed.tcg_module.iter().cloned())
                .collect(),
            ),
            None => (self.config.qemu.clone(), Vec::new()),
        };
        let stdout = match jailed {
            Some(_) => log_file(&console)?,
            None => log_file(&dir.join("qemu.log"))?,
        };
        let stderr = log_file(&dir.join("qemu.err"))?;
        let qemu = jail::spawn(
            session.jail.as_ref(),
            &JailedProgram {
                binary: &binary,
                files: &files,
                kvm: self.config.accel == Accel::Kvm,
                profile: Profile::Qemu,
            },
            |command| {
                command.args(arguments.as_std().get_args());
                command.arg("-qmp").arg(&qmp_argument);
                if incoming {
                    command.arg("-incoming").arg(&incoming_argument);
                }
                command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
            },
        )
        .map_err(start_error(format!(
            "starting {}",
            self.config.qemu.display()
        )))?;
        *session.qemu.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(qemu);
        Ok(session)
    }

    /// Waits until the agent of `session` answers on a port, or QEMU exits, or `deadline`.
    async fn wait_for_agent(
        &self,
        session: &QemuSession,
        deadline: Instant,
        what: &str,
    ) -> Result<(), RuntimeError> {
        let dir = &session.dir;
        loop {
            if !session.is_alive() {
                return Err(start_error(what)(io::Error::other(format!(
                    "QEMU exited; {}; console: {}",
                    super::tail(&dir.join("qemu.err"), 1000),
                    super::tail(&dir.join("console.log"), 2000)
                ))));
            }
            let attempt =
                Duration::from_secs(2).min(deadline.saturating_duration_since(Instant::now()));
            match session.ports.connect(PORT_WAIT, attempt).await {
                Ok(_probe) => return Ok(()),
                Err(error) if Instant::now() >= deadline => {
                    return Err(start_error(format!(
                        "{what}: waiting {} s for the guest's agent",
                        self.config.guest.boot_timeout.as_secs()
                    ))(io::Error::other(format!(
                        "{error}; console: {}",
                        super::tail(&dir.join("console.log"), 2000)
                    ))));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Streams `memory` into the QEMU of `session` (started with `incoming`) and resumes the
    /// guest.
    async fn load(&self, session: &QemuSession, memory: &Path) -> io::Result<()> {
        let socket = session.sock_dir.join(INCOMING_SOCKET);
        let deadline = Instant::now() + self.config.guest.boot_timeout;
        let stream = loop {
            match tokio::net::UnixStream::connect(&socket).await {
                Ok(stream) => break stream,
                Err(error) if Instant::now() >= deadline || !session.is_alive() => {
                    return Err(io::Error::new(
                        error.kind(),
                        format!("QEMU's incoming socket {}: {error}", socket.display()),
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let file = std::fs::File::open(memory)?;
        // QEMU may reject the stream early (it closes the socket): that error is QEMU's to
        // tell, so a failed copy is reported by the status check below. The copy is a plain
        // blocking one on another thread, where the kernel moves the bytes (`std::io::copy`
        // splices a file into a socket), rather than tokio's file reads of a few KiB, each a
        // hop to the blocking pool.
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        let copied = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let mut stream = stream;
            let copied = std::io::copy(&mut file, &mut stream);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            copied
        })
        .await
        .unwrap_or_else(|error| Err(io::Error::other(error)));
        let mut qmp = Qmp::connect(&session.sock_dir.join(QMP_SOCKET)).await?;
        let deadline = Instant::now() + MIGRATION_TIMEOUT;
        loop {
            let status = qmp.execute("query-status", None).await?;
            match status.get("status").and_then(|status| status.as_str()) {
                Some("inmigrate") if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Some("paused") | Some("prelaunch") => break,
                Some("running") => return Ok(()),
                other => {
                    return Err(io::Error::other(format!(
                        "QEMU did not load the snapshot (status {other:?}; copying: {copied:?})"
                    )))
                }
            }
        }
        copied?;
        qmp.execute("cont", None).await?;
        Ok(())
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

/// The device the host reaches a guest's agent through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentDevice<'a> {
    /// vsock through vhost-user, on shared memory: the control socket of the backend
    /// (`vhost-device-vsock --socket`). Cannot migrate.
    VhostVsock(&'a Path),
    /// A virtio-serial device with `ports` ports `hpcc.agent.<n>`, each on a listening Unix
    /// socket [`serial::socket_path`] in `dir`.
    Serial {
        /// Where the port sockets are.
        dir: &'a Path,
        /// How many.
        ports: u32,
    },
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
    /// How the agent is reached.
    pub agent: AgentDevice<'a>,
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
/// virtio-blk, and the agent's device. The `qemu` runtime and the Firecracker test double both
/// launch guests with it, so they boot the same machine.
pub fn microvm_command(guest: &MicrovmGuest<'_>) -> Command {
    let memory = format!("{}M", guest.memory_mib);
    let mut command = Command::new(guest.qemu);
    match guest.agent {
        // vhost-user needs the guest's memory shared with the backend.
        AgentDevice::VhostVsock(_) => command
            .arg("-M")
            .arg("microvm,x-option-roms=off,isa-serial=on,memory-backend=mem")
            .arg("-object")
            .arg(format!(
                "memory-backend-memfd,id=mem,size={memory},share=on"
            )),
        AgentDevice::Serial { .. } => command
            .arg("-M")
            .arg("microvm,x-option-roms=off,isa-serial=on"),
    };
    command
        .args(["-m", &memory])
        .args(["-smp", &guest.vcpus.to_string()]);
    match guest.accel {
        Accel::Kvm => command.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => command
            .arg("-accel")
            .arg(format!("tcg,tb-size={TCG_CACHE_MIB}"))
            .args(["-cpu", "max"]),
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
        .args(["-device", "virtio-blk-device,drive=root"]);
    match guest.agent {
        AgentDevice::VhostVsock(socket) => command
            .arg("-chardev")
            .arg(format!("socket,id=vsock,path={}", escape_option(socket)))
            .args(["-device", "vhost-user-vsock-device,chardev=vsock"]),
        AgentDevice::Serial { dir, ports } => {
            command.args(["-device", "virtio-serial-device,id=agent"]);
            for index in 0..ports {
                command
                    .arg("-chardev")
                    .arg(format!(
                        "socket,id=port{index},path={},server=on,wait=off",
                        escape_option(&serial::socket_path(dir, index))
                    ))
                    .arg("-device")
                    .arg(format!(
                        "virtserialport,bus=agent.0,chardev=port{index},name={}{index}",
                        serial::PORT_NAME_PREFIX
                    ));
            }
            &mut command
        }
    };
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

/// A snapshot file, created 0600 (it holds a tenant's memory).
fn private_file(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", path.display())))
}

#[async_trait]
impl Runtime for QemuRuntime {
    fn name(&self) -> &'static str {
        RUNTIME
    }

    async fn start(&self, spec: &SessionSpec) -> Result<Box<dyn Session>, RuntimeError> {
        let root_disk = self.root_disk(spec).await?;
        let deadline = Instant::now() + self.config.guest.boot_timeout;
        let session = self.launch(spec, &self.boot_args(spec), &root_disk, false)?;
        // On failure the session is dropped: QEMU killed, its directory removed.
        self.wait_for_agent(&session, deadline, "booting the guest")
            .await?;
        tracing::info!(session = %session.id, image = %spec.image_digest, "qemu guest up");
        Ok(Box::new(session))
    }

    fn session_memory(&self) -> u64 {
        let tcg = match self.config.accel {
            Accel::Kvm => 0,
            Accel::Tcg => TCG_CACHE_MIB,
        };
        (u64::from(self.config.guest.memory_mib) + VMM_OVERHEAD_MIB + tcg) << 20
    }

    fn snapshot_identity(&self) -> Option<String> {
        Some(self.identity.clone())
    }

    async fn restore(
        &self,
        spec: &SessionSpec,
        dir: &Path,
    ) -> Result<Box<dyn Session>, RuntimeError> {
        let restore_error = |what: String| {
            let dir = dir.display().to_string();
            move |source: io::Error| RuntimeError::Start {
                runtime: RUNTIME,
                step: format!("restoring the snapshot in {dir}: {what}"),
                source,
            }
        };
        let metadata_path = dir.join(SNAPSHOT_METADATA);
        let metadata: SnapshotMetadata = std::fs::read(&metadata_path)
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(io::Error::other))
            .map_err(restore_error(format!("reading {SNAPSHOT_METADATA}")))?;
        let mismatch = |what: &str, recorded: &str, here: &str| {
            restore_error(format!("it was taken with another {what}"))(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("recorded {recorded:?}, here {here:?}"),
            ))
        };
        if metadata.format != SNAPSHOT_FORMAT {
            return Err(mismatch(
                "metadata format",
                &metadata.format.to_string(),
                &SNAPSHOT_FORMAT.to_string(),
            ));
        }
        if metadata.identity != self.identity {
            return Err(mismatch("runtime", &metadata.identity, &self.identity));
        }
        if metadata.image_digest != spec.image_digest {
            return Err(mismatch(
                "image",
                &metadata.image_digest,
                &spec.image_digest,
            ));
        }
        let boot_args = self.boot_args(spec);
        if metadata.boot_args != boot_args {
            return Err(mismatch(
                "kernel command line",
                &metadata.boot_args,
                &boot_args,
            ));
        }
        let memory = dir.join(SNAPSHOT_MEMORY);
        let length = std::fs::metadata(&memory)
            .map_err(restore_error(format!("reading {}", memory.display())))?
            .len();
        if length != metadata.memory_bytes {
            return Err(restore_error(format!("checking {}", memory.display()))(
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{length} bytes, but {} were saved (truncated?)",
                        metadata.memory_bytes
                    ),
                ),
            ));
        }
        let root_disk = self.root_disk(spec).await?;
        let disk_digest = {
            let root_disk = root_disk.clone();
            tokio::task::spawn_blocking(move || disk::digest(&root_disk))
                .await
                .unwrap_or_else(|error| Err(io::Error::other(error)))
        }
        .map_err(restore_error(format!("hashing {}", root_disk.display())))?;
        if metadata.root_disk_digest != disk_digest {
            return Err(mismatch(
                "root disk",
                &metadata.root_disk_digest,
                &disk_digest,
            ));
        }
        let deadline = Instant::now() + self.config.guest.boot_timeout;
        let session = self.launch(spec, &boot_args, &root_disk, true)?;
        if let Err(error) = self.load(&session, &memory).await {
            let error = io::Error::new(
                error.kind(),
                format!(
                    "{error}; QEMU: {}",
                    super::tail(&session.dir.join("qemu.err"), 1000)
                ),
            );
            return Err(restore_error(format!("loading {}", memory.display()))(
                error,
            ));
        }
        self.wait_for_agent(&session, deadline, "resuming the guest")
            .await?;
        tracing::info!(session = %session.id, image = %spec.image_digest, "qemu guest restored");
        Ok(Box::new(session))
    }
}

/// What a snapshot of a session records.
#[derive(Debug, Clone)]
struct Saved {
    identity: String,
    image_digest: String,
    boot_args: String,
    root_disk: PathBuf,
}

/// A running guest.
#[derive(Debug)]
struct QemuSession {
    id: String,
    /// The session directory (unjailed), or the jail directory: the logs.
    dir: PathBuf,
    /// Where the sockets are: `dir`, or the jail root.
    sock_dir: PathBuf,
    ports: Arc<Ports>,
    health: Arc<Ports>,
    /// QEMU, or when jailed the intermediate process waiting for it.
    qemu: Mutex<Option<Spawned>>,
    saved: Saved,
    /// Dropped after `qemu` (field order), so QEMU is killed before its jail is removed.
    jail: Option<Jail>,
}

impl QemuSession {
    /// Stops the guest and migrates it into `<snapshot_dir>/memory`, then writes the
    /// metadata; on failure, removes what it wrote.
    async fn save(&self, snapshot_dir: &Path) -> io::Result<()> {
        let mut entries = std::fs::read_dir(snapshot_dir).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("snapshot directory {}: {error}", snapshot_dir.display()),
            )
        })?;
        if entries.next().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("snapshot directory {} is not empty", snapshot_dir.display()),
            ));
        }
        let saved = self.save_into(snapshot_dir).await;
        if saved.is_err() {
            // Half a snapshot is of no use to anyone: leave the directory as it was given.
            for name in [SNAPSHOT_MEMORY, SNAPSHOT_METADATA] {
                let _ = std::fs::remove_file(snapshot_dir.join(name));
            }
        }
        saved
    }

    async fn save_into(&self, snapshot_dir: &Path) -> io::Result<()> {
        let root_disk = self.saved.root_disk.clone();
        let disk_digest = tokio::task::spawn_blocking(move || disk::digest(&root_disk));
        let memory_path = snapshot_dir.join(SNAPSHOT_MEMORY);
        let memory = private_file(&memory_path)?;
        let mut qmp = Qmp::connect(&self.sock_dir.join(QMP_SOCKET)).await?;
        qmp.execute("stop", None).await?;
        // QEMU's default cap (32 MiB/s) is for live migration over a network; here the guest is
        // stopped and the stream goes to a local file.
        qmp.execute(
            "migrate-set-parameters",
            Some(serde_json::json!({ "max-bandwidth": 8_i64 << 30 })),
        )
        .await?;
        let socket = self.sock_dir.join(MIGRATE_SOCKET);
        let listener = tokio::net::UnixListener::bind(&socket)?;
        // The socket is the worker's; a jailed QEMU (the jail's uid) must be able to connect.
        let uri = match &self.jail {
            Some(jail) => {
                std::os::unix::fs::chown(&socket, Some(jail.uid()), Some(jail.uid()))?;
                format!("unix:/{MIGRATE_SOCKET}")
            }
            None => format!("unix:{}", socket.display()),
        };
        let receive = async move {
            let (stream, _) = listener.accept().await?;
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            // Blocking, on another thread: see `QemuRuntime::load`.
            tokio::task::spawn_blocking(move || {
                let mut memory = memory;
                let mut stream = stream;
                let bytes = std::io::copy(&mut stream, &mut memory)?;
                memory.sync_all()?;
                Ok::<u64, io::Error>(bytes)
            })
            .await
            .unwrap_or_else(|error| Err(io::Error::other(error)))
        };
        let migrate = async {
            qmp.execute("migrate", Some(serde_json::json!({ "uri": uri })))
                .await?;
            loop {
                let state = qmp.execute("query-migrate", None).await?;
                match state.get("status").and_then(|status| status.as_str()) {
                    Some("completed") => return Ok::<(), io::Error>(()),
                    Some("failed") | Some("cancelled") | None => {
                        return Err(io::Error::other(format!(
                            "QEMU's migration failed: {}",
                            state
                                .get("error-desc")
                                .and_then(|text| text.as_str())
                                .unwrap_or("no reason given")
                        )))
                    }
                    Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        };
        let (memory_bytes, ()) = tokio::time::timeout(MIGRATION_TIMEOUT, async {
            tokio::try_join!(receive, migrate)
        })
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("migration not done in {} s", MIGRATION_TIMEOUT.as_secs()),
            )
        })??;
        let metadata = SnapshotMetadata {
            format: SNAPSHOT_FORMAT,
            identity: self.saved.identity.clone(),
            image_digest: self.saved.image_digest.clone(),
            boot_args: self.saved.boot_args.clone(),
            root_disk_digest: disk_digest
                .await
                .unwrap_or_else(|error| Err(io::Error::other(error)))?,
            memory_bytes,
        };
        let text = serde_json::to_vec_pretty(&metadata).map_err(io::Error::other)?;
        let metadata_path = snapshot_dir.join(SNAPSHOT_METADATA);
        let mut file = private_file(&metadata_path)?;
        std::io::Write::write_all(&mut file, &text)?;
        file.sync_all()?;
        Ok(())
    }
}

#[async_trait]
impl Session for QemuSession {
    fn id(&self) -> &str {
        &self.id
    }

    async fn connect(&self) -> Result<Box<dyn AgentStream>, RuntimeError> {
        session::agent_stream(
            &self.id,
            self.ports.connect(PORT_WAIT, ANSWER_TIMEOUT).await,
        )
    }

    async fn ping(&self, timeout: Duration) -> Result<(), RuntimeError> {
        let stream = session::agent_stream(&self.id, self.health.connect(timeout, timeout).await)?;
        crate::agent_client::ping(&self.id, stream).await
    }

    fn is_alive(&self) -> bool {
        session::alive(&self.qemu)
    }

    async fn stop(mut self: Box<Self>) -> Result<(), RuntimeError> {
        let qemu = self
            .qemu
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut qemu) = qemu {
            qemu.kill();
            qemu.wait().await;
        }
        let dir = self.dir.clone();
        let jail = self.jail.take();
        session::off_thread(&self.id, move || match jail {
            // The cgroup, the jail directory (`dir`) and the uid.
            Some(jail) => jail.remove(),
            None => std::fs::remove_dir_all(&dir),
        })
        .await
    }

    fn host_pids(&self) -> Vec<u32> {
        let guard = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
        guard.iter().filter_map(Spawned::pid).collect()
    }

    async fn snapshot(self: Box<Self>, dir: &Path) -> Result<(), RuntimeError> {
        let saved = self.save(dir).await;
        let id = self.id.clone();
        let stopped = self.stop().await;
        if let Err(error) = saved {
            return Err(RuntimeError::Io {
                session: id,
                source: io::Error::new(
                    error.kind(),
                    format!("snapshot into {}: {error}", dir.display()),
                ),
            });
        }
        stopped
    }
}

impl Drop for QemuSession {
    fn drop(&mut self) {
        // QEMU is killed here (and by `kill_on_drop`); the jail removes itself when dropped after
        // this; an unjailed session's directory goes too if `stop` did not run.
        if let Some(qemu) = self
            .qemu
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            qemu.kill();
        }
        if self.jail.is_none() && self.dir.exists() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for QemuRuntime {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.initramfs);
    }
}
