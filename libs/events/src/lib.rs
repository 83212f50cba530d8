//! The whatsnap event model.
//!
//! Everything whatsnap knows is an appended event. This crate holds what every service shares
//! about them: the identifiers that name a stream ([`StreamId`], [`LocationId`], [`EventId`]), the
//! envelope an event travels in ([`NewEvent`] before it is stored, [`RecordedEvent`] after), and
//! the typed catalogue of payloads ([`Event`]).
//!
//! # Evolving a payload
//!
//! Every event ever written must still decode. The rule:
//!
//! 1. Adding a field is the normal change. The new field is an `Option` or carries
//!    `#[serde(default)]`, so a payload written before it existed decodes with the default. The
//!    schema version does not change.
//! 2. Unknown fields are ignored (no `deny_unknown_fields`), so an older reader still decodes a
//!    newer payload during a rolling deploy.
//! 3. Removing, renaming or retyping a field is never done in place: the type's schema version is
//!    raised and an upcaster that turns the previous version's JSON into the new shape is added to
//!    [`upcast::UPCASTERS`]. Stored events are never rewritten; they are upcast as they are read.
//! 4. A stored sample of every event type at every schema version lives in
//!    `tests/fixtures/`, and a test decodes each of them with the current code.

mod catalogue;
mod envelope;
mod ids;
mod phone;
pub mod upcast;

pub use catalogue::*;

/// What a read shows in place of the personal data of a contact that was erased.
pub const ERASED: &str = "[erased]";
pub use envelope::{DecodeError, EventMetadata, NewEvent, RecordedEvent, TraceContext};
pub use ids::{AggregateKind, EventId, IdError, LocationId, StreamId};
pub use phone::{
    PhoneError, PhoneNumber, contact_id_for, inbound_message_id_for, outbound_message_id_for,
};
/// Masks for personal data in logs and error texts.
pub use whatsnap_secrets::mask;
