//! Which fields of which events are a person's data, and whose key seals them.

use serde_json::{Map, Value};
use uuid::Uuid;
use whatsnap_events::{LocationId, PhoneNumber, contact_id_for};

/// The prefix of a sealed field: `pii1:<key id>:<sealed>`.
const PREFIX: &str = "pii1:";

/// Namespace of the key ids of WhatsApp senders known only by their LID.
const LID_NAMESPACE: Uuid = Uuid::from_u128(0x3c1d_7f0a_52e4_4b8e_9d61_0a7e_2f5c_8b14);

/// Whose key seals an event's personal fields.
#[derive(Clone, Copy)]
enum Owner {
    /// The event's `contact_id` field.
    ContactId,
    /// The contact whose number is in this field.
    PhoneIn(&'static str),
    /// A sender known only by the WhatsApp LID in this field.
    LidIn(&'static str),
}

/// An event type's personal fields: top-level strings, and whether its attachments are too.
struct Personal {
    fields: &'static [&'static str],
    attachments: bool,
    owner: Owner,
}

fn personal(event_type: &str) -> Option<Personal> {
    let (fields, attachments, owner): (&'static [&'static str], bool, Owner) = match event_type {
        "InboundMessageReceived" => (
            &["from", "body", "sender_name", "sender_lid"],
            true,
            Owner::PhoneIn("from"),
        ),
        "InboundMessageHeld" => (
            &["sender_lid", "body", "sender_name"],
            true,
            Owner::LidIn("sender_lid"),
        ),
        "OutboundMessageRequested" => (&["body", "to"], true, Owner::ContactId),
        "OutboundMessageRouted" => (&["to"], false, Owner::ContactId),
        "ContactCreated" => (&["phone", "name"], false, Owner::ContactId),
        "ContactIdentityMerged" => (&["lid", "phone", "reason"], false, Owner::PhoneIn("phone")),
        _ => return None,
    };
    Some(Personal {
        fields,
        attachments,
        owner,
    })
}

/// A payload with personal data, ready to be sealed with its owner's key.
pub struct ToSeal {
    pub key_id: Uuid,
    object: Map<String, Value>,
    personal: Personal,
}

/// The payload's personal data and whose it is; `None` for events that carry none (or whose
/// owner cannot be told, e.g. a sender that is not a phone number).
pub fn to_seal(location: &LocationId, event_type: &str, payload: &[u8]) -> Option<ToSeal> {
    let personal = personal(event_type)?;
    let Ok(Value::Object(object)) = serde_json::from_slice(payload) else {
        return None;
    };
    let text = |field: &str| object.get(field).and_then(Value::as_str).map(str::to_owned);
    let key_id = match personal.owner {
        Owner::ContactId => text("contact_id")?.parse().ok()?,
        Owner::PhoneIn(field) => {
            let phone = PhoneNumber::parse(&text(field)?).ok()?;
            contact_id_for(location, &phone)
        }
        Owner::LidIn(field) => lid_key_id(location, &text(field)?),
    };
    Some(ToSeal {
        key_id,
        object,
        personal,
    })
}

fn lid_key_id(location: &LocationId, lid: &str) -> Uuid {
    Uuid::new_v5(&LID_NAMESPACE, format!("{location}|{lid}").as_bytes())
}

impl ToSeal {
    /// The payload with each personal string replaced by what `seal` makes of it.
    pub fn sealed(mut self, seal: impl Fn(&str) -> String) -> Vec<u8> {
        let replace = |value: &mut Value| {
            if let Value::String(text) = value
                && !text.starts_with(PREFIX)
            {
                *text = seal(text);
            }
        };
        for field in self.personal.fields {
            if let Some(value) = self.object.get_mut(*field) {
                replace(value);
            }
        }
        if self.personal.attachments
            && let Some(Value::Array(attachments)) = self.object.get_mut("attachments")
        {
            for attachment in attachments {
                for field in ["url", "file_name"] {
                    if let Some(value) = attachment.get_mut(field) {
                        replace(value);
                    }
                }
            }
        }
        serde_json::to_vec(&Value::Object(self.object)).expect("JSON values serialise")
    }
}

