//! The assignment service decides which GHL user owns a contact and records every decision,
//! with its reason, as an event. Until rules are set (the rules engine is issue #5), every new
//! contact is recorded as left unassigned, with that reason, so that a trace says why.

pub mod engine;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{Any, AnyConnection, Row};
use tonic::{Request, Response, Status};
use uuid::Uuid;
use whatsnap_events::{
    AggregateKind, AssignmentRulesChanged, AssignmentSkipped, ContactCreated, Event, EventMetadata,
    LocationId, NewEvent, RecordedEvent, StreamId,
};
use whatsnap_eventstore::projection::{ApplyError, Projection};
use whatsnap_eventstore::{EventStore, ExpectedVersion, StoreError};
use whatsnap_proto::assignment::v1 as pb;
use whatsnap_rpc::{ReadDb, ServiceError};

pub const NO_RULES: &str = "no assignment rules are set for this account or its location";

#[derive(Clone)]
pub struct Assignment {
    store: Arc<dyn EventStore>,
    db: ReadDb,
}

impl Assignment {
    pub fn new(store: Arc<dyn EventStore>, db: ReadDb) -> Self {
        Self { store, db }
    }

    pub fn grpc(&self) -> pb::assignment_service_server::AssignmentServiceServer<Self> {
        pb::assignment_service_server::AssignmentServiceServer::new(self.clone())
    }

    pub fn projection(&self) -> Arc<AssignmentProjection> {
        Arc::new(AssignmentProjection {
            store: self.store.clone(),
        })
    }
}

/// Decides for each new contact; projects every decision.
pub struct AssignmentProjection {
    store: Arc<dyn EventStore>,
}

/// The decision for a new contact while no rules exist.
pub fn decide_for_new_contact(contact: &ContactCreated) -> Event {
    Event::from(AssignmentSkipped {
        contact_id: contact.contact_id,
        account_id: contact.first_account_id,
        reason: NO_RULES.to_owned(),
        candidates: Vec::new(),
    })
}

async fn record(
    conn: &mut AnyConnection,
    event: &RecordedEvent,
    contact_id: String,
    user_id: &str,
    rule: &str,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO assignment_decisions (contact_id, location_id, user_id, rule, reason, position) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (contact_id) DO UPDATE SET \
         user_id = excluded.user_id, rule = excluded.rule, reason = excluded.reason, position = excluded.position",
    )
    .bind(contact_id)
    .bind(event.location_id().to_string())
    .bind(user_id)
    .bind(rule)
    .bind(reason)
    .bind(event.position as i64)
    .execute(conn)
    .await
    .map(drop)
}

