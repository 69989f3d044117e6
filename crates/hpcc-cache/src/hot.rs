//! What the daemon knows about files without looking: the content digest of a header, or that
//! a name on the include path does not exist, kept valid by inotify watches.
//!
//! A per-process wrapper must `stat` every header of a manifest on every hit (and ccache often
//! re-hashes them). The daemon watches the directory of every file it has verified, and every
//! ancestor of that directory, so any later change reaches it as an event; until one does, the
//! verified state stands and a hit needs no system call per header.
//!
//! The table holds, per path, a file's size and digest, and per directory the sets of names
//! ([`names_digest`]) verified absent from it. A lookup takes a [`Ticket`], trusts what the table
//! holds, and verifies everything else as the wrapper would; what it verified is committed at its
//! end ([`HotFiles::commit`]). An event on a file drops the file; an entry created in a directory
//! (a new subdirectory included) drops that directory's absent sets.
//!
//! Correctness comes before speed; in every case of doubt a file is simply not hot and the
//! caller verifies it the ordinary way:
//!
//! - Only directories on local file systems whose changes inotify reports completely are watched
//!   (ext2 to ext4, xfs, btrfs, tmpfs, f2fs, overlayfs; not NFS, whose other clients' changes it
//!   never sees, nor FUSE), only through paths without symlinks (a re-pointed symlink elsewhere
//!   would go unnoticed), only files with one link (a write through another hard link notifies
//!   another directory), and at most `MAX_WATCHES` directories. A file that is itself a symlink,
//!   or is not a regular file, is never hot.
//! - A state is committed only if no event touched it between the moment its request began (its
//!   [`Ticket`]) and the commit; the watch is in place before the caller looks at the file, so a
//!   change after the look is an event.
//! - A directory moved away, moved in or removed, and a watched directory that vanishes or moves,
//!   end the hotness of everything at or below its path (and the watches there). A queue overflow
//!   or an unmounted file system clears everything.
//! - Writes through `mmap` produce no inotify event: a header edited that way is a known limit
//!   shared with every inotify-based tool (watchman, Bazel, VS Code).
//!
//! Events are read without blocking at the start of every request ([`HotFiles::sync`]) and
//! before every commit, so no background thread is needed and nothing is stale by more than the
//! request that raced with the change (the same window a `stat` leaves).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use hpcc_core::digest::Digest;
use inotify::{EventMask, Inotify, WatchMask};

/// The most directories watched at once; past it, new files are simply not hot.
const MAX_WATCHES: usize = 16_384;
/// The most events remembered for pending commits before the memory is reset.
const MAX_TOUCHED: usize = 65_536;

/// File system magic numbers (`statfs`) whose changes inotify reports completely.
const LOCAL_FILE_SYSTEMS: &[i64] = &[
    0xEF53,      // ext2, ext3, ext4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0xF2F5_2010, // f2fs
    0x794C_7630, // overlayfs (container images)
];

/// A state verified during a request, to be committed with [`HotFiles::commit`].
#[derive(Debug)]
pub enum Verified {
    /// A file with this content; `meta` is its `symlink_metadata`, taken after the watch.
    File {
        /// The path as the manifest resolves it.
        path: PathBuf,
        /// Size in bytes.
        size: u64,
        /// BLAKE3 of the content.
        digest: Digest,
        /// The file's own metadata (not followed through a symlink).
        meta: std::fs::Metadata,
    },
    /// Directory `dir` holds none of the names whose digest is `names`.
    Absent {
        /// The directory.
        dir: PathBuf,
        /// [`names_digest`] of the names.
        names: Digest,
    },
}

/// The digest that identifies a set of names that must stay absent from one directory.
pub fn names_digest(names: &[Vec<u8>]) -> Digest {
    let mut hasher = blake3::Hasher::new();
    for name in names {
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name);
    }
    Digest(*hasher.finalize().as_bytes())
}

/// The event position a request started at; a state verified under it is committed only if no
/// event touched the path since.
#[derive(Clone, Copy, Debug)]
pub struct Ticket(u64);

