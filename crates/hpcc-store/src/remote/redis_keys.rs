//! Listing and deleting a namespace in Redis: [`RedisKeys`].
//!
//! OpenDAL's Redis service reads and writes keys but cannot list them, so a namespace's keys
//! are found here with the `redis` crate (the version OpenDAL's service already uses):
//! `SCAN MATCH cache/<namespace>/*`, then `STRLEN` (usage) or `UNLINK` (deletion) of each
//! batch. `SCAN` never blocks the server the way `KEYS` would.
//!
//! A Redis Cluster's keys are spread over its primaries, and `SCAN` sees only the node it
//! is sent to: so the primaries are read from `CLUSTER NODES`, each is scanned over a
//! connection of its own, and the keys found are sized or unlinked through a cluster
//! connection, which sends each key to the primary that owns its slot now (following `MOVED`
//! and `ASK` if a slot moves meanwhile). A primary marked failing that still owns slots is an
//! error: its keys cannot be listed until a replica takes over.
//!
//! These are administrative calls (a tenant's usage, a tenant leaving), so each opens its own
//! connections rather than sharing OpenDAL's pool; the caller bounds the whole call in time.

use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{StreamExt, TryStreamExt};
use redis::aio::ConnectionLike;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Keys asked for per `SCAN` step (a hint to the server), and so the size of a batch.
const SCAN_COUNT: usize = 1_000;

/// `STRLEN`s in flight at once on one multiplexed connection.
const SIZES_IN_FLIGHT: usize = 64;

/// What to do with a namespace's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Count them and their bytes.
    Measure,
    /// Unlink them, counting those removed.
    Delete,
}

/// Running totals of one call, kept across retries of it.
#[derive(Debug, Default)]
pub(super) struct Totals {
    /// Keys counted or removed.
    pub(super) objects: AtomicU64,
    /// Their bytes (measuring only).
    pub(super) bytes: AtomicU64,
}

/// Where a Redis store's keys are: one server, or the nodes a cluster is reached through.
#[derive(Debug, Clone)]
pub(super) enum RedisKeys {
    /// One server (its database).
    Server(Box<ConnectionInfo>),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<ConnectionInfo>),
}

