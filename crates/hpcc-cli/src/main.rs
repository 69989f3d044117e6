//! `hpcc`: a compiler cache.
//!
//! Invoked as `hpcc <compiler> <args...>`, or through a symlink named like a compiler (`gcc`,
//! `clang++`, ...), it serves the compile from the cache or runs the real compiler and stores the
//! result. Invoked as `hpcc <command>`, it manages the cache (`stats`, `config`, `clean`,
//! `wrap`). The command line, the masquerade names, the commands and `hpcc stats --json` are its
//! interface to users and build tools.
//!
//! The rule that shapes this file: the build never fails because of hpcc. Every fault on the
//! way to a cached result ends in running the real compiler untouched, via `exec`, so its exit
//! code, stdout, stderr and files are its own. `compile` holds every such decision:
//!
//! - no real compiler found: exit 127;
//! - a broken configuration: one `hpcc: ...; compiling without the cache` line, then `exec`;
//! - `disable`, an unknown compiler name, a `NotCacheable` reason, an environment variable that
//!   makes a compile uncacheable, an output directory that does not exist: counted as
//!   `uncacheable.<reason>`, then `exec`;
//! - the daemon serves the compile (a hit, a farm compile, an identical compile's failure): its
//!   output is printed and its exit code returned; the daemon leases the wrapper a slot to
//!   compile in, or does not answer: the wrapper goes on by itself;
//! - paranoid mode: what the farm did not compile runs here without a cache;
//! - the cache cannot be opened, or `Job::run` fails before running anything: a warning, counted as
//!   `errors.<kind>`, then `exec`.
//!
//! After a miss the captured stdout and stderr are replayed and hpcc exits with the compiler's
//! code (a signal becomes 1). Faults after the compiler ran (storing, journaling, counting) are
//! logged and counted and never change its exit code or output.
//!
//! Logging is off unless `HPCC_LOG` is set (an `EnvFilter`, to stderr): then a reason not to
//! cache is logged at debug, and a fault of the cache, a store or the daemon at warn.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

use hpcc_cache::{cache, caller, find, record_error, settings, stats, upload_journal, ERRORS};
use hpcc_cli::{client, commands};
use hpcc_core::args::{self, Classification, NotCacheable};
use hpcc_store::DiskStore;

fn main() -> ExitCode {
    hpcc_cache::init_logging();
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    if argv.is_empty() {
        eprintln!("hpcc: started without argv[0]");
        return ExitCode::from(2);
    }
    let invoked_as = Path::new(&argv[0])
        .file_name()
        .map(OsStr::to_owned)
        .unwrap_or_default();
    let invoked_as_hpcc = invoked_as.to_string_lossy().starts_with("hpcc");
    if !invoked_as_hpcc {
        // Masquerade: this binary is called `gcc` (or similar); the real one is on PATH.
        let args = argv.split_off(1);
        return compile(&invoked_as, args);
    }
    let Some(first) = argv.get(1).cloned() else {
        commands::usage();
        return ExitCode::from(2);
    };
    if let Some(code) = commands::dispatch(&first, &argv[2..]) {
        return code;
    }
    let args = argv.split_off(2);
    compile(&first, args)
}

