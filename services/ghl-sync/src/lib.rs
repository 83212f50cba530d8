//! The ghl-sync service carries everything to GoHighLevel. It keeps, per location, the work
//! that must cross — contacts to upsert, inbound messages to post — as a read model. The GHL
//! client that drains it (OAuth, rate limits, retries) is issue #4; until then the work waits,
//! and `SyncStatus` says so.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{Any, AnyConnection, Row};
use tonic::{Request, Response, Status};
use whatsnap_events::{
    AggregateKind, Event, EventMetadata, GhlInstalled, GhlUninstalled, NewEvent, RecordedEvent,
    StreamId,
};
use whatsnap_eventstore::projection::{ApplyError, Projection};
use whatsnap_eventstore::{EventStore, ExpectedVersion};
use whatsnap_proto::ghlsync::v1 as pb;
use whatsnap_rpc::{ReadDb, ServiceError};

#[derive(Clone)]
pub struct GhlSync {
    store: Arc<dyn EventStore>,
    db: ReadDb,
}

impl GhlSync {
    pub fn new(store: Arc<dyn EventStore>, db: ReadDb) -> Self {
        Self { store, db }
    }

    pub fn grpc(&self) -> pb::ghl_sync_service_server::GhlSyncServiceServer<Self> {
        pb::ghl_sync_service_server::GhlSyncServiceServer::new(self.clone())
    }

    pub fn projection(&self) -> Arc<PendingWork> {
        Arc::new(PendingWork)
    }
}

/// The work waiting to cross to GHL.
pub struct PendingWork;

async fn pending(
    conn: &mut AnyConnection,
    event: &RecordedEvent,
    kind: &str,
    subject: String,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO ghl_pending (kind, subject_id, location_id, position) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (kind, subject_id) DO NOTHING",
    )
    .bind(kind)
    .bind(subject)
    .bind(event.location_id().to_string())
    .bind(event.position as i64)
    .execute(conn)
    .await
    .map(drop)
}

#[async_trait]
impl Projection<Any> for PendingWork {
    fn name(&self) -> &str {
        "ghl_pending"
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE ghl_pending (kind TEXT NOT NULL, subject_id TEXT NOT NULL, location_id TEXT NOT NULL, position BIGINT NOT NULL, PRIMARY KEY (kind, subject_id)); \
         CREATE TABLE ghl_installs (location_id TEXT PRIMARY KEY)",
        ]
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        match event.decode()? {
            Event::ContactCreated(e) => {
                pending(conn, event, "contact_upsert", e.contact_id.to_string()).await?
            }
            Event::ContactTagged(e) => {
                pending(conn, event, "contact_upsert", e.contact_id.to_string()).await?
            }
            Event::InboundMessageReceived(e) => {
                pending(conn, event, "message", e.message_id.to_string()).await?
            }
            Event::GhlContactLinked(e) => {
                sqlx::query(
                    "DELETE FROM ghl_pending WHERE kind = 'contact_upsert' AND subject_id = $1",
                )
                .bind(e.contact_id.to_string())
                .execute(&mut *conn)
                .await?;
            }
            Event::GhlMessagePosted(e) => {
                sqlx::query("DELETE FROM ghl_pending WHERE kind = 'message' AND subject_id = $1")
                    .bind(e.message_id.to_string())
                    .execute(&mut *conn)
                    .await?;
            }
            Event::GhlInstalled(_) => {
                sqlx::query("INSERT INTO ghl_installs (location_id) VALUES ($1) ON CONFLICT (location_id) DO NOTHING")
                    .bind(event.location_id().to_string())
                    .execute(&mut *conn)
                    .await?;
            }
            Event::GhlUninstalled(_) => {
                sqlx::query("DELETE FROM ghl_installs WHERE location_id = $1")
                    .bind(event.location_id().to_string())
                    .execute(&mut *conn)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        for table in ["ghl_pending", "ghl_installs"] {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// Whether the location has the app installed, after its install stream.
pub fn installed_after(events: &[Event]) -> bool {
    events.iter().fold(false, |installed, event| match event {
        Event::GhlInstalled(_) => true,
        Event::GhlUninstalled(_) => false,
        _ => installed,
    })
}

#[tonic::async_trait]
impl pb::ghl_sync_service_server::GhlSyncService for GhlSync {
    async fn record_install(
        &self,
        request: Request<pb::RecordInstallRequest>,
    ) -> Result<Response<pb::RecordInstallResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let stream = StreamId::new(location, AggregateKind::Ghl, "install").expect("a token");
        let history = self
            .store
            .read_stream(&stream, 1, usize::MAX)
            .await
            .map_err(ServiceError::from)?;
        let decoded: Vec<Event> = history
            .iter()
            .map(|e| {
                e.decode()
                    .map_err(|e| ServiceError::FailedPrecondition(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        if installed_after(&decoded) == request.installed {
            return Ok(Response::new(pb::RecordInstallResponse { changed: false }));
        }
        let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
        let event = if request.installed {
            Event::from(GhlInstalled {
                company_id: non_empty(request.company_id),
                install_type: "Location".into(),
                scopes: Vec::new(),
            })
        } else {
            Event::from(GhlUninstalled {
                app_id: non_empty(request.app_id),
            })
        };
        let metadata = EventMetadata::new_correlation().traced(whatsnap_telemetry::current());
        self.store
            .append(
                &stream,
                ExpectedVersion::Exact(history.len() as u64),
                vec![NewEvent::new(&event, metadata)],
            )
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::RecordInstallResponse { changed: true }))
    }

    async fn sync_status(
        &self,
        request: Request<pb::SyncStatusRequest>,
    ) -> Result<Response<pb::SyncStatusResponse>, Status> {
        let location = whatsnap_rpc::location(&request.into_inner().location_id)?;
        let count = |kind: &'static str| {
            let db = self.db.clone();
            let location = location.to_string();
            async move {
                sqlx::query(
                    "SELECT COUNT(*) AS n FROM ghl_pending WHERE location_id = $1 AND kind = $2",
                )
                .bind(location)
                .bind(kind)
                .fetch_one(&db)
                .await
                .map(|row| row.get::<i64, _>("n") as u64)
            }
        };
        let contacts = count("contact_upsert").await.map_err(ServiceError::from)?;
        let messages = count("message").await.map_err(ServiceError::from)?;
        let installed = sqlx::query("SELECT location_id FROM ghl_installs WHERE location_id = $1")
            .bind(location.to_string())
            .fetch_optional(&self.db)
            .await
            .map_err(ServiceError::from)?
            .is_some();
        let waiting_because = match (contacts + messages, installed) {
            (0, _) => String::new(),
            (_, false) => format!("location {location} has not installed the whatsnap app in GHL"),
            (_, true) => "the GHL client is not built yet (issue #4)".to_owned(),
        };
        Ok(Response::new(pb::SyncStatusResponse {
            pending_contact_upserts: contacts,
            pending_messages: messages,
            waiting_because,
        }))
    }
}
