//! Tests of the store: imports, verification, the rootfs cache, concurrency and eviction.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;

use super::*;
use crate::import::ImportError;
use crate::oci::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST};

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        let old = header.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Two layers: the second deletes `etc/old` with a whiteout and adds `usr/bin/cc`.
fn two_layers() -> Vec<Vec<u8>> {
    vec![
        tar_of(&[("etc/old", b"old"), ("etc/keep", b"keep")]),
        tar_of(&[("etc/.wh.old", b""), ("usr/bin/cc", b"compiler")]),
    ]
}

fn config_for(layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|layer| BlobDigest::of_bytes(layer).to_string())
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": oci::host_architecture(), "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": BlobDigest::of_bytes(bytes).to_string(), "size": bytes.len() })
}

fn put(dir: &Path, bytes: &[u8]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(BlobDigest::of_bytes(bytes).hex()), bytes).unwrap();
}

/// Writes an OCI layout of `layers` (gzip-compressing the second) and returns the manifest.
fn write_layout(dir: &Path, layers: &[Vec<u8>]) -> Vec<u8> {
    let config = config_for(layers);
    put(dir, &config);
    let mut descriptors = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let (media_type, blob) = if index == 1 {
            (OCI_LAYER_GZIP, gzip(layer))
        } else {
            (OCI_LAYER_TAR, layer.clone())
        };
        put(dir, &blob);
        descriptors.push(descriptor(media_type, &blob));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config), "layers": descriptors,
    }))
    .unwrap();
    put(dir, &manifest);
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [descriptor(OCI_MANIFEST, &manifest)] });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    manifest
}

/// Writes a classic `docker save` archive of uncompressed `layers`.
fn write_docker_archive(path: &Path, layers: &[Vec<u8>]) -> BlobDigest {
    let config = config_for(layers);
    let config_digest = BlobDigest::of_bytes(&config);
    let mut builder = tar::Builder::new(File::create(path).unwrap());
    let mut append = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
    };
    let config_name = format!("{}.json", config_digest.hex());
    append(&config_name, &config);
    let mut names = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let name = format!("layer{index}/layer.tar");
        append(&name, layer);
        names.push(name);
    }
    let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": ["toolchain:test"], "Layers": names }]);
    append("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    builder.into_inner().unwrap().flush().unwrap();
    config_digest
}

fn store(dir: &TempDir, limits: Limits) -> ImageStore {
    ImageStore::open(dir.path().join("store"), limits).unwrap()
}

fn listing(root: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for child in fs::read_dir(&dir).unwrap() {
            let path = child.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                lines.push(format!("{relative}/"));
                pending.push(path);
            } else {
                lines.push(format!(
                    "{relative}={}",
                    String::from_utf8_lossy(&fs::read(&path).unwrap())
                ));
            }
        }
    }
    lines.sort();
    lines
}

const EXPECTED: [&str; 5] = [
    "etc/",
    "etc/keep=keep",
    "usr/",
    "usr/bin/",
    "usr/bin/cc=compiler",
];

fn assert_tmp_empty(store: &ImageStore) {
    let left: Vec<_> = fs::read_dir(store.tmp_dir()).unwrap().collect();
    assert!(left.is_empty(), "tmp holds {left:?}");
}

#[test]
fn layout_and_docker_archive_give_the_same_tree() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, Limits::default());
    let layout = dir.path().join("layout");
    let manifest = write_layout(&layout, &two_layers());
    let from_layout = store.import_layout(&layout).unwrap();
    assert_eq!(*from_layout.blob(), BlobDigest::of_bytes(&manifest));

    let archive = dir.path().join("image.tar");
    let config_digest = write_docker_archive(&archive, &two_layers());
    let from_archive = store.import_docker_archive(&archive).unwrap();
    assert_eq!(
        *from_archive.blob(),
        config_digest,
        "a docker-archive is named by its config"
    );

    let layout_tree = store.rootfs(&from_layout).unwrap();
    let archive_tree = store.rootfs(&from_archive).unwrap();
    assert_eq!(
        layout_tree,
        store
            .root()
            .join("rootfs")
            .join(from_layout.hex())
            .join("rootfs")
    );
    assert_ne!(layout_tree, archive_tree);
    assert_eq!(listing(&layout_tree), EXPECTED);
    assert_eq!(listing(&archive_tree), EXPECTED);
    assert_tmp_empty(&store);
}

#[test]
fn a_cached_tree_is_reused_and_touched() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, Limits::default());
    let layout = dir.path().join("layout");
    write_layout(&layout, &two_layers());
    let digest = store.import_layout(&layout).unwrap();
    let tree = store.rootfs(&digest).unwrap();
    let marker = tree.parent().unwrap().join("last-used");
    File::options()
        .write(true)
        .open(&marker)
        .unwrap()
        .set_modified(UNIX_EPOCH)
        .unwrap();
    fs::write(tree.join("etc/probe"), b"same tree").unwrap();
    assert_eq!(store.rootfs(&digest).unwrap(), tree);
    assert!(tree.join("etc/probe").exists(), "the tree was rebuilt");
    assert!(
        fs::metadata(&marker).unwrap().modified().unwrap() > UNIX_EPOCH + Duration::from_secs(1)
    );
}

