//! The assignment service decides which GHL user owns a contact and records every decision,
//! with its reason and the candidates it passed over, as an event. The rules [`engine`] is pure;
//! the [`decider`] feeds it from the log (rules, users and their availability, past decisions)
//! and appends what it decides; [`simulate`] replays the log against other rules. A contact of
//! an account with no rules is recorded as left unassigned, with that reason.

mod application;
pub mod decider;
pub mod engine;
pub mod model;
pub mod report;
pub mod simulate;
pub mod snapshot;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Any, AnyConnection, Row};
use tonic::{Request, Response, Status};
use uuid::Uuid;
use whatsnap_events::{
    AggregateKind, AssignmentRulesChanged, Event, EventMetadata, LocationId, NewEvent,
    RecordedEvent, StreamId,
};
use whatsnap_eventstore::projection::{ApplyError, Projection};
use whatsnap_eventstore::{EventStore, ExpectedVersion};
use whatsnap_proto::assignment::v1 as pb;
use whatsnap_rpc::{ReadDb, ServiceError};

pub use application::Application;
pub use engine::NO_RULES;

#[derive(Clone)]
pub struct Assignment {
    store: Arc<dyn EventStore>,
    db: ReadDb,
    /// The furthest back `simulate` decides again.
    max_simulate_window: Duration,
    /// Every location's report over its whole history, for `/metrics`.
    tallies: Arc<tokio::sync::Mutex<Tallies>>,
}

/// The reports `/metrics` shows, as far as the log has been read.
#[derive(Default)]
struct Tallies {
    /// The position of the last event taken in.
    position: u64,
    by_location: BTreeMap<LocationId, report::Tally>,
}

/// How far back `simulate` decides again unless configured otherwise: 90 days.
pub const DEFAULT_MAX_SIMULATE_WINDOW: Duration = Duration::from_secs(90 * 24 * 3600);

impl Assignment {
    /// The whole log of one location, in order.
    async fn location_log(
        &self,
        location: &LocationId,
    ) -> Result<Vec<RecordedEvent>, ServiceError> {
        let head = self.store.head_position().await?;
        let mut log = Vec::new();
        let mut after = 0;
        while after < head {
            let batch = self.store.read_all(after, 2000).await?;
            let Some(last) = batch.last() else { break };
            after = last.position;
            log.extend(batch.into_iter().filter(|e| e.location_id() == location));
        }
        Ok(log)
    }

    /// The report of every location over its whole history, as Prometheus metrics. The
    /// reports are kept between scrapes: each takes in only the log after the last one.
    pub async fn metrics(&self) -> Result<String, ServiceError> {
        let mut tallies = self.tallies.lock().await;
        let head = self.store.head_position().await?;
        while tallies.position < head {
            let batch = self.store.read_all(tallies.position, 2000).await?;
            let Some(last) = batch.last().map(|e| e.position) else {
                break;
            };
            for event in &batch {
                let location = event.location_id();
                if !tallies.by_location.contains_key(location) {
                    let whole_history =
                        report::Tally::new(chrono::DateTime::<chrono::Utc>::MIN_UTC);
                    tallies.by_location.insert(location.clone(), whole_history);
                }
                if let Some(tally) = tallies.by_location.get_mut(location) {
                    tally.take(event);
                }
            }
            tallies.position = last;
        }
        let reports: Vec<(&LocationId, report::Report)> = tallies
            .by_location
            .iter()
            .map(|(location, tally)| (location, tally.report()))
            .collect();
        Ok(report::prometheus(reports.iter().map(|(l, r)| (*l, r))))
    }

    pub fn new(store: Arc<dyn EventStore>, db: ReadDb) -> Self {
        Self {
            store,
            db,
            max_simulate_window: DEFAULT_MAX_SIMULATE_WINDOW,
            tallies: Default::default(),
        }
    }

    /// `simulate` decides again at most this far back; a longer window is refused.
    pub fn max_simulate_window(mut self, window: Duration) -> Self {
        self.max_simulate_window = window;
        self
    }

