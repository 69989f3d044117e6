//! The on-disk entry format: a fixed 48-byte header followed by the payload.
//!
//! ```text
//! offset  size  field
//!      0     4  magic, b"HPCE"
//!      4     1  format version (1)
//!      5     1  flags: bit 0 = payload is one zstd frame, bit 1 = payload is one LZ4 block;
//!               at most one of them; other bits must be zero
//!      6     1  kind: 0 = manifest, 1 = result
//!      7     1  reserved, must be zero
//!      8     8  uncompressed payload length, little-endian u64
//!     16    32  BLAKE3 keyed hash (key = the entry's cache key) of the kind byte and the
//!               uncompressed payload
//!     48     *  payload, compressed or not; its stored length is the file length minus 48
//! ```
//!
//! The checksum is keyed with the cache key so that an entry copied or renamed under another key
//! (or into the other namespace) is rejected as corrupt, not served as a wrong payload.
//!
//! [`decode`] is a pure function over bytes so that it can be property-tested: it must never
//! panic, never allocate more than [`MAX_PAYLOAD_LEN`], and never return a payload whose checksum
//! does not match.
//!
//! The payload is compressed with the configured codec (LZ4 by default, or zstd) and stored raw
//! when compressing does not make it smaller; the codec's own bounds are checked before
//! anything is decompressed.
//!
//! **Compatibility.** This format and the directory layout are shared by every hpcc process and
//! version using the cache directory, and the same entry bytes are the remote stores' objects
//! (`cache/<m|r>/...`), shared by every machine using a store. An entry of another version is
//! corrupt to this one: removed, and a miss. So machines running hpcc versions with different
//! entry versions see each other's objects as corrupt (counted, then replaced), never as wrong.

use hpcc_core::digest::Digest;

use crate::Kind;

/// The length of the fixed header.
pub(crate) const HEADER_LEN: usize = 48;

/// The largest uncompressed payload stored or accepted, 4 GiB.
///
/// It bounds the allocation a corrupt header can cause.
pub(crate) const MAX_PAYLOAD_LEN: u64 = 4 << 30;

const MAGIC: [u8; 4] = *b"HPCE";
const VERSION: u8 = 1;
const FLAG_ZSTD: u8 = 1;
const FLAG_LZ4: u8 = 2;

/// LZ4 cannot expand data by more than this factor, so a declared length above
/// `stored * LZ4_MAX_RATIO` is corrupt and is rejected before allocating.
const LZ4_MAX_RATIO: u64 = 255;

/// How payloads are compressed when stored.
///
/// LZ4 is the default: on object files it keeps about two thirds of zstd's saving and
/// decompresses several times faster, and decompression sits on the hit path of every build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// Stored as is.
    None,
    /// One LZ4 block.
    #[default]
    Lz4,
    /// One zstd frame at this level.
    Zstd(i32),
}

/// A header as a fixed-size array, so reading it needs no allocation.
pub(crate) type Header = [u8; HEADER_LEN];

/// Why an entry was rejected; only tests look at the reason, callers see "corrupt".
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The magic bytes are wrong.
    Magic,
    /// The version is not one this code writes.
    Version,
    /// Unknown flag bits, a wrong kind, or a non-zero reserved byte.
    HeaderField,
    /// The declared length is above [`MAX_PAYLOAD_LEN`] or disagrees with the stored bytes.
    Length,
    /// The zstd frame or LZ4 block did not decode to exactly the declared length.
    Decompress,
    /// The payload's checksum does not match the header.
    Checksum,
}

fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Manifest => 0,
        Kind::Result => 1,
    }
}

fn checksum(kind: Kind, key: &Digest, payload: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(&key.0);
    hasher.update(&[kind_byte(kind)]);
    hasher.update(payload);
    *hasher.finalize().as_bytes()
}

