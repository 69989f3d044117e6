//! [`Tiers`]: the remote stores behind the local cache, asked fastest first.
//!
//! A lookup asks each tier in order, skipping those in their cooldown, and takes the first
//! object that passes [`Verified::check`]; the caller copies it into the disk store as it is
//! ([`crate::DiskStore::put_verified`]: no second decode). An object that fails the check
//! (flipped, truncated, stored under another key or kind) is counted as corrupt for its tier and
//! deleted there in the background, and the lookup goes on to the next tier; a miss everywhere is
//! an ordinary miss, and the recompiled entry replaces the bad object. A hit in a slower tier is
//! queued for writing to the faster writable ones (backfill).
//!
//! Writes never make a compile wait: they go to a bounded queue ([`UPLOAD_QUEUE_ENTRIES`],
//! [`UPLOAD_QUEUE_BYTES`]) that one task drains, eight objects at a time; when it is full the
//! write is dropped and counted. [`Tiers::flush`] drains it before the daemon exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hpcc_core::digest::Digest;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{spawn_named, Health, Store, TierStats, Watermark};
use crate::{verify_encoded, Kind};

/// Objects waiting to be written, at most.
pub const UPLOAD_QUEUE_ENTRIES: usize = 4096;
/// Bytes waiting to be written, at most.
pub const UPLOAD_QUEUE_BYTES: u64 = 512 << 20;
/// Objects written at once.
const UPLOAD_CONCURRENCY: usize = 8;

/// One store in the lookup order, with its health, counters and size limit.
#[derive(Debug)]
pub struct Tier {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Cooldown state.
    pub health: Health,
    /// Counters.
    pub stats: TierStats,
    /// Whether objects are written to it.
    pub writable: bool,
    /// The size limit, for stores that need hpcc to evict.
    pub watermark: Option<Watermark>,
}

impl Tier {
    /// A tier over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        cooldown: Duration,
        writable: bool,
        max_size: Option<u64>,
    ) -> Tier {
        Tier {
            store,
            health: Health::new(cooldown),
            stats: TierStats::default(),
            writable,
            watermark: max_size.map(Watermark::new),
        }
    }
}

/// An object checked against the kind and key it is stored under: its checksum (keyed with
/// the key) holds and it decodes. Only such an object is used or copied.
#[derive(Debug, Clone)]
pub struct Verified {
    kind: Kind,
    key: Digest,
    object: Bytes,
}

impl Verified {
    /// Checks `object` for `kind` and `key`; `None` if it is corrupt, truncated or misplaced.
    pub fn check(kind: Kind, key: &Digest, object: Bytes) -> Option<Verified> {
        verify_encoded(kind, key, &object)?;
        Some(Verified {
            kind,
            key: *key,
            object,
        })
    }

    /// The encoded entry.
    pub fn object(&self) -> &Bytes {
        &self.object
    }

    /// The kind it was checked for.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The key it was checked for.
    pub fn key(&self) -> &Digest {
        &self.key
    }
}

/// The outcome of a lookup through the tiers.
#[derive(Debug, Clone)]
pub enum Found {
    /// A verified object from tier `tier`.
    Hit {
        /// The object.
        object: Verified,
        /// Which tier answered.
        tier: usize,
    },
    /// No tier had a valid object (or none could be asked).
    Miss {
        /// Objects that failed verification on the way.
        corrupt: u32,
    },
}

struct Upload {
    object: Verified,
    /// Tier indexes to write to.
    targets: Vec<usize>,
}

