//! Add Account: the kind, then its form — WhatsApp (a name, then a QR code or a pairing code),
//! Twilio (SID, token and number, checked with Twilio before anything is added), an Android
//! phone or a Mac (the app's settings, then pairing) — and the linking page that follows.

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tracing::{info, warn};
use whatsnap_proto::session::v1 as session;

use super::live::LiveAccount;
use super::{
    LocationQuery, account_href, actor_of, form_token, load, platform, refused, sessions,
    status_text, unavailable, viewer_of,
};
use crate::Dashboard;
use crate::pages::{render, viewer};
use crate::signin::Scope;

#[derive(Template)]
#[template(path = "account_new.html")]
struct ChoosePage {
    section: &'static str,
    viewer_name: String,
    /// The location the account is added to; none: the page asks which.
    location: Option<String>,
    /// The locations to choose from (empty when any may be typed: an agency-wide viewer).
    locations: Vec<String>,
}

/// `GET /app/accounts/new[?location=…]`: which kind of account.
pub async fn choose(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<LocationQuery>,
) -> Response {
    let Some(signed_in) = viewer(&dashboard, &headers) else {
        return Redirect::to("/app").into_response();
    };
    let location = match (query.location(), &signed_in.scope) {
        (Some(location), _) => Some(location),
        (None, Scope::Locations { ids }) if ids.len() == 1 => Some(ids[0].clone()),
        (None, _) => None,
    };
    if let Some(location) = &location
        && let Err(answer) = viewer_of(&dashboard, &headers, location)
    {
        return answer.into_response();
    }
    render(&ChoosePage {
        section: "accounts",
        viewer_name: signed_in.name,
        location,
        locations: match signed_in.scope {
            Scope::Locations { ids } => ids,
            Scope::All => Vec::new(),
        },
    })
}

/// What the viewer typed, and what was wrong with it, field by field.
#[derive(Default)]
struct Errors {
    name: Option<String>,
    account_sid: Option<String>,
    auth_token: Option<String>,
    phone_number: Option<String>,
    /// What belongs to no one field.
    form: Option<String>,
}

impl Errors {
    fn any(&self) -> bool {
        self.name.is_some()
            || self.account_sid.is_some()
            || self.auth_token.is_some()
            || self.phone_number.is_some()
            || self.form.is_some()
    }
}

/// Where a Twilio refusal belongs on the form: bad credentials at the token, an account that
/// is not usable at the SID, a number it does not own (or that cannot send SMS) at the number.
#[derive(Debug, PartialEq, Eq)]
enum TwilioField {
    AccountSid,
    AuthToken,
    PhoneNumber,
    Form,
}

fn twilio_field(message: &str) -> TwilioField {
    let message = message.to_lowercase();
    if message.contains("refused the account sid or auth token") || message.contains("auth token") {
        TwilioField::AuthToken
    } else if message.contains("account sid") || message.contains("not active") {
        TwilioField::AccountSid
    } else if message.contains("number") || message.contains("phone") {
        TwilioField::PhoneNumber
    } else {
        TwilioField::Form
    }
}

#[derive(Template)]
#[template(path = "account_whatsapp.html")]
struct WhatsAppPage {
    section: &'static str,
    viewer_name: String,
    location: String,
    csrf: String,
    name: String,
    pairing_phone: String,
    errors: Errors,
}

/// `GET /app/accounts/new/whatsapp?location=…`.
pub async fn whatsapp_form(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<LocationQuery>,
) -> Response {
    let location = query.location().unwrap_or_default();
    let viewer = match viewer_of(&dashboard, &headers, &location) {
        Ok(viewer) => viewer,
        Err(answer) => return answer.into_response(),
    };
    render(&WhatsAppPage {
        section: "accounts",
        viewer_name: viewer.name,
        csrf: form_token(&headers),
        location,
        name: String::new(),
        pairing_phone: String::new(),
        errors: Errors::default(),
    })
}

#[derive(Deserialize)]
pub struct WhatsAppForm {
    #[serde(default)]
    location: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    pairing_phone: String,
}

