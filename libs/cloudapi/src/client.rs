//! The Graph API calls a Cloud API number needs: its own record (`GET /{version}/{phone-number-id}`),
//! sends (`POST /{version}/{phone-number-id}/messages`), and received media (`GET
//! /{version}/{media-id}` gives a short-lived URL, downloaded with the same token). Every call
//! carries `Authorization: Bearer <access token>`; Meta's refusals are
//! `{"error": {"message", "type", "code", "error_subcode"?, "error_data": {"details"}?}}`.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// Meta's Graph API.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.facebook.com";

/// The Graph API version whatsnap was written against.
pub const DEFAULT_GRAPH_VERSION: &str = "v24.0";

/// Where the deployment reaches the Graph API.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// `https://graph.facebook.com` in production.
    pub graph_url: String,
    /// `v24.0`, say: every path starts with it.
    pub version: String,
    /// How long one request may take; a send given up this way may have left.
    pub timeout: Duration,
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            graph_url: DEFAULT_GRAPH_URL.to_owned(),
            version: DEFAULT_GRAPH_VERSION.to_owned(),
            timeout: Duration::from_secs(20),
        }
    }
}

/// Why a Graph call did not give what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Meta answered with an error.
    #[error("{message} (WhatsApp error {code}{})", .details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Api {
        http_status: u16,
        code: i64,
        subcode: Option<i64>,
        message: String,
        details: Option<String>,
    },
    /// The Graph API could not be reached: nothing was sent.
    #[error("the Graph API cannot be reached: {0}")]
    NotConnected(String),
    /// The call failed after it left (a timeout, an unreadable answer): it may have taken
    /// effect.
    #[error("the Graph API did not answer: {0}")]
    Unavailable(String),
}

impl GraphError {
    /// Meta's error code, when it answered one.
    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Meta asks to slow down: an app, account, number or recipient limit.
    pub fn is_rate_limit(&self) -> bool {
        matches!(
            self,
            Self::Api {
                http_status: 429,
                ..
            }
        ) || matches!(self.code(), Some(4 | 80007 | 130429 | 131048 | 131056))
    }

    /// The token is invalid, expired, or lacks the permission (`whatsapp_business_messaging`).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            Self::Api {
                http_status: 401,
                ..
            }
        ) || matches!(self.code(), Some(190 | 10 | 200..=299))
    }
}

/// What the Graph API says of a phone number id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PhoneNumberInfo {
    pub id: String,
    /// As Meta shows it, e.g. `+1 555-000-1111` or `15550001111`.
    pub display_phone_number: String,
    #[serde(default)]
    pub verified_name: Option<String>,
}

/// A received medium, as `GET /{media-id}` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MediaInfo {
    /// Valid for a few minutes, and only with the token.
    pub url: String,
    pub mime_type: String,
    #[serde(default)]
    pub file_size: Option<u64>,
}

/// The Graph API, for any number: the token is given per call.
#[derive(Clone)]
pub struct CloudClient {
    config: CloudConfig,
    http: reqwest::Client,
}

impl fmt::Debug for CloudClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudClient")
            .field("graph_url", &self.config.graph_url)
            .field("version", &self.config.version)
            .finish_non_exhaustive()
    }
}

impl CloudClient {
    pub fn new(config: CloudConfig) -> Result<Self, GraphError> {
        // reqwest is built without a default TLS provider; whatsnap uses ring throughout.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("whatsnap/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GraphError::NotConnected(format!("HTTP client: {e}")))?;
        let config = CloudConfig {
            graph_url: config.graph_url.trim_end_matches('/').to_owned(),
            version: config.version.trim_matches('/').to_owned(),
            ..config
        };
        Ok(Self { config, http })
    }

    pub fn config(&self) -> &CloudConfig {
        &self.config
    }

    /// The URL of a Graph object (a number, a medium).
    pub fn object_url(&self, id: &str) -> String {
        format!("{}/{}/{id}", self.config.graph_url, self.config.version)
    }

