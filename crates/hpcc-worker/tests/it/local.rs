//! The worker library end to end without privileges: `Worker` over `hpcc-testkit`'s
//! `LocalRuntime` (the real agent in this process, jobs run by the host's gcc), with its real
//! cache, kept sources and audit log in a temporary directory, and its gRPC service on
//! loopback. What only a sandbox or a guest can prove stays in the root and VM tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hpcc_auth::{RoutingClaims, RoutingKey, RoutingVerifier, TenantPolicy};
use hpcc_core::config::WorkerCacheConfig;
use hpcc_core::digest::Digest;
use hpcc_proto::worker::compile_request::Kind as RequestKind;
use hpcc_proto::worker::worker_client::WorkerClient;
use hpcc_proto::worker::{CompileHeader, CompileRequest, SourceChunk, SourceDone, SourceMode};
use hpcc_runtime::Limits;
use hpcc_testkit::LocalRuntime;
use hpcc_worker::audit::{AuditLog, AuditRow};
use hpcc_worker::cache::WorkerCache;
use hpcc_worker::service::{zstd_chunk, WorkerService};
use hpcc_worker::sessions::{PoolConfig, SessionPool};
use hpcc_worker::sources::SourceStore;
use hpcc_worker::{CompileJob, Rootfs, Worker, WorkerError, WorkerSettings};

const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// Every image is "available": the local runtime runs the host's compiler.
struct HostRootfs;

impl Rootfs for HostRootfs {
    fn rootfs(&self, _image: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from("/"))
    }
}

struct Rig {
    worker: Arc<Worker>,
    key: RoutingKey,
    dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = RoutingKey::generate().expect("routing key");
    let worker = Worker::new(
        WorkerSettings {
            id: "w-local".into(),
            capacity: 2,
            limits: Limits::default(),
            source_date_epoch: 0,
            health: hpcc_runtime::health::HealthPolicy::default(),
        },
        RoutingVerifier::from_public_base64(&key.public_base64()).expect("verifier"),
        SessionPool::new(Arc::new(LocalRuntime::new()), PoolConfig::default(), None),
        Arc::new(HostRootfs),
        WorkerCache::open(&dir.path().join("cache"), &WorkerCacheConfig::default()).expect("cache"),
        AuditLog::open(&dir.path().join("audit.tsv")).expect("audit log"),
        SourceStore::open(&dir.path().join("sources"), 1 << 20).expect("sources"),
    );
    Rig {
        worker: Arc::new(worker),
        key,
        dir,
    }
}

fn source(name: &str) -> Vec<u8> {
    format!(
        "# 1 \"/src/{name}.c\"\nint {name}(int x) {{ return x * {}; }}\n",
        name.len()
    )
    .into_bytes()
}

fn job(tenant: &str, name: &str, policy: TenantPolicy) -> CompileJob {
    CompileJob {
        tenant: tenant.into(),
        image: IMAGE.into(),
        compiler: "gcc".into(),
        language: "cpp-output".into(),
        flags: vec!["-O2".into()],
        source: source(name),
        extra_outputs: Vec::new(),
        policy,
    }
}

