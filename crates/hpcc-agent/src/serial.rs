//! Listening on virtio-serial ports: the agent's channel in `qemu` guests.
//!
//! QEMU 7.2 refuses to migrate a guest with a `vhost-user-vsock-device` ("non-migratable
//! device"), so a guest that is to be snapshotted reaches its host through virtio-serial
//! instead: QEMU gives it `count` ports named `hpcc.agent.<n>`, each backed on the host by a
//! Unix socket, and a host connection to one socket is one job, as a vsock connection is.
//!
//! A port differs from a socket in three ways this module hides from [`crate::serve`]:
//! - It is one device for the guest's whole life, opened once, and successive hosts take
//!   turns on it. Each turn starts with the preamble of [`hpcc_proto::serial_sync`], so
//!   bytes of a cancelled host never reach the next one's job, nor the other way round.
//! - With no host connected, `read` returns 0 at once and `poll` reports `POLLHUP` at once, so
//!   neither can wait for a host; a blocking `write` can (it sleeps until a host connects). A
//!   port whose host has gone therefore writes one filler byte, which the next host discards
//!   with everything else before its answer.
//! - The device has no non-blocking mode tokio could drive (the closed state never clears),
//!   so each port has a thread that reads it, and each connection a thread that writes it.
//!
//! Writes are fenced by turns: a port's lock holds the number of the current turn, a writer
//! writes only while its turn is current, and the reader moves to a new turn (under the lock)
//! before it answers a preamble. So once a host has its answer, nothing of an earlier
//! connection follows it.
//!
//! The device nodes: PID 1 finds the ports under `/sys/class/virtio-ports` while it still has
//! the initramfs's `/dev` and `/sys`, and creates their nodes in [`NODES_DIR`] of the image's
//! private `/dev` ([`make_nodes`]); the server opens them and removes the directory
//! ([`SerialPortListener::open`]), so jobs never see them (and a port admits one opener).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hpcc_proto::serial_sync::{preamble, RepeatSkipper, Scanner, ACK_MAGIC, NONCE_LEN, SYNC_MAGIC};
use rustix::fs::{FileType, Mode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

/// Ports are named this, then their number from 0.
pub const PORT_NAME_PREFIX: &str = "hpcc.agent.";

/// The most ports a session may have.
pub const MAX_PORTS: u32 = 64;

/// Where PID 1 puts the ports' device nodes for the server, in the image's `/dev`.
pub const NODES_DIR: &str = "/dev/.hpcc-ports";

/// How long the ports may take to appear once `virtio_console` is loaded.
const PORT_WAIT: Duration = Duration::from_secs(20);

/// A port's largest read (the driver hands out at most a page-sized buffer at a time anyway).
const READ_LEN: usize = 32 << 10;

/// Chunks queued between a port's threads and its connection, each way.
const QUEUE: usize = 8;

/// The name of port `index`.
pub fn port_name(index: u32) -> String {
    format!("{PORT_NAME_PREFIX}{index}")
}

/// Waits until the `count` ports `hpcc.agent.<n>` are listed in `sys_ports`
/// (`/sys/class/virtio-ports`), and creates a device node for each, named after it, in
/// `nodes_dir` (mode 0600).
pub fn make_nodes(sys_ports: &Path, nodes_dir: &Path, count: u32) -> io::Result<()> {
    let deadline = Instant::now() + PORT_WAIT;
    let found = loop {
        let found = find_ports(sys_ports, count)?;
        if found.len() == usize::try_from(count).unwrap_or(usize::MAX) {
            break found;
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} of {count} virtio-serial ports {PORT_NAME_PREFIX}* in {} after {} s",
                    found.len(),
                    sys_ports.display(),
                    PORT_WAIT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    match rustix::fs::mkdir(nodes_dir, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(errno) => return Err(errno.into()),
    }
    for (name, major, minor) in found {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            nodes_dir.join(&name),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            rustix::fs::makedev(major, minor),
        )?;
    }
    Ok(())
}

/// The ports among `sys_ports` named `hpcc.agent.<n>` with `n < count`: (name, major, minor).
fn find_ports(sys_ports: &Path, count: u32) -> io::Result<Vec<(String, u32, u32)>> {
    let entries = match std::fs::read_dir(sys_ports) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        // The name appears once the host has announced it; until then the file is empty.
        let Ok(name) = std::fs::read_to_string(path.join("name")) else {
            continue;
        };
        let name = name.trim();
        let wanted = name
            .strip_prefix(PORT_NAME_PREFIX)
            .and_then(|number| number.parse::<u32>().ok())
            .is_some_and(|number| number < count);
        let device = std::fs::read_to_string(path.join("dev")).unwrap_or_default();
        let numbers = device
            .trim()
            .split_once(':')
            .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)));
        if let (true, Some((major, minor))) = (wanted, numbers) {
            found.push((name.to_owned(), major, minor));
        }
    }
    Ok(found)
}

