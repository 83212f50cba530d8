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
}

/// A durable, named, catch-up subscription to the whole log: stored events first, then live ones.
pub struct Subscription {
    name: String,
    source: Box<dyn SubscriptionSource>,
    buffered: VecDeque<RecordedEvent>,
    /// The highest position checkpointed so far.
    checkpointed: u64,
}

impl Subscription {
    pub fn new(name: impl Into<String>, source: Box<dyn SubscriptionSource>) -> Self {
        Self {
            name: name.into(),
            source,
            buffered: VecDeque::new(),
            checkpointed: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next event, waiting for one to be appended if need be.
    pub async fn next(&mut self) -> Result<RecordedEvent> {
        if self.buffered.is_empty() {
            self.buffered.extend(self.source.next_batch(256).await?);
        }
        // The source waits for at least one event, so the buffer is not empty here.
        Ok(self
            .buffered
            .pop_front()
            .expect("next_batch returns at least one event"))
    }

    /// Between 1 and `max` events: those available now, waiting only if there are none.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        let max = max.max(1);
        if self.buffered.is_empty() {
            return self.source.next_batch(max).await;
        }
        let take = max.min(self.buffered.len());
        Ok(self.buffered.drain(..take).collect())
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
