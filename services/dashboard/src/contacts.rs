//! Contacts: search by phone or name; one contact's timeline (every event with its reason, as
//! `whatsnap trace` prints it), the account its replies leave from and why, its owner and why;
//! and moving it to another account. The tags page (each account's tag and how many contacts
//! carry it) is here too. The contacts service searches and counts: a page costs the same
//! however many contacts the location has.

use askama::Template;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use whatsnap_proto::assignment::v1 as assignment;
use whatsnap_proto::contacts::v1 as pb;
use whatsnap_proto::display::{short, when};
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::session::v1 as session;

use crate::Dashboard;
use crate::pages::{problem, render};
use crate::scoped;

/// The most contacts a search shows.
const SHOWN: u32 = 200;

fn contacts_client(
    dashboard: &Dashboard,
) -> pb::contacts_service_client::ContactsServiceClient<whatsnap_auth::Transport> {
    pb::contacts_service_client::ContactsServiceClient::new(dashboard.inner.services.clone())
}

/// The location's contacts that `query` finds (the contacts service searches: digits in the
/// phone, or words in the name), and how many contacts the location has.
async fn search_contacts(
    dashboard: &Dashboard,
    location: &str,
    query: &str,
) -> Result<(Vec<pb::Contact>, u64), Response> {
    contacts_client(dashboard)
        .list_contacts(dashboard.request(pb::ListContactsRequest {
            location_id: location.to_owned(),
            limit: SHOWN,
            query: query.to_owned(),
        }))
        .await
        .map(|listed| {
            let listed = listed.into_inner();
            (listed.contacts, listed.total)
        })
        .map_err(|status| scoped::unavailable("contacts", &status))
}

#[derive(Template)]
#[template(path = "contacts.html")]
struct ContactsPage {
    section: &'static str,
    viewer_name: String,
    locations: Vec<String>,
    location: String,
    q: String,
    contacts: Vec<pb::Contact>,
    total: u64,
}

#[derive(Deserialize)]
pub struct SearchQuery {
    location: Option<String>,
    #[serde(default)]
    q: String,
}

/// `GET /app/contacts?location=…&q=…`.
pub async fn search(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<SearchQuery>,
) -> Response {
    let located = match scoped::page(&dashboard, &headers, query.location.as_deref()).await {
        Ok(located) => located,
        Err(response) => return response,
    };
    let (contacts, total) = match search_contacts(&dashboard, &located.location, &query.q).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    render(&ContactsPage {
        section: "contacts",
        viewer_name: located.viewer.name,
        locations: located.locations,
        location: located.location,
        q: query.q,
        contacts,
        total,
    })
}

struct TimelineRow {
    position: u64,
    at: String,
    kind: String,
    summary: String,
    correlation: String,
}

struct DecisionRow {
    at: String,
    on: String,
    outcome: String,
    rule: String,
    reason: String,
    candidates: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "contact.html")]
struct ContactPage {
    section: &'static str,
    viewer_name: String,
    location: String,
    csrf: String,
    can_write: bool,
    contact: pb::Contact,
    timeline: Vec<TimelineRow>,
    timeline_error: Option<String>,
    route: Option<pb::Route>,
    route_error: Option<String>,
    decisions: Vec<DecisionRow>,
    owner_error: Option<String>,
    accounts: Vec<session::Account>,
    moved: bool,
}

#[derive(Deserialize)]
pub struct ContactQuery {
    location: Option<String>,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    moved: Option<String>,
}

/// `GET /app/contact?location=…&phone=…`.
pub async fn contact(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<ContactQuery>,
) -> Response {
    let located = match scoped::page(&dashboard, &headers, query.location.as_deref()).await {
        Ok(located) => located,
        Err(response) => return response,
    };
    let location = located.location.clone();
    let contact = match contacts_client(&dashboard)
        .get_contact(dashboard.request(pb::GetContactRequest {
            location_id: location.clone(),
            phone: query.phone.clone(),
        }))
        .await
    {
        Ok(contact) => contact.into_inner(),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::NotFound | tonic::Code::InvalidArgument
            ) =>
        {
            return problem(
                StatusCode::NOT_FOUND,
                "No such contact",
                &format!(
                    "No contact with that phone in {location}: {}",
                    status.message()
                ),
            );
        }
        Err(status) => return scoped::unavailable("contact", &status),
    };
    let (timeline, timeline_error) = match events::events_service_client::EventsServiceClient::new(
        dashboard.inner.services.clone(),
    )
    .contact_history(dashboard.request(events::ContactHistoryRequest {
        location_id: location.clone(),
        phone: contact.phone.clone(),
    }))
    .await
    {
        Ok(history) => (
            history
                .into_inner()
                .entries
                .into_iter()
                .filter_map(|entry| {
                    let event = entry.event?;
                    Some(TimelineRow {
                        position: event.position,
                        at: when(&event.occurred_at),
                        kind: event.event_type,
                        summary: entry.summary,
                        correlation: short(&event.correlation_id).to_owned(),
                    })
                })
                .collect(),
            None,
        ),
        Err(status) => (Vec::new(), Some(status.message().to_owned())),
    };
    let (route, route_error) = match contacts_client(&dashboard)
        .resolve_route(dashboard.request(pb::ResolveRouteRequest {
            location_id: location.clone(),
            phone: contact.phone.clone(),
        }))
        .await
    {
        Ok(route) => (Some(route.into_inner()), None),
        Err(status) => (None, Some(status.message().to_owned())),
    };
    let (decisions, owner_error) =
        match assignment::assignment_service_client::AssignmentServiceClient::new(
            dashboard.inner.services.clone(),
        )
        .explain(dashboard.request(assignment::ExplainRequest {
            location_id: location.clone(),
            phone: contact.phone.clone(),
        }))
        .await
        {
            Ok(explained) => (
                explained
                    .into_inner()
                    .decisions
                    .into_iter()
                    .map(|d| DecisionRow {
                        on: d.on_trigger(),
                        outcome: d.outcome(),
                        candidates: d
                            .candidates
                            .iter()
                            .map(|c| (c.user_id.clone(), c.verdict()))
                            .collect(),
                        at: when(&d.at),
                        rule: d.rule,
                        reason: d.reason,
                    })
                    .collect(),
                None,
            ),
            Err(status) => (Vec::new(), Some(status.message().to_owned())),
        };
    let accounts = scoped::accounts(&dashboard, &location)
        .await
        .unwrap_or_default();
    render(&ContactPage {
        section: "contacts",
        viewer_name: located.viewer.name.clone(),
        can_write: located.viewer.can_write,
        location,
        csrf: located.csrf,
        contact,
        timeline,
        timeline_error,
        route,
        route_error,
        decisions,
        owner_error,
        accounts,
        moved: query.moved.is_some(),
    })
}

