//! Stored results: everything a compile produced that a hit must reproduce, one section per
//! output ([`SectionKind`]: the object, stdout, stderr, the dependency file, a `.dwo`, a `.gcno`).
//!
//! **Format.** Results are read back by other hpcc versions through a shared cache. The version
//! is part of the magic (`HPCCRES\x01`), changed whenever the layout changes: a result of
//! another version does not decode, and the caller removes it and takes a miss.

use std::borrow::Cow;

use crate::wire::{Reader, WireError, Writer};

const MAGIC: &[u8] = b"HPCCRES\x01";

/// What a section of a result holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SectionKind {
    /// The object (or assembly) file.
    Object = 1,
    /// What the compiler wrote to stdout.
    Stdout = 2,
    /// What the compiler wrote to stderr (warnings), byte for byte, colour codes included.
    Stderr = 3,
    /// The dependency file, in the form of `hpcc-cache`'s `deps` (an `S` or `R` section).
    DepFile = 4,
    /// The `-gsplit-dwarf` `.dwo` file.
    Dwo = 5,
    /// The `--coverage` `.gcno` file.
    Gcno = 6,
}

impl SectionKind {
    fn from_u8(value: u8) -> Option<SectionKind> {
        Some(match value {
            1 => SectionKind::Object,
            2 => SectionKind::Stdout,
            3 => SectionKind::Stderr,
            4 => SectionKind::DepFile,
            5 => SectionKind::Dwo,
            6 => SectionKind::Gcno,
            _ => return None,
        })
    }
}

/// A compile's outputs, as stored under a result key.
///
/// A decoded entry borrows its sections from the stored payload: on a hit the object is written
/// straight from the decompressed buffer, without another copy of what can be megabytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultEntry<'a> {
    /// The sections, each kind at most once.
    pub sections: Vec<(SectionKind, Cow<'a, [u8]>)>,
}

impl<'a> ResultEntry<'a> {
    /// The bytes of one section, if present.
    pub fn get(&self, kind: SectionKind) -> Option<&[u8]> {
        self.sections
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, bytes)| bytes.as_ref())
    }

    /// Sets a section, replacing an existing one of the same kind.
    pub fn set(&mut self, kind: SectionKind, bytes: Vec<u8>) {
        self.sections.retain(|(k, _)| *k != kind);
        self.sections.push((kind, Cow::Owned(bytes)));
    }

    /// Serializes the entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Writer::new(MAGIC);
        out.u32(u32::try_from(self.sections.len()).unwrap_or(u32::MAX));
        for (kind, bytes) in &self.sections {
            out.u8(*kind as u8);
            out.bytes(bytes);
        }
        out.bytes
    }

    /// Parses an entry; an unknown section kind or a repeated one is an error.
    pub fn decode(input: &'a [u8]) -> Result<ResultEntry<'a>, WireError> {
        let mut reader = Reader::new(input, MAGIC)?;
        let count = reader.count(9)?;
        let mut entry = ResultEntry::default();
        for _ in 0..count {
            let at = reader.position();
            let kind = SectionKind::from_u8(reader.u8()?).ok_or(WireError::Invalid(at))?;
            let bytes = reader.bytes()?;
            if entry.get(kind).is_some() {
                return Err(WireError::Invalid(at));
            }
            entry.sections.push((kind, Cow::Borrowed(bytes)));
        }
        reader.finish()?;
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut entry = ResultEntry::default();
        entry.set(SectionKind::Object, b"\x7fELF".to_vec());
        entry.set(SectionKind::Stderr, b"warning: x\n".to_vec());
        entry.set(SectionKind::Object, b"\x7fELF2".to_vec());
        assert_eq!(entry.get(SectionKind::Object), Some(&b"\x7fELF2"[..]));
        let encoded = entry.encode();
        assert_eq!(ResultEntry::decode(&encoded), Ok(entry));
        for cut in 0..encoded.len() {
            assert!(ResultEntry::decode(&encoded[..cut]).is_err());
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut input = MAGIC.to_vec();
            input.extend(tail);
            let _ = ResultEntry::decode(&input);
        }
    }
}
