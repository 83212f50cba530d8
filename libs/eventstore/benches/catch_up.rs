//! How fast a read model catches up a backlog on the embedded store, against the raw read of
//! the same log in the same run:
//!
//!     cargo bench -p whatsnap-eventstore --bench catch_up
//!
//! The log holds `WHATSNAP_BENCH_EVENTS` events (100,000) of one type; a read model reading
//! that type applies each batch in one statement (as the tokens read model applies a rebuild's
//! revocations), in a SQLite file of its own with `synchronous = NORMAL`, as `whatsnap serve`
//! keeps its read models, with whatsnap's logs and traces installed and its runner's event
//! spans, as `serve` has them (logs go to stderr). It prints the raw reads/s
//! (pages of 1,000 through `read_all`), the read model's events/s from its start to its last
//! event, and the ratio.

// The figures go to stdout, the logs of the telemetry installed to stderr.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Any, AnyConnection};
use uuid::Uuid;
use whatsnap_events::{AggregateKind, LocationId, NewEvent, RecordedEvent, StreamId};
use whatsnap_eventstore::projection::{ApplyError, Projection, ProjectionRunner};
use whatsnap_eventstore::sqlite::{SqliteConfig, SqliteEventStore};
use whatsnap_eventstore::{EventStore, ExpectedVersion};

/// Counts the events it is handed, one statement a batch.
struct Counted;

#[async_trait::async_trait]
impl Projection<Any> for Counted {
    fn name(&self) -> &str {
        "counted"
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE counted (n BIGINT NOT NULL)",
            "INSERT INTO counted VALUES (0)",
        ]
    }

    fn reads(&self) -> Option<&'static [&'static str]> {
        Some(&["MessageRead"])
    }

    async fn apply(&self, conn: &mut AnyConnection, _: &RecordedEvent) -> Result<(), ApplyError> {
        sqlx::query("UPDATE counted SET n = n + 1")
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn apply_together(
        &self,
        conn: &mut AnyConnection,
        events: &[&RecordedEvent],
    ) -> Option<Result<(), ApplyError>> {
        let counted = sqlx::query("UPDATE counted SET n = n + $1")
            .bind(events.len() as i64)
            .execute(conn)
            .await;
        Some(counted.map(drop).map_err(Into::into))
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        sqlx::query("UPDATE counted SET n = 0")
            .execute(conn)
            .await
            .map(drop)
    }
}

#[tokio::main]
async fn main() {
    let events: usize = std::env::var("WHATSNAP_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteEventStore::open(&SqliteConfig::new(dir.path().join("log.db")))
            .await
            .unwrap(),
    );
    let payload =
        serde_json::json!({ "message_id": Uuid::now_v7(), "provider_message_id": "wamid.1" })
            .to_string();
    let stream = StreamId::for_uuid(
        LocationId::parse("bench").unwrap(),
        AggregateKind::Message,
        Uuid::now_v7(),
    );
    for start in (0..events).step_by(500) {
        let batch = (start..events.min(start + 500))
            .map(|_| NewEvent::raw("MessageRead", payload.clone()))
            .collect();
        store
            .append(&stream, ExpectedVersion::Any, batch)
            .await
            .unwrap();
    }
    let head = store.head_position().await.unwrap();

    let started = Instant::now();
    let (mut after, mut read) = (0, 0u64);
    loop {
        let page = store.read_all(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        read += page.len() as u64;
    }
    let raw = read as f64 / started.elapsed().as_secs_f64();

    sqlx::any::install_default_drivers();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("read-models.db").display()
    );
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(4)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::Executor::execute(
                    conn,
                    "PRAGMA busy_timeout = 30000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL",
                )
                .await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .unwrap();
    let store: Arc<dyn EventStore> = store;
    let _telemetry = whatsnap_telemetry::init("catch-up-bench").unwrap();
    let runner = ProjectionRunner::new(store, pool, Arc::new(Counted))
        .instrument(whatsnap_telemetry::event_span);
    runner.prepare().await.unwrap();
    let mut progress = runner.progress();
    let started = Instant::now();
    let caught_up = async {
        progress.wait_for(|p| *p >= head).await.unwrap();
    };
    tokio::select! {
        _ = runner.run_until(std::future::pending()) => unreachable!(),
        () = caught_up => {}
        () = tokio::time::sleep(Duration::from_secs(300)) => panic!("not caught up in 5 min"),
    }
    let projected = head as f64 / started.elapsed().as_secs_f64();
    println!("raw reads/s: {raw:.0}");
    println!(
        "read model caught up: {projected:.0} events/s = {:.1}% of raw reads",
        100.0 * projected / raw
    );
}
