//! The assignment page: an account's rules (forms for every part of the rules language and the
//! JSON view, two views of one document, checked as you type by the same check SetRules runs; a
//! simulate preview over recorded history before saving) and the location's users with their
//! availability.

mod form;
mod form_html;

use askama::Template;
use axum::Json;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use whatsnap_assignment::engine::{RulesJsonError, parse_rules_json};
use whatsnap_proto::assignment::v1 as pb;
use whatsnap_proto::display::{short, user_or_unassigned, when};
use whatsnap_proto::session::v1 as session;

use crate::Dashboard;
use crate::pages::render;
use crate::scoped::{self, Located};

use form::RulesForm;
use form_html::rules_form_html;

fn client(
    dashboard: &Dashboard,
) -> pb::assignment_service_client::AssignmentServiceClient<whatsnap_auth::Transport> {
    pb::assignment_service_client::AssignmentServiceClient::new(dashboard.inner.services.clone())
}

/// The rules documents the forms start from when an account has none.
const EXAMPLE: &str = r#"{
  "rules": [
    { "strategy": "round_robin", "users": ["u_ana", "u_ben"] }
  ]
}"#;

struct UserRow {
    id: String,
    name: String,
    role: String,
    state: String,
    active: bool,
    /// What is set now, for the form to start from (SetAvailability replaces all of it).
    time_zone: String,
    hours: String,
    away_from: String,
    away_until: String,
}

/// An RFC 3339 time as a `datetime-local` field shows it, in UTC (as the form reads it back).
fn local_input(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

#[derive(Template)]
#[template(path = "assignment.html")]
struct AssignmentPage {
    section: &'static str,
    viewer_name: String,
    locations: Vec<String>,
    location: String,
    csrf: String,
    accounts: Vec<session::Account>,
    /// The account whose rules are shown; empty for the location's default rules.
    account: String,
    rules_json: String,
    /// The form drawn from `rules_json` (the `rules_form.html` fragment).
    form_html: String,
    version: u64,
    saved: Option<u64>,
    error: Option<String>,
    error_field: Option<String>,
    users: Vec<UserRow>,
    users_error: Option<String>,
    can_write: bool,
}

#[derive(Deserialize)]
pub struct PageQuery {
    location: Option<String>,
    #[serde(default)]
    account: String,
    saved: Option<u64>,
}

/// `GET /app/assignment?location=…&account=…`.
pub async fn page(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Response {
    let located = match scoped::page(&dashboard, &headers, query.location.as_deref()).await {
        Ok(located) => located,
        Err(response) => return response,
    };
    let rules = match client(&dashboard)
        .get_rules(dashboard.request(pb::GetRulesRequest {
            location_id: located.location.clone(),
            account_id: query.account.clone(),
        }))
        .await
    {
        Ok(rules) => rules.into_inner(),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            return crate::pages::problem(
                StatusCode::BAD_REQUEST,
                "No such account",
                status.message(),
            );
        }
        Err(status) => return scoped::unavailable("assignment rules", &status),
    };
    let rules_json = match rules.version {
        0 => EXAMPLE.to_owned(),
        _ => pretty(&rules.rules_json),
    };
    show(
        &dashboard,
        located,
        query.account,
        rules_json,
        rules.version,
        query.saved,
        None,
    )
    .await
}

fn pretty(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| json.to_owned())
}

