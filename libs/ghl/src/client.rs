//! The GHL API v2 calls whatsnap makes for a location (`ghl-api.md` §2–§4): find and upsert the
//! contact behind a phone number, assign and tag it, read the location's users, post the
//! messages a contact sent, and report what became of the messages GHL asked us to deliver.
//!
//! Every location call waits its turn at the [`RateLimiter`] and tells it what GHL's
//! `X-RateLimit-*` headers and 429s said. Inside a call, 429s, 5xx, timeouts and connection
//! failures are retried with full-jitter exponential backoff ([`RetryPolicy`]); anything else
//! GHL refuses is returned at once as a [`GhlError`] the caller can act on. Tokens, phone
//! numbers and message texts never reach the logs. The OAuth calls are in [`crate::oauth`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng as _;
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, warn};
use url::Url;
use whatsnap_events::LocationId;

pub use crate::oauth::{TokenGrant, UserType};
use crate::ratelimit::{Exhausted, Observed, RateLimiter};

/// GHL's API (`ghl-api.md` §1).
pub const DEFAULT_API_BASE: &str = "https://services.leadconnectorhq.com";
/// GHL's marketplace, where a user installs the app on a location (`ghl-api.md` §5.1).
pub const DEFAULT_MARKETPLACE_BASE: &str = "https://marketplace.gohighlevel.com";
/// What a conversation provider needs (`ghl-api.md` §2.1).
pub const DEFAULT_SCOPES: &[&str] = &[
    "conversations/message.write",
    "conversations/message.readonly",
    "conversations.readonly",
    "conversations.write",
    "contacts.readonly",
    "contacts.write",
    "users.readonly",
    "oauth.readonly",
    "oauth.write",
];

/// How many users one `/users/search` page asks for: GHL's documented default, since the
/// maximum it accepts is not documented.
const USERS_PAGE: usize = 25;

/// Where GHL is and who we are to it.
#[derive(Clone)]
pub struct GhlConfig {
    /// [`DEFAULT_API_BASE`] in production.
    pub api_base: String,
    /// [`DEFAULT_MARKETPLACE_BASE`] in production; the authorize page is
    /// `<base>/v2/oauth/chooselocation`.
    pub marketplace_base: String,
    pub client_id: Option<String>,
    /// Plain here; never shown by `Debug`.
    pub client_secret: Option<String>,
    pub redirect_uri: Option<String>,
    /// Requested at authorization, space separated ([`DEFAULT_SCOPES`] by default).
    pub scopes: Vec<String>,
    /// For one HTTP exchange, retries not included.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for GhlConfig {
    fn default() -> Self {
        Self {
            api_base: DEFAULT_API_BASE.to_owned(),
            marketplace_base: DEFAULT_MARKETPLACE_BASE.to_owned(),
            client_id: None,
            client_secret: None,
            redirect_uri: None,
            scopes: DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            request_timeout: Duration::from_secs(15),
            retry: RetryPolicy::default(),
        }
    }
}

impl fmt::Debug for GhlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GhlConfig")
            .field("api_base", &self.api_base)
            .field("marketplace_base", &self.marketplace_base)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "********"),
            )
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

/// In-call retries of 429s, 5xx, timeouts and connection failures: at most `attempts` tries in
/// all, the n-th retry after a random delay between zero and `base_delay * 2^(n-1)` (at most
/// `max_delay`), "full jitter", so that clients that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    /// Also the longest `Retry-After` waited out inside a call; a longer one is returned to the
    /// caller as [`GhlError::RateLimited`].
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The delay before the `retry`-th retry (1-based).
    pub fn backoff(&self, retry: u32) -> Duration {
        let exponential = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let ceiling = exponential.min(self.max_delay);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// What went wrong with a GHL call, sorted by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GhlError {
    /// 401: the token is expired or revoked; refresh it and try again.
    #[error("ghl refused the token: {message}")]
    Unauthorized { message: String },
    /// 403, other than GHL not yet knowing a message whose status we report.
    #[error("ghl forbids this request: {message}")]
    Forbidden { message: String },
    /// 429 still after the in-call retries, or the location's own budget is used up.
    #[error("ghl is rate limiting this location (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx still after the in-call retries.
    #[error("ghl failed with {status}: {message}")]
    Server { status: u16, message: String },
    /// Any other 4xx: GHL will not do this as asked.
    #[error("ghl refused the request with {status}: {message}")]
    Refused { status: u16, message: String },
    /// GHL could not be reached or did not answer in time, after the in-call retries.
    #[error("ghl is unavailable: {0}")]
    Unavailable(String),
    /// GHL said yes with a body that is not what its reference describes.
    #[error("unexpected answer from ghl: {0}")]
    Protocol(String),
    /// The call needs configuration whatsnap does not have (OAuth client id or secret).
    #[error("ghl is not configured: {0}")]
    NotConfigured(String),
}

