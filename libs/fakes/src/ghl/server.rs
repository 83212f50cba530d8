//! The HTTP side of the fake GHL. Every request goes through one pipeline, in this order:
//! injected failures, the documents' operation for the path, the bearer token (401), the
//! resource's rate limit (429), failures injected for the location, the `Version` header (400),
//! required query parameters and the body's schema (422), then the endpoint itself. Each request
//! is recorded with the status it got.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::schema::{self, Operation};
use super::state::{
    Bearer, Contact, Grant, Inner, Message, RateHeaders, Shared, add_tags, ghl_id, now_iso,
};
use super::{FakeGhl, FakeGhlMessage, RecordedRequest, SchemaViolation};

pub(crate) fn router(shared: Shared) -> Router {
    Router::new().fallback(dispatch).with_state(shared)
}

/// A request as the pipeline sees it.
struct Call {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    version: Option<String>,
    authorization: Option<String>,
    content_type: Option<String>,
    raw_body: bytes::Bytes,
    body: Option<Value>,
    location: Option<String>,
}

impl Call {
    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn is_form(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"))
    }
}

/// An answer before it becomes an HTTP response.
struct Reply {
    status: StatusCode,
    body: Value,
    rate: Option<RateHeaders>,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self::with(StatusCode::OK, body)
    }

    fn with(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            rate: None,
        }
    }

    /// GHL's error shape (`common-schemas.json`): `{statusCode, message}`, plus `error` for
    /// 401 and 422.
    fn error(status: StatusCode, message: impl Into<String>) -> Self {
        let mut body = json!({ "statusCode": status.as_u16(), "message": message.into() });
        if status == StatusCode::UNAUTHORIZED {
            body["error"] = json!("Unauthorized");
        }
        Self::with(status, body)
    }

    fn unprocessable(messages: Vec<String>) -> Self {
        Self::with(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "statusCode": 422, "message": messages, "error": "Unprocessable Entity" }),
        )
    }

    /// What an injected failure answers.
    fn injected(status: u16) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let reason = status.canonical_reason().unwrap_or("Error");
        Self::error(status, reason)
    }
}

