//! The sandbox runtime on the Debian image: compiling, and each isolation property.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use hpcc_runtime::agent_client::InputFile;

use crate::harness::{self, block_on, ensure, header, run, shell, Need, TestResult};
use crate::Case;

const SANDBOX: &[Need] = &[Need::Root, Need::Agent, Need::Image];

/// A shell command printing the name of every process the session sees. A process that
/// exits between the glob and `cat` (the previous probe's own shell, a killed job) has no
/// `comm` left to read: `cat` prints the others and that is not a failure.
const PROCESS_NAMES: &str = "cat /proc/[0-9]*/comm 2>/dev/null || true";
/// Every case of this module.
pub fn cases() -> Vec<Case> {
    vec![
        (
            "sandbox_compile_is_reproducible_elf",
            SANDBOX,
            compile_is_reproducible_elf,
        ),
        ("sandbox_has_no_network", SANDBOX, has_no_network),
        (
            "sandbox_cannot_reach_host_loopback",
            SANDBOX,
            cannot_reach_host_loopback,
        ),
        ("sandbox_root_is_read_only", SANDBOX, root_is_read_only),
        (
            "sandbox_tenants_are_isolated",
            SANDBOX,
            tenants_are_isolated,
        ),
        (
            "sandbox_hostname_env_and_privileges_are_pinned",
            SANDBOX,
            pinned_identity,
        ),
        (
            "sandbox_timeout_kills_the_job",
            SANDBOX,
            timeout_kills_the_job,
        ),
        (
            "sandbox_escaping_outputs_are_refused",
            SANDBOX,
            escaping_outputs_are_refused,
        ),
        (
            "sandbox_closing_the_connection_kills_the_job",
            SANDBOX,
            closing_kills_the_job,
        ),
        (
            "sandbox_stop_and_failed_start_clean_up",
            SANDBOX,
            stop_and_failed_start_clean_up,
        ),
    ]
}

const HELLO_C: &[u8] = b"#include <stdio.h>\n\
static const char when[] = __DATE__ \" \" __TIME__;\n\
int main(void) { printf(\"hello %s\\n\", when); return 0; }\n";

fn compile_is_reproducible_elf() -> TestResult {
    block_on(async {
        let sandbox = harness::sandbox()?;
        let session = sandbox.start("compile").await?;
        let mut objects = Vec::new();
        for _ in 0..2 {
            let job = header(
                &["gcc", "-O2", "-g", "-c", "src/hello.c", "-o", "hello.o"],
                &["hello.o"],
            );
            let input = InputFile {
                path: "src/hello.c".into(),
                mode: 0o644,
                data: HELLO_C.to_vec(),
            };
            let outcome = run(session.as_ref(), job, vec![input]).await?;
            ensure(outcome.result.exit_code == 0, || {
                format!(
                    "gcc failed: {:?} {}",
                    outcome.result,
                    String::from_utf8_lossy(&outcome.stderr)
                )
            })?;
            let object = outcome
                .outputs
                .into_iter()
                .find(|file| file.path == "hello.o")
                .ok_or("no hello.o came back")?;
            objects.push(object.data);
        }
        session
            .stop()
            .await
            .map_err(|error| harness::error_chain(&error))?;
        let object = &objects[0];
        ensure(object.starts_with(b"\x7fELF"), || {
            "hello.o is not ELF".into()
        })?;
        // e_type at offset 16, little-endian: 1 is ET_REL, a relocatable object.
        ensure(object.get(16..18) == Some(&[1, 0][..]), || {
            format!("hello.o has e_type {:?}, not ET_REL", object.get(16..18))
        })?;
        ensure(objects[0] == objects[1], || {
            "two compiles of the same input differ (not reproducible)".into()
        })?;
        // __DATE__ comes from SOURCE_DATE_EPOCH (2023-11-14), not the clock.
        ensure(
            object.windows(11).any(|window| window == b"Nov 14 2023"),
            || "__DATE__ does not follow SOURCE_DATE_EPOCH".into(),
        )
    })
}

