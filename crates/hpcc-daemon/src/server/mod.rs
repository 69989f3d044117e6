//! The daemon's server: the process that serves lookups for every wrapper using one cache.
//!
//! Threads, not async: every request is a few milliseconds of file-system work, connections are
//! local and few (one per running compile), and the cache code it shares with the wrapper is
//! synchronous. Connection threads accept for themselves, one always waiting, so a hit costs no
//! hand-off (`accept`; at most [`MAX_CONNECTIONS`] at once); one thread does the housekeeping and
//! one waits for signals.
//!
//! A connection starts with `Hello`: the protocol version and, on TCP, the 32-byte token from the
//! 0600 endpoint file, compared in constant time. A wrong version or token, a frame over
//! `MAX_FRAME_LEN` (refused before anything is allocated) or an undecodable message gets a
//! `Refused` reply where possible and the connection is closed; other connections are untouched.
//!
//! **A compile request** (`compile`) rebuilds the caller (directory, environment, umask,
//! terminal) from the request and runs a lookup-only job with the daemon's warm state. A hit
//! writes the outputs and replies with what to print. A miss names its key; the first request
//! under a key leads a flight (`flights`): it takes a slot (`slots`, `daemon.max_jobs`) and replies
//! `COMPILE_HERE`, or compiles on the farm; later ones wait for the flight to land, then look up
//! again (normally a hit) or, if the leader's compile failed, reply `SHARED_FAILURE` with its exit
//! code and diagnostics. A leader whose result was not stored leaves the next round to lead again,
//! for a few rounds, then each compiles by itself. Waiting requests send `Waiting` every second;
//! the wrapper gives up after `reply_timeout_ms` without a frame.
//!
//! The leader's `Finish` (or its connection closing) frees the slot and lands the flight; after a
//! stored one the daemon reads the manifest and its newest result into the memory tier, so the
//! next build's first hit comes from memory, and queues them for the remote tiers. A compile is
//! the last request of its connection: the daemon closes it after the reply (after `COMPILE_HERE`,
//! after the `Finish` reply), which spares its thread a wake-up for the wrapper's close.
//!
//! **Lifecycle.** The lock file (`try_lock`, retried briefly because wrappers probe it with a
//! shared lock) makes one daemon per endpoint: a second one exits 0 saying which pid runs, and
//! the winner removes a socket left by a killed predecessor. The housekeeping thread drains the
//! upload journal, writes the statistics summed in memory once a second (and on `FlushStats`,
//! which `hpcc stats` sends), and stops the daemon after `idle_timeout` seconds with no
//! connection. SIGTERM and SIGINT stop it as `hpcc stop` does: requests being served finish, the
//! upload queue is written (at most 10 s) and statistics are flushed.
//!
//! By concern: here, the daemon's state, its lifecycle and one connection's request loop;
//! `accept` (listening and connection threads), `compile` (one compile request), `flights`
//! (identical compiles in flight), `slots` (compiles at once).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use constant_time_eq::constant_time_eq;
use hpcc_core::digest::Digest;
use hpcc_proto::daemon::{
    hello_reply, reply, request, FlushStatsReply, Hello, HelloReply, Refused, Request, StatusReply,
    StopReply, Welcome,
};
use hpcc_proto::DAEMON_PROTOCOL_VERSION;
use hpcc_store::{DiskStore, MemoryTier};

use hpcc_cache::cache;
use hpcc_cache::hot::HotFiles;
use hpcc_cache::ipc::{Connection, Endpoint, ReceiveError};
use hpcc_cache::settings::Settings;
use hpcc_cache::stats;

use crate::farm_service::FarmService;
use crate::remote::Remote;
use crate::wire::reply_of;

mod accept;
mod compile;
mod flights;
mod slots;

use accept::{bind, refuse};
use compile::Served;
use flights::{Flight, Landing};
use slots::Slots;

/// Connections served at once; more are refused (their wrappers compile by themselves).
const MAX_CONNECTIONS: usize = 512;
/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may sit between requests; a wrapper compiling under a slot may take
/// this long before it finishes.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often a waiting request tells its wrapper that the daemon is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a stopping daemon waits for queued uploads to be written.
const UPLOAD_FLUSH: Duration = Duration::from_secs(10);
/// How often statistics are written to the cache directory.
const STATS_FLUSH: Duration = Duration::from_secs(1);

