//! Cloud API numbers behind whatsnap's seam. [`Connector::check`] reads the number's record with
//! its token (proving both) and keeps the token, the app secret and a fresh verify token sealed;
//! the account is connected at once ([`Connector::added`]): there is no device and no link.
//! [`Connector::pairing`] gives the callback URL and verify token to enter in Meta's app
//! dashboard, [`Connector::verify_webhook`] answers Meta's check of that URL, and
//! [`Connector::webhook`] reads what Meta then posts. Replies leave as text, media links or
//! templates ([`crate::template`]).

use std::fmt;

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;
use tracing::warn;
use uuid::Uuid;
use whatsnap_connector::{
    AccountRef, Connector, ConnectorError, ConnectorEvent, NewAccount, Outgoing, Pairing,
    SendError, Sent, WebhookError, WebhookRequest,
};
use whatsnap_events::{AccountKind, Attachment, LocationId};
use whatsnap_secrets::{Sealed, SecretKey};

use crate::client::{CloudClient, CloudConfig, GraphError};
use crate::template::TemplateRequest;
use crate::webhook;

/// The engine's name in events, settings, the CLI and the webhook URL.
pub const ENGINE: &str = "cloud";

/// The operation name of a send in the log and in fail point names.
pub const SEND: &str = "cloud.send";

/// The largest received file fetched: what whatsnap's media store keeps.
pub const MAX_MEDIA_BYTES: usize = 16 * 1024 * 1024;

/// The URL Meta posts an account's webhooks to.
pub fn webhook_url(public_base_url: &str, location: &LocationId, account_id: Uuid) -> String {
    format!(
        "{}/webhooks/{ENGINE}/{location}/{account_id}",
        public_base_url.trim_end_matches('/')
    )
}

/// What a user gives to add a Cloud API number. No `Debug`: it holds secrets.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GivenSettings {
    #[serde(default)]
    phone_number_id: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    app_secret: String,
}

/// What a Cloud API account keeps (secrets sealed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudSettings {
    pub phone_number_id: String,
    pub access_token: Sealed,
    /// Signs Meta's webhooks (`X-Hub-Signature-256`).
    pub app_secret: Sealed,
    /// What Meta's check of the webhook URL must carry (`hub.verify_token`).
    pub verify_token: Sealed,
    /// The number in E.164, as Meta displays it.
    pub display_phone_number: String,
    #[serde(default)]
    pub verified_name: Option<String>,
}

impl fmt::Debug for CloudSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudSettings")
            .field("phone_number_id", &self.phone_number_id)
            .finish_non_exhaustive()
    }
}

impl CloudSettings {
    pub fn of(settings: &Value) -> Result<Self, ConnectorError> {
        serde_json::from_value(settings.clone()).map_err(|e| {
            ConnectorError::Invalid(format!("the account's cloud settings are unreadable: {e}"))
        })
    }
}

/// A sealed secret of the account, opened.
fn open(account: &AccountRef, sealed: &Sealed, what: &str) -> Result<String, ConnectorError> {
    account
        .secret_key
        .open(sealed)
        .map(|opened| opened.expose().to_owned())
        .map_err(|e| ConnectorError::Invalid(format!("the account's {what} cannot be opened: {e}")))
}

/// The Cloud API engine of WhatsApp accounts.
#[derive(Debug, Clone)]
pub struct CloudConnector {
    client: CloudClient,
    /// Where Meta reaches whatsnap's gateway; without it no callback URL can be shown.
    public_base_url: Option<String>,
}

impl CloudConnector {
    pub fn new(
        config: CloudConfig,
        public_base_url: Option<String>,
    ) -> Result<Self, ConnectorError> {
        let client =
            CloudClient::new(config).map_err(|e| ConnectorError::Unavailable(e.to_string()))?;
        Ok(Self {
            client,
            public_base_url,
        })
    }

    pub fn client(&self) -> &CloudClient {
        &self.client
    }

    /// The account's settings and its access token, opened, for a send.
    fn sending(account: &AccountRef) -> Result<(CloudSettings, String), SendError> {
        let refused = |e: ConnectorError| SendError::Refused {
            reason: e.to_string(),
            code: None,
        };
        let settings = CloudSettings::of(&account.settings).map_err(refused)?;
        let token = open(account, &settings.access_token, "access token").map_err(refused)?;
        Ok((settings, token))
    }

