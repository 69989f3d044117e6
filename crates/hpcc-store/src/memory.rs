//! A memory tier in front of a [`DiskStore`], for a long-running process (the daemon).
//!
//! A hit from disk costs a read, a decompression and a checksum over the whole payload; for an
//! object with debug information that is most of a hit's work. The tier keeps verified payloads
//! in memory, least recently used first out, within a byte budget.
//!
//! Results are named by the digest of everything that produced them, so a result in memory is
//! right for as long as it stays there. A manifest under a key is rewritten when a compile adds
//! an entry to it (possibly by another process), so a manifest in memory is used only while its
//! file on disk is unchanged (same inode, size and modification time, one `stat`); otherwise it
//! is read again.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use hpcc_core::digest::Digest;

use crate::{DiskStore, Kind, Lookup, StoreError};

/// What identifies one version of an entry file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn stamp_of(meta: &fs::Metadata) -> FileStamp {
    FileStamp {
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    }
}

struct Entry {
    payload: Arc<Vec<u8>>,
    /// For manifests: the file the payload was read from.
    stamp: Option<FileStamp>,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(Kind, Digest), Entry>,
    bytes: usize,
    clock: u64,
}

/// The outcome of a lookup through the memory tier: like [`Lookup`], with a shared payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The exact bytes that were put.
    Hit(Arc<Vec<u8>>),
    /// No entry.
    Miss,
    /// The disk entry was corrupt and has been removed.
    Corrupt,
}

/// Verified payloads in memory, within `budget` bytes.
pub struct MemoryTier {
    budget: usize,
    inner: Mutex<Inner>,
}

impl MemoryTier {
    /// An empty tier that holds at most `budget` bytes of payloads (0: holds nothing).
    pub fn new(budget: usize) -> MemoryTier {
        MemoryTier {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Looks `key` up in memory, then in `disk`, keeping what the disk returned.
    pub fn get(&self, disk: &DiskStore, kind: Kind, key: &Digest) -> Result<Fetched, StoreError> {
        let path = disk.layout.entry_path(kind, key);
        // Manifests are checked against their file first; a vanished file is a miss.
        let current = match kind {
            Kind::Manifest => match fs::metadata(&path) {
                Ok(meta) => Some(stamp_of(&meta)),
                Err(_) => {
                    self.forget(kind, key);
                    return Ok(Fetched::Miss);
                }
            },
            Kind::Result => None,
        };
        {
            let mut inner = self.lock();
            inner.clock += 1;
            let clock = inner.clock;
            if let Some(entry) = inner.entries.get_mut(&(kind, *key)) {
                if entry.stamp == current {
                    entry.last_used = clock;
                    return Ok(Fetched::Hit(Arc::clone(&entry.payload)));
                }
            }
        }
        match disk.get(kind, key)? {
            Lookup::Hit(payload) => {
                let payload = Arc::new(payload);
                self.insert(kind, key, Arc::clone(&payload), current);
                Ok(Fetched::Hit(payload))
            }
            Lookup::Miss => {
                self.forget(kind, key);
                Ok(Fetched::Miss)
            }
            Lookup::Corrupt => {
                self.forget(kind, key);
                Ok(Fetched::Corrupt)
            }
        }
    }

    /// Drops `key` (its disk entry was found undecodable, or replaced).
    pub fn forget(&self, kind: Kind, key: &Digest) {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.remove(&(kind, *key)) {
            inner.bytes -= entry.payload.len();
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn insert(&self, kind: Kind, key: &Digest, payload: Arc<Vec<u8>>, stamp: Option<FileStamp>) {
        // A payload over a quarter of the budget would push out everything else.
        if payload.len() > self.budget / 4 {
            return;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let entry = Entry {
            last_used: inner.clock,
            stamp,
            payload,
        };
        inner.bytes += entry.payload.len();
        if let Some(old) = inner.entries.insert((kind, *key), entry) {
            inner.bytes -= old.payload.len();
        }
        if inner.bytes > self.budget {
            // Down to 90% in one pass, oldest first, so the scan is rare.
            let mut by_age: Vec<(u64, (Kind, Digest))> = inner
                .entries
                .iter()
                .map(|(key, entry)| (entry.last_used, *key))
                .collect();
            by_age.sort_unstable_by_key(|(last_used, _)| *last_used);
            let target = self.budget / 10 * 9;
            for (_, key) in by_age {
                if inner.bytes <= target {
                    break;
                }
                if let Some(entry) = inner.entries.remove(&key) {
                    inner.bytes -= entry.payload.len();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskConfig;

    fn store() -> (tempfile::TempDir, DiskStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::open(dir.path(), DiskConfig::default()).expect("store");
        (dir, store)
    }

    #[test]
    fn results_are_served_from_memory_and_manifests_follow_their_file() {
        let (_dir, disk) = store();
        let tier = MemoryTier::new(1 << 20);
        let key = Digest::of(b"k");
        assert_eq!(
            tier.get(&disk, Kind::Result, &key).expect("get"),
            Fetched::Miss
        );
        disk.put(Kind::Result, &key, b"object").expect("put");
        assert_eq!(
            tier.get(&disk, Kind::Result, &key).expect("get"),
            Fetched::Hit(Arc::new(b"object".to_vec()))
        );
        // Gone from disk, still right in memory: a result's content is fixed by its key.
        disk.remove(Kind::Result, &key).expect("remove");
        assert_eq!(
            tier.get(&disk, Kind::Result, &key).expect("get"),
            Fetched::Hit(Arc::new(b"object".to_vec()))
        );

        disk.put(Kind::Manifest, &key, b"manifest one")
            .expect("put");
        assert_eq!(
            tier.get(&disk, Kind::Manifest, &key).expect("get"),
            Fetched::Hit(Arc::new(b"manifest one".to_vec()))
        );
        // Rewritten by another process: read again.
        disk.put(Kind::Manifest, &key, b"manifest two, longer")
            .expect("put");
        assert_eq!(
            tier.get(&disk, Kind::Manifest, &key).expect("get"),
            Fetched::Hit(Arc::new(b"manifest two, longer".to_vec()))
        );
        disk.remove(Kind::Manifest, &key).expect("remove");
        assert_eq!(
            tier.get(&disk, Kind::Manifest, &key).expect("get"),
            Fetched::Miss
        );
    }

    #[test]
    fn the_budget_holds_and_the_oldest_go_first() {
        let (_dir, disk) = store();
        let tier = MemoryTier::new(1000);
        let keys: Vec<Digest> = (0u8..6).map(|n| Digest::of(&[n])).collect();
        for key in &keys {
            disk.put(Kind::Result, key, &[7u8; 200]).expect("put");
            tier.get(&disk, Kind::Result, key).expect("get");
            assert!(tier.bytes() <= 1000, "{} bytes", tier.bytes());
        }
        // The newest is in memory: it survives removal from disk; the oldest does not.
        for key in &keys {
            disk.remove(Kind::Result, key).expect("remove");
        }
        assert!(matches!(
            tier.get(&disk, Kind::Result, &keys[5]).expect("get"),
            Fetched::Hit(_)
        ));
        assert_eq!(
            tier.get(&disk, Kind::Result, &keys[0]).expect("get"),
            Fetched::Miss
        );
        // Too large for the budget: served, not kept.
        let big = Digest::of(b"big");
        disk.put(Kind::Result, &big, &[1u8; 600]).expect("put");
        assert!(matches!(
            tier.get(&disk, Kind::Result, &big).expect("get"),
            Fetched::Hit(_)
        ));
        assert!(tier.bytes() <= 1000);
    }
}
