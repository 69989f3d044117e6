//! The synchronous heart of hpcc: everything that decides *what* a compile is and *which* cache
//! entry it maps to, with no process spawning and no sockets.
//!
//! - [`args`]: the GNU (gcc, clang) and MSVC (cl, clang-cl) argument grammars, response files,
//!   and the cacheable / not-cacheable classification of an invocation.
//! - [`compiler`]: recognising a compiler family from its name.
//! - [`digest`]: BLAKE3 digests and an unambiguous, framed hasher for cache keys.
//! - [`depfile`]: parsing and re-emitting Make dependency files in each compiler's own layout.
//! - [`manifest`] and [`entry`]: the serialized formats of direct-mode manifests and results.
//! - [`project`]: the project root (`.hpcc` marker) and root-relative path rewriting.
//! - [`config`]: configuration types and the pure env-over-file merge.
//! - [`frame`]: length-prefixed protobuf frames of the daemon IPC and the agent protocol, the
//!   length capped before allocating (blocking here, tokio behind the `async` feature).
//!
//! Invariants:
//!
//! - Nothing here spawns a process or opens a socket; the only files read are response files,
//!   and the `.hpcc` marker is looked for.
//! - An option missing from a grammar makes the invocation not cacheable
//!   ([`args::NotCacheable::UnknownOption`]): hpcc caches only what it understands.
//! - Parsing and decoding never panic, whatever the input: argv, response files,
//!   [`manifest::Manifest::decode`], [`entry::ResultEntry::decode`], [`depfile::parse`] and the
//!   config return errors instead (proptested), and a count read from a file is bounded by the
//!   bytes left before anything is allocated for it.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod args;
pub mod cli;
pub mod compiler;
pub mod config;
pub mod depfile;
pub mod digest;
pub mod entry;
pub mod frame;
pub mod logging;
pub mod manifest;
pub mod project;
pub mod report;
pub mod wire;
