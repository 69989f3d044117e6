//! The route-only scheduler: tells a client which worker to dial, and never sees a compile.
//!
//! [`Scheduler`] is a plain struct holding the tenants (each with its own identity provider),
//! the worker registry and the routing key; every method takes the time, so placement and
//! expiry are tested without sleeping. [`service`] is the thin tonic adapter, the one place
//! errors become gRPC statuses.
//!
//! Tenant isolation: `route` validates the bearer token against the JWKS of the tenant the
//! request names, fetched from that tenant's `jwks_uri` only; an IdP configured for tenant A
//! is never asked about a token for B. An image a tenant is not allowed is refused before any
//! worker is chosen, and so is a paranoid tenant's client that is not in paranoid mode itself
//! (it would keep a cache of its own). The scheduler never sees sources, objects or cache keys.
// Unit tests spawn their own tasks directly: the spawn rule is for the services.
#![cfg_attr(test, allow(clippy::disallowed_methods))]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod jwks;
pub mod metrics;
pub mod registry;
pub mod service;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hpcc_auth::{RoutingClaims, RoutingKey, TenantPolicy};
use hpcc_core::config::{SchedulerConfig, TenantConfig};
use hpcc_proto::scheduler::{
    HeartbeatReply, HeartbeatRequest, RegisterReply, RegisterRequest, RouteReply, TenantIdP,
};

use crate::jwks::{JwksCache, JwksError};
use crate::metrics::{RouteLabels, SchedulerMetrics, StateLabels, TokenLabels};
use crate::registry::Registry;

/// Why a request was refused. Messages name the tenant, image or worker, never a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// No such tenant.
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    /// No or a malformed `authorization` header.
    #[error("no bearer token")]
    NoToken,
    /// The user's token was refused.
    #[error("token refused for tenant {tenant:?}: {source}")]
    Token {
        /// The tenant asked for.
        tenant: String,
        /// Why.
        #[source]
        source: hpcc_auth::AuthError,
    },
    /// The tenant's keys could not be fetched.
    #[error("cannot fetch the keys of tenant {tenant:?}: {source}")]
    Jwks {
        /// The tenant.
        tenant: String,
        /// Why.
        #[source]
        source: JwksError,
    },
    /// The tenant may not use this image.
    #[error("tenant {tenant:?} may not use image {image:?}")]
    ImageNotAllowed {
        /// The tenant.
        tenant: String,
        /// The image.
        image: String,
    },
    /// No worker can take the job now.
    #[error("no worker available for image {0:?}")]
    NoWorker(String),
    /// A worker presented a wrong registration secret.
    #[error("worker {0:?}: bad registration secret")]
    WorkerSecret(String),
    /// A worker's request is malformed.
    #[error("worker {worker:?}: {message}")]
    BadWorker {
        /// The worker id given.
        worker: String,
        /// What is wrong.
        message: String,
    },
    /// A paranoid tenant's route was asked for by a client not in paranoid mode.
    #[error(
        "tenant {0:?} is paranoid: its clients must run in paranoid mode \
         (remote_compile.paranoid = true), keeping no cache of their own"
    )]
    NotParanoid(String),
    /// Signing a routing token failed.
    #[error("signing a routing token: {0}")]
    Signing(hpcc_auth::AuthError),
}

struct Tenant {
    config: TenantConfig,
    jwks: JwksCache,
    /// What its routing tokens tell workers: namespace, paranoid, quotas.
    policy: TenantPolicy,
}

/// The scheduler's state.
pub struct Scheduler {
    tenants: HashMap<String, Tenant>,
    registry: Mutex<Registry>,
    routing_key: RoutingKey,
    routing_ttl: u64,
    worker_secret: Vec<u8>,
    heartbeat_interval_ms: u64,
    metrics: SchedulerMetrics,
}

