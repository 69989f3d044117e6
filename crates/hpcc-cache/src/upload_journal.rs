//! The upload journal: entries a wrapper stored by itself while remote tiers are configured,
//! waiting for the daemon to upload them.
//!
//! Only the daemon talks to remote stores (the wrapper links none). A wrapper that compiles
//! without a daemon's slot — none was running yet (the first compiles of a build, while the
//! autostarted daemon comes up), the daemon could not serve, or the daemon is disabled — still
//! stores locally, and without this journal those entries would never reach the remote tiers:
//! the next daemon uploads only what wrappers store under its slots. So such a wrapper appends
//! the keys it stored to `<cache>/upload-journal`, and every daemon with remote tiers drains the
//! file when it starts, once a second while it runs, and when it stops, queueing each entry for
//! upload exactly as if it had been stored under its slot.
//!
//! **Format.** One line per entry, `m <hex>` (manifest) or `r <hex>` (result); a line that does
//! not parse is skipped (the entry then stays local, as before the journal). Each wrapper
//! appends its lines with one `write` on an `O_APPEND` descriptor, so concurrent wrappers never
//! interleave within a line.
//!
//! **Concurrency.** Writers append under a shared `flock` and the drainer reads under an
//! exclusive one, after renaming the file away:
//! - the drainer renames `upload-journal` to `upload-journal.draining-<pid>-<n>`, so new
//!   writers start a fresh file, then takes the exclusive lock on the renamed file, which waits
//!   for any writer still appending to it, reads it, and removes it;
//! - a writer, once it holds its shared lock, checks that the file it opened is still the one
//!   at `upload-journal` (same device and inode); if a drainer renamed it meanwhile, it opens
//!   the path again. A line is therefore either in the file a drainer reads under its
//!   exclusive lock, or in a file no drainer has taken yet.
//! - A drainer that dies leaves its `.draining-*` file behind; the next drain takes every such
//!   file that nobody holds locked, so two daemons sharing a cache never read the same file.
//!
//! **Cost.** Nothing on a hit or without remote tiers; on a miss stored without a daemon, one
//! open, lock, `stat` and write. The journal stops growing at [`MAX_JOURNAL_BYTES`] (about a
//! million entries) when no daemon ever drains it.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use hpcc_core::digest::Digest;
use hpcc_store::Kind;

/// The journal's name in the cache directory.
pub const FILE_NAME: &str = "upload-journal";

/// Past this size nothing more is appended (no daemon has drained it for a long time).
pub const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// How often a writer reopens the journal after finding it renamed under it.
const WRITE_TRIES: usize = 8;

/// The journal of the cache at `cache_dir`.
pub fn path(cache_dir: &Path) -> PathBuf {
    cache_dir.join(FILE_NAME)
}

/// Appends `entries` to the journal of `cache_dir`. Best effort for the caller: an `Err` only
/// means these entries stay local.
pub fn record(cache_dir: &Path, entries: &[(Kind, Digest)]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut text = String::with_capacity(entries.len() * 67);
    for (kind, key) in entries {
        text.push(kind_letter(*kind));
        text.push(' ');
        text.push_str(&key.to_hex());
        text.push('\n');
    }
    let path = path(cache_dir);
    for _ in 0..WRITE_TRIES {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("opening {path:?}"))?;
        file.lock_shared()
            .with_context(|| format!("locking {path:?}"))?;
        let opened = file
            .metadata()
            .with_context(|| format!("reading {path:?}"))?;
        let current = match fs::metadata(&path) {
            Ok(current) => current,
            // Renamed away by a drainer between our open and our lock.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error).with_context(|| format!("reading {path:?}")),
        };
        if (opened.dev(), opened.ino()) != (current.dev(), current.ino()) {
            continue;
        }
        if opened.len() >= MAX_JOURNAL_BYTES {
            anyhow::bail!(
                "{path:?} is full ({} bytes): no daemon drains it",
                opened.len()
            );
        }
        // One write: appends from concurrent wrappers never interleave within it.
        file.write_all(text.as_bytes())
            .with_context(|| format!("appending to {path:?}"))?;
        return Ok(());
    }
    anyhow::bail!("{path:?} kept being renamed under this writer")
}

