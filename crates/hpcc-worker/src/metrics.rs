//! The worker's Prometheus metrics (see `hpcc-metrics` for the conventions): jobs by tenant
//! and outcome with their latency, audit rows written, quota refusals by tenant, and at each
//! scrape the jobs running and waiting and the sessions by state.
//!
//! The tenant label comes from a routing token the scheduler signed, so it is one of the
//! scheduler's configured tenants: bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::WorkerError;

/// A job's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The tenant.
    pub tenant: String,
    /// What became of it (see [`outcome_of`]).
    pub outcome: &'static str,
}

/// One label: an outcome, a state or a tenant.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The outcome.
    pub outcome: &'static str,
}

/// A state's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The state.
    pub state: &'static str,
}

/// A tenant's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// The tenant.
    pub tenant: String,
}

/// The worker's metric families (each a shared handle).
#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    /// Jobs by tenant and outcome.
    pub jobs: Family<JobLabels, Counter>,
    /// A job's time from its arrival to its answer, by outcome (`hit`, `compiled`, `failed`).
    pub job_seconds: Family<OutcomeLabels, Histogram>,
    /// Audit rows written.
    pub audit_rows: Counter,
    /// Jobs refused for a tenant's quota (jobs at once or source bytes held).
    pub quota_refusals: Family<TenantLabels, Counter>,
    /// Jobs running and waiting for a slot, set at each scrape.
    pub jobs_now: Family<StateLabels, Gauge>,
    /// Sessions by state (`ready`, `starting`, `retiring`) and jobs waiting for one, set at
    /// each scrape.
    pub sessions: Family<StateLabels, Gauge>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            jobs: Family::default(),
            job_seconds: Family::new_with_constructor(hpcc_metrics::latency_histogram),
            audit_rows: Counter::default(),
            quota_refusals: Family::default(),
            jobs_now: Family::default(),
            sessions: Family::default(),
        }
    }
}

impl WorkerMetrics {
    /// Registers every family in `registry`.
    pub fn register(&self, registry: &mut hpcc_metrics::Registry) {
        registry.register(
            "hpcc_worker_jobs",
            "Jobs by tenant and outcome",
            self.jobs.clone(),
        );
        registry.register(
            "hpcc_worker_job_seconds",
            "Time from a job's arrival to its answer, by outcome",
            self.job_seconds.clone(),
        );
        registry.register(
            "hpcc_worker_audit_rows",
            "Audit rows written",
            self.audit_rows.clone(),
        );
        registry.register(
            "hpcc_worker_quota_refusals",
            "Jobs refused for a tenant's quota",
            self.quota_refusals.clone(),
        );
        registry.register(
            "hpcc_worker_jobs_now",
            "Jobs running or waiting for a slot",
            self.jobs_now.clone(),
        );
        registry.register(
            "hpcc_worker_sessions",
            "Sessions by state, and jobs waiting for one",
            self.sessions.clone(),
        );
    }
}

/// The `outcome` label of a job's result: `hit`, `compiled` or `failed` (the compiler's
/// exit) for an answer, else why there was none.
pub fn outcome_of(result: &Result<(bool, i32), &WorkerError>) -> &'static str {
    match result {
        Ok((true, _)) => "hit",
        Ok((false, 0)) => "compiled",
        Ok((false, _)) => "failed",
        Err(WorkerError::Quota(_)) => "quota",
        Err(WorkerError::Busy(_)) => "busy",
        Err(WorkerError::BadRequest(_) | WorkerError::Flag(_)) => "bad_request",
        Err(WorkerError::Token(_)) => "token",
        Err(WorkerError::NoImage(..)) => "no_image",
        Err(WorkerError::Runtime(_)) => "runtime_error",
        Err(_) => "error",
    }
}
