//! [`DiskStore`]: entries as files under a root directory, with size accounting and LRU eviction.
//!
//! Every syscall on the hit path is deliberate (see the crate docs): no directory is created or
//! listed until the first put, the entry is read with a single `readv` into a buffer sized from
//! `statx`, and the access-time refresh is skipped when the entry was used within the last
//! minute.
//!
//! Entries are not `fsync`ed: a cache entry lost or cut short by a crash is caught by its
//! checksum and becomes a miss, which is cheaper than paying for a sync on every put.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hpcc_core::digest::Digest;

use crate::accounting::{Accounting, Usage, SHARDS};
use crate::evict::{trim_shard, Goal};
use crate::format::{self, Codec, Header, HEADER_LEN, MAX_PAYLOAD_LEN};
use crate::layout::{coarse_shard, Layout, TEMP_PREFIX};
use crate::{Kind, Lookup, StoreError};

/// A hit refreshes the entry's mtime only if it is older than this, so hot entries cost no
/// extra syscall; minute resolution is plenty for LRU ordering.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// After a cleanup, a shard holds at most this fraction (in tenths) of its share, so that
/// cleanups do not run on every put once the cache is full.
const TRIM_TO_TENTHS: u64 = 9;

/// How many temporary names to try before giving up (collisions need a reused pid and clock).
const TEMP_ATTEMPTS: u32 = 16;

/// Settings of a [`DiskStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskConfig {
    /// The size limit in bytes, counting whole entry files; 0 means unlimited.
    pub max_size: u64,
    /// How payloads are compressed (a payload that does not shrink is stored as is anyway).
    pub compression: Codec,
}

impl Default for DiskConfig {
    /// Unlimited size, LZ4.
    fn default() -> DiskConfig {
        DiskConfig {
            max_size: 0,
            compression: Codec::Lz4,
        }
    }
}

/// What [`DiskStore::evict_if_needed`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvictReport {
    /// The coarse shard (first hex digit of the keys, 0 to 15) that was trimmed.
    pub shard: u8,
    /// Entries removed.
    pub files_removed: u64,
    /// Bytes removed.
    pub bytes_removed: u64,
    /// The shard's size afterwards, as measured by the scan.
    pub shard_size_after: u64,
}

/// What [`DiskStore::clean`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// Entries removed.
    pub files_removed: u64,
    /// Bytes removed.
    pub bytes_removed: u64,
}

/// A cache directory holding manifests and results.
///
/// Any number of `DiskStore`s, in any number of processes, may share one root.
#[derive(Debug, Clone)]
pub struct DiskStore {
    pub(crate) layout: Layout,
    accounting: Accounting,
    config: DiskConfig,
}

