//! What a jailed VMM's child does between `fork` and `exec`, prepared in full beforehand.
//!
//! As for the sandbox (`sandbox::plan`), every path is a `CString` and every seccomp program is
//! built before the fork, because the child of a multi-threaded process may not allocate or
//! lock; a failing step writes `hpcc-jail: <step>: errno <n>` to the child's stderr (the
//! VMM's log) and fails the spawn.
//!
//! The order (`sys::set_jail_pre_exec` runs the first part, [`enter`] the rest in the process
//! that becomes the VMM):
//! 1. [`join_cgroup`]: `0` into each `cgroup.procs` of the session, so nothing of the VMM
//!    ever runs outside its limits.
//! 2. `unshare` of the mount, PID, network, IPC and UTS namespaces, then a fork: the child is
//!    PID 1 of the new PID namespace (and becomes the VMM); the parent stays outside, waits
//!    for it and dies with the worker (`PR_SET_PDEATHSIG`).
//! 3. In the child ([`enter`]): mounts private; the jail root bound onto itself (a mount point,
//!    for `pivot_root`); each file of the jail bound read-only onto its placeholder; a small
//!    read-only tmpfs `/dev` holding only `null`, `urandom` and, with KVM, `kvm`, owned by the
//!    jail's uid (made with `mknod`, as Firecracker's jailer does, rather than bound from the
//!    host, whose `/dev/kvm` belongs to a group); `pivot_root` into the jail root, the old
//!    root detached.
//!    The parent (the intermediate) takes the jail's uid and gid as well and drops its
//!    capabilities ([`as_reaper`]), so no process of the jail stays root.
//! 4. Hostname, no core dumps, the capability bounding set emptied, then the session's gid
//!    and uid (which clears the permitted and effective sets) and an empty inheritable set;
//!    the parent-death signal (a credential change clears it); no_new_privs; the seccomp
//!    allow-list last, so `execve` is its first filtered call.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FileType, Mode};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Resource, Rlimit, Signal};
use rustix::thread::{CapabilitySet, CapabilitySets};
use seccompiler::BpfProgram;

use crate::sandbox::plan::{kept_flags, report_as};

/// The device nodes of a jail's `/dev`: `(name, major, minor)`. QEMU opens `null` and
/// `urandom` at start-up; `kvm` is added only for KVM guests.
const DEVICES: &[(&str, u32, u32)] = &[("null", 1, 3), ("urandom", 1, 9)];

/// `/dev/kvm`.
const KVM: (&str, u32, u32) = ("kvm", 10, 232);

/// Everything a jailed child needs, prepared before `fork`.
#[derive(Debug)]
pub(crate) struct JailPlan {
    /// The `cgroup.procs` files to join.
    pub(crate) procs_files: Vec<CString>,
    /// The intermediate process writes the VMM's host pid here.
    pub(crate) pid_write: OwnedFd,
    root: CString,
    /// `(host file, placeholder in the jail root)`, bound read-only.
    binds: Vec<(CString, CString)>,
    /// The jail's `/dev` (a host path under the root).
    dev: CString,
    /// Its device nodes: `(host path under the root, major, minor)`.
    devices: Vec<(CString, u32, u32)>,
    hostname: CString,
    uid: u32,
    gid: u32,
    filters: Vec<BpfProgram>,
}

/// What goes into a [`JailPlan`].
#[derive(Debug)]
pub(crate) struct JailPlanInput<'a> {
    pub(crate) procs_files: &'a [std::path::PathBuf],
    pub(crate) root: &'a Path,
    /// `(host file, path inside the jail)`; placeholders must exist already.
    pub(crate) binds: &'a [(std::path::PathBuf, std::path::PathBuf)],
    pub(crate) kvm: bool,
    pub(crate) hostname: &'a str,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} contains a NUL byte", path.display()),
        )
    })
}

/// `inside` (absolute, inside the jail) as a host path under `root`.
pub(crate) fn under_root(root: &Path, inside: &Path) -> std::path::PathBuf {
    root.join(inside.strip_prefix("/").unwrap_or(inside))
}

impl JailPlan {
    /// Prepares every path and takes the filters.
    pub(crate) fn new(
        input: &JailPlanInput<'_>,
        pid_write: OwnedFd,
        filters: Vec<BpfProgram>,
    ) -> io::Result<JailPlan> {
        let procs_files = input
            .procs_files
            .iter()
            .map(|path| c_path(path))
            .collect::<io::Result<_>>()?;
        let binds = input
            .binds
            .iter()
            .map(|(host, inside)| Ok((c_path(host)?, c_path(&under_root(input.root, inside))?)))
            .collect::<io::Result<_>>()?;
        let dev = input.root.join("dev");
        let devices = DEVICES
            .iter()
            .chain(input.kvm.then_some(&KVM))
            .map(|(name, major, minor)| Ok((c_path(&dev.join(name))?, *major, *minor)))
            .collect::<io::Result<_>>()?;
        Ok(JailPlan {
            procs_files,
            pid_write,
            root: c_path(input.root)?,
            binds,
            dev: c_path(&dev)?,
            devices,
            hostname: CString::new(input.hostname).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "hostname contains a NUL byte")
            })?,
            uid: input.uid,
            gid: input.gid,
            filters,
        })
    }
}

/// Runs one step, reporting its failure by name.
fn step<T>(name: &str, result: rustix::io::Result<T>) -> io::Result<T> {
    result.map_err(|errno| {
        report_as("hpcc-jail: ", name, errno);
        io::Error::from(errno)
    })
}

