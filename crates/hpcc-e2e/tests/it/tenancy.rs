//! Tenants own their storage: on the in-process farm (scheduler, sandbox workers), with the
//! real redis-server and moto's S3 server as the fleet's shared cache tiers.
//!
//! - Another tenant's identical job is compiled for it and audited as its own: no hit flag,
//!   and its latency is a compile's, not a hit's (measured).
//! - A sharing group shares hits; audit rows still name each tenant.
//! - A paranoid tenant refuses clients that are not in paranoid mode.
//! - Two workers share hits through Redis and S3, in the tenant's namespace only; corrupted
//!   and truncated remote objects are misses, counted, recompiled; a store that goes down
//!   costs one failed call, then the worker compiles without asking it.

use std::time::{Duration, Instant};

use hpcc_core::config::{RemoteConfig, SharingGroup, WorkerCacheConfig};
use hpcc_core::digest::Digest;
use hpcc_daemon::farm::{FarmError, RemoteOutcome};
use hpcc_store::remote::Store;
use hpcc_store::Kind;
use hpcc_worker::policy::{cache_key, injected_flags, KeyInputs};

use crate::farm::{request, succeeded, text, FarmSpec, Farmland};
use crate::{Case, Need, TestResult};

const FLAGS: &[&str] = &["-O2"];

fn flags() -> Vec<String> {
    FLAGS.iter().map(|flag| (*flag).to_owned()).collect()
}

/// A preprocessed C source unique to `name`.
fn source(name: &str) -> Vec<u8> {
    format!(
        "# 1 \"/src/{name}.c\"\nint {name}(int x) {{ int s = 0; for (int i = 0; i < x; i++) s += i * {}; return s; }}\n",
        name.len()
    )
    .into_bytes()
}

