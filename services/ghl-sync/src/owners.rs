//! Owners and sources changed in GHL: a contact webhook (ContactCreate, ContactUpdate,
//! ContactTagUpdate) shows the contact's `assignedTo` and `source`. When the owner differs from
//! the one whatsnap last knew GHL to show (what its look-up found, what ghl-sync set, what an
//! earlier webhook said), a GHL user reassigned the contact by hand (or removed its owner),
//! recorded as `ContactOwnerChangedInGhl`; when a source is given and differs from the one
//! whatsnap knew, `ContactSourceChangedInGhl`. Both go beside the contact's link for assignment
//! to read.

use whatsnap_events::{
    ContactOwnerChangedInGhl, ContactSourceChangedInGhl, Event, EventMetadata, LocationId,
    NewEvent, PhoneNumber, StreamId, contact_id_for,
};
use whatsnap_eventstore::{EventStore, ExpectedVersion, StoreError};
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
    let mut attempts = 0;
    loop {
        match try_record(store, &hook, contact_id, &stream).await {
            Err(ServiceError::Store(StoreError::WrongExpectedVersion { .. })) if attempts < 5 => {
                attempts += 1;
            }
            outcome => return outcome,
        }
    }
}

async fn try_record(
    store: &dyn EventStore,
    hook: &ContactWebhook<'_>,
    contact_id: uuid::Uuid,
    stream: &StreamId,
) -> Result<Recorded, ServiceError> {
    let mut linked = None;
    let mut shown: Option<String> = None;
    let mut source: Option<String> = None;
    let mut version = 0;
    for recorded in store.read_stream(stream, 1, usize::MAX).await? {
        version = recorded.version;
        match recorded.decode() {
            Ok(Event::GhlContactLinked(link)) => {
                if let Some(observed) = link.observed {
                    shown = observed.assigned_to;
                    if observed.source.is_some() {
                        source = observed.source;
                    }
                }
                linked = Some(link.ghl_contact_id);
            }
            Ok(Event::GhlAssignmentApplied(applied)) => shown = Some(applied.user_id),
            Ok(Event::ContactOwnerChangedInGhl(changed)) => shown = changed.user_id,
            Ok(Event::ContactSourceChangedInGhl(changed)) => source = changed.source,
            _ => {}
        }
    }
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
            previous: shown,
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
            previous: source,
        }));
    }
    if changes.is_empty() {
        return Ok(recorded);
    }
    let metadata = EventMetadata::new_correlation().traced(whatsnap_telemetry::current());
    store
        .append(
            stream,
            ExpectedVersion::Exact(version),
            changes
                .iter()
                .map(|event| NewEvent::new(event, metadata.clone()))
                .collect(),
        )
        .await?;
    Ok(recorded)
}
