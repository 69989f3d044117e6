//! Tokens for remote compilation: `hpcc login` gets one from the tenant's identity provider and
//! keeps it in a private file; the daemon reads it back with [`cached_token`] before it asks
//! the scheduler for a worker.
//!
//! **Finding the IdP.** The configuration names only the tenant and the scheduler; the
//! scheduler's unauthenticated `GetTenantIdP` gives the token endpoint, the audience and the
//! public client id ([`discover`], under the farm client's TLS rules). The token request is an
//! OAuth2 form POST (RFC 6749 §4.3 password, §4.4 client credentials, §6 refresh) with a 10 s
//! deadline, no redirects (credentials are never re-posted elsewhere) and a capped body; the
//! endpoint must be `https` unless `insecure_plaintext` is set.
//!
//! **The cache.** One JSON file per tenant, `<tokens_dir>/<tenant>.json` ([`tokens_dir`]:
//! `$XDG_STATE_HOME/hpcc/tokens`, else `~/.local/state/hpcc/tokens`), in a 0700 directory,
//! mode 0600, written atomically (a 0600 temporary file in the same directory, fsync, rename,
//! fsync of the directory), so a reader sees the old token or the new one, never half of one.
//! A reader refuses a file that is a symbolic link, is not a regular file, belongs to another
//! user or grants anything to group or others: a bearer token anyone else could read, or plant,
//! is not used. Tenant ids become file names only if they are safe ones ([`check_tenant`]).
//! A token within [`EXPIRY_MARGIN_SECS`] of its expiry is not used either; [`refresh`] renews it
//! with its refresh token. The file's JSON is an interface between builds: fields are only added.
//!
//! The functions that touch files take the directory explicitly (`*_in`); only [`cached_token`]
//! and [`refresh`] read the environment, so tests never share process-global state.

use std::fmt;
use std::fs::{File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hpcc_core::config::RemoteCompileConfig;
use hpcc_proto::scheduler::scheduler_client::SchedulerClient;
use hpcc_proto::scheduler::GetTenantIdPRequest;
use serde::{Deserialize, Serialize};

/// A token is treated as expired this long before its `expires_at`, so that it does not run
/// out between being read and being checked by the scheduler.
pub const EXPIRY_MARGIN_SECS: u64 = 30;
/// Deadline of each call to the scheduler and to the token endpoint.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest token file read, and the largest token response accepted.
const MAX_TOKEN_BYTES: usize = 64 << 10;
/// How much of an unexpected error body is shown.
const MAX_EXCERPT: usize = 300;

/// A password, client secret or refresh token: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: String) -> Secret {
        Secret(text)
    }

    /// The secret itself, to be sent where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(..)")
    }
}

/// How to get a token.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Grant {
    /// A user's name and password (resource-owner password grant) with the tenant's public
    /// client id.
    Password {
        /// The user.
        username: String,
        /// The password.
        password: Secret,
        /// The `scope` parameter, if any.
        scope: Option<String>,
    },
    /// A confidential client's id and secret (client credentials grant), for CI.
    ClientCredentials {
        /// The client id; `None` is the tenant's public client id.
        client_id: Option<String>,
        /// The client secret.
        client_secret: Secret,
        /// The `scope` parameter, if any.
        scope: Option<String>,
    },
    /// A refresh token kept from an earlier login.
    RefreshToken {
        /// The refresh token.
        refresh_token: Secret,
    },
}

/// Where a tenant's tokens come from, as the scheduler describes its IdP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// The OAuth2 token endpoint.
    pub token_endpoint: String,
    /// The public client id users log in with.
    pub client_id: String,
    /// The audience to ask for (sent as `audience` only if not empty: Auth0 needs it).
    pub audience: String,
}

/// A cached token: the file `<tokens_dir>/<tenant>.json`. Unknown fields are ignored, so a
/// newer hpcc may add some.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedToken {
    /// The tenant it is for.
    pub tenant: String,
    /// The bearer token the scheduler checks.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// When it expires, Unix seconds (from `expires_in`, else the JWT's `exp`).
    pub expires_at: u64,
    /// A refresh token, if the IdP gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The endpoint it came from (a refresh goes there).
    pub token_endpoint: String,
    /// The client id it was issued to.
    pub client_id: String,
}

