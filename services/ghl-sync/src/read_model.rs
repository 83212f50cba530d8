//! `ghl_pending`: per location, the work that must cross to GHL — contacts to create or tag,
//! inbound messages to post, delivery statuses to report — with what the worker needs to do it
//! (the contact's phone, name, tags and owner; the message's text). Work leaves the table only
//! through an event (`GhlContactLinked`, `GhlMessagePosted`, `GhlStatusReported`,
//! `GhlAssignmentApplied`, or a final `GhlSyncFailed`), so a rebuild from the log gives the same
//! queue. The contact's phone and name and the messages' text and attachments are kept sealed
//! with the contact's key (see `whatsnap-pii`); the worker opens them. An erased contact
//! (`ContactErased`) leaves the queue, and its phone, name and messages are kept only as
//! `[erased]`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{Any, AnyConnection, Row};
use uuid::Uuid;
use whatsnap_events::LocationId;
use whatsnap_events::{Event, PhoneNumber, RecordedEvent, TagSource, contact_id_for};
use whatsnap_eventstore::projection::{ApplyError, Projection};
use whatsnap_eventstore::rows::{self, Rows, Value};
use whatsnap_pii::ContactKeys;

pub const CONTACT: &str = "contact_upsert";
pub const MESSAGE: &str = "message";
pub const STATUS: &str = "status";
/// A contact's owner (`assignedTo`) to set in GHL.
pub const ASSIGN: &str = "assign";
/// The rule of an assignment decision that keeps the owner chosen in GHL.
const GHL_OWNER_RULE: &str = "ghl_owner";

/// The work waiting to cross to GHL.
#[derive(Default)]
pub struct PendingWork {
    /// Seal what the queue keeps of a person; without them it is kept as it is.
    keys: Option<Arc<ContactKeys>>,
}

impl PendingWork {
    pub fn new(keys: Option<Arc<ContactKeys>>) -> Self {
        Self { keys }
    }

    /// A person's data as the queue keeps it: sealed with their contact's key.
    async fn sealed(
        &self,
        location: &LocationId,
        contact_id: Uuid,
        text: String,
    ) -> Result<String, ApplyError> {
        match &self.keys {
            Some(keys) => Ok(keys.seal_text(location, contact_id, &text).await?),
            None => Ok(text),
        }
    }

    async fn sealed_opt(
        &self,
        location: &LocationId,
        contact_id: Uuid,
        text: Option<String>,
    ) -> Result<Option<String>, ApplyError> {
        match text {
            Some(text) => Ok(Some(self.sealed(location, contact_id, text).await?)),
            None => Ok(None),
        }
    }
}

/// Queues `kind` for `subject`; queued again later (a new tag) it moves to the later position,
/// so that the worker knows its earlier pass did not cover it.
async fn pending(
    conn: &mut AnyConnection,
    event: &RecordedEvent,
    kind: &str,
    subject: String,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO ghl_pending (kind, subject_id, location_id, position) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (kind, subject_id) DO UPDATE SET position = excluded.position",
    )
    .bind(kind)
    .bind(subject)
    .bind(event.location_id().to_string())
    .bind(event.position as i64)
    .execute(conn)
    .await
    .map(drop)
}

async fn done(conn: &mut AnyConnection, kind: &str, subject: String) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM ghl_pending WHERE kind = $1 AND subject_id = $2")
        .bind(kind)
        .bind(subject)
        .execute(conn)
        .await
        .map(drop)
}