impl GhlError {
    /// Whether the same call may succeed later as it is (a 401 needs a new token first).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Server { .. } | Self::Unavailable(_)
        )
    }

    /// Whether the request certainly changed nothing at GHL: refused, rate limited, or never
    /// connected. A 5xx or a timeout may have been acted on before it failed.
    pub fn certainly_unsent(&self) -> bool {
        match self {
            Self::Unauthorized { .. }
            | Self::Forbidden { .. }
            | Self::RateLimited { .. }
            | Self::Refused { .. }
            | Self::NotConfigured(_) => true,
            Self::Unavailable(reason) => reason.starts_with(NOT_CONNECTED),
            Self::Server { .. } | Self::Protocol(_) => false,
        }
    }

    /// The HTTP status GHL answered with, where it answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized { .. } => Some(401),
            Self::Forbidden { .. } => Some(403),
            Self::RateLimited { .. } => Some(429),
            Self::Server { status, .. } | Self::Refused { status, .. } => Some(*status),
            Self::Unavailable(_) | Self::Protocol(_) | Self::NotConfigured(_) => None,
        }
    }
}

/// A GHL contact, as much of it as whatsnap uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GhlContact {
    pub id: String,
    pub location_id: Option<String>,
    pub phone: Option<String>,
    pub name: Option<String>,
    pub tags: Vec<String>,
    /// The GHL user who owns the contact.
    pub assigned_to: Option<String>,
    /// Where GHL says the contact came from, e.g. `Google Ads Campaign`.
    pub source: Option<String>,
    /// When the contact was added to GHL.
    pub date_added: Option<DateTime<Utc>>,
}

/// A contact to create or update by phone number (`POST /contacts/upsert`). `tags` replace all
/// of an existing contact's tags: leave it empty and use [`GhlClient::add_tags`] to add some.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactUpsert {
    /// E.164.
    pub phone: String,
    pub name: Option<String>,
    pub tags: Vec<String>,
    pub assigned_to: Option<String>,
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsertedContact {
    pub contact: GhlContact,
    /// GHL created the contact, rather than updating one it had.
    pub created: bool,
}

/// Changes to a contact (`PUT /contacts/{id}`); `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactUpdate {
    pub name: Option<String>,
    pub assigned_to: Option<String>,
}

/// A user of a location's agency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GhlUser {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    /// `admin` or `user`.
    pub role: Option<String>,
    pub deleted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageDirection {
    /// The contact wrote it.
    #[default]
    Inbound,
    /// The account wrote it outside GHL (typed on the phone): logged, not delivered again
    /// (`ghl-api.md` §2.5).
    Outbound,
}

/// A message to add to the contact's conversation (`POST /conversations/messages/inbound`),
/// always as `type: "SMS"`, the default SMS provider's channel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InboundMessage {
    pub contact_id: String,
    /// Required by GHL for an additional ("custom") provider; optional for the default one.
    pub conversation_provider_id: Option<String>,
    pub message: String,
    /// URLs.
    pub attachments: Vec<String>,
    /// Our id of the message; GHL echoes it as `replyToAltId` on replies.
    pub alt_id: String,
    /// Always sent: GHL's default is outbound.
    pub direction: MessageDirection,
    pub date: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedMessage {
    pub conversation_id: String,
    pub message_id: String,
}

/// A message of a conversation as GHL lists it (`GetMessageResponseDto`), as much as whatsnap
/// uses to recognise its own.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedMessage {
    pub id: String,
    pub body: Option<String>,
    pub direction: Option<String>,
    pub date_added: Option<String>,
    /// Not in GHL's schema for SMS messages; used where GHL returns it.
    pub alt_id: Option<String>,
}

/// One page of a conversation's messages; `next` is the `lastMessageId` of the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePage {
    pub messages: Vec<ListedMessage>,
    pub next: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Delivered,
    Failed,
    Pending,
    Read,
}

/// What became of a message GHL asked us to deliver (`PUT /conversations/messages/{id}/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub status: DeliveryStatus,
    pub error: Option<StatusError>,
}

/// Why a message failed, as GHL shows it to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusError {
    pub code: String,
    pub message: String,
}

/// The GHL API v2 client. Cheap to clone: clones share the HTTP connections and the limiter.
#[derive(Clone, Debug)]
pub struct GhlClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: GhlConfig,
    http: reqwest::Client,
    limiter: Arc<RateLimiter>,
}

impl GhlClient {
    pub fn new(config: GhlConfig, limiter: Arc<RateLimiter>) -> Self {
        // reqwest is built without a default TLS provider; whatsnap uses ring throughout.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .user_agent(concat!("whatsnap/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client builds once a TLS provider is installed");
        Self {
            inner: Arc::new(Inner {
                config,
                http,
                limiter,
            }),
        }
    }

    pub fn config(&self) -> &GhlConfig {
        &self.inner.config
    }

