//! Events a projection could not handle. When an event keeps failing in a projection's `react`
//! or `apply`, the [`ProjectionRunner`](crate::projection::ProjectionRunner) parks it: a row in
//! `projection_parked`, written in the transaction that moves the checkpoint past the event, and
//! a `ProjectionEventParked` event in the log; the rest of the log goes on. An operator then asks
//! for a retry (the runner that owns the projection applies the event again and reports the
//! outcome in the row) or skips it. Either resolution is recorded as `ParkedEventResolved`.
//!
//! The table lives in the read-model database, beside the checkpoints, so every process that
//! shares that database sees the same parked events: the CLI's request reaches the owning
//! runner through the row, whichever process the request arrived at.

use std::fmt;
use std::time::Duration;

use sqlx::Pool;
use uuid::Uuid;
use whatsnap_events::{
    AggregateKind, Event, EventId, EventMetadata, NewEvent, ParkedEventResolved,
    ProjectionEventParked, RecordedEvent, StreamId,
};

use crate::projection::CheckpointTable;
use crate::{EventStore, ExpectedVersion, StoreError};

/// Where a parked event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkedStatus {
    /// Set aside; the projection went on without it.
    Parked,
    /// An operator asked for a retry; the owning runner has not tried yet.
    RetryRequested,
    /// Applied on an operator's retry.
    Retried,
    /// An operator chose to leave it unapplied.
    Skipped,
}

impl ParkedStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parked => "parked",
            Self::RetryRequested => "retry_requested",
            Self::Retried => "retried",
            Self::Skipped => "skipped",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "retry_requested" => Self::RetryRequested,
            "retried" => Self::Retried,
            "skipped" => Self::Skipped,
            _ => Self::Parked,
        }
    }

    /// True once an operator dealt with it.
    pub fn is_resolved(self) -> bool {
        matches!(self, Self::Retried | Self::Skipped)
    }
}

impl fmt::Display for ParkedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `projection_parked`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedEvent {
    pub projection: String,
    /// The event's position in the log.
    pub position: u64,
    pub event_id: String,
    pub stream_id: String,
    pub event_type: String,
    /// The last failure, as the projection reported it.
    pub reason: String,
    /// How many times the event was tried, operator retries included.
    pub attempts: u32,
    pub status: ParkedStatus,
    /// RFC 3339.
    pub parked_at: String,
    /// RFC 3339, once resolved.
    pub resolved_at: Option<String>,
    /// Who asked for the last retry or the skip.
    pub requested_by: Option<String>,
}

/// What the operator functions of this module fail with.
#[derive(Debug, thiserror::Error)]
pub enum ParkedError {
    #[error("{0}")]
    NotFound(String),
    #[error(
        "the event at position {position} of projection {projection} is no longer parked: it was {status}"
    )]
    AlreadyResolved {
        projection: String,
        position: u64,
        status: ParkedStatus,
    },
    #[error("read model database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store: {0}")]
    Store(#[from] StoreError),
}

/// Which parked events to load.
#[derive(Debug, Clone, Copy)]
pub enum ParkedQuery<'a> {
    /// Those not resolved yet, of every projection.
    Open,
    /// Every row, resolved ones included.
    All,
    One {
        projection: &'a str,
        position: u64,
    },
    /// The retries operators asked of one projection.
    RetryRequests {
        projection: &'a str,
    },
}

/// A change to `projection_parked`; each is conditional on the row's status, and returns how
/// many rows it changed.
#[derive(Debug, Clone, Copy)]
pub enum ParkedChange<'a> {
    Park(&'a ParkedEvent),
    RequestRetry {
        projection: &'a str,
        position: u64,
        requested_by: Option<&'a str>,
    },
    Skip {
        projection: &'a str,
        position: u64,
        requested_by: Option<&'a str>,
    },
    Retried {
        projection: &'a str,
        position: u64,
    },
    RetryFailed {
        projection: &'a str,
        position: u64,
        reason: &'a str,
    },
    /// Forgets a projection's parked events, for a rebuild from zero.
    Clear {
        projection: &'a str,
    },
}

pub(crate) const CREATE_PARKED: &str = "CREATE TABLE IF NOT EXISTS projection_parked (\
     projection TEXT NOT NULL, position BIGINT NOT NULL, event_id TEXT NOT NULL, \
     stream_id TEXT NOT NULL, event_type TEXT NOT NULL, reason TEXT NOT NULL, \
     attempts BIGINT NOT NULL, status TEXT NOT NULL, parked_at TEXT NOT NULL, \
     resolved_at TEXT, requested_by TEXT, PRIMARY KEY (projection, position))";

macro_rules! select_parked {
    ($rest:literal) => {
        concat!(
            "SELECT projection, position, event_id, stream_id, event_type, reason, attempts, \
             status, parked_at, resolved_at, requested_by FROM projection_parked ",
            $rest
        )
    };
}

