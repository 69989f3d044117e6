//! Making a toolchain image: a root file system directory (a `debootstrap` run, a container
//! export) packed as a one-layer OCI image layout, whose manifest digest is what workers'
//! `images`, tenants' `allowed_images` and clients' `image` name (`hpcc-worker make-image`).
//!
//! The layer is an uncompressed tar of the tree in name order, written to disk while it is
//! hashed (a toolchain root is hundreds of MB: never held in memory). Directories, regular
//! files and symbolic links go in with their modes, owners and times; device nodes, FIFOs and
//! sockets are left out and listed in the [`Packed`] summary, since an image holding them is
//! refused at import (a worker's guest or sandbox provides its own `/dev`). Symbolic links are
//! stored as links, never followed. The same tree with the same metadata packs to the same
//! digest.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::oci::{OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST};
use crate::{BlobDigest, ImageDigest};

/// What packing made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// The image's digest (its manifest's).
    pub digest: ImageDigest,
    /// The layer's size in bytes.
    pub layer_bytes: u64,
    /// Entries packed (directories, files and links).
    pub entries: u64,
    /// What was left out (device nodes, FIFOs, sockets), relative to the root.
    pub skipped: Vec<PathBuf>,
}

/// Why a tree could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The root is not a directory.
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The layout directory exists and is not empty.
    #[error("{}: exists and is not empty (a layout is written into a new directory)", .0.display())]
    LayoutExists(PathBuf),
    /// The layout would be inside the tree it packs.
    #[error("{}: inside the root file system being packed", .0.display())]
    LayoutInsideRoot(PathBuf),
    /// Reading the tree or writing the layout failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A writer that hashes what it passes on and counts it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buffer)?;
        self.hash.update(&buffer[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Packs the tree at `root` as an OCI image layout in `layout` (created; it must not exist or
/// be empty), `architecture` being the image config's (`amd64`, `arm64`).
pub fn pack_rootfs(root: &Path, layout: &Path, architecture: &str) -> Result<Packed, PackError> {
    if !fs::metadata(root).map_err(io_error(root))?.is_dir() {
        return Err(PackError::NotADirectory(root.to_owned()));
    }
    if fs::read_dir(layout).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(PackError::LayoutExists(layout.to_owned()));
    }
    let absolute_root = fs::canonicalize(root).map_err(io_error(root))?;
    let layout_parent = layout
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty());
    let absolute_parent =
        fs::canonicalize(layout_parent.unwrap_or(Path::new("."))).map_err(io_error(layout))?;
    if absolute_parent.starts_with(&absolute_root) {
        return Err(PackError::LayoutInsideRoot(layout.to_owned()));
    }
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_error(&blobs))?;
    let partial = blobs.join(".layer.partial");
    let file = fs::File::create(&partial).map_err(io_error(&partial))?;
    let mut builder = tar::Builder::new(Hashing {
        inner: io::BufWriter::new(file),
        hash: Sha256::new(),
        bytes: 0,
    });
    builder.follow_symlinks(false);
    let mut entries = 0;
    let mut skipped = Vec::new();
    append_tree(&mut builder, root, root, &mut entries, &mut skipped)?;
    let mut hashing = builder.into_inner().map_err(io_error(&partial))?;
    hashing.flush().map_err(io_error(&partial))?;
    let layer_bytes = hashing.bytes;
    let layer = BlobDigest::parse(&format!("sha256:{:x}", hashing.hash.finalize()))
        .map_err(|error| io_error(&partial)(io::Error::other(error)))?;
    let layer_path = blobs.join(layer.hex());
    fs::rename(&partial, &layer_path).map_err(io_error(&layer_path))?;

    let config = serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.to_string()]},
        "config": {},
    })
    .to_string();
    let config_digest = put(&blobs, config.as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": layer.to_string(), "size": layer_bytes}],
    })
    .to_string();
    let manifest_digest = put(&blobs, manifest.as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest.to_string(), "size": manifest.len()}],
    })
    .to_string();
    let index_path = layout.join("index.json");
    fs::write(&index_path, index).map_err(io_error(&index_path))?;
    let marker = layout.join("oci-layout");
    fs::write(&marker, r#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_error(&marker))?;
    Ok(Packed {
        digest: ImageDigest::from(manifest_digest),
        layer_bytes,
        entries,
        skipped,
    })
}

