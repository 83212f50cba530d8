//! The seam between whatsnap and the platforms it connects. Every account kind — WhatsApp by QR
//! (embedded engine or Evolution API), SMS through an Android phone, iMessage through a Mac,
//! Twilio — is a [`Connector`]: it checks an account's settings when the account is added, sends
//! replies, and finds a reply it may already have sent. Kinds that keep a live link to the
//! platform (a linked WhatsApp device) are also a [`Session`], run by the session service's
//! supervisor.
//!
//! What a platform reports — a QR code to scan, a connection opened or lost, a message received
//! or typed on the phone, a receipt — arrives as a [`ConnectorEvent`], in whatsnap's own terms,
//! whether it came from a live session or from a webhook. The session service turns each into
//! the account's and messages' events; nothing past this crate knows which platform spoke.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use whatsnap_events::{AccountKind, Attachment, LocationId};
use whatsnap_secrets::SecretKey;

/// The account a connector acts for, as the session service knows it.
#[derive(Clone)]
pub struct AccountRef {
    pub location: LocationId,
    pub account_id: Uuid,
    pub name: String,
    /// The account's own number in E.164, once known.
    pub phone_number: Option<String>,
    /// The connector's settings, as its [`Connector::check`] returned them (secrets sealed).
    pub settings: serde_json::Value,
    /// Opens the sealed secrets in `settings`.
    pub secret_key: SecretKey,
    /// When the last message whatsnap recorded for the account (received, or typed on its own
    /// device) was created, as the platform dated it: where a live link catches up from after
    /// whatsnap or the device was away, when the platform does not resend what it could not
    /// deliver (BlueBubbles). Looked up where a live link starts; `None` when the account has
    /// recorded no message, or where no link starts (a send, a webhook).
    pub last_message_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for AccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountRef")
            .field("location", &self.location)
            .field("account_id", &self.account_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Who is at the other end of a chat, as the platform names them. WhatsApp may name a sender by
/// a LID (`123456789@lid`) instead of, or beside, the phone number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The phone number in E.164, when the platform gives it.
    pub phone: Option<String>,
    /// WhatsApp's LID, when the platform gives it.
    pub lid: Option<String>,
}

/// A code that links a device: a QR code to scan, or a pairing code to type on the phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkCode {
    Qr { code: String, valid_for: Duration },
    Pairing { code: String, valid_for: Duration },
}

/// Why a connection is not open, in terms a user can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The network dropped or the platform closed the connection; whatsnap reconnects.
    ConnectionLost,
    /// The phone has been offline too long for the linked device to work.
    PhoneOffline,
    /// The platform refuses this client's version.
    ClientOutdated,
    /// No QR code was scanned before the codes ran out, or the platform refused the link.
    Refused,
    /// The number is banned or restricted by the platform.
    Banned,
    /// The device was unlinked (from the phone, or by a logout): a new scan is needed.
    LoggedOut,
    /// The engine whatsnap drives (e.g. an Evolution API server) cannot be reached.
    EngineUnavailable,
    /// whatsnap stopped the connection (the account was removed, or whatsnap is stopping).
    Stopped,
    /// The account's own device (a Mac, an Android phone) does not answer; whatsnap keeps
    /// trying and reconnects when it does.
    DeviceOffline,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionLost => "connection_lost",
            Self::PhoneOffline => "phone_offline",
            Self::ClientOutdated => "client_outdated",
            Self::Refused => "refused",
            Self::Banned => "banned",
            Self::LoggedOut => "logged_out",
            Self::EngineUnavailable => "engine_unavailable",
            Self::Stopped => "stopped",
            Self::DeviceOffline => "device_offline",
        }
    }

    /// Whether whatsnap should try to connect again by itself; otherwise a user acts first.
    pub fn reconnects(self) -> bool {
        matches!(
            self,
            Self::ConnectionLost
                | Self::PhoneOffline
                | Self::EngineUnavailable
                | Self::DeviceOffline
        )
    }

    /// What a user should do about it.
    pub fn advice(self) -> &'static str {
        match self {
            Self::ConnectionLost => "whatsnap reconnects by itself",
            Self::PhoneOffline => "keep the phone on, online and its app running",
            Self::ClientOutdated => "update whatsnap: WhatsApp refuses this client's version",
            Self::Refused => "run `whatsnap accounts connect` again and scan the QR code in time",
            Self::Banned => {
                "the number is banned or restricted by WhatsApp; contact WhatsApp support"
            }
            Self::LoggedOut => {
                "the device was unlinked; run `whatsnap accounts connect` and scan again"
            }
            Self::EngineUnavailable => "check that the WhatsApp engine is running and reachable",
            Self::Stopped => "nothing: whatsnap stopped the connection",
            Self::DeviceOffline => {
                "check that the device is on, awake and online, and its app (BlueBubbles \
                 Server, SMSGate) running; whatsnap reconnects when it answers"
            }
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message the platform reported in a chat of the account: received from the peer, or typed
/// on the account's own phone (`from_me`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedMessage {
    /// The platform's id of the message: what makes a redelivery recognisable.
    pub provider_message_id: String,
    /// The other side of the chat.
    pub peer: Peer,
    /// Typed on the account's own phone (or sent by another linked device), not received.
    pub from_me: bool,
    /// The sender's name as the platform shows it (WhatsApp's push name).
    pub sender_name: Option<String>,
    pub body: String,
    pub attachments: Vec<Attachment>,
    pub sent_at: DateTime<Utc>,
}

