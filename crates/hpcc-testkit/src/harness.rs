//! The runner of the integration binaries (`harness = false`, libtest-mimic).
//!
//! Each crate keeps its own `Need` (what its tests require of the machine) and the check of
//! it; this runs the cases: a selected case whose needs are missing prints
//! `skipped: <name>: <reason>` and is reported as ignored, never as passed, and needs are
//! only checked for selected cases (checking may build an image). A case `prefix` names (the
//! microVM tests) runs as `<prefix>::<name>`, so `scripts/test.sh` can run those as a stage
//! of their own with `--skip`/a filter.

use libtest_mimic::{Arguments, Trial};

/// What a test returns: `Err` carries the failure message.
pub type TestResult = Result<(), String>;

/// A test: name, needs, body.
pub type Case<N> = (&'static str, &'static [N], fn() -> TestResult);

/// Runs `cases` and exits: `missing(needs)` says why a case cannot run here, `prefix(needs)`
/// the name prefix of a case (`guest_vm` for guest tests).
pub fn run<N: 'static>(
    cases: Vec<Case<N>>,
    missing: impl Fn(&[N]) -> Option<String>,
    prefix: impl Fn(&[N]) -> Option<&'static str>,
) -> ! {
    let args = Arguments::from_args();
    let selected = |name: &str| {
        let matches = |pattern: &str| {
            if args.exact {
                name == pattern
            } else {
                name.contains(pattern)
            }
        };
        args.filter.as_deref().is_none_or(matches)
            && !args.skip.iter().any(|skip| matches(skip.as_str()))
    };
    let trials = cases
        .into_iter()
        .map(|(name, needs, body)| {
            let name = match prefix(needs) {
                Some(prefix) => format!("{prefix}::{name}"),
                None => name.to_owned(),
            };
            let trial = Trial::test(&name, move || body().map_err(Into::into));
            if !selected(&name) {
                return trial;
            }
            match missing(needs) {
                Some(reason) => {
                    println!("skipped: {name}: {reason}");
                    trial.with_ignored_flag(true)
                }
                None => trial,
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}
