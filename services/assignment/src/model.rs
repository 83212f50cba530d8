//! What the assignment service knows of each location, built by reading the log in order: the
//! rules of its accounts and its default rules, its GHL users and their availability, its
//! contacts, and every decision taken. From it, an event that triggers assignment (a new
//! contact, a returning one, an account tag given in GHL) becomes a [`Situation`] for the
//! engine. The same model serves live decisions and `simulate`, which is why it takes the time
//! of each decision from the triggering event, never from the clock: replaying the log gives
//! the same decisions.
//!
//! What GHL knows is read from ghl-sync's events: where the location is connected to GHL, a new
//! contact is decided once ghl-sync has looked it up there (`GhlContactLinked` with what it
//! observed: GHL's source, owner and whether the contact existed), or has given up on GHL, so
//! that the rules see the contact's source and the owner it had in GHL before whatsnap.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::warn;
use uuid::Uuid;
use whatsnap_events::{
    AccountKind, AssignmentSkipped, ContactAssigned, Event, GhlContactObservation, LocationId,
    PhoneNumber, RecordedEvent, TagSource, contact_id_for,
};

use crate::engine::{
    self, Conversation, Decision, GhlOwner, GhlOwnerKind, History, PastDecision, RuleSet,
    Situation, Trigger, User, UserId,
};

/// ghl-sync's queue kind for looking a contact up in GHL (`GhlSyncFailed.operation`).
const GHL_CONTACT_OPERATION: &str = "contact_upsert";

/// What whatsnap knows of a contact from GHL.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct GhlFacts {
    source: Option<String>,
    /// A look-up in GHL was taken in.
    observed: bool,
    existed_before: bool,
    /// The latest owner chosen in GHL rather than by whatsnap.
    owner: Option<GhlOwner>,
    /// Who GHL shows as the owner, as last heard (whatsnap's own decisions count: ghl-sync
    /// sets each of them).
    assigned_to: Option<Option<UserId>>,
}

impl GhlFacts {
    /// Takes in what a look-up in GHL found. Only the first look-up says whether the contact
    /// existed before whatsnap and who owned it then; a later one (a link looked up again)
    /// tells only the source and who GHL shows now.
    fn observe(&mut self, observed: &GhlContactObservation, at: chrono::DateTime<chrono::Utc>) {
        if observed.source.is_some() {
            self.source = observed.source.clone();
        }
        let owner = observed.assigned_to.as_deref().and_then(UserId::parse);
        self.assigned_to = Some(owner.clone());
        if std::mem::replace(&mut self.observed, true) {
            return;
        }
        self.existed_before = observed.existed_before;
        if observed.existed_before
            && let Some(user_id) = owner.clone()
        {
            self.owner = Some(GhlOwner {
                user_id: Some(user_id),
                kind: GhlOwnerKind::BeforeWhatsnap,
                since: at,
            });
        }
    }
}

/// One location's assignment state.
#[derive(Debug, Default)]
pub struct LocationModel {
    /// By account; `None` holds the location's default rules.
    rules: HashMap<Option<Uuid>, RuleSet>,
    users: HashMap<String, User>,
    history: History,
    contacts: HashSet<Uuid>,
    /// Account tag → account.
    tags: HashMap<String, Uuid>,
    /// The channel (platform) of each account.
    channels: std::collections::BTreeMap<Uuid, AccountKind>,
    /// How many decisions each contact's assignment stream holds.
    decisions: HashMap<Uuid, u64>,
    /// Each contact's first unanswered message and last reply, for silence reassignment.
    conversations: HashMap<Uuid, Conversation>,
    /// The contacts whose last message is not answered, by the time the silence runs from: the
    /// timer index that silence reassignment looks through instead of every conversation.
    unanswered: BTreeSet<(DateTime<Utc>, Uuid)>,
    /// The events that set the location up (accounts, rules, users, the GHL connection), in
    /// log order: what a snapshot keeps of them, to take them in again.
    setup: Vec<SetupEvent>,
    /// Whether ghl-sync holds tokens for the location (it then looks new contacts up in GHL).
    ghl_connected: bool,
    /// New contacts waiting for ghl-sync's look-up before their first decision, with the
    /// account they first messaged.
    awaiting_ghl: HashMap<Uuid, Option<Uuid>>,
    ghl: HashMap<Uuid, GhlFacts>,
}

