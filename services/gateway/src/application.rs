//! The gateway as a process runs it: built from the event store and the read-model database, it
//! holds the event log's gRPC API and the timeline read model, and serves the public HTTP edge
//! (health, readiness, webhooks, metrics) on a listener it is given until stopped.

use std::sync::Arc;

use sqlx::Any;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use whatsnap_eventstore::EventStore;
use whatsnap_eventstore::projection::Projection;
use whatsnap_proto::events::v1 as pb;
use whatsnap_rpc::ReadDb;

use crate::{Gateway, Readiness, Webhooks};

/// What the HTTP edge answers with, known once the process's projections and gRPC server are
/// set up.
pub struct HttpConfig {
    pub readiness: Readiness,
    pub webhooks: Webhooks,
    /// The assignment service, whose report `/metrics` shows.
    pub assignment: Option<tonic::transport::Channel>,
    /// The dashboard's pages.
    pub pages: axum::Router,
}

pub struct Application {
    gateway: Gateway,
}

impl Application {
    pub fn build(store: Arc<dyn EventStore>, db: ReadDb) -> Self {
        Self {
            gateway: Gateway::new(store, db),
        }
    }

    pub fn events_grpc(&self) -> pb::events_service_server::EventsServiceServer<Gateway> {
        self.gateway.events_grpc()
    }

    /// The read model the gateway keeps, for the process's projection runners.
    pub fn projections(&self) -> Vec<Arc<dyn Projection<Any>>> {
        vec![self.gateway.projection()]
    }

    /// Serves HTTP on `listener` until `shutdown`, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        listener: TcpListener,
        http: HttpConfig,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let routes = crate::router(http.readiness)
            .merge(crate::webhook_routes(http.webhooks))
            .merge(crate::metrics_routes(http.assignment))
            .merge(http.pages);
        axum::serve(listener, routes)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}
