//! One connection = one job of `hpcc.agent.v1`: hello, header, inputs, run, result, outputs.
//!
//! The job gets a fresh directory `<work_dir>/jobs/<slot>` that is removed when the connection
//! ends, however it ends. A request the agent will not run (a bad path, a bad header, an input
//! that cannot be written) is still read to its `InputsDone`, so the host never blocks writing,
//! and then answered with a `JobResult` whose `refused` says why, and `OutputsDone`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hpcc_core::frame::asynchronous::{read_frame, write_frame};
use hpcc_core::frame::FrameError;
use hpcc_proto::agent::{
    agent_message, host_message, AgentMessage, AgentRefused, AgentWelcome, HostMessage, InputChunk,
    JobHeader, JobResult, OutputChunk, OutputsDone,
};
use hpcc_proto::{AGENT_CHUNK_LEN, AGENT_PROTOCOL_VERSION, MAX_AGENT_FRAME_LEN};
use rustix::fs::{Mode, OFlags};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::AgentConfig;
use crate::job::{self, JobSpec};
use crate::paths;

/// The most outputs a header may request.
pub const MAX_OUTPUTS: usize = 4096;

/// Why a connection ended before `OutputsDone`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A frame could not be read or written.
    #[error("agent connection")]
    Frame(#[from] FrameError),
    /// The host sent something out of order.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The host closed the connection (or spoke) while the job ran; the job was killed.
    #[error("host went away during job {0}; job killed")]
    Cancelled(String),
    /// The job directory could not be made.
    #[error("creating job directory {path}")]
    JobDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The most jobs one agent runs at once (job directory slots).
const MAX_JOB_SLOTS: u32 = 4096;

/// Serves one connection to its end.
pub async fn serve_connection<S>(config: &AgentConfig, stream: S) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    // A connection closed before its hello is a readiness probe (`Runtime::start` connects
    // once to see the agent listen), not an error.
    let Some(first) = read_frame::<HostMessage, _>(&mut reader, MAX_AGENT_FRAME_LEN).await? else {
        return Ok(());
    };
    let hello = match first.kind {
        Some(host_message::Kind::Hello(hello)) => hello,
        other => return Err(unexpected("AgentHello", &other)),
    };
    if hello.protocol_version != AGENT_PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not {AGENT_PROTOCOL_VERSION}",
            hello.protocol_version
        );
        send(
            &mut writer,
            agent_message::Kind::Refused(AgentRefused { reason }),
        )
        .await?;
        return Ok(());
    }
    let welcome = AgentWelcome {
        protocol_version: AGENT_PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    send(&mut writer, agent_message::Kind::Welcome(welcome)).await?;
    // A connection closed right after the welcome is a health check (`agent_client::ping`).
    let Some(next) = read_frame::<HostMessage, _>(&mut reader, MAX_AGENT_FRAME_LEN).await? else {
        return Ok(());
    };
    let header = match next.kind {
        Some(host_message::Kind::Header(header)) => header,
        other => return Err(unexpected("JobHeader", &other)),
    };
    let job_dir = JobDir::create(&config.work_dir)?;
    tracing::debug!(job_id = %header.job_id, dir = %job_dir.path.display(), "job received");
    let mut request = check_header(config, &header, &job_dir.path);
    let input_result = receive_inputs(&mut reader, &job_dir, request.is_ok()).await?;
    if let (Ok(_), Err(reason)) = (&request, input_result) {
        request = Err(reason);
    }
    if let Ok(spec) = &request {
        if let Err(error) = paths::create_dirs_beneath(&job_dir.fd, &spec.cwd_relative) {
            request = Err(format!("cwd {:?}: {error}", header.cwd));
        }
    }
    let spec = match request {
        Ok(spec) => spec,
        Err(reason) => return refuse(&mut writer, reason).await,
    };

    let started = Instant::now();
    let run = job::run(config, &spec, &mut reader, &mut writer)
        .await
        .map_err(|error| match error {
            job::RunError::HostGone => ServeError::Cancelled(header.job_id.clone()),
            job::RunError::Frame(error) => ServeError::Frame(error),
        })?;
    let mut result = run.result;
    result.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let budget = spec.max_output_bytes.saturating_sub(run.streamed_bytes);
    let outputs = if result.refused.is_empty() {
        match open_outputs(&job_dir.fd, &spec.outputs, budget) {
            Ok(outputs) => outputs,
            Err(reason) => {
                result.refused = reason;
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    send(&mut writer, agent_message::Kind::Result(result)).await?;
    for (path, file, size) in outputs {
        send_output(&mut writer, path, file, size).await?;
    }
    send(
        &mut writer,
        agent_message::Kind::OutputsDone(OutputsDone {}),
    )
    .await?;
    Ok(())
}

fn unexpected(wanted: &str, got: &Option<host_message::Kind>) -> ServeError {
    let got = match got {
        None => "end of stream or an empty message",
        Some(host_message::Kind::Hello(_)) => "AgentHello",
        Some(host_message::Kind::Header(_)) => "JobHeader",
        Some(host_message::Kind::Input(_)) => "InputChunk",
        Some(host_message::Kind::InputsDone(_)) => "InputsDone",
    };
    ServeError::Protocol(format!("expected {wanted}, got {got}"))
}

async fn send<W: AsyncWrite + Unpin>(
    writer: &mut W,
    kind: agent_message::Kind,
) -> Result<(), ServeError> {
    write_frame(
        writer,
        &AgentMessage { kind: Some(kind) },
        MAX_AGENT_FRAME_LEN,
    )
    .await?;
    Ok(())
}

async fn refuse<W: AsyncWrite + Unpin>(writer: &mut W, reason: String) -> Result<(), ServeError> {
    tracing::info!(%reason, "job refused");
    let result = JobResult {
        exit_code: -1,
        refused: reason,
        ..JobResult::default()
    };
    send(writer, agent_message::Kind::Result(result)).await?;
    send(writer, agent_message::Kind::OutputsDone(OutputsDone {})).await
}

/// A job's directory, removed on drop.
struct JobDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl JobDir {
    fn create(work_dir: &Path) -> Result<JobDir, ServeError> {
        let jobs = work_dir.join("jobs");
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |source| ServeError::JobDir { path, source }
        };
        std::fs::create_dir_all(&jobs).map_err(failed(&jobs))?;
        // The lowest free slot: jobs run one after another get the same path, so what a
        // compiler records of its cwd (DW_AT_comp_dir) is the same from job to job, and
        // `mkdir` claims a slot atomically against concurrent connections.
        let mut slot = 0u32;
        let path = loop {
            let path = jobs.join(slot.to_string());
            match std::fs::create_dir(&path) {
                Ok(()) => break path,
                Err(error)
                    if error.kind() == io::ErrorKind::AlreadyExists && slot < MAX_JOB_SLOTS =>
                {
                    slot += 1;
                }
                Err(error) => return Err(failed(&path)(error)),
            }
        };
        let fd = rustix::fs::open(
            &path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| failed(&path)(errno.into()))?;
        Ok(JobDir { path, fd })
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove job directory");
        }
    }
}

/// Validates the header; the error is the refusal reason.
fn check_header(
    config: &AgentConfig,
    header: &JobHeader,
    job_dir: &Path,
) -> Result<JobSpec, String> {
    if header.argv.is_empty() {
        return Err("empty argv".to_owned());
    }
    let cwd_relative =
        paths::relative(&header.cwd, true).map_err(|error| format!("cwd: {error}"))?;
    if header.outputs.len() > MAX_OUTPUTS {
        return Err(format!(
            "{} outputs requested, at most {MAX_OUTPUTS}",
            header.outputs.len()
        ));
    }
    let mut outputs = Vec::with_capacity(header.outputs.len());
    for output in &header.outputs {
        let path = paths::relative(output, false).map_err(|error| format!("output: {error}"))?;
        outputs.push((output.clone(), path));
    }
    let mut env: Vec<(String, String)> = config
        .pinned_env()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    for variable in &header.env {
        let name = &variable.name;
        if name.is_empty() || name.contains(['=', '\0']) || variable.value.contains('\0') {
            return Err(format!("bad environment variable name {name:?}"));
        }
        if env.iter().any(|(pinned, _)| pinned == name) {
            return Err(format!(
                "environment variable {name} is pinned by the session"
            ));
        }
        env.push((name.clone(), variable.value.clone()));
    }
    let timeout = match header.timeout_ms {
        0 => config.default_timeout,
        ms => Duration::from_millis(ms),
    };
    let max_output_bytes = match header.max_output_bytes {
        0 => config.default_max_output_bytes,
        bytes => bytes.min(config.default_max_output_bytes),
    };
    // The job's directory differs between concurrent jobs; a host that must keep it out of
    // the outputs names it as `@JOBDIR@` (in `-ffile-prefix-map=@JOBDIR@=.`, say).
    let job_dir_text = job_dir.to_string_lossy();
    let argv = header
        .argv
        .iter()
        .map(|word| word.replace(JOB_DIR_PLACEHOLDER, &job_dir_text))
        .collect();
    Ok(JobSpec {
        argv,
        cwd: job_dir.join(&cwd_relative),
        cwd_relative,
        env,
        timeout,
        max_output_bytes,
        outputs,
    })
}

/// The placeholder in argv words that is replaced with the job directory's absolute path.
pub const JOB_DIR_PLACEHOLDER: &str = "@JOBDIR@";

/// Reads inputs up to `InputsDone`, writing them when `write` is set. `Ok(Err(reason))` is a
/// refusal; `Err` means the connection is unusable.
async fn receive_inputs<R: AsyncRead + Unpin>(
    reader: &mut R,
    job_dir: &JobDir,
    write: bool,
) -> Result<Result<(), String>, ServeError> {
    let mut refusal: Option<String> = None;
    let mut current: Option<(String, File)> = None;
    if !write {
        refusal = Some(String::new());
    }
    loop {
        let message = read_frame::<HostMessage, _>(reader, MAX_AGENT_FRAME_LEN)
            .await?
            .and_then(|m| m.kind);
        let chunk = match message {
            Some(host_message::Kind::Input(chunk)) => chunk,
            Some(host_message::Kind::InputsDone(_)) => {
                if let (None, Some((path, _))) = (&refusal, &current) {
                    refusal = Some(format!("input {path:?} has no last chunk"));
                }
                break;
            }
            other => return Err(unexpected("InputChunk or InputsDone", &other)),
        };
        if refusal.is_some() {
            continue;
        }
        if let Err(reason) = write_chunk(&job_dir.fd, &mut current, chunk) {
            refusal = Some(reason);
        }
    }
    Ok(match refusal {
        None => Ok(()),
        Some(reason) => Err(reason),
    })
}

/// Writes one input chunk. Writing is synchronous: chunks are at most a megabyte, the target is
/// the session's tmpfs, and the agent's single thread has nothing better to do meanwhile.
fn write_chunk(
    job_dir: &OwnedFd,
    current: &mut Option<(String, File)>,
    chunk: InputChunk,
) -> Result<(), String> {
    let file = match current {
        Some((path, file)) if *path == chunk.path => file,
        Some((path, _)) => {
            return Err(format!("input {path:?} interrupted by {:?}", chunk.path));
        }
        None => {
            let relative =
                paths::relative(&chunk.path, false).map_err(|error| format!("input: {error}"))?;
            let file = create_input(job_dir, &relative, chunk.mode)
                .map_err(|error| format!("input {:?}: {error}", chunk.path))?;
            &mut current.insert((chunk.path.clone(), file)).1
        }
    };
    file.write_all(&chunk.data)
        .map_err(|error| format!("input {:?}: {error}", chunk.path))?;
    if chunk.last {
        *current = None;
    }
    Ok(())
}

fn create_input(job_dir: &OwnedFd, relative: &Path, mode: u32) -> io::Result<File> {
    let parent = match relative.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => {
            paths::create_dirs_beneath(job_dir, parent)?
        }
        _ => paths::open_beneath(
            job_dir,
            Path::new(""),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )?,
    };
    let name = relative
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    // Only the two modes of the protocol: any execute bit means 0o755.
    let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
    let fd = paths::open_beneath(
        parent.as_fd(),
        Path::new(name),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
        Mode::from_raw_mode(mode),
    )?;
    // The umask may have cleared bits; set exactly what was asked.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(File::from(fd))
}

