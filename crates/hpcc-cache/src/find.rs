//! Finding the real compiler: by path, or by name on `PATH` while skipping hpcc itself.
//!
//! In masquerade mode a directory of symlinks named `gcc`, `cc`, ... pointing at `hpcc` sits
//! early on `PATH`. Looking the name up naively would find the symlink again and recurse, so
//! every candidate that resolves to this executable is skipped.

use std::env;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Resolves `program` to the real compiler's path.
pub fn real_compiler(program: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf> {
    let own = env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok());
    let is_self = |candidate: &Path| match (&own, candidate.canonicalize()) {
        (Some(own), Ok(resolved)) => &resolved == own,
        _ => false,
    };
    let as_path = Path::new(program);
    if as_path.components().count() > 1 || program.as_encoded_bytes().contains(&b'/') {
        if is_self(as_path) {
            bail!(
                "compiler {:?} is hpcc itself; name the real compiler",
                as_path
            );
        }
        return Ok(as_path.to_path_buf());
    }
    let search = path_var
        .map(OsString::from)
        .or_else(|| env::var_os("PATH"))
        .context("PATH is not set")?;
    for dir in env::split_paths(&search) {
        let candidate = dir.join(program);
        if is_executable(&candidate) && !is_self(&candidate) {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find compiler {:?} on PATH (hpcc's own links skipped)",
        program
    )
}

/// Another hpcc executable, `name`: beside this one (as installed and as cargo builds them),
/// else on `PATH`.
pub fn companion_binary(name: &str) -> Result<PathBuf> {
    if let Some(beside) = env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|path| path.is_file())
    {
        return Ok(beside);
    }
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| is_executable(path))
        .with_context(|| format!("{name} is neither beside hpcc nor on PATH"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
