//! The audit log: one TSV row per job, `(image_digest, source_digest, flags, output_digest,
//! tenant, worker, vm, duration_ms, exit)`, appended durably.
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
    /// The whole compile command after the compiler: injected flags, then the client's.
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
#[error("audit row: {0}")]
pub struct RowError(String);

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

fn unescape(field: &str) -> Result<String, RowError> {
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
            other => return Err(RowError(format!("bad escape \\{other:?}"))),
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
            return Err(RowError(format!("{} fields, not 9", fields.len())));
        };
        let flags = if flags.is_empty() {
            Vec::new()
        } else {
            flags.split(' ').map(unescape).collect::<Result<_, _>>()?
        };
        Ok(AuditRow {
            image_digest: unescape(image)?,
            source_digest: unescape(source)?,
            flags,
            output_digest: unescape(output)?,
            tenant: unescape(tenant)?,
            worker: unescape(worker)?,
            vm: unescape(vm)?,
            duration_ms: duration
                .parse()
                .map_err(|_| RowError(format!("duration {duration:?}")))?,
            exit: exit
                .parse()
                .map_err(|_| RowError(format!("exit {exit:?}")))?,
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
        assert!(AuditRow::parse("a\tb\tc").is_err(), "a torn row is refused");
        assert!(AuditRow::parse("a\tb\tc\td\te\tf\tg\tsoon\t0").is_err());
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
}
