//! The account pages: the list with live status, Add Account (WhatsApp by QR, Twilio, an
//! Android phone or a Mac), linking, and each account's settings. Every handler checks the
//! location it touches against the viewer's scope before it calls a service; every action also
//! checks that the viewer may write and that the form came from this dashboard ([`crate::csrf`]).
//! An account of another location is answered as one that does not exist: 403 either way.

mod add;
mod live;
mod settings;

use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;
use tracing::warn;
use whatsnap_auth::Transport as Channel;
use whatsnap_proto::session::v1 as session;

use crate::pages::{forbidden, problem, render, viewer};
use crate::signin::{Scope, Viewer};
use crate::{Dashboard, csrf};

/// How long one live stream lasts before the browser opens the next (it does so by itself): a
/// stream never outlives a sign-in by long, and a restart is never held up by one.
const STREAM_LIFETIME: Duration = Duration::from_secs(300);

/// The account pages' routes.
pub fn routes() -> Router<Dashboard> {
    Router::new()
        .route("/app/accounts", get(list))
        .route("/app/accounts/events", get(live::list_events))
        .route("/app/accounts/new", get(add::choose))
        .route(
            "/app/accounts/new/whatsapp",
            get(add::whatsapp_form).post(add::add_whatsapp),
        )
        .route(
            "/app/accounts/new/twilio",
            get(add::twilio_form).post(add::add_twilio),
        )
        .route(
            "/app/accounts/new/device",
            get(add::device_form).post(add::add_device),
        )
        .route("/app/accounts/{id}", get(settings::page))
        .route("/app/accounts/{id}/link", get(add::link))
        .route("/app/accounts/{id}/events", get(live::account_events))
        .route(
            "/app/accounts/{id}/connect",
            axum::routing::post(settings::connect),
        )
        .route(
            "/app/accounts/{id}/engine",
            axum::routing::post(settings::engine),
        )
        .route(
            "/app/accounts/{id}/disconnect",
            axum::routing::post(settings::disconnect),
        )
        .route(
            "/app/accounts/{id}/pacing",
            axum::routing::post(settings::pacing),
        )
        .route(
            "/app/accounts/{id}/rename",
            axum::routing::post(settings::rename),
        )
        .route(
            "/app/accounts/{id}/credentials",
            axum::routing::post(settings::credentials),
        )
        .route(
            "/app/accounts/{id}/remove",
            get(settings::confirm_remove).post(settings::remove),
        )
}

fn sessions(
    dashboard: &Dashboard,
) -> session::session_service_client::SessionServiceClient<Channel> {
    session::session_service_client::SessionServiceClient::new(dashboard.inner.services.clone())
}

/// Why a page or an action is not served: the answer the viewer gets instead.
enum Refusal {
    /// Nobody is signed in: to the sign-in page.
    SignIn,
    /// A location outside the viewer's scope, or an account not in it: the same answer whether
    /// it exists or not.
    Forbidden,
    /// A form without this sign-in's token (posted by another site, or from an old sign-in).
    Expired,
    /// A viewer who may look but not change anything.
    ReadOnly,
    /// The services could not answer.
    Unavailable(tonic::Code),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::SignIn => Redirect::to("/app").into_response(),
            Self::Forbidden => forbidden(),
            Self::Expired => problem(
                StatusCode::FORBIDDEN,
                "This form has expired",
                "It was not opened from this sign-in. Reload the page and try again.",
            ),
            Self::ReadOnly => problem(
                StatusCode::FORBIDDEN,
                "Read only",
                "Your sign-in may look but not change anything.",
            ),
            Self::Unavailable(code) => {
                warn!(?code, "an account page cannot reach the session service");
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Accounts are not available",
                    "whatsnap cannot reach its accounts right now; try again in a moment.",
                )
            }
        }
    }
}

/// The viewer, when signed in and `location` is one of theirs.
fn viewer_of(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    location: &str,
) -> Result<Viewer, Refusal> {
    let viewer = viewer(dashboard, headers).ok_or(Refusal::SignIn)?;
    if location.trim().is_empty() || !viewer.scope.allows(location) {
        return Err(Refusal::Forbidden);
    }
    Ok(viewer)
}

