//! Replies on their way out. A routed message joins its account's queue ([`OutboundQueue`]);
//! the [`SendWorker`] sends each through the outbox — intent recorded, Twilio called once,
//! outcome recorded, an unanswered send looked for in Twilio's message list before it is sent
//! again — from the account contacts chose. What the provider later reports (Twilio's
//! StatusCallback) becomes the message's final status.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{Any, AnyConnection, Row};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use uuid::Uuid;
use whatsnap_effects::{Effect, EffectError, OpenIntent, Outbox, Recorded, Subject};
use whatsnap_events::{
    AccountKind, AggregateKind, Event, EventMetadata, LocationId, MessageDelivered, MessageFailed,
    MessageRead, OutboundMessageRouted, OutboundMessageSent, RecordedEvent, StreamId,
};
use whatsnap_eventstore::projection::{ApplyError, Backoff, Projection};
use whatsnap_rpc::ReadDb;
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

/// The replies waiting to leave, per account (`outbound_queue`): a routed message joins its
/// account's queue, and leaves it once sent, failed or reported on. The [`SendWorker`] drains
/// it; a rebuild from the log gives the same queue.
pub struct OutboundQueue;

#[async_trait]
impl Projection<Any> for OutboundQueue {
    fn name(&self) -> &str {
        "outbound_queue"
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE outbound_queue (message_id TEXT PRIMARY KEY, location_id TEXT NOT NULL, account_id TEXT NOT NULL, position BIGINT NOT NULL); \
           CREATE INDEX outbound_queue_by_account ON outbound_queue (account_id, position)",
        ]
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let settled = match event.event_type.as_str() {
            "OutboundMessageRouted" => {
                let Event::OutboundMessageRouted(routed) = event.decode()? else {
                    return Ok(());
                };
                sqlx::query(
                    "INSERT INTO outbound_queue (message_id, location_id, account_id, position) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (message_id) DO NOTHING",
                )
                .bind(routed.message_id.to_string())
                .bind(event.location_id().to_string())
                .bind(routed.account_id.to_string())
                .bind(event.position as i64)
                .execute(&mut *conn)
                .await?;
                return Ok(());
            }
            "OutboundMessageSent" | "MessageFailed" | "MessageDelivered" | "MessageRead" => {
                match event.decode()? {
                    Event::OutboundMessageSent(e) => e.message_id,
                    Event::MessageFailed(e) => e.message_id,
                    Event::MessageDelivered(e) => e.message_id,
                    Event::MessageRead(e) => e.message_id,
                    _ => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        sqlx::query("DELETE FROM outbound_queue WHERE message_id = $1")
            .bind(settled.to_string())
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM outbound_queue")
            .execute(conn)
            .await
            .map(drop)
    }
}

/// One text through one Twilio account, as an effect of the outbox: reconciled with Twilio's
/// list of the account's messages (same sender, recipient and text, created after the intent).
struct TwilioSend<'a> {
    twilio: &'a TwilioClient,
    credentials: twilio::Credentials,
    routed: &'a OutboundMessageRouted,
    from: String,
    body: String,
    media: Vec<String>,
    callback: Option<String>,
}

/// How far before an intent's time a message Twilio lists may be dated (clocks differ).
const CLOCK_SKEW: chrono::Duration = chrono::Duration::seconds(60);

#[async_trait]
impl Effect for TwilioSend<'_> {
    type Output = String;
    type Error = TwilioError;

    fn recorded(&self, history: &[Recorded]) -> Option<String> {
        history.iter().find_map(|(_, event)| match event {
            Event::OutboundMessageSent(sent) => Some(sent.provider_message_id.clone()),
            _ => None,
        })
    }

    fn settles(&self, event: &Event) -> bool {
        matches!(
            event,
            Event::OutboundMessageSent(_)
                | Event::MessageFailed(_)
                | Event::MessageDelivered(_)
                | Event::MessageRead(_)
        )
    }

    async fn reconcile(&self, intent: &OpenIntent) -> Result<Option<String>, TwilioError> {
        let since = intent.at - CLOCK_SKEW;
        let mut days = vec![since.date_naive()];
        if Utc::now().date_naive() != since.date_naive() {
            days.push(since.date_naive() + chrono::Days::new(1));
        }
        for day in days {
            let listed = self
                .twilio
                .list_messages(&self.credentials, &self.from, &self.routed.to, day)
                .await?;
            if let Some(found) = listed.into_iter().find(|m| {
                m.body.as_deref().unwrap_or_default() == self.body
                    && m.created_at().is_some_and(|at| at >= since)
            }) {
                return Ok(Some(found.sid));
            }
        }
        Ok(None)
    }