/// Builds the header and the stored body for `payload`.
///
/// The payload is compressed with `codec`, unless compressing does not make it smaller, in
/// which case it is stored as is (the flags record which). Returns `Err` only if zstd itself
/// fails.
pub(crate) fn encode<'a>(
    kind: Kind,
    key: &Digest,
    payload: &'a [u8],
    codec: Codec,
) -> std::io::Result<(Header, std::borrow::Cow<'a, [u8]>)> {
    let mut flags = 0;
    let mut body = std::borrow::Cow::Borrowed(payload);
    let compressed = match codec {
        Codec::None => None,
        Codec::Lz4 => Some((FLAG_LZ4, lz4_flex::block::compress(payload))),
        Codec::Zstd(level) => Some((FLAG_ZSTD, zstd::bulk::compress(payload, level)?)),
    };
    if let Some((flag, compressed)) = compressed {
        if compressed.len() < payload.len() {
            flags |= flag;
            body = std::borrow::Cow::Owned(compressed);
        }
    }
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
    header[5] = flags;
    header[6] = kind_byte(kind);
    header[7] = 0;
    // usize always fits in u64 on supported targets; saturate rather than truncate otherwise.
    let payload_len = u64::try_from(payload.len()).unwrap_or(u64::MAX);
    header[8..16].copy_from_slice(&payload_len.to_le_bytes());
    header[16..48].copy_from_slice(&checksum(kind, key, payload));
    Ok((header, body))
}

