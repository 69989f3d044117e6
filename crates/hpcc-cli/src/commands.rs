//! The user commands: `stats`, `config`, `clean`, `wrap`, the daemon's, `audit verify`,
//! `--help`, `--version`; `daemon`, `login` and `logout` exec `hpccd`.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use hpcc_core::compiler::MASQUERADE_NAMES;
use hpcc_store::DiskStore;

use hpcc_cache::settings::Settings;

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
use hpcc_cache::stats;

const USAGE: &str = "\
usage: hpcc <compiler> [compiler args...]   compile through the cache
       hpcc stats [--json] [--zero]         show (or reset) statistics
       hpcc config                          show the config file and resolved settings
       hpcc clean                           empty the local cache
       hpcc wrap DIR                        create compiler symlinks in DIR; prints the PATH line
       hpcc daemon                          run the local daemon in the foreground
       hpcc start | stop | status           start it in the background, stop it, show it
       hpcc login [--status] | logout       get (or check, or drop) a remote-compilation token
       hpcc audit verify --config worker.toml ROW | --log LOG [--line N]
                                            re-run audited remote compiles on a worker
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
        "login" | "logout" => exec_daemon(first, rest),
        "start" => start_command(rest),
        "stop" => stop_command(rest),
        "status" => return Some(status_command(rest)),
        "audit" => return Some(audit_command(rest)),
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
    crate::client::flush_stats(&settings);
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
    let remote = remote_tiers(&group("remote"));
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
            "remote_compile": {
                "compiled": get(stats::names::REMOTE_COMPILED),
                "worker_hits": get(stats::names::REMOTE_WORKER_HIT),
                "fallbacks": get(stats::names::REMOTE_FALLBACK),
                "ineligible": get(stats::names::REMOTE_INELIGIBLE),
            },
            "cache_size_bytes": size,
            "cache_entries": entries,
            "max_size_bytes": settings.config.max_size.0,
            "remote": remote
                .iter()
                .map(|(tier, counters)| {
                    let mut fields: serde_json::Map<String, serde_json::Value> = counters
                        .iter()
                        .filter(|(name, _)| !name.starts_with("get_"))
                        .map(|(name, value)| (name.clone(), (*value).into()))
                        .collect();
                    for (label, permille) in [("get_p50_us", 500), ("get_p99_us", 990)] {
                        if let Some(micros) = latency_quantile(counters, permille) {
                            fields.insert(label.into(), micros.into());
                        }
                    }
                    (tier.clone(), serde_json::Value::Object(fields))
                })
                .collect::<serde_json::Map<_, _>>(),
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
    let farm = [
        stats::names::REMOTE_COMPILED,
        stats::names::REMOTE_WORKER_HIT,
        stats::names::REMOTE_FALLBACK,
        stats::names::REMOTE_INELIGIBLE,
    ]
    .map(get);
    if farm.iter().any(|count| *count > 0) {
        say!(
            "remote compiles        {} ({} from worker caches), {} fell back to local, {} not eligible",
            farm[0],
            farm[1],
            farm[2],
            farm[3]
        );
    }
    for (tier, counters) in &remote {
        let count = |name: &str| counters.get(name).copied().unwrap_or(0);
        let latency = match (
            latency_quantile(counters, 500),
            latency_quantile(counters, 990),
        ) {
            (Some(p50), Some(p99)) => format!(", get p50 <= {p50} us, p99 <= {p99} us"),
            _ => String::new(),
        };
        say!(
            "remote {tier}: {} hits, {} misses, {} errors ({} timeouts), {} corrupt, {} skipped, {} read, {} written in {} objects, {} dropped{latency}",
            count("hits"),
            count("misses"),
            count("errors"),
            count("timeouts"),
            count("corrupt"),
            count("skipped"),
            human(count("bytes_read")),
            human(count("bytes_written")),
            count("writes"),
            count("dropped"),
        );
    }
    say!(
        "cache size             {} in {entries} files (max {})",
        human(size),
        settings.config.max_size
    );
    Ok(())
}

