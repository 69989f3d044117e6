//! `hpcc-worker --config worker.toml`: imports its images (archives named by `images`, and
//! references pulled by digest, `pull`), sets up the runtime its config names (`runtime` is
//! required; `sandbox` is announced as not a kernel boundary), registers with the scheduler and
//! heartbeats (naming the runtime, its sessions and waiting jobs), reaps idle sessions at each
//! heartbeat, and serves compiles until SIGTERM, when it stops its sessions.
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
use hpcc_core::config::{JailSettings, JailerSettings, RuntimeKind, WorkerConfig};
use hpcc_image::ImageStore;
use hpcc_proto::scheduler::scheduler_client::SchedulerClient;
use hpcc_proto::scheduler::{HeartbeatRequest, RegisterRequest, TenantLoad};
use hpcc_runtime::sandbox::{SandboxConfig, SandboxRuntime};
use hpcc_runtime::vm::firecracker::{self, FirecrackerConfig, FirecrackerRuntime, JailerConfig};
use hpcc_runtime::vm::jail::{CgroupVersion, JailConfig};
use hpcc_runtime::vm::qemu::{Accel, QemuConfig, QemuRuntime};
use hpcc_runtime::vm::GuestConfig;
use hpcc_runtime::Limits;
use hpcc_runtime::Runtime;
use hpcc_worker::audit::{AuditLog, AuditRow};
use hpcc_worker::cache::WorkerCache;
use hpcc_worker::service::WorkerService;
use hpcc_worker::sessions::{PoolConfig, SessionPool};
use hpcc_worker::snapshots::SnapshotStore;
use hpcc_worker::sources::SourceStore;
use hpcc_worker::verify::{Verdict, Verifier};
use hpcc_worker::{StoreRootfs, Worker, WorkerSettings};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

mod check;

fn main() -> ExitCode {
    // A server logs what it does at `info` (and warnings: a job refused for a broken image, a
    // store gone) unless `HPCC_LOG` says otherwise.
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if hpcc_core::cli::help_or_version("hpcc-worker", USAGE, &args) {
        return ExitCode::SUCCESS;
    }
    hpcc_core::logging::init_stderr("info");
    let command = match parse_args(args) {
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
        Command::CheckConfig { config } => check_config(&config),
        Command::MakeImage { source, out } => make_image(&source, &out),
        Command::Status { config } => status(&config),
        Command::Tenants { config } => retention(&config, None),
        Command::DeleteTenant {
            config,
            tenant,
            namespaces,
        } => retention(&config, Some((&tenant, &namespaces))),
    }
}

const USAGE: &str = "\
usage: hpcc-worker --config FILE                         serve compiles
       hpcc-worker make-image --rootfs DIR --out LAYOUT  pack a root file system as an OCI
                                                         layout; prints the image digest
       hpcc-worker make-image --debootstrap SUITE [--include PKG,...] [--mirror URL] --out LAYOUT
                                                         the same, from a debootstrap run
       hpcc-worker check-config FILE                     check FILE and what it points at
                                                         (certificates, secret, key, agent,
                                                         directories, images, runtime)
       hpcc-worker audit-verify --config FILE ROW        re-run one audit row (a TSV line)
       hpcc-worker audit-verify --config FILE --log LOG [--line N]
                                                         re-run line N of LOG, or every row
       hpcc-worker status --config FILE                  the serving worker's runtime,
                                                         boundary, sessions and load
       hpcc-worker tenants --config FILE                 each tenant's and namespace's data
                                                         in every tier
       hpcc-worker delete-tenant --config FILE TENANT [--namespace group-NAME]...
                                                         delete a tenant's cache namespace
                                                         (every tier), kept sources and
                                                         snapshots, and the named sharing
                                                         groups' namespaces";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// Serve compiles.
    Serve { config: PathBuf },
    /// Re-run audit rows.
    AuditVerify { config: PathBuf, rows: Rows },
    /// Check a config file and what it names.
    CheckConfig { config: PathBuf },
    /// Make a toolchain image.
    MakeImage { source: ImageSource, out: PathBuf },
    /// Show the serving worker's status file.
    Status { config: PathBuf },
    /// List each tenant's data.
    Tenants { config: PathBuf },
    /// Delete a tenant's data (and named sharing groups' namespaces).
    DeleteTenant {
        config: PathBuf,
        tenant: String,
        namespaces: Vec<String>,
    },
}

