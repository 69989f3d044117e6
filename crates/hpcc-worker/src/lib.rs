//! The worker: runs tenants' compiles in isolation sessions.
//!
//! [`Worker::authorize`] checks the routing token of a request (the scheduler's signature,
//! expiry, this worker, the tenant and image of the request); [`Worker::compile`] looks the
//! job up in the worker's cache, else runs it through a warm session of the runtime
//! ([`hpcc_runtime::Runtime`]) for that tenant and image ([`sessions`]: the per-tenant pool,
//! with [`snapshots`] of idle sessions), with the reproducibility flags of [`policy`]
//! injected, stores a successful result, keeps the source ([`sources`]) and writes one
//! [`audit`] row either way. [`service`] is the tonic adapter (streaming, zstd per message,
//! cancellation). [`verify`] re-runs an audited job in a fresh session and checks its output.
//!
//! Tenants own their storage: the policy in each routing token (signed by the scheduler)
//! names the job's namespace, its tenant's or its sharing group's, and every cache key and
//! object ([`cache`]), kept source ([`sources`]) and snapshot ([`snapshots`]) is the
//! tenant's alone unless the scheduler's config shares it. Nothing in the protocol lets a
//! client supply an output, so in paranoid mode the workers' cache is the only cache.
//!
//! What a compile holds to:
//!
//! - A job's source is kept before its audit row is written, and a row names everything its
//!   object depends on (image, source, the whole command), so a row can be re-run until its
//!   source is evicted. (Failing to keep a source is logged; its row then cannot be re-run, as
//!   after an eviction.)
//! - A source reserves its bytes ([`fair::TenantBytes`]: the tenant's `max_source_bytes`, and
//!   [`SOURCE_BUDGET_BYTES`] in all) before it is read; one that does not fit is refused with
//!   `ResourceExhausted` naming the quota, and its client compiles locally.
//! - A job runs beside its session's health watch; a session that fails it (its VMM or device
//!   backend died, its agent went silent or broke the protocol) is discarded and the job runs
//!   once more on a fresh session. A second failure is the answer, and the client compiles
//!   locally.
//! - The worker cache holds result entries, and only workers write it, under keys they
//!   compute from what they compiled.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod audit;
pub mod cache;
pub mod fair;
pub mod metrics;
pub mod policy;
pub mod retention;
pub mod service;
pub mod sessions;
pub mod snapshots;
pub mod sources;
pub mod status;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use hpcc_auth::{RoutingClaims, RoutingScope, RoutingVerifier, TenantPolicy};
use hpcc_core::digest::Digest;
use hpcc_core::entry::{ResultEntry, SectionKind};
use hpcc_proto::agent::{EnvVar, JobHeader};
use hpcc_runtime::agent_client::{run_job, InputFile};
use hpcc_runtime::{AgentStream, Limits, RuntimeError, SessionSpec};

use crate::cache::WorkerCache;
use crate::fair::{BytesHeld, FairSlots, TenantBytes};
use crate::metrics::WorkerMetrics;

use crate::audit::{AuditLog, AuditRow};
use crate::policy::{
    cache_key, check_flags, injected_flags, job_argv, KeyInputs, RefusedFlag, OBJECT_FILE,
    SOURCE_FILE,
};
use crate::sessions::{PoolError, SessionPool};
use crate::sources::SourceStore;

/// Where a worker finds the flattened root file system of an image.
pub trait Rootfs: Send + Sync {
    /// The directory holding `image`'s root file system, flattening it first if needed; the
    /// reason if this worker does not have the image or cannot unpack it.
    fn rootfs(&self, image: &str) -> Result<PathBuf, String>;
}

/// Root file systems from an image store (`hpcc-image`), by image digest.
pub struct StoreRootfs(pub hpcc_image::ImageStore);

