//! [`SealingStore`]: the event store as every service sees it, sealing personal fields on
//! append and opening them on read.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use whatsnap_events::{AggregateKind, LocationId, NewEvent, RecordedEvent, StreamId};
use whatsnap_eventstore::{
    AppendOutcome, EventStore, ExpectedVersion, Result, StoreError, SubscribeFrom, Subscription,
    SubscriptionSource,
};

use crate::ERASED;
use crate::fields::{may_hold_sealed, open_all, sealed_field, sealed_key_ids, to_seal};
use crate::keys::{ContactKeys, KeyError, KeyState};

/// An event store whose events carry personal data sealed with each contact's key.
pub struct SealingStore {
    inner: Arc<dyn EventStore>,
    keys: Arc<ContactKeys>,
}

impl SealingStore {
    pub fn new(inner: Arc<dyn EventStore>, keys: Arc<ContactKeys>) -> Self {
        Self { inner, keys }
    }

    /// `inner`, its events opened as they are delivered.
    fn opening(&self, inner: Subscription) -> Subscription {
        let name = inner.name().to_owned();
        Subscription::new(
            name,
            Box::new(OpeningSource {
                inner,
                keys: self.keys.clone(),
            }),
        )
    }

    async fn seal(&self, location: &LocationId, mut event: NewEvent) -> Result<NewEvent> {
        let Some(found) = to_seal(location, &event.event_type, &event.payload) else {
            return Ok(event);
        };
        let key_id = found.key_id;
        let state =
            self.keys
                .for_sealing(location, key_id)
                .await
                .map_err(|e| StoreError::Backend {
                    context: "sealing personal data",
                    source: Box::new(e),
                })?;
        event.payload = Bytes::from(match state {
            KeyState::Live(key) => {
                found.sealed(|text| sealed_field(key_id, key.seal(text).as_str()))
            }
            // An erased contact's new data is not kept either.
            KeyState::Erased => found.sealed(|_| ERASED.to_owned()),
        });
        Ok(event)
    }
}

/// Opens the sealed fields of a recorded event: with its contact's key, or as [`ERASED`].
async fn open(keys: &ContactKeys, mut event: RecordedEvent) -> Result<RecordedEvent> {
    if !may_hold_sealed(&event.payload) {
        return Ok(event);
    }
    let corrupt = |reason: String| StoreError::Corrupt {
        position: event.position,
        reason,
    };
    let mut value: Value =
        serde_json::from_slice(&event.payload).map_err(|e| corrupt(e.to_string()))?;
    let location = event.location_id().clone();
    let mut states = Vec::new();
    for key_id in sealed_key_ids(&value) {
        let state = keys
            .for_opening(&location, key_id)
            .await
            .map_err(|e| match e {
                KeyError::Database(e) => StoreError::Backend {
                    context: "opening personal data",
                    source: Box::new(e),
                },
                other => corrupt(other.to_string()),
            })?
            .ok_or_else(|| corrupt(KeyError::Missing { contact_id: key_id }.to_string()))?;
        states.push((key_id, state));
    }
    let mut failed = None;
    open_all(&mut value, &mut |key_id, sealed| {
        let state = states.iter().find(|(id, _)| *id == key_id).map(|(_, s)| s);
        match state {
            Some(KeyState::Live(key)) => {
                match key.open(&whatsnap_secrets::Sealed::from_stored(sealed.to_owned())) {
                    Ok(opened) => opened.expose().to_owned(),
                    Err(err) => {
                        failed = Some(format!("a field of contact {key_id} does not open: {err}"));
                        String::new()
                    }
                }
            }
            _ => ERASED.to_owned(),
        }
    });
    if let Some(reason) = failed {
        return Err(corrupt(reason));
    }
    event.payload = Bytes::from(serde_json::to_vec(&value).expect("JSON values serialise"));
    Ok(event)
}

async fn open_each(keys: &ContactKeys, events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>> {
    let mut opened = Vec::with_capacity(events.len());
    for event in events {
        opened.push(open(keys, event).await?);
    }
    Ok(opened)
}

#[async_trait]
impl EventStore for SealingStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome> {
        let mut sealed = Vec::with_capacity(events.len());
        for event in events {
            sealed.push(self.seal(stream.location(), event).await?);
        }
        self.inner.append(stream, expected, sealed).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let events = self.inner.read_stream(stream, from_version, limit).await?;
        open_each(&self.keys, events).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let events = self.inner.read_all(after, limit).await?;
        open_each(&self.keys, events).await
    }

    async fn head_position(&self) -> Result<u64> {
        self.inner.head_position().await
    }

    async fn subscribe(&self, name: &str, from: SubscribeFrom) -> Result<Subscription> {
        let inner = self.inner.subscribe(name, from).await?;
        Ok(self.opening(inner))
    }

    async fn subscribe_to(
        &self,
        name: &str,
        from: SubscribeFrom,
        types: &'static [&'static str],
    ) -> Result<Subscription> {
        let inner = self.inner.subscribe_to(name, from, types).await?;
        Ok(self.opening(inner))
    }

    async fn watch(&self, kind: AggregateKind, after: u64) -> Result<Option<Subscription>> {
        let inner = self.inner.watch(kind, after).await?;
        Ok(inner.map(|inner| self.opening(inner)))
    }
}

/// A subscription whose events are opened as they are delivered.
struct OpeningSource {
    inner: Subscription,
    keys: Arc<ContactKeys>,
}

#[async_trait]
impl SubscriptionSource for OpeningSource {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        let events = self.inner.next_batch(max).await?;
        open_each(&self.keys, events).await
    }

    async fn checkpoint(&mut self, position: u64) -> Result<()> {
        self.inner.checkpoint(position).await
    }

    fn scanned(&self) -> Option<u64> {
        Some(self.inner.scanned())
    }
}
