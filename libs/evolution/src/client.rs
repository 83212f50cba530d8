//! The REST calls whatsnap makes to an Evolution API v2 server (connectors.md §2.2, read against
//! `EvolutionAPI/evolution-api` 2.3.6): instances, linking, state, webhooks, sending, and the
//! message lookup that finds a send whose answer was lost. Every call carries the `apikey`
//! header; the key never shows in `Debug` output or logs.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::debug;
use whatsnap_connector::{ConnectorError, SendError};

/// The integration whatsnap asks for: WhatsApp Web through Baileys, linked by QR code.
pub const INTEGRATION_BAILEYS: &str = "WHATSAPP-BAILEYS";

/// The events whatsnap subscribes an instance's webhook to.
pub const WEBHOOK_EVENTS: [&str; 6] = [
    "QRCODE_UPDATED",
    "CONNECTION_UPDATE",
    "MESSAGES_UPSERT",
    "MESSAGES_UPDATE",
    "SEND_MESSAGE",
    "LOGOUT_INSTANCE",
];

/// What can go wrong talking to Evolution.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvolutionError {
    /// 401: the API key is neither the global key nor the instance's token.
    #[error("evolution refused the API key: {0}")]
    Unauthorized(String),
    /// 404: no such instance (Evolution says so before it checks the key).
    #[error("{0}")]
    NotFound(String),
    /// Another 4xx: Evolution answered and refused the request as it is.
    #[error("{reason}")]
    Refused { http_status: u16, reason: String },
    /// 429 (from a proxy in front of Evolution; Evolution itself does not limit).
    #[error("evolution is rate limiting: {0}")]
    RateLimited(String),
    /// The server could not be reached at all: nothing was done.
    #[error("evolution cannot be reached: {0}")]
    NotConnected(String),
    /// A timeout, a 5xx or an unreadable answer: the request may or may not have taken effect.
    #[error("evolution failed: {reason}")]
    Unavailable {
        http_status: Option<u16>,
        reason: String,
    },
}

impl EvolutionError {
    /// As the outbox needs it for a send.
    pub fn into_send_error(self) -> SendError {
        // Baileys refuses to send on a closed socket before anything leaves. Evolution answers
        // that with Boom's "Connection Closed": a 500 from its error handler, or a 400 when
        // its send path catches it (`BadRequestException(error.toString())`).
        if let Self::Refused { reason, .. } | Self::Unavailable { reason, .. } = &self
            && reason.contains("Connection Closed")
        {
            return SendError::NotConnected(format!("the WhatsApp link is not open: {reason}"));
        }
        match self {
            Self::Unauthorized(reason) => SendError::Refused {
                reason: format!("evolution refused the API key: {reason}"),
                code: Some("401".to_owned()),
            },
            Self::NotFound(reason) => SendError::Refused {
                reason,
                code: Some("404".to_owned()),
            },
            Self::Refused {
                http_status,
                reason,
            } => SendError::Refused {
                reason,
                code: Some(http_status.to_string()),
            },
            Self::RateLimited(reason) => SendError::RateLimited(reason),
            Self::NotConnected(reason) => SendError::NotConnected(reason),
            Self::Unavailable { reason, .. } => SendError::Unknown(reason),
        }
    }

    /// As a connector reports it when an account is added or acted on.
    pub fn into_connector_error(self) -> ConnectorError {
        match self {
            Self::Unauthorized(_) => ConnectorError::Refused(
                "evolution refused the API key: give the instance's token or check the \
                 deployment's global key"
                    .to_owned(),
            ),
            Self::NotFound(reason) => ConnectorError::Invalid(reason),
            Self::Refused { reason, .. } => ConnectorError::Refused(reason),
            error @ (Self::RateLimited(_) | Self::NotConnected(_) | Self::Unavailable { .. }) => {
                ConnectorError::Unavailable(error.to_string())
            }
        }
    }
}

