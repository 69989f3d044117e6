//! The local disk store as a [`Store`], for places that want every store behind one trait
//! (a cluster of disk stores on shared volumes, tests of tiering).
//!
//! The daemon itself reads the disk store synchronously in front of its remote tiers: a
//! local hit must not pay for a hop through the async runtime.
//!
//! A namespace is a disk store of its own in `<root>/namespaces/<namespace>/`, opened with
//! the same settings: its entries, accounting and eviction are its own, so `max_size` limits
//! each namespace (a per-tenant cap), and the directory as a whole holds up to that much per
//! namespace. The unscoped store never looks into `namespaces/` (its layout is
//! `manifests/`, `results/` and `size/`), so neither evicts the other's entries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use hpcc_core::digest::Digest;

use super::{check_namespace, RemoteError, Store};
use crate::{DiskStore, Kind};

/// A [`DiskStore`] behind the async [`Store`] trait; file work runs on blocking threads.
#[derive(Debug, Clone)]
pub struct DiskTier {
    name: String,
    store: Arc<DiskStore>,
    /// The unscoped store's root, under which namespaces live.
    base: PathBuf,
}

/// The root of `namespace`'s store under the unscoped root `base`.
fn namespace_root(base: &Path, namespace: &str) -> PathBuf {
    base.join("namespaces").join(namespace)
}

impl DiskTier {
    /// `store` under `name`.
    pub fn new(name: String, store: Arc<DiskStore>) -> DiskTier {
        let base = store.root().to_owned();
        DiskTier { name, store, base }
    }

    /// The store of a checked `namespace`, with this store's settings.
    fn namespace_store(&self, namespace: &str) -> Result<DiskStore, RemoteError> {
        check_namespace(&self.name, namespace)?;
        DiskStore::open(&namespace_root(&self.base, namespace), *self.store.config()).map_err(
            |error| RemoteError::Backend {
                store: self.name.clone(),
                operation: "open namespace",
                path: namespace.to_owned(),
                source: Box::new(error),
            },
        )
    }

    async fn blocking<T: Send + 'static>(
        &self,
        operation: &'static str,
        path: String,
        work: impl FnOnce(&DiskStore) -> Result<T, crate::StoreError> + Send + 'static,
    ) -> Result<T, RemoteError> {
        let store = Arc::clone(&self.store);
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| RemoteError::Backend {
            store: self.name.clone(),
            operation,
            path: path.clone(),
            source,
        };
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(failed(Box::new(error))),
            Err(join) => Err(failed(Box::new(join))),
        }
    }
}

#[async_trait]
impl Store for DiskTier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, kind: Kind, key: &Digest) -> Result<Option<Bytes>, RemoteError> {
        let key_copy = *key;
        self.blocking("get", key.to_hex(), move |store| {
            Ok(store.get_encoded(kind, &key_copy)?.map(Bytes::from))
        })
        .await
    }

    async fn put(&self, kind: Kind, key: &Digest, object: Bytes) -> Result<(), RemoteError> {
        let key_copy = *key;
        self.blocking("put", key.to_hex(), move |store| {
            store.put_encoded(kind, &key_copy, &object)
        })
        .await
    }

    async fn exists(&self, kind: Kind, key: &Digest) -> Result<bool, RemoteError> {
        Ok(self.get(kind, key).await?.is_some())
    }

    async fn delete(&self, kind: Kind, key: &Digest) -> Result<(), RemoteError> {
        let key_copy = *key;
        self.blocking("delete", key.to_hex(), move |store| {
            store.remove(kind, &key_copy)
        })
        .await
    }

    fn scoped(&self, namespace: &str) -> Result<Arc<dyn Store>, RemoteError> {
        Ok(Arc::new(DiskTier {
            name: self.name.clone(),
            store: Arc::new(self.namespace_store(namespace)?),
            base: self.base.clone(),
        }))
    }

    async fn delete_namespace(&self, namespace: &str) -> Result<u64, RemoteError> {
        let store = self.namespace_store(namespace)?;
        let root = store.root().to_owned();
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| RemoteError::Backend {
            store: self.name.clone(),
            operation: "delete namespace",
            path: root.display().to_string(),
            source,
        };
        let dir = root.clone();
        let work = move || -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
            // `clean` counts what it removes and waits for a running eviction; then the
            // accounting and directories go too.
            let removed = store.clean()?.files_removed;
            match std::fs::remove_dir_all(&dir) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(Box::new(error)),
                _ => Ok(removed),
            }
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(removed)) => Ok(removed),
            Ok(Err(error)) => Err(failed(error)),
            Err(join) => Err(failed(Box::new(join))),
        }
    }

    async fn namespace_usage(&self, namespace: &str) -> Result<(u64, u64), RemoteError> {
        let scoped = DiskTier {
            name: self.name.clone(),
            store: Arc::new(self.namespace_store(namespace)?),
            base: self.base.clone(),
        };
        // From the namespace's accounting, like `DiskStore::size`: no directory walk.
        scoped
            .blocking("measure namespace", namespace.to_owned(), |store| {
                Ok((store.entry_count()?, store.size()?))
            })
            .await
    }
}
