//! Personal data in an immutable log, erasable on request (crypto-shredding).
//!
//! The fields of an event that carry a person's data — a message's body and attachments, a
//! sender's or recipient's number, a contact's name — are sealed before the event is stored,
//! with a key of the contact's own ([`ContactKeys`]). The keys live outside the log, in the
//! `contact_keys` table of the read database, each sealed under the deployment's personal data
//! key (derived from its secret key, see `whatsnap_secrets`).
//! [`SealingStore`] wraps the event store: it seals on append and opens on every read
//! (streams, the whole log, subscriptions), so services, read models, `trace` and replays see
//! the data as before. Erasing a contact destroys its key: from then on every read shows its
//! data as [`ERASED`], and new data for it is stored as [`ERASED`] too.
//!
//! A sealed field is a string `pii1:<key id>:<sealed>`, in the field it replaces, so payloads
//! keep their shape and events written before sealing existed read as they are.

mod fields;
mod keys;
pub mod reseal;
mod store;

pub use keys::{ContactKeys, KeyError, KeyState};
pub use store::SealingStore;

/// What a read shows in place of an erased contact's data.
pub const ERASED: &str = whatsnap_events::ERASED;
