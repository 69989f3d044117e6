//! [`OpendalStore`]: a [`Store`] over one Apache OpenDAL operator (S3, GCS, Azure Blob,
//! Redis, memcached, WebDAV, or OpenDAL's in-memory service for tests).
//!
//! OpenDAL supplies the protocol clients and the credential chains; this file supplies what a
//! build needs on top: one deadline per call that covers its retries (OpenDAL's timeout and
//! retry layers time each attempt separately, so three slow attempts could take three
//! deadlines), retries only of idempotent calls on errors OpenDAL marks temporary, and body
//! reads that stop at [`MAX_OBJECT_LEN`] bytes however long the server says the body is.
//! Backoff between attempts starts at 25 ms and grows fourfold, within the call's deadline; all
//! our calls are idempotent, since objects are content-addressed.
//!
//! Why OpenDAL: one maintained library covers every store hpcc offers (S3 and what speaks its
//! API, GCS, Azure Blob, Redis and Redis Cluster, memcached, WebDAV) with the standard
//! credential chains and rustls; sccache made the same choice. The alternatives were a client
//! per service, each with its own retry and timeout model (aws-sdk-s3 alone outweighs every
//! OpenDAL service used here), or hand-written protocols. What OpenDAL lacks is done beside it:
//! creating buckets (`bucket`) and listing Redis keys (`redis_keys`).
//!
//! A scoped view ([`Store::scoped`]) is a clone with another path prefix: OpenDAL's
//! `Operator` is a handle to one shared service and connection pool, so views cost nothing
//! to make. Namespaces are listed with OpenDAL where the service can list, and with
//! `redis_keys` on Redis, which OpenDAL cannot list.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use hpcc_core::config::{Backend, RemoteConfig};
use hpcc_core::digest::Digest;
use opendal::{ErrorKind, Operator};
use tokio::time::Instant;

use super::redis_keys::{self, RedisKeys};
use super::{namespace_prefix, path_under, Listed, RemoteError, Store, MAX_OBJECT_LEN};
use crate::Kind;

/// Deadlines of one store's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `get` and `exists`.
    pub read: Duration,
    /// `put` and `delete`.
    pub write: Duration,
    /// `list`.
    pub list: Duration,
}

/// A store over an OpenDAL operator.
#[derive(Debug, Clone)]
pub struct OpendalStore {
    name: String,
    operator: Operator,
    timeouts: Timeouts,
    retries: u32,
    max_object_len: u64,
    /// Where objects live: `cache/`, or `cache/<namespace>/` in a scoped view.
    prefix: String,
    /// How to list keys, for a Redis store (OpenDAL's Redis service cannot).
    redis: Option<Arc<RedisKeys>>,
}

/// The first pause between attempts; each further one is four times longer.
const FIRST_BACKOFF: Duration = Duration::from_millis(25);

impl OpendalStore {
    /// Wraps `operator` (tests use OpenDAL's memory service). A store made this way lists
    /// namespaces only where the service can list; a Redis store that can measure and delete
    /// namespaces comes from [`OpendalStore::open`].
    pub fn new(name: String, operator: Operator, timeouts: Timeouts, retries: u32) -> OpendalStore {
        // HTTP services need OpenDAL's process-wide transport; installing it twice is a no-op.
        opendal::install_default();
        OpendalStore {
            name,
            operator,
            timeouts,
            retries,
            max_object_len: MAX_OBJECT_LEN,
            prefix: "cache/".into(),
            redis: None,
        }
    }

    /// Lowers the body cap below [`MAX_OBJECT_LEN`] (tests use a small one).
    pub fn with_max_object_len(mut self, max_object_len: u64) -> OpendalStore {
        self.max_object_len = max_object_len.min(MAX_OBJECT_LEN);
        self
    }

