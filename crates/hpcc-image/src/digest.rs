//! Content digests: the `sha256:<64 hex>` names of blobs and images, and streaming
//! verification of bytes against them.
//!
//! Only SHA-256 is accepted. OCI also registers SHA-512, but no registry or builder we target
//! produces it, and accepting a second algorithm would give one image two identities.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// The only algorithm prefix we accept.
const PREFIX: &str = "sha256:";
/// Hex digits in a SHA-256 digest.
const HEX_LEN: usize = 64;

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DigestError {
    /// The algorithm is not `sha256`.
    #[error("digest {digest:?} is not sha256 (expected `sha256:<64 lowercase hex>`)")]
    Algorithm {
        /// The rejected text, shortened to 80 characters.
        digest: String,
    },
    /// The hex part has the wrong length or a character that is not lowercase hex.
    #[error("digest {digest:?} does not have 64 lowercase hex digits after `sha256:`")]
    Hex {
        /// The rejected text, shortened to 80 characters.
        digest: String,
    },
}

/// A SHA-256 content digest, `sha256:<64 lowercase hex>`, naming one blob.
///
/// The value is validated on construction, so its hex part is always safe to use as a file
/// name (no `/`, no `..`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobDigest {
    /// The 64 lowercase hex digits, without the prefix.
    hex: String,
}

impl BlobDigest {
    /// Parses and validates `sha256:<64 lowercase hex>`.
    ///
    /// Uppercase hex is refused rather than folded: the OCI spec requires lowercase, and a digest
    /// is compared as a string by registries.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let shortened = || text.chars().take(80).collect::<String>();
        let Some(hex) = text.strip_prefix(PREFIX) else {
            return Err(DigestError::Algorithm {
                digest: shortened(),
            });
        };
        let valid = hex.len() == HEX_LEN
            && hex
                .bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(DigestError::Hex {
                digest: shortened(),
            });
        }
        Ok(BlobDigest {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let mut hasher = Hasher::new();
        hasher.update(bytes);
        hasher.finish()
    }

    /// The 64 hex digits, which name the blob's file under `blobs/sha256/`.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.hex)
    }
}

impl fmt::Debug for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for BlobDigest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl Serialize for BlobDigest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BlobDigest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        BlobDigest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The identity of a toolchain image: the digest of the blob that describes it.
///
/// For an image from a registry or an OCI layout this is the digest of its manifest (what
/// `image@sha256:...` references name). For a docker-archive it is the digest of the image
/// config, which is Docker's image ID (`docker inspect --format '{{.Id}}'`); see
/// [`crate::ImageStore::import_docker_archive`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ImageDigest(BlobDigest);

impl ImageDigest {
    /// Parses and validates `sha256:<64 lowercase hex>`.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        BlobDigest::parse(text).map(ImageDigest)
    }

    /// The digest of the blob that describes the image.
    pub fn blob(&self) -> &BlobDigest {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        self.0.hex()
    }
}

impl From<BlobDigest> for ImageDigest {
    fn from(digest: BlobDigest) -> Self {
        ImageDigest(digest)
    }
}

impl fmt::Display for ImageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ImageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for ImageDigest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// Incremental SHA-256 with byte counting.
#[derive(Clone, Default)]
pub struct Hasher {
    state: Sha256,
    bytes: u64,
}

