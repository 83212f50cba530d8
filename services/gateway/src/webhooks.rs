//! Provider webhooks at the public edge. `POST /webhooks/twilio/{location}/{account}/inbound`
//! receives what a Twilio number is sent: the session service checks the signature with the
//! account's own Auth Token against the URL Twilio requested, and only then does the message
//! become a command to it. A refused webhook changes nothing.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tonic::Code;
use tracing::{debug, info, warn};
use whatsnap_auth::AuthedChannel as Channel;
use whatsnap_ghl::signature::WebhookKeys;
use whatsnap_ghl::webhook::{AppIdentity, Delivery};
use whatsnap_proto::contacts::v1 as contacts;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::session::v1 as session;
use whatsnap_twilio::webhook;

use crate::replay::Verdict;

/// The most a webhook body may weigh; Twilio's are a few kilobytes.
pub const MAX_WEBHOOK_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct Webhooks {
    /// The scheme and host Twilio is configured to call (e.g. `https://whatsnap.example.com`);
    /// without it, `http://` and the request's Host header.
    pub public_url: Option<String>,
    /// The session service, where messages are recorded.
    pub session: Option<Channel>,
    /// The keys GHL signs its webhooks with.
    pub ghl_keys: WebhookKeys,
    /// The contacts service, where GHL's tag changes go.
    pub contacts: Option<Channel>,
    /// The ghl-sync service, which records installs.
    pub ghl_sync: Option<Channel>,
    /// Refuses replayed GHL webhooks.
    pub replay: crate::ReplayGuard,
    /// Which GHL app and conversation provider are whatsnap's: webhooks for others are ignored.
    pub ghl_app: AppIdentity,
    /// The files received with messages, served to GHL at `/media/<id>`.
    pub media: Option<whatsnap_media::MediaStore>,
}

/// The acknowledgement of a webhook that is not whatsnap's: 200, so that GHL does not retry
/// it, and nothing recorded.
fn not_ours(route: &str, why: String) -> Response {
    debug!(route, reason = %why, "GHL webhook ignored");
    (StatusCode::OK, format!("ignored: {why}\n")).into_response()
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Response {
    let reason = reason.into();
    warn!(status = status.as_u16(), %reason, "webhook refused");
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{reason}\n"),
    )
        .into_response()
}

/// Who sent a webhook, which decides how "not now" is said so that the sender tries again.
#[derive(Clone, Copy, Debug)]
enum Sender {
    /// GHL retries only a 429 under its older policy, every non-2xx under the newer one
    /// (`ghl-api.md` §6.2): 429 is retried under both.
    Ghl,
    /// Twilio moves to the number's fallback URL, or retries, on a 5xx.
    Twilio,
    /// A messaging engine (Evolution API retries a 5xx, never a 400, 401, 403, 404 or 422).
    Engine,
}

/// How long a sender is asked to wait before trying again.
const RETRY_AFTER_SECS: u64 = 30;

impl Sender {
    /// The refusal of a webhook that whatsnap cannot record now (a service or the event store
    /// is unavailable): nothing was recorded, and the sender is asked to send it again.
    fn try_again_later(self, reason: impl Into<String>) -> Response {
        let status = match self {
            Sender::Ghl => StatusCode::TOO_MANY_REQUESTS,
            Sender::Twilio | Sender::Engine => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut response = refuse(status, reason);
        response.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(RETRY_AFTER_SECS),
        );
        response
    }

    /// The refusal for a service's gRPC error: a final 4xx for what a retry cannot fix, the
    /// sender's "try again" for the rest.
    fn refuse_status(self, status: &tonic::Status) -> Response {
        match status.code() {
            Code::InvalidArgument => refuse(StatusCode::BAD_REQUEST, status.message()),
            Code::NotFound => refuse(StatusCode::NOT_FOUND, status.message()),
            Code::FailedPrecondition => refuse(StatusCode::GONE, status.message()),
            Code::Unauthenticated => refuse(StatusCode::UNAUTHORIZED, status.message()),
            _ => self.try_again_later(status.message()),
        }
    }
}

