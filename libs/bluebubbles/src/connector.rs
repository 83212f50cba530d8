//! iMessage accounts through a Mac running BlueBubbles Server, behind whatsnap's seam.
//! [`Connector::check`] reaches the Mac with the URL and password given and seals them with a
//! per-account webhook secret; [`Connector::send`] sends text and files into the chat the Mac
//! already has with the contact; [`Connector::find_sent`] looks for a send whose answer was
//! lost; [`Connector::webhook`] checks the secret in the webhook's URL and reads it. The live
//! link (registering the webhook, watching the Mac, catching up) is `crate::session`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tracing::warn;
use uuid::Uuid;
use whatsnap_connector::{
    AccountRef, Connector, ConnectorError, ConnectorEvent, NewAccount, Outgoing, Pacing, Pairing,
    SendError, Sent, Session, WebhookError, WebhookRequest,
};
use whatsnap_events::{AccountKind, Attachment, LocationId};
use whatsnap_secrets::{Sealed, SecretKey};

use crate::client::{BlueBubblesClient, BlueBubblesError, FileToSend, MessageQuery};
use crate::message::{self, BbMessage, chat_guid};

/// The engine's name in events, settings, webhook URLs and the CLI.
pub const ENGINE: &str = "bluebubbles";

/// The operation name of a send in the log and in fail point names.
pub const SEND: &str = "bluebubbles.send";

/// The oldest BlueBubbles Server whatsnap drives: the webhook API, `message/query` with `after`
/// and AppleScript sends that echo `tempGuid` are all there in 1.9.
pub const MIN_SERVER_VERSION: (u32, u32, u32) = (1, 9, 0);

/// How whatsnap drives the Macs of its iMessage accounts.
#[derive(Clone)]
pub struct BlueBubblesConfig {
    /// Where the Macs reach whatsnap's gateway, e.g. `https://whatsnap.example.com`.
    pub public_base_url: String,
    /// How long one request to a Mac may take.
    pub request_timeout: Duration,
    /// How often a Mac is pinged: what notices it went offline.
    pub ping_interval: Duration,
    /// How far back an account that has recorded no message yet (a Mac just added) catches
    /// up; an account that has catches up from its last message recorded, however long ago.
    /// What was already recorded is recognised by its GUID.
    pub catch_up: Duration,
}

impl BlueBubblesConfig {
    pub fn new(public_base_url: &str) -> Self {
        Self {
            public_base_url: public_base_url.to_owned(),
            request_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
            catch_up: Duration::from_secs(24 * 3600),
        }
    }
}

impl fmt::Debug for BlueBubblesConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlueBubblesConfig")
            .field("public_base_url", &self.public_base_url)
            .field("request_timeout", &self.request_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("catch_up", &self.catch_up)
            .finish()
    }
}

/// The path of an account's BlueBubbles webhook on whatsnap's gateway, without the secret.
pub fn webhook_path(location: &LocationId, account_id: Uuid) -> String {
    format!("/webhooks/{ENGINE}/{location}/{account_id}")
}

/// What a user gives to add a Mac. No `Debug`: it holds the password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GivenSettings {
    /// The server as the Mac's BlueBubbles shows it, e.g. `https://abc.ngrok.app` or
    /// `http://192.168.1.20:1234`.
    server_url: String,
    password: String,
}

/// What an iMessage account keeps in its settings (password and webhook secret sealed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlueBubblesSettings {
    pub server_url: String,
    pub password: Sealed,
    /// The secret in the webhook URL whatsnap registers on the Mac.
    pub webhook_secret: Sealed,
    /// The server's version when the account was added.
    pub server_version: String,
}

impl fmt::Debug for BlueBubblesSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlueBubblesSettings")
            .field("server_url", &self.server_url)
            .field("server_version", &self.server_version)
            .finish_non_exhaustive()
    }
}

impl BlueBubblesSettings {
    pub fn of(settings: &serde_json::Value) -> Result<Self, ConnectorError> {
        serde_json::from_value(settings.clone()).map_err(|e| {
            ConnectorError::Invalid(format!(
                "the account's bluebubbles settings are unreadable: {e}"
            ))
        })
    }
}

/// An account's settings, opened.
pub(crate) struct Opened {
    pub(crate) client: BlueBubblesClient,
    pub(crate) webhook_secret: String,
}

/// The iMessage engine: BlueBubbles Server on each account's Mac.
pub struct BlueBubblesConnector {
    config: BlueBubblesConfig,
    /// The creation time (ms) of the last message seen per account since whatsnap started,
    /// webhook or query: where the next catch-up starts when it is later than the last one
    /// recorded when the link started ([`AccountRef::last_message_at`]).
    seen_until: Mutex<HashMap<Uuid, i64>>,
}