impl Rootfs for StoreRootfs {
    fn rootfs(&self, image: &str) -> Result<PathBuf, String> {
        let digest = hpcc_image::ImageDigest::parse(image).map_err(|error| error.to_string())?;
        self.0.rootfs(&digest).map_err(|error| {
            tracing::warn!(image, %error, "no root file system");
            error.to_string()
        })
    }
}

/// Why a compile was refused or failed on the worker's side (the compiler failing is not
/// an error: it is a result with its exit code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The routing token was refused.
    #[error("routing token refused: {0}")]
    Token(hpcc_auth::AuthError),
    /// A malformed request.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A client flag the worker does not run.
    #[error(transparent)]
    Flag(#[from] RefusedFlag),
    /// The worker does not have the image.
    #[error("image {0} is not available on this worker: {1}")]
    NoImage(String, String),
    /// The isolation runtime failed.
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    /// The worker's queue is full.
    #[error("worker overloaded ({0} compiles running, the queue full)")]
    Busy(u32),
    /// The tenant is over one of its quotas on this worker, or the worker over its budget
    /// of sources in flight; the message names which.
    #[error(transparent)]
    Quota(#[from] fair::Refused),
    /// Writing the audit row failed; the result is withheld, since it would be unaudited.
    #[error("audit log: {0}")]
    Audit(std::io::Error),
}

/// A compile to run.
#[derive(Debug, Clone)]
pub struct CompileJob {
    /// The tenant.
    pub tenant: String,
    /// The image digest.
    pub image: String,
    /// The driver (`gcc`, `g++`, `clang`, ...).
    pub compiler: String,
    /// The preprocessed source's language (`cpp-output`, `c++-cpp-output`).
    pub language: String,
    /// The client's flags.
    pub flags: Vec<String>,
    /// The preprocessed source.
    pub source: Vec<u8>,
    /// Extra outputs (e.g. a `.dwo`), named relative to the object.
    pub extra_outputs: Vec<String>,
    /// The tenant's policy, from its routing token: namespace, paranoid, quotas.
    pub policy: TenantPolicy,
}

/// What a compile came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOutput {
    /// The compiler's exit code.
    pub exit_code: i32,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
    /// The object, when it succeeded.
    pub object: Option<Vec<u8>>,
    /// Extra outputs that were produced.
    pub extras: Vec<(String, Vec<u8>)>,
    /// Served from the worker's cache.
    pub cache_hit: bool,
    /// The session that ran it (`cache` for a hit).
    pub session_id: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// The flags the worker injected.
    pub injected: Vec<String>,
}

/// Settings of a [`Worker`].
pub struct WorkerSettings {
    /// This worker's id.
    pub id: String,
    /// Compiles at once.
    pub capacity: u32,
    /// Limits of sessions and jobs.
    pub limits: Limits,
    /// `SOURCE_DATE_EPOCH` inside sessions.
    pub source_date_epoch: u64,
    /// How sessions running a job are checked for life.
    pub health: hpcc_runtime::health::HealthPolicy,
}

/// A worker's state.
pub struct Worker {
    settings: WorkerSettings,
    verifier: RoutingVerifier,
    pool: SessionPool,
    images: Arc<dyn Rootfs>,
    cache: WorkerCache,
    audit: AuditLog,
    sources: Arc<SourceStore>,
    /// Run slots, shared fairly by tenants within their job quotas.
    slots: FairSlots,
    /// Bytes of sources held at once (received, queued or compiling), per tenant and in all.
    source_bytes: TenantBytes,
    metrics: WorkerMetrics,
}

/// Spawns `future` on the current tokio runtime as a task named `name`, inside the caller's
/// span (so its logs keep the tenant, job and session): the one way this crate spawns.
pub fn spawn_named<F>(name: &'static str, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument;
    let span = tracing::info_span!("task", name);
    #[allow(clippy::disallowed_methods)] // the helper itself
    tokio::spawn(future.instrument(span))
}

/// Compiles that may wait for a slot; more are refused ([`fair::Refused::QueueFull`]).
pub const MAX_QUEUED: u32 = 1024;

