//! The distributed path end to end: a scheduler, two workers running the sandbox runtime on
//! the debootstrap toolchain image (imported as an OCI layout), and the daemon's farm client,
//! all on loopback in this process. Sources are preprocessed by the host's gcc, as the
//! daemon does, with the project root rewritten to `/src`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hpcc_auth::{RoutingClaims, RoutingKey, RoutingVerifier};
use hpcc_core::digest::Digest;
use hpcc_daemon::farm::{Farm, FarmConfig, FarmError, RemoteOutcome, RemoteRequest};
use hpcc_image::ImageStore;
use hpcc_proto::scheduler::{HeartbeatRequest, RegisterRequest};
use hpcc_proto::worker::compile_request::Kind as RequestKind;
use hpcc_proto::worker::worker_client::WorkerClient;
use hpcc_proto::worker::{CompileHeader, CompileRequest, SourceChunk, SourceDone, SourceMode};
use hpcc_runtime::sandbox::{SandboxConfig, SandboxRuntime};
use hpcc_runtime::Limits;
use hpcc_scheduler::Scheduler;
use hpcc_worker::audit::{AuditLog, AuditRow};
use hpcc_worker::cache::WorkerCache;
use hpcc_worker::service::WorkerService;
use hpcc_worker::sessions::{PoolConfig, SessionPool};
use hpcc_worker::sources::SourceStore;
use hpcc_worker::{StoreRootfs, Worker, WorkerSettings};

use crate::idp::Idp;
use crate::scheduler::{config, now, tenant, user_token, SECRET};
use crate::{Case, Need, TestResult};

const CAPACITY: u32 = 4;

pub(crate) struct WorkerHandle {
    pub(crate) id: String,
    /// Makes its heartbeats report a full queue, so that placement avoids it.
    full: Arc<std::sync::atomic::AtomicBool>,
    address: String,
    /// The worker's state directory, laid out as the worker binary's: `audit.tsv`,
    /// `sources/`, `cache/`, `s/` (sessions) and `images` (a link to the shared image store).
    pub(crate) dir: PathBuf,
    audit: PathBuf,
    /// The worker itself, for its cache's counters.
    pub(crate) worker: Arc<Worker>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// What a [`Farmland`] is made of, beyond its defaults.
#[derive(Clone)]
pub(crate) struct FarmSpec {
    /// In-process workers (at most two).
    pub(crate) workers: usize,
    /// Compiles each runs at once.
    pub(crate) capacity: u32,
    /// Bytes of sources each worker keeps.
    pub(crate) retention: u64,
    /// Each worker's `[cache]`.
    pub(crate) cache: hpcc_core::config::WorkerCacheConfig,
    /// Tenants a and b are paranoid.
    pub(crate) paranoid: [bool; 2],
    /// Tenants a's and b's quotas.
    pub(crate) quotas: [hpcc_core::config::TenantQuota; 2],
    /// The scheduler's sharing groups.
    pub(crate) sharing_groups: Vec<hpcc_core::config::SharingGroup>,
}

impl Default for FarmSpec {
    fn default() -> FarmSpec {
        FarmSpec {
            workers: 2,
            capacity: CAPACITY,
            retention: hpcc_core::config::DEFAULT_AUDIT_SOURCE_RETENTION,
            cache: hpcc_core::config::WorkerCacheConfig::default(),
            paranoid: [false; 2],
            quotas: Default::default(),
            sharing_groups: Vec::new(),
        }
    }
}

/// Scheduler, two workers, tenants A and B with their IdPs.
pub(crate) struct Farmland {
    pub(crate) runtime: tokio::runtime::Runtime,
    idp_a: Idp,
    idp_b: Idp,
    pub(crate) key: RoutingKey,
    /// Kept so that the servers' state lives as long as the test.
    _scheduler: Arc<Scheduler>,
    pub(crate) scheduler_url: String,
    pub(crate) workers: Vec<WorkerHandle>,
    pub(crate) image: String,
    /// The image store's root file systems, shared by the workers.
    pub(crate) images: Arc<StoreRootfs>,
    _dirs: Vec<tempfile::TempDir>,
    _scheduler_shutdown: tokio::sync::oneshot::Sender<()>,
}

pub(crate) fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

impl Farmland {
    pub(crate) fn new() -> Result<Farmland, String> {
        Farmland::build(FarmSpec::default())
    }

