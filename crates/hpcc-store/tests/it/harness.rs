//! Test plumbing: what a test needs from the machine, a runtime, encoded entries.

use std::process::{Command, Stdio};

use bytes::Bytes;
use hpcc_core::digest::Digest;
use hpcc_store::{DiskConfig, DiskStore, Kind};

/// A test's outcome: `Err` carries the failure message.
pub type TestResult = Result<(), String>;

/// A test: its name, what it needs, and its body.
pub type Case = (&'static str, &'static [Need], fn() -> TestResult);

/// Something a test needs from the machine.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// redis-server and redis-cli on PATH.
    Redis,
    /// moto's S3 server (`python3 -m moto.server`).
    S3,
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The first unmet need, as a reason.
pub fn missing(needs: &[Need]) -> Option<String> {
    needs.iter().find_map(|need| {
        let unmet = match need {
            Need::Redis => (!succeeds("redis-server", &["--version"])
                || !succeeds("redis-cli", &["--version"]))
            .then_some("redis-server not installed"),
            Need::S3 => (!succeeds("python3", &["-c", "import moto.server, flask"]))
                .then_some("moto (pip install 'moto[server]') not installed"),
        };
        unmet.map(str::to_owned)
    })
}

/// Whether the tests run as root (`servers` asks, for memcached).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// A two-thread tokio runtime (the machine has two cores).
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| format!("tokio runtime: {error}"))
}

/// Runs `body` on a fresh [`runtime`].
pub fn run<F: std::future::Future<Output = TestResult>>(body: F) -> TestResult {
    runtime()?.block_on(body)
}

/// Writes an object for each of `keys` (payloads derived from `seed`) straight to `store`,
/// returning them in order.
pub async fn write_all(
    store: &dyn hpcc_store::remote::Store,
    keys: &[Digest],
    seed: u8,
) -> Result<Vec<Bytes>, String> {
    let mut objects = Vec::new();
    for key in keys {
        let object = encoded(Kind::Result, key, seed, 200)?;
        store
            .put(Kind::Result, key, object.clone())
            .await
            .map_err(failed("put"))?;
        objects.push(object);
    }
    Ok(objects)
}

/// A valid encoded entry for `key` (as a disk store writes it), `len` payload bytes derived
/// from `seed`, so that two tenants' objects for one key differ.
pub fn encoded(kind: Kind, key: &Digest, seed: u8, len: usize) -> Result<Bytes, String> {
    let dir = tempfile::tempdir().map_err(|error| format!("temporary directory: {error}"))?;
    let disk = DiskStore::open(dir.path(), DiskConfig::default())
        .map_err(|error| format!("disk store: {error}"))?;
    let payload: Vec<u8> = (0..len)
        .map(|index| (index.to_le_bytes()[0]).wrapping_mul(31).wrapping_add(seed))
        .collect();
    disk.put(kind, key, &payload)
        .map_err(|error| format!("put: {error}"))?;
    disk.get_encoded(kind, key)
        .map_err(|error| format!("read: {error}"))?
        .map(Bytes::from)
        .ok_or_else(|| "the entry just written is missing".to_owned())
}

/// The keys a test writes: `count` digests, distinct per `label`.
pub fn keys(label: &str, count: u32) -> Vec<Digest> {
    (0..count)
        .map(|index| Digest::of(format!("{label}-{index}").as_bytes()))
        .collect()
}

/// Fails the test with `message` unless `condition` holds.
pub fn check(condition: bool, message: impl FnOnce() -> String) -> TestResult {
    if condition {
        Ok(())
    } else {
        Err(message())
    }
}

/// For `map_err`: an error as a failure of `what`.
pub fn failed<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |error| format!("{what}: {error}")
}
