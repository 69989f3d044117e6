//! The jailed VMMs' seccomp allow-lists.
//!
//! Unlike the sandbox's deny list (`sandbox::seccomp`), a VMM gets only the system calls it
//! was seen to make; anything else kills the process (`SECCOMP_RET_KILL_PROCESS`), which the
//! runtime sees as a dead session. The filter is installed just before `execve`, so the lists
//! cover the dynamic loader's start-up too.
//!
//! The lists were found by running: `strace -f` of QEMU 7.2 (Debian bookworm) through boot,
//! compiles and stop (the `qemu_*` integration tests with the binary wrapped in `strace -f`),
//! the union of the calls made, plus the calls of the same work on paths those runs did not
//! take (`exit`, `rt_sigreturn`, `restart_syscall`, `tgkill` for an abort, `mremap`, the AIO
//! and timer calls). The `jail_*` integration tests then boot, compile, snapshot, restore and
//! stop under the filters, and what they were killed for (`dmesg`: `type=1326 ... syscall=N`)
//! was added:
//! - [`Profile::Qemu`]: QEMU under TCG (or KVM), which needs a wider list than Firecracker:
//!   its RCU and worker threads, `io_uring`-less AIO via threads, `memfd_create` and NUMA
//!   policy calls for guest memory, `ioctl` for KVM and the TTY layer, and TCG's own
//!   `mprotect`/`madvise` of translated code. QEMU is the server of its own Unix sockets
//!   (the agent's virtio-serial ports, QMP, and a restore's `-incoming` socket): it
//!   `unlink`s a stale path, `bind`s, `listen`s and `accept4`s. A snapshot migrates to the
//!   worker's socket, which takes only `socket` and `connect` (in `COMMON`); a restore
//!   reads the stream on its `-incoming` socket after `fadvise64` on it (found by
//!   `jail_snapshot_restores_into_a_new_jail`: syscall 221).
//! - [`Profile::Firecracker`]: a Firecracker binary run directly. Firecracker installs its own
//!   per-thread filters (so `seccomp` itself is allowed, only ever narrowing: no_new_privs is
//!   set); ours is the outer bound and adds the calls its API server, vsock and block devices
//!   make, which are a subset of QEMU's. It is not exercised against the real binary here
//!   (there is none), only against the test double.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::sandbox::seccomp::SeccompError;

/// Which allow-list a jailed process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `qemu-system-x86_64`.
    Qemu,
    /// `firecracker`.
    Firecracker,
}

