//! The gateway as a process runs it: built from the event store and the read-model database, it
//! holds the event log's gRPC API and the timeline read model, and serves the public HTTP edge
//! (health, readiness, webhooks, metrics) on a listener it is given until stopped.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Any;
use tokio_util::sync::CancellationToken;
use whatsnap_eventstore::EventStore;
use whatsnap_eventstore::projection::Projection;
use whatsnap_proto::events::v1 as pb;
use whatsnap_rpc::ReadDb;

use crate::{ApiLimits, Gateway, MetricsConfig, Readiness, Webhooks};

/// What the HTTP edge answers with, known once the process's projections and gRPC server are
/// set up.
pub struct HttpConfig {
    pub readiness: Readiness,
    pub webhooks: Webhooks,
    /// Who may scrape `/metrics`, and the assignment service whose report it shows.
    pub metrics: MetricsConfig,
    pub limits: HttpLimits,
    /// The dashboard's pages.
    pub pages: axum::Router,
}

/// Bounds on the HTTP edge.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// How long a request may take, waiting for its turn included, before it is answered 503
    /// (which Twilio and engines retry).
    pub timeout: Duration,
    /// How many requests are handled at once; the others wait their turn.
    pub concurrency: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            concurrency: 256,
        }
    }
}

/// `routes` under the edge's limits: a request waits for one of `concurrency` turns, and one
/// that is not answered within `timeout` (waiting included) gets a 503.
pub fn limited(routes: axum::Router, limits: HttpLimits) -> axum::Router {
    routes
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.concurrency.max(1),
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            limits.timeout,
        ))
}

pub struct Application {
    gateway: Gateway,
}

impl Application {
    pub fn build(store: Arc<dyn EventStore>, db: ReadDb) -> Self {
        Self::with_limits(store, db, ApiLimits::default())
    }

    /// With bounds on the event log API other than the defaults.
    pub fn with_limits(store: Arc<dyn EventStore>, db: ReadDb, limits: ApiLimits) -> Self {
        Self {
            gateway: Gateway::with_limits(store, db, limits),
        }
    }

    pub fn events_grpc(&self) -> pb::events_service_server::EventsServiceServer<Gateway> {
        self.gateway.events_grpc()
    }

    /// The read model the gateway keeps, for the process's projection runners.
    pub fn projections(&self) -> Vec<Arc<dyn Projection<Any>>> {
        self.gateway.projections()
    }

    /// Serves HTTP on `listener` (TCP, or TLS over it) until `shutdown`, then lets in-flight
    /// requests finish.
    pub async fn run_until_stopped<L>(
        self,
        listener: L,
        http: HttpConfig,
        shutdown: CancellationToken,
    ) -> std::io::Result<()>
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let routes = crate::router(http.readiness)
            .merge(crate::webhook_routes(http.webhooks))
            .merge(crate::metrics_routes(http.metrics))
            .merge(http.pages);
        let routes = limited(routes, http.limits);
        axum::serve(listener, routes)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}
