//! The farm without privileges: the real scheduler, a real `Worker` over `hpcc-testkit`'s
//! `LocalRuntime` (the real agent in this process, the host's gcc) with its gRPC service, and
//! the daemon's farm client, all on loopback. It proves the client's path (route, stream,
//! collect, refusals, a worker gone) on any machine; what only a sandbox or a guest can prove
//! is in `farm` and `guest_vm::*`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hpcc_auth::{RoutingKey, RoutingVerifier};
use hpcc_core::config::WorkerCacheConfig;
use hpcc_daemon::farm::{Farm, FarmConfig, FarmError, RemoteRequest};
use hpcc_proto::scheduler::RegisterRequest;
use hpcc_runtime::Limits;
use hpcc_scheduler::Scheduler;
use hpcc_testkit::LocalRuntime;
use hpcc_worker::audit::AuditLog;
use hpcc_worker::cache::WorkerCache;
use hpcc_worker::service::WorkerService;
use hpcc_worker::sessions::{PoolConfig, SessionPool};
use hpcc_worker::sources::SourceStore;
use hpcc_worker::{Rootfs, Worker, WorkerSettings};

use crate::idp::Idp;
use crate::scheduler::{config, now, serve, serve_routes, tenant, user_token, IMAGE, SECRET};
use crate::{Case, TestResult};

/// Every image is "available": the local runtime runs the host's compiler.
struct HostRootfs;

impl Rootfs for HostRootfs {
    fn rootfs(&self, _image: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from("/"))
    }
}

/// A scheduler with tenants `a` and `b`, one local worker registered with it, and the IdPs.
pub(crate) struct Rig {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) idp_a: Idp,
    idp_b: Idp,
    scheduler_url: String,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) worker: Arc<Worker>,
    _dir: tempfile::TempDir,
    /// Dropping it stops the scheduler.
    _scheduler: tokio::sync::oneshot::Sender<()>,
    /// Dropping it stops the worker.
    worker_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

pub(crate) fn rig() -> Result<Rig, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // The pool and the clients start tasks and connect lazily: inside the runtime.
    let entered = runtime.enter();
    let (idp_a, idp_b) = (Idp::start("a")?, Idp::start("b")?);
    let key = RoutingKey::generate().map_err(|e| e.to_string())?;
    let verifier =
        RoutingVerifier::from_public_base64(&key.public_base64()).map_err(|e| e.to_string())?;
    let scheduler = Arc::new(
        Scheduler::new(
            &config(vec![tenant("a", &idp_a), tenant("b", &idp_b)]),
            key,
            SECRET.as_bytes().to_vec(),
        )
        .map_err(|e| e.to_string())?,
    );
    let (scheduler_url, scheduler_stop) = serve(&runtime, Arc::clone(&scheduler))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let worker = Arc::new(Worker::new(
        WorkerSettings {
            id: "w-local".into(),
            capacity: 2,
            limits: Limits::default(),
            source_date_epoch: 0,
            health: hpcc_runtime::health::HealthPolicy::default(),
        },
        verifier,
        SessionPool::new(Arc::new(LocalRuntime::new()), PoolConfig::default(), None),
        Arc::new(HostRootfs),
        WorkerCache::open(&dir.path().join("cache"), &WorkerCacheConfig::default())
            .map_err(|e| e.to_string())?,
        AuditLog::open(&dir.path().join("audit.tsv")).map_err(|e| e.to_string())?,
        SourceStore::open(&dir.path().join("sources"), 1 << 20).map_err(|e| e.to_string())?,
    ));
    let (address, worker_stop) = serve_routes(
        &runtime,
        tonic::service::Routes::new(WorkerService::server(Arc::clone(&worker))),
    )?;
    scheduler
        .register(
            RegisterRequest {
                worker_id: "w-local".into(),
                address: address.to_string(),
                capacity: 2,
                warm_images: vec![IMAGE.into()],
                ..RegisterRequest::default()
            },
            Some(SECRET),
            now(),
        )
        .map_err(|e| format!("registering the worker: {e}"))?;
    drop(entered);
    Ok(Rig {
        runtime,
        idp_a,
        idp_b,
        scheduler_url,
        scheduler,
        worker,
        _dir: dir,
        _scheduler: scheduler_stop,
        worker_stop: Some(worker_stop),
    })
}

impl Rig {
    pub(crate) fn farm(&self, tenant: &str) -> Result<Farm, String> {
        let _entered = self.runtime.enter();
        Farm::new(FarmConfig {
            tenant: tenant.into(),
            scheduler: self.scheduler_url.clone(),
            scheduler_ca: None,
            insecure_plaintext: true,
            image: IMAGE.into(),
            timeout: Duration::from_secs(60),
            route_patience: Duration::from_secs(2),
            paranoid: false,
        })
        .map_err(|e| e.to_string())
    }

    pub(crate) fn token_a(&self) -> String {
        user_token(&self.idp_a, &self.idp_a.issuer(), now() + 600)
    }
}

pub(crate) fn request(text: &str) -> RemoteRequest {
    RemoteRequest {
        compiler: "gcc".into(),
        language: "cpp-output".into(),
        flags: vec!["-O2".into()],
        source: text.as_bytes().to_vec(),
        extra_outputs: Vec::new(),
    }
}

