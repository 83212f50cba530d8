//! Insights, as pictures drawn on the server: messages per account and day, delivery failures
//! and their reasons, workload and first-response time per user, first-response time per
//! account (the assignment Report), and each account's uptime from its own event stream.
//!
//! Message and failure counts come from the gateway's `traffic` read model (EventsService/
//! Traffic), kept per location, account and day as the events happen: a page costs the same
//! whatever the number of contacts.

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

/// What happened to a location's messages over a window.
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

impl Traffic {
    /// The counts the gateway keeps, as the pages use them.
    pub(crate) fn from_counts(counts: events::TrafficResponse) -> Self {
        let mut traffic = Self::default();
        for row in counts.days {
            let Ok(day) = NaiveDate::parse_from_str(&row.day, "%Y-%m-%d") else {
                continue;
            };
            *traffic
                .per_account_day
                .entry((row.account_id.clone(), day))
                .or_default() += row.received + row.sent;
            *traffic
                .sent_per_account
                .entry(row.account_id.clone())
                .or_default() += row.sent;
        }
        // Each account's latest reason is the one whose latest failure is latest in the log.
        let mut latest: HashMap<String, u64> = HashMap::new();
        for failed in counts.failures {
            *traffic.failures.entry(failed.reason.clone()).or_default() += failed.count;
            if failed.account_id.is_empty() {
                continue;
            }
            *traffic
                .failures_per_account
                .entry(failed.account_id.clone())
                .or_default() += failed.count;
            let newest = latest.entry(failed.account_id.clone()).or_default();
            if failed.last_position >= *newest {
                *newest = failed.last_position;
                traffic
                    .last_failure
                    .insert(failed.account_id, failed.reason);
            }
        }
        traffic
    }
}

/// The traffic of `location` from the day of `from` on, as the gateway counted it.
pub(crate) async fn traffic(
    dashboard: &Dashboard,
    location: &str,
    from: DateTime<Utc>,
) -> Result<Traffic, Response> {
    events::events_service_client::EventsServiceClient::new(dashboard.inner.services.clone())
        .traffic(dashboard.request(events::TrafficRequest {
            location_id: location.to_owned(),
            from_day: from.date_naive().to_string(),
        }))
        .await
        .map(|counts| Traffic::from_counts(counts.into_inner()))
        .map_err(|status| scoped::unavailable("traffic", &status))
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

    #[test]
    fn traffic_adds_up_messages_per_account_and_day_and_failures_by_reason() {
        let day = |account: &str, day: &str, received, sent| events::AccountDay {
            account_id: account.into(),
            day: day.into(),
            received,
            sent,
            failed: 0,
        };
        let failed = |account: &str, reason: &str, count, last_position| events::FailedReplies {
            account_id: account.into(),
            reason: reason.into(),
            count,
            last_position,
        };
        let traffic = Traffic::from_counts(events::TrafficResponse {
            days: vec![day("a", "2026-12-02", 1, 1), day("b", "2026-12-02", 3, 0)],
            failures: vec![
                failed("a", "the recipient opted out", 2, 40),
                failed("a", "unreachable", 1, 90),
                failed("", "no account carries the tag", 1, 50),
            ],
        });
        let on = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        assert_eq!(traffic.per_account_day[&("a".to_owned(), on)], 2);
        assert_eq!(traffic.per_account_day[&("b".to_owned(), on)], 3);
        assert_eq!(traffic.sent_per_account["a"], 1);
        assert_eq!(traffic.failures["the recipient opted out"], 2);
        assert_eq!(traffic.failures["no account carries the tag"], 1);
        assert_eq!(traffic.failures_per_account["a"], 3);
        assert_eq!(traffic.last_failure["a"], "unreachable");
        assert!(!traffic.failures_per_account.contains_key(""));
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
