//! The worker that carries `ghl_pending` to GHL. One task per location with work, so that a
//! location GHL slows down (rate limits, 5xx) holds back only itself; within a location the
//! work goes in log order, the head retried with backoff until GHL takes it, so messages reach
//! a conversation in the order they were received. Every call goes through the client's
//! per-location rate limiter. What crossed is recorded as an event, which removes it from the
//! queue; the worker remembers what it did until the read model has caught up.
//!
//! Beside the queue, it lists each connected location's GHL users when the location connects
//! and every `users_refresh`, and records what changed in the location's users stream.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use chrono::Utc;
use sqlx::Row;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;
use whatsnap_events::{
    AggregateKind, Event, EventMetadata, GhlSyncFailed, GhlTokenKind, GhlTokensIssued, LocationId,
    NewEvent, StreamId,
};
use whatsnap_eventstore::lease::Leases;
use whatsnap_eventstore::projection::{Backoff, Part};
use whatsnap_eventstore::{Aggregates, EventStore, ExpectedVersion, LoadError, StoreError};
use whatsnap_ghl::client::{
    DeliveryStatus, GhlClient, GhlError, InboundMessage, MessageDirection, StatusError,
    StatusUpdate, UserType,
};
use whatsnap_rpc::ReadDb;
use whatsnap_secrets::SecretKey;

use whatsnap_effects::{EffectError, Outbox, Subject, failpoint};

use crate::connection::{self, Connection};
use crate::effects;
use crate::pacing;
use crate::read_model::{ASSIGN, CONTACT, MESSAGE, STATUS};
use crate::users;

/// How long the worker lets the queue's read model settle after it moved before looking again.
const QUEUE_SETTLES: Duration = Duration::from_millis(50);

/// The columns of a contact as the queue's read model has it (`c`, a row of `ghl_contacts`),
/// with the position its own queue item is at, if it has one: read in the same statement, so
/// the tags cover at least that position (they are projected together).
fn contact_columns() -> String {
    format!(
        "c.phone, c.name, c.tags, c.ghl_contact_id, c.assigned_to, (SELECT p.position FROM \
         ghl_pending p WHERE p.kind = '{CONTACT}' AND p.subject_id = c.contact_id) AS queued"
    )
}

/// A contact, by id, with [`contact_columns`].
static CONTACT_QUERY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM ghl_contacts c WHERE c.contact_id = $1",
        contact_columns()
    )
});

/// A message to post, by id, and its contact ([`contact_columns`], null while the contact is
/// not in the read model): one round trip per message.
static MESSAGE_QUERY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT m.contact_id, m.direction, m.body, m.attachments, m.at, {} FROM ghl_messages m \
         LEFT JOIN ghl_contacts c ON c.contact_id = m.contact_id WHERE m.message_id = $1",
        contact_columns()
    )
});

/// A contact as the queue's read model has it ([`contact_columns`]), its details sealed.
struct QueuedContact {
    /// The position of the contact's own queue item, when it has one.
    queued: Option<i64>,
    phone: String,
    name: Option<String>,
    /// Its tags, as JSON.
    tags: String,
    linked: Option<String>,
    assigned_to: Option<String>,
}

impl QueuedContact {
    /// The contact of a row with [`contact_columns`]; `None` when the row has none (a message
    /// whose contact is not in the read model yet).
    fn from_row(row: &sqlx::any::AnyRow) -> Option<Self> {
        Some(Self {
            phone: row.get::<Option<String>, _>("phone")?,
            queued: row.get("queued"),
            name: row.get("name"),
            tags: row.get::<Option<String>, _>("tags").unwrap_or_default(),
            linked: row.get("ghl_contact_id"),
            assigned_to: row.get("assigned_to"),
        })
    }
}

/// How the worker talks to GHL.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub client: GhlClient,
    pub secret_key: SecretKey,
    /// The Conversation Provider id of the whatsnap app, sent with every message.
    pub conversation_provider_id: Option<String>,
    /// The marketplace app's id: an install or uninstall of another app is not recorded.
    pub app_id: Option<String>,
    /// The longest pause between two tries of the same work while GHL keeps failing.
    pub max_backoff: Duration,
    /// How long a status report waits out GHL's "No conversation provider found" 403.
    pub status_patience: Duration,
    /// How often the queue is looked at for new work when nothing says it moved.
    pub poll: Duration,
    /// The queue's read model's position, where this process keeps it: the worker looks at the
    /// queue as soon as it moves, instead of at the next `poll`.
    pub queue_moved: Option<watch::Receiver<u64>>,
    /// How often each connected location's GHL users are listed again.
    pub users_refresh: Duration,
    /// How many times an item GHL refuses (a 403, a message GHL does not add) is tried before
    /// it is set aside, so that the location's queue moves on.
    pub max_item_attempts: u32,
    /// Open what the queue keeps of a person (sealed with the contact's key).
    pub contact_keys: Option<Arc<whatsnap_pii::ContactKeys>>,
    /// The leases of the replicas that share the GHL work, when there are replicas: a
    /// connection's tokens are renewed by one replica at a time (an agency's token serves
    /// locations whose work is on different replicas, and a refresh token is spent by its
    /// first use). `None`: one process does all the work.
    pub replicas: Option<Arc<Leases<sqlx::Any>>>,
}

