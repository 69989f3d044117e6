//! Configuration: the TOML file's types and the pure merge of `HPCC_*` environment overrides.
//!
//! Every key of [`Config`] can be set in the file or by an environment variable named
//! `HPCC_<KEY>` in upper case (`cache_dir` → `HPCC_CACHE_DIR`; `[daemon]` keys as
//! `HPCC_DAEMON_<KEY>`). Unknown keys in the file and unknown `HPCC_*` variables are errors that
//! name the key: a typo must not silently leave a setting at its default. The variables that are
//! not keys are listed in [`NON_KEY_VARIABLES`].
//!
//! - [`parse_file`] parses the file's text (`hpcc-cache`'s `settings` finds the file) and checks
//!   what types cannot say ([`RemoteConfig::validate_all`]: cluster sizes, duplicate names;
//!   [`RemoteCompileConfig`]: no `[[remote]]` stores in paranoid mode).
//! - [`merge_env`] applies the variables over it, a pure function over name/value pairs that
//!   tests call directly. `HPCC_REMOTE` replaces the `[[remote]]` tables with a TOML array of
//!   inline tables, `HPCC_REMOTE_COMPILE` the `[remote_compile]` table with an inline table.
//! - [`Config`] and [`DaemonConfig`] refuse unknown keys (`deny_unknown_fields`); their
//!   `Default`s are the values in effect when nothing is said (a 5 GiB cache, LZ4, direct mode,
//!   `file_prefix_map` and statistics on, a daemon started on demand).
//!
//! **Compatibility.** The file is an interface: adding a key is compatible, while removing or
//! renaming one makes existing files fail with an error naming the key. The services' files
//! (`SchedulerConfig`, `WorkerConfig`) follow the same rules.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod farm;
pub mod reference;
mod remote;
mod service;

pub use farm::RemoteCompileConfig;

pub use remote::{Backend, RemoteConfig, RemoteOptions};
pub use service::{
    group_namespace, is_image_digest, is_safe_name, tenant_namespace, JailSettings, JailerSettings,
    RuntimeKind, SchedulerConfig, SharingGroup, TenantConfig, TenantQuota, TlsFiles, VmConfig,
    WorkerCacheConfig, WorkerConfig, DEFAULT_AUDIT_SOURCE_RETENTION, DEFAULT_WORKER_CACHE_SIZE,
    MAX_NAME_LEN,
};

/// Environment variables that start with `HPCC_` but are not config keys
/// (`HPCC_CLIENT_SECRET` is the OAuth2 client secret `hpcc login --client-credentials` reads).
pub const NON_KEY_VARIABLES: &[&str] = &[
    "HPCC_CONFIG",
    "HPCC_LOG",
    "HPCC_LOG_FORMAT",
    "HPCC_CLIENT_SECRET",
];

/// How keys are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Key from source, arguments and compiler; a manifest lists the headers and their digests.
    #[default]
    Direct,
    /// Key from the preprocessed output; the preprocessor runs on every lookup.
    Preprocessor,
}

/// How cache entries are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Stored as is.
    None,
    /// LZ4: about two thirds of zstd's saving on objects, several times faster to decompress.
    #[default]
    Lz4,
    /// zstd at `compression_level`.
    Zstd,
}

/// How the wrapper reaches the local daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// A Unix domain socket (mode 0600) in the user's runtime directory.
    #[default]
    Unix,
    /// Loopback TCP; every connection presents the daemon's random token, kept in a 0600 file.
    Tcp,
}

/// The `[daemon]` table: the local daemon that serves hits from memory-held state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Use a running daemon (`false`: every compile is served in-process).
    pub enabled: bool,
    /// Start the daemon in the background when a compile finds none running.
    pub autostart: bool,
    /// Seconds without a request after which the daemon exits (0: never).
    pub idle_timeout: u64,
    /// Compiles the daemon lets run at once (0: the number of CPUs).
    pub max_jobs: u32,
    /// Unix socket or loopback TCP.
    pub transport: Transport,
    /// Milliseconds the wrapper waits for any frame from the daemon before compiling by
    /// itself (a waiting daemon sends a frame every second).
    pub reply_timeout_ms: u64,
    /// Memory the daemon may use to keep recently served entries (0: none).
    pub memory_cache: ByteSize,
    /// A loopback `host:port` where the daemon serves Prometheus metrics (`GET /metrics`:
    /// hits, misses, uncacheable compiles by reason, errors, farm fallbacks, remote tiers).
    /// Unset: no endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
}