pub(crate) const LOAD_OPEN: &str =
    select_parked!("WHERE status IN ('parked', 'retry_requested') ORDER BY projection, position");
pub(crate) const LOAD_ALL: &str = select_parked!("ORDER BY projection, position");
pub(crate) const LOAD_ONE: &str = select_parked!("WHERE projection = $1 AND position = $2");
pub(crate) const LOAD_RETRY_REQUESTS: &str =
    select_parked!("WHERE projection = $1 AND status = 'retry_requested' ORDER BY position");
// A rebuild replays the log, so an event may be parked again: the row starts over.
pub(crate) const PARK: &str = "INSERT INTO projection_parked (projection, position, event_id, \
     stream_id, event_type, reason, attempts, status, parked_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, 'parked', $8) \
     ON CONFLICT (projection, position) DO UPDATE SET event_id = excluded.event_id, \
     stream_id = excluded.stream_id, event_type = excluded.event_type, reason = excluded.reason, \
     attempts = excluded.attempts, status = 'parked', parked_at = excluded.parked_at, \
     resolved_at = NULL, requested_by = NULL";
pub(crate) const REQUEST_RETRY: &str = "UPDATE projection_parked SET status = 'retry_requested', \
     requested_by = $3 WHERE projection = $1 AND position = $2 \
     AND status IN ('parked', 'retry_requested')";
pub(crate) const SKIP: &str = "UPDATE projection_parked SET status = 'skipped', resolved_at = $3, \
     requested_by = $4 WHERE projection = $1 AND position = $2 \
     AND status IN ('parked', 'retry_requested')";
pub(crate) const RETRIED: &str = "UPDATE projection_parked SET status = 'retried', \
     resolved_at = $3, attempts = attempts + 1 \
     WHERE projection = $1 AND position = $2 AND status = 'retry_requested'";
pub(crate) const RETRY_FAILED: &str = "UPDATE projection_parked SET status = 'parked', \
     reason = $3, attempts = attempts + 1 \
     WHERE projection = $1 AND position = $2 AND status = 'retry_requested'";
pub(crate) const CLEAR: &str = "DELETE FROM projection_parked WHERE projection = $1";
pub(crate) const PROJECTION_NAMES: &str = "SELECT name FROM projection_checkpoints ORDER BY name";

/// The columns of `select_parked!`, as sqlx decodes them on every database.
pub(crate) type ParkedRow = (
    String,
    i64,
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
);

