//! The `tracing` subscriber of hpcc's binaries: an `EnvFilter` read from `HPCC_LOG`, to
//! stderr.

/// Installs the subscriber, filtering with `HPCC_LOG`, or with `default` (an `EnvFilter`
/// directive such as `"warn"`) when that is unset or unreadable. For the binaries' `main`s
/// only: it panics if a subscriber is already installed.
pub fn init_stderr(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HPCC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}