/// An event that asks for a decision, and the situation it puts the contact in.
#[derive(Debug, Clone)]
pub struct Triggered {
    pub situation: Situation,
    /// The contact's decisions before this one: the expected version of its stream.
    pub decided_before: u64,
}

impl LocationModel {
    /// The situation `event` puts a contact in, if it asks for a decision. Looks at the state
    /// before the event: call it before [`LocationModel::ingest`].
    pub fn trigger(
        &self,
        location: &LocationId,
        recorded: &RecordedEvent,
        event: &Event,
    ) -> Option<Triggered> {
        // What GHL says of the contact, with what this event tells.
        let mut facts = None;
        let (contact_id, account_id, trigger) = match event {
            // Where GHL is connected, the decision waits for ghl-sync's look-up.
            Event::ContactCreated(_) if self.ghl_connected => return None,
            Event::ContactCreated(e) => (e.contact_id, e.first_account_id, Trigger::NewContact),
            Event::GhlContactLinked(e) if e.observed.is_some() => {
                let account = *self.awaiting_ghl.get(&e.contact_id)?;
                let mut known = self.ghl.get(&e.contact_id).cloned().unwrap_or_default();
                known.observe(e.observed.as_ref()?, recorded.occurred_at);
                facts = Some(known);
                (e.contact_id, account, Trigger::NewContact)
            }
            Event::GhlSyncFailed(e) if e.final_attempt && e.operation == GHL_CONTACT_OPERATION => {
                let contact_id = e.subject_id?;
                let account = *self.awaiting_ghl.get(&contact_id)?;
                (contact_id, account, Trigger::NewContact)
            }
            // Typed on the account's own phone: not the contact writing.
            Event::InboundMessageReceived(e) if !e.from_me => {
                let phone = PhoneNumber::parse(&e.from).ok()?;
                let contact_id = contact_id_for(location, &phone);
                // A first message makes the contact; ContactCreated (or its look-up in GHL)
                // asks for that decision.
                if !self.contacts.contains(&contact_id) || !self.has_rules(Some(e.account_id)) {
                    return None;
                }
                match self.awaiting_ghl.get(&contact_id) {
                    None => (contact_id, Some(e.account_id), Trigger::ReturningContact),
                    Some(_) if self.ghl_connected => return None,
                    // GHL was disconnected while the contact waited for its look-up there: its
                    // next message decides it as new.
                    Some(first_account) => (contact_id, *first_account, Trigger::NewContact),
                }
            }
            Event::ContactTagged(e) if e.source != TagSource::Account => {
                let account = *self.tags.get(&e.tag)?;
                if !self.contacts.contains(&e.contact_id)
                    || self.awaiting_ghl.contains_key(&e.contact_id)
                    || !self.rules.contains_key(&Some(account))
                {
                    return None;
                }
                (e.contact_id, Some(account), Trigger::AccountTag)
            }
            _ => return None,
        };
        let facts = facts
            .or_else(|| self.ghl.get(&contact_id).cloned())
            .unwrap_or_default();
        let owners = self.history.owners_of(contact_id);
        let ghl_before = facts
            .owner
            .as_ref()
            .filter(|o| o.kind == GhlOwnerKind::BeforeWhatsnap)
            .and_then(|o| o.user_id.clone());
        Some(Triggered {
            situation: Situation {
                contact_id,
                account_id,
                channels: self.channels.clone(),
                trigger,
                contact_source: facts.source.clone(),
                existed_before: facts.existed_before
                    || matches!(trigger, Trigger::ReturningContact | Trigger::AccountTag),
                previous_owner: owners.last().map(|o| o.user_id.clone()).or(ghl_before),
                owners,
                exclude: Vec::new(),
                ghl_owner: facts.owner,
                ghl_assigned_to: facts.assigned_to,
                now: recorded.occurred_at,
            },
            decided_before: self.decisions.get(&contact_id).copied().unwrap_or(0),
        })
    }

