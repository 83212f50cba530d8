//! WhatsApp accounts on an Evolution server, behind whatsnap's seam: an account is one
//! Evolution instance. [`Connector::check`] finds or creates the instance and seals its token;
//! [`Connector::send`] sends text and media through it, [`Connector::find_sent`] looks for a
//! send whose answer was lost. The live link is `crate::session`; messages, receipts and QR
//! codes arrive through the webhook ([`crate::webhook`]).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use uuid::Uuid;
use whatsnap_connector::{
    AccountRef, Connector, ConnectorError, ConnectorEvent, NewAccount, Outgoing, Pacing, SendError,
    Sent, Session, WebhookError as SeamWebhookError, WebhookRequest,
};
use whatsnap_events::{AccountKind, Attachment, LocationId};
use whatsnap_secrets::{Sealed, SecretKey};

use crate::client::{
    CreateInstance, EvolutionClient, EvolutionError, MediaType, SendMedia, SendText, WebhookConfig,
};
use crate::webhook::{WebhookAuth, phone_of_jid};

/// The engine's name in events, settings and the CLI.
pub const ENGINE: &str = "evolution";

/// The operation name of a send in the log and in fail point names.
pub const SEND: &str = "evolution.send";

/// The deployment's Evolution server and how whatsnap drives it.
#[derive(Clone)]
pub struct EvolutionConfig {
    /// The server, e.g. `https://evolution.example.com`.
    pub base_url: String,
    /// The server's global key (`AUTHENTICATION_API_KEY`): creating instances needs it.
    pub api_key: String,
    /// Where Evolution reaches whatsnap's gateway, e.g. `https://whatsnap.example.com`.
    pub public_base_url: String,
    /// When set, webhooks are signed with a JWT under this key (a `jwt_key` webhook header);
    /// needed when the server does not expose instance tokens in webhook bodies
    /// (`AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES` unset).
    pub webhook_jwt_key: Option<String>,
    /// How long Evolution shows "typing…" to the recipient before each send (its `delay`);
    /// zero sends at once.
    pub typing_delay: Duration,
    /// How often a session asks for the link's state.
    pub poll_interval: Duration,
    /// How long one request to Evolution may take.
    pub request_timeout: Duration,
}

impl EvolutionConfig {
    pub fn new(base_url: &str, api_key: &str, public_base_url: &str) -> Self {
        Self {
            base_url: base_url.to_owned(),
            api_key: api_key.to_owned(),
            public_base_url: public_base_url.to_owned(),
            webhook_jwt_key: None,
            typing_delay: Duration::ZERO,
            poll_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for EvolutionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvolutionConfig")
            .field("base_url", &self.base_url)
            .field("public_base_url", &self.public_base_url)
            .field(
                "webhook_jwt_key",
                &self.webhook_jwt_key.as_ref().map(|_| "********"),
            )
            .field("typing_delay", &self.typing_delay)
            .field("poll_interval", &self.poll_interval)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// The URL of an account's Evolution webhook on whatsnap's gateway.
pub fn webhook_url(public_base_url: &str, location: &LocationId, account_id: Uuid) -> String {
    format!(
        "{}/webhooks/evolution/{location}/{account_id}",
        public_base_url.trim_end_matches('/')
    )
}

/// What a user gives to add an Evolution account, all optional. No `Debug`: it holds a key.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GivenSettings {
    /// An existing instance to use; whatsnap names (and creates) one otherwise.
    instance_name: Option<String>,
    /// The instance's token, to use an instance whose token the global key cannot read.
    api_key: Option<String>,
    /// An existing instance posting its webhooks elsewhere (n8n, Chatwoot…) is refused unless
    /// this is set: an instance has one webhook, and whatsnap's replaces the other.
    #[serde(default)]
    replace_webhook: bool,
}

/// What an Evolution account keeps in its settings (the token sealed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvolutionSettings {
    pub instance_name: String,
    pub instance_token: Sealed,
}

impl fmt::Debug for EvolutionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvolutionSettings")
            .field("instance_name", &self.instance_name)
            .finish_non_exhaustive()
    }
}

