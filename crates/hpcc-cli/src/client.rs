//! The wrapper's side of the daemon, and the `start`, `stop` and `status` commands.
//!
//! Every failure here is an answer, not an error: [`Answer::Unavailable`] sends the wrapper to
//! compile by itself. Waits are bounded by `daemon.reply_timeout_ms` per frame; a daemon that
//! waits on purpose (for a slot, or for an identical compile) sends a heartbeat every second.
//!
//! **Remote tiers and a daemon that is not up yet.** Only the daemon asks and fills the remote
//! tiers. So when they are configured, a wrapper that finds no daemon and starts one (or sees
//! one starting) waits briefly for it instead of compiling on its own, which on a fresh machine
//! would miss what the tiers hold and store what they never get (`autostart`). A compile
//! that still runs without the daemon journals what it stored, and the next daemon uploads it
//! (`hpcc_cache::upload_journal`): no entry made while remote tiers are configured stays local.

use std::ffi::OsString;
use std::fs;
use std::net::TcpStream;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hpcc_core::config::Transport;
use hpcc_proto::daemon::{
    compile_reply, hello_reply, reply, request, CompileRequest, Count, EnvVar, FinishRequest,
    FlushStatsRequest, Hello, HelloReply, Reply, Request, StatusReply, StatusRequest, StopRequest,
};
use hpcc_proto::DAEMON_PROTOCOL_VERSION;

use hpcc_cache::cache::Printed;
use hpcc_cache::caller::Caller;
use hpcc_cache::ipc::{parse_tcp_file, Connection, Endpoint};
use hpcc_cache::settings::Settings;

/// How long connecting may take (a live daemon accepts at once).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// With remote tiers, how long a wrapper waits for a daemon that is starting (see
/// [`autostart`]); it normally answers within milliseconds.
const AUTOSTART_WAIT: Duration = Duration::from_secs(5);

/// What the daemon made of a compile.
pub enum Answer {
    /// Served: print this and exit with `exit` (a hit, or the shared failure of an identical
    /// compile). The daemon counted it.
    Served {
        /// The exit code.
        exit: i32,
        /// What to print.
        printed: Printed,
    },
    /// Compile here and report with [`Lease::finish`].
    CompileHere(Lease),
    /// No daemon, or it could not serve: compile by yourself.
    Unavailable,
}

/// A compile slot held for this wrapper.
pub struct Lease {
    connection: Connection,
}

impl Lease {
    /// Reports the compile's statistics (and, if it failed, its output, for identical compiles
    /// waiting on it) and gives the slot back.
    pub fn finish(mut self, counts: &[(&str, u64)], failure: Option<(i32, &Printed)>) -> bool {
        let finish = FinishRequest {
            counts: counts
                .iter()
                .map(|(name, value)| Count {
                    name: (*name).to_owned(),
                    value: *value,
                })
                .collect(),
            failed: failure.is_some(),
            exit_code: failure.map_or(0, |(exit, _)| exit),
            stdout: failure.map_or_else(Vec::new, |(_, printed)| printed.stdout.clone()),
            stderr: failure.map_or_else(Vec::new, |(_, printed)| printed.stderr.clone()),
        };
        let sent = self.connection.send(&Request {
            kind: Some(request::Kind::Finish(finish)),
        });
        sent.is_ok()
            && matches!(
                self.connection.receive::<Reply>(),
                Ok(Reply {
                    kind: Some(reply::Kind::Finish(_))
                })
            )
    }
}

/// Connects and says hello. `Err` says why not (not running, refused, ...).
pub fn connect(settings: &Settings, endpoint: &Endpoint) -> Result<Connection> {
    let mut connection = open(settings, endpoint)?;
    welcome(&mut connection)?;
    Ok(connection)
}

/// Reads the daemon's answer to `Hello`.
fn welcome(connection: &mut Connection) -> Result<()> {
    match connection.receive::<HelloReply>()?.reply {
        Some(hello_reply::Reply::Welcome(_)) => Ok(()),
        Some(hello_reply::Reply::Refused(refused)) => {
            bail!("the daemon refused: {}", refused.reason)
        }
        None => bail!("the daemon sent an empty hello reply"),
    }
}

