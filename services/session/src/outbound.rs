//! Replies on their way out. A routed message joins its account's queue ([`OutboundQueue`]);
//! the [`SendWorker`] sends each through the outbox — intent recorded, the account's connector
//! called once, outcome recorded, an unanswered send looked for with the provider before it is
//! sent again — from the account contacts chose. What the provider later reports (a Twilio
//! StatusCallback, a WhatsApp receipt) becomes the message's status.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::{Any, AnyConnection, Row};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use uuid::Uuid;
use whatsnap_connector::{AccountRef, Connector, Connectors, Outgoing, Pacing, Receipt, SendError};
use whatsnap_effects::{Effect, EffectError, OpenIntent, Outbox, Recorded, Subject};
use whatsnap_events::{
    AccountKind, AggregateKind, Event, EventMetadata, LocationId, MessageDelivered, MessageFailed,
    MessageRead, OutboundMessageRouted, OutboundMessageSent, RecordedEvent, StreamId,
};
use whatsnap_eventstore::Aggregate;
use whatsnap_eventstore::projection::{ApplyError, Backoff, Projection};
use whatsnap_rpc::ReadDb;
use whatsnap_secrets::SecretKey;

use crate::account;
use crate::connection::account_ref;

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
            state = state.evolve(&recorded.decode()?, recorded.version);
        }
        Ok(state)
    }

    /// Sent (or reported on by the provider), or settled without sending: nothing more goes
    /// out.
    fn done_sending(&self) -> bool {
        self.sent.is_some() || self.failed || self.delivered || self.read
    }
}

impl Aggregate for OutboundState {
    fn evolve(mut self, event: &Event, version: u64) -> Self {
        self.version = version;
        match event {
            Event::OutboundMessageRouted(e) => self.routed = Some(e.clone()),
            Event::OutboundMessageSent(e) => self.sent = Some(e.clone()),
            Event::MessageDelivered(_) => self.delivered = true,
            Event::MessageRead(_) => self.read = true,
            Event::MessageFailed(_) | Event::OutboundRouteFailed(_) => self.failed = true,
            _ => {}
        }
        self
    }
}

