//! The embedded backend: the whole log in one SQLite file (WAL mode), positions assigned under
//! SQLite's single write lock so that a reader never sees a later position before an earlier
//! one, and subscribers woken in-process as soon as an append commits.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;
use whatsnap_events::{
    AggregateKind, EventId, EventMetadata, NewEvent, RecordedEvent, StreamId, TraceContext,
};

use crate::tail::{Kept, Slot, Taken};
use crate::{
    AppendOutcome, EventStore, ExpectedVersion, Result, StoreError, SubscribeFrom, Subscription,
    SubscriptionSource, behind, check_append, check_subscription_name, judge_retry,
};

/// How often a waiting subscriber looks for events appended by another process on the same
/// file; appends made in this process wake it at once.
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(200);

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    position        INTEGER PRIMARY KEY,
    event_id        TEXT    NOT NULL UNIQUE,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    occurred_at     TEXT    NOT NULL,
    correlation_id  TEXT    NOT NULL,
    causation_id    TEXT,
    traceparent     TEXT,
    tracestate      TEXT,
    payload         BLOB    NOT NULL,
    UNIQUE (stream_id, stream_version)
);
CREATE TABLE IF NOT EXISTS subscription_checkpoints (
    name      TEXT    PRIMARY KEY,
    position  INTEGER NOT NULL
);
"#;

const COLUMNS: &str = "position, event_id, stream_id, stream_version, event_type, schema_version, \
     occurred_at, correlation_id, causation_id, traceparent, tracestate, payload";

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file; created if missing.
    pub path: PathBuf,
    /// `true` (the default) syncs every commit to disk, so a power loss loses nothing that was
    /// acknowledged. `false` only guards against a crash of the process.
    pub sync_every_commit: bool,
    /// The last events this process appended that it keeps in memory for its subscriptions
    /// (default 10,000), which take them from there instead of reading the log each time a
    /// commit wakes them; 0: each reads the log.
    pub tail: usize,
}

impl SqliteConfig {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_owned(),
            sync_every_commit: true,
            tail: 10_000,
        }
    }
}

/// The most appends one commit takes: appends that wait while a commit is synced go to disk
/// together in the next (group commit), so that writers share a sync instead of queueing for
/// one each.
const APPENDS_PER_COMMIT: usize = 256;

/// The embedded event store. Cheap to clone: clones share the file and the wake-up signal.
#[derive(Clone)]
pub struct SqliteEventStore {
    /// Readers: any number in parallel (WAL).
    readers: SqlitePool,
    /// The one writer connection of this process.
    writer: SqlitePool,
    /// The appends waiting for the writer's next commit.
    appends: mpsc::Sender<Append>,
    /// The last position appended by this process, to wake subscribers.
    head: Arc<watch::Sender<u64>>,
    /// The last events appended by this process, for its subscriptions.
    kept: Option<Arc<Kept>>,
}

/// One append, waiting for a commit.
struct Append {
    stream: StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    outcome: oneshot::Sender<Result<AppendOutcome>>,
}

impl SqliteEventStore {
    pub async fn open(config: &SqliteConfig) -> Result<Self> {
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::backend("creating the data directory", e))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| StoreError::backend("sqlite options", e))?
            .filename(&config.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if config.sync_every_commit {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::backend("opening the event log", e))?;
        sqlx::raw_sql(SCHEMA)
            .execute(&writer)
            .await
            .map_err(|e| StoreError::backend("creating the event log tables", e))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| StoreError::backend("opening the event log for reading", e))?;
        let (appends, waiting) = mpsc::channel(APPENDS_PER_COMMIT);
        let head = Arc::new(watch::channel(0).0);
        let kept = (config.tail > 0).then(|| Arc::new(Kept::new(config.tail, 0)));
        // The writer ends when the last clone of the store is dropped.
        let turn = write_turn(&config.path);
        let committed = (head.clone(), kept.clone());
        tokio::spawn(commit_appends(writer.clone(), turn, waiting, committed));
        let store = Self {
            readers,
            writer,
            appends,
            head,
            kept,
        };
        let position = store.head_position().await?;
        if let Some(kept) = &store.kept {
            kept.restart(position);
        }
        raise(&store.head, position);
        Ok(store)
    }
}

/// Moves the head to `position` if that is further, waking subscribers only then.
fn raise(head: &watch::Sender<u64>, position: u64) {
    head.send_if_modified(|head| {
        let moved = position > *head;
        *head = (*head).max(position);
        moved
    });
}