/// Connects and sends `Hello` without waiting for the answer, so that a request can follow in
/// the same round trip.
fn open(settings: &Settings, endpoint: &Endpoint) -> Result<Connection> {
    let (mut connection, token) = match settings.config.daemon.transport {
        Transport::Unix => {
            let socket = endpoint.socket();
            let stream = UnixStream::connect(&socket)
                .with_context(|| format!("connecting to {}", socket.display()))?;
            (Connection::Unix(stream), Vec::new())
        }
        Transport::Tcp => {
            let file = endpoint.tcp_file();
            let text =
                fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let Some((address, token)) = parse_tcp_file(&text) else {
                bail!("{} is not an address and a token", file.display());
            };
            let stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)
                .with_context(|| format!("connecting to {address}"))?;
            let _ = stream.set_nodelay(true);
            (Connection::Tcp(stream), token)
        }
    };
    let timeout = Duration::from_millis(settings.config.daemon.reply_timeout_ms.max(1));
    connection.set_read_timeout(Some(timeout))?;
    connection.set_write_timeout(Some(timeout))?;
    connection.send(&Hello {
        protocol_version: DAEMON_PROTOCOL_VERSION,
        client_version: env!("CARGO_PKG_VERSION").into(),
        token,
    })?;
    Ok(connection)
}

/// Asks the daemon to serve a compile. Starts a daemon in the background when none runs and
/// `daemon.autostart` is on (this compile is then served without it, unless remote tiers are
/// configured: see `autostart`).
pub fn request_compile(
    settings: &Settings,
    compiler: &Path,
    args: &[OsString],
    caller: &Caller,
) -> Answer {
    let endpoint = match Endpoint::for_settings(settings) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            tracing::debug!("no daemon endpoint: {error:#}");
            return Answer::Unavailable;
        }
    };
    let mut connection = match open(settings, &endpoint) {
        Ok(connection) => connection,
        Err(error) => {
            tracing::debug!("daemon not reachable: {error:#}");
            match autostart(settings, &endpoint) {
                Some(connection) => connection,
                None => return Answer::Unavailable,
            }
        }
    };
    let request = CompileRequest {
        compiler: compiler.as_os_str().as_bytes().to_vec(),
        args: args.iter().map(|arg| arg.as_bytes().to_vec()).collect(),
        cwd: caller.cwd.as_os_str().as_bytes().to_vec(),
        env: caller
            .vars
            .iter()
            .map(|(name, value)| EnvVar {
                name: name.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            })
            .collect(),
        umask: caller.umask,
        stderr_is_terminal: caller.stderr_is_terminal,
    };
    if connection
        .send(&Request {
            kind: Some(request::Kind::Compile(request)),
        })
        .is_err()
    {
        return Answer::Unavailable;
    }
    if let Err(error) = welcome(&mut connection) {
        tracing::warn!("daemon: {error:#}; compiling without it");
        hpcc_cache::record_error("daemon");
        return Answer::Unavailable;
    }
    loop {
        let reply = match connection.receive::<Reply>() {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!("the daemon did not answer ({error}); compiling without it");
                hpcc_cache::record_error("daemon");
                return Answer::Unavailable;
            }
        };
        let compile = match reply.kind {
            Some(reply::Kind::Waiting(_)) => continue,
            Some(reply::Kind::Compile(compile)) => compile,
            other => {
                tracing::warn!("unexpected daemon reply {other:?}; compiling without it");
                hpcc_cache::record_error("daemon");
                return Answer::Unavailable;
            }
        };
        let outcome = compile.outcome();
        let printed = Printed {
            stdout: compile.stdout,
            stderr: compile.stderr,
        };
        return match outcome {
            compile_reply::Outcome::DirectHit | compile_reply::Outcome::PreprocessorHit => {
                Answer::Served { exit: 0, printed }
            }
            compile_reply::Outcome::SharedFailure | compile_reply::Outcome::RemoteCompiled => {
                Answer::Served {
                    exit: compile.exit_code,
                    printed,
                }
            }
            compile_reply::Outcome::CompileHere => {
                // The compile itself may take long: no timeout while it runs.
                let _ = connection.set_read_timeout(Some(Duration::from_secs(30)));
                Answer::CompileHere(Lease { connection })
            }
            compile_reply::Outcome::NotServed | compile_reply::Outcome::Unspecified => {
                tracing::debug!("daemon did not serve: {}", compile.detail);
                Answer::Unavailable
            }
        };
    }
}

