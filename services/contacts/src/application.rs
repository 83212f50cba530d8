//! The contacts service as a process runs it: built from the event store and the read-model
//! database, it holds the gRPC API, the read model to project (which also routes replies) and
//! the contacts stage (which decides on inbound messages and routes replies, in parts replicas
//! share); it has no
//! worker of its own.

use std::sync::Arc;

use sqlx::Any;
use tokio_util::sync::CancellationToken;
use whatsnap_eventstore::EventStore;
use whatsnap_eventstore::projection::{Part, Projection};
use whatsnap_proto::contacts::v1 as pb;
use whatsnap_rpc::ReadDb;

use crate::Contacts;

pub struct Application {
    contacts: Contacts,
    contact_parts: u32,
}

impl Application {
    pub fn build(store: Arc<dyn EventStore>, db: ReadDb) -> Self {
        Self {
            contacts: Contacts::new(store, db),
            contact_parts: 1,
        }
    }

    /// Splits the contacts stage into `parts` (at least one; see [`crate::ContactsStage`]).
    pub fn with_parts(mut self, parts: u32) -> Self {
        self.contact_parts = parts.max(1);
        self
    }

    /// The contacts' keys, which `EraseContact` destroys; without them erasing is refused.
    pub fn with_contact_keys(mut self, keys: Arc<whatsnap_pii::ContactKeys>) -> Self {
        self.contacts = self.contacts.with_contact_keys(keys);
        self
    }

    pub fn grpc(&self) -> pb::contacts_service_server::ContactsServiceServer<Contacts> {
        self.contacts.grpc()
    }

    /// Keeps the contacts the contacts stage decided on current from the log until `shutdown`
    /// (see [`Contacts::follow_contacts`]). Every replica runs it: the stage may move to any.
    pub async fn follow_contacts(&self, shutdown: CancellationToken) {
        self.contacts
            .follow_contacts(shutdown.cancelled_owned())
            .await
    }

    /// The read model the service keeps and the parts of the contacts stage, for the process's
    /// projection runners.
    pub fn projections(&self) -> Vec<Arc<dyn Projection<Any>>> {
        let mut projections: Vec<Arc<dyn Projection<Any>>> = vec![self.contacts.projection()];
        for part in Part::all(self.contact_parts) {
            projections.push(self.contacts.stage(part));
        }
        projections
    }
}
