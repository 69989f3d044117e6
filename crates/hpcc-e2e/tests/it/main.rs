//! End-to-end tests of remote compilation, in one process over loopback gRPC.
//!
//! - `idp`: a stand-in identity provider (JWKS over HTTP, request counts, key rotation, an
//!   OAuth2 token endpoint).
//! - `scheduler`: the scheduler alone: tenants, tokens, images, placement.
//! - `image`: packs the debootstrap toolchain root as an OCI layout (the worker imports it).
//! - `login`: the real `hpcc login` and `hpccd login` binaries against the scheduler and the
//!   IdP: password and client-credentials grants, IdP refusals, the private token cache, its
//!   status, and refreshing it.
//! - `farm`: scheduler, two workers with the sandbox runtime, and the daemon's farm client:
//!   outputs identical to local compiles and across workers, refusals without audit rows,
//!   many concurrent compiles.
//! - `client`: the real `hpcc` wrapper and `hpccd` with `[remote_compile]` against that farm:
//!   misses compiled remotely then hit locally, path-free objects across checkouts, fallback
//!   when the farm is down, paranoid mode, a worker killed mid-build, a registry pull.
//! - `tls`: the scheduler and worker binaries with certificates from a throwaway CA.
//! - `audit`: audit rows re-run (`hpcc_worker::verify` and `hpcc-worker audit-verify`):
//!   verified, tampered rows as mismatches or named errors, evicted sources.
//!
//! A test whose prerequisite is missing (root, debootstrap) prints `skipped: <name>: <reason>`
//! and is reported as ignored, never as passed.

mod audit;
mod client;
mod farm;
mod idp;
mod image;
mod login;
// Shared with hpcc-image's tests, which use all of it.
#[allow(dead_code)]
#[path = "../../../hpcc-image/tests/it/registry.rs"]
mod registry;
mod scheduler;
mod tls;

use libtest_mimic::{Arguments, Trial};

/// What a test returns: `Err` carries the failure message.
pub type TestResult = Result<(), String>;

/// Something a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Root, the static agent and the debootstrap image (the sandbox runtime).
    Sandbox,
    /// Cargo, to build the `hpcc` and `hpccd` binaries (other packages' binaries, which cargo
    /// does not build for these tests).
    Cargo,
    /// Debian's `docker-registry`.
    Registry,
    /// QEMU, vhost-device-vsock and the Debian guest kernel (the qemu runtime).
    Vm,
}

/// A test: name, needs, body.
pub type Case = (&'static str, &'static [Need], fn() -> TestResult);

fn missing(needs: &[Need]) -> Option<String> {
    for need in needs {
        match need {
            Need::Sandbox => {
                if !rustix::process::geteuid().is_root() {
                    return Some("needs root (the sandbox runtime)".into());
                }
                if let Err(reason) = hpcc_runtime::testing::agent_binary() {
                    return Some(reason);
                }
                if let Err(reason) = hpcc_runtime::testing::image() {
                    return Some(reason);
                }
            }
            Need::Cargo => {
                if let Err(reason) = login::cargo_available() {
                    return Some(reason);
                }
            }
            Need::Registry => {
                if !registry::installed() {
                    return Some("docker-registry is not installed".into());
                }
            }
            Need::Vm => {
                if let Err(reason) = hpcc_runtime::testing::vm_tools() {
                    return Some(reason);
                }
                if let Err(reason) = hpcc_runtime::testing::guest_kernel() {
                    return Some(reason);
                }
            }
        }
    }
    None
}

fn main() {
    let args = Arguments::from_args();
    let mut cases: Vec<Case> = Vec::new();
    cases.extend(scheduler::cases());
    cases.extend(login::cases());
    cases.extend(farm::cases());
    cases.extend(client::cases());
    cases.extend(tls::cases());
    cases.extend(audit::cases());
    let trials = cases
        .into_iter()
        .map(|(name, needs, body)| {
            let trial = Trial::test(name, move || body().map_err(Into::into));
            match missing(needs) {
                Some(reason) => {
                    println!("skipped: {name}: {reason}");
                    trial.with_ignored_flag(true)
                }
                None => trial,
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
