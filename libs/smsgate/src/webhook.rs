//! What the phone posts to whatsnap: one event per webhook (connectors.md §3.1, §6a), signed with
//! the signing key the app shows — `X-Signature` is the lowercase hex of
//! HMAC-SHA256(key, raw body + `X-Timestamp`), the timestamp in unix seconds. A webhook whose
//! signature does not match, or whose timestamp is further than [`MAX_SKEW`] from now (a replay),
//! is refused and nothing it carries is read.
//!
//! The phone retries a webhook that failed (up to 15 times from 5 s), signing each try anew: the
//! same message can arrive twice, and is known again by its `messageId`.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use whatsnap_connector::{ConnectorEvent, ObservedMessage, Peer, Receipt};

/// How far a webhook's `X-Timestamp` may be from now.
pub const MAX_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// The largest webhook whatsnap reads: SMS events are small (an MMS's content stays on the
/// phone).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Malformed(String),
}

/// The signature SMSGate puts on `body` sent at `timestamp`: lowercase hex.
pub fn sign(key: &str, body: &[u8], timestamp: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    mac.update(timestamp.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a webhook's signature and timestamp against the account's signing key.
pub fn verify(
    key: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), WebhookError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let (Some(signature), Some(timestamp)) = (header("x-signature"), header("x-timestamp")) else {
        return Err(WebhookError::Unauthenticated(
            "an SMSGate webhook must carry X-Signature and X-Timestamp".into(),
        ));
    };
    let expected = sign(key, body, timestamp);
    if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        return Err(WebhookError::Unauthenticated(
            "the X-Signature does not match the account's signing key".into(),
        ));
    }
    let sent = timestamp
        .parse::<i64>()
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .ok_or_else(|| {
            WebhookError::Unauthenticated("X-Timestamp is not a time in unix seconds".into())
        })?;
    if (now - sent).abs() > MAX_SKEW {
        return Err(WebhookError::Unauthenticated(format!(
            "the webhook was signed at {sent}, more than {} minutes from now (a replay?)",
            MAX_SKEW.num_minutes()
        )));
    }
    Ok(())
}

/// A webhook's body (`WebHookEventDTO`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookBody {
    /// The delivery's own id.
    pub id: String,
    /// The webhook's id: whatsnap's, as it registered it.
    #[serde(default)]
    pub webhook_id: Option<String>,
    #[serde(default)]
    pub device_id: Option<String>,
    pub event: String,
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// The payload of the `sms:*` and `mms:received` events (null fields left out, as Gson does).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SmsPayload {
    message_id: String,
    #[serde(default)]
    message: Option<String>,
    phone_number: String,
    #[serde(default)]
    sim_number: Option<u8>,
    #[serde(default)]
    received_at: Option<DateTime<chrono::FixedOffset>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    attachment_count: Option<u32>,
}

/// What one webhook says, in whatsnap's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// The device that sent it.
    pub device_id: Option<String>,
    /// A message or a receipt; `None` for a ping or an event whatsnap does not read.
    pub event: Option<ConnectorEvent>,
}

/// Reads a checked webhook. `sim` is the account's SIM: a message received on the other SIM
/// of a dual-SIM phone belongs to another account and is left out.
pub fn parse(body: &[u8], sim: Option<u8>) -> Result<Reported, WebhookError> {
    let body: WebhookBody = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("not an SMSGate webhook: {e}")))?;
    let payload = || {
        serde_json::from_value::<SmsPayload>(body.payload.clone()).map_err(|e| {
            WebhookError::Malformed(format!("the {} payload is not SMSGate's: {e}", body.event))
        })
    };
    let event = match body.event.as_str() {
        "sms:received" | "mms:received" => {
            let payload = payload()?;
            if let (Some(ours), Some(theirs)) = (sim, payload.sim_number)
                && ours != theirs
            {
                None
            } else {
                Some(ConnectorEvent::Message(received(&body.event, payload)))
            }
        }
        "sms:sent" | "sms:delivered" | "sms:failed" => {
            let payload = payload()?;
            // whatsnap names every message it sends with a UUID; another client's messages
            // on the same phone are none of its business.
            uuid::Uuid::parse_str(&payload.message_id).ok().map(|_| {
                let receipt = match body.event.as_str() {
                    "sms:sent" => Receipt::Sent,
                    "sms:delivered" => Receipt::Delivered,
                    _ => Receipt::Failed {
                        reason: failure_reason(payload.reason.as_deref()),
                        code: None,
                    },
                };
                ConnectorEvent::Receipt {
                    provider_message_id: payload.message_id,
                    receipt,
                }
            })
        }
        "system:ping" | "sms:data-received" | "mms:downloaded" => None,
        other => {
            return Err(WebhookError::Malformed(format!(
                "{other:?} is not an SMSGate event"
            )));
        }
    };
    Ok(Reported {
        device_id: body.device_id,
        event,
    })
}

