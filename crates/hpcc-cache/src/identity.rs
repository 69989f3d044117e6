//! Compiler identity: what makes two compilers produce the same output.
//!
//! Identity = BLAKE3 of the driver binary, of the compiler proper (`cc1`, `cc1plus` for GCC;
//! Clang has none) and of `--version` output. Computing it reads tens of megabytes, so it is
//! cached in `<cache_dir>/compilers/` under the driver's resolved path, validated on every use by
//! `stat`-ing each binary: any change of device, inode, size, mtime or ctime recomputes it.
//! Also cached there, per identity and flag set, is the compiler's system include search list.
//!
//! Both records start with their format (`hpcc-identity-1`, `hpcc-dirs-1`), changed with their
//! layout: a record of another format is computed afresh, never misread. The `compilers/`
//! directory lives beside the store, outside its size accounting and untouched by `hpcc clean`.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use hpcc_core::digest::{Digest, KeyHasher};

use crate::cache::{RunWith, Runner};
use crate::caller::Caller;

/// A compiler's identity and the facts learned alongside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The digest that goes into every key.
    pub digest: Digest,
    /// Whether `--version` says Clang (decides dependency-file layout and colour flags).
    pub is_clang: bool,
}

const FORMAT: &str = "hpcc-identity-1";

/// Returns the identity of `compiler`, from the cache when every binary is unchanged.
pub fn identity(runner: &dyn Runner, compiler: &Path, cache_dir: &Path) -> Result<Identity> {
    // The record is named after the resolved driver, not the path as given: a symlink that is
    // re-pointed (update-alternatives) or a relative path used from another directory must
    // not find the record of the binary it named before.
    let resolved = fs::canonicalize(compiler).with_context(|| format!("resolving {compiler:?}"))?;
    let record = record_path(cache_dir, &resolved);
    if let Some(identity) = read_valid(&record) {
        return Ok(identity);
    }
    let (identity, files) = compute(runner, compiler)?;
    let mut text = format!(
        "{FORMAT}\n{}\n{}\n",
        identity.digest,
        u8::from(identity.is_clang)
    );
    for file in &files {
        let meta = fs::metadata(file).with_context(|| format!("stat {file:?}"))?;
        text.push_str(&stamp_line(&meta, file));
    }
    // Best effort: a read-only cache only means recomputing next time.
    let _ = write_atomic(&record, text.as_bytes());
    Ok(identity)
}

fn record_path(cache_dir: &Path, compiler: &Path) -> PathBuf {
    let name = Digest::of(compiler.as_os_str().as_encoded_bytes()).to_hex();
    cache_dir.join("compilers").join(&name[..32])
}

fn stamp_line(meta: &fs::Metadata, file: &Path) -> String {
    format!(
        "{} {} {} {} {} {} {} {}\n",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
        file.display()
    )
}

fn read_valid(record: &Path) -> Option<Identity> {
    let text = fs::read_to_string(record).ok()?;
    let mut lines = text.lines();
    if lines.next()? != FORMAT {
        return None;
    }
    let digest: Digest = lines.next()?.parse().ok()?;
    let is_clang = lines.next()? == "1";
    let mut files = 0;
    for line in lines {
        let mut fields = line.splitn(8, ' ');
        let numbers: Vec<&str> = fields.by_ref().take(7).collect();
        let path = fields.next()?;
        let meta = fs::metadata(path).ok()?;
        if stamp_line(&meta, Path::new(path)) != format!("{}\n", line) || numbers.len() != 7 {
            return None;
        }
        files += 1;
    }
    (files > 0).then_some(Identity { digest, is_clang })
}

/// A command for the compiler in a fixed environment: the identity must not depend on who asked
/// first (a language setting would change `--version`; the daemon and a wrapper must agree).
/// Variables that do change what the compiler runs (`GCC_EXEC_PREFIX`, `COMPILER_PATH`) are part
/// of every key instead.
fn neutral_command(compiler: &Path) -> Command {
    let mut command = Command::new(compiler);
    command
        .env_clear()
        .env("LC_ALL", "C")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    command
}

fn compute(runner: &dyn Runner, compiler: &Path) -> Result<(Identity, Vec<PathBuf>)> {
    let version = neutral_command(compiler)
        .arg("--version")
        .stdin(Stdio::null())
        .run_with(runner)
        .with_context(|| format!("running {compiler:?} --version"))?;
    if !version.status.success() {
        bail!("{compiler:?} --version failed: {}", version.status);
    }
    let version_text = String::from_utf8_lossy(&version.stdout);
    let is_clang = version_text.contains("clang version");
    let driver = fs::canonicalize(compiler).with_context(|| format!("resolving {compiler:?}"))?;
    let mut files = vec![driver];
    if !is_clang {
        // GCC's driver runs cc1/cc1plus; their content matters as much as the driver's.
        for program in ["cc1", "cc1plus"] {
            let found = neutral_command(compiler)
                .arg(format!("-print-prog-name={program}"))
                .stdin(Stdio::null())
                .run_with(runner)
                .with_context(|| format!("asking {compiler:?} where {program} is"))?;
            let path = PathBuf::from(String::from_utf8_lossy(&found.stdout).trim());
            if path.is_absolute() && path.is_file() {
                files.push(path);
            }
        }
    }
    let mut hasher = KeyHasher::new();
    hasher.field("version", &version.stdout);
    hasher.field("version-stderr", &version.stderr);
    for file in &files {
        let mut file_hasher = blake3::Hasher::new();
        file_hasher
            .update_mmap(file)
            .with_context(|| format!("hashing {file:?}"))?;
        hasher.field("binary", file_hasher.finalize().as_bytes());
    }
    Ok((
        Identity {
            digest: hasher.finish(),
            is_clang,
        },
        files,
    ))
}

/// The compiler's own include directories (`#include <...>` and `"..."` chains it reports under
/// `-v`), for the given language and the options that can change them. Cached under `key`.
pub fn system_include_dirs(
    runner: &dyn Runner,
    caller: &Caller,
    compiler: &Path,
    cache_dir: &Path,
    key: &Digest,
    words: &[OsString],
    language: &str,
) -> Result<Vec<PathBuf>> {
    let record = cache_dir
        .join("compilers")
        .join(format!("dirs-{}", &key.to_hex()[..32]));
    if let Ok(text) = fs::read_to_string(&record) {
        if let Some(body) = text.strip_prefix("hpcc-dirs-1\n") {
            return Ok(body.lines().map(PathBuf::from).collect());
        }
    }
    let output = caller
        .command(compiler)
        .args(words)
        .args(["-x", language, "-E", "-v", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .run_with(runner)
        .with_context(|| format!("asking {compiler:?} for its include search list"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut dirs = Vec::new();
    let mut inside = false;
    for line in stderr.lines() {
        if line.starts_with("#include ") && line.ends_with("search starts here:") {
            inside = true;
        } else if line.starts_with("End of search list.") {
            inside = false;
        } else if inside {
            let dir = line.trim().trim_end_matches(" (framework directory)");
            if !dir.is_empty() {
                dirs.push(PathBuf::from(dir));
            }
        }
    }
    if dirs.is_empty() {
        bail!("{compiler:?} -v printed no include search list");
    }
    let mut text = String::from("hpcc-dirs-1\n");
    for dir in &dirs {
        text.push_str(&dir.to_string_lossy());
        text.push('\n');
    }
    let _ = write_atomic(&record, text.as_bytes());
    Ok(dirs)
}

/// Writes `bytes` to `path` through a temporary file and a rename, creating the parent.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let temp = parent.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(bytes)?;
        drop(file);
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}