impl Hasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.state.update(bytes);
        self.bytes = self
            .bytes
            .saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
    }

    /// How many bytes have been fed.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    /// Whether nothing has been fed.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The digest of everything fed.
    pub fn finish(self) -> BlobDigest {
        let bytes = self.state.finalize();
        let mut hex = String::with_capacity(HEX_LEN);
        for byte in bytes {
            hex.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
            hex.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
        }
        BlobDigest { hex }
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// A blob's bytes did not hash to the digest that names them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("blob content hashes to {actual}, not to its name {expected}")]
pub struct Mismatch {
    /// The digest the blob was asked for by.
    pub expected: BlobDigest,
    /// The digest of the bytes actually read.
    pub actual: BlobDigest,
}

/// A reader that hashes every byte it passes on, to check a blob against its digest once it
/// has been read to the end.
///
/// Callers that stop reading early (a tar reader stops at the end-of-archive blocks) call
/// [`VerifyingReader::finish`], which reads and hashes the rest without interpreting it.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Hasher,
    expected: BlobDigest,
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps `inner`, whose whole content must hash to `expected`.
    pub fn new(inner: R, expected: BlobDigest) -> Self {
        VerifyingReader {
            inner,
            hasher: Hasher::new(),
            expected,
        }
    }

    /// Reads whatever is left, then compares the digest of everything read with the expected
    /// one. An I/O error is returned as is; a mismatch as `Ok(Err(..))`.
    pub fn finish(mut self) -> io::Result<Result<u64, Mismatch>> {
        io::copy(&mut self, &mut io::sink())?;
        let length = self.hasher.len();
        let actual = self.hasher.finish();
        Ok(if actual == self.expected {
            Ok(length)
        } else {
            Err(Mismatch {
                expected: self.expected,
                actual,
            })
        })
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buffer)?;
        // `read` promises `count <= buffer.len()`, so the slice cannot panic; `get` keeps even
        // a misbehaving reader from making it.
        self.hasher.update(buffer.get(..count).unwrap_or(buffer));
        Ok(count)
    }
}

/// A writer that hashes and counts everything written to it before passing it on.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// The wrapped writer, and the digest and length of everything written.
    pub fn finish(self) -> (W, BlobDigest, u64) {
        let length = self.hasher.len();
        (self.inner, self.hasher.finish(), length)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let count = self.inner.write(bytes)?;
        self.hasher.update(bytes.get(..count).unwrap_or(bytes));
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_accepts_only_sha256_lowercase_hex() {
        let check = |text: &str, ok: bool| {
            assert_eq!(BlobDigest::parse(text).is_ok(), ok, "{text:?}");
        };
        check(EMPTY, true);
        check(&EMPTY.to_uppercase(), false);
        check(&EMPTY.replace("sha256", "sha512"), false);
        check(&EMPTY[..EMPTY.len() - 1], false);
        check(&format!("{EMPTY}0"), false);
        check(
            "sha256:../../../../../../../../../../../../../../../../../../../../etc/x",
            false,
        );
        check("", false);
        check("sha256:", false);
        check(&EMPTY.replace('e', "g"), false);
        check(&format!(" {EMPTY}"), false);
    }

    #[test]
    fn errors_name_the_input() {
        let error = BlobDigest::parse("md5:abc").unwrap_err();
        assert!(error.to_string().contains("md5:abc"), "{error}");
    }

    #[test]
    fn digest_of_bytes_matches_known_vectors() {
        assert_eq!(BlobDigest::of_bytes(b"").to_string(), EMPTY);
        assert_eq!(
            BlobDigest::of_bytes(b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verifying_reader_reports_both_digests_on_mismatch() {
        let expected = BlobDigest::of_bytes(b"right");
        let mut reader = VerifyingReader::new(&b"wrong bytes"[..], expected.clone());
        let mut first = [0u8; 3];
        reader.read_exact(&mut first).unwrap();
        let mismatch = reader.finish().unwrap().unwrap_err();
        assert_eq!(mismatch.expected, expected);
        assert_eq!(mismatch.actual, BlobDigest::of_bytes(b"wrong bytes"));
        let message = mismatch.to_string();
        assert!(
            message.contains(&expected.to_string())
                && message.contains(&mismatch.actual.to_string())
        );

        let reader = VerifyingReader::new(&b"right"[..], expected);
        assert_eq!(reader.finish().unwrap(), Ok(5));
    }

    #[test]
    fn serde_round_trips_and_validates() {
        let digest = BlobDigest::parse(EMPTY).unwrap();
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<BlobDigest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<BlobDigest>("\"sha256:12\"").is_err());
    }
}
