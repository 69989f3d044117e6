//! A per-machine table of file digests keyed by file identity, shared by every `hpcc` process.
//!
//! Direct mode verifies a manifest by the content digest of every header. A manifest also keeps
//! each file's stat stamp, so a rebuild in the checkout that wrote it hashes nothing; but another
//! checkout, or a manifest written by another compile, has other stamps, and without this table
//! every process would re-hash every header it is asked about. The table remembers, for a file
//! identity `(device, inode, size, mtime, ctime)`, the BLAKE3 digest of the content and whether
//! the content names the time macros. `ctime` cannot be set by users and changes with every
//! write, rename or permission change, so an identity is a witness of unchanged content, provided
//! the file was old enough when it was hashed (the caller's trust rule; see `hpcc-cache`'s
//! `includes`).
//!
//! The file, `digests`, is a fixed-size open-addressed hash table of [`BUCKETS`] buckets of
//! [`WAYS`] slots, read with one `pread` of a bucket and written with one `pwrite` of a slot.
//! There is no lock: every slot carries a checksum over its contents, so a torn or interleaved
//! write reads as an empty slot, and a lookup can only return what some process stored for
//! exactly that identity. Anything unexpected (no file, a short file, a read-only directory, a
//! bad header) disables the table, which costs only speed.
//!
//! ```text
//! header (16 bytes): b"HPCCDIG\x01", slot count as little-endian u32, 4 zero bytes
//! slot (96 bytes):   dev, ino, size (u64 LE), mtime_ns, ctime_ns (i64 LE), flags (1 byte),
//!                    7 zero bytes, digest (32 bytes), check (16 bytes: BLAKE3 of the first 80)
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use hpcc_core::digest::Digest;

use crate::positioned::{read_up_to_at, write_all_at};

const MAGIC: [u8; 8] = *b"HPCCDIG\x01";
const HEADER_LEN: usize = 16;
const SLOT_LEN: usize = 96;
const CHECKED_LEN: usize = 80;
/// Slots per bucket; a lookup reads one bucket.
pub const WAYS: usize = 4;
/// Buckets in the table: 16384 × 4 slots × 96 bytes = 6 MiB, allocated sparsely.
pub const BUCKETS: usize = 16384;
const SLOTS: usize = BUCKETS * WAYS;
const FILE_NAME: &str = "digests";

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status-change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
}

impl FileId {
    fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[0..8].copy_from_slice(&self.dev.to_le_bytes());
        out[8..16].copy_from_slice(&self.ino.to_le_bytes());
        out[16..24].copy_from_slice(&self.size.to_le_bytes());
        out[24..32].copy_from_slice(&self.mtime_ns.to_le_bytes());
        out[32..40].copy_from_slice(&self.ctime_ns.to_le_bytes());
        out
    }

    fn bucket(&self) -> u64 {
        let hash = blake3::hash(&self.encode());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first) % BUCKETS as u64
    }
}

/// What the table knows about a file's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// BLAKE3 digest of the content.
    pub digest: Digest,
    /// Caller-defined bits about the content (hpcc uses them for the time macros).
    pub flags: u8,
}

/// The table, or nothing if it cannot be used.
#[derive(Debug)]
pub struct FileDigests {
    file: Option<File>,
}

impl FileDigests {
    /// Opens (creating if needed) the table under `root`. Never fails: a table that cannot be
    /// opened or has a foreign header is replaced if possible, else disabled.
    pub fn open(root: &Path) -> FileDigests {
        FileDigests {
            file: open_table(root).ok(),
        }
    }

    /// A table that remembers nothing.
    pub fn disabled() -> FileDigests {
        FileDigests { file: None }
    }

    /// Whether the table is in use.
    pub fn is_enabled(&self) -> bool {
        self.file.is_some()
    }

    /// What was stored for exactly `id`, if anything.
    pub fn get(&self, id: &FileId) -> Option<Known> {
        let file = self.file.as_ref()?;
        let mut bucket = [0u8; SLOT_LEN * WAYS];
        let offset = bucket_offset(id.bucket());
        let read = read_up_to_at(file, &mut bucket, offset).ok()?;
        let wanted = id.encode();
        bucket[..read]
            .chunks_exact(SLOT_LEN)
            .find_map(|slot| decode_slot(slot).filter(|(slot_id, _)| *slot_id == wanted))
            .map(|(_, known)| known)
    }

    /// Remembers `known` for `id`. Failures are ignored: the table is only an accelerator.
    pub fn put(&self, id: &FileId, known: Known) {
        let Some(file) = self.file.as_ref() else {
            return;
        };
        let bucket_index = id.bucket();
        let offset = bucket_offset(bucket_index);
        let mut bucket = [0u8; SLOT_LEN * WAYS];
        let Ok(read) = read_up_to_at(file, &mut bucket, offset) else {
            return;
        };
        let wanted = id.encode();
        let decoded: Vec<Option<([u8; 40], Known)>> = bucket
            .chunks_exact(SLOT_LEN)
            .enumerate()
            .map(|(way, slot)| {
                if (way + 1) * SLOT_LEN <= read {
                    decode_slot(slot)
                } else {
                    None
                }
            })
            .collect();
        let way = decoded
            .iter()
            .position(|slot| matches!(slot, Some((slot_id, _)) if *slot_id == wanted))
            .or_else(|| decoded.iter().position(Option::is_none))
            // Full bucket: replace a slot chosen by the identity, so that repeated puts spread
            // over the ways instead of always evicting the same one.
            .unwrap_or(usize::from((id.ino ^ id.ctime_ns as u64).to_le_bytes()[0]) % WAYS);
        let slot = encode_slot(&wanted, known);
        let _ = write_all_at(file, &slot, offset + (way * SLOT_LEN) as u64);
    }
}

