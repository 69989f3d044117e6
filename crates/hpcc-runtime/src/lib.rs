//! Isolation runtimes: where a worker runs a tenant's compile.
//!
//! A [`Runtime`] starts a [`Session`] for one (tenant, image) pair: an isolated environment
//! whose PID 1 is `hpcc-agent`, with the image's flattened root file system mounted read-only
//! and an empty work directory. The worker keeps sessions warm and runs jobs in them; each job
//! is one connection to the agent ([`Session::connect`]) speaking `hpcc.agent.v1`
//! ([`agent_client::run_job`]). Only how a session starts and how a connection reaches its
//! agent differ between runtimes: a Unix socket for the [`sandbox`], virtio-serial ports for
//! [`vm::qemu`], hybrid vsock for [`vm::firecracker`]. So a runtime implements these two traits,
//! the worker picks one from its config, and nothing above [`Runtime`] differs; [`health`]
//! notices a session that stopped answering, whichever runtime runs it.
//!
//! Invariants: a guest has no network device (`-nodefaults -nic none`; its only channel is the
//! agent's), and its VMM dies with the worker (`PR_SET_PDEATHSIG`). All unsafe code is in one
//! private `sys` module. [`testing`] builds what the tests boot (the static agent, a Debian
//! image with gcc, and Debian's cloud kernel, downloaded with `apt-get download` and unpacked,
//! never installed).
// Unit tests spawn their own tasks directly: the spawn rule is for the services.
#![cfg_attr(test, allow(clippy::disallowed_methods))]
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

pub mod agent_binary;
pub mod agent_client;
pub mod health;
pub mod sandbox;
mod session;
#[allow(unsafe_code)]
mod sys;
pub mod testing;
pub mod vm;

/// Makes `command`'s child die (SIGKILL) with the thread that spawns it, even when that
/// process is killed outright and no destructor runs: for VMMs and their helpers, which must
/// not outlive whoever started them.
pub fn kill_with_parent(command: &mut tokio::process::Command) {
    sys::kill_with_parent(command);
}

/// Moves the calling thread into new namespaces of the kinds in `flags` (`unshare(2)`); the
/// descriptor table (`CLONE_FILES`) is refused. For `fake-jailer`, the test double of
/// Firecracker's jailer, which does what the jailer does without unsafe code of its own.
#[doc(hidden)]
pub fn unshare(flags: rustix::thread::UnshareFlags) -> std::io::Result<()> {
    sys::unshare(flags)
}

/// What a session is for, and how it is confined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    /// The tenant the session belongs to (for names, logs and audit; sessions are never
    /// shared between tenants).
    pub tenant: String,
    /// The OCI image digest (`sha256:<hex>`) whose root file system the session runs.
    pub image_digest: String,
    /// The flattened root file system of that image, on the host.
    pub rootfs: PathBuf,
    /// Resource limits.
    pub limits: Limits,
    /// `SOURCE_DATE_EPOCH` pinned inside the session.
    pub source_date_epoch: u64,
}

/// Resource limits of a session and its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the tmpfs work directory.
    pub work_bytes: u64,
    /// Address space of each job process, in bytes.
    pub memory_bytes: u64,
    /// Processes and threads a job may have.
    pub processes: u64,
    /// CPU seconds of each job process.
    pub cpu_seconds: u64,
    /// Open files per process.
    pub open_files: u64,
    /// Wall-clock limit of a job.
    pub job_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            work_bytes: 2 << 30,
            memory_bytes: 4 << 30,
            processes: 256,
            cpu_seconds: 600,
            open_files: 1024,
            job_timeout: Duration::from_secs(600),
        }
    }
}

/// A byte stream to an agent.
pub trait AgentStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> AgentStream for T {}

