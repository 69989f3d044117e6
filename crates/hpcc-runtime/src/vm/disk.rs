//! The guest's root disk: an image's flattened root file system as a read-only ext4 image,
//! built once per image digest with `mkfs.ext4 -d` (e2fsprogs; no mount and no root needed)
//! and kept under `<state_dir>/disks/<hex>.ext4`.
//!
//! A disk is built under a temporary name and renamed into place when complete, so an
//! interrupted build is never used. Within a process a disk is built once however many
//! sessions need it at once (single flight, whichever runtime asks): the others wait for
//! that build and get its disk, or its failure; a later request after a failure tries again. The directories a guest mounts over (`/dev`, `/proc`,
//! `/tmp` and the agent's work dir) are added with `debugfs` when the image lacks them, since
//! the read-only root cannot grow them at boot.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Directories every guest root needs as mount points.
pub const MOUNT_POINTS: [&str; 4] = ["dev", "proc", "tmp", "work"];

/// The root disks of a VM runtime's images, built at most one at a time (building one reads
/// a whole image; two at once would only compete for the disk), off the async threads.
#[derive(Clone, Debug, Default)]
pub struct RootDisks {
    building: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl RootDisks {
    /// The root disk of `spec`'s image under `state_dir`, built if missing; errors say it was
    /// `runtime` building that image's disk.
    pub async fn get(
        &self,
        runtime: &'static str,
        state_dir: &Path,
        spec: &crate::SessionSpec,
    ) -> Result<PathBuf, crate::RuntimeError> {
        let _building = self.building.lock().await;
        let (state, digest, rootfs) = (
            state_dir.to_path_buf(),
            spec.image_digest.clone(),
            spec.rootfs.clone(),
        );
        tokio::task::spawn_blocking(move || root_disk(&state, &digest, &rootfs))
            .await
            .unwrap_or_else(|error| Err(io::Error::other(error)))
            .map_err(|source| crate::RuntimeError::Start {
                runtime,
                step: format!("building the root disk of {}", spec.image_digest),
                source,
            })
    }
}

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
    single_flight(&disk, || build_disk(&dir, &disk, hex, rootfs)).map_err(|error| match error {
        Flown::Own(error) => error,
        Flown::Shared(message) => io::Error::other(format!(
            "building the root disk of {digest} failed (in a concurrent request): {message}"
        )),
    })
}

/// Why a single-flight build failed: this caller's build, or another's it waited for.
enum Flown {
    Own(io::Error),
    Shared(String),
}

type Flight = Arc<(Mutex<Option<Result<PathBuf, String>>>, Condvar)>;

/// Disk builds in flight in this process, by disk path.
static FLIGHTS: Mutex<Option<HashMap<PathBuf, Flight>>> = Mutex::new(None);

/// Runs `build` for `disk` unless a build of it is in flight, whose result is then waited
/// for and shared.
fn single_flight(
    disk: &Path,
    build: impl FnOnce() -> io::Result<PathBuf>,
) -> Result<PathBuf, Flown> {
    let (flight, leader) = {
        let mut flights = FLIGHTS.lock().unwrap_or_else(PoisonError::into_inner);
        let flights = flights.get_or_insert_with(HashMap::new);
        match flights.get(disk) {
            Some(flight) => (Arc::clone(flight), false),
            None => {
                let flight: Flight = Arc::default();
                flights.insert(disk.to_owned(), Arc::clone(&flight));
                (flight, true)
            }
        }
    };
    let (result, done) = &*flight;
    if !leader {
        let mut result = result.lock().unwrap_or_else(PoisonError::into_inner);
        while result.is_none() {
            result = done.wait(result).unwrap_or_else(PoisonError::into_inner);
        }
        return match result.as_ref() {
            Some(Ok(path)) => Ok(path.clone()),
            Some(Err(message)) => Err(Flown::Shared(message.clone())),
            None => Err(Flown::Shared("no result".into())),
        };
    }
    /// Lands the flight however the build ends (a panic included), so no waiter waits forever.
    struct Landing<'a>(&'a Path, &'a Flight, Option<Result<PathBuf, String>>);
    impl Drop for Landing<'_> {
        fn drop(&mut self) {
            if let Some(flights) = FLIGHTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
            {
                flights.remove(self.0);
            }
            let outcome = self
                .2
                .take()
                .unwrap_or_else(|| Err("the build panicked".into()));
            *self.1 .0.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
            self.1 .1.notify_all();
        }
    }
    let mut landing = Landing(disk, &flight, None);
    let built = build();
    landing.2 = Some(match &built {
        Ok(path) => Ok(path.clone()),
        Err(error) => Err(error.to_string()),
    });
    drop(landing);
    built.map_err(Flown::Own)
}