#[async_trait]
impl Projection<Any> for AssignmentProjection {
    fn name(&self) -> &str {
        "assignment"
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE assignment_decisions (contact_id TEXT PRIMARY KEY, location_id TEXT NOT NULL, user_id TEXT NOT NULL, rule TEXT NOT NULL, reason TEXT NOT NULL, position BIGINT NOT NULL)",
            "CREATE TABLE assignment_users (location_id TEXT NOT NULL, user_id TEXT NOT NULL, \
             name TEXT NOT NULL, email TEXT, role TEXT, active BIGINT NOT NULL, \
             PRIMARY KEY (location_id, user_id))",
        ]
    }

    async fn react(&self, event: &RecordedEvent) -> Result<(), ApplyError> {
        if event.event_type != "ContactCreated" {
            return Ok(());
        }
        let Event::ContactCreated(contact) = event.decode()? else {
            return Ok(());
        };
        let stream = StreamId::for_uuid(
            event.location_id().clone(),
            AggregateKind::Assignment,
            contact.contact_id,
        );
        let decision = decide_for_new_contact(&contact);
        // The contact's first decision: written once even if this event is handled again.
        match self
            .store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::new(
                    &decision,
                    EventMetadata::caused_by(event).traced(whatsnap_telemetry::current()),
                )],
            )
            .await
        {
            Ok(_) | Err(StoreError::WrongExpectedVersion { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        match event.decode()? {
            Event::ContactAssigned(e) => {
                record(
                    conn,
                    event,
                    e.contact_id.to_string(),
                    &e.user_id,
                    &e.rule,
                    &e.reason,
                )
                .await?;
            }
            Event::GhlUserSynced(e) => {
                sqlx::query(
                    "INSERT INTO assignment_users (location_id, user_id, name, email, role, active) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (location_id, user_id) DO UPDATE SET \
                     name = excluded.name, email = excluded.email, role = excluded.role, active = excluded.active",
                )
                .bind(event.location_id().to_string())
                .bind(e.user_id)
                .bind(e.name)
                .bind(e.email)
                .bind(e.role)
                .bind(i64::from(!e.deleted))
                .execute(&mut *conn)
                .await?;
            }
            Event::AssignmentSkipped(e) => {
                record(conn, event, e.contact_id.to_string(), "", "none", &e.reason).await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM assignment_decisions")
            .execute(conn)
            .await
            .map(drop)
    }
}

/// The stream that holds the rules of an account, or of the location when `account` is `None`.
fn rules_stream(location: &LocationId, account: Option<Uuid>) -> StreamId {
    let id = match account {
        Some(account) => format!("rules_{}", account.simple()),
        None => "rules_location".to_owned(),
    };
    StreamId::new(location.clone(), AggregateKind::Assignment, id).expect("rules ids are tokens")
}

fn account_arg(value: &str) -> Result<Option<Uuid>, ServiceError> {
    match value.trim() {
        "" => Ok(None),
        id => whatsnap_rpc::uuid("account id", id).map(Some),
    }
}

#[tonic::async_trait]
impl pb::assignment_service_server::AssignmentService for Assignment {
    async fn set_rules(
        &self,
        request: Request<pb::SetRulesRequest>,
    ) -> Result<Response<pb::Rules>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = account_arg(&request.account_id)?;
        let rules: serde_json::Value = serde_json::from_str(&request.rules_json).map_err(|e| {
            ServiceError::InvalidArgument(format!("rules_json is not valid JSON: {e}"))
        })?;
        if !rules.is_object() {
            return Err(
                ServiceError::InvalidArgument("rules_json must be a JSON object".into()).into(),
            );
        }
        let event = Event::from(AssignmentRulesChanged { account_id, rules });
        let metadata = EventMetadata::new_correlation().traced(whatsnap_telemetry::current());
        let outcome = self
            .store
            .append(
                &rules_stream(&location, account_id),
                ExpectedVersion::Any,
                vec![NewEvent::new(&event, metadata)],
            )
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::Rules {
            location_id: location.to_string(),
            account_id: request.account_id,
            rules_json: request.rules_json,
            version: outcome.version,
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let location = whatsnap_rpc::location(&request.into_inner().location_id)?;
        let users = sqlx::query(
            "SELECT * FROM assignment_users WHERE location_id = $1 ORDER BY name, user_id",
        )
        .bind(location.to_string())
        .fetch_all(&self.db)
        .await
        .map_err(ServiceError::from)?
        .iter()
        .map(|row| pb::User {
            user_id: row.get("user_id"),
            name: row.get("name"),
            email: row.get::<Option<String>, _>("email").unwrap_or_default(),
            role: row.get::<Option<String>, _>("role").unwrap_or_default(),
            active: row.get::<i64, _>("active") != 0,
        })
        .collect();
        Ok(Response::new(pb::ListUsersResponse { users }))
    }

    async fn get_rules(
        &self,
        request: Request<pb::GetRulesRequest>,
    ) -> Result<Response<pb::Rules>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = account_arg(&request.account_id)?;
        let history = self
            .store
            .read_stream(&rules_stream(&location, account_id), 1, usize::MAX)
            .await
            .map_err(ServiceError::from)?;
        let (rules_json, version) = match history.last() {
            Some(last) => match last.decode() {
                Ok(Event::AssignmentRulesChanged(e)) => (e.rules.to_string(), last.version),
                Ok(_) => (String::new(), 0),
                Err(e) => return Err(ServiceError::FailedPrecondition(e.to_string()).into()),
            },
            None => (String::new(), 0),
        };
        Ok(Response::new(pb::Rules {
            location_id: location.to_string(),
            account_id: request.account_id,
            rules_json,
            version,
        }))
    }

    async fn get_assignment(
        &self,
        request: Request<pb::GetAssignmentRequest>,
    ) -> Result<Response<pb::Assignment>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let contact_id = whatsnap_rpc::uuid("contact id", &request.contact_id)?;
        let row = sqlx::query(
            "SELECT * FROM assignment_decisions WHERE contact_id = $1 AND location_id = $2",
        )
        .bind(contact_id.to_string())
        .bind(location.to_string())
        .fetch_optional(&self.db)
        .await
        .map_err(ServiceError::from)?
        .ok_or_else(|| {
            ServiceError::NotFound(format!(
                "no assignment decision for contact {contact_id} yet"
            ))
        })?;
        Ok(Response::new(pb::Assignment {
            contact_id: row.get("contact_id"),
            user_id: row.get("user_id"),
            rule: row.get("rule"),
            reason: row.get("reason"),
        }))
    }
}
