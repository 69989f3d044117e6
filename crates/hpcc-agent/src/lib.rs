//! `hpcc-agent`: PID 1 of an hpcc isolation session, as a library so the host side's tests can
//! drive the very code the binary runs.
//!
//! - [`paths`]: confinement of the paths a job names to its job directory.
//! - [`config`]: the agent's command line, parsed into an [`config::AgentConfig`].
//! - [`listen`]: where connections come from ([`listen::Listener`]: a Unix socket, a vsock
//!   port, or virtio-serial ports).
//! - [`serial`]: connections over virtio-serial ports (the `qemu` runtime's guests).
//! - [`serve`]: one connection = one job of `hpcc.agent.v1`.
//! - [`init`]: what PID 1 does: mounts, the server child, reaping.
//!
//! A job runs in its own process group with rlimits and no capabilities (the private `sys`
//! module), in an environment of the session's pinned variables plus the host's others, and
//! with `@JOBDIR@` in its argv replaced by its job directory, so the host can keep that
//! directory out of the outputs.
//!
//! The agent depends on `hpcc-proto` for the messages and on `hpcc-core` for their framing
//! (`hpcc_core::frame::asynchronous`, the one codec the runtime's agent client speaks too), and
//! on nothing else of hpcc; it links no gRPC stack and runs on a current-thread runtime, so it
//! stays small and starts fast inside a sandbox or a microVM.
// Unit tests spawn their own tasks directly: the spawn rule is for the services.
#![cfg_attr(test, allow(clippy::disallowed_methods))]
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
pub mod init;
mod job;
pub mod listen;
pub mod paths;
pub mod serial;
pub mod serve;
#[allow(unsafe_code)]
mod sys;
pub mod vm;
