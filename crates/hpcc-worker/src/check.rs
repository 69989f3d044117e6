//! `hpcc-worker check-config FILE`: checks a worker's file and everything it points at
//! before a worker is started with it, printing one line per check and every problem, not only
//! the first: the scheduler's URL and the TLS files, the secret and the routing key, the agent
//! (a static ELF of this host's architecture), the state and snapshot directories (present or
//! creatable, and writable by their owner only: tenants' sources, objects, audit rows and
//! guest memory live there),
//! the images, and what the runtime needs (kernel, modules, QEMU or Firecracker, the jailer,
//! `/dev/kvm`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hpcc_auth::RoutingVerifier;
use hpcc_core::cli::{pem_blocks, Checklist};
use hpcc_core::config::{RuntimeKind, WorkerConfig};

/// Runs every check of `config` (read from `path`) and prints them; `Err` says how many
/// failed.
pub fn check_config(config: &WorkerConfig) -> Result<(), String> {
    let mut list = Checklist::new();
    list.check(
        format!("scheduler {}", config.scheduler),
        scheduler_url(&config.scheduler, config.insecure_plaintext),
    );
    list.check(
        format!("worker_secret_file {}", config.worker_secret_file.display()),
        std::fs::read_to_string(&config.worker_secret_file)
            .map_err(|error| format!("reading it: {error}"))
            .and_then(|secret| {
                if secret.trim().is_empty() {
                    Err("empty".into())
                } else {
                    Ok("not empty".into())
                }
            }),
    );
    list.check(
        "routing_public_key",
        RoutingVerifier::from_public_base64(&config.routing_public_key)
            .map(|_| "an Ed25519 public key".to_owned())
            .map_err(|error| error.to_string()),
    );
    match &config.tls {
        Some(tls) => {
            list.check(
                format!("tls.cert {}", tls.cert.display()),
                pem_blocks(&tls.cert, "certificate", |tag| tag == "CERTIFICATE"),
            );
            list.check(
                format!("tls.key {}", tls.key.display()),
                pem_blocks(&tls.key, "private key", |tag| tag.ends_with("PRIVATE KEY")),
            );
        }
        None => println!("ok: insecure_plaintext: no TLS (loopback and tests only)"),
    }
    for (key, file) in [
        ("tls_ca", &config.tls_ca),
        ("scheduler_ca", &config.scheduler_ca),
    ] {
        if let Some(file) = file {
            list.check(
                format!("{key} {}", file.display()),
                pem_blocks(file, "certificate", |tag| tag == "CERTIFICATE"),
            );
        }
    }
    list.check(
        format!("agent {}", config.agent.display()),
        hpcc_runtime::agent_binary::check(&config.agent)
            .map(|()| "a static executable of this host's architecture".to_owned()),
    );
    list.check(
        format!("state_dir {}", config.state_dir.display()),
        private_dir(&config.state_dir),
    );
    if let Some(snapshots) = &config.snapshot_dir {
        list.check(
            format!("snapshot_dir {}", snapshots.display()),
            private_dir(snapshots),
        );
    }
    for image in &config.images {
        list.check(format!("image {}", image.display()), image_source(image));
    }
    for reference in &config.pull {
        list.check(format!("pull {reference}"), pinned_reference(reference));
    }
    runtime(config, &mut list);
    list.finish()
}

/// `https://…`, or `http://…` with `insecure_plaintext`.
fn scheduler_url(url: &str, insecure_plaintext: bool) -> Result<String, String> {
    match url.split_once("://") {
        Some(("https", rest)) if !rest.is_empty() => Ok("https".into()),
        Some(("http", rest)) if !rest.is_empty() && insecure_plaintext => {
            Ok("plaintext (insecure_plaintext)".into())
        }
        Some(("http", _)) => Err("http:// needs insecure_plaintext = true (tests only)".into()),
        _ => Err("expected https://host:port".into()),
    }
}

/// A directory only its owner (this user or root) can write: present, or creatable under a
/// present parent.
fn private_dir(dir: &Path) -> Result<String, String> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err("not a directory".into()),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            let me = rustix::process::geteuid().as_raw();
            if meta.uid() != me && meta.uid() != 0 {
                return Err(format!(
                    "owned by uid {}, not by this user ({me}) or root",
                    meta.uid()
                ));
            }
            // Not 0700: the sandbox's unprivileged helpers traverse it. What lies below is
            // made private by the worker (sources, objects and snapshots are 0600 files).
            if mode & 0o022 != 0 {
                return Err(format!(
                    "mode {mode:o}: others can write where tenants' data lives; chmod go-w it"
                ));
            }
            Ok(format!("writable only by its owner (mode {mode:o})"))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir
                .ancestors()
                .skip(1)
                .find(|ancestor| ancestor.exists())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/"));
            let writable = rustix::fs::access(&parent, rustix::fs::Access::WRITE_OK).is_ok();
            if writable {
                Ok(format!(
                    "absent; the worker creates it under {}",
                    parent.display()
                ))
            } else {
                Err(format!("absent, and {} is not writable", parent.display()))
            }
        }
        Err(error) => Err(format!("reading it: {error}")),
    }
}

