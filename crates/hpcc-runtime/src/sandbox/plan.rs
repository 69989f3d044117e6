//! What a sandbox's child does between `fork` and `exec`, prepared in full beforehand.
//!
//! Everything the child needs (paths as `CString`s, mount options, the seccomp programs) is
//! built by [`Plan::new`] in the parent, because the child of a multi-threaded process may not
//! allocate or lock: the step functions here only make rustix syscalls on borrowed `&CStr`s,
//! and report a failing step by writing a fixed message to stderr (the session's log file).
//!
//! The root the job sees is a small read-only tmpfs holding only mount points: each top-level
//! directory of the image bind-mounted read-only, the image's top-level symlinks recreated,
//! `/proc` of the new PID namespace, a minimal `/dev`, the tmpfs work dir at `/work` (with
//! `/tmp` bound to `/work/.tmp`, so both share its size limit), the agent at `/.hpcc/agent` and
//! the session's socket directory at `/.hpcc/sock`. Building the root this way means no image
//! needs to contain `/work` or `/.hpcc`, and nothing of the host but what is named here shows.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags, StatVfsMountFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Resource, Rlimit, Signal};
use seccompiler::BpfProgram;

/// Top-level names of an image that the sandbox provides itself.
const PROVIDED: &[&str] = &["proc", "dev", "sys", "tmp", "work", ".hpcc"];

/// Device nodes bound from the host: what compilers and shells open.
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// Symlinks created in `/dev`.
const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// A top-level entry of the image.
#[derive(Debug)]
pub(crate) enum RootEntry {
    /// A directory, bind-mounted read-only.
    Dir { source: CString, target: CString },
    /// A symlink, recreated with the same target.
    Symlink { target: CString, link: CString },
}

/// Everything the sandbox child needs, prepared before `fork`.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Clear supplementary groups first (when started by root, so host group 0 does not leak in).
    pub(crate) clear_groups: bool,
    /// The child writes its PID here once it has unshared, so the parent writes its id maps.
    pub(crate) ready_write: OwnedFd,
    /// The parent writes one byte here once the maps are written (1: ok).
    pub(crate) go_read: OwnedFd,
    /// The intermediate process writes PID 1's host pid here, so the host can kill PID 1
    /// directly (and the intermediate reaps it, leaving no orphan zombie on the host).
    pub(crate) pid1_write: OwnedFd,
    staging: CString,
    root_entries: Vec<RootEntry>,
    proc_dir: CString,
    dev_dir: CString,
    dev_nodes: Vec<(CString, CString)>,
    dev_links: Vec<(CString, CString)>,
    work_dir: CString,
    work_options: CString,
    work_tmp: CString,
    tmp_dir: CString,
    hpcc_dir: CString,
    agent_source: CString,
    agent_target: CString,
    sock_source: CString,
    sock_target: CString,
    hostname: CString,
    open_files: u64,
    processes: u64,
    /// Applied in order; the last one installed runs first, which does not matter here.
    pub(crate) filters: Vec<BpfProgram>,
}

/// What goes into a [`Plan`].
#[derive(Debug)]
pub(crate) struct PlanInput<'a> {
    pub(crate) rootfs: &'a Path,
    pub(crate) staging: &'a Path,
    pub(crate) agent: &'a Path,
    pub(crate) sock_dir: &'a Path,
    pub(crate) hostname: &'a str,
    pub(crate) work_bytes: u64,
    pub(crate) open_files: u64,
    pub(crate) processes: u64,
    pub(crate) clear_groups: bool,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} contains a NUL byte", path.display()),
        )
    })
}

fn c_text(text: &str) -> io::Result<CString> {
    CString::new(text).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{text:?} contains a NUL byte"),
        )
    })
}

