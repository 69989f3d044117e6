//! The VMM jail: what Firecracker's `jailer` does, for the host process of a microVM session
//! (QEMU, or the `firecracker` binary run directly; under Firecracker's own `jailer`, set by
//! `[vm.jailer]`, this jail is not applied on top).
//!
//! A guest is the boundary between tenants; the jail is the second wall, for a VMM that a
//! guest has broken into. Each jailed process
//! - joins its session's **cgroup** (memory, CPU and pids capped; [`cgroup`], v2 or v1 as the
//!   host runs them, like the jailer's `--cgroup-version`) before anything else, so a guest
//!   that exhausts its memory gets its VMM killed by the kernel's OOM killer, not the host;
//! - gets **its own mount, PID, network, IPC and UTS namespaces**: the network namespace has
//!   no interface but a `lo` that is down, and the VMM is PID 1 of its PID namespace;
//! - is **`pivot_root`ed** into `<state_dir>/jails/<session>/root`, which holds only the files
//!   that process needs, each bound read-only onto an empty placeholder (its binary and the
//!   shared libraries `ldd` lists, at their host paths; for QEMU also the `microvm` firmware,
//!   and the guest's kernel, initramfs and root disk at `/kernel`, `/initramfs.cpio`,
//!   `/root.ext4`), the sockets the session's processes create there, and a `/dev` holding
//!   only `null`, `urandom` and, with KVM, `kvm`, owned by the jail's uid;
//! - runs as an **unprivileged uid and gid of its own** per session, taken from a configured
//!   range and released at stop, with **no capabilities** (every set empty, the bounding set
//!   dropped), **no_new_privs**, and a **seccomp allow-list** ([`seccomp`]);
//! - dies with the worker (`PR_SET_PDEATHSIG`).
//!
//! The worker (root) reaches the session's sockets by their host paths under the jail root:
//! a Unix socket's path is the same inode whatever mount namespace bound it. The jail root is
//! owned by the jail's uid (mode 0700), so the VMM can create its sockets there and nothing
//! else can look in (a socket the worker binds there for the VMM to connect to, QEMU's
//! snapshot stream, is handed to the jail's uid); the session's logs stay beside it in
//! `<state_dir>/jails/<session>/`, opened by the worker and handed over as standard output and
//! error.
//!
//! A jailed process is spawned through [`spawn`]: the process the caller holds is an
//! intermediate one outside the new PID namespace (`sys::set_jail_pre_exec`), running as the
//! jail's uid without capabilities too, that waits for the VMM and exits with its status, so
//! `try_wait` on it tells whether the VMM still runs; [`Spawned::pid`] is the VMM itself.
//! [`Jail::remove`], after the processes are gone, removes the cgroup and the jail directory
//! and returns the uid to the range. A worker killed outright leaves its jails' directories
//! and cgroups (its VMMs die with it); the next [`Jailer`] on the same state directory removes
//! them.
//!
//! **What it needs from the host:** root; cgroup v2 with the `memory`, `cpu` and `pids`
//! controllers available at the cgroup root, or the v1 hierarchies of those three; a uid
//! range no other user or worker of the host uses (each worker on a host needs its own);
//! `/dev/kvm` for `accel = "kvm"`; `ldd` for dynamically linked VMMs.

pub mod cgroup;
pub mod libs;
pub(crate) mod plan;
pub mod seccomp;

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::pipe::PipeFlags;
use tokio::process::{Child, Command};

pub use cgroup::{Cgroup, CgroupLimits, CgroupVersion};
pub use seccomp::Profile;

/// The hostname a jailed VMM sees (its own UTS namespace).
pub const JAIL_HOSTNAME: &str = "hpcc-jail";

