//! `traffic_daily` and `traffic_failures`: per location, each account's messages received, sent
//! and failed per day, and failed replies by reason, counted as the events happen. The
//! dashboard's insights and alerts read them at a cost that does not grow with the number of
//! contacts. A failure is charged to the account its reply was routed to (`traffic_routes`),
//! or to none when it was never routed.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::{Any, AnyConnection, Row};
use whatsnap_events::{Event, MessageFailed, OutboundRouteFailed, RecordedEvent};
use whatsnap_eventstore::projection::{ApplyError, Projection};
use whatsnap_eventstore::rows::Rows;
use whatsnap_proto::events::v1 as pb;
use whatsnap_rpc::ReadDb;

pub struct TrafficProjection;

/// One day's count to add to an account's row.
enum Count {
    Received,
    Sent,
    Failed,
}

/// The counts a batch adds to `traffic_daily`, by location, account and day: received, sent,
/// failed. Sums commute, so a batch's are written together at its end, one row per account and
/// day (which a live batch's hundred texts to a few accounts are).
#[derive(Default)]
struct Counts(BTreeMap<(String, String, String), [i64; 3]>);

impl Counts {
    fn add(&mut self, event: &RecordedEvent, account_id: &str, what: Count) {
        let key = (
            event.location_id().to_string(),
            account_id.to_owned(),
            day_of(event),
        );
        self.0.entry(key).or_default()[what as usize] += 1;
    }

    async fn write(self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        let mut rows = Rows::new(
            "INSERT INTO traffic_daily (location_id, account_id, day, received, sent, failed)",
            6,
            "ON CONFLICT (location_id, account_id, day) DO UPDATE \
             SET received = traffic_daily.received + excluded.received, \
             sent = traffic_daily.sent + excluded.sent, \
             failed = traffic_daily.failed + excluded.failed",
        );
        for ((location, account, day), [received, sent, failed]) in self.0 {
            rows.push([
                location.into(),
                account.into(),
                day.into(),
                received.into(),
                sent.into(),
                failed.into(),
            ]);
        }
        rows.write(conn).await
    }
}

fn day_of(event: &RecordedEvent) -> String {
    event.occurred_at.date_naive().to_string()
}

/// The account a reply was routed to or sent from, when it is known.
async fn route(conn: &mut AnyConnection, message_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT account_id FROM traffic_routes WHERE message_id = $1")
        .bind(message_id)
        .fetch_optional(conn)
        .await
}

async fn remember_route(
    conn: &mut AnyConnection,
    message_id: &str,
    account_id: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO traffic_routes (message_id, account_id) VALUES ($1, $2) \
         ON CONFLICT (message_id) DO UPDATE SET account_id = excluded.account_id",
    )
    .bind(message_id)
    .bind(account_id)
    .execute(conn)
    .await?;
    Ok(())
}

async fn failed(
    conn: &mut AnyConnection,
    counts: &mut Counts,
    event: &RecordedEvent,
    message_id: &str,
    reason: &str,
) -> sqlx::Result<()> {
    let account = route(&mut *conn, message_id).await?.unwrap_or_default();
    if !account.is_empty() {
        counts.add(event, &account, Count::Failed);
    }
    let reason = match reason.trim() {
        "" => "no reason given",
        given => given,
    };
    sqlx::query(
        "INSERT INTO traffic_failures (location_id, day, account_id, reason, failed, last_position) \
         VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (location_id, day, account_id, reason) DO UPDATE \
         SET failed = traffic_failures.failed + 1, last_position = excluded.last_position",
    )
    .bind(event.location_id().as_str())
    .bind(day_of(event))
    .bind(account)
    .bind(reason)
    .bind(event.position as i64)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Projection<Any> for TrafficProjection {
    fn name(&self) -> &str {
        "traffic"
    }

    fn reads(&self) -> Option<&'static [&'static str]> {
        Some(&[
            "InboundMessageReceived",
            "OutboundMessageRouted",
            "OutboundMessageSent",
            "MessageFailed",
            "OutboundRouteFailed",
        ])
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE traffic_daily (location_id TEXT NOT NULL, account_id TEXT NOT NULL, day TEXT NOT NULL, received BIGINT NOT NULL, sent BIGINT NOT NULL, failed BIGINT NOT NULL, PRIMARY KEY (location_id, account_id, day))",
            "CREATE TABLE traffic_failures (location_id TEXT NOT NULL, day TEXT NOT NULL, account_id TEXT NOT NULL, reason TEXT NOT NULL, failed BIGINT NOT NULL, last_position BIGINT NOT NULL, PRIMARY KEY (location_id, day, account_id, reason))",
            "CREATE TABLE traffic_routes (message_id TEXT PRIMARY KEY, account_id TEXT NOT NULL)",
        ]
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        apply_batch(conn, &[event]).await
    }

    /// The batch's counts in one statement (a row per account and day); routes and failures,
    /// rarer, a statement each.
    async fn apply_together(
        &self,
        conn: &mut AnyConnection,
        events: &[&RecordedEvent],
    ) -> Option<Result<(), ApplyError>> {
        Some(apply_batch(conn, events).await)
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        whatsnap_eventstore::rows::empty(
            conn,
            &["traffic_daily", "traffic_failures", "traffic_routes"],
        )
        .await
    }
}

