//! The image store: verified blobs in an OCI layout, and the rootfs cache built from them.
//!
//! Layout of the store directory:
//!
//! ```text
//! <root>/oci-layout                    {"imageLayoutVersion": "1.0.0"}
//! <root>/blobs/sha256/<hex>            every blob, named by the digest of its content
//! <root>/rootfs/<hex>/rootfs/          the flattened tree of image <hex>
//! <root>/rootfs/<hex>/size             its decompressed size in bytes (decimal)
//! <root>/rootfs/<hex>/last-used        empty; its mtime is the time of last use
//! <root>/tmp/                          staging for blobs and trees, same file system
//! ```
//!
//! **Invariant:** a file under `blobs/` has been hashed and matches its name; it got there by
//! rename from `tmp/`. Blobs are hashed again whenever they are read, so a file corrupted on
//! disk is reported as a mismatch, never used.
//!
//! **Invariant:** `rootfs/<hex>` exists only complete: it is built under `tmp/` and renamed
//! into place, so any number of processes may ask for the same image at once; one rename
//! wins and the others discard their copy and use the winner's. Within a process (one store
//! and its clones), an image is flattened once however many threads ask for it at once
//! ([`crate::flight`]): the others wait for that flattening and get its tree, or its failure;
//! a later request after a failure tries again. Eviction renames an entry
//! back into `tmp/` before deleting it, so a reader sees a whole tree or none.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::instrument;

use crate::digest::{BlobDigest, HashingWriter, ImageDigest, VerifyingReader};
use crate::flatten::{Compression, FlattenError, FlattenLimits, Flattener};
use crate::flight::{FlightError, SingleFlight};
use crate::oci::{self, Described};

/// JSON documents (manifests, indexes, configs) are read into memory up to this size.
pub const MAX_JSON_BYTES: u64 = 4 << 20;

/// Caps and budgets of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Caps on flattening one image.
    pub flatten: FlattenLimits,
    /// Size of one blob as stored (compressed).
    pub max_blob_bytes: u64,
    /// Flattened trees are evicted, least recently used first, to stay within this many
    /// (decompressed) bytes. The tree just built or used is never evicted.
    pub cache_budget_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            flatten: FlattenLimits::default(),
            max_blob_bytes: 8 << 30,
            cache_budget_bytes: 64 << 30,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A store directory could not be created.
    #[error("cannot create store directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A blob the image needs is not in the store.
    #[error("blob {digest} is not in the store")]
    MissingBlob {
        /// The blob.
        digest: BlobDigest,
    },
    /// A blob could not be read.
    #[error("cannot read blob {digest}")]
    ReadBlob {
        /// The blob.
        digest: BlobDigest,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A blob's content does not hash to its digest.
    #[error("blob {expected} hashes to {actual}")]
    BlobMismatch {
        /// The digest it was read by.
        expected: BlobDigest,
        /// The digest of its content.
        actual: BlobDigest,
    },
    /// A blob's length differs from the size its descriptor declares.
    #[error("blob {digest} has {actual} bytes, its descriptor says {declared}")]
    SizeMismatch {
        /// The blob.
        digest: BlobDigest,
        /// The size in the descriptor.
        declared: u64,
        /// The length read (up to one byte past the declared size).
        actual: u64,
    },
    /// A blob is larger than [`Limits::max_blob_bytes`], or a JSON document than
    /// [`MAX_JSON_BYTES`].
    #[error("blob {digest} is larger than the cap of {limit} bytes")]
    BlobTooLarge {
        /// The blob, or `being imported` while it has no name yet.
        digest: String,
        /// The cap.
        limit: u64,
    },
    /// A blob could not be written into the store.
    #[error("cannot write blob into {path}")]
    WriteBlob {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A manifest, index or config is not valid JSON of its kind.
    #[error("blob {digest} is not a valid image manifest, index or config")]
    ParseJson {
        /// The blob.
        digest: BlobDigest,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// An index has no single manifest for this host's platform.
    #[error(
        "index {digest} has no single manifest for linux/{}",
        oci::host_architecture()
    )]
    NoPlatform {
        /// The index.
        digest: BlobDigest,
    },
    /// An index names another index, or a manifest names something that is not a manifest.
    #[error("blob {digest} is a nested index, which is not supported")]
    NestedIndex {
        /// The inner index.
        digest: BlobDigest,
    },
    /// A layer has a media type that is not a tar layer we can apply.
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    UnsupportedLayer {
        /// The layer.
        digest: BlobDigest,
        /// Its media type.
        media_type: String,
    },
    /// Flattening the image failed or was refused.
    #[error("cannot flatten image {digest}")]
    Flatten {
        /// The image.
        digest: ImageDigest,
        /// The cause.
        #[source]
        source: FlattenError,
    },
    /// Another request flattening the same image at the same time failed; this one waited
    /// for it.
    #[error("flattening image {digest} failed (in a concurrent request): {message}")]
    Concurrent {
        /// The image.
        digest: ImageDigest,
        /// That request's error, with its causes.
        message: String,
    },
    /// Reading or writing the rootfs cache failed.
    #[error("rootfs cache i/o failed at {path}")]
    Cache {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A layer to apply: its blob and the compression its media type names (`None`: by magic).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The blob.
    pub digest: BlobDigest,
    /// The declared compression.
    pub compression: Option<Compression>,
}

/// A directory of verified blobs and of root file systems flattened from them, keyed by image
/// digest. Cheap to clone; any number of processes may share one directory.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
    limits: Limits,
    /// Flattenings in flight, by image hex, shared by clones.
    flights: Arc<SingleFlight<PathBuf>>,
    /// Flattenings started by this store and its clones.
    flattened: Arc<AtomicU64>,
    /// Tests: how long a flattening sleeps first, so that concurrent requests overlap.
    #[cfg(test)]
    pub(crate) flatten_delay: std::time::Duration,
}