/// Where `make-image` gets its root file system.
#[derive(Debug, PartialEq, Eq)]
enum ImageSource {
    /// A directory.
    Rootfs(PathBuf),
    /// A `debootstrap --variant=minbase` run.
    Debootstrap {
        suite: String,
        include: Option<String>,
        mirror: Option<String>,
    },
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
    if first.as_deref() == Some("make-image".as_ref()) {
        return parse_make_image(args.collect());
    }
    if first.as_deref() == Some("check-config".as_ref()) {
        let rest: Vec<OsString> = args.collect();
        return match rest.as_slice() {
            [file] if !file.as_encoded_bytes().starts_with(b"--") => Ok(Command::CheckConfig {
                config: PathBuf::from(file),
            }),
            [flag, file] if flag == "--config" => Ok(Command::CheckConfig {
                config: PathBuf::from(file),
            }),
            _ => Err("check-config needs one FILE".into()),
        };
    }
    let verify = first.as_deref() == Some("audit-verify".as_ref());
    let show_status = first.as_deref() == Some("status".as_ref());
    let tenants = first.as_deref() == Some("tenants".as_ref());
    let delete = first.as_deref() == Some("delete-tenant".as_ref());
    let mut pending = if verify || show_status || tenants || delete {
        Vec::new()
    } else {
        first.into_iter().collect()
    };
    pending.extend(args);
    let mut config = None;
    let mut log = None;
    let mut line = None;
    let mut row = None;
    let mut tenant = None;
    let mut namespaces = Vec::new();
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
            Some("--namespace") if delete => {
                let name = value("--namespace")?;
                namespaces.push(
                    name.into_string()
                        .map_err(|name| format!("--namespace {name:?} is not UTF-8"))?,
                );
            }
            _ if delete && tenant.is_none() && !word.as_encoded_bytes().starts_with(b"--") => {
                tenant = Some(
                    word.into_string()
                        .map_err(|word| format!("the tenant {word:?} is not UTF-8"))?,
                );
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
    if show_status {
        return Ok(Command::Status { config });
    }
    if tenants {
        return Ok(Command::Tenants { config });
    }
    if delete {
        let tenant = tenant.ok_or("delete-tenant needs a TENANT")?;
        return Ok(Command::DeleteTenant {
            config,
            tenant,
            namespaces,
        });
    }
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

/// The arguments of `make-image`.
fn parse_make_image(args: Vec<OsString>) -> Result<Command, String> {
    let (mut rootfs, mut suite, mut include, mut mirror, mut out) = (None, None, None, None, None);
    let mut words = args.into_iter();
    while let Some(word) = words.next() {
        let mut value = |name: &str| words.next().ok_or_else(|| format!("{name} needs a value"));
        let text = |value: OsString, name: &str| {
            value
                .into_string()
                .map_err(|value| format!("{name} {value:?} is not UTF-8"))
        };
        match word.to_str() {
            Some("--rootfs") => rootfs = Some(PathBuf::from(value("--rootfs")?)),
            Some("--out") => out = Some(PathBuf::from(value("--out")?)),
            Some("--debootstrap") => suite = Some(text(value("--debootstrap")?, "--debootstrap")?),
            Some("--include") => include = Some(text(value("--include")?, "--include")?),
            Some("--mirror") => mirror = Some(text(value("--mirror")?, "--mirror")?),
            _ => return Err(format!("make-image: unexpected argument {word:?}")),
        }
    }
    let out = out.ok_or("make-image needs --out LAYOUT")?;
    let source = match (rootfs, suite) {
        (Some(rootfs), None) if include.is_none() && mirror.is_none() => {
            ImageSource::Rootfs(rootfs)
        }
        (None, Some(suite)) => ImageSource::Debootstrap {
            suite,
            include,
            mirror,
        },
        (Some(_), None) => return Err("--include and --mirror go with --debootstrap".into()),
        _ => return Err("make-image needs one of --rootfs DIR and --debootstrap SUITE".into()),
    };
    Ok(Command::MakeImage { source, out })
}

/// `hpcc-worker make-image`: packs the root file system (a directory, or what debootstrap
/// makes in a temporary one) as an OCI layout and prints the image's digest on stdout.
fn make_image(source: &ImageSource, out: &Path) -> ExitCode {
    let run = || -> Result<hpcc_image::Packed> {
        let scratch;
        let rootfs = match source {
            ImageSource::Rootfs(dir) => dir.clone(),
            ImageSource::Debootstrap {
                suite,
                include,
                mirror,
            } => {
                let parent = out
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                scratch = tempfile::Builder::new()
                    .prefix(".hpcc-debootstrap-")
                    .tempdir_in(parent)
                    .with_context(|| format!("a scratch directory in {}", parent.display()))?;
                let root = scratch.path().join("root");
                let mut command = std::process::Command::new("debootstrap");
                command.arg("--variant=minbase");
                if let Some(include) = include {
                    command.arg(format!("--include={include}"));
                }
                command.arg(suite).arg(&root);
                if let Some(mirror) = mirror {
                    command.arg(mirror);
                }
                eprintln!("hpcc-worker: running debootstrap {suite} (a minute or more)");
                let output = command
                    .output()
                    .context("running debootstrap (apt-get install debootstrap)")?;
                if !output.status.success() {
                    let log = String::from_utf8_lossy(&output.stdout);
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    bail!(
                        "debootstrap failed ({}): {}",
                        output.status,
                        tail.join(" | ")
                    );
                }
                root
            }
        };
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        Ok(hpcc_image::pack_rootfs(&rootfs, out, architecture)?)
    };
    match run() {
        Ok(packed) => {
            eprintln!(
                "hpcc-worker: packed {} entries ({} bytes) into {}{}",
                packed.entries,
                packed.layer_bytes,
                out.display(),
                if packed.skipped.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; left out {} device node(s), FIFO(s) or socket(s): {}",
                        packed.skipped.len(),
                        packed
                            .skipped
                            .iter()
                            .take(5)
                            .map(|path| path.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            println!("{}", packed.digest);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("hpcc-worker: make-image: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// The limits of this worker's sessions, for its compiles and for their re-runs alike.
fn limits() -> Limits {
    Limits::default()
}

/// The pool's limits from `config`; `host_memory` (bytes, 0 if unknown) sizes the default
/// guest memory budget: three quarters of it, the rest left to the worker, its caches and
/// the host.
fn pool_config(config: &WorkerConfig, host_memory: u64) -> PoolConfig {
    PoolConfig {
        idle_ttl: Duration::from_secs(config.session_idle_secs),
        max_ttl: Duration::from_secs(config.session_max_secs),
        max_sessions: config.max_sessions,
        max_sessions_per_tenant: config
            .max_sessions_per_tenant
            .unwrap_or(config.max_sessions),
        memory_budget: config.guest_memory_budget.unwrap_or(host_memory / 4 * 3),
        wait: Duration::from_secs(config.session_wait_secs),
    }
}

/// The host's memory in bytes (`MemTotal` of `/proc/meminfo`), 0 if it cannot be read.
fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib.saturating_mul(1024))
}

/// `SOURCE_DATE_EPOCH` inside this worker's sessions.
const SOURCE_DATE_EPOCH: u64 = 0;

/// The VMM jail `[vm.jail]` asks for, or `None` when it is disabled.
fn jail(settings: &JailSettings) -> Result<Option<JailConfig>> {
    if !settings.enabled {
        return Ok(None);
    }
    let cgroup_version = match settings.cgroup_version.as_str() {
        "auto" => CgroupVersion::Auto,
        "1" => CgroupVersion::V1,
        "2" => CgroupVersion::V2,
        other => bail!("vm.jail.cgroup_version = {other:?}: expected \"auto\", \"1\" or \"2\""),
    };
    Ok(Some(JailConfig {
        uid_base: settings.uid_base,
        uid_count: settings.uid_count,
        cgroup_version,
        cgroup_parent: settings.cgroup_parent.clone(),
        memory_bytes: settings
            .memory_mib
            .map(|mib| {
                mib.checked_mul(1 << 20)
                    .context("vm.jail.memory_mib is too large")
            })
            .transpose()?,
        cpu_millis: settings.cpu_millis,
        pids_max: settings.pids_max,
        ..JailConfig::default()
    }))
}

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
                    accel,
                    jail: jail(&settings.jail)?,
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
                    jailer: settings
                        .jailer
                        .as_ref()
                        .map(|jailer| jailer_config(jailer, &config.state_dir.join("jail"))),
                    jail: jail(&settings.jail)?,
                })
                .context("the firecracker runtime")?,
            )
        }
    })
}

