//! One cacheable compile: compute the key, look it up, restore a hit or run the compiler and
//! store what it produced.
//!
//! The invariant everything here serves: a hit reproduces exactly what the compiler would have
//! produced for *this* invocation (object, dependency file, `.dwo`, `.gcno`, stdout, stderr and
//! exit code); when in doubt, it is a miss.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use hpcc_core::args::{ColorRequest, CompileInvocation, DepScope, NotCacheable, ParsedArg, Role};
use hpcc_core::config::{Config, Mode};
use hpcc_core::digest::{Digest, KeyHasher};
use hpcc_core::entry::{ResultEntry, SectionKind};
use hpcc_core::manifest::Manifest;
use hpcc_core::project::RootRewriter;
use hpcc_store::{DiskStore, Fetched, Kind, Lookup, MemoryTier};

use crate::caller::Caller;
use crate::deps;
use crate::hot::HotFiles;
use crate::identity::{self, Identity};
use crate::includes::{self, Recorded};
use crate::remote_compile::{self, RemoteCompiler, RemoteJob};

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

/// What a daemon keeps between lookups: files known unchanged, payloads in memory, decoded
/// manifests.
#[derive(Clone, Copy)]
pub struct Warm<'a> {
    /// Files and absences known without a `stat`.
    pub hot: &'a HotFiles,
    /// Verified payloads.
    pub memory: &'a MemoryTier,
    /// Decoded manifests with their paths resolved.
    pub manifests: &'a ManifestCache,
    /// Remote stores behind the local one, if any are configured.
    pub remote: Option<&'a dyn RemoteFallback>,
}

/// Stores behind the local cache, which a daemon asks after a local miss. This crate knows
/// no remote store: the daemon (`hpcc-daemon`) implements it, so the wrapper links none.
pub trait RemoteFallback: Sync {
    /// Looks `key` up behind `store`; on a hit, copies the verified entry into `store` and
    /// returns `true`. Never fails: any fault of a remote store is a miss.
    fn fetch_into(&self, store: &DiskStore, kind: Kind, key: &Digest) -> bool;
}

/// A decoded manifest; in the daemon (`hot`), with every entry's paths resolved for one
/// project root ahead of time, since it is kept and reused. In-process, paths are resolved
/// entry by entry during the lookup, which usually stops at the first entry.
pub struct PreparedManifest {
    manifest: Manifest,
    root: Option<PathBuf>,
    /// Per entry, or empty when resolved during the lookup.
    paths: Vec<includes::EntryPaths>,
}

impl PreparedManifest {
    fn new(manifest: Manifest, root: Option<&Path>, hot: bool) -> PreparedManifest {
        let paths = if hot {
            manifest
                .entries
                .iter()
                .map(|entry| includes::EntryPaths::resolve(entry, root, true))
                .collect()
        } else {
            Vec::new()
        };
        PreparedManifest {
            manifest,
            root: root.map(Path::to_path_buf),
            paths,
        }
    }
}

/// The daemon's decoded manifests, each valid for the exact payload it was decoded from (the
/// memory tier hands out the same allocation until the file changes) and the root its paths
/// were resolved against.
#[derive(Default)]
pub struct ManifestCache {
    entries: std::sync::Mutex<HashMap<Digest, DecodedFrom>>,
}

/// A decoded manifest and the payload it came from.
type DecodedFrom = (Arc<Vec<u8>>, Arc<PreparedManifest>);

/// Decoded manifests kept at most; past it the cache starts over.
const MANIFEST_CACHE_ENTRIES: usize = 8192;

impl ManifestCache {
    fn get(
        &self,
        key: &Digest,
        payload: &Arc<Vec<u8>>,
        root: Option<&Path>,
    ) -> Option<Arc<PreparedManifest>> {
        let entries = self.entries.lock().ok()?;
        let (decoded_from, prepared) = entries.get(key)?;
        (Arc::ptr_eq(decoded_from, payload) && prepared.root.as_deref() == root)
            .then(|| Arc::clone(prepared))
    }

