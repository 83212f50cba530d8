//! Alerts: when an account disconnects, or is connected but not delivering, the deployment's
//! alert webhook gets a Slack-compatible message (`{"text": …}`; Slack, Mattermost, Google Chat
//! and most incident tools take it). The events that call for one queue up in a read model
//! ([`AlertQueue`]); the [`Alerts`] worker posts each as an effect of the outbox on the
//! account's stream — intended, then `AccountAlertSent` — so a restart never sends one twice,
//! and one the webhook refused is tried again with backoff. Events older than an hour (a first
//! start with alerts configured, a rebuild) alert nobody.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{Any, AnyConnection, Row};
use tracing::warn;
use uuid::Uuid;
use whatsnap_effects::{Effect, Outbox, Recorded, Subject};
use whatsnap_events::{
    AccountAlertSent, AccountDisconnected, AggregateKind, Event, EventMetadata, LocationId,
    RecordedEvent, StreamId,
};
use whatsnap_eventstore::projection::{ApplyError, Backoff, Projection};
use whatsnap_rpc::ReadDb;

/// The operation name of an alert in the log and in fail point names.
pub const ALERT: &str = "alert.post";

/// How old an event may be and still alert someone.
const FRESH: chrono::Duration = chrono::Duration::hours(1);

/// Posts alerts about accounts to one webhook.
pub struct Alerts {
    pub(crate) outbox: Outbox,
    pub(crate) db: ReadDb,
    pub(crate) http: reqwest::Client,
    pub(crate) url: String,
}

struct PostAlert<'a> {
    http: &'a reqwest::Client,
    url: &'a str,
    about: uuid::Uuid,
    account_id: uuid::Uuid,
    text: String,
}

#[async_trait]
impl Effect for PostAlert<'_> {
    type Output = ();
    type Error = String;

    fn recorded(&self, history: &[Recorded]) -> Option<()> {
        history
            .iter()
            .any(|(_, event)| self.settles(event))
            .then_some(())
    }

    fn settles(&self, event: &Event) -> bool {
        matches!(event, Event::AccountAlertSent(sent) if sent.about_event_id == self.about)
    }

    async fn call(&self) -> Result<(), String> {
        let response = self
            .http
            .post(self.url)
            .json(&serde_json::json!({ "text": self.text }))
            .send()
            .await
            .map_err(|e| format!("the alert webhook cannot be reached: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the alert webhook answered {}", response.status()))
        }
    }

    fn unsent(&self, _error: &String) -> bool {
        // A second alert is better than none.
        true
    }

    fn outcome(&self, _: &()) -> Event {
        Event::from(AccountAlertSent {
            account_id: self.account_id,
            about_event_id: self.about,
            text: self.text.clone(),
        })
    }
}

/// What an event says that an operator should hear, if anything.
fn alert_text(event: &Event, account: &str, location: &LocationId) -> Option<String> {
    match event {
        // Not when whatsnap stopped the link, nor when a user disconnected it on purpose.
        Event::AccountDisconnected(e)
            if !matches!(
                e.cause.as_deref(),
                Some("stopped" | AccountDisconnected::BY_USER)
            ) =>
        {
            Some(format!(
                ":warning: whatsnap: account {account} ({location}) is disconnected: {}",
                e.reason
            ))
        }
        Event::AccountDeliveryChanged(e) if !e.delivering => Some(format!(
            ":warning: whatsnap: account {account} ({location}) is connected but not delivering: {}",
            e.reason
        )),
        _ => None,
    }
}

#[async_trait]
impl Projection<Any> for AlertQueue {
    fn name(&self) -> &str {
        "session_alerts"
    }