/// An image to import: an OCI layout directory (with `index.json`) or a docker-archive file.
fn image_source(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|error| format!("reading it: {error}"))?;
    if meta.is_dir() {
        if path.join("index.json").is_file() {
            Ok("an OCI layout".into())
        } else {
            Err("a directory without index.json: not an OCI layout".into())
        }
    } else {
        Ok(format!("a {} byte archive", meta.len()))
    }
}

/// A registry reference pinned by digest (`registry/repository@sha256:<64 hex>`).
fn pinned_reference(reference: &str) -> Result<String, String> {
    let (_, digest) = reference
        .rsplit_once('@')
        .ok_or("not pinned: expected registry/repository@sha256:<64 hex>")?;
    if hpcc_core::config::is_image_digest(digest) {
        Ok("pinned by digest".into())
    } else {
        Err(format!("{digest:?} is not sha256:<64 hex>"))
    }
}

/// What the runtime needs on this host.
fn runtime(config: &WorkerConfig, list: &mut Checklist) {
    let Some(vm) = config.vm.as_ref() else {
        match config.runtime {
            RuntimeKind::Sandbox => println!(
                "ok: runtime sandbox: namespaces and seccomp, not a kernel boundary (developer machines)"
            ),
            other => list.check(
                format!("runtime {}", other.as_str()),
                Err("needs a [vm] table".into()),
            ),
        }
        return;
    };
    if config.runtime == RuntimeKind::Sandbox {
        println!(
            "ok: runtime sandbox: namespaces and seccomp, not a kernel boundary ([vm] unused)"
        );
        return;
    }
    list.check(
        format!("vm.kernel {}", vm.kernel.display()),
        readable_file(&vm.kernel),
    );
    for module in &vm.modules {
        list.check(
            format!("vm.modules {}", module.display()),
            readable_file(module),
        );
    }
    match config.runtime {
        RuntimeKind::Qemu => {
            list.check(
                format!("vm.qemu {}", vm.qemu.display()),
                executable(&vm.qemu),
            );
            if vm.accel != "tcg" {
                list.check("vm.accel kvm", kvm());
            } else {
                println!("ok: vm.accel tcg: software emulation (slow; for hosts without KVM)");
            }
        }
        RuntimeKind::Firecracker => {
            list.check(
                format!("vm.firecracker {}", vm.firecracker.display()),
                executable(&vm.firecracker),
            );
            if let Some(jailer) = &vm.jailer {
                list.check(
                    format!("vm.jailer.binary {}", jailer.binary.display()),
                    executable(&jailer.binary),
                );
            }
            list.check("/dev/kvm", kvm());
        }
        RuntimeKind::Sandbox => {}
    }
}

fn readable_file(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|error| format!("reading it: {error}"))?;
    if meta.is_file() {
        Ok(format!("{} bytes", meta.len()))
    } else {
        Err("not a file".into())
    }
}

/// `program` as a path, or found on `PATH` when it is a bare name; executable.
fn executable(program: &Path) -> Result<String, String> {
    let found = if program.components().count() > 1 {
        Some(program.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.is_file())
        })
    };
    let path = found.ok_or("not found on PATH")?;
    let meta = std::fs::metadata(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
        Ok(path.display().to_string())
    } else {
        Err(format!("{}: not an executable file", path.display()))
    }
}

/// `/dev/kvm` can be opened for reading and writing.
fn kvm() -> Result<String, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| "/dev/kvm opens".to_owned())
        .map_err(|error| format!("/dev/kvm: {error} (set vm.accel = \"tcg\" on hosts without KVM)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_urls() {
        assert!(scheduler_url("https://s:7000", false).is_ok());
        assert!(scheduler_url("http://s:7000", true).is_ok());
        assert!(scheduler_url("http://s:7000", false).is_err());
        assert!(scheduler_url("s:7000", true).is_err());
    }

    #[test]
    fn directories_must_be_private() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state = dir.path().join("state");
        assert!(private_dir(&state).is_ok_and(|found| found.contains("absent")));
        std::fs::create_dir(&state).expect("created");
        for open in [0o777, 0o775, 0o757] {
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(open)).expect("mode");
            assert!(private_dir(&state).is_err_and(|why| why.contains(&format!("mode {open:o}"))));
        }
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("mode");
        assert!(private_dir(&state).is_ok());
        let file = dir.path().join("file");
        std::fs::write(&file, "x").expect("written");
        assert!(private_dir(&file).is_err());
    }

    #[test]
    fn images_and_references() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        assert!(image_source(dir.path()).is_err());
        std::fs::write(dir.path().join("index.json"), "{}").expect("written");
        assert!(image_source(dir.path()).is_ok());
        assert!(image_source(&dir.path().join("absent.tar")).is_err());
        let digest = format!("sha256:{}", "a".repeat(64));
        assert!(pinned_reference(&format!("r.example/x@{digest}")).is_ok());
        assert!(pinned_reference("r.example/x:latest").is_err());
        assert!(pinned_reference("r.example/x@sha256:abc").is_err());
    }

    #[test]
    fn executables_are_found_on_path() {
        assert!(executable(Path::new("sh")).is_ok());
        assert!(executable(Path::new("no-such-program-hpcc")).is_err());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").expect("written");
        assert!(executable(&plain).is_err());
    }
}
