//! The host side of `hpcc.agent.v1`: runs one job over a connection to an agent.
//!
//! [`run_job`] speaks the whole exchange (see the top of `agent.proto`): hello, header, the
//! inputs in [`AGENT_CHUNK_LEN`] chunks, then it collects streams, the result and the outputs.
//! Everything the agent sends is bounded: frames by [`hpcc_proto::MAX_AGENT_FRAME_LEN`] before
//! allocation, the sum of stream and output bytes by the header's `max_output_bytes`, and only
//! outputs the header asked for, each once, are accepted. Nothing here knows what carries the
//! bytes, so the VM runtimes reuse it over vsock.
//!
//! Frames are `hpcc_core::frame`'s, the codec the agent speaks. The host writes them through a
//! `BufWriter` with [`hpcc_core::frame::encode`] and flushes only where it then waits for the
//! agent (after the hello, after the inputs), so a job's many small input frames go out in few
//! writes; that is the exception the codec's flush rule names.

use std::time::Duration;

use hpcc_proto::agent::{
    agent_message, host_message, output_stream, AgentHello, AgentMessage, HostMessage, InputChunk,
    InputsDone, JobHeader, JobResult,
};
use hpcc_proto::{AGENT_CHUNK_LEN, AGENT_PROTOCOL_VERSION, MAX_AGENT_FRAME_LEN};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::{AgentStream, RuntimeError};
use hpcc_core::frame::asynchronous::read_frame;
use hpcc_core::frame::{encode, FrameError};

/// The output bound used when a header's `max_output_bytes` is 0.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 256 << 20;

/// How long past the job's own timeout the host waits for the agent to finish answering.
pub const ANSWER_GRACE: Duration = Duration::from_secs(30);

/// A file sent into the work directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Relative to the work directory.
    pub path: String,
    /// 0o644 or 0o755.
    pub mode: u32,
    /// The content.
    pub data: Vec<u8>,
}

/// A file sent back from the work directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// Relative to the work directory.
    pub path: String,
    /// The content.
    pub data: Vec<u8>,
}

/// What a job came to.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    /// The agent's result.
    pub result: JobResult,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
    /// The requested outputs that existed.
    pub outputs: Vec<OutputFile>,
}

/// Runs `header` with `inputs` over `stream` (a fresh connection to an agent) and collects
/// its outcome. Dropping the future closes the connection, which cancels the job.
///
/// A header with `max_output_bytes` 0 is sent with [`DEFAULT_MAX_OUTPUT_BYTES`], so both sides
/// enforce the same bound. When the header has a timeout, the whole exchange must end within it
/// plus [`ANSWER_GRACE`].
pub async fn run_job(
    session: &str,
    stream: Box<dyn AgentStream>,
    mut header: JobHeader,
    inputs: Vec<InputFile>,
) -> Result<JobOutcome, RuntimeError> {
    if header.max_output_bytes == 0 {
        header.max_output_bytes = DEFAULT_MAX_OUTPUT_BYTES;
    }
    let deadline = match header.timeout_ms {
        0 => None,
        ms => Some(Duration::from_millis(ms) + ANSWER_GRACE),
    };
    let exchange = exchange(session, stream, header, inputs);
    match deadline {
        None => exchange.await,
        Some(deadline) => tokio::time::timeout(deadline, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(agent_error(
                    session,
                    format!("no complete answer within {} ms", deadline.as_millis()),
                ))
            }),
    }
}

/// Checks that the agent behind `stream` (a fresh connection) answers: hello, then its
/// welcome, then the connection is closed before any job. The agent takes a connection that
/// ends there as a probe, not an error.
pub async fn ping(session: &str, stream: Box<dyn AgentStream>) -> Result<(), RuntimeError> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let hello = AgentHello {
        protocol_version: AGENT_PROTOCOL_VERSION,
    };
    send(session, &mut writer, host_message::Kind::Hello(hello)).await?;
    match receive(session, &mut reader, "AgentWelcome").await? {
        agent_message::Kind::Welcome(_) => Ok(()),
        agent_message::Kind::Refused(refused) => Err(agent_error(
            session,
            format!("agent refused us: {}", refused.reason),
        )),
        other => Err(agent_error(
            session,
            format!("expected AgentWelcome, got {}", kind_name(&other)),
        )),
    }
}