/// Calls every jailed process makes: the dynamic loader, libc's start-up, threads, memory,
/// signals, files, polling and Unix sockets, exit. `clone` and `socket` are narrowed by
/// argument in [`filter`]; `clone3` and `io_uring_setup` are listed only so that the
/// [`probe_filter`] can answer them with `ENOSYS` instead of killing the process.
const COMMON: &[(&str, i64)] = &[
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("preadv", libc::SYS_preadv),
    ("pwritev", libc::SYS_pwritev),
    ("close", libc::SYS_close),
    ("openat", libc::SYS_openat),
    ("access", libc::SYS_access),
    ("faccessat", libc::SYS_faccessat),
    ("newfstatat", libc::SYS_newfstatat),
    ("fstat", libc::SYS_fstat),
    ("lseek", libc::SYS_lseek),
    ("readlink", libc::SYS_readlink),
    ("readlinkat", libc::SYS_readlinkat),
    ("getdents64", libc::SYS_getdents64),
    ("statfs", libc::SYS_statfs),
    ("fstatfs", libc::SYS_fstatfs),
    ("fcntl", libc::SYS_fcntl),
    ("dup", libc::SYS_dup),
    ("dup3", libc::SYS_dup3),
    ("ioctl", libc::SYS_ioctl),
    ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync),
    ("ftruncate", libc::SYS_ftruncate),
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mprotect", libc::SYS_mprotect),
    ("mremap", libc::SYS_mremap),
    ("madvise", libc::SYS_madvise),
    ("brk", libc::SYS_brk),
    ("membarrier", libc::SYS_membarrier),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("futex", libc::SYS_futex),
    ("set_tid_address", libc::SYS_set_tid_address),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("get_robust_list", libc::SYS_get_robust_list),
    ("rseq", libc::SYS_rseq),
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("gettid", libc::SYS_gettid),
    ("getpid", libc::SYS_getpid),
    ("getppid", libc::SYS_getppid),
    ("tgkill", libc::SYS_tgkill),
    ("sched_yield", libc::SYS_sched_yield),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("sched_setaffinity", libc::SYS_sched_setaffinity),
    ("getuid", libc::SYS_getuid),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getegid", libc::SYS_getegid),
    ("getresuid", libc::SYS_getresuid),
    ("getresgid", libc::SYS_getresgid),
    ("uname", libc::SYS_uname),
    ("sysinfo", libc::SYS_sysinfo),
    ("getrusage", libc::SYS_getrusage),
    ("prlimit64", libc::SYS_prlimit64),
    ("arch_prctl", libc::SYS_arch_prctl),
    ("prctl", libc::SYS_prctl),
    ("getrandom", libc::SYS_getrandom),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_getres", libc::SYS_clock_getres),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("nanosleep", libc::SYS_nanosleep),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("eventfd2", libc::SYS_eventfd2),
    ("pipe2", libc::SYS_pipe2),
    ("socket", libc::SYS_socket),
    ("connect", libc::SYS_connect),
    ("sendmsg", libc::SYS_sendmsg),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendto", libc::SYS_sendto),
    ("recvfrom", libc::SYS_recvfrom),
    ("getsockname", libc::SYS_getsockname),
    ("getpeername", libc::SYS_getpeername),
    ("setsockopt", libc::SYS_setsockopt),
    ("getsockopt", libc::SYS_getsockopt),
    ("shutdown", libc::SYS_shutdown),
    ("execve", libc::SYS_execve),
    ("seccomp", libc::SYS_seccomp),
    ("io_uring_setup", libc::SYS_io_uring_setup),
];

/// What QEMU adds: its guest memory (`memfd_create`, `fallocate`, NUMA policy), its event
/// loop's `signalfd` and timers, its block layer's AIO, and serving its Unix sockets
/// (virtio-serial ports, QMP, `-incoming`).
const QEMU: &[(&str, i64)] = &[
    ("accept4", libc::SYS_accept4),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("unlink", libc::SYS_unlink),
    // A restore: QEMU advises the kernel on the incoming migration stream.
    ("fadvise64", libc::SYS_fadvise64),
    ("memfd_create", libc::SYS_memfd_create),
    ("fallocate", libc::SYS_fallocate),
    ("get_mempolicy", libc::SYS_get_mempolicy),
    ("set_mempolicy", libc::SYS_set_mempolicy),
    ("mbind", libc::SYS_mbind),
    ("signalfd4", libc::SYS_signalfd4),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("fchdir", libc::SYS_fchdir),
    ("io_setup", libc::SYS_io_setup),
    ("io_destroy", libc::SYS_io_destroy),
    ("io_submit", libc::SYS_io_submit),
    ("io_getevents", libc::SYS_io_getevents),
    ("io_cancel", libc::SYS_io_cancel),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("sysinfo", libc::SYS_sysinfo),
];

/// What Firecracker adds: its API server's socket, its timers, the block device.
const FIRECRACKER: &[(&str, i64)] = &[
    ("accept4", libc::SYS_accept4),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("unlink", libc::SYS_unlink),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("fallocate", libc::SYS_fallocate),
    ("socketpair", libc::SYS_socketpair),
    ("statx", libc::SYS_statx),
];

/// Calls that libraries only probe for, answered with `ENOSYS` (so they fall back) rather than
/// made: `clone3`, whose flags seccomp cannot read (glibc falls back to `clone`, whose flags
/// [`filter`] checks), and `io_uring_setup` (QEMU's block layer falls back to threads), a large
/// kernel surface a VMM does not need.
const PROBED: &[(&str, i64)] = &[
    ("clone3", libc::SYS_clone3),
    ("io_uring_setup", libc::SYS_io_uring_setup),
];

