//! The Firecracker runtime against `fake-firecracker`, a test double of the Firecracker binary
//! that serves its API and boots the guest with QEMU: the runtime's API requests are accepted,
//! its guests compile byte-identically to the QEMU runtime's, and a refused request fails the
//! start clearly and leaves nothing behind.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hpcc_runtime::testing::{guest_kernel, target_dir, vm_tools};
use hpcc_runtime::vm::firecracker::{FirecrackerConfig, FirecrackerRuntime};
use hpcc_runtime::vm::qemu::TCG_KERNEL_ARGS;
use hpcc_runtime::vm::GuestConfig;
use hpcc_runtime::Runtime;

use crate::harness::{self, block_on, ensure, error_chain, TestResult};
use crate::qemu::{compile, qemu_processes, spec, VM};
use crate::Case;

/// Every case of this module.
pub fn cases() -> Vec<Case> {
    vec![
        ("firecracker_compiles_like_qemu", VM, compiles_like_qemu),
        ("firecracker_api_errors_are_clear", VM, api_errors_are_clear),
    ]
}

/// A `firecracker` for the runtime: a script in `dir` that runs the test double (built by
/// cargo for this package's tests) with its environment, naming this machine's QEMU and vsock
/// backend and any `extra` settings. A script rather than the test process's environment, so
/// each runtime's double gets its own settings and no test changes the environment of others.
fn double(dir: &Path, extra: &[(&str, &str)]) -> Result<PathBuf, String> {
    let (qemu, vhost_vsock) = vm_tools()?;
    let mut script = format!(
        "#!/bin/sh\nexport FAKE_FIRECRACKER_QEMU='{}' FAKE_FIRECRACKER_VHOST='{}'\n",
        qemu.display(),
        vhost_vsock.display()
    );
    for (name, value) in extra {
        script.push_str(&format!("export {name}='{value}'\n"));
    }
    script.push_str(&format!(
        "exec '{}' \"$@\"\n",
        env!("CARGO_BIN_EXE_fake-firecracker")
    ));
    let path = dir.join("firecracker");
    std::fs::write(&path, script).map_err(|error| error.to_string())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|error| error.to_string())?;
    Ok(path)
}

/// A runtime over `firecracker`, with state (disks, sessions) shared with the QEMU tests.
fn runtime(firecracker: PathBuf, boot_timeout: Duration) -> Result<FirecrackerRuntime, String> {
    let kernel = guest_kernel()?;
    let mut guest = GuestConfig::new(kernel.kernel, kernel.modules, harness::agent_binary()?);
    guest.state_dir = target_dir().join("test-vm/state");
    guest.memory_mib = 512;
    guest.boot_timeout = boot_timeout;
    FirecrackerRuntime::new(FirecrackerConfig {
        guest,
        firecracker,
        // The double runs guests under TCG, which needs these (see qemu::TCG_KERNEL_ARGS).
        boot_args_extra: TCG_KERNEL_ARGS.to_owned(),
    })
    .map_err(|error| error_chain(&error))
}

/// A session through the Firecracker API compiles the same object as a QEMU guest for the
/// same job, and stopping it ends the double and its guest and removes the session dir.
fn compiles_like_qemu() -> TestResult {
    block_on(async {
        let scripts = tempfile::tempdir().map_err(|error| error.to_string())?;
        let runtime = runtime(double(scripts.path(), &[])?, Duration::from_secs(120))?;
        ensure(runtime.name() == "firecracker", || "wrong name".into())?;
        let session = runtime
            .start(&spec("fccompile")?)
            .await
            .map_err(|error| error_chain(&error))?;
        let id = session.id().to_owned();
        let dir = target_dir().join("test-vm/state/sessions").join(&id);
        ensure(session.is_alive() && dir.join("api.sock").exists(), || {
            format!("{id}: not alive, or no API socket")
        })?;
        let object = compile(session.as_ref()).await;
        let log = std::fs::read_to_string(dir.join("firecracker.log")).unwrap_or_default();
        session.stop().await.map_err(|error| error_chain(&error))?;
        let object = object?;
        for request in [
            "PUT /machine-config -> 204",
            "PUT /boot-source -> 204",
            "PUT /drives/rootfs -> 204",
            "PUT /vsock -> 204",
            "PUT /actions -> 204",
        ] {
            ensure(log.contains(request), || {
                format!("the double did not log {request:?}: {log}")
            })?;
        }
        ensure(!log.contains("network-interfaces"), || {
            format!("a network interface was configured: {log}")
        })?;
        ensure(!dir.exists(), || format!("{} left behind", dir.display()))?;
        // The guest's processes die with the double (parent-death signal), a moment later.
        let mut processes = qemu_processes(&id);
        for _ in 0..50 {
            if processes == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            processes = qemu_processes(&id);
        }
        ensure(processes == 0, || format!("{id}: processes outlive stop"))?;

        let qemu = crate::qemu::runtime()?;
        let reference = qemu
            .start(&spec("fcreference")?)
            .await
            .map_err(|error| error_chain(&error))?;
        let expected = compile(reference.as_ref()).await;
        reference
            .stop()
            .await
            .map_err(|error| error_chain(&error))?;
        ensure(object == expected?, || {
            "the Firecracker guest's object differs from the QEMU guest's".into()
        })
    })
}

/// A double told to refuse `PUT /boot-source` makes the start fail with the path and its
/// `fault_message`, and the failed start leaves no session directory.
fn api_errors_are_clear() -> TestResult {
    block_on(async {
        let scripts = tempfile::tempdir().map_err(|error| error.to_string())?;
        let refusing = double(
            scripts.path(),
            &[(
                "FAKE_FIRECRACKER_REJECT",
                "/boot-source kernel refused by the test",
            )],
        )?;
        let runtime = runtime(refusing, Duration::from_secs(30))?;
        let error = match runtime.start(&spec("fcrefused")?).await {
            Ok(session) => {
                let _ = session.stop().await;
                return Err("a start with a refused boot source succeeded".into());
            }
            Err(error) => error_chain(&error),
        };
        ensure(
            error.contains("/boot-source") && error.contains("kernel refused by the test"),
            || format!("unclear error: {error}"),
        )?;
        let leftovers: Vec<String> = std::fs::read_dir(target_dir().join("test-vm/state/sessions"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with("fc-fcrefused-"))
                    .collect()
            })
            .unwrap_or_default();
        ensure(leftovers.is_empty(), || {
            format!("the failed start left {leftovers:?}")
        })
    })
}
