//! Where the config file and the cache live, and the resolved configuration.
//!
//! The file is `HPCC_CONFIG`, else `$XDG_CONFIG_HOME/hpcc/config.toml`, else
//! `~/.config/hpcc/config.toml`; the `HPCC_*` variables apply over it (`hpcc_core::config`).
//! `HPCC_CACHE_DIR` is read again as raw bytes, so a cache directory whose path is not UTF-8
//! survives, and a relative one is made absolute, since the daemon does not stay in the directory
//! it was started from.

use std::path::PathBuf;

use anyhow::{Context, Result};
use hpcc_core::config::{self, Compression, Config};

/// The resolved configuration and the paths it came from.
pub struct Settings {
    /// The merged configuration (defaults, then the file, then `HPCC_*`).
    pub config: Config,
    /// The config file consulted (it may not exist).
    pub config_path: PathBuf,
    /// Whether that file exists.
    pub config_exists: bool,
    /// The cache directory in effect.
    pub cache_dir: PathBuf,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The config file: `HPCC_CONFIG`, else `$XDG_CONFIG_HOME/hpcc/config.toml`, else
/// `~/.config/hpcc/config.toml`.
pub fn config_path() -> PathBuf {
    if let Some(path) = std::env::var_os("HPCC_CONFIG") {
        return PathBuf::from(path);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .unwrap_or_else(|| home().join(".config"));
    base.join("hpcc").join("config.toml")
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .unwrap_or_else(|| home().join(".cache"));
    base.join("hpcc")
}

impl Settings {
    /// Reads the config file (if present) and applies the environment.
    pub fn load() -> Result<Settings> {
        let config_path = config_path();
        let (file_config, config_exists) = match std::fs::read_to_string(&config_path) {
            Ok(text) => (config::parse_file(&config_path, &text)?, true),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                (Config::default(), false)
            }
            Err(error) => {
                return Err(error).with_context(|| format!("reading config file {config_path:?}"))
            }
        };
        let variables = std::env::vars_os().filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with("HPCC_")
                .then(|| (name, value.to_string_lossy().into_owned()))
        });
        let mut config = config::merge_env(file_config, variables)?;
        // `merge_env` sees values as text, converted lossily; a path must be taken as the
        // bytes given, or a non-UTF-8 HPCC_CACHE_DIR would silently name another directory.
        if let Some(dir) = std::env::var_os("HPCC_CACHE_DIR") {
            config.cache_dir = Some(PathBuf::from(dir));
        }
        let mut cache_dir = config.cache_dir.clone().unwrap_or_else(default_cache_dir);
        // A relative directory means the same place to every process that shares it (the
        // daemon does not stay in the directory it was started from).
        if cache_dir.is_relative() {
            if let Ok(cwd) = std::env::current_dir() {
                cache_dir = cwd.join(cache_dir);
            }
        }
        Ok(Settings {
            config,
            config_path,
            config_exists,
            cache_dir,
        })
    }

    /// The disk store's settings.
    pub fn disk_config(&self) -> hpcc_store::DiskConfig {
        hpcc_store::DiskConfig {
            max_size: self.config.max_size.0,
            compression: match self.config.compression {
                Compression::None => hpcc_store::Codec::None,
                Compression::Lz4 => hpcc_store::Codec::Lz4,
                Compression::Zstd => hpcc_store::Codec::Zstd(self.config.compression_level),
            },
        }
    }
}
