//! The protobuf messages hpcc's processes exchange, generated at build time from the `.proto`
//! files under `proto/` (which are the reference for the wire format).
//!
//! - [`daemon`]: the wrapper ↔ local daemon protocol (`hpcc.daemon.v1`).
#![allow(missing_docs)] // generated code; the .proto files document every message
#![allow(clippy::doc_markdown, clippy::derive_partial_eq_without_eq)]

/// `hpcc.daemon.v1`: what the `hpcc` wrapper and the local daemon say to each other.
pub mod daemon {
    include!(concat!(env!("OUT_DIR"), "/hpcc.daemon.v1.rs"));
}

/// The version of the daemon protocol this build speaks; a daemon refuses other versions.
pub const DAEMON_PROTOCOL_VERSION: u32 = 1;
