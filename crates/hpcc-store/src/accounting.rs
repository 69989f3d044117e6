//! Size accounting: how many bytes and entries each of the 16 coarse shards holds.
//!
//! The counters live in one small file, `size/counters`: 16 slots of 16 bytes (size then entry
//! count, little-endian u64), slot `h` for keys whose first hex digit is `h`. Each slot is
//! guarded by its own lock file, `size/lock-<h>`, so puts to different shards never wait for
//! each other, and the total is one 256-byte read instead of sixteen file opens. Writers only
//! ever `pwrite` their own 16-byte slot, so slots never clobber each other.
//!
//! The counters are an estimate, not the truth: a crash between a rename and the counter update,
//! or two processes replacing the same key at once, makes them drift. Eviction recomputes the
//! exact size of the shard it scans and rebases that slot, so drift heals over time. A counters
//! file that is short or missing reads as zeros.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use crate::positioned::{read_up_to_at, write_all_at};
use crate::StoreError;

/// The number of coarse shards (one per first hex digit of the key).
pub(crate) const SHARDS: usize = 16;
const SLOT_LEN: usize = 16;
const COUNTERS_LEN: usize = SHARDS * SLOT_LEN;

/// Bytes and entries in one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Bytes of entry files, headers included.
    pub(crate) size: u64,
    /// Number of entry files.
    pub(crate) count: u64,
}

/// The files under `root/size/`.
#[derive(Debug, Clone)]
pub(crate) struct Accounting {
    dir: PathBuf,
    counters_path: PathBuf,
}

/// A shard's lock, held until dropped, with the counters file open for update.
pub(crate) struct LockedShard<'a> {
    accounting: &'a Accounting,
    shard: usize,
    counters: File,
    // Closing the lock file releases the flock; it is only held, never read.
    _lock: File,
}

impl Accounting {
    /// The accounting files of the store at `root`; touches nothing on disk.
    pub(crate) fn new(root: &Path) -> Accounting {
        let dir = root.join("size");
        let counters_path = dir.join("counters");
        Accounting { dir, counters_path }
    }

    fn lock_path(&self, shard: usize) -> PathBuf {
        self.dir.join(format!("lock-{shard:x}"))
    }

    /// Opens (creating it and `size/` if needed) a file for locking or update.
    fn open_rw(&self, path: &Path) -> Result<File, StoreError> {
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
        };
        match open() {
            Ok(file) => Ok(file),
            Err(error) if error.kind() == ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.dir).map_err(|source| StoreError::CreateDir {
                    path: self.dir.clone(),
                    source,
                })?;
                open().map_err(|source| StoreError::OpenAccounting {
                    path: path.to_owned(),
                    source,
                })
            }
            Err(source) => Err(StoreError::OpenAccounting {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Blocks until shard `shard`'s lock is held.
    pub(crate) fn lock_shard(&self, shard: usize) -> Result<LockedShard<'_>, StoreError> {
        let lock_path = self.lock_path(shard);
        let lock = self.open_rw(&lock_path)?;
        lock.lock().map_err(|source| StoreError::Lock {
            path: lock_path,
            source,
        })?;
        let counters = self.open_rw(&self.counters_path)?;
        Ok(LockedShard {
            accounting: self,
            shard,
            counters,
            _lock: lock,
        })
    }

    /// Adds the (possibly negative) deltas to shard `shard` and returns all shards afterwards.
    pub(crate) fn add(
        &self,
        shard: usize,
        size_delta: i128,
        count_delta: i128,
    ) -> Result<[Usage; SHARDS], StoreError> {
        let locked = self.lock_shard(shard)?;
        let mut all = locked.read_all()?;
        let current = all[shard];
        let updated = Usage {
            size: apply(current.size, size_delta),
            count: apply(current.count, count_delta),
        };
        locked.write(updated)?;
        all[shard] = updated;
        Ok(all)
    }

    /// Reads all shards without locking; a missing file reads as an empty cache.
    ///
    /// A slot being rewritten at the same moment may read torn; the result only feeds estimates.
    pub(crate) fn read_all(&self) -> Result<[Usage; SHARDS], StoreError> {
        match File::open(&self.counters_path) {
            Ok(file) => read_counters(&file).map_err(|source| StoreError::ReadCounters {
                path: self.counters_path.clone(),
                source,
            }),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok([Usage::default(); SHARDS]),
            Err(source) => Err(StoreError::OpenAccounting {
                path: self.counters_path.clone(),
                source,
            }),
        }
    }

    /// Tries to take the store-wide cleanup lock without waiting.
    ///
    /// `Ok(None)` means another process is cleaning already.
    pub(crate) fn try_lock_cleanup(&self) -> Result<Option<File>, StoreError> {
        let path = self.dir.join("cleanup.lock");
        let file = self.open_rw(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(source)) => Err(StoreError::Lock { path, source }),
        }
    }

    /// Waits for the store-wide cleanup lock.
    pub(crate) fn lock_cleanup(&self) -> Result<File, StoreError> {
        let path = self.dir.join("cleanup.lock");
        let file = self.open_rw(&path)?;
        file.lock()
            .map_err(|source| StoreError::Lock { path, source })?;
        Ok(file)
    }
}