/// Writes `bytes` as a blob of `blobs`; its digest.
fn put(blobs: &Path, bytes: &[u8]) -> Result<BlobDigest, PackError> {
    let digest = BlobDigest::of_bytes(bytes);
    let path = blobs.join(digest.hex());
    fs::write(&path, bytes).map_err(io_error(&path))?;
    Ok(digest)
}

fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    dir: &Path,
    entries: &mut u64,
    skipped: &mut Vec<PathBuf>,
) -> Result<(), PackError> {
    let mut children: Vec<fs::DirEntry> = fs::read_dir(dir)
        .map_err(io_error(dir))?
        .collect::<Result<_, _>>()
        .map_err(io_error(dir))?;
    children.sort_by_key(fs::DirEntry::file_name);
    for child in children {
        let path = child.path();
        let kind = fs::symlink_metadata(&path)
            .map_err(io_error(&path))?
            .file_type();
        let relative = path.strip_prefix(root).unwrap_or(&path);
        if kind.is_dir() || kind.is_file() || kind.is_symlink() {
            builder
                .append_path_with_name(&path, relative)
                .map_err(io_error(&path))?;
            *entries += 1;
        } else {
            skipped.push(relative.to_owned());
        }
        if kind.is_dir() {
            append_tree(builder, root, &path, entries, skipped)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("a temporary directory");
        fs::create_dir_all(root.path().join("usr/bin")).expect("dirs");
        fs::write(root.path().join("usr/bin/gcc"), "#!gcc\n").expect("a file");
        std::os::unix::fs::symlink("usr/bin", root.path().join("bin")).expect("a link");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.path().join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .expect("a FIFO");
        root
    }

    #[test]
    fn a_tree_packs_to_a_layout_the_store_imports() {
        let root = tree();
        let out = tempfile::tempdir().expect("a temporary directory");
        let layout = out.path().join("layout");
        let packed = pack_rootfs(root.path(), &layout, "amd64").expect("packed");
        assert_eq!(packed.entries, 4, "usr, usr/bin, usr/bin/gcc, bin");
        assert_eq!(packed.skipped, [PathBuf::from("fifo")]);
        let store = crate::ImageStore::open(out.path().join("store"), crate::Limits::default())
            .expect("a store");
        let imported = store.import_layout(&layout).expect("imported");
        assert_eq!(imported, packed.digest);
        let rootfs = store.rootfs(&imported).expect("flattened");
        assert_eq!(
            fs::read_to_string(rootfs.join("usr/bin/gcc")).expect("gcc"),
            "#!gcc\n"
        );
        assert_eq!(
            fs::read_link(rootfs.join("bin")).expect("a link"),
            Path::new("usr/bin")
        );
        // The same tree packs to the same image.
        let again = pack_rootfs(root.path(), &out.path().join("again"), "amd64").expect("packed");
        assert_eq!(again.digest, packed.digest);
    }

    #[test]
    fn bad_roots_and_layouts_are_refused() {
        let root = tree();
        let file = root.path().join("usr/bin/gcc");
        assert!(matches!(
            pack_rootfs(&file, &root.path().join("out"), "amd64"),
            Err(PackError::NotADirectory(_))
        ));
        assert!(matches!(
            pack_rootfs(root.path(), root.path(), "amd64"),
            Err(PackError::LayoutExists(_))
        ));
        assert!(matches!(
            pack_rootfs(root.path(), &root.path().join("usr/layout"), "amd64"),
            Err(PackError::LayoutInsideRoot(_))
        ));
        assert!(matches!(
            pack_rootfs(
                &root.path().join("absent"),
                &root.path().join("out"),
                "amd64"
            ),
            Err(PackError::Io { .. })
        ));
    }
}
