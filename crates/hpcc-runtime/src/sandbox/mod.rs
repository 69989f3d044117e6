//! The `sandbox` runtime: a session is a set of fresh Linux namespaces (user, mount, PID,
//! network, IPC, UTS) whose PID 1 is `hpcc-agent`, reached over a Unix socket.
//!
//! Starting a session ([`SandboxRuntime::start`]):
//! 1. A host directory `<state_dir>/<id>/` is made with `root/` (an empty mount point),
//!    `sock/` (where the agent creates `agent.sock`) and `agent.log` (the agent's stderr).
//! 2. The child `unshare`s every namespace; the parent writes its uid/gid maps from a helper
//!    thread (`Command::spawn` blocks until exec): inside uid 0 is the caller's own uid when
//!    unprivileged, or [`SandboxConfig::root_host_id`] (default 65534, `nobody`) when the host
//!    runs as root, so a tenant's root is never the host's root. `setgroups` is denied.
//! 3. The child forks again (the new PID namespace's first process is PID 1), builds the root
//!    (`plan`), `pivot_root`s into it, sets the hostname and rlimits, `no_new_privs` and the
//!    seccomp filters ([`seccomp`]), and execs `/.hpcc/agent`.
//! 4. `start` returns once the agent accepts a connection on the socket.
//!
//! The network namespace is new and nothing configures it, so it has only `lo`, down: no
//! route anywhere, not even to the host's loopback. The session's host process is the
//! intermediate one; killing it kills PID 1 (`PR_SET_PDEATHSIG`), and with PID 1 the kernel
//! kills the whole namespace. [`Session::stop`] kills PID 1 through a pidfd (its host pid is
//! reported by the intermediate, which then reaps it, so no orphan zombie is left to the host's
//! init), waits for the intermediate and removes the host directory; dropping a session does
//! the same without waiting, including a session whose start failed half-way.

pub(crate) mod plan;
pub mod seccomp;

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rustix::pipe::PipeFlags;

use crate::session;
use crate::{AgentStream, Runtime, RuntimeError, Session, SessionSpec};

const RUNTIME: &str = "sandbox";

/// Where the agent's socket is inside a session.
pub const AGENT_SOCKET_INSIDE: &str = "/.hpcc/sock/agent.sock";

/// The hostname every session has.
pub const SANDBOX_HOSTNAME: &str = "hpcc";

/// How the sandbox runtime is set up on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The `hpcc-agent` binary on the host, statically linked (it runs on the image's root).
    pub agent_binary: PathBuf,
    /// Where session directories are made; short, since socket paths are limited to 107 bytes.
    pub state_dir: PathBuf,
    /// The host uid and gid that the sandbox's root maps to when the worker runs as root.
    pub root_host_id: u32,
    /// How long a session may take to accept its first connection.
    pub start_timeout: Duration,
}

impl SandboxConfig {
    /// Defaults for everything but the agent binary.
    pub fn new(agent_binary: PathBuf) -> SandboxConfig {
        SandboxConfig {
            agent_binary,
            state_dir: std::env::temp_dir().join("hpcc-sandbox"),
            root_host_id: 65534,
            start_timeout: Duration::from_secs(10),
        }
    }
}

/// The Linux-namespace sandbox runtime.
#[derive(Debug)]
pub struct SandboxRuntime {
    config: SandboxConfig,
}

impl SandboxRuntime {
    /// Checks that this host can run sandboxes (user namespaces, the agent binary).
    pub fn new(config: SandboxConfig) -> Result<SandboxRuntime, RuntimeError> {
        let unavailable = |reason: String| RuntimeError::Unavailable {
            runtime: RUNTIME,
            reason,
        };
        let metadata = std::fs::metadata(&config.agent_binary).map_err(|error| {
            unavailable(format!(
                "agent binary {}: {error}",
                config.agent_binary.display()
            ))
        })?;
        if !metadata.is_file() || metadata.permissions().mode() & 0o005 != 0o005 {
            return Err(unavailable(format!(
                "agent binary {} must be a world-readable, world-executable file",
                config.agent_binary.display()
            )));
        }
        crate::agent_binary::check(&config.agent_binary).map_err(unavailable)?;
        if let Ok(text) = std::fs::read_to_string("/proc/sys/user/max_user_namespaces") {
            if text.trim() == "0" {
                return Err(unavailable(
                    "user namespaces are disabled (user.max_user_namespaces = 0)".into(),
                ));
            }
        }
        seccomp::filters().map_err(|error| unavailable(error.to_string()))?;
        Ok(SandboxRuntime { config })
    }
}

