//! The toolchain image of the tests: the debootstrap root (built by
//! `hpcc_runtime::testing::image`) packed by `hpcc_image::pack_rootfs` (what `hpcc-worker
//! make-image` runs) as a one-layer OCI image layout, cached beside it.

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

fn build() -> Result<(PathBuf, String), String> {
    let rootfs = hpcc_runtime::testing::image()?;
    let layout = rootfs.with_file_name("bookworm-gcc-oci");
    let digest_file = layout.join("digest");
    if let Ok(digest) = fs::read_to_string(&digest_file) {
        return Ok((layout, digest.trim().to_owned()));
    }
    let partial = rootfs.with_file_name(format!("bookworm-gcc-oci.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    // What `hpcc-worker make-image` does.
    let packed = hpcc_image::pack_rootfs(&rootfs, &partial, "amd64")
        .map_err(|error| format!("packing the image: {error}"))?;
    let digest = packed.digest.to_string();
    fs::write(partial.join("digest"), &digest).map_err(|e| e.to_string())?;
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
