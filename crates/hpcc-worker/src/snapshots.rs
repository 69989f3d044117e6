//! Snapshots of idle sessions, kept so that the next job of the same tenant and image
//! restores a guest instead of booting one ([`crate::sessions`] decides when).
//!
//! A snapshot holds one tenant's guest memory, so the store treats it as that tenant's data:
//!
//! - It is keyed by (tenant, image, the runtime's `snapshot_identity`: kernel and VMM
//!   version). Its directory is named by a digest of that key, and its manifest records the
//!   key again; [`SnapshotStore::find`] returns a snapshot only for the exact key it was
//!   saved under, never another tenant's or another kernel's.
//! - Directories are 0700 and files 0600, under the worker's state directory.
//! - Every file's size and BLAKE3 digest are recorded when the snapshot is committed and
//!   checked again before it is handed out; any difference (a file changed, added, removed,
//!   or the manifest unreadable) deletes the snapshot, and the caller boots afresh.
//! - A snapshot older than the TTL is deleted, and the total size is bounded: past
//!   `max_bytes`, the least recently used snapshots are deleted; past a tenant's own limit
//!   ([`SnapshotStore::set_tenant_limit`], its `max_snapshot_bytes`), that tenant's least
//!   recently used ones are. [`SnapshotStore::delete_tenant`] deletes all of a tenant's.
//!
//! Layout:
//!
//! ```text
//! <root>/tmp/<random>/files/...        a snapshot being written (the runtime's files)
//! <root>/<key digest>/manifest         key, save time and each file's size and digest
//! <root>/<key digest>/used             the last use, Unix seconds
//! <root>/<key digest>/files/...        the runtime's files, flat
//! ```
//!
//! A snapshot is written under `tmp/` and renamed into place once its manifest is written, so
//! a reader sees a whole snapshot or none; a newer snapshot of the same key replaces the older
//! one. A restored snapshot stays until it is replaced (when its guest goes idle again),
//! expires or is evicted; files are only ever unlinked, never rewritten in place, so removing
//! one whose guest runs (a VMM may map its memory file) is safe. Times are passed in (`now`), so the TTL and LRU rules are tested without waiting.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first line of every manifest.
const MANIFEST_MAGIC: &str = "hpcc-snapshot-1";

/// What a snapshot is for: it is restored only for exactly this key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotKey {
    /// The tenant whose guest memory it holds.
    pub tenant: String,
    /// The image digest the guest ran.
    pub image: String,
    /// The runtime's snapshot identity (guest kernel, VMM version).
    pub identity: String,
}

impl SnapshotKey {
    /// The hex digest naming the key's directory: every field length-prefixed, so no two
    /// keys share a name.
    pub fn digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(MANIFEST_MAGIC.as_bytes());
        for field in [&self.tenant, &self.image, &self.identity] {
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
        hasher.finalize().to_hex().to_string()
    }
}

/// A failed step of the snapshot store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// File work under the store failed.
    #[error("snapshot store: {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The runtime wrote something that is not a flat set of regular files.
    #[error("snapshot file {path} is not a regular file")]
    NotAFile {
        /// The offending path.
        path: PathBuf,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Io { what, path, source }
}

/// A snapshot being written: the runtime writes into [`Staged::files`]; dropped without
/// [`SnapshotStore::commit`], it is deleted.
pub struct Staged {
    dir: tempfile::TempDir,
}

impl Staged {
    /// The empty directory the runtime's `Session::snapshot` writes into.
    pub fn files(&self) -> PathBuf {
        self.dir.path().join("files")
    }
}

/// One file of a snapshot, as recorded at commit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileRecord {
    name: String,
    size: u64,
    digest: String,
}

/// What a manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Manifest {
    key_digest: String,
    /// The tenant the snapshot is of (`None` if the manifest's line cannot be read back).
    tenant: Option<String>,
    saved: u64,
    files: Vec<FileRecord>,
}

impl Manifest {
    fn render(&self, key: &SnapshotKey) -> String {
        // The key's fields are written for people reading the directory; only the digest is
        // compared, so they need no escaping beyond `{:?}`.
        let mut text = format!(
            "{MANIFEST_MAGIC}\nkey\t{}\ntenant\t{:?}\nimage\t{:?}\nidentity\t{:?}\nsaved\t{}\n",
            self.key_digest, key.tenant, key.image, key.identity, self.saved
        );
        for file in &self.files {
            text.push_str(&format!(
                "file\t{}\t{}\t{}\n",
                file.name, file.size, file.digest
            ));
        }
        text
    }

