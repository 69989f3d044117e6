//! Tests of [`DiskStore`] against real temporary directories.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;

const UNCOMPRESSED: DiskConfig = DiskConfig {
    max_size: 0,
    compression: Codec::None,
};
const COMPRESSED: DiskConfig = DiskConfig {
    max_size: 0,
    compression: Codec::Zstd(3),
};
const LZ4: DiskConfig = DiskConfig {
    max_size: 0,
    compression: Codec::Lz4,
};

fn limited(max_size: u64) -> DiskConfig {
    DiskConfig {
        max_size,
        compression: Codec::None,
    }
}

use crate::test_util::noise;

/// A key in coarse shard `shard`, distinct for each `n`.
fn key_in(shard: u8, n: u32) -> Digest {
    let mut key = Digest::of(&n.to_le_bytes());
    key.0[0] = (shard << 4) | (key.0[0] & 0x0f);
    key
}

/// The size and number of entry files really on disk.
fn disk_usage(root: &Path) -> (u64, u64) {
    let mut size = 0;
    let mut count = 0;
    for kind_dir in ["manifests", "results"] {
        let Ok(shards) = fs::read_dir(root.join(kind_dir)) else {
            continue;
        };
        for shard in shards {
            for entry in fs::read_dir(shard.unwrap().path()).unwrap() {
                let entry = entry.unwrap();
                if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    size += entry.metadata().unwrap().len();
                    count += 1;
                }
            }
        }
    }
    (size, count)
}

fn set_age(path: &Path, age: Duration) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

fn modified(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn round_trips_compressed_and_uncompressed() {
    let compressible = b"mov %rax, %rbx\n".repeat(10_000);
    let incompressible = noise(1, 100_000);
    let payloads: [&[u8]; 4] = [b"", b"x", &compressible, &incompressible];
    for config in [UNCOMPRESSED, COMPRESSED, LZ4] {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), config).unwrap();
        for (index, payload) in payloads.iter().enumerate() {
            let key = Digest::of(&[u8::try_from(index).unwrap()]);
            for kind in Kind::ALL {
                store.put(kind, &key, payload).unwrap();
                assert_eq!(
                    store.get(kind, &key).unwrap(),
                    Lookup::Hit(payload.to_vec())
                );
            }
        }
        assert_eq!(store.entry_count().unwrap(), 8);
        assert_eq!(store.size().unwrap(), disk_usage(dir.path()).0);
        let compressed_entry = store.layout.entry_path(Kind::Result, &Digest::of(&[2]));
        let stored = fs::metadata(compressed_entry).unwrap().len();
        if config.compression != Codec::None {
            assert!(
                stored < 2_000,
                "compressible payload stored as {stored} bytes"
            );
        } else {
            assert_eq!(stored, compressible.len() as u64 + HEADER_LEN as u64);
        }
    }
}

#[test]
fn kinds_are_separate_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), COMPRESSED).unwrap();
    let key = Digest::of(b"same key");
    store.put(Kind::Manifest, &key, b"manifest").unwrap();
    assert_eq!(store.get(Kind::Result, &key).unwrap(), Lookup::Miss);
    store.put(Kind::Result, &key, b"result").unwrap();
    assert_eq!(
        store.get(Kind::Manifest, &key).unwrap(),
        Lookup::Hit(b"manifest".to_vec())
    );
    // An entry copied under the other kind's path fails its checksum instead of being served.
    fs::copy(
        store.layout.entry_path(Kind::Manifest, &key),
        store.layout.entry_path(Kind::Result, &key),
    )
    .unwrap();
    assert_eq!(store.get(Kind::Result, &key).unwrap(), Lookup::Corrupt);
}

#[test]
fn open_and_miss_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("not-yet");
    let store = DiskStore::open(&root, DiskConfig::default()).unwrap();
    assert_eq!(store.root(), root);
    assert_eq!(
        store.get(Kind::Result, &Digest::of(b"k")).unwrap(),
        Lookup::Miss
    );
    assert_eq!(store.size().unwrap(), 0);
    assert_eq!(store.entry_count().unwrap(), 0);
    assert_eq!(store.evict_if_needed().unwrap(), None);
    assert_eq!(store.clean().unwrap(), CleanReport::default());
    assert!(!root.exists());
    // The first put creates the layout.
    store.put(Kind::Result, &Digest::of(b"k"), b"v").unwrap();
    assert!(root.join("size/counters").exists());
}