/// Applies `events` in order: the routes and failures as they come (a failure is charged to
/// the route recorded before it), the day counts summed and written at the end.
async fn apply_batch(
    conn: &mut AnyConnection,
    events: &[&RecordedEvent],
) -> Result<(), ApplyError> {
    let mut counts = Counts::default();
    for event in events {
        match event.decode()? {
            // A message typed on the account's own phone left from it.
            Event::InboundMessageReceived(e) => {
                let what = if e.from_me {
                    Count::Sent
                } else {
                    Count::Received
                };
                counts.add(event, &e.account_id.to_string(), what);
            }
            Event::OutboundMessageRouted(e) => {
                remember_route(conn, &e.message_id.to_string(), &e.account_id.to_string()).await?;
            }
            Event::OutboundMessageSent(e) => {
                let account = e.account_id.to_string();
                remember_route(&mut *conn, &e.message_id.to_string(), &account).await?;
                counts.add(event, &account, Count::Sent);
            }
            Event::MessageFailed(MessageFailed {
                message_id, reason, ..
            })
            | Event::OutboundRouteFailed(OutboundRouteFailed {
                message_id, reason, ..
            }) => {
                let message_id = message_id.to_string();
                failed(conn, &mut counts, event, &message_id, &reason).await?;
            }
            _ => {}
        }
    }
    counts.write(conn).await?;
    Ok(())
}

