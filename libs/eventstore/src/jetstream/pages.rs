//! Catching up a backlog on pages of the log read once for every subscription of the process.
//!
//! Each durable consumer has the server send its subscriber every message it matches: after a
//! rebuild, or a start with a backlog, the read models of several kinds of stream and the
//! assignment decider were each sent the whole log (550,000 messages for a log of 110,000). A
//! subscriber that keeps its own checkpoint ([`SubscribeFrom::AfterOwn`]) and starts further
//! behind the head than [`CatchUp::after`] reads the log in aligned pages instead, one batch
//! direct get each, which the subscriptions of the process share: the first to need a page
//! reads it (and asks for the next one ahead of time), the others wait for that read and take
//! the page from memory. A subscription does not run more than half the pages kept ahead of
//! the slowest one catching up beside it (it waits for it, up to [`PACE_WAIT`] a page, then
//! leaves it behind), so the pages the others still need are not dropped and read again. Within a page of
//! the head, the subscription takes its events from the head of the log the process follows
//! ([`super::tail`]), or, without one, from a durable consumer of its own created right after
//! the last page read.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, OnceCell};
use tracing::info;
use whatsnap_events::RecordedEvent;

use super::{JetStreamEventStore, JetStreamSubscription, asked_for};
use crate::tail::{Slot, Taken, hand_over};
use crate::{EventStore, Result, SubscribeFrom, SubscriptionSource};

/// How a subscription far behind the head catches up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// The backlog, in events, past which a subscriber keeping its own checkpoint reads the
    /// shared pages rather than a consumer of its own.
    pub after: u64,
    /// Events per page (one batch direct get: at most 1,000).
    pub page: u64,
    /// Pages kept in memory for the subscriptions that follow the first reader.
    pub pages_kept: usize,
    /// The last messages kept in memory by the one consumer of the log's head that the
    /// subscriptions of the process keeping their own checkpoint share (see `tail`); 0: each
    /// of them follows the head with a durable consumer of its own, and catches up on the
    /// pages only past [`Self::after`].
    pub tail: usize,
}

impl Default for CatchUp {
    /// Five pages of backlog; pages of 1,000 events, sixteen kept (a few MiB); the last
    /// 10,000 messages of the head kept.
    fn default() -> Self {
        Self {
            after: 5_000,
            page: 1_000,
            pages_kept: 16,
            tail: 10_000,
        }
    }
}

type Page = Arc<Vec<Slot>>;

/// How long a subscription ahead waits, for one page, for the slowest one catching up beside it
/// to come within the pages kept, before it leaves it behind for good (a read model stuck on a
/// failing event, or one that started much further back): that one reads the pages no longer
/// kept again, on its own.
const PACE_WAIT: Duration = Duration::from_secs(1);

/// The pages read lately, the most recently used last. A page is the messages from
/// `index * size + 1` to `(index + 1) * size`; only pages the log has filled are read.
pub(super) struct Pages {
    size: u64,
    kept: usize,
    recent: Mutex<VecDeque<(u64, Arc<OnceCell<Page>>)>>,
    /// The page each subscription catching up wants next, by its number; `None` once left
    /// behind (nobody waits for it any more).
    readers: Mutex<HashMap<u64, Option<u64>>>,
    next_reader: AtomicU64,
    /// Told each time a reader moves on or stops catching up.
    moved: Notify,
}

impl Pages {
    pub(super) fn new(config: &CatchUp) -> Self {
        Self {
            size: config.page.clamp(1, 1000),
            kept: config.pages_kept.max(2),
            recent: Mutex::default(),
            readers: Mutex::default(),
            next_reader: AtomicU64::new(0),
            moved: Notify::new(),
        }
    }

    /// A new subscription catching up, wanting page `index` first; its number.
    fn join(&self, index: u64) -> u64 {
        let reader = self.next_reader.fetch_add(1, Ordering::Relaxed);
        self.at(reader, index);
        reader
    }