/// Empty TwiML: received, nothing to reply.
fn accepted() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml")],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>",
    )
        .into_response()
}

/// Checks a Twilio webhook for an account: a form, for a Twilio account of the location,
/// signed with that account's Auth Token over the URL Twilio requested, and not for another
/// Twilio account (`AccountSid`). The session service, which keeps the Auth Token, checks the
/// signature: the gateway never holds a tenant's credentials. Gives the parameters, or the
/// refusal to send.
async fn verified_twilio_form(
    hooks: &Webhooks,
    location: &str,
    account: &str,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, Response> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let parsed = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body);
    let (true, Ok(params)) = (is_form, parsed) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the body is not a form (application/x-www-form-urlencoded)",
        ));
    };
    let base = match &hooks.public_url {
        Some(public) => public.trim_end_matches('/').to_owned(),
        None => match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
            Some(host) => format!("http://{host}"),
            None => return Err(refuse(StatusCode::BAD_REQUEST, "no Host header")),
        },
    };
    let url = format!(
        "{base}{}",
        uri.path_and_query().map_or(uri.path(), |pq| pq.as_str())
    );
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let channel = reach(&hooks.session, "session", Sender::Twilio)?;
    let mut request = tonic::Request::new(session::VerifyTwilioWebhookRequest {
        location_id: location.to_owned(),
        account_id: account.to_owned(),
        url,
        params: params
            .iter()
            .map(|(name, value)| session::FormParam {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        signature,
    });
    whatsnap_telemetry::inject(&mut request);
    let verdict = session::session_service_client::SessionServiceClient::new(channel)
        .verify_twilio_webhook(request)
        .await
        .map_err(|status| match status.code() {
            // A location or account id that is not one (the URL is not whatsnap's) is as
            // unknown as an account that does not exist.
            Code::NotFound | Code::InvalidArgument => refuse(
                StatusCode::NOT_FOUND,
                format!("no Twilio account {account} in location {location}"),
            ),
            _ => Sender::Twilio.try_again_later(status.message()),
        })?
        .into_inner();
    if !verdict.valid {
        return Err(refuse(StatusCode::FORBIDDEN, verdict.reason));
    }
    Ok(params)
}

async fn twilio_inbound(
    State(hooks): State<Webhooks>,
    Path((location, account)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params =
        match verified_twilio_form(&hooks, &location, &account, &uri, &headers, &body).await {
            Ok(verified) => verified,
            Err(refused) => return refused,
        };
    let message = match webhook::parse_inbound(&params) {
        Ok(message) => message,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let channel = match reach(&hooks.session, "session", Sender::Twilio) {
        Ok(channel) => channel,
        Err(refused) => return refused,
    };
    let mut request = tonic::Request::new(session::RecordInboundMessageRequest {
        location_id: location,
        account_id: account,
        provider_message_id: message.message_sid.clone(),
        from: message.from,
        body: message.body,
        sender_name: message.profile_name.unwrap_or_default(),
        attachments: message
            .media
            .into_iter()
            .map(|m| session::Attachment {
                url: m.url,
                content_type: m.content_type.unwrap_or_default(),
            })
            .collect(),
    });
    whatsnap_telemetry::inject(&mut request);
    match session::session_service_client::SessionServiceClient::new(channel)
        .record_inbound_message(request)
        .await
    {
        Ok(recorded) => {
            let recorded = recorded.into_inner();
            info!(message_sid = %message.message_sid, message_id = %recorded.message_id, duplicate = recorded.duplicate, "twilio message received");
            accepted()
        }
        Err(status) => Sender::Twilio.refuse_status(&status),
    }
}

/// `POST /webhooks/twilio/{location}/{account}/status?message=<id>`: Twilio's StatusCallback for
/// a reply whatsnap sent, signed like every Twilio webhook. Final states become the message's
/// status, which ghl-sync reports to GHL.
async fn twilio_status(
    State(hooks): State<Webhooks>,
    Path((location, account)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params =
        match verified_twilio_form(&hooks, &location, &account, &uri, &headers, &body).await {
            Ok(verified) => verified,
            Err(refused) => return refused,
        };
    let update = match webhook::parse_status(&params) {
        Ok(update) => update,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(message_id) = query
        .iter()
        .find(|(k, _)| k == "message")
        .map(|(_, v)| v.clone())
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the status callback URL has no message parameter",
        );
    };
    let channel = match reach(&hooks.session, "session", Sender::Twilio) {
        Ok(channel) => channel,
        Err(refused) => return refused,
    };
    let mut request = tonic::Request::new(session::RecordDeliveryStatusRequest {
        location_id: location,
        account_id: account,
        message_id,
        provider_message_id: update.message_sid.clone(),
        status: update.status.as_str().to_owned(),
        error_code: update.error_code.unwrap_or(0),
    });
    whatsnap_telemetry::inject(&mut request);
    match session::session_service_client::SessionServiceClient::new(channel)
        .record_delivery_status(request)
        .await
    {
        Ok(recorded) => {
            info!(message_sid = %update.message_sid, status = %update.status, changed = recorded.get_ref().changed, "twilio status received");
            accepted()
        }
        Err(status) => Sender::Twilio.refuse_status(&status),
    }
}

/// The channel to a service, or the refusal of `sender`'s webhook when this gateway cannot
/// reach it.
#[allow(clippy::result_large_err)] // the refusal is the response, built once per request
fn reach(channel: &Option<Channel>, service: &str, sender: Sender) -> Result<Channel, Response> {
    channel.clone().ok_or_else(|| {
        sender.try_again_later(format!(
            "the {service} service is not reachable from this gateway"
        ))
    })
}

/// The channel to a service for a browser's request (the OAuth pages), or a 503.
#[allow(clippy::result_large_err)] // the refusal is the response, built once per request
fn reach_for_browser(channel: &Option<Channel>, service: &str) -> Result<Channel, Response> {
    channel.clone().ok_or_else(|| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the {service} service is not reachable from this gateway"),
        )
    })
}

fn grpc_to_http(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition => StatusCode::GONE,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A GHL request's JSON body, once its signature (`X-GHL-Signature`, else the legacy
/// `X-WH-Signature`) checks out over the raw bytes: 401 otherwise, 400 for a body that is not
/// JSON.
#[allow(clippy::result_large_err)] // the refusal is the response, built once per request
fn verified_ghl_json(
    hooks: &Webhooks,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Value, Response> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    hooks
        .ghl_keys
        .verify(header("x-ghl-signature"), header("x-wh-signature"), body)
        .map_err(|e| refuse(StatusCode::UNAUTHORIZED, e.to_string()))?;
    serde_json::from_slice(body)
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "the body is not JSON"))
}

