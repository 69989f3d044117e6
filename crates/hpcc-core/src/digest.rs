//! BLAKE3 digests and the framed hasher that builds cache keys.
//!
//! Every field fed to a [`KeyHasher`] is prefixed with a tag and its length, so no two different
//! field sequences can produce the same byte stream (`["ab", "c"]` and `["a", "bc"]` differ).

use std::fmt;
use std::str::FromStr;

/// A 32-byte BLAKE3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a 64-digit hex digest: {0:?}")]
pub struct ParseDigestError(pub String);

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(text: &str) -> Result<Digest, ParseDigestError> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return Err(ParseDigestError(text.to_owned()));
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let high = hex_value(pair[0]).ok_or_else(|| ParseDigestError(text.to_owned()))?;
            let low = hex_value(pair[1]).ok_or_else(|| ParseDigestError(text.to_owned()))?;
            *slot = (high << 4) | low;
        }
        Ok(Digest(out))
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// A hasher for cache keys: each field is tagged and length-prefixed.
#[derive(Clone, Default)]
pub struct KeyHasher {
    inner: blake3::Hasher,
    /// When explaining keys: each field as `tag=value` (lossy text, long values digested).
    log: Option<Vec<String>>,
}

impl KeyHasher {
    /// A fresh hasher.
    pub fn new() -> KeyHasher {
        KeyHasher::default()
    }

    /// A fresh hasher that also keeps a readable log of its fields, to explain a miss.
    pub fn explained() -> KeyHasher {
        KeyHasher {
            log: Some(Vec::new()),
            ..KeyHasher::default()
        }
    }

    /// The readable fields so far, if this hasher was made by [`KeyHasher::explained`].
    pub fn explanation(&self) -> Option<&[String]> {
        self.log.as_deref()
    }

    /// Adds one field: `tag` names what it is, `bytes` is its value.
    pub fn field(&mut self, tag: &str, bytes: &[u8]) -> &mut KeyHasher {
        if let Some(log) = &mut self.log {
            let value = if bytes.len() > 200 {
                format!("<{} bytes, {}>", bytes.len(), Digest::of(bytes).to_hex())
            } else {
                String::from_utf8_lossy(bytes).replace('\0', "\\0")
            };
            log.push(format!("{tag}={value}"));
        }
        self.inner.update(&(tag.len() as u64).to_le_bytes());
        self.inner.update(tag.as_bytes());
        self.inner.update(&(bytes.len() as u64).to_le_bytes());
        self.inner.update(bytes);
        self
    }

    /// Adds a digest field.
    pub fn digest(&mut self, tag: &str, digest: &Digest) -> &mut KeyHasher {
        if let Some(log) = &mut self.log {
            log.push(format!("{tag}={}", digest.to_hex()));
        }
        let log = self.log.take();
        self.field(tag, &digest.0);
        self.log = log;
        self
    }

    /// The key.
    pub fn finish(&self) -> Digest {
        Digest(*self.inner.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let digest = Digest::of(b"hpcc");
        assert_eq!(digest.to_hex().parse::<Digest>(), Ok(digest));
        assert!("zz".parse::<Digest>().is_err());
        assert!("g".repeat(64).parse::<Digest>().is_err());
    }

    #[test]
    fn framing_separates_fields() {
        let a = KeyHasher::new().field("x", b"ab").field("x", b"c").finish();
        let b = KeyHasher::new().field("x", b"a").field("x", b"bc").finish();
        assert_ne!(a, b);
    }
}
