//! The worker registry and placement: the least loaded live worker that has the image warm,
//! else the least loaded live worker. Workers queue compiles past their capacity, so a worker
//! is chosen until its load (running and queued) reaches [`OVERCOMMIT`] times its capacity;
//! one without a heartbeat for the expiry is not routed to (and forgotten).

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
    /// Images it has warm.
    pub warm_images: Vec<String>,
    /// Last heard from, Unix seconds.
    pub seen: u64,
}

/// Registered workers, by id (ordered, so ties are broken the same way every time).
#[derive(Debug)]
pub struct Registry {
    workers: BTreeMap<String, Worker>,
    expiry: Duration,
}

impl Registry {
    /// An empty registry; workers silent for `expiry` are dropped.
    pub fn new(expiry: Duration) -> Registry {
        Registry {
            workers: BTreeMap::new(),
            expiry,
        }
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
                warm_images: request.warm_images,
                seen: now,
            },
        );
    }

    /// Updates a worker's load; `false` if it is unknown.
    pub fn heartbeat(&mut self, request: HeartbeatRequest, now: u64) -> bool {
        match self.workers.get_mut(&request.worker_id) {
            Some(worker) => {
                worker.load = request.load;
                if request.capacity > 0 {
                    worker.capacity = request.capacity;
                }
                worker.warm_images = request.warm_images;
                worker.seen = now;
                true
            }
            None => false,
        }
    }

    /// Chooses a worker for `image` at `now` and counts the route against its load (until
    /// the next heartbeat reports the real figure).
    pub fn place(&mut self, image: &str, now: u64) -> Option<Worker> {
        let expiry = self.expiry.as_secs();
        self.workers
            .retain(|_, worker| now.saturating_sub(worker.seen) <= expiry);
        let candidates = self
            .workers
            .values()
            .filter(|worker| worker.load < worker.capacity.saturating_mul(OVERCOMMIT));
        let score = |worker: &Worker| {
            // Load as a fraction of capacity, compared without floats: load/capacity.
            (u64::from(worker.load) * 1_000_000) / u64::from(worker.capacity.max(1))
        };
        let chosen = candidates
            .clone()
            .filter(|worker| worker.warm_images.iter().any(|warm| warm == image))
            .min_by_key(|worker| score(worker))
            .or_else(|| candidates.min_by_key(|worker| score(worker)))?
            .id
            .clone();
        let worker = self.workers.get_mut(&chosen)?;
        worker.load += 1;
        Some(worker.clone())
    }
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
            },
            now
        ));
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
                registry.place(image, 1).map(|worker| worker.id).as_deref(),
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
            assert!(registry.place("img", 1).is_some());
        }
        assert!(registry.place("img", 1).is_none(), "its queue is full");
        load(&mut registry, "w", 0, &[], 5);
        assert!(
            registry.place("img", 15).is_some(),
            "heard from 10 s ago: still live"
        );
        assert!(registry.place("img", 16).is_none(), "silent too long");
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
}
