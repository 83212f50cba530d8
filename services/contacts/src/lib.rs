//! The contacts service owns contacts and their tags. Every inbound message finds or creates
//! the contact of its sender — by (location, E.164 phone), whose contact id is derived so that
//! two processes cannot create it twice — and puts the receiving account's tag on it. The
//! `contacts` read model answers lookups by phone. Erasing a contact destroys its key (see
//! `whatsnap-pii`) and records `ContactErased`, which the read model applies by forgetting the
//! contact's phone and name.

mod application;
mod contact;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sqlx::{Any, AnyConnection, Row};
use tonic::{Request, Response, Status};
use tracing::{debug, warn};
use whatsnap_events::{
    AggregateKind, Event, EventMetadata, InboundMessageReceived, LocationId, NewEvent,
    OutboundMessageRequested, OutboundMessageRouted, OutboundRouteFailed, PhoneNumber,
    RecordedEvent, StreamId, contact_id_for,
};
use whatsnap_eventstore::aggregate::Cache;
use whatsnap_eventstore::projection::{ApplyError, Part, Projection};
use whatsnap_eventstore::{
    AggregateError, Aggregates, EventStore, ExpectedVersion, LoadError, Loaded, StoreError,
};
use whatsnap_proto::contacts::v1 as pb;
use whatsnap_rpc::{ReadDb, ServiceError};

pub use application::Application;
pub use contact::{
    ContactState, decide_erase, decide_ghl_tags, decide_on_inbound, decide_tag, evolve,
    tags_by_recency,
};

/// How often a decision is retried when another writer changed the contact meanwhile.
const CONFLICT_RETRIES: usize = 5;

/// How many contacts the contacts stage keeps in memory (a few hundred bytes each); when full,
/// it starts over empty.
const CONTACTS_KEPT: usize = 20_000;

#[derive(Clone)]
pub struct Contacts {
    store: Arc<dyn EventStore>,
    db: ReadDb,
    keys: Option<Arc<whatsnap_pii::ContactKeys>>,
    /// The contacts the contacts stage decided on, kept current from the log.
    kept: Arc<Cache<ContactState>>,
}

impl Contacts {
    pub fn new(store: Arc<dyn EventStore>, db: ReadDb) -> Self {
        Self {
            store,
            db,
            keys: None,
            kept: Arc::new(Cache::new(CONTACTS_KEPT)),
        }
    }

    /// Keeps the contacts the contacts stage decided on current from the log until `shutdown`,
    /// so that a known contact's next message is decided from memory.
    pub async fn follow_contacts(&self, shutdown: impl Future<Output = ()>) {
        self.kept
            .follow_until(self.store.as_ref(), AggregateKind::Contact, shutdown)
            .await
    }

    /// The contacts' keys, which `EraseContact` destroys.
    pub fn with_contact_keys(mut self, keys: Arc<whatsnap_pii::ContactKeys>) -> Self {
        self.keys = Some(keys);
        self
    }

    pub fn grpc(&self) -> pb::contacts_service_server::ContactsServiceServer<Self> {
        pb::contacts_service_server::ContactsServiceServer::new(self.clone())
    }

    /// The read model (contacts by phone, their tags, the accounts tags name).
    pub fn projection(&self) -> Arc<ContactsProjection> {
        Arc::new(ContactsProjection {
            store: self.store.clone(),
            db: self.db.clone(),
            accounts: Mutex::default(),
            kept: self.kept.clone(),
        })
    }

    /// The contacts stage, or its `part` (see [`ContactsStage`]).
    pub fn stage(&self, part: Part) -> Arc<ContactsStage> {
        Arc::new(ContactsStage {
            name: part.name(STAGE),
            part,
            decider: self.projection(),
        })
    }
}

/// The name of the contacts stage's checkpoint (and of its parts', which it starts).
pub const STAGE: &str = "contacts_stage";

