//! Who asked for a compile: the working directory, environment variables, file-creation mask
//! and terminal of the process that ran `hpcc`.
//!
//! A compile served in-process takes these from the process itself ([`Caller::current`]); one
//! served by the daemon takes them from the request, so that the daemon compiles exactly as the
//! caller would have: same variables (`PATH`, `LANG`, `CPATH`, `SOURCE_DATE_EPOCH`, ...), same
//! directory, same permissions on the files it writes, same colour decision.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The caller's side of a compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The working directory.
    pub cwd: PathBuf,
    /// Every environment variable, in the caller's order.
    pub vars: Vec<(OsString, OsString)>,
    /// The file-creation mask.
    pub umask: u32,
    /// Whether the caller's stderr is a terminal (decides `-fdiagnostics-color=auto`).
    pub stderr_is_terminal: bool,
}

impl Caller {
    /// This process as the caller.
    pub fn current() -> std::io::Result<Caller> {
        Ok(Caller {
            cwd: std::env::current_dir()?,
            vars: std::env::vars_os().collect(),
            umask: current_umask(),
            stderr_is_terminal: std::io::stderr().is_terminal(),
        })
    }

    /// The value of variable `name`, if set.
    pub fn var(&self, name: &str) -> Option<&OsStr> {
        self.vars
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_os_str())
    }

    /// A command for `program` that runs in the caller's directory with exactly the caller's
    /// variables. (The caller's file-creation mask is applied to the outputs afterwards, by
    /// [`Caller::set_output_permissions`].)
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .envs(self.vars.iter().map(|(key, value)| (key, value)))
            .current_dir(&self.cwd);
        command
    }

    /// Gives a file made for the caller (restored from the cache, or written by a compiler that
    /// ran under another mask) the permissions the caller's mask implies for a new regular
    /// file, as the compiler would have created it. Nothing to do when the masks agree.
    pub fn set_output_permissions(&self, path: &Path) -> std::io::Result<()> {
        if self.umask == current_umask() {
            return Ok(());
        }
        fs::set_permissions(
            path,
            fs::Permissions::from_mode(0o666 & !self.umask & 0o777),
        )
    }
}

/// This process's file-creation mask, from `/proc/self/status` (reading it with `umask(2)`
/// would mean changing it, racing with other threads); `0o022` where that is unavailable.
pub fn current_umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        // "Umask:" is on the second line: one read of a small buffer finds it (the file's
        // size is unknown to `stat`, so reading it whole would take many small reads).
        use std::io::Read;
        let mut buffer = [0u8; 512];
        fs::File::open("/proc/self/status")
            .and_then(|mut file| file.read(&mut buffer))
            .ok()
            .and_then(|read| parse_umask(&String::from_utf8_lossy(&buffer[..read])))
            .unwrap_or(0o022)
    })
}

fn parse_umask(status: &str) -> Option<u32> {
    let line = status.lines().find(|line| line.starts_with("Umask:"))?;
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_and_directory_are_the_callers() {
        let caller = Caller {
            cwd: std::env::temp_dir(),
            vars: vec![
                (OsString::from("HPCC_CALLER_TEST"), OsString::from("first")),
                (OsString::from("PATH"), OsString::from("/usr/bin:/bin")),
                (OsString::from("HPCC_CALLER_TEST"), OsString::from("second")),
            ],
            umask: current_umask(),
            stderr_is_terminal: false,
        };
        assert_eq!(caller.var("HPCC_CALLER_TEST"), Some(OsStr::new("second")));
        assert_eq!(caller.var("HOME"), None);
        let output = caller
            .command(Path::new("/bin/sh"))
            .args(["-c", "echo \"$HPCC_CALLER_TEST:${HOME:-unset}:$(pwd -P)\""])
            .output()
            .expect("running sh");
        let expected = format!(
            "second:unset:{}\n",
            fs::canonicalize(std::env::temp_dir())
                .expect("canonical temp dir")
                .display()
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    }

    #[test]
    fn umask_is_read_from_proc_status() {
        assert_eq!(
            parse_umask("Name:\thpcc\nUmask:\t0027\nState:\tR\n"),
            Some(0o027)
        );
        assert_eq!(parse_umask("Name:\thpcc\n"), None);
        assert_eq!(parse_umask("Umask:\tzz\n"), None);
    }

    #[test]
    fn restored_files_follow_the_callers_mask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let umask = if current_umask() == 0o077 {
            0o022
        } else {
            0o077
        };
        let caller = Caller {
            cwd: dir.path().to_path_buf(),
            vars: Vec::new(),
            umask,
            stderr_is_terminal: false,
        };
        let file = dir.path().join("restored.o");
        fs::write(&file, b"x").expect("write");
        caller.set_output_permissions(&file).expect("chmod");
        let mode = fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask);
    }
}