/// Takes the waiting appends and commits them, as many as have gathered (up to
/// [`APPENDS_PER_COMMIT`]) in one transaction: each in its own savepoint, so that one refused
/// (a conflict, say) leaves the others whole. Each caller hears of its append only once the
/// commit is on disk; a commit that fails fails every append in it.
async fn commit_appends(
    writer: SqlitePool,
    turn: Arc<tokio::sync::Mutex<()>>,
    mut waiting: mpsc::Receiver<Append>,
    (head, kept): (Arc<watch::Sender<u64>>, Option<Arc<Kept>>),
) {
    let mut batch = Vec::with_capacity(APPENDS_PER_COMMIT);
    while waiting.recv_many(&mut batch, APPENDS_PER_COMMIT).await > 0 {
        let outcomes = match commit_batch(&writer, &turn, &batch).await {
            Ok(outcomes) => outcomes,
            Err(err) => {
                let reason = err.to_string();
                batch
                    .iter()
                    .map(|_| {
                        Err(StoreError::backend(
                            "appending to the event log",
                            reason.clone(),
                        ))
                    })
                    .collect()
            }
        };
        let appended = outcomes
            .iter()
            .filter_map(|outcome| outcome.as_ref().ok())
            .filter(|outcome| !outcome.already_stored)
            .map(|outcome| outcome.position)
            .max();
        if let Some(kept) = &kept {
            keep_committed(kept, &batch, &outcomes);
        }
        if let Some(position) = appended {
            raise(&head, position);
        }
        for (append, outcome) in batch.drain(..).zip(outcomes) {
            // A caller that stopped waiting has nobody to tell.
            let _ = append.outcome.send(outcome);
        }
    }
}

/// Keeps the events of a commit's appends, as they now are in the log, for the subscriptions
/// of the process. Positions follow each other in a commit (one writer; a refused append's
/// positions are taken by the next); a commit that does not follow what is kept (another
/// process wrote in between) starts what is kept afresh, and its subscriptions read the gap
/// from the log.
fn keep_committed(kept: &Kept, batch: &[Append], outcomes: &[Result<AppendOutcome>]) {
    let mut slots: Vec<Slot> = Vec::new();
    let mut next = kept.through() + 1;
    for (append, outcome) in batch.iter().zip(outcomes) {
        let Ok(outcome) = outcome else { continue };
        let count = append.events.len() as u64;
        if outcome.already_stored || count == 0 {
            continue;
        }
        let (first_position, first_version) =
            (outcome.position + 1 - count, outcome.version + 1 - count);
        if first_position != next {
            if let Some(last) = slots.last().map(Slot::position) {
                kept.extend(std::mem::take(&mut slots), last);
            }
            kept.restart(first_position - 1);
        }
        for (offset, event) in (0..).zip(&append.events) {
            slots.push(Slot::Event(RecordedEvent {
                id: event.id,
                stream: append.stream.clone(),
                version: first_version + offset,
                position: first_position + offset,
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                occurred_at: event.occurred_at,
                metadata: event.metadata.clone(),
                payload: event.payload.clone(),
            }));
        }
        next = outcome.position + 1;
    }
    if let Some(last) = slots.last().map(Slot::position) {
        kept.extend(slots, last);
    }
}

/// The turn to write to one SQLite file in this process. SQLite has one write lock per file,
/// and a writer that finds it taken sleeps in the busy handler (up to 100 ms a time) before
/// looking again; the writers of one file (the log's commits, the projections' transactions)
/// take turns here first, in the order they asked, so that a webhook's append waits for the
/// writer ahead of it, not for a sleep. Writers of different files do not wait for each other.
/// (Writers in other processes, and this process's rarer writers, still meet at the lock
/// itself.)
pub fn write_turn(file: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static TURNS: std::sync::Mutex<BTreeMap<PathBuf, Arc<tokio::sync::Mutex<()>>>> =
        std::sync::Mutex::new(BTreeMap::new());
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    TURNS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(file)
        .or_default()
        .clone()
}

