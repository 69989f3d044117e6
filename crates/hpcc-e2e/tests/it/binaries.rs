//! Every binary as an operator first meets it: `--help` and `--version` answer on stdout and
//! exit 0, a wrong argument exits 2 naming it with the usage, and `hpcc-scheduler keygen`
//! writes a key OpenSSL reads, never overwrites it, and prints its public half again; a worker
//! refuses an agent that is not static; `hpcc-scheduler check-config` and `hpcc-worker
//! check-config` name every problem.

use std::process::{Command, Output};

use crate::{Case, Need, TestResult};

const BINARIES: &[&str] = &[
    "hpcc",
    "hpccd",
    "hpcc-scheduler",
    "hpcc-worker",
    "hpcc-agent",
];

fn run(binary: &str, args: &[&str]) -> Result<Output, String> {
    let bin = crate::login::binaries()?;
    Command::new(bin.join(binary))
        .args(args)
        .env_remove("HPCC_LOG")
        .output()
        .map_err(|e| format!("running {binary}: {e}"))
}

fn help_and_version_everywhere() -> TestResult {
    for binary in BINARIES {
        for flag in ["--help", "-h"] {
            let output = run(binary, &[flag])?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            if !output.status.success() || !stdout.contains("usage:") || !stdout.contains(binary) {
                return Err(format!("{binary} {flag}: {output:?}"));
            }
        }
        for flag in ["--version", "-V"] {
            let output = run(binary, &[flag])?;
            let expected = format!("{binary} {}\n", env!("CARGO_PKG_VERSION"));
            if !output.status.success() || String::from_utf8_lossy(&output.stdout) != expected {
                return Err(format!("{binary} {flag}: {output:?}"));
            }
        }
    }
    // A wrong argument is an error that names it, with the usage, on stderr.
    for binary in ["hpccd", "hpcc-scheduler", "hpcc-worker"] {
        let output = run(binary, &["--no-such-flag"])?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.code() != Some(2)
            || !stderr.contains("--no-such-flag")
            || !stderr.contains("usage:")
        {
            return Err(format!("{binary} --no-such-flag: {output:?}"));
        }
    }
    Ok(())
}

fn keygen_writes_a_standard_key_once_and_shows_its_public_half() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let key = dir.path().join("routing.pem");
    let key_arg = key.to_str().ok_or("a UTF-8 temp path")?;
    let made = run("hpcc-scheduler", &["keygen", key_arg])?;
    if !made.status.success() {
        return Err(format!("keygen: {made:?}"));
    }
    let public = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    let shown = run("hpcc-scheduler", &["keygen", "--public", key_arg])?;
    if !shown.status.success() || String::from_utf8_lossy(&shown.stdout).trim() != public {
        return Err(format!(
            "keygen --public should print {public:?}: {shown:?}"
        ));
    }
    let again = run("hpcc-scheduler", &["keygen", key_arg])?;
    if again.status.success() {
        return Err("keygen overwrote an existing key".into());
    }
    // OpenSSL reads the key and derives the same public key (the last 32 bytes of its DER
    // SubjectPublicKeyInfo).
    let openssl = Command::new("openssl")
        .args(["pkey", "-in", key_arg, "-pubout", "-outform", "DER"])
        .output()
        .map_err(|e| format!("running openssl: {e}"))?;
    if !openssl.status.success() {
        return Err(format!(
            "openssl cannot read the key: {}",
            String::from_utf8_lossy(&openssl.stderr)
        ));
    }
    use base64::Engine;
    let from_openssl = base64::engine::general_purpose::STANDARD
        .encode(&openssl.stdout[openssl.stdout.len().saturating_sub(32)..]);
    if from_openssl != public {
        return Err(format!(
            "openssl's public key {from_openssl} is not {public}"
        ));
    }
    // And a key OpenSSL made is one the scheduler reads.
    let theirs = dir.path().join("openssl.pem");
    let theirs_arg = theirs.to_str().ok_or("a UTF-8 temp path")?;
    let generated = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ED25519", "-out", theirs_arg])
        .output()
        .map_err(|e| format!("running openssl: {e}"))?;
    if !generated.status.success() {
        return Err(format!("openssl genpkey: {generated:?}"));
    }
    let read = run("hpcc-scheduler", &["keygen", "--public", theirs_arg])?;
    if !read.status.success() || read.stdout.len() < 40 {
        return Err(format!("the scheduler cannot read OpenSSL's key: {read:?}"));
    }
    Ok(())
}