    /// The per-location pacing every call goes through.
    pub fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    /// The contact GHL holds for a phone number, if any (`GET /contacts/search/duplicate`).
    #[tracing::instrument(skip_all, fields(location_id = %location))]
    pub async fn find_contact_by_phone(
        &self,
        location: &LocationId,
        token: &str,
        phone_e164: &str,
    ) -> Result<Option<GhlContact>, GhlError> {
        #[derive(Deserialize)]
        struct Found {
            #[serde(default)]
            contact: Option<RawContact>,
        }
        let found: Found = self
            .send_json(
                Call::new(
                    "find contact",
                    Api::Contacts,
                    Method::GET,
                    &["contacts", "search", "duplicate"],
                )
                .location(location, token)
                .query(&[("locationId", location.as_str()), ("number", phone_e164)]),
            )
            .await?;
        found.contact.map(RawContact::into_contact).transpose()
    }

    /// Creates the contact with this phone number, or updates the one GHL matches to it
    /// (`POST /contacts/upsert`).
    #[tracing::instrument(skip_all, fields(location_id = %location))]
    pub async fn upsert_contact(
        &self,
        location: &LocationId,
        token: &str,
        contact: &ContactUpsert,
    ) -> Result<UpsertedContact, GhlError> {
        let (first_name, last_name) = split_name(contact.name.as_deref());
        let body = UpsertBody {
            location_id: location.as_str(),
            phone: &contact.phone,
            name: contact.name.as_deref(),
            first_name,
            last_name,
            tags: &contact.tags,
            assigned_to: contact.assigned_to.as_deref(),
            source: contact.source.as_deref(),
        };
        #[derive(Deserialize)]
        struct Upserted {
            #[serde(default)]
            new: bool,
            contact: Option<RawContact>,
        }
        let upserted: Upserted = self
            .send_json(
                Call::new(
                    "upsert contact",
                    Api::Contacts,
                    Method::POST,
                    &["contacts", "upsert"],
                )
                .location(location, token)
                .json(&body)?,
            )
            .await?;
        let contact = upserted
            .contact
            .ok_or_else(|| GhlError::Protocol("the upserted contact is missing".into()))?
            .into_contact()?;
        Ok(UpsertedContact {
            contact,
            created: upserted.new,
        })
    }

    /// Renames a contact or gives it an owner (`PUT /contacts/{id}`).
    #[tracing::instrument(skip_all, fields(location_id = %location, contact_id))]
    pub async fn update_contact(
        &self,
        location: &LocationId,
        token: &str,
        contact_id: &str,
        update: &ContactUpdate,
    ) -> Result<GhlContact, GhlError> {
        tracing::Span::current().record("contact_id", contact_id);
        let (first_name, last_name) = split_name(update.name.as_deref());
        let body = UpdateBody {
            name: update.name.as_deref(),
            first_name,
            last_name,
            assigned_to: update.assigned_to.as_deref(),
        };
        #[derive(Deserialize)]
        struct Updated {
            #[serde(default)]
            contact: Option<RawContact>,
        }
        let updated: Updated = self
            .send_json(
                Call::new(
                    "update contact",
                    Api::Contacts,
                    Method::PUT,
                    &["contacts", contact_id],
                )
                .location(location, token)
                .json(&body)?,
            )
            .await?;
        updated
            .contact
            .ok_or_else(|| GhlError::Protocol("the updated contact is missing".into()))?
            .into_contact()
    }

    /// Adds tags to a contact, keeping the others; returns the tags GHL reports.
    #[tracing::instrument(skip_all, fields(location_id = %location, contact_id))]
    pub async fn add_tags(
        &self,
        location: &LocationId,
        token: &str,
        contact_id: &str,
        tags: &[String],
    ) -> Result<Vec<String>, GhlError> {
        tracing::Span::current().record("contact_id", contact_id);
        self.tags(location, token, contact_id, tags, Method::POST, "add tags")
            .await
    }

    /// Removes tags from a contact (`DELETE` with a JSON body); returns the tags GHL reports.
    #[tracing::instrument(skip_all, fields(location_id = %location, contact_id))]
    pub async fn remove_tags(
        &self,
        location: &LocationId,
        token: &str,
        contact_id: &str,
        tags: &[String],
    ) -> Result<Vec<String>, GhlError> {
        tracing::Span::current().record("contact_id", contact_id);
        self.tags(
            location,
            token,
            contact_id,
            tags,
            Method::DELETE,
            "remove tags",
        )
        .await
    }