/// Checks `header` and `body` (the rest of the file) and returns the uncompressed payload.
pub(crate) fn decode(
    kind: Kind,
    key: &Digest,
    header: &Header,
    body: Vec<u8>,
) -> Result<Vec<u8>, DecodeError> {
    if header[0..4] != MAGIC {
        return Err(DecodeError::Magic);
    }
    if header[4] != VERSION {
        return Err(DecodeError::Version);
    }
    let flags = header[5];
    let known_flags = matches!(flags, 0 | FLAG_ZSTD | FLAG_LZ4);
    if !known_flags || header[6] != kind_byte(kind) || header[7] != 0 {
        return Err(DecodeError::HeaderField);
    }
    let mut length_bytes = [0u8; 8];
    length_bytes.copy_from_slice(&header[8..16]);
    let declared_len = u64::from_le_bytes(length_bytes);
    if declared_len > MAX_PAYLOAD_LEN {
        return Err(DecodeError::Length);
    }
    let declared_len = usize::try_from(declared_len).map_err(|_| DecodeError::Length)?;

    let payload = if flags & FLAG_ZSTD != 0 {
        // The frame header must announce exactly the declared size before anything is
        // allocated, so one flipped length byte cannot make us reserve gigabytes.
        match zstd::zstd_safe::get_frame_content_size(&body) {
            Ok(Some(frame_len)) if frame_len == declared_len as u64 => {}
            _ => return Err(DecodeError::Decompress),
        }
        let payload =
            zstd::bulk::decompress(&body, declared_len).map_err(|_| DecodeError::Decompress)?;
        if payload.len() != declared_len {
            return Err(DecodeError::Decompress);
        }
        payload
    } else if flags & FLAG_LZ4 != 0 {
        let bound = (body.len() as u64).saturating_mul(LZ4_MAX_RATIO);
        if declared_len as u64 > bound {
            return Err(DecodeError::Decompress);
        }
        let payload = lz4_flex::block::decompress(&body, declared_len)
            .map_err(|_| DecodeError::Decompress)?;
        if payload.len() != declared_len {
            return Err(DecodeError::Decompress);
        }
        payload
    } else {
        if body.len() != declared_len {
            return Err(DecodeError::Length);
        }
        body
    };

    if header[16..48] != checksum(kind, key, &payload) {
        return Err(DecodeError::Checksum);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Digest {
        Digest::of(b"format test key")
    }

    fn round_trip(payload: &[u8], codec: Codec) -> Result<Vec<u8>, DecodeError> {
        let (header, body) = encode(Kind::Result, &key(), payload, codec).unwrap();
        decode(Kind::Result, &key(), &header, body.into_owned())
    }

    #[test]
    fn round_trips_compressed_uncompressed_and_empty() {
        let compressible = b"int main() { return 0; }\n".repeat(100);
        for payload in [&compressible[..], b"x", b""] {
            for codec in [Codec::None, Codec::Lz4, Codec::Zstd(3)] {
                assert_eq!(round_trip(payload, codec).unwrap(), payload);
            }
        }
    }

    #[test]
    fn compression_is_skipped_when_it_does_not_help() {
        let (header, body) = encode(Kind::Result, &key(), b"abc", Codec::Zstd(19)).unwrap();
        assert_eq!(header[5], 0);
        assert_eq!(&*body, b"abc");
        let compressible = vec![7u8; 4096];
        let (header, body) = encode(Kind::Result, &key(), &compressible, Codec::Zstd(1)).unwrap();
        assert_eq!(header[5], FLAG_ZSTD);
        assert!(body.len() < 100);
        let (header, body) = encode(Kind::Result, &key(), &compressible, Codec::Lz4).unwrap();
        assert_eq!(header[5], FLAG_LZ4);
        assert!(body.len() < 100);
    }

    #[test]
    fn rejects_wrong_key_and_wrong_kind() {
        let (header, body) = encode(Kind::Result, &key(), b"payload", Codec::None).unwrap();
        let other_key = Digest::of(b"other");
        assert_eq!(
            decode(Kind::Result, &other_key, &header, body.to_vec()),
            Err(DecodeError::Checksum)
        );
        assert_eq!(
            decode(Kind::Manifest, &key(), &header, body.to_vec()),
            Err(DecodeError::HeaderField)
        );
    }

    #[test]
    fn every_header_bit_flip_is_rejected() {
        let compressible = b"abcdefgh".repeat(64);
        for level in [Codec::None, Codec::Zstd(1), Codec::Lz4] {
            let (header, body) = encode(Kind::Result, &key(), &compressible, level).unwrap();
            for byte in 0..HEADER_LEN {
                for bit in 0..8 {
                    let mut bad = header;
                    bad[byte] ^= 1 << bit;
                    assert!(
                        decode(Kind::Result, &key(), &bad, body.to_vec()).is_err(),
                        "flip of byte {byte} bit {bit} accepted (level {level:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn huge_declared_length_is_rejected_before_allocating() {
        let (mut header, body) = encode(Kind::Result, &key(), b"tiny", Codec::None).unwrap();
        header[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            decode(Kind::Result, &key(), &header, body.to_vec()),
            Err(DecodeError::Length)
        );
        let compressible = vec![0u8; 10_000];
        for codec in [Codec::Zstd(1), Codec::Lz4] {
            let (mut header, body) = encode(Kind::Result, &key(), &compressible, codec).unwrap();
            header[8..16].copy_from_slice(&(3u64 << 30).to_le_bytes());
            assert_eq!(
                decode(Kind::Result, &key(), &header, body.to_vec()),
                Err(DecodeError::Decompress)
            );
        }
    }

    #[test]
    fn garbage_never_decodes_and_never_panics() {
        for seed in 0..2000u64 {
            let bytes = crate::test_util::noise(seed, usize::try_from(seed % 300).unwrap());
            let mut header = [0u8; HEADER_LEN];
            let split = bytes.len().min(HEADER_LEN);
            header[..split].copy_from_slice(&bytes[..split]);
            // Give half of the cases a valid prefix so the deeper checks are reached too.
            if seed % 2 == 0 {
                header[0..4].copy_from_slice(&MAGIC);
                header[4] = VERSION;
                header[5] &= FLAG_ZSTD;
                header[6] = 1;
                header[7] = 0;
            }
            let body = bytes[split..].to_vec();
            assert!(decode(Kind::Result, &key(), &header, body).is_err());
        }
    }
}
