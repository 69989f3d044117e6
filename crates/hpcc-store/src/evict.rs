//! Eviction: removing the least recently used entries of one coarse shard.
//!
//! A cleanup never scans the whole cache: it lists the 32 directories of one coarse shard
//! (1/16 of the entries), so even a large cache is trimmed in milliseconds and no build waits
//! on it. Only one process cleans at a time (the cleanup lock is taken with `try_lock`; whoever
//! loses simply goes on). Recency is the file mtime, which `get` refreshes on a hit.
//!
//! After a put takes the cache over its limit, the shard most over its share (`max_size / 16`)
//! is trimmed to 90% of that share. The scan also measures the shard exactly and rebases its
//! counter, which is how accounting drift heals, and removes temporary files more than an hour
//! old (their writer died). `hpcc clean` trims every shard to nothing. Puts and gets racing with
//! a cleanup are fine: a removed entry is a miss, and a file renamed into place during the scan
//! is either seen or left alone.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::accounting::{Accounting, Usage};
use crate::layout::{Layout, TEMP_PREFIX};
use crate::{Kind, StoreError};

/// Temporary files older than this belong to a writer that died; younger ones may be in use.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// How far to trim a shard.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Goal {
    /// Remove entries, oldest first, until the shard holds at most this many bytes.
    AtMost(u64),
    /// Remove every entry.
    Everything,
}

/// What one shard cleanup did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ShardOutcome {
    pub(crate) removed: Usage,
    pub(crate) after: Usage,
}

struct Scanned {
    path: PathBuf,
    size: u64,
    modified: SystemTime,
}

/// Trims coarse shard `shard` to `goal` and rebases its counter on the measured size.
pub(crate) fn trim_shard(
    layout: &Layout,
    accounting: &Accounting,
    shard: usize,
    goal: Goal,
) -> Result<ShardOutcome, StoreError> {
    let before = accounting.lock_shard(shard)?.read_all()?[shard];
    let now = SystemTime::now();
    let mut entries = Vec::new();
    for kind in Kind::ALL {
        for low in 0..16u8 {
            // shard < 16, so the high nibble fits.
            let first_byte = (u8::try_from(shard).unwrap_or(0) << 4) | low;
            scan_dir(&layout.shard_dir(kind, first_byte), now, &mut entries)?;
        }
    }
    let mut remaining = Usage {
        size: entries.iter().map(|entry| entry.size).sum(),
        count: entries.len() as u64,
    };
    entries.sort_by_key(|entry| entry.modified);

    let mut removed = Usage::default();
    let mut failure = None;
    for entry in &entries {
        let done = match goal {
            Goal::AtMost(limit) => remaining.size <= limit,
            Goal::Everything => false,
        };
        if done {
            break;
        }
        match fs::remove_file(&entry.path) {
            Ok(()) => {
                removed.size += entry.size;
                removed.count += 1;
            }
            // Someone else removed it first; it is gone either way.
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                failure = Some(StoreError::RemoveEntry {
                    path: entry.path.clone(),
                    source,
                });
                break;
            }
        }
        remaining.size = remaining.size.saturating_sub(entry.size);
        remaining.count = remaining.count.saturating_sub(1);
    }

    let after = accounting.lock_shard(shard)?.rebase(before, remaining)?;
    match failure {
        Some(error) => Err(error),
        None => Ok(ShardOutcome { removed, after }),
    }
}

/// Adds the entries of `dir` to `entries`, removing stale temporary files on the way.
fn scan_dir(dir: &Path, now: SystemTime, entries: &mut Vec<Scanned>) -> Result<(), StoreError> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::ReadDir {
                path: dir.to_owned(),
                source,
            })
        }
    };
    for item in listing {
        let item = item.map_err(|source| StoreError::ReadDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = item.path();
        let metadata = match item.metadata() {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == ErrorKind::NotFound => continue,
            Err(source) => return Err(StoreError::StatEntry { path, source }),
        };
        if !metadata.is_file() {
            continue;
        }
        // A platform without mtimes makes everything equally old, which still evicts.
        let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if item.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let age = now.duration_since(modified).unwrap_or_default();
            if age > STALE_TEMP_AGE {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == ErrorKind::NotFound => {}
                    Err(source) => return Err(StoreError::RemoveEntry { path, source }),
                }
            }
            continue;
        }
        entries.push(Scanned {
            path,
            size: metadata.len(),
            modified,
        });
    }
    Ok(())
}
