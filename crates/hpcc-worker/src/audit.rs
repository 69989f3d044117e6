//! The audit log: one TSV row per job, appended durably.
//!
//! # Format
//!
//! One line per job, nine tab-separated columns, no header line:
//!
//! ```text
//! image_digest  source_digest  flags  output_digest  tenant  worker  vm  duration_ms  exit
//! ```
//!
//! - `image_digest`: the toolchain image, `sha256:<64 hex>`;
//! - `source_digest`: BLAKE3 of the preprocessed source, 64 hex; the source itself is kept
//!   under `<state_dir>/sources/<source_digest>.zst` for a while ([`crate::sources`]);
//! - `flags`: the whole command the session ran, as [`crate::policy::job_argv`] builds it:
//!   `<driver> <injected flags> <client flags> -x <language> -c in.i -o out.o`, each word
//!   escaped and the words separated by single spaces;
//! - `output_digest`: BLAKE3 of the object, 64 hex, or empty when there was none;
//! - `tenant`, `worker`, `vm` (the session, prefixed with the runtime that ran it, so any
//!   single row tells its boundary: `qemu-…`, `firecracker-…`, `sandbox-…`; `cache` for a
//!   hit), `duration_ms`, `exit` (the compiler's exit code; -1 for a signal or a timeout).
//!
//! Together the image, the source and the command are everything a job's object depends on,
//! so a row can be re-run and its output digest checked ([`crate::verify`]). Rows written
//! before the command was recorded whole have only `<injected flags> <client flags>` in
//! `flags` (no driver, no language); they still parse, but cannot be re-run. Extra outputs
//! (a `.dwo`) are not audited.
//!
//! A row is formatted whole and written with one `write` to a file opened `O_APPEND`, then
//! `fdatasync`ed before the job's result is returned: rows from concurrent jobs never
//! interleave, and a crash loses at most the row being written, never leaves half of one
//! followed by another (a torn last line is recognisable: it has fewer than nine fields, and
//! [`AuditRow::parse`] refuses it). Fields are escaped (`\t`, `\n`, `\\`) so that flags with
//! tabs or newlines cannot forge columns or rows.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One job, as audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// The toolchain image.
    pub image_digest: String,
    /// BLAKE3 of the source, hex.
    pub source_digest: String,
    /// The whole command the session ran: the driver, the injected flags, the client's, then
    /// `-x <language> -c in.i -o out.o` ([`crate::policy::job_argv`]).
    pub flags: Vec<String>,
    /// BLAKE3 of the object, hex; empty when the compile failed.
    pub output_digest: String,
    /// The tenant.
    pub tenant: String,
    /// This worker.
    pub worker: String,
    /// The session that ran it (`cache` for a cache hit).
    pub vm: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Exit code.
    pub exit: i32,
}

/// Why a row could not be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RowError {
    /// The line does not have nine columns.
    #[error("audit row: {0} tab-separated fields, not 9 (a torn or truncated line?)")]
    Columns(usize),
    /// One column is malformed.
    #[error("audit row: field {field}: {message}")]
    Field {
        /// The column's name (`image_digest`, `flags`, ...).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl RowError {
    /// A malformed `field`.
    pub fn field(field: &'static str, message: impl Into<String>) -> RowError {
        RowError::Field {
            field,
            message: message.into(),
        }
    }
}

fn escape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    for c in field.chars() {
        match c {
            ' ' => out.push_str("\\s"),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(name: &'static str, field: &str) -> Result<String, RowError> {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('s') => out.push(' '),
            Some(other) => return Err(RowError::field(name, format!("bad escape \\{other}"))),
            None => return Err(RowError::field(name, "a lone \\ at the end")),
        }
    }
    Ok(out)
}

impl AuditRow {
    /// The row as one line, newline included. Flags are separated by spaces, each escaped
    /// (a space inside a field is written `\s`).
    pub fn to_line(&self) -> String {
        let flags: Vec<String> = self.flags.iter().map(|flag| escape(flag)).collect();
        let fields = [
            escape(&self.image_digest),
            escape(&self.source_digest),
            flags.join(" "),
            escape(&self.output_digest),
            escape(&self.tenant),
            escape(&self.worker),
            escape(&self.vm),
            self.duration_ms.to_string(),
            self.exit.to_string(),
        ];
        let mut line = fields.join("\t");
        line.push('\n');
        line
    }

