//! Fair share and quotas between tenants on one worker: run slots ([`FairSlots`]) and bytes of
//! sources in flight ([`TenantBytes`]).
//!
//! # Run slots
//!
//! A worker runs `capacity` compiles at once. A single FIFO semaphore serves jobs in arrival
//! order, so one tenant's burst of 300 jobs queues ahead of another tenant's 20, and the second
//! tenant waits for the whole burst. [`FairSlots`] keeps one FIFO queue per tenant instead, and
//! when a slot frees it goes to the waiting tenant that is using the fewest slots. Every tenant
//! that keeps jobs waiting converges to an equal share of the slots (max-min fairness of
//! concurrency), and a tenant alone on the worker still gets all of them: no slot idles while
//! anyone waits.
//!
//! Ties between tenants using as many slots go to the tenant granted a slot least recently,
//! then to the tenant whose oldest waiter has waited longest. The first rule matters: with one
//! slot, or whenever a tenant's release leaves it level with another, "oldest waiter first"
//! alone is plain FIFO across tenants again, since every waiter of the flooding tenant is older
//! than the newcomer's. Within a tenant, jobs are served in arrival order.
//!
//! A tenant's quota (`max_jobs`) counts its jobs running plus waiting on this worker. A job
//! over it is refused at once rather than queued: waiting behind the tenant's own jobs would
//! gain nothing, and a refused client compiles locally ([`Refused`] names the quota, for the
//! "resource exhausted" answer). Past `max_queued` waiters in all, a job is refused likewise,
//! so the queue, and the memory its requests hold, stays bounded.
//!
//! Cancellation is safe by construction. A waiter is a `oneshot` sender in its tenant's queue;
//! a freed slot is handed over by sending the [`Slot`] itself, under the lock. Dropping an
//! [`FairSlots::acquire`] future removes its waiter, and if a slot was sent to it just before,
//! the slot sits in the dropped channel and is dropped with it, which frees it and hands it on.
//! A send to a waiter whose receiver is already gone fails, and the slot is handed on at once.
//!
//! # Bytes of sources
//!
//! [`TenantBytes`] counts the bytes of sources a worker holds (received, queued or compiling),
//! per tenant and in all. A reservation is non-blocking: a source that does not fit is refused
//! before it is read, and its client compiles locally, so a burst of large sources can take
//! neither the worker's memory nor another tenant's share of the budget.
//!
//! # State
//!
//! Each type is a `std::sync::Mutex` over a small state struct, never held across an `.await`;
//! each critical section is a few map operations, plus a scan of the waiting tenants when a slot
//! is handed on. A tenant with nothing running, waiting or held has no entry, so the maps stay
//! as small as the set of active tenants, however many tenant ids a worker sees.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// Why a job is refused before it runs: a quota or a bound of this worker. Each message names
/// the quota, for the client's "resource exhausted" answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The tenant has `limit` jobs running or waiting on this worker already.
    #[error("tenant {tenant:?} is over its quota of {limit} concurrent jobs on this worker")]
    TenantJobs {
        /// The tenant refused.
        tenant: String,
        /// Its quota of jobs running plus waiting on this worker.
        limit: u32,
    },
    /// The worker's queue is full.
    #[error("worker queue full ({queued} waiting)")]
    QueueFull {
        /// Jobs waiting for a slot, in all.
        queued: usize,
    },
    /// The tenant's sources in flight would go over its quota.
    #[error(
        "tenant {tenant:?} is over its quota of {limit} bytes of sources in flight on this worker"
    )]
    TenantBytes {
        /// The tenant refused.
        tenant: String,
        /// Its quota of bytes of sources in flight on this worker.
        limit: u64,
    },
    /// The worker's sources in flight would go over its budget.
    #[error("worker is over its budget of {limit} bytes of sources in flight")]
    WorkerBytes {
        /// The worker's budget of bytes of sources in flight.
        limit: u64,
    },
}

/// Locks `mutex`, ignoring poisoning: every critical section below leaves the state consistent
/// before anything in it could panic, so a panic elsewhere never leaves it half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `capacity` run slots shared fairly by tenants (see the [module docs](self)). Clones share
/// the slots.
#[derive(Clone)]
pub struct FairSlots {
    shared: Arc<Mutex<SlotsState>>,
}

/// A run slot of a [`FairSlots`], held until dropped; dropping it hands it to the next waiter.
pub struct Slot {
    /// `None` only for a slot disarmed by a failed hand-over (see `SlotsState::dispatch`).
    shared: Option<Arc<Mutex<SlotsState>>>,
    tenant: String,
}

struct SlotsState {
    capacity: usize,
    max_queued: usize,
    /// Slots neither running nor handed over. Invariant: `free == 0 || waiting == 0`.
    free: usize,
    /// Waiters in all the tenants' queues.
    waiting: usize,
    /// Orders waiters' arrivals and grants; never repeats.
    next_seq: u64,
    /// Only tenants with something running or waiting.
    tenants: HashMap<String, TenantSlots>,
}

