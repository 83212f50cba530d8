//! The ghl-sync service as a process runs it: built from the event store, the read-model
//! database and, when it talks to GHL, the worker's configuration, it holds the gRPC API, the
//! queue to project and the worker, and runs the worker until stopped.

use std::sync::{Arc, OnceLock};

use sqlx::Any;
use tokio_util::sync::CancellationToken;
use whatsnap_eventstore::EventStore;
use whatsnap_eventstore::projection::{Part, Projection};
use whatsnap_proto::ghlsync::v1 as pb;
use whatsnap_rpc::ReadDb;

use crate::{GhlSync, Worker, WorkerConfig};

pub struct Application {
    ghl_sync: GhlSync,
    /// The one worker of the process, made once configured (at the first run): the parts of
    /// the GHL work this process runs share it, and with it each connection's refresh lock.
    worker: OnceLock<Option<Arc<Worker>>>,
}

impl Application {
    /// Without a worker configuration, work waits and connecting is refused.
    pub fn build(store: Arc<dyn EventStore>, db: ReadDb, worker: Option<WorkerConfig>) -> Self {
        let ghl_sync = GhlSync::new(store, db);
        Self {
            ghl_sync: match worker {
                Some(config) => ghl_sync.with_client(config),
                None => ghl_sync,
            },
            worker: OnceLock::new(),
        }
    }

    /// Whether an OAuth redirect without a state (an install GHL's marketplace started)
    /// connects its location.
    pub fn with_installs_without_state(mut self, accept: bool) -> Self {
        self.ghl_sync = self.ghl_sync.with_installs_without_state(accept);
        self
    }

    /// The contacts' keys, which seal what the queue keeps of a person.
    pub fn with_contact_keys(mut self, keys: Arc<whatsnap_pii::ContactKeys>) -> Self {
        self.ghl_sync = self.ghl_sync.with_contact_keys(keys);
        self
    }

    /// Lets the worker look at its queue as soon as the queue's read model, kept by this
    /// process, moves (its runner's progress).
    pub fn queue_moves_with(&mut self, progress: tokio::sync::watch::Receiver<u64>) {
        self.ghl_sync.queue_moves_with(progress);
    }

    /// Wakes the worker by the queue's notifications in the PostgreSQL database at `url`
    /// (see [`GhlSync::hears_queue_moves`]); before the worker first runs.
    pub fn hears_queue_moves(&mut self, url: &str) {
        self.ghl_sync.hears_queue_moves(url);
    }

    /// Shares the renewal of tokens with the other replicas through `leases` (see
    /// [`GhlSync::share_tokens_with`]); before the worker first runs.
    pub fn share_tokens_with(&mut self, leases: Arc<whatsnap_eventstore::lease::Leases<Any>>) {
        self.ghl_sync.share_tokens_with(leases);
    }

    pub fn grpc(&self) -> pb::ghl_sync_service_server::GhlSyncServiceServer<GhlSync> {
        self.ghl_sync.grpc()
    }

    /// The read model the service keeps, for the process's projection runners.
    pub fn projections(&self) -> Vec<Arc<dyn Projection<Any>>> {
        vec![self.ghl_sync.projection()]
    }

    /// Drains the queue of work for GHL until `shutdown`, when there is a worker: that of the
    /// locations of `part` (see [`crate::pacing`]).
    pub async fn run_until_stopped(&self, part: Part, shutdown: CancellationToken) {
        let worker = self.worker.get_or_init(|| self.ghl_sync.worker());
        let Some(worker) = worker.clone() else {
            return;
        };
        // Its own task, as every worker of the process has.
        let run = tokio::spawn(worker.run_part(part, shutdown.cancelled_owned()));
        if let Err(err) = run.await
            && err.is_panic()
        {
            std::panic::resume_unwind(err.into_panic());
        }
    }
}
