//! The Twilio REST calls of an account: check the credentials and the number when the account is
//! added, and send messages. The base URL is configuration (Twilio's by default) so that tests
//! and operators can point whatsnap elsewhere.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tracing::debug;

use crate::webhook::MessageStatus;

pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// An account's API credentials. The token never appears in `Debug` output or logs.
#[derive(Clone)]
pub struct Credentials {
    pub account_sid: String,
    auth_token: String,
}

impl Credentials {
    pub fn new(account_sid: impl Into<String>, auth_token: impl Into<String>) -> Self {
        Self {
            account_sid: account_sid.into(),
            auth_token: auth_token.into(),
        }
    }

    /// The Auth Token, for signing checks and for encrypting at rest; never for logs.
    pub fn auth_token(&self) -> &str {
        &self.auth_token
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"********")
            .finish()
    }
}

/// What can go wrong talking to Twilio, each with a reason a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwilioError {
    /// Twilio answered, and said no; not worth retrying as is.
    #[error("{reason}")]
    Rejected {
        code: Option<u32>,
        http_status: u16,
        reason: String,
    },
    #[error("the Twilio account {account_sid} is {status}, not active")]
    AccountNotActive { account_sid: String, status: String },
    #[error("the Twilio account does not own the number {number}")]
    NumberNotOwned { number: String },
    #[error("the Twilio number {number} cannot send SMS")]
    NumberNotSmsCapable { number: String },
    /// Twilio could not be reached or failed on its side; worth retrying later.
    #[error("Twilio is unavailable: {0}")]
    Unavailable(String),
}

/// How an [`TwilioError::Unavailable`] starts when the request never reached Twilio.
const NOT_CONNECTED: &str = "could not connect";

impl TwilioError {
    /// Whether the request certainly sent nothing: Twilio refused it, or it never connected. A
    /// timeout or a 5xx may come after Twilio took the message.
    pub fn certainly_unsent(&self) -> bool {
        match self {
            Self::Unavailable(reason) => reason.starts_with(NOT_CONNECTED),
            _ => true,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
            || matches!(
                self,
                Self::Rejected {
                    code: Some(20429),
                    ..
                }
            )
    }
}

/// A sentence for a Twilio error code: what happened and, where there is one, what to do.
pub fn reason(code: u32, message: &str) -> String {
    let known = match code {
        20003 => "Twilio refused the Account SID or Auth Token: check both in the Twilio console",
        20429 => "Twilio is rate limiting this account: the message will be tried again",
        21211 => "the recipient's number is not a valid phone number",
        21606 => "this Twilio number cannot send SMS",
        21608 => "a Twilio trial account can only send to numbers verified in the Twilio console",
        21610 => "the recipient replied STOP and unsubscribed from this number",
        21612 => "Twilio cannot route a message between these two numbers",
        21614 => "the recipient's number cannot receive SMS (a landline?)",
        21619 => "the message has no text and no media",
        30003 => "the recipient's phone is switched off or unreachable",
        30005 => "the recipient's number does not exist",
        30006 => "the recipient's number is a landline or its carrier is unreachable",
        30007 => "the carrier filtered the message as spam",
        _ => return format!("Twilio error {code}: {message}"),
    };
    format!("{known} (Twilio {code})")
}

#[derive(Debug, Deserialize)]
struct RestException {
    code: Option<u32>,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AccountResource {
    status: String,
}

#[derive(Debug, Deserialize)]
struct Capabilities {
    #[serde(default)]
    sms: bool,
}

#[derive(Debug, Deserialize)]
struct IncomingNumber {
    phone_number: String,
    capabilities: Capabilities,
}

#[derive(Debug, Deserialize)]
struct IncomingNumbers {
    incoming_phone_numbers: Vec<IncomingNumber>,
}

#[derive(Debug, Deserialize)]
struct MessageResource {
    sid: String,
    status: String,
}

/// A message as Twilio's list resource shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ListedMessage {
    pub sid: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub body: Option<String>,
    /// RFC 2822, as Twilio writes dates.
    pub date_created: Option<String>,
}

impl ListedMessage {
    pub fn created_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc2822(self.date_created.as_deref()?)
            .ok()
            .map(|at| at.with_timezone(&chrono::Utc))
    }
}

#[derive(Debug, Deserialize)]
struct MessageList {
    messages: Vec<ListedMessage>,
}

/// A message Twilio accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub sid: String,
    pub status: MessageStatus,
}

/// A message to send.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub body: &'a str,
    pub media_urls: &'a [String],
    /// Where Twilio reports the message's status.
    pub status_callback: Option<&'a str>,
}

#[derive(Clone, Debug)]
pub struct TwilioClient {
    base_url: String,
    http: reqwest::Client,
}

impl TwilioClient {
    /// A client of the Twilio API at `base_url` ([`DEFAULT_BASE_URL`] in production).
    pub fn new(base_url: &str) -> Result<Self, TwilioError> {
        Self::with_timeout(base_url, Duration::from_secs(15))
    }