#[derive(Default)]
struct TenantSlots {
    /// Slots granted to the tenant and not yet freed (including a slot in flight to a waiter).
    running: u32,
    /// The `seq` of the tenant's last grant, or `None` since it last had an entry.
    last_grant: Option<u64>,
    queue: VecDeque<Waiter>,
}

struct Waiter {
    seq: u64,
    sender: oneshot::Sender<Slot>,
}

/// What [`SlotsState::admit`] did with a request.
enum Admission {
    Granted(Slot),
    Queued {
        seq: u64,
        receiver: oneshot::Receiver<Slot>,
    },
}

impl SlotsState {
    fn admit(
        &mut self,
        shared: &Arc<Mutex<SlotsState>>,
        tenant: &str,
        max_jobs: Option<u32>,
    ) -> Result<Admission, Refused> {
        if let Some(limit) = max_jobs {
            let jobs = self.tenants.get(tenant).map_or(0, |slots| {
                let queued = u64::try_from(slots.queue.len()).unwrap_or(u64::MAX);
                queued.saturating_add(u64::from(slots.running))
            });
            if jobs >= u64::from(limit) {
                return Err(Refused::TenantJobs {
                    tenant: tenant.to_owned(),
                    limit,
                });
            }
        }
        if self.free > 0 && self.waiting == 0 {
            self.free -= 1;
            let seq = self.next_seq();
            let slots = self.tenants.entry(tenant.to_owned()).or_default();
            slots.running += 1;
            slots.last_grant = Some(seq);
            return Ok(Admission::Granted(Slot {
                shared: Some(Arc::clone(shared)),
                tenant: tenant.to_owned(),
            }));
        }
        if self.waiting >= self.max_queued {
            return Err(Refused::QueueFull {
                queued: self.waiting,
            });
        }
        let seq = self.next_seq();
        let (sender, receiver) = oneshot::channel();
        self.tenants
            .entry(tenant.to_owned())
            .or_default()
            .queue
            .push_back(Waiter { seq, sender });
        self.waiting += 1;
        Ok(Admission::Queued { seq, receiver })
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Removes `tenant`'s entry if it has nothing running or waiting.
    fn forget_if_idle(&mut self, tenant: &str) {
        if self
            .tenants
            .get(tenant)
            .is_some_and(|slots| slots.running == 0 && slots.queue.is_empty())
        {
            self.tenants.remove(tenant);
        }
    }

    /// Removes the waiter `seq` of `tenant`, if it still waits.
    fn withdraw(&mut self, tenant: &str, seq: u64) {
        let Some(slots) = self.tenants.get_mut(tenant) else {
            return;
        };
        if let Some(position) = slots.queue.iter().position(|waiter| waiter.seq == seq) {
            slots.queue.remove(position);
            self.waiting -= 1;
            self.forget_if_idle(tenant);
        }
    }

    /// Frees a slot of `tenant` and hands it on.
    fn release(&mut self, shared: &Arc<Mutex<SlotsState>>, tenant: &str) {
        if let Some(slots) = self.tenants.get_mut(tenant) {
            slots.running = slots.running.saturating_sub(1);
        }
        self.forget_if_idle(tenant);
        self.free += 1;
        self.dispatch(shared);
    }

    /// Hands free slots to waiters until one or the other runs out.
    fn dispatch(&mut self, shared: &Arc<Mutex<SlotsState>>) {
        while self.free > 0 && self.waiting > 0 {
            let Some(tenant) = self
                .tenants
                .iter()
                .filter_map(|(tenant, slots)| {
                    let oldest = slots.queue.front()?.seq;
                    // `None` sorts first: a tenant not granted since it last had an entry.
                    Some(((slots.running, slots.last_grant, oldest), tenant))
                })
                .min()
                .map(|(_, tenant)| tenant.clone())
            else {
                // Unreachable while `waiting` counts the queues; recount rather than spin.
                self.waiting = 0;
                return;
            };
            let seq = self.next_seq();
            let Some(slots) = self.tenants.get_mut(&tenant) else {
                return;
            };
            let Some(waiter) = slots.queue.pop_front() else {
                return;
            };
            self.waiting -= 1;
            self.free -= 1;
            slots.running += 1;
            slots.last_grant = Some(seq);
            let slot = Slot {
                shared: Some(Arc::clone(shared)),
                tenant: tenant.clone(),
            };
            if let Err(mut slot) = waiter.sender.send(slot) {
                // The waiter's future was dropped and has not withdrawn yet. Dropping the slot
                // here would take the lock again: disarm it and undo the grant by hand.
                slot.shared = None;
                slots.running -= 1;
                self.free += 1;
                self.forget_if_idle(&tenant);
            }
        }
    }
}

/// Withdraws a waiter when the [`FairSlots::acquire`] future waiting on it is dropped. After a
/// grant the waiter is already out of its queue and withdrawing does nothing; a slot sent and
/// not yet received is dropped with `receiver`, after this guard lets go of the lock.
struct Waiting<'a> {
    shared: &'a Arc<Mutex<SlotsState>>,
    tenant: &'a str,
    seq: u64,
    receiver: oneshot::Receiver<Slot>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.shared).withdraw(self.tenant, self.seq);
    }
}

