//! `fake-jailer`: a test double of Firecracker's `jailer`, for the `firecracker` runtime's
//! jailer mode on hosts without the real binaries (the jailer is meant to run a static
//! Firecracker of its own version; `fake-firecracker` stands in for it).
//!
//! It takes the jailer's documented arguments, strictly: `--id` (letters, digits and hyphens,
//! at most 64), `--exec-file`, `--uid`, `--gid` (all required), `--chroot-base-dir` (default
//! `/srv/jailer`, must exist), `--netns`, `--daemonize`, `--new-pid-ns`, `--cgroup
//! <file>=<value>` (repeatable; the controller before the file's first `.` must be mounted),
//! `--cgroup-version 1|2` (default 1), `--parent-cgroup` (relative, no `.` or `..`; default the
//! exec file's name), `--resource-limit fsize=N|no-file=N` (repeatable), `--version`, and after
//! `--` the exec file's own arguments. An unknown, repeated or malformed argument, or a missing
//! required one, ends it with status 1 and a message naming it on standard error, before
//! anything is made.
//!
//! **What it does for real**, in the jailer's order: creates `<base>/<exec_name>/<id>/root`
//! (the chroot dir), copies the exec file into it owned by uid:gid (refusing a hard-linked
//! target), joins `--netns`, sets the resource limits (`no-file` 2048 unless told otherwise),
//! creates the cgroups (v1: `<controller mount>/<parent>/<id>` for each controller named by a
//! `--cgroup`; v2: `<unified mount>/<parent>/<id>` with the controllers enabled on the way
//! down), writes the values and its pid into them, enters a new mount namespace with private
//! propagation, creates `/dev`, `/dev/net` and `/run` (0700, uid:gid) and the `/dev/net/tun`,
//! `/dev/kvm` and `/dev/urandom` nodes in the chroot dir, gives the chroot dir to uid:gid,
//! daemonizes if told to, sets `no_new_privs` (which Firecracker does itself before its seccomp
//! filters), and with `--new-pid-ns` forks into a new PID namespace, writes the child's pid to
//! `<chroot>/<exec_name>.pid` and exits 0; the child (or without it, the process itself) drops
//! to uid:gid with no supplementary groups (so no capabilities) and execs the copied exec file
//! with `--id <id> --start-time-us N --start-time-cpu-us N --parent-cpu-time-us N` and the
//! arguments after `--`, with an emptied environment.
//!
//! **What it does not do: the chroot.** The exec file it runs is `fake-firecracker` (through
//! the tests' wrapper script), which launches QEMU and `vhost-device-vsock`: dynamically
//! linked programs that are not in the jail and could not run there. So instead of
//! `pivot_root` + `chroot` into the chroot dir it only changes into it, and sets one variable in
//! the emptied environment, `FAKE_JAILER_ROOT=<chroot dir>`, which tells fake-firecracker to
//! resolve every absolute path it is given (`--api-sock` and the API's paths) beneath its
//! current directory, refusing `..`, and to hand QEMU relative paths. Paths therefore mean
//! what they would in the real jail, and nothing of the session is written outside it, but the
//! processes can still see (as uid:gid, without capabilities) whatever the host's permissions
//! let any user see. It also does not close inherited descriptors (Rust opens every descriptor
//! close-on-exec) and leaves `/dev/userfaultfd` out.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use rustix::thread::UnshareFlags;

/// What the jailer was asked to do, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Jail {
    id: String,
    exec_file: PathBuf,
    uid: u32,
    gid: u32,
    chroot_base: PathBuf,
    netns: Option<PathBuf>,
    daemonize: bool,
    new_pid_ns: bool,
    cgroup_version: u8,
    parent_cgroup: PathBuf,
    cgroups: Vec<(String, String)>,
    no_file: u64,
    file_size: Option<u64>,
    extra: Vec<OsString>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Version,
    Run(Box<Jail>),
}

const MAX_ID_LEN: usize = 64;

