//! What the three runtimes' sessions share, written once: a session is a host process (the
//! sandbox's intermediate, QEMU, or Firecracker or its jail's keeper) behind a lock until it
//! is stopped, a directory to remove off the async threads, and a connection to its agent.
//! Each runtime keeps only what differs: how it reaches the agent (a Unix socket, or hybrid
//! vsock) and what stopping involves (a PID 1 to kill, a jail to take down, a snapshot).

use std::io;
use std::sync::Mutex;

use crate::{AgentStream, RuntimeError};

/// A session's host process.
pub(crate) trait HostProcess {
    /// Whether it still runs (an exit already reaped counts as gone).
    fn running(&mut self) -> bool;
}

impl HostProcess for tokio::process::Child {
    fn running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }
}

impl HostProcess for crate::vm::jail::Spawned {
    fn running(&mut self) -> bool {
        self.child.running()
    }
}

/// Whether the process in `slot` still runs; `false` once it was taken away to be stopped.
/// A poisoned lock is used anyway: the slot holds at most a process handle.
pub(crate) fn alive<P: HostProcess>(slot: &Mutex<Option<P>>) -> bool {
    let mut guard = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    guard.as_mut().is_some_and(HostProcess::running)
}

/// The error of an I/O step of `session`.
pub(crate) fn io_error(session: &str) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        session: session.to_owned(),
        source,
    }
}

/// A connection to `session`'s agent, boxed, or the error naming the session.
pub(crate) fn agent_stream<S: AgentStream + 'static>(
    session: &str,
    connected: io::Result<S>,
) -> Result<Box<dyn AgentStream>, RuntimeError> {
    connected
        .map(|stream| Box::new(stream) as Box<dyn AgentStream>)
        .map_err(io_error(session))
}

/// Runs blocking file-system `work` of `session` (removing its directory, its jail) on the
/// blocking pool; a panic there is an error like any other.
pub(crate) async fn off_thread(
    session: &str,
    work: impl FnOnce() -> io::Result<()> + Send + 'static,
) -> Result<(), RuntimeError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(io::Error::other(error)))
        .map_err(io_error(session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_is_alive_until_it_exits_or_is_taken() {
        let child = tokio::process::Command::new("sleep")
            .arg("30")
            .kill_on_drop(true)
            .spawn()
            .expect("sleep runs");
        let slot = Mutex::new(Some(child));
        assert!(alive(&slot));
        let mut child = slot.lock().expect("lock").take().expect("a child");
        assert!(!alive(&slot), "taken away to be stopped");
        child.kill().await.expect("killed");
        let slot = Mutex::new(Some(child));
        assert!(!alive(&slot), "exited");
    }

    #[tokio::test]
    async fn errors_name_their_session() {
        let error = agent_stream::<tokio::net::UnixStream>(
            "vm-7",
            Err(io::Error::new(io::ErrorKind::ConnectionRefused, "refused")),
        )
        .err()
        .expect("an error");
        assert!(error.to_string().contains("vm-7"), "{error}");
        let failed = off_thread("sbx-1", || Err(io::Error::other("disk gone"))).await;
        assert!(matches!(failed, Err(RuntimeError::Io { session, .. }) if session == "sbx-1"));
        let panicked = off_thread("sbx-2", || panic!("boom")).await;
        assert!(panicked.is_err());
        assert!(off_thread("sbx-3", || Ok(())).await.is_ok());
    }
}
