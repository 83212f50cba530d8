//! The fake's HTTP side: the password check first (401), then each route's validation (400
//! with BlueBubbles' messages), then its answer in the `{status, message, data}` envelope.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};

use super::FakeBlueBubbles;
use super::state::{Shared, webhook_body};

/// The events a webhook may subscribe to (`webhookEventOptions`, the ones a bridge uses and
/// the catch-all).
const EVENTS: [&str; 14] = [
    "*",
    "new-message",
    "updated-message",
    "message-send-error",
    "typing-indicator",
    "chat-read-status-changed",
    "group-name-change",
    "participant-added",
    "participant-removed",
    "participant-left",
    "server-update",
    "new-server",
    "hello-world",
    "incoming-facetime",
];

/// How long the fake waits, after posting a send's echo, before it answers the send: the
/// echo comes first, as it may from the real server.
const ECHO_LEAD: Duration = Duration::from_millis(300);

pub(super) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/api/v1/ping", get(ping))
        .route("/api/v1/server/info", get(server_info))
        .route("/api/v1/webhook", get(list_webhooks).post(add_webhook))
        .route("/api/v1/webhook/{id}", delete(delete_webhook))
        .route("/api/v1/chat/{guid}", get(chat))
        .route("/api/v1/message/text", post(send_text))
        .route("/api/v1/message/attachment", post(send_attachment))
        .route("/api/v1/message/query", post(query))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

fn success(message: &str, data: Value) -> Response {
    Json200(json!({"status": 200, "message": message, "data": data})).into_response()
}

struct Json200(Value);

impl IntoResponse for Json200 {
    fn into_response(self) -> Response {
        (StatusCode::OK, axum::Json(self.0)).into_response()
    }
}

fn error(status: StatusCode, message: &str, kind: &str, detail: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "status": status.as_u16(),
            "message": message,
            "error": {"type": kind, "message": detail},
        })),
    )
        .into_response()
}

fn bad_request(detail: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "You've made a bad request! Please check your request params & body",
        "Validation Error",
        detail,
    )
}

fn not_found(detail: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "The requested resource was not found",
        "Database Error",
        detail,
    )
}

/// The Mac asleep hangs every request; otherwise the password (`password`, `guid` or
/// `token`, trimmed) must match.
async fn guard(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
    next: Next,
) -> Response {
    if !shared.lock().reachable {
        std::future::pending::<()>().await;
    }
    let given = ["password", "guid", "token"]
        .iter()
        .find_map(|k| query.get(*k))
        .map(|p| p.trim().to_owned());
    match given {
        None => error(
            StatusCode::UNAUTHORIZED,
            "You are not authorized to access this resource",
            "Authentication Error",
            "Missing server password!",
        ),
        Some(p) if p != FakeBlueBubbles::PASSWORD => error(
            StatusCode::UNAUTHORIZED,
            "You are not authorized to access this resource",
            "Authentication Error",
            "Unauthorized",
        ),
        Some(_) => next.run(request).await,
    }
}

async fn ping() -> Response {
    success("Ping received!", json!("pong"))
}

async fn server_info(State(shared): State<Shared>) -> Response {
    let version = shared.lock().version.clone();
    success(
        "Successfully fetched metadata",
        json!({
            "computer_id": "F4KE-MAC", "os_version": "15.1", "server_version": version,
            "private_api": false, "proxy_service": "Cloudflare", "helper_connected": false,
            "detected_icloud": "frontdesk@icloud.com", "detected_imessage": "frontdesk@icloud.com",
            "macos_time_sync": null, "local_ipv4s": ["192.168.1.20"], "local_ipv6s": []
        }),
    )
}

async fn list_webhooks(State(shared): State<Shared>) -> Response {
    let inner = shared.lock();
    let all: Vec<Value> = inner
        .webhooks
        .iter()
        .map(|w| inner.webhook_json(w.id))
        .collect();
    success("Successfully fetched webhooks!", Value::Array(all))
}

