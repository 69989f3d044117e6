//! Recording and verifying the files a compile read (direct mode).
//!
//! After a miss, [`record`] turns the dependency list into a [`ManifestEntry`]: every file with
//! its content digest, and, per directory on the include search path, the names whose
//! appearance would shadow a header that was used. On a lookup, [`verify`] checks both: content
//! digests are recomputed (size first, the cheap mismatch), and an absent name is re-checked
//! only in a directory whose stamp (device, inode, mtime, ctime) changed.

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

/// A directory changed more recently than this before it was stamped is not trusted: a later
/// change within the same file-system timestamp tick would leave the stamp unchanged.
const STAMP_TRUST_MARGIN: Duration = Duration::from_millis(20);

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

/// Whether `bytes` use a macro whose value depends on when or on which file's timestamp the
/// compile runs. `SOURCE_DATE_EPOCH` pins `__DATE__` and `__TIME__` (when the compiler honours
/// it), never `__TIMESTAMP__`, which is the source file's mtime.
fn has_time_macro(bytes: &[u8], time_pinned: bool) -> bool {
    memchr::memmem::find(bytes, b"__TIMESTAMP__").is_some()
        || (!time_pinned
            && (memchr::memmem::find(bytes, b"__DATE__").is_some()
                || memchr::memmem::find(bytes, b"__TIME__").is_some()))
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
    /// A file changed while the compile ran; caching the result could pair it with the wrong
    /// content.
    Raced(PathBuf),
}

/// Builds the manifest entry for a finished compile.
pub fn record(inputs: &RecordInputs<'_>) -> Result<Recorded> {
    let mut seen = BTreeSet::new();
    let mut files = Vec::with_capacity(inputs.files.len());
    let mut absolute_files = Vec::with_capacity(inputs.files.len());
    let mut buffer = Vec::new();
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
        if modified_after(&meta, too_new) {
            return Ok(Recorded::Raced(absolute));
        }
        let (size, digest) =
            hash_file(&absolute, &mut buffer).with_context(|| format!("reading {absolute:?}"))?;
        if has_time_macro(&buffer, inputs.time_pinned) {
            return Ok(Recorded::TimeMacros);
        }
        // Hashing read the file after the stat: check again that it did not change meanwhile,
        // which also makes the stamp a faithful witness of the hashed content.
        let after = fs::metadata(&absolute).with_context(|| format!("stat {absolute:?}"))?;
        let stamp = stamp_of(&meta);
        if after.size() != size || meta.size() != size || stamp_of(&after) != stamp {
            return Ok(Recorded::Raced(absolute));
        }
        files.push(FileRecord {
            path: store_path(&absolute, inputs.cwd, inputs.root),
            size,
            digest,
            stamp: Some(stamp),
        });
        absolute_files.push(absolute);
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

fn modified_after(meta: &fs::Metadata, limit: SystemTime) -> bool {
    let limit_ns = limit
        .duration_since(UNIX_EPOCH)
        .map(|d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
        .unwrap_or(0);
    let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    let ctime = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
    mtime >= limit_ns || ctime >= limit_ns
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

/// Checks a manifest entry against the file system. `skip` is a file already verified by the
/// caller (the source, whose digest is in the key).
pub fn verify(
    entry: &ManifestEntry,
    root: Option<&Path>,
    skip: Option<&StoredPath>,
    buffer: &mut Vec<u8>,
    mut digests: Option<&mut HashMap<PathBuf, Option<(u64, Digest)>>>,
) -> Result<bool> {
    for absent in &entry.absent {
        let Some(dir) = resolve(&absent.dir, root) else {
            return Ok(false);
        };
        if let Some(stamp) = absent.stamp {
            if let Ok(meta) = fs::metadata(&dir) {
                if stamp_of(&meta) == stamp {
                    continue;
                }
            }
        }
        for name in &absent.names {
            let candidate = dir.join(std::ffi::OsStr::from_bytes(name));
            if fs::symlink_metadata(&candidate).is_ok() {
                return Ok(false);
            }
        }
    }
    for file in &entry.files {
        if skip == Some(&file.path) {
            continue;
        }
        let Some(path) = resolve(&file.path, root) else {
            return Ok(false);
        };
        let remembered = digests
            .as_ref()
            .and_then(|digests| digests.get(&path).copied());
        let known = match remembered {
            Some(known) => known,
            None => {
                let computed = match fs::metadata(&path) {
                    Ok(meta) if meta.len() != file.size => Some((meta.len(), Digest::default())),
                    // Unchanged since it was hashed on this machine: see `FileRecord::stamp`.
                    Ok(meta) if file.stamp == Some(stamp_of(&meta)) => {
                        Some((file.size, file.digest))
                    }
                    Ok(_) => hash_file(&path, buffer).ok(),
                    Err(_) => None,
                };
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