impl DiskStore {
    /// A store rooted at `root`.
    ///
    /// This touches nothing on disk: directories are created by the first put, so opening a
    /// store for a lookup costs no syscall. It never fails today; the `Result` leaves room for
    /// validation without changing callers.
    pub fn open(root: &Path, config: DiskConfig) -> Result<DiskStore, StoreError> {
        Ok(DiskStore {
            layout: Layout::new(root),
            accounting: Accounting::new(root),
            config,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// The settings the store was opened with.
    pub fn config(&self) -> &DiskConfig {
        &self.config
    }

    /// Looks up `key`.
    ///
    /// A hit marks the entry as recently used. A corrupt entry is removed and reported as
    /// [`Lookup::Corrupt`], never as an error. `Err` means a real I/O failure such as `EACCES`
    /// or `EIO`.
    pub fn get(&self, kind: Kind, key: &Digest) -> Result<Lookup, StoreError> {
        let path = self.layout.entry_path(kind, key);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(source) => return Err(StoreError::OpenEntry { path, source }),
        };
        let metadata = match file.metadata() {
            Ok(metadata) => metadata,
            Err(source) => return Err(StoreError::StatEntry { path, source }),
        };
        let file_len = metadata.len();
        // The body is never larger than the payload (incompressible payloads are stored raw),
        // so this bounds the buffer by the format's cap as well as by the file's size.
        let body_len = match file_len.checked_sub(HEADER_LEN as u64) {
            Some(body_len) if body_len <= MAX_PAYLOAD_LEN => usize::try_from(body_len).ok(),
            _ => None,
        };
        let Some(body_len) = body_len else {
            return Ok(self.discard_corrupt(key, &path, file_len));
        };

        let mut header: Header = [0; HEADER_LEN];
        let mut body = vec![0u8; body_len];
        match read_exact_vectored(&mut file, &mut header, &mut body) {
            Ok(true) => {}
            // Shorter than `statx` said: entries are never modified in place, so it is damaged.
            Ok(false) => return Ok(self.discard_corrupt(key, &path, file_len)),
            Err(source) => return Err(StoreError::ReadEntry { path, source }),
        }
        let Ok(payload) = format::decode(kind, key, &header, body) else {
            return Ok(self.discard_corrupt(key, &path, file_len));
        };
        touch_if_stale(&file, &metadata);
        Ok(Lookup::Hit(payload))
    }

    /// Stores `data` under `key`, replacing any previous entry.
    ///
    /// The entry appears atomically: concurrent readers see the old entry, the new one, or
    /// nothing, never a partial file. Then, if the cache is over its size limit, it may trim one
    /// coarse shard (see [`DiskStore::evict_if_needed`]). `Err` (read-only directory, full
    /// disk) means nothing was stored, or it was stored but could not be accounted; either way
    /// the caller can carry on without the cache.
    pub fn put(&self, kind: Kind, key: &Digest, data: &[u8]) -> Result<(), StoreError> {
        let data_len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        if data_len > MAX_PAYLOAD_LEN {
            return Err(StoreError::PayloadTooLarge {
                key: key.to_hex(),
                len: data_len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        let (header, body) =
            format::encode(kind, key, data, self.config.compression).map_err(|source| {
                StoreError::Compress {
                    key: key.to_hex(),
                    source,
                }
            })?;
        self.install(kind, key, &header, &body)
    }

    /// Reads the entry for `key` exactly as stored (header and compressed body), for copying
    /// it to another store. `Ok(None)`: no entry, or one that fails its checks (removed).
    pub fn get_encoded(&self, kind: Kind, key: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.layout.entry_path(kind, key);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::ReadEntry { path, source }),
        };
        if verify_encoded(kind, key, &bytes).is_none() {
            let file_len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
            self.discard_corrupt(key, &path, file_len);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Stores an entry read from another store with [`DiskStore::get_encoded`], after
    /// checking it: an entry that fails its checks is refused with [`StoreError::Corrupt`]
    /// and nothing is written.
    pub fn put_encoded(&self, kind: Kind, key: &Digest, encoded: &[u8]) -> Result<(), StoreError> {
        if verify_encoded(kind, key, encoded).is_none() {
            return Err(StoreError::Corrupt { key: key.to_hex() });
        }
        let (header, body) = encoded.split_at(HEADER_LEN);
        self.install(kind, key, header, body)
    }

    /// Writes `header` and `body` as the entry for `key`: temporary file, rename, accounting,
    /// eviction.
    pub(crate) fn install(
        &self,
        kind: Kind,
        key: &Digest,
        header: &[u8],
        body: &[u8],
    ) -> Result<(), StoreError> {
        let entry_path = self.layout.entry_path(kind, key);
        let shard_dir = self.layout.shard_dir(kind, key.0[0]);

        let (temp_path, mut temp_file) = create_temp(&shard_dir)?;
        if let Err(source) = write_all_vectored(&mut temp_file, header, body) {
            drop(temp_file);
            let _ = fs::remove_file(&temp_path);
            return Err(StoreError::WriteTemp {
                path: temp_path,
                source,
            });
        }
        drop(temp_file);

        // Replacing an entry (manifests are rewritten under the same key) must not count it
        // twice. Two processes replacing the same key at once can still both count it; the next
        // cleanup of this shard corrects that.
        let replaced_len = fs::symlink_metadata(&entry_path).ok().map(|old| old.len());
        if let Err(source) = fs::rename(&temp_path, &entry_path) {
            let _ = fs::remove_file(&temp_path);
            return Err(StoreError::Rename {
                from: temp_path,
                to: entry_path,
                source,
            });
        }

        let new_len = (HEADER_LEN + body.len()) as u64;
        let size_delta = i128::from(new_len) - i128::from(replaced_len.unwrap_or(0));
        let count_delta = if replaced_len.is_some() { 0 } else { 1 };
        let all = self
            .accounting
            .add(coarse_shard(key), size_delta, count_delta)?;
        if self.config.max_size != 0 {
            self.evict_from(&all)?;
        }
        Ok(())
    }

    /// Removes the entry for `key`; removing a missing entry is not an error.
    pub fn remove(&self, kind: Kind, key: &Digest) -> Result<(), StoreError> {
        let path = self.layout.entry_path(kind, key);
        let len = match fs::symlink_metadata(&path) {
            Ok(metadata) => metadata.len(),
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StoreError::StatEntry { path, source }),
        };
        match fs::remove_file(&path) {
            Ok(()) => {
                self.accounting
                    .add(coarse_shard(key), -i128::from(len), -1)?;
                Ok(())
            }
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::RemoveEntry { path, source }),
        }
    }

    /// The bytes used by entries, from the accounting (one small read, no directory walk).
    ///
    /// It is an estimate that cleanups keep honest; see the `accounting` module.
    pub fn size(&self) -> Result<u64, StoreError> {
        Ok(total(&self.accounting.read_all()?).size)
    }

    /// The number of entries, from the accounting, like [`DiskStore::size`].
    pub fn entry_count(&self) -> Result<u64, StoreError> {
        Ok(total(&self.accounting.read_all()?).count)
    }

    /// Removes every entry, and temporary files left behind by crashed writers.
    ///
    /// It waits for any running cleanup, then resets the accounting to what it finds.
    pub fn clean(&self) -> Result<CleanReport, StoreError> {
        // A store that was never written to has nothing to clean; do not create it.
        if fs::symlink_metadata(self.root()).is_err() {
            return Ok(CleanReport::default());
        }
        let _cleanup_lock = self.accounting.lock_cleanup()?;
        let mut report = CleanReport::default();
        for shard in 0..SHARDS {
            let outcome = trim_shard(&self.layout, &self.accounting, shard, Goal::Everything)?;
            report.files_removed += outcome.removed.count;
            report.bytes_removed += outcome.removed.size;
        }
        Ok(report)
    }

    /// If the cache is over [`DiskConfig::max_size`], trims the coarse shard most over its
    /// share (`max_size / 16`) to 90% of that share, least recently used entries first.
    ///
    /// Returns `None` when there is no limit, the cache is within it, or another process is
    /// already cleaning (it does not wait). [`DiskStore::put`] calls this.
    pub fn evict_if_needed(&self) -> Result<Option<EvictReport>, StoreError> {
        if self.config.max_size == 0 {
            return Ok(None);
        }
        let all = self.accounting.read_all()?;
        self.evict_from(&all)
    }

    fn evict_from(&self, all: &[Usage; SHARDS]) -> Result<Option<EvictReport>, StoreError> {
        let max_size = self.config.max_size;
        if max_size == 0 || total(all).size <= max_size {
            return Ok(None);
        }
        let Some(_cleanup_lock) = self.accounting.try_lock_cleanup()? else {
            return Ok(None);
        };
        // Another process may have cleaned between our reading and our locking.
        let all = self.accounting.read_all()?;
        if total(&all).size <= max_size {
            return Ok(None);
        }
        let fullest = all
            .iter()
            .enumerate()
            .max_by_key(|(_, usage)| usage.size)
            .map_or(0, |(shard, _)| shard);
        let share = max_size / SHARDS as u64;
        // share <= u64::MAX / 16, so multiplying by 9 cannot overflow.
        let limit = share * TRIM_TO_TENTHS / 10;
        let outcome = trim_shard(&self.layout, &self.accounting, fullest, Goal::AtMost(limit))?;
        Ok(Some(EvictReport {
            shard: u8::try_from(fullest).unwrap_or(u8::MAX),
            files_removed: outcome.removed.count,
            bytes_removed: outcome.removed.size,
            shard_size_after: outcome.after.size,
        }))
    }

    /// Removes a corrupt entry. Failures are ignored: a corrupt entry must never become an
    /// error, and one that cannot be removed is simply corrupt again next time.
    ///
    /// If another process renamed a good entry into place since we opened the bad one, this
    /// removes the good one; that costs one miss and is rarer than it is worth locking for.
    fn discard_corrupt(&self, key: &Digest, path: &Path, file_len: u64) -> Lookup {
        if fs::remove_file(path).is_ok() {
            let _ = self
                .accounting
                .add(coarse_shard(key), -i128::from(file_len), -1);
        }
        Lookup::Corrupt
    }
}

/// Checks an encoded entry (header and body, as stored) for `key` and returns its payload;
/// `None` if it is truncated, altered, or stored under another key or kind.
pub fn verify_encoded(kind: Kind, key: &Digest, encoded: &[u8]) -> Option<Vec<u8>> {
    if encoded.len() < HEADER_LEN {
        return None;
    }
    let (header, body) = encoded.split_at(HEADER_LEN);
    let header: Header = header.try_into().ok()?;
    format::decode(kind, key, &header, body.to_vec()).ok()
}

fn total(all: &[Usage; SHARDS]) -> Usage {
    all.iter().fold(Usage::default(), |sum, usage| Usage {
        size: sum.size.saturating_add(usage.size),
        count: sum.count.saturating_add(usage.count),
    })
}

/// Refreshes the mtime (the LRU clock) of an entry not used for a minute.
///
/// Errors are ignored: on a read-only or foreign-owned cache, hits must keep working.
fn touch_if_stale(file: &File, metadata: &Metadata) {
    let now = SystemTime::now();
    let Ok(modified) = metadata.modified() else {
        return;
    };
    if now
        .duration_since(modified)
        .is_ok_and(|age| age > TOUCH_INTERVAL)
    {
        let _ = file.set_modified(now);
    }
}

/// Fills `header` then `body` from `file`; `Ok(false)` if the file ends first.
fn read_exact_vectored(file: &mut File, header: &mut Header, body: &mut [u8]) -> io::Result<bool> {
    let mut remaining = header.len() + body.len();
    let mut slices = [IoSliceMut::new(header), IoSliceMut::new(body)];
    let mut slices = &mut slices[..];
    while remaining > 0 {
        match file.read_vectored(slices) {
            Ok(0) => return Ok(false),
            Ok(read) => {
                remaining = remaining.saturating_sub(read);
                IoSliceMut::advance_slices(&mut slices, read);
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

/// Writes `header` then `body`, in one `writev` unless the kernel writes less.
fn write_all_vectored(file: &mut File, header: &[u8], body: &[u8]) -> io::Result<()> {
    let mut remaining = header.len() + body.len();
    let mut slices = [IoSlice::new(header), IoSlice::new(body)];
    let mut slices = &mut slices[..];
    while remaining > 0 {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero)),
            Ok(written) => {
                remaining = remaining.saturating_sub(written);
                IoSlice::advance_slices(&mut slices, written);
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Creates a fresh temporary file in `dir`, creating `dir` (and its parents) if missing.
fn create_temp(dir: &Path) -> Result<(PathBuf, File), StoreError> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let mut created_dir = false;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let name = format!(
            "{TEMP_PREFIX}{}-{}-{nanos}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(error) if error.kind() == ErrorKind::AlreadyExists && attempts < TEMP_ATTEMPTS => {}
            Err(error) if error.kind() == ErrorKind::NotFound && !created_dir => {
                fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
                created_dir = true;
            }
            Err(source) => return Err(StoreError::CreateTemp { path, source }),
        }
    }
}

#[cfg(test)]
mod tests;