/// Joins the session's cgroup(s): writes `0` (the writing process) into each `cgroup.procs`.
pub(crate) fn join_cgroup(plan: &JailPlan) -> io::Result<()> {
    for file in &plan.procs_files {
        let fd = step(
            "open cgroup.procs",
            rustix::fs::open(
                file.as_c_str(),
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
                Mode::empty(),
            ),
        )?;
        step("join cgroup", rustix::io::write(&fd, b"0"))?;
    }
    Ok(())
}

fn bind_read_only(source: &CStr, target: &CStr) -> io::Result<()> {
    step("bind file", rustix::mount::mount_bind(source, target))?;
    let flags = MountFlags::BIND
        | MountFlags::RDONLY
        | MountFlags::NOSUID
        | MountFlags::NODEV
        | kept_flags(target);
    step(
        "remount file read-only",
        rustix::mount::mount_remount(target, flags, c""),
    )
}

/// In the process that becomes the VMM (PID 1 of the new PID namespace): build the root,
/// pivot into it, drop every privilege. `exec` follows.
pub(crate) fn enter(plan: &JailPlan) -> io::Result<()> {
    step(
        "make / private",
        rustix::mount::mount_change(
            c"/",
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        ),
    )?;
    let root = plan.root.as_c_str();
    step("bind the jail root", rustix::mount::mount_bind(root, root))?;
    for (source, target) in &plan.binds {
        bind_read_only(source, target)?;
    }
    step(
        "mount /dev tmpfs",
        rustix::mount::mount(
            c"tmpfs",
            plan.dev.as_c_str(),
            c"tmpfs",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            Some(c"size=16k,mode=0755"),
        ),
    )?;
    for (node, major, minor) in &plan.devices {
        step(
            "mknod",
            rustix::fs::mknodat(
                rustix::fs::CWD,
                node.as_c_str(),
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o600),
                rustix::fs::makedev(*major, *minor),
            ),
        )?;
        step(
            "chown a device",
            rustix::fs::chown(
                node.as_c_str(),
                Some(rustix::fs::Uid::from_raw(plan.uid)),
                Some(rustix::fs::Gid::from_raw(plan.gid)),
            ),
        )?;
    }
    step(
        "remount /dev read-only",
        rustix::mount::mount_remount(
            plan.dev.as_c_str(),
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NOEXEC,
            c"",
        ),
    )?;
    step(
        "remount the jail root",
        rustix::mount::mount_remount(
            root,
            MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV | kept_flags(root),
            c"",
        ),
    )?;
    step("chdir to the jail root", rustix::process::chdir(root))?;
    step("pivot_root", rustix::process::pivot_root(c".", c"."))?;
    step(
        "detach the old root",
        rustix::mount::unmount(c".", UnmountFlags::DETACH),
    )?;
    step("chdir /", rustix::process::chdir(c"/"))?;
    step(
        "sethostname",
        rustix::system::sethostname(plan.hostname.as_bytes()),
    )?;
    step(
        "no core dumps",
        rustix::process::setrlimit(
            Resource::Core,
            Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        ),
    )?;
    become_jail_user(plan)?;
    for filter in &plan.filters {
        // The error is dropped unformatted: building a message would allocate.
        if seccompiler::apply_filter(filter).is_err() {
            report_as("hpcc-jail: ", "seccomp", rustix::io::Errno::INVAL);
            return Err(io::Error::from(rustix::io::Errno::INVAL));
        }
    }
    Ok(())
}

/// Takes the jail's uid and gid with no supplementary groups, drops every capability (the
/// bounding set too), sets the parent-death signal again (the credential change clears it)
/// and no_new_privs: what the VMM and the process waiting for it both become.
fn become_jail_user(plan: &JailPlan) -> io::Result<()> {
    drop_bounding_set()?;
    step("setgroups", rustix::thread::set_thread_groups(&[]))?;
    let gid = rustix::process::Gid::from_raw(plan.gid);
    let uid = rustix::process::Uid::from_raw(plan.uid);
    step(
        "setresgid",
        rustix::thread::set_thread_res_gid(gid, gid, gid),
    )?;
    step(
        "setresuid",
        rustix::thread::set_thread_res_uid(uid, uid, uid),
    )?;
    step(
        "clear capabilities",
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: CapabilitySet::empty(),
                permitted: CapabilitySet::empty(),
                inheritable: CapabilitySet::empty(),
            },
        ),
    )?;
    step(
        "pdeathsig",
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL)),
    )?;
    step("no_new_privs", rustix::thread::set_no_new_privs(true))?;
    Ok(())
}

/// In the intermediate process (outside the new PID namespace, waiting for the VMM): become
/// the jail's uid and gid too, with no capabilities and no_new_privs, so no process of a jail
/// is privileged, and still die with the worker (`parent`): the parent-death signal is set
/// again after the credential change that clears it, and the parent checked once more.
pub(crate) fn as_reaper(plan: &JailPlan, parent: rustix::process::Pid) -> io::Result<()> {
    become_jail_user(plan)?;
    if rustix::process::getppid() != Some(parent) {
        report_as(
            "hpcc-jail: ",
            "the worker went away",
            rustix::io::Errno::SRCH,
        );
        return Err(io::Error::from(rustix::io::Errno::SRCH));
    }
    Ok(())
}

/// Drops every capability from the bounding set, up to the first number the kernel does not
/// know (`EINVAL`), so capabilities newer than rustix's list go too.
fn drop_bounding_set() -> io::Result<()> {
    for number in 0..64u32 {
        let capability = CapabilitySet::from_bits_retain(1 << number);
        match rustix::thread::remove_capability_from_bounding_set(capability) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL) => return Ok(()),
            Err(errno) => return step("drop the bounding set", Err(errno)),
        }
    }
    Ok(())
}