    /// The media id of an attachment a webhook named by its Graph URL.
    fn media_id<'a>(&self, attachment: &'a Attachment) -> Option<&'a str> {
        let prefix = self.client.object_url("");
        attachment
            .url
            .strip_prefix(prefix.as_str())
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
    }

    async fn send_message(
        &self,
        settings: &CloudSettings,
        token: &str,
        message: Value,
    ) -> Result<String, SendError> {
        self.client
            .send(&settings.phone_number_id, token, &message)
            .await
            .map_err(send_error)
    }

    /// Text and files: one message per file, the text as the first file's caption where its
    /// kind takes one, else a text message first.
    async fn send_media(
        &self,
        settings: &CloudSettings,
        token: &str,
        outgoing: &Outgoing,
        to: &str,
    ) -> Result<String, SendError> {
        let mut messages = Vec::new();
        let mut caption = Some(outgoing.body.trim()).filter(|b| !b.is_empty());
        let first_takes_caption = outgoing
            .attachments
            .first()
            .is_some_and(|a| MediaKind::of(a).takes_caption());
        if let Some(text) = caption.filter(|_| !first_takes_caption) {
            messages.push(text_message(to, text));
            caption = None;
        }
        for attachment in &outgoing.attachments {
            messages.push(media_message(to, attachment, caption.take())?);
        }
        // A failure after the first message is logged, not returned: the outbox would send the
        // first again.
        let mut first = None;
        for (index, message) in messages.into_iter().enumerate() {
            match self.send_message(settings, token, message).await {
                Ok(id) => {
                    first.get_or_insert(id);
                }
                Err(error) if first.is_none() => return Err(error),
                Err(error) => warn!(
                    message_id = %outgoing.message_id,
                    part = index,
                    %error,
                    "the cloud api did not send a part after the first"
                ),
            }
        }
        first.ok_or_else(|| SendError::Refused {
            reason: "nothing to send".into(),
            code: None,
        })
    }
}

/// A Graph error of a send, as the outbox needs it.
fn send_error(error: GraphError) -> SendError {
    match &error {
        GraphError::NotConnected(reason) => SendError::NotConnected(reason.clone()),
        GraphError::Unavailable(reason) => SendError::Unknown(reason.clone()),
        _ if error.is_rate_limit() => SendError::RateLimited(error.to_string()),
        GraphError::Api { code, .. } if code.to_string() == webhook::RE_ENGAGEMENT => {
            SendError::Refused {
                reason: webhook::outside_window(),
                code: Some(webhook::RE_ENGAGEMENT.to_owned()),
            }
        }
        // "Service temporarily unavailable": Meta took nothing.
        GraphError::Api {
            http_status: 503, ..
        }
        | GraphError::Api {
            code: 2 | 131016, ..
        } => SendError::NotConnected(error.to_string()),
        GraphError::Api {
            http_status: 500.., ..
        } => SendError::Unknown(error.to_string()),
        GraphError::Api { code, .. } if error.is_auth() => SendError::Refused {
            reason: format!("Meta refused the account's access token: {error}"),
            code: Some(code.to_string()),
        },
        GraphError::Api { code, .. } => SendError::Refused {
            reason: error.to_string(),
            code: Some(code.to_string()),
        },
    }
}

/// How a file leaves: Meta's media types, and whether they take a caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
}

impl MediaKind {
    fn of(attachment: &Attachment) -> Self {
        let mime = attachment.content_type.as_deref().unwrap_or_default();
        let path = attachment.url.split(['?', '#']).next().unwrap_or_default();
        let extension = path
            .rsplit_once('.')
            .map(|(_, ext)| ext.to_ascii_lowercase())
            .unwrap_or_default();
        match (
            mime.split('/').next().unwrap_or_default(),
            extension.as_str(),
        ) {
            ("image", _) if mime != "image/webp" => Self::Image,
            ("video", _) => Self::Video,
            ("audio", _) => Self::Audio,
            ("", "jpg" | "jpeg" | "png") => Self::Image,
            ("", "mp4" | "3gp") => Self::Video,
            ("", "mp3" | "ogg" | "opus" | "aac" | "amr" | "m4a") => Self::Audio,
            _ => Self::Document,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
            Self::Audio => "audio",
            Self::Document => "document",
        }
    }

    fn takes_caption(self) -> bool {
        self != Self::Audio
    }
}

/// `14155550100` from `+14155550100`: WhatsApp's `to`.
fn wa_number(e164: &str) -> String {
    e164.trim().trim_start_matches('+').to_owned()
}

fn text_message(to: &str, body: &str) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": { "preview_url": false, "body": body },
    })
}

