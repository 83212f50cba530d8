//! What Meta posts to a Cloud API number's webhook, checked and read in whatsnap's terms.
//!
//! Every POST is signed: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>`
//! ([`verify_signature`], compared in constant time). The body is
//! `{"object": "whatsapp_business_account", "entry": [{"id": <WABA id>, "changes": [{"field",
//! "value"}]}]}`; a `messages` change's `value` carries `metadata.phone_number_id` and any of
//! `contacts[]`, `messages[]` (received) and `statuses[]` (what the number sent: sent,
//! delivered, read, failed with `errors[]`); an `smb_message_echoes` change carries
//! `message_echoes[]`, messages typed in the WhatsApp Business app on the same number.
//!
//! Meta retries a delivery that was not answered 200 (with decreasing frequency, for days): the
//! same message can arrive again, and is recognised by its `wamid`.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;
use whatsnap_connector::{ConnectorEvent, ObservedMessage, Peer, Receipt, WebhookError};
use whatsnap_events::Attachment;

/// The header Meta signs its webhooks in.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// The largest webhook body read: Meta's notifications are small JSON (media travels by id).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Meta's error code for a free-form message outside the 24-hour customer service window.
pub const RE_ENGAGEMENT: &str = "131047";

/// `sha256=<hex HMAC-SHA256(app_secret, body)>`, as Meta signs a webhook.
pub fn sign(app_secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).expect("HMAC takes any key size");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses a body that is too large or not signed with `app_secret`.
pub fn verify_signature(
    headers: &http::HeaderMap,
    body: &[u8],
    app_secret: &str,
) -> Result<(), WebhookError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(WebhookError::Malformed(format!(
            "a Cloud API webhook of {} bytes is larger than any Meta sends ({MAX_BODY_BYTES})",
            body.len()
        )));
    }
    let given = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            WebhookError::Unauthenticated("the webhook has no X-Hub-Signature-256".into())
        })?;
    let expected = sign(app_secret, body);
    if bool::from(given.trim().as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(WebhookError::Unauthenticated(
            "the webhook's X-Hub-Signature-256 is not the app secret's".into(),
        ))
    }
}

/// What a signed body reports for the number `phone_number_id`; changes about other numbers of
/// the same Meta app are left out. `media_url` names a received medium by its id (the connector
/// fetches it later with the account's token).
pub fn events_of(
    body: &[u8],
    phone_number_id: &str,
    media_url: &dyn Fn(&str) -> String,
) -> Result<Vec<ConnectorEvent>, WebhookError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("not a Cloud API webhook: {e}")))?;
    if body.get("object").and_then(Value::as_str) != Some("whatsapp_business_account") {
        return Err(WebhookError::Malformed(
            "not a WhatsApp Business Account webhook (object)".into(),
        ));
    }
    let entries = body
        .get("entry")
        .and_then(Value::as_array)
        .ok_or_else(|| WebhookError::Malformed("a webhook without entry[]".into()))?;
    let mut events = Vec::new();
    for change in entries
        .iter()
        .filter_map(|entry| entry.get("changes").and_then(Value::as_array))
        .flatten()
    {
        let value = change.get("value").unwrap_or(&Value::Null);
        if str_at(value, "/metadata/phone_number_id") != Some(phone_number_id) {
            continue;
        }
        match change.get("field").and_then(Value::as_str) {
            Some("messages") => {
                for message in array(value, "messages") {
                    events.extend(received(value, message, media_url)?);
                }
                for status in array(value, "statuses") {
                    events.extend(receipt(status)?);
                }
            }
            Some("smb_message_echoes") => {
                for echo in array(value, "message_echoes") {
                    events.extend(echoed(echo, media_url)?);
                }
            }
            _ => {}
        }
    }
    Ok(events)
}

fn array<'a>(value: &'a Value, name: &str) -> &'a [Value] {
    value
        .get(name)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn required<'a>(value: &'a Value, pointer: &str, what: &str) -> Result<&'a str, WebhookError> {
    str_at(value, pointer)
        .ok_or_else(|| WebhookError::Malformed(format!("{what} without {}", &pointer[1..])))
}

