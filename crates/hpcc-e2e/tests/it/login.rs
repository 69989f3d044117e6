//! `hpcc login` end to end: the real `hpcc` and `hpccd` binaries, configured through
//! `HPCC_REMOTE_COMPILE` for a scheduler on loopback (plaintext) whose tenant's IdP is the
//! test IdP, with `XDG_STATE_HOME` in a temporary directory. A token they cache must be
//! accepted by the scheduler's `Route`.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};

use hpcc_auth::{RoutingKey, RoutingScope, RoutingVerifier};
use hpcc_core::config::TenantConfig;
use hpcc_daemon::login::{cached_token_in, read_token_in, refresh_in, TokenError};
use hpcc_proto::scheduler::scheduler_client::SchedulerClient;
use hpcc_proto::scheduler::{RegisterRequest, RouteRequest};
use hpcc_scheduler::Scheduler;
use tonic::transport::Endpoint;

use crate::idp::Idp;
use crate::scheduler::{config, now, serve, tenant, IMAGE, SECRET};
use crate::{Case, Need, TestResult};

const TENANT: &str = "acme";
const PASSWORD: &str = "correct-horse-battery";
const CLIENT: &str = "ci-bot";
const CLIENT_SECRET: &str = "ci-secret-value";

fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Whether cargo can be run to build the binaries (`$CARGO` under `cargo test`, else `cargo`
/// on `PATH`).
pub fn cargo_available() -> Result<(), String> {
    let cargo = PathBuf::from(cargo());
    let found = if cargo.components().count() > 1 {
        cargo.is_file()
    } else {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .any(|dir| dir.join(&cargo).is_file())
    };
    if found {
        Ok(())
    } else {
        Err(format!(
            "cannot build hpcc and hpccd: no cargo at {}",
            cargo.display()
        ))
    }
}

/// The directory holding `hpcc`, `hpccd`, `hpcc-worker`, `hpcc-scheduler` and `hpcc-agent`, built on first use into the target directory of
/// this test executable (`<target>/<profile>/deps/it-*`), so they are never missing or older
/// than the sources.
pub(crate) fn binaries() -> Result<&'static Path, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(build_binaries)
        .as_deref()
        .map_err(Clone::clone)
}

