//! The head of the log, followed once for every subscription of the process.
//!
//! A durable consumer per subscription has the server send each read model of several kinds
//! of stream every message of the log, and each subscription decode each: with a dozen read
//! models, the contacts stage's parts and the assignment decider in one process, an event
//! crossed the connection and was parsed eight to ten times. The subscriptions that keep their
//! own checkpoint ([`SubscribeFrom::AfterOwn`](crate::SubscribeFrom::AfterOwn)) follow the
//! head of the log here instead: one ordered consumer of every subject, started at the first
//! subscription's position, whose messages are decoded once and kept, the last
//! [`CatchUp::tail`](super::CatchUp::tail) of them, for each subscription to take those of the
//! types it reads. A subscription further behind than what is kept reads the shared pages
//! again, as it did to catch up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{consumer::DeliverPolicy, consumer::pull, stream};
use futures::{FutureExt, StreamExt};
use tracing::{info, warn};
use whatsnap_events::RecordedEvent;

use super::{JetStreamEventStore, asked_for, decode_slot};
use crate::tail::{Kept, Taken};
use crate::{Result, StoreError};

/// The last messages of the log, and the task that receives them.
pub(super) struct Tail {
    kept: Arc<Kept>,
    /// The follower, once a subscription asked for the tail; stopped with the store.
    follower: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Tail {
    /// A tail keeping the last `kept` messages.
    pub(super) fn new(kept: usize) -> Self {
        Self {
            kept: Arc::new(Kept::new(kept, 0)),
            follower: Mutex::new(None),
        }
    }

    /// Starts following the log after position `after`, unless it is followed already.
    pub(super) fn follow(&self, store: &JetStreamEventStore, after: u64) {
        let mut follower = self.follower.lock().expect("follower lock");
        if follower.is_some() {
            return;
        }
        self.kept.restart(after);
        info!(
            after,
            "following the head of the log for this process's subscriptions"
        );
        let task = tokio::spawn(follow(
            self.kept.clone(),
            store.stream.clone(),
            store.prefix.clone(),
            store.every_subject(),
        ));
        *follower = Some(task.abort_handle());
    }

    /// How far the tail holds the log (0 before it follows it).
    pub(super) fn through(&self) -> u64 {
        self.kept.through()
    }

    /// Takes into `ready` the events of `only` after position `after`, until `ready` holds
    /// `max` of them; waits while the tail holds nothing past `after`.
    pub(super) async fn take(
        &self,
        after: u64,
        only: Option<&'static [&'static str]>,
        max: usize,
        ready: &mut VecDeque<RecordedEvent>,
    ) -> Result<Taken> {
        let mut grown = self.kept.subscribe();
        loop {
            // Marked seen before looking, so a message arriving in between wakes the wait.
            grown.borrow_and_update();
            let wanted = |slot: &crate::tail::Slot| asked_for(only, slot.event_type());
            if let Some(taken) = self.kept.take(after, wanted, max, ready)? {
                return Ok(taken);
            }
            grown.changed().await.map_err(|_| {
                StoreError::SubscriptionClosed("the store following the log was dropped".into())
            })?;
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if let Some(follower) = self.follower.lock().expect("follower lock").take() {
            follower.abort();
        }
    }
}

/// How long the follower waits before it follows the log again after its consumer failed: at
/// first, doubling while it keeps failing without receiving anything, up to the longest.
const REFOLLOW_AFTER: Duration = Duration::from_millis(500);
const REFOLLOW_AFTER_AT_MOST: Duration = Duration::from_secs(10);

/// Receives every message after the tail's end, for ever: an ordered consumer (the server
/// keeps nothing for it; the client makes it again after a gap), made again after a failure
/// from where the tail ends.
async fn follow(kept: Arc<Kept>, stream: stream::Stream, prefix: String, subjects: String) {
    let mut wait = REFOLLOW_AFTER;
    loop {
        let after = kept.through();
        let Err(err) = follow_from(&kept, &stream, &prefix, &subjects, after).await;
        if kept.through() > after {
            wait = REFOLLOW_AFTER;
        }
        warn!(
            after = kept.through(),
            error = %err,
            retry_in_ms = wait.as_millis() as u64,
            "following the head of the log failed; following it again"
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(REFOLLOW_AFTER_AT_MOST);
    }
}

async fn follow_from(
    kept: &Kept,
    stream: &stream::Stream,
    prefix: &str,
    subjects: &str,
    after: u64,
) -> std::result::Result<std::convert::Infallible, String> {
    let deliver_policy = match after {
        0 => DeliverPolicy::All,
        after => DeliverPolicy::ByStartSequence {
            start_sequence: after + 1,
        },
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects.to_owned(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let first = messages
            .next()
            .await
            .ok_or("the consumer stopped")?
            .map_err(|e| e.to_string())?;
        // What has arrived with it, in one go: the subscriptions are woken once for them.
        let mut received = vec![first];
        while received.len() < 1000 {
            match messages.next().now_or_never() {
                Some(Some(Ok(message))) => received.push(message),
                Some(Some(Err(e))) => return Err(e.to_string()),
                Some(None) => return Err("the consumer stopped".into()),
                None => break,
            }
        }
        let mut slots = Vec::with_capacity(received.len());
        let mut through = 0;
        for message in received {
            let sequence = message.info().map_err(|e| e.to_string())?.stream_sequence;
            through = sequence;
            let message = message.split().0;
            slots.push(decode_slot(
                prefix,
                message.subject.as_str(),
                sequence,
                message.headers.as_ref(),
                message.payload,
            ));
        }
        kept.extend(slots, through);
    }
}
