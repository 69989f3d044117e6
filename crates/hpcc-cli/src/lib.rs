//! The `hpcc` wrapper's own parts: the client side of the local daemon ([`client`]) and the
//! user commands ([`commands`]). The compile flow itself (keys, direct and preprocessor modes,
//! restore, the daemon protocol's transport) is `hpcc-cache`, which the daemon uses too.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod client;
pub mod commands;
