//! Toolchain images for remote compilation.
//!
//! A worker runs each compile in a sandbox whose root file system is an OCI image, and the
//! image's digest *is* the toolchain's identity. This crate turns an image into a flattened
//! root file system directory on the host, safely, and caches those trees by digest.
//!
//! ```text
//!  registry ──pull──┐
//!  OCI layout ──────┼──► ImageStore: blobs/sha256/<hex> (verified) ──rootfs──► rootfs/<hex>/rootfs
//!  docker save .tar ┘                     layers, lowest first ──► Flattener (checked tar)
//! ```
//!
//! - [`digest`]: `sha256:<hex>` digests ([`BlobDigest`], [`ImageDigest`]) and streaming
//!   verification.
//! - [`flatten`]: applying layers with whiteouts, refusing anything that could write outside
//!   the target, within caps ([`Flattener`], [`FlattenLimits`]).
//! - [`oci`]: the JSON documents and media types.
//! - [`store`]: [`ImageStore`], its blob store and rootfs cache with LRU eviction; an image
//!   is flattened once however many jobs ask for it at once ([`flight`]).
//! - [`import`]: OCI layout directories and docker-archives, for air-gapped sites.
//! - [`pull`]: registries, through `oci-client`.
//! - [`pack`]: the other way, a root file system directory packed as an OCI layout
//!   (`hpcc-worker make-image`), which is how toolchain images are made.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use hpcc_image::{ImageStore, Limits, PullOptions};
//!
//! let store = ImageStore::open("/var/cache/hpcc/images", Limits::default())?;
//! let digest = store
//!     .pull("registry.example/toolchains/gcc@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", &PullOptions::default())
//!     .await?;
//! let rootfs = tokio::task::spawn_blocking(move || store.rootfs(&digest)).await??;
//! println!("{}", rootfs.display());
//! # Ok(())
//! # }
//! ```
//!
//! **Invariant:** nothing in this crate follows a symlink found in an image, and nothing is
//! written outside the store directory; the returned trees must be used the same way.
//!
//! It is a crate of its own, rather than part of `hpcc-runtime`, so that the code parsing
//! hostile archives lives where unsafe code is forbidden.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod digest;
pub mod flatten;
pub mod flight;
pub mod import;
pub mod oci;
pub mod pack;
pub mod pull;
pub mod store;

pub use digest::{BlobDigest, DigestError, ImageDigest};
pub use flatten::{Compression, FlattenError, FlattenLimits, FlattenSummary, Flattener};
pub use import::ImportError;
pub use pack::{pack_rootfs, PackError, Packed};
pub use pull::{PullError, PullOptions, RegistryAuth};
pub use store::{ImageStore, Layer, Limits, StoreError};
