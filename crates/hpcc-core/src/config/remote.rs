//! The `[[remote]]` tables: remote stores behind the local cache, slowest last.
//!
//! A table is one store: the keys every store has ([`RemoteOptions`]: name, timeouts, size
//! limit, cooldown) beside the keys of its `type` ([`Backend`]). Both halves refuse unknown
//! keys; the split is done by hand (see [`RemoteConfig`]'s `Deserialize`) because serde's
//! `flatten` cannot be combined with `deny_unknown_fields`. [`RemoteConfig::validate_all`]
//! checks what types cannot: names unique, cluster sizes, `max_size` only on a store that can
//! be listed. `HPCC_REMOTE` replaces every table (see [`crate::config::merge_env`]).
//!
//! By default a read may take 2 s, a write 5 s and a listing 30 s, retries included, and a store
//! that failed sits out 30 s. Credentials for S3, GCS and Azure come from their standard chains,
//! never from this file.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::ByteSize;

/// One remote store, in lookup order (the first table is asked first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct RemoteConfig {
    /// What every store has.
    #[serde(flatten)]
    pub options: RemoteOptions,
    /// Which store, and its own keys.
    #[serde(flatten)]
    pub backend: Backend,
}

/// The keys every remote store has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteOptions {
    /// The store's name in statistics and messages, and its identity in a cluster's hashing
    /// (default: the type and the endpoint or bucket).
    pub name: Option<String>,
    /// Only read from this store; never write to it.
    pub read_only: bool,
    /// Milliseconds a read (get, exists) may take, retries included.
    pub read_timeout_ms: u64,
    /// Milliseconds a write (put, delete) may take, retries included.
    pub write_timeout_ms: u64,
    /// Milliseconds a listing may take (eviction scans).
    pub list_timeout_ms: u64,
    /// Retries of an idempotent call after a temporary error, within its timeout.
    pub retries: u32,
    /// Seconds a store that failed or timed out is skipped before it is tried again.
    pub cooldown_secs: u64,
    /// Size limit: when the bytes written since the last scan push the estimate 10% past it,
    /// the store is listed and its oldest objects are deleted. Unset: no limit (the store
    /// evicts by itself, as Redis with `maxmemory-policy allkeys-lru` does).
    pub max_size: Option<ByteSize>,
}

impl Default for RemoteOptions {
    fn default() -> RemoteOptions {
        RemoteOptions {
            name: None,
            read_only: false,
            read_timeout_ms: 2_000,
            write_timeout_ms: 5_000,
            list_timeout_ms: 30_000,
            retries: 2,
            cooldown_secs: 30,
            max_size: None,
        }
    }
}

impl RemoteOptions {
    /// The keys of this half of a table.
    const KEYS: &'static [&'static str] = &[
        "name",
        "read_only",
        "read_timeout_ms",
        "write_timeout_ms",
        "list_timeout_ms",
        "retries",
        "cooldown_secs",
        "max_size",
    ];
}

fn default_replicas() -> u32 {
    2
}