/// `POST /webhooks/ghl/delivery`: the Conversation Provider's Delivery URL. GHL posts each
/// reply a user or workflow sends (ProviderOutboundMessage), signed with `X-GHL-Signature`
/// over the raw body. The reply is recorded once per GHL messageId; routing, sending and the
/// status report to GHL follow from the log. GHL retries only a 429, so that is the answer
/// when whatsnap cannot record it now.
async fn ghl_delivery(State(hooks): State<Webhooks>, headers: HeaderMap, body: Bytes) -> Response {
    let payload = match verified_ghl_json(&hooks, &headers, &body) {
        Ok(payload) => payload,
        Err(refused) => return refused,
    };
    let reply = match whatsnap_ghl::webhook::delivery_of(&hooks.ghl_app, &payload) {
        Ok(Delivery::Reply(reply)) => reply,
        Ok(Delivery::Ignored(why)) => return not_ours("delivery", why),
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let channel = match reach(&hooks.session, "session", Sender::Ghl) {
        Ok(channel) => channel,
        Err(refused) => return refused,
    };
    let ghl_message_id = reply.message_id.clone();
    let mut request = tonic::Request::new(session::RequestOutboundMessageRequest {
        location_id: reply.location_id,
        ghl_message_id: reply.message_id,
        ghl_contact_id: reply.contact_id,
        phone: reply.phone,
        body: reply.message,
        attachment_urls: reply.attachment_urls,
        ghl_user_id: reply.user_id,
    });
    whatsnap_telemetry::inject(&mut request);
    match session::session_service_client::SessionServiceClient::new(channel)
        .request_outbound_message(request)
        .await
    {
        Ok(recorded) => {
            let recorded = recorded.into_inner();
            info!(%ghl_message_id, message_id = %recorded.message_id, duplicate = recorded.duplicate, "reply from GHL recorded");
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({"messageId": recorded.message_id, "duplicate": recorded.duplicate}).to_string(),
            )
                .into_response()
        }
        Err(status) if status.code() == Code::InvalidArgument => {
            refuse(StatusCode::BAD_REQUEST, status.message().to_owned())
        }
        // GHL's messageId is the idempotency key: the retry is recorded once.
        Err(status) => Sender::Ghl.try_again_later(status.message()),
    }
}

