//! The fake's HTTP side: Evolution's routes, its guards in Evolution's order (the instance
//! exists → 404; a name in use → 403; the `apikey` → 401), its JSON-schema checks (400, with the
//! messages `jsonschema` writes), and its answers.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::HashMap;

use super::state::{Instance, LinkState, Shared, qr_webhook_data};
use super::{FakeEvolutionSent, FakeEvolutionWebhook, INTEGRATIONS, SendFault};

/// The events a webhook can subscribe to (`EventController.events`).
const EVENTS: [&str; 31] = [
    "APPLICATION_STARTUP",
    "QRCODE_UPDATED",
    "MESSAGES_SET",
    "MESSAGES_UPSERT",
    "MESSAGES_EDITED",
    "MESSAGES_UPDATE",
    "MESSAGES_DELETE",
    "SEND_MESSAGE",
    "SEND_MESSAGE_UPDATE",
    "CONTACTS_SET",
    "CONTACTS_UPSERT",
    "CONTACTS_UPDATE",
    "PRESENCE_UPDATE",
    "CHATS_SET",
    "CHATS_UPSERT",
    "CHATS_UPDATE",
    "CHATS_DELETE",
    "GROUPS_UPSERT",
    "GROUP_UPDATE",
    "GROUP_PARTICIPANTS_UPDATE",
    "CONNECTION_UPDATE",
    "LABELS_EDIT",
    "LABELS_ASSOCIATION",
    "CALL",
    "TYPEBOT_START",
    "TYPEBOT_CHANGE_STATUS",
    "REMOVE_INSTANCE",
    "LOGOUT_INSTANCE",
    "INSTANCE_CREATE",
    "INSTANCE_DELETE",
    "STATUS_INSTANCE",
];

pub(super) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/instance/create", post(create))
        .route("/instance/connect/{name}", get(connect))
        .route("/instance/connectionState/{name}", get(connection_state))
        .route("/instance/logout/{name}", delete(logout))
        .route("/instance/delete/{name}", delete(delete_instance))
        .route("/instance/fetchInstances", get(fetch_instances))
        .route("/message/sendText/{name}", post(send_text))
        .route("/message/sendMedia/{name}", post(send_media))
        .route("/webhook/set/{name}", post(set_webhook))
        .route("/webhook/find/{name}", get(find_webhook))
        .route("/chat/findMessages/{name}", post(find_messages))
        .fallback(not_found_route)
        .with_state(shared)
}

/// What Evolution refuses a request with: `{status, error, response: {message}}`.
pub(super) struct Refusal {
    status: StatusCode,
    message: Value,
    /// The `error` word, when not the status's own: errors that are not Evolution's exceptions
    /// (express' JSON parser) get the handler's default.
    word: Option<&'static str>,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let word = self.word.unwrap_or(match self.status.as_u16() {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            _ => "Internal Server Error",
        });
        (
            self.status,
            axum::Json(json!({
                "status": self.status.as_u16(),
                "error": word,
                "response": { "message": self.message },
            })),
        )
            .into_response()
    }
}

type Answer = Result<Response, Refusal>;

fn error(status: StatusCode, message: Value) -> Refusal {
    Refusal {
        status,
        message,
        word: None,
    }
}

/// `BadRequestException(...args)`: the arguments become the `message` array.
fn bad_request(message: Value) -> Refusal {
    error(StatusCode::BAD_REQUEST, json!([message]))
}

fn unauthorized() -> Refusal {
    error(StatusCode::UNAUTHORIZED, json!("Unauthorized"))
}

async fn not_found_route(method: Method, uri: Uri) -> Refusal {
    error(
        StatusCode::NOT_FOUND,
        json!([format!("Cannot {method} {uri}")]),
    )
}

fn apikey(headers: &HeaderMap) -> Option<&str> {
    headers.get("apikey").and_then(|v| v.to_str().ok())
}

/// The guards of a route with an instance: it exists (404, before the key is looked at), then
/// the key is the global one or the instance's token (401).
fn guard(shared: &Shared, headers: &HeaderMap, name: &str) -> Result<(), Refusal> {
    let (exists, global, token) = shared.with(|inner| {
        let token = inner.instances.get(name).map(|i| i.token.clone());
        (token.is_some(), inner.global_key.clone(), token)
    });
    if !exists {
        return Err(error(
            StatusCode::NOT_FOUND,
            json!([format!("The \"{name}\" instance does not exist")]),
        ));
    }
    match apikey(headers) {
        Some(key) if key == global || Some(key) == token.as_deref() => Ok(()),
        _ => Err(unauthorized()),
    }
}

