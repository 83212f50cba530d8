//! GHL's own OpenAPI documents (copied verbatim into `ghl-openapi/`) as the fake's contract: they
//! say which operations exist, which `Version` each takes, which query parameters are required
//! and what a request body must look like. The validator covers the OpenAPI 3.0 subset those
//! documents use: `type`, `nullable`, `enum`, `required`, `properties`, `additionalProperties`,
//! `items`, `$ref` (also into `common-schemas.json`), `allOf`/`anyOf`/`oneOf`, `format:
//! date-time`, `maxLength`.
//!
//! Where the documents and GHL's observed behaviour disagree (`ghl-api.md` §2.3), the documents
//! are patched once at load, each patch with its reason, so the rest of the validator stays
//! generic.

use std::sync::LazyLock;

use serde_json::{Value, json};

const CONTACTS: &str = include_str!("../../ghl-openapi/contacts.json");
const CONVERSATIONS: &str = include_str!("../../ghl-openapi/conversations.json");
const USERS: &str = include_str!("../../ghl-openapi/users.json");
const OAUTH: &str = include_str!("../../ghl-openapi/oauth.json");
const COMMON: &str = include_str!("../../ghl-openapi/common-schemas.json");

/// The shared document; the API documents reach it as `../common/common-schemas.json#…`.
const COMMON_FILE: &str = "common-schemas.json";

/// A custom keyword the patches add: at least one of these properties must be present.
const ANY_REQUIRED: &str = "x-fake-anyRequired";

struct Specs {
    /// The API documents by name, in the order operations are looked up.
    apis: Vec<(&'static str, Value)>,
    common: Value,
}

static SPECS: LazyLock<Specs> = LazyLock::new(|| {
    let parse = |name: &str, text: &str| -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("embedded {name} is not JSON: {e}"))
    };
    let mut contacts = parse("contacts.json", CONTACTS);
    let mut conversations = parse("conversations.json", CONVERSATIONS);
    patch(&mut contacts, &mut conversations);
    Specs {
        apis: vec![
            ("contacts.json", contacts),
            ("conversations.json", conversations),
            ("users.json", parse("users.json", USERS)),
            ("oauth.json", parse("oauth.json", OAUTH)),
        ],
        common: parse(COMMON_FILE, COMMON),
    }
});

/// Where GHL accepts what its documents refuse.
fn patch(contacts: &mut Value, conversations: &mut Value) {
    let inbound = &mut conversations["components"]["schemas"]["ProcessMessageBodyDto"];
    // ghl-api.md §2.3: the spec requires conversationId, but GHL accepts a contactId instead
    // (ISS#149/#169/#234, community-confirmed; the 2025-04 spec had conversationId and no
    // contactId), and CP-MD says conversationProviderId "is not required" for a default SMS
    // provider — whatsnap's model. One of the two ids must be there.
    if let Some(required) = inbound["required"].as_array_mut() {
        required.retain(|r| r == "type");
    }
    inbound[ANY_REQUIRED] = json!(["contactId", "conversationId"]);
    // The spec declares `direction` as `type: object` with the list of values as its example;
    // GHL takes the strings "inbound" / "outbound" (§2.3, §2.5), defaulting to outbound.
    inbound["properties"]["direction"] = json!({
        "type": "string",
        "enum": ["outbound", "inbound"],
        "default": "outbound",
    });
    // `dateOfBirth` is declared `type: object` but documented and exemplified as a date string.
    for dto in ["UpsertContactDto", "UpdateContactDto", "CreateContactDto"] {
        let birth = &mut contacts["components"]["schemas"][dto]["properties"]["dateOfBirth"];
        if birth.is_object() {
            birth["type"] = json!(["string", "object"]);
        }
    }
}

/// One operation of the documents, found from a request's method and path.
pub(crate) struct Operation {
    spec: &'static str,
    /// The path as the document writes it, e.g. `/contacts/{contactId}/tags`.
    pub template: &'static str,
    op: &'static Value,
}