impl Plan {
    /// Lists the image's top level and prepares every path and program.
    pub(crate) fn new(
        input: &PlanInput<'_>,
        ready_write: OwnedFd,
        go_read: OwnedFd,
        pid1_write: OwnedFd,
        filters: Vec<BpfProgram>,
    ) -> io::Result<Plan> {
        let staging = input.staging;
        let mut root_entries = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(input.rootfs)?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(|entry| entry.file_name())
            .collect();
        names.sort();
        for name in names {
            if PROVIDED
                .iter()
                .any(|provided| name.as_bytes() == provided.as_bytes())
            {
                continue;
            }
            let source = input.rootfs.join(&name);
            let metadata = std::fs::symlink_metadata(&source)?;
            if metadata.file_type().is_symlink() {
                let target = std::fs::read_link(&source)?;
                root_entries.push(RootEntry::Symlink {
                    target: c_path(&target)?,
                    link: c_path(&staging.join(&name))?,
                });
            } else if metadata.is_dir() {
                root_entries.push(RootEntry::Dir {
                    source: c_path(&source)?,
                    target: c_path(&staging.join(&name))?,
                });
            }
            // Regular files at the top of an image are left out: nothing a compiler needs
            // lives there, and each would need a mount of its own.
        }
        let dev = staging.join("dev");
        let mut dev_nodes = Vec::new();
        for node in DEV_NODES {
            dev_nodes.push((
                c_path(&Path::new("/dev").join(node))?,
                c_path(&dev.join(node))?,
            ));
        }
        let mut dev_links = Vec::new();
        for (name, target) in DEV_LINKS {
            dev_links.push((c_text(target)?, c_path(&dev.join(name))?));
        }
        Ok(Plan {
            clear_groups: input.clear_groups,
            ready_write,
            go_read,
            pid1_write,
            staging: c_path(staging)?,
            root_entries,
            proc_dir: c_path(&staging.join("proc"))?,
            dev_dir: c_path(&dev)?,
            dev_nodes,
            dev_links,
            work_dir: c_path(&staging.join("work"))?,
            work_options: c_text(&format!("size={},mode=0755", input.work_bytes.max(1 << 20)))?,
            work_tmp: c_path(&staging.join("work/.tmp"))?,
            tmp_dir: c_path(&staging.join("tmp"))?,
            hpcc_dir: c_path(&staging.join(".hpcc"))?,
            agent_source: c_path(input.agent)?,
            agent_target: c_path(&staging.join(".hpcc/agent"))?,
            sock_source: c_path(input.sock_dir)?,
            sock_target: c_path(&staging.join(".hpcc/sock"))?,
            hostname: c_text(input.hostname)?,
            open_files: input.open_files,
            processes: input.processes,
            filters,
        })
    }
}

/// Writes `hpcc-sandbox: <step>: errno <n>` to stderr without allocating.
fn report(step: &str, errno: rustix::io::Errno) {
    report_as("hpcc-sandbox: ", step, errno);
}

/// Writes `<prefix><step>: errno <n>` to stderr without allocating (also for the VMM jail's
/// child, `vm::jail::plan`).
pub(crate) fn report_as(prefix: &str, step: &str, errno: rustix::io::Errno) {
    let mut buffer = [0u8; 160];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        for byte in bytes {
            if len < buffer.len() {
                buffer[len] = *byte;
                len += 1;
            }
        }
    };
    push(prefix.as_bytes());
    push(step.as_bytes());
    push(b": errno ");
    let mut digits = [0u8; 10];
    let mut value = errno.raw_os_error().unsigned_abs();
    let mut count = 0;
    loop {
        digits[count] = b'0' + u8::try_from(value % 10).unwrap_or(0);
        count += 1;
        value /= 10;
        if value == 0 || count == digits.len() {
            break;
        }
    }
    digits[..count].reverse();
    push(&digits[..count]);
    push(b"\n");
    let _ = rustix::io::write(rustix::stdio::stderr(), &buffer[..len]);
}

/// Runs one step, reporting its failure by name.
fn step<T>(name: &str, result: rustix::io::Result<T>) -> io::Result<T> {
    result.map_err(|errno| {
        report(name, errno);
        io::Error::from(errno)
    })
}

fn mkdir(name: &str, path: &CStr, mode: u32) -> io::Result<()> {
    match rustix::fs::mkdir(path, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(errno) => step(name, Err(errno)),
    }
}