/// Bytes of sources a worker holds at once, whatever the number of clients: a compile whose
/// source would go over is refused before it is read (its client compiles locally), so a
/// burst of large sources cannot grow the worker without bound.
pub const SOURCE_BUDGET_BYTES: u64 = 512 << 20;

/// What a job run in a session came to, before it is cached or audited.
pub(crate) struct Ran {
    pub(crate) exit_code: i32,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    /// The object, only when the compiler succeeded.
    pub(crate) object: Option<Vec<u8>>,
    pub(crate) extras: Vec<(String, Vec<u8>)>,
}

/// Runs `argv` over `stream` (a fresh connection to the agent of session `session_id`) with
/// `source` staged as [`SOURCE_FILE`], collecting the object and `extra_outputs`. The one
/// place a job's exit code is derived, so the worker and [`verify`] agree on it.
pub(crate) async fn execute(
    stream: Box<dyn AgentStream>,
    session_id: &str,
    job_id: String,
    argv: Vec<String>,
    source: Vec<u8>,
    extra_outputs: &[String],
    limits: &Limits,
) -> Result<Ran, WorkerError> {
    let mut outputs = vec![OBJECT_FILE.to_owned()];
    outputs.extend(extra_outputs.iter().cloned());
    let header = JobHeader {
        job_id,
        argv,
        cwd: String::new(),
        env: Vec::<EnvVar>::new(),
        outputs,
        timeout_ms: u64::try_from(limits.job_timeout.as_millis()).unwrap_or(u64::MAX),
        max_output_bytes: 0,
    };
    let inputs = vec![InputFile {
        path: SOURCE_FILE.into(),
        mode: 0o644,
        data: source,
    }];
    let outcome = run_job(session_id, stream, header, inputs).await?;
    if !outcome.result.refused.is_empty() {
        return Err(WorkerError::BadRequest(outcome.result.refused));
    }
    let mut object = None;
    let mut extras = Vec::new();
    for file in outcome.outputs {
        if file.path == OBJECT_FILE {
            object = Some(file.data);
        } else {
            extras.push((file.path, file.data));
        }
    }
    let exit_code = if outcome.result.signal != 0 || outcome.result.timed_out {
        -1
    } else {
        outcome.result.exit_code
    };
    Ok(Ran {
        exit_code,
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        object: if exit_code == 0 { object } else { None },
        extras,
    })
}

/// The root file system of `image`, or `None` if the store lacks it. Flattening an image on
/// first use is file work, so it runs off the async threads.
pub(crate) async fn rootfs_off_thread(
    images: &Arc<dyn Rootfs>,
    image: &str,
) -> Result<PathBuf, String> {
    let images = Arc::clone(images);
    let image = image.to_owned();
    tokio::task::spawn_blocking(move || images.rootfs(&image))
        .await
        .map_err(|error| format!("unpacking the image failed: {error}"))?
}

impl Worker {
    /// A worker with its parts; `sources` keeps every audited job's source.
    pub fn new(
        settings: WorkerSettings,
        verifier: RoutingVerifier,
        pool: SessionPool,
        images: Arc<dyn Rootfs>,
        cache: WorkerCache,
        audit: AuditLog,
        sources: SourceStore,
    ) -> Worker {
        Worker {
            slots: FairSlots::new(
                usize::try_from(settings.capacity).unwrap_or(1).max(1),
                MAX_QUEUED as usize,
            ),
            source_bytes: TenantBytes::new(SOURCE_BUDGET_BYTES),
            settings,
            verifier,
            pool,
            images,
            cache,
            audit,
            sources: Arc::new(sources),
            metrics: WorkerMetrics::default(),
        }
    }

    /// The worker's metrics, registered in a new registry.
    pub fn metrics_registry(&self) -> hpcc_metrics::Registry {
        let mut registry = hpcc_metrics::Registry::default();
        self.metrics.register(&mut registry);
        registry
    }

