//! Given 10,000 stored events, when the projection process is killed with SIGKILL in the middle
//! of applying them and started again, then the read model holds the effect of each event exactly
//! once — on the embedded backend and on JetStream + PostgreSQL.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sqlx::{Pool, Postgres, Sqlite};
use whatsnap_testkit::{
    ChildGuard, Counted, CountingProjection, TestNats, TestPostgres, TestSqlite,
    append_message_events,
};

const EVENTS: usize = 10_000;
/// Time each event spends inside the projector's transaction, so that kills land mid-batch.
const PAUSE_US: &str = "150";

/// The projector, killed when the guard drops should the test fail before it does.
fn projector(args: &[&str]) -> ChildGuard {
    ChildGuard::new(
        Command::new(env!("CARGO_BIN_EXE_crash-projector"))
            .args(args)
            .spawn()
            .expect("start crash-projector"),
    )
}

fn sigkill(mut child: ChildGuard) {
    child.signal(Signal::SIGKILL).unwrap();
}

/// The read model's checkpoint; `None` until the projector has created its tables.
trait Checkpoint {
    async fn checkpoint(&self) -> Option<u64>;
}

impl Checkpoint for Pool<Postgres> {
    async fn checkpoint(&self) -> Option<u64> {
        sqlx::query_scalar::<_, i64>(
            "SELECT position FROM projection_checkpoints WHERE name = 'crash'",
        )
        .fetch_one(self)
        .await
        .ok()
        .map(|p| p as u64)
    }
}

impl Checkpoint for Pool<Sqlite> {
    async fn checkpoint(&self) -> Option<u64> {
        sqlx::query_scalar::<_, i64>(
            "SELECT position FROM projection_checkpoints WHERE name = 'crash'",
        )
        .fetch_one(self)
        .await
        .ok()
        .map(|p| p as u64)
    }
}

async fn wait_for_checkpoint(pool: &impl Checkpoint, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(position) = pool.checkpoint().await.filter(|p| *p >= at_least) {
            return position;
        }
        assert!(
            Instant::now() < deadline,
            "the projector made no progress to {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Kills the projector twice part way, then lets a third one finish.
async fn kill_twice_then_finish(pool: &impl Checkpoint, head: u64, args: &[&str]) {
    for fraction in [0.25, 0.6] {
        let child = projector(args);
        let reached = wait_for_checkpoint(pool, (head as f64 * fraction) as u64).await;
        sigkill(child);
        let at_kill = pool.checkpoint().await.unwrap();
        assert!(
            reached <= at_kill && at_kill < head,
            "killed at {at_kill} of {head}: not mid-way"
        );
        eprintln!("SIGKILLed the projector with its checkpoint at position {at_kill} of {head}");
    }
    let child = projector(args);
    wait_for_checkpoint(pool, head).await;
    sigkill(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_projection_killed_mid_way_applies_each_event_exactly_once() {
    let fixture = TestSqlite::new().unwrap();
    let head = append_message_events(&fixture.store().await.unwrap(), EVENTS, 100).await;
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&fixture.config.path)
                .busy_timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let file = fixture.config.path.to_str().unwrap();
    kill_twice_then_finish(&pool, head, &["sqlite", file, PAUSE_US]).await;

    let counted = CountingProjection::new("crash")
        .counted_in_sqlite(&pool)
        .await;
    assert_eq!(
        counted,
        Counted {
            rows: EVENTS as i64,
            total: EVENTS as i64
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_projection_killed_mid_way_applies_each_event_exactly_once() {
    let nats = TestNats::new().await.unwrap();
    let pg = TestPostgres::new().await.unwrap();
    let head = append_message_events(&nats.store().await.unwrap(), EVENTS, 100).await;
    let max_bytes = nats.config.max_bytes.to_string();
    let args = [
        "jetstream",
        nats.config.url.as_str(),
        nats.config.stream_name.as_str(),
        nats.config.subject_prefix.as_str(),
        max_bytes.as_str(),
        pg.url.as_str(),
        pg.schema.as_str(),
        PAUSE_US,
    ];
    kill_twice_then_finish(&pg.pool, head, &args).await;

    let counted = CountingProjection::new("crash")
        .counted_in_postgres(&pg.pool)
        .await;
    assert_eq!(
        counted,
        Counted {
            rows: EVENTS as i64,
            total: EVENTS as i64
        }
    );
}