/// How far a message whatsnap sent has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Receipt {
    /// The platform's server took it.
    Sent,
    Delivered,
    Read,
    Failed {
        reason: String,
        code: Option<String>,
    },
}

/// What a platform reported about an account, in whatsnap's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectorEvent {
    /// A code to link the device was issued (each rotation is another one).
    Linking(LinkCode),
    /// The link is open.
    Connected {
        phone_number: Option<String>,
        display_name: Option<String>,
    },
    /// The link is closed.
    Disconnected {
        reason: DisconnectReason,
        detail: String,
    },
    Message(ObservedMessage),
    Receipt {
        provider_message_id: String,
        receipt: Receipt,
    },
    /// The link is up, but what it was given to send does not leave (`delivering` false), or
    /// leaves again: a phone whose battery saver holds back its SMS app, say. Only a connected
    /// account is flagged; `detail` says what was seen and what to do.
    Delivery {
        delivering: bool,
        detail: String,
    },
}

/// How fast an account sends: unofficial WhatsApp clients that send fast, regularly spaced
/// messages are what WhatsApp bans first, so replies from one number leave at least `interval`
/// apart plus a random part of `jitter`, each after showing "typing…" for `typing` where the
/// platform has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pacing {
    #[serde(with = "millis")]
    pub interval: Duration,
    #[serde(with = "millis")]
    pub jitter: Duration,
    #[serde(with = "millis")]
    pub typing: Duration,
}

impl Pacing {
    /// The default of WhatsApp accounts linked by QR: at least 3 s between replies from one
    /// number, plus up to 4 s at random, each after 2 s of "typing…".
    pub const WHATSAPP: Pacing = Pacing {
        interval: Duration::from_secs(3),
        jitter: Duration::from_secs(4),
        typing: Duration::from_secs(2),
    };

    /// The pause after a send: the interval and a random part of the jitter.
    pub fn pause(&self, random: f64) -> Duration {
        self.interval + self.jitter.mul_f64(random.clamp(0.0, 1.0))
    }
}

impl fmt::Display for Pacing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.1} s apart (+ up to {:.1} s), typing {:.1} s",
            self.interval.as_secs_f64(),
            self.jitter.as_secs_f64(),
            self.typing.as_secs_f64()
        )
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// A reply to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// whatsnap's id of the message.
    pub message_id: Uuid,
    /// The recipient in E.164.
    pub to: String,
    pub body: String,
    pub attachments: Vec<Attachment>,
    /// How long to show "typing…" to the recipient before the message, where the platform
    /// has it; zero: send at once.
    pub typing: Duration,
}

/// The provider took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub provider_message_id: String,
}

/// Why a send did not happen, as the outbox needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The provider answered and refused it: sending it again will not help.
    #[error("{reason}")]
    Refused {
        reason: String,
        code: Option<String>,
    },
    /// The provider asked whatsnap to slow down; nothing was sent.
    #[error("{0}")]
    RateLimited(String),
    /// The provider could not be reached; nothing was sent.
    #[error("{0}")]
    NotConnected(String),
    /// The call failed in a way that may come after the provider took the message (a timeout,
    /// a 5xx): look for it before sending again.
    #[error("{0}")]
    Unknown(String),
}

impl SendError {
    /// Whether the provider certainly did not take the message.
    pub fn certainly_unsent(&self) -> bool {
        !matches!(self, Self::Unknown(_))
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Refused { .. })
    }

    /// The provider's error code, when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// Why a connector refused an account's settings or an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// The settings are wrong in a way the user can fix (a bad key, a missing field).
    #[error("{0}")]
    Invalid(String),
    /// The platform said no (wrong credentials, a number the account does not own).
    #[error("{0}")]
    Refused(String),
    /// The platform or engine could not be reached; try again later.
    #[error("{0}")]
    Unavailable(String),
}