/// A worker given a dynamically linked agent refuses to start, saying so and how to build
/// the right one, instead of serving until an image's libc differs from the host's.
fn a_worker_refuses_a_dynamic_agent() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").map_err(|e| e.to_string())?;
    let key = hpcc_auth::RoutingKey::generate().map_err(|e| e.to_string())?;
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"w\"\nlisten = \"127.0.0.1:0\"\ninsecure_plaintext = true\n\
             scheduler = \"http://127.0.0.1:1\"\nworker_secret_file = {:?}\n\
             routing_public_key = \"{}\"\ncapacity = 1\nstate_dir = {:?}\n\
             agent = \"/bin/true\"\nimages = []\nruntime = \"sandbox\"\n\
             metrics_listen = \"127.0.0.1:0\"\n",
            secret.display().to_string(),
            key.public_base64(),
            dir.path().join("state").display().to_string(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let bin = crate::login::binaries()?;
    let mut child = Command::new(bin.join("hpcc-worker"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the worker kept running with a dynamic agent".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    if status.success() || !stderr.contains("dynamically linked") || !stderr.contains("crt-static")
    {
        return Err(format!("{status}: {stderr}"));
    }
    Ok(())
}

/// `hpcc-scheduler check-config` passes a good file after fetching each tenant's keys, and
/// names every problem of a bad one: a routing key that is not one, an empty secret, TLS files
/// without a certificate, a tenant whose JWKS cannot be fetched.
fn scheduler_check_config_names_each_problem() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = |name: &str| dir.path().join(name).display().to_string();
    let idp = crate::idp::Idp::start("a")?;
    let key = hpcc_auth::RoutingKey::generate().map_err(|e| e.to_string())?;
    std::fs::write(path("routing.pem"), key.to_pem()).map_err(|e| e.to_string())?;
    std::fs::write(path("secret"), "s3cret\n").map_err(|e| e.to_string())?;
    let tenant = |id: &str, jwks: &str| {
        format!(
            "[[tenants]]\nid = \"{id}\"\nissuer = \"{}\"\njwks_uri = \"{jwks}\"\n\
             token_endpoint = \"{}\"\naudience = \"hpcc\"\nallowed_images = []\n",
            idp.issuer(),
            idp.token_uri()
        )
    };
    let write = |name: &str, routing_key: &str, secret: &str, tls: &str, tenants: &str| {
        let text = format!(
            "listen = \"127.0.0.1:0\"\nrouting_key = {routing_key:?}\nworker_secret_file = {secret:?}\n\
             {tls}\n{tenants}"
        );
        std::fs::write(path(name), text).map_err(|e| e.to_string())
    };
    write(
        "good.toml",
        &path("routing.pem"),
        &path("secret"),
        "insecure_plaintext = true\n",
        &tenant("a", &idp.jwks_uri()),
    )?;
    let good = run("hpcc-scheduler", &["check-config", &path("good.toml")])?;
    let stdout = String::from_utf8_lossy(&good.stdout);
    if !good.status.success()
        || !stdout.contains(&key.public_base64())
        || !stdout.contains("1 key(s)")
    {
        return Err(format!("a good config: {good:?}"));
    }
    // Every problem at once, each named.
    std::fs::write(path("empty"), "  \n").map_err(|e| e.to_string())?;
    std::fs::write(path("not-a-cert.pem"), key.to_pem()).map_err(|e| e.to_string())?;
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| e.to_string())?;
    write(
        "bad.toml",
        &path("secret"),
        &path("empty"),
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            path("not-a-cert.pem"),
            path("routing.pem")
        ),
        &(tenant("a", &idp.jwks_uri()) + &tenant("b", &format!("http://{gone}/jwks"))),
    )?;
    let bad = run("hpcc-scheduler", &["check-config", &path("bad.toml")])?;
    let stdout = String::from_utf8_lossy(&bad.stdout);
    let problems: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("PROBLEM:"))
        .collect();
    let named = |needle: &str| problems.iter().any(|line| line.contains(needle));
    if bad.status.success()
        || problems.len() != 4
        || !named("routing_key")
        || !named("worker_secret_file")
        || !named("tls.cert")
        || !named("tenant \"b\"")
        || !stdout.contains("ok: tenant \"a\"")
    {
        return Err(format!(
            "a bad config: {stdout}\n{}",
            String::from_utf8_lossy(&bad.stderr)
        ));
    }
    Ok(())
}

