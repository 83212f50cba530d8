//! The REST calls whatsnap makes to a BlueBubbles Server on the user's Mac (connectors.md §4 and
//! §6a, read against `BlueBubblesApp/bluebubbles-server` 1.9.9): reachability (`ping`, `server
//! info`), webhooks, chats, sends and the message query that catches up after an outage and
//! finds a send whose answer was lost. Every call carries the server password as BlueBubbles
//! wants it, in the query (`?password=`); the password never shows in `Debug` output or logs.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::debug;
use whatsnap_connector::{ConnectorError, SendError};

use crate::message::BbMessage;

/// The events whatsnap subscribes its webhook to.
pub const WEBHOOK_EVENTS: [&str; 3] = ["new-message", "updated-message", "message-send-error"];

/// What can go wrong talking to a BlueBubbles server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlueBubblesError {
    /// 401: the password is missing or wrong.
    #[error("the BlueBubbles server refused the password: {0}")]
    Unauthorized(String),
    /// 404: no such chat, message or webhook.
    #[error("{0}")]
    NotFound(String),
    /// Another 4xx: the server answered and refused the request as it is.
    #[error("{reason}")]
    Refused { http_status: u16, reason: String },
    /// The Mac could not be reached at all: nothing was done.
    #[error("the Mac cannot be reached: {0}")]
    Unreachable(String),
    /// A timeout, a 5xx or an unreadable answer: the request may or may not have taken effect.
    #[error("the BlueBubbles server failed: {0}")]
    Failed(String),
}

impl BlueBubblesError {
    /// As the outbox needs it for a send.
    pub fn into_send_error(self) -> SendError {
        match self {
            Self::Unauthorized(reason) => SendError::Refused {
                reason: format!("the BlueBubbles server refused the password: {reason}"),
                code: Some("401".to_owned()),
            },
            // BlueBubbles answers 400 to a second send with a `tempGuid` still in flight: the
            // first one may yet go out.
            Self::Refused { reason, .. } if reason.contains("already queued") => {
                SendError::Unknown(reason)
            }
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
            Self::Unreachable(reason) => {
                SendError::NotConnected(format!("the Mac cannot be reached: {reason}"))
            }
            Self::Failed(reason) => SendError::Unknown(reason),
        }
    }

    /// As a user adding an account needs it.
    pub fn into_connector_error(self) -> ConnectorError {
        match self {
            Self::Unauthorized(_) => ConnectorError::Refused(
                "the BlueBubbles server refused the password (401): give the password set in \
                 BlueBubbles Server on the Mac"
                    .to_owned(),
            ),
            Self::NotFound(reason) => ConnectorError::Invalid(reason),
            Self::Refused { reason, .. } => ConnectorError::Refused(reason),
            Self::Unreachable(reason) => ConnectorError::Unavailable(format!(
                "the Mac's BlueBubbles server cannot be reached ({reason}): check that the Mac \
                 is on and awake, BlueBubbles Server is running, and the URL (or its tunnel) \
                 is right"
            )),
            error @ Self::Failed(_) => ConnectorError::Unavailable(error.to_string()),
        }
    }
}

/// BlueBubbles' envelope: `{status, message, data, error?, metadata?}`.
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    message: Option<String>,
    data: Option<T>,
    error: Option<ErrorDetail>,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    message: Option<String>,
}

/// What `GET /api/v1/server/info` tells (the fields whatsnap reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServerInfo {
    pub server_version: String,
    #[serde(default)]
    pub os_version: Option<String>,
    #[serde(default)]
    pub private_api: Option<bool>,
    #[serde(default)]
    pub detected_imessage: Option<String>,
}

/// A webhook registered on the server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Webhook {
    pub id: i64,
    pub url: String,
    #[serde(default)]
    pub events: Vec<Value>,
}

/// A chat, as `GET /api/v1/chat/:guid` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chat {
    pub guid: String,
}

/// The body of `POST /api/v1/message/query` (the fields whatsnap uses).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_guid: Option<String>,
    /// Messages created after this time, in ms since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    pub with: Vec<String>,
    pub sort: &'static str,
    pub offset: u32,
    pub limit: u32,
}