impl Contacts {
    /// Appends what a command decided to the contact's stream (if anything) and shows the
    /// contact as it is then.
    async fn record(
        &self,
        location: &LocationId,
        phone: &PhoneNumber,
        stream: &StreamId,
        state: ContactState,
        decided: &[Event],
    ) -> Result<pb::Contact, ServiceError> {
        let version = state.version;
        let metadata = EventMetadata::new_correlation().traced(whatsnap_telemetry::current());
        let state = Aggregates::new(self.store.as_ref())
            .append(stream, Loaded { state, version }, decided, &metadata)
            .await?
            .state;
        Ok(pb::Contact {
            contact_id: contact_id_for(location, phone).to_string(),
            location_id: location.to_string(),
            phone: phone.to_string(),
            name: String::new(),
            tags: state.tags.into_iter().collect(),
        })
    }

    /// The contact with this phone, from its own stream (not existing if never created).
    async fn load_contact(
        &self,
        location: &LocationId,
        phone: &PhoneNumber,
    ) -> Result<(uuid::Uuid, StreamId, ContactState), ServiceError> {
        let contact_id = contact_id_for(location, phone);
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Contact, contact_id);
        let loaded = Aggregates::new(self.store.as_ref())
            .load::<ContactState>(&stream)
            .await
            .map_err(|e| ServiceError::unloadable(format_args!("contact {contact_id}"), e))?;
        Ok((contact_id, stream, loaded.state))
    }
}

pub struct ContactsProjection {
    store: Arc<dyn EventStore>,
    db: ReadDb,
    /// What each account was added with, as read from its stream.
    accounts: Mutex<HashMap<uuid::Uuid, AccountTag>>,
    kept: Arc<Cache<ContactState>>,
}

/// The tag an account puts on its contacts, and the account's kind.
#[derive(Clone)]
struct AccountTag {
    tag: String,
    kind: whatsnap_events::AccountKind,
}

impl ContactsProjection {
    /// The tag and kind an account was added with: the first event of its stream, which never
    /// changes, so it is read once per account and kept.
    async fn account_tag(
        &self,
        location: &LocationId,
        account_id: uuid::Uuid,
    ) -> Result<Option<AccountTag>, ApplyError> {
        if let Some(known) = self
            .accounts
            .lock()
            .expect("accounts lock")
            .get(&account_id)
        {
            return Ok(Some(known.clone()));
        }
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Account, account_id);
        let first = self.store.read_stream(&stream, 1, 1).await?;
        let Some(Event::AccountAdded(added)) =
            first.first().map(RecordedEvent::decode).transpose()?
        else {
            return Ok(None);
        };
        let known = AccountTag {
            tag: added.tag,
            kind: added.kind,
        };
        self.accounts
            .lock()
            .expect("accounts lock")
            .insert(account_id, known.clone());
        Ok(Some(known))
    }

    /// Finds or creates the sender's contact and tags it with the account's tag. Idempotent:
    /// run again for the same message it decides nothing new.
    async fn on_inbound(
        &self,
        cause: &RecordedEvent,
        message: InboundMessageReceived,
    ) -> Result<(), ApplyError> {
        let location = cause.location_id().clone();
        // The account's tag, from the account's own stream (the authority, and already written
        // before any message reached the account).
        let Some(AccountTag { tag, kind }) =
            self.account_tag(&location, message.account_id).await?
        else {
            warn!(account_id = %message.account_id, "inbound message for an account never added; contact not created");
            return Ok(());
        };
        let platform = Some(kind);
        if message.from == whatsnap_events::ERASED {
            // From a contact erased since (or before): nothing of it is kept.
            return Ok(());
        }
        let phone = PhoneNumber::parse(&message.from)?;
        let contact_id = contact_id_for(&location, &phone);
        let stream = StreamId::for_uuid(location, AggregateKind::Contact, contact_id);
        let metadata = EventMetadata::caused_by(cause).traced(whatsnap_telemetry::current());
        // Decided as the log had the contact at the message (from memory, in the usual case).
        let aggregates = Aggregates::new(self.store.as_ref()).tries(CONFLICT_RETRIES);
        let decided = self
            .kept
            .update_at(
                &aggregates,
                &stream,
                cause.position,
                &metadata,
                |state: &ContactState| {
                    Ok::<_, Infallible>(decide_on_inbound(
                        state, contact_id, &phone, &message, &tag, platform,
                    ))
                },
            )
            .await;
        match decided {
            Ok(updated) if updated.appended > 0 => {
                debug!(%contact_id, count = updated.appended, "contact events appended");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(AggregateError::KeptChanging { tries, .. }) => Err(format!(
                "contact {contact_id} kept changing; giving up after {tries} tries"
            )
            .into()),
            // The store's own errors, as they are: the runner waits out an outage of the store.
            Err(AggregateError::Load(LoadError::Store(err)) | AggregateError::Store(err)) => {
                Err(err.into())
            }
            Err(AggregateError::Load(LoadError::Undecodable(err))) => Err(err.into()),
            Err(AggregateError::Rejected(never)) => match never {},
        }
    }
}

