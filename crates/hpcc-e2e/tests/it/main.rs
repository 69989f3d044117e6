//! End-to-end tests of remote compilation, in one process over loopback gRPC.
//!
//! - `idp`: a stand-in identity provider (JWKS over HTTP, request counts, key rotation, an
//!   OAuth2 token endpoint).
//! - `binaries`: every binary's `--help`, `--version` and bad arguments; the scheduler's
//!   `keygen` against OpenSSL.
//! - `scheduler`: the scheduler alone: tenants, tokens, images, placement.
//! - `image`: packs the debootstrap toolchain root as an OCI layout (the worker imports it).
//! - `login`: the real `hpcc login` and `hpccd login` binaries against the scheduler and the
//!   IdP: password and client-credentials grants, IdP refusals, the private token cache, its
//!   status, and refreshing it.
//! - `farm`: scheduler, two workers with the sandbox runtime, and the daemon's farm client:
//!   outputs identical to local compiles and across workers, refusals without audit rows,
//!   many concurrent compiles.
//! - `farm_local`: the same client path unprivileged: the scheduler, a worker over
//!   `hpcc-testkit`'s `LocalRuntime` (the real agent in-process) and the farm client; hits,
//!   failures, another tenant, refused tokens, a worker gone.
//! - `client`: the real `hpcc` wrapper and `hpccd` with `[remote_compile]` against that farm:
//!   misses compiled remotely then hit locally, path-free objects across checkouts, fallback
//!   when the farm is down, paranoid mode, a worker killed mid-build, a registry pull.
//! - `tls`: the scheduler and worker binaries with certificates from a throwaway CA.
//! - `soak`: a QEMU worker under 300 mixed jobs, and with its guests killed or frozen mid-job:
//!   every job answered, broken sessions replaced, nothing left behind.
//! - `tenancy`: tenants' storage apart (another tenant's identical job compiled for it, with a
//!   compile's latency), sharing groups, paranoid tenants, quotas and fair share under a
//!   flood, and two workers sharing hits through the real redis-server and moto's S3 server
//!   (damaged objects recompiled, a store gone costs one call, a tenant deleted from every
//!   tier).
//! - `audit`: audit rows re-run (`hpcc_worker::verify` and `hpcc-worker audit-verify`):
//!   verified, tampered rows as mismatches or named errors, evicted sources.
//!
//! A test whose prerequisite is missing (root, debootstrap) prints `skipped: <name>: <reason>`
//! and is reported as ignored, never as passed. Tests with microVM workers are named
//! `guest_vm::<case>`: `scripts/test.sh` runs them as a stage of their own.
// Test servers and clients are spawned directly: the spawn rule is for the services.
#![allow(clippy::disallowed_methods)]

mod audit;
mod binaries;
mod client;
mod farm;
mod farm_local;
use hpcc_testkit::idp;
mod image;
mod login;
mod metrics;
// Shared with hpcc-image's tests, which use all of it.
#[allow(dead_code)]
#[path = "../../../hpcc-image/tests/it/registry.rs"]
mod registry;
mod scheduler;
// The store servers of hpcc-cli's tests (redis-server, moto's S3 server), on loopback.
#[allow(dead_code)]
#[path = "../../../hpcc-cli/tests/it/servers.rs"]
mod servers;
mod soak;
mod tenancy;
mod tls;

/// What `servers` asks of the harness.
mod harness {
    /// Whether the tests run as root.
    pub fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }
}

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
    /// What jailed VMMs need besides root: cgroup hierarchies with the memory, cpu and pids
    /// controllers (v2, or v1 as here).
    Jail,
    /// Debian's `redis-server` and `redis-cli`.
    Redis,
    /// moto's S3 server (`python3 -m moto.server`).
    S3,
    /// `systemd-analyze` (Debian's `systemd`), to check the units in `dist/systemd`.
    SystemdAnalyze,
    /// Debian's `prometheus` server.
    Prometheus,
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
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
            Need::Jail => {
                if let Err(reason) = hpcc_runtime::vm::jail::cgroup::resolve(
                    hpcc_runtime::vm::jail::CgroupVersion::Auto,
                    std::path::Path::new("/sys/fs/cgroup"),
                ) {
                    return Some(format!("jailed VMMs need cgroups: {reason}"));
                }
            }
            Need::Redis => {
                if !on_path("redis-server") || !on_path("redis-cli") {
                    return Some("redis-server or redis-cli not installed".into());
                }
            }
            Need::Prometheus => {
                if !on_path("prometheus") {
                    return Some("prometheus (Debian's package) not installed".into());
                }
            }
            Need::SystemdAnalyze => {
                if !on_path("systemd-analyze") {
                    return Some("systemd-analyze (package systemd) not installed".into());
                }
            }
            Need::S3 => {
                let moto = std::process::Command::new("python3")
                    .args(["-c", "import moto.server, flask"])
                    .output()
                    .is_ok_and(|output| output.status.success());
                if !moto {
                    return Some("moto (pip install 'moto[server]') not installed".into());
                }
            }
        }
    }
    None
}

fn main() {
    let mut cases: Vec<Case> = Vec::new();
    cases.extend(scheduler::cases());
    cases.extend(binaries::cases());
    cases.extend(login::cases());
    cases.extend(farm::cases());
    cases.extend(farm_local::cases());
    cases.extend(client::cases());
    cases.extend(tls::cases());
    cases.extend(audit::cases());
    cases.extend(soak::cases());
    cases.extend(tenancy::cases());
    cases.extend(metrics::cases());
    // The S3 server's test credentials, for the workers' stores (set before any thread).
    for (name, value) in servers::S3_ENV {
        std::env::set_var(name, value);
    }
    hpcc_testkit::harness::run(cases, missing, |needs| {
        needs.contains(&Need::Vm).then_some("guest_vm")
    })
}
