//! A fake GoHighLevel API v2, as `ghl-api.md` describes it and GHL's OpenAPI documents specify
//! it: bearer tokens bound to a location (Private Integration Tokens and the OAuth code and
//! single-use refresh-token flow), the per-endpoint `Version` header, request bodies checked
//! against the documents' schemas (422 like GHL, and recorded), contacts with upsert and tags,
//! users, inbound messages and status updates (with the documented 403 race), per-location rate
//! limits with GHL's headers, and failure injection. It also sends what GHL sends to an app —
//! the provider's outbound messages, ContactTagUpdate, INSTALL / UNINSTALL — signed with an
//! Ed25519 key of its own, whose public half [`FakeGhl::ed25519_public_key_pem`] gives.
//!
//! Choices where GHL's behaviour is not documented are marked in the code; the main ones:
//! a token used on another location's data gets 403 `The token does not have access to this
//! location.`; an agency (Company) token on a sub-account endpoint gets 401; a request body
//! property the documents do not name is a 422 (see [`FakeGhl::set_forbid_unknown_properties`]).

mod schema;
mod server;
mod state;
mod webhooks;

pub use webhooks::SIGNATURE_HEADER;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;

use state::{AccessToken, Bearer, Grant, Inner, Shared};

/// Rate limits of one resource (a location or a company), as GHL applies them per app (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeGhlLimits {
    /// Requests allowed in any `burst_window` (GHL: 100).
    pub burst_max: u32,
    /// The sliding burst window (GHL: 10 s).
    pub burst_window: Duration,
    /// Requests allowed per day (GHL: 200 000).
    pub daily_max: u32,
}

impl Default for FakeGhlLimits {
    fn default() -> Self {
        Self {
            burst_max: 100,
            burst_window: Duration::from_secs(10),
            daily_max: 200_000,
        }
    }
}

/// A user of a sub-account, as `GET /users/search` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeGhlUser {
    pub id: String,
    pub name: String,
    pub email: String,
    /// `admin` or `user`.
    pub role: String,
    pub deleted: bool,
}

/// One request the fake answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Query parameters, decoded, in order.
    pub query: Vec<(String, String)>,
    pub version: Option<String>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    /// The JSON body, or a form body as an object of strings.
    pub body: Option<Value>,
    /// The location (or, for agency tokens, company) the request's token acts for.
    pub location: Option<String>,
    /// The HTTP status the fake answered.
    pub status: u16,
    pub at: SystemTime,
}

impl RecordedRequest {
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request body GHL would refuse with 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    pub method: String,
    pub path: String,
    /// `<path>: <what is wrong>`, as in the 422's `message` array.
    pub messages: Vec<String>,
}

/// A contact as the fake holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeGhlContact {
    pub id: String,
    pub location_id: String,
    /// E.164.
    pub phone: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub tags: Vec<String>,
    /// The id of the user who owns the contact.
    pub assigned_to: Option<String>,
    /// The whole contact as the API returns it.
    pub fields: Value,
}

/// A message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeGhlMessage {
    pub id: String,
    pub conversation_id: String,
    pub contact_id: String,
    pub location_id: String,
    /// `SMS`, `WhatsApp`, …
    pub message_type: String,
    /// `inbound` or `outbound`; GHL's default, when a client leaves it out, is outbound.
    pub direction: String,
    pub message: Option<String>,
    pub attachments: Vec<String>,
    pub alt_id: Option<String>,
    pub conversation_provider_id: Option<String>,
    /// ISO 8601.
    pub date: String,
    /// The last status a provider reported.
    pub status: Option<String>,
    /// The GHL user who sent it, for messages sent from GHL.
    pub user_id: Option<String>,
}

/// One `PUT /conversations/messages/{id}/status` for a known message.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    pub message_id: String,
    pub status: String,
    /// The `error` object, as sent.
    pub error: Option<Value>,
    pub at: SystemTime,
    /// 200 when accepted; 403 when refused because GHL had not finished with the message.
    pub http_status: u16,
}

