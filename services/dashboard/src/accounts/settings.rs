//! An account's settings page and its actions: pacing, a Twilio account's credentials,
//! disconnecting it and linking it again (a new QR code), and removing it after a confirmation
//! that says what happens to its contacts and tag.

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tracing::info;
use whatsnap_proto::session::v1 as session;

use super::{
    LocationQuery, account_href, actor_of, form_token, load, platform, refused, sessions,
    status_text, viewer_of,
};
use crate::Dashboard;
use crate::pages::render;

#[derive(Template)]
#[template(path = "account_settings.html")]
struct SettingsPage {
    section: &'static str,
    viewer_name: String,
    location: String,
    csrf: String,
    id: String,
    name: String,
    tag: String,
    platform: &'static str,
    engine: String,
    number: String,
    tone: String,
    status_text: String,
    reason: String,
    pacing: String,
    twilio: bool,
    /// Linked by a device session (WhatsApp): it can be linked again with a new code.
    relinks: bool,
    /// The other engines a WhatsApp account can move to.
    engines: Vec<&'static str>,
    /// What was just done, or what went wrong, to say at the top.
    notice: Option<String>,
    error: Option<String>,
    events_href: String,
    remove_href: String,
}

/// The engines that link a WhatsApp number as a device (the Cloud API is added as its own
/// account); a deployment that does not run one says so when it is chosen.
const WHATSAPP_ENGINES: &[&str] = &["embedded", "evolution"];

#[derive(Deserialize)]
pub struct SettingsQuery {
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    done: Option<String>,
}

fn notice(done: Option<&str>) -> Option<String> {
    Some(
        match done? {
            "pacing" => "Pacing saved.",
            "name" => "Renamed. The tag stays as it was.",
            "credentials" => "The new Auth Token was checked with Twilio and is in use.",
            "engine" => "Moved to the new engine. Link it again to scan a new QR code there.",
            "disconnected" => {
                "Disconnected: the device is logged out. Its contacts, tag and history stay; \
                 link it again for a new QR code."
            }
            _ => return None,
        }
        .to_owned(),
    )
}

async fn settings_page(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    location: String,
    id: String,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let viewer = match viewer_of(dashboard, headers, &location) {
        Ok(viewer) => viewer,
        Err(answer) => return answer.into_response(),
    };
    let account = match load(dashboard, &location, &id).await {
        Ok(account) => account,
        Err(answer) => return answer.into_response(),
    };
    let kind = session::AccountKind::try_from(account.kind).unwrap_or_default();
    let page = render(&SettingsPage {
        section: "accounts",
        viewer_name: viewer.name,
        csrf: form_token(headers),
        events_href: account_href(&location, &id, "events"),
        remove_href: account_href(&location, &id, "remove"),
        location,
        id,
        platform: platform(account.kind),
        twilio: kind == session::AccountKind::Twilio,
        relinks: kind == session::AccountKind::Whatsapp,
        engines: WHATSAPP_ENGINES
            .iter()
            .copied()
            .filter(|engine| *engine != account.engine)
            .collect(),
        name: account.name,
        tag: account.tag,
        engine: account.engine,
        number: account.phone_number,
        status_text: status_text(&account.status, account.kind),
        tone: super::tone(&account.status, account.kind),
        reason: account.status_reason,
        pacing: account.pacing,
        notice,
        error: error.clone(),
    });
    if error.is_some() {
        (StatusCode::UNPROCESSABLE_ENTITY, page).into_response()
    } else {
        page
    }
}

/// `GET /app/accounts/{id}?location=…`: the account's settings.
pub async fn page(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<SettingsQuery>,
) -> Response {
    let location = query.location.clone().unwrap_or_default();
    settings_page(
        &dashboard,
        &headers,
        location,
        id,
        notice(query.done.as_deref()),
        None,
    )
    .await
}

