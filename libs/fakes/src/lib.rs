//! Faithful fakes of the outside services whatsnap talks to: GoHighLevel's API v2
//! ([`ghl::FakeGhl`]), Twilio's Programmable Messaging ([`twilio::FakeTwilio`]), an Evolution
//! API v2 server driving WhatsApp links ([`evolution::FakeEvolution`]), Meta's WhatsApp Cloud API
//! ([`cloudapi::FakeCloudApi`]), an Android phone running SMSGate ([`smsgate::FakeSmsGate`]) and
//! a BlueBubbles Server on a Mac ([`bluebubbles::FakeBlueBubbles`]). Each is a real HTTP server
//! on a loopback port, built from the reference material in
//! `shared/reference` (GHL's own OpenAPI documents are embedded from `ghl-openapi/`), that
//! records what it was asked and can send what the real service sends back, signed the same
//! way.
//!
//! End-to-end tests use them through `whatsnap-testkit`; `whatsnap serve --demo` runs them in
//! place of the real services, which is why this crate does not depend on testcontainers.

pub mod bluebubbles;
pub mod cloudapi;
pub mod evolution;
pub mod ghl;
pub mod smsgate;
pub mod twilio;

pub use bluebubbles::{FakeBbDelivery, FakeBbMessage, FakeBlueBubbles};
pub use cloudapi::{
    FakeCloudApi, FakeCloudDelivery, FakeCloudMedia, FakeCloudNumber, FakeCloudSent,
};
pub use evolution::{
    FakeEvolution, FakeEvolutionDelivery, FakeEvolutionIncoming, FakeEvolutionInstance,
    FakeEvolutionSent,
};
pub use ghl::{
    FakeGhl, FakeGhlContact, FakeGhlLimits, FakeGhlMessage, FakeGhlUser, RecordedRequest,
    SchemaViolation, StatusUpdate,
};
pub use smsgate::{FakeSmsGate, FakeSmsGateFault, FakeSmsGateMessage, FakeSmsGateMode};
pub use twilio::{FakeTwilio, FakeTwilioAccount, SentSms};