impl fmt::Debug for BlueBubblesConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlueBubblesConnector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BlueBubblesConnector {
    pub fn new(config: BlueBubblesConfig) -> Self {
        Self {
            config,
            seen_until: Mutex::default(),
        }
    }

    pub fn config(&self) -> &BlueBubblesConfig {
        &self.config
    }

    /// The URL whatsnap registers on the account's Mac, secret included.
    pub fn webhook_url(&self, location: &LocationId, account_id: Uuid, secret: &str) -> String {
        format!(
            "{}{}?secret={secret}",
            self.config.public_base_url.trim_end_matches('/'),
            webhook_path(location, account_id)
        )
    }

    pub(crate) fn open(&self, account: &AccountRef) -> Result<Opened, ConnectorError> {
        let settings = BlueBubblesSettings::of(&account.settings)?;
        let open = |sealed: &Sealed| {
            account
                .secret_key
                .open(sealed)
                .map(|o| o.expose().to_owned())
                .map_err(|e| ConnectorError::Invalid(e.to_string()))
        };
        let client = BlueBubblesClient::new(
            &settings.server_url,
            &open(&settings.password)?,
            self.config.request_timeout,
        )
        .map_err(BlueBubblesError::into_connector_error)?;
        Ok(Opened {
            client,
            webhook_secret: open(&settings.webhook_secret)?,
        })
    }

    /// The last message seen per account. A panic while it was held leaves it whole (one
    /// insert or removal), so a poisoned lock is taken as it is.
    pub(crate) fn seen_until(&self) -> MutexGuard<'_, HashMap<Uuid, i64>> {
        self.seen_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers that the account has seen messages up to `created` (ms).
    pub(crate) fn saw(&self, account_id: Uuid, created: i64) {
        let mut seen = self.seen_until();
        let until = seen.entry(account_id).or_insert(created);
        *until = (*until).max(created);
    }

    /// The chat to send to `address` in, as the Mac would: the iMessage chat when the Mac has
    /// one with the contact, else its SMS chat (a contact without iMessage, texting from an
    /// Android phone), else a new iMessage chat. Looked up with `GET /api/v1/chat/:guid`, one
    /// GUID per service, rather than guessed from a failed send: a send is not repeated.
    async fn chat_for(
        &self,
        client: &BlueBubblesClient,
        address: &str,
    ) -> Result<String, BlueBubblesError> {
        for service in ["iMessage", "SMS"] {
            let guid = chat_guid(service, address);
            if client.chat(&guid).await?.is_some() {
                return Ok(guid);
            }
        }
        Ok(chat_guid("iMessage", address))
    }

    async fn send_file(
        &self,
        client: &BlueBubblesClient,
        chat: &str,
        temp_guid: &str,
        attachment: &Attachment,
    ) -> Result<BbMessage, SendError> {
        let file = self.fetch(attachment).await?;
        client
            .send_attachment(chat, temp_guid, &file)
            .await
            .map_err(BlueBubblesError::into_send_error)
    }

    /// The bytes of an attachment: a `data:` URL's, or downloaded from GHL's URL.
    async fn fetch(&self, attachment: &Attachment) -> Result<FileToSend, SendError> {
        let refused = |reason: String| SendError::Refused { reason, code: None };
        let name = file_name_of(attachment);
        if let Some(rest) = attachment.url.strip_prefix("data:") {
            let (meta, data) = rest
                .split_once(',')
                .ok_or_else(|| refused("an attachment's data URL is malformed".to_owned()))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| refused(format!("an attachment's data is not base64: {e}")))?;
            let mime = meta.trim_end_matches(";base64");
            return Ok(FileToSend {
                name,
                content_type: attachment
                    .content_type
                    .clone()
                    .unwrap_or_else(|| mime.to_owned()),
                bytes,
            });
        }
        let response = reqwest::Client::new()
            .get(&attachment.url)
            .timeout(self.config.request_timeout)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| {
                SendError::NotConnected(format!("the attachment cannot be fetched: {e}"))
            })?;
        let content_type = attachment.content_type.clone().or_else(|| {
            response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
        let bytes = response.bytes().await.map_err(|e| {
            SendError::NotConnected(format!("the attachment cannot be fetched: {e}"))
        })?;
        Ok(FileToSend {
            name,
            content_type: content_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
            bytes: bytes.to_vec(),
        })
    }
}

fn file_name_of(attachment: &Attachment) -> String {
    if let Some(name) = &attachment.file_name {
        return name.clone();
    }
    (!attachment.url.starts_with("data:"))
        .then(|| {
            attachment
                .url
                .split(['?', '#'])
                .next()
                .and_then(|path| path.rsplit('/').next())
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
        })
        .flatten()
        .unwrap_or_else(|| "attachment".to_owned())
}