/// `+14155550100` from WhatsApp's `14155550100`.
fn e164(wa_id: &str) -> Option<String> {
    let digits = wa_id.trim().trim_start_matches('+');
    (!digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("+{digits}"))
}

fn timestamp(value: &Value, what: &str) -> Result<DateTime<Utc>, WebhookError> {
    required(value, "/timestamp", what)?
        .parse::<i64>()
        .ok()
        .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
        .ok_or_else(|| WebhookError::Malformed(format!("{what} with an unreadable timestamp")))
}

/// The media kinds whatsnap bridges, with the type to assume when Meta gives none.
const MEDIA: [(&str, &str); 5] = [
    ("image", "image/jpeg"),
    ("video", "video/mp4"),
    ("audio", "audio/ogg"),
    ("document", "application/octet-stream"),
    ("sticker", "image/webp"),
];

/// The text and file of a message (received or echoed); `None` for what a conversation does
/// not show (reactions, system notices, unsupported types).
fn content(
    message: &Value,
    media_url: &dyn Fn(&str) -> String,
) -> Option<(String, Vec<Attachment>)> {
    let kind = str_at(message, "/type")?;
    if let Some((_, default_mime)) = MEDIA.iter().find(|(k, _)| *k == kind) {
        let media = message.get(kind)?;
        let id = str_at(media, "/id")?;
        let attachment = Attachment {
            url: media_url(id),
            content_type: Some(
                str_at(media, "/mime_type")
                    .unwrap_or(default_mime)
                    .to_owned(),
            ),
            file_name: str_at(media, "/filename").map(str::to_owned),
        };
        let caption = str_at(media, "/caption").unwrap_or_default().to_owned();
        return Some((caption, vec![attachment]));
    }
    let text = match kind {
        "text" => str_at(message, "/text/body"),
        "button" => str_at(message, "/button/text"),
        "interactive" => str_at(message, "/interactive/button_reply/title")
            .or_else(|| str_at(message, "/interactive/list_reply/title")),
        _ => None,
    }?;
    Some((text.to_owned(), Vec::new()))
}

/// A `messages[]` item: received from a customer.
fn received(
    value: &Value,
    message: &Value,
    media_url: &dyn Fn(&str) -> String,
) -> Result<Option<ConnectorEvent>, WebhookError> {
    let id = required(message, "/id", "a message")?;
    let from = required(message, "/from", "a message")?;
    let phone = e164(from)
        .ok_or_else(|| WebhookError::Malformed(format!("message {id} is from no phone number")))?;
    let sent_at = timestamp(message, "a message")?;
    let Some((body, attachments)) = content(message, media_url) else {
        return Ok(None);
    };
    let sender_name = array(value, "contacts")
        .iter()
        .find(|c| str_at(c, "/wa_id") == Some(from))
        .and_then(|c| str_at(c, "/profile/name"))
        .map(str::to_owned);
    Ok(Some(ConnectorEvent::Message(ObservedMessage {
        provider_message_id: id.to_owned(),
        peer: Peer {
            phone: Some(phone),
            lid: None,
        },
        from_me: false,
        sender_name,
        body,
        attachments,
        sent_at,
    })))
}

/// A `message_echoes[]` item: typed in the WhatsApp Business app on the number, to `to`.
fn echoed(
    echo: &Value,
    media_url: &dyn Fn(&str) -> String,
) -> Result<Option<ConnectorEvent>, WebhookError> {
    let id = required(echo, "/id", "a message echo")?;
    let to = required(echo, "/to", "a message echo")?;
    let phone = e164(to)
        .ok_or_else(|| WebhookError::Malformed(format!("echo {id} is to no phone number")))?;
    let sent_at = timestamp(echo, "a message echo")?;
    let Some((body, attachments)) = content(echo, media_url) else {
        return Ok(None);
    };
    Ok(Some(ConnectorEvent::Message(ObservedMessage {
        provider_message_id: id.to_owned(),
        peer: Peer {
            phone: Some(phone),
            lid: None,
        },
        from_me: true,
        sender_name: None,
        body,
        attachments,
        sent_at,
    })))
}

