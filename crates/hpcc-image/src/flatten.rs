//! Flattening an image's layers, lowest first, into one root file system directory.
//!
//! This replaces `tar -x` and `tar::Archive::unpack`, because extracting an untrusted layer
//! safely needs rules neither has: OCI whiteouts, and refusals that keep every write inside
//! the target. The rules, each enforced entry by entry:
//!
//! - A path is relative and has no `..` component; `.` components are dropped.
//! - Every directory on the way to an entry is checked with `symlink_metadata` and must be a
//!   real directory: no entry is ever written through a symlink, whichever layer made it. The
//!   final component is replaced (never opened through): files are created with `O_EXCL`.
//! - A symlink is created but never followed. Its target may be absolute (it names a path
//!   inside the image, as the sandbox sees it), but a relative target may not climb above the
//!   root. This check is lexical; what keeps the host safe is that no write follows a link.
//! - A hard link must name, by a safe path, a regular file already extracted.
//! - Device nodes, FIFOs and any other special entry are refused.
//! - Permission bits are kept, minus setuid, setgid and sticky. Directories also keep owner
//!   `rwx`, so that the unprivileged extracting user can fill and later delete them (the
//!   sandbox mounts the tree read-only, so this grants nothing inside it). Ownership is not
//!   applied.
//! - Decompressed bytes are counted as they come out of the decoder, so a compression bomb is
//!   stopped at the cap no matter what its headers claim; entries are counted too.
//!
//! Checking components one by one is race-free only because nothing else writes into the
//! target while it is built: [`Flattener::create`] makes a new directory, which the store
//! keeps in its private temporary directory until it is renamed into place.
//!
//! On any error the target is removed when the [`Flattener`] is dropped.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tar::EntryType;

/// Caps on what flattening one image may produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlattenLimits {
    /// Decompressed bytes over all layers, tar headers included.
    pub max_total_bytes: u64,
    /// Tar entries over all layers, whiteouts included.
    pub max_entries: u64,
    /// Size of one file.
    pub max_entry_bytes: u64,
}

impl Default for FlattenLimits {
    fn default() -> Self {
        FlattenLimits {
            max_total_bytes: 8 << 30,
            max_entries: 500_000,
            max_entry_bytes: 4 << 30,
        }
    }
}

/// How a layer is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    Uncompressed,
    /// gzip, possibly several concatenated members.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression a layer's first bytes show: the gzip and zstd magic numbers, anything
    /// else taken as a plain tar (whose parser then decides).
    pub fn sniff(first_bytes: &[u8]) -> Compression {
        if first_bytes.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if first_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::Uncompressed
        }
    }
}

