//! The assignment service as a process runs it: built from the event store and the read-model
//! database, it holds the gRPC API, the read model to project and the decider, and runs the
//! decider until stopped.

use std::sync::Arc;

use sqlx::Any;
use tokio_util::sync::CancellationToken;
use whatsnap_eventstore::EventStore;
use whatsnap_eventstore::projection::Projection;
use whatsnap_proto::assignment::v1 as pb;
use whatsnap_rpc::ReadDb;

use crate::Assignment;

pub struct Application {
    assignment: Assignment,
    /// How far the decider has read the log, whichever run of it holds the work.
    decided_through: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Application {
    pub fn build(store: Arc<dyn EventStore>, db: ReadDb) -> Self {
        Self {
            assignment: Assignment::new(store, db),
            decided_through: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// `simulate` decides again at most this far back.
    pub fn max_simulate_window(mut self, window: std::time::Duration) -> Self {
        self.assignment = self.assignment.max_simulate_window(window);
        self
    }

    pub fn grpc(&self) -> pb::assignment_service_server::AssignmentServiceServer<Assignment> {
        self.assignment.grpc()
    }

    /// The read model the service keeps, for the process's projection runners.
    pub fn projections(&self) -> Vec<Arc<dyn Projection<Any>>> {
        vec![self.assignment.projection()]
    }

    /// The position up to which the decider has taken in the log (0 until it runs here), for
    /// `/readyz`'s and `/metrics`' lag.
    pub fn decided_through(&self) -> tokio::sync::watch::Receiver<u64> {
        self.decided_through.subscribe()
    }

    /// Decides every contact's owner as the log brings them, until `shutdown`.
    pub async fn run_until_stopped(&self, shutdown: CancellationToken) {
        let decider = self
            .assignment
            .decider()
            .progress(self.decided_through.clone());
        // Its own task, as every worker of the process has.
        let run = tokio::spawn(decider.run(shutdown.cancelled_owned()));
        if let Err(err) = run.await
            && err.is_panic()
        {
            std::panic::resume_unwind(err.into_panic());
        }
    }
}
