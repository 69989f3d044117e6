//! Where things live under the store root.
//!
//! ```text
//! root/manifests/<2 hex>/<62 hex>   direct-mode manifests
//! root/results/<2 hex>/<62 hex>     compile results
//! root/<kind>/<2 hex>/.tmp-*        files being written, renamed into place when complete
//! root/size/counters, lock-<h>, cleanup.lock
//! ```
//!
//! The 256 fine shard directories per kind keep directories small; the 16 coarse shards used by
//! accounting and eviction are the first hex digit, i.e. 16 fine directories per kind each.

use std::path::{Path, PathBuf};

use hpcc_core::digest::Digest;

use crate::Kind;

/// The prefix of temporary files; entry names are hex and can never start with it.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The path computations of one store root.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_owned(),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    fn kind_dir_name(kind: Kind) -> &'static str {
        match kind {
            Kind::Manifest => "manifests",
            Kind::Result => "results",
        }
    }

    /// The fine shard directory holding keys whose first byte is `first_byte`.
    pub(crate) fn shard_dir(&self, kind: Kind, first_byte: u8) -> PathBuf {
        let mut name = String::with_capacity(2);
        name.push(char::from(HEX[usize::from(first_byte >> 4)]));
        name.push(char::from(HEX[usize::from(first_byte & 0xf)]));
        let mut path = self.root.join(Self::kind_dir_name(kind));
        path.push(name);
        path
    }

    /// The entry file for `key`.
    pub(crate) fn entry_path(&self, kind: Kind, key: &Digest) -> PathBuf {
        let hex = key.to_hex();
        let mut path = PathBuf::with_capacity(self.root.as_os_str().len() + 80);
        path.push(&self.root);
        path.push(Self::kind_dir_name(kind));
        path.push(&hex[..2]);
        path.push(&hex[2..]);
        path
    }
}

/// The coarse shard (0..16) of `key`: its first hex digit.
pub(crate) fn coarse_shard(key: &Digest) -> usize {
    usize::from(key.0[0] >> 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_layout() {
        let layout = Layout::new(Path::new("/cache"));
        let key: Digest = "ab".repeat(32).parse().unwrap();
        assert_eq!(
            layout.entry_path(Kind::Result, &key),
            Path::new("/cache/results/ab").join("ab".repeat(31))
        );
        assert_eq!(
            layout.shard_dir(Kind::Manifest, 0x0f),
            Path::new("/cache/manifests/0f")
        );
        assert_eq!(coarse_shard(&key), 0xa);
    }
}