    /// Builds the store a `[[remote]]` table describes; nothing is contacted yet.
    pub fn open(config: &RemoteConfig) -> Result<OpendalStore, RemoteError> {
        opendal::install_default();
        let name = config.display_name();
        let config_error = |message: String| RemoteError::Config {
            store: name.clone(),
            message,
        };
        let built = |result: opendal::Result<Operator>| {
            result.map_err(|error| config_error(format!("{error}")))
        };
        let mut redis = None;
        let operator = match &config.backend {
            Backend::Redis {
                endpoint,
                cluster_endpoints,
                db,
                username,
                password,
            } => {
                let mut builder = match endpoint {
                    Some(endpoint) => opendal::services::Redis::default().endpoint(endpoint),
                    // OpenDAL's cluster client (the `redis` crate's) learns the cluster from
                    // these nodes, follows MOVED and ASK, and re-reads the slots after errors.
                    None => opendal::services::Redis::default()
                        .cluster_endpoints(&cluster_endpoints.join(",")),
                }
                .db(*db);
                if let Some(username) = username {
                    builder = builder.username(username);
                }
                if let Some(password) = password {
                    builder = builder.password(password);
                }
                redis = Some(Arc::new(
                    RedisKeys::new(
                        endpoint.as_deref(),
                        cluster_endpoints,
                        *db,
                        username.as_deref(),
                        password.as_deref(),
                    )
                    .map_err(config_error)?,
                ));
                built(Operator::new(builder))?
            }
            Backend::Memcached { endpoint } => {
                let builder = opendal::services::Memcached::default().endpoint(endpoint);
                built(Operator::new(builder))?
            }
            Backend::Webdav {
                endpoint,
                username,
                password,
            } => {
                let mut builder = opendal::services::Webdav::default().endpoint(endpoint);
                if let Some(username) = username {
                    builder = builder.username(username);
                }
                if let Some(password) = password {
                    builder = builder.password(password);
                }
                built(Operator::new(builder))?
            }
            #[cfg(feature = "s3")]
            Backend::S3 {
                bucket,
                endpoint,
                region,
                root,
                auto_create: _,
                virtual_host_style,
            } => {
                let mut builder = opendal::services::S3::default().bucket(bucket);
                if let Some(endpoint) = endpoint {
                    builder = builder.endpoint(endpoint);
                }
                // The AWS chain may not name a region; S3-compatible servers accept any.
                builder = builder.region(region.as_deref().unwrap_or("us-east-1"));
                if let Some(root) = root {
                    builder = builder.root(root);
                }
                if *virtual_host_style {
                    builder = builder.enable_virtual_host_style();
                }
                built(Operator::new(builder))?
            }
            #[cfg(feature = "s3")]
            Backend::Gcs { bucket, endpoint } => {
                let mut builder = opendal::services::Gcs::default().bucket(bucket);
                if let Some(endpoint) = endpoint {
                    builder = builder.endpoint(endpoint);
                }
                built(Operator::new(builder))?
            }
            #[cfg(feature = "s3")]
            Backend::Azblob {
                container,
                endpoint,
            } => {
                let builder = opendal::services::Azblob::default()
                    .container(container)
                    .endpoint(endpoint);
                built(Operator::new(builder))?
            }
            #[cfg(not(feature = "s3"))]
            Backend::S3 { .. } | Backend::Gcs { .. } | Backend::Azblob { .. } => {
                return Err(config_error(
                    "this build has no object-store backends (feature `s3`)".into(),
                ))
            }
            Backend::Cluster { .. } => {
                return Err(config_error("a cluster is not a single store".into()))
            }
        };
        let mut store = OpendalStore::new(
            name,
            operator,
            Timeouts {
                read: Duration::from_millis(config.options.read_timeout_ms),
                write: Duration::from_millis(config.options.write_timeout_ms),
                list: Duration::from_millis(config.options.list_timeout_ms),
            },
            config.options.retries,
        );
        store.redis = redis;
        Ok(store)
    }

    /// Where `key`'s object lives in this view.
    fn path(&self, kind: Kind, key: &Digest) -> String {
        path_under(&self.prefix, kind, key)
    }

    /// Fails with [`RemoteError::Unsupported`] unless the service can list.
    fn require_list(&self, operation: &'static str) -> Result<(), RemoteError> {
        if self.operator.info().capability().list {
            Ok(())
        } else {
            Err(RemoteError::Unsupported {
                store: self.name.clone(),
                operation,
            })
        }
    }

