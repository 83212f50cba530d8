//! GHL's pacing windows kept in the read-model database, so that the replica that takes the GHL
//! work over goes on with the windows the last one left instead of starting them afresh (which
//! would let it send a whole window's requests on top of its predecessor's, and GHL answer
//! 429).
//!
//! The worker doing the GHL work takes the windows up when it starts, saves what changed every
//! [`SAVE_EVERY`], and saves everything when it stops, saying it stopped. A worker that died
//! said nothing: its requests after its last save are unknown, and the next one lets each
//! location it was busy with wait a whole window (see
//! [`whatsnap_ghl::ratelimit::RateLimiter::resume`]).
//!
//! The GHL work may be split into [`Part`]s by location, each a worker of its own (on the
//! distributed backend, under a lease each): a part takes up, saves and releases the windows
//! of its own locations only, and says whether it stopped in a row of its own.

use std::time::Duration;

use sqlx::Row;
use tracing::{debug, info, warn};
use whatsnap_events::LocationId;
use whatsnap_eventstore::projection::Part;
use whatsnap_ghl::ratelimit::{Limits, RateLimiter, SavedWindow};
use whatsnap_rpc::ReadDb;

/// How often the worker saves the windows that changed.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Windows not saved for this long are dropped at the next take-up: their day is over.
const FORGOTTEN_AFTER: Duration = Duration::from_secs(2 * 24 * 60 * 60);

const CREATE: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS ghl_pacing (location_id TEXT PRIMARY KEY, \
     saved_window TEXT NOT NULL, saved_at_ms BIGINT NOT NULL)",
    // One row: whether the last worker saved its windows as it stopped.
    "CREATE TABLE IF NOT EXISTS ghl_pacing_holder (name TEXT PRIMARY KEY, \
     released BIGINT NOT NULL, saved_at_ms BIGINT NOT NULL)",
];
const HOLDER: &str = "ghl-sync";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Takes up the windows the last worker of `part` saved (of its locations), in place of what
/// `limiter` remembers, and records that a worker holds them now (so that a stop without
/// [`release`] reads as a death). Returns how many locations' windows it took up.
pub async fn take_up(db: &ReadDb, limiter: &RateLimiter, part: Part) -> sqlx::Result<usize> {
    for statement in CREATE {
        sqlx::query(statement).execute(db).await?;
    }
    let now = now_ms();
    sqlx::query("DELETE FROM ghl_pacing WHERE saved_at_ms < $1")
        .bind(now - FORGOTTEN_AFTER.as_millis() as i64)
        .execute(db)
        .await?;
    let released = |holder: String| async move {
        sqlx::query_scalar::<_, i64>("SELECT released FROM ghl_pacing_holder WHERE name = $1")
            .bind(holder)
            .fetch_optional(db)
            .await
    };
    // A part that never ran takes over from the worker of the whole (an earlier version's).
    let released = match released(part.name(HOLDER)).await? {
        None if part.count() > 1 => released(HOLDER.to_owned()).await?,
        found => found,
    };
    let rows = sqlx::query("SELECT location_id, saved_window FROM ghl_pacing")
        .fetch_all(db)
        .await?;
    let mut windows = Vec::with_capacity(rows.len());
    for row in rows {
        let location: String = row.get("location_id");
        let saved: String = row.get("saved_window");
        if !part.holds(&location) {
            continue;
        }
        match (
            LocationId::parse(&location),
            serde_json::from_str::<SavedWindow>(&saved),
        ) {
            (Ok(location), Ok(window)) => windows.push((location, window)),
            (parsed, window) => warn!(
                location_id = %location,
                location_error = parsed.err().map(|e| e.to_string()),
                window_error = window.err().map(|e| e.to_string()),
                "a saved GHL pacing window does not read; that location's pacing starts afresh"
            ),
        }
    }
    let died = released == Some(0);
    let taken = windows.len();
    limiter.resume(windows, now, died);
    set_released(db, part, false).await?;
    match died {
        true => warn!(
            locations = taken,
            "GHL pacing taken up from a worker that stopped without saving: each location it \
             was sending for waits one window, in case it sent more after its last save"
        ),
        false => info!(
            locations = taken,
            "GHL pacing taken up where the last worker left it"
        ),
    }
    Ok(taken)
}

/// Saves the windows of `part`'s locations that changed since the last save (all of them with
/// `all`).
pub async fn save(
    db: &ReadDb,
    limiter: &RateLimiter,
    part: Part,
    all: bool,
) -> sqlx::Result<usize> {
    let now = now_ms();
    let windows = limiter.saved_of(now, all, |location| part.holds(location.as_str()));
    if windows.is_empty() {
        return Ok(0);
    }
    let mut tx = whatsnap_eventstore::transaction::begin(db, None).await?;
    for (location, window) in &windows {
        let saved = serde_json::to_string(window).expect("a window serialises");
        sqlx::query(
            "INSERT INTO ghl_pacing (location_id, saved_window, saved_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (location_id) DO UPDATE SET saved_window = excluded.saved_window, \
             saved_at_ms = excluded.saved_at_ms",
        )
        .bind(location.as_str())
        .bind(saved)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(windows.len())
}

/// Saves every window of `part`'s locations and says the worker stopped having done so: the
/// next worker of the part goes on exactly where this one left off.
pub async fn release(db: &ReadDb, limiter: &RateLimiter, part: Part) -> sqlx::Result<()> {
    save(db, limiter, part, true).await?;
    set_released(db, part, true).await
}

/// What the GHL worker last saved of `location`'s daily allowance: requests left and when it
/// resets. `None` when nothing is saved (or the table is not there yet: no worker ran).
pub async fn daily_left(
    db: &ReadDb,
    location: &LocationId,
    limits: Limits,
) -> Option<(u32, Duration)> {
    let saved: Option<String> =
        sqlx::query_scalar("SELECT saved_window FROM ghl_pacing WHERE location_id = $1")
            .bind(location.as_str())
            .fetch_optional(db)
            .await
            .inspect_err(|err| debug!(error = %err, "no saved GHL pacing to read"))
            .ok()
            .flatten();
    let window: SavedWindow = serde_json::from_str(&saved?).ok()?;
    Some(window.daily_left(limits, now_ms()))
}

async fn set_released(db: &ReadDb, part: Part, released: bool) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO ghl_pacing_holder (name, released, saved_at_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET released = excluded.released, \
         saved_at_ms = excluded.saved_at_ms",
    )
    .bind(part.name(HOLDER))
    .bind(i64::from(released))
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}