#[derive(Deserialize)]
pub struct PacingForm {
    #[serde(default)]
    location: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    interval_seconds: String,
    #[serde(default)]
    jitter_seconds: String,
    #[serde(default)]
    typing_seconds: String,
}

impl PacingForm {
    /// The three times in milliseconds, or what is wrong with one.
    fn millis(&self) -> Result<(u32, u32, u32), String> {
        Ok((
            millis("the least time between replies", &self.interval_seconds)?,
            millis("the random extra", &self.jitter_seconds)?,
            millis("the typing time", &self.typing_seconds)?,
        ))
    }
}

/// Seconds as typed (`2`, `1.5`, empty for none) in milliseconds.
fn millis(what: &str, seconds: &str) -> Result<u32, String> {
    let seconds = seconds.trim();
    if seconds.is_empty() {
        return Ok(0);
    }
    match seconds.parse::<f64>() {
        Ok(value) if (0.0..=3600.0).contains(&value) => Ok((value * 1000.0).round() as u32),
        _ => Err(format!(
            "{what} must be a number of seconds between 0 and 3600, not {seconds:?}"
        )),
    }
}

/// `POST /app/accounts/{id}/pacing`.
pub async fn pacing(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<PacingForm>,
) -> Response {
    if let Err(answer) = actor_of(&dashboard, &headers, &form.location, &form.csrf) {
        return answer.into_response();
    }
    if let Err(answer) = load(&dashboard, &form.location, &id).await {
        return answer.into_response();
    }
    let (interval_ms, jitter_ms, typing_ms) = match form.millis() {
        Ok(values) => values,
        Err(error) => {
            return settings_page(&dashboard, &headers, form.location, id, None, Some(error)).await;
        }
    };
    let set = sessions(&dashboard)
        .set_pacing(dashboard.request(session::SetPacingRequest {
            location_id: form.location.clone(),
            account_id: id.clone(),
            interval_ms,
            jitter_ms,
            typing_ms,
        }))
        .await;
    match set {
        Ok(_) => {
            info!(location_id = %form.location, account_id = %id, "pacing changed from the dashboard");
            Redirect::to(&format!(
                "{}&done=pacing",
                account_href(&form.location, &id, "")
            ))
            .into_response()
        }
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            let error = status.message().to_owned();
            settings_page(&dashboard, &headers, form.location, id, None, Some(error)).await
        }
        Err(status) => refused(&status).into_response(),
    }
}

#[derive(Deserialize)]
pub struct RenameForm {
    #[serde(default)]
    location: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

/// `POST /app/accounts/{id}/rename`: a new name; the tag stays.
pub async fn rename(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<RenameForm>,
) -> Response {
    if let Err(answer) = actor_of(&dashboard, &headers, &form.location, &form.csrf) {
        return answer.into_response();
    }
    if let Err(answer) = load(&dashboard, &form.location, &id).await {
        return answer.into_response();
    }
    let renamed = sessions(&dashboard)
        .rename_account(dashboard.request(session::RenameAccountRequest {
            location_id: form.location.clone(),
            account_id: id.clone(),
            name: form.name.clone(),
        }))
        .await;
    let (shown, failed) = (&[tonic::Code::InvalidArgument], "the name was not changed");
    let action = Action::new(&dashboard, &headers, form.location, id);
    action
        .answer(renamed, shown, failed, |location, id| {
            info!(location_id = %location, account_id = %id, "account renamed from the dashboard");
            to_settings(location, id, "name")
        })
        .await
}

#[derive(Deserialize)]
pub struct CredentialsForm {
    #[serde(default)]
    location: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    auth_token: String,
}

/// Refusals a viewer can act on (a bad value, a state to change first, a third party
/// unreachable now): shown on the settings page rather than as an error page.
const SHOWN: &[tonic::Code] = &[
    tonic::Code::InvalidArgument,
    tonic::Code::FailedPrecondition,
    tonic::Code::Unavailable,
];

/// An action on an account from its settings page, to answer once the service has said.
struct Action<'a> {
    dashboard: &'a Dashboard,
    headers: &'a HeaderMap,
    location: String,
    id: String,
}

