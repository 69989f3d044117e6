//! Cache storage for hpcc. Placeholder.
pub mod disk;
