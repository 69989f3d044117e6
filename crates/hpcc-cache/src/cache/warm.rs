//! What a daemon lends a lookup ([`Warm`]), kept between compiles:
//!
//! - its [`HotFiles`]: files and absences known unchanged without a `stat`;
//! - its [`MemoryTier`]: verified payloads in memory in front of the disk store;
//! - its [`ManifestCache`]: manifests decoded once, with every entry's paths resolved ahead for
//!   the current project root and the digests of its absent-name sets computed; each is valid for
//!   the exact payload allocation the memory tier hands out, so a rewritten manifest is decoded
//!   again (in-process, paths are resolved entry by entry during the lookup instead);
//! - the [`RemoteFallback`] the daemon implements over its remote tiers, asked after a local miss
//!   or a corrupt local entry. This crate knows no remote store, so the wrapper links none.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hpcc_core::digest::Digest;
use hpcc_core::manifest::Manifest;
use hpcc_store::{DiskStore, Kind, MemoryTier};

use crate::hot::HotFiles;
use crate::includes;

/// What a daemon keeps between lookups: files known unchanged, payloads in memory, decoded
/// manifests.
#[derive(Clone, Copy)]
pub struct Warm<'a> {
    /// Files and absences known without a `stat`.
    pub hot: &'a HotFiles,
    /// Verified payloads.
    pub memory: &'a MemoryTier,
    /// Decoded manifests with their paths resolved.
    pub manifests: &'a ManifestCache,
    /// Remote stores behind the local one, if any are configured.
    pub remote: Option<&'a dyn RemoteFallback>,
}

/// Stores behind the local cache, which a daemon asks after a local miss. This crate knows
/// no remote store: the daemon (`hpcc-daemon`) implements it, so the wrapper links none.
pub trait RemoteFallback: Sync {
    /// Looks `key` up behind `store`; on a hit, copies the verified entry into `store` and
    /// returns `true`. Never fails: any fault of a remote store is a miss.
    fn fetch_into(&self, store: &DiskStore, kind: Kind, key: &Digest) -> bool;
}

/// A decoded manifest; in the daemon (`hot`), with every entry's paths resolved for one
/// project root ahead of time, since it is kept and reused. In-process, paths are resolved
/// entry by entry during the lookup, which usually stops at the first entry.
pub struct PreparedManifest {
    pub(super) manifest: Manifest,
    root: Option<PathBuf>,
    /// Per entry, or empty when resolved during the lookup.
    pub(super) paths: Vec<includes::EntryPaths>,
}

impl PreparedManifest {
    pub(super) fn new(manifest: Manifest, root: Option<&Path>, hot: bool) -> PreparedManifest {
        let paths = if hot {
            manifest
                .entries
                .iter()
                .map(|entry| includes::EntryPaths::resolve(entry, root, true))
                .collect()
        } else {
            Vec::new()
        };
        PreparedManifest {
            manifest,
            root: root.map(Path::to_path_buf),
            paths,
        }
    }
}

/// The daemon's decoded manifests, each valid for the exact payload it was decoded from (the
/// memory tier hands out the same allocation until the file changes) and the root its paths
/// were resolved against.
#[derive(Default)]
pub struct ManifestCache {
    entries: std::sync::Mutex<HashMap<Digest, DecodedFrom>>,
}

/// A decoded manifest and the payload it came from.
type DecodedFrom = (Arc<Vec<u8>>, Arc<PreparedManifest>);

/// Decoded manifests kept at most; past it the cache starts over.
const MANIFEST_CACHE_ENTRIES: usize = 8192;

impl ManifestCache {
    pub(super) fn get(
        &self,
        key: &Digest,
        payload: &Arc<Vec<u8>>,
        root: Option<&Path>,
    ) -> Option<Arc<PreparedManifest>> {
        let entries = self.entries.lock().ok()?;
        let (decoded_from, prepared) = entries.get(key)?;
        (Arc::ptr_eq(decoded_from, payload) && prepared.root.as_deref() == root)
            .then(|| Arc::clone(prepared))
    }

    pub(super) fn insert(
        &self,
        key: Digest,
        payload: &Arc<Vec<u8>>,
        prepared: &Arc<PreparedManifest>,
    ) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MANIFEST_CACHE_ENTRIES {
                entries.clear();
            }
            entries.insert(key, (Arc::clone(payload), Arc::clone(prepared)));
        }
    }
}