    async fn tags(
        &self,
        location: &LocationId,
        token: &str,
        contact_id: &str,
        tags: &[String],
        method: Method,
        operation: &'static str,
    ) -> Result<Vec<String>, GhlError> {
        #[derive(Serialize)]
        struct Tags<'a> {
            tags: &'a [String],
        }
        #[derive(Deserialize)]
        struct Answer {
            tags: Option<Vec<String>>,
        }
        let answer: Answer = self
            .send_json(
                Call::new(
                    operation,
                    Api::Contacts,
                    method,
                    &["contacts", contact_id, "tags"],
                )
                .location(location, token)
                .json(&Tags { tags })?,
            )
            .await?;
        answer
            .tags
            .ok_or_else(|| GhlError::Protocol("the answer has no tags".into()))
    }

    /// All users of the location (`GET /users/search`), page after page.
    #[tracing::instrument(skip_all, fields(location_id = %location))]
    pub async fn search_users(
        &self,
        location: &LocationId,
        token: &str,
        company_id: &str,
    ) -> Result<Vec<GhlUser>, GhlError> {
        #[derive(Deserialize)]
        struct Page {
            users: Option<Vec<RawUser>>,
            #[serde(default, deserialize_with = "number")]
            count: Option<u64>,
        }
        let limit = USERS_PAGE.to_string();
        let mut users = Vec::new();
        loop {
            let skip = users.len().to_string();
            let page: Page = self
                .send_json(
                    Call::new(
                        "search users",
                        Api::Users,
                        Method::GET,
                        &["users", "search"],
                    )
                    .location(location, token)
                    .query(&[
                        ("companyId", company_id),
                        ("locationId", location.as_str()),
                        ("skip", &skip),
                        ("limit", &limit),
                    ]),
                )
                .await?;
            let page_users = page
                .users
                .ok_or_else(|| GhlError::Protocol("the answer has no users".into()))?;
            let read = page_users.len();
            for user in page_users {
                users.push(user.into_user()?);
            }
            let more = match page.count {
                Some(count) => (users.len() as u64) < count,
                None => read >= USERS_PAGE,
            };
            if read == 0 || !more {
                return Ok(users);
            }
        }
    }

    /// Adds a message to the contact's conversation (`POST /conversations/messages/inbound`).
    /// A 2xx without a `messageId` means GHL dropped the message (ISS#70): an error.
    #[tracing::instrument(skip_all, fields(location_id = %location, contact_id = %message.contact_id))]
    pub async fn add_inbound_message(
        &self,
        location: &LocationId,
        token: &str,
        message: &InboundMessage,
    ) -> Result<PostedMessage, GhlError> {
        let body = InboundBody {
            kind: "SMS",
            contact_id: &message.contact_id,
            conversation_provider_id: message.conversation_provider_id.as_deref(),
            message: &message.message,
            attachments: &message.attachments,
            alt_id: &message.alt_id,
            direction: message.direction,
            date: message
                .date
                .map(|date| date.to_rfc3339_opts(SecondsFormat::Millis, true)),
        };
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Posted {
            success: Option<bool>,
            conversation_id: Option<String>,
            message_id: Option<String>,
        }
        let raw = self
            .send(
                Call::new(
                    "add inbound message",
                    Api::Conversations,
                    Method::POST,
                    &["conversations", "messages", "inbound"],
                )
                .location(location, token)
                .once()
                .json(&body)?,
            )
            .await?;
        let dropped = || {
            GhlError::Protocol(
                "ghl accepted the message without a messageId, so it was not added \
                 (is the conversation provider id right?)"
                    .into(),
            )
        };
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Err(dropped());
        }
        let posted: Posted = parse(&raw)?;
        if posted.success == Some(false) {
            return Err(GhlError::Protocol(
                "ghl answered success: false to the message".into(),
            ));
        }
        let message_id = posted
            .message_id
            .filter(|id| !id.is_empty())
            .ok_or_else(dropped)?;
        let conversation_id = posted
            .conversation_id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| GhlError::Protocol("the posted message has no conversationId".into()))?;
        Ok(PostedMessage {
            conversation_id,
            message_id,
        })
    }

    /// The ids of the contact's conversations (`GET /conversations/search?contactId=`).
    #[tracing::instrument(skip_all, fields(location_id = %location))]
    pub async fn search_conversations(
        &self,
        location: &LocationId,
        token: &str,
        contact_id: &str,
    ) -> Result<Vec<String>, GhlError> {
        #[derive(Deserialize)]
        struct Found {
            conversations: Vec<Conversation>,
        }
        #[derive(Deserialize)]
        struct Conversation {
            id: String,
        }
        let found: Found = self
            .send_json(
                Call::new(
                    "search conversations",
                    Api::Conversations,
                    Method::GET,
                    &["conversations", "search"],
                )
                .location(location, token)
                .query(&[
                    ("locationId", location.as_str()),
                    ("contactId", contact_id),
                    ("limit", "100"),
                ]),
            )
            .await?;
        Ok(found.conversations.into_iter().map(|c| c.id).collect())
    }

    /// One page of a conversation's messages, newest first, after `last_message_id`
    /// (`GET /conversations/{id}/messages`).
    #[tracing::instrument(skip_all, fields(location_id = %location))]
    pub async fn conversation_messages(
        &self,
        location: &LocationId,
        token: &str,
        conversation_id: &str,
        last_message_id: Option<&str>,
    ) -> Result<MessagePage, GhlError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Page {
            last_message_id: Option<String>,
            next_page: Option<bool>,
            messages: Vec<ListedMessage>,
        }
        let path = ["conversations", conversation_id, "messages"];
        let mut query = vec![("limit", "100")];
        if let Some(last) = last_message_id {
            query.push(("lastMessageId", last));
        }
        let page: Page = self
            .send_json(
                Call::new(
                    "list conversation messages",
                    Api::Conversations,
                    Method::GET,
                    &path,
                )
                .location(location, token)
                .query(&query),
            )
            .await?;
        let next = match (page.next_page, page.last_message_id) {
            (Some(true), Some(last)) if !page.messages.is_empty() => Some(last),
            _ => None,
        };
        Ok(MessagePage {
            messages: page.messages,
            next,
        })
    }

    /// The message an earlier [`GhlClient::add_inbound_message`] added, if GHL has it: looked
    /// for in the contact's conversations by its `altId` where GHL returns it, else by
    /// direction, text and date (the date whatsnap sent with it, to the millisecond). Looks at
    /// most `max_pages` pages of each conversation, newest first.
    #[tracing::instrument(skip_all, fields(location_id = %location, contact_id = %message.contact_id))]
    pub async fn find_inbound_message(
        &self,
        location: &LocationId,
        token: &str,
        message: &InboundMessage,
        max_pages: usize,
    ) -> Result<Option<PostedMessage>, GhlError> {
        let direction = match message.direction {
            MessageDirection::Inbound => "inbound",
            MessageDirection::Outbound => "outbound",
        };
        let same_date = |added: Option<&str>| match (message.date, added) {
            (Some(ours), Some(theirs)) => DateTime::parse_from_rfc3339(theirs)
                .is_ok_and(|t| (t.with_timezone(&Utc) - ours).num_milliseconds().abs() < 1),
            _ => false,
        };
        for conversation_id in self
            .search_conversations(location, token, &message.contact_id)
            .await?
        {
            let mut after = None;
            for _ in 0..max_pages.max(1) {
                let page = self
                    .conversation_messages(location, token, &conversation_id, after.as_deref())
                    .await?;
                let found = page.messages.iter().find(|listed| match &listed.alt_id {
                    Some(alt_id) => *alt_id == message.alt_id,
                    None => {
                        listed.direction.as_deref() == Some(direction)
                            && listed.body.as_deref().unwrap_or_default() == message.message
                            && same_date(listed.date_added.as_deref())
                    }
                });
                if let Some(found) = found {
                    return Ok(Some(PostedMessage {
                        conversation_id: conversation_id.clone(),
                        message_id: found.id.clone(),
                    }));
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        Ok(None)
    }

    /// Reports a message's delivery (`PUT /conversations/messages/{id}/status`). Right after
    /// GHL's Delivery URL webhook, GHL may answer 403 "No conversation provider found" until it
    /// has stored the message (`ghl-api.md` §2.4): that is waited out with backoff for up to
    /// `patience`, not taken for a bad token, and returned as [`GhlError::Refused`] after.
    #[tracing::instrument(skip_all, fields(location_id = %location, ghl_message_id))]
    pub async fn update_message_status(
        &self,
        location: &LocationId,
        token: &str,
        ghl_message_id: &str,
        update: &StatusUpdate,
        patience: Duration,
    ) -> Result<(), GhlError> {
        tracing::Span::current().record("ghl_message_id", ghl_message_id);
        let body = StatusBody {
            status: update.status,
            error: update.error.as_ref().map(|error| StatusErrorBody {
                code: &error.code,
                kind: "saas",
                message: &error.message,
            }),
        };
        let path = ["conversations", "messages", ghl_message_id, "status"];
        let mut call = Call::new(
            "update message status",
            Api::Conversations,
            Method::PUT,
            &path,
        )
        .location(location, token)
        .json(&body)?;
        call.provider_race_until = Some(Instant::now() + patience);
        self.send(call).await.map(drop)
    }

    pub(crate) async fn send_json<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
    ) -> Result<T, GhlError> {
        parse(&self.send(call).await?)
    }

    /// Sends `call`, retrying what is worth retrying, and returns the body of a 2xx answer.
    pub(crate) async fn send(&self, call: Call<'_>) -> Result<Vec<u8>, GhlError> {
        let url = self.url(call.path, &call.query)?;
        let policy = self.inner.config.retry;
        let location_id = call.location.map_or("-", LocationId::as_str);
        let mut attempt = 0;
        let mut failures = 0;
        let mut races = 0;
        loop {
            attempt += 1;
            if let Some(location) = call.location {
                self.inner.limiter.acquire(location).await.map_err(
                    |exhausted| match exhausted {
                        Exhausted::Wait(wait) | Exhausted::DailyCap(wait) => {
                            GhlError::RateLimited {
                                retry_after: Some(wait),
                            }
                        }
                    },
                )?;
            }
            let (error, wait) = match self.exchange(&call, &url).await {
                Ok(body) => return Ok(body),
                Err(Failure::Final(error)) => {
                    debug!(
                        location_id,
                        operation = call.operation,
                        status = error.http_status(),
                        attempt,
                        "ghl refused a request"
                    );
                    return Err(error);
                }
                Err(Failure::Transient { error, .. })
                    if !call.idempotent && !error.certainly_unsent() =>
                {
                    warn!(
                        location_id,
                        operation = call.operation,
                        status = error.http_status(),
                        attempt,
                        "ghl request failed and may have been acted on; not repeated"
                    );
                    return Err(error);
                }
                Err(Failure::Transient { error, retry_after }) => {
                    failures += 1;
                    // A longer Retry-After is the caller's to wait, not this call's.
                    let too_long = retry_after.is_some_and(|wait| wait > policy.max_delay);
                    if failures >= policy.attempts || too_long {
                        warn!(
                            location_id,
                            operation = call.operation,
                            status = error.http_status(),
                            attempt,
                            "ghl request failed, giving up"
                        );
                        return Err(error);
                    }
                    let wait = retry_after.unwrap_or_else(|| policy.backoff(failures));
                    (error, wait)
                }
                Err(Failure::ProviderRace(error)) => {
                    let now = Instant::now();
                    let until = call.provider_race_until.unwrap_or(now);
                    if now >= until {
                        warn!(
                            location_id,
                            operation = call.operation,
                            status = error.http_status(),
                            attempt,
                            "ghl still does not know the message, giving up"
                        );
                        return Err(error);
                    }
                    races += 1;
                    (error, policy.backoff(races).min(until - now))
                }
            };
            warn!(
                location_id,
                operation = call.operation,
                status = error.http_status(),
                attempt,
                retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "ghl request failed, retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One HTTP exchange, its answer sorted.
    async fn exchange(&self, call: &Call<'_>, url: &Url) -> Result<Vec<u8>, Failure> {
        let mut request = self
            .inner
            .http
            .request(call.method.clone(), url.clone())
            .header(ACCEPT, "application/json");
        if let Some(version) = call.api.version() {
            request = request.header("Version", version);
        }
        if let Some(token) = call.bearer {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, body)) = &call.body {
            request = request
                .header(CONTENT_TYPE, *content_type)
                .body(body.clone());
        }
        let unavailable = |error: reqwest::Error| Failure::Transient {
            error: GhlError::Unavailable(describe(&error)),
            retry_after: None,
        };
        let started = std::time::Instant::now();
        let sent = request.send().await;
        let location_label = call.location.map_or("none", LocationId::as_str).to_owned();
        whatsnap_telemetry::metrics::observe(
            "whatsnap_ghl_request_duration_seconds",
            "How long GHL took to answer a request, by operation.",
            vec![("operation", call.operation.to_owned())],
            started.elapsed(),
        );
        whatsnap_telemetry::metrics::count(
            "whatsnap_ghl_requests_total",
            "Requests made to GHL, by location and HTTP status (429: GHL refused it as over the limit; error: no answer).",
            vec![
                ("location", location_label),
                (
                    "status",
                    sent.as_ref()
                        .map_or_else(|_| "error".to_owned(), |r| r.status().as_u16().to_string()),
                ),
            ],
            1.0,
        );
        let response = sent.map_err(unavailable)?;
        let status = response.status().as_u16();
        if let Some(location) = call.location {
            self.inner.limiter.observe(
                location,
                Observed::from_headers(headers(response.headers())),
            );
        }
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.map_err(unavailable)?.to_vec();
        if (200..300).contains(&status) {
            return Ok(body);
        }
        // GHL's words may quote a contact's number; they go into errors, events and logs.
        let message = whatsnap_events::mask::scrub(&error_message(status, &body));
        Err(match status {
            429 => {
                if let Some(location) = call.location {
                    self.inner.limiter.too_many_requests(location, retry_after);
                }
                Failure::Transient {
                    error: GhlError::RateLimited { retry_after },
                    retry_after,
                }
            }
            500..=599 => Failure::Transient {
                error: GhlError::Server { status, message },
                retry_after: None,
            },
            // It used to come as a 401 (ISS#4); either way the token is fine.
            401 | 403 if call.provider_race_until.is_some() && is_provider_race(&message) => {
                Failure::ProviderRace(GhlError::Refused { status, message })
            }
            401 => Failure::Final(GhlError::Unauthorized { message }),
            403 => Failure::Final(GhlError::Forbidden { message }),
            _ => Failure::Final(GhlError::Refused { status, message }),
        })
    }

    fn url(&self, path: &[&str], query: &[(&str, &str)]) -> Result<Url, GhlError> {
        let base = &self.inner.config.api_base;
        let mut url = Url::parse(base)
            .map_err(|e| GhlError::NotConfigured(format!("the api base {base:?}: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| GhlError::NotConfigured(format!("the api base {base:?} has no path")))?
            .pop_if_empty()
            .extend(path);
        if !query.is_empty() {
            // Form encoding writes `+` as `%2B`, as GHL asks for phone numbers.
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }
}

/// Which part of GHL's API a call goes to; each has its own `Version` header (`ghl-api.md` §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Conversations,
    Contacts,
    Users,
    /// `POST /oauth/locationToken`.
    LocationToken,
    /// `POST /oauth/token`.
    Token,
}

impl Api {
    fn version(self) -> Option<&'static str> {
        match self {
            Self::Conversations => Some("2021-04-15"),
            Self::Contacts | Self::Users | Self::LocationToken => Some("2021-07-28"),
            Self::Token => None,
        }
    }
}

/// One GHL request, as often as it is tried.
pub(crate) struct Call<'a> {
    /// For logs.
    operation: &'static str,
    api: Api,
    method: Method,
    /// Unencoded path segments.
    path: &'a [&'a str],
    query: Vec<(&'a str, &'a str)>,
    body: Option<(&'static str, Vec<u8>)>,
    bearer: Option<&'a str>,
    /// Paced by the limiter, and feeds it.
    location: Option<&'a LocationId>,
    /// Until when a 403 "No conversation provider found" is waited out.
    provider_race_until: Option<Instant>,
    /// Whether the same request may be sent again after a 5xx or a timeout. A call that is not
    /// (a POST that adds something) returns such a failure at once: whether GHL acted on it is
    /// for the caller's outbox to find out before it tries again.
    idempotent: bool,
}

impl<'a> Call<'a> {
    pub(crate) fn new(
        operation: &'static str,
        api: Api,
        method: Method,
        path: &'a [&'a str],
    ) -> Self {
        Self {
            operation,
            api,
            method,
            path,
            query: Vec::new(),
            body: None,
            bearer: None,
            location: None,
            provider_race_until: None,
            idempotent: true,
        }
    }

    /// Marks the call as one that is not repeated after a 5xx or a timeout (see `idempotent`).
    pub(crate) fn once(mut self) -> Self {
        self.idempotent = false;
        self
    }

    fn location(mut self, location: &'a LocationId, token: &'a str) -> Self {
        self.location = Some(location);
        self.bearer = Some(token);
        self
    }

    pub(crate) fn bearer(mut self, token: &'a str) -> Self {
        self.bearer = Some(token);
        self
    }

    fn query(mut self, pairs: &[(&'a str, &'a str)]) -> Self {
        self.query.extend_from_slice(pairs);
        self
    }

    fn json(mut self, body: &impl Serialize) -> Result<Self, GhlError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| GhlError::Protocol(format!("cannot encode the request: {e}")))?;
        self.body = Some(("application/json", body));
        Ok(self)
    }

    pub(crate) fn form(mut self, pairs: &[(&str, &str)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        self.body = Some(("application/x-www-form-urlencoded", body.into_bytes()));
        self
    }
}

enum Failure {
    /// Worth another try: 429, 5xx, no answer.
    Transient {
        error: GhlError,
        retry_after: Option<Duration>,
    },
    /// GHL does not know the message yet (`ghl-api.md` §2.4).
    ProviderRace(GhlError),
    Final(GhlError),
}

fn is_provider_race(message: &str) -> bool {
    message
        .to_ascii_lowercase()
        .contains("no conversation provider found")
}

pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, GhlError> {
    serde_json::from_slice(body).map_err(|e| GhlError::Protocol(e.to_string()))
}

/// GHL's words from an error body: `message` (a string, or a list for 422s), else OAuth's
/// `error_description` or `error`, else the status alone. Never the raw body, which may be a
/// whole HTML page.
fn error_message(status: u16, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: Option<Value>,
        error_description: Option<String>,
        error: Option<Value>,
    }
    let text = |value: Value| match value {
        Value::String(text) => Some(text),
        Value::Array(items) => Some(
            items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => text,
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => None,
    };
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|body| {
            body.message
                .and_then(text)
                .or(body.error_description)
                .or_else(|| body.error.and_then(text))
        })
        .filter(|message| !message.is_empty())
        .unwrap_or_else(|| {
            reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|status| status.canonical_reason())
                .unwrap_or("no message")
                .to_owned()
        })
}

