//! `session_accounts`: every account with its latest state, for listing, and when its last
//! message was created (where a live link catches up from).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use sqlx::{Any, AnyConnection, Row};
use whatsnap_events::{AccountKind, Event, LocationId, RecordedEvent};
use whatsnap_eventstore::projection::{ApplyError, Projection};
use whatsnap_eventstore::rows::Rows;
use whatsnap_proto::session::v1 as pb;
use whatsnap_rpc::{ReadDb, ServiceError, ServiceResult};

pub struct AccountsProjection;

pub(crate) fn kind_to_pb(kind: AccountKind) -> pb::AccountKind {
    match kind {
        AccountKind::Whatsapp => pb::AccountKind::Whatsapp,
        AccountKind::AndroidSms => pb::AccountKind::AndroidSms,
        AccountKind::Imessage => pb::AccountKind::Imessage,
        AccountKind::Twilio => pb::AccountKind::Twilio,
    }
}

pub(crate) fn kind_from_pb(kind: i32) -> ServiceResult<AccountKind> {
    match pb::AccountKind::try_from(kind) {
        Ok(pb::AccountKind::Whatsapp) => Ok(AccountKind::Whatsapp),
        Ok(pb::AccountKind::AndroidSms) => Ok(AccountKind::AndroidSms),
        Ok(pb::AccountKind::Imessage) => Ok(AccountKind::Imessage),
        Ok(pb::AccountKind::Twilio) => Ok(AccountKind::Twilio),
        _ => Err(ServiceError::InvalidArgument(
            "kind must be whatsapp, android_sms, imessage or twilio".into(),
        )),
    }
}

fn kind_from_name(name: &str) -> pb::AccountKind {
    AccountKind::from_name(name).map_or(pb::AccountKind::Unspecified, kind_to_pb)
}

/// Sets an account's status and why it is in it; a removed account stays removed.
async fn set_status(
    conn: &mut AnyConnection,
    account_id: String,
    status: &str,
    reason: Option<String>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE session_accounts SET status = $1, status_reason = $2 WHERE account_id = $3 AND status <> 'removed'",
    )
    .bind(status)
    .bind(reason)
    .bind(account_id)
    .execute(conn)
    .await
    .map(drop)
}

/// Moves the account's last message forward to `created` (a message recorded out of order,
/// or released from hold later, leaves it where it is).
async fn saw_message(
    conn: &mut AnyConnection,
    account_id: uuid::Uuid,
    created: chrono::DateTime<chrono::Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE session_accounts SET last_message_at_ms = $1 \
         WHERE account_id = $2 AND (last_message_at_ms IS NULL OR last_message_at_ms < $1)",
    )
    .bind(created.timestamp_millis())
    .bind(account_id.to_string())
    .execute(conn)
    .await
    .map(drop)
}

/// The latest message each account saw, gathered over a run of a batch's messages and written
/// in one statement: the same as [`saw_message`] for each, since only the latest counts.
#[derive(Default)]
struct LatestMessages(HashMap<uuid::Uuid, i64>);

impl LatestMessages {
    fn saw(&mut self, account_id: uuid::Uuid, created: chrono::DateTime<chrono::Utc>) {
        let latest = self.0.entry(account_id).or_insert(i64::MIN);
        *latest = (*latest).max(created.timestamp_millis());
    }

    async fn write(&mut self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        let mut rows = Rows::new(
            "UPDATE session_accounts SET last_message_at_ms = latest.at_ms FROM \
             (SELECT column1 AS account_id, column2 AS at_ms FROM (",
            2,
            ") AS given) AS latest WHERE session_accounts.account_id = latest.account_id \
             AND (session_accounts.last_message_at_ms IS NULL \
             OR session_accounts.last_message_at_ms < latest.at_ms)",
        );
        for (account_id, at_ms) in self.0.drain() {
            rows.push([account_id.to_string().into(), at_ms.into()]);
        }
        rows.write(conn).await
    }
}

#[async_trait]
impl Projection<Any> for AccountsProjection {
    fn name(&self) -> &str {
        "session_accounts"
    }

