//! WhatsApp by QR code through an Evolution API v2 server (`EvolutionAPI/evolution-api`), for
//! agencies that already run one. An account is one Evolution instance: [`EvolutionClient`]
//! speaks Evolution's REST API, [`webhook`] checks and reads what the instance posts back (QR
//! codes, connection changes, messages, receipts), and [`EvolutionConnector`] puts both behind
//! whatsnap's connector seam (`whatsnap-connector`): the session service runs its
//! [`whatsnap_connector::Session`], the gateway hands it the webhooks.
//!
//! Wiring it: the deployment builds one [`EvolutionConnector`] from an [`EvolutionConfig`]. The
//! gateway routes `POST /webhooks/evolution/{location}/{account_id}` ([`webhook_url`]) to the
//! account, calls [`EvolutionConnector::parse_webhook`] with the request's headers and raw body,
//! answers [`WebhookRefusal::http_status`] on a refusal (nothing recorded) and 200 once the
//! events are recorded. The session service runs [`whatsnap_connector::Session::run`] per
//! account and records what it reports; both streams can say the same thing (a QR code, a
//! connection), so their consumer skips a repeat.
//!
//! Field names and behaviour follow `shared/reference/connectors.md` §2.2 and §6a, read against
//! Evolution 2.3.6.
//!
//! What the Evolution server needs, for the operator's guide:
//! - its global key (`AUTHENTICATION_API_KEY`) in whatsnap's configuration: creating instances
//!   needs it;
//! - a way for whatsnap to trust its webhooks: `AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES=true`
//!   (the instance token then travels in each body's `apikey`; true in Evolution's
//!   `.env.example`, false when unset), or a JWT key in whatsnap's configuration (set on every
//!   instance's webhook as `jwt_key`; Evolution then signs each delivery);
//! - to reach whatsnap's gateway at `<public base>/webhooks/evolution/<location>/<account>`;
//! - `DATABASE_SAVE_DATA_NEW_MESSAGE=true` (its default) for a send whose answer was lost to be
//!   found again instead of sent twice.
//!
//! Evolution retries a webhook that failed (10 attempts over about 25 minutes) and never
//! retries a 400, 401, 403, 404 or 422: the same message can arrive twice, late, and a consumer
//! deduplicates by [`whatsnap_connector::ObservedMessage::provider_message_id`].

pub mod client;
mod connector;
pub mod jwt;
mod session;
pub mod webhook;

pub use client::{
    ConnectAnswer, CreateInstance, CreatedInstance, EvolutionClient, EvolutionError, InstanceInfo,
    LinkState, MediaType, QrCode, SendMedia, SendText, SentMessage, StoredMessage, WebhookConfig,
    WebhookInfo,
};
pub use connector::{
    ENGINE, EvolutionConfig, EvolutionConnector, EvolutionSettings, WebhookRefusal,
    default_instance_name, webhook_url,
};
pub use webhook::{
    QR_VALIDITY, WebhookAuth, WebhookBody, WebhookError, data_url_bytes, parse_webhook,
};