/// A `statuses[]` item: how far a message the number sent has got.
fn receipt(status: &Value) -> Result<Option<ConnectorEvent>, WebhookError> {
    let id = required(status, "/id", "a status")?;
    let receipt = match required(status, "/status", "a status")? {
        "sent" => Receipt::Sent,
        "delivered" => Receipt::Delivered,
        "read" => Receipt::Read,
        "failed" => failure(status),
        // `deleted`, `warning` and whatever Meta adds: nothing a GHL message shows.
        _ => return Ok(None),
    };
    Ok(Some(ConnectorEvent::Receipt {
        provider_message_id: id.to_owned(),
        receipt,
    }))
}

/// A `failed` status, with Meta's first error in words a GHL user can act on.
fn failure(status: &Value) -> Receipt {
    let error = array(status, "errors").first();
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(Value::as_i64)
        .map(|c| c.to_string());
    let title = error
        .and_then(|e| str_at(e, "/title").or_else(|| str_at(e, "/message")))
        .unwrap_or("no reason given");
    let details = error.and_then(|e| str_at(e, "/error_data/details"));
    let reason = match code.as_deref() {
        Some(RE_ENGAGEMENT) => outside_window(),
        Some(code) => match details {
            Some(details) => format!("WhatsApp did not deliver it: {title} ({code}): {details}"),
            None => format!("WhatsApp did not deliver it: {title} ({code})"),
        },
        None => format!("WhatsApp did not deliver it: {title}"),
    };
    Receipt::Failed { reason, code }
}