/// `GET /oauth/start`: installs start in the dashboard, where an agency admin is signed in and
/// the install's state is issued to them.
async fn oauth_start() -> Response {
    axum::response::Redirect::to("/app/install").into_response()
}

#[derive(serde::Deserialize)]
struct OAuthCallback {
    code: Option<String>,
    /// The state whatsnap gave the install, handed back by GHL.
    state: Option<String>,
    error: Option<String>,
}

/// `GET /oauth/callback?code=…`: GHL's redirect after an install. The code becomes the
/// location's tokens, sealed in ghl-sync.
async fn oauth_callback(
    State(hooks): State<Webhooks>,
    axum::extract::Query(callback): axum::extract::Query<OAuthCallback>,
) -> Response {
    let Some(code) = callback.code.filter(|c| !c.trim().is_empty()) else {
        let why = callback.error.unwrap_or_else(|| "no code".into());
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "GHL's redirect carried no authorization code ({why}): start the install again"
            ),
        );
    };
    let channel = match reach_for_browser(&hooks.ghl_sync, "ghl-sync") {
        Ok(channel) => channel,
        Err(refused) => return refused,
    };
    let mut request = tonic::Request::new(ghlsync::CompleteOAuthRequest {
        code,
        state: callback.state.unwrap_or_default(),
    });
    whatsnap_telemetry::inject(&mut request);
    match ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(channel)
        .complete_o_auth(request)
        .await
    {
        Ok(connected) => {
            let connected = connected.into_inner();
            let text = match connected.location_id.as_str() {
                "" => {
                    info!(company_id = %connected.company_id, "GHL agency install completed");
                    format!(
                        "whatsnap is connected to GHL agency {}: each location connects as it installs the app. You can close this page.\n",
                        connected.company_id
                    )
                }
                location => {
                    info!(%location, "GHL install completed");
                    format!(
                        "whatsnap is connected to GHL location {location}. You can close this page.\n"
                    )
                }
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                text,
            )
                .into_response()
        }
        Err(status) => refuse(grpc_to_http(status.code()), status.message().to_owned()),
    }
}

