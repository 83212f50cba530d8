//! The two webhooks Twilio sends, read from their form parameters: an incoming message, and a
//! status callback for a message sent.

use std::fmt;
use std::str::FromStr;

/// A webhook whose parameters lack what whatsnap needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the webhook has no {0} parameter")]
    Missing(&'static str),
    #[error("{name} {value:?} is not {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
}

fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn required<'a>(
    params: &'a [(String, String)],
    name: &'static str,
) -> Result<&'a str, WebhookError> {
    get(params, name).ok_or(WebhookError::Missing(name))
}

/// A file that came with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub url: String,
    pub content_type: Option<String>,
}

/// An SMS (or MMS) received by a Twilio number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    pub message_sid: String,
    pub account_sid: String,
    /// The sender, as Twilio wrote it (E.164 for SMS).
    pub from: String,
    /// The Twilio number that received it.
    pub to: String,
    pub body: String,
    /// The sender's name, where the channel gives one (WhatsApp's `ProfileName`).
    pub profile_name: Option<String>,
    pub media: Vec<Media>,
}

pub fn parse_inbound(params: &[(String, String)]) -> Result<InboundMessage, WebhookError> {
    let count = match get(params, "NumMedia") {
        None => 0,
        Some(n) => n.parse::<usize>().map_err(|_| WebhookError::Invalid {
            name: "NumMedia",
            value: n.to_owned(),
            expected: "a count",
        })?,
    };
    let media = (0..count.min(10))
        .filter_map(|i| {
            let url = get(params, &format!("MediaUrl{i}"))?;
            Some(Media {
                url: url.to_owned(),
                content_type: get(params, &format!("MediaContentType{i}")).map(str::to_owned),
            })
        })
        .collect();
    Ok(InboundMessage {
        message_sid: required(params, "MessageSid")?.to_owned(),
        account_sid: required(params, "AccountSid")?.to_owned(),
        from: required(params, "From")?.to_owned(),
        to: required(params, "To")?.to_owned(),
        body: get(params, "Body").unwrap_or_default().to_owned(),
        profile_name: get(params, "ProfileName").map(str::to_owned),
        media,
    })
}

/// Where a message Twilio sends stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    Queued,
    Accepted,
    Scheduled,
    Sending,
    Sent,
    Delivered,
    Read,
    PartiallyDelivered,
    Undelivered,
    Failed,
    Canceled,
    Receiving,
    Received,
}

impl MessageStatus {
    const NAMES: [(MessageStatus, &'static str); 13] = [
        (Self::Queued, "queued"),
        (Self::Accepted, "accepted"),
        (Self::Scheduled, "scheduled"),
        (Self::Sending, "sending"),
        (Self::Sent, "sent"),
        (Self::Delivered, "delivered"),
        (Self::Read, "read"),
        (Self::PartiallyDelivered, "partially_delivered"),
        (Self::Undelivered, "undelivered"),
        (Self::Failed, "failed"),
        (Self::Canceled, "canceled"),
        (Self::Receiving, "receiving"),
        (Self::Received, "received"),
    ];

    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(status, _)| *status == self)
            .map(|(_, name)| *name)
            .unwrap_or("unknown")
    }

    /// The message did not and will not reach the recipient.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Undelivered | Self::Failed | Self::Canceled)
    }
}

impl FromStr for MessageStatus {
    type Err = WebhookError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::NAMES
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(status, _)| *status)
            .ok_or_else(|| WebhookError::Invalid {
                name: "MessageStatus",
                value: s.to_owned(),
                expected: "a Twilio message status",
            })
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status callback for a message whatsnap sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub message_sid: String,
    pub status: MessageStatus,
    /// Twilio's error code, on `failed` and `undelivered`.
    pub error_code: Option<u32>,
}

pub fn parse_status(params: &[(String, String)]) -> Result<StatusUpdate, WebhookError> {
    let error_code = match get(params, "ErrorCode") {
        None => None,
        Some(code) => Some(code.parse().map_err(|_| WebhookError::Invalid {
            name: "ErrorCode",
            value: code.to_owned(),
            expected: "a number",
        })?),
    };
    Ok(StatusUpdate {
        message_sid: required(params, "MessageSid")?.to_owned(),
        status: required(params, "MessageStatus")?.parse()?,
        error_code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_incoming_mms_is_read_with_its_media() {
        let message = parse_inbound(&params(&[
            ("MessageSid", "MM0123"),
            ("SmsSid", "MM0123"),
            ("AccountSid", "AC1"),
            ("From", "+14155550100"),
            ("To", "+15005550006"),
            ("Body", "look"),
            ("NumMedia", "1"),
            ("MediaUrl0", "https://api.twilio.com/media/1"),
            ("MediaContentType0", "image/jpeg"),
            ("FromCountry", "US"),
        ]))
        .unwrap();
        assert_eq!(message.message_sid, "MM0123");
        assert_eq!(message.media[0].content_type.as_deref(), Some("image/jpeg"));
        assert_eq!(message.profile_name, None);
    }

    #[test]
    fn a_webhook_without_a_sender_names_what_is_missing() {
        let err = parse_inbound(&params(&[
            ("MessageSid", "SM1"),
            ("AccountSid", "AC1"),
            ("To", "+1"),
        ]))
        .unwrap_err();
        assert_eq!(err.to_string(), "the webhook has no From parameter");
    }

    #[test]
    fn status_callbacks_carry_the_error_of_a_failure() {
        let update = parse_status(&params(&[
            ("MessageSid", "SM1"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30007"),
        ]))
        .unwrap();
        assert!(update.status.is_failure());
        assert_eq!(update.error_code, Some(30007));
        let err =
            parse_status(&params(&[("MessageSid", "SM1"), ("MessageStatus", "lost")])).unwrap_err();
        assert!(
            err.to_string().contains("not a Twilio message status"),
            "{err}"
        );
    }
}