/// A session id: the tenant (letters and digits only, shortened), the worker's pid, a counter.
fn session_id(tenant: &str) -> String {
    crate::vm::session_id("sbx", tenant)
}

fn start_error(step: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let step = step.into();
    move |source| RuntimeError::Start {
        runtime: RUNTIME,
        step,
        source,
    }
}

#[async_trait]
impl Runtime for SandboxRuntime {
    fn name(&self) -> &'static str {
        RUNTIME
    }

    #[tracing::instrument(skip_all, fields(tenant = %spec.tenant, image = %spec.image_digest))]
    async fn start(&self, spec: &SessionSpec) -> Result<Box<dyn Session>, RuntimeError> {
        let id = session_id(&spec.tenant);
        let dir = self.config.state_dir.join(&id);
        let socket = dir.join("sock/agent.sock");
        if socket.as_os_str().len() > 107 {
            return Err(start_error(format!("socket path {}", socket.display()))(
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "longer than a Unix socket path may be",
                ),
            ));
        }
        std::fs::create_dir_all(&self.config.state_dir).map_err(start_error(format!(
            "creating {}",
            self.config.state_dir.display()
        )))?;
        std::fs::create_dir(&dir).map_err(start_error(format!("creating {}", dir.display())))?;
        // From here on, dropping `session` kills what was started and removes `dir`.
        let mut session = SandboxSession {
            id,
            dir: dir.clone(),
            socket,
            child: Mutex::new(None),
            pid1: None,
        };
        let log_path = dir.join("agent.log");
        match start_child(&self.config, spec, &mut session, &log_path) {
            Ok(()) => {}
            Err(error) => return Err(with_log(error, &log_path)),
        }
        wait_until_listening(&session, self.config.start_timeout)
            .await
            .map_err(|error| with_log(error, &log_path))?;
        tracing::info!(session = %session.id, "sandbox session started");
        Ok(Box::new(session))
    }
}

/// Appends the tail of the agent's log (where the child reports its failing step) to a start
/// error.
fn with_log(error: RuntimeError, log_path: &Path) -> RuntimeError {
    let mut log = String::new();
    if let Ok(file) = std::fs::File::open(log_path) {
        let _ = file.take(4096).read_to_string(&mut log);
    }
    let log = log.trim();
    match error {
        RuntimeError::Start {
            runtime,
            step,
            source,
        } if !log.is_empty() => RuntimeError::Start {
            runtime,
            step: format!("{step} (agent log: {log})"),
            source,
        },
        other => other,
    }
}

fn prepare_dirs(config: &SandboxConfig, dir: &Path, as_root: bool) -> Result<(), RuntimeError> {
    let root = dir.join("root");
    std::fs::create_dir(&root).map_err(start_error(format!("creating {}", root.display())))?;
    let sock = dir.join("sock");
    std::fs::create_dir(&sock).map_err(start_error(format!("creating {}", sock.display())))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o700))
        .map_err(start_error(format!("chmod {}", sock.display())))?;
    if as_root {
        // The sandbox's root is `root_host_id` on the host; it must be able to create the socket.
        let id = Some(config.root_host_id);
        std::os::unix::fs::chown(&sock, id, id)
            .map_err(start_error(format!("chown {}", sock.display())))?;
    }
    Ok(())
}