/// `POST /webhooks/ghl`: GHL's app webhooks, signed over the raw body. A ContactTagUpdate
/// carries the contact's whole tag list; its changes re-route the contact's next reply. A
/// ContactCreate or ContactUpdate of a linked contact whose owner or source changed in GHL is
/// recorded for assignment. What whatsnap will never act on — including a webhook for another
/// app or conversation provider — is acknowledged with the reason; one without a readable
/// `timestamp` is refused (400), as one outside the window is (401). What it cannot record now
/// (a service or the store is unavailable) is answered 429 with Retry-After, which GHL retries
/// under both of its policies, and its webhookId is not counted as seen, so the retry is
/// acted on.
async fn ghl_webhook(State(hooks): State<Webhooks>, headers: HeaderMap, body: Bytes) -> Response {
    let payload = match verified_ghl_json(&hooks, &headers, &body) {
        Ok(payload) => payload,
        Err(refused) => return refused,
    };
    if let Some(why) = hooks.ghl_app.foreign(&payload) {
        return not_ours("app", why);
    }
    let text = |field: &str| {
        payload
            .get(field)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    };
    let webhook_id = Some(text("webhookId")).filter(|id| !id.is_empty());
    let claim = match hooks
        .replay
        .check(webhook_id, payload.get("timestamp"))
        .await
    {
        Verdict::Fresh(claim) => claim,
        Verdict::Duplicate => {
            info!(
                webhook_id = text("webhookId"),
                "GHL webhook seen before; ignored"
            );
            return (StatusCode::OK, "duplicate: already handled\n").into_response();
        }
        Verdict::InFlight => {
            return Sender::Ghl.try_again_later("the same webhook is being handled now");
        }
        Verdict::Stale(why) => return refuse(StatusCode::UNAUTHORIZED, why),
        Verdict::Unstamped(why) => return refuse(StatusCode::BAD_REQUEST, why),
        Verdict::Unavailable(why) => return Sender::Ghl.try_again_later(why),
    };
    let response = ghl_event(&hooks, &payload).await;
    // Only an acknowledged webhook is seen; a refused one is not, so that GHL's retry of it
    // is acted on.
    match claim {
        Some(claim) if response.status().is_success() => claim.handled().await,
        Some(claim) => claim.release().await,
        None => {}
    }
    response
}