impl CachedToken {
    /// Whether it is still usable at `now`, [`EXPIRY_MARGIN_SECS`] included.
    pub fn is_valid_at(&self, now: u64) -> bool {
        now.saturating_add(EXPIRY_MARGIN_SECS) < self.expires_at
    }
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("CachedToken")
            .field("tenant", &self.tenant)
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Why no usable token could be read (or written).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The tenant id cannot be a file name.
    #[error(
        "tenant id {0:?} is not a safe file name (1 to 200 letters, digits, '.', '_' and '-', \
         not starting with '.')"
    )]
    BadTenant(String),
    /// Neither `XDG_STATE_HOME` nor `HOME` is an absolute path.
    #[error("no state directory: neither XDG_STATE_HOME nor HOME is an absolute path")]
    NoStateDir,
    /// No token file: the user has not logged in.
    #[error("no token for tenant {tenant:?} (no {}): run `hpcc login`", path.display())]
    Missing {
        /// The tenant.
        tenant: String,
        /// The file looked for.
        path: PathBuf,
    },
    /// The cached token has expired (and could not be refreshed).
    #[error(
        "the token for tenant {tenant:?} expired at {}: run `hpcc login`",
        rfc3339(*expires_at)
    )]
    Expired {
        /// The tenant.
        tenant: String,
        /// When it expired, Unix seconds.
        expires_at: u64,
    },
    /// The file or its directory could be read or replaced by someone else.
    #[error("refusing {}: {why}", path.display())]
    Unsafe {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The file is not a token file of this tenant.
    #[error("token file {} is corrupt ({why}): run `hpcc login` again", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong (never its contents).
        why: String,
    },
    /// A file-system call failed.
    #[error("{step} {}", path.display())]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The token expired and the refresh failed.
    #[error("the token for tenant {tenant:?} expired and refreshing it failed")]
    Refresh {
        /// The tenant.
        tenant: String,
        /// Why.
        #[source]
        source: Box<LoginError>,
    },
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// The scheduler's CA file could not be read.
    #[error("reading remote_compile.scheduler_ca {}", path.display())]
    SchedulerCa {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The scheduler could not tell the tenant's IdP.
    #[error("asking scheduler {url} for the identity provider of tenant {tenant:?}: {why}")]
    Scheduler {
        /// The scheduler's URL.
        url: String,
        /// The tenant.
        tenant: String,
        /// What went wrong.
        why: String,
    },
    /// The token endpoint is unusable (not https, not a URL).
    #[error("token endpoint {url:?}: {why}")]
    Endpoint {
        /// The endpoint.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The HTTP client could not be set up.
    #[error("setting up the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The IdP's CA file (`remote_compile.idp_ca`) could not be read or holds no certificate.
    #[error("remote_compile.idp_ca {}: {why}", path.display())]
    IdpCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The token request failed on the way (connection, TLS, timeout).
    #[error("token request to {url}")]
    Http {
        /// The endpoint.
        url: String,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
    /// The IdP answered with an OAuth2 error.
    #[error(
        "the identity provider refused (HTTP {status}): {error}{}",
        describe(description)
    )]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The OAuth2 `error` code (`invalid_grant`, `invalid_client`, ...).
        error: String,
        /// Its `error_description`, if any.
        description: String,
    },
    /// The IdP answered with an HTTP error that is no OAuth2 error.
    #[error("token endpoint {url} answered HTTP {status}: {excerpt}")]
    Status {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body, control characters removed.
        excerpt: String,
    },
    /// The IdP's answer is no usable token response.
    #[error("bad token response from {url}: {why}")]
    BadResponse {
        /// The endpoint.
        url: String,
        /// What is wrong (never the token).
        why: String,
    },
    /// The token could not be cached.
    #[error("caching the token")]
    Cache(#[source] TokenError),
}

fn describe(description: &str) -> String {
    if description.is_empty() {
        String::new()
    } else {
        format!(": {description}")
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// `unix` as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC).
pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|seconds| jiff::Timestamp::from_second(seconds).ok())
        .map_or_else(
            || format!("{unix} seconds after the epoch"),
            |time| time.to_string(),
        )
}

/// The `exp` claim of a JWT, read without verifying anything (only to know when to stop
/// using a token the IdP gave without `expires_in`; the scheduler verifies it).
pub fn jwt_expiry(token: &str) -> Option<u64> {
    hpcc_auth::unverified_expiry(token)
}

/// Refuses tenant ids that are not a safe file name: `[A-Za-z0-9._-]{1,200}`, not starting
/// with `.` (so neither `..` nor a hidden or temporary file).
pub fn check_tenant(tenant: &str) -> Result<(), TokenError> {
    let safe = !tenant.is_empty()
        && tenant.len() <= 200
        && !tenant.starts_with('.')
        && tenant
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
    if safe {
        Ok(())
    } else {
        Err(TokenError::BadTenant(tenant.to_owned()))
    }
}

/// The token directory for these values of `XDG_STATE_HOME` and `HOME` (relative ones are
/// ignored, as the XDG specification says).
pub fn tokens_dir_from(
    xdg_state_home: Option<&Path>,
    home: Option<&Path>,
) -> Result<PathBuf, TokenError> {
    let state = match (xdg_state_home, home) {
        (Some(state), _) if state.is_absolute() => state.to_path_buf(),
        (_, Some(home)) if home.is_absolute() => home.join(".local").join("state"),
        _ => return Err(TokenError::NoStateDir),
    };
    Ok(state.join("hpcc").join("tokens"))
}

/// The token directory: `$XDG_STATE_HOME/hpcc/tokens`, else `~/.local/state/hpcc/tokens`.
pub fn tokens_dir() -> Result<PathBuf, TokenError> {
    let state = std::env::var_os("XDG_STATE_HOME").map(PathBuf::from);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    tokens_dir_from(state.as_deref(), home.as_deref())
}

/// The token file of `tenant` in `dir`.
pub fn token_path(dir: &Path, tenant: &str) -> Result<PathBuf, TokenError> {
    check_tenant(tenant)?;
    Ok(dir.join(format!("{tenant}.json")))
}

