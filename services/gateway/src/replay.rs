//! Replay protection for GHL webhooks (`ghl-api.md` §6.3): a signed webhook is refused when its
//! `timestamp` is missing, unparsable or outside a window around now, and one whose `webhookId`
//! was seen within the window is acknowledged without acting on it again.
//!
//! The ids live in the read database (`ghl_webhooks_seen`: SQLite embedded, PostgreSQL
//! distributed), so every gateway replica and a restarted one know them. An id counts as seen
//! only once its webhook was acted on and acknowledged: one refused with 429 (so that GHL sends
//! it again) or whose request was dropped half way is not, or its retry would be dropped as a
//! duplicate. A request being handled holds a claim on its id; a claim left by a process that
//! died lapses after [`CLAIM_LEASE`], and ids are forgotten once they are older than the window.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use tracing::debug;
use whatsnap_rpc::ReadDb;

/// How long a request may hold a webhookId it is handling before another may take it over: a
/// gateway that died mid-request must not keep GHL's retry out for long.
pub const CLAIM_LEASE: Duration = Duration::from_secs(60);

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS ghl_webhooks_seen (webhook_id TEXT PRIMARY KEY, claim TEXT NOT NULL, handled BIGINT NOT NULL, at_ms BIGINT NOT NULL)",
];

/// Where the guard reads the time: the wall clock, or one a test sets.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

#[derive(Clone)]
pub struct ReplayGuard {
    db: ReadDb,
    window: Duration,
    clock: Clock,
}

impl std::fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// What the guard made of a webhook.
#[derive(Debug)]
pub enum Verdict {
    /// Not seen: act on it, then say so through the claim (absent when it has no webhookId).
    Fresh(Option<Claim>),
    /// This webhookId was handled already.
    Duplicate,
    /// Another request with this webhookId is being handled right now.
    InFlight,
    /// The timestamp is outside the window; the reason says by how much.
    Stale(String),
    /// No timestamp whatsnap can read: the webhook cannot be told from a replay.
    Unstamped(String),
    /// The read database cannot be reached: nothing is known, try again later.
    Unavailable(String),
}

/// A webhookId being handled. Only [`Claim::handled`] makes it "seen": a claim dropped
/// without it (the webhook was refused, the handler failed or its request was cancelled) lets
/// the sender's retry of the same webhook through.
#[derive(Debug)]
pub struct Claim {
    guard: ReplayGuard,
    id: String,
    token: String,
    settled: bool,
}

impl Claim {
    /// The webhook was acted on and acknowledged: a later delivery of it is a duplicate.
    pub async fn handled(mut self) {
        self.settled = true;
        let now = self.guard.now_ms();
        let marked = sqlx::query(
            "UPDATE ghl_webhooks_seen SET handled = 1, at_ms = $1 WHERE webhook_id = $2 AND claim = $3",
        )
        .bind(now)
        .bind(&self.id)
        .bind(&self.token)
        .execute(&self.guard.db)
        .await;
        if let Err(err) = marked {
            // What a webhook changes is idempotent: a retry acted on again repeats no effect.
            debug!(error = %err, "a handled GHL webhook could not be marked as seen");
        }
    }
}

impl Claim {
    /// The webhook was not acknowledged (refused, or its handling failed): the sender's retry
    /// of it is acted on.
    pub async fn release(mut self) {
        self.settled = true;
        release(&self.guard.db, &self.id, &self.token).await;
    }
}

async fn release(db: &ReadDb, id: &str, token: &str) {
    let released = sqlx::query(
        "DELETE FROM ghl_webhooks_seen WHERE webhook_id = $1 AND claim = $2 AND handled = 0",
    )
    .bind(id)
    .bind(token)
    .execute(db)
    .await;
    if let Err(err) = released {
        debug!(error = %err, "a GHL webhook's claim could not be released; it lapses");
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the lease lapses instead
        };
        let (db, id, token) = (self.guard.db.clone(), self.id.clone(), self.token.clone());
        // A request cancelled half way: released in the background.
        runtime.spawn(async move { release(&db, &id, &token).await });
    }
}