/// Why flattening failed. Paths are relative to the target root, as in the layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlattenError {
    /// The target directory could not be created (it must not exist yet).
    #[error("cannot create flatten target {path}")]
    CreateTarget {
        /// The target.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The layer could not be read, decompressed or parsed as tar.
    #[error("cannot read layer {layer} as tar")]
    ReadLayer {
        /// Index of the layer, lowest first.
        layer: usize,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The layer's media type names one compression and its bytes show another.
    #[error("layer {layer} is declared {declared:?} but its bytes are {found:?}")]
    CompressionMismatch {
        /// Index of the layer, lowest first.
        layer: usize,
        /// What the media type says.
        declared: Compression,
        /// What the magic bytes say.
        found: Compression,
    },
    /// An entry's path is absolute.
    #[error("refused absolute path {path} in layer {layer}")]
    AbsolutePath {
        /// Index of the layer.
        layer: usize,
        /// The path as in the archive.
        path: PathBuf,
    },
    /// An entry's path has a `..` component.
    #[error("refused path {path} with a `..` component in layer {layer}")]
    ParentComponent {
        /// Index of the layer.
        layer: usize,
        /// The path as in the archive.
        path: PathBuf,
    },
    /// An entry's path goes through a symlink made by this or an earlier layer.
    #[error("refused path {path}: its ancestor {symlink} is a symlink")]
    ThroughSymlink {
        /// The entry's path.
        path: PathBuf,
        /// The ancestor that is a symlink.
        symlink: PathBuf,
    },
    /// An entry's path goes through something that is neither a directory nor a symlink.
    #[error("refused path {path}: its ancestor {ancestor} is not a directory")]
    ParentNotDirectory {
        /// The entry's path.
        path: PathBuf,
        /// The ancestor that is a file.
        ancestor: PathBuf,
    },
    /// A symlink's relative target climbs above the root.
    #[error("refused symlink {path} -> {target}: the target leaves the root")]
    SymlinkEscape {
        /// The symlink.
        path: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// A hard link names a path outside the root.
    #[error("refused hard link {path} -> {target}: the target is not a path inside the root")]
    HardLinkEscape {
        /// The link.
        path: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// A hard link names something that is not an already extracted regular file.
    #[error("refused hard link {path} -> {target}: the target is not an extracted regular file")]
    HardLinkTarget {
        /// The link.
        path: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// A link entry has no target.
    #[error("refused link {path} without a target")]
    MissingLinkTarget {
        /// The link.
        path: PathBuf,
    },
    /// A character or block device node, or a FIFO.
    #[error("refused special file {path} ({kind})")]
    SpecialFile {
        /// The entry.
        path: PathBuf,
        /// `character device`, `block device` or `fifo`.
        kind: &'static str,
    },
    /// An entry type we do not extract (sparse files, unknown types).
    #[error("refused entry {path} of unsupported tar type {kind:?}")]
    UnsupportedEntry {
        /// The entry.
        path: PathBuf,
        /// The raw tar type byte.
        kind: u8,
    },
    /// A whiteout that names nothing (`.wh.`, `.wh..`, `.wh...`).
    #[error("refused invalid whiteout {path}")]
    InvalidWhiteout {
        /// The whiteout entry.
        path: PathBuf,
    },
    /// A non-directory entry names the root itself.
    #[error("refused non-directory entry for the root in layer {layer}")]
    RootNotDirectory {
        /// Index of the layer.
        layer: usize,
    },
    /// More entries than [`FlattenLimits::max_entries`].
    #[error("image has more than {limit} entries")]
    TooManyEntries {
        /// The cap.
        limit: u64,
    },
    /// One file is larger than [`FlattenLimits::max_entry_bytes`].
    #[error("entry {path} has {size} bytes, over the cap of {limit}")]
    EntryTooLarge {
        /// The entry.
        path: PathBuf,
        /// Its declared size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// The layers decompress to more than [`FlattenLimits::max_total_bytes`].
    #[error("image decompresses to more than {limit} bytes")]
    TooManyBytes {
        /// The cap.
        limit: u64,
    },
    /// Writing an entry (or removing one for a whiteout) failed on the host.
    #[error("cannot write {path} in the target")]
    Write {
        /// The entry, relative to the root.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Totals of a finished flatten.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlattenSummary {
    /// Layers applied.
    pub layers: usize,
    /// Tar entries seen.
    pub entries: u64,
    /// Decompressed bytes read.
    pub bytes: u64,
}

/// Builds one root file system from layers applied in order.
///
/// **Invariant:** the target is a directory this value created; unless [`Flattener::finish`]
/// was called, dropping the value removes it, so a refused image leaves nothing behind.
pub struct Flattener {
    root: PathBuf,
    limits: FlattenLimits,
    decompressed: Arc<AtomicU64>,
    entries: u64,
    layers: usize,
    finished: bool,
}

impl Flattener {
    /// Creates the empty target directory `root`, which must not exist.
    pub fn create(root: &Path, limits: FlattenLimits) -> Result<Self, FlattenError> {
        DirBuilder::new()
            .mode(0o755)
            .create(root)
            .map_err(|source| FlattenError::CreateTarget {
                path: root.to_owned(),
                source,
            })?;
        Ok(Flattener {
            root: root.to_owned(),
            limits,
            decompressed: Arc::new(AtomicU64::new(0)),
            entries: 0,
            layers: 0,
            finished: false,
        })
    }

    /// The target directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Applies the next layer. `declared` is the compression its media type names, or `None`
    /// to go by its magic bytes (docker-archive layers have no media type).
    ///
    /// The reader is read only as far as the tar's end-of-archive marker; a caller verifying
    /// a digest reads the rest itself.
    pub fn apply_layer<R: Read>(
        &mut self,
        layer: R,
        declared: Option<Compression>,
    ) -> Result<(), FlattenError> {
        let index = self.layers;
        self.layers += 1;
        let read_error = |source| FlattenError::ReadLayer {
            layer: index,
            source,
        };
        let mut buffered = BufReader::new(layer);
        let found = Compression::sniff(buffered.fill_buf().map_err(read_error)?);
        if let Some(declared) = declared {
            if declared != found {
                return Err(FlattenError::CompressionMismatch {
                    layer: index,
                    declared,
                    found,
                });
            }
        }
        let decoded: Box<dyn Read + '_> = match found {
            Compression::Uncompressed => Box::new(buffered),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(read_error)?)
            }
        };
        let counted = CountingReader {
            inner: decoded,
            count: Arc::clone(&self.decompressed),
            limit: self.limits.max_total_bytes,
        };
        let mut archive = tar::Archive::new(counted);
        let mut layer_paths = LayerPaths::default();
        let entries = archive
            .entries()
            .map_err(|source| self.read_error(index, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| self.read_error(index, source))?;
            self.apply_entry(index, entry, &mut layer_paths)?;
        }
        Ok(())
    }

    /// Marks the target complete, so that dropping `self` keeps it.
    pub fn finish(mut self) -> FlattenSummary {
        self.finished = true;
        FlattenSummary {
            layers: self.layers,
            entries: self.entries,
            bytes: self.decompressed.load(Ordering::Relaxed),
        }
    }

    /// A read failure, reported as the byte cap when the counting reader is what failed.
    fn read_error(&self, layer: usize, source: io::Error) -> FlattenError {
        if self.decompressed.load(Ordering::Relaxed) > self.limits.max_total_bytes {
            FlattenError::TooManyBytes {
                limit: self.limits.max_total_bytes,
            }
        } else {
            FlattenError::ReadLayer { layer, source }
        }
    }

    fn apply_entry<R: Read>(
        &mut self,
        layer: usize,
        mut entry: tar::Entry<'_, R>,
        layer_paths: &mut LayerPaths,
    ) -> Result<(), FlattenError> {
        let kind = entry.header().entry_type();
        // The tar crate folds long names and PAX records into the entries they describe;
        // a global PAX header carries nothing we apply.
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(FlattenError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        let archived_path = entry
            .path()
            .map_err(|source| FlattenError::ReadLayer { layer, source })?
            .into_owned();
        let path = normalize(layer, &archived_path)?;

        if let Some(name) = path.file_name().and_then(|name| name.to_str()) {
            if let Some(hidden) = name.strip_prefix(".wh.") {
                return self.whiteout(&path, hidden, layer_paths);
            }
        }
        if path.as_os_str().is_empty() {
            // The root itself: it exists already, and its mode is ours.
            return if kind == EntryType::Directory {
                Ok(())
            } else {
                Err(FlattenError::RootNotDirectory { layer })
            };
        }

        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                self.check_size(&path, size)?;
                let host = self.prepare_parents(&path)?;
                self.clear_non_directory(&path, &host)?;
                let write_error = |source| FlattenError::Write {
                    path: path.clone(),
                    source,
                };
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&host)
                    .map_err(write_error)?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut file);
                match copied {
                    Ok(_) => {}
                    Err(source) => return Err(self.read_error(layer, source)),
                }
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(write_error)?;
                if let Ok(seconds) = entry.header().mtime() {
                    // A failed mtime is cosmetic: compilers do not read it.
                    let _ = file.set_modified(UNIX_EPOCH + Duration::from_secs(seconds));
                }
            }
            EntryType::Directory => {
                let host = self.prepare_parents(&path)?;
                let write_error = |source| FlattenError::Write {
                    path: path.clone(),
                    source,
                };
                match fs::symlink_metadata(&host) {
                    Ok(metadata) if metadata.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&host).map_err(write_error)?;
                        DirBuilder::new()
                            .mode(0o700)
                            .create(&host)
                            .map_err(write_error)?;
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        DirBuilder::new()
                            .mode(0o700)
                            .create(&host)
                            .map_err(write_error)?;
                    }
                    Err(error) => return Err(write_error(error)),
                }
                // `host` was just seen to be a real directory in a tree only we write, so this
                // path-based chmod cannot land elsewhere.
                fs::set_permissions(&host, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(write_error)?;
            }
            EntryType::Symlink => {
                let target = link_target(&entry, layer, &path)?;
                if escapes_root(&path, &target) {
                    return Err(FlattenError::SymlinkEscape { path, target });
                }
                let host = self.prepare_parents(&path)?;
                self.clear_non_directory(&path, &host)?;
                std::os::unix::fs::symlink(&target, &host).map_err(|source| {
                    FlattenError::Write {
                        path: path.clone(),
                        source,
                    }
                })?;
            }
            EntryType::Link => {
                let target = link_target(&entry, layer, &path)?;
                let escape = || FlattenError::HardLinkEscape {
                    path: path.clone(),
                    target: target.clone(),
                };
                let target_path = normalize(layer, &target).map_err(|_| escape())?;
                if target_path.as_os_str().is_empty() || target_path == path {
                    return Err(FlattenError::HardLinkTarget { path, target });
                }
                let target_host = self.existing(&target_path, &path)?;
                let is_file = fs::symlink_metadata(&target_host)
                    .map(|metadata| metadata.file_type().is_file())
                    .unwrap_or(false);
                if !is_file {
                    return Err(FlattenError::HardLinkTarget { path, target });
                }
                let host = self.prepare_parents(&path)?;
                self.clear_non_directory(&path, &host)?;
                // linkat(2) without AT_SYMLINK_FOLLOW, and the target was just seen to be a
                // regular file: nothing here follows a symlink.
                fs::hard_link(&target_host, &host).map_err(|source| FlattenError::Write {
                    path: path.clone(),
                    source,
                })?;
            }
            EntryType::Char => {
                return Err(FlattenError::SpecialFile {
                    path,
                    kind: "character device",
                })
            }
            EntryType::Block => {
                return Err(FlattenError::SpecialFile {
                    path,
                    kind: "block device",
                })
            }
            EntryType::Fifo => return Err(FlattenError::SpecialFile { path, kind: "fifo" }),
            other => {
                return Err(FlattenError::UnsupportedEntry {
                    path,
                    kind: other.as_byte(),
                })
            }
        }
        layer_paths.insert(&path);
        Ok(())
    }

    /// Refuses a file over the per-entry cap, or one that cannot fit in what is left of the
    /// total, before reading any of it.
    fn check_size(&self, path: &Path, size: u64) -> Result<(), FlattenError> {
        if size > self.limits.max_entry_bytes {
            return Err(FlattenError::EntryTooLarge {
                path: path.to_owned(),
                size,
                limit: self.limits.max_entry_bytes,
            });
        }
        let used = self.decompressed.load(Ordering::Relaxed);
        if used.saturating_add(size) > self.limits.max_total_bytes {
            return Err(FlattenError::TooManyBytes {
                limit: self.limits.max_total_bytes,
            });
        }
        Ok(())
    }

    /// Makes sure every ancestor of `path` is a real directory, creating missing ones, and
    /// returns the host path of `path` itself.
    fn prepare_parents(&self, path: &Path) -> Result<PathBuf, FlattenError> {
        let mut host = self.root.clone();
        let mut relative = PathBuf::new();
        let mut components = path.components().peekable();
        while let Some(component) = components.next() {
            host.push(component);
            if components.peek().is_none() {
                break;
            }
            relative.push(component);
            match fs::symlink_metadata(&host) {
                Ok(metadata) if metadata.is_dir() => {}
                Ok(metadata) if metadata.file_type().is_symlink() => {
                    return Err(FlattenError::ThroughSymlink {
                        path: path.to_owned(),
                        symlink: relative,
                    })
                }
                Ok(_) => {
                    return Err(FlattenError::ParentNotDirectory {
                        path: path.to_owned(),
                        ancestor: relative,
                    })
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&host)
                        .map_err(|source| FlattenError::Write {
                            path: relative.clone(),
                            source,
                        })?;
                }
                Err(source) => {
                    return Err(FlattenError::Write {
                        path: relative,
                        source,
                    })
                }
            }
        }
        Ok(host)
    }

    /// The host path of an existing `path` whose ancestors are all real directories, for a
    /// hard link from `link`.
    fn existing(&self, path: &Path, link: &Path) -> Result<PathBuf, FlattenError> {
        match self.walk_existing(path)? {
            Some(host) => Ok(host),
            None => Err(FlattenError::HardLinkTarget {
                path: link.to_owned(),
                target: path.to_owned(),
            }),
        }
    }

    /// Walks the ancestors of `path` without creating anything: `None` when one is missing
    /// or is not a directory, an error when one is a symlink.
    fn walk_existing(&self, path: &Path) -> Result<Option<PathBuf>, FlattenError> {
        let mut host = self.root.clone();
        let mut relative = PathBuf::new();
        let mut components = path.components().peekable();
        while let Some(component) = components.next() {
            host.push(component);
            if components.peek().is_none() {
                break;
            }
            relative.push(component);
            match fs::symlink_metadata(&host) {
                Ok(metadata) if metadata.is_dir() => {}
                Ok(metadata) if metadata.file_type().is_symlink() => {
                    return Err(FlattenError::ThroughSymlink {
                        path: path.to_owned(),
                        symlink: relative,
                    })
                }
                Ok(_) => return Ok(None),
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(source) => {
                    return Err(FlattenError::Write {
                        path: relative,
                        source,
                    })
                }
            }
        }
        Ok(Some(host))
    }

    /// Removes whatever is at `host` so a non-directory can take its place (an upper layer's
    /// file replaces a lower layer's directory or file).
    fn clear_non_directory(&self, path: &Path, host: &Path) -> Result<(), FlattenError> {
        remove_any(host).map_err(|source| FlattenError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Applies a whiteout entry at `path`, whose file name is `.wh.<hidden>`.
    fn whiteout(
        &mut self,
        path: &Path,
        hidden: &str,
        layer_paths: &mut LayerPaths,
    ) -> Result<(), FlattenError> {
        let parent = path.parent().unwrap_or(Path::new(""));
        if hidden == ".wh..opq" {
            // The directory itself belongs to this layer (the marker implies it exists).
            let host_parent = if parent.as_os_str().is_empty() {
                self.root.clone()
            } else {
                let host = self.prepare_parents(&parent.join("x"))?;
                let host_parent = host
                    .parent()
                    .map(Path::to_owned)
                    .unwrap_or_else(|| self.root.clone());
                match fs::symlink_metadata(&host_parent) {
                    Ok(metadata) if metadata.is_dir() => {}
                    Ok(_) => {
                        return Err(FlattenError::ParentNotDirectory {
                            path: path.to_owned(),
                            ancestor: parent.to_owned(),
                        })
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        DirBuilder::new()
                            .mode(0o755)
                            .create(&host_parent)
                            .map_err(|source| FlattenError::Write {
                                path: parent.to_owned(),
                                source,
                            })?;
                    }
                    Err(source) => {
                        return Err(FlattenError::Write {
                            path: parent.to_owned(),
                            source,
                        })
                    }
                }
                layer_paths.insert(parent);
                host_parent
            };
            return prune(&host_parent, parent, layer_paths);
        }
        if hidden.starts_with(".wh.") {
            // Other `.wh..wh.` names are aufs bookkeeping (hard-link directories), not
            // whiteouts; OCI says to ignore them.
            return Ok(());
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(FlattenError::InvalidWhiteout {
                path: path.to_owned(),
            });
        }
        let target = parent.join(hidden);
        // A whiteout hides lower layers only, never an entry of its own layer.
        if layer_paths.contains(&target) {
            return Ok(());
        }
        match self.walk_existing(&target)? {
            Some(host) => remove_any(&host).map_err(|source| FlattenError::Write {
                path: target,
                source,
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Flattener {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(error) = fs::remove_dir_all(&self.root) {
                tracing::warn!(path = %self.root.display(), %error, "cannot remove refused rootfs");
            }
        }
    }
}

/// The paths one layer has written, with all their ancestors, so whiteouts (which hide only
/// lower layers) can spare them.
#[derive(Default)]
struct LayerPaths(HashSet<PathBuf>);

impl LayerPaths {
    fn insert(&mut self, path: &Path) {
        let mut current = Some(path);
        while let Some(path) = current {
            if path.as_os_str().is_empty() || !self.0.insert(path.to_owned()) {
                break;
            }
            current = path.parent();
        }
    }

    fn contains(&self, path: &Path) -> bool {
        self.0.contains(path)
    }
}

/// Removes everything under the directory `host` (relative path `relative`) that this layer
/// did not write: the effect of an opaque whiteout on lower layers.
fn prune(host: &Path, relative: &Path, layer_paths: &LayerPaths) -> Result<(), FlattenError> {
    let write_error = |source| FlattenError::Write {
        path: relative.to_owned(),
        source,
    };
    for child in fs::read_dir(host).map_err(write_error)? {
        let child = child.map_err(write_error)?;
        let child_relative = relative.join(child.file_name());
        let child_host = child.path();
        if !layer_paths.contains(&child_relative) {
            remove_any(&child_host).map_err(|source| FlattenError::Write {
                path: child_relative.clone(),
                source,
            })?;
        } else if child.file_type().map(|kind| kind.is_dir()).unwrap_or(false) {
            // `DirEntry::file_type` does not follow symlinks.
            prune(&child_host, &child_relative, layer_paths)?;
        }
    }
    Ok(())
}

/// Removes a file, symlink or whole directory at `host`, never following a symlink; nothing
/// there is fine.
fn remove_any(host: &Path) -> io::Result<()> {
    match fs::symlink_metadata(host) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(host),
        Ok(_) => fs::remove_file(host),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// An archive path as a relative path of plain names; the empty path is the root.
fn normalize(layer: usize, archived: &Path) -> Result<PathBuf, FlattenError> {
    let mut path = PathBuf::new();
    for component in archived.components() {
        match component {
            Component::Normal(name) => path.push(name),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(FlattenError::AbsolutePath {
                    layer,
                    path: archived.to_owned(),
                })
            }
            Component::ParentDir => {
                return Err(FlattenError::ParentComponent {
                    layer,
                    path: archived.to_owned(),
                })
            }
        }
    }
    Ok(path)
}

fn link_target<R: Read>(
    entry: &tar::Entry<'_, R>,
    layer: usize,
    path: &Path,
) -> Result<PathBuf, FlattenError> {
    match entry.link_name() {
        Ok(Some(target)) if !target.as_os_str().is_empty() => Ok(target.into_owned()),
        Ok(_) => Err(FlattenError::MissingLinkTarget {
            path: path.to_owned(),
        }),
        Err(source) => Err(FlattenError::ReadLayer { layer, source }),
    }
}

/// Whether a symlink at `link` (relative to the root) pointing at `target` climbs above the
/// root. An absolute target restarts at the root, as it will inside the sandbox.
fn escapes_root(link: &Path, target: &Path) -> bool {
    let mut depth = link.components().count().saturating_sub(1);
    for component in target.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => depth = 0,
            Component::CurDir => {}
            Component::Normal(_) => depth += 1,
            Component::ParentDir => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return true,
            },
        }
    }
    false
}

/// Passes bytes on while counting them into a shared total, failing once the total passes
/// `limit`; it never hands out more than one byte beyond the limit.
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
    limit: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let used = self.count.load(Ordering::Relaxed);
        if used > self.limit {
            return Err(io::Error::other("decompressed size cap reached"));
        }
        let allowed = usize::try_from(self.limit - used + 1).unwrap_or(usize::MAX);
        let window = buffer.len().min(allowed);
        let Some(window_buffer) = buffer.get_mut(..window) else {
            return Err(io::Error::other("read window out of range"));
        };
        let count = self.inner.read(window_buffer)?;
        let total = used.saturating_add(u64::try_from(count).unwrap_or(u64::MAX));
        self.count.store(total, Ordering::Relaxed);
        if total > self.limit {
            return Err(io::Error::other("decompressed size cap reached"));
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests;
