//! The per-tenant session pool: which guest runs a job, when guests start, wait, and stop.
//!
//! Rules (each one is a unit test below, with the clock passed in and a counting fake
//! runtime):
//!
//! - **Pinning.** A session belongs to one (tenant, image) pair and only that tenant's jobs
//!   with that image run in it; no session is ever shared between tenants. One warm session
//!   per pair serves all its jobs, at once and one after the other, so the `vm` column of
//!   the audit rows shows reuse. A session's id is prefixed with the runtime that runs it
//!   (`qemu-`, `firecracker-`, `sandbox-`), so every row tells which boundary ran the job.
//! - **TTLs.** [`SessionPool::reap`] (called periodically with the time) retires a session
//!   idle for the idle TTL, and stops one older than the maximum TTL once no job uses it; a
//!   session past its maximum TTL takes no new jobs. Retiring is a snapshot when the pool
//!   has a [`SnapshotStore`] and the runtime can snapshot (the next job of that tenant and
//!   image restores it instead of booting; a failed restore boots afresh), else a stop.
//!   Either way the VMM is stopped and everything it owned removed.
//! - **Limits.** At most `max_sessions` guests per worker and `max_sessions_per_tenant` per
//!   tenant, and their memory (`Runtime::session_memory` each) within `memory_budget`, so
//!   the worker never overcommits its RAM. A session being started or retired counts, so
//!   jobs racing each other cannot start more than the limits allow; a second job for a
//!   pair whose session is starting waits for that one instead of starting another.
//! - **Waiting, eviction.** A job that needs a new session when none fits waits, up to
//!   `wait`, rather than failing (then [`PoolError::Busy`]: its client compiles locally).
//!   When room is needed and another pair's session sits idle, that session is retired to
//!   make room: idle sessions of the tenant holding the most guests go first, least recently
//!   used first among them.
//! - **Fair share.** Jobs waiting for a new session are served tenant by tenant: the next
//!   one served is the earliest waiting job of the tenant that holds the fewest guests now.
//!   So a tenant whose burst holds every guest gets no further guest while another tenant
//!   waits, and the idle guests it frees go to the others first: no tenant holds more than
//!   its share while others wait for longer than one of its jobs.
//!
//! The pool's state is a plain struct behind a `std` mutex, never held across an await;
//! starting, stopping and snapshotting happen outside it. A job's [`Lease`] releases its
//! session when dropped, so a compile cancelled midway (its client went away) never leaves
//! a session marked busy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use hpcc_runtime::health::{self, HealthPolicy, Probe};
use hpcc_runtime::{AgentStream, Runtime, RuntimeError, Session, SessionSpec};
use tokio::sync::{Notify, RwLock};

use crate::snapshots::{SnapshotKey, SnapshotStore};

/// A session shared by jobs: `connect` takes a read lock for a moment, stopping the write
/// lock.
pub struct Shared {
    session: RwLock<Option<Box<dyn Session>>>,
    id: String,
}

impl Shared {
    fn new(session: Box<dyn Session>, runtime: &str) -> Shared {
        Shared {
            id: labelled(runtime, session.id()),
            session: RwLock::new(Some(session)),
        }
    }

    /// The session's id, prefixed with its runtime (the audit rows' `vm` column).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A connection to the session's agent.
    pub async fn connect(&self) -> Result<Box<dyn AgentStream>, RuntimeError> {
        let guard = self.session.read().await;
        match guard.as_ref() {
            Some(session) => session.connect().await,
            None => Err(RuntimeError::Agent {
                session: self.id.clone(),
                message: "the session was stopped".into(),
            }),
        }
    }

    /// Resolves once the session is found broken (see `hpcc_runtime::health`); pending while
    /// it is well. The session is held only during each check, so the pool can stop it.
    pub async fn watch(&self, policy: HealthPolicy) -> RuntimeError {
        health::watch_with(policy, |probe| async move {
            let guard = self.session.read().await;
            let Some(session) = guard.as_ref() else {
                return Err(RuntimeError::Agent {
                    session: self.id.clone(),
                    message: "the session was stopped".into(),
                });
            };
            match probe {
                Probe::Alive if session.is_alive() => Ok(()),
                Probe::Alive => health::check(session.as_ref(), Duration::ZERO).await,
                Probe::Ping(timeout) => health::check(session.as_ref(), timeout).await,
            }
        })
        .await
    }

