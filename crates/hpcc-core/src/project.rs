//! The project root and root-relative rewriting of paths.
//!
//! A project root is the nearest directory at or above the source file that holds a `.hpcc`
//! marker file ([`find_root`], given the source's directory canonicalized, since the compiler's
//! paths are physical). Inside a project, with `file_prefix_map` (the default), hpcc:
//!
//! - injects `-ffile-prefix-map=<root>=.` before the caller's arguments, so objects, debug
//!   information and `__FILE__` are free of the checkout's path;
//! - hashes every string that may hold a path (the working directory, the source path, option
//!   values, `-E` output, dependency prerequisites) through [`RootRewriter::rewrite`], which
//!   replaces the root, wherever it is followed by `/` or ends the string, with [`ROOT_TOKEN`];
//! - stores manifest paths under the root relative to it (`manifest::StoredPath::Rooted`).
//!
//! So two checkouts at different absolute paths produce the same keys and byte-identical
//! objects. Without a marker nothing is injected or rewritten.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// The file whose presence marks a project root.
pub const MARKER: &str = ".hpcc";

/// What replaces the root in hashed strings. It cannot appear in a real absolute path that
/// starts at `/`, so a rewritten string never collides with an unrewritten one.
pub const ROOT_TOKEN: &[u8] = b"\x00ROOT";

/// Finds the project root for a source directory: the nearest ancestor (itself included)
/// holding a [`MARKER`] file. `dir` must be absolute.
pub fn find_root(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|candidate| candidate.join(MARKER).is_file())
        .map(Path::to_path_buf)
}

/// Rewrites occurrences of a project root inside strings and paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootRewriter {
    root: Option<Vec<u8>>,
}

impl RootRewriter {
    /// A rewriter for `root`; `None` rewrites nothing.
    pub fn new(root: Option<&Path>) -> RootRewriter {
        RootRewriter {
            root: root.map(|root| {
                let mut bytes = root.as_os_str().as_encoded_bytes().to_vec();
                while bytes.len() > 1 && bytes.last() == Some(&b'/') {
                    bytes.pop();
                }
                bytes
            }),
        }
    }

    /// The root, if any.
    pub fn root(&self) -> Option<&[u8]> {
        self.root.as_deref()
    }

    /// Replaces every occurrence of the root that ends at a path boundary (followed by `/` or the
    /// end of the string) with [`ROOT_TOKEN`].
    pub fn rewrite<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(root) = self.root.as_deref() else {
            return Cow::Borrowed(text);
        };
        if root.is_empty() || root == b"/" || text.len() < root.len() {
            return Cow::Borrowed(text);
        }
        let mut out: Option<Vec<u8>> = None;
        let mut copied_to = 0;
        let mut index = 0;
        while index + root.len() <= text.len() {
            let at_boundary_after = text
                .get(index + root.len())
                .is_none_or(|&next| next == b'/');
            if at_boundary_after && &text[index..index + root.len()] == root {
                let buffer = out.get_or_insert_with(|| Vec::with_capacity(text.len()));
                buffer.extend_from_slice(&text[copied_to..index]);
                buffer.extend_from_slice(ROOT_TOKEN);
                index += root.len();
                copied_to = index;
            } else {
                index += 1;
            }
        }
        match out {
            Some(mut buffer) => {
                buffer.extend_from_slice(&text[copied_to..]);
                Cow::Owned(buffer)
            }
            None => Cow::Borrowed(text),
        }
    }

    /// The inverse of [`RootRewriter::rewrite`]: puts this rewriter's root back in place of the
    /// token. Used to re-root stored paths in a moved checkout.
    pub fn restore<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(root) = self.root.as_deref() else {
            return Cow::Borrowed(text);
        };
        if !contains(text, ROOT_TOKEN) {
            return Cow::Borrowed(text);
        }
        let mut out = Vec::with_capacity(text.len() + root.len());
        let mut rest = text;
        while let Some(position) = find(rest, ROOT_TOKEN) {
            out.extend_from_slice(&rest[..position]);
            out.extend_from_slice(root);
            rest = &rest[position + ROOT_TOKEN.len()..];
        }
        out.extend_from_slice(rest);
        Cow::Owned(out)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(root: Option<&str>, input: &str, expected: &str) {
        let rewriter = RootRewriter::new(root.map(Path::new));
        let got = rewriter.rewrite(input.as_bytes());
        let shown = String::from_utf8_lossy(&got).replace('\0', "@");
        assert_eq!(shown, expected, "root {root:?} input {input:?}");
        assert_eq!(rewriter.restore(&got).as_ref(), input.as_bytes());
    }

    #[test]
    fn rewrites_only_at_path_boundaries() {
        check(Some("/a/proj"), "/a/proj/src/x.c", "@ROOT/src/x.c");
        check(Some("/a/proj/"), "-I/a/proj/inc", "-I@ROOT/inc");
        check(Some("/a/proj"), "/a/proj", "@ROOT");
        check(Some("/a/proj"), "/a/project/x.c", "/a/project/x.c");
        check(
            Some("/a/proj"),
            "-ffoo=/a/proj/x:/a/proj/y",
            "-ffoo=@ROOT/x:@ROOT/y",
        );
        check(None, "/a/proj/x.c", "/a/proj/x.c");
        check(Some("/"), "/x", "/x");
    }

    #[test]
    fn finds_the_nearest_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outer = dir.path().join("outer");
        let inner = outer.join("inner/src");
        std::fs::create_dir_all(&inner).expect("mkdir");
        assert_eq!(find_root(&inner), None);
        std::fs::write(outer.join(MARKER), "").expect("marker");
        assert_eq!(find_root(&inner), Some(outer.clone()));
        std::fs::write(outer.join("inner").join(MARKER), "").expect("marker");
        assert_eq!(find_root(&inner), Some(outer.join("inner")));
    }
}
