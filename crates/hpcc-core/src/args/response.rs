//! `@file` response-file expansion. Placeholder until the quoting rules land.

use std::ffi::OsString;

/// Which quoting rules a response file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quoting {
    /// GCC/Clang (libiberty `buildargv`) rules.
    Gnu,
    /// MSVC (`CommandLineToArgvW`) rules.
    Msvc,
}

/// A response file that could not be expanded.
#[derive(Debug, thiserror::Error)]
#[error("cannot read response file {path:?}")]
pub struct ResponseError {
    /// The response file.
    pub path: std::path::PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Expands every `@file` word in `args`.
pub fn expand(args: &[OsString], _quoting: Quoting) -> Result<Vec<OsString>, ResponseError> {
    Ok(args.to_vec())
}
