//! The guest's root disk: an image's flattened root file system as a read-only ext4 image,
//! built once per image digest with `mkfs.ext4 -d` (e2fsprogs; no mount and no root needed)
//! and kept under `<state_dir>/disks/<hex>.ext4`.
//!
//! A disk is built under a temporary name and renamed into place when complete, so an
//! interrupted build is never used. The directories a guest mounts over (`/dev`, `/proc`,
//! `/tmp` and the agent's work dir) are added with `debugfs` when the image lacks them, since
//! the read-only root cannot grow them at boot.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Directories every guest root needs as mount points.
pub const MOUNT_POINTS: [&str; 4] = ["dev", "proc", "tmp", "work"];

/// The disk of `rootfs` (image `digest`, `sha256:<hex>`) under `state_dir`, built if missing.
pub fn root_disk(state_dir: &Path, digest: &str, rootfs: &Path) -> io::Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("image digest {digest:?} is not sha256:<64 hex digits>"),
            )
        })?;
    let dir = state_dir.join("disks");
    let disk = dir.join(format!("{hex}.ext4"));
    if disk.is_file() {
        return Ok(disk);
    }
    std::fs::create_dir_all(&dir)?;
    // Unique per build, not only per process: two runtimes of one process (the `qemu` and
    // `firecracker` ones, each with its own lock) may build the same disk at once, and would
    // otherwise write one partial file together. Both then rename a complete disk into place.
    static BUILDS: AtomicU64 = AtomicU64::new(0);
    let build_number = BUILDS.fetch_add(1, Ordering::Relaxed);
    let partial = dir.join(format!(
        ".{hex}.{}.{build_number}.partial",
        std::process::id()
    ));
    let built = build(rootfs, &partial);
    if let Err(error) = built {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, &disk)?;
    Ok(disk)
}

/// Bytes and inodes under `root`, without following symlinks.
fn usage(root: &Path) -> io::Result<(u64, u64)> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let metadata = entry.path().symlink_metadata()?;
            inodes += 1;
            bytes += metadata.size().div_ceil(4096) * 4096;
            if metadata.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}

fn build(rootfs: &Path, out: &Path) -> io::Result<()> {
    let (bytes, inodes) = usage(rootfs).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("reading the image root {}: {error}", rootfs.display()),
        )
    })?;
    // Room for ext4's own metadata and the inode tables, with a margin.
    let size = bytes + bytes / 4 + inodes * 512 + (64 << 20);
    let file = std::fs::File::create(out)?;
    file.set_len(size.div_ceil(1 << 20) * (1 << 20))?;
    drop(file);
    let inode_count = (inodes + inodes / 5 + 1024).to_string();
    run(Command::new(tool("mkfs.ext4"))
        .args([
            "-q",
            "-F",
            "-L",
            "hpcc-root",
            "-O",
            "^has_journal",
            "-m",
            "0",
        ])
        .args(["-N", &inode_count, "-E", "root_owner=0:0", "-d"])
        .arg(rootfs)
        .arg(out))?;
    for dir in MOUNT_POINTS {
        if !rootfs.join(dir).is_dir() {
            run(Command::new(tool("debugfs"))
                .args(["-w", "-R", &format!("mkdir /{dir}")])
                .arg(out))?;
        }
    }
    Ok(())
}

/// e2fsprogs' tools live in /sbin, which a non-root `PATH` often lacks.
fn tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn run(command: &mut Command) -> io::Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("running {program} (install e2fsprogs): {error}"),
        )
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{program} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_once_with_mount_points_and_refuses_bad_digests() {
        let state = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/hostname"), b"image\n").unwrap();
        std::fs::create_dir(root.path().join("tmp")).unwrap();
        let digest = format!("sha256:{}", "ab".repeat(32));
        let disk = root_disk(state.path(), &digest, root.path()).unwrap();
        let listing = Command::new(tool("debugfs"))
            .args(["-R", "ls -l /"])
            .arg(&disk)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        for name in ["etc", "tmp", "dev", "proc", "work"] {
            assert!(listing.contains(name), "{name} missing from {listing}");
        }
        let built = std::fs::metadata(&disk).unwrap().modified().unwrap();
        let again = root_disk(state.path(), &digest, root.path()).unwrap();
        assert_eq!(again, disk);
        assert_eq!(std::fs::metadata(&disk).unwrap().modified().unwrap(), built);
        let error = root_disk(state.path(), "sha256:../x", root.path()).unwrap_err();
        assert!(error.to_string().contains("sha256:../x"), "{error}");
        let missing = root_disk(
            state.path(),
            &format!("sha256:{}", "cd".repeat(32)),
            &root.path().join("nope"),
        )
        .unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
        let leftovers: Vec<_> = std::fs::read_dir(state.path().join("disks"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
