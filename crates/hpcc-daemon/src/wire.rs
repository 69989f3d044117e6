//! Small pieces of the daemon protocol that the server and the farm service both send.

use hpcc_cache::ipc::Connection;
use hpcc_proto::daemon::{reply, Reply, Waiting};

/// Tells a waiting wrapper the daemon is alive; `false` if it went away.
pub(crate) fn heartbeat(connection: &mut Connection) -> bool {
    connection
        .send(&reply_of(reply::Kind::Waiting(Waiting {})))
        .is_ok()
}

/// A reply of `kind`.
pub(crate) fn reply_of(kind: reply::Kind) -> Reply {
    Reply { kind: Some(kind) }
}
