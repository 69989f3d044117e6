//! The worker's cache: compile results by namespace, on local disk and in the remote tiers
//! the fleet shares.
//!
//! Every object lives in one *namespace*: a tenant's own (`tenant-<id>`), or a sharing
//! group's (`group-<name>`) when the scheduler's config puts tenants in one. The namespace
//! comes from the routing token the scheduler signed, never from the client. It is part of
//! the cache key ([`crate::policy::cache_key`]) and of where the object is kept:
//!
//! - locally, `<state_dir>/cache/<namespace>/`, one [`DiskStore`] each, bounded by the
//!   tenant's `max_cache_bytes` and, over all namespaces, by `[cache] max_size`: past it the
//!   largest namespace gives up its least recently used entries;
//! - remotely, each `[[cache.remote]]` store seen through [`Store::scoped`], under
//!   `cache/<namespace>/` in a bucket (or the same key prefix in Redis), so that a tenant's
//!   objects can be listed and deleted.
//!
//! So a namespace never reads another's object: the key differs and so does the place. A
//! lookup asks the local disk, then the remote tiers in order; a remote object is verified
//! against its key before it is used (a corrupted or truncated one is a miss, counted, and
//! deleted from its tier) and copied to the local disk. A store that fails or times out is
//! skipped for its cooldown, so an outage costs one timeout per namespace and the worker
//! compiles. Writes to remote tiers are queued and never make a job wait.
//!
//! # Tenants apart
//!
//! No byte of one tenant's is served to, or observable by, another, unless the scheduler's
//! config puts both in one sharing group. Besides the namespace in every key and place:
//!
//! - Kept sources live under `sources/<tenant>/` and snapshots are keyed by tenant, whatever
//!   the sharing groups ([`crate::sources`], [`crate::snapshots`]).
//! - A job that misses in its namespace runs in a session of its own tenant's
//!   ([`crate::sessions`]), so its latency is a compile's whether or not another namespace
//!   holds the same job (the end-to-end `tenancy` tests measure it); a reply's cache hit and
//!   session name only the tenant's own namespace.
//! - Quotas and admission are per tenant ([`crate::fair`]): one tenant's burst waits behind its
//!   own jobs, not in front of another's.
//! - Names that reach paths or key prefixes are checked where they enter and where they are
//!   used: tenant ids and group names by the scheduler's config
//!   ([`hpcc_core::config::is_safe_name`]), namespaces again here ([`valid_namespace`]) and by
//!   the remote stores (`check_namespace`), tenant ids by [`crate::sources::SourceStore`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hpcc_core::config::{RemoteConfig, WorkerCacheConfig};
use hpcc_core::digest::Digest;
use hpcc_store::remote::{self, Found, RemoteError, Store, Tier, Tiers};
use hpcc_store::{DiskConfig, DiskStore, Kind, Lookup};

/// Why the cache could not be opened or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A namespace name that cannot be a directory or a key prefix.
    #[error("bad cache namespace {0:?}")]
    Namespace(String),
    /// The local disk tier failed.
    #[error("local cache {}: {source}", path.display())]
    Disk {
        /// The namespace's directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: hpcc_store::StoreError,
    },
    /// A remote tier failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// Whether `namespace` may name a directory and a key prefix: `tenant-<id>` or
/// `group-<name>` with a name [`hpcc_core::config::is_safe_name`] accepts.
pub fn valid_namespace(namespace: &str) -> bool {
    ["tenant-", "group-"].iter().any(|prefix| {
        namespace
            .strip_prefix(prefix)
            .is_some_and(hpcc_core::config::is_safe_name)
    })
}

/// Counters of the cache since the worker started.
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Served from the local disk.
    pub local_hits: AtomicU64,
    /// Served from a remote tier (and copied to the local disk).
    pub remote_hits: AtomicU64,
    /// Found nowhere.
    pub misses: AtomicU64,
    /// Objects that failed verification (local or remote) and were treated as misses.
    pub corrupt: AtomicU64,
    /// Results stored.
    pub stores: AtomicU64,
}

impl CacheCounters {
    /// The counters as `(name, value)` pairs.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("local_hits", self.local_hits.load(Ordering::Relaxed)),
            ("remote_hits", self.remote_hits.load(Ordering::Relaxed)),
            ("misses", self.misses.load(Ordering::Relaxed)),
            ("corrupt", self.corrupt.load(Ordering::Relaxed)),
            ("stores", self.stores.load(Ordering::Relaxed)),
        ]
    }
}

