//! The user commands: `stats`, `config`, `clean`, `wrap`, `--help`, `--version`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use hpcc_core::compiler::MASQUERADE_NAMES;
use hpcc_store::DiskStore;

use crate::settings::Settings;

/// `println!` that ignores a closed stdout (`hpcc stats | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` with the same tolerance.
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}
use crate::stats;

const USAGE: &str = "\
usage: hpcc <compiler> [compiler args...]   compile through the cache
       hpcc stats [--json] [--zero]         show (or reset) statistics
       hpcc config                          show the config file and resolved settings
       hpcc clean                           empty the local cache
       hpcc wrap DIR                        create compiler symlinks in DIR; prints the PATH line
       hpcc daemon                          run the local daemon in the foreground
       hpcc start | stop | status           start it in the background, stop it, show it
       hpcc --version | --help

A symlink named gcc, g++, cc, c++, clang, clang++ pointing at hpcc also works: it finds the
real compiler on PATH, skipping itself. Inside a project (a `.hpcc` file at its root), hpcc
adds -ffile-prefix-map=<root>=. so objects are path-free and shared across checkouts.";

/// Prints the usage text.
pub fn usage() {
    eprintln!("{USAGE}");
}

/// Runs `first` as a command if it is one; `None` means it is a compiler.
pub fn dispatch(first: &OsStr, rest: &[OsString]) -> Option<ExitCode> {
    let result = match first.to_str()? {
        "stats" => stats_command(rest),
        "config" => config_command(rest),
        "clean" => clean_command(rest),
        "wrap" => wrap_command(rest),
        "daemon" => daemon_command(rest),
        "start" => start_command(rest),
        "stop" => stop_command(rest),
        "status" => return Some(status_command(rest)),
        "--version" | "-V" | "version" => {
            say!("hpcc {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "--help" | "-h" | "help" => {
            say!("{USAGE}");
            Ok(())
        }
        _ => return None,
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hpcc: {error:#}");
            ExitCode::from(1)
        }
    })
}

fn no_arguments(command: &str, rest: &[OsString]) -> Result<()> {
    if let Some(extra) = rest.first() {
        bail!("{command}: unexpected argument {extra:?}");
    }
    Ok(())
}

fn open_store(settings: &Settings) -> Result<DiskStore> {
    DiskStore::open(&settings.cache_dir, settings.disk_config())
        .with_context(|| format!("opening cache {:?}", settings.cache_dir))
}

