//! What the agent does as PID 1: mount what the session lacks, pin the hostname, start the
//! server as a child and reap every process that ends up parented to PID 1.
//!
//! The server is a separate process (the same binary with `--server`) so the reaper can call
//! `waitpid(-1)` without stealing the exit statuses of the jobs, which are the server's
//! children, not PID 1's. When the server exits, PID 1 exits with its status and the session
//! ends (in a PID namespace the kernel then kills everything left).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{FileType, Mode};
use rustix::mount::MountFlags;
use rustix::process::{Pid, WaitOptions};

use crate::config::AgentConfig;

/// `TMPFS_MAGIC` from `<linux/magic.h>`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A failed PID 1 step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// Mounting `target` failed.
    #[error("mounting {fs} at {target}")]
    Mount {
        /// The file system type.
        fs: &'static str,
        /// Where.
        target: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Creating a directory failed.
    #[error("creating {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Setting the hostname failed.
    #[error("setting hostname {name}")]
    Hostname {
        /// The name.
        name: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Starting the server child failed.
    #[error("starting the server process {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Mounts `/proc` and a tmpfs work directory where they are missing (a microVM boots with
/// neither; the sandbox runtime provides both, and its seccomp filter would refuse the mount),
/// and pins the hostname.
pub fn prepare_session(config: &AgentConfig) -> Result<(), InitError> {
    if !Path::new("/proc/self").exists() {
        mount_fs("proc", Path::new("/proc"), None)?;
    }
    let is_tmpfs = rustix::fs::statfs(&config.work_dir)
        .map(|stat| stat.f_type == TMPFS_MAGIC)
        .unwrap_or(false);
    if !is_tmpfs {
        create_dir(&config.work_dir)?;
        let options = format!("size={},mode=0755", config.work_size);
        mount_fs("tmpfs", &config.work_dir, Some(&options))?;
    }
    create_dir(&config.work_dir.join("jobs"))?;
    let current = rustix::system::uname();
    if current.nodename().to_bytes() != config.hostname.as_bytes() {
        rustix::system::sethostname(config.hostname.as_bytes()).map_err(|errno| {
            InitError::Hostname {
                name: config.hostname.clone(),
                source: errno.into(),
            }
        })?;
    }
    Ok(())
}

fn create_dir(path: &Path) -> Result<(), InitError> {
    match rustix::fs::stat(path) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => Ok(()),
        _ => rustix::fs::mkdir(path, Mode::from_raw_mode(0o755)).map_err(|errno| {
            InitError::CreateDir {
                path: path.to_owned(),
                source: errno.into(),
            }
        }),
    }
}

fn mount_fs(fs: &'static str, target: &Path, options: Option<&str>) -> Result<(), InitError> {
    let failed = |source: io::Error| InitError::Mount {
        fs,
        target: target.to_owned(),
        source,
    };
    let options = options
        .map(|text| std::ffi::CString::new(text).map_err(io::Error::other))
        .transpose()
        .map_err(failed)?;
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let flags = if fs == "tmpfs" {
        MountFlags::NOSUID | MountFlags::NODEV
    } else {
        flags
    };
    rustix::mount::mount(fs, target, fs, flags, options.as_deref())
        .map_err(|errno| failed(errno.into()))
}

/// Starts the server child and reaps until it exits; returns its exit code.
pub fn run_init(config: &AgentConfig) -> Result<i32, InitError> {
    // In a guest the binary is `/init` of the initramfs, which the switch into the image root
    // left unreachable by name; `/proc/self/exe` still opens it.
    let program = if config.vm_root.is_some() {
        PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
    };
    let mut server_config = config.clone();
    server_config.server = true;
    let mut command = Command::new(&program);
    command.args(server_config.to_args()).env_clear();
    if let Some(filter) = std::env::var_os("HPCC_LOG") {
        command.env("HPCC_LOG", filter);
    }
    let server = command.spawn().map_err(|source| InitError::Spawn {
        program: program.clone(),
        source,
    })?;
    let server_pid = i32::try_from(server.id()).ok().and_then(Pid::from_raw);
    loop {
        // `wait` is waitpid(-1): any child. (rustix's `waitpid(None)` is waitpid(0), only the
        // caller's process group, which would miss orphans from the jobs' own groups.)
        match rustix::process::wait(WaitOptions::empty()) {
            Ok(Some((pid, status))) if Some(pid) == server_pid => {
                let code = status
                    .exit_status()
                    .or_else(|| status.terminating_signal().map(|signal| 128 + signal))
                    .unwrap_or(1);
                return Ok(code);
            }
            // An orphan reaped, or an interrupted wait: keep going.
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            // No children at all: the server is gone without us seeing it.
            Err(_) => return Ok(1),
        }
    }
}