    fn reads(&self) -> Option<&'static [&'static str]> {
        Some(&[
            "InboundMessageHeld",
            "InboundMessageReceived",
            "ContactIdentityMerged",
            "AccountAdded",
            "AccountLinkRequested",
            "AccountConnected",
            "AccountDisconnected",
            "AccountRemoved",
            "AccountSettingsChanged",
        ])
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE session_accounts (account_id TEXT PRIMARY KEY, location_id TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, tag TEXT NOT NULL, phone_number TEXT, status TEXT NOT NULL)",
            "ALTER TABLE session_accounts ADD COLUMN engine TEXT; ALTER TABLE session_accounts ADD COLUMN status_reason TEXT",
            "CREATE TABLE whatsapp_identities (location_id TEXT NOT NULL, lid TEXT NOT NULL, phone TEXT NOT NULL, PRIMARY KEY (location_id, lid)); \
             CREATE TABLE held_messages (location_id TEXT NOT NULL, lid TEXT NOT NULL, message_id TEXT NOT NULL, PRIMARY KEY (location_id, message_id))",
            // ms since the epoch, as the platform dated the message.
            "ALTER TABLE session_accounts ADD COLUMN last_message_at_ms BIGINT",
        ]
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let location = event.location_id().to_string();
        if event.stream.kind() == whatsnap_events::AggregateKind::Message {
            // Only the messages seen in the accounts' chats concern this read model: when the
            // last one was created, and those held for a sender's number.
            match event.event_type.as_str() {
                "InboundMessageHeld" => {
                    if let Event::InboundMessageHeld(e) = event.decode()? {
                        saw_message(conn, e.account_id, e.received_at).await?;
                        sqlx::query(
                            "INSERT INTO held_messages (location_id, lid, message_id) VALUES ($1, $2, $3) \
                             ON CONFLICT (location_id, message_id) DO NOTHING",
                        )
                        .bind(&location)
                        .bind(e.sender_lid)
                        .bind(e.message_id.to_string())
                        .execute(conn)
                        .await?;
                    }
                }
                "InboundMessageReceived" => {
                    if let Event::InboundMessageReceived(e) = event.decode()? {
                        saw_message(conn, e.account_id, e.received_at).await?;
                        if e.sender_lid.is_some() {
                            sqlx::query(
                                "DELETE FROM held_messages WHERE location_id = $1 AND message_id = $2",
                            )
                            .bind(&location)
                            .bind(e.message_id.to_string())
                            .execute(conn)
                            .await?;
                        }
                    }
                }
                _ => {}
            }
            return Ok(());
        }
        if event.stream.kind() != whatsnap_events::AggregateKind::Account {
            return Ok(());
        }
        match event.decode()? {
            Event::ContactIdentityMerged(e) => {
                sqlx::query(
                    "INSERT INTO whatsapp_identities (location_id, lid, phone) VALUES ($1, $2, $3) \
                     ON CONFLICT (location_id, lid) DO UPDATE SET phone = excluded.phone",
                )
                .bind(&location)
                .bind(e.lid)
                .bind(e.phone)
                .execute(conn)
                .await?;
            }
            Event::AccountAdded(e) => {
                sqlx::query(
                    "INSERT INTO session_accounts (account_id, location_id, kind, name, tag, phone_number, status, engine) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'added', $7) ON CONFLICT (account_id) DO NOTHING",
                )
                .bind(e.account_id.to_string())
                .bind(event.location_id().to_string())
                .bind(e.kind.as_str())
                .bind(e.name)
                .bind(e.tag)
                .bind(e.phone_number)
                .bind(e.engine)
                .execute(conn)
                .await?;
            }
            Event::AccountLinkRequested(e) => {
                set_status(conn, e.account_id.to_string(), "linking", None).await?
            }
            Event::AccountConnected(e) => {
                set_status(conn, e.account_id.to_string(), "connected", None).await?;
                if let Some(number) = e.phone_number {
                    sqlx::query(
                        "UPDATE session_accounts SET phone_number = $1 WHERE account_id = $2",
                    )
                    .bind(number)
                    .bind(e.account_id.to_string())
                    .execute(conn)
                    .await?;
                }
            }
            Event::AccountDisconnected(e) => {
                let status = if e.logs_out() {
                    "logged_out"
                } else {
                    "disconnected"
                };
                set_status(conn, e.account_id.to_string(), status, Some(e.reason)).await?
            }
            Event::AccountRemoved(e) => {
                set_status(conn, e.account_id.to_string(), "removed", e.reason).await?
            }
            Event::AccountSettingsChanged(e) => {
                if let Some(name) = e
                    .changes
                    .get(crate::account::NAME)
                    .and_then(serde_json::Value::as_str)
                {
                    sqlx::query("UPDATE session_accounts SET name = $1 WHERE account_id = $2")
                        .bind(name)
                        .bind(e.account_id.to_string())
                        .execute(&mut *conn)
                        .await?;
                }
                if let Some(engine) = e
                    .changes
                    .get(crate::account::ENGINE)
                    .and_then(serde_json::Value::as_str)
                {
                    sqlx::query("UPDATE session_accounts SET engine = $1 WHERE account_id = $2")
                        .bind(engine)
                        .bind(e.account_id.to_string())
                        .execute(&mut *conn)
                        .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A batch's plain messages (most of a live batch) move their accounts' last message in
    /// one statement; every other event is applied as [`Projection::apply`] does, after the
    /// messages before it.
    async fn apply_together(
        &self,
        conn: &mut AnyConnection,
        events: &[&RecordedEvent],
    ) -> Option<Result<(), ApplyError>> {
        let mut latest = LatestMessages::default();
        let applied: Result<(), ApplyError> = async {
            for event in events {
                if event.event_type == "InboundMessageReceived"
                    && let Event::InboundMessageReceived(e) = event.decode()?
                    && e.sender_lid.is_none()
                {
                    latest.saw(e.account_id, e.received_at);
                    continue;
                }
                latest.write(conn).await?;
                self.apply(conn, event).await?;
            }
            latest.write(conn).await?;
            Ok(())
        }
        .await;
        Some(applied)
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        whatsnap_eventstore::rows::empty(
            conn,
            &["session_accounts", "whatsapp_identities", "held_messages"],
        )
        .await
    }
}

/// How many accounts of the location are not removed.
pub(crate) async fn live_accounts(db: &ReadDb, location: &LocationId) -> sqlx::Result<usize> {
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM session_accounts WHERE location_id = $1 AND status <> 'removed'",
    )
    .bind(location.to_string())
    .fetch_one(db)
    .await?;
    Ok(count as usize)
}

/// Every tag in use in a location, removed accounts included: a tag is never given twice.
pub(crate) async fn tags_in_location(
    db: &ReadDb,
    location: &LocationId,
) -> sqlx::Result<HashSet<String>> {
    let rows = sqlx::query("SELECT tag FROM session_accounts WHERE location_id = $1")
        .bind(location.to_string())
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(|row| row.get::<String, _>("tag")).collect())
}

