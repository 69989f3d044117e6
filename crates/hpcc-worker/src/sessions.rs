//! Warm sessions: one per (tenant, image), reused by that tenant's jobs with that image and
//! never by anyone else's. A session idle for the idle TTL, or older than the maximum TTL, is
//! stopped once no job uses it; a session past its maximum TTL takes no new jobs (a new one is
//! started). [`SessionPool::reap`] is called periodically with the time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hpcc_runtime::{AgentStream, Runtime, RuntimeError, Session, SessionSpec};
use tokio::sync::{Mutex, RwLock};

/// A session shared by jobs: `connect` takes a read lock for a moment, `stop` the write lock.
pub struct Shared {
    session: RwLock<Option<Box<dyn Session>>>,
    id: String,
}

impl Shared {
    /// The session's id.
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

    async fn stop(&self) {
        if let Some(session) = self.session.write().await.take() {
            if let Err(error) = session.stop().await {
                tracing::warn!(session = %self.id, %error, "stopping a session");
            }
        }
    }
}

struct Entry {
    shared: Arc<Shared>,
    started: Instant,
    last_used: Instant,
    active: usize,
}

/// A job's hold on a session; released with [`SessionPool::release`].
pub struct Lease {
    /// The session.
    pub shared: Arc<Shared>,
    key: (String, String),
}

/// The warm sessions of one worker.
pub struct SessionPool {
    runtime: Arc<dyn Runtime>,
    entries: Mutex<HashMap<(String, String), Vec<Entry>>>,
    idle_ttl: Duration,
    max_ttl: Duration,
}

impl SessionPool {
    /// A pool starting sessions with `runtime`.
    pub fn new(runtime: Arc<dyn Runtime>, idle_ttl: Duration, max_ttl: Duration) -> SessionPool {
        SessionPool {
            runtime,
            entries: Mutex::new(HashMap::new()),
            idle_ttl,
            max_ttl,
        }
    }

    /// The runtime's name.
    pub fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    /// A session for `spec`'s tenant and image: the warm one, or a new one.
    pub async fn lease(&self, spec: &SessionSpec, now: Instant) -> Result<Lease, RuntimeError> {
        let key = (spec.tenant.clone(), spec.image_digest.clone());
        {
            let mut entries = self.entries.lock().await;
            if let Some(entry) = entries.get_mut(&key).and_then(|list| {
                list.iter_mut()
                    .find(|entry| now.duration_since(entry.started) < self.max_ttl)
            }) {
                entry.active += 1;
                entry.last_used = now;
                return Ok(Lease {
                    shared: Arc::clone(&entry.shared),
                    key,
                });
            }
        }
        // Started outside the lock: a slow start must not hold up other tenants' jobs. Two
        // jobs racing here may start two sessions; both are used and reaped.
        let session = self.runtime.start(spec).await?;
        let shared = Arc::new(Shared {
            id: session.id().to_owned(),
            session: RwLock::new(Some(session)),
        });
        let mut entries = self.entries.lock().await;
        entries.entry(key.clone()).or_default().push(Entry {
            shared: Arc::clone(&shared),
            started: now,
            last_used: now,
            active: 1,
        });
        Ok(Lease { shared, key })
    }

    /// Ends a job's hold.
    pub async fn release(&self, lease: Lease, now: Instant) {
        let mut entries = self.entries.lock().await;
        if let Some(entry) = entries.get_mut(&lease.key).and_then(|list| {
            list.iter_mut()
                .find(|entry| Arc::ptr_eq(&entry.shared, &lease.shared))
        }) {
            entry.active = entry.active.saturating_sub(1);
            entry.last_used = now;
        }
    }

    /// Stops sessions that are idle past the idle TTL or older than the maximum TTL and
    /// unused; returns how many were stopped.
    pub async fn reap(&self, now: Instant) -> usize {
        let mut stopping = Vec::new();
        {
            let mut entries = self.entries.lock().await;
            for list in entries.values_mut() {
                list.retain(|entry| {
                    let expired = now.duration_since(entry.last_used) >= self.idle_ttl
                        || now.duration_since(entry.started) >= self.max_ttl;
                    if expired && entry.active == 0 {
                        stopping.push(Arc::clone(&entry.shared));
                        false
                    } else {
                        true
                    }
                });
            }
            entries.retain(|_, list| !list.is_empty());
        }
        let count = stopping.len();
        for shared in stopping {
            shared.stop().await;
        }
        count
    }

    /// Stops every session (shutdown).
    pub async fn stop_all(&self) {
        let all: Vec<Arc<Shared>> = {
            let mut entries = self.entries.lock().await;
            entries
                .drain()
                .flat_map(|(_, list)| list.into_iter().map(|entry| entry.shared))
                .collect()
        };
        for shared in all {
            shared.stop().await;
        }
    }

    /// Images with a warm session, for heartbeats.
    pub async fn warm_images(&self) -> Vec<String> {
        let entries = self.entries.lock().await;
        let mut images: Vec<String> = entries.keys().map(|(_, image)| image.clone()).collect();
        images.sort();
        images.dedup();
        images
    }

    /// Sessions running now.
    pub async fn running(&self) -> usize {
        self.entries.lock().await.values().map(Vec::len).sum()
    }
}