/// One port: its device, and the lock that fences writes by turn.
#[derive(Debug)]
struct Port {
    name: String,
    device: File,
    /// The current turn; a writer writes only while it holds the lock and its turn is this.
    turn: Mutex<u64>,
}

impl Port {
    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.turn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends the current turn: its writer writes nothing more.
    fn end_turn(&self) {
        *self.lock() += 1;
    }

    /// Starts a turn for the host that sent `nonce` and answers it; returns the turn.
    fn begin_turn(&self, nonce: &[u8; NONCE_LEN]) -> io::Result<u64> {
        let mut turn = self.lock();
        *turn += 1;
        write_all(&self.device, &preamble(&ACK_MAGIC, nonce))?;
        Ok(*turn)
    }

    /// Sleeps until a host is connected (a blocking write waits for one; see the module docs).
    fn wait_for_host(&self) -> io::Result<()> {
        let _turn = self.lock();
        write_all(&self.device, b"\n")
    }
}

fn write_all(mut device: &File, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match device.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// A new connection, as a port's reader thread hands it to the listener's
/// [`accept`](crate::listen::Listener::accept).
#[derive(Debug)]
struct Incoming {
    port: Arc<Port>,
    turn: u64,
    from_host: mpsc::Receiver<Vec<u8>>,
}

/// Accepts connections on virtio-serial ports.
#[derive(Debug)]
pub struct SerialPortListener {
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<Incoming>>,
}

impl SerialPortListener {
    /// Opens the `count` port nodes PID 1 made in `nodes_dir`, removes the directory, and
    /// starts a reader thread per port.
    pub fn open(nodes_dir: &Path, count: u32) -> io::Result<SerialPortListener> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut ports = Vec::new();
        for index in 0..count {
            let name = port_name(index);
            let path: PathBuf = nodes_dir.join(&name);
            let device = File::options()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|error| {
                    io::Error::new(error.kind(), format!("opening {}: {error}", path.display()))
                })?;
            ports.push(Arc::new(Port {
                name,
                device,
                turn: Mutex::new(0),
            }));
        }
        std::fs::remove_dir_all(nodes_dir)?;
        for port in ports {
            let sender = sender.clone();
            std::thread::Builder::new()
                .name(format!("read {}", port.name))
                .spawn(move || read_port(&port, &sender))?;
        }
        Ok(SerialPortListener {
            incoming: tokio::sync::Mutex::new(receiver),
        })
    }
}

impl crate::listen::Listener for SerialPortListener {
    type Stream = SerialStream;

    async fn accept(&self) -> io::Result<SerialStream> {
        let incoming = self
            .incoming
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::other("every port's reader has stopped"))?;
        let (to_writer, from_connection) = mpsc::channel(QUEUE);
        let port = Arc::clone(&incoming.port);
        let turn = incoming.turn;
        std::thread::Builder::new()
            .name(format!("write {}", port.name))
            .spawn(move || write_port(&port, turn, from_connection))?;
        Ok(SerialStream {
            from_host: incoming.from_host,
            unread: Vec::new(),
            read_at: 0,
            to_host: PollSender::new(to_writer),
        })
    }
}