async fn add_webhook(State(shared): State<Shared>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("Invalid JSON body");
    };
    let (Some(url), Some(events)) = (body["url"].as_str(), body["events"].as_array()) else {
        return bad_request("The url field is required. The events field is required.");
    };
    if url.is_empty() {
        return bad_request("Webhook URL is required!");
    }
    if !url.starts_with("http") {
        return bad_request("Webhook URL must include an HTTP scheme!");
    }
    let mut checked = Vec::new();
    for event in events {
        let Some(event) = event.as_str() else {
            return bad_request("Webhook events must be strings!");
        };
        if !EVENTS.contains(&event) {
            return bad_request(&format!(
                "Invalid webhook event: {event}! Webhook must be one of: {}",
                EVENTS.join(",")
            ));
        }
        checked.push(event.to_owned());
    }
    let created = shared.lock().add_webhook(url, checked);
    success("Successfully created webhook!", created)
}

async fn delete_webhook(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let mut inner = shared.lock();
    let id: i64 = id.parse().unwrap_or(-1);
    let before = inner.webhooks.len();
    inner.webhooks.retain(|w| w.id != id);
    if inner.webhooks.len() == before {
        return not_found("Webhook does not exist!");
    }
    success("Successfully deleted webhook!", Value::Null)
}

async fn chat(State(shared): State<Shared>, Path(guid): Path<String>) -> Response {
    if !shared.lock().chats.contains(&guid) {
        return not_found("Chat does not exist!");
    }
    let address = guid.split_once(";-;").map_or("", |(_, a)| a).to_owned();
    success(
        "Successfully fetched chat!",
        json!({"originalROWID": 1, "guid": guid, "style": 45, "chatIdentifier": address,
               "isArchived": false, "displayName": "", "participants": [{"address": address}]}),
    )
}

/// A chat GUID the fake can send into: `iMessage;-;…` or `SMS;-;…` (or a group's `;+;`).
fn sendable(chat: &str) -> bool {
    let mut parts = chat.splitn(3, ';');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some("iMessage" | "SMS"), Some("-" | "+"), Some(rest)) if !rest.is_empty()
    )
}

async fn send_text(State(shared): State<Shared>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("Invalid JSON body");
    };
    let Some(chat) = body["chatGuid"].as_str() else {
        return bad_request("The chatGuid field is required.");
    };
    let Some(text) = body["message"].as_str() else {
        return bad_request("The message field must be a string.");
    };
    let method = body["method"].as_str().unwrap_or("apple-script");
    if !matches!(method, "apple-script" | "private-api") {
        return bad_request("The selected method is invalid.");
    }
    if method == "private-api" {
        return bad_request("iMessage Private API is not enabled!");
    }
    let temp = body["tempGuid"].as_str().unwrap_or_default();
    if temp.is_empty() {
        return bad_request("A 'tempGuid' is required when sending via AppleScript");
    }
    if text.is_empty() {
        return bad_request("A 'message' is required when sending via AppleScript");
    }
    if !sendable(chat) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Message Send Error",
            "iMessage Error",
            &format!("Failed to send message! Chat {chat} is not a valid chat GUID"),
        );
    }
    deliver(&shared, chat, temp, text, Vec::new()).await
}

/// Stores a send, posts its echo, and answers after it (or never, when told to hang).
async fn deliver(
    shared: &Shared,
    chat: &str,
    temp: &str,
    text: &str,
    attachments: Vec<(String, String)>,
) -> Response {
    let (message, hang) = {
        let mut inner = shared.lock();
        if !inner.in_flight.insert(temp.to_owned()) {
            return bad_request(&format!(
                "Message is already queued to be sent! (Temp GUID: {temp})"
            ));
        }
        let message = inner.store(chat, text, true, Some(temp.to_owned()), attachments);
        (message, std::mem::take(&mut inner.hang_next_send))
    };
    let echo = shared.clone();
    let echo_body = webhook_body("new-message", message.json(true));
    tokio::spawn(async move { echo.post_all(echo_body).await });
    tokio::time::sleep(ECHO_LEAD).await;
    if hang {
        // The Mac sent it; the answer is lost. The server's send cache keeps the tempGuid
        // until it gives up on its own.
        std::future::pending::<()>().await;
    }
    shared.lock().in_flight.remove(temp);
    let mut data = message.json(true);
    data["tempGuid"] = json!(temp);
    success("Message sent!", data)
}

