//! The toolchain image of the tests: the debootstrap root (built by
//! `hpcc_runtime::testing::image`) packed by our own code as a one-layer OCI image layout,
//! cached beside it. Device nodes, FIFOs and sockets are left out (the sandbox provides its
//! own `/dev`; the image store would refuse them).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest as _, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn append_tree(
    builder: &mut tar::Builder<Vec<u8>>,
    root: &Path,
    dir: &Path,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let metadata = fs::symlink_metadata(&path)?;
        let file_type = metadata.file_type();
        let relative = path.strip_prefix(root).unwrap_or(&path);
        if relative.starts_with(".hpcc-test-image-complete") {
            continue;
        }
        if file_type.is_dir() || file_type.is_file() || file_type.is_symlink() {
            builder.append_path_with_name(&path, relative)?;
        }
        if file_type.is_dir() {
            append_tree(builder, root, &path)?;
        }
    }
    Ok(())
}

fn build() -> Result<(PathBuf, String), String> {
    let rootfs = hpcc_runtime::testing::image()?;
    let layout = rootfs.with_file_name("bookworm-gcc-oci");
    let digest_file = layout.join("digest");
    if let Ok(digest) = fs::read_to_string(&digest_file) {
        return Ok((layout, digest.trim().to_owned()));
    }
    let partial = rootfs.with_file_name(format!("bookworm-gcc-oci.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    let blobs = partial.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|e| e.to_string())?;
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    append_tree(&mut builder, &rootfs, &rootfs).map_err(|e| format!("packing the image: {e}"))?;
    let layer = builder.into_inner().map_err(|e| e.to_string())?;
    let layer_digest = sha256_hex(&layer);
    fs::write(blobs.join(&layer_digest), &layer).map_err(|e| e.to_string())?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
        "config": {},
    })
    .to_string();
    let config_digest = sha256_hex(config.as_bytes());
    fs::write(blobs.join(&config_digest), &config).map_err(|e| e.to_string())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": layer.len()}],
    })
    .to_string();
    let manifest_digest = sha256_hex(manifest.as_bytes());
    fs::write(blobs.join(&manifest_digest), &manifest).map_err(|e| e.to_string())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{manifest_digest}"), "size": manifest.len()}],
    })
    .to_string();
    fs::write(partial.join("index.json"), index).map_err(|e| e.to_string())?;
    fs::write(
        partial.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(|e| e.to_string())?;
    let digest = format!("sha256:{manifest_digest}");
    let mut file = fs::File::create(partial.join("digest")).map_err(|e| e.to_string())?;
    file.write_all(digest.as_bytes())
        .map_err(|e| e.to_string())?;
    match fs::rename(&partial, &layout) {
        Ok(()) => {}
        Err(_) if digest_file.exists() => {
            let _ = fs::remove_dir_all(&partial);
            return build();
        }
        Err(error) => return Err(format!("publishing {}: {error}", layout.display())),
    }
    Ok((layout, digest))
}

/// The OCI layout directory of the test toolchain image, and the digest it is expected to
/// import as.
pub fn layout() -> Result<(PathBuf, String), String> {
    static LAYOUT: OnceLock<Result<(PathBuf, String), String>> = OnceLock::new();
    LAYOUT.get_or_init(build).clone()
}
