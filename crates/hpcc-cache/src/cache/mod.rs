//! One cacheable compile: compute the key, look it up, restore a hit or run the compiler and
//! store what it produced.
//!
//! The invariant everything here serves: a hit reproduces exactly what the compiler would have
//! produced for *this* invocation (object, dependency file, `.dwo`, `.gcno`, stdout, stderr and
//! exit code); when in doubt, it is a miss.
//!
//! [`Job::run`] prints nothing: it returns [`Served`], the outcome and what to replay on stdout
//! and stderr, so the same flow serves the wrapper in-process and the daemon on a wrapper's
//! behalf ([`Job::lookup_only`], which runs no compiler). An `Err` means nothing ran yet: the
//! caller runs the compiler itself. An entry that passes its checksum but does not decode is
//! removed from memory and disk and counted as corrupt, like one that fails it; either way the
//! lookup goes on as if it were absent.
//!
//! By concern:
//! - here: [`Job`], its options (daemon state, farm, runner) and the dispatch between modes;
//! - `key`: what every key holds (compiler identity, language, root, environment, ...);
//! - `direct`: direct mode, manifests of the files a compile read, and learning them on a miss;
//! - `preprocessor`: preprocessor mode, keyed by `-E` output;
//! - `execute`: running a miss, here or on the farm;
//! - `restore`: collecting a compile's outputs into an entry and writing a hit's back;
//! - `warm`: what the daemon keeps between lookups ([`Warm`], [`ManifestCache`]);
//! - `runner`: the one place a compiler is spawned ([`Runner`]).

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use hpcc_core::args::{CompileInvocation, NotCacheable};
use hpcc_core::config::{Config, Mode};
use hpcc_core::digest::{Digest, KeyHasher};
use hpcc_core::entry::{ResultEntry, SectionKind};
use hpcc_core::project::RootRewriter;
use hpcc_store::{DiskStore, Fetched, Kind, Lookup, MemoryTier};

use crate::caller::Caller;
use crate::hot::HotFiles;
use crate::identity::Identity;
use crate::remote_compile::{self, RemoteCompiler};

mod direct;
mod execute;
mod key;
mod preprocessor;
mod restore;
mod runner;
mod warm;

use preprocessor::alters_preprocessed_output;
pub use restore::missing_output_dir;
pub use runner::{Processes, RunWith, Runner};
pub use warm::{ManifestCache, PreparedManifest, RemoteFallback, Warm};

/// Bumped whenever the meaning of a key changes, so old entries simply stop matching.
const KEY_FORMAT: &str = "hpcc-key-4";

/// Environment variables that change what a compile produces or prints.
const KEY_ENVIRONMENT: &[&str] = &[
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
    "OBJCPLUS_INCLUDE_PATH",
    "SOURCE_DATE_EPOCH",
    "GCC_COLORS",
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
    "GCC_COMPARE_DEBUG",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
];

/// Environment variables that make the compiler write files hpcc would not restore.
pub const UNCACHEABLE_ENVIRONMENT: &[&str] = &["DEPENDENCIES_OUTPUT", "SUNPRO_DEPENDENCIES"];

/// How a compile was served.
#[derive(Debug)]
pub enum Outcome {
    /// Served from a direct-mode manifest.
    DirectHit,
    /// Served from a preprocessor-mode key.
    PreprocessorHit,
    /// Compiled and stored (or compiled and not storable, with the reason).
    Miss {
        /// The compiler's exit code.
        exit: i32,
        /// Why the result was not stored, if it was not.
        not_stored: Option<NotCacheable>,
        /// A cache entry found corrupt (and removed) on the way.
        corrupt: bool,
    },
    /// Lookup only ([`Job::lookup_only`]): not in the cache, nothing was run.
    NotFound {
        /// The key that was looked up (direct or preprocessor), naming this compile for
        /// in-flight deduplication; `None` when there is none (an unreadable source).
        key: Option<hpcc_core::digest::Digest>,
        /// A cache entry found corrupt (and removed) on the way.
        corrupt: bool,
    },
}

