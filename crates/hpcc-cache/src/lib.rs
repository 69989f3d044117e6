//! The local cache engine, synchronous, shared by the `hpcc` wrapper (`hpcc-cli`) and the local
//! daemon (`hpcc-daemon`, which serves lookups with the same code):
//!
//! - [`cache`]: one compile from classified arguments to restored outputs: keys, direct and
//!   preprocessor modes, local and remote execution, restore, and the daemon's warm state;
//! - [`includes`], [`deps`], [`hot`]: what a compile read, its dependency file, and the headers
//!   known not to have changed;
//! - [`identity`], [`caller`]: the compiler's identity and who is asking;
//! - [`ipc`]: how the wrapper and the daemon meet; [`remote_compile`]: the trait the daemon's
//!   farm client implements;
//! - [`settings`], [`stats`], [`find`], [`upload_journal`].
//!
//! A compile's path through [`cache::Job::run`], in the wrapper, or in the daemon on a wrapper's
//! behalf (a lookup only, unless the daemon compiles the miss on the farm):
//!
//! ```text
//! prepare: compiler identity, project root, injected flags, the common key
//!  ├─ direct mode: key(args, source) ─► manifest ─► includes::verify an entry ─► result ─► restore
//!  ├─ preprocessor mode: compiler -E ─► key(output) ─► result ─► restore
//!  └─ miss: run the compiler (here or on the farm) ─► collect outputs ─► store result (+ manifest)
//! ```
//!
//! This crate holds the only code that spawns compilers, through [`cache::Runner`]. It links no
//! async runtime and no remote-store client (tidy checks the rule): the wrapper links all of this
//! and starts in a few hundred microseconds for every compile, and remote stores reach a lookup
//! only through [`cache::RemoteFallback`], which the daemon implements.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cache;
pub mod caller;
pub mod deps;
pub mod find;
pub mod hot;
pub mod identity;
pub mod includes;
pub mod ipc;
pub mod remote_compile;
pub mod settings;
pub mod stats;
pub mod upload_journal;

use std::sync::Mutex;

/// Error kinds noticed during this run, added to the stats at the end.
pub static ERRORS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Notes an internal error of `kind` for the stats (`errors.<kind>`).
pub fn record_error(kind: &'static str) {
    if let Ok(mut errors) = ERRORS.lock() {
        errors.push(kind);
    }
}

/// Installs the `tracing` subscriber when `HPCC_LOG` is set (an `EnvFilter`, to stderr); for
/// the binaries' `main`s only.
pub fn init_logging() {
    // Nothing is installed without `HPCC_LOG`: a cache hit should not pay for a subscriber.
    if std::env::var_os("HPCC_LOG").is_some() {
        hpcc_core::logging::init_stderr("off");
    }
}