impl WorkerConfig {
    pub fn new(client: GhlClient, secret_key: SecretKey) -> Self {
        Self {
            client,
            secret_key,
            conversation_provider_id: None,
            app_id: None,
            max_backoff: Duration::from_secs(60),
            status_patience: Duration::from_secs(30),
            poll: Duration::from_millis(200),
            queue_moved: None,
            users_refresh: Duration::from_secs(600),
            max_item_attempts: 3,
            contact_keys: None,
            replicas: None,
        }
    }
}

pub struct Worker {
    store: Arc<dyn EventStore>,
    outbox: Outbox,
    db: ReadDb,
    config: WorkerConfig,
    /// Locations whose users cannot be listed for want of a company id, said once each.
    without_company: Mutex<HashSet<LocationId>>,
    /// One lock per connection stream, held while its tokens are renewed.
    refreshing: Mutex<HashMap<StreamId, Arc<tokio::sync::Mutex<()>>>>,
}

/// When a location's users are listed next.
struct UsersSchedule {
    /// Where the location's newest tokens are in the log: new tokens, a new listing.
    issued_at: Option<i64>,
    due: Instant,
    task: Option<JoinHandle<()>>,
}

/// What became of listing a location's users.
enum UsersOutcome {
    /// This many users were new or changed.
    Synced(usize),
    /// The connection has no company id, which GHL's user search requires.
    NoCompany,
}

/// One piece of queued work.
#[derive(Debug, Clone)]
struct Item {
    kind: String,
    subject: String,
    position: i64,
}

/// What became of one piece of work.
enum Step {
    Done,
    /// The read model has not caught up with what the work needs yet.
    NotYet,
}

#[derive(Debug)]
enum Failure {
    /// The token was refused: refresh it (OAuth) and try again.
    Unauthorized(String),
    /// GHL (or the store) is down, slow or rate limiting: nothing is wrong with the work, which
    /// waits, in order, as long as it takes.
    Retry(String),
    /// Something about this item: tried `max_item_attempts` times, then set aside so that the
    /// queue behind it moves.
    Item(String, Option<u16>),
    /// GHL will never take it: set aside at once, and the queue moves on.
    Final(String, Option<u16>),
}

impl From<GhlError> for Failure {
    fn from(err: GhlError) -> Self {
        match err {
            GhlError::Unauthorized { message } => Self::Unauthorized(message),
            GhlError::Refused { status, message } => Self::Final(
                format!("GHL refused it with {status}: {message}"),
                Some(status),
            ),
            // A 403 (a scope, a contact of another location, "no conversation provider"), or
            // a 2xx that did not add the message (ISS#70, a wrong provider id).
            GhlError::Forbidden { message } => {
                Self::Item(format!("GHL refused it with 403: {message}"), Some(403))
            }
            protocol @ GhlError::Protocol(_) => Self::Item(protocol.to_string(), None),
            // Rate limits, 5xx, timeouts, missing configuration: all come right without
            // changing the work.
            other => Self::Retry(other.to_string()),
        }
    }
}

impl From<EffectError<GhlError>> for Failure {
    fn from(err: EffectError<GhlError>) -> Self {
        match err {
            EffectError::Call(err) => err.into(),
            EffectError::Store(err) => err.into(),
            contended @ EffectError::Contended(_) => Self::Retry(contended.to_string()),
        }
    }
}

/// Where the failures (and retries) of a queue item are recorded: a contact's beside its link,
/// not in the stream contacts writes; a message's in the message's own.
pub(crate) fn subject_stream(location: &LocationId, kind: &str, subject: Uuid) -> StreamId {
    if kind == CONTACT || kind == ASSIGN {
        contact_stream(location, subject)
    } else {
        StreamId::for_uuid(location.clone(), AggregateKind::Message, subject)
    }
}

/// The stream beside a contact's where ghl-sync records what crossed to GHL for it.
pub(crate) fn contact_stream(location: &LocationId, contact_id: Uuid) -> StreamId {
    StreamId::new(
        location.clone(),
        AggregateKind::Ghl,
        format!("contact-{contact_id}"),
    )
    .expect("a valid token")
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Self::Retry(format!("event store: {err}"))
    }
}

impl From<whatsnap_pii::KeyError> for Failure {
    fn from(err: whatsnap_pii::KeyError) -> Self {
        match err {
            whatsnap_pii::KeyError::Database(err) => err.into(),
            // A key that is gone or does not open will not come back by waiting.
            other => Self::Final(other.to_string(), None),
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        Self::Retry(format!("read model: {err}"))
    }
}

fn metadata() -> EventMetadata {
    EventMetadata::new_correlation().traced(whatsnap_telemetry::current())
}

impl Worker {
    pub fn new(store: Arc<dyn EventStore>, db: ReadDb, config: WorkerConfig) -> Self {
        Self {
            outbox: Outbox::new(store.clone()),
            store,
            db,
            config,
            without_company: Mutex::new(HashSet::new()),
            refreshing: Mutex::new(HashMap::new()),
        }
    }

    /// Runs until `shutdown` resolves: starts a task for each location with queued work.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        self.run_part(Part::WHOLE, shutdown).await
    }

