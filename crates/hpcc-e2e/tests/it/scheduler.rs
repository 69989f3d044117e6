//! The scheduler as a real gRPC server on loopback, with the test identity providers (a JWKS
//! document per tenant, request counts kept): tenant isolation, token refusals, image policy,
//! worker registration and placement, key rotation.

use std::sync::Arc;

use hpcc_auth::user::testing::IdpKey;
use hpcc_auth::{RoutingKey, RoutingScope, RoutingVerifier};
use hpcc_core::config::{SchedulerConfig, TenantConfig};
use hpcc_proto::scheduler::scheduler_client::SchedulerClient;
use hpcc_proto::scheduler::{GetTenantIdPRequest, HeartbeatRequest, RegisterRequest, RouteRequest};
use hpcc_scheduler::service::SchedulerService;
use hpcc_scheduler::Scheduler;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::idp::Idp;
use crate::{Case, TestResult};

pub const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const OTHER_IMAGE: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
pub const SECRET: &str = "worker-secret";

pub use hpcc_testkit::idp::now;

pub fn tenant(id: &str, idp: &Idp) -> TenantConfig {
    TenantConfig {
        id: id.into(),
        issuer: idp.issuer(),
        jwks_uri: idp.jwks_uri(),
        idp_ca: None,
        token_endpoint: idp.token_uri(),
        audience: "hpcc".into(),
        client_id: "hpcc-cli".into(),
        allowed_images: vec![IMAGE.into()],
        paranoid: false,
        quota: Default::default(),
    }
}

pub fn config(tenants: Vec<TenantConfig>) -> SchedulerConfig {
    SchedulerConfig {
        listen: "127.0.0.1:0".into(),
        tls: None,
        insecure_plaintext: true,
        routing_key: "unused".into(),
        routing_ttl_secs: 60,
        worker_secret_file: "unused".into(),
        heartbeat_interval_ms: 1000,
        worker_expiry_secs: 10,
        tenants,
        sharing_groups: Vec::new(),
        metrics_listen: "127.0.0.1:0".into(),
    }
}

/// Serves `scheduler` on a loopback port from `runtime`: its URL, and the sender whose drop
/// stops the server.
pub fn serve(
    runtime: &tokio::runtime::Runtime,
    scheduler: Arc<Scheduler>,
) -> Result<(String, tokio::sync::oneshot::Sender<()>), String> {
    let (address, shutdown) = serve_routes(
        runtime,
        tonic::service::Routes::new(SchedulerService::server(scheduler)),
    )?;
    Ok((format!("http://{address}"), shutdown))
}

/// Serves `routes` (any gRPC service) on a loopback port from `runtime`: its address, and the
/// sender whose drop stops the server.
pub fn serve_routes(
    runtime: &tokio::runtime::Runtime,
    routes: tonic::service::Routes,
) -> Result<(std::net::SocketAddr, tokio::sync::oneshot::Sender<()>), String> {
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let address = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Ok::<_, String>(address)
    })?;
    Ok((address, shutdown))
}

/// Two tenants with their own IdPs, a scheduler serving them on loopback, one client.
struct World {
    runtime: tokio::runtime::Runtime,
    idp_a: Idp,
    idp_b: Idp,
    key: RoutingKey,
    client: SchedulerClient<Channel>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl World {
    fn new() -> Result<World, String> {
        let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        let idp_a = Idp::start("a")?;
        let idp_b = Idp::start("b")?;
        let key = RoutingKey::generate().map_err(|e| e.to_string())?;
        let signing = RoutingKey::from_pem(&key.to_pem()).map_err(|e| e.to_string())?;
        let scheduler = Arc::new(
            Scheduler::new(
                &config(vec![tenant("a", &idp_a), tenant("b", &idp_b)]),
                signing,
                SECRET.as_bytes().to_vec(),
            )
            .map_err(|e| e.to_string())?,
        );
        let (url, shutdown) = serve(&runtime, scheduler)?;
        let client = runtime.block_on(async {
            let channel = Endpoint::from_shared(url)
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(SchedulerClient::new(channel))
        })?;
        Ok(World {
            runtime,
            idp_a,
            idp_b,
            key,
            client,
            _shutdown: shutdown,
        })
    }

    fn register(&self, id: &str, warm: &[&str], secret: &str) -> Result<(), tonic::Status> {
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(RegisterRequest {
            worker_id: id.into(),
            address: format!("127.0.0.1:{}", 40000 + id.len()),
            capacity: 4,
            warm_images: warm.iter().map(|image| (*image).to_owned()).collect(),
            ..RegisterRequest::default()
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {secret}").parse().expect("ascii"),
        );
        self.runtime.block_on(client.register(request)).map(|_| ())
    }

    fn route(
        &self,
        tenant: &str,
        image: &str,
        token: Option<&str>,
    ) -> Result<hpcc_proto::scheduler::RouteReply, tonic::Status> {
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(RouteRequest {
            tenant_id: tenant.into(),
            image_digest: image.into(),
            paranoid: false,
            ..RouteRequest::default()
        });
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
        }
        self.runtime
            .block_on(client.route(request))
            .map(tonic::Response::into_inner)
    }
}

pub fn user_token(idp: &Idp, tenant_issuer: &str, exp: u64) -> String {
    idp.key
        .mint(&serde_json::json!({"sub": "alice", "iss": tenant_issuer, "aud": "hpcc", "exp": exp}))
        .expect("minting a token")
}

fn expect_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    what: &str,
) -> TestResult {
    match result {
        Err(status) if status.code() == code => Ok(()),
        other => Err(format!("{what}: expected {code:?}, got {other:?}")),
    }
}

