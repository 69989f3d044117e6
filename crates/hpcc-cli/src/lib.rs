//! The `hpcc` wrapper as a library: the compile flow, the daemon protocol's client side, and
//! the commands, shared by the `hpcc` binary and the daemon (`hpccd`, crate `hpcc-daemon`),
//! which serves lookups with the same code.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cache;
pub mod caller;
pub mod commands;
pub mod daemon;
pub mod deps;
pub mod find;
pub mod hot;
pub mod identity;
pub mod includes;
pub mod remote_compile;
pub mod settings;
pub mod stats;

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
    if std::env::var_os("HPCC_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("HPCC_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
}