/// Runs the daemon in the foreground until it is stopped or idle. A second daemon for the same
/// endpoint exits at once, successfully, saying which one runs.
pub fn run(settings: Settings) -> Result<()> {
    let endpoint = Endpoint::for_settings(&settings)?;
    let lock_path = endpoint.lock_file();
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("opening {lock_path:?}"))?;
    // A wrapper checking whether a daemon runs holds a shared lock for a moment; only a lock
    // held throughout a few tries belongs to another daemon.
    let mut tries = 0;
    let locked = loop {
        match lock.try_lock() {
            Err(fs::TryLockError::WouldBlock) if tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => break other,
        }
    };
    match locked {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let pid = fs::read_to_string(&lock_path).unwrap_or_default();
            eprintln!(
                "hpcc daemon: already running (pid {}) for {}",
                pid.trim(),
                settings.cache_dir.display()
            );
            return Ok(());
        }
        Err(fs::TryLockError::Error(error)) => {
            return Err(error).with_context(|| format!("locking {lock_path:?}"))
        }
    }
    lock.set_len(0).ok();
    fs::write(&lock_path, std::process::id().to_string()).ok();
    // The working directory stays pinned while the daemon lives; the root never goes away.
    let _ = std::env::set_current_dir("/");

    let store = DiskStore::open(&settings.cache_dir, settings.disk_config())
        .with_context(|| format!("opening cache {:?}", settings.cache_dir))?;
    let max_jobs = match settings.config.daemon.max_jobs {
        0 => std::thread::available_parallelism().map_or(2, usize::from),
        jobs => usize::try_from(jobs).unwrap_or(usize::MAX),
    };
    let remote = Remote::start(&settings.config.remote).context("opening the remote stores")?;
    let farm = settings
        .config
        .remote_compile
        .as_ref()
        .map(FarmService::start)
        .transpose()?;
    let (listener, endpoint_text, token) = bind(&endpoint, settings.config.daemon.transport)?;
    let daemon = Arc::new(Daemon {
        store,
        memory: MemoryTier::new(
            usize::try_from(settings.config.daemon.memory_cache.0).unwrap_or(usize::MAX),
        ),
        manifests: cache::ManifestCache::default(),
        hot: HotFiles::new(),
        remote,
        farm,
        slots: Slots::new(max_jobs),
        flights: Mutex::new(HashMap::new()),
        counts: Mutex::new(BTreeMap::new()),
        totals: Arc::new(Mutex::new(BTreeMap::new())),
        started: Instant::now(),
        requests: AtomicU64::new(0),
        waiting: AtomicU64::new(0),
        connections: AtomicUsize::new(0),
        last_activity: Mutex::new(Instant::now()),
        stopping: AtomicBool::new(false),
        stop_signal: Mutex::new(false),
        stop_requested: Condvar::new(),
        endpoint_text,
        token,
        settings,
        endpoint: endpoint.clone(),
    });
    eprintln!(
        "hpcc daemon {} (pid {}) serving {} on {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        daemon.settings.cache_dir.display(),
        daemon.endpoint_text
    );
    if let Some(listen) = &daemon.settings.config.daemon.metrics_listen {
        let address = crate::metrics::listen_address(listen)?;
        let bound = crate::metrics::start(
            address,
            crate::metrics::DaemonMetrics::default(),
            Arc::clone(&daemon.totals),
        )?;
        eprintln!("hpcc daemon metrics on http://{bound}/metrics");
    }
    {
        let daemon = Arc::clone(&daemon);
        std::thread::Builder::new()
            .name("housekeeping".into())
            .spawn(move || daemon.housekeeping())
            .context("starting the housekeeping thread")?;
    }
    {
        // SIGTERM (systemd, `kill`) and SIGINT (Ctrl-C in the foreground) stop the daemon the
        // way `hpcc stop` does, so queued uploads are written and statistics flushed.
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])
        .context("installing signal handlers")?;
        let daemon = Arc::clone(&daemon);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    eprintln!("hpcc daemon: signal {signal}, stopping");
                    daemon.stop();
                }
            })
            .context("starting the signal thread")?;
    }
    listener.serve(&daemon);
    daemon.shut_down();
    drop(lock);
    Ok(())
}

