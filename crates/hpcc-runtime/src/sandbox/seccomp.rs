//! The sandbox's seccomp filters: a deny list on top of the namespaces.
//!
//! The namespaces already confine what these calls could reach, and job processes hold no
//! capabilities; the filter removes the kernel surface that namespaced root still exposes
//! (mounting, new namespaces, keyrings, BPF, perf, userfaultfd, io_uring, ptrace) so a kernel
//! bug there is not reachable from a tenant's compile. Denied calls fail with `EPERM`, which
//! programs handle, rather than killing the process. `clone` is refused only when it asks for
//! a new namespace; `clone3` (whose flags sit behind a pointer that seccomp cannot read) fails
//! with `ENOSYS`, so libc falls back to `clone`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// A filter that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// This CPU architecture has no seccomp support in `seccompiler`.
    #[error("seccomp filters are not supported on {0}")]
    UnsupportedArch(&'static str),
    /// seccompiler rejected the filter.
    #[error("building the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
}

/// The system calls a job may never make.
pub const DENIED: &[(&str, i64)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("reboot", libc::SYS_reboot),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("syslog", libc::SYS_syslog),
    ("vhangup", libc::SYS_vhangup),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
];

/// The `clone` flags that create namespaces.
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::UnsupportedArch(std::env::consts::ARCH))
}

/// Builds the filters, in the order they are to be installed.
pub fn filters() -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, number) in DENIED {
        // An empty rule list matches the call whatever its arguments.
        rules.insert(*number, Vec::new());
    }
    let mut clone_rules = Vec::new();
    for flag in NAMESPACE_FLAGS {
        let condition = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(*flag),
            *flag,
        )
        .map_err(SeccompError::Build)?;
        clone_rules.push(SeccompRule::new(vec![condition]).map_err(SeccompError::Build)?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    let eperm = u32::try_from(libc::EPERM).unwrap_or(1);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(eperm),
        arch,
    )
    .map_err(SeccompError::Build)?;

    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let enosys = u32::try_from(libc::ENOSYS).unwrap_or(38);
    let fallback = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(enosys),
        arch,
    )
    .map_err(SeccompError::Build)?;

    let deny: BpfProgram = deny.try_into().map_err(SeccompError::Build)?;
    let fallback: BpfProgram = fallback.try_into().map_err(SeccompError::Build)?;
    Ok(vec![deny, fallback])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build_and_cover_the_deny_list() {
        let filters = filters().expect("filters build on this architecture");
        assert_eq!(filters.len(), 2);
        // Each denied call costs at least a compare and a jump; an empty program would mean
        // the rules were lost.
        assert!(
            filters[0].len() > DENIED.len(),
            "{} instructions",
            filters[0].len()
        );
        for (name, number) in DENIED {
            assert!(*number >= 0, "{name}");
        }
        let mut numbers: Vec<i64> = DENIED.iter().map(|(_, number)| *number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), DENIED.len(), "no call is listed twice");
    }

    /// Installs the filters on a fresh thread (seccomp and no_new_privs are per thread without
    /// TSYNC) and checks that denied calls fail with EPERM while others still work.
    #[test]
    fn denied_calls_fail_with_eperm() {
        let filters = filters().expect("filters build");
        let outcome = std::thread::spawn(move || {
            for filter in &filters {
                seccompiler::apply_filter(filter).expect("filter installs");
            }
            let unmount =
                rustix::mount::unmount(c"/nonexistent-hpcc", rustix::mount::UnmountFlags::empty());
            let mount = rustix::mount::mount_bind(c"/nonexistent-a", c"/nonexistent-b");
            let hostname = rustix::system::sethostname(b"x");
            let allowed = rustix::fs::stat(c"/");
            (
                unmount,
                mount,
                hostname,
                allowed.is_ok(),
                std::fs::read_to_string("/proc/thread-self/status"),
            )
        })
        .join()
        .expect("thread");
        let eperm = rustix::io::Errno::PERM;
        assert_eq!(outcome.0, Err(eperm), "umount2");
        assert_eq!(outcome.1, Err(eperm), "mount");
        assert_eq!(outcome.2, Err(eperm), "sethostname");
        assert!(outcome.3, "stat is allowed");
        let status = outcome.4.expect("reading files is allowed");
        assert!(
            status.lines().any(|line| line == "NoNewPrivs:\t1"),
            "{status}"
        );
        assert!(
            status.lines().any(|line| line.starts_with("Seccomp:\t2")),
            "{status}"
        );
    }
}
