//! The `hpcc-worker` binary's command line, run as a process.
//!
//! - `audit_verify`: `hpcc-worker audit-verify` refuses bad usage and rows it cannot check
//!   with exit code 2 and a message naming the problem, before any session starts. Re-runs
//!   that do start sessions are tested end to end in `hpcc-e2e` (`audit`).

mod audit_verify;
