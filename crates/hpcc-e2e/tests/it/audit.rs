//! Audit rows re-run: a remote compile through the farm leaves a row that
//! `hpcc_worker::verify` re-runs in a fresh sandbox session to the same object; rows with a
//! changed output digest, client flag or exit code are mismatches; rows with changed injected
//! flags or image, or whose source was evicted, are errors that say so; and the worker binary's
//! `audit-verify` does the same from a worker's config and log.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use hpcc_core::digest::Digest;
use hpcc_daemon::farm::RemoteOutcome;
use hpcc_runtime::sandbox::{SandboxConfig, SandboxRuntime};
use hpcc_runtime::Limits;
use hpcc_worker::audit::AuditRow;
use hpcc_worker::verify::{Outcome, Verdict, Verifier, VerifyError};

use crate::farm::{preprocess, project, request, succeeded, text, Farmland};
use crate::{Case, Need, TestResult};

/// A verifier for the worker `worker` of `land`: its image store and retained sources, and a
/// sandbox runtime of its own (the kept directory holds its sessions).
fn verifier(land: &Farmland, worker: &str) -> Result<(Verifier, tempfile::TempDir), String> {
    let handle = land
        .workers
        .iter()
        .find(|handle| handle.id == worker)
        .ok_or_else(|| format!("unknown worker {worker}"))?;
    let sessions = tempfile::Builder::new()
        .prefix("hpcc-verify-")
        .tempdir()
        .map_err(text)?;
    let mut sandbox = SandboxConfig::new(hpcc_runtime::testing::agent_binary()?);
    sandbox.state_dir = sessions.path().join("s");
    let verifier = Verifier::new(
        Arc::new(SandboxRuntime::new(sandbox).map_err(text)?),
        land.images.clone(),
        handle.dir.join("sources"),
        Limits::default(),
        0,
    );
    Ok((verifier, sessions))
}

fn verify(land: &Farmland, worker: &str, row: &AuditRow) -> Result<Verdict, VerifyError> {
    let (verifier, _sessions) = verifier(land, worker).map_err(VerifyError::Refused)?;
    land.runtime.block_on(verifier.verify(row))
}

/// The last audit row of the worker that served `outcome`.
fn row_of(land: &Farmland, outcome: &RemoteOutcome) -> Result<AuditRow, String> {
    let index = land
        .workers
        .iter()
        .position(|handle| handle.id == outcome.worker)
        .ok_or_else(|| format!("unknown worker {}", outcome.worker))?;
    land.audit_rows(index)?
        .pop()
        .ok_or_else(|| format!("{} wrote no audit row", outcome.worker))
}

fn compile(land: &Farmland, source: Vec<u8>, flags: &[&str]) -> Result<RemoteOutcome, String> {
    let farm = land.farm("a")?;
    let flags: Vec<String> = flags.iter().map(|flag| (*flag).to_owned()).collect();
    land.runtime
        .block_on(farm.compile(request(source, &flags), &land.token_a()))
        .map_err(text)
}

fn expect_verified(
    verdict: Result<Verdict, VerifyError>,
    expected: &Outcome,
    what: &str,
) -> TestResult {
    match verdict {
        Ok(Verdict::Verified(outcome)) if &outcome == expected => Ok(()),
        other => Err(format!(
            "{what}: expected verified {expected}, got {other:?}"
        )),
    }
}

fn expect_mismatch(
    verdict: Result<Verdict, VerifyError>,
    recorded: &Outcome,
    rerun: &Outcome,
    what: &str,
) -> TestResult {
    match verdict {
        Ok(verdict)
            if matches!(&verdict, Verdict::Mismatch { recorded: said, rerun: gave, .. }
                if said == recorded && gave == rerun) =>
        {
            let line = verdict.to_string();
            if line != format!("MISMATCH: row says {recorded}, re-run gave {rerun}") {
                return Err(format!("{what}: printed as {line:?}"));
            }
            Ok(())
        }
        other => Err(format!(
            "{what}: expected a mismatch ({recorded} vs {rerun}), got {other:?}"
        )),
    }
}

fn expect_error(verdict: Result<Verdict, VerifyError>, needle: &str, what: &str) -> TestResult {
    match verdict {
        Err(error) if error.to_string().contains(needle) => Ok(()),
        other => Err(format!(
            "{what}: expected an error naming {needle:?}, got {other:?}"
        )),
    }
}

