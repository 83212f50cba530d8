//! Every call ghl-sync makes to GHL, as an [`Effect`] of the outbox: what its recorded outcome
//! is, what settles it, how an unanswered call is looked for at GHL, and the call itself.
//!
//! | operation | stream | reconciled by |
//! |---|---|---|
//! | `ghl.contact` | `ghl/contact-<id>` | the call itself: it looks the phone up before creating |
//! | `ghl.post_message` | the message's | the contact's conversations, by `altId`, else text and date |
//! | `ghl.status` | the message's | none needed: setting a status again changes nothing |
//! | `ghl.assign` | `ghl/contact-<id>` | none needed: setting the owner again changes nothing |

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;
use whatsnap_effects::{Effect, OpenIntent, Recorded};
use whatsnap_events::{
    Event, GhlAssignmentApplied, GhlContactLinked, GhlContactObservation, GhlMessagePosted,
    GhlStatusReported, LocationId,
};
use whatsnap_ghl::client::{
    ContactUpdate, ContactUpsert, GhlClient, GhlContact, GhlError, InboundMessage, PostedMessage,
    StatusUpdate,
};

use crate::read_model::{ASSIGN, CONTACT, MESSAGE, STATUS};

pub const POST_MESSAGE: &str = "ghl.post_message";
pub const SYNC_CONTACT: &str = "ghl.contact";
pub const REPORT_STATUS: &str = "ghl.status";
pub const APPLY_ASSIGNMENT: &str = "ghl.assign";

/// How many pages of each conversation a reconciliation reads, newest first.
const RECONCILE_PAGES: usize = 5;

/// Whether `event` is ghl-sync giving up on `operation` (a queue kind) for good.
fn given_up(event: &Event, operation: &str) -> bool {
    matches!(event, Event::GhlSyncFailed(f) if f.final_attempt && f.operation == operation)
}

/// Adds an inbound (or phone-typed outbound) message to the contact's GHL conversation.
pub struct PostMessage<'a> {
    pub client: &'a GhlClient,
    pub location: &'a LocationId,
    pub token: &'a str,
    pub message_id: Uuid,
    pub message: InboundMessage,
}

#[async_trait]
impl Effect for PostMessage<'_> {
    type Output = PostedMessage;
    type Error = GhlError;

    fn recorded(&self, history: &[Recorded]) -> Option<PostedMessage> {
        history.iter().find_map(|(_, event)| match event {
            Event::GhlMessagePosted(posted) => Some(PostedMessage {
                conversation_id: posted.ghl_conversation_id.clone().unwrap_or_default(),
                message_id: posted.ghl_message_id.clone(),
            }),
            _ => None,
        })
    }

    fn settles(&self, event: &Event) -> bool {
        matches!(event, Event::GhlMessagePosted(_)) || given_up(event, MESSAGE)
    }

    async fn reconcile(&self, _: &OpenIntent) -> Result<Option<PostedMessage>, GhlError> {
        self.client
            .find_inbound_message(self.location, self.token, &self.message, RECONCILE_PAGES)
            .await
    }

    async fn call(&self) -> Result<PostedMessage, GhlError> {
        self.client
            .add_inbound_message(self.location, self.token, &self.message)
            .await
    }

    fn unsent(&self, error: &GhlError) -> bool {
        error.certainly_unsent()
    }

    fn outcome(&self, posted: &PostedMessage) -> Event {
        Event::from(GhlMessagePosted {
            message_id: self.message_id,
            ghl_message_id: posted.message_id.clone(),
            ghl_conversation_id: Some(posted.conversation_id.clone()),
        })
    }
}

/// Makes sure GHL has the contact with whatsnap's tags: found by phone (tags it lacks added),
/// or created; a linked contact gets the tags added since.
pub struct SyncContact<'a> {
    pub client: &'a GhlClient,
    pub location: &'a LocationId,
    pub token: &'a str,
    pub contact_id: Uuid,
    pub phone: String,
    pub name: Option<String>,
    pub tags: Vec<String>,
    pub assigned_to: Option<String>,
    /// GHL's id of the contact, where a link is recorded.
    pub linked: Option<String>,
    /// The log position a recorded link must cover to count as done; `None`: any link will
    /// do (only the id is wanted).
    pub through: Option<u64>,
    /// The log position the tags read for this call cover (the contact's queued position).
    pub covers: u64,
}

/// The GHL contact a [`SyncContact`] linked, and what GHL held of it when it was first found
/// or created (`None` when an already linked contact only got tags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    pub ghl_contact_id: String,
    pub observed: Option<GhlContactObservation>,
}

fn observation(contact: &GhlContact, existed_before: bool) -> GhlContactObservation {
    GhlContactObservation {
        existed_before,
        source: contact.source.clone(),
        assigned_to: contact.assigned_to.clone(),
        date_added: contact.date_added,
    }
}