/// A location's traffic from `from_day` (`YYYY-MM-DD`, UTC) on.
pub(crate) async fn read(
    db: &ReadDb,
    location: &str,
    from_day: &str,
) -> sqlx::Result<pb::TrafficResponse> {
    let days = sqlx::query(
        "SELECT account_id, day, received, sent, failed FROM traffic_daily \
         WHERE location_id = $1 AND day >= $2 ORDER BY day, account_id",
    )
    .bind(location)
    .bind(from_day)
    .fetch_all(db)
    .await?
    .iter()
    .map(|row| pb::AccountDay {
        account_id: row.get("account_id"),
        day: row.get("day"),
        received: row.get::<i64, _>("received") as u64,
        sent: row.get::<i64, _>("sent") as u64,
        failed: row.get::<i64, _>("failed") as u64,
    })
    .collect();
    let failures = sqlx::query(
        "SELECT account_id, reason, CAST(SUM(failed) AS BIGINT) AS failed, \
         MAX(last_position) AS last_position \
         FROM traffic_failures WHERE location_id = $1 AND day >= $2 \
         GROUP BY account_id, reason ORDER BY account_id, reason",
    )
    .bind(location)
    .bind(from_day)
    .fetch_all(db)
    .await?
    .iter()
    .map(|row| pb::FailedReplies {
        account_id: row.get("account_id"),
        reason: row.get("reason"),
        count: row.get::<i64, _>("failed") as u64,
        last_position: row.get::<i64, _>("last_position") as u64,
    })
    .collect();
    Ok(pb::TrafficResponse { days, failures })
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use uuid::Uuid;
    use whatsnap_events::{
        AggregateKind, EventId, EventMetadata, InboundMessageReceived, LocationId, MessageFailed,
        OutboundMessageRouted, OutboundMessageSent, OutboundRouteFailed, StreamId,
    };

    use super::*;

    struct Log {
        location: LocationId,
        events: Vec<RecordedEvent>,
    }

    impl Log {
        fn at(&mut self, when: &str, event: impl Into<Event>) {
            let event = event.into();
            let occurred_at: DateTime<Utc> = when.parse().unwrap();
            self.events.push(RecordedEvent {
                id: EventId::new(),
                stream: StreamId::for_uuid(
                    self.location.clone(),
                    AggregateKind::Message,
                    Uuid::now_v7(),
                ),
                version: 1,
                position: self.events.len() as u64 + 1,
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                occurred_at,
                metadata: EventMetadata::new_correlation(),
                payload: event.encode(),
            });
        }
    }

    fn inbound(account_id: Uuid, from_me: bool) -> InboundMessageReceived {
        InboundMessageReceived {
            message_id: Uuid::now_v7(),
            account_id,
            provider_message_id: Uuid::now_v7().to_string(),
            from: "+14155550100".into(),
            to: None,
            body: "hello".into(),
            sender_name: None,
            received_at: Utc::now(),
            attachments: Vec::new(),
            from_me,
            sender_lid: None,
        }
    }

    #[tokio::test]
    async fn messages_are_counted_per_account_and_day_and_failures_charged_to_their_route() {
        let (sales, support) = (Uuid::now_v7(), Uuid::now_v7());
        let mut log = Log {
            location: LocationId::parse("locTraffic").unwrap(),
            events: Vec::new(),
        };
        let reply = |message_id, account_id| OutboundMessageRouted {
            message_id,
            contact_id: Uuid::now_v7(),
            account_id,
            tag: "whatsnap-account-sales".into(),
            to: "+14155550100".into(),
            reason: "tag".into(),
        };
        log.at("2026-12-01T09:00:00Z", inbound(sales, false));
        log.at("2026-12-02T09:00:00Z", inbound(sales, false));
        log.at("2026-12-02T09:05:00Z", inbound(sales, true));
        log.at("2026-12-02T10:00:00Z", inbound(support, false));
        let (sent, refused, unrouted) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        log.at("2026-12-02T10:01:00Z", reply(sent, sales));
        log.at(
            "2026-12-02T10:01:01Z",
            OutboundMessageSent {
                message_id: sent,
                account_id: sales,
                provider_message_id: "SM1".into(),
            },
        );
        log.at("2026-12-02T10:02:00Z", reply(refused, support));
        log.at(
            "2026-12-02T10:02:01Z",
            MessageFailed {
                message_id: refused,
                reason: "the recipient opted out (Twilio 21610)".into(),
                provider_error_code: Some("21610".into()),
            },
        );
        log.at(
            "2026-12-02T10:03:00Z",
            OutboundRouteFailed {
                message_id: unrouted,
                contact_id: Uuid::now_v7(),
                reason: "no account carries the contact's tag".into(),
            },
        );
        // The same, applied event by event or as one batch (as a live read model does).
        for together in [false, true] {
            let db = whatsnap_testkit::applied_in_memory(&TrafficProjection, &log.events, together)
                .await;
            let counts = read(&db, "locTraffic", "2026-12-02").await.unwrap();
            let row = |account: Uuid| {
                counts
                    .days
                    .iter()
                    .find(|d| d.account_id == account.to_string())
                    .map(|d| (d.day.as_str(), d.received, d.sent, d.failed))
            };
            // The day before the window is left out; the phone-typed message counts as sent.
            assert_eq!(counts.days.len(), 2, "{counts:?}");
            assert_eq!(row(sales), Some(("2026-12-02", 1, 2, 0)));
            assert_eq!(row(support), Some(("2026-12-02", 1, 0, 1)));
            let failures: Vec<_> = counts
                .failures
                .iter()
                .map(|f| (f.account_id.clone(), f.reason.as_str(), f.count))
                .collect();
            assert_eq!(
                failures,
                [
                    (String::new(), "no account carries the contact's tag", 1),
                    (
                        support.to_string(),
                        "the recipient opted out (Twilio 21610)",
                        1
                    ),
                ]
            );
            // Another location sees none of it.
            let other = read(&db, "locOther", "2026-12-01").await.unwrap();
            assert!(other.days.is_empty() && other.failures.is_empty());
        }
    }
}
