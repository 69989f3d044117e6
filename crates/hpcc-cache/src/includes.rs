//! Recording and verifying the files a compile read (direct mode).
//!
//! After a miss, [`record`] turns the dependency list into a [`ManifestEntry`]: every file with
//! its size, content digest and stamp, and the names whose appearance would shadow a header that
//! was used. On a lookup, [`verify`] checks both.
//!
//! **Absent names.** The directories searched are the command line's `-I` family, the compiler's
//! own list (from `-v`, cached under `<cache_dir>/compilers/`) and the directory of every file
//! used (quoted includes look there first). For each such directory D and each name N under which
//! a used file was found below some search directory, D/N must stay absent unless it is itself a
//! used file. The names are grouped by the deepest *existing* directory that would have to gain an
//! entry for one to appear, and that directory's [`Stamp`] (device, inode, mtime, ctime) is
//! recorded: [`verify`] skips a directory whose stamp is unchanged and checks each name otherwise.
//! A directory changed too recently to trust gets no stamp and is always checked.
//!
//! **Stamps spare rehashing.** A file whose stamp is the one recorded when it was hashed keeps its
//! recorded digest: any write moves the ctime, and [`record`] refuses a file changed less than
//! `STAMP_TRUST_MARGIN` (20 ms) before the compile started, or later, or while it was hashed.
//! Timestamps with no sub-second part (a file system with whole seconds) get two seconds more.
//! Otherwise the size is compared first, the cheap mismatch, and then the content.
//!
//! **One hash per file per machine.** Stamps live in one manifest, so another checkout (other
//! inodes) or another manifest would hash every header again. [`Contents`] first looks the file's
//! identity up in the machine's shared [`FileDigests`] table; it adds a file only if it was
//! unchanged across the read and older than the trust margin, so an identity witnesses the
//! content. Each table slot also carries flag bits for `__TIMESTAMP__`, `__DATE__`/`__TIME__` and
//! `.incbin`, so [`record`] can refuse a file without reading it.
//!
//! **`.incbin` is never cached.** The assembler reads the file it names and no dependency list
//! shows it, so a compile whose recorded files (direct mode) or `-E` output or source
//! (preprocessor mode, [`uses_incbin`]) contain `.incbin` is compiled and not stored.
//!
//! In the daemon, [`Contents`] also consults and feeds [`HotFiles`]: what the table holds is
//! trusted without a look, and what a lookup verified is committed at its end.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hpcc_core::digest::Digest;
use hpcc_core::manifest::{AbsentRecord, FileRecord, ManifestEntry, Stamp, StoredPath};
use hpcc_store::{FileDigests, FileId, Known};

use crate::hot::{self, HotFiles, Ticket, Verified};

/// A file changed more recently than this before it was stamped is not trusted: a later
/// change within the same file-system timestamp tick would leave the stamp unchanged.
const STAMP_TRUST_MARGIN: Duration = Duration::from_millis(20);

/// On a file system that records whole seconds only (both nanosecond fields zero), a
/// timestamp may be up to this much earlier than the change it records.
const COARSE_TIMESTAMP_SLACK: i128 = 2_000_000_000;

/// [`Known::flags`] bit: the content names `__TIMESTAMP__`.
const FLAG_TIMESTAMP_MACRO: u8 = 1;
/// [`Known::flags`] bit: the content names `__DATE__` or `__TIME__`.
const FLAG_DATE_TIME_MACRO: u8 = 2;
/// [`Known::flags`] bit: the content names the assembler directive `.incbin`.
const FLAG_INCBIN: u8 = 4;

/// Converts a path (absolute, or relative to `cwd`) to its stored form.
pub fn store_path(path: &Path, cwd: &Path, root: Option<&Path>) -> StoredPath {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    if let Some(root) = root {
        if let Ok(relative) = absolute.strip_prefix(root) {
            return StoredPath::Rooted(relative.as_os_str().as_bytes().to_vec());
        }
    }
    StoredPath::Absolute(absolute.as_os_str().as_bytes().to_vec())
}

/// Resolves a stored path against the current project root.
pub fn resolve(path: &StoredPath, root: Option<&Path>) -> Option<PathBuf> {
    use std::ffi::OsStr;
    match path {
        StoredPath::Absolute(bytes) => Some(PathBuf::from(OsStr::from_bytes(bytes))),
        StoredPath::Rooted(bytes) => root.map(|root| root.join(OsStr::from_bytes(bytes))),
    }
}