pub(crate) async fn list(
    db: &ReadDb,
    location: Option<&LocationId>,
) -> sqlx::Result<Vec<pb::Account>> {
    let rows =
        match location {
            Some(location) => sqlx::query(
                "SELECT * FROM session_accounts WHERE location_id = $1 ORDER BY location_id, name",
            )
            .bind(location.to_string())
            .fetch_all(db)
            .await?,
            None => {
                sqlx::query("SELECT * FROM session_accounts ORDER BY location_id, name")
                    .fetch_all(db)
                    .await?
            }
        };
    Ok(rows
        .iter()
        .map(|row| pb::Account {
            account_id: row.get("account_id"),
            location_id: row.get("location_id"),
            kind: kind_from_name(row.get::<String, _>("kind").as_str()) as i32,
            name: row.get("name"),
            tag: row.get("tag"),
            phone_number: row
                .get::<Option<String>, _>("phone_number")
                .unwrap_or_default(),
            status: row.get("status"),
            engine: row.get::<Option<String>, _>("engine").unwrap_or_default(),
            status_reason: row
                .get::<Option<String>, _>("status_reason")
                .unwrap_or_default(),
            // Shown by `accounts show`, from the account's own stream.
            pacing: String::new(),
        })
        .collect())
}

/// The accounts driven by one of `engines` whose link may need to run: linking, connected or
/// disconnected. Gives (location, account id) pairs.
pub(crate) async fn linkable(db: &ReadDb, engines: &[&str]) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT location_id, account_id, engine FROM session_accounts WHERE status IN ('linking', 'connected', 'disconnected')",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .filter(|row| {
            row.get::<Option<String>, _>("engine")
                .is_some_and(|engine| engines.contains(&engine.as_str()))
        })
        .map(|row| (row.get("location_id"), row.get("account_id")))
        .collect())
}