/// Host memory a VMM takes besides its guest's RAM, for the default memory limit: QEMU's
/// own heap and, under TCG, its translated-code buffer (capped at `qemu::TCG_CACHE_MIB`).
/// Measured: a jailed 512 MiB TCG guest's QEMU peaks at about 420 MiB through boot and a
/// compile (`jail_confines_a_qemu_session` prints it; guest RAM is mapped, not all touched);
/// KVM needs less.
pub const DEFAULT_MEMORY_OVERHEAD: u64 = 384 << 20;

/// How VMMs are jailed (the worker's `[vm.jail]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// The first uid (and gid) of the range jails take theirs from.
    pub uid_base: u32,
    /// How many uids the range has: at most that many sessions at once.
    pub uid_count: u32,
    /// Which cgroup hierarchy to use.
    pub cgroup_version: CgroupVersion,
    /// Where the cgroup file systems are mounted (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The parent cgroup of every session's (`hpcc`): one child per session.
    pub cgroup_parent: String,
    /// A session's memory limit, bytes; `None`: its guest's RAM plus
    /// [`DEFAULT_MEMORY_OVERHEAD`].
    pub memory_bytes: Option<u64>,
    /// A session's CPU cap in thousandths of a CPU; `None`: one CPU per vCPU.
    pub cpu_millis: Option<u32>,
    /// A session's processes and threads.
    pub pids_max: u64,
}

impl Default for JailConfig {
    fn default() -> JailConfig {
        JailConfig {
            uid_base: 100_000,
            uid_count: 1000,
            cgroup_version: CgroupVersion::Auto,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: "hpcc".to_owned(),
            memory_bytes: None,
            cpu_millis: None,
            pids_max: 512,
        }
    }
}

/// The uids of a range, each held by at most one jail.
#[derive(Debug)]
struct UidRange {
    base: u32,
    count: u32,
    taken: Mutex<BTreeSet<u32>>,
}

impl UidRange {
    /// The first uid of the range that neither this range has handed out nor `elsewhere`
    /// (the owners of other jails on the host) holds.
    fn take(&self, elsewhere: &BTreeSet<u32>) -> Option<u32> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let uid = (self.base..self.base + self.count)
            .find(|uid| !taken.contains(uid) && !elsewhere.contains(uid))?;
        taken.insert(uid);
        Some(uid)
    }

    fn release(&self, uid: u32) {
        self.taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
    }
}

/// Held while a jail's uid is chosen and its root created (and so owned by that uid): other
/// runtimes in this process (a worker's `audit-verify` runtime, tests) see the choice.
static CHOOSING_UID: Mutex<()> = Mutex::new(());

/// Makes jails: holds the configuration, the resolved cgroup version and the uid range.
#[derive(Debug)]
pub struct Jailer {
    config: JailConfig,
    version: CgroupVersion,
    jails_dir: PathBuf,
    uids: Arc<UidRange>,
}

impl Jailer {
    /// Checks the configuration and the host (root, the cgroup hierarchy), and creates the
    /// parent cgroup. Jails go under `<state_dir>/jails/`. The error says what is wrong,
    /// naming the `[vm.jail]` key where one is at fault.
    pub fn new(config: JailConfig, state_dir: &Path) -> Result<Jailer, String> {
        if !rustix::process::geteuid().is_root() {
            return Err(
                "the VMM jail needs root (it sets up namespaces, cgroups and uids); run the \
                 worker as root or set vm.jail.enabled = false"
                    .into(),
            );
        }
        if config.uid_base == 0 || config.uid_count == 0 {
            return Err("vm.jail.uid_base and vm.jail.uid_count must be above 0".into());
        }
        if config.uid_base.checked_add(config.uid_count).is_none() {
            return Err("vm.jail.uid_base + vm.jail.uid_count overflows a uid".into());
        }
        if config.cgroup_parent.is_empty()
            || config.cgroup_parent.contains("..")
            || config.cgroup_parent.starts_with('/')
        {
            return Err(format!(
                "vm.jail.cgroup_parent = {:?}: expected a relative cgroup path",
                config.cgroup_parent
            ));
        }
        let version = cgroup::resolve(config.cgroup_version, &config.cgroup_root)
            .map_err(|reason| format!("vm.jail.cgroup_version: {reason}"))?;
        cgroup::prepare_parent(version, &config.cgroup_root, &config.cgroup_parent)
            .map_err(|error| format!("vm.jail.cgroup_parent: {error}"))?;
        let jails_dir = state_dir.join("jails");
        std::fs::create_dir_all(&jails_dir)
            .and_then(|()| {
                std::fs::set_permissions(&jails_dir, std::fs::Permissions::from_mode(0o711))
            })
            .map_err(|error| format!("creating {}: {error}", jails_dir.display()))?;
        let jailer = Jailer {
            uids: Arc::new(UidRange {
                base: config.uid_base,
                count: config.uid_count,
                taken: Mutex::new(BTreeSet::new()),
            }),
            config,
            version,
            jails_dir,
        };
        jailer.sweep_stale();
        tracing::info!(
            cgroup_version = ?jailer.version,
            cgroup_parent = %jailer.config.cgroup_parent,
            uid_base = jailer.config.uid_base,
            uid_count = jailer.config.uid_count,
            "VMMs will be jailed"
        );
        Ok(jailer)
    }