/// A failed runtime step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The runtime cannot run here (no user namespaces, no KVM, a binary missing).
    #[error("{runtime} runtime unavailable: {reason}")]
    Unavailable {
        /// The runtime's name.
        runtime: &'static str,
        /// Why.
        reason: String,
    },
    /// Starting a session failed at `step`.
    #[error("starting a {runtime} session: {step}")]
    Start {
        /// The runtime's name.
        runtime: &'static str,
        /// What was being done.
        step: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The agent could not be reached, or broke the protocol.
    #[error("agent of session {session}: {message}")]
    Agent {
        /// The session id.
        session: String,
        /// What went wrong.
        message: String,
    },
    /// I/O on the agent connection failed.
    #[error("agent connection of session {session}")]
    Io {
        /// The session id.
        session: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// An isolation runtime: makes sessions.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// The runtime's name (`sandbox`, `qemu`, `firecracker`), as written in audit rows.
    fn name(&self) -> &'static str;

    /// Starts a session; returns once its agent accepts connections.
    async fn start(&self, spec: &SessionSpec) -> Result<Box<dyn Session>, RuntimeError>;

    /// Host memory one session of this runtime may take, in bytes (guest RAM plus the VMM's
    /// own overhead), for the pool's memory accounting; 0 when the runtime does not know.
    fn session_memory(&self) -> u64 {
        0
    }

    /// What a snapshot of this runtime depends on besides the tenant and image (the guest
    /// kernel's digest and the VMM's version), or `None` if the runtime cannot snapshot. A
    /// snapshot is restored only by a runtime with the same identity.
    fn snapshot_identity(&self) -> Option<String> {
        None
    }

    /// Resumes a session from the files [`Session::snapshot`] wrote into `dir`, for `spec`
    /// (the same tenant and image: the caller keys and checks snapshots). Returns once its
    /// agent accepts connections.
    async fn restore(
        &self,
        spec: &SessionSpec,
        dir: &std::path::Path,
    ) -> Result<Box<dyn Session>, RuntimeError> {
        let _ = (spec, dir);
        Err(RuntimeError::Unavailable {
            runtime: self.name(),
            reason: "this runtime cannot restore snapshots".into(),
        })
    }
}

/// One running session: an isolated environment with an agent as PID 1.
#[async_trait]
pub trait Session: Send + Sync {
    /// A unique id (the `vm` column of audit rows).
    fn id(&self) -> &str;

    /// Opens a connection to the agent, for one job.
    async fn connect(&self) -> Result<Box<dyn AgentStream>, RuntimeError>;

    /// Whether the session still runs (its agent has not exited).
    fn is_alive(&self) -> bool;

    /// Checks that the agent answers a fresh connection (hello, then its welcome) within
    /// `timeout`; runtimes whose connections are a limited resource keep one for this.
    async fn ping(&self, timeout: Duration) -> Result<(), RuntimeError> {
        let ping = async {
            let stream = self.connect().await?;
            agent_client::ping(self.id(), stream).await
        };
        tokio::time::timeout(timeout, ping)
            .await
            .unwrap_or_else(|_| {
                Err(RuntimeError::Agent {
                    session: self.id().to_owned(),
                    message: format!("no welcome within {} ms", timeout.as_millis()),
                })
            })
    }

    /// Stops the session and removes everything it left on the host.
    async fn stop(self: Box<Self>) -> Result<(), RuntimeError>;

    /// Host processes that make up the session (the VMM, its device backends), for health
    /// checks and for tests that look at a session from outside.
    fn host_pids(&self) -> Vec<u32> {
        Vec::new()
    }

    /// Pauses the guest, saves its whole state into the empty directory `dir`, and stops the
    /// session as [`Session::stop`] does, whatever the outcome. Files written are the
    /// caller's to key, digest and protect.
    async fn snapshot(self: Box<Self>, dir: &std::path::Path) -> Result<(), RuntimeError> {
        let _ = dir;
        let id = self.id().to_owned();
        self.stop().await?;
        Err(RuntimeError::Agent {
            session: id,
            message: "this runtime cannot snapshot sessions".into(),
        })
    }
}
