//! One discipline for every effect whatsnap has on the outside world — a contact or a message
//! posted to GHL, a status reported, an owner set, a text sent through Twilio, and every
//! connector after them:
//!
//! 1. the subject's own stream is read first, and an effect whose outcome is already recorded
//!    there is never made again, whatever state a read model is in;
//! 2. the intent ([`EffectIntended`]) is appended to that stream before the call;
//! 3. the outcome (the effect's own event, e.g. `GhlMessagePosted`) is appended after it;
//! 4. an intent found without an outcome — the process died between 2 and 3, or the call timed
//!    out — is **reconciled** with the third party before anything is sent again: if the third
//!    party has it, its outcome is recorded and nothing is sent.
//!
//! Where the third party offers no look-up, [`Effect::reconcile`] answers `None` and the effect is
//! made again: at most one duplicate, and only for a crash inside the call's window. Queues call
//! [`Outbox::perform`] one item at a time, so that window holds at most one call per queue.
//!
//! [`failpoint`] names the points between these steps, where crash tests kill the process.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tracing::{info, warn};
use uuid::Uuid;
use whatsnap_events::{EffectIntended, Event, EventMetadata, NewEvent, RecordedEvent, StreamId};
use whatsnap_eventstore::{EventStore, ExpectedVersion, StoreError};

pub mod failpoint;

/// One event of a subject's stream, with its decoded payload.
pub type Recorded = (RecordedEvent, Event);

/// An intent recorded earlier that no outcome followed.
#[derive(Debug, Clone)]
pub struct OpenIntent {
    pub attempt: u32,
    /// When the intent was recorded: what the third party did for it happened after this.
    pub at: DateTime<Utc>,
    pub key: Option<String>,
}

/// One kind of call to a third party, as the outbox needs to know it.
#[async_trait]
pub trait Effect: Send + Sync {
    /// What the call gives back, and what its outcome event is made from.
    type Output: Send;
    type Error: Send;

    /// The outcome of this very effect, when the subject's stream already records it.
    fn recorded(&self, history: &[Recorded]) -> Option<Self::Output>;

    /// Whether `event` settles an earlier intent of this operation (its outcome, or a recorded
    /// refusal), so that an intent before it is not open.
    fn settles(&self, event: &Event) -> bool;

    /// Asks the third party whether the call of `intent` took effect, and what it gave.
    /// `None` when it has no trace of it — or cannot say: then the call is made again.
    async fn reconcile(&self, intent: &OpenIntent) -> Result<Option<Self::Output>, Self::Error> {
        let _ = intent;
        Ok(None)
    }

    /// The call itself, tried once: retries are the caller's, after the outbox reconciles.
    async fn call(&self) -> Result<Self::Output, Self::Error>;

    /// Whether a call that failed with `error` certainly did not reach the third party (a
    /// refusal, a rate limit, no connection), so that the next try needs no reconciling.
    fn unsent(&self, error: &Self::Error) -> bool;

    /// The event that records the outcome.
    fn outcome(&self, output: &Self::Output) -> Event;
}

/// How the effect came to be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Performed<T> {
    /// Made now.
    Called(T),
    /// Already recorded: nothing was called.
    AlreadyDone(T),
    /// An earlier call had taken effect; its outcome is now recorded and nothing was called
    /// again.
    Reconciled(T),
}

impl<T> Performed<T> {
    pub fn into_inner(self) -> T {
        match self {
            Self::Called(t) | Self::AlreadyDone(t) | Self::Reconciled(t) => t,
        }
    }