#[test]
fn corrupt_entries_are_reported_and_removed() {
    fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = fs::read(path).unwrap();
        edit(&mut bytes);
        fs::write(path, bytes).unwrap();
    }
    type Mutation = (String, Box<dyn Fn(&Path)>);
    let mut mutations: Vec<Mutation> = vec![
        (
            "zero length".into(),
            Box::new(|path| fs::write(path, b"").unwrap()),
        ),
        (
            "truncated to half".into(),
            Box::new(|path| rewrite(path, |bytes| bytes.truncate(bytes.len() / 2))),
        ),
        (
            "truncated inside the header".into(),
            Box::new(|path| rewrite(path, |bytes| bytes.truncate(HEADER_LEN - 1))),
        ),
        (
            "header only".into(),
            Box::new(|path| rewrite(path, |bytes| bytes.truncate(HEADER_LEN))),
        ),
        (
            "last payload byte flipped".into(),
            Box::new(|path| rewrite(path, |bytes| *bytes.last_mut().unwrap() ^= 0x01)),
        ),
        (
            "middle payload byte flipped".into(),
            Box::new(|path| {
                rewrite(path, |bytes| {
                    let middle = HEADER_LEN + (bytes.len() - HEADER_LEN) / 2;
                    bytes[middle] ^= 0x80;
                })
            }),
        ),
        (
            "trailing byte appended".into(),
            Box::new(|path| rewrite(path, |bytes| bytes.push(0))),
        ),
        (
            "garbage of the same length".into(),
            Box::new(|path| rewrite(path, |bytes| *bytes = noise(7, bytes.len()))),
        ),
        (
            "short garbage".into(),
            Box::new(|path| fs::write(path, b"not a cache entry").unwrap()),
        ),
    ];
    for position in 0..HEADER_LEN {
        mutations.push((
            format!("header byte {position} flipped"),
            Box::new(move |path| rewrite(path, |bytes| bytes[position] ^= 0x10)),
        ));
    }

    let payload = b"compressible object code ".repeat(200);
    let _unused: Option<Mutation> = None;
    for config in [UNCOMPRESSED, COMPRESSED, LZ4] {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), config).unwrap();
        for (name, mutate) in &mutations {
            let key = Digest::of(name.as_bytes());
            store.put(Kind::Result, &key, &payload).unwrap();
            let path = store.layout.entry_path(Kind::Result, &key);
            mutate(&path);
            assert_eq!(
                store.get(Kind::Result, &key).unwrap(),
                Lookup::Corrupt,
                "{name} ({config:?})"
            );
            assert!(!path.exists(), "{name}: corrupt entry left on disk");
            assert_eq!(
                store.get(Kind::Result, &key).unwrap(),
                Lookup::Miss,
                "{name}"
            );
            assert_eq!(store.entry_count().unwrap(), 0, "{name}");
        }
    }
}

#[test]
fn io_errors_other_than_not_found_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), COMPRESSED).unwrap();
    let key = Digest::of(b"a directory in the way");
    let path = store.layout.entry_path(Kind::Result, &key);
    fs::create_dir_all(&path).unwrap();
    // Opening a directory works on Linux; reading it fails with EISDIR.
    let error = store.get(Kind::Result, &key).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::ReadEntry { .. } | StoreError::OpenEntry { .. }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains(&*path.to_string_lossy()));
    // A put onto a directory fails at the rename and leaves no temporary file behind.
    assert!(matches!(
        store.put(Kind::Result, &key, b"payload"),
        Err(StoreError::Rename { .. })
    ));
    let leftovers = fs::read_dir(path.parent().unwrap()).unwrap().count();
    assert_eq!(leftovers, 1, "only the directory itself remains");
}