/// One namespace's tiers.
struct Namespace {
    disk: DiskStore,
    /// The limit `disk` was opened with (the tenant's quota, within the worker's).
    disk_limit: u64,
    /// The remote tiers seen through this namespace; `None` without `[[cache.remote]]`.
    tiers: Option<Tiers>,
}

/// A configured remote store, unscoped, with how it is used.
struct RemoteStore {
    store: Arc<dyn Store>,
    cooldown: Duration,
    writable: bool,
    max_size: Option<u64>,
}

/// The worker's cache.
pub struct WorkerCache {
    root: PathBuf,
    max_size: u64,
    remotes: Vec<RemoteStore>,
    namespaces: Mutex<HashMap<String, Arc<Namespace>>>,
    counters: CacheCounters,
    /// The remote tiers' counters, drained from each namespace's tiers and added up.
    remote_totals: Mutex<BTreeMap<(String, String), u64>>,
}

/// What one namespace holds on this worker's local disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUsage {
    /// The namespace.
    pub namespace: String,
    /// Entries.
    pub entries: u64,
    /// Bytes.
    pub bytes: u64,
}

impl WorkerCache {
    /// Opens the cache under `root` (`<state_dir>/cache`) with `config`'s tiers; no remote
    /// store is contacted yet. S3 buckets with `auto_create` are created by
    /// [`WorkerCache::create_buckets`].
    pub fn open(root: &Path, config: &WorkerCacheConfig) -> Result<WorkerCache, CacheError> {
        std::fs::create_dir_all(root).map_err(|source| CacheError::Disk {
            path: root.to_owned(),
            source: hpcc_store::StoreError::CreateDir {
                path: root.to_owned(),
                source,
            },
        })?;
        let remotes = config
            .remote
            .iter()
            .map(|remote| {
                Ok(RemoteStore {
                    store: remote::open(remote)?,
                    cooldown: Duration::from_secs(remote.options.cooldown_secs),
                    writable: !remote.options.read_only,
                    max_size: remote.options.max_size.map(|size| size.0),
                })
            })
            .collect::<Result<Vec<_>, RemoteError>>()?;
        Ok(WorkerCache {
            root: root.to_owned(),
            max_size: config.max_size.0,
            remotes,
            namespaces: Mutex::new(HashMap::new()),
            counters: CacheCounters::default(),
            remote_totals: Mutex::new(BTreeMap::new()),
        })
    }

    /// Creates the S3 buckets of `configs` that have `auto_create`; failures are logged and
    /// the stores used as they are.
    pub async fn create_buckets(configs: &[RemoteConfig]) {
        for config in configs {
            for (bucket, outcome) in remote::create_configured_buckets(config).await {
                match outcome {
                    Ok(remote::Created::Made) => {
                        tracing::info!(bucket, store = %config.display_name(), "created bucket")
                    }
                    Ok(remote::Created::Existed) => {}
                    Err(error) => tracing::warn!(%error, "creating a cache bucket"),
                }
            }
        }
    }

    /// The counters.
    pub fn counters(&self) -> &CacheCounters {
        &self.counters
    }