    /// The start of a simulation's window: `since_seconds` ago, the longest window allowed
    /// when 0, and a refusal beyond it.
    fn simulate_since(
        &self,
        since_seconds: u64,
    ) -> Result<chrono::DateTime<chrono::Utc>, ServiceError> {
        let longest = self.max_simulate_window.as_secs();
        if since_seconds > longest {
            return Err(ServiceError::InvalidArgument(format!(
                "a simulation looks back at most {} days ({longest} s); {since_seconds} s is further",
                longest / 86_400
            )));
        }
        let seconds = match since_seconds {
            0 => longest,
            seconds => seconds,
        };
        Ok(chrono::Utc::now() - chrono::Duration::seconds(seconds.min(i64::MAX as u64) as i64))
    }

    pub fn grpc(&self) -> pb::assignment_service_server::AssignmentServiceServer<Self> {
        pb::assignment_service_server::AssignmentServiceServer::new(self.clone())
    }

    pub fn projection(&self) -> Arc<AssignmentProjection> {
        Arc::new(AssignmentProjection)
    }

    /// The decider that assigns contacts as their triggers reach the log.
    pub fn decider(&self) -> decider::Decider {
        decider::Decider::new(self.store.clone()).snapshots(snapshot::Snapshots::new(
            self.db.clone(),
            "assignment_decider",
        ))
    }
}

/// The latest decision for each contact, and the location's users: what queries read.
pub struct AssignmentProjection;

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

    fn reads(&self) -> Option<&'static [&'static str]> {
        Some(&[
            "ContactAssigned",
            "GhlUserSynced",
            "AssignmentSkipped",
            "UserAvailabilityChanged",
        ])
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE assignment_decisions (contact_id TEXT PRIMARY KEY, location_id TEXT NOT NULL, user_id TEXT NOT NULL, rule TEXT NOT NULL, reason TEXT NOT NULL, position BIGINT NOT NULL)",
            "CREATE TABLE assignment_users (location_id TEXT NOT NULL, user_id TEXT NOT NULL, \
             name TEXT NOT NULL, email TEXT, role TEXT, active BIGINT NOT NULL, \
             PRIMARY KEY (location_id, user_id))",
            "ALTER TABLE assignment_users ADD COLUMN enabled BIGINT NOT NULL DEFAULT 1; \
             ALTER TABLE assignment_users ADD COLUMN availability TEXT",
        ]
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
            Event::UserAvailabilityChanged(e) => {
                // A user GHL has not listed yet gets a row that is not a candidate.
                sqlx::query(
                    "INSERT INTO assignment_users (location_id, user_id, name, active, enabled, availability) \
                     VALUES ($1, $2, $2, 0, $3, $4) ON CONFLICT (location_id, user_id) DO UPDATE SET \
                     enabled = excluded.enabled, availability = excluded.availability",
                )
                .bind(event.location_id().to_string())
                .bind(&e.user_id)
                .bind(i64::from(e.active))
                .bind(serde_json::to_string(&e).expect("events serialise"))
                .execute(&mut *conn)
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        whatsnap_eventstore::rows::empty(conn, &["assignment_decisions", "assignment_users"]).await
    }
}

