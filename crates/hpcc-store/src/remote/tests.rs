//! Tiers, clusters, deadlines and eviction against real backends: OpenDAL's in-memory
//! service, and Redis and S3 clients pointed at misbehaving TCP servers in this process.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hpcc_core::config::{Backend, RemoteConfig, RemoteOptions};
use hpcc_core::digest::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::*;
use crate::test_util::noise;
use crate::{DiskConfig, DiskStore, Kind};

fn memory_store(name: &str) -> Arc<OpendalStore> {
    let operator = opendal::Operator::new(opendal::services::Memory::default())
        .expect("the memory service builds");
    Arc::new(OpendalStore::new(
        name.into(),
        operator,
        Timeouts {
            read: Duration::from_secs(2),
            write: Duration::from_secs(2),
            list: Duration::from_secs(2),
        },
        2,
    ))
}

/// An encoded entry for `key`, made by a real disk store.
fn encoded(kind: Kind, key: &Digest, len: usize) -> Bytes {
    let dir = tempfile::tempdir().expect("temporary directory");
    let disk = DiskStore::open(dir.path(), DiskConfig::default()).expect("disk store");
    disk.put(kind, key, &noise(u64::from(key.0[0]), len))
        .expect("put");
    Bytes::from(disk.get_encoded(kind, key).expect("read").expect("present"))
}

/// Cluster members with their cooldowns, as [`Cluster::new`] takes them.
type Members = Vec<(Arc<dyn Store>, Duration)>;

/// `count` memory stores, and the same as cluster members with a 30 s cooldown.
fn memory_members(count: usize) -> (Vec<Arc<OpendalStore>>, Members) {
    let live: Vec<Arc<OpendalStore>> = (0..count)
        .map(|index| memory_store(&format!("m{index}")))
        .collect();
    let members = live
        .iter()
        .map(|store| (Arc::clone(store) as Arc<dyn Store>, Duration::from_secs(30)))
        .collect();
    (live, members)
}

fn tier(store: Arc<dyn Store>, max_size: Option<u64>) -> Tier {
    Tier::new(store, Duration::from_secs(30), true, max_size)
}

#[cfg(feature = "s3")]
/// An S3 store at `address` with explicit credentials, so nothing asks the AWS chain.
fn s3_at(address: std::net::SocketAddr, timeout: Duration) -> OpendalStore {
    let builder = opendal::services::S3::default()
        .bucket("b")
        .endpoint(&format!("http://{address}"))
        .region("us-east-1")
        .access_key_id("test")
        .secret_access_key("test")
        .disable_config_load();
    let operator = opendal::Operator::new(builder).expect("s3 builds");
    OpendalStore::new(
        "s3".into(),
        operator,
        Timeouts {
            read: timeout,
            write: timeout,
            list: timeout,
        },
        2,
    )
}

/// One Redis server at `address`.
fn redis_at(address: std::net::SocketAddr) -> Backend {
    Backend::Redis {
        endpoint: Some(format!("redis://{address}")),
        cluster_endpoints: Vec::new(),
        db: 0,
        username: None,
        password: None,
    }
}

fn remote_config(backend: Backend, read_timeout_ms: u64) -> RemoteConfig {
    RemoteConfig {
        options: RemoteOptions {
            read_timeout_ms,
            write_timeout_ms: read_timeout_ms,
            ..RemoteOptions::default()
        },
        backend,
    }
}