    /// Reads a row back from its line (with or without the newline).
    pub fn parse(line: &str) -> Result<AuditRow, RowError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let fields: Vec<&str> = line.split('\t').collect();
        let [image, source, flags, output, tenant, worker, vm, duration, exit] = fields[..] else {
            return Err(RowError::Columns(fields.len()));
        };
        let flags = if flags.is_empty() {
            Vec::new()
        } else {
            flags
                .split(' ')
                .map(|word| unescape("flags", word))
                .collect::<Result<_, _>>()?
        };
        Ok(AuditRow {
            image_digest: unescape("image_digest", image)?,
            source_digest: unescape("source_digest", source)?,
            flags,
            output_digest: unescape("output_digest", output)?,
            tenant: unescape("tenant", tenant)?,
            worker: unescape("worker", worker)?,
            vm: unescape("vm", vm)?,
            duration_ms: duration.parse().map_err(|_| {
                RowError::field("duration_ms", format!("{duration:?} is not a count"))
            })?,
            exit: exit
                .parse()
                .map_err(|_| RowError::field("exit", format!("{exit:?} is not an exit code")))?,
        })
    }
}

/// The append-only log file.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log at `path`.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        Ok(AuditLog {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `row` and waits until it is on disk.
    pub fn append(&self, row: &AuditRow) -> std::io::Result<()> {
        let line = row.to_line();
        let file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // One write of the whole line: O_APPEND makes it land after every earlier row.
        (&*file).write_all(line.as_bytes())?;
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(flags: &[&str]) -> AuditRow {
        AuditRow {
            image_digest: "sha256:ab".into(),
            source_digest: "cd".into(),
            flags: flags.iter().map(|flag| (*flag).to_owned()).collect(),
            output_digest: "ef".into(),
            tenant: "a\tb".into(),
            worker: "w1".into(),
            vm: "sandbox-1".into(),
            duration_ms: 12,
            exit: 0,
        }
    }

    #[test]
    fn rows_round_trip_whatever_the_flags_hold() {
        for flags in [
            &[][..],
            &["-O2", "-DX=1"][..],
            &[
                "-DMSG=\"a b\"",
                "-D\tTAB",
                "-D\nNEWLINE",
                "-D\\s",
                "back\\slash",
            ][..],
        ] {
            let original = row(flags);
            let line = original.to_line();
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert_eq!(line.matches('\t').count(), 8, "{line:?}");
            assert_eq!(AuditRow::parse(&line), Ok(original));
        }
        assert_eq!(
            AuditRow::parse("a\tb\tc"),
            Err(RowError::Columns(3)),
            "a torn row is refused"
        );
        let named = |line: &str, name: &str| match AuditRow::parse(line) {
            Err(RowError::Field { field, .. }) => assert_eq!(field, name, "{line:?}"),
            other => panic!("{line:?}: {other:?}"),
        };
        named("a\tb\tc\td\te\tf\tg\tsoon\t0", "duration_ms");
        named("a\tb\tc\td\te\tf\tg\t1\tzero", "exit");
        named("a\\q\tb\tc\td\te\tf\tg\t1\t0", "image_digest");
        named("a\tb\t-O2 -D\\\td\te\tf\tg\t1\t0", "flags");
    }

    #[test]
    fn concurrent_appends_give_whole_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::sync::Arc::new(AuditLog::open(&dir.path().join("audit.tsv")).expect("open"));
        let threads: Vec<_> = (0..8)
            .map(|thread| {
                let log = std::sync::Arc::clone(&log);
                std::thread::spawn(move || {
                    for index in 0..25 {
                        let flag = format!("-DT{thread}_{index}={}", "x".repeat(500));
                        log.append(&row(&[&flag])).expect("append");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        let text = std::fs::read_to_string(log.path()).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 200);
        for line in lines {
            AuditRow::parse(line).expect("every line is a whole row");
        }
    }

    proptest::proptest! {
        /// Any row, whatever its fields hold (tabs, newlines, backslashes, spaces), reads back
        /// as written; the one exception, a command of a single empty word, cannot be a job's
        /// (`policy::job_argv` always names the driver and the files).
        #[test]
        fn rows_round_trip(
            fields in proptest::collection::vec("(?s).*", 6),
            flags in proptest::collection::vec("(?s).*", 0..6),
            duration_ms in proptest::prelude::any::<u64>(),
            exit in proptest::prelude::any::<i32>(),
        ) {
            proptest::prop_assume!(flags != [String::new()]);
            let row = AuditRow {
                image_digest: fields[0].clone(),
                source_digest: fields[1].clone(),
                flags,
                output_digest: fields[2].clone(),
                tenant: fields[3].clone(),
                worker: fields[4].clone(),
                vm: fields[5].clone(),
                duration_ms,
                exit,
            };
            let line = row.to_line();
            proptest::prop_assert_eq!(line.matches('\n').count(), 1, "one line: {:?}", line);
            proptest::prop_assert_eq!(AuditRow::parse(&line).expect("parses"), row);
        }

        /// Whatever a log holds, reading it is an answer, never a panic.
        #[test]
        fn any_line_parses_or_is_refused(line in "(?s).*") {
            let _ = AuditRow::parse(&line);
        }
    }
}