#[async_trait]
impl Effect for SyncContact<'_> {
    type Output = Linked;
    type Error = GhlError;

    fn recorded(&self, history: &[Recorded]) -> Option<Linked> {
        history.iter().rev().find_map(|(_, event)| match event {
            Event::GhlContactLinked(link)
                if self
                    .through
                    .is_none_or(|through| link.synced_through >= through) =>
            {
                Some(Linked {
                    ghl_contact_id: link.ghl_contact_id.clone(),
                    observed: link.observed.clone(),
                })
            }
            _ => None,
        })
    }

    fn settles(&self, event: &Event) -> bool {
        matches!(event, Event::GhlContactLinked(_)) || given_up(event, CONTACT)
    }

    async fn call(&self) -> Result<Linked, GhlError> {
        let (client, location, token) = (self.client, self.location, self.token);
        if let Some(ghl_id) = &self.linked {
            client.add_tags(location, token, ghl_id, &self.tags).await?;
            return Ok(Linked {
                ghl_contact_id: ghl_id.clone(),
                observed: None,
            });
        }
        if let Some(found) = client
            .find_contact_by_phone(location, token, &self.phone)
            .await?
        {
            let missing: Vec<String> = self
                .tags
                .iter()
                .filter(|t| !found.tags.contains(t))
                .cloned()
                .collect();
            if !missing.is_empty() {
                client
                    .add_tags(location, token, &found.id, &missing)
                    .await?;
            }
            // What GHL knew before whatsnap touched it: its source and owner.
            return Ok(Linked {
                observed: Some(observation(&found, true)),
                ghl_contact_id: found.id,
            });
        }
        let upsert = ContactUpsert {
            phone: self.phone.clone(),
            name: self.name.clone(),
            tags: self.tags.clone(),
            // A new contact gets its owner at once, when one is already decided.
            assigned_to: self.assigned_to.clone(),
            source: Some("whatsnap".into()),
        };
        let upserted = client.upsert_contact(location, token, &upsert).await?;
        Ok(Linked {
            observed: Some(observation(&upserted.contact, !upserted.created)),
            ghl_contact_id: upserted.contact.id,
        })
    }

    fn unsent(&self, error: &GhlError) -> bool {
        error.certainly_unsent()
    }

    fn outcome(&self, linked: &Linked) -> Event {
        Event::from(GhlContactLinked {
            contact_id: self.contact_id,
            ghl_contact_id: linked.ghl_contact_id.clone(),
            tags: self.tags.clone(),
            synced_through: self.covers,
            observed: linked.observed.clone(),
        })
    }
}

/// Sets the GHL contact's owner (`assignedTo`).
pub struct ApplyAssignment<'a> {
    pub client: &'a GhlClient,
    pub location: &'a LocationId,
    pub token: &'a str,
    pub contact_id: Uuid,
    pub ghl_contact_id: String,
    pub user_id: String,
}

#[async_trait]
impl Effect for ApplyAssignment<'_> {
    type Output = ();
    type Error = GhlError;

    /// Done when the newest owner whatsnap set in GHL (or saw set there) is this user.
    fn recorded(&self, history: &[Recorded]) -> Option<()> {
        history
            .iter()
            .rev()
            .find_map(|(_, event)| match event {
                Event::GhlAssignmentApplied(applied) => Some(applied.user_id == self.user_id),
                // A GHL user changed the owner since: setting it again is not done yet.
                Event::ContactOwnerChangedInGhl(changed) => {
                    Some(changed.user_id.as_deref() == Some(self.user_id.as_str()))
                }
                _ => None,
            })
            .filter(|same| *same)
            .map(drop)
    }

    fn settles(&self, event: &Event) -> bool {
        matches!(event, Event::GhlAssignmentApplied(_)) || given_up(event, ASSIGN)
    }

    async fn call(&self) -> Result<(), GhlError> {
        let update = ContactUpdate {
            name: None,
            assigned_to: Some(self.user_id.clone()),
        };
        self.client
            .update_contact(self.location, self.token, &self.ghl_contact_id, &update)
            .await
            .map(drop)
    }

    fn unsent(&self, error: &GhlError) -> bool {
        error.certainly_unsent()
    }

    fn outcome(&self, (): &()) -> Event {
        Event::from(GhlAssignmentApplied {
            contact_id: self.contact_id,
            ghl_contact_id: self.ghl_contact_id.clone(),
            user_id: self.user_id.clone(),
        })
    }
}

/// Reports a reply's delivery status to GHL.
pub struct ReportStatus<'a> {
    pub client: &'a GhlClient,
    pub location: &'a LocationId,
    pub token: &'a str,
    pub message_id: Uuid,
    pub ghl_message_id: String,
    /// `delivered`, `read` or `failed`.
    pub status: String,
    pub update: StatusUpdate,
    pub patience: Duration,
}

#[async_trait]
impl Effect for ReportStatus<'_> {
    type Output = ();
    type Error = GhlError;

    fn recorded(&self, history: &[Recorded]) -> Option<()> {
        history
            .iter()
            .any(|(_, event)| {
                matches!(event, Event::GhlStatusReported(reported) if reported.status == self.status)
            })
            .then_some(())
    }

    fn settles(&self, event: &Event) -> bool {
        matches!(event, Event::GhlStatusReported(_)) || given_up(event, STATUS)
    }

    async fn call(&self) -> Result<(), GhlError> {
        self.client
            .update_message_status(
                self.location,
                self.token,
                &self.ghl_message_id,
                &self.update,
                self.patience,
            )
            .await
    }

    fn unsent(&self, error: &GhlError) -> bool {
        error.certainly_unsent()
    }

    fn outcome(&self, (): &()) -> Event {
        Event::from(GhlStatusReported {
            message_id: self.message_id,
            ghl_message_id: self.ghl_message_id.clone(),
            status: self.status.clone(),
        })
    }
}
