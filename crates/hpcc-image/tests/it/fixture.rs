//! The synthetic toolchain image: two layers, the second with a whiteout, a gzip-compressed
//! layer, a symlink and a hard link; written as an OCI layout and as a docker-archive, and
//! pushed to a registry. Also a listing of a tree, to compare trees exactly.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use hpcc_image::oci::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST};
use hpcc_image::BlobDigest;

/// The image's blobs, in every form the tests need.
pub struct Image {
    /// The uncompressed layers, lowest first.
    pub layers: Vec<Vec<u8>>,
    /// The layers as stored in a registry or layout (the second gzip-compressed).
    pub stored_layers: Vec<(Vec<u8>, &'static str)>,
    /// The config.
    pub config: Vec<u8>,
    /// The manifest.
    pub manifest: Vec<u8>,
}

/// One tar entry.
enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        match *entry {
            Entry::Dir(path, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(mode);
                header.set_size(0);
                builder.append_data(&mut header, path, &b""[..]).unwrap();
            }
            Entry::File(path, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data).unwrap();
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target).unwrap();
            }
            Entry::Hard(path, target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                header.set_size(0);
                builder.append_link(&mut header, path, target).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": BlobDigest::of_bytes(bytes).to_string(), "size": bytes.len() })
}

/// Builds the image.
pub fn image() -> Image {
    use Entry::*;
    let lower = tar_of(&[
        Dir("usr/", 0o755),
        Dir("usr/bin/", 0o755),
        File("usr/bin/gcc", b"#!gcc\n", 0o4755),
        Hard("usr/bin/cc", "usr/bin/gcc"),
        Dir("etc/", 0o755),
        File("etc/obsolete.conf", b"old\n", 0o644),
        Dir("opt/cache/", 0o755),
        File("opt/cache/stale", b"stale\n", 0o600),
    ]);
    let upper = tar_of(&[
        Dir("etc/", 0o755),
        File("etc/.wh.obsolete.conf", b"", 0o644),
        File("etc/toolchain.conf", b"version=2\n", 0o644),
        Dir("opt/cache/", 0o755),
        File("opt/cache/.wh..wh..opq", b"", 0o644),
        File("opt/cache/fresh", b"fresh\n", 0o644),
        Symlink("usr/bin/c99", "/usr/bin/gcc"),
        Symlink("bin", "usr/bin"),
    ]);
    let layers = vec![lower, upper];
    let stored_layers = vec![
        (layers[0].clone(), OCI_LAYER_TAR),
        (gzip(&layers[1]), OCI_LAYER_GZIP),
    ];
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|layer| BlobDigest::of_bytes(layer).to_string())
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": hpcc_image::oci::host_architecture(), "os": "linux",
        "config": {}, "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": stored_layers.iter().map(|(bytes, media_type)| descriptor(media_type, bytes)).collect::<Vec<_>>(),
    }))
    .unwrap();
    Image {
        layers,
        stored_layers,
        config,
        manifest,
    }
}

/// The tree the image must flatten to.
pub const EXPECTED: &[&str] = &[
    "link bin -> usr/bin",
    "dir etc 755",
    "file etc/toolchain.conf 644 n1 version=2\n",
    "dir opt 755",
    "dir opt/cache 755",
    "file opt/cache/fresh 644 n1 fresh\n",
    "dir usr 755",
    "dir usr/bin 755",
    "link usr/bin/c99 -> /usr/bin/gcc",
    "file usr/bin/cc 755 n2 #!gcc\n",
    "file usr/bin/gcc 755 n2 #!gcc\n",
];

impl Image {
    /// Writes the image as an OCI layout directory.
    pub fn write_layout(&self, dir: &Path) {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let put =
            |bytes: &[u8]| fs::write(blobs.join(BlobDigest::of_bytes(bytes).hex()), bytes).unwrap();
        put(&self.config);
        put(&self.manifest);
        for (bytes, _) in &self.stored_layers {
            put(bytes);
        }
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": [descriptor(OCI_MANIFEST, &self.manifest)] });
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    /// Writes the image as a classic `docker save` tarball (uncompressed layers).
    pub fn write_docker_archive(&self, path: &Path) {
        let mut builder = tar::Builder::new(fs::File::create(path).unwrap());
        let mut append = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, data).unwrap();
        };
        let config_name = format!("{}.json", BlobDigest::of_bytes(&self.config).hex());
        append(&config_name, &self.config);
        let mut layer_names = Vec::new();
        for (index, layer) in self.layers.iter().enumerate() {
            let name = format!("{index:064}/layer.tar");
            append(&name, layer);
            layer_names.push(name);
        }
        append("repositories", br#"{"toolchain":{"test":"x"}}"#);
        let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": ["toolchain:test"], "Layers": layer_names }]);
        append("manifest.json", &serde_json::to_vec(&manifest).unwrap());
        builder.into_inner().unwrap().flush().unwrap();
    }
}

/// The tree under `root`, one sorted line per path: kind, path, mode, links, and content or
/// target. Symlinks are listed, never followed.
pub fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, lines: &mut Vec<String>) {
        let mut children: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        children.sort();
        for child in children {
            let relative = child.strip_prefix(root).unwrap().display().to_string();
            let metadata = fs::symlink_metadata(&child).unwrap();
            let mode = metadata.permissions().mode() & 0o7777;
            if metadata.file_type().is_symlink() {
                lines.push(format!(
                    "link {relative} -> {}",
                    fs::read_link(&child).unwrap().display()
                ));
            } else if metadata.is_dir() {
                lines.push(format!("dir {relative} {mode:o}"));
                walk(root, &child, lines);
            } else {
                let content = String::from_utf8_lossy(&fs::read(&child).unwrap()).into_owned();
                lines.push(format!(
                    "file {relative} {mode:o} n{} {content}",
                    metadata.nlink()
                ));
            }
        }
    }
    let mut lines = Vec::new();
    walk(root, root, &mut lines);
    lines
}