fn media_message(
    to: &str,
    attachment: &Attachment,
    caption: Option<&str>,
) -> Result<Value, SendError> {
    if !attachment.url.starts_with("https://") && !attachment.url.starts_with("http://") {
        return Err(SendError::Refused {
            reason: "the Cloud API sends files by link: an attachment needs an http(s) URL".into(),
            code: None,
        });
    }
    let kind = MediaKind::of(attachment);
    let mut media = json!({ "link": attachment.url });
    if let Some(caption) = caption.filter(|_| kind.takes_caption()) {
        media["caption"] = caption.into();
    }
    if kind == MediaKind::Document {
        let name = attachment.file_name.clone().or_else(|| {
            attachment
                .url
                .split(['?', '#'])
                .next()
                .and_then(|p| p.rsplit('/').next())
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
        });
        if let Some(name) = name {
            media["filename"] = name.into();
        }
    }
    let mut message = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind.as_str(),
    });
    message[kind.as_str()] = media;
    Ok(message)
}

fn template_message(to: &str, template: &TemplateRequest) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "template": template.to_json(),
    })
}

/// `+15550001111` from Meta's display form (`+1 555-000-1111`, `15550001111`).
fn display_e164(display: &str) -> Option<String> {
    let digits: String = display.chars().filter(char::is_ascii_digit).collect();
    (8..=15)
        .contains(&digits.len())
        .then(|| format!("+{digits}"))
}

