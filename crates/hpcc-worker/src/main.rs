//! `hpcc-worker --config worker.toml`: imports its images, starts the sandbox runtime,
//! registers with the scheduler and heartbeats, and serves compiles until SIGTERM, when it
//! stops its sessions.
//!
//! `hpcc-worker audit-verify --config worker.toml ROW` (or `--log FILE [--line N]`) re-runs
//! audited jobs with this worker's images, retained sources and policy
//! ([`hpcc_worker::verify`]) and exits 0 if every row verified, 1 if one did not (a mismatch
//! is the finding an auditor looks for, so it wins over errors), 2 if a row could not be
//! checked or the command line is wrong.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hpcc_auth::RoutingVerifier;
use hpcc_core::config::{RuntimeKind, WorkerConfig};
use hpcc_image::ImageStore;
use hpcc_proto::scheduler::scheduler_client::SchedulerClient;
use hpcc_proto::scheduler::{HeartbeatRequest, RegisterRequest};
use hpcc_runtime::sandbox::{SandboxConfig, SandboxRuntime};
use hpcc_runtime::vm::firecracker::{FirecrackerConfig, FirecrackerRuntime};
use hpcc_runtime::vm::qemu::{Accel, QemuConfig, QemuRuntime};
use hpcc_runtime::vm::GuestConfig;
use hpcc_runtime::Limits;
use hpcc_runtime::Runtime;
use hpcc_store::{DiskConfig, DiskStore};
use hpcc_worker::audit::{AuditLog, AuditRow};
use hpcc_worker::service::WorkerService;
use hpcc_worker::sessions::SessionPool;
use hpcc_worker::sources::SourceStore;
use hpcc_worker::verify::{Verdict, Verifier};
use hpcc_worker::{StoreRootfs, Worker, WorkerSettings};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

fn main() -> ExitCode {
    if std::env::var_os("HPCC_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("HPCC_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
    let command = match parse_args(std::env::args_os().skip(1).collect()) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("hpcc-worker: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Serve { config } => match run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("hpcc-worker: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::AuditVerify { config, rows } => audit_verify(&config, &rows),
    }
}

const USAGE: &str = "\
usage: hpcc-worker --config FILE                         serve compiles
       hpcc-worker audit-verify --config FILE ROW        re-run one audit row (a TSV line)
       hpcc-worker audit-verify --config FILE --log LOG [--line N]
                                                         re-run line N of LOG, or every row";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// Serve compiles.
    Serve { config: PathBuf },
    /// Re-run audit rows.
    AuditVerify { config: PathBuf, rows: Rows },
}

/// Which rows to verify.
#[derive(Debug, PartialEq, Eq)]
enum Rows {
    /// One row given on the command line.
    Given(String),
    /// Line `line` (from 1) of a log, or every line.
    Log { path: PathBuf, line: Option<usize> },
}

/// Parses the arguments after the program name; the error says what is wrong with them.
fn parse_args(args: Vec<OsString>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let first = args.next();
    let verify = first.as_deref() == Some("audit-verify".as_ref());
    let mut pending = if verify {
        Vec::new()
    } else {
        first.into_iter().collect()
    };
    pending.extend(args);
    let mut config = None;
    let mut log = None;
    let mut line = None;
    let mut row = None;
    let mut words = pending.into_iter();
    while let Some(word) = words.next() {
        let mut value = |name: &str| words.next().ok_or_else(|| format!("{name} needs a value"));
        match word.to_str() {
            Some("--config") => config = Some(PathBuf::from(value("--config")?)),
            Some("--log") if verify => log = Some(PathBuf::from(value("--log")?)),
            Some("--line") if verify => {
                let text = value("--line")?;
                let number = text
                    .to_str()
                    .and_then(|text| text.parse::<usize>().ok())
                    .filter(|number| *number > 0)
                    .ok_or_else(|| format!("--line {text:?}: not a line number (from 1)"))?;
                line = Some(number);
            }
            _ if verify && row.is_none() && !word.as_encoded_bytes().starts_with(b"--") => {
                let text = word
                    .into_string()
                    .map_err(|word| format!("the audit row {word:?} is not UTF-8"))?;
                row = Some(text);
            }
            _ => return Err(format!("unexpected argument {word:?}")),
        }
    }
    let config = config.ok_or("--config FILE is required")?;
    if !verify {
        return Ok(Command::Serve { config });
    }
    let rows = match (row, log, line) {
        (Some(row), None, None) => Rows::Given(row),
        (None, Some(path), line) => Rows::Log { path, line },
        (None, None, Some(_)) => return Err("--line needs --log".into()),
        (None, None, None) => return Err("audit-verify needs a ROW or --log FILE".into()),
        (Some(_), _, _) => return Err("give either a ROW or --log FILE, not both".into()),
    };
    Ok(Command::AuditVerify { config, rows })
}

fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// The limits of this worker's sessions, for its compiles and for their re-runs alike.
fn limits() -> Limits {
    Limits::default()
}

/// `SOURCE_DATE_EPOCH` inside this worker's sessions.
const SOURCE_DATE_EPOCH: u64 = 0;

/// The isolation runtime `config` names (`runtime`, and `[vm]` for the microVMs).
fn isolation(config: &WorkerConfig) -> Result<Arc<dyn Runtime>> {
    let vm = || -> Result<GuestConfig> {
        let vm = config
            .vm
            .as_ref()
            .context("runtime = \"qemu\" or \"firecracker\" needs a [vm] table")?;
        let mut guest =
            GuestConfig::new(vm.kernel.clone(), vm.modules.clone(), config.agent.clone());
        guest.state_dir = config.state_dir.join("vm");
        guest.vcpus = vm.vcpus;
        guest.memory_mib = vm.memory_mib;
        guest.boot_timeout = Duration::from_secs(vm.boot_timeout_secs);
        Ok(guest)
    };
    Ok(match config.runtime {
        RuntimeKind::Sandbox => {
            let mut sandbox = SandboxConfig::new(config.agent.clone());
            sandbox.state_dir = config.state_dir.join("s");
            Arc::new(SandboxRuntime::new(sandbox).context("the sandbox runtime")?)
        }
        RuntimeKind::Qemu => {
            let settings = config.vm.as_ref().context("[vm]")?;
            let accel = if settings.accel == "tcg" {
                Accel::Tcg
            } else {
                Accel::Kvm
            };
            Arc::new(
                QemuRuntime::new(QemuConfig {
                    guest: vm()?,
                    qemu: settings.qemu.clone(),
                    vhost_vsock: settings.vhost_vsock.clone(),
                    accel,
                })
                .context("the qemu runtime")?,
            )
        }
        RuntimeKind::Firecracker => {
            let settings = config.vm.as_ref().context("[vm]")?;
            Arc::new(
                FirecrackerRuntime::new(FirecrackerConfig {
                    guest: vm()?,
                    firecracker: settings.firecracker.clone(),
                    boot_args_extra: settings.kernel_args.clone(),
                })
                .context("the firecracker runtime")?,
            )
        }
    })
}

/// The isolation runtime of `audit-verify`, set up when the first re-run starts a session, so
/// rows that cannot be checked (malformed, source gone, image absent) are reported on a
/// machine that could not run a session at all.
struct LazyRuntime {
    config: WorkerConfig,
    runtime: std::sync::OnceLock<Result<Arc<dyn Runtime>, String>>,
}

#[tonic::async_trait]
impl Runtime for LazyRuntime {
    fn name(&self) -> &'static str {
        match self.runtime.get() {
            Some(Ok(runtime)) => runtime.name(),
            _ => "lazy",
        }
    }

    async fn start(
        &self,
        spec: &hpcc_runtime::SessionSpec,
    ) -> Result<Box<dyn hpcc_runtime::Session>, hpcc_runtime::RuntimeError> {
        let runtime = self
            .runtime
            .get_or_init(|| isolation(&self.config).map_err(|error| format!("{error:#}")));
        match runtime {
            Ok(runtime) => runtime.start(spec).await,
            Err(reason) => Err(hpcc_runtime::RuntimeError::Unavailable {
                runtime: "configured",
                reason: reason.clone(),
            }),
        }
    }
}