fn build_binaries() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no current executable: {e}"))?;
    let deps = exe.parent().ok_or("the test executable has no directory")?;
    let profile_dir = deps
        .parent()
        .filter(|_| deps.file_name() == Some("deps".as_ref()))
        .ok_or_else(|| format!("{} is not in <target>/<profile>/deps", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or("the profile directory has no parent")?;
    let profile = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or("the profile directory has no name")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut build = Command::new(cargo());
    build
        .current_dir(&workspace)
        .args([
            "build",
            "--quiet",
            "-p",
            "hpcc-cli",
            "-p",
            "hpcc-daemon",
            "-p",
            "hpcc-worker",
            "-p",
            "hpcc-scheduler",
            "-p",
            "hpcc-agent",
            "--bins",
        ])
        .env("CARGO_TARGET_DIR", target_dir);
    // `debug` is the dev profile's directory; others are named after their profile.
    if profile != "debug" {
        build.args(["--profile", profile]);
    }
    let output = build
        .output()
        .map_err(|error| format!("cannot run cargo to build hpcc and hpccd: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "building hpcc and hpccd failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    for name in ["hpcc", "hpccd"] {
        if !profile_dir.join(name).is_file() {
            return Err(format!(
                "{} is missing after cargo build",
                profile_dir.join(name).display()
            ));
        }
    }
    Ok(profile_dir.to_path_buf())
}

/// The IdP with one user and one client, a scheduler for tenant `acme`, a state directory.
struct Land {
    runtime: tokio::runtime::Runtime,
    idp: Idp,
    scheduler: Arc<Scheduler>,
    scheduler_url: String,
    routing: RoutingVerifier,
    dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Land {
    fn new() -> Result<Land, String> {
        Land::with_idp(Idp::start(TENANT)?, |_| {})
    }

    /// A land around `idp`, whose scheduler's tenant is changed by `adjust`.
    fn with_idp(idp: Idp, adjust: impl FnOnce(&mut TenantConfig)) -> Result<Land, String> {
        // Built before anything starts: the first build may take a while.
        binaries()?;
        let runtime = tokio::runtime::Runtime::new().map_err(text)?;
        idp.add_user("alice", PASSWORD);
        idp.add_client(CLIENT, CLIENT_SECRET);
        let key = RoutingKey::generate().map_err(text)?;
        let routing = RoutingVerifier::from_public_base64(&key.public_base64()).map_err(text)?;
        let mut tenant = tenant(TENANT, &idp);
        adjust(&mut tenant);
        let scheduler = Arc::new(
            Scheduler::new(&config(vec![tenant]), key, SECRET.as_bytes().to_vec())
                .map_err(|e| e.to_string())?,
        );
        let (scheduler_url, shutdown) = serve(&runtime, Arc::clone(&scheduler))?;
        let dir = tempfile::Builder::new()
            .prefix("hpcc-e2e-login-")
            .tempdir()
            .map_err(text)?;
        Ok(Land {
            runtime,
            idp,
            scheduler,
            scheduler_url,
            routing,
            dir,
            _shutdown: shutdown,
        })
    }

    fn remote_compile(&self, tenant_id: &str) -> String {
        format!(
            r#"{{ tenant_id = "{tenant_id}", scheduler = "{}", insecure_plaintext = true, image = "{IMAGE}" }}"#,
            self.scheduler_url
        )
    }

    /// `[remote_compile]` for this land's tenant trusting the IdP's CA in `idp_ca`.
    fn remote_compile_trusting(&self, idp_ca: &Path) -> String {
        format!(
            r#"{{ tenant_id = "{TENANT}", scheduler = "{}", insecure_plaintext = true, image = "{IMAGE}", idp_ca = "{}" }}"#,
            self.scheduler_url,
            idp_ca.display()
        )
    }

    /// `hpcc login --user alice` with her password, under `remote_compile` if given.
    fn login_alice(&self, remote_compile: Option<&str>) -> Result<Output, String> {
        let env: &[(&str, Option<&str>)] = match remote_compile {
            Some(_) => &[("HPCC_REMOTE_COMPILE", remote_compile)],
            None => &[],
        };
        self.run(
            "hpcc",
            &["login", "--user", "alice"],
            &format!("{PASSWORD}\n"),
            env,
        )
    }

    fn tokens_dir(&self) -> PathBuf {
        self.dir.path().join("state/hpcc/tokens")
    }

    fn token_file(&self) -> PathBuf {
        self.tokens_dir().join(format!("{TENANT}.json"))
    }

    /// `binary args...` with this land's configuration and state, `stdin` as its input, and
    /// `env` on top.
    fn run(
        &self,
        binary: &str,
        args: &[&str],
        stdin: &str,
        env: &[(&str, Option<&str>)],
    ) -> Result<Output, String> {
        let mut command = Command::new(binaries()?.join(binary));
        // Nothing from the caller's hpcc configuration leaks in.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("HPCC_") {
                command.env_remove(name);
            }
        }
        command
            .args(args)
            .env("HPCC_CONFIG", self.dir.path().join("no-config.toml"))
            .env("HPCC_CACHE_DIR", self.dir.path().join("cache"))
            .env("HPCC_REMOTE_COMPILE", self.remote_compile(TENANT))
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env("HOME", self.dir.path().join("home"))
            .env("USER", "somebody-else")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let mut child = command
            .spawn()
            .map_err(|error| format!("running {binary}: {error}"))?;
        if let Some(mut input) = child.stdin.take() {
            // A command that reads nothing may have exited already.
            let _ = input.write_all(stdin.as_bytes());
        }
        child
            .wait_with_output()
            .map_err(|error| format!("waiting for {binary}: {error}"))
    }

    /// Routes with `token` (a worker registered just before, so that routing can succeed);
    /// the `sub` the scheduler took from it.
    fn route(&self, token: &str) -> Result<String, String> {
        self.scheduler
            .register(
                RegisterRequest {
                    worker_id: "w".into(),
                    address: "127.0.0.1:1".into(),
                    capacity: 4,
                    warm_images: vec![IMAGE.into()],
                    ..RegisterRequest::default()
                },
                Some(SECRET),
                now(),
            )
            .map_err(text)?;
        let reply = self.runtime.block_on(async {
            let channel = Endpoint::from_shared(self.scheduler_url.clone())
                .map_err(text)?
                .connect()
                .await
                .map_err(text)?;
            let mut request = tonic::Request::new(RouteRequest {
                tenant_id: TENANT.into(),
                image_digest: IMAGE.into(),
                paranoid: false,
                ..RouteRequest::default()
            });
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "the token is no header value".to_owned())?,
            );
            SchedulerClient::new(channel)
                .route(request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| format!("Route refused the token: {status:?}"))
        })?;
        let claims = self
            .routing
            .verify(
                &reply.routing_token,
                RoutingScope {
                    worker: "w",
                    tenant: TENANT,
                    image: IMAGE,
                },
                now(),
            )
            .map_err(text)?;
        Ok(claims.sub)
    }

    fn last_form(&self) -> Vec<(String, String)> {
        self.idp.token_forms().pop().unwrap_or_default()
    }
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

fn succeeded(output: &Output, what: &str) -> TestResult {
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            output.status,
            lossy(&output.stdout),
            lossy(&output.stderr)
        ))
    }
}