/// `POST /app/accounts/new/whatsapp`: adds the account and starts linking it.
pub async fn add_whatsapp(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<WhatsAppForm>,
) -> Response {
    let viewer = match actor_of(&dashboard, &headers, &form.location, &form.csrf) {
        Ok(viewer) => viewer,
        Err(answer) => return answer.into_response(),
    };
    let mut errors = Errors::default();
    if form.name.trim().is_empty() {
        errors.name = Some("give the account a name: its tag is made from it".into());
    }
    let added = if errors.any() {
        None
    } else {
        match sessions(&dashboard)
            .add_account(dashboard.request(session::AddAccountRequest {
                location_id: form.location.clone(),
                kind: session::AccountKind::Whatsapp as i32,
                name: form.name.trim().to_owned(),
                ..Default::default()
            }))
            .await
        {
            Ok(account) => Some(account.into_inner()),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                return unavailable(&status);
            }
            Err(status) => {
                errors.form = Some(status.message().to_owned());
                None
            }
        }
    };
    let Some(account) = added else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            render(&WhatsAppPage {
                section: "accounts",
                viewer_name: viewer.name,
                csrf: form.csrf,
                location: form.location,
                name: form.name,
                pairing_phone: form.pairing_phone,
                errors,
            }),
        )
            .into_response();
    };
    info!(location_id = %account.location_id, account_id = %account.account_id, "whatsapp account added from the dashboard");
    // Linking starts at once; when the engine cannot start it, the linking page says so and
    // offers to try again.
    if let Err(status) = sessions(&dashboard)
        .connect_account(dashboard.request(session::ConnectAccountRequest {
            location_id: form.location.clone(),
            account_id: account.account_id.clone(),
            pairing_phone_number: form.pairing_phone.trim().to_owned(),
        }))
        .await
    {
        warn!(code = ?status.code(), account_id = %account.account_id, "linking did not start after adding");
    }
    Redirect::to(&account_href(&form.location, &account.account_id, "link")).into_response()
}

#[derive(Template)]
#[template(path = "account_twilio.html")]
struct TwilioPage {
    section: &'static str,
    viewer_name: String,
    location: String,
    csrf: String,
    name: String,
    account_sid: String,
    phone_number: String,
    errors: Errors,
}

/// `GET /app/accounts/new/twilio?location=…`.
pub async fn twilio_form(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<LocationQuery>,
) -> Response {
    let location = query.location().unwrap_or_default();
    let viewer = match viewer_of(&dashboard, &headers, &location) {
        Ok(viewer) => viewer,
        Err(answer) => return answer.into_response(),
    };
    render(&TwilioPage {
        section: "accounts",
        viewer_name: viewer.name,
        csrf: form_token(&headers),
        location,
        name: String::new(),
        account_sid: String::new(),
        phone_number: String::new(),
        errors: Errors::default(),
    })
}

#[derive(Deserialize)]
pub struct TwilioForm {
    #[serde(default)]
    location: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    account_sid: String,
    #[serde(default)]
    auth_token: String,
    #[serde(default)]
    phone_number: String,
}

/// `POST /app/accounts/new/twilio`: checks the credentials with Twilio (the session service
/// does, before it adds anything) and adds the account; each refusal is shown at its field.
pub async fn add_twilio(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<TwilioForm>,
) -> Response {
    let viewer = match actor_of(&dashboard, &headers, &form.location, &form.csrf) {
        Ok(viewer) => viewer,
        Err(answer) => return answer.into_response(),
    };
    let mut errors = Errors::default();
    let required = |value: &str, what: &str| {
        value
            .trim()
            .is_empty()
            .then(|| format!("the {what} is required"))
    };
    errors.name = required(&form.name, "name");
    errors.account_sid = required(&form.account_sid, "Account SID");
    errors.auth_token = required(&form.auth_token, "Auth Token");
    errors.phone_number = required(&form.phone_number, "Twilio phone number");
    if !errors.any() {
        let added = sessions(&dashboard)
            .add_account(dashboard.request(session::AddAccountRequest {
                location_id: form.location.clone(),
                kind: session::AccountKind::Twilio as i32,
                name: form.name.trim().to_owned(),
                phone_number: form.phone_number.trim().to_owned(),
                twilio: Some(session::TwilioCredentials {
                    account_sid: form.account_sid.trim().to_owned(),
                    auth_token: form.auth_token.trim().to_owned(),
                }),
                ..Default::default()
            }))
            .await;
        match added {
            Ok(account) => {
                let account = account.into_inner();
                info!(location_id = %account.location_id, account_id = %account.account_id, "twilio account added from the dashboard");
                return Redirect::to(&format!("/app/accounts?location={}", form.location))
                    .into_response();
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                errors.form = Some(format!("Nothing was added: {}", status.message()));
            }
            Err(status) => {
                let message = status.message().to_owned();
                match twilio_field(&message) {
                    TwilioField::AccountSid => errors.account_sid = Some(message),
                    TwilioField::AuthToken => errors.auth_token = Some(message),
                    TwilioField::PhoneNumber => errors.phone_number = Some(message),
                    TwilioField::Form => errors.form = Some(message),
                }
            }
        }
    }
    // The token is never sent back to the browser: it is typed again.
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        render(&TwilioPage {
            section: "accounts",
            viewer_name: viewer.name,
            csrf: form.csrf,
            location: form.location,
            name: form.name,
            account_sid: form.account_sid,
            phone_number: form.phone_number,
            errors,
        }),
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "account_device.html")]
struct DevicePage {
    section: &'static str,
    viewer_name: String,
    location: String,
    csrf: String,
    /// `android` or `mac`.
    device: String,
    name: String,
    phone_number: String,
    mode: String,
    url: String,
    username: String,
    device_id: String,
    errors: Errors,
}