pub(crate) fn from_row(row: ParkedRow) -> ParkedEvent {
    let (
        projection,
        position,
        event_id,
        stream_id,
        event_type,
        reason,
        attempts,
        status,
        parked_at,
        resolved_at,
        requested_by,
    ) = row;
    ParkedEvent {
        projection,
        position: position as u64,
        event_id,
        stream_id,
        event_type,
        reason,
        attempts: attempts as u32,
        status: ParkedStatus::parse(&status),
        parked_at,
        resolved_at,
        requested_by,
    }
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The parked events, open ones only unless `include_resolved`.
pub async fn list<DB: CheckpointTable>(
    pool: &Pool<DB>,
    include_resolved: bool,
) -> Result<Vec<ParkedEvent>, ParkedError> {
    let mut conn = pool.acquire().await?;
    let query = if include_resolved {
        ParkedQuery::All
    } else {
        ParkedQuery::Open
    };
    Ok(DB::load_parked(&mut conn, query).await?)
}

/// The parked event of `projection` at `position`, or a NotFound that says what exists.
pub async fn find<DB: CheckpointTable>(
    pool: &Pool<DB>,
    projection: &str,
    position: u64,
) -> Result<ParkedEvent, ParkedError> {
    let mut conn = pool.acquire().await?;
    let found = DB::load_parked(
        &mut conn,
        ParkedQuery::One {
            projection,
            position,
        },
    )
    .await?;
    if let Some(parked) = found.into_iter().next() {
        return Ok(parked);
    }
    let names = DB::projection_names(&mut conn).await?;
    Err(ParkedError::NotFound(
        if names.iter().any(|name| name == projection) {
            format!(
                "projection {projection} has no parked event at position {position} \
                 (`whatsnap parked list` shows the parked events)"
            )
        } else {
            format!(
                "no projection named {projection:?}; the projections are {}",
                names.join(", ")
            )
        },
    ))
}

/// Asks the runner of `projection` to apply its parked event at `position` again; see
/// [`wait_for_retry`] for the outcome.
pub async fn request_retry<DB: CheckpointTable>(
    pool: &Pool<DB>,
    projection: &str,
    position: u64,
    requested_by: Option<&str>,
) -> Result<ParkedEvent, ParkedError> {
    let parked = open(pool, projection, position).await?;
    change_open(
        pool,
        &parked,
        ParkedChange::RequestRetry {
            projection,
            position,
            requested_by,
        },
    )
    .await?;
    find(pool, projection, position).await
}

/// Waits until the runner has tried the retry asked for (the row is no longer
/// `retry_requested`), at most `limit`; returns the row as it then is.
pub async fn wait_for_retry<DB: CheckpointTable>(
    pool: &Pool<DB>,
    projection: &str,
    position: u64,
    limit: Duration,
) -> Result<ParkedEvent, ParkedError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let parked = find(pool, projection, position).await?;
        if parked.status != ParkedStatus::RetryRequested || tokio::time::Instant::now() >= deadline
        {
            return Ok(parked);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Leaves the parked event unapplied for good, and records that in the log.
pub async fn skip<DB: CheckpointTable>(
    pool: &Pool<DB>,
    store: &dyn EventStore,
    projection: &str,
    position: u64,
    requested_by: Option<&str>,
) -> Result<ParkedEvent, ParkedError> {
    let parked = open(pool, projection, position).await?;
    change_open(
        pool,
        &parked,
        ParkedChange::Skip {
            projection,
            position,
            requested_by,
        },
    )
    .await?;
    announce_resolved(store, &parked, "skipped", requested_by).await?;
    find(pool, projection, position).await
}

/// Makes `change` to the `parked` row, which was open when read; an error says what became of
/// it when another request resolved it meanwhile.
async fn change_open<DB: CheckpointTable>(
    pool: &Pool<DB>,
    parked: &ParkedEvent,
    change: ParkedChange<'_>,
) -> Result<(), ParkedError> {
    let mut conn = pool.acquire().await?;
    let changed = DB::update_parked(&mut conn, change).await?;
    // The connection goes back before the row is read again.
    drop(conn);
    if changed == 0 {
        return Err(resolved_meanwhile(pool, parked).await);
    }
    Ok(())
}

async fn open<DB: CheckpointTable>(
    pool: &Pool<DB>,
    projection: &str,
    position: u64,
) -> Result<ParkedEvent, ParkedError> {
    let parked = find(pool, projection, position).await?;
    if parked.status.is_resolved() {
        return Err(ParkedError::AlreadyResolved {
            projection: parked.projection,
            position,
            status: parked.status,
        });
    }
    Ok(parked)
}

async fn resolved_meanwhile<DB: CheckpointTable>(
    pool: &Pool<DB>,
    parked: &ParkedEvent,
) -> ParkedError {
    match find(pool, &parked.projection, parked.position).await {
        Ok(now) => ParkedError::AlreadyResolved {
            projection: now.projection,
            position: now.position,
            status: now.status,
        },
        Err(err) => err,
    }
}

/// The stream of operational events about a projection in the location of `stream_id`.
fn operations_stream(
    stream_id: &str,
    projection: &str,
    position: u64,
) -> Result<StreamId, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let stream: StreamId = stream_id.parse().map_err(|e| corrupt(format!("{e}")))?;
    StreamId::new(
        stream.location().clone(),
        AggregateKind::Operations,
        projection,
    )
    .map_err(|e| corrupt(format!("{e}")))
}

/// Appends `ProjectionEventParked` for `event`. Its id derives from the projection and the
/// event, so announcing again after a crash between the announcement and the parking's commit
/// stores it once.
pub(crate) async fn announce_parked(
    store: &dyn EventStore,
    event: &RecordedEvent,
    parked: &ParkedEvent,
) -> Result<(), StoreError> {
    let stream = operations_stream(&parked.stream_id, &parked.projection, parked.position)?;
    let payload = Event::ProjectionEventParked(ProjectionEventParked {
        projection: parked.projection.clone(),
        position: parked.position,
        event_id: event.id.as_uuid(),
        event_type: parked.event_type.clone(),
        reason: parked.reason.clone(),
        attempts: parked.attempts,
    });
    let mut new = NewEvent::new(&payload, EventMetadata::caused_by(event));
    new.id = EventId::from_uuid(Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("whatsnap/parked/{}/{}", parked.projection, event.id).as_bytes(),
    ));
    store
        .append(&stream, ExpectedVersion::Any, vec![new])
        .await
        .map(drop)
}

/// Appends `ParkedEventResolved` (`action`: `retried` or `skipped`).
pub(crate) async fn announce_resolved(
    store: &dyn EventStore,
    parked: &ParkedEvent,
    action: &str,
    requested_by: Option<&str>,
) -> Result<(), StoreError> {
    let stream = operations_stream(&parked.stream_id, &parked.projection, parked.position)?;
    let payload = Event::ParkedEventResolved(ParkedEventResolved {
        projection: parked.projection.clone(),
        position: parked.position,
        action: action.to_owned(),
        requested_by: requested_by.map(str::to_owned),
    });
    let mut metadata = EventMetadata::new_correlation();
    metadata.causation_id = parked.event_id.parse::<Uuid>().ok();
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::new(&payload, metadata)],
        )
        .await
        .map(drop)
}