impl<'a> Action<'a> {
    fn new(dashboard: &'a Dashboard, headers: &'a HeaderMap, location: String, id: String) -> Self {
        Self {
            dashboard,
            headers,
            location,
            id,
        }
    }

    /// `done` once the service took it; the settings page saying `failed: <why>` for a refusal
    /// of one of the `shown` codes; the refusal otherwise.
    async fn answer<T>(
        self,
        result: Result<T, tonic::Status>,
        shown: &[tonic::Code],
        failed: &str,
        done: impl FnOnce(&str, &str) -> Response,
    ) -> Response {
        match result {
            Ok(_) => done(&self.location, &self.id),
            Err(status) if shown.contains(&status.code()) => {
                let error = format!("{failed}: {}", status.message());
                let (location, id) = (self.location, self.id);
                settings_page(
                    self.dashboard,
                    self.headers,
                    location,
                    id,
                    None,
                    Some(error),
                )
                .await
            }
            Err(status) => refused(&status).into_response(),
        }
    }
}

/// To the settings page, saying what was `done`.
fn to_settings(location: &str, id: &str, done: &str) -> Response {
    Redirect::to(&format!("{}&done={done}", account_href(location, id, ""))).into_response()
}

/// `POST /app/accounts/{id}/credentials`: a Twilio account's new Auth Token, checked with
/// Twilio first; one Twilio refuses changes nothing.
pub async fn credentials(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CredentialsForm>,
) -> Response {
    if let Err(answer) = actor_of(&dashboard, &headers, &form.location, &form.csrf) {
        return answer.into_response();
    }
    if let Err(answer) = load(&dashboard, &form.location, &id).await {
        return answer.into_response();
    }
    if form.auth_token.trim().is_empty() {
        let error = "type the new Auth Token".to_owned();
        return settings_page(&dashboard, &headers, form.location, id, None, Some(error)).await;
    }
    let rotated = sessions(&dashboard)
        .update_account_credentials(dashboard.request(session::UpdateAccountCredentialsRequest {
            location_id: form.location.clone(),
            account_id: id.clone(),
            auth_token: form.auth_token.trim().to_owned(),
        }))
        .await;
    let failed = "the token was not changed";
    let action = Action::new(&dashboard, &headers, form.location, id);
    action
        .answer(rotated, SHOWN, failed, |location, id| {
            to_settings(location, id, "credentials")
        })
        .await
}

#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    location: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    pairing_phone: String,
    #[serde(default)]
    engine: String,
}

/// The viewer acting on account `id` from a form: signed in, with the form's CSRF token, and
/// the account one of the form's location; or the answer instead.
async fn acting_on(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    form: &ActionForm,
    id: &str,
) -> Result<crate::signin::Viewer, Response> {
    let viewer = actor_of(dashboard, headers, &form.location, &form.csrf)
        .map_err(IntoResponse::into_response)?;
    load(dashboard, &form.location, id)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(viewer)
}

/// `POST /app/accounts/{id}/connect`: links the account again (a new QR code, or a pairing code
/// for the number given), then shows the linking page.
pub async fn connect(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(answer) = acting_on(&dashboard, &headers, &form, &id).await {
        return answer;
    }
    let connected = sessions(&dashboard)
        .connect_account(dashboard.request(session::ConnectAccountRequest {
            location_id: form.location.clone(),
            account_id: id.clone(),
            pairing_phone_number: form.pairing_phone.trim().to_owned(),
        }))
        .await;
    let failed = "linking did not start";
    let action = Action::new(&dashboard, &headers, form.location, id);
    action
        .answer(connected, SHOWN, failed, |location, id| {
            Redirect::to(&account_href(location, id, "link")).into_response()
        })
        .await
}

