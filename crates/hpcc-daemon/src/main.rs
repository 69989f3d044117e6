//! `hpccd`: the local daemon of hpcc. One runs per cache directory and configuration; the
//! `hpcc` wrapper starts it on demand (`daemon.autostart`), and `hpcc daemon`, `hpcc start`
//! and systemd (`dist/hpcc.service`) run it explicitly.
//!
//! It serves lookups from what it keeps between compiles (hot header digests, payloads in
//! memory, decoded manifests), asks the remote stores (`[[remote]]`) after a local miss, and
//! uploads what wrappers store. It lives in its own crate so that the wrapper, which starts
//! for every compile, links no async runtime and no remote-store client.
//!
//! `hpccd login` and `hpccd logout` (run by `hpcc login` and `hpcc logout`) get and drop the
//! token of remote compilation: they need the HTTP and gRPC clients only this binary links.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod farm_service;
mod login_command;
mod metrics;
mod remote;
mod server;
mod wire;

use std::process::ExitCode;

use hpcc_cache::settings::Settings;

const USAGE: &str = "\
usage: hpccd                  run the daemon in the foreground (configured like hpcc)
       hpccd login [options]  get a token for remote compilation (hpccd login --help)
       hpccd logout           forget it
       hpccd --help | --version";

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if hpcc_core::cli::help_or_version("hpccd", USAGE, &args) {
        return ExitCode::SUCCESS;
    }
    match args.first().map(|first| first.to_str()) {
        // The service logs at `info` by default (to its log file, where its stderr goes), so a
        // remote store's or the farm's warning is never lost; `HPCC_LOG` overrides.
        None => hpcc_core::logging::init_stderr("info"),
        // Commands at a terminal stay quiet unless asked.
        Some(Some("login")) => {
            hpcc_cache::init_logging();
            return login_command::login(&args[1..]);
        }
        Some(Some("logout")) => {
            hpcc_cache::init_logging();
            return login_command::logout(&args[1..]);
        }
        Some(_) => {
            eprintln!("hpccd: unexpected arguments {args:?}\n{USAGE}");
            return ExitCode::from(2);
        }
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