    async fn call(&self) -> Result<String, TwilioError> {
        let outgoing = twilio::Outgoing {
            from: &self.from,
            to: &self.routed.to,
            body: &self.body,
            media_urls: &self.media,
            status_callback: self.callback.as_deref(),
        };
        self.twilio
            .send(&self.credentials, &outgoing)
            .await
            .map(|sent| sent.sid)
    }

    fn unsent(&self, error: &TwilioError) -> bool {
        error.certainly_unsent()
    }

    fn outcome(&self, sid: &String) -> Event {
        Event::from(OutboundMessageSent {
            message_id: self.routed.message_id,
            account_id: self.routed.account_id,
            provider_message_id: sid.clone(),
        })
    }
}

/// Sends the routed replies, one queue per account: a Twilio account that is down or rate
/// limited (20429) holds back its own replies only, in order, and never another's.
pub struct SendWorker {
    pub(crate) outbox: Outbox,
    pub(crate) db: ReadDb,
    pub(crate) secret_key: SecretKey,
    pub(crate) twilio: TwilioClient,
    pub(crate) status_callback_base: Option<String>,
    /// How long a send is tried while the provider is unreachable before the message is
    /// recorded as failed.
    pub(crate) patience: Duration,
    /// How often the queue is looked at for new work.
    pub(crate) poll: Duration,
}

/// What became of one try.
enum Step {
    /// Sent, or settled without sending: the next reply.
    Done,
    /// Twilio is unavailable or rate limiting: this account waits.
    Wait(String),
}

