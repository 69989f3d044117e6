//! Integration tests of `hpcc-image` against a real OCI registry.
//!
//! One binary with a `libtest-mimic` harness, so a test whose prerequisite is missing (the
//! `docker-registry` binary, from Debian's `docker-registry` package) is reported as
//! *ignored* with a `skipped: <name>: <reason>` line, never as passed.
//!
//! - `fixture`: the synthetic image, as registry push, OCI layout and docker-archive, and
//!   tree listings.
//! - `registry`: a throwaway `docker-registry` on 127.0.0.1, stopped on drop.
//! - `pull`: pulling by digest, and agreement of pulled and imported trees; refusals.
// Tests spawn their own tasks directly: the spawn rule is for the services.
#![allow(clippy::disallowed_methods)]

mod fixture;
mod pull;
mod registry;

/// A test's outcome: `Err` carries the failure message.
pub type TestResult = Result<(), String>;

/// Something a test needs from the machine.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// The `docker-registry` binary (Debian package `docker-registry`).
    DockerRegistry,
}

/// The first unmet need, as a reason.
fn missing(needs: &[Need]) -> Option<String> {
    needs.iter().find_map(|need| match need {
        Need::DockerRegistry => (!registry::installed())
            .then(|| "docker-registry not installed (apt-get install docker-registry)".to_owned()),
    })
}

/// A test: its name, what it needs, and its body.
pub type Case = (&'static str, &'static [Need], fn() -> TestResult);

fn main() {
    hpcc_testkit::harness::run(pull::cases(), missing, |_| None)
}