/// A verify token for Meta's webhook check: 128 random bits, hex.
fn new_verify_token() -> String {
    rand::random::<[u8; 16]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A check of the number with Meta, as a refusal a user can act on.
fn check_error(phone_number_id: &str, error: GraphError) -> ConnectorError {
    match &error {
        GraphError::NotConnected(_) | GraphError::Unavailable(_) => {
            ConnectorError::Unavailable(format!("cannot check the number with Meta: {error}"))
        }
        GraphError::Api {
            http_status: 500.., ..
        } => ConnectorError::Unavailable(format!("cannot check the number with Meta: {error}")),
        _ if error.is_auth() => {
            ConnectorError::Refused(format!("Meta refused the access token: {error}"))
        }
        _ => ConnectorError::Refused(format!(
            "the phone number id {phone_number_id} is not a WhatsApp number this access token can use: {error}"
        )),
    }
}

#[async_trait]
impl Connector for CloudConnector {
    fn platform(&self) -> AccountKind {
        AccountKind::Whatsapp
    }

    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn send_operation(&self) -> &'static str {
        SEND
    }

    /// Settings: `{"phone_number_id", "access_token", "app_secret"}`; the number is read with
    /// the token (`GET /{version}/{phone-number-id}`), and must be the account's number when
    /// one was given.
    async fn check(
        &self,
        account: &NewAccount,
        settings: Value,
        secret_key: &SecretKey,
    ) -> Result<Value, ConnectorError> {
        let usage = "a Cloud API account needs phone_number_id, access_token and app_secret (--setting NAME=VALUE)";
        let given: GivenSettings = serde_json::from_value(settings)
            .map_err(|e| ConnectorError::Invalid(format!("{usage}: {e}")))?;
        let id = given.phone_number_id.trim();
        let (token, app_secret) = (given.access_token.trim(), given.app_secret.trim());
        if id.is_empty() || token.is_empty() || app_secret.is_empty() {
            return Err(ConnectorError::Invalid(usage.to_owned()));
        }
        if !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConnectorError::Invalid(format!(
                "{id:?} is not a phone number id (digits, from WhatsApp > API Setup in Meta's app dashboard)"
            )));
        }
        let number = self
            .client
            .phone_number(id, token)
            .await
            .map_err(|e| check_error(id, e))?;
        let display = display_e164(&number.display_phone_number).ok_or_else(|| {
            ConnectorError::Refused(format!(
                "Meta gives the number {id} no usable display number ({:?})",
                number.display_phone_number
            ))
        })?;
        if let Some(wanted) = &account.phone_number
            && *wanted != display
        {
            return Err(ConnectorError::Refused(format!(
                "the phone number id {id} is {display}, not {wanted}"
            )));
        }
        let settings = CloudSettings {
            phone_number_id: id.to_owned(),
            access_token: secret_key.seal(token),
            app_secret: secret_key.seal(app_secret),
            verify_token: secret_key.seal(&new_verify_token()),
            display_phone_number: display,
            verified_name: number.verified_name,
        };
        Ok(serde_json::to_value(settings).expect("settings serialize"))
    }

    fn added(&self, account: &AccountRef) -> Vec<ConnectorEvent> {
        let Ok(settings) = CloudSettings::of(&account.settings) else {
            return Vec::new();
        };
        vec![ConnectorEvent::Connected {
            phone_number: Some(settings.display_phone_number),
            display_name: settings.verified_name,
        }]
    }

    async fn send(&self, account: &AccountRef, outgoing: &Outgoing) -> Result<Sent, SendError> {
        let (settings, token) = Self::sending(account)?;
        let to = wa_number(&outgoing.to);
        let template = TemplateRequest::parse(&outgoing.body)
            .map_err(|reason| SendError::Refused { reason, code: None })?;
        let id = match template {
            Some(_) if !outgoing.attachments.is_empty() => {
                return Err(SendError::Refused {
                    reason: "a template reply carries no attachments: send the files after it"
                        .into(),
                    code: None,
                });
            }
            Some(template) => {
                self.send_message(&settings, &token, template_message(&to, &template))
                    .await?
            }
            None if outgoing.attachments.is_empty() => {
                if outgoing.body.trim().is_empty() {
                    return Err(SendError::Refused {
                        reason: "an empty reply".into(),
                        code: None,
                    });
                }
                self.send_message(&settings, &token, text_message(&to, &outgoing.body))
                    .await?
            }
            None => self.send_media(&settings, &token, outgoing, &to).await?,
        };
        Ok(Sent {
            provider_message_id: id,
        })
    }

    /// The Cloud API cannot list what a number sent: a send whose answer was lost cannot be
    /// told apart from one that never left. Rather than risk sending it twice, it is reported
    /// failed, saying so. (A send that certainly did not leave — Meta unreachable, a refusal —
    /// is retried without coming here.)
    async fn find_sent(
        &self,
        _account: &AccountRef,
        _outgoing: &Outgoing,
        _since: DateTime<Utc>,
    ) -> Result<Option<Sent>, SendError> {
        Err(SendError::Refused {
            reason: "an earlier try got no answer from the Cloud API, which offers no way to \
                     look up what a number sent: it may have been delivered, so it is not sent \
                     again (check the chat in WhatsApp before resending)"
                .into(),
            code: Some("unknown".into()),
        })
    }

    fn webhook(
        &self,
        account: &AccountRef,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<ConnectorEvent>, WebhookError> {
        let settings = CloudSettings::of(&account.settings)
            .map_err(|e| WebhookError::Unreadable(e.to_string()))?;
        let app_secret = open(account, &settings.app_secret, "app secret")
            .map_err(|e| WebhookError::Unreadable(e.to_string()))?;
        webhook::verify_signature(request.headers, request.body, &app_secret)?;
        webhook::events_of(request.body, &settings.phone_number_id, &|id| {
            self.client.object_url(id)
        })
    }

    /// Meta's check of the callback URL: `hub.mode=subscribe`, the account's verify token, and
    /// a challenge to echo.
    fn verify_webhook(
        &self,
        account: &AccountRef,
        request: &WebhookRequest<'_>,
    ) -> Result<String, WebhookError> {
        let settings = CloudSettings::of(&account.settings)
            .map_err(|e| WebhookError::Unreadable(e.to_string()))?;
        let expected = open(account, &settings.verify_token, "verify token")
            .map_err(|e| WebhookError::Unreadable(e.to_string()))?;
        if request.query_value("hub.mode").as_deref() != Some("subscribe") {
            return Err(WebhookError::Malformed(
                "a webhook check needs hub.mode=subscribe".into(),
            ));
        }
        let given = request.query_value("hub.verify_token").unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(WebhookError::Unauthenticated(
                "hub.verify_token is not this account's verify token".into(),
            ));
        }
        request
            .query_value("hub.challenge")
            .filter(|c| !c.is_empty() && c.len() <= 256)
            .ok_or_else(|| WebhookError::Malformed("a webhook check without hub.challenge".into()))
    }

    fn pairing(&self, account: &AccountRef) -> Option<Pairing> {
        let settings = CloudSettings::of(&account.settings).ok()?;
        let verify_token = open(account, &settings.verify_token, "verify token").ok()?;
        let webhook_url = self
            .public_base_url
            .as_deref()
            .map(|base| webhook_url(base, &account.location, account.account_id));
        Some(Pairing {
            steps: vec![
                "In Meta's App Dashboard (developers.facebook.com/apps), open the app of this \
                 WhatsApp Business number, then WhatsApp > Configuration."
                    .into(),
                "Under Webhook choose Edit, enter the webhook URL below as the Callback URL and \
                 the secret below as the Verify token, and choose Verify and save: Meta checks \
                 the URL with whatsnap at once."
                    .into(),
                "Under Webhook fields, subscribe to messages (and to smb_message_echoes when the \
                 number also runs in the WhatsApp Business app, so what is typed there shows \
                 in GHL)."
                    .into(),
                "Several numbers on one app: give each number its own callback URL (Meta's \
                 per-number webhook override) or one app each; messages of another number \
                 reaching this URL are ignored."
                    .into(),
            ],
            webhook_url,
            secret: Some(verify_token),
        })
    }

    async fn fetch_attachment(
        &self,
        account: &AccountRef,
        attachment: &Attachment,
    ) -> Result<Attachment, ConnectorError> {
        let Some(media_id) = self.media_id(attachment) else {
            return Ok(attachment.clone());
        };
        let settings = CloudSettings::of(&account.settings)?;
        let token = open(account, &settings.access_token, "access token")?;
        let fetch_error = |error: GraphError| match &error {
            GraphError::NotConnected(_) | GraphError::Unavailable(_) => {
                ConnectorError::Unavailable(format!("the file cannot be fetched now: {error}"))
            }
            GraphError::Api {
                http_status: 500.., ..
            } => ConnectorError::Unavailable(format!("the file cannot be fetched now: {error}")),
            _ => ConnectorError::Refused(format!("the file cannot be fetched: {error}")),
        };
        let media = self
            .client
            .media(media_id, &token)
            .await
            .map_err(fetch_error)?;
        let bytes = self
            .client
            .download(&media.url, &token, MAX_MEDIA_BYTES)
            .await
            .map_err(fetch_error)?;
        let mime = attachment.content_type.clone().unwrap_or(media.mime_type);
        // `audio/ogg; codecs=opus` is not a valid data-URL media type with its parameters.
        let bare = mime.split(';').next().unwrap_or(&mime).trim().to_owned();
        Ok(Attachment {
            url: format!(
                "data:{bare};base64,{}",
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            ),
            content_type: Some(bare),
            file_name: attachment.file_name.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(url: &str, content_type: Option<&str>) -> Attachment {
        Attachment {
            url: url.into(),
            content_type: content_type.map(str::to_owned),
            file_name: None,
        }
    }

    #[test]
    fn files_leave_as_meta_media_links_with_the_text_as_caption() {
        let photo = attachment("https://files.example.com/menu.png?sig=1", None);
        assert_eq!(
            media_message("14155550100", &photo, Some("el menú")).unwrap(),
            json!({
                "messaging_product": "whatsapp", "recipient_type": "individual",
                "to": "14155550100", "type": "image",
                "image": { "link": "https://files.example.com/menu.png?sig=1", "caption": "el menú" },
            })
        );
        let pdf = attachment(
            "https://files.example.com/a/quote.pdf",
            Some("application/pdf"),
        );
        let sent = media_message("1", &pdf, None).unwrap();
        assert_eq!(sent["document"]["filename"], "quote.pdf");
        let voice = attachment("https://files.example.com/v.ogg", Some("audio/ogg"));
        assert!(!MediaKind::of(&voice).takes_caption());
        assert!(media_message("1", &attachment("data:image/png;base64,AA==", None), None).is_err());
    }

    #[test]
    fn meta_refusals_read_as_the_outbox_needs_them() {
        let api = |http_status, code| GraphError::Api {
            http_status,
            code,
            subcode: None,
            message: "m".into(),
            details: None,
        };
        let window = send_error(api(400, 131047));
        assert!(
            matches!(&window, SendError::Refused { reason, .. } if reason.contains("template"))
        );
        assert!(matches!(
            send_error(api(400, 131056)),
            SendError::RateLimited(_)
        ));
        assert!(matches!(
            send_error(api(503, 2)),
            SendError::NotConnected(_)
        ));
        assert!(matches!(
            send_error(api(500, 131000)),
            SendError::Unknown(_)
        ));
        assert!(matches!(
            send_error(api(401, 190)),
            SendError::Refused { reason, .. } if reason.contains("access token")
        ));
        assert!(matches!(
            send_error(GraphError::Unavailable("timeout".into())),
            SendError::Unknown(_)
        ));
    }

    #[test]
    fn display_numbers_read_as_e164() {
        assert_eq!(
            display_e164("+1 555-000-1111").as_deref(),
            Some("+15550001111")
        );
        assert_eq!(display_e164("15550001111").as_deref(), Some("+15550001111"));
        assert_eq!(display_e164("12"), None);
        assert_eq!(new_verify_token().len(), 32);
    }
}
