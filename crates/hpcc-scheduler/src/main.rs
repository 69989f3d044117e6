//! `hpcc-scheduler`: the route-only scheduler.
//!
//!     hpcc-scheduler --config scheduler.toml       serve
//!     hpcc-scheduler keygen routing-key.pem         make a routing key; prints its public half
//!     hpcc-scheduler keygen --public routing-key.pem
//!                                                   print an existing key's public half
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use hpcc_auth::RoutingKey;
use hpcc_core::cli::{pem_blocks, Checklist};
use hpcc_core::config::SchedulerConfig;
use hpcc_scheduler::service::SchedulerService;
use hpcc_scheduler::Scheduler;

const USAGE: &str = "\
usage: hpcc-scheduler --config FILE               serve (the file: docs and README)
       hpcc-scheduler keygen KEYFILE              make a routing key (PKCS#8 PEM, mode 0600,
                                                  never overwritten); prints its public half,
                                                  the workers' routing_public_key
       hpcc-scheduler keygen --public KEYFILE     print an existing key's public half
       hpcc-scheduler check-config FILE           check FILE and what it points at: the
                                                  routing key, the worker secret, TLS files,
                                                  each tenant's JWKS (fetched); exit 1 if any
                                                  is wrong
       hpcc-scheduler --help | --version";

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if hpcc_core::cli::help_or_version("hpcc-scheduler", USAGE, &args) {
        return ExitCode::SUCCESS;
    }
    // A server logs what it does at `info` (and warnings: a job refused for a broken image, a
    // store gone) unless `HPCC_LOG` says otherwise.
    hpcc_core::logging::init_stderr("info");
    let words: Option<Vec<&str>> = args.iter().map(|arg| arg.to_str()).collect();
    let result = match words.as_deref().unwrap_or_default() {
        ["--config", path] => serve(Path::new(path)),
        ["keygen", "--public", path] => public_half(Path::new(path)),
        ["check-config", path] => check_config(Path::new(path)),
        ["keygen", path] => keygen(Path::new(path)),
        _ => {
            eprintln!("hpcc-scheduler: unexpected arguments {args:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hpcc-scheduler: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(path: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = RoutingKey::generate()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(key.to_pem().as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", key.public_base64());
    Ok(())
}

/// Checks a scheduler config and everything it points at, printing one line per item and
/// every problem found (not only the first); an error when any was found.
fn check_config(path: &Path) -> Result<()> {
    let text = read(path, "config file")?;
    let config = SchedulerConfig::parse(path, &text)?;
    println!(
        "{}: parsed, {} tenant(s)",
        path.display(),
        config.tenants.len()
    );
    let mut list = Checklist::new();
    let mut check = |what: String, outcome: Result<String>| {
        list.check(what, outcome.map_err(|error| format!("{error:#}")));
    };
    check(
        format!("routing_key {}", config.routing_key.display()),
        read(&config.routing_key, "routing key").and_then(|text| {
            let key = RoutingKey::from_pem(&text)?;
            Ok(format!("public half {}", key.public_base64()))
        }),
    );
    check(
        format!("worker_secret_file {}", config.worker_secret_file.display()),
        read(&config.worker_secret_file, "worker secret file").and_then(|text| {
            if text.trim().is_empty() {
                bail!("empty");
            }
            Ok("not empty".into())
        }),
    );
    match &config.tls {
        Some(tls) => {
            check(
                format!("tls.cert {}", tls.cert.display()),
                pem_blocks(&tls.cert, "certificate", |tag| tag == "CERTIFICATE")
                    .map_err(anyhow::Error::msg),
            );
            check(
                format!("tls.key {}", tls.key.display()),
                pem_blocks(&tls.key, "certificate key", |tag| {
                    tag.ends_with("PRIVATE KEY")
                })
                .map_err(anyhow::Error::msg),
            );
        }
        None => println!("ok: insecure_plaintext: no TLS (loopback and tests only)"),
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    for tenant in &config.tenants {
        let jwks = hpcc_scheduler::jwks::JwksCache::with_ca(
            tenant.jwks_uri.clone(),
            tenant.idp_ca.as_deref(),
        );
        check(
            format!("tenant {:?} jwks_uri {}", tenant.id, tenant.jwks_uri),
            jwks.map_err(anyhow::Error::from).and_then(|jwks| {
                runtime
                    .block_on(jwks.check())
                    .map(|keys| format!("{keys} key(s)"))
                    .map_err(anyhow::Error::from)
            }),
        );
    }
    list.finish().map_err(anyhow::Error::msg)
}

/// Prints the public half of the key in `path`, as `keygen` did when it made it.
fn public_half(path: &Path) -> Result<()> {
    let key = RoutingKey::from_pem(&read(path, "routing key")?)
        .with_context(|| format!("reading the routing key {}", path.display()))?;
    println!("{}", key.public_base64());
    Ok(())
}

fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn serve(config_path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let config = SchedulerConfig::parse(config_path, &text)?;
    let key = RoutingKey::from_pem(&read(&config.routing_key, "routing key")?)
        .with_context(|| format!("routing key {}", config.routing_key.display()))?;
    let secret = read(&config.worker_secret_file, "worker secret file")?;
    if secret.trim().is_empty() {
        bail!(
            "the worker secret file {} is empty",
            config.worker_secret_file.display()
        );
    }
    let scheduler = Arc::new(Scheduler::new(&config, key, secret.into_bytes())?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let address = listener.local_addr()?;
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
            "hpcc-scheduler {} listening on {address} ({})",
            env!("CARGO_PKG_VERSION"),
            if config.tls.is_some() {
                "TLS"
            } else {
                "plaintext"
            }
        );
        let metrics_listener = tokio::net::TcpListener::bind(&config.metrics_listen)
            .await
            .with_context(|| format!("metrics_listen {}", config.metrics_listen))?;
        eprintln!(
            "hpcc-scheduler metrics on http://{}/metrics",
            metrics_listener.local_addr()?
        );
        let refreshed = Arc::clone(&scheduler);
        let metrics = hpcc_metrics::serve(
            metrics_listener,
            Arc::new(scheduler.metrics_registry()),
            Arc::new(move || refreshed.refresh_metrics(hpcc_scheduler::service::now())),
        );
        let served = server
            .add_service(SchedulerService::server(scheduler))
            .serve_with_incoming_shutdown(tokio_stream_from(listener), async {
                let _ = shutdown_signal().await;
            });
        tokio::select! {
            served = served => served.context("serving"),
            () = metrics => bail!("the metrics endpoint stopped"),
        }
    })
}

fn tokio_stream_from(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
}

async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
