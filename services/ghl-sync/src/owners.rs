//! Owners changed in GHL: a contact webhook (ContactCreate, ContactUpdate) shows the contact's
//! `assignedTo`; when it differs from the owner whatsnap last knew GHL to show (what its look-up
//! found, what ghl-sync set, what an earlier webhook said), a GHL user reassigned the contact by
//! hand, recorded as `ContactOwnerChangedInGhl` beside the contact's link for assignment to read.

use whatsnap_events::{
    ContactOwnerChangedInGhl, Event, EventMetadata, LocationId, NewEvent, PhoneNumber, StreamId,
    contact_id_for,
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
}

/// Records an owner change the webhook shows; `false` when GHL shows the owner whatsnap knew.
pub async fn record(
    store: &dyn EventStore,
    hook: ContactWebhook<'_>,
) -> Result<bool, ServiceError> {
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
) -> Result<bool, ServiceError> {
    let mut linked = None;
    let mut shown: Option<String> = None;
    let mut version = 0;
    for recorded in store.read_stream(stream, 1, usize::MAX).await? {
        version = recorded.version;
        match recorded.decode() {
            Ok(Event::GhlContactLinked(link)) => {
                if let Some(observed) = link.observed {
                    shown = observed.assigned_to;
                }
                linked = Some(link.ghl_contact_id);
            }
            Ok(Event::GhlAssignmentApplied(applied)) => shown = Some(applied.user_id),
            Ok(Event::ContactOwnerChangedInGhl(changed)) => shown = changed.user_id,
            _ => {}
        }
    }
    if linked.as_deref() != Some(hook.ghl_contact_id) {
        return Err(ServiceError::NotFound(
            "a GHL contact whatsnap has not linked".into(),
        ));
    }
    let user_id = hook.assigned_to.filter(|u| !u.trim().is_empty());
    if user_id == shown.as_deref() {
        return Ok(false);
    }
    let event = Event::from(ContactOwnerChangedInGhl {
        contact_id,
        ghl_contact_id: hook.ghl_contact_id.to_owned(),
        user_id: user_id.map(str::to_owned),
        previous: shown,
    });
    let metadata = EventMetadata::new_correlation().traced(whatsnap_telemetry::current());
    store
        .append(
            stream,
            ExpectedVersion::Exact(version),
            vec![NewEvent::new(&event, metadata)],
        )
        .await?;
    Ok(true)
}
