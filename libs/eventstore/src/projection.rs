//! Read models are projections of the log. A [`ProjectionRunner`] feeds a [`Projection`] the
//! events after its checkpoint and, for each batch, applies the events and stores the new
//! checkpoint in one database transaction: a crash at any point leaves the read model either
//! before or after the whole batch, never half way, so no effect is lost or repeated.
//!
//! An event the projection keeps failing on does not stop it: it is parked (see
//! [`crate::parked`]) and the log goes on; outages of the database or the store are waited out.
//!
//! The read model lives in PostgreSQL in the distributed setup and in SQLite in the embedded
//! one; the runner works with either through [`CheckpointTable`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use sqlx::{Any, Database, Pool, Postgres, Sqlite};
use tokio::sync::watch;
use tracing::{Instrument, debug, error, info, warn};
use whatsnap_events::{Event, RecordedEvent};

use crate::lease::{self, Fence};
use crate::parked::{self, ParkedChange, ParkedEvent, ParkedQuery, ParkedStatus};
use crate::transaction;
use crate::{EventStore, StoreError, SubscribeFrom};

/// Why a projection could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("projection {projection}: read model database: {source}")]
    Database {
        projection: String,
        #[source]
        source: sqlx::Error,
    },
}

/// A read model built from events. `apply` runs inside the runner's transaction and must do all
/// its writes through the connection it is given.
#[async_trait]
pub trait Projection<DB: Database>: Send + Sync + 'static {
    /// A stable name: the key of the checkpoint and the name of the subscription.
    fn name(&self) -> &str;

    /// The read model's schema, as numbered migrations: the n-th entry is migration n, one or
    /// more SQL statements separated by `;`. The runner applies, in the transaction that opens the read model,
    /// those not applied yet and records them; an entry, once released, is never edited — a
    /// change of schema is a new entry.
    fn migrations(&self) -> &'static [&'static str];

    /// Acts on one event outside the read model — typically by appending the events a service
    /// decides in reaction to it. Runs for every event of a batch it [reacts
    /// to](Self::reacts_to), in order, before the batch's transaction begins (a write
    /// transaction held open across an append would deadlock the embedded backend, whose log
    /// and read models share one SQLite file). It runs again for the events of a batch that did
    /// not commit, so it must be idempotent: decide from the log's state and append with an
    /// expected version or a derived stream id.
    async fn react(&self, event: &RecordedEvent) -> Result<(), ApplyError> {
        let _ = event;
        Ok(())
    }

    /// Whether [`Self::react`] acts on `event`: the runner calls it, each in its own span, for
    /// those events only. The default, false, is for a read model that only applies: its
    /// events cost it no span and no call. A projection that overrides `react` overrides this.
    fn reacts_to(&self, event: &RecordedEvent) -> bool {
        let _ = event;
        false
    }

    /// What `react` decides on for `event` (a contact, say). The runner reacts to the events of
    /// one key in log order, and to those of different keys at the same time; events without a
    /// key (the default) are reacted to in log order, one after another.
    fn react_key(&self, event: &RecordedEvent) -> Option<String> {
        let _ = event;
        None
    }

    /// The event types `apply` and `react` read, or `None` (the default) for every event. The
    /// runner passes over the others without decoding them: only the checkpoint moves past them.
    /// Every name must be a type of the catalogue ([`Event::TYPES`]).
    fn reads(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// Applies one event; an error rolls back the whole batch, and an event that keeps failing
    /// is parked.
    async fn apply(
        &self,
        conn: &mut DB::Connection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError>;

    /// Applies the events of a batch together, in log order (a rebuild's batches are hundreds
    /// of events), or `None` (the default) to have the runner apply them one at a time with
    /// [`Projection::apply`], each in its own span. A projection whose events can be written
    /// many in one statement does so here; the result must be what `apply` of each would have
    /// left. An error rolls the whole batch back, and the runner then applies its events one at
    /// a time to find the one that fails.
    async fn apply_together(
        &self,
        conn: &mut DB::Connection,
        events: &[&RecordedEvent],
    ) -> Option<Result<(), ApplyError>> {
        let _ = (conn, events);
        None
    }

    /// Removes everything the projection wrote, for a rebuild from zero.
    async fn reset(&self, conn: &mut DB::Connection) -> sqlx::Result<()>;

    /// The most events of one transaction, if not the runner's (500): a projection that applies
    /// a batch in a few statements ([`Self::apply_together`]) may take more, so that a rebuild
    /// is fewer transactions (and fewer turns at SQLite's one writer per file).
    fn batch_size(&self) -> Option<usize> {
        None
    }

    /// Where the projection starts when it has no checkpoint of its own: at the lowest of the
    /// checkpoints whose names match the first of these SQL `LIKE` patterns that any name
    /// matches (none, the default: at the beginning). For a projection that takes over work
    /// others did up to their checkpoints — one [`Part`] of a split projection, after the
    /// number of parts changed; a projection that took the work over from another — so that
    /// it does not react to the whole log again.
    fn starts_where(&self) -> Vec<String> {
        Vec::new()
    }
}

/// One of the parts a projection's reactions are split into, so that replicas share them, each
/// part a runner of its own (own checkpoint, own lease). A key's events always fall in the same
/// part, by a hash of the key that every process and version computes alike, so the events of
/// one key keep their order whichever replica reacts to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    index: u32,
    count: u32,
}

impl Part {
    /// The whole: one part holding every key.
    pub const WHOLE: Part = Part { index: 0, count: 1 };

    /// The `count` parts of a split (at least one).
    pub fn all(count: u32) -> impl Iterator<Item = Part> {
        let count = count.max(1);
        (0..count).map(move |index| Part { index, count })
    }

    /// Whether `key`'s events are this part's.
    pub fn holds(&self, key: &str) -> bool {
        self.count == 1 || fnv1a(key.as_bytes()) % u64::from(self.count) == u64::from(self.index)
    }

    /// The name of this part of the projection named `base`: `base` itself for the whole,
    /// `base_2_of_4` for the second of four (a name JetStream takes for a consumer too).
    pub fn name(&self, base: &str) -> String {
        match self.count {
            1 => base.to_owned(),
            count => format!("{base}_{}_of_{count}", self.index + 1),
        }
    }