#[test]
fn corrupted_blobs_are_refused_naming_both_digests() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, Limits::default());
    let layout = dir.path().join("layout");
    write_layout(&layout, &two_layers());
    let digest = store.import_layout(&layout).unwrap();
    let layer = store.layers(&digest).unwrap()[0].digest.clone();
    fs::write(store.blob_path(&layer), tar_of(&[("etc/evil", b"x")])).unwrap();
    let error = store.rootfs(&digest).unwrap_err();
    let message = error.to_string();
    match &error {
        StoreError::BlobMismatch { expected, actual } => {
            assert_eq!(*expected, layer);
            assert!(
                message.contains(&expected.to_string()) && message.contains(&actual.to_string()),
                "{message}"
            );
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert!(!store.root().join("rootfs").join(digest.hex()).exists());
    assert_tmp_empty(&store);

    // The same corruption in a layout is refused at import.
    let other = tempfile::tempdir().unwrap();
    let fresh = ImageStore::open(other.path().join("store"), Limits::default()).unwrap();
    fs::write(layout.join("blobs/sha256").join(layer.hex()), b"tampered").unwrap();
    let error = fresh.import_layout(&layout).unwrap_err();
    assert!(
        matches!(
            error,
            ImportError::Store(StoreError::SizeMismatch { .. } | StoreError::BlobMismatch { .. })
        ),
        "{error}"
    );
    assert!(!fresh.has_blob(&layer));
}

#[test]
fn put_blob_checks_digest_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(
        &dir,
        Limits {
            max_blob_bytes: 8,
            ..Limits::default()
        },
    );
    let right = BlobDigest::of_bytes(b"content");
    assert_eq!(
        store
            .put_blob(&b"content"[..], Some(&right), Some(7))
            .unwrap(),
        (right.clone(), 7)
    );
    assert!(store.has_blob(&right));
    let check =
        |bytes: &[u8], size: Option<u64>| store.put_blob(bytes, Some(&right), size).unwrap_err();
    assert!(matches!(
        check(b"contend", Some(7)),
        StoreError::BlobMismatch { .. }
    ));
    assert!(matches!(
        check(b"content", Some(6)),
        StoreError::SizeMismatch { .. }
    ));
    assert!(matches!(
        check(b"content!!", None),
        StoreError::BlobTooLarge { .. }
    ));
    assert_tmp_empty(&store);
}

#[test]
fn a_refused_image_leaves_no_cache_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, Limits::default());
    let layout = dir.path().join("layout");
    write_layout(
        &layout,
        &[tar_of(&[("../escape", b"x")]), tar_of(&[("a", b"b")])],
    );
    let digest = store.import_layout(&layout).unwrap();
    let error = store.rootfs(&digest).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Flatten {
                source: FlattenError::ParentComponent { .. },
                ..
            }
        ),
        "{error}"
    );
    assert!(!store.root().join("rootfs").join(digest.hex()).exists());
    assert!(!dir.path().join("escape").exists() && !store.root().join("escape").exists());
    assert_tmp_empty(&store);
}

#[test]
fn concurrent_requests_build_one_tree() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(store(&dir, Limits::default()));
    let layout = dir.path().join("layout");
    write_layout(&layout, &two_layers());
    let digest = store.import_layout(&layout).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            let digest = digest.clone();
            std::thread::spawn(move || store.rootfs(&digest).unwrap())
        })
        .collect();
    let paths: Vec<PathBuf> = threads
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect();
    assert!(paths.windows(2).all(|pair| pair[0] == pair[1]), "{paths:?}");
    assert_eq!(listing(&paths[0]), EXPECTED);
    assert_eq!(
        fs::read_dir(store.root().join("rootfs")).unwrap().count(),
        1
    );
    assert_tmp_empty(&store);
}

/// `count` threads asking for `digest`'s tree at the same moment.
fn race_for(
    store: &ImageStore,
    digest: &ImageDigest,
    count: usize,
) -> Vec<Result<PathBuf, StoreError>> {
    let barrier = Arc::new(std::sync::Barrier::new(count));
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let (store, digest, barrier) = (store.clone(), digest.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                store.rootfs(&digest)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect()
}

#[test]
fn concurrent_requests_flatten_once_and_share_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = store(&dir, Limits::default());
    // Slow enough that all requests arrive while the first one flattens.
    store.flatten_delay = Duration::from_millis(300);
    let layout = dir.path().join("layout");
    write_layout(&layout, &two_layers());
    let digest = store.import_layout(&layout).unwrap();
    let layer = store.layers(&digest).unwrap()[0].digest.clone();
    let good = fs::read(store.blob_path(&layer)).unwrap();
    fs::write(store.blob_path(&layer), tar_of(&[("etc/evil", b"x")])).unwrap();
    let failed = race_for(&store, &digest, 6);
    assert_eq!(store.flatten_count(), 1, "one attempt for six requests");
    let shared = failed
        .iter()
        .filter(|result| matches!(result, Err(StoreError::Concurrent { message, .. }) if message.contains(layer.hex())))
        .count();
    let own = failed
        .iter()
        .filter(|result| matches!(result, Err(StoreError::BlobMismatch { .. })))
        .count();
    assert_eq!((own, shared), (1, 5), "{failed:?}");
    // Repaired, a later request tries again, once for all.
    fs::write(store.blob_path(&layer), good).unwrap();
    let paths = race_for(&store, &digest, 6);
    assert_eq!(store.flatten_count(), 2);
    let paths: Vec<PathBuf> = paths.into_iter().map(Result::unwrap).collect();
    assert!(paths.windows(2).all(|pair| pair[0] == pair[1]), "{paths:?}");
    assert_eq!(listing(&paths[0]), EXPECTED);
    assert_tmp_empty(&store);
    // Cached: no more flattening.
    store.rootfs(&digest).unwrap();
    assert_eq!(store.flatten_count(), 2);
}

