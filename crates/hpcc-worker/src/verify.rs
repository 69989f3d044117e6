//! Re-running an audited job: [`Verifier::verify`] reads a row's image, its retained source
//! ([`crate::sources`]) and its recorded command, runs that command in a fresh session of the
//! runtime (never a warm one, never the cache), and compares the BLAKE3 digest of the object
//! (the row's digest function) and the exit code with the row's.
//!
//! Before anything runs the row is checked the way a request is: the command must be one a
//! worker would run ([`JobCommand::parse`]: a known driver and language, exactly the injected
//! flags of this worker's policy for the row's source, client flags that pass
//! [`crate::policy::check_flags`]). A row tampered with is therefore either refused, naming the
//! field, or re-run and reported as a mismatch; it never runs something a worker would not.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use hpcc_core::config::is_image_digest;
use hpcc_core::digest::Digest;
use hpcc_runtime::{Limits, Runtime, RuntimeError, SessionSpec};

use crate::audit::{AuditRow, RowError};
use crate::policy::{CommandError, JobCommand};
use crate::sources::SourceError;
use crate::{execute, Rootfs, WorkerError};

/// What a job came to, as a row records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The exit code (-1 for a signal or a timeout).
    pub exit: i32,
    /// BLAKE3 of the object, hex; empty when there was none.
    pub output_digest: String,
}

impl fmt::Display for Outcome {
    /// The digest for a success, `exit N` otherwise (with the digest, if there was an object).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.exit, self.output_digest.as_str()) {
            (0, "") => f.write_str("no object (exit 0)"),
            (0, digest) => f.write_str(digest),
            (exit, "") => write!(f, "exit {exit} (no object)"),
            (exit, digest) => write!(f, "exit {exit} ({digest})"),
        }
    }
}

/// The answer about one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The re-run came to what the row says.
    Verified(Outcome),
    /// It did not.
    Mismatch {
        /// What the row says.
        recorded: Outcome,
        /// What the re-run gave.
        rerun: Outcome,
        /// The re-run compiler's stderr, for the operator.
        stderr: Vec<u8>,
    },
}

impl fmt::Display for Verdict {
    /// `verified: <digest>` or `MISMATCH: row says X, re-run gave Y`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Verified(outcome) => write!(f, "verified: {outcome}"),
            Verdict::Mismatch {
                recorded, rerun, ..
            } => write!(f, "MISMATCH: row says {recorded}, re-run gave {rerun}"),
        }
    }
}

