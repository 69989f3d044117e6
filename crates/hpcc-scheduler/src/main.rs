//! `hpcc-scheduler`: the route-only scheduler.
//!
//!     hpcc-scheduler --config scheduler.toml    serve
//!     hpcc-scheduler keygen routing-key.pem      make a routing key; prints its public half
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use hpcc_auth::RoutingKey;
use hpcc_core::config::SchedulerConfig;
use hpcc_scheduler::service::SchedulerService;
use hpcc_scheduler::Scheduler;

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
        ["--config", path] => serve(Path::new(path)),
        ["keygen", path] => keygen(Path::new(path)),
        _ => {
            eprintln!("usage: hpcc-scheduler --config FILE | hpcc-scheduler keygen KEYFILE");
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

fn read(path: &PathBuf, what: &str) -> Result<String> {
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
    let scheduler = Arc::new(Scheduler::new(&config, key, secret.into_bytes()));
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
        server
            .add_service(SchedulerService::server(scheduler))
            .serve_with_incoming_shutdown(tokio_stream_from(listener), async {
                let _ = shutdown_signal().await;
            })
            .await
            .context("serving")
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
