//! What BlueBubbles reports, in whatsnap's terms: its `MessageResponse` (in webhooks, send
//! answers and message queries) and its webhook bodies `{type, data}`. BlueBubbles signs
//! nothing: the webhook's secret is checked by the connector before anything here is read.

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;
use whatsnap_connector::{ConnectorEvent, ObservedMessage, Peer, Receipt};

/// A message as BlueBubbles serializes it (the fields whatsnap reads).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BbMessage {
    pub guid: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub handle: Option<Handle>,
    #[serde(default)]
    pub is_from_me: bool,
    /// ms since the epoch.
    #[serde(default)]
    pub date_created: Option<i64>,
    #[serde(default)]
    pub date_delivered: Option<i64>,
    #[serde(default)]
    pub date_read: Option<i64>,
    #[serde(default)]
    pub attachments: Vec<BbAttachment>,
    /// Absent from `updated-message` (§6a).
    #[serde(default)]
    pub chats: Vec<ChatRef>,
    /// Messages' own error code; 0 when none.
    #[serde(default)]
    pub error: i64,
    /// Set on a tapback or a reaction, which is not a message of its own.
    #[serde(default)]
    pub associated_message_guid: Option<String>,
    #[serde(default)]
    pub temp_guid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Handle {
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatRef {
    pub guid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BbAttachment {
    pub guid: String,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub transfer_name: Option<String>,
}

/// A webhook body.
#[derive(Debug, Deserialize)]
pub struct WebhookBody {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Value,
}

/// Why a webhook body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// The other side of a one-to-one chat: `iMessage;-;+1555…` or `SMS;-;+1555…`. Group chats
/// (`;+;`) have none.
pub fn address_of_chat(chat_guid: &str) -> Option<&str> {
    let (_, address) = chat_guid.split_once(";-;")?;
    (!address.is_empty()).then_some(address)
}

/// The chat GUID of `address` on `service` (`iMessage` or `SMS`).
pub fn chat_guid(service: &str, address: &str) -> String {
    format!("{service};-;{address}")
}

fn time_of(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
}

impl BbMessage {
    /// The other side of the chat: the chat's address, else the sender's handle. `None` in a
    /// group chat.
    pub fn peer_address(&self) -> Option<&str> {
        if let Some(chat) = self.chats.first() {
            return address_of_chat(&chat.guid);
        }
        self.handle.as_ref().map(|h| h.address.as_str())
    }

    /// The message as whatsnap records it; `None` for what is not a message of a one-to-one
    /// chat with a phone number (a tapback, a group chat, an Apple ID e-mail address: GHL
    /// contacts here are phone numbers).
    pub fn observed(&self) -> Option<ObservedMessage> {
        if self
            .associated_message_guid
            .as_deref()
            .is_some_and(|g| !g.is_empty())
        {
            return None;
        }
        let address = self.peer_address()?;
        if address.contains('@') {
            return None;
        }
        Some(ObservedMessage {
            provider_message_id: self.guid.clone(),
            peer: Peer {
                phone: Some(address.to_owned()),
                lid: None,
            },
            from_me: self.is_from_me,
            sender_name: None,
            body: self.body(),
            // The Mac serves a file only with its password: it is not handed to GHL.
            attachments: Vec::new(),
            sent_at: self.date_created.map_or_else(Utc::now, time_of),
        })
    }

    /// The text, with each file named: the Mac serves files only with its password, which
    /// must not travel to GHL, so they are not shown there (yet).
    fn body(&self) -> String {
        let mut body = self
            .text
            .clone()
            .unwrap_or_default()
            .replace('\u{fffc}', "");
        for attachment in &self.attachments {
            let name = attachment.transfer_name.as_deref().unwrap_or("a file");
            if !body.is_empty() {
                body.push('\n');
            }
            body.push_str(&format!("[{name}: open it on the Mac or iPhone]"));
        }
        body
    }

    /// The receipts an update of a message whatsnap sent carries: delivered, read.
    pub fn receipts(&self) -> Vec<ConnectorEvent> {
        if !self.is_from_me {
            return Vec::new();
        }
        let mut receipts = Vec::new();
        if self.date_delivered.is_some_and(|d| d > 0) {
            receipts.push(Receipt::Delivered);
        }
        if self.date_read.is_some_and(|d| d > 0) {
            receipts.push(Receipt::Read);
        }
        receipts
            .into_iter()
            .map(|receipt| ConnectorEvent::Receipt {
                provider_message_id: self.guid.clone(),
                receipt,
            })
            .collect()
    }
}

/// What a webhook body reports. Events whatsnap did not subscribe to are read as nothing: a
/// webhook added by hand in the server's UI may send them.
pub fn events_of(body: &[u8]) -> Result<Vec<ConnectorEvent>, Unreadable> {
    let body: WebhookBody = serde_json::from_slice(body)
        .map_err(|e| Unreadable(format!("not a BlueBubbles webhook body: {e}")))?;
    let message = || {
        serde_json::from_value::<BbMessage>(body.data.clone())
            .map_err(|e| Unreadable(format!("{}: not a message: {e}", body.kind)))
    };
    Ok(match body.kind.as_str() {
        "new-message" => message()?
            .observed()
            .map(ConnectorEvent::Message)
            .into_iter()
            .collect(),
        "updated-message" => message()?.receipts(),
        "message-send-error" => {
            let message = message()?;
            vec![ConnectorEvent::Receipt {
                provider_message_id: message.guid,
                receipt: Receipt::Failed {
                    reason: format!(
                        "the Mac could not send it (Messages error {})",
                        message.error
                    ),
                    code: Some(message.error.to_string()),
                },
            }]
        }
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn received() -> Value {
        json!({
            "type": "new-message",
            "data": {
                "originalROWID": 41, "guid": "p:0/AAAA-1111", "text": "Are you open today?",
                "handle": {"originalROWID": 3, "address": "+14155550100", "service": "iMessage"},
                "handleId": 3, "isFromMe": false, "dateCreated": 1764676800000i64,
                "dateDelivered": null, "dateRead": null, "error": 0,
                "attachments": [{"guid": "att-1", "mimeType": "image/jpeg", "transferName": "menu.jpg"}],
                "chats": [{"guid": "iMessage;-;+14155550100", "chatIdentifier": "+14155550100"}],
                "associatedMessageGuid": null
            }
        })
    }

    #[test]
    fn a_received_message_names_its_sender_and_files() {
        let events = events_of(received().to_string().as_bytes()).unwrap();
        let [ConnectorEvent::Message(message)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(message.provider_message_id, "p:0/AAAA-1111");
        assert_eq!(message.peer.phone.as_deref(), Some("+14155550100"));
        assert!(!message.from_me);
        assert_eq!(message.sent_at.timestamp(), 1_764_676_800);
        assert!(
            message.attachments.is_empty(),
            "the Mac's password stays home"
        );
        assert_eq!(
            message.body,
            "Are you open today?\n[menu.jpg: open it on the Mac or iPhone]"
        );
    }

    #[test]
    fn a_message_typed_on_the_mac_names_the_chat_not_the_handle() {
        let mut body = received();
        body["data"]["isFromMe"] = json!(true);
        body["data"]["handle"] = Value::Null;
        body["data"]["chats"] = json!([{"guid": "SMS;-;+14155550100"}]);
        let events = events_of(body.to_string().as_bytes()).unwrap();
        let [ConnectorEvent::Message(message)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert!(message.from_me);
        assert_eq!(message.peer.phone.as_deref(), Some("+14155550100"));
    }

    #[test]
    fn groups_tapbacks_and_email_handles_are_not_messages() {
        for (field, value) in [
            ("chats", json!([{"guid": "iMessage;+;chat1234"}])),
            ("associatedMessageGuid", json!("p:0/BBBB")),
            ("chats", json!([{"guid": "iMessage;-;ana@icloud.com"}])),
        ] {
            let mut body = received();
            body["data"][field] = value;
            assert_eq!(events_of(body.to_string().as_bytes()).unwrap(), []);
        }
    }

    #[test]
    fn an_update_without_chats_is_matched_by_guid() {
        let body = json!({"type": "updated-message", "data": {
            "guid": "p:0/SENT", "isFromMe": true, "dateDelivered": 1764676801000i64,
            "dateRead": 1764676802000i64, "handle": null}});
        assert_eq!(
            events_of(body.to_string().as_bytes()).unwrap(),
            [
                ConnectorEvent::Receipt {
                    provider_message_id: "p:0/SENT".into(),
                    receipt: Receipt::Delivered
                },
                ConnectorEvent::Receipt {
                    provider_message_id: "p:0/SENT".into(),
                    receipt: Receipt::Read
                },
            ]
        );
    }

    #[test]
    fn a_send_error_fails_the_message_with_its_code() {
        let body = json!({"type": "message-send-error", "data": {"guid": "p:0/SENT", "isFromMe": true, "error": 22}});
        let events = events_of(body.to_string().as_bytes()).unwrap();
        assert!(matches!(
            &events[..],
            [ConnectorEvent::Receipt { receipt: Receipt::Failed { code: Some(code), .. }, .. }] if code == "22"
        ));
    }

    #[test]
    fn other_events_are_nothing_and_bad_bodies_are_refused() {
        let typing = json!({"type": "typing-indicator", "data": {"display": true, "guid": "x"}});
        assert_eq!(events_of(typing.to_string().as_bytes()).unwrap(), []);
        assert!(events_of(b"{not json").is_err());
        assert!(events_of(br#"{"type":"new-message","data":{"text":"no guid"}}"#).is_err());
    }
}