    /// The reader wants page `index` next (one left behind stays so).
    fn at(&self, reader: u64, index: u64) {
        let mut readers = self.readers.lock().expect("readers lock");
        let at = readers.entry(reader).or_insert(Some(index));
        if at.is_some() {
            *at = Some(index);
        }
        self.moved.notify_waiters();
    }

    /// The reader stopped catching up (it follows its consumer, or was dropped).
    fn leave(&self, reader: u64) {
        let mut readers = self.readers.lock().expect("readers lock");
        readers.remove(&reader);
        self.moved.notify_waiters();
    }

    /// Waits until page `index` is within half the pages kept of the slowest other reader, for
    /// [`PACE_WAIT`] at most: a reader still further behind is then left behind for good.
    async fn keep_pace(&self, reader: u64, index: u64) {
        let window = (self.kept / 2) as u64;
        let deadline = tokio::time::Instant::now() + PACE_WAIT;
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            // Registered before looking, so a move in between is not missed.
            moved.as_mut().enable();
            let slowest = {
                let readers = self.readers.lock().expect("readers lock");
                readers
                    .iter()
                    .filter(|(other, _)| **other != reader)
                    .filter_map(|(other, at)| at.map(|at| (*other, at)))
                    .min_by_key(|(_, at)| *at)
            };
            let Some((slowest, _)) = slowest.filter(|(_, at)| index >= at + window) else {
                return;
            };
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                let mut readers = self.readers.lock().expect("readers lock");
                if let Some(left_behind) = readers.get_mut(&slowest) {
                    *left_behind = None;
                }
            }
        }
    }

    /// The page `index`: from memory, from a read under way, or read now.
    async fn get(&self, store: &JetStreamEventStore, index: u64) -> Result<Page> {
        let cell = {
            let mut recent = self.recent.lock().expect("pages lock");
            let cell = match recent.iter().position(|(i, _)| *i == index) {
                Some(at) => recent.remove(at).expect("position found above").1,
                None => Arc::default(),
            };
            recent.push_back((index, cell.clone()));
            if recent.len() > self.kept {
                recent.pop_front();
            }
            cell
        };
        let page = cell
            .get_or_try_init(|| async {
                let first = index * self.size + 1;
                store
                    .read_page(first, first + self.size - 1)
                    .await
                    .map(Arc::new)
            })
            .await?;
        Ok(page.clone())
    }

    /// Has page `index` read in the background, for the subscription that will want it next.
    fn read_ahead(store: &JetStreamEventStore, index: u64) {
        let store = store.clone();
        tokio::spawn(async move {
            // A failure here is met again, and reported, by the subscription that wants it.
            let _ = store.pages.get(&store, index).await;
        });
    }
}

/// A subscription catching up on the shared pages, then following its durable consumer.
pub(super) struct CatchingUp {
    store: JetStreamEventStore,
    name: String,
    only: Option<&'static [&'static str]>,
    /// The log is read through here: the end of the last page taken, or the start.
    scanned: u64,
    /// The log's head, as last asked.
    head: u64,
    /// Events of the last page not handed over yet.
    ready: VecDeque<RecordedEvent>,
    /// The durable consumer's source, once within a page of the head (without a tail).
    live: Option<JetStreamSubscription>,
    /// Whether it takes its events from the process's tail of the log (within a page of the
    /// head, until it falls behind what the tail keeps).
    following: bool,
    /// Its number among the readers of the pages.
    reader: u64,
}