fn io_error<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TokenError + 'a {
    move |source| TokenError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Refuses `metadata` (of `path`) unless it belongs to this user and grants nothing to group
/// or others.
fn check_private(path: &Path, metadata: &std::fs::Metadata, kind: &str) -> Result<(), TokenError> {
    let unsafe_because = |why: String| TokenError::Unsafe {
        path: path.to_path_buf(),
        why,
    };
    let uid = current_uid();
    if metadata.uid() != uid {
        return Err(unsafe_because(format!(
            "it belongs to uid {}, not to this user (uid {uid})",
            metadata.uid()
        )));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(unsafe_because(format!(
            "its mode {mode:04o} lets group or others use it; a {kind} holding tokens must be \
             {} (remove it and run `hpcc login` again)",
            if kind == "file" { "0600" } else { "0700" }
        )));
    }
    Ok(())
}

/// Reads the token file of `tenant` in `dir`, whatever its expiry, after the safety checks
/// (not a symbolic link, a regular file, this user's, nothing for group or others).
pub fn read_token_in(dir: &Path, tenant: &str) -> Result<CachedToken, TokenError> {
    use rustix::fs::{Mode, OFlags};
    let path = token_path(dir, tenant)?;
    // NOFOLLOW: a link planted in place of the file is refused, not followed; NONBLOCK: a FIFO
    // planted there cannot hang the open (it is refused below as no regular file).
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = match rustix::fs::open(&path, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::NOENT) => {
            return Err(TokenError::Missing {
                tenant: tenant.to_owned(),
                path,
            })
        }
        Err(rustix::io::Errno::LOOP) => {
            return Err(TokenError::Unsafe {
                path,
                why: "it is a symbolic link".into(),
            })
        }
        Err(errno) => return Err(io_error("opening token file", &path)(errno.into())),
    };
    // The checks are on the open file, so the file checked is the file read.
    let metadata = file
        .metadata()
        .map_err(io_error("reading the metadata of", &path))?;
    if !metadata.is_file() {
        return Err(TokenError::Unsafe {
            path,
            why: "it is not a regular file".into(),
        });
    }
    check_private(&path, &metadata, "file")?;
    let limit = u64::try_from(MAX_TOKEN_BYTES).unwrap_or(u64::MAX);
    if metadata.len() > limit {
        return Err(TokenError::Corrupt {
            path,
            why: format!("{} bytes, over the {limit}-byte limit", metadata.len()),
        });
    }
    let mut text = Vec::new();
    file.take(limit)
        .read_to_end(&mut text)
        .map_err(io_error("reading token file", &path))?;
    let token: CachedToken =
        serde_json::from_slice(&text).map_err(|error| TokenError::Corrupt {
            path: path.clone(),
            why: json_problem(&error),
        })?;
    if token.tenant != tenant {
        return Err(TokenError::Corrupt {
            path,
            why: format!("it holds a token of tenant {:?}", token.tenant),
        });
    }
    Ok(token)
}

/// What is wrong with a JSON document, without quoting it: serde's messages can contain the
/// values they met, and these documents hold tokens.
fn json_problem(error: &serde_json::Error) -> String {
    let what = match error.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Eof => "truncated JSON",
        serde_json::error::Category::Data => "a field is missing or of the wrong type",
    };
    format!("{what} at line {}, column {}", error.line(), error.column())
}

/// The access token of `tenant` cached in `dir`, if it is safe and valid at `now` (with
/// [`EXPIRY_MARGIN_SECS`]).
pub fn cached_token_in(dir: &Path, tenant: &str, now: u64) -> Result<String, TokenError> {
    let token = read_token_in(dir, tenant)?;
    if !token.is_valid_at(now) {
        return Err(TokenError::Expired {
            tenant: tenant.to_owned(),
            expires_at: token.expires_at,
        });
    }
    Ok(token.access_token)
}

/// The access token `hpcc login` cached for `tenant` (in [`tokens_dir`]), if the file is safe
/// and the token valid for at least [`EXPIRY_MARGIN_SECS`] more.
pub fn cached_token(tenant: &str) -> Result<String, TokenError> {
    cached_token_in(&tokens_dir()?, tenant, unix_now())
}

/// Creates `dir` (0700) if needed, and makes sure it is this user's and private.
fn prepare_dir(dir: &Path) -> Result<(), TokenError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error("creating token directory", dir))?;
    let metadata =
        std::fs::symlink_metadata(dir).map_err(io_error("reading the metadata of", dir))?;
    if !metadata.is_dir() {
        return Err(TokenError::Unsafe {
            path: dir.to_path_buf(),
            why: "it is not a directory".into(),
        });
    }
    if metadata.uid() != current_uid() {
        return check_private(dir, &metadata, "directory");
    }
    // Ours, but perhaps made by hand with the umask's mode: tighten it.
    if metadata.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, Permissions::from_mode(0o700))
            .map_err(io_error("making token directory private:", dir))?;
    }
    Ok(())
}