/// The runtime's jailer setup from `[vm.jailer]`; jails go under `default_base` unless the
/// table names a `chroot_base_dir`.
fn jailer_config(settings: &JailerSettings, default_base: &std::path::Path) -> JailerConfig {
    let base = settings
        .chroot_base_dir
        .clone()
        .unwrap_or_else(|| default_base.to_owned());
    let mut jailer = JailerConfig::new(settings.binary.clone(), base);
    jailer.uid_base = settings.uid_base;
    jailer.uid_count = settings.uid_count;
    match settings.cgroup_version {
        Some(1) => jailer.cgroup_version = firecracker::CgroupVersion::V1,
        Some(2) => jailer.cgroup_version = firecracker::CgroupVersion::V2,
        // Absent (or refused by the config's checks): what the host runs.
        _ => {}
    }
    jailer.parent_cgroup = settings.parent_cgroup.clone();
    jailer.memory_overhead_mib = settings.memory_overhead_mib;
    jailer.pids_max = settings.pids_max;
    jailer.netns = settings.netns.clone();
    jailer
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

/// `hpcc-worker check-config FILE`: exit 0 when every check passes, 1 when one does not
/// (each printed), 2 when the file itself cannot be read or parsed.
fn check_config(path: &Path) -> ExitCode {
    let config = match read(path, "config file")
        .and_then(|text| WorkerConfig::parse(path, &text).map_err(anyhow::Error::from))
    {
        Ok(config) => config,
        Err(error) => {
            eprintln!("hpcc-worker: {error:#}");
            return ExitCode::from(2);
        }
    };
    println!(
        "{}: parsed, worker {:?}, runtime {}",
        path.display(),
        config.id,
        config.runtime.as_str()
    );
    match check::check_config(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(problems) => {
            eprintln!("hpcc-worker: {}: {problems}", path.display());
            ExitCode::FAILURE
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

/// `hpcc-worker status`: prints the serving worker's status file and whether it still
/// serves; exit 0 when it does, 3 when it does not, 1 when there is no status to show.
/// `tenants` (no `delete`) or `delete-tenant`: prints what the stores hold or what was
/// deleted; exit 2 with the reason on an error.
fn retention(config_path: &Path, delete: Option<(&str, &[String])>) -> ExitCode {
    let run = || -> Result<String> {
        let text = read(config_path, "config file")?;
        let config = WorkerConfig::parse(config_path, &text)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let done = runtime.block_on(async {
            match delete {
                Some((tenant, namespaces)) => {
                    hpcc_worker::retention::delete(&config, tenant, namespaces).await
                }
                None => hpcc_worker::retention::list(&config).await,
            }
        })?;
        Ok(done)
    };
    match run() {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("hpcc-worker: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn status(config_path: &Path) -> ExitCode {
    let shown = || -> Result<Result<String, String>> {
        let text = read(config_path, "config file")?;
        let config = WorkerConfig::parse(config_path, &text)?;
        let file = hpcc_worker::status::path(&config.state_dir);
        let status = std::fs::read_to_string(&file).with_context(|| {
            format!("no status at {} (has this worker served?)", file.display())
        })?;
        let pid_runs = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
        Ok(hpcc_worker::status::liveness(
            &status,
            hpcc_worker::status::now(),
            Duration::from_secs(120),
            pid_runs,
        )
        .map(|()| status.clone())
        .map_err(|why| format!("{status}state = {why}")))
    };
    match shown() {
        Ok(Ok(status)) => {
            println!("{status}state = serving");
            ExitCode::SUCCESS
        }
        Ok(Err(status)) => {
            println!("{status}");
            ExitCode::from(3)
        }
        Err(error) => {
            eprintln!("hpcc-worker: {error:#}");
            ExitCode::FAILURE
        }
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
    if config.runtime.is_kernel_boundary() {
        eprintln!("hpcc-worker: runtime {}", config.runtime.as_str());
    } else {
        eprintln!(
            "hpcc-worker: runtime sandbox: not a kernel boundary (namespaces and seccomp over \
             the host's kernel); use runtime = \"qemu\" or \"firecracker\" in production"
        );
        tracing::warn!("runtime sandbox: not a kernel boundary");
    }
    let pool_config = pool_config(&config, host_memory());
    eprintln!(
        "hpcc-worker: at most {} sessions ({} per tenant) within {} MiB of guest memory, {} MiB each",
        pool_config.max_sessions,
        pool_config.max_sessions_per_tenant,
        pool_config.memory_budget >> 20,
        runtime.session_memory() >> 20,
    );
    let snapshots = if config.snapshots && runtime.snapshot_identity().is_some() {
        let dir = config
            .snapshot_dir
            .clone()
            .unwrap_or_else(|| config.state_dir.join("snapshots"));
        Some(Arc::new(
            SnapshotStore::open(
                &dir,
                Duration::from_secs(config.snapshot_ttl_secs),
                config.snapshot_max_bytes,
            )
            .context("opening the snapshot store")?,
        ))
    } else {
        None
    };
    let pool = SessionPool::new(runtime, pool_config, snapshots);
    let cache = WorkerCache::open(&config.state_dir.join("cache"), &config.cache)
        .context("opening the worker cache ([cache])")?;
    tokio_runtime.block_on(WorkerCache::create_buckets(&config.cache.remote));
    if !config.cache.remote.is_empty() {
        eprintln!(
            "hpcc-worker: cache tiers: local disk ({} bytes), then {}",
            config.cache.max_size.0,
            config
                .cache
                .remote
                .iter()
                .map(|remote| remote.display_name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
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
            health: hpcc_runtime::health::HealthPolicy::default(),
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
    let metrics_listener = tokio::net::TcpListener::bind(&config.metrics_listen)
        .await
        .with_context(|| format!("metrics_listen {}", config.metrics_listen))?;
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
        runtime: config.runtime.as_str().to_owned(),
    };
    // Registration and heartbeats: a scheduler that is down or restarted is retried. Both
    // name the runtime, so the scheduler's view of a worker says which boundary it is.
    let runtime_name = config.runtime.as_str().to_owned();
    let kernel_boundary = config.runtime.is_kernel_boundary();
    let state_dir = config.state_dir.clone();
    {
        let worker = Arc::clone(&worker);
        let secret = secret.clone();
        hpcc_worker::spawn_named("heartbeat", async move {
            let mut registered = false;
            let mut interval = Duration::from_millis(1_000);
            loop {
                if !registered {
                    match scheduler
                        .register(with_secret(register.clone(), &secret))
                        .await
                    {
                        Ok(reply) => {
                            tracing::info!(scheduler = %config.scheduler, "registered with the scheduler");
                            registered = true;
                            interval = Duration::from_millis(
                                reply.into_inner().heartbeat_interval_ms.clamp(100, 60_000),
                            );
                        }
                        Err(status) => tracing::warn!(
                            scheduler = %config.scheduler,
                            code = ?status.code(),
                            message = status.message(),
                            "cannot register with the scheduler; retrying"
                        ),
                    }
                } else {
                    let mut warm = images.clone();
                    warm.extend(worker.pool().warm_images());
                    warm.sort();
                    warm.dedup();
                    let pool = worker.pool().status();
                    let beat = HeartbeatRequest {
                        worker_id: worker.id().to_owned(),
                        load: worker.load() + worker.queued(),
                        capacity: worker.capacity(),
                        warm_images: warm,
                        runtime: runtime_name.clone(),
                        sessions: u32::try_from(pool.ready + pool.starting + pool.retiring)
                            .unwrap_or(u32::MAX),
                        waiting_for_session: u32::try_from(pool.waiting).unwrap_or(u32::MAX),
                        tenants: worker
                            .tenant_load()
                            .into_iter()
                            .map(|(tenant_id, jobs)| TenantLoad { tenant_id, jobs })
                            .collect(),
                    };
                    match scheduler.heartbeat(with_secret(beat, &secret)).await {
                        Ok(reply) => registered = reply.into_inner().known,
                        Err(status) => tracing::warn!(%status, "heartbeat"),
                    }
                }
                let pool = worker.pool().status();
                let status = hpcc_worker::status::Status {
                    worker: worker.id().to_owned(),
                    runtime: runtime_name.clone(),
                    kernel_boundary,
                    pid: std::process::id(),
                    updated: hpcc_worker::status::now(),
                    load: worker.load() + worker.queued(),
                    capacity: worker.capacity(),
                    sessions: [pool.ready, pool.starting, pool.retiring],
                    waiting: pool.waiting,
                };
                if let Err(error) = status.write(&state_dir) {
                    tracing::warn!(%error, "writing the status file");
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
        "hpcc-worker {} ({}) listening on {address}, advertised as {advertise} ({}), runtime {}",
        config.id,
        env!("CARGO_PKG_VERSION"),
        if config.tls.is_some() {
            "TLS"
        } else {
            "plaintext"
        },
        config.runtime.as_str(),
    );
    eprintln!(
        "hpcc-worker metrics on http://{}/metrics",
        metrics_listener.local_addr()?
    );
    let pool_worker = Arc::clone(&worker);
    let refreshed = Arc::clone(&worker);
    let metrics = hpcc_metrics::serve(
        metrics_listener,
        Arc::new(worker.metrics_registry()),
        Arc::new(move || refreshed.refresh_metrics()),
    );
    let served = server
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
        );
    tokio::select! {
        served = served => served.context("serving")?,
        () = metrics => bail!("the metrics endpoint stopped"),
    }
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
            &["status", "--config", "w.toml"],
            Ok(Command::Status { config: config() }),
        );
        check(&["status"], Err("--config FILE is required"));
        for args in [
            &["check-config", "w.toml"][..],
            &["check-config", "--config", "w.toml"],
        ] {
            check(args, Ok(Command::CheckConfig { config: config() }));
        }
        check(&["check-config"], Err("needs one FILE"));
        check(
            &["make-image", "--rootfs", "r", "--out", "o"],
            Ok(Command::MakeImage {
                source: ImageSource::Rootfs("r".into()),
                out: "o".into(),
            }),
        );
        check(
            &[
                "make-image",
                "--debootstrap",
                "bookworm",
                "--include",
                "gcc",
                "--out",
                "o",
            ],
            Ok(Command::MakeImage {
                source: ImageSource::Debootstrap {
                    suite: "bookworm".into(),
                    include: Some("gcc".into()),
                    mirror: None,
                },
                out: "o".into(),
            }),
        );
        check(&["make-image", "--rootfs", "r"], Err("needs --out"));
        check(&["make-image", "--out", "o"], Err("one of --rootfs"));
        check(
            &[
                "make-image",
                "--rootfs",
                "r",
                "--debootstrap",
                "b",
                "--out",
                "o",
            ],
            Err("one of --rootfs"),
        );
        check(
            &[
                "make-image",
                "--rootfs",
                "r",
                "--include",
                "gcc",
                "--out",
                "o",
            ],
            Err("go with --debootstrap"),
        );
        check(&["check-config", "a", "b"], Err("needs one FILE"));
        check(
            &["tenants", "--config", "w.toml"],
            Ok(Command::Tenants { config: config() }),
        );
        check(
            &["tenants", "--config", "w.toml", "a"],
            Err("unexpected argument"),
        );
        check(
            &[
                "delete-tenant",
                "--config",
                "w.toml",
                "acme",
                "--namespace",
                "group-eng",
            ],
            Ok(Command::DeleteTenant {
                config: config(),
                tenant: "acme".into(),
                namespaces: vec!["group-eng".into()],
            }),
        );
        check(
            &["delete-tenant", "--config", "w.toml"],
            Err("needs a TENANT"),
        );
        check(
            &["delete-tenant", "--config", "w.toml", "a", "b"],
            Err("unexpected argument"),
        );
        check(
            &["--config", "w.toml", "--namespace", "x"],
            Err("unexpected argument"),
        );
        check(
            &["status", "--config", "w.toml", "x"],
            Err("unexpected argument"),
        );
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

    /// `[vm.jailer]` reaches the runtime as written, jails default to the worker's state
    /// directory, and an absent cgroup version leaves the host's.
    #[test]
    fn jailer_settings_become_the_runtime_config() {
        let settings = JailerSettings {
            binary: PathBuf::from("/usr/bin/jailer"),
            chroot_base_dir: None,
            uid_base: 500_000,
            uid_count: 10,
            cgroup_version: Some(2),
            parent_cgroup: "farm/fc".into(),
            memory_overhead_mib: 64,
            pids_max: 99,
            netns: Some(PathBuf::from("/run/netns/nothing")),
        };
        let jailer = jailer_config(&settings, Path::new("/var/lib/w/jail"));
        assert_eq!(jailer.jailer, Path::new("/usr/bin/jailer"));
        assert_eq!(jailer.chroot_base, Path::new("/var/lib/w/jail"));
        assert_eq!((jailer.uid_base, jailer.uid_count), (500_000, 10));
        assert_eq!(jailer.cgroup_version, firecracker::CgroupVersion::V2);
        assert_eq!(jailer.parent_cgroup, "farm/fc");
        assert_eq!((jailer.memory_overhead_mib, jailer.pids_max), (64, 99));
        assert_eq!(
            jailer.netns.as_deref(),
            Some(Path::new("/run/netns/nothing"))
        );
        let elsewhere = JailerSettings {
            chroot_base_dir: Some(PathBuf::from("/srv/jail")),
            cgroup_version: None,
            ..settings
        };
        let jailer = jailer_config(&elsewhere, Path::new("/var/lib/w/jail"));
        assert_eq!(jailer.chroot_base, Path::new("/srv/jail"));
        assert_eq!(jailer.cgroup_version, firecracker::CgroupVersion::detect());
    }
}
