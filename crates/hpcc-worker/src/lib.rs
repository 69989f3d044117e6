//! The worker: runs tenants' compiles in isolation sessions.
//!
//! [`Worker::authorize`] checks the routing token of a request (the scheduler's signature,
//! expiry, this worker, the tenant and image of the request); [`Worker::compile`] looks the
//! job up in the worker's cache, else runs it through a warm session of the [`Runtime`]
//! (`hpcc-runtime`) for that tenant and image, with the reproducibility flags of [`policy`]
//! injected, stores a successful result, keeps the source ([`sources`]) and writes one
//! [`audit`] row either way. [`service`] is the tonic adapter (streaming, zstd per message,
//! cancellation). [`verify`] re-runs an audited job in a fresh session and checks its output.
//!
//! In paranoid mode only workers touch the cache: nothing in the protocol lets a client
//! supply an output, and the worker's cache is the worker's own store.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod audit;
pub mod policy;
pub mod service;
pub mod sessions;
pub mod sources;
pub mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hpcc_auth::{RoutingClaims, RoutingScope, RoutingVerifier};
use hpcc_core::digest::Digest;
use hpcc_core::entry::{ResultEntry, SectionKind};
use hpcc_proto::agent::{EnvVar, JobHeader};
use hpcc_runtime::agent_client::{run_job, InputFile};
use hpcc_runtime::{AgentStream, Limits, RuntimeError, SessionSpec};
use hpcc_store::{DiskStore, Kind, Lookup};

use crate::audit::{AuditLog, AuditRow};
use crate::policy::{
    cache_key, check_flags, injected_flags, job_argv, KeyInputs, RefusedFlag, OBJECT_FILE,
    SOURCE_FILE,
};
use crate::sessions::SessionPool;
use crate::sources::SourceStore;

/// Where a worker finds the flattened root file system of an image.
pub trait Rootfs: Send + Sync {
    /// The directory holding `image`'s root file system, flattening it first if needed;
    /// `None` if this worker does not have the image.
    fn rootfs(&self, image: &str) -> Option<PathBuf>;
}

/// Root file systems from an image store (`hpcc-image`), by image digest.
pub struct StoreRootfs(pub hpcc_image::ImageStore);

impl Rootfs for StoreRootfs {
    fn rootfs(&self, image: &str) -> Option<PathBuf> {
        let digest = hpcc_image::ImageDigest::parse(image).ok()?;
        match self.0.rootfs(&digest) {
            Ok(path) => Some(path),
            Err(error) => {
                tracing::warn!(image, %error, "no root file system");
                None
            }
        }
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
    #[error("image {0} is not available on this worker")]
    NoImage(String),
    /// The isolation runtime failed.
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    /// The worker's queue is full.
    #[error("worker overloaded ({0} compiles running, the queue full)")]
    Busy(u32),
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
}

/// A worker's state.
pub struct Worker {
    settings: WorkerSettings,
    verifier: RoutingVerifier,
    pool: SessionPool,
    images: Arc<dyn Rootfs>,
    cache: DiskStore,
    audit: AuditLog,
    sources: Arc<SourceStore>,
    load: AtomicU32,
    queued: AtomicU32,
    permits: tokio::sync::Semaphore,
    /// Sources that may be held at once (received, queued or compiling).
    source_budget: SourceBudget,
}

/// Compiles that may wait for a slot; more are refused with [`WorkerError::Busy`].
pub const MAX_QUEUED: u32 = 1024;

/// Bytes of sources a worker holds at once, whatever the number of clients: a compile whose
/// source would go over is refused with [`WorkerError::Busy`] before it is read (its client
/// compiles locally), so a burst of large sources cannot grow the worker without bound.
pub const SOURCE_BUDGET_BYTES: u64 = 512 << 20;

/// Part of a [`SourceBudget`], held from reading a source until its compile ends.
pub struct SourceReservation(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// A byte budget, counted in KiB, that sources reserve before they are read.
pub struct SourceBudget(Arc<tokio::sync::Semaphore>);

impl SourceBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> SourceBudget {
        SourceBudget(Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(bytes >> 10).unwrap_or(usize::MAX),
        )))
    }

    /// Room for `len` bytes until the reservation is dropped, or `None` if it is full.
    pub fn reserve(&self, len: u64) -> Option<SourceReservation> {
        let kib = u32::try_from(len.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        Arc::clone(&self.0)
            .try_acquire_many_owned(kib)
            .ok()
            .map(SourceReservation)
    }
}

/// Decrements the load when a compile ends, however it ends.
struct LoadGuard<'a>(&'a AtomicU32);

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

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
pub(crate) async fn rootfs_off_thread(images: &Arc<dyn Rootfs>, image: &str) -> Option<PathBuf> {
    let images = Arc::clone(images);
    let image = image.to_owned();
    tokio::task::spawn_blocking(move || images.rootfs(&image))
        .await
        .ok()
        .flatten()
}

