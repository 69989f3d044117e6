//! The agent's command line and the settings it pins.
//!
//! The runtime starting a session writes every setting on the command line (there is no config
//! file inside an image); [`parse_args`] is a pure function so the tests call it directly.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// The `PATH` every job sees.
pub const PINNED_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// The default hostname inside a session.
pub const DEFAULT_HOSTNAME: &str = "hpcc";

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A Unix socket path (the sandbox runtime).
    Unix(PathBuf),
    /// A vsock port on any CID (the microVM runtimes).
    Vsock(u32),
    /// This many virtio-serial ports named `hpcc.agent.<n>` (the `qemu` runtime, whose
    /// vhost-user vsock device cannot migrate; see `serial.rs`).
    Serial(u32),
}

/// Resource limits applied to each job process (unset: inherited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobLimits {
    /// `RLIMIT_AS`, bytes.
    pub address_space: Option<u64>,
    /// `RLIMIT_CPU`, seconds.
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_NPROC`.
    pub processes: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
}

/// Everything the agent needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Where to accept connections.
    pub listen: ListenAddr,
    /// The work directory; each job gets a fresh subdirectory of `<work_dir>/jobs`.
    pub work_dir: PathBuf,
    /// When PID 1 finds no tmpfs at `work_dir`, it mounts one of this many bytes.
    pub work_size: u64,
    /// The hostname PID 1 pins, and `HOSTNAME` of every job.
    pub hostname: String,
    /// `SOURCE_DATE_EPOCH` of every job.
    pub source_date_epoch: u64,
    /// A job's wall-clock limit when its header says 0.
    pub default_timeout: Duration,
    /// A job's output bound when its header says 0.
    pub default_max_output_bytes: u64,
    /// Per-job rlimits.
    pub limits: JobLimits,
    /// Set on the server child PID 1 starts (it skips the PID 1 duties).
    pub server: bool,
    /// In a microVM: the block device holding the image's root file system. PID 1 then boots
    /// the guest first (`vm.rs`): loads the initramfs's modules, mounts this device read-only
    /// and switches into it. Never passed to the server child.
    pub vm_root: Option<PathBuf>,
}

impl AgentConfig {
    /// A config with defaults for everything but the address and work dir.
    pub fn new(listen: ListenAddr, work_dir: PathBuf) -> AgentConfig {
        AgentConfig {
            listen,
            work_dir,
            work_size: 2 << 30,
            hostname: DEFAULT_HOSTNAME.to_owned(),
            source_date_epoch: 0,
            default_timeout: Duration::from_secs(600),
            default_max_output_bytes: 256 << 20,
            limits: JobLimits::default(),
            server: false,
            vm_root: None,
        }
    }

    /// The variables every job gets, before its header's own.
    pub fn pinned_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LC_ALL", "C".to_owned()),
            ("LANG", "C".to_owned()),
            ("TZ", "UTC".to_owned()),
            ("HOSTNAME", self.hostname.clone()),
            ("SOURCE_DATE_EPOCH", self.source_date_epoch.to_string()),
            ("PATH", PINNED_PATH.to_owned()),
            ("HOME", self.work_dir.display().to_string()),
            ("TMPDIR", "/tmp".to_owned()),
        ]
    }

    /// The command line that yields this config again (for the server child).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        match &self.listen {
            ListenAddr::Unix(path) => {
                let mut value = OsString::from("unix:");
                value.push(path);
                push("--listen", value);
            }
            ListenAddr::Vsock(port) => push("--listen", format!("vsock:{port}").into()),
            ListenAddr::Serial(ports) => push("--listen", format!("serial:{ports}").into()),
        }
        if let (Some(device), false) = (&self.vm_root, self.server) {
            push("--vm-root", device.clone().into_os_string());
        }
        push("--work-dir", self.work_dir.clone().into_os_string());
        push("--work-size", self.work_size.to_string().into());
        push("--hostname", self.hostname.clone().into());
        push(
            "--source-date-epoch",
            self.source_date_epoch.to_string().into(),
        );
        let timeout_ms = u64::try_from(self.default_timeout.as_millis()).unwrap_or(u64::MAX);
        push("--job-timeout-ms", timeout_ms.to_string().into());
        push(
            "--max-output-bytes",
            self.default_max_output_bytes.to_string().into(),
        );
        let limits = [
            ("--rlimit-as", self.limits.address_space),
            ("--rlimit-cpu", self.limits.cpu_seconds),
            ("--rlimit-nproc", self.limits.processes),
            ("--rlimit-nofile", self.limits.open_files),
        ];
        for (flag, value) in limits {
            if let Some(value) = value {
                push(flag, value.to_string().into());
            }
        }
        if self.server {
            args.push("--server".into());
        }
        args
    }
}

/// A bad command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An option the agent does not know.
    #[error("unknown option {0:?}")]
    Unknown(String),
    /// An option without its value.
    #[error("option {0} needs a value")]
    MissingValue(String),
    /// A value that does not parse.
    #[error("option {flag}: bad value {value:?}")]
    BadValue {
        /// The option.
        flag: String,
        /// Its value.
        value: String,
    },
    /// A required option is absent.
    #[error("option {0} is required")]
    Required(&'static str),
}

/// Parses the arguments after `argv[0]`.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<AgentConfig, ConfigError> {
    let mut args = args.into_iter();
    let mut listen = None;
    let mut work_dir = None;
    let mut config = AgentConfig::new(ListenAddr::Unix(PathBuf::new()), PathBuf::new());
    while let Some(flag) = args.next() {
        let flag = flag.to_string_lossy().into_owned();
        if flag == "--server" {
            config.server = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| ConfigError::MissingValue(flag.clone()))?;
        let bad = |value: &OsString| ConfigError::BadValue {
            flag: flag.clone(),
            value: value.to_string_lossy().into_owned(),
        };
        let number = |value: &OsString| -> Result<u64, ConfigError> {
            value
                .to_str()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| bad(value))
        };
        match flag.as_str() {
            "--listen" => {
                let text = value.to_str().ok_or_else(|| bad(&value))?;
                listen = Some(if let Some(path) = text.strip_prefix("unix:") {
                    if path.is_empty() {
                        return Err(bad(&value));
                    }
                    ListenAddr::Unix(PathBuf::from(path))
                } else if let Some(port) = text.strip_prefix("vsock:") {
                    ListenAddr::Vsock(port.parse().map_err(|_| bad(&value))?)
                } else if let Some(ports) = text.strip_prefix("serial:") {
                    match ports.parse() {
                        Ok(ports @ 1..=crate::serial::MAX_PORTS) => ListenAddr::Serial(ports),
                        _ => return Err(bad(&value)),
                    }
                } else {
                    return Err(bad(&value));
                });
            }
            "--vm-root" => config.vm_root = Some(PathBuf::from(value)),
            "--work-dir" => work_dir = Some(PathBuf::from(value)),
            "--work-size" => config.work_size = number(&value)?,
            "--hostname" => {
                let name = value.to_str().ok_or_else(|| bad(&value))?;
                if name.is_empty() || name.len() > 64 {
                    return Err(bad(&value));
                }
                config.hostname = name.to_owned();
            }
            "--source-date-epoch" => config.source_date_epoch = number(&value)?,
            "--job-timeout-ms" => config.default_timeout = Duration::from_millis(number(&value)?),
            "--max-output-bytes" => config.default_max_output_bytes = number(&value)?,
            "--rlimit-as" => config.limits.address_space = Some(number(&value)?),
            "--rlimit-cpu" => config.limits.cpu_seconds = Some(number(&value)?),
            "--rlimit-nproc" => config.limits.processes = Some(number(&value)?),
            "--rlimit-nofile" => config.limits.open_files = Some(number(&value)?),
            _ => return Err(ConfigError::Unknown(flag)),
        }
    }
    config.listen = listen.ok_or(ConfigError::Required("--listen"))?;
    config.work_dir = work_dir.ok_or(ConfigError::Required("--work-dir"))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn round_trips_through_the_command_line() {
        let mut config = AgentConfig::new(
            ListenAddr::Unix(PathBuf::from("/.hpcc/sock/agent.sock")),
            PathBuf::from("/work"),
        );
        config.source_date_epoch = 1_700_000_000;
        config.limits.cpu_seconds = Some(30);
        config.limits.open_files = Some(64);
        config.server = true;
        assert_eq!(parse_args(config.to_args()), Ok(config));
    }

    #[test]
    fn a_vm_agent_round_trips_and_its_server_child_does_not_boot() {
        let mut config = AgentConfig::new(ListenAddr::Vsock(1024), PathBuf::from("/work"));
        config.vm_root = Some(PathBuf::from("/dev/vda"));
        assert_eq!(parse_args(config.to_args()), Ok(config.clone()));
        config.server = true;
        let child = parse_args(config.to_args()).expect("parses");
        assert_eq!(child.vm_root, None);
        assert_eq!(child.listen, ListenAddr::Vsock(1024));
        config.server = false;
        config.listen = ListenAddr::Serial(8);
        assert_eq!(parse_args(config.to_args()), Ok(config));
    }

    #[test]
    fn rejects_bad_command_lines() {
        let check = |words: &[&str], expected: ConfigError| {
            assert_eq!(parse_args(args(words)), Err(expected), "{words:?}");
        };
        check(&["--work-dir", "/w"], ConfigError::Required("--listen"));
        check(
            &["--listen", "unix:/s"],
            ConfigError::Required("--work-dir"),
        );
        check(&["--listen"], ConfigError::MissingValue("--listen".into()));
        check(
            &["--frobnicate", "1"],
            ConfigError::Unknown("--frobnicate".into()),
        );
        check(
            &["--listen", "vsock:x"],
            ConfigError::BadValue {
                flag: "--listen".into(),
                value: "vsock:x".into(),
            },
        );
        for listen in ["serial:0", "serial:x", "serial:100000"] {
            check(
                &["--listen", listen],
                ConfigError::BadValue {
                    flag: "--listen".into(),
                    value: listen.into(),
                },
            );
        }
        check(
            &["--listen", "tcp:1"],
            ConfigError::BadValue {
                flag: "--listen".into(),
                value: "tcp:1".into(),
            },
        );
        check(
            &[
                "--listen",
                "unix:/s",
                "--work-dir",
                "/w",
                "--rlimit-cpu",
                "x",
            ],
            ConfigError::BadValue {
                flag: "--rlimit-cpu".into(),
                value: "x".into(),
            },
        );
    }

    #[test]
    fn pins_the_environment() {
        let mut config = AgentConfig::new(ListenAddr::Unix("/s".into()), "/work".into());
        config.source_date_epoch = 42;
        let env = config.pinned_env();
        let get = |name: &str| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("LC_ALL"), Some("C"));
        assert_eq!(get("TZ"), Some("UTC"));
        assert_eq!(get("SOURCE_DATE_EPOCH"), Some("42"));
        assert_eq!(get("HOME"), Some("/work"));
        assert_eq!(get("PATH"), Some(PINNED_PATH));
        assert_eq!(get("HOSTNAME"), Some(DEFAULT_HOSTNAME));
    }
}