/// Evolution's error body: `{status, error, response: {message}}`, where `message` is a
/// string, an array of strings, or arrays and objects (a validation error, or
/// `{exists: false, jid, number}` for a number that is not on WhatsApp).
#[derive(Debug, Deserialize)]
struct ErrorBody {
    response: Option<ErrorResponse>,
    message: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ErrorResponse {
    message: Option<Value>,
}

/// The words of an error message, flattened into one sentence.
fn message_text(message: &Value, out: &mut Vec<String>) {
    match message {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| message_text(item, out)),
        Value::Object(fields) if fields.get("exists") == Some(&Value::Bool(false)) => {
            let number = fields
                .get("number")
                .and_then(Value::as_str)
                .unwrap_or("the recipient");
            out.push(format!(
                "{} is not on WhatsApp",
                whatsnap_secrets::mask::phone(number)
            ));
        }
        Value::Null => {}
        other => out.push(other.to_string()),
    }
}

fn error_reason(status: reqwest::StatusCode, body: &[u8]) -> String {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let mut words = Vec::new();
    if let Some(parsed) = parsed {
        if let Some(message) = parsed.response.and_then(|r| r.message) {
            message_text(&message, &mut words);
        } else if let Some(message) = parsed.message {
            message_text(&message, &mut words);
        }
    }
    if words.is_empty() {
        format!("evolution answered {status}")
    } else {
        words.join("; ")
    }
}

/// An instance's webhook, as `POST /instance/create` and `POST /webhook/set` take it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookConfig {
    pub enabled: bool,
    pub url: String,
    /// Sent by Evolution with every delivery; a `jwt_key` entry is not sent but turned into
    /// `Authorization: Bearer <JWT>`.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub headers: serde_json::Map<String, Value>,
    /// `false`: every event goes to `url` itself, not `url/<event-name>`.
    pub by_events: bool,
    /// Media arrives inside `messages.upsert` as base64.
    pub base64: bool,
    pub events: Vec<String>,
}

impl WebhookConfig {
    /// whatsnap's webhook for an instance: every event whatsnap reads, media inline, signed
    /// with a JWT when `jwt_key` is given.
    pub fn whatsnap(url: impl Into<String>, jwt_key: Option<&str>) -> Self {
        let mut headers = serde_json::Map::new();
        if let Some(key) = jwt_key {
            headers.insert("jwt_key".to_owned(), Value::String(key.to_owned()));
        }
        Self {
            enabled: true,
            url: url.into(),
            headers,
            by_events: false,
            base64: true,
            events: WEBHOOK_EVENTS.iter().map(|e| (*e).to_owned()).collect(),
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("enabled", &self.enabled)
            .field("url", &self.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("by_events", &self.by_events)
            .field("base64", &self.base64)
            .field("events", &self.events)
            .finish()
    }
}

/// `POST /instance/create`.
#[derive(Clone)]
pub struct CreateInstance {
    pub instance_name: String,
    /// Start linking at once (Evolution connects and waits for the first QR code).
    pub qrcode: bool,
    /// The phone number (digits, country code first) to link with a pairing code.
    pub number: Option<String>,
    /// The instance's API key; Evolution makes one up when absent.
    pub token: Option<String>,
    pub webhook: Option<WebhookConfig>,
}

/// What `POST /instance/create` answers (the parts whatsnap reads).
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct CreatedInstance {
    pub instance: CreatedInstanceInfo,
    /// The instance's API key (`token`).
    pub hash: String,
    #[serde(default)]
    pub qrcode: Option<QrCode>,
}

impl fmt::Debug for CreateInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateInstance")
            .field("instance_name", &self.instance_name)
            .field("qrcode", &self.qrcode)
            .field("webhook", &self.webhook)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for CreatedInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedInstance")
            .field("instance", &self.instance)
            .field("qrcode", &self.qrcode)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedInstanceInfo {
    pub instance_name: String,
    pub instance_id: String,
    pub integration: Option<String>,
    pub status: Option<String>,
}

/// A QR code as Evolution shows it (`wa.QrCode`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QrCode {
    /// Set when linking by phone number.
    pub pairing_code: Option<String>,
    /// The raw QR payload (what a QR image encodes).
    pub code: Option<String>,
    /// A PNG data URL of the QR image.
    pub base64: Option<String>,
    /// How many codes the instance has issued in this linking attempt.
    pub count: Option<u32>,
}

/// The state of an instance's link (`connectionState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkState {
    Open,
    Connecting,
    Close,
    /// The QR codes ran out (only ever in a webhook).
    Refused,
}