    /// Contacts whose owner has been silent longer than their rules allow at `now`, each as a
    /// situation that excludes that owner (the engine then routes the contact away).
    ///
    /// Looks only at contacts whose message has waited longer than the shortest silence any
    /// of the location's rules allows: the [`LocationModel::unanswered`] index, not every
    /// conversation.
    pub fn silent(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<Triggered> {
        let mut found = Vec::new();
        let Some(shortest) = self
            .rules
            .values()
            .filter_map(|rules| rules.reassign_after_silence_minutes)
            .min()
        else {
            return found;
        };
        let waited_since = now - chrono::Duration::minutes(i64::from(shortest));
        let candidates = self.unanswered.range(..=(waited_since, Uuid::max()));
        for (contact_id, conversation) in candidates
            .filter_map(|(_, contact_id)| Some((contact_id, self.conversations.get(contact_id)?)))
        {
            let owners = self.history.owners_of(*contact_id);
            let Some(owner) = owners.last() else { continue };
            let rules = owner
                .account_id
                .and_then(|a| self.rules.get(&Some(a)))
                .or_else(|| self.rules.get(&None));
            let Some(reason) = engine::should_reassign_for_silence(rules, owner, conversation, now)
            else {
                continue;
            };
            // An owner a GHL user removed by hand since is not the rules' to replace.
            let unassigned_in_ghl = self
                .ghl
                .get(contact_id)
                .and_then(|facts| facts.owner.as_ref())
                .is_some_and(|o| o.user_id.is_none() && o.since >= owner.since);
            if unassigned_in_ghl && rules.is_some_and(|r| r.manual == engine::Manual::Respect) {
                continue;
            }
            found.push(Triggered {
                situation: Situation {
                    contact_id: *contact_id,
                    account_id: owner.account_id,
                    channels: self.channels.clone(),
                    trigger: Trigger::ReturningContact,
                    contact_source: None,
                    existed_before: true,
                    previous_owner: None,
                    exclude: vec![(owner.user_id.clone(), reason)],
                    owners: owners.clone(),
                    ghl_owner: None,
                    ghl_assigned_to: None,
                    now,
                },
                decided_before: self.decisions.get(contact_id).copied().unwrap_or(0),
            });
        }
        found.sort_by_key(|t| t.situation.contact_id);
        found
    }

    fn has_rules(&self, account: Option<Uuid>) -> bool {
        self.rules.contains_key(&account) || self.rules.contains_key(&None)
    }

    /// Decides for a situation with the rules the model holds.
    pub fn decide(&self, situation: &Situation) -> Decision {
        let users: Vec<User> = self.users.values().cloned().collect();
        engine::decide(
            situation.account_id.and_then(|a| self.rules.get(&Some(a))),
            self.rules.get(&None),
            &users,
            &self.history,
            situation,
        )
    }

    /// Replaces the rules of an account (or the default ones), as a simulation does.
    pub fn set_rules(&mut self, account: Option<Uuid>, rules: RuleSet) {
        self.rules.insert(account, rules);
    }

    /// Takes in what an event changes. Rules of the `frozen` scope (an account, or `None` for
    /// the location's default) are left as they are: a simulation holds its own there.
    pub fn ingest(
        &mut self,
        recorded: &RecordedEvent,
        event: &Event,
        frozen: Option<Option<Uuid>>,
    ) {
        if self.configure(event, frozen) {
            self.setup.push(SetupEvent::of(event));
            return;
        }
        match event {
            Event::ContactCreated(e) => {
                self.contacts.insert(e.contact_id);
                if self.ghl_connected {
                    self.awaiting_ghl.insert(e.contact_id, e.first_account_id);
                }
            }
            Event::GhlContactLinked(e) => {
                if let Some(observed) = &e.observed {
                    self.awaiting_ghl.remove(&e.contact_id);
                    self.ghl
                        .entry(e.contact_id)
                        .or_default()
                        .observe(observed, recorded.occurred_at);
                }
            }
            Event::GhlSyncFailed(e) if e.final_attempt && e.operation == GHL_CONTACT_OPERATION => {
                if let Some(contact_id) = e.subject_id {
                    self.awaiting_ghl.remove(&contact_id);
                }
            }
            Event::ContactOwnerChangedInGhl(e) => {
                let facts = self.ghl.entry(e.contact_id).or_default();
                let user_id = e.user_id.as_deref().and_then(UserId::parse);
                facts.assigned_to = Some(user_id.clone());
                // Nobody is a choice too: a GHL user removed the owner by hand.
                facts.owner = Some(GhlOwner {
                    user_id,
                    kind: GhlOwnerKind::ReassignedInGhl,
                    since: recorded.occurred_at,
                });
            }
            Event::ContactSourceChangedInGhl(e) => {
                self.ghl.entry(e.contact_id).or_default().source = e.source.clone();
            }
            Event::GhlAssignmentApplied(e) => {
                self.ghl.entry(e.contact_id).or_default().assigned_to =
                    Some(UserId::parse(&e.user_id));
            }
            Event::InboundMessageReceived(e) if !e.from_me => {
                if let Ok(phone) = PhoneNumber::parse(&e.from) {
                    let contact_id = contact_id_for(recorded.location_id(), &phone);
                    let at = recorded.occurred_at;
                    self.converse(contact_id, |conversation| {
                        // The silence runs from the first message not answered yet.
                        if unanswered_since(conversation).is_none() {
                            conversation.last_inbound = Some(at);
                        }
                    });
                }
            }
            Event::OutboundMessageRequested(e) => {
                let at = recorded.occurred_at;
                self.converse(e.contact_id, |conversation| {
                    conversation.last_outbound = Some(at)
                });
            }
            Event::ContactAssigned(_) | Event::AssignmentSkipped(_) => {
                self.note_decision(event, recorded.occurred_at)
            }
            _ => {}
        }
    }

    /// Takes in an event that sets the location up: an account, rules, a user or the GHL
    /// connection. False for any other event (and for rules of the `frozen` scope).
    fn configure(&mut self, event: &Event, frozen: Option<Option<Uuid>>) -> bool {
        match event {
            Event::AccountAdded(e) => {
                self.tags.insert(e.tag.clone(), e.account_id);
                self.channels.insert(e.account_id, e.kind);
            }
            Event::AssignmentRulesChanged(e) if frozen != Some(e.account_id) => {
                match engine::parse_rules(&e.rules) {
                    Ok(rules) => {
                        self.rules.insert(e.account_id, rules);
                    }
                    Err(err) => {
                        // Refused when set; an old stored document the engine no longer reads.
                        warn!(account_id = ?e.account_id, error = %err, "stored assignment rules unreadable; ignored");
                        self.rules.remove(&e.account_id);
                    }
                }
            }
            Event::GhlUserSynced(e) => {
                if let Some(mut user) = User::from_synced(e) {
                    if let Some(known) = self.users.get(&e.user_id) {
                        user.availability = known.availability.clone();
                        user.active = known.active && !e.deleted;
                    }
                    self.users.insert(e.user_id.clone(), user);
                }
            }
            Event::UserAvailabilityChanged(e) => match engine::availability_from(e) {
                Ok((availability, active)) => {
                    let user = self.users.entry(e.user_id.clone()).or_insert_with(|| {
                        // Availability set before GHL's users were synced: not a candidate
                        // until GHL lists the user.
                        let mut user = User::new(
                            UserId::parse(&e.user_id).expect("checked when set"),
                            e.user_id.clone(),
                        );
                        user.deleted = true;
                        user
                    });
                    user.availability = availability;
                    user.active = active;
                }
                Err(err) => {
                    warn!(user_id = %e.user_id, error = %err, "stored availability unreadable; ignored")
                }
            },
            Event::GhlTokensIssued(_) => self.ghl_connected = true,
            Event::GhlUninstalled(_) => self.ghl_connected = false,
            _ => return false,
        }
        true
    }

    /// Changes a contact's conversation and keeps the [`LocationModel::unanswered`] index in
    /// step with it.
    fn converse(&mut self, contact_id: Uuid, change: impl FnOnce(&mut Conversation)) {
        let conversation = self.conversations.entry(contact_id).or_default();
        let before = unanswered_since(conversation);
        change(conversation);
        let after = unanswered_since(conversation);
        if before != after {
            if let Some(since) = before {
                self.unanswered.remove(&(since, contact_id));
            }
            if let Some(since) = after {
                self.unanswered.insert((since, contact_id));
            }
        }
    }

    /// Takes in a decision taken at `at` (its event's time).
    pub fn note_decision(&mut self, event: &Event, at: chrono::DateTime<chrono::Utc>) {
        if let Event::ContactAssigned(ContactAssigned { contact_id, .. })
        | Event::AssignmentSkipped(AssignmentSkipped { contact_id, .. }) = event
        {
            self.awaiting_ghl.remove(contact_id);
        }
        match event {
            Event::ContactAssigned(e) => {
                *self.decisions.entry(e.contact_id).or_default() += 1;
                // ghl-sync sets every decision in GHL.
                if let Some(facts) = self.ghl.get_mut(&e.contact_id) {
                    facts.assigned_to = Some(UserId::parse(&e.user_id));
                }
                if let Some(user_id) = UserId::parse(&e.user_id) {
                    self.history.push(PastDecision {
                        contact_id: e.contact_id,
                        account_id: e.account_id,
                        user_id,
                        rule: e.rule.clone(),
                        at,
                    });
                }
            }
            Event::AssignmentSkipped(e) => {
                *self.decisions.entry(e.contact_id).or_default() += 1;
            }
            _ => {}
        }
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }
}

/// When a contact's message has waited since, if it is not answered: the first message not
/// answered yet, unless a reply came after it.
fn unanswered_since(conversation: &Conversation) -> Option<DateTime<Utc>> {
    let inbound = conversation.last_inbound?;
    match conversation.last_outbound {
        Some(outbound) if outbound >= inbound => None,
        _ => Some(inbound),
    }
}

/// An event that set a location up, as a snapshot stores it (at the schema version it was
/// taken in with, upcast like any stored event when it is read back).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SetupEvent {
    event_type: String,
    schema_version: u32,
    payload: serde_json::Value,
}

