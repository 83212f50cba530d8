//! What an Evolution server posts to an instance's webhook, checked and read in whatsnap's
//! terms. Every body is `{event, instance, data, destination, date_time, sender, server_url,
//! apikey}` (`webhook.controller.ts`); [`parse_webhook`] refuses a body that does not come from
//! the account's instance — a wrong instance name, or neither the instance's token in `apikey`
//! nor a valid bearer JWT — and turns the rest into [`ConnectorEvent`]s.
//!
//! Evolution retries a delivery that failed (up to 10 times, §6a), so the same event can arrive
//! again, late: what makes a message recognisable is its `provider_message_id`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq as _;
use whatsnap_connector::{
    ConnectorEvent, DisconnectReason, LinkCode, ObservedMessage, Peer, Receipt,
};
use whatsnap_events::Attachment;

use crate::jwt::{JwtError, verify_webhook_token};

/// How long each QR code Evolution issues stays scannable (it passes `qrTimeout: 45_000` to
/// Baileys, §6a).
pub const QR_VALIDITY: Duration = Duration::from_secs(45);

/// What a webhook must prove: it is about this instance, and it comes from the Evolution server
/// that holds the instance's token (or the deployment's JWT key).
#[derive(Clone, Copy)]
pub struct WebhookAuth<'a> {
    pub instance_name: &'a str,
    /// The instance's token (its per-instance API key).
    pub api_key: &'a str,
    /// The `jwt_key` whatsnap put in the instance's webhook headers, when it did.
    pub jwt_key: Option<&'a str>,
}

impl std::fmt::Debug for WebhookAuth<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookAuth")
            .field("instance_name", &self.instance_name)
            .finish_non_exhaustive()
    }
}

/// Why a webhook was refused. A gateway answers [`WebhookError::http_status`], which Evolution
/// does not retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the webhook body is not an Evolution event: {0}")]
    Malformed(String),
    #[error("the webhook is about instance {got:?}, not {expected:?}")]
    WrongInstance { expected: String, got: String },
    #[error("the webhook carries neither the instance's apikey nor a bearer token")]
    Unauthenticated,
    #[error("the webhook's apikey is not the instance's")]
    WrongApiKey,
    #[error("the webhook's bearer token is refused: {0}")]
    BadToken(#[from] JwtError),
}

impl WebhookError {
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Malformed(_) => 400,
            Self::WrongInstance { .. } => 404,
            Self::Unauthenticated | Self::WrongApiKey | Self::BadToken(_) => 401,
        }
    }
}

/// A webhook body, as Evolution posts it. Its `Debug` leaves out `apikey` and `data` (a token,
/// and message bodies).
#[derive(Clone, Deserialize)]
pub struct WebhookBody {
    /// Dotted lowercase: `qrcode.updated`, `connection.update`, `messages.upsert`, …
    pub event: String,
    pub instance: String,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub date_time: Option<String>,
    /// The linked account's JID; absent until the instance has been open once.
    #[serde(default)]
    pub sender: Option<String>,
    /// The instance's token, when the server exposes it
    /// (`AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES=true`).
    #[serde(default)]
    pub apikey: Option<String>,
}

impl std::fmt::Debug for WebhookBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookBody")
            .field("event", &self.event)
            .field("instance", &self.instance)
            .field("date_time", &self.date_time)
            .finish_non_exhaustive()
    }
}

/// Checks a webhook POST at the current time and reads its events.
pub fn parse_webhook(
    headers: &http::HeaderMap,
    body: &[u8],
    auth: &WebhookAuth<'_>,
) -> Result<Vec<ConnectorEvent>, WebhookError> {
    parse_webhook_at(headers, body, auth, Utc::now())
}

/// As [`parse_webhook`], checking a bearer token's expiry against `now`.
pub fn parse_webhook_at(
    headers: &http::HeaderMap,
    body: &[u8],
    auth: &WebhookAuth<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<ConnectorEvent>, WebhookError> {
    let body: WebhookBody =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
    if body.instance != auth.instance_name {
        return Err(WebhookError::WrongInstance {
            expected: auth.instance_name.to_owned(),
            got: body.instance,
        });
    }
    authenticate(headers, &body, auth, now)?;
    events_of(&body)
}

/// When whatsnap has a JWT key, a bearer token that comes must verify (a forged one is refused
/// even beside a right `apikey`); otherwise the body's `apikey` must be the instance's token,
/// compared in constant time.
fn authenticate(
    headers: &http::HeaderMap,
    body: &WebhookBody,
    auth: &WebhookAuth<'_>,
    now: DateTime<Utc>,
) -> Result<(), WebhookError> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let (Some(token), Some(key)) = (bearer, auth.jwt_key) {
        verify_webhook_token(token, key, now)?;
        return Ok(());
    }
    match body.apikey.as_deref() {
        Some(given) if bool::from(given.as_bytes().ct_eq(auth.api_key.as_bytes())) => Ok(()),
        Some(_) => Err(WebhookError::WrongApiKey),
        None => Err(WebhookError::Unauthenticated),
    }
}