fn remote_compiles_verify_and_tampered_rows_do_not() -> TestResult {
    let land = Farmland::new()?;
    let (_dir, sources) = project(1)?;
    let source = preprocess(&sources[0], &["-DN=3".to_owned()])?;
    let outcome = compile(&land, source.clone(), &["-O2", "-g"])?;
    let object = succeeded(&outcome, "remote compile")?;
    let row = row_of(&land, &outcome)?;
    let worker = outcome.worker.clone();
    let real = Outcome {
        exit: 0,
        output_digest: Digest::of(&object).to_hex(),
    };
    if row.output_digest != real.output_digest
        || row.flags.first().map(String::as_str) != Some("gcc")
    {
        return Err(format!("the row is not the compile's: {row:?}"));
    }
    // The row read back from its line, as an auditor has it.
    let row = AuditRow::parse(&row.to_line()).map_err(text)?;
    expect_verified(verify(&land, &worker, &row), &real, "the row as written")?;

    let forged = Outcome {
        exit: 0,
        output_digest: Digest::of(b"another object").to_hex(),
    };
    let mut tampered = row.clone();
    tampered.output_digest = forged.output_digest.clone();
    expect_mismatch(
        verify(&land, &worker, &tampered),
        &forged,
        &real,
        "a changed digest",
    )?;

    // A client flag changed: the re-run compiles something else.
    let mut tampered = row.clone();
    let optimisation = tampered
        .flags
        .iter()
        .position(|flag| flag == "-O2")
        .ok_or("the row records -O2")?;
    tampered.flags[optimisation] = "-O0".into();
    match verify(&land, &worker, &tampered) {
        Ok(Verdict::Mismatch {
            recorded, rerun, ..
        }) if recorded == real && rerun.exit == 0 && rerun != real => {}
        other => return Err(format!("-O2 changed to -O0: {other:?}")),
    }
    // An injected flag changed, a refused flag added, the image or the source changed: the
    // row is refused before anything runs, naming what is wrong.
    let mut tampered = row.clone();
    for flag in &mut tampered.flags {
        if flag.starts_with("-frandom-seed=") {
            *flag = "-frandom-seed=0".into();
        }
    }
    expect_error(
        verify(&land, &worker, &tampered),
        "field flags: the command does not start with the flags injected",
        "a changed random seed",
    )?;
    let mut tampered = row.clone();
    tampered
        .flags
        .insert(optimisation, "-fplugin=/tmp/x.so".into());
    expect_error(
        verify(&land, &worker, &tampered),
        "field flags: flag \"-fplugin",
        "a plugin",
    )?;
    let mut tampered = row.clone();
    tampered.image_digest = format!("sha256:{}", "3".repeat(64));
    expect_error(
        verify(&land, &worker, &tampered),
        "is not present on this worker",
        "an image",
    )?;
    let mut tampered = row.clone();
    tampered.source_digest = Digest::of(b"another source").to_hex();
    expect_error(
        verify(&land, &worker, &tampered),
        "field flags",
        "a source digest the injected seed does not match",
    )?;

    // The same compile again is a hit on that worker, audited as `cache`; its row re-runs too.
    land.fill(if worker == "w1" { "w2" } else { "w1" })?;
    let again = compile(&land, source, &["-O2", "-g"])?;
    let cached = row_of(&land, &again)?;
    if again.worker != worker || !again.cache_hit || cached.vm != "cache" {
        return Err(format!("expected a cache hit on {worker}: {cached:?}"));
    }
    expect_verified(verify(&land, &worker, &cached), &real, "a cache hit's row")?;

    // A failed compile: the exit code is what is verified.
    let broken = b"int broken(void) { return }\n".to_vec();
    let failed = compile(&land, broken, &["-O2"])?;
    if failed.exit_code == 0 {
        return Err("a syntax error compiled".into());
    }
    let row = row_of(&land, &failed)?;
    let recorded = Outcome {
        exit: failed.exit_code,
        output_digest: String::new(),
    };
    if row.exit != recorded.exit || !row.output_digest.is_empty() {
        return Err(format!("the failed compile's row: {row:?}"));
    }
    expect_verified(verify(&land, &worker, &row), &recorded, "a failed compile")?;
    let mut tampered = row.clone();
    tampered.exit = 0;
    tampered.output_digest = real.output_digest.clone();
    expect_mismatch(
        verify(&land, &worker, &tampered),
        &real,
        &recorded,
        "a failure recorded as a success",
    )?;
    Ok(())
}