/// Takes every journal of `cache_dir` (the current one, and any a dead drainer left), calls
/// `upload` for each entry and removes the files. Returns how many entries were read.
pub fn drain(cache_dir: &Path, mut upload: impl FnMut(Kind, Digest)) -> Result<usize> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let current = path(cache_dir);
    let mut taken = current.clone().into_os_string();
    taken.push(format!(
        ".draining-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    match fs::rename(&current, &taken) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("renaming {current:?}")),
    }
    let prefix = format!("{FILE_NAME}.draining-");
    let mut files = Vec::new();
    for entry in fs::read_dir(cache_dir).with_context(|| format!("listing {cache_dir:?}"))? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if name.to_str().is_some_and(|name| name.starts_with(&prefix)) {
            files.push(entry.path());
        }
    }
    let mut count = 0;
    for file in files {
        count += drain_file(&file, &mut upload)?;
    }
    Ok(count)
}

/// Reads one renamed journal under an exclusive lock and removes it; a file another drainer
/// holds is left to it.
fn drain_file(path: &Path, upload: &mut impl FnMut(Kind, Digest)) -> Result<usize> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error).with_context(|| format!("opening {path:?}")),
    };
    let ours = path
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|name| name.contains(&format!("-{}-", std::process::id())));
    if ours {
        // Just renamed by us: wait for writers still appending to it.
        file.lock().with_context(|| format!("locking {path:?}"))?;
    } else {
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(0),
            Err(fs::TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("locking {path:?}"))
            }
        }
    }
    // Another drainer may have taken and removed it between our listing (or rename) and our
    // lock; its entries are uploaded already.
    if !path.exists() {
        return Ok(0);
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("reading {path:?}"))?;
    let mut count = 0;
    for line in text.lines() {
        if let Some((kind, key)) = parse_line(line) {
            upload(kind, key);
            count += 1;
        }
    }
    fs::remove_file(path).with_context(|| format!("removing {path:?}"))?;
    Ok(count)
}

fn kind_letter(kind: Kind) -> char {
    match kind {
        Kind::Manifest => 'm',
        Kind::Result => 'r',
    }
}

fn parse_line(line: &str) -> Option<(Kind, Digest)> {
    let (kind, key) = line.split_once(' ')?;
    let kind = match kind {
        "m" => Kind::Manifest,
        "r" => Kind::Result,
        _ => return None,
    };
    Some((kind, Digest::from_str(key).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Digest {
        Digest([byte; 32])
    }

    #[test]
    fn recorded_entries_are_drained_once() {
        let dir = tempfile::tempdir().unwrap();
        record(
            dir.path(),
            &[(Kind::Manifest, key(1)), (Kind::Result, key(2))],
        )
        .unwrap();
        record(dir.path(), &[(Kind::Result, key(3))]).unwrap();
        let mut seen = Vec::new();
        let count = drain(dir.path(), |kind, key| seen.push((kind, key))).unwrap();
        assert_eq!(count, 3);
        assert_eq!(
            seen,
            vec![
                (Kind::Manifest, key(1)),
                (Kind::Result, key(2)),
                (Kind::Result, key(3))
            ]
        );
        assert_eq!(
            drain(dir.path(), |_, _| panic!("drained twice")).unwrap(),
            0
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "files left");
    }

    #[test]
    fn bad_lines_are_skipped_and_leftovers_of_a_dead_drainer_taken() {
        let dir = tempfile::tempdir().unwrap();
        let good = format!("r {}\n", key(7).to_hex());
        fs::write(
            dir.path().join(format!("{FILE_NAME}.draining-1-0")),
            format!("x {}\nr nothex\n\n{good}", key(9).to_hex()),
        )
        .unwrap();
        let mut seen = Vec::new();
        assert_eq!(
            drain(dir.path(), |kind, key| seen.push((kind, key))).unwrap(),
            1
        );
        assert_eq!(seen, vec![(Kind::Result, key(7))]);
    }

    #[test]
    fn concurrent_writers_and_drains_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let writers: Vec<_> = (0..4u8)
            .map(|writer| {
                let dir = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    for index in 0..200u8 {
                        let mut bytes = [index; 32];
                        bytes[0] = writer;
                        record(&dir, &[(Kind::Result, Digest(bytes))]).unwrap();
                    }
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut count = 0;
        while writers.iter().any(|writer| !writer.is_finished()) {
            count += drain(dir.path(), |_, key| assert!(seen.insert(key))).unwrap();
        }
        for writer in writers {
            writer.join().unwrap();
        }
        count += drain(dir.path(), |_, key| assert!(seen.insert(key))).unwrap();
        assert_eq!(count, 800);
        assert_eq!(seen.len(), 800);
    }
}