impl SendWorker {
    /// Runs until `shutdown` resolves: one task per account with replies waiting.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut running: HashMap<String, JoinHandle<()>> = HashMap::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.poll) => {}
            }
            running.retain(|_, task| !task.is_finished());
            let accounts: Vec<(String, String)> =
                match sqlx::query("SELECT DISTINCT location_id, account_id FROM outbound_queue")
                    .fetch_all(&self.db)
                    .await
                {
                    Ok(rows) => rows
                        .iter()
                        .map(|r| (r.get("location_id"), r.get("account_id")))
                        .collect(),
                    Err(err) => {
                        warn!(error = %err, "cannot read the reply queue");
                        continue;
                    }
                };
            for (location, account) in accounts {
                if running.contains_key(&account) {
                    continue;
                }
                let (Ok(location), Ok(account_id)) = (
                    LocationId::parse(location.as_str()),
                    account.parse::<Uuid>(),
                ) else {
                    continue;
                };
                let worker = self.clone();
                running.insert(account, tokio::spawn(worker.drain(location, account_id)));
            }
        }
        for task in running.values() {
            task.abort();
        }
    }

    /// Sends one account's replies in order until its queue is empty.
    async fn drain(self: Arc<Self>, location: LocationId, account_id: Uuid) {
        let mut done: HashSet<Uuid> = HashSet::new();
        let mut attempt: u32 = 0;
        loop {
            let queued: Vec<Uuid> = match sqlx::query(
                "SELECT message_id FROM outbound_queue WHERE account_id = $1 ORDER BY position LIMIT 100",
            )
            .bind(account_id.to_string())
            .fetch_all(&self.db)
            .await
            {
                Ok(rows) => rows
                    .iter()
                    .filter_map(|r| r.get::<String, _>("message_id").parse().ok())
                    .collect(),
                Err(err) => {
                    warn!(%account_id, error = %err, "cannot read the reply queue");
                    tokio::time::sleep(self.poll * 5).await;
                    continue;
                }
            };
            if queued.is_empty() {
                return;
            }
            let open: Vec<Uuid> = queued.into_iter().filter(|id| !done.contains(id)).collect();
            if open.is_empty() {
                // Sent, and waiting for the read model to say so.
                tokio::time::sleep(self.poll).await;
                continue;
            }
            for message_id in open {
                match self.send_one(&location, message_id).await {
                    Ok(Step::Done) => {
                        done.insert(message_id);
                        attempt = 0;
                    }
                    Ok(Step::Wait(reason)) => {
                        attempt += 1;
                        let wait = backoff(attempt);
                        warn!(%account_id, %message_id, attempt, %reason, retry_in_ms = wait.as_millis() as u64, "reply not sent yet; this account waits");
                        tokio::time::sleep(wait).await;
                        break;
                    }
                    Err(err) => {
                        attempt += 1;
                        warn!(%account_id, %message_id, error = %err, "reply queue: trying again");
                        tokio::time::sleep(backoff(attempt)).await;
                        break;
                    }
                }
            }
        }
    }

    /// Sends one routed reply through the outbox, or settles it when it cannot leave.
    async fn send_one(&self, location: &LocationId, message_id: Uuid) -> Result<Step, ApplyError> {
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Message, message_id);
        let history = self
            .outbox
            .store()
            .read_stream(&stream, 1, usize::MAX)
            .await?;
        let state = OutboundState::from_history(&history)?;
        let Some(routed) = state.routed.clone() else {
            return Ok(Step::Done);
        };
        if state.done_sending() {
            return Ok(Step::Done);
        }
        let cause = history
            .iter()
            .rev()
            .find(|e| e.event_type == "OutboundMessageRouted")
            .expect("a routed message has its routing event");
        let metadata = EventMetadata::caused_by(cause).traced(whatsnap_telemetry::current());
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
        let subject = Subject {
            stream: stream.clone(),
            operation: SEND,
            subject_id: message_id,
            key: None,
            metadata: metadata.clone(),
        };
        let effect = match self.effect(location, &routed, body, media).await? {
            Ok(effect) => effect,
            Err(reason) => {
                warn!(%message_id, %reason, "reply not sent");
                let failed = Event::from(MessageFailed {
                    message_id,
                    reason,
                    provider_error_code: None,
                });
                self.outbox.record(&subject, &failed).await?;
                return Ok(Step::Done);
            }
        };
        let err = match self.outbox.perform(&subject, &effect).await {
            Ok(performed) => {
                let sid = performed.into_inner();
                info!(%message_id, account_id = %routed.account_id, message_sid = %sid, "reply sent");
                return Ok(Step::Done);
            }
            Err(EffectError::Call(err)) => err,
            Err(other) => return Err(other.to_string().into()),
        };
        let first_try = history
            .iter()
            .find(|e| {
                matches!(e.decode(), Ok(Event::EffectIntended(intent)) if intent.operation == SEND)
            })
            .map_or_else(Utc::now, |e| e.occurred_at);
        let waited = (Utc::now() - first_try).to_std().unwrap_or_default();
        if err.is_retryable() && waited < self.patience {
            return Ok(Step::Wait(err.to_string()));
        }
        // Given up: unless Twilio has it after all, it failed.
        if !err.certainly_unsent() {
            let intent = OpenIntent {
                attempt: 0,
                at: first_try,
                key: None,
            };
            if let Ok(Some(sid)) = effect.reconcile(&intent).await {
                self.outbox.record(&subject, &effect.outcome(&sid)).await?;
                return Ok(Step::Done);
            }
        }
        let code = match &err {
            TwilioError::Rejected { code, .. } => code.map(|c| c.to_string()),
            _ => None,
        };
        warn!(%message_id, reason = %err, "reply not sent");
        let failed = Event::from(MessageFailed {
            message_id,
            reason: err.to_string(),
            provider_error_code: code,
        });
        self.outbox.record(&subject, &failed).await?;
        Ok(Step::Done)
    }

    /// The send through the routed account, or why it cannot leave.
    async fn effect<'a>(
        &'a self,
        location: &LocationId,
        routed: &'a OutboundMessageRouted,
        body: String,
        media: Vec<String>,
    ) -> Result<Result<TwilioSend<'a>, String>, ApplyError> {
        let (_, account) =
            crate::read_account(self.outbox.store().as_ref(), location, routed.account_id).await?;
        if account.status == account::Status::Removed {
            return Ok(Err(format!(
                "the account {} was removed before the reply left",
                account.name
            )));
        }
        let (Some(AccountKind::Twilio), Some(credentials)) = (account.kind, &account.twilio) else {
            return Ok(Err(format!(
                "sending through {} accounts is not available yet; add the tag of a Twilio account to reply",
                account.kind.map_or("unknown", AccountKind::as_str)
            )));
        };
        let Some(from) = account.phone_number.clone() else {
            return Ok(Err(format!(
                "the account {} has no phone number",
                account.name
            )));
        };
        let token = self.secret_key.open(&credentials.auth_token)?;
        let callback = self.status_callback_base.as_ref().map(|base| {
            format!(
                "{}/webhooks/twilio/{location}/{}/status?message={}",
                base.trim_end_matches('/'),
                routed.account_id,
                routed.message_id
            )
        });
        Ok(Ok(TwilioSend {
            twilio: &self.twilio,
            credentials: twilio::Credentials::new(&credentials.account_sid, token.expose()),
            routed,
            from,
            body,
            media,
            callback,
        }))
    }
}

/// The operation name of a Twilio send in the log and in fail point names.
pub const SEND: &str = "twilio.send";

/// The pause before the `attempt`-th retry of an account's head reply, with jitter.
fn backoff(attempt: u32) -> Duration {
    Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(15),
    }
    .delay(attempt)
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
