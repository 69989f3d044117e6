//! What PID 1 does first in a microVM: boot the guest into the image.
//!
//! The VMM starts the kernel with an initramfs holding only this binary (as `/init`) and the
//! kernel modules the guest lacks (in [`MODULES_DIR`], loaded in name order), and with the
//! image's root file system as a read-only block device (`--vm-root`). [`boot`] mounts
//! `/dev` and `/proc`, loads the modules, waits for the device, mounts it read-only with a
//! private `/dev` (a handful of character devices, not the guest's disks) and a tmpfs `/tmp`,
//! and moves it over `/`. The session then proceeds exactly as in the sandbox.
//!
//! There is no network setup at all: the VMM gives the guest no NIC, and the only way in or
//! out is the vsock port the agent listens on, or its virtio-serial ports (for those, `boot`
//! also mounts `/sys` in the initramfs to find them and makes their nodes for the server;
//! see `serial.rs`).

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FileType, Mode, OFlags, CWD};
use rustix::mount::MountFlags;

/// Where the initramfs keeps the modules to load.
pub const MODULES_DIR: &str = "/hpcc/modules";

/// Where the image root is mounted before it becomes `/`.
const NEW_ROOT: &str = "/newroot";

/// How long the root device may take to appear once its driver is loaded.
const DEVICE_WAIT: Duration = Duration::from_secs(20);

/// The character devices a job sees: (name, major, minor).
const DEVICES: [(&str, u32, u32); 5] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
];

/// A failed boot step.
#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub struct VmError {
    step: String,
    #[source]
    source: io::Error,
}

fn failed(step: impl Into<String>) -> impl FnOnce(io::Error) -> VmError {
    let step = step.into();
    move |source| VmError { step, source }
}

fn errno(step: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> VmError {
    let step = step.into();
    move |errno| VmError {
        step,
        source: errno.into(),
    }
}

/// Boots the guest: afterwards `/` is the image, read-only, and `work_dir` exists in it; with
/// `serial_ports` > 0, the nodes of that many agent ports are in [`crate::serial::NODES_DIR`].
pub fn boot(device: &Path, work_dir: &Path, serial_ports: u32) -> Result<(), VmError> {
    mount_at(
        "devtmpfs",
        "devtmpfs",
        Path::new("/dev"),
        MountFlags::NOSUID,
        None,
    )?;
    mount_at(
        "proc",
        "proc",
        Path::new("/proc"),
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )?;
    load_modules(Path::new(MODULES_DIR))?;
    wait_for(device)?;
    let root = Path::new(NEW_ROOT);
    ensure_dir(root)?;
    let device_name = device.to_string_lossy().into_owned();
    rustix::mount::mount(
        device,
        root,
        "ext4",
        MountFlags::RDONLY | MountFlags::NODEV,
        None,
    )
    .map_err(errno(format!(
        "mounting {device_name} (ext4, read-only) at {NEW_ROOT}"
    )))?;
    for dir in ["dev", "tmp", "proc"] {
        if !root.join(dir).is_dir() {
            return Err(failed(format!(
                "the image root on {device_name} has no /{dir}"
            ))(io::ErrorKind::NotFound.into()));
        }
    }
    let inside = root.join(work_dir.strip_prefix("/").unwrap_or(work_dir));
    if !inside.is_dir() {
        return Err(failed(format!(
            "the image root on {device_name} has no {}",
            work_dir.display()
        ))(io::ErrorKind::NotFound.into()));
    }
    let dev = root.join("dev");
    mount_at(
        "tmpfs",
        "tmpfs",
        &dev,
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some("size=64k,mode=0755"),
    )?;
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        rustix::fs::mknodat(
            CWD,
            &path,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .map_err(errno(format!("creating {}", path.display())))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        rustix::fs::symlink(target, dev.join(name))
            .map_err(errno(format!("linking /dev/{name}")))?;
    }
    if serial_ports > 0 {
        mount_at(
            "sysfs",
            "sysfs",
            Path::new("/sys"),
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        )?;
        let nodes = root.join(
            crate::serial::NODES_DIR
                .strip_prefix('/')
                .unwrap_or(crate::serial::NODES_DIR),
        );
        crate::serial::make_nodes(Path::new("/sys/class/virtio-ports"), &nodes, serial_ports)
            .map_err(failed("finding the agent's virtio-serial ports"))?;
    }
    mount_at(
        "tmpfs",
        "tmpfs",
        &root.join("tmp"),
        MountFlags::NOSUID | MountFlags::NODEV,
        Some("mode=1777"),
    )?;
    rustix::process::chdir(root).map_err(errno(format!("entering {NEW_ROOT}")))?;
    rustix::mount::mount_move(".", "/").map_err(errno(format!("moving {NEW_ROOT} to /")))?;
    rustix::process::chroot(".").map_err(errno("changing root into the image"))?;
    rustix::process::chdir("/").map_err(errno("entering the new /"))?;
    Ok(())
}

/// Turns the guest off (never returns: if power-off fails, PID 1 exits and the kernel's
/// `panic=-1` reboots, which the VMM, started with `-no-reboot`, treats as the end).
pub fn power_off() -> ! {
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    std::process::exit(1)
}

fn mount_at(
    source: &str,
    fs: &str,
    target: &Path,
    flags: MountFlags,
    options: Option<&str>,
) -> Result<(), VmError> {
    ensure_dir(target)?;
    let options = options
        .map(|text| CString::new(text).map_err(io::Error::other))
        .transpose()
        .map_err(failed(format!("options of {}", target.display())))?;
    rustix::mount::mount(source, target, fs, flags, options.as_deref())
        .map_err(errno(format!("mounting {fs} at {}", target.display())))
}

fn ensure_dir(path: &Path) -> Result<(), VmError> {
    match rustix::fs::mkdir(path, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(error) => Err(errno(format!("creating {}", path.display()))(error)),
    }
}

/// Loads every `*.ko` of `dir` in name order; modules the kernel already has are skipped.
fn load_modules(dir: &Path) -> Result<(), VmError> {
    let mut modules: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "ko"))
            .collect(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(failed(format!("listing {}", dir.display()))(error)),
    };
    modules.sort();
    for module in modules {
        let step = format!("loading kernel module {}", module.display());
        let file = rustix::fs::open(&module, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(errno(step.clone()))?;
        match rustix::system::finit_module(&file, c"", 0) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(error) => return Err(errno(step)(error)),
        }
    }
    Ok(())
}

fn wait_for(device: &Path) -> Result<(), VmError> {
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        match rustix::fs::stat(device) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::BlockDevice => {
                return Ok(())
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(_) => {
                return Err(failed(format!(
                    "{} is not a block device",
                    device.display()
                ))(io::ErrorKind::InvalidInput.into()))
            }
            Err(error) => {
                return Err(errno(format!(
                    "waiting {} s for the root device {}",
                    DEVICE_WAIT.as_secs(),
                    device.display()
                ))(error))
            }
        }
    }
}
