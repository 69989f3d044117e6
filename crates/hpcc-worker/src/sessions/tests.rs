//! The pool's rules against an in-memory runtime that counts what it is asked to do, with
//! the clock passed in (and tokio's paused, for the waits).
// Tests spawn their own tasks directly: no span to keep.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hpcc_runtime::Limits;
use tonic::async_trait;

use super::*;

#[derive(Default)]
struct Counts {
    starts: AtomicUsize,
    stops: AtomicUsize,
    restores: AtomicUsize,
    snapshots: AtomicUsize,
    failed_restores: AtomicUsize,
    next_id: AtomicUsize,
}

impl Counts {
    fn get(&self) -> (usize, usize, usize, usize) {
        (
            self.starts.load(Ordering::SeqCst),
            self.stops.load(Ordering::SeqCst),
            self.restores.load(Ordering::SeqCst),
            self.snapshots.load(Ordering::SeqCst),
        )
    }
}

struct FakeRuntime {
    counts: Arc<Counts>,
    memory: u64,
    identity: Option<String>,
    start_delay: Duration,
    fail_starts: AtomicBool,
    fail_restores: AtomicBool,
    /// The alive flags of every session started, in order.
    sessions: Mutex<Vec<Arc<AtomicBool>>>,
}

impl FakeRuntime {
    fn new() -> FakeRuntime {
        FakeRuntime {
            counts: Arc::default(),
            memory: 0,
            identity: None,
            start_delay: Duration::from_millis(100),
            fail_starts: AtomicBool::new(false),
            fail_restores: AtomicBool::new(false),
            sessions: Mutex::default(),
        }
    }

    fn session(&self, spec: &SessionSpec, restored: bool) -> Box<dyn Session> {
        let alive = Arc::new(AtomicBool::new(true));
        self.sessions.lock().unwrap().push(Arc::clone(&alive));
        let number = self.counts.next_id.fetch_add(1, Ordering::SeqCst);
        Box::new(FakeSession {
            id: format!("{}-{number}", spec.tenant),
            tenant: spec.tenant.clone(),
            image: spec.image_digest.clone(),
            restored,
            counts: Arc::clone(&self.counts),
            alive,
        })
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn start(&self, spec: &SessionSpec) -> Result<Box<dyn Session>, RuntimeError> {
        tokio::time::sleep(self.start_delay).await;
        if self.fail_starts.load(Ordering::SeqCst) {
            return Err(RuntimeError::Unavailable {
                runtime: "fake",
                reason: "told to fail".into(),
            });
        }
        self.counts.starts.fetch_add(1, Ordering::SeqCst);
        Ok(self.session(spec, false))
    }

    fn session_memory(&self) -> u64 {
        self.memory
    }

    fn snapshot_identity(&self) -> Option<String> {
        self.identity.clone()
    }

    async fn restore(
        &self,
        spec: &SessionSpec,
        dir: &Path,
    ) -> Result<Box<dyn Session>, RuntimeError> {
        let memory = std::fs::read_to_string(dir.join("memory")).unwrap_or_default();
        // A restore of another tenant's memory would be the worst bug the store can have.
        assert_eq!(memory, format!("{} {}", spec.tenant, spec.image_digest));
        if self.fail_restores.load(Ordering::SeqCst) {
            self.counts.failed_restores.fetch_add(1, Ordering::SeqCst);
            return Err(RuntimeError::Agent {
                session: "restore".into(),
                message: "told to fail".into(),
            });
        }
        self.counts.restores.fetch_add(1, Ordering::SeqCst);
        Ok(self.session(spec, true))
    }
}

struct FakeSession {
    id: String,
    tenant: String,
    image: String,
    #[allow(dead_code)]
    restored: bool,
    counts: Arc<Counts>,
    alive: Arc<AtomicBool>,
}

#[async_trait]
impl Session for FakeSession {
    fn id(&self) -> &str {
        &self.id
    }

