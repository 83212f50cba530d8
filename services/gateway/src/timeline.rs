//! `contact_timeline`: for each contact, every event that touched it, with a summary that
//! answers "what happened, and why" for `whatsnap trace`. Summaries name no one: a number
//! shows masked, a name or a message not at all; an erased contact's show as `[erased]`.

use async_trait::async_trait;
use sqlx::{Any, AnyConnection};
use summary::{contact_of, message_of};
use whatsnap_events::{Event, RecordedEvent};
use whatsnap_eventstore::projection::{ApplyError, Projection};
use whatsnap_eventstore::rows::Rows;

pub struct TimelineProjection;

mod summary {
    use whatsnap_events::{
        ContactTagged, ERASED, Event, LocationId, PhoneNumber, contact_id_for, mask,
    };

    /// A number as a summary shows it: masked, or `[erased]`.
    fn shown(phone: &str) -> String {
        match phone {
            ERASED => ERASED.to_owned(),
            phone => mask::phone(phone).to_string(),
        }
    }

    /// A tag added to a contact, by a `ContactTagged` or with its creation.
    fn tag_added(tagged: &ContactTagged) -> String {
        format!("tag {} added ({:?})", tagged.tag, tagged.source)
    }

    /// The contact an event is about, and a summary of it; `None` for events about no contact.
    pub fn contact_of(location: &LocationId, event: &Event) -> Option<(String, String)> {
        let (contact_id, summary) = match event {
            Event::InboundMessageReceived(e) => {
                let phone = PhoneNumber::parse(&e.from).ok()?;
                (
                    contact_id_for(location, &phone),
                    format!(
                        "message received from {} by account {} (provider id {})",
                        shown(&e.from),
                        e.account_id,
                        e.provider_message_id
                    ),
                )
            }
            Event::ContactCreated(e) => (
                e.contact_id,
                format!(
                    "contact created for {}: first message reached account {}{}",
                    shown(&e.phone),
                    e.first_account_id
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "-".into()),
                    e.tagged()
                        .map(|tagged| format!("; {}", tag_added(&tagged)))
                        .unwrap_or_default()
                ),
            ),
            Event::ContactTagged(e) => (e.contact_id, tag_added(e)),
            Event::ContactErased(e) => (
                e.contact_id,
                format!(
                    "personal data erased{}: phone, name and messages show as {ERASED}",
                    e.requested_by
                        .as_deref()
                        .map(|by| format!(" (asked by {by})"))
                        .unwrap_or_default()
                ),
            ),
            Event::ContactUntagged(e) => (
                e.contact_id,
                format!("tag {} removed ({:?})", e.tag, e.source),
            ),
            Event::ContactAssigned(e) => (
                e.contact_id,
                format!(
                    "assigned to user {} by rule {}: {}",
                    e.user_id, e.rule, e.reason
                ),
            ),
            Event::AssignmentSkipped(e) => (e.contact_id, format!("left unassigned: {}", e.reason)),
            Event::OutboundMessageRequested(e) => (
                e.contact_id,
                format!("reply requested (message {})", e.message_id),
            ),
            Event::OutboundMessageRouted(e) => (
                e.contact_id,
                format!(
                    "reply {} routed to account {} by tag {}: {}",
                    e.message_id, e.account_id, e.tag, e.reason
                ),
            ),
            Event::OutboundRouteFailed(e) => (
                e.contact_id,
                format!("reply {} not routed: {}", e.message_id, e.reason),
            ),
            Event::GhlContactLinked(e) => (
                e.contact_id,
                format!("linked to GHL contact {}", e.ghl_contact_id),
            ),
            Event::ContactOwnerChangedInGhl(e) => (
                e.contact_id,
                format!(
                    "owner changed by hand in GHL: {} -> {}",
                    e.previous.as_deref().unwrap_or("nobody"),
                    e.user_id.as_deref().unwrap_or("nobody")
                ),
            ),
            Event::ContactSourceChangedInGhl(e) => (
                e.contact_id,
                format!(
                    "source changed in GHL: {} -> {}",
                    e.previous.as_deref().unwrap_or("none"),
                    e.source.as_deref().unwrap_or("none")
                ),
            ),
            _ => return None,
        };
        Some((contact_id.to_string(), summary))
    }

    /// The message an event is about, and a summary of it, for events that name no contact.
    pub fn message_of(event: &Event) -> Option<(String, String)> {
        let (message_id, summary) = match event {
            Event::OutboundMessageSent(e) => (
                e.message_id,
                format!(
                    "reply {} sent from account {} (provider id {})",
                    e.message_id, e.account_id, e.provider_message_id
                ),
            ),
            Event::MessageDelivered(e) => {
                (e.message_id, format!("message {} delivered", e.message_id))
            }
            Event::MessageRead(e) => (e.message_id, format!("message {} read", e.message_id)),
            Event::MessageFailed(e) => (
                e.message_id,
                format!("message {} failed: {}", e.message_id, e.reason),
            ),
            Event::GhlMessagePosted(e) => (
                e.message_id,
                format!(
                    "message {} added to the GHL conversation as {}",
                    e.message_id, e.ghl_message_id
                ),
            ),
            Event::GhlStatusReported(e) => (
                e.message_id,
                format!("GHL told that message {} is {}", e.ghl_message_id, e.status),
            ),
            Event::GhlSyncFailed(e) => (
                e.subject_id?,
                format!(
                    "GHL {} {}: {}",
                    e.operation,
                    if e.final_attempt {
                        "given up"
                    } else {
                        "failed, trying again"
                    },
                    e.reason
                ),
            ),
            _ => return None,
        };
        Some((message_id.to_string(), summary))
    }
}