impl Default for DaemonConfig {
    fn default() -> DaemonConfig {
        DaemonConfig {
            enabled: true,
            autostart: true,
            idle_timeout: 1800,
            max_jobs: 0,
            transport: Transport::Unix,
            reply_timeout_ms: 10_000,
            memory_cache: ByteSize(256 << 20),
            metrics_listen: None,
        }
    }
}

/// A byte count written as `1048576`, `"512M"`, `"5G"` or `"5GiB"` (binary units).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<ByteSize, ConfigError> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        let invalid = || ConfigError::InvalidValue {
            key: "max_size".into(),
            value: text.into(),
            expected: "a byte count such as 500M, 5G or 1073741824",
        };
        let number: u64 = digits.parse().map_err(|_| invalid())?;
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            _ => return Err(invalid()),
        };
        number
            .checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(invalid)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 4] = [("T", 40), ("G", 30), ("M", 20), ("K", 10)];
        for (unit, shift) in UNITS {
            let size = 1u64 << shift;
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["integer", "string"],
            "format": "byte-size",
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(number) => Ok(ByteSize(number)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// hpcc's settings. `Default` gives the values used when neither file nor environment says
/// anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The local cache directory. `None` means the platform cache dir (`~/.cache/hpcc`).
    pub cache_dir: Option<PathBuf>,
    /// The local cache's size limit; least recently used entries are evicted beyond it.
    pub max_size: ByteSize,
    /// How cache entries are compressed: `lz4` (default), `zstd` or `none`.
    pub compression: Compression,
    /// The zstd level when `compression = "zstd"`.
    pub compression_level: i32,
    /// Direct (manifest) or preprocessor mode.
    pub mode: Mode,
    /// Run every compile without the cache (still counted in stats).
    pub disable: bool,
    /// Inside a project (a `.hpcc` marker above the source), inject
    /// `-ffile-prefix-map=<root>=.` so objects are path-free and shareable across checkouts.
    pub file_prefix_map: bool,
    /// Record statistics.
    pub stats: bool,
    /// The local daemon.
    pub daemon: DaemonConfig,
    /// Remote stores behind the local cache, asked in order after it (served by the daemon).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<RemoteConfig>,
    /// Remote compilation of misses (`[remote_compile]`), served by the daemon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_compile: Option<RemoteCompileConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            cache_dir: None,
            max_size: ByteSize(5 << 30),
            compression: Compression::Lz4,
            compression_level: 1,
            mode: Mode::Direct,
            disable: false,
            file_prefix_map: true,
            stats: true,
            daemon: DaemonConfig::default(),
            remote: Vec::new(),
            remote_compile: None,
        }
    }
}

/// A configuration problem, naming the key, variable or file at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML file does not parse, or has an unknown key.
    #[error("config file {path:?}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the unknown key or the bad line).
        message: String,
    },
    /// An `HPCC_*` variable that is no config key.
    #[error("unknown environment variable {0} (no config key by that name)")]
    UnknownVariable(String),
    /// A value that does not parse for its key.
    #[error("invalid value {value:?} for {key}: expected {expected}")]
    InvalidValue {
        /// The key or variable.
        key: String,
        /// The text given.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

/// Parses the text of a config file. `path` is only used in messages.
pub fn parse_file(path: &std::path::Path, text: &str) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|error| ConfigError::File {
        path: path.to_path_buf(),
        message: error.message().to_owned(),
    })?;
    RemoteConfig::validate_all(&config.remote).map_err(|message| ConfigError::File {
        path: path.to_path_buf(),
        message,
    })?;
    if let Some(farm) = &config.remote_compile {
        farm.validate(config.remote.len())
            .map_err(|message| ConfigError::File {
                path: path.to_path_buf(),
                message,
            })?;
    }
    Ok(config)
}

