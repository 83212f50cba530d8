//! The rig of ghl-sync's tests: its projection and worker over a fresh embedded store, beside
//! a fake GHL.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tonic::Request;
use uuid::Uuid;
use whatsnap_events::{
    AggregateKind, ContactAssigned, ContactCreated, Event, EventMetadata, InboundMessageReceived,
    LocationId, NewEvent, PhoneNumber, StreamId, contact_id_for, inbound_message_id_for,
};
use whatsnap_eventstore::projection::ProjectionRunner;
use whatsnap_eventstore::{EventStore, ExpectedVersion};
use whatsnap_ghl::client::{GhlClient, GhlConfig};
use whatsnap_ghl::ratelimit::{Limits, RateLimiter};
use whatsnap_ghl_sync::{GhlSync, PendingWork, Worker, WorkerConfig};
use whatsnap_proto::ghlsync::v1 as pb;
use whatsnap_proto::ghlsync::v1::ghl_sync_service_server::GhlSyncService;
use whatsnap_testkit::{FakeGhl, FakeGhlUser, TestSqlite};

pub const LOCATION: &str = "locAssign";
pub const PHONE: &str = "+5511987654321";
pub const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub fn user(id: &str, name: &str, deleted: bool) -> FakeGhlUser {
    FakeGhlUser {
        id: id.into(),
        name: name.into(),
        email: format!("{id}@example.com"),
        role: "user".into(),
        deleted,
    }
}

/// ghl-sync's projection and worker over a fresh embedded store, beside a fake GHL.
pub struct Rig {
    _sqlite: TestSqlite,
    pub store: Arc<dyn EventStore>,
    pub db: sqlx::AnyPool,
    pub ghl: FakeGhl,
    pub sync: GhlSync,
    pub tasks: Vec<JoinHandle<()>>,
}

impl Rig {
    /// With the worker listing users every `users_refresh`, or (`None`) the projection alone.
    pub async fn start(users_refresh: Option<Duration>) -> Self {
        Self::start_with(users_refresh, Duration::from_millis(20), false).await
    }

    /// With the worker looking at its queue every `poll`, and (`woken`) whenever the queue's
    /// read model moves.
    pub async fn start_with(users_refresh: Option<Duration>, poll: Duration, woken: bool) -> Self {
        sqlx::any::install_default_drivers();
        let sqlite = TestSqlite::new().unwrap();
        let store: Arc<dyn EventStore> = Arc::new(sqlite.store().await.unwrap());
        let db = sqlx::any::AnyPoolOptions::new()
            .max_connections(4)
            .connect(&format!("sqlite://{}", sqlite.config.path.display()))
            .await
            .unwrap();
        let ghl = FakeGhl::start().await.unwrap();
        let config = worker_config(&ghl, poll, users_refresh);
        let mut sync = GhlSync::new(store.clone(), db.clone()).with_client(config);
        let runner =
            ProjectionRunner::new(store.clone(), db.clone(), Arc::new(PendingWork::default()));
        if woken {
            sync.queue_moves_with(runner.progress());
        }
        // The read model's tables, before anything asks it.
        runner.prepare().await.unwrap();
        let mut tasks = vec![tokio::spawn(async move {
            runner.run_until(std::future::pending()).await.unwrap();
        })];
        if users_refresh.is_some() {
            let worker = sync.worker().unwrap();
            tasks.push(tokio::spawn(worker.run(std::future::pending())));
        }
        Self {
            _sqlite: sqlite,
            store,
            db,
            ghl,
            sync,
            tasks,
        }
    }

    /// The GHL worker of another process on the same log and database: its own client and
    /// pacing.
    pub fn worker_of_another_process(&self) -> Arc<Worker> {
        let config = worker_config(&self.ghl, Duration::from_millis(20), None);
        GhlSync::new(self.store.clone(), self.db.clone())
            .with_client(config)
            .worker()
            .unwrap()
    }

    pub async fn connect(&self, company_id: &str) {
        self.connect_location(LOCATION, company_id).await;
    }

    pub async fn connect_location(&self, location: &str, company_id: &str) {
        let token = format!("pit-{location}-0000");
        self.ghl.add_private_token(location, &token);
        let request = pb::ConnectPrivateTokenRequest {
            location_id: location.into(),
            token,
            company_id: company_id.into(),
        };
        self.sync
            .connect_private_token(Request::new(request))
            .await
            .unwrap();
    }

