//! Direct-mode manifests: for one direct key, the header sets seen so far and their results.
//!
//! A direct key hashes the compiler, the arguments and the source, but not the headers: which
//! headers a compile reads is only known after it ran. The manifest stored under that key lists,
//! per distinct header set, every file read with its content digest, plus the *absent* files
//! that would have shadowed one of them had they existed (a new `foo.h` earlier on the include
//! path). A lookup is a hit only if every listed file still has its digest and every absent file
//! is still absent.
//!
//! Absence is recorded per directory: for each directory that would have to gain an entry for a
//! shadowing file to appear, the directory's identity and times, and the names whose appearance
//! matters. If the directory is unchanged, none of them appeared; if it changed, each name is
//! checked.
//!
//! A manifest keeps the newest [`MAX_ENTRIES`] header sets. Paths under the project root are
//! stored relative to it ([`StoredPath::Rooted`]), so checkouts at other paths share manifests;
//! each file also keeps the [`Stamp`] it had when it was hashed, which spares rehashing it in
//! the checkout that recorded it.
//!
//! **Format.** Manifests are read back by other hpcc versions through a shared cache. The
//! version is part of the magic (`HPCCMAN\x02`), changed whenever the layout changes: a manifest
//! of another version does not decode, and the caller removes it and takes a miss.

use crate::digest::Digest;
use crate::wire::{Reader, WireError, Writer};

const MAGIC: &[u8] = b"HPCCMAN\x02";

/// At most this many header sets are kept per manifest (newest first); older ones are dropped.
pub const MAX_ENTRIES: usize = 16;

/// A path as stored: relative to the project root when it lies under it, else absolute.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StoredPath {
    /// Relative to the project root (no leading `/`).
    Rooted(Vec<u8>),
    /// Absolute, outside any project root.
    Absolute(Vec<u8>),
}

/// A file that was read, and the digest its content had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    /// Where it is.
    pub path: StoredPath,
    /// Its size in bytes (checked before hashing: a cheap early mismatch).
    pub size: u64,
    /// BLAKE3 of its content.
    pub digest: Digest,
    /// Its identity and times when it was hashed. On the same machine, a file whose stamp is
    /// unchanged has unchanged content (any write moves the ctime, which cannot be set back,
    /// and the recording refused files changed too recently to tell apart), so a lookup can
    /// skip re-hashing it. Elsewhere (another checkout, another machine) the stamp differs and
    /// the file is hashed.
    pub stamp: Option<Stamp>,
}

/// Identity and change times of a file or directory, used to skip re-hashing a file or
/// re-checking a directory's absent names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status-change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
}

/// A directory in which certain names must stay absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsentRecord {
    /// The directory.
    pub dir: StoredPath,
    /// Its stamp when recorded, or `None` if it was too recent to trust (changed within the
    /// file system's timestamp granularity of the recording).
    pub stamp: Option<Stamp>,
    /// Entry names that did not exist in it.
    pub names: Vec<Vec<u8>>,
}

/// One header set and the result it produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Every file the compile read (source, headers, `-include` files), in first-read order.
    pub files: Vec<FileRecord>,
    /// Files that must not appear.
    pub absent: Vec<AbsentRecord>,
    /// The key of the stored result.
    pub result: Digest,
}

/// All header sets known for one direct key, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The entries, newest first, at most [`MAX_ENTRIES`].
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Adds `entry` as the newest, replacing an entry with the same result and dropping the
    /// oldest beyond [`MAX_ENTRIES`].
    pub fn add(&mut self, entry: ManifestEntry) {
        self.entries
            .retain(|existing| existing.result != entry.result);
        self.entries.insert(0, entry);
        self.entries.truncate(MAX_ENTRIES);
    }

    /// Serializes the manifest.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Writer::new(MAGIC);
        out.u32(u32::try_from(self.entries.len()).unwrap_or(u32::MAX));
        for entry in &self.entries {
            out.u32(u32::try_from(entry.files.len()).unwrap_or(u32::MAX));
            for file in &entry.files {
                write_path(&mut out, &file.path);
                out.u64(file.size);
                out.raw(&file.digest.0);
                write_stamp(&mut out, file.stamp);
            }
            out.u32(u32::try_from(entry.absent.len()).unwrap_or(u32::MAX));
            for absent in &entry.absent {
                write_path(&mut out, &absent.dir);
                write_stamp(&mut out, absent.stamp);
                out.u32(u32::try_from(absent.names.len()).unwrap_or(u32::MAX));
                for name in &absent.names {
                    out.bytes(name);
                }
            }
            out.raw(&entry.result.0);
        }
        out.bytes
    }

    /// Parses a manifest; any inconsistency is an error, never a panic.
    pub fn decode(input: &[u8]) -> Result<Manifest, WireError> {
        let mut reader = Reader::new(input, MAGIC)?;
        let entry_count = reader.count(8)?;
        let mut entries = Vec::with_capacity(entry_count);
        for _ in 0..entry_count {
            let file_count = reader.count(1 + 8 + 8 + 32 + 1)?;
            let mut files = Vec::with_capacity(file_count);
            for _ in 0..file_count {
                let path = read_path(&mut reader)?;
                let size = reader.u64()?;
                let digest = reader.digest()?;
                let stamp = read_stamp(&mut reader)?;
                files.push(FileRecord {
                    path,
                    size,
                    digest,
                    stamp,
                });
            }
            let absent_count = reader.count(1 + 8 + 1 + 4)?;
            let mut absent = Vec::with_capacity(absent_count);
            for _ in 0..absent_count {
                let dir = read_path(&mut reader)?;
                let stamp = read_stamp(&mut reader)?;
                let name_count = reader.count(8)?;
                let mut names = Vec::with_capacity(name_count);
                for _ in 0..name_count {
                    names.push(reader.bytes()?.to_vec());
                }
                absent.push(AbsentRecord { dir, stamp, names });
            }
            let result = reader.digest()?;
            entries.push(ManifestEntry {
                files,
                absent,
                result,
            });
        }
        reader.finish()?;
        Ok(Manifest { entries })
    }
}

