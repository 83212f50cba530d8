//! The session service as a process runs it: built from its configuration, the event store and
//! the read-model database, it holds the gRPC API, the read models to project and the workers
//! (the sender of replies, the poster of alerts, the supervisor of live links), and runs the
//! workers until stopped; and it keeps the accounts it has loaded current.

use std::sync::Arc;

use sqlx::Any;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use whatsnap_eventstore::EventStore;
use whatsnap_eventstore::projection::Projection;
use whatsnap_proto::session::v1 as pb;
use whatsnap_rpc::ReadDb;

use crate::{Session, SessionConfig};

pub struct Application {
    session: Session,
}

impl Application {
    pub fn build(store: Arc<dyn EventStore>, db: ReadDb, config: SessionConfig) -> Self {
        Self {
            session: Session::new(store, db, config),
        }
    }

    pub fn grpc(&self) -> pb::session_service_server::SessionServiceServer<Session> {
        self.session.grpc()
    }

    /// The read models the service keeps, for the process's projection runners: the accounts,
    /// the queue of replies, and the alerts when they go somewhere.
    pub fn projections(&self) -> Vec<Arc<dyn Projection<Any>>> {
        let mut projections: Vec<Arc<dyn Projection<Any>>> =
            vec![self.session.projection(), self.session.send_queue()];
        if let Some(queue) = self.session.alert_queue() {
            projections.push(queue);
        }
        projections
    }

    /// Keeps the accounts this process has loaded current from the log until `shutdown`, so
    /// that a message's account is answered from memory. Every replica serving the API runs
    /// it (not under a lease): each keeps its own accounts.
    pub async fn follow_accounts(&self, shutdown: CancellationToken) {
        self.session
            .clone()
            .follow_accounts(shutdown.cancelled_owned())
            .await
    }

    /// Sends the queued replies and supervises the live links until `shutdown`; a worker that
    /// panics takes the caller down with it.
    pub async fn run_until_stopped(&self, shutdown: CancellationToken) {
        let mut workers = JoinSet::new();
        let worker = self.session.send_worker();
        workers.spawn(worker.run(shutdown.clone().cancelled_owned()));
        if let Some(alerts) = self.session.alerts() {
            workers.spawn(alerts.run(shutdown.clone().cancelled_owned()));
        }
        let supervisor = self.session.supervisor();
        workers.spawn(supervisor.run(shutdown.cancelled_owned()));
        join_all(workers).await;
    }
}

/// Waits for every worker, passing a panic on.
async fn join_all(mut workers: JoinSet<()>) {
    while let Some(joined) = workers.join_next().await {
        if let Err(err) = joined
            && err.is_panic()
        {
            std::panic::resume_unwind(err.into_panic());
        }
    }
}
