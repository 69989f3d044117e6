//! [`LocalRuntime`] (feature `runtime`) is a [`Runtime`] whose sessions are the real agent's connection server
//! (`hpcc_agent::serve::serve_connection`) running in this process, reached over in-memory
//! streams (`tokio::io::duplex`): jobs run as ordinary host processes in a private work
//! directory, with no namespaces, so the worker, its pool, its cache and its service are
//! tested unprivileged and without an image, a guest or a sandbox. It isolates nothing: it
//! exists so that everything above `Runtime` can be tested anywhere; the sandbox and microVM
//! runtimes keep their own root and guest tests for what only they can prove.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use hpcc_agent::config::{AgentConfig, ListenAddr};
use hpcc_runtime::{AgentStream, Runtime, RuntimeError, Session, SessionSpec};

/// Bytes buffered in each direction of a session connection.
const PIPE_BYTES: usize = 1 << 20;

/// An in-process [`Runtime`]: see the crate docs.
#[derive(Debug, Default)]
pub struct LocalRuntime {
    started: AtomicU64,
    /// Sessions ever started.
    counter: Arc<AtomicU64>,
}

impl LocalRuntime {
    /// A runtime whose sessions run jobs on this host.
    pub fn new() -> LocalRuntime {
        LocalRuntime::default()
    }

    /// Sessions started so far.
    pub fn sessions_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn start(&self, spec: &SessionSpec) -> Result<Box<dyn Session>, RuntimeError> {
        let number = self.counter.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        let work = tempfile::Builder::new()
            .prefix("hpcc-local-session-")
            .tempdir()
            .map_err(|source| RuntimeError::Io {
                session: format!("local-{}-{number}", spec.tenant),
                source,
            })?;
        let mut config = AgentConfig::new(
            ListenAddr::Unix(work.path().join("unused.sock")),
            work.path().to_owned(),
        );
        config.source_date_epoch = spec.source_date_epoch;
        config.default_timeout = spec.limits.job_timeout;
        Ok(Box::new(LocalSession {
            id: format!("local-{}-{number}", spec.tenant),
            config: Arc::new(config),
            alive: Arc::new(AtomicBool::new(true)),
            _work: work,
        }))
    }
}

/// A session of a [`LocalRuntime`].
struct LocalSession {
    id: String,
    config: Arc<AgentConfig>,
    alive: Arc<AtomicBool>,
    _work: tempfile::TempDir,
}

#[async_trait]
impl Session for LocalSession {
    fn id(&self) -> &str {
        &self.id
    }

    async fn connect(&self) -> Result<Box<dyn AgentStream>, RuntimeError> {
        if !self.alive.load(Ordering::Relaxed) {
            return Err(RuntimeError::Agent {
                session: self.id.clone(),
                message: "the session was stopped".into(),
            });
        }
        let (host, agent) = tokio::io::duplex(PIPE_BYTES);
        let config = Arc::clone(&self.config);
        let id = self.id.clone();
        #[allow(clippy::disallowed_methods)] // test double: no span to keep
        tokio::spawn(async move {
            if let Err(error) = hpcc_agent::serve::serve_connection(&config, agent).await {
                eprintln!("local session {id}: {error}");
            }
        });
        Ok(Box::new(host))
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    async fn stop(self: Box<Self>) -> Result<(), RuntimeError> {
        self.alive.store(false, Ordering::Relaxed);
        Ok(())
    }
}
