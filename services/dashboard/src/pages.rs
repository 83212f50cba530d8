//! The pages and actions. Each handler first finds the viewer (or sends them to sign in), then
//! checks the location it touches against their scope, then calls the services.

use askama::Template;
use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;
use tracing::{info, warn};
use whatsnap_proto::session::v1 as session;

use crate::signin::{Scope, Viewer, clear_cookie};
use crate::{Dashboard, sso};

pub(crate) fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(err) => {
            warn!(error = %err, "a dashboard page did not render");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "problem.html")]
struct Problem<'a> {
    title: &'a str,
    detail: &'a str,
}

pub(crate) fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    (status, render(&Problem { title, detail })).into_response()
}

/// A location outside the viewer's scope: the same answer whether it exists or not.
pub(crate) fn forbidden() -> Response {
    problem(
        StatusCode::FORBIDDEN,
        "Not yours to see",
        "You are not signed in to this location.",
    )
}

/// The signed-in viewer, if any.
pub(crate) fn viewer(dashboard: &Dashboard, headers: &HeaderMap) -> Option<Viewer> {
    Viewer::from_request(headers, &dashboard.inner.config.cookie_key, Utc::now())
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SignIn {
    error: Option<String>,
}

/// `GET /app`: the dashboard for a signed-in viewer, the sign-in page for anyone else.
pub async fn home(State(dashboard): State<Dashboard>, headers: HeaderMap) -> Response {
    match viewer(&dashboard, &headers) {
        Some(_) => Redirect::to("/app/accounts").into_response(),
        None => render(&SignIn { error: None }),
    }
}

#[derive(Deserialize)]
pub struct SsoBody {
    payload: String,
}

/// `POST /app/sso`: the user context GHL gave the page, encrypted with the app's Shared Secret.
pub async fn sso(State(dashboard): State<Dashboard>, Json(body): Json<SsoBody>) -> Response {
    let config = &dashboard.inner.config;
    let refuse = |status: StatusCode, error: String| {
        (status, Json(serde_json::json!({ "error": error }))).into_response()
    };
    let Some(secret) = &config.shared_secret else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this deployment has no GHL Shared Secret (--ghl-shared-secret): sign in with an API token"
                .into(),
        );
    };
    let context = match sso::open(secret, &body.payload) {
        Ok(context) => context,
        Err(err) => {
            info!(error = %err, "a GHL sign-in was refused");
            return refuse(StatusCode::UNAUTHORIZED, err.to_string());
        }
    };
    match Viewer::from_ghl(&context, Utc::now()) {
        Ok(viewer) => {
            info!(user_id = %viewer.id, scope = ?viewer.scope, "signed in from GHL");
            (
                [(
                    header::SET_COOKIE,
                    viewer.set_cookie(&config.cookie_key, config.secure_cookies),
                )],
                Json(serde_json::json!({ "redirect": "/app/accounts" })),
            )
                .into_response()
        }
        Err(reason) => refuse(StatusCode::FORBIDDEN, reason),
    }
}

#[derive(Deserialize)]
pub struct TokenForm {
    token: String,
}

/// `POST /app/signin`: an API token, for those outside GHL.
pub async fn token_signin(
    State(dashboard): State<Dashboard>,
    Form(form): Form<TokenForm>,
) -> Response {
    let config = &dashboard.inner.config;
    let refuse = |error: &str| {
        (
            StatusCode::UNAUTHORIZED,
            render(&SignIn {
                error: Some(error.to_owned()),
            }),
        )
            .into_response()
    };
    let Some(tokens) = &config.tokens else {
        return refuse("API tokens do not sign in on this deployment");
    };
    match tokens.viewer(form.token.trim()).await {
        Some(viewer) => {
            info!(token_id = %viewer.id, scope = ?viewer.scope, "signed in with an API token");
            (
                [(
                    header::SET_COOKIE,
                    viewer.set_cookie(&config.cookie_key, config.secure_cookies),
                )],
                Redirect::to("/app/accounts"),
            )
                .into_response()
        }
        None => refuse("that token is not valid: it is unknown, revoked or expired"),
    }
}

