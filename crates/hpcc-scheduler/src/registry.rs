//! The worker registry and placement: the least loaded live worker that has the image warm,
//! else the least loaded live worker. Workers queue compiles past their capacity, so a worker
//! is chosen until its load (running and queued) reaches [`OVERCOMMIT`] times its capacity;
//! one without a heartbeat for the expiry is not routed to (and forgotten). Before that, a
//! worker that has missed a few heartbeats (killed, partitioned, or stalled) is *stale*: it is
//! chosen only when no worker heard from recently can take the job, so a dead worker does not
//! draw routes (each one a client's fallback) for the whole expiry while others are healthy.
//!
//! Placement is fair between tenants: a worker full because of one tenant's burst still
//! takes another tenant's job while that tenant holds less than its share of the worker
//! (the full load divided by the tenants loading it), and the worker's own queue
//! (`hpcc_worker::fair`) serves it before the burst. So a flood costs the other tenants at
//! most a share of the worker, not a place at the back of the queue.

use std::collections::BTreeMap;
use std::time::Duration;

use hpcc_proto::scheduler::{HeartbeatRequest, RegisterRequest};

/// How many times its capacity a worker may be loaded with (the rest waits in its queue).
pub const OVERCOMMIT: u32 = 8;

/// What the scheduler knows of a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Its id.
    pub id: String,
    /// `host:port`.
    pub address: String,
    /// The CA of its certificate.
    pub tls_ca_pem: Vec<u8>,
    /// The name in its certificate.
    pub tls_server_name: String,
    /// Compiles at once.
    pub capacity: u32,
    /// Compiles running (last heartbeat, plus routes handed out since).
    pub load: u32,
    /// Each tenant's jobs on it, as its last heartbeat said plus routes given since.
    pub tenant_load: BTreeMap<String, u32>,
    /// Images it has warm.
    pub warm_images: Vec<String>,
    /// The isolation runtime it reports (`qemu`, `firecracker`, `sandbox`; empty from
    /// workers that predate the field).
    pub runtime: String,
    /// Last heard from, Unix seconds.
    pub seen: u64,
}

/// Registered workers, by id (ordered, so ties are broken the same way every time).
#[derive(Debug)]
pub struct Registry {
    workers: BTreeMap<String, Worker>,
    expiry: Duration,
    stale_after: Duration,
}

impl Registry {
    /// An empty registry; workers silent for `expiry` are dropped, and those silent for a
    /// third of it are stale (see [`Registry::with_stale_after`]).
    pub fn new(expiry: Duration) -> Registry {
        Registry {
            workers: BTreeMap::new(),
            expiry,
            stale_after: expiry / 3,
        }
    }

    /// Workers silent for longer than `stale_after` (the scheduler uses three heartbeat
    /// intervals) are chosen only when no other worker can take a job.
    pub fn with_stale_after(mut self, stale_after: Duration) -> Registry {
        self.stale_after = stale_after;
        self
    }

    /// Adds or replaces a worker.
    pub fn register(&mut self, request: RegisterRequest, now: u64) {
        self.workers.insert(
            request.worker_id.clone(),
            Worker {
                id: request.worker_id,
                address: request.address,
                tls_ca_pem: request.tls_ca_pem,
                tls_server_name: request.tls_server_name,
                capacity: request.capacity,
                load: 0,
                tenant_load: BTreeMap::new(),
                warm_images: request.warm_images,
                runtime: request.runtime,
                seen: now,
            },
        );
    }

    /// Updates a worker's load; `false` if it is unknown.
    pub fn heartbeat(&mut self, request: HeartbeatRequest, now: u64) -> bool {
        match self.workers.get_mut(&request.worker_id) {
            Some(worker) => {
                worker.load = request.load;
                worker.tenant_load = request
                    .tenants
                    .into_iter()
                    .filter(|load| load.jobs > 0)
                    .map(|load| (load.tenant_id, load.jobs))
                    .collect();
                if request.capacity > 0 {
                    worker.capacity = request.capacity;
                }
                worker.warm_images = request.warm_images;
                if !request.runtime.is_empty() {
                    worker.runtime = request.runtime;
                }
                worker.seen = now;
                true
            }
            None => false,
        }
    }