    /// The remote tiers' counters since the worker started, summed over namespaces:
    /// `(store, counter, value)`, sorted.
    pub fn remote_counters(&self) -> Vec<(String, String, u64)> {
        let namespaces: Vec<Arc<Namespace>> = self.lock().values().cloned().collect();
        let mut totals = self
            .remote_totals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for namespace in namespaces {
            let Some(tiers) = &namespace.tiers else {
                continue;
            };
            for tier in tiers.tiers() {
                for (counter, value) in tier.stats.drain() {
                    *totals
                        .entry((tier.store.name().to_owned(), counter))
                        .or_default() += value;
                }
            }
        }
        totals
            .iter()
            .map(|((store, counter), value)| (store.clone(), counter.clone(), *value))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Namespace>>> {
        self.namespaces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The tiers of `namespace`, within `quota` bytes locally; opened on first use (inside
    /// a tokio runtime: the remote tiers start their upload task), and again when the quota
    /// changed.
    fn namespace(&self, namespace: &str, quota: Option<u64>) -> Result<Arc<Namespace>, CacheError> {
        if !valid_namespace(namespace) {
            return Err(CacheError::Namespace(namespace.to_owned()));
        }
        let limit = quota
            .map_or(self.max_size, |quota| quota.min(self.max_size))
            .max(1);
        let mut namespaces = self.lock();
        if let Some(open) = namespaces.get(namespace) {
            if open.disk_limit == limit {
                return Ok(Arc::clone(open));
            }
        }
        let path = self.root.join(namespace);
        let disk = DiskStore::open(
            &path,
            DiskConfig {
                max_size: limit,
                ..DiskConfig::default()
            },
        )
        .map_err(|source| CacheError::Disk {
            path: path.clone(),
            source,
        })?;
        // Tiers are kept when only the local quota changed: their queue and counters carry on.
        let tiers = match namespaces.remove(namespace) {
            Some(old) => match Arc::try_unwrap(old) {
                Ok(old) => old.tiers,
                Err(_) => self.open_tiers(namespace)?,
            },
            None => self.open_tiers(namespace)?,
        };
        let opened = Arc::new(Namespace {
            disk,
            disk_limit: limit,
            tiers,
        });
        namespaces.insert(namespace.to_owned(), Arc::clone(&opened));
        Ok(opened)
    }

    fn open_tiers(&self, namespace: &str) -> Result<Option<Tiers>, CacheError> {
        if self.remotes.is_empty() {
            return Ok(None);
        }
        let tiers = self
            .remotes
            .iter()
            .map(|remote| {
                Ok(Tier::new(
                    remote.store.scoped(namespace)?,
                    remote.cooldown,
                    remote.writable,
                    remote.max_size,
                ))
            })
            .collect::<Result<Vec<_>, RemoteError>>()?;
        Ok(Some(Tiers::new(tiers)))
    }

    /// Looks `key` up in `namespace`: the local disk, then each remote tier. A remote hit is
    /// copied to the local disk. `None` is a miss (failures included: they are logged and
    /// counted, and the job compiles).
    pub async fn get(&self, namespace: &str, quota: Option<u64>, key: &Digest) -> Option<Vec<u8>> {
        let tiers = match self.namespace(namespace, quota) {
            Ok(tiers) => tiers,
            Err(error) => {
                tracing::warn!(%error, "worker cache");
                return None;
            }
        };
        match tiers.disk.get(Kind::Result, key) {
            Ok(Lookup::Hit(payload)) => {
                self.counters.local_hits.fetch_add(1, Ordering::Relaxed);
                return Some(payload);
            }
            Ok(Lookup::Corrupt) => {
                self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Lookup::Miss) => {}
            Err(error) => tracing::warn!(%error, namespace, "local worker cache"),
        }
        if let Some(remote) = &tiers.tiers {
            match remote.get(Kind::Result, key).await {
                Found::Hit { object, .. } => {
                    if let Some(payload) =
                        hpcc_store::verify_encoded(Kind::Result, key, object.object())
                    {
                        self.counters.remote_hits.fetch_add(1, Ordering::Relaxed);
                        if let Err(error) = tiers.disk.put_verified(&object) {
                            tracing::warn!(%error, namespace, "copying a remote hit to the local cache");
                        }
                        self.trim_total();
                        return Some(payload);
                    }
                    self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                }
                Found::Miss { corrupt } => {
                    self.counters
                        .corrupt
                        .fetch_add(u64::from(corrupt), Ordering::Relaxed);
                }
            }
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Stores `payload` for `key` in `namespace`: on the local disk now, in the remote tiers
    /// through their queue.
    pub fn put(&self, namespace: &str, quota: Option<u64>, key: &Digest, payload: &[u8]) {
        let tiers = match self.namespace(namespace, quota) {
            Ok(tiers) => tiers,
            Err(error) => {
                tracing::warn!(%error, "worker cache");
                return;
            }
        };
        if let Err(error) = tiers.disk.put(Kind::Result, key, payload) {
            tracing::warn!(%error, namespace, "storing a result in the local cache");
            return;
        }
        self.counters.stores.fetch_add(1, Ordering::Relaxed);
        if let Some(remote) = &tiers.tiers {
            match tiers.disk.get_verified(Kind::Result, key) {
                Ok(Some(object)) => {
                    remote.put(object);
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, namespace, "reading back a stored result"),
            }
        }
        self.trim_total();
    }

    /// The namespaces on local disk (opened or not), with what each holds.
    pub fn local_usage(&self) -> Result<Vec<LocalUsage>, CacheError> {
        let mut usage = Vec::new();
        for (namespace, store) in self.on_disk()? {
            let disk_error = |source| CacheError::Disk {
                path: store.root().to_owned(),
                source,
            };
            usage.push(LocalUsage {
                entries: store.entry_count().map_err(disk_error)?,
                bytes: store.size().map_err(disk_error)?,
                namespace,
            });
        }
        usage.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        Ok(usage)
    }

    /// Handles on every namespace directory under the root.
    fn on_disk(&self) -> Result<Vec<(String, DiskStore)>, CacheError> {
        let listing = std::fs::read_dir(&self.root).map_err(|source| CacheError::Disk {
            path: self.root.clone(),
            source: hpcc_store::StoreError::CreateDir {
                path: self.root.clone(),
                source,
            },
        })?;
        let mut found = Vec::new();
        for entry in listing.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !valid_namespace(&name) {
                continue;
            }
            let store =
                DiskStore::open(&entry.path(), DiskConfig::default()).map_err(|source| {
                    CacheError::Disk {
                        path: entry.path(),
                        source,
                    }
                })?;
            found.push((name, store));
        }
        Ok(found)
    }

    /// Keeps the local disk within `[cache] max_size` over all namespaces: while over it,
    /// the largest namespace gives up its least recently used entries (a coarse shard at a
    /// time, as the disk store evicts).
    fn trim_total(&self) {
        let Ok(stores) = self.on_disk() else {
            return;
        };
        let mut sizes: Vec<(u64, &DiskStore)> = stores
            .iter()
            .map(|(_, store)| (store.size().unwrap_or(0), store))
            .collect();
        // Bounded: each round trims one shard of one namespace.
        for _ in 0..64 {
            let total: u64 = sizes.iter().map(|(size, _)| size).sum();
            if total <= self.max_size {
                return;
            }
            let Some((size, store)) = sizes.iter_mut().max_by_key(|(size, _)| *size) else {
                return;
            };
            let target = size.saturating_sub(total - self.max_size).max(1);
            let trimmer = DiskStore::open(
                store.root(),
                DiskConfig {
                    max_size: target,
                    ..DiskConfig::default()
                },
            );
            match trimmer.and_then(|trimmer| trimmer.evict_if_needed()) {
                Ok(Some(report)) if report.bytes_removed > 0 => {
                    *size = size.saturating_sub(report.bytes_removed);
                }
                // Nothing removed (another trim is running, or the accounting is behind).
                _ => return,
            }
        }
    }

    /// Deletes `namespace` from every tier: the local disk and each remote store. Returns the
    /// local entries and remote objects removed.
    pub async fn delete_namespace(&self, namespace: &str) -> Result<Deleted, CacheError> {
        if !valid_namespace(namespace) {
            return Err(CacheError::Namespace(namespace.to_owned()));
        }
        self.lock().remove(namespace);
        let path = self.root.join(namespace);
        let mut deleted = Deleted::default();
        if path.is_dir() {
            let store = DiskStore::open(&path, DiskConfig::default()).map_err(|source| {
                CacheError::Disk {
                    path: path.clone(),
                    source,
                }
            })?;
            let report = store.clean().map_err(|source| CacheError::Disk {
                path: path.clone(),
                source,
            })?;
            deleted.local_entries = report.files_removed;
            deleted.local_bytes = report.bytes_removed;
            if let Err(error) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), %error, "removing a namespace directory");
            }
        }
        for remote in &self.remotes {
            let removed = remote.store.delete_namespace(namespace).await?;
            deleted
                .remote
                .push((remote.store.name().to_owned(), removed));
        }
        Ok(deleted)
    }

    /// What `namespace` holds in each remote store: `(store, objects, bytes)`.
    pub async fn remote_usage(
        &self,
        namespace: &str,
    ) -> Result<Vec<(String, u64, u64)>, CacheError> {
        if !valid_namespace(namespace) {
            return Err(CacheError::Namespace(namespace.to_owned()));
        }
        let mut usage = Vec::new();
        for remote in &self.remotes {
            let (objects, bytes) = remote.store.namespace_usage(namespace).await?;
            usage.push((remote.store.name().to_owned(), objects, bytes));
        }
        Ok(usage)
    }

    /// Waits up to `deadline` until nothing is queued for the remote tiers (writes go on
    /// being queued); `true` if the queues emptied.
    pub async fn settle(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let queued: u64 = self
                .lock()
                .values()
                .filter_map(|namespace| namespace.tiers.as_ref())
                .map(Tiers::queued_bytes)
                .sum();
            if queued == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes what the remote tiers have queued, for at most `deadline` per namespace, and
    /// takes no more writes: for shutting down.
    pub async fn flush(&self, deadline: Duration) {
        let namespaces: Vec<Arc<Namespace>> = self.lock().values().cloned().collect();
        for namespace in namespaces {
            if let Some(tiers) = &namespace.tiers {
                tiers.flush(deadline).await;
            }
        }
    }
}

/// What [`WorkerCache::delete_namespace`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Entries on the local disk.
    pub local_entries: u64,
    /// Their bytes.
    pub local_bytes: u64,
    /// Objects removed from each remote store, by name.
    pub remote: Vec<(String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_size: u64) -> WorkerCacheConfig {
        WorkerCacheConfig {
            max_size: hpcc_core::config::ByteSize(max_size),
            remote: Vec::new(),
        }
    }

    /// Incompressible bytes, different for each seed.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof()
            .fill(&mut bytes);
        bytes
    }

