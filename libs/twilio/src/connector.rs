//! Twilio behind whatsnap's connector seam: an account is an Account SID, its Auth Token and one
//! of its numbers, checked with Twilio when the account is added; replies are sent through the
//! REST API and looked for in the account's message list after an unanswered send. Inbound
//! messages and statuses arrive on Twilio's own signed webhooks (the gateway's `/webhooks/twilio`
//! routes), whose URLs operators have configured in Twilio and which therefore stay as they are.
//! Their signatures are checked here ([`verify_webhook`]), where the Auth Token is, not at the
//! gateway.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use whatsnap_connector::{
    AccountRef, Connector, ConnectorError, NewAccount, Outgoing, Receipt, SendError, Sent,
    WebhookError,
};
use whatsnap_events::{AccountKind, TwilioCredentials};
use whatsnap_secrets::SecretKey;

use crate::webhook::MessageStatus;
use crate::{Credentials, TwilioClient, TwilioError, client};

/// The engine's name in events and settings.
pub const ENGINE: &str = "twilio";

/// The operation name of a Twilio send in the log and in fail point names.
pub const SEND: &str = "twilio.send";

/// How far before a send a message Twilio lists may be dated (clocks differ).
const CLOCK_SKEW: chrono::Duration = chrono::Duration::seconds(60);

/// Twilio accounts, through one API client.
#[derive(Debug, Clone)]
pub struct TwilioConnector {
    client: TwilioClient,
    status_callback_base: Option<String>,
}

impl TwilioConnector {
    /// Twilio accounts through `client`; Twilio reports the status of what they send to
    /// `status_callback_base` (the gateway's public URL), or nowhere when it is `None`.
    pub fn new(client: TwilioClient, status_callback_base: Option<String>) -> Self {
        Self {
            client,
            status_callback_base,
        }
    }

    /// The gateway's route for Twilio's StatusCallback of one message.
    fn status_callback(&self, account: &AccountRef, outgoing: &Outgoing) -> Option<String> {
        self.status_callback_base.as_ref().map(|base| {
            format!(
                "{}/webhooks/twilio/{}/{}/status?message={}",
                base.trim_end_matches('/'),
                account.location,
                account.account_id,
                outgoing.message_id
            )
        })
    }

    /// The account's credentials, the Auth Token opened.
    fn credentials(account: &AccountRef) -> Result<Credentials, SendError> {
        opened_credentials(account).map_err(|reason| SendError::Refused { reason, code: None })
    }

    fn from(account: &AccountRef) -> Result<&str, SendError> {
        account
            .phone_number
            .as_deref()
            .ok_or_else(|| SendError::Refused {
                reason: format!("the account {} has no phone number", account.name),
                code: None,
            })
    }
}

impl From<TwilioError> for SendError {
    fn from(err: TwilioError) -> Self {
        match &err {
            TwilioError::Rejected {
                code: Some(20429), ..
            } => Self::RateLimited(err.to_string()),
            TwilioError::Rejected { code, .. } => Self::Refused {
                reason: err.to_string(),
                code: code.map(|c| c.to_string()),
            },
            TwilioError::Unavailable(_) if err.certainly_unsent() => {
                Self::NotConnected(err.to_string())
            }
            TwilioError::Unavailable(_) => Self::Unknown(err.to_string()),
            _ => Self::Refused {
                reason: err.to_string(),
                code: None,
            },
        }
    }
}

/// The account's current credentials (those it was added with, or the latest it rotated to),
/// the Auth Token opened; why not, in words.
fn opened_credentials(account: &AccountRef) -> Result<Credentials, String> {
    let stored: TwilioCredentials =
        serde_json::from_value(account.settings.clone()).map_err(|e| {
            format!(
                "the account {} has no Twilio credentials: {e}",
                account.name
            )
        })?;
    let token = account
        .secret_key
        .open(&stored.auth_token)
        .map_err(|e| format!("the account's Auth Token cannot be opened: {e}"))?;
    Ok(Credentials::new(stored.account_sid, token.expose()))
}

/// Checks a webhook Twilio sent for `account`: `params` (every form parameter) signed with the
/// account's Auth Token over `url` (the URL Twilio requested), and, when it names one, for the
/// account's own `AccountSid`. `Unauthenticated` for a missing or wrong signature,
/// `WrongAccount` for another Twilio account's webhook, `Unreadable` when the Auth Token does
/// not open here.
pub fn verify_webhook(
    account: &AccountRef,
    url: &str,
    params: &[(String, String)],
    signature: Option<&str>,
) -> Result<(), WebhookError> {
    let credentials = opened_credentials(account).map_err(WebhookError::Unreadable)?;
    crate::signature::validate_form(credentials.auth_token(), url, params, signature)
        .map_err(|e| WebhookError::Unauthenticated(e.to_string()))?;
    let sid = params
        .iter()
        .find(|(name, _)| name == "AccountSid")
        .map(|(_, value)| value.as_str());
    if sid.is_some_and(|sid| sid != credentials.account_sid) {
        return Err(WebhookError::WrongAccount(
            "the webhook is for another Twilio account".into(),
        ));
    }
    Ok(())
}