    /// How many registered workers are live and how many stale at `now` (expired ones are
    /// not counted: the next placement drops them).
    pub fn counts(&self, now: u64) -> (usize, usize) {
        let (expiry, stale_after) = (self.expiry.as_secs(), self.stale_after.as_secs().max(1));
        let silent = |worker: &Worker| now.saturating_sub(worker.seen);
        let live = self
            .workers
            .values()
            .filter(|worker| silent(worker) <= stale_after)
            .count();
        let stale = self
            .workers
            .values()
            .filter(|worker| (stale_after + 1..=expiry).contains(&silent(worker)))
            .count();
        (live, stale)
    }

    /// Chooses a worker for `image` at `now`, none of `avoid` (workers the client could not
    /// reach), and counts the route against its load (until the next heartbeat reports the
    /// real figure).
    pub fn place(
        &mut self,
        image: &str,
        tenant: &str,
        avoid: &[String],
        now: u64,
    ) -> Option<Worker> {
        let expiry = self.expiry.as_secs();
        self.workers
            .retain(|_, worker| now.saturating_sub(worker.seen) <= expiry);
        let score = |worker: &Worker| {
            // Load as a fraction of capacity, compared without floats: load/capacity.
            (u64::from(worker.load) * 1_000_000) / u64::from(worker.capacity.max(1))
        };
        // In order: a live worker with room; a live one where the tenant is under its share;
        // then the same among stale ones. Never one the client could not reach.
        let pick = |fits: &dyn Fn(&Worker) -> bool| {
            let candidates = self
                .workers
                .values()
                .filter(|worker| !avoid.contains(&worker.id) && fits(worker));
            candidates
                .clone()
                .filter(|worker| worker.warm_images.iter().any(|warm| warm == image))
                .min_by_key(|worker| score(worker))
                .or_else(|| candidates.min_by_key(|worker| score(worker)))
                .map(|worker| worker.id.clone())
        };
        let stale_after = self.stale_after.as_secs().max(1);
        let fresh = |worker: &Worker| now.saturating_sub(worker.seen) <= stale_after;
        let room = |worker: &Worker| worker.load < worker.capacity.saturating_mul(OVERCOMMIT);
        let chosen = pick(&|worker| fresh(worker) && room(worker))
            .or_else(|| pick(&|worker| fresh(worker) && under_share(worker, tenant)))
            .or_else(|| pick(&room))
            .or_else(|| pick(&|worker| under_share(worker, tenant)))?;
        let worker = self.workers.get_mut(&chosen)?;
        worker.load += 1;
        *worker.tenant_load.entry(tenant.to_owned()).or_default() += 1;
        Some(worker.clone())
    }
}

