//! Pulling an image from an OCI registry by digest, through `oci-client`, into the store.
//!
//! Only digest references are accepted: the digest is the toolchain's identity, and a tag
//! could name different bytes tomorrow. Every blob is written to the store through the same
//! verification as an import (digest and declared size), so a pulled image is flattened
//! exactly like an imported one.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::{Client, Reference};
use tracing::instrument;

use crate::digest::{BlobDigest, HashingWriter, ImageDigest};
use crate::oci::{self, Described, Descriptor};
use crate::store::{ImageStore, StoreError, MAX_JSON_BYTES};

/// How to authenticate to a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RegistryAuth {
    /// No credentials (anonymous token, where the registry asks for one).
    #[default]
    Anonymous,
    /// HTTP basic credentials (also exchanged for a bearer token where the registry asks).
    Basic {
        /// The user name.
        username: String,
        /// The password or access token.
        password: String,
    },
}

impl fmt::Debug for RegistryAuth {
    // The password never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
        }
    }
}

/// Options of [`ImageStore::pull`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullOptions {
    /// Credentials.
    pub auth: RegistryAuth,
    /// Speak plain HTTP to a registry that is not on a loopback address. Loopback registries
    /// (`127.0.0.0/8`, `::1`, `localhost`) always get plain HTTP: the traffic never leaves
    /// the machine, and they rarely have certificates.
    pub insecure_http: bool,
    /// Timeout of connecting, and of each read from the connection.
    pub timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            auth: RegistryAuth::Anonymous,
            insecure_http: false,
            timeout: Duration::from_secs(60),
        }
    }
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}")]
    Reference {
        /// The reference.
        reference: String,
        /// The cause.
        #[source]
        source: oci_client::ParseError,
    },
    /// The reference has no digest, or not a sha256 one.
    #[error("image reference {reference:?} must name a sha256 digest (`repo@sha256:...`)")]
    NoDigest {
        /// The reference.
        reference: String,
    },
    /// The registry refused or failed a request.
    #[error("registry request for {what} of {reference} failed")]
    Registry {
        /// The reference.
        reference: String,
        /// `manifest sha256:...` or `blob sha256:...`.
        what: String,
        /// The cause.
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    /// Reading a blob's body failed.
    #[error("reading blob {digest} from {reference} failed")]
    Body {
        /// The reference.
        reference: String,
        /// The blob.
        digest: BlobDigest,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The registry sent a manifest that does not hash to the digest it was asked for.
    #[error("manifest from {reference} hashes to {actual}, not {expected}")]
    ManifestMismatch {
        /// The reference.
        reference: String,
        /// The digest asked for.
        expected: BlobDigest,
        /// The digest of what was sent.
        actual: BlobDigest,
    },
    /// The manifest is not an image manifest or index.
    #[error("{digest} from {reference} is not an image manifest or index")]
    NotAManifest {
        /// The reference.
        reference: String,
        /// The blob.
        digest: BlobDigest,
    },
    /// Storing or checking a blob failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether a registry (`host`, `host:port`, `[v6]:port`) is on a loopback address.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(host, _)| host)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

impl ImageStore {
    /// Pulls `reference` (`registry/repository@sha256:<hex>`) into the store and returns its
    /// digest. Blobs already in the store are not fetched again.
    ///
    /// For an index, the manifest for this host's platform is pulled too, and the digest
    /// returned is the index's (what the reference names); [`ImageStore::rootfs`] resolves it.
    #[instrument(skip_all, fields(reference = %reference))]
    pub async fn pull(
        &self,
        reference: &str,
        options: &PullOptions,
    ) -> Result<ImageDigest, PullError> {
        let parsed = Reference::try_from(reference).map_err(|source| PullError::Reference {
            reference: reference.to_owned(),
            source,
        })?;
        let digest = parsed
            .digest()
            .and_then(|digest| BlobDigest::parse(digest).ok())
            .ok_or_else(|| PullError::NoDigest {
                reference: reference.to_owned(),
            })?;
        let protocol = if options.insecure_http || is_loopback(parsed.registry()) {
            ClientProtocol::HttpsExcept(vec![
                parsed.registry().to_owned(),
                parsed.resolve_registry().to_owned(),
            ])
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            read_timeout: Some(options.timeout),
            connect_timeout: Some(options.timeout),
            platform_resolver: None,
            ..ClientConfig::default()
        });
        let auth = match &options.auth {
            RegistryAuth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            RegistryAuth::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
        };
        let puller = Puller {
            store: self,
            client,
            auth,
            reference: reference.to_owned(),
            parsed,
        };

        let manifest = match puller.manifest(&digest).await? {
            Described::Manifest(manifest) => manifest,
            Described::Index(index) => {
                let chosen = index
                    .host_manifest()
                    .ok_or_else(|| StoreError::NoPlatform {
                        digest: digest.clone(),
                    })?;
                match puller.manifest(&chosen.digest).await? {
                    Described::Manifest(manifest) => manifest,
                    _ => {
                        return Err(StoreError::NestedIndex {
                            digest: chosen.digest.clone(),
                        }
                        .into())
                    }
                }
            }
            Described::Config(_) => {
                return Err(PullError::NotAManifest {
                    reference: reference.to_owned(),
                    digest,
                })
            }
        };
        puller.blob(&manifest.config).await?;
        for layer in &manifest.layers {
            puller.blob(layer).await?;
        }
        Ok(ImageDigest::from(digest))
    }
}

/// One pull's client and reference.
struct Puller<'a> {
    store: &'a ImageStore,
    client: Client,
    auth: oci_client::secrets::RegistryAuth,
    reference: String,
    parsed: Reference,
}

