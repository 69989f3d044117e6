//! Test prerequisites and helpers: the statically linked agent, the cached Debian image with
//! gcc, and running a job in a sandbox session.
//!
//! `cargo test -p hpcc-runtime` does not build `hpcc-agent`'s binary (only a package's own
//! binaries are built for its tests), and the binary must be static to run on the image's root,
//! so [`agent_binary`] builds it once per run with
//! `RUSTFLAGS='-C target-feature=+crt-static' cargo build -p hpcc-agent --target
//! x86_64-unknown-linux-gnu` into `<target>/agent-static` (a separate target directory, so the
//! nested cargo neither waits on the outer one's lock nor invalidates its artifacts).
//! `HPCC_AGENT_BIN` names a prebuilt binary instead.
//!
//! [`image`] runs `debootstrap --variant=minbase --include=gcc,g++,libc6-dev bookworm` into a
//! temporary directory and renames it to `<target>/test-images/bookworm-gcc` when complete, so
//! an interrupted build is never used and later runs reuse it.

use std::time::Duration;

use hpcc_proto::agent::JobHeader;
use hpcc_runtime::agent_client::{run_job, InputFile, JobOutcome};
use hpcc_runtime::sandbox::{SandboxConfig, SandboxRuntime};
use hpcc_runtime::{Limits, Runtime, Session, SessionSpec};

/// What a test returns: `Err` carries the failure message.
pub type TestResult = Result<(), String>;

/// A prerequisite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Running as root (debootstrap needs it; CI runs as root).
    Root,
    /// The static agent binary.
    Agent,
    /// The Debian image with gcc.
    Image,
    /// QEMU, vhost-device-vsock and the Debian guest kernel.
    Vm,
    /// cgroup v1 hierarchies of memory, cpu and pids (what the jail tests read).
    Cgroups,
}

/// Why a test cannot run here, if it cannot.
pub fn missing(needs: &[Need]) -> Option<String> {
    for need in needs {
        let problem = match need {
            Need::Root if !rustix::process::geteuid().is_root() => Some("needs root".to_owned()),
            Need::Root => None,
            Need::Agent => agent_binary().err(),
            Need::Image => image().err(),
            Need::Vm => hpcc_runtime::testing::vm_tools()
                .err()
                .or_else(|| hpcc_runtime::testing::guest_kernel().err()),
            Need::Cgroups => crate::jail::cgroups_missing(),
        };
        if problem.is_some() {
            return problem;
        }
    }
    None
}

pub use hpcc_runtime::testing::{agent_binary, image};

/// A runtime over the agent, with session directories under a fresh temporary directory.
pub struct Sandbox {
    /// The runtime.
    pub runtime: SandboxRuntime,
    /// Where session directories go.
    pub state: tempfile::TempDir,
}

/// Makes a [`Sandbox`].
pub fn sandbox() -> Result<Sandbox, String> {
    let agent = agent_binary()?;
    let state = tempfile::Builder::new()
        .prefix("hpcc-it-")
        .tempdir_in("/tmp")
        .map_err(|error| format!("temp dir: {error}"))?;
    let mut config = SandboxConfig::new(agent);
    config.state_dir = state.path().to_owned();
    let runtime = SandboxRuntime::new(config).map_err(|error| format!("{error:#}"))?;
    Ok(Sandbox { runtime, state })
}

/// The session spec for `tenant` on the test image.
pub fn spec(tenant: &str) -> Result<SessionSpec, String> {
    Ok(SessionSpec {
        tenant: tenant.to_owned(),
        image_digest: "sha256:test-bookworm-gcc".to_owned(),
        rootfs: image()?,
        limits: Limits {
            work_bytes: 256 << 20,
            job_timeout: Duration::from_secs(120),
            ..Limits::default()
        },
        source_date_epoch: 1_700_000_000,
    })
}

impl Sandbox {
    /// Starts a session for `tenant`.
    pub async fn start(&self, tenant: &str) -> Result<Box<dyn Session>, String> {
        self.runtime
            .start(&spec(tenant)?)
            .await
            .map_err(|error| error_chain(&error))
    }
}

/// `error` with its sources.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// A job header running `argv`, asking for `outputs`.
pub fn header(argv: &[&str], outputs: &[&str]) -> JobHeader {
    JobHeader {
        job_id: "it".into(),
        argv: argv.iter().map(|word| (*word).to_owned()).collect(),
        outputs: outputs.iter().map(|path| (*path).to_owned()).collect(),
        ..JobHeader::default()
    }
}

/// Runs `header` with `inputs` in `session`.
pub async fn run(
    session: &dyn Session,
    header: JobHeader,
    inputs: Vec<InputFile>,
) -> Result<JobOutcome, String> {
    let stream = session
        .connect()
        .await
        .map_err(|error| error_chain(&error))?;
    run_job(session.id(), stream, header, inputs)
        .await
        .map_err(|error| error_chain(&error))
}

/// Runs a shell script in `session` and returns its stdout, failing on a non-zero exit.
pub async fn shell(session: &dyn Session, script: &str) -> Result<String, String> {
    let outcome = run(session, header(&["sh", "-c", script], &[]), Vec::new()).await?;
    if outcome.result.exit_code != 0 || !outcome.result.refused.is_empty() {
        return Err(format!(
            "`{script}` failed: {:?}; stdout {:?}; stderr {:?}",
            outcome.result,
            String::from_utf8_lossy(&outcome.stdout),
            String::from_utf8_lossy(&outcome.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&outcome.stdout).into_owned())
}

/// A current-thread tokio runtime for one test.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|runtime| runtime.block_on(future))
        .unwrap_or_else(|error| panic!("building a tokio runtime: {error}"))
}

/// Fails with `message` unless `condition` holds.
pub fn ensure(condition: bool, message: impl FnOnce() -> String) -> TestResult {
    if condition {
        Ok(())
    } else {
        Err(message())
    }
}

/// The `oom_kill` count of a cgroup v1 `memory.oom_control` (0 when absent).
pub fn oom_kills(oom_control: &str) -> u64 {
    oom_control
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|count| count.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// A cgroup v1 byte counter at `path`, in MiB (0 when absent).
pub fn mib(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|bytes| bytes.trim().parse::<u64>().ok())
        .unwrap_or(0)
        >> 20
}