impl LockedShard<'_> {
    /// Reads every slot (this shard's is exact, since its lock is held).
    pub(crate) fn read_all(&self) -> Result<[Usage; SHARDS], StoreError> {
        read_counters(&self.counters).map_err(|source| StoreError::ReadCounters {
            path: self.accounting.counters_path.clone(),
            source,
        })
    }

    /// Overwrites this shard's slot.
    pub(crate) fn write(&self, usage: Usage) -> Result<(), StoreError> {
        let mut slot = [0u8; SLOT_LEN];
        slot[..8].copy_from_slice(&usage.size.to_le_bytes());
        slot[8..].copy_from_slice(&usage.count.to_le_bytes());
        // SLOT_LEN * 15 fits in u64 trivially.
        let offset = (self.shard * SLOT_LEN) as u64;
        write_all_at(&self.counters, &slot, offset).map_err(|source| StoreError::WriteCounters {
            path: self.accounting.counters_path.clone(),
            source,
        })
    }

    /// Replaces this shard's count with `exact`, measured by a scan that started when the slot
    /// read `before`; whatever other processes added or removed since is kept.
    pub(crate) fn rebase(&self, before: Usage, exact: Usage) -> Result<Usage, StoreError> {
        let now = self.read_all()?[self.shard];
        let rebased = Usage {
            size: apply(exact.size, i128::from(now.size) - i128::from(before.size)),
            count: apply(
                exact.count,
                i128::from(now.count) - i128::from(before.count),
            ),
        };
        self.write(rebased)?;
        Ok(rebased)
    }
}

fn apply(value: u64, delta: i128) -> u64 {
    let result = i128::from(value) + delta;
    u64::try_from(result.max(0)).unwrap_or(u64::MAX)
}

fn read_counters(file: &File) -> io::Result<[Usage; SHARDS]> {
    let mut bytes = [0u8; COUNTERS_LEN];
    // A short file leaves the remaining slots at zero, which is what a new shard should read.
    read_up_to_at(file, &mut bytes, 0)?;
    let mut all = [Usage::default(); SHARDS];
    for (usage, slot) in all.iter_mut().zip(bytes.chunks_exact(SLOT_LEN)) {
        let mut size = [0u8; 8];
        let mut count = [0u8; 8];
        size.copy_from_slice(&slot[..8]);
        count.copy_from_slice(&slot[8..]);
        usage.size = u64::from_le_bytes(size);
        usage.count = u64::from_le_bytes(count);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_reads_as_empty_and_adds_accumulate() {
        let dir = tempfile::tempdir().unwrap();
        let accounting = Accounting::new(dir.path());
        assert_eq!(accounting.read_all().unwrap(), [Usage::default(); SHARDS]);
        accounting.add(3, 100, 1).unwrap();
        accounting.add(3, 50, 1).unwrap();
        let all = accounting.add(15, 7, 1).unwrap();
        assert_eq!(
            all[3],
            Usage {
                size: 150,
                count: 2
            }
        );
        assert_eq!(all[15], Usage { size: 7, count: 1 });
        assert_eq!(accounting.read_all().unwrap(), all);
        // Removing more than is counted saturates at zero instead of wrapping.
        let all = accounting.add(15, -100, -5).unwrap();
        assert_eq!(all[15], Usage::default());
    }

    #[test]
    fn rebase_keeps_concurrent_changes() {
        let dir = tempfile::tempdir().unwrap();
        let accounting = Accounting::new(dir.path());
        accounting.add(0, 1000, 10).unwrap();
        let before = accounting.read_all().unwrap()[0];
        // A put lands while the scan runs; the scan measured 400 bytes in 4 files.
        accounting.add(0, 30, 1).unwrap();
        let locked = accounting.lock_shard(0).unwrap();
        let rebased = locked
            .rebase(
                before,
                Usage {
                    size: 400,
                    count: 4,
                },
            )
            .unwrap();
        assert_eq!(
            rebased,
            Usage {
                size: 430,
                count: 5
            }
        );
    }

    #[test]
    fn cleanup_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let accounting = Accounting::new(dir.path());
        let held = accounting.try_lock_cleanup().unwrap();
        assert!(held.is_some());
        assert!(accounting.try_lock_cleanup().unwrap().is_none());
        drop(held);
        assert!(accounting.try_lock_cleanup().unwrap().is_some());
    }
}