/// `hpcc-worker check-config` passes a good file (its state directory still to be made) and
/// names each problem of a bad one, all in one run: an empty secret, a routing key that is
/// not one, a CA file without a certificate, a dynamic agent, a state directory others can
/// write, an image directory that is no OCI layout, a reference not pinned by digest, and a
/// microVM whose kernel and QEMU are missing.
fn worker_check_config_names_each_problem() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = |name: &str| dir.path().join(name).display().to_string();
    let key = hpcc_auth::RoutingKey::generate().map_err(|e| e.to_string())?;
    std::fs::write(path("secret"), "s3cret\n").map_err(|e| e.to_string())?;
    let agent = hpcc_runtime::testing::agent_binary()?;
    std::fs::write(
        path("good.toml"),
        format!(
            "id = \"w\"\nlisten = \"127.0.0.1:0\"\ninsecure_plaintext = true\n\
             scheduler = \"http://127.0.0.1:1\"\nworker_secret_file = {:?}\n\
             routing_public_key = \"{}\"\nstate_dir = {:?}\nagent = {:?}\n\
             runtime = \"sandbox\"\n",
            path("secret"),
            key.public_base64(),
            path("state/new"),
            agent.display().to_string(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let good = run("hpcc-worker", &["check-config", &path("good.toml")])?;
    let stdout = String::from_utf8_lossy(&good.stdout);
    if !good.status.success() || !stdout.contains("ok: agent") || stdout.contains("PROBLEM") {
        return Err(format!("a good config: {good:?}"));
    }

    std::fs::write(path("empty"), "\n").map_err(|e| e.to_string())?;
    std::fs::write(path("not-a-cert.pem"), key.to_pem()).map_err(|e| e.to_string())?;
    std::fs::create_dir(path("open")).map_err(|e| e.to_string())?;
    std::fs::set_permissions(path("open"), std::fs::Permissions::from_mode(0o777))
        .map_err(|e| e.to_string())?;
    std::fs::create_dir(path("not-a-layout")).map_err(|e| e.to_string())?;
    std::fs::write(
        path("bad.toml"),
        format!(
            "id = \"w\"\nlisten = \"127.0.0.1:0\"\ninsecure_plaintext = true\n\
             scheduler = \"http://127.0.0.1:1\"\nworker_secret_file = {:?}\n\
             routing_public_key = \"not-a-key\"\ntls_ca = {:?}\nstate_dir = {:?}\n\
             agent = \"/bin/true\"\nimages = [{:?}]\npull = [\"r.example/x:latest\"]\n\
             runtime = \"qemu\"\n[vm]\nkernel = {:?}\nqemu = {:?}\naccel = \"tcg\"\n",
            path("empty"),
            path("not-a-cert.pem"),
            path("open"),
            path("not-a-layout"),
            path("no-kernel"),
            path("no-qemu"),
        ),
    )
    .map_err(|e| e.to_string())?;
    let bad = run("hpcc-worker", &["check-config", &path("bad.toml")])?;
    let stdout = String::from_utf8_lossy(&bad.stdout);
    let problems: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("PROBLEM:"))
        .collect();
    let expected = [
        "worker_secret_file",
        "routing_public_key",
        "tls_ca",
        "agent /bin/true",
        "state_dir",
        "image ",
        "pull r.example/x:latest",
        "vm.kernel",
        "vm.qemu",
    ];
    let unnamed: Vec<&&str> = expected
        .iter()
        .filter(|needle| !problems.iter().any(|line| line.contains(**needle)))
        .collect();
    if bad.status.code() != Some(1) || problems.len() != expected.len() || !unnamed.is_empty() {
        return Err(format!(
            "a bad config (unnamed: {unnamed:?}): {stdout}\n{}",
            String::from_utf8_lossy(&bad.stderr)
        ));
    }
    Ok(())
}

/// `hpcc-worker make-image --rootfs` packs a tree as an OCI layout, leaves out a FIFO saying
/// so, and prints the digest the image store then imports it as; a worker config naming the
/// layout passes `check-config`; an existing layout is not overwritten.
fn make_image_prints_the_digest_a_worker_imports() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("usr/bin")).map_err(|e| e.to_string())?;
    std::fs::write(root.join("usr/bin/cc"), "#!/bin/sh\n").map_err(|e| e.to_string())?;
    let fifo = Command::new("mkfifo")
        .arg(root.join("pipe"))
        .status()
        .map_err(|e| format!("mkfifo: {e}"))?;
    if !fifo.success() {
        return Err("mkfifo failed".into());
    }
    let layout = dir.path().join("layout");
    let (root_arg, layout_arg) = (root.display().to_string(), layout.display().to_string());
    let made = run(
        "hpcc-worker",
        &["make-image", "--rootfs", &root_arg, "--out", &layout_arg],
    )?;
    let printed = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&made.stderr);
    if !made.status.success() || !printed.starts_with("sha256:") || !stderr.contains("pipe") {
        return Err(format!("make-image: {made:?}"));
    }
    let store = hpcc_image::ImageStore::open(dir.path().join("store"), Default::default())
        .map_err(|e| e.to_string())?;
    let imported = store.import_layout(&layout).map_err(|e| e.to_string())?;
    if imported.to_string() != printed {
        return Err(format!("printed {printed}, imported as {imported}"));
    }
    let again = run(
        "hpcc-worker",
        &["make-image", "--rootfs", &root_arg, "--out", &layout_arg],
    )?;
    if again.status.success() || !String::from_utf8_lossy(&again.stderr).contains("not empty") {
        return Err(format!(
            "an existing layout was packed into again: {again:?}"
        ));
    }
    Ok(())
}