fn agent_error(session: &str, message: String) -> RuntimeError {
    RuntimeError::Agent {
        session: session.to_owned(),
        message,
    }
}

fn frame_error(session: &str, error: FrameError) -> RuntimeError {
    match error {
        FrameError::Io(source) => RuntimeError::Io {
            session: session.to_owned(),
            source,
        },
        other => agent_error(session, other.to_string()),
    }
}

async fn send<W: AsyncWrite + Unpin>(
    session: &str,
    writer: &mut W,
    kind: host_message::Kind,
) -> Result<(), RuntimeError> {
    // Buffered on purpose, not flushed: see the module docs.
    let frame = encode(&HostMessage { kind: Some(kind) }, MAX_AGENT_FRAME_LEN)
        .map_err(|error| frame_error(session, error))?;
    writer
        .write_all(&frame)
        .await
        .map_err(|source| frame_error(session, FrameError::Io(source)))
}

async fn receive<R: AsyncRead + Unpin>(
    session: &str,
    reader: &mut R,
    waiting_for: &str,
) -> Result<agent_message::Kind, RuntimeError> {
    match read_frame::<AgentMessage, _>(reader, MAX_AGENT_FRAME_LEN).await {
        Ok(Some(AgentMessage { kind: Some(kind) })) => Ok(kind),
        Ok(Some(AgentMessage { kind: None })) => Err(agent_error(
            session,
            format!("empty message while waiting for {waiting_for}"),
        )),
        Ok(None) => Err(agent_error(
            session,
            format!("connection closed while waiting for {waiting_for}"),
        )),
        Err(error) => Err(frame_error(session, error)),
    }
}

fn kind_name(kind: &agent_message::Kind) -> &'static str {
    match kind {
        agent_message::Kind::Welcome(_) => "AgentWelcome",
        agent_message::Kind::Refused(_) => "AgentRefused",
        agent_message::Kind::Stream(_) => "OutputStream",
        agent_message::Kind::Result(_) => "JobResult",
        agent_message::Kind::Output(_) => "OutputChunk",
        agent_message::Kind::OutputsDone(_) => "OutputsDone",
    }
}

async fn exchange(
    session: &str,
    stream: Box<dyn AgentStream>,
    header: JobHeader,
    inputs: Vec<InputFile>,
) -> Result<JobOutcome, RuntimeError> {
    let (mut reader, writer) = tokio::io::split(stream);
    let mut writer = tokio::io::BufWriter::new(writer);
    let hello = AgentHello {
        protocol_version: AGENT_PROTOCOL_VERSION,
    };
    send(session, &mut writer, host_message::Kind::Hello(hello)).await?;
    writer
        .flush()
        .await
        .map_err(|source| frame_error(session, FrameError::Io(source)))?;
    match receive(session, &mut reader, "AgentWelcome").await? {
        agent_message::Kind::Welcome(welcome)
            if welcome.protocol_version == AGENT_PROTOCOL_VERSION =>
        {
            tracing::debug!(agent_version = %welcome.agent_version, "agent welcomed us");
        }
        agent_message::Kind::Welcome(welcome) => {
            return Err(agent_error(
                session,
                format!(
                    "agent speaks protocol version {}, not {AGENT_PROTOCOL_VERSION}",
                    welcome.protocol_version
                ),
            ))
        }
        agent_message::Kind::Refused(refused) => {
            return Err(agent_error(
                session,
                format!("agent refused us: {}", refused.reason),
            ))
        }
        other => {
            return Err(agent_error(
                session,
                format!("expected AgentWelcome, got {}", kind_name(&other)),
            ))
        }
    }

    let limit = header.max_output_bytes;
    let requested = header.outputs.clone();
    send(session, &mut writer, host_message::Kind::Header(header)).await?;
    for input in inputs {
        let mut chunks = input.data.chunks(AGENT_CHUNK_LEN).peekable();
        if chunks.peek().is_none() {
            let chunk = InputChunk {
                path: input.path.clone(),
                mode: input.mode,
                data: Vec::new(),
                last: true,
            };
            send(session, &mut writer, host_message::Kind::Input(chunk)).await?;
        }
        while let Some(data) = chunks.next() {
            let chunk = InputChunk {
                path: input.path.clone(),
                mode: input.mode,
                data: data.to_vec(),
                last: chunks.peek().is_none(),
            };
            send(session, &mut writer, host_message::Kind::Input(chunk)).await?;
        }
    }
    send(
        session,
        &mut writer,
        host_message::Kind::InputsDone(InputsDone {}),
    )
    .await?;
    writer
        .flush()
        .await
        .map_err(|source| frame_error(session, FrameError::Io(source)))?;

    let mut collector = Collector::new(limit, requested);
    loop {
        let kind = receive(session, &mut reader, collector.waiting_for()).await?;
        if collector
            .accept(kind)
            .map_err(|message| agent_error(session, message))?
        {
            // Keep the connection open until here: closing earlier would cancel the job.
            drop(writer);
            return collector
                .finish()
                .map_err(|message| agent_error(session, message));
        }
    }
}

