//! Confinement of job paths to the job directory.
//!
//! Two layers: [`relative`] rejects, before anything runs, a path that is empty, absolute,
//! contains `..` or a NUL; [`open_beneath`] then opens with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)`, so the kernel refuses any resolution (through a symlink the job made,
//! say) that would leave the job directory. Inputs never create symlinks, so only the job itself
//! can plant one, which is why the second layer matters for outputs.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// The longest path a job may name.
pub const MAX_PATH_LEN: usize = 4096;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Empty where a file is needed.
    #[error("empty path")]
    Empty,
    /// Starts with `/`.
    #[error("absolute path {0:?}")]
    Absolute(String),
    /// Contains a `..` component.
    #[error("path {0:?} contains `..`")]
    Parent(String),
    /// Contains a NUL byte.
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    /// Longer than [`MAX_PATH_LEN`].
    #[error("path of {0} bytes is too long")]
    TooLong(usize),
    /// Resolves outside the job directory (through a symlink).
    #[error("path {0:?} resolves outside the job directory")]
    Escapes(String),
}

/// Checks a relative path lexically and returns it normalized (`.` components dropped).
/// `allow_empty` admits `""` (the job directory itself, for a cwd).
pub fn relative(path: &str, allow_empty: bool) -> Result<PathBuf, PathError> {
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong(path.len()));
    }
    if path.contains('\0') {
        return Err(PathError::Nul(path.to_owned()));
    }
    let mut normalized = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) => normalized.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::Parent(path.to_owned())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Absolute(path.to_owned()))
            }
        }
    }
    if normalized.as_os_str().is_empty() && !allow_empty {
        return Err(PathError::Empty);
    }
    Ok(normalized)
}

/// Opens `path` (already checked by [`relative`]) under `dir`, refusing any resolution that
/// leaves `dir`: `EXDEV` (escape) and `ELOOP` (magic link) become [`io::ErrorKind::PermissionDenied`]
/// errors carrying [`PathError::Escapes`].
pub fn open_beneath(dir: impl AsFd, path: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let target = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    match rustix::fs::openat2(dir, target, flags | OFlags::CLOEXEC, mode, resolve) {
        Ok(fd) => Ok(fd),
        Err(Errno::XDEV) | Err(Errno::LOOP) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            PathError::Escapes(path.display().to_string()),
        )),
        Err(errno) => Err(errno.into()),
    }
}

/// Creates the directories of `path` under `dir` (like `mkdir -p`, each step confined) and
/// returns the innermost one opened.
pub fn create_dirs_beneath(dir: impl AsFd, path: &Path) -> io::Result<OwnedFd> {
    let mut current = open_beneath(
        dir,
        Path::new(""),
        OFlags::DIRECTORY | OFlags::RDONLY,
        Mode::empty(),
    )?;
    for component in path.components() {
        match rustix::fs::mkdirat(&current, component.as_os_str(), Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(errno) => return Err(errno.into()),
        }
        current = open_beneath(
            &current,
            Path::new(component.as_os_str()),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
    }
    Ok(current)
}

/// Whether an error came from [`open_beneath`] refusing an escape.
pub fn is_escape(error: &io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<PathError>())
        .is_some_and(|inner| matches!(inner, PathError::Escapes(_)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn check(input: &str, allow_empty: bool, expected: Result<&str, PathError>) {
        let got = relative(input, allow_empty);
        assert_eq!(got, expected.map(PathBuf::from), "input {input:?}");
    }

    #[test]
    fn lexical_confinement() {
        let cases: &[(&str, bool, Result<&str, PathError>)] = &[
            ("a.c", false, Ok("a.c")),
            ("src/a.c", false, Ok("src/a.c")),
            ("./src//a.c", false, Ok("src/a.c")),
            ("a/./b", false, Ok("a/b")),
            ("", false, Err(PathError::Empty)),
            (".", false, Err(PathError::Empty)),
            ("", true, Ok("")),
            (".", true, Ok("")),
            (
                "/etc/passwd",
                false,
                Err(PathError::Absolute("/etc/passwd".into())),
            ),
            ("/", true, Err(PathError::Absolute("/".into()))),
            ("..", false, Err(PathError::Parent("..".into()))),
            ("../x", false, Err(PathError::Parent("../x".into()))),
            (
                "a/../../x",
                false,
                Err(PathError::Parent("a/../../x".into())),
            ),
            ("a/..", true, Err(PathError::Parent("a/..".into()))),
            ("a\0b", false, Err(PathError::Nul("a\0b".into()))),
            ("...", false, Ok("...")),
            ("..a", false, Ok("..a")),
        ];
        for (input, allow_empty, expected) in cases {
            check(input, *allow_empty, expected.clone());
        }
        let long = "a".repeat(MAX_PATH_LEN + 1);
        check(&long, false, Err(PathError::TooLong(MAX_PATH_LEN + 1)));
    }

    #[test]
    fn symlinks_cannot_leave_the_directory() {
        let outside = tempfile::tempdir().expect("temp dir");
        std::fs::write(outside.path().join("secret"), b"s").expect("write secret");
        let job = tempfile::tempdir().expect("temp dir");
        std::fs::write(job.path().join("inside"), b"i").expect("write inside");
        symlink(outside.path().join("secret"), job.path().join("abs-link")).expect("symlink");
        symlink("../", job.path().join("up")).expect("symlink");
        symlink("inside", job.path().join("rel-link")).expect("symlink");
        std::fs::create_dir(job.path().join("d")).expect("mkdir");
        symlink("../inside", job.path().join("d/back")).expect("symlink");
        let dir = rustix::fs::open(
            job.path(),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .expect("open job dir");
        let open = |path: &str| open_beneath(&dir, Path::new(path), OFlags::RDONLY, Mode::empty());
        for escaping in ["abs-link", "up/secret", "up"] {
            let error = open(escaping).expect_err(escaping);
            assert!(is_escape(&error), "{escaping}: {error}");
        }
        for inside in ["inside", "rel-link", "d/back", "d", ""] {
            open(inside).unwrap_or_else(|error| panic!("{inside}: {error}"));
        }
        let proc_link = open_beneath(
            rustix::fs::CWD,
            Path::new("/proc/self/exe"),
            OFlags::RDONLY,
            Mode::empty(),
        );
        assert!(proc_link.is_err(), "absolute paths never resolve beneath");
    }

    #[test]
    fn directories_are_created_confined() {
        let job = tempfile::tempdir().expect("temp dir");
        let dir = rustix::fs::open(
            job.path(),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .expect("open job dir");
        create_dirs_beneath(&dir, Path::new("a/b/c")).expect("mkdir -p");
        assert!(job.path().join("a/b/c").is_dir());
        let outside = tempfile::tempdir().expect("temp dir");
        symlink(outside.path(), job.path().join("link")).expect("symlink");
        // A symlinked component is never followed (the kernel answers ENOTDIR or ELOOP).
        let error = create_dirs_beneath(&dir, Path::new("link/x")).expect_err("escape");
        let refused = [Errno::NOTDIR.raw_os_error(), Errno::LOOP.raw_os_error()];
        assert!(
            is_escape(&error) || refused.contains(&error.raw_os_error().unwrap_or(0)),
            "{error}"
        );
        assert!(!outside.path().join("x").exists());
    }
}
