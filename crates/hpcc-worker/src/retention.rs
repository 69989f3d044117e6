//! A tenant's data on a worker, listed and deleted (`hpcc-worker tenants` and
//! `hpcc-worker delete-tenant`): what a tenant leaving the service, or an operator answering
//! a retention request, needs.
//!
//! A tenant's data is its cache namespace (`tenant-<id>`: on the local disk and in every
//! `[[cache.remote]]` tier), its kept sources (`<state_dir>/sources/<id>/`) and its session
//! snapshots. A sharing group's namespace (`group-<name>`) holds several tenants' objects, so
//! it is deleted only when named (`--namespace`). The audit log is not touched: its rows are
//! the record of what ran, and carry digests, not sources.
//!
//! These run beside a serving worker, on the same state directory: deleted entries are
//! misses from then on, and a snapshot is unlinked whole.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use hpcc_core::config::WorkerConfig;

use crate::cache::{valid_namespace, WorkerCache};
use crate::snapshots::SnapshotStore;
use crate::sources::SourceStore;

/// Why a listing or deletion failed; the message names what.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RetentionError(String);

fn failed(what: &str) -> impl Fn(&dyn std::fmt::Display) -> RetentionError + '_ {
    move |error| RetentionError(format!("{what}: {error}"))
}

/// The stores of one worker's state directory.
struct Stores {
    cache: WorkerCache,
    sources: SourceStore,
    snapshots: Option<SnapshotStore>,
}

fn open(config: &WorkerConfig) -> Result<Stores, RetentionError> {
    let cache = WorkerCache::open(&config.state_dir.join("cache"), &config.cache)
        .map_err(|error| failed("the worker cache")(&error))?;
    let sources = SourceStore::open(
        &config.state_dir.join("sources"),
        config.audit_source_retention,
    )
    .map_err(|error| failed("the kept sources")(&error))?;
    let snapshot_dir: PathBuf = config
        .snapshot_dir
        .clone()
        .unwrap_or_else(|| config.state_dir.join("snapshots"));
    let snapshots = if snapshot_dir.is_dir() {
        Some(
            SnapshotStore::open(
                &snapshot_dir,
                Duration::from_secs(config.snapshot_ttl_secs),
                config.snapshot_max_bytes,
            )
            .map_err(|error| failed("the snapshots")(&error))?,
        )
    } else {
        None
    };
    Ok(Stores {
        cache,
        sources,
        snapshots,
    })
}

/// Every tenant and namespace with data on this worker, and what each holds in each tier:
/// the text `hpcc-worker tenants` prints.
pub async fn list(config: &WorkerConfig) -> Result<String, RetentionError> {
    let stores = open(config)?;
    let local = stores
        .cache
        .local_usage()
        .map_err(|error| failed("the worker cache")(&error))?;
    let mut out = String::new();
    for usage in &local {
        let _ = writeln!(
            out,
            "namespace {}: local cache {} entries, {} bytes",
            usage.namespace, usage.entries, usage.bytes
        );
        let remote = stores
            .cache
            .remote_usage(&usage.namespace)
            .await
            .map_err(|error| failed("a remote cache tier")(&error))?;
        for (store, objects, bytes) in remote {
            let _ = writeln!(
                out,
                "namespace {}: {store}: {objects} objects, {bytes} bytes",
                usage.namespace
            );
        }
    }
    for (tenant, count, bytes) in stores.sources.usage() {
        let _ = writeln!(out, "tenant {tenant}: kept sources {count}, {bytes} bytes");
    }
    if let Some(snapshots) = &stores.snapshots {
        for (tenant, count, bytes) in snapshots.usage() {
            let _ = writeln!(out, "tenant {tenant}: snapshots {count}, {bytes} bytes");
        }
    }
    if out.is_empty() {
        out.push_str("no tenant data on this worker\n");
    }
    Ok(out)
}

/// Deletes `tenant`'s data from every tier, and each of `namespaces` (sharing groups'
/// namespaces, which only an explicit name deletes): the text `hpcc-worker delete-tenant`
/// prints, a line per tier.
pub async fn delete(
    config: &WorkerConfig,
    tenant: &str,
    namespaces: &[String],
) -> Result<String, RetentionError> {
    if !hpcc_core::config::is_safe_name(tenant) {
        return Err(RetentionError(format!(
            "{tenant:?} is not a tenant id (1 to {} of A-Z a-z 0-9 . _ -)",
            hpcc_core::config::MAX_NAME_LEN
        )));
    }
    if let Some(bad) = namespaces.iter().find(|name| !valid_namespace(name)) {
        return Err(RetentionError(format!(
            "{bad:?} is not a namespace (tenant-<id> or group-<name>)"
        )));
    }
    let stores = open(config)?;
    let mut out = String::new();
    let mut all = vec![hpcc_core::config::tenant_namespace(tenant)];
    all.extend(namespaces.iter().cloned());
    for namespace in &all {
        let deleted = stores
            .cache
            .delete_namespace(namespace)
            .await
            .map_err(|error| failed(namespace)(&error))?;
        let _ = writeln!(
            out,
            "namespace {namespace}: local cache {} entries, {} bytes deleted",
            deleted.local_entries, deleted.local_bytes
        );
        for (store, objects) in deleted.remote {
            let _ = writeln!(
                out,
                "namespace {namespace}: {store}: {objects} objects deleted"
            );
        }
    }
    let (count, bytes) = stores
        .sources
        .delete_tenant(tenant)
        .map_err(|error| failed("the kept sources")(&error))?;
    let _ = writeln!(
        out,
        "tenant {tenant}: kept sources {count}, {bytes} bytes deleted"
    );
    if let Some(snapshots) = &stores.snapshots {
        let (count, bytes) = snapshots.delete_tenant(tenant);
        let _ = writeln!(
            out,
            "tenant {tenant}: snapshots {count}, {bytes} bytes deleted"
        );
    }
    Ok(out)
}
