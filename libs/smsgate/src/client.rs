//! The REST calls whatsnap makes to an SMSGate gateway (connectors.md §3.1 and §6a): the app's
//! local server on the phone (routes at the root), the public cloud
//! (`https://api.sms-gate.app/3rdparty/v1`) or a private server, all with HTTP Basic auth. Sends
//! carry whatsnap's own `id`, so a send repeated after a lost answer is refused with 409 instead
//! of leaving twice, and `GET /messages/{id}` finds it.
//!
//! The username and password never show in `Debug` output or logs.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::debug;
use whatsnap_connector::{ConnectorError, SendError};

/// The public cloud's API, the production default.
pub const CLOUD_URL: &str = "https://api.sms-gate.app/3rdparty/v1";

/// The events whatsnap registers its webhooks for.
pub const WEBHOOK_EVENTS: [&str; 6] = [
    "sms:received",
    "sms:sent",
    "sms:delivered",
    "sms:failed",
    "mms:received",
    "system:ping",
];

/// What can go wrong talking to a gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmsGateError {
    /// 401: the username or password is wrong.
    #[error("SMSGate refused the username and password")]
    Unauthorized,
    /// 404: no such message or webhook.
    #[error("{0}")]
    NotFound(String),
    /// 409: a message with this id exists already.
    #[error("{0}")]
    Conflict(String),
    /// 503 on a send: the queue is full or the device is not online; nothing was queued.
    #[error("SMSGate cannot take more messages now: {0}")]
    QueueFull(String),
    /// Another 4xx: the gateway answered and refused the request as it is.
    #[error("{reason}")]
    Refused { http_status: u16, reason: String },
    /// The gateway could not be reached at all: nothing was done.
    #[error("SMSGate cannot be reached: {0}")]
    NotConnected(String),
    /// A timeout, a 5xx or an unreadable answer: the request may or may not have taken effect.
    #[error("SMSGate failed: {0}")]
    Unavailable(String),
}

impl SmsGateError {
    /// As the outbox needs it for a send.
    pub fn into_send_error(self) -> SendError {
        match self {
            Self::Unauthorized => SendError::Refused {
                reason: "SMSGate refused the username and password".to_owned(),
                code: Some("401".to_owned()),
            },
            Self::NotFound(reason) | Self::Conflict(reason) => {
                SendError::Refused { reason, code: None }
            }
            Self::Refused {
                http_status,
                reason,
            } => SendError::Refused {
                reason,
                code: Some(http_status.to_string()),
            },
            error @ (Self::QueueFull(_) | Self::NotConnected(_)) => {
                SendError::NotConnected(error.to_string())
            }
            Self::Unavailable(reason) => SendError::Unknown(reason),
        }
    }

    /// As a connector reports it when an account is added or acted on.
    pub fn into_connector_error(self) -> ConnectorError {
        match self {
            Self::Unauthorized => ConnectorError::Refused(
                "SMSGate refused the username and password: copy them again from the app \
                 (Home > Local server or Cloud server)"
                    .to_owned(),
            ),
            Self::NotFound(reason) | Self::Conflict(reason) => ConnectorError::Invalid(reason),
            Self::Refused { reason, .. } => ConnectorError::Refused(reason),
            error @ (Self::QueueFull(_) | Self::NotConnected(_) | Self::Unavailable(_)) => {
                ConnectorError::Unavailable(error.to_string())
            }
        }
    }
}

/// `POST /messages`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    /// whatsnap's id of the message: the idempotency key.
    pub id: String,
    pub text_message: TextMessage,
    pub phone_numbers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sim_number: Option<u8>,
    pub with_delivery_report: bool,
    /// Cloud and private servers: the device to send from, when the account names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextMessage {
    pub text: String,
}

/// A message's state, as `POST /messages` (202) and `GET /messages/{id}` answer it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageState {
    pub id: String,
    #[serde(default)]
    pub device_id: Option<String>,
    /// `Pending`, `Processed`, `Sent`, `Delivered` or `Failed`.
    pub state: String,
    #[serde(default)]
    pub recipients: Vec<RecipientState>,
}

impl MessageState {
    /// Whether the phone has done with it: sent it (and maybe had it delivered), or failed.
    pub fn left_the_phone(&self) -> bool {
        matches!(self.state.as_str(), "Sent" | "Delivered" | "Failed")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipientState {
    pub phone_number: String,
    pub state: String,
    #[serde(default)]
    pub error: Option<String>,
}

/// A webhook as `POST /webhooks` takes it and `GET /webhooks` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

/// A device of a cloud or private server account (`GET /devices`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
}

/// The phone's health (`GET /health` of the local server).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Health {
    /// `pass`, `warn` or `fail`.
    pub status: String,
}

/// The username and password shown in the app.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(********)")
    }
}

/// A client of one gateway with one account's credentials.
#[derive(Clone, Debug)]
pub struct SmsGateClient {
    base_url: String,
    credentials: Credentials,
    http: reqwest::Client,
}