/// Which store a `[[remote]]` table names, by its `type` key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Backend {
    /// An S3-compatible bucket (AWS S3, MinIO, R2, GCS's S3 API). Credentials come from the
    /// standard AWS chain (environment, `~/.aws`, instance or web identity), never from here.
    S3 {
        /// The bucket.
        bucket: String,
        /// The service URL (default: AWS for the region).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        /// The region (default: from the AWS chain, else `us-east-1`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// A directory inside the bucket; objects go under `<root>/cache/`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        root: Option<String>,
        /// Create the bucket when it does not exist (default: never).
        #[serde(default)]
        auto_create: bool,
        /// Address the bucket as `<bucket>.<endpoint>` rather than `<endpoint>/<bucket>`.
        #[serde(default)]
        virtual_host_style: bool,
    },
    /// A Redis server (`redis://host:port`, `rediss://` for TLS), or a Redis Cluster: exactly
    /// one of `endpoint` and `cluster_endpoints` is set (see [`Backend::check`]).
    Redis {
        /// The server URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        /// Some nodes of a Redis Cluster (`redis://host:port` each; any primaries or replicas:
        /// the client learns the rest of the cluster from them, follows `MOVED` and `ASK`
        /// redirects, and re-reads the slot map after a failover).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        cluster_endpoints: Vec<String>,
        /// The database number.
        #[serde(default)]
        db: i64,
        /// ACL user name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        /// Password (keep the config file private).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
    },
    /// A memcached server (`tcp://host:port`).
    Memcached {
        /// The server address.
        endpoint: String,
    },
    /// A WebDAV server (an nginx or Apache directory with PUT enabled).
    Webdav {
        /// The collection URL.
        endpoint: String,
        /// Basic-auth user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        /// Basic-auth password.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
    },
    /// A Google Cloud Storage bucket (credentials: the standard Google chain).
    Gcs {
        /// The bucket.
        bucket: String,
        /// The service URL (default: Google's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
    /// An Azure Blob Storage container (credentials: the standard Azure environment).
    Azblob {
        /// The container.
        container: String,
        /// The account's blob endpoint, `https://<account>.blob.core.windows.net`.
        endpoint: String,
    },
    /// Several stores sharing the keys: each key lives on `replicas` of them, chosen by
    /// rendezvous hashing of the stores' names, so adding one moves about 1/N of the keys.
    Cluster {
        /// Copies of each key (at most the number of endpoints).
        #[serde(default = "default_replicas")]
        replicas: u32,
        /// The member stores (not clusters themselves).
        endpoints: Vec<RemoteConfig>,
    },
}

impl Backend {
    /// Checks what serde cannot say about one store's own keys: a Redis store has exactly one
    /// of `endpoint` and `cluster_endpoints`, and a cluster only database 0. `Err` names the
    /// keys.
    pub fn check(&self) -> Result<(), String> {
        if let Backend::Redis {
            endpoint,
            cluster_endpoints,
            db,
            ..
        } = self
        {
            match (endpoint, cluster_endpoints.is_empty()) {
                (Some(_), false) => {
                    return Err(
                        "`endpoint` and `cluster_endpoints` are mutually exclusive: a Redis store is one server or one cluster".into(),
                    )
                }
                (None, true) => {
                    return Err(
                        "a redis store needs `endpoint` (one server) or `cluster_endpoints` (a Redis Cluster)".into(),
                    )
                }
                (None, false) if *db != 0 => {
                    return Err(format!(
                        "`db = {db}` with `cluster_endpoints`: a Redis Cluster has only database 0"
                    ))
                }
                _ => {}
            }
            if let Some(empty) = cluster_endpoints.iter().position(|e| e.trim().is_empty()) {
                return Err(format!("`cluster_endpoints`[{empty}] is empty"));
            }
        }
        Ok(())
    }
}

impl RemoteConfig {
    /// The name used in statistics and hashing: the configured one, else type and address.
    pub fn display_name(&self) -> String {
        if let Some(name) = &self.options.name {
            return name.clone();
        }
        match &self.backend {
            Backend::S3 {
                bucket, endpoint, ..
            } => match endpoint {
                Some(endpoint) => format!("s3:{endpoint}/{bucket}"),
                None => format!("s3:{bucket}"),
            },
            Backend::Redis {
                endpoint,
                cluster_endpoints,
                db,
                ..
            } => match endpoint {
                Some(endpoint) => format!("redis:{endpoint}/{db}"),
                None => format!("redis-cluster:{}/{db}", cluster_endpoints.join(",")),
            },
            Backend::Memcached { endpoint } => format!("memcached:{endpoint}"),
            Backend::Webdav { endpoint, .. } => format!("webdav:{endpoint}"),
            Backend::Gcs { bucket, .. } => format!("gcs:{bucket}"),
            Backend::Azblob {
                container,
                endpoint,
            } => format!("azblob:{endpoint}/{container}"),
            Backend::Cluster { endpoints, .. } => format!("cluster:{}", endpoints.len()),
        }
    }

