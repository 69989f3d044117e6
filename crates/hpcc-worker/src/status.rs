//! The worker's status file: what `hpcc-worker status --config FILE` shows an operator.
//!
//! A serving worker rewrites `<state_dir>/status` at every heartbeat tick (written to a temporary
//! name and renamed, so a reader never sees half of it): which runtime runs the jobs and whether
//! it is a kernel boundary, its sessions and load, its pid and when it was written. Plain
//! `key = value` lines, one per field, so that `grep` and eyes read it as well as this module.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The status file in a worker's state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("status")
}

/// What the boundary column says for a runtime.
pub fn boundary(kernel_boundary: bool) -> &'static str {
    if kernel_boundary {
        "kernel boundary (a microVM per tenant session)"
    } else {
        "NOT a kernel boundary (namespaces and seccomp over the host's kernel)"
    }
}

/// One snapshot of a serving worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The worker's id.
    pub worker: String,
    /// The runtime's name (`qemu`, `firecracker`, `sandbox`).
    pub runtime: String,
    /// Whether that runtime is a kernel boundary.
    pub kernel_boundary: bool,
    /// The serving process.
    pub pid: u32,
    /// When this was written, Unix seconds.
    pub updated: u64,
    /// Compiles running and queued.
    pub load: u32,
    /// Compiles at once.
    pub capacity: u32,
    /// Sessions taking jobs, starting, and being retired.
    pub sessions: [usize; 3],
    /// Jobs waiting for a new session.
    pub waiting: usize,
}

impl Status {
    /// The file's text.
    pub fn render(&self) -> String {
        let [ready, starting, retiring] = self.sessions;
        format!(
            "worker = {}\nruntime = {}\nboundary = {}\npid = {}\nupdated = {}\nload = {}\n\
             capacity = {}\nsessions = {ready} ready, {starting} starting, {retiring} retiring\n\
             waiting_for_session = {}\n",
            self.worker,
            self.runtime,
            boundary(self.kernel_boundary),
            self.pid,
            self.updated,
            self.load,
            self.capacity,
            self.waiting,
        )
    }

    /// Writes the file into `state_dir`, atomically.
    pub fn write(&self, state_dir: &Path) -> io::Result<()> {
        let target = path(state_dir);
        let partial = state_dir.join(format!(".status.{}", std::process::id()));
        std::fs::write(&partial, self.render())?;
        std::fs::rename(&partial, &target)
    }
}

/// Seconds since the epoch now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The value of `key` in a status file's `text`.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(" = ")?;
        (name == key).then_some(value)
    })
}

/// Whether the worker that wrote `text` still serves: its pid runs and it wrote within
/// `stale` of `now`. The reason when it does not.
pub fn liveness(
    text: &str,
    now: u64,
    stale: Duration,
    pid_runs: impl Fn(u32) -> bool,
) -> Result<(), String> {
    let pid: u32 = field(text, "pid")
        .and_then(|pid| pid.parse().ok())
        .ok_or("the status file has no pid")?;
    let updated: u64 = field(text, "updated")
        .and_then(|updated| updated.parse().ok())
        .ok_or("the status file has no time")?;
    if !pid_runs(pid) {
        return Err(format!("not running (pid {pid} is gone)"));
    }
    let age = now.saturating_sub(updated);
    if age > stale.as_secs() {
        return Err(format!("not answering (status last written {age} s ago)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kernel_boundary: bool) -> Status {
        Status {
            worker: "w1".into(),
            runtime: if kernel_boundary { "qemu" } else { "sandbox" }.into(),
            kernel_boundary,
            pid: 42,
            updated: 1_000,
            load: 3,
            capacity: 4,
            sessions: [2, 1, 0],
            waiting: 5,
        }
    }

    #[test]
    fn the_file_says_which_boundary_runs_the_jobs() {
        let sandbox = sample(false).render();
        assert_eq!(field(&sandbox, "runtime"), Some("sandbox"));
        assert!(field(&sandbox, "boundary").is_some_and(|b| b.starts_with("NOT a kernel")));
        let qemu = sample(true).render();
        assert_eq!(field(&qemu, "boundary"), Some(boundary(true)));
        assert_eq!(
            field(&qemu, "sessions"),
            Some("2 ready, 1 starting, 0 retiring")
        );
        assert_eq!(field(&qemu, "waiting_for_session"), Some("5"));
    }

    #[test]
    fn written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        sample(false).write(dir.path()).unwrap();
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert_eq!(text, sample(false).render());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
    }

    #[test]
    fn gone_or_silent_workers_are_not_running() {
        let text = sample(true).render();
        let stale = Duration::from_secs(30);
        assert!(liveness(&text, 1_010, stale, |_| true).is_ok());
        let gone = liveness(&text, 1_010, stale, |_| false).unwrap_err();
        assert!(gone.contains("pid 42 is gone"), "{gone}");
        let silent = liveness(&text, 1_100, stale, |_| true).unwrap_err();
        assert!(silent.contains("100 s ago"), "{silent}");
        assert!(liveness("garbage", 0, stale, |_| true).is_err());
    }
}
