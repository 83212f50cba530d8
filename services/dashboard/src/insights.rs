//! Insights, as pictures drawn on the server: messages per account and day, delivery failures
//! and their reasons, workload and first-response time per user, first-response time per
//! account (the assignment Report), and each account's uptime from its own event stream.
//!
//! Message counts come from the contacts' timelines (ContactHistory) of up to
//! [`crate::contacts::CONTACTS_READ`] contacts: no service keeps per-day message counts yet.

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Deserialize;
use whatsnap_proto::assignment::v1 as assignment;
use whatsnap_proto::display::minutes;
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::session::v1 as session;

use crate::Dashboard;
use crate::pages::render;
use crate::scoped;
use crate::svg::{self, Bar, Series};

/// What happened to a location's messages over a window, read from its contacts' timelines.
#[derive(Default)]
pub(crate) struct Traffic {
    /// (account id, day) → messages received and sent.
    pub per_account_day: HashMap<(String, NaiveDate), u64>,
    /// reason → replies that failed (not routed, or refused by the provider).
    pub failures: BTreeMap<String, u64>,
    /// account id → replies that failed from it.
    pub failures_per_account: HashMap<String, u64>,
    /// account id → the latest failure's reason.
    pub last_failure: HashMap<String, String>,
    /// account id → replies sent from it.
    pub sent_per_account: HashMap<String, u64>,
}

fn payload(event: &events::Event) -> serde_json::Value {
    serde_json::from_str(&event.payload_json).unwrap_or_default()
}