/// Parses the jailer's arguments (without the program name). Only checks that need no file
/// system are made here; [`check`] does the rest.
fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Request, String> {
    let mut single: Vec<(&'static str, String)> = Vec::new();
    let mut flags: Vec<&'static str> = Vec::new();
    let mut cgroups = Vec::new();
    let mut limits = Vec::new();
    let mut extra = Vec::new();
    let mut args = args.into_iter();
    const VALUED: [&str; 9] = [
        "id",
        "exec-file",
        "uid",
        "gid",
        "chroot-base-dir",
        "netns",
        "cgroup-version",
        "parent-cgroup",
        "cgroup",
    ];
    const FLAGS: [&str; 4] = ["daemonize", "new-pid-ns", "version", "help"];
    while let Some(arg) = args.next() {
        if arg == "--" {
            extra.extend(args.by_ref());
            break;
        }
        let text = arg
            .to_str()
            .ok_or_else(|| format!("Failed to parse arguments: {arg:?} is not UTF-8"))?;
        let Some(name) = text.strip_prefix("--") else {
            return Err(format!(
                "Failed to parse arguments: unexpected value {text:?} (arguments for the exec file go after --)"
            ));
        };
        if let Some(flag) = FLAGS.iter().find(|flag| **flag == name) {
            if flags.contains(flag) {
                return Err(format!("Failed to parse arguments: --{name} given twice"));
            }
            flags.push(flag);
            continue;
        }
        let valued = VALUED
            .iter()
            .chain(["resource-limit"].iter())
            .find(|known| **known == name)
            .ok_or_else(|| format!("Failed to parse arguments: unknown argument --{name}"))?;
        let value = args
            .next()
            .and_then(|value| value.into_string().ok())
            .filter(|value| !value.starts_with("--"))
            .ok_or_else(|| format!("Failed to parse arguments: --{name} needs a value"))?;
        match *valued {
            "cgroup" => cgroups.push(value),
            "resource-limit" => limits.push(value),
            other => {
                if single.iter().any(|(known, _)| *known == other) {
                    return Err(format!("Failed to parse arguments: --{name} given twice"));
                }
                single.push((other, value));
            }
        }
    }
    if flags.contains(&"version") || flags.contains(&"help") {
        return Ok(Request::Version);
    }
    let value = |name: &str| {
        single
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, value)| value.clone())
    };
    let required = |name: &str| {
        value(name).ok_or_else(|| format!("Failed to parse arguments: --{name} is required"))
    };
    let id = required("id")?;
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!(
            "Invalid instance ID: {id:?} (letters, digits and hyphens, 1 to {MAX_ID_LEN} characters)"
        ));
    }
    let exec_file = PathBuf::from(required("exec-file")?);
    let uid_text = required("uid")?;
    let uid = uid_text
        .parse()
        .map_err(|_| format!("Invalid uid: {uid_text}"))?;
    let gid_text = required("gid")?;
    let gid = gid_text
        .parse()
        .map_err(|_| format!("Invalid gid: {gid_text}"))?;
    let version_text = value("cgroup-version").unwrap_or_else(|| "1".to_owned());
    let cgroup_version = match version_text.as_str() {
        "1" => 1,
        "2" => 2,
        other => return Err(format!("{other} is an invalid cgroup version specifier")),
    };
    let exec_name = exec_file
        .file_name()
        .ok_or_else(|| format!("No file name in --exec-file {}", exec_file.display()))?
        .to_owned();
    let parent_cgroup = PathBuf::from(
        value("parent-cgroup").unwrap_or_else(|| exec_name.to_string_lossy().into_owned()),
    );
    if parent_cgroup.as_os_str().is_empty() || !is_plain_relative(&parent_cgroup) {
        return Err(format!(
            "Parent cgroup path {} is invalid: it must be relative, without '.' or '..'",
            parent_cgroup.display()
        ));
    }
    let mut checked_cgroups = Vec::new();
    for cgroup in cgroups {
        let (file, value) = cgroup
            .split_once('=')
            .filter(|(file, value)| !file.is_empty() && !value.is_empty() && !value.contains('='))
            .ok_or_else(|| {
                format!("Invalid format for cgroups: {cgroup} (expected <file>=<value>)")
            })?;
        if !is_plain_relative(Path::new(file)) || file.contains('/') || !file.contains('.') {
            return Err(format!("Cgroup invalid file: {cgroup}"));
        }
        checked_cgroups.push((file.to_owned(), value.to_owned()));
    }
    let mut no_file = 2048;
    let mut file_size = None;
    for limit in limits {
        let (name, value) = limit
            .split_once('=')
            .ok_or_else(|| format!("Invalid format for resources limits: {limit}"))?;
        let number: u64 = value
            .parse()
            .map_err(|error| format!("Invalid limit value for resource: {value}: {error}"))?;
        match name {
            "no-file" => no_file = number,
            "fsize" => file_size = Some(number),
            other => return Err(format!("Invalid resource argument: {other}")),
        }
    }
    Ok(Request::Run(Box::new(Jail {
        id,
        exec_file,
        uid,
        gid,
        chroot_base: PathBuf::from(
            value("chroot-base-dir").unwrap_or_else(|| "/srv/jailer".to_owned()),
        ),
        netns: value("netns").map(PathBuf::from),
        daemonize: flags.contains(&"daemonize"),
        new_pid_ns: flags.contains(&"new-pid-ns"),
        cgroup_version,
        parent_cgroup,
        cgroups: checked_cgroups,
        no_file,
        file_size,
        extra,
    })))
}

