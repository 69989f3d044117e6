//! Remote stores against real servers on loopback: moto's S3 server, redis-server, and a Redis
//! Cluster of six redis-server processes.
//!
//! One binary with a `libtest-mimic` harness, like hpcc-cli's: a test whose server is not
//! installed is reported as *ignored* with a `skipped: <reason>` line, never as passed.
//!
//! - `harness`: what a test needs, a tokio runtime, encoded entries, small checks.
//! - `servers`: hpcc-cli's launchers of redis-server and moto (the same file, included).
//! - `redis_cluster`: a Redis Cluster on loopback: creating it, moving a slot, failing over.
//! - `namespaces`: scoped views, usage and deletion in S3, Redis and a Redis Cluster.
//! - `cluster_faults`: reads and writes through a Redis Cluster whose slot moves or whose
//!   primary dies.
// Tests spawn their own tasks directly: the spawn rule is for the services.
#![allow(clippy::disallowed_methods)]

mod cluster_faults;
mod harness;
mod namespaces;
mod redis_cluster;
#[path = "../../../hpcc-cli/tests/it/servers.rs"]
#[allow(dead_code)]
mod servers;

fn main() {
    let mut cases: Vec<harness::Case> = Vec::new();
    cases.extend(namespaces::cases());
    cases.extend(cluster_faults::cases());
    hpcc_testkit::harness::run(cases, harness::missing, |_| None)
}