    /// Whether the third party was called this time.
    pub fn called(&self) -> bool {
        matches!(self, Self::Called(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EffectError<E> {
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Call(E),
    #[error("the stream {0} kept changing while the effect was being recorded")]
    Contended(StreamId),
}

/// Where one effect's intent and outcome are recorded.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The stream of the message or contact the effect is for.
    pub stream: StreamId,
    /// A stable name, e.g. `ghl.post_message`; the fail points are named after it.
    pub operation: &'static str,
    pub subject_id: Uuid,
    /// What identifies the call at the third party, recorded in the intent.
    pub key: Option<String>,
    pub metadata: EventMetadata,
}

/// Records every effect's intent and outcome in the log, and reconciles before retrying.
pub struct Outbox {
    store: Arc<dyn EventStore>,
    /// Effects whose last call certainly did not reach the third party: their open intent
    /// needs no reconciling before the next try from this process.
    unsent: Mutex<HashSet<(StreamId, &'static str)>>,
}

impl Outbox {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            unsent: Mutex::new(HashSet::new()),
        }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Makes the effect once: skipped when its outcome is recorded, reconciled when an earlier
    /// intent has none, called otherwise; intent and outcome are appended around the call.
    pub async fn perform<E: Effect>(
        &self,
        subject: &Subject,
        effect: &E,
    ) -> Result<Performed<E::Output>, EffectError<E::Error>> {
        let started = std::time::Instant::now();
        let performed = self.perform_once(subject, effect).await;
        let outcome = match &performed {
            Ok(Performed::AlreadyDone(_)) => "already_done",
            Ok(Performed::Reconciled(_)) => "reconciled",
            Ok(Performed::Called(_)) => "called",
            Err(_) => "failed",
        };
        whatsnap_telemetry::metrics::observe(
            "whatsnap_effect_duration_seconds",
            "How long an effect on the outside world took, its intent and outcome recorded, by operation and outcome.",
            vec![
                ("operation", subject.operation.to_owned()),
                ("outcome", outcome.to_owned()),
            ],
            started.elapsed(),
        );
        performed
    }

    async fn perform_once<E: Effect>(
        &self,
        subject: &Subject,
        effect: &E,
    ) -> Result<Performed<E::Output>, EffectError<E::Error>> {
        let point = |stage: &str| failpoint::hit(&format!("{}.{stage}", subject.operation));
        let unsent_key = (subject.stream.clone(), subject.operation);
        for _ in 0..8 {
            let history = self.history(&subject.stream).await?;
            if let Some(output) = effect.recorded(&history) {
                return Ok(Performed::AlreadyDone(output));
            }
            let version = history.last().map_or(0, |(e, _)| e.version);
            match open_intent(subject, effect, &history) {
                Some(open) => {
                    let known_unsent = self.unsent().contains(&unsent_key);
                    if !known_unsent
                        && let Some(output) =
                            effect.reconcile(&open).await.map_err(EffectError::Call)?
                    {
                        info!(
                            operation = subject.operation,
                            subject_id = %subject.subject_id,
                            attempt = open.attempt,
                            "an earlier call had taken effect; recording it, not calling again"
                        );
                        self.record(subject, &effect.outcome(&output)).await?;
                        return Ok(Performed::Reconciled(output));
                    }
                    // The open intent covers this try: the third party has nothing of it.
                }
                None => {
                    let attempt = history
                        .iter()
                        .filter(|(_, e)| is_intent_of(subject, e))
                        .count() as u32
                        + 1;
                    let intent = Event::from(EffectIntended {
                        operation: subject.operation.to_owned(),
                        subject_id: subject.subject_id,
                        attempt,
                        key: subject.key.clone(),
                    });
                    point("before_intent");
                    match self
                        .store
                        .append(
                            &subject.stream,
                            if version == 0 {
                                ExpectedVersion::NoStream
                            } else {
                                ExpectedVersion::Exact(version)
                            },
                            vec![NewEvent::new(&intent, subject.metadata.clone())],
                        )
                        .await
                    {
                        Ok(_) => {}
                        // Another writer appended meanwhile: look again.
                        Err(err) if err.is_conflict() => continue,
                        Err(err) => return Err(err.into()),
                    }
                }
            }
            point("before_call");
            return match effect.call().await {
                Ok(output) => {
                    self.unsent().remove(&unsent_key);
                    point("after_call");
                    self.record(subject, &effect.outcome(&output)).await?;
                    point("after_outcome");
                    Ok(Performed::Called(output))
                }
                Err(error) => {
                    if effect.unsent(&error) {
                        self.unsent().insert(unsent_key);
                    } else {
                        self.unsent().remove(&unsent_key);
                    }
                    Err(EffectError::Call(error))
                }
            };
        }
        Err(EffectError::Contended(subject.stream.clone()))
    }

    /// The subject's stream, decoded; events this version does not know are left out.
    pub async fn history(&self, stream: &StreamId) -> Result<Vec<Recorded>, StoreError> {
        let events = self.store.read_stream(stream, 1, usize::MAX).await?;
        Ok(events
            .into_iter()
            .filter_map(|recorded| match recorded.decode() {
                Ok(event) => Some((recorded, event)),
                Err(err) => {
                    warn!(stream = %recorded.stream, position = recorded.position, error = %err, "an event of the subject's stream is skipped");
                    None
                }
            })
            .collect())
    }

    /// Appends an event that settles an effect without calling (e.g. a refusal to record).
    pub async fn record(&self, subject: &Subject, event: &Event) -> Result<(), StoreError> {
        self.store
            .append(
                &subject.stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(event, subject.metadata.clone())],
            )
            .await
            .map(drop)
    }

    fn unsent(&self) -> std::sync::MutexGuard<'_, HashSet<(StreamId, &'static str)>> {
        self.unsent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn is_intent_of(subject: &Subject, event: &Event) -> bool {
    matches!(event, Event::EffectIntended(i)
        if i.operation == subject.operation && i.subject_id == subject.subject_id)
}

/// The newest intent of this operation with nothing after it that settles it.
fn open_intent<E: Effect>(
    subject: &Subject,
    effect: &E,
    history: &[Recorded],
) -> Option<OpenIntent> {
    let mut open = None;
    for (recorded, event) in history {
        if let Event::EffectIntended(intent) = event {
            if is_intent_of(subject, event) {
                open = Some(OpenIntent {
                    attempt: intent.attempt,
                    at: recorded.occurred_at,
                    key: intent.key.clone(),
                });
            }
        } else if effect.settles(event) {
            open = None;
        }
    }
    open
}
