//! Test support, for this crate's tests and the end-to-end tests of others: the statically
//! linked agent and the cached Debian image with gcc that sessions run. Nothing in production
//! calls it.
//!
//! `cargo test` does not build `hpcc-agent`'s binary for another package's tests, and the
//! binary must be static to run on the image's root, so [`agent_binary`] builds it once per
//! run with `RUSTFLAGS='-C target-feature=+crt-static' cargo build -p hpcc-agent --target
//! x86_64-unknown-linux-gnu` into `<target>/agent-static` (a separate target directory, so
//! the nested cargo neither waits on the outer one's lock nor invalidates its artifacts).
//! `HPCC_AGENT_BIN` names a prebuilt binary instead.
//!
//! [`image`] runs `debootstrap --variant=minbase --include=gcc,g++,libc6-dev bookworm` into a
//! temporary directory and renames it to `<target>/test-images/bookworm-gcc` when complete,
//! so an interrupted build is never used and later runs on the machine reuse it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The target directory the test binary was built in (`<target>/debug/deps/it-*`).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_owned))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// The static agent binary, built once per test run.
pub fn agent_binary() -> Result<PathBuf, String> {
    static AGENT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    AGENT.get_or_init(build_agent).clone()
}

fn build_agent() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("HPCC_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let triple = "x86_64-unknown-linux-gnu";
    if std::env::consts::ARCH != "x86_64" {
        return Err(format!(
            "the static agent build is set up for {triple} only"
        ));
    }
    let agent_target = target_dir().join("agent-static");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!(
        "building the static hpcc-agent into {}",
        agent_target.display()
    );
    let output = Command::new(cargo)
        .current_dir(&workspace)
        .args(["build", "--quiet", "-p", "hpcc-agent", "--target", triple])
        .env("CARGO_TARGET_DIR", &agent_target)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(|error| format!("cannot run cargo to build hpcc-agent: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the static hpcc-agent failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let binary = agent_target.join(triple).join("debug/hpcc-agent");
    // A dynamically linked agent would fail inside the image with a confusing ENOENT.
    let bytes = std::fs::read(&binary).map_err(|error| format!("{}: {error}", binary.display()))?;
    if bytes
        .windows(b"ld-linux".len())
        .any(|window| window == b"ld-linux")
        && has_interp(&bytes)
    {
        return Err(format!("{} is not statically linked", binary.display()));
    }
    Ok(binary)
}

/// Whether an ELF file has a `PT_INTERP` program header (a dynamic loader).
fn has_interp(elf: &[u8]) -> bool {
    let read = |at: usize, len: usize| -> u64 {
        elf.get(at..at + len).map_or(0, |bytes| {
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte))
        })
    };
    let phoff = usize::try_from(read(0x20, 8)).unwrap_or(usize::MAX);
    let phentsize = usize::try_from(read(0x36, 2)).unwrap_or(0);
    let phnum = usize::try_from(read(0x38, 2)).unwrap_or(0);
    (0..phnum).any(|index| read(phoff.saturating_add(index * phentsize), 4) == 3)
}

/// The Debian bookworm image with gcc, g++ and libc6-dev, built once per machine.
pub fn image() -> Result<PathBuf, String> {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE.get_or_init(build_image).clone()
}

const IMAGE_MARKER: &str = ".hpcc-test-image-complete";

fn build_image() -> Result<PathBuf, String> {
    let images = target_dir().join("test-images");
    let image = images.join("bookworm-gcc");
    if image.join(IMAGE_MARKER).exists() {
        return Ok(image);
    }
    if !rustix::process::geteuid().is_root() {
        return Err("building the debootstrap image needs root".into());
    }
    let debootstrap = ["/usr/sbin/debootstrap", "/usr/bin/debootstrap"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .ok_or("debootstrap is not installed (apt-get install debootstrap)")?;
    std::fs::create_dir_all(&images).map_err(|error| format!("{}: {error}", images.display()))?;
    let partial = images.join(format!("bookworm-gcc.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    println!(
        "building the test image {} with debootstrap (about a minute)",
        image.display()
    );
    let mut command = Command::new(debootstrap);
    command
        .args([
            "--variant=minbase",
            "--include=gcc,g++,libc6-dev",
            "bookworm",
        ])
        .arg(&partial);
    if let Some(mirror) = std::env::var_os("HPCC_DEBIAN_MIRROR") {
        command.arg(mirror);
    }
    let output = command
        .output()
        .map_err(|error| format!("cannot run debootstrap: {error}"))?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        let log = String::from_utf8_lossy(&output.stdout);
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        return Err(format!("debootstrap failed: {}", tail.join(" | ")));
    }
    std::fs::write(partial.join(IMAGE_MARKER), b"")
        .map_err(|error| format!("marking the image: {error}"))?;
    match std::fs::rename(&partial, &image) {
        Ok(()) => Ok(image),
        // Another test run finished first: use its image.
        Err(_) if image.join(IMAGE_MARKER).exists() => {
            let _ = std::fs::remove_dir_all(&partial);
            Ok(image)
        }
        Err(error) => Err(format!(
            "renaming {} to {}: {error}",
            partial.display(),
            image.display()
        )),
    }
}

/// What a test guest boots: Debian's cloud kernel and the modules it needs for virtio-mmio,
/// virtio-blk, virtio-serial and vsock, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The modules, in load order.
    pub modules: Vec<PathBuf>,
}

