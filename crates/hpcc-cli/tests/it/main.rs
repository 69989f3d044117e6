//! End-to-end tests of the `hpcc` binary with real compilers.
//!
//! One binary with a `libtest-mimic` harness, so a test whose prerequisite is missing (clang not
//! installed, not running as root) is reported as *ignored* with a `skipped: <reason>` line,
//! never as passed.
//!
//! - `harness`: temporary projects, running hpcc and the plain compiler, reading stats.
//! - `basic`: miss then hit for gcc, g++ and clang; outputs, warnings, errors.
//! - `deps`: dependency files identical to the plain compiler's, on miss and hit.
//! - `passthrough`: every uncacheable invocation behaves exactly like the compiler.
//! - `correctness`: edited and shadowing headers, time macros, corrupt entries.
//! - `sharing`: two checkouts at different paths share hits and byte-identical objects.
//! - `robustness`: concurrency, read-only and full cache directories, bad config.
//! - `invocation`: masquerade symlinks, `hpcc wrap`, launcher style, commands.
//! - `daemon`: the local daemon as real processes: lifecycle, refusals, dedup, faults.
//! - `remote`: remote tiers on real Redis and S3 servers: sharing, backfill, faults.
//! - `servers`: those servers, and misbehaving ones, on loopback.
//!
//! Every test works in sandboxes of its own (`harness::Sandbox`): a temporary project, a
//! private cache, no config file, a fixed locale, and a private `XDG_RUNTIME_DIR`, so any
//! daemon is the sandbox's own. The daemon is off unless the sandbox is a daemon sandbox, whose
//! daemon is stopped (or killed) when the sandbox drops. Servers run on free loopback ports and
//! are killed when their test ends.
// Tests spawn their own tasks directly: the spawn rule is for the services.
#![allow(clippy::disallowed_methods)]

mod basic;
mod correctness;
mod daemon;
mod deps;
mod harness;
mod invocation;
mod passthrough;
mod remote;
mod robustness;
mod servers;
mod sharing;

use harness::Need;

/// A test: its name, what it needs, and its body.
pub type Case = (&'static str, &'static [Need], fn() -> harness::TestResult);

fn main() {
    let mut cases: Vec<Case> = Vec::new();
    cases.extend(basic::cases());
    cases.extend(deps::cases());
    cases.extend(passthrough::cases());
    cases.extend(correctness::cases());
    cases.extend(sharing::cases());
    cases.extend(robustness::cases());
    cases.extend(invocation::cases());
    cases.extend(daemon::cases());
    cases.extend(remote::cases());
    hpcc_testkit::harness::run(cases, harness::missing, |_| None)
}
