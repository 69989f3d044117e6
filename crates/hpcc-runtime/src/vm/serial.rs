//! The host end of the agent's virtio-serial ports (the `qemu` runtime's agent channel).
//!
//! QEMU backs port `n` of a guest (`hpcc.agent.<n>`) with a listening Unix socket; one
//! connection to it is one job. [`Ports`] hands out a free port per connection, the least
//! recently released first, so a port a cancelled job just left is the last to be reused, and
//! releases it when the [`PortStream`] drops. [`open`] connects and speaks the preamble of
//! [`hpcc_proto::serial_sync`], which the agent answers; bytes before the answer belong to an
//! earlier connection on the port and are discarded.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hpcc_proto::serial_sync::{preamble, Scanner, ACK_MAGIC, NONCE_LEN, SYNC_MAGIC};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Port `n` is named this and `n` in the guest (`hpcc-agent`'s `serial::PORT_NAME_PREFIX`).
pub const PORT_NAME_PREFIX: &str = "hpcc.agent.";

/// How long the host waits for an answer before writing its preamble again (the first copy
/// may have gone to the end of the port's previous connection).
const RESEND: Duration = Duration::from_millis(500);

/// The socket of port `index` in a session directory.
pub fn socket_path(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("port-{index}.sock"))
}

/// A session's ports.
#[derive(Debug)]
pub struct Ports {
    dir: PathBuf,
    free: Mutex<VecDeque<u32>>,
    permits: Arc<Semaphore>,
}

impl Ports {
    /// `count` ports whose sockets are in `dir`.
    pub fn new(dir: &Path, count: u32) -> Arc<Ports> {
        Ports::range(dir, 0, count)
    }

    /// Ports `first..first + count` of a guest whose sockets are in `dir`.
    pub fn range(dir: &Path, first: u32, count: u32) -> Arc<Ports> {
        Arc::new(Ports {
            dir: dir.to_owned(),
            free: Mutex::new((first..first.saturating_add(count)).collect()),
            permits: Arc::new(Semaphore::new(usize::try_from(count).unwrap_or(1))),
        })
    }

    /// Connects to a free port (waiting up to `wait` for one) and synchronises with the agent
    /// there within `answer` of getting it.
    pub async fn connect(
        self: &Arc<Ports>,
        wait: Duration,
        answer: Duration,
    ) -> io::Result<PortStream> {
        let permit = tokio::time::timeout(wait, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("every agent port is busy after {} s", wait.as_secs_f32()),
                )
            })?
            .map_err(io::Error::other)?;
        let index = self
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop_front()
            .ok_or_else(|| io::Error::other("no free port despite a permit"))?;
        let lease = Lease {
            ports: Arc::clone(self),
            index,
            _permit: permit,
        };
        let stream = open(&socket_path(&self.dir, index), answer).await?;
        Ok(PortStream {
            stream,
            _lease: lease,
        })
    }
}

/// A port in use; back at the end of the free list when dropped.
#[derive(Debug)]
struct Lease {
    ports: Arc<Ports>,
    index: u32,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.ports
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push_back(self.index);
    }
}

/// A connection to the agent on one port, which it holds until dropped.
#[derive(Debug)]
pub struct PortStream {
    stream: UnixStream,
    _lease: Lease,
}

impl AsyncRead for PortStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(context, buf)
    }
}

impl AsyncWrite for PortStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }
}

/// Connects to the port socket at `path` and waits up to `answer` for the agent's answer to a
/// fresh preamble; the stream then carries this connection's frames only.
pub async fn open(path: &Path, answer: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + answer;
    let context = |error: io::Error| {
        io::Error::new(
            error.kind(),
            format!("agent port {}: {error}", path.display()),
        )
    };
    // QEMU admits one client per port at a time and may not yet have seen the previous one
    // go; until then a connection may be refused (its backlog is one).
    let mut stream = loop {
        match UnixStream::connect(path).await {
            Ok(stream) => break stream,
            Err(error) if Instant::now() >= deadline => return Err(context(error)),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut nonce = [0u8; NONCE_LEN];
    rustix::rand::getrandom(&mut nonce, rustix::rand::GetRandomFlags::empty())
        .map_err(|errno| context(errno.into()))?;
    let sync = preamble(&SYNC_MAGIC, &nonce);
    let mut scanner = Scanner::new(ACK_MAGIC);
    let mut buffer = [0u8; 512];
    loop {
        stream.write_all(&sync).await.map_err(context)?;
        let resend_at = (Instant::now() + RESEND).min(deadline);
        loop {
            let read = match tokio::time::timeout_at(resend_at, stream.read(&mut buffer)).await {
                Err(_) => break,
                Ok(Ok(0)) => {
                    return Err(context(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "QEMU closed the port before the agent answered",
                    )))
                }
                Ok(Ok(read)) => read,
                Ok(Err(error)) => return Err(context(error)),
            };
            let mut rest = &buffer[..read];
            while let Some((answered, used)) = scanner.feed(rest) {
                rest = &rest[used..];
                if answered != nonce {
                    // The answer to an earlier connection's preamble: not ours.
                    continue;
                }
                if !rest.is_empty() {
                    // The agent writes nothing after its answer until it has our hello.
                    return Err(context(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the agent sent bytes after its answer unasked",
                    )));
                }
                return Ok(stream);
            }
        }
        if Instant::now() >= deadline {
            return Err(context(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from the agent in {} s", answer.as_secs_f32()),
            )));
        }
    }
}