/// An account kind, as whatsnap drives it.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The platform the accounts of this connector are on.
    fn platform(&self) -> AccountKind;

    /// The engine's name in events, settings and the CLI, e.g. `twilio`, `evolution`,
    /// `embedded`.
    fn engine(&self) -> &'static str;

    /// The name of a send in the log and in fail point names, e.g. `twilio.send`.
    fn send_operation(&self) -> &'static str;

    /// Checks what a user gave to add an account (credentials, a number, an instance) with the
    /// platform, and returns the settings to store with the account, secrets sealed with
    /// `secret_key`.
    async fn check(
        &self,
        account: &NewAccount,
        settings: serde_json::Value,
        secret_key: &SecretKey,
    ) -> Result<serde_json::Value, ConnectorError>;

    /// Sends one reply, once: retries are the outbox's, after [`Connector::find_sent`].
    async fn send(&self, account: &AccountRef, outgoing: &Outgoing) -> Result<Sent, SendError>;

    /// Looks for `outgoing` among what the account sent since `since`: a send whose answer was
    /// lost. `None` when the provider has no trace of it, or offers no way to look.
    async fn find_sent(
        &self,
        account: &AccountRef,
        outgoing: &Outgoing,
        since: DateTime<Utc>,
    ) -> Result<Option<Sent>, SendError> {
        let _ = (account, outgoing, since);
        Ok(None)
    }

    /// How fast an account of this kind sends when its own pacing is not set.
    fn default_pacing(&self) -> Pacing {
        Pacing::default()
    }

    /// The live link of this kind, when it keeps one.
    fn session(&self) -> Option<&dyn Session> {
        None
    }

    /// Checks a webhook the platform (or the engine) sent for `account` — its signature or key
    /// — and reads what it reports. Kinds without webhooks refuse every one.
    fn webhook(
        &self,
        account: &AccountRef,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<ConnectorEvent>, WebhookError> {
        let _ = (account, request);
        Err(WebhookError::NotExpected(format!(
            "{} accounts receive no webhooks here",
            self.engine()
        )))
    }

    /// Answers a platform's check of the account's webhook URL — a `GET` carrying a challenge
    /// in its query, as Meta's `hub.challenge` — with the text to send back. Kinds without such
    /// a check refuse every one.
    fn verify_webhook(
        &self,
        account: &AccountRef,
        request: &WebhookRequest<'_>,
    ) -> Result<String, WebhookError> {
        let _ = (account, request);
        Err(WebhookError::NotExpected(format!(
            "{} accounts have no webhook check",
            self.engine()
        )))
    }

    /// What an account reports as soon as its settings pass [`Connector::check`], before any
    /// webhook or session: a platform reached through an API alone (no device, no link to
    /// open) is `Connected` at once.
    fn added(&self, account: &AccountRef) -> Vec<ConnectorEvent> {
        let _ = account;
        Vec::new()
    }

    /// A file a message carries that the platform serves only to the account (behind its
    /// credentials, as a Cloud API media id): fetched, as a `data:` URL the session service
    /// keeps in its media store. Any other attachment is given back as it is. `Unavailable`
    /// when the platform cannot be reached now (the webhook is answered so that it comes
    /// again); `Refused` or `Invalid` when it will never be fetched (the message is recorded
    /// without it, with a note).
    async fn fetch_attachment(
        &self,
        account: &AccountRef,
        attachment: &Attachment,
    ) -> Result<Attachment, ConnectorError> {
        let _ = account;
        Ok(attachment.clone())
    }

    /// How a user pairs the account's device (an Android phone, a Mac) with whatsnap, when the
    /// kind has a device: the steps to follow, and what to type into its app where whatsnap
    /// cannot set it there itself. An account with a pairing is linked as soon as it is added:
    /// its [`Session`] waits for the device and reports it `Connected` once it is seen.
    fn pairing(&self, account: &AccountRef) -> Option<Pairing> {
        let _ = account;
        None
    }
}

/// A webhook as whatsnap received it for an account.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    pub headers: &'a http::HeaderMap,
    /// The URL's query string, without the `?`: some platforms carry a challenge or a secret
    /// there.
    pub query: &'a str,
    pub body: &'a [u8],
}

impl<'a> WebhookRequest<'a> {
    /// A `POST` with these headers and body, and no query.
    pub fn new(headers: &'a http::HeaderMap, body: &'a [u8]) -> Self {
        Self {
            headers,
            query: "",
            body,
        }
    }

    /// The query's value of `name`, percent-decoded.
    pub fn query_value(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }
}

/// How a user pairs a device account: what [`Connector::pairing`] returns.
#[derive(Clone, PartialEq, Eq)]
pub struct Pairing {
    /// What to do, in order, on the device and in its app.
    pub steps: Vec<String>,
    /// The URL the device's app must send its webhooks to, when the user enters it by hand.
    pub webhook_url: Option<String>,
    /// The secret to enter with it (a signing key), when there is one.
    pub secret: Option<String>,
}