fn open_images(config: &WorkerConfig) -> Result<ImageStore> {
    ImageStore::open(
        config.state_dir.join("images"),
        hpcc_image::Limits::default(),
    )
    .context("opening the image store")
}

/// The rows to verify, each with the label its verdict is printed under (empty for a row
/// given on the command line, `LOG:N: ` for a log's).
fn load_rows(rows: &Rows) -> Result<Vec<(String, Result<AuditRow, String>)>> {
    let parse = |line: &str| AuditRow::parse(line).map_err(|error| error.to_string());
    match rows {
        Rows::Given(row) => Ok(vec![(String::new(), parse(row))]),
        Rows::Log { path, line } => {
            let text = read(path, "audit log")?;
            let lines: Vec<(usize, &str)> = text
                .lines()
                .enumerate()
                .map(|(index, line)| (index + 1, line))
                .collect();
            let chosen: Vec<(usize, &str)> = match line {
                Some(number) => {
                    let Some(found) = lines.get(number - 1) else {
                        bail!(
                            "{}: no line {number} (the log has {} lines)",
                            path.display(),
                            lines.len()
                        );
                    };
                    vec![*found]
                }
                None => lines
                    .into_iter()
                    .filter(|(_, line)| !line.is_empty())
                    .collect(),
            };
            if chosen.is_empty() {
                bail!("{} holds no rows", path.display());
            }
            Ok(chosen
                .into_iter()
                .map(|(number, line)| (format!("{}:{number}: ", path.display()), parse(line)))
                .collect())
        }
    }
}

