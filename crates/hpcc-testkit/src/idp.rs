//! A minimal identity provider for the tests: serves a JWKS document over HTTP on loopback
//! (and counts requests for it), signs tokens with its key, and can rotate to another key.
//! Its `/token` endpoint answers OAuth2 form posts as real IdPs do (RFC 6749): the password
//! grant for the users added with [`Idp::add_user`] (and the public client id `hpcc-cli`),
//! client credentials for the clients added with [`Idp::add_client`], and refresh tokens
//! (rotated on use); it issues JWTs with its issuer, the audience `hpcc`, `sub` and `exp`, and
//! refuses wrong credentials with HTTP 400/401 and `{"error", "error_description"}`.
//! The validation code under test is the production one; only the IdP is a stand-in, since
//! no real IdP (Keycloak, Okta, Auth0) can run here. [`Idp::start_tls`] serves it over HTTPS
//! with a certificate from a CA of its own ([`Idp::ca_pem`]), as an IdP with a private CA.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hpcc_auth::user::testing::IdpKey;

/// The public client id users log in with (the tenants' `client_id` in `scheduler::tenant`).
pub const PUBLIC_CLIENT: &str = "hpcc-cli";
/// The audience of the tokens (the tenants' `audience`).
pub const AUDIENCE: &str = "hpcc";
/// The largest request read.
const MAX_REQUEST: usize = 64 << 10;

/// Who may get tokens, and what was asked.
struct Accounts {
    users: Vec<(String, String)>,
    clients: Vec<(String, String)>,
    /// Refresh tokens still valid, with their subject.
    refresh_tokens: Vec<(String, String)>,
    /// Lifetime of the tokens issued, in seconds.
    lifetime: u64,
    issued: usize,
    /// Every form posted to `/token`, in order.
    forms: Vec<Vec<(String, String)>>,
}

/// What a connection is, plain or TLS.
trait ReadWrite: Read + Write {}

impl<T: Read + Write> ReadWrite for T {}

/// The IdP; it stops when dropped.
pub struct Idp {
    /// Its signing key.
    pub key: Arc<IdpKey>,
    address: std::net::SocketAddr,
    jwks: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
    accounts: Arc<Mutex<Accounts>>,
    stop: Arc<AtomicBool>,
    /// `https` with a CA of its own, else `http`.
    scheme: &'static str,
    ca_pem: Option<String>,
}

struct Reply {
    status: &'static str,
    body: String,
}

fn refusal(status: &'static str, error: &str, description: &str) -> Reply {
    Reply {
        status,
        body: serde_json::json!({"error": error, "error_description": description}).to_string(),
    }
}

/// Reads one HTTP/1.1 request: head, then a body of `Content-Length` bytes.
fn read_request(stream: &mut dyn ReadWrite) -> Option<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        let read = stream.read(&mut buffer).ok()?;
        if read == 0 || data.len() > MAX_REQUEST {
            return None;
        }
        data.extend_from_slice(&buffer[..read]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST);
    while data.len() < head_end + length {
        let read = stream.read(&mut buffer).ok()?;
        if read == 0 {
            return None;
        }
        data.extend_from_slice(&buffer[..read]);
    }
    Some((head, data[head_end..head_end + length].to_vec()))
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    form.iter()
        .find(|(key, _)| key == name)
        .map_or("", |(_, value)| value.as_str())
}

