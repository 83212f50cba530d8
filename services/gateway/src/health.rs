//! `/healthz` (the process is alive) and `/readyz` (the event store answers and every
//! projection of this process is within `max_lag` events of the log's head).

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

#[derive(Clone)]
pub struct Readiness {
    pub store: Arc<dyn EventStore>,
    /// Each projection of this process, with the position it has reached.
    pub projections: Vec<(String, watch::Receiver<u64>)>,
    pub max_lag: u64,
}

impl Readiness {
    /// Whether this process is ready, and the figures that say why.
    pub async fn check(&self) -> (bool, Value) {
        let head =
            match tokio::time::timeout(Duration::from_secs(2), self.store.head_position()).await {
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
                        json!({ "ready": false, "event_store": "no answer within 2 s" }),
                    );
                }
            };
        let mut ready = true;
        let mut projections = serde_json::Map::new();
        for (name, progress) in &self.projections {
            let position = *progress.borrow();
            let lag = head.saturating_sub(position);
            ready &= lag <= self.max_lag;
            projections.insert(name.clone(), json!({ "position": position, "lag": lag }));
        }
        (
            ready,
            json!({ "ready": ready, "head": head, "max_lag": self.max_lag, "projections": projections }),
        )
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

/// The gateway's HTTP routes.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}