/// An erased contact's summaries keep what happened, not whose number it was.
async fn forget(conn: &mut AnyConnection, contact_id: &str) -> sqlx::Result<()> {
    let erased = whatsnap_events::ERASED;
    for (event_type, summary) in [
        (
            "InboundMessageReceived",
            format!("message received from {erased}"),
        ),
        ("ContactCreated", format!("contact created for {erased}")),
    ] {
        sqlx::query(
            "UPDATE contact_timeline SET summary = $3 WHERE contact_id = $1 AND event_type = $2",
        )
        .bind(contact_id)
        .bind(event_type)
        .bind(summary)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Projection<Any> for TimelineProjection {
    fn name(&self) -> &str {
        "contact_timeline"
    }

    fn reads(&self) -> Option<&'static [&'static str]> {
        Some(&[
            "InboundMessageReceived",
            "ContactCreated",
            "ContactTagged",
            "ContactUntagged",
            "ContactErased",
            "ContactAssigned",
            "AssignmentSkipped",
            "OutboundMessageRequested",
            "OutboundMessageRouted",
            "OutboundRouteFailed",
            "OutboundMessageSent",
            "MessageDelivered",
            "MessageRead",
            "MessageFailed",
            "GhlContactLinked",
            "GhlMessagePosted",
            "GhlStatusReported",
            "GhlSyncFailed",
            "ContactOwnerChangedInGhl",
            "ContactSourceChangedInGhl",
        ])
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE contact_timeline (contact_id TEXT NOT NULL, position BIGINT NOT NULL, event_type TEXT NOT NULL, summary TEXT NOT NULL, PRIMARY KEY (contact_id, position))",
            "CREATE TABLE timeline_messages (message_id TEXT PRIMARY KEY, contact_id TEXT NOT NULL)",
        ]
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        apply_runs(conn, &[event]).await
    }

    /// The batch in runs between erasures, each run in a few statements: its messages' contacts
    /// looked up at once, its rows inserted many at a time.
    async fn apply_together(
        &self,
        conn: &mut AnyConnection,
        events: &[&RecordedEvent],
    ) -> Option<Result<(), ApplyError>> {
        Some(apply_runs(conn, events).await)
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        whatsnap_eventstore::rows::empty(conn, &["contact_timeline", "timeline_messages"]).await
    }

    /// A rebuild's events a few thousand to a transaction: each is a row or two of a
    /// statement, not statements of its own.
    fn batch_size(&self) -> Option<usize> {
        Some(BATCH)
    }
}

/// The most events of one transaction.
const BATCH: usize = 2_000;

/// Applies `events` in order: an erasure first rewrites what the timeline holds of the
/// contact, so the events before it are written before it, and those after it after.
async fn apply_runs(conn: &mut AnyConnection, events: &[&RecordedEvent]) -> Result<(), ApplyError> {
    // The runner skips types this build does not know; a payload that does not decode is a
    // failure, for the runner to retry and park.
    let mut run = Vec::with_capacity(events.len());
    for event in events {
        let decoded = event.decode()?;
        if let Event::ContactErased(e) = &decoded {
            apply_run(conn, &run).await?;
            run.clear();
            forget(conn, &e.contact_id.to_string()).await?;
        }
        run.push((*event, decoded));
    }
    apply_run(conn, &run).await
}

