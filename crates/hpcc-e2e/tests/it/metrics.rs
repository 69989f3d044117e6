//! The services' Prometheus endpoints as an operator's Prometheus sees them: a real
//! `prometheus` server (Debian's package, on loopback, storage in a temporary directory)
//! scrapes the scheduler and a worker of the unprivileged farm (`farm_local`'s rig) while
//! compiles run, and a real `hpccd` with `daemon.metrics_listen` after a miss and a hit, with the shipped alert rules (`dist/prometheus`) loaded, and its HTTP API is
//! asked whether the counters moved, whether every panel of the shipped dashboard
//! (`dist/grafana`) evaluates with data, and whether every alert rule evaluates cleanly.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::farm_local::{request, rig, GOOD};
use crate::tls::free_port;
use crate::{Case, Need, TestResult};

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

/// A child killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on loopback `port`: the status line's code and the body.
pub(crate) fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(text)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(text)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(text)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).map_err(text)?;
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    Ok((code, body))
}

/// A PromQL query through Prometheus's HTTP API: the samples' values (NaN for a value that
/// is not a number), an error if the query does not evaluate.
fn query_all(port: u16, promql: &str) -> Result<Vec<f64>, String> {
    let encoded: String = promql
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect();
    let (code, body) = get(port, &format!("/api/v1/query?query={encoded}"))?;
    let reply: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{promql}: {e}: {body}"))?;
    if code != 200 || reply["status"] != "success" {
        return Err(format!("{promql} does not evaluate: {body}"));
    }
    Ok(reply["data"]["result"]
        .as_array()
        .map(|samples| {
            samples
                .iter()
                .map(|sample| {
                    sample["value"][1]
                        .as_str()
                        .and_then(|value| value.parse::<f64>().ok())
                        .unwrap_or(f64::NAN)
                })
                .collect()
        })
        .unwrap_or_default())
}

/// [`query_all`]'s first value, `None` for an empty result.
fn query(port: u16, promql: &str) -> Result<Option<f64>, String> {
    Ok(query_all(port, promql)?.first().copied())
}

/// The repository's `dist/` directory.
fn dist() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist")
}

/// A tokio listener on loopback `port` (inside a runtime).
fn loopback_listener(port: u16) -> Result<tokio::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).map_err(text)?;
    listener.set_nonblocking(true).map_err(text)?;
    tokio::net::TcpListener::from_std(listener).map_err(text)
}