#[derive(Deserialize)]
pub struct DeviceQuery {
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

fn device_of(kind: Option<&str>) -> &'static str {
    match kind {
        Some("mac") => "mac",
        _ => "android",
    }
}

/// `GET /app/accounts/new/device?location=…&kind=android|mac`.
pub async fn device_form(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<DeviceQuery>,
) -> Response {
    let location = query.location.clone().unwrap_or_default();
    let viewer = match viewer_of(&dashboard, &headers, &location) {
        Ok(viewer) => viewer,
        Err(answer) => return answer.into_response(),
    };
    render(&DevicePage {
        section: "accounts",
        viewer_name: viewer.name,
        csrf: form_token(&headers),
        location,
        device: device_of(query.kind.as_deref()).to_owned(),
        name: String::new(),
        phone_number: String::new(),
        mode: "cloud".into(),
        url: String::new(),
        username: String::new(),
        device_id: String::new(),
        errors: Errors::default(),
    })
}

#[derive(Deserialize)]
pub struct DeviceForm {
    #[serde(default)]
    location: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    device: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    phone_number: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    signing_key: String,
    #[serde(default)]
    device_id: String,
}

impl DeviceForm {
    /// The kind of account and the engine's settings, as the session service takes them.
    fn settings(&self) -> (session::AccountKind, serde_json::Value) {
        let trim = |value: &str| value.trim().to_owned();
        if device_of(Some(&self.device)) == "mac" {
            return (
                session::AccountKind::Imessage,
                serde_json::json!({ "server_url": trim(&self.url), "password": trim(&self.password) }),
            );
        }
        let mut settings = serde_json::json!({
            "mode": trim(&self.mode),
            "username": trim(&self.username),
            "password": trim(&self.password),
            "signing_key": trim(&self.signing_key),
        });
        if !self.url.trim().is_empty() {
            settings["url"] = trim(&self.url).into();
        }
        if !self.device_id.trim().is_empty() {
            settings["device_id"] = trim(&self.device_id).into();
        }
        (session::AccountKind::AndroidSms, settings)
    }
}

/// `POST /app/accounts/new/device`: adds an Android phone (SMSGate) or a Mac (BlueBubbles);
/// the pairing page follows.
pub async fn add_device(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<DeviceForm>,
) -> Response {
    let viewer = match actor_of(&dashboard, &headers, &form.location, &form.csrf) {
        Ok(viewer) => viewer,
        Err(answer) => return answer.into_response(),
    };
    let mut errors = Errors::default();
    if form.name.trim().is_empty() {
        errors.name = Some("give the account a name: its tag is made from it".into());
    }
    if !errors.any() {
        let (kind, settings) = form.settings();
        let added = sessions(&dashboard)
            .add_account(dashboard.request(session::AddAccountRequest {
                location_id: form.location.clone(),
                kind: kind as i32,
                name: form.name.trim().to_owned(),
                phone_number: form.phone_number.trim().to_owned(),
                settings_json: settings.to_string(),
                ..Default::default()
            }))
            .await;
        match added {
            Ok(account) => {
                let account = account.into_inner();
                info!(location_id = %account.location_id, account_id = %account.account_id, "device account added from the dashboard");
                return Redirect::to(&account_href(&form.location, &account.account_id, "link"))
                    .into_response();
            }
            Err(status) => {
                let message = status.message().to_owned();
                if message.to_lowercase().contains("phone") {
                    errors.phone_number = Some(message);
                } else {
                    errors.form = Some(format!("Nothing was added: {message}"));
                }
            }
        }
    }
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        render(&DevicePage {
            section: "accounts",
            viewer_name: viewer.name,
            csrf: form.csrf,
            location: form.location,
            device: device_of(Some(&form.device)).to_owned(),
            name: form.name,
            phone_number: form.phone_number,
            mode: form.mode,
            url: form.url,
            username: form.username,
            device_id: form.device_id,
            errors,
        }),
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "account_link.html")]
struct LinkPage {
    section: &'static str,
    viewer_name: String,
    location: String,
    csrf: String,
    id: String,
    name: String,
    platform: &'static str,
    whatsapp: bool,
    status: String,
    tone: String,
    status_text: String,
    reason: String,
    /// The code to scan now, when there is one, drawn as SVG.
    qr: String,
    qr_svg: String,
    pairing_code: String,
    /// A device's pairing: the steps, and what to type into its app.
    steps: Vec<String>,
    webhook_url: String,
    secret: String,
    events_href: String,
    settings_href: String,
}