/// The request body as JSON. What express' JSON parser refuses is a 400 that reaches
/// Evolution's error handler without an `error` word, so it says `Internal Server Error`.
fn json_body(body: &Bytes) -> Result<Value, Refusal> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| Refusal {
        status: StatusCode::BAD_REQUEST,
        message: json!(format!("Unexpected token in JSON: {e}")),
        word: Some("Internal Server Error"),
    })
}

/// One property check of a JSON schema, with the message `jsonschema` (as Evolution maps it)
/// gives: the property's `description` when it has one, else the stack without `instance.`.
struct Rule {
    name: &'static str,
    kind: &'static str,
    required: bool,
    description: Option<&'static str>,
    one_of: Option<&'static [&'static str]>,
}

const fn rule(name: &'static str, kind: &'static str, required: bool) -> Rule {
    Rule {
        name,
        kind,
        required,
        description: None,
        one_of: None,
    }
}

fn validate(body: &Value, rules: &[Rule]) -> Result<(), Refusal> {
    let mut messages = Vec::new();
    if !body.is_object() {
        messages.push("instance is not of a type(s) object".to_owned());
    }
    for rule in rules {
        match body.get(rule.name) {
            None | Some(Value::Null) if rule.required => {
                messages.push(format!("instance requires property \"{}\"", rule.name));
            }
            None | Some(Value::Null) => {}
            Some(value) => {
                let fits = match rule.kind {
                    "string" => value.is_string(),
                    "boolean" => value.is_boolean(),
                    "integer" => value.is_i64() || value.is_u64(),
                    "object" => value.is_object(),
                    _ => true,
                };
                if !fits {
                    messages.push(rule.description.map_or_else(
                        || format!("{} is not of a type(s) {}", rule.name, rule.kind),
                        str::to_owned,
                    ));
                } else if let Some(allowed) = rule.one_of
                    && !allowed.contains(&value.as_str().unwrap_or_default())
                {
                    messages.push(format!(
                        "{} is not one of enum values: {}",
                        rule.name,
                        allowed.join(",")
                    ));
                }
            }
        }
    }
    if messages.is_empty() {
        Ok(())
    } else {
        Err(bad_request(json!(messages)))
    }
}

pub(super) fn new_instance(
    seq: u64,
    name: &str,
    token: &str,
    integration: &str,
    number: Option<String>,
) -> Instance {
    Instance {
        id: format!(
            "{:08x}-fake-4000-8000-{seq:012x}",
            seq * 2_654_435_761 % 0xffff_ffff
        ),
        name: name.to_owned(),
        token: token.to_owned(),
        integration: integration.to_owned(),
        number,
        state: LinkState::Close,
        owner_jid: None,
        profile_name: None,
        webhook: None,
        qr_count: 0,
        qr_code: None,
        pairing_code: None,
        messages: Vec::new(),
        disconnection_reason: None,
        closed_looks: 0,
        state_looks: 0,
        created_at: chrono::Utc::now(),
    }
}