impl LinkState {
    fn parse(state: &str) -> Option<Self> {
        Some(match state {
            "open" => Self::Open,
            "connecting" => Self::Connecting,
            "close" => Self::Close,
            "refused" => Self::Refused,
            _ => return None,
        })
    }
}

#[derive(Debug, Deserialize)]
struct StateAnswer {
    instance: StateInstance,
}

#[derive(Debug, Deserialize)]
struct StateInstance {
    state: Option<String>,
}

/// What `GET /instance/connect/{name}` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectAnswer {
    /// The instance is linking: the current code.
    Linking(QrCode),
    /// The instance is already open.
    Open,
}

/// An instance as `GET /instance/fetchInstances` lists it (a row of Evolution's database).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    pub id: String,
    pub name: String,
    /// `open`, `connecting` or `close`.
    pub connection_status: Option<String>,
    /// The linked account's JID, e.g. `5511999999999@s.whatsapp.net`.
    pub owner_jid: Option<String>,
    pub profile_name: Option<String>,
    pub integration: Option<String>,
    pub number: Option<String>,
    /// The instance's API key.
    pub token: Option<String>,
    pub disconnection_reason_code: Option<i64>,
}

impl fmt::Debug for InstanceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceInfo")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("connection_status", &self.connection_status)
            .field("integration", &self.integration)
            .finish_non_exhaustive()
    }
}

/// A webhook as `GET /webhook/find/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookInfo {
    pub url: String,
    pub enabled: Option<bool>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
    pub webhook_by_events: Option<bool>,
    pub webhook_base64: Option<bool>,
}

/// `POST /message/sendText/{name}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendText {
    /// Digits, country code first (`5511999999999`), or a JID.
    pub number: String,
    pub text: String,
    /// Milliseconds of "typing…" before the message leaves.
    pub delay: u32,
    pub link_preview: bool,
}

/// The kinds of media `sendMedia` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaType {
    Image,
    Document,
    Video,
    Audio,
}

impl MediaType {
    /// The kind a MIME type is sent as; anything not image, video or audio goes as a document.
    pub fn of_mime(mime: Option<&str>) -> Self {
        match mime.and_then(|m| m.split('/').next()) {
            Some("image") => Self::Image,
            Some("video") => Self::Video,
            Some("audio") => Self::Audio,
            _ => Self::Document,
        }
    }

    /// The `messageType` Evolution stores a message of this kind under.
    pub fn message_type(self) -> &'static str {
        match self {
            Self::Image => "imageMessage",
            Self::Document => "documentMessage",
            Self::Video => "videoMessage",
            Self::Audio => "audioMessage",
        }
    }
}

/// `POST /message/sendMedia/{name}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMedia {
    pub number: String,
    pub mediatype: MediaType,
    /// A URL Evolution downloads, or the file in base64.
    pub media: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mimetype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    pub delay: u32,
}

/// A message's key, as Baileys and Evolution write it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageKey {
    pub remote_jid: Option<String>,
    #[serde(default)]
    pub from_me: bool,
    pub id: String,
}

/// A message Evolution took (`sendText` / `sendMedia` answer with the stored message).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentMessage {
    pub key: MessageKey,
    pub status: Option<String>,
    pub message_timestamp: Option<Value>,
}

/// A message Evolution stored, as `POST /chat/findMessages/{name}` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    pub key: MessageKey,
    #[serde(default)]
    pub message: Value,
    pub message_type: Option<String>,
    pub message_timestamp: Option<Value>,
}