/// `remote.<tier>.<counter>` statistics by tier; tier names may hold dots, counters do not.
fn remote_tiers(
    counters: &[(String, u64)],
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> {
    let mut tiers: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> =
        std::collections::BTreeMap::new();
    for (name, value) in counters {
        if let Some((tier, counter)) = name.rsplit_once('.') {
            *tiers
                .entry(tier.to_owned())
                .or_default()
                .entry(counter.to_owned())
                .or_default() += value;
        }
    }
    tiers
}

/// The upper bound, in microseconds, of the latency bucket holding `permille`/1000 of the reads
/// (`get_le_<bound>us` buckets); `None` without reads.
fn latency_quantile(
    counters: &std::collections::BTreeMap<String, u64>,
    permille: u64,
) -> Option<u64> {
    let mut buckets: Vec<(u64, u64)> = counters
        .iter()
        .filter_map(|(name, count)| {
            let bound = name
                .strip_prefix("get_le_")?
                .strip_suffix("us")?
                .parse()
                .ok()?;
            Some((bound, *count))
        })
        .collect();
    let slower: u64 = counters
        .iter()
        .filter(|(name, _)| name.starts_with("get_gt_"))
        .map(|(_, count)| *count)
        .sum();
    buckets.sort_unstable();
    let total: u64 = buckets.iter().map(|(_, count)| count).sum::<u64>() + slower;
    if total == 0 {
        return None;
    }
    let wanted = total.saturating_mul(permille).div_ceil(1000);
    let mut seen = 0;
    for (bound, count) in &buckets {
        seen += count;
        if seen >= wanted {
            return Some(*bound);
        }
    }
    Some(u64::MAX)
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
    if !settings.config.remote.is_empty() {
        say!("# remote stores ([[remote]]) are asked by the daemon (hpccd), in this order");
    }
    let mut shown = settings.config.clone();
    shown.cache_dir = Some(settings.cache_dir.clone());
    shown
        .remote
        .iter_mut()
        .for_each(hpcc_core::config::RemoteConfig::redact);
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
    // The daemon is its own binary, so that this one links no async runtime; `exec` keeps
    // this process's pid, terminal and environment for it.
    let daemon = hpcc_cache::ipc::daemon_binary()?;
    let error = std::process::Command::new(&daemon).exec();
    Err(error).with_context(|| format!("running {}", daemon.display()))
}

/// `hpcc login` and `hpcc logout`: the token request needs HTTP and gRPC clients, which only
/// `hpccd` links, so they run as `hpccd login ...` in this process (`exec`: same pid,
/// terminal for the password prompt, stdin for scripts, and exit code).
fn exec_daemon(command: &OsStr, rest: &[OsString]) -> Result<()> {
    let daemon = hpcc_cache::ipc::daemon_binary()?;
    let error = std::process::Command::new(&daemon)
        .arg(command)
        .args(rest)
        .exec();
    Err(error).with_context(|| format!("running {} {}", daemon.display(), command.display()))
}

fn start_command(rest: &[OsString]) -> Result<()> {
    no_arguments("start", rest)?;
    say!("hpcc daemon: {}", crate::client::start(&Settings::load()?)?);
    Ok(())
}

fn stop_command(rest: &[OsString]) -> Result<()> {
    no_arguments("stop", rest)?;
    say!("hpcc daemon: {}", crate::client::stop(&Settings::load()?)?);
    Ok(())
}

/// `hpcc status`: exit 0 and the daemon's state if one answers, else exit 1.
/// `hpcc audit verify ARGS`: runs `hpcc-worker audit-verify ARGS` in this process's place.
/// Re-running a job needs the worker's image store, retained sources and sandbox, which only
/// `hpcc-worker` links (this binary must stay small), and its config (so `--config` names the
/// worker's file); its exit code is the command's: 0 verified, 1 mismatch, 2 not checked.
fn audit_command(rest: &[OsString]) -> ExitCode {
    const WORKER: &str = "hpcc-worker";
    if rest.first().map(OsString::as_os_str) != Some(OsStr::new("verify")) {
        eprintln!(
            "hpcc: audit: expected `verify` (hpcc audit verify --config worker.toml ROW | \
             --log LOG [--line N])"
        );
        return ExitCode::from(2);
    }
    let worker = match hpcc_cache::find::companion_binary(WORKER) {
        Ok(worker) => worker,
        Err(error) => {
            eprintln!("hpcc: audit verify: {error:#}");
            return ExitCode::from(2);
        }
    };
    let error = std::process::Command::new(&worker)
        .arg("audit-verify")
        .args(&rest[1..])
        .exec();
    eprintln!("hpcc: audit verify: running {}: {error}", worker.display());
    ExitCode::from(2)
}

fn status_command(rest: &[OsString]) -> ExitCode {
    let result = no_arguments("status", rest)
        .and_then(|()| Settings::load())
        .map(|settings| crate::client::status(&settings));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_counters_group_by_tier_and_give_quantiles() {
        let counters = vec![
            ("redis:redis://127.0.0.1:1/0.hits".to_owned(), 3),
            ("redis:redis://127.0.0.1:1/0.get_le_100us".to_owned(), 98),
            ("redis:redis://127.0.0.1:1/0.get_le_5000us".to_owned(), 1),
            (
                "redis:redis://127.0.0.1:1/0.get_gt_10000000us".to_owned(),
                1,
            ),
            ("s3.misses".to_owned(), 2),
        ];
        let tiers = remote_tiers(&counters);
        assert_eq!(tiers.len(), 2);
        let redis = &tiers["redis:redis://127.0.0.1:1/0"];
        assert_eq!(redis["hits"], 3);
        assert_eq!(latency_quantile(redis, 500), Some(100));
        assert_eq!(latency_quantile(redis, 990), Some(5000));
        assert_eq!(latency_quantile(redis, 1000), Some(u64::MAX));
        assert_eq!(latency_quantile(&tiers["s3"], 500), None);
    }
}
