//! `hpcc-agent`: PID 1 of an hpcc session.
//!
//! Started by the runtime with every setting on its command line (see `config.rs`). As PID 1 it
//! prepares the session and then only reaps (`init.rs`); the server child (`--server`) listens
//! and serves jobs on a current-thread runtime. Run directly (not as PID 1, without
//! `--server`), it serves in-process, which is how it is debugged by hand.
//!
//! Linking: the binary runs inside an image whose libc may differ from the host's, so it is
//! built statically (`RUSTFLAGS='-C target-feature=+crt-static' cargo build -p hpcc-agent
//! --target x86_64-unknown-linux-gnu`). It calls nothing of glibc's that needs `dlopen` (no NSS
//! lookups, no iconv), which is what makes a static glibc build safe. glibc rather than musl:
//! no musl target could be installed on the machines hpcc is built on.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use hpcc_agent::config::{self, AgentConfig, ListenAddr};
use hpcc_agent::listen::{self, UnixSocketListener, VsockPortListener};
use hpcc_agent::serial::SerialPortListener;

const USAGE: &str = "\
usage: hpcc-agent --listen unix:PATH|vsock:PORT|serial:N --work-dir DIR [options] [--server]
  Started by an hpcc runtime as PID 1 of a session, with every setting on its command line;
  not a tool to run by hand. Options: --vm-root DEVICE, --work-size BYTES, --hostname NAME,
  --source-date-epoch SECONDS, --job-timeout-ms MS, --max-output-bytes BYTES, --rlimit-as,
  --rlimit-cpu, --rlimit-nproc, --rlimit-nofile. It must be linked statically (the image's
  libc is not the host's): RUSTFLAGS='-C target-feature=+crt-static' cargo build -p hpcc-agent
  --target x86_64-unknown-linux-gnu.
       hpcc-agent --help | --version";

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if hpcc_core::cli::help_or_version("hpcc-agent", USAGE, &args) {
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HPCC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("hpcc-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<i32> {
    let config = config::parse_args(std::env::args_os().skip(1)).context("command line")?;
    if !config.server && std::process::id() == 1 {
        if let Some(device) = &config.vm_root {
            let serial_ports = match config.listen {
                ListenAddr::Serial(ports) => ports,
                _ => 0,
            };
            hpcc_agent::vm::boot(device, &config.work_dir, serial_ports)
                .context("booting the guest")?;
        }
        hpcc_agent::init::prepare_session(&config).context("preparing the session")?;
        let code = hpcc_agent::init::run_init(&config).context("running as PID 1")?;
        if config.vm_root.is_some() {
            // PID 1 of a guest must not return (the kernel would panic): the session is over,
            // so the machine goes off and the VMM exits.
            hpcc_agent::vm::power_off();
        }
        return Ok(code);
    }
    serve(config)?;
    Ok(0)
}

fn serve(config: AgentConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(async move {
        match &config.listen {
            ListenAddr::Unix(path) => {
                let listener = UnixSocketListener::bind(path)
                    .with_context(|| format!("listening on {}", path.display()))?;
                tracing::info!(socket = %path.display(), "agent listening");
                listen::serve_forever(listener, Arc::new(config))
                    .await
                    .context("accepting connections")
            }
            ListenAddr::Vsock(port) => {
                let port = *port;
                let listener = VsockPortListener::bind(port)
                    .with_context(|| format!("listening on vsock port {port}"))?;
                tracing::info!(port, "agent listening on vsock");
                listen::serve_forever(listener, Arc::new(config))
                    .await
                    .context("accepting connections")
            }
            ListenAddr::Serial(ports) => {
                let nodes = std::path::Path::new(hpcc_agent::serial::NODES_DIR);
                let listener = SerialPortListener::open(nodes, *ports)
                    .with_context(|| format!("opening {ports} virtio-serial ports"))?;
                tracing::info!(ports, "agent listening on virtio-serial ports");
                listen::serve_forever(listener, Arc::new(config))
                    .await
                    .context("accepting connections")
            }
        }
    })
}