/// The modules Debian's cloud kernel needs for a microVM guest, in load order: virtio over
/// MMIO, the root disk, `virtio_console` for the `qemu` runtime's agent ports (virtio-serial),
/// and vsock for Firecracker's.
pub const GUEST_MODULES: [&str; 8] = [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_mmio.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/char/virtio_console.ko",
    "kernel/net/vmw_vsock/vsock.ko",
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
];

/// Debian's `linux-image-*-cloud-amd64`, downloaded with `apt-get download` and unpacked with
/// `dpkg-deb -x` under `<target>/test-vm/` once per machine (nothing is installed on the
/// host).
pub fn guest_kernel() -> Result<GuestKernel, String> {
    static KERNEL: OnceLock<Result<GuestKernel, String>> = OnceLock::new();
    KERNEL.get_or_init(fetch_kernel).clone()
}

fn fetch_kernel() -> Result<GuestKernel, String> {
    let dir = target_dir().join("test-vm");
    let unpacked = dir.join("kernel");
    let found = || -> Option<GuestKernel> {
        let boot = std::fs::read_dir(unpacked.join("boot")).ok()?;
        let kernel = boot
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
            })?;
        let version = kernel.file_name()?.to_string_lossy()["vmlinuz-".len()..].to_owned();
        let modules_dir = unpacked.join("lib/modules").join(version);
        let modules: Vec<PathBuf> = GUEST_MODULES.iter().map(|m| modules_dir.join(m)).collect();
        modules
            .iter()
            .all(|module| module.is_file())
            .then_some(GuestKernel { kernel, modules })
    };
    if let Some(kernel) = found() {
        return Ok(kernel);
    }
    let depends = Command::new("apt-cache")
        .args(["depends", "linux-image-cloud-amd64"])
        .output()
        .map_err(|error| format!("cannot run apt-cache: {error}"))?;
    let package = String::from_utf8_lossy(&depends.stdout)
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-"))
        .map(str::to_owned)
        .ok_or("apt-cache knows no linux-image-cloud-amd64 (run apt-get update)")?;
    let download = dir.join(format!("download-{}", std::process::id()));
    std::fs::create_dir_all(&download)
        .map_err(|error| format!("{}: {error}", download.display()))?;
    println!("downloading the guest kernel {package} with apt-get download");
    let fetched = Command::new("apt-get")
        .args(["download", "-q", &package])
        .current_dir(&download)
        .output()
        .map_err(|error| format!("cannot run apt-get: {error}"))?;
    if !fetched.status.success() {
        let _ = std::fs::remove_dir_all(&download);
        return Err(format!(
            "apt-get download {package} failed: {}",
            String::from_utf8_lossy(&fetched.stderr).trim()
        ));
    }
    let deb = std::fs::read_dir(&download)
        .map_err(|error| error.to_string())?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or("apt-get download wrote no .deb")?;
    let partial = dir.join(format!("kernel.partial-{}", std::process::id()));
    let unpack = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&partial)
        .output()
        .map_err(|error| format!("cannot run dpkg-deb: {error}"))?;
    let _ = std::fs::remove_dir_all(&download);
    if !unpack.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(format!(
            "dpkg-deb -x failed: {}",
            String::from_utf8_lossy(&unpack.stderr).trim()
        ));
    }
    if std::fs::rename(&partial, &unpacked).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    found().ok_or_else(|| format!("{} lacks a kernel or its modules", unpacked.display()))
}

/// `qemu-system-x86_64` and `vhost-device-vsock` (`PATH`, then `~/.cargo/bin`), or why not.
/// `scripts/test.sh` installs both.
pub fn vm_tools() -> Result<(PathBuf, PathBuf), String> {
    let find = |name: &str, hint: &str| -> Result<PathBuf, String> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect())
            .unwrap_or_default();
        if let Some(home) = std::env::var_os("HOME") {
            dirs.push(PathBuf::from(home).join(".cargo/bin"));
        }
        dirs.into_iter()
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
            .ok_or_else(|| format!("{name} is not installed ({hint})"))
    };
    Ok((
        find("qemu-system-x86_64", "apt-get install qemu-system-x86")?,
        find("vhost-device-vsock", "cargo install vhost-device-vsock")?,
    ))
}