/// A port's reader: waits for hosts, finds their preambles, and passes each turn's bytes to
/// its connection until the host goes or the connection is dropped.
fn read_port(port: &Arc<Port>, incoming: &mpsc::UnboundedSender<Incoming>) {
    struct Current {
        to_connection: mpsc::Sender<Vec<u8>>,
        repeats: RepeatSkipper,
    }
    let mut buffer = vec![0u8; READ_LEN];
    let mut scanner = Scanner::new(SYNC_MAGIC);
    let mut current: Option<Current> = None;
    loop {
        let read = match (&port.device).read(&mut buffer) {
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                // Not expected of a port that stays plugged in; slow down rather than spin.
                tracing::warn!(port = %port.name, %error, "reading the port failed");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if read == 0 {
            // No host: the current one has gone (its connection sees the end of its stream).
            if current.take().is_some() {
                port.end_turn();
            }
            scanner = Scanner::new(SYNC_MAGIC);
            if let Err(error) = port.wait_for_host() {
                tracing::warn!(port = %port.name, %error, "waiting for a host failed");
                std::thread::sleep(Duration::from_secs(1));
            }
            continue;
        }
        let mut pending = buffer[..read].to_vec();
        while !pending.is_empty() {
            match current.take() {
                Some(mut connection) => {
                    let pass = connection.repeats.feed(&pending);
                    pending.clear();
                    if pass.is_empty() {
                        current = Some(connection);
                        continue;
                    }
                    match connection.to_connection.blocking_send(pass) {
                        Ok(()) => current = Some(connection),
                        // The job is over (or was cancelled): what follows is the next
                        // host's, to scan for its preamble.
                        Err(mpsc::error::SendError(pass)) => {
                            port.end_turn();
                            pending = pass;
                        }
                    }
                }
                None => {
                    let Some((nonce, used)) = scanner.feed(&pending) else {
                        pending.clear();
                        continue;
                    };
                    pending.drain(..used);
                    let turn = match port.begin_turn(&nonce) {
                        Ok(turn) => turn,
                        Err(error) => {
                            tracing::warn!(port = %port.name, %error, "answering a host failed");
                            pending.clear();
                            continue;
                        }
                    };
                    let (to_connection, from_host) = mpsc::channel(QUEUE);
                    let handed = incoming.send(Incoming {
                        port: Arc::clone(port),
                        turn,
                        from_host,
                    });
                    if handed.is_err() {
                        return;
                    }
                    current = Some(Current {
                        to_connection,
                        repeats: RepeatSkipper::new(preamble(&SYNC_MAGIC, &nonce)),
                    });
                }
            }
        }
    }
}

/// A connection's writer: writes what the connection sends while its turn lasts.
fn write_port(port: &Port, turn: u64, mut from_connection: mpsc::Receiver<Vec<u8>>) {
    while let Some(bytes) = from_connection.blocking_recv() {
        // Held across the write: the reader cannot start the next turn (and answer its
        // host) while bytes of this one are on their way.
        let current = port.lock();
        if *current != turn {
            return;
        }
        if let Err(error) = write_all(&port.device, &bytes) {
            tracing::debug!(port = %port.name, %error, "writing to the host failed");
            return;
        }
    }
}

/// One connection on a port: the host's bytes of this turn, and a way to answer it.
#[derive(Debug)]
pub struct SerialStream {
    from_host: mpsc::Receiver<Vec<u8>>,
    unread: Vec<u8>,
    read_at: usize,
    to_host: PollSender<Vec<u8>>,
}

impl AsyncRead for SerialStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read_at == this.unread.len() {
            match this.from_host.poll_recv(context) {
                std::task::Poll::Pending => return std::task::Poll::Pending,
                // The host has gone: the end of the stream.
                std::task::Poll::Ready(None) => return std::task::Poll::Ready(Ok(())),
                std::task::Poll::Ready(Some(bytes)) => {
                    this.unread = bytes;
                    this.read_at = 0;
                }
            }
        }
        let take = buf.remaining().min(this.unread.len() - this.read_at);
        buf.put_slice(&this.unread[this.read_at..this.read_at + take]);
        this.read_at += take;
        std::task::Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SerialStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the host has gone");
        match self.to_host.poll_reserve(context) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(Err(gone())),
            std::task::Poll::Ready(Ok(())) => {
                let take = buf.len().min(READ_LEN);
                match self.to_host.send_item(buf[..take].to_vec()) {
                    Ok(()) => std::task::Poll::Ready(Ok(take)),
                    Err(_) => std::task::Poll::Ready(Err(gone())),
                }
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        // Queued chunks are written in order by the connection's writer thread.
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.to_host.close();
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/sys/class/virtio-ports` look-alike: (directory, name file, dev file).
    fn sys(entries: &[(&str, Option<&str>, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (port, name, dev) in entries {
            let path = dir.path().join(port);
            std::fs::create_dir(&path).unwrap();
            if let Some(name) = name {
                std::fs::write(path.join("name"), name).unwrap();
            }
            std::fs::write(path.join("dev"), dev).unwrap();
        }
        dir
    }

    #[test]
    fn finds_only_the_agent_ports_asked_for() {
        let dir = sys(&[
            ("vport0p1", Some("hpcc.agent.0\n"), "245:1\n"),
            ("vport0p2", Some("hpcc.agent.1\n"), "245:2\n"),
            ("vport0p3", Some("hpcc.agent.9\n"), "245:3\n"),
            ("vport0p4", Some("org.qemu.guest_agent.0\n"), "245:4\n"),
            // Not yet named by the host, or with a garbled device number.
            ("vport0p5", Some(""), "245:5\n"),
            ("vport0p6", None, "245:6\n"),
            ("vport0p7", Some("hpcc.agent.2\n"), "245\n"),
        ]);
        let mut found = find_ports(dir.path(), 4).unwrap();
        found.sort();
        assert_eq!(
            found,
            vec![
                ("hpcc.agent.0".to_owned(), 245, 1),
                ("hpcc.agent.1".to_owned(), 245, 2),
            ]
        );
        assert_eq!(find_ports(&dir.path().join("absent"), 4).unwrap(), vec![]);
    }

    #[test]
    fn port_names_match_the_runtime() {
        assert_eq!(port_name(7), "hpcc.agent.7");
    }
}