    /// Every object under `prefix`.
    async fn list_prefix(&self, prefix: &str) -> opendal::Result<Vec<Listed>> {
        let mut lister = self.operator.lister_with(prefix).recursive(true).await?;
        let mut listed = Vec::new();
        while let Some(entry) = lister.try_next().await? {
            let metadata = entry.metadata();
            if !metadata.is_file() {
                continue;
            }
            listed.push(Listed {
                path: entry.path().to_owned(),
                size: metadata.content_length(),
                modified: metadata.last_modified().map(Into::into),
            });
        }
        Ok(listed)
    }

    /// Measures or deletes the keys of a namespace prefix in Redis, within the listing
    /// deadline; totals survive retries, so a retried deletion still counts what the failed
    /// attempt removed.
    async fn redis_namespace(
        &self,
        redis: &RedisKeys,
        prefix: &str,
        action: redis_keys::Action,
    ) -> Result<(u64, u64), RemoteError> {
        let totals = redis_keys::Totals::default();
        let operation = match action {
            redis_keys::Action::Measure => "measure namespace",
            redis_keys::Action::Delete => "delete namespace",
        };
        self.call(operation, prefix, self.timeouts.list, true, || async {
            redis
                .apply(prefix, action, &totals)
                .await
                .map_err(CallError::Other)
        })
        .await?;
        Ok((
            totals.objects.load(Ordering::Relaxed),
            totals.bytes.load(Ordering::Relaxed),
        ))
    }

    /// The operator, for tests that need to reach behind the store.
    pub fn operator(&self) -> &Operator {
        &self.operator
    }

    /// Runs `attempt` until it succeeds, fails for good, or `timeout` passes. Only an
    /// `idempotent` call is retried, and only after an error OpenDAL marks temporary.
    async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        path: &str,
        timeout: Duration,
        idempotent: bool,
        mut attempt: F,
    ) -> Result<T, RemoteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let deadline = Instant::now() + timeout;
        let timed_out = || RemoteError::Timeout {
            store: self.name.clone(),
            operation,
            path: path.to_owned(),
            after: timeout,
        };
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            let (temporary, source): (bool, Box<dyn std::error::Error + Send + Sync>) =
                match tokio::time::timeout_at(deadline, attempt()).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(CallError::TooLarge)) => {
                        return Err(RemoteError::TooLarge {
                            store: self.name.clone(),
                            path: path.to_owned(),
                            limit: self.max_object_len,
                        })
                    }
                    Ok(Err(CallError::Backend(error))) => (error.is_temporary(), Box::new(error)),
                    // Errors of the `redis` crate: a connection lost, a cluster mid-failover;
                    // OpenDAL marks every Redis error temporary too.
                    Ok(Err(CallError::Other(error))) => (true, error),
                };
            let retry = idempotent && temporary && tries < self.retries;
            if !retry {
                return Err(RemoteError::Backend {
                    store: self.name.clone(),
                    operation,
                    path: path.to_owned(),
                    source,
                });
            }
            tries += 1;
            if Instant::now() + backoff >= deadline {
                return Err(timed_out());
            }
            tokio::time::sleep(backoff).await;
            backoff *= 4;
        }
    }
}

/// What one attempt can end in besides success.
enum CallError {
    Backend(opendal::Error),
    /// A failure outside OpenDAL (the `redis` crate's), retried as temporary.
    Other(Box<dyn std::error::Error + Send + Sync>),
    TooLarge,
}

impl From<opendal::Error> for CallError {
    fn from(error: opendal::Error) -> CallError {
        CallError::Backend(error)
    }
}

