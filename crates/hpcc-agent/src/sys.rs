//! The agent's unsafe code: the `pre_exec` hook of job processes.
//!
//! `CommandExt::pre_exec` is unsafe because the closure runs in the forked child of a possibly
//! multi-threaded process, where only async-signal-safe work is allowed. The closure here only
//! makes raw syscalls through rustix (its `linux_raw` backend touches no libc state, allocates
//! nothing and takes no lock).

use std::io;

use rustix::process::{Resource, Rlimit};
use rustix::thread::{CapabilitySet, CapabilitySets};

use crate::config::JobLimits;

/// Makes `command`'s child apply `limits` and drop every capability before it execs.
pub(crate) fn set_job_pre_exec(command: &mut tokio::process::Command, limits: JobLimits) {
    // SAFETY: `child_setup` is async-signal-safe: it only calls rustix syscall wrappers on
    // values captured by copy (`JobLimits` is `Copy`), allocating nothing and taking no lock.
    unsafe {
        command.pre_exec(move || child_setup(limits));
    }
}

/// Runs in the forked child: rlimits, then capabilities.
fn child_setup(limits: JobLimits) -> io::Result<()> {
    let pairs = [
        (Resource::As, limits.address_space),
        (Resource::Cpu, limits.cpu_seconds),
        (Resource::Nproc, limits.processes),
        (Resource::Nofile, limits.open_files),
        (Resource::Core, Some(0)),
    ];
    for (resource, value) in pairs {
        if let Some(value) = value {
            set_limit(resource, value)?;
        }
    }
    drop_capabilities()
}

/// Sets both the soft and hard limit to `value`, or to the current hard limit if that is lower
/// (raising it would need a privilege the agent may not have).
fn set_limit(resource: Resource, value: u64) -> io::Result<()> {
    let current = rustix::process::getrlimit(resource);
    let value = match current.maximum {
        Some(maximum) => value.min(maximum),
        None => value,
    };
    rustix::process::setrlimit(
        resource,
        Rlimit {
            current: Some(value),
            maximum: Some(value),
        },
    )
    .map_err(io::Error::from)
}

/// Empties the bounding set (so exec as uid 0 cannot regain capabilities) and the
/// effective, permitted and inheritable sets.
fn drop_capabilities() -> io::Result<()> {
    for capability in CapabilitySet::all().iter() {
        // EPERM (no CAP_SETPCAP: then there is nothing to drop) and EINVAL (a capability this
        // kernel does not know) are both fine to ignore.
        let _ = rustix::thread::remove_capability_from_bounding_set(capability);
    }
    let empty = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: CapabilitySet::empty(),
        inheritable: CapabilitySet::empty(),
    };
    rustix::thread::set_capabilities(None, empty).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_apply_in_the_child() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let output = runtime.block_on(async {
            let mut command = tokio::process::Command::new("sh");
            command.args(["-c", "ulimit -n; ulimit -t; grep ^CapEff /proc/self/status"]);
            set_job_pre_exec(
                &mut command,
                JobLimits {
                    open_files: Some(77),
                    cpu_seconds: Some(9),
                    ..JobLimits::default()
                },
            );
            command.output().await.expect("sh runs")
        });
        let text = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.first(), Some(&"77"), "{text}");
        assert_eq!(lines.get(1), Some(&"9"), "{text}");
        assert_eq!(lines.get(2), Some(&"CapEff:\t0000000000000000"), "{text}");
    }
}