impl fmt::Debug for Pairing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pairing")
            .field("steps", &self.steps.len())
            .field("webhook_url", &self.webhook_url.is_some())
            .field("secret", &self.secret.as_ref().map(|_| "•••"))
            .finish()
    }
}

/// Why a webhook was refused; nothing it carried is recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Not signed, or not with this account's key.
    #[error("{0}")]
    Unauthenticated(String),
    /// Not a payload this engine sends.
    #[error("{0}")]
    Malformed(String),
    /// For another account or instance.
    #[error("{0}")]
    WrongAccount(String),
    /// This engine sends no webhooks to this route.
    #[error("{0}")]
    NotExpected(String),
    /// whatsnap cannot read the account's own settings (a changed secret key?): the engine
    /// should deliver it again.
    #[error("{0}")]
    Unreadable(String),
}

/// What a user gave to add an account, before it exists.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub location: LocationId,
    pub account_id: Uuid,
    pub name: String,
    pub phone_number: Option<String>,
}

/// How a session asks to be linked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LinkMethod {
    /// Show QR codes to scan.
    #[default]
    Qr,
    /// Show a pairing code to type on the phone with this number (E.164).
    PairingCode { phone_number: String },
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub reason: DisconnectReason,
    pub detail: String,
}

/// A connector that keeps a live link per account (a linked WhatsApp device).
#[async_trait]
pub trait Session: Send + Sync {
    /// Runs the account's link until it ends or `stop` is cancelled: connects (asking for a QR
    /// scan or a pairing code with `method` when the device is not linked yet), and reports
    /// everything that happens on `events`, in order. Returns why it ended; the supervisor
    /// decides whether to run it again.
    async fn run(
        &self,
        account: &AccountRef,
        method: LinkMethod,
        events: mpsc::Sender<ConnectorEvent>,
        stop: CancellationToken,
    ) -> Ended;

    /// Unlinks the device (the account is removed, or a user asked to log out).
    async fn logout(&self, account: &AccountRef) -> Result<(), ConnectorError>;
}

/// Every connector this deployment runs, by engine, and the engine each platform uses when an
/// account is added without naming one.
#[derive(Clone, Default)]
pub struct Connectors {
    by_engine: BTreeMap<&'static str, Arc<dyn Connector>>,
    defaults: BTreeMap<&'static str, &'static str>,
}

impl std::fmt::Debug for Connectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connectors")
            .field("engines", &self.by_engine.keys().collect::<Vec<_>>())
            .field("defaults", &self.defaults)
            .finish()
    }
}

impl Connectors {
    /// Adds `connector`; the first connector of a platform is its default engine.
    pub fn with(mut self, connector: Arc<dyn Connector>) -> Self {
        let platform = connector.platform().as_str();
        self.defaults.entry(platform).or_insert(connector.engine());
        self.by_engine.insert(connector.engine(), connector);
        self
    }

    /// Makes `engine` the default of its platform.
    pub fn default_engine(mut self, engine: &str) -> Result<Self, String> {
        let connector = self.by_engine.get(engine).ok_or_else(|| {
            format!(
                "no engine {engine:?}: this deployment runs {}",
                self.names()
            )
        })?;
        self.defaults
            .insert(connector.platform().as_str(), connector.engine());
        Ok(self)
    }

    fn names(&self) -> String {
        self.by_engine
            .keys()
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The connector that adds an account of `kind`, by the engine asked for or the platform's
    /// default.
    pub fn for_new(
        &self,
        kind: AccountKind,
        engine: &str,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        let engine = match engine.trim() {
            "" => self.defaults.get(kind.as_str()).copied().ok_or_else(|| {
                ConnectorError::Refused(format!(
                    "this deployment connects no {} accounts",
                    kind.as_str()
                ))
            })?,
            named => named,
        };
        match self.by_engine.get(engine) {
            Some(connector) if connector.platform() == kind => Ok(connector.clone()),
            Some(connector) => Err(ConnectorError::Invalid(format!(
                "the engine {engine} connects {} accounts, not {}",
                connector.platform().as_str(),
                kind.as_str()
            ))),
            None => Err(ConnectorError::Invalid(format!(
                "no engine {engine:?}: this deployment runs {}",
                self.names()
            ))),
        }
    }

    /// The connector that drives an existing account of `kind`: the engine it was added with,
    /// or (accounts added before engines were recorded) the platform's default.
    pub fn for_account(
        &self,
        kind: AccountKind,
        engine: Option<&str>,
    ) -> Option<Arc<dyn Connector>> {
        let engine = match engine {
            Some(engine) => engine,
            None => self.defaults.get(kind.as_str())?,
        };
        self.by_engine.get(engine).cloned()
    }

    /// Every connector that keeps a live link per account.
    pub fn sessions(&self) -> impl Iterator<Item = &Arc<dyn Connector>> {
        self.by_engine.values().filter(|c| c.session().is_some())
    }
}
