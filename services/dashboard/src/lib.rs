//! The dashboard: whatsnap's web pages, served by the gateway under `/app` from the one binary
//! (templates compiled in, assets embedded), made to sit inside GHL as a custom page or custom
//! menu link. A GHL user is signed in by GHL's own user context (see [`sso`]); anyone else signs
//! in with an API token. The pages read and act through the services' gRPC APIs, and every page
//! and action is checked against the viewer's locations on the server first ([`signin`]).

pub mod signin;
/// GHL's single sign-on: the user context GHL gives pages inside it (in `whatsnap-ghl`).
pub use whatsnap_ghl::sso;

mod accounts;
mod alerts;
mod assignment;
mod contacts;
mod csrf;
mod insights;
mod pages;
mod qr;
mod scoped;
mod svg;

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use whatsnap_auth::Transport as Channel;
use whatsnap_secrets::SecretKey;

pub use signin::{Scope, Viewer};
pub use sso::SharedSecret;

/// What the dashboard needs to know about API tokens to sign someone in with one.
#[async_trait]
pub trait TokenSignIn: Send + Sync {
    /// The viewer an API token stands for, when it is valid (known, not revoked, not expired).
    async fn viewer(&self, token: &str) -> Option<Viewer>;
}

/// How the dashboard is set up.
#[derive(Clone)]
pub struct DashboardConfig {
    /// The GHL app's Shared Secret: opens the user context GHL gives pages inside it. Without
    /// it, only API tokens sign in.
    pub shared_secret: Option<SharedSecret>,
    /// Seals the sign-in cookie.
    pub cookie_key: SecretKey,
    /// Whether the cookie is `Secure; SameSite=None` (served over HTTPS, inside GHL's iframe);
    /// off only for plain-HTTP local runs.
    pub secure_cookies: bool,
    /// Signs in API token holders; none: the token form says tokens are not enabled.
    pub tokens: Option<Arc<dyn TokenSignIn>>,
    /// Ends the pages' live streams (server-sent events) when cancelled, so that they do not
    /// hold up a graceful stop.
    pub shutdown: CancellationToken,
}

/// The dashboard's pages, over the services' gRPC APIs.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

struct Inner {
    config: DashboardConfig,
    /// The services' gRPC APIs, as the gateway's own gRPC server answers them.
    services: Channel,
    /// The credential the dashboard calls the services with; it checks the viewer's scope
    /// itself before every call.
    service_token: Option<String>,
}

impl Dashboard {
    pub fn new(config: DashboardConfig, services: Channel, service_token: Option<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                services,
                service_token,
            }),
        }
    }

    /// A request to a service, carrying the dashboard's credential.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.inner.service_token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

/// The dashboard's routes, under `/app`.
pub fn routes(dashboard: Dashboard) -> Router {
    Router::new()
        .route("/app", get(pages::home))
        .route("/app/", get(pages::home))
        .route("/app/sso", post(pages::sso))
        .route("/app/signin", post(pages::token_signin))
        .route("/app/signout", get(pages::signout))
        .route("/app/install", get(pages::install))
        .route("/app/assets/{name}", get(pages::asset))
        .merge(accounts::routes())
        .merge(insight_routes())
        .with_state(dashboard)
}

/// The assignment, contacts, tags, insights and alerts pages.
fn insight_routes() -> Router<Dashboard> {
    Router::new()
        .route("/app/assignment", get(assignment::page))
        .route("/app/assignment/editor", post(assignment::editor))
        .route("/app/assignment/simulate", post(assignment::simulate))
        .route("/app/assignment/rules", post(assignment::save))
        .route(
            "/app/assignment/availability",
            post(assignment::availability),
        )
        .route("/app/assignment.js", get(assignment::script))
        .route("/app/contacts", get(contacts::search))
        .route("/app/contact", get(contacts::contact))
        .route("/app/contact/move", post(contacts::move_contact))
        .route("/app/tags", get(contacts::tags))
        .route("/app/insights", get(insights::page))
        .route("/app/alerts", get(alerts::page))
        .route("/app/alerts/retry", post(alerts::retry))
}
