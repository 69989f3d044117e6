//! The host side of `hpcc.agent.v1`: runs one job over a connection to an agent.
//!
//! (Interface fixed here; the implementation is being written.)

use hpcc_proto::agent::{JobHeader, JobResult};

use crate::{AgentStream, RuntimeError};

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
pub async fn run_job(
    session: &str,
    stream: Box<dyn AgentStream>,
    header: JobHeader,
    inputs: Vec<InputFile>,
) -> Result<JobOutcome, RuntimeError> {
    let _ = (stream, header, inputs);
    Err(RuntimeError::Agent {
        session: session.to_owned(),
        message: "not implemented yet".into(),
    })
}