async fn send_attachment(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(boundary) = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once("boundary="))
        .map(|(_, b)| b.trim_matches('"').to_owned())
    else {
        return bad_request("Attachment not provided or was empty!");
    };
    let parts = multipart_parts(&body, &boundary);
    let field = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name && p.file_name.is_none())
            .map(|p| String::from_utf8_lossy(&p.bytes).into_owned())
    };
    let Some(chat) = field("chatGuid") else {
        return bad_request("The chatGuid field is required.");
    };
    let Some(name) = field("name") else {
        return bad_request("The name field is required.");
    };
    let Some(file) = parts
        .iter()
        .find(|p| p.name == "attachment" && !p.bytes.is_empty())
    else {
        return bad_request("Attachment not provided or was empty!");
    };
    let temp = field("tempGuid").unwrap_or_default();
    if temp.is_empty() {
        return bad_request("A 'tempGuid' is required when sending via AppleScript");
    }
    let mime = file
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    deliver(&shared, &chat, &temp, "", vec![(name, mime)]).await
}

struct Part {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    bytes: Vec<u8>,
}

/// The parts of a `multipart/form-data` body (enough of RFC 7578 for a client's request).
fn multipart_parts(body: &[u8], boundary: &str) -> Vec<Part> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(start) = find(rest, delimiter.as_bytes()) {
        rest = &rest[start + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let rest_trimmed = rest.strip_prefix(b"\r\n").unwrap_or(rest);
        let Some(head_end) = find(rest_trimmed, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest_trimmed[..head_end]).into_owned();
        let content = &rest_trimmed[head_end + 4..];
        let end = find(content, format!("\r\n{delimiter}").as_bytes()).unwrap_or(content.len());
        let attr = |key: &str| {
            head.split(';')
                .map(str::trim)
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
        };
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type:"))
            .map(|v| v.trim().to_owned());
        parts.push(Part {
            name: attr("name").unwrap_or_default(),
            file_name: attr("filename"),
            content_type,
            bytes: content[..end].to_vec(),
        });
        rest = &content[end..];
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn query(State(shared): State<Shared>, body: Bytes) -> Response {
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(_) => return bad_request("Invalid JSON body"),
        }
    };
    let number = |key: &str, min: i64, max: i64| -> Result<Option<i64>, String> {
        match &body[key] {
            Value::Null => Ok(None),
            value => value
                .as_i64()
                .filter(|n| (min..=max).contains(n))
                .map(Some)
                .ok_or_else(|| format!("The {key} field is invalid.")),
        }
    };
    let (limit, offset, after, before) = match (
        number("limit", 1, 1000),
        number("offset", 0, i64::MAX),
        number("after", 0, i64::MAX),
        number("before", 1, i64::MAX),
    ) {
        (Ok(l), Ok(o), Ok(a), Ok(b)) => (l.unwrap_or(100), o.unwrap_or(0), a, b),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
            return bad_request(&e);
        }
    };
    let sort = match body["sort"].as_str() {
        None | Some("DESC") => "DESC",
        Some("ASC") => "ASC",
        Some(_) => return bad_request("The selected sort is invalid."),
    };
    let chat = body["chatGuid"].as_str().map(str::to_owned);
    let with_chats = body["with"].as_array().is_some_and(|w| {
        w.iter()
            .any(|v| matches!(v.as_str(), Some("chat" | "chats")))
    });
    let inner = shared.lock();
    if let Some(chat) = &chat
        && !inner.chats.contains(chat)
    {
        return success(&format!("No chat found with GUID: {chat}"), json!([]));
    }
    let mut found: Vec<_> = inner
        .messages
        .iter()
        .filter(|m| chat.as_ref().is_none_or(|c| *c == m.chat_guid))
        .filter(|m| after.is_none_or(|a| m.date_created >= a))
        .filter(|m| before.is_none_or(|b| m.date_created <= b))
        .collect();
    if sort == "DESC" {
        found.reverse();
    }
    let total = found.len();
    let page: Vec<Value> = found
        .into_iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|m| m.json(with_chats))
        .collect();
    let count = page.len();
    (
        StatusCode::OK,
        axum::Json(json!({
            "status": 200, "message": "Success", "data": page,
            "metadata": {"offset": offset, "limit": limit, "total": total, "count": count}
        })),
    )
        .into_response()
}