    /// Whether the session runs, without waiting (a session being stopped counts as alive).
    fn is_alive(&self) -> bool {
        match self.session.try_read() {
            Ok(guard) => guard.as_ref().is_some_and(|session| session.is_alive()),
            Err(_) => true,
        }
    }

    async fn take(&self) -> Option<Box<dyn Session>> {
        self.session.write().await.take()
    }

    async fn stop(&self) {
        if let Some(session) = self.take().await {
            if let Err(error) = session.stop().await {
                tracing::warn!(session = %self.id, %error, "stopping a session");
            }
        }
    }
}

/// `id` prefixed with `runtime-`, unless it already is.
fn labelled(runtime: &str, id: &str) -> String {
    if id
        .strip_prefix(runtime)
        .is_some_and(|rest| rest.starts_with('-'))
    {
        id.to_owned()
    } else {
        format!("{runtime}-{id}")
    }
}

/// Limits and times of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// A session idle this long is retired (snapshotted or stopped).
    pub idle_ttl: Duration,
    /// A session this old takes no new jobs and is stopped once unused.
    pub max_ttl: Duration,
    /// Sessions per worker, counting those starting and being retired.
    pub max_sessions: usize,
    /// Sessions per tenant.
    pub max_sessions_per_tenant: usize,
    /// Bytes of host memory all sessions may take (`Runtime::session_memory` each); 0: not
    /// limited by memory.
    pub memory_budget: u64,
    /// How long a job waits for a session before [`PoolError::Busy`].
    pub wait: Duration,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            idle_ttl: Duration::from_secs(300),
            max_ttl: Duration::from_secs(3_600),
            max_sessions: 8,
            max_sessions_per_tenant: 8,
            memory_budget: 0,
            wait: Duration::from_secs(60),
        }
    }
}

/// Why no session was leased.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No session could be had within the wait.
    #[error("no session for tenant {tenant} within {waited:?} ({running} running)")]
    Busy {
        /// The tenant.
        tenant: String,
        /// How long the job waited.
        waited: Duration,
        /// Sessions running or starting.
        running: usize,
    },
    /// The runtime failed to start the session.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

type Key = (String, String);

/// Where a session is in its life.
enum Phase {
    /// Being started (or restored) by the job that reserved it.
    Starting,
    /// Taking jobs.
    Ready(Arc<Shared>),
    /// Being snapshotted or stopped; still holding its memory.
    Retiring,
}

struct Entry {
    number: u64,
    key: Key,
    phase: Phase,
    started: Instant,
    last_used: Instant,
    active: usize,
}

/// A job waiting for a new session.
struct Ticket {
    number: u64,
    tenant: String,
}

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    waiting: Vec<Ticket>,
    next_number: u64,
}

impl State {
    fn number(&mut self) -> u64 {
        self.next_number += 1;
        self.next_number
    }

    fn held_by(&self, tenant: &str) -> usize {
        self.entries
            .iter()
            .filter(|entry| entry.key.0 == tenant)
            .count()
    }
}

/// Counts of a pool, for status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Sessions taking jobs.
    pub ready: usize,
    /// Sessions starting.
    pub starting: usize,
    /// Sessions being retired.
    pub retiring: usize,
    /// Jobs waiting for a new session.
    pub waiting: usize,
    /// Sessions per tenant (all phases).
    pub per_tenant: Vec<(String, usize)>,
}

struct Inner {
    runtime: Arc<dyn Runtime>,
    config: PoolConfig,
    snapshots: Option<Arc<SnapshotStore>>,
    state: Mutex<State>,
    /// Woken whenever a session frees room, becomes ready, or a waiter gives up.
    changed: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, number: u64, now: Instant) {
        let mut state = self.lock();
        if let Some(entry) = state
            .entries
            .iter_mut()
            .find(|entry| entry.number == number)
        {
            entry.active = entry.active.saturating_sub(1);
            entry.last_used = entry.last_used.max(now);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    fn forget(&self, number: u64) {
        self.lock().entries.retain(|entry| entry.number != number);
        self.changed.notify_waiters();
    }
}

/// A job's hold on a session; released with [`SessionPool::release`], or when dropped.
pub struct Lease {
    /// The session.
    pub shared: Arc<Shared>,
    number: u64,
    inner: Arc<Inner>,
    released: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            self.inner.release(self.number, Instant::now());
        }
    }
}