/// The daemon's table of hot files. All methods are cheap and never fail: trouble with inotify
/// just means nothing is hot.
pub struct HotFiles {
    /// Lookups (most calls) share the lock; draining events, watching and committing take it
    /// alone.
    inner: RwLock<Inner>,
}

struct Inner {
    /// `None` when inotify is unavailable: nothing is ever hot.
    inotify: Option<Inotify>,
    /// Watch descriptor → the directories it stands for (one inode can have several paths).
    watch_paths: HashMap<i32, Vec<PathBuf>>,
    /// Directory → whether it is watched (`false`: it cannot be, do not retry).
    dirs: HashMap<PathBuf, bool>,
    /// Hot files: size and digest.
    files: HashMap<PathBuf, (u64, Digest)>,
    /// Hot absences: directory → the name sets known to be absent from it.
    absent: HashMap<PathBuf, Vec<Digest>>,
    /// Incremented for every batch of events read.
    position: u64,
    /// Path → the position of the last event that touched it, and directory → the position of
    /// the last entry created in it (for pending commits).
    touched: HashMap<PathBuf, u64>,
    created: HashMap<PathBuf, u64>,
    /// Commits with tickets before this position are refused (everything was cleared, or
    /// `touched` was reset).
    floor: u64,
    buffer: Vec<u8>,
}

impl Default for HotFiles {
    fn default() -> HotFiles {
        HotFiles::new()
    }
}

impl HotFiles {
    /// A table with its own inotify instance (or a table that never holds anything if inotify
    /// is unavailable).
    pub fn new() -> HotFiles {
        let inotify = match Inotify::init() {
            Ok(inotify) => Some(inotify),
            Err(error) => {
                tracing::warn!("inotify unavailable, every header will be checked: {error}");
                None
            }
        };
        HotFiles {
            inner: RwLock::new(Inner {
                inotify,
                watch_paths: HashMap::new(),
                dirs: HashMap::new(),
                files: HashMap::new(),
                absent: HashMap::new(),
                position: 1,
                touched: HashMap::new(),
                created: HashMap::new(),
                floor: 0,
                buffer: vec![0; 64 * 1024],
            }),
        }
    }

    fn lock(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|poisoned| {
            // A panic while applying events may have left a state that misses some of them:
            // forget everything, which is always safe.
            let mut inner = poisoned.into_inner();
            inner.clear();
            self.inner.clear_poison();
            inner
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        if self.inner.is_poisoned() {
            drop(self.lock());
        }
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads pending events and returns the ticket for a request starting now.
    pub fn sync(&self) -> Ticket {
        let mut inner = self.lock();
        inner.drain();
        // Events drained from now on carry this position or a later one.
        Ticket(inner.position + 1)
    }

    /// The size and digest of `path`, if it is hot.
    pub fn file(&self, path: &Path) -> Option<(u64, Digest)> {
        self.read().files.get(path).copied()
    }

    /// Whether the names with digest `names` are known to be absent from `dir`.
    pub fn absent(&self, dir: &Path, names: &Digest) -> bool {
        self.read()
            .absent
            .get(dir)
            .is_some_and(|sets| sets.contains(names))
    }

    /// Makes sure changes to `path` (a file or a name that should stay absent) will be seen,
    /// before the caller looks at it. `false`: the path cannot be hot.
    pub fn watch(&self, path: &Path) -> bool {
        path.parent().is_some_and(|parent| self.watch_dir(parent))
    }

    /// Makes sure entries created in `parent` will be seen (see [`HotFiles::watch`]).
    pub fn watch_dir(&self, parent: &Path) -> bool {
        let mut inner = self.lock();
        if inner.inotify.is_none() {
            return false;
        }
        // The parent and every ancestor: renaming any of them must reach us as an event.
        let mut dir = Some(parent);
        while let Some(current) = dir {
            match inner.dirs.get(current) {
                Some(true) => {}
                Some(false) => return false,
                None => {
                    let watched = inner.add_watch(current);
                    inner.dirs.insert(current.to_path_buf(), watched);
                    if !watched {
                        return false;
                    }
                }
            }
            dir = current.parent();
        }
        true
    }

    /// Records states verified under `ticket`. A state is kept only if its directory is
    /// watched and no event touched it since the ticket.
    pub fn commit(&self, ticket: Ticket, verified: Vec<Verified>) {
        if verified.is_empty() {
            return;
        }
        let mut inner = self.lock();
        inner.drain();
        if ticket.0 < inner.floor {
            return;
        }
        let since = |map: &HashMap<PathBuf, u64>, path: &Path| {
            map.get(path).is_some_and(|&position| position >= ticket.0)
        };
        for state in verified {
            match state {
                Verified::File {
                    path,
                    size,
                    digest,
                    meta,
                } => {
                    // Only a regular file with a single link is fully covered by its
                    // directory's watch.
                    if !meta.file_type().is_file() || meta.nlink() != 1 {
                        continue;
                    }
                    let watched = path
                        .parent()
                        .is_some_and(|parent| inner.dirs.get(parent) == Some(&true));
                    if watched && !since(&inner.touched, &path) {
                        inner.files.insert(path, (size, digest));
                    }
                }
                Verified::Absent { dir, names } => {
                    if inner.dirs.get(&dir) == Some(&true) && !since(&inner.created, &dir) {
                        let sets = inner.absent.entry(dir).or_default();
                        if !sets.contains(&names) {
                            sets.push(names);
                        }
                    }
                }
            }
        }
    }

    /// How many states are hot and how many directories are watched.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.read();
        (
            inner.files.len() + inner.absent.values().map(Vec::len).sum::<usize>(),
            inner.watch_paths.len(),
        )
    }
}

impl Inner {
    fn clear(&mut self) {
        self.files.clear();
        self.absent.clear();
        self.touched.clear();
        self.created.clear();
        self.floor = self.position + 1;
    }

