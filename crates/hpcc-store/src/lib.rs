//! Cache storage for hpcc: the local, content-addressed disk store.
//!
//! [`DiskStore`] keeps two namespaces of entries ([`Kind::Manifest`] and [`Kind::Result`]) under
//! one root directory, each entry a single file named by its key. It is synchronous and built for
//! a short-lived CLI process: opening a store touches nothing on disk, and a hit is one `open`,
//! one `statx`, one `readv` and one `close` (plus one `futimens` when the entry's access time is
//! more than a minute old).
//!
//! Guarantees:
//!
//! - A lookup returns the exact bytes that were put, a [`Lookup::Miss`], or
//!   [`Lookup::Corrupt`] (the entry failed its checksum and has been removed). Never a partial or
//!   wrong payload, and never a panic, whatever is on disk.
//! - Puts are atomic (written to a temporary file and renamed), so any number of processes may
//!   put and get the same key at once.
//! - With a [`DiskConfig::max_size`], the cache is trimmed least-recently-used first, one
//!   sixteenth at a time, by whichever process notices first; nobody waits for a cleanup.
//! - An entry read from another store enters only through [`DiskStore::put_encoded`] or
//!   `put_verified`, which take only entries that pass their checksum for their key and kind;
//!   behind the `remote` feature, nothing read from a remote store is used or copied before it
//!   passes that check.
//! - The store knows nothing of compilers or of the formats it carries: payloads are opaque.
//!
//! ```
//! use hpcc_core::digest::Digest;
//! use hpcc_store::{DiskConfig, DiskStore, Kind, Lookup};
//!
//! # fn main() -> Result<(), hpcc_store::StoreError> {
//! let dir = tempfile::tempdir().expect("a temporary directory");
//! let store = DiskStore::open(dir.path(), DiskConfig::default())?;
//! let key = Digest::of(b"some cache key");
//! assert_eq!(store.get(Kind::Result, &key)?, Lookup::Miss);
//! store.put(Kind::Result, &key, b"object file bytes")?;
//! assert_eq!(store.get(Kind::Result, &key)?, Lookup::Hit(b"object file bytes".to_vec()));
//! # Ok(())
//! # }
//! ```
//!
//! The on-disk entry format is described in the `format` module, the directory layout in
//! `layout`, size accounting in `accounting` and eviction in `evict`. [`FileDigests`] is a
//! separate, shared table of header digests keyed by file identity. [`MemoryTier`] keeps verified
//! payloads in memory in front of a disk store, for the daemon. The `remote` module (feature
//! `remote`) holds the async stores behind the local cache: backends, clusters and tiers.
// Unit tests spawn their own tasks directly: the spawn rule is for the services.
#![cfg_attr(test, allow(clippy::disallowed_methods))]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

mod accounting;
pub mod digests;
pub mod disk;
mod error;
mod evict;
mod format;
mod layout;
pub mod memory;
mod positioned;
#[cfg(feature = "remote")]
pub mod remote;

#[cfg(test)]
mod test_util {
    /// Deterministic, incompressible bytes (xorshift), so tests need no RNG dependency.
    pub fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect()
    }
}

pub use digests::{FileDigests, FileId, Known};
pub use disk::{verify_encoded, CleanReport, DiskConfig, DiskStore, EvictReport};
pub use error::StoreError;
pub use format::Codec;
pub use memory::{Fetched, MemoryTier};

/// The namespace of a key: the two kinds never collide even for equal digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A direct-mode manifest, mapping input hashes to result keys.
    Manifest,
    /// A compile result (object file, dependency file, captured output).
    Result,
}

impl Kind {
    /// Both kinds.
    pub const ALL: [Kind; 2] = [Kind::Manifest, Kind::Result];
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The entry exists and its payload checked out.
    Hit(Vec<u8>),
    /// There is no entry for this key.
    Miss,
    /// The entry was unreadable (truncated, garbage, failed checksum) and has been removed;
    /// the caller treats it as a miss, and may count it separately.
    Corrupt,
}
