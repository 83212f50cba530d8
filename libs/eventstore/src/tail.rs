//! The last events of the log, kept in memory for the subscriptions of the process.
//!
//! Each subscription reading the log on its own costs the store a read per subscription for
//! every batch of appends (on SQLite a query or two each time a commit wakes it; on JetStream a
//! consumer each, which the server sends every matching message to, and which the process
//! parses again for each). The store keeps the last events instead, once: the SQLite store
//! those it has just committed, the JetStream store those its one consumer of the log's head
//! received ([`crate::jetstream::CatchUp::tail`]). A subscription takes the events of its
//! types after its own position from here while it is within what is kept, and reads the log
//! itself when it is further behind.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::watch;
use whatsnap_events::RecordedEvent;

use crate::{Result, StoreError};

/// One message of the log as kept: its event, or why it does not decode.
pub(crate) enum Slot {
    Event(RecordedEvent),
    /// A message that does not decode: it stops only a subscriber of its type (or of every
    /// type, or when it names none), as a consumer's would.
    Undecodable {
        position: u64,
        event_type: Option<String>,
        reason: String,
    },
}

impl Slot {
    pub(crate) fn position(&self) -> u64 {
        match self {
            Self::Event(event) => event.position,
            Self::Undecodable { position, .. } => *position,
        }
    }

    /// The event type the message names, if it names one.
    pub(crate) fn event_type(&self) -> Option<&str> {
        match self {
            Self::Event(event) => Some(&event.event_type),
            Self::Undecodable { event_type, .. } => event_type.as_deref(),
        }
    }
}

/// The last messages of the log: every one after `from` through `through`.
pub(crate) struct Kept {
    kept: usize,
    held: Mutex<Held>,
    /// How far what is kept reaches: every message up to it has been seen.
    through: watch::Sender<u64>,
}

struct Held {
    /// Every message of the log after `from` up to `through` is in `slots`.
    from: u64,
    slots: VecDeque<Slot>,
}

/// What a subscription took.
pub(crate) enum Taken {
    /// Every message after the position asked for through this one was looked at, and those
    /// wanted put in the subscription's hands (up to a message that does not decode, which is
    /// handed over on its own, as an error).
    Through(u64),
    /// What is kept starts after the position asked for: the messages up to `from` are to
    /// be read from the log.
    Behind { from: u64 },
}

impl Kept {
    /// Keeping the last `kept` messages (at least one), of a log read through `after`.
    pub(crate) fn new(kept: usize, after: u64) -> Self {
        Self {
            kept: kept.max(1),
            held: Mutex::new(Held {
                from: after,
                slots: VecDeque::new(),
            }),
            through: watch::channel(after).0,
        }
    }

    /// How far what is kept reaches.
    pub(crate) fn through(&self) -> u64 {
        *self.through.borrow()
    }

    /// Told each time what is kept reaches further.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.through.subscribe()
    }

    /// Takes into `ready` the messages after `after` that `wanted` picks, until `ready` holds
    /// `max`; `None` when nothing past `after` is kept yet.
    pub(crate) fn take(
        &self,
        after: u64,
        wanted: impl Fn(&Slot) -> bool,
        max: usize,
        ready: &mut VecDeque<RecordedEvent>,
    ) -> Result<Option<Taken>> {
        let held = self.held.lock().expect("kept lock");
        if after < held.from {
            return Ok(Some(Taken::Behind { from: held.from }));
        }
        let end = *self.through.borrow();
        if end <= after {
            return Ok(None);
        }
        let start = held.slots.partition_point(|slot| slot.position() <= after);
        let stopped = hand_over(held.slots.range(start..), after, wanted, max, ready)?;
        // Looked at up to the end: the messages of other subjects are not kept.
        Ok(Some(Taken::Through(stopped.unwrap_or(end))))
    }

    /// Keeps `slots`, the messages after the current end up to `through`, in order.
    pub(crate) fn extend(&self, slots: impl IntoIterator<Item = Slot>, through: u64) {
        let mut held = self.held.lock().expect("kept lock");
        held.slots.extend(slots);
        while held.slots.len() > self.kept {
            let dropped = held.slots.pop_front().expect("longer than kept");
            held.from = dropped.position();
        }
        // Moved under the lock: a take sees the end and the slots that reach it together.
        self.through.send_replace(through);
    }

    /// Forgets what is kept, to keep what follows `after` from now on.
    pub(crate) fn restart(&self, after: u64) {
        let mut held = self.held.lock().expect("kept lock");
        held.from = after;
        held.slots.clear();
        self.through.send_replace(after);
    }
}

/// Puts into `ready` the events of `slots` after position `after` that `wanted` picks, in order,
/// until `ready` holds `max`. Returns where it stopped short of the end of `slots` (the last
/// position looked at), or `None` when it looked at every one. A message that does not decode
/// and is wanted stops the take before it, and is an error once nothing precedes it: it stops
/// only the subscriptions that read its type, as on a consumer.
pub(crate) fn hand_over<'a>(
    slots: impl IntoIterator<Item = &'a Slot>,
    after: u64,
    wanted: impl Fn(&Slot) -> bool,
    max: usize,
    ready: &mut VecDeque<RecordedEvent>,
) -> Result<Option<u64>> {
    let mut through = after;
    for slot in slots.into_iter().filter(|slot| slot.position() > after) {
        if ready.len() >= max {
            return Ok(Some(through));
        }
        if wanted(slot) {
            match slot {
                Slot::Event(event) => ready.push_back(event.clone()),
                Slot::Undecodable {
                    position, reason, ..
                } => {
                    if ready.is_empty() {
                        return Err(StoreError::Corrupt {
                            position: *position,
                            reason: reason.clone(),
                        });
                    }
                    return Ok(Some(position - 1));
                }
            }
        }
        through = slot.position();
    }
    Ok(None)
}