impl FairSlots {
    /// `capacity` slots (at least one) and at most `max_queued` waiters in all.
    pub fn new(capacity: usize, max_queued: usize) -> FairSlots {
        let capacity = capacity.max(1);
        FairSlots {
            shared: Arc::new(Mutex::new(SlotsState {
                capacity,
                max_queued,
                free: capacity,
                waiting: 0,
                next_seq: 0,
                tenants: HashMap::new(),
            })),
        }
    }

    /// A run slot for one of `tenant`'s jobs: at once if one is free and no one waits, else
    /// when it is this waiter's turn (see the [module docs](self)). Refused at once when the
    /// tenant already has `max_jobs` jobs running or waiting here (checked first, even with a
    /// slot free), or when the job would wait and `max_queued` jobs wait already.
    ///
    /// Cancel-safe: dropping the future withdraws its waiter and never leaks a slot.
    pub async fn acquire(&self, tenant: &str, max_jobs: Option<u32>) -> Result<Slot, Refused> {
        loop {
            let admission = lock(&self.shared).admit(&self.shared, tenant, max_jobs)?;
            let (seq, receiver) = match admission {
                Admission::Granted(slot) => return Ok(slot),
                Admission::Queued { seq, receiver } => (seq, receiver),
            };
            let mut waiting = Waiting {
                shared: &self.shared,
                tenant,
                seq,
                receiver,
            };
            if let Ok(slot) = (&mut waiting.receiver).await {
                return Ok(slot);
            }
            // The sender is only dropped by sending or by `waiting`'s own withdrawal, so this
            // is unreachable; should it happen, the request queues again rather than fail.
        }
    }

    /// Slots `tenant` holds (including one being handed to it).
    pub fn running(&self, tenant: &str) -> u32 {
        lock(&self.shared)
            .tenants
            .get(tenant)
            .map_or(0, |slots| slots.running)
    }

    /// Each tenant's jobs running or waiting, by tenant (tenants with none are absent): what
    /// heartbeats tell the scheduler, whose placement shares a full worker fairly.
    pub fn per_tenant(&self) -> Vec<(String, u32)> {
        let state = lock(&self.shared);
        let mut loads: Vec<(String, u32)> = state
            .tenants
            .iter()
            .map(|(tenant, slots)| {
                let waiting = u32::try_from(slots.queue.len()).unwrap_or(u32::MAX);
                (tenant.clone(), slots.running.saturating_add(waiting))
            })
            .collect();
        loads.sort();
        loads
    }

    /// Jobs waiting for a slot, in all.
    pub fn waiting(&self) -> u32 {
        u32::try_from(lock(&self.shared).waiting).unwrap_or(u32::MAX)
    }

    /// Slots held, in all.
    pub fn running_total(&self) -> u32 {
        let state = lock(&self.shared);
        u32::try_from(state.capacity - state.free).unwrap_or(u32::MAX)
    }
}

impl std::fmt::Debug for FairSlots {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.shared);
        formatter
            .debug_struct("FairSlots")
            .field("capacity", &state.capacity)
            .field("free", &state.free)
            .field("waiting", &state.waiting)
            .finish_non_exhaustive()
    }
}

impl Slot {
    /// The tenant whose slot this is.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            lock(&shared).release(&shared, &self.tenant);
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Slot")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// Bytes of sources in flight, per tenant and in all (see the [module docs](self)). Clones
/// share the budget.
#[derive(Clone)]
pub struct TenantBytes {
    shared: Arc<Mutex<BytesState>>,
}

/// Bytes reserved in a [`TenantBytes`] until dropped.
pub struct BytesHeld {
    shared: Arc<Mutex<BytesState>>,
    tenant: String,
    len: u64,
}

struct BytesState {
    limit: u64,
    held: u64,
    /// Only tenants holding more than zero bytes.
    tenants: HashMap<String, u64>,
}

impl TenantBytes {
    /// A budget of `global_bytes` in all.
    pub fn new(global_bytes: u64) -> TenantBytes {
        TenantBytes {
            shared: Arc::new(Mutex::new(BytesState {
                limit: global_bytes,
                held: 0,
                tenants: HashMap::new(),
            })),
        }
    }

