//! The daemon's Prometheus endpoint, opt-in (`daemon.metrics_listen`, loopback only): the
//! statistics counters the daemon keeps since it started (the names `hpcc stats` shows, see
//! `hpcc_cache::stats::names`), as labelled counters, brought up to date at each scrape.
//!
//! - `hpcc_daemon_hits_total{kind}`: `direct`, `preprocessor`;
//! - `hpcc_daemon_misses_total`, `hpcc_daemon_corrupt_entries_total`;
//! - `hpcc_daemon_uncacheable_total{reason}`, `hpcc_daemon_errors_total{kind}`;
//! - `hpcc_daemon_remote_compiles_total{result}`: `compiled`, `worker_hit`, `fallback`,
//!   `ineligible`;
//! - `hpcc_daemon_tier_events_total{tier, event}`: each remote store's counters;
//! - `hpcc_daemon_events_total{name}`: any other counter.
//!
//! Every label value is a name from the code or a configured store's name: bounded. The
//! endpoint is served by a thread of its own with a one-thread tokio runtime, so a scrape never
//! takes a compile's thread.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use hpcc_cache::stats::names;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// A remote tier's event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierEvent {
    tier: String,
    event: String,
}

/// The daemon's counter families.
#[derive(Debug, Default, Clone)]
pub struct DaemonMetrics {
    hits: Family<Kind, Counter>,
    misses: Counter,
    corrupt: Counter,
    uncacheable: Family<Reason, Counter>,
    errors: Family<Kind, Counter>,
    remote_compiles: Family<Outcome, Counter>,
    tiers: Family<TierEvent, Counter>,
    other: Family<Name, Counter>,
}

macro_rules! label_set {
    ($name:ident, $field:ident) => {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct $name {
            $field: String,
        }
    };
}

label_set!(Kind, kind);
label_set!(Reason, reason);
label_set!(Outcome, result);
label_set!(Name, name);

impl DaemonMetrics {
    /// A registry holding every family.
    pub fn registry(&self) -> hpcc_metrics::Registry {
        let mut registry = hpcc_metrics::Registry::default();
        registry.register("hpcc_daemon_hits", "Cache hits by kind", self.hits.clone());
        registry.register("hpcc_daemon_misses", "Cache misses", self.misses.clone());
        registry.register(
            "hpcc_daemon_corrupt_entries",
            "Cache entries that failed their checksum (served as misses)",
            self.corrupt.clone(),
        );
        registry.register(
            "hpcc_daemon_uncacheable",
            "Compiles that cannot be cached, by reason",
            self.uncacheable.clone(),
        );
        registry.register(
            "hpcc_daemon_errors",
            "Errors that fell back to the compiler, by kind",
            self.errors.clone(),
        );
        registry.register(
            "hpcc_daemon_remote_compiles",
            "Misses sent to the farm, by result",
            self.remote_compiles.clone(),
        );
        registry.register(
            "hpcc_daemon_tier_events",
            "Remote store events by store and event",
            self.tiers.clone(),
        );
        registry.register(
            "hpcc_daemon_events",
            "Other statistics counters",
            self.other.clone(),
        );
        registry
    }

    /// Brings every counter up to `totals` (counts since the daemon started).
    pub fn update(&self, totals: &BTreeMap<String, u64>) {
        for (name, total) in totals {
            let counter = self.counter(name);
            let seen = counter.get();
            if *total > seen {
                counter.inc_by(total - seen);
            }
        }
    }