/// A server URL a Mac can be reached at: http or https, no query, no password in it.
fn check_server_url(text: &str) -> Result<String, ConnectorError> {
    let url = url::Url::parse(text.trim()).map_err(|e| {
        ConnectorError::Invalid(format!(
            "server_url {text:?} is not a URL ({e}): give it as BlueBubbles Server shows it, \
             e.g. https://abc.ngrok.app or http://192.168.1.20:1234"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConnectorError::Invalid(format!(
            "server_url {text:?} must be an http(s) URL of the Mac"
        )));
    }
    if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(ConnectorError::Invalid(
            "server_url must not carry a query or credentials: give the password as password"
                .to_owned(),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// `1.9.9` → `(1, 9, 9)`; a pre-release or build suffix is ignored.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text
        .trim()
        .trim_start_matches('v')
        .split(['-', '+'])
        .next()?
        .split('.')
        .map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
        parts.next().flatten().unwrap_or(0),
    ))
}

fn check_version(version: &str) -> Result<(), ConnectorError> {
    let (major, minor, patch) = MIN_SERVER_VERSION;
    match parse_version(version) {
        Some(found) if found >= MIN_SERVER_VERSION => Ok(()),
        _ => Err(ConnectorError::Refused(format!(
            "the Mac runs BlueBubbles Server {version}; whatsnap needs {major}.{minor}.{patch} or \
             newer: update it on the Mac (BlueBubbles Server > Settings > Check for updates)"
        ))),
    }
}

/// A new random webhook secret: 32 bytes, URL-safe base64.
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn settings_refusal(error: ConnectorError) -> SendError {
    SendError::Refused {
        reason: error.to_string(),
        code: None,
    }
}

#[async_trait]
impl Connector for BlueBubblesConnector {
    fn platform(&self) -> AccountKind {
        AccountKind::Imessage
    }

    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn send_operation(&self) -> &'static str {
        SEND
    }

    fn default_pacing(&self) -> Pacing {
        // Messages on a Mac sends one at a time through AppleScript; a short gap keeps two
        // replies in order.
        Pacing {
            interval: Duration::from_secs(1),
            ..Pacing::default()
        }
    }

    async fn check(
        &self,
        _account: &NewAccount,
        settings: serde_json::Value,
        secret_key: &SecretKey,
    ) -> Result<serde_json::Value, ConnectorError> {
        let given: GivenSettings = serde_json::from_value(settings).map_err(|e| {
            ConnectorError::Invalid(format!(
                "a Mac is added with its BlueBubbles server_url and password \
                 (--setting server_url=… --setting password=…): {e}"
            ))
        })?;
        let server_url = check_server_url(&given.server_url)?;
        if given.password.trim().is_empty() {
            return Err(ConnectorError::Invalid(
                "password is empty: give the password set in BlueBubbles Server".to_owned(),
            ));
        }
        let client =
            BlueBubblesClient::new(&server_url, &given.password, self.config.request_timeout)
                .map_err(BlueBubblesError::into_connector_error)?;
        client
            .ping()
            .await
            .map_err(BlueBubblesError::into_connector_error)?;
        let info = client
            .server_info()
            .await
            .map_err(BlueBubblesError::into_connector_error)?;
        check_version(&info.server_version)?;
        let settings = BlueBubblesSettings {
            server_url,
            password: secret_key.seal(&given.password),
            webhook_secret: secret_key.seal(&new_secret()),
            server_version: info.server_version,
        };
        Ok(serde_json::to_value(settings).expect("settings serialize"))
    }

    async fn send(&self, account: &AccountRef, outgoing: &Outgoing) -> Result<Sent, SendError> {
        let opened = self.open(account).map_err(settings_refusal)?;
        let client = &opened.client;
        let chat = self
            .chat_for(client, &outgoing.to)
            .await
            .map_err(BlueBubblesError::into_send_error)?;
        let temp_guid = outgoing.message_id.to_string();
        let mut first: Option<String> = None;
        if !outgoing.body.is_empty() || outgoing.attachments.is_empty() {
            let sent = client
                .send_text(&chat, &temp_guid, &outgoing.body)
                .await
                .map_err(BlueBubblesError::into_send_error)?;
            first = Some(sent.guid);
        }
        // One message per file after the text. A failure after the first message is logged,
        // not returned: the outbox would send the first again.
        for (index, attachment) in outgoing.attachments.iter().enumerate() {
            let temp = format!("{temp_guid}-{index}");
            match self.send_file(client, &chat, &temp, attachment).await {
                Ok(sent) => {
                    first.get_or_insert(sent.guid);
                }
                Err(error) if first.is_none() => return Err(error),
                Err(error) => warn!(
                    message_id = %outgoing.message_id,
                    attachment = index,
                    %error,
                    "the Mac did not send an attachment after the first message"
                ),
            }
        }
        Ok(Sent {
            provider_message_id: first.expect("a text or a file was sent"),
        })
    }

    async fn find_sent(
        &self,
        account: &AccountRef,
        outgoing: &Outgoing,
        since: DateTime<Utc>,
    ) -> Result<Option<Sent>, SendError> {
        let opened = self.open(account).map_err(settings_refusal)?;
        let client = &opened.client;
        let chat = self
            .chat_for(client, &outgoing.to)
            .await
            .map_err(BlueBubblesError::into_send_error)?;
        let found = client
            .query_messages(&MessageQuery {
                chat_guid: Some(chat),
                after: Some(since.timestamp_millis() - 1),
                with: vec!["chat".to_owned()],
                sort: "ASC",
                offset: 0,
                limit: 1000,
            })
            .await
            .map_err(BlueBubblesError::into_send_error)?;
        Ok(found
            .into_iter()
            .find(|m| {
                m.is_from_me
                    && if outgoing.body.is_empty() {
                        !m.attachments.is_empty()
                    } else {
                        m.text.as_deref() == Some(outgoing.body.as_str())
                    }
            })
            .map(|m| Sent {
                provider_message_id: m.guid,
            }))
    }

    fn webhook(
        &self,
        account: &AccountRef,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<ConnectorEvent>, WebhookError> {
        let settings = BlueBubblesSettings::of(&account.settings)
            .map_err(|e| WebhookError::Unreadable(e.to_string()))?;
        let secret = account
            .secret_key
            .open(&settings.webhook_secret)
            .map_err(|e| WebhookError::Unreadable(e.to_string()))?;
        let given = request.query_value("secret").unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(secret.expose().as_bytes())) {
            return Err(WebhookError::Unauthenticated(
                "the webhook URL does not carry this account's secret".to_owned(),
            ));
        }
        let events =
            message::events_of(request.body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
        if let Some(latest) = events
            .iter()
            .filter_map(|e| match e {
                ConnectorEvent::Message(m) => Some(m.sent_at.timestamp_millis()),
                _ => None,
            })
            .max()
        {
            self.saw(account.account_id, latest);
        }
        Ok(events)
    }

    fn pairing(&self, account: &AccountRef) -> Option<Pairing> {
        let settings = BlueBubblesSettings::of(&account.settings).ok()?;
        let secret = account.secret_key.open(&settings.webhook_secret).ok()?;
        Some(Pairing {
            steps: vec![
                "On the Mac: sign in to iMessage in Messages, and for SMS turn on Text Message \
                 Forwarding for this Mac on the iPhone (Settings > Apps > Messages)"
                    .to_owned(),
                format!(
                    "Keep BlueBubbles Server running at {} (it is version {}) and the Mac awake: \
                     System Settings > Energy > Prevent automatic sleeping",
                    settings.server_url, settings.server_version
                ),
                "Nothing to type: whatsnap registers its webhook on the server itself (shown \
                 under API & Webhooks) and removes it when the account is removed"
                    .to_owned(),
                "The account shows connected as soon as whatsnap reaches the Mac".to_owned(),
            ],
            webhook_url: Some(self.webhook_url(
                &account.location,
                account.account_id,
                secret.expose(),
            )),
            secret: None,
        })
    }

    fn session(&self) -> Option<&dyn Session> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_checked() {
        assert_eq!(
            check_server_url("https://abc.ngrok.app/").unwrap(),
            "https://abc.ngrok.app"
        );
        assert_eq!(
            check_server_url("http://192.168.1.20:1234").unwrap(),
            "http://192.168.1.20:1234"
        );
        for bad in [
            "abc.ngrok.app",
            "ftp://mac",
            "https://mac?password=x",
            "https://u:p@mac",
        ] {
            assert!(check_server_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_old_server_is_refused_naming_both_versions() {
        assert!(check_version("1.9.9").is_ok());
        assert!(check_version("1.10.0").is_ok());
        assert!(check_version("2.0.0-beta.1").is_ok());
        let refused = check_version("1.8.2").unwrap_err().to_string();
        assert!(
            refused.contains("1.8.2") && refused.contains("1.9.0"),
            "{refused}"
        );
        assert!(check_version("unknown").is_err());
    }

    #[test]
    fn secrets_are_random_and_url_safe() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }
}