async fn dispatch(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let raw_body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut call = Call {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts
            .uri
            .query()
            .and_then(|q| serde_urlencoded::from_str(q).ok())
            .unwrap_or_default(),
        version: header("version"),
        authorization: header("authorization"),
        content_type: header("content-type"),
        raw_body,
        body: None,
        location: None,
    };
    let latency = shared.with(|inner| inner.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let reply = shared.with(|inner| {
        let reply = handle(inner, &mut call, Instant::now());
        inner.requests.push(RecordedRequest {
            method: call.method.clone(),
            path: call.path.clone(),
            query: call.query.clone(),
            version: call.version.clone(),
            authorization: call.authorization.clone(),
            content_type: call.content_type.clone(),
            body: call.body.clone(),
            location: call.location.clone(),
            status: reply.status.as_u16(),
            at: std::time::SystemTime::now(),
        });
        reply
    });
    into_response(reply)
}

fn into_response(reply: Reply) -> Response {
    let mut response = (reply.status, axum::Json(reply.body)).into_response();
    if let Some(rate) = reply.rate {
        let headers = response.headers_mut();
        let mut set = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        set("x-ratelimit-limit-daily", rate.limits.daily_max.to_string());
        set(
            "x-ratelimit-daily-remaining",
            rate.daily_remaining.to_string(),
        );
        set(
            "x-ratelimit-interval-milliseconds",
            rate.limits.burst_window.as_millis().to_string(),
        );
        set("x-ratelimit-max", rate.limits.burst_max.to_string());
        set("x-ratelimit-remaining", rate.burst_remaining.to_string());
        // Retry-After on GHL's 429s is UNCONFIRMED (ghl-api.md §7); the fake sends it so a
        // client that honours it can be tested, but a client must not depend on it.
        if let Some(seconds) = rate.retry_after {
            set("retry-after", seconds.to_string());
        }
    }
    response
}

fn handle(inner: &mut Inner, call: &mut Call, now: Instant) -> Reply {
    if inner.down {
        return Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    }
    if inner.fail_next.0 > 0 {
        inner.fail_next.0 -= 1;
        return Reply::injected(inner.fail_next.1);
    }
    let op = match schema::operation(&call.method, &call.path) {
        Ok(Some(op)) => op,
        // NestJS's answer to a route it does not have.
        _ => {
            return Reply::with(
                StatusCode::NOT_FOUND,
                json!({
                    "statusCode": 404,
                    "message": format!("Cannot {} {}", call.method, call.path),
                    "error": "Not Found",
                }),
            );
        }
    };
    match parse_body(call) {
        Ok(body) => call.body = body,
        Err(reply) => return reply,
    }
    if op.template == "/oauth/token" {
        return oauth_token(inner, &op, call, now);
    }

    let token = call
        .authorization
        .as_deref()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let Some(bearer) = inner.bearer(token, now) else {
        return Reply::error(
            StatusCode::UNAUTHORIZED,
            "Invalid token: access token is invalid",
        );
    };
    let resource = bearer.resource().to_owned();
    call.location = Some(resource.clone());

    let limits = inner.limits_for(&resource);
    let rate = inner
        .usage
        .entry(resource.clone())
        .or_default()
        .admit(limits, now);
    if rate.retry_after.is_some() {
        *inner.rate_limited.entry(resource).or_default() += 1;
        let mut reply = Reply::error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        reply.rate = Some(rate);
        return reply;
    }
    let mut reply = checked(inner, &op, call, &bearer, now);
    reply.rate = Some(rate);
    reply
}

/// The request's body: JSON, or a form as an object of strings.
fn parse_body(call: &Call) -> Result<Option<Value>, Reply> {
    if call.raw_body.is_empty() {
        return Ok(None);
    }
    if call.is_form() {
        let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&call.raw_body)
            .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, e.to_string()))?;
        let object: Map<String, Value> = fields
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        return Ok(Some(Value::Object(object)));
    }
    serde_json::from_slice(&call.raw_body)
        .map(Some)
        .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, format!("Invalid JSON body: {e}")))
}

/// Refuses the request with 422 and records why.
fn violation(inner: &mut Inner, call: &Call, messages: Vec<String>) -> Reply {
    inner.violations.push(SchemaViolation {
        method: call.method.clone(),
        path: call.path.clone(),
        messages: messages.clone(),
    });
    Reply::unprocessable(messages)
}

/// The version, query and body checks, then the endpoint.
fn checked(inner: &mut Inner, op: &Operation, call: &Call, bearer: &Bearer, now: Instant) -> Reply {
    if let Some(status) = inner.fail_locations.get(bearer.resource()) {
        return Reply::injected(*status);
    }
    if let Some(versions) = op.versions()
        && !call.version.as_ref().is_some_and(|v| versions.contains(v))
    {
        let expected = versions.join(" or ");
        return Reply::error(
            StatusCode::BAD_REQUEST,
            match &call.version {
                None => format!("Version header is required: {expected}"),
                Some(v) => format!("Version header {v} is not valid here: expected {expected}"),
            },
        );
    }
    if let Err(reply) = check_request(inner, op, call) {
        return reply;
    }
    route(inner, op, call, bearer, now)
}

/// Required query parameters, the media type and the body's schema.
fn check_request(inner: &mut Inner, op: &Operation, call: &Call) -> Result<(), Reply> {
    let missing: Vec<String> = op
        .required_query()
        .into_iter()
        .filter(|name| call.query(name).is_none())
        .map(|name| format!("{name}: is required"))
        .collect();
    if !missing.is_empty() {
        return Err(violation(inner, call, missing));
    }
    if let Some((media, _)) = op.body() {
        let form = media == "application/x-www-form-urlencoded";
        if form != call.is_form() && !call.raw_body.is_empty() {
            return Err(violation(
                inner,
                call,
                vec![format!("body: must be sent as {media}")],
            ));
        }
        // An absent body validates as an empty object, as NestJS's pipe does.
        let body = call.body.clone().unwrap_or_else(|| json!({}));
        let errors = op.check_body(&body, inner.forbid_unknown_properties);
        if !errors.is_empty() {
            return Err(violation(inner, call, errors));
        }
    }
    Ok(())
}