fn idp_coordinates_without_authentication() -> TestResult {
    let world = World::new()?;
    let mut client = world.client.clone();
    let reply = world
        .runtime
        .block_on(client.get_tenant_id_p(GetTenantIdPRequest {
            tenant_id: "b".into(),
        }))
        .map_err(|e| e.to_string())?
        .into_inner();
    if reply.token_endpoint != world.idp_b.token_uri() || reply.issuer != world.idp_b.issuer() {
        return Err(format!("wrong coordinates: {reply:?}"));
    }
    expect_code(
        world
            .runtime
            .block_on(client.get_tenant_id_p(GetTenantIdPRequest {
                tenant_id: "zz".into(),
            })),
        Code::NotFound,
        "unknown tenant",
    )
}

fn routes_to_a_worker_with_a_scoped_token() -> TestResult {
    let world = World::new()?;
    world
        .register("w-warm", &[IMAGE], SECRET)
        .map_err(|e| e.to_string())?;
    world
        .register("w-cold", &[], SECRET)
        .map_err(|e| e.to_string())?;
    let token = user_token(&world.idp_a, &world.idp_a.issuer(), now() + 600);
    let reply = world
        .route("a", IMAGE, Some(&token))
        .map_err(|e| e.to_string())?;
    if reply.worker_id != "w-warm" {
        return Err(format!("the warm worker should be chosen: {reply:?}"));
    }
    let verifier = RoutingVerifier::from_public_base64(&world.key.public_base64())
        .map_err(|e| e.to_string())?;
    let claims = verifier
        .verify(
            &reply.routing_token,
            RoutingScope {
                worker: "w-warm",
                tenant: "a",
                image: IMAGE,
            },
            now(),
        )
        .map_err(|e| format!("the routing token must verify: {e}"))?;
    if claims.sub != "alice" || reply.expires_unix > now() + 61 {
        return Err(format!("claims {claims:?}, expiry {}", reply.expires_unix));
    }
    for (scope, what) in [
        (
            RoutingScope {
                worker: "w-cold",
                tenant: "a",
                image: IMAGE,
            },
            "another worker",
        ),
        (
            RoutingScope {
                worker: "w-warm",
                tenant: "b",
                image: IMAGE,
            },
            "another tenant",
        ),
        (
            RoutingScope {
                worker: "w-warm",
                tenant: "a",
                image: OTHER_IMAGE,
            },
            "another image",
        ),
    ] {
        if verifier.verify(&reply.routing_token, scope, now()).is_ok() {
            return Err(format!("a routing token must not be valid for {what}"));
        }
    }
    Ok(())
}

