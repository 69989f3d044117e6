//! The QEMU runtime on the Debian image: guests boot, compile byte-identically to the
//! sandbox, have no network device and a read-only root, and leave nothing behind; they are
//! snapshotted and restored (by the same runtime and by another), compile the same objects
//! afterwards, and bad snapshots fail cleanly; hosts taking turns on an agent port after a
//! cancelled job never see each other's bytes.
//!
//! Guests run under TCG (software emulation), which works on any host; `HPCC_TEST_ACCEL=kvm`
//! uses KVM instead.

use std::time::Duration;

use std::os::unix::fs::PermissionsExt;

use hpcc_runtime::agent_client::{run_job, InputFile};
use hpcc_runtime::testing::{guest_kernel, target_dir, vm_tools};
use hpcc_runtime::vm::qemu::{Accel, QemuConfig, QemuRuntime, SNAPSHOT_MEMORY, SNAPSHOT_METADATA};
use hpcc_runtime::vm::serial;
use hpcc_runtime::vm::GuestConfig;
use hpcc_runtime::{Runtime, Session, SessionSpec};
use tokio::io::AsyncWriteExt;

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
        (
            "qemu_restored_guest_compiles_like_a_booted_one",
            VM,
            restored_guest_compiles_like_a_booted_one,
        ),
        (
            "qemu_bad_snapshots_fail_cleanly",
            VM,
            bad_snapshots_fail_cleanly,
        ),
        (
            "qemu_port_reuse_after_cancel_is_clean",
            VM,
            port_reuse_after_cancel_is_clean,
        ),
    ]
}

/// A runtime whose disks are cached per machine under `<target>/test-vm/state`, with session
/// directories there too.
pub(crate) fn runtime() -> Result<QemuRuntime, String> {
    let (qemu, _vhost_vsock) = vm_tools()?;
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
        accel,
        jail: None,
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
    compile_with(
        session,
        &[
            "-O2",
            "-g",
            "-ffile-prefix-map=/work=.",
            "-c",
            "src/hello.c",
        ],
    )
    .await
}

/// Compiles `hello.c` with `gcc <flags> -o hello.o` in `session` and returns the object.
async fn compile_with(session: &dyn Session, flags: &[&str]) -> Result<Vec<u8>, String> {
    let mut argv = vec!["gcc"];
    argv.extend_from_slice(flags);
    argv.extend_from_slice(&["-o", "hello.o"]);
    let job = header(&argv, &["hello.o"]);
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

/// The host processes of the sessions whose ids start with `session_id`: an unjailed QEMU
/// names its session directory on its command line; a jailed one names only paths inside its
/// jail, so it (and the process outside its PID namespace that waits for it) is found by its
/// cgroup, `<parent>/<session id>`, and QEMU also by its root, the directory
/// `<state>/jails/<session id>/root` (by device and inode: `/proc/<pid>/root` reads as `/`).
pub(crate) fn qemu_processes(session_id: &str) -> usize {
    use std::os::unix::fs::MetadataExt;
    let in_cgroup = format!("/{session_id}");
    let roots: std::collections::BTreeSet<(u64, u64)> =
        std::fs::read_dir(target_dir().join("test-vm/state/jails"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|jail| jail.file_name().to_string_lossy().starts_with(session_id))
            .filter_map(|jail| std::fs::metadata(jail.path().join("root")).ok())
            .map(|root| (root.dev(), root.ino()))
            .collect();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| {
                    let path = entry.path();
                    let cmdline = std::fs::read(path.join("cmdline")).unwrap_or_default();
                    let named = cmdline
                        .windows(session_id.len())
                        .any(|window| window == session_id.as_bytes());
                    let cgroup = std::fs::read_to_string(path.join("cgroup")).unwrap_or_default();
                    let grouped = cgroup.lines().any(|line| {
                        line.rsplit(':').next().is_some_and(|cgroup_path| {
                            cgroup_path
                                .rsplit('/')
                                .next()
                                .is_some_and(|leaf| leaf.starts_with(session_id))
                                && cgroup_path.contains(&in_cgroup)
                        })
                    });
                    let rooted = std::fs::metadata(path.join("root"))
                        .is_ok_and(|root| roots.contains(&(root.dev(), root.ino())));
                    named || grouped || rooted
                })
                .count()
        })
        .unwrap_or(0)
}

