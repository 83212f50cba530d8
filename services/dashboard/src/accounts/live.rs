//! The pages' live updates, as server-sent events: the list's statuses (ListAccounts read every
//! couple of seconds: robust to accounts coming and going, one cheap query a viewer), and one
//! account's codes and status as linking goes on (its WatchAccount stream).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use whatsnap_proto::session::v1 as session;

use super::{
    LocationQuery, STREAM_LIFETIME, listing, refused, sessions, status_text, tone, viewer_of,
};
use crate::Dashboard;
use crate::pages::{forbidden, viewer};

/// How often the list is read for changes.
const LIST_POLL: Duration = Duration::from_secs(2);

/// How soon the browser opens a new stream after one ends.
const RETRY: Duration = Duration::from_secs(2);

type Events = mpsc::Sender<Result<Event, Infallible>>;

/// Streams what `produce` sends, until the browser goes away, the stream has lived its time or
/// the process stops.
fn stream<F>(dashboard: &Dashboard, produce: impl FnOnce(Events) -> F) -> Response
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(8);
    let shutdown = dashboard.inner.config.shutdown.clone();
    let work = produce(tx.clone());
    whatsnap_telemetry::metrics::count(
        "whatsnap_dashboard_live_streams_opened_total",
        "Live-update streams (server-sent events) the dashboard's pages opened.",
        Vec::new(),
        1.0,
    );
    tokio::spawn(async move {
        tokio::select! {
            () = work => {}
            () = tx.closed() => {}
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(STREAM_LIFETIME) => {}
        }
        whatsnap_telemetry::metrics::count(
            "whatsnap_dashboard_live_streams_closed_total",
            "Live-update streams that ended: the page was left, the stream lived its time, or the process stopped.",
            Vec::new(),
            1.0,
        );
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn event(name: &str, data: &impl Serialize) -> Result<Event, Infallible> {
    Ok(Event::default()
        .event(name)
        .retry(RETRY)
        .data(serde_json::to_string(data).expect("live updates serialize")))
}

#[derive(Serialize, PartialEq)]
struct LiveList {
    summary: String,
    at_limit: bool,
    accounts: Vec<LiveRow>,
}

#[derive(Serialize, PartialEq)]
struct LiveRow {
    id: String,
    status: String,
    tone: String,
    status_text: String,
    reason: String,
}

/// `GET /app/accounts/events[?location=…]`: the list's statuses, as they change.
pub async fn list_events(
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
    let reader = dashboard.clone();
    stream(&dashboard, move |tx| async move {
        let mut last = None;
        loop {
            // A failed read sends nothing: the page keeps what it shows until the next.
            if let Ok(listing) = listing(&reader, &viewer, selected.as_deref()).await {
                let live = LiveList {
                    summary: listing.summary(),
                    at_limit: listing.at_limit(),
                    accounts: listing
                        .accounts
                        .into_iter()
                        .map(|a| LiveRow {
                            id: a.account_id,
                            status_text: status_text(&a.status, a.kind),
                            tone: tone(&a.status, a.kind),
                            status: a.status,
                            reason: a.status_reason,
                        })
                        .collect(),
                };
                if last.as_ref() != Some(&live) {
                    if tx.send(event("accounts", &live)).await.is_err() {
                        return;
                    }
                    last = Some(live);
                }
            }
            tokio::time::sleep(LIST_POLL).await;
        }
    })
}

/// One account as its page shows it while it links.
#[derive(Serialize)]
pub(super) struct LiveAccount {
    pub status: String,
    pub tone: String,
    pub status_text: String,
    pub reason: String,
    pub number: String,
    /// The QR code to scan, when this update issued one, and it drawn as SVG.
    pub qr: String,
    pub qr_svg: String,
    pub pairing_code: String,
    pub expires_at_ms: i64,
}

impl From<session::AccountUpdate> for LiveAccount {
    fn from(update: session::AccountUpdate) -> Self {
        let account = update.account.unwrap_or_default();
        Self {
            status_text: status_text(&account.status, account.kind),
            tone: tone(&account.status, account.kind),
            status: account.status,
            reason: account.status_reason,
            number: account.phone_number,
            qr_svg: if update.qr_code.is_empty() {
                String::new()
            } else {
                crate::qr::svg(&update.qr_code).unwrap_or_default()
            },
            qr: update.qr_code,
            pairing_code: update.pairing_code,
            expires_at_ms: update.code_expires_at_ms,
        }
    }
}

/// `GET /app/accounts/{id}/events?location=…`: the account's codes and status, as they come.
pub async fn account_events(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<LocationQuery>,
) -> Response {
    let location = query.location().unwrap_or_default();
    if let Err(answer) = viewer_of(&dashboard, &headers, &location) {
        return answer.into_response();
    }
    let watch = sessions(&dashboard)
        .watch_account(dashboard.request(session::WatchAccountRequest {
            location_id: location,
            account_id: id,
        }))
        .await;
    let mut updates = match watch {
        Ok(updates) => updates.into_inner(),
        Err(status) => return refused(&status).into_response(),
    };
    stream(&dashboard, move |tx| async move {
        while let Ok(Some(update)) = updates.message().await {
            if tx
                .send(event("account", &LiveAccount::from(update)))
                .await
                .is_err()
            {
                return;
            }
        }
    })
}
