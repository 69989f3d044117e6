//! Repository tasks. `cargo xtask tidy` runs the style and architecture checks (they also run
//! under `cargo test`).
//!
//! The checks live in [`tidy`] and run two ways: as `#[test]`s, so `cargo test` alone keeps the
//! tree clean, and through this binary, which prints every violation as `file:line` for a
//! person (or CI log) to read.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod deps;
mod tidy;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask tidy               check the rules of CONTRIBUTING.md (also run by `cargo test -p xtask`)
       cargo xtask config-reference   write docs/CONFIG.md from the config types";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["tidy"] => run_tidy(),
        ["config-reference"] => write_config_reference(),
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Writes `docs/CONFIG.md`, the reference hpcc-core's test compares with the config types.
fn write_config_reference() -> ExitCode {
    let path = tidy::repo_root().join("docs/CONFIG.md");
    match std::fs::write(&path, hpcc_core::config::reference::markdown()) {
        Ok(()) => {
            println!("wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("writing {}: {error}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn run_tidy() -> ExitCode {
    let root = tidy::repo_root();
    match deps::check_repo(&root) {
        Ok(broken) if broken.is_empty() => {
            println!("tidy: {} dependency rules hold", deps::RULES.len());
            for (from, to, plan) in deps::EXCEPTIONS {
                println!("tidy: known exception: {from} depends on {to} until {plan}");
            }
        }
        Ok(broken) => {
            for rule in &broken {
                eprintln!("{rule}");
            }
            eprintln!("tidy: {} architecture rule(s) broken", broken.len());
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("tidy: {error}");
            return ExitCode::FAILURE;
        }
    }
    match tidy::check_repo(&root) {
        Ok(report) if report.violations.is_empty() => {
            println!(
                "tidy: {} files, {} rules, no violations",
                report.files_checked,
                tidy::Rule::ALL.len()
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            for violation in &report.violations {
                eprintln!("{violation}");
            }
            eprintln!(
                "tidy: {} violation(s) in {} files",
                report.violations.len(),
                report.files_checked
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("tidy: {error}");
            ExitCode::FAILURE
        }
    }
}
