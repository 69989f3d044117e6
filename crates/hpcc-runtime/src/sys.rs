//! The runtime's unsafe code: what runs in a child between `fork` and `exec`, for the sandbox,
//! the VMM jail and Firecracker's `jailer`.
//!
//! What needs `unsafe` here, each wrapped once in a safe function:
//! - `CommandExt::pre_exec`, whose closure runs in the forked child of a multi-threaded process
//!   and must be async-signal-safe. Ours only run steps prepared before the fork
//!   (`sandbox::plan` for a sandbox, `vm::jail::plan` for a jailed VMM), making rustix and libc
//!   calls on preallocated data: no allocation, no lock. `kill_with_parent` is the smallest of
//!   them, one `prctl`; `set_jailer_pre_exec` puts Firecracker's `jailer` in new namespaces under
//!   an init tied to the worker.
//! - `unshare`, which rustix marks unsafe because `CLONE_FILES` could break other threads'
//!   file descriptors; we never pass it, and the child has a single thread anyway.
//! - `fork` and `_exit` for the second fork that makes a sandbox's job or a jailed VMM PID 1 of
//!   its namespace while its parent stays outside to wait for it (a process that calls
//!   `unshare(CLONE_NEWPID)` stays outside the new namespace; its next child is PID 1), and
//!   `close_range` in that waiting parent.
//!   JUSTIFICATION: rustix offers `fork` only in its experimental `runtime` API, has no
//!   `close_range`, and nix is not otherwise a dependency, so these calls go to libc directly.

use std::io;

use rustix::process::{Pid, WaitOptions};
use rustix::thread::UnshareFlags;

use crate::sandbox::plan::{self, Plan};
use crate::vm::jail::plan::{self as jail_plan, JailPlan};

/// Makes `command`'s child enter new namespaces and run `plan` before it execs. The process the
/// caller gets back is an intermediate one that waits for the namespace's PID 1 and exits with
/// its status; PID 1 dies with it (`PR_SET_PDEATHSIG`).
pub(crate) fn set_sandbox_pre_exec(command: &mut tokio::process::Command, plan: Plan) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure is async-signal-safe: `child_main` allocates nothing and takes no
    // lock (it makes raw syscalls through rustix and libc on the prepared `plan`, which the
    // closure owns, so it outlives the child's use of it).
    unsafe {
        command.pre_exec(move || child_main(&plan, parent));
    }
}

fn child_main(plan: &Plan, parent: Pid) -> io::Result<()> {
    if plan.clear_groups {
        rustix::thread::set_thread_groups(&[])?;
    }
    let flags = UnshareFlags::NEWUSER
        | UnshareFlags::NEWNS
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWNET
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWUTS;
    // SAFETY: `flags` does not contain `CLONE_FILES`, the flag that makes rustix's unshare
    // unsafe (it would detach this thread's descriptor table from other threads', and this
    // forked child has no other threads).
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    plan::after_unshare(plan)?;
    // The intermediate dies with the worker, even one killed outright (and with it PID 1 and
    // the whole session); a worker that died before this line is caught by the check. Set
    // after the credential changes above, which would clear it.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::getppid() != Some(parent) {
        return Err(io::Error::other(
            "the worker went away while starting a session",
        ));
    }
    // SAFETY: this process is the single-threaded child of a fork, so forking again cannot
    // leave another thread's locks held in the new child; both sides continue with
    // async-signal-safe code only.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => plan::as_pid1(plan),
        child => {
            // A failed write only costs the host its direct handle on PID 1; killing this
            // process still ends the session (PR_SET_PDEATHSIG).
            let _ = rustix::io::write(&plan.pid1_write, &child.to_ne_bytes());
            intermediate(child)
        }
    }
}

/// Makes `command`'s child join the jail's cgroup, enter new mount, PID, network, IPC and UTS
/// namespaces and run `plan` (root, credentials, seccomp) before it execs the VMM. As for the
/// sandbox, the process the caller gets back is an intermediate one outside the new PID
/// namespace that waits for the VMM (its PID 1) and exits with its status; the VMM dies with
/// it, and it dies with the thread that spawned it (`PR_SET_PDEATHSIG`).
pub(crate) fn set_jail_pre_exec(command: &mut tokio::process::Command, plan: JailPlan) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure is async-signal-safe: `jail_child` allocates nothing and takes no
    // lock (raw syscalls through rustix and libc on the prepared `plan`, which the closure
    // owns, so it outlives the child's use of it).
    unsafe {
        command.pre_exec(move || jail_child(&plan, parent));
    }
}

fn jail_child(plan: &JailPlan, parent: Pid) -> io::Result<()> {
    jail_plan::join_cgroup(plan)?;
    let flags = UnshareFlags::NEWNS
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWNET
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWUTS;
    // SAFETY: `flags` does not contain `CLONE_FILES` (see `child_main`), and this forked child
    // has no other threads.
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::getppid() != Some(parent) {
        return Err(io::Error::other(
            "the worker went away while starting a VMM",
        ));
    }
    // SAFETY: as in `child_main`: the single-threaded child of a fork forks again, and both
    // sides continue with async-signal-safe code only.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => jail_plan::enter(plan),
        child => {
            // Without it the host only loses its direct handle on the VMM; killing this
            // process still ends it (PR_SET_PDEATHSIG).
            let _ = rustix::io::write(&plan.pid_write, &child.to_ne_bytes());
            if jail_plan::as_reaper(plan, parent).is_err() {
                if let Some(vmm) = Pid::from_raw(child) {
                    let _ = rustix::process::kill_process(vmm, rustix::process::Signal::KILL);
                }
            }
            intermediate(child)
        }
    }
}