async fn contact_tags(conn: &mut AnyConnection, contact_id: &str) -> sqlx::Result<Vec<String>> {
    let tags: Option<String> = sqlx::query("SELECT tags FROM ghl_contacts WHERE contact_id = $1")
        .bind(contact_id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| row.get("tags"));
    Ok(tags
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

async fn set_contact_tags(
    conn: &mut AnyConnection,
    contact_id: &str,
    tags: &[String],
) -> sqlx::Result<()> {
    sqlx::query("UPDATE ghl_contacts SET tags = $2 WHERE contact_id = $1")
        .bind(contact_id)
        .bind(serde_json::to_string(tags).expect("strings serialise"))
        .execute(conn)
        .await
        .map(drop)
}

/// Records a final state of a reply GHL sent, to report (only replies GHL knows by id).
async fn outbound_status(
    conn: &mut AnyConnection,
    event: &RecordedEvent,
    message_id: String,
    status: &str,
    reason: Option<String>,
    code: Option<String>,
) -> sqlx::Result<()> {
    let known = sqlx::query(
        "UPDATE ghl_messages SET status = $2, reason = $3, error_code = $4 \
         WHERE message_id = $1 AND ghl_message_id IS NOT NULL AND (status IS NULL OR status <> 'failed')",
    )
    .bind(&message_id)
    .bind(status)
    .bind(reason)
    .bind(code)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if known > 0 {
        pending(conn, event, STATUS, message_id).await?;
    }
    Ok(())
}

/// Forgets an erased contact's personal data and takes its work out of the queue: nothing
/// more of it goes to GHL.
async fn erase(conn: &mut AnyConnection, contact_id: &str) -> sqlx::Result<()> {
    const ERASED: &str = whatsnap_events::ERASED;
    sqlx::query(
        "DELETE FROM ghl_pending WHERE (kind IN ($1, $2) AND subject_id = $3) OR (kind IN ($4, $5) \
         AND subject_id IN (SELECT message_id FROM ghl_messages WHERE contact_id = $3))",
    )
    .bind(CONTACT)
    .bind(ASSIGN)
    .bind(contact_id)
    .bind(MESSAGE)
    .bind(STATUS)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE ghl_contacts SET phone = $2, name = NULL WHERE contact_id = $1")
        .bind(contact_id)
        .bind(ERASED)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE ghl_messages SET body = $2, attachments = '[]' WHERE contact_id = $1")
        .bind(contact_id)
        .bind(ERASED)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[async_trait]
impl Projection<Any> for PendingWork {
    fn name(&self) -> &str {
        "ghl_pending"
    }

    fn reads(&self) -> Option<&'static [&'static str]> {
        Some(&[
            "ContactCreated",
            "ContactTagged",
            "ContactUntagged",
            "ContactErased",
            "InboundMessageReceived",
            "OutboundMessageRequested",
            "MessageDelivered",
            "MessageRead",
            "MessageFailed",
            "OutboundRouteFailed",
            "GhlContactLinked",
            "ContactAssigned",
            "GhlAssignmentApplied",
            "GhlMessagePosted",
            "GhlStatusReported",
            "GhlSyncFailed",
            "GhlSyncRetryRequested",
            "GhlInstalled",
            "GhlUninstalled",
            "GhlTokensIssued",
        ])
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE ghl_pending (kind TEXT NOT NULL, subject_id TEXT NOT NULL, location_id TEXT NOT NULL, position BIGINT NOT NULL, PRIMARY KEY (kind, subject_id)); \
         CREATE TABLE ghl_installs (location_id TEXT PRIMARY KEY)",
            "CREATE TABLE ghl_contacts (contact_id TEXT PRIMARY KEY, location_id TEXT NOT NULL, phone TEXT NOT NULL, name TEXT, tags TEXT NOT NULL, ghl_contact_id TEXT); \
         CREATE TABLE ghl_messages (message_id TEXT PRIMARY KEY, location_id TEXT NOT NULL, contact_id TEXT NOT NULL, direction TEXT NOT NULL, body TEXT NOT NULL, attachments TEXT NOT NULL, at TEXT NOT NULL, ghl_message_id TEXT, status TEXT, reason TEXT, error_code TEXT); \
         CREATE TABLE ghl_connections (location_id TEXT PRIMARY KEY, kind TEXT NOT NULL); \
         CREATE INDEX ghl_pending_by_location ON ghl_pending (location_id, position)",
            // The owner the assignment service chose; where the newest tokens are in the log,
            // so that the worker lists a location's users again after it connects anew.
            "ALTER TABLE ghl_contacts ADD COLUMN assigned_to TEXT; \
         ALTER TABLE ghl_connections ADD COLUMN issued_at BIGINT",
            // Work set aside after GHL refused it, until an operator retries it.
            "CREATE TABLE ghl_set_aside (kind TEXT NOT NULL, subject_id TEXT NOT NULL, location_id TEXT NOT NULL, reason TEXT NOT NULL, http_status BIGINT, PRIMARY KEY (kind, subject_id))",
        ]
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        self.apply_runs(conn, &[event]).await
    }

    /// The batch's messages received and posted (most of a rebuild) many to a statement; the
    /// other events one at a time, in between, in log order.
    async fn apply_together(
        &self,
        conn: &mut AnyConnection,
        events: &[&RecordedEvent],
    ) -> Option<Result<(), ApplyError>> {
        Some(self.apply_runs(conn, events).await)
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        whatsnap_eventstore::rows::empty(
            conn,
            &[
                "ghl_pending",
                "ghl_installs",
                "ghl_contacts",
                "ghl_messages",
                "ghl_connections",
                "ghl_set_aside",
            ],
        )
        .await
    }

    /// A rebuild's events a few thousand to a transaction.
    fn batch_size(&self) -> Option<usize> {
        Some(BATCH)
    }
}

/// The most events of one transaction.
const BATCH: usize = 2_000;

/// Messages received and posted, gathered to be written together: the rows of `ghl_messages`,
/// and what becomes of each message's place in the queue (the last event of a message
/// decides: queued at a position, or gone).
struct MessageRun {
    messages: Rows,
    queue: Vec<(String, Option<(String, i64)>)>,
    at: HashMap<String, usize>,
}

impl MessageRun {
    fn new() -> Self {
        Self {
            messages: Rows::new(
                "INSERT INTO ghl_messages (message_id, location_id, contact_id, direction, body, attachments, at)",
                7,
                "ON CONFLICT (message_id) DO NOTHING",
            ),
            queue: Vec::new(),
            at: HashMap::new(),
        }
    }

    /// The message queued at `position` (`Some`) or out of the queue (`None`).
    fn queue(&mut self, message_id: String, queued: Option<(String, i64)>) {
        match self.at.get(&message_id) {
            Some(&index) => self.queue[index].1 = queued,
            None => {
                self.at.insert(message_id.clone(), self.queue.len());
                self.queue.push((message_id, queued));
            }
        }
    }

    /// Writes what was gathered, as applying the events one at a time would have left it: each
    /// message's last word on the queue is the one that counts.
    async fn write(&mut self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        self.messages.write(conn).await?;
        let mut queued = Rows::new(
            "INSERT INTO ghl_pending (kind, subject_id, location_id, position)",
            4,
            "ON CONFLICT (kind, subject_id) DO UPDATE SET position = excluded.position",
        );
        let mut gone = Vec::new();
        for (message_id, queue) in self.queue.drain(..) {
            match queue {
                Some((location, position)) => queued.push([
                    MESSAGE.into(),
                    message_id.into(),
                    location.into(),
                    position.into(),
                ]),
                None => gone.push(message_id),
            }
        }
        self.at.clear();
        queued.write(conn).await?;
        // The kind (a constant) spelled out: the helper binds only the list.
        let gone_sql =
            format!("DELETE FROM ghl_pending WHERE kind = '{MESSAGE}' AND subject_id IN");
        rows::execute_in(conn, &gone_sql, &gone).await
    }
}

impl PendingWork {
    /// Applies `events` in order, those of [`MessageRun`] gathered until another event comes.
    async fn apply_runs(
        &self,
        conn: &mut AnyConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ApplyError> {
        let mut run = MessageRun::new();
        for event in events {
            match event.decode()? {
                Event::InboundMessageReceived(e) if e.from != whatsnap_events::ERASED => {
                    let message_id = e.message_id.to_string();
                    run.messages.push(self.message_row(event, e).await?);
                    let queued = (event.location_id().to_string(), event.position as i64);
                    run.queue(message_id, Some(queued));
                }
                Event::GhlMessagePosted(e) => run.queue(e.message_id.to_string(), None),
                other => {
                    run.write(conn).await?;
                    self.apply_event(conn, event, other).await?;
                }
            }
        }
        run.write(conn).await?;
        // Every replica's GHL work hears of it when the batch commits.
        crate::queue_moves::notify(conn).await?;
        Ok(())
    }

    /// The row of `ghl_messages` of a message received: its text and attachments sealed.
    async fn message_row(
        &self,
        event: &RecordedEvent,
        e: whatsnap_events::InboundMessageReceived,
    ) -> Result<[Value; 7], ApplyError> {
        let contact_id =
            PhoneNumber::parse(&e.from).map(|phone| contact_id_for(event.location_id(), &phone))?;
        let attachments: Vec<&str> = e.attachments.iter().map(|a| a.url.as_str()).collect();
        let attachments = serde_json::to_string(&attachments).expect("strings serialise");
        let at = event.location_id();
        let body = self.sealed(at, contact_id, e.body).await?;
        let attachments = self.sealed(at, contact_id, attachments).await?;
        Ok([
            e.message_id.to_string().into(),
            at.to_string().into(),
            contact_id.to_string().into(),
            // Typed on the account's own phone: shown in GHL as sent from the account.
            if e.from_me { "outbound" } else { "inbound" }.into(),
            body.into(),
            attachments.into(),
            e.received_at.to_rfc3339().into(),
        ])
    }

    /// Applies one event of a type [`MessageRun`] does not gather.
    async fn apply_event(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
        decoded: Event,
    ) -> Result<(), ApplyError> {
        let location = event.location_id().to_string();
        match decoded {
            Event::ContactCreated(e) => {
                let at = event.location_id();
                // Its first account's tag, when the creation carries it (a `ContactTagged`
                // follows the creations that do not).
                let tags: Vec<String> = e.tag.into_iter().collect();
                let phone = self.sealed(at, e.contact_id, e.phone).await?;
                let name = self.sealed_opt(at, e.contact_id, e.name).await?;
                sqlx::query(
                    "INSERT INTO ghl_contacts (contact_id, location_id, phone, name, tags) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (contact_id) DO NOTHING",
                )
                .bind(e.contact_id.to_string())
                .bind(&location)
                .bind(phone)
                .bind(name)
                .bind(serde_json::to_string(&tags).expect("strings serialise"))
                .execute(&mut *conn)
                .await?;
                pending(conn, event, CONTACT, e.contact_id.to_string()).await?
            }
            Event::ContactTagged(e) => {
                let id = e.contact_id.to_string();
                let mut tags = contact_tags(conn, &id).await?;
                if !tags.contains(&e.tag) {
                    tags.push(e.tag);
                    set_contact_tags(conn, &id, &tags).await?;
                }
                // A tag GHL itself reported is already there.
                if e.source != TagSource::Ghl {
                    pending(conn, event, CONTACT, id).await?
                }
            }
            Event::ContactUntagged(e) => {
                let id = e.contact_id.to_string();
                let mut tags = contact_tags(conn, &id).await?;
                tags.retain(|t| t != &e.tag);
                set_contact_tags(conn, &id, &tags).await?;
            }
            // From a contact erased since: nothing of it crosses to GHL. (The others, and the
            // messages posted, are gathered into a `MessageRun`.)
            Event::InboundMessageReceived(e) if e.from == whatsnap_events::ERASED => {}
            Event::ContactErased(e) => erase(conn, &e.contact_id.to_string()).await?,
            Event::OutboundMessageRequested(e) => {
                let body = self
                    .sealed(event.location_id(), e.contact_id, e.body)
                    .await?;
                sqlx::query(
                    "INSERT INTO ghl_messages (message_id, location_id, contact_id, direction, body, attachments, at, ghl_message_id) \
                     VALUES ($1, $2, $3, 'outbound', $4, '[]', $5, $6) ON CONFLICT (message_id) DO NOTHING",
                )
                .bind(e.message_id.to_string())
                .bind(&location)
                .bind(e.contact_id.to_string())
                .bind(body)
                .bind(event.occurred_at.to_rfc3339())
                .bind(&e.ghl_message_id)
                .execute(&mut *conn)
                .await?;
            }
            Event::MessageDelivered(e) => {
                outbound_status(
                    conn,
                    event,
                    e.message_id.to_string(),
                    "delivered",
                    None,
                    None,
                )
                .await?
            }
            Event::MessageRead(e) => {
                outbound_status(conn, event, e.message_id.to_string(), "read", None, None).await?
            }
            Event::MessageFailed(e) => {
                outbound_status(
                    conn,
                    event,
                    e.message_id.to_string(),
                    "failed",
                    Some(e.reason),
                    e.provider_error_code,
                )
                .await?
            }
            Event::OutboundRouteFailed(e) => {
                outbound_status(
                    conn,
                    event,
                    e.message_id.to_string(),
                    "failed",
                    Some(e.reason),
                    None,
                )
                .await?
            }
            Event::GhlContactLinked(e) => {
                let id = e.contact_id.to_string();
                sqlx::query("UPDATE ghl_contacts SET ghl_contact_id = $2 WHERE contact_id = $1")
                    .bind(&id)
                    .bind(&e.ghl_contact_id)
                    .execute(&mut *conn)
                    .await?;
                // Tags added after the worker read the contact keep it queued.
                sqlx::query(
                    "DELETE FROM ghl_pending WHERE kind = $1 AND subject_id = $2 AND ($3 = 0 OR position <= $3)",
                )
                .bind(CONTACT)
                .bind(id)
                .bind(e.synced_through as i64)
                .execute(&mut *conn)
                .await?;
            }
            Event::ContactAssigned(e) => {
                // The decision follows the contact's creation in the log, so its row is there.
                let id = e.contact_id.to_string();
                sqlx::query("UPDATE ghl_contacts SET assigned_to = $2 WHERE contact_id = $1")
                    .bind(&id)
                    .bind(&e.user_id)
                    .execute(&mut *conn)
                    .await?;
                // An owner GHL chose (and told whatsnap of) is already set there.
                if e.rule != GHL_OWNER_RULE {
                    pending(conn, event, ASSIGN, id).await?
                }
            }
            Event::GhlAssignmentApplied(e) => {
                // A later decision (another user) stays queued.
                sqlx::query(
                    "DELETE FROM ghl_pending WHERE kind = $1 AND subject_id = $2 AND EXISTS \
                     (SELECT 1 FROM ghl_contacts c WHERE c.contact_id = $2 AND c.assigned_to = $3)",
                )
                .bind(ASSIGN)
                .bind(e.contact_id.to_string())
                .bind(&e.user_id)
                .execute(&mut *conn)
                .await?;
            }
            Event::GhlStatusReported(e) => {
                // A later status (read after delivered) stays queued.
                sqlx::query(
                    "DELETE FROM ghl_pending WHERE kind = $1 AND subject_id = $2 AND EXISTS \
                     (SELECT 1 FROM ghl_messages m WHERE m.message_id = $2 AND m.status = $3)",
                )
                .bind(STATUS)
                .bind(e.message_id.to_string())
                .bind(&e.status)
                .execute(&mut *conn)
                .await?;
            }
            Event::GhlSyncFailed(e) if e.final_attempt => {
                if let Some(subject) = e.subject_id {
                    done(conn, &e.operation, subject.to_string()).await?;
                    sqlx::query(
                        "INSERT INTO ghl_set_aside (kind, subject_id, location_id, reason, http_status) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, subject_id) DO UPDATE \
                         SET reason = excluded.reason, http_status = excluded.http_status",
                    )
                    .bind(&e.operation)
                    .bind(subject.to_string())
                    .bind(&location)
                    .bind(&e.reason)
                    .bind(e.http_status.map(i64::from))
                    .execute(&mut *conn)
                    .await?;
                }
            }
            Event::GhlSyncRetryRequested(e) => {
                let subject = e.subject_id.to_string();
                sqlx::query("DELETE FROM ghl_set_aside WHERE kind = $1 AND subject_id = $2")
                    .bind(&e.operation)
                    .bind(&subject)
                    .execute(&mut *conn)
                    .await?;
                pending(conn, event, &e.operation, subject).await?
            }
            Event::GhlInstalled(_) => {
                sqlx::query("INSERT INTO ghl_installs (location_id) VALUES ($1) ON CONFLICT (location_id) DO NOTHING")
                    .bind(&location)
                    .execute(&mut *conn)
                    .await?;
            }
            Event::GhlUninstalled(_) => {
                for table in ["ghl_installs", "ghl_connections"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE location_id = $1"))
                        .bind(&location)
                        .execute(&mut *conn)
                        .await?;
                }
            }
            Event::GhlTokensIssued(e) => {
                let kind = match e.kind {
                    whatsnap_events::GhlTokenKind::Oauth => "oauth",
                    whatsnap_events::GhlTokenKind::PrivateIntegration => "private_integration",
                };
                sqlx::query(
                    "INSERT INTO ghl_connections (location_id, kind, issued_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (location_id) DO UPDATE SET kind = excluded.kind, issued_at = excluded.issued_at",
                )
                .bind(&location)
                .bind(kind)
                .bind(event.position as i64)
                .execute(&mut *conn)
                .await?;
            }
            _ => {}
        }
        Ok(())
    }
}
