//! The fake's HTTP side: SMSGate's routes (swagger paths), Basic auth first (401), then the
//! body's checks (400), then the state's (404, 409).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    EVENTS, FakeSmsGateFault, FakeSmsGateMessage, FakeSmsGateMode, FakeSmsGateWebhook, Inner,
    Shared, sms_parts,
};

pub(super) fn router(shared: Shared) -> Router {
    let mode = shared.with(|inner| inner.mode);
    let api = Router::new()
        .route("/message", post(send))
        .route("/messages", post(send))
        .route("/messages/{id}", get(message))
        .route("/webhooks", post(register).get(list))
        .route("/webhooks/{id}", delete(unregister));
    match mode {
        FakeSmsGateMode::Local => api.route("/health", get(health)).with_state(shared),
        FakeSmsGateMode::Cloud => Router::new().nest(
            "/3rdparty/v1",
            api.route("/devices", get(devices)).with_state(shared),
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

/// HTTP Basic with the app's username and password: the refusal, when they are not.
fn unauthorized(inner: &Inner, headers: &HeaderMap) -> Option<Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let expected = format!("{}:{}", inner.username, inner.password);
    (given.as_deref() != Some(expected.as_str()))
        .then(|| error(StatusCode::UNAUTHORIZED, "Unauthorized"))
}

fn is_e164(number: &str) -> bool {
    number
        .strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// `POST /message` (and `/messages`).
async fn send(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = shared.with(|inner| unauthorized(inner, &headers)) {
        return refused;
    }
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid request body");
    };
    let Some(text) = value
        .pointer("/textMessage/text")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        return error(StatusCode::BAD_REQUEST, "textMessage.text is required");
    };
    let numbers: Vec<String> = value
        .get("phoneNumbers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if numbers.is_empty() {
        return error(StatusCode::BAD_REQUEST, "phoneNumbers is required");
    }
    let sim_number = match value.get("simNumber") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if (1..=3).contains(&n.as_u64().unwrap_or(0)) => {
            n.as_u64().map(|n| n as u8)
        }
        Some(_) => return error(StatusCode::BAD_REQUEST, "simNumber must be 1, 2 or 3"),
    };
    let with_delivery_report = value
        .get("withDeliveryReport")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let taken = shared.with(|inner| {
        // The cloud checks numbers at once; the phone only when it sends.
        if inner.mode == FakeSmsGateMode::Cloud && !numbers.iter().all(|n| is_e164(n)) {
            return Err((StatusCode::BAD_REQUEST, "invalid phone number".to_owned()));
        }
        let id = match value.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => format!("msg{:08}", inner.next()),
        };
        if inner.messages.iter().any(|m| m.id == id) {
            return Err((
                StatusCode::CONFLICT,
                format!("message with id {id} already exists"),
            ));
        }
        let message = FakeSmsGateMessage {
            id: id.clone(),
            text: text.to_owned(),
            phone_numbers: numbers.clone(),
            sim_number,
            with_delivery_report,
            state: "Pending".to_owned(),
            parts: sms_parts(text),
            body: value.clone(),
        };
        let answer = inner.message_json(&message);
        inner.messages.push(message);
        Ok((id, answer, inner.fault, inner.mode))
    });
    let (id, answer, fault, mode) = match taken {
        Ok(taken) => taken,
        Err((status, message)) => return error(status, &message),
    };
    shared.send_later(id.clone());
    if fault == Some(FakeSmsGateFault::AcceptThenHang) {
        std::future::pending::<()>().await;
    }
    let location = match mode {
        FakeSmsGateMode::Local => format!("/messages/{id}"),
        FakeSmsGateMode::Cloud => format!("/3rdparty/v1/messages/{id}"),
    };
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(answer),
    )
        .into_response()
}

/// `GET /messages/{id}`.
async fn message(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    shared.with(|inner| {
        if let Some(refused) = unauthorized(inner, &headers) {
            return refused;
        }
        match inner.messages.iter().find(|m| m.id == id) {
            Some(message) => axum::Json(inner.message_json(message)).into_response(),
            None => error(StatusCode::NOT_FOUND, "message not found"),
        }
    })
}

/// `POST /webhooks`: a webhook with an id the gateway holds replaces it.
async fn register(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    shared.with(|inner| {
        if let Some(refused) = unauthorized(inner, &headers) {
            return refused;
        }
        let Ok(value) = serde_json::from_slice::<Value>(&body) else {
            return error(StatusCode::BAD_REQUEST, "invalid request body");
        };
        let field = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let (Some(url), Some(event)) = (field("url"), field("event")) else {
            return error(StatusCode::BAD_REQUEST, "url and event are required");
        };
        if !EVENTS.contains(&event.as_str()) {
            return error(StatusCode::BAD_REQUEST, &format!("invalid event: {event}"));
        }
        let allowed = url.starts_with("https://")
            || (inner.mode == FakeSmsGateMode::Local && url.starts_with("http://127.0.0.1"));
        if !allowed {
            return error(
                StatusCode::BAD_REQUEST,
                "url must be https (the phone also takes http://127.0.0.1)",
            );
        }
        let id = field("id").unwrap_or_else(|| format!("wh{:08}", inner.next()));
        let webhook = FakeSmsGateWebhook {
            id: id.clone(),
            url,
            event,
            device_id: field("deviceId"),
        };
        inner.webhooks.insert(id, webhook.clone());
        (StatusCode::CREATED, axum::Json(webhook_json(&webhook))).into_response()
    })
}

fn webhook_json(webhook: &FakeSmsGateWebhook) -> Value {
    let mut value = json!({ "id": webhook.id, "url": webhook.url, "event": webhook.event });
    if let Some(device) = &webhook.device_id {
        value["deviceId"] = json!(device);
    }
    value
}

/// `GET /webhooks`.
async fn list(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    shared.with(|inner| {
        if let Some(refused) = unauthorized(inner, &headers) {
            return refused;
        }
        axum::Json(
            inner
                .webhooks
                .values()
                .map(webhook_json)
                .collect::<Vec<_>>(),
        )
        .into_response()
    })
}

/// `DELETE /webhooks/{id}`.
async fn unregister(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    shared.with(|inner| {
        if let Some(refused) = unauthorized(inner, &headers) {
            return refused;
        }
        match inner.webhooks.remove(&id) {
            Some(_) => StatusCode::NO_CONTENT.into_response(),
            None => error(StatusCode::NOT_FOUND, "webhook not found"),
        }
    })
}

/// `GET /health` of the phone's local server.
async fn health(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    shared.with(|inner| {
        if let Some(refused) = unauthorized(inner, &headers) {
            return refused;
        }
        axum::Json(json!({
            "status": "pass", "version": "1.31.0", "releaseId": 31,
            "checks": { "battery:level": { "status": "pass", "observedValue": 80, "observedUnit": "percent" } },
        }))
        .into_response()
    })
}

/// `GET /devices` of the cloud.
async fn devices(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    shared.with(|inner| {
        if let Some(refused) = unauthorized(inner, &headers) {
            return refused;
        }
        axum::Json(json!([inner.device_json()])).into_response()
    })
}
