//! Reads and writes through a real Redis Cluster while it changes under them: a key's slot
//! moves to another primary (with the `ASK` state in between), and a primary is killed until
//! its replica takes over. A read ends in a verified hit, or a clean miss; never an error
//! that surfaces as an object, never a wrong object. After the failover, writes work, and a
//! namespace is deleted on every primary, the promoted replica included.

use std::time::{Duration, Instant};

use hpcc_store::remote::{object_path, Found, Store, Tier, Tiers};
use hpcc_store::Kind;

use crate::harness::{self, check, encoded, failed, keys, write_all, Case, Need, TestResult};
use crate::namespaces::deleted_on_every_primary;
use crate::redis_cluster::RedisCluster;
use crate::servers;

pub fn cases() -> Vec<Case> {
    vec![
        (
            "redis_cluster_a_key_whose_slot_moves_still_hits",
            &[Need::Redis],
            slot_moves,
        ),
        (
            "redis_cluster_a_failed_primary_s_replica_serves_and_takes_writes",
            &[Need::Redis],
            failover,
        ),
    ]
}

fn tiers_over(store: &std::sync::Arc<dyn Store>) -> Tiers {
    Tiers::new(vec![Tier::new(
        std::sync::Arc::clone(store),
        Duration::from_secs(1),
        true,
        None,
    )])
}

/// A lookup through the tiers: the verified object, or `None` for a clean miss.
async fn lookup(tiers: &Tiers, key: &hpcc_core::digest::Digest) -> Result<Option<Vec<u8>>, String> {
    match tiers.get(Kind::Result, key).await {
        Found::Hit { object, .. } => Ok(Some(object.object().to_vec())),
        Found::Miss { corrupt: 0 } => Ok(None),
        Found::Miss { corrupt } => Err(format!("{corrupt} corrupt objects read")),
    }
}

fn slot_moves() -> TestResult {
    let cluster = RedisCluster::start()?;
    let store = cluster.store(5_000)?;
    harness::run(async {
        let tiers = tiers_over(&store);
        let written = keys("moving", 20);
        let objects = write_all(store.as_ref(), &written, 5).await?;
        let name = object_path(Kind::Result, &written[0]);
        let slot = cluster.slot(&name)?;
        let from = cluster.owner(slot)?;
        let to = cluster
            .table()?
            .into_iter()
            .find(|node| node.primary && !node.slots.is_empty() && node.id != from.id)
            .ok_or("no other primary")?;
        let first = objects[0].to_vec();
        // While the key is on the new owner but the slot is still the old one's, the old
        // owner answers ASK; a blocking runtime thread would stall, so the check runs on
        // its own runtime thread through a channel.
        let handle = tokio::runtime::Handle::current();
        let between = || -> TestResult {
            // The old owner of a migrating slot sends clients of a key it no longer has on.
            let said = servers::redis_cli(from.port, &["EXISTS", &name])?;
            check(said.trim().starts_with("ASK"), || {
                format!("{name} on its old primary: EXISTS said {said:?}, not ASK")
            })?;
            let store = std::sync::Arc::clone(&store);
            let key = written[0];
            let seen = std::thread::spawn(move || {
                handle.block_on(async move { store.get(Kind::Result, &key).await })
            })
            .join()
            .map_err(|_| "the lookup thread panicked".to_owned())?
            .map_err(failed("get while the slot migrates (ASK)"))?;
            check(seen.as_deref() == Some(&first[..]), || {
                "while migrating: not the object written".into()
            })
        };
        cluster.move_slot(slot, &from, &to, between)?;
        check(cluster.owner(slot)?.id == to.id, || {
            "the slot did not move".into()
        })?;
        // After the move the old owner answers MOVED; every key is still a verified hit.
        for (key, object) in written.iter().zip(&objects) {
            let seen = lookup(&tiers, key).await?;
            check(seen.as_deref() == Some(&object[..]), || {
                format!(
                    "{} after the slot moved: {:?} bytes",
                    key.to_hex(),
                    seen.map(|s| s.len())
                )
            })?;
        }
        // Writes to the moved slot go to its new owner.
        let again = encoded(Kind::Result, &written[0], 6, 300)?;
        store
            .put(Kind::Result, &written[0], again.clone())
            .await
            .map_err(failed("put after the move"))?;
        check(
            servers::redis_cli(to.port, &["EXISTS", &name])?.trim() == "1",
            || "the rewritten key is not on the new owner".into(),
        )?;
        let seen = lookup(&tiers, &written[0]).await?;
        check(seen.as_deref() == Some(&again[..]), || "the rewrite".into())?;
        let stats = tiers.tiers()[0].stats.drain();
        check(
            !stats
                .iter()
                .any(|(name, value)| name == "errors" && *value > 0),
            || format!("errors through the move: {stats:?}"),
        )
    })
}