/// When the last message recorded for the account (received, or typed on its own device) was
/// created, as the platform dated it (`received_at` of its event); `None` when none was.
pub(crate) async fn last_message_at(
    db: &ReadDb,
    account_id: uuid::Uuid,
) -> sqlx::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let ms: Option<Option<i64>> =
        sqlx::query_scalar("SELECT last_message_at_ms FROM session_accounts WHERE account_id = $1")
            .bind(account_id.to_string())
            .fetch_optional(db)
            .await?;
    Ok(ms
        .flatten()
        .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis))
}

/// The message whatsnap sent through `account_id` that the provider calls
/// `provider_message_id`, once its send is recorded.
pub(crate) async fn sent_message(
    db: &ReadDb,
    account_id: uuid::Uuid,
    provider_message_id: &str,
) -> sqlx::Result<Option<uuid::Uuid>> {
    let id: Option<String> = sqlx::query_scalar(
        "SELECT message_id FROM sent_messages WHERE account_id = $1 AND provider_message_id = $2",
    )
    .bind(account_id.to_string())
    .bind(provider_message_id)
    .fetch_optional(db)
    .await?;
    Ok(id.and_then(|id| id.parse().ok()))
}

/// Whether the account has replies queued or in flight (not yet recorded as sent or failed).
pub(crate) async fn sending(db: &ReadDb, account_id: uuid::Uuid) -> sqlx::Result<bool> {
    let queued: Option<String> =
        sqlx::query_scalar("SELECT message_id FROM outbound_queue WHERE account_id = $1 LIMIT 1")
            .bind(account_id.to_string())
            .fetch_optional(db)
            .await?;
    Ok(queued.is_some())
}

/// The phone number WhatsApp has named for `lid` in this location, once known.
pub(crate) async fn phone_of_lid(
    db: &ReadDb,
    location: &LocationId,
    lid: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT phone FROM whatsapp_identities WHERE location_id = $1 AND lid = $2")
        .bind(location.to_string())
        .bind(lid)
        .fetch_optional(db)
        .await
}

/// The messages held until the number of `lid` is known.
pub(crate) async fn held_for(
    db: &ReadDb,
    location: &LocationId,
    lid: &str,
) -> sqlx::Result<Vec<uuid::Uuid>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT message_id FROM held_messages WHERE location_id = $1 AND lid = $2",
    )
    .bind(location.to_string())
    .bind(lid)
    .fetch_all(db)
    .await?;
    Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
}

/// The held messages whose sender's number is known by now: (location, message, number).
pub(crate) async fn held_with_known_number(
    db: &ReadDb,
) -> sqlx::Result<Vec<(LocationId, uuid::Uuid, String)>> {
    let rows = sqlx::query(
        "SELECT h.location_id, h.message_id, i.phone FROM held_messages h \
         JOIN whatsapp_identities i ON i.location_id = h.location_id AND i.lid = h.lid",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            Some((
                LocationId::parse(row.get::<String, _>("location_id").as_str()).ok()?,
                row.get::<String, _>("message_id").parse().ok()?,
                row.get("phone"),
            ))
        })
        .collect())
}