/// Whether `path` is relative with only normal components.
fn is_plain_relative(path: &Path) -> bool {
    path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// A cgroup directory to create, the values to write there, and the file the pid goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupDir {
    path: PathBuf,
    values: Vec<(String, String)>,
    /// For v2: the hierarchy's root, whose descendants on the way to `path` need the
    /// controllers enabled.
    v2_root: Option<PathBuf>,
}

/// Where each `--cgroup` goes, from `/proc/mounts` text: one directory per hierarchy.
fn cgroup_dirs(jail: &Jail, mounts: &str) -> Result<Vec<CgroupDir>, String> {
    let mut dirs: Vec<CgroupDir> = Vec::new();
    for (file, value) in &jail.cgroups {
        let controller = file.split('.').next().unwrap_or_default();
        let mount = mounts.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (target, kind, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            let found = if jail.cgroup_version == 1 {
                *kind == "cgroup" && options.split(',').any(|option| option == controller)
            } else {
                *kind == "cgroup2"
            };
            found.then(|| PathBuf::from(target))
        });
        let Some(mount) = mount else {
            return Err(format!(
                "Controller {controller} is unavailable (no cgroup v{} hierarchy has it)",
                jail.cgroup_version
            ));
        };
        if jail.cgroup_version == 2 {
            let available =
                std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
            if !available.split_whitespace().any(|name| name == controller) {
                return Err(format!(
                    "Controller {controller} is unavailable in the cgroup v2 hierarchy at {}",
                    mount.display()
                ));
            }
        }
        let path = mount.join(&jail.parent_cgroup).join(&jail.id);
        match dirs.iter_mut().find(|dir| dir.path == path) {
            Some(dir) => dir.values.push((file.clone(), value.clone())),
            None => dirs.push(CgroupDir {
                path,
                values: vec![(file.clone(), value.clone())],
                v2_root: (jail.cgroup_version == 2).then(|| mount.clone()),
            }),
        }
    }
    Ok(dirs)
}

/// Checks what needs the file system, and returns the canonical exec file and chroot dir.
fn check(jail: &Jail) -> Result<(PathBuf, PathBuf), String> {
    let exec_file = std::fs::canonicalize(&jail.exec_file).map_err(|error| {
        format!(
            "Failed to canonicalize path {}: {error}",
            jail.exec_file.display()
        )
    })?;
    if !exec_file.is_file() {
        return Err(format!("{} is not a file", exec_file.display()));
    }
    let base = std::fs::canonicalize(&jail.chroot_base).map_err(|error| {
        format!(
            "Failed to canonicalize path {}: {error}",
            jail.chroot_base.display()
        )
    })?;
    if !base.is_dir() {
        return Err(format!("{} is not a directory", base.display()));
    }
    let name = exec_file.file_name().ok_or_else(|| {
        format!(
            "Failed to extract filename from path {}",
            exec_file.display()
        )
    })?;
    let chroot = base.join(name).join(&jail.id).join("root");
    if let Some(netns) = &jail.netns {
        if !netns.exists() {
            return Err(format!(
                "Failed to open file {}: no such file",
                netns.display()
            ));
        }
    }
    Ok((exec_file, chroot))
}

fn log(message: impl std::fmt::Display) {
    eprintln!("fake-jailer: {message}");
}

