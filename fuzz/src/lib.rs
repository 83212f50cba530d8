//! The fuzz targets, as plain functions of the input bytes: libFuzzer calls them through the
//! binaries in `fuzz_targets/`, and `tests/corpus.rs` calls them over the corpus and every
//! input a fuzzer once found wrong. Each checks that whatsnap's reading of outside input never
//! panics and keeps its promises (a signature it makes checks out; a phone number it writes
//! reads back the same); a broken promise panics, which is what the fuzzer reports.

use serde_json::Value;
use whatsnap_events::PhoneNumber;
use whatsnap_ghl::signature::WebhookKeys;
use whatsnap_ghl::sso::{self, SharedSecret, SsoError};
use whatsnap_ghl::webhook::{self, AppIdentity, Delivery};
use whatsnap_twilio::{signature, webhook as twilio};

/// The parts of an input separated by newlines, for targets that take several strings; the
/// last part takes the rest.
fn parts<const N: usize>(data: &[u8]) -> [String; N] {
    let text = String::from_utf8_lossy(data);
    let mut split = text.splitn(N, '\n');
    std::array::from_fn(|_| split.next().unwrap_or_default().to_owned())
}

/// A Twilio webhook body: the form is read, then as an incoming message and as a status
/// callback, as the gateway does once the signature checks out.
pub fn twilio_form(data: &[u8]) {
    let Ok(params) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(data) else {
        return;
    };
    if let Ok(message) = twilio::parse_inbound(&params) {
        assert!(!message.message_sid.is_empty() && !message.from.is_empty());
        assert!(
            message.media.len() <= 10,
            "at most ten attachments are read"
        );
    }
    let _ = twilio::parse_status(&params);
}

/// A Twilio signature check: `auth token \n URL \n signature \n form`. Whatever the input, the
/// check answers; and the signature whatsnap computes for a form is accepted for it.
pub fn twilio_signature(data: &[u8]) {
    let [token, url, given, form] = parts::<4>(data);
    let params = serde_urlencoded::from_str::<Vec<(String, String)>>(&form).unwrap_or_default();
    let _ = signature::validate_form(&token, &url, &params, Some(&given));
    let _ = signature::validate_json(&token, &url, form.as_bytes(), Some(&given));
    if signature::validate_form(&token, &url, &params, None).is_ok() {
        panic!("a webhook without a signature was accepted");
    }
    let signed = signature::sign(&token, &url, &params);
    if url::Url::parse(&url).is_ok() {
        assert!(
            signature::validate_form(&token, &url, &params, Some(&signed)).is_ok(),
            "the signature of a form does not check out for it"
        );
    }
}

/// A GHL app webhook: `X-GHL-Signature \n body`. The signature is checked against GHL's
/// published keys (never valid here, never a panic), then the body is read as the gateway
/// reads it: which app and provider it is for, its timestamp, its fields.
pub fn ghl_webhook(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (header, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let header = String::from_utf8_lossy(header);
    assert!(
        WebhookKeys::published()
            .verify(Some(&header), Some(&header), body)
            .is_err(),
        "only GHL can sign with its keys"
    );
    let Ok(payload) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let app = AppIdentity {
        app_id: Some("app".into()),
        conversation_provider_id: Some("provider".into()),
    };
    let _ = app.foreign(&payload);
    let _ = payload.get("timestamp").and_then(webhook::timestamp);
    let _ = webhook::delivery_of(&app, &payload);
}

/// A Delivery URL body (ProviderOutboundMessage): read, or refused with a reason; a reply
/// read always names its location, message and phone.
pub fn ghl_delivery(data: &[u8]) {
    let app = AppIdentity {
        app_id: None,
        conversation_provider_id: Some("provider".into()),
    };
    if let Ok(Delivery::Reply(reply)) = webhook::delivery(&app, data) {
        for field in [&reply.location_id, &reply.message_id, &reply.phone] {
            assert!(!field.trim().is_empty());
        }
    }
}

/// A phone number as a sender, a webhook or an operator writes it: parsed or refused; one
/// parsed is E.164 and reads back as itself.
pub fn phone(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(number) = PhoneNumber::parse(text) {
        let e164 = number.as_str();
        assert!(e164.starts_with('+') && e164[1..].bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(
            PhoneNumber::parse(e164).as_ref(),
            Ok(&number),
            "{text:?} parsed as {e164}, which does not read back as itself"
        );
    }
}

/// A GHL SSO user context as a page posts it: `Shared Secret \n payload`. Whatever arrives, it
/// opens or is refused with a reason; and what GHL would encrypt with the secret — a context
/// or not — never reads as the wrong-secret case, and a context opens as itself.
pub fn ghl_sso(data: &[u8]) {
    let [secret, payload] = parts::<2>(data);
    let secret = SharedSecret::new(secret);
    let _ = sso::open(&secret, &payload);
    let sealed = sso::seal_like_ghl(&secret, &payload, *b"fuzzsalt");
    let opened = sso::open(&secret, &sealed);
    assert!(
        !matches!(opened, Err(SsoError::WrongSecret | SsoError::Malformed)),
        "what GHL encrypts does not open with the same secret: {opened:?}"
    );
    if let Ok(context) = opened {
        assert!(!context.user_id.trim().is_empty());
    }
}