/// What a Twilio status report says of a message, when it is news: final states and reads.
pub fn receipt(status: MessageStatus, error_code: Option<u32>) -> Option<Receipt> {
    match status {
        MessageStatus::Delivered => Some(Receipt::Delivered),
        MessageStatus::Read => Some(Receipt::Read),
        failure if failure.is_failure() => Some(Receipt::Failed {
            reason: match error_code {
                Some(code) => client::reason(code, &format!("the message was {failure}")),
                None => format!("Twilio reported the message {failure}"),
            },
            code: error_code.map(|c| c.to_string()),
        }),
        _ => None,
    }
}

#[async_trait]
impl Connector for TwilioConnector {
    fn platform(&self) -> AccountKind {
        AccountKind::Twilio
    }

    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn send_operation(&self) -> &'static str {
        SEND
    }

    /// Settings: `{"account_sid": "AC…", "auth_token": "…"}`, checked with Twilio together with
    /// the account's number; stored with the token sealed.
    async fn check(
        &self,
        account: &NewAccount,
        settings: serde_json::Value,
        secret_key: &SecretKey,
    ) -> Result<serde_json::Value, ConnectorError> {
        let text = |name: &str| {
            settings
                .get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        let (sid, token) = (text("account_sid"), text("auth_token"));
        let Some(phone) = account.phone_number.as_deref() else {
            return Err(ConnectorError::Invalid(
                "a Twilio account needs its Account SID, Auth Token and phone number".into(),
            ));
        };
        if !sid.starts_with("AC") || sid.len() != 34 {
            return Err(ConnectorError::Invalid(format!(
                "{sid:?} is not a Twilio Account SID (AC followed by 32 characters)"
            )));
        }
        if token.is_empty() {
            return Err(ConnectorError::Invalid(
                "the Twilio Auth Token is empty".into(),
            ));
        }
        self.client
            .verify(&Credentials::new(&sid, &token), phone)
            .await
            .map_err(|err| match err {
                TwilioError::Unavailable(reason) => ConnectorError::Unavailable(format!(
                    "cannot check the account with Twilio: {reason}"
                )),
                refused => ConnectorError::Refused(refused.to_string()),
            })?;
        let sealed = TwilioCredentials {
            account_sid: sid,
            auth_token: secret_key.seal(&token),
        };
        Ok(serde_json::to_value(sealed).expect("credentials serialise"))
    }

    async fn send(&self, account: &AccountRef, outgoing: &Outgoing) -> Result<Sent, SendError> {
        let credentials = Self::credentials(account)?;
        let media: Vec<String> = outgoing.attachments.iter().map(|a| a.url.clone()).collect();
        let callback = self.status_callback(account, outgoing);
        let message = crate::Outgoing {
            from: Self::from(account)?,
            to: &outgoing.to,
            body: &outgoing.body,
            media_urls: &media,
            status_callback: callback.as_deref(),
        };
        let sent = self.client.send(&credentials, &message).await?;
        Ok(Sent {
            provider_message_id: sent.sid,
        })
    }

    /// Twilio's list of the account's messages from the same number to the same recipient on
    /// the day of the send (and the next, across midnight), with the same text, created after
    /// the send was intended.
    async fn find_sent(
        &self,
        account: &AccountRef,
        outgoing: &Outgoing,
        since: DateTime<Utc>,
    ) -> Result<Option<Sent>, SendError> {
        let credentials = Self::credentials(account)?;
        let from = Self::from(account)?;
        let since = since - CLOCK_SKEW;
        let mut days = vec![since.date_naive()];
        if Utc::now().date_naive() != since.date_naive() {
            days.push(since.date_naive() + chrono::Days::new(1));
        }
        for day in days {
            let listed = self
                .client
                .list_messages(&credentials, from, &outgoing.to, day)
                .await?;
            if let Some(found) = listed.into_iter().find(|m| {
                m.body.as_deref().unwrap_or_default() == outgoing.body
                    && m.created_at().is_some_and(|at| at >= since)
            }) {
                return Ok(Some(Sent {
                    provider_message_id: found.sid,
                }));
            }
        }
        Ok(None)
    }
}