/// A sealed field: the prefix, the key id and the sealed text.
pub fn sealed_field(key_id: Uuid, sealed: &str) -> String {
    format!("{PREFIX}{key_id}:{sealed}")
}

/// True when the payload may hold sealed fields (a cheap test before parsing it).
pub fn may_hold_sealed(payload: &[u8]) -> bool {
    let needle = format!("\"{PREFIX}");
    payload
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// The key ids of the sealed fields in a payload, each once.
pub fn sealed_key_ids(value: &Value) -> Vec<Uuid> {
    let mut ids = Vec::new();
    visit_sealed(value, &mut |text| {
        if let Some((id, _)) = split(text)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    });
    ids
}

/// Replaces every sealed string in `value` by what `open` makes of it (key id, sealed text).
pub fn open_all(value: &mut Value, open: &mut impl FnMut(Uuid, &str) -> String) {
    match value {
        Value::String(text) => {
            if let Some((id, sealed)) = split(text) {
                let opened = open(id, sealed);
                *text = opened;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| open_all(v, open)),
        Value::Object(map) => map.values_mut().for_each(|v| open_all(v, open)),
        _ => {}
    }
}

fn visit_sealed(value: &Value, visit: &mut impl FnMut(&str)) {
    match value {
        Value::String(text) => visit(text),
        Value::Array(items) => items.iter().for_each(|v| visit_sealed(v, visit)),
        Value::Object(map) => map.values().for_each(|v| visit_sealed(v, visit)),
        _ => {}
    }
}

pub fn split(text: &str) -> Option<(Uuid, &str)> {
    let rest = text.strip_prefix(PREFIX)?;
    let (id, sealed) = rest.split_once(':')?;
    Some((id.parse().ok()?, sealed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location() -> LocationId {
        LocationId::parse("loc").unwrap()
    }

    #[test]
    fn an_inbound_message_is_sealed_for_its_sender() {
        let payload = serde_json::json!({
            "message_id": Uuid::nil(), "account_id": Uuid::nil(), "provider_message_id": "SM1",
            "from": "+14155550100", "to": "+15005550006", "body": "hello",
            "sender_name": "Ana", "received_at": "2026-01-01T00:00:00Z",
            "attachments": [{"url": "https://x/1", "content_type": "image/png", "file_name": null}],
        });
        let bytes = serde_json::to_vec(&payload).unwrap();
        let found = to_seal(&location(), "InboundMessageReceived", &bytes).unwrap();
        let phone = PhoneNumber::parse("+14155550100").unwrap();
        assert_eq!(found.key_id, contact_id_for(&location(), &phone));
        let key_id = found.key_id;
        let sealed = found.sealed(|text| sealed_field(key_id, &format!("<{}>", text.len())));
        let text = String::from_utf8(sealed.clone()).unwrap();
        for clear in ["+14155550100", "hello", "Ana", "https://x/1"] {
            assert!(!text.contains(clear), "{clear} in {text}");
        }
        assert!(
            text.contains("+15005550006"),
            "the account's own number stays"
        );
        assert!(may_hold_sealed(&sealed));
        let mut value: Value = serde_json::from_slice(&sealed).unwrap();
        assert_eq!(sealed_key_ids(&value), [key_id]);
        open_all(&mut value, &mut |_, _| "[erased]".into());
        assert_eq!(value["body"], "[erased]");
        assert_eq!(value["attachments"][0]["url"], "[erased]");
        assert_eq!(value["attachments"][0]["file_name"], Value::Null);
    }

    #[test]
    fn events_without_personal_data_are_left_alone() {
        let bytes =
            br#"{"contact_id":"00000000-0000-0000-0000-000000000000","tag":"t","source":"ghl"}"#;
        assert!(to_seal(&location(), "ContactTagged", bytes).is_none());
        assert!(!may_hold_sealed(bytes));
    }
}
