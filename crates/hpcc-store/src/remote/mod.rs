//! Remote stores (feature `remote`): the async [`Store`] trait, its backends, clusters of
//! them, and [`Tiers`], the ordered set of stores behind the local cache.
//!
//! Every store holds *encoded entries*: the bytes of a disk-store entry file, whose header
//! carries a checksum keyed with the cache key and kind (see `format`). A store moves them as
//! opaque bytes; [`Tiers`] checks each one it reads with [`crate::verify_encoded`] before it
//! is used or copied, so a corrupted, truncated or misplaced object is a miss, never an input.
//!
//! Namespaces: a store holds unscoped objects at `cache/<m|r>/<2 hex>/<62 hex>` (see
//! [`object_path`]; clients' buckets keep this layout), and [`Store::scoped`] gives a view of
//! the same store (same connections, same cluster ranking) whose objects live under
//! `cache/<namespace>/` instead, so that a worker keeps each tenant's objects apart and can
//! measure ([`Store::namespace_usage`]) and delete ([`Store::delete_namespace`]) one
//! tenant's objects: by listing the prefix in object stores, by `SCAN` on every primary in
//! Redis and Redis Cluster (`redis_keys`), and in a subdirectory of a disk store.
//! Namespace names are checked by [`check_namespace`].
//!
//! Redis Cluster: a `type = "redis"` table with `cluster_endpoints` is one [`OpendalStore`]
//! over OpenDAL's cluster client (the `redis` crate's `ClusterClient`), which learns the slot
//! map from any node, follows `MOVED` (and re-reads the map) and `ASK` (with `ASKING`) while
//! slots move, and retries with a fresh map when a primary dies until its replica takes over,
//! all within the call's deadline; a read during a failover is a hit, or a timeout that
//! [`Tiers`] turns into a clean miss. The tests in `tests/it` check this against six
//! redis-server processes.
//!
//! Failure model: every call has a deadline (retries of idempotent calls included), a body
//! is read up to [`MAX_OBJECT_LEN`] whatever its length header says, and a store that fails or
//! times out is skipped for its cooldown ([`Health`]), so an outage costs one timeout, not
//! one per compile.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use hpcc_core::config::{Backend, RemoteConfig};
use hpcc_core::digest::Digest;

use crate::Kind;

mod backend;
#[cfg(feature = "s3")]
mod bucket;
mod cluster;
mod disk;
mod health;
mod redis_keys;
mod stats;
mod tiers;
mod watermark;

pub use backend::{OpendalStore, Timeouts};
#[cfg(feature = "s3")]
pub use bucket::{create_bucket, create_configured_buckets, Created};
pub use cluster::{rank, Cluster};
pub use disk::DiskTier;
pub use health::Health;
pub use stats::{TierStats, LATENCY_BUCKETS_US};
pub use tiers::{Found, Tier, Tiers, Verified, UPLOAD_QUEUE_BYTES, UPLOAD_QUEUE_ENTRIES};
pub use watermark::{victims, Watermark};

/// The largest object a store read accepts; a longer body is cut off and the read fails.
pub const MAX_OBJECT_LEN: u64 = 1 << 30;

/// One object as listed by [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The object's path in the store.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was written, if the store knows.
    pub modified: Option<SystemTime>,
}

/// A failed store call. A miss is not an error (`Ok(None)`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The call did not finish within its deadline.
    #[error("{store}: {operation} {path} timed out after {after:?}")]
    Timeout {
        /// The store's name.
        store: String,
        /// `get`, `put`, ...
        operation: &'static str,
        /// The object.
        path: String,
        /// The deadline.
        after: Duration,
    },
    /// The backend reported an error.
    #[error("{store}: {operation} {path} failed")]
    Backend {
        /// The store's name.
        store: String,
        /// `get`, `put`, ...
        operation: &'static str,
        /// The object.
        path: String,
        /// What the backend said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A body longer than [`MAX_OBJECT_LEN`].
    #[error("{store}: {path} is longer than {limit} bytes; read cut off")]
    TooLarge {
        /// The store's name.
        store: String,
        /// The object.
        path: String,
        /// The limit.
        limit: u64,
    },
    /// The store cannot do this (listing Redis, say).
    #[error("{store}: cannot {operation}")]
    Unsupported {
        /// The store's name.
        store: String,
        /// What was asked.
        operation: &'static str,
    },
    /// The store is in its cooldown after failing; it was not asked.
    #[error("{store}: skipped for {remaining:?} after a failure")]
    Down {
        /// The store's name.
        store: String,
        /// Time left.
        remaining: Duration,
    },
    /// The configuration cannot make a store.
    #[error("remote store {store}: {message}")]
    Config {
        /// The store's name.
        store: String,
        /// What is wrong.
        message: String,
    },
}

