//! SMS through a person's own Android phone, with SMSGate (`capcom6/android-sms-gateway`)
//! running on it. An account is one phone: [`SmsGateClient`] speaks the gateway's REST API —
//! the app's local server, the public cloud or a private server ([`Mode`]) — [`webhook`]
//! checks and reads what the phone posts (signed with the app's signing key), and
//! [`SmsGateConnector`] puts both behind whatsnap's connector seam (`whatsnap-connector`): the
//! session service runs its [`whatsnap_connector::Session`] (the phone's health), the gateway
//! hands it the webhooks.
//!
//! Wiring it: the deployment builds one [`SmsGateConnector`] from an [`SmsGateConfig`] (the
//! public URL the phone posts to, the patience with a silent phone). Adding an account
//! registers whatsnap's webhooks on the gateway, pointing at
//! `POST /webhooks/smsgate/{location}/{account}` ([`webhook_url`]); removing it deletes them.
//!
//! Field names and behaviour follow `shared/reference/connectors.md` §3.1 and §6a.

pub mod client;
mod connector;
mod session;
pub mod webhook;

pub use client::{
    CLOUD_URL, Credentials, Device, MessageState, SendMessage, SmsGateClient, SmsGateError,
    WEBHOOK_EVENTS, Webhook,
};
pub use connector::{
    BATTERY_ADVICE, ENGINE, Mode, SmsGateConfig, SmsGateConnector, SmsGateSettings, sms_text,
    webhook_id, webhook_url,
};