/// Removes a reserved entry or a waiting ticket if the job that owns it goes away first.
struct Reservation<'a> {
    inner: &'a Inner,
    entry: Option<u64>,
    ticket: Option<u64>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.entry.is_none() && self.ticket.is_none() {
            return;
        }
        let mut state = self.inner.lock();
        if let Some(number) = self.entry {
            state.entries.retain(|entry| entry.number != number);
        }
        if let Some(number) = self.ticket {
            state.waiting.retain(|ticket| ticket.number != number);
        }
        drop(state);
        self.inner.changed.notify_waiters();
    }
}

/// What a job does next, decided under the lock.
enum Decision {
    /// Run in this session (already counted as active).
    Use(Arc<Shared>, u64),
    /// Start a session in reserved entry `entry`, after retiring `victims` (each with
    /// whether it may be snapshotted: not past its maximum TTL).
    Start {
        entry: u64,
        victims: Vec<(Key, Arc<Shared>, u64, bool)>,
    },
    /// Wait for a change.
    Wait,
}

/// The warm sessions of one worker.
pub struct SessionPool {
    inner: Arc<Inner>,
}

impl SessionPool {
    /// A pool starting sessions with `runtime` within `config`, snapshotting idle sessions
    /// into `snapshots` when given and the runtime can.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        config: PoolConfig,
        snapshots: Option<Arc<SnapshotStore>>,
    ) -> SessionPool {
        SessionPool {
            inner: Arc::new(Inner {
                runtime,
                config,
                snapshots,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }

    /// The runtime's name.
    pub fn runtime_name(&self) -> &'static str {
        self.inner.runtime.name()
    }

    /// The pool's limits.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Where idle sessions are snapshotted, if anywhere.
    pub fn snapshots(&self) -> Option<&Arc<SnapshotStore>> {
        self.inner.snapshots.as_ref()
    }

    /// A session for `spec`'s tenant and image at `now`: the warm one, a restored snapshot,
    /// or a new one; waits (up to the configured wait) when no session may be started yet.
    pub async fn lease(&self, spec: &SessionSpec, now: Instant) -> Result<Lease, PoolError> {
        let inner = &self.inner;
        let key: Key = (spec.tenant.clone(), spec.image_digest.clone());
        let waiting_since = tokio::time::Instant::now();
        let deadline = waiting_since + inner.config.wait;
        let mut reservation = Reservation {
            inner,
            entry: None,
            ticket: None,
        };
        let (entry, victims) = loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // The clock passed in, moved on by however long this job has waited.
            let now = now + waiting_since.elapsed();
            let (decision, dead) = self.decide(&key, now, &mut reservation.ticket);
            for shared in dead {
                tracing::warn!(session = %shared.id(), "a session died; stopping it");
                shared.stop().await;
            }
            match decision {
                Decision::Use(shared, number) => {
                    return Ok(Lease {
                        shared,
                        number,
                        inner: Arc::clone(inner),
                        released: false,
                    });
                }
                Decision::Start { entry, victims } => {
                    reservation.entry = Some(entry);
                    reservation.ticket = None;
                    break (entry, victims);
                }
                Decision::Wait => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let running = inner.lock().entries.len();
                return Err(PoolError::Busy {
                    tenant: spec.tenant.clone(),
                    waited: waiting_since.elapsed(),
                    running,
                });
            }
        };
        for (victim_key, shared, number, snapshot) in victims {
            tracing::info!(session = %shared.id(), "retiring an idle session to make room");
            self.retire(&victim_key, &shared, number, snapshot).await;
        }
        let session = match self.start_or_restore(spec).await {
            Ok(session) => session,
            // `reservation` removes the entry and wakes the waiters.
            Err(error) => return Err(PoolError::Runtime(error)),
        };
        let now = now + waiting_since.elapsed();
        let shared = Arc::new(Shared::new(session, inner.runtime.name()));
        let placed = {
            let mut state = inner.lock();
            match state.entries.iter_mut().find(|found| found.number == entry) {
                Some(reserved) => {
                    reserved.phase = Phase::Ready(Arc::clone(&shared));
                    reserved.active = 1;
                    reserved.started = now;
                    reserved.last_used = now;
                    true
                }
                None => false,
            }
        };
        if !placed {
            // Removed under us (`stop_all`, at shutdown): stop what was started.
            shared.stop().await;
            return Err(PoolError::Busy {
                tenant: spec.tenant.clone(),
                waited: waiting_since.elapsed(),
                running: 0,
            });
        }
        reservation.entry = None;
        inner.changed.notify_waiters();
        Ok(Lease {
            shared,
            number: entry,
            inner: Arc::clone(inner),
            released: false,
        })
    }

    /// Decides under the lock what the job for `key` does at `now`; also returns sessions
    /// found dead (removed from the pool, to be stopped by the caller).
    fn decide(
        &self,
        key: &Key,
        now: Instant,
        ticket: &mut Option<u64>,
    ) -> (Decision, Vec<Arc<Shared>>) {
        let config = &self.inner.config;
        let mut state = self.inner.lock();
        let mut dead = Vec::new();
        state.entries.retain(|entry| match &entry.phase {
            Phase::Ready(shared) if entry.active == 0 && !shared.is_alive() => {
                dead.push(Arc::clone(shared));
                false
            }
            _ => true,
        });
        let fresh = |entry: &Entry| now.saturating_duration_since(entry.started) < config.max_ttl;
        // The pair's warm session, if it still takes jobs.
        if let Some(entry) = state.entries.iter_mut().find(|entry| {
            entry.key == *key && matches!(entry.phase, Phase::Ready(_)) && fresh(entry)
        }) {
            if let Phase::Ready(shared) = &entry.phase {
                entry.active += 1;
                entry.last_used = entry.last_used.max(now);
                let decision = Decision::Use(Arc::clone(shared), entry.number);
                if let Some(number) = ticket.take() {
                    state.waiting.retain(|ticket| ticket.number != number);
                }
                return (decision, dead);
            }
        }
        // The pair's session is starting, or being snapshotted: wait for it (without a
        // place among the jobs waiting for a new session, which it may not need).
        if state.entries.iter().any(|entry| {
            entry.key == *key && !matches!(entry.phase, Phase::Ready(_)) && fresh(entry)
        }) {
            if let Some(number) = ticket.take() {
                state.waiting.retain(|ticket| ticket.number != number);
            }
            return (Decision::Wait, dead);
        }
        let mine = match *ticket {
            Some(number) => number,
            None => {
                let number = state.number();
                state.waiting.push(Ticket {
                    number,
                    tenant: key.0.clone(),
                });
                *ticket = Some(number);
                number
            }
        };
        // Fair share: waiting tickets in order of how many guests their tenant holds, then
        // of arrival; the first one that can be served now is.
        let mut order: Vec<(usize, u64, String)> = state
            .waiting
            .iter()
            .map(|ticket| {
                (
                    state.held_by(&ticket.tenant),
                    ticket.number,
                    ticket.tenant.clone(),
                )
            })
            .collect();
        order.sort();
        let memory = self.inner.runtime.session_memory();
        for (_, number, tenant) in order {
            let Some(victims) = plan(&state, &tenant, config, memory) else {
                continue;
            };
            if number != mine {
                // Another job goes first; it was woken by the same change.
                return (Decision::Wait, dead);
            }
            let mut retiring = Vec::new();
            for entry in state
                .entries
                .iter_mut()
                .filter(|entry| victims.contains(&entry.number))
            {
                let snapshot = fresh(entry);
                if let Phase::Ready(shared) = std::mem::replace(&mut entry.phase, Phase::Retiring) {
                    retiring.push((entry.key.clone(), shared, entry.number, snapshot));
                }
            }
            state.waiting.retain(|ticket| ticket.number != mine);
            *ticket = None;
            let number = state.number();
            state.entries.push(Entry {
                number,
                key: key.clone(),
                phase: Phase::Starting,
                started: now,
                last_used: now,
                active: 1,
            });
            return (
                Decision::Start {
                    entry: number,
                    victims: retiring,
                },
                dead,
            );
        }
        (Decision::Wait, dead)
    }

    /// Starts a session for `spec`, from its snapshot when there is a good one.
    async fn start_or_restore(&self, spec: &SessionSpec) -> Result<Box<dyn Session>, RuntimeError> {
        let runtime = &self.inner.runtime;
        if let Some(key) = self.snapshot_key(spec) {
            let snapshots = self.inner.snapshots.clone();
            let found = tokio::task::spawn_blocking(move || {
                snapshots.and_then(|store| store.find(&key, SystemTime::now()))
            })
            .await
            .ok()
            .flatten();
            if let Some(dir) = found {
                match runtime.restore(spec, &dir).await {
                    Ok(session) => {
                        tracing::info!(session = session.id(), "restored a snapshot");
                        return Ok(session);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "restoring a snapshot failed; booting afresh")
                    }
                }
            }
        }
        runtime.start(spec).await
    }

    fn snapshot_key(&self, spec: &SessionSpec) -> Option<SnapshotKey> {
        self.inner.snapshots.as_ref()?;
        Some(SnapshotKey {
            tenant: spec.tenant.clone(),
            image: spec.image_digest.clone(),
            identity: self.inner.runtime.snapshot_identity()?,
        })
    }

    /// Snapshots (when `snapshot` and the pool and runtime can) or stops a session already
    /// marked retiring, then removes its entry and wakes waiters.
    async fn retire(&self, key: &Key, shared: &Shared, number: u64, snapshot: bool) {
        let snapshot_key = self
            .inner
            .snapshots
            .as_ref()
            .filter(|_| snapshot)
            .and_then(|store| {
                Some((
                    Arc::clone(store),
                    SnapshotKey {
                        tenant: key.0.clone(),
                        image: key.1.clone(),
                        identity: self.inner.runtime.snapshot_identity()?,
                    },
                ))
            });
        match (snapshot_key, shared.take().await) {
            (Some((store, snapshot_key)), Some(session)) => {
                save_snapshot(&store, &snapshot_key, session, shared.id()).await;
            }
            (None, Some(session)) => {
                if let Err(error) = session.stop().await {
                    tracing::warn!(session = %shared.id(), %error, "stopping a session");
                }
            }
            (_, None) => {}
        }
        self.inner.forget(number);
    }

    /// Ends a job's hold at `now`.
    pub async fn release(&self, mut lease: Lease, now: Instant) {
        lease.released = true;
        self.inner.release(lease.number, now);
    }

    /// Ends a job's hold on a session that failed it (its agent broke the protocol or stopped
    /// answering, or its VMM died): the session takes no new jobs and is stopped in the
    /// background, never snapshotted, so the caller can retry on a fresh one at once. Its
    /// other jobs fail the same way and end their holds here too.
    pub async fn discard(&self, mut lease: Lease) {
        lease.released = true;
        let number = lease.number;
        let broken = {
            let mut state = self.inner.lock();
            state
                .entries
                .iter_mut()
                .find(|entry| entry.number == number)
                .and_then(|entry| {
                    entry.active = entry.active.saturating_sub(1);
                    match std::mem::replace(&mut entry.phase, Phase::Retiring) {
                        Phase::Ready(shared) => Some(shared),
                        other => {
                            entry.phase = other;
                            None
                        }
                    }
                })
        };
        self.inner.changed.notify_waiters();
        if let Some(shared) = broken {
            tracing::warn!(session = shared.id(), "discarding a failed session");
            let inner = Arc::clone(&self.inner);
            crate::spawn_named("discard-session", async move {
                shared.stop().await;
                inner.forget(number);
            });
        }
    }

    /// Retires sessions idle past the idle TTL (snapshotted when possible), and stops unused
    /// sessions past the maximum TTL and dead ones; also deletes expired snapshots. Returns
    /// how many sessions were retired or stopped.
    pub async fn reap(&self, now: Instant) -> usize {
        let config = self.inner.config;
        let mut retiring = Vec::new();
        {
            let mut state = self.inner.lock();
            for entry in &mut state.entries {
                let Phase::Ready(shared) = &entry.phase else {
                    continue;
                };
                if entry.active > 0 {
                    continue;
                }
                let too_old = now.saturating_duration_since(entry.started) >= config.max_ttl;
                let idle = now.saturating_duration_since(entry.last_used) >= config.idle_ttl;
                let dead = !shared.is_alive();
                if too_old || idle || dead {
                    // A session past its maximum TTL is not snapshotted: restoring it would
                    // extend its life past the limit.
                    let snapshot = idle && !too_old && !dead;
                    if let Phase::Ready(shared) =
                        std::mem::replace(&mut entry.phase, Phase::Retiring)
                    {
                        retiring.push((entry.key.clone(), shared, entry.number, snapshot));
                    }
                }
            }
        }
        let count = retiring.len();
        for (key, shared, number, snapshot) in retiring {
            self.retire(&key, &shared, number, snapshot).await;
        }
        if let Some(store) = self.inner.snapshots.clone() {
            let _ = tokio::task::spawn_blocking(move || store.expire(SystemTime::now())).await;
        }
        count
    }

    /// Stops every session (shutdown), without snapshots.
    pub async fn stop_all(&self) {
        let all: Vec<Arc<Shared>> = {
            let mut state = self.inner.lock();
            state
                .entries
                .drain(..)
                .filter_map(|entry| match entry.phase {
                    Phase::Ready(shared) => Some(shared),
                    _ => None,
                })
                .collect()
        };
        self.inner.changed.notify_waiters();
        for shared in all {
            shared.stop().await;
        }
    }

    /// Images with a warm session, for heartbeats.
    pub fn warm_images(&self) -> Vec<String> {
        let state = self.inner.lock();
        let mut images: Vec<String> = state
            .entries
            .iter()
            .filter(|entry| matches!(entry.phase, Phase::Ready(_)))
            .map(|entry| entry.key.1.clone())
            .collect();
        images.sort();
        images.dedup();
        images
    }

    /// Sessions running, starting or being retired now.
    pub fn running(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// The pool's counts now.
    pub fn status(&self) -> PoolStatus {
        let state = self.inner.lock();
        let mut per_tenant: HashMap<&str, usize> = HashMap::new();
        let mut status = PoolStatus {
            waiting: state.waiting.len(),
            ..PoolStatus::default()
        };
        for entry in &state.entries {
            *per_tenant.entry(entry.key.0.as_str()).or_default() += 1;
            match entry.phase {
                Phase::Starting => status.starting += 1,
                Phase::Ready(_) => status.ready += 1,
                Phase::Retiring => status.retiring += 1,
            }
        }
        status.per_tenant = per_tenant
            .into_iter()
            .map(|(tenant, count)| (tenant.to_owned(), count))
            .collect();
        status.per_tenant.sort();
        status
    }
}