/// Runs one compiler invocation through the cache.
fn compile(program: &OsStr, args: Vec<OsString>) -> ExitCode {
    let compiler = match find::real_compiler(program, None) {
        Ok(compiler) => compiler,
        Err(error) => {
            eprintln!("hpcc: {error:#}");
            return ExitCode::from(127);
        }
    };
    let settings = match settings::Settings::load() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("hpcc: {error:#}; compiling without the cache");
            return exec(&compiler, &args);
        }
    };
    if settings.config.disable {
        if settings.config.stats {
            let name = format!("{}.disabled", stats::names::UNCACHEABLE);
            let _ = stats::add(&settings.cache_dir, &[(&name, 1)]);
        }
        return exec(&compiler, &args);
    }
    // A compile slot held from the daemon: the outcome's counts go to it (with the output of
    // a failed compile, for identical compiles waiting on this one).
    let lease: RefCell<Option<client::Lease>> = RefCell::new(None);
    let report = |counts: &[(&str, u64)], failure: Option<(i32, &cache::Printed)>| {
        if !settings.config.stats {
            if let Some(lease) = lease.take() {
                lease.finish(&[], failure);
            }
            return;
        }
        let mut all: Vec<(&str, u64)> = counts.to_vec();
        let errors = ERRORS.lock().map(|e| e.clone()).unwrap_or_default();
        let names: Vec<String> = errors
            .iter()
            .map(|kind| format!("{}.{kind}", stats::names::ERRORS))
            .collect();
        all.extend(names.iter().map(|name| (name.as_str(), 1)));
        if let Some(lease) = lease.take() {
            if lease.finish(&all, failure) {
                return;
            }
        }
        if let Err(error) = stats::add(&settings.cache_dir, &all) {
            tracing::debug!("cannot record stats: {error:#}");
        }
    };
    let count = |counts: &[(&str, u64)]| report(counts, None);
    let uncacheable = |reason: &str| format!("{}.{reason}", stats::names::UNCACHEABLE);
    let Some(kind) = hpcc_core::compiler::detect(&compiler)
        .or_else(|| hpcc_core::compiler::detect(Path::new(program)))
    else {
        count(&[(&uncacheable("unknown_compiler"), 1)]);
        return exec(&compiler, &args);
    };
    let invocation = match args::classify(kind.family, &args) {
        Classification::Compile(invocation) => invocation,
        Classification::NotCacheable(reason) => {
            tracing::debug!("not cacheable: {reason}");
            count(&[(&uncacheable(reason.as_str()), 1)]);
            return exec(&compiler, &args);
        }
    };
    if let Some(variable) = cache::UNCACHEABLE_ENVIRONMENT
        .iter()
        .find(|name| std::env::var_os(name).is_some())
    {
        tracing::debug!("not cacheable: {variable} is set");
        count(&[(&uncacheable("environment"), 1)]);
        return exec(&compiler, &args);
    }
    let caller = match caller::Caller::current() {
        Ok(caller) => caller,
        Err(_) => return exec(&compiler, &args),
    };
    if let Some(dir) = cache::missing_output_dir(&invocation, &caller.cwd) {
        // The compiler reports this itself (`can't create nodir/x.o`); hpcc would only fail
        // on its own temporaries there.
        let reason = NotCacheable::OutputDirMissing(dir.display().to_string());
        tracing::debug!("not cacheable: {reason}");
        count(&[(&uncacheable(reason.as_str()), 1)]);
        return exec(&compiler, &args);
    }
    if settings.config.daemon.enabled {
        match client::request_compile(&settings, &compiler, &args, &caller) {
            client::Answer::Served { exit, printed } => {
                print(&printed);
                return exit_code(exit);
            }
            client::Answer::CompileHere(granted) => *lease.borrow_mut() = Some(granted),
            client::Answer::Unavailable => {}
        }
    }
    if settings
        .config
        .remote_compile
        .as_ref()
        .is_some_and(|farm| farm.paranoid)
    {
        // Paranoid: only workers touch the cache, so what the farm did not compile (it is
        // down, or the compile does not qualify) runs here without one.
        let status = Command::new(&compiler).args(&args).status();
        count(&[(&uncacheable("paranoid_local"), 1)]);
        return match status {
            Ok(status) => exit_code(status.code().unwrap_or(1)),
            Err(error) => {
                eprintln!("hpcc: cannot run {}: {error}", compiler.display());
                ExitCode::from(127)
            }
        };
    }
    let store = match DiskStore::open(&settings.cache_dir, settings.disk_config()) {
        Ok(store) => store,
        Err(error) => {
            tracing::warn!("cache unavailable: {error:#}");
            record_error("open");
            count(&[]);
            return exec(&compiler, &args);
        }
    };
    let job = cache::Job::new(
        &compiler,
        &invocation,
        &settings.config,
        &settings.cache_dir,
        &store,
        &caller,
    );
    let served = match job.run() {
        Ok(served) => served,
        Err(error) => {
            tracing::warn!("cache failed, running the compiler: {error:#}");
            record_error("cache");
            count(&[]);
            return exec(&compiler, &args);
        }
    };
    if !settings.config.remote.is_empty() && lease.borrow().is_none() {
        // Stored without the daemon, which alone uploads: journal the entries so that the
        // next daemon puts them in the remote tiers (see `upload_journal`).
        if let Err(error) = upload_journal::record(&settings.cache_dir, &job.stored()) {
            tracing::warn!("entries stay local: {error:#}");
            record_error("journal");
        }
    }
    print(&served.printed);
    match served.outcome {
        cache::Outcome::DirectHit => {
            count(&[(stats::names::DIRECT_HIT, 1)]);
            ExitCode::SUCCESS
        }
        cache::Outcome::PreprocessorHit => {
            count(&[(stats::names::PREPROCESSOR_HIT, 1)]);
            ExitCode::SUCCESS
        }
        cache::Outcome::Miss {
            exit,
            not_stored,
            corrupt,
        } => {
            let reason = not_stored
                .as_ref()
                .map(|reason| uncacheable(reason.as_str()));
            // Every lookup that found nothing is a miss; when the result could not be stored
            // either, the reason is counted too, so `stats` explains a miss that repeats.
            let mut counts = vec![(stats::names::MISS, 1)];
            // A farm is configured but no daemon could take the compile (it did not come up):
            // compiled here, so a fallback (with a lease, the daemon counted it already).
            if settings.config.remote_compile.is_some()
                && lease.borrow().is_none()
                && job.remote_reason().is_none()
            {
                counts.push((stats::names::REMOTE_FALLBACK, 1));
            }
            if let Some(reason) = &reason {
                counts.push((reason.as_str(), 1));
            }
            if corrupt {
                counts.push((stats::names::CORRUPT, 1));
            }
            let failed = matches!(not_stored, Some(NotCacheable::CompileFailed));
            report(&counts, failed.then_some((exit, &served.printed)));
            exit_code(exit)
        }
        cache::Outcome::NotFound { .. } => {
            // Only a lookup-only job (the daemon's) answers this.
            record_error("cache");
            count(&[]);
            exec(&compiler, &args)
        }
    }
}

/// The exit code for a compiler's exit status (a signal, or anything out of range, is 1).
fn exit_code(exit: i32) -> ExitCode {
    ExitCode::from(u8::try_from(exit & 0xff).unwrap_or(1))
}

/// Writes what a compile printed to this process's stdout and stderr.
fn print(printed: &cache::Printed) {
    use std::io::Write;
    if !printed.stdout.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&printed.stdout);
        let _ = out.flush();
    }
    if !printed.stderr.is_empty() {
        let _ = std::io::stderr().lock().write_all(&printed.stderr);
    }
}

/// Replaces this process with the real compiler.
fn exec(compiler: &Path, args: &[OsString]) -> ExitCode {
    let error = Command::new(compiler).args(args).exec();
    eprintln!("hpcc: cannot run {}: {error}", compiler.display());
    ExitCode::from(127)
}
