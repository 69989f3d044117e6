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
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod args;
pub mod compiler;
pub mod config;
pub mod depfile;
pub mod digest;
pub mod entry;
pub mod ipc;
pub mod manifest;
pub mod project;
pub mod wire;