/// Parses `HPCC_REMOTE_COMPILE`: a TOML inline table, as `remote_compile = {...}` would be
/// written; empty turns remote compilation off.
fn parse_remote_compile_variable(
    name: &str,
    value: &str,
) -> Result<Option<RemoteCompileConfig>, ConfigError> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    #[derive(Deserialize)]
    struct Wrapper {
        remote_compile: RemoteCompileConfig,
    }
    let invalid = |message: String| {
        ConfigError::InvalidValue {
        key: name.into(),
        value: format!("{value} ({message})"),
        expected: "a TOML inline table, e.g. {tenant_id = \"acme\", scheduler = \"https://...\", image = \"sha256:...\"}",
    }
    };
    let wrapper: Wrapper = toml::from_str(&format!("remote_compile = {value}"))
        .map_err(|error| invalid(error.message().to_owned()))?;
    wrapper.remote_compile.validate(0).map_err(invalid)?;
    Ok(Some(wrapper.remote_compile))
}

/// Parses `HPCC_REMOTE`: a TOML array of inline tables, as `remote = [...]` would be written.
fn parse_remote_variable(name: &str, value: &str) -> Result<Vec<RemoteConfig>, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        remote: Vec<RemoteConfig>,
    }
    let invalid = |message: String| {
        ConfigError::InvalidValue {
        key: name.into(),
        value: message,
        expected: "a TOML array of remote tables, e.g. [{type = \"redis\", endpoint = \"redis://127.0.0.1\"}]",
    }
    };
    let wrapper: Wrapper = toml::from_str(&format!("remote = {value}"))
        .map_err(|error| invalid(error.message().to_owned()))?;
    RemoteConfig::validate_all(&wrapper.remote).map_err(invalid)?;
    Ok(wrapper.remote)
}

/// Applies `HPCC_*` variables from `env` over `base`. Pure: the caller passes the environment.
pub fn merge_env<I, K, V>(base: Config, env: I) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut config = base;
    for (name, value) in env {
        let (name, value) = (name.as_ref(), value.as_ref());
        let Some(key) = name.strip_prefix("HPCC_") else {
            continue;
        };
        if NON_KEY_VARIABLES.contains(&name) {
            continue;
        }
        match key {
            "CACHE_DIR" => config.cache_dir = Some(PathBuf::from(value)),
            "MAX_SIZE" => {
                config.max_size = value.parse().map_err(|_| ConfigError::InvalidValue {
                    key: name.into(),
                    value: value.into(),
                    expected: "a byte count such as 500M, 5G or 1073741824",
                })?
            }
            "COMPRESSION" => {
                config.compression = match value {
                    "lz4" => Compression::Lz4,
                    "zstd" => Compression::Zstd,
                    "none" => Compression::None,
                    _ => {
                        return Err(ConfigError::InvalidValue {
                            key: name.into(),
                            value: value.into(),
                            expected: "lz4, zstd or none",
                        })
                    }
                }
            }
            "COMPRESSION_LEVEL" => {
                config.compression_level = value
                    .parse()
                    .ok()
                    .filter(|level| (-7..=22).contains(level))
                    .ok_or_else(|| ConfigError::InvalidValue {
                        key: name.into(),
                        value: value.into(),
                        expected: "a zstd level from -7 to 22",
                    })?
            }
            "MODE" => {
                config.mode = match value {
                    "direct" => Mode::Direct,
                    "preprocessor" => Mode::Preprocessor,
                    _ => {
                        return Err(ConfigError::InvalidValue {
                            key: name.into(),
                            value: value.into(),
                            expected: "direct or preprocessor",
                        })
                    }
                }
            }
            "DISABLE" => config.disable = parse_bool(name, value)?,
            "FILE_PREFIX_MAP" => config.file_prefix_map = parse_bool(name, value)?,
            "STATS" => config.stats = parse_bool(name, value)?,
            "DAEMON_ENABLED" => config.daemon.enabled = parse_bool(name, value)?,
            "DAEMON_AUTOSTART" => config.daemon.autostart = parse_bool(name, value)?,
            "DAEMON_IDLE_TIMEOUT" => {
                config.daemon.idle_timeout = parse_number(name, value, "seconds, 0 for never")?
            }
            "DAEMON_MAX_JOBS" => {
                config.daemon.max_jobs = u32::try_from(parse_number(
                    name,
                    value,
                    "a number of compiles, 0 for the CPU count",
                )?)
                .map_err(|_| ConfigError::InvalidValue {
                    key: name.into(),
                    value: value.into(),
                    expected: "a number of compiles, 0 for the CPU count",
                })?
            }
            "DAEMON_METRICS_LISTEN" => {
                config.daemon.metrics_listen =
                    Some(value.to_owned()).filter(|value| !value.is_empty())
            }
            "DAEMON_TRANSPORT" => {
                config.daemon.transport = match value {
                    "unix" => Transport::Unix,
                    "tcp" => Transport::Tcp,
                    _ => {
                        return Err(ConfigError::InvalidValue {
                            key: name.into(),
                            value: value.into(),
                            expected: "unix or tcp",
                        })
                    }
                }
            }
            "DAEMON_MEMORY_CACHE" => {
                config.daemon.memory_cache =
                    value.parse().map_err(|_| ConfigError::InvalidValue {
                        key: name.into(),
                        value: value.into(),
                        expected: "a byte count such as 256M, 1G or 0",
                    })?
            }
            "REMOTE" => config.remote = parse_remote_variable(name, value)?,
            "REMOTE_COMPILE" => config.remote_compile = parse_remote_compile_variable(name, value)?,
            "DAEMON_REPLY_TIMEOUT_MS" => {
                config.daemon.reply_timeout_ms = parse_number(name, value, "milliseconds")?
            }
            _ => return Err(ConfigError::UnknownVariable(name.into())),
        }
    }
    if let Some(farm) = &config.remote_compile {
        // The file and the variables may each be valid and yet clash (paranoid + stores).
        farm.validate(config.remote.len())
            .map_err(|message| ConfigError::InvalidValue {
                key: "remote_compile".into(),
                value: message,
                expected: "a remote_compile table consistent with the [[remote]] stores",
            })?;
    }
    Ok(config)
}

