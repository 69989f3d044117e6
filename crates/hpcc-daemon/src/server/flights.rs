//! In-flight deduplication: identical compiles that arrive while one runs wait for it (with
//! heartbeats to their wrappers), then look it up again or share its failure.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use hpcc_core::digest::Digest;
use hpcc_proto::daemon::{compile_reply, reply, request, CompileReply, FinishReply, Request};

use hpcc_cache::ipc::Connection;

use super::{lock, Daemon, Served, HEARTBEAT};
use crate::wire::{heartbeat, reply_of};

/// A compile some wrapper is running, that identical requests wait for.
pub(super) struct Flight {
    pub(super) done: Mutex<Option<Landing>>,
    pub(super) landed: Condvar,
}

/// How a compile in flight ended.
#[derive(Clone)]
pub(super) enum Landing {
    /// Stored (or at least finished without failing): look it up again.
    Finished,
    /// Failed: share its exit code and diagnostics.
    Failed {
        exit: i32,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
}

impl Daemon {
    /// Waits for a flight to land, with heartbeats; `None` if the wrapper went away.
    pub(super) fn wait_for(&self, connection: &mut Connection, flight: &Flight) -> Option<Landing> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let landing = loop {
            {
                let done = lock(&flight.done);
                let (done, _) = flight
                    .landed
                    .wait_timeout_while(done, HEARTBEAT, |done| done.is_none())
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(landing) = done.as_ref() {
                    break Some(landing.clone());
                }
            }
            // Not under the lock: a slow wrapper must not delay the landing.
            if !heartbeat(connection) {
                break None;
            }
        };
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        landing
    }

    /// Takes a compile slot and tells the wrapper to compile.
    pub(super) fn lease(
        &self,
        connection: &mut Connection,
        flight: Option<(Digest, Arc<Flight>)>,
    ) -> Served {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let acquired = self.slots.acquire(|| heartbeat(connection));
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let reply = reply_of(reply::Kind::Compile(CompileReply {
            outcome: compile_reply::Outcome::CompileHere.into(),
            ..CompileReply::default()
        }));
        if !acquired {
            self.land(flight, Landing::Finished);
            return Served::Gone;
        }
        if connection.send(&reply).is_err() {
            self.slots.release();
            self.land(flight, Landing::Finished);
            return Served::Gone;
        }
        Served::Leased(flight)
    }

    /// Holds the slot until the wrapper says it finished (or goes away), then wakes waiters.
    pub(super) fn await_finish(
        &self,
        connection: &mut Connection,
        flight: Option<(Digest, Arc<Flight>)>,
    ) {
        let landing = match connection.receive::<Request>() {
            Ok(Request {
                kind: Some(request::Kind::Finish(finish)),
            }) => {
                for count in &finish.counts {
                    // Names come from our own wrapper; still, keep them to what stats can hold.
                    if count.name.len() <= 128 && !count.name.contains(['\n', ' ']) {
                        self.count(&count.name, count.value);
                    }
                }
                let _ = connection.send(&reply_of(reply::Kind::Finish(FinishReply {})));
                if finish.failed {
                    Landing::Failed {
                        exit: finish.exit_code,
                        stdout: finish.stdout,
                        stderr: finish.stderr,
                    }
                } else {
                    Landing::Finished
                }
            }
            _ => Landing::Finished,
        };
        let stored = matches!(landing, Landing::Finished);
        let key = flight.as_ref().map(|(key, _)| *key);
        self.slots.release();
        self.land(flight, landing);
        if let (true, Some(key)) = (stored, key) {
            self.preload(&key);
        }
    }

    /// Reads what a wrapper just stored under `key` (a direct-mode manifest and its newest
    /// result, or a preprocessor-mode result) into the memory tier, so that the next build's
    /// first hit on it is served from memory. Best effort: this wrapper has its reply already.
    ///
    /// With remote tiers, the same entries are queued for upload.
    pub(super) fn preload(&self, key: &Digest) {
        use hpcc_store::{Fetched, Kind};
        let upload = |kind: Kind, key: &Digest| {
            if let Some(remote) = &self.remote {
                remote.upload(&self.store, kind, key);
            }
        };
        match self.memory.get(&self.store, Kind::Manifest, key) {
            Ok(Fetched::Hit(bytes)) => {
                if let Ok(manifest) = hpcc_core::manifest::Manifest::decode(&bytes) {
                    // `Manifest::add` puts the newest entry first.
                    if let Some(entry) = manifest.entries.first() {
                        let _ = self.memory.get(&self.store, Kind::Result, &entry.result);
                        upload(Kind::Result, &entry.result);
                    }
                }
                upload(Kind::Manifest, key);
            }
            _ => {
                let _ = self.memory.get(&self.store, Kind::Result, key);
                upload(Kind::Result, key);
            }
        }
    }

    pub(super) fn land(&self, flight: Option<(Digest, Arc<Flight>)>, landing: Landing) {
        if let Some((key, flight)) = flight {
            lock(&self.flights).remove(&key);
            *lock(&flight.done) = Some(landing);
            flight.landed.notify_all();
        }
    }
}