impl ContactsProjection {
    /// Chooses the account a reply leaves from, by the route rule over the contact's tags as
    /// its own stream has them (the authority: a tag GHL changed a moment ago counts), and
    /// records the route or why there is none. Idempotent: a routed message is left alone.
    async fn on_reply(
        &self,
        cause: &RecordedEvent,
        reply: OutboundMessageRequested,
    ) -> Result<(), ApplyError> {
        if cause.version != 1 {
            return Ok(());
        }
        let location = cause.location_id().clone();
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Contact, reply.contact_id);
        let mut history = Vec::new();
        for recorded in self.store.read_stream(&stream, 1, usize::MAX).await? {
            history.push(recorded.decode()?);
        }
        let phone = reply.to.clone().unwrap_or_default();
        let decided = if history.is_empty() {
            Event::from(OutboundRouteFailed {
                message_id: reply.message_id,
                contact_id: reply.contact_id,
                reason: format!(
                    "whatsnap has no contact {} in this location (it never messaged a connected account): \
                     nothing says which account to reply from",
                    whatsnap_events::mask::phone(&phone)
                ),
            })
        } else {
            let mut carried = Vec::new();
            for tag in tags_by_recency(&history) {
                let account = sqlx::query(
                    "SELECT account_id, removed FROM contacts_accounts WHERE location_id = $1 AND tag = $2",
                )
                .bind(location.to_string())
                .bind(&tag)
                .fetch_optional(&self.db)
                .await?
                .map(|row| {
                    (
                        row.get::<String, _>("account_id"),
                        row.get::<i64, _>("removed") != 0,
                    )
                });
                carried.push(CarriedTag { tag, account });
            }
            match choose_route(&phone, &carried) {
                Ok((account_id, tag, reason)) => Event::from(OutboundMessageRouted {
                    message_id: reply.message_id,
                    contact_id: reply.contact_id,
                    account_id: account_id.parse()?,
                    tag,
                    to: phone.clone(),
                    reason,
                }),
                Err(reason) => Event::from(OutboundRouteFailed {
                    message_id: reply.message_id,
                    contact_id: reply.contact_id,
                    reason,
                }),
            }
        };
        let metadata = EventMetadata::caused_by(cause).traced(whatsnap_telemetry::current());
        match self
            .store
            .append(
                &cause.stream,
                ExpectedVersion::Exact(1),
                vec![NewEvent::new(&decided, metadata)],
            )
            .await
        {
            Ok(_) | Err(StoreError::WrongExpectedVersion { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

/// The contact an inbound message is from, or a reply is to.
fn contact_of(event: &RecordedEvent) -> Option<uuid::Uuid> {
    match event.decode().ok()? {
        Event::InboundMessageReceived(message) => {
            let phone = PhoneNumber::parse(&message.from).ok()?;
            Some(contact_id_for(event.location_id(), &phone))
        }
        Event::OutboundMessageRequested(reply) => Some(reply.contact_id),
        _ => None,
    }
}

/// The contacts stage: finds or creates the contact of each inbound message and puts the
/// receiving account's tag on it, and chooses the account each reply leaves from by the
/// contact's tags. It keeps no read model, only its checkpoint, and may be split into
/// [`Part`]s by contact, each run under a lease of its own, so that replicas share the work;
/// one contact's messages and replies are always one part's, handled in log order (a reply
/// written after a message through another account leaves from that account). A part without
/// a checkpoint (the stage split anew) starts where the lowest of the stage's checkpoints is,
/// or, before the stage ever ran (an upgrade), where the contacts read model is (which did this
/// work itself before the stage was its own, and which a rebuild sets back): deciding again on
/// a message already decided, or routing a reply already routed, appends nothing.
pub struct ContactsStage {
    name: String,
    part: Part,
    decider: Arc<ContactsProjection>,
}

#[async_trait]
impl Projection<Any> for ContactsStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn reads(&self) -> Option<&'static [&'static str]> {
        Some(&["InboundMessageReceived", "OutboundMessageRequested"])
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[]
    }

    fn starts_where(&self) -> Vec<String> {
        vec![Part::siblings(STAGE), "contacts".to_owned()]
    }

    fn reacts_to(&self, event: &RecordedEvent) -> bool {
        // The whole stage reacts to every message and reply: finding the contact (a decode and
        // a phone number parsed) only to be told so would be spent for nothing.
        self.part.count() == 1 || self.part.holds(&self.react_key(event).unwrap_or_default())
    }

    /// The contact a message is from or a reply is to: one contact's are handled in order,
    /// different contacts' at the same time. A message whose sender does not parse (or was
    /// erased) has no contact; it falls in the part of the empty key, which says why it
    /// decides nothing.
    fn react_key(&self, event: &RecordedEvent) -> Option<String> {
        contact_of(event).map(|contact_id| contact_id.to_string())
    }

    async fn react(&self, event: &RecordedEvent) -> Result<(), ApplyError> {
        match event.decode()? {
            Event::InboundMessageReceived(message) => self.decider.on_inbound(event, message).await,
            Event::OutboundMessageRequested(reply) => self.decider.on_reply(event, reply).await,
            _ => Ok(()),
        }
    }

    async fn apply(
        &self,
        _conn: &mut AnyConnection,
        _event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        Ok(())
    }

    async fn reset(&self, _conn: &mut AnyConnection) -> sqlx::Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Projection<Any> for ContactsProjection {
    fn name(&self) -> &str {
        "contacts"
    }

    fn reads(&self) -> Option<&'static [&'static str]> {
        Some(&[
            "AccountAdded",
            "AccountRemoved",
            "ContactCreated",
            "ContactErased",
            "ContactTagged",
            "ContactUntagged",
        ])
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE contacts_accounts (account_id TEXT PRIMARY KEY, location_id TEXT NOT NULL, tag TEXT NOT NULL, kind TEXT NOT NULL, removed BIGINT NOT NULL); \
         CREATE TABLE contacts (contact_id TEXT PRIMARY KEY, location_id TEXT NOT NULL, phone TEXT NOT NULL, name TEXT, created_position BIGINT NOT NULL, UNIQUE (location_id, phone)); \
         CREATE TABLE contact_tags (contact_id TEXT NOT NULL, tag TEXT NOT NULL, position BIGINT NOT NULL, PRIMARY KEY (contact_id, tag))",
        ]
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        match event.decode()? {
            Event::AccountAdded(e) => {
                sqlx::query(
                    "INSERT INTO contacts_accounts (account_id, location_id, tag, kind, removed) \
                     VALUES ($1, $2, $3, $4, 0) ON CONFLICT (account_id) DO NOTHING",
                )
                .bind(e.account_id.to_string())
                .bind(event.location_id().to_string())
                .bind(e.tag)
                .bind(e.kind.as_str())
                .execute(&mut *conn)
                .await?;
            }
            Event::AccountRemoved(e) => {
                sqlx::query("UPDATE contacts_accounts SET removed = 1 WHERE account_id = $1")
                    .bind(e.account_id.to_string())
                    .execute(&mut *conn)
                    .await?;
            }
            Event::ContactCreated(e) => {
                if let Some(tagged) = e.tagged() {
                    add_tag(conn, tagged, event.position).await?;
                }
                sqlx::query(
                    "INSERT INTO contacts (contact_id, location_id, phone, name, created_position) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (contact_id) DO NOTHING",
                )
                .bind(e.contact_id.to_string())
                .bind(event.location_id().to_string())
                .bind(match e.phone.as_str() {
                    whatsnap_events::ERASED => erased_phone(e.contact_id),
                    _ => e.phone,
                })
                .bind(e.name.filter(|n| n != whatsnap_events::ERASED))
                .bind(event.position as i64)
                .execute(&mut *conn)
                .await?;
            }
            Event::ContactErased(e) => {
                // The phone stays unique per location: each erased contact keeps its own
                // placeholder, shown as `[erased]`.
                sqlx::query("UPDATE contacts SET phone = $2, name = NULL WHERE contact_id = $1")
                    .bind(e.contact_id.to_string())
                    .bind(erased_phone(e.contact_id))
                    .execute(&mut *conn)
                    .await?;
            }
            Event::ContactTagged(e) => add_tag(conn, e, event.position).await?,
            Event::ContactUntagged(e) => {
                sqlx::query("DELETE FROM contact_tags WHERE contact_id = $1 AND tag = $2")
                    .bind(e.contact_id.to_string())
                    .bind(e.tag)
                    .execute(&mut *conn)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        whatsnap_eventstore::rows::empty(conn, &["contacts_accounts", "contacts", "contact_tags"])
            .await
    }
}

/// Records a tag on a contact (by a `ContactTagged`, or with its creation).
async fn add_tag(
    conn: &mut AnyConnection,
    tagged: whatsnap_events::ContactTagged,
    position: u64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO contact_tags (contact_id, tag, position) VALUES ($1, $2, $3) \
         ON CONFLICT (contact_id, tag) DO NOTHING",
    )
    .bind(tagged.contact_id.to_string())
    .bind(tagged.tag)
    .bind(position as i64)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The stored phone of an erased contact: unique in its location, shown as `[erased]`.
fn erased_phone(contact_id: uuid::Uuid) -> String {
    format!("{} {contact_id}", whatsnap_events::ERASED)
}

async fn contact_row(db: &ReadDb, contact_id: &str) -> sqlx::Result<Option<pb::Contact>> {
    let Some(row) = sqlx::query("SELECT * FROM contacts WHERE contact_id = $1")
        .bind(contact_id)
        .fetch_optional(db)
        .await?
    else {
        return Ok(None);
    };
    let tags = sqlx::query("SELECT tag FROM contact_tags WHERE contact_id = $1 ORDER BY position")
        .bind(contact_id)
        .fetch_all(db)
        .await?
        .iter()
        .map(|r| r.get::<String, _>("tag"))
        .collect();
    Ok(Some(pb::Contact {
        contact_id: row.get("contact_id"),
        location_id: row.get("location_id"),
        phone: match row.get::<String, _>("phone") {
            phone if phone.starts_with(whatsnap_events::ERASED) => whatsnap_events::ERASED.into(),
            phone => phone,
        },
        name: row.get::<Option<String>, _>("name").unwrap_or_default(),
        tags,
    }))
}

/// A tag on a contact, with what the read model knows of the account it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedTag {
    pub tag: String,
    /// The account of the location with this tag, and whether it was removed.
    pub account: Option<(String, bool)>,
}

/// The outbound route rule: of the contact's tags that name a live account of its location,
/// the most recently added wins (`tags` come oldest first). A GHL user switches the route by
/// adding the other account's tag, which then is the most recent.
pub fn choose_route(phone: &str, tags: &[CarriedTag]) -> Result<(String, String, String), String> {
    let live: Vec<_> = tags
        .iter()
        .filter_map(|t| match &t.account {
            Some((account_id, false)) => Some((t.tag.as_str(), account_id.as_str())),
            _ => None,
        })
        .collect();
    let Some((tag, account_id)) = live.last() else {
        let removed: Vec<_> = tags
            .iter()
            .filter(|t| matches!(t.account, Some((_, true))))
            .map(|t| t.tag.as_str())
            .collect();
        return Err(if removed.is_empty() {
            format!(
                "contact {} carries no whatsnap account tag: add the tag of the account to reply from",
                whatsnap_events::mask::phone(phone)
            )
        } else {
            format!(
                "contact {} only carries tags of removed accounts ({}): add the tag of a connected account",
                whatsnap_events::mask::phone(phone),
                removed.join(", ")
            )
        });
    };
    let reason = if live.len() == 1 {
        format!("the contact carries the tag {tag}")
    } else {
        let all: Vec<_> = live.iter().map(|(t, _)| *t).collect();
        format!(
            "the contact carries {}; {tag} was added most recently",
            all.join(", ")
        )
    };
    Ok((account_id.to_string(), tag.to_string(), reason))
}

#[tonic::async_trait]
impl pb::contacts_service_server::ContactsService for Contacts {
    async fn erase_contact(
        &self,
        request: Request<pb::EraseContactRequest>,
    ) -> Result<Response<pb::EraseContactResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let contact_id = match uuid::Uuid::parse_str(request.contact.trim()) {
            Ok(id) => id,
            Err(_) => contact_id_for(&location, &whatsnap_rpc::phone(&request.contact)?),
        };
        let keys = self.keys.as_ref().ok_or_else(|| {
            ServiceError::FailedPrecondition("this process keeps no contact keys".into())
        })?;
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Contact, contact_id);
        let state = Aggregates::new(self.store.as_ref())
            .load::<ContactState>(&stream)
            .await
            .map_err(|e| ServiceError::unloadable(format_args!("contact {contact_id}"), e))?
            .state;
        if !state.exists {
            return Err(ServiceError::NotFound(format!(
                "no contact {contact_id} in location {location}"
            ))
            .into());
        }
        // The key goes first: once it is gone nothing opens the data, whatever happens next.
        // A repeated request appends the event if the first one could not.
        keys.erase(&location, contact_id)
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let requested_by = Some(request.requested_by).filter(|r| !r.is_empty());
        let metadata = EventMetadata::new_correlation().traced(whatsnap_telemetry::current());
        let updated = Aggregates::new(self.store.as_ref())
            .tries(CONFLICT_RETRIES)
            .update(&stream, &metadata, |state: &ContactState| {
                decide_erase(state, contact_id, requested_by.clone())
                    .map(|event| event.into_iter().collect())
                    .map_err(ServiceError::NotFound)
            })
            .await
            .map_err(|e| ServiceError::not_updated(format_args!("contact {contact_id}"), e))?;
        tracing::info!(%location, %contact_id, "contact erased");
        Ok(Response::new(pb::EraseContactResponse {
            contact_id: contact_id.to_string(),
            erased_now: updated.appended > 0,
        }))
    }