struct Daemon {
    settings: Settings,
    endpoint: Endpoint,
    endpoint_text: String,
    token: Option<Vec<u8>>,
    store: DiskStore,
    memory: MemoryTier,
    manifests: cache::ManifestCache,
    hot: HotFiles,
    /// The remote tiers, when `[[remote]]` stores are configured.
    remote: Option<Remote>,
    /// The farm, when `[remote_compile]` is configured.
    farm: Option<FarmService>,
    slots: Slots,
    flights: Mutex<HashMap<Digest, Arc<Flight>>>,
    counts: Mutex<BTreeMap<String, u64>>,
    /// What `counts` held since the daemon started, for the metrics endpoint.
    totals: Arc<Mutex<BTreeMap<String, u64>>>,
    started: Instant,
    requests: AtomicU64,
    waiting: AtomicU64,
    connections: AtomicUsize,
    last_activity: Mutex<Instant>,
    stopping: AtomicBool,
    /// Set (and `stop_requested` notified) when the daemon is to stop.
    stop_signal: Mutex<bool>,
    stop_requested: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every structure behind these locks stays consistent between statements; a panicking
    // connection thread must not take the daemon down with it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Daemon {
    fn touch(&self) {
        *lock(&self.last_activity) = Instant::now();
    }

    fn count(&self, name: &str, value: u64) {
        if self.settings.config.stats {
            *lock(&self.counts).entry(name.to_owned()).or_default() += value;
            *lock(&self.totals).entry(name.to_owned()).or_default() += value;
        }
    }

    fn flush_stats(&self) {
        if let Some(remote) = &self.remote {
            for (name, value) in remote.drain_stats() {
                self.count(&name, value);
            }
        }
        if let Some(farm) = &self.farm {
            let hits = farm.drain_worker_hits();
            if hits > 0 {
                self.count(stats::names::REMOTE_WORKER_HIT, hits);
            }
        }
        let counts = std::mem::take(&mut *lock(&self.counts));
        if counts.is_empty() {
            return;
        }
        let pairs: Vec<(&str, u64)> = counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        if let Err(error) = stats::add(&self.settings.cache_dir, &pairs) {
            tracing::warn!("cannot record statistics: {error:#}");
        }
    }

    fn housekeeping(self: Arc<Daemon>) {
        let idle = match self.settings.config.daemon.idle_timeout {
            0 => None,
            seconds => Some(Duration::from_secs(seconds)),
        };
        loop {
            self.drain_journal();
            std::thread::sleep(STATS_FLUSH);
            self.flush_stats();
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            if let Some(idle) = idle {
                let quiet = lock(&self.last_activity).elapsed();
                if quiet >= idle && self.connections.load(Ordering::SeqCst) == 0 {
                    eprintln!("hpcc daemon: idle for {}s, exiting", quiet.as_secs());
                    self.stop();
                    return;
                }
            }
        }
    }

    /// Queues what wrappers journaled while they compiled without this daemon (with remote
    /// tiers only).
    fn drain_journal(&self) {
        if let Some(remote) = &self.remote {
            remote.drain_journal(&self.store, &self.settings.cache_dir);
        }
    }

