//! The QEMU runtime on the Debian image: guests boot, compile byte-identically to the
//! sandbox, have no network device and a read-only root, and leave nothing behind.
//!
//! Guests run under TCG (software emulation), which works on any host; `HPCC_TEST_ACCEL=kvm`
//! uses KVM instead.

use std::time::Duration;

use hpcc_runtime::agent_client::InputFile;
use hpcc_runtime::testing::{guest_kernel, target_dir, vm_tools};
use hpcc_runtime::vm::qemu::{Accel, QemuConfig, QemuRuntime};
use hpcc_runtime::vm::GuestConfig;
use hpcc_runtime::{Runtime, Session, SessionSpec};

use crate::harness::{self, block_on, ensure, error_chain, header, run, shell, Need, TestResult};
use crate::Case;

pub(crate) const VM: &[Need] = &[Need::Root, Need::Agent, Need::Image, Need::Vm];

/// Every case of this module.
pub fn cases() -> Vec<Case> {
    vec![
        (
            "qemu_compiles_like_the_sandbox",
            VM,
            compiles_like_the_sandbox,
        ),
        ("qemu_guest_is_confined", VM, guest_is_confined),
        (
            "qemu_stop_and_failed_start_clean_up",
            VM,
            stop_and_failed_start_clean_up,
        ),
    ]
}

/// A runtime whose disks are cached per machine under `<target>/test-vm/state`, with session
/// directories there too.
pub(crate) fn runtime() -> Result<QemuRuntime, String> {
    let (qemu, vhost_vsock) = vm_tools()?;
    let kernel = guest_kernel()?;
    let mut guest = GuestConfig::new(kernel.kernel, kernel.modules, harness::agent_binary()?);
    guest.state_dir = target_dir().join("test-vm/state");
    guest.memory_mib = 512;
    guest.boot_timeout = Duration::from_secs(120);
    let accel = match std::env::var("HPCC_TEST_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Tcg,
    };
    QemuRuntime::new(QemuConfig {
        guest,
        qemu,
        vhost_vsock,
        accel,
    })
    .map_err(|error| error_chain(&error))
}

/// The sandbox tests' spec, with a digest that names the image for the disk cache.
pub(crate) fn spec(tenant: &str) -> Result<SessionSpec, String> {
    let mut spec = harness::spec(tenant)?;
    spec.image_digest = format!("sha256:{}", "0b".repeat(32));
    Ok(spec)
}

async fn start(runtime: &QemuRuntime, tenant: &str) -> Result<Box<dyn Session>, String> {
    runtime
        .start(&spec(tenant)?)
        .await
        .map_err(|error| error_chain(&error))
}

const HELLO_C: &[u8] = b"#include <stdio.h>\n\
int square(int x) { return x * x; }\n\
int main(void) { printf(\"%d\\n\", square(7)); return 0; }\n";

pub(crate) async fn compile(session: &dyn Session) -> Result<Vec<u8>, String> {
    let job = header(
        &[
            "gcc",
            "-O2",
            "-g",
            "-ffile-prefix-map=/work=.",
            "-c",
            "src/hello.c",
            "-o",
            "hello.o",
        ],
        &["hello.o"],
    );
    let input = InputFile {
        path: "src/hello.c".into(),
        mode: 0o644,
        data: HELLO_C.to_vec(),
    };
    let outcome = run(session, job, vec![input]).await?;
    ensure(outcome.result.exit_code == 0, || {
        format!(
            "gcc failed: {:?} {}",
            outcome.result,
            String::from_utf8_lossy(&outcome.stderr)
        )
    })?;
    outcome
        .outputs
        .into_iter()
        .find(|file| file.path == "hello.o")
        .map(|file| file.data)
        .ok_or_else(|| "no hello.o came back".to_owned())
}

/// Two compiles in a guest give the same object, and it is byte-identical to the sandbox's
/// object for the same job on the same image: the runtime is not part of the output.
fn compiles_like_the_sandbox() -> TestResult {
    block_on(async {
        let runtime = runtime()?;
        let session = start(&runtime, "compile").await?;
        let first = compile(session.as_ref()).await?;
        let second = compile(session.as_ref()).await?;
        session.stop().await.map_err(|error| error_chain(&error))?;
        ensure(first.starts_with(b"\x7fELF"), || "not an ELF object".into())?;
        ensure(first == second, || "two guest compiles differ".into())?;
        let sandbox = harness::sandbox()?;
        let local = sandbox.start("compile").await?;
        let reference = compile(local.as_ref()).await?;
        local.stop().await.map_err(|error| error_chain(&error))?;
        ensure(first == reference, || {
            "the guest's object differs from the sandbox's".into()
        })
    })
}