impl CatchingUp {
    pub(super) fn new(
        store: JetStreamEventStore,
        name: &str,
        after: u64,
        head: u64,
        only: Option<&'static [&'static str]>,
    ) -> Self {
        let reader = store.pages.join(after / store.pages.size);
        Self {
            store,
            name: name.to_owned(),
            only,
            scanned: after,
            head,
            ready: VecDeque::new(),
            live: None,
            following: false,
            reader,
        }
    }

    /// Takes the events asked for from the page that holds the position after
    /// [`Self::scanned`], which ends at `end`. A message that does not decode and is asked
    /// for stops the take before it, and is an error once nothing precedes it.
    fn take(&mut self, page: &[Slot], end: u64) -> Result<()> {
        let only = self.only;
        let wanted = |slot: &Slot| asked_for(only, slot.event_type());
        let stopped = hand_over(page, self.scanned, wanted, usize::MAX, &mut self.ready)?;
        self.scanned = stopped.unwrap_or(end);
        Ok(())
    }
}

impl Drop for CatchingUp {
    fn drop(&mut self) {
        self.store.pages.leave(self.reader);
    }
}

#[async_trait]
impl SubscriptionSource for CatchingUp {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        let size = self.store.pages.size;
        loop {
            if let Some(live) = &mut self.live {
                return live.next_batch(max).await;
            }
            if !self.ready.is_empty() {
                let take = max.clamp(1, self.ready.len());
                return Ok(self.ready.drain(..take).collect());
            }
            if self.following {
                let tail = self.store.tail.as_ref().expect("following a tail");
                match tail
                    .take(self.scanned, self.only, max, &mut self.ready)
                    .await?
                {
                    Taken::Through(through) => self.scanned = through,
                    // Started after this one's position by another subscription: the gap,
                    // at most a page, is read at once.
                    Taken::Behind { from } if from - self.scanned <= size => {
                        let gap = self.store.read_page(self.scanned + 1, from).await?;
                        self.take(&gap, from)?;
                    }
                    Taken::Behind { from } => {
                        info!(
                            subscription = self.name,
                            scanned = self.scanned,
                            kept_from = from,
                            "fell behind the head of the log kept in memory; catching up on the shared pages"
                        );
                        self.following = false;
                        self.store.pages.at(self.reader, self.scanned / size);
                        continue;
                    }
                }
                // Only other types taken: the caller learns how far the log was read.
                if self.ready.is_empty() && self.only.is_some() {
                    return Ok(Vec::new());
                }
                continue;
            }
            let index = self.scanned / size;
            let end = (index + 1) * size;
            if let Some(tail) = &self.store.tail {
                self.head = self.head.max(tail.through());
            }
            if end > self.head {
                self.head = self.store.head_position().await?;
            }
            if end > self.head {
                info!(
                    subscription = self.name,
                    scanned = self.scanned,
                    head = self.head,
                    "caught up on the shared pages; following the head of the log"
                );
                self.store.pages.leave(self.reader);
                match &self.store.tail {
                    Some(tail) => {
                        tail.follow(&self.store, self.scanned);
                        self.following = true;
                    }
                    None => {
                        let from = SubscribeFrom::AfterOwn(self.scanned);
                        let live = self.store.durable_source(&self.name, from, self.only);
                        self.live = Some(live.await?);
                    }
                }
                continue;
            }
            self.store.pages.keep_pace(self.reader, index).await;
            let page = self.store.pages.get(&self.store, index).await?;
            if end + size <= self.head {
                Pages::read_ahead(&self.store, index + 1);
            }
            self.take(&page, end)?;
            self.store.pages.at(self.reader, self.scanned / size);
            // Only other types on the page: the caller learns how far the log was read.
            if self.ready.is_empty() && self.only.is_some() {
                return Ok(Vec::new());
            }
        }
    }

    /// Only a hint while catching up (the subscriber keeps its own checkpoint): the consumer
    /// starts after the pages read, and takes checkpoints from then on.
    async fn checkpoint(&mut self, position: u64) -> Result<()> {
        match &mut self.live {
            Some(live) => live.checkpoint(position).await,
            None => Ok(()),
        }
    }

    fn scanned(&self) -> Option<u64> {
        match &self.live {
            Some(live) => live.scanned(),
            // Every event before the first one not handed over was handed or passed over.
            None => Some(self.ready.front().map_or(self.scanned, |e| e.position - 1)),
        }
    }
}