    /// How many parts the split has.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// What a part named `name` ([`Part::name`]) is a part of, and which part it is, when it
    /// is one of several.
    pub fn of_name(name: &str) -> Option<(&str, Part)> {
        let (rest, count) = name.rsplit_once("_of_")?;
        let (base, index) = rest.rsplit_once('_')?;
        let (index, count) = (index.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
        (count > 1 && (1..=count).contains(&index)).then(|| {
            let index = index - 1;
            (base, Part { index, count })
        })
    }

    /// The work a part named `name` is a part of, when it is one of several.
    pub fn split_of(name: &str) -> Option<&str> {
        Self::of_name(name).map(|(base, _)| base)
    }

    /// The patterns of [`Projection::starts_where`] for the parts of `base` (of any count, the
    /// whole among them).
    pub fn siblings(base: &str) -> String {
        format!("{base}%")
    }
}

/// The 64-bit FNV-1a hash: fixed by its definition, unlike the standard library's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Why a projection could not apply an event.
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

/// Where a database keeps projection checkpoints and parked events, and how a projection
/// transaction begins.
#[async_trait]
pub trait CheckpointTable: Database {
    /// Begins a read-model transaction. SQLite takes the write lock up front: a transaction
    /// that read first and wrote later would fail outright if another writer committed between.
    async fn begin_write(pool: &Pool<Self>) -> sqlx::Result<sqlx::Transaction<'static, Self>>;

    /// The file, for a database with one write lock for everybody (SQLite): the runner's
    /// transactions then take that file's [`crate::sqlite::write_turn`] first, in line with
    /// its other writers, instead of sleeping in SQLite's busy handler until the lock is free.
    fn one_writer_file(pool: &Pool<Self>) -> Option<std::path::PathBuf>;