impl EvolutionSettings {
    pub fn of(settings: &serde_json::Value) -> Result<Self, ConnectorError> {
        serde_json::from_value(settings.clone()).map_err(|e| {
            ConnectorError::Invalid(format!(
                "the account's evolution settings are unreadable: {e}"
            ))
        })
    }
}

/// The name whatsnap gives the instance of an account it creates.
pub fn default_instance_name(account_id: Uuid) -> String {
    format!("whatsnap-{}", account_id.simple())
}

fn check_instance_name(name: &str) -> Result<(), ConnectorError> {
    let fine = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if fine {
        Ok(())
    } else {
        Err(ConnectorError::Invalid(format!(
            "{name:?} is not a usable instance name: use letters, digits, '-', '_' or '.'"
        )))
    }
}

/// The Evolution API engine for WhatsApp accounts.
#[derive(Debug, Clone)]
pub struct EvolutionConnector {
    config: EvolutionConfig,
    client: EvolutionClient,
}

impl EvolutionConnector {
    pub fn new(config: EvolutionConfig) -> Result<Self, ConnectorError> {
        let client = EvolutionClient::with_timeout(
            &config.base_url,
            &config.api_key,
            config.request_timeout,
        )
        .map_err(EvolutionError::into_connector_error)?;
        Ok(Self { config, client })
    }

    pub fn client(&self) -> &EvolutionClient {
        &self.client
    }

    pub fn config(&self) -> &EvolutionConfig {
        &self.config
    }

    /// The instance name and token that a webhook for `account` must match, opened.
    pub fn webhook_secrets(
        &self,
        account: &AccountRef,
    ) -> Result<(String, String), ConnectorError> {
        let settings = EvolutionSettings::of(&account.settings)?;
        let token = account
            .secret_key
            .open(&settings.instance_token)
            .map_err(|e| ConnectorError::Invalid(e.to_string()))?;
        Ok((settings.instance_name, token.expose().to_owned()))
    }