    /// As [`Self::run`], for the locations of `part` only: the GHL work split by location,
    /// each part run by one worker at a time (see [`crate::pacing`]).
    pub async fn run_part(
        self: Arc<Self>,
        part: Part,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut running: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut users: HashMap<String, UsersSchedule> = HashMap::new();
        let mut moved = self.config.queue_moved.clone();
        tokio::pin!(shutdown);
        // No request before the pacing the last worker left is taken up.
        let limiter = self.config.client.limiter();
        let mut failures = 0;
        while let Err(err) = pacing::take_up(&self.db, limiter, part).await {
            failures += 1;
            let delay = Backoff::default().delay(failures);
            warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "cannot take up GHL's pacing windows; no GHL work until it can");
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
        let saving = tokio::spawn(self.clone().save_pacing(part));
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = self.queue_may_have_moved(&mut moved) => {}
            }
            self.schedule_users(part, &mut users).await;
            running.retain(|_, task| !task.is_finished());
            let locations: Vec<String> =
                match sqlx::query("SELECT DISTINCT location_id FROM ghl_pending")
                    .fetch_all(&self.db)
                    .await
                {
                    Ok(rows) => rows.iter().map(|r| r.get("location_id")).collect(),
                    Err(err) => {
                        warn!(error = %err, "cannot read the GHL queue");
                        continue;
                    }
                };
            for location in locations {
                if running.contains_key(&location) || !part.holds(&location) {
                    continue;
                }
                let Ok(parsed) = LocationId::parse(location.as_str()) else {
                    continue;
                };
                let worker = self.clone();
                running.insert(location, tokio::spawn(worker.drain(parsed)));
            }
        }
        let tasks: Vec<JoinHandle<()>> = running
            .into_values()
            .chain(users.into_values().filter_map(|s| s.task))
            .chain([saving])
            .collect();
        for task in &tasks {
            task.abort();
        }
        // Every request made is in the windows before they are saved.
        for task in tasks {
            let _ = task.await;
        }
        match pacing::release(&self.db, limiter, part).await {
            Ok(()) => info!("GHL pacing windows saved for the next worker"),
            Err(err) => {
                warn!(error = %err, "GHL pacing windows not saved as the worker stopped; the next worker will wait a window for each busy location")
            }
        }
    }

    /// Saves the pacing windows that changed, every [`pacing::SAVE_EVERY`], for the worker that
    /// takes over from this one.
    async fn save_pacing(self: Arc<Self>, part: Part) {
        let limiter = self.config.client.limiter();
        let mut save = tokio::time::interval(pacing::SAVE_EVERY);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // After a failed save, the next saves every window, not only those changed since.
        let mut save_all = false;
        loop {
            save.tick().await;
            save_all = match pacing::save(&self.db, limiter, part, save_all).await {
                Ok(_) => false,
                Err(err) => {
                    warn!(error = %err, "GHL pacing windows not saved; trying again");
                    true
                }
            };
        }
    }

    /// Starts listing the users of each connected location that is due: just connected (or
    /// connected anew), or not listed for `users_refresh`.
    async fn schedule_users(
        self: &Arc<Self>,
        part: Part,
        users: &mut HashMap<String, UsersSchedule>,
    ) {
        let connected: HashMap<String, Option<i64>> =
            match sqlx::query("SELECT location_id, issued_at FROM ghl_connections")
                .fetch_all(&self.db)
                .await
            {
                Ok(rows) => rows
                    .iter()
                    .map(|r| (r.get("location_id"), r.get("issued_at")))
                    .filter(|(location, _): &(String, _)| part.holds(location))
                    .collect(),
                Err(err) => {
                    warn!(error = %err, "cannot read the GHL connections");
                    return;
                }
            };
        users.retain(|location, _| connected.contains_key(location));
        let now = Instant::now();
        for (location, issued_at) in connected {
            let Ok(parsed) = LocationId::parse(location.as_str()) else {
                continue;
            };
            let schedule = users.entry(location).or_insert(UsersSchedule {
                issued_at,
                due: now,
                task: None,
            });
            if schedule.issued_at != issued_at {
                schedule.issued_at = issued_at;
                schedule.due = now;
            }
            let busy = schedule.task.as_ref().is_some_and(|t| !t.is_finished());
            if busy || schedule.due > now {
                continue;
            }
            schedule.due = now + self.config.users_refresh;
            schedule.task = Some(tokio::spawn(self.clone().sync_users(parsed)));
        }
    }

    async fn sync_users(self: Arc<Self>, location: LocationId) {
        let outcome = self.list_users(&location).await;
        let mut without_company = self.without_company.lock().expect("not poisoned");
        match outcome {
            Ok(UsersOutcome::NoCompany) => {
                if without_company.insert(location.clone()) {
                    warn!(%location, "GHL users not synced: the connection has no company id (connect the Private Integration Token again with --company-id)");
                }
            }
            Ok(UsersOutcome::Synced(changed)) => {
                without_company.remove(&location);
                if changed > 0 {
                    info!(%location, changed, "GHL users synced");
                }
            }
            Err(reason) => warn!(%location, %reason, "cannot sync GHL users"),
        }
    }

    /// Lists the location's users in GHL and appends one `GhlUserSynced` for each that is new
    /// or changed, or gone.
    async fn list_users(&self, location: &LocationId) -> Result<UsersOutcome, String> {
        let company = self
            .connection(location)
            .await?
            .tokens
            .and_then(|t| t.company_id)
            .filter(|c| !c.is_empty());
        let Some(company) = company else {
            return Ok(UsersOutcome::NoCompany);
        };
        let client = &self.config.client;
        let token = self.access_token(location, false).await?;
        let listed = match client.search_users(location, &token, &company).await {
            Err(GhlError::Unauthorized { .. }) => {
                let token = self.access_token(location, true).await?;
                client.search_users(location, &token, &company).await
            }
            other => other,
        }
        .map_err(|e| format!("listing the users: {e}"))?;
        let listed: Vec<_> = listed.iter().map(users::synced).collect();
        let stream = users::stream(location);
        let aggregates = Aggregates::new(self.store.as_ref());
        let known = aggregates
            .load::<users::Users>(&stream)
            .await
            .map_err(|e| match e {
                LoadError::Store(e) => format!("event store: {e}"),
                LoadError::Undecodable(e) => e.to_string(),
            })?;
        let changes = users::changes(&known.state.0, &listed);
        if changes.is_empty() {
            return Ok(UsersOutcome::Synced(0));
        }
        let events: Vec<Event> = changes.iter().cloned().map(Event::from).collect();
        aggregates
            .append(&stream, known, &events, &metadata())
            .await
            .map_err(|e| format!("storing the users: {e}"))?;
        Ok(UsersOutcome::Synced(changes.len()))
    }

    async fn queued(&self, location: &LocationId) -> sqlx::Result<Vec<Item>> {
        Ok(sqlx::query(
            "SELECT kind, subject_id, position FROM ghl_pending WHERE location_id = $1 \
             ORDER BY position LIMIT 200",
        )
        .bind(location.to_string())
        .fetch_all(&self.db)
        .await?
        .iter()
        .map(|row| Item {
            kind: row.get("kind"),
            subject: row.get("subject_id"),
            position: row.get("position"),
        })
        .collect())
    }

    /// The pause after the `attempt`-th failure in a row, with jitter so that locations that
    /// failed together do not come back together.
    fn backoff(&self, attempt: u32) -> Duration {
        Backoff {
            first: Duration::from_millis(500),
            max: self.config.max_backoff,
        }
        .delay(attempt)
    }

    /// Waits until the queue's read model moves past what `moved` last saw, or `poll` passes
    /// (the read model may be kept by another replica, whose progress this one does not see).
    /// After a move it waits [`QUEUE_SETTLES`] more, so that a busy read model is looked at a
    /// few dozen times a second, not at every batch.
    async fn queue_may_have_moved(&self, moved: &mut Option<watch::Receiver<u64>>) {
        let poll = tokio::time::sleep(self.config.poll);
        match moved {
            Some(moved) => tokio::select! {
                Ok(()) = moved.changed() => tokio::time::sleep(QUEUE_SETTLES).await,
                () = poll => {}
            },
            None => poll.await,
        }
    }

    /// Works through one location's queue until it is empty.
    async fn drain(self: Arc<Self>, location: LocationId) {
        // Work done, by (kind, subject), at the position it covered.
        let mut done: HashMap<(String, String), i64> = HashMap::new();
        let mut attempt: u32 = 0;
        let mut reported_waiting = String::new();
        let mut moved = self.config.queue_moved.clone();
        loop {
            if let Some(moved) = moved.as_mut() {
                moved.borrow_and_update();
            }
            let queued = match self.queued(&location).await {
                Ok(queued) => queued,
                Err(err) => {
                    warn!(%location, error = %err, "cannot read the GHL queue");
                    tokio::time::sleep(self.backoff(3)).await;
                    continue;
                }
            };
            if queued.is_empty() {
                return;
            }
            let open: Vec<Item> = queued
                .into_iter()
                .filter(|item| {
                    done.get(&(item.kind.clone(), item.subject.clone()))
                        .is_none_or(|covered| *covered < item.position)
                })
                .collect();
            if open.is_empty() {
                // Done, and waiting for the read model to say so.
                self.queue_may_have_moved(&mut moved).await;
                continue;
            }
            let token = match self.access_token(&location, false).await {
                Ok(token) => token,
                Err(why) => {
                    if why != reported_waiting {
                        info!(%location, reason = %why, "GHL work waits");
                        reported_waiting = why;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for item in open {
                match self.process(&location, &token, &item, &mut done).await {
                    Ok(Step::Done) => {
                        done.insert((item.kind.clone(), item.subject.clone()), item.position);
                        attempt = 0;
                    }
                    Ok(Step::NotYet) => {
                        self.queue_may_have_moved(&mut moved).await;
                        break;
                    }
                    Err(Failure::Unauthorized(message)) => {
                        warn!(%location, %message, "GHL refused the token");
                        if let Err(why) = self.access_token(&location, true).await {
                            warn!(%location, reason = %why, "no usable GHL token");
                        }
                        attempt += 1;
                        tokio::time::sleep(self.backoff(attempt)).await;
                        break;
                    }
                    Err(Failure::Retry(reason)) => {
                        attempt += 1;
                        warn!(%location, kind = %item.kind, subject = %item.subject, attempt, %reason, "GHL work failed; trying again");
                        if attempt == 1 {
                            self.record_failure(&location, &item, &reason, None, false)
                                .await;
                        }
                        tokio::time::sleep(self.backoff(attempt)).await;
                        break;
                    }
                    Err(Failure::Item(reason, status))
                        if attempt + 1 < self.config.max_item_attempts =>
                    {
                        attempt += 1;
                        warn!(%location, kind = %item.kind, subject = %item.subject, attempt, %reason, "GHL refused this item; trying again");
                        if attempt == 1 {
                            self.record_failure(&location, &item, &reason, status, false)
                                .await;
                        }
                        tokio::time::sleep(self.backoff(attempt)).await;
                        break;
                    }
                    Err(Failure::Final(reason, status) | Failure::Item(reason, status)) => {
                        warn!(%location, kind = %item.kind, subject = %item.subject, %reason, "GHL work set aside: `whatsnap ghl retry` tries it again");
                        self.record_failure(&location, &item, &reason, status, true)
                            .await;
                        done.insert((item.kind.clone(), item.subject.clone()), item.position);
                        attempt = 0;
                    }
                }
            }
        }
    }

    async fn record_failure(
        &self,
        location: &LocationId,
        item: &Item,
        reason: &str,
        status: Option<u16>,
        final_attempt: bool,
    ) {
        let Ok(subject) = item.subject.parse::<Uuid>() else {
            return;
        };
        let event = Event::from(GhlSyncFailed {
            operation: item.kind.clone(),
            subject_id: Some(subject),
            reason: reason.to_owned(),
            http_status: status,
            attempt: 1,
            final_attempt,
        });
        let stream = subject_stream(location, &item.kind, subject);
        if let Err(err) = self
            .store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(&event, metadata())],
            )
            .await
        {
            warn!(%location, error = %err, "cannot record a GHL failure");
        }
    }

    /// The location's access token, refreshed first when it is about to expire (or when
    /// `force`d after GHL refused it). `Err` says why there is none.
    async fn access_token(&self, location: &LocationId, force: bool) -> Result<String, String> {
        let state = self.connection(location).await?;
        let agency = |tokens: Option<&GhlTokensIssued>| {
            tokens
                .and_then(|t| t.company_id.clone())
                .or(state.company_id.clone())
        };
        match &state.tokens {
            // Installed from an agency: its token makes the location's.
            None if state.installed => match agency(None) {
                Some(company) => self.location_token(location, &company, &state).await,
                None => Err(format!(
                    "location {location} installed the whatsnap app, but whatsnap holds no token for it yet: finish the install through /oauth/start"
                )),
            },
            None => Err(format!(
                "location {location} is not connected to GHL: install the whatsnap app or `whatsnap ghl connect`"
            )),
            // A location token made from an agency token has no refresh token of its own.
            Some(tokens)
                if tokens.kind == GhlTokenKind::Oauth
                    && tokens.refresh_token.is_none()
                    && (force || state.needs_refresh(Utc::now(), chrono::Duration::minutes(5))) =>
            {
                match agency(Some(tokens)) {
                    Some(company) => self.location_token(location, &company, &state).await,
                    None => Err(format!(
                        "location {location}'s GHL token expired and there is no refresh token: install the app again"
                    )),
                }
            }
            Some(_) => {
                self.own_token(
                    &connection::stream(location),
                    &state,
                    force,
                    &location.to_string(),
                )
                .await
            }
        }
    }

    /// A new location token made from the agency's token (`POST /oauth/locationToken`),
    /// stored before use.
    async fn location_token(
        &self,
        location: &LocationId,
        company: &str,
        state: &Connection,
    ) -> Result<String, String> {
        let Some(agency_stream) = connection::company_stream(company) else {
            return Err(format!("{company:?} is not a GHL company id"));
        };
        // One location token at a time per location; one made while this task waited serves.
        let own_stream = connection::stream(location);
        let lock = self.refresh_lock(&own_stream);
        let _making = lock.lock().await;
        let fresh = self.stream_state(&own_stream).await?;
        if fresh.version != state.version
            && let Some(tokens) = &fresh.tokens
            && !fresh.needs_refresh(Utc::now(), chrono::Duration::minutes(5))
        {
            return self.open(tokens);
        }
        let state = &fresh;
        let agency_state = self.stream_state(&agency_stream).await?;
        if agency_state.tokens.is_none() {
            return Err(format!(
                "location {location} was installed from agency {company}, which has not completed the OAuth install: send an agency admin to /oauth/start"
            ));
        }
        let agency_token = self
            .own_token(
                &agency_stream,
                &agency_state,
                false,
                &format!("agency {company}"),
            )
            .await?;
        let grant = self
            .config
            .client
            .location_token(&agency_token, company, location)
            .await
            .map_err(|e| format!("a location token from agency {company}: {e}"))?;
        let issued = Event::from(GhlTokensIssued {
            kind: GhlTokenKind::Oauth,
            access_token: self.config.secret_key.seal(&grant.access_token),
            refresh_token: grant
                .refresh_token
                .as_deref()
                .map(|t| self.config.secret_key.seal(t)),
            expires_at: grant
                .expires_in
                .map(|s| Utc::now() + chrono::Duration::seconds(s as i64)),
            user_type: "Location".into(),
            company_id: Some(company.to_owned()),
            scope: grant.scope.clone(),
        });
        self.store
            .append(
                &connection::stream(location),
                ExpectedVersion::Exact(state.version),
                vec![NewEvent::new(&issued, metadata())],
            )
            .await
            .map_err(|e| format!("storing the location token: {e}"))?;
        info!(%location, company, "location token made from the agency's");
        Ok(grant.access_token)
    }

    /// The access token of the connection in `stream`, refreshed (and the rotated refresh token
    /// stored) when it is about to expire or `force`d.
    async fn own_token(
        &self,
        stream: &whatsnap_events::StreamId,
        state: &Connection,
        force: bool,
        whose: &str,
    ) -> Result<String, String> {
        let seen_version = state.version;
        let Some(tokens) = state.tokens.clone() else {
            return Err(format!("{whose} holds no GHL token"));
        };
        let refresh = match tokens.kind {
            GhlTokenKind::Oauth => {
                force || state.needs_refresh(Utc::now(), chrono::Duration::minutes(5))
            }
            GhlTokenKind::PrivateIntegration => false,
        };
        if !refresh {
            return self.open(&tokens);
        }
        // One refresh at a time per connection, in this process and across the replicas: a
        // refresh token is spent by its first use.
        let lock = self.refresh_lock(stream);
        let _refreshing = lock.lock().await;
        let refresh = self.refresh(stream, seen_version, whose);
        match &self.config.replicas {
            None => refresh.await,
            Some(leases) => leases
                .exclusively(&format!("refresh:{stream}"), refresh)
                .await
                .map_err(|e| format!("cannot take the turn to refresh {whose}'s GHL token: {e}"))?,
        }
    }

    /// Refreshes the tokens of the connection in `stream` (and stores the rotated refresh
    /// token) unless another task or replica did since it was at `seen_version`; the access
    /// token. Called holding the connection's turn to refresh.
    async fn refresh(
        &self,
        stream: &StreamId,
        seen_version: u64,
        whose: &str,
    ) -> Result<String, String> {
        let state = &self.stream_state(stream).await?;
        let Some(tokens) = state.tokens.clone() else {
            return Err(format!("{whose} holds no GHL token"));
        };
        if state.version != seen_version {
            // Another task refreshed while this one waited: its tokens are the new ones.
            return self.open(&tokens);
        }
        let Some(sealed) = &tokens.refresh_token else {
            return Err(format!(
                "{whose}'s GHL token expired and there is no refresh token: install the app again"
            ));
        };
        let refresh_token = self
            .config
            .secret_key
            .open(sealed)
            .map_err(|e| format!("the stored refresh token: {e}"))?;
        let user_type = if tokens.user_type == "Company" {
            UserType::Company
        } else {
            UserType::Location
        };
        failpoint::hit("ghl.refresh.before_call");
        let grant = self
            .config
            .client
            .refresh(refresh_token.expose(), user_type)
            .await
            .map_err(|e| format!("refreshing the GHL token: {e}"))?;
        failpoint::hit("ghl.refresh.after_call");
        // The new refresh token is stored before anything uses the new access token: the old
        // one is spent.
        let issued = Event::from(GhlTokensIssued {
            kind: GhlTokenKind::Oauth,
            access_token: self.config.secret_key.seal(&grant.access_token),
            refresh_token: grant
                .refresh_token
                .as_deref()
                .map(|t| self.config.secret_key.seal(t))
                .or(tokens.refresh_token.clone()),
            expires_at: grant
                .expires_in
                .map(|s| Utc::now() + chrono::Duration::seconds(s as i64)),
            user_type: grant.user_type.clone().unwrap_or(tokens.user_type.clone()),
            company_id: grant.company_id.clone().or(tokens.company_id.clone()),
            scope: grant.scope.clone().or(tokens.scope.clone()),
        });
        self.store
            .append(
                stream,
                ExpectedVersion::Exact(state.version),
                vec![NewEvent::new(&issued, metadata())],
            )
            .await
            .map_err(|e| format!("storing the refreshed GHL token: {e}"))?;
        failpoint::hit("ghl.refresh.after_outcome");
        info!(whose, "GHL token refreshed");
        Ok(grant.access_token)
    }

    /// The access token of `tokens`, unsealed.
    fn open(&self, tokens: &GhlTokensIssued) -> Result<String, String> {
        self.config
            .secret_key
            .open(&tokens.access_token)
            .map(|t| t.expose().to_owned())
            .map_err(|e| format!("the stored GHL token: {e}"))
    }

    /// The lock held while the tokens of the connection in `stream` are renewed.
    fn refresh_lock(&self, stream: &StreamId) -> Arc<tokio::sync::Mutex<()>> {
        self.refreshing
            .lock()
            .expect("not poisoned")
            .entry(stream.clone())
            .or_default()
            .clone()
    }

    /// The location's connection, from its install stream.
    async fn connection(&self, location: &LocationId) -> Result<Connection, String> {
        self.stream_state(&connection::stream(location)).await
    }

    async fn stream_state(&self, stream: &whatsnap_events::StreamId) -> Result<Connection, String> {
        connection::load(self.store.as_ref(), stream)
            .await
            .map_err(|e| e.to_string())
    }

    async fn process(
        &self,
        location: &LocationId,
        token: &str,
        item: &Item,
        done: &mut HashMap<(String, String), i64>,
    ) -> Result<Step, Failure> {
        let subject: Uuid = item
            .subject
            .parse()
            .map_err(|_| Failure::Final(format!("{:?} is not an id", item.subject), None))?;
        match item.kind.as_str() {
            CONTACT => self
                .sync_contact(location, token, subject, true, done)
                .await
                .map(|linked| match linked {
                    Some(_) => Step::Done,
                    None => Step::NotYet,
                }),
            MESSAGE => self.post_message(location, token, subject, done).await,
            STATUS => self.report_status(location, token, subject).await,
            ASSIGN => self.apply_assignment(location, token, subject, done).await,
            other => Err(Failure::Final(format!("unknown GHL work {other:?}"), None)),
        }
    }

    /// The subject of an effect on GHL: its stream, for the intent and the outcome.
    fn subject(&self, stream: StreamId, operation: &'static str, subject_id: Uuid) -> Subject {
        Subject {
            stream,
            operation,
            subject_id,
            key: None,
            metadata: metadata(),
        }
    }

    /// Makes sure GHL has the contact, with whatsnap's tags; returns GHL's contact id, or
    /// `None` while the contact is not in the read model yet. With `push_tags` false an
    /// already linked contact is returned as it is.
    async fn sync_contact(
        &self,
        location: &LocationId,
        token: &str,
        contact_id: Uuid,
        push_tags: bool,
        done: &mut HashMap<(String, String), i64>,
    ) -> Result<Option<String>, Failure> {
        let row = sqlx::query(&CONTACT_QUERY)
            .bind(contact_id.to_string())
            .fetch_optional(&self.db)
            .await?;
        let Some(contact) = row.as_ref().and_then(QueuedContact::from_row) else {
            return Ok(None);
        };
        self.sync_queued_contact(location, token, contact_id, contact, push_tags, done)
            .await
    }

    /// As [`Self::sync_contact`], for the contact as the queue's read model has it.
    async fn sync_queued_contact(
        &self,
        location: &LocationId,
        token: &str,
        contact_id: Uuid,
        contact: QueuedContact,
        push_tags: bool,
        done: &mut HashMap<(String, String), i64>,
    ) -> Result<Option<String>, Failure> {
        let id = contact_id.to_string();
        let QueuedContact {
            queued,
            phone,
            name,
            tags,
            linked,
            assigned_to,
        } = contact;
        let phone = self.opened(location, phone).await?;
        let name = match name {
            Some(name) => Some(self.opened(location, name).await?),
            None => None,
        };
        if phone == whatsnap_events::ERASED {
            // Its queue items leave with the erasure; one read just before it stops here.
            return Err(Failure::Final(
                "the contact's personal data was erased: nothing of it goes to GHL".into(),
                None,
            ));
        }
        let tags: Vec<String> = serde_json::from_str(&tags).unwrap_or_default();
        if tags.is_empty() && queued.is_some() {
            // Created, its account tag not projected yet (they are written together).
            return Ok(None);
        }
        let effect = effects::SyncContact {
            client: &self.config.client,
            location,
            token,
            contact_id,
            phone,
            name,
            tags,
            assigned_to,
            linked,
            through: push_tags.then(|| queued.unwrap_or(0) as u64),
            covers: queued.unwrap_or(0) as u64,
        };
        let subject = self.subject(
            contact_stream(location, contact_id),
            effects::SYNC_CONTACT,
            contact_id,
        );
        let performed = self.outbox.perform(&subject, &effect).await?;
        // A link found in the log covers the queued tags only when it was asked to.
        let covered = push_tags || performed.called();
        let ghl_id = performed.into_inner().ghl_contact_id;
        debug!(%location, contact_id = %id, ghl_contact_id = %ghl_id, "contact in GHL");
        if let (true, Some(position)) = (covered, queued) {
            done.insert((CONTACT.to_owned(), id), position);
        }
        Ok(Some(ghl_id))
    }

    /// Sets the contact's owner in GHL to the user the newest assignment decision chose.
    async fn apply_assignment(
        &self,
        location: &LocationId,
        token: &str,
        contact_id: Uuid,
        done: &mut HashMap<(String, String), i64>,
    ) -> Result<Step, Failure> {
        let user_id: Option<String> =
            sqlx::query("SELECT assigned_to FROM ghl_contacts WHERE contact_id = $1")
                .bind(contact_id.to_string())
                .fetch_optional(&self.db)
                .await?
                .and_then(|row| row.get("assigned_to"));
        // The decision and its contact's row are projected together, so a missing one will not
        // come: the queue moves on.
        let Some(user_id) = user_id else {
            return Err(Failure::Final(
                "an assignment of a contact ghl-sync does not know".into(),
                None,
            ));
        };
        let Some(ghl_contact_id) = self
            .sync_contact(location, token, contact_id, false, done)
            .await?
        else {
            return Ok(Step::NotYet);
        };
        let effect = effects::ApplyAssignment {
            client: &self.config.client,
            location,
            token,
            contact_id,
            ghl_contact_id,
            user_id,
        };
        let subject = self.subject(
            contact_stream(location, contact_id),
            effects::APPLY_ASSIGNMENT,
            contact_id,
        );
        self.outbox.perform(&subject, &effect).await?;
        debug!(%location, %contact_id, "contact owner set in GHL");
        Ok(Step::Done)
    }

    /// A person's data as the queue keeps it, opened with their contact's key.
    async fn opened(&self, location: &LocationId, kept: String) -> Result<String, Failure> {
        match &self.config.contact_keys {
            Some(keys) => Ok(keys.open_text(location, &kept).await?),
            None => Ok(kept),
        }
    }

    async fn post_message(
        &self,
        location: &LocationId,
        token: &str,
        message_id: Uuid,
        done: &mut HashMap<(String, String), i64>,
    ) -> Result<Step, Failure> {
        let Some(row) = sqlx::query(&MESSAGE_QUERY)
            .bind(message_id.to_string())
            .fetch_optional(&self.db)
            .await?
        else {
            return Ok(Step::NotYet);
        };
        let contact_id: Uuid = row
            .get::<String, _>("contact_id")
            .parse()
            .map_err(|_| Failure::Final("a message without a contact".into(), None))?;
        let Some(contact) = QueuedContact::from_row(&row) else {
            return Ok(Step::NotYet);
        };
        let Some(ghl_contact_id) = self
            .sync_queued_contact(location, token, contact_id, contact, false, done)
            .await?
        else {
            return Ok(Step::NotYet);
        };
        let body = self.opened(location, row.get("body")).await?;
        let attachments = self.opened(location, row.get("attachments")).await?;
        if body == whatsnap_events::ERASED {
            return Err(Failure::Final(
                "the contact's personal data was erased: nothing of it goes to GHL".into(),
                None,
            ));
        }
        let direction = match row.get::<String, _>("direction").as_str() {
            "outbound" => MessageDirection::Outbound,
            _ => MessageDirection::Inbound,
        };
        let effect = effects::PostMessage {
            client: &self.config.client,
            location,
            token,
            message_id,
            message: InboundMessage {
                contact_id: ghl_contact_id,
                conversation_provider_id: self.config.conversation_provider_id.clone(),
                message: body,
                attachments: serde_json::from_str(&attachments).unwrap_or_default(),
                alt_id: message_id.to_string(),
                direction,
                date: chrono::DateTime::parse_from_rfc3339(&row.get::<String, _>("at"))
                    .ok()
                    .map(|at| at.with_timezone(&Utc)),
            },
        };
        let mut subject = self.subject(
            StreamId::for_uuid(location.clone(), AggregateKind::Message, message_id),
            effects::POST_MESSAGE,
            message_id,
        );
        subject.key = Some(message_id.to_string());
        self.outbox.perform(&subject, &effect).await?;
        debug!(%location, %message_id, "message in GHL");
        Ok(Step::Done)
    }

    async fn report_status(
        &self,
        location: &LocationId,
        token: &str,
        message_id: Uuid,
    ) -> Result<Step, Failure> {
        let Some(row) = sqlx::query(
            "SELECT ghl_message_id, status, reason, error_code FROM ghl_messages WHERE message_id = $1",
        )
        .bind(message_id.to_string())
        .fetch_optional(&self.db)
        .await?
        else {
            return Ok(Step::NotYet);
        };
        let (Some(ghl_message_id), Some(status)) = (
            row.get::<Option<String>, _>("ghl_message_id"),
            row.get::<Option<String>, _>("status"),
        ) else {
            return Ok(Step::NotYet);
        };
        let update = StatusUpdate {
            status: match status.as_str() {
                "delivered" => DeliveryStatus::Delivered,
                "read" => DeliveryStatus::Read,
                _ => DeliveryStatus::Failed,
            },
            error: (status == "failed").then(|| StatusError {
                code: row
                    .get::<Option<String>, _>("error_code")
                    .unwrap_or_else(|| "whatsnap".into()),
                message: row
                    .get::<Option<String>, _>("reason")
                    .unwrap_or_else(|| "the message could not be sent".into()),
            }),
        };
        let effect = effects::ReportStatus {
            client: &self.config.client,
            location,
            token,
            message_id,
            ghl_message_id,
            status,
            update,
            patience: self.config.status_patience,
        };
        let subject = self.subject(
            StreamId::for_uuid(location.clone(), AggregateKind::Message, message_id),
            effects::REPORT_STATUS,
            message_id,
        );
        self.outbox.perform(&subject, &effect).await?;
        Ok(Step::Done)
    }
}

/// Puts, per location, the work waiting for GHL and the work set aside after GHL refused it on
/// `/metrics`.
pub fn export_metrics(db: whatsnap_rpc::ReadDb) {
    use whatsnap_telemetry::metrics::Sample;
    whatsnap_telemetry::metrics::collect(move || {
        let db = db.clone();
        async move {
            let mut samples = Vec::new();
            for (table, name, help) in [
                (
                    "ghl_pending",
                    "whatsnap_ghl_pending",
                    "Items waiting to go to GHL, per location.",
                ),
                (
                    "ghl_set_aside",
                    "whatsnap_ghl_set_aside",
                    "Items GHL refused, set aside until an operator retries them, per location.",
                ),
            ] {
                let query =
                    format!("SELECT location_id, COUNT(*) AS n FROM {table} GROUP BY location_id");
                // Before the projection has made its tables, there is nothing to count.
                let Ok(rows) = sqlx::query(&query).fetch_all(&db).await else {
                    continue;
                };
                for row in rows {
                    samples.push(Sample::gauge(
                        name,
                        help,
                        vec![("location", row.get::<String, _>("location_id"))],
                        row.get::<i64, _>("n") as f64,
                    ));
                }
            }
            samples
        }
    });
}