#[derive(Deserialize)]
pub struct MoveForm {
    location: String,
    phone: String,
    /// The account the contact's replies should leave from.
    account: String,
    #[serde(default)]
    csrf: String,
    /// `tags` to go back to the tags page.
    #[serde(default)]
    back: String,
}

/// `POST /app/contact/move` (form): the contact's replies leave from another account: that
/// account's tag is added (TagContact), then the other accounts' tags it carried are removed,
/// so the contact carries one account tag.
pub async fn move_contact(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<MoveForm>,
) -> Response {
    if let Err(response) = scoped::action(&dashboard, &headers, &form.location, &form.csrf) {
        return *response;
    }
    let accounts = match scoped::accounts(&dashboard, &form.location).await {
        Ok(accounts) => accounts,
        Err(response) => return response,
    };
    let Some(target) = accounts.iter().find(|a| a.account_id == form.account) else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "No such account",
            "Pick one of this location's accounts.",
        );
    };
    let tag = |tag: &str, remove: bool| pb::TagContactRequest {
        location_id: form.location.clone(),
        phone: form.phone.clone(),
        tag: tag.to_owned(),
        remove,
    };
    let contact = match contacts_client(&dashboard)
        .tag_contact(dashboard.request(tag(&target.tag, false)))
        .await
    {
        Ok(contact) => contact.into_inner(),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::NotFound | tonic::Code::InvalidArgument
            ) =>
        {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Not moved",
                status.message(),
            );
        }
        Err(status) => return scoped::unavailable("contact", &status),
    };
    for other in accounts
        .iter()
        .filter(|a| a.tag != target.tag && contact.tags.contains(&a.tag))
    {
        if let Err(status) = contacts_client(&dashboard)
            .tag_contact(dashboard.request(tag(&other.tag, true)))
            .await
        {
            return scoped::unavailable("contact", &status);
        }
    }
    let back = match form.back.as_str() {
        "tags" => format!("/app/tags?location={}&moved=1", form.location),
        _ => format!(
            "/app/contact?location={}&phone={}&moved=1",
            form.location,
            contact.phone.replace('+', "%2B")
        ),
    };
    Redirect::to(&back).into_response()
}

struct TagRow {
    account: session::Account,
    contacts: u64,
}

#[derive(Template)]
#[template(path = "tags.html")]
struct TagsPage {
    section: &'static str,
    viewer_name: String,
    locations: Vec<String>,
    location: String,
    csrf: String,
    can_write: bool,
    rows: Vec<TagRow>,
    untagged: u64,
    total: u64,
    moved: bool,
}

#[derive(Deserialize)]
pub struct TagsQuery {
    location: Option<String>,
    #[serde(default)]
    moved: Option<String>,
}

/// `GET /app/tags?location=…`: each account's tag and how many contacts carry it.
pub async fn tags(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<TagsQuery>,
) -> Response {
    let located = match scoped::page(&dashboard, &headers, query.location.as_deref()).await {
        Ok(located) => located,
        Err(response) => return response,
    };
    let accounts = match scoped::accounts(&dashboard, &located.location).await {
        Ok(accounts) => accounts,
        Err(response) => return response,
    };
    let counts = match contacts_client(&dashboard)
        .count_tags(dashboard.request(pb::CountTagsRequest {
            location_id: located.location.clone(),
        }))
        .await
    {
        Ok(counts) => counts.into_inner(),
        Err(status) => return scoped::unavailable("contacts", &status),
    };
    let rows = accounts
        .into_iter()
        .map(|account| TagRow {
            contacts: counts
                .tags
                .iter()
                .find(|t| t.tag == account.tag)
                .map_or(0, |t| t.contacts),
            account,
        })
        .collect();
    render(&TagsPage {
        section: "tags",
        viewer_name: located.viewer.name.clone(),
        can_write: located.viewer.can_write,
        locations: located.locations,
        location: located.location,
        csrf: located.csrf,
        rows,
        untagged: counts.untagged,
        total: counts.contacts,
        moved: query.moved.is_some(),
    })
}
