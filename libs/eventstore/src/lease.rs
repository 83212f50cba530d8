//! Leases: which replica does a piece of work that must be done in one place at a time — a
//! projection, the queue of replies, the GHL worker. Replicas of the same targets share the
//! read-model database; each piece of work has a row there naming its holder, an epoch that
//! grows with every change of holder, and when the lease runs out unless renewed.
//!
//! - A replica takes a free or run-out lease, renews it every third of its time to live, and
//!   stops the work before it could run out unrenewed (a database it cannot reach). A replica
//!   that dies leaves its leases to run out; one that stops lets them go at once.
//! - The holder and epoch are the work's [`Fence`]: a projection's transaction renews its lease
//!   inside the transaction, so a replica that lost the lease while a batch was in hand cannot
//!   commit it ([`crate::projection::ProjectionRunner::fence`]). Effects on the outside world
//!   need no fence: the effect discipline reconciles an intent another replica left open.
//! - The work is spread: every live replica of the same targets heartbeats a member lease, and
//!   a replica takes no more than its share (work ÷ live replicas, rounded up), letting go of
//!   work when a new replica joins. The parts of a split piece of work (the contacts stage's,
//!   by contact; the GHL work's, by location) are shared on their own, so that every replica
//!   takes a share of them too.
//!
//! Expiry is written by each replica's clock: the time to live must be well above the clock
//! skew between the machines (NTP keeps it to milliseconds; the default is 10 s).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Pool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::projection::{CheckpointTable, Part};

pub(crate) const CREATE: &str = "CREATE TABLE IF NOT EXISTS whatsnap_leases (\
     name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch BIGINT NOT NULL, \
     expires_at_ms BIGINT NOT NULL)";
// A new row, or a run-out one taken over with the next epoch; nothing when someone holds it.
pub(crate) const ACQUIRE: &str = "INSERT INTO whatsnap_leases (name, holder, epoch, expires_at_ms) \
     VALUES ($1, $2, 1, $3) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
     epoch = whatsnap_leases.epoch + 1, expires_at_ms = excluded.expires_at_ms \
     WHERE whatsnap_leases.expires_at_ms < $4 RETURNING epoch";
pub(crate) const RENEW: &str = "UPDATE whatsnap_leases SET expires_at_ms = $4 \
     WHERE name = $1 AND holder = $2 AND epoch = $3";
pub(crate) const FORGET: &str =
    "DELETE FROM whatsnap_leases WHERE name LIKE $1 AND expires_at_ms < $2";
pub(crate) const COUNT: &str =
    "SELECT COUNT(*) FROM whatsnap_leases WHERE name LIKE $1 AND expires_at_ms >= $2";
pub(crate) const HELD: &str =
    "SELECT name, holder FROM whatsnap_leases WHERE name LIKE $1 AND expires_at_ms >= $2";

/// Who holds a lease, and since which change of holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub name: String,
    pub holder: String,
    pub epoch: i64,
}

/// How often [`Leases::exclusively`] asks for a lease another replica holds.
const EXCLUSIVE_POLL: Duration = Duration::from_millis(50);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The leases of one replica.
pub struct Leases<DB: CheckpointTable> {
    pool: Pool<DB>,
    /// This replica, as the lease rows name it.
    holder: String,
    /// The replicas of the same targets: their member leases start with it.
    members: String,
    ttl: Duration,
    /// Pieces of work this replica is ready to do.
    work: AtomicUsize,
    /// Of those, the ones that are parts of a split piece of work, with the split they are of.
    parts: Mutex<HashMap<String, String>>,
    /// The leases it holds now.
    held: Mutex<BTreeSet<String>>,
}

