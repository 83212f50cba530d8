//! The fake's Graph API routes: a number's record, a medium's record and its download, and
//! sends. Refusals are Graph's `{"error": {"message", "type", "code", "error_subcode"?,
//! "error_data"?, "fbtrace_id"}}` with the status Meta answers.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::state::Shared;
use super::{FakeCloudSent, SendFault};

pub(super) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/whatsapp_business/attachments/", get(download))
        .route("/{version}/{id}", get(object))
        .route("/{version}/{id}/messages", axum::routing::post(send))
        .fallback(|| async {
            graph_error(
                StatusCode::BAD_REQUEST,
                2500,
                None,
                "Unknown path components",
            )
        })
        .with_state(shared)
}

/// Graph's error answer.
fn graph_error(status: StatusCode, code: i64, subcode: Option<i64>, message: &str) -> Response {
    let mut error = json!({
        "message": message,
        "type": if code == 190 || code == 2500 { "OAuthException" } else { "GraphMethodException" },
        "code": code,
        "fbtrace_id": "AFakeTraceId000",
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = subcode.into();
    }
    (status, axum::Json(json!({ "error": error }))).into_response()
}

/// A send's refusal: `(#100) …` with the parameter named in `error_data.details`.
fn param_error(message: &str, details: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": {
            "message": format!("(#100) {message}"),
            "type": "OAuthException",
            "code": 100,
            "error_data": { "messaging_product": "whatsapp", "details": details },
            "fbtrace_id": "AFakeTraceId000",
        }})),
    )
        .into_response()
}

fn unsupported(method: &str, id: &str) -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        100,
        Some(33),
        &format!(
            "Unsupported {method} request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."
        ),
    )
}

/// The bearer token of a request, or Graph's refusal of its absence.
fn bearer(headers: &HeaderMap) -> Result<String, Box<Response>> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .ok_or_else(|| {
            Box::new(graph_error(
                StatusCode::BAD_REQUEST,
                2500,
                None,
                "An active access token must be used to query information about the current user.",
            ))
        })
}

/// The id of the number a token acts for, or Graph's refusal of an unknown token.
fn token_number(shared: &Shared, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let token = bearer(headers)?;
    shared
        .with(|inner| inner.number_of_token(&token).map(|n| n.id.clone()))
        .ok_or_else(|| {
            Box::new(graph_error(
                StatusCode::UNAUTHORIZED,
                190,
                None,
                "Invalid OAuth access token - Cannot parse access token",
            ))
        })
}

fn version_ok(version: &str) -> bool {
    version
        .strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && (major.to_owned() + minor)
                    .bytes()
                    .all(|b| b.is_ascii_digit())
        })
}

