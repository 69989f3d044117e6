//! The microVM runtimes: a session is a guest with no NIC, booted from a kernel, an
//! initramfs holding the agent, and the image's root as a read-only disk.
//!
//! [`qemu`] runs QEMU's `microvm` machine and reaches the agent over virtio-serial ports
//! ([`serial`]), which, unlike QEMU 7.2's vhost-user vsock, can migrate, so its sessions can be
//! snapshotted (driven over QMP, [`qmp`]); [`firecracker`] drives Firecracker through its API
//! socket and reaches the agent through hybrid vsock ([`hybrid`]). Both share what a guest is
//! made of ([`GuestConfig`], [`initramfs`], [`disk`]) and how their host processes are confined
//! ([`jail`]: namespaces, a `pivot_root`ed directory, an unprivileged uid, seccomp and a cgroup
//! per session; Firecracker may use its own `jailer` instead). The agent boots the guest itself
//! (`hpcc-agent --vm-root`, its `vm.rs`).

pub mod disk;
pub mod firecracker;
pub mod hybrid;
pub mod initramfs;
pub mod jail;
pub mod qemu;
pub mod qmp;
pub mod serial;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::SessionSpec;

/// The guest vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// The guest's CID (each session has its own vsock device, so all can use the first free one).
pub const GUEST_CID: u32 = 3;

/// Host memory a VMM takes besides its guest's RAM (its own code and heap, device
/// emulation, the vsock backend, QEMU's TCG translation cache), for the worker's memory
/// accounting: generous, so that a worker full of guests does not overcommit.
pub const VMM_OVERHEAD_BYTES: u64 = 128 << 20;

impl GuestConfig {
    /// Host memory one guest may take: its RAM plus [`VMM_OVERHEAD_BYTES`].
    pub fn session_memory(&self) -> u64 {
        (u64::from(self.memory_mib) << 20) + VMM_OVERHEAD_BYTES
    }
}

/// The guest device the root disk appears as.
pub const ROOT_DEVICE: &str = "/dev/vda";

/// What every guest is made of, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// The guest kernel (an uncompressed `vmlinux` for Firecracker; a `bzImage` also works
    /// for QEMU).
    pub kernel: PathBuf,
    /// Kernel modules the guest needs that its kernel does not have built in, in load order
    /// (for Debian's cloud kernel: virtio_ring, virtio, virtio_mmio, virtio_blk,
    /// virtio_console for the `qemu` runtime's virtio-serial ports, and vsock,
    /// vmw_vsock_virtio_transport_common, vmw_vsock_virtio_transport for Firecracker's
    /// vsock). Empty for a kernel with those built in.
    pub modules: Vec<PathBuf>,
    /// The static `hpcc-agent` binary, `/init` of the initramfs.
    pub agent_binary: PathBuf,
    /// Where initramfs, root disks and session directories are kept; short, since socket
    /// paths are limited to 107 bytes.
    pub state_dir: PathBuf,
    /// Virtual CPUs per guest.
    pub vcpus: u32,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// How long a guest may take to boot until its agent answers.
    pub boot_timeout: Duration,
}

impl GuestConfig {
    /// Defaults (2 vCPUs, 1 GiB, 60 s to boot) for the given kernel, modules and agent.
    pub fn new(kernel: PathBuf, modules: Vec<PathBuf>, agent_binary: PathBuf) -> GuestConfig {
        GuestConfig {
            kernel,
            modules,
            agent_binary,
            state_dir: std::env::temp_dir().join("hpcc-vm"),
            vcpus: 2,
            memory_mib: 1024,
            boot_timeout: Duration::from_secs(60),
        }
    }
}

/// The kernel command line of a guest for `spec`: the console, no reboot, `extra` (the
/// VMM's own settings), the initramfs's `/init`, and after `--` the agent's own arguments.
pub fn kernel_command_line(spec: &SessionSpec, hostname: &str, extra: &str) -> String {
    let limits = spec.limits;
    let timeout_ms = u64::try_from(limits.job_timeout.as_millis()).unwrap_or(u64::MAX);
    format!(
        "console=ttyS0 quiet panic=-1 {} rdinit=/init -- --listen vsock:{AGENT_PORT} \
         --vm-root {ROOT_DEVICE} --work-dir /work --work-size {} --hostname {hostname} \
         --source-date-epoch {} --job-timeout-ms {timeout_ms} --rlimit-as {} --rlimit-cpu {} \
         --rlimit-nproc {} --rlimit-nofile {}",
        extra.trim(),
        limits.work_bytes,
        spec.source_date_epoch,
        limits.memory_bytes,
        limits.cpu_seconds,
        limits.processes,
        limits.open_files,
    )
}

static SESSION_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A session id: `prefix`, the tenant (letters and digits only, shortened), the worker's pid
/// and a counter.
pub(crate) fn session_id(prefix: &str, tenant: &str) -> String {
    let tenant: String = tenant
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    let number = SESSION_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{tenant}-{}-{number}", std::process::id())
}

/// The last `max` bytes of a log file, for error messages.
pub(crate) fn tail(path: &Path, max: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}