    /// A cache of `max_size` bytes in a fresh directory, with `key` put as `payload` in each
    /// of `namespaces`.
    fn cache_with(
        max_size: u64,
        key: &Digest,
        namespaces: &[(&str, &[u8])],
    ) -> (tempfile::TempDir, WorkerCache) {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = WorkerCache::open(dir.path(), &config(max_size)).expect("open");
        for (namespace, payload) in namespaces {
            cache.put(namespace, None, key, payload);
        }
        (dir, cache)
    }

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn namespaces_never_see_each_others_entries() {
        let key = Digest::of(b"the same job");
        let (_dir, cache) = cache_with(1 << 30, &key, &[("tenant-a", b"a's object")]);
        assert_eq!(
            block_on(cache.get("tenant-a", None, &key)).as_deref(),
            Some(&b"a's object"[..])
        );
        assert_eq!(block_on(cache.get("tenant-b", None, &key)), None);
        assert_eq!(block_on(cache.get("group-a", None, &key)), None);
        // Names that could leave the cache directory are refused, never opened.
        for bad in [
            "../tenant-a",
            "tenant-",
            "tenant-a/b",
            "other-a",
            "tenant-.a",
        ] {
            assert!(!valid_namespace(bad), "{bad:?}");
            cache.put(bad, None, &key, b"x");
            assert_eq!(block_on(cache.get(bad, None, &key)), None, "{bad:?}");
        }
        let usage = cache.local_usage().expect("usage");
        let names: Vec<&str> = usage.iter().map(|usage| usage.namespace.as_str()).collect();
        // Only a namespace written to takes room on disk.
        assert_eq!(names, ["tenant-a"]);
        let counters = cache.counters().snapshot();
        assert!(counters.contains(&("local_hits", 1)), "{counters:?}");
        assert!(counters.contains(&("stores", 1)), "{counters:?}");
    }

