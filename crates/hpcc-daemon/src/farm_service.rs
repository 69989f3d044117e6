//! The daemon's side of `[remote_compile]`: the farm client on its own runtime, and the
//! [`RemoteCompiler`] a lookup uses to compile a miss on the farm while the wrapper waits.
//!
//! A miss the daemon leads is compiled on the farm instead of by the wrapper: the daemon runs the
//! same `cache::Job` with this service as its `RemoteCompiler`. The job preprocesses here with the
//! caller's environment (writing the dependency files a local compile writes), rewrites the
//! project root to `/src`, and sends the text through [`hpcc_daemon::farm`]; the object comes
//! back, is written where the compiler would have written it, and is stored under a key that
//! names the image. Any farm failure is a `COMPILE_HERE`: the wrapper compiles locally, under the
//! local key, and the farm sits out a 10 s cooldown.
//!
//! A remote compile runs on the runtime; the connection thread waits for it and sends the
//! wrapper a heartbeat every second. A wrapper that goes away (killed, Ctrl-C) cancels the
//! compile: dropping the call closes its stream, and the worker kills the job.
//!
//! In paranoid mode nothing is read from or written to this machine's cache: the daemon skips the
//! lookup, the wrapper compiles what the farm does not without a cache, and `[[remote]]` stores
//! are a configuration error.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hpcc_cache::ipc::Connection;
use hpcc_cache::remote_compile::{RemoteCompiler, RemoteJob, RemoteResult};
use hpcc_core::config::RemoteCompileConfig;
use hpcc_daemon::farm::{Farm, FarmConfig, RemoteRequest};
use hpcc_daemon::login::{self, TokenError};

/// How long the farm is left alone after it failed (misses compile locally meanwhile, keyed
/// for the local compiler, so a farm outage costs no build one failed attempt per compile).
const COOLDOWN: Duration = Duration::from_secs(10);

/// The farm, as configured, with the runtime its calls run on.
pub struct FarmService {
    /// Until when the farm is not asked, after a failure.
    down_until: Mutex<Option<Instant>>,
    runtime: tokio::runtime::Runtime,
    farm: Farm,
    paranoid: bool,
    /// The configuration (a token refresh needs it).
    config: RemoteCompileConfig,
    /// Held while refreshing the token: an IdP that rotates refresh tokens takes each once.
    refreshing: Mutex<()>,
    /// Compiles served from a worker's cache since the last drain.
    worker_hits: AtomicU64,
}

impl FarmService {
    /// Starts the client for `config` (connecting lazily).
    pub fn start(config: &RemoteCompileConfig) -> Result<FarmService> {
        let scheduler_ca = match &config.scheduler_ca {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading remote_compile.scheduler_ca {path:?}"))?,
            ),
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("farm")
            .enable_all()
            .build()
            .context("starting the farm runtime")?;
        let farm = {
            let _entered = runtime.enter();
            Farm::new(FarmConfig {
                tenant: config.tenant_id.clone(),
                scheduler: config.scheduler.clone(),
                scheduler_ca,
                insecure_plaintext: config.insecure_plaintext,
                image: config.image.clone(),
                timeout: Duration::from_secs(config.timeout_secs),
                route_patience: Duration::from_secs(config.route_patience_secs),
                paranoid: config.paranoid,
            })
            .map_err(|error| anyhow::anyhow!("remote_compile: {error}"))?
        };
        Ok(FarmService {
            down_until: Mutex::new(None),
            runtime,
            farm,
            paranoid: config.paranoid,
            config: config.clone(),
            refreshing: Mutex::new(()),
            worker_hits: AtomicU64::new(0),
        })
    }

    /// The compiler a lookup on `connection` uses.
    pub fn for_connection<'c>(&'c self, connection: &'c mut Connection) -> ConnectionFarm<'c> {
        ConnectionFarm {
            service: self,
            connection: RefCell::new(connection),
        }
    }

    /// The farm as the key of a lookup needs it (image and mode); it compiles nothing.
    pub fn keying(&self) -> Keying<'_> {
        Keying(self)
    }

    /// Whether the farm is asked now (it is not in its cooldown after a failure).
    pub fn available(&self) -> bool {
        let down = self
            .down_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        down.is_none_or(|until| Instant::now() >= until)
    }

    fn failed(&self) {
        *self
            .down_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now() + COOLDOWN);
    }

    /// The user's token from `hpcc login`'s cache, refreshed if it expired and the IdP gave
    /// a refresh token.
    fn token(&self) -> Result<String, String> {
        let tenant = &self.config.tenant_id;
        match login::cached_token(tenant) {
            Ok(token) => Ok(token),
            Err(TokenError::Expired { .. }) => {
                let _one_at_a_time = self
                    .refreshing
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                // Another connection may have refreshed it meanwhile.
                if let Ok(token) = login::cached_token(tenant) {
                    return Ok(token);
                }
                self.runtime
                    .block_on(login::refresh(&self.config))
                    .map_err(|error| hpcc_core::report::chain(&error))
            }
            Err(error) => Err(hpcc_core::report::chain(&error)),
        }
    }

    /// Whether only workers touch the cache.
    pub fn paranoid(&self) -> bool {
        self.paranoid
    }

    /// Takes the count of worker-cache hits.
    pub fn drain_worker_hits(&self) -> u64 {
        self.worker_hits.swap(0, Ordering::Relaxed)
    }
}

/// The farm as seen from one connection: its heartbeats keep the wrapper waiting.
pub struct ConnectionFarm<'c> {
    service: &'c FarmService,
    connection: RefCell<&'c mut Connection>,
}

impl RemoteCompiler for ConnectionFarm<'_> {
    fn image(&self) -> &str {
        &self.service.farm.config().image
    }

    fn paranoid(&self) -> bool {
        self.service.paranoid
    }

    fn compile(&self, job: RemoteJob) -> Result<RemoteResult, String> {
        let token = self
            .service
            .token()
            .inspect_err(|_| self.service.failed())?;
        let (sender, receiver) = mpsc::channel();
        let farm = &self.service.farm;
        let request = RemoteRequest {
            compiler: job.driver,
            language: job.language,
            flags: job.flags,
            source: job.source,
            extra_outputs: Vec::new(),
        };
        // Scoped to this call: the task borrows nothing, it owns its inputs.
        let call = {
            let farm = farm.clone();
            self.service.runtime.spawn(async move {
                let outcome = farm.compile(request, &token).await;
                let _ = sender.send(outcome);
            })
        };
        let outcome = loop {
            match receiver.recv_timeout(Duration::from_secs(1)) {
                Ok(outcome) => break outcome,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !crate::wire::heartbeat(&mut self.connection.borrow_mut()) {
                        call.abort();
                        return Err("the wrapper went away".into());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the remote compile task ended without an answer".into())
                }
            }
        };
        let outcome = outcome.map_err(|error| {
            self.service.failed();
            error.to_string()
        })?;
        if outcome.cache_hit {
            self.service.worker_hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(RemoteResult {
            exit: outcome.exit_code,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            object: outcome.object,
        })
    }
}

/// The farm's identity for keys, for lookups that compile nothing.
pub struct Keying<'a>(&'a FarmService);

impl RemoteCompiler for Keying<'_> {
    fn image(&self) -> &str {
        &self.0.farm.config().image
    }

    fn paranoid(&self) -> bool {
        self.0.paranoid
    }

    fn compile(&self, _job: RemoteJob) -> Result<RemoteResult, String> {
        Err("a lookup compiles nothing".into())
    }
}
