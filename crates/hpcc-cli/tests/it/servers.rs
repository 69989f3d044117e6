//! Real store servers on loopback for the remote tests: `redis-server` (Debian) and moto's S3
//! server (PyPI), each on a free port and killed when dropped; and misbehaving TCP servers
//! (a black hole, a trickle) run on threads of the test.
//!
//! hpcc-store's integration tests include this file too (`#[path]`), so it needs nothing of
//! this harness but `crate::harness::is_root`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|e| format!("local_addr: {e}"))
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited early: {status}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} did not listen on port {port} within 30 s"))
}

/// Starts `command` (output discarded) and waits until it listens on `port`.
fn spawn_listening(mut command: Command, port: u16, what: &str) -> Result<Server, String> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {what}: {e}"))?;
    wait_for_port(port, &mut child, what)?;
    Ok(Server {
        child: Some(child),
        port,
    })
}

/// A server process, killed on drop.
pub struct Server {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Server {
    /// Kills it now (kill -9), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-server` on a free port, without persistence.
pub fn redis(dir: &Path) -> Result<Server, String> {
    redis_with(dir, &[])
}

/// `redis-server` on a free port, without persistence, with more `--option value` arguments
/// (hpcc-store's tests start the nodes of a Redis Cluster with it).
pub fn redis_with(dir: &Path, options: &[&str]) -> Result<Server, String> {
    let port = free_port()?;
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .args(options);
    spawn_listening(command, port, "redis-server")
}

/// `memcached` on a free port, taking items up to 64 MiB (the default is 1 MiB, less than a
/// large object file).
pub fn memcached() -> Result<Server, String> {
    let port = free_port()?;
    let mut command = Command::new("memcached");
    command.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"]);
    command.args(["-m", "256", "-I", "64m"]);
    if crate::harness::is_root() {
        command.args(["-u", "root"]);
    }
    spawn_listening(command, port, "memcached")
}

/// Runs a command against the Redis server on `port`, returning its output.
pub fn redis_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map_err(|e| format!("redis-cli: {e}"))?;
    if !out.status.success() {
        return Err(format!("redis-cli {args:?} failed"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// moto's S3 server on a free port, with bucket `bucket` created.
pub fn s3(bucket: &str) -> Result<Server, String> {
    let port = free_port()?;
    let mut command = Command::new("python3");
    command.args([
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ]);
    let server = spawn_listening(command, port, "moto's server")?;
    // moto accepts an unsigned CreateBucket; hpcc itself never creates buckets unasked.
    let response = http_request(
        port,
        &format!("PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!("creating bucket {bucket}: {response}"));
    }
    Ok(server)
}

/// Sends `request` (a whole HTTP/1.1 request, with `Connection: close`) to the server on
/// `port`, returning the whole response.
pub fn http_request(port: u16, request: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connecting: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending: {e}"))?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// The environment an hpcc daemon needs for the S3 server: static test credentials, and the
/// instance-metadata lookup of the AWS chain turned off.
pub const S3_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// A TCP server on a thread: accepts connections and holds them open, reading nothing,
/// answering nothing (or, with `trickle`, sending a valid HTTP header and then one body byte
/// every 200 ms). Stops when dropped.
pub struct Misbehaving {
    /// Its address.
    pub address: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Misbehaving {
    /// Starts one.
    pub fn start(trickle: bool) -> Result<Misbehaving, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            // Bounded: the test is over within minutes whatever happens.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stopping.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if trickle {
                            let stopping = Arc::clone(&stopping);
                            std::thread::spawn(move || trickle_to(stream, &stopping));
                        } else {
                            held.push(stream);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Misbehaving { address, stop })
    }
}

fn trickle_to(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut request = [0u8; 8192];
    let _ = stream.read(&mut request);
    if stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        .is_err()
    {
        return;
    }
    for _ in 0..3000 {
        if stop.load(Ordering::Relaxed) || stream.write_all(b"x").is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for Misbehaving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
