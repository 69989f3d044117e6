//! `hpcc-worker audit-verify`: usage errors, malformed rows, a source that is not retained,
//! an image that is not present. None of these starts a session.

use std::path::Path;
use std::process::{Command, Output};

use hpcc_core::digest::Digest;
use hpcc_worker::audit::AuditRow;
use hpcc_worker::policy::{injected_flags, job_argv};
use hpcc_worker::sources::SourceStore;

fn worker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hpcc-worker"))
        .args(args)
        .output()
        .expect("running hpcc-worker")
}

/// A worker config with its state under `dir`. The agent does not exist: these tests end
/// before a session would start it (and so before the sandbox is set up).
fn config(dir: &Path) -> String {
    let path = dir.join("worker.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            id = "w1"
            listen = "127.0.0.1:0"
            insecure_plaintext = true
            scheduler = "http://127.0.0.1:1"
            worker_secret_file = "{dir}/secret"
            routing_public_key = "AAAA"
            state_dir = "{dir}/state"
            agent = "/nonexistent/hpcc-agent"
            runtime = "sandbox"
            "#,
            dir = dir.display()
        ),
    )
    .expect("writing the config");
    path.display().to_string()
}

fn row(source: &[u8]) -> AuditRow {
    let digest = Digest::of(source);
    AuditRow {
        image_digest: format!("sha256:{}", "1".repeat(64)),
        source_digest: digest.to_hex(),
        flags: job_argv(
            "gcc",
            "cpp-output",
            &injected_flags(&digest),
            &["-O2".to_owned()],
        ),
        output_digest: Digest::of(b"an object").to_hex(),
        tenant: "a".into(),
        worker: "w1".into(),
        vm: "sbx-a-1-0".into(),
        duration_ms: 12,
        exit: 0,
    }
}

/// Asserts exit code 2, `needle` in stderr and nothing on stdout.
fn refused(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{needle}: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(output.stdout.is_empty(), "{needle}: nothing verified");
}

#[test]
fn bad_usage_exits_2_with_the_usage() {
    for args in [
        &[][..],
        &["audit-verify"][..],
        &["audit-verify", "--config"][..],
        &["audit-verify", "--config", "w.toml"][..],
        &["audit-verify", "--config", "w.toml", "--line", "1"][..],
        &[
            "audit-verify",
            "--config",
            "w.toml",
            "--log",
            "a",
            "--line",
            "0",
        ][..],
    ] {
        let output = worker(args);
        refused(&output, "usage: hpcc-worker");
    }
}

#[test]
fn malformed_rows_name_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path());
    let good = row(b"int x;\n");
    let output = worker(&["audit-verify", "--config", &config, "a\tb\tc"]);
    refused(&output, "3 tab-separated fields, not 9");
    let mut bad_image = good.clone();
    bad_image.image_digest = "debian:latest".into();
    let output = worker(&["audit-verify", "--config", &config, &bad_image.to_line()]);
    refused(&output, "field image_digest");
    let line = good.to_line().replace("\t12\t", "\ttwelve\t");
    let output = worker(&["audit-verify", "--config", &config, &line]);
    refused(&output, "field duration_ms");
    let mut old = good.clone();
    old.flags.remove(0);
    let output = worker(&["audit-verify", "--config", &config, &old.to_line()]);
    refused(&output, "field flags: the command starts with");
    let output = worker(&[
        "audit-verify",
        "--config",
        "/nonexistent/w.toml",
        &good.to_line(),
    ]);
    refused(&output, "/nonexistent/w.toml");
}

#[test]
fn a_source_that_is_not_retained_or_an_absent_image_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path());
    let source = b"int f(void) { return 1; }\n";
    let line = row(source).to_line();
    let output = worker(&["audit-verify", "--config", &config, &line]);
    refused(&output, "is no longer retained");
    refused(&output, &Digest::of(source).to_hex());

    // Kept, but the image is not in the worker's store.
    let store = SourceStore::open(&dir.path().join("state/sources"), 1 << 20).expect("open");
    store
        .put(&row(source).tenant, &Digest::of(source), source, None)
        .expect("put");
    let output = worker(&["audit-verify", "--config", &config, &line]);
    refused(&output, "is not present on this worker");

    // The same through a log: every row gets its own line, then exit 2.
    let log = dir.path().join("audit.tsv");
    let mut bad = row(b"gone").to_line();
    bad.push_str(&line);
    std::fs::write(&log, bad).expect("write the log");
    let log = log.display().to_string();
    let output = worker(&["audit-verify", "--config", &config, "--log", &log]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{log}:1: source ")), "{stderr}");
    assert!(stderr.contains(&format!("{log}:2: image ")), "{stderr}");
    let output = worker(&[
        "audit-verify",
        "--config",
        &config,
        "--log",
        &log,
        "--line",
        "3",
    ]);
    refused(&output, "no line 3 (the log has 2 lines)");
}
