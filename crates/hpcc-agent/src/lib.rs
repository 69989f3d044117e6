//! `hpcc-agent`: PID 1 of an hpcc isolation session, as a library so the host side's tests can
//! drive the very code the binary runs.
//!
//! - [`frame`]: length-prefixed protobuf frames, the length capped before allocating.
//! - [`paths`]: confinement of the paths a job names to its job directory.
//! - [`config`]: the agent's command line, parsed into an [`config::AgentConfig`].
//! - [`listen`]: where connections come from ([`listen::Listener`]: a Unix socket now, vsock later).
//! - [`serve`]: one connection = one job of `hpcc.agent.v1`.
//! - [`init`]: what PID 1 does: mounts, the server child, reaping.
//!
//! The agent depends on `hpcc-proto` and nothing else of hpcc, links no gRPC stack and runs on a
//! current-thread runtime, so it stays small and starts fast inside a sandbox or a microVM.
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
pub mod frame;
pub mod init;
mod job;
pub mod listen;
pub mod paths;
pub mod serve;
#[allow(unsafe_code)]
mod sys;
pub mod vm;