    /// As [`TwilioClient::new`], with requests given up after `timeout`.
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<Self, TwilioError> {
        // reqwest is built without a default TLS provider; whatsnap uses ring throughout.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("whatsnap/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TwilioError::Unavailable(format!("HTTP client: {e}")))?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http,
        })
    }

    fn url(&self, credentials: &Credentials, path: &str) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}{path}",
            self.base_url, credentials.account_sid
        )
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        credentials: &Credentials,
        request: reqwest::RequestBuilder,
    ) -> Result<T, TwilioError> {
        let response = request
            .basic_auth(&credentials.account_sid, Some(&credentials.auth_token))
            .send()
            .await
            .map_err(|e| {
                let prefix = if e.is_connect() {
                    NOT_CONNECTED
                } else {
                    "request failed"
                };
                TwilioError::Unavailable(format!("{prefix}: {}", e.without_url()))
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| TwilioError::Unavailable(e.without_url().to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                TwilioError::Unavailable(format!("unexpected answer from Twilio: {e}"))
            });
        }
        if status.is_server_error() {
            return Err(TwilioError::Unavailable(format!(
                "Twilio answered {status}"
            )));
        }
        let exception: Option<RestException> = serde_json::from_slice(&body).ok();
        let code = exception.as_ref().and_then(|e| e.code);
        // Twilio's words may quote the recipient's number ("The 'To' number … is not valid");
        // they go into errors, events and logs.
        let message = exception
            .and_then(|e| e.message)
            .map(|m| whatsnap_secrets::mask::scrub(&m))
            .unwrap_or_else(|| status.to_string());
        debug!(
            http_status = status.as_u16(),
            ?code,
            "twilio refused a request"
        );
        Err(TwilioError::Rejected {
            code,
            http_status: status.as_u16(),
            reason: match code {
                Some(code) => reason(code, &message),
                None => format!("Twilio answered {status}: {message}"),
            },
        })
    }

    /// Checks that the credentials work, the account is active and owns `number` (E.164) with
    /// SMS capability.
    pub async fn verify(&self, credentials: &Credentials, number: &str) -> Result<(), TwilioError> {
        let account: AccountResource = self
            .call(credentials, self.http.get(self.url(credentials, ".json")))
            .await?;
        if account.status != "active" {
            return Err(TwilioError::AccountNotActive {
                account_sid: credentials.account_sid.clone(),
                status: account.status,
            });
        }
        let numbers: IncomingNumbers = self
            .call(
                credentials,
                self.http
                    .get(self.url(credentials, "/IncomingPhoneNumbers.json"))
                    .query(&[("PhoneNumber", number), ("PageSize", "50")]),
            )
            .await?;
        let owned = numbers
            .incoming_phone_numbers
            .iter()
            .find(|n| n.phone_number == number)
            .ok_or_else(|| TwilioError::NumberNotOwned {
                number: number.to_owned(),
            })?;
        if !owned.capabilities.sms {
            return Err(TwilioError::NumberNotSmsCapable {
                number: number.to_owned(),
            });
        }
        Ok(())
    }

    /// The account's messages from `from` to `to` sent on `day` (UTC), newest first, at most
    /// 100 (`GET Messages.json?To=&From=&DateSent=`): how an outbox finds a send whose answer
    /// it never got.
    pub async fn list_messages(
        &self,
        credentials: &Credentials,
        from: &str,
        to: &str,
        day: chrono::NaiveDate,
    ) -> Result<Vec<ListedMessage>, TwilioError> {
        let day = day.format("%Y-%m-%d").to_string();
        let list: MessageList = self
            .call(
                credentials,
                self.http
                    .get(self.url(credentials, "/Messages.json"))
                    .query(&[
                        ("To", to),
                        ("From", from),
                        ("DateSent", day.as_str()),
                        ("PageSize", "100"),
                    ]),
            )
            .await?;
        Ok(list.messages)
    }

    /// Sends a message once (a timeout or a 5xx is returned, not retried: Twilio may have
    /// taken it); Twilio reports what becomes of it to `status_callback`.
    pub async fn send(
        &self,
        credentials: &Credentials,
        message: &Outgoing<'_>,
    ) -> Result<SentMessage, TwilioError> {
        let mut form = vec![
            ("To", message.to),
            ("From", message.from),
            ("Body", message.body),
        ];
        form.extend(
            message
                .media_urls
                .iter()
                .map(|url| ("MediaUrl", url.as_str())),
        );
        if let Some(callback) = message.status_callback {
            form.push(("StatusCallback", callback));
        }
        let sent: MessageResource = self
            .call(
                credentials,
                self.http
                    .post(self.url(credentials, "/Messages.json"))
                    .form(&form),
            )
            .await?;
        Ok(SentMessage {
            status: sent.status.parse().unwrap_or(MessageStatus::Queued),
            sid: sent.sid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_errors_read_as_advice_and_unknown_ones_keep_twilios_words() {
        assert_eq!(
            reason(21610, "Attempt to send to unsubscribed recipient"),
            "the recipient replied STOP and unsubscribed from this number (Twilio 21610)"
        );
        assert_eq!(
            reason(12345, "Something new"),
            "Twilio error 12345: Something new"
        );
    }

    #[test]
    fn the_auth_token_never_shows_in_debug_output() {
        let credentials = Credentials::new("AC123", "super-secret-token");
        let shown = format!("{credentials:?}");
        assert!(shown.contains("AC123"));
        assert!(!shown.contains("super-secret-token"));
    }
}