    /// Creates the tables of checkpoints, of applied migrations and of parked events.
    async fn create_checkpoint_table(conn: &mut Self::Connection) -> sqlx::Result<()>;
    /// How many migrations of the named projection were applied.
    async fn applied_migrations(conn: &mut Self::Connection, name: &str) -> sqlx::Result<usize>;
    /// Applies migration `number` (`sql`) of the named projection and records it.
    async fn apply_migration(
        conn: &mut Self::Connection,
        name: &str,
        number: usize,
        sql: &str,
    ) -> sqlx::Result<()>;
    async fn load_checkpoint(conn: &mut Self::Connection, name: &str) -> sqlx::Result<Option<u64>>;
    /// The lowest checkpoint whose name matches the SQL `LIKE` `pattern`, if any does.
    async fn lowest_checkpoint(
        conn: &mut Self::Connection,
        pattern: &str,
    ) -> sqlx::Result<Option<u64>>;
    /// Moves the checkpoint forward to `position`; a lower position leaves it where it is (a
    /// redelivered event must not rewind a projection).
    async fn save_checkpoint(
        conn: &mut Self::Connection,
        name: &str,
        position: u64,
    ) -> sqlx::Result<()>;
    /// Sets the checkpoint back to the beginning, for a rebuild.
    async fn reset_checkpoint(conn: &mut Self::Connection, name: &str) -> sqlx::Result<()>;
    /// The names of every projection with a checkpoint.
    async fn projection_names(conn: &mut Self::Connection) -> sqlx::Result<Vec<String>>;
    async fn load_parked(
        conn: &mut Self::Connection,
        query: ParkedQuery<'_>,
    ) -> sqlx::Result<Vec<ParkedEvent>>;
    /// Applies `change`; returns how many rows it changed (0 when the row's status did not
    /// allow it).
    async fn update_parked(
        conn: &mut Self::Connection,
        change: ParkedChange<'_>,
    ) -> sqlx::Result<u64>;
    /// Takes the lease `name` for `holder` until `until_ms` if nobody holds it at `now_ms`;
    /// its new epoch when taken.
    async fn acquire_lease(
        conn: &mut Self::Connection,
        name: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> sqlx::Result<Option<i64>>;
    /// Extends `fence`'s lease to `until_ms` (0 lets it go); false when it is no longer held
    /// by that holder at that epoch.
    async fn renew_lease(
        conn: &mut Self::Connection,
        fence: &Fence,
        until_ms: i64,
    ) -> sqlx::Result<bool>;
    /// Forgets the leases whose name starts with `prefix` that ran out before `before_ms`.
    async fn forget_leases(
        conn: &mut Self::Connection,
        prefix: &str,
        before_ms: i64,
    ) -> sqlx::Result<u64>;
    /// The leases whose name starts with `prefix` held at `now_ms`, and their holders.
    async fn held_leases(
        conn: &mut Self::Connection,
        prefix: &str,
        now_ms: i64,
    ) -> sqlx::Result<Vec<(String, String)>>;
    /// How many leases whose name starts with `prefix` are held at `now_ms`.
    async fn count_leases(
        conn: &mut Self::Connection,
        prefix: &str,
        now_ms: i64,
    ) -> sqlx::Result<i64>;
}

// One SQL for every database: PostgreSQL and SQLite both take `$n` placeholders and
// `ON CONFLICT … excluded`.
const CREATE_CHECKPOINTS: &str = "CREATE TABLE IF NOT EXISTS projection_checkpoints (\
     name TEXT PRIMARY KEY, position BIGINT NOT NULL)";
const CREATE_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS read_model_migrations (\
     projection TEXT NOT NULL, number BIGINT NOT NULL, PRIMARY KEY (projection, number))";
const APPLIED_MIGRATIONS: &str = "SELECT COUNT(*) FROM read_model_migrations WHERE projection = $1";
const RECORD_MIGRATION: &str =
    "INSERT INTO read_model_migrations (projection, number) VALUES ($1, $2)";
const LOAD_CHECKPOINT: &str = "SELECT position FROM projection_checkpoints WHERE name = $1";
const LOWEST_CHECKPOINT: &str =
    "SELECT MIN(position) FROM projection_checkpoints WHERE name LIKE $1";
// Never lower: `CASE` rather than `GREATEST`/`MAX`, which the two databases spell differently.
const SAVE_CHECKPOINT: &str = "INSERT INTO projection_checkpoints (name, position) \
     VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET position = CASE \
     WHEN excluded.position > projection_checkpoints.position THEN excluded.position \
     ELSE projection_checkpoints.position END";
const RESET_CHECKPOINT: &str = "INSERT INTO projection_checkpoints (name, position) \
     VALUES ($1, 0) ON CONFLICT (name) DO UPDATE SET position = 0";

/// The checkpoint table of one sqlx database type, with its own way to begin a write.
macro_rules! checkpoint_table {
    ($db:ty, |$pool:ident| $begin:expr, $one_writer:expr) => {
        #[async_trait]
        impl CheckpointTable for $db {
            async fn begin_write(
                $pool: &Pool<Self>,
            ) -> sqlx::Result<sqlx::Transaction<'static, Self>> {
                $begin
            }

            fn one_writer_file($pool: &Pool<Self>) -> Option<std::path::PathBuf> {
                $one_writer
            }

            async fn applied_migrations(
                conn: &mut Self::Connection,
                name: &str,
            ) -> sqlx::Result<usize> {
                let count: i64 = sqlx::query_scalar(APPLIED_MIGRATIONS)
                    .bind(name)
                    .fetch_one(conn)
                    .await?;
                Ok(count as usize)
            }

            async fn apply_migration(
                conn: &mut Self::Connection,
                name: &str,
                number: usize,
                sql: &str,
            ) -> sqlx::Result<()> {
                // One statement at a time (prepared statements take one each); migrations keep
                // `;` out of their literals.
                for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    sqlx::query(statement).execute(&mut *conn).await?;
                }
                sqlx::query(RECORD_MIGRATION)
                    .bind(name)
                    .bind(number as i64)
                    .execute(conn)
                    .await
                    .map(drop)
            }

            async fn acquire_lease(
                conn: &mut Self::Connection,
                name: &str,
                holder: &str,
                now_ms: i64,
                until_ms: i64,
            ) -> sqlx::Result<Option<i64>> {
                sqlx::query_scalar(lease::ACQUIRE)
                    .bind(name)
                    .bind(holder)
                    .bind(until_ms)
                    .bind(now_ms)
                    .fetch_optional(conn)
                    .await
            }

            async fn renew_lease(
                conn: &mut Self::Connection,
                fence: &Fence,
                until_ms: i64,
            ) -> sqlx::Result<bool> {
                let renewed = sqlx::query(lease::RENEW)
                    .bind(fence.name.clone())
                    .bind(fence.holder.clone())
                    .bind(fence.epoch)
                    .bind(until_ms)
                    .execute(conn)
                    .await?;
                Ok(renewed.rows_affected() == 1)
            }

            async fn forget_leases(
                conn: &mut Self::Connection,
                prefix: &str,
                before_ms: i64,
            ) -> sqlx::Result<u64> {
                let forgotten = sqlx::query(lease::FORGET)
                    .bind(format!("{prefix}%"))
                    .bind(before_ms)
                    .execute(conn)
                    .await?;
                Ok(forgotten.rows_affected())
            }

            async fn held_leases(
                conn: &mut Self::Connection,
                prefix: &str,
                now_ms: i64,
            ) -> sqlx::Result<Vec<(String, String)>> {
                sqlx::query_as(lease::HELD)
                    .bind(format!("{prefix}%"))
                    .bind(now_ms)
                    .fetch_all(conn)
                    .await
            }

            async fn count_leases(
                conn: &mut Self::Connection,
                prefix: &str,
                now_ms: i64,
            ) -> sqlx::Result<i64> {
                sqlx::query_scalar(lease::COUNT)
                    .bind(format!("{prefix}%"))
                    .bind(now_ms)
                    .fetch_one(conn)
                    .await
            }

            async fn create_checkpoint_table(conn: &mut Self::Connection) -> sqlx::Result<()> {
                sqlx::query(CREATE_MIGRATIONS).execute(&mut *conn).await?;
                sqlx::query(lease::CREATE).execute(&mut *conn).await?;
                sqlx::query(parked::CREATE_PARKED)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(CREATE_CHECKPOINTS)
                    .execute(conn)
                    .await
                    .map(drop)
            }

            async fn load_checkpoint(
                conn: &mut Self::Connection,
                name: &str,
            ) -> sqlx::Result<Option<u64>> {
                let position: Option<i64> = sqlx::query_scalar(LOAD_CHECKPOINT)
                    .bind(name)
                    .fetch_optional(conn)
                    .await?;
                Ok(position.map(|p| p as u64))
            }

            async fn lowest_checkpoint(
                conn: &mut Self::Connection,
                pattern: &str,
            ) -> sqlx::Result<Option<u64>> {
                let position: Option<i64> = sqlx::query_scalar(LOWEST_CHECKPOINT)
                    .bind(pattern)
                    .fetch_one(conn)
                    .await?;
                Ok(position.map(|p| p as u64))
            }

            async fn save_checkpoint(
                conn: &mut Self::Connection,
                name: &str,
                position: u64,
            ) -> sqlx::Result<()> {
                sqlx::query(SAVE_CHECKPOINT)
                    .bind(name)
                    .bind(position as i64)
                    .execute(conn)
                    .await
                    .map(drop)
            }

            async fn reset_checkpoint(conn: &mut Self::Connection, name: &str) -> sqlx::Result<()> {
                sqlx::query(RESET_CHECKPOINT)
                    .bind(name)
                    .execute(conn)
                    .await
                    .map(drop)
            }

            async fn projection_names(conn: &mut Self::Connection) -> sqlx::Result<Vec<String>> {
                sqlx::query_scalar(parked::PROJECTION_NAMES)
                    .fetch_all(conn)
                    .await
            }

            async fn load_parked(
                conn: &mut Self::Connection,
                query: ParkedQuery<'_>,
            ) -> sqlx::Result<Vec<ParkedEvent>> {
                let rows: Vec<parked::ParkedRow> = match query {
                    ParkedQuery::Open => sqlx::query_as(parked::LOAD_OPEN).fetch_all(conn).await?,
                    ParkedQuery::All => sqlx::query_as(parked::LOAD_ALL).fetch_all(conn).await?,
                    ParkedQuery::One {
                        projection,
                        position,
                    } => {
                        sqlx::query_as(parked::LOAD_ONE)
                            .bind(projection)
                            .bind(position as i64)
                            .fetch_all(conn)
                            .await?
                    }
                    ParkedQuery::RetryRequests { projection } => {
                        sqlx::query_as(parked::LOAD_RETRY_REQUESTS)
                            .bind(projection)
                            .fetch_all(conn)
                            .await?
                    }
                };
                Ok(rows.into_iter().map(parked::from_row).collect())
            }

            async fn update_parked(
                conn: &mut Self::Connection,
                change: ParkedChange<'_>,
            ) -> sqlx::Result<u64> {
                let query = match change {
                    ParkedChange::Park(p) => sqlx::query(parked::PARK)
                        .bind(p.projection.clone())
                        .bind(p.position as i64)
                        .bind(p.event_id.clone())
                        .bind(p.stream_id.clone())
                        .bind(p.event_type.clone())
                        .bind(p.reason.clone())
                        .bind(i64::from(p.attempts))
                        .bind(p.parked_at.clone()),
                    ParkedChange::RequestRetry {
                        projection,
                        position,
                        requested_by,
                    } => sqlx::query(parked::REQUEST_RETRY)
                        .bind(projection.to_owned())
                        .bind(position as i64)
                        .bind(requested_by.map(str::to_owned)),
                    ParkedChange::Skip {
                        projection,
                        position,
                        requested_by,
                    } => sqlx::query(parked::SKIP)
                        .bind(projection.to_owned())
                        .bind(position as i64)
                        .bind(parked::now())
                        .bind(requested_by.map(str::to_owned)),
                    ParkedChange::Retried {
                        projection,
                        position,
                    } => sqlx::query(parked::RETRIED)
                        .bind(projection.to_owned())
                        .bind(position as i64)
                        .bind(parked::now()),
                    ParkedChange::RetryFailed {
                        projection,
                        position,
                        reason,
                    } => sqlx::query(parked::RETRY_FAILED)
                        .bind(projection.to_owned())
                        .bind(position as i64)
                        .bind(reason.to_owned()),
                    ParkedChange::Clear { projection } => {
                        sqlx::query(parked::CLEAR).bind(projection.to_owned())
                    }
                };
                Ok(query.execute(conn).await?.rows_affected())
            }
        }
    };
}