impl ImageStore {
    /// Opens (creating it if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>, limits: Limits) -> Result<Self, StoreError> {
        let store = ImageStore {
            root: root.into(),
            limits,
            flights: Arc::default(),
            flattened: Arc::default(),
            #[cfg(test)]
            flatten_delay: std::time::Duration::ZERO,
        };
        for dir in [store.blob_dir(), store.cache_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        let marker = store.root.join("oci-layout");
        if !marker.exists() {
            let write = || -> io::Result<()> {
                let mut staged = tempfile::NamedTempFile::new_in(store.tmp_dir())?;
                staged.write_all(br#"{"imageLayoutVersion":"1.0.0"}"#)?;
                staged.persist(&marker).map_err(|error| error.error)?;
                Ok(())
            };
            write().map_err(|source| StoreError::CreateDir {
                path: marker.clone(),
                source,
            })?;
        }
        Ok(store)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Where blob `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &BlobDigest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    /// Whether blob `digest` is in the store (not checking its content).
    pub fn has_blob(&self, digest: &BlobDigest) -> bool {
        self.blob_path(digest).is_file()
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn cache_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Copies `reader` into the store as a blob. With `expected`, the content must hash to it
    /// and (with `declared_size`) have that length; the digest and length are returned.
    pub fn put_blob(
        &self,
        reader: impl Read,
        expected: Option<&BlobDigest>,
        declared_size: Option<u64>,
    ) -> Result<(BlobDigest, u64), StoreError> {
        let tmp = self.tmp_dir();
        let write_error = |source| StoreError::WriteBlob {
            path: tmp.clone(),
            source,
        };
        let staged = tempfile::NamedTempFile::new_in(&tmp).map_err(write_error)?;
        // One byte past any cap tells "too long" from "exactly the cap".
        let cap = declared_size
            .unwrap_or(self.limits.max_blob_bytes)
            .min(self.limits.max_blob_bytes);
        let mut writer = HashingWriter::new(staged);
        io::copy(&mut reader.take(cap.saturating_add(1)), &mut writer).map_err(write_error)?;
        let (staged, actual, length) = writer.finish();
        let name = || expected.map_or_else(|| "being imported".to_owned(), ToString::to_string);
        if length > self.limits.max_blob_bytes {
            return Err(StoreError::BlobTooLarge {
                digest: name(),
                limit: self.limits.max_blob_bytes,
            });
        }
        if let Some(expected) = expected {
            if let Some(declared) = declared_size {
                if declared != length {
                    return Err(StoreError::SizeMismatch {
                        digest: expected.clone(),
                        declared,
                        actual: length,
                    });
                }
            }
            if *expected != actual {
                return Err(StoreError::BlobMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        self.commit_blob(staged, &actual)?;
        Ok((actual, length))
    }

    /// Moves a verified staged file to its place under `blobs/`.
    pub(crate) fn commit_blob(
        &self,
        staged: tempfile::NamedTempFile,
        digest: &BlobDigest,
    ) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        if path.is_file() {
            // Same name, same content: keep the one already there.
            return Ok(());
        }
        let write_error = |source| StoreError::WriteBlob {
            path: path.clone(),
            source,
        };
        staged
            .as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(write_error)?;
        staged
            .persist(&path)
            .map_err(|error| write_error(error.error))?;
        Ok(())
    }

    /// Opens blob `digest` for reading through a verifying reader.
    pub fn open_blob(&self, digest: &BlobDigest) -> Result<VerifyingReader<File>, StoreError> {
        match File::open(self.blob_path(digest)) {
            Ok(file) => Ok(VerifyingReader::new(file, digest.clone())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Err(StoreError::MissingBlob {
                digest: digest.clone(),
            }),
            Err(source) => Err(StoreError::ReadBlob {
                digest: digest.clone(),
                source,
            }),
        }
    }

    /// Reads a whole blob of at most [`MAX_JSON_BYTES`], verified.
    pub fn read_json_blob(&self, digest: &BlobDigest) -> Result<Vec<u8>, StoreError> {
        let mut reader = self.open_blob(digest)?;
        let mut bytes = Vec::new();
        (&mut reader)
            .take(MAX_JSON_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| StoreError::ReadBlob {
                digest: digest.clone(),
                source,
            })?;
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_JSON_BYTES {
            return Err(StoreError::BlobTooLarge {
                digest: digest.to_string(),
                limit: MAX_JSON_BYTES,
            });
        }
        verify(reader, digest)?;
        Ok(bytes)
    }

    /// Parses blob `digest` as a manifest, index or config.
    pub fn describe(&self, digest: &BlobDigest) -> Result<Described, StoreError> {
        let bytes = self.read_json_blob(digest)?;
        oci::describe(&bytes).map_err(|source| StoreError::ParseJson {
            digest: digest.clone(),
            source,
        })
    }

    /// The layers of `image`, lowest first: from its manifest; from the host's manifest when
    /// it is an index; or, when it is a docker-archive config, the blobs named by its
    /// `diff_ids` (which are the uncompressed layers themselves).
    pub fn layers(&self, image: &ImageDigest) -> Result<Vec<Layer>, StoreError> {
        let manifest = match self.describe(image.blob())? {
            Described::Manifest(manifest) => manifest,
            Described::Index(index) => {
                let chosen = index
                    .host_manifest()
                    .ok_or_else(|| StoreError::NoPlatform {
                        digest: image.blob().clone(),
                    })?;
                match self.describe(&chosen.digest)? {
                    Described::Manifest(manifest) => manifest,
                    _ => {
                        return Err(StoreError::NestedIndex {
                            digest: chosen.digest.clone(),
                        })
                    }
                }
            }
            Described::Config(config) => {
                return Ok(config
                    .rootfs
                    .diff_ids
                    .into_iter()
                    .map(|digest| Layer {
                        digest,
                        compression: Some(Compression::Uncompressed),
                    })
                    .collect())
            }
        };
        manifest
            .layers
            .into_iter()
            .map(
                |descriptor| match oci::layer_compression(&descriptor.media_type) {
                    Some(compression) => Ok(Layer {
                        digest: descriptor.digest,
                        compression: Some(compression),
                    }),
                    None => Err(StoreError::UnsupportedLayer {
                        digest: descriptor.digest,
                        media_type: descriptor.media_type,
                    }),
                },
            )
            .collect()
    }

    /// The flattened root file system of `image`, building it on first use.
    ///
    /// Blocking (it may decompress gigabytes): async callers run it in `spawn_blocking`. The
    /// returned tree must be treated as read-only and its symlinks must never be followed on
    /// the host: they are meant to resolve inside the sandbox.
    #[instrument(skip_all, fields(digest = %image))]
    pub fn rootfs(&self, image: &ImageDigest) -> Result<PathBuf, StoreError> {
        let entry = self.cache_dir().join(image.hex());
        let tree = entry.join("rootfs");
        if tree.is_dir() {
            touch(&entry)?;
            return Ok(tree);
        }
        self.flights
            .run(image.hex(), || self.flatten(image))
            .map_err(|error| match error {
                FlightError::Own(error) => error,
                FlightError::Shared(message) => StoreError::Concurrent {
                    digest: image.clone(),
                    message,
                },
            })
    }

    /// Images this store (and its clones) started flattening, failed attempts included.
    pub fn flatten_count(&self) -> u64 {
        self.flattened.load(Ordering::Relaxed)
    }

    /// Flattens `image` into the cache (the caller made sure no other thread of this process
    /// is doing so).
    fn flatten(&self, image: &ImageDigest) -> Result<PathBuf, StoreError> {
        let entry = self.cache_dir().join(image.hex());
        let tree = entry.join("rootfs");
        // Finished by a flight that landed between our look and our take-off.
        if tree.is_dir() {
            touch(&entry)?;
            return Ok(tree);
        }
        self.flattened.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        std::thread::sleep(self.flatten_delay);
        let layers = self.layers(image)?;
        let cache_error = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Cache { path, source }
        };
        let staging = tempfile::Builder::new()
            .prefix("rootfs-")
            .tempdir_in(self.tmp_dir())
            .map_err(cache_error(&self.tmp_dir()))?;
        let flatten_error = |source| StoreError::Flatten {
            digest: image.clone(),
            source,
        };
        let mut flattener = Flattener::create(&staging.path().join("rootfs"), self.limits.flatten)
            .map_err(flatten_error)?;
        for layer in &layers {
            let mut reader = self.open_blob(&layer.digest)?;
            flattener
                .apply_layer(&mut reader, layer.compression)
                .map_err(flatten_error)?;
            verify(reader, &layer.digest)?;
        }
        let summary = flattener.finish();
        tracing::info!(
            layers = summary.layers,
            entries = summary.entries,
            bytes = summary.bytes,
            "flattened image"
        );
        let size_path = staging.path().join("size");
        fs::write(&size_path, summary.bytes.to_string()).map_err(cache_error(&size_path))?;
        fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))
            .map_err(cache_error(staging.path()))?;
        touch(staging.path())?;
        let staged = staging.keep();
        match fs::rename(&staged, &entry) {
            Ok(()) => {}
            Err(error) => {
                // Another process (or thread) finished the same image first; theirs is as good.
                let removed = fs::remove_dir_all(&staged);
                if !tree.is_dir() {
                    return Err(StoreError::Cache {
                        path: entry,
                        source: error,
                    });
                }
                if let Err(error) = removed {
                    tracing::warn!(path = %staged.display(), %error, "cannot remove a duplicate rootfs");
                }
                touch(&entry)?;
            }
        }
        self.evict(Some(image))?;
        Ok(tree)
    }

    /// Evicts flattened trees, least recently used first, until the cache fits the budget;
    /// `keep` is never evicted. Returns how many trees were removed.
    pub fn evict(&self, keep: Option<&ImageDigest>) -> Result<usize, StoreError> {
        let cache = self.cache_dir();
        let read_error = |source| StoreError::Cache {
            path: cache.clone(),
            source,
        };
        let mut entries = Vec::new();
        for child in fs::read_dir(&cache).map_err(read_error)? {
            let child = child.map_err(read_error)?;
            let Some(name) = child.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(digest) = ImageDigest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            let path = child.path();
            let size = fs::read_to_string(path.join("size"))
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let used = fs::metadata(path.join("last-used"))
                .and_then(|metadata| metadata.modified())
                .unwrap_or(UNIX_EPOCH);
            entries.push((used, size, digest, path));
        }
        let mut total: u64 = entries.iter().map(|(_, size, _, _)| *size).sum();
        entries.sort();
        let mut removed = 0;
        for (_, size, digest, path) in entries {
            if total <= self.limits.cache_budget_bytes {
                break;
            }
            if Some(&digest) == keep {
                continue;
            }
            let doomed =
                self.tmp_dir()
                    .join(format!("evict-{}-{}", digest.hex(), std::process::id()));
            match fs::rename(&path, &doomed) {
                Ok(()) => {
                    fs::remove_dir_all(&doomed).map_err(|source| StoreError::Cache {
                        path: doomed.clone(),
                        source,
                    })?;
                    removed += 1;
                    tracing::info!(digest = %digest, bytes = size, "evicted rootfs");
                }
                // Someone else evicted it first.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Cache { path, source }),
            }
            total = total.saturating_sub(size);
        }
        Ok(removed)
    }
}

/// Finishes reading a blob and checks its digest.
fn verify(reader: VerifyingReader<File>, digest: &BlobDigest) -> Result<(), StoreError> {
    match reader.finish() {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(mismatch)) => Err(StoreError::BlobMismatch {
            expected: mismatch.expected,
            actual: mismatch.actual,
        }),
        Err(source) => Err(StoreError::ReadBlob {
            digest: digest.clone(),
            source,
        }),
    }
}

/// Marks a cache entry as used now.
fn touch(entry: &Path) -> Result<(), StoreError> {
    let marker = entry.join("last-used");
    let result = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&marker)
        .and_then(|file| file.set_modified(SystemTime::now()));
    result.map_err(|source| StoreError::Cache {
        path: marker,
        source,
    })
}

#[cfg(test)]
mod tests;