impl<DB: CheckpointTable> std::fmt::Debug for Leases<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("holder", &self.holder)
            .field("members", &self.members)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<DB: CheckpointTable> Leases<DB> {
    /// The leases of replica `holder` among those running `group` (e.g. the targets they
    /// serve), on `pool`; creates the table when it is not there.
    pub async fn open(
        pool: Pool<DB>,
        group: &str,
        holder: String,
        ttl: Duration,
    ) -> sqlx::Result<Arc<Self>> {
        let mut tx = DB::begin_write(&pool).await?;
        DB::create_checkpoint_table(&mut tx).await?;
        tx.commit().await?;
        Ok(Arc::new(Self {
            pool,
            holder,
            members: format!("member:{group}:"),
            ttl,
            work: AtomicUsize::new(0),
            parts: Mutex::default(),
            held: Mutex::new(BTreeSet::new()),
        }))
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Waits until no replica holds a lease of the work `split` split into another count of
    /// parts than `part`'s (nor the work whole, when `part` is one of several, nor its parts,
    /// when it is the whole); false at `shutdown`. For work that must never be done in two
    /// places at once, even while replicas with different counts run side by side (a change
    /// of the count, an upgrade that split the work): called once its own lease is taken, so
    /// of two replicas asking at once, at least one sees the other's lease and waits for it.
    pub async fn wait_for_other_counts(
        &self,
        split: &str,
        part: Part,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut reported = false;
        loop {
            match self.held_now(split).await {
                Ok(held) => {
                    let others: Vec<String> = held
                        .into_iter()
                        .map(|(name, _)| name)
                        .filter(|name| other_count(name, split, part))
                        .collect();
                    if others.is_empty() {
                        return true;
                    }
                    if !reported {
                        info!(
                            work = split,
                            count = part.count(),
                            ?others,
                            "waiting for replicas that split the work otherwise to let it go"
                        );
                        reported = true;
                    }
                }
                Err(err) => warn!(work = split, error = %err, "cannot see who holds the work"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(self.tick()) => {}
            }
        }
    }

    /// The leases whose name starts with `prefix` that some replica holds now, and their
    /// holders.
    async fn held_now(&self, prefix: &str) -> sqlx::Result<Vec<(String, String)>> {
        let mut conn = self.pool.acquire().await?;
        DB::held_leases(&mut conn, prefix, now_ms()).await
    }

    /// The leases this replica holds now.
    pub fn held(&self) -> BTreeSet<String> {
        self.held.lock().expect("leases lock").clone()
    }

    fn tick(&self) -> Duration {
        self.ttl / 3
    }

    /// Takes the lease `name` if nobody holds it; its fence when taken.
    pub async fn try_acquire(&self, name: &str) -> sqlx::Result<Option<Fence>> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let now = now_ms();
        let until = now + self.ttl.as_millis() as i64;
        let epoch = DB::acquire_lease(&mut tx, name, &self.holder, now, until).await?;
        tx.commit().await?;
        Ok(epoch.map(|epoch| Fence {
            name: name.to_owned(),
            holder: self.holder.clone(),
            epoch,
        }))
    }

    /// Extends the lease; false when another replica took it.
    pub async fn renew(&self, fence: &Fence) -> sqlx::Result<bool> {
        self.set_expiry(fence, now_ms() + self.ttl.as_millis() as i64)
            .await
    }

    async fn set_expiry(&self, fence: &Fence, until_ms: i64) -> sqlx::Result<bool> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let renewed = DB::renew_lease(&mut tx, fence, until_ms).await?;
        tx.commit().await?;
        Ok(renewed)
    }

    /// The live replicas of the same targets, this one among them (`None` when the database
    /// does not answer: then the shares are unbounded, and the leases themselves still keep
    /// each piece of work in one place).
    async fn members(&self) -> Option<usize> {
        let mut conn = self.pool.acquire().await.ok()?;
        let members = DB::count_leases(&mut conn, &self.members, now_ms())
            .await
            .unwrap_or(1);
        Some(members.max(1) as usize)
    }

    /// This replica's share of `name`'s kind of work: the parts of the split `name` is a part
    /// of, or else the work that is no part of a split. Each kind is shared on its own, its
    /// work divided by the live replicas: a replica holds no more than that, rounded up; and
    /// of a split, while another replica holds fewer parts than that rounded down, only such a
    /// replica takes a part, and one holding more lets one go — so the parts spread over every
    /// replica (two replicas of three each holding two of four would leave the third none).
    async fn share_of(&self, name: &str) -> Share {
        let parts = self.parts.lock().expect("leases lock").clone();
        let split = parts.get(name);
        let held: Vec<String> = self
            .held()
            .into_iter()
            .filter(|lease| parts.get(lease) == split)
            .collect();
        // The live replicas and, of a split, how many of its parts each holds; `None` when the
        // database does not answer.
        let standing = match split {
            Some(split) => self
                .parts_held_by_members(split, &parts)
                .await
                .map(|counts| (counts.len().max(1), counts)),
            None => self.members().await.map(|members| (members, Vec::new())),
        };
        let Some((members, counts)) = standing else {
            // Unbounded: the leases themselves still keep each piece of work in one place.
            return Share {
                held,
                room: true,
                over: false,
            };
        };
        let work = match split {
            Some(split) => parts.values().filter(|s| *s == split).count(),
            None => self.work.load(Ordering::Relaxed) - parts.len(),
        };
        let (floor, ceil) = (work / members, work.div_ceil(members));
        let short = counts.iter().any(|count| *count < floor);
        Share {
            room: held.len() < floor || (held.len() < ceil && !short),
            over: held.len() > ceil || (held.len() > floor && short),
            held,
        }
    }

    /// How many parts of `split` (whose parts this replica knows as `parts`) each live replica
    /// of the same targets holds, one count per replica.
    async fn parts_held_by_members(
        &self,
        split: &str,
        parts: &HashMap<String, String>,
    ) -> Option<Vec<usize>> {
        let members = self.held_now(&self.members).await.ok()?;
        let leases = self.held_now(split).await.ok()?;
        let mut held: HashMap<String, usize> =
            members.into_iter().map(|(_, holder)| (holder, 0)).collect();
        for (name, holder) in leases {
            if parts.get(&name).is_some_and(|s| s == split)
                && let Some(count) = held.get_mut(&holder)
            {
                *count += 1;
            }
        }
        Some(held.into_values().collect())
    }

    /// Says, every third of the time to live, that this replica is alive, until `shutdown`;
    /// then that it is gone. Members gone for an hour (each start is a new member) are
    /// forgotten.
    pub async fn heartbeat(self: Arc<Self>, shutdown: CancellationToken) {
        let name = format!("{}{}", self.members, self.holder);
        let mut fence = None;
        if let Err(err) = self
            .forget_members_gone_for(Duration::from_secs(3600))
            .await
        {
            warn!(error = %err, "members long gone not forgotten");
        }
        loop {
            fence = match fence {
                None => self.try_acquire(&name).await.ok().flatten(),
                Some(fence) => match self.renew(&fence).await {
                    Ok(true) => Some(fence),
                    _ => None,
                },
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.tick()) => {}
            }
        }
        if let Some(fence) = fence {
            let _ = self.set_expiry(&fence, 0).await;
        }
    }

    async fn forget_members_gone_for(&self, gone: Duration) -> sqlx::Result<u64> {
        let mut tx = DB::begin_write(&self.pool).await?;
        let before = now_ms() - gone.as_millis() as i64;
        let forgotten = DB::forget_leases(&mut tx, "member:", before).await?;
        tx.commit().await?;
        Ok(forgotten)
    }

    /// Runs `work` while this replica holds the lease `name`, until `shutdown`: waits for the
    /// lease (and for a share of the work that leaves room for it), starts `work` with its
    /// fence and a token that stops it, renews the lease, and stops the work — waiting for it
    /// to end — before letting the lease go: when it is lost, cannot be renewed in time, is
    /// more than this replica's share, or at shutdown.
    pub async fn hold<F, Fut>(self: Arc<Self>, name: String, shutdown: CancellationToken, work: F)
    where
        F: Fn(Fence, CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hold_part(None, name, shutdown, work).await
    }

    /// As [`Self::hold`], for `name` as a part of the split `split` (a projection split into
    /// parts, say): a replica holds no more than its share of the split's parts.
    pub async fn hold_part<F, Fut>(
        self: Arc<Self>,
        split: Option<String>,
        name: String,
        shutdown: CancellationToken,
        work: F,
    ) where
        F: Fn(Fence, CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.work.fetch_add(1, Ordering::Relaxed);
        if let Some(split) = split {
            self.parts
                .lock()
                .expect("leases lock")
                .insert(name.clone(), split);
        }
        loop {
            let Some(fence) = self.wait_for(&name, &shutdown).await else {
                return;
            };
            self.held.lock().expect("leases lock").insert(name.clone());
            info!(lease = %name, epoch = fence.epoch, "lease taken: this replica does the work");
            let stop = shutdown.child_token();
            let mut task = tokio::spawn(work(fence.clone(), stop.clone()));
            let mut renewed_at = Instant::now();
            let mut finished = false;
            let why = loop {
                tokio::select! {
                    _ = &mut task => {
                        finished = true;
                        break "the work ended";
                    }
                    () = tokio::time::sleep(self.tick()) => {}
                }
                if shutdown.is_cancelled() {
                    break "shutting down";
                }
                match self.renew(&fence).await {
                    Ok(true) => renewed_at = Instant::now(),
                    Ok(false) => break "another replica took it",
                    Err(err) => {
                        warn!(lease = %name, error = %err, "lease not renewed");
                        // Stopped before it can run out, so no two replicas work at once.
                        if renewed_at.elapsed() >= self.tick() * 2 {
                            break "it could not be renewed in time";
                        }
                    }
                }
                if self.over_share(&name).await {
                    break "another replica has room for it";
                }
            };
            stop.cancel();
            if !finished {
                let _ = task.await;
            }
            self.held.lock().expect("leases lock").remove(&name);
            let _ = self.set_expiry(&fence, 0).await;
            info!(lease = %name, epoch = fence.epoch, why, "lease let go: the work stopped here");
            if shutdown.is_cancelled() {
                return;
            }
            // Room for another replica to take it before this one looks again.
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.tick() * 2) => {}
            }
        }
    }

    /// Runs `work` once this replica holds the lease `name`, waiting while another replica
    /// holds it, and lets the lease go when `work` ends: for a short piece of work that must
    /// not run on two replicas at once (a token refresh, which spends the refresh token). The
    /// lease is renewed while `work` runs; `work` is not stopped if the renewal fails (it may
    /// be a call already on its way), which is logged. `Err` when the database cannot be
    /// asked for the lease, then `work` has not run.
    pub async fn exclusively<T>(
        &self,
        name: &str,
        work: impl Future<Output = T>,
    ) -> sqlx::Result<T> {
        let started = Instant::now();
        let fence = loop {
            if let Some(fence) = self.try_acquire(name).await? {
                break fence;
            }
            // A refresh takes a round trip or two: look often, and give a holder that died
            // the time its lease takes to run out.
            tokio::time::sleep(EXCLUSIVE_POLL).await;
        };
        let waited = started.elapsed();
        if waited > self.tick() {
            info!(lease = %name, waited_ms = waited.as_millis() as u64, "lease taken after another replica's work");
        }
        tokio::pin!(work);
        let outcome = loop {
            tokio::select! {
                outcome = &mut work => break outcome,
                () = tokio::time::sleep(self.tick()) => {}
            }
            match self.renew(&fence).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!(lease = %name, "lease lost while its work ran: another replica may do it too")
                }
                Err(err) => {
                    warn!(lease = %name, error = %err, "lease not renewed while its work ran")
                }
            }
        };
        if let Err(err) = self.set_expiry(&fence, 0).await {
            warn!(lease = %name, error = %err, "lease not let go: it runs out by itself");
        }
        Ok(outcome)
    }

    /// The lease, once free and within this replica's share; `None` at shutdown.
    async fn wait_for(&self, name: &str, shutdown: &CancellationToken) -> Option<Fence> {
        loop {
            if self.share_of(name).await.room {
                match self.try_acquire(name).await {
                    Ok(Some(fence)) => return Some(fence),
                    Ok(None) => {}
                    Err(err) => warn!(lease = %name, error = %err, "lease not taken"),
                }
            }
            // Jittered, so that replicas that started together do not ask together.
            let pause = self.tick().mul_f64(0.5 + rand::random::<f64>() * 0.5);
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Whether this replica holds more than its share of `name`'s kind of work and `name` is
    /// the one to let go (the last of those leases by name, so that one goes at a time).
    async fn over_share(&self, name: &str) -> bool {
        let share = self.share_of(name).await;
        share.over && share.held.last().is_some_and(|last| last == name)
    }
}

/// Whether the lease `name` is of the work `split` split into another count than `part`'s (or
/// whole while `part` is one of several, or the other way round).
fn other_count(name: &str, split: &str, part: Part) -> bool {
    match Part::of_name(name) {
        Some((of, other)) => of == split && other.count() != part.count(),
        None => name == split && part.count() != 1,
    }
}

/// A replica's share of one kind of work (see [`Leases::share_of`]).
struct Share {
    /// The leases of that kind it holds, in name order.
    held: Vec<String>,
    /// Whether it may take one more.
    room: bool,
    /// Whether it must let one go.
    over: bool,
}

#[cfg(test)]
mod tests {
    use sqlx::sqlite::SqlitePoolOptions;

    use super::*;

    async fn pool() -> (tempfile::TempDir, Pool<sqlx::Sqlite>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("leases.db").display()
        );
        let pool = SqlitePoolOptions::new().connect(&url).await.unwrap();
        (dir, pool)
    }

    /// Replicas `a` and `b` of the same targets, with leases of `ttl` in a new database.
    async fn two_replicas(
        ttl: Duration,
    ) -> (
        tempfile::TempDir,
        Arc<Leases<sqlx::Sqlite>>,
        Arc<Leases<sqlx::Sqlite>>,
    ) {
        let (dir, pool) = pool().await;
        let open = |holder: &str| Leases::open(pool.clone(), "all", holder.into(), ttl);
        let (a, b) = (open("a").await.unwrap(), open("b").await.unwrap());
        (dir, a, b)
    }

    #[tokio::test]
    async fn a_lease_has_one_holder_until_it_runs_out_and_the_next_holder_gets_a_new_epoch() {
        let ttl = Duration::from_millis(300);
        let (_dir, a, b) = two_replicas(ttl).await;
        let first = a.try_acquire("work").await.unwrap().unwrap();
        assert!(b.try_acquire("work").await.unwrap().is_none(), "held by a");
        assert!(a.renew(&first).await.unwrap());
        let second =
            whatsnap_testkit::eventually("a's lease runs out and b takes it", async || {
                b.try_acquire("work").await.unwrap()
            })
            .await;
        assert_eq!(second.epoch, first.epoch + 1);
        // a's fence no longer holds: a late renewal (or a fenced commit) is refused.
        assert!(!a.renew(&first).await.unwrap());
        assert!(b.renew(&second).await.unwrap());
    }

    #[tokio::test]
    async fn exclusive_work_runs_on_one_replica_at_a_time_even_past_the_time_to_live() {
        let ttl = Duration::from_millis(300);
        let (_dir, a, b) = two_replicas(ttl).await;
        // Who runs the work, in order, and how many run it at once.
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let now_running = Arc::new(AtomicUsize::new(0));
        let work = |holder: &'static str| {
            let (log, now_running) = (log.clone(), now_running.clone());
            async move {
                let before = now_running.fetch_add(1, Ordering::SeqCst);
                log.lock()
                    .unwrap()
                    .push(format!("{holder} starts beside {before}"));
                // Twice the time to live: only renewal keeps the other replica out.
                tokio::time::sleep(ttl * 2).await;
                now_running.fetch_sub(1, Ordering::SeqCst);
                holder
            }
        };
        let first = a.exclusively("refresh:x", work("a"));
        let second = async {
            // Asks once a holds it.
            whatsnap_testkit::eventually("a working", async || {
                (!log.lock().unwrap().is_empty()).then_some(())
            })
            .await;
            b.exclusively("refresh:x", work("b")).await
        };
        let (first, second) = tokio::join!(first, second);
        assert_eq!((first.unwrap(), second.unwrap()), ("a", "b"));
        assert_eq!(
            *log.lock().unwrap(),
            ["a starts beside 0", "b starts beside 0"]
        );

        // A holder that died with the lease leaves it to run out; the next one then works.
        let dead = a.try_acquire("refresh:y").await.unwrap().unwrap();
        let started = Instant::now();
        assert_eq!(
            b.exclusively("refresh:y", async { "b" }).await.unwrap(),
            "b"
        );
        assert!(
            started.elapsed() >= ttl / 2,
            "b waited for a's lease to run out"
        );
        assert!(!a.renew(&dead).await.unwrap(), "a's lease is gone");
    }

    #[tokio::test]
    async fn members_gone_for_long_are_forgotten_and_live_ones_kept() {
        let (_dir, pool) = pool().await;
        let ttl = Duration::from_millis(100);
        let gone = Leases::open(pool.clone(), "all", "gone".into(), ttl)
            .await
            .unwrap();
        let live = Leases::open(pool.clone(), "all", "live".into(), ttl)
            .await
            .unwrap();
        gone.try_acquire("member:all:gone").await.unwrap().unwrap();
        tokio::time::sleep(ttl * 25).await;
        live.try_acquire("member:all:live").await.unwrap().unwrap();
        live.try_acquire("projection:kept").await.unwrap().unwrap();
        tokio::time::sleep(ttl * 3).await;
        // Both have run out; only "gone" ran out more than two seconds ago.
        let forgotten = live.forget_members_gone_for(ttl * 20).await.unwrap();
        assert_eq!(forgotten, 1);
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM whatsnap_leases ORDER BY name")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(names, ["member:all:live", "projection:kept"]);
    }

    #[tokio::test]
    async fn work_moves_to_another_replica_when_its_holder_stops_and_two_replicas_share_it() {
        let (_dir, pool) = pool().await;
        let ttl = Duration::from_millis(300);
        let running: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let start = |holder: &'static str, stop: CancellationToken| {
            let running = running.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                let leases = Leases::open(pool, "all", holder.into(), ttl).await.unwrap();
                tokio::spawn(leases.clone().heartbeat(stop.clone()));
                let mut tasks = tokio::task::JoinSet::new();
                for name in ["one", "two"] {
                    let running = running.clone();
                    tasks.spawn(
                        leases
                            .clone()
                            .hold(name.into(), stop.clone(), move |_, stop| {
                                let running = running.clone();
                                async move {
                                    let me = (holder.to_owned(), name.to_owned());
                                    running.lock().unwrap().push(me.clone());
                                    stop.cancelled().await;
                                    running.lock().unwrap().retain(|r| *r != me);
                                }
                            }),
                    );
                }
                tasks.join_all().await;
            })
        };
        let doing = |holder: &str| {
            let running = running.lock().unwrap();
            running.iter().filter(|(h, _)| h == holder).count()
        };
        let until = async |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let now = running.lock().unwrap().clone();
                let names: BTreeSet<_> = now.iter().map(|(_, n)| n.clone()).collect();
                assert_eq!(
                    names.len(),
                    now.len(),
                    "the same work twice at once: {now:?}"
                );
                if done() {
                    break;
                }
                assert!(Instant::now() < deadline, "not within 10 s: {what}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let stop_a = CancellationToken::new();
        let a = start("a", stop_a.clone());
        until("a does both", &|| doing("a") == 2).await;
        let stop_b = CancellationToken::new();
        let b = start("b", stop_b.clone());
        until("a and b do one each", &|| {
            doing("a") == 1 && doing("b") == 1
        })
        .await;
        stop_a.cancel();
        a.await.unwrap();
        until("b does both", &|| doing("b") == 2).await;
        stop_b.cancel();
        b.await.unwrap();
    }

    #[tokio::test]
    async fn the_parts_of_a_split_spread_over_the_replicas_with_the_rest_of_the_work() {
        let (_dir, pool) = pool().await;
        let ttl = Duration::from_millis(300);
        let running: Arc<Mutex<BTreeSet<(String, String)>>> = Arc::default();
        // Named so that a replica letting go of its last leases by name would hand over the
        // parts first: without a share of its own, the split would end up on one replica.
        let work = [
            (None, "a-one"),
            (None, "a-two"),
            (None, "a-three"),
            (None, "a-four"),
            (Some("stage"), "stage_1_of_4"),
            (Some("stage"), "stage_2_of_4"),
            (Some("stage"), "stage_3_of_4"),
            (Some("stage"), "stage_4_of_4"),
        ];
        let start = |holder: &'static str, stop: CancellationToken| {
            let (running, pool) = (running.clone(), pool.clone());
            tokio::spawn(async move {
                let leases = Leases::open(pool, "all", holder.into(), ttl).await.unwrap();
                tokio::spawn(leases.clone().heartbeat(stop.clone()));
                let mut tasks = tokio::task::JoinSet::new();
                for (split, name) in work {
                    let running = running.clone();
                    let split = split.map(str::to_owned);
                    tasks.spawn(leases.clone().hold_part(
                        split,
                        name.into(),
                        stop.clone(),
                        move |_, stop| {
                            let running = running.clone();
                            async move {
                                let me = (holder.to_owned(), name.to_owned());
                                assert!(running.lock().unwrap().insert(me.clone()));
                                stop.cancelled().await;
                                running.lock().unwrap().remove(&me);
                            }
                        },
                    ));
                }
                tasks.join_all().await;
            })
        };
        let held = |holder: &str, parts: bool| {
            let running = running.lock().unwrap();
            running
                .iter()
                .filter(|(h, name)| h == holder && name.starts_with("stage") == parts)
                .count()
        };
        let stop = CancellationToken::new();
        let a = start("a", stop.clone());
        whatsnap_testkit::eventually("a does all of it", async || {
            (held("a", false) == 4 && held("a", true) == 4).then_some(())
        })
        .await;
        let b = start("b", stop.clone());
        whatsnap_testkit::eventually("a and b do half of each kind", async || {
            let halves = [
                held("a", false),
                held("a", true),
                held("b", false),
                held("b", true),
            ];
            (halves == [2, 2, 2, 2]).then_some(())
        })
        .await;
        let names: BTreeSet<String> = running
            .lock()
            .unwrap()
            .iter()
            .map(|(_, n)| n.clone())
            .collect();
        assert_eq!(names.len(), work.len(), "each piece once: {names:?}");
        stop.cancel();
        a.await.unwrap();
        b.await.unwrap();
    }

    #[tokio::test]
    async fn every_replica_takes_a_part_when_there_are_more_parts_than_replicas() {
        let (_dir, pool) = pool().await;
        let ttl = Duration::from_millis(300);
        let running: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let stop = CancellationToken::new();
        let mut replicas = Vec::new();
        // One by one, so that the first two take every part before the third comes.
        for holder in ["a", "b", "c"] {
            let leases = Leases::open(pool.clone(), "all", holder.into(), ttl)
                .await
                .unwrap();
            tokio::spawn(leases.clone().heartbeat(stop.clone()));
            for part in Part::all(4) {
                let (running, name) = (running.clone(), part.name("stage"));
                replicas.push(tokio::spawn(leases.clone().hold_part(
                    Some("stage".into()),
                    name.clone(),
                    stop.clone(),
                    move |_, stop| {
                        let (running, me) = (running.clone(), (holder.to_owned(), name.clone()));
                        async move {
                            running.lock().unwrap().push(me.clone());
                            stop.cancelled().await;
                            running.lock().unwrap().retain(|r| *r != me);
                        }
                    },
                )));
            }
            let replicas_now = replicas.len() / 4;
            whatsnap_testkit::eventually("the parts spread over the replicas so far", async || {
                let running = running.lock().unwrap().clone();
                let mut counts: Vec<usize> = ["a", "b", "c"][..replicas_now]
                    .iter()
                    .map(|h| running.iter().filter(|(r, _)| r == h).count())
                    .collect();
                counts.sort();
                let expected: &[usize] = match replicas_now {
                    1 => &[4],
                    2 => &[2, 2],
                    _ => &[1, 1, 2],
                };
                (running.len() == 4 && counts == expected).then_some(())
            })
            .await;
        }
        stop.cancel();
        for replica in replicas {
            replica.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_part_waits_for_the_work_whole_or_split_otherwise_to_be_let_go() {
        let (_dir, pool) = pool().await;
        let ttl = Duration::from_millis(300);
        let old = Leases::open(pool.clone(), "all", "old".into(), ttl)
            .await
            .unwrap();
        let new = Leases::open(pool.clone(), "all", "new".into(), ttl)
            .await
            .unwrap();
        // An earlier version runs the work whole; the new one splits it in two.
        let whole = old.try_acquire("work").await.unwrap().unwrap();
        let part = Part::all(2).next().unwrap();
        new.try_acquire(&part.name("work")).await.unwrap().unwrap();
        let let_go = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiting = tokio::spawn({
            let (new, let_go) = (new.clone(), let_go.clone());
            async move {
                let free = new
                    .wait_for_other_counts("work", part, &CancellationToken::new())
                    .await;
                (free, let_go.load(std::sync::atomic::Ordering::SeqCst))
            }
        });
        // The whole, still renewed, keeps the part waiting; then it is let go.
        for _ in 0..3 {
            assert!(old.renew(&whole).await.unwrap());
            tokio::time::sleep(ttl / 3).await;
        }
        let_go.store(true, std::sync::atomic::Ordering::SeqCst);
        old.set_expiry(&whole, 0).await.unwrap();
        assert_eq!(
            waiting.await.unwrap(),
            (true, true),
            "went on only once let go"
        );
        // Parts of the same count do not wait for each other; of another count, they do.
        assert!(!other_count("work_2_of_2", "work", part));
        assert!(other_count("work_2_of_3", "work", part));
        assert!(other_count("work", "work", part));
        assert!(other_count("work_1_of_2", "work", Part::WHOLE));
        assert!(!other_count("workers_1_of_3", "work", part));
    }

    #[test]
    fn a_split_is_told_by_its_parts_names() {
        use crate::projection::Part;
        let names: Vec<String> = Part::all(3).map(|part| part.name("stage")).collect();
        assert_eq!(names, ["stage_1_of_3", "stage_2_of_3", "stage_3_of_3"]);
        for name in &names {
            assert_eq!(Part::split_of(name), Some("stage"));
        }
        assert_eq!(Part::WHOLE.name("stage"), "stage");
        for whole in [
            "stage",
            "stage_1_of_1",
            "stage_4_of_3",
            "stage_0_of_3",
            "api_tokens",
        ] {
            assert_eq!(Part::split_of(whole), None, "{whole}");
        }
    }
}
