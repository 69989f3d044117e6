//! Tests of flattening: whiteouts over lower layers, every refusal, caps, and fuzzing.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use proptest::prelude::*;
use tempfile::TempDir;

use super::*;

/// One entry of a synthetic layer.
#[derive(Clone, Copy)]
enum Item<'a> {
    File(&'a str, &'a [u8]),
    Mode(&'a str, &'a [u8], u32),
    Dir(&'a str),
    DirMode(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Raw(EntryType, &'a str),
}

/// A tar header with the name and link name written raw, so that bad paths (which the tar
/// builder refuses) can be built too.
fn header(kind: EntryType, path: &str, link: &str, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(1_700_000_000);
    let old = header.as_old_mut();
    old.name[..path.len()].copy_from_slice(path.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_cksum();
    header
}

fn layer(items: &[Item<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for item in items {
        let (header, data): (tar::Header, &[u8]) = match *item {
            Item::File(path, data) => (
                header(EntryType::Regular, path, "", data.len() as u64, 0o644),
                data,
            ),
            Item::Mode(path, data, mode) => (
                header(EntryType::Regular, path, "", data.len() as u64, mode),
                data,
            ),
            Item::Dir(path) => (header(EntryType::Directory, path, "", 0, 0o755), b""),
            Item::DirMode(path, mode) => (header(EntryType::Directory, path, "", 0, mode), b""),
            Item::Symlink(path, target) => {
                (header(EntryType::Symlink, path, target, 0, 0o777), b"")
            }
            Item::Hard(path, target) => (header(EntryType::Link, path, target, 0, 0o644), b""),
            Item::Raw(kind, path) => (header(kind, path, "", 0, 0o644), b""),
        };
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A temporary directory holding `outside/sentinel` beside the flatten target, to show that a
/// refused layer touched nothing but the target.
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/sentinel"), b"keep").unwrap();
        Sandbox { dir }
    }

    fn target(&self) -> PathBuf {
        self.dir.path().join("target")
    }

    fn flatten(
        &self,
        layers: &[(Vec<u8>, Option<Compression>)],
        limits: FlattenLimits,
    ) -> Result<Vec<String>, FlattenError> {
        let mut flattener = Flattener::create(&self.target(), limits)?;
        for (bytes, compression) in layers {
            flattener.apply_layer(&bytes[..], *compression)?;
        }
        flattener.finish();
        Ok(snapshot(&self.target()))
    }

    /// Only `outside/sentinel`, unchanged, and (when kept) the target exist.
    fn assert_host_untouched(&self, target_kept: bool) {
        let mut names: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let expected: Vec<&str> = if target_kept {
            vec!["outside", "target"]
        } else {
            vec!["outside"]
        };
        assert_eq!(names, expected);
        let outside: Vec<_> = fs::read_dir(self.dir.path().join("outside"))
            .unwrap()
            .collect();
        assert_eq!(outside.len(), 1);
        let sentinel = self.dir.path().join("outside/sentinel");
        assert!(fs::symlink_metadata(&sentinel)
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(fs::read(&sentinel).unwrap(), b"keep");
    }
}

/// The tree under `root`, one sorted line per path: kind, path, mode, and content or target.
fn snapshot(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, lines: &mut Vec<String>) {
        let mut children: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        children.sort();
        for child in children {
            let relative = child.strip_prefix(root).unwrap().display().to_string();
            let metadata = fs::symlink_metadata(&child).unwrap();
            let mode = metadata.permissions().mode() & 0o7777;
            if metadata.file_type().is_symlink() {
                lines.push(format!(
                    "link {relative} -> {}",
                    fs::read_link(&child).unwrap().display()
                ));
            } else if metadata.is_dir() {
                lines.push(format!("dir {relative} {mode:o}"));
                walk(root, &child, lines);
            } else {
                let content = String::from_utf8_lossy(&fs::read(&child).unwrap()).into_owned();
                lines.push(format!(
                    "file {relative} {mode:o} n{} {content}",
                    metadata.nlink()
                ));
            }
        }
    }
    let mut lines = Vec::new();
    walk(root, root, &mut lines);
    lines
}

fn plain(items: &[Item<'_>]) -> (Vec<u8>, Option<Compression>) {
    (layer(items), None)
}

#[test]
fn layers_and_whiteouts_merge_like_overlayfs() {
    use Item::*;
    let check = |name: &str, layers: &[&[Item<'_>]], expected: &[&str]| {
        let sandbox = Sandbox::new();
        let layers: Vec<_> = layers.iter().map(|items| plain(items)).collect();
        let tree = sandbox
            .flatten(&layers, FlattenLimits::default())
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(tree, expected, "{name}");
        sandbox.assert_host_untouched(true);
    };
    check(
        "whiteout hides a lower file, keeps its siblings",
        &[
            &[File("a", b"1"), File("d/x", b"2"), File("d/y", b"3")],
            &[File(".wh.a", b""), File("d/.wh.x", b"")],
        ],
        &["dir d 755", "file d/y 644 n1 3"],
    );
    check(
        "whiteout hides a whole lower directory",
        &[&[File("d/x", b"1"), File("e", b"2")], &[File(".wh.d", b"")]],
        &["file e 644 n1 2"],
    );
    check(
        "opaque directory drops lower content, keeps this layer's",
        &[
            &[
                File("d/x", b"1"),
                File("d/sub/old", b"2"),
                File("keep", b"3"),
            ],
            &[
                Dir("d"),
                File("d/.wh..wh..opq", b""),
                File("d/new", b"4"),
                File("d/sub/new2", b"5"),
            ],
        ],
        &[
            "dir d 755",
            "file d/new 644 n1 4",
            "dir d/sub 755",
            "file d/sub/new2 644 n1 5",
            "file keep 644 n1 3",
        ],
    );
    check(
        "opaque marker after this layer's entries spares them",
        &[
            &[File("d/x", b"1"), File("d/sub/old", b"2")],
            &[File("d/sub/new", b"4"), File("d/.wh..wh..opq", b"")],
        ],
        &["dir d 755", "dir d/sub 755", "file d/sub/new 644 n1 4"],
    );
    check(
        "a whiteout does not hide its own layer's file",
        &[&[File("f", b"1")], &[File("f", b"2"), File(".wh.f", b"")]],
        &["file f 644 n1 2"],
    );
    check(
        "whiteout of nothing is harmless",
        &[&[File("a", b"1")], &[File(".wh.missing", b"")]],
        &["file a 644 n1 1"],
    );
    check(
        "aufs bookkeeping names are ignored",
        &[
            &[File("a", b"1")],
            &[Dir(".wh..wh.plnk"), File(".wh..wh.aufs", b"")],
        ],
        &["file a 644 n1 1"],
    );
    check(
        "an upper file replaces a lower directory",
        &[&[File("d/x", b"1")], &[File("d", b"2")]],
        &["file d 644 n1 2"],
    );
    check(
        "an upper directory replaces a lower symlink, which is not followed",
        &[&[Symlink("s", "/")], &[Dir("s"), File("s/f", b"1")]],
        &["dir s 755", "file s/f 644 n1 1"],
    );
    check(
        "setuid, setgid and sticky bits are dropped; directories keep owner rwx",
        &[&[
            Mode("su", b"x", 0o4755),
            Mode("sg", b"x", 0o2711),
            DirMode("ro", 0o1555),
            Mode("ro/f", b"y", 0o444),
        ]],
        &[
            "dir ro 755",
            "file ro/f 444 n1 y",
            "file sg 711 n1 x",
            "file su 755 n1 x",
        ],
    );
    check(
        "hard links, absolute and relative symlinks inside the root",
        &[&[
            File("usr/bin/gcc", b"elf"),
            Hard("usr/bin/cc", "usr/bin/gcc"),
            Symlink("bin", "usr/bin"),
            Symlink("usr/bin/c99", "/usr/bin/gcc"),
            Symlink("usr/bin/up", "../../etc"),
        ]],
        &[
            "link bin -> usr/bin",
            "dir usr 755",
            "dir usr/bin 755",
            "link usr/bin/c99 -> /usr/bin/gcc",
            "file usr/bin/cc 644 n2 elf",
            "file usr/bin/gcc 644 n2 elf",
            "link usr/bin/up -> ../../etc",
        ],
    );
    check(
        "./-prefixed paths and the root entry",
        &[&[Dir("./"), File("./a/./b", b"1")]],
        &["dir a 755", "file a/b 644 n1 1"],
    );
}

#[test]
fn compressed_layers_are_detected_and_checked() {
    let tar = layer(&[Item::File("a", b"gz")]);
    let zstd_tar = zstd::encode_all(&layer(&[Item::File("b", b"zst")])[..], 3).unwrap();
    let sandbox = Sandbox::new();
    let tree = sandbox
        .flatten(
            &[
                (gzip(&tar), Some(Compression::Gzip)),
                (zstd_tar.clone(), None),
                (
                    layer(&[Item::File("c", b"tar")]),
                    Some(Compression::Uncompressed),
                ),
            ],
            FlattenLimits::default(),
        )
        .unwrap();
    assert_eq!(
        tree,
        ["file a 644 n1 gz", "file b 644 n1 zst", "file c 644 n1 tar"]
    );

    let sandbox = Sandbox::new();
    let error = sandbox
        .flatten(
            &[(zstd_tar, Some(Compression::Gzip))],
            FlattenLimits::default(),
        )
        .unwrap_err();
    assert!(
        matches!(
            error,
            FlattenError::CompressionMismatch {
                declared: Compression::Gzip,
                found: Compression::Zstd,
                ..
            }
        ),
        "{error}"
    );
    sandbox.assert_host_untouched(false);
}

/// A path on the host that a successful escape would create.
/// Written before the refusals and removed on drop (even when an assertion fails), so a
/// refused layer that reached it would show as a changed file.
struct Canary(String);

impl Canary {
    fn new() -> Self {
        let path = format!("/tmp/hpcc-image-canary-{}", std::process::id());
        fs::write(&path, b"canary").unwrap();
        Canary(path)
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn malicious_layers_are_refused_and_leave_the_host_untouched() {
    use Item::*;
    type Expect = fn(&FlattenError) -> bool;
    let canary_guard = Canary::new();
    let canary = canary_guard.0.clone();
    let canary_relative = canary.trim_start_matches('/').to_owned();
    let through_root = format!("a/{canary_relative}");
    let whiteout_through_root = format!("a/tmp/.wh.{}", canary.rsplit('/').next().unwrap());
    let small = FlattenLimits {
        max_total_bytes: 1 << 20,
        max_entries: 10,
        max_entry_bytes: 1 << 10,
    };
    let zeros = vec![0u8; 256 << 10];
    let many_zero_files: Vec<String> = (0..256).map(|index| format!("z{index}")).collect();
    let bomb = {
        let mut builder = tar::Builder::new(Vec::new());
        for name in &many_zero_files {
            builder
                .append(
                    &header(EntryType::Regular, name, "", zeros.len() as u64, 0o644),
                    &zeros[..],
                )
                .unwrap();
        }
        gzip(&builder.into_inner().unwrap())
    };
    let single_bomb = {
        let big = vec![0u8; 8 << 20];
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append(
                &header(EntryType::Regular, "big", "", big.len() as u64, 0o644),
                &big[..],
            )
            .unwrap();
        gzip(&builder.into_inner().unwrap())
    };
    let eleven: Vec<String> = (0..11).map(|index| format!("f{index}")).collect();
    let eleven_items: Vec<Item<'_>> = eleven.iter().map(|name| File(name, b"")).collect();

    type Layers = Vec<(Vec<u8>, Option<Compression>)>;
    let cases: Vec<(&str, Layers, FlattenLimits, Expect)> = vec![
        (
            "parent traversal",
            vec![plain(&[File("../x", b"evil")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::ParentComponent { .. }),
        ),
        (
            "inner traversal",
            vec![plain(&[File("a/../../outside/sentinel", b"evil")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::ParentComponent { .. }),
        ),
        (
            "absolute path",
            vec![plain(&[File(&canary, b"evil")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::AbsolutePath { .. }),
        ),
        (
            "file through a symlink to /",
            vec![plain(&[Symlink("a", "/"), File(&through_root, b"evil")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::ThroughSymlink { .. }),
        ),
        (
            "file through a symlink of a lower layer",
            vec![
                plain(&[Symlink("a", "/")]),
                plain(&[File(&through_root, b"evil")]),
            ],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::ThroughSymlink { .. }),
        ),
        (
            "directory through a symlink",
            vec![plain(&[Symlink("a", "/tmp"), Dir("a/x")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::ThroughSymlink { .. }),
        ),
        (
            "whiteout through a symlink",
            vec![
                plain(&[Symlink("a", "/")]),
                plain(&[File(&whiteout_through_root, b"")]),
            ],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::ThroughSymlink { .. }),
        ),
        (
            "opaque whiteout through a symlink",
            vec![
                plain(&[Symlink("a", "/tmp")]),
                plain(&[File("a/.wh..wh..opq", b"")]),
            ],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::ThroughSymlink { .. }),
        ),
        (
            "symlink climbing out",
            vec![plain(&[Symlink("a", "../../..")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::SymlinkEscape { .. }),
        ),
        (
            "nested symlink climbing out",
            vec![plain(&[Symlink("d/e/a", "../../../outside")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::SymlinkEscape { .. }),
        ),
        (
            "hard link out by ..",
            vec![plain(&[Hard("h", "../outside/sentinel")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::HardLinkEscape { .. }),
        ),
        (
            "hard link to a host path",
            vec![plain(&[Hard("h", &canary)])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::HardLinkEscape { .. }),
        ),
        (
            "hard link to nothing extracted",
            vec![plain(&[Hard("h", "missing")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::HardLinkTarget { .. }),
        ),
        (
            "hard link to a directory",
            vec![plain(&[Dir("d"), Hard("h", "d")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::HardLinkTarget { .. }),
        ),
        (
            "hard link to a symlink",
            vec![plain(&[Symlink("s", &canary), Hard("h", "s")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::HardLinkTarget { .. }),
        ),
        (
            "hard link through a symlink",
            vec![plain(&[Symlink("a", "/"), Hard("h", &through_root)])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::ThroughSymlink { .. }),
        ),
        (
            "character device",
            vec![plain(&[Raw(EntryType::Char, "null")])],
            FlattenLimits::default(),
            |e| {
                matches!(
                    e,
                    FlattenError::SpecialFile {
                        kind: "character device",
                        ..
                    }
                )
            },
        ),
        (
            "block device",
            vec![plain(&[Raw(EntryType::Block, "sda")])],
            FlattenLimits::default(),
            |e| {
                matches!(
                    e,
                    FlattenError::SpecialFile {
                        kind: "block device",
                        ..
                    }
                )
            },
        ),
        (
            "fifo",
            vec![plain(&[Raw(EntryType::Fifo, "pipe")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::SpecialFile { kind: "fifo", .. }),
        ),
        (
            "sparse file",
            vec![plain(&[Raw(EntryType::GNUSparse, "sparse")])],
            FlattenLimits::default(),
            |e| {
                matches!(
                    e,
                    FlattenError::UnsupportedEntry { .. } | FlattenError::ReadLayer { .. }
                )
            },
        ),
        (
            "unknown entry type",
            vec![plain(&[Raw(EntryType::new(b'Z'), "odd")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::UnsupportedEntry { kind: b'Z', .. }),
        ),
        (
            "invalid whiteout",
            vec![plain(&[File(".wh..", b"")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::InvalidWhiteout { .. }),
        ),
        (
            "root as a file",
            vec![plain(&[File("./", b"x")])],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::RootNotDirectory { .. }),
        ),
        ("too many files", vec![plain(&eleven_items)], small, |e| {
            matches!(e, FlattenError::TooManyEntries { limit: 10 })
        }),
        (
            "file over the entry cap",
            vec![plain(&[File("big", &[7u8; 1025])])],
            small,
            |e| matches!(e, FlattenError::EntryTooLarge { size: 1025, .. }),
        ),
        (
            "gzip bomb of many small files",
            vec![(bomb, Some(Compression::Gzip))],
            FlattenLimits {
                max_entries: 1000,
                max_entry_bytes: 1 << 20,
                ..small
            },
            |e| matches!(e, FlattenError::TooManyBytes { limit: 1048576 }),
        ),
        (
            "gzip bomb of one large file",
            vec![(single_bomb, None)],
            FlattenLimits {
                max_entry_bytes: 1 << 30,
                ..small
            },
            |e| matches!(e, FlattenError::TooManyBytes { .. }),
        ),
        (
            "not a tar",
            vec![(
                b"definitely not a tar archive, but long enough to fill a header block?".repeat(20),
                None,
            )],
            FlattenLimits::default(),
            |e| matches!(e, FlattenError::ReadLayer { .. }),
        ),
    ];
    for (name, layers, limits, expect) in cases {
        let sandbox = Sandbox::new();
        let result = sandbox.flatten(&layers, limits);
        match result {
            Err(error) => assert!(expect(&error), "{name}: unexpected error {error:?}"),
            Ok(tree) => panic!("{name}: accepted, giving {tree:?}"),
        }
        sandbox.assert_host_untouched(false);
        assert_eq!(fs::read(&canary).unwrap(), b"canary", "{name}");
    }
    drop(canary_guard);
}

#[test]
fn a_bomb_is_stopped_at_the_cap_not_after_decompressing_it() {
    // 256 MiB of zeros in many 256 KiB files, as gzip: a few hundred KiB compressed.
    let zeros = vec![0u8; 256 << 10];
    let mut builder = tar::Builder::new(Vec::new());
    for index in 0..1024 {
        builder
            .append(
                &header(
                    EntryType::Regular,
                    &format!("z{index}"),
                    "",
                    zeros.len() as u64,
                    0o644,
                ),
                &zeros[..],
            )
            .unwrap();
    }
    let bomb = gzip(&builder.into_inner().unwrap());
    let sandbox = Sandbox::new();
    let limits = FlattenLimits {
        max_total_bytes: 1 << 20,
        max_entries: 10_000,
        max_entry_bytes: 1 << 20,
    };
    let mut flattener = Flattener::create(&sandbox.target(), limits).unwrap();
    let error = flattener
        .apply_layer(&bomb[..], Some(Compression::Gzip))
        .unwrap_err();
    assert!(
        matches!(error, FlattenError::TooManyBytes { .. }),
        "{error}"
    );
    let decompressed = flattener.decompressed.load(Ordering::Relaxed);
    assert!(
        decompressed <= (1 << 20) + 1,
        "read {decompressed} bytes past a 1 MiB cap"
    );
    // At most four of the 256 KiB files fit under the cap, so at most five were started.
    let written = fs::read_dir(sandbox.target()).unwrap().count();
    assert!(written <= 5, "{written} files written");
    drop(flattener);
    sandbox.assert_host_untouched(false);
}

#[test]
fn counting_reader_never_passes_more_than_one_byte_over() {
    let count = Arc::new(AtomicU64::new(0));
    let mut reader = CountingReader {
        inner: io::repeat(0),
        count: Arc::clone(&count),
        limit: 1000,
    };
    let mut sink = Vec::new();
    assert!(reader.read_to_end(&mut sink).is_err());
    assert!(sink.len() <= 1000, "{} bytes handed out", sink.len());
    assert_eq!(count.load(Ordering::Relaxed), 1001);
}

#[test]
fn symlink_escape_is_decided_lexically() {
    let check = |link: &str, target: &str, escapes: bool| {
        assert_eq!(
            escapes_root(Path::new(link), Path::new(target)),
            escapes,
            "{link} -> {target}"
        );
    };
    check("a", "b", false);
    check("a", "..", true);
    check("d/a", "..", false);
    check("d/a", "../..", true);
    check("d/a", "../x/../..", true);
    check("d/a", "./../b/./c", false);
    check("a", "/", false);
    check("a", "/usr/../..", true);
    check("a/b/c", "/etc/passwd", false);
}

#[test]
fn dropping_an_unfinished_flattener_removes_the_target() {
    let sandbox = Sandbox::new();
    let mut flattener = Flattener::create(&sandbox.target(), FlattenLimits::default()).unwrap();
    flattener
        .apply_layer(&layer(&[Item::File("a/b", b"1")])[..], None)
        .unwrap();
    assert!(sandbox.target().join("a/b").exists());
    drop(flattener);
    sandbox.assert_host_untouched(false);

    // An existing target is never adopted (and so never removed).
    fs::create_dir(sandbox.target()).unwrap();
    assert!(matches!(
        Flattener::create(&sandbox.target(), FlattenLimits::default()),
        Err(FlattenError::CreateTarget { .. })
    ));
    assert!(sandbox.target().exists());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), gz in any::<bool>()) {
        let sandbox = Sandbox::new();
        let input = if gz { gzip(&bytes) } else { bytes };
        let limits = FlattenLimits { max_total_bytes: 1 << 20, max_entries: 100, max_entry_bytes: 1 << 16 };
        let result = sandbox.flatten(&[(input, None)], limits);
        sandbox.assert_host_untouched(result.is_ok());
    }

    #[test]
    fn corrupted_layers_never_panic_or_escape(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
    ) {
        let mut bytes = layer(&[
            Item::Symlink("a", "/"),
            Item::File("d/f", b"content"),
            Item::Hard("d/h", "d/f"),
            Item::File("d/.wh.x", b""),
            Item::Dir("e"),
        ]);
        for (index, value) in flips {
            let position = index.index(bytes.len());
            bytes[position] = value;
        }
        let sandbox = Sandbox::new();
        let result = sandbox.flatten(&[(bytes, None)], FlattenLimits::default());
        sandbox.assert_host_untouched(result.is_ok());
    }
}