/// Reads and hashes a whole file, returning its size, digest and, if asked, whether it contains
/// `__DATE__`, `__TIME__` or `__TIMESTAMP__`.
pub fn hash_file(path: &Path, buffer: &mut Vec<u8>) -> std::io::Result<(u64, Digest)> {
    buffer.clear();
    let mut file = fs::File::open(path)?;
    file.read_to_end(buffer)?;
    Ok((
        buffer.len() as u64,
        Digest(*blake3::hash(buffer).as_bytes()),
    ))
}

/// Which time macros and directives that defeat caching `bytes` name, as [`Known::flags`]
/// bits.
fn content_flags(bytes: &[u8]) -> u8 {
    let mut flags = 0;
    if uses_incbin(bytes) {
        flags |= FLAG_INCBIN;
    }
    if memchr::memmem::find(bytes, b"__TIMESTAMP__").is_some() {
        flags |= FLAG_TIMESTAMP_MACRO;
    }
    if memchr::memmem::find(bytes, b"__DATE__").is_some()
        || memchr::memmem::find(bytes, b"__TIME__").is_some()
    {
        flags |= FLAG_DATE_TIME_MACRO;
    }
    flags
}

/// Whether `bytes` name the assembler directive `.incbin` (in inline assembly, most likely),
/// which reads a file no dependency list shows.
pub fn uses_incbin(bytes: &[u8]) -> bool {
    memchr::memmem::find(bytes, b".incbin").is_some()
}

/// Whether content with these flags uses a macro whose value depends on when or on which
/// file's timestamp the compile runs. `SOURCE_DATE_EPOCH` pins `__DATE__` and `__TIME__` (when
/// the compiler honours it), never `__TIMESTAMP__`, which is the source file's mtime.
fn has_time_macro(flags: u8, time_pinned: bool) -> bool {
    flags & FLAG_TIMESTAMP_MACRO != 0 || (!time_pinned && flags & FLAG_DATE_TIME_MACRO != 0)
}

/// A file's content as far as caching cares.
#[derive(Clone, Copy, Debug)]
pub struct Content {
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the bytes.
    pub digest: Digest,
    /// [`Known::flags`] bits.
    flags: u8,
    /// Whether the file was read (not found in the table).
    read: bool,
}

/// Computes file digests, consulting and feeding the machine's [`FileDigests`] table and, in the
/// daemon, its [`HotFiles`].
pub struct Contents<'a> {
    cache_dir: &'a Path,
    table: OnceCell<FileDigests>,
    buffer: Vec<u8>,
    hot: Option<HotSession<'a>>,
}

/// The hot-file table of a daemon request: its ticket and what the request verified.
struct HotSession<'a> {
    files: &'a HotFiles,
    ticket: Ticket,
    verified: Vec<Verified>,
}