/// The process between the host and PID 1: closes every descriptor (so `Command::spawn` in the
/// parent returns once PID 1 execs, and nothing stays open by accident), waits for PID 1, and
/// exits with its status. It never returns to `std`'s exec path.
fn intermediate(child: libc::pid_t) -> ! {
    // SAFETY: close_range has no memory-safety preconditions; closing every descriptor is
    // what we want here (this process only waits from now on).
    // JUSTIFICATION: rustix has no close_range wrapper.
    unsafe {
        libc::close_range(0, u32::MAX, 0);
    }
    let code = loop {
        match rustix::process::waitpid(Pid::from_raw(child), WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                break status
                    .exit_status()
                    .or_else(|| status.terminating_signal().map(|signal| 128 + signal))
                    .unwrap_or(1)
            }
            Err(rustix::io::Errno::INTR) => continue,
            _ => break 1,
        }
    };
    // SAFETY: `_exit` ends the process without running atexit handlers or touching stdio
    // buffers, which is the only safe way out of a forked child of a threaded program.
    unsafe { libc::_exit(code) }
}

/// Makes `command`'s child die (SIGKILL) when the thread that spawned it goes, as when the
/// worker is killed with SIGKILL and no destructor runs: a VMM must not outlive its worker.
pub(crate) fn kill_with_parent(command: &mut tokio::process::Command) {
    // SAFETY: the closure only makes one raw prctl syscall through rustix's linux_raw backend,
    // which is async-signal-safe: no allocation, no lock, no libc state.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(io::Error::from)
        });
    }
}

/// Moves the calling thread into new namespaces of the kinds in `flags` (`unshare(2)`), for
/// the jailer's test double; `CLONE_FILES` (the one flag that makes the call unsafe) is refused.
pub(crate) fn unshare(flags: UnshareFlags) -> io::Result<()> {
    if flags.contains(UnshareFlags::FILES) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unsharing the descriptor table is not supported",
        ));
    }
    // SAFETY: `flags` does not contain `CLONE_FILES`, checked above, which is what makes
    // rustix's unshare unsafe (other threads' descriptor tables would diverge from ours).
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// Makes `command` (Firecracker's `jailer`) start in new PID, network, IPC and UTS namespaces,
/// tied to the worker however it ends:
///
/// ```text
/// worker ─ P (host PID ns, root, waits) ─ Q (PID 1 of the new PID ns, root, reaps) ─ jailer ─► firecracker
/// ```
///
/// P is the process the caller gets back; it dies with the spawning thread
/// (`PR_SET_PDEATHSIG`), and Q dies with P the same way. Q is the new namespace's init, so when
/// Q dies the kernel kills everything in the namespace: the jailed Firecracker (whose own
/// parent-death signal the jailer's change of uid would clear) and whatever it started. Q
/// reaps every process reparented to it (the jailer's `--new-pid-ns` child among them) and
/// exits with the jailer's status once none is left; P exits with Q's.
pub(crate) fn set_jailer_pre_exec(command: &mut tokio::process::Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure is async-signal-safe: it allocates nothing and takes no lock, making
    // raw syscalls through rustix and libc only (`jailer_child`).
    unsafe {
        command.pre_exec(move || jailer_child(parent));
    }
}

fn jailer_child(parent: Pid) -> io::Result<()> {
    let flags =
        UnshareFlags::NEWPID | UnshareFlags::NEWNET | UnshareFlags::NEWIPC | UnshareFlags::NEWUTS;
    // SAFETY: no `CLONE_FILES` in `flags`, and this forked child has a single thread.
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::getppid() != Some(parent) {
        return Err(io::Error::other(
            "the worker went away while starting a session",
        ));
    }
    // SAFETY: single-threaded child of a fork; both sides go on with async-signal-safe code.
    let init = unsafe { libc::fork() };
    match init {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // Q: PID 1 of the new namespace. (Its parent is outside the namespace, so there is
            // no way to check from here that P still lives: if P died between the fork and
            // this line, Q outlives it, which takes the worker's death in that instant.)
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // SAFETY: as above; this process has one thread.
            let jailer = unsafe { libc::fork() };
            match jailer {
                -1 => Err(io::Error::last_os_error()),
                // The jailer: back to `exec`.
                0 => Ok(()),
                jailer => reap_all(jailer),
            }
        }
        init => {
            // The closure cannot send Q's pid anywhere, and nobody needs it: P's own pid is
            // the handle on the whole tree.
            intermediate(init)
        }
    }
}

/// PID 1 of a jail's namespace: closes every descriptor, reaps every child until none is
/// left, and exits with `first`'s status. Never returns to `std`'s exec path.
fn reap_all(first: libc::pid_t) -> ! {
    // SAFETY: close_range has no memory-safety preconditions; this process only waits now.
    // JUSTIFICATION: rustix has no close_range wrapper.
    unsafe {
        libc::close_range(0, u32::MAX, 0);
    }
    let mut code = 1;
    loop {
        match rustix::process::wait(WaitOptions::empty()) {
            Ok(Some((pid, status))) => {
                if pid.as_raw_nonzero().get() == first {
                    code = status
                        .exit_status()
                        .or_else(|| status.terminating_signal().map(|signal| 128 + signal))
                        .unwrap_or(1);
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            // ECHILD: nothing left.
            _ => break,
        }
    }
    // SAFETY: `_exit` is the only safe way out of a forked child of a threaded program.
    unsafe { libc::_exit(code) }
}