    /// Stops the daemon: the main thread wakes and shuts down; threads waiting in `accept`
    /// end with the process.
    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        *lock(&self.stop_signal) = true;
        self.stop_requested.notify_all();
    }

    fn shut_down(&self) {
        let _ = fs::remove_file(self.endpoint.socket());
        let _ = fs::remove_file(self.endpoint.tcp_file());
        // Requests being served finish (hits being written); wrappers compiling under a slot
        // need nothing more from us.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.requests_in_progress() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.drain_journal();
        if let Some(remote) = &self.remote {
            let queued = remote.queued_bytes();
            if !remote.flush(UPLOAD_FLUSH) {
                eprintln!(
                    "hpcc daemon: {queued} bytes of uploads were not all written within {}s",
                    UPLOAD_FLUSH.as_secs()
                );
            }
        }
        self.flush_stats();
        eprintln!("hpcc daemon: stopped");
    }

    fn requests_in_progress(&self) -> usize {
        self.connections
            .load(Ordering::SeqCst)
            .saturating_sub(self.slots.in_use())
    }

    fn handle(&self, mut connection: Connection) {
        let _ = connection.set_read_timeout(Some(HELLO_TIMEOUT));
        let _ = connection.set_write_timeout(Some(Duration::from_secs(10)));
        let hello = match connection.receive::<Hello>() {
            Ok(hello) => hello,
            Err(ReceiveError::Closed) => return,
            Err(error) => {
                tracing::debug!("bad hello: {error}");
                refuse(connection, &format!("bad hello frame: {error}"));
                return;
            }
        };
        if hello.protocol_version != DAEMON_PROTOCOL_VERSION {
            refuse(
                connection,
                &format!(
                    "protocol version {} is not the daemon's {DAEMON_PROTOCOL_VERSION}",
                    hello.protocol_version
                ),
            );
            return;
        }
        if let Some(token) = &self.token {
            if !constant_time_eq(token, &hello.token) {
                refuse(connection, "wrong token");
                return;
            }
        }
        let welcome = HelloReply {
            reply: Some(hello_reply::Reply::Welcome(Welcome {
                protocol_version: DAEMON_PROTOCOL_VERSION,
                daemon_version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
            })),
        };
        if connection.send(&welcome).is_err() {
            return;
        }
        let _ = connection.set_read_timeout(Some(IDLE_CONNECTION_TIMEOUT));
        loop {
            let request = match connection.receive::<Request>() {
                Ok(request) => request,
                Err(ReceiveError::Closed) => return,
                Err(error) => {
                    tracing::debug!("bad request: {error}");
                    let _ = connection.send(&reply_of(reply::Kind::Refused(Refused {
                        reason: format!("bad request frame: {error}"),
                    })));
                    return;
                }
            };
            self.touch();
            let kind = match request.kind {
                Some(kind) => kind,
                None => {
                    let _ = connection.send(&reply_of(reply::Kind::Refused(Refused {
                        reason: "empty request".into(),
                    })));
                    return;
                }
            };
            match kind {
                request::Kind::Compile(compile) => {
                    self.requests.fetch_add(1, Ordering::Relaxed);
                    match self.compile(&mut connection, compile) {
                        Served::Reply(reply) => {
                            // A compile ends its connection: closing now spares this thread a
                            // wake-up for the wrapper's close.
                            let _ = connection.send(&reply_of(reply::Kind::Compile(reply)));
                            return;
                        }
                        Served::Leased(flight) => {
                            self.await_finish(&mut connection, flight);
                            return;
                        }
                        Served::Gone => return,
                    }
                }
                request::Kind::Status(_) => {
                    let (hot_files, watched_dirs) = self.hot.counts();
                    let status = StatusReply {
                        pid: std::process::id(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        uptime_ms: u64::try_from(self.started.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                        requests: self.requests.load(Ordering::Relaxed),
                        compiles_running: self.slots.in_use() as u64,
                        max_jobs: self.slots.max as u64,
                        waiting: self.waiting.load(Ordering::Relaxed),
                        hot_files: hot_files as u64,
                        watched_dirs: watched_dirs as u64,
                        endpoint: self.endpoint_text.clone(),
                        cache_dir: self.settings.cache_dir.display().to_string(),
                    };
                    if connection
                        .send(&reply_of(reply::Kind::Status(status)))
                        .is_err()
                    {
                        return;
                    }
                }
                request::Kind::FlushStats(_) => {
                    self.flush_stats();
                    if connection
                        .send(&reply_of(reply::Kind::FlushStats(FlushStatsReply {})))
                        .is_err()
                    {
                        return;
                    }
                }
                request::Kind::Stop(_) => {
                    let _ = connection.send(&reply_of(reply::Kind::Stop(StopReply {})));
                    self.stop();
                    return;
                }
                request::Kind::Finish(_) => {
                    let _ = connection.send(&reply_of(reply::Kind::Refused(Refused {
                        reason: "finish without a compile slot".into(),
                    })));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token check relies on the crate refusing a length mismatch (the length is not secret)
    /// and comparing every byte otherwise.
    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