/// One transaction of appends; the outcome of each, or the error that failed them all.
async fn commit_batch(
    writer: &SqlitePool,
    turn: &tokio::sync::Mutex<()>,
    batch: &[Append],
) -> Result<Vec<Result<AppendOutcome>>> {
    let backend = |e| StoreError::backend("appending to the event log", e);
    let _turn = turn.lock().await;
    // IMMEDIATE takes the write lock up front: a version read below cannot go stale before
    // the insert, and a writer in another process waits (busy timeout) instead of failing.
    let mut tx = crate::transaction::begin(writer, Some("BEGIN IMMEDIATE"))
        .await
        .map_err(backend)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for append in batch {
        sqlx::query("SAVEPOINT one_append")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let outcome = append_one(&mut tx, &append.stream, append.expected, &append.events).await;
        if outcome.is_err() {
            sqlx::query("ROLLBACK TO one_append")
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        sqlx::query("RELEASE one_append")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        outcomes.push(outcome);
    }
    tx.commit().await.map_err(backend)?;
    Ok(outcomes)
}

/// Appends inside the writer's transaction.
async fn append_one(
    tx: &mut sqlx::SqliteConnection,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<AppendOutcome> {
    let backend = |e| StoreError::backend("appending to the event log", e);
    let stream_text = stream.to_string();
    let actual: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = ?",
    )
    .bind(&stream_text)
    .fetch_one(&mut *tx)
    .await
    .map_err(backend)?;
    let actual = actual as u64;

    if let Some(v) = behind(stream, expected, actual)? {
        let stored = select_stream(&mut *tx, &stream_text, v + 1, events.len()).await?;
        return judge_retry(stream, expected, actual, events, &stored);
    }
    if let Some(outcome) = already_stored(&mut *tx, stream, &stream_text, expected, events).await? {
        return Ok(outcome);
    }

    let mut position = 0;
    for (offset, event) in events.iter().enumerate() {
        let version = actual + 1 + offset as u64;
        position = sqlx::query(
            "INSERT INTO events (event_id, stream_id, stream_version, event_type, \
             schema_version, occurred_at, correlation_id, causation_id, traceparent, \
             tracestate, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(event.id.to_string())
        .bind(&stream_text)
        .bind(version as i64)
        .bind(&event.event_type)
        .bind(event.schema_version as i64)
        .bind(event.occurred_at)
        .bind(event.metadata.correlation_id.to_string())
        .bind(event.metadata.causation_id.map(|id| id.to_string()))
        .bind(event.metadata.trace.traceparent.as_deref())
        .bind(event.metadata.trace.tracestate.as_deref())
        .bind(event.payload.as_ref())
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .last_insert_rowid() as u64;
    }
    Ok(AppendOutcome {
        version: actual + events.len() as u64,
        position,
        already_stored: false,
    })
}

/// Looks up the appended ids: if all are stored already as this very append, the append is
/// a retry; if some are stored anywhere, it is a bad request; if none, it may go ahead.
async fn already_stored(
    tx: &mut sqlx::SqliteConnection,
    stream: &StreamId,
    stream_text: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<Option<AppendOutcome>> {
    let first: Option<(String, i64)> =
        sqlx::query_as("SELECT stream_id, stream_version FROM events WHERE event_id = ?")
            .bind(events[0].id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| StoreError::backend("looking up event ids", e))?;
    let Some((first_stream, first_version)) = first else {
        let mut later_ids = 0;
        for event in &events[1..] {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT position FROM events WHERE event_id = ?")
                    .bind(event.id.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| StoreError::backend("looking up event ids", e))?;
            later_ids += usize::from(found.is_some());
        }
        if later_ids == 0 {
            return Ok(None);
        }
        return Err(StoreError::PartiallyStored {
            stream: stream.clone(),
            detail: format!(
                "{later_ids} of {} event ids are already stored",
                events.len()
            ),
        });
    };
    if first_stream != stream_text {
        return Err(StoreError::InvalidAppend {
            stream: stream.clone(),
            reason: format!(
                "event id {} is already stored in stream {first_stream}",
                events[0].id
            ),
        });
    }
    let from = first_version as u64;
    let stored = select_stream(&mut *tx, stream_text, from, events.len()).await?;
    let behind = ExpectedVersion::Exact(from - 1);
    judge_retry(stream, behind, from - 1, events, &stored)
        .map(Some)
        .map_err(|err| match err {
            StoreError::WrongExpectedVersion { .. } => StoreError::PartiallyStored {
                stream: stream.clone(),
                detail: format!("appended under {expected} but stored differently"),
            },
            other => other,
        })
}

async fn select_stream(
    conn: &mut sqlx::SqliteConnection,
    stream_text: &str,
    from_version: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM events WHERE stream_id = ? AND stream_version >= ? \
         ORDER BY stream_version LIMIT ?"
    ))
    .bind(stream_text)
    .bind(from_version as i64)
    .bind(limit.min(i64::MAX as usize) as i64)
    .fetch_all(conn)
    .await
    .map_err(|e| StoreError::backend("reading a stream", e))?;
    rows.iter().map(decode_row).collect()
}

fn decode_row(row: &SqliteRow) -> Result<RecordedEvent> {
    let position: i64 = row.get("position");
    let corrupt = |reason: String| StoreError::Corrupt {
        position: position as u64,
        reason,
    };
    let uuid = |column: &str| -> Result<Uuid> {
        let text: String = row.get(column);
        Uuid::parse_str(&text).map_err(|e| corrupt(format!("{column}: {e}")))
    };
    let stream_text: String = row.get("stream_id");
    let causation: Option<String> = row.get("causation_id");
    let occurred_at: DateTime<Utc> = row.get("occurred_at");
    let payload: Vec<u8> = row.get("payload");
    Ok(RecordedEvent {
        id: EventId::from_uuid(uuid("event_id")?),
        stream: stream_text
            .parse()
            .map_err(|e| corrupt(format!("stream id: {e}")))?,
        version: row.get::<i64, _>("stream_version") as u64,
        position: position as u64,
        event_type: row.get("event_type"),
        schema_version: row.get::<i64, _>("schema_version") as u32,
        occurred_at,
        metadata: EventMetadata {
            correlation_id: uuid("correlation_id")?,
            causation_id: causation
                .map(|c| Uuid::parse_str(&c))
                .transpose()
                .map_err(|e| corrupt(format!("causation_id: {e}")))?,
            trace: TraceContext {
                traceparent: row.get("traceparent"),
                tracestate: row.get("tracestate"),
            },
        },
        payload: Bytes::from(payload),
    })
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome> {
        check_append(stream, &events)?;
        // The writer's task commits it: a caller that gives up waiting cannot leave it half
        // done, and the wake-up is sent only once it has committed.
        let (outcome, committed) = oneshot::channel();
        let append = Append {
            stream: stream.clone(),
            expected,
            events,
            outcome,
        };
        let writer_gone =
            || StoreError::backend("appending to the event log", "the writer stopped");
        self.appends.send(append).await.map_err(|_| writer_gone())?;
        committed.await.map_err(|_| writer_gone())?
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let mut conn = self
            .readers
            .acquire()
            .await
            .map_err(|e| StoreError::backend("reading a stream", e))?;
        select_stream(&mut conn, &stream.to_string(), from_version.max(1), limit).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
        ))
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.readers)
        .await
        .map_err(|e| StoreError::backend("reading the log", e))?;
        rows.iter().map(decode_row).collect()
    }

    async fn read_kind(
        &self,
        kind: AggregateKind,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.read_filtered(&Filter::kind(kind), after, u64::MAX, limit)
            .await
    }

    async fn head_position(&self) -> Result<u64> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&self.readers)
            .await
            .map_err(|e| StoreError::backend("reading the log head", e))?;
        Ok(head as u64)
    }

    async fn subscribe(&self, name: &str, from: SubscribeFrom) -> Result<Subscription> {
        self.open_subscription(name, from, None).await
    }

    async fn subscribe_to(
        &self,
        name: &str,
        from: SubscribeFrom,
        types: &'static [&'static str],
    ) -> Result<Subscription> {
        self.open_subscription(name, from, Some(types)).await
    }

    async fn watch(&self, kind: AggregateKind, after: u64) -> Result<Option<Subscription>> {
        let source = SqliteSubscription {
            store: self.clone(),
            name: None,
            after,
            woken: self.head.subscribe(),
            only: Some(Arc::new(Filter::kind(kind))),
            ahead: None,
        };
        Ok(Some(Subscription::new(
            format!("watch-{}", kind.as_str()),
            Box::new(source),
        )))
    }
}