impl RemoteError {
    /// Whether this is a timeout (counted apart from other errors).
    pub fn is_timeout(&self) -> bool {
        matches!(self, RemoteError::Timeout { .. })
    }
}

/// A store of encoded entries, addressed by kind and key.
///
/// Implementations bound every call in time and never return a partial object as a hit.
/// `get` returns `Ok(None)` for a missing object; errors are failures of the store.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The store's name, for statistics, messages and cluster hashing.
    fn name(&self) -> &str;

    /// Reads the object for `key`.
    async fn get(&self, kind: Kind, key: &Digest) -> Result<Option<Bytes>, RemoteError>;

    /// Writes the object for `key`, replacing any other.
    async fn put(&self, kind: Kind, key: &Digest, object: Bytes) -> Result<(), RemoteError>;

    /// Whether an object exists for `key`, without reading it.
    async fn exists(&self, kind: Kind, key: &Digest) -> Result<bool, RemoteError>;

    /// Removes the object for `key`; removing a missing one is not an error.
    async fn delete(&self, kind: Kind, key: &Digest) -> Result<(), RemoteError>;

    /// Every object, with size and write time. Optional: the default is
    /// [`RemoteError::Unsupported`].
    async fn list(&self) -> Result<Vec<Listed>, RemoteError> {
        Err(RemoteError::Unsupported {
            store: self.name().to_owned(),
            operation: "list",
        })
    }

    /// Removes an object by the path [`Store::list`] gave. Optional, like `list`.
    async fn delete_path(&self, path: &str) -> Result<(), RemoteError> {
        let _ = path;
        Err(RemoteError::Unsupported {
            store: self.name().to_owned(),
            operation: "delete by path",
        })
    }

    /// Bytes held, by listing. Optional, like `list`.
    async fn size(&self) -> Result<u64, RemoteError> {
        Ok(self.list().await?.iter().map(|object| object.size).sum())
    }

    /// A view of this store whose objects live under `cache/<namespace>/` (see
    /// [`object_path_in`]), sharing this store's connections, health and name. Scoping a
    /// view gives the view of the other namespace, not a nested one. `Err`
    /// ([`RemoteError::Config`]) names a namespace [`check_namespace`] refuses. Optional: the
    /// default is [`RemoteError::Unsupported`].
    fn scoped(&self, namespace: &str) -> Result<Arc<dyn Store>, RemoteError> {
        check_namespace(self.name(), namespace)?;
        Err(RemoteError::Unsupported {
            store: self.name().to_owned(),
            operation: "keep namespaces",
        })
    }

    /// Removes every object of `namespace` (whichever view it is called on), returning how
    /// many were removed; within the store's listing deadline, so a namespace too large for
    /// it is removed in part, and calling again removes the rest. Optional, like `scoped`.
    async fn delete_namespace(&self, namespace: &str) -> Result<u64, RemoteError> {
        check_namespace(self.name(), namespace)?;
        Err(RemoteError::Unsupported {
            store: self.name().to_owned(),
            operation: "delete a namespace",
        })
    }

    /// The objects of `namespace` and their bytes (whichever view it is called on), within
    /// the store's listing deadline. Optional, like `scoped`.
    async fn namespace_usage(&self, namespace: &str) -> Result<(u64, u64), RemoteError> {
        check_namespace(self.name(), namespace)?;
        Err(RemoteError::Unsupported {
            store: self.name().to_owned(),
            operation: "measure a namespace",
        })
    }
}

