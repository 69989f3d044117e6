//! `run_job` against the agent's real serving code over an in-process duplex pipe.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hpcc_agent::config::{AgentConfig, ListenAddr};
use hpcc_proto::agent::{EnvVar, OutputChunk, OutputStream, OutputsDone};

use super::*;

struct Agent {
    config: Arc<AgentConfig>,
    work: tempfile::TempDir,
}

fn agent() -> Agent {
    let work = tempfile::tempdir().expect("temp dir");
    let mut config = AgentConfig::new(
        ListenAddr::Unix(PathBuf::from("/unused")),
        work.path().to_owned(),
    );
    config.source_date_epoch = 1234;
    Agent {
        config: Arc::new(config),
        work,
    }
}

impl Agent {
    /// Runs one job against a fresh serving task.
    async fn run(
        &self,
        header: JobHeader,
        inputs: Vec<InputFile>,
    ) -> Result<JobOutcome, RuntimeError> {
        let (host, agent) = tokio::io::duplex(64 << 10);
        let config = Arc::clone(&self.config);
        let server = tokio::spawn(async move {
            let _ = hpcc_agent::serve::serve_connection(&config, agent).await;
        });
        let outcome = run_job("test", Box::new(host), header, inputs).await;
        server.await.expect("serving task does not panic");
        outcome
    }

    fn jobs_left(&self) -> usize {
        std::fs::read_dir(self.work.path().join("jobs"))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }
}

fn header(argv: &[&str], outputs: &[&str]) -> JobHeader {
    JobHeader {
        job_id: "job-1".into(),
        argv: argv.iter().map(|word| (*word).to_owned()).collect(),
        outputs: outputs.iter().map(|path| (*path).to_owned()).collect(),
        ..JobHeader::default()
    }
}