    /// Removes the jails (directory and cgroup) of workers that are gone: a worker killed
    /// outright takes its VMMs with it (`PR_SET_PDEATHSIG`) but leaves their directories and
    /// cgroups. A session id ends in `-<worker pid>-<counter>` (`vm::session_id`), so a jail
    /// whose worker pid no longer runs is stale; jails of live workers (another runtime in
    /// this process, another worker sharing the state directory) are left alone. Anything
    /// still in a stale cgroup is killed first.
    fn sweep_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.jails_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(owner) = owner_pid(&name) else {
                continue;
            };
            if Path::new("/proc").join(owner.to_string()).exists() {
                continue;
            }
            let mut cgroup = Cgroup::existing(
                self.version,
                &self.config.cgroup_root,
                &self.config.cgroup_parent,
                &name,
            );
            for pid in cgroup.processes() {
                if let Some(pid) = i32::try_from(pid)
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            let removed = cgroup.remove(Duration::from_secs(2));
            let _ = std::fs::remove_dir_all(entry.path());
            tracing::info!(jail = %name, ?removed, "removed the jail of a worker that is gone");
        }
    }

    /// The cgroup hierarchy jails use (never `Auto`).
    pub fn cgroup_version(&self) -> CgroupVersion {
        self.version
    }

    /// The configuration.
    pub fn config(&self) -> &JailConfig {
        &self.config
    }

    /// The limits of a session whose guest has `guest_memory_mib` and `vcpus`.
    pub fn limits(&self, guest_memory_mib: u32, vcpus: u32) -> CgroupLimits {
        CgroupLimits {
            memory_bytes: self
                .config
                .memory_bytes
                .unwrap_or((u64::from(guest_memory_mib) << 20) + DEFAULT_MEMORY_OVERHEAD),
            cpu_millis: Some(
                self.config
                    .cpu_millis
                    .unwrap_or_else(|| vcpus.max(1).saturating_mul(1000)),
            ),
            pids_max: self.config.pids_max,
        }
    }

    /// Makes the jail of `session`: a uid from the range, `<jails>/<session>/root` owned by
    /// it, and the session's cgroup with `limits`.
    pub fn create(&self, session: &str, limits: &CgroupLimits) -> io::Result<Jail> {
        let choosing = CHOOSING_UID.lock().unwrap_or_else(|p| p.into_inner());
        // The uids of the jails that exist now, whoever made them (another runtime in this
        // process or another process on the same state directory): a jail's root is owned by
        // its uid from creation to removal.
        let elsewhere: BTreeSet<u32> = std::fs::read_dir(&self.jails_dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| {
                        use std::os::unix::fs::MetadataExt;
                        std::fs::metadata(entry.path().join("root"))
                            .ok()
                            .map(|metadata| metadata.uid())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let uid = self.uids.take(&elsewhere).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "all {} uids of vm.jail's range ({}..) are in use",
                    self.config.uid_count, self.config.uid_base
                ),
            )
        })?;
        let dir = self.jails_dir.join(session);
        let root = dir.join("root");
        let mut jail = Jail {
            uid,
            dir: dir.clone(),
            root: root.clone(),
            cgroup: None,
            uids: Arc::clone(&self.uids),
            removed: false,
        };
        fn describe(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
            move |error| io::Error::new(error.kind(), format!("{}: {error}", path.display()))
        }
        std::fs::create_dir(&dir).map_err(describe(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(describe(&dir))?;
        std::fs::create_dir(&root).map_err(describe(&root))?;
        rustix::fs::chown(
            &root,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(uid)),
        )
        .map_err(|errno| describe(&root)(errno.into()))?;
        // The VMM (the owner) creates its sockets here; root, the worker, reaches them
        // anyway; nobody else may even look.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(describe(&root))?;
        drop(choosing);
        jail.cgroup = Some(Cgroup::create(
            self.version,
            &self.config.cgroup_root,
            &self.config.cgroup_parent,
            session,
            limits,
        )?);
        Ok(jail)
    }
}

