//! The scheduler's Prometheus metrics (see `hpcc-metrics` for the conventions): route
//! decisions by tenant and result with their latency, refused tokens by reason, worker
//! registrations, and the workers by state, read at each scrape.
//!
//! The tenant label is a configured tenant id or `unknown`: a client can name any tenant, and
//! a label must stay bounded.

use hpcc_metrics::Registry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::SchedulerError;

/// A route decision's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// A configured tenant, or `unknown`.
    pub tenant: String,
    /// `routed` or why not (see [`result_of`]).
    pub result: &'static str,
}

/// A refused user token's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The tenant.
    pub tenant: String,
    /// Why it was refused (see [`token_reason`]).
    pub reason: &'static str,
}

/// A labelled state or result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The state.
    pub state: &'static str,
}

/// The scheduler's metric families (cheap to clone: each is a shared handle).
#[derive(Clone, Debug)]
pub struct SchedulerMetrics {
    /// Route requests by tenant and result.
    pub routes: Family<RouteLabels, Counter>,
    /// How long a route decision took (token validation included).
    pub route_seconds: Histogram,
    /// User tokens refused, by tenant and reason.
    pub refused_tokens: Family<TokenLabels, Counter>,
    /// Worker registrations by result (`accepted`, `bad_secret`, `malformed`).
    pub registrations: Family<StateLabels, Counter>,
    /// Workers by state (`live`: heard from within three heartbeats; `stale`: routed to only
    /// when no live worker can take a job), set at each scrape.
    pub workers: Family<StateLabels, Gauge>,
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        SchedulerMetrics {
            routes: Family::default(),
            route_seconds: hpcc_metrics::latency_histogram(),
            refused_tokens: Family::default(),
            registrations: Family::default(),
            workers: Family::default(),
        }
    }
}

impl SchedulerMetrics {
    /// Registers every family in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hpcc_scheduler_routes",
            "Route requests by tenant and result",
            self.routes.clone(),
        );
        registry.register(
            "hpcc_scheduler_route_seconds",
            "Time to decide a route, token validation included",
            self.route_seconds.clone(),
        );
        registry.register(
            "hpcc_scheduler_refused_tokens",
            "User tokens refused, by tenant and reason",
            self.refused_tokens.clone(),
        );
        registry.register(
            "hpcc_scheduler_registrations",
            "Worker registrations by result",
            self.registrations.clone(),
        );
        registry.register(
            "hpcc_scheduler_workers",
            "Registered workers by state",
            self.workers.clone(),
        );
    }
}

/// The `result` label of a route's outcome.
pub fn result_of(outcome: &Result<(), &SchedulerError>) -> &'static str {
    match outcome {
        Ok(()) => "routed",
        Err(SchedulerError::UnknownTenant(_)) => "unknown_tenant",
        Err(SchedulerError::NoToken) => "no_token",
        Err(SchedulerError::Token { .. }) => "token_refused",
        Err(SchedulerError::Jwks { .. }) => "idp_unreachable",
        Err(SchedulerError::ImageNotAllowed { .. }) => "image_not_allowed",
        Err(SchedulerError::NotParanoid(_)) => "not_paranoid",
        Err(SchedulerError::NoWorker(_)) => "no_worker",
        Err(_) => "error",
    }
}

/// The `reason` label of a refused user token.
pub fn token_reason(error: &hpcc_auth::AuthError) -> &'static str {
    use hpcc_auth::AuthError;
    #[allow(unreachable_patterns)]
    match error {
        AuthError::Malformed(_) => "malformed",
        AuthError::Algorithm(_) => "algorithm",
        AuthError::UnknownKey(_) => "unknown_key",
        AuthError::Signature => "bad_signature",
        AuthError::Issuer { .. } => "wrong_issuer",
        AuthError::Audience(_) => "wrong_audience",
        AuthError::Expired(_) => "expired",
        AuthError::NotYetValid(_) => "not_yet_valid",
        AuthError::Scope { .. } => "wrong_scope",
        AuthError::Key(_) => "key",
        _ => "other",
    }
}
