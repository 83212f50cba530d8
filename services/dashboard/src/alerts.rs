//! Alerts: what needs someone's attention in a location, each with what to do about it —
//! accounts down, accounts whose replies fail, GHL work waiting or set aside (SyncStatus), and
//! events a projection parked.

use askama::Template;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{Duration, Utc};
use serde::Deserialize;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::operations::v1 as operations;
use whatsnap_proto::session::v1 as session;

use crate::Dashboard;
use crate::pages::{problem, render};
use crate::scoped;

pub(crate) struct Alert {
    /// `bad` or `warn`.
    severity: &'static str,
    title: String,
    detail: String,
    todo: String,
    /// Set-aside GHL work the page can put back in the queue: (kind, subject); both empty for
    /// all of it.
    retry: Option<(String, String)>,
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    section: &'static str,
    viewer_name: String,
    locations: Vec<String>,
    location: String,
    csrf: String,
    can_write: bool,
    alerts: Vec<Alert>,
    retried: Option<u64>,
}

#[derive(Deserialize)]
pub struct AlertsQuery {
    location: Option<String>,
    retried: Option<u64>,
}

/// `GET /app/alerts?location=…`.
pub async fn page(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<AlertsQuery>,
) -> Response {
    let located = match scoped::page(&dashboard, &headers, query.location.as_deref()).await {
        Ok(located) => located,
        Err(response) => return response,
    };
    let location = located.location.clone();
    let mut alerts = Vec::new();

    let accounts = match scoped::accounts(&dashboard, &location).await {
        Ok(accounts) => accounts,
        Err(response) => return response,
    };
    // A Twilio number has no link to make: `added` is its working state.
    let waiting = |a: &&session::Account| {
        a.status != "connected"
            && !(a.status == "added" && a.kind == session::AccountKind::Twilio as i32)
    };
    for account in accounts.iter().filter(waiting) {
        let todo = match account.status.as_str() {
            "linking" | "added" => {
                "finish linking it from the Accounts page (scan the QR code or pair the device)"
            }
            "logged_out" => "link it again from the Accounts page: the phone logged whatsnap out",
            _ => "check the device or credentials, then reconnect it from the Accounts page",
        };
        let state = match account.status.as_str() {
            "added" => "not linked yet".to_owned(),
            "linking" => "waiting to be linked".to_owned(),
            "logged_out" => "logged out".to_owned(),
            other => other.replace('_', " "),
        };
        alerts.push(Alert {
            severity: "bad",
            title: format!("{} is {state}", account.name),
            detail: match account.status_reason.as_str() {
                "" => format!(
                    "Contacts tagged {} get no replies until it is back.",
                    account.tag
                ),
                reason => reason.to_owned(),
            },
            todo: todo.to_owned(),
            retry: None,
        });
    }

    // Not delivering, as session judged it from the account's receipts.
    for account in &accounts {
        let stream = crate::insights::account_stream(&dashboard, account).await;
        let latest = stream
            .iter()
            .rev()
            .find(|e| e.event_type == "AccountDeliveryChanged")
            .and_then(|e| serde_json::from_str::<serde_json::Value>(&e.payload_json).ok());
        if let Some(latest) = latest
            && latest.get("delivering").and_then(|d| d.as_bool()) == Some(false)
        {
            alerts.push(Alert {
                severity: "bad",
                title: format!("{} is not delivering", account.name),
                detail: latest
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .unwrap_or("its recent replies were not delivered")
                    .to_owned(),
                todo: "check the number with its provider (blocked, banned, out of credit); contacts can be moved to another account from Tags".to_owned(),
                retry: None,
            });
        }
    }

    // Replies that failed over the last week.
    let week = Utc::now() - Duration::days(7);
    if let Ok(traffic) = crate::insights::traffic(&dashboard, &location, week).await {
        for account in &accounts {
            let failed = traffic
                .failures_per_account
                .get(&account.account_id)
                .copied()
                .unwrap_or(0);
            if failed == 0 {
                continue;
            }
            let sent = traffic
                .sent_per_account
                .get(&account.account_id)
                .copied()
                .unwrap_or(0);
            alerts.push(Alert {
                severity: if failed >= sent { "bad" } else { "warn" },
                title: format!("{} is not delivering every reply", account.name),
                detail: format!(
                    "{failed} of {sent} replies failed in the last 7 days; the latest because: {}",
                    traffic
                        .last_failure
                        .get(&account.account_id)
                        .map(String::as_str)
                        .unwrap_or("no reason given")
                ),
                todo: "open a failed contact's timeline (Contacts) for each reason; check the account's number and balance with its provider".to_owned(),
                retry: None,
            });
        }
    }

    // GHL.
    match ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(
        dashboard.inner.services.clone(),
    )
    .sync_status(dashboard.request(ghlsync::SyncStatusRequest {
        location_id: location.clone(),
    }))
    .await
    {
        Ok(sync) => alerts.extend(ghl_alerts(&sync.into_inner())),
        Err(status) => alerts.push(Alert {
            severity: "warn",
            title: "GHL's queue cannot be read".to_owned(),
            detail: status.message().to_owned(),
            todo: "try again in a moment; if it stays, check the ghl-sync service".to_owned(),
            retry: None,
        }),
    }

    // Parked events of this location.
    if let Ok(parked) = operations::operations_service_client::OperationsServiceClient::new(
        dashboard.inner.services.clone(),
    )
    .list_parked(dashboard.request(operations::ListParkedRequest {
        include_resolved: false,
    }))
    .await
    {
        let prefix = format!("{location}.");
        for event in parked
            .into_inner()
            .events
            .into_iter()
            .filter(|e| e.stream_id.starts_with(&prefix))
        {
            alerts.push(Alert {
                severity: "warn",
                title: format!("A {} event was parked by {}", event.event_type, event.projection),
                detail: format!(
                    "After {} attempt(s), at {}: {}",
                    event.attempts, event.parked_at, event.reason
                ),
                todo: format!(
                    "fix the cause, then have an operator run `whatsnap parked retry {} {}` (or `skip` to leave it unapplied)",
                    event.projection, event.position
                ),
                retry: None,
            });
        }
    }

    render(&AlertsPage {
        section: "alerts",
        viewer_name: located.viewer.name.clone(),
        can_write: located.viewer.can_write,
        locations: located.locations,
        location,
        csrf: located.csrf,
        alerts,
        retried: query.retried,
    })
}