/// `POST /app/accounts/{id}/engine`: moves a WhatsApp account to another engine (it is linked
/// again there), then shows its settings.
pub async fn engine(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let viewer = match acting_on(&dashboard, &headers, &form, &id).await {
        Ok(viewer) => viewer,
        Err(answer) => return answer,
    };
    let moved = sessions(&dashboard)
        .set_engine(dashboard.request(session::SetEngineRequest {
            location_id: form.location.clone(),
            account_id: id.clone(),
            engine: form.engine.clone(),
        }))
        .await;
    let engine = form.engine;
    let action = Action::new(&dashboard, &headers, form.location, id);
    let failed = "the engine was not changed";
    action
        .answer(moved, SHOWN, failed, |location, id| {
            info!(%location, account = %id, %engine, by = %viewer.id, "account moved to another engine from the dashboard");
            to_settings(location, id, "engine")
        })
        .await
}

/// `POST /app/accounts/{id}/disconnect`: logs the account's device out without removing the
/// account, then shows its settings (where it can be linked again).
pub async fn disconnect(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let viewer = match acting_on(&dashboard, &headers, &form, &id).await {
        Ok(viewer) => viewer,
        Err(answer) => return answer,
    };
    let disconnected = sessions(&dashboard)
        .disconnect_account(dashboard.request(session::DisconnectAccountRequest {
            location_id: form.location.clone(),
            account_id: id.clone(),
        }))
        .await;
    let action = Action::new(&dashboard, &headers, form.location, id);
    let (shown, failed) = (&[tonic::Code::FailedPrecondition], "not disconnected");
    action
        .answer(disconnected, shown, failed, |location, id| {
            info!(%location, account = %id, by = %viewer.id, "account disconnected from the dashboard");
            to_settings(location, id, "disconnected")
        })
        .await
}

#[derive(Template)]
#[template(path = "account_remove.html")]
struct RemovePage {
    section: &'static str,
    viewer_name: String,
    location: String,
    csrf: String,
    id: String,
    name: String,
    tag: String,
    platform: &'static str,
    settings_href: String,
}

/// `GET /app/accounts/{id}/remove?location=…`: what removing the account does, and the button.
pub async fn confirm_remove(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<LocationQuery>,
) -> Response {
    let location = query.location().unwrap_or_default();
    let viewer = match viewer_of(&dashboard, &headers, &location) {
        Ok(viewer) => viewer,
        Err(answer) => return answer.into_response(),
    };
    let account = match load(&dashboard, &location, &id).await {
        Ok(account) => account,
        Err(answer) => return answer.into_response(),
    };
    render(&RemovePage {
        section: "accounts",
        viewer_name: viewer.name,
        csrf: form_token(&headers),
        settings_href: account_href(&location, &id, ""),
        location,
        id,
        name: account.name,
        tag: account.tag,
        platform: platform(account.kind),
    })
}

/// `POST /app/accounts/{id}/remove`: removes the account; its contacts and their tag stay.
pub async fn remove(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let viewer = match acting_on(&dashboard, &headers, &form, &id).await {
        Ok(viewer) => viewer,
        Err(answer) => return answer,
    };
    let removed = sessions(&dashboard)
        .remove_account(dashboard.request(session::RemoveAccountRequest {
            location_id: form.location.clone(),
            account_id: id.clone(),
            reason: format!("removed in the dashboard by {}", viewer.id),
        }))
        .await;
    match removed {
        Ok(_) => {
            info!(location_id = %form.location, account_id = %id, "account removed from the dashboard");
            Redirect::to(&format!("/app/accounts?location={}", form.location)).into_response()
        }
        Err(status) => refused(&status).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::millis;

    #[test]
    fn seconds_as_typed_become_milliseconds() {
        assert_eq!(millis("x", "2"), Ok(2000));
        assert_eq!(millis("x", " 1.5 "), Ok(1500));
        assert_eq!(millis("x", ""), Ok(0));
        assert!(millis("x", "-1").is_err());
        assert!(millis("x", "soon").is_err());
    }
}
