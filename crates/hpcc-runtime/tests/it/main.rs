//! Integration tests of the sandbox, QEMU and Firecracker runtimes with a real Debian toolchain image.
//!
//! One binary with a `libtest-mimic` harness, so a test whose prerequisite is missing (not
//! root, no `debootstrap`, the agent does not build) is reported as *ignored* with a
//! `skipped: <name>: <reason>` line, never as passed.
//!
//! Tests that boot guests are named `guest_vm::<case>`, so `scripts/test.sh` runs them as a stage of
//! their own (`-- guest_vm::`) after the others (`-- --skip guest_vm::`): software-emulated guests keep both
//! cores of a small machine busy and would upset timing-bound tests running beside them.
//!
//! - `harness`: the static agent build, the cached Debian image, running jobs in sessions.
//! - `sandbox`: compiles, isolation properties, timeouts, refusals, cancellation, cleanup.
//! - `qemu`: the same image in QEMU microVM guests (software emulation where KVM cannot boot).
//! - `firecracker`: the Firecracker runtime against `fake-firecracker` and `fake-jailer`,
//!   doubles of its binaries: direct and jailed sessions, snapshots over the API.
//! - `jail`: hpcc's VMM jail seen from outside on QEMU sessions (uid, capabilities,
//!   namespaces, root, cgroup), booted and restored from a snapshot; a guest killed by its
//!   cgroup's memory limit; a Firecracker double served from its jail.
// Tests spawn their own tasks directly: the spawn rule is for the services.
#![allow(clippy::disallowed_methods)]

mod firecracker;
mod harness;
mod jail;
mod qemu;
mod sandbox;

use harness::Need;

/// A test: its name, what it needs, and its body.
pub type Case = (&'static str, &'static [Need], fn() -> harness::TestResult);

fn main() {
    // A helper run of this binary by `jail_vmm_dies_with_its_worker`, standing in for a worker.
    if std::env::var_os(jail::HOLD_SESSION).is_some() {
        std::process::exit(jail::hold_session());
    }
    let mut cases: Vec<Case> = sandbox::cases();
    cases.extend(qemu::cases());
    cases.extend(firecracker::cases());
    cases.extend(jail::cases());
    hpcc_testkit::harness::run(cases, harness::missing, |needs| {
        needs.contains(&Need::Vm).then_some("guest_vm")
    })
}