    async fn apply_ghl_tags(
        &self,
        request: Request<pb::ApplyGhlTagsRequest>,
    ) -> Result<Response<pb::Contact>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let phone = whatsnap_rpc::phone(&request.phone)?;
        let (contact_id, stream, state) = self.load_contact(&location, &phone).await?;
        if !state.exists {
            return Err(ServiceError::NotFound(format!(
                "no contact with phone {} in location {location}",
                phone.masked()
            ))
            .into());
        }
        let decided = decide_ghl_tags(&state, contact_id, &request.tags);
        let contact = self
            .record(&location, &phone, &stream, state, &decided)
            .await?;
        Ok(Response::new(contact))
    }

    async fn tag_contact(
        &self,
        request: Request<pb::TagContactRequest>,
    ) -> Result<Response<pb::Contact>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let phone = whatsnap_rpc::phone(&request.phone)?;
        let (contact_id, stream, state) = self.load_contact(&location, &phone).await?;
        let decided =
            decide_tag(&state, contact_id, &request.tag, request.remove).map_err(|reason| {
                if state.exists {
                    ServiceError::InvalidArgument(reason)
                } else {
                    ServiceError::NotFound(format!(
                        "no contact with phone {} in location {location}",
                        phone.masked()
                    ))
                }
            })?;
        let decided: Vec<Event> = decided.into_iter().collect();
        let contact = self
            .record(&location, &phone, &stream, state, &decided)
            .await?;
        Ok(Response::new(contact))
    }

    async fn resolve_route(
        &self,
        request: Request<pb::ResolveRouteRequest>,
    ) -> Result<Response<pb::Route>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let phone = whatsnap_rpc::phone(&request.phone)?;
        let contact_id = contact_id_for(&location, &phone).to_string();
        if contact_row(&self.db, &contact_id)
            .await
            .map_err(ServiceError::from)?
            .is_none()
        {
            return Err(ServiceError::NotFound(format!(
                "no contact with phone {} in location {location}",
                phone.masked()
            ))
            .into());
        }
        let tags: Vec<CarriedTag> = sqlx::query(
            "SELECT t.tag, a.account_id, a.removed FROM contact_tags t \
             LEFT JOIN contacts_accounts a ON a.tag = t.tag AND a.location_id = $2 \
             WHERE t.contact_id = $1 ORDER BY t.position",
        )
        .bind(&contact_id)
        .bind(location.to_string())
        .fetch_all(&self.db)
        .await
        .map_err(ServiceError::from)?
        .iter()
        .map(|row| CarriedTag {
            tag: row.get("tag"),
            account: row
                .get::<Option<String>, _>("account_id")
                .map(|id| (id, row.get::<Option<i64>, _>("removed").unwrap_or(0) != 0)),
        })
        .collect();
        let (account_id, tag, reason) =
            choose_route(phone.as_str(), &tags).map_err(ServiceError::FailedPrecondition)?;
        Ok(Response::new(pb::Route {
            contact_id,
            account_id,
            tag,
            reason,
        }))
    }

    async fn get_contact(
        &self,
        request: Request<pb::GetContactRequest>,
    ) -> Result<Response<pb::Contact>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let phone = whatsnap_rpc::phone(&request.phone)?;
        let contact_id = contact_id_for(&location, &phone);
        match contact_row(&self.db, &contact_id.to_string())
            .await
            .map_err(ServiceError::from)?
        {
            Some(contact) => Ok(Response::new(contact)),
            None => Err(ServiceError::NotFound(format!(
                "no contact with phone {} in location {location}",
                phone.masked()
            ))
            .into()),
        }
    }

    async fn list_contacts(
        &self,
        request: Request<pb::ListContactsRequest>,
    ) -> Result<Response<pb::ListContactsResponse>, Status> {
        let request = request.into_inner();
        let location: LocationId = whatsnap_rpc::location(&request.location_id)?;
        let limit = match request.limit {
            0 => 100,
            n => n.min(1000),
        };
        let (condition, patterns) = search::condition(&request.query, 3);
        // Safe to format in: `condition` holds numbered placeholders, never what was typed.
        let sql = format!(
            "SELECT contact_id FROM contacts WHERE location_id = $1{condition} \
             ORDER BY created_position LIMIT $2"
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql)
            .bind(location.to_string())
            .bind(limit as i64);
        for pattern in patterns {
            query = query.bind(pattern);
        }
        let ids: Vec<String> = query
            .fetch_all(&self.db)
            .await
            .map_err(ServiceError::from)?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE location_id = $1")
            .bind(location.to_string())
            .fetch_one(&self.db)
            .await
            .map_err(ServiceError::from)?;
        let mut contacts = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(contact) = contact_row(&self.db, &id)
                .await
                .map_err(ServiceError::from)?
            {
                contacts.push(contact);
            }
        }
        Ok(Response::new(pb::ListContactsResponse {
            contacts,
            total: total as u64,
        }))
    }

    async fn count_tags(
        &self,
        request: Request<pb::CountTagsRequest>,
    ) -> Result<Response<pb::TagCounts>, Status> {
        let location = whatsnap_rpc::location(&request.into_inner().location_id)?;
        let tags = sqlx::query(
            "SELECT t.tag AS tag, COUNT(*) AS contacts FROM contact_tags t \
             JOIN contacts c ON c.contact_id = t.contact_id WHERE c.location_id = $1 \
             GROUP BY t.tag ORDER BY t.tag",
        )
        .bind(location.to_string())
        .fetch_all(&self.db)
        .await
        .map_err(ServiceError::from)?
        .iter()
        .map(|row| pb::TagCount {
            tag: row.get("tag"),
            contacts: row.get::<i64, _>("contacts") as u64,
        })
        .collect();
        let count = |sql: &'static str| {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(location.to_string())
                .fetch_one(&self.db)
        };
        let contacts = count("SELECT COUNT(*) FROM contacts WHERE location_id = $1")
            .await
            .map_err(ServiceError::from)?;
        let untagged = count(
            "SELECT COUNT(*) FROM contacts c WHERE c.location_id = $1 AND NOT EXISTS (\
             SELECT 1 FROM contact_tags t JOIN contacts_accounts a ON a.tag = t.tag \
             WHERE t.contact_id = c.contact_id AND a.location_id = c.location_id \
             AND a.removed = 0)",
        )
        .await
        .map_err(ServiceError::from)?;
        Ok(Response::new(pb::TagCounts {
            tags,
            contacts: contacts as u64,
            untagged: untagged as u64,
        }))
    }
}