/// `GET /app/signout`.
pub async fn signout() -> Response {
    ([(header::SET_COOKIE, clear_cookie())], Redirect::to("/app")).into_response()
}

/// An account as the accounts page shows it.
struct AccountRow {
    location: String,
    name: String,
    platform: &'static str,
    tag: String,
    number: String,
    status: String,
    status_text: String,
    reason: String,
}

impl From<session::Account> for AccountRow {
    fn from(account: session::Account) -> Self {
        let platform = match session::AccountKind::try_from(account.kind) {
            Ok(session::AccountKind::Whatsapp) => "WhatsApp",
            Ok(session::AccountKind::AndroidSms) => "SMS (Android)",
            Ok(session::AccountKind::Imessage) => "iMessage (Mac)",
            Ok(session::AccountKind::Twilio) => "Twilio SMS",
            _ => "Unknown",
        };
        let status_text = match account.status.as_str() {
            "connected" => "Connected",
            "linking" => "Waiting to link",
            "disconnected" => "Disconnected",
            "logged_out" => "Logged out",
            "added" => "Not linked yet",
            other => other,
        }
        .to_owned();
        Self {
            location: account.location_id,
            name: account.name,
            platform,
            tag: account.tag,
            number: account.phone_number,
            status: account.status,
            status_text,
            reason: account.status_reason,
        }
    }
}

#[derive(Template)]
#[template(path = "accounts.html")]
struct AccountsPage {
    section: &'static str,
    viewer_name: String,
    locations: Vec<String>,
    selected: Option<String>,
    show_location: bool,
    accounts: Vec<AccountRow>,
}

#[derive(Deserialize)]
pub struct LocationQuery {
    #[serde(default)]
    location: Option<String>,
}

/// `GET /app/accounts[?location=…]`: every account the viewer may see, with its live status.
pub async fn accounts(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<LocationQuery>,
) -> Response {
    let Some(viewer) = viewer(&dashboard, &headers) else {
        return Redirect::to("/app").into_response();
    };
    let selected = query.location.filter(|l| !l.trim().is_empty());
    if let Some(location) = &selected
        && !viewer.scope.allows(location)
    {
        return forbidden();
    }
    let asked: Vec<String> = match (&selected, &viewer.scope) {
        (Some(location), _) => vec![location.clone()],
        (None, Scope::Locations { ids }) => ids.clone(),
        (None, Scope::All) => vec![String::new()],
    };
    let mut client = session::session_service_client::SessionServiceClient::new(
        dashboard.inner.services.clone(),
    );
    let mut accounts = Vec::new();
    for location in asked {
        match client
            .list_accounts(dashboard.request(session::ListAccountsRequest {
                location_id: location,
            }))
            .await
        {
            Ok(listed) => accounts.extend(listed.into_inner().accounts),
            Err(status) => {
                warn!(code = ?status.code(), "the accounts page cannot list accounts");
                return problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Accounts are not available",
                    "whatsnap cannot reach its accounts right now; try again in a moment.",
                );
            }
        }
    }
    // The services answer for what was asked; the viewer's scope is checked once more here, so
    // an answer wider than the scope never reaches the page.
    accounts.retain(|account| viewer.scope.allows(&account.location_id));
    let mut locations: Vec<String> = match &viewer.scope {
        Scope::Locations { ids } => ids.clone(),
        Scope::All => accounts.iter().map(|a| a.location_id.clone()).collect(),
    };
    locations.sort();
    locations.dedup();
    render(&AccountsPage {
        section: "accounts",
        viewer_name: viewer.name,
        show_location: locations.len() > 1 && selected.is_none(),
        locations,
        selected,
        accounts: accounts.into_iter().map(AccountRow::from).collect(),
    })
}

/// `GET /app/assets/{name}`: the stylesheet and scripts, compiled into the binary.
pub async fn asset(Path(name): Path<String>) -> Response {
    let (content_type, body) = match name.as_str() {
        "style.css" => (
            "text/css; charset=utf-8",
            include_str!("../assets/style.css"),
        ),
        "signin.js" => (
            "text/javascript; charset=utf-8",
            include_str!("../assets/signin.js"),
        ),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}