    fn add_watch(&mut self, dir: &Path) -> bool {
        if self.watch_paths.len() >= MAX_WATCHES {
            return false;
        }
        // A path through a symlink could be re-pointed without an event in any watched
        // directory.
        match std::fs::canonicalize(dir) {
            Ok(canonical) if canonical == dir => {}
            _ => return false,
        }
        match rustix::fs::statfs(dir) {
            Ok(stats) => {
                // `f_type` is i64 on x86_64 but narrower on other targets.
                #[allow(clippy::useless_conversion)]
                let kind = i64::from(stats.f_type);
                if !LOCAL_FILE_SYSTEMS.contains(&kind) {
                    return false;
                }
            }
            Err(_) => return false,
        }
        let Some(inotify) = self.inotify.as_mut() else {
            return false;
        };
        let mask = WatchMask::MODIFY
            | WatchMask::ATTRIB
            | WatchMask::CLOSE_WRITE
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::ONLYDIR;
        match inotify.watches().add(dir, mask) {
            Ok(descriptor) => {
                let paths = self
                    .watch_paths
                    .entry(descriptor.get_watch_descriptor_id())
                    .or_default();
                if !paths.iter().any(|known| known == dir) {
                    paths.push(dir.to_path_buf());
                }
                true
            }
            Err(error) => {
                // Most likely the per-user watch limit; nothing is lost but speed.
                tracing::debug!(?dir, %error, "cannot watch directory");
                false
            }
        }
    }