/// The worker pid in a session id (`<prefix>-<tenant>-<pid>-<counter>`).
fn owner_pid(session: &str) -> Option<u32> {
    let mut parts = session.rsplit('-');
    parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse().ok()
}

/// One session's jail: its uid, directory and cgroup. Dropping it removes what it can
/// ([`Jail::remove`] waits for the cgroup to empty).
#[derive(Debug)]
pub struct Jail {
    uid: u32,
    dir: PathBuf,
    root: PathBuf,
    cgroup: Option<Cgroup>,
    uids: Arc<UidRange>,
    removed: bool,
}

/// A process to run in a jail.
#[derive(Debug, Clone, Copy)]
pub struct JailedProgram<'a> {
    /// The binary on the host; it is bound in at the same path, with the libraries it needs.
    pub binary: &'a Path,
    /// Further files, `(host path, absolute path inside the jail)`, bound read-only.
    pub files: &'a [(PathBuf, PathBuf)],
    /// Whether the process gets `/dev/kvm`.
    pub kvm: bool,
    /// Its seccomp allow-list.
    pub profile: Profile,
}

impl Jail {
    /// The uid (and gid) the jail's processes run as.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The jail's directory on the host (`<state_dir>/jails/<session>`): the root and,
    /// beside it, the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The jail's root on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path of `inside`, a path inside the jail (to reach its sockets).
    pub fn host_path(&self, inside: &Path) -> PathBuf {
        plan::under_root(&self.root, inside)
    }