fn failed(output: &Output, what: &str) -> Result<String, String> {
    if output.status.success() {
        return Err(format!(
            "{what} should fail, but succeeded: {}",
            lossy(&output.stdout)
        ));
    }
    Ok(format!(
        "{}{}",
        lossy(&output.stdout),
        lossy(&output.stderr)
    ))
}

fn mode(path: &Path) -> Result<u32, String> {
    std::fs::metadata(path)
        .map(|metadata| metadata.permissions().mode() & 0o7777)
        .map_err(|error| format!("{}: {error}", path.display()))
}

fn contains(haystack: &str, needle: &str, what: &str) -> TestResult {
    if haystack.contains(needle) {
        Ok(())
    } else {
        Err(format!("{what}: {needle:?} not in {haystack:?}"))
    }
}

fn lacks(output: &Output, secret: &str, what: &str) -> TestResult {
    let shown = format!("{}{}", lossy(&output.stdout), lossy(&output.stderr));
    if shown.contains(secret) {
        Err(format!("{what} printed a secret: {shown:?}"))
    } else {
        Ok(())
    }
}

fn password_login_caches_a_private_token_that_routes() -> TestResult {
    let land = Land::new()?;
    let before = land.run("hpcc", &["login", "--status"], "", &[])?;
    let shown = failed(&before, "status before logging in")?;
    contains(&shown, "not logged in to tenant acme", "status before")?;

    let login = land.run(
        "hpcc",
        &["login", "--user", "alice"],
        &format!("{PASSWORD}\n"),
        &[],
    )?;
    succeeded(&login, "hpcc login --user alice")?;
    contains(
        &lossy(&login.stdout),
        "logged in to tenant acme (token valid until 20",
        "login output",
    )?;
    lacks(&login, PASSWORD, "hpcc login")?;
    if mode(&land.token_file())? != 0o600 || mode(&land.tokens_dir())? != 0o700 {
        return Err(format!(
            "token file mode {:o}, directory mode {:o}",
            mode(&land.token_file())?,
            mode(&land.tokens_dir())?
        ));
    }
    let token = cached_token_in(&land.tokens_dir(), TENANT, now()).map_err(text)?;
    lacks(&login, &token, "hpcc login")?;
    let sub = land.route(&token)?;
    if sub != "alice" {
        return Err(format!("routed as {sub:?}, not alice"));
    }
    let form = land.last_form();
    for (name, expected) in [
        ("grant_type", "password"),
        ("username", "alice"),
        ("client_id", "hpcc-cli"),
        ("audience", "hpcc"),
        ("scope", "openid"),
    ] {
        if field(&form, name) != Some(expected) {
            return Err(format!("{name} should be {expected:?} in {form:?}"));
        }
    }
    let cached = read_token_in(&land.tokens_dir(), TENANT).map_err(text)?;
    if cached.refresh_token.is_none() || cached.client_id != "hpcc-cli" {
        return Err(format!("cached {cached:?}"));
    }

    for binary in ["hpcc", "hpccd"] {
        let status = land.run(binary, &["login", "--status"], "", &[])?;
        succeeded(&status, &format!("{binary} login --status"))?;
        contains(
            &lossy(&status.stdout),
            "logged in to tenant acme (token valid until",
            "status",
        )?;
        lacks(&status, &token, "status")?;
    }

    let logout = land.run("hpcc", &["logout"], "", &[])?;
    succeeded(&logout, "hpcc logout")?;
    if land.token_file().exists() {
        return Err("hpcc logout left the token file".into());
    }
    failed(
        &land.run("hpcc", &["login", "--status"], "", &[])?,
        "status after logout",
    )?;
    Ok(())
}

