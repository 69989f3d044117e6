//! The tonic adapter of `hpcc.worker.v1.Worker`: reads a compile stream (header, zstd source
//! chunks, done), authorizes it, runs it, and streams the outcome back (stdout, stderr, the
//! result, zstd output chunks). The compile runs in a task that ends when the client goes
//! away: the response channel closes, the task drops the compile, and dropping it closes the
//! agent connection, which kills the compiler.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hpcc_core::digest::Digest;
use hpcc_proto::worker::compile_event::Kind as EventKind;
use hpcc_proto::worker::compile_request::Kind as RequestKind;
use hpcc_proto::worker::worker_server::{self, WorkerServer};
use hpcc_proto::worker::{
    CompileEvent, CompileRequest, CompileResult, OutputChunk, SourceMode, StreamData,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::fair::BytesHeld;
use crate::{CompileJob, CompileOutput, Worker, WorkerError};

/// The largest preprocessed source accepted, uncompressed.
pub const MAX_SOURCE_BYTES: u64 = 256 << 20;
/// The largest decompressed chunk.
const MAX_CHUNK_BYTES: usize = 8 << 20;
/// The size of output chunks before compression.
const OUTPUT_CHUNK: usize = 1 << 20;

impl From<WorkerError> for Status {
    fn from(error: WorkerError) -> Status {
        // The whole cause chain: the client's log is where an operator looks first.
        let message = hpcc_core::report::chain(&error);
        match error {
            WorkerError::Token(_) => Status::permission_denied(message),
            WorkerError::BadRequest(_) | WorkerError::Flag(_) => Status::invalid_argument(message),
            WorkerError::NoImage(..) => Status::failed_precondition(message),
            WorkerError::Busy(_) | WorkerError::Quota(_) => Status::resource_exhausted(message),
            WorkerError::Runtime(_) | WorkerError::Audit(_) => Status::unavailable(message),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The gRPC service.
#[derive(Clone)]
pub struct WorkerService {
    worker: Arc<Worker>,
}

impl WorkerService {
    /// The service over `worker`.
    pub fn server(worker: Arc<Worker>) -> WorkerServer<WorkerService> {
        WorkerServer::new(WorkerService { worker })
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }
}

/// Decompresses one zstd frame of at most `MAX_CHUNK_BYTES`.
pub fn unzstd(frame: &[u8]) -> Result<Vec<u8>, Status> {
    zstd::bulk::decompress(frame, MAX_CHUNK_BYTES)
        .map_err(|error| Status::invalid_argument(format!("bad zstd chunk: {error}")))
}

/// Compresses one chunk.
pub fn zstd_chunk(data: &[u8]) -> Vec<u8> {
    // Level 1: the point is bytes on the wire for text-like inputs at little CPU.
    zstd::bulk::compress(data, 1).unwrap_or_else(|_| data.to_vec())
}

async fn read_job(
    worker: &Worker,
    mut stream: Streaming<CompileRequest>,
) -> Result<(CompileJob, BytesHeld), Status> {
    let header = match stream.next().await {
        Some(Ok(CompileRequest {
            kind: Some(RequestKind::Header(header)),
        })) => header,
        Some(Err(status)) => return Err(status),
        _ => return Err(Status::invalid_argument("a compile starts with its header")),
    };
    let claims = worker.authorize(
        &header.routing_token,
        &header.tenant_id,
        &header.image_digest,
        now(),
    )?;
    // The tenant names directories and key prefixes; the scheduler only signs tenants its
    // config accepts, but the worker does not rely on that.
    if !hpcc_core::config::is_safe_name(&header.tenant_id) {
        return Err(Status::invalid_argument(format!(
            "tenant id {:?} is not a valid name",
            header.tenant_id
        )));
    }
    if header.source_mode != SourceMode::Preprocessed as i32 {
        return Err(Status::unimplemented(
            "only the preprocessed source mode is served by this worker",
        ));
    }
    if header.source_len > MAX_SOURCE_BYTES {
        return Err(Status::invalid_argument(format!(
            "source of {} bytes is over the {MAX_SOURCE_BYTES}-byte limit",
            header.source_len
        )));
    }
    let reservation = worker.reserve_source(
        &header.tenant_id,
        header.source_len,
        claims.policy.max_source_bytes,
    )?;
    let mut source = Vec::with_capacity(usize::try_from(header.source_len).unwrap_or(0));
    loop {
        match stream.next().await {
            Some(Ok(CompileRequest {
                kind: Some(RequestKind::Source(chunk)),
            })) => {
                let data = unzstd(&chunk.zstd)?;
                if (source.len() + data.len()) as u64 > header.source_len {
                    return Err(Status::invalid_argument("more source than announced"));
                }
                source.extend_from_slice(&data);
            }
            Some(Ok(CompileRequest {
                kind: Some(RequestKind::Done(_)),
            })) => break,
            Some(Err(status)) => return Err(status),
            _ => return Err(Status::invalid_argument("unexpected message in a compile")),
        }
    }
    if source.len() as u64 != header.source_len
        || Digest::of(&source).0.as_slice() != header.source_digest.as_slice()
    {
        return Err(Status::invalid_argument(
            "the source does not match its announced length and digest",
        ));
    }
    let job = CompileJob {
        tenant: header.tenant_id,
        image: header.image_digest,
        compiler: header.compiler,
        language: header.language,
        flags: header.args,
        source,
        extra_outputs: header.extra_outputs,
        policy: claims.policy,
    };
    Ok((job, reservation))
}

fn events(output: CompileOutput, worker: &str) -> Vec<CompileEvent> {
    let event = |kind| CompileEvent { kind: Some(kind) };
    let mut events = Vec::new();
    if !output.stdout.is_empty() {
        events.push(event(EventKind::Stdout(StreamData {
            data: output.stdout,
        })));
    }
    if !output.stderr.is_empty() {
        events.push(event(EventKind::Stderr(StreamData {
            data: output.stderr,
        })));
    }
    events.push(event(EventKind::Result(CompileResult {
        exit_code: output.exit_code,
        cache_hit: output.cache_hit,
        output_digest: output
            .object
            .as_deref()
            .map(|object| Digest::of(object).0.to_vec())
            .unwrap_or_default(),
        worker_id: worker.to_owned(),
        session_id: output.session_id,
        duration_ms: output.duration_ms,
        injected_flags: output.injected,
    })));
    let files = output
        .object
        .map(|object| (String::new(), object))
        .into_iter()
        .chain(output.extras);
    for (name, data) in files {
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![&[]]
        } else {
            data.chunks(OUTPUT_CHUNK).collect()
        };
        let count = chunks.len();
        for (index, chunk) in chunks.into_iter().enumerate() {
            events.push(event(EventKind::Output(OutputChunk {
                name: name.clone(),
                zstd: zstd_chunk(chunk),
                last: index + 1 == count,
            })));
        }
    }
    events
}

#[tonic::async_trait]
impl worker_server::Worker for WorkerService {
    type CompileStream = ReceiverStream<Result<CompileEvent, Status>>;

    async fn compile(
        &self,
        request: Request<Streaming<CompileRequest>>,
    ) -> Result<Response<Self::CompileStream>, Status> {
        let worker = Arc::clone(&self.worker);
        let (job, reservation) = read_job(&worker, request.into_inner()).await?;
        let (sender, receiver) = mpsc::channel(16);
        crate::spawn_named("compile", async move {
            let outcome = tokio::select! {
                outcome = worker.compile(job) => outcome,
                () = sender.closed() => {
                    tracing::info!("client went away; compile cancelled");
                    return;
                }
            };
            drop(reservation);
            match outcome {
                Ok(output) => {
                    for event in events(output, worker.id()) {
                        if sender.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "remote compile failed");
                    let _ = sender.send(Err(error.into())).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}