impl SqliteEventStore {
    async fn open_subscription(
        &self,
        name: &str,
        from: SubscribeFrom,
        types: Option<&'static [&'static str]>,
    ) -> Result<Subscription> {
        check_subscription_name(name)?;
        let after = match from {
            SubscribeFrom::After(position) => {
                save_checkpoint(&self.writer, name, position).await?;
                position
            }
            // The subscriber keeps its own checkpoint: a synced write of the log's file per
            // batch would only make the log's appends wait.
            SubscribeFrom::AfterOwn(position) => position,
            SubscribeFrom::Checkpoint => {
                let stored: Option<i64> = sqlx::query_scalar(
                    "SELECT position FROM subscription_checkpoints WHERE name = ?",
                )
                .bind(name)
                .fetch_optional(&self.writer)
                .await
                .map_err(|e| StoreError::backend("reading a subscription checkpoint", e))?;
                stored.unwrap_or(0) as u64
            }
        };
        let source = SqliteSubscription {
            store: self.clone(),
            name: match from {
                SubscribeFrom::AfterOwn(_) => None,
                _ => Some(name.to_owned()),
            },
            after,
            woken: self.head.subscribe(),
            only: types.map(|types| Arc::new(Filter::types(types))),
            ahead: None,
        };
        Ok(Subscription::new(name, Box::new(source)))
    }

    /// Up to `limit` events that `filter` lets through after position `after` and up to
    /// `through`, in position order. SQLite passes over the others in its scan of the log,
    /// without handing them over.
    async fn read_filtered(
        &self,
        filter: &Filter,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let mut query = sqlx::query(&filter.query)
            .bind(after.min(i64::MAX as u64) as i64)
            .bind(through.min(i64::MAX as u64) as i64);
        for value in &filter.values {
            query = query.bind(value.as_str());
        }
        let rows = query
            .bind(limit.min(i64::MAX as usize) as i64)
            .fetch_all(&self.readers)
            .await
            .map_err(|e| StoreError::backend("reading the log", e))?;
        rows.iter().map(decode_row).collect()
    }
}