    /// Checks and reads a webhook POST for `account` (see [`crate::webhook::parse_webhook`]).
    pub fn parse_webhook(
        &self,
        account: &AccountRef,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Vec<ConnectorEvent>, WebhookRefusal> {
        let (instance_name, api_key) = self
            .webhook_secrets(account)
            .map_err(WebhookRefusal::Account)?;
        let auth = WebhookAuth {
            instance_name: &instance_name,
            api_key: &api_key,
            jwt_key: self.config.webhook_jwt_key.as_deref(),
        };
        crate::webhook::parse_webhook(headers, body, &auth).map_err(WebhookRefusal::Webhook)
    }

    pub(crate) fn webhook_for(&self, location: &LocationId, account_id: Uuid) -> WebhookConfig {
        WebhookConfig::whatsnap(
            webhook_url(&self.config.public_base_url, location, account_id),
            self.config.webhook_jwt_key.as_deref(),
        )
    }

    /// Makes sure the instance exists and reports to whatsnap: creates it when absent
    /// (`qrcode` starts linking at once), points its webhook at whatsnap otherwise. Returns the
    /// instance's token when the server shows it.
    pub(crate) async fn ensure_instance(
        &self,
        name: &str,
        token: Option<&str>,
        webhook: &WebhookConfig,
        qrcode: bool,
    ) -> Result<Option<String>, EvolutionError> {
        match self.client.find_instance(name).await? {
            Some(found) => {
                self.client.set_webhook(name, webhook).await?;
                Ok(found.token)
            }
            None => {
                info!(instance = name, "creating evolution instance");
                let created = self
                    .client
                    .create_instance(&CreateInstance {
                        instance_name: name.to_owned(),
                        qrcode,
                        number: None,
                        token: token.map(str::to_owned),
                        webhook: Some(webhook.clone()),
                    })
                    .await?;
                Ok(Some(created.hash))
            }
        }
    }

    /// An existing instance must be free to become the account's: linked to the account's
    /// number if it is linked at all, and not reporting to someone else.
    async fn check_existing(
        &self,
        account: &NewAccount,
        name: &str,
        webhook: &WebhookConfig,
        replace_webhook: bool,
    ) -> Result<(), ConnectorError> {
        let unavailable = EvolutionError::into_connector_error;
        let Some(found) = self.client.find_instance(name).await.map_err(unavailable)? else {
            return Ok(());
        };
        let owner = found.owner_jid.as_deref().and_then(phone_of_jid);
        if let (Some(wanted), Some(owner)) = (&account.phone_number, &owner)
            && wanted != owner
        {
            return Err(ConnectorError::Refused(format!(
                "the evolution instance {name} is linked to {owner}, not {wanted}"
            )));
        }
        if replace_webhook {
            return Ok(());
        }
        match self.client.find_webhook(name).await.map_err(unavailable)? {
            Some(current)
                if current.enabled != Some(false)
                    && !current.url.is_empty()
                    && current.url != webhook.url =>
            {
                Err(ConnectorError::Invalid(format!(
                    "the evolution instance {name} already posts its webhooks to {}; an \
                     instance has one webhook: set \"replace_webhook\": true to give it to \
                     whatsnap",
                    current.url
                )))
            }
            _ => Ok(()),
        }
    }

    /// How long Evolution shows "typing…" before a send: the account's pacing, else the
    /// deployment's.
    fn typing_delay_ms(&self, typing: Duration) -> u32 {
        let typing = if typing.is_zero() {
            self.config.typing_delay
        } else {
            typing
        };
        u32::try_from(typing.as_millis()).unwrap_or(u32::MAX)
    }

    async fn send_one(
        &self,
        instance: &str,
        number: &str,
        body: &str,
        attachment: Option<&Attachment>,
        typing: Duration,
    ) -> Result<String, SendError> {
        let sent = match attachment {
            None => {
                self.client
                    .send_text(
                        instance,
                        &SendText {
                            number: number.to_owned(),
                            text: body.to_owned(),
                            delay: self.typing_delay_ms(typing),
                            link_preview: false,
                        },
                    )
                    .await
            }
            Some(attachment) => {
                let (media, mime) = media_of(attachment);
                self.client
                    .send_media(
                        instance,
                        &SendMedia {
                            number: number.to_owned(),
                            mediatype: MediaType::of_mime(mime.as_deref()),
                            media,
                            mimetype: mime,
                            file_name: Some(file_name_of(attachment)),
                            caption: (!body.is_empty()).then(|| body.to_owned()),
                            delay: self.typing_delay_ms(typing),
                        },
                    )
                    .await
            }
        };
        sent.map(|s| s.key.id)
            .map_err(EvolutionError::into_send_error)
    }
}

/// Why a webhook for an account was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookRefusal {
    /// The account's own settings could not be opened (a changed secret key?).
    #[error("{0}")]
    Account(ConnectorError),
    #[error("{0}")]
    Webhook(crate::webhook::WebhookError),
}

impl WebhookRefusal {
    /// What to answer Evolution: a refusal it does not retry (400, 401, 404), or 500 when
    /// whatsnap could not open the account's settings (Evolution retries; nothing is lost if
    /// the key is put back).
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Account(_) => 500,
            Self::Webhook(error) => error.http_status(),
        }
    }
}

/// What `sendMedia` gets for an attachment: a `data:` URL's base64 as is, any other URL for
/// Evolution to download.
fn media_of(attachment: &Attachment) -> (String, Option<String>) {
    if let Some(rest) = attachment.url.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
        && let Some(mime) = meta.strip_suffix(";base64")
    {
        let mime = attachment
            .content_type
            .clone()
            .or_else(|| (!mime.is_empty()).then(|| mime.to_owned()));
        return (data.to_owned(), mime);
    }
    (attachment.url.clone(), attachment.content_type.clone())
}

