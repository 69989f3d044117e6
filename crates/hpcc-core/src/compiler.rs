//! Recognising a compiler family from the name it was invoked by.

use std::path::Path;

use crate::args::Family;

/// What hpcc knows about a compiler from its file name alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompilerKind {
    /// The argument dialect.
    pub family: Family,
    /// Whether this is Clang (as opposed to GCC) within the GNU family; decides the dependency
    /// file layout and colour flags.
    pub is_clang: bool,
}

/// Names hpcc answers to when a symlink with that name points at it (masquerade mode).
pub const MASQUERADE_NAMES: &[&str] = &[
    "cc", "c++", "gcc", "g++", "clang", "clang++", "cl", "clang-cl",
];

/// Classifies a compiler by its file name: `gcc`, `x86_64-linux-gnu-gcc-12`, `clang++-14`,
/// `cl.exe`, ... Returns `None` for names that are not a known C/C++ compiler.
pub fn detect(program: &Path) -> Option<CompilerKind> {
    let name = program.file_name()?.to_str()?;
    let name = name.strip_suffix(".exe").unwrap_or(name);
    // Strip a trailing "-<version>" ("gcc-12", "clang++-14") and a leading target triple.
    let base = match name.rsplit_once('-') {
        Some((head, tail))
            if !tail.is_empty() && tail.chars().all(|c| c.is_ascii_digit() || c == '.') =>
        {
            head
        }
        _ => name,
    };
    let base_cl = if base.ends_with("clang-cl") {
        "clang-cl"
    } else {
        base.rsplit('-').next().unwrap_or(base)
    };
    match base_cl {
        "gcc" | "g++" | "cc" | "c++" => Some(CompilerKind {
            family: Family::Gnu,
            is_clang: false,
        }),
        "clang" | "clang++" => Some(CompilerKind {
            family: Family::Gnu,
            is_clang: true,
        }),
        "cl" => Some(CompilerKind {
            family: Family::Msvc,
            is_clang: false,
        }),
        "clang-cl" => Some(CompilerKind {
            family: Family::Msvc,
            is_clang: true,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: Option<(Family, bool)>) {
        let got = detect(Path::new(name)).map(|kind| (kind.family, kind.is_clang));
        assert_eq!(got, expected, "{name}");
    }

    #[test]
    fn names() {
        check("/usr/bin/gcc", Some((Family::Gnu, false)));
        check("gcc-12", Some((Family::Gnu, false)));
        check("x86_64-linux-gnu-g++-12", Some((Family::Gnu, false)));
        check("c++", Some((Family::Gnu, false)));
        check("cc", Some((Family::Gnu, false)));
        check("clang", Some((Family::Gnu, true)));
        check("clang++-14", Some((Family::Gnu, true)));
        check("cl.exe", Some((Family::Msvc, false)));
        check("clang-cl", Some((Family::Msvc, true)));
        check("clang-cl-14", Some((Family::Msvc, true)));
        check("rustc", None);
        check("ld", None);
    }
}
