//! The whatsnap event store: one append-only log of [`RecordedEvent`]s, split into one stream per
//! aggregate, behind the [`EventStore`] trait, with two backends of the same semantics:
//!
//! - [`sqlite::SqliteEventStore`], the embedded default: one SQLite file in WAL mode, subscribers
//!   woken in-process the moment an append commits;
//! - [`jetstream::JetStreamEventStore`], the distributed one: one JetStream stream, a subject per
//!   aggregate, optimistic concurrency checked by the server, durable pull consumers.
//!
//! Both pass the conformance suite in `tests/conformance.rs`. Read models are built from the log
//! by the [`projection`] runner, which keeps its checkpoint in the read model's own transaction
//! and sets aside ([`parked`]) an event a projection keeps failing on. Services write through
//! [`aggregate`]: load a stream, fold it, decide, append at the expected version, retry on a
//! conflict.

use std::fmt;

use async_trait::async_trait;
use whatsnap_events::Event;
pub use whatsnap_events::{AggregateKind, EventId, NewEvent, RecordedEvent, StreamId};

pub mod aggregate;
pub mod jetstream;
pub mod lease;
pub mod parked;
pub mod projection;
pub mod rows;
pub mod sqlite;
mod subscription;
mod tail;
pub mod transaction;

pub use aggregate::{Aggregate, AggregateError, Aggregates, LoadError, Loaded, Updated};
pub use subscription::{Subscription, SubscriptionSource};

/// The most events one append may carry; JetStream's atomic batches hold at most 1,000.
pub const MAX_EVENTS_PER_APPEND: usize = 1000;

/// What the writer believes the stream's current version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have this version (versions start at 1).
    Exact(u64),
}