impl Scheduler {
    /// A scheduler for `config`, with its routing key and the workers' secret already read;
    /// an error if a tenant's `idp_ca` cannot be used.
    pub fn new(
        config: &SchedulerConfig,
        routing_key: RoutingKey,
        worker_secret: Vec<u8>,
    ) -> Result<Scheduler, JwksError> {
        let tenants = config
            .tenants
            .iter()
            .map(|tenant| {
                Ok((
                    tenant.id.clone(),
                    Tenant {
                        config: tenant.clone(),
                        jwks: JwksCache::with_ca(
                            tenant.jwks_uri.clone(),
                            tenant.idp_ca.as_deref(),
                        )?,
                        policy: policy_of(config, tenant),
                    },
                ))
            })
            .collect::<Result<_, JwksError>>()?;
        Ok(Scheduler {
            tenants,
            registry: Mutex::new(
                Registry::new(Duration::from_secs(config.worker_expiry_secs)).with_stale_after(
                    Duration::from_millis(config.heartbeat_interval_ms.saturating_mul(3)),
                ),
            ),
            routing_key,
            routing_ttl: config.routing_ttl_secs,
            worker_secret: worker_secret.trim_ascii().to_vec(),
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            metrics: SchedulerMetrics::default(),
        })
    }

    /// The scheduler's metrics, registered in a new registry.
    pub fn metrics_registry(&self) -> hpcc_metrics::Registry {
        let mut registry = hpcc_metrics::Registry::default();
        self.metrics.register(&mut registry);
        registry
    }