/// A file to send with `POST /api/v1/message/attachment`.
#[derive(Debug, Clone)]
pub struct FileToSend {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// The server password; never printed.
#[derive(Clone)]
struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

/// A client of one Mac's BlueBubbles server.
#[derive(Debug, Clone)]
pub struct BlueBubblesClient {
    base_url: String,
    password: Password,
    http: reqwest::Client,
}

impl BlueBubblesClient {
    pub fn new(
        base_url: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<Self, BlueBubblesError> {
        // reqwest is built without a default TLS provider; whatsnap uses ring throughout.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("whatsnap/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BlueBubblesError::Unreachable(format!("HTTP client: {e}")))?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            password: Password(password.to_owned()),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.base_url)
    }

    /// Sends `request` with the password; the answer's body when it is a success, the
    /// refusal (by status) otherwise.
    async fn answer(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<String, BlueBubblesError> {
        let response = request
            .query(&[("password", self.password.0.as_str())])
            .send()
            .await
            .map_err(|e| {
                // The URL carries the password: never show it.
                let e = e.without_url();
                if e.is_connect() {
                    BlueBubblesError::Unreachable(e.to_string())
                } else {
                    BlueBubblesError::Failed(format!("{what}: {e}"))
                }
            })?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| BlueBubblesError::Failed(format!("{what}: {}", e.without_url())))?;
        debug!(what, status, "bluebubbles answered");
        if (200..300).contains(&status) {
            return Ok(text);
        }
        let reason = serde_json::from_str::<Envelope<Value>>(&text)
            .ok()
            .and_then(|e| {
                e.error
                    .and_then(|d| d.message)
                    .or(e.message)
                    .filter(|m| !m.is_empty())
            })
            .unwrap_or_else(|| format!("HTTP {status}"));
        Err(match status {
            401 | 403 => BlueBubblesError::Unauthorized(reason),
            404 => BlueBubblesError::NotFound(format!("{what}: {reason}")),
            400..=499 => BlueBubblesError::Refused {
                http_status: status,
                reason: format!("{what}: {reason}"),
            },
            _ => BlueBubblesError::Failed(format!("{what}: {reason} (HTTP {status})")),
        })
    }

    /// As [`Self::answer`], reading the envelope's `data`.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T, BlueBubblesError> {
        let text = self.answer(request, what).await?;
        match serde_json::from_str::<Envelope<T>>(&text) {
            Ok(Envelope {
                data: Some(data), ..
            }) => Ok(data),
            Ok(_) => Err(BlueBubblesError::Failed(format!(
                "{what}: no data in the answer"
            ))),
            Err(e) => Err(BlueBubblesError::Failed(format!(
                "{what}: unreadable answer: {e}"
            ))),
        }
    }

    /// `GET /api/v1/ping`: the server is up and the password right.
    pub async fn ping(&self) -> Result<(), BlueBubblesError> {
        self.answer(self.http.get(self.url("ping")), "ping")
            .await
            .map(drop)
    }

    /// `GET /api/v1/server/info`.
    pub async fn server_info(&self) -> Result<ServerInfo, BlueBubblesError> {
        self.call(self.http.get(self.url("server/info")), "server info")
            .await
    }

    /// `GET /api/v1/webhook`.
    pub async fn webhooks(&self) -> Result<Vec<Webhook>, BlueBubblesError> {
        self.call(self.http.get(self.url("webhook")), "list webhooks")
            .await
    }

    /// `POST /api/v1/webhook` for whatsnap's events.
    pub async fn add_webhook(&self, url: &str) -> Result<Webhook, BlueBubblesError> {
        let body = json!({ "url": url, "events": WEBHOOK_EVENTS });
        self.call(
            self.http.post(self.url("webhook")).json(&body),
            "add webhook",
        )
        .await
    }

    /// `DELETE /api/v1/webhook/:id` (answered without `data`).
    pub async fn delete_webhook(&self, id: i64) -> Result<(), BlueBubblesError> {
        self.answer(
            self.http.delete(self.url(&format!("webhook/{id}"))),
            "delete webhook",
        )
        .await
        .map(drop)
    }

