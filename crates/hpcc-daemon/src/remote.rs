//! The daemon's remote tiers: a tokio runtime for the async stores, and the two points where
//! the synchronous lookup code meets them.
//!
//! - [`Remote::fetch_into`] (the [`RemoteFallback`] a lookup calls after a local miss) asks
//!   the tiers in order and copies a verified hit into the local disk store, so the lookup
//!   carries on exactly as after a local hit.
//! - [`Remote::upload`], after a wrapper has stored a compile, queues its entries for every
//!   writable tier and returns at once.
//! - [`Remote::drain_journal`] does the same for the entries wrappers stored without the daemon
//!   (before it was up, or when it could not serve), which they list in the cache's upload
//!   journal ([`hpcc_cache::upload_journal`]): the daemon drains it on its housekeeping thread
//!   when it starts, every second, and once more when it stops, before the final flush. So no
//!   entry made while remote tiers are configured stays local only, whichever process made it.
//!
//! Lookups run on the connection threads, which block on the runtime for the remote call;
//! uploads and backfills run on the runtime's own two threads.
//!
//! A remote store is never on the path of a local hit: the tiers are asked only after the
//! memory tier and the disk missed (or held a corrupt entry). A remote fault is never more than
//! a miss: every call has a deadline, and a store that failed sits out its cooldown.
//!
//! A stored compile is queued result first, then its manifest. Manifests written by several
//! machines under one key are last-writer-wins: each machine adds its entry to the manifest it
//! fetched, so an entry lost to a concurrent write costs one miss.

use std::time::Duration;

use anyhow::{Context, Result};
use hpcc_cache::cache::RemoteFallback;
use hpcc_cache::upload_journal;
use hpcc_core::config::RemoteConfig;
use hpcc_core::digest::Digest;
use hpcc_store::remote::{self, Created, Found, Tier, Tiers};
use hpcc_store::{DiskStore, Kind};

/// The remote tiers and the runtime they run on.
pub struct Remote {
    runtime: tokio::runtime::Runtime,
    tiers: Tiers,
    /// Each tier's name as it appears in statistics.
    stats_names: Vec<String>,
}

impl Remote {
    /// Opens the configured stores (contacting none yet); `None` if there are none.
    pub fn start(configs: &[RemoteConfig]) -> Result<Option<Remote>> {
        if configs.is_empty() {
            return Ok(None);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("remote")
            .enable_all()
            .build()
            .context("starting the remote-store runtime")?;
        let mut tiers = Vec::new();
        let mut stats_names = Vec::new();
        for config in configs {
            runtime.block_on(create_buckets(config));
            let store = remote::open(config)?;
            stats_names.push(stats_name(&config.display_name()));
            tiers.push(Tier::new(
                store,
                Duration::from_secs(config.options.cooldown_secs),
                !config.options.read_only,
                config.options.max_size.map(|size| size.0),
            ));
        }
        let tiers = {
            let _entered = runtime.enter();
            Tiers::new(tiers)
        };
        Ok(Some(Remote {
            runtime,
            tiers,
            stats_names,
        }))
    }

    /// Queues the entry `store` holds for `key` for every writable tier.
    pub fn upload(&self, store: &DiskStore, kind: Kind, key: &Digest) {
        if let Ok(Some(object)) = store.get_verified(kind, key) {
            self.tiers.put(object);
        }
    }

    /// Queues for upload every entry wrappers stored by themselves and journaled (see
    /// [`hpcc_cache::upload_journal`]); entries no longer in `store` are skipped.
    pub fn drain_journal(&self, store: &DiskStore, cache_dir: &std::path::Path) {
        match upload_journal::drain(cache_dir, |kind, key| self.upload(store, kind, &key)) {
            Ok(0) => {}
            Ok(count) => tracing::info!("queued {count} journaled entries for upload"),
            Err(error) => tracing::warn!("cannot drain the upload journal: {error:#}"),
        }
    }

    /// Takes every tier's counters as `remote.<tier>.<counter>` statistics.
    pub fn drain_stats(&self) -> Vec<(String, u64)> {
        let mut drained = Vec::new();
        for (tier, name) in self.tiers.tiers().iter().zip(&self.stats_names) {
            for (counter, value) in tier.stats.drain() {
                drained.push((format!("remote.{name}.{counter}"), value));
            }
        }
        drained
    }

    /// Writes what is queued, for at most `deadline`; `false` if some was left.
    pub fn flush(&self, deadline: Duration) -> bool {
        self.runtime.block_on(self.tiers.flush(deadline))
    }

    /// Bytes waiting to be uploaded.
    pub fn queued_bytes(&self) -> u64 {
        self.tiers.queued_bytes()
    }
}

impl RemoteFallback for Remote {
    fn fetch_into(&self, store: &DiskStore, kind: Kind, key: &Digest) -> bool {
        match self.runtime.block_on(self.tiers.get(kind, key)) {
            Found::Hit { object, .. } => match store.put_verified(&object) {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(error = %error, "cannot copy a remote hit into the local cache");
                    false
                }
            },
            Found::Miss { .. } => false,
        }
    }
}

/// Creates the buckets of `config`'s S3 stores with `auto_create`; failures are said and the
/// store used as it is (its calls then fail and are counted).
async fn create_buckets(config: &RemoteConfig) {
    for (bucket, outcome) in remote::create_configured_buckets(config).await {
        match outcome {
            Ok(Created::Made) => eprintln!(
                "hpcc daemon: created bucket {bucket} ({})",
                config.display_name()
            ),
            Ok(Created::Existed) => {}
            Err(error) => eprintln!("hpcc daemon: {error}"),
        }
    }
}

/// A tier name usable in the stats files (`name count` lines): no spaces, no line breaks.
fn stats_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}
