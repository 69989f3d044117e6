//! Retained job sources: the preprocessed source of every audited job, zstd-compressed and
//! content-addressed as `<dir>/<source_digest hex>.zst`, so that an audit row can be re-run
//! later ([`crate::verify`]).
//!
//! A source is written to a temporary file, `fdatasync`ed and renamed into place, so a file
//! under its digest's name is always whole; reading it back checks the digest anyway (a disk
//! or a hand can still change it). The store is bounded by a byte budget of compressed
//! sources: past it the oldest are evicted, where a source is as old as the last job that
//! used it (writing a source that is already kept refreshes its modification time). The
//! newest source is kept even when it alone is over the budget, so the latest job can always
//! be checked. A budget of 0 turns retention off: nothing new is kept, and what was kept is
//! left alone.
//!
//! Eviction is what makes a row unverifiable, so a deployment that must be able to re-run
//! every audited job (a bank, say) gives the store a budget as large as its audit retention
//! and mounts durable, backed-up storage at `<state_dir>/sources` (a symlink to it works).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use hpcc_core::digest::Digest;

/// The largest source read back, uncompressed (the largest a worker accepts).
pub const MAX_RETAINED_BYTES: u64 = crate::service::MAX_SOURCE_BYTES;

/// The zstd level of retained sources: preprocessed sources are text that compresses about
/// tenfold at level 3, at a cost well below the compile's.
const LEVEL: i32 = 3;

const SUFFIX: &str = ".zst";

/// Why a source could not be kept or read back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The source is not (or no longer) in the store.
    #[error(
        "source {digest} is no longer retained ({} is missing: evicted, or never kept)",
        path.display()
    )]
    NotRetained {
        /// The source's digest, hex.
        digest: String,
        /// Where it would be.
        path: PathBuf,
    },
    /// Creating or listing the store's directory failed.
    #[error("source store {}: {source}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a source failed.
    #[error("writing retained source {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Reading a source failed.
    #[error("reading retained source {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a zstd stream, or decompresses to more than [`MAX_RETAINED_BYTES`].
    #[error("retained source {} is not a zstd stream of at most {MAX_RETAINED_BYTES} bytes", path.display())]
    Decompress {
        /// The file.
        path: PathBuf,
    },
    /// The file's content does not have the digest its name says.
    #[error("retained source {} is corrupt: its content has digest {actual}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The digest of what it holds.
        actual: String,
    },
}

/// Where the source with `digest` is kept in the store at `dir`.
pub fn path_in(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join(format!("{}{SUFFIX}", digest.to_hex()))
}

/// Reads the source with `digest` from the store at `dir`, checking its digest. This needs no
/// [`SourceStore`] (nor its directory scan), so a verifier can read the store a running
/// worker writes.
pub fn read(dir: &Path, digest: &Digest) -> Result<Vec<u8>, SourceError> {
    let path = path_in(dir, digest);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(SourceError::NotRetained {
                digest: digest.to_hex(),
                path,
            })
        }
        Err(source) => return Err(SourceError::Read { path, source }),
    };
    let decoder = zstd::stream::read::Decoder::new(file).map_err(|source| SourceError::Read {
        path: path.clone(),
        source,
    })?;
    let mut source = Vec::new();
    // One byte past the cap tells an over-long stream from one exactly at it.
    decoder
        .take(MAX_RETAINED_BYTES + 1)
        .read_to_end(&mut source)
        .map_err(|_| SourceError::Decompress { path: path.clone() })?;
    if source.len() as u64 > MAX_RETAINED_BYTES {
        return Err(SourceError::Decompress { path });
    }
    let actual = Digest::of(&source);
    if actual != *digest {
        return Err(SourceError::Corrupt {
            path,
            actual: actual.to_hex(),
        });
    }
    Ok(source)
}

