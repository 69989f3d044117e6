//! Integration tests of the sandbox, QEMU and Firecracker runtimes with a real Debian toolchain image.
//!
//! One binary with a `libtest-mimic` harness, so a test whose prerequisite is missing (not
//! root, no `debootstrap`, the agent does not build) is reported as *ignored* with a
//! `skipped: <name>: <reason>` line, never as passed.
//!
//! - `harness`: the static agent build, the cached Debian image, running jobs in sessions.
//! - `sandbox`: compiles, isolation properties, timeouts, refusals, cancellation, cleanup.
//! - `qemu`: the same image in QEMU microVM guests (software emulation where KVM cannot boot).
//! - `firecracker`: the Firecracker runtime against `fake-firecracker`, a double of its binary.

mod firecracker;
mod harness;
mod qemu;
mod sandbox;

use libtest_mimic::{Arguments, Trial};

use harness::Need;

/// A test: its name, what it needs, and its body.
pub type Case = (&'static str, &'static [Need], fn() -> harness::TestResult);

fn main() {
    let args = Arguments::from_args();
    let mut cases: Vec<Case> = sandbox::cases();
    cases.extend(qemu::cases());
    cases.extend(firecracker::cases());
    let trials = cases
        .into_iter()
        .map(|(name, needs, body)| {
            let trial = Trial::test(name, move || body().map_err(Into::into));
            // Only look for prerequisites (which may build the image) for trials that run.
            let selected = args.filter.as_deref().is_none_or(|filter| {
                if args.exact {
                    name == filter
                } else {
                    name.contains(filter)
                }
            });
            if !selected {
                return trial;
            }
            match harness::missing(needs) {
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