/// The operation `method path` names: `Ok(None)` when the documents have the path with other
/// methods only, `Err(())` when they do not have the path at all.
pub(crate) fn operation(method: &str, path: &str) -> Result<Option<Operation>, ()> {
    let wanted = segments(path);
    let method = method.to_ascii_lowercase();
    // Every template that fits, by how many literal segments it has: `/contacts/search/
    // duplicate` beats `/contacts/{contactId}/…`, yet `GET /contacts/search` is
    // `/contacts/{contactId}`, since only POST has the literal one.
    let mut fitting: Vec<(usize, &'static str, &'static str, &'static Value)> = Vec::new();
    for (spec, doc) in &SPECS.apis {
        for (template, methods) in doc["paths"].as_object().into_iter().flatten() {
            let have = segments(template);
            let fits = have.len() == wanted.len()
                && have
                    .iter()
                    .zip(&wanted)
                    .all(|(h, w)| h.starts_with('{') || h == w);
            if fits {
                let literal = have.iter().filter(|h| !h.starts_with('{')).count();
                fitting.push((literal, spec, template.as_str(), methods));
            }
        }
    }
    if fitting.is_empty() {
        return Err(());
    }
    fitting.sort_by_key(|(literal, ..)| std::cmp::Reverse(*literal));
    Ok(fitting
        .into_iter()
        .find_map(|(_, spec, template, methods)| {
            let op = methods.get(&method)?;
            Some(Operation { spec, template, op })
        }))
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

impl Operation {
    /// The `Version` values this operation accepts, when it takes the header.
    pub fn versions(&self) -> Option<Vec<String>> {
        self.parameters()
            .find(|p| p["in"] == "header" && p["name"] == "Version")
            .map(|p| {
                p["schema"]["enum"]
                    .as_array()
                    .map(|values| {
                        values
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            })
    }

    /// The query parameters the operation requires.
    pub fn required_query(&self) -> Vec<String> {
        self.parameters()
            .filter(|p| p["in"] == "query" && p["required"] == true)
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// The request body's media type and schema, when the operation takes one.
    pub fn body(&self) -> Option<(&'static str, &'static Value)> {
        let content = self.op["requestBody"]["content"].as_object()?;
        let (media, spec) = content.iter().next()?;
        Some((media.as_str(), &spec["schema"]))
    }

    fn parameters(&self) -> impl Iterator<Item = &'static Value> {
        self.op["parameters"].as_array().into_iter().flatten()
    }

    /// What is wrong with `body` against this operation's request schema, one line each, as
    /// `<path>: <what is wrong>`.
    pub fn check_body(&self, body: &Value, forbid_unknown: bool) -> Vec<String> {
        let Some((_, schema)) = self.body() else {
            return Vec::new();
        };
        let mut errors = Vec::new();
        Validator { forbid_unknown }.check(self.spec, schema, body, "", &mut errors);
        errors
    }
}

struct Validator {
    forbid_unknown: bool,
}

fn document(name: &str) -> &'static Value {
    if name == COMMON_FILE {
        return &SPECS.common;
    }
    SPECS
        .apis
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, doc)| doc)
        .unwrap_or(&Value::Null)
}

/// Resolves a `$ref` seen in document `spec`: the document it points into and the schema.
fn resolve(spec: &'static str, reference: &str) -> (&'static str, &'static Value) {
    let (file, pointer) = reference.split_once('#').unwrap_or((reference, ""));
    // The documents point only into themselves or into the shared one.
    let spec = if file.ends_with(COMMON_FILE) {
        COMMON_FILE
    } else {
        spec
    };
    (
        spec,
        document(spec).pointer(pointer).unwrap_or(&Value::Null),
    )
}

fn at(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn label(path: &str) -> &str {
    if path.is_empty() { "body" } else { path }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.as_f64().is_some_and(|n| n.fract() == 0.0),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

impl Validator {
    fn check(
        &self,
        spec: &'static str,
        schema: &'static Value,
        value: &Value,
        path: &str,
        errors: &mut Vec<String>,
    ) {
        if let Some(reference) = schema["$ref"].as_str() {
            let (spec, target) = resolve(spec, reference);
            return self.check(spec, target, value, path, errors);
        }
        if value.is_null() {
            // OpenAPI 3.0: null only where `nullable: true` says so (or no type is declared).
            if schema["nullable"] != true && !schema["type"].is_null() {
                errors.push(format!("{}: must not be null", label(path)));
            }
            return;
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            self.check(spec, part, value, path, errors);
        }
        for (keyword, exactly_one) in [("anyOf", false), ("oneOf", true)] {
            let Some(choices) = schema[keyword].as_array() else {
                continue;
            };
            let matching = choices
                .iter()
                .filter(|choice| {
                    let mut inner = Vec::new();
                    self.check(spec, choice, value, path, &mut inner);
                    inner.is_empty()
                })
                .count();
            if matching == 0 || (exactly_one && matching > 1) {
                let names: Vec<&str> = choices
                    .iter()
                    .map(|c| {
                        c["$ref"]
                            .as_str()
                            .and_then(|r| r.rsplit('/').next())
                            .unwrap_or("an inline schema")
                    })
                    .collect();
                errors.push(format!(
                    "{}: must match {} of {}",
                    label(path),
                    if exactly_one { "exactly one" } else { "one" },
                    names.join(", ")
                ));
            }
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(ty) => vec![ty.as_str()],
            Value::Array(tys) => tys.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() && !types.iter().any(|ty| has_type(value, ty)) {
            errors.push(format!(
                "{}: must be {}, not {}",
                label(path),
                types.join(" or "),
                kind(value)
            ));
            return;
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            let allowed: Vec<String> = allowed.iter().map(Value::to_string).collect();
            errors.push(format!(
                "{}: must be one of {}, not {value}",
                label(path),
                allowed.join(", ")
            ));
        }
        if let (Some(max), Some(text)) = (schema["maxLength"].as_u64(), value.as_str())
            && text.chars().count() as u64 > max
        {
            errors.push(format!("{}: must be at most {max} characters", label(path)));
        }
        if schema["format"] == "date-time"
            && let Some(text) = value.as_str()
            && chrono::DateTime::parse_from_rfc3339(text).is_err()
        {
            errors.push(format!(
                "{}: must be an ISO 8601 date-time, not {text:?}",
                label(path)
            ));
        }
        if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
            for (i, item) in values.iter().enumerate() {
                self.check(spec, items, item, &format!("{path}[{i}]"), errors);
            }
        }
        if let Some(object) = value.as_object() {
            for name in schema["required"].as_array().into_iter().flatten() {
                if let Some(name) = name.as_str()
                    && !object.contains_key(name)
                {
                    errors.push(format!("{}: is required", at(path, name)));
                }
            }
            if let Some(any) = schema[ANY_REQUIRED].as_array() {
                let names: Vec<&str> = any.iter().filter_map(Value::as_str).collect();
                if !names.iter().any(|n| object.contains_key(*n)) {
                    errors.push(format!(
                        "{}: one of {} is required",
                        label(path),
                        names.join(", ")
                    ));
                }
            }
            let properties = schema["properties"].as_object();
            for (name, field) in object {
                match properties.and_then(|p| p.get(name)) {
                    Some(property) => self.check(spec, property, field, &at(path, name), errors),
                    None => {
                        match &schema["additionalProperties"] {
                            Value::Bool(false) => errors
                                .push(format!("{}: property should not exist", at(path, name))),
                            additional @ Value::Object(_) => {
                                self.check(spec, additional, field, &at(path, name), errors)
                            }
                            // The documents never say `additionalProperties` on request bodies; a
                            // property they do not name is most likely a misspelt one.
                            _ if self.forbid_unknown && properties.is_some() => errors
                                .push(format!("{}: property should not exist", at(path, name))),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

/// A schema of a document by name, for the tests below.
#[cfg(test)]
fn schema(spec: &str, name: &str) -> &'static Value {
    let doc = document(spec);
    doc.pointer(&format!("/components/schemas/{name}"))
        .unwrap_or(&Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: &str, path: &str, body: Value) -> Vec<String> {
        operation(method, path)
            .expect("a documented path")
            .expect("a documented method")
            .check_body(&body, true)
    }

    #[test]
    fn literal_segments_win_over_parameters() {
        let op = operation("GET", "/contacts/search/duplicate")
            .unwrap()
            .unwrap();
        assert_eq!(op.template, "/contacts/search/duplicate");
        let op = operation("GET", "/contacts/abc").unwrap().unwrap();
        assert_eq!(op.template, "/contacts/{contactId}");
        let op = operation("POST", "/contacts/search").unwrap().unwrap();
        assert_eq!(op.template, "/contacts/search");
        let op = operation("GET", "/contacts/search").unwrap().unwrap();
        assert_eq!(op.template, "/contacts/{contactId}");
        assert!(operation("PATCH", "/contacts/upsert").unwrap().is_none());
        assert!(operation("GET", "/nowhere").is_err());
    }

    #[test]
    fn versions_come_from_the_documents() {
        let version = |m: &str, p: &str| operation(m, p).unwrap().unwrap().versions();
        assert_eq!(
            version("POST", "/conversations/messages/inbound"),
            Some(vec!["2021-04-15".to_owned()])
        );
        assert_eq!(
            version("POST", "/contacts/upsert"),
            Some(vec!["2021-07-28".to_owned()])
        );
        assert_eq!(version("POST", "/oauth/token"), None);
    }

    #[test]
    fn upsert_needs_a_location_and_typed_fields() {
        assert!(check("POST", "/contacts/upsert", json!({"locationId": "l"})).is_empty());
        assert_eq!(
            check(
                "POST",
                "/contacts/upsert",
                json!({"phone": 5, "tags": ["a", 1]})
            ),
            vec![
                "locationId: is required",
                "phone: must be string, not number",
                "tags[1]: must be string, not number",
            ]
        );
        assert_eq!(
            check(
                "POST",
                "/contacts/upsert",
                json!({"locationId": "l", "phoneNumber": "+1"})
            ),
            vec!["phoneNumber: property should not exist"]
        );
        // nullable fields take null; others do not.
        assert_eq!(
            check(
                "POST",
                "/contacts/upsert",
                json!({"locationId": "l", "email": null, "dnd": null})
            ),
            vec!["dnd: must not be null"]
        );
    }

    #[test]
    fn inbound_messages_take_a_contact_instead_of_a_conversation() {
        let ok = json!({"type": "SMS", "contactId": "c", "message": "hi", "direction": "inbound"});
        assert!(check("POST", "/conversations/messages/inbound", ok).is_empty());
        assert_eq!(
            check(
                "POST",
                "/conversations/messages/inbound",
                json!({"type": "Text", "direction": "sideways"})
            ),
            vec![
                "body: one of contactId, conversationId is required",
                r#"direction: must be one of "outbound", "inbound", not "sideways""#,
                r#"type: must be one of "SMS", "RCS", "Email", "WhatsApp", "GMB", "IG", "FB", "Custom", "WebChat", "Live_Chat", "Call", "IVR_Call", "Campaign_Call", "Campaign_VoiceMail", "TIKTOK", "ALL_IN_ONE_CHAT", "FORM_SUBMISSION", not "Text""#,
            ]
        );
    }

    #[test]
    fn status_errors_follow_error_dto_through_all_of() {
        assert_eq!(
            check(
                "PUT",
                "/conversations/messages/m/status",
                json!({"status": "failed", "error": {"code": "1"}})
            ),
            vec!["error.type: is required", "error.message: is required"]
        );
        assert_eq!(
            check(
                "PUT",
                "/conversations/messages/m/status",
                json!({"status": "sent"})
            ),
            vec![r#"status: must be one of "delivered", "failed", "pending", "read", not "sent""#]
        );
    }

    #[test]
    fn refs_into_the_common_document_resolve() {
        assert!(schema("contacts.json", "UpsertContactDto").is_object());
        let (spec, common) = resolve(
            "contacts.json",
            "../common/common-schemas.json#/components/schemas/UnprocessableDTO",
        );
        assert_eq!(spec, "common-schemas.json");
        assert_eq!(common["properties"]["message"]["type"], "array");
    }
}