/// `user` with what SetAvailability last set for them: the end of the out-of-office period
/// they are in at `now` (empty when not away), and the settings as they were set.
fn with_availability(
    mut user: pb::User,
    set: Option<&whatsnap_events::UserAvailabilityChanged>,
    now: chrono::DateTime<chrono::Utc>,
) -> pb::User {
    let away = set.and_then(|a| a.out_of_office.as_ref());
    user.away_until = away
        .filter(|away| away.from <= now && now < away.until)
        .map(|away| away.until.to_rfc3339())
        .unwrap_or_default();
    user.time_zone = set.and_then(|a| a.time_zone.clone()).unwrap_or_default();
    user.working_hours_json = set
        .filter(|a| !a.working_hours.is_empty())
        .map(|a| serde_json::json!(a.working_hours).to_string())
        .unwrap_or_default();
    user.out_of_office_from = away.map(|a| a.from.to_rfc3339()).unwrap_or_default();
    user.out_of_office_until = away.map(|a| a.until.to_rfc3339()).unwrap_or_default();
    user
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
        let (rules, _) = engine::parse_rules_json(&request.rules_json)
            .map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
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

    async fn set_availability(
        &self,
        request: Request<pb::SetAvailabilityRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let user_id = request.user_id.trim().to_owned();
        if user_id.is_empty()
            || user_id.len() > 64
            || !user_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(
                ServiceError::InvalidArgument(format!("{user_id:?} is not a GHL user id")).into(),
            );
        }
        let working_hours: std::collections::BTreeMap<String, Vec<String>> =
            match request.working_hours_json.trim() {
                "" => Default::default(),
                text => serde_json::from_str(text).map_err(|e| {
                    ServiceError::InvalidArgument(format!(
                        "working_hours_json is not an object of day -> [\"HH:MM-HH:MM\"]: {e}"
                    ))
                })?,
            };
        let time = |field: &str, text: &str| {
            chrono::DateTime::parse_from_rfc3339(text.trim())
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| ServiceError::InvalidArgument(format!("{field}: {e}")))
        };
        let out_of_office = match (
            request.out_of_office_from.trim(),
            request.out_of_office_until.trim(),
        ) {
            ("", "") => None,
            (from, until) => Some(whatsnap_events::AwayPeriod {
                from: time("out_of_office_from", from)?,
                until: time("out_of_office_until", until)?,
            }),
        };
        let changed = whatsnap_events::UserAvailabilityChanged {
            user_id: user_id.clone(),
            time_zone: Some(request.time_zone.trim().to_owned()).filter(|t| !t.is_empty()),
            working_hours,
            out_of_office,
            active: request.active,
        };
        engine::availability_from(&changed)
            .map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
        let stream = StreamId::new(
            location.clone(),
            AggregateKind::Assignment,
            format!("user-{user_id}"),
        )
        .map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
        let metadata = EventMetadata::new_correlation().traced(whatsnap_telemetry::current());
        self.store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(&Event::from(changed.clone()), metadata)],
            )
            .await
            .map_err(ServiceError::from)?;
        let name = sqlx::query(
            "SELECT name FROM assignment_users WHERE location_id = $1 AND user_id = $2",
        )
        .bind(location.to_string())
        .bind(&user_id)
        .fetch_optional(&self.db)
        .await
        .map_err(ServiceError::from)?
        .map(|row| row.get::<String, _>("name"))
        .unwrap_or_else(|| user_id.clone());
        let user = pb::User {
            user_id,
            name,
            active: request.active,
            ..Default::default()
        };
        Ok(Response::new(with_availability(
            user,
            Some(&changed),
            chrono::Utc::now(),
        )))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let phone = whatsnap_rpc::phone(&request.phone)?;
        let contact_id = whatsnap_events::contact_id_for(&location, &phone);
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Assignment, contact_id);
        let history = self
            .store
            .read_stream(&stream, 1, usize::MAX)
            .await
            .map_err(ServiceError::from)?;
        if history.is_empty() {
            return Err(ServiceError::NotFound(format!(
                "no assignment decision for {} in location {location} yet",
                phone.masked()
            ))
            .into());
        }
        let mut decisions = Vec::new();
        for recorded in &history {
            let candidates = |list: &[whatsnap_events::CandidateConsidered]| {
                list.iter()
                    .map(|c| pb::Candidate {
                        user_id: c.user_id.clone(),
                        passed_over: c.passed_over.clone().unwrap_or_default(),
                    })
                    .collect()
            };
            let decision = match recorded.decode() {
                Ok(Event::ContactAssigned(e)) => pb::Decision {
                    at: recorded.occurred_at.to_rfc3339(),
                    trigger: e.trigger.unwrap_or_default(),
                    account_id: e.account_id.map(|a| a.to_string()).unwrap_or_default(),
                    user_id: e.user_id,
                    rule: e.rule,
                    reason: e.reason,
                    candidates: candidates(&e.candidates),
                },
                Ok(Event::AssignmentSkipped(e)) => pb::Decision {
                    at: recorded.occurred_at.to_rfc3339(),
                    trigger: e.trigger.unwrap_or_default(),
                    account_id: e.account_id.map(|a| a.to_string()).unwrap_or_default(),
                    user_id: String::new(),
                    rule: "none".into(),
                    reason: e.reason,
                    candidates: candidates(&e.candidates),
                },
                _ => continue,
            };
            decisions.push(decision);
        }
        Ok(Response::new(pb::ExplainResponse {
            contact_id: contact_id.to_string(),
            decisions,
        }))
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let since = match request.since_seconds {
            0 => chrono::DateTime::<chrono::Utc>::MIN_UTC,
            seconds => {
                chrono::Utc::now() - chrono::Duration::seconds(seconds.min(i64::MAX as u64) as i64)
            }
        };
        let events = self.location_log(&location).await?;
        let figures = report::report(&events, &location, since);
        let times = |id: String, r: &report::Responses| pb::ResponseTimes {
            id,
            first_responses: r.count,
            average_seconds: r.average_seconds().unwrap_or(0),
        };
        let counts = |map: &std::collections::BTreeMap<String, u64>| {
            map.iter()
                .map(|(key, count)| pb::Count {
                    key: key.clone(),
                    count: *count,
                })
                .collect()
        };
        Ok(Response::new(pb::ReportResponse {
            users: figures
                .users
                .iter()
                .map(|(user, r)| times(user.clone(), r))
                .collect(),
            accounts: figures
                .accounts
                .iter()
                .map(|(account, r)| times(account.to_string(), r))
                .collect(),
            open_contacts: counts(&figures.open),
            reassignments: counts(&figures.reassignments),
            unassigned: counts(&figures.unassigned),
        }))
    }

    async fn metrics(
        &self,
        _request: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::MetricsResponse>, Status> {
        Ok(Response::new(pb::MetricsResponse {
            text: self.metrics().await?,
        }))
    }

    async fn simulate(
        &self,
        request: Request<pb::SimulateRequest>,
    ) -> Result<Response<pb::SimulateResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let scope = account_arg(&request.account_id)?;
        let (_, rules) = engine::parse_rules_json(&request.rules_json)
            .map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
        let since = Some(self.simulate_since(request.since_seconds)?);
        let events = self.location_log(&location).await?;
        let result = simulate::simulate(&events, &location, scope, rules, since);
        let split = |o: &simulate::Outcome| o.clone().unwrap_or_default();
        Ok(Response::new(pb::SimulateResponse {
            decisions: result.decisions,
            changes: result
                .changes
                .iter()
                .map(|c| {
                    let (recorded_user_id, recorded_rule) = split(&c.recorded);
                    let (simulated_user_id, simulated_rule) = split(&c.simulated);
                    pb::Change {
                        contact_id: c.contact_id.to_string(),
                        trigger: c.trigger.clone(),
                        at: c.at.to_rfc3339(),
                        recorded_user_id,
                        recorded_rule,
                        simulated_user_id,
                        simulated_rule,
                        simulated_reason: c.simulated_reason.clone(),
                    }
                })
                .collect(),
            per_user: result
                .per_user
                .iter()
                .map(|(user, (recorded, simulated))| pb::UserCount {
                    user_id: user.clone(),
                    recorded: *recorded,
                    simulated: *simulated,
                })
                .collect(),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let location = whatsnap_rpc::location(&request.into_inner().location_id)?;
        let now = chrono::Utc::now();
        let users = sqlx::query(
            "SELECT * FROM assignment_users WHERE location_id = $1 ORDER BY name, user_id",
        )
        .bind(location.to_string())
        .fetch_all(&self.db)
        .await
        .map_err(ServiceError::from)?
        .iter()
        .map(|row| {
            let set = row
                .get::<Option<String>, _>("availability")
                .and_then(|json| serde_json::from_str(&json).ok());
            let user = pb::User {
                user_id: row.get("user_id"),
                name: row.get("name"),
                email: row.get::<Option<String>, _>("email").unwrap_or_default(),
                role: row.get::<Option<String>, _>("role").unwrap_or_default(),
                active: row.get::<i64, _>("active") != 0 && row.get::<i64, _>("enabled") != 0,
                ..Default::default()
            };
            with_availability(user, set.as_ref(), now)
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