#[test]
fn replace_and_remove_keep_the_accounting_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), UNCOMPRESSED).unwrap();
    let key = Digest::of(b"manifest key");
    store.put(Kind::Manifest, &key, &[1; 100]).unwrap();
    store.put(Kind::Manifest, &key, &[2; 300]).unwrap();
    assert_eq!(store.entry_count().unwrap(), 1);
    assert_eq!(store.size().unwrap(), 300 + HEADER_LEN as u64);
    assert_eq!(store.size().unwrap(), disk_usage(dir.path()).0);
    store.remove(Kind::Manifest, &key).unwrap();
    store.remove(Kind::Manifest, &key).unwrap();
    assert_eq!(store.get(Kind::Manifest, &key).unwrap(), Lookup::Miss);
    assert_eq!(
        (store.size().unwrap(), store.entry_count().unwrap()),
        (0, 0)
    );
}

#[test]
fn hits_refresh_the_mtime_only_when_it_is_old() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), COMPRESSED).unwrap();
    let key = Digest::of(b"touched");
    store.put(Kind::Result, &key, b"payload").unwrap();
    let path = store.layout.entry_path(Kind::Result, &key);

    set_age(&path, Duration::from_secs(10));
    let recent = modified(&path);
    assert!(matches!(
        store.get(Kind::Result, &key).unwrap(),
        Lookup::Hit(_)
    ));
    assert_eq!(
        modified(&path),
        recent,
        "a recently used entry is not touched"
    );

    set_age(&path, Duration::from_secs(3600));
    let before = SystemTime::now() - Duration::from_secs(1);
    assert!(matches!(
        store.get(Kind::Result, &key).unwrap(),
        Lookup::Hit(_)
    ));
    assert!(
        modified(&path) >= before,
        "an old entry is touched on a hit"
    );
}

#[test]
fn threads_putting_and_getting_one_key_never_see_a_partial_entry() {
    for config in [UNCOMPRESSED, COMPRESSED, LZ4] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path(), config).unwrap());
        let key = Digest::of(b"contended");
        // Large, different payloads so that a torn write would be visible.
        let payloads: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..16u64)
                .map(|seed| {
                    let mut payload = noise(
                        seed,
                        200_000 + 1000 * usize::from(u8::try_from(seed).unwrap()),
                    );
                    payload[..1000].fill(u8::try_from(seed).unwrap());
                    payload
                })
                .collect(),
        );
        let valid: Arc<HashSet<Vec<u8>>> = Arc::new(payloads.iter().cloned().collect());
        let threads: Vec<_> = (0..16)
            .map(|thread| {
                let store = Arc::clone(&store);
                let payloads = Arc::clone(&payloads);
                let valid = Arc::clone(&valid);
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        store.put(Kind::Result, &key, &payloads[thread]).unwrap();
                        match store.get(Kind::Result, &key).unwrap() {
                            Lookup::Hit(payload) => assert!(valid.contains(&payload)),
                            other => panic!("expected a hit after a put, got {other:?}"),
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(disk_usage(dir.path()).1, 1);
        assert_eq!(
            fs::read_dir(store.layout.shard_dir(Kind::Result, key.0[0]))
                .unwrap()
                .count(),
            1,
            "no temporary files are left behind"
        );
    }
}

#[test]
fn eviction_keeps_the_size_under_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let entry_len = 1000 + HEADER_LEN as u64;
    let max_size = 16 * 5 * entry_len;
    let store = DiskStore::open(dir.path(), limited(max_size)).unwrap();
    for n in 0..400u32 {
        store
            .put(
                Kind::Result,
                &Digest::of(&n.to_le_bytes()),
                &noise(n.into(), 1000),
            )
            .unwrap();
        let size = store.size().unwrap();
        assert!(size <= max_size, "after put {n}: {size} > {max_size}");
    }
    let (disk_size, disk_count) = disk_usage(dir.path());
    assert_eq!(store.size().unwrap(), disk_size);
    assert_eq!(store.entry_count().unwrap(), disk_count);
    assert!(
        disk_count > 50,
        "eviction should not empty the cache: {disk_count}"
    );
}

