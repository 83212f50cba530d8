//! Read models are projections of the log. A [`ProjectionRunner`] feeds a [`Projection`] the
//! events after its checkpoint and, for each batch, applies the events and stores the new
//! checkpoint in one database transaction: a crash at any point leaves the read model either
//! before or after the whole batch, never half way, so no effect is lost or repeated.
//!
//! The read model lives in PostgreSQL in the distributed setup and in SQLite in the embedded
//! one; the runner works with either through [`CheckpointTable`].

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{Any, Database, Pool, Postgres, Sqlite};
use tokio::sync::watch;
use tracing::{Instrument, info, warn};
use whatsnap_events::RecordedEvent;

use crate::{EventStore, StoreError, SubscribeFrom};

/// Why a projection stopped.
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
    #[error("projection {projection} cannot apply {event_type} at position {position}: {reason}")]
    Apply {
        projection: String,
        event_type: String,
        position: u64,
        reason: String,
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
    /// decides in reaction to it. Runs for every event of a batch, in order, before the batch's
    /// transaction begins (a write transaction held open across an append would deadlock the
    /// embedded backend, whose log and read models share one SQLite file). It runs again for the
    /// events of a batch that did not commit, so it must be idempotent: decide from the log's
    /// state and append with an expected version or a derived stream id.
    async fn react(&self, event: &RecordedEvent) -> Result<(), ApplyError> {
        let _ = event;
        Ok(())
    }

    /// Applies one event; an error rolls back the whole batch and stops the runner.
    async fn apply(
        &self,
        conn: &mut DB::Connection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError>;

    /// Removes everything the projection wrote, for a rebuild from zero.
    async fn reset(&self, conn: &mut DB::Connection) -> sqlx::Result<()>;
}

/// Why a projection could not apply an event.
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

/// Where a database keeps projection checkpoints, and how a projection transaction begins.
#[async_trait]
pub trait CheckpointTable: Database {
    /// Begins a read-model transaction. SQLite takes the write lock up front: a transaction
    /// that read first and wrote later would fail outright if another writer committed between.
    async fn begin_write(pool: &Pool<Self>) -> sqlx::Result<sqlx::Transaction<'static, Self>>;

    /// Creates the tables of checkpoints and of applied migrations.
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
    async fn save_checkpoint(
        conn: &mut Self::Connection,
        name: &str,
        position: u64,
    ) -> sqlx::Result<()>;
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
const SAVE_CHECKPOINT: &str = "INSERT INTO projection_checkpoints (name, position) \
     VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET position = excluded.position";

/// The checkpoint table of one sqlx database type, with its own way to begin a write.
macro_rules! checkpoint_table {
    ($db:ty, |$pool:ident| $begin:expr) => {
        #[async_trait]
        impl CheckpointTable for $db {
            async fn begin_write(
                $pool: &Pool<Self>,
            ) -> sqlx::Result<sqlx::Transaction<'static, Self>> {
                $begin
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

            async fn create_checkpoint_table(conn: &mut Self::Connection) -> sqlx::Result<()> {
                sqlx::query(CREATE_MIGRATIONS).execute(&mut *conn).await?;
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
        }
    };
}

checkpoint_table!(Postgres, |pool| pool.begin().await);
checkpoint_table!(Sqlite, |pool| pool.begin_with("BEGIN IMMEDIATE").await);
// `sqlx::Any` serves the services' read models on either database.
checkpoint_table!(Any, |pool| {
    if pool.connect_options().database_url.scheme() == "sqlite" {
        pool.begin_with("BEGIN IMMEDIATE").await
    } else {
        pool.begin().await
    }
});

/// Runs one projection: one in-order worker, batches of events, one transaction a batch.
/// Makes the span an event is handled in (see `ProjectionRunner::instrument`).
pub type EventSpan = fn(&str, &RecordedEvent) -> tracing::Span;

pub struct ProjectionRunner<DB: CheckpointTable> {
    store: Arc<dyn EventStore>,
    event_span: EventSpan,
    pool: Pool<DB>,
    projection: Arc<dyn Projection<DB>>,
    batch_size: usize,
    progress: watch::Sender<u64>,
}

impl<DB: CheckpointTable> ProjectionRunner<DB> {
    pub fn new(
        store: Arc<dyn EventStore>,
        pool: Pool<DB>,
        projection: Arc<dyn Projection<DB>>,
    ) -> Self {
        Self {
            store,
            pool,
            projection,
            event_span: |projection, event| {
                tracing::debug_span!("handle_event", projection, position = event.position)
            },
            batch_size: 100,
            progress: watch::channel(0).0,
        }
    }

    /// At most this many events per transaction (default 100).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Handles each event inside the span `event_span` makes, e.g. one that continues the
    /// trace the event was written in.
    pub fn instrument(mut self, event_span: EventSpan) -> Self {
        self.event_span = event_span;
        self
    }

    /// The position the read model has reached, updated after every commit.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    fn db_error(&self, source: sqlx::Error) -> ProjectionError {
        ProjectionError::Database {
            projection: self.projection.name().to_owned(),
            source,
        }
    }

    /// Creates the read model and checkpoint tables; returns the checkpoint.
    pub async fn prepare(&self) -> Result<u64, ProjectionError> {
        let mut tx = DB::begin_write(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        DB::create_checkpoint_table(&mut tx)
            .await
            .map_err(|e| self.db_error(e))?;
        let name = self.projection.name();
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
        let checkpoint = DB::load_checkpoint(&mut tx, self.projection.name())
            .await
            .map_err(|e| self.db_error(e))?
            .unwrap_or(0);
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(checkpoint)
    }

    /// Empties the read model and its checkpoint in one transaction, so that the next run
    /// rebuilds it from the first event.
    pub async fn rebuild(&self) -> Result<(), ProjectionError> {
        self.prepare().await?;
        let mut tx = DB::begin_write(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        self.projection
            .reset(&mut tx)
            .await
            .map_err(|e| self.db_error(e))?;
        DB::save_checkpoint(&mut tx, self.projection.name(), 0)
            .await
            .map_err(|e| self.db_error(e))?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
        self.progress.send_replace(0);
        info!(
            projection = self.projection.name(),
            "read model reset for a rebuild"
        );
        Ok(())
    }

    /// Applies events as they come until `shutdown` resolves or an error stops it.
    pub async fn run_until(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProjectionError> {
        let name = self.projection.name().to_owned();
        let mut checkpoint = self.prepare().await?;
        self.progress.send_replace(checkpoint);
        // The read model's checkpoint is the truth; the store's subscription is moved to it.
        let mut subscription = self
            .store
            .subscribe(&name, SubscribeFrom::After(checkpoint))
            .await?;
        info!(projection = %name, checkpoint, "projection started");
        tokio::pin!(shutdown);
        loop {
            let batch = tokio::select! {
                () = &mut shutdown => break,
                batch = subscription.next_batch(self.batch_size) => batch?,
            };
            let Some(last) = batch.last().map(|e| e.position) else {
                continue;
            };
            let unseen = || batch.iter().filter(|e| e.position > checkpoint);
            let failed = |event: &RecordedEvent| {
                let name = name.clone();
                let (event_type, position) = (event.event_type.clone(), event.position);
                move |e: ApplyError| ProjectionError::Apply {
                    projection: name,
                    event_type,
                    position,
                    reason: e.to_string(),
                }
            };
            for event in unseen() {
                self.projection
                    .react(event)
                    .instrument((self.event_span)(&name, event))
                    .await
                    .map_err(failed(event))?;
            }
            let mut tx = DB::begin_write(&self.pool)
                .await
                .map_err(|e| self.db_error(e))?;
            for event in unseen() {
                self.projection
                    .apply(&mut tx, event)
                    .instrument((self.event_span)(&name, event))
                    .await
                    .map_err(failed(event))?;
            }
            DB::save_checkpoint(&mut tx, &name, last)
                .await
                .map_err(|e| self.db_error(e))?;
            tx.commit().await.map_err(|e| self.db_error(e))?;
            checkpoint = last;
            self.progress.send_replace(checkpoint);
            // Only a hint for the store: after a failure here the next start resumes from the
            // read model's checkpoint anyway.
            if let Err(err) = subscription.checkpoint(last).await {
                warn!(projection = %name, position = last, error = %err, "subscription checkpoint not saved");
            }
        }
        info!(projection = %name, checkpoint, "projection stopped");
        Ok(())
    }
}