impl<'a> Contents<'a> {
    /// Digests backed by the table in `cache_dir`, opened on first use.
    pub fn new(cache_dir: &'a Path) -> Contents<'a> {
        Contents {
            cache_dir,
            table: OnceCell::new(),
            buffer: Vec::new(),
            hot: None,
        }
    }

    /// Also trusts and feeds `files`, the daemon's hot-file table; reads its events now.
    pub fn with_hot(mut self, files: Option<&'a HotFiles>) -> Contents<'a> {
        self.hot = files.map(|files| HotSession {
            files,
            ticket: files.sync(),
            verified: Vec::new(),
        });
        self
    }

    /// Records in the hot-file table what this lookup verified.
    pub fn commit_hot(&mut self) {
        if let Some(session) = &mut self.hot {
            let verified = std::mem::take(&mut session.verified);
            session.files.commit(session.ticket, verified);
        }
    }

    /// The size and digest of `path` if the hot table knows it; otherwise makes sure a later
    /// change will be seen (the watch comes before the caller's look).
    fn hot_file(&self, path: &Path) -> Option<(u64, Digest)> {
        let session = self.hot.as_ref()?;
        let known = session.files.file(path);
        if known.is_none() {
            session.files.watch(path);
        }
        known
    }

    /// Notes that `path` was just verified to have this size and digest.
    fn note_file(&mut self, path: &Path, size: u64, digest: Digest) {
        if let Some(session) = &mut self.hot {
            if let Ok(meta) = fs::symlink_metadata(path) {
                session.verified.push(Verified::File {
                    path: path.to_path_buf(),
                    size,
                    digest,
                    meta,
                });
            }
        }
    }

    /// The digest of `path`'s content, from the hot table when it knows the file.
    pub fn digest_of_path(&mut self, path: &Path) -> std::io::Result<Digest> {
        if let Some((_, digest)) = self.hot_file(path) {
            return Ok(digest);
        }
        let content = self.of_path(path)?;
        self.note_file(path, content.size, content.digest);
        Ok(content.digest)
    }

    fn table(&self) -> &FileDigests {
        self.table.get_or_init(|| FileDigests::open(self.cache_dir))
    }

    /// The content of `path`, whose metadata `meta` was taken just before. A file read here is
    /// remembered in the table only if it was unchanged across the read and old enough that a
    /// later change must show in its timestamps.
    pub fn of(&mut self, path: &Path, meta: &fs::Metadata) -> std::io::Result<Content> {
        let id = file_id(meta);
        if let Some(known) = self.table().get(&id) {
            return Ok(Content {
                size: id.size,
                digest: known.digest,
                flags: known.flags,
                read: false,
            });
        }
        let (size, digest) = hash_file(path, &mut self.buffer)?;
        let flags = content_flags(&self.buffer);
        let trust_limit = SystemTime::now()
            .checked_sub(STAMP_TRUST_MARGIN)
            .unwrap_or(UNIX_EPOCH);
        if size == id.size && !modified_after(meta, trust_limit) {
            if let Ok(after) = fs::metadata(path) {
                if file_id(&after) == id {
                    self.table().put(&id, Known { digest, flags });
                }
            }
        }
        Ok(Content {
            size,
            digest,
            flags,
            read: true,
        })
    }

    /// Like [`Contents::of`], taking the metadata itself.
    pub fn of_path(&mut self, path: &Path) -> std::io::Result<Content> {
        let meta = fs::metadata(path)?;
        self.of(path, &meta)
    }
}

fn file_id(meta: &fs::Metadata) -> FileId {
    let stamp = stamp_of(meta);
    FileId {
        dev: stamp.dev,
        ino: stamp.ino,
        size: meta.size(),
        mtime_ns: stamp.mtime_ns,
        ctime_ns: stamp.ctime_ns,
    }
}

/// Inputs to [`record`].
pub struct RecordInputs<'a> {
    /// Every file the compile read, as listed in the dependency file (relative to `cwd` or
    /// absolute), the source first.
    pub files: &'a [PathBuf],
    /// The include search directories: `-I`-style directories from the command line and the
    /// compiler's own list.
    pub search_dirs: &'a [PathBuf],
    /// The current directory.
    pub cwd: &'a Path,
    /// The project root, if any.
    pub root: Option<&'a Path>,
    /// When the compile started: a file changed after this may not match the object.
    pub compile_started: SystemTime,
    /// Whether `__DATE__`/`__TIME__` are pinned (`SOURCE_DATE_EPOCH` set and honoured by the
    /// compiler): then they do not block caching.
    pub time_pinned: bool,
}

/// What [`record`] found.
pub enum Recorded {
    /// The entry, minus its result key (filled in by the caller).
    Entry(ManifestEntry),
    /// A file uses `__DATE__`/`__TIME__`/`__TIMESTAMP__` and the clock is not pinned.
    TimeMacros,
    /// A file uses `.incbin`.
    Incbin,
    /// A file changed while the compile ran; caching the result could pair it with the wrong
    /// content.
    Raced(PathBuf),
}

/// Builds the manifest entry for a finished compile.
pub fn record(inputs: &RecordInputs<'_>, contents: &mut Contents<'_>) -> Result<Recorded> {
    let mut seen = BTreeSet::new();
    let mut files = Vec::with_capacity(inputs.files.len());
    let mut absolute_files = Vec::with_capacity(inputs.files.len());
    let mut raced = None;
    let too_new = inputs
        .compile_started
        .checked_sub(STAMP_TRUST_MARGIN)
        .unwrap_or(UNIX_EPOCH);
    for file in inputs.files {
        let absolute = if file.is_absolute() {
            file.clone()
        } else {
            inputs.cwd.join(file)
        };
        if !seen.insert(absolute.clone()) {
            continue;
        }
        let meta = fs::metadata(&absolute).with_context(|| format!("stat {absolute:?}"))?;
        // A raced file is reported after the loop, so that a file with time macros or
        // `.incbin` gets the same verdict however fast the build was.
        if modified_after(&meta, too_new) && raced.is_none() {
            raced = Some(absolute.clone());
        }
        let content = contents
            .of(&absolute, &meta)
            .with_context(|| format!("reading {absolute:?}"))?;
        if has_time_macro(content.flags, inputs.time_pinned) {
            return Ok(Recorded::TimeMacros);
        }
        if content.flags & FLAG_INCBIN != 0 {
            return Ok(Recorded::Incbin);
        }
        let stamp = stamp_of(&meta);
        if content.read {
            // Hashing read the file after the stat: check again that it did not change
            // meanwhile, which also makes the stamp a faithful witness of the hashed content.
            let after = fs::metadata(&absolute).with_context(|| format!("stat {absolute:?}"))?;
            if after.size() != content.size
                || meta.size() != content.size
                || stamp_of(&after) != stamp
            {
                raced.get_or_insert_with(|| absolute.clone());
            }
        }
        files.push(FileRecord {
            path: store_path(&absolute, inputs.cwd, inputs.root),
            size: content.size,
            digest: content.digest,
            stamp: Some(stamp),
        });
        absolute_files.push(absolute);
    }
    if let Some(path) = raced {
        return Ok(Recorded::Raced(path));
    }
    let absent = absent_records(&absolute_files, inputs)?;
    Ok(Recorded::Entry(ManifestEntry {
        files,
        absent,
        result: Digest::default(),
    }))
}

/// The first of `paths` whose content may have changed since shortly before `started` (its
/// mtime or ctime is within the trust margin of it or later), if any.
pub fn changed_since(
    paths: impl IntoIterator<Item = PathBuf>,
    started: SystemTime,
) -> Option<PathBuf> {
    let limit = started
        .checked_sub(STAMP_TRUST_MARGIN)
        .unwrap_or(UNIX_EPOCH);
    paths.into_iter().find(|path| match fs::metadata(path) {
        Ok(meta) => modified_after(&meta, limit),
        Err(_) => true,
    })
}

/// Whether `meta` says the file may have changed at or after `limit`. Timestamps with no
/// sub-second part are taken to come from a file system with coarse timestamps, where a change
/// up to [`COARSE_TIMESTAMP_SLACK`] later can carry the same value.
fn modified_after(meta: &fs::Metadata, limit: SystemTime) -> bool {
    let limit_ns = limit
        .duration_since(UNIX_EPOCH)
        .map(|d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
        .unwrap_or(0);
    changed_at_or_after(
        (meta.mtime(), meta.mtime_nsec()),
        (meta.ctime(), meta.ctime_nsec()),
        limit_ns,
    )
}

/// [`modified_after`] on raw `(seconds, nanoseconds)` timestamps.
fn changed_at_or_after(mtime: (i64, i64), ctime: (i64, i64), limit_ns: i128) -> bool {
    let slack = if mtime.1 == 0 && ctime.1 == 0 {
        COARSE_TIMESTAMP_SLACK
    } else {
        0
    };
    let ns = |(seconds, nanos): (i64, i64)| i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    ns(mtime) + slack >= limit_ns || ns(ctime) + slack >= limit_ns
}

/// For every search directory D and every plausible include name N of a used file, the path
/// D/N must not come into existence. Names are the suffixes of used files below any search
/// directory (a file found as `sys/types.h` under `/usr/include` has the name `sys/types.h`).
fn absent_records(files: &[PathBuf], inputs: &RecordInputs<'_>) -> Result<Vec<AbsentRecord>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut dir_set = BTreeSet::new();
    let mut add_dir = |dir: PathBuf, dirs: &mut Vec<PathBuf>| {
        if dir_set.insert(dir.clone()) {
            dirs.push(dir);
        }
    };
    for dir in inputs.search_dirs {
        let absolute = if dir.is_absolute() {
            dir.clone()
        } else {
            inputs.cwd.join(dir)
        };
        add_dir(absolute, &mut dirs);
    }
    // Quoted includes search the including file's directory first.
    for file in files {
        if let Some(parent) = file.parent() {
            add_dir(parent.to_path_buf(), &mut dirs);
        }
    }
    let used: BTreeSet<&Path> = files.iter().map(PathBuf::as_path).collect();
    let mut names: BTreeSet<PathBuf> = BTreeSet::new();
    for file in files {
        for dir in &dirs {
            if let Ok(name) = file.strip_prefix(dir) {
                if !name.as_os_str().is_empty() {
                    names.insert(name.to_path_buf());
                }
            }
        }
    }
    // Group missing entries by the deepest existing directory that would have to gain them.
    let mut missing: BTreeMap<PathBuf, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let mut exists_cache: HashMap<PathBuf, bool> = HashMap::new();
    let mut exists = |path: &Path| -> bool {
        if let Some(&known) = exists_cache.get(path) {
            return known;
        }
        let present = fs::symlink_metadata(path).is_ok();
        exists_cache.insert(path.to_path_buf(), present);
        present
    };
    for dir in &dirs {
        let (anchor, below) = match deepest_existing(dir, &mut exists) {
            Some(found) => found,
            None => continue,
        };
        for name in &names {
            let candidate = dir.join(name);
            if used.contains(candidate.as_path()) {
                continue;
            }
            let mut current = anchor.clone();
            let mut pending: Vec<Component<'_>> = below.clone();
            pending.extend(name.components());
            for component in pending {
                let next = current.join(component.as_os_str());
                if matches!(component, Component::ParentDir | Component::CurDir) {
                    current = next;
                    continue;
                }
                if exists(&next) {
                    current = next;
                    continue;
                }
                missing
                    .entry(current.clone())
                    .or_default()
                    .insert(component.as_os_str().as_bytes().to_vec());
                break;
            }
        }
    }
    let trust_limit = SystemTime::now()
        .checked_sub(STAMP_TRUST_MARGIN)
        .unwrap_or(UNIX_EPOCH);
    let mut records = Vec::with_capacity(missing.len());
    for (dir, names) in missing {
        let stamp = match fs::metadata(&dir) {
            Ok(meta) if !modified_after(&meta, trust_limit) => Some(stamp_of(&meta)),
            Ok(_) => None,
            Err(_) => continue,
        };
        records.push(AbsentRecord {
            dir: store_path(&dir, inputs.cwd, inputs.root),
            stamp,
            names: names.into_iter().collect(),
        });
    }
    Ok(records)
}

/// The deepest existing ancestor of `dir` (itself included) and the components from it down
/// to `dir`.
fn deepest_existing<'a>(
    dir: &'a Path,
    exists: &mut impl FnMut(&Path) -> bool,
) -> Option<(PathBuf, Vec<Component<'a>>)> {
    let components: Vec<Component<'a>> = dir.components().collect();
    for keep in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..keep].iter().collect();
        if exists(&prefix) {
            return Some((prefix, components[keep..].to_vec()));
        }
    }
    None
}