    /// Replaces passwords with `<redacted>`, for showing the configuration.
    pub fn redact(&mut self) {
        match &mut self.backend {
            Backend::Redis {
                password: Some(password),
                ..
            }
            | Backend::Webdav {
                password: Some(password),
                ..
            } => *password = "<redacted>".into(),
            Backend::Cluster { endpoints, .. } => endpoints.iter_mut().for_each(Self::redact),
            _ => {}
        }
    }

    /// Whether this store can be listed, which a `max_size` needs (object stores can; Redis
    /// and memcached evict by themselves).
    fn can_list(&self) -> bool {
        matches!(
            self.backend,
            Backend::S3 { .. }
                | Backend::Gcs { .. }
                | Backend::Azblob { .. }
                | Backend::Webdav { .. }
        )
    }

    /// Checks what the types cannot say: a cluster has members, none of them a cluster, and
    /// at least as many as its replication factor; names are unique. `Err` names the table.
    pub fn validate_all(remotes: &[RemoteConfig]) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for remote in remotes {
            let name = remote.display_name();
            if !names.insert(name.clone()) {
                return Err(format!(
                    "remote store {name:?} is listed twice (give one a `name`)"
                ));
            }
            remote
                .backend
                .check()
                .map_err(|message| format!("remote store {name:?}: {message}"))?;
            if let Backend::Cluster { endpoints, .. } = &remote.backend {
                for member in endpoints {
                    member.backend.check().map_err(|message| {
                        format!(
                            "cluster {name:?}: member {:?}: {message}",
                            member.display_name()
                        )
                    })?;
                }
            }
            if remote.options.read_timeout_ms == 0 || remote.options.write_timeout_ms == 0 {
                return Err(format!("remote store {name:?}: timeouts must be above 0"));
            }
            if remote.options.max_size.is_some() && !remote.can_list() {
                return Err(format!(
                    "remote store {name:?}: max_size needs a store that can be listed (s3, gcs, azblob, webdav); Redis and memcached evict by themselves"
                ));
            }
            if let Backend::Cluster { endpoints, .. } = &remote.backend {
                if let Some(member) = endpoints
                    .iter()
                    .find(|member| member.options.max_size.is_some())
                {
                    return Err(format!(
                        "cluster {name:?}: member {:?} has max_size, which clusters do not support",
                        member.display_name()
                    ));
                }
            }
            if let Backend::Cluster {
                replicas,
                endpoints,
            } = &remote.backend
            {
                if endpoints.is_empty() {
                    return Err(format!("cluster {name:?} has no endpoints"));
                }
                if *replicas == 0
                    || usize::try_from(*replicas).unwrap_or(usize::MAX) > endpoints.len()
                {
                    return Err(format!(
                        "cluster {name:?}: replicas = {replicas} needs 1 to {} endpoints",
                        endpoints.len()
                    ));
                }
                if endpoints
                    .iter()
                    .any(|member| matches!(member.backend, Backend::Cluster { .. }))
                {
                    return Err(format!("cluster {name:?}: a member cannot be a cluster"));
                }
                let mut member_names = std::collections::BTreeSet::new();
                for member in endpoints {
                    if !member_names.insert(member.display_name()) {
                        return Err(format!(
                            "cluster {name:?}: member {:?} is listed twice",
                            member.display_name()
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for RemoteConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RemoteConfig, D::Error> {
        let mut table = toml::Table::deserialize(deserializer)?;
        let mut common = toml::Table::new();
        for key in RemoteOptions::KEYS {
            if let Some(value) = table.remove(*key) {
                common.insert((*key).to_owned(), value);
            }
        }
        if !table.contains_key("type") {
            return Err(serde::de::Error::custom(
                "a [[remote]] table needs `type` (s3, redis, memcached, webdav, gcs, azblob or cluster)",
            ));
        }
        // serde's message for an internally tagged enum does not name the key; a single string
        // here is a likely mistake (OpenDAL itself takes one comma-separated string).
        if let Some(value) = table.get("cluster_endpoints") {
            let listed = value
                .as_array()
                .is_some_and(|items| items.iter().all(toml::Value::is_str));
            if !listed {
                return Err(serde::de::Error::custom(
                    "`cluster_endpoints` must be a list of URLs, e.g. [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]",
                ));
            }
        }
        let options = RemoteOptions::deserialize(toml::Value::Table(common))
            .map_err(serde::de::Error::custom)?;
        let backend =
            Backend::deserialize(toml::Value::Table(table)).map_err(serde::de::Error::custom)?;
        backend.check().map_err(serde::de::Error::custom)?;
        Ok(RemoteConfig { options, backend })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize, Debug, PartialEq)]
    struct File {
        remote: Vec<RemoteConfig>,
    }

    fn parse(text: &str) -> Result<Vec<RemoteConfig>, String> {
        toml::from_str::<File>(text)
            .map(|file| file.remote)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn tables_parse_with_common_and_own_keys() {
        let remotes = parse(
            r#"
            [[remote]]
            type = "redis"
            endpoint = "redis://127.0.0.1:6379"
            read_timeout_ms = 500
            [[remote]]
            type = "s3"
            bucket = "b"
            endpoint = "http://127.0.0.1:9000"
            max_size = "10G"
            [[remote]]
            type = "cluster"
            name = "ring"
            [[remote.endpoints]]
            type = "redis"
            endpoint = "redis://a"
            [[remote.endpoints]]
            type = "redis"
            endpoint = "redis://b"
            "#,
        )
        .expect("valid tables");
        assert_eq!(remotes.len(), 3);
        assert_eq!(remotes[0].options.read_timeout_ms, 500);
        assert_eq!(remotes[0].options.write_timeout_ms, 5_000);
        assert_eq!(remotes[1].options.max_size, Some(ByteSize(10 << 30)));
        assert!(matches!(
            &remotes[1].backend,
            Backend::S3 { auto_create: false, bucket, .. } if bucket == "b"
        ));
        assert!(matches!(
            &remotes[2].backend,
            Backend::Cluster { replicas: 2, endpoints } if endpoints.len() == 2
        ));
        assert_eq!(RemoteConfig::validate_all(&remotes), Ok(()));
        assert_eq!(remotes[0].display_name(), "redis:redis://127.0.0.1:6379/0");
    }

    #[test]
    fn a_redis_cluster_is_named_by_its_endpoints() {
        let remotes = parse(
            r#"
            [[remote]]
            type = "redis"
            cluster_endpoints = ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
            password = "hunter2"
            "#,
        )
        .expect("valid table");
        assert!(matches!(
            &remotes[0].backend,
            Backend::Redis { endpoint: None, cluster_endpoints, db: 0, .. } if cluster_endpoints.len() == 2
        ));
        assert_eq!(
            remotes[0].display_name(),
            "redis-cluster:redis://127.0.0.1:7000,redis://127.0.0.1:7001/0"
        );
        assert_eq!(RemoteConfig::validate_all(&remotes), Ok(()));
        // A table built in code is checked too.
        let mut both = remotes[0].clone();
        if let Backend::Redis { endpoint, .. } = &mut both.backend {
            *endpoint = Some("redis://127.0.0.1:6379".into());
        }
        let error = RemoteConfig::validate_all(&[both]).expect_err("both keys");
        assert!(error.contains("mutually exclusive"), "{error}");
    }

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../../../README.md");
        let block = readme
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("README has a toml block");
        let config = crate::config::parse_file(std::path::Path::new("README.md"), block)
            .expect("the README's example is valid");
        assert_eq!(config.remote.len(), 3);
        assert!(matches!(
            &config.remote[2].backend,
            Backend::Cluster { replicas: 2, endpoints } if endpoints.len() == 3
        ));
        let cluster = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|rest| rest.split("```").next())
            .find(|block| block.contains("cluster_endpoints"))
            .expect("README has a Redis Cluster example");
        let config = crate::config::parse_file(std::path::Path::new("README.md"), cluster)
            .expect("the README's Redis Cluster example is valid");
        assert!(matches!(
            &config.remote[0].backend,
            Backend::Redis { endpoint: None, cluster_endpoints, .. } if cluster_endpoints.len() == 3
        ));
    }

    #[test]
    fn round_trips_through_toml() {
        let text = r#"
            [[remote]]
            type = "s3"
            bucket = "b"
            auto_create = true
            retries = 0
            [[remote]]
            type = "cluster"
            replicas = 1
            [[remote.endpoints]]
            type = "memcached"
            endpoint = "tcp://m"
        "#;
        let file = toml::from_str::<File>(text).expect("valid");
        let again = toml::to_string(&file).expect("serializable");
        assert_eq!(toml::from_str::<File>(&again).expect("reparses"), file);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, needle) in [
            ("[[remote]]\nendpoint = \"x\"\n", "needs `type`"),
            ("[[remote]]\ntype = \"ftp\"\n", "ftp"),
            (
                "[[remote]]\ntype = \"redis\"\nendpoint = \"x\"\nreadtimeout = 1\n",
                "readtimeout",
            ),
            ("[[remote]]\ntype = \"s3\"\n", "bucket"),
            (
                "[[remote]]\ntype = \"redis\"\nendpoint = \"x\"\nbucket = \"b\"\n",
                "bucket",
            ),
            ("[[remote]]\ntype = \"redis\"\n", "`cluster_endpoints`"),
            (
                "[[remote]]\ntype = \"redis\"\nendpoint = \"x\"\ncluster_endpoints = [\"y\"]\n",
                "mutually exclusive",
            ),
            (
                "[[remote]]\ntype = \"redis\"\ncluster_endpoints = [\"y\"]\ndb = 2\n",
                "`db = 2`",
            ),
            (
                "[[remote]]\ntype = \"redis\"\ncluster_endpoints = [\"y\", \"\"]\n",
                "`cluster_endpoints`[1]",
            ),
            (
                "[[remote]]\ntype = \"redis\"\ncluster_endpoints = \"y\"\n",
                "`cluster_endpoints` must be a list",
            ),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.contains(needle), "{text}: {error}");
        }
        let cluster = |replicas: u32, members: &[&str]| RemoteConfig {
            options: RemoteOptions::default(),
            backend: Backend::Cluster {
                replicas,
                endpoints: members
                    .iter()
                    .map(|endpoint| RemoteConfig {
                        options: RemoteOptions::default(),
                        backend: Backend::Memcached {
                            endpoint: (*endpoint).into(),
                        },
                    })
                    .collect(),
            },
        };
        assert!(RemoteConfig::validate_all(&[cluster(3, &["a", "b"])]).is_err());
        assert!(RemoteConfig::validate_all(&[cluster(0, &["a"])]).is_err());
        assert!(RemoteConfig::validate_all(&[cluster(1, &["a", "a"])]).is_err());
        assert!(RemoteConfig::validate_all(&[cluster(1, &[])]).is_err());
        assert!(
            RemoteConfig::validate_all(&[cluster(2, &["a", "b"]), cluster(1, &["c", "d"])])
                .is_err(),
            "two unnamed clusters of the same size collide"
        );
        assert!(RemoteConfig::validate_all(&[cluster(2, &["a", "b", "c"])]).is_ok());
        let error = parse("[[remote]]\ntype = \"redis\"\nendpoint = \"x\"\nmax_size = \"1G\"\n")
            .and_then(|remotes| RemoteConfig::validate_all(&remotes))
            .expect_err("max_size on redis");
        assert!(error.contains("max_size"), "{error}");
    }

    #[test]
    fn passwords_are_redacted() {
        let mut remotes = parse(
            r#"
            [[remote]]
            type = "cluster"
            replicas = 1
            endpoints = [{ type = "redis", endpoint = "redis://a", password = "hunter2" }]
            "#,
        )
        .expect("valid");
        remotes[0].redact();
        let shown = toml::to_string(&File { remote: remotes }).expect("serializable");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