/// Why a free-form reply outside the customer service window failed, and what to do.
pub fn outside_window() -> String {
    "more than 24 hours have passed since the customer last wrote: WhatsApp delivers only an \
     approved template now (reply `/template <name> <language> [param …]`) (131047 \
     Re-engagement message)"
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NUMBER_ID: &str = "106540352242922";

    fn media_url(id: &str) -> String {
        format!("https://graph.example/v24.0/{id}")
    }

    fn change(field: &str, value: Value) -> Vec<u8> {
        json!({
            "object": "whatsapp_business_account",
            "entry": [{ "id": "102290129340398", "changes": [{ "field": field, "value": value }] }],
        })
        .to_string()
        .into_bytes()
    }

    fn metadata() -> Value {
        json!({ "display_phone_number": "15550001111", "phone_number_id": NUMBER_ID })
    }

    #[test]
    fn a_body_signed_with_the_app_secret_passes_and_any_other_is_refused() {
        let body = b"{\"object\":\"whatsapp_business_account\"}";
        let mut headers = http::HeaderMap::new();
        assert!(matches!(
            verify_signature(&headers, body, "app-secret"),
            Err(WebhookError::Unauthenticated(_))
        ));
        headers.insert(SIGNATURE_HEADER, sign("app-secret", body).parse().unwrap());
        assert_eq!(verify_signature(&headers, body, "app-secret"), Ok(()));
        assert!(verify_signature(&headers, body, "another-secret").is_err());
        assert!(verify_signature(&headers, b"{\"object\":1}", "app-secret").is_err());
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(matches!(
            verify_signature(&headers, &huge, "app-secret"),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn the_signature_is_hex_hmac_sha256() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), RFC 4231 style.
        assert_eq!(
            sign("key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn a_text_and_a_photo_become_messages_from_the_customer() {
        let body = change(
            "messages",
            json!({
                "messaging_product": "whatsapp",
                "metadata": metadata(),
                "contacts": [{ "profile": { "name": "Ana Lima" }, "wa_id": "14155550100" }],
                "messages": [
                    { "from": "14155550100", "id": "wamid.A", "timestamp": "1764680000",
                      "type": "text", "text": { "body": "Hola" } },
                    { "from": "14155550100", "id": "wamid.B", "timestamp": "1764680001",
                      "type": "image", "image": { "id": "1234", "mime_type": "image/png",
                      "sha256": "x", "caption": "el menú" } },
                    { "from": "14155550100", "id": "wamid.C", "timestamp": "1764680002",
                      "type": "reaction", "reaction": { "message_id": "wamid.B", "emoji": "👍" } },
                ],
            }),
        );
        let events = events_of(&body, NUMBER_ID, &media_url).unwrap();
        assert_eq!(events.len(), 2, "a reaction shows nothing: {events:?}");
        let ConnectorEvent::Message(text) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(text.peer.phone.as_deref(), Some("+14155550100"));
        assert_eq!(text.sender_name.as_deref(), Some("Ana Lima"));
        assert_eq!((text.body.as_str(), text.from_me), ("Hola", false));
        let ConnectorEvent::Message(photo) = &events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(photo.body, "el menú");
        assert_eq!(photo.attachments[0].url, "https://graph.example/v24.0/1234");
        assert_eq!(
            photo.attachments[0].content_type.as_deref(),
            Some("image/png")
        );
    }

    #[test]
    fn statuses_become_receipts_and_131047_says_a_template_is_needed() {
        let body = change(
            "messages",
            json!({
                "messaging_product": "whatsapp",
                "metadata": metadata(),
                "statuses": [
                    { "id": "wamid.S", "status": "delivered", "timestamp": "1764680000",
                      "recipient_id": "14155550100" },
                    { "id": "wamid.T", "status": "failed", "timestamp": "1764680000",
                      "recipient_id": "14155550100", "errors": [{ "code": 131047,
                      "title": "Re-engagement message", "message": "Re-engagement message",
                      "error_data": { "details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number." } }] },
                ],
            }),
        );
        let events = events_of(&body, NUMBER_ID, &media_url).unwrap();
        assert_eq!(
            events[0],
            ConnectorEvent::Receipt {
                provider_message_id: "wamid.S".into(),
                receipt: Receipt::Delivered
            }
        );
        let ConnectorEvent::Receipt {
            receipt: Receipt::Failed { reason, code },
            ..
        } = &events[1]
        else {
            panic!("{events:?}")
        };
        assert_eq!(code.as_deref(), Some("131047"));
        assert!(reason.contains("template"), "{reason}");
    }

    #[test]
    fn an_echo_is_a_message_typed_on_the_business_app() {
        let body = change(
            "smb_message_echoes",
            json!({
                "messaging_product": "whatsapp",
                "metadata": metadata(),
                "message_echoes": [{ "from": "15550001111", "to": "14155550100",
                  "id": "wamid.E", "timestamp": "1764680000", "type": "text",
                  "text": { "body": "Te guardo una mesa" } }],
            }),
        );
        let events = events_of(&body, NUMBER_ID, &media_url).unwrap();
        let ConnectorEvent::Message(typed) = &events[0] else {
            panic!("{events:?}")
        };
        assert!(typed.from_me);
        assert_eq!(typed.peer.phone.as_deref(), Some("+14155550100"));
    }

    #[test]
    fn another_number_of_the_app_is_left_out_and_a_bad_body_refused() {
        let other = change(
            "messages",
            json!({ "metadata": { "phone_number_id": "999" }, "messages": [
                { "from": "1", "id": "w", "timestamp": "1", "type": "text", "text": { "body": "x" } }
            ]}),
        );
        assert_eq!(events_of(&other, NUMBER_ID, &media_url).unwrap(), []);
        assert!(matches!(
            events_of(b"not json", NUMBER_ID, &media_url),
            Err(WebhookError::Malformed(_))
        ));
        assert!(matches!(
            events_of(br#"{"object":"page","entry":[]}"#, NUMBER_ID, &media_url),
            Err(WebhookError::Malformed(_))
        ));
        let no_id = change(
            "messages",
            json!({ "metadata": metadata(), "messages": [
                { "from": "14155550100", "timestamp": "1", "type": "text", "text": { "body": "x" } }
            ]}),
        );
        assert!(matches!(
            events_of(&no_id, NUMBER_ID, &media_url),
            Err(WebhookError::Malformed(_))
        ));
    }
}
