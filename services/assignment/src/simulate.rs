//! `simulate`: the recorded history of a location replayed against other rules. Everything
//! before `since` is taken as it happened; from `since` on, each event that asked for a
//! decision is decided again with the new rules (and the new decisions, not the recorded ones,
//! make the round-robin turns and capacities that follow). Pure: it reads events and returns
//! what would differ.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;
use whatsnap_events::{Event, LocationId, RecordedEvent};

use crate::engine::{Decision, RuleSet};
use crate::model::{LocationModel, is_decision, reads};

/// What a trigger led to: the user (empty when left unassigned) and the rule.
pub type Outcome = Option<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub contact_id: Uuid,
    pub trigger: String,
    pub at: DateTime<Utc>,
    pub recorded: Outcome,
    pub simulated: Outcome,
    pub simulated_reason: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Simulation {
    /// Triggers decided again.
    pub decisions: u64,
    pub changes: Vec<Change>,
    /// By user (empty: unassigned): (recorded, simulated) counts over the replayed triggers.
    pub per_user: BTreeMap<String, (u64, u64)>,
}

fn outcome_of(event: &Event) -> Outcome {
    match event {
        Event::ContactAssigned(e) => Some((e.user_id.clone(), e.rule.clone())),
        Event::AssignmentSkipped(_) => Some((String::new(), "none".to_owned())),
        _ => None,
    }
}

/// Replays `events` (the whole log, in order; other locations' events are skipped) with `rules`
/// as the rules of `scope` (an account, or `None` for the location's default) from `since`.
pub fn simulate(
    events: &[RecordedEvent],
    location: &LocationId,
    scope: Option<Uuid>,
    rules: RuleSet,
    since: Option<DateTime<Utc>>,
) -> Simulation {
    let ours: Vec<(&RecordedEvent, Event)> = events
        .iter()
        .filter(|e| e.location_id() == location && reads(&e.event_type))
        .filter_map(|e| e.decode().ok().map(|d| (e, d)))
        .collect();
    // What each trigger led to in the log.
    let recorded: HashMap<Uuid, Outcome> = ours
        .iter()
        .filter(|(e, _)| is_decision(&e.event_type))
        .filter_map(|(e, d)| Some((e.metadata.causation_id?, outcome_of(d))))
        .collect();
    let mut model = LocationModel::default();
    let mut replaced = false;
    let mut result = Simulation::default();
    let mut rules = Some(rules);
    for (recorded_event, event) in &ours {
        let replaying = since.is_none_or(|since| recorded_event.occurred_at >= since);
        if replaying && !replaced {
            model.set_rules(scope, rules.take().expect("set once"));
            replaced = true;
        }
        if !replaying {
            model.ingest(recorded_event, event, None);
            continue;
        }
        // From `since`, the recorded decisions give way to the simulated ones.
        if is_decision(&recorded_event.event_type) {
            continue;
        }
        if let Some(triggered) = model.trigger(location, recorded_event, event) {
            let situation = &triggered.situation;
            let decision = model.decide(situation);
            let simulated = decision.event(situation).as_ref().and_then(outcome_of);
            let before = recorded
                .get(&recorded_event.id.as_uuid())
                .cloned()
                .flatten();
            // An account's rules are simulated: only that account's decisions count.
            let counted = scope.is_none_or(|account| situation.account_id == Some(account));
            if counted && (before.is_some() || simulated.is_some()) {
                result.decisions += 1;
                if let Some((user, _)) = &before {
                    result.per_user.entry(user.clone()).or_default().0 += 1;
                }
                if let Some((user, _)) = &simulated {
                    result.per_user.entry(user.clone()).or_default().1 += 1;
                }
            }
            let user = |o: &Outcome| o.as_ref().map(|(u, _)| u.clone());
            if counted && user(&before) != user(&simulated) {
                let reason = match &decision {
                    Decision::Assign { reason, .. }
                    | Decision::Keep { reason, .. }
                    | Decision::Skip { reason, .. } => reason.clone(),
                };
                result.changes.push(Change {
                    contact_id: situation.contact_id,
                    trigger: recorded_event.event_type.clone(),
                    at: situation.now,
                    recorded: before,
                    simulated: simulated.clone(),
                    simulated_reason: reason,
                });
            }
            if let Some(decided) = decision.event(situation) {
                model.note_decision(&decided, situation.now);
            }
        }
        model.ingest(recorded_event, event, Some(scope));
    }
    result
}
