//! The live decider: reads the log in order into the [`Model`] and, for each event that asks
//! for a decision, decides and appends `ContactAssigned` or `AssignmentSkipped` (caused by that
//! event) to the contact's assignment stream. Its state is the log: it starts from its latest
//! [`Snapshot`] (or from the beginning without one), reads the log after it, and knows which
//! triggers were decided already from the decisions' causation ids, so a restart decides only
//! what was left undecided. A decision is appended at the contact's decision count, so two
//! deciders cannot both decide one trigger.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{Instrument, info, warn};
use uuid::Uuid;
use whatsnap_events::{AggregateKind, EventId, EventMetadata, NewEvent, RecordedEvent, StreamId};
use whatsnap_eventstore::{EventStore, ExpectedVersion, StoreError, SubscribeFrom};

use crate::engine::Decision;
use crate::model::{Model, READS, is_decision, reads};
use crate::snapshot::{Snapshot, Snapshots};

pub struct Decider {
    store: Arc<dyn EventStore>,
    /// Where the decider keeps its snapshot; `None`: it reads the whole log at every start.
    snapshots: Option<Snapshots>,
    /// How often owners' silence is checked against `reassign_after_silence_minutes`.
    silence_check: Duration,
    /// The position the model holds every event up to, for `/readyz` and `/metrics`.
    progress: Arc<watch::Sender<u64>>,
}

/// How often the model is snapshotted while the log moves (and at every orderly stop).
const SNAPSHOT_EVERY: Duration = Duration::from_secs(60);

/// What the decider holds while it runs.
struct State {
    model: Model,
    /// Decisions appended and taken in, not yet delivered back by the log.
    own: HashSet<EventId>,
    /// The position the model holds every event up to.
    position: u64,
    /// The position of the latest snapshot saved (or loaded).
    snapshotted: u64,
}

impl Decider {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            snapshots: None,
            silence_check: Duration::from_secs(30),
            progress: Arc::new(watch::channel(0).0),
        }
    }

    /// Tells `progress` the position the model holds every event up to, as it moves.
    pub fn progress(mut self, progress: Arc<watch::Sender<u64>>) -> Self {
        self.progress = progress;
        self
    }

    /// Starts from the latest snapshot in `snapshots`, and keeps it there.
    pub fn snapshots(mut self, snapshots: Snapshots) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// Decides until `shutdown`; a store failure starts it over from its snapshot after a pause.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            match self.run_once(&mut shutdown).await {
                Ok(()) => return,
                Err(err) => warn!(error = %err, "assignment decider failed; reading the log again"),
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The triggers after `after` that already have a decision: the causes of the decisions
    /// in the log after it (a decision always comes after its trigger).
    async fn decided(&self, after: u64) -> Result<HashSet<Uuid>, StoreError> {
        let head = self.store.head_position().await?;
        let mut decided = HashSet::new();
        let mut after = after;
        while after < head {
            // Decisions go on assignment streams only: the store passes over the rest of the
            // log (after a start with a backlog, most of it) without reading it.
            let batch = self
                .store
                .read_kind(AggregateKind::Assignment, after, 1000)
                .await?;
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

    /// The model to start from: the latest usable snapshot's, else an empty one at the start
    /// of the log.
    async fn start(&self) -> Result<State, StoreError> {
        let head = self.store.head_position().await?;
        let loaded = match &self.snapshots {
            Some(snapshots) => snapshots.load(head).await,
            None => None,
        };
        if let Some(snapshot) = loaded {
            let (position, own) = (snapshot.position, snapshot.own.clone());
            match snapshot.model() {
                Ok(model) => {
                    info!(
                        position,
                        head, "assignment decider starts from its snapshot"
                    );
                    return Ok(State {
                        model,
                        own: own.into_iter().map(EventId::from_uuid).collect(),
                        position,
                        snapshotted: position,
                    });
                }
                Err(err) => {
                    warn!(position, error = %err, "snapshot does not restore; reading the whole log")
                }
            }
        }
        Ok(State {
            model: Model::default(),
            own: HashSet::new(),
            position: 0,
            snapshotted: 0,
        })
    }

    /// Saves a snapshot of `state` if the log moved since the last one. A failure only costs
    /// the next start a longer read.
    async fn snapshot(&self, state: &mut State) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        if state.position <= state.snapshotted {
            return;
        }
        let snapshot = Snapshot::of(
            &state.model,
            state.position,
            state.own.iter().map(EventId::as_uuid),
        );
        match snapshots.save(&snapshot).await {
            Ok(()) => state.snapshotted = state.position,
            Err(err) => {
                warn!(position = state.position, error = %err, "assignment snapshot not saved")
            }
        }
    }

    async fn run_once(
        &self,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), StoreError> {
        let begun = async {
            let state = self.start().await?;
            let decided = self.decided(state.position).await?;
            Ok::<_, StoreError>((state, decided))
        };
        let (mut state, decided) = tokio::select! {
            begun = begun => begun?,
            () = shutdown.as_mut() => return Ok(()),
        };
        self.progress.send_replace(state.position);
        let mut subscription = self
            .store
            .subscribe_to(
                "assignment_decider",
                SubscribeFrom::AfterOwn(state.position),
                READS,
            )
            .await?;
        let mut silence = tokio::time::interval(self.silence_check);
        silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut snapshot = tokio::time::interval(SNAPSHOT_EVERY);
        snapshot.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = tokio::select! {
                batch = subscription.next_batch(256) => batch?,
                _ = silence.tick() => {
                    self.reassign_silent(&mut state.model, &mut state.own).await?;
                    continue;
                }
                _ = snapshot.tick() => {
                    self.snapshot(&mut state).await;
                    continue;
                }
                () = shutdown.as_mut() => {
                    self.snapshot(&mut state).await;
                    return Ok(());
                }
            };
            for recorded in &batch {
                if state.own.remove(&recorded.id) {
                    continue;
                }
                let span = whatsnap_telemetry::event_span("assignment_decider", recorded);
                self.handle(&mut state.model, &decided, &mut state.own, recorded)
                    .instrument(span)
                    .await?;
            }
            // The events handed over, and those of other types the store passed over after them.
            let scanned = subscription.scanned();
            if scanned > state.position {
                state.position = scanned;
                self.progress.send_replace(scanned);
                subscription.checkpoint(scanned).await?;
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