#[tokio::test]
async fn slower_tier_hit_is_verified_and_backfilled() {
    let fast = memory_store("fast");
    let slow = memory_store("slow");
    let key = Digest::of(b"k");
    let object = encoded(Kind::Result, &key, 10_000);
    slow.put(Kind::Result, &key, object.clone())
        .await
        .expect("put");
    let tiers = Tiers::new(vec![tier(fast.clone(), None), tier(slow.clone(), None)]);
    match tiers.get(Kind::Result, &key).await {
        Found::Hit {
            object: found,
            tier,
        } => {
            assert_eq!(tier, 1);
            assert_eq!(found.object(), &object);
        }
        other => panic!("expected a hit, got {other:?}"),
    }
    assert!(tiers.flush(Duration::from_secs(5)).await, "queue drains");
    assert_eq!(
        fast.get(Kind::Result, &key).await.expect("get"),
        Some(object),
        "the faster tier was backfilled"
    );
    let stats = tiers.tiers()[1].stats.drain();
    assert!(stats.contains(&("hits".into(), 1)), "{stats:?}");
    let fast_stats = tiers.tiers()[0].stats.drain();
    assert!(fast_stats.contains(&("misses".into(), 1)), "{fast_stats:?}");
    assert!(fast_stats.contains(&("writes".into(), 1)), "{fast_stats:?}");
}

#[tokio::test]
async fn corrupt_truncated_and_misplaced_objects_are_misses() {
    let store = memory_store("s");
    let key = Digest::of(b"k");
    let other = Digest::of(b"other");
    let good = encoded(Kind::Result, &key, 5_000);
    let mut flipped = good.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let truncated = good.slice(..good.len() - 7);
    let misplaced = encoded(Kind::Result, &other, 100);
    let tiers = Tiers::new(vec![tier(store.clone(), None)]);
    for bad in [Bytes::from(flipped), truncated, misplaced, Bytes::new()] {
        store
            .put(Kind::Result, &key, bad)
            .await
            .expect("plant a bad object");
        assert!(matches!(
            tiers.get(Kind::Result, &key).await,
            Found::Miss { corrupt: 1 }
        ));
    }
    // The same bytes under the other kind fail too: the kind is in the checksum.
    store
        .put(Kind::Manifest, &key, good.clone())
        .await
        .expect("put");
    assert!(matches!(
        tiers.get(Kind::Manifest, &key).await,
        Found::Miss { corrupt: 1 }
    ));
    let stats = tiers.tiers()[0].stats.drain();
    assert!(stats.contains(&("corrupt".into(), 5)), "{stats:?}");
    // Corrupt objects are deleted from a writable tier, in the background.
    assert!(
        eventually(|| async {
            store
                .get(Kind::Manifest, &key)
                .await
                .expect("get")
                .is_none()
        })
        .await,
        "the corrupt object was not deleted"
    );
}

/// Polls `check` until it holds, for at most 10 s: background work lags on a loaded machine,
/// so a test waits for it instead of sleeping a fixed time and hoping.
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP server that accepts connections and never answers.
async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (address, task)
}

#[tokio::test]
async fn a_black_hole_store_costs_one_timeout_then_is_skipped() {
    let (address, _server) = black_hole().await;
    let store = OpendalStore::open(&remote_config(redis_at(address), 300)).expect("store");
    let key = Digest::of(b"k");
    let started = Instant::now();
    let error = store.get(Kind::Result, &key).await.expect_err("no answer");
    assert!(error.is_timeout(), "{error}");
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );

    let tiers = Tiers::new(vec![tier(Arc::new(store), None)]);
    let started = Instant::now();
    assert!(matches!(
        tiers.get(Kind::Result, &key).await,
        Found::Miss { .. }
    ));
    for _ in 0..20 {
        assert!(matches!(
            tiers.get(Kind::Result, &key).await,
            Found::Miss { .. }
        ));
    }
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "21 lookups took {:?}: the store was not skipped",
        started.elapsed()
    );
    let stats = tiers.tiers()[0].stats.drain();
    assert!(stats.contains(&("timeouts".into(), 1)), "{stats:?}");
    assert!(stats.contains(&("skipped".into(), 20)), "{stats:?}");
    // A write to the skipped store is dropped at once, and flushing does not hang.
    let object =
        Verified::check(Kind::Result, &key, encoded(Kind::Result, &key, 10)).expect("valid object");
    assert!(tiers.put(object));
    assert!(tiers.flush(Duration::from_secs(2)).await);
}