    fn reads(&self) -> Option<&'static [&'static str]> {
        Some(&["AccountDisconnected", "AccountDeliveryChanged"])
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE alert_queue (event_id TEXT PRIMARY KEY, location_id TEXT NOT NULL, account_id TEXT NOT NULL, position BIGINT NOT NULL)",
        ]
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        if event.stream.kind() != AggregateKind::Account
            || !matches!(
                event.event_type.as_str(),
                "AccountDisconnected" | "AccountDeliveryChanged"
            )
            || Utc::now() - event.occurred_at > FRESH
        {
            return Ok(());
        }
        let account_id = match event.decode()? {
            Event::AccountDisconnected(e) => e.account_id,
            Event::AccountDeliveryChanged(e) => e.account_id,
            _ => return Ok(()),
        };
        sqlx::query(
            "INSERT INTO alert_queue (event_id, location_id, account_id, position) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event.id.as_uuid().to_string())
        .bind(event.location_id().to_string())
        .bind(account_id.to_string())
        .bind(event.position as i64)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM alert_queue")
            .execute(conn)
            .await
            .map(drop)
    }
}

/// The events that should alert someone (`alert_queue`), as a read model: the [`Alerts`]
/// worker posts them, outside the projection's transaction.
pub struct AlertQueue;

impl Alerts {
    /// Posts the queued alerts until `shutdown` resolves; one that fails is tried again later,
    /// and the rest go on.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut failures: u32 = 0;
        loop {
            let pause = match self.post_queued().await {
                Ok(()) => {
                    failures = 0;
                    Duration::from_millis(500)
                }
                Err(err) => {
                    failures += 1;
                    warn!(error = %err, failures, "alerts not sent yet");
                    Backoff::default().delay(failures)
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn post_queued(&self) -> Result<(), String> {
        let rows = sqlx::query(
            "SELECT event_id, location_id, account_id, position FROM alert_queue ORDER BY position LIMIT 50",
        )
        .fetch_all(&self.db)
        .await
        .map_err(|e| e.to_string())?;
        for row in rows {
            let event_id: String = row.get("event_id");
            let position: i64 = row.get("position");
            let location = LocationId::parse(row.get::<String, _>("location_id").as_str())
                .map_err(|e| e.to_string())?;
            let account_id: Uuid = row
                .get::<String, _>("account_id")
                .parse()
                .map_err(|_| "an alert without an account".to_owned())?;
            let stream = StreamId::for_uuid(location, AggregateKind::Account, account_id);
            self.post(&stream, account_id, position as u64).await?;
            sqlx::query("DELETE FROM alert_queue WHERE event_id = $1")
                .bind(event_id)
                .execute(&self.db)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Posts the alert about the event at `position` of the account's stream, once.
    async fn post(&self, stream: &StreamId, account_id: Uuid, position: u64) -> Result<(), String> {
        let history = self
            .outbox
            .store()
            .read_stream(stream, 1, usize::MAX)
            .await
            .map_err(|e| e.to_string())?;
        let Some(recorded) = history.iter().find(|e| e.position == position) else {
            return Ok(());
        };
        let event = recorded.decode().map_err(|e| e.to_string())?;
        let location = recorded.location_id();
        // The account as its stream, already read, says it is: the alert names it.
        let mut account = crate::AccountState::default();
        for earlier in &history {
            let decoded = earlier.decode().map_err(|e| e.to_string())?;
            account = crate::evolve(account, &decoded, earlier.version);
        }
        let Some(text) = alert_text(&event, &account.name, location) else {
            return Ok(());
        };
        let subject = Subject {
            stream: stream.clone(),
            operation: ALERT,
            subject_id: recorded.id.as_uuid(),
            key: None,
            metadata: EventMetadata::caused_by(recorded),
        };
        let effect = PostAlert {
            http: &self.http,
            url: &self.url,
            about: recorded.id.as_uuid(),
            account_id,
            text,
        };
        self.outbox
            .perform(&subject, &effect)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disconnected(cause: &str) -> Event {
        Event::from(AccountDisconnected {
            account_id: Uuid::nil(),
            reason: "the reason".into(),
            cause: Some(cause.into()),
        })
    }

    #[test]
    fn a_disconnect_alerts_unless_whatsnap_stopped_it_or_a_user_asked_for_it() {
        let location = LocationId::parse("loc1").unwrap();
        let alert = |cause| alert_text(&disconnected(cause), "Sales", &location);
        assert!(
            alert("logged_out")
                .unwrap()
                .contains("Sales (loc1) is disconnected")
        );
        assert!(alert("connection_lost").is_some());
        assert_eq!(alert("stopped"), None);
        assert_eq!(alert(AccountDisconnected::BY_USER), None);
    }
}