/// The `clone` flags that create namespaces: unprivileged user namespaces would give the
/// VMM capabilities again, inside one.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// The calls `profile` may make.
pub fn allowed(profile: Profile) -> Vec<(&'static str, i64)> {
    let extra = match profile {
        Profile::Qemu => QEMU,
        Profile::Firecracker => FIRECRACKER,
    };
    let mut calls: Vec<(&'static str, i64)> = COMMON.iter().chain(extra).copied().collect();
    calls.sort_unstable_by_key(|(_, number)| *number);
    calls.dedup_by_key(|(_, number)| *number);
    calls
}

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::UnsupportedArch(std::env::consts::ARCH))
}

fn condition(
    argument: u8,
    operation: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(argument, SeccompCmpArgLen::Qword, operation, value)
        .map_err(SeccompError::Build)
}

/// The allow-list of `profile`: its calls allowed (`clone` only without namespace flags,
/// `socket` only for `AF_UNIX`), anything else kills the process.
pub fn filter(profile: Profile) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed(profile)
        .into_iter()
        .map(|(_, number)| (number, Vec::new()))
        .collect();
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![condition(
            0,
            SeccompCmpOp::MaskedEq(NAMESPACE_FLAGS),
            0,
        )?])
        .map_err(SeccompError::Build)?],
    );
    let unix = u64::try_from(libc::AF_UNIX).unwrap_or(1);
    rules.insert(
        libc::SYS_socket,
        vec![
            SeccompRule::new(vec![condition(0, SeccompCmpOp::Eq, unix)?])
                .map_err(SeccompError::Build)?,
        ],
    );
    SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch()?,
    )
    .and_then(TryInto::try_into)
    .map_err(SeccompError::Build)
}

/// The filter that answers `PROBED` calls with `ENOSYS`. Installed beside [`filter`]: the
/// kernel runs both and takes the stricter answer, which for these calls (allowed by the
/// allow-list) is `ENOSYS`.
pub fn probe_filter() -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = PROBED
        .iter()
        .map(|(_, number)| (*number, Vec::new()))
        .collect();
    let enosys = u32::try_from(libc::ENOSYS).unwrap_or(38);
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(enosys),
        arch()?,
    )
    .and_then(TryInto::try_into)
    .map_err(SeccompError::Build)
}

/// Both filters of `profile`, in the order they are installed.
pub fn filters(profile: Profile) -> Result<Vec<BpfProgram>, SeccompError> {
    Ok(vec![probe_filter()?, filter(profile)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    // No test installs these filters in-process: a call outside the list (Rust's `statx`, for
    // one) kills the whole test process. The integration tests check them from outside, on
    // jailed QEMU sessions (`Seccomp: 2`, and the guests boot and compile under them).
    #[test]
    fn lists_build_without_duplicates_or_dangerous_calls() {
        for profile in [Profile::Qemu, Profile::Firecracker] {
            let calls = allowed(profile);
            for (name, _) in &calls {
                assert!(
                    !matches!(
                        *name,
                        "mount"
                            | "umount2"
                            | "pivot_root"
                            | "chroot"
                            | "unshare"
                            | "setns"
                            | "ptrace"
                            | "bpf"
                            | "perf_event_open"
                            | "userfaultfd"
                            | "keyctl"
                            | "kexec_load"
                            | "init_module"
                            | "finit_module"
                            | "setuid"
                            | "setgid"
                    ),
                    "{profile:?} allows {name}"
                );
            }
            let program = filter(profile).expect("filter builds");
            assert!(
                program.len() > calls.len(),
                "{profile:?}: {} instructions",
                program.len()
            );
        }
        assert!(allowed(Profile::Qemu).len() > allowed(Profile::Firecracker).len());
        for (name, number) in PROBED {
            assert!(
                COMMON.iter().any(|(_, listed)| listed == number),
                "{name} must be allowed for its ENOSYS answer to win"
            );
        }
    }
}
