//! Importing images without a registry, for air-gapped sites: from an OCI image layout
//! directory and from a `docker save` tarball. Both copy verified blobs into the store, so
//! imported and pulled images are flattened by the same code.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use tracing::instrument;

use crate::digest::{BlobDigest, HashingWriter, ImageDigest};
use crate::flatten::Compression;
use crate::oci::{Described, DockerArchiveImage, Index};
use crate::store::{ImageStore, StoreError, MAX_JSON_BYTES};

/// Most entries a docker-archive may have: images have tens of layers, each a few files.
const MAX_ARCHIVE_ENTRIES: u64 = 100_000;
/// Longest symlink chain followed inside a docker-archive (old `docker save` links
/// duplicate layers to their first copy).
const MAX_ARCHIVE_LINK_HOPS: usize = 8;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A file of the OCI layout could not be read.
    #[error("cannot read {path}")]
    ReadLayout {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `oci-layout` or `index.json` is not valid.
    #[error("{path} is not a valid OCI layout file")]
    ParseLayout {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// `index.json` does not name exactly one image for this host.
    #[error("{path} names {count} images; expected exactly one (or one for this platform)")]
    AmbiguousLayout {
        /// The `index.json`.
        path: PathBuf,
        /// How many manifests it lists.
        count: usize,
    },
    /// The docker-archive could not be read as tar.
    #[error("cannot read docker archive {path}")]
    ReadArchive {
        /// The archive.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The docker-archive has more entries than we accept.
    #[error("docker archive {path} has more than {limit} entries")]
    ArchiveTooLarge {
        /// The archive.
        path: PathBuf,
        /// The cap.
        limit: u64,
    },
    /// A file `manifest.json` names is not in the archive.
    #[error("docker archive {path} lacks {entry}")]
    ArchiveMissingEntry {
        /// The archive.
        path: PathBuf,
        /// The missing entry.
        entry: String,
    },
    /// `manifest.json` is not valid.
    #[error("docker archive {path} has an invalid manifest.json")]
    ArchiveManifest {
        /// The archive.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// `manifest.json` does not describe exactly one image.
    #[error("docker archive {path} holds {count} images; expected exactly one")]
    ArchiveImageCount {
        /// The archive.
        path: PathBuf,
        /// How many it holds.
        count: usize,
    },
    /// The config file's name states a digest its content does not have.
    #[error("docker archive {path}: config {entry} hashes to {actual}")]
    ConfigNameMismatch {
        /// The archive.
        path: PathBuf,
        /// The config entry.
        entry: String,
        /// Its digest.
        actual: BlobDigest,
    },
    /// The config's `diff_ids` do not match the layer files, so the config digest would not
    /// pin the layers (they are compressed, reordered or corrupt).
    #[error("docker archive {path}: layer {index} ({entry}) is {actual}, but the config names {expected}")]
    DiffIdMismatch {
        /// The archive.
        path: PathBuf,
        /// Index of the layer.
        index: usize,
        /// The layer entry.
        entry: String,
        /// The `diff_id` in the config.
        expected: String,
        /// The digest of the layer file.
        actual: BlobDigest,
    },
    /// The config is not an image config.
    #[error("docker archive {path}: config {digest} is not an image config")]
    NotAConfig {
        /// The archive.
        path: PathBuf,
        /// The config.
        digest: BlobDigest,
    },
    /// Storing or reading a blob failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ImageStore {
    /// Imports the image of an OCI image layout directory (`oci-layout`, `index.json`,
    /// `blobs/sha256/`) and returns its digest: the digest of the manifest (or index) that
    /// `index.json` names. Every blob is verified against its digest and declared size.
    ///
    /// `index.json` must list exactly one manifest, or exactly one for this host's platform.
    #[instrument(skip_all, fields(path = %layout.display()))]
    pub fn import_layout(&self, layout: &Path) -> Result<ImageDigest, ImportError> {
        let marker_path = layout.join("oci-layout");
        let marker = read_small(&marker_path)?;
        let marker: serde_json::Value =
            serde_json::from_slice(&marker).map_err(|source| ImportError::ParseLayout {
                path: marker_path.clone(),
                source,
            })?;
        if marker.get("imageLayoutVersion").is_none() {
            let source = serde::de::Error::missing_field("imageLayoutVersion");
            return Err(ImportError::ParseLayout {
                path: marker_path,
                source,
            });
        }
        let index_path = layout.join("index.json");
        let index: Index = serde_json::from_slice(&read_small(&index_path)?).map_err(|source| {
            ImportError::ParseLayout {
                path: index_path.clone(),
                source,
            }
        })?;
        let chosen = index
            .host_manifest()
            .ok_or_else(|| ImportError::AmbiguousLayout {
                path: index_path.clone(),
                count: index.manifests.len(),
            })?;
        let copy = |digest: &BlobDigest, size: u64| -> Result<(), ImportError> {
            if self.has_blob(digest) {
                return Ok(());
            }
            let path = layout.join("blobs").join("sha256").join(digest.hex());
            let file =
                File::open(&path).map_err(|source| ImportError::ReadLayout { path, source })?;
            self.put_blob(file, Some(digest), Some(size))?;
            Ok(())
        };
        copy(&chosen.digest, chosen.size)?;
        let manifest = match self.describe(&chosen.digest)? {
            Described::Manifest(manifest) => manifest,
            Described::Index(inner) => {
                let platform = inner
                    .host_manifest()
                    .ok_or_else(|| StoreError::NoPlatform {
                        digest: chosen.digest.clone(),
                    })?;
                copy(&platform.digest, platform.size)?;
                match self.describe(&platform.digest)? {
                    Described::Manifest(manifest) => manifest,
                    _ => {
                        return Err(StoreError::NestedIndex {
                            digest: platform.digest.clone(),
                        }
                        .into())
                    }
                }
            }
            Described::Config(_) => {
                return Err(StoreError::NestedIndex {
                    digest: chosen.digest.clone(),
                }
                .into())
            }
        };
        copy(&manifest.config.digest, manifest.config.size)?;
        for layer in &manifest.layers {
            copy(&layer.digest, layer.size)?;
        }
        Ok(ImageDigest::from(chosen.digest.clone()))
    }

    /// Imports a `docker save` tarball (optionally gzip-compressed) holding one image, and
    /// returns its digest.
    ///
    /// **The digest of a docker-archive image is the digest of its config blob**, which is
    /// Docker's image ID. A docker-archive has no manifest blob to name it by, and a manifest
    /// we wrote ourselves would be a digest no other tool shows. The config names its layers
    /// by `diff_ids`, the digests of the uncompressed layer tars, so the import checks that
    /// each layer file *is* that tar: then the config digest pins every byte of the image,
    /// and [`ImageStore::rootfs`] finds the layers by those digests. Archives with compressed
    /// layers are refused; import them as OCI layouts instead.
    #[instrument(skip_all, fields(path = %archive.display()))]
    pub fn import_docker_archive(&self, archive: &Path) -> Result<ImageDigest, ImportError> {
        let read_error = |source| ImportError::ReadArchive {
            path: archive.to_owned(),
            source,
        };
        let file = File::open(archive).map_err(read_error)?;
        let mut buffered = BufReader::new(file);
        let compression = Compression::sniff(buffered.fill_buf().map_err(read_error)?);
        let decoded: Box<dyn Read> = match compression {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            _ => Box::new(buffered),
        };
        let mut tar = tar::Archive::new(decoded);
        let mut files: HashMap<String, (BlobDigest, u64)> = HashMap::new();
        let mut links: HashMap<String, String> = HashMap::new();
        let mut count = 0u64;
        for entry in tar.entries().map_err(read_error)? {
            let mut entry = entry.map_err(read_error)?;
            count += 1;
            if count > MAX_ARCHIVE_ENTRIES {
                return Err(ImportError::ArchiveTooLarge {
                    path: archive.to_owned(),
                    limit: MAX_ARCHIVE_ENTRIES,
                });
            }
            let Some(name) = entry.path().ok().and_then(|path| archive_name(&path)) else {
                continue;
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let staged =
                        tempfile::NamedTempFile::new_in(self.tmp_dir()).map_err(|source| {
                            StoreError::WriteBlob {
                                path: self.tmp_dir(),
                                source,
                            }
                        })?;
                    let cap = self.limits().max_blob_bytes;
                    let mut writer = HashingWriter::new(staged);
                    io::copy(&mut (&mut entry).take(cap.saturating_add(1)), &mut writer)
                        .map_err(read_error)?;
                    let (staged, digest, length) = writer.finish();
                    if length > cap {
                        return Err(StoreError::BlobTooLarge {
                            digest: name,
                            limit: cap,
                        }
                        .into());
                    }
                    self.commit_blob(staged, &digest)?;
                    files.insert(name, (digest, length));
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .ok()
                        .flatten()
                        .map(|target| target.into_owned());
                    let parent = Path::new(&name)
                        .parent()
                        .unwrap_or(Path::new(""))
                        .to_owned();
                    if let Some(resolved) =
                        target.and_then(|target| archive_name(&parent.join(target)))
                    {
                        links.insert(name, resolved);
                    }
                }
                _ => {}
            }
        }
        let lookup = |name: &str| -> Result<(BlobDigest, u64), ImportError> {
            let mut current = archive_name(Path::new(name)).unwrap_or_default();
            for _ in 0..=MAX_ARCHIVE_LINK_HOPS {
                if let Some(found) = files.get(&current) {
                    return Ok(found.clone());
                }
                match links.get(&current) {
                    Some(next) => current = next.clone(),
                    None => break,
                }
            }
            Err(ImportError::ArchiveMissingEntry {
                path: archive.to_owned(),
                entry: name.to_owned(),
            })
        };

        let (manifest_digest, manifest_size) = lookup("manifest.json")?;
        if manifest_size > MAX_JSON_BYTES {
            return Err(StoreError::BlobTooLarge {
                digest: "manifest.json".to_owned(),
                limit: MAX_JSON_BYTES,
            }
            .into());
        }
        let manifest_bytes = self.read_json_blob(&manifest_digest)?;
        let images: Vec<DockerArchiveImage> =
            serde_json::from_slice(&manifest_bytes).map_err(|source| {
                ImportError::ArchiveManifest {
                    path: archive.to_owned(),
                    source,
                }
            })?;
        let [image] = &images[..] else {
            return Err(ImportError::ArchiveImageCount {
                path: archive.to_owned(),
                count: images.len(),
            });
        };
        let (config_digest, _) = lookup(&image.config)?;
        if let Some(claimed) = claimed_digest(&image.config) {
            if claimed != config_digest.hex() {
                return Err(ImportError::ConfigNameMismatch {
                    path: archive.to_owned(),
                    entry: image.config.clone(),
                    actual: config_digest,
                });
            }
        }
        let Described::Config(config) = self.describe(&config_digest)? else {
            return Err(ImportError::NotAConfig {
                path: archive.to_owned(),
                digest: config_digest,
            });
        };
        let diff_ids = &config.rootfs.diff_ids;
        for (index, entry) in image.layers.iter().enumerate() {
            let (layer_digest, _) = lookup(entry)?;
            let expected = diff_ids.get(index);
            if expected != Some(&layer_digest) {
                return Err(ImportError::DiffIdMismatch {
                    path: archive.to_owned(),
                    index,
                    entry: entry.clone(),
                    expected: expected.map_or_else(|| "nothing".to_owned(), ToString::to_string),
                    actual: layer_digest,
                });
            }
        }
        if diff_ids.len() != image.layers.len() {
            return Err(ImportError::DiffIdMismatch {
                path: archive.to_owned(),
                index: image.layers.len(),
                entry: "(none)".to_owned(),
                expected: diff_ids
                    .get(image.layers.len())
                    .map_or_else(String::new, ToString::to_string),
                actual: BlobDigest::of_bytes(b""),
            });
        }
        Ok(ImageDigest::from(config_digest))
    }
}

/// Reads a small layout file (`oci-layout`, `index.json`) whole.
fn read_small(path: &Path) -> Result<Vec<u8>, ImportError> {
    let read_error = |source| ImportError::ReadLayout {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_JSON_BYTES {
        let source = io::Error::new(io::ErrorKind::InvalidData, "file larger than 4 MiB");
        return Err(ImportError::ReadLayout {
            path: path.to_owned(),
            source,
        });
    }
    Ok(bytes)
}

/// A docker-archive entry name in canonical form (`a/b`, no `.`), or `None` when it climbs
/// out with `..` or is absolute. Names are only map keys here, never host paths.
fn archive_name(path: &Path) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The digest a config entry's name states: `<hex>.json` (classic `docker save`) or
/// `blobs/sha256/<hex>` (Docker 25 and later).
fn claimed_digest(name: &str) -> Option<String> {
    let file = name.rsplit('/').next()?;
    let hex = file.strip_suffix(".json").unwrap_or(file);
    BlobDigest::parse(&format!("sha256:{hex}"))
        .ok()
        .map(|digest| digest.hex().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_are_canonical_and_contained() {
        let check = |path: &str, expected: Option<&str>| {
            assert_eq!(archive_name(Path::new(path)).as_deref(), expected, "{path}");
        };
        check("manifest.json", Some("manifest.json"));
        check("./abc/layer.tar", Some("abc/layer.tar"));
        check("abc/../def/layer.tar", Some("def/layer.tar"));
        check("../x", None);
        check("/etc/passwd", None);
        check(".", None);
    }

    #[test]
    fn config_names_state_digests() {
        let hex = "ab".repeat(32);
        assert_eq!(claimed_digest(&format!("{hex}.json")), Some(hex.clone()));
        assert_eq!(claimed_digest(&format!("blobs/sha256/{hex}")), Some(hex));
        assert_eq!(claimed_digest("config.json"), None);
    }
}