/// Which idle sessions to retire so that `tenant` may start one more within the limits, or
/// `None` if it cannot even then. Victims: the tenant's own idle sessions when its own limit
/// is what blocks, else idle sessions of the tenants holding the most guests, least recently
/// used first.
fn plan(state: &State, tenant: &str, config: &PoolConfig, memory: u64) -> Option<Vec<u64>> {
    let mut total = state.entries.len();
    let mut own = state.held_by(tenant);
    let fits = |total: usize, own: usize| {
        total < config.max_sessions
            && own < config.max_sessions_per_tenant
            && (config.memory_budget == 0
                || (total as u64 + 1).saturating_mul(memory) <= config.memory_budget)
    };
    if fits(total, own) {
        return Some(Vec::new());
    }
    let mut candidates: Vec<(std::cmp::Reverse<usize>, Instant, u64, bool)> = state
        .entries
        .iter()
        .filter(|entry| entry.active == 0 && matches!(entry.phase, Phase::Ready(_)))
        .map(|entry| {
            (
                std::cmp::Reverse(state.held_by(&entry.key.0)),
                entry.last_used,
                entry.number,
                entry.key.0 == tenant,
            )
        })
        .collect();
    candidates.sort();
    let mut victims = Vec::new();
    // The tenant's own limit can only be relieved by its own sessions.
    if own >= config.max_sessions_per_tenant {
        for (_, _, number, is_own) in &candidates {
            if *is_own && own >= config.max_sessions_per_tenant {
                victims.push(*number);
                own -= 1;
                total -= 1;
            }
        }
    }
    for (_, _, number, is_own) in &candidates {
        if fits(total, own) {
            break;
        }
        if victims.contains(number) {
            continue;
        }
        victims.push(*number);
        total -= 1;
        if *is_own {
            own -= 1;
        }
    }
    fits(total, own).then_some(victims)
}