/// The events a subscription asked for (some types, or the streams of one kind), and the
/// query that reads only them.
struct Filter {
    query: String,
    /// What the query's placeholders after the two positions are bound to.
    values: Vec<String>,
    /// The same, for an event in memory.
    picks: Picks,
}

enum Picks {
    Types(&'static [&'static str]),
    Kind(AggregateKind),
}

impl Filter {
    fn types(types: &'static [&'static str]) -> Self {
        let placeholders = vec!["?"; types.len()].join(", ");
        Self::new(
            format!("event_type IN ({placeholders})"),
            types.iter().map(|t| (*t).to_owned()).collect(),
            Picks::Types(types),
        )
    }

    /// A stream id is `location.kind.id`, and a location id holds no dot: the kind follows
    /// the first one.
    fn kind(kind: AggregateKind) -> Self {
        let after_location = format!("{}.", kind.as_str());
        Self::new(
            format!(
                "substr(stream_id, instr(stream_id, '.') + 1, {}) = ?",
                after_location.len()
            ),
            vec![after_location],
            Picks::Kind(kind),
        )
    }

    fn new(condition: String, values: Vec<String>, picks: Picks) -> Self {
        Self {
            picks,
            query: format!(
                "SELECT {COLUMNS} FROM events WHERE position > ? AND position <= ? \
                 AND {condition} ORDER BY position LIMIT ?"
            ),
            values,
        }
    }

    /// Whether the query would read `slot`'s event.
    fn picks(&self, slot: &Slot) -> bool {
        match (&self.picks, slot) {
            (Picks::Types(types), slot) => slot.event_type().is_some_and(|t| types.contains(&t)),
            (Picks::Kind(kind), Slot::Event(event)) => event.stream.kind() == *kind,
            (Picks::Kind(_), Slot::Undecodable { .. }) => true,
        }
    }
}

async fn save_checkpoint(writer: &SqlitePool, name: &str, position: u64) -> Result<()> {
    sqlx::query(
        "INSERT INTO subscription_checkpoints (name, position) VALUES (?, ?) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position",
    )
    .bind(name)
    .bind(position as i64)
    .execute(writer)
    .await
    .map_err(|e| StoreError::backend("saving a subscription checkpoint", e))?;
    Ok(())
}

struct SqliteSubscription {
    store: SqliteEventStore,
    /// The durable subscription's name; `None` for a watch or a subscriber keeping its own
    /// checkpoint, for which the store keeps none.
    name: Option<String>,
    /// The position read through.
    after: u64,
    woken: watch::Receiver<u64>,
    /// The events asked for; `None`: every event.
    only: Option<Arc<Filter>>,
    /// The next batch, read while the subscriber handles the last one, when that one was full
    /// (catching up): reading the log and applying it then take turns on both cores instead
    /// of one after the other.
    ahead: Option<Ahead>,
}