/// `GET /{version}/{id}`: a number's record, or a received medium's.
async fn object(
    State(shared): State<Shared>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !version_ok(&version) {
        return graph_error(
            StatusCode::BAD_REQUEST,
            2500,
            None,
            "Unknown path components",
        );
    }
    let number_id = match token_number(&shared, &headers) {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    let answer = shared.with(|inner| {
        if let Some(number) = inner.numbers.get(&id).filter(|n| n.id == number_id) {
            return Some(json!({
                "verified_name": number.verified_name,
                "display_phone_number": number.display,
                "id": number.id,
                "quality_rating": "GREEN",
            }));
        }
        let media = inner.media.get(&id).filter(|m| m.number_id == number_id)?;
        Some(json!({
            "messaging_product": "whatsapp",
            "url": format!("{}/whatsapp_business/attachments/?mid={id}", inner.base_url),
            "mime_type": media.mime_type,
            "sha256": "fake",
            "file_size": media.bytes.len(),
            "id": id,
        }))
    });
    match answer {
        Some(answer) => axum::Json(answer).into_response(),
        None => unsupported("get", &id),
    }
}

/// The download URL of a medium: only with the owning number's token.
async fn download(
    State(shared): State<Shared>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let number_id = match token_number(&shared, &headers) {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    let id = query.get("mid").cloned().unwrap_or_default();
    let found = shared.with(|inner| {
        inner
            .media
            .get(&id)
            .filter(|m| m.number_id == number_id)
            .map(|m| (m.mime_type.clone(), m.bytes.clone()))
    });
    match found {
        Some((mime, bytes)) => ([(header::CONTENT_TYPE, mime)], bytes).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

const MEDIA_KINDS: [&str; 5] = ["image", "video", "audio", "document", "sticker"];

/// Checks a send body as the Cloud API does; the recipient's digits and the message type.
fn check_message(
    shared: &Shared,
    number_id: &str,
    body: &Value,
) -> Result<(String, String), Box<Response>> {
    if body.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
        return Err(Box::new(param_error(
            "The parameter messaging_product is required.",
            "messaging_product must be whatsapp",
        )));
    }
    let to = body
        .get("to")
        .and_then(Value::as_str)
        .map(|t| t.trim_start_matches('+'))
        .filter(|t| !t.is_empty() && t.len() <= 15 && t.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            Box::new(param_error(
                "Invalid parameter",
                "to must be a phone number",
            ))
        })?;
    let kind = body.get("type").and_then(Value::as_str).unwrap_or("text");
    let part = body.get(kind);
    match kind {
        "text" => {
            let text = part
                .and_then(|t| t.get("body"))
                .and_then(Value::as_str)
                .filter(|b| !b.trim().is_empty())
                .ok_or_else(|| {
                    Box::new(param_error(
                        "The parameter text['body'] is required.",
                        "text.body",
                    ))
                })?;
            if text.chars().count() > 4096 {
                return Err(Box::new(param_error(
                    "Invalid parameter",
                    "text.body is longer than 4096",
                )));
            }
        }
        media if MEDIA_KINDS.contains(&media) => {
            let part = part.ok_or_else(|| Box::new(param_error("Invalid parameter", media)))?;
            let link = part.get("link").and_then(Value::as_str);
            let id = part.get("id").and_then(Value::as_str);
            let link_ok =
                link.is_some_and(|l| l.starts_with("https://") || l.starts_with("http://"));
            if !link_ok && id.is_none() {
                return Err(Box::new(param_error(
                    "Invalid parameter",
                    &format!("{media} needs a link (http/https) or an id"),
                )));
            }
            if media == "audio" && part.get("caption").is_some() {
                return Err(Box::new(param_error(
                    "Invalid parameter",
                    "audio takes no caption",
                )));
            }
        }
        "template" => {
            let name = part.and_then(|t| t.get("name")).and_then(Value::as_str);
            let language = part
                .and_then(|t| t.pointer("/language/code"))
                .and_then(Value::as_str);
            let (Some(name), Some(language)) = (name, language) else {
                return Err(Box::new(param_error(
                    "Invalid parameter",
                    "template needs name and language.code",
                )));
            };
            let known = shared.with(|inner| {
                inner
                    .numbers
                    .get(number_id)
                    .is_some_and(|n| n.templates.iter().any(|(n, l)| n == name && l == language))
            });
            if !known {
                return Err(Box::new(
                    (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({ "error": {
                        "message": "(#132001) Template name does not exist in the translation",
                        "type": "OAuthException",
                        "code": 132001,
                        "error_data": { "messaging_product": "whatsapp",
                            "details": format!("template name ({name}) does not exist in {language}") },
                        "fbtrace_id": "AFakeTraceId000",
                    }})),
                )
                    .into_response(),
                ));
            }
        }
        _ => return Err(Box::new(param_error("Invalid parameter", "type"))),
    }
    Ok((to.to_owned(), kind.to_owned()))
}

/// `POST /{version}/{phone-number-id}/messages`.
async fn send(
    State(shared): State<Shared>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !version_ok(&version) {
        return graph_error(
            StatusCode::BAD_REQUEST,
            2500,
            None,
            "Unknown path components",
        );
    }
    let number_id = match token_number(&shared, &headers) {
        Ok(number_id) => number_id,
        Err(refused) => return *refused,
    };
    if number_id != id {
        return unsupported("post", &id);
    }
    let fault = shared.with(|inner| inner.send_fault);
    if fault == Some(SendFault::Hang) {
        std::future::pending::<()>().await;
    }
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return param_error("Invalid parameter", "the body is not JSON");
    };
    let (to, kind) = match check_message(&shared, &number_id, &message) {
        Ok(checked) => checked,
        Err(refused) => return *refused,
    };
    let (wamid, window_open) = shared.with(|inner| {
        let wamid = inner.wamid();
        let open = inner.window_open(&number_id, &to);
        inner.sent.push(FakeCloudSent {
            id: wamid.clone(),
            number_id: number_id.clone(),
            to: to.clone(),
            kind: kind.clone(),
            body: message.clone(),
        });
        (wamid, open)
    });
    // Outside the customer service window only a template is delivered: the send is taken,
    // and a `failed` status with 131047 follows.
    let status = shared.clone();
    let id = wamid.clone();
    let free_form = kind != "template";
    tokio::spawn(async move {
        if free_form && !window_open {
            let errors = json!([{
                "code": 131047,
                "title": "Re-engagement message",
                "message": "Re-engagement message",
                "error_data": { "details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number." },
            }]);
            status.status(&id, "failed", Some(errors)).await;
        } else {
            status.status(&id, "sent", None).await;
        }
    });
    if fault == Some(SendFault::AcceptThenHang) {
        std::future::pending::<()>().await;
    }
    let mut answer = json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": message["to"], "wa_id": to }],
        "messages": [{ "id": wamid }],
    });
    if !free_form {
        answer["messages"][0]["message_status"] = "accepted".into();
    }
    axum::Json(answer).into_response()
}
