//! TLS, as deployed: the `hpcc-scheduler` and `hpcc-worker` binaries with certificates from a
//! throwaway CA, and the daemon's farm client trusting that CA. A compile succeeds over TLS; a
//! plaintext client, or one trusting another CA, is refused before anything is compiled.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hpcc_daemon::farm::{Farm, FarmConfig};
use hpcc_testkit::pki::Pki;

use crate::idp::Idp;
use crate::scheduler::{now, user_token, SECRET};
use crate::{Case, Need, TestResult};

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

pub(crate) fn free_port() -> Result<u16, String> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(text)?;
    Ok(probe.local_addr().map_err(text)?.port())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(binary: &Path, config: &Path, log: &Path) -> Result<Killed, String> {
    Command::new(binary)
        .arg("--config")
        .arg(config)
        // Logs as a log pipeline takes them (checked below).
        .env("HPCC_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).map_err(text)?)
        .spawn()
        .map(Killed)
        .map_err(|error| format!("{}: {error}", binary.display()))
}

fn farm(
    runtime: &tokio::runtime::Runtime,
    scheduler: &str,
    ca: Option<String>,
    image: &str,
) -> Result<Farm, String> {
    let _entered = runtime.enter();
    Farm::new(FarmConfig {
        tenant: "a".into(),
        scheduler: scheduler.into(),
        scheduler_ca: ca,
        insecure_plaintext: false,
        image: image.into(),
        timeout: Duration::from_secs(60),
        route_patience: Duration::from_secs(5),
        paranoid: false,
    })
    .map_err(text)
}

fn farm_over_tls() -> TestResult {
    let bin: PathBuf = crate::login::binaries()?.to_path_buf();
    let dir = tempfile::tempdir().map_err(text)?;
    let file = |name: &str, body: &str| -> Result<PathBuf, String> {
        let path = dir.path().join(name);
        std::fs::write(&path, body).map_err(text)?;
        Ok(path)
    };
    let pki = Pki::new("farm")?;
    let ca = file("ca.pem", &pki.ca_pem)?;
    let cert = file("server.pem", &pki.cert_pem)?;
    let key = file("server.key", &pki.key_pem)?;
    let secret = file("secret", SECRET)?;
    let routing_key = dir.path().join("routing.pem");
    let keygen = Command::new(bin.join("hpcc-scheduler"))
        .arg("keygen")
        .arg(&routing_key)
        .output()
        .map_err(text)?;
    if !keygen.status.success() {
        return Err(format!(
            "keygen: {}",
            String::from_utf8_lossy(&keygen.stderr)
        ));
    }
    let public = String::from_utf8_lossy(&keygen.stdout).trim().to_owned();
    let (layout, image) = crate::image::layout()?;
    let idp = Idp::start("a")?;
    let scheduler_port = free_port()?;
    let (scheduler_metrics, worker_metrics) = (free_port()?, free_port()?);
    let scheduler_config = file(
        "scheduler.toml",
        &format!(
            "listen = \"127.0.0.1:{scheduler_port}\"\nrouting_key = {routing_key:?}\n\
             metrics_listen = \"127.0.0.1:{scheduler_metrics}\"\n\
             worker_secret_file = {secret:?}\n\n[tls]\ncert = {cert:?}\nkey = {key:?}\n\n\
             [[tenants]]\nid = \"a\"\nissuer = \"{}\"\njwks_uri = \"{}\"\n\
             token_endpoint = \"{}\"\naudience = \"hpcc\"\nallowed_images = [\"{image}\"]\n",
            idp.issuer(),
            idp.jwks_uri(),
            idp.token_uri(),
        ),
    )?;
    let _scheduler = spawn(
        &bin.join("hpcc-scheduler"),
        &scheduler_config,
        &dir.path().join("scheduler.log"),
    )?;
    let worker_config = file(
        "worker.toml",
        &format!(
            "id = \"tls-worker\"\nlisten = \"127.0.0.1:{}\"\ntls_ca = {ca:?}\n\
             tls_server_name = \"localhost\"\nscheduler = \"https://127.0.0.1:{scheduler_port}\"\n\
             scheduler_ca = {ca:?}\nworker_secret_file = {secret:?}\n\
             routing_public_key = \"{public}\"\nstate_dir = {:?}\nagent = {:?}\nimages = [{:?}]\n\
             runtime = \"sandbox\"\nmetrics_listen = \"127.0.0.1:{worker_metrics}\"\n\n\
             [tls]\ncert = {cert:?}\nkey = {key:?}\n",
            free_port()?,
            dir.path().join("state"),
            hpcc_runtime::testing::agent_binary()?,
            layout,
        ),
    )?;
    let _worker = spawn(
        &bin.join("hpcc-worker"),
        &worker_config,
        &dir.path().join("worker.log"),
    )?;
    let logs = || {
        format!(
            "\nscheduler log:\n{}\nworker log:\n{}",
            std::fs::read_to_string(dir.path().join("scheduler.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default()
        )
    };
    let runtime = tokio::runtime::Runtime::new().map_err(text)?;
    let token = user_token(&idp, &idp.issuer(), now() + 600);
    let url = format!("https://127.0.0.1:{scheduler_port}");
    let trusted = farm(&runtime, &url, Some(pki.ca_pem.clone()), &image)?;
    let request = || crate::farm::request(b"int over_tls(void) { return 7; }\n".to_vec(), &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let outcome = loop {
        match runtime.block_on(trusted.compile(request(), &token)) {
            Ok(outcome) => break outcome,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(300)),
            Err(error) => return Err(format!("compile over TLS: {error}{}", logs())),
        }
    };
    if outcome.exit_code != 0 || outcome.object.is_none() {
        return Err(format!(
            "compile over TLS: exit {}{}",
            outcome.exit_code,
            logs()
        ));
    }
    // Another CA: the handshake fails, nothing is routed or compiled.
    let stranger = Pki::new("stranger")?;
    let untrusting = farm(&runtime, &url, Some(stranger.ca_pem), &image)?;
    if runtime
        .block_on(untrusting.compile(request(), &token))
        .is_ok()
    {
        return Err("a client trusting another CA reached the farm".into());
    }
    // Plaintext is refused by the client unless asked for, and by the TLS server anyway.
    if farm(
        &runtime,
        &format!("http://127.0.0.1:{scheduler_port}"),
        None,
        &image,
    )
    .is_ok()
    {
        return Err("a plaintext scheduler URL was accepted without insecure_plaintext".into());
    }
    // Both services count what happened, at their metrics_listen.
    for (port, needle) in [
        (
            scheduler_metrics,
            "hpcc_scheduler_routes_total{tenant=\"a\",result=\"routed\"} ",
        ),
        (
            worker_metrics,
            "hpcc_worker_jobs_total{tenant=\"a\",outcome=\"compiled\"} 1",
        ),
    ] {
        let text = scrape(port)?;
        if !text.contains(needle) {
            return Err(format!("no {needle:?} at port {port}: {text}"));
        }
    }
    // The worker's JSON log line for the job carries the job's span fields.
    let worker_log = std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default();
    let answered = worker_log
        .lines()
        .filter(|line| line.starts_with('{'))
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["fields"]["message"] == "job answered")
        .ok_or_else(|| {
            format!(
                "no JSON \"job answered\" line in the worker's log{}",
                logs()
            )
        })?;
    let job_span = answered["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|span| span["name"] == "job"))
        .ok_or_else(|| format!("the job's line has no job span: {answered}"))?;
    if job_span["tenant"] != "a"
        || job_span["image"] != image.as_str()
        || job_span["source"]
            .as_str()
            .is_none_or(|digest| digest.len() != 64)
    {
        return Err(format!(
            "the job span lacks tenant, image or source: {answered}"
        ));
    }
    let audit = std::fs::read_to_string(dir.path().join("state/audit.tsv")).unwrap_or_default();
    if audit.lines().count() != 1 {
        return Err(format!("{} audit rows, expected 1", audit.lines().count()));
    }
    Ok(())
}

/// The text of `GET /metrics` on loopback `port`.
fn scrape(port: u16) -> Result<String, String> {
    match crate::metrics::get(port, "/metrics")? {
        (200, body) => Ok(body),
        (code, body) => Err(format!("GET /metrics on port {port}: {code} {body}")),
    }
}

pub fn cases() -> Vec<Case> {
    vec![("tls::farm_over_tls", &[Need::Sandbox], farm_over_tls)]
}