fn wrong_password_shows_the_idps_error_and_caches_nothing() -> TestResult {
    let land = Land::new()?;
    // No --user: the user is $USER.
    let login = land.run(
        "hpcc",
        &["login"],
        "not-the-password\n",
        &[("USER", Some("alice"))],
    )?;
    let shown = failed(&login, "login with a wrong password")?;
    contains(&shown, "invalid_grant", "error")?;
    contains(&shown, "Wrong email or password", "error")?;
    contains(&shown, "HTTP 400", "error")?;
    lacks(&login, "not-the-password", "a failed login")?;
    if field(&land.last_form(), "username") != Some("alice") {
        return Err(format!("the user should be $USER: {:?}", land.last_form()));
    }
    if land.token_file().exists() {
        return Err("a failed login cached a token".into());
    }
    // No password at all.
    let empty = land.run("hpcc", &["login", "--user", "alice"], "", &[])?;
    contains(
        &failed(&empty, "login without a password")?,
        "no password",
        "error",
    )?;
    Ok(())
}

fn client_credentials_come_from_the_environment_or_a_file() -> TestResult {
    let land = Land::new()?;
    let args = ["login", "--client-credentials", "--client-id", CLIENT];
    let login = land.run(
        "hpcc",
        &args,
        "",
        &[("HPCC_CLIENT_SECRET", Some(CLIENT_SECRET))],
    )?;
    succeeded(&login, "hpcc login --client-credentials")?;
    lacks(&login, CLIENT_SECRET, "hpcc login --client-credentials")?;
    let token = cached_token_in(&land.tokens_dir(), TENANT, now()).map_err(text)?;
    let sub = land.route(&token)?;
    if sub != CLIENT {
        return Err(format!("routed as {sub:?}, not {CLIENT}"));
    }
    let form = land.last_form();
    if field(&form, "grant_type") != Some("client_credentials")
        || field(&form, "client_secret") != Some(CLIENT_SECRET)
        || field(&form, "scope").is_some()
    {
        return Err(format!("form {form:?}"));
    }
    std::fs::remove_file(land.token_file()).map_err(text)?;

    let wrong = land.run(
        "hpcc",
        &args,
        "",
        &[("HPCC_CLIENT_SECRET", Some("guessed"))],
    )?;
    let shown = failed(&wrong, "a wrong client secret")?;
    contains(&shown, "invalid_client", "error")?;
    if land.token_file().exists() {
        return Err("a refused client login cached a token".into());
    }
    let none = land.run("hpcc", &args, "", &[])?;
    contains(
        &failed(&none, "no client secret")?,
        "HPCC_CLIENT_SECRET",
        "error",
    )?;

    let secret_file = land.dir.path().join("client-secret");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).map_err(text)?;
    let secret_path = secret_file.to_string_lossy().into_owned();
    let mut with_file = args.to_vec();
    with_file.extend(["--client-secret-file", &secret_path]);
    let login = land.run("hpccd", &with_file, "", &[])?;
    succeeded(&login, "hpccd login --client-secret-file")?;
    let token = cached_token_in(&land.tokens_dir(), TENANT, now()).map_err(text)?;
    land.route(&token).map(|_| ())
}