    /// Reads every pending event and applies it.
    fn drain(&mut self) {
        loop {
            let Some(inotify) = self.inotify.as_mut() else {
                return;
            };
            let mut buffer = std::mem::take(&mut self.buffer);
            let mut batch: Vec<(i32, EventMask, Option<std::ffi::OsString>)> = Vec::new();
            let read = inotify.read_events(&mut buffer);
            let done = match read {
                Ok(events) => {
                    for event in events {
                        batch.push((
                            event.wd.get_watch_descriptor_id(),
                            event.mask,
                            event.name.map(OsStr::to_os_string),
                        ));
                    }
                    false
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => true,
                Err(error) => {
                    tracing::warn!("reading inotify events failed, forgetting hot files: {error}");
                    self.clear();
                    true
                }
            };
            self.buffer = buffer;
            if done {
                return;
            }
            self.position += 1;
            for (descriptor, mask, name) in batch {
                self.apply(descriptor, mask, name.as_deref());
            }
        }
    }

    fn apply(&mut self, descriptor: i32, mask: EventMask, name: Option<&OsStr>) {
        if mask.intersects(EventMask::Q_OVERFLOW | EventMask::UNMOUNT) {
            // Events were lost, or a file system went away: anything may have changed.
            self.clear();
            return;
        }
        let Some(dirs) = self.watch_paths.get(&descriptor).cloned() else {
            return;
        };
        if mask.intersects(EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
            // A watched directory vanished or moved: its path no longer names what was
            // verified. Its watch is dropped (a later lookup watches the path afresh).
            self.watch_paths.remove(&descriptor);
            for dir in &dirs {
                self.forget_below(dir);
            }
            return;
        }
        let Some(name) = name else {
            return;
        };
        let appeared = mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
        for dir in dirs {
            let path = dir.join(name);
            if mask.contains(EventMask::ISDIR) && !mask.contains(EventMask::CREATE) {
                // A directory moved away, moved in or removed: nothing verified below that
                // path stands. (A new, empty directory hides nothing: it is an entry that
                // appeared, like a new file.)
                self.forget_below(&path);
            }
            self.files.remove(&path);
            self.touched.insert(path, self.position);
            if appeared {
                self.absent.remove(&dir);
                self.created.insert(dir, self.position);
            }
        }
        if self.touched.len() + self.created.len() > MAX_TOUCHED {
            self.touched.clear();
            self.created.clear();
            self.floor = self.position + 1;
        }
    }

    /// Drops every state at or below `prefix`, and the watches of directories there; commits
    /// in flight are refused, as they may concern such a path.
    fn forget_below(&mut self, prefix: &Path) {
        self.files.retain(|path, _| !path.starts_with(prefix));
        self.absent.retain(|dir, _| !dir.starts_with(prefix));
        self.dirs.retain(|dir, _| !dir.starts_with(prefix));
        self.watch_paths.retain(|_, paths| {
            paths.retain(|dir| !dir.starts_with(prefix));
            !paths.is_empty()
        });
        self.floor = self.position + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Verifies `path` as a lookup would: ticket, watch, look, commit.
    fn verify(hot: &HotFiles, path: &Path) -> bool {
        let ticket = hot.sync();
        if !hot.watch(path) {
            return false;
        }
        let verified = match fs::symlink_metadata(path) {
            Ok(meta) => Verified::File {
                path: path.to_path_buf(),
                size: meta.len(),
                digest: Digest::default(),
                meta,
            },
            Err(_) => Verified::Absent {
                dir: path.parent().expect("parent").to_path_buf(),
                names: names_digest(&[path.file_name().expect("name").as_encoded_bytes().to_vec()]),
            },
        };
        hot.commit(ticket, vec![verified]);
        true
    }

    fn absent_known(hot: &HotFiles, path: &Path) -> bool {
        hot.absent(
            path.parent().expect("parent"),
            &names_digest(&[path.file_name().expect("name").as_encoded_bytes().to_vec()]),
        )
    }

    fn temp_dir() -> tempfile::TempDir {
        // Under the target directory rather than /tmp, whose churn (other tests' temporary
        // directories) would clear the table at any moment.
        let base =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/hot-tests");
        fs::create_dir_all(&base).expect("test base");
        let base = fs::canonicalize(base).expect("canonical base");
        tempfile::tempdir_in(base).expect("tempdir")
    }

    /// A table that watches `dir`. A machine that cannot watch it (no inotify, or a target
    /// directory on a network file system) fails the test rather than passing it unrun: every
    /// Linux machine that builds hpcc has inotify on its local disks.
    fn table_for(dir: &Path, test: &str) -> HotFiles {
        let hot = HotFiles::new();
        assert!(
            hot.watch_dir(dir),
            "hot::{test}: cannot watch {dir:?}: this test needs inotify and a target directory on a local file system"
        );
        hot
    }

    #[test]
    fn edits_creations_and_directory_events_end_hotness() {
        let dir = temp_dir();
        let hot = table_for(
            dir.path(),
            "edits_creations_and_directory_events_end_hotness",
        );
        let header = dir.path().join("a.h");
        fs::write(&header, b"int a;").expect("write");
        assert!(verify(&hot, &header));
        hot.sync();
        assert_eq!(hot.file(&header).map(|(size, _)| size), Some(6));
        // Same size, and the mtime put back: only the event tells.
        let mtime = fs::metadata(&header)
            .and_then(|meta| meta.modified())
            .expect("mtime");
        fs::write(&header, b"int b;").expect("rewrite");
        fs::File::options()
            .write(true)
            .open(&header)
            .and_then(|file| file.set_modified(mtime))
            .expect("restore mtime");
        hot.sync();
        assert_eq!(hot.file(&header), None, "an edit ends hotness");

        let missing = dir.path().join("shadow.h");
        assert!(verify(&hot, &missing));
        hot.sync();
        assert!(absent_known(&hot, &missing));
        fs::write(&missing, b"").expect("create");
        hot.sync();
        assert!(!absent_known(&hot, &missing), "a creation ends absence");

        assert!(verify(&hot, &header));
        hot.sync();
        assert!(hot.file(&header).is_some());
        // A new directory beside it does not matter to the header ...
        fs::create_dir(dir.path().join("sub")).expect("mkdir");
        hot.sync();
        assert!(hot.file(&header).is_some(), "a new directory hides nothing");
        // ... but one that is moved away takes everything below it along.
        let nested = dir.path().join("sub").join("n.h");
        fs::write(&nested, b"int n;").expect("write nested");
        assert!(verify(&hot, &nested));
        hot.sync();
        assert!(hot.file(&nested).is_some());
        fs::rename(dir.path().join("sub"), dir.path().join("moved")).expect("rename");
        fs::create_dir(dir.path().join("sub")).expect("mkdir again");
        fs::write(&nested, b"int other;").expect("a new file at the old path");
        hot.sync();
        assert_eq!(
            hot.file(&nested),
            None,
            "a moved directory ends hotness below it"
        );
        assert!(hot.file(&header).is_some(), "and only below it");
        // Removing a whole tree, as `rm -rf` does.
        assert!(verify(&hot, &nested));
        hot.sync();
        assert!(hot.file(&nested).is_some());
        fs::remove_dir_all(dir.path().join("sub")).expect("rm -rf");
        hot.sync();
        assert_eq!(
            hot.file(&nested),
            None,
            "a removed directory ends hotness below it"
        );
    }

    #[test]
    fn a_change_between_ticket_and_commit_is_not_committed() {
        let dir = temp_dir();
        let hot = table_for(
            dir.path(),
            "a_change_between_ticket_and_commit_is_not_committed",
        );
        let header = dir.path().join("b.h");
        fs::write(&header, b"1").expect("write");
        let ticket = hot.sync();
        assert!(hot.watch(&header));
        let meta = fs::symlink_metadata(&header).expect("lstat");
        fs::write(&header, b"2").expect("change after the look");
        hot.commit(
            ticket,
            vec![Verified::File {
                path: header.clone(),
                size: 1,
                digest: Digest::default(),
                meta,
            }],
        );
        assert_eq!(hot.file(&header), None);
    }

    #[test]
    fn symlinks_and_hard_links_are_never_hot() {
        let dir = temp_dir();
        let hot = table_for(dir.path(), "symlinks_and_hard_links_are_never_hot");
        let target = dir.path().join("t.h");
        fs::write(&target, b"x").expect("write");
        let link = dir.path().join("l.h");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let hard = dir.path().join("h.h");
        fs::hard_link(&target, &hard).expect("hard link");
        for path in [&link, &hard] {
            verify(&hot, path);
            hot.sync();
            assert_eq!(hot.file(path), None, "{path:?}");
        }
        let linked_dir = dir.path().join("linked");
        std::os::unix::fs::symlink(dir.path(), &linked_dir).expect("dir symlink");
        assert!(
            !hot.watch(&linked_dir.join("t.h")),
            "a path through a symlink"
        );
    }
}