/// What a search of the contacts looks for, as SQL.
mod search {
    /// `LIKE` patterns match `%` and `_` as wildcards: a typed one is matched as itself.
    fn literal(text: &str) -> String {
        text.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    }

    /// The `AND …` that finds what `query` asks for, with its patterns, bound from placeholder
    /// `$first` on: mostly digits look in the phone number, otherwise every word must be in the
    /// name (in any case). Nothing for an empty query.
    pub fn condition(query: &str, first: usize) -> (String, Vec<String>) {
        let query = query.trim();
        if query.is_empty() {
            return (String::new(), Vec::new());
        }
        let digits: String = query.chars().filter(char::is_ascii_digit).collect();
        if !digits.is_empty()
            && digits.len() * 2 >= query.chars().filter(|c| !c.is_whitespace()).count()
        {
            return (
                format!(" AND phone LIKE ${first} ESCAPE '\\'"),
                vec![format!("%{digits}%")],
            );
        }
        let words: Vec<String> = query
            .to_lowercase()
            .split_whitespace()
            .map(|word| format!("%{}%", literal(word)))
            .collect();
        let condition = (0..words.len())
            .map(|n| format!(" AND LOWER(name) LIKE ${} ESCAPE '\\'", first + n))
            .collect();
        (condition, words)
    }