/// The value of `{name}` in the request's path.
fn path_param(template: &str, path: &str, name: &str) -> String {
    let wanted = format!("{{{name}}}");
    template
        .split('/')
        .filter(|s| !s.is_empty())
        .zip(path.split('/').filter(|s| !s.is_empty()))
        .find(|(t, _)| *t == wanted)
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

/// Whether `bearer` may act on `location_id`'s data.
fn may_access(bearer: &Bearer, location_id: &str) -> Result<(), Reply> {
    match bearer {
        Bearer::Location {
            location_id: own, ..
        } if own == location_id => Ok(()),
        // The fake's choice (GHL's exact answer is not documented): 403 with a message that
        // says what is wrong, so it is not mistaken for an expired token.
        Bearer::Location { .. } => Err(Reply::error(
            StatusCode::FORBIDDEN,
            "The token does not have access to this location.",
        )),
        Bearer::Company { .. } => Err(agency_token_refused()),
    }
}

/// An agency token on a sub-account endpoint; GHL answers such tokens 401 with this message
/// (the fake's wording follows answers seen from GHL; not in ghl-api.md).
fn agency_token_refused() -> Reply {
    Reply::error(
        StatusCode::UNAUTHORIZED,
        "This authClass type is not allowed to access this scope. Use a Location token \
         (POST /oauth/locationToken).",
    )
}

fn route(inner: &mut Inner, op: &Operation, call: &Call, bearer: &Bearer, now: Instant) -> Reply {
    let result = match (call.method.as_str(), op.template) {
        ("GET", "/contacts/search/duplicate") => duplicate(inner, call, bearer),
        ("POST", "/contacts/upsert") => upsert(inner, call, bearer),
        ("GET", "/contacts/{contactId}") => contact_for(inner, op, call, bearer)
            .map(|c| Reply::ok(json!({ "contact": c.to_json() }))),
        ("PUT", "/contacts/{contactId}") => update_contact(inner, op, call, bearer),
        ("POST" | "DELETE", "/contacts/{contactId}/tags") => tags(inner, op, call, bearer),
        ("GET", "/users/search") => users(inner, call, bearer),
        ("POST", "/conversations/messages/inbound") => inbound(inner, call, bearer),
        ("GET", "/conversations/search") => search_conversations(inner, call, bearer),
        ("GET", "/conversations/{conversationId}/messages") => {
            conversation_messages(inner, op, call, bearer)
        }
        ("PUT", "/conversations/messages/{messageId}/status") => {
            status(inner, op, call, bearer, now)
        }
        ("POST", "/oauth/locationToken") => location_token(inner, call, bearer, now),
        (method, template) => Err(Reply::error(
            StatusCode::NOT_IMPLEMENTED,
            format!("the fake GHL does not implement {method} {template}"),
        )),
    };
    result.unwrap_or_else(|reply| reply)
}

fn body_object(call: &Call) -> Map<String, Value> {
    call.body
        .as_ref()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn text<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str)
}

// ---- contacts -----------------------------------------------------------------------------

fn duplicate(inner: &mut Inner, call: &Call, bearer: &Bearer) -> Result<Reply, Reply> {
    let location = call.query("locationId").unwrap_or_default().to_owned();
    may_access(bearer, &location)?;
    let found = call
        .query("number")
        .and_then(|number| inner.contact_by_phone(&location, number))
        .or_else(|| {
            call.query("email")
                .and_then(|email| inner.contact_by_email(&location, email))
        });
    Ok(Reply::ok(json!({ "contact": found.map(Contact::to_json) })))
}