    /// The session's cgroup directories.
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        self.cgroup.as_ref().map_or(&[], Cgroup::dirs)
    }

    /// A command that runs `program` in this jail; the caller adds arguments and standard I/O
    /// (and nothing that needs the host's view: paths in arguments are inside the jail).
    pub fn command(&self, program: &JailedProgram<'_>) -> io::Result<JailCommand> {
        let mut binds: Vec<(PathBuf, PathBuf)> = Vec::new();
        let binary = std::fs::canonicalize(program.binary).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("{}: {error}", program.binary.display()),
            )
        })?;
        binds.push((binary.clone(), program.binary.to_owned()));
        for library in libs::needed(&binary)? {
            let host = std::fs::canonicalize(&library).map_err(|error| {
                io::Error::new(error.kind(), format!("{}: {error}", library.display()))
            })?;
            binds.push((host, library));
        }
        for (host, inside) in program.files {
            // A library both the binary and a module need is bound once.
            if !binds.iter().any(|(_, bound)| bound == inside) {
                binds.push((host.clone(), inside.clone()));
            }
        }
        for (_, inside) in &binds {
            if !inside.is_absolute() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: paths inside a jail are absolute", inside.display()),
                ));
            }
            self.placeholder(inside)?;
        }
        let dev = self.root.join("dev");
        std::fs::create_dir_all(&dev)
            .map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", dev.display())))?;
        let filters = seccomp::filters(program.profile).map_err(io::Error::other)?;
        let (pid_read, pid_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let procs_files = self
            .cgroup
            .as_ref()
            .map(Cgroup::procs_files)
            .unwrap_or_default();
        let plan = plan::JailPlan::new(
            &plan::JailPlanInput {
                procs_files: &procs_files,
                root: &self.root,
                binds: &binds,
                kvm: program.kvm,
                hostname: JAIL_HOSTNAME,
                uid: self.uid,
                gid: self.uid,
            },
            pid_write,
            filters,
        )?;
        let mut command = Command::new(program.binary);
        command.env_clear().kill_on_drop(true);
        crate::sys::set_jail_pre_exec(&mut command, plan);
        Ok(JailCommand { command, pid_read })
    }

    /// Creates the empty file (and its parent directories) a file is bound onto.
    fn placeholder(&self, inside: &Path) -> io::Result<()> {
        let host = self.host_path(inside);
        let describe =
            |error: io::Error| io::Error::new(error.kind(), format!("{}: {error}", host.display()));
        if let Some(parent) = host.parent() {
            std::fs::create_dir_all(parent).map_err(describe)?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&host)
        {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(error) => Err(describe(error)),
        }
    }

    /// Removes the cgroup (waiting up to 5 s for its processes to leave it), the jail
    /// directory, and returns the uid to the range. Call it once the jail's processes are
    /// dead.
    pub fn remove(mut self) -> io::Result<()> {
        self.removed = true;
        let cgroup = self
            .cgroup
            .take()
            .map_or(Ok(()), |mut cgroup| cgroup.remove(Duration::from_secs(5)));
        let dir = match std::fs::remove_dir_all(&self.dir) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
                error.kind(),
                format!("removing {}: {error}", self.dir.display()),
            )),
            _ => Ok(()),
        };
        // Only a uid whose processes are gone may be used again.
        if cgroup.is_ok() {
            self.uids.release(self.uid);
        }
        cgroup.and(dir)
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Best effort (a failed start, a session dropped without stop): its processes were
        // killed just before, so the cgroup empties within moments.
        let emptied = self
            .cgroup
            .take()
            .map_or(Ok(()), |mut cgroup| cgroup.remove(Duration::from_secs(2)));
        let _ = std::fs::remove_dir_all(&self.dir);
        if emptied.is_ok() {
            self.uids.release(self.uid);
        }
    }
}

/// A jailed process about to be spawned.
#[derive(Debug)]
pub struct JailCommand {
    command: Command,
    pid_read: OwnedFd,
}

impl JailCommand {
    /// The command, for arguments and standard I/O.
    pub fn command_mut(&mut self) -> &mut Command {
        &mut self.command
    }

    /// Spawns it; returns once the VMM has exec'd (or failed to).
    pub fn spawn(self) -> io::Result<Spawned> {
        let JailCommand {
            mut command,
            pid_read,
        } = self;
        let spawned = command.spawn();
        // Dropping the command closes our copy of the pipe's write end, so the read below
        // ends at EOF if the intermediate died before writing.
        drop(command);
        let child = spawned?;
        let mut pid_bytes = [0u8; 4];
        let (pid, pidfd) = match std::fs::File::from(pid_read).read_exact(&mut pid_bytes) {
            Ok(()) => {
                let raw = i32::from_ne_bytes(pid_bytes);
                // While the intermediate lives it has not reaped the VMM, so the pid cannot
                // have been reused before the pidfd pins it.
                let pidfd = rustix::process::Pid::from_raw(raw).and_then(|pid| {
                    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
                });
                (u32::try_from(raw).ok(), pidfd)
            }
            Err(_) => (None, None),
        };
        Ok(Spawned { child, pid, pidfd })
    }
}