fn input(path: &str, data: &[u8]) -> InputFile {
    InputFile {
        path: path.into(),
        mode: 0o644,
        data: data.to_vec(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn runs_a_job_and_collects_everything() {
    runtime().block_on(async {
        let agent = agent();
        let script = "printf out; printf err >&2; mkdir -p sub; cat src/in.txt > sub/out.txt; \
                      ./tool.sh > tool.txt; : > empty; exit 3";
        let tool = InputFile {
            path: "tool.sh".into(),
            mode: 0o755,
            data: b"#!/bin/sh\necho tool ran\n".to_vec(),
        };
        let outcome = agent
            .run(
                header(
                    &["sh", "-c", script],
                    &["sub/out.txt", "missing", "tool.txt", "empty", "sub"],
                ),
                vec![input("src/in.txt", b"hello"), tool],
            )
            .await
            .expect("job runs");
        assert_eq!(outcome.result.exit_code, 3);
        assert_eq!(outcome.result.refused, "");
        assert!(!outcome.result.timed_out);
        assert_eq!(outcome.stdout, b"out");
        assert_eq!(outcome.stderr, b"err");
        let outputs: Vec<(&str, &[u8])> = outcome
            .outputs
            .iter()
            .map(|file| (file.path.as_str(), file.data.as_slice()))
            .collect();
        // Missing outputs and directories are left out; the order is the header's.
        assert_eq!(
            outputs,
            [
                ("sub/out.txt", &b"hello"[..]),
                ("tool.txt", &b"tool ran\n"[..]),
                ("empty", &b""[..]),
            ]
        );
        assert_eq!(agent.jobs_left(), 0, "the job directory is removed");
    });
}

#[test]
fn large_files_travel_in_chunks() {
    runtime().block_on(async {
        let agent = agent();
        let data: Vec<u8> = (0..(AGENT_CHUNK_LEN * 2 + 12345))
            .map(|i| u8::try_from(i % 251).unwrap_or(0))
            .collect();
        let exact: Vec<u8> = vec![7u8; AGENT_CHUNK_LEN];
        let outcome = agent
            .run(
                header(
                    &["sh", "-c", "cp big copy; cp exact exact.out"],
                    &["copy", "exact.out"],
                ),
                vec![input("big", &data), input("exact", &exact)],
            )
            .await
            .expect("job runs");
        assert_eq!(
            outcome.result.exit_code,
            0,
            "{:?}",
            String::from_utf8_lossy(&outcome.stderr)
        );
        assert_eq!(outcome.outputs.len(), 2);
        assert!(outcome.outputs[0].data == data, "big file round-trips");
        assert!(
            outcome.outputs[1].data == exact,
            "chunk-sized file round-trips"
        );
    });
}

#[test]
fn the_environment_is_pinned() {
    runtime().block_on(async {
        let agent = agent();
        let mut job = header(&["sh", "-c", "env | sort"], &[]);
        job.env.push(EnvVar {
            name: "EXTRA".into(),
            value: "1".into(),
        });
        let outcome = agent.run(job, Vec::new()).await.expect("job runs");
        let text = String::from_utf8_lossy(&outcome.stdout);
        for line in [
            "LC_ALL=C",
            "TZ=UTC",
            "SOURCE_DATE_EPOCH=1234",
            "EXTRA=1",
            "HOSTNAME=hpcc",
        ] {
            assert!(
                text.lines().any(|got| got == line),
                "{line} missing from {text}"
            );
        }
        assert!(
            !text.contains("CARGO"),
            "the host environment leaks: {text}"
        );

        let mut job = header(&["true"], &[]);
        job.env.push(EnvVar {
            name: "TZ".into(),
            value: "Europe/Paris".into(),
        });
        let outcome = agent.run(job, Vec::new()).await.expect("answered");
        assert!(
            outcome.result.refused.contains("pinned"),
            "{:?}",
            outcome.result
        );
    });
}

#[test]
fn bad_paths_are_refused_without_running() {
    runtime().block_on(async {
        let agent = agent();
        let marker = agent.work.path().join("ran");
        let script = format!("touch {}", marker.display());
        let cases: Vec<(JobHeader, Vec<InputFile>, &str)> = vec![
            (
                header(&["sh", "-c", &script], &[]),
                vec![input("../x", b"")],
                "..",
            ),
            (
                header(&["sh", "-c", &script], &[]),
                vec![input("/etc/x", b"")],
                "absolute",
            ),
            (
                header(&["sh", "-c", &script], &["../out"]),
                Vec::new(),
                "..",
            ),
            (
                header(&["sh", "-c", &script], &["/out"]),
                Vec::new(),
                "absolute",
            ),
            (
                JobHeader {
                    cwd: "../..".into(),
                    ..header(&["sh", "-c", &script], &[])
                },
                Vec::new(),
                "..",
            ),
            (header(&[], &[]), Vec::new(), "empty argv"),
            (
                header(&["sh", "-c", &script], &[]),
                vec![input("a", b"1"), input("a", b"2")],
                "exists",
            ),
        ];
        for (job, inputs, needle) in cases {
            let outcome = agent.run(job.clone(), inputs).await.expect("answered");
            assert!(
                outcome.result.refused.contains(needle),
                "{job:?}: refused {:?}",
                outcome.result.refused
            );
            assert_eq!(outcome.result.exit_code, -1);
        }
        assert!(!marker.exists(), "a refused job never runs");
        assert_eq!(agent.jobs_left(), 0);
    });
}

#[test]
fn outputs_escaping_through_symlinks_are_refused() {
    runtime().block_on(async {
        let agent = agent();
        let secret = agent.work.path().join("secret");
        std::fs::write(&secret, b"host secret").expect("write");
        let script = format!("ln -s {} out; ln -s ../.. up", secret.display());
        let outcome = agent
            .run(header(&["sh", "-c", &script], &["out"]), Vec::new())
            .await
            .expect("answered");
        assert!(
            outcome.result.refused.contains("outside"),
            "{:?}",
            outcome.result
        );
        assert!(outcome.outputs.is_empty());
        let outcome = agent
            .run(
                header(&["sh", "-c", "ln -s ../.. up"], &["up/secret"]),
                Vec::new(),
            )
            .await
            .expect("answered");
        assert!(
            outcome.result.refused.contains("outside"),
            "{:?}",
            outcome.result
        );
    });
}

#[test]
fn timeouts_kill_the_process_group() {
    runtime().block_on(async {
        let agent = agent();
        let pid_file = agent.work.path().join("bg.pid");
        let script = format!("sleep 1000 & echo $! > {}; wait", pid_file.display());
        let mut job = header(&["sh", "-c", &script], &[]);
        job.timeout_ms = 300;
        let started = Instant::now();
        let outcome = agent.run(job, Vec::new()).await.expect("answered");
        assert!(outcome.result.timed_out, "{:?}", outcome.result);
        assert_eq!(outcome.result.signal, 9);
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid = std::fs::read_to_string(&pid_file).expect("pid written");
        assert!(gone(pid.trim()), "the background sleep was killed too");
    });
}

/// How long a test waits for background work (a kill, a file) before it fails: generous, so
/// that a loaded 2-core machine is slow but never wrong; a pass returns as soon as it sees the
/// result.
const PATIENCE: Duration = Duration::from_secs(30);

/// Whether a process is gone (or a zombie waiting to be reaped) within [`PATIENCE`].
fn gone(pid: &str) -> bool {
    assert!(
        !pid.is_empty() && pid.bytes().all(|byte| byte.is_ascii_digit()),
        "not a pid: {pid:?}"
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        match std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z')) =>
            {
                return true
            }
            Ok(_) if Instant::now() >= deadline => return false,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The pid a job's script wrote to `pid_file` (`echo $$ > file`), once the line is whole,
/// waiting up to [`PATIENCE`].
async fn written_pid(pid_file: &Path) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(pid_file).unwrap_or_default();
        if text.ends_with('\n') {
            return text.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the job wrote no pid to {} within {PATIENCE:?}",
            pid_file.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn closing_the_connection_kills_the_job() {
    runtime().block_on(async {
        let agent = agent();
        let pid_file = agent.work.path().join("job.pid");
        let script = format!("echo $$ > {}; exec sleep 1000", pid_file.display());
        let job = header(&["sh", "-c", &script], &[]);
        let (host, agent_side) = tokio::io::duplex(64 << 10);
        let config = Arc::clone(&agent.config);
        let server =
            tokio::spawn(
                async move { hpcc_agent::serve::serve_connection(&config, agent_side).await },
            );
        let client = tokio::spawn(run_job("test", Box::new(host), job, Vec::new()));
        let pid = written_pid(&pid_file).await;
        client.abort();
        let served = server.await.expect("no panic");
        assert!(
            matches!(served, Err(hpcc_agent::serve::ServeError::Cancelled(_))),
            "{served:?}"
        );
        assert!(gone(&pid), "the job was killed within {PATIENCE:?}");
        assert_eq!(agent.jobs_left(), 0);
    });
}

#[test]
fn output_bounds_hold_on_both_sides() {
    runtime().block_on(async {
        let agent = agent();
        let mut job = header(&["sh", "-c", "head -c 100000 /dev/zero"], &[]);
        job.max_output_bytes = 1000;
        let outcome = agent.run(job, Vec::new()).await.expect("answered");
        assert!(
            outcome.result.refused.contains("max_output_bytes"),
            "{:?}",
            outcome.result
        );
        assert!(outcome.stdout.len() <= 1000);
        let mut job = header(&["sh", "-c", "head -c 5000 /dev/zero > big"], &["big"]);
        job.max_output_bytes = 1000;
        let outcome = agent.run(job, Vec::new()).await.expect("answered");
        assert!(
            outcome.result.refused.contains("max_output_bytes"),
            "{:?}",
            outcome.result
        );
        assert!(outcome.outputs.is_empty());
    });
}

#[test]
fn unknown_commands_are_refused() {
    runtime().block_on(async {
        let outcome = agent()
            .run(header(&["/nonexistent/cc"], &[]), Vec::new())
            .await
            .expect("answered");
        assert!(
            outcome.result.refused.contains("cannot run"),
            "{:?}",
            outcome.result
        );
    });
}

fn stream(data: &[u8]) -> agent_message::Kind {
    agent_message::Kind::Stream(OutputStream {
        stream: output_stream::Stream::Stdout.into(),
        data: data.to_vec(),
    })
}

fn chunk(path: &str, data: &[u8], last: bool) -> agent_message::Kind {
    agent_message::Kind::Output(OutputChunk {
        path: path.into(),
        data: data.to_vec(),
        last,
    })
}

fn result() -> agent_message::Kind {
    agent_message::Kind::Result(JobResult::default())
}

fn done() -> agent_message::Kind {
    agent_message::Kind::OutputsDone(OutputsDone {})
}

/// Feeds `messages` to a collector for outputs `a` and `b` with a 10-byte bound; returns the
/// outcome or the first error.
fn collect(messages: Vec<agent_message::Kind>) -> Result<JobOutcome, String> {
    let mut collector = Collector::new(10, vec!["a".into(), "b".into()]);
    for message in messages {
        if collector.accept(message)? {
            return collector.finish();
        }
    }
    Err("no OutputsDone".into())
}

#[test]
fn the_collector_checks_what_the_agent_sends() {
    let ok = collect(vec![
        stream(b"hi"),
        result(),
        chunk("a", b"12", false),
        chunk("a", b"3", true),
        done(),
    ])
    .expect("valid answer");
    assert_eq!(ok.stdout, b"hi");
    assert_eq!(
        ok.outputs,
        [OutputFile {
            path: "a".into(),
            data: b"123".to_vec()
        }]
    );
    let cases: Vec<(Vec<agent_message::Kind>, &str)> = vec![
        (vec![stream(b"12345678901")], "max_output_bytes"),
        (
            vec![stream(b"123456"), result(), chunk("a", b"12345", true)],
            "max_output_bytes",
        ),
        (vec![chunk("a", b"1", true)], "unexpected OutputChunk"),
        (vec![result(), stream(b"x")], "unexpected OutputStream"),
        (vec![result(), result()], "unexpected JobResult"),
        (vec![done()], "unexpected OutputsDone"),
        (vec![result(), chunk("c", b"1", true)], "not requested"),
        (
            vec![result(), chunk("a", b"1", true), chunk("a", b"1", true)],
            "not requested",
        ),
        (
            vec![result(), chunk("a", b"1", false), chunk("b", b"1", true)],
            "interrupted",
        ),
        (
            vec![result(), chunk("a", b"1", false), done()],
            "no last chunk",
        ),
        (
            vec![agent_message::Kind::Stream(OutputStream {
                stream: 9,
                data: Vec::new(),
            })],
            "unknown output stream",
        ),
    ];
    for (messages, needle) in cases {
        let error = collect(messages.clone()).expect_err(needle);
        assert!(error.contains(needle), "{messages:?}: {error}");
    }
}

#[test]
fn a_silent_or_closing_agent_is_an_error() {
    runtime().block_on(async {
        let (host, agent_side) = tokio::io::duplex(1024);
        drop(agent_side);
        let error = run_job("s1", Box::new(host), header(&["true"], &[]), Vec::new())
            .await
            .expect_err("nobody answers");
        assert!(error.to_string().contains("s1"), "{error}");

        let (host, mut agent_side) = tokio::io::duplex(1024);
        let liar = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = agent_side.write_all(&u32::MAX.to_le_bytes()).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let error = run_job("s2", Box::new(host), header(&["true"], &[]), Vec::new())
            .await
            .expect_err("oversized frame");
        assert!(error.to_string().contains("s2"), "{error}");
        assert!(format!("{error:?}").contains("byte limit"), "{error:?}");
        liar.abort();
    });
}
