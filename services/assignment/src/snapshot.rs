//! The decider's snapshot: its model, the log position the model holds every event up to, and
//! the decisions it appended that the log had not delivered back to it yet. Kept in the read
//! database, so that a start reads the log only after the snapshot's position: the first
//! decision after a start does not wait for the whole log to be read again.
//!
//! A snapshot is only ever a shortcut: one that is missing, unreadable, of another format or
//! ahead of the log (a new event store beside an old database) is passed over, and the decider
//! reads the log from the beginning as it did before snapshots.

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use uuid::Uuid;
use whatsnap_rpc::ReadDb;

use crate::model::{LocationSnapshot, Model};

/// The layout of [`Snapshot`]; a snapshot of another one is passed over.
const FORMAT: u32 = 1;

/// The decider's state at a position in the log.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    format: u32,
    /// The model holds every event up to and including this position.
    pub position: u64,
    /// Decisions the decider appended and took into the model, not yet delivered back by the
    /// log: when they come, they are passed over, as the model holds them already.
    pub own: Vec<Uuid>,
    locations: Vec<(String, LocationSnapshot)>,
}

impl Snapshot {
    pub fn of(model: &Model, position: u64, own: impl IntoIterator<Item = Uuid>) -> Self {
        Self {
            format: FORMAT,
            position,
            own: own.into_iter().collect(),
            locations: model.snapshot(),
        }
    }

    /// The model the snapshot was taken of.
    pub fn model(self) -> Result<Model, String> {
        Model::restore(self.locations)
    }
}

/// Where a decider keeps its snapshot: one row of the read database, by decider name.
#[derive(Clone)]
pub struct Snapshots {
    db: ReadDb,
    name: &'static str,
}

impl Snapshots {
    pub fn new(db: ReadDb, name: &'static str) -> Self {
        Self { db, name }
    }

    async fn prepare(&self) -> sqlx::Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS assignment_snapshots (name TEXT PRIMARY KEY, \
             position BIGINT NOT NULL, body TEXT NOT NULL)",
        )
        .execute(&self.db)
        .await
        .map(drop)
    }

    /// The latest snapshot at or below `head` (the log's head), if one can be used.
    pub async fn load(&self, head: u64) -> Option<Snapshot> {
        let row: Option<(i64, String)> = match self.prepare().await {
            Ok(()) => sqlx::query_as(
                "SELECT position, body FROM assignment_snapshots WHERE name = $1",
            )
            .bind(self.name)
            .fetch_optional(&self.db)
            .await
            .unwrap_or_else(|err| {
                warn!(decider = self.name, error = %err, "snapshot not read; reading the whole log");
                None
            }),
            Err(err) => {
                warn!(decider = self.name, error = %err, "snapshot table not ready; reading the whole log");
                None
            }
        };
        let (position, body) = row?;
        let snapshot: Snapshot = match serde_json::from_str(&body) {
            Ok(snapshot) => snapshot,
            Err(err) => {
                warn!(decider = self.name, position, error = %err, "snapshot unreadable; reading the whole log");
                return None;
            }
        };
        if snapshot.format != FORMAT {
            info!(
                decider = self.name,
                format = snapshot.format,
                "snapshot of another format; reading the whole log"
            );
            return None;
        }
        if snapshot.position > head {
            warn!(
                decider = self.name,
                position = snapshot.position,
                head,
                "snapshot is ahead of the event log (a new log beside an old database?); reading the whole log"
            );
            return None;
        }
        Some(snapshot)
    }

    /// Replaces the snapshot with `snapshot`, unless the stored one is further on (another
    /// replica's).
    pub async fn save(&self, snapshot: &Snapshot) -> Result<(), String> {
        let body = serde_json::to_string(snapshot).map_err(|e| e.to_string())?;
        self.prepare().await.map_err(|e| e.to_string())?;
        sqlx::query(
            "INSERT INTO assignment_snapshots (name, position, body) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, body = excluded.body \
             WHERE excluded.position > assignment_snapshots.position",
        )
        .bind(self.name)
        .bind(snapshot.position.min(i64::MAX as u64) as i64)
        .bind(body)
        .execute(&self.db)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
    }
}
