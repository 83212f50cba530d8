//! The event store as the session service writes through it: an append to an account's
//! stream makes the accounts kept in memory forget that account, so that the service never
//! answers its own change with a state from before it (the accounts' follower brings another
//! process's change a moment later; this one's is known at once).

use std::sync::Arc;

use async_trait::async_trait;
use whatsnap_events::{AggregateKind, NewEvent, RecordedEvent, StreamId};
use whatsnap_eventstore::aggregate::Cache;
use whatsnap_eventstore::{
    AppendOutcome, EventStore, ExpectedVersion, Result, SubscribeFrom, Subscription,
};

use crate::account::AccountState;

pub(crate) struct AccountWrites {
    inner: Arc<dyn EventStore>,
    accounts: Arc<Cache<AccountState>>,
}

impl AccountWrites {
    pub(crate) fn new(inner: Arc<dyn EventStore>, accounts: Arc<Cache<AccountState>>) -> Self {
        Self { inner, accounts }
    }
}

#[async_trait]
impl EventStore for AccountWrites {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome> {
        let appended = self.inner.append(stream, expected, events).await;
        // Forgotten whatever the answer: an append that timed out may have been written.
        if stream.kind() == AggregateKind::Account {
            self.accounts.forget(stream);
        }
        appended
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream, from_version, limit).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        self.inner.read_all(after, limit).await
    }

    async fn head_position(&self) -> Result<u64> {
        self.inner.head_position().await
    }

    async fn subscribe(&self, name: &str, from: SubscribeFrom) -> Result<Subscription> {
        self.inner.subscribe(name, from).await
    }

    async fn subscribe_to(
        &self,
        name: &str,
        from: SubscribeFrom,
        types: &'static [&'static str],
    ) -> Result<Subscription> {
        self.inner.subscribe_to(name, from, types).await
    }

    async fn watch(&self, kind: AggregateKind, after: u64) -> Result<Option<Subscription>> {
        self.inner.watch(kind, after).await
    }
}
