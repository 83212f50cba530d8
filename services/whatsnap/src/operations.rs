//! The operations gRPC service: the events projections parked, and an operator's retry or skip.
//! Every process serves it: the parked events live in the read-model database the processes
//! share, and a retry reaches the runner that owns the projection through its row there.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use whatsnap_eventstore::EventStore;
use whatsnap_eventstore::parked::{self, ParkedError, ParkedEvent};
use whatsnap_proto::operations::v1 as pb;
use whatsnap_rpc::{ReadDb, ServiceError};

/// How long a retry waits for the owning runner by default; it polls every second.
const RETRY_WAIT: Duration = Duration::from_secs(30);

pub struct Operations {
    store: Arc<dyn EventStore>,
    db: ReadDb,
}

impl Operations {
    pub fn new(store: Arc<dyn EventStore>, db: ReadDb) -> Self {
        Self { store, db }
    }

    pub fn grpc(self) -> pb::operations_service_server::OperationsServiceServer<Self> {
        pb::operations_service_server::OperationsServiceServer::new(self)
    }
}

fn service_error(err: ParkedError) -> ServiceError {
    match err {
        ParkedError::NotFound(message) => ServiceError::NotFound(message),
        err @ ParkedError::AlreadyResolved { .. } => {
            ServiceError::FailedPrecondition(err.to_string())
        }
        ParkedError::Database(err) => ServiceError::Database(err),
        ParkedError::Store(err) => ServiceError::Store(err),
    }
}

fn to_pb(parked: ParkedEvent) -> pb::ParkedEvent {
    pb::ParkedEvent {
        projection: parked.projection,
        position: parked.position,
        event_id: parked.event_id,
        stream_id: parked.stream_id,
        event_type: parked.event_type,
        reason: parked.reason,
        attempts: parked.attempts,
        status: parked.status.to_string(),
        parked_at: parked.parked_at,
        resolved_at: parked.resolved_at.unwrap_or_default(),
        requested_by: parked.requested_by.unwrap_or_default(),
    }
}

fn requested_by(request: &pb::ParkedEventRequest) -> Option<&str> {
    Some(request.requested_by.as_str()).filter(|by| !by.is_empty())
}

#[tonic::async_trait]
impl pb::operations_service_server::OperationsService for Operations {
    #[tracing::instrument(skip_all)]
    async fn list_parked(
        &self,
        request: Request<pb::ListParkedRequest>,
    ) -> Result<Response<pb::ListParkedResponse>, Status> {
        let events = parked::list(&self.db, request.into_inner().include_resolved)
            .await
            .map_err(service_error)?;
        Ok(Response::new(pb::ListParkedResponse {
            events: events.into_iter().map(to_pb).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(projection, position))]
    async fn retry_parked(
        &self,
        request: Request<pb::ParkedEventRequest>,
    ) -> Result<Response<pb::ParkedEvent>, Status> {
        let request = request.into_inner();
        record(&request);
        let (projection, position) = (request.projection.as_str(), request.position);
        parked::request_retry(&self.db, projection, position, requested_by(&request))
            .await
            .map_err(service_error)?;
        let wait = match request.wait_seconds {
            0 => RETRY_WAIT,
            seconds => Duration::from_secs(seconds.into()),
        };
        let parked = parked::wait_for_retry(&self.db, projection, position, wait)
            .await
            .map_err(service_error)?;
        Ok(Response::new(to_pb(parked)))
    }

    #[tracing::instrument(skip_all, fields(projection, position))]
    async fn skip_parked(
        &self,
        request: Request<pb::ParkedEventRequest>,
    ) -> Result<Response<pb::ParkedEvent>, Status> {
        let request = request.into_inner();
        record(&request);
        let parked = parked::skip(
            &self.db,
            self.store.as_ref(),
            &request.projection,
            request.position,
            requested_by(&request),
        )
        .await
        .map_err(service_error)?;
        tracing::info!(
            projection = %parked.projection,
            position = parked.position,
            event_type = %parked.event_type,
            "parked event skipped"
        );
        Ok(Response::new(to_pb(parked)))
    }
}

fn record(request: &pb::ParkedEventRequest) {
    let span = tracing::Span::current();
    span.record("projection", request.projection.as_str());
    span.record("position", request.position);
}
