//! A session's cgroup: memory, CPU and pids limits for every process of a jailed VMM.
//!
//! Two layouts, as Firecracker's jailer supports with `--cgroup-version`:
//! - **v2** (the unified hierarchy): one directory `<root>/<parent>/<session>` with
//!   `memory.max`, `memory.swap.max`, `cpu.max` and `pids.max`; the controllers must be enabled
//!   in the `cgroup.subtree_control` of the root and of the parent, which [`prepare_parent`]
//!   does.
//! - **v1**: one directory per controller, `<root>/{memory,cpu,pids}/<parent>/<session>`, with
//!   `memory.limit_in_bytes`, `cpu.cfs_period_us` + `cpu.cfs_quota_us` and `pids.max`.
//!
//! A process joins by writing `0` ("myself") into every directory's `cgroup.procs`: the jailed
//! child does that itself before it unshares (see `jail::plan`), so it never runs outside
//! its limits, and whatever it forks stays inside. The directories are removed at stop, once
//! no process is left in them (`rmdir` of a cgroup fails with `EBUSY` until then).
//!
//! Every function takes the cgroup root as a path, so the unit tests check the files written
//! against a temporary directory.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup hierarchy a jail uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// v2 if the unified hierarchy at the root has the memory, cpu and pids controllers,
    /// else v1.
    Auto,
    /// One hierarchy per controller (`<root>/memory`, `<root>/cpu`, `<root>/pids`).
    V1,
    /// The unified hierarchy mounted at the root.
    V2,
}

/// The controllers a jail limits, by their v1 hierarchy and v2 name.
pub const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// The CFS period used for CPU quotas, in microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// What a session's cgroup allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory of all its processes together (guest RAM included: QEMU's and Firecracker's
    /// guest memory is theirs), bytes; beyond it the kernel's OOM killer ends the VMM.
    pub memory_bytes: u64,
    /// CPU time per wall-clock second in thousandths of a CPU (2000: two CPUs); `None`: no cap.
    pub cpu_millis: Option<u32>,
    /// Processes and threads.
    pub pids_max: u64,
}

/// Which version `Auto` means under `root`: v2 when `root` is the unified hierarchy and
/// offers all of [`CONTROLLERS`], else v1 when each controller has a v1 hierarchy there.
pub fn resolve(version: CgroupVersion, root: &Path) -> Result<CgroupVersion, String> {
    let v2_ready = || {
        std::fs::read_to_string(root.join("cgroup.controllers"))
            .map(|text| {
                let offered: Vec<&str> = text.split_whitespace().collect();
                CONTROLLERS.iter().all(|wanted| offered.contains(wanted))
            })
            .unwrap_or(false)
    };
    let v1_ready = || {
        CONTROLLERS
            .iter()
            .all(|controller| root.join(controller).join("cgroup.procs").is_file())
    };
    match version {
        CgroupVersion::V2 if v2_ready() => Ok(CgroupVersion::V2),
        CgroupVersion::V2 => Err(format!(
            "cgroup_version = \"2\" but {} is not a cgroup v2 hierarchy with the memory, cpu and \
             pids controllers",
            root.display()
        )),
        CgroupVersion::V1 if v1_ready() => Ok(CgroupVersion::V1),
        CgroupVersion::V1 => Err(format!(
            "cgroup_version = \"1\" but {} has no v1 memory, cpu and pids hierarchies",
            root.display()
        )),
        CgroupVersion::Auto if v2_ready() => Ok(CgroupVersion::V2),
        CgroupVersion::Auto if v1_ready() => Ok(CgroupVersion::V1),
        CgroupVersion::Auto => Err(format!(
            "{} has neither a cgroup v2 hierarchy with the memory, cpu and pids controllers \
             nor v1 hierarchies for them",
            root.display()
        )),
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|error| {
        io::Error::new(error.kind(), format!("writing {}: {error}", path.display()))
    })
}