/// Everything about one compile that the flow needs.
pub struct Job<'a> {
    /// The real compiler.
    pub compiler: &'a Path,
    /// The classified invocation.
    pub invocation: &'a CompileInvocation,
    /// Settings.
    pub config: &'a Config,
    /// The cache directory.
    pub cache_dir: &'a Path,
    /// The store inside it.
    pub store: &'a DiskStore,
    /// Who asked: directory, environment, mask, terminal.
    pub caller: &'a Caller,
    /// What the compile printed (or a hit replays), for the caller to print.
    printed: RefCell<Printed>,
    /// The daemon's hot-file table, when the daemon runs this job.
    hot: Option<&'a HotFiles>,
    /// Stop after the lookup: a miss is [`Outcome::NotFound`] and runs nothing.
    lookup_only: bool,
    /// The daemon's memory tier in front of the store.
    memory: Option<&'a MemoryTier>,
    /// The daemon's decoded manifests.
    manifests: Option<&'a ManifestCache>,
    /// The daemon's remote stores, asked after a local miss.
    remote: Option<&'a dyn RemoteFallback>,
    /// The daemon's farm: a miss is compiled there (results keyed by its image).
    farm: Option<&'a dyn RemoteCompiler>,
    /// Where the caller's directory is, for brevity.
    cwd: &'a Path,
    /// The entries this job put in the store, for the upload journal.
    stored: RefCell<Vec<(Kind, Digest)>>,
    /// Spawns the compiler.
    runner: &'a dyn Runner,
    /// The object the farm returned, stored as received: the file it was written to may be
    /// rewritten meanwhile (a wrapper that stopped waiting compiles the same output itself),
    /// and an entry under the farm's key must hold the farm's bytes.
    remote_object: RefCell<Option<Vec<u8>>>,
}

/// What a compile printed, to be written to the caller's stdout and stderr.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Printed {
    /// Bytes for stdout.
    pub stdout: Vec<u8>,
    /// Bytes for stderr.
    pub stderr: Vec<u8>,
}

/// A compile served through the cache: how, and what to print.
#[derive(Debug)]
pub struct Served {
    /// How it was served.
    pub outcome: Outcome,
    /// What to print.
    pub printed: Printed,
}

/// What every mode's key starts from, computed once per job.
struct Prepared {
    identity: Identity,
    root: Option<PathBuf>,
    rewriter: RootRewriter,
    injected: Vec<OsString>,
    common_key: KeyHasher,
}

