//! How the wrapper and the local daemon meet: endpoints, connections and frames.
//!
//! The local daemon is one long-running process per cache (and configuration) that serves hits
//! from state it keeps between compiles, deduplicates identical compiles in flight and limits
//! how many compiles run at once.
//!
//! - The process itself is `hpccd` (crate `hpcc-daemon`), found by [`daemon_binary`].
//! - The wrapper's side, and `hpcc start`, `stop`, `status`, are in `hpcc-cli` (`client.rs`);
//!   the serving side is `hpcc-daemon`'s `server/`. Both use the types here.
//!
//! **Who runs the compiler.** The daemon looks compiles up and serves hits (writing the outputs
//! for the caller); on a miss it answers `COMPILE_HERE` and the *wrapper* runs the compiler, as
//! its own child, and stores the result, holding one of the daemon's compile slots until it says
//! it has finished. A compiler is therefore never an orphan of a killed daemon that might still
//! be writing an object while the wrapper's fallback writes the same file. Identical compiles
//! that arrive while one runs wait for it and then hit (or share its failure). With
//! `[remote_compile]` the daemon may instead compile a miss on the farm while the wrapper waits:
//! it then runs only the preprocessor here, and any farm failure is a `COMPILE_HERE`.
//!
//! **Endpoint.** Files in the user's runtime directory (`$XDG_RUNTIME_DIR/hpcc`, else
//! `/tmp/hpcc-<uid>`, created 0700 and refused if anyone else could write it), named by a
//! digest of the cache directory and the configuration (but for the wrapper's own keys
//! `daemon.enabled`, `autostart` and `reply_timeout_ms`), so a daemon always runs with the
//! settings of the wrappers it serves: `<name>.sock` (the Unix socket, 0600), `<name>.tcp`
//! (with the TCP transport: the address and the token, 0600), `<name>.lock` (held by the
//! running daemon, with its pid) and `<name>.log`.

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hpcc_core::frame::{read_frame, write_frame, FrameError, MAX_FRAME_LEN};
use prost::Message;

use crate::settings::Settings;

/// The `hpccd` executable: beside this one (as installed and as cargo builds them), else on
/// `PATH`.
pub fn daemon_binary() -> Result<PathBuf> {
    crate::find::companion_binary("hpccd")
}

/// Where the daemon for one cache and configuration listens and leaves its files.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The runtime directory (0700).
    pub dir: PathBuf,
    /// The file stem shared by the socket, lock, TCP and log files.
    pub name: String,
}

impl Endpoint {
    /// The endpoint for these settings; creates the runtime directory if needed.
    pub fn for_settings(settings: &Settings) -> Result<Endpoint> {
        let dir = runtime_dir()?;
        // Client-only keys do not select another daemon.
        let mut config = settings.config.clone();
        config.cache_dir = Some(settings.cache_dir.clone());
        config.daemon.enabled = true;
        config.daemon.autostart = true;
        config.daemon.reply_timeout_ms = 0;
        let text = toml::to_string(&config).context("serializing the configuration")?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(settings.cache_dir.as_os_str().as_encoded_bytes());
        hasher.update(b"\0");
        hasher.update(text.as_bytes());
        let name = hasher.finalize().to_hex()[..16].to_string();
        Ok(Endpoint { dir, name })
    }

    fn file(&self, extension: &str) -> PathBuf {
        self.dir.join(format!("{}.{extension}", self.name))
    }

    /// The Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.file("sock")
    }

    /// The TCP address and token file.
    pub fn tcp_file(&self) -> PathBuf {
        self.file("tcp")
    }

    /// The lock the running daemon holds (its pid inside).
    pub fn lock_file(&self) -> PathBuf {
        self.file("lock")
    }

    /// The daemon's log when started in the background.
    pub fn log_file(&self) -> PathBuf {
        self.file("log")
    }
}