checkpoint_table!(Postgres, |pool| transaction::begin(pool, None).await, {
    let _ = pool;
    None
});
checkpoint_table!(
    Sqlite,
    |pool| transaction::begin(pool, Some("BEGIN IMMEDIATE")).await,
    Some(pool.connect_options().get_filename().to_owned())
);
// `sqlx::Any` serves the services' read models on either database.
checkpoint_table!(
    Any,
    |pool| {
        let immediate = pool.connect_options().database_url.scheme() == "sqlite";
        transaction::begin(pool, immediate.then_some("BEGIN IMMEDIATE")).await
    },
    sqlite_file(&pool.connect_options().database_url)
);

/// The file of a `sqlite://` URL (`sqlite:///abs/path`, `sqlite://relative/path`).
fn sqlite_file(url: &url::Url) -> Option<std::path::PathBuf> {
    (url.scheme() == "sqlite").then(|| {
        let path = percent_encoding::percent_decode_str(url.path()).decode_utf8_lossy();
        std::path::PathBuf::from(format!("{}{path}", url.host_str().unwrap_or_default()))
    })
}

/// Makes the span an event is handled in (see `ProjectionRunner::instrument`).
pub type EventSpan = fn(&str, &RecordedEvent) -> tracing::Span;

/// How long to wait before trying again: doubling from `first` up to `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The pause after the `failures`-th failure in a row (1 is the first), with jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let doubled = self
            .first
            .saturating_mul(1 << failures.saturating_sub(1).min(20));
        // Jitter, so that runners that failed together do not come back together.
        doubled
            .min(self.max)
            .mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// Why one try at a few events failed.
enum Failure {
    /// The database or the event store failed, not the event: try again, as long as it takes.
    Transient(String),
    /// The projection failed on the `index`-th event.
    Event { index: usize, reason: String },
    /// An operator resolved the parked event while it was being retried.
    Superseded,
}

impl Failure {
    fn event(index: usize, err: ApplyError) -> Self {
        if is_transient(err.as_ref()) {
            Self::Transient(err.to_string())
        } else {
            Self::Event {
                index,
                reason: err.to_string(),
            }
        }
    }

    fn database(err: sqlx::Error) -> Self {
        Self::Transient(format!("read model database: {err}"))
    }
}

/// What a successful try records with the projection's writes.
#[derive(Clone, Copy)]
enum Finish<'a> {
    /// The checkpoint moves to this position.
    Checkpoint(u64),
    /// The parked event was applied on an operator's request.
    Retried(&'a ParkedEvent),
}

/// Whether an error a projection returned is the database's or the store's rather than the
/// event's: a lost connection, a timeout, a serialisation failure, a locked SQLite file.
fn is_transient(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(err) = err.downcast_ref::<sqlx::Error>() {
            return match err {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    // PostgreSQL: serialisation failure, deadlock, connection, insufficient
                    // resources (a full disk) and shutdown classes; SQLite: SQLITE_BUSY and
                    // SQLITE_LOCKED with their extended codes, and SQLITE_FULL.
                    matches!(
                        code.as_ref(),
                        "40001" | "40P01" | "5" | "6" | "517" | "261" | "13"
                    ) || code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                }),
                _ => false,
            };
        }
        if let Some(err) = err.downcast_ref::<StoreError>() {
            return matches!(
                err,
                StoreError::Backend { .. } | StoreError::SubscriptionClosed(_)
            );
        }
        cause = err.source();
    }
    false
}

/// How many keys' events a runner reacts to at the same time (see [`Projection::react_key`]).
const REACTING_KEYS: usize = 32;

/// Runs one projection: one in-order worker, batches of events, one transaction a batch.
///
/// It stops only when told to. A failure of the database or of the event store is retried with
/// backoff for as long as it lasts. An event the projection keeps failing on is tried
/// [`attempts`](Self::attempts) times and then parked (see [`crate::parked`]): the events around
/// it are applied and the projection goes on. An event of a type or schema version this build
/// does not know (written by a newer version during a rolling deploy) is skipped with a warning.
pub struct ProjectionRunner<DB: CheckpointTable> {
    store: Arc<dyn EventStore>,
    event_span: EventSpan,
    pool: Pool<DB>,
    projection: Arc<dyn Projection<DB>>,
    batch_size: usize,
    attempts: u32,
    backoff: Backoff,
    retry_poll: Duration,
    progress: watch::Sender<u64>,
    /// The lease this runner works under, renewed in every transaction, and for how long.
    fence: std::sync::Mutex<Option<(Fence, Duration)>>,
    /// The turn of the read model's file among its writers, on SQLite.
    write_turn: Option<Arc<tokio::sync::Mutex<()>>>,
    /// The checkpoint last committed, and when.
    saved: std::sync::Mutex<(u64, tokio::time::Instant)>,
}