impl Puller<'_> {
    /// Fetches manifest `digest`, checks and stores it, and parses it.
    async fn manifest(&self, digest: &BlobDigest) -> Result<Described, PullError> {
        if !self.store.has_blob(digest) {
            let by_digest = self.parsed.clone_with_digest(digest.to_string());
            let (bytes, _) = self
                .client
                .pull_manifest_raw(&by_digest, &self.auth, &oci::MANIFEST_TYPES)
                .await
                .map_err(|source| PullError::Registry {
                    reference: self.reference.clone(),
                    what: format!("manifest {digest}"),
                    source,
                })?;
            if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_JSON_BYTES {
                return Err(StoreError::BlobTooLarge {
                    digest: digest.to_string(),
                    limit: MAX_JSON_BYTES,
                }
                .into());
            }
            // Hashed here rather than trusting the client's check: this is the identity.
            let actual = BlobDigest::of_bytes(&bytes);
            if actual != *digest {
                return Err(PullError::ManifestMismatch {
                    reference: self.reference.clone(),
                    expected: digest.clone(),
                    actual,
                });
            }
            self.store.put_blob(&bytes[..], Some(digest), None)?;
        }
        Ok(self.store.describe(digest)?)
    }

    /// Fetches the blob `descriptor` names into the store, unless it is there already.
    async fn blob(&self, descriptor: &Descriptor) -> Result<(), PullError> {
        let digest = &descriptor.digest;
        if self.store.has_blob(digest) {
            return Ok(());
        }
        let limit = self.store.limits().max_blob_bytes;
        if descriptor.size > limit {
            return Err(StoreError::BlobTooLarge {
                digest: digest.to_string(),
                limit,
            }
            .into());
        }
        let request = OciDescriptor {
            media_type: descriptor.media_type.clone(),
            digest: digest.to_string(),
            size: i64::try_from(descriptor.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(&self.parsed, &request)
            .await
            .map_err(|source| PullError::Registry {
                reference: self.reference.clone(),
                what: format!("blob {digest}"),
                source,
            })?;
        let tmp = self.store.tmp_dir();
        let write_error = |source| StoreError::WriteBlob {
            path: tmp.clone(),
            source,
        };
        let staged = tempfile::NamedTempFile::new_in(&tmp).map_err(write_error)?;
        let mut writer = HashingWriter::new(staged);
        let mut received: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| PullError::Body {
                reference: self.reference.clone(),
                digest: digest.clone(),
                source,
            })?;
            received = received.saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
            if received > descriptor.size {
                return Err(StoreError::SizeMismatch {
                    digest: digest.clone(),
                    declared: descriptor.size,
                    actual: received,
                }
                .into());
            }
            // A chunk is at most a few tens of KiB: writing it to the page cache is cheaper
            // than a hop to the blocking pool.
            writer.write_all(&chunk).map_err(write_error)?;
        }
        let (staged, actual, length) = writer.finish();
        if length != descriptor.size {
            return Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                declared: descriptor.size,
                actual: length,
            }
            .into());
        }
        if actual != *digest {
            return Err(StoreError::BlobMismatch {
                expected: digest.clone(),
                actual,
            }
            .into());
        }
        self.store.commit_blob(staged, digest)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognized() {
        let check = |registry: &str, expected: bool| {
            assert_eq!(is_loopback(registry), expected, "{registry}")
        };
        check("127.0.0.1:5000", true);
        check("127.1.2.3", true);
        check("localhost:5000", true);
        check("[::1]:5000", true);
        check("10.0.0.1:5000", false);
        check("registry.example:443", false);
        check("docker.io", false);
        check("127.0.0.1.nip.io:5000", false);
    }

    #[test]
    fn tags_are_refused_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), crate::Limits::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let check = |reference: &str| {
            let error = runtime
                .block_on(store.pull(reference, &PullOptions::default()))
                .unwrap_err();
            assert!(
                matches!(
                    error,
                    PullError::NoDigest { .. } | PullError::Reference { .. }
                ),
                "{reference}: {error}"
            );
        };
        check("127.0.0.1:9/toolchain:latest");
        check("127.0.0.1:9/toolchain");
        check("127.0.0.1:9/toolchain@sha512:abcd");
        check("::::");
    }

    #[test]
    fn debug_redacts_the_password() {
        let auth = RegistryAuth::Basic {
            username: "ci".to_owned(),
            password: "hunter2".to_owned(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