fn write_stamp(out: &mut Writer, stamp: Option<Stamp>) {
    match stamp {
        None => out.u8(0),
        Some(stamp) => {
            out.u8(1);
            out.u64(stamp.dev);
            out.u64(stamp.ino);
            out.i64(stamp.mtime_ns);
            out.i64(stamp.ctime_ns);
        }
    }
}

fn read_stamp(reader: &mut Reader<'_>) -> Result<Option<Stamp>, WireError> {
    let at = reader.position();
    match reader.u8()? {
        0 => Ok(None),
        1 => Ok(Some(Stamp {
            dev: reader.u64()?,
            ino: reader.u64()?,
            mtime_ns: reader.i64()?,
            ctime_ns: reader.i64()?,
        })),
        _ => Err(WireError::Invalid(at)),
    }
}

fn write_path(out: &mut Writer, path: &StoredPath) {
    match path {
        StoredPath::Rooted(bytes) => {
            out.u8(b'r');
            out.bytes(bytes);
        }
        StoredPath::Absolute(bytes) => {
            out.u8(b'a');
            out.bytes(bytes);
        }
    }
}

fn read_path(reader: &mut Reader<'_>) -> Result<StoredPath, WireError> {
    let at = reader.position();
    match reader.u8()? {
        b'r' => Ok(StoredPath::Rooted(reader.bytes()?.to_vec())),
        b'a' => Ok(StoredPath::Absolute(reader.bytes()?.to_vec())),
        _ => Err(WireError::Invalid(at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(result: u8) -> ManifestEntry {
        ManifestEntry {
            files: vec![
                FileRecord {
                    path: StoredPath::Rooted(b"src/x.c".to_vec()),
                    size: 10,
                    digest: Digest([1; 32]),
                    stamp: None,
                },
                FileRecord {
                    path: StoredPath::Absolute(b"/usr/include/stdio.h".to_vec()),
                    size: 20,
                    digest: Digest([2; 32]),
                    stamp: Some(Stamp {
                        dev: 9,
                        ino: 8,
                        mtime_ns: 7,
                        ctime_ns: 6,
                    }),
                },
            ],
            absent: vec![AbsentRecord {
                dir: StoredPath::Absolute(b"/usr/local/include".to_vec()),
                stamp: Some(Stamp {
                    dev: 1,
                    ino: 2,
                    mtime_ns: 3,
                    ctime_ns: -4,
                }),
                names: vec![b"stdio.h".to_vec(), b"bits".to_vec()],
            }],
            result: Digest([result; 32]),
        }
    }

    #[test]
    fn round_trips_and_caps_entries() {
        let mut manifest = Manifest::default();
        for result in 0..20 {
            manifest.add(sample(result));
        }
        manifest.add(sample(19));
        assert_eq!(manifest.entries.len(), MAX_ENTRIES);
        assert_eq!(manifest.entries[0].result, Digest([19; 32]));
        let encoded = manifest.encode();
        assert_eq!(Manifest::decode(&encoded), Ok(manifest));
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let mut manifest = Manifest::default();
        manifest.add(sample(7));
        let encoded = manifest.encode();
        for cut in 0..encoded.len() {
            assert!(Manifest::decode(&encoded[..cut]).is_err(), "cut at {cut}");
        }
        let mut extended = encoded.clone();
        extended.push(0);
        assert_eq!(Manifest::decode(&extended), Err(WireError::Trailing(1)));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut input = MAGIC.to_vec();
            input.extend(tail);
            let _ = Manifest::decode(&input);
        }
    }
}