/// With `daemon.autostart`, starts a daemon when none holds the endpoint's lock.
///
/// Without remote tiers or a farm the compile goes on at once without a daemon (`None`): the
/// local cache serves it as well in-process. With either it waits, up to [`AUTOSTART_WAIT`],
/// for the daemon (its own or the one another wrapper is starting) to accept a connection,
/// because only the daemon asks and fills the remote tiers and compiles on the farm: the first
/// compiles of a build on a fresh machine would otherwise miss entries the tiers hold, store
/// entries they never get, and compile here what the farm should have. The
/// wait ends early when no daemon can come (the one started here exited and nobody holds the
/// lock), so a daemon that fails to start costs each compile only its failed start. What is
/// still stored without a daemon is journaled for the next one (`upload_journal`).
fn autostart(settings: &Settings, endpoint: &Endpoint) -> Option<Connection> {
    if !settings.config.daemon.autostart {
        return None;
    }
    let mut started = None;
    if !is_running(endpoint) {
        match spawn(endpoint) {
            Ok(child) => started = Some(child),
            Err(error) => {
                tracing::debug!("cannot start the daemon: {error:#}");
                return None;
            }
        }
    }
    if settings.config.remote.is_empty() && settings.config.remote_compile.is_none() {
        return None;
    }
    let deadline = Instant::now() + AUTOSTART_WAIT;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if let Ok(connection) = open(settings, endpoint) {
            return Some(connection);
        }
        let ours_gone = started
            .as_mut()
            .is_none_or(|child| matches!(child.try_wait(), Ok(Some(_))));
        if (ours_gone && !is_running(endpoint)) || Instant::now() >= deadline {
            tracing::debug!("no daemon came up; compiling without it");
            return None;
        }
    }
}

/// Whether a daemon holds the endpoint's lock (running, or starting up).
fn is_running(endpoint: &Endpoint) -> bool {
    let Ok(file) = fs::File::open(endpoint.lock_file()) else {
        return false;
    };
    matches!(file.try_lock_shared(), Err(fs::TryLockError::WouldBlock))
}

/// Starts `hpccd` detached: its own process group, no terminal, output to the log file.
fn spawn(endpoint: &Endpoint) -> Result<std::process::Child> {
    let exe = hpcc_cache::ipc::daemon_binary()?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(endpoint.log_file())
        .with_context(|| format!("opening {}", endpoint.log_file().display()))?;
    let child = Command::new(&exe)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file")?)
        .stderr(log)
        // In the wrapper's directory, so that relative settings (a relative `HPCC_CACHE_DIR`)
        // resolve as they did for the wrapper; the daemon moves to `/` once it has read them.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok(child)
}

fn simple_request(settings: &Settings, endpoint: &Endpoint, kind: request::Kind) -> Result<Reply> {
    let mut connection = connect(settings, endpoint)?;
    connection.send(&Request { kind: Some(kind) })?;
    Ok(connection.receive::<Reply>()?)
}

/// The running daemon's status, if one answers.
pub fn status(settings: &Settings) -> Result<StatusReply> {
    let endpoint = Endpoint::for_settings(settings)?;
    match simple_request(settings, &endpoint, request::Kind::Status(StatusRequest {}))?.kind {
        Some(reply::Kind::Status(status)) => Ok(status),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// Asks a running daemon to write its statistics now; nothing if none runs.
pub fn flush_stats(settings: &Settings) {
    let Ok(endpoint) = Endpoint::for_settings(settings) else {
        return;
    };
    if !is_running(&endpoint) {
        return;
    }
    let _ = simple_request(
        settings,
        &endpoint,
        request::Kind::FlushStats(FlushStatsRequest {}),
    );
}

/// `hpcc start`: starts the daemon in the background and waits until it answers.
pub fn start(settings: &Settings) -> Result<String> {
    if let Ok(status) = status(settings) {
        return Ok(format!("already running (pid {})", status.pid));
    }
    let endpoint = Endpoint::for_settings(settings)?;
    let mut child = spawn(&endpoint)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match status(settings) {
            Ok(status) => {
                return Ok(format!(
                    "started (pid {}) on {}",
                    status.pid, status.endpoint
                ))
            }
            // A daemon that refused its settings has failed: say why rather than wait. (One
            // that lost a race to another daemon exits successfully; that one is waited for.)
            Err(_) if matches!(child.try_wait(), Ok(Some(exit)) if !exit.success()) => {
                let log = std::fs::read_to_string(endpoint.log_file()).unwrap_or_default();
                let last: Vec<&str> = log.lines().rev().take(3).collect();
                let reason: Vec<&str> = last.into_iter().rev().collect();
                bail!(
                    "the daemon failed to start: {}; see {}",
                    reason.join(" / "),
                    endpoint.log_file().display()
                )
            }
            Err(error) if Instant::now() >= deadline => {
                bail!(
                    "the daemon did not come up within 10 s ({error:#}); see {}",
                    endpoint.log_file().display()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// `hpcc stop`: asks the daemon to stop and waits until it has released its lock.
pub fn stop(settings: &Settings) -> Result<String> {
    let endpoint = Endpoint::for_settings(settings)?;
    if !is_running(&endpoint) {
        return Ok("not running".into());
    }
    let pid = fs::read_to_string(endpoint.lock_file()).unwrap_or_default();
    simple_request(settings, &endpoint, request::Kind::Stop(StopRequest {}))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_running(&endpoint) {
        if Instant::now() >= deadline {
            bail!("the daemon (pid {}) did not stop within 10 s", pid.trim());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(format!("stopped (pid {})", pid.trim()))
}