/// Does what the jailer does (see the module docs), and execs; returns only on failure.
fn run(jail: &Jail, started: Instant) -> Result<ExitCode, String> {
    let (exec_file, chroot) = check(jail)?;
    let mounts = std::fs::read_to_string("/proc/mounts")
        .map_err(|error| format!("Failed to read /proc/mounts: {error}"))?;
    let cgroups = cgroup_dirs(jail, &mounts)?;
    std::fs::create_dir_all(&chroot)
        .map_err(|error| format!("Failed to create directory {}: {error}", chroot.display()))?;
    let exec_name = exec_file.file_name().unwrap_or_default().to_owned();
    let jailed_exec = chroot.join(&exec_name);
    copy_exec(&exec_file, &jailed_exec, jail.uid, jail.gid)?;
    log(format_args!(
        "copied {} to {}",
        exec_file.display(),
        jailed_exec.display()
    ));
    if let Some(netns) = &jail.netns {
        let file = std::fs::File::open(netns)
            .map_err(|error| format!("Failed to open file {}: {error}", netns.display()))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|error| format!("Failed to join network namespace: netns: {error}"))?;
    }
    set_limit(rustix::process::Resource::Nofile, jail.no_file, "no-file")?;
    if let Some(size) = jail.file_size {
        set_limit(rustix::process::Resource::Fsize, size, "fsize")?;
    }
    let pid = std::process::id();
    for cgroup in &cgroups {
        create_cgroup(cgroup, pid)?;
        log(format_args!(
            "cgroup {} {:?}",
            cgroup.path.display(),
            cgroup.values
        ));
    }
    let dev_null = if jail.daemonize {
        Some(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|error| format!("Failed to open /dev/null: {error}"))?,
        )
    } else {
        None
    };
    hpcc_runtime::unshare(UnshareFlags::NEWNS)
        .map_err(|error| format!("Failed to unshare into new mount namespace: {error}"))?;
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .map_err(|error| format!("Failed to change the propagation type to private: {error}"))?;
    // The real jailer pivots its root here; see the module docs for why this double does not.
    std::env::set_current_dir(&chroot)
        .map_err(|error| format!("Failed to chdir into chroot directory: {error}"))?;
    for folder in ["", "dev", "dev/net", "run"] {
        let path = chroot.join(folder);
        std::fs::create_dir_all(&path)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)))
            .and_then(|()| std::os::unix::fs::chown(&path, Some(jail.uid), Some(jail.gid)))
            .map_err(|error| format!("Failed to set up {}: {error}", path.display()))?;
    }
    for (node, major, minor) in [
        ("dev/net/tun", 10, 200),
        ("dev/kvm", 10, 232),
        ("dev/urandom", 1, 9),
    ] {
        let path = chroot.join(node);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            rustix::fs::makedev(major, minor),
        )
        .map_err(|error| format!("Failed to create /{node} via mknod inside the jail: {error}"))?;
        std::os::unix::fs::chown(&path, Some(jail.uid), Some(jail.gid))
            .map_err(|error| format!("Failed to change owner for /{node}: {error}"))?;
    }
    if let Some(dev_null) = &dev_null {
        rustix::process::setsid()
            .map_err(|error| format!("Failed to daemonize: setsid: {error}"))?;
        redirect_stdio(dev_null)?;
    }
    rustix::thread::set_no_new_privs(true)
        .map_err(|error| format!("Failed to set no_new_privs: {error}"))?;
    let elapsed = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut command = std::process::Command::new(Path::new(".").join(&exec_name));
    command
        .arg("--id")
        .arg(&jail.id)
        .arg("--start-time-us")
        .arg(elapsed.to_string())
        .arg("--start-time-cpu-us")
        .arg("0")
        .arg("--parent-cpu-time-us")
        .arg("0")
        .args(&jail.extra)
        .env_clear()
        .env("FAKE_JAILER_ROOT", &chroot)
        .uid(jail.uid)
        .gid(jail.gid);
    if jail.new_pid_ns {
        hpcc_runtime::unshare(UnshareFlags::NEWPID)
            .map_err(|error| format!("Failed cloning into a new child process: {error}"))?;
        let child = command
            .spawn()
            .map_err(|error| format!("Failed to exec into Firecracker: {error}"))?;
        let pid_file = chroot.join(format!("{}.pid", exec_name.to_string_lossy()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&pid_file)
            .map_err(|error| format!("Failed to open file {}: {error}", pid_file.display()))?;
        write!(file, "{}", child.id())
            .map_err(|error| format!("Failed to write to {}: {error}", pid_file.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let error = command.exec();
    Err(format!("Failed to exec into Firecracker: {error}"))
}

/// Points standard input, output and error at `dev_null` (`--daemonize`).
fn redirect_stdio(dev_null: &std::fs::File) -> Result<(), String> {
    let duplicate = |error: rustix::io::Errno| format!("Failed to duplicate fd: {error}");
    rustix::stdio::dup2_stdin(dev_null).map_err(duplicate)?;
    rustix::stdio::dup2_stdout(dev_null).map_err(duplicate)?;
    rustix::stdio::dup2_stderr(dev_null).map_err(duplicate)
}

fn set_limit(resource: rustix::process::Resource, value: u64, name: &str) -> Result<(), String> {
    rustix::process::setrlimit(
        resource,
        rustix::process::Rlimit {
            current: Some(value),
            maximum: Some(value),
        },
    )
    .map_err(|error| format!("Failed to set limit for resource: {name}: {error}"))
}

/// Copies the exec file into the jail, owned by uid:gid with the source's mode.
fn copy_exec(source: &Path, target: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let mut input = std::fs::File::open(source)
        .map_err(|error| format!("Failed to open {}: {error}", source.display()))?;
    let mode = input
        .metadata()
        .map_err(|error| {
            format!(
                "Cannot get metadata for a file: {}: {error}",
                source.display()
            )
        })?
        .mode();
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc_o_nofollow())
        .mode(mode & 0o7777)
        .open(target)
        .map_err(|error| format!("Failed to open {}: {error}", target.display()))?;
    let links = output
        .metadata()
        .map_err(|error| {
            format!(
                "Cannot get metadata for a file: {}: {error}",
                target.display()
            )
        })?
        .nlink();
    if links > 1 {
        return Err(format!("Detected hard link at: {}", target.display()));
    }
    std::os::unix::fs::fchown(&output, Some(uid), Some(gid))
        .map_err(|error| format!("Failed to change owner for {}: {error}", target.display()))?;
    std::io::copy(&mut input, &mut output).map_err(|error| {
        format!(
            "Failed to copy {} to {}: {error}",
            source.display(),
            target.display()
        )
    })?;
    Ok(())
}

fn libc_o_nofollow() -> i32 {
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

/// Creates a cgroup directory, writes its values, and moves `pid` into it.
fn create_cgroup(cgroup: &CgroupDir, pid: u32) -> Result<(), String> {
    let write = |path: PathBuf, value: &str| {
        std::fs::write(&path, format!("{value}\n"))
            .map_err(|error| format!("Failed to write to {}: {error}", path.display()))
    };
    if let Some(root) = &cgroup.v2_root {
        // Enable the controllers on every level above the new cgroup.
        let controllers: Vec<String> = cgroup
            .values
            .iter()
            .filter_map(|(file, _)| file.split('.').next().map(|c| format!("+{c}")))
            .collect();
        let relative = cgroup.path.strip_prefix(root).unwrap_or(&cgroup.path);
        let mut level = root.clone();
        for component in relative.components() {
            for controller in &controllers {
                write(level.join("cgroup.subtree_control"), controller)?;
            }
            level.push(component);
            std::fs::create_dir_all(&level).map_err(|error| {
                format!("Failed to create directory {}: {error}", level.display())
            })?;
        }
    } else {
        std::fs::create_dir_all(&cgroup.path).map_err(|error| {
            format!(
                "Failed to create directory {}: {error}",
                cgroup.path.display()
            )
        })?;
    }
    for (file, value) in &cgroup.values {
        write(cgroup.path.join(file), value)?;
    }
    let procs = if cgroup.v2_root.is_some() {
        "cgroup.procs"
    } else {
        "tasks"
    };
    write(cgroup.path.join(procs), &pid.to_string())
}

fn main() -> ExitCode {
    let started = Instant::now();
    let request = match parse(std::env::args_os().skip(1)) {
        Ok(request) => request,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    match request {
        Request::Version => {
            println!("Jailer v{}-fake", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Request::Run(jail) => match run(&jail, started) {
            Ok(code) => code,
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<OsString> {
        text.split_whitespace().map(OsString::from).collect()
    }

    const GOOD: &str = "--id fc-a-1 --exec-file /usr/bin/firecracker --uid 900 --gid 900";

    fn jail(text: &str) -> Jail {
        match parse(args(text)) {
            Ok(Request::Run(jail)) => *jail,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn documented_arguments_parse_with_their_defaults() {
        let jail = jail(GOOD);
        assert_eq!(jail.chroot_base, Path::new("/srv/jailer"));
        assert_eq!(jail.cgroup_version, 1);
        assert_eq!(jail.parent_cgroup, Path::new("firecracker"));
        assert_eq!(jail.no_file, 2048);
        assert!(!jail.new_pid_ns && !jail.daemonize && jail.extra.is_empty());
        let full = self::jail(&format!(
            "{GOOD} --chroot-base-dir /j --cgroup-version 2 --parent-cgroup hpcc/fc --new-pid-ns \
             --cgroup memory.max=100 --cgroup pids.max=5 --resource-limit no-file=64 \
             --resource-limit fsize=10 --daemonize -- --api-sock /api.sock"
        ));
        assert_eq!(full.chroot_base, Path::new("/j"));
        assert_eq!(full.parent_cgroup, Path::new("hpcc/fc"));
        assert_eq!(
            full.cgroups,
            [
                ("memory.max".into(), "100".into()),
                ("pids.max".into(), "5".into())
            ]
        );
        assert_eq!((full.no_file, full.file_size), (64, Some(10)));
        assert!(full.new_pid_ns && full.daemonize);
        assert_eq!(full.extra, args("--api-sock /api.sock"));
        assert_eq!(parse(args("--version")), Ok(Request::Version));
    }

    /// Each bad command line, and a word its message must contain.
    #[test]
    fn bad_arguments_are_named() {
        for (text, expected) in [
            ("--exec-file /f --uid 1 --gid 1", "--id is required"),
            ("--id a --uid 1 --gid 1", "--exec-file is required"),
            ("--id a --exec-file /f --gid 1", "--uid is required"),
            ("--id a --exec-file /f --uid 1", "--gid is required"),
            (&format!("{GOOD} --bogus 1"), "unknown argument --bogus"),
            (&format!("{GOOD} --id b"), "--id given twice"),
            (&format!("{GOOD} --netns"), "--netns needs a value"),
            (&format!("{GOOD} stray"), "unexpected value"),
            (
                "--id a_b --exec-file /f --uid 1 --gid 1",
                "Invalid instance ID",
            ),
            (
                &format!("--id {} --exec-file /f --uid 1 --gid 1", "x".repeat(65)),
                "Invalid instance ID",
            ),
            ("--id a --exec-file /f --uid -1 --gid 1", "Invalid uid: -1"),
            ("--id a --exec-file /f --uid 1 --gid x", "Invalid gid: x"),
            (
                &format!("{GOOD} --cgroup-version 3"),
                "3 is an invalid cgroup version",
            ),
            (
                &format!("{GOOD} --parent-cgroup ../x"),
                "Parent cgroup path",
            ),
            (
                &format!("{GOOD} --parent-cgroup /abs"),
                "Parent cgroup path",
            ),
            (
                &format!("{GOOD} --cgroup memory.max"),
                "Invalid format for cgroups",
            ),
            (
                &format!("{GOOD} --cgroup memory.max="),
                "Invalid format for cgroups",
            ),
            (
                &format!("{GOOD} --cgroup ../memory.max=1"),
                "Cgroup invalid file",
            ),
            (
                &format!("{GOOD} --resource-limit cores=1"),
                "Invalid resource argument: cores",
            ),
            (
                &format!("{GOOD} --resource-limit no-file=x"),
                "Invalid limit value",
            ),
            (
                &format!("{GOOD} --resource-limit no-file"),
                "Invalid format for resources",
            ),
        ] {
            match parse(args(text)) {
                Err(message) => assert!(message.contains(expected), "{text}: {message}"),
                Ok(request) => panic!("{text} accepted: {request:?}"),
            }
        }
    }

    #[test]
    fn cgroups_go_to_their_controllers_hierarchy() {
        let mounts = "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
                      cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        let v1 = jail(&format!(
            "{GOOD} --parent-cgroup hpcc --cgroup memory.limit_in_bytes=1 \
             --cgroup cpu.cfs_quota_us=2 --cgroup cpu.cfs_period_us=3"
        ));
        let dirs = cgroup_dirs(&v1, mounts).expect("mounted controllers");
        assert_eq!(dirs.len(), 2);
        assert_eq!(dirs[0].path, Path::new("/sys/fs/cgroup/memory/hpcc/fc-a-1"));
        assert_eq!(
            dirs[1].path,
            Path::new("/sys/fs/cgroup/cpu,cpuacct/hpcc/fc-a-1")
        );
        assert_eq!(dirs[1].values.len(), 2);
        let missing = jail(&format!("{GOOD} --cgroup pids.max=1"));
        let error = cgroup_dirs(&missing, mounts).expect_err("no pids hierarchy");
        assert!(error.contains("Controller pids is unavailable"), "{error}");
    }
}