fn bucket_offset(bucket: u64) -> u64 {
    HEADER_LEN as u64 + bucket * (WAYS * SLOT_LEN) as u64
}

fn header() -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&u32::try_from(SLOTS).unwrap_or(u32::MAX).to_le_bytes());
    header
}

fn table_len() -> u64 {
    (HEADER_LEN + SLOTS * SLOT_LEN) as u64
}

fn open_table(root: &Path) -> io::Result<File> {
    let path = root.join(FILE_NAME);
    match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(file) if has_our_header(&file) => return Ok(file),
        Ok(_) => {}
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    // Missing or foreign: build a fresh table beside it and rename it into place, so that a
    // concurrent reader never sees a half-initialized header.
    std::fs::create_dir_all(root)?;
    let temp = temp_path(&path);
    let result = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)?;
        write_all_at(&file, &header(), 0)?;
        file.set_len(table_len())?;
        std::fs::rename(&temp, &path)?;
        Ok(file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp.{}", std::process::id()));
    PathBuf::from(name)
}

fn has_our_header(file: &File) -> bool {
    let mut found = [0u8; HEADER_LEN];
    matches!(read_up_to_at(file, &mut found, 0), Ok(HEADER_LEN))
        && found == header()
        && file.metadata().is_ok_and(|meta| meta.len() == table_len())
}

fn check(bytes: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::hash(bytes).as_bytes()[..16]);
    out
}

fn encode_slot(id: &[u8; 40], known: Known) -> [u8; SLOT_LEN] {
    let mut slot = [0u8; SLOT_LEN];
    slot[..40].copy_from_slice(id);
    slot[40] = known.flags;
    slot[48..80].copy_from_slice(&known.digest.0);
    let sum = check(&slot[..CHECKED_LEN]);
    slot[CHECKED_LEN..].copy_from_slice(&sum);
    slot
}

fn decode_slot(slot: &[u8]) -> Option<([u8; 40], Known)> {
    if slot.len() != SLOT_LEN || slot[CHECKED_LEN..] != check(&slot[..CHECKED_LEN]) {
        return None;
    }
    let mut id = [0u8; 40];
    id.copy_from_slice(&slot[..40]);
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&slot[48..80]);
    Some((
        id,
        Known {
            digest: Digest(digest),
            flags: slot[40],
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> FileId {
        FileId {
            dev: 7,
            ino,
            size: 100,
            mtime_ns: 1_700_000_000_000_000_000,
            ctime_ns: 1_700_000_000_000_000_001,
        }
    }

    fn known(seed: &[u8]) -> Known {
        Known {
            digest: Digest::of(seed),
            flags: seed[0],
        }
    }

    #[test]
    fn remembers_exact_identities_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = FileDigests::open(dir.path());
        assert!(table.is_enabled());
        assert_eq!(table.get(&id(1)), None);
        table.put(&id(1), known(b"one"));
        assert_eq!(table.get(&id(1)), Some(known(b"one")));
        let mut other = id(1);
        other.ctime_ns += 1;
        assert_eq!(table.get(&other), None, "a changed ctime is another file");
        table.put(&id(1), known(b"uno"));
        assert_eq!(table.get(&id(1)), Some(known(b"uno")), "replaced in place");
        // A second handle (another process) sees the same table.
        assert_eq!(
            FileDigests::open(dir.path()).get(&id(1)),
            Some(known(b"uno"))
        );
    }

    #[test]
    fn full_buckets_evict_but_never_confuse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = FileDigests::open(dir.path());
        let count = (SLOTS * 2) as u64;
        for ino in 0..count {
            table.put(&id(ino), known(&ino.to_le_bytes()));
        }
        let mut remembered = 0;
        for ino in 0..count {
            if let Some(found) = table.get(&id(ino)) {
                assert_eq!(found, known(&ino.to_le_bytes()));
                remembered += 1;
            }
        }
        assert!(remembered > SLOTS / 2, "only {remembered} remembered");
    }

    #[test]
    fn damaged_slots_and_headers_read_as_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = FileDigests::open(dir.path());
        table.put(&id(5), known(b"five"));
        let path = dir.path().join(FILE_NAME);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open table");
        // Flip one digest byte of every slot of the bucket.
        let offset = bucket_offset(id(5).bucket());
        for way in 0..WAYS {
            write_all_at(&file, &[0xa5], offset + (way * SLOT_LEN + 50) as u64).expect("write");
        }
        assert_eq!(table.get(&id(5)), None);

        // A foreign header is replaced by an empty table rather than trusted.
        write_all_at(&file, b"garbage!", 0).expect("write");
        let reopened = FileDigests::open(dir.path());
        assert!(reopened.is_enabled());
        assert_eq!(reopened.get(&id(5)), None);
        reopened.put(&id(6), known(b"six"));
        assert_eq!(reopened.get(&id(6)), Some(known(b"six")));
    }

    #[test]
    fn unusable_directory_disables_the_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"x").expect("write");
        let table = FileDigests::open(&blocker);
        assert!(!table.is_enabled());
        table.put(&id(1), known(b"one"));
        assert_eq!(table.get(&id(1)), None);
    }
}