/// What the store holds, oldest first.
#[derive(Default)]
struct Index {
    /// By age: a sequence number (higher is newer) to the digest and its file's size.
    by_age: BTreeMap<u64, (Digest, u64)>,
    /// The sequence number of each kept digest.
    by_digest: HashMap<Digest, u64>,
    next: u64,
    total: u64,
}

impl Index {
    fn insert(&mut self, digest: Digest, size: u64) {
        self.remove(&digest);
        let sequence = self.next;
        self.next += 1;
        self.by_age.insert(sequence, (digest, size));
        self.by_digest.insert(digest, sequence);
        self.total += size;
    }

    fn remove(&mut self, digest: &Digest) -> Option<u64> {
        let sequence = self.by_digest.remove(digest)?;
        let (_, size) = self.by_age.remove(&sequence)?;
        self.total -= size;
        Some(size)
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The retained sources of one worker, bounded by a byte budget.
pub struct SourceStore {
    dir: PathBuf,
    budget: u64,
    index: Mutex<Index>,
}

impl SourceStore {
    /// Opens (creating, mode 0700) the store at `dir` with a budget of `budget` bytes of
    /// compressed sources, and indexes what it holds by modification time. Temporary files
    /// left by a crash are removed.
    pub fn open(dir: &Path, budget: u64) -> Result<SourceStore, SourceError> {
        let directory_error = |source| SourceError::Directory {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(directory_error)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(directory_error)? {
            let entry = entry.map_err(directory_error)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(digest) = name
                .strip_suffix(SUFFIX)
                .and_then(|hex| hex.parse::<Digest>().ok())
            else {
                continue;
            };
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((modified, name.to_owned(), digest, metadata.len()));
        }
        found.sort();
        let mut index = Index::default();
        for (_, _, digest, size) in found {
            index.insert(digest, size);
        }
        let store = SourceStore {
            dir: dir.to_owned(),
            budget,
            index: Mutex::new(index),
        };
        // A smaller budget than last time takes effect at once.
        store.evict(&mut store.lock());
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of compressed sources kept now.
    pub fn retained_bytes(&self) -> u64 {
        self.lock().total
    }

    /// Whether the source with `digest` is kept now.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().by_digest.contains_key(digest)
    }

    /// Keeps `source`, whose digest is `digest`, as the newest source, evicting the oldest
    /// ones past the budget. Does nothing with a budget of 0.
    pub fn put(&self, digest: &Digest, source: &[u8]) -> Result<(), SourceError> {
        if self.budget == 0 {
            return Ok(());
        }
        let path = path_in(&self.dir, digest);
        if self.refresh(digest, &path)? {
            return Ok(());
        }
        // Compressing and writing happen outside the lock; only the rename, which makes the
        // file visible, is ordered with eviction, so the index and the directory agree.
        let compressed =
            zstd::bulk::compress(source, LEVEL).map_err(|source| SourceError::Write {
                path: path.clone(),
                source,
            })?;
        let temporary = self.dir.join(format!(
            ".{}.tmp-{}-{}",
            digest.to_hex(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = write_synced(&temporary, &compressed);
        if let Err(source) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(SourceError::Write {
                path: temporary,
                source,
            });
        }
        let mut index = self.lock();
        if index.by_digest.contains_key(digest) {
            // Another job kept the same source meanwhile.
            let _ = std::fs::remove_file(&temporary);
            index.insert(*digest, file_size(&path).unwrap_or(0));
            return Ok(());
        }
        if let Err(source) = std::fs::rename(&temporary, &path) {
            let _ = std::fs::remove_file(&temporary);
            return Err(SourceError::Write { path, source });
        }
        // The rename is durable once the directory is synced.
        if let Err(source) = File::open(&self.dir).and_then(|dir| dir.sync_all()) {
            tracing::warn!(dir = %self.dir.display(), %source, "syncing the source store");
        }
        index.insert(*digest, compressed.len() as u64);
        self.evict(&mut index);
        Ok(())
    }

    /// Reads the source with `digest` back, checking its digest ([`read`]).
    pub fn get(&self, digest: &Digest) -> Result<Vec<u8>, SourceError> {
        read(&self.dir, digest)
    }

    /// If `digest` is kept, makes it the newest (in the index and by modification time, which
    /// orders the index when the store is opened again) and returns true.
    fn refresh(&self, digest: &Digest, path: &Path) -> Result<bool, SourceError> {
        let mut index = self.lock();
        if !index.by_digest.contains_key(digest) {
            return Ok(false);
        }
        let touched = OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|file| file.set_modified(SystemTime::now()));
        match touched {
            Ok(()) => {
                let size = file_size(path).unwrap_or(0);
                index.insert(*digest, size);
                Ok(true)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // Removed behind the store's back: write it again.
                index.remove(digest);
                Ok(false)
            }
            Err(source) => Err(SourceError::Write {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Removes the oldest sources until the rest fit the budget, always keeping the newest. A
    /// budget of 0 turns retention off and leaves what was kept alone.
    fn evict(&self, index: &mut Index) {
        if self.budget == 0 {
            return;
        }
        while index.total > self.budget && index.by_age.len() > 1 {
            let Some((_, &(digest, _))) = index.by_age.first_key_value() else {
                break;
            };
            index.remove(&digest);
            let path = path_in(&self.dir, &digest);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "evicting a retained source");
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)?;
    file.sync_data()
}

fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|metadata| metadata.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 KiB that zstd cannot shrink, different for each seed.
    fn noise(seed: &str) -> Vec<u8> {
        let mut bytes = vec![0; 4096];
        blake3::Hasher::new()
            .update(seed.as_bytes())
            .finalize_xof()
            .fill(&mut bytes);
        bytes
    }

    fn kept(store: &SourceStore, sources: &[&[u8]]) -> Vec<bool> {
        sources
            .iter()
            .map(|source| {
                let digest = Digest::of(source);
                let on_disk = path_in(store.dir(), &digest).exists();
                assert_eq!(
                    on_disk,
                    store.contains(&digest),
                    "index and directory agree"
                );
                on_disk
            })
            .collect()
    }

    #[test]
    fn sources_come_back_as_they_went_in() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SourceStore::open(&dir.path().join("sources"), 1 << 20).expect("open");
        let source = b"# 1 \"/src/a.c\"\nint a(void) { return 1; }\n".repeat(100);
        let digest = Digest::of(&source);
        store.put(&digest, &source).expect("put");
        store
            .put(&digest, &source)
            .expect("a second put of the same source");
        assert_eq!(store.get(&digest).expect("get"), source);
        assert_eq!(read(store.dir(), &digest).expect("read"), source);
        let file = path_in(store.dir(), &digest);
        assert_eq!(
            file.file_name().and_then(|name| name.to_str()),
            Some(format!("{}.zst", digest.to_hex()).as_str())
        );
        let size = std::fs::metadata(&file).expect("file").len();
        assert!(size < source.len() as u64 / 4, "compressed: {size} bytes");
        assert_eq!(store.retained_bytes(), size);

        let missing = Digest::of(b"never kept");
        let error = store.get(&missing).expect_err("missing");
        assert!(matches!(error, SourceError::NotRetained { .. }), "{error}");
        assert!(error.to_string().contains("no longer retained"), "{error}");
        assert!(error.to_string().contains(&missing.to_hex()), "{error}");
    }

    #[test]
    fn a_changed_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SourceStore::open(dir.path(), 1 << 20).expect("open");
        let source = b"int a;\n".to_vec();
        let digest = Digest::of(&source);
        store.put(&digest, &source).expect("put");
        let file = path_in(dir.path(), &digest);
        std::fs::write(&file, zstd::bulk::compress(b"int b;\n", 3).expect("zstd")).expect("write");
        let error = store.get(&digest).expect_err("another content");
        assert!(matches!(error, SourceError::Corrupt { .. }), "{error}");
        assert!(error
            .to_string()
            .contains(&Digest::of(b"int b;\n").to_hex()));
        std::fs::write(&file, b"not zstd").expect("write");
        let error = store.get(&digest).expect_err("not zstd");
        assert!(
            matches!(
                error,
                SourceError::Decompress { .. } | SourceError::Read { .. }
            ),
            "{error}"
        );
        assert!(error.to_string().contains(&digest.to_hex()), "{error}");
    }

    #[test]
    fn the_oldest_sources_go_first_and_use_renews_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sources: Vec<Vec<u8>> = ["a", "b", "c", "d"]
            .iter()
            .map(|seed| noise(seed))
            .collect();
        let [a, b, c, d] = [&sources[0], &sources[1], &sources[2], &sources[3]];
        let all: Vec<&[u8]> = sources.iter().map(Vec::as_slice).collect();
        // Room for two and a half sources.
        let size = zstd::bulk::compress(a, LEVEL).expect("zstd").len() as u64;
        let store = SourceStore::open(dir.path(), size * 5 / 2).expect("open");
        for source in [a, b] {
            store.put(&Digest::of(source), source).expect("put");
        }
        assert_eq!(kept(&store, &all), [true, true, false, false]);
        // Using `a` again makes `b` the oldest.
        store.put(&Digest::of(a), a).expect("put");
        store.put(&Digest::of(c), c).expect("put");
        assert_eq!(kept(&store, &all), [true, false, true, false]);
        store.put(&Digest::of(d), d).expect("put");
        assert_eq!(kept(&store, &all), [false, false, true, true]);
        assert!(store.retained_bytes() <= size * 5 / 2);
        let error = store.get(&Digest::of(a)).expect_err("evicted");
        assert!(matches!(error, SourceError::NotRetained { .. }), "{error}");

        // A budget below one source keeps just the newest.
        let tiny = SourceStore::open(&dir.path().join("tiny"), 1).expect("open");
        for source in [a, b] {
            tiny.put(&Digest::of(source), source).expect("put");
        }
        assert_eq!(kept(&tiny, &all), [false, true, false, false]);
    }

    #[test]
    fn reopening_orders_by_modification_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sources: Vec<Vec<u8>> = ["a", "b", "c"].iter().map(|seed| noise(seed)).collect();
        let all: Vec<&[u8]> = sources.iter().map(Vec::as_slice).collect();
        let size = zstd::bulk::compress(&sources[0], LEVEL)
            .expect("zstd")
            .len() as u64;
        {
            let store = SourceStore::open(dir.path(), 1 << 20).expect("open");
            for source in &sources {
                store.put(&Digest::of(source), source).expect("put");
            }
        }
        // `b` is the oldest on disk, then `c`, then `a`.
        let base = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for (source, offset) in sources.iter().zip([20, 0, 10]) {
            let file = File::options()
                .write(true)
                .open(path_in(dir.path(), &Digest::of(source)))
                .expect("open file");
            file.set_modified(base + std::time::Duration::from_secs(offset))
                .expect("set mtime");
        }
        let stale = dir.path().join(".ab.tmp-1-2");
        std::fs::write(&stale, b"half").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"left alone").expect("write");
        let store = SourceStore::open(dir.path(), size * 2).expect("reopen");
        assert_eq!(kept(&store, &all), [true, false, true]);
        assert!(!stale.exists(), "a crash's temporary file is removed");
        assert!(dir.path().join("notes.txt").exists());

        // Budget 0: nothing new is kept, nothing old is removed.
        let off = SourceStore::open(dir.path(), 0).expect("reopen");
        let new = noise("new");
        off.put(&Digest::of(&new), &new).expect("put");
        assert_eq!(kept(&off, &all), [true, false, true]);
        assert!(!path_in(dir.path(), &Digest::of(&new)).exists());
    }
}