fn upsert(inner: &mut Inner, call: &Call, bearer: &Bearer) -> Result<Reply, Reply> {
    let body = body_object(call);
    let location = text(&body, "locationId").unwrap_or_default().to_owned();
    may_access(bearer, &location)?;
    // The location does not allow duplicates, so `createNewIfDuplicateAllowed` changes
    // nothing (scenario 2 of the spec); phone first, then email, finds the existing contact.
    let existing = text(&body, "phone")
        .and_then(|phone| inner.contact_by_phone(&location, phone))
        .or_else(|| text(&body, "email").and_then(|e| inner.contact_by_email(&location, e)))
        .map(|c| c.id.clone());
    let (new, contact) = match existing {
        Some(id) => {
            let contact = inner.contact_mut(&id).expect("found above");
            contact.apply(&body);
            (false, contact.to_json())
        }
        None => {
            let mut contact = Contact::new(&location);
            contact.apply(&body);
            let json = contact.to_json();
            inner.contacts.push(contact);
            (true, json)
        }
    };
    Ok(Reply::ok(json!({
        "new": new,
        "contact": contact,
        "traceId": uuid::Uuid::now_v7().to_string(),
    })))
}

/// The path's contact, when the token may see it. GHL's documents give only 400 for a
/// contact that does not exist.
fn contact_for<'a>(
    inner: &'a mut Inner,
    op: &Operation,
    call: &Call,
    bearer: &Bearer,
) -> Result<&'a mut Contact, Reply> {
    let id = path_param(op.template, &call.path, "contactId");
    let location = inner
        .contact(&id)
        .map(|c| c.location_id.clone())
        .ok_or_else(|| Reply::error(StatusCode::BAD_REQUEST, "Contact not found"))?;
    may_access(bearer, &location)?;
    Ok(inner.contact_mut(&id).expect("found above"))
}

fn update_contact(
    inner: &mut Inner,
    op: &Operation,
    call: &Call,
    bearer: &Bearer,
) -> Result<Reply, Reply> {
    let body = body_object(call);
    let contact = contact_for(inner, op, call, bearer)?;
    contact.apply(&body);
    Ok(Reply::ok(
        json!({ "succeded": true, "contact": contact.to_json() }),
    ))
}

fn tags(inner: &mut Inner, op: &Operation, call: &Call, bearer: &Bearer) -> Result<Reply, Reply> {
    let body = body_object(call);
    let contact = contact_for(inner, op, call, bearer)?;
    let given = body.get("tags").cloned().unwrap_or_default();
    if call.method == "POST" {
        add_tags(&mut contact.tags, &given);
        contact.date_updated = now_iso();
        Ok(Reply::with(
            StatusCode::CREATED,
            json!({ "tags": contact.tags }),
        ))
    } else {
        let remove: Vec<&str> = given
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        contact.tags.retain(|t| !remove.contains(&t.as_str()));
        contact.date_updated = now_iso();
        Ok(Reply::ok(json!({ "tags": contact.tags })))
    }
}

// ---- users --------------------------------------------------------------------------------

