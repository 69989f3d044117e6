//! The shared libraries a dynamically linked VMM needs inside its jail.
//!
//! QEMU is dynamically linked (about fifty libraries on Debian, and its TCG module more). The jail holds exactly what the dynamic loader will open: `ldd`'s list,
//! each at the path it printed (and so the path the loader searches without an
//! `ld.so.cache`, which the jail does not have: the multiarch directories are among glibc's
//! built-in ones), plus the loader itself. `ldd` runs the loader in tracing mode on a binary the
//! operator configured; a statically linked binary (Firecracker's release builds) needs
//! nothing. Answers are kept per binary (path, size and modification time), so a session start
//! does not run `ldd` again.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A binary as it is on disk now: a replaced binary is looked at afresh.
type BinaryKey = (PathBuf, u64, i64, i64);

static KNOWN: Mutex<BTreeMap<BinaryKey, Vec<PathBuf>>> = Mutex::new(BTreeMap::new());

/// The libraries `binary` loads, and its ELF interpreter, as absolute host paths.
pub fn needed(binary: &Path) -> io::Result<Vec<PathBuf>> {
    let metadata = std::fs::metadata(binary)
        .map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", binary.display())))?;
    let key = (
        binary.to_owned(),
        metadata.len(),
        metadata.mtime(),
        metadata.mtime_nsec(),
    );
    if let Some(known) = KNOWN.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(known.clone());
    }
    let libraries = run_ldd(binary)?;
    KNOWN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, libraries.clone());
    Ok(libraries)
}

fn run_ldd(binary: &Path) -> io::Result<Vec<PathBuf>> {
    let output = std::process::Command::new("ldd")
        .arg(binary)
        .env("LC_ALL", "C")
        .output()
        .map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("running ldd on {}: {error}", binary.display()),
            )
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // ldd fails on static binaries, which is what we want to know.
        if text.contains("not a dynamic executable") || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(io::Error::other(format!(
            "ldd {} failed: {}",
            binary.display(),
            stderr.trim()
        )));
    }
    parse(&text).map_err(|line| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: a library is missing: {line}", binary.display()),
        )
    })
}

/// Parses `ldd` output: `name => /path (0x...)`, `/path (0x...)` for the loader, and lines
/// without a path (the vDSO, `statically linked`), which need no file. A library that is
/// `not found` is an error carrying its line.
pub fn parse(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if line.contains("not found") {
            return Err(line.to_owned());
        }
        let after_arrow = line
            .split_once("=>")
            .map_or(line, |(_, right)| right)
            .trim();
        let path = after_arrow
            .split_once(" (")
            .map_or(after_arrow, |(path, _)| path)
            .trim();
        if path.starts_with('/') {
            let path = PathBuf::from(path);
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd3b5f2000)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1d6d358000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1d6ce1e000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f1d6d38c000)\n";
        assert_eq!(
            parse(text),
            Ok(vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ])
        );
        assert_eq!(parse("\tstatically linked\n"), Ok(Vec::new()));
        assert_eq!(
            parse("\tlibfoo.so.1 => not found\n"),
            Err("libfoo.so.1 => not found".to_owned())
        );
    }

    #[test]
    fn this_test_binary_needs_libc_and_the_loader() {
        let exe = std::env::current_exe().expect("current exe");
        let libs = needed(&exe).expect("ldd runs");
        assert!(
            libs.iter()
                .any(|path| path.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(libs.iter().all(|path| path.is_absolute() && path.exists()));
    }
}
