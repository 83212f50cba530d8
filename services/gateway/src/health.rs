//! `/healthz` (the process is alive) and `/readyz` (it can take traffic: the event store
//! answers). A projection that lags does not make a process unready — a restart with a backlog
//! would be taken out of the load balancer while it catches up, which is when it is needed; the
//! lag is in `/readyz`'s body and on `/metrics` (`whatsnap_projection_lag_events`), where an
//! alert watches it. When replicas share the projections, each reports the lag of those it runs.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::watch;
use whatsnap_eventstore::EventStore;
use whatsnap_eventstore::lease::Leases;
use whatsnap_telemetry::metrics::Sample;

/// How long `/readyz` waits for the event store.
const STORE_PATIENCE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Readiness {
    pub store: Arc<dyn EventStore>,
    /// Each projection of this process, and the assignment decider, with the position each
    /// has reached.
    pub projections: Vec<Follower>,
    /// When replicas share the work: which of them this one runs now (by their leases); the
    /// others' lag is another replica's to report.
    pub leases: Option<Arc<Leases<sqlx::Any>>>,
}

/// A reader of the log whose lag `/readyz` and `/metrics` show: a projection, or the
/// assignment decider.
#[derive(Clone)]
pub struct Follower {
    pub name: String,
    /// The lease a replica runs it under (`projection:<name>`, `workers:assignment`).
    pub lease: String,
    /// The position it has taken in the log up to.
    pub position: watch::Receiver<u64>,
}

impl Readiness {
    /// Whether this process is ready, and the figures that say why.
    pub async fn check(&self) -> (bool, Value) {
        let head = match tokio::time::timeout(STORE_PATIENCE, self.store.head_position()).await {
            Ok(Ok(head)) => head,
            Ok(Err(err)) => {
                return (
                    false,
                    json!({ "ready": false, "event_store": err.to_string() }),
                );
            }
            Err(_) => {
                return (
                    false,
                    json!({ "ready": false, "event_store": format!("no answer within {STORE_PATIENCE:?}") }),
                );
            }
        };
        let mut projections = serde_json::Map::new();
        for (name, position, lag) in self.lags(head) {
            projections.insert(name, json!({ "position": position, "lag": lag }));
        }
        (
            true,
            json!({ "ready": true, "head": head, "projections": projections }),
        )
    }

    /// Each projection's (and the decider's) name, position and lag behind `head`, of those
    /// this replica runs.
    fn lags(&self, head: u64) -> Vec<(String, u64, u64)> {
        let held = self.leases.as_ref().map(|leases| leases.held());
        self.projections
            .iter()
            .filter(|follower| {
                held.as_ref()
                    .is_none_or(|held| held.contains(&follower.lease))
            })
            .map(|follower| {
                let position = *follower.position.borrow();
                (
                    follower.name.clone(),
                    position,
                    head.saturating_sub(position),
                )
            })
            .collect()
    }

    /// Puts the log's head and each projection's position and lag on `/metrics`.
    pub fn export_metrics(&self) {
        let readiness = self.clone();
        whatsnap_telemetry::metrics::collect(move || {
            let readiness = readiness.clone();
            async move {
                let Ok(Ok(head)) =
                    tokio::time::timeout(STORE_PATIENCE, readiness.store.head_position()).await
                else {
                    return vec![Sample::gauge(
                        "whatsnap_event_store_up",
                        "Whether the event store answered the scrape within a second.",
                        vec![],
                        0.0,
                    )];
                };
                let mut samples = vec![
                    Sample::gauge(
                        "whatsnap_event_store_up",
                        "Whether the event store answered the scrape within a second.",
                        vec![],
                        1.0,
                    ),
                    Sample::gauge(
                        "whatsnap_log_head_position",
                        "The position of the last event in the log; its rate is events appended per second.",
                        vec![],
                        head as f64,
                    ),
                ];
                for (name, position, lag) in readiness.lags(head) {
                    samples.push(Sample::gauge(
                        "whatsnap_projection_position",
                        "The last log position a projection of this process has applied.",
                        vec![("projection", name.clone())],
                        position as f64,
                    ));
                    samples.push(Sample::gauge(
                        "whatsnap_projection_lag_events",
                        "How many events of the log a projection of this process has yet to apply.",
                        vec![("projection", name)],
                        lag as f64,
                    ));
                }
                samples
            }
        });
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, Json<Value>) {
    let (ready, body) = readiness.check().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// The health routes.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}