fn failover() -> TestResult {
    let mut cluster = RedisCluster::start()?;
    let store = cluster.store(5_000)?;
    let written = keys("failover", 30);
    let runtime = harness::runtime()?;
    let objects = runtime.block_on(write_all(store.as_ref(), &written, 7))?;
    let victim = cluster.owner(cluster.slot(&object_path(Kind::Result, &written[0]))?)?;
    let replica = cluster
        .table()?
        .into_iter()
        .find(|node| node.primary_id.as_deref() == Some(victim.id.as_str()))
        .ok_or("the victim has no replica")?;
    // Asynchronous replication: wait until the replica holds what its primary holds, so
    // that the failover loses nothing and every read must hit.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let primary_keys = servers::redis_cli(victim.port, &["DBSIZE"])?;
        let replica_keys = servers::redis_cli(replica.port, &["DBSIZE"])?;
        if primary_keys == replica_keys {
            break;
        }
        check(Instant::now() < deadline, || {
            format!("the replica has {replica_keys} keys, its primary {primary_keys}")
        })?;
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill(victim.port)?;
    let killed = Instant::now();
    // A read of the dead primary's key while its replica is not yet promoted: the client
    // retries with fresh slot maps until the replica serves it, or the deadline passes and
    // the tiers count a clean miss. Either way, never an error as an object.
    let during = {
        let store = std::sync::Arc::clone(&store);
        let key = written[0];
        runtime.spawn(async move {
            let tiers = tiers_over(&store);
            let started = Instant::now();
            let found = lookup(&tiers, &key).await;
            (found, started.elapsed(), tiers.tiers()[0].stats.drain())
        })
    };
    cluster.wait_healthy(Duration::from_secs(20))?;
    let took_over = killed.elapsed();
    let (during, during_took, during_stats) = runtime
        .block_on(during)
        .map_err(failed("the read during the failover"))?;
    match during? {
        Some(seen) => check(seen == objects[0][..], || {
            "a wrong object during the failover".into()
        })?,
        // A miss must come from the store failing (an error or the deadline), not from the
        // store saying the key is absent: the replica had it.
        None => check(
            during_stats
                .iter()
                .any(|(name, value)| (name == "errors" || name == "timeouts") && *value > 0)
                && !during_stats
                    .iter()
                    .any(|(name, value)| name == "misses" && *value > 0),
            || format!("a miss during the failover after {during_took:?}: {during_stats:?}"),
        )?,
    }
    println!(
        "failover: the replica took over in {took_over:?}; a read meanwhile took {during_took:?}"
    );
    check(
        cluster
            .owner(cluster.slot(&object_path(Kind::Result, &written[0]))?)?
            .id
            == replica.id,
        || "the replica did not take over the slot".into(),
    )?;
    runtime.block_on(async {
        let tiers = tiers_over(&store);
        // The client still holds a connection to the dead primary; it must find the new one.
        let started = Instant::now();
        let mut hits = 0;
        for (key, object) in written.iter().zip(&objects) {
            if let Some(seen) = lookup(&tiers, key).await? {
                check(seen == object[..], || "a wrong object after failover".into())?;
                hits += 1;
            }
        }
        let stats = tiers.tiers()[0].stats.drain();
        check(hits == written.len(), || {
            format!(
                "{hits} of {} hits after the failover (took over in {took_over:?}; reads took {:?}); stats {stats:?}",
                written.len(),
                started.elapsed()
            )
        })?;
        // Writes work again, including to the promoted replica's slots.
        for key in keys("after", 20) {
            let object = encoded(Kind::Result, &key, 8, 100)?;
            store
                .put(Kind::Result, &key, object.clone())
                .await
                .map_err(failed("put after the failover"))?;
            let seen = lookup(&tiers, &key).await?;
            check(seen.as_deref() == Some(&object[..]), || {
                "a write after the failover does not read back".into()
            })?;
        }
        // A namespace is found and deleted on the promoted replica too (the dead primary
        // serves no slots now and is not asked).
        deleted_on_every_primary(&cluster, &store, "after").await
    })
}