impl StoredMessage {
    /// The text of the message: its body, or a media message's caption.
    pub fn text(&self) -> Option<&str> {
        crate::webhook::text_of(&self.message)
    }
}

#[derive(Debug, Deserialize)]
struct FindMessagesAnswer {
    messages: FindMessagesPage,
}

#[derive(Debug, Deserialize)]
struct FindMessagesPage {
    #[serde(default)]
    records: Vec<StoredMessage>,
}

/// The global API key (`AUTHENTICATION_API_KEY`) or an instance's token.
#[derive(Clone)]
struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

/// A client of one Evolution API server.
#[derive(Clone, Debug)]
pub struct EvolutionClient {
    base_url: String,
    api_key: ApiKey,
    http: reqwest::Client,
}

impl EvolutionClient {
    /// A client of the server at `base_url` with its global API key; requests give up after
    /// 30 s (Evolution's own connect call waits 2 to 5 s for the first QR code).
    pub fn new(base_url: &str, api_key: &str) -> Result<Self, EvolutionError> {
        Self::with_timeout(base_url, api_key, Duration::from_secs(30))
    }

    pub fn with_timeout(
        base_url: &str,
        api_key: &str,
        timeout: Duration,
    ) -> Result<Self, EvolutionError> {
        // reqwest is built without a default TLS provider; whatsnap uses ring throughout.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("whatsnap/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EvolutionError::NotConnected(format!("HTTP client: {e}")))?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key: ApiKey(api_key.to_owned()),
            http,
        })
    }

    /// The same server, called with another key (an instance's token).
    pub fn with_key(&self, api_key: &str) -> Self {
        Self {
            api_key: ApiKey(api_key.to_owned()),
            ..self.clone()
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn url(&self, path: &str, instance: Option<&str>) -> String {
        match instance {
            Some(name) => format!("{}{path}/{}", self.base_url, encode_segment(name)),
            None => format!("{}{path}", self.base_url),
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, EvolutionError> {
        let response = request
            .header("apikey", &self.api_key.0)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    EvolutionError::NotConnected(e.without_url().to_string())
                } else {
                    EvolutionError::Unavailable {
                        http_status: None,
                        reason: e.without_url().to_string(),
                    }
                }
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| EvolutionError::Unavailable {
                http_status: Some(status.as_u16()),
                reason: e.without_url().to_string(),
            })?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| EvolutionError::Unavailable {
                http_status: Some(status.as_u16()),
                reason: format!("unexpected answer from evolution: {e}"),
            });
        }
        let reason = error_reason(status, &body);
        debug!(http_status = status.as_u16(), %reason, "evolution refused a request");
        Err(match status.as_u16() {
            401 => EvolutionError::Unauthorized(reason),
            404 => EvolutionError::NotFound(reason),
            429 => EvolutionError::RateLimited(reason),
            code if status.is_client_error() => EvolutionError::Refused {
                http_status: code,
                reason,
            },
            code => EvolutionError::Unavailable {
                http_status: Some(code),
                reason,
            },
        })
    }

    /// `POST /instance/create` (needs the global key).
    pub async fn create_instance(
        &self,
        request: &CreateInstance,
    ) -> Result<CreatedInstance, EvolutionError> {
        let mut body = json!({
            "instanceName": request.instance_name,
            "integration": INTEGRATION_BAILEYS,
            "qrcode": request.qrcode,
        });
        if let Some(number) = &request.number {
            body["number"] = json!(number);
        }
        if let Some(token) = &request.token {
            body["token"] = json!(token);
        }
        if let Some(webhook) = &request.webhook {
            body["webhook"] = json!(webhook);
        }
        self.call(
            self.http
                .post(self.url("/instance/create", None))
                .json(&body),
        )
        .await
    }

    /// `GET /instance/connect/{name}`: starts linking when the instance is closed and answers
    /// the current code; `number` (digits) asks for a pairing code instead of a scan.
    pub async fn connect(
        &self,
        instance: &str,
        number: Option<&str>,
    ) -> Result<ConnectAnswer, EvolutionError> {
        let mut request = self.http.get(self.url("/instance/connect", Some(instance)));
        if let Some(number) = number {
            request = request.query(&[("number", number)]);
        }
        let answer: Value = self.call(request).await?;
        if answer.get("error") == Some(&Value::Bool(true)) {
            return Err(EvolutionError::Refused {
                http_status: 200,
                reason: answer
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("evolution could not connect the instance")
                    .to_owned(),
            });
        }
        if answer.pointer("/instance/state").and_then(Value::as_str) == Some("open") {
            return Ok(ConnectAnswer::Open);
        }
        serde_json::from_value(answer)
            .map(ConnectAnswer::Linking)
            .map_err(|e| EvolutionError::Unavailable {
                http_status: Some(200),
                reason: format!("unexpected answer from evolution: {e}"),
            })
    }

    /// `GET /instance/connectionState/{name}`.
    pub async fn connection_state(&self, instance: &str) -> Result<LinkState, EvolutionError> {
        let answer: StateAnswer = self
            .call(
                self.http
                    .get(self.url("/instance/connectionState", Some(instance))),
            )
            .await?;
        // An instance Evolution holds in its database but has not loaded has no state: it is
        // not linked.
        Ok(answer
            .instance
            .state
            .as_deref()
            .and_then(LinkState::parse)
            .unwrap_or(LinkState::Close))
    }

    /// `DELETE /instance/logout/{name}`: unlinks the device (refused with 400 when the instance
    /// is not connected).
    pub async fn logout(&self, instance: &str) -> Result<(), EvolutionError> {
        let _: Value = self
            .call(
                self.http
                    .delete(self.url("/instance/logout", Some(instance))),
            )
            .await?;
        Ok(())
    }

    /// `DELETE /instance/delete/{name}`.
    pub async fn delete_instance(&self, instance: &str) -> Result<(), EvolutionError> {
        let _: Value = self
            .call(
                self.http
                    .delete(self.url("/instance/delete", Some(instance))),
            )
            .await?;
        Ok(())
    }

    /// `GET /instance/fetchInstances`, all of them or the one named (`NotFound` when there is
    /// no such instance).
    pub async fn fetch_instances(
        &self,
        instance: Option<&str>,
    ) -> Result<Vec<InstanceInfo>, EvolutionError> {
        let mut request = self.http.get(self.url("/instance/fetchInstances", None));
        if let Some(name) = instance {
            request = request.query(&[("instanceName", name)]);
        }
        self.call(request).await
    }

    /// The instance named, or `None` when the server has none by that name.
    pub async fn find_instance(
        &self,
        instance: &str,
    ) -> Result<Option<InstanceInfo>, EvolutionError> {
        match self.fetch_instances(Some(instance)).await {
            Ok(found) => Ok(found.into_iter().find(|i| i.name == instance)),
            Err(EvolutionError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `POST /message/sendText/{name}`.
    pub async fn send_text(
        &self,
        instance: &str,
        message: &SendText,
    ) -> Result<SentMessage, EvolutionError> {
        self.call(
            self.http
                .post(self.url("/message/sendText", Some(instance)))
                .json(message),
        )
        .await
    }

    /// `POST /message/sendMedia/{name}`.
    pub async fn send_media(
        &self,
        instance: &str,
        message: &SendMedia,
    ) -> Result<SentMessage, EvolutionError> {
        self.call(
            self.http
                .post(self.url("/message/sendMedia", Some(instance)))
                .json(message),
        )
        .await
    }

    /// `POST /webhook/set/{name}`.
    pub async fn set_webhook(
        &self,
        instance: &str,
        webhook: &WebhookConfig,
    ) -> Result<(), EvolutionError> {
        let _: Value = self
            .call(
                self.http
                    .post(self.url("/webhook/set", Some(instance)))
                    .json(&json!({ "webhook": webhook })),
            )
            .await?;
        Ok(())
    }

    /// `GET /webhook/find/{name}`: `None` when the instance has no webhook.
    pub async fn find_webhook(
        &self,
        instance: &str,
    ) -> Result<Option<WebhookInfo>, EvolutionError> {
        self.call(self.http.get(self.url("/webhook/find", Some(instance))))
            .await
    }

    /// `POST /chat/findMessages/{name}`: the messages the account sent to `remote_jid` between
    /// `from` and `to`, newest first (at most 50). Empty when the server does not keep
    /// messages (`DATABASE_SAVE_DATA_NEW_MESSAGE=false`).
    pub async fn find_sent_messages(
        &self,
        instance: &str,
        remote_jid: &str,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<StoredMessage>, EvolutionError> {
        let body = json!({
            "where": {
                "key": { "remoteJid": remote_jid, "fromMe": true },
                "messageTimestamp": { "gte": from.to_rfc3339(), "lte": to.to_rfc3339() },
            },
            "offset": 50,
            "page": 1,
        });
        let answer: FindMessagesAnswer = self
            .call(
                self.http
                    .post(self.url("/chat/findMessages", Some(instance)))
                    .json(&body),
            )
            .await?;
        Ok(answer.messages.records)
    }
}

/// A path segment, percent-encoded (instance names are the user's).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evolution_error_bodies_read_as_sentences() {
        let status = reqwest::StatusCode::BAD_REQUEST;
        let body = br#"{"status":400,"error":"Bad Request","response":{"message":[["instance requires property \"text\""]]}}"#;
        assert_eq!(
            error_reason(status, body),
            "instance requires property \"text\""
        );
        let body = br#"{"status":400,"error":"Bad Request","response":{"message":[{"exists":false,"jid":"5511@s.whatsapp.net","number":"5511"}]}}"#;
        // The number is personal data: masked in the reason, which reaches logs and GHL.
        assert_eq!(error_reason(status, body), "••• is not on WhatsApp");
        assert_eq!(
            error_reason(status, b"<html>"),
            "evolution answered 400 Bad Request"
        );
    }

    #[test]
    fn a_closed_link_is_not_sent_and_a_timeout_may_have_been() {
        let closed = EvolutionError::Unavailable {
            http_status: Some(500),
            reason: "Connection Closed".into(),
        };
        assert!(closed.into_send_error().certainly_unsent());
        let caught = EvolutionError::Refused {
            http_status: 400,
            reason: "Error: Connection Closed".into(),
        };
        assert!(caught.into_send_error().is_retryable());
        let timeout = EvolutionError::Unavailable {
            http_status: None,
            reason: "operation timed out".into(),
        };
        assert!(!timeout.into_send_error().certainly_unsent());
        let refused = EvolutionError::Refused {
            http_status: 400,
            reason: "5511 is not on WhatsApp".into(),
        };
        assert!(!refused.into_send_error().is_retryable());
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let client = EvolutionClient::new("http://127.0.0.1:1", "global-secret-key").unwrap();
        let shown = format!("{client:?} {:?}", client.with_key("instance-token"));
        assert!(!shown.contains("global-secret-key"));
        assert!(!shown.contains("instance-token"));
        let webhook = WebhookConfig::whatsnap("http://x", Some("the-jwt-key"));
        assert!(!format!("{webhook:?}").contains("the-jwt-key"));
        let create = CreateInstance {
            instance_name: "acme".into(),
            qrcode: true,
            number: None,
            token: Some("chosen-token".into()),
            webhook: Some(webhook),
        };
        assert!(!format!("{create:?}").contains("chosen-token"));
        let created: CreatedInstance = serde_json::from_value(json!({
            "instance": { "instanceName": "acme", "instanceId": "1" },
            "hash": "issued-token",
        }))
        .unwrap();
        assert!(!format!("{created:?}").contains("issued-token"));
    }

    #[test]
    fn instance_names_are_encoded_in_paths() {
        assert_eq!(encode_segment("acme-1"), "acme-1");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }
}