impl SmsGateClient {
    pub fn new(
        base_url: &str,
        credentials: Credentials,
        timeout: Duration,
    ) -> Result<Self, SmsGateError> {
        // reqwest is built without a default TLS provider; whatsnap uses ring throughout.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("whatsnap/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SmsGateError::NotConnected(format!("HTTP client: {e}")))?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            credentials,
            http,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Sends `request` with the account's credentials; the raw answer of a success.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), SmsGateError> {
        let response = request
            .basic_auth(&self.credentials.username, Some(&self.credentials.password))
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    SmsGateError::NotConnected(e.without_url().to_string())
                } else {
                    SmsGateError::Unavailable(e.without_url().to_string())
                }
            })?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| SmsGateError::Unavailable(e.without_url().to_string()))?
            .to_vec();
        if (200..300).contains(&status) {
            return Ok((status, body));
        }
        let reason = error_reason(status, &body);
        debug!(http_status = status, %reason, "SMSGate refused a request");
        Err(match status {
            401 | 403 => SmsGateError::Unauthorized,
            404 => SmsGateError::NotFound(reason),
            409 => SmsGateError::Conflict(reason),
            503 => SmsGateError::QueueFull(reason),
            code if (400..500).contains(&code) => SmsGateError::Refused {
                http_status: code,
                reason,
            },
            _ => SmsGateError::Unavailable(reason),
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, SmsGateError> {
        let (_, body) = self.call(request).await?;
        serde_json::from_slice(&body)
            .map_err(|e| SmsGateError::Unavailable(format!("unexpected answer from SMSGate: {e}")))
    }

    /// `POST /messages`: the phone queues the message (202).
    pub async fn send(&self, message: &SendMessage) -> Result<MessageState, SmsGateError> {
        self.json(self.http.post(self.url("/messages")).json(message))
            .await
    }

    /// `GET /messages/{id}`.
    pub async fn message(&self, id: &str) -> Result<MessageState, SmsGateError> {
        self.json(
            self.http
                .get(self.url(&format!("/messages/{}", encode(id)))),
        )
        .await
    }

    /// `POST /webhooks`: registers (or, with the same id, replaces) a webhook.
    pub async fn register_webhook(&self, webhook: &Webhook) -> Result<(), SmsGateError> {
        self.call(self.http.post(self.url("/webhooks")).json(webhook))
            .await
            .map(drop)
    }

    /// `GET /webhooks`.
    pub async fn webhooks(&self) -> Result<Vec<Webhook>, SmsGateError> {
        self.json(self.http.get(self.url("/webhooks"))).await
    }

    /// `DELETE /webhooks/{id}`; a webhook that is not there is already gone.
    pub async fn delete_webhook(&self, id: &str) -> Result<(), SmsGateError> {
        match self
            .call(
                self.http
                    .delete(self.url(&format!("/webhooks/{}", encode(id)))),
            )
            .await
        {
            Ok(_) | Err(SmsGateError::NotFound(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// `GET /devices` (cloud and private servers).
    pub async fn devices(&self) -> Result<Vec<Device>, SmsGateError> {
        self.json(self.http.get(self.url("/devices"))).await
    }

    /// `GET /health` (the phone's local server).
    pub async fn health(&self) -> Result<Health, SmsGateError> {
        self.json(self.http.get(self.url("/health"))).await
    }
}

/// SMSGate's error body: `{"message": "…"}` (the local server) or `{"error": "…"}`.
fn error_reason(status: u16, body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    parsed
        .as_ref()
        .and_then(|v| v.get("message").or_else(|| v.get("error")))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("SMSGate answered {status}"))
}

/// A path segment, percent-encoded.
fn encode(segment: &str) -> String {
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
    fn a_full_queue_and_an_unreachable_phone_are_certainly_unsent_and_a_timeout_may_not_be() {
        assert!(
            SmsGateError::QueueFull("ensure device is online".into())
                .into_send_error()
                .certainly_unsent()
        );
        assert!(
            SmsGateError::NotConnected("refused".into())
                .into_send_error()
                .is_retryable()
        );
        assert!(
            !SmsGateError::Unavailable("timed out".into())
                .into_send_error()
                .certainly_unsent()
        );
        assert!(
            !SmsGateError::Refused {
                http_status: 400,
                reason: "invalid phone number".into()
            }
            .into_send_error()
            .is_retryable()
        );
    }

    #[test]
    fn error_bodies_read_as_sentences() {
        assert_eq!(
            error_reason(400, br#"{"message":"invalid phone number"}"#),
            "invalid phone number"
        );
        assert_eq!(error_reason(500, b"<html>"), "SMSGate answered 500");
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let client = SmsGateClient::new(
            "http://127.0.0.1:1",
            Credentials {
                username: "the-user".into(),
                password: "the-password".into(),
            },
            Duration::from_secs(1),
        )
        .unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("the-user") && !shown.contains("the-password"));
    }

    #[test]
    fn ids_are_encoded_in_paths() {
        assert_eq!(encode("0190a-b"), "0190a-b");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
