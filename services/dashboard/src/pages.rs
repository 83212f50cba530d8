//! The pages and actions. Each handler first finds the viewer (or sends them to sign in), then
//! checks the location it touches against their scope, then calls the services.

use askama::Template;
use axum::Json;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;
use tracing::{info, warn};
use whatsnap_proto::ghlsync::v1 as ghlsync;

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
        "accounts.js" => (
            "text/javascript; charset=utf-8",
            include_str!("../assets/accounts.js"),
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

/// `GET /app/install`: an agency admin installs whatsnap on a GHL location. GHL's page for
/// choosing it is opened with a state issued for this viewer, which the redirect must bring back.
pub async fn install(State(dashboard): State<Dashboard>, headers: HeaderMap) -> Response {
    let Some(viewer) = viewer(&dashboard, &headers) else {
        return Redirect::to("/app").into_response();
    };
    if viewer.scope != Scope::All || !viewer.can_write {
        return problem(
            StatusCode::FORBIDDEN,
            "Only an agency admin installs",
            "Installing whatsnap on a location needs an agency admin of every location.",
        );
    }
    let mut client = ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(
        dashboard.inner.services.clone(),
    );
    let started = client
        .begin_o_auth(dashboard.request(ghlsync::BeginOAuthRequest {
            started_by: format!("dashboard viewer {}", viewer.id),
        }))
        .await;
    match started {
        Ok(started) => Redirect::to(&started.into_inner().authorize_url).into_response(),
        Err(status) => {
            warn!(code = ?status.code(), "an install could not start");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "The install cannot start",
                status.message(),
            )
        }
    }
}