/// The remote tiers and their upload queue.
pub struct Tiers {
    tiers: Vec<Arc<Tier>>,
    sender: Mutex<Option<mpsc::Sender<Upload>>>,
    queued_bytes: Arc<AtomicU64>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Tiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiers").field("tiers", &self.tiers).finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Tiers {
    /// The tiers in lookup order. Must be called inside a tokio runtime: it starts the
    /// upload task.
    pub fn new(tiers: Vec<Tier>) -> Tiers {
        let tiers: Vec<Arc<Tier>> = tiers.into_iter().map(Arc::new).collect();
        let (sender, receiver) = mpsc::channel(UPLOAD_QUEUE_ENTRIES);
        let queued_bytes = Arc::new(AtomicU64::new(0));
        let writer = spawn_named(
            "uploads",
            drain_uploads(receiver, tiers.clone(), Arc::clone(&queued_bytes)),
        );
        Tiers {
            tiers,
            sender: Mutex::new(Some(sender)),
            queued_bytes,
            writer: Mutex::new(Some(writer)),
        }
    }

    /// The tiers, for statistics.
    pub fn tiers(&self) -> &[Arc<Tier>] {
        &self.tiers
    }

    /// Looks `key` up in each tier in order.
    pub async fn get(&self, kind: Kind, key: &Digest) -> Found {
        let mut corrupt = 0;
        for (index, tier) in self.tiers.iter().enumerate() {
            if tier.health.down_for(Instant::now()).is_some() {
                TierStats::bump(&tier.stats.skipped);
                continue;
            }
            let started = Instant::now();
            let result = tier.store.get(kind, key).await;
            tier.stats.record_read(started.elapsed());
            match result {
                Ok(Some(object)) => {
                    tier.health.succeeded();
                    let len = u64::try_from(object.len()).unwrap_or(u64::MAX);
                    match Verified::check(kind, key, object) {
                        Some(verified) => {
                            TierStats::bump(&tier.stats.hits);
                            tier.stats.bytes_read.fetch_add(len, Ordering::Relaxed);
                            let faster: Vec<usize> = (0..index)
                                .filter(|faster| self.tiers[*faster].writable)
                                .collect();
                            if !faster.is_empty() {
                                self.enqueue(verified.clone(), faster);
                            }
                            return Found::Hit {
                                object: verified,
                                tier: index,
                            };
                        }
                        None => {
                            corrupt += 1;
                            TierStats::bump(&tier.stats.corrupt);
                            tracing::warn!(
                                store = tier.store.name(),
                                key = %key.to_hex(),
                                "remote object failed its checksum; treated as a miss"
                            );
                            if tier.writable {
                                let store = Arc::clone(&tier.store);
                                let key = *key;
                                spawn_named("delete-corrupt", async move {
                                    let _ = store.delete(kind, &key).await;
                                });
                            }
                        }
                    }
                }
                Ok(None) => {
                    tier.health.succeeded();
                    TierStats::bump(&tier.stats.misses);
                }
                Err(error) => {
                    TierStats::bump(&tier.stats.errors);
                    if error.is_timeout() {
                        TierStats::bump(&tier.stats.timeouts);
                    }
                    tier.health.failed(Instant::now());
                    tracing::warn!(error = %error, "remote store failed; skipping it for its cooldown");
                }
            }
        }
        Found::Miss { corrupt }
    }

    /// Queues `object` for every writable tier; never waits. `false` if it was dropped
    /// (queue full, or the tiers are flushed).
    pub fn put(&self, object: Verified) -> bool {
        let targets: Vec<usize> = (0..self.tiers.len())
            .filter(|index| self.tiers[*index].writable)
            .collect();
        if targets.is_empty() {
            return true;
        }
        self.enqueue(object, targets)
    }

