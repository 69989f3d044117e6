//! Retained job sources: the preprocessed source of every audited job, zstd-compressed and
//! content-addressed in its tenant's directory as `<dir>/<tenant>/<source_digest hex>.zst`,
//! so that an audit row can be re-run later ([`crate::verify`]). Tenants never share a kept
//! source, even an identical one: each has its own copy, its own budget and can be deleted
//! alone ([`SourceStore::delete_tenant`]).
//!
//! A source is written to a temporary file, `fdatasync`ed and renamed into place, so a file
//! under its digest's name is always whole; reading it back checks the digest anyway (a disk
//! or a hand can still change it). The store is bounded by a byte budget of compressed
//! sources: past it the oldest are evicted, where a source is as old as the last job that
//! used it (writing a source that is already kept refreshes its modification time). The
//! newest source is kept even when it alone is over the budget, so the latest job can always
//! be checked. A tenant's quota (`max_kept_source_bytes`) evicts its own oldest sources the
//! same way, before the worker's budget is looked at. A budget of 0 turns retention off:
//! nothing new is kept, and what was kept is left alone. Files of an older worker, kept
//! without a tenant directory, are still read ([`read`]) but never written.
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

/// Where `tenant`'s source with `digest` is kept in the store at `dir`.
pub fn path_in(dir: &Path, tenant: &str, digest: &Digest) -> PathBuf {
    dir.join(tenant)
        .join(format!("{}{SUFFIX}", digest.to_hex()))
}

/// The error for a tenant name that cannot be a directory (it never reaches a path).
fn not_a_tenant(dir: &Path, tenant: &str) -> SourceError {
    SourceError::Directory {
        path: dir.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{tenant:?} is not a tenant name"),
        ),
    }
}

/// Where an older worker kept a source, without a tenant directory.
fn legacy_path_in(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join(format!("{}{SUFFIX}", digest.to_hex()))
}