    /// Parses a manifest; `None` if it is not one this version wrote.
    fn parse(text: &str) -> Option<Manifest> {
        let mut lines = text.lines();
        if lines.next()? != MANIFEST_MAGIC {
            return None;
        }
        let mut key_digest = None;
        let mut tenant = None;
        let mut saved = None;
        let mut files = Vec::new();
        for line in lines {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields[..] {
                ["key", digest] => key_digest = Some(digest.to_owned()),
                ["saved", secs] => saved = Some(secs.parse().ok()?),
                ["file", name, size, digest] => files.push(FileRecord {
                    name: name.to_owned(),
                    size: size.parse().ok()?,
                    digest: digest.to_owned(),
                }),
                // Written with `{:?}`: a tenant name (letters, digits, `._-`) is only quoted.
                ["tenant", quoted] => {
                    tenant = quoted
                        .strip_prefix('"')
                        .and_then(|rest| rest.strip_suffix('"'))
                        .filter(|name| hpcc_core::config::is_safe_name(name))
                        .map(str::to_owned);
                }
                ["image" | "identity", _] => {}
                _ => return None,
            }
        }
        Some(Manifest {
            key_digest: key_digest?,
            tenant,
            saved: saved?,
            files,
        })
    }

    fn bytes(&self) -> u64 {
        self.files.iter().map(|file| file.size).sum()
    }
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// The snapshots of one worker.
pub struct SnapshotStore {
    root: PathBuf,
    ttl: Duration,
    max_bytes: u64,
    /// Tenants' own limits, in bytes, as their routing tokens last said.
    tenant_limits: Mutex<std::collections::HashMap<String, u64>>,
    /// Commits, lookups and evictions are serialized: they rename and delete whole
    /// directories, and are rare next to the guests' boots they save.
    lock: Mutex<()>,
}

impl SnapshotStore {
    /// Opens (creating it 0700 if needed) the store at `root`, keeping snapshots `ttl` after
    /// they were saved and at most `max_bytes` in all. Snapshots left half-written by an
    /// earlier process are removed.
    pub fn open(
        root: &Path,
        ttl: Duration,
        max_bytes: u64,
    ) -> Result<SnapshotStore, SnapshotError> {
        for dir in [root.to_owned(), root.join("tmp")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_error("creating", &dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(io_error("restricting", &dir))?;
        }
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_error("reading", &tmp))? {
            let entry = entry.map_err(io_error("reading", &tmp))?;
            if let Err(error) = fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), %error, "removing a partial snapshot");
            }
        }
        Ok(SnapshotStore {
            root: root.to_owned(),
            ttl,
            max_bytes,
            tenant_limits: Mutex::new(std::collections::HashMap::new()),
            lock: Mutex::new(()),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Sets `tenant`'s limit (its `max_snapshot_bytes`; `None`: only the store's bound),
    /// applied from its next snapshot on.
    pub fn set_tenant_limit(&self, tenant: &str, limit: Option<u64>) {
        let mut limits = self
            .tenant_limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match limit {
            Some(limit) => {
                limits.insert(tenant.to_owned(), limit);
            }
            None => {
                limits.remove(tenant);
            }
        }
    }

    fn tenant_limit(&self, tenant: &str) -> Option<u64> {
        self.tenant_limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .copied()
    }

    /// Each tenant with snapshots: `(tenant, snapshots, bytes)`, by tenant.
    pub fn usage(&self) -> Vec<(String, u64, u64)> {
        let _guard = self.guard();
        let mut usage: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for (_, manifest, _) in self.list() {
            if let Some(Manifest {
                tenant: Some(tenant),
                ..
            }) = &manifest
            {
                let entry = usage.entry(tenant.clone()).or_default();
                entry.0 += 1;
                entry.1 += manifest.as_ref().map_or(0, Manifest::bytes);
            }
        }
        usage
            .into_iter()
            .map(|(tenant, (count, bytes))| (tenant, count, bytes))
            .collect()
    }

    /// Deletes every snapshot of `tenant`; returns how many and their bytes.
    pub fn delete_tenant(&self, tenant: &str) -> (u64, u64) {
        let _guard = self.guard();
        let mut deleted = (0, 0);
        for (dir, manifest, _) in self.list() {
            if let Some(manifest) =
                manifest.filter(|manifest| manifest.tenant.as_deref() == Some(tenant))
            {
                deleted.0 += 1;
                deleted.1 += manifest.bytes();
                self.remove(&dir);
            }
        }
        deleted
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh, empty, private directory for a runtime to write a snapshot into.
    pub fn stage(&self) -> Result<Staged, SnapshotError> {
        let tmp = self.root.join("tmp");
        let dir = tempfile::Builder::new()
            .prefix("snap-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(&tmp)
            .map_err(io_error("creating a directory in", &tmp))?;
        let files = dir.path().join("files");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&files)
            .map_err(io_error("creating", &files))?;
        Ok(Staged { dir })
    }

    /// Records what the runtime wrote into `staged` as the snapshot of `key` saved at `now`:
    /// makes every file 0600, digests it, writes the manifest and renames the whole into
    /// place (replacing an older snapshot of the key), then evicts past the size bound.
    /// Returns whether the snapshot was kept (one larger than the whole bound is not).
    pub fn commit(
        &self,
        key: &SnapshotKey,
        staged: Staged,
        now: SystemTime,
    ) -> Result<bool, SnapshotError> {
        let files_dir = staged.files();
        let mut files = Vec::new();
        for entry in fs::read_dir(&files_dir).map_err(io_error("reading", &files_dir))? {
            let entry = entry.map_err(io_error("reading", &files_dir))?;
            let path = entry.path();
            let metadata = fs::symlink_metadata(&path).map_err(io_error("reading", &path))?;
            let name = entry
                .file_name()
                .into_string()
                .ok()
                .filter(|name| !name.contains(['\t', '\n']) && metadata.file_type().is_file());
            let Some(name) = name else {
                return Err(SnapshotError::NotAFile { path });
            };
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(io_error("restricting", &path))?;
            let (size, digest) = digest_file(&path)?;
            files.push(FileRecord { name, size, digest });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let key_digest = key.digest();
        let manifest = Manifest {
            key_digest: key_digest.clone(),
            tenant: Some(key.tenant.clone()),
            saved: unix_secs(now),
            files,
        };
        let manifest_path = staged.dir.path().join("manifest");
        write_private(&manifest_path, manifest.render(key).as_bytes())?;
        let used_path = staged.dir.path().join("used");
        write_private(&used_path, unix_secs(now).to_string().as_bytes())?;
        let _guard = self.guard();
        let target = self.root.join(&key_digest);
        if target.exists() {
            self.remove(&target);
        }
        let staged_path = staged.dir.keep();
        if let Err(source) = fs::rename(&staged_path, &target) {
            let _ = fs::remove_dir_all(&staged_path);
            return Err(SnapshotError::Io {
                what: "renaming a snapshot to",
                path: target,
                source,
            });
        }
        self.evict_locked(Some(&key_digest), now);
        if let Some(limit) = self.tenant_limit(&key.tenant) {
            self.evict_tenant_locked(&key.tenant, limit, &key_digest);
        }
        let kept = target.exists();
        Ok(kept)
    }

    /// The files directory of `key`'s snapshot, if there is one within its TTL whose every
    /// file still has its recorded size and digest; a snapshot that fails any check is
    /// deleted. Marks the snapshot used at `now`.
    pub fn find(&self, key: &SnapshotKey, now: SystemTime) -> Option<PathBuf> {
        let _guard = self.guard();
        let dir = self.root.join(key.digest());
        if !dir.is_dir() {
            return None;
        }
        match self.check(&dir, key, now) {
            Ok(()) => {
                let used = dir.join("used");
                if let Err(error) = write_private(&used, unix_secs(now).to_string().as_bytes()) {
                    tracing::warn!(%error, "marking a snapshot used");
                }
                Some(dir.join("files"))
            }
            Err(reason) => {
                tracing::warn!(snapshot = %dir.display(), reason, "snapshot deleted, booting afresh");
                self.remove(&dir);
                None
            }
        }
    }

    /// Why the snapshot in `dir` must not be restored for `key` at `now`, if it must not.
    fn check(&self, dir: &Path, key: &SnapshotKey, now: SystemTime) -> Result<(), String> {
        let text = fs::read_to_string(dir.join("manifest"))
            .map_err(|error| format!("unreadable manifest: {error}"))?;
        let manifest = Manifest::parse(&text).ok_or("malformed manifest")?;
        if manifest.key_digest != key.digest() {
            return Err("saved for another key".into());
        }
        if unix_secs(now) >= manifest.saved.saturating_add(self.ttl.as_secs()) {
            return Err("older than the snapshot TTL".into());
        }
        let files_dir = dir.join("files");
        let mut present: Vec<String> = fs::read_dir(&files_dir)
            .map_err(|error| format!("unreadable files: {error}"))?
            .map(|entry| {
                entry
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .map_err(|error| format!("unreadable files: {error}"))
            })
            .collect::<Result<_, _>>()?;
        present.sort();
        let recorded: Vec<&str> = manifest
            .files
            .iter()
            .map(|file| file.name.as_str())
            .collect();
        if present != recorded {
            return Err(format!("files {present:?}, recorded {recorded:?}"));
        }
        for file in &manifest.files {
            let path = files_dir.join(&file.name);
            let metadata =
                fs::symlink_metadata(&path).map_err(|error| format!("{}: {error}", file.name))?;
            if !metadata.file_type().is_file() {
                return Err(format!("{} is not a regular file", file.name));
            }
            let (size, digest) = digest_file(&path).map_err(|error| error.to_string())?;
            if size != file.size || digest != file.digest {
                return Err(format!("{} does not match its recorded digest", file.name));
            }
        }
        Ok(())
    }

    /// Deletes snapshots past their TTL at `now`; returns how many.
    pub fn expire(&self, now: SystemTime) -> usize {
        let _guard = self.guard();
        let mut removed = 0;
        for (dir, manifest, _) in self.list() {
            let expired = manifest.as_ref().is_none_or(|manifest| {
                unix_secs(now) >= manifest.saved.saturating_add(self.ttl.as_secs())
            });
            if expired {
                self.remove(&dir);
                removed += 1;
            }
        }
        removed
    }

    /// Bytes of all committed snapshots.
    pub fn total_bytes(&self) -> u64 {
        let _guard = self.guard();
        self.list()
            .iter()
            .filter_map(|(_, manifest, _)| manifest.as_ref().map(Manifest::bytes))
            .sum()
    }

    /// Every committed snapshot: its directory, manifest (`None` if unreadable) and last use.
    fn list(&self) -> Vec<(PathBuf, Option<Manifest>, u64)> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name() != "tmp")
            .map(|entry| {
                let dir = entry.path();
                let manifest = fs::read_to_string(dir.join("manifest"))
                    .ok()
                    .and_then(|text| Manifest::parse(&text));
                let used = fs::read_to_string(dir.join("used"))
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                    .unwrap_or(0);
                (dir, manifest, used)
            })
            .collect()
    }

    /// Deletes least recently used snapshots (never `keep`, unless it alone is over the
    /// bound) until the total fits `max_bytes`; unreadable ones go first.
    fn evict_locked(&self, keep: Option<&str>, now: SystemTime) {
        let _ = now;
        let mut snapshots = self.list();
        let mut total: u64 = snapshots
            .iter()
            .filter_map(|(_, manifest, _)| manifest.as_ref().map(Manifest::bytes))
            .sum();
        // Unreadable first, then oldest use first; the one just written last of all.
        snapshots.sort_by_key(|(dir, manifest, used)| {
            let kept = keep.is_some_and(|keep| dir.file_name().is_some_and(|name| name == keep));
            (kept, manifest.is_some(), *used)
        });
        for (dir, manifest, _) in snapshots {
            let Some(manifest) = manifest else {
                self.remove(&dir);
                continue;
            };
            if total <= self.max_bytes {
                break;
            }
            total = total.saturating_sub(manifest.bytes());
            tracing::info!(snapshot = %dir.display(), bytes = manifest.bytes(), "evicting a snapshot");
            self.remove(&dir);
        }
    }

    /// Deletes `tenant`'s least recently used snapshots until its own fit `limit`; the one
    /// just written (`newest`) goes last, and goes too if it alone is over the limit.
    fn evict_tenant_locked(&self, tenant: &str, limit: u64, newest: &str) {
        let mut own: Vec<(PathBuf, u64, bool, u64)> = self
            .list()
            .into_iter()
            .filter_map(|(dir, manifest, used)| {
                let manifest = manifest?;
                (manifest.tenant.as_deref() == Some(tenant)).then(|| {
                    let is_newest = dir.file_name().is_some_and(|name| name == newest);
                    (dir, manifest.bytes(), is_newest, used)
                })
            })
            .collect();
        let mut total: u64 = own.iter().map(|(_, bytes, _, _)| bytes).sum();
        own.sort_by_key(|(_, _, is_newest, used)| (*is_newest, *used));
        for (dir, bytes, _, _) in own {
            if total <= limit {
                break;
            }
            total = total.saturating_sub(bytes);
            tracing::info!(snapshot = %dir.display(), tenant, bytes, "over the tenant's snapshot quota");
            self.remove(&dir);
        }
    }

    /// Removes a snapshot directory: renamed into `tmp/` first, so it vanishes whole.
    fn remove(&self, dir: &Path) {
        let doomed = self.root.join("tmp").join(format!(
            "doomed-{}-{}",
            dir.file_name()
                .map(|name| name.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        let removed = fs::rename(dir, &doomed).and_then(|()| fs::remove_dir_all(&doomed));
        if let Err(error) = removed {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(snapshot = %dir.display(), %error, "removing a snapshot");
            }
        }
    }
}

/// The size and BLAKE3 hex digest of a file, read in full.
fn digest_file(path: &Path) -> Result<(u64, String), SnapshotError> {
    let mut file = fs::File::open(path).map_err(io_error("opening", path))?;
    let mut hasher = blake3::Hasher::new();
    let size = io::copy(&mut file, &mut hasher).map_err(io_error("reading", path))?;
    Ok((size, hasher.finalize().to_hex().to_string()))
}

/// Writes a 0600 file.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("writing", path))?;
    file.write_all(bytes).map_err(io_error("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn key(tenant: &str) -> SnapshotKey {
        SnapshotKey {
            tenant: tenant.into(),
            image: format!("sha256:{}", "ab".repeat(32)),
            identity: "kernel-x qemu-7.2".into(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn save(store: &SnapshotStore, key: &SnapshotKey, bytes: usize, now: SystemTime) -> bool {
        let staged = store.stage().unwrap();
        fs::write(staged.files().join("memory"), vec![7u8; bytes]).unwrap();
        fs::write(staged.files().join("state"), b"cpu").unwrap();
        store.commit(key, staged, now).unwrap()
    }

    #[test]
    fn a_snapshot_is_private_and_found_only_for_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(&dir.path().join("snap"), Duration::from_secs(60), 1 << 20)
            .unwrap();
        assert!(save(&store, &key("acme"), 100, at(0)));
        let found = store.find(&key("acme"), at(1)).expect("its own key");
        assert_eq!(fs::read(found.join("state")).unwrap(), b"cpu");
        for path in [
            store.root().to_owned(),
            found.parent().unwrap().to_owned(),
            found.clone(),
        ] {
            assert_eq!(
                fs::metadata(&path).unwrap().mode() & 0o777,
                0o700,
                "{path:?}"
            );
        }
        for name in ["memory", "state"] {
            assert_eq!(
                fs::metadata(found.join(name)).unwrap().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(store.find(&key("globex"), at(1)), None, "another tenant");
        let mut other_kernel = key("acme");
        other_kernel.identity = "kernel-y qemu-7.2".into();
        assert_eq!(store.find(&other_kernel, at(1)), None, "another kernel");
        assert!(store.find(&key("acme"), at(2)).is_some(), "still there");
        // A manifest copied under another key's name is refused and deleted.
        let theirs = store.root().join(key("globex").digest());
        fs::rename(found.parent().unwrap(), &theirs).unwrap();
        assert_eq!(store.find(&key("globex"), at(3)), None);
        assert!(!theirs.exists());
    }

    #[test]
    fn a_tampered_file_deletes_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), Duration::from_secs(60), 1 << 20).unwrap();
        for tamper in ["change", "add", "remove"] {
            assert!(save(&store, &key("acme"), 100, at(0)));
            let files = store.root().join(key("acme").digest()).join("files");
            match tamper {
                "change" => fs::write(files.join("memory"), vec![8u8; 100]).unwrap(),
                "add" => fs::write(files.join("extra"), b"x").unwrap(),
                _ => fs::remove_file(files.join("state")).unwrap(),
            }
            assert_eq!(store.find(&key("acme"), at(1)), None, "{tamper}");
            assert!(!files.exists(), "{tamper}: deleted");
        }
    }

    #[test]
    fn snapshots_expire_after_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), Duration::from_secs(60), 1 << 20).unwrap();
        assert!(save(&store, &key("acme"), 10, at(0)));
        assert!(save(&store, &key("globex"), 10, at(30)));
        assert_eq!(store.expire(at(59)), 0);
        assert_eq!(store.expire(at(60)), 1, "acme's is 60 s old");
        assert_eq!(store.find(&key("acme"), at(60)), None);
        assert!(store.find(&key("globex"), at(89)).is_some());
        assert_eq!(
            store.find(&key("globex"), at(90)),
            None,
            "expired on lookup"
        );
        assert_eq!(store.total_bytes(), 0);
    }

    #[test]
    fn the_total_is_bounded_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        // Each snapshot is 1000 + 3 bytes; three fit, four do not.
        let store = SnapshotStore::open(dir.path(), Duration::from_secs(3_600), 3_100).unwrap();
        for (second, tenant) in ["a", "b", "c"].into_iter().enumerate() {
            assert!(save(&store, &key(tenant), 1_000, at(second as u64)));
        }
        assert!(store.find(&key("a"), at(10)).is_some(), "a used last");
        assert!(save(&store, &key("d"), 1_000, at(11)));
        assert!(store.total_bytes() <= 3_100);
        assert_eq!(store.find(&key("b"), at(12)), None, "least recently used");
        for tenant in ["a", "c", "d"] {
            assert!(store.find(&key(tenant), at(12)).is_some(), "{tenant}");
        }
        assert!(
            !save(&store, &key("huge"), 5_000, at(13)),
            "larger than the bound"
        );
        assert_eq!(store.find(&key("huge"), at(14)), None);
        // A newer snapshot of a key replaces the older one.
        assert!(save(&store, &key("a"), 500, at(15)));
        assert!(store.total_bytes() <= 3_100);
        assert_eq!(
            fs::metadata(store.find(&key("a"), at(16)).unwrap().join("memory"))
                .unwrap()
                .len(),
            500
        );
    }

    #[test]
    fn staged_snapshots_that_are_dropped_or_left_behind_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), Duration::from_secs(60), 1 << 20).unwrap();
        let staged = store.stage().unwrap();
        let path = staged.files();
        fs::write(path.join("memory"), b"m").unwrap();
        drop(staged);
        assert!(!path.exists());
        let left = store.stage().unwrap();
        let left_path = left.dir.keep();
        let reopened = SnapshotStore::open(dir.path(), Duration::from_secs(60), 1 << 20).unwrap();
        assert!(!left_path.exists());
        let staged = reopened.stage().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", staged.files().join("memory")).unwrap();
        assert!(matches!(
            reopened.commit(&key("acme"), staged, at(0)),
            Err(SnapshotError::NotAFile { .. })
        ));
    }

    #[test]
    fn a_tenant_quota_evicts_only_that_tenants_snapshots_and_delete_takes_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), Duration::from_secs(600), 1 << 20).unwrap();
        let image = |tenant: &str, n: u8| SnapshotKey {
            image: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            ..key(tenant)
        };
        store.set_tenant_limit("acme", Some(250));
        assert!(save(&store, &image("globex", 1), 100, at(0)));
        assert!(save(&store, &image("acme", 1), 100, at(1)));
        assert!(save(&store, &image("acme", 2), 100, at(2)));
        // A third of acme's goes over its 250 bytes: acme's least recently used goes.
        assert!(save(&store, &image("acme", 3), 100, at(3)));
        assert_eq!(store.find(&image("acme", 1), at(4)), None);
        assert!(store.find(&image("acme", 2), at(4)).is_some());
        assert!(
            store.find(&image("globex", 1), at(4)).is_some(),
            "never another's"
        );
        assert_eq!(
            store.usage(),
            vec![("acme".to_owned(), 2, 206), ("globex".to_owned(), 1, 103)]
        );
        // Under a quota below one snapshot, acme keeps none, not even the newest.
        store.set_tenant_limit("acme", Some(50));
        assert!(!save(&store, &image("acme", 4), 100, at(5)));
        assert!(store.find(&image("acme", 2), at(5)).is_none());
        store.set_tenant_limit("acme", None);
        assert!(save(&store, &image("acme", 5), 100, at(6)));
        assert_eq!(store.delete_tenant("acme"), (1, 103));
        assert_eq!(store.usage(), vec![("globex".to_owned(), 1, 103)]);
        assert!(store.find(&image("acme", 5), at(7)).is_none());
    }
}
