use std::collections::VecDeque;

use async_trait::async_trait;
use whatsnap_events::RecordedEvent;

use crate::Result;

/// What a backend provides for a subscription.
#[async_trait]
pub trait SubscriptionSource: Send {
    /// Waits until at least one event is available, then returns up to `max` of them in
    /// position order.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>>;

    /// Durably records that every event up to and including `position` has been handled.
    async fn checkpoint(&mut self, position: u64) -> Result<()>;

    /// For a source that passes over events of types not asked for: the position it has read
    /// the log through, past the last event it delivered when only other types followed.
    /// `None` for a source that delivers every event.
    fn scanned(&self) -> Option<u64> {
        None
    }
}

/// A durable, named, catch-up subscription to the log: stored events first, then live ones.
/// Opened with [`crate::EventStore::subscribe_to`], it may deliver only the event types asked
/// for; [`Subscription::scanned`] then tells how far it has read past them.
pub struct Subscription {
    name: String,
    source: Box<dyn SubscriptionSource>,
    buffered: VecDeque<RecordedEvent>,
    /// The highest position checkpointed so far.
    checkpointed: u64,
    /// The position of the last event handed out.
    delivered: u64,
}

impl Subscription {
    pub fn new(name: impl Into<String>, source: Box<dyn SubscriptionSource>) -> Self {
        Self {
            name: name.into(),
            source,
            buffered: VecDeque::new(),
            checkpointed: 0,
            delivered: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next event, waiting for one to be appended if need be.
    pub async fn next(&mut self) -> Result<RecordedEvent> {
        // A filtered source may answer that it read past other types only.
        while self.buffered.is_empty() {
            self.buffered.extend(self.source.next_batch(256).await?);
        }
        let event = self.buffered.pop_front().expect("the loop above filled it");
        self.delivered = self.delivered.max(event.position);
        Ok(event)
    }

    /// Up to `max` events: those available now, waiting only if there are none. Empty only
    /// from a filtered subscription that has read past events of other types (see
    /// [`Subscription::scanned`]).
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        let max = max.max(1);
        let batch = match self.buffered.is_empty() {
            true => self.source.next_batch(max).await?,
            false => {
                let take = max.min(self.buffered.len());
                self.buffered.drain(..take).collect()
            }
        };
        if let Some(last) = batch.last() {
            self.delivered = self.delivered.max(last.position);
        }
        Ok(batch)
    }

    /// The position the subscription has read the log through: the last event it handed out,
    /// or further when it passed over events of types not asked for after it. Checkpointing
    /// it once the events handed out are handled moves past those too.
    pub fn scanned(&self) -> u64 {
        match self.buffered.is_empty() {
            true => self.source.scanned().unwrap_or(0).max(self.delivered),
            false => self.delivered,
        }
    }

    /// Records that every event up to and including `position` has been handled, so that the
    /// next subscription with this name starts after it. A position at or below one already
    /// checkpointed changes nothing: a checkpoint never moves backwards.
    pub async fn checkpoint(&mut self, position: u64) -> Result<()> {
        if position <= self.checkpointed {
            return Ok(());
        }
        self.source.checkpoint(position).await?;
        self.checkpointed = position;
        Ok(())
    }
}