    /// The number's own record: proves the token may read it, and gives its display number.
    pub async fn phone_number(
        &self,
        phone_number_id: &str,
        token: &str,
    ) -> Result<PhoneNumberInfo, GraphError> {
        let request = self
            .http
            .get(self.object_url(phone_number_id))
            .query(&[("fields", "display_phone_number,verified_name")])
            .bearer_auth(token);
        let answer = self.call(request).await?;
        serde_json::from_value(answer)
            .map_err(|e| GraphError::Unavailable(format!("an unreadable phone number: {e}")))
    }

    /// Sends one message; its `wamid`.
    pub async fn send(
        &self,
        phone_number_id: &str,
        token: &str,
        message: &Value,
    ) -> Result<String, GraphError> {
        let request = self
            .http
            .post(format!("{}/messages", self.object_url(phone_number_id)))
            .bearer_auth(token)
            .json(message);
        let answer = self.call(request).await?;
        answer
            .pointer("/messages/0/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| GraphError::Unavailable("a send answer without messages[0].id".into()))
    }

    /// Where a received medium can be downloaded, and its type.
    pub async fn media(&self, media_id: &str, token: &str) -> Result<MediaInfo, GraphError> {
        let request = self.http.get(self.object_url(media_id)).bearer_auth(token);
        let answer = self.call(request).await?;
        serde_json::from_value(answer)
            .map_err(|e| GraphError::Unavailable(format!("an unreadable media record: {e}")))
    }

    /// The bytes of a medium at `url` (from [`CloudClient::media`]), at most `limit` of them.
    pub async fn download(
        &self,
        url: &str,
        token: &str,
        limit: usize,
    ) -> Result<Vec<u8>, GraphError> {
        let mut response = self
            .http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(transport)?;
        if !response.status().is_success() {
            return Err(refusal(response).await);
        }
        let too_large = |size: u64| GraphError::Api {
            http_status: 413,
            code: 131052,
            subcode: None,
            message: format!("the file is {size} bytes, more than the {limit} whatsnap keeps"),
            details: None,
        };
        if let Some(size) = response.content_length()
            && size > limit as u64
        {
            return Err(too_large(size));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > limit {
                return Err(too_large(bytes.len() as u64));
            }
        }
        Ok(bytes)
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, GraphError> {
        let response = request.send().await.map_err(transport)?;
        if !response.status().is_success() {
            return Err(refusal(response).await);
        }
        response
            .json::<Value>()
            .await
            .map_err(|e| GraphError::Unavailable(format!("an unreadable answer: {e}")))
    }
}

/// A request that failed on the way: before it left (nothing happened), or after.
fn transport(err: reqwest::Error) -> GraphError {
    if err.is_connect() {
        GraphError::NotConnected(err.to_string())
    } else {
        GraphError::Unavailable(err.to_string())
    }
}

/// Meta's error answer, read; an answer without one is described by its status.
async fn refusal(response: reqwest::Response) -> GraphError {
    let http_status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let error = body.get("error");
    let text = |pointer: &str| {
        error
            .and_then(|e| e.pointer(pointer))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(Value::as_i64)
        .unwrap_or(i64::from(http_status));
    GraphError::Api {
        http_status,
        code,
        subcode: error
            .and_then(|e| e.get("error_subcode"))
            .and_then(Value::as_i64),
        message: text("/message").unwrap_or_else(|| format!("HTTP {http_status}")),
        details: text("/error_data/details"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(http_status: u16, code: i64) -> GraphError {
        GraphError::Api {
            http_status,
            code,
            subcode: None,
            message: "m".into(),
            details: None,
        }
    }

    #[test]
    fn meta_codes_read_as_limits_and_bad_tokens() {
        assert!(api(400, 131056).is_rate_limit());
        assert!(api(429, 1).is_rate_limit());
        assert!(!api(400, 131047).is_rate_limit());
        assert!(api(401, 190).is_auth());
        assert!(api(403, 200).is_auth());
        assert!(!api(400, 100).is_auth());
    }

    #[test]
    fn an_error_names_its_code_and_details() {
        let error = GraphError::Api {
            http_status: 400,
            code: 131030,
            subcode: None,
            message: "Recipient phone number not in allowed list".into(),
            details: Some("Add the number to the allowed list".into()),
        };
        assert_eq!(
            error.to_string(),
            "Recipient phone number not in allowed list (WhatsApp error 131030: Add the number to the allowed list)"
        );
    }
}
