//! The daemon's server: the process that serves lookups for every wrapper using one cache.
//!
//! Threads, not async: every request is a few milliseconds of file-system work, connections are
//! local and few (one per running compile), and the cache code it shares with the wrapper is
//! synchronous. One thread accepts; each connection gets a thread (at most
//! [`MAX_CONNECTIONS`]); one thread flushes statistics and watches for idleness.
//!
//! A connection starts with `Hello` (protocol version, and the token on TCP). Anything wrong
//! there, or any frame that is too large or undecodable, gets a `Refused` reply where possible
//! and the connection is closed; other connections are untouched.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::net::TcpListener;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hpcc_core::args::{self, Classification};
use hpcc_core::config::Transport;
use hpcc_core::digest::Digest;
use hpcc_proto::daemon::{
    compile_reply, hello_reply, reply, request, CompileReply, CompileRequest, FinishReply,
    FlushStatsReply, Hello, HelloReply, Refused, Reply, Request, StatusReply, StopReply, Waiting,
    Welcome,
};
use hpcc_proto::DAEMON_PROTOCOL_VERSION;
use hpcc_store::{DiskStore, MemoryTier};

use hpcc_cli::cache::{self, Outcome};
use hpcc_cli::caller::Caller;
use hpcc_cli::daemon::{write_private, Connection, Endpoint, ReceiveError};
use hpcc_cli::hot::HotFiles;
use hpcc_cli::remote_compile::RemoteCompiler;
use hpcc_cli::settings::Settings;
use hpcc_cli::stats;