    /// Reserves `len` bytes for `tenant` until the [`BytesHeld`] is dropped, or refuses at once
    /// when the tenant would hold more than `tenant_limit` or the worker more than its budget.
    pub fn reserve(
        &self,
        tenant: &str,
        len: u64,
        tenant_limit: Option<u64>,
    ) -> Result<BytesHeld, Refused> {
        let mut state = lock(&self.shared);
        let tenant_held = state.tenants.get(tenant).copied().unwrap_or(0);
        if let Some(limit) = tenant_limit {
            if tenant_held
                .checked_add(len)
                .is_none_or(|total| total > limit)
            {
                return Err(Refused::TenantBytes {
                    tenant: tenant.to_owned(),
                    limit,
                });
            }
        }
        let limit = state.limit;
        let Some(held) = state.held.checked_add(len).filter(|&total| total <= limit) else {
            return Err(Refused::WorkerBytes { limit });
        };
        state.held = held;
        if len > 0 {
            // Cannot overflow: the tenant's bytes are part of `held`, which did not.
            *state.tenants.entry(tenant.to_owned()).or_insert(0) += len;
        }
        Ok(BytesHeld {
            shared: Arc::clone(&self.shared),
            tenant: tenant.to_owned(),
            len,
        })
    }

    /// Bytes `tenant` holds.
    pub fn held(&self, tenant: &str) -> u64 {
        lock(&self.shared).tenants.get(tenant).copied().unwrap_or(0)
    }

    /// Bytes held, in all.
    pub fn held_total(&self) -> u64 {
        lock(&self.shared).held
    }
}

impl std::fmt::Debug for TenantBytes {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.shared);
        formatter
            .debug_struct("TenantBytes")
            .field("limit", &state.limit)
            .field("held", &state.held)
            .finish_non_exhaustive()
    }
}

impl Drop for BytesHeld {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        let mut state = lock(&self.shared);
        state.held = state.held.saturating_sub(self.len);
        if let Some(tenant_held) = state.tenants.get_mut(&self.tenant) {
            *tenant_held = tenant_held.saturating_sub(self.len);
            if *tenant_held == 0 {
                state.tenants.remove(&self.tenant);
            }
        }
    }
}

impl std::fmt::Debug for BytesHeld {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BytesHeld")
            .field("tenant", &self.tenant)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;
    use std::time::Duration;

    type Acquire<'a> = Pin<Box<dyn Future<Output = Result<Slot, Refused>> + Send + 'a>>;

    impl FairSlots {
        /// Asserts the state's invariants.
        fn check(&self) {
            let state = lock(&self.shared);
            let running: usize = state
                .tenants
                .values()
                .map(|slots| slots.running as usize)
                .sum();
            let queued: usize = state.tenants.values().map(|slots| slots.queue.len()).sum();
            assert_eq!(
                running + state.free,
                state.capacity,
                "every slot is free or held"
            );
            assert_eq!(queued, state.waiting, "waiting counts the queues");
            assert!(
                state.free == 0 || state.waiting == 0,
                "no slot is free while someone waits"
            );
            assert!(
                state
                    .tenants
                    .values()
                    .all(|slots| slots.running > 0 || !slots.queue.is_empty()),
                "no idle tenant keeps an entry"
            );
        }

        fn tenant_count(&self) -> usize {
            lock(&self.shared).tenants.len()
        }
    }

    impl TenantBytes {
        fn tenant_count(&self) -> usize {
            lock(&self.shared).tenants.len()
        }
    }

