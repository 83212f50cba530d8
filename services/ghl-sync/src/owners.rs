//! Owners and sources changed in GHL: a contact webhook (ContactCreate, ContactUpdate,
//! ContactTagUpdate) shows the contact's `assignedTo` and `source`. When the owner differs from
//! the one whatsnap last knew GHL to show (what its look-up found, what ghl-sync set, what an
//! earlier webhook said), a GHL user reassigned the contact by hand (or removed its owner),
//! recorded as `ContactOwnerChangedInGhl`; when a source is given and differs from the one
//! whatsnap knew, `ContactSourceChangedInGhl`. Both go beside the contact's link for assignment
//! to read.

use whatsnap_events::{
    ContactOwnerChangedInGhl, ContactSourceChangedInGhl, Event, EventMetadata, LocationId,
    PhoneNumber, contact_id_for,
};
use whatsnap_eventstore::{Aggregate, AggregateError, Aggregates, EventStore};
use whatsnap_rpc::ServiceError;

use crate::worker::contact_stream;

/// What GHL contact webhooks say of one contact.
pub struct ContactWebhook<'a> {
    pub location: &'a LocationId,
    pub phone: &'a str,
    pub ghl_contact_id: &'a str,
    /// `None`: nobody.
    pub assigned_to: Option<&'a str>,
    /// GHL's `source`; `None` (or blank): the webhook does not tell it, and the source whatsnap
    /// knows stands (a webhook cannot tell a removed source from an untold one).
    pub source: Option<&'a str>,
}

/// What a contact webhook changed of what whatsnap knew.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    pub owner_changed: bool,
    pub source_changed: bool,
}

/// Records the owner and source changes the webhook shows; nothing when GHL shows what
/// whatsnap knew.
pub async fn record(
    store: &dyn EventStore,
    hook: ContactWebhook<'_>,
) -> Result<Recorded, ServiceError> {
    let phone = PhoneNumber::parse(hook.phone)
        .map_err(|e| ServiceError::InvalidArgument(format!("phone: {e}")))?;
    let contact_id = contact_id_for(hook.location, &phone);
    let stream = contact_stream(hook.location, contact_id);
    // The stream is also ghl-sync's outbox for the contact: a concurrent append is read again.
    let mut recorded = Recorded::default();
    let metadata = EventMetadata::new_correlation().traced(whatsnap_telemetry::current());
    Aggregates::new(store)
        .tries(6)
        .update(&stream, &metadata, |known: &Known| {
            let changes;
            (recorded, changes) = decide(known, &hook, contact_id)?;
            Ok(changes)
        })
        .await
        .map_err(|err| match err {
            AggregateError::KeptChanging { last, .. } => ServiceError::Store(last),
            err => ServiceError::not_updated(format_args!("contact {contact_id}"), err),
        })?;
    Ok(recorded)
}

/// What whatsnap last knew GHL to show of a contact, from the contact's stream.
#[derive(Debug, Default)]
struct Known {
    linked: Option<String>,
    shown: Option<String>,
    source: Option<String>,
}

impl Aggregate for Known {
    // The stream is the contact's: other services write types this one need not know.
    const SKIPS_UNDECODABLE: bool = true;

    fn evolve(mut self, event: &Event, _version: u64) -> Self {
        match event {
            Event::GhlContactLinked(link) => {
                if let Some(observed) = &link.observed {
                    self.shown = observed.assigned_to.clone();
                    if observed.source.is_some() {
                        self.source = observed.source.clone();
                    }
                }
                self.linked = Some(link.ghl_contact_id.clone());
            }
            Event::GhlAssignmentApplied(applied) => self.shown = Some(applied.user_id.clone()),
            Event::ContactOwnerChangedInGhl(changed) => self.shown = changed.user_id.clone(),
            Event::ContactSourceChangedInGhl(changed) => self.source = changed.source.clone(),
            _ => {}
        }
        self
    }
}

/// What the webhook changes of what whatsnap knew.
fn decide(
    known: &Known,
    hook: &ContactWebhook<'_>,
    contact_id: uuid::Uuid,
) -> Result<(Recorded, Vec<Event>), ServiceError> {
    let Known {
        linked,
        shown,
        source,
    } = known;
    if linked.as_deref() != Some(hook.ghl_contact_id) {
        return Err(ServiceError::NotFound(
            "a GHL contact whatsnap has not linked".into(),
        ));
    }
    let mut changes = Vec::new();
    let mut recorded = Recorded::default();
    let user_id = hook.assigned_to.filter(|u| !u.trim().is_empty());
    if user_id != shown.as_deref() {
        recorded.owner_changed = true;
        changes.push(Event::from(ContactOwnerChangedInGhl {
            contact_id,
            ghl_contact_id: hook.ghl_contact_id.to_owned(),
            user_id: user_id.map(str::to_owned),
            previous: shown.clone(),
        }));
    }
    if let Some(told) = hook.source.map(str::trim).filter(|s| !s.is_empty())
        && Some(told) != source.as_deref()
    {
        recorded.source_changed = true;
        changes.push(Event::from(ContactSourceChangedInGhl {
            contact_id,
            ghl_contact_id: hook.ghl_contact_id.to_owned(),
            source: Some(told.to_owned()),
            previous: source.clone(),
        }));
    }
    Ok((recorded, changes))
}