fn expired_tokens_are_refreshed() -> TestResult {
    let land = Land::new()?;
    // Valid for less than the 30 s margin: expired as soon as it is cached.
    land.idp.set_lifetime(20);
    let login = land.run(
        "hpcc",
        &["login", "--user", "alice"],
        &format!("{PASSWORD}\n"),
        &[],
    )?;
    succeeded(&login, "hpcc login")?;
    match cached_token_in(&land.tokens_dir(), TENANT, now()) {
        Err(TokenError::Expired { .. }) => {}
        other => return Err(format!("a 20 s token should count as expired: {other:?}")),
    }
    let status = land.run("hpcc", &["login", "--status"], "", &[])?;
    contains(
        &failed(&status, "status of an expired token")?,
        "expired at",
        "status",
    )?;
    let old_refresh = read_token_in(&land.tokens_dir(), TENANT)
        .map_err(text)?
        .refresh_token;
    land.idp.set_lifetime(600);
    let token = land
        .runtime
        .block_on(refresh_in(&land.tokens_dir(), TENANT, true, None, now()))
        .map_err(text)?;
    if field(&land.last_form(), "grant_type") != Some("refresh_token") {
        return Err(format!("not a refresh: {:?}", land.last_form()));
    }
    if land.route(&token)? != "alice" {
        return Err("the refreshed token is not alice's".into());
    }
    let cached = read_token_in(&land.tokens_dir(), TENANT).map_err(text)?;
    if cached.access_token != token || cached.refresh_token == old_refresh {
        return Err("the refreshed token (and the rotated refresh token) must be cached".into());
    }
    if mode(&land.token_file())? != 0o600 {
        return Err("the refreshed file must stay 0600".into());
    }
    // Valid now: no second request.
    let forms = land.idp.token_forms().len();
    land.runtime
        .block_on(refresh_in(&land.tokens_dir(), TENANT, true, None, now()))
        .map_err(text)?;
    if land.idp.token_forms().len() != forms {
        return Err("a valid token must not be refreshed".into());
    }
    Ok(())
}

fn configuration_and_tenant_names_are_checked() -> TestResult {
    let land = Land::new()?;
    let unconfigured = land.run(
        "hpcc",
        &["login", "--user", "alice"],
        &format!("{PASSWORD}\n"),
        &[("HPCC_REMOTE_COMPILE", None)],
    )?;
    contains(
        &failed(&unconfigured, "login without remote_compile")?,
        "no [remote_compile]",
        "error",
    )?;
    let evil = land.remote_compile("../evil");
    let unsafe_name = land.run(
        "hpcc",
        &["login", "--user", "alice"],
        &format!("{PASSWORD}\n"),
        &[("HPCC_REMOTE_COMPILE", Some(&evil))],
    )?;
    contains(
        &failed(&unsafe_name, "login with an unsafe tenant id")?,
        "not a safe file name",
        "error",
    )?;
    if !land.idp.token_forms().is_empty() || land.dir.path().join("state").exists() {
        return Err("nothing may be asked or written for an unsafe tenant id".into());
    }
    let usage = land.run("hpcc", &["login", "--password", "x"], "", &[])?;
    contains(
        &failed(&usage, "a password on argv")?,
        "visible to other users",
        "error",
    )?;
    Ok(())
}