/// The `/token` endpoint.
fn token(form: &[(String, String)], accounts: &mut Accounts, key: &IdpKey, issuer: &str) -> Reply {
    accounts.forms.push(form.to_vec());
    let known = |list: &[(String, String)], name: &str, secret: &str| {
        list.iter()
            .any(|(known, password)| known == name && password == secret)
    };
    let subject = match field(form, "grant_type") {
        "password" => {
            if field(form, "client_id") != PUBLIC_CLIENT {
                return refusal("401 Unauthorized", "invalid_client", "Unknown client.");
            }
            if field(form, "audience") != AUDIENCE {
                return refusal("400 Bad Request", "invalid_request", "Unknown audience.");
            }
            let user = field(form, "username");
            if !known(&accounts.users, user, field(form, "password")) {
                return refusal(
                    "400 Bad Request",
                    "invalid_grant",
                    "Wrong email or password.",
                );
            }
            user.to_owned()
        }
        "client_credentials" => {
            let client = field(form, "client_id");
            if !known(&accounts.clients, client, field(form, "client_secret")) {
                return refusal(
                    "401 Unauthorized",
                    "invalid_client",
                    "Client authentication failed.",
                );
            }
            client.to_owned()
        }
        "refresh_token" => {
            let presented = field(form, "refresh_token");
            let Some(at) = accounts
                .refresh_tokens
                .iter()
                .position(|(token, _)| token == presented)
            else {
                return refusal(
                    "400 Bad Request",
                    "invalid_grant",
                    "Unknown or expired refresh token.",
                );
            };
            // Rotation: a refresh token works once.
            accounts.refresh_tokens.remove(at).1
        }
        _ => {
            return refusal(
                "400 Bad Request",
                "unsupported_grant_type",
                "Grant type not supported.",
            )
        }
    };
    accounts.issued += 1;
    let now = now();
    let access_token = match key.mint(&serde_json::json!({
        "sub": subject, "iss": issuer, "aud": AUDIENCE, "iat": now, "exp": now + accounts.lifetime,
    })) {
        Ok(token) => token,
        Err(error) => {
            return refusal(
                "500 Internal Server Error",
                "server_error",
                &error.to_string(),
            )
        }
    };
    let mut body = serde_json::json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": accounts.lifetime,
    });
    // Users get refresh tokens; clients log in again with their secret.
    if field(form, "grant_type") != "client_credentials" {
        let refresh_token = format!("refresh-{}-{}", accounts.issued, now);
        accounts
            .refresh_tokens
            .push((refresh_token.clone(), subject));
        body["refresh_token"] = refresh_token.into();
    }
    Reply {
        status: "200 OK",
        body: body.to_string(),
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl Idp {
    /// Starts an IdP whose key is named after `name`, over HTTP.
    pub fn start(name: &str) -> Result<Idp, String> {
        Idp::start_with(name, None)
    }

    /// Starts an IdP whose key is named after `name`, over HTTPS with a certificate from a
    /// throwaway CA of its own ([`Idp::ca_pem`]).
    pub fn start_tls(name: &str) -> Result<Idp, String> {
        Idp::start_with(name, Some(crate::pki::Pki::new(name)?))
    }

    /// The PEM certificate of the CA its HTTPS certificate chains to (HTTPS only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    fn start_with(name: &str, pki: Option<crate::pki::Pki>) -> Result<Idp, String> {
        let tls = pki
            .as_ref()
            .map(crate::pki::Pki::server_config)
            .transpose()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let key = Arc::new(IdpKey::generate(&format!("{name}-k1")).map_err(|e| e.to_string())?);
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let jwks = Arc::new(Mutex::new(key.jwks_json()));
        let requests = Arc::new(AtomicUsize::new(0));
        let accounts = Arc::new(Mutex::new(Accounts {
            users: Vec::new(),
            clients: Vec::new(),
            refresh_tokens: Vec::new(),
            lifetime: 600,
            issued: 0,
            forms: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (jwks, requests, accounts, stop, key) = (
                Arc::clone(&jwks),
                Arc::clone(&requests),
                Arc::clone(&accounts),
                Arc::clone(&stop),
                Arc::clone(&key),
            );
            let issuer = format!("{scheme}://{address}");
            std::thread::spawn(move || {
                // A backstop for a test that leaks its IdP; dropping it stops the thread.
                let deadline = std::time::Instant::now() + Duration::from_secs(3600);
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    let Ok((stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let serve = |stream: &mut dyn ReadWrite| {
                        let Some((head, body)) = read_request(stream) else {
                            return;
                        };
                        let reply = if head.starts_with("GET /jwks") {
                            requests.fetch_add(1, Ordering::Relaxed);
                            Reply {
                                status: "200 OK",
                                body: jwks.lock().map(|jwks| jwks.clone()).unwrap_or_default(),
                            }
                        } else if head.starts_with("POST /token ") {
                            let form: Vec<(String, String)> = form_urlencoded::parse(&body)
                                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                                .collect();
                            match accounts.lock() {
                                Ok(mut accounts) => token(&form, &mut accounts, &key, &issuer),
                                Err(_) => {
                                    refusal("500 Internal Server Error", "server_error", "lock")
                                }
                            }
                        } else {
                            Reply {
                                status: "200 OK",
                                body: String::from("{}"),
                            }
                        };
                        let _ = write!(
                            stream,
                            "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                            reply.status,
                            reply.body.len(),
                            reply.body
                        );
                        let _ = stream.flush();
                    };
                    match &tls {
                        Some(config) => {
                            let Ok(connection) = rustls::ServerConnection::new(Arc::clone(config))
                            else {
                                continue;
                            };
                            let mut stream = rustls::StreamOwned::new(connection, stream);
                            serve(&mut stream);
                            stream.conn.send_close_notify();
                            let _ = stream.flush();
                        }
                        None => serve(&mut { stream }),
                    }
                }
            });
        }
        Ok(Idp {
            key,
            address,
            jwks,
            requests,
            accounts,
            stop,
            scheme,
            ca_pem: pki.map(|pki| pki.ca_pem),
        })
    }

    /// Its issuer (`iss`).
    pub fn issuer(&self) -> String {
        format!("{}://{}", self.scheme, self.address)
    }

    /// Where its JWKS is.
    pub fn jwks_uri(&self) -> String {
        format!("{}://{}/jwks", self.scheme, self.address)
    }

    /// Its OAuth2 token endpoint.
    pub fn token_uri(&self) -> String {
        format!("{}://{}/token", self.scheme, self.address)
    }

    /// How many times its JWKS was fetched.
    pub fn jwks_requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Publishes `key` instead of the original (a key rotation).
    pub fn publish(&self, key: &IdpKey) {
        if let Ok(mut jwks) = self.jwks.lock() {
            *jwks = key.jwks_json();
        }
    }

    /// Accepts `user` with `password` in the password grant.
    pub fn add_user(&self, user: &str, password: &str) {
        if let Ok(mut accounts) = self.accounts.lock() {
            accounts.users.push((user.into(), password.into()));
        }
    }

    /// Accepts `client` with `secret` in the client credentials grant.
    pub fn add_client(&self, client: &str, secret: &str) {
        if let Ok(mut accounts) = self.accounts.lock() {
            accounts.clients.push((client.into(), secret.into()));
        }
    }

    /// Issues tokens valid for `seconds` from now on.
    pub fn set_lifetime(&self, seconds: u64) {
        if let Ok(mut accounts) = self.accounts.lock() {
            accounts.lifetime = seconds;
        }
    }

    /// The forms posted to `/token` so far.
    pub fn token_forms(&self) -> Vec<Vec<(String, String)>> {
        self.accounts
            .lock()
            .map(|accounts| accounts.forms.clone())
            .unwrap_or_default()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