/// Stopping a guest kills QEMU and removes the session directory; a
/// guest that cannot boot (its kernel is not a kernel) fails to start with the console's
/// words and leaves nothing behind.
fn stop_and_failed_start_clean_up() -> TestResult {
    block_on(async {
        let runtime = runtime()?;
        let session = start(&runtime, "cleanup").await?;
        let id = session.id().to_owned();
        let dir = target_dir().join("test-vm/state/sessions").join(&id);
        ensure(dir.is_dir() && qemu_processes(&id) == 1, || {
            format!("{id}: no session dir or processes while running")
        })?;
        ensure(session.is_alive(), || "a running guest is not alive".into())?;
        session.stop().await.map_err(|error| error_chain(&error))?;
        ensure(!dir.exists(), || format!("{} left behind", dir.display()))?;
        ensure(qemu_processes(&id) == 0, || {
            format!("{id}: processes outlive stop")
        })?;

        let (qemu, _vhost_vsock) = vm_tools()?;
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
            accel: Accel::Tcg,
            jail: None,
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

/// The flags of the concurrent compiles: no debug information, since jobs running at once get
/// different job directories, which `-g` records.
const PLAIN: &[&str] = &["-O2", "-c", "src/hello.c"];

fn session_dir(id: &str) -> std::path::PathBuf {
    target_dir().join("test-vm/state/sessions").join(id)
}

/// Session directories and QEMU processes of `tenant`'s sessions.
fn leftovers(tenant: &str) -> (Vec<String>, usize) {
    let prefix = format!("vm-{tenant}-");
    let dirs = std::fs::read_dir(target_dir().join("test-vm/state/sessions"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    (dirs, qemu_processes(&prefix))
}

fn io_error(error: std::io::Error) -> String {
    error.to_string()
}

/// A guest that compiled is snapshotted (nothing of it is left running or on disk but the
/// snapshot, 0600), restored by the same runtime and by a new one, and the restored guests
/// compile the booted guest's object byte for byte, several jobs in a row and at once.
fn restored_guest_compiles_like_a_booted_one() -> TestResult {
    block_on(async {
        let runtime = runtime()?;
        let booted = start(&runtime, "snap").await?;
        let reference = compile(booted.as_ref()).await?;
        let plain = compile_with(booted.as_ref(), PLAIN).await?;
        let id = booted.id().to_owned();
        let snapshots = tempfile::tempdir().map_err(io_error)?;
        let dir = snapshots.path();
        booted
            .snapshot(dir)
            .await
            .map_err(|error| error_chain(&error))?;
        ensure(qemu_processes(&id) == 0, || {
            format!("{id}: QEMU outlives its snapshot")
        })?;
        ensure(!session_dir(&id).exists(), || {
            format!("{id}: session dir outlives its snapshot")
        })?;
        for name in [SNAPSHOT_MEMORY, SNAPSHOT_METADATA] {
            let metadata = std::fs::metadata(dir.join(name)).map_err(io_error)?;
            ensure(metadata.permissions().mode() & 0o777 == 0o600, || {
                format!("{name} is not 0600: {:o}", metadata.permissions().mode())
            })?;
        }
        let spec = spec("snap")?;
        let restored = runtime
            .restore(&spec, dir)
            .await
            .map_err(|error| error_chain(&error))?;
        let checks = async {
            for round in 0..3 {
                let object = compile(restored.as_ref()).await?;
                ensure(object == reference, || {
                    format!("restored guest's object {round} differs from the booted one's")
                })?;
            }
            let (a, b, c, d) = tokio::join!(
                compile_with(restored.as_ref(), PLAIN),
                compile_with(restored.as_ref(), PLAIN),
                compile_with(restored.as_ref(), PLAIN),
                compile_with(restored.as_ref(), PLAIN),
            );
            for object in [a?, b?, c?, d?] {
                ensure(object == plain, || {
                    "a concurrent compile in the restored guest differs".into()
                })?;
            }
            Ok::<(), String>(())
        }
        .await;
        restored.stop().await.map_err(|error| error_chain(&error))?;
        checks?;

        let other = runtime_instance()?;
        ensure(
            other.snapshot_identity() == runtime.snapshot_identity(),
            || "two runtimes of one configuration differ in snapshot identity".into(),
        )?;
        let again = other
            .restore(&spec, dir)
            .await
            .map_err(|error| error_chain(&error))?;
        let object = compile(again.as_ref()).await;
        again.stop().await.map_err(|error| error_chain(&error))?;
        ensure(object? == reference, || {
            "the guest restored by another runtime compiles another object".into()
        })?;
        let (dirs, processes) = leftovers("snap");
        ensure(dirs.is_empty() && processes == 0, || {
            format!("left behind: {dirs:?}, {processes} processes")
        })
    })
}

/// A second runtime over the same state directory (another worker process would be the same).
fn runtime_instance() -> Result<QemuRuntime, String> {
    runtime()
}

/// A snapshot into a directory that is not empty fails and still stops the session.
/// Restoring from a snapshot whose memory file is missing, shorter than recorded, or cut
/// short with its length recorded to match, or whose metadata is missing or is for another
/// image, fails with an error naming the problem and leaves no process and no directory.
fn bad_snapshots_fail_cleanly() -> TestResult {
    block_on(async {
        let runtime = runtime()?;
        let snapshots = tempfile::tempdir().map_err(io_error)?;
        // A snapshot into a directory that is not empty fails; the session is stopped anyway
        // and the directory's file left alone.
        let occupied = snapshots.path().join("occupied");
        std::fs::create_dir(&occupied).map_err(io_error)?;
        std::fs::write(occupied.join("memory"), b"someone else's").map_err(io_error)?;
        let doomed = start(&runtime, "badsnap").await?;
        let error = match doomed.snapshot(&occupied).await {
            Ok(()) => return Err("a snapshot went into a directory that is not empty".into()),
            Err(error) => error_chain(&error),
        };
        ensure(error.contains("not empty"), || {
            format!("unclear error: {error}")
        })?;
        let (dirs, processes) = leftovers("badsnap");
        ensure(dirs.is_empty() && processes == 0, || {
            format!("a failed snapshot left {dirs:?}, {processes} processes")
        })?;
        ensure(
            std::fs::read(occupied.join("memory")).map_err(io_error)? == b"someone else's",
            || "a failed snapshot touched the directory's file".into(),
        )?;
        let booted = start(&runtime, "badsnap").await?;
        let good = snapshots.path().join("good");
        std::fs::create_dir(&good).map_err(io_error)?;
        booted
            .snapshot(&good)
            .await
            .map_err(|error| error_chain(&error))?;
        let metadata_text = std::fs::read(good.join(SNAPSHOT_METADATA)).map_err(io_error)?;
        let memory = std::fs::read(good.join(SNAPSHOT_MEMORY)).map_err(io_error)?;
        let half = memory.len() / 2;
        let mut cut_metadata: serde_json::Value =
            serde_json::from_slice(&metadata_text).map_err(|error| error.to_string())?;
        cut_metadata["memory_bytes"] = serde_json::json!(half);
        // (name, metadata, memory, what the error must say)
        type Case<'a> = (&'a str, Option<Vec<u8>>, Option<&'a [u8]>, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (
                "no-memory",
                Some(metadata_text.clone()),
                None,
                "No such file",
            ),
            (
                "short-memory",
                Some(metadata_text.clone()),
                Some(&memory[..half]),
                "truncated",
            ),
            (
                "cut-memory",
                Some(cut_metadata.to_string().into_bytes()),
                Some(&memory[..half]),
                "loading",
            ),
            ("no-metadata", None, Some(&memory[..]), SNAPSHOT_METADATA),
        ];
        let spec = spec("badsnap")?;
        for (name, metadata, memory, expected) in cases {
            let dir = snapshots.path().join(name);
            std::fs::create_dir(&dir).map_err(io_error)?;
            if let Some(metadata) = metadata {
                std::fs::write(dir.join(SNAPSHOT_METADATA), metadata).map_err(io_error)?;
            }
            if let Some(memory) = memory {
                std::fs::write(dir.join(SNAPSHOT_MEMORY), memory).map_err(io_error)?;
            }
            let error = match runtime.restore(&spec, &dir).await {
                Ok(session) => {
                    let _ = session.stop().await;
                    return Err(format!("{name}: a bad snapshot was restored"));
                }
                Err(error) => error_chain(&error),
            };
            ensure(
                error.contains(expected) && error.contains(&dir.display().to_string()),
                || format!("{name}: unclear error: {error}"),
            )?;
            let (dirs, processes) = leftovers("badsnap");
            ensure(dirs.is_empty() && processes == 0, || {
                format!("{name}: left behind {dirs:?}, {processes} processes")
            })?;
        }
        let mut other_image = spec.clone();
        other_image.image_digest = format!("sha256:{}", "0c".repeat(32));
        let error = match runtime.restore(&other_image, &good).await {
            Ok(session) => {
                let _ = session.stop().await;
                return Err("a snapshot was restored for another image".into());
            }
            Err(error) => error_chain(&error),
        };
        ensure(error.contains("another image"), || {
            format!("unclear error: {error}")
        })?;
        // The good snapshot itself restores.
        let restored = runtime
            .restore(&spec, &good)
            .await
            .map_err(|error| error_chain(&error))?;
        let alive = shell(restored.as_ref(), "echo alive").await;
        restored.stop().await.map_err(|error| error_chain(&error))?;
        ensure(alive? == "alive\n", || {
            "restored guest answers oddly".into()
        })
    })
}

/// A host that leaves a port in the middle of a job (the agent still writing its output, or
/// halfway through sending a frame, or without the preamble at all) and a new host that
/// takes the same port at once: the new host's job gets exactly its own answer.
fn port_reuse_after_cancel_is_clean() -> TestResult {
    block_on(async {
        let runtime = runtime()?;
        let session = start(&runtime, "reuse").await?;
        let port = session_dir(session.id()).join("port-0.sock");
        let result = async {
            for round in 0..3 {
                // A job that writes without end, given up after a second.
                let stream = serial::open(&port, Duration::from_secs(30))
                    .await
                    .map_err(io_error)?;
                let spew = run_job(
                    "reuse",
                    Box::new(stream),
                    header(
                        &[
                            "sh",
                            "-c",
                            "while :; do echo stale-output-of-the-old-job; done",
                        ],
                        &[],
                    ),
                    Vec::new(),
                );
                let _ = tokio::time::timeout(Duration::from_secs(1), spew).await;
                fresh_job(&port, round).await?;
            }
            // Half a frame, then gone.
            let mut stream = serial::open(&port, Duration::from_secs(30))
                .await
                .map_err(io_error)?;
            stream
                .write_all(&[0x40, 0, 0, 0, 0x0a, 0x02])
                .await
                .map_err(io_error)?;
            drop(stream);
            fresh_job(&port, 10).await?;
            // No preamble at all: bytes straight into the port.
            let mut raw = tokio::net::UnixStream::connect(&port)
                .await
                .map_err(io_error)?;
            raw.write_all(b"\x05\0\0\0hello stale bytes")
                .await
                .map_err(io_error)?;
            drop(raw);
            fresh_job(&port, 11).await
        }
        .await;
        session.stop().await.map_err(|error| error_chain(&error))?;
        result
    })
}

/// Runs `echo fresh <round>` over a new connection to `port` and checks the answer is exactly
/// that job's.
async fn fresh_job(port: &std::path::Path, round: usize) -> TestResult {
    let stream = serial::open(port, Duration::from_secs(30))
        .await
        .map_err(io_error)?;
    let text = format!("fresh {round}");
    let outcome = run_job(
        "reuse",
        Box::new(stream),
        header(&["echo", &text], &[]),
        Vec::new(),
    )
    .await
    .map_err(|error| error_chain(&error))?;
    ensure(
        outcome.result.exit_code == 0
            && outcome.stdout == format!("{text}\n").as_bytes()
            && outcome.stderr.is_empty(),
        || {
            format!(
                "round {round}: {:?}, stdout {:?}",
                outcome.result,
                String::from_utf8_lossy(&outcome.stdout)
            )
        },
    )
}