/// The events of an authenticated webhook body. Events whatsnap does not read give none.
pub fn events_of(body: &WebhookBody) -> Result<Vec<ConnectorEvent>, WebhookError> {
    let data = &body.data;
    match body.event.as_str() {
        "qrcode.updated" => Ok(qr_code(data).into_iter().collect()),
        "connection.update" => Ok(connection(data).into_iter().collect()),
        "messages.upsert" => each(data, message),
        "messages.update" => each(data, |d| Ok(receipt(d))),
        "logout.instance" => Ok(vec![ConnectorEvent::Disconnected {
            reason: DisconnectReason::LoggedOut,
            detail: "evolution reports the device logged out".to_owned(),
        }]),
        // `send.message` echoes what was sent through the API (whatsnap knows its own sends
        // from the answer); everything else whatsnap does not subscribe to.
        _ => Ok(Vec::new()),
    }
}

/// `data` is one object; an array is read item by item.
fn each(
    data: &Value,
    read: impl Fn(&Value) -> Result<Option<ConnectorEvent>, WebhookError>,
) -> Result<Vec<ConnectorEvent>, WebhookError> {
    match data {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| read(item).transpose())
            .collect(),
        item => Ok(read(item)?.into_iter().collect()),
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `qrcode.updated`: `{qrcode: {instance, pairingCode, code, base64}}`, or, once the codes ran
/// out, `{message, statusCode}` — then the `connection.update` `refused` that follows says so.
fn qr_code(data: &Value) -> Option<ConnectorEvent> {
    if let Some(code) = str_at(data, "/qrcode/pairingCode") {
        return Some(ConnectorEvent::Linking(LinkCode::Pairing {
            code: code.to_owned(),
            valid_for: QR_VALIDITY,
        }));
    }
    let code = str_at(data, "/qrcode/code")?;
    Some(ConnectorEvent::Linking(LinkCode::Qr {
        code: code.to_owned(),
        valid_for: QR_VALIDITY,
    }))
}

/// `connection.update`: `{instance, state, statusReason, wuid?, profileName?, …}`.
fn connection(data: &Value) -> Option<ConnectorEvent> {
    let status = data.get("statusReason").and_then(Value::as_i64);
    match str_at(data, "/state")? {
        "open" => Some(ConnectorEvent::Connected {
            phone_number: str_at(data, "/wuid").and_then(phone_of_jid),
            display_name: str_at(data, "/profileName").map(str::to_owned),
        }),
        "refused" => Some(ConnectorEvent::Disconnected {
            reason: DisconnectReason::Refused,
            detail: "no QR code was scanned before evolution's codes ran out".to_owned(),
        }),
        "close" => {
            let (reason, what) = close_reason(status);
            Some(ConnectorEvent::Disconnected {
                reason,
                detail: match status {
                    Some(code) => format!("{what} (status {code})"),
                    None => what.to_owned(),
                },
            })
        }
        _ => None,
    }
}

/// Baileys' `DisconnectReason` codes, as Evolution passes them in `statusReason`.
pub fn close_reason(status: Option<i64>) -> (DisconnectReason, &'static str) {
    match status {
        Some(401) => (
            DisconnectReason::LoggedOut,
            "the device was logged out from the phone",
        ),
        Some(403) => (
            DisconnectReason::Banned,
            "WhatsApp refused the account (forbidden)",
        ),
        Some(428) => (
            DisconnectReason::Refused,
            "the link was refused before it opened",
        ),
        _ => (
            DisconnectReason::ConnectionLost,
            "evolution reports the connection closed",
        ),
    }
}

/// `+5511999999999` from `5511999999999@s.whatsapp.net` (or `…:12@s.whatsapp.net`, a device).
pub fn phone_of_jid(jid: &str) -> Option<String> {
    let (user, server) = jid.split_once('@')?;
    if server != "s.whatsapp.net" && server != "c.us" {
        return None;
    }
    let user = user.split(':').next().unwrap_or(user);
    (!user.is_empty() && user.bytes().all(|b| b.is_ascii_digit())).then(|| format!("+{user}"))
}

/// `123456789@lid` from a LID JID (without a device suffix).
fn lid_of_jid(jid: &str) -> Option<String> {
    let (user, server) = jid.split_once('@')?;
    if server != "lid" {
        return None;
    }
    let user = user.split(':').next().unwrap_or(user);
    (!user.is_empty()).then(|| format!("{user}@lid"))
}

/// Chats whatsnap does not bridge: groups, status broadcasts, broadcast lists, channels.
fn ignored_chat(jid: &str) -> bool {
    jid.ends_with("@g.us") || jid.ends_with("@broadcast") || jid.ends_with("@newsletter")
}

/// The other side of a chat, from a message's key: `remoteJid` is a phone number or a LID;
/// Baileys 7 puts the other form in `remoteJidAlt` (and names the first in `addressingMode`),
/// Baileys 6 in `senderPn` / `senderLid`.
fn peer_of_key(key: &Value) -> Option<Peer> {
    let remote = str_at(key, "/remoteJid")?;
    let others = ["/remoteJidAlt", "/senderPn", "/senderLid"]
        .iter()
        .filter_map(|p| str_at(key, p))
        .collect::<Vec<_>>();
    let phone = phone_of_jid(remote).or_else(|| others.iter().find_map(|j| phone_of_jid(j)));
    let lid = lid_of_jid(remote).or_else(|| others.iter().find_map(|j| lid_of_jid(j)));
    (phone.is_some() || lid.is_some()).then_some(Peer { phone, lid })
}

/// The text of a message: its body, or a media message's caption.
pub(crate) fn text_of(message: &Value) -> Option<&str> {
    [
        "/conversation",
        "/extendedTextMessage/text",
        "/imageMessage/caption",
        "/videoMessage/caption",
        "/documentMessage/caption",
        "/documentWithCaptionMessage/message/documentMessage/caption",
    ]
    .iter()
    .find_map(|p| str_at(message, p))
}

/// The media kinds whatsnap bridges, with the MIME type to assume when none is given.
const MEDIA: [(&str, &str); 6] = [
    ("imageMessage", "image/jpeg"),
    ("videoMessage", "video/mp4"),
    ("audioMessage", "audio/ogg"),
    ("documentMessage", "application/octet-stream"),
    ("ptvMessage", "video/mp4"),
    ("stickerMessage", "image/webp"),
];

/// The attachment of a media message: its bytes as a `data:` URL when the webhook carries them
/// (`webhook.base64: true` puts them in `message.base64`), or the storage URL Evolution gives
/// when it keeps media in S3 (`message.mediaUrl`).
fn attachment_of(message: &Value) -> Option<Attachment> {
    let media = message
        .get("documentWithCaptionMessage")
        .and_then(|m| m.pointer("/message/documentMessage"))
        .map(|doc| ("documentMessage", doc))
        .or_else(|| {
            MEDIA
                .iter()
                .find_map(|(kind, _)| message.get(*kind).map(|m| (*kind, m)))
        })?;
    let (kind, fields) = media;
    let default_mime = MEDIA
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("application/octet-stream", |(_, mime)| mime);
    let mime = str_at(fields, "/mimetype").unwrap_or(default_mime);
    let url = if let Some(data) = str_at(message, "/base64") {
        // `audio/ogg; codecs=opus` is not a valid data-URL media type with its space.
        let bare = mime.split(';').next().unwrap_or(mime).trim();
        format!("data:{bare};base64,{data}")
    } else {
        str_at(message, "/mediaUrl")?.to_owned()
    };
    Some(Attachment {
        url,
        content_type: Some(mime.to_owned()),
        file_name: str_at(fields, "/fileName").map(str::to_owned),
    })
}

/// The media type and bytes of a `data:…;base64,…` URL, as received media arrives in an
/// [`Attachment`]: what a consumer uploads (GHL takes attachments as URLs) before passing the
/// attachment on. `None` for any other URL.
pub fn data_url_bytes(url: &str) -> Option<(String, Vec<u8>)> {
    use base64::Engine as _;
    let (meta, data) = url.strip_prefix("data:")?.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    Some((mime.to_owned(), bytes))
}

fn timestamp_of(data: &Value) -> Option<DateTime<Utc>> {
    let seconds = match data.get("messageTimestamp")? {
        Value::Number(n) => n.as_i64()?,
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    DateTime::from_timestamp(seconds, 0)
}

/// `messages.upsert`: a message received, or typed on the phone (`key.fromMe`).
fn message(data: &Value) -> Result<Option<ConnectorEvent>, WebhookError> {
    let key = data
        .get("key")
        .ok_or_else(|| WebhookError::Malformed("messages.upsert without a key".to_owned()))?;
    let remote = str_at(key, "/remoteJid").unwrap_or_default();
    if ignored_chat(remote) {
        return Ok(None);
    }
    let id = str_at(key, "/id")
        .ok_or_else(|| WebhookError::Malformed("messages.upsert without key.id".to_owned()))?;
    let Some(peer) = peer_of_key(key) else {
        return Ok(None);
    };
    let from_me = key.get("fromMe").and_then(Value::as_bool).unwrap_or(false);
    let content = data.get("message").cloned().unwrap_or(Value::Null);
    let body = text_of(&content).unwrap_or_default().to_owned();
    let attachments: Vec<Attachment> = attachment_of(&content).into_iter().collect();
    if body.is_empty() && attachments.is_empty() {
        // Reactions, edits, polls, protocol messages: nothing a conversation shows.
        return Ok(None);
    }
    let sent_at = timestamp_of(data).ok_or_else(|| {
        WebhookError::Malformed("messages.upsert without a messageTimestamp".to_owned())
    })?;
    Ok(Some(ConnectorEvent::Message(ObservedMessage {
        provider_message_id: id.to_owned(),
        peer,
        from_me,
        // On a message typed on the phone the push name is the account's own.
        sender_name: (!from_me)
            .then(|| str_at(data, "/pushName").map(str::to_owned))
            .flatten(),
        body,
        attachments,
        sent_at,
    })))
}

/// `messages.update`: `{keyId, remoteJid, fromMe, participant, status, …}`. Only updates of the
/// account's own messages are receipts; `status` is Baileys' ack as Evolution names it.
fn receipt(data: &Value) -> Option<ConnectorEvent> {
    if !data.get("fromMe").and_then(Value::as_bool).unwrap_or(false) {
        return None;
    }
    if str_at(data, "/remoteJid").is_some_and(ignored_chat) {
        return None;
    }
    let id = str_at(data, "/keyId")?;
    let receipt = match str_at(data, "/status")? {
        "SERVER_ACK" => Receipt::Sent,
        "DELIVERY_ACK" => Receipt::Delivered,
        "READ" | "PLAYED" => Receipt::Read,
        "ERROR" => Receipt::Failed {
            reason: "WhatsApp could not deliver the message".to_owned(),
            code: Some("ERROR".to_owned()),
        },
        _ => return None,
    };
    Some(ConnectorEvent::Receipt {
        provider_message_id: id.to_owned(),
        receipt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jids_name_phones_and_lids() {
        assert_eq!(
            phone_of_jid("5511999999999@s.whatsapp.net").as_deref(),
            Some("+5511999999999")
        );
        assert_eq!(
            phone_of_jid("5511999999999:12@s.whatsapp.net").as_deref(),
            Some("+5511999999999")
        );
        assert_eq!(phone_of_jid("123@lid"), None);
        assert_eq!(phone_of_jid("120363@g.us"), None);
        assert_eq!(
            lid_of_jid("123456789@lid").as_deref(),
            Some("123456789@lid")
        );
    }

    #[test]
    fn a_webhook_body_shows_neither_its_token_nor_its_messages() {
        let body: WebhookBody = serde_json::from_value(serde_json::json!({
            "event": "messages.upsert", "instance": "acme", "apikey": "SECRET-TOKEN",
            "data": { "message": { "conversation": "private words" } },
        }))
        .unwrap();
        let shown = format!("{body:?}");
        assert!(shown.contains("messages.upsert"));
        assert!(!shown.contains("SECRET-TOKEN") && !shown.contains("private words"));
    }

    #[test]
    fn data_urls_give_back_their_bytes() {
        assert_eq!(
            data_url_bytes("data:image/jpeg;base64,/9j/4A=="),
            Some(("image/jpeg".to_owned(), vec![0xff, 0xd8, 0xff, 0xe0]))
        );
        assert_eq!(data_url_bytes("https://example.com/a.jpg"), None);
        assert_eq!(data_url_bytes("data:text/plain,hello"), None);
    }

    #[test]
    fn close_codes_read_as_reasons() {
        assert_eq!(close_reason(Some(401)).0, DisconnectReason::LoggedOut);
        assert_eq!(close_reason(Some(403)).0, DisconnectReason::Banned);
        assert_eq!(close_reason(Some(428)).0, DisconnectReason::Refused);
        assert_eq!(close_reason(Some(408)).0, DisconnectReason::ConnectionLost);
        assert_eq!(close_reason(None).0, DisconnectReason::ConnectionLost);
    }
}