#[test]
fn eviction_removes_least_recently_used_trees_first() {
    let dir = tempfile::tempdir().unwrap();
    // Each image is one 4 KiB file, so about 6 KiB of tar; the budget holds two.
    let store = store(
        &dir,
        Limits {
            cache_budget_bytes: 13 << 10,
            ..Limits::default()
        },
    );
    let mut digests = Vec::new();
    for (index, byte) in [b'a', b'b', b'c'].into_iter().enumerate() {
        let layout = dir.path().join(format!("layout{index}"));
        write_layout(&layout, &[tar_of(&[("file", &[byte; 4096])])]);
        let digest = store.import_layout(&layout).unwrap();
        let tree = store.rootfs(&digest).unwrap();
        // Distinct, ordered use times whatever the clock's resolution.
        let marker = tree.parent().unwrap().join("last-used");
        let used = UNIX_EPOCH + Duration::from_secs(1_000_000 + index as u64);
        File::options()
            .write(true)
            .open(&marker)
            .unwrap()
            .set_modified(used)
            .unwrap();
        digests.push(digest);
    }
    let cached = |digest: &ImageDigest| store.root().join("rootfs").join(digest.hex()).exists();
    // Building the third evicted the first, the least recently used.
    assert!(!cached(&digests[0]) && cached(&digests[1]) && cached(&digests[2]));
    // Using the second makes the third the oldest; rebuilding the first then evicts the third.
    store.rootfs(&digests[1]).unwrap();
    store.rootfs(&digests[0]).unwrap();
    assert!(cached(&digests[0]) && cached(&digests[1]) && !cached(&digests[2]));
    assert_tmp_empty(&store);
}

#[test]
fn docker_archives_with_mismatched_layers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, Limits::default());
    // Layer files that are gzip-compressed no longer match the config's diff_ids.
    let layers = two_layers();
    let config = config_for(&layers);
    let path = dir.path().join("compressed.tar");
    let mut builder = tar::Builder::new(File::create(&path).unwrap());
    let mut append = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
    };
    append("config.json", &config);
    append("l0.tar.gz", &gzip(&layers[0]));
    append("l1.tar", &layers[1]);
    let manifest =
        serde_json::json!([{ "Config": "config.json", "Layers": ["l0.tar.gz", "l1.tar"] }]);
    append("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    drop(builder);
    let error = store.import_docker_archive(&path).unwrap_err();
    assert!(
        matches!(error, ImportError::DiffIdMismatch { index: 0, .. }),
        "{error}"
    );

    let missing = dir.path().join("missing.tar");
    let mut builder = tar::Builder::new(File::create(&missing).unwrap());
    let manifest =
        serde_json::to_vec(&serde_json::json!([{ "Config": "c.json", "Layers": [] }])).unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_cksum();
    builder
        .append_data(&mut header, "manifest.json", &manifest[..])
        .unwrap();
    drop(builder);
    let error = store.import_docker_archive(&missing).unwrap_err();
    assert!(
        matches!(error, ImportError::ArchiveMissingEntry { ref entry, .. } if entry == "c.json"),
        "{error}"
    );
}

#[test]
fn an_index_resolves_to_the_host_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, Limits::default());
    let layout = dir.path().join("layout");
    let manifest = write_layout(&layout, &two_layers());
    let mut entry = descriptor(OCI_MANIFEST, &manifest);
    entry["platform"] =
        serde_json::json!({ "os": "linux", "architecture": oci::host_architecture() });
    let mut other = descriptor(OCI_MANIFEST, b"{}");
    other["platform"] = serde_json::json!({ "os": "linux", "architecture": "s390x-not-this" });
    let index = serde_json::to_vec(&serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [other, entry] })).unwrap();
    put(&layout, &index);
    let top =
        serde_json::json!({ "schemaVersion": 2, "manifests": [descriptor(OCI_INDEX, &index)] });
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let digest = store.import_layout(&layout).unwrap();
    assert_eq!(*digest.blob(), BlobDigest::of_bytes(&index));
    assert_eq!(listing(&store.rootfs(&digest).unwrap()), EXPECTED);
}
