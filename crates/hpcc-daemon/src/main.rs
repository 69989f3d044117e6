//! `hpccd`: the local daemon of hpcc. One runs per cache directory and configuration; the
//! `hpcc` wrapper starts it on demand (`daemon.autostart`), and `hpcc daemon`, `hpcc start`
//! and systemd (`dist/hpcc.service`) run it explicitly.
//!
//! It serves lookups from what it keeps between compiles (hot header digests, payloads in
//! memory, decoded manifests), asks the remote stores (`[[remote]]`) after a local miss, and
//! uploads what wrappers store. It lives in its own crate so that the wrapper, which starts
//! for every compile, links no async runtime and no remote-store client.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod farm_service;
mod remote;
mod server;
mod token;

use std::process::ExitCode;

use hpcc_cli::settings::Settings;

fn main() -> ExitCode {
    hpcc_cli::init_logging();
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if !args.is_empty() {
        eprintln!("usage: hpccd    (runs the daemon in the foreground; configured like hpcc)");
        return ExitCode::from(2);
    }
    let result = Settings::load().and_then(server::run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hpccd: {error:#}");
            ExitCode::FAILURE
        }
    }
}
