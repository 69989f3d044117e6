//! Accepting connections: the Unix socket or the loopback TCP port with its token, and the
//! pool of connection threads (at most `MAX_CONNECTIONS`; more are refused and their
//! wrappers compile by themselves).

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hpcc_core::config::Transport;
use hpcc_proto::daemon::{hello_reply, HelloReply, Refused};

use hpcc_cache::ipc::{write_private, Connection, Endpoint};

use super::{lock, Daemon, MAX_CONNECTIONS};

pub(super) enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    pub(super) fn accept(&self) -> std::io::Result<Connection> {
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
    pub(super) fn serve(self, daemon: &Arc<Daemon>) {
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
pub(super) struct Pool {
    pub(super) listener: Listener,
    pub(super) daemon: Arc<Daemon>,
    /// Threads waiting in `accept`.
    pub(super) accepting: AtomicUsize,
    /// Threads alive.
    pub(super) threads: AtomicUsize,
}

/// Threads kept waiting in `accept` at most; more exit once their connection ends.
pub(super) const MAX_ACCEPTING: usize = 4;

impl Pool {
    pub(super) fn start_thread(self: &Arc<Pool>) -> bool {
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

    pub(super) fn run(self: Arc<Pool>) {
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

pub(super) fn refuse(mut connection: Connection, reason: &str) {
    let _ = connection.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = connection.send(&HelloReply {
        reply: Some(hello_reply::Reply::Refused(Refused {
            reason: reason.to_owned(),
        })),
    });
}

/// Binds the listening socket and publishes how to reach it.
pub(super) fn bind(
    endpoint: &Endpoint,
    transport: Transport,
) -> Result<(Listener, String, Option<Vec<u8>>)> {
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

pub(super) fn fill_random(buffer: &mut [u8]) -> Result<()> {
    use std::io::Read;
    fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(buffer))
        .context("reading /dev/urandom for the daemon token")
}