/// Whether `tenant` holds less than its share of a full `worker`: the overcommitted capacity
/// divided among the tenants loading it (load no heartbeat attributed counts as one more).
fn under_share(worker: &Worker, tenant: &str) -> bool {
    let full = worker.capacity.saturating_mul(OVERCOMMIT);
    let own = worker.tenant_load.get(tenant).copied().unwrap_or(0);
    let attributed: u32 = worker.tenant_load.values().sum();
    let tenants =
        worker.tenant_load.len() + usize::from(own == 0) + usize::from(worker.load > attributed);
    let share = full / u32::try_from(tenants.max(1)).unwrap_or(u32::MAX);
    own < share.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(registry: &mut Registry, id: &str, capacity: u32, warm: &[&str], now: u64) {
        registry.register(
            RegisterRequest {
                worker_id: id.into(),
                address: format!("{id}:1"),
                capacity,
                warm_images: warm.iter().map(|image| (*image).to_owned()).collect(),
                ..RegisterRequest::default()
            },
            now,
        );
    }

    fn load(registry: &mut Registry, id: &str, load: u32, warm: &[&str], now: u64) {
        assert!(registry.heartbeat(
            HeartbeatRequest {
                worker_id: id.into(),
                load,
                capacity: 0,
                warm_images: warm.iter().map(|image| (*image).to_owned()).collect(),
                ..HeartbeatRequest::default()
            },
            now
        ));
    }

    #[test]
    fn workers_are_counted_live_then_stale_then_not_at_all() {
        let mut registry =
            Registry::new(Duration::from_secs(10)).with_stale_after(Duration::from_secs(3));
        register(&mut registry, "a", 1, &[], 100);
        register(&mut registry, "b", 1, &[], 96);
        assert_eq!(registry.counts(100), (1, 1));
        assert_eq!(registry.counts(103), (1, 1));
        assert_eq!(registry.counts(104), (0, 2));
        assert_eq!(registry.counts(107), (0, 1));
        assert_eq!(registry.counts(111), (0, 0));
    }

    #[test]
    fn the_runtime_a_worker_reports_is_kept() {
        let mut registry = Registry::new(Duration::from_secs(10));
        registry.register(
            RegisterRequest {
                worker_id: "w".into(),
                capacity: 1,
                runtime: "sandbox".into(),
                ..RegisterRequest::default()
            },
            0,
        );
        let placed = registry.place("i", "t", &[], 1).expect("a worker");
        assert_eq!(placed.runtime, "sandbox");
        assert!(registry.heartbeat(
            HeartbeatRequest {
                worker_id: "w".into(),
                runtime: "qemu".into(),
                ..HeartbeatRequest::default()
            },
            2
        ));
        assert_eq!(
            registry.place("i", "t", &[], 3).expect("a worker").runtime,
            "qemu"
        );
    }

    #[test]
    fn warm_least_loaded_first_then_least_loaded() {
        let mut registry = Registry::new(Duration::from_secs(10));
        register(&mut registry, "cold", 1, &[], 0);
        register(&mut registry, "warm-busy", 1, &["img"], 0);
        register(&mut registry, "warm-idle", 1, &["img"], 0);
        load(&mut registry, "warm-busy", OVERCOMMIT - 2, &["img"], 0);
        let check = |registry: &mut Registry, image: &str, expected: &str| {
            assert_eq!(
                registry
                    .place(image, "t", &[], 1)
                    .map(|worker| worker.id)
                    .as_deref(),
                Some(expected)
            );
        };
        // The idle warm worker until it is as loaded as the busy one.
        for _ in 0..OVERCOMMIT - 2 {
            check(&mut registry, "img", "warm-idle");
        }
        // Equal: ties go by id, alternating as each takes one.
        check(&mut registry, "img", "warm-busy");
        check(&mut registry, "img", "warm-idle");
        check(&mut registry, "img", "warm-busy");
        check(&mut registry, "img", "warm-idle");
        // Both warm ones are full now: the cold one takes it.
        check(&mut registry, "img", "cold");
        // Another image: the least loaded worker, warm or not.
        check(&mut registry, "other", "cold");
    }

    #[test]
    fn full_and_silent_workers_are_not_chosen() {
        let mut registry = Registry::new(Duration::from_secs(10));
        register(&mut registry, "w", 1, &[], 0);
        for _ in 0..OVERCOMMIT {
            assert!(registry.place("img", "t", &[], 1).is_some());
        }
        assert!(
            registry.place("img", "t", &[], 1).is_none(),
            "its queue is full"
        );
        load(&mut registry, "w", 0, &[], 5);
        assert!(
            registry.place("img", "t", &[], 15).is_some(),
            "heard from 10 s ago: still live"
        );
        assert!(
            registry.place("img", "t", &[], 16).is_none(),
            "silent too long"
        );
        assert!(
            !registry.heartbeat(
                HeartbeatRequest {
                    worker_id: "w".into(),
                    ..HeartbeatRequest::default()
                },
                17
            ),
            "forgotten: must register again"
        );
    }

    #[test]
    fn a_worker_full_of_one_tenant_still_takes_another_within_its_share() {
        let mut registry = Registry::new(Duration::from_secs(10));
        register(&mut registry, "w", 1, &["img"], 0);
        let full = OVERCOMMIT;
        assert!(registry.heartbeat(
            HeartbeatRequest {
                worker_id: "w".into(),
                load: full,
                warm_images: vec!["img".into()],
                tenants: vec![hpcc_proto::scheduler::TenantLoad {
                    tenant_id: "flood".into(),
                    jobs: full,
                }],
                ..HeartbeatRequest::default()
            },
            1
        ));
        assert!(
            registry.place("img", "flood", &[], 1).is_none(),
            "the flooding tenant waits"
        );
        // Another tenant gets up to its share: half of the full load, with two tenants.
        for _ in 0..full / 2 {
            assert!(registry.place("img", "quiet", &[], 1).is_some());
        }
        assert!(
            registry.place("img", "quiet", &[], 1).is_none(),
            "past its share"
        );
        assert!(registry.place("img", "flood", &[], 1).is_none());
        // A third tenant's share is a third.
        let third = full / 3;
        for _ in 0..third {
            assert!(registry.place("img", "third", &[], 1).is_some());
        }
        assert!(registry.place("img", "third", &[], 1).is_none());
    }

    #[test]
    fn a_silent_worker_is_routed_to_only_when_no_live_one_can_take_the_job() {
        let mut registry =
            Registry::new(Duration::from_secs(10)).with_stale_after(Duration::from_secs(3));
        register(&mut registry, "dead", 4, &["img"], 100);
        register(&mut registry, "live", 4, &[], 100);
        // Both heard from: the one with the image warm.
        assert_eq!(
            registry.place("img", "a", &[], 101).map(|w| w.id),
            Some("dead".into())
        );
        // "dead" stops answering; "live" keeps beating. Past three seconds, "live" takes every
        // job though it is colder and busier.
        load(&mut registry, "live", 3, &[], 105);
        for _ in 0..4 {
            assert_eq!(
                registry.place("img", "a", &[], 105).map(|w| w.id),
                Some("live".into())
            );
        }
        // Past the expiry it is forgotten.
        load(&mut registry, "live", 3, &[], 111);
        assert_eq!(
            registry.place("img", "b", &[], 111).map(|w| w.id),
            Some("live".into())
        );
        assert!(registry.workers.keys().all(|id| id == "live"));
        // When every worker is stale (the scheduler may be the one cut off), they are still
        // routed to, by the usual order.
        let mut quiet =
            Registry::new(Duration::from_secs(10)).with_stale_after(Duration::from_secs(3));
        register(&mut quiet, "cold", 4, &[], 100);
        register(&mut quiet, "warm", 4, &["img"], 100);
        assert_eq!(
            quiet.place("img", "a", &[], 108).map(|w| w.id),
            Some("warm".into())
        );
    }

    #[test]
    fn workers_the_client_could_not_reach_are_avoided() {
        let mut registry = Registry::new(Duration::from_secs(10));
        register(&mut registry, "gone", 4, &["img"], 100);
        register(&mut registry, "other", 4, &[], 100);
        assert_eq!(
            registry.place("img", "a", &[], 100).map(|w| w.id),
            Some("gone".into())
        );
        let avoid = vec!["gone".to_owned()];
        assert_eq!(
            registry.place("img", "a", &avoid, 100).map(|w| w.id),
            Some("other".into())
        );
        let both = vec!["gone".to_owned(), "other".to_owned()];
        assert_eq!(registry.place("img", "a", &both, 100), None);
    }
}