impl SetupEvent {
    /// What the model reads of `event`: an account's number, credentials and settings and a
    /// user's email stay in the log, sealed as they are there, and out of the snapshot.
    fn of(event: &Event) -> Self {
        let event = match event {
            Event::AccountAdded(e) => Event::AccountAdded(whatsnap_events::AccountAdded {
                name: String::new(),
                phone_number: None,
                twilio: None,
                settings: None,
                ..e.clone()
            }),
            Event::GhlUserSynced(e) => Event::GhlUserSynced(whatsnap_events::GhlUserSynced {
                email: None,
                ..e.clone()
            }),
            other => other.clone(),
        };
        Self {
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: serde_json::from_slice(&event.encode()).expect("an encoded event is JSON"),
        }
    }

    fn decode(&self) -> Result<Event, String> {
        let payload = serde_json::to_vec(&self.payload).map_err(|e| e.to_string())?;
        Event::decode(&self.event_type, self.schema_version, &payload).map_err(|e| e.to_string())
    }
}

/// One location's model as a snapshot holds it: the setup events, taken in again on restore,
/// and each contact's state as plain data.
#[derive(Debug, Serialize, Deserialize)]
pub struct LocationSnapshot {
    setup: Vec<SetupEvent>,
    contacts: Vec<Uuid>,
    decisions: Vec<(Uuid, u64)>,
    conversations: Vec<(Uuid, Conversation)>,
    awaiting_ghl: Vec<(Uuid, Option<Uuid>)>,
    ghl: Vec<(Uuid, GhlFacts)>,
    history: Vec<PastDecision>,
}