/// `$XDG_RUNTIME_DIR/hpcc`, else `/tmp/hpcc-<uid>`: created private, and refused unless it is a
/// directory of ours that nobody else can write (a socket in a directory another user controls
/// could be replaced by theirs).
pub fn runtime_dir() -> Result<PathBuf> {
    let uid = rustix::process::getuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(base) if base.is_absolute() => base.join("hpcc"),
        _ => std::env::temp_dir().join(format!("hpcc-{uid}")),
    };
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error).with_context(|| format!("creating {dir:?}")),
    }
    let meta = fs::symlink_metadata(&dir).with_context(|| format!("inspecting {dir:?}"))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        bail!(
            "runtime directory {dir:?} is not a private directory of user {uid} \
             (mode {:o}, owner {}); not using the daemon",
            meta.mode() & 0o7777,
            meta.uid()
        );
    }
    Ok(dir)
}

/// Writes `contents` to `path` readable by the owner only, atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.with_context(|| format!("writing {path:?}"))
}

/// A connection to or from the daemon, over either transport.
pub enum Connection {
    /// A Unix domain socket.
    Unix(UnixStream),
    /// Loopback TCP.
    Tcp(TcpStream),
}

impl Connection {
    /// Bounds every later read (`None`: wait forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Connection::Unix(stream) => stream.set_read_timeout(timeout),
            Connection::Tcp(stream) => stream.set_read_timeout(timeout),
        }
    }

    /// Bounds every later write.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Connection::Unix(stream) => stream.set_write_timeout(timeout),
            Connection::Tcp(stream) => stream.set_write_timeout(timeout),
        }
    }

    /// Sends one message in one frame (written whole and flushed).
    pub fn send(&mut self, message: &impl Message) -> io::Result<()> {
        write_frame(self, message, MAX_FRAME_LEN).map_err(io::Error::from)
    }

    /// Receives one message of type `M`.
    pub fn receive<M: Message + Default>(&mut self) -> Result<M, ReceiveError> {
        read_frame(self, MAX_FRAME_LEN)
            .map_err(ReceiveError::Frame)?
            .ok_or(ReceiveError::Closed)
    }
}

/// Why a message could not be received.
#[derive(Debug)]
pub enum ReceiveError {
    /// The peer closed the connection cleanly before a message began.
    Closed,
    /// The frame was refused, cut short or undecodable, or the connection failed.
    Frame(FrameError),
}

impl std::fmt::Display for ReceiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReceiveError::Closed => f.write_str("connection closed"),
            ReceiveError::Frame(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for ReceiveError {}

impl Read for Connection {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Unix(stream) => stream.read(buffer),
            Connection::Tcp(stream) => stream.read(buffer),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Unix(stream) => stream.write(buffer),
            Connection::Tcp(stream) => stream.write(buffer),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Connection::Unix(stream) => stream.flush(),
            Connection::Tcp(stream) => stream.flush(),
        }
    }
}

/// The contents of the TCP endpoint file: address line, token line (hex).
pub fn parse_tcp_file(text: &str) -> Option<(std::net::SocketAddr, Vec<u8>)> {
    let mut lines = text.lines();
    let address = lines.next()?.trim().parse().ok()?;
    let token = hex_decode(lines.next()?.trim())?;
    Some((address, token))
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 256 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            use hpcc_proto::daemon::{Hello, Request, Reply};
            let _ = Hello::decode(bytes.as_slice());
            let _ = Request::decode(bytes.as_slice());
            let _ = Reply::decode(bytes.as_slice());
        }
    }

    #[test]
    fn tcp_files_parse_or_are_refused() {
        let (address, token) =
            parse_tcp_file("127.0.0.1:4000\n00ff10\n").expect("valid endpoint file");
        assert_eq!(address.port(), 4000);
        assert_eq!(token, vec![0, 255, 16]);
        for bad in [
            "",
            "127.0.0.1:4000\n",
            "nonsense\n00\n",
            "127.0.0.1:1\n0g\n",
            "127.0.0.1:1\n123\n",
        ] {
            assert!(parse_tcp_file(bad).is_none(), "{bad:?}");
        }
    }
}
