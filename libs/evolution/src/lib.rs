//! WhatsApp by QR code through an Evolution API v2 server (`EvolutionAPI/evolution-api`), for
//! agencies that already run one. An account is one Evolution instance: [`EvolutionClient`]
//! speaks Evolution's REST API, [`webhook`] checks and reads what the instance posts back (QR
//! codes, connection changes, messages, receipts), and [`EvolutionConnector`] puts both behind
//! whatsnap's connector seam (`whatsnap-connector`): the session service runs its
//! [`whatsnap_connector::Session`], the gateway hands it the webhooks.
//!
//! Field names and behaviour follow `shared/reference/connectors.md` §2.2 and §6a, read against
//! Evolution 2.3.6.

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
pub use webhook::{QR_VALIDITY, WebhookAuth, WebhookBody, WebhookError, parse_webhook};