fn parse_number(name: &str, value: &str, expected: &'static str) -> Result<u64, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::InvalidValue {
        key: name.into(),
        value: value.into(),
        expected,
    })
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::InvalidValue {
            key: name.into(),
            value: value.into(),
            expected: "true or false (1/0, yes/no, on/off)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    #[test]
    fn file_values_and_unknown_keys() {
        let config = parse_file(
            Path::new("c.toml"),
            "cache_dir = \"/c\"\nmax_size = \"2G\"\nmode = \"preprocessor\"\ncompression = \"none\"\n",
        )
        .expect("valid file");
        assert_eq!(config.cache_dir, Some(PathBuf::from("/c")));
        assert_eq!(config.max_size, ByteSize(2 << 30));
        assert_eq!(config.mode, Mode::Preprocessor);
        assert_eq!(config.compression, Compression::None);
        assert_eq!(
            parse_file(Path::new("c.toml"), "max_size = 1024").map(|c| c.max_size),
            Ok(ByteSize(1024))
        );
        let error =
            parse_file(Path::new("c.toml"), "cache_directory = \"/c\"\n").expect_err("unknown key");
        assert!(error.to_string().contains("cache_directory"), "{error}");
        assert!(error.to_string().contains("c.toml"), "{error}");
        assert!(parse_file(Path::new("c.toml"), "max_size = \"lots\"").is_err());
    }

    #[test]
    fn environment_overrides_file() {
        let base = Config {
            cache_dir: Some("/from-file".into()),
            ..Config::default()
        };
        let merged = merge_env(
            base,
            [
                ("HPCC_CACHE_DIR", "/from-env"),
                ("HPCC_MAX_SIZE", "100M"),
                ("HPCC_COMPRESSION", "zstd"),
                ("HPCC_MODE", "preprocessor"),
                ("HPCC_LOG", "debug"),
                ("PATH", "/bin"),
            ],
        )
        .expect("valid environment");
        assert_eq!(merged.cache_dir, Some(PathBuf::from("/from-env")));
        assert_eq!(merged.max_size, ByteSize(100 << 20));
        assert_eq!(merged.compression, Compression::Zstd);
        assert_eq!(merged.mode, Mode::Preprocessor);
    }

    #[test]
    fn bad_environment_names_the_variable() {
        let error = merge_env(Config::default(), [("HPCC_CACHEDIR", "/x")]).expect_err("typo");
        assert_eq!(error, ConfigError::UnknownVariable("HPCC_CACHEDIR".into()));
        let error = merge_env(Config::default(), [("HPCC_MODE", "fast")]).expect_err("bad mode");
        assert!(error.to_string().contains("HPCC_MODE"), "{error}");
        let error =
            merge_env(Config::default(), [("HPCC_DISABLE", "maybe")]).expect_err("bad bool");
        assert!(error.to_string().contains("maybe"), "{error}");
        // Variables that are no keys are not taken for typos.
        for name in NON_KEY_VARIABLES {
            assert_eq!(
                merge_env(Config::default(), [(*name, "x")]),
                Ok(Config::default()),
                "{name}"
            );
        }
    }

    #[test]
    fn daemon_table_and_variables() {
        let config = parse_file(
            Path::new("c.toml"),
            "[daemon]\nautostart = false\nidle_timeout = 60\ntransport = \"tcp\"\n",
        )
        .expect("valid daemon table");
        assert!(!config.daemon.autostart);
        assert_eq!(config.daemon.idle_timeout, 60);
        assert_eq!(config.daemon.transport, Transport::Tcp);
        assert!(config.daemon.enabled, "unset keys keep their defaults");
        let error = parse_file(Path::new("c.toml"), "[daemon]\nautostrat = false\n")
            .expect_err("unknown daemon key");
        assert!(error.to_string().contains("autostrat"), "{error}");
        let merged = merge_env(
            Config::default(),
            [
                ("HPCC_DAEMON_ENABLED", "0"),
                ("HPCC_DAEMON_MAX_JOBS", "3"),
                ("HPCC_DAEMON_REPLY_TIMEOUT_MS", "250"),
            ],
        )
        .expect("valid daemon variables");
        assert!(!merged.daemon.enabled);
        assert_eq!(merged.daemon.max_jobs, 3);
        assert_eq!(merged.daemon.reply_timeout_ms, 250);
        for (name, value) in [
            ("HPCC_DAEMON_MAX_JOBS", "-1"),
            ("HPCC_DAEMON_MAX_JOBS", "99999999999"),
            ("HPCC_DAEMON_TRANSPORT", "udp"),
            ("HPCC_DAEMON_IDLE_TIMEOUT", "soon"),
        ] {
            let error = merge_env(Config::default(), [(name, value)]).expect_err(value);
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn remote_variable_replaces_the_tables() {
        let merged = merge_env(
            Config::default(),
            [(
                "HPCC_REMOTE",
                "[{type = \"redis\", endpoint = \"redis://127.0.0.1:1\", read_timeout_ms = 50}]",
            )],
        )
        .expect("valid remote variable");
        assert_eq!(merged.remote.len(), 1);
        assert_eq!(merged.remote[0].options.read_timeout_ms, 50);
        for value in [
            "redis",
            "[{type = \"redis\"}]",
            "[{type = \"redis\", endpoint = \"x\", ttl = 1}]",
        ] {
            let error = merge_env(Config::default(), [("HPCC_REMOTE", value)]).expect_err(value);
            assert!(error.to_string().contains("HPCC_REMOTE"), "{error}");
        }
        let error = parse_file(
            Path::new("c.toml"),
            "[[remote]]\ntype = \"cluster\"\nreplicas = 3\nendpoints = []\n",
        )
        .expect_err("empty cluster");
        assert!(error.to_string().contains("c.toml"), "{error}");
    }

    #[test]
    fn byte_sizes() {
        for (text, expected) in [
            ("0", Some(0)),
            ("1024", Some(1024)),
            ("5G", Some(5 << 30)),
            ("5GiB", Some(5 << 30)),
            ("512 M", Some(512 << 20)),
            ("1k", Some(1024)),
            ("", None),
            ("G", None),
            ("5X", None),
            ("99999999999999999999T", None),
        ] {
            assert_eq!(
                text.parse::<ByteSize>().ok().map(|b| b.0),
                expected,
                "{text:?}"
            );
        }
        assert_eq!(ByteSize(5 << 30).to_string(), "5G");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    proptest! {
        #[test]
        fn config_round_trips_through_toml(max in 0u64..(1 << 50), compression in 0u8..3, level in -7i32..22) {
            let compression = [Compression::None, Compression::Lz4, Compression::Zstd][usize::from(compression)];
            let config = Config { max_size: ByteSize(max), compression, compression_level: level, ..Config::default() };
            let text = toml::to_string(&config).expect("serializable");
            prop_assert_eq!(parse_file(Path::new("x"), &text), Ok(config));
        }

        #[test]
        fn arbitrary_files_and_variables_never_panic(text in ".*", name in "HPCC_[A-Z_]{0,12}", value in ".*") {
            let _ = parse_file(Path::new("x"), &text);
            let _ = merge_env(Config::default(), [(name, value)]);
        }
    }
}
