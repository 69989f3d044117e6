//! Scoped views on real servers: each tenant's objects land under `cache/<namespace>/` (as
//! the server itself lists them), two namespaces never see each other's object for one key,
//! usage counts what is there, and deleting a namespace removes exactly its objects, in
//! moto's S3, one Redis server, and a Redis Cluster (on every primary).

use std::sync::Arc;
use std::time::Duration;

use hpcc_core::config::{Backend, RemoteConfig, RemoteOptions};
use hpcc_store::remote::{object_path_in, OpendalStore, Store, Timeouts};
use hpcc_store::Kind;

use crate::harness::{self, check, encoded, failed, keys, write_all, Case, Need, TestResult};
use crate::redis_cluster::RedisCluster;
use crate::servers;

pub fn cases() -> Vec<Case> {
    vec![
        (
            "namespaces_in_s3_are_prefixes_deleted_one_at_a_time",
            &[Need::S3],
            s3_namespaces,
        ),
        (
            "namespaces_in_redis_are_prefixes_deleted_one_at_a_time",
            &[Need::Redis],
            redis_namespaces,
        ),
        (
            "namespaces_in_a_redis_cluster_are_deleted_on_every_primary",
            &[Need::Redis],
            redis_cluster_namespaces,
        ),
    ]
}

/// Objects the server itself lists under a key prefix.
type CountUnder<'a> = &'a dyn Fn(&str) -> Result<usize, String>;

/// Tenant A writes 40 objects, tenant B one, and both write the same key; 5 objects are
/// unscoped. Checks what the server holds where, what each view reads, usage, and that
/// deleting A leaves B's and the unscoped objects alone.
async fn two_tenants(store: Arc<dyn Store>, count_under: CountUnder<'_>) -> TestResult {
    let a = store.scoped("tenant-a").map_err(failed("scoping"))?;
    let b = store.scoped("tenant-b").map_err(failed("scoping"))?;
    let a_keys = keys("a", 40);
    let mut a_bytes = 0;
    for (index, key) in a_keys.iter().enumerate() {
        let object = encoded(Kind::Result, key, 1, 100 + index * 37)?;
        a_bytes += object.len() as u64;
        a.put(Kind::Result, key, object)
            .await
            .map_err(failed("put for A"))?;
    }
    let shared = keys("shared", 1)[0];
    let object_a = encoded(Kind::Manifest, &shared, 1, 500)?;
    let object_b = encoded(Kind::Manifest, &shared, 2, 700)?;
    a_bytes += object_a.len() as u64;
    a.put(Kind::Manifest, &shared, object_a.clone())
        .await
        .map_err(failed("put for A"))?;
    b.put(Kind::Manifest, &shared, object_b.clone())
        .await
        .map_err(failed("put for B"))?;
    let unscoped = keys("unscoped", 5);
    for key in &unscoped {
        store
            .put(Kind::Result, key, encoded(Kind::Result, key, 3, 64)?)
            .await
            .map_err(failed("unscoped put"))?;
    }

    let held = |prefix: &str| count_under(prefix);
    check(held("cache/tenant-a/")? == 41, || {
        format!(
            "A's 41 objects under cache/tenant-a/: {:?}",
            held("cache/tenant-a/")
        )
    })?;
    check(held("cache/tenant-b/")? == 1, || "B's one object".into())?;
    check(held("cache/r/")? == 5, || "the unscoped results".into())?;
    let where_b =
        object_path_in(Some("tenant-b"), Kind::Manifest, &shared).map_err(failed("path"))?;
    check(held(&where_b)? == 1, || format!("B's object at {where_b}"))?;

    for key in &a_keys[..5] {
        let seen = b.get(Kind::Result, key).await.map_err(failed("get as B"))?;
        check(seen.is_none(), || "B reads A's object".into())?;
        let exists = b
            .exists(Kind::Result, key)
            .await
            .map_err(failed("exists"))?;
        check(!exists, || "B sees that A's object exists".into())?;
    }
    let seen_a = a
        .get(Kind::Manifest, &shared)
        .await
        .map_err(failed("get"))?;
    let seen_b = b
        .get(Kind::Manifest, &shared)
        .await
        .map_err(failed("get"))?;
    check(seen_a == Some(object_a), || "A reads its own object".into())?;
    check(seen_b == Some(object_b.clone()), || {
        "B reads its own".into()
    })?;

    let usage = store
        .namespace_usage("tenant-a")
        .await
        .map_err(failed("usage of A"))?;
    check(usage == (41, a_bytes), || {
        format!("usage of A: {usage:?}, expected (41, {a_bytes})")
    })?;
    let usage = b
        .namespace_usage("tenant-b")
        .await
        .map_err(failed("usage"))?;
    check(usage == (1, object_b.len() as u64), || {
        format!("usage of B: {usage:?}")
    })?;

    let removed = store
        .delete_namespace("tenant-a")
        .await
        .map_err(failed("deleting A"))?;
    check(removed == 41, || format!("removed {removed}, expected 41"))?;
    check(held("cache/tenant-a/")? == 0, || {
        "A's objects are left".into()
    })?;
    check(held("cache/tenant-b/")? == 1, || {
        "B's object went too".into()
    })?;
    check(held("cache/r/")? == 5, || {
        "unscoped objects went too".into()
    })?;
    let usage = store
        .namespace_usage("tenant-a")
        .await
        .map_err(failed("usage"))?;
    check(usage == (0, 0), || {
        format!("usage after deletion: {usage:?}")
    })?;
    let seen_b = b
        .get(Kind::Manifest, &shared)
        .await
        .map_err(failed("get"))?;
    check(seen_b == Some(object_b), || {
        "B's object after A left".into()
    })?;
    let seen = a
        .get(Kind::Result, &a_keys[0])
        .await
        .map_err(failed("get"))?;
    check(seen.is_none(), || "A's object after deletion".into())?;
    let refused = store.delete_namespace("r").await;
    check(refused.is_err(), || {
        "deleting namespace \"r\" (the unscoped results) must be refused".into()
    })
}