/// As [`viewer_of`], for an action: the form must also carry this sign-in's token, and the
/// viewer be allowed to change things.
fn actor_of(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    location: &str,
    token: &str,
) -> Result<Viewer, Refusal> {
    let viewer = viewer_of(dashboard, headers, location)?;
    if !csrf::verify(headers, token) {
        return Err(Refusal::Expired);
    }
    if !viewer.can_write {
        return Err(Refusal::ReadOnly);
    }
    Ok(viewer)
}

/// The CSRF token for the forms of a page.
fn form_token(headers: &HeaderMap) -> String {
    csrf::token(headers).unwrap_or_default()
}

/// The services could not answer.
fn unavailable(status: &tonic::Status) -> Response {
    Refusal::Unavailable(status.code()).into_response()
}

/// A service's refusal: an account that is not there (or not in this location) is answered as
/// one outside the viewer's scope.
fn refused(status: &tonic::Status) -> Refusal {
    match status.code() {
        tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::PermissionDenied => {
            Refusal::Forbidden
        }
        code => Refusal::Unavailable(code),
    }
}

/// One account of the location, when it is there; removed accounts have no pages left.
async fn load(
    dashboard: &Dashboard,
    location: &str,
    id: &str,
) -> Result<session::Account, Refusal> {
    let account = sessions(dashboard)
        .get_account(dashboard.request(session::GetAccountRequest {
            location_id: location.to_owned(),
            account_id: id.to_owned(),
        }))
        .await
        .map_err(|status| refused(&status))?
        .into_inner();
    if account.status == "removed" || account.location_id != location {
        return Err(Refusal::Forbidden);
    }
    Ok(account)
}

fn platform(kind: i32) -> &'static str {
    match session::AccountKind::try_from(kind) {
        Ok(session::AccountKind::Whatsapp) => "WhatsApp",
        Ok(session::AccountKind::AndroidSms) => "SMS (Android)",
        Ok(session::AccountKind::Imessage) => "iMessage (Mac)",
        Ok(session::AccountKind::Twilio) => "Twilio SMS",
        _ => "Unknown",
    }
}

/// How a status looks (its CSS class): a Twilio account ready to use looks connected.
fn tone(status: &str, kind: i32) -> String {
    if status == "added" && kind == session::AccountKind::Twilio as i32 {
        "connected".to_owned()
    } else {
        status.to_owned()
    }
}

/// A status in words. A Twilio account is ready once Twilio accepted its credentials (it has no
/// link of its own to wait for).
fn status_text(status: &str, kind: i32) -> String {
    if status == "added" && kind == session::AccountKind::Twilio as i32 {
        return "Ready".to_owned();
    }
    match status {
        "connected" => "Connected",
        "linking" => "Waiting to link",
        "disconnected" => "Disconnected",
        "logged_out" => "Logged out",
        "added" => "Not linked yet",
        "removed" => "Removed",
        other => other,
    }
    .to_owned()
}

/// Where an account's page is.
fn account_href(location: &str, id: &str, page: &str) -> String {
    let page = if page.is_empty() {
        String::new()
    } else {
        format!("/{page}")
    };
    format!("/app/accounts/{id}{page}?location={location}")
}

/// An account as the accounts page shows it.
struct AccountRow {
    id: String,
    location: String,
    name: String,
    platform: &'static str,
    tag: String,
    number: String,
    tone: String,
    status_text: String,
    reason: String,
    href: String,
}

impl From<session::Account> for AccountRow {
    fn from(account: session::Account) -> Self {
        Self {
            href: account_href(&account.location_id, &account.account_id, ""),
            id: account.account_id,
            location: account.location_id,
            name: account.name,
            platform: platform(account.kind),
            tag: account.tag,
            number: account.phone_number,
            status_text: status_text(&account.status, account.kind),
            tone: tone(&account.status, account.kind),
            reason: account.status_reason,
        }
    }
}

