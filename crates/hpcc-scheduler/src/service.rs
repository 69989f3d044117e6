//! The tonic adapter: `hpcc.scheduler.v1.Scheduler` over [`crate::Scheduler`], and the one
//! conversion of [`SchedulerError`] into a gRPC status.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hpcc_proto::scheduler::scheduler_server::{self, SchedulerServer};
use hpcc_proto::scheduler::{
    GetTenantIdPRequest, HeartbeatReply, HeartbeatRequest, RegisterReply, RegisterRequest,
    RouteReply, RouteRequest, TenantIdP,
};
use tonic::{Request, Response, Status};

use crate::{Scheduler, SchedulerError};

impl From<SchedulerError> for Status {
    fn from(error: SchedulerError) -> Status {
        // The whole cause chain: the client's log is where an operator looks first.
        let message = hpcc_core::report::chain(&error);
        match error {
            SchedulerError::UnknownTenant(_) => Status::not_found(message),
            SchedulerError::NoToken
            | SchedulerError::Token { .. }
            | SchedulerError::WorkerSecret(_) => Status::unauthenticated(message),
            SchedulerError::ImageNotAllowed { .. } | SchedulerError::NotParanoid(_) => {
                Status::permission_denied(message)
            }
            SchedulerError::Jwks { .. } | SchedulerError::NoWorker(_) => {
                Status::unavailable(message)
            }
            SchedulerError::BadWorker { .. } => Status::invalid_argument(message),
            SchedulerError::Signing(_) => Status::internal(message),
        }
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The bearer token of a request's `authorization` metadata.
pub fn bearer<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// The gRPC service.
#[derive(Clone)]
pub struct SchedulerService {
    scheduler: Arc<Scheduler>,
}

impl SchedulerService {
    /// The service over `scheduler`, ready to add to a tonic server.
    pub fn server(scheduler: Arc<Scheduler>) -> SchedulerServer<SchedulerService> {
        SchedulerServer::new(SchedulerService { scheduler })
    }
}

#[tonic::async_trait]
impl scheduler_server::Scheduler for SchedulerService {
    async fn get_tenant_id_p(
        &self,
        request: Request<GetTenantIdPRequest>,
    ) -> Result<Response<TenantIdP>, Status> {
        Ok(Response::new(
            self.scheduler.tenant_idp(&request.get_ref().tenant_id)?,
        ))
    }

    async fn route(&self, request: Request<RouteRequest>) -> Result<Response<RouteReply>, Status> {
        let token = bearer(&request);
        let body = request.into_inner();
        let reply = self
            .scheduler
            .route_avoiding(
                &body.tenant_id,
                &body.image_digest,
                body.paranoid,
                token.as_deref(),
                &body.avoid_workers,
                now(),
            )
            .await;
        match reply {
            Ok(reply) => Ok(Response::new(reply)),
            Err(error) => {
                tracing::info!(tenant = %body.tenant_id, %error, "route refused");
                Err(error.into())
            }
        }
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let secret = bearer(&request);
        Ok(Response::new(self.scheduler.register(
            request.into_inner(),
            secret.as_deref(),
            now(),
        )?))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let secret = bearer(&request);
        Ok(Response::new(self.scheduler.heartbeat(
            request.into_inner(),
            secret.as_deref(),
            now(),
        )?))
    }
}