    /// Polls `future` once: its output if ready, else `None` (a waiter stays registered).
    /// Unconstrained: tokio's cooperative budget would otherwise make a ready `oneshot` look
    /// pending after a test's first hundred or so polls in one task.
    async fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
        tokio::task::unconstrained(std::future::poll_fn(|context| {
            Poll::Ready(match Pin::new(&mut *future).poll(context) {
                Poll::Ready(output) => Some(output),
                Poll::Pending => None,
            })
        }))
        .await
    }

    /// A slot granted at once, or a failed test.
    async fn now(slots: &FairSlots, tenant: &str) -> Slot {
        let mut acquire = Box::pin(slots.acquire(tenant, None));
        poll_once(&mut acquire)
            .await
            .expect("a free slot is granted at once")
            .expect("no quota")
    }

    /// The refusal of an acquire, which must come at once.
    async fn refusal(slots: &FairSlots, tenant: &str, max_jobs: Option<u32>) -> Refused {
        let mut acquire = Box::pin(slots.acquire(tenant, max_jobs));
        poll_once(&mut acquire)
            .await
            .expect("a refusal comes at once")
            .expect_err("refused")
    }

    /// An acquire polled once, so that it waits in its tenant's queue.
    async fn queued<'a>(slots: &'a FairSlots, tenant: &'a str) -> Acquire<'a> {
        let mut acquire: Acquire<'a> = Box::pin(slots.acquire(tenant, None));
        assert!(poll_once(&mut acquire).await.is_none(), "{tenant} waits");
        acquire
    }

    /// Polls every pending acquire once; returns the labels and slots of those granted.
    async fn granted(pending: &mut Vec<(String, Acquire<'_>)>) -> Vec<(String, Slot)> {
        let mut ready = Vec::new();
        let mut index = 0;
        while index < pending.len() {
            match poll_once(&mut pending[index].1).await {
                Some(result) => {
                    let (label, _) = pending.remove(index);
                    ready.push((label, result.expect("no quota")));
                }
                None => index += 1,
            }
        }
        ready
    }

    /// Frees the held slots one at a time, oldest first, each new holder joining the back,
    /// until every pending acquire is served; returns the labels in the order served.
    async fn serve_in_turn(
        slots: &FairSlots,
        mut held: VecDeque<Slot>,
        mut pending: Vec<(String, Acquire<'_>)>,
    ) -> Vec<String> {
        let mut order = Vec::new();
        while !pending.is_empty() {
            drop(held.pop_front().expect("a slot is held while some wait"));
            let mut ready = granted(&mut pending).await;
            assert_eq!(ready.len(), 1, "one freed slot serves one waiter");
            let (label, slot) = ready.remove(0);
            order.push(label);
            held.push_back(slot);
            slots.check();
        }
        drop(held);
        assert_eq!(slots.running_total(), 0);
        assert_eq!(slots.tenant_count(), 0);
        order
    }

    /// A deterministic xorshift64 generator, so a failing interleaving can be replayed.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            usize::try_from(self.next() % bound as u64).expect("below a usize")
        }
    }

    #[tokio::test]
    async fn slots_are_granted_at_once_while_free() {
        let slots = FairSlots::new(2, 8);
        let first = now(&slots, "a").await;
        let second = now(&slots, "b").await;
        assert_eq!((slots.running("a"), slots.running("b")), (1, 1));
        assert_eq!(slots.running_total(), 2);
        assert_eq!(first.tenant(), "a");
        let third = queued(&slots, "a").await;
        assert_eq!(slots.waiting(), 1);
        drop(third);
        drop((first, second));
        assert_eq!((slots.running_total(), slots.waiting()), (0, 0));
        slots.check();
        let zero = FairSlots::new(0, 8);
        let _only = now(&zero, "a").await;
        assert!(
            poll_once(&mut Box::pin(zero.acquire("b", None)))
                .await
                .is_none(),
            "a capacity of 0 is one slot"
        );
    }

    #[tokio::test]
    async fn a_later_tenant_is_served_before_a_flood_drains() {
        for capacity in 1..=3 {
            let slots = FairSlots::new(capacity, 1024);
            let mut held = VecDeque::new();
            for _ in 0..capacity {
                held.push_back(now(&slots, "a").await);
            }
            let mut pending = Vec::new();
            for index in 0..30 {
                pending.push((format!("a{index}"), queued(&slots, "a").await));
            }
            for index in 0..3 {
                pending.push((format!("b{index}"), queued(&slots, "b").await));
            }
            assert_eq!(slots.waiting(), 33);
            let order = serve_in_turn(&slots, held, pending).await;
            assert_eq!(order.len(), 33, "every job of A's is served too");
            let served = |tenant: char| -> Vec<usize> {
                order
                    .iter()
                    .enumerate()
                    .filter(|(_, label)| label.starts_with(tenant))
                    .map(|(position, _)| position)
                    .collect()
            };
            assert!(
                served('b').iter().all(|&position| position < 6),
                "capacity {capacity}: B's jobs are served alternately with A's, not after \
                 A's 30: {order:?}"
            );
            let a_order: Vec<&String> = order.iter().filter(|l| l.starts_with('a')).collect();
            let expected: Vec<String> = (0..30).map(|index| format!("a{index}")).collect();
            assert_eq!(
                a_order,
                expected.iter().collect::<Vec<_>>(),
                "A in FIFO order"
            );
            assert_eq!(served('a').len(), 30);
        }
    }

    #[tokio::test]
    async fn slots_alternate_between_two_waiting_tenants() {
        // Two slots, each tenant holding one: each freed slot goes to the tenant left with
        // fewer. One slot: the tenants are level at every release, and the tenant served
        // least recently goes next (oldest-waiter-first alone would serve all of A's first).
        for capacity in [1, 2] {
            let slots = FairSlots::new(capacity, 1024);
            let mut held = VecDeque::from([now(&slots, "a").await]);
            if capacity == 2 {
                held.push_back(now(&slots, "b").await);
            }
            let mut pending = Vec::new();
            for tenant in ["a", "b"] {
                for index in 0..6 {
                    pending.push((format!("{tenant}{index}"), queued(&slots, tenant).await));
                }
            }
            let order = serve_in_turn(&slots, held, pending).await;
            let tenants: String = order.iter().map(|label| &label[..1]).collect();
            let expected = if capacity == 1 {
                "babababababa"
            } else {
                "abababababab"
            };
            assert_eq!(tenants, expected, "capacity {capacity}: {order:?}");
        }
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_waiting_tenant_running_fewest() {
        let slots = FairSlots::new(3, 16);
        let a1 = now(&slots, "a").await;
        let a2 = now(&slots, "a").await;
        let b1 = now(&slots, "b").await;
        let mut pending = vec![
            ("a".to_owned(), queued(&slots, "a").await),
            ("b".to_owned(), queued(&slots, "b").await),
            ("c".to_owned(), queued(&slots, "c").await),
        ];
        let mut order = Vec::new();
        let mut held = Vec::new();
        for freed in [a1, b1, a2] {
            drop(freed);
            let mut ready = granted(&mut pending).await;
            assert_eq!(ready.len(), 1);
            let (label, slot) = ready.remove(0);
            order.push(label);
            held.push(slot);
            slots.check();
        }
        // a: 1 running, b: 1, c: 0 -> c; then a: 1, b: 0, c: 1 -> b; then a: 0 -> a.
        assert_eq!(order, ["c", "b", "a"]);
    }

    #[tokio::test]
    async fn jobs_of_one_tenant_are_served_in_arrival_order() {
        let slots = FairSlots::new(1, 64);
        let held = VecDeque::from([now(&slots, "a").await]);
        let mut pending = Vec::new();
        for index in 0..10 {
            pending.push((index.to_string(), queued(&slots, "a").await));
        }
        let order = serve_in_turn(&slots, held, pending).await;
        let expected: Vec<String> = (0..10).map(|index| index.to_string()).collect();
        assert_eq!(order, expected);
    }

    #[tokio::test]
    async fn a_tenant_over_its_job_quota_is_refused_with_its_message() {
        let slots = FairSlots::new(2, 64);
        let running = slots.acquire("acme", Some(3)).await.expect("under quota");
        let _other = now(&slots, "other").await;
        // The quota counts waiting jobs too.
        let mut second = Box::pin(slots.acquire("acme", Some(3)));
        assert!(poll_once(&mut second).await.is_none());
        let mut third = Box::pin(slots.acquire("acme", Some(3)));
        assert!(poll_once(&mut third).await.is_none());
        let refused = refusal(&slots, "acme", Some(3)).await;
        assert_eq!(
            refused,
            Refused::TenantJobs {
                tenant: "acme".to_owned(),
                limit: 3
            }
        );
        assert_eq!(
            refused.to_string(),
            "tenant \"acme\" is over its quota of 3 concurrent jobs on this worker"
        );
        // Another tenant is not affected, and the tenant has room again once a job ends.
        let mut beta = Box::pin(slots.acquire("beta", Some(3)));
        assert!(
            poll_once(&mut beta).await.is_none(),
            "beta waits, not refused"
        );
        drop(second);
        let mut again = Box::pin(slots.acquire("acme", Some(3)));
        assert!(poll_once(&mut again).await.is_none(), "acme waits again");
        drop((third, again, beta, running));
        // A quota of 0 refuses even with a slot free.
        assert_eq!(
            refusal(&slots, "acme", Some(0)).await,
            Refused::TenantJobs {
                tenant: "acme".to_owned(),
                limit: 0
            }
        );
        slots.check();
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_with_its_message() {
        let slots = FairSlots::new(1, 3);
        let held = now(&slots, "a").await;
        let first = queued(&slots, "a").await;
        let _second = queued(&slots, "b").await;
        let _third = queued(&slots, "c").await;
        let refused = refusal(&slots, "d", None).await;
        assert_eq!(refused, Refused::QueueFull { queued: 3 });
        assert_eq!(refused.to_string(), "worker queue full (3 waiting)");
        drop(first);
        let _fourth = queued(&slots, "d").await;
        assert_eq!(slots.waiting(), 3);
        drop(held);
        slots.check();
        // With no queue at all, a job runs at once or is refused.
        let unqueued = FairSlots::new(1, 0);
        let _running = now(&unqueued, "a").await;
        assert_eq!(
            refusal(&unqueued, "b", None).await,
            Refused::QueueFull { queued: 0 }
        );
    }

    #[tokio::test]
    async fn dropping_a_waiting_acquire_withdraws_it() {
        let slots = FairSlots::new(1, 8);
        let held = now(&slots, "x").await;
        let dropped = queued(&slots, "a").await;
        let mut next = queued(&slots, "b").await;
        assert_eq!(slots.waiting(), 2);
        drop(dropped);
        assert_eq!(slots.waiting(), 1);
        slots.check();
        drop(held);
        let slot = poll_once(&mut next)
            .await
            .expect("the slot skips the withdrawn waiter")
            .expect("no quota");
        assert_eq!(slot.tenant(), "b");
        assert_eq!((slots.running("a"), slots.running("b")), (0, 1));
        drop(slot);
        assert_eq!(slots.tenant_count(), 0);
    }

    #[tokio::test]
    async fn dropping_an_acquire_just_granted_its_slot_hands_the_slot_on() {
        let slots = FairSlots::new(1, 8);
        let held = now(&slots, "x").await;
        let granted_unseen = queued(&slots, "b").await;
        let mut next = queued(&slots, "c").await;
        // The slot is sent to b's waiter; b's future never sees it.
        drop(held);
        assert_eq!(slots.running("b"), 1, "the slot is in flight to b");
        assert_eq!(slots.waiting(), 1);
        slots.check();
        drop(granted_unseen);
        assert_eq!(slots.running("b"), 0, "the dropped future's slot is freed");
        let slot = poll_once(&mut next)
            .await
            .expect("and handed on")
            .expect("no quota");
        assert_eq!(slot.tenant(), "c");
        slots.check();
        drop(slot);
        assert_eq!((slots.running_total(), slots.tenant_count()), (0, 0));
    }

    #[tokio::test]
    async fn a_hand_over_to_a_vanished_waiter_is_undone() {
        // Reached only if a receiver goes before its waiter is withdrawn; `acquire` withdraws
        // first, so the state is driven by hand here.
        let slots = FairSlots::new(1, 8);
        let held = now(&slots, "x").await;
        let admitted = lock(&slots.shared).admit(&slots.shared, "gone", None);
        let Ok(Admission::Queued { receiver, .. }) = admitted else {
            panic!("the slot is held, so the request queues");
        };
        drop(receiver);
        let mut next = queued(&slots, "c").await;
        drop(held);
        let slot = poll_once(&mut next)
            .await
            .expect("the slot passes the vanished waiter")
            .expect("no quota");
        assert_eq!(slot.tenant(), "c");
        assert_eq!(slots.running("gone"), 0);
        slots.check();
        drop(slot);
        assert_eq!((slots.running_total(), slots.tenant_count()), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timeouts_and_selects_racing_grants_leak_no_slot() {
        let slots = FairSlots::new(2, 1024);
        let mut tasks = Vec::new();
        for seed in 1..=4_u64 {
            let slots = slots.clone();
            #[allow(clippy::disallowed_methods)] // a test's own tasks
            tasks.push(tokio::spawn(async move {
                let mut random = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let mut granted = 0_u32;
                for _ in 0..300 {
                    let tenant = ["a", "b", "c"][random.below(3)];
                    let slot = if random.below(2) == 0 {
                        let wait = Duration::from_micros(random.next() % 1500);
                        tokio::time::timeout(wait, slots.acquire(tenant, Some(8)))
                            .await
                            .ok()
                            .and_then(Result::ok)
                    } else {
                        let mut yields = random.below(3);
                        tokio::select! {
                            slot = slots.acquire(tenant, Some(8)) => slot.ok(),
                            () = async {
                                while yields > 0 {
                                    yields -= 1;
                                    tokio::task::yield_now().await;
                                }
                            } => None,
                        }
                    };
                    if let Some(slot) = slot {
                        granted += 1;
                        if random.below(2) == 0 {
                            tokio::time::sleep(Duration::from_micros(random.next() % 500)).await;
                        } else {
                            tokio::task::yield_now().await;
                        }
                        drop(slot);
                    }
                }
                granted
            }));
        }
        let mut granted = 0;
        for task in tasks {
            granted += task.await.expect("the task ends");
        }
        assert!(granted > 0, "some acquires won their race");
        slots.check();
        assert_eq!((slots.running_total(), slots.waiting()), (0, 0));
        assert_eq!(slots.tenant_count(), 0);
        let _first = now(&slots, "a").await;
        let _second = now(&slots, "b").await;
    }

    #[tokio::test]
    async fn random_interleavings_leak_no_slot() {
        const TENANTS: [&str; 4] = ["a", "b", "c", "d"];
        for seed in 1..=40_u64 {
            let mut random = XorShift(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
            let capacity = 1 + random.below(4);
            let slots = FairSlots::new(capacity, random.below(10));
            let mut pending: Vec<(String, Acquire<'_>)> = Vec::new();
            let mut held: Vec<Slot> = Vec::new();
            for step in 0..400 {
                match random.below(6) {
                    0 | 1 => {
                        let tenant = TENANTS[random.below(TENANTS.len())];
                        let quota = match random.below(3) {
                            0 => None,
                            _ => Some(u32::try_from(random.below(5)).expect("small")),
                        };
                        let mut acquire: Acquire<'_> = Box::pin(slots.acquire(tenant, quota));
                        match poll_once(&mut acquire).await {
                            Some(Ok(slot)) => held.push(slot),
                            Some(Err(_)) => {}
                            None => pending.push((tenant.to_owned(), acquire)),
                        }
                    }
                    2 if !pending.is_empty() => {
                        drop(pending.swap_remove(random.below(pending.len())));
                    }
                    3 if !held.is_empty() => {
                        drop(held.swap_remove(random.below(held.len())));
                    }
                    4 if !held.is_empty() && !pending.is_empty() => {
                        // A slot freed and handed to a waiter whose future is then dropped
                        // unpolled: granted at the moment of cancellation.
                        drop(held.swap_remove(random.below(held.len())));
                        drop(pending.swap_remove(random.below(pending.len())));
                    }
                    _ => {
                        for (_, slot) in granted(&mut pending).await {
                            held.push(slot);
                        }
                        let running = slots.running_total() as usize;
                        assert_eq!(
                            running,
                            held.len(),
                            "seed {seed} step {step}: every slot is held"
                        );
                        assert!(
                            running == capacity || pending.is_empty(),
                            "seed {seed} step {step}: no one waits beside a free slot"
                        );
                    }
                }
                slots.check();
                let running = slots.running_total() as usize;
                assert!(running <= capacity);
                assert!(
                    running >= held.len() && running - held.len() <= pending.len(),
                    "seed {seed} step {step}: slots not held are in flight to waiters"
                );
                assert_eq!(
                    slots.waiting() as usize + (running - held.len()),
                    pending.len()
                );
            }
            drop(pending);
            drop(held);
            slots.check();
            assert_eq!(
                (slots.running_total(), slots.waiting()),
                (0, 0),
                "seed {seed}"
            );
            assert_eq!(slots.tenant_count(), 0, "seed {seed}");
            for _ in 0..capacity {
                let _ = now(&slots, "a").await;
            }
        }
    }

    #[tokio::test]
    async fn idle_tenants_leave_the_slot_map() {
        let slots = FairSlots::new(1, 4096);
        let names: Vec<String> = (0..1000).map(|index| format!("tenant-{index}")).collect();
        let held = now(&slots, "x").await;
        let mut waiters = Vec::new();
        for name in &names {
            waiters.push(queued(&slots, name).await);
        }
        assert_eq!(slots.tenant_count(), 1001);
        drop(waiters);
        drop(held);
        for name in &names {
            drop(now(&slots, name).await);
        }
        assert_eq!(slots.tenant_count(), 0);
        slots.check();
    }

    #[test]
    fn the_acquire_future_and_its_slot_can_cross_threads() {
        fn send<T: Send>(_: &T) {}
        let slots = FairSlots::new(1, 1);
        send(&slots.acquire("a", None));
        send(&slots);
    }

    #[test]
    fn bytes_are_held_until_dropped() {
        let bytes = TenantBytes::new(10_000);
        let a = bytes.reserve("a", 3_000, None).expect("fits");
        let b = bytes.reserve("b", 2_000, Some(5_000)).expect("fits");
        let a_more = bytes.reserve("a", 1_000, None).expect("fits");
        assert_eq!((bytes.held("a"), bytes.held("b")), (4_000, 2_000));
        assert_eq!(bytes.held_total(), 6_000);
        drop(a);
        assert_eq!((bytes.held("a"), bytes.held_total()), (1_000, 3_000));
        let empty = bytes.reserve("c", 0, Some(0)).expect("nothing always fits");
        assert_eq!((bytes.held("c"), bytes.tenant_count()), (0, 2));
        drop((b, a_more, empty));
        assert_eq!((bytes.held_total(), bytes.tenant_count()), (0, 0));
    }

    #[test]
    fn a_tenant_over_its_byte_quota_is_refused_with_its_message() {
        let bytes = TenantBytes::new(1 << 20);
        let first = bytes
            .reserve("acme", 600, Some(1_000))
            .expect("under quota");
        let _second = bytes
            .reserve("acme", 400, Some(1_000))
            .expect("up to the quota");
        let refused = bytes
            .reserve("acme", 1, Some(1_000))
            .expect_err("one byte over");
        assert_eq!(
            refused,
            Refused::TenantBytes {
                tenant: "acme".to_owned(),
                limit: 1_000
            }
        );
        assert_eq!(
            refused.to_string(),
            "tenant \"acme\" is over its quota of 1000 bytes of sources in flight on this worker"
        );
        assert_eq!(bytes.held("acme"), 1_000, "a refusal holds nothing");
        let _other = bytes
            .reserve("other", 1_000, Some(1_000))
            .expect("another tenant");
        drop(first);
        let _again = bytes.reserve("acme", 600, Some(1_000)).expect("room again");
        assert!(matches!(
            bytes.reserve("acme", u64::MAX, Some(u64::MAX)),
            Err(Refused::TenantBytes { .. })
        ));
    }

    #[test]
    fn the_worker_byte_budget_is_refused_with_its_message() {
        let bytes = TenantBytes::new(5_000);
        let a = bytes.reserve("a", 3_000, None).expect("fits");
        let _b = bytes
            .reserve("b", 2_000, Some(10_000))
            .expect("fits exactly");
        let refused = bytes.reserve("c", 1, None).expect_err("the budget is full");
        assert_eq!(refused, Refused::WorkerBytes { limit: 5_000 });
        assert_eq!(
            refused.to_string(),
            "worker is over its budget of 5000 bytes of sources in flight"
        );
        assert_eq!((bytes.held("c"), bytes.held_total()), (0, 5_000));
        drop(a);
        let _c = bytes.reserve("c", 3_000, None).expect("room again");
        assert_eq!(
            bytes
                .reserve("d", u64::MAX, None)
                .expect_err("never more than the budget"),
            Refused::WorkerBytes { limit: 5_000 }
        );
    }

    #[test]
    fn idle_tenants_leave_the_byte_map() {
        let bytes = TenantBytes::new(u64::MAX);
        let held: Vec<BytesHeld> = (0..1000)
            .map(|index| {
                bytes
                    .reserve(&format!("tenant-{index}"), 10, Some(10))
                    .expect("fits")
            })
            .collect();
        assert_eq!(bytes.tenant_count(), 1000);
        drop(held);
        assert_eq!((bytes.tenant_count(), bytes.held_total()), (0, 0));
    }
}