fn webhook_of(value: &Value, enabled_default: bool) -> Option<FakeEvolutionWebhook> {
    let url = value.get("url")?.as_str()?.to_owned();
    Some(FakeEvolutionWebhook {
        enabled: value
            .get("enabled")
            .and_then(Value::as_bool)
            .unwrap_or(enabled_default),
        url,
        headers: value
            .get("headers")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        by_events: value
            .get("byEvents")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        base64: value
            .get("base64")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        events: value
            .get("events")
            .and_then(Value::as_array)
            .map(|events| {
                events
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn webhook_row(instance: &Instance) -> Value {
    match &instance.webhook {
        None => Value::Null,
        Some(w) => json!({
            "id": format!("wh{}", instance.id),
            "url": w.url,
            "headers": w.headers,
            "enabled": w.enabled,
            "events": w.events,
            "webhookByEvents": w.by_events,
            "webhookBase64": w.base64,
            "createdAt": instance.created_at.to_rfc3339(),
            "updatedAt": instance.created_at.to_rfc3339(),
            "instanceId": instance.id,
        }),
    }
}

/// Starts linking a closed instance: the first QR code, `connecting` then `qrcode.updated`.
fn start_linking(shared: &Shared, name: &str, number: Option<String>) {
    let qr = shared.with(|inner| {
        let seq = inner.next();
        let i = inner.instances.get_mut(name)?;
        i.state = LinkState::Connecting;
        i.qr_count = 0;
        if number.is_some() {
            i.number = number;
        }
        i.issue_qr(seq);
        Some(i.qr_json())
    });
    if let Some(qr) = qr {
        shared.deliver_later(
            name,
            vec![
                (
                    "connection.update",
                    json!({ "instance": name, "state": "connecting", "statusReason": 200 }),
                ),
                ("qrcode.updated", qr_webhook_data(name, &qr)),
            ],
        );
    }
}

async fn create(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Answer {
    let body = json_body(&body)?;
    let name = body
        .get("instanceName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    // instanceLoggedGuard, then the key: creating needs the global one.
    if shared.with(|inner| inner.instances.contains_key(&name)) {
        return Err(error(
            StatusCode::FORBIDDEN,
            json!([format!("This name \"{name}\" is already in use.")]),
        ));
    }
    if apikey(&headers) != Some(shared.with(|inner| inner.global_key.clone()).as_str()) {
        return Err(unauthorized());
    }
    validate(
        &body,
        &[
            rule("instanceName", "string", false),
            rule("token", "string", false),
            rule("number", "string", false),
            rule("qrcode", "boolean", false),
            rule("webhook", "object", false),
        ],
    )?;
    if name.is_empty() {
        return Err(bad_request(json!(["The \"instanceName\" cannot be empty"])));
    }
    let number = body
        .get("number")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(number) = &number {
        let mut chars = number.chars();
        let leading_digit = chars.next().is_some_and(|c| c.is_ascii_digit());
        if !leading_digit || number.len() < 2 {
            return Err(bad_request(json!([format!(
                "number does not match pattern \"^\\\\d+[\\\\.@\\\\w-]+\""
            )])));
        }
    }
    let integration = body
        .get("integration")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !INTEGRATIONS.contains(&integration) {
        return Err(bad_request(json!("Invalid integration")));
    }
    let webhook = body.get("webhook").and_then(|w| webhook_of(w, true));
    let (instance, token) = shared.with(|inner| {
        let seq = inner.next();
        let token = body
            .get("token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string().to_uppercase());
        let mut instance = new_instance(seq, &name, &token, integration, number.clone());
        instance.webhook = webhook.clone();
        let answer = json!({
            "instanceName": name,
            "instanceId": instance.id,
            "integration": integration,
            "webhookWaBusiness": null,
            "accessTokenWaBusiness": "",
            "status": "close",
        });
        inner.instances.insert(name.clone(), instance);
        (answer, token)
    });
    let qrcode = body.get("qrcode").and_then(Value::as_bool) == Some(true);
    let mut qr = Value::Null;
    if qrcode && integration == "WHATSAPP-BAILEYS" {
        start_linking(&shared, &name, number);
        qr = shared.with(|inner| inner.instances[&name].qr_json());
    }
    let mut instance = instance;
    instance["status"] = json!(shared.with(|inner| inner.instances[&name].state.as_str()));
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "instance": instance,
            "hash": token,
            "webhook": {
                "webhookUrl": webhook.as_ref().map(|w| w.url.clone()),
                "webhookHeaders": webhook.as_ref().map(|w| w.headers.clone()),
                "webhookByEvents": webhook.as_ref().map(|w| w.by_events),
                "webhookBase64": webhook.as_ref().map(|w| w.base64),
            },
            "websocket": {}, "rabbitmq": {}, "nats": {}, "sqs": {},
            "settings": {
                "rejectCall": false, "msgCall": "", "groupsIgnore": false, "alwaysOnline": false,
                "readMessages": false, "readStatus": false, "syncFullHistory": false,
                "wavoipToken": "",
            },
            "qrcode": qr,
        })),
    )
        .into_response())
}

async fn connect(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    guard(&shared, &headers, &name)?;
    let state = shared.with(|inner| inner.instances[&name].state);
    match state {
        LinkState::Open => Ok(
            axum::Json(shared.with(|inner| inner.instances[&name].state_json())).into_response(),
        ),
        LinkState::Connecting => {
            Ok(axum::Json(shared.with(|inner| inner.instances[&name].qr_json())).into_response())
        }
        LinkState::Close => {
            start_linking(&shared, &name, query.get("number").cloned());
            Ok(axum::Json(shared.with(|inner| inner.instances[&name].qr_json())).into_response())
        }
    }
}

async fn connection_state(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    guard(&shared, &headers, &name)?;
    let answer = shared.with(|inner| {
        let instance = inner.instances.get_mut(&name).expect("guarded");
        instance.state_looks += 1;
        if instance.closed_looks > 0 {
            instance.closed_looks -= 1;
            json!({ "instance": { "instanceName": name, "state": "close" } })
        } else {
            instance.state_json()
        }
    });
    Ok(axum::Json(answer).into_response())
}

async fn logout(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    guard(&shared, &headers, &name)?;
    let was = shared.with(|inner| {
        let i = inner.instances.get_mut(&name).expect("guarded");
        let was = i.state;
        if was != LinkState::Close {
            i.state = LinkState::Close;
            i.disconnection_reason = Some(401);
            i.qr_code = None;
            i.pairing_code = None;
        }
        was
    });
    if was == LinkState::Close {
        return Err(bad_request(json!(format!(
            "The \"{name}\" instance is not connected"
        ))));
    }
    shared.deliver_later(
        &name,
        vec![
            ("logout.instance", Value::Null),
            (
                "connection.update",
                json!({ "instance": name, "state": "close", "statusReason": 401 }),
            ),
        ],
    );
    Ok(axum::Json(json!({ "status": "SUCCESS", "error": false, "response": { "message": "Instance logged out" } }))
        .into_response())
}

async fn delete_instance(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    guard(&shared, &headers, &name)?;
    shared.with(|inner| inner.instances.remove(&name));
    Ok(axum::Json(json!({ "status": "SUCCESS", "error": false, "response": { "message": "Instance deleted" } }))
        .into_response())
}

async fn fetch_instances(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let Some(key) = apikey(&headers).map(str::to_owned) else {
        return Err(unauthorized());
    };
    let wanted = query.get("instanceName").cloned();
    shared.with(|inner| {
        if key != inner.global_key {
            // An instance token lists the instances it is the token of.
            let rows: Vec<Value> = inner
                .instances
                .values()
                .filter(|i| i.token == key && wanted.as_ref().is_none_or(|w| *w == i.name))
                .map(Instance::row_json)
                .collect();
            return if rows.is_empty() {
                Err(unauthorized())
            } else {
                Ok(axum::Json(json!(rows)).into_response())
            };
        }
        if let Some(name) = &wanted
            && !inner.instances.contains_key(name)
        {
            return Err(error(
                StatusCode::NOT_FOUND,
                json!([format!("Instance \"{name}\" not found")]),
            ));
        }
        let rows: Vec<Value> = inner
            .instances
            .values()
            .filter(|i| wanted.as_ref().is_none_or(|w| *w == i.name))
            .map(Instance::row_json)
            .collect();
        Ok(axum::Json(json!(rows)).into_response())
    })
}

async fn set_webhook(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    // express' JSON parser runs before any route, so a bad body is refused before the guards.
    let body = json_body(&body)?;
    guard(&shared, &headers, &name)?;
    if body.get("webhook").is_none() {
        return Err(bad_request(json!([
            "instance requires property \"webhook\""
        ])));
    }
    validate(
        &body["webhook"],
        &[
            rule("enabled", "boolean", true),
            rule("url", "string", true),
            rule("headers", "object", false),
            rule("byEvents", "boolean", false),
            rule("base64", "boolean", false),
        ],
    )?;
    let unknown: Vec<String> = body["webhook"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, e)| !e.as_str().is_some_and(|e| EVENTS.contains(&e)))
        .map(|(i, _)| {
            format!(
                "webhook.events[{i}] is not one of enum values: {}",
                EVENTS.join(",")
            )
        })
        .collect();
    if !unknown.is_empty() {
        return Err(bad_request(json!(unknown)));
    }
    let Some(mut webhook) = webhook_of(&body["webhook"], false) else {
        return Err(bad_request(json!(["The \"url\" cannot be empty"])));
    };
    if webhook.url.is_empty() {
        return Err(bad_request(json!(["The \"url\" cannot be empty"])));
    }
    if !webhook.enabled {
        webhook.events.clear();
    }
    let row = shared.with(|inner| {
        let i = inner.instances.get_mut(&name).expect("guarded");
        i.webhook = Some(webhook);
        webhook_row(i)
    });
    Ok((StatusCode::CREATED, axum::Json(row)).into_response())
}

async fn find_webhook(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    guard(&shared, &headers, &name)?;
    Ok(axum::Json(shared.with(|inner| webhook_row(&inner.instances[&name]))).into_response())
}

/// The checks every send makes before anything leaves: the link is open, the recipient is on
/// WhatsApp, no failure is injected. Returns the recipient's JID.
fn check_send(shared: &Shared, name: &str, number: &str) -> Result<String, Refusal> {
    let digits: String = number
        .split('@')
        .next()
        .unwrap_or_default()
        .trim_start_matches('+')
        .to_owned();
    let jid = format!("{digits}@s.whatsapp.net");
    shared.with(|inner| {
        if inner.fail_next_sends > 0 {
            inner.fail_next_sends -= 1;
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!("Internal Server Error"),
            ));
        }
        // UNCONFIRMED: Baileys' Boom "Connection Closed" reaches Evolution's error handler,
        // which answers 500 with the error's message.
        if inner.instances[name].state != LinkState::Open {
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!("Connection Closed"),
            ));
        }
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || inner.not_on_whatsapp.contains(&digits)
        {
            return Err(bad_request(
                json!({ "exists": false, "jid": jid, "number": number }),
            ));
        }
        Ok(jid)
    })
}