/// Writes `token` as its tenant's file in `dir` (created 0700), atomically and mode 0600;
/// returns the file's path.
pub fn store_token_in(dir: &Path, token: &CachedToken) -> Result<PathBuf, TokenError> {
    let path = token_path(dir, &token.tenant)?;
    prepare_dir(dir)?;
    let mut json = serde_json::to_vec_pretty(token)
        .map_err(|error| io_error("serializing token for", &path)(io::Error::other(error)))?;
    json.push(b'\n');
    // Tenant ids never start with '.', so the temporary name is no tenant's file.
    let prefix = format!(".{}.", token.tenant);
    let mut temporary = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io_error("creating a temporary file in", dir))?;
    temporary
        .write_all(&json)
        .map_err(io_error("writing a temporary file in", dir))?;
    temporary
        .as_file()
        .sync_all()
        .map_err(io_error("syncing a temporary file in", dir))?;
    temporary
        .persist(&path)
        .map_err(|error| io_error("renaming a temporary file to", &path)(error.error))?;
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error("syncing token directory", dir))?;
    Ok(path)
}

/// Removes the token file of `tenant` from `dir`; `false` if there was none.
pub fn remove_token_in(dir: &Path, tenant: &str) -> Result<bool, TokenError> {
    let path = token_path(dir, tenant)?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_error("removing", &path)(error)),
    }
}