    fn insert(&self, key: Digest, payload: &Arc<Vec<u8>>, prepared: &Arc<PreparedManifest>) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MANIFEST_CACHE_ENTRIES {
                entries.clear();
            }
            entries.insert(key, (Arc::clone(payload), Arc::clone(prepared)));
        }
    }
}

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
        }
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
        }
        Ok(())
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

    fn prepare(&self) -> Result<Prepared> {
        let invocation = self.invocation;
        let identity = identity::identity(self.compiler, self.cache_dir)?;
        let source_path = self.cwd.join(&invocation.source);
        let root = if self.config.file_prefix_map {
            // Resolved first: the compiler's paths (and getcwd) are physical, and a parent
            // like `build/../src` would otherwise yield a root spelled `build/..` that no
            // other path starts with.
            source_path
                .parent()
                .and_then(|dir| fs::canonicalize(dir).ok())
                .and_then(|dir| hpcc_core::project::find_root(&dir))
        } else {
            None
        };
        let rewriter = RootRewriter::new(root.as_deref());
        let mut injected = Vec::new();
        if let Some(root) = &root {
            let mut map = OsString::from("-ffile-prefix-map=");
            map.push(root);
            map.push("=.");
            injected.push(map);
        }
        let color = match invocation.color {
            ColorRequest::Always => true,
            ColorRequest::Never => false,
            ColorRequest::Auto => {
                let colour_terminal = self.caller.stderr_is_terminal
                    && self.caller.var("TERM").is_some_and(|term| term != "dumb");
                if colour_terminal {
                    // The compiler's stderr is a pipe to us; ask it for what a terminal gets.
                    injected.push(OsString::from("-fdiagnostics-color=always"));
                }
                colour_terminal
            }
        };
        // With HPCC_LOG=debug every key field is logged, so a surprising miss can be explained
        // by diffing two logs.
        let mut key = if tracing::enabled!(tracing::Level::DEBUG) {
            KeyHasher::explained()
        } else {
            KeyHasher::new()
        };
        key.field("format", KEY_FORMAT.as_bytes())
            .digest("compiler", &identity.digest)
            .field("family", invocation.family.as_str().as_bytes())
            // The name the driver was run as changes its behaviour (`clang++` is `clang` in
            // C++ mode, yet the same binary with the same version output).
            .field(
                "driver-name",
                self.compiler
                    .file_name()
                    .map(|name| name.as_bytes())
                    .unwrap_or_default(),
            )
            .field("language", invocation.language.gnu_name().as_bytes())
            .field(
                "explicit-language",
                &[u8::from(invocation.explicit_language)],
            )
            .field(
                "output-kind",
                format!("{:?}", invocation.output_kind).as_bytes(),
            )
            .field("color", &[u8::from(color)])
            .field("rooted", &[u8::from(root.is_some())]);
        if let Some(farm) = self.farm {
            // Compiled by the image's toolchain, not the local one.
            key.field("remote-image", farm.image().as_bytes());
        }
        key.field("cwd", &rewriter.rewrite(self.cwd.as_os_str().as_bytes()));
        key.field(
            "source",
            &rewriter.rewrite(source_path.as_os_str().as_bytes()),
        );
        for name in KEY_ENVIRONMENT {
            if let Some(value) = self.caller.var(name) {
                // As a digest, so that explaining a key never prints an environment value.
                key.digest(name, &hpcc_core::digest::Digest::of(value.as_bytes()));
            }
        }
        if let Some(dep) = &invocation.dep {
            key.field(
                "dep",
                format!("{:?} phony={}", dep.scope, dep.phony).as_bytes(),
            );
        }
        if invocation.coverage {
            // The .gcno records the absolute working directory.
            key.field("coverage-cwd", self.cwd.as_os_str().as_bytes());
        }
        if invocation.split_dwarf {
            // The object names its .dwo file.
            key.field(
                "dwo-output",
                &rewriter.rewrite(invocation.output.as_bytes()),
            );
        }
        let mut buffer = Vec::new();
        for input in &invocation.content_inputs {
            let path = self.cwd.join(input);
            let (_, digest) = includes::hash_file(&path, &mut buffer)
                .with_context(|| format!("reading content input {path:?}"))?;
            key.digest("content-input", &digest);
        }
        Ok(Prepared {
            identity,
            root,
            rewriter,
            injected,
            common_key: key,
        })
    }

    fn hash_args<'b>(
        key: &mut KeyHasher,
        rewriter: &RootRewriter,
        args: impl Iterator<Item = &'b ParsedArg>,
    ) {
        for arg in args {
            key.field("arg", arg.name.as_bytes());
            if let Some(value) = &arg.value {
                key.field("value", &rewriter.rewrite(value.as_bytes()));
            }
        }
    }

    fn run_direct(&self, prepared: &Prepared) -> Result<Outcome> {
        let invocation = self.invocation;
        let root = prepared.root.as_deref();
        let mut key = prepared.common_key.clone();
        key.field("mode", b"direct");
        Self::hash_args(&mut key, &prepared.rewriter, invocation.key_args());
        let source_path = self.cwd.join(&invocation.source);
        let mut contents = includes::Contents::new(self.cache_dir).with_hot(self.hot);
        let source_digest = contents
            .digest_of_path(&source_path)
            .with_context(|| format!("reading source {source_path:?}"))?;
        key.digest("source-content", &source_digest);
        let direct_key = key.finish();
        if let Some(fields) = key.explanation() {
            tracing::debug!(key = %direct_key.to_hex(), ?fields, "direct key");
        }
        let source_stored = includes::store_path(&source_path, self.cwd, root);

        let mut corrupt = false;
        let hot = self.hot.is_some();
        let prepared_manifest = match self.fetch(Kind::Manifest, &direct_key)? {
            Fetched::Hit(bytes) => {
                match self
                    .manifests
                    .and_then(|cache| cache.get(&direct_key, &bytes, root))
                {
                    Some(known) => known,
                    None => match Manifest::decode(&bytes) {
                        Ok(manifest) => {
                            let decoded = Arc::new(PreparedManifest::new(manifest, root, hot));
                            if let Some(cache) = self.manifests {
                                cache.insert(direct_key, &bytes, &decoded);
                            }
                            decoded
                        }
                        Err(_) => {
                            corrupt = true;
                            self.discard(Kind::Manifest, &direct_key);
                            Arc::new(PreparedManifest::new(Manifest::default(), root, hot))
                        }
                    },
                }
            }
            Fetched::Corrupt => {
                corrupt = true;
                Arc::new(PreparedManifest::new(Manifest::default(), root, hot))
            }
            Fetched::Miss => Arc::new(PreparedManifest::new(Manifest::default(), root, hot)),
        };
        let entries = &prepared_manifest.manifest.entries;
        let mut digests = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            let resolved;
            let paths = match prepared_manifest.paths.get(index) {
                Some(paths) => paths,
                None => {
                    resolved = includes::EntryPaths::resolve(entry, root, hot);
                    &resolved
                }
            };
            // Remembering digests only pays when several entries may check the same files.
            let remember = (entries.len() > 1).then_some(&mut digests);
            if !includes::verify(entry, paths, Some(&source_stored), &mut contents, remember)? {
                continue;
            }
            match self.fetch(Kind::Result, &entry.result)? {
                Fetched::Hit(bytes) => match ResultEntry::decode(&bytes) {
                    Ok(result) => {
                        if self.restore(&result, prepared)? {
                            contents.commit_hot();
                            return Ok(Outcome::DirectHit);
                        }
                    }
                    Err(_) => {
                        corrupt = true;
                        self.discard(Kind::Result, &entry.result);
                    }
                },
                Fetched::Corrupt => corrupt = true,
                Fetched::Miss => {}
            }
        }

        contents.commit_hot();
        if self.lookup_only {
            return Ok(Outcome::NotFound {
                key: Some(direct_key),
                corrupt,
            });
        }
        let mut manifest = Arc::try_unwrap(prepared_manifest)
            .map(|prepared| prepared.manifest)
            .unwrap_or_else(|shared| shared.manifest.clone());

        // Miss: compile, asking for a full dependency list to learn which files were read.
        let started = SystemTime::now();
        let own_dep_file = match &invocation.dep {
            Some(dep) if dep.scope == DepScope::All => None,
            _ => Some(temp_sibling(&self.cwd.join(&invocation.output), "d")),
        };
        let mut extra = Vec::new();
        if invocation.dep.is_none() {
            if let Some(path) = &own_dep_file {
                extra.extend([
                    OsString::from("-MD"),
                    OsString::from("-MF"),
                    path.clone().into(),
                ]);
            }
        }
        let output = match self.execute(prepared, &extra, None) {
            Ok(output) => output,
            Err(error) => {
                if let Some(path) = &own_dep_file {
                    let _ = fs::remove_file(path);
                }
                return Err(error);
            }
        };
        let exit = output.status.code().unwrap_or(1);
        let mut result = ResultEntry::default();
        result.set(SectionKind::Stdout, output.stdout);
        result.set(SectionKind::Stderr, output.stderr);
        if exit != 0 {
            if let Some(path) = &own_dep_file {
                let _ = fs::remove_file(path);
            }
            self.replay(&result);
            return Ok(Outcome::Miss {
                exit,
                not_stored: Some(NotCacheable::CompileFailed),
                corrupt,
            });
        }
        let dep_list_path = own_dep_file
            .clone()
            .or_else(|| invocation.dep.as_ref().map(|dep| self.cwd.join(&dep.path)));
        let stored = (|| -> Result<Option<NotCacheable>> {
            // -MMD lists user headers only: learn the full list with a preprocessor-only pass.
            // Inside this closure, as the compile already ran: a failure only skips storing.
            if let (Some(dep), Some(path)) = (&invocation.dep, &own_dep_file) {
                if dep.scope == DepScope::UserOnly {
                    self.dependency_pass(&prepared.injected, path)?;
                }
            }
            let dep_text = match &dep_list_path {
                Some(path) => {
                    fs::read(path).with_context(|| format!("reading dependency list {path:?}"))?
                }
                None => return Ok(Some(NotCacheable::NoOutput)),
            };
            let parsed = deps::parse_list(&dep_text)?;
            let search_dirs = self.search_dirs(prepared)?;
            // GCC (since 7) honours SOURCE_DATE_EPOCH; Clang only from 16, so for Clang the
            // macros are treated as unpinned rather than trusting a version guess.
            let time_pinned =
                self.caller.var("SOURCE_DATE_EPOCH").is_some() && !prepared.identity.is_clang;
            let recorded = includes::record(
                &includes::RecordInputs {
                    files: &parsed,
                    search_dirs: &search_dirs,
                    cwd: self.cwd,
                    root,
                    compile_started: started,
                    time_pinned,
                },
                &mut includes::Contents::new(self.cache_dir),
            )?;
            let mut entry = match recorded {
                Recorded::Entry(entry) => entry,
                Recorded::TimeMacros => return Ok(Some(NotCacheable::TimeMacros)),
                Recorded::Incbin => return Ok(Some(NotCacheable::Incbin)),
                Recorded::Raced(path) => {
                    tracing::debug!(?path, "input changed during the compile; not storing");
                    return Ok(Some(NotCacheable::InputChanged(path.display().to_string())));
                }
            };
            entry.files.retain(|file| file.path != source_stored);
            let mut result_key = KeyHasher::new();
            result_key.digest("direct", &direct_key);
            for file in &entry.files {
                result_key.digest("file", &file.digest);
            }
            entry.result = result_key.finish();
            self.collect_outputs(&mut result, prepared)?;
            self.put(Kind::Result, &entry.result, &result.encode())?;
            manifest.add(entry);
            self.put(Kind::Manifest, &direct_key, &manifest.encode())?;
            Ok(None)
        })();
        if let Some(path) = &own_dep_file {
            let _ = fs::remove_file(path);
        }
        self.replay(&result);
        let not_stored = match stored {
            Ok(reason) => reason,
            Err(error) => {
                tracing::warn!("not storing the result: {error:#}");
                crate::record_error("store");
                None
            }
        };
        Ok(Outcome::Miss {
            exit,
            not_stored,
            corrupt,
        })
    }

    fn run_preprocessor(&self, prepared: &Prepared) -> Result<Outcome> {
        let invocation = self.invocation;
        let mut key = prepared.common_key.clone();
        key.field("mode", b"preprocessor");
        Self::hash_args(
            &mut key,
            &prepared.rewriter,
            invocation.key_args().filter(|arg| {
                !matches!(
                    arg.role,
                    Role::IncludeDir | Role::IncludeFile | Role::Define | Role::Preprocessor
                )
            }),
        );
        let started = SystemTime::now();
        let mut inputs_read = Vec::new();
        let mut refused = None;
        let mut preprocessed_text = None;
        if invocation.language.is_preprocessed_by_compiler() {
            let preprocessed = self
                .caller
                .command(self.compiler)
                .args(&prepared.injected)
                .args(invocation.preprocessor_words())
                .arg("-E")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .with_context(|| format!("running {:?} -E", self.compiler))?;
            if !preprocessed.status.success() {
                anyhow::bail!("the preprocessor failed");
            }
            if self.caller.var("SOURCE_DATE_EPOCH").is_none()
                && memchr::memmem::find(&preprocessed.stdout, b"__TIMESTAMP__").is_some()
            {
                // Cannot happen after expansion; kept as a guard against odd preprocessors.
                anyhow::bail!("time macro survived preprocessing");
            }
            key.field(
                "preprocessed",
                &prepared.rewriter.rewrite(&preprocessed.stdout),
            );
            inputs_read = line_marker_files(&preprocessed.stdout);
            if includes::uses_incbin(&preprocessed.stdout) {
                refused = Some(NotCacheable::Incbin);
            }
            preprocessed_text = Some(preprocessed.stdout);
        } else {
            let mut buffer = Vec::new();
            let source = self.cwd.join(&invocation.source);
            let (_, digest) = includes::hash_file(&source, &mut buffer)
                .with_context(|| format!("reading source {source:?}"))?;
            if includes::uses_incbin(&buffer) {
                refused = Some(NotCacheable::Incbin);
            }
            key.digest("source-content", &digest);
        }
        let result_key = key.finish();
        let mut corrupt = false;
        match self.fetch(Kind::Result, &result_key)? {
            Fetched::Hit(bytes) => match ResultEntry::decode(&bytes) {
                Ok(result) => {
                    if self.restore(&result, prepared)? {
                        return Ok(Outcome::PreprocessorHit);
                    }
                }
                Err(_) => {
                    corrupt = true;
                    self.discard(Kind::Result, &result_key);
                }
            },
            Fetched::Corrupt => corrupt = true,
            Fetched::Miss => {}
        }
        if self.lookup_only {
            return Ok(Outcome::NotFound {
                key: Some(result_key),
                corrupt,
            });
        }
        let output = self.execute(prepared, &[], preprocessed_text)?;
        let exit = output.status.code().unwrap_or(1);
        let mut result = ResultEntry::default();
        result.set(SectionKind::Stdout, output.stdout);
        result.set(SectionKind::Stderr, output.stderr);
        let mut not_stored = None;
        if exit != 0 {
            not_stored = Some(NotCacheable::CompileFailed);
        } else if refused.is_some() {
            not_stored = refused;
        } else if let Some(path) = includes::changed_since(
            std::iter::once(self.cwd.join(&invocation.source))
                .chain(inputs_read.iter().map(|path| self.cwd.join(path))),
            started,
        ) {
            // The compile may have read other content than the `-E` run that made the key.
            tracing::debug!(?path, "input changed during the compile; not storing");
            not_stored = Some(NotCacheable::InputChanged(path.display().to_string()));
        } else if let Err(error) = self
            .collect_outputs(&mut result, prepared)
            .and_then(|()| self.put(Kind::Result, &result_key, &result.encode()))
        {
            tracing::warn!("not storing the result: {error:#}");
            crate::record_error("store");
        }
        self.replay(&result);
        Ok(Outcome::Miss {
            exit,
            not_stored,
            corrupt,
        })
    }

    /// Runs the compile of a miss: on the farm if there is one, else here. With a farm, an
    /// `Err` means the farm failed and nothing the caller sees was written.
    fn execute(
        &self,
        prepared: &Prepared,
        extra: &[OsString],
        preprocessed: Option<Vec<u8>>,
    ) -> Result<std::process::Output> {
        match self.farm {
            Some(farm) => self.compile_remotely(farm, prepared, extra, preprocessed),
            None => self.compile(&prepared.injected, extra),
        }
    }

    /// Preprocesses here (writing the dependency files a local compile would), compiles on
    /// the farm, and writes the object where the compiler would have.
    fn compile_remotely(
        &self,
        farm: &dyn RemoteCompiler,
        prepared: &Prepared,
        extra: &[OsString],
        preprocessed: Option<Vec<u8>>,
    ) -> Result<std::process::Output> {
        use std::os::unix::process::ExitStatusExt;
        let invocation = self.invocation;
        // The colour request goes to the worker; the root mapping is the worker's own.
        let passed: Vec<OsString> = prepared
            .injected
            .iter()
            .filter(|word| !word.as_bytes().starts_with(b"-ffile-prefix-map="))
            .cloned()
            .collect();
        let flags = remote_compile::worker_flags(invocation, &passed)
            .context("a compile flag is not UTF-8")?;
        let text = match preprocessed {
            Some(text) if invocation.dep.is_none() && extra.is_empty() => text,
            _ => {
                let output = self
                    .caller
                    .command(self.compiler)
                    .args(&prepared.injected)
                    .args(invocation.preprocessor_words())
                    .args(remote_compile::dependency_words(invocation))
                    .args(extra)
                    .arg("-E")
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output()
                    .with_context(|| format!("running {:?} -E", self.compiler))?;
                // The local compile that follows reports the error as the compiler would.
                anyhow::ensure!(output.status.success(), "the preprocessor failed");
                output.stdout
            }
        };
        let root = prepared.rewriter.root();
        let job = RemoteJob {
            driver: self
                .compiler
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default()
                .to_owned(),
            language: remote_compile::remote_language(invocation.language).to_owned(),
            flags,
            source: remote_compile::to_remote(&text, root),
        };
        drop(text);
        let result = farm
            .compile(job)
            .map_err(|error| anyhow::anyhow!("remote compile: {error}"))?;
        if result.exit == 0 {
            let object = result
                .object
                .as_deref()
                .context("remote compile: success without an object")?;
            self.write_output(&self.cwd.join(&invocation.output), object)?;
            if let Some(dep) = &invocation.dep {
                let _ = self
                    .caller
                    .set_output_permissions(&self.cwd.join(&dep.path));
            }
        }
        Ok(std::process::Output {
            status: std::process::ExitStatus::from_raw((result.exit & 0xff) << 8),
            stdout: result.stdout,
            stderr: remote_compile::from_remote(&result.stderr, root),
        })
    }

    fn compile(&self, injected: &[OsString], extra: &[OsString]) -> Result<std::process::Output> {
        let output = self
            .caller
            .command(self.compiler)
            .args(injected)
            .args(self.invocation.original_words())
            .args(extra)
            .stdin(Stdio::inherit())
            .output()
            .with_context(|| format!("running {:?}", self.compiler))?;
        if output.status.success() {
            // The compiler ran under this process's mask; give its files the caller's.
            let invocation = self.invocation;
            let mut written = vec![self.cwd.join(&invocation.output)];
            written.extend(invocation.dep.as_ref().map(|dep| self.cwd.join(&dep.path)));
            if invocation.split_dwarf {
                written.push(self.cwd.join(invocation.dwo_path()));
            }
            if invocation.coverage {
                written.push(self.cwd.join(invocation.gcno_path()));
            }
            for path in written {
                let _ = self.caller.set_output_permissions(&path);
            }
        }
        Ok(output)
    }

    /// Writes the full dependency list to `path` with a preprocessor-only run.
    fn dependency_pass(&self, injected: &[OsString], path: &Path) -> Result<()> {
        let status = self
            .caller
            .command(self.compiler)
            .args(injected)
            .args(self.invocation.preprocessor_words())
            .arg("-M")
            .arg("-MF")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("running {:?} -M", self.compiler))?;
        anyhow::ensure!(status.success(), "dependency pass failed: {status}");
        Ok(())
    }

    /// `-I`-style directories from the command line, then the compiler's own list.
    fn search_dirs(&self, prepared: &Prepared) -> Result<Vec<PathBuf>> {
        let invocation = self.invocation;
        let mut dirs = Vec::new();
        let mut system_words = Vec::new();
        let mut key = KeyHasher::new();
        key.digest("compiler", &prepared.identity.digest)
            .field("language", invocation.language.gnu_name().as_bytes());
        for arg in &invocation.args {
            match arg.role {
                Role::IncludeDir => {
                    if let Some(value) = &arg.value {
                        dirs.push(PathBuf::from(value));
                    }
                }
                Role::Preprocessor | Role::Codegen | Role::Debug => {
                    for word in &arg.words {
                        key.field("word", word.as_bytes());
                    }
                    system_words.extend(arg.words.iter().cloned());
                }
                _ => {}
            }
        }
        for name in ["CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH"] {
            if let Some(value) = self.caller.var(name) {
                // As a digest, so that explaining a key never prints an environment value.
                key.digest(name, &hpcc_core::digest::Digest::of(value.as_bytes()));
            }
        }
        let language = match invocation.language {
            hpcc_core::args::Language::PreprocessedC => "c",
            hpcc_core::args::Language::PreprocessedCxx => "c++",
            other => other.gnu_name(),
        };
        let system = identity::system_include_dirs(
            self.caller,
            self.compiler,
            self.cache_dir,
            &key.finish(),
            &system_words,
            language,
        )?;
        dirs.extend(system);
        Ok(dirs)
    }

    /// Reads the files the compile wrote beside the object into `result`.
    fn collect_outputs(&self, result: &mut ResultEntry, prepared: &Prepared) -> Result<()> {
        let invocation = self.invocation;
        let output = self.cwd.join(&invocation.output);
        result.set(
            SectionKind::Object,
            fs::read(&output).with_context(|| format!("reading output {output:?}"))?,
        );
        if let Some(dep) = &invocation.dep {
            let path = self.cwd.join(&dep.path);
            let text = fs::read(&path).with_context(|| format!("reading {path:?}"))?;
            let section = deps::store(
                &text,
                invocation,
                prepared.identity.is_clang,
                &prepared.rewriter,
            )?;
            result.set(SectionKind::DepFile, section);
        }
        if invocation.split_dwarf {
            let path = self.cwd.join(invocation.dwo_path());
            if let Ok(bytes) = fs::read(&path) {
                result.set(SectionKind::Dwo, bytes);
            }
        }
        if invocation.coverage {
            let path = self.cwd.join(invocation.gcno_path());
            result.set(
                SectionKind::Gcno,
                fs::read(&path).with_context(|| format!("reading {path:?}"))?,
            );
        }
        Ok(())
    }

    /// Writes a stored result's files and replays its output. Returns `false` (a miss) when the
    /// entry cannot serve this invocation, e.g. a raw dependency file for another target.
    fn restore(&self, result: &ResultEntry, prepared: &Prepared) -> Result<bool> {
        let invocation = self.invocation;
        let Some(object) = result.get(SectionKind::Object) else {
            return Ok(false);
        };
        let dep_text = match &invocation.dep {
            Some(_) => {
                let Some(section) = result.get(SectionKind::DepFile) else {
                    return Ok(false);
                };
                match deps::restore(section, invocation, &prepared.rewriter)? {
                    Some(text) => Some(text),
                    None => return Ok(false),
                }
            }
            None => None,
        };
        if invocation.split_dwarf && result.get(SectionKind::Dwo).is_none() {
            return Ok(false);
        }
        if invocation.coverage && result.get(SectionKind::Gcno).is_none() {
            return Ok(false);
        }
        self.write_output(&self.cwd.join(&invocation.output), object)?;
        if let (Some(dep), Some(text)) = (&invocation.dep, dep_text) {
            self.write_output(&self.cwd.join(&dep.path), &text)?;
        }
        if let Some(dwo) = result.get(SectionKind::Dwo) {
            self.write_output(&self.cwd.join(invocation.dwo_path()), dwo)?;
        }
        if let Some(gcno) = result.get(SectionKind::Gcno) {
            self.write_output(&self.cwd.join(invocation.gcno_path()), gcno)?;
        }
        self.replay(result);
        Ok(true)
    }

    /// Writes `bytes` to `path` through a temporary sibling and a rename, so a reader never
    /// sees half an object, with the permissions the compiler would have given it.
    ///
    /// The old file is unlinked first. Renaming over an existing file makes ext4 (with its
    /// default `auto_da_alloc`) start writeback of the new file at once, which costs a rebuild
    /// far more than the moment in which no file exists; the compiler itself truncates in
    /// place, so no build can rely on the old file surviving a compile.
    fn write_output(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let temp = temp_sibling(path, "tmp");
        let result = fs::write(&temp, bytes)
            .and_then(|()| self.caller.set_output_permissions(&temp))
            .and_then(|()| {
                match fs::remove_file(path) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(error)
                    }
                    _ => {}
                }
                fs::rename(&temp, path)
            });
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result.with_context(|| format!("writing {path:?}"))
    }

    /// Keeps what `result` printed for the caller.
    fn replay(&self, result: &ResultEntry) {
        let mut printed = self.printed.borrow_mut();
        if let Some(stdout) = result.get(SectionKind::Stdout) {
            printed.stdout.extend_from_slice(stdout);
        }
        if let Some(stderr) = result.get(SectionKind::Stderr) {
            printed.stderr.extend_from_slice(stderr);
        }
    }
}

