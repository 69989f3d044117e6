//! [`Watermark`]: size-limited eviction for stores that do not evict by themselves (S3).
//!
//! Listing a bucket costs one request per thousand objects, far too much to do per write. The
//! watermark keeps an estimate instead: the size found by the last scan plus the bytes this
//! daemon wrote since. The first write after start-up scans once to learn the size (other
//! machines write to the same bucket); after that a scan happens only when the estimate
//! passes the limit by 10%. A scan deletes the oldest-written objects until the store holds
//! at most 90% of the limit (S3 keeps no access times, so "oldest" means written first), and
//! resets the estimate to what it found.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{Listed, RemoteError, Store, TierStats};

/// The objects to delete from a store holding `objects` to bring it to 90% of `max_size`,
/// oldest first (objects without a time first: nothing says they are recent); none if it is
/// within `max_size`.
pub fn victims(mut objects: Vec<Listed>, max_size: u64) -> Vec<Listed> {
    let mut total: u64 = objects.iter().map(|object| object.size).sum();
    if total <= max_size {
        return Vec::new();
    }
    let goal = max_size / 10 * 9;
    objects.sort_by(|a, b| {
        a.modified
            .cmp(&b.modified)
            .then_with(|| a.path.cmp(&b.path))
    });
    let mut chosen = Vec::new();
    for object in objects {
        if total <= goal {
            break;
        }
        total = total.saturating_sub(object.size);
        chosen.push(object);
    }
    chosen
}

/// The size limit of one store and the estimate that gates scans.
#[derive(Debug)]
pub struct Watermark {
    max_size: u64,
    estimate: AtomicU64,
    known: AtomicBool,
    scanning: AtomicBool,
    scans: AtomicU64,
}

impl Watermark {
    /// A limit of `max_size` bytes, size not yet known.
    pub fn new(max_size: u64) -> Watermark {
        Watermark {
            max_size,
            estimate: AtomicU64::new(0),
            known: AtomicBool::new(false),
            scanning: AtomicBool::new(false),
            scans: AtomicU64::new(0),
        }
    }

    /// Counts `bytes` written; `true` if a scan should start now (and none is running).
    pub fn wrote(&self, bytes: u64) -> bool {
        let estimate = self.estimate.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let over = estimate > self.max_size.saturating_add(self.max_size / 10);
        let wanted = over || !self.known.load(Ordering::Relaxed);
        wanted
            && self
                .scanning
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Scans done so far.
    pub fn scans(&self) -> u64 {
        self.scans.load(Ordering::Relaxed)
    }

    /// The current estimate in bytes.
    pub fn estimate(&self) -> u64 {
        self.estimate.load(Ordering::Relaxed)
    }

    /// Lists `store` and deletes its oldest objects down to 90% of the limit if it is over.
    /// Call only after [`Watermark::wrote`] returned `true`.
    pub async fn scan(&self, store: &Arc<dyn Store>, stats: &TierStats) -> Result<(), RemoteError> {
        let result = self.scan_inner(store, stats).await;
        self.scans.fetch_add(1, Ordering::Relaxed);
        self.scanning.store(false, Ordering::Release);
        result
    }

    async fn scan_inner(
        &self,
        store: &Arc<dyn Store>,
        stats: &TierStats,
    ) -> Result<(), RemoteError> {
        let objects: Vec<Listed> = store.list().await?;
        let mut total: u64 = objects.iter().map(|object| object.size).sum();
        for object in victims(objects, self.max_size) {
            match store.delete_path(&object.path).await {
                Ok(()) => {
                    total = total.saturating_sub(object.size);
                    TierStats::bump(&stats.evicted);
                }
                Err(error) => {
                    tracing::warn!(error = %error, "eviction stopped");
                    break;
                }
            }
        }
        self.estimate.store(total, Ordering::Relaxed);
        self.known.store(true, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn object(path: &str, size: u64, age_secs: Option<u64>) -> Listed {
        Listed {
            path: path.into(),
            size,
            modified: age_secs.map(|age| SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 - age)),
        }
    }

    fn check(objects: Vec<Listed>, max_size: u64, expected: &[&str]) {
        let chosen: Vec<String> = victims(objects, max_size)
            .into_iter()
            .map(|object| object.path)
            .collect();
        assert_eq!(chosen, expected);
    }

    #[test]
    fn oldest_go_first_down_to_ninety_percent() {
        let objects = || {
            vec![
                object("new", 30, Some(1)),
                object("old", 30, Some(100)),
                object("mid", 30, Some(50)),
                object("undated", 30, None),
            ]
        };
        check(objects(), 120, &[]);
        check(objects(), 100, &["undated"]);
        check(objects(), 80, &["undated", "old"]);
        check(objects(), 30, &["undated", "old", "mid", "new"]);
    }
}
