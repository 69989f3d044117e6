//! `hpcc-worker --config worker.toml`: imports its images, starts the sandbox runtime,
//! registers with the scheduler and heartbeats, and serves compiles until SIGTERM, when it
//! stops its sessions.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hpcc_auth::RoutingVerifier;
use hpcc_core::config::WorkerConfig;
use hpcc_image::ImageStore;
use hpcc_proto::scheduler::scheduler_client::SchedulerClient;
use hpcc_proto::scheduler::{HeartbeatRequest, RegisterRequest};
use hpcc_runtime::sandbox::{SandboxConfig, SandboxRuntime};
use hpcc_runtime::Limits;
use hpcc_store::{DiskConfig, DiskStore};
use hpcc_worker::audit::AuditLog;
use hpcc_worker::service::WorkerService;
use hpcc_worker::sessions::SessionPool;
use hpcc_worker::{StoreRootfs, Worker, WorkerSettings};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

fn main() -> ExitCode {
    if std::env::var_os("HPCC_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("HPCC_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--config", path] => run(Path::new(path)),
        _ => {
            eprintln!("usage: hpcc-worker --config FILE");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hpcc-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn run(config_path: &Path) -> Result<()> {
    let text = read(config_path, "config file")?;
    let config = WorkerConfig::parse(config_path, &text)?;
    let secret = read(&config.worker_secret_file, "worker secret file")?;
    if secret.trim().is_empty() {
        bail!(
            "the worker secret file {} is empty",
            config.worker_secret_file.display()
        );
    }
    let verifier = RoutingVerifier::from_public_base64(&config.routing_public_key)
        .context("routing_public_key")?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    let store = ImageStore::open(
        config.state_dir.join("images"),
        hpcc_image::Limits::default(),
    )
    .context("opening the image store")?;
    let mut imported = Vec::new();
    for image in &config.images {
        let digest = if image.is_dir() {
            store.import_layout(image)
        } else {
            store.import_docker_archive(image)
        }
        .with_context(|| format!("importing image {}", image.display()))?;
        eprintln!("hpcc-worker: image {digest} from {}", image.display());
        imported.push(digest.to_string());
    }
    let tokio_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    for reference in &config.pull {
        let digest = tokio_runtime
            .block_on(store.pull(reference, &hpcc_image::PullOptions::default()))
            .with_context(|| format!("pulling image {reference}"))?;
        eprintln!("hpcc-worker: image {digest} pulled from {reference}");
        imported.push(digest.to_string());
    }
    let mut sandbox = SandboxConfig::new(config.agent.clone());
    sandbox.state_dir = config.state_dir.join("s");
    let runtime = SandboxRuntime::new(sandbox).context("the sandbox runtime")?;
    let pool = SessionPool::new(
        Arc::new(runtime),
        Duration::from_secs(config.session_idle_secs),
        Duration::from_secs(config.session_max_secs),
    );
    let cache = DiskStore::open(&config.state_dir.join("cache"), DiskConfig::default())
        .context("opening the worker cache")?;
    let audit =
        AuditLog::open(&config.state_dir.join("audit.tsv")).context("opening the audit log")?;
    let worker = Arc::new(Worker::new(
        WorkerSettings {
            id: config.id.clone(),
            capacity: config.capacity,
            limits: Limits::default(),
            source_date_epoch: 0,
        },
        verifier,
        pool,
        Arc::new(StoreRootfs(store)),
        cache,
        audit,
    ));
    tokio_runtime.block_on(serve(config, worker, secret.trim().to_owned(), imported))
}

async fn scheduler_channel(config: &WorkerConfig) -> Result<Channel> {
    let mut endpoint = Endpoint::from_shared(config.scheduler.clone())
        .context("scheduler URL")?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    if let Some(ca) = &config.scheduler_ca {
        let pem = read(ca, "scheduler CA")?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .context("scheduler TLS")?;
    } else if !config.insecure_plaintext {
        bail!("scheduler_ca is required unless insecure_plaintext = true");
    }
    Ok(endpoint.connect_lazy())
}

fn with_secret<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {secret}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

async fn serve(
    config: WorkerConfig,
    worker: Arc<Worker>,
    secret: String,
    images: Vec<String>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let address = listener.local_addr()?;
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| address.to_string());
    let tls_ca_pem = match &config.tls_ca {
        Some(path) => read(path, "worker CA")?.into_bytes(),
        None => Vec::new(),
    };
    let channel = scheduler_channel(&config).await?;
    let mut scheduler = SchedulerClient::new(channel);
    let register = RegisterRequest {
        worker_id: config.id.clone(),
        address: advertise.clone(),
        tls_ca_pem,
        tls_server_name: config.tls_server_name.clone().unwrap_or_default(),
        capacity: config.capacity,
        warm_images: images.clone(),
    };
    // Registration and heartbeats: a scheduler that is down or restarted is retried.
    {
        let worker = Arc::clone(&worker);
        let secret = secret.clone();
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let mut registered = false;
            let mut interval = Duration::from_millis(1_000);
            loop {
                if !registered {
                    match scheduler
                        .register(with_secret(register.clone(), &secret))
                        .await
                    {
                        Ok(reply) => {
                            registered = true;
                            interval = Duration::from_millis(
                                reply.into_inner().heartbeat_interval_ms.clamp(100, 60_000),
                            );
                        }
                        Err(status) => tracing::warn!(%status, "registering with the scheduler"),
                    }
                } else {
                    let mut warm = images.clone();
                    warm.extend(worker.pool().warm_images().await);
                    warm.sort();
                    warm.dedup();
                    let beat = HeartbeatRequest {
                        worker_id: worker.id().to_owned(),
                        load: worker.load() + worker.queued(),
                        capacity: worker.capacity(),
                        warm_images: warm,
                    };
                    match scheduler.heartbeat(with_secret(beat, &secret)).await {
                        Ok(reply) => registered = reply.into_inner().known,
                        Err(status) => tracing::warn!(%status, "heartbeat"),
                    }
                }
                worker.pool().reap(Instant::now()).await;
                tokio::time::sleep(interval).await;
            }
        });
    }
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        let cert = read(&tls.cert, "certificate")?;
        let key = read(&tls.key, "certificate key")?;
        server = server
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .context("configuring TLS")?;
    }
    eprintln!(
        "hpcc-worker {} ({}) listening on {address}, advertised as {advertise} ({})",
        config.id,
        env!("CARGO_PKG_VERSION"),
        if config.tls.is_some() {
            "TLS"
        } else {
            "plaintext"
        }
    );
    let pool_worker = Arc::clone(&worker);
    server
        .add_service(WorkerService::server(worker))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                use tokio::signal::unix::{signal, SignalKind};
                if let Ok(mut term) = signal(SignalKind::terminate()) {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
            },
        )
        .await
        .context("serving")?;
    pool_worker.pool().stop_all().await;
    Ok(())
}