fn users(inner: &mut Inner, call: &Call, bearer: &Bearer) -> Result<Reply, Reply> {
    let company = call.query("companyId").unwrap_or_default();
    let location = call.query("locationId");
    if company != bearer.company() {
        return Err(Reply::error(
            StatusCode::FORBIDDEN,
            "The token does not have access to this company.",
        ));
    }
    if let (Bearer::Location { .. }, Some(location)) = (bearer, location) {
        may_access(bearer, location)?;
    }
    let wanted_ids: Option<Vec<&str>> = call.query("ids").map(|ids| ids.split(',').collect());
    let query = call.query("query").map(str::to_lowercase);
    let matching: Vec<Value> = inner
        .users
        .iter()
        .filter(|(loc, _)| inner.company_of(loc) == company)
        .filter(|(loc, _)| location.is_none_or(|l| l == loc))
        .filter(|(_, u)| call.query("role").is_none_or(|r| r == u.role))
        .filter(|(_, u)| {
            wanted_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&u.id.as_str()))
        })
        .filter(|(_, u)| {
            query.as_ref().is_none_or(|q| {
                u.name.to_lowercase().contains(q) || u.email.to_lowercase().contains(q)
            })
        })
        .map(|(loc, u)| {
            let (first, last) = u.name.split_once(' ').unwrap_or((&u.name, ""));
            json!({
                "id": u.id,
                "name": u.name,
                "firstName": first,
                "lastName": last,
                "email": u.email,
                "phone": "",
                "extension": "",
                "permissions": {},
                "roles": {
                    "type": "account",
                    "role": u.role,
                    "locationIds": [loc],
                    "restrictSubAccount": false,
                },
                "deleted": u.deleted,
            })
        })
        .collect();
    let count = matching.len();
    let number = |name: &str, default: usize| {
        call.query(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let page: Vec<Value> = matching
        .into_iter()
        .skip(number("skip", 0))
        .take(number("limit", 25))
        .collect();
    Ok(Reply::ok(json!({ "users": page, "count": count })))
}

// ---- conversations ------------------------------------------------------------------------

fn inbound(inner: &mut Inner, call: &Call, bearer: &Bearer) -> Result<Reply, Reply> {
    let body = body_object(call);
    // The schema check made sure one of the two ids is there (ghl-api.md §2.3).
    let contact_id = match (text(&body, "contactId"), text(&body, "conversationId")) {
        (Some(contact), Some(conversation)) => {
            if inner.contact_of_conversation(conversation).as_deref() != Some(contact) {
                return Err(Reply::error(
                    StatusCode::BAD_REQUEST,
                    "Conversation not found for this contact",
                ));
            }
            contact.to_owned()
        }
        (Some(contact), None) => contact.to_owned(),
        (None, Some(conversation)) => inner
            .contact_of_conversation(conversation)
            .ok_or_else(|| Reply::error(StatusCode::BAD_REQUEST, "Conversation not found"))?,
        (None, None) => {
            return Err(Reply::unprocessable(vec![
                "body: one of contactId, conversationId is required".to_owned(),
            ]));
        }
    };
    let location = inner
        .contact(&contact_id)
        .map(|c| c.location_id.clone())
        .ok_or_else(|| Reply::error(StatusCode::BAD_REQUEST, "Contact not found"))?;
    may_access(bearer, &location)?;
    if let Some((refused, status)) = &inner.refuse_text
        && text(&body, "message").is_some_and(|m| m.contains(refused.as_str()))
    {
        return Err(Reply::injected(*status));
    }
    let conversation_id = inner.conversation_of(&contact_id);
    let date = text(&body, "date")
        .map(str::to_owned)
        .unwrap_or_else(now_iso);
    let message = FakeGhlMessage {
        id: ghl_id(),
        conversation_id: conversation_id.clone(),
        contact_id: contact_id.clone(),
        location_id: location,
        message_type: text(&body, "type").unwrap_or("SMS").to_owned(),
        // "default is outbound" (ProcessMessageBodyDto.direction).
        direction: text(&body, "direction").unwrap_or("outbound").to_owned(),
        message: text(&body, "message").map(str::to_owned),
        attachments: body
            .get("attachments")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        alt_id: text(&body, "altId").map(str::to_owned),
        conversation_provider_id: text(&body, "conversationProviderId").map(str::to_owned),
        date: date.clone(),
        status: None,
        user_id: None,
    };
    let message_id = message.id.clone();
    inner.messages.push(Message {
        public: message,
        sent_to_provider_at: None,
    });
    Ok(Reply::ok(json!({
        "success": true,
        "conversationId": conversation_id,
        "messageId": message_id,
        "message": "Message queued successfully",
        "contactId": contact_id,
        "dateAdded": date,
    })))
}

/// `GET /conversations/search` (`SendConversationResponseDto`): the location's conversations,
/// of one contact when `contactId` is given.
fn search_conversations(inner: &mut Inner, call: &Call, bearer: &Bearer) -> Result<Reply, Reply> {
    let location = call.query("locationId").unwrap_or_default().to_owned();
    may_access(bearer, &location)?;
    let wanted = call.query("contactId");
    let mut conversations: Vec<Value> = inner
        .conversations
        .iter()
        .filter(|(contact, _)| wanted.is_none_or(|w| w == contact.as_str()))
        .filter_map(|(contact_id, conversation_id)| {
            let contact = inner.contact(contact_id)?;
            (contact.location_id == location).then(|| {
                let last = inner
                    .messages
                    .iter()
                    .rev()
                    .find(|m| &m.public.conversation_id == conversation_id);
                json!({
                    "id": conversation_id,
                    "contactId": contact_id,
                    "locationId": location,
                    "lastMessageBody": last.and_then(|m| m.public.message.clone()).unwrap_or_default(),
                    "lastMessageType": "TYPE_SMS",
                    "type": "TYPE_PHONE",
                    "unreadCount": 0,
                    "fullName": contact.name.clone().unwrap_or_default(),
                    "contactName": contact.name.clone().unwrap_or_default(),
                    "email": "",
                    "phone": contact.phone.clone().unwrap_or_default(),
                })
            })
        })
        .collect();
    conversations.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let total = conversations.len();
    Ok(Reply::ok(
        json!({ "conversations": conversations, "total": total }),
    ))
}

/// `GET /conversations/{conversationId}/messages` (`GetMessagesByConversationResponseDto`):
/// newest first, `limit` a page (20 by default), the next page after `lastMessageId`. Like
/// GHL's schema for SMS messages, no `altId`.
fn conversation_messages(
    inner: &mut Inner,
    op: &Operation,
    call: &Call,
    bearer: &Bearer,
) -> Result<Reply, Reply> {
    let conversation_id = path_param(op.template, &call.path, "conversationId");
    let contact_id = inner
        .contact_of_conversation(&conversation_id)
        .ok_or_else(|| Reply::error(StatusCode::BAD_REQUEST, "Conversation not found"))?;
    let location = inner
        .contact(&contact_id)
        .map(|c| c.location_id.clone())
        .ok_or_else(|| Reply::error(StatusCode::BAD_REQUEST, "Conversation not found"))?;
    may_access(bearer, &location)?;
    let limit: usize = call
        .query("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let newest_first = inner
        .messages
        .iter()
        .rev()
        .filter(|m| m.public.conversation_id == conversation_id)
        .map(|m| &m.public);
    let after: Vec<_> = match call.query("lastMessageId") {
        Some(last) => newest_first.skip_while(|m| m.id != last).skip(1).collect(),
        None => newest_first.collect(),
    };
    let page: Vec<Value> = after
        .iter()
        .take(limit)
        .map(|m| {
            json!({
                "id": m.id,
                "type": 2,
                "messageType": "TYPE_SMS",
                "locationId": m.location_id,
                "contactId": m.contact_id,
                "conversationId": m.conversation_id,
                "dateAdded": m.date,
                "body": m.message.clone().unwrap_or_default(),
                "direction": m.direction,
                "status": m.status.clone().unwrap_or_else(|| "delivered".into()),
                "contentType": "text/plain",
                "attachments": m.attachments,
                "conversationProviderId": m.conversation_provider_id,
            })
        })
        .collect();
    let last_message_id = page
        .last()
        .and_then(|m| m["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    Ok(Reply::ok(json!({
        "lastMessageId": last_message_id,
        "nextPage": after.len() > limit,
        "messages": page,
    })))
}

