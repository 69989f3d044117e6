//! What hpcc's tests share; a dev-dependency only, never linked into a binary (tidy checks).
//!
//! - [`harness`]: the runner of every crate's integration binary (`tests/it/main.rs`): cases
//!   with their needs, `skipped: <name>: <reason>` for a need the machine lacks (reported as
//!   ignored, never as passed), guest tests named `guest_vm::*`.
//! - `local` (feature `runtime`): `local::LocalRuntime`, an in-process `Runtime` running the
//!   real agent, so the worker is tested unprivileged.
//! - `idp` (feature `idp`): `idp::Idp`, a stand-in identity provider on loopback (JWKS and
//!   an OAuth2 token endpoint) minting real tokens, for the scheduler and end-to-end tests,
//!   over HTTP or HTTPS; `pki::Pki`, a throwaway CA and a certificate for loopback.
#![deny(missing_docs)]

pub mod harness;
#[cfg(feature = "idp")]
pub mod idp;
#[cfg(feature = "runtime")]
pub mod local;
#[cfg(feature = "idp")]
pub mod pki;

#[cfg(feature = "runtime")]
pub use local::LocalRuntime;