fn received(event: &str, payload: SmsPayload) -> ObservedMessage {
    let body = if event == "mms:received" {
        let subject = payload.subject.filter(|s| !s.trim().is_empty());
        let count = payload.attachment_count.unwrap_or(0);
        format!(
            "[MMS{}: {count} attachment(s), open it on the phone]",
            subject.map(|s| format!(" \"{s}\"")).unwrap_or_default()
        )
    } else {
        payload.message.unwrap_or_default()
    };
    ObservedMessage {
        provider_message_id: payload.message_id,
        peer: Peer {
            phone: Some(payload.phone_number),
            lid: None,
        },
        from_me: false,
        sender_name: None,
        body,
        attachments: Vec::new(),
        sent_at: payload
            .received_at
            .map_or_else(Utc::now, |at| at.with_timezone(&Utc)),
    }
}

/// The phone's reason for a failed SMS, for a GHL user to read.
fn failure_reason(reason: Option<&str>) -> String {
    match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(reason) => format!("the phone could not send the SMS: {reason}"),
        None => "the phone could not send the SMS".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(signature: &str, timestamp: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-signature", signature.parse().unwrap());
        headers.insert("x-timestamp", timestamp.parse().unwrap());
        headers
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_body_and_timestamp_in_lowercase_hex() {
        // Computed with Python: hmac.new(b"key", b"{}1700000000", hashlib.sha256).hexdigest()
        assert_eq!(
            sign("key", b"{}", "1700000000"),
            "93800482ca289ca2ab5ad69bbb6a631e6a997ad0fb659f5edfb80f566fc07457"
        );
    }

    #[test]
    fn a_signed_fresh_webhook_passes_and_anything_else_is_refused() {
        let now = Utc::now();
        let ts = now.timestamp().to_string();
        let body = br#"{"id":"e1","event":"system:ping","payload":{"health":{}}}"#;
        let good = sign("signing-key", body, &ts);
        assert_eq!(
            verify("signing-key", &headers(&good, &ts), body, now),
            Ok(())
        );
        let forged = sign("another-key", body, &ts);
        assert!(verify("signing-key", &headers(&forged, &ts), body, now).is_err());
        let tampered = br#"{"id":"e1","event":"system:ping","payload":{"health":1}}"#;
        assert!(verify("signing-key", &headers(&good, &ts), tampered, now).is_err());
        let old = (now - chrono::Duration::minutes(6)).timestamp().to_string();
        let stale = sign("signing-key", body, &old);
        assert!(verify("signing-key", &headers(&stale, &old), body, now).is_err());
        let later = (now + chrono::Duration::minutes(6)).timestamp().to_string();
        let future = sign("signing-key", body, &later);
        assert!(verify("signing-key", &headers(&future, &later), body, now).is_err());
        assert!(verify("signing-key", &http::HeaderMap::new(), body, now).is_err());
    }

    #[test]
    fn a_received_sms_is_a_message_from_its_sender() {
        let body = br#"{"id":"ev1","webhookId":"w","deviceId":"dev1","event":"sms:received",
            "payload":{"messageId":"abc","message":"Hi there","phoneNumber":"+19162255887",
            "simNumber":1,"receivedAt":"2024-06-07T11:41:31.000+07:00"}}"#;
        let reported = parse(body, None).unwrap();
        assert_eq!(reported.device_id.as_deref(), Some("dev1"));
        let Some(ConnectorEvent::Message(message)) = reported.event else {
            panic!("a message");
        };
        assert_eq!(message.provider_message_id, "abc");
        assert_eq!(message.peer.phone.as_deref(), Some("+19162255887"));
        assert_eq!(message.body, "Hi there");
        assert!(!message.from_me);
        assert_eq!(message.sent_at.to_rfc3339(), "2024-06-07T04:41:31+00:00");
        assert_eq!(parse(body, Some(2)).unwrap().event, None, "the other SIM's");
    }

    #[test]
    fn reports_on_whatsnaps_sends_are_receipts_with_the_phones_reason() {
        let id = uuid::Uuid::now_v7().to_string();
        let failed = format!(
            r#"{{"id":"ev2","event":"sms:failed","payload":{{"messageId":"{id}","phoneNumber":"+1","reason":"RESULT_ERROR_NO_SERVICE","failedAt":"2024-06-07T11:41:31.000+07:00"}}}}"#
        );
        let Some(ConnectorEvent::Receipt {
            provider_message_id,
            receipt: Receipt::Failed { reason, .. },
        }) = parse(failed.as_bytes(), None).unwrap().event
        else {
            panic!("a failure");
        };
        assert_eq!(provider_message_id, id);
        assert!(reason.contains("RESULT_ERROR_NO_SERVICE"), "{reason}");
        let other_client = br#"{"id":"ev3","event":"sms:delivered","payload":{"messageId":"Xy7_abc","phoneNumber":"+1"}}"#;
        assert_eq!(parse(other_client, None).unwrap().event, None);
    }

    #[test]
    fn bodies_that_are_not_smsgate_events_are_malformed() {
        assert!(matches!(
            parse(b"not json", None),
            Err(WebhookError::Malformed(_))
        ));
        assert!(matches!(
            parse(br#"{"id":"e","event":"sms:exploded","payload":{}}"#, None),
            Err(WebhookError::Malformed(_))
        ));
        assert!(matches!(
            parse(
                br#"{"id":"e","event":"sms:received","payload":{"message":"x"}}"#,
                None
            ),
            Err(WebhookError::Malformed(_))
        ));
    }
}