    #[cfg(test)]
    mod tests {
        use super::condition;

        #[test]
        fn digits_search_phones_and_words_search_names() {
            assert_eq!(condition("  ", 3), (String::new(), vec![]));
            let (sql, patterns) = condition("+1 (555) 123-4567", 3);
            assert_eq!(sql, " AND phone LIKE $3 ESCAPE '\\'");
            assert_eq!(patterns, ["%15551234567%"]);
            let (sql, patterns) = condition("Ana LIMA", 3);
            assert_eq!(
                sql,
                " AND LOWER(name) LIKE $3 ESCAPE '\\' AND LOWER(name) LIKE $4 ESCAPE '\\'"
            );
            assert_eq!(patterns, ["%ana%", "%lima%"]);
            // A typed wildcard is matched as itself.
            assert_eq!(condition("50%_off", 3).1, ["%50\\%\\_off%"]);
        }
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    fn tag(tag: &str, account: Option<(&str, bool)>) -> CarriedTag {
        CarriedTag {
            tag: tag.into(),
            account: account.map(|(id, removed)| (id.into(), removed)),
        }
    }

    #[test]
    fn the_only_account_tag_routes() {
        let tags = [
            tag("vip", None),
            tag("whatsnap-account-a", Some(("A", false))),
        ];
        let (account, chosen, reason) = choose_route("+1", &tags).unwrap();
        assert_eq!(
            (account.as_str(), chosen.as_str()),
            ("A", "whatsnap-account-a")
        );
        assert_eq!(reason, "the contact carries the tag whatsnap-account-a");
    }

    #[test]
    fn of_several_account_tags_the_most_recent_wins() {
        let tags = [
            tag("whatsnap-account-a", Some(("A", false))),
            tag("whatsnap-account-b", Some(("B", false))),
        ];
        let (account, _, reason) = choose_route("+1", &tags).unwrap();
        assert_eq!(account, "B");
        assert!(
            reason.contains("whatsnap-account-b was added most recently"),
            "{reason}"
        );
    }

    #[test]
    fn removed_accounts_and_plain_tags_do_not_route() {
        let tags = [
            tag("whatsnap-account-b", Some(("B", false))),
            tag("whatsnap-account-a", Some(("A", true))),
        ];
        assert_eq!(choose_route("+1", &tags).unwrap().0, "B");
        let err = choose_route("+1", &[tag("whatsnap-account-a", Some(("A", true)))]).unwrap_err();
        assert!(err.contains("removed accounts"), "{err}");
        let err = choose_route("+1", &[tag("vip", None)]).unwrap_err();
        assert!(err.contains("no whatsnap account tag"), "{err}");
    }
}