/// What the GHL queue's status asks of someone.
fn ghl_alerts(sync: &ghlsync::SyncStatusResponse) -> Vec<Alert> {
    let mut alerts = Vec::new();
    if sync.connection.is_empty() {
        alerts.push(Alert {
            severity: "bad",
            title: "GHL is not connected".to_owned(),
            detail: format!(
                "Contacts and messages wait in whatsnap ({} contact(s), {} message(s) so far){}.",
                sync.pending_contact_upserts,
                sync.pending_messages,
                match sync.waiting_because.as_str() {
                    "" => String::new(),
                    why => format!(": {why}"),
                }
            ),
            todo: "install the whatsnap app on this location in GHL, or connect a Private Integration token (`whatsnap ghl connect`)".to_owned(),
            retry: None,
        });
    } else if !sync.waiting_because.is_empty() {
        alerts.push(Alert {
            severity: "warn",
            title: "Work for GHL is waiting".to_owned(),
            detail: sync.waiting_because.clone(),
            todo: "it goes out by itself once the cause clears; if it stays, check the location's GHL connection".to_owned(),
            retry: None,
        });
    }
    if !sync.allowance_warning.is_empty() {
        alerts.push(Alert {
            severity: "warn",
            title: "GHL's daily allowance is running out".to_owned(),
            detail: format!(
                "{} ({} requests left today)",
                sync.allowance_warning, sync.daily_requests_left
            ),
            todo: "the rest goes out tomorrow; nothing is lost".to_owned(),
            retry: None,
        });
    }
    for item in &sync.set_aside {
        alerts.push(Alert {
            severity: "bad",
            title: format!("GHL refused a {}", item.kind.replace('_', " ")),
            detail: format!(
                "{} {}{}: {}",
                item.kind,
                item.subject_id,
                item.http_text(),
                item.reason
            ),
            todo:
                "fix what GHL says (a permission, a missing scope, a deleted contact), then retry"
                    .to_owned(),
            retry: Some((item.kind.clone(), item.subject_id.clone())),
        });
    }
    alerts
}

#[derive(Deserialize)]
pub struct RetryForm {
    location: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /app/alerts/retry` (form): set-aside GHL work back in the queue (RetrySetAside).
pub async fn retry(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<RetryForm>,
) -> Response {
    if let Err(response) = scoped::action(&dashboard, &headers, &form.location, &form.csrf) {
        return *response;
    }
    match ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(
        dashboard.inner.services.clone(),
    )
    .retry_set_aside(dashboard.request(ghlsync::RetrySetAsideRequest {
        location_id: form.location.clone(),
        kind: form.kind,
        subject_id: form.subject,
    }))
    .await
    {
        Ok(retried) => Redirect::to(&format!(
            "/app/alerts?location={}&retried={}",
            form.location,
            retried.into_inner().requeued
        ))
        .into_response(),
        Err(status) if status.code() == tonic::Code::InvalidArgument => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not retried",
            status.message(),
        ),
        Err(status) => scoped::unavailable("GHL queue", &status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_aside_work_is_an_alert_with_a_retry() {
        let alerts = ghl_alerts(&ghlsync::SyncStatusResponse {
            connection: "private_integration".into(),
            set_aside: vec![ghlsync::SetAsideItem {
                kind: "contact_upsert".into(),
                subject_id: "c1".into(),
                reason: "forbidden".into(),
                http_status: 403,
            }],
            ..Default::default()
        });
        assert_eq!(alerts.len(), 1);
        assert!(alerts[0].detail.contains("(HTTP 403): forbidden"));
        assert_eq!(
            alerts[0].retry,
            Some(("contact_upsert".to_owned(), "c1".to_owned()))
        );
        let unconnected = ghl_alerts(&ghlsync::SyncStatusResponse::default());
        assert_eq!(unconnected[0].title, "GHL is not connected");
    }
}
