//! Running one job: its own process group, rlimits, streamed stdout/stderr, the timeout, and
//! cancellation when the host goes away.
//!
//! The group is killed on every way out (a guard), which also takes down anything the job left
//! running in the background; then the pipes are drained, with a short grace period for a
//! process that escaped the group (a `setsid` daemon) and still holds them.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use hpcc_core::frame::asynchronous::write_frame;
use hpcc_core::frame::FrameError;
use hpcc_proto::agent::{agent_message, output_stream, AgentMessage, JobResult, OutputStream};
use hpcc_proto::MAX_AGENT_FRAME_LEN;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::config::AgentConfig;
use crate::sys;

/// How long pipes may stay open after the job's process group is gone.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A checked job.
#[derive(Debug)]
pub(crate) struct JobSpec {
    pub(crate) argv: Vec<String>,
    /// Absolute.
    pub(crate) cwd: PathBuf,
    /// Relative to the job directory.
    pub(crate) cwd_relative: PathBuf,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) timeout: Duration,
    pub(crate) max_output_bytes: u64,
    /// (as requested, checked).
    pub(crate) outputs: Vec<(String, PathBuf)>,
}

/// What running came to.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) result: JobResult,
    pub(crate) streamed_bytes: u64,
}

/// Why a run stopped short.
#[derive(Debug)]
pub(crate) enum RunError {
    /// The host closed the connection or sent something: the job was killed.
    HostGone,
    /// Sending a stream frame failed.
    Frame(FrameError),
}

/// Kills a process group when dropped.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&self) {
        if let Some(pid) = self.0 {
            // ESRCH (the group is already gone) is the normal case after a clean exit.
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn read_some<R: AsyncRead + Unpin>(pipe: &mut Option<R>, buffer: &mut [u8]) -> usize {
    match pipe {
        Some(pipe) => pipe.read(buffer).await.unwrap_or(0),
        None => 0,
    }
}

/// Runs `spec`, streaming its output to `writer`, while watching `reader` for the host leaving.
pub(crate) async fn run<R, W>(
    config: &AgentConfig,
    spec: &JobSpec,
    reader: &mut R,
    writer: &mut W,
) -> Result<Run, RunError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut command = tokio::process::Command::new(&spec.argv[0]);
    command
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(name, value)| (name, value)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    sys::set_job_pre_exec(&mut command, config.limits);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return Ok(Run {
                result: JobResult {
                    exit_code: -1,
                    refused: format!("cannot run {:?}: {error}", spec.argv[0]),
                    ..JobResult::default()
                },
                streamed_bytes: 0,
            })
        }
    };
    let group = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw),
    );
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut stdout_buffer = vec![0u8; 64 << 10];
    let mut stderr_buffer = vec![0u8; 64 << 10];
    let mut probe = [0u8; 1];
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let mut status: Option<ExitStatus> = None;
    let mut timed_out = false;
    let mut over_limit = false;
    let mut streamed: u64 = 0;

    while status.is_none() || stdout.is_some() || stderr.is_some() {
        let (stream, read) = tokio::select! {
            read = read_some(&mut stdout, &mut stdout_buffer), if stdout.is_some() => {
                (output_stream::Stream::Stdout, read)
            }
            read = read_some(&mut stderr, &mut stderr_buffer), if stderr.is_some() => {
                (output_stream::Stream::Stderr, read)
            }
            waited = child.wait(), if status.is_none() => {
                // A failed wait cannot be retried meaningfully; report it as killed.
                status = Some(waited.unwrap_or_else(|_| ExitStatus::from_raw(9)));
                group.kill();
                deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                continue;
            }
            () = &mut deadline => {
                if status.is_none() {
                    timed_out = true;
                    group.kill();
                    deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(3600));
                    continue;
                }
                break;
            }
            _ = reader.read(&mut probe) => {
                group.kill();
                return Err(RunError::HostGone);
            }
        };
        let data = match stream {
            output_stream::Stream::Stdout => &stdout_buffer[..read],
            _ => &stderr_buffer[..read],
        };
        if read == 0 {
            match stream {
                output_stream::Stream::Stdout => stdout = None,
                _ => stderr = None,
            }
            continue;
        }
        let len = u64::try_from(read).unwrap_or(u64::MAX);
        if streamed.saturating_add(len) > spec.max_output_bytes {
            over_limit = true;
            group.kill();
            stdout = None;
            stderr = None;
            continue;
        }
        streamed += len;
        let message = AgentMessage {
            kind: Some(agent_message::Kind::Stream(OutputStream {
                stream: stream.into(),
                data: data.to_vec(),
            })),
        };
        write_frame(writer, &message, MAX_AGENT_FRAME_LEN)
            .await
            .map_err(RunError::Frame)?;
    }
    drop(group);
    let status = match status {
        Some(status) => status,
        // The drain grace ran out before the exit was seen: cannot happen (the deadline only
        // breaks the loop once a status is known), but wait rather than guess.
        None => child
            .wait()
            .await
            .unwrap_or_else(|_| ExitStatus::from_raw(9)),
    };
    let mut result = JobResult {
        exit_code: status.code().unwrap_or(-1),
        signal: status.signal().unwrap_or(0),
        timed_out,
        ..JobResult::default()
    };
    if over_limit {
        result.refused = format!(
            "stdout and stderr exceeded max_output_bytes ({} bytes); job killed",
            spec.max_output_bytes
        );
    }
    Ok(Run {
        result,
        streamed_bytes: streamed,
    })
}