/// Whether the account's last `count` replies sent before `before` all lack a receipt: the
/// account's link may say it is open while WhatsApp delivers nothing.
pub(crate) async fn unanswered_sends(
    db: &ReadDb,
    account_id: uuid::Uuid,
    before: chrono::DateTime<chrono::Utc>,
    count: i64,
) -> sqlx::Result<bool> {
    let answered: Vec<i64> = sqlx::query_scalar(
        "SELECT answered FROM sent_messages WHERE account_id = $1 AND sent_at < $2 \
         ORDER BY sent_at DESC LIMIT $3",
    )
    .bind(account_id.to_string())
    .bind(before.to_rfc3339())
    .bind(count)
    .fetch_all(db)
    .await?;
    Ok(answered.len() as i64 == count && answered.iter().all(|a| *a == 0))
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use uuid::Uuid;
    use whatsnap_events::{
        AccountAdded, AccountConnected, AggregateKind, EventId, EventMetadata,
        InboundMessageReceived, StreamId,
    };

    use super::*;

    fn recorded(position: u64, kind: AggregateKind, id: Uuid, event: Event) -> RecordedEvent {
        RecordedEvent {
            id: EventId::new(),
            stream: StreamId::for_uuid(LocationId::parse("locAccounts").unwrap(), kind, id),
            version: 1,
            position,
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            occurred_at: Utc::now(),
            metadata: EventMetadata::new_correlation(),
            payload: event.encode(),
        }
    }

    fn text(account_id: Uuid, received_at: &str) -> Event {
        let message_id = Uuid::now_v7();
        Event::from(InboundMessageReceived {
            message_id,
            account_id,
            provider_message_id: format!("SM{}", message_id.simple()),
            from: "+14155550100".into(),
            to: None,
            body: "hi".into(),
            sender_name: None,
            received_at: received_at.parse().unwrap(),
            attachments: Vec::new(),
            from_me: false,
            sender_lid: None,
        })
    }

    /// The account's status and last message after `events`, applied one by one or together.
    async fn applied(events: &[RecordedEvent], together: bool) -> (String, Option<DateTime<Utc>>) {
        let db = whatsnap_testkit::applied_in_memory(&AccountsProjection, events, together).await;
        let status: String = sqlx::query_scalar("SELECT status FROM session_accounts")
            .fetch_one(&db)
            .await
            .unwrap();
        let Event::AccountAdded(added) = events[0].decode().unwrap() else {
            panic!("the account first");
        };
        (
            status,
            last_message_at(&db, added.account_id).await.unwrap(),
        )
    }

    #[tokio::test]
    async fn an_accounts_last_message_is_the_latest_created_whatever_the_order_or_the_batch() {
        let account = Uuid::now_v7();
        let added = Event::from(AccountAdded {
            account_id: account,
            kind: whatsnap_events::AccountKind::Twilio,
            name: "Front desk".into(),
            tag: "whatsnap-account-front-desk".into(),
            phone_number: None,
            twilio: None,
            engine: None,
            settings: None,
        });
        let connected = Event::from(AccountConnected {
            account_id: account,
            phone_number: Some("+15005550006".into()),
            display_name: None,
        });
        let messages = |id| (AggregateKind::Message, id);
        let events: Vec<RecordedEvent> = [
            ((AggregateKind::Account, account), added),
            (
                messages(Uuid::now_v7()),
                text(account, "2026-12-02T09:30:00Z"),
            ),
            (
                messages(Uuid::now_v7()),
                text(account, "2026-12-02T09:00:00Z"),
            ),
            ((AggregateKind::Account, account), connected),
            (
                messages(Uuid::now_v7()),
                text(account, "2026-12-02T09:45:00Z"),
            ),
            (
                messages(Uuid::now_v7()),
                text(account, "2026-12-02T09:10:00Z"),
            ),
        ]
        .into_iter()
        .zip(1..)
        .map(|(((kind, id), event), position)| recorded(position, kind, id, event))
        .collect();
        let latest = Some("2026-12-02T09:45:00Z".parse().unwrap());
        for together in [false, true] {
            assert_eq!(
                applied(&events, together).await,
                ("connected".to_owned(), latest),
                "applied together: {together}"
            );
        }
    }
}