#[test]
fn eviction_removes_the_least_recently_accessed_first() {
    let dir = tempfile::tempdir().unwrap();
    let entry_len = 1000 + HEADER_LEN as u64;
    let unlimited = DiskStore::open(dir.path(), UNCOMPRESSED).unwrap();
    // Five entries per coarse shard, all an hour old; shard 3 gets a sixth and varied ages.
    for shard in 0..16u8 {
        let entries = if shard == 3 { 6 } else { 5 };
        for n in 0..entries {
            let key = key_in(shard, n);
            unlimited
                .put(Kind::Result, &key, &noise(n.into(), 1000))
                .unwrap();
            let age = if shard == 3 { 600 - 100 * n } else { 3600 };
            set_age(
                &unlimited.layout.entry_path(Kind::Result, &key),
                Duration::from_secs(age.into()),
            );
        }
    }
    let store = DiskStore::open(dir.path(), limited(16 * 5 * entry_len)).unwrap();
    // The oldest entry of shard 3 is used now, so it becomes the most recent.
    assert!(matches!(
        store.get(Kind::Result, &key_in(3, 0)).unwrap(),
        Lookup::Hit(_)
    ));
    let report = store.evict_if_needed().unwrap().unwrap();
    // Shard 3 holds 6 entries against a share of 5; it is trimmed to 90% of that share.
    assert_eq!(report.shard, 3);
    assert_eq!(report.files_removed, 2);
    assert_eq!(report.bytes_removed, 2 * entry_len);
    assert_eq!(report.shard_size_after, 4 * entry_len);
    for (n, expect_hit) in [
        (0, true),
        (1, false),
        (2, false),
        (3, true),
        (4, true),
        (5, true),
    ] {
        let found = store.get(Kind::Result, &key_in(3, n)).unwrap();
        assert_eq!(
            matches!(found, Lookup::Hit(_)),
            expect_hit,
            "entry {n}: {found:?}"
        );
    }
    assert_eq!(
        store.evict_if_needed().unwrap(),
        None,
        "now within the limit"
    );
}

#[test]
fn eviction_heals_drifted_counters_and_skips_when_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), limited(1_000_000)).unwrap();
    for n in 0..10 {
        store.put(Kind::Result, &key_in(5, n), &[0; 100]).unwrap();
    }
    // Simulate drift: shard 5 claims 10 MB.
    store.accounting.add(5, 10_000_000, 0).unwrap();
    let held = store.accounting.try_lock_cleanup().unwrap();
    assert!(held.is_some());
    assert_eq!(
        store.evict_if_needed().unwrap(),
        None,
        "someone else is cleaning"
    );
    drop(held);
    let report = store.evict_if_needed().unwrap().unwrap();
    assert_eq!(report.shard, 5);
    assert_eq!(
        report.files_removed, 0,
        "the real shard is far under its share"
    );
    assert_eq!(store.size().unwrap(), disk_usage(dir.path()).0);
}