/// Starts `prometheus` scraping `targets` (job name, port) every second; its port.
fn start_prometheus(dir: &Path, targets: &[(&str, u16)]) -> Result<(Killed, u16), String> {
    let mut config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
         scrape_configs:\n",
        dist().join("prometheus/hpcc-alerts.yml").display()
    );
    for (job, port) in targets {
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ));
    }
    let config_file = dir.join("prometheus.yml");
    std::fs::write(&config_file, config).map_err(text)?;
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("prometheus.log")).map_err(text)?;
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting prometheus: {e}"))?;
    let child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, "/-/ready").map(|(code, _)| code) != Ok(200) {
        if Instant::now() > deadline {
            return Err(format!(
                "prometheus not ready: {}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((child, port))
}

/// A real `hpccd` with its metrics endpoint on, in a directory of its own; stopped when
/// dropped.
struct LocalDaemon {
    dir: tempfile::TempDir,
}

impl LocalDaemon {
    /// `hpcc` with this daemon's settings and nothing of the caller's.
    fn command(&self, args: &[&str], metrics_port: u16) -> Result<Command, String> {
        let mut command = Command::new(crate::login::binaries()?.join("hpcc"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("HPCC_") {
                command.env_remove(name);
            }
        }
        command
            .args(args)
            .current_dir(self.dir.path().join("project"))
            .env("HPCC_CONFIG", self.dir.path().join("none.toml"))
            .env("HPCC_CACHE_DIR", self.dir.path().join("cache"))
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .env("HPCC_DAEMON_AUTOSTART", "false")
            .env(
                "HPCC_DAEMON_METRICS_LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            )
            .stdin(Stdio::null());
        Ok(command)
    }

    /// Starts the daemon, then compiles a file twice through it (a miss, then a hit).
    fn start_and_build(metrics_port: u16) -> Result<LocalDaemon, String> {
        use std::os::unix::fs::PermissionsExt;
        let daemon = LocalDaemon {
            dir: tempfile::tempdir().map_err(text)?,
        };
        let run = daemon.dir.path().join("run");
        std::fs::create_dir_all(daemon.dir.path().join("project")).map_err(text)?;
        std::fs::create_dir_all(&run).map_err(text)?;
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).map_err(text)?;
        std::fs::write(
            daemon.dir.path().join("project/x.c"),
            "int twice(int v) { return 2 * v; }\n",
        )
        .map_err(text)?;
        for args in [
            &["start"][..],
            &["gcc", "-c", "x.c", "-o", "x.o"],
            &["gcc", "-c", "x.c", "-o", "x.o"],
        ] {
            let output = daemon
                .command(args, metrics_port)?
                .output()
                .map_err(|e| format!("hpcc {args:?}: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "hpcc {args:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
        }
        Ok(daemon)
    }
}

impl Drop for LocalDaemon {
    fn drop(&mut self) {
        if let Ok(mut stop) = self.command(&["stop"], 0) {
            let _ = stop.output();
        }
    }
}

/// A compile, a hit, a failing compile and a refused token through the farm, scraped by
/// Prometheus: the route, job, audit and refusal counters reach the right values, the
/// scrape targets are up, and rate and quantile queries over the histograms evaluate.
fn prometheus_sees_the_farm_work() -> TestResult {
    crate::login::binaries()?;
    // Prometheus first: its targets are down until the rig serves them.
    let (scheduler_port, worker_port, daemon_port) = (free_port()?, free_port()?, free_port()?);
    let dir = tempfile::tempdir().map_err(text)?;
    let (_prometheus, port) = start_prometheus(
        dir.path(),
        &[
            ("hpcc-scheduler", scheduler_port),
            ("hpcc-worker", worker_port),
            ("hpcc-daemon", daemon_port),
        ],
    )?;
    // A developer machine's daemon: a miss and a hit.
    let _daemon = LocalDaemon::start_and_build(daemon_port)?;
    let rig = rig()?;
    {
        let _entered = rig.runtime.enter();
        let scheduler = Arc::clone(&rig.scheduler);
        rig.runtime.spawn(hpcc_metrics::serve(
            loopback_listener(scheduler_port)?,
            Arc::new(rig.scheduler.metrics_registry()),
            Arc::new(move || scheduler.refresh_metrics(crate::scheduler::now())),
        ));
        // The worker's heartbeats, as its binary sends them, keep it live for the scheduler.
        let beating = Arc::clone(&rig.scheduler);
        rig.runtime.spawn(async move {
            loop {
                let _ = beating.heartbeat(
                    hpcc_proto::scheduler::HeartbeatRequest {
                        worker_id: "w-local".into(),
                        capacity: 2,
                        warm_images: vec![crate::scheduler::IMAGE.into()],
                        ..Default::default()
                    },
                    Some(crate::scheduler::SECRET),
                    crate::scheduler::now(),
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let worker = Arc::clone(&rig.worker);
        rig.runtime.spawn(hpcc_metrics::serve(
            loopback_listener(worker_port)?,
            Arc::new(rig.worker.metrics_registry()),
            Arc::new(move || worker.refresh_metrics()),
        ));
    }
    let farm = rig.farm("a")?;
    let token = rig.token_a();
    for source in [GOOD, GOOD, "# 1 \"/src/g.c\"\nint g( {\n"] {
        rig.runtime
            .block_on(farm.compile(request(source), &token))
            .map_err(|e| format!("a compile through the farm: {e}"))?;
    }
    let expired = crate::scheduler::user_token(
        &rig.idp_a,
        &rig.idp_a.issuer(),
        crate::scheduler::now() - 600,
    );
    if rig
        .runtime
        .block_on(farm.compile(request(GOOD), &expired))
        .is_ok()
    {
        return Err("an expired token was routed".into());
    }

    let expected: [(&str, f64); 9] = [
        (r#"sum(hpcc_daemon_hits_total{kind="direct"})"#, 1.0),
        ("sum(hpcc_daemon_misses_total)", 1.0),
        (
            r#"sum(hpcc_scheduler_routes_total{tenant="a",result="routed"})"#,
            3.0,
        ),
        (
            r#"sum(hpcc_scheduler_refused_tokens_total{tenant="a",reason="expired"})"#,
            1.0,
        ),
        (
            r#"max_over_time(hpcc_scheduler_workers{state="live"}[5m])"#,
            1.0,
        ),
        (
            r#"sum(hpcc_worker_jobs_total{tenant="a",outcome="compiled"})"#,
            1.0,
        ),
        (
            r#"sum(hpcc_worker_jobs_total{tenant="a",outcome="hit"})"#,
            1.0,
        ),
        (
            r#"sum(hpcc_worker_jobs_total{tenant="a",outcome="failed"})"#,
            1.0,
        ),
        ("sum(hpcc_worker_audit_rows_total)", 3.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    loop {
        last.clear();
        for (promql, want) in expected {
            let got = query(port, promql)?;
            if got != Some(want) {
                last.push(format!("{promql} = {got:?}, want {want}"));
            }
        }
        if last.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "Prometheus never saw the farm's work: {}; the scheduler's metrics now: {:?}; \
                 log: {}",
                last.join("; "),
                get(scheduler_port, "/metrics"),
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for job in ["hpcc-scheduler", "hpcc-worker", "hpcc-daemon"] {
        if query(port, &format!(r#"up{{job="{job}"}}"#))? != Some(1.0) {
            return Err(format!("the {job} target is not up"));
        }
    }
    // Every panel of the shipped dashboards evaluates and has data.
    let mut panels = Vec::new();
    for file in ["hpcc-farm.json", "hpcc-developer.json"] {
        let dashboard: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dist().join("grafana").join(file)).map_err(text)?,
        )
        .map_err(|e| format!("dist/grafana/{file}: {e}"))?;
        let found = dashboard["panels"].as_array().cloned().unwrap_or_default();
        if found.is_empty() {
            return Err(format!("dist/grafana/{file} has no panels"));
        }
        panels.extend(found);
    }
    // Rates need two scrapes of a series: allow a few.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut empty = Vec::new();
        for panel in &panels {
            for target in panel["targets"].as_array().cloned().unwrap_or_default() {
                let promql = target["expr"].as_str().unwrap_or_default();
                if query_all(port, promql)?.is_empty() {
                    empty.push(format!("panel {}: {promql}", panel["title"]));
                }
            }
        }
        if empty.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("dashboard queries without data: {empty:?}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every alert rule has been evaluated, without error.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get(port, "/api/v1/rules")?;
        let reply: serde_json::Value = serde_json::from_str(&body).map_err(text)?;
        let rules: Vec<serde_json::Value> = reply["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let unhealthy: Vec<String> = rules
            .iter()
            .filter(|rule| rule["health"] != "ok")
            .map(|rule| {
                format!(
                    "{} ({}: {})",
                    rule["name"], rule["health"], rule["lastError"]
                )
            })
            .collect();
        if rules.len() >= 12 && unhealthy.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} rules loaded; not evaluated cleanly: {unhealthy:?}",
                rules.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// The metrics tests.
pub fn cases() -> Vec<Case> {
    vec![(
        "metrics::prometheus_sees_the_farm_work",
        &[Need::Prometheus, Need::Cargo],
        prometheus_sees_the_farm_work,
    )]
}