impl LocationModel {
    /// The model as plain data, for a snapshot.
    pub fn snapshot(&self) -> LocationSnapshot {
        LocationSnapshot {
            setup: self.setup.clone(),
            contacts: self.contacts.iter().copied().collect(),
            decisions: self.decisions.iter().map(|(c, n)| (*c, *n)).collect(),
            conversations: self.conversations.iter().map(|(c, v)| (*c, *v)).collect(),
            awaiting_ghl: self.awaiting_ghl.iter().map(|(c, a)| (*c, *a)).collect(),
            ghl: self.ghl.iter().map(|(c, f)| (*c, f.clone())).collect(),
            history: self.history.decisions().to_vec(),
        }
    }

    /// The model a snapshot was taken of. Fails when a setup event no longer decodes (the
    /// caller then reads the log from the beginning instead).
    pub fn restore(snapshot: LocationSnapshot) -> Result<Self, String> {
        let mut model = Self::default();
        for setup in snapshot.setup {
            let event = setup.decode()?;
            model.configure(&event, None);
            model.setup.push(setup);
        }
        model.contacts = snapshot.contacts.into_iter().collect();
        model.decisions = snapshot.decisions.into_iter().collect();
        for (contact_id, conversation) in snapshot.conversations {
            model.converse(contact_id, |known| *known = conversation);
        }
        model.awaiting_ghl = snapshot.awaiting_ghl.into_iter().collect();
        model.ghl = snapshot.ghl.into_iter().collect();
        model.history = History::new(snapshot.history);
        Ok(model)
    }
}

/// Every location's model.
#[derive(Debug, Default)]
pub struct Model {
    locations: HashMap<LocationId, LocationModel>,
}

impl Model {
    pub fn location(&mut self, location: &LocationId) -> &mut LocationModel {
        self.locations.entry(location.clone()).or_default()
    }