fn evicted_sources_are_a_clear_error() -> TestResult {
    // One byte of budget: each worker keeps only its newest source.
    let land = Farmland::with_source_retention(1)?;
    let (_dir, sources) = project(1)?;
    let first = compile(
        &land,
        preprocess(&sources[0], &["-DN=1".to_owned()])?,
        &["-O1"],
    )?;
    let worker = first.worker.clone();
    land.fill(if worker == "w1" { "w2" } else { "w1" })?;
    let first_row = row_of(&land, &first)?;
    let second = compile(
        &land,
        preprocess(&sources[0], &["-DN=2".to_owned()])?,
        &["-O1"],
    )?;
    if second.worker != worker {
        return Err(format!(
            "both compiles should run on {worker}, not {}",
            second.worker
        ));
    }
    let second_row = row_of(&land, &second)?;
    expect_error(
        verify(&land, &worker, &first_row),
        &format!("source {} is no longer retained", first_row.source_digest),
        "the evicted source",
    )?;
    let object = succeeded(&second, "the second compile")?;
    let real = Outcome {
        exit: 0,
        output_digest: Digest::of(&object).to_hex(),
    };
    expect_verified(
        verify(&land, &worker, &second_row),
        &real,
        "the kept source",
    )
}

/// The `hpcc-worker` binary, built on first use (see [`crate::login::binaries`]).
fn worker_binary() -> Result<PathBuf, String> {
    Ok(crate::login::binaries()?.join("hpcc-worker"))
}

fn the_worker_binary_verifies_its_log() -> TestResult {
    let binary = worker_binary()?;
    let land = Farmland::new()?;
    let (_dir, sources) = project(1)?;
    let outcome = compile(
        &land,
        preprocess(&sources[0], &["-DN=5".to_owned()])?,
        &["-O2"],
    )?;
    let digest = Digest::of(&succeeded(&outcome, "remote compile")?).to_hex();
    let handle = land
        .workers
        .iter()
        .find(|handle| handle.id == outcome.worker)
        .ok_or("unknown worker")?;
    let config = handle.dir.join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "id = {id:?}\nlisten = \"127.0.0.1:0\"\ninsecure_plaintext = true\n\
             scheduler = \"http://127.0.0.1:1\"\nworker_secret_file = \"/nonexistent\"\n\
             routing_public_key = \"unused\"\nstate_dir = {dir:?}\nagent = {agent:?}\n\
             runtime = \"sandbox\"\n",
            id = handle.id,
            dir = handle.dir,
            agent = hpcc_runtime::testing::agent_binary()?,
        ),
    )
    .map_err(text)?;
    let run = |args: &[&str]| -> Result<Output, String> {
        Command::new(&binary)
            .arg("audit-verify")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .map_err(text)
    };
    let log = handle.dir.join("audit.tsv");
    let log_text = log.display().to_string();
    let output = run(&["--log", &log_text])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.code() != Some(0) || stdout != format!("{log_text}:1: verified: {digest}\n") {
        return Err(format!(
            "--log: {} {stdout:?} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let line = std::fs::read_to_string(&log).map_err(text)?;
    let mut row = AuditRow::parse(&line).map_err(text)?;
    let output = run(&[line.trim_end()])?;
    if output.status.code() != Some(0)
        || output.stdout != format!("verified: {digest}\n").as_bytes()
    {
        return Err(format!("one row: {} {:?}", output.status, output));
    }
    let forged = Digest::of(b"forged").to_hex();
    row.output_digest = forged.clone();
    let output = run(&[row.to_line().trim_end()])?;
    let expected = format!("MISMATCH: row says {forged}, re-run gave {digest}\n");
    if output.status.code() != Some(1) || output.stdout != expected.as_bytes() {
        return Err(format!("a forged row: {} {:?}", output.status, output));
    }
    Ok(())
}

/// The audit tests.
pub fn cases() -> Vec<Case> {
    const SANDBOX: &[Need] = &[Need::Sandbox];
    vec![
        (
            "audit::remote_compiles_verify_and_tampered_rows_do_not",
            SANDBOX,
            remote_compiles_verify_and_tampered_rows_do_not,
        ),
        (
            "audit::evicted_sources_are_a_clear_error",
            SANDBOX,
            evicted_sources_are_a_clear_error,
        ),
        (
            "audit::the_worker_binary_verifies_its_log",
            SANDBOX,
            the_worker_binary_verifies_its_log,
        ),
    ]
}