/// Inside a guest: no network device but `lo`, connect() fails, the image root is read-only,
/// the job runs in its work dir with the pinned environment.
fn guest_is_confined() -> TestResult {
    block_on(async {
        let runtime = runtime()?;
        let session = start(&runtime, "confined").await?;
        let interfaces = shell(
            session.as_ref(),
            "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
        )
        .await;
        let writes = shell(
            session.as_ref(),
            "touch /etc/planted 2>/dev/null && echo wrote-etc; \
             touch /usr/bin/planted 2>/dev/null && echo wrote-usr; \
             echo ok > inside && cat inside; pwd; echo $LC_ALL $TZ $SOURCE_DATE_EPOCH; \
             ls /dev | tr '\\n' ' '",
        )
        .await;
        // 10.0.2.2 is the host as QEMU's user networking shows it, were there any.
        let connect = run(
            session.as_ref(),
            header(
                &[
                    "bash",
                    "-c",
                    "exec 3<>/dev/tcp/10.0.2.2/22 && echo connected",
                ],
                &[],
            ),
            Vec::new(),
        )
        .await;
        session.stop().await.map_err(|error| error_chain(&error))?;
        let interfaces = interfaces?;
        ensure(interfaces.trim() == "lo", || {
            format!("guest network devices: {interfaces:?}")
        })?;
        let writes = writes?;
        ensure(
            !writes.contains("wrote-") && writes.contains("ok\n/work/jobs/"),
            || format!("root not read-only or work dir wrong: {writes}"),
        )?;
        ensure(writes.contains("C UTC 1700000000"), || {
            format!("environment not pinned: {writes}")
        })?;
        ensure(!writes.contains("vda"), || {
            format!("the guest's disks are visible in /dev: {writes}")
        })?;
        let connect = connect?;
        let stderr = String::from_utf8_lossy(&connect.stderr);
        ensure(
            connect.result.exit_code != 0 && stderr.contains("unreachable"),
            || {
                format!(
                    "a connection left the guest, or failed oddly: {:?} {stderr}",
                    connect.result
                )
            },
        )
    })
}

pub(crate) fn qemu_processes(session_id: &str) -> usize {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
                .filter(|cmdline| {
                    cmdline
                        .windows(session_id.len())
                        .any(|window| window == session_id.as_bytes())
                })
                .count()
        })
        .unwrap_or(0)
}

/// Stopping a guest kills QEMU and the vsock backend and removes the session directory; a
/// guest that cannot boot (its kernel is not a kernel) fails to start with the console's
/// words and leaves nothing behind.
fn stop_and_failed_start_clean_up() -> TestResult {
    block_on(async {
        let runtime = runtime()?;
        let session = start(&runtime, "cleanup").await?;
        let id = session.id().to_owned();
        let dir = target_dir().join("test-vm/state/sessions").join(&id);
        ensure(dir.is_dir() && qemu_processes(&id) >= 2, || {
            format!("{id}: no session dir or processes while running")
        })?;
        ensure(session.is_alive(), || "a running guest is not alive".into())?;
        session.stop().await.map_err(|error| error_chain(&error))?;
        ensure(!dir.exists(), || format!("{} left behind", dir.display()))?;
        ensure(qemu_processes(&id) == 0, || {
            format!("{id}: processes outlive stop")
        })?;

        let (qemu, vhost_vsock) = vm_tools()?;
        let kernel = guest_kernel()?;
        let bogus = tempfile::NamedTempFile::new().map_err(|error| error.to_string())?;
        std::fs::write(bogus.path(), b"not a kernel").map_err(|error| error.to_string())?;
        let mut guest = GuestConfig::new(
            bogus.path().to_owned(),
            kernel.modules,
            harness::agent_binary()?,
        );
        guest.state_dir = target_dir().join("test-vm/state");
        guest.boot_timeout = Duration::from_secs(30);
        let broken = QemuRuntime::new(QemuConfig {
            guest,
            qemu,
            vhost_vsock,
            accel: Accel::Tcg,
        })
        .map_err(|error| error_chain(&error))?;
        let error = match broken.start(&spec("broken")?).await {
            Ok(session) => {
                let _ = session.stop().await;
                return Err("a guest without a kernel started".into());
            }
            Err(error) => error_chain(&error),
        };
        ensure(
            error.contains("booting the guest") || error.contains("agent"),
            || format!("unclear error: {error}"),
        )?;
        let leftovers: Vec<String> = std::fs::read_dir(target_dir().join("test-vm/state/sessions"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with("vm-broken-"))
                    .collect()
            })
            .unwrap_or_default();
        ensure(leftovers.is_empty(), || {
            format!("failed starts left {leftovers:?}")
        })
    })
}
