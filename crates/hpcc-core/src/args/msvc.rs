//! The MSVC (cl, clang-cl) argument grammar. Placeholder until the table lands.

use std::ffi::OsString;

use super::{Classification, NotCacheable};

/// Classifies an MSVC argv (response files already expanded).
pub fn parse(_args: &[OsString]) -> Classification {
    Classification::NotCacheable(NotCacheable::MsvcExecution)
}