    /// Every location's model as plain data, for a snapshot.
    pub fn snapshot(&self) -> Vec<(String, LocationSnapshot)> {
        self.locations
            .iter()
            .map(|(location, model)| (location.to_string(), model.snapshot()))
            .collect()
    }

    /// The model a snapshot was taken of.
    pub fn restore(locations: Vec<(String, LocationSnapshot)>) -> Result<Self, String> {
        let mut model = Self::default();
        for (location, snapshot) in locations {
            let location = LocationId::parse(&location).map_err(|e| e.to_string())?;
            model
                .locations
                .insert(location, LocationModel::restore(snapshot)?);
        }
        Ok(model)
    }

    pub fn locations_mut(&mut self) -> impl Iterator<Item = (&LocationId, &mut LocationModel)> {
        self.locations.iter_mut()
    }
}

/// The event types the model reads (in [`LocationModel::trigger`] and
/// [`LocationModel::ingest`]): the others can be passed over without decoding them.
pub const READS: &[&str] = &[
    "AccountAdded",
    "AssignmentRulesChanged",
    "GhlUserSynced",
    "UserAvailabilityChanged",
    "ContactCreated",
    "ContactTagged",
    "GhlTokensIssued",
    "GhlUninstalled",
    "GhlContactLinked",
    "GhlSyncFailed",
    "ContactOwnerChangedInGhl",
    "ContactSourceChangedInGhl",
    "GhlAssignmentApplied",
    "InboundMessageReceived",
    "OutboundMessageRequested",
    "ContactAssigned",
    "AssignmentSkipped",
];

/// Whether the model reads events of this type (see [`READS`]).
pub fn reads(event_type: &str) -> bool {
    READS.contains(&event_type)
}