/// Asks the scheduler of `config` (unauthenticated `GetTenantIdP`) where its tenant's tokens
/// come from.
pub async fn discover(config: &RemoteCompileConfig) -> Result<Provider, LoginError> {
    let failed = |why: String| LoginError::Scheduler {
        url: config.scheduler.clone(),
        tenant: config.tenant_id.clone(),
        why,
    };
    let ca_pem = match &config.scheduler_ca {
        Some(path) => {
            Some(
                std::fs::read_to_string(path).map_err(|source| LoginError::SchedulerCa {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };
    let endpoint = crate::farm::scheduler_endpoint(
        &config.scheduler,
        ca_pem.as_deref(),
        config.insecure_plaintext,
    )
    .map_err(failed)?;
    let mut client = SchedulerClient::new(endpoint.timeout(CALL_TIMEOUT).connect_lazy());
    let call = client.get_tenant_id_p(GetTenantIdPRequest {
        tenant_id: config.tenant_id.clone(),
    });
    let reply = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| failed(format!("no answer within {CALL_TIMEOUT:?}")))?
        .map_err(|status| match status.code() {
            tonic::Code::NotFound => failed("the scheduler has no such tenant".into()),
            code => failed(format!("{code:?}: {}", status.message())),
        })?
        .into_inner();
    if reply.token_endpoint.is_empty() {
        return Err(failed("the scheduler names no token endpoint".into()));
    }
    Ok(Provider {
        token_endpoint: reply.token_endpoint,
        client_id: reply.client_id,
        audience: reply.audience,
    })
}

/// Parses `url` and refuses anything but https (http too with `insecure_plaintext`).
fn token_url(url: &str, insecure_plaintext: bool) -> Result<reqwest::Url, LoginError> {
    let refuse = |why: &str| LoginError::Endpoint {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|error| refuse(&error.to_string()))?;
    match parsed.scheme() {
        "https" => {}
        "http" if insecure_plaintext => {}
        "http" => {
            return Err(refuse(
                "plaintext HTTP would expose the credentials; the IdP must use https \
                 (remote_compile.insecure_plaintext allows http, for loopback tests only)",
            ))
        }
        _ => return Err(refuse("not an https URL")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(refuse("no host"));
    }
    Ok(parsed)
}

/// The form fields of `grant` (RFC 6749); `scope` and `audience` only when not empty.
fn form_fields<'a>(grant: &'a Grant, provider: &'a Provider) -> Vec<(&'static str, &'a str)> {
    let mut fields = Vec::new();
    let scope = match grant {
        Grant::Password {
            username,
            password,
            scope,
        } => {
            fields.push(("grant_type", "password"));
            fields.push(("username", username.as_str()));
            fields.push(("password", password.expose()));
            fields.push(("client_id", provider.client_id.as_str()));
            scope.as_deref()
        }
        Grant::ClientCredentials {
            client_id,
            client_secret,
            scope,
        } => {
            fields.push(("grant_type", "client_credentials"));
            fields.push((
                "client_id",
                client_id.as_deref().unwrap_or(&provider.client_id),
            ));
            fields.push(("client_secret", client_secret.expose()));
            scope.as_deref()
        }
        Grant::RefreshToken { refresh_token } => {
            fields.push(("grant_type", "refresh_token"));
            fields.push(("refresh_token", refresh_token.expose()));
            fields.push(("client_id", provider.client_id.as_str()));
            None
        }
    };
    if let Some(scope) = scope.filter(|scope| !scope.is_empty()) {
        fields.push(("scope", scope));
    }
    if !provider.audience.is_empty() && !matches!(grant, Grant::RefreshToken { .. }) {
        fields.push(("audience", provider.audience.as_str()));
    }
    fields
}

/// At most [`MAX_EXCERPT`] characters of `body`, without control characters.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .filter(|character| !character.is_control())
        .take(MAX_EXCERPT)
        .collect()
}

#[derive(Deserialize)]
struct OauthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// `expires_in` as a number or, as some IdPs send it, as a string of digits.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<ExpiresIn>,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// Turns a successful token response into a cache entry; `now` is when it arrived.
fn parse_token_response(
    tenant: &str,
    url: &str,
    client_id: &str,
    body: &[u8],
    now: u64,
) -> Result<CachedToken, LoginError> {
    let bad = |why: String| LoginError::BadResponse {
        url: url.to_owned(),
        why,
    };
    let response: TokenResponse =
        serde_json::from_slice(body).map_err(|error| bad(json_problem(&error)))?;
    if response.access_token.is_empty() {
        return Err(bad("the access_token is empty".into()));
    }
    // It goes into an `authorization` header as it is.
    if !response
        .access_token
        .bytes()
        .all(|byte| byte.is_ascii_graphic())
    {
        return Err(bad(
            "the access_token has characters no HTTP header may carry".into(),
        ));
    }
    let token_type = response.token_type.unwrap_or_else(|| "Bearer".into());
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(bad(format!(
            "token_type {:?} is not Bearer",
            excerpt(token_type.as_bytes())
        )));
    }
    let expires_in = match response.expires_in {
        Some(ExpiresIn::Number(seconds)) => Some(seconds),
        Some(ExpiresIn::Text(text)) => Some(
            text.trim()
                .parse::<u64>()
                .map_err(|_| bad("expires_in is not a number of seconds".into()))?,
        ),
        None => None,
    };
    let expires_at = match expires_in {
        Some(seconds) => now.saturating_add(seconds),
        None => jwt_expiry(&response.access_token).ok_or_else(|| {
            bad("no expires_in, and the access token is no JWT with an exp claim".into())
        })?,
    };
    if expires_at <= now {
        return Err(bad(format!(
            "the token expired at {}, before it arrived (is the clock right?)",
            rfc3339(expires_at)
        )));
    }
    Ok(CachedToken {
        tenant: tenant.to_owned(),
        access_token: response.access_token,
        token_type: "Bearer".into(),
        expires_at,
        refresh_token: response.refresh_token.filter(|token| !token.is_empty()),
        token_endpoint: url.to_owned(),
        client_id: client_id.to_owned(),
    })
}

/// Posts `grant` to the provider's token endpoint and returns the token for `tenant` (not
/// yet cached). Plaintext http only with `insecure_plaintext`.
pub async fn request_token(
    tenant: &str,
    provider: &Provider,
    grant: &Grant,
    insecure_plaintext: bool,
    idp_ca: Option<&Path>,
) -> Result<CachedToken, LoginError> {
    let url = token_url(&provider.token_endpoint, insecure_plaintext)?;
    let fields = form_fields(grant, provider);
    let client_id = fields
        .iter()
        .find(|(name, _)| *name == "client_id")
        .map_or("", |(_, value)| *value)
        .to_owned();
    let mut builder = reqwest::Client::builder()
        .timeout(CALL_TIMEOUT)
        .connect_timeout(CALL_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = idp_ca {
        builder = builder.tls_certs_merge(idp_certificates(path)?);
    }
    let client = builder.build().map_err(LoginError::Client)?;
    let http_error = |source| LoginError::Http {
        url: provider.token_endpoint.clone(),
        source,
    };
    let mut response = client
        .post(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&fields)
        .send()
        .await
        .map_err(http_error)?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http_error)? {
        if body.len() + chunk.len() > MAX_TOKEN_BYTES {
            return Err(LoginError::BadResponse {
                url: provider.token_endpoint.clone(),
                why: format!("the answer is over {MAX_TOKEN_BYTES} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(match serde_json::from_slice::<OauthError>(&body) {
            Ok(refusal) => LoginError::Refused {
                status: status.as_u16(),
                error: excerpt(refusal.error.as_bytes()),
                description: excerpt(refusal.error_description.unwrap_or_default().as_bytes()),
            },
            Err(_) => LoginError::Status {
                url: provider.token_endpoint.clone(),
                status: status.as_u16(),
                excerpt: excerpt(&body),
            },
        });
    }
    parse_token_response(
        tenant,
        &provider.token_endpoint,
        &client_id,
        &body,
        unix_now(),
    )
}

/// The certificates of the PEM file `path` (`remote_compile.idp_ca`), trusted besides the
/// system's roots.
fn idp_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, LoginError> {
    let failed = |why: String| LoginError::IdpCa {
        path: path.to_owned(),
        why,
    };
    let pem = std::fs::read(path).map_err(|error| failed(error.to_string()))?;
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| failed(error.to_string()))?;
    if certificates.is_empty() {
        return Err(failed("no PEM certificate in it".into()));
    }
    Ok(certificates)
}

/// `hpcc login`: asks the scheduler of `config` for its tenant's IdP, gets a token with
/// `grant` and caches it in `dir`; returns the token and its file.
pub async fn login(
    config: &RemoteCompileConfig,
    grant: &Grant,
    dir: &Path,
) -> Result<(CachedToken, PathBuf), LoginError> {
    // A tenant id that cannot be a file name is refused before anyone is asked.
    check_tenant(&config.tenant_id).map_err(LoginError::Cache)?;
    let provider = discover(config).await?;
    let token = request_token(
        &config.tenant_id,
        &provider,
        grant,
        config.insecure_plaintext,
        config.idp_ca.as_deref(),
    )
    .await?;
    let path = store_token_in(dir, &token).map_err(LoginError::Cache)?;
    Ok((token, path))
}

/// The access token of `tenant` cached in `dir`: as it is while valid at `now`, else renewed
/// with its refresh token (the new one is cached). The endpoint is the one the login used,
/// checked again (https, or http with `insecure_plaintext`). Callers serialize refreshes: an
/// IdP that rotates refresh tokens accepts each one once.
pub async fn refresh_in(
    dir: &Path,
    tenant: &str,
    insecure_plaintext: bool,
    idp_ca: Option<&Path>,
    now: u64,
) -> Result<String, TokenError> {
    let cached = read_token_in(dir, tenant)?;
    if cached.is_valid_at(now) {
        return Ok(cached.access_token);
    }
    let Some(refresh_token) = cached.refresh_token.clone() else {
        return Err(TokenError::Expired {
            tenant: tenant.to_owned(),
            expires_at: cached.expires_at,
        });
    };
    let provider = Provider {
        token_endpoint: cached.token_endpoint.clone(),
        client_id: cached.client_id.clone(),
        audience: String::new(),
    };
    let grant = Grant::RefreshToken {
        refresh_token: Secret::new(refresh_token),
    };
    let failed = |source| TokenError::Refresh {
        tenant: tenant.to_owned(),
        source: Box::new(source),
    };
    let mut fresh = request_token(tenant, &provider, &grant, insecure_plaintext, idp_ca)
        .await
        .map_err(failed)?;
    // An IdP that does not rotate refresh tokens sends none: the old one stays good.
    if fresh.refresh_token.is_none() {
        fresh.refresh_token = cached.refresh_token;
    }
    store_token_in(dir, &fresh)?;
    Ok(fresh.access_token)
}

/// [`cached_token`], renewing an expired token with its refresh token if it has one (see
/// [`refresh_in`]).
pub async fn refresh(config: &RemoteCompileConfig) -> Result<String, TokenError> {
    refresh_in(
        &tokens_dir()?,
        &config.tenant_id,
        config.insecure_plaintext,
        config.idp_ca.as_deref(),
        unix_now(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn token(tenant: &str, expires_at: u64) -> CachedToken {
        CachedToken {
            tenant: tenant.into(),
            access_token: "header.payload.signature".into(),
            token_type: "Bearer".into(),
            expires_at,
            refresh_token: None,
            token_endpoint: "https://idp.example/token".into(),
            client_id: "hpcc-cli".into(),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("metadata").mode() & 0o7777
    }

    #[test]
    fn tenant_names_must_be_safe_file_names() {
        for good in ["acme", "a", "team-1.prod_eu", "A.B"] {
            assert!(check_tenant(good).is_ok(), "{good}");
        }
        for bad in [
            "", ".", "..", ".hidden", "a/b", "../x", "a b", "a\0b", "é", "a\\b", "x\n",
        ] {
            assert!(
                matches!(check_tenant(bad), Err(TokenError::BadTenant(_))),
                "{bad:?}"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            store_token_in(dir.path(), &token("../evil", 10)),
            Err(TokenError::BadTenant(_))
        ));
        assert!(matches!(
            cached_token_in(dir.path(), "..", 0),
            Err(TokenError::BadTenant(_))
        ));
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("read_dir").count(),
            0,
            "nothing written for a bad name"
        );
    }

    #[test]
    fn the_directory_follows_xdg_state_home_then_home() {
        let check = |state: Option<&str>, home: Option<&str>, expected: Option<&str>| {
            let found = tokens_dir_from(state.map(Path::new), home.map(Path::new)).ok();
            assert_eq!(
                found.as_deref(),
                expected.map(Path::new),
                "{state:?} {home:?}"
            );
        };
        check(Some("/s"), Some("/h"), Some("/s/hpcc/tokens"));
        check(None, Some("/h"), Some("/h/.local/state/hpcc/tokens"));
        check(
            Some("relative"),
            Some("/h"),
            Some("/h/.local/state/hpcc/tokens"),
        );
        check(None, None, None);
        check(None, Some("relative"), None);
    }

    #[test]
    fn stored_tokens_are_private_and_read_back() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("state/hpcc/tokens");
        let mut stored = token("acme", 2_000);
        stored.refresh_token = Some("refresh".into());
        let path = store_token_in(&dir, &stored).expect("store");
        assert_eq!(path, dir.join("acme.json"));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(read_token_in(&dir, "acme").expect("read"), stored);
        assert_eq!(
            cached_token_in(&dir, "acme", 1_000).expect("valid"),
            "header.payload.signature"
        );
        // Replacing leaves one file and no temporary ones.
        store_token_in(&dir, &token("acme", 3_000)).expect("replace");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("read_dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("acme.json")]);
        assert_eq!(read_token_in(&dir, "acme").expect("read").expires_at, 3_000);
        // A directory that exists with a loose mode is tightened.
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).expect("chmod");
        store_token_in(&dir, &token("acme", 3_000)).expect("store");
        assert_eq!(mode(&dir), 0o700);
        assert!(remove_token_in(&dir, "acme").expect("remove"));
        assert!(!remove_token_in(&dir, "acme").expect("remove again"));
    }

    #[test]
    fn expiry_has_a_margin() {
        let dir = tempfile::tempdir().expect("tempdir");
        store_token_in(dir.path(), &token("acme", 1_000)).expect("store");
        let check = |now: u64, valid: bool| {
            let result = cached_token_in(dir.path(), "acme", now);
            match (valid, &result) {
                (true, Ok(_)) => {}
                (false, Err(TokenError::Expired { expires_at, .. })) => {
                    assert_eq!(*expires_at, 1_000);
                    let message = result.as_ref().expect_err("expired").to_string();
                    assert!(message.contains("hpcc login"), "{message}");
                    assert!(message.contains("1970-01-01T00:16:40Z"), "{message}");
                }
                _ => panic!("at {now}: {result:?}"),
            }
        };
        check(0, true);
        check(969, true);
        check(970, false);
        check(1_000, false);
        check(u64::MAX, false);
    }

    #[test]
    fn missing_and_corrupt_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = cached_token_in(dir.path(), "acme", 0).expect_err("missing");
        assert!(matches!(missing, TokenError::Missing { .. }), "{missing:?}");
        assert!(missing.to_string().contains("hpcc login"), "{missing}");
        let path = dir.path().join("acme.json");
        let write = |text: &str| {
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, Permissions::from_mode(0o600)).expect("chmod");
        };
        let secret = "very-secret-token-value";
        for text in [
            "not json".to_owned(),
            "{\"tenant\": \"acme\"".to_owned(),
            format!("{{\"tenant\": \"acme\", \"access_token\": \"{secret}\"}}"),
            format!("{{\"tenant\": \"acme\", \"access_token\": \"x\", \"token_type\": \"Bearer\", \"expires_at\": \"{secret}\", \"token_endpoint\": \"e\", \"client_id\": \"c\"}}"),
        ] {
            write(&text);
            let error = cached_token_in(dir.path(), "acme", 0).expect_err("corrupt");
            assert!(matches!(error, TokenError::Corrupt { .. }), "{text}: {error:?}");
            let message = error.to_string();
            assert!(message.contains("acme.json"), "{message}");
            assert!(!message.contains(secret), "the contents leak: {message}");
        }
        // Another tenant's token under this tenant's name.
        let other = serde_json::to_string(&token("other", 2_000)).expect("json");
        write(&other);
        let error = cached_token_in(dir.path(), "acme", 0).expect_err("wrong tenant");
        assert!(error.to_string().contains("other"), "{error}");
        // Too large to be a token file.
        write(&" ".repeat(MAX_TOKEN_BYTES + 1));
        assert!(matches!(
            cached_token_in(dir.path(), "acme", 0),
            Err(TokenError::Corrupt { .. })
        ));
    }

    #[test]
    fn files_others_could_read_or_plant_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_token_in(dir.path(), &token("acme", 2_000)).expect("store");
        for loose in [0o640, 0o604, 0o660, 0o602] {
            std::fs::set_permissions(&path, Permissions::from_mode(loose)).expect("chmod");
            let error = cached_token_in(dir.path(), "acme", 0).expect_err("loose mode");
            assert!(
                matches!(error, TokenError::Unsafe { .. }),
                "{loose:o}: {error:?}"
            );
            let message = error.to_string();
            assert!(message.contains(&format!("{loose:04o}")), "{message}");
            assert!(message.contains("acme.json"), "{message}");
        }
        std::fs::set_permissions(&path, Permissions::from_mode(0o400)).expect("chmod");
        cached_token_in(dir.path(), "acme", 0).expect("read-only for the owner is fine");
        // A symbolic link in place of the file is not followed, even to a good file.
        let real = dir.path().join("elsewhere.json");
        std::fs::rename(&path, &real).expect("rename");
        std::os::unix::fs::symlink(&real, &path).expect("symlink");
        let error = cached_token_in(dir.path(), "acme", 0).expect_err("symlink");
        assert!(error.to_string().contains("symbolic link"), "{error}");
        std::fs::remove_file(&path).expect("unlink");
        // Nor a directory, nor a FIFO (the open must not hang).
        std::fs::create_dir(&path).expect("mkdir");
        let error = cached_token_in(dir.path(), "acme", 0).expect_err("directory");
        assert!(error.to_string().contains("regular file"), "{error}");
        std::fs::remove_dir(&path).expect("rmdir");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &path,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .expect("mkfifo");
        let error = cached_token_in(dir.path(), "acme", 0).expect_err("fifo");
        assert!(error.to_string().contains("regular file"), "{error}");
        std::fs::remove_file(&path).expect("unlink");
    }

    /// A token file of another user is refused. Only root can make one, so this test needs root
    /// and fails, saying so, without it (CI runs as root) rather than passing unrun.
    #[test]
    fn another_users_token_file_is_refused() {
        assert!(
            rustix::process::geteuid().is_root(),
            "needs root, to chown a token file to another user"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_token_in(dir.path(), &token("acme", 2_000)).expect("store");
        std::os::unix::fs::chown(&path, Some(4_242), None).expect("chown");
        let error = cached_token_in(dir.path(), "acme", 0).expect_err("foreign owner");
        assert!(error.to_string().contains("uid 4242"), "{error}");
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        for (unix, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_251_199, "2024-02-29T23:59:59Z"),
            (1_796_220_000, "2026-12-02T14:00:00Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(unix), text, "{unix}");
        }
    }

    #[test]
    fn jwt_expiry_reads_the_payload_only() {
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let jwt = format!(
            "{}.{}.sig",
            encode("{}"),
            encode(r#"{"exp": 1234, "sub": "a"}"#)
        );
        assert_eq!(jwt_expiry(&jwt), Some(1_234));
        for bad in [
            "opaque".to_owned(),
            format!("a.{}.c", encode(r#"{"sub": "a"}"#)),
            format!("a.{}.c", encode(r#"{"exp": "soon"}"#)),
            "a.!!!.c".to_owned(),
            format!("a.{}", encode(r#"{"exp": 1}"#)),
        ] {
            assert_eq!(jwt_expiry(&bad), None, "{bad}");
        }
    }

    #[test]
    fn token_responses_are_checked() {
        let parse =
            |body: &str| parse_token_response("acme", "https://e/t", "cli", body.as_bytes(), 1_000);
        let good = parse(
            r#"{"access_token":"abc","token_type":"bearer","expires_in":3600,"refresh_token":"r"}"#,
        )
        .expect("good");
        assert_eq!(
            (good.expires_at, good.refresh_token.as_deref()),
            (4_600, Some("r"))
        );
        assert_eq!(good.token_type, "Bearer");
        assert_eq!(
            parse(r#"{"access_token":"abc","expires_in":"60"}"#)
                .expect("text")
                .expires_at,
            1_060
        );
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let jwt = format!("{}.{}.sig", encode("{}"), encode(r#"{"exp": 5000}"#));
        assert_eq!(
            parse(&format!(r#"{{"access_token":"{jwt}"}}"#))
                .expect("jwt exp")
                .expires_at,
            5_000
        );
        for (body, why) in [
            (r#"{"access_token":"opaque"}"#, "no expires_in"),
            (
                r#"{"access_token":"abc","token_type":"mac","expires_in":5}"#,
                "not Bearer",
            ),
            (r#"{"access_token":"","expires_in":5}"#, "empty"),
            (r#"{"access_token":"a b","expires_in":5}"#, "header"),
            (
                r#"{"access_token":"abc","expires_in":0}"#,
                "before it arrived",
            ),
            (
                r#"{"access_token":"abc","expires_in":"soon"}"#,
                "not a number",
            ),
            (r#"{"token":"secret-value"}"#, "missing"),
            (r#"{"access_token":12}"#, "wrong type"),
        ] {
            let error = parse(body).expect_err(body).to_string();
            assert!(error.contains(why), "{body}: {error}");
            assert!(!error.contains("secret-value"), "{error}");
        }
    }

    #[test]
    fn form_fields_follow_the_grant() {
        let provider = Provider {
            token_endpoint: "https://e/t".into(),
            client_id: "public".into(),
            audience: "hpcc".into(),
        };
        let password = Grant::Password {
            username: "alice".into(),
            password: Secret::new("pw".into()),
            scope: Some("openid".into()),
        };
        assert_eq!(
            form_fields(&password, &provider),
            vec![
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "pw"),
                ("client_id", "public"),
                ("scope", "openid"),
                ("audience", "hpcc"),
            ]
        );
        let client = Grant::ClientCredentials {
            client_id: Some("ci".into()),
            client_secret: Secret::new("s".into()),
            scope: None,
        };
        let no_audience = Provider {
            audience: String::new(),
            ..provider.clone()
        };
        assert_eq!(
            form_fields(&client, &no_audience),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "ci"),
                ("client_secret", "s"),
            ]
        );
        let refresh = Grant::RefreshToken {
            refresh_token: Secret::new("r".into()),
        };
        assert_eq!(
            form_fields(&refresh, &provider),
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", "r"),
                ("client_id", "public"),
            ]
        );
        assert!(!format!("{password:?}{client:?}{refresh:?}").contains("pw"));
    }

    #[test]
    fn token_endpoints_must_be_https_unless_insecure() {
        assert!(token_url("https://idp.example/oauth/token", false).is_ok());
        let error = token_url("http://idp.example/token", false).expect_err("plaintext");
        assert!(error.to_string().contains("insecure_plaintext"), "{error}");
        assert!(token_url("http://127.0.0.1:9/token", true).is_ok());
        assert!(token_url("ftp://idp.example/token", true).is_err());
        assert!(token_url("not a url", true).is_err());
    }

    #[test]
    fn debug_hides_tokens() {
        let mut cached = token("acme", 1);
        cached.refresh_token = Some("refresh-secret".into());
        let shown = format!("{cached:?}");
        assert!(
            !shown.contains("header.payload") && !shown.contains("refresh-secret"),
            "{shown}"
        );
    }
}
