//! Replies on their way out. A routed message is sent from the account contacts chose, once:
//! the sender reads the message's stream before it sends, and records what the provider said
//! right after. What the provider later reports (Twilio's StatusCallback) becomes the
//! message's final status.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Any, AnyConnection};
use tracing::{info, warn};
use uuid::Uuid;
use whatsnap_events::{
    AccountKind, Event, EventMetadata, LocationId, MessageDelivered, MessageFailed, MessageRead,
    NewEvent, OutboundMessageRouted, OutboundMessageSent, RecordedEvent,
};
use whatsnap_eventstore::projection::{ApplyError, Projection};
use whatsnap_eventstore::{EventStore, ExpectedVersion, StoreError};
use whatsnap_secrets::SecretKey;
use whatsnap_twilio::webhook::MessageStatus;
use whatsnap_twilio::{self as twilio, TwilioClient, TwilioError};

use crate::account;

/// Where an outbound message stands, from its own stream.
#[derive(Debug, Clone, Default)]
pub struct OutboundState {
    pub routed: Option<OutboundMessageRouted>,
    pub sent: Option<OutboundMessageSent>,
    pub delivered: bool,
    pub read: bool,
    pub failed: bool,
    pub version: u64,
}

impl OutboundState {
    pub fn from_history(history: &[RecordedEvent]) -> Result<Self, ApplyError> {
        let mut state = Self::default();
        for recorded in history {
            state.version = recorded.version;
            match recorded.decode()? {
                Event::OutboundMessageRouted(e) => state.routed = Some(e),
                Event::OutboundMessageSent(e) => state.sent = Some(e),
                Event::MessageDelivered(_) => state.delivered = true,
                Event::MessageRead(_) => state.read = true,
                Event::MessageFailed(_) | Event::OutboundRouteFailed(_) => state.failed = true,
                _ => {}
            }
        }
        Ok(state)
    }

    /// Sent (or reported on by the provider), or settled without sending: nothing more goes
    /// out.
    fn done_sending(&self) -> bool {
        self.sent.is_some() || self.failed || self.delivered || self.read
    }
}

/// What a provider's status report changes, if anything: only final states and reads are
/// recorded, each once; a report for another account or provider message is refused.
pub fn decide_delivery_status(
    state: &OutboundState,
    message_id: Uuid,
    account_id: Uuid,
    provider_message_id: &str,
    status: MessageStatus,
    error_code: Option<u32>,
) -> Result<Option<Event>, String> {
    let from_this_account = match (&state.sent, &state.routed) {
        (Some(sent), _) => {
            sent.account_id == account_id && sent.provider_message_id == provider_message_id
        }
        // Twilio can report before the sender has recorded what Twilio answered it; the
        // report is signed with the account's token for this message's URL, so it counts.
        (None, Some(routed)) => routed.account_id == account_id,
        (None, None) => return Err(format!("message {message_id} was never sent")),
    };
    if !from_this_account {
        return Err(format!(
            "message {message_id} was not sent as {provider_message_id} from account {account_id}"
        ));
    }
    let provider_message_id = Some(provider_message_id.to_owned());
    Ok(match status {
        MessageStatus::Delivered if !state.delivered && !state.failed => {
            Some(Event::from(MessageDelivered {
                message_id,
                provider_message_id,
            }))
        }
        MessageStatus::Read if !state.read && !state.failed => Some(Event::from(MessageRead {
            message_id,
            provider_message_id,
        })),
        failure if failure.is_failure() && !state.failed && !state.delivered => {
            let reason = match error_code {
                Some(code) => twilio::client::reason(code, &format!("the message was {failure}")),
                None => format!("Twilio reported the message {failure}"),
            };
            Some(Event::from(MessageFailed {
                message_id,
                reason,
                provider_error_code: error_code.map(|c| c.to_string()),
            }))
        }
        _ => None,
    })
}

/// Sends every routed reply through its account. Runs as its own projection (no tables), so a
/// provider outage holds back only the replies, in order, and never the other read models.
pub struct OutboundSender {
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) secret_key: SecretKey,
    pub(crate) twilio: TwilioClient,
    pub(crate) status_callback_base: Option<String>,
    /// How long a send is retried while the provider is unreachable before the message is
    /// recorded as failed.
    pub(crate) patience: Duration,
}

enum Outcome {
    Sent(String),
    Failed {
        reason: String,
        code: Option<String>,
    },
}

