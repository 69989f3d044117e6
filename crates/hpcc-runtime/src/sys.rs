//! The runtime's unsafe code: the sandbox child between `fork` and `exec`.
//!
//! Three things here need `unsafe`, each wrapped once:
//! - `CommandExt::pre_exec`, whose closure runs in the forked child of a multi-threaded
//!   process and must be async-signal-safe; ours only runs `sandbox::plan`'s step functions,
//!   which make rustix syscalls on data prepared before the fork.
//! - `unshare`, which rustix marks unsafe because `CLONE_FILES` could break other threads'
//!   file descriptors; we never pass it, and the child has a single thread anyway.
//! - `fork` and `_exit` for the second fork that makes the job's PID 1 (a process that calls
//!   `unshare(CLONE_NEWPID)` stays outside the new namespace; its next child is PID 1).
//!   JUSTIFICATION: rustix offers `fork` only in its experimental `runtime` API and nix is
//!   not otherwise a dependency, so these two calls go to libc directly.

use std::io;

use rustix::process::{Pid, WaitOptions};
use rustix::thread::UnshareFlags;

use crate::sandbox::plan::{self, Plan};

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