fn a_tenants_token_cannot_route_for_another() -> TestResult {
    let world = World::new()?;
    world
        .register("w", &[IMAGE], SECRET)
        .map_err(|e| e.to_string())?;
    // A's user, A's issuer, presented for tenant B.
    let token_a = user_token(&world.idp_a, &world.idp_a.issuer(), now() + 600);
    expect_code(
        world.route("b", IMAGE, Some(&token_a)),
        Code::Unauthenticated,
        "A's token for B",
    )?;
    // Even claiming B's issuer, it is signed by A's key: B's keys refuse it.
    let forged = user_token(&world.idp_a, &world.idp_b.issuer(), now() + 600);
    expect_code(
        world.route("b", IMAGE, Some(&forged)),
        Code::Unauthenticated,
        "A-signed token claiming B",
    )?;
    if world.idp_a.jwks_requests() != 0 {
        return Err(format!(
            "tenant A's IdP was asked {} times about tokens for tenant B",
            world.idp_a.jwks_requests()
        ));
    }
    if world.idp_b.jwks_requests() == 0 {
        return Err("tenant B's keys were never fetched".into());
    }
    // B's own user routes fine.
    let token_b = user_token(&world.idp_b, &world.idp_b.issuer(), now() + 600);
    world
        .route("b", IMAGE, Some(&token_b))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn bad_tokens_images_and_workers_are_refused() -> TestResult {
    let world = World::new()?;
    let good = user_token(&world.idp_a, &world.idp_a.issuer(), now() + 600);
    expect_code(
        world.route("a", IMAGE, Some(&good)),
        Code::Unavailable,
        "no worker yet",
    )?;
    world
        .register("w", &[IMAGE], SECRET)
        .map_err(|e| e.to_string())?;
    expect_code(
        world.route("a", IMAGE, None),
        Code::Unauthenticated,
        "no token",
    )?;
    let expired = user_token(&world.idp_a, &world.idp_a.issuer(), now() - 600);
    expect_code(
        world.route("a", IMAGE, Some(&expired)),
        Code::Unauthenticated,
        "expired",
    )?;
    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
    expect_code(
        world.route("a", IMAGE, Some(&tampered)),
        Code::Unauthenticated,
        "tampered",
    )?;
    expect_code(
        world.route("a", IMAGE, Some("not.a.jwt")),
        Code::Unauthenticated,
        "garbage",
    )?;
    expect_code(
        world.route("a", OTHER_IMAGE, Some(&good)),
        Code::PermissionDenied,
        "image not allowed",
    )?;
    expect_code(
        world.route("nobody", IMAGE, Some(&good)),
        Code::NotFound,
        "unknown tenant",
    )?;
    expect_code(
        world.register("intruder", &[], "wrong"),
        Code::Unauthenticated,
        "bad worker secret",
    )?;
    let mut client = world.client.clone();
    let mut beat = tonic::Request::new(HeartbeatRequest {
        worker_id: "stranger".into(),
        ..HeartbeatRequest::default()
    });
    beat.metadata_mut().insert(
        "authorization",
        format!("Bearer {SECRET}").parse().expect("ascii"),
    );
    let reply = world
        .runtime
        .block_on(client.heartbeat(beat))
        .map_err(|e| e.to_string())?
        .into_inner();
    if reply.known {
        return Err("an unknown worker's heartbeat must ask it to register".into());
    }
    world
        .route("a", IMAGE, Some(&good))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn rotated_idp_keys_are_fetched_again() -> TestResult {
    // Driven through the struct with an explicit clock: the refetch waits 30 s.
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let idp = Idp::start("a")?;
    let key = RoutingKey::generate().map_err(|e| e.to_string())?;
    let scheduler = Scheduler::new(
        &config(vec![tenant("a", &idp)]),
        key,
        SECRET.as_bytes().to_vec(),
    )
    .map_err(|e| e.to_string())?;
    scheduler
        .register(
            RegisterRequest {
                worker_id: "w".into(),
                address: "x:1".into(),
                capacity: 100,
                ..RegisterRequest::default()
            },
            Some(SECRET),
            1_000,
        )
        .map_err(|e| e.to_string())?;
    let first = user_token(&idp, &idp.issuer(), 5_000);
    runtime
        .block_on(scheduler.route("a", IMAGE, false, Some(&first), 1_000))
        .map_err(|e| e.to_string())?;
    let rotated = IdpKey::generate("k-new").map_err(|e| e.to_string())?;
    idp.publish(&rotated);
    let second = rotated
        .mint(&serde_json::json!({"sub": "bob", "iss": idp.issuer(), "aud": "hpcc", "exp": 5_000}))
        .map_err(|e| e.to_string())?;
    if runtime
        .block_on(scheduler.route("a", IMAGE, false, Some(&second), 1_005))
        .is_ok()
    {
        return Err("an unknown key within 30 s of a fetch must not refetch".into());
    }
    scheduler
        .heartbeat(
            HeartbeatRequest {
                worker_id: "w".into(),
                capacity: 100,
                ..HeartbeatRequest::default()
            },
            Some(SECRET),
            1_039,
        )
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(scheduler.route("a", IMAGE, false, Some(&second), 1_040))
        .map_err(|e| format!("after rotation: {e}"))?;
    Ok(())
}

/// The scheduler tests.
pub fn cases() -> Vec<Case> {
    vec![
        (
            "scheduler::idp_coordinates_without_authentication",
            &[],
            idp_coordinates_without_authentication,
        ),
        (
            "scheduler::routes_to_a_worker_with_a_scoped_token",
            &[],
            routes_to_a_worker_with_a_scoped_token,
        ),
        (
            "scheduler::a_tenants_token_cannot_route_for_another",
            &[],
            a_tenants_token_cannot_route_for_another,
        ),
        (
            "scheduler::bad_tokens_images_and_workers_are_refused",
            &[],
            bad_tokens_images_and_workers_are_refused,
        ),
        (
            "scheduler::rotated_idp_keys_are_fetched_again",
            &[],
            rotated_idp_keys_are_fetched_again,
        ),
    ]
}