/// Reads the whole object at `path`, at most `max_object_len` bytes whatever the server's
/// length header says; `None` if absent.
async fn read_bounded(
    operator: &Operator,
    path: &str,
    max_object_len: u64,
) -> Result<Option<Bytes>, CallError> {
    let reader = match operator.reader(path).await {
        Ok(reader) => reader,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let mut stream = match reader.into_stream(..).await {
        Ok(stream) => stream,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let mut body = Vec::new();
    loop {
        let chunk = match stream.try_next().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            // Services that read lazily report a missing object with the first chunk.
            Err(error) if error.kind() == ErrorKind::NotFound && body.is_empty() => {
                return Ok(None)
            }
            Err(error) => return Err(error.into()),
        };
        let new_len = u64::try_from(body.len().saturating_add(chunk.len())).unwrap_or(u64::MAX);
        if new_len > max_object_len {
            return Err(CallError::TooLarge);
        }
        for piece in chunk {
            body.extend_from_slice(&piece);
        }
    }
    Ok(Some(Bytes::from(body)))
}

#[async_trait]
impl Store for OpendalStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, kind: Kind, key: &Digest) -> Result<Option<Bytes>, RemoteError> {
        let path = self.path(kind, key);
        self.call("get", &path, self.timeouts.read, true, || {
            read_bounded(&self.operator, &path, self.max_object_len)
        })
        .await
    }

    async fn put(&self, kind: Kind, key: &Digest, object: Bytes) -> Result<(), RemoteError> {
        let path = self.path(kind, key);
        // Idempotent: the same key always gets a valid entry for it, and a retry rewrites one.
        self.call("put", &path, self.timeouts.write, true, || {
            let object = object.clone();
            let path = path.clone();
            async move {
                self.operator.write(&path, object).await?;
                Ok(())
            }
        })
        .await
    }

    async fn exists(&self, kind: Kind, key: &Digest) -> Result<bool, RemoteError> {
        let path = self.path(kind, key);
        self.call("exists", &path, self.timeouts.read, true, || async {
            Ok(self.operator.exists(&path).await?)
        })
        .await
    }

    async fn delete(&self, kind: Kind, key: &Digest) -> Result<(), RemoteError> {
        let path = self.path(kind, key);
        self.delete_path(&path).await
    }

    async fn delete_path(&self, path: &str) -> Result<(), RemoteError> {
        self.call("delete", path, self.timeouts.write, true, || async {
            match self.operator.delete(path).await {
                Err(error) if error.kind() != ErrorKind::NotFound => Err(error.into()),
                _ => Ok(()),
            }
        })
        .await
    }

    /// Lists this view's prefix: an unscoped store lists all of `cache/`, namespaces
    /// included (its size limit covers the whole store); a scoped view only its namespace.
    async fn list(&self) -> Result<Vec<Listed>, RemoteError> {
        self.require_list("list")?;
        // A listing is a read: retried whole.
        self.call("list", &self.prefix, self.timeouts.list, true, || async {
            Ok(self.list_prefix(&self.prefix).await?)
        })
        .await
    }

    fn scoped(&self, namespace: &str) -> Result<Arc<dyn Store>, RemoteError> {
        let mut view = self.clone();
        view.prefix = namespace_prefix(&self.name, namespace)?;
        Ok(Arc::new(view))
    }

    async fn delete_namespace(&self, namespace: &str) -> Result<u64, RemoteError> {
        let prefix = namespace_prefix(&self.name, namespace)?;
        if let Some(redis) = &self.redis {
            let (removed, _) = self
                .redis_namespace(redis, &prefix, redis_keys::Action::Delete)
                .await?;
            return Ok(removed);
        }
        self.require_list("delete a namespace")?;
        let removed = AtomicU64::new(0);
        // Listed, then deleted in batches (one request each where the service deletes in
        // batches, as S3 does); counted as batches complete, so a retry counts only the rest.
        self.call(
            "delete namespace",
            &prefix,
            self.timeouts.list,
            true,
            || async {
                let listed = self.list_prefix(&prefix).await?;
                for batch in listed.chunks(1_000) {
                    let paths: Vec<String> =
                        batch.iter().map(|object| object.path.clone()).collect();
                    self.operator.delete_iter(paths).await?;
                    removed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Ok(())
            },
        )
        .await?;
        Ok(removed.load(Ordering::Relaxed))
    }

    async fn namespace_usage(&self, namespace: &str) -> Result<(u64, u64), RemoteError> {
        let prefix = namespace_prefix(&self.name, namespace)?;
        if let Some(redis) = &self.redis {
            return self
                .redis_namespace(redis, &prefix, redis_keys::Action::Measure)
                .await;
        }
        self.require_list("measure a namespace")?;
        let listed = self
            .call(
                "measure namespace",
                &prefix,
                self.timeouts.list,
                true,
                || async { Ok(self.list_prefix(&prefix).await?) },
            )
            .await?;
        Ok((
            listed.len() as u64,
            listed.iter().map(|object| object.size).sum(),
        ))
    }
}
