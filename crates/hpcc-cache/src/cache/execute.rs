//! Running a miss: here, as the caller would have, or on the farm (preprocessed here, compiled
//! in the tenant's image, the object written where the compiler would have put it).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;

use anyhow::{Context, Result};

use super::runner::RunWith;
use super::{Job, Prepared};
use crate::remote_compile::{self, RemoteCompiler, RemoteJob};

impl Job<'_> {
    /// Runs the compile of a miss: on the farm if there is one, else here. With a farm, an
    /// `Err` means the farm failed and nothing the caller sees was written.
    pub(super) fn execute(
        &self,
        prepared: &Prepared,
        extra: &[OsString],
        preprocessed: Option<Vec<u8>>,
    ) -> Result<std::process::Output> {
        match self.farm {
            Some(farm) => self.compile_remotely(farm, prepared, extra, preprocessed),
            None => self.compile(&prepared.injected, extra),
        }
    }

    /// Preprocesses here (writing the dependency files a local compile would), compiles on
    /// the farm, and writes the object where the compiler would have.
    pub(super) fn compile_remotely(
        &self,
        farm: &dyn RemoteCompiler,
        prepared: &Prepared,
        extra: &[OsString],
        preprocessed: Option<Vec<u8>>,
    ) -> Result<std::process::Output> {
        use std::os::unix::process::ExitStatusExt;
        let invocation = self.invocation;
        // The colour request goes to the worker; the root mapping is the worker's own.
        let passed: Vec<OsString> = prepared
            .injected
            .iter()
            .filter(|word| !word.as_bytes().starts_with(b"-ffile-prefix-map="))
            .cloned()
            .collect();
        let flags = remote_compile::worker_flags(invocation, &passed)
            .context("a compile flag is not UTF-8")?;
        let text = match preprocessed {
            Some(text) if invocation.dep.is_none() && extra.is_empty() => text,
            _ => {
                let output = self
                    .caller
                    .command(self.compiler)
                    .args(&prepared.injected)
                    .args(invocation.preprocessor_words())
                    .args(remote_compile::dependency_words(invocation))
                    .args(extra)
                    .arg("-E")
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .run_with(self.runner)
                    .with_context(|| format!("running {:?} -E", self.compiler))?;
                // The local compile that follows reports the error as the compiler would.
                anyhow::ensure!(output.status.success(), "the preprocessor failed");
                output.stdout
            }
        };
        let root = prepared.rewriter.root();
        let job = RemoteJob {
            driver: self
                .compiler
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default()
                .to_owned(),
            language: remote_compile::remote_language(invocation.language).to_owned(),
            flags,
            source: remote_compile::to_remote(&text, root),
        };
        drop(text);
        let result = farm
            .compile(job)
            .map_err(|error| anyhow::anyhow!("remote compile: {error}"))?;
        if result.exit == 0 {
            let object = result
                .object
                .as_deref()
                .context("remote compile: success without an object")?;
            self.write_output(&self.cwd.join(&invocation.output), object)?;
            *self.remote_object.borrow_mut() = Some(object.to_vec());
            if let Some(dep) = &invocation.dep {
                let _ = self
                    .caller
                    .set_output_permissions(&self.cwd.join(&dep.path));
            }
        }
        Ok(std::process::Output {
            status: std::process::ExitStatus::from_raw((result.exit & 0xff) << 8),
            stdout: result.stdout,
            stderr: remote_compile::from_remote(&result.stderr, root),
        })
    }

    pub(super) fn compile(
        &self,
        injected: &[OsString],
        extra: &[OsString],
    ) -> Result<std::process::Output> {
        let output = self
            .caller
            .command(self.compiler)
            .args(injected)
            .args(self.invocation.original_words())
            .args(extra)
            .stdin(Stdio::inherit())
            .run_with(self.runner)
            .with_context(|| format!("running {:?}", self.compiler))?;
        if output.status.success() {
            // The compiler ran under this process's mask; give its files the caller's.
            let invocation = self.invocation;
            let mut written = vec![self.cwd.join(&invocation.output)];
            written.extend(invocation.dep.as_ref().map(|dep| self.cwd.join(&dep.path)));
            if invocation.split_dwarf {
                written.push(self.cwd.join(invocation.dwo_path()));
            }
            if invocation.coverage {
                written.push(self.cwd.join(invocation.gcno_path()));
            }
            for path in written {
                let _ = self.caller.set_output_permissions(&path);
            }
        }
        Ok(output)
    }
}