/// The accounts a viewer sees on the list, and how many they may have.
struct Listing {
    accounts: Vec<session::Account>,
    /// The location shown, when there is one.
    location: Option<String>,
    limit: u32,
}

impl Listing {
    /// The count against the limit, in words.
    fn summary(&self) -> String {
        let count = self.accounts.len();
        let plural = |n: usize| if n == 1 { "account" } else { "accounts" };
        match &self.location {
            Some(_) => format!("{count} of {} {}", self.limit, plural(self.limit as usize)),
            None => format!(
                "{count} {} · up to {} in each location",
                plural(count),
                self.limit
            ),
        }
    }

    fn at_limit(&self) -> bool {
        self.location.is_some() && self.accounts.len() >= self.limit as usize
    }
}

/// The accounts of `selected` (checked against the viewer's scope before), or of every location
/// the viewer may see; removed accounts left out.
async fn listing(
    dashboard: &Dashboard,
    viewer: &Viewer,
    selected: Option<&str>,
) -> Result<Listing, tonic::Status> {
    let asked: Vec<String> = match (selected, &viewer.scope) {
        (Some(location), _) => vec![location.to_owned()],
        (None, Scope::Locations { ids }) => ids.clone(),
        (None, Scope::All) => vec![String::new()],
    };
    let mut client = sessions(dashboard);
    let mut accounts = Vec::new();
    let mut limit = 0;
    for location in asked {
        let listed = client
            .list_accounts(dashboard.request(session::ListAccountsRequest {
                location_id: location,
            }))
            .await?
            .into_inner();
        limit = listed.max_accounts_per_location;
        accounts.extend(listed.accounts);
    }
    // The services answer for what was asked; the viewer's scope is checked once more here, so
    // an answer wider than the scope never reaches the page.
    accounts
        .retain(|account| viewer.scope.allows(&account.location_id) && account.status != "removed");
    let location = selected.map(str::to_owned).or(match &viewer.scope {
        Scope::Locations { ids } if ids.len() == 1 => Some(ids[0].clone()),
        _ => None,
    });
    Ok(Listing {
        accounts,
        location,
        limit,
    })
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
    summary: String,
    at_limit: bool,
    add_href: String,
    events_href: String,
}

#[derive(Deserialize)]
pub struct LocationQuery {
    #[serde(default)]
    location: Option<String>,
}

impl LocationQuery {
    fn location(&self) -> Option<String> {
        self.location
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
    }
}

/// `GET /app/accounts[?location=…]`: every account the viewer may see, with its live status.
pub async fn list(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<LocationQuery>,
) -> Response {
    let Some(viewer) = viewer(&dashboard, &headers) else {
        return Redirect::to("/app").into_response();
    };
    let selected = query.location();
    if let Some(location) = &selected
        && !viewer.scope.allows(location)
    {
        return forbidden();
    }
    let listing = match listing(&dashboard, &viewer, selected.as_deref()).await {
        Ok(listing) => listing,
        Err(status) => return unavailable(&status),
    };
    let mut locations: Vec<String> = match &viewer.scope {
        Scope::Locations { ids } => ids.clone(),
        Scope::All => listing
            .accounts
            .iter()
            .map(|a| a.location_id.clone())
            .collect(),
    };
    locations.sort();
    locations.dedup();
    let (add_href, events_href) = match &listing.location {
        Some(location) => (
            format!("/app/accounts/new?location={location}"),
            format!("/app/accounts/events?location={location}"),
        ),
        None => (
            "/app/accounts/new".to_owned(),
            "/app/accounts/events".to_owned(),
        ),
    };
    render(&AccountsPage {
        section: "accounts",
        viewer_name: viewer.name,
        show_location: locations.len() > 1 && selected.is_none(),
        locations,
        selected,
        summary: listing.summary(),
        at_limit: listing.at_limit(),
        add_href,
        events_href,
        accounts: listing.accounts.into_iter().map(AccountRow::from).collect(),
    })
}