impl<'a> Job<'a> {
    /// A job for `invocation` of `compiler` on behalf of `caller`.
    pub fn new(
        compiler: &'a Path,
        invocation: &'a CompileInvocation,
        config: &'a Config,
        cache_dir: &'a Path,
        store: &'a DiskStore,
        caller: &'a Caller,
    ) -> Job<'a> {
        Job {
            compiler,
            invocation,
            config,
            cache_dir,
            store,
            caller,
            printed: RefCell::new(Printed::default()),
            hot: None,
            lookup_only: false,
            memory: None,
            manifests: None,
            remote: None,
            farm: None,
            cwd: &caller.cwd,
            stored: RefCell::new(Vec::new()),
            runner: &Processes,
            remote_object: RefCell::new(None),
        }
    }

    /// Runs the compiler through `runner` instead of as a process of its own (tests).
    pub fn with_runner(mut self, runner: &'a dyn Runner) -> Job<'a> {
        self.runner = runner;
        self
    }

    /// Compiles a miss on `farm` when this invocation qualifies (see
    /// [`remote_compile::ineligible`]); keys then name the farm's image instead of standing
    /// for the local compiler alone. An invocation that does not qualify is untouched.
    pub fn remote_compile(mut self, farm: Option<&'a dyn RemoteCompiler>) -> Job<'a> {
        self.farm = farm.filter(|_| self.remote_reason().is_none());
        self
    }

    /// Why this job's miss would be compiled here despite a farm, or `None`.
    pub fn remote_reason(&self) -> Option<&'static str> {
        let driver = self
            .compiler
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        remote_compile::ineligible(driver, self.invocation)
    }

    /// Whether a miss is compiled on the farm.
    pub fn is_remote(&self) -> bool {
        self.farm.is_some()
    }

    /// Paranoid mode: nothing is read from or written to this machine's cache.
    fn paranoid(&self) -> bool {
        self.farm.is_some_and(|farm| farm.paranoid())
    }

    /// Stores an entry, unless in paranoid mode.
    fn put(&self, kind: Kind, key: &Digest, bytes: &[u8]) -> Result<()> {
        if !self.paranoid() {
            self.store.put(kind, key, bytes)?;
            self.stored.borrow_mut().push((kind, *key));
        }
        Ok(())
    }

    /// The entries this job has put in the store so far (none on a hit), each once.
    pub fn stored(&self) -> Vec<(Kind, Digest)> {
        let mut stored = self.stored.borrow().clone();
        stored.dedup();
        stored
    }

    /// Looks up only: a hit is served, a miss returns [`Outcome::NotFound`] without running
    /// anything. `warm` is the state a daemon keeps between lookups.
    pub fn lookup_only(mut self, warm: Option<Warm<'a>>) -> Job<'a> {
        self.lookup_only = true;
        if let Some(warm) = warm {
            self.hot = Some(warm.hot);
            self.memory = Some(warm.memory);
            self.manifests = Some(warm.manifests);
            self.remote = warm.remote;
        }
        self
    }

    /// Reads an entry through the memory tier, if there is one.
    fn fetch(&self, kind: Kind, key: &hpcc_core::digest::Digest) -> Result<Fetched> {
        if self.paranoid() {
            return Ok(Fetched::Miss);
        }
        let local = self.fetch_local(kind, key)?;
        if matches!(local, Fetched::Hit(_)) {
            return Ok(local);
        }
        // Behind the local cache: the daemon's remote tiers, which copy a verified entry into
        // the local store before saying so.
        match self.remote {
            Some(remote) if remote.fetch_into(self.store, kind, key) => {
                match self.fetch_local(kind, key)? {
                    Fetched::Hit(bytes) => Ok(Fetched::Hit(bytes)),
                    _ => Ok(local),
                }
            }
            _ => Ok(local),
        }
    }

    fn fetch_local(&self, kind: Kind, key: &hpcc_core::digest::Digest) -> Result<Fetched> {
        Ok(match self.memory {
            Some(memory) => memory.get(self.store, kind, key)?,
            None => match self.store.get(kind, key)? {
                Lookup::Hit(bytes) => Fetched::Hit(Arc::new(bytes)),
                Lookup::Miss => Fetched::Miss,
                Lookup::Corrupt => Fetched::Corrupt,
            },
        })
    }

    /// Removes an entry that did not decode, from memory and disk.
    fn discard(&self, kind: Kind, key: &hpcc_core::digest::Digest) {
        if let Some(memory) = self.memory {
            memory.forget(kind, key);
        }
        let _ = self.store.remove(kind, key);
    }

    /// Runs the compile through the cache. An `Err` means nothing was run yet: the caller
    /// runs the compiler itself. Nothing is printed: [`Served::printed`] is for the caller.
    pub fn run(&self) -> Result<Served> {
        let outcome = self.serve()?;
        Ok(Served {
            outcome,
            printed: self.printed.take(),
        })
    }

    fn serve(&self) -> Result<Outcome> {
        // A source that cannot be read is the compiler's error to report, not the cache's: run
        // it as is, so the exit code and message are the compiler's and stats say why.
        if let Err(error) = fs::File::open(self.cwd.join(&self.invocation.source)) {
            if self.lookup_only {
                return Ok(Outcome::NotFound {
                    key: None,
                    corrupt: false,
                });
            }
            tracing::debug!(%error, "source unreadable; running the compiler as is");
            let output = self.compile(&[], &[])?;
            let exit = output.status.code().unwrap_or(1);
            let mut result = ResultEntry::default();
            result.set(SectionKind::Stdout, output.stdout);
            result.set(SectionKind::Stderr, output.stderr);
            self.replay(&result);
            let reason = if exit == 0 {
                NotCacheable::InputChanged(self.invocation.source.display().to_string())
            } else {
                NotCacheable::CompileFailed
            };
            return Ok(Outcome::Miss {
                exit,
                not_stored: Some(reason),
                corrupt: false,
            });
        }
        let prepared = self.prepare()?;
        match self.config.mode {
            Mode::Direct if self.invocation.language.is_preprocessed_by_compiler() => {
                self.run_direct(&prepared)
            }
            // Options such as -P or -dM change what `-E` prints, so its output would no longer
            // stand for the compile; the direct mode's key does not depend on it.
            Mode::Preprocessor
                if self.invocation.language.is_preprocessed_by_compiler()
                    && self
                        .invocation
                        .original_words()
                        .iter()
                        .any(|word| alters_preprocessed_output(word)) =>
            {
                self.run_direct(&prepared)
            }
            _ => self.run_preprocessor(&prepared),
        }
    }
}

#[cfg(test)]
mod tests;