/// A temporary path beside `path` (same directory, so same file system), unique per call.
fn temp_sibling(path: &Path, extension: &str) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or(OsStr::new("out")));
    // Unique per process and per call: the daemon runs many jobs in one process.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let serial = NEXT.fetch_add(1, Ordering::Relaxed);
    name.push(format!(".hpcc-{}-{serial}.{extension}", std::process::id()));
    path.with_file_name(name)
}

/// Whether `word` makes `-E` print something other than the translation unit the compile
/// sees: no line markers (`-P`), only macro definitions (`-dM`, `-dD`, ...), or unexpanded
/// macros (`-fdirectives-only`).
fn alters_preprocessed_output(word: &OsStr) -> bool {
    let bytes = word.as_bytes();
    bytes == b"-P"
        || bytes == b"-fdirectives-only"
        || bytes == b"-fpreprocessed"
        || (bytes.len() > 2
            && bytes.starts_with(b"-d")
            && bytes[2..].iter().all(|byte| b"MDNIU".contains(byte)))
}

/// The files named by `# <line> "<file>"` markers in preprocessed output, without
/// duplicates and without the `<built-in>`-style pseudo files.
fn line_marker_files(preprocessed: &[u8]) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    let mut files = Vec::new();
    for line in preprocessed.split(|&byte| byte == b'\n') {
        let Some(rest) = line.strip_prefix(b"# ") else {
            continue;
        };
        let Some(open) = memchr::memchr(b'"', rest) else {
            continue;
        };
        let name = &rest[open + 1..];
        let Some(close) = memchr::memrchr(b'"', name) else {
            continue;
        };
        let name = &name[..close];
        if name.is_empty() || name.starts_with(b"<") || name.contains(&b'\\') {
            continue;
        }
        if seen.insert(name.to_vec()) {
            files.push(PathBuf::from(OsStr::from_bytes(name)));
        }
    }
    files
}