/// The agent's answer, assembled and checked message by message (a plain state machine, so it
/// is tested without any I/O).
#[derive(Debug)]
struct Collector {
    limit: u64,
    received: u64,
    requested: Vec<String>,
    result: Option<JobResult>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    outputs: Vec<OutputFile>,
    /// The output being received, not yet complete.
    current: Option<OutputFile>,
}

impl Collector {
    fn new(limit: u64, requested: Vec<String>) -> Collector {
        Collector {
            limit,
            received: 0,
            requested,
            result: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            outputs: Vec::new(),
            current: None,
        }
    }

    fn waiting_for(&self) -> &'static str {
        if self.result.is_none() {
            "OutputStream or JobResult"
        } else {
            "OutputChunk or OutputsDone"
        }
    }

    fn count(&mut self, bytes: usize) -> Result<(), String> {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.received = self.received.saturating_add(bytes);
        if self.received > self.limit {
            return Err(format!(
                "agent sent more than max_output_bytes ({} bytes)",
                self.limit
            ));
        }
        Ok(())
    }

    /// Takes one message; `Ok(true)` at `OutputsDone`.
    fn accept(&mut self, kind: agent_message::Kind) -> Result<bool, String> {
        match (kind, self.result.is_some()) {
            (agent_message::Kind::Stream(stream), false) => {
                self.count(stream.data.len())?;
                match output_stream::Stream::try_from(stream.stream) {
                    Ok(output_stream::Stream::Stdout) => {
                        self.stdout.extend_from_slice(&stream.data)
                    }
                    Ok(output_stream::Stream::Stderr) => {
                        self.stderr.extend_from_slice(&stream.data)
                    }
                    _ => return Err(format!("unknown output stream {}", stream.stream)),
                }
                Ok(false)
            }
            (agent_message::Kind::Result(result), false) => {
                self.result = Some(result);
                Ok(false)
            }
            (agent_message::Kind::Output(chunk), true) => {
                self.count(chunk.data.len())?;
                let file = match &mut self.current {
                    Some(file) if file.path == chunk.path => file,
                    Some(file) => {
                        return Err(format!(
                            "output {:?} interrupted by {:?}",
                            file.path, chunk.path
                        ))
                    }
                    None => {
                        let position = self
                            .requested
                            .iter()
                            .position(|path| *path == chunk.path)
                            .ok_or_else(|| {
                            format!("output {:?} was not requested (or sent twice)", chunk.path)
                        })?;
                        // Each requested path is accepted once.
                        self.requested.swap_remove(position);
                        self.current.insert(OutputFile {
                            path: chunk.path.clone(),
                            data: Vec::new(),
                        })
                    }
                };
                file.data.extend_from_slice(&chunk.data);
                if chunk.last {
                    if let Some(file) = self.current.take() {
                        self.outputs.push(file);
                    }
                }
                Ok(false)
            }
            (agent_message::Kind::OutputsDone(_), true) => Ok(true),
            (other, _) => Err(format!(
                "unexpected {} while waiting for {}",
                kind_name(&other),
                self.waiting_for()
            )),
        }
    }

    fn finish(self) -> Result<JobOutcome, String> {
        if let Some(file) = self.current {
            return Err(format!("output {:?} has no last chunk", file.path));
        }
        let result = self
            .result
            .ok_or_else(|| "OutputsDone before JobResult".to_owned())?;
        Ok(JobOutcome {
            result,
            stdout: self.stdout,
            stderr: self.stderr,
            outputs: self.outputs,
        })
    }
}

#[cfg(test)]
mod tests;