/// The shipped systemd units of the scheduler and the worker pass `systemd-analyze verify`
/// (with their binaries, and the `check-config` each runs first, at the built paths) and are
/// hardened: `systemd-analyze security` rates the scheduler's exposure at most 2.0 and the
/// root worker's at most 6.5, and the worker keeps only the capabilities it documents.
fn systemd_units_verify_and_are_hardened() -> TestResult {
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/systemd");
    let bin = crate::login::binaries()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    for (unit, ceiling) in [
        ("hpcc-scheduler.service", 2.0),
        ("hpcc-worker.service", 6.5),
    ] {
        let text = std::fs::read_to_string(units.join(unit)).map_err(|e| format!("{unit}: {e}"))?;
        let local = dir.path().join(unit);
        std::fs::write(
            &local,
            text.replace("/usr/local/bin/", &format!("{}/", bin.display())),
        )
        .map_err(|e| e.to_string())?;
        let local_arg = local.display().to_string();
        let verify = Command::new("systemd-analyze")
            .args(["verify", &local_arg])
            .output()
            .map_err(|e| format!("systemd-analyze: {e}"))?;
        let complaints = String::from_utf8_lossy(&verify.stderr);
        if !verify.status.success() || complaints.contains(unit) {
            return Err(format!("systemd-analyze verify {unit}: {complaints}"));
        }
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", &local_arg])
            .output()
            .map_err(|e| format!("systemd-analyze: {e}"))?;
        let report = String::from_utf8_lossy(&security.stdout);
        let exposure = report
            .lines()
            .find_map(|line| {
                line.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok())
            .ok_or_else(|| format!("no exposure level for {unit}: {report}"))?;
        if exposure > ceiling {
            return Err(format!(
                "{unit}: exposure {exposure} over {ceiling}:\n{report}"
            ));
        }
    }
    let worker =
        std::fs::read_to_string(units.join("hpcc-worker.service")).map_err(|e| e.to_string())?;
    let bounding = worker
        .lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .ok_or("the worker unit has no CapabilityBoundingSet")?;
    let comments: String = worker
        .lines()
        .filter(|line| line.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(unexplained) = bounding
        .split_whitespace()
        .find(|kept| !comments.contains(kept))
    {
        return Err(format!(
            "the worker unit keeps {unexplained} without saying why"
        ));
    }
    Ok(())
}

/// The binaries' command-line tests.
pub fn cases() -> Vec<Case> {
    const CARGO: &[Need] = &[Need::Cargo];
    vec![
        (
            "binaries::help_and_version_everywhere",
            CARGO,
            help_and_version_everywhere,
        ),
        (
            "binaries::scheduler_check_config_names_each_problem",
            CARGO,
            scheduler_check_config_names_each_problem,
        ),
        (
            "binaries::worker_check_config_names_each_problem",
            CARGO,
            worker_check_config_names_each_problem,
        ),
        (
            "binaries::make_image_prints_the_digest_a_worker_imports",
            CARGO,
            make_image_prints_the_digest_a_worker_imports,
        ),
        (
            "binaries::systemd_units_verify_and_are_hardened",
            &[Need::Cargo, Need::SystemdAnalyze],
            systemd_units_verify_and_are_hardened,
        ),
        (
            "binaries::a_worker_refuses_a_dynamic_agent",
            CARGO,
            a_worker_refuses_a_dynamic_agent,
        ),
        (
            "binaries::keygen_writes_a_standard_key_once_and_shows_its_public_half",
            CARGO,
            keygen_writes_a_standard_key_once_and_shows_its_public_half,
        ),
    ]
}