/// A batch read ahead: the events after `after`, at most `max`.
struct Ahead {
    after: u64,
    max: usize,
    read: tokio::task::JoinHandle<Result<(Vec<RecordedEvent>, u64)>>,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.read.abort();
    }
}

impl SqliteSubscription {
    /// Up to `max` events after `after` (those `only` lets through), and the position read
    /// through: past the events of other types up to the head when there are fewer.
    async fn read(
        store: &SqliteEventStore,
        only: Option<&Filter>,
        after: u64,
        max: usize,
    ) -> Result<(Vec<RecordedEvent>, u64)> {
        let Some(filter) = only else {
            let events = store.read_all(after, max).await?;
            let through = events.last().map_or(after, |last| last.position);
            return Ok((events, through));
        };
        // Every position up to the head is committed (one writer, positions in commit order),
        // so reading up to it and no further leaves nothing behind.
        let head = store.head_position().await?;
        if head <= after {
            return Ok((Vec::new(), after));
        }
        let events = store.read_filtered(filter, after, head, max).await?;
        let through = match events.last() {
            Some(last) if events.len() == max => last.position,
            _ => head,
        };
        Ok((events, through))
    }

    /// The events after [`Self::after`] that this process appended lately, from memory: `None`
    /// when none are kept past it, or it is behind what is kept (the log is read then).
    fn take_kept(&mut self, kept: &Kept, max: usize) -> Result<Option<Vec<RecordedEvent>>> {
        let mut ready = VecDeque::new();
        let only = self.only.as_deref();
        let wanted = |slot: &Slot| only.is_none_or(|filter| filter.picks(slot));
        match kept.take(self.after, wanted, max, &mut ready)? {
            Some(Taken::Through(through)) => {
                self.after = through;
                // Only other types: the caller learns how far the log was read.
                Ok((!ready.is_empty() || only.is_some()).then(|| ready.into()))
            }
            Some(Taken::Behind { .. }) | None => Ok(None),
        }
    }
}

#[async_trait]
impl SubscriptionSource for SqliteSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        // Whether to look in the log itself when nothing new is kept: on each poll for another
        // process's appends (this process's are kept before they wake the wait).
        let mut polled = false;
        loop {
            // Mark the current head as seen before reading, so an append that commits after the
            // read still wakes the wait below.
            self.woken.borrow_and_update();
            let mut look_in_log = true;
            if self.ahead.is_none()
                && let Some(kept) = self.store.kept.clone()
            {
                match self.take_kept(&kept, max)? {
                    Some(events) => return Ok(events),
                    None => look_in_log = polled || kept.through() > self.after,
                }
            }
            if look_in_log {
                let ahead = self
                    .ahead
                    .take()
                    .filter(|a| a.after == self.after && a.max == max);
                let read_ahead = ahead.is_some();
                let (events, through) = match ahead {
                    Some(mut ahead) => (&mut ahead.read)
                        .await
                        .map_err(|e| StoreError::backend("reading the log ahead", e))??,
                    None => Self::read(&self.store, self.only.as_deref(), self.after, max).await?,
                };
                if through > self.after {
                    self.after = through;
                    if events.len() == max {
                        let (store, only) = (self.store.clone(), self.only.clone());
                        let after = self.after;
                        self.ahead = Some(Ahead {
                            after,
                            max,
                            read: tokio::spawn(async move {
                                Self::read(&store, only.as_deref(), after, max).await
                            }),
                        });
                    }
                    return Ok(events);
                }
                if read_ahead {
                    // Read before the head was marked seen: an append since would not wake the
                    // wait.
                    continue;
                }
            }
            polled = tokio::select! {
                changed = self.woken.changed() => {
                    changed.map_err(|_| StoreError::SubscriptionClosed("the store was dropped".into()))?;
                    false
                }
                _ = tokio::time::sleep(CROSS_PROCESS_POLL) => true,
            };
        }
    }

    async fn checkpoint(&mut self, position: u64) -> Result<()> {
        match &self.name {
            Some(name) => save_checkpoint(&self.store.writer, name, position).await,
            None => Ok(()),
        }
    }

    fn scanned(&self) -> Option<u64> {
        self.only.as_ref().map(|_| self.after)
    }
}
