//! Collecting what a compile wrote into a result entry, and writing a hit's files back exactly
//! as the compiler would have (atomically, with the caller's permissions), the dependency file
//! rendered for this invocation's targets and root ([`crate::deps`]).
//!
//! An entry that lacks a section this invocation needs (a dependency file, a `.dwo`, a `.gcno`),
//! or whose dependency section cannot serve it, is a miss, never a partial restore.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use hpcc_core::args::CompileInvocation;
use hpcc_core::entry::{ResultEntry, SectionKind};

use super::{Job, Prepared};
use crate::deps;

impl Job<'_> {
    /// Reads the files the compile wrote beside the object into `result`.
    pub(super) fn collect_outputs(
        &self,
        result: &mut ResultEntry,
        prepared: &Prepared,
    ) -> Result<()> {
        let invocation = self.invocation;
        let output = self.cwd.join(&invocation.output);
        // A farm's object as it came back (see `Job::remote_object`); a local one from disk.
        let object = match self.remote_object.borrow_mut().take() {
            Some(object) => object,
            None => fs::read(&output).with_context(|| format!("reading output {output:?}"))?,
        };
        result.set(SectionKind::Object, object);
        if let Some(dep) = &invocation.dep {
            let path = self.cwd.join(&dep.path);
            let text = fs::read(&path).with_context(|| format!("reading {path:?}"))?;
            let section = deps::store(
                &text,
                invocation,
                prepared.identity.is_clang,
                &prepared.rewriter,
            )?;
            result.set(SectionKind::DepFile, section);
        }
        if invocation.split_dwarf {
            let path = self.cwd.join(invocation.dwo_path());
            if let Ok(bytes) = fs::read(&path) {
                result.set(SectionKind::Dwo, bytes);
            }
        }
        if invocation.coverage {
            let path = self.cwd.join(invocation.gcno_path());
            result.set(
                SectionKind::Gcno,
                fs::read(&path).with_context(|| format!("reading {path:?}"))?,
            );
        }
        Ok(())
    }

    /// Writes a stored result's files and replays its output. Returns `false` (a miss) when the
    /// entry cannot serve this invocation, e.g. a raw dependency file for another target.
    pub(super) fn restore(&self, result: &ResultEntry, prepared: &Prepared) -> Result<bool> {
        let invocation = self.invocation;
        let Some(object) = result.get(SectionKind::Object) else {
            return Ok(false);
        };
        let dep_text = match &invocation.dep {
            Some(_) => {
                let Some(section) = result.get(SectionKind::DepFile) else {
                    return Ok(false);
                };
                match deps::restore(section, invocation, &prepared.rewriter)? {
                    Some(text) => Some(text),
                    None => return Ok(false),
                }
            }
            None => None,
        };
        if invocation.split_dwarf && result.get(SectionKind::Dwo).is_none() {
            return Ok(false);
        }
        if invocation.coverage && result.get(SectionKind::Gcno).is_none() {
            return Ok(false);
        }
        self.write_output(&self.cwd.join(&invocation.output), object)?;
        if let (Some(dep), Some(text)) = (&invocation.dep, dep_text) {
            self.write_output(&self.cwd.join(&dep.path), &text)?;
        }
        if let Some(dwo) = result.get(SectionKind::Dwo) {
            self.write_output(&self.cwd.join(invocation.dwo_path()), dwo)?;
        }
        if let Some(gcno) = result.get(SectionKind::Gcno) {
            self.write_output(&self.cwd.join(invocation.gcno_path()), gcno)?;
        }
        self.replay(result);
        Ok(true)
    }

    /// Writes `bytes` to `path` through a temporary sibling and a rename, so a reader never
    /// sees half an object, with the permissions the compiler would have given it.
    ///
    /// The old file is unlinked first. Renaming over an existing file makes ext4 (with its
    /// default `auto_da_alloc`) start writeback of the new file at once, which costs a rebuild
    /// far more than the moment in which no file exists; the compiler itself truncates in
    /// place, so no build can rely on the old file surviving a compile.
    pub(super) fn write_output(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let temp = temp_sibling(path, "tmp");
        let result = fs::write(&temp, bytes)
            .and_then(|()| self.caller.set_output_permissions(&temp))
            .and_then(|()| {
                match fs::remove_file(path) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(error)
                    }
                    _ => {}
                }
                fs::rename(&temp, path)
            });
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result.with_context(|| format!("writing {path:?}"))
    }

    /// Keeps what `result` printed for the caller.
    pub(super) fn replay(&self, result: &ResultEntry) {
        let mut printed = self.printed.borrow_mut();
        if let Some(stdout) = result.get(SectionKind::Stdout) {
            printed.stdout.extend_from_slice(stdout);
        }
        if let Some(stderr) = result.get(SectionKind::Stderr) {
            printed.stderr.extend_from_slice(stderr);
        }
    }
}

/// The first directory a compile of `invocation` would write into that does not exist (or is
/// not a directory), relative to `cwd`; `None` when every output has a home.
///
/// Such a compile cannot be served or stored: hpcc's temporaries live beside the outputs, so
/// it would fail on its own files (`opening dependency file .../.x.o.hpcc-...d`) where the
/// compiler fails on the output (`Fatal error: can't create nodir/x.o`). The wrapper runs the
/// compiler untouched instead, before asking the daemon or the cache, so the message and the
/// exit code are the compiler's in every mode, hit or miss. One `stat` per output directory,
/// almost always the same one.
pub fn missing_output_dir(invocation: &CompileInvocation, cwd: &Path) -> Option<PathBuf> {
    let mut outputs = vec![PathBuf::from(&invocation.output)];
    outputs.extend(invocation.dep.as_ref().map(|dep| PathBuf::from(&dep.path)));
    if invocation.split_dwarf {
        outputs.push(invocation.dwo_path());
    }
    if invocation.coverage {
        outputs.push(invocation.gcno_path());
    }
    let mut checked: Vec<PathBuf> = Vec::new();
    for output in outputs {
        let dir = match output.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => cwd.join(dir),
            _ => cwd.to_path_buf(),
        };
        if checked.contains(&dir) {
            continue;
        }
        if !dir.is_dir() {
            return Some(dir);
        }
        checked.push(dir);
    }
    None
}

/// A temporary path beside `path` (same directory, so same file system), unique per call.
pub(super) fn temp_sibling(path: &Path, extension: &str) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or(OsStr::new("out")));
    // Unique per process and per call: the daemon runs many jobs in one process.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let serial = NEXT.fetch_add(1, Ordering::Relaxed);
    name.push(format!(".hpcc-{}-{serial}.{extension}", std::process::id()));
    path.with_file_name(name)
}