impl ExpectedVersion {
    /// The version the writer expects, where it names one: `NoStream` is version 0.
    fn as_version(self) -> Option<u64> {
        match self {
            Self::Any => None,
            Self::NoStream => Some(0),
            Self::Exact(v) => Some(v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeFrom {
    /// After the subscription's durable checkpoint, or from the beginning if it has none.
    Checkpoint,
    /// After this position (0 is the beginning); the durable checkpoint is moved here.
    After(u64),
    /// After this position, for a subscriber that keeps its own checkpoint (a read model, in
    /// its database; the assignment decider, in its snapshot) and always says where to start:
    /// the store's durable checkpoint is only a hint, moved once the subscription is live and
    /// without waiting for the store to confirm it (SQLite keeps none: a synced write of the
    /// log's file per batch), so a store may catch up a backlog its own way (JetStream reads it
    /// in pages shared by the subscriptions of the process, see [`jetstream::CatchUp`]).
    AfterOwn(u64),
}

/// What an append stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The stream's version after the append: the version of its last event.
    pub version: u64,
    /// The position of the last event appended.
    pub position: u64,
    /// True when every event had already been stored by an earlier append with the same event
    /// ids, so nothing was written this time.
    pub already_stored: bool,
}

/// Everything that can go wrong with the store. Conflicts and bad requests are distinct from
/// backend failures so that a caller knows what to retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream} is at version {actual}, the append expected {expected}")]
    WrongExpectedVersion {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: u64,
    },
    #[error(
        "stream {stream}: some of the appended event ids were stored earlier and some were not ({detail})"
    )]
    PartiallyStored { stream: StreamId, detail: String },
    #[error("invalid append to {stream}: {reason}")]
    InvalidAppend { stream: StreamId, reason: String },
    #[error("invalid subscription name {name:?}: {reason}")]
    InvalidSubscriptionName { name: String, reason: &'static str },
    #[error("the event store cannot start: {0}")]
    Unsupported(String),
    #[error("stored event at position {position} is unreadable: {reason}")]
    Corrupt { position: u64, reason: String },
    #[error("the subscription ended: {0}")]
    SubscriptionClosed(String),
    #[error("{context}: {source}")]
    Backend {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    pub(crate) fn backend(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Backend {
            context,
            source: source.into(),
        }
    }

    /// True for a concurrency conflict, which a caller resolves by reloading and deciding again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::WrongExpectedVersion { .. })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The one interface every service writes and reads events through.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream`, all or none, if the stream is at `expected`.
    ///
    /// Idempotent by event id: appending events whose ids are already stored in this stream, in
    /// this order, succeeds without writing (`already_stored`). A conflict is
    /// [`StoreError::WrongExpectedVersion`]; nothing is ever overwritten.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome>;

    /// Reads up to `limit` events of one stream, starting at version `from_version` (1 is the
    /// first event), in version order.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// Reads up to `limit` events of every stream after position `after`, in position order.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>>;

    /// Reads up to `limit` events of the streams of one `kind` after position `after`, in
    /// position order, passing over the others where the store can without reading them (the
    /// embedded store in its query, JetStream on the server). Empty once none is left.
    async fn read_kind(
        &self,
        kind: AggregateKind,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let (mut after, mut found) = (after, Vec::new());
        while found.len() < limit {
            let page = self.read_all(after, limit.max(100)).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            let of_kind = page.into_iter().filter(|e| e.stream.kind() == kind);
            found.extend(of_kind.take(limit - found.len()));
        }
        Ok(found)
    }

    /// The position of the last event in the log (0 when it is empty).
    async fn head_position(&self) -> Result<u64>;

    /// Opens the durable subscription `name`: it delivers every event after its start, first the
    /// stored ones, then each new one as it is appended. [`Subscription::checkpoint`] records
    /// progress so that a later subscription of the same name resumes after it.
    async fn subscribe(&self, name: &str, from: SubscribeFrom) -> Result<Subscription>;

    /// Opens the durable subscription `name` for the events of `types` only: the store passes
    /// over the others where it can without handing them over (the embedded store in its
    /// query, JetStream's before decoding them), and [`Subscription::scanned`] tells how far it
    /// has read past them. A store that cannot delivers every event, as
    /// [`EventStore::subscribe`] does: the subscriber passes over the rest itself.
    async fn subscribe_to(
        &self,
        name: &str,
        from: SubscribeFrom,
        types: &'static [&'static str],
    ) -> Result<Subscription> {
        let _ = types;
        self.subscribe(name, from).await
    }

    /// Follows the streams of one `kind` from after `position`, for a reader that keeps their
    /// states in memory ([`aggregate::Cache::follow`]): each event appended to one of them is
    /// delivered, in position order, and nothing is kept for it (no checkpoint, nothing left
    /// on the server once it is dropped). `None` from a store that cannot: its readers read
    /// the store at every use instead.
    async fn watch(&self, kind: AggregateKind, after: u64) -> Result<Option<Subscription>> {
        let _ = (kind, after);
        Ok(None)
    }
}

/// Subscription names become JetStream consumer names: the same rules as subject tokens.
pub(crate) fn check_subscription_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 64 {
        Some("it is longer than 64 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Some("it may only hold ASCII letters, digits, '-' and '_'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidSubscriptionName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks what every backend refuses before touching storage.
pub(crate) fn check_append(stream: &StreamId, events: &[NewEvent]) -> Result<()> {
    let reason = if events.is_empty() {
        Some("no events".to_owned())
    } else if events.len() > MAX_EVENTS_PER_APPEND {
        Some(format!(
            "{} events, at most {MAX_EVENTS_PER_APPEND} fit in one append",
            events.len()
        ))
    } else {
        let mut ids: Vec<_> = events.iter().map(|e| e.id).collect();
        ids.sort();
        ids.windows(2)
            .find(|w| w[0] == w[1])
            .map(|w| format!("event id {} appears twice", w[0]))
            .or_else(|| misplaced(stream, events))
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidAppend {
            stream: stream.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Why an event of `events` does not belong on `stream`, if one does not: each type goes only on
/// the kinds of stream the catalogue names, so that a reader of some types can read only those.
fn misplaced(stream: &StreamId, events: &[NewEvent]) -> Option<String> {
    events.iter().find_map(|event| {
        let kinds = Event::kinds(&event.event_type)?;
        (!kinds.contains(&stream.kind())).then(|| {
            let kinds: Vec<_> = kinds.iter().map(|k| k.as_str()).collect();
            format!(
                "{} events go on {} streams, not on {} ones",
                event.event_type,
                kinds.join(" or "),
                stream.kind().as_str()
            )
        })
    })
}

/// Compares the stream's `actual` version with what an append expects: `Ok(None)` to go ahead,
/// `Ok(Some(v))` when the writer is behind and the events after version `v` must be judged as a
/// possible retry ([`judge_retry`]), and a conflict when the writer expects a version the stream
/// has not reached.
pub(crate) fn behind(
    stream: &StreamId,
    expected: ExpectedVersion,
    actual: u64,
) -> Result<Option<u64>> {
    match expected.as_version() {
        Some(v) if v < actual => Ok(Some(v)),
        Some(v) if v > actual => Err(StoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual,
        }),
        _ => Ok(None),
    }
}

/// The idempotency rule for an append whose expected version is behind the stream (EventStoreDB's
/// rule): if the events stored right after the expected version carry the appended ids in the
/// same order, the append already happened and succeeds without writing; if none of them do, it
/// is a conflict; anything in between is a bad request.
pub(crate) fn judge_retry(
    stream: &StreamId,
    expected: ExpectedVersion,
    actual: u64,
    events: &[NewEvent],
    stored_after_expected: &[RecordedEvent],
) -> Result<AppendOutcome> {
    let conflict = || StoreError::WrongExpectedVersion {
        stream: stream.clone(),
        expected,
        actual,
    };
    let matching = events
        .iter()
        .zip(stored_after_expected)
        .take_while(|(new, stored)| new.id == stored.id)
        .count();
    if matching == events.len() {
        let last = &stored_after_expected[matching - 1];
        return Ok(AppendOutcome {
            version: last.version,
            position: last.position,
            already_stored: true,
        });
    }
    let any_stored = events
        .iter()
        .any(|new| stored_after_expected.iter().any(|s| s.id == new.id));
    if matching == 0 && !any_stored {
        return Err(conflict());
    }
    Err(StoreError::PartiallyStored {
        stream: stream.clone(),
        detail: format!(
            "{matching} of {} events match the stream after {expected}",
            events.len()
        ),
    })
}