use crate::farm_service::FarmService;
use crate::remote::Remote;

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

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn accept(&self) -> std::io::Result<Connection> {
        match self {
            Listener::Unix(listener) => listener.accept().map(|(s, _)| Connection::Unix(s)),
            Listener::Tcp(listener) => listener.accept().map(|(s, _)| Connection::Tcp(s)),
        }
    }

    /// Serves until the daemon stops. Connection threads accept for themselves (the kernel
    /// hands a connection to one of them directly, with no hand-off between threads): there is
    /// always one thread waiting in `accept`, because a thread that accepts the last waiting
    /// place starts another before it serves. A wrapper compiling under a slot holds its
    /// thread for the whole compile, so connections never queue behind busy threads.
    fn serve(self, daemon: &Arc<Daemon>) {
        let pool = Arc::new(Pool {
            listener: self,
            daemon: Arc::clone(daemon),
            accepting: AtomicUsize::new(0),
            threads: AtomicUsize::new(0),
        });
        if !pool.start_thread() {
            return;
        }
        let mut stopping = lock(&daemon.stop_signal);
        while !*stopping {
            stopping = daemon
                .stop_requested
                .wait(stopping)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// The connection threads and the listener they share.
struct Pool {
    listener: Listener,
    daemon: Arc<Daemon>,
    /// Threads waiting in `accept`.
    accepting: AtomicUsize,
    /// Threads alive.
    threads: AtomicUsize,
}

/// Threads kept waiting in `accept` at most; more exit once their connection ends.
const MAX_ACCEPTING: usize = 4;

impl Pool {
    fn start_thread(self: &Arc<Pool>) -> bool {
        if self.threads.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS + MAX_ACCEPTING {
            self.threads.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        let pool = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .spawn(move || pool.run());
        if let Err(error) = spawned {
            tracing::warn!("cannot start a connection thread: {error}");
            self.threads.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    fn run(self: Arc<Pool>) {
        let daemon = &self.daemon;
        loop {
            self.accepting.fetch_add(1, Ordering::SeqCst);
            let accepted = self.listener.accept();
            let still_accepting = self.accepting.fetch_sub(1, Ordering::SeqCst) - 1;
            if daemon.stopping.load(Ordering::SeqCst) {
                break;
            }
            if still_accepting == 0 {
                // Someone must be in `accept` while this thread serves.
                self.start_thread();
            }
            let connection = match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!("accept failed: {error}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            daemon.touch();
            if daemon.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                daemon.connections.fetch_sub(1, Ordering::SeqCst);
                refuse(connection, "too many connections");
                continue;
            }
            daemon.handle(connection);
            daemon.connections.fetch_sub(1, Ordering::SeqCst);
            daemon.touch();
            if self.accepting.load(Ordering::SeqCst) >= MAX_ACCEPTING {
                break;
            }
        }
        self.threads.fetch_sub(1, Ordering::SeqCst);
    }
}

fn refuse(mut connection: Connection, reason: &str) {
    let _ = connection.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = connection.send(&HelloReply {
        reply: Some(hello_reply::Reply::Refused(Refused {
            reason: reason.to_owned(),
        })),
    });
}

/// Binds the listening socket and publishes how to reach it.
fn bind(endpoint: &Endpoint, transport: Transport) -> Result<(Listener, String, Option<Vec<u8>>)> {
    let socket = endpoint.socket();
    let tcp_file = endpoint.tcp_file();
    // We hold the lock, so whatever is there was left by a daemon that died.
    let _ = fs::remove_file(&socket);
    let _ = fs::remove_file(&tcp_file);
    match transport {
        Transport::Unix => {
            let listener =
                UnixListener::bind(&socket).with_context(|| format!("binding {socket:?}"))?;
            fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {socket:?}"))?;
            Ok((Listener::Unix(listener), socket.display().to_string(), None))
        }
        Transport::Tcp => {
            let listener =
                TcpListener::bind("127.0.0.1:0").context("binding a loopback TCP port")?;
            let address = listener.local_addr().context("reading the bound address")?;
            let mut token = [0u8; 32];
            fill_random(&mut token)?;
            let hex: String = token.iter().map(|byte| format!("{byte:02x}")).collect();
            write_private(&tcp_file, format!("{address}\n{hex}\n").as_bytes())?;
            Ok((
                Listener::Tcp(listener),
                address.to_string(),
                Some(token.to_vec()),
            ))
        }
    }
}

fn fill_random(buffer: &mut [u8]) -> Result<()> {
    use std::io::Read;
    fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(buffer))
        .context("reading /dev/urandom for the daemon token")
}

/// Compile slots: at most `max` wrappers compile at once.
struct Slots {
    max: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn new(max: usize) -> Slots {
        Slots {
            max: max.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Takes a slot, calling `heartbeat` every [`HEARTBEAT`] while waiting (without holding
    /// the lock); `false` from it gives up (the wrapper is gone).
    fn acquire(&self, mut heartbeat: impl FnMut() -> bool) -> bool {
        loop {
            {
                let used = lock(&self.used);
                let (mut used, _) = self
                    .freed
                    .wait_timeout_while(used, HEARTBEAT, |used| *used >= self.max)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if *used < self.max {
                    *used += 1;
                    return true;
                }
            }
            if !heartbeat() {
                return false;
            }
        }
    }

    fn release(&self) {
        let mut used = lock(&self.used);
        *used = used.saturating_sub(1);
        self.freed.notify_one();
    }

    fn in_use(&self) -> usize {
        *lock(&self.used)
    }
}

/// A compile some wrapper is running, that identical requests wait for.
struct Flight {
    done: Mutex<Option<Landing>>,
    landed: Condvar,
}

/// How a compile in flight ended.
#[derive(Clone)]
enum Landing {
    /// Stored (or at least finished without failing): look it up again.
    Finished,
    /// Failed: share its exit code and diagnostics.
    Failed {
        exit: i32,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
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

/// What one compile request came to.
enum Served {
    /// A reply that ends the request.
    Reply(CompileReply),
    /// `COMPILE_HERE` was sent; the connection holds a slot (and maybe leads a flight) until
    /// the wrapper finishes.
    Leased(Option<(Digest, Arc<Flight>)>),
    /// The wrapper went away.
    Gone,
}

impl Daemon {
    fn touch(&self) {
        *lock(&self.last_activity) = Instant::now();
    }

    fn count(&self, name: &str, value: u64) {
        if self.settings.config.stats {
            *lock(&self.counts).entry(name.to_owned()).or_default() += value;
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
            Err(ReceiveError::Frame(hpcc_core::ipc::FrameError::Closed)) => return,
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
                Err(ReceiveError::Frame(hpcc_core::ipc::FrameError::Closed)) => return,
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

    /// Serves one compile request: a hit, a shared failure, or a slot to compile in.
    fn compile(&self, connection: &mut Connection, request: CompileRequest) -> Served {
        let caller = Caller {
            cwd: PathBuf::from(OsString::from_vec(request.cwd)),
            vars: request
                .env
                .into_iter()
                .map(|var| (OsString::from_vec(var.name), OsString::from_vec(var.value)))
                .collect(),
            umask: request.umask & 0o777,
            stderr_is_terminal: request.stderr_is_terminal,
        };
        let compiler = PathBuf::from(OsString::from_vec(request.compiler));
        let args: Vec<OsString> = request.args.into_iter().map(OsString::from_vec).collect();
        let not_served = |detail: String| {
            Served::Reply(CompileReply {
                outcome: compile_reply::Outcome::NotServed.into(),
                detail,
                ..CompileReply::default()
            })
        };
        if !caller.cwd.is_absolute() || !compiler.is_absolute() {
            return not_served("the working directory and compiler must be absolute".into());
        }
        let Some(kind) = hpcc_core::compiler::detect(&compiler) else {
            return not_served(format!("{compiler:?} is no known compiler"));
        };
        let invocation = match args::classify(kind.family, &args) {
            Classification::Compile(invocation) => invocation,
            Classification::NotCacheable(reason) => return not_served(reason.to_string()),
        };
        let on_farm = FarmJob {
            compiler: &compiler,
            invocation: &invocation,
            caller: &caller,
        };
        let farm_up = self.farm.as_ref().filter(|farm| farm.available());
        let keying = farm_up.map(FarmService::keying);
        let remote = {
            let job = self
                .new_job(&on_farm)
                .remote_compile(keying.as_ref().map(|keying| keying as &dyn RemoteCompiler));
            if self.farm.is_some() {
                match job.remote_reason() {
                    Some(reason) => {
                        tracing::debug!("compiled here: {reason}");
                        self.count(stats::names::REMOTE_INELIGIBLE, 1);
                    }
                    // Eligible, but the farm is in its cooldown after a failure.
                    None if farm_up.is_none() => self.count(stats::names::REMOTE_FALLBACK, 1),
                    None => {}
                }
            }
            job.is_remote()
        };
        if self.farm.as_ref().is_some_and(FarmService::paranoid) {
            // Nothing is looked up or stored here; the worker's cache serves repeats, and
            // what the farm does not compile the wrapper compiles without a cache.
            return if remote {
                self.compile_on_farm(connection, &on_farm, None)
            } else {
                self.lease(connection, None)
            };
        }
        // At most a few rounds: a compile that finished without storing anything (its result
        // was uncacheable) leaves the next request to compile for itself.
        for _round in 0..3 {
            let job = self
                .new_job(&on_farm)
                .remote_compile(keying.as_ref().map(|keying| keying as &dyn RemoteCompiler))
                .lookup_only(Some(cache::Warm {
                    hot: &self.hot,
                    memory: &self.memory,
                    manifests: &self.manifests,
                    remote: self
                        .remote
                        .as_ref()
                        .map(|remote| remote as &dyn cache::RemoteFallback),
                }));
            let served = match job.run() {
                Ok(served) => served,
                Err(error) => return not_served(format!("{error:#}")),
            };
            let (key, corrupt) = match served.outcome {
                Outcome::DirectHit | Outcome::PreprocessorHit => {
                    let direct = matches!(served.outcome, Outcome::DirectHit);
                    return self.hit(direct, served.printed);
                }
                Outcome::NotFound { key, corrupt } => (key, corrupt),
                Outcome::Miss { .. } => return not_served("lookup ran a compile".into()),
            };
            if corrupt {
                self.count(stats::names::CORRUPT, 1);
            }
            let Some(key) = key else {
                return if remote {
                    self.compile_on_farm(connection, &on_farm, None)
                } else {
                    self.lease(connection, None)
                };
            };
            let (flight, leader) = {
                let mut flights = lock(&self.flights);
                match flights.get(&key) {
                    Some(flight) => (Arc::clone(flight), false),
                    None => {
                        let flight = Arc::new(Flight {
                            done: Mutex::new(None),
                            landed: Condvar::new(),
                        });
                        flights.insert(key, Arc::clone(&flight));
                        (flight, true)
                    }
                }
            };
            if leader {
                return if remote {
                    self.compile_on_farm(connection, &on_farm, Some((key, flight)))
                } else {
                    self.lease(connection, Some((key, flight)))
                };
            }
            match self.wait_for(connection, &flight) {
                None => return Served::Gone,
                Some(Landing::Failed {
                    exit,
                    stdout,
                    stderr,
                }) => {
                    return Served::Reply(CompileReply {
                        outcome: compile_reply::Outcome::SharedFailure.into(),
                        exit_code: exit,
                        stdout,
                        stderr,
                        detail: String::new(),
                    })
                }
                // Look it up again: normally a hit now.
                Some(Landing::Finished) => {}
            }
        }
        self.lease(connection, None)
    }

    /// Counts a hit and answers it: the outputs are written, `printed` is for the wrapper.
    fn hit(&self, direct: bool, printed: cache::Printed) -> Served {
        let (name, outcome) = if direct {
            (stats::names::DIRECT_HIT, compile_reply::Outcome::DirectHit)
        } else {
            (
                stats::names::PREPROCESSOR_HIT,
                compile_reply::Outcome::PreprocessorHit,
            )
        };
        self.count(name, 1);
        Served::Reply(CompileReply {
            outcome: outcome.into(),
            exit_code: 0,
            stdout: printed.stdout,
            stderr: printed.stderr,
            detail: String::new(),
        })
    }

    /// A job for `on_farm`'s invocation against this daemon's cache.
    fn new_job<'a>(&'a self, on_farm: &FarmJob<'a>) -> cache::Job<'a> {
        cache::Job::new(
            on_farm.compiler,
            on_farm.invocation,
            &self.settings.config,
            &self.settings.cache_dir,
            &self.store,
            on_farm.caller,
        )
    }

    /// Compiles a miss on the farm and stores it here (unless paranoid); if the farm fails,
    /// the wrapper is told to compile (`COMPILE_HERE`), so the build never fails because of
    /// the farm.
    fn compile_on_farm(
        &self,
        connection: &mut Connection,
        on_farm: &FarmJob<'_>,
        flight: Option<(Digest, Arc<Flight>)>,
    ) -> Served {
        let Some(farm) = &self.farm else {
            return self.lease(connection, flight);
        };
        let served = {
            let remote = farm.for_connection(connection);
            let job = self.new_job(on_farm).remote_compile(Some(&remote));
            job.run()
        };
        let key = flight.as_ref().map(|(key, _)| *key);
        match served {
            Ok(cache::Served {
                outcome:
                    Outcome::Miss {
                        exit,
                        not_stored,
                        corrupt,
                    },
                printed,
            }) => {
                self.count(stats::names::MISS, 1);
                self.count(stats::names::REMOTE_COMPILED, 1);
                if corrupt {
                    self.count(stats::names::CORRUPT, 1);
                }
                if let Some(reason) = &not_stored {
                    self.count(
                        &format!("{}.{}", stats::names::UNCACHEABLE, reason.as_str()),
                        1,
                    );
                }
                if exit != 0 {
                    self.land(
                        flight,
                        Landing::Failed {
                            exit,
                            stdout: printed.stdout.clone(),
                            stderr: printed.stderr.clone(),
                        },
                    );
                } else {
                    self.land(flight, Landing::Finished);
                    if let (None, Some(key)) = (&not_stored, key) {
                        self.preload(&key);
                    }
                }
                Served::Reply(CompileReply {
                    outcome: compile_reply::Outcome::RemoteCompiled.into(),
                    exit_code: exit,
                    stdout: printed.stdout,
                    stderr: printed.stderr,
                    detail: String::new(),
                })
            }
            // Stored by someone else meanwhile.
            Ok(cache::Served {
                outcome: outcome @ (Outcome::DirectHit | Outcome::PreprocessorHit),
                printed,
            }) => {
                self.land(flight, Landing::Finished);
                self.hit(matches!(outcome, Outcome::DirectHit), printed)
            }
            Ok(cache::Served {
                outcome: Outcome::NotFound { .. },
                ..
            }) => self.lease(connection, flight),
            Err(error) => {
                tracing::warn!("remote compile failed, compiling locally: {error:#}");
                self.count(stats::names::REMOTE_FALLBACK, 1);
                self.lease(connection, flight)
            }
        }
    }

    /// Waits for a flight to land, with heartbeats; `None` if the wrapper went away.
    fn wait_for(&self, connection: &mut Connection, flight: &Flight) -> Option<Landing> {
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
    fn lease(&self, connection: &mut Connection, flight: Option<(Digest, Arc<Flight>)>) -> Served {
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
    fn await_finish(&self, connection: &mut Connection, flight: Option<(Digest, Arc<Flight>)>) {
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
    fn preload(&self, key: &Digest) {
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

    fn land(&self, flight: Option<(Digest, Arc<Flight>)>, landing: Landing) {
        if let Some((key, flight)) = flight {
            lock(&self.flights).remove(&key);
            *lock(&flight.done) = Some(landing);
            flight.landed.notify_all();
        }
    }
}

/// The invocation a farm compile is for.
struct FarmJob<'a> {
    compiler: &'a std::path::Path,
    invocation: &'a hpcc_core::args::CompileInvocation,
    caller: &'a Caller,
}

/// Tells a waiting wrapper the daemon is alive; `false` if it went away.
pub(crate) fn heartbeat(connection: &mut Connection) -> bool {
    connection
        .send(&reply_of(reply::Kind::Waiting(Waiting {})))
        .is_ok()
}

fn reply_of(kind: reply::Kind) -> Reply {
    Reply { kind: Some(kind) }
}

fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    expected
        .iter()
        .zip(given)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn slots_bound_concurrency_and_give_up_when_the_caller_leaves() {
        let slots = Slots::new(1);
        assert!(slots.acquire(|| true));
        assert_eq!(slots.in_use(), 1);
        let mut beats = 0;
        assert!(!slots.acquire(|| {
            beats += 1;
            beats < 2
        }));
        assert_eq!(beats, 2);
        slots.release();
        assert!(slots.acquire(|| false));
    }
}