fn touch(name: &str, path: &CStr) -> io::Result<()> {
    step(
        name,
        rustix::fs::open(
            path,
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ),
    )
    .map(drop)
}

/// The flags a bind remount must keep: in a user namespace the kernel refuses to clear the
/// `nosuid`/`nodev`/`noexec`/atime flags it locked on mounts copied from the parent.
pub(crate) fn kept_flags(path: &CStr) -> MountFlags {
    let Ok(stat) = rustix::fs::statvfs(path) else {
        return MountFlags::empty();
    };
    let pairs = [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ];
    let mut flags = MountFlags::empty();
    for (stat_flag, mount_flag) in pairs {
        if stat.f_flag.contains(stat_flag) {
            flags |= mount_flag;
        }
    }
    flags
}

fn bind_read_only(
    name: &str,
    source: &CStr,
    target: &CStr,
    recursive: bool,
    extra: MountFlags,
) -> io::Result<()> {
    if recursive {
        step(name, rustix::mount::mount_bind_recursive(source, target))?;
    } else {
        step(name, rustix::mount::mount_bind(source, target))?;
    }
    let flags = MountFlags::BIND | MountFlags::RDONLY | extra | kept_flags(target);
    step(name, rustix::mount::mount_remount(target, flags, c""))
}

/// In the first child, right after `unshare`: wait for the id maps, become uid/gid 0 inside.
pub(crate) fn after_unshare(plan: &Plan) -> io::Result<()> {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    step(
        "report pid",
        rustix::io::write(&plan.ready_write, &pid.to_ne_bytes()),
    )?;
    let mut answer = [0u8; 1];
    let read = step(
        "wait for id maps",
        rustix::io::read(&plan.go_read, &mut answer),
    )?;
    if read != 1 || answer[0] != 1 {
        report("id maps", rustix::io::Errno::PERM);
        return Err(io::Error::from(rustix::io::Errno::PERM));
    }
    step(
        "setresgid",
        rustix::thread::set_thread_res_gid(gid0(), gid0(), gid0()),
    )?;
    step(
        "setresuid",
        rustix::thread::set_thread_res_uid(uid0(), uid0(), uid0()),
    )
}

fn uid0() -> rustix::process::Uid {
    rustix::process::Uid::ROOT
}

fn gid0() -> rustix::process::Gid {
    rustix::process::Gid::ROOT
}