fn headers(map: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    map.iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
}

/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(map: &HeaderMap) -> Option<Duration> {
    let value = map.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or_default(),
    )
}

/// What failed, without the URL (it may hold a phone number).
/// How [`describe`] starts when the request never reached GHL.
const NOT_CONNECTED: &str = "could not connect";

fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        NOT_CONNECTED
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `"Ana Maria Souza"` → (`"Ana"`, `"Maria Souza"`): GHL keeps first and last names apart.
fn split_name(name: Option<&str>) -> (Option<&str>, Option<&str>) {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return (None, None);
    };
    match name.split_once(char::is_whitespace) {
        Some((first, last)) => (Some(first), Some(last.trim_start())),
        None => (Some(name), None),
    }
}

/// A number GHL may write as an integer, a float or a string.
pub(crate) fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpsertBody<'a> {
    location_id: &'a str,
    phone: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_name: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    assigned_to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdateBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    assigned_to: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InboundBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    contact_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation_provider_id: Option<&'a str>,
    message: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    attachments: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    alt_id: &'a str,
    direction: MessageDirection,
    #[serde(skip_serializing_if = "Option::is_none")]
    date: Option<String>,
}

#[derive(Serialize)]
struct StatusBody<'a> {
    status: DeliveryStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<StatusErrorBody<'a>>,
}