pub(crate) const GOOD: &str = "# 1 \"/src/f.c\"\nint f(int x) { return x * 3; }\n";

fn compiles_hits_and_fails_like_gcc() -> TestResult {
    let rig = rig()?;
    let farm = rig.farm("a")?;
    let token = rig.token_a();
    let first = rig
        .runtime
        .block_on(farm.compile(request(GOOD), &token))
        .map_err(|e| format!("first compile: {e}"))?;
    if first.exit_code != 0 || first.worker != "w-local" {
        return Err(format!("first compile: {first:?}"));
    }
    let object = first.object.clone().ok_or("no object")?;
    if !object.starts_with(b"\x7fELF") {
        return Err("the object is not ELF".into());
    }
    let again = rig
        .runtime
        .block_on(farm.compile(request(GOOD), &token))
        .map_err(|e| format!("second compile: {e}"))?;
    if !again.cache_hit || again.object.as_deref() != Some(&object[..]) {
        return Err(format!(
            "the repeat should hit with the same object: hit {}",
            again.cache_hit
        ));
    }
    // A compile error is an outcome, not a farm failure: the daemon replays it.
    let bad = rig
        .runtime
        .block_on(farm.compile(request("# 1 \"/src/g.c\"\nint g( {\n"), &token))
        .map_err(|e| format!("failing compile: {e}"))?;
    if bad.exit_code == 0
        || bad.object.is_some()
        || !String::from_utf8_lossy(&bad.stderr).contains("error")
    {
        return Err(format!("a failing compile: {bad:?}"));
    }
    // Tenant b compiles the same source for itself: no hit from a's entry.
    let token_b = user_token(&rig.idp_b, &rig.idp_b.issuer(), now() + 600);
    let b = rig
        .runtime
        .block_on(rig.farm("b")?.compile(request(GOOD), &token_b))
        .map_err(|e| format!("tenant b: {e}"))?;
    if b.cache_hit || b.object.as_deref() != Some(&object[..]) {
        return Err(format!(
            "tenant b must get its own compile: hit {}",
            b.cache_hit
        ));
    }
    Ok(())
}

fn refusals_and_a_lost_worker_are_errors_to_fall_back_on() -> TestResult {
    let mut rig = rig()?;
    let farm = rig.farm("a")?;
    // b's token for a's tenant, an expired token, garbage: the scheduler refuses each.
    let foreign = user_token(&rig.idp_b, &rig.idp_b.issuer(), now() + 600);
    let expired = user_token(&rig.idp_a, &rig.idp_a.issuer(), now() - 600);
    for (what, token) in [
        ("foreign", foreign),
        ("expired", expired),
        ("garbage", "x.y.z".into()),
    ] {
        match rig.runtime.block_on(farm.compile(request(GOOD), &token)) {
            Err(FarmError::Scheduler(message)) => {
                if !message.contains("token") {
                    return Err(format!(
                        "{what}: the refusal should name the token: {message}"
                    ));
                }
            }
            other => {
                return Err(format!(
                    "{what}: expected a scheduler refusal, got {other:?}"
                ))
            }
        }
    }
    // The worker goes away: an error within the deadline, which the daemon answers by
    // compiling locally.
    drop(rig.worker_stop.take());
    let token = rig.token_a();
    let started = std::time::Instant::now();
    match rig.runtime.block_on(farm.compile(request(GOOD), &token)) {
        Err(FarmError::Worker { .. } | FarmError::Timeout(_)) => {}
        other => return Err(format!("a stopped worker: {other:?}")),
    }
    if started.elapsed() > Duration::from_secs(60) {
        return Err(format!("took {:?}", started.elapsed()));
    }
    Ok(())
}

fn an_unreachable_worker_is_routed_around() -> TestResult {
    let rig = rig()?;
    // A worker that registered and then went away (its port now refuses connections), and
    // that the scheduler prefers: it sorts first, with the image as warm.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| e.to_string())?;
    rig.scheduler
        .register(
            RegisterRequest {
                worker_id: "a-gone".into(),
                address: gone.to_string(),
                capacity: 2,
                warm_images: vec![IMAGE.into()],
                ..RegisterRequest::default()
            },
            Some(SECRET),
            now(),
        )
        .map_err(|e| format!("registering the gone worker: {e}"))?;
    let farm = rig.farm("a")?;
    let token = rig.token_a();
    for round in 0..3 {
        let outcome = rig
            .runtime
            .block_on(farm.compile(request(GOOD), &token))
            .map_err(|e| format!("round {round}: the compile should be routed around: {e}"))?;
        if outcome.worker != "w-local" || outcome.exit_code != 0 {
            return Err(format!("round {round}: {outcome:?}"));
        }
    }
    Ok(())
}

/// The unprivileged farm tests.
pub fn cases() -> Vec<Case> {
    vec![
        (
            "farm_local::compiles_hits_and_fails_like_gcc",
            &[],
            compiles_hits_and_fails_like_gcc,
        ),
        (
            "farm_local::an_unreachable_worker_is_routed_around",
            &[],
            an_unreachable_worker_is_routed_around,
        ),
        (
            "farm_local::refusals_and_a_lost_worker_are_errors_to_fall_back_on",
            &[],
            refusals_and_a_lost_worker_are_errors_to_fall_back_on,
        ),
    ]
}