fn field(value: &serde_json::Value, name: &str) -> String {
    value
        .get(name)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

impl Traffic {
    /// Counts the message events of one contact's timeline that happened since `from`.
    pub(crate) fn add(&mut self, entries: &[events::HistoryEntry], from: DateTime<Utc>) {
        // The account each reply went out from (its route, then its sending), to charge a
        // failure to.
        let mut account_of: HashMap<String, String> = HashMap::new();
        for event in entries.iter().filter_map(|e| e.event.as_ref()) {
            let Ok(at) = DateTime::parse_from_rfc3339(&event.occurred_at) else {
                continue;
            };
            let at = at.with_timezone(&Utc);
            let body = payload(event);
            match event.event_type.as_str() {
                "OutboundMessageRouted" | "OutboundMessageSent" => {
                    account_of.insert(field(&body, "message_id"), field(&body, "account_id"));
                }
                _ => {}
            }
            if at < from {
                continue;
            }
            match event.event_type.as_str() {
                "InboundMessageReceived" => {
                    *self
                        .per_account_day
                        .entry((field(&body, "account_id"), at.date_naive()))
                        .or_default() += 1;
                }
                "OutboundMessageSent" => {
                    let account = field(&body, "account_id");
                    *self
                        .per_account_day
                        .entry((account.clone(), at.date_naive()))
                        .or_default() += 1;
                    *self.sent_per_account.entry(account).or_default() += 1;
                }
                "MessageFailed" | "OutboundRouteFailed" => {
                    let reason = match field(&body, "reason") {
                        r if r.is_empty() => "no reason given".to_owned(),
                        r => r,
                    };
                    *self.failures.entry(reason.clone()).or_default() += 1;
                    if let Some(account) = account_of.get(&field(&body, "message_id")) {
                        *self
                            .failures_per_account
                            .entry(account.clone())
                            .or_default() += 1;
                        self.last_failure.insert(account.clone(), reason);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The traffic of `location`'s contacts since `from`.
pub(crate) async fn traffic(
    dashboard: &Dashboard,
    location: &str,
    from: DateTime<Utc>,
) -> Result<Traffic, Response> {
    let contacts = crate::contacts::list(dashboard, location).await?;
    let mut client =
        events::events_service_client::EventsServiceClient::new(dashboard.inner.services.clone());
    let mut traffic = Traffic::default();
    for contact in contacts {
        // A contact without a timeline yet (its events not projected) counts as nothing.
        if let Ok(history) = client
            .contact_history(dashboard.request(events::ContactHistoryRequest {
                location_id: location.to_owned(),
                phone: contact.phone,
            }))
            .await
        {
            traffic.add(&history.into_inner().entries, from);
        }
    }
    Ok(traffic)
}

/// The share of `[from, now]` an account was connected, from its stream's events; `None` when
/// the stream says nothing about connection.
pub(crate) fn uptime(
    stream: &[events::Event],
    from: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<f64> {
    let mut up_since: Option<DateTime<Utc>> = None;
    let mut up = Duration::zero();
    let mut seen = false;
    for event in stream {
        let Ok(at) = DateTime::parse_from_rfc3339(&event.occurred_at) else {
            continue;
        };
        let at = at.with_timezone(&Utc).clamp(from, now);
        match event.event_type.as_str() {
            "AccountConnected" => {
                seen = true;
                up_since.get_or_insert(at);
            }
            "AccountDisconnected" | "AccountLoggedOut" | "AccountRemoved" => {
                seen = true;
                if let Some(since) = up_since.take() {
                    up += at - since;
                }
            }
            _ => {}
        }
    }
    if let Some(since) = up_since {
        up += now - since;
    }
    let window = (now - from).num_seconds().max(1) as f64;
    seen.then(|| (up.num_seconds() as f64 / window).clamp(0.0, 1.0))
}

/// The events of an account's own stream (its connection and delivery states).
pub(crate) async fn account_stream(
    dashboard: &Dashboard,
    account: &session::Account,
) -> Vec<events::Event> {
    events::events_service_client::EventsServiceClient::new(dashboard.inner.services.clone())
        .read_stream(dashboard.request(events::ReadStreamRequest {
            stream_id: format!("{}.account.{}", account.location_id, account.account_id),
            from_version: 1,
            limit: 1000,
        }))
        .await
        .map(|r| r.into_inner().events)
        .unwrap_or_default()
}

struct Legend {
    name: String,
    colour: &'static str,
    total: u64,
}

#[derive(Template)]
#[template(path = "insights.html")]
struct InsightsPage {
    section: &'static str,
    viewer_name: String,
    locations: Vec<String>,
    location: String,
    days: i64,
    messages_chart: String,
    legend: Vec<Legend>,
    failures_chart: Option<String>,
    /// Each failure reason in full (the chart shortens them), with its count.
    failure_reasons: Vec<(String, u64)>,
    workload_chart: Option<String>,
    user_response_chart: Option<String>,
    account_response_chart: Option<String>,
    uptime_chart: Option<String>,
    report_error: Option<String>,
}

#[derive(Deserialize)]
pub struct InsightsQuery {
    location: Option<String>,
    days: Option<i64>,
}

/// `GET /app/insights?location=…&days=…`.
pub async fn page(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<InsightsQuery>,
) -> Response {
    let located = match scoped::page(&dashboard, &headers, query.location.as_deref()).await {
        Ok(located) => located,
        Err(response) => return response,
    };
    let location = located.location.clone();
    let days = query.days.unwrap_or(14).clamp(1, 90);
    let now = Utc::now();
    let today = now.date_naive();
    let first_day = today - Duration::days(days - 1);
    let from = first_day
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc();
    let accounts = match scoped::accounts(&dashboard, &location).await {
        Ok(accounts) => accounts,
        Err(response) => return response,
    };
    let traffic = match traffic(&dashboard, &location, from).await {
        Ok(traffic) => traffic,
        Err(response) => return response,
    };
    let name_of = |id: &str| {
        accounts
            .iter()
            .find(|a| a.account_id == id)
            .map(|a| a.name.clone())
            .unwrap_or_else(|| format!("account {}", whatsnap_proto::display::short(id)))
    };

    // Messages per account and day.
    let day_list: Vec<NaiveDate> = (0..days).map(|i| first_day + Duration::days(i)).collect();
    let labels: Vec<String> = day_list
        .iter()
        .map(|d| d.format("%m-%d").to_string())
        .collect();
    let mut ids: Vec<String> = accounts.iter().map(|a| a.account_id.clone()).collect();
    for (account, _) in traffic.per_account_day.keys() {
        if !ids.contains(account) {
            ids.push(account.clone());
        }
    }
    let series: Vec<Series> = ids
        .iter()
        .map(|id| Series {
            name: name_of(id),
            values: day_list
                .iter()
                .map(|day| {
                    traffic
                        .per_account_day
                        .get(&(id.clone(), *day))
                        .copied()
                        .unwrap_or(0)
                })
                .collect(),
        })
        .collect();
    let legend = series
        .iter()
        .enumerate()
        .map(|(i, s)| Legend {
            name: s.name.clone(),
            colour: svg::colour(i),
            total: s.values.iter().sum(),
        })
        .collect();
    let messages_chart = svg::lines("Messages per account and day", &labels, &series);

    let count_bars = |title: &str, counts: Vec<(String, u64)>| {
        (!counts.is_empty()).then(|| {
            svg::bars(
                title,
                &counts
                    .into_iter()
                    .map(|(label, n)| Bar {
                        label,
                        value: n as f64,
                        text: n.to_string(),
                    })
                    .collect::<Vec<_>>(),
            )
        })
    };
    let mut failures: Vec<(String, u64)> = traffic.failures.into_iter().collect();
    failures.sort_by_key(|f| std::cmp::Reverse(f.1));
    let failure_reasons = failures.clone();
    let failures_chart = count_bars("Delivery failures by reason", failures);

    // The assignment report over the same window.
    let report = assignment::assignment_service_client::AssignmentServiceClient::new(
        dashboard.inner.services.clone(),
    )
    .report(dashboard.request(assignment::ReportRequest {
        location_id: location.clone(),
        since_seconds: (now - from).num_seconds().max(1) as u64,
    }))
    .await;
    let (report, report_error) = match report {
        Ok(report) => (report.into_inner(), None),
        Err(status) => (
            assignment::ReportResponse::default(),
            Some(status.message().to_owned()),
        ),
    };
    let workload_chart = count_bars(
        "Open contacts per user",
        report
            .open_contacts
            .iter()
            .map(|c| (c.key.clone(), c.count))
            .collect(),
    );
    let response_bars =
        |title: &str, list: &[assignment::ResponseTimes], name: &dyn Fn(&str) -> String| {
            let bars: Vec<Bar> = list
                .iter()
                .filter(|t| t.first_responses > 0)
                .map(|t| Bar {
                    label: name(&t.id),
                    value: t.average_seconds as f64,
                    text: format!(
                        "{} ({} replies)",
                        minutes(t.average_seconds),
                        t.first_responses
                    ),
                })
                .collect();
            (!bars.is_empty()).then(|| svg::bars(title, &bars))
        };
    let user_response_chart = response_bars(
        "Average first response per user",
        &report.users,
        &|id: &str| id.to_owned(),
    );
    let account_response_chart = response_bars(
        "Average first response per account",
        &report.accounts,
        &|id: &str| name_of(id),
    );

    let mut uptime_bars = Vec::new();
    for account in &accounts {
        if let Some(share) = uptime(&account_stream(&dashboard, account).await, from, now) {
            uptime_bars.push(Bar {
                label: account.name.clone(),
                value: share * 100.0,
                text: format!("{:.1}%", share * 100.0),
            });
        }
    }
    let uptime_chart =
        (!uptime_bars.is_empty()).then(|| svg::bars("Connected share of the window", &uptime_bars));

    render(&InsightsPage {
        section: "insights",
        viewer_name: located.viewer.name,
        locations: located.locations,
        location,
        days,
        messages_chart,
        legend,
        failures_chart,
        failure_reasons,
        workload_chart,
        user_response_chart,
        account_response_chart,
        uptime_chart,
        report_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, at: &str, payload: serde_json::Value) -> events::HistoryEntry {
        events::HistoryEntry {
            event: Some(events::Event {
                event_type: kind.into(),
                occurred_at: at.into(),
                payload_json: payload.to_string(),
                ..Default::default()
            }),
            summary: String::new(),
        }
    }

    #[test]
    fn traffic_counts_messages_per_account_and_day_and_failures_by_reason() {
        let from = "2026-12-01T00:00:00Z".parse().unwrap();
        let mut traffic = Traffic::default();
        traffic.add(
            &[
                event(
                    "InboundMessageReceived",
                    "2026-11-30T10:00:00Z",
                    serde_json::json!({"account_id": "a"}),
                ),
                event(
                    "InboundMessageReceived",
                    "2026-12-02T10:00:00Z",
                    serde_json::json!({"account_id": "a"}),
                ),
                event(
                    "OutboundMessageSent",
                    "2026-12-02T11:00:00Z",
                    serde_json::json!({"account_id": "a", "message_id": "m1"}),
                ),
                event(
                    "MessageFailed",
                    "2026-12-02T11:01:00Z",
                    serde_json::json!({"message_id": "m1", "reason": "unreachable"}),
                ),
            ],
            from,
        );
        let day = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        assert_eq!(traffic.per_account_day[&("a".to_owned(), day)], 2);
        assert_eq!(
            traffic.per_account_day.len(),
            1,
            "the message before the window is left out"
        );
        assert_eq!(traffic.failures["unreachable"], 1);
        assert_eq!(traffic.failures_per_account["a"], 1);
    }

    #[test]
    fn uptime_is_the_connected_share_of_the_window() {
        let at = |t: &str| events::Event {
            event_type: String::new(),
            occurred_at: t.into(),
            ..Default::default()
        };
        let kind = |mut e: events::Event, k: &str| {
            e.event_type = k.into();
            e
        };
        let from = "2026-12-01T00:00:00Z".parse().unwrap();
        let now = "2026-12-01T10:00:00Z".parse().unwrap();
        let stream = vec![
            kind(at("2026-11-30T00:00:00Z"), "AccountConnected"),
            kind(at("2026-12-01T05:00:00Z"), "AccountDisconnected"),
        ];
        assert_eq!(uptime(&stream, from, now), Some(0.5));
        assert_eq!(
            uptime(
                &[kind(at("2026-11-30T00:00:00Z"), "AccountAdded")],
                from,
                now
            ),
            None
        );
    }
}