/// Writes the timeline rows of a run of events without erasures: what applying them one at a
/// time leaves, in a few statements.
async fn apply_run(
    conn: &mut AnyConnection,
    run: &[(&RecordedEvent, Event)],
) -> Result<(), ApplyError> {
    if run.is_empty() {
        return Ok(());
    }
    // The contacts of the messages the run names without their contact, as the read model
    // had them before it; the run's own messages join them as it goes (the first one
    // recorded for a message stays, as `ON CONFLICT DO NOTHING` keeps it).
    let unknown: Vec<String> = run
        .iter()
        .filter(|(event, decoded)| contact_of(event.location_id(), decoded).is_none())
        .filter_map(|(_, decoded)| message_of(decoded).map(|(message, _)| message))
        .collect();
    let mut contacts = whatsnap_eventstore::rows::select_in(
        conn,
        "SELECT message_id, contact_id FROM timeline_messages WHERE message_id IN",
        &unknown,
    )
    .await?;
    let mut messages = Rows::new(
        "INSERT INTO timeline_messages (message_id, contact_id)",
        2,
        "ON CONFLICT (message_id) DO NOTHING",
    );
    let mut rows = Rows::new(
        "INSERT INTO contact_timeline (contact_id, position, event_type, summary)",
        4,
        "ON CONFLICT (contact_id, position) DO NOTHING",
    );
    for (event, decoded) in run {
        if let Some((message_id, contact_id)) = message_contact(event, decoded) {
            contacts
                .entry(message_id.clone())
                .or_insert_with(|| contact_id.clone());
            messages.push([message_id.into(), contact_id.into()]);
        }
        let about = contact_of(event.location_id(), decoded).or_else(|| {
            let (subject, summary) = message_of(decoded)?;
            // A contact's GHL failure names the contact itself.
            let contact = contacts
                .get(&subject)
                .cloned()
                .or_else(|| matches!(decoded, Event::GhlSyncFailed(_)).then_some(subject))?;
            Some((contact, summary))
        });
        if let Some((contact_id, summary)) = about {
            rows.push([
                contact_id.into(),
                (event.position as i64).into(),
                event.event_type.as_str().into(),
                summary.into(),
            ]);
        }
    }
    messages.write(conn).await?;
    rows.write(conn).await?;
    Ok(())
}

/// The contact of a message the event starts: a reply, or a message received.
fn message_contact(event: &RecordedEvent, decoded: &Event) -> Option<(String, String)> {
    match decoded {
        Event::OutboundMessageRequested(e) => {
            Some((e.message_id.to_string(), e.contact_id.to_string()))
        }
        Event::InboundMessageReceived(e) => {
            let phone = whatsnap_events::PhoneNumber::parse(&e.from).ok()?;
            Some((
                e.message_id.to_string(),
                whatsnap_events::contact_id_for(event.location_id(), &phone).to_string(),
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;
    use whatsnap_events::{AssignmentSkipped, Event, LocationId};

    use super::*;

    #[test]
    fn an_assignment_decision_is_summarised_with_its_reason() {
        let location = LocationId::parse("loc").unwrap();
        let contact_id = Uuid::now_v7();
        let event = Event::from(AssignmentSkipped {
            contact_id,
            account_id: None,
            reason: "nobody is available".into(),
            candidates: Vec::new(),
            trigger: None,
        });
        let (id, summary) = contact_of(&location, &event).unwrap();
        assert_eq!(id, contact_id.to_string());
        assert_eq!(summary, "left unassigned: nobody is available");
    }

    #[test]
    fn what_ghl_users_changed_by_hand_is_summarised_from_and_to() {
        let location = LocationId::parse("loc").unwrap();
        let contact_id = Uuid::now_v7();
        let removed = Event::from(whatsnap_events::ContactOwnerChangedInGhl {
            contact_id,
            ghl_contact_id: "ghl1".into(),
            user_id: None,
            previous: Some("uAna".into()),
        });
        let (_, summary) = contact_of(&location, &removed).unwrap();
        assert_eq!(summary, "owner changed by hand in GHL: uAna -> nobody");
        let source = Event::from(whatsnap_events::ContactSourceChangedInGhl {
            contact_id,
            ghl_contact_id: "ghl1".into(),
            source: Some("Google Ads Campaign".into()),
            previous: Some("whatsnap".into()),
        });
        let (id, summary) = contact_of(&location, &source).unwrap();
        assert_eq!(id, contact_id.to_string());
        assert_eq!(
            summary,
            "source changed in GHL: whatsnap -> Google Ads Campaign"
        );
    }
}