    pub async fn append(&self, stream: StreamId, events: Vec<Event>) {
        let metadata = EventMetadata::new_correlation();
        let events = events
            .iter()
            .map(|e| NewEvent::new(e, metadata.clone()))
            .collect();
        self.store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }

    /// The contact as the contacts service records it: created, with its account's tag.
    pub async fn contact_messages(&self) -> Uuid {
        self.contact_messages_at(&location()).await
    }

    /// As [`Self::contact_messages`], in `location`.
    pub async fn contact_messages_at(&self, location: &LocationId) -> Uuid {
        let contact_id = contact_id_for(location, &PhoneNumber::parse(PHONE).unwrap());
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Contact, contact_id);
        let created = ContactCreated {
            contact_id,
            phone: PHONE.into(),
            name: Some("Maria Silva".into()),
            first_account_id: None,
            platform: None,
            tag: Some("sales".into()),
        };
        self.append(stream, vec![created.into()]).await;
        contact_id
    }

    /// The assignment service's decision.
    pub async fn assign(&self, contact_id: Uuid, user_id: &str) {
        let stream = StreamId::for_uuid(location(), AggregateKind::Assignment, contact_id);
        let decision = ContactAssigned {
            contact_id,
            account_id: None,
            user_id: user_id.into(),
            rule: "round_robin#1".into(),
            reason: "next in turn".into(),
            candidates: Vec::new(),
            trigger: None,
        };
        self.append(stream, vec![decision.into()]).await;
    }

    pub async fn status(&self) -> pb::SyncStatusResponse {
        let request = pb::SyncStatusRequest {
            location_id: LOCATION.into(),
        };
        self.sync
            .sync_status(Request::new(request))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn pending_assignments(&self) -> u64 {
        self.status().await.pending_assignments
    }

    pub async fn owner_in_ghl(&self) -> Option<String> {
        self.ghl
            .contact_by_phone(LOCATION, PHONE)
            .and_then(|c| c.assigned_to)
    }

    pub async fn events(&self, stream: &StreamId) -> Vec<Event> {
        self.store
            .read_stream(stream, 1, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| e.decode().unwrap())
            .collect()
    }

    pub fn requests(&self, method: &str, path: &str) -> Vec<Option<Value>> {
        self.ghl
            .requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.starts_with(path))
            .map(|r| r.body)
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A worker's configuration against `ghl`, as the fake's OAuth app, with GHL's own limits and
/// pacing of its own.
pub fn worker_config(
    ghl: &FakeGhl,
    poll: Duration,
    users_refresh: Option<Duration>,
) -> WorkerConfig {
    let client = GhlClient::new(
        GhlConfig {
            api_base: ghl.base_url(),
            client_id: Some(FakeGhl::CLIENT_ID.into()),
            client_secret: Some(FakeGhl::CLIENT_SECRET.into()),
            ..GhlConfig::default()
        },
        Arc::new(RateLimiter::new(Limits::default())),
    );
    let key = whatsnap_secrets::SecretKey::from_base64(SECRET_KEY).unwrap();
    let mut config = WorkerConfig::new(client, key);
    config.poll = poll;
    config.max_backoff = Duration::from_millis(500);
    config.users_refresh = users_refresh.unwrap_or(Duration::from_secs(600));
    config
}

/// An inbound text from the rig's contact, as session records it.
pub fn inbound(provider_id: &str, body: &str) -> (StreamId, InboundMessageReceived) {
    let account_id = uuid::Uuid::nil();
    let message_id = inbound_message_id_for(account_id, provider_id);
    let stream = StreamId::for_uuid(location(), AggregateKind::Message, message_id);
    let event = InboundMessageReceived {
        message_id,
        account_id,
        provider_message_id: provider_id.into(),
        from: PHONE.into(),
        to: None,
        body: body.into(),
        sender_name: None,
        // GHL keeps the date to the millisecond.
        received_at: chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis())
            .unwrap(),
        attachments: Vec::new(),
        from_me: false,
        sender_lid: None,
    };
    (stream, event)
}

pub fn location() -> LocationId {
    LocationId::parse(LOCATION).unwrap()
}
