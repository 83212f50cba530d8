//! Alerts: when an account disconnects, or is connected but not delivering, the deployment's
//! alert webhook gets a Slack-compatible message (`{"text": …}`; Slack, Mattermost, Google Chat
//! and most incident tools take it). Each alert is an effect of the outbox on the account's
//! stream — intended, then `AccountAlertSent` — so a restart never sends one twice, and one the
//! webhook refused is tried again with the projection runner's backoff, then parked for an
//! operator. Events older than an hour (a first start with alerts configured, a rebuild) alert
//! nobody.

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{Any, AnyConnection};
use whatsnap_effects::{Effect, Outbox, Recorded, Subject};
use whatsnap_events::{
    AccountAlertSent, AggregateKind, Event, EventMetadata, LocationId, RecordedEvent,
};
use whatsnap_eventstore::projection::{ApplyError, Projection};

/// The operation name of an alert in the log and in fail point names.
pub const ALERT: &str = "alert.post";

/// How old an event may be and still alert someone.
const FRESH: chrono::Duration = chrono::Duration::hours(1);

/// Posts alerts about accounts to one webhook.
pub struct Alerts {
    pub(crate) outbox: Outbox,
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
        Event::AccountDisconnected(e) if e.cause.as_deref() != Some("stopped") => Some(format!(
            ":warning: whatsnap: account {account} ({location}) is disconnected: {}",
            e.reason
        )),
        Event::AccountDeliveryChanged(e) if !e.delivering => Some(format!(
            ":warning: whatsnap: account {account} ({location}) is connected but not delivering: {}",
            e.reason
        )),
        _ => None,
    }
}

#[async_trait]
impl Projection<Any> for Alerts {
    fn name(&self) -> &str {
        "session_alerts"
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[]
    }

    async fn apply(&self, _: &mut AnyConnection, event: &RecordedEvent) -> Result<(), ApplyError> {
        if event.stream.kind() != AggregateKind::Account
            || !matches!(
                event.event_type.as_str(),
                "AccountDisconnected" | "AccountDeliveryChanged"
            )
            || Utc::now() - event.occurred_at > FRESH
        {
            return Ok(());
        }
        let decoded = event.decode()?;
        let location = event.location_id();
        let Some(account_id) = (match &decoded {
            Event::AccountDisconnected(e) => Some(e.account_id),
            Event::AccountDeliveryChanged(e) => Some(e.account_id),
            _ => None,
        }) else {
            return Ok(());
        };
        let (_, account) =
            crate::read_account(self.outbox.store().as_ref(), location, account_id).await?;
        let Some(text) = alert_text(&decoded, &account.name, location) else {
            return Ok(());
        };
        let subject = Subject {
            stream: event.stream.clone(),
            operation: ALERT,
            subject_id: event.id.as_uuid(),
            key: None,
            metadata: EventMetadata::caused_by(event),
        };
        let effect = PostAlert {
            http: &self.http,
            url: &self.url,
            about: event.id.as_uuid(),
            account_id,
            text,
        };
        self.outbox
            .perform(&subject, &effect)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn reset(&self, _: &mut AnyConnection) -> sqlx::Result<()> {
        Ok(())
    }
}
