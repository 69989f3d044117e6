//! Where the agent's connections come from.
//!
//! [`Listener`] is all the server loop needs: the sandbox hands the agent a Unix socket path
//! ([`UnixSocketListener`]); in a microVM it listens on a vsock port ([`VsockPortListener`]),
//! which the host reaches through the VMM's hybrid-vsock Unix socket.

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::AgentConfig;
use crate::serve;

/// A source of connections, one job each.
pub trait Listener {
    /// A connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next connection.
    fn accept(&self) -> impl Future<Output = io::Result<Self::Stream>>;
}

/// A listening Unix socket.
#[derive(Debug)]
pub struct UnixSocketListener {
    listener: tokio::net::UnixListener,
}

impl UnixSocketListener {
    /// Binds `path` (removing a stale socket first), readable and writable by its owner only.
    pub fn bind(path: &Path) -> io::Result<UnixSocketListener> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let listener = tokio::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(UnixSocketListener { listener })
    }
}

impl Listener for UnixSocketListener {
    type Stream = tokio::net::UnixStream;

    async fn accept(&self) -> io::Result<tokio::net::UnixStream> {
        let (stream, _) = self.listener.accept().await?;
        Ok(stream)
    }
}

/// A listening vsock port, on any CID.
#[derive(Debug)]
pub struct VsockPortListener {
    listener: tokio_vsock::VsockListener,
}

impl VsockPortListener {
    /// Binds `port` on `VMADDR_CID_ANY`.
    pub fn bind(port: u32) -> io::Result<VsockPortListener> {
        let address = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
        Ok(VsockPortListener {
            listener: tokio_vsock::VsockListener::bind(address)?,
        })
    }
}

impl Listener for VsockPortListener {
    type Stream = tokio_vsock::VsockStream;

    async fn accept(&self) -> io::Result<tokio_vsock::VsockStream> {
        let (stream, _) = self.listener.accept().await?;
        Ok(stream)
    }
}

/// Accepts connections until the listener fails for good, serving each concurrently.
pub async fn serve_forever<L: Listener>(listener: L, config: Arc<AgentConfig>) -> io::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            // Out of descriptors or memory: back off rather than spin or die, since the
            // connections in flight will release them.
            Err(error) if is_transient(&error) => {
                tracing::warn!(%error, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        let config = Arc::clone(&config);
        spawn_named("connection", async move {
            if let Err(error) = serve::serve_connection(&config, stream).await {
                tracing::info!(error = %format_args!("{error:#}"), "connection ended early");
            }
        });
    }
}

fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
            || code == rustix::io::Errno::NFILE.raw_os_error()
            || code == rustix::io::Errno::NOMEM.raw_os_error()
            || code == rustix::io::Errno::NOBUFS.raw_os_error()
            || code == rustix::io::Errno::CONNABORTED.raw_os_error()
            || code == rustix::io::Errno::INTR.raw_os_error()
    )
}

/// The agent's one place that spawns tasks, so each carries a name in its span.
pub(crate) fn spawn_named<F>(name: &'static str, future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let span = tracing::info_span!("task", name);
    #[allow(clippy::disallowed_methods)] // the helper itself
    tokio::spawn(tracing::Instrument::instrument(future, span));
}
