//! Pulling by digest from a real registry, and agreement with the offline imports.

use std::fs;

use hpcc_image::{BlobDigest, ImageStore, Limits, PullError, PullOptions, StoreError};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::fixture::{self, Image, EXPECTED};
use crate::registry::Registry;
use crate::{Case, Need, TestResult};

/// The tests of this module.
pub fn cases() -> Vec<Case> {
    vec![
        (
            "pull_layout_and_docker_archive_agree",
            &[Need::DockerRegistry],
            pull_layout_and_docker_archive_agree,
        ),
        (
            "pull_refuses_a_corrupted_blob",
            &[Need::DockerRegistry],
            pull_refuses_a_corrupted_blob,
        ),
        (
            "pull_refuses_an_unknown_digest",
            &[Need::DockerRegistry],
            pull_refuses_an_unknown_digest,
        ),
        ("imports_agree_offline", &[], imports_agree_offline),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Pushes `image` as `<registry>/toolchain:test` with oci-client and returns the reference by
/// digest.
fn push(registry: &Registry, image: &Image) -> Result<String, String> {
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(vec![registry.address.clone()]),
        ..ClientConfig::default()
    });
    let tagged: Reference = format!("{}/toolchain:test", registry.address)
        .parse()
        .map_err(|error| format!("{error}"))?;
    let runtime = runtime();
    runtime.block_on(async {
        client
            .store_auth_if_needed(tagged.resolve_registry(), &RegistryAuth::Anonymous)
            .await;
        for bytes in image
            .stored_layers
            .iter()
            .map(|(bytes, _)| bytes)
            .chain([&image.config])
        {
            let digest = BlobDigest::of_bytes(bytes).to_string();
            client
                .push_blob(&tagged, bytes.clone(), &digest)
                .await
                .map_err(|error| format!("push blob: {error}"))?;
        }
        let content_type = http::HeaderValue::from_static(hpcc_image::oci::OCI_MANIFEST);
        client
            .push_manifest_raw(&tagged, image.manifest.clone(), content_type)
            .await
            .map_err(|error| format!("push manifest: {error}\n{}", registry.log()))?;
        Ok::<(), String>(())
    })?;
    Ok(format!(
        "{}/toolchain@{}",
        registry.address,
        BlobDigest::of_bytes(&image.manifest)
    ))
}

fn check_tree(what: &str, tree: &std::path::Path) -> TestResult {
    let listing = fixture::listing(tree);
    if listing != EXPECTED {
        return Err(format!(
            "{what}: tree differs:\n got: {listing:#?}\nwant: {EXPECTED:#?}"
        ));
    }
    Ok(())
}

fn pull_layout_and_docker_archive_agree() -> TestResult {
    let registry = Registry::start()?;
    let image = fixture::image();
    let reference = push(&registry, &image)?;
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let store = ImageStore::open(dir.path().join("store"), Limits::default())
        .map_err(|error| format!("{error:#}"))?;

    let pulled = runtime()
        .block_on(store.pull(&reference, &PullOptions::default()))
        .map_err(|error| format!("pull: {error:?}"))?;
    if *pulled.blob() != BlobDigest::of_bytes(&image.manifest) {
        return Err(format!("pulled digest {pulled} is not the manifest's"));
    }
    let pulled_tree = store
        .rootfs(&pulled)
        .map_err(|error| format!("rootfs: {error:?}"))?;
    check_tree("pulled", &pulled_tree)?;

    // The same image from a layout in a second store (so no blob is shared).
    let layout = dir.path().join("layout");
    image.write_layout(&layout);
    let other = ImageStore::open(dir.path().join("other"), Limits::default())
        .map_err(|error| error.to_string())?;
    let from_layout = other
        .import_layout(&layout)
        .map_err(|error| format!("import layout: {error:?}"))?;
    if from_layout != pulled {
        return Err(format!(
            "layout digest {from_layout} differs from pulled {pulled}"
        ));
    }
    check_tree(
        "layout",
        &other
            .rootfs(&from_layout)
            .map_err(|error| format!("{error:?}"))?,
    )?;

    let archive = dir.path().join("image.tar");
    image.write_docker_archive(&archive);
    let from_archive = store
        .import_docker_archive(&archive)
        .map_err(|error| format!("import archive: {error:?}"))?;
    if *from_archive.blob() != BlobDigest::of_bytes(&image.config) {
        return Err(format!(
            "docker-archive digest {from_archive} is not the config's"
        ));
    }
    let archive_tree = store
        .rootfs(&from_archive)
        .map_err(|error| format!("{error:?}"))?;
    check_tree("docker-archive", &archive_tree)?;
    if archive_tree == pulled_tree {
        return Err("two images share one cache entry".to_owned());
    }

    // A second pull finds every blob in the store, and the cached tree is reused.
    let again = runtime()
        .block_on(store.pull(&reference, &PullOptions::default()))
        .map_err(|error| format!("{error:?}"))?;
    if store.rootfs(&again).map_err(|error| format!("{error:?}"))? != pulled_tree {
        return Err("second pull did not reuse the cached tree".to_owned());
    }
    Ok(())
}