/// Opens the requested outputs that exist and are regular files inside the job directory.
/// An output that resolves outside, or a total above `budget`, refuses the lot.
fn open_outputs(
    job_dir: &OwnedFd,
    outputs: &[(String, PathBuf)],
    budget: u64,
) -> Result<Vec<(String, File, u64)>, String> {
    let mut opened = Vec::new();
    let mut total: u64 = 0;
    for (name, relative) in outputs {
        let fd = match paths::open_beneath(
            job_dir,
            relative,
            OFlags::RDONLY | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) if paths::is_escape(&error) => {
                return Err(format!("output {name:?}: {error}"))
            }
            Err(error) => return Err(format!("output {name:?}: {error}")),
        };
        let stat = rustix::fs::fstat(&fd).map_err(|error| format!("output {name:?}: {error}"))?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
            continue;
        }
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        total = total.saturating_add(size);
        if total > budget {
            return Err(format!(
                "outputs exceed max_output_bytes ({budget} bytes left)"
            ));
        }
        opened.push((name.clone(), File::from(fd), size));
    }
    Ok(opened)
}

/// Sends one output file in chunks, reading at most `size` bytes (its size when opened).
async fn send_output<W: AsyncWrite + Unpin>(
    writer: &mut W,
    path: String,
    file: File,
    size: u64,
) -> Result<(), ServeError> {
    let mut file = file.take(size);
    let read_chunk = |file: &mut io::Take<File>| -> Vec<u8> {
        let mut buffer = Vec::new();
        // A read error after the file opened fine truncates the output; the host's size
        // accounting and the job's exit code still hold, and nothing better can be said.
        let _ = file
            .by_ref()
            .take(AGENT_CHUNK_LEN as u64)
            .read_to_end(&mut buffer);
        buffer
    };
    let mut pending = read_chunk(&mut file);
    loop {
        let next = if pending.len() == AGENT_CHUNK_LEN {
            read_chunk(&mut file)
        } else {
            Vec::new()
        };
        let last = next.is_empty();
        let chunk = OutputChunk {
            path: path.clone(),
            data: pending,
            last,
        };
        send(writer, agent_message::Kind::Output(chunk)).await?;
        if last {
            return Ok(());
        }
        pending = next;
    }
}
