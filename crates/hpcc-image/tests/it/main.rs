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

mod fixture;
mod pull;
mod registry;

use libtest_mimic::{Arguments, Trial};

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
    let args = Arguments::from_args();
    let trials = pull::cases()
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