fn pull_refuses_a_corrupted_blob() -> TestResult {
    let registry = Registry::start()?;
    let image = fixture::image();
    let reference = push(&registry, &image)?;
    let (layer, _) = &image.stored_layers[1];
    let layer_digest = BlobDigest::of_bytes(layer);
    let data = registry.blob_data(layer_digest.hex());
    let mut corrupted = layer.clone();
    let last = corrupted.len() - 1;
    corrupted[last] ^= 0xff;
    fs::write(&data, &corrupted).map_err(|error| format!("corrupt {}: {error}", data.display()))?;

    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let store = ImageStore::open(dir.path().join("store"), Limits::default())
        .map_err(|error| error.to_string())?;
    match runtime().block_on(store.pull(&reference, &PullOptions::default())) {
        Err(PullError::Store(StoreError::BlobMismatch { expected, .. }))
            if expected == layer_digest => {}
        // oci-client may notice first, from the registry's digest header or its own hashing.
        Err(PullError::Body { digest, .. }) if digest == layer_digest => {}
        other => {
            return Err(format!(
                "expected a digest mismatch for {layer_digest}, got {other:?}"
            ))
        }
    }
    if store.has_blob(&layer_digest) {
        return Err("the corrupted blob was stored".to_owned());
    }
    if fs::read_dir(store.root().join("tmp"))
        .map_err(|error| error.to_string())?
        .count()
        != 0
    {
        return Err("staging files left behind".to_owned());
    }
    Ok(())
}

fn pull_refuses_an_unknown_digest() -> TestResult {
    let registry = Registry::start()?;
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let store = ImageStore::open(dir.path().join("store"), Limits::default())
        .map_err(|error| error.to_string())?;
    let reference = format!(
        "{}/toolchain@{}",
        registry.address,
        BlobDigest::of_bytes(b"no such manifest")
    );
    match runtime().block_on(store.pull(&reference, &PullOptions::default())) {
        Err(PullError::Registry { .. }) => Ok(()),
        other => Err(format!("expected a registry error, got {other:?}")),
    }
}

fn imports_agree_offline() -> TestResult {
    let image = fixture::image();
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let store = ImageStore::open(dir.path().join("store"), Limits::default())
        .map_err(|error| error.to_string())?;
    let layout = dir.path().join("layout");
    image.write_layout(&layout);
    let from_layout = store
        .import_layout(&layout)
        .map_err(|error| format!("{error:?}"))?;
    check_tree(
        "layout",
        &store
            .rootfs(&from_layout)
            .map_err(|error| format!("{error:?}"))?,
    )?;
    let archive = dir.path().join("image.tar");
    image.write_docker_archive(&archive);
    let from_archive = store
        .import_docker_archive(&archive)
        .map_err(|error| format!("{error:?}"))?;
    check_tree(
        "docker-archive",
        &store
            .rootfs(&from_archive)
            .map_err(|error| format!("{error:?}"))?,
    )
}
