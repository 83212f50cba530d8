//! The location a page or action is about, checked against the viewer's scope before anything
//! is read or changed: the shared first step of the assignment, contacts, tags, insights and
//! alerts pages.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use tracing::warn;
use whatsnap_proto::session::v1 as session;

use crate::Dashboard;
use crate::csrf;
use crate::pages::{forbidden, problem, viewer};
use crate::signin::{Scope, Viewer};

/// A signed-in viewer on a page about one of their locations.
pub(crate) struct Located {
    pub viewer: Viewer,
    /// The location the page shows, within the viewer's scope.
    pub location: String,
    /// Every location the viewer may pick.
    pub locations: Vec<String>,
    /// The CSRF token the page's forms and scripts send back.
    pub csrf: String,
}

/// The viewer and the location a page shows: `requested` when it is within their scope (403
/// otherwise, whether it exists or not), else their first location. Anyone not signed in is
/// sent to sign in.
pub(crate) async fn page(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    requested: Option<&str>,
) -> Result<Located, Response> {
    let Some(viewer) = viewer(dashboard, headers) else {
        return Err(Redirect::to("/app").into_response());
    };
    let requested = requested.map(str::trim).filter(|l| !l.is_empty());
    if let Some(location) = requested
        && !viewer.scope.allows(location)
    {
        return Err(forbidden());
    }
    let mut locations = match &viewer.scope {
        Scope::Locations { ids } => ids.clone(),
        Scope::All => all_locations(dashboard).await?,
    };
    locations.sort();
    locations.dedup();
    let Some(location) = requested
        .map(str::to_owned)
        .or_else(|| locations.first().cloned())
    else {
        return Err(problem(
            StatusCode::NOT_FOUND,
            "No location yet",
            "No location has an account yet: add one on the Accounts page, or open a location with ?location=….",
        ));
    };
    let csrf = csrf::token(headers).unwrap_or_default();
    Ok(Located {
        viewer,
        location,
        locations,
        csrf,
    })
}

/// The viewer of an action (a POST) on `location`: signed in, allowed there, allowed to change
/// things, and sending the CSRF token of their sign-in. The refusal is the page to answer with.
pub(crate) fn action(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    location: &str,
    csrf: &str,
) -> Result<Viewer, Box<Response>> {
    let viewer = query(dashboard, headers, location, csrf)?;
    if !viewer.can_write {
        return Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            "Read-only",
            "Your sign-in may look but not change anything.",
        )));
    }
    Ok(viewer)
}

/// As [`action`], for a POST that changes nothing (checking or previewing rules): a read-only
/// viewer may make it too.
pub(crate) fn query(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    location: &str,
    csrf: &str,
) -> Result<Viewer, Box<Response>> {
    let Some(viewer) = viewer(dashboard, headers) else {
        return Err(Box::new(problem(
            StatusCode::UNAUTHORIZED,
            "Signed out",
            "Your sign-in has ended: open the dashboard again.",
        )));
    };
    if !viewer.scope.allows(location) {
        return Err(Box::new(forbidden()));
    }
    if !csrf::verify(headers, csrf) {
        return Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "The form did not come from this sign-in: reload the page and try again.",
        )));
    }
    Ok(viewer)
}

/// The locations that have accounts, for a viewer who may see every location.
async fn all_locations(dashboard: &Dashboard) -> Result<Vec<String>, Response> {
    Ok(accounts(dashboard, "")
        .await?
        .into_iter()
        .map(|a| a.location_id)
        .collect())
}

/// The accounts of `location` (every location's when empty).
pub(crate) async fn accounts(
    dashboard: &Dashboard,
    location: &str,
) -> Result<Vec<session::Account>, Response> {
    session::session_service_client::SessionServiceClient::new(dashboard.inner.services.clone())
        .list_accounts(dashboard.request(session::ListAccountsRequest {
            location_id: location.to_owned(),
        }))
        .await
        .map(|listed| {
            let mut accounts = listed.into_inner().accounts;
            if !location.is_empty() {
                accounts.retain(|a| a.location_id == location);
            }
            accounts
        })
        .map_err(|status| unavailable("accounts", &status))
}

/// A service that did not answer: the page says so, the log says which call.
pub(crate) fn unavailable(what: &str, status: &tonic::Status) -> Response {
    warn!(code = ?status.code(), what, "a dashboard page cannot read from a service");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Not available right now",
        &format!("whatsnap cannot read the {what} right now; try again in a moment."),
    )
}
