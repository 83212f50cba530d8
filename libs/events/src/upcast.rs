//! Upcasting: turning the JSON of an older schema version into the current shape, one version at
//! a time, as events are read. Stored events are never rewritten.

use serde_json::Value;

/// Turns the JSON of `event_type` at `from_version` into its shape at `from_version + 1`.
pub type UpcastFn = fn(Value) -> Result<Value, UpcastError>;

pub struct Upcaster {
    pub event_type: &'static str,
    pub from_version: u32,
    pub apply: UpcastFn,
}

/// Every upcaster of the catalogue. Empty while every type is at its first schema version; a
/// change that is not a pure addition (see the crate docs) adds its step here.
pub static UPCASTERS: &[Upcaster] = &[];

#[derive(Debug, thiserror::Error)]
pub enum UpcastError {
    #[error("no upcaster takes {event_type} from schema version {from_version} to the next")]
    MissingStep {
        event_type: String,
        from_version: u32,
    },
    #[error("{event_type} v{from_version} payload is not valid JSON: {source}")]
    NotJson {
        event_type: String,
        from_version: u32,
        #[source]
        source: serde_json::Error,
    },
    #[error("{event_type} v{from_version} payload lacks what the upcaster needs: {reason}")]
    Shape {
        event_type: String,
        from_version: u32,
        reason: String,
    },
}

/// Applies the steps of `table` that take `event_type` from `from` up to `to`.
pub fn upcast_with(
    table: &[Upcaster],
    event_type: &str,
    from: u32,
    to: u32,
    payload: &[u8],
) -> Result<Value, UpcastError> {
    let mut value: Value =
        serde_json::from_slice(payload).map_err(|source| UpcastError::NotJson {
            event_type: event_type.to_owned(),
            from_version: from,
            source,
        })?;
    for version in from..to {
        let step = table
            .iter()
            .find(|u| u.event_type == event_type && u.from_version == version)
            .ok_or_else(|| UpcastError::MissingStep {
                event_type: event_type.to_owned(),
                from_version: version,
            })?;
        value = (step.apply)(value)?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    /// A type that went through two breaking changes: v1 had `name`, v2 split it into
    /// `first_name`/`last_name`, v3 renamed `phone` to `phone_e164`.
    #[derive(Debug, Deserialize, PartialEq)]
    struct ContactV3 {
        first_name: String,
        last_name: Option<String>,
        phone_e164: String,
    }

    fn split_name(mut value: Value) -> Result<Value, UpcastError> {
        let name = value["name"]
            .as_str()
            .ok_or_else(|| UpcastError::Shape {
                event_type: "Contact".into(),
                from_version: 1,
                reason: "no name".into(),
            })?
            .to_owned();
        let (first, last) = match name.split_once(' ') {
            Some((first, last)) => (first.to_owned(), Some(last.to_owned())),
            None => (name, None),
        };
        let object = value.as_object_mut().expect("object");
        object.remove("name");
        object.insert("first_name".into(), json!(first));
        object.insert("last_name".into(), json!(last));
        Ok(value)
    }

    fn rename_phone(mut value: Value) -> Result<Value, UpcastError> {
        let object = value.as_object_mut().expect("object");
        let phone = object.remove("phone").unwrap_or(Value::Null);
        object.insert("phone_e164".into(), phone);
        Ok(value)
    }

    static TABLE: &[Upcaster] = &[
        Upcaster {
            event_type: "Contact",
            from_version: 1,
            apply: split_name,
        },
        Upcaster {
            event_type: "Contact",
            from_version: 2,
            apply: rename_phone,
        },
    ];

    #[test]
    fn a_v1_payload_is_upcast_through_every_step_to_the_current_shape() {
        let stored_v1 = br#"{"name":"Ana Lima","phone":"+5511999990000"}"#;
        let value = upcast_with(TABLE, "Contact", 1, 3, stored_v1).unwrap();
        let contact: ContactV3 = serde_json::from_value(value).unwrap();
        assert_eq!(
            contact,
            ContactV3 {
                first_name: "Ana".into(),
                last_name: Some("Lima".into()),
                phone_e164: "+5511999990000".into(),
            }
        );
    }

    #[test]
    fn a_missing_step_is_an_error_that_names_it() {
        let err = upcast_with(TABLE, "Other", 1, 2, b"{}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no upcaster takes Other from schema version 1 to the next"
        );
    }
}
