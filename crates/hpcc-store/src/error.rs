//! [`StoreError`]: one variant per I/O step of the disk store that can fail.
//!
//! A corrupt or missing entry is not an error (see [`crate::Lookup`]); these are real failures
//! such as a read-only cache directory, a full disk or `EIO`.

use std::io;
use std::path::PathBuf;

/// A failed step of a store operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Opening an entry for reading failed with something other than "not found".
    #[error("cannot open cache entry {path}")]
    OpenEntry {
        /// The entry file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading an entry's metadata failed.
    #[error("cannot stat cache entry {path}")]
    StatEntry {
        /// The entry file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading an entry's bytes failed.
    #[error("cannot read cache entry {path}")]
    ReadEntry {
        /// The entry file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An encoded entry given to `put_encoded` failed its checks.
    #[error("entry {key} from another store is corrupt")]
    Corrupt {
        /// The key, in hex.
        key: String,
    },
    /// The payload passed to `put` is larger than the format allows.
    #[error("payload for key {key} is {len} bytes, above the {max}-byte limit")]
    PayloadTooLarge {
        /// The key, as hex.
        key: String,
        /// The payload length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// zstd failed to compress a payload.
    #[error("cannot compress payload for key {key}")]
    Compress {
        /// The key, as hex.
        key: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Creating a directory of the cache layout failed.
    #[error("cannot create cache directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Creating the temporary file for an entry failed.
    #[error("cannot create temporary file {path}")]
    CreateTemp {
        /// The temporary file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Writing the temporary file for an entry failed (for example, the disk is full).
    #[error("cannot write temporary file {path}")]
    WriteTemp {
        /// The temporary file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Renaming the temporary file onto the entry's path failed.
    #[error("cannot rename {from} to {to}")]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The entry file.
        to: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Removing an entry (or a stale temporary file) failed.
    #[error("cannot remove cache entry {path}")]
    RemoveEntry {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Listing a shard directory during eviction or cleaning failed.
    #[error("cannot list cache directory {path}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Opening a size-accounting or lock file failed.
    #[error("cannot open accounting file {path}")]
    OpenAccounting {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Taking a lock on an accounting or cleanup lock file failed.
    #[error("cannot lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading the size counters failed.
    #[error("cannot read size counters {path}")]
    ReadCounters {
        /// The counters file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Writing the size counters failed.
    #[error("cannot write size counters {path}")]
    WriteCounters {
        /// The counters file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}