/// Builds `disk` in `dir` (no other thread of this process is building it).
fn build_disk(dir: &Path, disk: &Path, hex: &str, rootfs: &Path) -> io::Result<PathBuf> {
    // Built by a flight that landed between our look and our take-off.
    if disk.is_file() {
        return Ok(disk.to_owned());
    }
    #[cfg(test)]
    tests::BUILT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(disk.to_owned());
    #[cfg(test)]
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::fs::create_dir_all(dir)?;
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
    std::fs::rename(&partial, disk)?;
    Ok(disk.to_owned())
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

/// BLAKE3 of a disk's bytes (`blake3:<hex>`), cached beside it in `<disk>.blake3` with the
/// file's inode, size and modification time, so a disk is hashed once (a snapshot records the
/// digest, a restore checks it) and a rebuilt disk, a new file, is hashed afresh.
pub fn digest(disk: &Path) -> io::Result<String> {
    let stamp = |metadata: &std::fs::Metadata| {
        format!(
            "{} {} {}.{}",
            metadata.ino(),
            metadata.size(),
            metadata.mtime(),
            metadata.mtime_nsec()
        )
    };
    let mut cache = disk.as_os_str().to_owned();
    cache.push(".blake3");
    let cache = PathBuf::from(cache);
    let before = stamp(&std::fs::metadata(disk)?);
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some((recorded, digest)) = text.trim().rsplit_once(' ') {
            if recorded == before && digest.starts_with("blake3:") {
                return Ok(digest.to_owned());
            }
        }
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(disk)?)?;
    let digest = format!("blake3:{}", hasher.finalize().to_hex());
    // Recorded only if the disk did not change while it was read.
    if stamp(&std::fs::metadata(disk)?) == before {
        let partial = cache.with_extension(format!("blake3.{}.partial", std::process::id()));
        std::fs::write(&partial, format!("{before} {digest}\n"))?;
        std::fs::rename(&partial, &cache)?;
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every disk built by a test of this binary, in order (tests run in parallel, so each
    /// counts its own).
    pub(super) static BUILT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    fn builds_of(disk: &Path) -> usize {
        BUILT
            .lock()
            .unwrap()
            .iter()
            .filter(|built| built.as_path() == disk)
            .count()
    }

    fn race(state: &Path, digest: &str, rootfs: &Path) -> Vec<io::Result<PathBuf>> {
        let barrier = Arc::new(std::sync::Barrier::new(5));
        let threads: Vec<_> = (0..5)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                let (state, digest, rootfs) =
                    (state.to_owned(), digest.to_owned(), rootfs.to_owned());
                std::thread::spawn(move || {
                    barrier.wait();
                    root_disk(&state, &digest, &rootfs)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .collect()
    }

    #[test]
    fn concurrent_requests_build_one_disk_and_share_a_failure() {
        let state = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let digest = format!("sha256:{}", "ef".repeat(32));
        let disk = state
            .path()
            .join("disks")
            .join(format!("{}.ext4", "ef".repeat(32)));
        let missing = root.path().join("missing");
        let failed = race(state.path(), &digest, &missing);
        assert_eq!(builds_of(&disk), 1, "one build for five requests");
        let shared = failed
            .iter()
            .filter(|result| {
                result.as_ref().is_err_and(|error| {
                    let text = error.to_string();
                    text.contains("concurrent request") && text.contains("missing")
                })
            })
            .count();
        assert_eq!(shared, 4, "{failed:?}");
        std::fs::create_dir(&missing).unwrap();
        std::fs::write(missing.join("hello"), b"hi").unwrap();
        let built = race(state.path(), &digest, &missing);
        assert_eq!(builds_of(&disk), 2, "tried again, once");
        assert!(
            built
                .iter()
                .all(|result| result.as_ref().ok() == Some(&disk)),
            "{built:?}"
        );
    }

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

    #[test]
    fn a_digest_is_cached_until_the_disk_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.ext4");
        std::fs::write(&disk, b"first").unwrap();
        let first = digest(&disk).unwrap();
        assert_eq!(first, format!("blake3:{}", blake3::hash(b"first").to_hex()));
        assert!(dir.path().join("d.ext4.blake3").is_file());
        // A stale cache entry for the same file is believed...
        let cache = dir.path().join("d.ext4.blake3");
        let text = std::fs::read_to_string(&cache).unwrap();
        let stamp = text.trim().rsplit_once(' ').unwrap().0.to_owned();
        std::fs::write(&cache, format!("{stamp} blake3:cached\n")).unwrap();
        assert_eq!(digest(&disk).unwrap(), "blake3:cached");
        // ...but not for a rebuilt disk (a new file renamed into place).
        let partial = dir.path().join("d.partial");
        std::fs::write(&partial, b"second").unwrap();
        std::fs::rename(&partial, &disk).unwrap();
        assert_eq!(
            digest(&disk).unwrap(),
            format!("blake3:{}", blake3::hash(b"second").to_hex())
        );
    }
}
