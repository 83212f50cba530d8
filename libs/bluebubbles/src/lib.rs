//! iMessage (and SMS through the iPhone's Text Message Forwarding) through the user's own Mac
//! running BlueBubbles Server (`BlueBubblesApp/bluebubbles-server`, connectors.md §4 and §6a).
//! An account is one Mac: [`BlueBubblesClient`] speaks the server's REST API, [`message`] reads
//! what it reports, and [`BlueBubblesConnector`] puts both behind whatsnap's connector seam: the
//! session service runs its [`whatsnap_connector::Session`] (webhook registration, pings,
//! catch-up), the gateway hands it the webhooks.
//!
//! BlueBubbles signs nothing and never retries a webhook. whatsnap therefore registers, on the
//! Mac, a webhook URL `{public}/webhooks/bluebubbles/{location}/{account}?secret=…` with a
//! random secret per account (compared in constant time; any other URL is refused), and after
//! any outage of whatsnap or the Mac queries the messages it missed.
//!
//! The echo of whatsnap's own send (`new-message`, `isFromMe`) carries no `tempGuid` and can
//! arrive before the send's answer: the connector reports it as a message typed on the Mac, and
//! the session service recognises it by the GUID the send returns (waiting while a send of the
//! account is in flight), so it is shown once.

pub mod client;
mod connector;
pub mod message;
mod session;

pub use client::{BlueBubblesClient, BlueBubblesError, ServerInfo, WEBHOOK_EVENTS};
pub use connector::{
    BlueBubblesConfig, BlueBubblesConnector, BlueBubblesSettings, ENGINE, MIN_SERVER_VERSION, SEND,
    webhook_path,
};