    /// The counter a statistics name maps to.
    fn counter(&self, name: &str) -> Counter {
        let text = |value: &str| value.to_owned();
        if name == names::DIRECT_HIT {
            return self
                .hits
                .get_or_create(&Kind {
                    kind: text("direct"),
                })
                .clone();
        }
        if name == names::PREPROCESSOR_HIT {
            return self
                .hits
                .get_or_create(&Kind {
                    kind: text("preprocessor"),
                })
                .clone();
        }
        if name == names::MISS {
            return self.misses.clone();
        }
        if name == names::CORRUPT {
            return self.corrupt.clone();
        }
        let remote = [
            (names::REMOTE_COMPILED, "compiled"),
            (names::REMOTE_WORKER_HIT, "worker_hit"),
            (names::REMOTE_FALLBACK, "fallback"),
            (names::REMOTE_INELIGIBLE, "ineligible"),
        ];
        if let Some((_, result)) = remote.iter().find(|(counter, _)| *counter == name) {
            return self
                .remote_compiles
                .get_or_create(&Outcome {
                    result: text(result),
                })
                .clone();
        }
        if let Some(reason) = name
            .strip_prefix(names::UNCACHEABLE)
            .and_then(|rest| rest.strip_prefix('.'))
        {
            return self
                .uncacheable
                .get_or_create(&Reason {
                    reason: text(reason),
                })
                .clone();
        }
        if let Some(kind) = name
            .strip_prefix(names::ERRORS)
            .and_then(|rest| rest.strip_prefix('.'))
        {
            return self
                .errors
                .get_or_create(&Kind { kind: text(kind) })
                .clone();
        }
        if let Some((tier, event)) = name
            .strip_prefix("remote.")
            .and_then(|rest| rest.rsplit_once('.'))
        {
            return self
                .tiers
                .get_or_create(&TierEvent {
                    tier: text(tier),
                    event: text(event),
                })
                .clone();
        }
        self.other.get_or_create(&Name { name: text(name) }).clone()
    }
}

/// The endpoint's address from `daemon.metrics_listen`: a loopback address, or an error
/// naming the key (the counters describe a user's builds: not for the network).
pub fn listen_address(listen: &str) -> Result<SocketAddr> {
    let address: SocketAddr = listen
        .parse()
        .with_context(|| format!("daemon.metrics_listen {listen:?}: expected 127.0.0.1:PORT"))?;
    if !address.ip().is_loopback() {
        bail!("daemon.metrics_listen {listen:?}: only a loopback address is allowed");
    }
    Ok(address)
}

/// Binds `address` and serves `metrics` there from a thread of its own; `totals` is read
/// (under its lock) at every scrape.
pub fn start(
    address: SocketAddr,
    metrics: DaemonMetrics,
    totals: Arc<Mutex<BTreeMap<String, u64>>>,
) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("daemon.metrics_listen {address}"))?;
    listener
        .set_nonblocking(true)
        .context("daemon.metrics_listen")?;
    let bound = listener.local_addr().context("daemon.metrics_listen")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the metrics runtime")?;
    let registry = Arc::new(metrics.registry());
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::warn!(%error, "the metrics endpoint");
                        return;
                    }
                };
                let refresh = move || {
                    let totals = totals.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    metrics.update(&totals);
                };
                hpcc_metrics::serve(listener, registry, Arc::new(refresh)).await;
            });
        })
        .context("starting the metrics thread")?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_names_become_labelled_counters() {
        let metrics = DaemonMetrics::default();
        let mut totals = BTreeMap::new();
        for (name, count) in [
            ("direct_hits", 3),
            ("misses", 2),
            ("uncacheable.preprocessing_only", 1),
            ("errors.store", 1),
            ("remote_compile_fallbacks", 4),
            ("remote.redis.timeouts", 5),
            ("something_new", 6),
        ] {
            totals.insert(name.to_owned(), count);
        }
        metrics.update(&totals);
        // Counting again from the same totals adds nothing; a larger total adds the rest.
        metrics.update(&totals);
        totals.insert("direct_hits".into(), 5);
        metrics.update(&totals);
        let text = hpcc_metrics::render(&metrics.registry(), &|| {});
        for line in [
            "hpcc_daemon_hits_total{kind=\"direct\"} 5",
            "hpcc_daemon_misses_total 2",
            "hpcc_daemon_uncacheable_total{reason=\"preprocessing_only\"} 1",
            "hpcc_daemon_errors_total{kind=\"store\"} 1",
            "hpcc_daemon_remote_compiles_total{result=\"fallback\"} 4",
            "hpcc_daemon_tier_events_total{tier=\"redis\",event=\"timeouts\"} 5",
            "hpcc_daemon_events_total{name=\"something_new\"} 6",
        ] {
            assert!(text.contains(line), "no {line:?} in {text}");
        }
    }

    #[test]
    fn only_loopback_addresses_are_listened_on() {
        assert!(listen_address("127.0.0.1:9466").is_ok());
        assert!(listen_address("[::1]:9466").is_ok());
        assert!(listen_address("0.0.0.0:9466").is_err());
        assert!(listen_address("localhost:9466").is_err());
    }
}