/// A running fake GHL on 127.0.0.1; stops when dropped.
pub struct FakeGhl {
    addr: SocketAddr,
    shared: Shared,
    signing_key: ed25519_dalek::SigningKey,
    client: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl FakeGhl {
    /// The marketplace app's client id the fake accepts at `/oauth/token`.
    pub const CLIENT_ID: &'static str = "fake-ghl-client-id";
    /// The marketplace app's client secret the fake accepts at `/oauth/token`.
    pub const CLIENT_SECRET: &'static str = "fake-ghl-client-secret";
    /// The company (agency) of every location not given another with
    /// [`FakeGhl::set_location_company`].
    pub const COMPANY_ID: &'static str = "FakeCompany000000001";
    /// The app id in INSTALL / UNINSTALL webhooks and location tokens.
    pub const APP_ID: &'static str = "FakeApp0000000000001";
    /// The user who installed the app: the `userId` of OAuth tokens.
    pub const INSTALLER_USER_ID: &'static str = "FakeInstaller0000001";
    /// The scopes every OAuth token is granted (those a conversation provider needs, §2.1).
    pub const SCOPES: &'static str = "conversations/message.write conversations/message.readonly \
        conversations.readonly conversations.write contacts.readonly contacts.write \
        users.readonly";

    /// Starts the fake on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        // Its HTTP client (for webhooks) uses ring, as all of whatsnap does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shared = Shared(std::sync::Arc::new(std::sync::Mutex::new(Inner::new(
            Self::CLIENT_ID,
            Self::CLIENT_SECRET,
        ))));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = server::router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let signing_key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        Ok(Self {
            addr,
            shared,
            signing_key,
            client: reqwest::Client::new(),
            task,
        })
    }

    /// The base URL to configure instead of `https://services.leadconnectorhq.com`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    // ---- tokens -------------------------------------------------------------------------

    /// Registers a Private Integration Token of `location_id`; it never expires.
    pub fn add_private_token(&self, location_id: &str, token: &str) {
        self.shared.with(|inner| {
            let company_id = inner.company_of(location_id);
            inner.tokens.insert(
                token.to_owned(),
                AccessToken {
                    bearer: Bearer::Location {
                        location_id: location_id.to_owned(),
                        company_id,
                    },
                    expires_at: None,
                },
            );
        });
    }

    /// Registers an agency Private Integration Token of `company_id`.
    pub fn add_company_private_token(&self, company_id: &str, token: &str) {
        self.shared.with(|inner| {
            inner.tokens.insert(
                token.to_owned(),
                AccessToken {
                    bearer: Bearer::Company {
                        company_id: company_id.to_owned(),
                    },
                    expires_at: None,
                },
            );
        });
    }

    /// Places `location_id` in `company_id` (otherwise it is in [`FakeGhl::COMPANY_ID`]).
    pub fn set_location_company(&self, location_id: &str, company_id: &str) {
        self.shared.with(|inner| {
            inner
                .location_companies
                .insert(location_id.to_owned(), company_id.to_owned())
        });
    }

    /// A one-time authorization code for `location_id`: what GHL appends to the redirect URI
    /// after a user picks that location.
    pub fn issue_code(&self, location_id: &str) -> String {
        self.issue_location_code(location_id, None)
    }

    fn issue_location_code(&self, location_id: &str, redirect_uri: Option<&str>) -> String {
        self.shared.with(|inner| {
            let code = state::opaque("fake-code-");
            let company_id = inner.company_of(location_id);
            inner.codes.insert(
                code.clone(),
                Grant {
                    bearer: Bearer::Location {
                        location_id: location_id.to_owned(),
                        company_id,
                    },
                    user_id: Self::INSTALLER_USER_ID.to_owned(),
                    redirect_uri: redirect_uri.map(str::to_owned),
                },
            );
            code
        })
    }

    /// A one-time authorization code for an agency install: it exchanges for a Company token.
    pub fn issue_company_code(&self, company_id: &str) -> String {
        self.shared.with(|inner| {
            let code = state::opaque("fake-code-");
            inner.codes.insert(
                code.clone(),
                Grant {
                    bearer: Bearer::Company {
                        company_id: company_id.to_owned(),
                    },
                    user_id: Self::INSTALLER_USER_ID.to_owned(),
                    redirect_uri: None,
                },
            );
            code
        })
    }

    /// What GHL does when a user opens `authorize_url` (whatsnap's link to the location
    /// chooser) and picks `location_id`: the redirect, with a code and the link's `state`.
    pub fn approve_install(&self, authorize_url: &str, location_id: &str) -> String {
        let url = url::Url::parse(authorize_url).expect("an authorize URL");
        let param = |name: &str| {
            url.query_pairs()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned())
        };
        let redirect_uri = param("redirect_uri").expect("the authorize URL names a redirect_uri");
        let redirect = self.authorize_redirect(&redirect_uri, location_id);
        match param("state") {
            Some(state) => format!(
                "{redirect}&state={}",
                url::form_urlencoded::byte_serialize(state.as_bytes()).collect::<String>()
            ),
            None => redirect,
        }
    }

    /// Where GHL sends the browser after the user picks `location_id`: `redirect_uri` with a
    /// fresh `code`. Exchanging that code with another `redirect_uri` fails.
    pub fn authorize_redirect(&self, redirect_uri: &str, location_id: &str) -> String {
        let code = self.issue_location_code(location_id, Some(redirect_uri));
        let separator = if redirect_uri.contains('?') { '&' } else { '?' };
        format!("{redirect_uri}{separator}code={code}")
    }

    /// How long OAuth access tokens issued from now on live (GHL: about a day).
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        self.shared
            .with(|inner| inner.access_token_lifetime = lifetime);
    }

    /// Expires every OAuth access token issued so far (Private Integration Tokens stay).
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        self.shared.with(|inner| {
            for token in inner.tokens.values_mut() {
                if token.expires_at.is_some() {
                    token.expires_at = Some(now);
                }
            }
        });
    }

    // ---- data ---------------------------------------------------------------------------

    /// Adds a user to `location_id`.
    pub fn add_user(&self, location_id: &str, user: FakeGhlUser) {
        self.shared
            .with(|inner| inner.users.push((location_id.to_owned(), user)));
    }

    /// Creates a contact directly, as a GHL user would; returns its id.
    pub fn add_contact(&self, location_id: &str, phone: &str, name: Option<&str>) -> String {
        self.shared.with(|inner| {
            let mut contact = state::Contact::new(location_id);
            let mut body = serde_json::Map::new();
            body.insert("phone".into(), phone.into());
            if let Some(name) = name {
                body.insert("name".into(), name.into());
            }
            contact.apply(&body);
            let id = contact.id.clone();
            inner.contacts.push(contact);
            id
        })
    }

    /// Creates a contact directly with the fields GHL's API names (`phone`, `source`,
    /// `assignedTo`, …), as a form, an ad or a GHL user would; returns its id.
    pub fn add_contact_with(&self, location_id: &str, fields: serde_json::Value) -> String {
        self.shared.with(|inner| {
            let mut contact = state::Contact::new(location_id);
            if let Some(body) = fields.as_object() {
                contact.apply(body);
            }
            let id = contact.id.clone();
            inner.contacts.push(contact);
            id
        })
    }

    /// Adds an inbound SMS to the contact's conversation, as `POST /conversations/messages/inbound`
    /// does (dated `date`); returns its id. For tests of a post whose answer was lost.
    pub fn post_inbound_message(
        &self,
        contact_id: &str,
        body: &str,
        date: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<String> {
        self.shared.with(|inner| {
            let Some(location_id) = inner.contact(contact_id).map(|c| c.location_id.clone()) else {
                anyhow::bail!("no contact {contact_id}");
            };
            let conversation_id = inner.conversation_of(contact_id);
            let message = FakeGhlMessage {
                id: state::ghl_id(),
                conversation_id,
                contact_id: contact_id.to_owned(),
                location_id,
                message_type: "SMS".into(),
                direction: "inbound".into(),
                message: Some(body.to_owned()),
                attachments: Vec::new(),
                alt_id: None,
                conversation_provider_id: None,
                date: date.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                status: None,
                user_id: None,
            };
            let id = message.id.clone();
            inner.messages.push(state::Message {
                public: message,
                sent_to_provider_at: None,
            });
            Ok(id)
        })
    }

    /// Replaces a contact's tags, as a GHL user editing the contact would.
    pub fn set_tags(&self, contact_id: &str, tags: &[&str]) -> anyhow::Result<()> {
        self.shared.with(|inner| {
            let contact = inner
                .contact_mut(contact_id)
                .ok_or_else(|| anyhow::anyhow!("no contact {contact_id}"))?;
            contact.tags.clear();
            state::add_tags(&mut contact.tags, &serde_json::json!(tags));
            contact.date_updated = state::now_iso();
            Ok(())
        })
    }

    /// Assigns a contact to a user (or unassigns it), as a GHL user would.
    pub fn set_assigned_to(&self, contact_id: &str, user_id: Option<&str>) -> anyhow::Result<()> {
        self.shared.with(|inner| {
            let contact = inner
                .contact_mut(contact_id)
                .ok_or_else(|| anyhow::anyhow!("no contact {contact_id}"))?;
            contact.assigned_to = user_id.map(str::to_owned);
            Ok(())
        })
    }

    /// Sets a contact's source (or removes it), as a GHL user editing the contact would.
    pub fn set_source(&self, contact_id: &str, source: Option<&str>) -> anyhow::Result<()> {
        self.shared.with(|inner| {
            let contact = inner
                .contact_mut(contact_id)
                .ok_or_else(|| anyhow::anyhow!("no contact {contact_id}"))?;
            match source {
                Some(source) => contact
                    .other
                    .insert("source".to_owned(), serde_json::json!(source)),
                None => contact.other.remove("source"),
            };
            contact.date_updated = state::now_iso();
            Ok(())
        })
    }

    // ---- behaviour ------------------------------------------------------------------------

    /// How long after GHL posts a message to the Delivery URL status updates for it start to
    /// be accepted; before, they get 403 (§2.4: about 5–10 s at GHL; 2 s by default here).
    pub fn set_downstream_delay(&self, delay: Duration) {
        self.shared.with(|inner| inner.downstream_delay = delay);
    }

    /// The limits of every resource without its own.
    pub fn set_limits(&self, limits: FakeGhlLimits) {
        self.shared.with(|inner| inner.limits = limits);
    }

    /// The limits of one location (or company).
    pub fn limit_location(&self, location_id: &str, limits: FakeGhlLimits) {
        self.shared
            .with(|inner| inner.location_limits.insert(location_id.to_owned(), limits));
    }

    /// How many requests of `location_id` (or a company) were answered 429.
    pub fn rate_limited_count(&self, location_id: &str) -> usize {
        self.shared
            .with(|inner| inner.rate_limited.get(location_id).copied().unwrap_or(0))
    }

    /// The next `count` requests, whatever they are, answer `status`.
    /// Refuses with `status` every inbound message whose text contains `text` (`None`: take
    /// them again), as GHL refuses what it will not add whatever the retries.
    pub fn refuse_messages_containing(&self, refusal: Option<(&str, u16)>) {
        self.shared.with(|inner| {
            inner.refuse_text = refusal.map(|(text, status)| (text.to_owned(), status));
        });
    }

    pub fn fail_next(&self, count: usize, status: u16) {
        self.shared.with(|inner| inner.fail_next = (count, status));
    }

    /// While down, every request answers 500 `Internal Server Error`.
    pub fn set_down(&self, down: bool) {
        self.shared.with(|inner| inner.down = down);
    }

    /// Every answer waits this long first (to provoke client timeouts).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.with(|inner| inner.latency = latency);
    }

    /// Every authenticated request for `location_id` answers `status` until
    /// [`FakeGhl::clear_failures`].
    pub fn fail_location(&self, location_id: &str, status: u16) {
        self.shared
            .with(|inner| inner.fail_locations.insert(location_id.to_owned(), status));
    }

    /// Ends every injected failure: `fail_next`, `fail_location`, down and latency.
    pub fn clear_failures(&self) {
        self.shared.with(|inner| {
            inner.fail_next = (0, 500);
            inner.fail_locations.clear();
            inner.down = false;
            inner.latency = Duration::ZERO;
        });
    }

    /// Whether a body property the documents do not name is a 422 (the default). GHL's API
    /// is NestJS with class-validator and answers `property … should not exist` for the ones
    /// observed; that every endpoint does so is UNCONFIRMED.
    pub fn set_forbid_unknown_properties(&self, forbid: bool) {
        self.shared
            .with(|inner| inner.forbid_unknown_properties = forbid);
    }

    // ---- inspection -----------------------------------------------------------------------

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.with(|inner| inner.requests.clone())
    }

    /// Every request body GHL would have refused, in order.
    pub fn schema_violations(&self) -> Vec<SchemaViolation> {
        self.shared.with(|inner| inner.violations.clone())
    }

    pub fn contacts(&self, location_id: &str) -> Vec<FakeGhlContact> {
        self.shared.with(|inner| {
            inner
                .contacts
                .iter()
                .filter(|c| c.location_id == location_id)
                .map(state::Contact::public)
                .collect()
        })
    }

    pub fn contact(&self, contact_id: &str) -> Option<FakeGhlContact> {
        self.shared
            .with(|inner| inner.contact(contact_id).map(state::Contact::public))
    }

    /// The contact of `location_id` with this phone (E.164).
    pub fn contact_by_phone(&self, location_id: &str, phone: &str) -> Option<FakeGhlContact> {
        self.shared.with(|inner| {
            inner
                .contact_by_phone(location_id, phone)
                .map(state::Contact::public)
        })
    }

    /// The messages of a contact's conversation, in the order they arrived.
    pub fn messages(&self, contact_id: &str) -> Vec<FakeGhlMessage> {
        self.shared.with(|inner| {
            inner
                .messages
                .iter()
                .filter(|m| m.public.contact_id == contact_id)
                .map(|m| m.public.clone())
                .collect()
        })
    }

    pub fn message(&self, message_id: &str) -> Option<FakeGhlMessage> {
        self.shared.with(|inner| {
            inner
                .messages
                .iter()
                .find(|m| m.public.id == message_id)
                .map(|m| m.public.clone())
        })
    }

    /// The accepted status updates of a message, in order.
    pub fn status_updates(&self, message_id: &str) -> Vec<StatusUpdate> {
        self.status_attempts(message_id)
            .into_iter()
            .filter(|u| u.http_status == 200)
            .collect()
    }

    /// Every status update of a known message, also those refused with 403.
    pub fn status_attempts(&self, message_id: &str) -> Vec<StatusUpdate> {
        self.shared.with(|inner| {
            inner
                .status_updates
                .iter()
                .filter(|u| u.message_id == message_id)
                .cloned()
                .collect()
        })
    }
}

impl Drop for FakeGhl {
    fn drop(&mut self) {
        self.task.abort();
    }
}
