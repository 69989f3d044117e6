//! The protobuf messages hpcc's processes exchange, generated at build time from the `.proto`
//! files under `proto/` (which are the reference for the wire format).
//!
//! - [`daemon`]: the wrapper ↔ local daemon protocol (`hpcc.daemon.v1`).
//! - [`scheduler`]: the route-only scheduler (`hpcc.scheduler.v1`), with tonic client and
//!   server behind the `client` and `server` features.
//! - [`worker`]: compiles on a worker (`hpcc.worker.v1`), likewise.
//! - [`agent`]: the worker ↔ `hpcc-agent` protocol inside an isolation session (`hpcc.agent.v1`).
//! - [`serial_sync`]: the preamble that starts each `hpcc.agent.v1` connection over a
//!   virtio-serial port (the `qemu` runtime's agent channel).
//!
//! These are API boundaries between builds of hpcc: a wrapper and a daemon, a client and a
//! farm, may come from different versions. Fields are only ever added. A change that older
//! peers would misread bumps [`DAEMON_PROTOCOL_VERSION`] for the daemon protocol, whose `Hello`
//! refuses any other version; `hpcc.worker.v1` keeps fields reserved for the content-addressed
//! source mode still to come.
#![allow(missing_docs)] // generated code; the .proto files document every message
#![allow(clippy::doc_markdown, clippy::derive_partial_eq_without_eq)]

/// `hpcc.daemon.v1`: what the `hpcc` wrapper and the local daemon say to each other.
pub mod daemon {
    include!(concat!(env!("OUT_DIR"), "/hpcc.daemon.v1.rs"));
}

/// The version of the daemon protocol this build speaks; a daemon refuses other versions.
pub const DAEMON_PROTOCOL_VERSION: u32 = 1;

/// `hpcc.agent.v1`: what a worker and the `hpcc-agent` inside a session say to each other.
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/hpcc.agent.v1.rs"));
}

/// The version of the agent protocol this build speaks; an agent refuses other versions.
pub const AGENT_PROTOCOL_VERSION: u32 = 1;

/// The largest agent frame either side accepts (a 4-byte length prefix is checked against it
/// before anything is allocated); file data travels in chunks well below it.
pub const MAX_AGENT_FRAME_LEN: u32 = 4 << 20;

/// The chunk size for file data in agent frames.
pub const AGENT_CHUNK_LEN: usize = 1 << 20;

/// `hpcc.scheduler.v1`: routing clients to workers, workers registering.
pub mod scheduler {
    include!(concat!(env!("OUT_DIR"), "/hpcc.scheduler.v1.rs"));
}

/// `hpcc.worker.v1`: remote compiles.
pub mod worker {
    include!(concat!(env!("OUT_DIR"), "/hpcc.worker.v1.rs"));
}

pub mod serial_sync;
