//! A minimal identity provider for the tests: serves a JWKS document over HTTP on loopback
//! (and counts requests for it), signs tokens with its key, and can rotate to another key.
//! The validation code under test is the production one; only the IdP is a stand-in, since
//! no real IdP (Keycloak, Okta, Auth0) can run here.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hpcc_auth::user::testing::IdpKey;

pub struct Idp {
    pub key: IdpKey,
    address: std::net::SocketAddr,
    jwks: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Idp {
    pub fn start(name: &str) -> Result<Idp, String> {
        let key = IdpKey::generate(&format!("{name}-k1")).map_err(|e| e.to_string())?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let jwks = Arc::new(Mutex::new(key.jwks_json()));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (jwks, requests, stop) =
                (Arc::clone(&jwks), Arc::clone(&requests), Arc::clone(&stop));
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(300);
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    let Ok((mut stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut request = [0u8; 4096];
                    let read = stream.read(&mut request).unwrap_or(0);
                    let text = String::from_utf8_lossy(&request[..read]);
                    let body = if text.starts_with("GET /jwks") {
                        requests.fetch_add(1, Ordering::Relaxed);
                        jwks.lock().map(|jwks| jwks.clone()).unwrap_or_default()
                    } else {
                        String::from("{}")
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
        Ok(Idp {
            key,
            address,
            jwks,
            requests,
            stop,
        })
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn jwks_uri(&self) -> String {
        format!("http://{}/jwks", self.address)
    }

    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.address)
    }

    pub fn jwks_requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Publishes `key` instead of the original (a key rotation).
    pub fn publish(&self, key: &IdpKey) {
        if let Ok(mut jwks) = self.jwks.lock() {
            *jwks = key.jwks_json();
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