/// In PID 1 of the new PID namespace: build the root, pivot into it, pin the hostname, set the
/// session-wide rlimits, drop privileges for good (no_new_privs, seccomp). `exec` follows.
pub(crate) fn as_pid1(plan: &Plan) -> io::Result<()> {
    // Die with the intermediate process, so killing the session's host process ends it all.
    step(
        "pdeathsig",
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL)),
    )?;
    step(
        "make / private",
        rustix::mount::mount_change(
            c"/",
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        ),
    )?;
    let staging = plan.staging.as_c_str();
    step(
        "mount root tmpfs",
        rustix::mount::mount(
            c"tmpfs",
            staging,
            c"tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some(c"size=1m,mode=0755"),
        ),
    )?;
    for entry in &plan.root_entries {
        match entry {
            RootEntry::Dir { source, target } => {
                mkdir("mkdir image dir", target, 0o755)?;
                bind_read_only(
                    "bind image dir",
                    source,
                    target,
                    true,
                    MountFlags::NOSUID | MountFlags::NODEV,
                )?;
            }
            RootEntry::Symlink { target, link } => {
                step(
                    "image symlink",
                    rustix::fs::symlink(target.as_c_str(), link.as_c_str()),
                )?;
            }
        }
    }

    mkdir("mkdir /proc", &plan.proc_dir, 0o555)?;
    step(
        "mount /proc",
        rustix::mount::mount(
            c"proc",
            plan.proc_dir.as_c_str(),
            c"proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        ),
    )?;

    mkdir("mkdir /dev", &plan.dev_dir, 0o755)?;
    step(
        "mount /dev tmpfs",
        rustix::mount::mount(
            c"tmpfs",
            plan.dev_dir.as_c_str(),
            c"tmpfs",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            Some(c"size=64k,mode=0755"),
        ),
    )?;
    for (source, target) in &plan.dev_nodes {
        touch("create /dev node", target)?;
        step(
            "bind /dev node",
            rustix::mount::mount_bind(source.as_c_str(), target.as_c_str()),
        )?;
    }
    for (target, link) in &plan.dev_links {
        step(
            "/dev symlink",
            rustix::fs::symlink(target.as_c_str(), link.as_c_str()),
        )?;
    }
    step(
        "remount /dev read-only",
        rustix::mount::mount_remount(
            plan.dev_dir.as_c_str(),
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NOEXEC,
            c"",
        ),
    )?;

    mkdir("mkdir /work", &plan.work_dir, 0o755)?;
    step(
        "mount /work tmpfs",
        rustix::mount::mount(
            c"tmpfs",
            plan.work_dir.as_c_str(),
            c"tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some(plan.work_options.as_c_str()),
        ),
    )?;
    mkdir("mkdir /work/.tmp", &plan.work_tmp, 0o700)?;
    step(
        "chmod /work/.tmp",
        rustix::fs::chmod(plan.work_tmp.as_c_str(), Mode::from_raw_mode(0o1777)),
    )?;
    mkdir("mkdir /tmp", &plan.tmp_dir, 0o755)?;
    step(
        "bind /tmp",
        rustix::mount::mount_bind(plan.work_tmp.as_c_str(), plan.tmp_dir.as_c_str()),
    )?;

    mkdir("mkdir /.hpcc", &plan.hpcc_dir, 0o755)?;
    touch("create /.hpcc/agent", &plan.agent_target)?;
    bind_read_only(
        "bind agent",
        &plan.agent_source,
        &plan.agent_target,
        false,
        MountFlags::NOSUID | MountFlags::NODEV,
    )?;
    mkdir("mkdir /.hpcc/sock", &plan.sock_target, 0o755)?;
    step(
        "bind socket dir",
        rustix::mount::mount_bind(plan.sock_source.as_c_str(), plan.sock_target.as_c_str()),
    )?;
    let sock_flags = MountFlags::BIND
        | MountFlags::NOSUID
        | MountFlags::NODEV
        | MountFlags::NOEXEC
        | kept_flags(&plan.sock_target);
    step(
        "remount socket dir",
        rustix::mount::mount_remount(plan.sock_target.as_c_str(), sock_flags, c""),
    )?;

    step(
        "remount root read-only",
        rustix::mount::mount_remount(
            staging,
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
            c"",
        ),
    )?;
    step("chdir to new root", rustix::process::chdir(staging))?;
    step("pivot_root", rustix::process::pivot_root(c".", c"."))?;
    step(
        "detach old root",
        rustix::mount::unmount(c".", UnmountFlags::DETACH),
    )?;
    step("chdir /", rustix::process::chdir(c"/"))?;

    step(
        "sethostname",
        rustix::system::sethostname(plan.hostname.as_bytes()),
    )?;
    let limits = [
        (Resource::Nofile, plan.open_files),
        (Resource::Nproc, plan.processes),
        (Resource::Core, 0),
    ];
    for (resource, value) in limits {
        let current = rustix::process::getrlimit(resource);
        let value = current.maximum.map_or(value, |maximum| value.min(maximum));
        let limit = Rlimit {
            current: Some(value),
            maximum: Some(value),
        };
        step("setrlimit", rustix::process::setrlimit(resource, limit))?;
    }
    step("no_new_privs", rustix::thread::set_no_new_privs(true))?;
    for filter in &plan.filters {
        // The error is dropped unformatted: building a message would allocate.
        if seccompiler::apply_filter(filter).is_err() {
            report("seccomp", rustix::io::Errno::INVAL);
            return Err(io::Error::from(rustix::io::Errno::INVAL));
        }
    }
    Ok(())
}