/// An HTTP server that sends a valid header, then one body byte every 100 ms, or (`flood`)
/// a 10 MiB body at full speed.
async fn trickle(flood: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let header = if flood {
                    "HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
                };
                if stream.write_all(header.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    let piece: &[u8] = if flood {
                        // 64 KiB pieces as fast as the client takes them, of a 10 MiB body.
                        &[b'x'; 65_536]
                    } else {
                        b"x"
                    };
                    if flood {
                        if stream.write_all(piece).await.is_err() {
                            return;
                        }
                    } else {
                        if stream.write_all(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        }
    });
    address
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn a_trickling_store_is_cut_off_at_the_deadline() {
    let address = trickle(false).await;
    let store = s3_at(address, Duration::from_millis(500));
    let started = Instant::now();
    let error = store
        .get(Kind::Result, &Digest::of(b"k"))
        .await
        .expect_err("cut off");
    assert!(error.is_timeout(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn a_body_longer_than_the_cap_is_cut_off() {
    let address = trickle(true).await;
    // The cap is lowered so that the test need not send a gigabyte; the code path is the one
    // that stops a body at 1 GiB.
    let store = s3_at(address, Duration::from_secs(120)).with_max_object_len(1 << 20);
    let error = store
        .get(Kind::Result, &Digest::of(b"k"))
        .await
        .expect_err("cut off");
    assert!(
        matches!(error, RemoteError::TooLarge { .. }),
        "a body must stop at the cap whatever its length header says: {error:?}"
    );
}

#[tokio::test]
async fn cluster_reads_fall_back_to_replicas_and_repair() {
    // A member on a closed port: connections are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_address = closed.local_addr().expect("address");
    drop(closed);
    let dead = OpendalStore::open(&remote_config(redis_at(closed_address), 500)).expect("store");
    let (live, members) = memory_members(3);
    let healthy = Cluster::new("c".into(), members, 2).expect("cluster");
    let keys: Vec<Digest> = (0..60u32)
        .map(|seed| Digest::of(&seed.to_le_bytes()))
        .collect();
    for key in &keys {
        healthy
            .put(Kind::Result, key, encoded(Kind::Result, key, 64))
            .await
            .expect("put");
    }
    // Each key is on exactly two members.
    for key in &keys {
        let mut copies = 0;
        for store in &live {
            copies += usize::from(store.get(Kind::Result, key).await.expect("get").is_some());
        }
        assert_eq!(copies, 2);
    }
    // The same members, but the first one's name now points at a dead server.
    let dead: Arc<dyn Store> = Arc::new(RenamedStore {
        name: live[0].name().to_owned(),
        inner: Arc::new(dead),
    });
    let degraded = Cluster::new(
        "c".into(),
        vec![
            (dead, Duration::from_secs(30)),
            (live[1].clone() as Arc<dyn Store>, Duration::from_secs(30)),
            (live[2].clone() as Arc<dyn Store>, Duration::from_secs(30)),
        ],
        2,
    )
    .expect("cluster");
    let started = Instant::now();
    for key in &keys {
        assert!(
            degraded
                .get(Kind::Result, key)
                .await
                .expect("get")
                .is_some(),
            "every key still hits with one member down"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Writes while it is down land on the two live members.
    let fresh = Digest::of(b"written while down");
    degraded
        .put(Kind::Result, &fresh, encoded(Kind::Result, &fresh, 64))
        .await
        .expect("put");
    assert!(live[1]
        .get(Kind::Result, &fresh)
        .await
        .expect("get")
        .is_some());
    assert!(live[2]
        .get(Kind::Result, &fresh)
        .await
        .expect("get")
        .is_some());

    // Read repair: a copy lost from one member comes back after a read.
    let key = keys[0];
    let ranking = healthy.ranking(Kind::Result, &key);
    live[ranking[0]]
        .delete(Kind::Result, &key)
        .await
        .expect("delete");
    assert!(healthy
        .get(Kind::Result, &key)
        .await
        .expect("get")
        .is_some());
    assert!(
        eventually(|| async {
            live[ranking[0]]
                .get(Kind::Result, &key)
                .await
                .expect("get")
                .is_some()
        })
        .await,
        "the entry was not written back"
    );
}

/// A store under another name, so a dead server can take a live member's place in hashing.
#[derive(Debug)]
struct RenamedStore {
    name: String,
    inner: Arc<dyn Store>,
}

#[async_trait::async_trait]
impl Store for RenamedStore {
    fn name(&self) -> &str {
        &self.name
    }
    async fn get(&self, kind: Kind, key: &Digest) -> Result<Option<Bytes>, RemoteError> {
        self.inner.get(kind, key).await
    }
    async fn put(&self, kind: Kind, key: &Digest, object: Bytes) -> Result<(), RemoteError> {
        self.inner.put(kind, key, object).await
    }
    async fn exists(&self, kind: Kind, key: &Digest) -> Result<bool, RemoteError> {
        self.inner.exists(kind, key).await
    }
    async fn delete(&self, kind: Kind, key: &Digest) -> Result<(), RemoteError> {
        self.inner.delete(kind, key).await
    }
}

#[tokio::test]
async fn watermark_scans_once_then_only_past_ten_percent_over() {
    let store = memory_store("s3-like");
    let object_len = encoded(Kind::Result, &Digest::of(b"probe"), 1_000).len() as u64;
    let max_size = object_len * 20;
    let tiers = Tiers::new(vec![tier(store.clone(), Some(max_size))]);
    let watermark = || tiers.tiers()[0].watermark.as_ref().expect("a limit");
    let put = |seed: u32| {
        let key = Digest::of(&seed.to_le_bytes());
        Verified::check(Kind::Result, &key, encoded(Kind::Result, &key, 1_000)).expect("valid")
    };
    // Written one at a time so that the order of writes is the order of their timestamps.
    for seed in 0..22 {
        assert!(tiers.put(put(seed)));
        while tiers.queued_bytes() > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        watermark().scans(),
        1,
        "one scan at the first write, none per put after"
    );
    assert_eq!(store.list().await.expect("list").len(), 22);
    // The 23rd object takes the estimate past 110%: a scan trims to 90%.
    assert!(tiers.put(put(22)));
    assert!(tiers.flush(Duration::from_secs(5)).await);
    assert_eq!(watermark().scans(), 2);
    let left = store.list().await.expect("list");
    let total: u64 = left.iter().map(|object| object.size).sum();
    assert!(total <= max_size / 10 * 9, "{total} > 90% of {max_size}");
    assert!(tiers.tiers()[0]
        .stats
        .drain()
        .iter()
        .any(|(name, value)| name == "evicted" && *value > 0));
}

#[tokio::test]
async fn disk_tier_stores_only_verified_objects() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let disk = Arc::new(DiskStore::open(dir.path(), DiskConfig::default()).expect("disk"));
    let tier = DiskTier::new("disk".into(), disk);
    let key = Digest::of(b"k");
    let object = encoded(Kind::Manifest, &key, 300);
    tier.put(Kind::Manifest, &key, object.clone())
        .await
        .expect("put");
    assert_eq!(
        tier.get(Kind::Manifest, &key).await.expect("get"),
        Some(object)
    );
    assert!(tier
        .put(
            Kind::Manifest,
            &Digest::of(b"other"),
            Bytes::from_static(b"junk")
        )
        .await
        .is_err());
    tier.delete(Kind::Manifest, &key).await.expect("delete");
    assert!(!tier.exists(Kind::Manifest, &key).await.expect("exists"));
}

#[test]
fn namespace_names_are_checked() {
    for good in ["tenant-a", "A.b_c-9", "x", &"n".repeat(MAX_NAMESPACE_LEN)] {
        assert!(check_namespace("s", good).is_ok(), "{good}");
    }
    for (bad, needle) in [
        ("", "1 to 64"),
        (&"n".repeat(MAX_NAMESPACE_LEN + 1), "1 to 64"),
        (".hidden", "starts with '.'"),
        ("a/b", "'/'"),
        ("a*", "'*'"),
        ("caf\u{e9}", "'\u{e9}'"),
        ("r", "unscoped layout"),
        ("m", "unscoped layout"),
    ] {
        let error = check_namespace("s", bad).expect_err(bad).to_string();
        assert!(
            error.contains(needle) && error.contains(&format!("{bad:?}")),
            "{bad:?}: {error}"
        );
    }
    let key = Digest::of(b"k");
    let hex = key.to_hex();
    assert_eq!(
        object_path_in(Some("t1"), Kind::Result, &key).expect("valid"),
        format!("cache/t1/r/{}/{}", &hex[..2], &hex[2..])
    );
    assert_eq!(
        object_path_in(None, Kind::Manifest, &key).expect("valid"),
        object_path(Kind::Manifest, &key)
    );
}

#[tokio::test]
async fn scoped_views_keep_namespaces_apart() {
    let store = memory_store("mem");
    let key = Digest::of(b"same key");
    let a = store.scoped("tenant-a").expect("scoped");
    let b = store.scoped("tenant-b").expect("scoped");
    let object_a = encoded(Kind::Result, &key, 100);
    let object_b = encoded(Kind::Result, &key, 300);
    a.put(Kind::Result, &key, object_a.clone())
        .await
        .expect("put");
    assert_eq!(b.get(Kind::Result, &key).await.expect("get"), None);
    assert!(!b.exists(Kind::Result, &key).await.expect("exists"));
    assert_eq!(store.get(Kind::Result, &key).await.expect("get"), None);
    b.put(Kind::Result, &key, object_b.clone())
        .await
        .expect("put");
    b.put(Kind::Manifest, &key, object_b.clone())
        .await
        .expect("put");
    store
        .put(Kind::Result, &key, object_a.clone())
        .await
        .expect("put");
    assert_eq!(
        a.get(Kind::Result, &key).await.expect("get"),
        Some(object_a.clone())
    );
    assert_eq!(
        b.get(Kind::Result, &key).await.expect("get"),
        Some(object_b.clone())
    );
    // Where they are, as the bucket sees it.
    let mut paths: Vec<String> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|object| object.path)
        .collect();
    paths.sort();
    let mut expected = vec![
        object_path(Kind::Result, &key),
        object_path_in(Some("tenant-a"), Kind::Result, &key).expect("valid"),
        object_path_in(Some("tenant-b"), Kind::Manifest, &key).expect("valid"),
        object_path_in(Some("tenant-b"), Kind::Result, &key).expect("valid"),
    ];
    expected.sort();
    assert_eq!(paths, expected);
    assert_eq!(
        b.list().await.expect("list").len(),
        2,
        "a view lists its own"
    );
    // A view of a view is the other namespace, not a nested one.
    let again = a.scoped("tenant-b").expect("scoped");
    assert_eq!(
        again.get(Kind::Result, &key).await.expect("get"),
        Some(object_b.clone())
    );

    let b_bytes = (object_b.len() * 2) as u64;
    assert_eq!(
        store.namespace_usage("tenant-b").await.expect("usage"),
        (2, b_bytes)
    );
    assert_eq!(
        a.namespace_usage("tenant-a").await.expect("usage"),
        (1, object_a.len() as u64)
    );
    assert_eq!(store.delete_namespace("tenant-b").await.expect("delete"), 2);
    assert_eq!(
        store.namespace_usage("tenant-b").await.expect("usage"),
        (0, 0)
    );
    assert_eq!(b.get(Kind::Result, &key).await.expect("get"), None);
    assert!(a.get(Kind::Result, &key).await.expect("get").is_some());
    assert!(store.get(Kind::Result, &key).await.expect("get").is_some());
    assert_eq!(store.delete_namespace("tenant-b").await.expect("again"), 0);
    assert!(matches!(store.scoped("r"), Err(RemoteError::Config { .. })));
    assert!(matches!(
        store.delete_namespace("../x").await,
        Err(RemoteError::Config { .. })
    ));
}

#[tokio::test]
async fn a_scoped_cluster_ranks_the_same_and_shares_health() {
    let (live, members) = memory_members(3);
    let cluster = Cluster::new("c".into(), members, 2).expect("cluster");
    let scoped = cluster.scoped("t").expect("scoped");
    let keys: Vec<Digest> = (0..20u32)
        .map(|seed| Digest::of(&seed.to_le_bytes()))
        .collect();
    for key in &keys {
        scoped
            .put(Kind::Result, key, encoded(Kind::Result, key, 64))
            .await
            .expect("put");
    }
    for key in &keys {
        let ranking = cluster.ranking(Kind::Result, key);
        for (position, index) in ranking.iter().enumerate() {
            let view = live[*index].scoped("t").expect("scoped");
            let held = view.get(Kind::Result, key).await.expect("get").is_some();
            assert_eq!(held, position < 2, "copies on the first two of the ranking");
            assert!(live[*index]
                .get(Kind::Result, key)
                .await
                .expect("get")
                .is_none());
        }
    }
    let object_len = encoded(Kind::Result, &keys[0], 64).len() as u64;
    assert_eq!(
        cluster.namespace_usage("t").await.expect("usage"),
        (40, 40 * object_len),
        "each copy counts"
    );
    assert_eq!(cluster.delete_namespace("t").await.expect("delete"), 40);
    assert!(scoped
        .get(Kind::Result, &keys[0])
        .await
        .expect("get")
        .is_none());
}

#[tokio::test]
async fn a_disk_tier_keeps_namespaces_in_subdirectories() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let disk = Arc::new(DiskStore::open(dir.path(), DiskConfig::default()).expect("disk"));
    let tier = DiskTier::new("disk".into(), disk);
    let key = Digest::of(b"k");
    let a = tier.scoped("a").expect("scoped");
    let b = tier.scoped("b").expect("scoped");
    let object = encoded(Kind::Result, &key, 300);
    a.put(Kind::Result, &key, object.clone())
        .await
        .expect("put");
    tier.put(Kind::Result, &key, object.clone())
        .await
        .expect("put");
    assert_eq!(b.get(Kind::Result, &key).await.expect("get"), None);
    assert!(dir.path().join("namespaces/a").is_dir());
    let (objects, bytes) = tier.namespace_usage("a").await.expect("usage");
    assert_eq!(objects, 1);
    assert!(bytes >= object.len() as u64, "{bytes}");
    assert_eq!(tier.namespace_usage("b").await.expect("usage"), (0, 0));
    assert_eq!(tier.delete_namespace("a").await.expect("delete"), 1);
    assert!(!dir.path().join("namespaces/a").exists());
    assert_eq!(a.get(Kind::Result, &key).await.expect("get"), None);
    assert!(tier.get(Kind::Result, &key).await.expect("get").is_some());
    assert_eq!(tier.delete_namespace("b").await.expect("nothing"), 0);
}

#[tokio::test]
async fn namespace_calls_to_a_black_hole_end_at_the_listing_deadline() {
    let (address, _server) = black_hole().await;
    let mut config = remote_config(redis_at(address), 300);
    config.options.list_timeout_ms = 400;
    let store = OpendalStore::open(&config).expect("store");
    let started = Instant::now();
    let error = store.delete_namespace("t").await.expect_err("no answer");
    assert!(error.is_timeout(), "{error}");
    let error = store.namespace_usage("t").await.expect_err("no answer");
    assert!(error.is_timeout(), "{error}");
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        started.elapsed()
    );
}