impl ReplayGuard {
    /// The guard over `db`, creating its table when it is not there.
    pub async fn open(db: ReadDb, window: Duration) -> Result<Self, sqlx::Error> {
        for migration in MIGRATIONS {
            sqlx::query(migration).execute(&db).await?;
        }
        Ok(Self {
            db,
            window,
            clock: Arc::new(Utc::now),
        })
    }

    /// Reads the time from `clock` instead of the wall clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now_ms(&self) -> i64 {
        (self.clock)().timestamp_millis()
    }

    /// Judges a webhook by its `timestamp` (ISO 8601, or milliseconds since the epoch), which
    /// it must carry, and its `webhookId`, which webhooks sent before GHL added it lack.
    pub async fn check(
        &self,
        webhook_id: Option<&str>,
        timestamp: Option<&serde_json::Value>,
    ) -> Verdict {
        if let Err(refused) = self.within_window(timestamp) {
            return refused;
        }
        let Some(id) = webhook_id.filter(|id| !id.is_empty()) else {
            return Verdict::Fresh(None);
        };
        match self.claim(id).await {
            Ok(verdict) => verdict,
            Err(err) => Verdict::Unavailable(format!("the replay guard's database: {err}")),
        }
    }

    fn within_window(&self, timestamp: Option<&serde_json::Value>) -> Result<(), Verdict> {
        let Some(at) = timestamp.and_then(whatsnap_ghl::webhook::timestamp) else {
            return Err(Verdict::Unstamped(match timestamp {
                None => "the webhook has no timestamp".to_owned(),
                Some(_) => {
                    "the webhook's timestamp is neither ISO 8601 nor milliseconds since the epoch"
                        .to_owned()
                }
            }));
        };
        let skew = ((self.clock)() - at).abs();
        if skew.to_std().unwrap_or(Duration::MAX) > self.window {
            return Err(Verdict::Stale(format!(
                "the webhook's timestamp {} is {} s from now, more than the {} s allowed",
                at.to_rfc3339(),
                skew.num_seconds(),
                self.window.as_secs()
            )));
        }
        Ok(())
    }

    /// Claims `id` for this request, unless it was handled or another request holds it.
    async fn claim(&self, id: &str) -> Result<Verdict, sqlx::Error> {
        let now = self.now_ms();
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        sqlx::query("DELETE FROM ghl_webhooks_seen WHERE at_ms < $1")
            .bind(now.saturating_sub(window))
            .execute(&self.db)
            .await?;
        let token = uuid::Uuid::new_v4().to_string();
        let inserted = sqlx::query(
            "INSERT INTO ghl_webhooks_seen (webhook_id, claim, handled, at_ms) VALUES ($1, $2, 0, $3) ON CONFLICT (webhook_id) DO NOTHING",
        )
        .bind(id)
        .bind(&token)
        .bind(now)
        .execute(&self.db)
        .await?
        .rows_affected();
        // A claim whose holder has not settled it within the lease is taken over.
        let lease = i64::try_from(CLAIM_LEASE.as_millis()).unwrap_or(i64::MAX);
        let taken = inserted == 1
            || sqlx::query(
                "UPDATE ghl_webhooks_seen SET claim = $1, at_ms = $2 WHERE webhook_id = $3 AND handled = 0 AND at_ms < $4",
            )
            .bind(&token)
            .bind(now)
            .bind(id)
            .bind(now.saturating_sub(lease))
            .execute(&self.db)
            .await?
            .rows_affected()
                == 1;
        if taken {
            return Ok(Verdict::Fresh(Some(Claim {
                guard: self.clone(),
                id: id.to_owned(),
                token,
                settled: false,
            })));
        }
        let handled = sqlx::query("SELECT handled FROM ghl_webhooks_seen WHERE webhook_id = $1")
            .bind(id)
            .fetch_optional(&self.db)
            .await?
            .map(|row| row.get::<i64, _>("handled"));
        Ok(match handled {
            Some(1) => Verdict::Duplicate,
            Some(_) => Verdict::InFlight,
            // Released between the two statements: the sender's next try goes through.
            None => Verdict::InFlight,
        })
    }
}