/// Acts on one verified, fresh GHL webhook.
async fn ghl_event(hooks: &Webhooks, payload: &serde_json::Value) -> Response {
    let text = |field: &str| {
        payload
            .get(field)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    };
    match text("type") {
        "ContactTagUpdate" => {
            let channel = match reach(&hooks.contacts, "contacts", Sender::Ghl) {
                Ok(channel) => channel,
                Err(refused) => return refused,
            };
            let tags = payload
                .get("tags")
                .and_then(|t| t.as_array())
                .map(|tags| {
                    tags.iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let mut request = tonic::Request::new(contacts::ApplyGhlTagsRequest {
                location_id: text("locationId").to_owned(),
                phone: text("phone").to_owned(),
                tags,
            });
            whatsnap_telemetry::inject(&mut request);
            match contacts::contacts_service_client::ContactsServiceClient::new(channel)
                .apply_ghl_tags(request)
                .await
            {
                Ok(contact) => {
                    info!(contact_id = %contact.get_ref().contact_id, "tags updated from GHL");
                    // The tag update carries the owner too. Applying the same tags again on
                    // GHL's retry changes nothing.
                    if hooks.ghl_sync.is_some()
                        && let Err(refused) = record_contact(hooks, payload).await
                    {
                        return refused;
                    }
                    (StatusCode::OK, "tags applied\n").into_response()
                }
                Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => {
                    info!(reason = %status.message(), "GHL tag update ignored");
                    (StatusCode::OK, format!("ignored: {}\n", status.message())).into_response()
                }
                Err(status) => Sender::Ghl.try_again_later(status.message()),
            }
        }
        kind @ ("ContactCreate" | "ContactUpdate") => match record_contact(hooks, payload).await {
            Ok(Some(recorded)) if recorded.owner_changed || recorded.source_changed => {
                info!(
                    kind,
                    ghl_contact_id = text("id"),
                    owner_changed = recorded.owner_changed,
                    source_changed = recorded.source_changed,
                    "contact changed in GHL recorded"
                );
                let what = match (recorded.owner_changed, recorded.source_changed) {
                    (true, true) => "owner and source change",
                    (true, false) => "owner change",
                    _ => "source change",
                };
                (StatusCode::OK, format!("{what} recorded\n")).into_response()
            }
            Ok(Some(_)) => (StatusCode::OK, "no owner change\n").into_response(),
            Ok(None) => {
                (StatusCode::OK, "ignored: not a contact whatsnap linked\n").into_response()
            }
            Err(refused) => refused,
        },
        kind @ ("INSTALL" | "UNINSTALL") => {
            if text("locationId").is_empty() {
                return (
                    StatusCode::OK,
                    "ignored: an agency-level install; locations are recorded as they install\n",
                )
                    .into_response();
            }
            let channel = match reach(&hooks.ghl_sync, "ghl-sync", Sender::Ghl) {
                Ok(channel) => channel,
                Err(refused) => return refused,
            };
            let mut request = tonic::Request::new(ghlsync::RecordInstallRequest {
                location_id: text("locationId").to_owned(),
                installed: kind == "INSTALL",
                company_id: text("companyId").to_owned(),
                app_id: text("appId").to_owned(),
            });
            whatsnap_telemetry::inject(&mut request);
            match ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(channel)
                .record_install(request)
                .await
            {
                Ok(recorded) => {
                    info!(
                        location_id = text("locationId"),
                        kind,
                        changed = recorded.get_ref().changed,
                        "GHL install recorded"
                    );
                    (
                        StatusCode::OK,
                        format!("{} recorded\n", kind.to_lowercase()),
                    )
                        .into_response()
                }
                Err(status) if status.code() == Code::InvalidArgument => {
                    (StatusCode::OK, format!("ignored: {}\n", status.message())).into_response()
                }
                Err(status) => Sender::Ghl.try_again_later(status.message()),
            }
        }
        other => (
            StatusCode::OK,
            format!("ignored: whatsnap does not act on {other:?} webhooks\n"),
        )
            .into_response(),
    }
}

/// Hands a contact webhook's owner (`assignedTo`) and `source` to ghl-sync, which records each
/// when it differs from what whatsnap knew GHL to show. `Some(what changed)`, `None` for a
/// contact whatsnap has not linked, or the response that asks GHL to try again.
async fn record_contact(
    hooks: &Webhooks,
    payload: &serde_json::Value,
) -> Result<Option<ghlsync::RecordContactWebhookResponse>, Response> {
    let text = |field: &str| {
        payload
            .get(field)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let channel = reach(&hooks.ghl_sync, "ghl-sync", Sender::Ghl)?;
    let mut request = tonic::Request::new(ghlsync::RecordContactWebhookRequest {
        location_id: text("locationId"),
        phone: text("phone"),
        ghl_contact_id: text("id"),
        assigned_to: text("assignedTo"),
        source: text("source"),
    });
    whatsnap_telemetry::inject(&mut request);
    match ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(channel)
        .record_contact_webhook(request)
        .await
    {
        Ok(recorded) => Ok(Some(recorded.into_inner())),
        Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => {
            info!(reason = %status.message(), "GHL contact owner not recorded");
            Ok(None)
        }
        Err(status) => Err(Sender::Ghl.try_again_later(status.message())),
    }
}

/// `POST /webhooks/{engine}/{location}/{account}`: what a messaging engine (e.g. Evolution API)
/// or a device (an Android phone, a Mac) reports for an account; `GET` on the same URL: the
/// platform checking the URL before it sends anything (Meta's `hub.challenge`). The gateway
/// knows no engine: the session service hands the request to the account's connector, which
/// checks its key or signature and reads it; a webhook for an account of another engine is a
/// 404, an unauthenticated one a 401, and nothing is recorded.
async fn connector_webhook(
    State(hooks): State<Webhooks>,
    Path((engine, location, account)): Path<(String, String, String)>,
    method: axum::http::Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let channel = match reach(&hooks.session, "session", Sender::Engine) {
        Ok(channel) => channel,
        Err(refused) => return refused,
    };
    let headers = headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let mut request = tonic::Request::new(session::ConnectorWebhookRequest {
        engine: engine.clone(),
        location_id: location,
        account_id: account,
        headers,
        body: body.to_vec(),
        query: query.unwrap_or_default(),
        method: method.as_str().to_owned(),
    });
    whatsnap_telemetry::inject(&mut request);
    match session::session_service_client::SessionServiceClient::new(channel)
        .max_encoding_message_size(MAX_ENGINE_WEBHOOK_BYTES)
        .record_connector_webhook(request)
        .await
    {
        Ok(recorded) if method == axum::http::Method::GET => {
            info!(%engine, "engine webhook URL checked");
            recorded.into_inner().reply.into_response()
        }
        Ok(recorded) => {
            let recorded = recorded.into_inner();
            info!(%engine, events = recorded.events, duplicates = recorded.duplicates, "engine webhook received");
            StatusCode::OK.into_response()
        }
        Err(status) => Sender::Engine.refuse_status(&status),
    }
}

/// The most an engine's webhook may weigh: Evolution sends a received file inline, as base64.
pub const MAX_ENGINE_WEBHOOK_BYTES: usize = 24 * 1024 * 1024;

/// `GET /media/{id}`: a file received with a message, for GHL to show. The id is random and
/// unguessable; anything else is a 404.
async fn media(State(hooks): State<Webhooks>, Path(id): Path<String>) -> Response {
    let (Some(store), Ok(id)) = (&hooks.media, uuid::Uuid::parse_str(&id)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match store.get(id).await {
        Ok(Some(file)) => {
            let mut response =
                ([(header::CONTENT_TYPE, file.content_type)], file.bytes).into_response();
            if let Some(name) = file.file_name.filter(|n| !n.contains('"') && n.is_ascii())
                && let Ok(value) =
                    header::HeaderValue::from_str(&format!("inline; filename=\"{name}\""))
            {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, value);
            }
            response
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(err) => {
            warn!(error = %err, "a file cannot be served");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// The webhook routes, with their body limits.
pub fn routes(hooks: Webhooks) -> Router {
    let engines = Router::new()
        .route(
            "/webhooks/{engine}/{location}/{account}",
            post(connector_webhook).get(connector_webhook),
        )
        .route("/media/{id}", axum::routing::get(media))
        .layer(DefaultBodyLimit::max(MAX_ENGINE_WEBHOOK_BYTES))
        .with_state(hooks.clone());
    Router::new()
        .route("/webhooks/ghl", post(ghl_webhook))
        .route("/webhooks/ghl/delivery", post(ghl_delivery))
        .route(
            "/webhooks/twilio/{location}/{account}/inbound",
            post(twilio_inbound),
        )
        .route(
            "/webhooks/twilio/{location}/{account}/status",
            post(twilio_status),
        )
        .route("/oauth/start", axum::routing::get(oauth_start))
        .route("/oauth/callback", axum::routing::get(oauth_callback))
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
        .with_state(hooks)
        .merge(engines)
        .route_layer(axum::middleware::from_fn(timed))
}

/// Records how long each webhook took to answer, by route and status class, on `/metrics`.
async fn timed(
    path: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    whatsnap_telemetry::metrics::observe(
        "whatsnap_webhook_duration_seconds",
        "How long the gateway took to answer a webhook (or OAuth or media request), by route and status class.",
        vec![
            ("route", path.as_str().to_owned()),
            ("status", format!("{}xx", response.status().as_u16() / 100)),
        ],
        started.elapsed(),
    );
    response
}