impl Worker {
    /// A worker with its parts; `sources` keeps every audited job's source.
    pub fn new(
        settings: WorkerSettings,
        verifier: RoutingVerifier,
        pool: SessionPool,
        images: Arc<dyn Rootfs>,
        cache: DiskStore,
        audit: AuditLog,
        sources: SourceStore,
    ) -> Worker {
        Worker {
            permits: tokio::sync::Semaphore::new(
                usize::try_from(settings.capacity).unwrap_or(1).max(1),
            ),
            settings,
            verifier,
            pool,
            images,
            cache,
            audit,
            sources: Arc::new(sources),
            load: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            source_budget: SourceBudget::new(SOURCE_BUDGET_BYTES),
        }
    }

    /// Reserves room for a source of `len` bytes, or refuses with [`WorkerError::Busy`] when
    /// the sources already held fill the [`SOURCE_BUDGET_BYTES`].
    pub fn reserve_source(&self, len: u64) -> Result<SourceReservation, WorkerError> {
        self.source_budget
            .reserve(len)
            .ok_or(WorkerError::Busy(self.settings.capacity))
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.settings.id
    }

    /// Compiles running now.
    pub fn load(&self) -> u32 {
        self.load.load(Ordering::Acquire)
    }

    /// Compiles waiting for a slot.
    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Acquire)
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

    /// Runs `job` (already authorized): from the cache, else in a session.
    pub async fn compile(&self, mut job: CompileJob) -> Result<CompileOutput, WorkerError> {
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
        // Compiles past the capacity wait their turn, up to a bounded queue; past that the
        // client is told to compile elsewhere.
        let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
        let queued = LoadGuard(&self.queued);
        if waiting >= MAX_QUEUED {
            return Err(WorkerError::Busy(self.settings.capacity));
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| WorkerError::Busy(self.settings.capacity))?;
        drop(queued);
        self.load.fetch_add(1, Ordering::AcqRel);
        let _load = LoadGuard(&self.load);
        let source_digest = Digest::of(&job.source);
        let injected = injected_flags(&source_digest);
        let key = cache_key(KeyInputs {
            image: &job.image,
            compiler: &job.compiler,
            language: &job.language,
            flags: &job.flags,
            injected: &injected,
            source_digest: &source_digest,
            extra_outputs: &job.extra_outputs,
        });
        let mut output = match self.cached(&key, &job) {
            Some(output) => output,
            None => self.run(&job, &injected, &key).await?,
        };
        // The source is kept before the row is written, so a row on disk has had its source
        // kept (until eviction). Failing to keep it is logged, not fatal: the row then cannot
        // be re-run, as after an eviction.
        let sources = Arc::clone(&self.sources);
        let source = std::mem::take(&mut job.source);
        let retained =
            tokio::task::spawn_blocking(move || sources.put(&source_digest, &source)).await;
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
        Ok(output)
    }

    fn cached(&self, key: &Digest, job: &CompileJob) -> Option<CompileOutput> {
        let Ok(Lookup::Hit(payload)) = self.cache.get(Kind::Result, key) else {
            return None;
        };
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
        key: &Digest,
    ) -> Result<CompileOutput, WorkerError> {
        let rootfs = rootfs_off_thread(&self.images, &job.image)
            .await
            .ok_or_else(|| WorkerError::NoImage(job.image.clone()))?;
        let spec = SessionSpec {
            tenant: job.tenant.clone(),
            image_digest: job.image.clone(),
            rootfs,
            limits: self.settings.limits,
            source_date_epoch: self.settings.source_date_epoch,
        };
        let lease = self.pool.lease(&spec, Instant::now()).await?;
        let argv = job_argv(&job.compiler, &job.language, injected, &job.flags);
        let result = async {
            let stream = lease.shared.connect().await?;
            execute(
                stream,
                lease.shared.id(),
                key.to_hex(),
                argv,
                job.source.clone(),
                &job.extra_outputs,
                &self.settings.limits,
            )
            .await
        }
        .await;
        let session_id = lease.shared.id().to_owned();
        self.pool.release(lease, Instant::now()).await;
        let ran = result?;
        if let (0, Some(object)) = (ran.exit_code, &ran.object) {
            let mut entry = ResultEntry::default();
            entry.set(SectionKind::Object, object.clone());
            entry.set(SectionKind::Stdout, ran.stdout.clone());
            entry.set(SectionKind::Stderr, ran.stderr.clone());
            if let Some((_, dwo)) = ran.extras.first() {
                entry.set(SectionKind::Dwo, dwo.clone());
            }
            if let Err(error) = self.cache.put(Kind::Result, key, &entry.encode()) {
                tracing::warn!(%error, "storing a remote result");
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_budget_refuses_what_does_not_fit_until_room_is_freed() {
        let budget = SourceBudget::new(4 << 20);
        let first = budget.reserve(3 << 20).expect("3 MiB of 4 fit");
        assert!(budget.reserve(2 << 20).is_none(), "5 MiB of 4");
        let small = budget.reserve(1).expect("1 KiB fits");
        drop(first);
        assert!(
            budget.reserve(3 << 20).is_some(),
            "room again once released"
        );
        drop(small);
        assert!(
            budget.reserve(u64::MAX).is_none(),
            "never more than the budget"
        );
    }
}
