//! The OCI and Docker JSON documents we read: descriptors, manifests, indexes, image configs
//! and docker-archive manifests, plus their media types.
//!
//! Only the fields flattening needs are modelled, and unknown fields are ignored (not
//! `deny_unknown_fields`): these documents come from other tools and grow new fields.

use serde::{Deserialize, Serialize};

use crate::digest::BlobDigest;
use crate::flatten::Compression;

/// An OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index (a list of per-platform manifests).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// A Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// A Docker manifest list, the Docker form of an index.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// An OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// An uncompressed OCI layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// A gzip-compressed OCI layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// A zstd-compressed OCI layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Media types a manifest may have when pulled or listed in an index.
pub const MANIFEST_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
];

/// The compression a layer media type names, or `None` for a type that is not a tar layer
/// we can apply (encrypted layers, artifacts, foreign types).
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::Uncompressed),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// A reference from one document to a blob.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    /// What the blob is.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The blob's digest.
    pub digest: BlobDigest,
    /// The blob's size in bytes.
    pub size: u64,
    /// The platform, for an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// The platform an index entry is for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// CPU architecture, in Go's names (`amd64`, `arm64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
}

impl Platform {
    /// Whether this is the host's platform (Linux, and the architecture we were built for).
    pub fn is_host(&self) -> bool {
        self.os == "linux" && self.architecture == host_architecture()
    }
}

/// The host's architecture in OCI (Go) naming.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// An image manifest (OCI or Docker schema 2): one config and the layers, lowest first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The manifest's own media type, when it states it.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, lowest first.
    pub layers: Vec<Descriptor>,
}

/// An image index: manifests, usually one per platform.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Index {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The manifests.
    pub manifests: Vec<Descriptor>,
}

impl Index {
    /// The one manifest for the host platform, or the only manifest when there is one and it
    /// states no platform.
    pub fn host_manifest(&self) -> Option<&Descriptor> {
        let manifests: Vec<&Descriptor> = self
            .manifests
            .iter()
            .filter(|descriptor| MANIFEST_TYPES.contains(&descriptor.media_type.as_str()))
            .collect();
        if let [only] = manifests[..] {
            if only.platform.as_ref().is_none_or(Platform::is_host) {
                return Some(only);
            }
        }
        let mut for_host = manifests
            .into_iter()
            .filter(|descriptor| descriptor.platform.as_ref().is_some_and(Platform::is_host));
        match (for_host.next(), for_host.next()) {
            (Some(descriptor), None) => Some(descriptor),
            _ => None,
        }
    }
}

/// The part of an image config flattening checks: the digests of the uncompressed layers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageConfig {
    /// The layers as uncompressed tars.
    pub rootfs: RootFs,
}

/// An image config's `rootfs`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The digest of each layer's uncompressed tar, lowest first.
    pub diff_ids: Vec<BlobDigest>,
}

/// One image of a docker-archive `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DockerArchiveImage {
    /// Path of the config file inside the archive.
    #[serde(rename = "Config")]
    pub config: String,
    /// Tags, for information only.
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars inside the archive, lowest first.
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

/// What a JSON blob naming an image turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Described {
    /// An image manifest.
    Manifest(Manifest),
    /// An image index.
    Index(Index),
    /// An image config, which names its layers by `diff_ids` (docker-archive images).
    Config(ImageConfig),
}

/// Parses a blob as a manifest, index or config, deciding by which fields it has.
pub fn describe(bytes: &[u8]) -> Result<Described, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(bytes)?;
    if value.get("layers").is_some() {
        serde_json::from_value(value).map(Described::Manifest)
    } else if value.get("manifests").is_some() {
        serde_json::from_value(value).map(Described::Index)
    } else {
        serde_json::from_value(value).map(Described::Config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: char) -> String {
        format!("sha256:{}", byte.to_string().repeat(64))
    }

    #[test]
    fn describe_tells_documents_apart() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":2}},"layers":[{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{}","size":3,"annotations":{{"x":"y"}}}}]}}"#,
            digest('a'),
            digest('b')
        );
        assert!(
            matches!(describe(manifest.as_bytes()).unwrap(), Described::Manifest(m) if m.layers.len() == 1)
        );
        let config = format!(
            r#"{{"architecture":"amd64","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            digest('c')
        );
        assert!(
            matches!(describe(config.as_bytes()).unwrap(), Described::Config(c) if c.rootfs.diff_ids.len() == 1)
        );
        assert!(describe(b"{}").is_err());
        assert!(
            describe(br#"{"layers":[{"mediaType":"x","digest":"sha256:12","size":1}]}"#).is_err()
        );
    }

    #[test]
    fn index_picks_the_host_platform_only() {
        let entry = |byte: char, platform: Option<(&str, &str)>| Descriptor {
            media_type: OCI_MANIFEST.to_owned(),
            digest: BlobDigest::parse(&digest(byte)).unwrap(),
            size: 1,
            platform: platform.map(|(os, architecture)| Platform {
                architecture: architecture.to_owned(),
                os: os.to_owned(),
            }),
        };
        let host = host_architecture();
        let check = |manifests: Vec<Descriptor>, expected: Option<char>| {
            let index = Index {
                schema_version: 2,
                manifests,
            };
            let chosen = index
                .host_manifest()
                .map(|descriptor| descriptor.digest.clone());
            assert_eq!(
                chosen,
                expected.map(|byte| BlobDigest::parse(&digest(byte)).unwrap())
            );
        };
        check(vec![entry('a', None)], Some('a'));
        check(vec![entry('a', Some(("linux", host)))], Some('a'));
        check(vec![entry('a', Some(("windows", host)))], None);
        check(
            vec![
                entry('a', Some(("linux", "s390x"))),
                entry('b', Some(("linux", host))),
            ],
            Some('b'),
        );
        check(vec![entry('a', None), entry('b', None)], None);
        check(vec![], None);
    }

    #[test]
    fn layer_media_types_map_to_compressions() {
        assert_eq!(
            layer_compression(OCI_LAYER_TAR),
            Some(Compression::Uncompressed)
        );
        assert_eq!(layer_compression(OCI_LAYER_GZIP), Some(Compression::Gzip));
        assert_eq!(layer_compression(OCI_LAYER_ZSTD), Some(Compression::Zstd));
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+encrypted"),
            None
        );
    }
}