fn s3_namespaces() -> TestResult {
    let server = servers::s3("hpcc")?;
    let port = server.port;
    let builder = opendal::services::S3::default()
        .bucket("hpcc")
        .endpoint(&format!("http://127.0.0.1:{port}"))
        .region("us-east-1")
        .access_key_id("test")
        .secret_access_key("test")
        .disable_config_load();
    let operator = opendal::Operator::new(builder).map_err(failed("s3 operator"))?;
    let timeout = Duration::from_secs(10);
    let store = OpendalStore::new(
        "s3".into(),
        operator,
        Timeouts {
            read: timeout,
            write: timeout,
            list: timeout,
        },
        2,
    );
    // The bucket's own listing (ListObjectsV2), unsigned as moto accepts.
    let count_under = |prefix: &str| -> Result<usize, String> {
        let response = servers::http_request(
            port,
            &format!(
                "GET /hpcc?list-type=2&prefix={prefix} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            ),
        )?;
        check(response.starts_with("HTTP/1.1 200"), || {
            format!("listing the bucket: {response}")
        })?;
        Ok(response.matches("<Key>").count())
    };
    harness::run(two_tenants(Arc::new(store), &count_under))
}

fn redis_namespaces() -> TestResult {
    let dir = tempfile::tempdir().map_err(failed("temporary directory"))?;
    let server = servers::redis(dir.path())?;
    let config = RemoteConfig {
        options: RemoteOptions::default(),
        backend: Backend::Redis {
            endpoint: Some(format!("redis://127.0.0.1:{}", server.port)),
            cluster_endpoints: Vec::new(),
            db: 0,
            username: None,
            password: None,
        },
    };
    let store = OpendalStore::open(&config).map_err(failed("opening"))?;
    let count_under = |prefix: &str| -> Result<usize, String> {
        let pattern = format!("{prefix}*");
        let keys = servers::redis_cli(server.port, &["--scan", "--pattern", &pattern])?;
        Ok(keys.lines().filter(|line| !line.is_empty()).count())
    };
    harness::run(two_tenants(Arc::new(store), &count_under))
}

fn redis_cluster_namespaces() -> TestResult {
    let cluster = RedisCluster::start()?;
    let store = cluster.store(5_000)?;
    let count_under = |prefix: &str| -> Result<usize, String> {
        Ok(cluster.count_keys(&format!("{prefix}*"))?.0)
    };
    harness::run(async {
        deleted_on_every_primary(&cluster, &store, "spread").await?;
        two_tenants(Arc::clone(&store), &count_under).await
    })
}

/// Writes 30 objects in `namespace` through `store`, checks that they sit on every primary
/// of `cluster`, deletes the namespace and checks that no primary holds any of them.
pub async fn deleted_on_every_primary(
    cluster: &RedisCluster,
    store: &Arc<dyn Store>,
    namespace: &str,
) -> TestResult {
    let scoped = store.scoped(namespace).map_err(failed("scoping"))?;
    write_all(scoped.as_ref(), &keys(namespace, 30), 4).await?;
    let pattern = format!("cache/{namespace}/*");
    // Thirty keys over three primaries all but surely reach each of them.
    let (held, primaries) = cluster.count_keys(&pattern)?;
    check(held == 30 && primaries == 3, || {
        format!("30 keys on the 3 primaries, found {held} on {primaries}")
    })?;
    let removed = store
        .delete_namespace(namespace)
        .await
        .map_err(failed("deleting a namespace"))?;
    check(removed == 30, || format!("removed {removed} of 30"))?;
    check(cluster.count_keys(&pattern)?.0 == 0, || {
        "keys left on some primary".into()
    })
}