/// Whether an event is one of the decisions assignment records.
pub fn is_decision(event_type: &str) -> bool {
    matches!(event_type, "ContactAssigned" | "AssignmentSkipped")
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration};
    use whatsnap_events::{
        AggregateKind, AssignmentRulesChanged, ContactOwnerChangedInGhl, EventId, EventMetadata,
        GhlUserSynced, InboundMessageReceived, OutboundMessageRequested, StreamId,
    };

    use super::*;

    const ACCOUNT: Uuid = Uuid::from_u128(0xA);
    const PHONE: &str = "+14155550401";

    /// A location's model fed events at chosen times.
    struct Feed {
        model: LocationModel,
        location: LocationId,
        start: DateTime<chrono::Utc>,
        position: u64,
    }

    impl Feed {
        fn new() -> Self {
            Self {
                model: LocationModel::default(),
                location: LocationId::parse("locModel").unwrap(),
                start: "2026-03-16T09:00:00Z".parse().unwrap(),
                position: 0,
            }
        }

        fn contact(&self) -> Uuid {
            contact_id_for(&self.location, &PhoneNumber::parse(PHONE).unwrap())
        }

        /// Takes in `event` as if it happened `minutes` after the start.
        fn at(&mut self, minutes: i64, event: impl Into<Event>) {
            let event = event.into();
            self.position += 1;
            let recorded = RecordedEvent {
                id: EventId::new(),
                stream: StreamId::for_uuid(
                    self.location.clone(),
                    AggregateKind::Contact,
                    self.contact(),
                ),
                version: self.position,
                position: self.position,
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                occurred_at: self.start + Duration::minutes(minutes),
                metadata: EventMetadata::new_correlation(),
                payload: event.encode(),
            };
            self.model.ingest(&recorded, &event, None);
        }
    }

    /// Ana owns the contact since the start; it wrote then and nobody replied; a GHL user
    /// removed its owner by hand a minute later.
    fn unassigned_by_hand(manual: &str) -> Feed {
        let mut feed = Feed::new();
        for user in ["u_ana", "u_ben"] {
            feed.at(
                0,
                GhlUserSynced {
                    user_id: user.into(),
                    name: user.into(),
                    email: None,
                    role: None,
                    deleted: false,
                },
            );
        }
        let rules = serde_json::json!({
            "manual": manual, "reassign_after_silence_minutes": 30,
            "rules": [ { "strategy": "round_robin", "users": ["u_ana", "u_ben"] } ]
        });
        feed.at(
            0,
            AssignmentRulesChanged {
                account_id: None,
                rules,
            },
        );
        let inbound = InboundMessageReceived {
            message_id: Uuid::now_v7(),
            account_id: ACCOUNT,
            provider_message_id: "SM1".into(),
            from: PHONE.into(),
            to: None,
            body: "hello".into(),
            sender_name: None,
            received_at: feed.start,
            attachments: Vec::new(),
            from_me: false,
            sender_lid: None,
        };
        feed.at(0, inbound);
        let assigned = ContactAssigned {
            contact_id: feed.contact(),
            account_id: Some(ACCOUNT),
            user_id: "u_ana".into(),
            rule: "location/round_robin#1".into(),
            reason: "round-robin".into(),
            candidates: Vec::new(),
            trigger: Some("new_contact".into()),
        };
        feed.at(0, assigned);
        let removed = ContactOwnerChangedInGhl {
            contact_id: feed.contact(),
            ghl_contact_id: "ghl1".into(),
            user_id: None,
            previous: Some("u_ana".into()),
        };
        feed.at(1, removed);
        feed
    }

    #[test]
    fn a_reply_takes_a_contact_out_of_the_silence_index_and_its_next_message_puts_it_back() {
        let mut feed = unassigned_by_hand("override");
        let contact = feed.contact();
        let since = |feed: &Feed| -> Vec<_> { feed.model.unanswered.iter().copied().collect() };
        assert_eq!(since(&feed), [(feed.start, contact)]);

        let reply = OutboundMessageRequested {
            message_id: Uuid::now_v7(),
            contact_id: contact,
            ghl_message_id: None,
            ghl_user_id: None,
            body: "on it".into(),
            attachments: Vec::new(),
            to: None,
            ghl_contact_id: None,
        };
        feed.at(2, reply);
        assert!(since(&feed).is_empty());
        assert!(
            feed.model
                .silent(feed.start + Duration::hours(5))
                .is_empty()
        );

        let again = InboundMessageReceived {
            message_id: Uuid::now_v7(),
            account_id: ACCOUNT,
            provider_message_id: "SM2".into(),
            from: PHONE.into(),
            to: None,
            body: "still there?".into(),
            sender_name: None,
            received_at: feed.start,
            attachments: Vec::new(),
            from_me: false,
            sender_lid: None,
        };
        feed.at(10, again.clone());
        // A second unanswered message leaves the silence running from the first.
        feed.at(20, again);
        let waiting_since = feed.start + Duration::minutes(10);
        assert_eq!(since(&feed), [(waiting_since, contact)]);
        // 30 minutes of silence are due at 10 + 30, not before.
        assert!(
            feed.model
                .silent(feed.start + Duration::minutes(39))
                .is_empty()
        );
        assert_eq!(
            feed.model.silent(feed.start + Duration::minutes(41)).len(),
            1
        );
    }

    #[test]
    fn a_snapshot_restores_the_model_it_was_taken_of() {
        let feed = unassigned_by_hand("override");
        let json = serde_json::to_string(&feed.model.snapshot()).unwrap();
        let restored = LocationModel::restore(serde_json::from_str(&json).unwrap()).unwrap();
        let an_hour_later = feed.start + Duration::hours(1);
        assert_eq!(
            format!("{:?}", restored.silent(an_hour_later)),
            format!("{:?}", feed.model.silent(an_hour_later))
        );
        assert_eq!(restored.unanswered, feed.model.unanswered);
        assert_eq!(restored.users.len(), 2);
        assert_eq!(restored.rules, feed.model.rules);
        assert_eq!(restored.history.decisions(), feed.model.history.decisions());
        assert_eq!(restored.decisions, feed.model.decisions);
    }

    #[test]
    fn every_type_the_model_reads_is_an_event_type() {
        for read in super::READS {
            assert!(
                whatsnap_events::Event::current_version(read).is_some(),
                "{read} is no event type: the model would pass over the type meant"
            );
        }
    }

    #[test]
    fn an_owner_removed_by_hand_is_not_replaced_for_silence_under_respect() {
        let feed = unassigned_by_hand("respect");
        let an_hour_later = feed.start + Duration::hours(1);
        assert!(feed.model.silent(an_hour_later).is_empty());

        // Under override the rules take the contact from the silent owner, as for any other.
        let feed = unassigned_by_hand("override");
        let silent = feed.model.silent(an_hour_later);
        assert_eq!(silent.len(), 1);
        assert_eq!(silent[0].situation.contact_id, feed.contact());
        assert_eq!(silent[0].situation.exclude[0].0.as_str(), "u_ana");
    }
}