/// What a provider's status report changes, if anything: only final states and reads are
/// recorded, each once; a report for another account or provider message is refused.
pub fn decide_delivery_status(
    state: &OutboundState,
    message_id: Uuid,
    account_id: Uuid,
    provider_message_id: &str,
    receipt: &Receipt,
) -> Result<Option<Event>, String> {
    let from_this_account = match (&state.sent, &state.routed) {
        (Some(sent), _) => {
            sent.account_id == account_id && sent.provider_message_id == provider_message_id
        }
        // A provider can report before the sender has recorded what the provider answered it;
        // the report is authenticated as the account's, for this message, so it counts.
        (None, Some(routed)) => routed.account_id == account_id,
        (None, None) => return Err(format!("message {message_id} was never sent")),
    };
    if !from_this_account {
        return Err(format!(
            "message {message_id} was not sent as {provider_message_id} from account {account_id}"
        ));
    }
    let provider_message_id = Some(provider_message_id.to_owned());
    Ok(match receipt {
        Receipt::Delivered if !state.delivered && !state.read && !state.failed => {
            Some(Event::from(MessageDelivered {
                message_id,
                provider_message_id,
            }))
        }
        Receipt::Read if !state.read && !state.failed => Some(Event::from(MessageRead {
            message_id,
            provider_message_id,
        })),
        Receipt::Failed { reason, code } if !state.failed && !state.delivered && !state.read => {
            Some(Event::from(MessageFailed {
                message_id,
                reason: reason.clone(),
                provider_error_code: code.clone(),
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

    fn reads(&self) -> Option<&'static [&'static str]> {
        Some(&[
            "OutboundMessageRouted",
            "OutboundMessageSent",
            "MessageFailed",
            "MessageDelivered",
            "MessageRead",
        ])
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE outbound_queue (message_id TEXT PRIMARY KEY, location_id TEXT NOT NULL, account_id TEXT NOT NULL, position BIGINT NOT NULL); \
           CREATE INDEX outbound_queue_by_account ON outbound_queue (account_id, position)",
            "CREATE TABLE sent_messages (account_id TEXT NOT NULL, provider_message_id TEXT NOT NULL, location_id TEXT NOT NULL, message_id TEXT NOT NULL, PRIMARY KEY (account_id, provider_message_id))",
            "ALTER TABLE sent_messages ADD COLUMN sent_at TEXT; \
             ALTER TABLE sent_messages ADD COLUMN answered BIGINT NOT NULL DEFAULT 0; \
             CREATE INDEX sent_messages_by_time ON sent_messages (account_id, sent_at)",
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
                    Event::OutboundMessageSent(e) => {
                        sqlx::query(
                            "INSERT INTO sent_messages (account_id, provider_message_id, location_id, message_id, sent_at) \
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id, provider_message_id) DO NOTHING",
                        )
                        .bind(e.account_id.to_string())
                        .bind(&e.provider_message_id)
                        .bind(event.location_id().to_string())
                        .bind(e.message_id.to_string())
                        .bind(event.occurred_at.to_rfc3339())
                        .execute(&mut *conn)
                        .await?;
                        e.message_id
                    }
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
            .execute(&mut *conn)
            .await?;
        if event.event_type != "OutboundMessageSent" {
            // The provider said what became of it: the account's receipts come through.
            sqlx::query("UPDATE sent_messages SET answered = 1 WHERE message_id = $1")
                .bind(settled.to_string())
                .execute(conn)
                .await?;
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM outbound_queue")
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM sent_messages")
            .execute(conn)
            .await
            .map(drop)
    }
}

/// One reply through its account's connector, as an effect of the outbox: looked for with the
/// provider (when it offers a way) before it is sent again.
struct ConnectorSend<'a> {
    connector: &'a dyn Connector,
    account: AccountRef,
    routed: &'a OutboundMessageRouted,
    outgoing: Outgoing,
}

#[async_trait]
impl Effect for ConnectorSend<'_> {
    type Output = String;
    type Error = SendError;

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

    async fn reconcile(&self, intent: &OpenIntent) -> Result<Option<String>, SendError> {
        let found = self
            .connector
            .find_sent(&self.account, &self.outgoing, intent.at)
            .await?;
        Ok(found.map(|sent| sent.provider_message_id))
    }

    async fn call(&self) -> Result<String, SendError> {
        self.connector
            .send(&self.account, &self.outgoing)
            .await
            .map(|sent| sent.provider_message_id)
    }

    fn unsent(&self, error: &SendError) -> bool {
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
    pub(crate) connectors: Connectors,
    /// The session service's accounts, kept between loads.
    pub(crate) accounts: Arc<whatsnap_eventstore::aggregate::Cache<crate::account::AccountState>>,
    /// How long a send is tried while the provider is unreachable before the message is
    /// recorded as failed.
    pub(crate) patience: Duration,
    /// How often the queue is looked at for new work.
    pub(crate) poll: Duration,
}

/// Whether a connected account is flagged as not delivering: `None` when it is not connected,
/// `Some(None)` when it delivers, `Some(Some(why))` when it does not.
type Stalled = Option<Option<String>>;

/// What became of one try.
enum Step {
    /// Sent, or settled without sending: the next reply.
    Done,
    /// Sent: the next reply after this pause (the account's pacing).
    Paced(Duration),
    /// The provider is unavailable or rate limiting: this account waits.
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
                    Ok(Step::Paced(pause)) => {
                        done.insert(message_id);
                        attempt = 0;
                        tokio::time::sleep(pause).await;
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
        let (body, attachments) = history
            .iter()
            .find_map(|e| match e.decode() {
                Ok(Event::OutboundMessageRequested(requested)) => {
                    Some((requested.body, requested.attachments))
                }
                _ => None,
            })
            .unwrap_or_default();
        let (connector, account, pacing, stalled) = match self.connector(location, &routed).await? {
            Ok(found) => found,
            Err(reason) => {
                warn!(%message_id, %reason, "reply not sent");
                let subject = Subject {
                    stream: stream.clone(),
                    operation: "send",
                    subject_id: message_id,
                    key: None,
                    metadata: metadata.clone(),
                };
                let failed = Event::from(MessageFailed {
                    message_id,
                    reason,
                    provider_error_code: None,
                });
                self.outbox.record(&subject, &failed).await?;
                return Ok(Step::Done);
            }
        };
        let outgoing = Outgoing {
            message_id,
            to: routed.to.clone(),
            body,
            attachments,
            typing: pacing.typing,
        };
        let subject = Subject {
            stream: stream.clone(),
            operation: connector.send_operation(),
            subject_id: message_id,
            key: None,
            metadata: metadata.clone(),
        };
        let effect = ConnectorSend {
            connector: connector.as_ref(),
            account,
            routed: &routed,
            outgoing,
        };
        let err = match self.outbox.perform(&subject, &effect).await {
            Ok(performed) => {
                let called = performed.called();
                if called && matches!(stalled, Some(Some(_))) {
                    self.delivery_changed(location, routed.account_id, true, "a reply was sent")
                        .await?;
                }
                let sid = performed.into_inner();
                info!(%message_id, account_id = %routed.account_id, provider_message_id = %sid, engine = connector.engine(), "reply sent");
                return Ok(if called && pacing != Pacing::default() {
                    Step::Paced(pacing.pause(rand::random()))
                } else {
                    Step::Done
                });
            }
            Err(EffectError::Call(err)) => err,
            Err(other) => return Err(other.to_string().into()),
        };
        // A live link (a WhatsApp device) that reports open while sends fail is flagged: the
        // account shows it and an operator is alerted.
        if stalled == Some(None) && err.is_retryable() && connector.session().is_some() {
            let reason = format!("the link reports open, but sends fail: {err}");
            self.delivery_changed(location, routed.account_id, false, &reason)
                .await?;
        }
        let first_try = history
            .iter()
            .find(|e| {
                matches!(e.decode(), Ok(Event::EffectIntended(intent)) if intent.operation == subject.operation)
            })
            .map_or_else(Utc::now, |e| e.occurred_at);
        let waited = (Utc::now() - first_try).to_std().unwrap_or_default();
        if err.is_retryable() && waited < self.patience {
            return Ok(Step::Wait(err.to_string()));
        }
        // Given up: unless the provider has it after all, it failed.
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
        let code = err.code().map(str::to_owned);
        warn!(%message_id, reason = %err, "reply not sent");
        let failed = Event::from(MessageFailed {
            message_id,
            reason: err.to_string(),
            provider_error_code: code,
        });
        self.outbox.record(&subject, &failed).await?;
        Ok(Step::Done)
    }

    /// Records that a connected account stopped delivering, or delivers again.
    async fn delivery_changed(
        &self,
        location: &LocationId,
        account_id: Uuid,
        delivering: bool,
        reason: &str,
    ) -> Result<(), ApplyError> {
        crate::connection::record_delivery(
            self.outbox.store().as_ref(),
            location,
            account_id,
            delivering,
            reason,
        )
        .await?;
        Ok(())
    }

    /// The connector of the routed account and the account as it needs it, or why the reply
    /// cannot leave.
    async fn connector(
        &self,
        location: &LocationId,
        routed: &OutboundMessageRouted,
    ) -> Result<Result<(Arc<dyn Connector>, AccountRef, Pacing, Stalled), String>, ApplyError> {
        let (_, account) = crate::read_account(
            self.outbox.store().as_ref(),
            &self.accounts,
            location,
            routed.account_id,
            crate::Reading::Followed,
        )
        .await?;
        if account.status == account::Status::Removed {
            return Ok(Err(format!(
                "the account {} was removed before the reply left",
                account.name
            )));
        }
        let connector = account
            .kind
            .and_then(|kind| self.connectors.for_account(kind, account.engine.as_deref()));
        let Some(connector) = connector else {
            return Ok(Err(format!(
                "this deployment runs no engine for {} accounts ({}); add the tag of another account to reply",
                account.kind.map_or("unknown", AccountKind::as_str),
                account.engine.as_deref().unwrap_or("default engine")
            )));
        };
        let pacing = account.pacing.unwrap_or_else(|| connector.default_pacing());
        let stalled =
            (account.status == account::Status::Connected).then(|| account.not_delivering.clone());
        match account_ref(location, &account, &self.secret_key) {
            Some(reference) => Ok(Ok((connector, reference, pacing, stalled))),
            None => Ok(Err(format!("the account {} cannot be read", account.name))),
        }
    }
}

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
    use whatsnap_twilio::webhook::MessageStatus;

    use super::*;

    /// A Twilio status report, as the session service decides it.
    fn decide(
        state: &OutboundState,
        message_id: Uuid,
        account_id: Uuid,
        sid: &str,
        status: MessageStatus,
        error_code: Option<u32>,
    ) -> Result<Option<Event>, String> {
        match whatsnap_twilio::connector::receipt(status, error_code) {
            Some(receipt) => decide_delivery_status(state, message_id, account_id, sid, &receipt),
            None => Ok(None),
        }
    }

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
        let first = decide(
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
        let again = decide(
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
        let decided = decide(
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
                decide(&state, Uuid::nil(), account, "SM1", status, None).unwrap(),
                None
            );
        }
        assert!(
            decide(
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
            decide(
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
            decide(
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
        let decided = decide(
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
        let stranger = decide(
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
