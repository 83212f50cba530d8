//! WhatsApp by QR code, embedded: a linked device run in process on the `whatsapp-rust` crate,
//! so `whatsnap serve` links a WhatsApp account with nothing else installed. It sits behind
//! whatsnap's connector seam (`whatsnap-connector`) as the `embedded` engine of WhatsApp accounts:
//!
//! - [`EmbeddedConnector`] is the [`Connector`](whatsnap_connector::Connector) and
//!   [`Session`](whatsnap_connector::Session): a session per account runs the crate's client,
//!   reports what it says as [`ConnectorEvent`](whatsnap_connector::ConnectorEvent)s, and sends
//!   replies (text, and attachments uploaded to WhatsApp's media servers) through it.
//! - [`SealedDeviceStore`] keeps each account's device (keys, Signal sessions, protocol state)
//!   in whatsnap's own read database, SQLite or PostgreSQL, sealed with the deployment's secret
//!   key: a restart or another replica resumes the link without a new scan, and no pod needs a
//!   volume.
//! - [`Translator`] turns the crate's events into whatsnap's; it is pure and tested with the
//!   crate's own event values.
//!
//! Wiring it into a deployment, over the read database the services already share:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn wire(db: sqlx::AnyPool, key: whatsnap_secrets::SecretKey) -> Result<(), whatsnap_whatsapp::StartError> {
//! use whatsnap_whatsapp::{EmbeddedConfig, EmbeddedConnector};
//!
//! // Creates `whatsapp_device_store` when it is missing.
//! let embedded = EmbeddedConnector::new(db, key, EmbeddedConfig::default()).await?;
//! let connectors = whatsnap_connector::Connectors::default().with(Arc::new(embedded));
//! # let _ = connectors;
//! # Ok(())
//! # }
//! ```
//!
//! **Not run against WhatsApp's servers here**: this was written without internet access. The
//! translation of events, the device store (on SQLite and PostgreSQL) and the reply building
//! are tested; linking a phone, sending and receiving are not. Unofficial clients risk the
//! number being banned by WhatsApp.
//!
//! A received photo, video, voice note, document or sticker is downloaded (and decrypted) by
//! the client and handed over as a `data:` URL attachment, which the session service keeps in
//! its media store; one that cannot be had arrives as a note of what came (`[image]`,
//! `[document: menu.pdf]`, …).
//!
//! A sender WhatsApp names by LID (`…@lid`) carries the phone number the server gave beside
//! it, or else the one the client has learned for that LID, so whatsnap can merge the two.
//!
//! What it does not do yet: inbound delivery is at most once
//! (the crate's inbound durability hook needs the seam to acknowledge a recorded message);
//! WhatsApp offers no way to look for a sent message ([`Connector::find_sent`] finds nothing),
//! but a reply sent again reuses its message ids ([`message_id`]). Group chats, status
//! broadcasts, broadcast lists and channels are ignored.
//!
//! [`Connector::find_sent`]: whatsnap_connector::Connector::find_sent
//!
//! Built without the crate's `simd` feature (nightly only) and without `sqlite-storage` (its
//! `libsqlite3-sys` cannot link beside sqlx 0.8's).

mod connector;
mod media;
mod network;
mod outbound;
mod run;
mod store;
mod translate;

pub use connector::{ENGINE, EmbeddedConfig, EmbeddedConnector, SEND, StartError};
pub use media::{MediaKind, file_name};
pub use network::Network;
pub use outbound::{message_id, recipient};
pub use store::{MIGRATIONS, SealedDeviceStore};
pub use translate::{OwnIdentity, Translator};