    #[test]
    fn a_tenant_quota_and_the_worker_bound_evict_least_recently_used() {
        let dir = tempfile::tempdir().expect("temp dir");
        let entry: u64 = 64 << 10;
        let len = usize::try_from(entry).expect("64 KiB");
        // Room for about 40 entries in all; tenant b may hold about 10.
        let cache = WorkerCache::open(dir.path(), &config(40 * entry)).expect("open");
        let quota = Some(10 * entry);
        for seed in 0..40u64 {
            cache.put(
                "tenant-b",
                quota,
                &Digest::of(&seed.to_le_bytes()),
                &noise(seed, len),
            );
        }
        let usage = |name: &str| {
            cache
                .local_usage()
                .expect("usage")
                .into_iter()
                .find(|usage| usage.namespace == name)
                .map_or(0, |usage| usage.bytes)
        };
        assert!(
            usage("tenant-b") <= 11 * entry,
            "b holds {}",
            usage("tenant-b")
        );
        // The newest of b's entries is kept.
        assert!(
            block_on(cache.get("tenant-b", quota, &Digest::of(&39u64.to_le_bytes()))).is_some()
        );
        // a has no quota of its own; with b's, the whole stays within the worker's bound.
        for seed in 100..160u64 {
            cache.put(
                "tenant-a",
                None,
                &Digest::of(&seed.to_le_bytes()),
                &noise(seed, len),
            );
        }
        let total = usage("tenant-a") + usage("tenant-b");
        assert!(
            total <= 41 * entry,
            "{total} bytes over a bound of {}",
            40 * entry
        );
        assert!(
            usage("tenant-a") > 20 * entry,
            "a was trimmed too far: {}",
            usage("tenant-a")
        );
    }

    #[test]
    fn deleting_a_namespace_leaves_the_others() {
        let key = Digest::of(b"job");
        let (dir, cache) = cache_with(1 << 30, &key, &[("tenant-a", b"a"), ("tenant-b", b"b")]);
        let deleted = block_on(cache.delete_namespace("tenant-a")).expect("delete");
        assert_eq!(deleted.local_entries, 1);
        assert!(!dir.path().join("tenant-a").exists());
        assert_eq!(block_on(cache.get("tenant-a", None, &key)), None);
        assert_eq!(
            block_on(cache.get("tenant-b", None, &key)).as_deref(),
            Some(&b"b"[..])
        );
        assert!(matches!(
            block_on(cache.delete_namespace("../x")),
            Err(CacheError::Namespace(_))
        ));
    }
}
