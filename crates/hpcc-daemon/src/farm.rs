//! The client of remote compilation: asks the scheduler for a worker (with the user's token),
//! then streams a preprocessed source to that worker and collects the outcome.
//!
//! Every call has a deadline, and every failure is a [`FarmError`] the daemon answers by
//! compiling locally: the build never fails because of the farm. A compile that fails on the
//! worker is not an error: its exit code and diagnostics are the outcome.

use std::time::Duration;

use hpcc_core::digest::Digest;
use hpcc_proto::scheduler::scheduler_client::SchedulerClient;
use hpcc_proto::scheduler::{RouteReply, RouteRequest};
use hpcc_proto::worker::compile_event::Kind as EventKind;
use hpcc_proto::worker::compile_request::Kind as RequestKind;
use hpcc_proto::worker::worker_client::WorkerClient;
use hpcc_proto::worker::{CompileHeader, CompileRequest, SourceChunk, SourceDone, SourceMode};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// The size of source chunks before compression.
const CHUNK: usize = 1 << 20;
/// The largest decompressed output chunk accepted.
const MAX_CHUNK: usize = 8 << 20;
/// The largest output accepted in all.
const MAX_OUTPUT: usize = 512 << 20;

/// Where the farm is and who we are.
#[derive(Debug, Clone)]
pub struct FarmConfig {
    /// The tenant.
    pub tenant: String,
    /// The scheduler's URL.
    pub scheduler: String,
    /// PEM of the scheduler's CA (None: the system's roots, or plaintext if insecure).
    pub scheduler_ca: Option<String>,
    /// Plaintext to scheduler and workers (tests on loopback only).
    pub insecure_plaintext: bool,
    /// The toolchain image digest.
    pub image: String,
    /// Deadline of a whole remote compile.
    pub timeout: Duration,
    /// How long to keep asking when the scheduler has no free worker, before giving up
    /// (the daemon then compiles locally).
    pub route_patience: Duration,
    /// The client keeps no cache (paranoid mode); told to the scheduler, which refuses a
    /// paranoid tenant's routes to clients that are not.
    pub paranoid: bool,
}

/// A compile to run remotely.
#[derive(Debug, Clone)]
pub struct RemoteRequest {
    /// The driver (`gcc`, `g++`, `clang`, ...).
    pub compiler: String,
    /// `cpp-output` or `c++-cpp-output`.
    pub language: String,
    /// Compile flags (no source, no `-o`, no dependency options).
    pub flags: Vec<String>,
    /// The preprocessed source, project root already rewritten to `/src`.
    pub source: Vec<u8>,
    /// Extra outputs (a `.dwo`).
    pub extra_outputs: Vec<String>,
}

/// What a remote compile came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOutcome {
    /// The compiler's exit code.
    pub exit_code: i32,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
    /// The object (exit 0 only).
    pub object: Option<Vec<u8>>,
    /// Extra outputs by name.
    pub extras: Vec<(String, Vec<u8>)>,
    /// The worker that ran it.
    pub worker: String,
    /// Its session.
    pub session: String,
    /// Served from the worker's cache.
    pub cache_hit: bool,
    /// The flags the worker injected.
    pub injected: Vec<String>,
    /// Bytes of source sent, compressed.
    pub sent_bytes: u64,
    /// Bytes of outputs received, compressed.
    pub received_bytes: u64,
}

/// Why the farm could not compile (the daemon then compiles locally).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FarmError {
    /// No token: run `hpcc login`.
    #[error("no token for tenant {0:?} (run hpcc login)")]
    NoToken(String),
    /// The scheduler refused or could not be reached.
    #[error("scheduler: {0}")]
    Scheduler(String),
    /// The worker refused or could not be reached.
    #[error("worker {worker}: {message}")]
    Worker {
        /// The worker.
        worker: String,
        /// What happened.
        message: String,
    },
    /// The whole compile took longer than its deadline.
    #[error("remote compile timed out after {0:?}")]
    Timeout(Duration),
    /// The worker's answer was malformed or inconsistent.
    #[error("bad answer from worker {worker}: {message}")]
    Protocol {
        /// The worker.
        worker: String,
        /// What was wrong.
        message: String,
    },
}

fn tls_endpoint(
    url: &str,
    ca_pem: Option<&[u8]>,
    server_name: &str,
    insecure: bool,
) -> Result<Endpoint, String> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|error| format!("bad URL {url}: {error}"))?
        .connect_timeout(Duration::from_secs(5));
    match ca_pem {
        Some(pem) if !pem.is_empty() => {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            if !server_name.is_empty() {
                tls = tls.domain_name(server_name);
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|error| format!("TLS for {url}: {error}"))?;
        }
        _ if insecure => {}
        _ => return Err(format!("no TLS trust for {url} and not in insecure mode")),
    }
    Ok(endpoint)
}

fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// The scheduler's endpoint under the farm's TLS rules: `http://` only with
/// `insecure_plaintext`; `https://` trusting `ca_pem` if given, else the system's roots.
/// `hpcc login` asks the scheduler through the same rules.
pub(crate) fn scheduler_endpoint(
    url: &str,
    ca_pem: Option<&str>,
    insecure_plaintext: bool,
) -> Result<Endpoint, String> {
    let scheme_insecure = url.starts_with("http://");
    if scheme_insecure && !insecure_plaintext {
        return Err(format!(
            "{url} is plaintext; set insecure_plaintext to allow it"
        ));
    }
    tls_endpoint(url, ca_pem.map(str::as_bytes), "", scheme_insecure).or_else(|error| {
        if ca_pem.is_none() && !scheme_insecure {
            // https without a configured CA: the system roots.
            Endpoint::from_shared(url.to_owned())
                .and_then(|endpoint| {
                    endpoint.tls_config(ClientTlsConfig::new().with_enabled_roots())
                })
                .map_err(|error| error.to_string())
        } else {
            Err(error)
        }
    })
}

/// The farm client of one daemon.
#[derive(Clone)]
pub struct Farm {
    config: FarmConfig,
    scheduler: SchedulerClient<Channel>,
}

impl Farm {
    /// A client for `config`; connects lazily.
    pub fn new(config: FarmConfig) -> Result<Farm, FarmError> {
        let endpoint = scheduler_endpoint(
            &config.scheduler,
            config.scheduler_ca.as_deref(),
            config.insecure_plaintext,
        )
        .map_err(FarmError::Scheduler)?;
        Ok(Farm {
            scheduler: SchedulerClient::new(
                endpoint.timeout(Duration::from_secs(10)).connect_lazy(),
            ),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FarmConfig {
        &self.config
    }

    /// Runs `request` on the farm with the user's `token`.
    #[tracing::instrument(
        name = "farm_compile",
        skip_all,
        fields(
            tenant = %self.config.tenant,
            image = %self.config.image,
            compiler = %request.compiler,
            worker = tracing::field::Empty,
        )
    )]
    pub async fn compile(
        &self,
        request: RemoteRequest,
        token: &str,
    ) -> Result<RemoteOutcome, FarmError> {
        let deadline = self.config.timeout;
        tokio::time::timeout(deadline, self.compile_inner(request, token))
            .await
            .map_err(|_| FarmError::Timeout(deadline))?
    }

    /// A route for one compile from the scheduler, placed on none of `avoid`; waits within
    /// the route patience while every worker is full.
    async fn route(&self, token: &str, avoid: Vec<String>) -> Result<RouteReply, FarmError> {
        let patience = tokio::time::Instant::now() + self.config.route_patience;
        let mut pause = Duration::from_millis(50);
        let route = loop {
            let reply = self
                .scheduler
                .clone()
                .route(with_bearer(
                    RouteRequest {
                        tenant_id: self.config.tenant.clone(),
                        image_digest: self.config.image.clone(),
                        paranoid: self.config.paranoid,
                        avoid_workers: avoid.clone(),
                    },
                    token,
                ))
                .await;
            match reply {
                Ok(reply) => break reply.into_inner(),
                // Every worker's queue is full: wait a little, within the patience.
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && tokio::time::Instant::now() + pause < patience =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(status) => {
                    return Err(FarmError::Scheduler(format!(
                        "{:?}: {}",
                        status.code(),
                        status.message()
                    )))
                }
            }
        };
        // A scheduler that routed anyway (an older one) is not trusted with the tenant's
        // policy: its own reply says the tenant is paranoid.
        if route.paranoid && !self.config.paranoid {
            return Err(FarmError::Scheduler(format!(
                "tenant {:?} is paranoid: set remote_compile.paranoid = true",
                self.config.tenant
            )));
        }
        Ok(route)
    }

    /// A connection to the worker `route` names.
    async fn connect(&self, route: &RouteReply) -> Result<Channel, FarmError> {
        let worker_error = |message: String| FarmError::Worker {
            worker: route.worker_id.clone(),
            message,
        };
        let scheme = if route.tls_ca_pem.is_empty() {
            "http"
        } else {
            "https"
        };
        let endpoint = tls_endpoint(
            &format!("{scheme}://{}", route.address),
            Some(&route.tls_ca_pem),
            &route.tls_server_name,
            self.config.insecure_plaintext,
        )
        .map_err(worker_error)?;
        endpoint
            .connect()
            .await
            .map_err(|error| worker_error(format!("connecting to {}: {error}", route.address)))
    }

    async fn compile_inner(
        &self,
        request: RemoteRequest,
        token: &str,
    ) -> Result<RemoteOutcome, FarmError> {
        let first = self.route(token, Vec::new()).await?;
        let (route, channel) = match self.connect(&first).await {
            Ok(channel) => (first, channel),
            // A worker that cannot be reached is most often one just gone (killed or
            // restarting) that the scheduler has not yet missed: ask once more, avoiding it.
            // Nothing was sent to it, so the job cannot run twice.
            Err(error) => {
                tracing::warn!(worker = %first.worker_id, %error, "worker unreachable; routing again without it");
                let Ok(second) = self.route(token, vec![first.worker_id.clone()]).await else {
                    return Err(error);
                };
                let channel = self.connect(&second).await?;
                (second, channel)
            }
        };
        let worker_name = route.worker_id.clone();
        tracing::Span::current().record("worker", worker_name.as_str());
        let worker_error = |message: String| FarmError::Worker {
            worker: worker_name.clone(),
            message,
        };
        let mut client = WorkerClient::new(channel)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20);
        let source_digest = Digest::of(&request.source);
        let header = CompileHeader {
            routing_token: route.routing_token,
            tenant_id: self.config.tenant.clone(),
            image_digest: self.config.image.clone(),
            source_mode: SourceMode::Preprocessed as i32,
            compiler: request.compiler,
            args: request.flags,
            language: request.language,
            source_digest: source_digest.0.to_vec(),
            source_len: request.source.len() as u64,
            extra_outputs: request.extra_outputs,
        };
        let mut messages = vec![CompileRequest {
            kind: Some(RequestKind::Header(header)),
        }];
        let mut sent_bytes = 0u64;
        for chunk in request.source.chunks(CHUNK) {
            let compressed = zstd::bulk::compress(chunk, 1)
                .map_err(|error| worker_error(format!("compressing: {error}")))?;
            sent_bytes += compressed.len() as u64;
            messages.push(CompileRequest {
                kind: Some(RequestKind::Source(SourceChunk { zstd: compressed })),
            });
        }
        messages.push(CompileRequest {
            kind: Some(RequestKind::Done(SourceDone {})),
        });
        let mut events = client
            .compile(tokio_stream::iter(messages))
            .await
            .map_err(|status| worker_error(format!("{:?}: {}", status.code(), status.message())))?
            .into_inner();
        let mut outcome = RemoteOutcome {
            exit_code: -1,
            stdout: Vec::new(),
            stderr: Vec::new(),
            object: None,
            extras: Vec::new(),
            worker: route.worker_id.clone(),
            session: String::new(),
            cache_hit: false,
            injected: Vec::new(),
            sent_bytes,
            received_bytes: 0,
        };
        let mut result = None;
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut total = 0usize;
        while let Some(event) = events.next().await {
            let event = event.map_err(|status| {
                worker_error(format!("{:?}: {}", status.code(), status.message()))
            })?;
            match event.kind {
                Some(EventKind::Stdout(data)) => outcome.stdout.extend_from_slice(&data.data),
                Some(EventKind::Stderr(data)) => outcome.stderr.extend_from_slice(&data.data),
                Some(EventKind::Result(value)) => result = Some(value),
                Some(EventKind::Output(chunk)) => {
                    outcome.received_bytes += chunk.zstd.len() as u64;
                    let data = zstd::bulk::decompress(&chunk.zstd, MAX_CHUNK).map_err(|error| {
                        FarmError::Protocol {
                            worker: route.worker_id.clone(),
                            message: format!("bad zstd chunk: {error}"),
                        }
                    })?;
                    total += data.len();
                    if total > MAX_OUTPUT {
                        return Err(FarmError::Protocol {
                            worker: route.worker_id.clone(),
                            message: "outputs over the size limit".into(),
                        });
                    }
                    match files.last_mut() {
                        Some((name, bytes)) if *name == chunk.name => {
                            bytes.extend_from_slice(&data)
                        }
                        _ => files.push((chunk.name, data)),
                    }
                }
                None => {}
            }
        }
        let result = result.ok_or_else(|| FarmError::Protocol {
            worker: route.worker_id.clone(),
            message: "no result".into(),
        })?;
        outcome.exit_code = result.exit_code;
        outcome.session = result.session_id;
        outcome.cache_hit = result.cache_hit;
        outcome.injected = result.injected_flags;
        for (name, data) in files {
            if name.is_empty() {
                outcome.object = Some(data);
            } else {
                outcome.extras.push((name, data));
            }
        }
        if outcome.exit_code == 0 {
            let object = outcome
                .object
                .as_deref()
                .ok_or_else(|| FarmError::Protocol {
                    worker: route.worker_id.clone(),
                    message: "a successful compile without an object".into(),
                })?;
            if Digest::of(object).0.as_slice() != result.output_digest.as_slice() {
                return Err(FarmError::Protocol {
                    worker: route.worker_id.clone(),
                    message: "the object does not match its digest".into(),
                });
            }
        }
        Ok(outcome)
    }
}