fn stats_command(rest: &[OsString]) -> Result<()> {
    let mut json = false;
    let mut zero = false;
    for arg in rest {
        match arg.to_str() {
            Some("--json") => json = true,
            Some("--zero" | "-z") => zero = true,
            _ => bail!("stats: unknown argument {arg:?} (expected --json or --zero)"),
        }
    }
    let settings = Settings::load()?;
    // A running daemon keeps recent counts in memory for a moment; have it write them first.
    crate::daemon::client::flush_stats(&settings);
    if zero {
        stats::zero(&settings.cache_dir)?;
        say!("statistics zeroed");
        return Ok(());
    }
    let table = stats::read(&settings.cache_dir)?;
    let store = open_store(&settings)?;
    let size = store.size().unwrap_or(0);
    let entries = store.entry_count().unwrap_or(0);
    let get = |name: &str| table.get(name).copied().unwrap_or(0);
    let direct = get(stats::names::DIRECT_HIT);
    let preprocessor = get(stats::names::PREPROCESSOR_HIT);
    let misses = get(stats::names::MISS);
    let group = |prefix: &str| -> Vec<(String, u64)> {
        let prefix = format!("{prefix}.");
        table
            .iter()
            .filter_map(|(name, count)| Some((name.strip_prefix(&prefix)?.to_owned(), *count)))
            .collect()
    };
    let uncacheable = group(stats::names::UNCACHEABLE);
    let errors = group(stats::names::ERRORS);
    let lookups = direct + preprocessor + misses;
    let hit_rate = if lookups == 0 {
        0.0
    } else {
        (direct + preprocessor) as f64 / lookups as f64
    };
    if json {
        let value = serde_json::json!({
            "cache_dir": settings.cache_dir,
            "hits": { "direct": direct, "preprocessor": preprocessor },
            "misses": misses,
            "hit_rate": hit_rate,
            "uncacheable": uncacheable.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "errors": errors.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "corrupt_entries": get(stats::names::CORRUPT),
            "cache_size_bytes": size,
            "cache_entries": entries,
            "max_size_bytes": settings.config.max_size.0,
        });
        say!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    say!("cache directory        {}", settings.cache_dir.display());
    say!("hits (direct)          {direct}");
    say!("hits (preprocessor)    {preprocessor}");
    say!("misses                 {misses}");
    say!("hit rate               {:.1} %", hit_rate * 100.0);
    for (reason, count) in &uncacheable {
        say!("uncacheable: {reason:<22} {count}");
    }
    for (kind, count) in &errors {
        say!("errors: {kind:<27} {count}");
    }
    say!("corrupt entries        {}", get(stats::names::CORRUPT));
    say!(
        "cache size             {} in {entries} files (max {})",
        human(size),
        settings.config.max_size
    );
    Ok(())
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

fn config_command(rest: &[OsString]) -> Result<()> {
    no_arguments("config", rest)?;
    let settings = Settings::load()?;
    say!(
        "# config file: {} ({})",
        settings.config_path.display(),
        if settings.config_exists {
            "present"
        } else {
            "absent: defaults apply"
        }
    );
    say!("# every key can be overridden by HPCC_<KEY> in upper case");
    say!(
        "# cache directory in effect: {}",
        settings.cache_dir.display()
    );
    say!(
        "# injected flags inside a project (a .hpcc file at its root): {}",
        if settings.config.file_prefix_map {
            "-ffile-prefix-map=<root>=."
        } else {
            "none (file_prefix_map = false)"
        }
    );
    say!("# injected when stderr is a colour terminal and no colour flag is given: -fdiagnostics-color=always");
    let mut shown = settings.config.clone();
    shown.cache_dir = Some(settings.cache_dir.clone());
    say_raw!("{}", toml::to_string(&shown)?);
    Ok(())
}

fn clean_command(rest: &[OsString]) -> Result<()> {
    no_arguments("clean", rest)?;
    let settings = Settings::load()?;
    let store = open_store(&settings)?;
    let report = store.clean()?;
    say!("removed {report:?} from {}", settings.cache_dir.display());
    Ok(())
}

fn daemon_command(rest: &[OsString]) -> Result<()> {
    no_arguments("daemon", rest)?;
    crate::daemon::server::run(Settings::load()?)
}

fn start_command(rest: &[OsString]) -> Result<()> {
    no_arguments("start", rest)?;
    say!(
        "hpcc daemon: {}",
        crate::daemon::client::start(&Settings::load()?)?
    );
    Ok(())
}

fn stop_command(rest: &[OsString]) -> Result<()> {
    no_arguments("stop", rest)?;
    say!(
        "hpcc daemon: {}",
        crate::daemon::client::stop(&Settings::load()?)?
    );
    Ok(())
}

/// `hpcc status`: exit 0 and the daemon's state if one answers, else exit 1.
fn status_command(rest: &[OsString]) -> ExitCode {
    let result = no_arguments("status", rest)
        .and_then(|()| Settings::load())
        .map(|settings| crate::daemon::client::status(&settings));
    match result {
        Ok(Ok(status)) => {
            say!("hpcc daemon {} running, pid {}", status.version, status.pid);
            say!("endpoint               {}", status.endpoint);
            say!("cache directory        {}", status.cache_dir);
            say!(
                "uptime                 {:.1} s",
                status.uptime_ms as f64 / 1000.0
            );
            say!("compile requests       {}", status.requests);
            say!(
                "compiles running       {} of {}",
                status.compiles_running,
                status.max_jobs
            );
            say!("requests waiting       {}", status.waiting);
            say!("hot files              {}", status.hot_files);
            say!("watched directories    {}", status.watched_dirs);
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            say!("hpcc daemon: not running ({error:#})");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("hpcc: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn wrap_command(rest: &[OsString]) -> Result<()> {
    let [dir] = rest else {
        bail!("wrap: expected exactly one directory argument");
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir:?}"))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {dir:?}"))?;
    let own = std::env::current_exe().context("locating the hpcc executable")?;
    for name in MASQUERADE_NAMES {
        let link = dir.join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(meta) if meta.file_type().is_symlink() => {
                std::fs::remove_file(&link).with_context(|| format!("replacing {link:?}"))?
            }
            Ok(_) => bail!("wrap: {link:?} exists and is not a symlink; not touching it"),
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&own, &link)
            .with_context(|| format!("creating symlink {link:?}"))?;
    }
    say!("export PATH=\"{}:$PATH\"", shell_escape(&dir));
    Ok(())
}

fn shell_escape(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('$', "\\$")
        .replace('`', "\\`")
}
