//! What every key holds, computed once per job (`prepare`) before a mode adds its own part.
//!
//! A key covers everything that can change any byte of any output, stderr included:
//!
//! - `KEY_FORMAT`, and the compiler's identity ([`crate::identity`]: its binaries and its
//!   `--version` output);
//! - the name the driver was run as (`clang++` is the `clang` binary in C++ mode, with the
//!   same version output), the family, the language and whether `-x` named it, the output kind;
//! - whether diagnostics are coloured, and whether a project root is in effect;
//! - with a farm, the image that compiles the miss, so a farm's object is never stored under a
//!   key that stands for the local compiler;
//! - the working directory and the source path, rewritten relative to the project root
//!   ([`hpcc_core::project`]);
//! - the `KEY_ENVIRONMENT` variables that are set (the `CPATH` family, `SOURCE_DATE_EPOCH`,
//!   `GCC_*`, `COMPILER_PATH`, `LANG`, `LC_*`), each as a digest, so an explained key never
//!   prints a value;
//! - the dependency file's scope and `-MP`; under `--coverage`, the absolute working directory
//!   (the `.gcno` records it); under `-gsplit-dwarf`, the `.dwo` path (the object names it);
//! - the content of every file an option reads (profiles, plugins, spec files, sanitizer
//!   lists).
//!
//! Direct mode then adds the arguments and the source's content (`direct`); preprocessor mode
//! adds the arguments the preprocessor does not consume and the `-E` output (`preprocessor`).
//! `DEPENDENCIES_OUTPUT` and `SUNPRO_DEPENDENCIES` are not keyed: the wrapper runs such a
//! compile uncached (`UNCACHEABLE_ENVIRONMENT`), since the compiler would write a file hpcc does
//! not restore.
//!
//! Changing what a key means, even with no change of layout, bumps `KEY_FORMAT`: old entries
//! stop matching and age out of the cache.
//!
//! `prepare` also chooses the flags hpcc injects before the caller's: inside a project (with
//! `file_prefix_map`, the default), `-ffile-prefix-map=<root>=.`; and, when colour is on auto and
//! the caller's stderr is a terminal other than `dumb`, `-fdiagnostics-color=always`, since the
//! compiler's stderr is a pipe to hpcc.
//!
//! With `HPCC_LOG=debug` a key is built with `KeyHasher::explained`, and direct mode logs every
//! field as `tag=value` (a long value as its length and digest): diffing two logs explains a
//! surprising miss.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use hpcc_core::args::{ColorRequest, ParsedArg};
use hpcc_core::digest::KeyHasher;
use hpcc_core::project::RootRewriter;

use super::{Job, Prepared, KEY_ENVIRONMENT, KEY_FORMAT};
use crate::identity;
use crate::includes;

impl Job<'_> {
    pub(super) fn prepare(&self) -> Result<Prepared> {
        let invocation = self.invocation;
        let identity = identity::identity(self.runner, self.compiler, self.cache_dir)?;
        let source_path = self.cwd.join(&invocation.source);
        let root = if self.config.file_prefix_map {
            // Resolved first: the compiler's paths (and getcwd) are physical, and a parent
            // like `build/../src` would otherwise yield a root spelled `build/..` that no
            // other path starts with.
            source_path
                .parent()
                .and_then(|dir| fs::canonicalize(dir).ok())
                .and_then(|dir| hpcc_core::project::find_root(&dir))
        } else {
            None
        };
        let rewriter = RootRewriter::new(root.as_deref());
        let mut injected = Vec::new();
        if let Some(root) = &root {
            let mut map = OsString::from("-ffile-prefix-map=");
            map.push(root);
            map.push("=.");
            injected.push(map);
        }
        let color = match invocation.color {
            ColorRequest::Always => true,
            ColorRequest::Never => false,
            ColorRequest::Auto => {
                let colour_terminal = self.caller.stderr_is_terminal
                    && self.caller.var("TERM").is_some_and(|term| term != "dumb");
                if colour_terminal {
                    // The compiler's stderr is a pipe to us; ask it for what a terminal gets.
                    injected.push(OsString::from("-fdiagnostics-color=always"));
                }
                colour_terminal
            }
        };
        // With HPCC_LOG=debug every key field is logged, so a surprising miss can be explained
        // by diffing two logs.
        let mut key = if tracing::enabled!(tracing::Level::DEBUG) {
            KeyHasher::explained()
        } else {
            KeyHasher::new()
        };
        key.field("format", KEY_FORMAT.as_bytes())
            .digest("compiler", &identity.digest)
            .field("family", invocation.family.as_str().as_bytes())
            // The name the driver was run as changes its behaviour (`clang++` is `clang` in
            // C++ mode, yet the same binary with the same version output).
            .field(
                "driver-name",
                self.compiler
                    .file_name()
                    .map(|name| name.as_bytes())
                    .unwrap_or_default(),
            )
            .field("language", invocation.language.gnu_name().as_bytes())
            .field(
                "explicit-language",
                &[u8::from(invocation.explicit_language)],
            )
            .field(
                "output-kind",
                format!("{:?}", invocation.output_kind).as_bytes(),
            )
            .field("color", &[u8::from(color)])
            .field("rooted", &[u8::from(root.is_some())]);
        if let Some(farm) = self.farm {
            // Compiled by the image's toolchain, not the local one.
            key.field("remote-image", farm.image().as_bytes());
        }
        key.field("cwd", &rewriter.rewrite(self.cwd.as_os_str().as_bytes()));
        key.field(
            "source",
            &rewriter.rewrite(source_path.as_os_str().as_bytes()),
        );
        for name in KEY_ENVIRONMENT {
            if let Some(value) = self.caller.var(name) {
                // As a digest, so that explaining a key never prints an environment value.
                key.digest(name, &hpcc_core::digest::Digest::of(value.as_bytes()));
            }
        }
        if let Some(dep) = &invocation.dep {
            key.field(
                "dep",
                format!("{:?} phony={}", dep.scope, dep.phony).as_bytes(),
            );
        }
        if invocation.coverage {
            // The .gcno records the absolute working directory.
            key.field("coverage-cwd", self.cwd.as_os_str().as_bytes());
        }
        if invocation.split_dwarf {
            // The object names its .dwo file.
            key.field(
                "dwo-output",
                &rewriter.rewrite(invocation.output.as_bytes()),
            );
        }
        let mut buffer = Vec::new();
        for input in &invocation.content_inputs {
            let path = self.cwd.join(input);
            let (_, digest) = includes::hash_file(&path, &mut buffer)
                .with_context(|| format!("reading content input {path:?}"))?;
            key.digest("content-input", &digest);
        }
        Ok(Prepared {
            identity,
            root,
            rewriter,
            injected,
            common_key: key,
        })
    }

    pub(super) fn hash_args<'b>(
        key: &mut KeyHasher,
        rewriter: &RootRewriter,
        args: impl Iterator<Item = &'b ParsedArg>,
    ) {
        for arg in args {
            key.field("arg", arg.name.as_bytes());
            if let Some(value) = &arg.value {
                key.field("value", &rewriter.rewrite(value.as_bytes()));
            }
        }
    }
}