/// A spawned VMM process, jailed or not.
#[derive(Debug)]
pub struct Spawned {
    /// The process the host waits for: the VMM itself, or when jailed the intermediate
    /// outside its PID namespace, which exits when the VMM does.
    pub child: Child,
    pid: Option<u32>,
    pidfd: Option<OwnedFd>,
}

impl Spawned {
    /// A process some other confinement started (Firecracker's `jailer`): the host holds and
    /// kills it directly.
    pub fn from_child(child: Child) -> Spawned {
        Spawned {
            child,
            pid: None,
            pidfd: None,
        }
    }

    /// The VMM's host pid.
    pub fn pid(&self) -> Option<u32> {
        self.pid.or_else(|| self.child.id())
    }

    /// Sends SIGKILL to the VMM. When jailed, the intermediate process then reaps it and
    /// exits, so [`Spawned::wait`] returns once the VMM is gone (killing the intermediate
    /// first would leave the VMM to be reaped by whoever inherits it, some time later).
    pub fn kill(&mut self) {
        match &self.pidfd {
            Some(pidfd) => {
                let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
            }
            None => {
                let _ = self.child.start_kill();
            }
        }
    }

    /// Waits until the process the host holds has exited (after [`Spawned::kill`]); if it
    /// has not within 5 s, kills it too.
    pub async fn wait(&mut self) {
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// Spawns `program` in `jail`, or directly (dying with the worker) when there is none;
/// `configure` adds its arguments and standard I/O. The one place the microVM runtimes
/// start their VMM processes.
pub fn spawn(
    jail: Option<&Jail>,
    program: &JailedProgram<'_>,
    configure: impl FnOnce(&mut Command),
) -> io::Result<Spawned> {
    match jail {
        Some(jail) => {
            let mut command = jail.command(program)?;
            configure(command.command_mut());
            command.spawn()
        }
        None => {
            let mut command = Command::new(program.binary);
            crate::kill_with_parent(&mut command);
            command.kill_on_drop(true);
            configure(&mut command);
            let child = command.spawn()?;
            Ok(Spawned {
                child,
                pid: None,
                pidfd: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_name_their_worker() {
        assert_eq!(owner_pid("vm-tenant-4242-7"), Some(4242));
        assert_eq!(owner_pid("fc--17-0"), Some(17));
        assert_eq!(owner_pid("vm-tenant-x-7"), None);
        assert_eq!(owner_pid("junk"), None);
    }

    #[test]
    fn uids_are_unique_and_come_back() {
        let range = UidRange {
            base: 100,
            count: 2,
            taken: Mutex::new(BTreeSet::new()),
        };
        let none = BTreeSet::new();
        assert_eq!(range.take(&none), Some(100));
        assert_eq!(range.take(&none), Some(101));
        assert_eq!(range.take(&none), None, "the range is exhausted");
        range.release(100);
        range.release(101);
        assert_eq!(
            range.take(&BTreeSet::from([100])),
            Some(101),
            "a uid another jail holds is skipped"
        );
        assert_eq!(range.take(&none), Some(100));
    }

    /// Needs root (the jailer refuses to start without it), and fails without it, saying so,
    /// rather than passing unrun.
    #[test]
    fn bad_settings_name_their_key() {
        assert!(
            rustix::process::geteuid().is_root(),
            "bad_settings_name_their_key needs root (the jailer does)"
        );
        let state = tempfile::tempdir().expect("temp dir");
        let check = |config: JailConfig, key: &str| {
            let error = Jailer::new(config, state.path()).expect_err("refused");
            assert!(error.contains(key), "{error}");
        };
        check(
            JailConfig {
                uid_count: 0,
                ..JailConfig::default()
            },
            "vm.jail.uid_count",
        );
        check(
            JailConfig {
                uid_base: u32::MAX - 1,
                ..JailConfig::default()
            },
            "vm.jail.uid_base",
        );
        check(
            JailConfig {
                cgroup_parent: "../escape".into(),
                ..JailConfig::default()
            },
            "vm.jail.cgroup_parent",
        );
        check(
            JailConfig {
                cgroup_root: state.path().join("no-cgroups"),
                ..JailConfig::default()
            },
            "vm.jail.cgroup_version",
        );
    }

    /// Two runtimes on one state directory (a worker and its `audit-verify`, or parallel
    /// tests) never give two live jails the same uid; a jail's directory is owned by its uid,
    /// its cgroup (v2 here, in a temporary directory) holds its limits, and removal takes both
    /// away and frees the uid. Needs root (chown), and fails without it, saying so, rather than
    /// passing unrun (CI runs as root).
    #[test]
    fn jails_get_distinct_uids_across_runtimes() {
        assert!(
            rustix::process::geteuid().is_root(),
            "jails_get_distinct_uids_across_runtimes needs root (chown)"
        );
        use std::os::unix::fs::MetadataExt;
        let state = tempfile::tempdir().expect("temp dir");
        let cgroups = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            cgroups.path().join("cgroup.controllers"),
            "cpu memory pids\n",
        )
        .expect("write");
        let config = JailConfig {
            uid_base: 400_000,
            uid_count: 3,
            cgroup_root: cgroups.path().to_owned(),
            ..JailConfig::default()
        };
        let first = Jailer::new(config.clone(), state.path()).expect("jailer");
        let second = Jailer::new(config, state.path()).expect("jailer");
        assert_eq!(first.cgroup_version(), CgroupVersion::V2);
        let limits = first.limits(256, 1);
        let a = first.create("vm-a-1-0", &limits).expect("jail");
        let b = second.create("vm-b-1-0", &limits).expect("jail");
        let c = first.create("vm-c-1-1", &limits).expect("jail");
        let uids = BTreeSet::from([a.uid(), b.uid(), c.uid()]);
        assert_eq!(uids, BTreeSet::from([400_000, 400_001, 400_002]));
        let error = second
            .create("vm-d-1-1", &limits)
            .expect_err("the range is used up");
        assert!(error.to_string().contains("vm.jail"), "{error}");
        assert_eq!(
            std::fs::metadata(a.root()).expect("root").uid(),
            a.uid(),
            "the root belongs to the jail's uid"
        );
        let cgroup = cgroups.path().join("hpcc/vm-a-1-0");
        assert_eq!(a.cgroup_dirs(), std::slice::from_ref(&cgroup));
        assert_eq!(
            std::fs::read_to_string(cgroup.join("memory.max")).expect("memory.max"),
            ((256u64 << 20) + DEFAULT_MEMORY_OVERHEAD).to_string()
        );
        let (a_uid, a_dir) = (a.uid(), a.dir().to_owned());
        a.remove().expect("remove");
        assert!(!a_dir.exists() && !cgroup.exists());
        let d = second
            .create("vm-d-1-1", &limits)
            .expect("a freed uid is used again");
        assert_eq!(d.uid(), a_uid);
        drop((b, c, d));
        assert_eq!(
            std::fs::read_dir(state.path().join("jails"))
                .expect("jails dir")
                .count(),
            0,
            "dropped jails remove themselves"
        );
    }

    #[test]
    fn default_limits_follow_the_guest() {
        let jailer = Jailer {
            config: JailConfig::default(),
            version: CgroupVersion::V2,
            jails_dir: PathBuf::from("/nonexistent"),
            uids: Arc::new(UidRange {
                base: 1,
                count: 1,
                taken: Mutex::new(BTreeSet::new()),
            }),
        };
        let limits = jailer.limits(512, 2);
        assert_eq!(limits.memory_bytes, (512 << 20) + DEFAULT_MEMORY_OVERHEAD);
        assert_eq!(limits.cpu_millis, Some(2000));
        assert_eq!(limits.pids_max, 512);
    }
}