fn audit_verify(config_path: &Path, rows: &Rows) -> ExitCode {
    let fail = |error: anyhow::Error| {
        eprintln!("hpcc-worker: {error:#}");
        ExitCode::from(2)
    };
    let config = match read(config_path, "config file")
        .and_then(|text| WorkerConfig::parse(config_path, &text).map_err(anyhow::Error::from))
    {
        Ok(config) => config,
        Err(error) => return fail(error),
    };
    let rows = match load_rows(rows) {
        Ok(rows) => rows,
        Err(error) => return fail(error),
    };
    let setup = || -> Result<(Verifier, tokio::runtime::Runtime)> {
        let verifier = Verifier::new(
            Arc::new(LazyRuntime {
                config: config.clone(),
                runtime: std::sync::OnceLock::new(),
            }),
            Arc::new(StoreRootfs(open_images(&config)?)),
            config.state_dir.join("sources"),
            limits(),
            SOURCE_DATE_EPOCH,
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        Ok((verifier, runtime))
    };
    let (verifier, runtime) = match setup() {
        Ok(parts) => parts,
        Err(error) => return fail(error),
    };
    let (mut mismatches, mut errors) = (0usize, 0usize);
    for (label, row) in rows {
        let verdict = match row {
            Ok(row) => runtime
                .block_on(verifier.verify(&row))
                .map_err(|error| error.to_string()),
            Err(message) => Err(message),
        };
        match verdict {
            Ok(verdict @ Verdict::Verified(_)) => println!("{label}{verdict}"),
            Ok(verdict @ Verdict::Mismatch { .. }) => {
                mismatches += 1;
                println!("{label}{verdict}");
                if let Verdict::Mismatch { stderr, .. } = &verdict {
                    if !stderr.is_empty() {
                        let text = String::from_utf8_lossy(stderr);
                        let shown: String = text.chars().take(4_000).collect();
                        eprintln!("{label}the re-run's stderr:\n{shown}");
                    }
                }
            }
            Err(message) => {
                errors += 1;
                eprintln!("hpcc-worker: {label}{message}");
            }
        }
    }
    if mismatches > 0 {
        ExitCode::FAILURE
    } else if errors > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
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
    let store = open_images(&config)?;
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
    let runtime = isolation(&config)?;
    let pool = SessionPool::new(
        runtime,
        Duration::from_secs(config.session_idle_secs),
        Duration::from_secs(config.session_max_secs),
    );
    let cache = DiskStore::open(&config.state_dir.join("cache"), DiskConfig::default())
        .context("opening the worker cache")?;
    let audit =
        AuditLog::open(&config.state_dir.join("audit.tsv")).context("opening the audit log")?;
    let sources = SourceStore::open(
        &config.state_dir.join("sources"),
        config.audit_source_retention,
    )
    .context("opening the retained sources")?;
    let worker = Arc::new(Worker::new(
        WorkerSettings {
            id: config.id.clone(),
            capacity: config.capacity,
            limits: limits(),
            source_date_epoch: SOURCE_DATE_EPOCH,
        },
        verifier,
        pool,
        Arc::new(StoreRootfs(store)),
        cache,
        audit,
        sources,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str], expected: Result<Command, &str>) {
        let parsed = parse_args(args.iter().map(OsString::from).collect());
        match (parsed, expected) {
            (Ok(command), Ok(expected)) => assert_eq!(command, expected, "{args:?}"),
            (Err(message), Err(needle)) => {
                assert!(message.contains(needle), "{args:?}: {message}")
            }
            (parsed, expected) => panic!("{args:?}: {parsed:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn command_lines() {
        let config = || PathBuf::from("w.toml");
        check(
            &["--config", "w.toml"],
            Ok(Command::Serve { config: config() }),
        );
        check(
            &["audit-verify", "--config", "w.toml", "a\tb"],
            Ok(Command::AuditVerify {
                config: config(),
                rows: Rows::Given("a\tb".into()),
            }),
        );
        check(
            &["audit-verify", "a\tb", "--config", "w.toml"],
            Ok(Command::AuditVerify {
                config: config(),
                rows: Rows::Given("a\tb".into()),
            }),
        );
        check(
            &[
                "audit-verify",
                "--config",
                "w.toml",
                "--log",
                "a.tsv",
                "--line",
                "3",
            ],
            Ok(Command::AuditVerify {
                config: config(),
                rows: Rows::Log {
                    path: "a.tsv".into(),
                    line: Some(3),
                },
            }),
        );
        check(
            &["audit-verify", "--log", "a.tsv", "--config", "w.toml"],
            Ok(Command::AuditVerify {
                config: config(),
                rows: Rows::Log {
                    path: "a.tsv".into(),
                    line: None,
                },
            }),
        );
        check(&[], Err("--config FILE is required"));
        check(&["--config"], Err("--config needs a value"));
        check(&["--config", "w.toml", "row"], Err("unexpected argument"));
        check(
            &["--config", "w.toml", "--log", "a"],
            Err("unexpected argument"),
        );
        check(
            &["audit-verify", "--config", "w.toml"],
            Err("needs a ROW or --log"),
        );
        check(&["audit-verify", "row"], Err("--config FILE is required"));
        check(
            &["audit-verify", "--config", "w.toml", "r1", "r2"],
            Err("unexpected argument \"r2\""),
        );
        check(
            &["audit-verify", "--config", "w.toml", "r", "--log", "a"],
            Err("not both"),
        );
        check(
            &["audit-verify", "--config", "w.toml", "--line", "2"],
            Err("--line needs --log"),
        );
        for bad in ["0", "x", "-1"] {
            check(
                &[
                    "audit-verify",
                    "--config",
                    "w.toml",
                    "--log",
                    "a",
                    "--line",
                    bad,
                ],
                Err("not a line number"),
            );
        }
        check(
            &["audit-verify", "--config", "w.toml", "--verbose"],
            Err("unexpected argument \"--verbose\""),
        );
    }
}