/// An IdP whose HTTPS certificate comes from a private CA: `hpcc login` refuses it until the
/// client's `remote_compile.idp_ca` names the CA, and the scheduler validates the tokens it
/// issued only through the tenant's own `idp_ca` (without it, Route fails to fetch the keys).
fn an_idp_with_a_private_ca_is_trusted_through_idp_ca() -> TestResult {
    let idp = Idp::start_tls(TENANT)?;
    let ca_pem = idp.ca_pem().ok_or("the HTTPS IdP has no CA")?.to_owned();
    let ca_dir = tempfile::tempdir().map_err(text)?;
    let ca_file = ca_dir.path().join("idp-ca.pem");
    std::fs::write(&ca_file, &ca_pem).map_err(text)?;
    let scheduler_ca = ca_file.clone();
    let land = Land::with_idp(idp, move |tenant| tenant.idp_ca = Some(scheduler_ca))?;

    let untrusted = land.login_alice(None)?;
    let refused = failed(&untrusted, "login to an IdP of an unknown CA")?;
    contains(&refused, "token request to https://", "error")?;
    contains(&refused, "UnknownIssuer", "error")?;
    if land.token_file().exists() {
        return Err("a refused login cached a token".into());
    }

    let login = land.login_alice(Some(&land.remote_compile_trusting(&ca_file)))?;
    succeeded(&login, "hpcc login with remote_compile.idp_ca")?;
    let token = cached_token_in(&land.tokens_dir(), TENANT, now()).map_err(text)?;
    let sub = land.route(&token)?;
    if sub != "alice" {
        return Err(format!("routed as {sub:?}, not alice"));
    }

    let missing = land.remote_compile_trusting(&ca_dir.path().join("absent.pem"));
    let unreadable = land.login_alice(Some(&missing))?;
    contains(
        &failed(&unreadable, "login with a missing idp_ca")?,
        "remote_compile.idp_ca",
        "error",
    )?;

    // The scheduler without the tenant's idp_ca cannot fetch the keys of that IdP.
    let blind = Land::with_idp(Idp::start_tls(TENANT)?, |_| {})?;
    let other_ca = blind.dir.path().join("ca.pem");
    std::fs::write(&other_ca, blind.idp.ca_pem().unwrap_or_default()).map_err(text)?;
    let login = blind.login_alice(Some(&blind.remote_compile_trusting(&other_ca)))?;
    succeeded(&login, "hpcc login to the second IdP")?;
    let token = cached_token_in(&blind.tokens_dir(), TENANT, now()).map_err(text)?;
    match blind.route(&token) {
        Ok(sub) => Err(format!(
            "a scheduler without idp_ca validated a token of an IdP it cannot reach ({sub})"
        )),
        Err(error) if error.contains("Route refused") => Ok(()),
        Err(error) => Err(format!("unexpected failure: {error}")),
    }
}

/// The login tests.
pub fn cases() -> Vec<Case> {
    const CARGO: &[Need] = &[Need::Cargo];
    vec![
        (
            "login::password_login_caches_a_private_token_that_routes",
            CARGO,
            password_login_caches_a_private_token_that_routes,
        ),
        (
            "login::wrong_password_shows_the_idps_error_and_caches_nothing",
            CARGO,
            wrong_password_shows_the_idps_error_and_caches_nothing,
        ),
        (
            "login::client_credentials_come_from_the_environment_or_a_file",
            CARGO,
            client_credentials_come_from_the_environment_or_a_file,
        ),
        (
            "login::expired_tokens_are_refreshed",
            CARGO,
            expired_tokens_are_refreshed,
        ),
        (
            "login::an_idp_with_a_private_ca_is_trusted_through_idp_ca",
            CARGO,
            an_idp_with_a_private_ca_is_trusted_through_idp_ca,
        ),
        (
            "login::configuration_and_tenant_names_are_checked",
            CARGO,
            configuration_and_tenant_names_are_checked,
        ),
    ]
}