/// Reads `tenant`'s source with `digest` from the store at `dir`, checking its digest (a file
/// an older worker kept without a tenant directory is read if the tenant has none). This
/// needs no [`SourceStore`] (nor its directory scan), so a verifier can read the store a
/// running worker writes.
pub fn read(dir: &Path, tenant: &str, digest: &Digest) -> Result<Vec<u8>, SourceError> {
    if !hpcc_core::config::is_safe_name(tenant) {
        return Err(not_a_tenant(dir, tenant));
    }
    let mut path = path_in(dir, tenant, digest);
    if !path.exists() && legacy_path_in(dir, digest).exists() {
        path = legacy_path_in(dir, digest);
    }
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

/// A kept source: its tenant and digest.
type Kept = (String, Digest);

/// What the store holds, oldest first, over all tenants and per tenant.
#[derive(Default)]
struct Index {
    /// By age: a sequence number (higher is newer) to the source and its file's size.
    by_age: BTreeMap<u64, (Kept, u64)>,
    /// The sequence number of each kept source.
    by_source: HashMap<Kept, u64>,
    /// Each tenant's sources by age, and its bytes.
    tenants: HashMap<String, (BTreeMap<u64, Digest>, u64)>,
    next: u64,
    total: u64,
}

impl Index {
    fn insert(&mut self, tenant: &str, digest: Digest, size: u64) {
        let kept = (tenant.to_owned(), digest);
        self.remove(&kept);
        let sequence = self.next;
        self.next += 1;
        self.by_age.insert(sequence, (kept.clone(), size));
        self.by_source.insert(kept, sequence);
        let (ages, bytes) = self.tenants.entry(tenant.to_owned()).or_default();
        ages.insert(sequence, digest);
        *bytes += size;
        self.total += size;
    }

    fn remove(&mut self, kept: &Kept) -> Option<u64> {
        let sequence = self.by_source.remove(kept)?;
        let (_, size) = self.by_age.remove(&sequence)?;
        self.total -= size;
        if let Some((ages, bytes)) = self.tenants.get_mut(&kept.0) {
            ages.remove(&sequence);
            *bytes -= size;
            if ages.is_empty() {
                self.tenants.remove(&kept.0);
            }
        }
        Some(size)
    }

    /// `tenant`'s bytes.
    fn tenant_bytes(&self, tenant: &str) -> u64 {
        self.tenants.get(tenant).map_or(0, |(_, bytes)| *bytes)
    }

    /// `tenant`'s oldest source, if it has more than one.
    fn tenant_oldest(&self, tenant: &str) -> Option<Kept> {
        let (ages, _) = self.tenants.get(tenant)?;
        if ages.len() < 2 {
            return None;
        }
        ages.first_key_value()
            .map(|(_, digest)| (tenant.to_owned(), *digest))
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
    /// compressed sources, and indexes what each tenant's directory holds by modification
    /// time. Temporary files left by a crash are removed.
    pub fn open(dir: &Path, budget: u64) -> Result<SourceStore, SourceError> {
        let directory_error = |path: &Path| {
            let path = path.to_owned();
            move |source| SourceError::Directory { path, source }
        };
        std::fs::create_dir_all(dir).map_err(directory_error(dir))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(directory_error(dir))? {
            let entry = entry.map_err(directory_error(dir))?;
            let Some(tenant) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !entry.file_type().is_ok_and(|kind| kind.is_dir())
                || !hpcc_core::config::is_safe_name(&tenant)
            {
                continue;
            }
            let tenant_dir = entry.path();
            for file in std::fs::read_dir(&tenant_dir).map_err(directory_error(&tenant_dir))? {
                let file = file.map_err(directory_error(&tenant_dir))?;
                let name = file.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with('.') && name.contains(".tmp-") {
                    let _ = std::fs::remove_file(file.path());
                    continue;
                }
                let Some(digest) = name
                    .strip_suffix(SUFFIX)
                    .and_then(|hex| hex.parse::<Digest>().ok())
                else {
                    continue;
                };
                let Ok(metadata) = file.metadata() else {
                    continue;
                };
                let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((modified, tenant.clone(), digest, metadata.len()));
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, tenant, digest, size) in found {
            index.insert(&tenant, digest, size);
        }
        let store = SourceStore {
            dir: dir.to_owned(),
            budget,
            index: Mutex::new(index),
        };
        // A smaller budget than last time takes effect at once.
        store.evict(&mut store.lock(), None);
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

    /// Bytes of `tenant`'s compressed sources kept now.
    pub fn tenant_bytes(&self, tenant: &str) -> u64 {
        self.lock().tenant_bytes(tenant)
    }

    /// Each tenant with kept sources: `(tenant, sources, bytes)`, by tenant.
    pub fn usage(&self) -> Vec<(String, u64, u64)> {
        let index = self.lock();
        let mut usage: Vec<(String, u64, u64)> = index
            .tenants
            .iter()
            .map(|(tenant, (ages, bytes))| (tenant.clone(), ages.len() as u64, *bytes))
            .collect();
        usage.sort();
        usage
    }

    /// Whether `tenant`'s source with `digest` is kept now.
    pub fn contains(&self, tenant: &str, digest: &Digest) -> bool {
        self.lock()
            .by_source
            .contains_key(&(tenant.to_owned(), *digest))
    }

    /// Keeps `tenant`'s `source`, whose digest is `digest`, as the newest source, evicting
    /// the tenant's oldest past `tenant_budget`, then the oldest of all past the worker's
    /// budget. Does nothing with a budget of 0. `tenant` must be a safe name
    /// ([`hpcc_core::config::is_safe_name`]).
    pub fn put(
        &self,
        tenant: &str,
        digest: &Digest,
        source: &[u8],
        tenant_budget: Option<u64>,
    ) -> Result<(), SourceError> {
        if self.budget == 0 {
            return Ok(());
        }
        if !hpcc_core::config::is_safe_name(tenant) {
            return Err(not_a_tenant(&self.dir, tenant));
        }
        let tenant_dir = self.dir.join(tenant);
        let path = path_in(&self.dir, tenant, digest);
        if self.refresh(tenant, digest, &path)? {
            return Ok(());
        }
        std::fs::create_dir_all(&tenant_dir).map_err(|source| SourceError::Directory {
            path: tenant_dir.clone(),
            source,
        })?;
        // Compressing and writing happen outside the lock; only the rename, which makes the
        // file visible, is ordered with eviction, so the index and the directory agree.
        let compressed =
            zstd::bulk::compress(source, LEVEL).map_err(|source| SourceError::Write {
                path: path.clone(),
                source,
            })?;
        let temporary = tenant_dir.join(format!(
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
        let kept = (tenant.to_owned(), *digest);
        if index.by_source.contains_key(&kept) {
            // Another job kept the same source meanwhile.
            let _ = std::fs::remove_file(&temporary);
            index.insert(tenant, *digest, file_size(&path).unwrap_or(0));
            return Ok(());
        }
        if let Err(source) = std::fs::rename(&temporary, &path) {
            let _ = std::fs::remove_file(&temporary);
            return Err(SourceError::Write { path, source });
        }
        // The rename is durable once the directory is synced.
        if let Err(source) = File::open(&tenant_dir).and_then(|dir| dir.sync_all()) {
            tracing::warn!(dir = %tenant_dir.display(), %source, "syncing the source store");
        }
        index.insert(tenant, *digest, compressed.len() as u64);
        self.evict(&mut index, tenant_budget.map(|budget| (tenant, budget)));
        Ok(())
    }

    /// Reads `tenant`'s source with `digest` back, checking its digest ([`read`]).
    pub fn get(&self, tenant: &str, digest: &Digest) -> Result<Vec<u8>, SourceError> {
        read(&self.dir, tenant, digest)
    }

    /// Deletes every source `tenant` has kept; returns how many and their bytes.
    pub fn delete_tenant(&self, tenant: &str) -> Result<(u64, u64), SourceError> {
        let mut index = self.lock();
        let digests: Vec<Digest> = index
            .tenants
            .get(tenant)
            .map(|(ages, _)| ages.values().copied().collect())
            .unwrap_or_default();
        let mut removed = (0, 0);
        for digest in digests {
            if let Some(size) = index.remove(&(tenant.to_owned(), digest)) {
                removed.0 += 1;
                removed.1 += size;
            }
        }
        let tenant_dir = self.dir.join(tenant);
        if hpcc_core::config::is_safe_name(tenant) && tenant_dir.is_dir() {
            std::fs::remove_dir_all(&tenant_dir).map_err(|source| SourceError::Directory {
                path: tenant_dir,
                source,
            })?;
        }
        Ok(removed)
    }

    /// If `tenant`'s `digest` is kept, makes it the newest (in the index and by modification
    /// time, which orders the index when the store is opened again) and returns true.
    fn refresh(&self, tenant: &str, digest: &Digest, path: &Path) -> Result<bool, SourceError> {
        let mut index = self.lock();
        let kept = (tenant.to_owned(), *digest);
        if !index.by_source.contains_key(&kept) {
            return Ok(false);
        }
        let touched = OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|file| file.set_modified(SystemTime::now()));
        match touched {
            Ok(()) => {
                let size = file_size(path).unwrap_or(0);
                index.insert(tenant, *digest, size);
                Ok(true)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // Removed behind the store's back: write it again.
                index.remove(&kept);
                Ok(false)
            }
            Err(source) => Err(SourceError::Write {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Removes `tenant`'s oldest sources past its budget (if given), then the oldest of all
    /// past the worker's, always keeping the newest of each. A budget of 0 turns retention
    /// off and leaves what was kept alone.
    fn evict(&self, index: &mut Index, tenant: Option<(&str, u64)>) {
        if self.budget == 0 {
            return;
        }
        if let Some((tenant, budget)) = tenant {
            while index.tenant_bytes(tenant) > budget {
                let Some(oldest) = index.tenant_oldest(tenant) else {
                    break;
                };
                self.remove_file(index, &oldest);
            }
        }
        while index.total > self.budget && index.by_age.len() > 1 {
            let Some((_, (oldest, _))) = index.by_age.first_key_value() else {
                break;
            };
            let oldest = oldest.clone();
            self.remove_file(index, &oldest);
        }
    }

    fn remove_file(&self, index: &mut Index, kept: &Kept) {
        index.remove(kept);
        let path = path_in(&self.dir, &kept.0, &kept.1);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "evicting a retained source");
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
                let on_disk = path_in(store.dir(), "t", &digest).exists();
                assert_eq!(
                    on_disk,
                    store.contains("t", &digest),
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
        store.put("t", &digest, &source, None).expect("put");
        store
            .put("t", &digest, &source, None)
            .expect("a second put of the same source");
        assert_eq!(store.get("t", &digest).expect("get"), source);
        assert_eq!(read(store.dir(), "t", &digest).expect("read"), source);
        let file = path_in(store.dir(), "t", &digest);
        assert_eq!(
            file.file_name().and_then(|name| name.to_str()),
            Some(format!("{}.zst", digest.to_hex()).as_str())
        );
        let size = std::fs::metadata(&file).expect("file").len();
        assert!(size < source.len() as u64 / 4, "compressed: {size} bytes");
        assert_eq!(store.retained_bytes(), size);

        let missing = Digest::of(b"never kept");
        let error = store.get("t", &missing).expect_err("missing");
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
        store.put("t", &digest, &source, None).expect("put");
        let file = path_in(dir.path(), "t", &digest);
        std::fs::write(&file, zstd::bulk::compress(b"int b;\n", 3).expect("zstd")).expect("write");
        let error = store.get("t", &digest).expect_err("another content");
        assert!(matches!(error, SourceError::Corrupt { .. }), "{error}");
        assert!(error
            .to_string()
            .contains(&Digest::of(b"int b;\n").to_hex()));
        std::fs::write(&file, b"not zstd").expect("write");
        let error = store.get("t", &digest).expect_err("not zstd");
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
            store
                .put("t", &Digest::of(source), source, None)
                .expect("put");
        }
        assert_eq!(kept(&store, &all), [true, true, false, false]);
        // Using `a` again makes `b` the oldest.
        store.put("t", &Digest::of(a), a, None).expect("put");
        store.put("t", &Digest::of(c), c, None).expect("put");
        assert_eq!(kept(&store, &all), [true, false, true, false]);
        store.put("t", &Digest::of(d), d, None).expect("put");
        assert_eq!(kept(&store, &all), [false, false, true, true]);
        assert!(store.retained_bytes() <= size * 5 / 2);
        let error = store.get("t", &Digest::of(a)).expect_err("evicted");
        assert!(matches!(error, SourceError::NotRetained { .. }), "{error}");

        // A budget below one source keeps just the newest.
        let tiny = SourceStore::open(&dir.path().join("tiny"), 1).expect("open");
        for source in [a, b] {
            tiny.put("t", &Digest::of(source), source, None)
                .expect("put");
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
                store
                    .put("t", &Digest::of(source), source, None)
                    .expect("put");
            }
        }
        // `b` is the oldest on disk, then `c`, then `a`.
        let base = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for (source, offset) in sources.iter().zip([20, 0, 10]) {
            let file = File::options()
                .write(true)
                .open(path_in(dir.path(), "t", &Digest::of(source)))
                .expect("open file");
            file.set_modified(base + std::time::Duration::from_secs(offset))
                .expect("set mtime");
        }
        let stale = dir.path().join("t/.ab.tmp-1-2");
        std::fs::write(&stale, b"half").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"left alone").expect("write");
        let store = SourceStore::open(dir.path(), size * 2).expect("reopen");
        assert_eq!(kept(&store, &all), [true, false, true]);
        assert!(!stale.exists(), "a crash's temporary file is removed");
        assert!(dir.path().join("notes.txt").exists());

        // Budget 0: nothing new is kept, nothing old is removed.
        let off = SourceStore::open(dir.path(), 0).expect("reopen");
        let new = noise("new");
        off.put("t", &Digest::of(&new), &new, None).expect("put");
        assert_eq!(kept(&off, &all), [true, false, true]);
        assert!(!path_in(dir.path(), "t", &Digest::of(&new)).exists());
    }

    #[test]
    fn tenants_keep_their_own_copies_within_their_quotas_and_leave_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SourceStore::open(dir.path(), 1 << 20).expect("open");
        let shared = noise("shared");
        let digest = Digest::of(&shared);
        store.put("a", &digest, &shared, None).expect("put a");
        assert!(store.contains("a", &digest));
        assert!(!store.contains("b", &digest), "b kept nothing");
        let error = store.get("b", &digest).expect_err("b's source is not a's");
        assert!(matches!(error, SourceError::NotRetained { .. }), "{error}");
        store.put("b", &digest, &shared, None).expect("put b");
        assert!(path_in(dir.path(), "a", &digest).exists());
        assert!(path_in(dir.path(), "b", &digest).exists());
        let size = store.tenant_bytes("a");
        assert_eq!(store.tenant_bytes("b"), size);

        // b's quota of two sources evicts b's oldest, never a's.
        for seed in ["b1", "b2", "b3"] {
            let source = noise(seed);
            store
                .put("b", &Digest::of(&source), &source, Some(size * 2))
                .expect("put");
        }
        assert!(store.tenant_bytes("b") <= size * 2);
        assert!(!store.contains("b", &digest), "b's oldest went");
        assert!(store.contains("a", &digest), "a's copy stays");
        assert_eq!(
            store.usage(),
            vec![("a".to_owned(), 1, size), ("b".to_owned(), 2, size * 2)]
        );

        // Deleting b removes b's files and index, nothing of a's; a reopened store agrees.
        assert_eq!(store.delete_tenant("b").expect("delete"), (2, size * 2));
        assert!(!dir.path().join("b").exists());
        assert_eq!(store.usage(), vec![("a".to_owned(), 1, size)]);
        let reopened = SourceStore::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(reopened.usage(), vec![("a".to_owned(), 1, size)]);
        assert_eq!(reopened.get("a", &digest).expect("a's source"), shared);

        // A name that cannot be a directory is refused.
        assert!(store.put("../a", &digest, &shared, None).is_err());
        // A file an older worker kept without a tenant directory is still read.
        std::fs::write(
            dir.path()
                .join(format!("{}.zst", Digest::of(b"old").to_hex())),
            zstd::bulk::compress(b"old", 3).expect("zstd"),
        )
        .expect("write");
        assert_eq!(
            read(dir.path(), "a", &Digest::of(b"old")).expect("legacy"),
            b"old"
        );
    }
}
