//! The daemon's remote tiers: a tokio runtime for the async stores, and the two points where
//! the synchronous lookup code meets them.
//!
//! - [`Remote::fetch_into`] (the [`RemoteFallback`] a lookup calls after a local miss) asks
//!   the tiers in order and copies a verified hit into the local disk store, so the lookup
//!   carries on exactly as after a local hit.
//! - [`Remote::upload`], after a wrapper has stored a compile, queues its entries for every
//!   writable tier and returns at once.
//!
//! Lookups run on the connection threads, which block on the runtime for the remote call;
//! uploads and backfills run on the runtime's own two threads.

use std::time::Duration;

use anyhow::{Context, Result};
use hpcc_cli::cache::RemoteFallback;
use hpcc_core::config::{Backend, RemoteConfig};
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
            for store in buckets_to_create(config) {
                runtime.block_on(create_bucket(store));
            }
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

/// The S3 stores of `config` (itself, or a cluster's members) that have `auto_create`.
fn buckets_to_create(config: &RemoteConfig) -> Vec<&RemoteConfig> {
    match &config.backend {
        Backend::S3 {
            auto_create: true, ..
        } => vec![config],
        Backend::Cluster { endpoints, .. } => {
            endpoints.iter().flat_map(buckets_to_create).collect()
        }
        _ => Vec::new(),
    }
}

/// Creates the bucket of an S3 store with `auto_create`, before anything is written to it.
/// A failure is logged and the store used as it is: its calls then fail and are counted.
async fn create_bucket(config: &RemoteConfig) {
    let Backend::S3 {
        bucket,
        endpoint,
        region,
        virtual_host_style,
        ..
    } = &config.backend
    else {
        return;
    };
    let name = config.display_name();
    let region = region.as_deref().unwrap_or("us-east-1");
    let timeout = Duration::from_millis(config.options.write_timeout_ms);
    match remote::create_bucket(
        &name,
        endpoint.as_deref(),
        bucket,
        region,
        *virtual_host_style,
        timeout,
    )
    .await
    {
        Ok(Created::Made) => eprintln!("hpcc daemon: created bucket {bucket} ({name})"),
        Ok(Created::Existed) => {}
        Err(error) => eprintln!("hpcc daemon: {error}"),
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