/// Why a row could not be verified (which says nothing about whether it is true).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A malformed row.
    #[error(transparent)]
    Row(#[from] RowError),
    /// The row's command is not one a worker would run.
    #[error("audit row: field flags: {0}")]
    Command(#[source] CommandError),
    /// The source is gone, or could not be read back whole.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The image is not on this worker.
    #[error("image {0} is not present on this worker: {1}")]
    NoImage(String, String),
    /// The agent refused the job.
    #[error("the agent refused the re-run: {0}")]
    Refused(String),
    /// The runtime failed to start or run the session.
    #[error("re-running the job: {0}")]
    Runtime(#[from] RuntimeError),
}

impl From<WorkerError> for VerifyError {
    fn from(error: WorkerError) -> VerifyError {
        match error {
            WorkerError::Runtime(error) => VerifyError::Runtime(error),
            other => VerifyError::Refused(other.to_string()),
        }
    }
}

/// A job as a row describes it, checked and ready to re-run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rerun {
    /// The image digest.
    pub image: String,
    /// The source's digest.
    pub source_digest: Digest,
    /// The command.
    pub command: JobCommand,
    /// The tenant the session runs for.
    pub tenant: String,
    /// What the row says it came to.
    pub recorded: Outcome,
}

impl Rerun {
    /// Reads `row` as a job, checking every field a re-run depends on (errors name the field).
    pub fn from_row(row: &AuditRow) -> Result<Rerun, VerifyError> {
        if !is_image_digest(&row.image_digest) {
            return Err(RowError::field(
                "image_digest",
                format!("{:?} is not sha256:<64 hex>", row.image_digest),
            )
            .into());
        }
        let source_digest = parse_digest("source_digest", &row.source_digest)?;
        if !row.output_digest.is_empty() {
            parse_digest("output_digest", &row.output_digest)?;
        }
        let command =
            JobCommand::parse(&row.flags, &source_digest).map_err(VerifyError::Command)?;
        Ok(Rerun {
            image: row.image_digest.clone(),
            source_digest,
            command,
            tenant: row.tenant.clone(),
            recorded: Outcome {
                exit: row.exit,
                output_digest: row.output_digest.clone(),
            },
        })
    }
}

fn parse_digest(field: &'static str, text: &str) -> Result<Digest, RowError> {
    if text.len() != 64 || text.bytes().any(|byte| byte.is_ascii_uppercase()) {
        return Err(RowError::field(
            field,
            format!("{text:?} is not 64 lowercase hex digits"),
        ));
    }
    text.parse()
        .map_err(|_| RowError::field(field, format!("{text:?} is not 64 lowercase hex digits")))
}

/// Re-runs audited jobs.
pub struct Verifier {
    runtime: Arc<dyn Runtime>,
    images: Arc<dyn Rootfs>,
    sources_dir: PathBuf,
    limits: Limits,
    source_date_epoch: u64,
}

impl Verifier {
    /// A verifier starting sessions with `runtime` on `images`, reading sources from the store
    /// at `sources_dir`; `limits` and `source_date_epoch` must be the worker's.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        images: Arc<dyn Rootfs>,
        sources_dir: PathBuf,
        limits: Limits,
        source_date_epoch: u64,
    ) -> Verifier {
        Verifier {
            runtime,
            images,
            sources_dir,
            limits,
            source_date_epoch,
        }
    }

    /// Re-runs `row`'s job in a fresh session and compares the outcome with the row's.
    #[tracing::instrument(skip_all, fields(source = %row.source_digest))]
    pub async fn verify(&self, row: &AuditRow) -> Result<Verdict, VerifyError> {
        let rerun = Rerun::from_row(row)?;
        // Reading, decompressing and hashing the source, and flattening an image on first
        // use, are file work: off the async threads.
        let sources_dir = self.sources_dir.clone();
        let digest = rerun.source_digest;
        let tenant = rerun.tenant.clone();
        let source = tokio::task::spawn_blocking(move || {
            crate::sources::read(&sources_dir, &tenant, &digest)
        })
        .await
        .map_err(|error| VerifyError::Refused(format!("reading the source: {error}")))??;
        let rootfs = crate::rootfs_off_thread(&self.images, &rerun.image)
            .await
            .map_err(|reason| VerifyError::NoImage(rerun.image.clone(), reason))?;
        let spec = SessionSpec {
            tenant: rerun.tenant.clone(),
            image_digest: rerun.image.clone(),
            rootfs,
            limits: self.limits,
            source_date_epoch: self.source_date_epoch,
        };
        let session = self.runtime.start(&spec).await?;
        let ran = async {
            let stream = session.connect().await?;
            execute(
                stream,
                session.id(),
                format!("verify-{}", rerun.source_digest.to_hex()),
                rerun.command.argv(),
                source,
                &[],
                &self.limits,
            )
            .await
        }
        .await;
        if let Err(error) = session.stop().await {
            tracing::warn!(%error, "stopping the verify session");
        }
        let ran = ran?;
        let outcome = Outcome {
            exit: ran.exit_code,
            output_digest: ran
                .object
                .as_deref()
                .map(|object| Digest::of(object).to_hex())
                .unwrap_or_default(),
        };
        Ok(if outcome == rerun.recorded {
            Verdict::Verified(outcome)
        } else {
            Verdict::Mismatch {
                recorded: rerun.recorded,
                rerun: outcome,
                stderr: ran.stderr,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{injected_flags, job_argv};

    fn row() -> AuditRow {
        let source_digest = Digest::of(b"int x;\n");
        AuditRow {
            image_digest: format!("sha256:{}", "a".repeat(64)),
            source_digest: source_digest.to_hex(),
            flags: job_argv(
                "gcc",
                "cpp-output",
                &injected_flags(&source_digest),
                &["-O2".to_owned()],
            ),
            output_digest: Digest::of(b"object").to_hex(),
            tenant: "a".into(),
            worker: "w1".into(),
            vm: "cache".into(),
            duration_ms: 3,
            exit: 0,
        }
    }

    fn check(change: impl FnOnce(&mut AuditRow), needle: &str) {
        let mut changed = row();
        change(&mut changed);
        match Rerun::from_row(&changed) {
            Ok(rerun) => assert!(needle.is_empty(), "{needle}: accepted {rerun:?}"),
            Err(error) => {
                let text = error.to_string();
                assert!(!needle.is_empty(), "refused: {text}");
                assert!(text.contains(needle), "{needle}: {text}");
            }
        }
    }

    #[test]
    fn rows_are_checked_field_by_field_before_a_rerun() {
        check(|_| {}, "");
        check(|row| row.output_digest.clear(), "");
        check(
            |row| row.image_digest = "ubuntu:latest".into(),
            "field image_digest",
        );
        check(
            |row| row.source_digest = "xyz".into(),
            "field source_digest",
        );
        check(
            |row| row.source_digest = row.source_digest.to_uppercase(),
            "field source_digest",
        );
        check(|row| row.output_digest = "12".into(), "field output_digest");
        check(|row| row.flags[0] = "bash".into(), "field flags: driver");
        check(
            |row| {
                row.flags.remove(0);
            },
            "field flags: the command starts with",
        );
        check(
            |row| row.flags.insert(5, "-fplugin=/x.so".into()),
            "field flags: flag \"-fplugin=/x.so\"",
        );
        // A changed source digest no longer matches the recorded random seed.
        check(
            |row| row.source_digest = Digest::of(b"other").to_hex(),
            "field flags: the command does not start with the flags injected",
        );
    }

    #[test]
    fn verdicts_read_as_the_command_prints_them() {
        let success = Outcome {
            exit: 0,
            output_digest: "ab".into(),
        };
        let failure = Outcome {
            exit: 1,
            output_digest: String::new(),
        };
        assert_eq!(
            Verdict::Verified(success.clone()).to_string(),
            "verified: ab"
        );
        assert_eq!(
            Verdict::Verified(failure.clone()).to_string(),
            "verified: exit 1 (no object)"
        );
        let mismatch = Verdict::Mismatch {
            recorded: success,
            rerun: failure,
            stderr: Vec::new(),
        };
        assert_eq!(
            mismatch.to_string(),
            "MISMATCH: row says ab, re-run gave exit 1 (no object)"
        );
    }
}