    /// Sets the gauges read at scrape time (the workers by state) for `now`.
    pub fn refresh_metrics(&self, now: u64) {
        let (live, stale) = self.registry().counts(now);
        for (state, count) in [("live", live), ("stale", stale)] {
            self.metrics
                .workers
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    fn tenant(&self, tenant_id: &str) -> Result<&Tenant, SchedulerError> {
        self.tenants
            .get(tenant_id)
            .ok_or_else(|| SchedulerError::UnknownTenant(tenant_id.to_owned()))
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The tenant's OAuth2 coordinates; no authentication.
    pub fn tenant_idp(&self, tenant_id: &str) -> Result<TenantIdP, SchedulerError> {
        let tenant = &self.tenant(tenant_id)?.config;
        Ok(TenantIdP {
            tenant_id: tenant.id.clone(),
            issuer: tenant.issuer.clone(),
            token_endpoint: tenant.token_endpoint.clone(),
            audience: tenant.audience.clone(),
            client_id: tenant.client_id.clone(),
        })
    }

    /// Validates `bearer` for `tenant_id`, checks the image and the client's mode
    /// (`paranoid_client`), picks a worker and signs a routing token for it, carrying the
    /// tenant's policy. `now` is Unix seconds.
    pub async fn route(
        &self,
        tenant_id: &str,
        image: &str,
        paranoid_client: bool,
        bearer: Option<&str>,
        now: u64,
    ) -> Result<RouteReply, SchedulerError> {
        self.route_avoiding(tenant_id, image, paranoid_client, bearer, &[], now)
            .await
    }

    /// [`Scheduler::route`], placing the job on none of `avoid` (workers the client could not
    /// reach on an earlier route).
    #[tracing::instrument(
        name = "route",
        skip(self, bearer, avoid, now),
        fields(tenant = tenant_id, avoid = avoid.len())
    )]
    pub async fn route_avoiding(
        &self,
        tenant_id: &str,
        image: &str,
        paranoid_client: bool,
        bearer: Option<&str>,
        avoid: &[String],
        now: u64,
    ) -> Result<RouteReply, SchedulerError> {
        let started = std::time::Instant::now();
        let reply = async {
            let tenant = self.tenant(tenant_id)?;
            let token = bearer.ok_or(SchedulerError::NoToken)?;
            let user = tenant
                .jwks
                .validate(token, &tenant.config.issuer, &tenant.config.audience, now)
                .await
                .map_err(|error| match error {
                    jwks::ValidateError::Token(source) => SchedulerError::Token {
                        tenant: tenant_id.to_owned(),
                        source,
                    },
                    jwks::ValidateError::Fetch(source) => SchedulerError::Jwks {
                        tenant: tenant_id.to_owned(),
                        source,
                    },
                })?;
            if !tenant
                .config
                .allowed_images
                .iter()
                .any(|allowed| allowed == image)
            {
                return Err(SchedulerError::ImageNotAllowed {
                    tenant: tenant_id.to_owned(),
                    image: image.to_owned(),
                });
            }
            if tenant.policy.paranoid && !paranoid_client {
                return Err(SchedulerError::NotParanoid(tenant_id.to_owned()));
            }
            let worker = self
                .registry()
                .place(image, tenant_id, avoid, now)
                .ok_or_else(|| SchedulerError::NoWorker(image.to_owned()))?;
            let claims = RoutingClaims {
                iss: hpcc_auth::routing::ROUTING_ISSUER.into(),
                tenant: tenant_id.to_owned(),
                image: image.to_owned(),
                worker: worker.id.clone(),
                sub: user.sub,
                iat: now,
                exp: now + self.routing_ttl,
                policy: tenant.policy.clone(),
            };
            let routing_token = self
                .routing_key
                .sign(&claims)
                .map_err(SchedulerError::Signing)?;
            Ok(RouteReply {
                worker_id: worker.id,
                address: worker.address,
                tls_ca_pem: worker.tls_ca_pem,
                tls_server_name: worker.tls_server_name,
                routing_token,
                expires_unix: claims.exp,
                paranoid: tenant.policy.paranoid,
            })
        }
        .await;
        let tenant = if self.tenants.contains_key(tenant_id) {
            tenant_id
        } else {
            "unknown"
        };
        self.metrics
            .routes
            .get_or_create(&RouteLabels {
                tenant: tenant.to_owned(),
                result: metrics::result_of(&reply.as_ref().map(|_| ())),
            })
            .inc();
        if let Err(SchedulerError::Token { source, .. }) = &reply {
            self.metrics
                .refused_tokens
                .get_or_create(&TokenLabels {
                    tenant: tenant.to_owned(),
                    reason: metrics::token_reason(source),
                })
                .inc();
        }
        self.metrics
            .route_seconds
            .observe(started.elapsed().as_secs_f64());
        reply
    }

    fn check_secret(&self, worker: &str, secret: Option<&str>) -> Result<(), SchedulerError> {
        let given = secret.unwrap_or_default().as_bytes();
        let expected = &self.worker_secret;
        // Constant time in the secret's content (the length is not secret).
        let same = constant_time_eq::constant_time_eq(given, expected);
        if same && !expected.is_empty() {
            Ok(())
        } else {
            Err(SchedulerError::WorkerSecret(worker.to_owned()))
        }
    }

    /// Registers (or re-registers) a worker.
    pub fn register(
        &self,
        request: RegisterRequest,
        secret: Option<&str>,
        now: u64,
    ) -> Result<RegisterReply, SchedulerError> {
        let registered = |result: &'static str| {
            self.metrics
                .registrations
                .get_or_create(&StateLabels { state: result })
                .inc();
        };
        if let Err(error) = self.check_secret(&request.worker_id, secret) {
            registered("bad_secret");
            return Err(error);
        }
        if request.worker_id.is_empty() || request.address.is_empty() || request.capacity == 0 {
            registered("malformed");
            return Err(SchedulerError::BadWorker {
                worker: request.worker_id,
                message: "needs an id, an address and a capacity above 0".into(),
            });
        }
        self.registry().register(request, now);
        registered("accepted");
        Ok(RegisterReply {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
        })
    }

    /// Records a worker's load; `known = false` asks it to register again.
    pub fn heartbeat(
        &self,
        request: HeartbeatRequest,
        secret: Option<&str>,
        now: u64,
    ) -> Result<HeartbeatReply, SchedulerError> {
        self.check_secret(&request.worker_id, secret)?;
        Ok(HeartbeatReply {
            known: self.registry().heartbeat(request, now),
        })
    }
}

/// The policy `tenant`'s routing tokens carry, from the scheduler's config.
fn policy_of(config: &SchedulerConfig, tenant: &TenantConfig) -> TenantPolicy {
    let bytes = |size: &Option<hpcc_core::config::ByteSize>| size.map(|size| size.0);
    TenantPolicy {
        namespace: config.namespace_of(&tenant.id),
        paranoid: tenant.paranoid,
        max_jobs: tenant.quota.max_jobs,
        max_source_bytes: bytes(&tenant.quota.max_source_bytes),
        max_cache_bytes: bytes(&tenant.quota.max_cache_bytes),
        max_kept_source_bytes: bytes(&tenant.quota.max_kept_source_bytes),
        max_snapshot_bytes: bytes(&tenant.quota.max_snapshot_bytes),
    }
}
