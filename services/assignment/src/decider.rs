//! The live decider: reads the whole log in order into the [`Model`] and, for each event that
//! asks for a decision, decides and appends `ContactAssigned` or `AssignmentSkipped` (caused by
//! that event) to the contact's assignment stream. It starts from the beginning every time —
//! its state is the log — and knows which triggers were decided already from the decisions'
//! causation ids, so a restart decides only what was left undecided. A decision is appended at
//! the contact's decision count, so two deciders cannot both decide one trigger.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, info, warn};
use uuid::Uuid;
use whatsnap_events::{AggregateKind, EventId, EventMetadata, NewEvent, RecordedEvent, StreamId};
use whatsnap_eventstore::{EventStore, ExpectedVersion, StoreError, SubscribeFrom};

use crate::engine::Decision;
use crate::model::{Model, is_decision, reads};

pub struct Decider {
    store: Arc<dyn EventStore>,
    /// How often owners' silence is checked against `reassign_after_silence_minutes`.
    silence_check: Duration,
}

impl Decider {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            silence_check: Duration::from_secs(30),
        }
    }

    /// Decides until `shutdown`; a store failure starts it over from the log after a pause.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                outcome = self.run_once() => match outcome {
                    Ok(()) => return,
                    Err(err) => warn!(error = %err, "assignment decider failed; reading the log again"),
                },
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The triggers that already have a decision: the causes of the decisions in the log.
    async fn decided(&self) -> Result<HashSet<Uuid>, StoreError> {
        let head = self.store.head_position().await?;
        let mut decided = HashSet::new();
        let mut after = 0;
        while after < head {
            let batch = self.store.read_all(after, 1000).await?;
            let Some(last) = batch.last() else { break };
            after = last.position;
            decided.extend(
                batch
                    .iter()
                    .filter(|e| is_decision(&e.event_type))
                    .filter_map(|e| e.metadata.causation_id),
            );
        }
        Ok(decided)
    }

    async fn run_once(&self) -> Result<(), StoreError> {
        let decided = self.decided().await?;
        let mut model = Model::default();
        let mut own: HashSet<EventId> = HashSet::new();
        let mut subscription = self
            .store
            .subscribe("assignment_decider", SubscribeFrom::After(0))
            .await?;
        let mut silence = tokio::time::interval(self.silence_check);
        silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = tokio::select! {
                batch = subscription.next_batch(256) => batch?,
                _ = silence.tick() => {
                    self.reassign_silent(&mut model, &mut own).await?;
                    continue;
                }
            };
            for recorded in &batch {
                if own.remove(&recorded.id) {
                    continue;
                }
                let span = whatsnap_telemetry::event_span("assignment_decider", recorded);
                self.handle(&mut model, &decided, &mut own, recorded)
                    .instrument(span)
                    .await?;
            }
            if let Some(last) = batch.last() {
                subscription.checkpoint(last.position).await?;
            }
        }
    }

    /// Routes contacts away from owners who have not replied in time.
    async fn reassign_silent(
        &self,
        model: &mut Model,
        own: &mut HashSet<EventId>,
    ) -> Result<(), StoreError> {
        let now = chrono::Utc::now();
        for (location, state) in model.locations_mut() {
            for triggered in state.silent(now) {
                let situation = &triggered.situation;
                let decision = state.decide(situation);
                // Only a new owner is worth recording: with nobody else available the contact
                // stays with its owner, and the next check would say the same again.
                if !matches!(decision, Decision::Assign { .. }) {
                    continue;
                }
                let Some(event) = decision.event(situation) else {
                    continue;
                };
                let new = NewEvent::new(&event, EventMetadata::new_correlation());
                let (id, at) = (new.id, new.occurred_at);
                let stream = StreamId::for_uuid(
                    location.clone(),
                    AggregateKind::Assignment,
                    situation.contact_id,
                );
                match self
                    .store
                    .append(
                        &stream,
                        ExpectedVersion::Exact(triggered.decided_before),
                        vec![new],
                    )
                    .await
                {
                    Ok(_) => {
                        state.note_decision(&event, at);
                        own.insert(id);
                        info!(contact_id = %situation.contact_id, reason = %situation.exclude[0].1, "contact reassigned for silence");
                    }
                    Err(StoreError::WrongExpectedVersion { .. }) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        model: &mut Model,
        decided: &HashSet<Uuid>,
        own: &mut HashSet<EventId>,
        recorded: &RecordedEvent,
    ) -> Result<(), StoreError> {
        // A type the model does not read changes nothing, and is not decoded.
        if !reads(&recorded.event_type) {
            return Ok(());
        }
        // A type this build does not know asks for no decision.
        let Ok(event) = recorded.decode() else {
            return Ok(());
        };
        let location = recorded.location_id().clone();
        let state = model.location(&location);
        if let Some(triggered) = state.trigger(&location, recorded, &event)
            && !decided.contains(&recorded.id.as_uuid())
        {
            let situation = &triggered.situation;
            let decision = state.decide(situation);
            if let Some(decision_event) = decision.event(situation) {
                let new = NewEvent::new(
                    &decision_event,
                    EventMetadata::caused_by(recorded).traced(whatsnap_telemetry::current()),
                );
                let (id, at) = (new.id, new.occurred_at);
                let stream = StreamId::for_uuid(
                    location.clone(),
                    AggregateKind::Assignment,
                    situation.contact_id,
                );
                let expected = match triggered.decided_before {
                    0 => ExpectedVersion::NoStream,
                    n => ExpectedVersion::Exact(n),
                };
                match self.store.append(&stream, expected, vec![new]).await {
                    Ok(_) => {
                        state.note_decision(&decision_event, at);
                        own.insert(id);
                        match &decision {
                            Decision::Assign { user_id, rule, .. } => {
                                info!(contact_id = %situation.contact_id, user_id = %user_id, rule, "contact assigned")
                            }
                            _ => {
                                info!(contact_id = %situation.contact_id, "contact left unassigned")
                            }
                        }
                    }
                    // Decided by another decider meanwhile: its decision comes through the log.
                    Err(StoreError::WrongExpectedVersion { .. }) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        state.ingest(recorded, &event, None);
        Ok(())
    }
}