    /// `GET /api/v1/chat/:guid`: the chat, when the Mac has it.
    pub async fn chat(&self, guid: &str) -> Result<Option<Chat>, BlueBubblesError> {
        let path = format!("chat/{}", encode_segment(guid));
        match self.call(self.http.get(self.url(&path)), "find chat").await {
            Ok(chat) => Ok(Some(chat)),
            Err(BlueBubblesError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `POST /api/v1/message/text` through AppleScript (no Private API needed), `tempGuid`
    /// whatsnap's id of the message.
    pub async fn send_text(
        &self,
        chat_guid: &str,
        temp_guid: &str,
        text: &str,
    ) -> Result<BbMessage, BlueBubblesError> {
        let body = json!({
            "chatGuid": chat_guid,
            "tempGuid": temp_guid,
            "message": text,
            "method": "apple-script",
        });
        self.call(
            self.http.post(self.url("message/text")).json(&body),
            "send text",
        )
        .await
    }

    /// `POST /api/v1/message/attachment`, multipart.
    pub async fn send_attachment(
        &self,
        chat_guid: &str,
        temp_guid: &str,
        file: &FileToSend,
    ) -> Result<BbMessage, BlueBubblesError> {
        let boundary = format!("whatsnap-{}", uuid::Uuid::now_v7().simple());
        let body = multipart(
            &boundary,
            &[
                ("chatGuid", chat_guid),
                ("tempGuid", temp_guid),
                ("name", &file.name),
                ("method", "apple-script"),
            ],
            file,
        );
        let request = self
            .http
            .post(self.url("message/attachment"))
            .header(
                http::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
        self.call(request, "send attachment").await
    }

    /// `POST /api/v1/message/query`.
    pub async fn query_messages(
        &self,
        query: &MessageQuery,
    ) -> Result<Vec<BbMessage>, BlueBubblesError> {
        self.call(
            self.http.post(self.url("message/query")).json(query),
            "query messages",
        )
        .await
    }
}

/// A chat GUID as one path segment (`iMessage;-;+1555…` → `iMessage%3B-%3B%2B1555…`).
fn encode_segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A `multipart/form-data` body of text fields and one file, `attachment`. Written here rather
/// than through reqwest's `multipart` feature: one request shape, and no second build of
/// reqwest for every crate of the workspace.
fn multipart(boundary: &str, fields: &[(&str, &str)], file: &FileToSend) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    let file_name: String = file
        .name
        .chars()
        .map(|c| if c == '"' || c.is_control() { '_' } else { c })
        .collect();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"attachment\"; \
             filename=\"{file_name}\"\r\nContent-Type: {}\r\n\r\n",
            file.content_type
        )
        .as_bytes(),
    );
    body.extend_from_slice(&file.bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_guids_are_one_path_segment() {
        assert_eq!(
            encode_segment("iMessage;-;+15551234567"),
            "iMessage%3B-%3B%2B15551234567"
        );
        assert_eq!(encode_segment("SMS;-;a b"), "SMS%3B-%3Ba%20b");
    }

    #[test]
    fn a_multipart_body_holds_the_fields_and_the_file() {
        let file = FileToSend {
            name: "menu \"final\".pdf".into(),
            content_type: "application/pdf".into(),
            bytes: b"%PDF-1".to_vec(),
        };
        let body = String::from_utf8(multipart("b0", &[("chatGuid", "SMS;-;+1")], &file)).unwrap();
        assert!(body.starts_with(
            "--b0\r\nContent-Disposition: form-data; name=\"chatGuid\"\r\n\r\nSMS;-;+1\r\n"
        ));
        assert!(body.contains("filename=\"menu _final_.pdf\"\r\nContent-Type: application/pdf\r\n\r\n%PDF-1\r\n--b0--\r\n"));
    }

    #[test]
    fn errors_tell_the_outbox_whether_the_mac_may_have_sent() {
        assert!(
            BlueBubblesError::Unreachable("refused".into())
                .into_send_error()
                .certainly_unsent()
        );
        assert!(
            !BlueBubblesError::Failed("timeout".into())
                .into_send_error()
                .certainly_unsent()
        );
        let queued = BlueBubblesError::Refused {
            http_status: 400,
            reason: "Message is already queued to be sent! (Temp GUID: x)".into(),
        };
        assert!(!queued.into_send_error().certainly_unsent());
        assert!(
            !BlueBubblesError::Unauthorized("no".into())
                .into_send_error()
                .is_retryable()
        );
    }
}