    /// A scheduler with `count` in-process workers (`w1`, `w2`; at most two).
    pub(crate) fn with_workers(count: usize) -> Result<Farmland, String> {
        Farmland::build(FarmSpec {
            workers: count,
            ..FarmSpec::default()
        })
    }

    /// A farm whose workers keep `retention` bytes of sources each.
    pub(crate) fn with_source_retention(retention: u64) -> Result<Farmland, String> {
        Farmland::build(FarmSpec {
            retention,
            ..FarmSpec::default()
        })
    }

    pub(crate) fn build(spec: FarmSpec) -> Result<Farmland, String> {
        let (count, retention, capacity) = (spec.workers, spec.retention, spec.capacity);
        let runtime = tokio::runtime::Runtime::new().map_err(text)?;
        let (layout, expected_digest) = crate::image::layout()?;
        let store_dir = shared_image_store()?;
        let store = ImageStore::open(&store_dir, hpcc_image::Limits::default()).map_err(text)?;
        let image = store.import_layout(&layout).map_err(text)?.to_string();
        if image != expected_digest {
            return Err(format!("imported as {image}, packed as {expected_digest}"));
        }
        let images = Arc::new(StoreRootfs(store));
        let idp_a = Idp::start("a")?;
        let idp_b = Idp::start("b")?;
        let key = RoutingKey::generate().map_err(text)?;
        let mut tenant_a = tenant("a", &idp_a);
        tenant_a.allowed_images = vec![image.clone()];
        let mut tenant_b = tenant("b", &idp_b);
        tenant_b.allowed_images = vec![image.clone()];
        for (tenant, (paranoid, quota)) in [&mut tenant_a, &mut tenant_b]
            .into_iter()
            .zip(spec.paranoid.into_iter().zip(spec.quotas.clone()))
        {
            tenant.paranoid = paranoid;
            tenant.quota = quota;
        }
        let mut scheduler_config = config(vec![tenant_a, tenant_b]);
        scheduler_config.sharing_groups = spec.sharing_groups.clone();
        let scheduler = Arc::new(
            Scheduler::new(
                &scheduler_config,
                RoutingKey::from_pem(&key.to_pem()).map_err(text)?,
                SECRET.as_bytes().to_vec(),
            )
            .map_err(|e| e.to_string())?,
        );
        let agent = hpcc_runtime::testing::agent_binary()?;
        let mut dirs = Vec::new();
        let mut workers = Vec::new();
        let (scheduler_url, scheduler_shutdown) =
            crate::scheduler::serve(&runtime, Arc::clone(&scheduler))?;
        for id in ["w1", "w2"].into_iter().take(count) {
            let dir = tempfile::Builder::new()
                .prefix("hpcc-e2e-")
                .tempdir()
                .map_err(text)?;
            let mut sandbox = SandboxConfig::new(agent.clone());
            sandbox.state_dir = dir.path().join("s");
            let pool = SessionPool::new(
                Arc::new(SandboxRuntime::new(sandbox).map_err(text)?),
                PoolConfig::default(),
                None,
            );
            let audit_path = dir.path().join("audit.tsv");
            std::os::unix::fs::symlink(&store_dir, dir.path().join("images")).map_err(text)?;
            let sources =
                SourceStore::open(&dir.path().join("sources"), retention).map_err(text)?;
            let worker = Arc::new(Worker::new(
                WorkerSettings {
                    id: id.into(),
                    capacity,
                    limits: Limits::default(),
                    source_date_epoch: 0,
                    health: hpcc_runtime::health::HealthPolicy::default(),
                },
                RoutingVerifier::from_public_base64(&key.public_base64()).map_err(text)?,
                pool,
                images.clone(),
                runtime
                    .block_on(async {
                        WorkerCache::create_buckets(&spec.cache.remote).await;
                        WorkerCache::open(&dir.path().join("cache"), &spec.cache)
                    })
                    .map_err(text)?,
                AuditLog::open(&audit_path).map_err(text)?,
                sources,
            ));
            let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
            let address = runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(text)?;
                let address = listener.local_addr().map_err(text)?;
                let serving = Arc::clone(&worker);
                tokio::spawn(async move {
                    let _ = tonic::transport::Server::builder()
                        .add_service(WorkerService::server(Arc::clone(&serving)))
                        .serve_with_incoming_shutdown(
                            tonic::transport::server::TcpIncoming::from(listener),
                            async {
                                let _ = stopped.await;
                            },
                        )
                        .await;
                    serving.pool().stop_all().await;
                });
                Ok::<_, String>(address.to_string())
            })?;
            scheduler
                .register(
                    RegisterRequest {
                        worker_id: id.into(),
                        address: address.clone(),
                        capacity,
                        warm_images: vec![image.clone()],
                        ..RegisterRequest::default()
                    },
                    Some(SECRET),
                    now(),
                )
                .map_err(text)?;
            // Heartbeats as the worker binary sends them, every 200 ms.
            let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
            {
                let (scheduler, worker, full, image) = (
                    Arc::clone(&scheduler),
                    Arc::clone(&worker),
                    Arc::clone(&full),
                    image.clone(),
                );
                runtime.spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let load = if full.load(std::sync::atomic::Ordering::Relaxed) {
                            capacity * hpcc_scheduler::registry::OVERCOMMIT
                        } else {
                            worker.load() + worker.queued()
                        };
                        let beat = HeartbeatRequest {
                            worker_id: worker.id().to_owned(),
                            load,
                            capacity,
                            warm_images: vec![image.clone()],
                            tenants: worker
                                .tenant_load()
                                .into_iter()
                                .map(|(tenant_id, jobs)| hpcc_proto::scheduler::TenantLoad {
                                    tenant_id,
                                    jobs,
                                })
                                .collect(),
                            ..HeartbeatRequest::default()
                        };
                        if scheduler.heartbeat(beat, Some(SECRET), now()).is_err() {
                            return;
                        }
                    }
                });
            }
            workers.push(WorkerHandle {
                full,
                id: id.into(),
                address,
                dir: dir.path().to_owned(),
                audit: audit_path,
                worker: Arc::clone(&worker),
                _shutdown: shutdown,
            });
            dirs.push(dir);
        }
        Ok(Farmland {
            runtime,
            idp_a,
            idp_b,
            key,
            _scheduler: scheduler,
            scheduler_url,
            workers,
            image,
            images,
            _dirs: dirs,
            _scheduler_shutdown: scheduler_shutdown,
        })
    }

    pub(crate) fn farm(&self, tenant: &str) -> Result<Farm, String> {
        self.farm_with(tenant, false)
    }

    /// A farm client of `tenant`, in paranoid mode or not.
    pub(crate) fn farm_with(&self, tenant: &str, paranoid: bool) -> Result<Farm, String> {
        // The client connects lazily, which needs the runtime's reactor.
        let _entered = self.runtime.enter();
        Farm::new(FarmConfig {
            tenant: tenant.into(),
            scheduler: self.scheduler_url.clone(),
            scheduler_ca: None,
            insecure_plaintext: true,
            image: self.image.clone(),
            timeout: Duration::from_secs(120),
            route_patience: Duration::from_secs(60),
            paranoid,
        })
        .map_err(text)
    }

    pub(crate) fn token_a(&self) -> String {
        user_token(&self.idp_a, &self.idp_a.issuer(), now() + 600)
    }

    pub(crate) fn token_b(&self) -> String {
        user_token(&self.idp_b, &self.idp_b.issuer(), now() + 600)
    }

    /// Makes worker `id` report a full queue from now on (after its next heartbeat).
    pub(crate) fn fill(&self, id: &str) -> TestResult {
        self.set_full(id, true)
    }

    /// Undoes [`Farmland::fill`].
    pub(crate) fn unfill(&self, id: &str) -> TestResult {
        self.set_full(id, false)
    }

    fn set_full(&self, id: &str, full: bool) -> TestResult {
        let worker = self
            .workers
            .iter()
            .find(|worker| worker.id == id)
            .ok_or("unknown worker")?;
        worker
            .full
            .store(full, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    pub(crate) fn audit_rows(&self, worker: usize) -> Result<Vec<AuditRow>, String> {
        let text = std::fs::read_to_string(&self.workers[worker].audit).unwrap_or_default();
        text.lines()
            .map(|line| AuditRow::parse(line).map_err(|e| e.to_string()))
            .collect()
    }
}

/// The image store the tests' workers share, beside the test image's layout.
pub(crate) fn shared_image_store() -> Result<PathBuf, String> {
    let (layout, _) = crate::image::layout()?;
    Ok(layout.with_file_name("e2e-image-store"))
}

/// A small project: `count` C files sharing a header, under a `project` directory.
pub(crate) fn project(count: usize) -> Result<(tempfile::TempDir, Vec<PathBuf>), String> {
    let dir = tempfile::tempdir().map_err(text)?;
    let root = dir.path().join("project");
    std::fs::create_dir_all(root.join("include")).map_err(text)?;
    std::fs::write(
        root.join("include/common.h"),
        "#include <stdio.h>\nstatic inline int twice(int v) { return 2 * v; }\n",
    )
    .map_err(text)?;
    let mut sources = Vec::new();
    for index in 0..count {
        let path = root.join(format!("f{index}.c"));
        std::fs::write(
            &path,
            format!(
                "#include \"common.h\"\nint f{index}(int v) {{ printf(\"%d\\n\", v); return twice(v) + N + {index}; }}\n"
            ),
        )
        .map_err(text)?;
        sources.push(path);
    }
    Ok((dir, sources))
}

/// What the daemon does before a remote compile: `gcc -E`, then the project root becomes
/// `/src` in the line markers.
pub(crate) fn preprocess(source: &Path, defines: &[String]) -> Result<Vec<u8>, String> {
    let root = source.parent().ok_or("a source has a directory")?;
    let output = Command::new("gcc")
        .current_dir(root)
        .args(["-E", "-Iinclude"])
        .args(defines)
        .arg(source.file_name().ok_or("a source has a name")?)
        .output()
        .map_err(text)?;
    if !output.status.success() {
        return Err(format!(
            "gcc -E: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout)
        .replace(&format!("\"{}/", root.display()), "\"/src/");
    Ok(text.into_bytes())
}

/// The same compile on the host with the same flags, as a local build with the same image
/// (the host's gcc is bookworm's, like the image's; checked by [`same_gcc`]).
fn local_compile(source: &[u8], injected: &[String], flags: &[String]) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().map_err(text)?;
    std::fs::write(dir.path().join("in.i"), source).map_err(text)?;
    let job_dir = dir.path().display().to_string();
    let output = Command::new("gcc")
        .current_dir(dir.path())
        .args(
            injected
                .iter()
                .map(|flag| flag.replace("@JOBDIR@", &job_dir)),
        )
        .args(flags)
        .args(["-x", "cpp-output", "-c", "in.i", "-o", "out.o"])
        .output()
        .map_err(text)?;
    if !output.status.success() {
        return Err(format!(
            "local gcc: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    std::fs::read(dir.path().join("out.o")).map_err(text)
}

/// Whether the host's gcc-12 package is the image's (then their outputs must be identical).
fn same_gcc() -> Result<bool, String> {
    let version = |status: &Path| -> Option<String> {
        let text = std::fs::read_to_string(status).ok()?;
        let block = text
            .split("\n\n")
            .find(|block| block.starts_with("Package: gcc-12\n"))?;
        block
            .lines()
            .find_map(|line| line.strip_prefix("Version: "))
            .map(str::to_owned)
    };
    let image = hpcc_runtime::testing::image()?;
    let host = version(Path::new("/var/lib/dpkg/status"));
    let inside = version(&image.join("var/lib/dpkg/status"));
    Ok(host.is_some() && host == inside)
}

pub(crate) fn request(source: Vec<u8>, flags: &[String]) -> RemoteRequest {
    RemoteRequest {
        compiler: "gcc".into(),
        language: "cpp-output".into(),
        flags: flags.to_vec(),
        source,
        extra_outputs: Vec::new(),
    }
}

pub(crate) fn succeeded(outcome: &RemoteOutcome, what: &str) -> Result<Vec<u8>, String> {
    if outcome.exit_code != 0 {
        return Err(format!(
            "{what}: exit {}: {}",
            outcome.exit_code,
            String::from_utf8_lossy(&outcome.stderr)
        ));
    }
    let object = outcome
        .object
        .clone()
        .ok_or_else(|| format!("{what}: no object"))?;
    if !object.starts_with(b"\x7fELF") {
        return Err(format!("{what}: not an ELF object"));
    }
    Ok(object)
}

fn remote_compiles_match_local_and_across_workers() -> TestResult {
    let land = Farmland::new()?;
    let farm = land.farm("a")?;
    let token = land.token_a();
    let identical_toolchains = same_gcc()?;
    if !identical_toolchains {
        println!("note: host and image gcc-12 differ; comparing across workers only");
    }
    let (_dir, sources) = project(4)?;
    let flags: Vec<String> = ["-O2", "-g", "-Wall"]
        .iter()
        .map(|flag| (*flag).to_owned())
        .collect();
    let defines = vec!["-DN=7".to_owned()];
    let mut first_worker = String::new();
    for source in &sources {
        let preprocessed = preprocess(source, &defines)?;
        let outcome = land
            .runtime
            .block_on(farm.compile(request(preprocessed.clone(), &flags), &token))
            .map_err(text)?;
        let object = succeeded(&outcome, "remote compile")?;
        first_worker = outcome.worker.clone();
        if identical_toolchains {
            let local = local_compile(&preprocessed, &outcome.injected, &flags)?;
            if local != object {
                return Err(format!(
                    "{}: the remote object ({} bytes) differs from the local one ({} bytes)",
                    source.display(),
                    object.len(),
                    local.len()
                ));
            }
        }
        if outcome.sent_bytes >= preprocessed.len() as u64 {
            return Err(format!(
                "zstd did not shrink the source: {} bytes sent for {}",
                outcome.sent_bytes,
                preprocessed.len()
            ));
        }
    }
    // The same source on the other worker: byte-identical.
    let preprocessed = preprocess(&sources[0], &["-DN=8".to_owned()])?;
    let first = land
        .runtime
        .block_on(farm.compile(request(preprocessed.clone(), &flags), &token))
        .map_err(text)?;
    land.fill(&first.worker)?;
    let second = land
        .runtime
        .block_on(farm.compile(request(preprocessed, &flags), &token))
        .map_err(text)?;
    if first.worker == second.worker || second.cache_hit {
        return Err(format!(
            "expected a fresh compile on the other worker: {} then {} (hit {})",
            first.worker, second.worker, second.cache_hit
        ));
    }
    if succeeded(&first, "first")? != succeeded(&second, "second")? {
        return Err("two workers produced different objects".into());
    }
    // Every job left one audit row whose output digest is the object's.
    if !land.workers.iter().any(|worker| worker.id == first_worker) {
        return Err(format!("unknown worker {first_worker}"));
    }
    let rows = land.audit_rows(0)?.len() + land.audit_rows(1)?.len();
    if rows < sources.len() + 2 {
        return Err(format!(
            "{rows} audit rows for {} compiles",
            sources.len() + 2
        ));
    }
    let digest = Digest::of(&succeeded(&first, "first")?).to_hex();
    let all: Vec<AuditRow> = (0..2)
        .flat_map(|worker| land.audit_rows(worker).unwrap_or_default())
        .collect();
    if !all.iter().any(|row| {
        row.output_digest == digest && row.tenant == "a" && !row.vm.is_empty() && row.vm != "cache"
    }) {
        return Err(format!("no audit row for the object: {all:?}"));
    }
    Ok(())
}

/// Sends a compile straight to `address` with `routing_token`; the status if refused.
fn send_direct(
    land: &Farmland,
    address: &str,
    routing_token: String,
    tenant: &str,
    image: &str,
    flags: Vec<String>,
) -> Result<(), tonic::Status> {
    let source = b"int f(void) { return 1; }\n".to_vec();
    let digest = Digest::of(&source);
    let header = header(routing_token, tenant, image, flags, &source, &digest);
    send_header_and_source(land, address, header, source)
}

fn header(
    routing_token: String,
    tenant: &str,
    image: &str,
    flags: Vec<String>,
    source: &[u8],
    claimed: &Digest,
) -> CompileHeader {
    CompileHeader {
        routing_token,
        tenant_id: tenant.into(),
        image_digest: image.into(),
        source_mode: SourceMode::Preprocessed as i32,
        compiler: "gcc".into(),
        args: flags,
        language: "cpp-output".into(),
        source_digest: claimed.0.to_vec(),
        source_len: source.len() as u64,
        extra_outputs: Vec::new(),
    }
}

/// Sends one compile as a hand-written client would, reading the answer to its end.
fn send_header_and_source(
    land: &Farmland,
    address: &str,
    header: CompileHeader,
    source: Vec<u8>,
) -> Result<(), tonic::Status> {
    let messages = vec![
        CompileRequest {
            kind: Some(RequestKind::Header(header)),
        },
        CompileRequest {
            kind: Some(RequestKind::Source(SourceChunk {
                zstd: zstd_frame(&source),
            })),
        },
        CompileRequest {
            kind: Some(RequestKind::Done(SourceDone {})),
        },
    ];
    land.runtime.block_on(async {
        let mut client = WorkerClient::connect(format!("http://{address}"))
            .await
            .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        let mut events = client
            .compile(tokio_stream_iter(messages))
            .await?
            .into_inner();
        while let Some(event) = events.message().await? {
            let _ = event;
        }
        Ok(())
    })
}

fn tokio_stream_iter(
    messages: Vec<CompileRequest>,
) -> impl tonic::codegen::tokio_stream::Stream<Item = CompileRequest> {
    tonic::codegen::tokio_stream::iter(messages)
}

fn zstd_frame(data: &[u8]) -> Vec<u8> {
    hpcc_worker::service::zstd_chunk(data)
}

fn claims(worker: &str, tenant: &str, image: &str, iat: u64, exp: u64) -> RoutingClaims {
    RoutingClaims {
        iss: hpcc_auth::routing::ROUTING_ISSUER.into(),
        tenant: tenant.into(),
        image: image.into(),
        worker: worker.into(),
        sub: "alice".into(),
        iat,
        exp,
        policy: hpcc_auth::TenantPolicy::default(),
    }
}

fn refused(result: Result<(), tonic::Status>, needle: &str, what: &str) -> TestResult {
    match result {
        Err(status) if status.message().contains(needle) => Ok(()),
        other => Err(format!(
            "{what}: expected a refusal naming {needle:?}, got {other:?}"
        )),
    }
}

fn bad_routing_tokens_are_refused_without_audit() -> TestResult {
    let land = Farmland::new()?;
    let (w1, w2) = (&land.workers[0], &land.workers[1]);
    let image = land.image.clone();
    let sign = |claims: &RoutingClaims| land.key.sign(claims).map_err(text);
    let now = now();
    let for_w1 = sign(&claims(&w1.id, "a", &image, now, now + 60))?;
    refused(
        send_direct(&land, &w2.address, for_w1.clone(), "a", &image, vec![]),
        "worker",
        "a token for another worker",
    )?;
    let other_image = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
    refused(
        send_direct(&land, &w1.address, for_w1.clone(), "a", other_image, vec![]),
        "image",
        "another image",
    )?;
    refused(
        send_direct(&land, &w1.address, for_w1.clone(), "b", &image, vec![]),
        "tenant",
        "another tenant",
    )?;
    let expired = sign(&claims(&w1.id, "a", &image, now - 600, now - 300))?;
    refused(
        send_direct(&land, &w1.address, expired, "a", &image, vec![]),
        "expired",
        "an expired token",
    )?;
    // One character changed in the middle of the signature (the last one may be padding bits).
    let mut tampered: Vec<char> = for_w1.chars().collect();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    refused(
        send_direct(&land, &w1.address, tampered, "a", &image, vec![]),
        "signature",
        "a tampered token",
    )?;
    let stranger = RoutingKey::generate().map_err(text)?;
    let forged = stranger
        .sign(&claims(&w1.id, "a", &image, now, now + 60))
        .map_err(text)?;
    refused(
        send_direct(&land, &w1.address, forged, "a", &image, vec![]),
        "signature",
        "a token not signed by the scheduler",
    )?;
    refused(
        send_direct(
            &land,
            &w1.address,
            for_w1.clone(),
            "a",
            &image,
            vec!["-fplugin=/x.so".into()],
        ),
        "fplugin",
        "a refused flag",
    )?;
    for worker in 0..2 {
        let rows = land.audit_rows(worker)?;
        if !rows.is_empty() {
            return Err(format!("refused requests left audit rows: {rows:?}"));
        }
    }
    // Through the farm: tenant B's scheduler route refuses tenant A's token.
    let farm_b = land.farm("b")?;
    match land
        .runtime
        .block_on(farm_b.compile(request(b"int x;\n".to_vec(), &[]), &land.token_a()))
    {
        Err(FarmError::Scheduler(message)) if message.contains("Unauthenticated") => {}
        other => return Err(format!("A's token for B: {other:?}")),
    }
    if land.idp_a.jwks_requests() != 0 {
        return Err("tenant A's IdP was asked about tenant B's route".into());
    }
    let _ = &land.idp_b;
    // And the valid token works, leaving exactly one row.
    send_direct(&land, &w1.address, for_w1, "a", &image, vec![]).map_err(text)?;
    if land.audit_rows(0)?.len() != 1 {
        return Err("one accepted compile, one audit row".into());
    }
    Ok(())
}

/// A client holds no store credentials and the worker protocol has no write: the one way to
/// put something in a worker's cache would be a source that is not what its header says.
fn clients_cannot_plant_worker_cache_entries() -> TestResult {
    let land = Farmland::new()?;
    let w1 = &land.workers[0];
    let image = land.image.clone();
    let now = now();
    let token = land
        .key
        .sign(&claims(&w1.id, "a", &image, now, now + 60))
        .map_err(text)?;
    let honest = b"int answer(void) { return 42; }\n".to_vec();
    let planted = b"int answer(void) { return 666; }\n".to_vec();
    let forged = header(token, "a", &image, vec![], &planted, &Digest::of(&honest));
    refused(
        send_header_and_source(&land, &w1.address, forged, planted),
        "digest",
        "a source sent under another source's digest",
    )?;
    if !land.audit_rows(0)?.is_empty() {
        return Err("the refused plant left an audit row".into());
    }
    // The honest source, on the same worker, is compiled: nothing was waiting for it.
    land.fill("w2")?;
    let outcome = land
        .runtime
        .block_on(
            land.farm("a")?
                .compile(request(honest, &[]), &land.token_a()),
        )
        .map_err(text)?;
    succeeded(&outcome, "the honest compile")?;
    if outcome.worker != w1.id || outcome.cache_hit {
        return Err(format!(
            "the honest compile ran on {} (cache hit: {})",
            outcome.worker, outcome.cache_hit
        ));
    }
    Ok(())
}

/// The processes of a worker or runtime whose files are under `dir`: those whose command line
/// names `dir` (a worker's `--config`, a sandbox's host-side process, which keeps its worker's
/// command line, an unjailed VMM naming its session directory, a jailed VMM's waiting parent
/// outside its PID namespace, which keeps its worker's command line), and jailed VMMs
/// ([`jailed_under`]).
pub(crate) fn pids_under(dir: &std::path::Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = dir.to_string_lossy();
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            // A zombie has an empty command line; it is gone for all that matters here.
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            cmdline
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
                .then_some(pid)
        })
        .collect();
    for pid in jailed_under(dir) {
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    pids
}

/// The jailed VMMs of sessions whose state is under `dir`: a jailed VMM's command line names
/// only paths inside its jail, and `/proc/<pid>/root` reads as `/` (its root is a mount of
/// another namespace), but that root is the directory `<state>/jails/<session>/root`, so the
/// process is found by the device and inode of its root.
pub(crate) fn jailed_under(dir: &std::path::Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    // Jail roots: `<anything>/jails/<session>/root`, a few levels under `dir`.
    let mut roots = std::collections::BTreeSet::new();
    let mut pending = vec![(dir.to_owned(), 0)];
    while let Some((current, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let path = entry.path();
            if entry.file_name() == "jails" {
                for jail in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    if let Ok(root) = std::fs::metadata(jail.path().join("root")) {
                        roots.insert((root.dev(), root.ino()));
                    }
                }
            } else if depth < 4 {
                pending.push((path, depth + 1));
            }
        }
    }
    if roots.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let root = std::fs::metadata(entry.path().join("root")).ok()?;
            roots.contains(&(root.dev(), root.ino())).then_some(pid)
        })
        .collect()
}

/// The uid a process runs as (`None` if it is gone).
pub(crate) fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Processes whose command line contains `needle` (the compiler of a job carries its source
/// digest in `-frandom-seed`).
pub(crate) fn processes_with(needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .filter(|cmdline| {
            cmdline
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
        })
        .count()
}

/// A client that goes away (its compile future is dropped, as when the daemon gives up) kills
/// its compile on the worker: the compiler process goes away and no audit row is written for a
/// job that produced nothing. The source takes far longer to compile than the test waits, so
/// the outcome does not depend on how fast the machine is.
fn a_client_that_goes_away_kills_its_compile() -> TestResult {
    let land = Farmland::new()?;
    let mut source = String::new();
    for index in 0..6000 {
        source.push_str(&format!(
            "int f{index}(int x) {{ int s = 0; for (int i = 0; i < x; i++) {{ s += (i * {index}) ^ (s >> 3); if (s % 7 == {}) s -= x; }} return s; }}\n",
            index % 7
        ));
    }
    let source = source.into_bytes();
    let seed = format!("-frandom-seed={}", Digest::of(&source).to_hex());
    let patient = {
        let _entered = land.runtime.enter();
        Farm::new(FarmConfig {
            tenant: "a".into(),
            scheduler: land.scheduler_url.clone(),
            scheduler_ca: None,
            insecure_plaintext: true,
            image: land.image.clone(),
            timeout: Duration::from_secs(600),
            route_patience: Duration::from_secs(5),
            paranoid: false,
        })
        .map_err(text)?
    };
    let token = land.token_a();
    let compile = land.runtime.spawn(async move {
        patient
            .compile(request(source, &["-O2".into()]), &token)
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while processes_with(&seed) == 0 && std::time::Instant::now() < deadline {
        if compile.is_finished() {
            let outcome = land.runtime.block_on(compile).map_err(text)?;
            return Err(format!(
                "the slow compile ended before it was seen on the worker: {outcome:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if processes_with(&seed) == 0 {
        return Err("the slow compile never started on the worker".into());
    }
    compile.abort();
    match land.runtime.block_on(compile) {
        Err(error) if error.is_cancelled() => {}
        other => {
            return Err(format!(
                "expected the client to be cancelled, got {other:?}"
            ))
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while processes_with(&seed) > 0 {
        if std::time::Instant::now() > deadline {
            return Err("the compiler still runs 10 s after its client went away".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rows = land.audit_rows(0)?.len() + land.audit_rows(1)?.len();
    if rows != 0 {
        return Err(format!("{rows} audit rows for a cancelled job"));
    }
    Ok(())
}

fn many_concurrent_remote_compiles() -> TestResult {
    let land = Farmland::new()?;
    let (_dir, sources) = project(5)?;
    let flags: Vec<String> = vec!["-O1".into()];
    let token = land.token_a();
    let identical_toolchains = same_gcc()?;
    let mut jobs = Vec::new();
    for index in 0..200usize {
        let source = &sources[index % sources.len()];
        jobs.push(preprocess(source, &[format!("-DN={index}")])?);
    }
    let farms: Vec<Arc<Farm>> = (0..4)
        .map(|_| land.farm("a").map(Arc::new))
        .collect::<Result<_, _>>()?;
    let outcomes: Vec<Result<RemoteOutcome, FarmError>> = land.runtime.block_on(async {
        let mut handles = Vec::new();
        for (index, source) in jobs.iter().enumerate() {
            let farm = Arc::clone(&farms[index % farms.len()]);
            let request = request(source.clone(), &flags);
            let token = token.clone();
            handles.push(tokio::spawn(
                async move { farm.compile(request, &token).await },
            ));
        }
        let mut outcomes = Vec::new();
        for handle in handles {
            outcomes.push(match handle.await {
                Ok(outcome) => outcome,
                Err(error) => Err(FarmError::Timeout(Duration::from_secs(u64::from(
                    error.is_cancelled(),
                )))),
            });
        }
        outcomes
    });
    let mut by_worker = std::collections::BTreeMap::new();
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let outcome = outcome.map_err(|error| format!("compile {index}: {error}"))?;
        let object = succeeded(&outcome, &format!("compile {index}"))?;
        *by_worker.entry(outcome.worker.clone()).or_insert(0) += 1;
        if identical_toolchains && index % 20 == 0 {
            let local = local_compile(&jobs[index], &outcome.injected, &flags)?;
            if local != object {
                return Err(format!(
                    "compile {index}: the remote object differs from the local one"
                ));
            }
        }
    }
    let rows = land.audit_rows(0)?.len() + land.audit_rows(1)?.len();
    if rows != 200 {
        return Err(format!("{rows} audit rows for 200 compiles"));
    }
    println!("200 concurrent compiles by worker: {by_worker:?}");
    Ok(())
}

/// The farm tests.
pub fn cases() -> Vec<Case> {
    const SANDBOX: &[Need] = &[Need::Sandbox];
    vec![
        (
            "farm::remote_compiles_match_local_and_across_workers",
            SANDBOX,
            remote_compiles_match_local_and_across_workers,
        ),
        (
            "farm::a_client_that_goes_away_kills_its_compile",
            SANDBOX,
            a_client_that_goes_away_kills_its_compile,
        ),
        (
            "farm::clients_cannot_plant_worker_cache_entries",
            SANDBOX,
            clients_cannot_plant_worker_cache_entries,
        ),
        (
            "farm::bad_routing_tokens_are_refused_without_audit",
            SANDBOX,
            bad_routing_tokens_are_refused_without_audit,
        ),
        (
            "farm::many_concurrent_remote_compiles",
            SANDBOX,
            many_concurrent_remote_compiles,
        ),
    ]
}