/// The connection settings of `endpoint`, as OpenDAL reads it (no scheme, or `tcp://`,
/// means `redis://`), with the table's database and credentials.
fn connection_info(
    endpoint: &str,
    db: i64,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<ConnectionInfo, String> {
    let url = match endpoint.split_once("://") {
        Some(("tcp", rest)) => format!("redis://{rest}"),
        Some(_) => endpoint.to_owned(),
        None => format!("redis://{endpoint}"),
    };
    let info = url
        .as_str()
        .into_connection_info()
        .map_err(|error| format!("endpoint {endpoint:?}: {error}"))?;
    let mut settings: RedisConnectionInfo = info.redis_settings().clone().set_db(db);
    if let Some(username) = username {
        settings = settings.set_username(username);
    }
    if let Some(password) = password {
        settings = settings.set_password(password);
    }
    Ok(info.set_redis_settings(settings))
}

impl RedisKeys {
    /// For a `type = "redis"` table: `endpoint`, else `cluster_endpoints`. `Err` names the
    /// endpoint that cannot be parsed.
    pub(super) fn new(
        endpoint: Option<&str>,
        cluster_endpoints: &[String],
        db: i64,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<RedisKeys, String> {
        match endpoint {
            Some(endpoint) => Ok(RedisKeys::Server(Box::new(connection_info(
                endpoint, db, username, password,
            )?))),
            None => Ok(RedisKeys::Cluster(
                cluster_endpoints
                    .iter()
                    .map(|endpoint| connection_info(endpoint, db, username, password))
                    .collect::<Result<_, _>>()?,
            )),
        }
    }

    /// Applies `action` to every key starting with `prefix` (a validated namespace prefix,
    /// which holds no glob character), adding to `totals` as batches complete.
    pub(super) async fn apply(
        &self,
        prefix: &str,
        action: Action,
        totals: &Totals,
    ) -> Result<(), BoxError> {
        let pattern = format!("{prefix}*");
        match self {
            RedisKeys::Server(info) => {
                let connection = redis::Client::open(ConnectionInfo::clone(info))?
                    .get_multiplexed_async_connection()
                    .await?;
                scan_node(connection.clone(), connection, &pattern, action, totals).await
            }
            RedisKeys::Cluster(seeds) => {
                let mut cluster = redis::cluster::ClusterClient::new(seeds.clone())?
                    .get_async_connection()
                    .await?;
                let nodes = cluster
                    .route_command(
                        redis::cmd("CLUSTER").arg("NODES").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                let nodes: String = redis::from_redis_value(nodes)?;
                let template = seeds.first().ok_or("a cluster with no endpoints")?;
                for (host, port) in primaries(&nodes)? {
                    let address = match template.addr().clone() {
                        ConnectionAddr::TcpTls {
                            insecure,
                            tls_params,
                            ..
                        } => ConnectionAddr::TcpTls {
                            host,
                            port,
                            insecure,
                            tls_params,
                        },
                        _ => ConnectionAddr::Tcp(host, port),
                    };
                    let node = redis::Client::open(template.clone().set_addr(address))?
                        .get_multiplexed_async_connection()
                        .await?;
                    scan_node(node, cluster.clone(), &pattern, action, totals).await?;
                }
                Ok(())
            }
        }
    }
}

/// Scans one node's keys matching `pattern` over `scan`, and sizes or unlinks them over
/// `keys` (the same connection for one server; the cluster connection for a cluster).
async fn scan_node<K>(
    mut scan: redis::aio::MultiplexedConnection,
    mut keys: K,
    pattern: &str,
    action: Action,
    totals: &Totals,
) -> Result<(), BoxError>
where
    K: ConnectionLike + Clone + Send + Sync,
{
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(&mut scan)
            .await?;
        if !batch.is_empty() {
            match action {
                Action::Delete => {
                    // A cluster connection splits a multi-key UNLINK by slot and adds the counts.
                    let removed: u64 = redis::cmd("UNLINK")
                        .arg(&batch)
                        .query_async(&mut keys)
                        .await?;
                    totals.objects.fetch_add(removed, Ordering::Relaxed);
                }
                Action::Measure => {
                    let lengths: Vec<u64> = futures_util::stream::iter(batch)
                        .map(|key| {
                            let mut keys = keys.clone();
                            async move {
                                redis::cmd("STRLEN")
                                    .arg(key)
                                    .query_async::<u64>(&mut keys)
                                    .await
                            }
                        })
                        .buffer_unordered(SIZES_IN_FLIGHT)
                        .try_collect()
                        .await?;
                    // A key gone since the scan has length 0; an entry is never empty.
                    for length in lengths.into_iter().filter(|length| *length > 0) {
                        totals.objects.fetch_add(1, Ordering::Relaxed);
                        totals.bytes.fetch_add(length, Ordering::Relaxed);
                    }
                }
            }
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// The primaries that own slots, from `CLUSTER NODES` output (`<id> <ip:port@cport[,host]>
/// <flags> <primary> <ping> <pong> <epoch> <link> <slot>...`). `Err` if one of them is
/// failing, or a line cannot be read.
pub(super) fn primaries(nodes: &str) -> Result<Vec<(String, u16)>, String> {
    let mut found = Vec::new();
    for line in nodes.lines().filter(|line| !line.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, address, flags, _, _, _, _, _, slots @ ..] = fields.as_slice() else {
            return Err(format!("cannot read CLUSTER NODES line {line:?}"));
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master") || slots.is_empty() {
            continue;
        }
        let endpoint = address.split(['@', ',']).next().unwrap_or(address);
        if flags.iter().any(|flag| matches!(*flag, "fail" | "fail?")) {
            return Err(format!(
                "primary {endpoint} is failing and still owns slots; its keys cannot be listed until a replica takes over"
            ));
        }
        let parsed = endpoint
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.to_owned(), port.parse::<u16>().ok()?)));
        match parsed {
            Some(primary) => found.push(primary),
            None => {
                return Err(format!(
                    "cannot read the address {endpoint:?} in CLUSTER NODES"
                ))
            }
        }
    }
    if found.is_empty() {
        return Err("CLUSTER NODES lists no primary that owns slots".into());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_as_opendal_reads_them() {
        for endpoint in [
            "redis://10.0.0.1:7000",
            "tcp://10.0.0.1:7000",
            "10.0.0.1:7000",
        ] {
            let info = connection_info(endpoint, 3, Some("u"), Some("p")).expect(endpoint);
            assert!(
                matches!(info.addr(), ConnectionAddr::Tcp(host, 7000) if host == "10.0.0.1"),
                "{endpoint}: {:?}",
                info.addr()
            );
            assert_eq!(info.redis_settings().db(), 3);
            assert_eq!(info.redis_settings().username(), Some("u"));
        }
        let error = connection_info("ftp://x", 0, None, None).expect_err("ftp");
        assert!(error.contains("ftp://x"), "{error}");
    }

    #[test]
    fn primaries_are_read_from_cluster_nodes() {
        let nodes = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002,host-b master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master - 0 1426238318243 3 connected 10923-16383 [93->-e7d1]
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
aaaa 127.0.0.1:30009@40009 master,fail - 0 0 9 disconnected
";
        assert_eq!(
            primaries(nodes).expect("readable"),
            vec![
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30003),
                ("127.0.0.1".to_owned(), 30001),
            ],
            "replicas and primaries without slots (a failed one, replaced) are skipped"
        );
        let failing = "e7d1 127.0.0.1:30001@40001 master,fail - 0 0 1 connected 0-5460\n";
        let error = primaries(failing).expect_err("failing primary");
        assert!(error.contains("127.0.0.1:30001"), "{error}");
        assert!(primaries("garbage\n").is_err());
        assert!(primaries("").is_err());
    }
}