#[test]
fn threads_racing_with_eviction_never_see_corrupt_entries() {
    let dir = tempfile::tempdir().unwrap();
    let entry_len = 2000 + HEADER_LEN as u64;
    let max_size = 16 * 8 * entry_len;
    let store = Arc::new(DiskStore::open(dir.path(), limited(max_size)).unwrap());
    let threads: Vec<_> = (0..16u32)
        .map(|thread| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for n in 0..60u32 {
                    let id = thread * 1000 + n;
                    let key = Digest::of(&id.to_le_bytes());
                    let payload = noise(id.into(), 2000);
                    store.put(Kind::Result, &key, &payload).unwrap();
                    for earlier in [id, thread * 1000 + n / 2] {
                        let key = Digest::of(&earlier.to_le_bytes());
                        match store.get(Kind::Result, &key).unwrap() {
                            Lookup::Hit(found) => assert_eq!(found, noise(earlier.into(), 2000)),
                            Lookup::Miss => {}
                            Lookup::Corrupt => panic!("entry {earlier} read as corrupt"),
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    // Races can only make the counters overestimate; settle them, then check the real size.
    for _ in 0..32 {
        if store.evict_if_needed().unwrap().is_none() {
            break;
        }
    }
    assert!(store.size().unwrap() <= max_size);
    assert!(disk_usage(dir.path()).0 <= max_size);
}

#[test]
fn clean_removes_everything_and_stale_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), COMPRESSED).unwrap();
    for n in 0..50u32 {
        let kind = Kind::ALL[usize::try_from(n % 2).unwrap()];
        store
            .put(kind, &Digest::of(&n.to_le_bytes()), &noise(n.into(), 500))
            .unwrap();
    }
    let shard_dir = store.layout.shard_dir(Kind::Result, 0x42);
    fs::create_dir_all(&shard_dir).unwrap();
    let stale = shard_dir.join(format!("{TEMP_PREFIX}dead-writer"));
    let fresh = shard_dir.join(format!("{TEMP_PREFIX}live-writer"));
    fs::write(&stale, b"partial").unwrap();
    fs::write(&fresh, b"partial").unwrap();
    set_age(&stale, Duration::from_secs(2 * 3600));

    let (size, count) = disk_usage(dir.path());
    let report = store.clean().unwrap();
    assert_eq!(
        report,
        CleanReport {
            files_removed: count,
            bytes_removed: size
        }
    );
    assert_eq!(disk_usage(dir.path()), (0, 0));
    assert_eq!(
        (store.size().unwrap(), store.entry_count().unwrap()),
        (0, 0)
    );
    assert!(!stale.exists());
    assert!(
        fresh.exists(),
        "a temporary file being written is left alone"
    );
    // The store keeps working after a clean.
    store
        .put(Kind::Result, &Digest::of(b"again"), b"v")
        .unwrap();
    assert_eq!(store.entry_count().unwrap(), 1);
}

#[cfg(unix)]
#[test]
fn read_only_cache_fails_puts_but_serves_hits() {
    use std::os::unix::fs::PermissionsExt;

    fn set_mode_recursively(path: &Path, mode: u32) {
        if path.is_dir() {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
            for entry in fs::read_dir(path).unwrap() {
                set_mode_recursively(&entry.unwrap().path(), mode);
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), COMPRESSED).unwrap();
    let key = Digest::of(b"present");
    store.put(Kind::Result, &key, b"payload").unwrap();
    let path = store.layout.entry_path(Kind::Result, &key);
    set_age(&path, Duration::from_secs(3600));

    set_mode_recursively(dir.path(), 0o555);
    let probe = path.with_file_name("probe");
    if fs::write(&probe, b"").is_ok() {
        // Root ignores permission bits: make the put fail by putting a file where its shard
        // directory must go, and check the same promise (an error, and hits still served).
        fs::remove_file(&probe).unwrap();
        set_mode_recursively(dir.path(), 0o755);
        let blocked_key = Digest([0xff; 32]);
        let blocked_entry = store.layout.entry_path(Kind::Result, &blocked_key);
        let shard_dir = blocked_entry.parent().unwrap();
        fs::write(shard_dir, b"not a directory").unwrap();
        let blocked = store.put(Kind::Result, &blocked_key, b"payload");
        assert!(blocked.is_err(), "{blocked:?}");
        assert_eq!(
            store.get(Kind::Result, &key).unwrap(),
            Lookup::Hit(b"payload".to_vec())
        );
        return;
    }
    let replace = store.put(Kind::Result, &key, b"new payload");
    let new_shard = store.put(Kind::Result, &Digest([0xff; 32]), b"payload");
    let hit = store.get(Kind::Result, &key);
    set_mode_recursively(dir.path(), 0o755);

    assert!(
        matches!(replace, Err(StoreError::CreateTemp { .. })),
        "{replace:?}"
    );
    assert!(
        matches!(new_shard, Err(StoreError::CreateDir { .. })),
        "{new_shard:?}"
    );
    assert_eq!(hit.unwrap(), Lookup::Hit(b"payload".to_vec()));
}
