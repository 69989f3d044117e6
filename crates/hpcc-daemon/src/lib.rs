//! The daemon's library side: the parts the end-to-end tests drive directly.
//!
//! - [`farm`]: the client of remote compilation (route through the scheduler, compile on the
//!   worker it names).
// Unit tests spawn their own tasks directly: the spawn rule is for the services.
#![cfg_attr(test, allow(clippy::disallowed_methods))]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod farm;
pub mod login;
