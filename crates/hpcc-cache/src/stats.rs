//! Statistics: counters kept in 16 small shard files under `<cache_dir>/stats/`.
//!
//! Each shard is `name count` lines. A process adds to the shard chosen by its pid, under an
//! exclusive lock on that shard only, so concurrent compiles rarely contend; `hpcc stats` sums
//! the shards. A failure to record is ignored: statistics never fail a build. The daemon sums
//! what it serves in memory and writes it once a second, on `FlushStats` and when it stops. The
//! directory lives beside the store, outside its accounting and untouched by `hpcc clean`.
//!
//! The counters ([`names`]): hits of each mode, `misses`, `corrupt_entries`,
//! `uncacheable.<reason>` (a `NotCacheable::as_str` name, or `unknown_compiler`, `environment`,
//! `disabled`, `paranoid_local`), `errors.<kind>` (`open`, `cache`, `store`, `journal`, `daemon`),
//! the farm's `remote_compile*` counters and each remote tier's `remote.<tier>.<counter>`. The
//! names are what `hpcc stats --json` shows, a user-facing interface.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

const SHARDS: u32 = 16;

/// Counter names.
pub mod names {
    /// A hit found through a direct-mode manifest.
    pub const DIRECT_HIT: &str = "direct_hits";
    /// A hit found by the preprocessed-output key.
    pub const PREPROCESSOR_HIT: &str = "preprocessor_hits";
    /// A cacheable compile that was not in the cache.
    pub const MISS: &str = "misses";
    /// A cache entry that failed its checksum and was removed.
    pub const CORRUPT: &str = "corrupt_entries";
    /// Prefix of `uncacheable.<reason>` counters.
    pub const UNCACHEABLE: &str = "uncacheable";
    /// Prefix of `errors.<kind>` counters.
    pub const ERRORS: &str = "errors";
    /// Misses compiled on the farm (`[remote_compile]`).
    pub const REMOTE_COMPILED: &str = "remote_compiles";
    /// Of those, served from a worker's cache.
    pub const REMOTE_WORKER_HIT: &str = "remote_compile_worker_hits";
    /// Misses the farm could not compile, compiled locally instead.
    pub const REMOTE_FALLBACK: &str = "remote_compile_fallbacks";
    /// Compiles that do not qualify for the farm, compiled locally.
    pub const REMOTE_INELIGIBLE: &str = "remote_compile_ineligible";
}

/// The stats directory of a cache.
pub fn dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("stats")
}

/// Adds `counts` to this process's shard. Errors are returned for the caller to ignore.
pub fn add(cache_dir: &Path, counts: &[(&str, u64)]) -> Result<()> {
    let shard = dir(cache_dir).join(format!("{:x}", std::process::id() % SHARDS));
    let mut file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&shard)
    {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir(cache_dir))?;
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&shard)?
        }
        Err(error) => return Err(error.into()),
    };
    file.lock()?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let mut table = parse(&text);
    for (name, count) in counts {
        *table.entry((*name).to_owned()).or_default() += count;
    }
    let rendered = render(&table);
    file.seek(SeekFrom::Start(0))?;
    // Counters only grow, so the new text normally covers the old; truncating every time
    // costs a journal commit on some file systems, so it is done only when needed.
    if rendered.len() < text.len() {
        file.set_len(0)?;
    }
    file.write_all(rendered.as_bytes())?;
    Ok(())
}

/// Sums every shard.
pub fn read(cache_dir: &Path) -> Result<BTreeMap<String, u64>> {
    let mut total = BTreeMap::new();
    let entries = match fs::read_dir(dir(cache_dir)) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(total),
        Err(error) => return Err(error).context("reading the stats directory"),
    };
    for entry in entries {
        let entry = entry?;
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        for (name, count) in parse(&text) {
            *total.entry(name).or_default() += count;
        }
    }
    Ok(total)
}

/// Resets every counter.
pub fn zero(cache_dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir(cache_dir)) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).context("reading the stats directory"),
    };
    for entry in entries {
        let file = File::options().write(true).open(entry?.path())?;
        file.lock()?;
        file.set_len(0)?;
    }
    Ok(())
}

fn parse(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn render(table: &BTreeMap<String, u64>) -> String {
    table
        .iter()
        .map(|(name, count)| format!("{name} {count}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_add_up_and_zero() {
        let cache = tempfile::tempdir().expect("tempdir");
        add(
            cache.path(),
            &[(names::MISS, 1), ("uncacheable.linking", 2)],
        )
        .expect("add");
        add(cache.path(), &[(names::MISS, 3)]).expect("add");
        let table = read(cache.path()).expect("read");
        assert_eq!(table.get(names::MISS), Some(&4));
        assert_eq!(table.get("uncacheable.linking"), Some(&2));
        zero(cache.path()).expect("zero");
        assert!(read(cache.path()).expect("read").is_empty());
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let table = parse("misses 3\nnonsense\nx y z\nhits -1\n");
        assert_eq!(table.len(), 1);
    }
}
