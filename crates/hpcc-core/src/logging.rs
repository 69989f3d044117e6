//! The `tracing` subscriber of hpcc's binaries: an `EnvFilter` read from `HPCC_LOG`, to
//! stderr, as text, or with `HPCC_LOG_FORMAT=json` as one JSON object per line for a log
//! pipeline: the event's fields, and the fields of every enclosing span (tenant, image, job,
//! session, worker), so one job can be followed across the daemon, scheduler and worker.

/// The variable that picks the format: `json`, or anything else (and unset) for text.
pub const FORMAT_VARIABLE: &str = "HPCC_LOG_FORMAT";

/// Installs the subscriber, filtering with `HPCC_LOG`, or with `default` (an `EnvFilter`
/// directive such as `"warn"`) when that is unset or unreadable, formatting as
/// [`FORMAT_VARIABLE`] says. For the binaries' `main`s only: it panics if a subscriber is
/// already installed.
pub fn init_stderr(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HPCC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_requested(std::env::var(FORMAT_VARIABLE).ok().as_deref()) {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        builder.init();
    }
}

/// Whether the value of [`FORMAT_VARIABLE`] asks for JSON lines.
fn json_requested(value: Option<&str>) -> bool {
    value.is_some_and(|value| value.trim().eq_ignore_ascii_case("json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_asks_for_json() {
        assert!(json_requested(Some("json")));
        assert!(json_requested(Some(" JSON ")));
        assert!(!json_requested(Some("text")));
        assert!(!json_requested(Some("")));
        assert!(!json_requested(None));
    }
}