fn status(
    inner: &mut Inner,
    op: &Operation,
    call: &Call,
    bearer: &Bearer,
    now: Instant,
) -> Result<Reply, Reply> {
    let id = path_param(op.template, &call.path, "messageId");
    let body = body_object(call);
    let status = text(&body, "status").unwrap_or_default().to_owned();
    let delay = inner.downstream_delay;
    let Some(index) = inner.messages.iter().position(|m| m.public.id == id) else {
        return Err(Reply::error(StatusCode::NOT_FOUND, "Message not found"));
    };
    may_access(bearer, &inner.messages[index].public.location_id)?;
    // ghl-api.md §2.4 (ISS#4): until GHL has "downstreamed" a message it sent to the
    // provider, status updates for it are refused with this 403.
    if inner.messages[index]
        .sent_to_provider_at
        .is_some_and(|sent| now.duration_since(sent) < delay)
    {
        inner.record_status(&id, &status, body.get("error").cloned(), 403);
        return Err(Reply::error(
            StatusCode::FORBIDDEN,
            "No conversation provider found for this message",
        ));
    }
    let message = &mut inner.messages[index].public;
    message.status = Some(status.clone());
    let conversation_id = message.conversation_id.clone();
    inner.record_status(&id, &status, body.get("error").cloned(), 200);
    Ok(Reply::ok(json!({
        "conversationId": conversation_id,
        "messageId": id,
        "status": status,
    })))
}