#[derive(Serialize)]
struct StatusErrorBody<'a> {
    code: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawContact {
    id: Option<String>,
    location_id: Option<String>,
    phone: Option<String>,
    name: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    tags: Option<Vec<String>>,
    assigned_to: Option<String>,
    source: Option<String>,
    date_added: Option<String>,
}

impl RawContact {
    fn into_contact(self) -> Result<GhlContact, GhlError> {
        let id = self
            .id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| GhlError::Protocol("a contact has no id".into()))?;
        Ok(GhlContact {
            id,
            location_id: self.location_id,
            phone: self.phone,
            name: full_name(self.name, self.first_name, self.last_name),
            tags: self.tags.unwrap_or_default(),
            assigned_to: self.assigned_to.filter(|user| !user.is_empty()),
            source: self.source.filter(|source| !source.trim().is_empty()),
            date_added: self
                .date_added
                .and_then(|date| DateTime::parse_from_rfc3339(&date).ok())
                .map(|date| date.with_timezone(&Utc)),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawUser {
    id: Option<String>,
    name: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    roles: Option<RawRoles>,
    deleted: Option<bool>,
}

#[derive(Deserialize)]
struct RawRoles {
    role: Option<String>,
}

impl RawUser {
    fn into_user(self) -> Result<GhlUser, GhlError> {
        let id = self
            .id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| GhlError::Protocol("a user has no id".into()))?;
        Ok(GhlUser {
            id,
            name: full_name(self.name, self.first_name, self.last_name).unwrap_or_default(),
            email: self.email,
            role: self.roles.and_then(|roles| roles.role),
            deleted: self.deleted.unwrap_or(false),
        })
    }
}

fn full_name(name: Option<String>, first: Option<String>, last: Option<String>) -> Option<String> {
    name.filter(|name| !name.trim().is_empty()).or_else(|| {
        let joined = [first, last]
            .into_iter()
            .flatten()
            .filter(|part| !part.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        (!joined.is_empty()).then_some(joined)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_an_exponential_ceiling() {
        let policy = RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(700),
        };
        for _ in 0..200 {
            assert!(policy.backoff(1) <= Duration::from_millis(100));
            assert!(policy.backoff(3) <= Duration::from_millis(400));
            assert!(policy.backoff(9) <= Duration::from_millis(700));
            assert!(policy.backoff(u32::MAX) <= Duration::from_millis(700));
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| policy.backoff(4)).collect();
        assert!(spread.len() > 1, "the delays are random");
    }

    #[test]
    fn ghls_error_bodies_read_as_one_message() {
        assert_eq!(
            error_message(400, br#"{"statusCode":400,"message":"Bad phone"}"#),
            "Bad phone"
        );
        assert_eq!(
            error_message(
                422,
                br#"{"statusCode":422,"message":["phone must be a string","tags must be an array"],"error":"Unprocessable Entity"}"#
            ),
            "phone must be a string; tags must be an array"
        );
        assert_eq!(
            error_message(
                400,
                br#"{"error":"invalid_grant","error_description":"Invalid grant: refresh token is invalid"}"#
            ),
            "Invalid grant: refresh token is invalid"
        );
        assert_eq!(
            error_message(502, b"<html>bad gateway</html>"),
            "Bad Gateway"
        );
    }

    #[test]
    fn names_split_into_first_and_last() {
        assert_eq!(
            split_name(Some("Ana Maria Souza")),
            (Some("Ana"), Some("Maria Souza"))
        );
        assert_eq!(split_name(Some(" Cher ")), (Some("Cher"), None));
        assert_eq!(split_name(Some("  ")), (None, None));
        assert_eq!(split_name(None), (None, None));
    }

    #[test]
    fn errors_say_whether_to_retry_and_which_status() {
        assert!(
            GhlError::Server {
                status: 502,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(GhlError::RateLimited { retry_after: None }.is_retryable());
        assert!(GhlError::Unavailable("timed out".into()).is_retryable());
        assert!(
            !GhlError::Unauthorized {
                message: String::new()
            }
            .is_retryable()
        );
        assert!(!GhlError::Protocol(String::new()).is_retryable());
        assert_eq!(
            GhlError::Refused {
                status: 422,
                message: String::new()
            }
            .http_status(),
            Some(422)
        );
        assert_eq!(GhlError::Unavailable(String::new()).http_status(), None);
    }

    #[test]
    fn the_client_secret_never_shows_in_debug_output() {
        let config = GhlConfig {
            client_secret: Some("very-secret".into()),
            ..GhlConfig::default()
        };
        assert!(!format!("{config:?}").contains("very-secret"));
    }
}