/// `GET /app/accounts/{id}/link?location=…`: linking a WhatsApp number (its QR code, replaced
/// as it rotates, or a pairing code) or pairing a device; the page turns to Connected by itself.
pub async fn link(
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
    let kind = session::AccountKind::try_from(account.kind).unwrap_or_default();
    let whatsapp = kind == session::AccountKind::Whatsapp;
    let mut now = LiveAccount::from(session::AccountUpdate {
        account: Some(account.clone()),
        ..Default::default()
    });
    let (mut steps, mut webhook_url, mut secret) = (Vec::new(), String::new(), String::new());
    match kind {
        session::AccountKind::Twilio => {
            return Redirect::to(&account_href(&location, &id, "")).into_response();
        }
        session::AccountKind::Whatsapp => {
            // The code shown now, when linking is under way: the first update of the account's
            // watch carries it.
            let first = async {
                let mut updates = sessions(&dashboard)
                    .watch_account(dashboard.request(session::WatchAccountRequest {
                        location_id: location.clone(),
                        account_id: id.clone(),
                    }))
                    .await?
                    .into_inner();
                updates.message().await
            };
            if let Ok(Ok(Some(update))) =
                tokio::time::timeout(std::time::Duration::from_secs(3), first).await
            {
                now = LiveAccount::from(update);
            }
        }
        _ => match sessions(&dashboard)
            .get_pairing(dashboard.request(session::GetAccountRequest {
                location_id: location.clone(),
                account_id: id.clone(),
            }))
            .await
        {
            Ok(pairing) => {
                let pairing = pairing.into_inner();
                (steps, webhook_url, secret) = (pairing.steps, pairing.webhook_url, pairing.secret);
            }
            Err(status) => return refused(&status).into_response(),
        },
    }
    render(&LinkPage {
        section: "accounts",
        viewer_name: viewer.name,
        csrf: form_token(&headers),
        events_href: account_href(&location, &id, "events"),
        settings_href: account_href(&location, &id, ""),
        location,
        id,
        name: account.name,
        platform: platform(account.kind),
        whatsapp,
        status_text: status_text(&now.status, account.kind),
        tone: now.tone,
        status: now.status,
        reason: now.reason,
        qr: now.qr,
        qr_svg: now.qr_svg,
        pairing_code: now.pairing_code,
        steps,
        webhook_url,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::{TwilioField, twilio_field};

    #[test]
    fn each_twilio_refusal_goes_to_its_field() {
        for (message, field) in [
            (
                "Twilio refused the Account SID or Auth Token: check both in the Twilio console (Twilio 20003)",
                TwilioField::AuthToken,
            ),
            ("the Twilio Auth Token is empty", TwilioField::AuthToken),
            (
                "\"AB12\" is not a Twilio Account SID (AC followed by 32 characters)",
                TwilioField::AccountSid,
            ),
            (
                "the Twilio account ACxx is suspended, not active",
                TwilioField::AccountSid,
            ),
            (
                "the Twilio account does not own the number +15550100",
                TwilioField::PhoneNumber,
            ),
            (
                "the Twilio number +15550100 cannot send SMS",
                TwilioField::PhoneNumber,
            ),
            ("\"12\" is not a phone number", TwilioField::PhoneNumber),
            (
                "location loc1 already has 3 accounts, the most it may have: remove one first",
                TwilioField::Form,
            ),
        ] {
            assert_eq!(twilio_field(message), field, "{message}");
        }
    }
}
