//! The local disk store as a [`Store`], for places that want every store behind one trait
//! (a cluster of disk stores on shared volumes, tests of tiering).
//!
//! The daemon itself reads the disk store synchronously in front of its remote tiers: a
//! local hit must not pay for a hop through the async runtime.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use hpcc_core::digest::Digest;

use super::{RemoteError, Store};
use crate::{DiskStore, Kind};

/// A [`DiskStore`] behind the async [`Store`] trait; file work runs on blocking threads.
#[derive(Debug, Clone)]
pub struct DiskTier {
    name: String,
    store: Arc<DiskStore>,
}

impl DiskTier {
    /// `store` under `name`.
    pub fn new(name: String, store: Arc<DiskStore>) -> DiskTier {
        DiskTier { name, store }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        operation: &'static str,
        key: &Digest,
        work: impl FnOnce(&DiskStore) -> Result<T, crate::StoreError> + Send + 'static,
    ) -> Result<T, RemoteError> {
        let store = Arc::clone(&self.store);
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| RemoteError::Backend {
            store: self.name.clone(),
            operation,
            path: key.to_hex(),
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
        self.blocking("get", key, move |store| {
            Ok(store.get_encoded(kind, &key_copy)?.map(Bytes::from))
        })
        .await
    }

    async fn put(&self, kind: Kind, key: &Digest, object: Bytes) -> Result<(), RemoteError> {
        let key_copy = *key;
        self.blocking("put", key, move |store| {
            store.put_encoded(kind, &key_copy, &object)
        })
        .await
    }

    async fn exists(&self, kind: Kind, key: &Digest) -> Result<bool, RemoteError> {
        Ok(self.get(kind, key).await?.is_some())
    }

    async fn delete(&self, kind: Kind, key: &Digest) -> Result<(), RemoteError> {
        let key_copy = *key;
        self.blocking("delete", key, move |store| store.remove(kind, &key_copy))
            .await
    }
}
