//! The projection runner applies each event once, keeps its checkpoint with the read model,
//! rebuilds from zero on demand, and rolls back a batch that fails — on SQLite beside the
//! embedded store and on PostgreSQL beside JetStream.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Pool, Postgres, Sqlite};
use uuid::Uuid;
use whatsnap_events::{AggregateKind, LocationId, NewEvent, StreamId};
use whatsnap_eventstore::projection::{
    CheckpointTable, Projection, ProjectionError, ProjectionRunner,
};
use whatsnap_eventstore::{EventStore, ExpectedVersion};
use whatsnap_testkit::{
    Counted, CountingProjection, TestNats, TestPostgres, TestSqlite, append_message_events,
};

/// Runs the projection until it has applied everything up to `head`, then stops it.
async fn run_to<DB: CheckpointTable>(runner: &ProjectionRunner<DB>, head: u64) {
    let mut progress = runner.progress();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let waiter = async move {
        progress.wait_for(|p| *p >= head).await.unwrap();
        let _ = stop.send(());
    };
    let run = runner.run_until(async {
        let _ = stopped.await;
    });
    let (result, ()) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(run, waiter) })
            .await
            .expect("the projection catches up");
    result.unwrap();
}

async fn applies_once_resumes_and_rebuilds<DB: CheckpointTable>(
    store: Arc<dyn EventStore>,
    pool: Pool<DB>,
    counted: impl AsyncFn(&CountingProjection, &Pool<DB>) -> Counted,
) where
    CountingProjection: Projection<DB>,
{
    let projection = Arc::new(CountingProjection::new("counting"));
    let runner =
        ProjectionRunner::new(store.clone(), pool.clone(), projection.clone()).batch_size(40);

    let head = append_message_events(store.as_ref(), 250, 25).await;
    run_to(&runner, head).await;
    assert_eq!(
        counted(&projection, &pool).await,
        Counted {
            rows: 250,
            total: 250
        }
    );

    // A restart picks up where the checkpoint says, applying only what is new.
    let head = append_message_events(store.as_ref(), 50, 25).await;
    let runner = ProjectionRunner::new(store.clone(), pool.clone(), projection.clone());
    run_to(&runner, head).await;
    assert_eq!(
        counted(&projection, &pool).await,
        Counted {
            rows: 300,
            total: 300
        }
    );

    runner.rebuild().await.unwrap();
    assert_eq!(
        counted(&projection, &pool).await,
        Counted { rows: 0, total: 0 }
    );
    run_to(&runner, head).await;
    assert_eq!(
        counted(&projection, &pool).await,
        Counted {
            rows: 300,
            total: 300
        }
    );
}

async fn a_failing_event_rolls_back_its_batch<DB: CheckpointTable>(
    store: Arc<dyn EventStore>,
    pool: Pool<DB>,
    counted: impl AsyncFn(&CountingProjection, &Pool<DB>) -> Counted,
) where
    CountingProjection: Projection<DB>,
{
    let location = LocationId::parse("loc1").unwrap();
    let stream = StreamId::for_uuid(location, AggregateKind::Message, Uuid::now_v7());
    let mut events: Vec<_> = (0..10)
        .map(|_| NewEvent::raw("MessageRead", "{}"))
        .collect();
    events[5].payload = "poison".into();
    store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let projection = Arc::new(CountingProjection::new("poisoned"));
    let runner = ProjectionRunner::new(store, pool.clone(), projection.clone()).batch_size(100);
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        runner.run_until(std::future::pending()),
    )
    .await
    .expect("the runner stops on the failure")
    .unwrap_err();
    assert!(matches!(err, ProjectionError::Apply { .. }), "{err}");
    assert!(err.to_string().contains("MessageRead"), "{err}");
    // The five good events before it were in the same transaction: none of them stayed.
    assert_eq!(
        counted(&projection, &pool).await,
        Counted { rows: 0, total: 0 }
    );
    assert_eq!(runner.prepare().await.unwrap(), 0, "checkpoint unchanged");
}

async fn sqlite_pair(fixture: &TestSqlite) -> (Arc<dyn EventStore>, Pool<Sqlite>) {
    let store = Arc::new(fixture.store().await.unwrap());
    // The embedded read model lives in the same file as the log.
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&fixture.config.path)
                .busy_timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    (store, pool)
}

#[tokio::test]
async fn sqlite_read_model_applies_each_event_once_resumes_and_rebuilds() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    applies_once_resumes_and_rebuilds(store, pool, async |p, pool| p.counted_in_sqlite(pool).await)
        .await;
}

#[tokio::test]
async fn postgres_read_model_applies_each_event_once_resumes_and_rebuilds() {
    let nats = TestNats::new().await.unwrap();
    let pg = TestPostgres::new().await.unwrap();
    let store: Arc<dyn EventStore> = Arc::new(nats.store().await.unwrap());
    applies_once_resumes_and_rebuilds::<Postgres>(store, pg.pool.clone(), async |p, pool| {
        p.counted_in_postgres(pool).await
    })
    .await;
}

#[tokio::test]
async fn sqlite_read_model_rolls_back_a_batch_with_a_failing_event() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    a_failing_event_rolls_back_its_batch(store, pool, async |p, pool| {
        p.counted_in_sqlite(pool).await
    })
    .await;
}

#[tokio::test]
async fn postgres_read_model_rolls_back_a_batch_with_a_failing_event() {
    let nats = TestNats::new().await.unwrap();
    let pg = TestPostgres::new().await.unwrap();
    let store: Arc<dyn EventStore> = Arc::new(nats.store().await.unwrap());
    a_failing_event_rolls_back_its_batch::<Postgres>(store, pg.pool.clone(), async |p, pool| {
        p.counted_in_postgres(pool).await
    })
    .await;
}

/// A projection whose schema grows a table between two releases.
struct Evolving(&'static [&'static str]);

#[async_trait::async_trait]
impl Projection<Sqlite> for Evolving {
    fn name(&self) -> &str {
        "evolving"
    }

    fn migrations(&self) -> &'static [&'static str] {
        self.0
    }

    async fn apply(
        &self,
        _: &mut sqlx::SqliteConnection,
        _: &whatsnap_events::RecordedEvent,
    ) -> Result<(), whatsnap_eventstore::projection::ApplyError> {
        Ok(())
    }

    async fn reset(&self, _: &mut sqlx::SqliteConnection) -> sqlx::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_migration_added_in_a_later_release_is_applied_once() {
    const FIRST: &[&str] = &["CREATE TABLE first (id TEXT PRIMARY KEY)"];
    const SECOND: &[&str] = &[
        "CREATE TABLE first (id TEXT PRIMARY KEY)",
        "ALTER TABLE first ADD COLUMN note TEXT; CREATE TABLE second (id TEXT PRIMARY KEY)",
    ];
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    ProjectionRunner::new(store.clone(), pool.clone(), Arc::new(Evolving(FIRST)))
        .prepare()
        .await
        .unwrap();
    let upgraded = ProjectionRunner::new(store.clone(), pool.clone(), Arc::new(Evolving(SECOND)));
    upgraded.prepare().await.unwrap();
    // Applied again, it would fail: the column and the table exist.
    upgraded.prepare().await.unwrap();
    sqlx::query("INSERT INTO first (id, note) VALUES ('a', 'b')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO second (id) VALUES ('a')")
        .execute(&pool)
        .await
        .unwrap();
}