fn create_dir(path: &Path) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(io::Error::new(
            error.kind(),
            format!("creating {}: {error}", path.display()),
        )),
    }
}

/// Creates the parent cgroup `parent` under `root`, every level of it (`hpcc/w1` is two), and,
/// for v2, enables the controllers for the children of the root and of each level (v2 lets a
/// cgroup use a controller only when its parent's `cgroup.subtree_control` enables it).
pub fn prepare_parent(version: CgroupVersion, root: &Path, parent: &str) -> io::Result<()> {
    let levels: Vec<&str> = parent.split('/').filter(|part| !part.is_empty()).collect();
    match version {
        CgroupVersion::V2 | CgroupVersion::Auto => {
            let enable = "+memory +cpu +pids";
            let mut dir = root.to_owned();
            write(&dir.join("cgroup.subtree_control"), enable)?;
            for level in levels {
                dir.push(level);
                create_dir(&dir)?;
                write(&dir.join("cgroup.subtree_control"), enable)?;
            }
            Ok(())
        }
        CgroupVersion::V1 => {
            for controller in CONTROLLERS {
                let mut dir = root.join(controller);
                for level in &levels {
                    dir.push(level);
                    create_dir(&dir)?;
                }
            }
            Ok(())
        }
    }
}

/// One session's cgroup: its directories (one for v2, one per controller for v1).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates `<parent>/<name>` under `root` (for v1, in each controller's hierarchy) and
    /// writes `limits`. On failure, whatever was created is removed again.
    pub fn create(
        version: CgroupVersion,
        root: &Path,
        parent: &str,
        name: &str,
        limits: &CgroupLimits,
    ) -> io::Result<Cgroup> {
        let mut cgroup = Cgroup { dirs: Vec::new() };
        let written = match version {
            CgroupVersion::V2 | CgroupVersion::Auto => cgroup.create_v2(root, parent, name, limits),
            CgroupVersion::V1 => cgroup.create_v1(root, parent, name, limits),
        };
        match written {
            Ok(()) => Ok(cgroup),
            Err(error) => {
                let _ = cgroup.remove(Duration::ZERO);
                Err(error)
            }
        }
    }

    fn create_v2(
        &mut self,
        root: &Path,
        parent: &str,
        name: &str,
        limits: &CgroupLimits,
    ) -> io::Result<()> {
        let dir = root.join(parent).join(name);
        create_dir(&dir)?;
        self.dirs.push(dir.clone());
        write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
        // Without this, a host with swap would let the VMM page out instead of hitting the
        // limit. A kernel without swap accounting has no such file, which is fine.
        if dir.join("memory.swap.max").exists() {
            write(&dir.join("memory.swap.max"), "0")?;
        }
        let cpu = match limits.cpu_millis {
            Some(millis) => format!("{} {CPU_PERIOD_US}", cpu_quota_us(millis)),
            None => format!("max {CPU_PERIOD_US}"),
        };
        write(&dir.join("cpu.max"), &cpu)?;
        write(&dir.join("pids.max"), &limits.pids_max.to_string())
    }

    fn create_v1(
        &mut self,
        root: &Path,
        parent: &str,
        name: &str,
        limits: &CgroupLimits,
    ) -> io::Result<()> {
        for controller in CONTROLLERS {
            let dir = root.join(controller).join(parent).join(name);
            create_dir(&dir)?;
            self.dirs.push(dir.clone());
            match controller {
                "memory" => {
                    write(
                        &dir.join("memory.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    )?;
                    // As for v2's memory.swap.max: memory and swap together are capped at the
                    // same size, where the kernel accounts swap at all.
                    if dir.join("memory.memsw.limit_in_bytes").exists() {
                        write(
                            &dir.join("memory.memsw.limit_in_bytes"),
                            &limits.memory_bytes.to_string(),
                        )?;
                    }
                }
                "cpu" => {
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    let quota = match limits.cpu_millis {
                        Some(millis) => cpu_quota_us(millis).to_string(),
                        None => "-1".to_owned(),
                    };
                    write(&dir.join("cpu.cfs_quota_us"), &quota)?;
                }
                _ => write(&dir.join("pids.max"), &limits.pids_max.to_string())?,
            }
        }
        Ok(())
    }

    /// The cgroup `<parent>/<name>` as [`Cgroup::create`] would have made it, whether or not
    /// it exists (to remove what a killed worker left).
    pub fn existing(version: CgroupVersion, root: &Path, parent: &str, name: &str) -> Cgroup {
        let dirs = match version {
            CgroupVersion::V2 | CgroupVersion::Auto => vec![root.join(parent).join(name)],
            CgroupVersion::V1 => CONTROLLERS
                .iter()
                .map(|controller| root.join(controller).join(parent).join(name))
                .collect(),
        };
        Cgroup { dirs }
    }

    /// The processes in the cgroup (of every directory; v1 lists each process once per
    /// controller).
    pub fn processes(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .procs_files()
            .iter()
            .filter_map(|file| std::fs::read_to_string(file).ok())
            .flat_map(|text| {
                text.split_whitespace()
                    .filter_map(|word| word.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The cgroup's directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The `cgroup.procs` files a process writes `0` into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|dir| dir.join("cgroup.procs"))
            .collect()
    }

    /// Removes the directories, retrying for up to `patience` while processes are still
    /// leaving them (`EBUSY`). Directories already gone are fine. In a test's temporary
    /// directory (not a cgroup file system) the files written are removed first.
    pub fn remove(&mut self, patience: Duration) -> io::Result<()> {
        let deadline = Instant::now() + patience;
        let mut first_error = None;
        for dir in self.dirs.drain(..).rev() {
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                    Err(error) if error.raw_os_error() == Some(libc::ENOTEMPTY) => {
                        // A plain directory (unit tests): cgroup directories are never "not
                        // empty", since their files go with them.
                        if let Err(error) = std::fs::remove_dir_all(&dir) {
                            first_error.get_or_insert(error);
                        }
                        break;
                    }
                    Err(error) if Instant::now() < deadline => {
                        let _ = error;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(error) => {
                        first_error.get_or_insert(io::Error::new(
                            error.kind(),
                            format!("removing cgroup {}: {error}", dir.display()),
                        ));
                        break;
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The CFS quota for `millis` thousandths of a CPU over [`CPU_PERIOD_US`] (at least the
/// kernel's minimum of 1 ms).
fn cpu_quota_us(millis: u32) -> u64 {
    (u64::from(millis) * CPU_PERIOD_US / 1000).max(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    const LIMITS: CgroupLimits = CgroupLimits {
        memory_bytes: 768 << 20,
        cpu_millis: Some(1500),
        pids_max: 300,
    };

    #[test]
    fn v2_writes_its_limits_in_one_directory() {
        let root = tempfile::tempdir().expect("temp dir");
        // A unified hierarchy as the kernel shows it, enough for `resolve`.
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("write");
        assert_eq!(
            resolve(CgroupVersion::Auto, root.path()),
            Ok(CgroupVersion::V2)
        );
        prepare_parent(CgroupVersion::V2, root.path(), "hpcc").expect("parent");
        assert_eq!(
            read(&root.path().join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(
            read(&root.path().join("hpcc/cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        let mut cgroup =
            Cgroup::create(CgroupVersion::V2, root.path(), "hpcc", "vm-a-1-0", &LIMITS)
                .expect("cgroup");
        let dir = root.path().join("hpcc/vm-a-1-0");
        assert_eq!(cgroup.dirs(), std::slice::from_ref(&dir));
        assert_eq!(read(&dir.join("memory.max")), (768u64 << 20).to_string());
        assert_eq!(read(&dir.join("cpu.max")), "150000 100000");
        assert_eq!(read(&dir.join("pids.max")), "300");
        assert_eq!(cgroup.procs_files(), [dir.join("cgroup.procs")]);
        cgroup.remove(Duration::ZERO).expect("remove");
        assert!(!dir.exists());
        assert!(root.path().join("hpcc").is_dir(), "the parent stays");
    }

    #[test]
    fn v2_without_a_cpu_cap_writes_max() {
        let root = tempfile::tempdir().expect("temp dir");
        let limits = CgroupLimits {
            cpu_millis: None,
            ..LIMITS
        };
        let _cgroup = Cgroup::create(CgroupVersion::V2, root.path(), "p", "s", &limits)
            .expect_err("the parent must exist first");
        prepare_parent(CgroupVersion::V2, root.path(), "p").expect("parent");
        let mut cgroup =
            Cgroup::create(CgroupVersion::V2, root.path(), "p", "s", &limits).expect("cgroup");
        assert_eq!(read(&root.path().join("p/s/cpu.max")), "max 100000");
        cgroup.remove(Duration::ZERO).expect("remove");
    }

    #[test]
    fn nested_parents_are_made_level_by_level() {
        let v2 = tempfile::tempdir().expect("temp dir");
        prepare_parent(CgroupVersion::V2, v2.path(), "hpcc/w1").expect("v2 parent");
        for level in ["", "hpcc", "hpcc/w1"] {
            assert_eq!(
                read(&v2.path().join(level).join("cgroup.subtree_control")),
                "+memory +cpu +pids",
                "controllers enabled below {level:?}"
            );
        }
        let v1 = tempfile::tempdir().expect("temp dir");
        for controller in CONTROLLERS {
            std::fs::create_dir(v1.path().join(controller)).expect("mkdir");
        }
        prepare_parent(CgroupVersion::V1, v1.path(), "hpcc/w1").expect("v1 parent");
        for controller in CONTROLLERS {
            assert!(v1.path().join(controller).join("hpcc/w1").is_dir());
        }
    }

    #[test]
    fn v1_writes_one_directory_per_controller() {
        let root = tempfile::tempdir().expect("temp dir");
        for controller in CONTROLLERS {
            std::fs::create_dir(root.path().join(controller)).expect("mkdir");
            std::fs::write(root.path().join(controller).join("cgroup.procs"), "").expect("write");
        }
        assert_eq!(
            resolve(CgroupVersion::Auto, root.path()),
            Ok(CgroupVersion::V1)
        );
        assert!(resolve(CgroupVersion::V2, root.path()).is_err());
        prepare_parent(CgroupVersion::V1, root.path(), "hpcc").expect("parent");
        let mut cgroup =
            Cgroup::create(CgroupVersion::V1, root.path(), "hpcc", "s", &LIMITS).expect("cgroup");
        assert_eq!(cgroup.dirs().len(), 3);
        let memory = root.path().join("memory/hpcc/s");
        assert_eq!(
            read(&memory.join("memory.limit_in_bytes")),
            (768u64 << 20).to_string()
        );
        let cpu = root.path().join("cpu/hpcc/s");
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "150000");
        assert_eq!(read(&root.path().join("pids/hpcc/s/pids.max")), "300");
        cgroup.remove(Duration::ZERO).expect("remove");
        for controller in CONTROLLERS {
            assert!(!root.path().join(controller).join("hpcc/s").exists());
        }
    }

    #[test]
    fn a_missing_hierarchy_is_named() {
        let root = tempfile::tempdir().expect("temp dir");
        let error = resolve(CgroupVersion::Auto, root.path()).expect_err("nothing there");
        assert!(
            error.contains(&root.path().display().to_string()),
            "{error}"
        );
        let error = resolve(CgroupVersion::V1, root.path()).expect_err("nothing there");
        assert!(error.contains("cgroup_version = \"1\""), "{error}");
    }

    #[test]
    fn cpu_quotas_scale_with_millis() {
        assert_eq!(cpu_quota_us(1000), 100_000);
        assert_eq!(cpu_quota_us(2500), 250_000);
        assert_eq!(cpu_quota_us(1), 1000, "the kernel's minimum");
    }
}