// ---- oauth --------------------------------------------------------------------------------

/// An OAuth error: GHL's `{statusCode, message}` with the OAuth `error` code alongside.
fn oauth_error(status: StatusCode, error: &str, message: &str) -> Reply {
    Reply::with(
        status,
        json!({
            "statusCode": status.as_u16(),
            "message": message,
            "error": error,
            "error_description": message,
        }),
    )
}

fn oauth_token(inner: &mut Inner, op: &Operation, call: &Call, now: Instant) -> Reply {
    if let Err(reply) = check_request(inner, op, call) {
        return reply;
    }
    let body = body_object(call);
    if text(&body, "client_id") != Some(inner.client_id.as_str())
        || text(&body, "client_secret") != Some(inner.client_secret.as_str())
    {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client: client credentials are invalid",
        );
    }
    let grant: Grant = match text(&body, "grant_type") {
        Some("authorization_code") => {
            let code = text(&body, "code").unwrap_or_default();
            let Some(grant) = inner.codes.remove(code) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid grant: authorization code is invalid",
                );
            };
            if let (Some(issued), Some(given)) = (&grant.redirect_uri, text(&body, "redirect_uri"))
                && issued != given
            {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid grant: redirect_uri does not match",
                );
            }
            grant
        }
        // Refresh tokens are single-use: the one presented is gone once it is exchanged.
        Some("refresh_token") => {
            let token = text(&body, "refresh_token").unwrap_or_default();
            match inner.refresh_tokens.remove(token) {
                Some(grant) => grant,
                None => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "Invalid grant: refresh token is invalid",
                    );
                }
            }
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "The fake GHL issues tokens for authorization_code and refresh_token",
            );
        }
    };
    let (access, refresh) = inner.issue_tokens(&grant, now, true);
    let mut answer = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": inner.access_token_lifetime.as_secs(),
        "refresh_token": refresh,
        "scope": FakeGhl::SCOPES,
        "companyId": grant.bearer.company(),
        "userId": grant.user_id,
    });
    match &grant.bearer {
        Bearer::Location { location_id, .. } => {
            answer["userType"] = json!("Location");
            answer["locationId"] = json!(location_id);
        }
        Bearer::Company { .. } => {
            answer["userType"] = json!("Company");
            answer["isBulkInstallation"] = json!(false);
            answer["approvedLocations"] = json!([]);
        }
    }
    Reply::ok(answer)
}

fn location_token(
    inner: &mut Inner,
    call: &Call,
    bearer: &Bearer,
    now: Instant,
) -> Result<Reply, Reply> {
    let Bearer::Company { company_id } = bearer else {
        return Err(Reply::error(
            StatusCode::UNAUTHORIZED,
            "This authClass type is not allowed to access this scope. An agency (Company) \
             token is needed.",
        ));
    };
    let body = body_object(call);
    let (requested_company, location_id) = (
        text(&body, "companyId").unwrap_or_default(),
        text(&body, "locationId").unwrap_or_default(),
    );
    let location_company = inner
        .location_companies
        .get(location_id)
        .cloned()
        .unwrap_or_else(|| company_id.clone());
    if requested_company != company_id || location_company != *company_id {
        return Err(Reply::error(
            StatusCode::FORBIDDEN,
            "The token does not have access to this location.",
        ));
    }
    inner
        .location_companies
        .insert(location_id.to_owned(), company_id.clone());
    let grant = Grant {
        bearer: Bearer::Location {
            location_id: location_id.to_owned(),
            company_id: company_id.clone(),
        },
        user_id: FakeGhl::INSTALLER_USER_ID.to_owned(),
        redirect_uri: None,
    };
    let (access, _) = inner.issue_tokens(&grant, now, false);
    Ok(Reply::ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": inner.access_token_lifetime.as_secs(),
        "scope": FakeGhl::SCOPES,
        "locationId": location_id,
        "userId": FakeGhl::INSTALLER_USER_ID,
        "appId": FakeGhl::APP_ID,
        "versionId": FakeGhl::APP_ID,
    })))
}
