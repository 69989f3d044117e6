//! Placeholder.
use std::ffi::OsString;
use super::{Classification, NotCacheable};
/// Placeholder.
pub fn parse(_args: &[OsString]) -> Classification { Classification::NotCacheable(NotCacheable::Linking) }
