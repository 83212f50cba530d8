//! The gateway: whatsnap's one public edge. It serves the event log API
//! (`whatsnap.events.v1`: read a stream, tail the log, a contact's history), forwards the other
//! services' gRPC APIs when they run in other processes, and answers the HTTP health checks
//! and Prometheus' scrapes (`/metrics`, the assignment report's figures).
//! It owns no events; its `contact_timeline` read model indexes, per contact, every event that
//! touched it with a one-line summary of what happened and why.

mod application;
mod forward;
mod health;
mod metrics;
mod replay;
mod timeline;
mod traffic;
mod webhooks;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use sqlx::Row;
use tonic::{Request, Response, Status};
use whatsnap_events::{RecordedEvent, StreamId, contact_id_for};
use whatsnap_eventstore::EventStore;
use whatsnap_proto::events::v1 as pb;
use whatsnap_rpc::{ReadDb, ServiceError};

pub use application::{Application, HttpConfig, HttpLimits, limited};
pub use forward::Remote;
pub use health::{Follower, Readiness, router};
pub use metrics::{MetricsConfig, routes as metrics_routes};
pub use replay::{CLAIM_LEASE, Claim, Clock, ReplayGuard, Verdict};
pub use timeline::TimelineProjection;
pub use traffic::TrafficProjection;
pub use webhooks::{MAX_WEBHOOK_BYTES, Webhooks, routes as webhook_routes};
pub use whatsnap_ghl::webhook::AppIdentity as GhlApp;

#[derive(Clone)]
pub struct Gateway {
    store: Arc<dyn EventStore>,
    db: ReadDb,
    limits: ApiLimits,
    /// One permit per `Tail` that may follow the log at once.
    tails: Arc<tokio::sync::Semaphore>,
}

/// Bounds on what one call of the event log API may ask of the process.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// The most events one `ReadStream` page holds; a bigger `limit` is clamped to it.
    pub max_page: usize,
    /// How many `Tail` calls may follow the log at once; one more is refused.
    pub max_tails: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_page: 1000,
            max_tails: 64,
        }
    }
}

impl Gateway {
    pub fn new(store: Arc<dyn EventStore>, db: ReadDb) -> Self {
        Self::with_limits(store, db, ApiLimits::default())
    }

    pub fn with_limits(store: Arc<dyn EventStore>, db: ReadDb, limits: ApiLimits) -> Self {
        Self {
            store,
            db,
            limits,
            tails: Arc::new(tokio::sync::Semaphore::new(limits.max_tails)),
        }
    }

    pub fn events_grpc(&self) -> pb::events_service_server::EventsServiceServer<Self> {
        pb::events_service_server::EventsServiceServer::new(self.clone())
    }

    /// The gateway's read models: the contacts' timelines and the locations' traffic.
    pub fn projections(
        &self,
    ) -> Vec<Arc<dyn whatsnap_eventstore::projection::Projection<sqlx::Any>>> {
        vec![Arc::new(TimelineProjection), Arc::new(TrafficProjection)]
    }
}

pub fn event_to_pb(event: &RecordedEvent) -> pb::Event {
    pb::Event {
        event_id: event.id.to_string(),
        stream_id: event.stream.to_string(),
        version: event.version,
        position: event.position,
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        occurred_at: event.occurred_at.to_rfc3339(),
        correlation_id: event.metadata.correlation_id.to_string(),
        causation_id: event
            .metadata
            .causation_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        traceparent: event.metadata.trace.traceparent.clone().unwrap_or_default(),
        payload_json: whatsnap_rpc::payload_json(event),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::events_service_server::EventsService for Gateway {
    async fn read_stream(
        &self,
        request: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<pb::ReadStreamResponse>, Status> {
        let request = request.into_inner();
        let stream: StreamId = request
            .stream_id
            .parse()
            .map_err(|e: whatsnap_events::IdError| ServiceError::InvalidArgument(e.to_string()))?;
        // A page holds at most `max_page` events: a client asking for more gets a full page
        // and reads on from its last version, as it would from any page.
        let limit = match request.limit {
            0 => self.limits.max_page,
            n => (n as usize).min(self.limits.max_page),
        };
        let events = self
            .store
            .read_stream(&stream, request.from_version.max(1), limit)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ReadStreamResponse {
            events: events.iter().map(event_to_pb).collect(),
        }))
    }

    type TailStream = EventStream;

    async fn tail(
        &self,
        request: Request<pb::TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let Ok(permit) = self.tails.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{} tails already follow the log, the most this server allows: try again later",
                self.limits.max_tails
            )));
        };
        let store = self.store.clone();
        // Only the locations the caller may see (the authorization layer put it there).
        let caller = request.extensions().get::<whatsnap_auth::Caller>().cloned();
        let request = request.into_inner();
        let mut after = if request.from_now {
            store.head_position().await.map_err(ServiceError::from)?
        } else {
            request.after_position
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            // Held while the tail follows the log: freed when its client goes.
            let _permit = permit;
            loop {
                let events = match store.read_all(after, 500).await {
                    Ok(events) => events,
                    Err(err) => {
                        let _ = sender
                            .send(Err(Status::from(ServiceError::from(err))))
                            .await;
                        return;
                    }
                };
                if events.is_empty() {
                    tokio::select! {
                        () = sender.closed() => return,
                        () = tokio::time::sleep(Duration::from_millis(250)) => continue,
                    }
                }
                for event in events {
                    after = event.position;
                    let visible = caller
                        .as_ref()
                        .is_some_and(|c| c.may_read(event.stream.location()));
                    if !visible {
                        continue;
                    }
                    if sender.send(Ok(event_to_pb(&event))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn contact_history(
        &self,
        request: Request<pb::ContactHistoryRequest>,
    ) -> Result<Response<pb::ContactHistoryResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let phone = whatsnap_rpc::phone(&request.phone)?;
        let contact_id = contact_id_for(&location, &phone);
        let rows = sqlx::query(
            "SELECT position, summary FROM contact_timeline WHERE contact_id = $1 ORDER BY position",
        )
        .bind(contact_id.to_string())
        .fetch_all(&self.db)
        .await
        .map_err(ServiceError::from)?;
        if rows.is_empty() {
            return Err(ServiceError::NotFound(format!(
                "no event has touched a contact with phone {} in location {location}",
                phone.masked()
            ))
            .into());
        }
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let position = row.get::<i64, _>("position") as u64;
            let event = self
                .store
                .read_all(position - 1, 1)
                .await
                .map_err(ServiceError::from)?
                .into_iter()
                .next()
                .filter(|e| e.position == position);
            entries.push(pb::HistoryEntry {
                event: event.as_ref().map(event_to_pb),
                summary: row.get("summary"),
            });
        }
        Ok(Response::new(pb::ContactHistoryResponse {
            contact_id: contact_id.to_string(),
            entries,
        }))
    }

    async fn traffic(
        &self,
        request: Request<pb::TrafficRequest>,
    ) -> Result<Response<pb::TrafficResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let from_day = chrono::NaiveDate::parse_from_str(request.from_day.trim(), "%Y-%m-%d")
            .map_err(|_| {
                ServiceError::InvalidArgument(format!(
                    "from_day {:?} is not a day (YYYY-MM-DD)",
                    request.from_day
                ))
            })?;
        let traffic = traffic::read(&self.db, location.as_str(), &from_day.to_string())
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(traffic))
    }
}