    /// Sets the gauges read at scrape time: jobs running and waiting, sessions by state.
    pub fn refresh_metrics(&self) {
        let gauge = |family: &prometheus_client::metrics::family::Family<
            metrics::StateLabels,
            prometheus_client::metrics::gauge::Gauge,
        >,
                     state: &'static str,
                     value: usize| {
            family
                .get_or_create(&metrics::StateLabels { state })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        gauge(&self.metrics.jobs_now, "running", self.load() as usize);
        gauge(&self.metrics.jobs_now, "waiting", self.queued() as usize);
        let pool = self.pool.status();
        gauge(&self.metrics.sessions, "ready", pool.ready);
        gauge(&self.metrics.sessions, "starting", pool.starting);
        gauge(&self.metrics.sessions, "retiring", pool.retiring);
        gauge(&self.metrics.sessions, "jobs_waiting", pool.waiting);
    }

    /// Counts a job of `tenant` refused for its quota.
    fn quota_refused(&self, tenant: &str) {
        self.metrics
            .quota_refusals
            .get_or_create(&metrics::TenantLabels {
                tenant: tenant.to_owned(),
            })
            .inc();
    }

    /// Reserves room for `tenant`'s source of `len` bytes, held until the returned value is
    /// dropped; refused when the tenant's held sources would go over `tenant_limit` (its
    /// upload quota) or all held sources over [`SOURCE_BUDGET_BYTES`].
    pub fn reserve_source(
        &self,
        tenant: &str,
        len: u64,
        tenant_limit: Option<u64>,
    ) -> Result<BytesHeld, WorkerError> {
        let reserved = self.source_bytes.reserve(tenant, len, tenant_limit);
        if reserved.is_err() {
            self.quota_refused(tenant);
            self.metrics
                .jobs
                .get_or_create(&metrics::JobLabels {
                    tenant: tenant.to_owned(),
                    outcome: "quota",
                })
                .inc();
        }
        Ok(reserved?)
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.settings.id
    }

    /// Compiles running now.
    pub fn load(&self) -> u32 {
        self.slots.running_total()
    }

    /// Compiles waiting for a slot.
    pub fn queued(&self) -> u32 {
        self.slots.waiting()
    }

    /// Each tenant's compiles running or waiting.
    pub fn tenant_load(&self) -> Vec<(String, u32)> {
        self.slots.per_tenant()
    }

    /// Compiles at once.
    pub fn capacity(&self) -> u32 {
        self.settings.capacity
    }

    /// The retained sources.
    pub fn sources(&self) -> &SourceStore {
        &self.sources
    }

    /// The session pool (for reaping and heartbeats).
    pub fn pool(&self) -> &SessionPool {
        &self.pool
    }

    /// Checks `token` for a request of `tenant` with `image` at `now` (Unix seconds).
    pub fn authorize(
        &self,
        token: &str,
        tenant: &str,
        image: &str,
        now: u64,
    ) -> Result<RoutingClaims, WorkerError> {
        self.verifier
            .verify(
                token,
                RoutingScope {
                    worker: &self.settings.id,
                    tenant,
                    image,
                },
                now,
            )
            .map_err(WorkerError::Token)
    }

    /// Runs `job` (already authorized): from the cache, else in a session; counted in the
    /// metrics by tenant and outcome.
    pub async fn compile(&self, job: CompileJob) -> Result<CompileOutput, WorkerError> {
        let started = Instant::now();
        let tenant = job.tenant.clone();
        let result = self.compile_job(job).await;
        let outcome = metrics::outcome_of(
            &result
                .as_ref()
                .map(|output| (output.cache_hit, output.exit_code)),
        );
        self.metrics
            .jobs
            .get_or_create(&metrics::JobLabels {
                tenant: tenant.clone(),
                outcome,
            })
            .inc();
        match &result {
            Ok(_) => {
                // An answer has its audit row written.
                self.metrics.audit_rows.inc();
                self.metrics
                    .job_seconds
                    .get_or_create(&metrics::OutcomeLabels { outcome })
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(WorkerError::Quota(_)) => self.quota_refused(&tenant),
            Err(_) => {}
        }
        result
    }

    #[tracing::instrument(
        name = "job",
        skip_all,
        fields(tenant = %job.tenant, image = %job.image, source = tracing::field::Empty)
    )]
    async fn compile_job(&self, mut job: CompileJob) -> Result<CompileOutput, WorkerError> {
        let started = Instant::now();
        if !policy::COMPILERS.contains(&job.compiler.as_str()) {
            return Err(WorkerError::BadRequest(format!(
                "compiler {:?}",
                job.compiler
            )));
        }
        if !policy::LANGUAGES.contains(&job.language.as_str()) {
            return Err(WorkerError::BadRequest(format!(
                "language {:?}",
                job.language
            )));
        }
        check_flags(&job.flags)?;
        if let Some(bad) = job
            .extra_outputs
            .iter()
            .find(|name| name.is_empty() || name.contains('/') || name.starts_with('.'))
        {
            return Err(WorkerError::BadRequest(format!("extra output {bad:?}")));
        }
        // Compiles past the capacity wait their turn, tenants served fairly, within the
        // tenant's job quota and a bounded queue; past those the client compiles locally.
        let _slot = self.slots.acquire(&job.tenant, job.policy.max_jobs).await?;
        let source_digest = Digest::of(&job.source);
        tracing::Span::current().record("source", source_digest.to_hex());
        let injected = injected_flags(&source_digest);
        let namespace = job.policy.namespace_for(&job.tenant);
        let key = cache_key(KeyInputs {
            namespace: &namespace,
            image: &job.image,
            compiler: &job.compiler,
            language: &job.language,
            flags: &job.flags,
            injected: &injected,
            source_digest: &source_digest,
            extra_outputs: &job.extra_outputs,
        });
        let mut output = match self.cached(&namespace, &key, &job).await {
            Some(output) => output,
            None => self.run(&job, &injected, &namespace, &key).await?,
        };
        // The source is kept before the row is written, so a row on disk has had its source
        // kept (until eviction). Failing to keep it is logged, not fatal: the row then cannot
        // be re-run, as after an eviction.
        let sources = Arc::clone(&self.sources);
        let source = std::mem::take(&mut job.source);
        let (tenant, quota) = (job.tenant.clone(), job.policy.max_kept_source_bytes);
        let retained = tokio::task::spawn_blocking(move || {
            sources.put(&tenant, &source_digest, &source, quota)
        })
        .await;
        match retained {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "keeping the source of a job"),
            Err(error) => tracing::warn!(%error, "keeping the source of a job"),
        }
        output.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        output.injected = injected.clone();
        let row = AuditRow {
            image_digest: job.image.clone(),
            source_digest: source_digest.to_hex(),
            flags: job_argv(&job.compiler, &job.language, &injected, &job.flags),
            output_digest: output
                .object
                .as_deref()
                .map(|object| Digest::of(object).to_hex())
                .unwrap_or_default(),
            tenant: job.tenant.clone(),
            worker: self.settings.id.clone(),
            vm: output.session_id.clone(),
            duration_ms: output.duration_ms,
            exit: output.exit_code,
        };
        self.audit.append(&row).map_err(WorkerError::Audit)?;
        tracing::info!(
            exit = output.exit_code,
            hit = output.cache_hit,
            session = %output.session_id,
            ms = output.duration_ms,
            "job answered"
        );
        Ok(output)
    }

    /// The cache (the worker's, else the fleet's) as the cache's own namespace holds it.
    pub fn cache(&self) -> &WorkerCache {
        &self.cache
    }

    async fn cached(
        &self,
        namespace: &str,
        key: &Digest,
        job: &CompileJob,
    ) -> Option<CompileOutput> {
        let payload = self
            .cache
            .get(namespace, job.policy.max_cache_bytes, key)
            .await?;
        let entry = ResultEntry::decode(&payload).ok()?;
        let object = entry.get(SectionKind::Object)?.to_vec();
        let mut extras = Vec::new();
        if let Some(name) = job.extra_outputs.first() {
            extras.push((name.clone(), entry.get(SectionKind::Dwo)?.to_vec()));
        }
        Some(CompileOutput {
            exit_code: 0,
            stdout: entry.get(SectionKind::Stdout).unwrap_or_default().to_vec(),
            stderr: entry.get(SectionKind::Stderr).unwrap_or_default().to_vec(),
            object: Some(object),
            extras,
            cache_hit: true,
            session_id: "cache".into(),
            duration_ms: 0,
            injected: Vec::new(),
        })
    }

    async fn run(
        &self,
        job: &CompileJob,
        injected: &[String],
        namespace: &str,
        key: &Digest,
    ) -> Result<CompileOutput, WorkerError> {
        let rootfs = rootfs_off_thread(&self.images, &job.image)
            .await
            .map_err(|reason| WorkerError::NoImage(job.image.clone(), reason))?;
        let spec = SessionSpec {
            tenant: job.tenant.clone(),
            image_digest: job.image.clone(),
            rootfs,
            limits: self.settings.limits,
            source_date_epoch: self.settings.source_date_epoch,
        };
        if let Some(snapshots) = self.pool.snapshots() {
            snapshots.set_tenant_limit(&job.tenant, job.policy.max_snapshot_bytes);
        }
        let argv = job_argv(&job.compiler, &job.language, injected, &job.flags);
        // A session that fails a job (its VMM died, its agent stopped answering or broke the
        // protocol) is discarded and the job runs once more on a fresh one; a second failure
        // is the answer, and the client compiles locally.
        let mut retried = false;
        let (ran, session_id) = loop {
            let lease = match self.pool.lease(&spec, Instant::now()).await {
                Ok(lease) => lease,
                Err(PoolError::Runtime(error)) => return Err(WorkerError::Runtime(error)),
                // No guest within the wait: the client compiles locally.
                Err(error @ PoolError::Busy { .. }) => {
                    tracing::warn!(%error, "no session");
                    return Err(WorkerError::Busy(self.settings.capacity));
                }
            };
            let session_id = lease.shared.id().to_owned();
            let job_run = async {
                let stream = lease.shared.connect().await?;
                execute(
                    stream,
                    &session_id,
                    key.to_hex(),
                    argv.clone(),
                    job.source.clone(),
                    &job.extra_outputs,
                    &self.settings.limits,
                )
                .await
            };
            let result = tokio::select! {
                result = job_run => result,
                broken = lease.shared.watch(self.settings.health) => Err(broken.into()),
            };
            match result {
                Err(WorkerError::Runtime(error)) => {
                    self.pool.discard(lease).await;
                    if retried {
                        return Err(WorkerError::Runtime(error));
                    }
                    tracing::warn!(session = %session_id, %error, "retrying a job on a fresh session");
                    retried = true;
                }
                other => {
                    self.pool.release(lease, Instant::now()).await;
                    break (other?, session_id);
                }
            }
        };
        if let (0, Some(object)) = (ran.exit_code, &ran.object) {
            let mut entry = ResultEntry::default();
            entry.set(SectionKind::Object, object.clone());
            entry.set(SectionKind::Stdout, ran.stdout.clone());
            entry.set(SectionKind::Stderr, ran.stderr.clone());
            if let Some((_, dwo)) = ran.extras.first() {
                entry.set(SectionKind::Dwo, dwo.clone());
            }
            self.cache
                .put(namespace, job.policy.max_cache_bytes, key, &entry.encode());
        }
        Ok(CompileOutput {
            exit_code: ran.exit_code,
            stdout: ran.stdout,
            stderr: ran.stderr,
            object: ran.object,
            extras: ran.extras,
            cache_hit: false,
            session_id,
            duration_ms: 0,
            injected: Vec::new(),
        })
    }
}