/// Compiles `source` for `tenant` (`a` or `b`) through the scheduler; the outcome and its
/// wall time.
fn compile(
    land: &Farmland,
    tenant: &str,
    source: &[u8],
) -> Result<(RemoteOutcome, Duration), String> {
    let farm = land.farm(tenant)?;
    let token = if tenant == "a" {
        land.token_a()
    } else {
        land.token_b()
    };
    let started = Instant::now();
    let outcome = land
        .runtime
        .block_on(farm.compile(request(source.to_vec(), &flags()), &token))
        .map_err(text)?;
    Ok((outcome, started.elapsed()))
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Tenant B sends exactly tenant A's jobs: each is compiled in a session of B's, audited as
/// B's, and tells B nothing of A's entry: no hit flag, and B's latency for A's jobs is that
/// of jobs nobody has compiled (measured, interleaved, medians compared).
fn identical_jobs_of_two_tenants_are_compiled_apart() -> TestResult {
    const SOURCES: usize = 6;
    let land = Farmland::with_workers(1)?;
    let names: Vec<String> = (0..SOURCES).map(|index| format!("iso{index}")).collect();
    let mut objects = Vec::new();
    for name in &names {
        let (outcome, _) = compile(&land, "a", &source(name))?;
        objects.push(succeeded(&outcome, "a's first compile")?);
        if outcome.cache_hit {
            return Err(format!("a's first compile of {name} was a hit"));
        }
    }
    // B warms its own session first, so that neither series pays for starting it.
    compile(&land, "b", &source("warm"))?;
    let (mut known, mut unknown, mut hits) = (Vec::new(), Vec::new(), Vec::new());
    for (name, object) in names.iter().zip(&objects) {
        let (outcome, took) = compile(&land, "b", &source(name))?;
        if outcome.cache_hit || outcome.session.is_empty() || outcome.session == "cache" {
            return Err(format!(
                "b's compile of a's job {name} was served from a's entry: hit {}, session {:?}",
                outcome.cache_hit, outcome.session
            ));
        }
        if succeeded(&outcome, "b's compile")? != *object {
            return Err(format!("b's object of {name} differs from a's"));
        }
        known.push(took);
        let (outcome, took) = compile(&land, "b", &source(&format!("{name}_new")))?;
        succeeded(&outcome, "b's compile of a new job")?;
        unknown.push(took);
        let (outcome, took) = compile(&land, "a", &source(name))?;
        if !outcome.cache_hit {
            return Err(format!("a's second compile of {name} missed"));
        }
        hits.push(took);
    }
    let (known, unknown, hits) = (median(known), median(unknown), median(hits));
    let ratio = known.as_secs_f64() / unknown.as_secs_f64().max(1e-6);
    println!(
        "tenancy: medians over {SOURCES} jobs: b's compiles of a's jobs {known:?}, of jobs \
         nobody had {unknown:?} (ratio {ratio:.2}); a's hits {hits:?}"
    );
    if !(0.5..=2.0).contains(&ratio) {
        return Err(format!(
            "b's compiles of a's jobs ({known:?}) and of new jobs ({unknown:?}) differ by {ratio:.2}x"
        ));
    }
    // Audited as each tenant's; kept sources and cache entries in each tenant's own place.
    let rows = land.audit_rows(0)?;
    let of = |tenant: &str| rows.iter().filter(|row| row.tenant == tenant).count();
    if of("b") != 2 * SOURCES + 1 || of("a") != 2 * SOURCES {
        return Err(format!("audit rows: {} of a, {} of b", of("a"), of("b")));
    }
    if let Some(row) = rows
        .iter()
        .find(|row| row.tenant == "b" && !row.vm.starts_with("sandbox-"))
    {
        return Err(format!("b's row names no session of b's: {:?}", row.vm));
    }
    let dir = &land.workers[0].dir;
    for tenant in ["a", "b"] {
        let digest = Digest::of(&source(&names[0])).to_hex();
        if !dir.join(format!("sources/{tenant}/{digest}.zst")).is_file() {
            return Err(format!(
                "{tenant}'s kept source is not in sources/{tenant}/"
            ));
        }
        if !dir.join(format!("cache/tenant-{tenant}")).is_dir() {
            return Err(format!("no cache namespace tenant-{tenant}"));
        }
    }
    Ok(())
}

/// Tenants in one sharing group share hits; the rows still name the tenant.
fn a_sharing_group_shares_hits() -> TestResult {
    let land = Farmland::build(FarmSpec {
        workers: 1,
        sharing_groups: vec![SharingGroup {
            name: "eng".into(),
            tenants: vec!["a".into(), "b".into()],
        }],
        ..FarmSpec::default()
    })?;
    let (first, _) = compile(&land, "a", &source("shared"))?;
    let object = succeeded(&first, "a's compile")?;
    let (second, _) = compile(&land, "b", &source("shared"))?;
    if !second.cache_hit || succeeded(&second, "b's compile")? != object {
        return Err(format!(
            "b did not hit a's entry in their group: hit {}",
            second.cache_hit
        ));
    }
    let rows = land.audit_rows(0)?;
    let tenants: Vec<&str> = rows.iter().map(|row| row.tenant.as_str()).collect();
    if tenants != ["a", "b"] || rows[1].vm != "cache" {
        return Err(format!("rows: {rows:?}"));
    }
    if !land.workers[0].dir.join("cache/group-eng").is_dir() {
        return Err("no cache namespace group-eng".into());
    }
    Ok(())
}

/// A paranoid tenant's routes are refused to a client that is not in paranoid mode, with an
/// error that says what to set; its paranoid clients are served.
fn a_paranoid_tenant_refuses_clients_that_are_not() -> TestResult {
    let land = Farmland::build(FarmSpec {
        workers: 1,
        paranoid: [true, false],
        ..FarmSpec::default()
    })?;
    let job = || request(source("careful"), &flags());
    let careless = land.farm_with("a", false)?;
    match land
        .runtime
        .block_on(careless.compile(job(), &land.token_a()))
    {
        Err(FarmError::Scheduler(message))
            if message.contains("paranoid") && message.contains("remote_compile.paranoid") => {}
        other => return Err(format!("a careless client of a paranoid tenant: {other:?}")),
    }
    let careful = land.farm_with("a", true)?;
    let outcome = land
        .runtime
        .block_on(careful.compile(job(), &land.token_a()))
        .map_err(text)?;
    succeeded(&outcome, "a paranoid client's compile")?;
    // Tenant b is not paranoid: either mode is served.
    let outcome = land
        .runtime
        .block_on(land.farm_with("b", false)?.compile(job(), &land.token_b()))
        .map_err(text)?;
    succeeded(&outcome, "b's compile")?;
    Ok(())
}

/// The key the worker files `source`'s result under for `namespace`.
fn worker_key(land: &Farmland, namespace: &str, source: &[u8]) -> Digest {
    let digest = Digest::of(source);
    let injected = injected_flags(&digest);
    cache_key(KeyInputs {
        namespace,
        image: &land.image,
        compiler: "gcc",
        language: "cpp-output",
        flags: &flags(),
        injected: &injected,
        source_digest: &digest,
        extra_outputs: &[],
    })
}

/// Routes the next compiles to worker `to` (the other reports a full queue).
fn route_to(land: &Farmland, to: &str) -> TestResult {
    let other = if to == "w1" { "w2" } else { "w1" };
    land.unfill(to)?;
    land.fill(other)
}

fn flush(land: &Farmland) {
    for worker in &land.workers {
        land.runtime
            .block_on(worker.worker.cache().settle(Duration::from_secs(10)));
    }
}

fn counter(land: &Farmland, worker: usize, name: &str) -> u64 {
    land.workers[worker]
        .worker
        .cache()
        .counters()
        .snapshot()
        .into_iter()
        .find(|(counter, _)| *counter == name)
        .map_or(0, |(_, value)| value)
}

fn remote_counter(land: &Farmland, worker: usize, name: &str) -> u64 {
    land.workers[worker]
        .worker
        .cache()
        .remote_counters()
        .into_iter()
        .filter(|(_, counter, _)| counter == name)
        .map(|(_, _, value)| value)
        .sum()
}

/// Two workers sharing `remote`: hits across workers for the same tenant, misses for
/// another, corrupted and truncated objects recompiled, then `kill` takes the store down.
fn fleet_shares_hits(remote_table: &str, kill: &mut dyn FnMut()) -> TestResult {
    let remote = remote_of(remote_table)?;
    let cache = WorkerCacheConfig {
        remote: vec![remote.clone()],
        ..WorkerCacheConfig::default()
    };
    let land = Farmland::build(FarmSpec {
        workers: 2,
        cache,
        ..FarmSpec::default()
    })?;
    // Worker 1 compiles; worker 2 serves it as a hit, from the shared tier.
    route_to(&land, "w1")?;
    let (first, _) = compile(&land, "a", &source("fleet"))?;
    let object = succeeded(&first, "w1's compile")?;
    if first.worker != "w1" || first.cache_hit {
        return Err(format!("first: {} hit {}", first.worker, first.cache_hit));
    }
    flush(&land);
    route_to(&land, "w2")?;
    let (second, took) = compile(&land, "a", &source("fleet"))?;
    if second.worker != "w2" || !second.cache_hit || succeeded(&second, "w2's hit")? != object {
        return Err(format!(
            "w2 did not serve w1's object: worker {} hit {}",
            second.worker, second.cache_hit
        ));
    }
    println!("tenancy: a hit from the shared tier on the other worker took {took:?}");
    if counter(&land, 1, "remote_hits") != 1 {
        return Err(format!(
            "w2's counters: {:?}",
            land.workers[1].worker.cache().counters().snapshot()
        ));
    }
    // Another tenant misses: a namespace of its own, locally and remotely.
    let (other, _) = compile(&land, "b", &source("fleet"))?;
    if other.cache_hit {
        return Err("b hit a's object in the shared tier".into());
    }
    succeeded(&other, "b's compile")?;
    flush(&land);
    let store = hpcc_store::remote::open(&remote).map_err(text)?;
    for (namespace, expected) in [("tenant-a", 1), ("tenant-b", 1)] {
        let (objects, _) = land
            .runtime
            .block_on(store.namespace_usage(namespace))
            .map_err(text)?;
        if objects != expected {
            return Err(format!("{namespace} holds {objects} objects remotely"));
        }
    }
    // A corrupted and a truncated remote object: misses, counted, recompiled, never served.
    for (name, damage) in [
        (
            "garbled",
            &(|object: &[u8]| {
                let mut garbled = object.to_vec();
                let middle = garbled.len() / 2;
                garbled[middle] ^= 0xff;
                garbled
            }) as &dyn Fn(&[u8]) -> Vec<u8>,
        ),
        ("truncated", &|object: &[u8]| {
            object[..object.len() / 2].to_vec()
        }),
    ] {
        route_to(&land, "w2")?;
        let (good, _) = compile(&land, "a", &source(name))?;
        let good = succeeded(&good, "the good compile")?;
        flush(&land);
        let key = worker_key(&land, "tenant-a", &source(name));
        let scoped = store.scoped("tenant-a").map_err(text)?;
        let stored = land
            .runtime
            .block_on(scoped.get(Kind::Result, &key))
            .map_err(text)?
            .ok_or_else(|| format!("{name}: no remote object under the worker's key"))?;
        land.runtime
            .block_on(scoped.put(Kind::Result, &key, damage(&stored).into()))
            .map_err(text)?;
        let corrupt_before = counter(&land, 0, "corrupt");
        route_to(&land, "w1")?;
        let (again, _) = compile(&land, "a", &source(name))?;
        if again.worker != "w1" || again.cache_hit {
            return Err(format!(
                "{name}: worker {} served a damaged object as a hit: {}",
                again.worker, again.cache_hit
            ));
        }
        if succeeded(&again, "the recompile")? != good {
            return Err(format!("{name}: the recompiled object differs"));
        }
        if counter(&land, 0, "corrupt") != corrupt_before + 1 {
            return Err(format!("{name}: the damaged object was not counted"));
        }
    }
    deleting_a_tenant_empties_every_tier(&land, remote_table, store.as_ref())?;
    // The store goes down: the first lookup fails, the store is skipped for its cooldown, and
    // every compile is served.
    kill();
    route_to(&land, "w1")?;
    let errors_before = remote_counter(&land, 0, "errors");
    let mut times = Vec::new();
    for index in 0..3 {
        let (outcome, took) = compile(&land, "a", &source(&format!("down{index}")))?;
        succeeded(&outcome, "a compile with the store down")?;
        times.push(took);
    }
    let errors = remote_counter(&land, 0, "errors") - errors_before;
    let skipped = remote_counter(&land, 0, "skipped");
    println!("tenancy: compiles with the store down took {times:?}");
    if errors != 1 || skipped < 2 {
        return Err(format!(
            "store down: {errors} failed calls (expected 1), {skipped} skipped"
        ));
    }
    Ok(())
}

/// `hpcc-worker tenants` and `delete-tenant a` on worker 2's state directory: tenant a's
/// namespace leaves the local disk and the shared tier, its kept sources go; b's stay, and
/// a's next compile there is a miss.
fn deleting_a_tenant_empties_every_tier(
    land: &Farmland,
    remote_table: &str,
    store: &dyn Store,
) -> TestResult {
    let dir = &land.workers[1].dir;
    let config = dir.join("retention.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"w2\"\nlisten = \"127.0.0.1:1\"\ninsecure_plaintext = true\n\
             scheduler = \"http://127.0.0.1:1\"\nworker_secret_file = \"/dev/null\"\n\
             routing_public_key = \"unused\"\nstate_dir = {:?}\nagent = \"/bin/true\"\n\
             runtime = \"sandbox\"\n[[cache.remote]]\n{remote_table}",
            dir.display().to_string()
        ),
    )
    .map_err(text)?;
    let worker = |args: &[&str]| -> Result<String, String> {
        let output =
            std::process::Command::new(crate::client::client_binaries()?.join("hpcc-worker"))
                .args(args)
                .arg("--config")
                .arg(&config)
                .output()
                .map_err(text)?;
        if !output.status.success() {
            return Err(format!(
                "hpcc-worker {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let listed = worker(&["tenants"])?;
    for needle in [
        "namespace tenant-a: local cache",
        "namespace tenant-b:",
        "tenant a: kept sources",
        "tenant b: kept sources",
    ] {
        if !listed.contains(needle) {
            return Err(format!("`tenants` does not list {needle:?}:\n{listed}"));
        }
    }
    let deleted = worker(&["delete-tenant", "a"])?;
    println!("tenancy: delete-tenant a:\n{deleted}");
    let usage = |namespace: &str| {
        land.runtime
            .block_on(store.namespace_usage(namespace))
            .map(|(objects, _)| objects)
            .map_err(text)
    };
    if usage("tenant-a")? != 0 || usage("tenant-b")? == 0 {
        return Err(format!(
            "after deleting a: tenant-a {} objects, tenant-b {}",
            usage("tenant-a")?,
            usage("tenant-b")?
        ));
    }
    if dir.join("cache/tenant-a").exists() || dir.join("sources/a").exists() {
        return Err("a's local namespace or kept sources are left".into());
    }
    if !dir.join("cache/tenant-b").is_dir() || !dir.join("sources/b").is_dir() {
        return Err("b's data went with a's".into());
    }
    route_to(land, "w2")?;
    let (outcome, _) = compile(land, "a", &source("fleet"))?;
    if outcome.cache_hit {
        return Err("a hit on w2 after its data was deleted".into());
    }
    let bad = std::process::Command::new(crate::client::client_binaries()?.join("hpcc-worker"))
        .args(["delete-tenant", "../a", "--config"])
        .arg(&config)
        .output()
        .map_err(text)?;
    if bad.status.code() != Some(2)
        || !String::from_utf8_lossy(&bad.stderr).contains("not a tenant id")
    {
        return Err(format!("delete-tenant ../a: {bad:?}"));
    }
    Ok(())
}

fn remote_of(toml_table: &str) -> Result<RemoteConfig, String> {
    let cache: WorkerCacheConfig =
        toml::from_str(&format!("[[remote]]\n{toml_table}")).map_err(text)?;
    cache.remote.into_iter().next().ok_or("no remote".into())
}

fn fleet_shares_hits_through_redis() -> TestResult {
    let dir = tempfile::tempdir().map_err(text)?;
    let mut server = crate::servers::redis(dir.path())?;
    let remote = format!(
        "type = \"redis\"\nendpoint = \"redis://127.0.0.1:{}\"\nread_timeout_ms = 1000\n",
        server.port
    );
    fleet_shares_hits(&remote, &mut || server.kill())
}

fn fleet_shares_hits_through_s3() -> TestResult {
    let mut server = crate::servers::s3("fleet")?;
    let remote = format!(
        "type = \"s3\"\nbucket = \"fleet\"\nendpoint = \"http://127.0.0.1:{}\"\nread_timeout_ms = 2000\n",
        server.port
    );
    fleet_shares_hits(&remote, &mut || server.kill())
}

/// `count` compiles of tenant b, one after another (a `make -j1`), of sources named after
/// `series`: each one's latency.
fn series_of_b(land: &Farmland, series: &str, count: usize) -> Result<Vec<Duration>, String> {
    let mut times = Vec::new();
    for index in 0..count {
        let (outcome, took) = compile(land, "b", &source(&format!("{series}{index}")))?;
        succeeded(&outcome, "b's compile")?;
        times.push(took);
    }
    Ok(times)
}

fn percentile(mut times: Vec<Duration>, percent: usize) -> Duration {
    times.sort();
    times[(times.len() * percent / 100).min(times.len() - 1)]
}

/// Tenant a floods a two-slot worker with 300 jobs while tenant b builds 20 files one at a
/// time: b is served fairly (its p50 within 2x of b alone, measured before and after the
/// flood), and every one of a's jobs finishes.
fn a_flood_of_one_tenant_leaves_another_its_share() -> TestResult {
    const FLOOD: usize = 300;
    const FLOOD_CLIENTS: usize = 32;
    const OWN: usize = 20;
    let land = Farmland::build(FarmSpec {
        workers: 1,
        capacity: 2,
        ..FarmSpec::default()
    })?;
    // Both tenants' sessions warm, then b alone.
    compile(&land, "a", &source("warm_a"))?;
    let alone = series_of_b(&land, "alone", OWN)?;
    let farm = land.farm("a")?;
    let token = land.token_a();
    // 300 jobs from 32 clients at once (a `make -j32`): twice what the scheduler lets onto
    // the worker, which queues the rest.
    let flood: Vec<_> = (0..FLOOD_CLIENTS)
        .map(|client| {
            let (farm, token) = (farm.clone(), token.clone());
            land.runtime.spawn(async move {
                let mut outcomes = Vec::new();
                for index in (client..FLOOD).step_by(FLOOD_CLIENTS) {
                    let job = request(source(&format!("flood{index}")), &flags());
                    outcomes.push((index, farm.compile(job, &token).await));
                }
                outcomes
            })
        })
        .collect();
    let worker = &land.workers[0].worker;
    let deadline = Instant::now() + Duration::from_secs(60);
    // The scheduler holds a's flood back once the worker is full (a's routes wait), so the
    // worker's queue is the overcommit's, not 300.
    while worker.queued() < 8 {
        if Instant::now() > deadline {
            return Err(format!(
                "a's flood never queued: {} waiting",
                worker.queued()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let flooded = series_of_b(&land, "flooded", OWN)?;
    let still_queued = worker.queued();
    let mut failed = Vec::new();
    let mut finished = 0;
    for client in flood {
        for (index, outcome) in land.runtime.block_on(client).map_err(text)? {
            match outcome {
                Ok(outcome) if outcome.exit_code == 0 => finished += 1,
                other => failed.push(format!("flood{index}: {other:?}")),
            }
        }
    }
    if finished + failed.len() != FLOOD {
        return Err(format!("{finished} of a's {FLOOD} jobs answered"));
    }
    // b alone again: the baseline is the slower of the two, so that other tests loading the
    // machine before or after the flood do not count against the fair share.
    let after = series_of_b(&land, "after", OWN)?;
    let alone = if percentile(after.clone(), 50) > percentile(alone.clone(), 50) {
        after
    } else {
        alone
    };
    let (alone_p50, alone_p99) = (percentile(alone.clone(), 50), percentile(alone, 99));
    let (flooded_p50, flooded_p99) = (percentile(flooded.clone(), 50), percentile(flooded, 99));
    println!(
        "tenancy: b alone p50 {alone_p50:?} p99 {alone_p99:?}; under a's flood of {FLOOD} \
         p50 {flooded_p50:?} p99 {flooded_p99:?} ({still_queued} of a's still waiting at the end)"
    );
    if !failed.is_empty() {
        return Err(format!(
            "{} of a's jobs failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        ));
    }
    if still_queued == 0 {
        return Err("a's flood was over before b's series ended: nothing was measured".into());
    }
    if flooded_p50 > alone_p50 * 2 {
        return Err(format!(
            "b's p50 went from {alone_p50:?} alone to {flooded_p50:?} under a's flood"
        ));
    }
    Ok(())
}

/// Over its quotas a tenant's job is refused as resource exhausted, naming the quota; the
/// other tenant is not limited.
fn quotas_refuse_naming_the_quota() -> TestResult {
    let land = Farmland::build(FarmSpec {
        workers: 1,
        quotas: [
            hpcc_core::config::TenantQuota {
                max_jobs: Some(1),
                max_source_bytes: Some(hpcc_core::config::ByteSize(4096)),
                ..Default::default()
            },
            Default::default(),
        ],
        ..FarmSpec::default()
    })?;
    let big = format!(
        "# 1 \"/src/big.c\"\nint big(void) {{ return 1; }}\n{}",
        "/* padding */\n".repeat(1000)
    )
    .into_bytes();
    match compile(&land, "a", &big) {
        Err(message)
            if message.contains("ResourceExhausted")
                && message.contains("4096 bytes of sources") => {}
        other => return Err(format!("a's source over its upload quota: {other:?}")),
    }
    let (outcome, _) = compile(&land, "b", &big)?;
    succeeded(&outcome, "b's big source (no quota)")?;
    // One job at a time for a: six at once, the rest refused naming the quota.
    let farm = land.farm("a")?;
    let token = land.token_a();
    let jobs: Vec<_> = (0..6)
        .map(|index| {
            let (farm, token) = (farm.clone(), token.clone());
            let job = request(source(&format!("quota{index}")), &flags());
            land.runtime
                .spawn(async move { farm.compile(job, &token).await })
        })
        .collect();
    let (mut served, mut refused) = (0, 0);
    for job in jobs {
        match land.runtime.block_on(job).map_err(text)? {
            Ok(outcome) if outcome.exit_code == 0 => served += 1,
            Err(FarmError::Worker { message, .. })
                if message.contains("ResourceExhausted")
                    && message.contains("quota of 1 concurrent jobs") =>
            {
                refused += 1
            }
            other => return Err(format!("a job of a over its job quota: {other:?}")),
        }
    }
    if served == 0 || refused == 0 {
        return Err(format!("{served} served, {refused} refused of 6 at once"));
    }
    Ok(())
}

pub fn cases() -> Vec<Case> {
    vec![
        (
            "tenancy::a_flood_of_one_tenant_leaves_another_its_share",
            &[Need::Sandbox],
            a_flood_of_one_tenant_leaves_another_its_share,
        ),
        (
            "tenancy::quotas_refuse_naming_the_quota",
            &[Need::Sandbox],
            quotas_refuse_naming_the_quota,
        ),
        (
            "tenancy::identical_jobs_of_two_tenants_are_compiled_apart",
            &[Need::Sandbox],
            identical_jobs_of_two_tenants_are_compiled_apart,
        ),
        (
            "tenancy::a_sharing_group_shares_hits",
            &[Need::Sandbox],
            a_sharing_group_shares_hits,
        ),
        (
            "tenancy::a_paranoid_tenant_refuses_clients_that_are_not",
            &[Need::Sandbox],
            a_paranoid_tenant_refuses_clients_that_are_not,
        ),
        (
            "tenancy::fleet_shares_hits_through_redis",
            &[Need::Sandbox, Need::Redis],
            fleet_shares_hits_through_redis,
        ),
        (
            "tenancy::fleet_shares_hits_through_s3",
            &[Need::Sandbox, Need::S3],
            fleet_shares_hits_through_s3,
        ),
    ]
}