fn stamp_of(meta: &fs::Metadata) -> Stamp {
    Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
    }
}

/// A manifest entry's paths resolved against one project root, and the digests that name its
/// absent sets in the daemon's hot table: computed once per manifest and root by the daemon,
/// per lookup otherwise.
#[derive(Debug)]
pub struct EntryPaths {
    /// Per [`ManifestEntry::files`]: the path, or `None` if it is rooted and there is no root.
    files: Vec<Option<PathBuf>>,
    /// Per [`ManifestEntry::absent`]: the directory, and [`hot::names_digest`] of the names
    /// when a hot table will be consulted.
    absent: Vec<(Option<PathBuf>, Option<Digest>)>,
}

impl EntryPaths {
    /// Resolves `entry` against `root`; `hot` also computes the names digests.
    pub fn resolve(entry: &ManifestEntry, root: Option<&Path>, hot: bool) -> EntryPaths {
        EntryPaths {
            files: entry
                .files
                .iter()
                .map(|file| resolve(&file.path, root))
                .collect(),
            absent: entry
                .absent
                .iter()
                .map(|absent| {
                    (
                        resolve(&absent.dir, root),
                        hot.then(|| hot::names_digest(&absent.names)),
                    )
                })
                .collect(),
        }
    }
}

/// Checks a manifest entry, with its paths resolved, against the file system. `skip` is a file
/// already verified by the caller (the source, whose digest is in the key).
pub fn verify(
    entry: &ManifestEntry,
    paths: &EntryPaths,
    skip: Option<&StoredPath>,
    contents: &mut Contents<'_>,
    mut digests: Option<&mut HashMap<PathBuf, Option<(u64, Digest)>>>,
) -> Result<bool> {
    for (absent, (dir, names_digest)) in entry.absent.iter().zip(&paths.absent) {
        let Some(dir) = dir else {
            return Ok(false);
        };
        let hot_names = match (&contents.hot, names_digest) {
            (Some(session), Some(names)) => {
                if session.files.absent(dir, names) {
                    continue;
                }
                // Watched before the look, so that an entry created after it is an event.
                session.files.watch_dir(dir).then_some(*names)
            }
            _ => None,
        };
        let unchanged = absent
            .stamp
            .is_some_and(|stamp| fs::metadata(dir).is_ok_and(|meta| stamp_of(&meta) == stamp));
        if !unchanged {
            for name in &absent.names {
                let candidate = dir.join(std::ffi::OsStr::from_bytes(name));
                if fs::symlink_metadata(&candidate).is_ok() {
                    return Ok(false);
                }
            }
        }
        if let (Some(names), Some(session)) = (hot_names, &mut contents.hot) {
            session.verified.push(Verified::Absent {
                dir: dir.clone(),
                names,
            });
        }
    }
    for (file, path) in entry.files.iter().zip(&paths.files) {
        if skip == Some(&file.path) {
            continue;
        }
        let Some(path) = path else {
            return Ok(false);
        };
        let remembered = digests
            .as_ref()
            .and_then(|digests| digests.get(path).copied());
        let known = match remembered.or_else(|| contents.hot_file(path).map(Some)) {
            Some(known) => known,
            None => {
                let computed = match fs::metadata(path) {
                    Ok(meta) if meta.len() != file.size => None,
                    // Unchanged since it was hashed on this machine: see `FileRecord::stamp`.
                    Ok(meta) if file.stamp == Some(stamp_of(&meta)) => {
                        Some((file.size, file.digest))
                    }
                    Ok(meta) => contents
                        .of(path, &meta)
                        .ok()
                        .map(|content| (content.size, content.digest)),
                    Err(_) => None,
                };
                if let Some((size, digest)) = computed {
                    contents.note_file(path, size, digest);
                }
                if let Some(digests) = digests.as_deref_mut() {
                    digests.insert(path.clone(), computed);
                }
                computed
            }
        };
        match known {
            Some((size, digest)) if size == file.size && digest == file.digest => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i128 = 1_000_000_000;

    #[test]
    fn fine_timestamps_are_trusted_once_older_than_the_limit() {
        let limit = 100 * SECOND;
        assert!(!changed_at_or_after(
            (99, 999_000_000),
            (99, 999_000_000),
            limit
        ));
        assert!(
            changed_at_or_after((100, 0), (99, 1), limit),
            "mtime at the limit"
        );
        assert!(
            changed_at_or_after((99, 1), (100, 5), limit),
            "ctime after the limit"
        );
    }

    #[test]
    fn whole_second_timestamps_get_slack() {
        // A file system with one- or two-second timestamps: the change may have happened up to
        // two seconds after what it recorded.
        let limit = 100 * SECOND;
        assert!(changed_at_or_after((99, 0), (99, 0), limit));
        assert!(changed_at_or_after((98, 0), (98, 0), limit));
        assert!(!changed_at_or_after((97, 0), (97, 0), limit));
        assert!(
            !changed_at_or_after((99, 0), (99, 1), limit),
            "ctime has nanoseconds"
        );
    }

    #[test]
    fn content_flags_find_time_macros_and_incbin() {
        assert_eq!(content_flags(b"int x;"), 0);
        assert_eq!(content_flags(b"__TIMESTAMP__"), FLAG_TIMESTAMP_MACRO);
        assert_eq!(content_flags(b"__DATE__"), FLAG_DATE_TIME_MACRO);
        assert_eq!(content_flags(b"asm(\".incbin \\\"x\\\"\")"), FLAG_INCBIN);
        assert!(has_time_macro(FLAG_TIMESTAMP_MACRO, true));
        assert!(!has_time_macro(FLAG_DATE_TIME_MACRO, true));
        assert!(has_time_macro(FLAG_DATE_TIME_MACRO, false));
    }
}
