//! The worker, tested without privileges.
//!
//! - `local`: the `Worker` library over `hpcc-testkit`'s in-process runtime (jobs run by the
//!   host's gcc): misses, hits, tenants apart, sharing groups, compile errors, quotas, and its
//!   gRPC service refusing forged, expired and misdirected routing tokens.
//! - `audit_verify`: `hpcc-worker audit-verify` refuses bad usage and rows it cannot check
//!   with exit code 2 and a message naming the problem, before any session starts. Re-runs
//!   that do start sessions are tested end to end in `hpcc-e2e` (`audit`).
// Tests spawn their own tasks directly: the spawn rule is for the services.
#![allow(clippy::disallowed_methods)]

mod audit_verify;
mod local;