    fn enqueue(&self, object: Verified, targets: Vec<usize>) -> bool {
        let len = u64::try_from(object.object.len()).unwrap_or(u64::MAX);
        let dropped = |targets: &[usize]| {
            for index in targets {
                TierStats::bump(&self.tiers[*index].stats.dropped);
            }
            false
        };
        if self.queued_bytes.fetch_add(len, Ordering::AcqRel) + len > UPLOAD_QUEUE_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return dropped(&targets);
        }
        let sender = lock(&self.sender);
        let Some(sender) = sender.as_ref() else {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return dropped(&targets);
        };
        match sender.try_send(Upload { object, targets }) {
            Ok(()) => true,
            Err(error) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                let upload = match error {
                    mpsc::error::TrySendError::Full(upload)
                    | mpsc::error::TrySendError::Closed(upload) => upload,
                };
                dropped(&upload.targets)
            }
        }
    }

    /// Bytes waiting in the upload queue.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Closes the queue and waits up to `deadline` for what is in it to be written; `true`
    /// if everything was. Later puts are dropped.
    pub async fn flush(&self, deadline: Duration) -> bool {
        drop(lock(&self.sender).take());
        let writer = lock(&self.writer).take();
        match writer {
            Some(writer) => tokio::time::timeout(deadline, writer).await.is_ok(),
            None => true,
        }
    }
}

async fn drain_uploads(
    mut receiver: mpsc::Receiver<Upload>,
    tiers: Vec<Arc<Tier>>,
    queued_bytes: Arc<AtomicU64>,
) {
    let permits = Arc::new(Semaphore::new(UPLOAD_CONCURRENCY));
    let mut running = Vec::new();
    while let Some(upload) = receiver.recv().await {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let tiers = tiers.clone();
        let queued_bytes = Arc::clone(&queued_bytes);
        running.retain(|handle: &JoinHandle<()>| !handle.is_finished());
        running.push(spawn_named("upload", async move {
            let len = u64::try_from(upload.object.object.len()).unwrap_or(u64::MAX);
            for index in &upload.targets {
                write_one(&tiers[*index], &upload.object).await;
            }
            queued_bytes.fetch_sub(len, Ordering::AcqRel);
            drop(permit);
        }));
    }
    for handle in running {
        let _ = handle.await;
    }
}

async fn write_one(tier: &Arc<Tier>, object: &Verified) {
    if tier.health.down_for(Instant::now()).is_some() {
        TierStats::bump(&tier.stats.skipped);
        TierStats::bump(&tier.stats.dropped);
        return;
    }
    let len = u64::try_from(object.object.len()).unwrap_or(u64::MAX);
    match tier
        .store
        .put(object.kind, &object.key, object.object.clone())
        .await
    {
        Ok(()) => {
            tier.health.succeeded();
            TierStats::bump(&tier.stats.writes);
            tier.stats.bytes_written.fetch_add(len, Ordering::Relaxed);
            if let Some(watermark) = &tier.watermark {
                if watermark.wrote(len) {
                    if let Err(error) = watermark.scan(&tier.store, &tier.stats).await {
                        tracing::warn!(error = %error, "size scan failed");
                    }
                }
            }
        }
        Err(error) => {
            TierStats::bump(&tier.stats.write_errors);
            TierStats::bump(&tier.stats.errors);
            // Only a timeout takes the store out: a write refused for its own sake (an
            // object over the server's size limit, say) says nothing about the next one,
            // and lookups notice a store that is really gone.
            if error.is_timeout() {
                TierStats::bump(&tier.stats.timeouts);
                tier.health.failed(Instant::now());
            }
            tracing::warn!(error = %error, "remote write failed");
        }
    }
}

impl crate::DiskStore {
    /// Stores an object fetched from a remote store, already verified for its kind and key
    /// (so it is not decoded again).
    pub fn put_verified(&self, object: &Verified) -> Result<(), crate::StoreError> {
        let (header, body) = object.object.split_at(crate::format::HEADER_LEN);
        self.install(object.kind, &object.key, header, body)
    }
}

impl crate::DiskStore {
    /// Reads the entry for `key` as a [`Verified`] object for uploading: `get_encoded` has
    /// checked it already, so it is not decoded twice. `Ok(None)`: absent or corrupt.
    pub fn get_verified(
        &self,
        kind: Kind,
        key: &Digest,
    ) -> Result<Option<Verified>, crate::StoreError> {
        Ok(self.get_encoded(kind, key)?.map(|encoded| Verified {
            kind,
            key: *key,
            object: Bytes::from(encoded),
        }))
    }
}