fn rows(rig: &Rig) -> Vec<AuditRow> {
    std::fs::read_to_string(rig.dir.path().join("audit.tsv"))
        .unwrap_or_default()
        .lines()
        .map(|line| AuditRow::parse(line).expect("a row"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_is_compiled_a_repeat_hits_and_another_tenant_gets_its_own() {
    let rig = rig();
    let first = rig
        .worker
        .compile(job("a", "f", TenantPolicy::default()))
        .await
        .expect("a's compile");
    assert_eq!(
        first.exit_code,
        0,
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let object = first.object.clone().expect("an object");
    assert!(object.starts_with(b"\x7fELF"));
    assert!(!first.cache_hit);
    let again = rig
        .worker
        .compile(job("a", "f", TenantPolicy::default()))
        .await
        .expect("a's repeat");
    assert!(again.cache_hit && again.session_id == "cache");
    assert_eq!(again.object.as_deref(), Some(object.as_slice()));
    let other = rig
        .worker
        .compile(job("b", "f", TenantPolicy::default()))
        .await
        .expect("b's compile");
    assert!(!other.cache_hit, "b was served a's entry");
    assert!(
        other.session_id.starts_with("local-b-"),
        "{}",
        other.session_id
    );
    assert_eq!(other.object.as_deref(), Some(object.as_slice()));
    let tenants: Vec<String> = rows(&rig).into_iter().map(|row| row.tenant).collect();
    assert_eq!(tenants, ["a", "a", "b"]);
    let digest = Digest::of(&source("f")).to_hex();
    for tenant in ["a", "b"] {
        assert!(rig
            .dir
            .path()
            .join(format!("sources/{tenant}/{digest}.zst"))
            .is_file());
    }
    // A sharing group's namespace is the group's: a job of a tenant in it hits the group.
    let group = TenantPolicy {
        namespace: "group-eng".into(),
        ..TenantPolicy::default()
    };
    let grouped = rig
        .worker
        .compile(job("c", "f", group.clone()))
        .await
        .expect("c");
    assert!(!grouped.cache_hit, "the group's namespace starts empty");
    let shared = rig.worker.compile(job("d", "f", group)).await.expect("d");
    assert!(shared.cache_hit, "d and c share group-eng");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_errors_are_answers_and_quotas_refuse_naming_themselves() {
    let rig = rig();
    let mut broken = job("a", "g", TenantPolicy::default());
    broken.source = b"int g( {\n".to_vec();
    let failed = rig.worker.compile(broken).await.expect("an answer");
    assert_ne!(failed.exit_code, 0);
    assert!(failed.object.is_none());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("error"));
    let none = TenantPolicy {
        max_jobs: Some(0),
        ..TenantPolicy::default()
    };
    let refused = rig.worker.compile(job("a", "h", none)).await;
    match refused {
        Err(error @ WorkerError::Quota(_)) => {
            assert!(
                error.to_string().contains("quota of 0 concurrent jobs"),
                "{error}"
            )
        }
        other => panic!("over its job quota: {other:?}"),
    }
    let error = rig
        .worker
        .reserve_source("a", 2048, Some(1024))
        .expect_err("over the upload quota");
    assert!(
        error.to_string().contains("1024 bytes of sources"),
        "{error}"
    );
    assert!(rig.worker.reserve_source("b", 2048, None).is_ok());
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn token(key: &RoutingKey, tenant: &str, worker: &str, exp: u64) -> String {
    key.sign(&RoutingClaims {
        iss: hpcc_auth::routing::ROUTING_ISSUER.into(),
        tenant: tenant.into(),
        image: IMAGE.into(),
        worker: worker.into(),
        sub: "alice".into(),
        iat: exp.saturating_sub(60),
        exp,
        policy: TenantPolicy::default(),
    })
    .expect("signed")
}

/// Sends one compile of `tenant` with `routing_token` over gRPC; the status message on a
/// refusal, or the events' count.
async fn over_grpc(
    client: &mut WorkerClient<tonic::transport::Channel>,
    tenant: &str,
    routing_token: String,
) -> Result<usize, tonic::Status> {
    let text = source("grpc");
    let header = CompileHeader {
        routing_token,
        tenant_id: tenant.into(),
        image_digest: IMAGE.into(),
        source_mode: SourceMode::Preprocessed as i32,
        compiler: "gcc".into(),
        args: vec!["-O2".into()],
        language: "cpp-output".into(),
        source_digest: Digest::of(&text).0.to_vec(),
        source_len: text.len() as u64,
        extra_outputs: Vec::new(),
    };
    let messages = vec![
        CompileRequest {
            kind: Some(RequestKind::Header(header)),
        },
        CompileRequest {
            kind: Some(RequestKind::Source(SourceChunk {
                zstd: zstd_chunk(&text),
            })),
        },
        CompileRequest {
            kind: Some(RequestKind::Done(SourceDone {})),
        },
    ];
    let mut events = client
        .compile(tokio_stream::iter(messages))
        .await?
        .into_inner();
    let mut count = 0;
    while let Some(event) = events.message().await? {
        let _ = event;
        count += 1;
    }
    Ok(count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_checks_routing_tokens_from_the_attackers_side() {
    let rig = rig();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("its address");
    let server = WorkerService::server(Arc::clone(&rig.worker));
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut client = WorkerClient::connect(format!("http://{address}"))
        .await
        .expect("connected")
        .max_decoding_message_size(16 << 20);
    let good = token(&rig.key, "a", "w-local", now() + 60);
    assert!(
        over_grpc(&mut client, "a", good.clone())
            .await
            .expect("served")
            > 0
    );
    let forger = RoutingKey::generate().expect("another key");
    for (tenant, routing_token, needle) in [
        ("a", token(&forger, "a", "w-local", now() + 60), "signature"),
        // Past the clock-skew leeway.
        ("a", token(&rig.key, "a", "w-local", now() - 600), "expired"),
        ("a", token(&rig.key, "a", "w-other", now() + 60), "worker"),
        ("b", good.clone(), "tenant"),
        ("a", "not-a-token".into(), "routing token"),
    ] {
        let status = over_grpc(&mut client, tenant, routing_token)
            .await
            .expect_err(needle);
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{needle}: {status:?}"
        );
        assert!(
            status.message().to_lowercase().contains(needle),
            "{needle}: {}",
            status.message()
        );
    }
    // Nothing refused reached a session or the audit log.
    assert_eq!(rows(&rig).len(), 1);
}