/// Pauses and saves `session` into a fresh snapshot of `key`, which stops it; a failure
/// leaves no snapshot (the next job boots afresh).
async fn save_snapshot(
    store: &Arc<SnapshotStore>,
    key: &SnapshotKey,
    session: Box<dyn Session>,
    id: &str,
) {
    let staged = match store.stage() {
        Ok(staged) => staged,
        Err(error) => {
            tracing::warn!(session = id, %error, "no room for a snapshot; stopping the session");
            if let Err(error) = session.stop().await {
                tracing::warn!(session = id, %error, "stopping a session");
            }
            return;
        }
    };
    if let Err(error) = session.snapshot(&staged.files()).await {
        tracing::warn!(session = id, %error, "snapshotting a session failed");
        return;
    }
    let store = Arc::clone(store);
    let key = key.clone();
    let committed =
        tokio::task::spawn_blocking(move || store.commit(&key, staged, SystemTime::now())).await;
    match committed {
        Ok(Ok(true)) => tracing::info!(session = id, "idle session snapshotted"),
        Ok(Ok(false)) => tracing::info!(session = id, "snapshot larger than the store's bound"),
        Ok(Err(error)) => tracing::warn!(session = id, %error, "keeping a snapshot"),
        Err(error) => tracing::warn!(session = id, %error, "keeping a snapshot"),
    }
}

#[cfg(test)]
mod tests;
