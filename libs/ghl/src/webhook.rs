//! What GHL posts to the app, read (`ghl-api.md` §2.2, §6): the Conversation Provider's
//! ProviderOutboundMessage (the Delivery URL), which app and conversation provider a webhook
//! is for, and its `timestamp`. Pure functions over the body whose signature
//! ([`crate::signature`]) has been checked; the gateway acts on what they give.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// The marketplace app whatsnap is, as GHL names it in webhooks. An agency may install several
/// apps that post to the same URL (or a misconfigured one may): what is not addressed to this
/// app, or to its conversation provider, is not whatsnap's to act on.
#[derive(Clone, Debug, Default)]
pub struct AppIdentity {
    /// The app's id (`appId` in INSTALL, UNINSTALL and newer webhooks); unchecked when unset.
    pub app_id: Option<String>,
    /// The Conversation Provider's id (`conversationProviderId`); unchecked when unset.
    pub conversation_provider_id: Option<String>,
}

impl AppIdentity {
    /// Why `payload` is for another app or conversation provider, if it names one. A payload
    /// that names none is taken as whatsnap's (GHL leaves both out of several webhooks).
    pub fn foreign(&self, payload: &Value) -> Option<String> {
        let named = |field: &str| {
            payload
                .get(field)
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty())
        };
        if let (Some(ours), Some(theirs)) = (&self.app_id, named("appId"))
            && ours != theirs
        {
            return Some(format!("for another GHL app ({theirs})"));
        }
        if let (Some(ours), Some(theirs)) = (
            &self.conversation_provider_id,
            named("conversationProviderId"),
        ) && ours != theirs
        {
            return Some(format!("for another conversation provider ({theirs})"));
        }
        None
    }
}

/// A webhook's `timestamp`: ISO 8601 text, or milliseconds since the epoch.
pub fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| at.with_timezone(&Utc)),
        Value::Number(ms) => DateTime::from_timestamp_millis(ms.as_i64()?),
        _ => None,
    }
}

/// A reply a GHL user or workflow sent through the app (ProviderOutboundMessage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    pub location_id: String,
    pub message_id: String,
    pub contact_id: String,
    pub phone: String,
    pub message: String,
    pub attachment_urls: Vec<String>,
    /// Empty when no user sent it (a workflow).
    pub user_id: String,
}

/// What the Delivery URL received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A reply to send.
    Reply(OutboundMessage),
    /// Not whatsnap's to send (another app or provider, an email); the reason says why.
    Ignored(String),
}

/// What makes a Delivery URL body unusable; GHL is answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("the body is not a JSON object")]
    NotJson,
    #[error("the ProviderOutboundMessage has no {0}")]
    Missing(&'static str),
}

/// Reads a Delivery URL body.
pub fn delivery(app: &AppIdentity, body: &[u8]) -> Result<Delivery, DeliveryError> {
    let payload: Value = serde_json::from_slice(body).map_err(|_| DeliveryError::NotJson)?;
    delivery_of(app, &payload)
}

/// As [`delivery`], for a body already read as JSON.
pub fn delivery_of(app: &AppIdentity, payload: &Value) -> Result<Delivery, DeliveryError> {
    if !payload.is_object() {
        return Err(DeliveryError::NotJson);
    }
    if let Some(why) = app.foreign(payload) {
        return Ok(Delivery::Ignored(why));
    }
    let text = |field: &str| {
        payload
            .get(field)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let kind = text("type");
    if !matches!(kind.as_str(), "SMS" | "Custom" | "") {
        return Ok(Delivery::Ignored(format!(
            "whatsnap delivers SMS, not {kind:?}"
        )));
    }
    for field in ["locationId", "messageId", "phone"] {
        if text(field).trim().is_empty() {
            return Err(DeliveryError::Missing(field));
        }
    }
    let attachment_urls = payload
        .get("attachments")
        .and_then(|a| a.as_array())
        .map(|urls| {
            urls.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Delivery::Reply(OutboundMessage {
        location_id: text("locationId"),
        message_id: text("messageId"),
        contact_id: text("contactId"),
        phone: text("phone"),
        message: text("message"),
        attachment_urls,
        user_id: text("userId"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ours() -> AppIdentity {
        AppIdentity {
            app_id: Some("app1".into()),
            conversation_provider_id: Some("cp1".into()),
        }
    }

    #[test]
    fn a_reply_for_our_provider_is_read_and_another_providers_is_ignored() {
        let body = json!({"type": "SMS", "locationId": "L", "messageId": "m1", "phone": "+14155550100",
            "message": "hi", "attachments": ["https://x/y.png", 3], "conversationProviderId": "cp1"});
        let Ok(Delivery::Reply(reply)) = delivery_of(&ours(), &body) else {
            panic!("a reply")
        };
        assert_eq!(reply.attachment_urls, ["https://x/y.png"]);
        let mut theirs = body.clone();
        theirs["conversationProviderId"] = json!("cp2");
        assert_eq!(
            delivery_of(&ours(), &theirs),
            Ok(Delivery::Ignored(
                "for another conversation provider (cp2)".into()
            ))
        );
        assert_eq!(
            delivery(&ours(), b"[1]"),
            Err(DeliveryError::NotJson),
            "an array is not a ProviderOutboundMessage"
        );
        assert_eq!(
            delivery(&ours(), br#"{"type":"SMS","locationId":"L","phone":"+1"}"#),
            Err(DeliveryError::Missing("messageId"))
        );
    }

    #[test]
    fn another_apps_webhook_is_foreign_and_one_that_names_none_is_ours() {
        assert_eq!(
            ours().foreign(&json!({"type": "INSTALL", "appId": "app2"})),
            Some("for another GHL app (app2)".into())
        );
        assert_eq!(
            ours().foreign(&json!({"type": "INSTALL", "appId": "app1"})),
            None
        );
        assert_eq!(ours().foreign(&json!({"type": "ContactTagUpdate"})), None);
        assert_eq!(
            AppIdentity::default().foreign(&json!({"appId": "anything"})),
            None
        );
    }

    #[test]
    fn timestamps_are_iso_8601_or_milliseconds() {
        assert!(timestamp(&json!("2026-12-02T15:00:00Z")).is_some());
        assert!(timestamp(&json!(1_764_687_600_000_i64)).is_some());
        for unreadable in [json!("yesterday"), json!(1.5), json!(null), json!([])] {
            assert!(timestamp(&unreadable).is_none(), "{unreadable}");
        }
    }
}