/// How long a checkpoint moved past events the read model does not read (and nothing else) may
/// wait to be committed: until then the read model is the same with or without it, so the
/// move is held and goes in the next transaction. A crash loses only that move: the events
/// passed over are passed over again.
const HELD_CHECKPOINT: Duration = Duration::from_secs(1);

impl<DB: CheckpointTable> ProjectionRunner<DB> {
    pub fn new(
        store: Arc<dyn EventStore>,
        pool: Pool<DB>,
        projection: Arc<dyn Projection<DB>>,
    ) -> Self {
        if let Some(reads) = projection.reads() {
            for read in reads {
                assert!(
                    Event::current_version(read).is_some(),
                    "projection {} reads {read:?}, which is no event type",
                    projection.name()
                );
            }
        }
        let write_turn = DB::one_writer_file(&pool).map(|file| crate::sqlite::write_turn(&file));
        Self {
            store,
            pool,
            projection,
            write_turn,
            event_span: |projection, event| {
                tracing::debug_span!("handle_event", projection, position = event.position)
            },
            batch_size: 500,
            attempts: 5,
            backoff: Backoff::default(),
            retry_poll: Duration::from_secs(1),
            progress: watch::channel(0).0,
            fence: std::sync::Mutex::new(None),
            saved: std::sync::Mutex::new((0, tokio::time::Instant::now())),
        }
    }

    /// From now on commits only while `fence`'s lease is held: each transaction renews it for
    /// `ttl`, and one that finds another replica holding it rolls back, so a replica that lost
    /// the lease with a batch in hand cannot apply it after the new holder.
    pub fn fence(&self, fence: Fence, ttl: Duration) {
        *self.fence.lock().expect("fence lock") = Some((fence, ttl));
    }

    /// At most this many events per transaction (default 500), for a projection that does not
    /// name its own ([`Projection::batch_size`]).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// How many times an event is tried before it is parked (default 5, at least 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The pauses between tries (default: from 0.5 s, doubling, up to 30 s).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How often the runner looks for retries operators asked for (default 1 s).
    pub fn retry_poll(mut self, interval: Duration) -> Self {
        self.retry_poll = interval.max(Duration::from_millis(10));
        self
    }

    /// Handles each event inside the span `event_span` makes, e.g. one that continues the
    /// trace the event was written in.
    pub fn instrument(mut self, event_span: EventSpan) -> Self {
        self.event_span = event_span;
        self
    }

    /// The position the read model has reached, updated after every commit, and as it passes
    /// over events it does not read (whose checkpoint may be committed up to
    /// [`HELD_CHECKPOINT`] later).
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    fn name(&self) -> &str {
        self.projection.name()
    }

    fn db_error(&self, source: sqlx::Error) -> ProjectionError {
        ProjectionError::Database {
            projection: self.name().to_owned(),
            source,
        }
    }