impl OutboundSender {
    async fn send(
        &self,
        location: &LocationId,
        routed: &OutboundMessageRouted,
        body: &str,
        media: &[String],
    ) -> Result<Outcome, ApplyError> {
        let (_, account) =
            crate::read_account(self.store.as_ref(), location, routed.account_id).await?;
        if account.status == account::Status::Removed {
            return Ok(Outcome::Failed {
                reason: format!(
                    "the account {} was removed before the reply left",
                    account.name
                ),
                code: None,
            });
        }
        let (Some(AccountKind::Twilio), Some(credentials)) = (account.kind, &account.twilio) else {
            return Ok(Outcome::Failed {
                reason: format!(
                    "sending through {} accounts is not available yet; add the tag of a Twilio account to reply",
                    account.kind.map_or("unknown", AccountKind::as_str)
                ),
                code: None,
            });
        };
        let Some(from) = account.phone_number.as_deref() else {
            return Ok(Outcome::Failed {
                reason: format!("the account {} has no phone number", account.name),
                code: None,
            });
        };
        let token = self.secret_key.open(&credentials.auth_token)?;
        let credentials = twilio::Credentials::new(&credentials.account_sid, token.expose());
        let callback = self.status_callback_base.as_ref().map(|base| {
            format!(
                "{}/webhooks/twilio/{location}/{}/status?message={}",
                base.trim_end_matches('/'),
                routed.account_id,
                routed.message_id
            )
        });
        let outgoing = twilio::Outgoing {
            from,
            to: &routed.to,
            body,
            media_urls: media,
            status_callback: callback.as_deref(),
        };
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(250);
        loop {
            match self.twilio.send(&credentials, &outgoing).await {
                Ok(sent) => return Ok(Outcome::Sent(sent.sid)),
                Err(err) if err.is_retryable() && started.elapsed() < self.patience => {
                    warn!(message_id = %routed.message_id, error = %err, "twilio send failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
                Err(err) => {
                    let code = match &err {
                        TwilioError::Rejected { code, .. } => code.map(|c| c.to_string()),
                        _ => None,
                    };
                    return Ok(Outcome::Failed {
                        reason: err.to_string(),
                        code,
                    });
                }
            }
        }
    }

    async fn on_routed(
        &self,
        cause: &RecordedEvent,
        routed: OutboundMessageRouted,
    ) -> Result<(), ApplyError> {
        let location = cause.location_id().clone();
        let history = self.store.read_stream(&cause.stream, 1, usize::MAX).await?;
        let state = OutboundState::from_history(&history)?;
        if state.done_sending() {
            return Ok(());
        }
        let (body, media): (String, Vec<String>) = history
            .iter()
            .find_map(|e| match e.decode() {
                Ok(Event::OutboundMessageRequested(requested)) => Some((
                    requested.body,
                    requested.attachments.into_iter().map(|a| a.url).collect(),
                )),
                _ => None,
            })
            .unwrap_or_default();
        let event = match self.send(&location, &routed, &body, &media).await? {
            Outcome::Sent(sid) => {
                info!(message_id = %routed.message_id, account_id = %routed.account_id, message_sid = %sid, "reply sent");
                Event::from(OutboundMessageSent {
                    message_id: routed.message_id,
                    account_id: routed.account_id,
                    provider_message_id: sid,
                })
            }
            Outcome::Failed { reason, code } => {
                warn!(message_id = %routed.message_id, %reason, "reply not sent");
                Event::from(MessageFailed {
                    message_id: routed.message_id,
                    reason,
                    provider_error_code: code,
                })
            }
        };
        append_settled(self.store.as_ref(), cause, state.version, &event).await
    }
}

/// Appends what became of a message after its last known version; if another writer appended
/// meanwhile (ghl-sync reporting), goes after it.
async fn append_settled(
    store: &dyn EventStore,
    cause: &RecordedEvent,
    mut version: u64,
    event: &Event,
) -> Result<(), ApplyError> {
    for _ in 0..5 {
        let metadata = EventMetadata::caused_by(cause).traced(whatsnap_telemetry::current());
        match store
            .append(
                &cause.stream,
                ExpectedVersion::Exact(version),
                vec![NewEvent::new(event, metadata)],
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::WrongExpectedVersion { .. }) => {
                version = store
                    .read_stream(&cause.stream, version + 1, usize::MAX)
                    .await?
                    .last()
                    .map_or(version, |e| e.version);
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(format!("message stream {} kept changing", cause.stream).into())
}

#[async_trait]
impl Projection<Any> for OutboundSender {
    fn name(&self) -> &str {
        "outbound_sender"
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[]
    }

    async fn react(&self, event: &RecordedEvent) -> Result<(), ApplyError> {
        if event.event_type != "OutboundMessageRouted" {
            return Ok(());
        }
        match event.decode()? {
            Event::OutboundMessageRouted(routed) => self.on_routed(event, routed).await,
            _ => Ok(()),
        }
    }

    async fn apply(&self, _: &mut AnyConnection, _: &RecordedEvent) -> Result<(), ApplyError> {
        Ok(())
    }

    async fn reset(&self, _: &mut AnyConnection) -> sqlx::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent_state(account_id: Uuid) -> OutboundState {
        OutboundState {
            sent: Some(OutboundMessageSent {
                message_id: Uuid::nil(),
                account_id,
                provider_message_id: "SM1".into(),
            }),
            version: 3,
            ..OutboundState::default()
        }
    }

    #[test]
    fn a_delivered_report_is_recorded_once() {
        let account = Uuid::now_v7();
        let mut state = sent_state(account);
        let first = decide_delivery_status(
            &state,
            Uuid::nil(),
            account,
            "SM1",
            MessageStatus::Delivered,
            None,
        )
        .unwrap();
        assert!(matches!(first, Some(Event::MessageDelivered(_))));
        state.delivered = true;
        let again = decide_delivery_status(
            &state,
            Uuid::nil(),
            account,
            "SM1",
            MessageStatus::Delivered,
            None,
        )
        .unwrap();
        assert_eq!(again, None);
    }

    #[test]
    fn a_failure_carries_twilios_reason_and_code() {
        let account = Uuid::now_v7();
        let decided = decide_delivery_status(
            &sent_state(account),
            Uuid::nil(),
            account,
            "SM1",
            MessageStatus::Undelivered,
            Some(30003),
        )
        .unwrap();
        let Some(Event::MessageFailed(failed)) = decided else {
            panic!("expected a failure, got {decided:?}");
        };
        assert!(
            failed.reason.contains("switched off or unreachable"),
            "{}",
            failed.reason
        );
        assert_eq!(failed.provider_error_code.as_deref(), Some("30003"));
    }

    #[test]
    fn intermediate_states_change_nothing_and_strangers_are_refused() {
        let account = Uuid::now_v7();
        let state = sent_state(account);
        for status in [
            MessageStatus::Queued,
            MessageStatus::Sent,
            MessageStatus::Sending,
        ] {
            assert_eq!(
                decide_delivery_status(&state, Uuid::nil(), account, "SM1", status, None).unwrap(),
                None
            );
        }
        assert!(
            decide_delivery_status(
                &state,
                Uuid::nil(),
                account,
                "SM2",
                MessageStatus::Delivered,
                None
            )
            .is_err()
        );
        assert!(
            decide_delivery_status(
                &state,
                Uuid::nil(),
                Uuid::now_v7(),
                "SM1",
                MessageStatus::Delivered,
                None
            )
            .is_err()
        );
        assert!(
            decide_delivery_status(
                &OutboundState::default(),
                Uuid::nil(),
                account,
                "SM1",
                MessageStatus::Delivered,
                None
            )
            .is_err()
        );
    }

    #[test]
    fn a_report_ahead_of_the_recorded_send_counts_for_the_routed_account_only() {
        let account = Uuid::now_v7();
        let routed = OutboundState {
            routed: Some(OutboundMessageRouted {
                message_id: Uuid::nil(),
                contact_id: Uuid::nil(),
                account_id: account,
                tag: "whatsnap-account-sales".into(),
                to: "+14155550100".into(),
                reason: "the contact carries the tag".into(),
            }),
            version: 2,
            ..OutboundState::default()
        };
        let decided = decide_delivery_status(
            &routed,
            Uuid::nil(),
            account,
            "SM9",
            MessageStatus::Delivered,
            None,
        );
        assert!(
            matches!(decided, Ok(Some(Event::MessageDelivered(_)))),
            "{decided:?}"
        );
        let stranger = decide_delivery_status(
            &routed,
            Uuid::nil(),
            Uuid::now_v7(),
            "SM9",
            MessageStatus::Delivered,
            None,
        );
        assert!(stranger.is_err());
    }
}