/// The longest namespace name.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// Checks a namespace name: 1 to [`MAX_NAMESPACE_LEN`] of `A-Z a-z 0-9 . _ -`, not starting
/// with `.`, and neither `m` nor `r`. The characters keep it one path component in every
/// store and free of glob characters in a Redis `SCAN MATCH`; `m` and `r` are the unscoped
/// layout's kind directories, so `cache/r/` would be every unscoped result, and deleting
/// that namespace would delete them. `Err` ([`RemoteError::Config`] of `store`) names it.
pub fn check_namespace(store: &str, namespace: &str) -> Result<(), RemoteError> {
    let refused = |why: &str| {
        Err(RemoteError::Config {
            store: store.to_owned(),
            message: format!("namespace {namespace:?} {why}"),
        })
    };
    if namespace.is_empty() || namespace.len() > MAX_NAMESPACE_LEN {
        return refused(&format!("must be 1 to {MAX_NAMESPACE_LEN} characters long"));
    }
    if let Some(bad) = namespace
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return refused(&format!(
            "has {bad:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"
        ));
    }
    if namespace.starts_with('.') {
        return refused("starts with '.'");
    }
    if matches!(namespace, "m" | "r") {
        return refused("is taken by the unscoped layout (cache/m/, cache/r/)");
    }
    Ok(())
}

/// The key prefix of a checked namespace's objects: `cache/<namespace>/`.
fn namespace_prefix(store: &str, namespace: &str) -> Result<String, RemoteError> {
    check_namespace(store, namespace)?;
    Ok(format!("cache/{namespace}/"))
}

/// The path of an unscoped object: `cache/<m|r>/<2 hex>/<62 hex>`, so that a bucket can be
/// shared with other data and listed by kind.
pub fn object_path(kind: Kind, key: &Digest) -> String {
    path_under("cache/", kind, key)
}

/// The path of an object in `namespace` (`cache/<namespace>/<m|r>/<2 hex>/<62 hex>`), or
/// unscoped ([`object_path`]) for `None`. `Err` names a namespace [`check_namespace`]
/// refuses.
pub fn object_path_in(
    namespace: Option<&str>,
    kind: Kind,
    key: &Digest,
) -> Result<String, RemoteError> {
    match namespace {
        None => Ok(object_path(kind, key)),
        Some(namespace) => Ok(path_under(&namespace_prefix("", namespace)?, kind, key)),
    }
}

/// `<prefix><m|r>/<2 hex>/<62 hex>`.
fn path_under(prefix: &str, kind: Kind, key: &Digest) -> String {
    let hex = key.to_hex();
    let kind = match kind {
        Kind::Manifest => 'm',
        Kind::Result => 'r',
    };
    format!("{prefix}{kind}/{}/{}", &hex[..2], &hex[2..])
}

/// Makes the store a `[[remote]]` table describes (a cluster with its members).
pub fn open(config: &RemoteConfig) -> Result<Arc<dyn Store>, RemoteError> {
    match &config.backend {
        Backend::Cluster {
            replicas,
            endpoints,
        } => {
            let members = endpoints
                .iter()
                .map(|member| {
                    let store = OpendalStore::open(member)?;
                    Ok((
                        Arc::new(store) as Arc<dyn Store>,
                        Duration::from_secs(member.options.cooldown_secs),
                    ))
                })
                .collect::<Result<Vec<_>, RemoteError>>()?;
            let replicas = usize::try_from(*replicas).unwrap_or(usize::MAX);
            Ok(Arc::new(Cluster::new(
                config.display_name(),
                members,
                replicas,
            )?))
        }
        _ => Ok(Arc::new(OpendalStore::open(config)?)),
    }
}

/// Spawns `future` on the current tokio runtime under `name` (kept in the task's span).
pub(crate) fn spawn_named<F>(name: &'static str, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument;
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(future.instrument(tracing::debug_span!("task", name)))
}

#[cfg(test)]
mod tests;
