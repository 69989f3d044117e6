//! A throwaway `docker-registry` (Debian's build of the CNCF distribution registry) listening
//! on a free port of 127.0.0.1, with its storage in a temporary directory; killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Whether the registry binary is installed.
pub fn installed() -> bool {
    Command::new("docker-registry")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// A running registry.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub address: String,
    dir: TempDir,
}

impl Registry {
    /// Starts a registry and waits until `/v2/` answers (at most 20 s).
    pub fn start() -> Result<Registry, String> {
        let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
        // Ask the kernel for a free port, then hand it to the registry. Another process could
        // take it in between; on a test machine that is rare enough to report as a failure.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|error| error.to_string())?
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("data");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {address}\n",
                storage.display()
            ),
        )
        .map_err(|error| error.to_string())?;
        let log = std::fs::File::create(dir.path().join("registry.log"))
            .map_err(|error| error.to_string())?;
        let log_err = log.try_clone().map_err(|error| error.to_string())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|error| format!("cannot start docker-registry: {error}"))?;
        let registry = Registry {
            child,
            address,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if registry.answers() {
                return Ok(registry);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "docker-registry did not start; its log:\n{}",
            registry.log()
        ))
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(&self.address) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.address);
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
    }

    /// The registry's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Where the registry keeps blob `hex` (its filesystem driver's layout).
    pub fn blob_data(&self, hex: &str) -> PathBuf {
        storage_blob(&self.dir.path().join("data"), hex)
    }
}

fn storage_blob(storage: &Path, hex: &str) -> PathBuf {
    storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
