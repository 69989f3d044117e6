//! Hybrid vsock, the host end of a guest's vsock port as Firecracker and
//! `vhost-device-vsock` expose it: connect to the VMM's Unix socket, write `CONNECT <port>\n`,
//! read `OK <host port>\n`; the socket then carries the guest connection's bytes.
//!
//! The handshake is bounded in time ([`CONNECT_TIMEOUT`]): a backend that takes the `CONNECT`
//! line but never answers (a guest whose vsock driver is not up yet, a stuck backend) must not
//! hold a caller forever.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The longest acknowledgement line accepted (`OK ` and a 32-bit port, with room to spare).
const MAX_REPLY: usize = 32;

/// How long the handshake of [`connect`] may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection to guest `port` through the hybrid-vsock socket at `uds`, within
/// [`CONNECT_TIMEOUT`].
pub async fn connect(uds: &Path, port: u32) -> io::Result<UnixStream> {
    connect_within(uds, port, CONNECT_TIMEOUT).await
}

/// [`connect`] with its own time limit.
pub async fn connect_within(uds: &Path, port: u32, limit: Duration) -> io::Result<UnixStream> {
    tokio::time::timeout(limit, handshake(uds, port))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "hybrid vsock: no answer to CONNECT {port} on {} within {} ms",
                    uds.display(),
                    limit.as_millis()
                ),
            ))
        })
}

async fn handshake(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    // Byte by byte, so nothing of the guest's stream after the line is consumed here.
    let mut line = Vec::with_capacity(MAX_REPLY);
    loop {
        let byte = stream.read_u8().await.map_err(|error| {
            if error.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("nothing listens on guest vsock port {port}"),
                )
            } else {
                error
            }
        })?;
        if byte == b'\n' {
            break;
        }
        if line.len() == MAX_REPLY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "hybrid vsock: acknowledgement line too long",
            ));
        }
        line.push(byte);
    }
    let reply = String::from_utf8_lossy(&line);
    match reply.strip_prefix("OK ").map(str::parse::<u32>) {
        Some(Ok(_)) => Ok(stream),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("hybrid vsock: unexpected reply {reply:?} to CONNECT {port}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VMM stand-in that answers each connection's CONNECT line with `reply` and then echoes.
    async fn vmm(uds: &Path, reply: &'static [u8]) -> tokio::task::JoinHandle<Vec<u8>> {
        let listener = tokio::net::UnixListener::bind(uds).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            loop {
                let byte = stream.read_u8().await.unwrap();
                request.push(byte);
                if byte == b'\n' {
                    break;
                }
            }
            if reply.is_empty() {
                return request;
            }
            stream.write_all(reply).await.unwrap();
            let mut rest = [0u8; 5];
            if stream.read_exact(&mut rest).await.is_ok() {
                stream.write_all(&rest).await.unwrap();
            }
            request
        })
    }

    #[tokio::test]
    async fn speaks_the_handshake_and_then_carries_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        // The first guest bytes arrive in the same packet as the acknowledgement.
        let server = vmm(&uds, b"OK 1073741824\nhello").await;
        let mut stream = connect(&uds, 1024).await.unwrap();
        let mut greeting = [0u8; 5];
        stream.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"hello");
        stream.write_all(b"world").await.unwrap();
        let mut echo = [0u8; 5];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"world");
        assert_eq!(server.await.unwrap(), b"CONNECT 1024\n");
    }

    #[tokio::test]
    async fn refusals_and_garbage_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (reply, expected) in [
            (&b""[..], "nothing listens"),
            (&b"NO\n"[..], "unexpected reply"),
            (&b"OK x\n"[..], "unexpected reply"),
            (&[b'O'; 100][..], "too long"),
        ] {
            let uds = dir.path().join(format!("{}.sock", reply.len()));
            let reply: &'static [u8] = Box::leak(reply.to_vec().into_boxed_slice());
            let _server = vmm(&uds, reply).await;
            let error = connect(&uds, 7).await.unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
        let error = connect(&dir.path().join("absent.sock"), 7)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn a_backend_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("silent.sock");
        // Accepts and reads the CONNECT line, then says nothing, as a stuck backend would.
        let listener = tokio::net::UnixListener::bind(&uds).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        });
        let started = std::time::Instant::now();
        let error = connect_within(&uds, 7, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        server.abort();
    }
}
