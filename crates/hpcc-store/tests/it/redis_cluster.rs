//! A Redis Cluster on loopback: six redis-server processes (three primaries, a replica each),
//! joined with `redis-cli --cluster create`, with a short node timeout so that a replica takes
//! over a dead primary within a few seconds. Dropped: every process is killed, the temporary
//! directory removed.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hpcc_core::config::{Backend, RemoteConfig, RemoteOptions};
use hpcc_store::remote::{OpendalStore, Store};

use crate::harness::failed;
use crate::servers::{self, Server};

/// Milliseconds before a silent node is marked failing (and its replica promoted).
const NODE_TIMEOUT_MS: &str = "1000";

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node id.
    pub id: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// A primary (else a replica).
    pub primary: bool,
    /// Marked failing.
    pub failing: bool,
    /// A replica's primary id.
    pub primary_id: Option<String>,
    /// Slot ranges served, inclusive.
    pub slots: Vec<(u16, u16)>,
}

/// The cluster.
pub struct RedisCluster {
    nodes: Vec<Server>,
    alive: Vec<bool>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts six nodes and joins them; waits until every node says `cluster_state:ok`.
    pub fn start() -> Result<RedisCluster, String> {
        let dir = tempfile::tempdir().map_err(failed("temporary directory"))?;
        let mut nodes = Vec::new();
        for index in 0..6 {
            let node_dir = dir.path().join(index.to_string());
            std::fs::create_dir(&node_dir).map_err(failed("node directory"))?;
            // The bus port defaults to the port + 10000, which may be taken, or past 65535.
            let bus_port = servers::free_port()?.to_string();
            nodes.push(servers::redis_with(
                &node_dir,
                &[
                    "--cluster-port",
                    &bus_port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    NODE_TIMEOUT_MS,
                ],
            )?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .map_err(failed("redis-cli --cluster create"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let cluster = RedisCluster {
            alive: vec![true; nodes.len()],
            nodes,
            _dir: dir,
        };
        cluster.wait_healthy(Duration::from_secs(20))?;
        Ok(cluster)
    }

    /// `redis://127.0.0.1:<port>` of every node, dead or alive.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect()
    }

    /// A store over the cluster (`cluster_endpoints` = every node), with `timeout_ms` for
    /// reads and writes.
    pub fn store(&self, timeout_ms: u64) -> Result<Arc<dyn Store>, String> {
        let config = RemoteConfig {
            options: RemoteOptions {
                read_timeout_ms: timeout_ms,
                write_timeout_ms: timeout_ms,
                list_timeout_ms: 20_000,
                cooldown_secs: 1,
                ..RemoteOptions::default()
            },
            backend: Backend::Redis {
                endpoint: None,
                cluster_endpoints: self.endpoints(),
                db: 0,
                username: None,
                password: None,
            },
        };
        RemoteConfig::validate_all(std::slice::from_ref(&config))?;
        Ok(Arc::new(
            OpendalStore::open(&config).map_err(failed("opening the cluster store"))?,
        ))
    }

    /// Runs `redis-cli` against the first live node.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let port = self.live_ports().next().ok_or("no live node")?;
        servers::redis_cli(port, args)
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .zip(&self.alive)
            .filter(|(_, alive)| **alive)
            .map(|(node, _)| node.port)
    }

    /// The cluster as a live node sees it.
    pub fn table(&self) -> Result<Vec<Node>, String> {
        let text = self.cli(&["CLUSTER", "NODES"])?;
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(parse_node)
            .collect()
    }

    /// The primary serving `slot`.
    pub fn owner(&self, slot: u16) -> Result<Node, String> {
        self.table()?
            .into_iter()
            .find(|node| {
                node.primary
                    && node
                        .slots
                        .iter()
                        .any(|(first, last)| (*first..=*last).contains(&slot))
            })
            .ok_or_else(|| format!("no primary serves slot {slot}"))
    }

    /// The slot of a key.
    pub fn slot(&self, key: &str) -> Result<u16, String> {
        let text = self.cli(&["CLUSTER", "KEYSLOT", key])?;
        text.trim()
            .parse()
            .map_err(|error| format!("CLUSTER KEYSLOT said {text:?}: {error}"))
    }

    /// Keys matching `pattern` on every primary that serves slots (replicas hold copies).
    pub fn count_keys(&self, pattern: &str) -> Result<(usize, usize), String> {
        let mut total = 0;
        let mut primaries_holding = 0;
        for node in self.table()? {
            if !node.primary || node.failing || node.slots.is_empty() {
                continue;
            }
            let keys = servers::redis_cli(node.port, &["--scan", "--pattern", pattern])?;
            let count = keys.lines().filter(|line| !line.is_empty()).count();
            total += count;
            primaries_holding += usize::from(count > 0);
        }
        Ok((total, primaries_holding))
    }

    /// Moves `slot` from `from` to `to` the way `redis-cli --cluster reshard` does: importing
    /// and migrating states, `MIGRATE` of its keys, then the new owner announced to every
    /// primary. `between` runs while the keys have moved but the slot is still the old
    /// owner's (where clients are sent on with `ASK`).
    pub fn move_slot(
        &self,
        slot: u16,
        from: &Node,
        to: &Node,
        between: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), String> {
        let slot_text = slot.to_string();
        let to_port = to.port.to_string();
        servers::redis_cli(
            to.port,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from.id],
        )?;
        servers::redis_cli(
            from.port,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to.id],
        )?;
        let keys =
            servers::redis_cli(from.port, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "1000"])?;
        let keys: Vec<&str> = keys.lines().filter(|line| !line.is_empty()).collect();
        if !keys.is_empty() {
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().copied());
            let said = servers::redis_cli(from.port, &args)?;
            if said.trim() != "OK" {
                return Err(format!("MIGRATE said {said:?}"));
            }
        }
        between()?;
        // The new owner first, then the old one, then everyone else (as redis-cli does).
        let mut order = vec![to.port, from.port];
        for node in self.table()? {
            if node.primary && !node.failing && !order.contains(&node.port) {
                order.push(node.port);
            }
        }
        for port in order {
            servers::redis_cli(port, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to.id])?;
        }
        Ok(())
    }

    /// Kills the node on `port` with SIGKILL.
    pub fn kill(&mut self, port: u16) -> Result<(), String> {
        let index = self
            .nodes
            .iter()
            .position(|node| node.port == port)
            .ok_or_else(|| format!("no node on port {port}"))?;
        self.nodes[index].kill();
        self.alive[index] = false;
        Ok(())
    }

    /// Waits until every live node says `cluster_state:ok` and every slot-serving primary
    /// is up (after a kill: until a replica has taken over).
    pub fn wait_healthy(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            let ok = self.live_ports().all(|port| {
                servers::redis_cli(port, &["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            match self.table() {
                Ok(table) if ok => {
                    let serving = table
                        .iter()
                        .filter(|node| node.primary && !node.slots.is_empty());
                    let mut covered = 0u32;
                    let mut failing = false;
                    for node in serving {
                        // A killed node serves slots until the others mark it failing.
                        failing |= node.failing || !self.live_ports().any(|port| port == node.port);
                        for (first, last) in &node.slots {
                            covered += u32::from(*last - *first) + 1;
                        }
                    }
                    if !failing && covered == 16_384 {
                        return Ok(());
                    }
                    last = format!("{table:?}");
                }
                Ok(_) => last = "a node is not cluster_state:ok".into(),
                Err(error) => last = error,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "the cluster is not healthy after {within:?}: {last}"
        ))
    }
}

/// Reads one `CLUSTER NODES` line.
fn parse_node(line: &str) -> Result<Node, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let unreadable = || format!("cannot read CLUSTER NODES line {line:?}");
    if fields.len() < 8 {
        return Err(unreadable());
    }
    let port = fields[1]
        .split(['@', ','])
        .next()
        .and_then(|address| address.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .ok_or_else(unreadable)?;
    let flags: Vec<&str> = fields[2].split(',').collect();
    let mut slots = Vec::new();
    for range in fields[8..].iter().filter(|range| !range.starts_with('[')) {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let first = first.parse().map_err(|_| unreadable())?;
        let last = last.parse().map_err(|_| unreadable())?;
        slots.push((first, last));
    }
    Ok(Node {
        id: fields[0].to_owned(),
        port,
        primary: flags.contains(&"master"),
        failing: flags.contains(&"fail") || flags.contains(&"fail?"),
        primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
        slots,
    })
}
