//! [`TierStats`]: per-store counters, drained into the daemon's statistics.
//!
//! Counters are atomics so that lookups on many threads never wait on each other; the daemon
//! takes and resets them once a second and adds them to the stats files as
//! `remote.<store>.<counter>`. Read latency is a histogram with fixed bucket bounds
//! ([`LATENCY_BUCKETS_US`]), which adds up across daemons and flushes, so `hpcc stats` can
//! give percentiles of everything ever counted (p50 and p99, as the upper bounds of their
//! buckets).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the read-latency buckets, in microseconds; a last bucket takes the rest.
pub const LATENCY_BUCKETS_US: [u64; 24] = [
    50, 100, 150, 200, 300, 400, 500, 700, 1_000, 1_500, 2_000, 3_000, 5_000, 7_000, 10_000,
    20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000,
];

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        /// Counters of one store.
        #[derive(Debug, Default)]
        pub struct TierStats {
            $(#[doc = $doc] pub $name: AtomicU64,)*
            /// Reads by latency bucket (see [`LATENCY_BUCKETS_US`]); the last is "slower".
            pub latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
        }

        impl TierStats {
            /// Takes every counter, as `(name, value)` pairs of the non-zero ones, and
            /// resets them.
            pub fn drain(&self) -> Vec<(String, u64)> {
                let mut drained = Vec::new();
                $(
                    let value = self.$name.swap(0, Ordering::Relaxed);
                    if value != 0 {
                        drained.push((stringify!($name).to_owned(), value));
                    }
                )*
                for (index, bucket) in self.latency.iter().enumerate() {
                    let value = bucket.swap(0, Ordering::Relaxed);
                    if value != 0 {
                        drained.push((latency_name(index), value));
                    }
                }
                drained
            }
        }
    };
}

counters! {
    hits: "Reads that found a valid object.",
    misses: "Reads that found nothing.",
    errors: "Calls that failed (timeouts included).",
    timeouts: "Calls that ran out of time.",
    corrupt: "Objects that failed their checksum or were cut short; treated as misses.",
    skipped: "Calls not made because the store was in its cooldown.",
    bytes_read: "Bytes of valid objects read.",
    bytes_written: "Bytes of objects written.",
    writes: "Objects written.",
    write_errors: "Writes that failed.",
    dropped: "Writes dropped because the upload queue was full.",
    evicted: "Objects deleted by the size watermark.",
    latency_us_total: "Microseconds spent in reads, for the mean.",
}

/// The stats name of latency bucket `index`: `get_le_<bound>us`, or `get_gt_<last>us`.
pub fn latency_name(index: usize) -> String {
    match LATENCY_BUCKETS_US.get(index) {
        Some(bound) => format!("get_le_{bound}us"),
        None => format!(
            "get_gt_{}us",
            LATENCY_BUCKETS_US[LATENCY_BUCKETS_US.len() - 1]
        ),
    }
}

impl TierStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a read that took `elapsed`.
    pub fn record_read(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let index = LATENCY_BUCKETS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.latency[index].fetch_add(1, Ordering::Relaxed);
        self.latency_us_total.fetch_add(micros, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_takes_and_resets() {
        let stats = TierStats::default();
        TierStats::bump(&stats.hits);
        TierStats::bump(&stats.hits);
        // A bound belongs to its own bucket; one microsecond more is the next one.
        stats.record_read(Duration::from_micros(150));
        stats.record_read(Duration::from_micros(151));
        stats.record_read(Duration::from_secs(60));
        let drained = stats.drain();
        assert!(drained.contains(&("hits".into(), 2)), "{drained:?}");
        assert!(drained.contains(&("get_le_150us".into(), 1)), "{drained:?}");
        assert!(drained.contains(&("get_le_200us".into(), 1)), "{drained:?}");
        assert!(
            drained.contains(&("get_gt_10000000us".into(), 1)),
            "{drained:?}"
        );
        assert!(stats.drain().is_empty());
    }
}