    async fn connect(&self) -> Result<Box<dyn AgentStream>, RuntimeError> {
        Ok(Box::new(tokio::io::duplex(64).0))
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    async fn stop(self: Box<Self>) -> Result<(), RuntimeError> {
        self.alive.store(false, Ordering::SeqCst);
        self.counts.stops.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn snapshot(self: Box<Self>, dir: &Path) -> Result<(), RuntimeError> {
        std::fs::write(
            dir.join("memory"),
            format!("{} {}", self.tenant, self.image),
        )
        .unwrap();
        std::fs::write(dir.join("cpu"), b"registers").unwrap();
        self.counts.snapshots.fetch_add(1, Ordering::SeqCst);
        self.stop().await
    }
}

fn spec(tenant: &str, image: u8) -> SessionSpec {
    SessionSpec {
        tenant: tenant.into(),
        image_digest: format!("sha256:{}", format!("{image:02x}").repeat(32)),
        rootfs: "/nonexistent".into(),
        limits: Limits::default(),
        source_date_epoch: 0,
    }
}

fn config() -> PoolConfig {
    PoolConfig {
        idle_ttl: Duration::from_secs(60),
        max_ttl: Duration::from_secs(600),
        max_sessions: 4,
        max_sessions_per_tenant: 4,
        memory_budget: 0,
        wait: Duration::from_secs(5),
    }
}

fn pool(runtime: FakeRuntime, config: PoolConfig) -> (Arc<SessionPool>, Arc<Counts>) {
    let counts = Arc::clone(&runtime.counts);
    (
        Arc::new(SessionPool::new(Arc::new(runtime), config, None)),
        counts,
    )
}

fn secs(base: Instant, secs: u64) -> Instant {
    base + Duration::from_secs(secs)
}

#[tokio::test(start_paused = true)]
async fn sessions_are_reused_by_their_tenant_and_image_only() {
    let (pool, counts) = pool(FakeRuntime::new(), config());
    let t0 = Instant::now();
    let first = pool.lease(&spec("acme", 1), t0).await.unwrap();
    let id = first.shared.id().to_owned();
    assert!(id.starts_with("fake-acme-"), "{id}");
    pool.release(first, secs(t0, 1)).await;
    let second = pool.lease(&spec("acme", 1), secs(t0, 2)).await.unwrap();
    assert_eq!(
        second.shared.id(),
        id,
        "the warm session serves the next job"
    );
    // Jobs of one pair share the session at once, too.
    let third = pool.lease(&spec("acme", 1), secs(t0, 2)).await.unwrap();
    assert_eq!(third.shared.id(), id);
    let other_tenant = pool.lease(&spec("globex", 1), secs(t0, 3)).await.unwrap();
    assert_ne!(
        other_tenant.shared.id(),
        id,
        "never another tenant's session"
    );
    let other_image = pool.lease(&spec("acme", 2), secs(t0, 3)).await.unwrap();
    assert_ne!(other_image.shared.id(), id);
    assert_ne!(other_image.shared.id(), other_tenant.shared.id());
    assert_eq!(counts.get(), (3, 0, 0, 0));
    assert_eq!(pool.running(), 3);
}

#[tokio::test(start_paused = true)]
async fn racing_jobs_start_one_session_per_pair() {
    let (pool, counts) = pool(FakeRuntime::new(), config());
    let t0 = Instant::now();
    let mut jobs = Vec::new();
    for _ in 0..8 {
        let pool = Arc::clone(&pool);
        jobs.push(tokio::spawn(async move {
            let lease = pool.lease(&spec("acme", 1), t0).await.unwrap();
            lease.shared.id().to_owned()
        }));
    }
    let mut ids = Vec::new();
    for job in jobs {
        ids.push(job.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(counts.get().0, 1);
}

#[tokio::test(start_paused = true)]
async fn racing_jobs_of_many_pairs_stay_within_the_limit() {
    let (pool, counts) = pool(
        FakeRuntime::new(),
        PoolConfig {
            max_sessions: 3,
            wait: Duration::from_millis(500),
            ..config()
        },
    );
    let t0 = Instant::now();
    let mut jobs = Vec::new();
    for image in 0..6u8 {
        let pool = Arc::clone(&pool);
        jobs.push(tokio::spawn(async move {
            // Each holds its session: nothing is idle to evict.
            let lease = pool.lease(&spec("acme", image), t0).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            lease.is_ok()
        }));
    }
    let mut served = 0;
    for job in jobs {
        served += usize::from(job.await.unwrap());
    }
    assert_eq!(served, 3, "three fit, three waited and gave up");
    assert_eq!(counts.get().0, 3);
}

#[tokio::test(start_paused = true)]
async fn the_idle_ttl_stops_a_session() {
    let (pool, counts) = pool(FakeRuntime::new(), config());
    let t0 = Instant::now();
    let lease = pool.lease(&spec("acme", 1), t0).await.unwrap();
    let id = lease.shared.id().to_owned();
    pool.release(lease, secs(t0, 10)).await;
    assert_eq!(pool.reap(secs(t0, 69)).await, 0, "idle 59 s");
    assert_eq!(pool.reap(secs(t0, 70)).await, 1, "idle 60 s");
    assert_eq!(counts.get(), (1, 1, 0, 0));
    assert_eq!(pool.running(), 0);
    let lease = pool.lease(&spec("acme", 1), secs(t0, 71)).await.unwrap();
    assert_ne!(lease.shared.id(), id, "a new session");
    assert_eq!(counts.get().0, 2);
}

#[tokio::test(start_paused = true)]
async fn a_busy_session_is_never_reaped_and_the_max_ttl_stops_it_once_unused() {
    let (pool, counts) = pool(FakeRuntime::new(), config());
    let t0 = Instant::now();
    let old = pool.lease(&spec("acme", 1), t0).await.unwrap();
    let old_id = old.shared.id().to_owned();
    assert_eq!(
        pool.reap(secs(t0, 300)).await,
        0,
        "in use, though idle-looking"
    );
    // Past the maximum TTL the session takes no new job: a new one starts beside it.
    // (Its clock started when its start ended, 0.1 s after the job's `now`.)
    let new = pool.lease(&spec("acme", 1), secs(t0, 601)).await.unwrap();
    assert_ne!(new.shared.id(), old_id);
    assert_eq!(pool.reap(secs(t0, 602)).await, 0, "both in use");
    pool.release(old, secs(t0, 603)).await;
    assert_eq!(
        pool.reap(secs(t0, 604)).await,
        1,
        "the old one, unused and too old"
    );
    assert_eq!(counts.get(), (2, 1, 0, 0));
    // Kept busy, a session still dies at its maximum TTL.
    for second in (610..1_200).step_by(30) {
        let lease = pool
            .lease(&spec("acme", 1), secs(t0, second))
            .await
            .unwrap();
        pool.release(lease, secs(t0, second + 1)).await;
    }
    pool.release(new, secs(t0, 1_200)).await;
    assert_eq!(pool.reap(secs(t0, 1_201)).await, 0, "600 s and 0.1 s old");
    assert_eq!(pool.reap(secs(t0, 1_202)).await, 1);
    assert_eq!(counts.get().1, 2);
}

#[tokio::test(start_paused = true)]
async fn the_worker_limit_makes_jobs_wait_then_gives_up() {
    let (pool, counts) = pool(
        FakeRuntime::new(),
        PoolConfig {
            max_sessions: 2,
            ..config()
        },
    );
    let t0 = Instant::now();
    let _a = pool.lease(&spec("a", 1), t0).await.unwrap();
    let _b = pool.lease(&spec("b", 1), t0).await.unwrap();
    let started = tokio::time::Instant::now();
    let refused = pool.lease(&spec("c", 1), t0).await;
    assert!(
        matches!(refused, Err(PoolError::Busy { ref tenant, running: 2, .. }) if tenant == "c"),
        "{:?}",
        refused.err()
    );
    assert!(started.elapsed() >= Duration::from_secs(5), "it waited");
    assert_eq!(counts.get().0, 2);
    assert_eq!(pool.status().waiting, 0, "the ticket went with the job");
}

#[tokio::test(start_paused = true)]
async fn a_waiting_job_gets_the_room_a_finished_job_frees() {
    let (pool, counts) = pool(
        FakeRuntime::new(),
        PoolConfig {
            max_sessions: 1,
            ..config()
        },
    );
    let t0 = Instant::now();
    let a = pool.lease(&spec("a", 1), t0).await.unwrap();
    let waiting = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move {
            pool.lease(&spec("b", 1), t0)
                .await
                .map(|lease| lease.shared.id().to_owned())
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pool.status().waiting, 1);
    pool.release(a, secs(t0, 1)).await;
    let id = waiting.await.unwrap().unwrap();
    assert!(id.starts_with("fake-b-"), "{id}");
    // a's idle session was evicted for b's.
    assert_eq!(counts.get(), (2, 1, 0, 0));
    assert_eq!(pool.status().per_tenant, vec![("b".to_owned(), 1)]);
}

#[tokio::test(start_paused = true)]
async fn the_per_tenant_limit_holds_while_others_are_served() {
    let (pool, counts) = pool(
        FakeRuntime::new(),
        PoolConfig {
            max_sessions_per_tenant: 2,
            wait: Duration::from_secs(1),
            ..config()
        },
    );
    let t0 = Instant::now();
    let _one = pool.lease(&spec("a", 1), t0).await.unwrap();
    let two = pool.lease(&spec("a", 2), t0).await.unwrap();
    assert!(matches!(
        pool.lease(&spec("a", 3), t0).await,
        Err(PoolError::Busy { .. })
    ));
    let _other = pool.lease(&spec("b", 1), t0).await.unwrap();
    // Once one of its own sessions is idle, the tenant's third image replaces it.
    pool.release(two, secs(t0, 2)).await;
    let three = pool.lease(&spec("a", 3), secs(t0, 3)).await.unwrap();
    assert!(three.shared.id().starts_with("fake-a-"));
    assert_eq!(counts.get(), (4, 1, 0, 0));
    assert_eq!(
        pool.status().per_tenant,
        vec![("a".to_owned(), 2), ("b".to_owned(), 1)]
    );
}

#[tokio::test(start_paused = true)]
async fn memory_accounting_keeps_guests_within_the_budget() {
    let mut runtime = FakeRuntime::new();
    runtime.memory = 1 << 30;
    let (pool, counts) = pool(
        runtime,
        PoolConfig {
            memory_budget: (5 << 30) / 2,
            wait: Duration::from_secs(1),
            ..config()
        },
    );
    let t0 = Instant::now();
    let _a = pool.lease(&spec("a", 1), t0).await.unwrap();
    let _b = pool.lease(&spec("b", 1), t0).await.unwrap();
    assert!(
        matches!(
            pool.lease(&spec("c", 1), t0).await,
            Err(PoolError::Busy { .. })
        ),
        "a third GiB would overcommit 2.5 GiB"
    );
    assert_eq!(counts.get().0, 2);
}

#[tokio::test(start_paused = true)]
async fn room_is_made_by_retiring_the_least_recently_used_idle_session() {
    let (pool, counts) = pool(
        FakeRuntime::new(),
        PoolConfig {
            max_sessions: 2,
            ..config()
        },
    );
    let t0 = Instant::now();
    let a = pool.lease(&spec("a", 1), t0).await.unwrap();
    let b = pool.lease(&spec("b", 1), t0).await.unwrap();
    let b_id = b.shared.id().to_owned();
    pool.release(a, secs(t0, 1)).await;
    pool.release(b, secs(t0, 2)).await;
    let _c = pool.lease(&spec("c", 1), secs(t0, 3)).await.unwrap();
    assert_eq!(counts.get(), (3, 1, 0, 0));
    let b_again = pool.lease(&spec("b", 1), secs(t0, 4)).await.unwrap();
    assert_eq!(
        b_again.shared.id(),
        b_id,
        "a's, used longer ago, was the one retired"
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_one_tenant_does_not_starve_another() {
    let (pool, counts) = pool(
        FakeRuntime::new(),
        PoolConfig {
            max_sessions: 2,
            wait: Duration::from_secs(60),
            ..config()
        },
    );
    let t0 = Instant::now();
    // Tenant a's burst holds both guests and queues a third image first.
    let a1 = pool.lease(&spec("a", 1), t0).await.unwrap();
    let a2 = pool.lease(&spec("a", 2), t0).await.unwrap();
    let spawn = |tenant: &'static str, image: u8| {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move {
            let lease = pool.lease(&spec(tenant, image), t0).await.unwrap();
            let id = lease.shared.id().to_owned();
            tokio::time::sleep(Duration::from_secs(3_600)).await;
            drop(lease);
            id
        })
    };
    let a3 = spawn("a", 3);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let b1 = spawn("b", 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(pool.status().waiting, 2);
    // The first guest freed goes to b, which holds none, though a asked first.
    pool.release(a1, secs(t0, 1)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = pool.status();
    assert_eq!(status.waiting, 1, "{status:?}");
    assert_eq!(
        status.per_tenant,
        vec![("a".to_owned(), 1), ("b".to_owned(), 1)]
    );
    assert!(!a3.is_finished() && !b1.is_finished());
    // The next one goes to a.
    pool.release(a2, secs(t0, 2)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pool.status().waiting, 0);
    assert_eq!(counts.get(), (4, 2, 0, 0));
    a3.abort();
    b1.abort();
}

#[tokio::test(start_paused = true)]
async fn cancelled_jobs_and_failed_starts_leave_nothing_reserved() {
    let runtime = FakeRuntime::new();
    let (pool, counts) = pool(
        runtime,
        PoolConfig {
            max_sessions: 1,
            ..config()
        },
    );
    let t0 = Instant::now();
    // Cancelled while its session starts.
    let starting = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { pool.lease(&spec("a", 1), t0).await.is_ok() })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(pool.status().starting, 1);
    starting.abort();
    let _ = starting.await;
    assert_eq!(pool.running(), 0, "the reservation went with the job");
    // A lease dropped without release (its client went away) frees the session.
    let lease = pool.lease(&spec("a", 1), t0).await.unwrap();
    drop(lease);
    assert_eq!(pool.reap(secs(t0, 3_600)).await, 1);
    assert_eq!(counts.get(), (1, 1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_reaches_the_job_and_the_next_one_retries() {
    let runtime = Arc::new(FakeRuntime::new());
    runtime.fail_starts.store(true, Ordering::SeqCst);
    let pool = SessionPool::new(Arc::clone(&runtime) as Arc<dyn Runtime>, config(), None);
    let t0 = Instant::now();
    assert!(matches!(
        pool.lease(&spec("a", 1), t0).await,
        Err(PoolError::Runtime(_))
    ));
    assert_eq!(pool.running(), 0);
    runtime.fail_starts.store(false, Ordering::SeqCst);
    assert!(pool.lease(&spec("a", 1), t0).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_dead_session_is_replaced() {
    let runtime = Arc::new(FakeRuntime::new());
    let pool = SessionPool::new(Arc::clone(&runtime) as Arc<dyn Runtime>, config(), None);
    let t0 = Instant::now();
    let lease = pool.lease(&spec("a", 1), t0).await.unwrap();
    let id = lease.shared.id().to_owned();
    pool.release(lease, t0).await;
    runtime.sessions.lock().unwrap()[0].store(false, Ordering::SeqCst);
    let lease = pool.lease(&spec("a", 1), secs(t0, 1)).await.unwrap();
    assert_ne!(lease.shared.id(), id);
    assert_eq!(runtime.counts.get(), (2, 1, 0, 0));
}

fn snapshotting(dir: &Path) -> (Arc<FakeRuntime>, SessionPool, Arc<SnapshotStore>) {
    snapshotting_with(dir, config())
}

fn snapshotting_with(
    dir: &Path,
    config: PoolConfig,
) -> (Arc<FakeRuntime>, SessionPool, Arc<SnapshotStore>) {
    let mut runtime = FakeRuntime::new();
    runtime.identity = Some("kernel-1 fake-1".into());
    let runtime = Arc::new(runtime);
    let store = Arc::new(
        SnapshotStore::open(&dir.join("snapshots"), Duration::from_secs(3_600), 1 << 20).unwrap(),
    );
    let pool = SessionPool::new(
        Arc::clone(&runtime) as Arc<dyn Runtime>,
        config,
        Some(Arc::clone(&store)),
    );
    (runtime, pool, store)
}

#[tokio::test(start_paused = true)]
async fn a_session_evicted_for_room_is_snapshotted_and_comes_back_restored() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, pool, _store) = snapshotting_with(
        dir.path(),
        PoolConfig {
            max_sessions: 1,
            ..config()
        },
    );
    let t0 = Instant::now();
    let a = pool.lease(&spec("a", 1), t0).await.unwrap();
    pool.release(a, secs(t0, 1)).await;
    let b = pool.lease(&spec("b", 1), secs(t0, 2)).await.unwrap();
    assert_eq!(
        runtime.counts.get(),
        (2, 1, 0, 1),
        "a's snapshotted to make room"
    );
    pool.release(b, secs(t0, 3)).await;
    let a = pool.lease(&spec("a", 1), secs(t0, 4)).await.unwrap();
    assert!(a.shared.id().starts_with("fake-a-"));
    assert_eq!(
        runtime.counts.get(),
        (2, 2, 1, 2),
        "b's snapshotted, a's restored"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_sessions_are_snapshotted_and_restored_for_their_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, pool, store) = snapshotting(dir.path());
    let t0 = Instant::now();
    let lease = pool.lease(&spec("acme", 1), t0).await.unwrap();
    pool.release(lease, t0).await;
    assert_eq!(
        pool.reap(secs(t0, 60)).await,
        0,
        "idle 59.9 s: it took 0.1 s to start"
    );
    assert_eq!(pool.reap(secs(t0, 61)).await, 1);
    assert_eq!(
        runtime.counts.get(),
        (1, 1, 0, 1),
        "snapshotted, which stopped it"
    );
    assert!(store.total_bytes() > 0);
    // Another tenant with the same image boots; the snapshot's owner restores.
    let other = pool.lease(&spec("globex", 1), secs(t0, 61)).await.unwrap();
    assert_eq!(runtime.counts.get().0, 2);
    let restored = pool.lease(&spec("acme", 1), secs(t0, 61)).await.unwrap();
    assert_eq!(runtime.counts.get(), (2, 1, 1, 1));
    assert!(restored.shared.id().starts_with("fake-acme-"));
    drop(other);
    drop(restored);
    // Past the maximum TTL a session is stopped, not snapshotted.
    assert_eq!(pool.reap(secs(t0, 10_000)).await, 2);
    assert_eq!(runtime.counts.get().3, 1);
}

#[tokio::test(start_paused = true)]
async fn a_tampered_snapshot_or_a_failed_restore_boots_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, pool, store) = snapshotting(dir.path());
    let t0 = Instant::now();
    let key = SnapshotKey {
        tenant: "acme".into(),
        image: spec("acme", 1).image_digest,
        identity: "kernel-1 fake-1".into(),
    };
    let lease = pool.lease(&spec("acme", 1), t0).await.unwrap();
    pool.release(lease, t0).await;
    assert_eq!(pool.reap(secs(t0, 61)).await, 1);
    let files = store.root().join(key.digest()).join("files");
    std::fs::write(files.join("cpu"), b"registerz").unwrap();
    let lease = pool.lease(&spec("acme", 1), secs(t0, 61)).await.unwrap();
    assert_eq!(runtime.counts.get(), (2, 1, 0, 1), "booted, not restored");
    assert!(!files.exists(), "the tampered snapshot is gone");
    pool.release(lease, secs(t0, 62)).await;
    assert_eq!(pool.reap(secs(t0, 123)).await, 1);
    runtime.fail_restores.store(true, Ordering::SeqCst);
    let _lease = pool.lease(&spec("acme", 1), secs(t0, 122)).await.unwrap();
    assert_eq!(runtime.counts.failed_restores.load(Ordering::SeqCst), 1);
    assert_eq!(
        runtime.counts.get(),
        (3, 2, 0, 2),
        "booted after the failed restore"
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_snapshot_identity_idle_sessions_are_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Arc::new(FakeRuntime::new());
    let store =
        Arc::new(SnapshotStore::open(dir.path(), Duration::from_secs(3_600), 1 << 20).unwrap());
    let pool = SessionPool::new(
        Arc::clone(&runtime) as Arc<dyn Runtime>,
        config(),
        Some(store),
    );
    let t0 = Instant::now();
    let lease = pool.lease(&spec("acme", 1), t0).await.unwrap();
    pool.release(lease, t0).await;
    assert_eq!(pool.reap(secs(t0, 61)).await, 1);
    assert_eq!(runtime.counts.get(), (1, 1, 0, 0));
}

#[test]
fn ids_name_their_runtime() {
    assert_eq!(labelled("qemu", "vm-acme-1-2"), "qemu-vm-acme-1-2");
    assert_eq!(labelled("qemu", "qemu-acme-1-2"), "qemu-acme-1-2");
    assert_eq!(labelled("sandbox", "sbx-a-1-2"), "sandbox-sbx-a-1-2");
    assert_eq!(labelled("qemu", "qemuacme"), "qemu-qemuacme");
}