fn file_name_of(attachment: &Attachment) -> String {
    if let Some(name) = &attachment.file_name {
        return name.clone();
    }
    let from_url = (!attachment.url.starts_with("data:"))
        .then(|| {
            attachment
                .url
                .split(['?', '#'])
                .next()
                .and_then(|path| path.rsplit('/').next())
                .filter(|name| !name.is_empty())
        })
        .flatten();
    from_url.map_or_else(|| "attachment".to_owned(), str::to_owned)
}

/// Evolution's `number`: the E.164 number without its `+`.
pub(crate) fn number_of(e164: &str) -> String {
    e164.trim().trim_start_matches('+').to_owned()
}

#[async_trait]
impl Connector for EvolutionConnector {
    fn platform(&self) -> AccountKind {
        AccountKind::Whatsapp
    }

    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn send_operation(&self) -> &'static str {
        SEND
    }

    fn default_pacing(&self) -> Pacing {
        Pacing::WHATSAPP
    }

    fn webhook(
        &self,
        account: &AccountRef,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<ConnectorEvent>, SeamWebhookError> {
        self.parse_webhook(account, request.headers, request.body)
            .map_err(|refusal| match refusal {
                WebhookRefusal::Account(error) => SeamWebhookError::Unreadable(error.to_string()),
                WebhookRefusal::Webhook(error) => match error.http_status() {
                    400 => SeamWebhookError::Malformed(error.to_string()),
                    404 => SeamWebhookError::WrongAccount(error.to_string()),
                    _ => SeamWebhookError::Unauthenticated(error.to_string()),
                },
            })
    }

    async fn check(
        &self,
        account: &NewAccount,
        settings: serde_json::Value,
        secret_key: &SecretKey,
    ) -> Result<serde_json::Value, ConnectorError> {
        let given: GivenSettings = if settings.is_null() {
            GivenSettings::default()
        } else {
            serde_json::from_value(settings).map_err(|e| {
                ConnectorError::Invalid(format!(
                    "evolution settings are {{instance_name?, api_key?, replace_webhook?}}: {e}"
                ))
            })?
        };
        let name = given
            .instance_name
            .unwrap_or_else(|| default_instance_name(account.account_id));
        check_instance_name(&name)?;
        if let Some(key) = &given.api_key {
            // A key given for an existing instance must open it.
            match self.client.with_key(key).connection_state(&name).await {
                Ok(_) | Err(EvolutionError::NotFound(_)) => {}
                Err(EvolutionError::Unauthorized(_)) => {
                    return Err(ConnectorError::Refused(format!(
                        "the api_key is not the token of the evolution instance {name}"
                    )));
                }
                Err(error) => return Err(error.into_connector_error()),
            }
        }
        let webhook = self.webhook_for(&account.location, account.account_id);
        self.check_existing(account, &name, &webhook, given.replace_webhook)
            .await?;
        let token = self
            .ensure_instance(&name, given.api_key.as_deref(), &webhook, false)
            .await
            .map_err(EvolutionError::into_connector_error)?
            .or(given.api_key)
            .ok_or_else(|| {
                ConnectorError::Invalid(format!(
                    "evolution does not show the token of instance {name}: give it as api_key"
                ))
            })?;
        let settings = EvolutionSettings {
            instance_name: name,
            instance_token: secret_key.seal(&token),
        };
        Ok(serde_json::to_value(settings).expect("settings serialize"))
    }

    async fn send(&self, account: &AccountRef, outgoing: &Outgoing) -> Result<Sent, SendError> {
        let settings =
            EvolutionSettings::of(&account.settings).map_err(|e| SendError::Refused {
                reason: e.to_string(),
                code: None,
            })?;
        let instance = settings.instance_name.as_str();
        let number = number_of(&outgoing.to);
        if outgoing.attachments.is_empty() {
            let id = self
                .send_one(instance, &number, &outgoing.body, None, outgoing.typing)
                .await?;
            return Ok(Sent {
                provider_message_id: id,
            });
        }
        // One message per attachment, the text as the first one's caption. A failure after the
        // first is logged, not returned: the outbox would send the first again.
        let mut first = None;
        for (index, attachment) in outgoing.attachments.iter().enumerate() {
            let caption = if index == 0 {
                outgoing.body.as_str()
            } else {
                ""
            };
            match self
                .send_one(
                    instance,
                    &number,
                    caption,
                    Some(attachment),
                    outgoing.typing,
                )
                .await
            {
                Ok(id) => {
                    first.get_or_insert(id);
                }
                Err(error) if first.is_none() => return Err(error),
                Err(error) => warn!(
                    message_id = %outgoing.message_id,
                    attachment = index,
                    %error,
                    "evolution did not send an attachment after the first"
                ),
            }
        }
        Ok(Sent {
            provider_message_id: first.expect("at least one attachment was sent"),
        })
    }

    async fn find_sent(
        &self,
        account: &AccountRef,
        outgoing: &Outgoing,
        since: DateTime<Utc>,
    ) -> Result<Option<Sent>, SendError> {
        let settings =
            EvolutionSettings::of(&account.settings).map_err(|e| SendError::Refused {
                reason: e.to_string(),
                code: None,
            })?;
        let jid = format!("{}@s.whatsapp.net", number_of(&outgoing.to));
        let until = Utc::now() + chrono::Duration::minutes(1);
        let records = self
            .client
            .find_sent_messages(&settings.instance_name, &jid, since, until)
            .await
            .map_err(EvolutionError::into_send_error)?;
        // What `send` returned: the text, or the first attachment carrying it as its caption.
        let kind = outgoing
            .attachments
            .first()
            .map(|first| MediaType::of_mime(media_of(first).1.as_deref()).message_type());
        Ok(records
            .into_iter()
            .find(|m| {
                let same_kind = match (kind, m.message_type.as_deref()) {
                    (Some(kind), Some(stored)) => kind == stored,
                    (None, Some(stored)) => {
                        matches!(stored, "conversation" | "extendedTextMessage")
                    }
                    (_, None) => true,
                };
                m.key.from_me && same_kind && m.text().unwrap_or_default() == outgoing.body
            })
            .map(|m| Sent {
                provider_message_id: m.key.id,
            }))
    }

    fn session(&self) -> Option<&dyn Session> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_become_evolution_media() {
        let url = Attachment {
            url: "https://files.example.com/a/photo.png?sig=1".into(),
            content_type: Some("image/png".into()),
            file_name: None,
        };
        assert_eq!(
            media_of(&url),
            (url.url.clone(), Some("image/png".to_owned()))
        );
        assert_eq!(file_name_of(&url), "photo.png");
        let data = Attachment {
            url: "data:application/pdf;base64,JVBERi0=".into(),
            content_type: None,
            file_name: Some("quote.pdf".into()),
        };
        assert_eq!(
            media_of(&data),
            ("JVBERi0=".to_owned(), Some("application/pdf".to_owned()))
        );
        assert_eq!(
            MediaType::of_mime(Some("application/pdf")),
            MediaType::Document
        );
        assert_eq!(
            MediaType::of_mime(Some("audio/ogg; codecs=opus")),
            MediaType::Audio
        );
    }

    #[test]
    fn instance_names_are_checked() {
        assert!(check_instance_name("acme-1").is_ok());
        assert!(check_instance_name(&default_instance_name(Uuid::nil())).is_ok());
        assert!(check_instance_name("").is_err());
        assert!(check_instance_name("a/b").is_err());
    }
}