async fn show(
    dashboard: &Dashboard,
    located: Located,
    account: String,
    rules_json: String,
    version: u64,
    saved: Option<u64>,
    error: Option<(String, Option<String>)>,
) -> Response {
    let accounts = match scoped::accounts(dashboard, &located.location).await {
        Ok(accounts) => accounts,
        Err(response) => return response,
    };
    let (users, users_error) = match client(dashboard)
        .list_users(dashboard.request(pb::ListUsersRequest {
            location_id: located.location.clone(),
        }))
        .await
    {
        Ok(listed) => (
            listed
                .into_inner()
                .users
                .into_iter()
                .map(|u| UserRow {
                    state: u.availability(),
                    active: u.active,
                    time_zone: u.time_zone.clone(),
                    hours: u.working_hours_json.clone(),
                    away_from: local_input(&u.out_of_office_from),
                    away_until: local_input(&u.out_of_office_until),
                    id: u.user_id,
                    name: u.name,
                    role: u.role,
                })
                .collect(),
            None,
        ),
        Err(status) => (Vec::new(), Some(status.message().to_owned())),
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let form_html = rules_form_html(&rules_json, &accounts);
    let (error, error_field) = match error {
        Some((message, field)) => (Some(message), field),
        None => (None, None),
    };
    (
        status,
        render(&AssignmentPage {
            section: "assignment",
            viewer_name: located.viewer.name.clone(),
            can_write: located.viewer.can_write,
            locations: located.locations,
            location: located.location,
            csrf: located.csrf,
            accounts,
            account,
            form_html,
            rules_json,
            version,
            saved,
            error,
            error_field,
            users,
            users_error,
        }),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct RulesBody {
    location: String,
    #[serde(default)]
    account: String,
    rules_json: String,
    #[serde(default)]
    days: Option<u64>,
    #[serde(default)]
    csrf: String,
}

fn csrf_header(headers: &HeaderMap) -> &str {
    headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// SetRules' check of a rules document, as the page shows it: a summary, or the refusal with
/// the bad field's path.
fn check(rules_json: &str) -> serde_json::Value {
    match parse_rules_json(rules_json) {
        Ok((_, rules)) => serde_json::json!({
            "ok": true,
            "summary": format!(
                "valid: {} rule(s), first match wins: {}",
                rules.rules.len(),
                rules.rules.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }),
        Err(error) => {
            // What is wrong, without the path, for the note next to the field.
            let problem = match &error {
                RulesJsonError::Rules(rules) => rules.problem.clone(),
                RulesJsonError::Json(_) => error.to_string(),
            };
            serde_json::json!({
                "ok": false,
                "error": error.to_string(),
                "field": error.field(),
                "problem": problem,
            })
        }
    }
}

#[derive(Deserialize)]
pub struct EditorBody {
    location: String,
    /// The JSON view's text, when it was edited.
    #[serde(default)]
    rules_json: String,
    /// The form's fields as the browser holds them, when the form was edited (a ticked box
    /// once per value).
    #[serde(default)]
    fields: Option<Vec<(String, String)>>,
    /// A change to the list of rules: `add`, `remove:2`, `up:2`, `down:2`.
    #[serde(default)]
    action: String,
    /// Whether the form is drawn again (after a change of its shape, or an edit of the JSON).
    #[serde(default)]
    render: bool,
}

/// `POST /app/assignment/editor` (JSON): one edit of either view. An edit of the form answers
/// the JSON it makes; an edit of the JSON answers the form drawn from it; both with SetRules'
/// check of the JSON. Changes nothing: a read-only viewer may use it, as the preview.
pub async fn editor(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Json(body): Json<EditorBody>,
) -> Response {
    if let Err(response) =
        scoped::query(&dashboard, &headers, &body.location, csrf_header(&headers))
    {
        return *response;
    }
    let (rules_json, focus) = match &body.fields {
        Some(fields) => {
            let mut form = RulesForm::from_fields(fields);
            let focus = form.apply(&body.action);
            (form.to_json_text(), focus)
        }
        None => (body.rules_json, None),
    };
    let mut answer = check(&rules_json);
    if body.render {
        let accounts = match scoped::accounts(&dashboard, &body.location).await {
            Ok(accounts) => accounts,
            Err(response) => return response,
        };
        answer["form"] = rules_form_html(&rules_json, &accounts).into();
    }
    answer["focus"] = focus.into();
    answer["rules_json"] = rules_json.into();
    Json(answer).into_response()
}

#[derive(Template)]
#[template(path = "simulate.html")]
struct SimulatePreview {
    days: u64,
    decisions: u64,
    changes: Vec<ChangeRow>,
    per_user: Vec<(String, u64, u64)>,
    error: Option<String>,
}

struct ChangeRow {
    at: String,
    contact: String,
    recorded: String,
    simulated: String,
    rule: String,
    reason: String,
}

/// `POST /app/assignment/simulate` (JSON): the decisions of the last `days` replayed against
/// the rules in the editor, as an HTML fragment for the page to show. Touches nothing.
pub async fn simulate(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Json(body): Json<RulesBody>,
) -> Response {
    if let Err(response) =
        scoped::query(&dashboard, &headers, &body.location, csrf_header(&headers))
    {
        return *response;
    }
    let days = body.days.unwrap_or(30).clamp(1, 90);
    let fragment = |status: StatusCode, preview: SimulatePreview| {
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            preview.render().unwrap_or_default(),
        )
            .into_response()
    };
    let refused = |message: String| SimulatePreview {
        days,
        decisions: 0,
        changes: Vec::new(),
        per_user: Vec::new(),
        error: Some(message),
    };
    match client(&dashboard)
        .simulate(dashboard.request(pb::SimulateRequest {
            location_id: body.location,
            account_id: body.account,
            rules_json: body.rules_json,
            since_seconds: days * 86_400,
        }))
        .await
    {
        Ok(simulated) => {
            let simulated = simulated.into_inner();
            fragment(
                StatusCode::OK,
                SimulatePreview {
                    days,
                    decisions: simulated.decisions,
                    changes: simulated
                        .changes
                        .into_iter()
                        .map(|c| ChangeRow {
                            at: when(&c.at),
                            contact: short(&c.contact_id).to_owned(),
                            recorded: user_or_unassigned(&c.recorded_user_id).to_owned(),
                            simulated: user_or_unassigned(&c.simulated_user_id).to_owned(),
                            rule: c.simulated_rule,
                            reason: c.simulated_reason,
                        })
                        .collect(),
                    per_user: simulated
                        .per_user
                        .into_iter()
                        .map(|u| {
                            (
                                user_or_unassigned(&u.user_id).to_owned(),
                                u.recorded,
                                u.simulated,
                            )
                        })
                        .collect(),
                    error: None,
                },
            )
        }
        Err(status) if status.code() == tonic::Code::InvalidArgument => fragment(
            StatusCode::UNPROCESSABLE_ENTITY,
            refused(status.message().to_owned()),
        ),
        Err(status) => {
            let _ = scoped::unavailable("simulation", &status);
            fragment(
                StatusCode::SERVICE_UNAVAILABLE,
                refused("the simulation is not available right now; try again".to_owned()),
            )
        }
    }
}

/// `POST /app/assignment/rules` (form): saves the rules (SetRules); a refusal shows the page
/// again with the rules as typed and the field that was wrong.
pub async fn save(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Form(body): Form<RulesBody>,
) -> Response {
    if let Err(response) = scoped::action(&dashboard, &headers, &body.location, &body.csrf) {
        return *response;
    }
    let field = parse_rules_json(&body.rules_json)
        .err()
        .and_then(|e| e.field().map(str::to_owned));
    match client(&dashboard)
        .set_rules(dashboard.request(pb::SetRulesRequest {
            location_id: body.location.clone(),
            account_id: body.account.clone(),
            rules_json: body.rules_json.clone(),
        }))
        .await
    {
        Ok(set) => Redirect::to(&format!(
            "/app/assignment?location={}&account={}&saved={}",
            body.location,
            body.account,
            set.into_inner().version
        ))
        .into_response(),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            let located =
                match scoped::page(&dashboard, &headers, Some(body.location.as_str())).await {
                    Ok(located) => located,
                    Err(response) => return response,
                };
            show(
                &dashboard,
                located,
                body.account,
                body.rules_json,
                0,
                None,
                Some((status.message().to_owned(), field)),
            )
            .await
        }
        Err(status) => scoped::unavailable("assignment rules", &status),
    }
}

#[derive(Deserialize)]
pub struct AvailabilityForm {
    location: String,
    user: String,
    #[serde(default)]
    time_zone: String,
    #[serde(default)]
    hours: String,
    #[serde(default)]
    away_from: String,
    #[serde(default)]
    away_until: String,
    /// A checkbox: present when ticked.
    #[serde(default)]
    active: Option<String>,
    #[serde(default)]
    csrf: String,
}

/// `POST /app/assignment/availability` (form): a user's working hours, out of office and
/// whether they take contacts (SetAvailability).
pub async fn availability(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<AvailabilityForm>,
) -> Response {
    if let Err(response) = scoped::action(&dashboard, &headers, &form.location, &form.csrf) {
        return *response;
    }
    // `datetime-local` gives no zone: read it as UTC, as the form says.
    let rfc3339 = |text: &str| match text.trim() {
        "" => String::new(),
        t if t.len() == 16 => format!("{t}:00Z"),
        t => t.to_owned(),
    };
    match client(&dashboard)
        .set_availability(dashboard.request(pb::SetAvailabilityRequest {
            location_id: form.location.clone(),
            user_id: form.user,
            time_zone: form.time_zone.trim().to_owned(),
            working_hours_json: form.hours.trim().to_owned(),
            out_of_office_from: rfc3339(&form.away_from),
            out_of_office_until: rfc3339(&form.away_until),
            active: form.active.is_some(),
        }))
        .await
    {
        Ok(_) => Redirect::to(&format!("/app/assignment?location={}#users", form.location))
            .into_response(),
        Err(status) if status.code() == tonic::Code::InvalidArgument => crate::pages::problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Availability not saved",
            status.message(),
        ),
        Err(status) => scoped::unavailable("users", &status),
    }
}

/// `GET /app/assignment.js`: the editor's script, compiled into the binary.
pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../assets/assignment.js"),
    )
        .into_response()
}