/// Writes the child's id maps once it reports its pid; the go byte tells it the outcome.
fn write_id_maps(
    ready_read: OwnedFd,
    go_write: OwnedFd,
    inside_of: (u32, u32),
    deny_groups: bool,
) -> io::Result<()> {
    let mut pid_bytes = [0u8; 4];
    let mut file = std::fs::File::from(ready_read);
    if file.read_exact(&mut pid_bytes).is_err() {
        // The child failed before unsharing; its own error reaches `spawn`.
        return Ok(());
    }
    let pid = i32::from_ne_bytes(pid_bytes);
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let result = (|| {
        if deny_groups {
            std::fs::write(proc_dir.join("setgroups"), b"deny")?;
        }
        std::fs::write(proc_dir.join("uid_map"), format!("0 {} 1\n", inside_of.0))?;
        std::fs::write(proc_dir.join("gid_map"), format!("0 {} 1\n", inside_of.1))
    })();
    let answer = [u8::from(result.is_ok())];
    rustix::io::write(&go_write, &answer)?;
    result
}

fn start_child(
    config: &SandboxConfig,
    spec: &SessionSpec,
    session: &mut SandboxSession,
    log_path: &Path,
) -> Result<(), RuntimeError> {
    let as_root = rustix::process::geteuid().is_root();
    prepare_dirs(config, &session.dir, as_root)?;
    let log = std::fs::File::create(log_path)
        .map_err(start_error(format!("creating {}", log_path.display())))?;
    let (ready_read, ready_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)
        .map_err(|errno| start_error("creating a pipe")(errno.into()))?;
    let (go_read, go_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)
        .map_err(|errno| start_error("creating a pipe")(errno.into()))?;
    let filters = seccomp::filters()
        .map_err(|error| start_error("building seccomp filters")(io::Error::other(error)))?;
    let limits = spec.limits;
    let staging = session.dir.join("root");
    let sock_dir = session.dir.join("sock");
    let input = plan::PlanInput {
        rootfs: &spec.rootfs,
        staging: &staging,
        agent: &config.agent_binary,
        sock_dir: &sock_dir,
        hostname: SANDBOX_HOSTNAME,
        work_bytes: limits.work_bytes,
        open_files: limits.open_files,
        processes: limits.processes,
        clear_groups: as_root,
    };
    let (pid1_read, pid1_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)
        .map_err(|errno| start_error("creating a pipe")(errno.into()))?;
    let plan = plan::Plan::new(&input, ready_write, go_read, pid1_write, filters).map_err(
        start_error(format!("reading the image root {}", spec.rootfs.display())),
    )?;

    let inside_of = if as_root {
        (config.root_host_id, config.root_host_id)
    } else {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    };
    let helper = std::thread::Builder::new()
        .name("hpcc-sandbox-idmap".into())
        .spawn(move || write_id_maps(ready_read, go_write, inside_of, true))
        .map_err(start_error("starting the id-map thread"))?;

    let timeout_ms = u64::try_from(limits.job_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut command = tokio::process::Command::new("/.hpcc/agent");
    command
        .arg("--listen")
        .arg(format!("unix:{AGENT_SOCKET_INSIDE}"))
        .args(["--work-dir", "/work"])
        .arg("--work-size")
        .arg(limits.work_bytes.to_string())
        .args(["--hostname", SANDBOX_HOSTNAME])
        .arg("--source-date-epoch")
        .arg(spec.source_date_epoch.to_string())
        .arg("--job-timeout-ms")
        .arg(timeout_ms.to_string())
        .arg("--rlimit-as")
        .arg(limits.memory_bytes.to_string())
        .arg("--rlimit-cpu")
        .arg(limits.cpu_seconds.to_string())
        .arg("--rlimit-nproc")
        .arg(limits.processes.to_string())
        .arg("--rlimit-nofile")
        .arg(limits.open_files.to_string())
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    if let Some(filter) = std::env::var_os("HPCC_LOG") {
        command.env("HPCC_LOG", filter);
    }
    crate::sys::set_sandbox_pre_exec(&mut command, plan);
    let spawned = command.spawn();
    // Dropping the command closes the parent's copies of the child's pipe ends, so the helper
    // sees EOF if the child died before reporting.
    drop(command);
    let maps = helper.join();
    let child = spawned.map_err(start_error("starting the sandbox"))?;
    session.child = Mutex::new(Some(child));
    // Spawn returned, so PID 1 exec'd and the intermediate wrote its pid first (or died).
    // While the intermediate lives it has not reaped PID 1, so the pid cannot be reused
    // before the pidfd pins it.
    let mut pid_bytes = [0u8; 4];
    if std::fs::File::from(pid1_read)
        .read_exact(&mut pid_bytes)
        .is_ok()
    {
        let pid = rustix::process::Pid::from_raw(i32::from_ne_bytes(pid_bytes));
        if let Some(pid) = pid {
            session.pid1 =
                rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok();
        }
    }
    match maps {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(start_error("writing the uid/gid maps")(error)),
        Err(_) => Err(start_error("writing the uid/gid maps")(io::Error::other(
            "helper thread panicked",
        ))),
    }
}

async fn wait_until_listening(
    session: &SandboxSession,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let started = Instant::now();
    loop {
        if !session.is_alive() {
            return Err(start_error("waiting for the agent")(io::Error::other(
                "the sandbox exited",
            )));
        }
        match tokio::net::UnixStream::connect(&session.socket).await {
            Ok(_probe) => return Ok(()),
            Err(error) if started.elapsed() > timeout => {
                return Err(start_error(format!(
                    "waiting {} ms for the agent to listen on {}",
                    timeout.as_millis(),
                    session.socket.display()
                ))(error))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// A running sandbox.
#[derive(Debug)]
struct SandboxSession {
    id: String,
    dir: PathBuf,
    socket: PathBuf,
    /// The intermediate process (see the module docs); `None` once stopped.
    child: Mutex<Option<tokio::process::Child>>,
    /// A pidfd of the namespace's PID 1, killed first on stop.
    pid1: Option<OwnedFd>,
}

impl SandboxSession {
    /// Kills PID 1, and with it the whole PID namespace; the intermediate then reaps it and
    /// exits. Killing the intermediate alone would leave PID 1 to die as an orphan, a zombie
    /// for the host's init to reap.
    fn kill_pid1(&self) {
        if let Some(pidfd) = &self.pid1 {
            let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
        }
    }

    fn take_child(&self) -> Option<tokio::process::Child> {
        match self.child.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

/// Removes a session directory, retrying briefly: the namespace's last processes may still be
/// exiting and hold the socket directory's mount for a moment.
fn remove_dir(dir: &Path) -> io::Result<()> {
    let mut attempts = 0;
    loop {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) if attempts >= 50 => return Err(error),
            Err(_) => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[async_trait]
impl Session for SandboxSession {
    fn id(&self) -> &str {
        &self.id
    }

    async fn connect(&self) -> Result<Box<dyn AgentStream>, RuntimeError> {
        session::agent_stream(
            &self.id,
            tokio::net::UnixStream::connect(&self.socket).await,
        )
    }

    fn is_alive(&self) -> bool {
        session::alive(&self.child)
    }

    async fn stop(self: Box<Self>) -> Result<(), RuntimeError> {
        self.kill_pid1();
        if let Some(mut child) = self.take_child() {
            // Give the intermediate a moment to reap PID 1 and exit by itself; then make sure.
            let exited = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            if !matches!(exited, Ok(Ok(_))) {
                let _ = child.kill().await;
            }
        }
        let dir = self.dir.clone();
        session::off_thread(&self.id, move || remove_dir(&dir)).await?;
        tracing::info!(session = %self.id, "sandbox session stopped");
        Ok(())
    }
}

impl Drop for SandboxSession {
    fn drop(&mut self) {
        self.kill_pid1();
        if let Some(mut child) = self.take_child() {
            let _ = child.start_kill();
        }
        if let Err(error) = remove_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), %error, "cannot remove session directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_unique_and_tame() {
        let first = session_id("acme/../Corp 1!");
        let second = session_id("acme/../Corp 1!");
        assert_ne!(first, second);
        assert!(first.starts_with("sbx-acmeCorp1-"), "{first}");
        assert!(
            first.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{first}"
        );
        assert!(session_id(&"x".repeat(500)).len() < 60);
    }

    #[test]
    fn a_missing_agent_makes_the_runtime_unavailable() {
        let error = SandboxRuntime::new(SandboxConfig::new("/nonexistent/hpcc-agent".into()))
            .expect_err("no agent");
        assert!(matches!(error, RuntimeError::Unavailable { .. }), "{error}");
        assert!(
            error.to_string().contains("/nonexistent/hpcc-agent"),
            "{error}"
        );
    }
}