    /// Creates the read model, checkpoint and parked-event tables; returns the checkpoint.
    pub async fn prepare(&self) -> Result<u64, ProjectionError> {
        let mut tx = DB::begin_write(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        DB::create_checkpoint_table(&mut tx)
            .await
            .map_err(|e| self.db_error(e))?;
        let name = self.name();
        let applied = DB::applied_migrations(&mut tx, name)
            .await
            .map_err(|e| self.db_error(e))?;
        for (index, sql) in self
            .projection
            .migrations()
            .iter()
            .enumerate()
            .skip(applied)
        {
            DB::apply_migration(&mut tx, name, index + 1, sql)
                .await
                .map_err(|e| self.db_error(e))?;
            info!(
                projection = name,
                migration = index + 1,
                "read model migrated"
            );
        }
        let checkpoint = match DB::load_checkpoint(&mut tx, name)
            .await
            .map_err(|e| self.db_error(e))?
        {
            Some(checkpoint) => checkpoint,
            None => self.inherited_checkpoint(&mut tx).await?,
        };
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(checkpoint)
    }

    /// The checkpoint of a projection that has none yet: the lowest of the first of those it
    /// [starts where](Projection::starts_where); else the beginning. Recorded as its own when
    /// it takes work over, the beginning too: the work it would take over may move on before
    /// this projection runs (a new install prepares both, then runs both), and the next look
    /// must not find a checkpoint to take over that passed events this one never saw.
    async fn inherited_checkpoint(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<u64, ProjectionError> {
        let patterns = self.projection.starts_where();
        if patterns.is_empty() {
            return Ok(0);
        }
        let mut found = None;
        for pattern in patterns {
            found = DB::lowest_checkpoint(conn, &pattern)
                .await
                .map_err(|e| self.db_error(e))?;
            if found.is_some() {
                break;
            }
        }
        let position = found.unwrap_or(0);
        DB::save_checkpoint(conn, self.name(), position)
            .await
            .map_err(|e| self.db_error(e))?;
        if found.is_some() {
            info!(
                projection = self.name(),
                checkpoint = position,
                "projection starts where the work it takes over had got to"
            );
        }
        Ok(position)
    }

    /// Empties the read model, its checkpoint and its parked events in one transaction, so
    /// that the next run rebuilds it from the first event.
    pub async fn rebuild(&self) -> Result<(), ProjectionError> {
        self.prepare().await?;
        let name = self.name();
        let mut tx = DB::begin_write(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        self.projection
            .reset(&mut tx)
            .await
            .map_err(|e| self.db_error(e))?;
        DB::reset_checkpoint(&mut tx, name)
            .await
            .map_err(|e| self.db_error(e))?;
        DB::update_parked(&mut tx, ParkedChange::Clear { projection: name })
            .await
            .map_err(|e| self.db_error(e))?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
        self.progress.send_replace(0);
        info!(projection = name, "read model reset for a rebuild");
        Ok(())
    }

    /// Applies events as they come until `shutdown` resolves. Returns an error only for what
    /// no retry can mend (a subscription name the store refuses); everything else is retried
    /// or parked. Stopping drops the work in hand: its transaction rolls back and the next run
    /// does it again, which `react` allows by being idempotent.
    pub async fn run_until(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProjectionError> {
        let result = tokio::select! {
            () = shutdown => Ok(()),
            result = self.follow_forever() => result,
        };
        info!(
            projection = self.name(),
            checkpoint = *self.progress.borrow(),
            "projection stopped"
        );
        result
    }

    async fn follow_forever(&self) -> Result<(), ProjectionError> {
        let mut failures = 0;
        loop {
            let Err(err) = self.follow(&mut failures).await;
            if let ProjectionError::Store(
                StoreError::InvalidSubscriptionName { .. } | StoreError::Unsupported(_),
            ) = err
            {
                return Err(err);
            }
            failures += 1;
            let delay = self.backoff.delay(failures);
            warn!(
                projection = self.name(),
                error = %err,
                failures,
                retry_in_ms = delay.as_millis() as u64,
                "projection interrupted; resuming from its checkpoint"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Follows the log from the read model's checkpoint until the store or the database fails.
    async fn follow(&self, failures: &mut u32) -> Result<Infallible, ProjectionError> {
        let name = self.name();
        let checkpoint = self.prepare().await?;
        self.progress.send_replace(checkpoint);
        *self.saved.lock().expect("saved lock") = (checkpoint, tokio::time::Instant::now());
        // The read model's checkpoint is the truth; the store's subscription is moved to it.
        // A projection that names the types it reads is handed only those where the store can
        // pass over the others itself.
        let from = SubscribeFrom::AfterOwn(checkpoint);
        let mut subscription = match self.projection.reads() {
            Some(types) => self.store.subscribe_to(name, from, types).await?,
            None => self.store.subscribe(name, from).await?,
        };
        info!(projection = name, checkpoint, "projection started");
        let batch_size = self.projection.batch_size().unwrap_or(self.batch_size);
        let mut poll = tokio::time::interval(self.retry_poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = {
                // Retries asked for are handled while waiting for events, not between two
                // reads of a batch: the batch read is never cancelled half way.
                let next = subscription.next_batch(batch_size);
                tokio::pin!(next);
                loop {
                    tokio::select! {
                        batch = &mut next => break batch?,
                        _ = poll.tick() => {
                            self.retry_requested().await;
                            self.save_held_checkpoint().await;
                        }
                    }
                }
            };
            // Past the batch, the events of other types the store passed over.
            let scanned = subscription.scanned();
            if let Some(position) = self.handle_batch(&batch, scanned).await {
                *failures = 0;
                // Only a hint for the store: after a failure here the next start resumes from
                // the read model's checkpoint anyway.
                if let Err(err) = subscription.checkpoint(position).await {
                    warn!(projection = name, position, error = %err, "subscription checkpoint not saved");
                }
            }
        }
    }

    fn checkpoint(&self) -> u64 {
        *self.progress.borrow()
    }

    /// Moves the progress on to `position`, never back, telling its watchers only if it moved.
    fn reach(&self, position: u64) {
        self.progress.send_if_modified(|reached| {
            let moved = position > *reached;
            *reached = (*reached).max(position);
            moved
        });
    }

    /// Whether a checkpoint moved past events of other types only has been held long enough.
    fn held_checkpoint_due(&self) -> bool {
        self.saved.lock().expect("saved lock").1.elapsed() >= HELD_CHECKPOINT
    }

    /// Commits a checkpoint held since the last batch, once it is due.
    async fn save_held_checkpoint(&self) {
        let saved = self.saved.lock().expect("saved lock").0;
        let reached = self.checkpoint();
        if reached > saved && self.held_checkpoint_due() {
            let _ = self.until_done(&[], Finish::Checkpoint(reached)).await;
        }
    }

    /// Whether the projection is to see the event: one of the types it reads, of a type and
    /// schema version this build knows. The catalogue's list is what `RecordedEvent::decode`
    /// checks for `UnknownType` and `FutureVersion`, without parsing the payload once more per
    /// projection.
    fn concerns(&self, event: &RecordedEvent) -> bool {
        if let Some(reads) = self.projection.reads() {
            // Passed over without a word: a type this projection does not read, known or not.
            if !reads.contains(&event.event_type.as_str()) {
                return false;
            }
        }
        let known = Event::current_version(&event.event_type);
        if known.is_some_and(|known| event.schema_version <= known) {
            return true;
        }
        warn!(
            projection = self.name(),
            position = event.position,
            event_type = %event.event_type,
            schema_version = event.schema_version,
            known_version = known,
            "event skipped: its type or schema version is newer than this build"
        );
        false
    }

    /// Handles the events of `batch` after the checkpoint, and moves the checkpoint on to
    /// `scanned` (where the store read past events of other types) if that is further; returns
    /// the new checkpoint if it moved. Never fails: what fails is retried or parked.
    async fn handle_batch(&self, batch: &[RecordedEvent], scanned: u64) -> Option<u64> {
        let start = self.checkpoint();
        let mut last = start;
        let mut known = Vec::new();
        // A redelivery can repeat events at or below the checkpoint: they were applied.
        for event in batch {
            if event.position <= last {
                continue;
            }
            last = event.position;
            if self.concerns(event) {
                known.push(event);
            }
        }
        let last = last.max(scanned);
        if last == start {
            return None;
        }
        if known.is_empty() && !self.held_checkpoint_due() {
            self.reach(last);
            return Some(last);
        }
        if known.len() == 1 {
            self.handle_one(known[0]).await;
        } else if let Err((index, reason)) = self.until_done(&known, Finish::Checkpoint(last)).await
        {
            // Find the failing event by applying the events one at a time, so that the good
            // ones around it are applied.
            debug!(
                projection = self.name(),
                position = known[index].position,
                %reason,
                "batch failed; applying its events one at a time"
            );
            for event in known {
                self.handle_one(event).await;
            }
        }
        // Events this build skipped may follow the last one applied.
        if self.checkpoint() < last {
            let _ = self.until_done(&[], Finish::Checkpoint(last)).await;
        }
        Some(last)
    }

    /// Tries `event` until it succeeds or its tries run out; then parks it.
    async fn handle_one(&self, event: &RecordedEvent) {
        let mut attempt = 0;
        loop {
            let Err((_, reason)) = self
                .until_done(&[event], Finish::Checkpoint(event.position))
                .await
            else {
                return;
            };
            attempt += 1;
            // The projection's error may hide an outage (a service's error type wraps the
            // store's): park only when both backends answer.
            if attempt >= self.attempts && self.backends_answer().await {
                self.park(event, reason, attempt).await;
                return;
            }
            let delay = self.backoff.delay(attempt);
            warn!(
                projection = self.name(),
                position = event.position,
                event_type = %event.event_type,
                attempt,
                %reason,
                retry_in_ms = delay.as_millis() as u64,
                "event failed; trying again"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Tries `events` until the database and the store let it finish; the error names the
    /// event the projection failed on.
    async fn until_done(
        &self,
        events: &[&RecordedEvent],
        finish: Finish<'_>,
    ) -> Result<(), (usize, String)> {
        let mut failures = 0;
        loop {
            match self.try_events(events, finish).await {
                Ok(()) | Err(Failure::Superseded) => return Ok(()),
                Err(Failure::Event { index, reason }) => return Err((index, reason)),
                Err(Failure::Transient(reason)) => {
                    failures += 1;
                    self.pause_after_outage(&reason, failures).await;
                }
            }
        }
    }

    async fn pause_after_outage(&self, reason: &str, failures: u32) {
        let delay = self.backoff.delay(failures);
        warn!(
            projection = self.name(),
            %reason,
            failures,
            retry_in_ms = delay.as_millis() as u64,
            "read model or event store unavailable; trying again"
        );
        tokio::time::sleep(delay).await;
    }

    /// One try: `react` to each event, then apply them all and record `finish` in one
    /// transaction.
    async fn try_events(
        &self,
        events: &[&RecordedEvent],
        finish: Finish<'_>,
    ) -> Result<(), Failure> {
        let name = self.name();
        self.react_to(events).await?;
        let _turn = match &self.write_turn {
            Some(turn) => Some(turn.lock().await),
            None => None,
        };
        let mut tx = DB::begin_write(&self.pool)
            .await
            .map_err(Failure::database)?;
        let together = match events {
            [_, _, ..] => self.projection.apply_together(&mut tx, events).await,
            _ => None,
        };
        match together {
            // Which event failed is not known: the batch is named by its first, and is then
            // applied one event at a time.
            Some(applied) => applied.map_err(|err| Failure::event(0, err))?,
            None => {
                for (index, event) in events.iter().enumerate() {
                    self.projection
                        .apply(&mut tx, event)
                        .instrument((self.event_span)(name, event))
                        .await
                        .map_err(|err| Failure::event(index, err))?;
                }
            }
        }
        let fence = self.fence.lock().expect("fence lock").clone();
        if let Some((fence, ttl)) = &fence {
            let until = chrono::Utc::now().timestamp_millis() + ttl.as_millis() as i64;
            if !DB::renew_lease(&mut tx, fence, until)
                .await
                .map_err(Failure::database)?
            {
                return Err(Failure::Transient(format!(
                    "the lease {} (epoch {}) is no longer this replica's",
                    fence.name, fence.epoch
                )));
            }
        }
        match finish {
            Finish::Checkpoint(position) => DB::save_checkpoint(&mut tx, name, position)
                .await
                .map_err(Failure::database)?,
            Finish::Retried(parked) => {
                let changed = DB::update_parked(
                    &mut tx,
                    ParkedChange::Retried {
                        projection: name,
                        position: parked.position,
                    },
                )
                .await
                .map_err(Failure::database)?;
                if changed == 0 {
                    // Dropping the transaction rolls the apply back.
                    return Err(Failure::Superseded);
                }
            }
        }
        tx.commit().await.map_err(Failure::database)?;
        if let Finish::Checkpoint(position) = finish {
            *self.saved.lock().expect("saved lock") = (position, tokio::time::Instant::now());
            self.reach(position);
        }
        Ok(())
    }

    /// Lets the projection react to `events`: those of one key in order, different keys
    /// [`REACTING_KEYS`] at a time. On failures, the first failing event of the batch is named.
    async fn react_to(&self, events: &[&RecordedEvent]) -> Result<(), Failure> {
        let mut keys: HashMap<Option<String>, usize> = HashMap::new();
        let mut sequences: Vec<Vec<(usize, &RecordedEvent)>> = Vec::new();
        let reacted_to = events.iter().enumerate();
        for (index, event) in reacted_to.filter(|(_, e)| self.projection.reacts_to(e)) {
            let key = self.projection.react_key(event);
            let sequence = *keys.entry(key).or_insert_with(|| {
                sequences.push(Vec::new());
                sequences.len() - 1
            });
            sequences[sequence].push((index, *event));
        }
        let reactions: Vec<_> = sequences
            .into_iter()
            .map(|sequence| self.react_in_order(sequence))
            .collect();
        let failures: Vec<Option<(usize, ApplyError)>> = futures::stream::iter(reactions)
            .buffer_unordered(REACTING_KEYS)
            .collect()
            .await;
        match failures
            .into_iter()
            .flatten()
            .min_by_key(|(index, _)| *index)
        {
            Some((index, err)) => Err(Failure::event(index, err)),
            None => Ok(()),
        }
    }

    /// Reacts to `events` one after the other, stopping at the first that fails.
    async fn react_in_order(
        &self,
        events: Vec<(usize, &RecordedEvent)>,
    ) -> Option<(usize, ApplyError)> {
        for (index, event) in events {
            let reacted = self
                .projection
                .react(event)
                .instrument((self.event_span)(self.name(), event))
                .await;
            if let Err(err) = reacted {
                return Some((index, err));
            }
        }
        None
    }

    async fn backends_answer(&self) -> bool {
        self.store.head_position().await.is_ok() && DB::begin_write(&self.pool).await.is_ok()
    }

    /// Sets `event` aside: announced in the log, then recorded with the checkpoint past it.
    async fn park(&self, event: &RecordedEvent, reason: String, attempts: u32) {
        let name = self.name();
        // No payload here: it may hold a message's text.
        error!(
            projection = name,
            position = event.position,
            event_id = %event.id,
            event_type = %event.event_type,
            attempts,
            %reason,
            "event parked: the projection goes on without it (`whatsnap parked retry` or `skip` resolves it)"
        );
        let parked = ParkedEvent {
            projection: name.to_owned(),
            position: event.position,
            event_id: event.id.to_string(),
            stream_id: event.stream.to_string(),
            event_type: event.event_type.clone(),
            reason,
            attempts,
            status: ParkedStatus::Parked,
            parked_at: parked::now(),
            resolved_at: None,
            requested_by: None,
        };
        let parked = &parked;
        self.retrying("announcing a parked event", move || {
            parked::announce_parked(self.store.as_ref(), event, parked)
        })
        .await;
        self.retrying("recording a parked event", move || async move {
            let mut tx = DB::begin_write(&self.pool).await?;
            DB::update_parked(&mut tx, ParkedChange::Park(parked)).await?;
            DB::save_checkpoint(&mut tx, name, parked.position).await?;
            tx.commit().await
        })
        .await;
        self.reach(parked.position);
    }

    /// Runs `op` until it succeeds: for writes of the runner's own that only an outage stops.
    async fn retrying<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
        &self,
        what: &'static str,
        mut op: impl FnMut() -> F,
    ) -> T {
        let mut failures = 0;
        loop {
            match op().await {
                Ok(value) => return value,
                Err(err) => {
                    failures += 1;
                    self.pause_after_outage(&format!("{what}: {err}"), failures)
                        .await;
                }
            }
        }
    }

    /// Handles the retries operators asked of this projection.
    async fn retry_requested(&self) {
        let requests = match self.pool.acquire().await {
            Ok(mut conn) => {
                DB::load_parked(
                    &mut conn,
                    ParkedQuery::RetryRequests {
                        projection: self.name(),
                    },
                )
                .await
            }
            Err(err) => Err(err),
        };
        match requests {
            Ok(requests) => {
                for parked in requests {
                    self.retry(&parked).await;
                }
            }
            // The next poll asks again.
            Err(err) => {
                warn!(projection = self.name(), error = %err, "cannot read the retries asked for")
            }
        }
    }

    /// Applies a parked event again, once; success resolves it, failure leaves it parked with
    /// the new reason.
    async fn retry(&self, parked: &ParkedEvent) {
        let name = self.name();
        let position = parked.position;
        let event = match self.store.read_all(position.saturating_sub(1), 1).await {
            Ok(events) => events.into_iter().find(|e| e.position == position),
            Err(err) => {
                warn!(projection = name, position, error = %err, "cannot read a parked event to retry it");
                return;
            }
        };
        let outcome = match &event {
            Some(event) => self.try_events(&[event], Finish::Retried(parked)).await,
            None => Err(Failure::Event {
                index: 0,
                reason: format!("the log has no event at position {position}"),
            }),
        };
        match outcome {
            Ok(()) => {
                info!(projection = name, position, event_type = %parked.event_type, "parked event retried and applied");
                let by = parked.requested_by.as_deref();
                self.retrying("announcing a retried event", move || {
                    parked::announce_resolved(self.store.as_ref(), parked, "retried", by)
                })
                .await;
            }
            Err(Failure::Event { reason, .. }) => {
                warn!(projection = name, position, event_type = %parked.event_type, %reason, "parked event failed again; it stays parked");
                let reason = reason.as_str();
                self.retrying("recording a failed retry", move || async move {
                    let mut conn = self.pool.acquire().await?;
                    DB::update_parked(
                        &mut conn,
                        ParkedChange::RetryFailed {
                            projection: name,
                            position,
                            reason,
                        },
                    )
                    .await
                })
                .await;
            }
            Err(Failure::Transient(reason)) => {
                warn!(projection = name, position, %reason, "retry of a parked event put off: read model or event store unavailable");
            }
            Err(Failure::Superseded) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_of_a_sqlite_url_is_the_one_its_writers_take_turns_at() {
        let file = |url: &str| sqlite_file(&url.parse().unwrap());
        assert_eq!(
            file("sqlite:///data/read%20models.db?mode=rwc"),
            Some("/data/read models.db".into())
        );
        assert_eq!(file("sqlite://data/x.db"), Some("data/x.db".into()));
        assert_eq!(file("postgres://db/whatsnap"), None);
        let turn = crate::sqlite::write_turn;
        let here = std::env::current_dir().unwrap();
        assert!(Arc::ptr_eq(
            &turn("data/x.db".as_ref()),
            &turn(&here.join("data/x.db"))
        ));
        assert!(!Arc::ptr_eq(
            &turn("data/x.db".as_ref()),
            &turn("data/y.db".as_ref())
        ));
    }

    #[test]
    fn every_key_is_in_exactly_one_part_and_keeps_it() {
        // FNV-1a's published values: the part of a key never changes between builds.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let keys: Vec<String> = (0..600)
            .map(|n| uuid::Uuid::from_u128(n).to_string())
            .collect();
        let mut sizes = [0; 3];
        for key in &keys {
            let holding: Vec<Part> = Part::all(3).filter(|part| part.holds(key)).collect();
            assert_eq!(holding.len(), 1, "{key} in {holding:?}");
            sizes[holding[0].index as usize] += 1;
            assert!(Part::WHOLE.holds(key));
        }
        // Spread, not all in one part (about 200 each).
        assert!(
            sizes.iter().all(|size| (150..250).contains(size)),
            "{sizes:?}"
        );
    }

    #[test]
    fn pauses_grow_to_the_cap_with_jitter() {
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for _ in 0..100 {
            let first = backoff.delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff.delay(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(backoff.delay(40) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn outages_are_told_from_failures_of_the_event() {
        #[derive(Debug, thiserror::Error)]
        #[error("the service failed: {0}")]
        struct ServiceFailed(#[source] StoreError);

        let outage: Vec<ApplyError> = vec![
            Box::new(sqlx::Error::PoolTimedOut),
            Box::new(StoreError::backend("appending", "connection reset")),
            Box::new(ServiceFailed(StoreError::backend("reading", "timed out"))),
        ];
        for err in &outage {
            assert!(is_transient(err.as_ref()), "{err}");
        }
        let event: Vec<ApplyError> = vec![
            "no such contact".into(),
            Box::new(sqlx::Error::RowNotFound),
            Box::new(ServiceFailed(StoreError::InvalidAppend {
                stream: "loc.contact.1".parse().unwrap(),
                reason: "no events".into(),
            })),
        ];
        for err in &event {
            assert!(!is_transient(err.as_ref()), "{err}");
        }
    }
}