fn has_no_network() -> TestResult {
    block_on(async {
        let sandbox = harness::sandbox()?;
        let session = sandbox.start("net").await?;
        let dev = shell(session.as_ref(), "cat /proc/net/dev").await?;
        let route = shell(
            session.as_ref(),
            "cat /proc/net/route; cat /proc/net/if_inet6 || true",
        )
        .await?;
        session
            .stop()
            .await
            .map_err(|error| harness::error_chain(&error))?;
        let interfaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|line| line.split(':').next())
            .map(str::trim)
            .collect();
        ensure(interfaces == ["lo"], || {
            format!("interfaces {interfaces:?}:\n{dev}")
        })?;
        // No route at all: the header line only (lo is down, so it has no address either).
        ensure(route.lines().count() <= 1, || {
            format!("routes exist:\n{route}")
        })
    })
}

fn cannot_reach_host_loopback() -> TestResult {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|error| format!("bind: {error}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|error| error.to_string())?;
    let port = listener
        .local_addr()
        .map_err(|error| error.to_string())?
        .port();
    block_on(async {
        let sandbox = harness::sandbox()?;
        let session = sandbox.start("tcp").await?;
        let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");
        let outcome = run(
            session.as_ref(),
            header(&["bash", "-c", &script], &[]),
            Vec::new(),
        )
        .await?;
        session
            .stop()
            .await
            .map_err(|error| harness::error_chain(&error))?;
        let stdout = String::from_utf8_lossy(&outcome.stdout);
        let stderr = String::from_utf8_lossy(&outcome.stderr);
        ensure(
            outcome.result.exit_code != 0 && !stdout.contains("connected"),
            || format!("connect succeeded: {:?} {stdout} {stderr}", outcome.result),
        )?;
        ensure(
            stderr.contains("unreachable") || stderr.contains("refused"),
            || format!("unexpected failure: {stderr}"),
        )?;
        match listener.accept() {
            Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(()),
            other => Err(format!("the host listener saw a connection: {other:?}")),
        }
    })
}

fn root_is_read_only() -> TestResult {
    block_on(async {
        let sandbox = harness::sandbox()?;
        let session = sandbox.start("ro").await?;
        let script = "for p in /usr/x /x /etc/x /bin/x /.hpcc/x /.hpcc/agent /dev/x /proc/x; do \
                        if touch $p 2>/dev/null; then echo WROTE $p; fi; done; \
                      touch here && echo job-dir-ok; touch /tmp/t && echo tmp-ok; \
                      echo data > /dev/null && echo devnull-ok";
        let stdout = shell(session.as_ref(), script).await?;
        session
            .stop()
            .await
            .map_err(|error| harness::error_chain(&error))?;
        ensure(!stdout.contains("WROTE"), || {
            format!("wrote outside the work dir: {stdout}")
        })?;
        for expected in ["job-dir-ok", "tmp-ok", "devnull-ok"] {
            ensure(stdout.contains(expected), || {
                format!("{expected} missing: {stdout}")
            })?;
        }
        Ok(())
    })
}

fn tenants_are_isolated() -> TestResult {
    block_on(async {
        let sandbox = harness::sandbox()?;
        let first = sandbox.start("tenant-a").await?;
        let second = sandbox.start("tenant-b").await?;
        shell(
            first.as_ref(),
            "echo secret > /work/a-secret; echo secret > /tmp/a-secret; echo x > left-here",
        )
        .await?;
        // Keep a process running in the first session while the second looks around.
        let sleeper = header(&["sh", "-c", "exec sleep 30"], &[]);
        let stream = first
            .connect()
            .await
            .map_err(|error| harness::error_chain(&error))?;
        let first_id = first.id().to_owned();
        let running = tokio::spawn(async move {
            hpcc_runtime::agent_client::run_job(&first_id, stream, sleeper, Vec::new()).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen_first = shell(first.as_ref(), PROCESS_NAMES).await?;
        let files = shell(
            second.as_ref(),
            "ls -a /work /tmp /work/jobs; test ! -e /work/a-secret && echo absent",
        )
        .await?;
        let seen = shell(
            second.as_ref(),
            &format!("{PROCESS_NAMES}; echo count $(ls -d /proc/[0-9]* | wc -l)"),
        )
        .await?;
        running.abort();
        first
            .stop()
            .await
            .map_err(|error| harness::error_chain(&error))?;
        second
            .stop()
            .await
            .map_err(|error| harness::error_chain(&error))?;
        ensure(seen_first.lines().any(|line| line == "sleep"), || {
            format!("the first session does not see its own sleep: {seen_first}")
        })?;
        ensure(
            !files.contains("a-secret") && files.contains("absent"),
            || format!("the second tenant sees the first's files: {files}"),
        )?;
        ensure(!seen.lines().any(|line| line == "sleep"), || {
            format!("the second tenant sees the first's processes: {seen}")
        })?;
        // Its own agent (PID 1 and the server), the shell, cat and ls: nothing of the host.
        let count: usize = seen
            .lines()
            .find_map(|line| line.strip_prefix("count "))
            .and_then(|count| count.trim().parse().ok())
            .ok_or_else(|| format!("no count in {seen}"))?;
        ensure(count <= 6, || format!("{count} processes visible: {seen}"))?;
        ensure(
            seen.lines()
                .any(|line| line == "hpcc-agent" || line == "agent"),
            || format!("the agent is not visible as PID 1: {seen}"),
        )
    })
}

fn pinned_identity() -> TestResult {
    block_on(async {
        let sandbox = harness::sandbox()?;
        let session = sandbox.start("ident").await?;
        let script = "uname -n; echo; env; echo; id -u; cat /proc/self/uid_map; \
                      grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
                      head -c 7 /proc/1/cmdline; echo";
        let stdout = shell(session.as_ref(), script).await?;
        session
            .stop()
            .await
            .map_err(|error| harness::error_chain(&error))?;
        let lines: Vec<&str> = stdout.lines().map(str::trim_end).collect();
        ensure(lines.first() == Some(&"hpcc"), || {
            format!("hostname: {stdout}")
        })?;
        for expected in [
            "LC_ALL=C",
            "TZ=UTC",
            "HOSTNAME=hpcc",
            "SOURCE_DATE_EPOCH=1700000000",
            "HOME=/work",
            "PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
            "CapEff:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "NoNewPrivs:\t1",
            "Seccomp:\t2",
            "/.hpcc/",
        ] {
            ensure(lines.iter().any(|line| line.starts_with(expected)), || {
                format!("{expected:?} missing from:\n{stdout}")
            })?;
        }
        // Root inside is an unprivileged uid outside.
        let map = lines
            .iter()
            .find(|line| line.trim_start().starts_with('0') && line.split_whitespace().count() == 3)
            .ok_or_else(|| format!("no uid_map line: {stdout}"))?;
        let outside: Vec<&str> = map.split_whitespace().collect();
        ensure(
            outside.get(1) != Some(&"0") && outside.get(2) == Some(&"1"),
            || format!("uid 0 inside maps to {map:?}"),
        )
    })
}

fn timeout_kills_the_job() -> TestResult {
    block_on(async {
        let sandbox = harness::sandbox()?;
        let session = sandbox.start("timeout").await?;
        let mut job = header(&["sh", "-c", "sleep 1000 & sleep 1000"], &[]);
        job.timeout_ms = 500;
        let started = Instant::now();
        let outcome = run(session.as_ref(), job, Vec::new()).await?;
        let elapsed = started.elapsed();
        // Killed processes linger as zombies until PID 1 reaps them, so poll briefly; a
        // process still listed after that was either not killed or never reaped.
        let mut left = String::new();
        for _ in 0..40 {
            left = shell(session.as_ref(), PROCESS_NAMES).await?;
            if !left.lines().any(|line| line == "sleep") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        session
            .stop()
            .await
            .map_err(|error| harness::error_chain(&error))?;
        ensure(
            outcome.result.timed_out && outcome.result.signal == 9,
            || format!("not killed for its timeout: {:?}", outcome.result),
        )?;
        ensure(elapsed < Duration::from_secs(10), || {
            format!("took {elapsed:?}")
        })?;
        ensure(!left.lines().any(|line| line == "sleep"), || {
            format!("the job's background process survived: {left}")
        })
    })
}

fn escaping_outputs_are_refused() -> TestResult {
    block_on(async {
        let sandbox = harness::sandbox()?;
        let session = sandbox.start("escape").await?;
        let marker = "touch /tmp/ran";
        let dotdot = run(
            session.as_ref(),
            header(&["sh", "-c", marker], &["../escape"]),
            Vec::new(),
        )
        .await?;
        let ran = shell(
            session.as_ref(),
            "test -e /tmp/ran && echo ran || echo not-run",
        )
        .await?;
        let link = run(
            session.as_ref(),
            header(
                &["sh", "-c", "ln -s /etc/passwd out; ln -s ../.. up"],
                &["out"],
            ),
            Vec::new(),
        )
        .await?;
        let input = InputFile {
            path: "../../x".into(),
            mode: 0o644,
            data: b"x".to_vec(),
        };
        let bad_input = run(session.as_ref(), header(&["true"], &[]), vec![input]).await?;
        session
            .stop()
            .await
            .map_err(|error| harness::error_chain(&error))?;
        ensure(dotdot.result.refused.contains(".."), || {
            format!("`..` output: {:?}", dotdot.result)
        })?;
        ensure(ran.trim() == "not-run", || "a refused job ran".into())?;
        ensure(
            link.result.refused.contains("outside") && link.outputs.is_empty(),
            || format!("symlinked output: {:?} {:?}", link.result, link.outputs),
        )?;
        ensure(bad_input.result.refused.contains(".."), || {
            format!("`..` input: {:?}", bad_input.result)
        })
    })
}

fn closing_kills_the_job() -> TestResult {
    block_on(async {
        let sandbox = harness::sandbox()?;
        let session = sandbox.start("cancel").await?;
        let stream = session
            .connect()
            .await
            .map_err(|error| harness::error_chain(&error))?;
        let id = session.id().to_owned();
        let job = header(&["sh", "-c", "exec sleep 1000"], &[]);
        let running = tokio::spawn(async move {
            hpcc_runtime::agent_client::run_job(&id, stream, job, Vec::new()).await
        });
        // Deadlines, not counts: on a loaded machine each look is a job of its own.
        let mut seen = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let comms = shell(session.as_ref(), PROCESS_NAMES).await?;
            if comms.lines().any(|line| line == "sleep") {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running.abort();
        let _ = running.await;
        let mut gone = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let comms = shell(session.as_ref(), PROCESS_NAMES).await?;
            if !comms.lines().any(|line| line == "sleep") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let alive = session.is_alive();
        session
            .stop()
            .await
            .map_err(|error| harness::error_chain(&error))?;
        ensure(seen, || "the sleep job never started".into())?;
        ensure(gone, || "the sleep job survived its connection".into())?;
        ensure(alive, || "the session died with the job".into())
    })
}

fn stop_and_failed_start_clean_up() -> TestResult {
    block_on(async {
        let sandbox = harness::sandbox()?;
        let session = sandbox.start("cleanup").await?;
        ensure(session.is_alive(), || "a fresh session is not alive".into())?;
        let entries = |dir: &std::path::Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|entry| entry.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        ensure(entries(sandbox.state.path()).len() == 1, || {
            "no session directory".into()
        })?;
        session
            .stop()
            .await
            .map_err(|error| harness::error_chain(&error))?;
        ensure(entries(sandbox.state.path()).is_empty(), || {
            format!("stop left {:?}", entries(sandbox.state.path()))
        })?;

        // An image root without a usable /dev: the start fails inside the child, and nothing
        // may be left behind.
        let broken = tempfile::tempdir().map_err(|error| error.to_string())?;
        std::fs::create_dir(broken.path().join("usr")).map_err(|error| error.to_string())?;
        std::os::unix::fs::symlink("usr/missing", broken.path().join("bin"))
            .map_err(|error| error.to_string())?;
        let mut spec = harness::spec("broken")?;
        spec.rootfs = broken.path().join("does-not-exist");
        let error = match hpcc_runtime::Runtime::start(&sandbox.runtime, &spec).await {
            Ok(session) => {
                let _ = session.stop().await;
                return Err("a session started on a missing root".into());
            }
            Err(error) => harness::error_chain(&error),
        };
        ensure(error.contains("does-not-exist"), || {
            format!("error does not name the root: {error}")
        })?;
        ensure(entries(sandbox.state.path()).is_empty(), || {
            format!("a failed start left {:?}", entries(sandbox.state.path()))
        })?;
        let mut limits_spec = harness::spec("nospace")?;
        limits_spec.limits.open_files = 0;
        let failed = hpcc_runtime::Runtime::start(&sandbox.runtime, &limits_spec).await;
        if let Ok(session) = failed {
            let _ = session.stop().await;
        }
        ensure(entries(sandbox.state.path()).is_empty(), || {
            format!(
                "a start that failed in the child left {:?}",
                entries(sandbox.state.path())
            )
        })
    })
}