/// Records a send and answers it as Evolution does: 201 with the stored message; posts
/// `send.message`.
fn accept_send(
    shared: &Shared,
    name: &str,
    jid: String,
    kind: &str,
    body: Value,
    message: Value,
) -> Response {
    let message_type = message
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .unwrap_or_default();
    let stored = shared.with(|inner| {
        let id = inner.message_id();
        let instance = inner.instances.get_mut(name).expect("guarded");
        let stored = json!({
            "key": { "remoteJid": jid, "fromMe": true, "id": id },
            "pushName": "",
            "status": "PENDING",
            "message": message,
            "contextInfo": null,
            "messageType": message_type,
            "messageTimestamp": chrono::Utc::now().timestamp(),
            "instanceId": instance.id,
            "source": "unknown",
        });
        instance.messages.push(stored.clone());
        inner.sent.push(FakeEvolutionSent {
            instance: name.to_owned(),
            id,
            remote_jid: jid,
            kind: kind.to_owned(),
            body,
        });
        stored
    });
    shared.deliver_later(name, vec![("send.message", stored.clone())]);
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

async fn send_text(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    // express' JSON parser runs before any route, so a bad body is refused before the guards.
    let body = json_body(&body)?;
    guard(&shared, &headers, &name)?;
    let number_rule = Rule {
        description: Some("Invalid format"),
        ..rule("number", "string", true)
    };
    let delay_rule = Rule {
        description: Some("Enter a value in milliseconds"),
        ..rule("delay", "integer", false)
    };
    validate(
        &body,
        &[
            number_rule,
            rule("text", "string", true),
            rule("linkPreview", "boolean", false),
            delay_rule,
        ],
    )?;
    let text = body["text"].as_str().unwrap_or_default().to_owned();
    if text.trim().is_empty() {
        return Err(bad_request(json!("Text is required")));
    }
    let jid = check_send(&shared, &name, body["number"].as_str().unwrap_or_default())?;
    before_send(&shared).await;
    let answer = accept_send(
        &shared,
        &name,
        jid,
        "text",
        body,
        json!({ "conversation": text }),
    );
    after_send(&shared).await;
    Ok(answer)
}

async fn before_send(shared: &Shared) {
    if shared.with(|inner| inner.send_fault) == Some(SendFault::Hang) {
        std::future::pending::<()>().await;
    }
}

async fn after_send(shared: &Shared) {
    if shared.with(|inner| inner.send_fault) == Some(SendFault::AcceptThenHang) {
        std::future::pending::<()>().await;
    }
}

fn is_url(media: &str) -> bool {
    (media.starts_with("http://") || media.starts_with("https://")) && media.len() > 10
}

fn is_base64(media: &str) -> bool {
    !media.is_empty()
        && media.len().is_multiple_of(4)
        && base64::engine::general_purpose::STANDARD
            .decode(media)
            .is_ok()
}

async fn send_media(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    // express' JSON parser runs before any route, so a bad body is refused before the guards.
    let body = json_body(&body)?;
    guard(&shared, &headers, &name)?;
    const MEDIA_TYPES: &[&str] = &["image", "document", "video", "audio"];
    let number_rule = Rule {
        description: Some("Invalid format"),
        ..rule("number", "string", true)
    };
    let mediatype_rule = Rule {
        one_of: Some(MEDIA_TYPES),
        ..rule("mediatype", "string", true)
    };
    let delay_rule = Rule {
        description: Some("Enter a value in milliseconds"),
        ..rule("delay", "integer", false)
    };
    validate(
        &body,
        &[
            number_rule,
            mediatype_rule,
            rule("mimetype", "string", false),
            rule("media", "string", false),
            rule("fileName", "string", false),
            rule("caption", "string", false),
            delay_rule,
        ],
    )?;
    let media = body
        .get("media")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mediatype = body["mediatype"].as_str().unwrap_or_default();
    if is_base64(media) && body.get("fileName").is_none() && mediatype == "document" {
        return Err(bad_request(json!(
            "For base64 the file name must be informed."
        )));
    }
    if !is_url(media) && !is_base64(media) {
        return Err(bad_request(json!("Owned media must be a url or base64")));
    }
    let jid = check_send(&shared, &name, body["number"].as_str().unwrap_or_default())?;
    let mut fields = json!({
        "url": "https://mmg.whatsapp.net/v/t62.7118-24/fake.enc",
        "mimetype": if mediatype == "image" { "image/jpeg" } else {
            body.get("mimetype").and_then(Value::as_str).unwrap_or("application/octet-stream")
        },
    });
    if let Some(caption) = body.get("caption") {
        fields["caption"] = caption.clone();
    }
    if let Some(file_name) = body.get("fileName") {
        fields["fileName"] = file_name.clone();
    }
    let message = json!({ format!("{mediatype}Message"): fields });
    before_send(&shared).await;
    let answer = accept_send(&shared, &name, jid, "media", body, message);
    after_send(&shared).await;
    Ok(answer)
}

async fn find_messages(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    // express' JSON parser runs before any route, so a bad body is refused before the guards.
    let body = json_body(&body)?;
    guard(&shared, &headers, &name)?;
    let key = body.pointer("/where/key").cloned().unwrap_or(Value::Null);
    let time = |bound: &str| {
        body.pointer(&format!("/where/messageTimestamp/{bound}"))
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp())
    };
    // Evolution filters on time only when both bounds are given.
    let window = time("gte").zip(time("lte"));
    let offset = body
        .get("offset")
        .and_then(Value::as_u64)
        .unwrap_or(50)
        .max(1) as usize;
    let page = body.get("page").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
    let mut records: Vec<Value> = shared.with(|inner| {
        inner.instances[&name]
            .messages
            .iter()
            .filter(|m| {
                ["id", "remoteJid"].iter().all(|field| {
                    key.get(*field)
                        .and_then(Value::as_str)
                        .is_none_or(|want| m["key"][*field].as_str() == Some(want))
                }) && (key.get("fromMe") != Some(&Value::Bool(true))
                    || m["key"]["fromMe"] == Value::Bool(true))
                    && window.is_none_or(|(from, to)| {
                        m["messageTimestamp"]
                            .as_i64()
                            .is_some_and(|t| from <= t && t <= to)
                    })
            })
            .cloned()
            .collect()
    });
    records.sort_by_key(|m| std::cmp::Reverse(m["messageTimestamp"].as_i64()));
    let total = records.len();
    let page_records: Vec<Value> = records
        .into_iter()
        .skip(offset * (page - 1))
        .take(offset)
        .map(|mut m| {
            if let Some(fields) = m.as_object_mut() {
                fields.remove("status");
                fields.insert("id".to_owned(), json!(format!("cm{}", total)));
                fields.insert("MessageUpdate".to_owned(), json!([]));
            }
            m
        })
        .collect();
    Ok(axum::Json(json!({
        "messages": {
            "total": total,
            "pages": total.div_ceil(offset),
            "currentPage": page,
            "records": page_records,
        }
    }))
    .into_response())
}
