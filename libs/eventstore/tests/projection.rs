//! The projection runner applies each event once, keeps its checkpoint with the read model and
//! never moves it backwards, rebuilds from zero on demand, parks an event it keeps failing on
//! while applying the others, waits out an outage of its database, and skips events written by
//! a newer version — on SQLite beside the embedded store and on PostgreSQL beside JetStream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::{Pool, Postgres, Sqlite};
use uuid::Uuid;
use whatsnap_events::{AggregateKind, Event, LocationId, NewEvent, RecordedEvent, StreamId};
use whatsnap_eventstore::lease::Leases;
use whatsnap_eventstore::parked::{self, ParkedError, ParkedStatus};
use whatsnap_eventstore::projection::{
    ApplyError, Backoff, CheckpointTable, Part, Projection, ProjectionRunner,
};
use whatsnap_eventstore::{
    EventStore, ExpectedVersion, SubscribeFrom, Subscription, SubscriptionSource,
};
use whatsnap_testkit::{
    Counted, CountingProjection, TestNats, TestPostgres, TestSqlite, append_message_events,
    eventually,
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

/// Appends one message stream of `payloads` (raw `MessageRead` events); returns their positions.
async fn append_payloads(store: &dyn EventStore, payloads: &[&str]) -> Vec<u64> {
    let location = LocationId::parse("loc1").unwrap();
    let stream = StreamId::for_uuid(location, AggregateKind::Message, Uuid::now_v7());
    let events = payloads
        .iter()
        .map(|payload| NewEvent::raw("MessageRead", payload.to_string()))
        .collect();
    let last = store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap()
        .position;
    let all = store.read_all(0, 10_000).await.unwrap();
    all.iter()
        .filter(|e| e.stream == stream)
        .map(|e| e.position)
        .inspect(|p| assert!(*p <= last))
        .collect()
}

/// Short pauses between tries, so that tests do not wait.
fn quick<DB: CheckpointTable>(runner: ProjectionRunner<DB>, attempts: u32) -> ProjectionRunner<DB> {
    runner
        .attempts(attempts)
        .backoff(Backoff {
            first: Duration::from_millis(5),
            max: Duration::from_millis(20),
        })
        .retry_poll(Duration::from_millis(50))
}

async fn a_poison_event_is_parked_and_the_log_goes_on<DB: CheckpointTable>(
    store: Arc<dyn EventStore>,
    pool: Pool<DB>,
    counted: impl AsyncFn(&CountingProjection, &Pool<DB>) -> Counted,
) where
    CountingProjection: Projection<DB>,
{
    let mut payloads = vec!["{}"; 10];
    payloads[5] = "poison";
    let positions = append_payloads(store.as_ref(), &payloads).await;
    let (poison, head) = (positions[5], positions[9]);
    // Only the messages' events: parking appends an announcement past `head`, which the runner
    // may or may not reach before the test stops it.
    let projection = Arc::new(CountingProjection::new("poisoned").reading(&["MessageRead"]));
    let runner = quick(
        ProjectionRunner::new(store.clone(), pool.clone(), projection.clone()),
        2,
    );
    run_to(&runner, head).await;

    // The good events before and after it, in the same batch, are applied.
    assert_eq!(
        counted(&projection, &pool).await,
        Counted { rows: 9, total: 9 }
    );
    // At the head, or past the announcement if the runner passed over it before it stopped.
    let checkpoint = runner.prepare().await.unwrap();
    assert!(checkpoint >= head, "checkpoint {checkpoint}, head {head}");
    let open = parked::list(&pool, false).await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    let row = &open[0];
    assert_eq!(
        (
            row.projection.as_str(),
            row.position,
            row.event_type.as_str()
        ),
        ("poisoned", poison, "MessageRead")
    );
    assert_eq!((row.status, row.attempts), (ParkedStatus::Parked, 2));
    assert!(row.reason.contains("poison event"), "{}", row.reason);

    // The log says so, in the location's operations stream.
    let announced: Vec<_> = store
        .read_all(head, 100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.decode() {
            Ok(Event::ProjectionEventParked(parked)) => Some((e.stream.to_string(), parked)),
            _ => None,
        })
        .collect();
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_eq!(announced[0].0, "loc1.operations.poisoned");
    assert_eq!(
        (announced[0].1.position, announced[0].1.attempts),
        (poison, 2)
    );

    // A retry that fails again keeps it parked, with one more attempt.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = runner.run_until(async {
        let _ = stopped.await;
    });
    let retry = async {
        parked::request_retry(&pool, "poisoned", poison, Some("ops"))
            .await
            .unwrap();
        let row = parked::wait_for_retry(&pool, "poisoned", poison, Duration::from_secs(30))
            .await
            .unwrap();
        let _ = stop.send(());
        row
    };
    let (result, row) = tokio::join!(run, retry);
    result.unwrap();
    assert_eq!((row.status, row.attempts), (ParkedStatus::Parked, 3));

    // Skipped, it is resolved and no longer open.
    let row = parked::skip(&pool, store.as_ref(), "poisoned", poison, Some("ops"))
        .await
        .unwrap();
    assert_eq!(row.status, ParkedStatus::Skipped);
    assert!(parked::list(&pool, false).await.unwrap().is_empty());
    let err = parked::skip(&pool, store.as_ref(), "poisoned", poison, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("was skipped"), "{err}");
    let resolved = store
        .read_all(head, 100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.decode() {
            Ok(Event::ParkedEventResolved(resolved)) => Some(resolved),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(resolved.len(), 1);
    assert_eq!(
        (
            resolved[0].action.as_str(),
            resolved[0].requested_by.as_deref()
        ),
        ("skipped", Some("ops"))
    );

    // Unknown positions and projections are named as such.
    let err = parked::find(&pool, "poisoned", poison + 1000)
        .await
        .unwrap_err();
    assert!(matches!(err, ParkedError::NotFound(_)), "{err}");
    assert!(
        err.to_string().contains("no parked event at position"),
        "{err}"
    );
    let err = parked::find(&pool, "nonesuch", poison).await.unwrap_err();
    assert!(
        err.to_string().contains("no projection named \"nonesuch\""),
        "{err}"
    );
}

/// Fails with a lost database connection on the events whose payload is `flaky`, the first
/// `failures` times.
struct Flaky {
    inner: CountingProjection,
    failures: AtomicU32,
}

#[async_trait::async_trait]
impl<DB: CheckpointTable> Projection<DB> for Flaky
where
    CountingProjection: Projection<DB>,
{
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn migrations(&self) -> &'static [&'static str] {
        Projection::<DB>::migrations(&self.inner)
    }

    async fn apply(
        &self,
        conn: &mut DB::Connection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let failing = event.payload.as_ref() == b"flaky"
            && self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok();
        if failing {
            return Err(Box::new(sqlx::Error::PoolTimedOut));
        }
        Projection::<DB>::apply(&self.inner, conn, event).await
    }

    async fn reset(&self, conn: &mut DB::Connection) -> sqlx::Result<()> {
        Projection::<DB>::reset(&self.inner, conn).await
    }
}

async fn a_database_outage_is_waited_out_not_parked<DB: CheckpointTable>(
    store: Arc<dyn EventStore>,
    pool: Pool<DB>,
    counted: impl AsyncFn(&CountingProjection, &Pool<DB>) -> Counted,
) where
    CountingProjection: Projection<DB>,
{
    let positions = append_payloads(store.as_ref(), &["{}", "{}", "flaky", "{}", "{}"]).await;
    let head = positions[4];
    let projection = Arc::new(Flaky {
        inner: CountingProjection::new("flaky"),
        failures: AtomicU32::new(2),
    });
    // One attempt only: were the outage counted as the event's failure, it would be parked.
    let runner = quick(
        ProjectionRunner::new(store.clone(), pool.clone(), projection.clone()),
        1,
    );
    run_to(&runner, head).await;
    assert_eq!(projection.failures.load(Ordering::SeqCst), 0, "it failed");
    assert_eq!(
        counted(&projection.inner, &pool).await,
        Counted { rows: 5, total: 5 }
    );
    assert!(parked::list(&pool, true).await.unwrap().is_empty());
}

async fn events_of_a_newer_version_are_skipped<DB: CheckpointTable>(
    store: Arc<dyn EventStore>,
    pool: Pool<DB>,
    counted: impl AsyncFn(&CountingProjection, &Pool<DB>) -> Counted,
) where
    CountingProjection: Projection<DB>,
{
    let location = LocationId::parse("loc1").unwrap();
    let stream = StreamId::for_uuid(location, AggregateKind::Message, Uuid::now_v7());
    let mut newer = NewEvent::raw("MessageRead", "{}");
    newer.schema_version = 99;
    let events = vec![
        NewEvent::raw("MessageRead", "{}"),
        NewEvent::raw("MessageEdited", "{\"body\":\"from the future\"}"),
        newer,
        NewEvent::raw("MessageRead", "{}"),
        // Last in the batch: the checkpoint still moves past it.
        NewEvent::raw("MessageEdited", "{}"),
    ];
    let head = store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap()
        .position;
    let projection = Arc::new(CountingProjection::new("newer"));
    let runner = quick(
        ProjectionRunner::new(store.clone(), pool.clone(), projection.clone()),
        1,
    );
    run_to(&runner, head).await;
    assert_eq!(
        counted(&projection, &pool).await,
        Counted { rows: 2, total: 2 }
    );
    assert_eq!(runner.prepare().await.unwrap(), head);
    assert!(parked::list(&pool, true).await.unwrap().is_empty());
}

/// A store whose subscriptions deliver the stored events, then the first three again (as
/// JetStream does after `ack_wait`), then say so and wait.
struct Redelivering {
    inner: Arc<dyn EventStore>,
    redelivered: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

struct RedeliveringSource {
    inner: Arc<dyn EventStore>,
    after: u64,
    delivered: Vec<RecordedEvent>,
    stage: u8,
    redelivered: Option<tokio::sync::oneshot::Sender<()>>,
}

#[async_trait::async_trait]
impl SubscriptionSource for RedeliveringSource {
    async fn next_batch(&mut self, max: usize) -> whatsnap_eventstore::Result<Vec<RecordedEvent>> {
        self.stage += 1;
        match self.stage {
            1 => {
                self.delivered = self.inner.read_all(self.after, max).await?;
                Ok(self.delivered.clone())
            }
            2 => Ok(self.delivered.iter().take(3).cloned().collect()),
            _ => {
                // The runner asks for more: it has handled the redelivered batch.
                if let Some(redelivered) = self.redelivered.take() {
                    let _ = redelivered.send(());
                }
                std::future::pending().await
            }
        }
    }

    async fn checkpoint(&mut self, _: u64) -> whatsnap_eventstore::Result<()> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl EventStore for Redelivering {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> whatsnap_eventstore::Result<whatsnap_eventstore::AppendOutcome> {
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> whatsnap_eventstore::Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream, from_version, limit).await
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> whatsnap_eventstore::Result<Vec<RecordedEvent>> {
        self.inner.read_all(after, limit).await
    }

    async fn head_position(&self) -> whatsnap_eventstore::Result<u64> {
        self.inner.head_position().await
    }

    async fn subscribe(
        &self,
        name: &str,
        from: SubscribeFrom,
    ) -> whatsnap_eventstore::Result<Subscription> {
        let SubscribeFrom::AfterOwn(after) = from else {
            panic!("the runner subscribes after its checkpoint");
        };
        let source = RedeliveringSource {
            inner: self.inner.clone(),
            after,
            delivered: Vec::new(),
            stage: 0,
            redelivered: self.redelivered.lock().unwrap().take(),
        };
        Ok(Subscription::new(name, Box::new(source)))
    }
}

async fn the_checkpoint_never_moves_backwards<DB: CheckpointTable>(
    store: Arc<dyn EventStore>,
    pool: Pool<DB>,
    counted: impl AsyncFn(&CountingProjection, &Pool<DB>) -> Counted,
) where
    CountingProjection: Projection<DB>,
{
    let head = append_message_events(store.as_ref(), 10, 10).await;
    let (redelivered, redelivery_handled) = tokio::sync::oneshot::channel();
    let redelivering: Arc<dyn EventStore> = Arc::new(Redelivering {
        inner: store.clone(),
        redelivered: std::sync::Mutex::new(Some(redelivered)),
    });
    let projection = Arc::new(CountingProjection::new("redelivered"));
    let runner = quick(
        ProjectionRunner::new(redelivering, pool.clone(), projection.clone()),
        1,
    );
    tokio::time::timeout(
        Duration::from_secs(60),
        runner.run_until(async {
            let _ = redelivery_handled.await;
        }),
    )
    .await
    .expect("the redelivery is handled")
    .unwrap();
    // The redelivered events were neither applied again nor allowed to rewind the checkpoint.
    assert_eq!(runner.prepare().await.unwrap(), head);
    assert_eq!(
        counted(&projection, &pool).await,
        Counted {
            rows: 10,
            total: 10
        }
    );
    assert!(parked::list(&pool, true).await.unwrap().is_empty());

    // Nor does a save of a lower position, e.g. from a process that is behind.
    let mut tx = DB::begin_write(&pool).await.unwrap();
    DB::save_checkpoint(&mut tx, "redelivered", 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(runner.prepare().await.unwrap(), head);
    // A rebuild is the one way back.
    runner.rebuild().await.unwrap();
    assert_eq!(runner.prepare().await.unwrap(), 0);
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
async fn sqlite_read_model_parks_a_poison_event_and_goes_on() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    a_poison_event_is_parked_and_the_log_goes_on(store, pool, async |p, pool| {
        p.counted_in_sqlite(pool).await
    })
    .await;
}

#[tokio::test]
async fn postgres_read_model_parks_a_poison_event_and_goes_on() {
    let nats = TestNats::new().await.unwrap();
    let pg = TestPostgres::new().await.unwrap();
    let store: Arc<dyn EventStore> = Arc::new(nats.store().await.unwrap());
    a_poison_event_is_parked_and_the_log_goes_on::<Postgres>(
        store,
        pg.pool.clone(),
        async |p, pool| p.counted_in_postgres(pool).await,
    )
    .await;
}

#[tokio::test]
async fn sqlite_read_model_waits_out_a_database_outage_without_parking() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    a_database_outage_is_waited_out_not_parked(store, pool, async |p, pool| {
        p.counted_in_sqlite(pool).await
    })
    .await;
}

#[tokio::test]
async fn postgres_read_model_waits_out_a_database_outage_without_parking() {
    let nats = TestNats::new().await.unwrap();
    let pg = TestPostgres::new().await.unwrap();
    let store: Arc<dyn EventStore> = Arc::new(nats.store().await.unwrap());
    a_database_outage_is_waited_out_not_parked::<Postgres>(
        store,
        pg.pool.clone(),
        async |p, pool| p.counted_in_postgres(pool).await,
    )
    .await;
}

#[tokio::test]
async fn sqlite_read_model_skips_events_of_a_newer_version() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    events_of_a_newer_version_are_skipped(store, pool, async |p, pool| {
        p.counted_in_sqlite(pool).await
    })
    .await;
}

#[tokio::test]
async fn postgres_read_model_skips_events_of_a_newer_version() {
    let nats = TestNats::new().await.unwrap();
    let pg = TestPostgres::new().await.unwrap();
    let store: Arc<dyn EventStore> = Arc::new(nats.store().await.unwrap());
    events_of_a_newer_version_are_skipped::<Postgres>(store, pg.pool.clone(), async |p, pool| {
        p.counted_in_postgres(pool).await
    })
    .await;
}

#[tokio::test]
async fn sqlite_read_model_checkpoint_never_moves_backwards() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    the_checkpoint_never_moves_backwards(store, pool, async |p, pool| {
        p.counted_in_sqlite(pool).await
    })
    .await;
}

#[tokio::test]
async fn postgres_read_model_checkpoint_never_moves_backwards() {
    let nats = TestNats::new().await.unwrap();
    let pg = TestPostgres::new().await.unwrap();
    let store: Arc<dyn EventStore> = Arc::new(nats.store().await.unwrap());
    the_checkpoint_never_moves_backwards::<Postgres>(store, pg.pool.clone(), async |p, pool| {
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

/// A [`CountingProjection`] that counts how often it was asked to apply an event, committed or
/// not.
struct Attempted {
    inner: CountingProjection,
    attempts: AtomicU32,
}

#[async_trait::async_trait]
impl Projection<Sqlite> for Attempted {
    fn name(&self) -> &str {
        Projection::<Sqlite>::name(&self.inner)
    }

    fn migrations(&self) -> &'static [&'static str] {
        Projection::<Sqlite>::migrations(&self.inner)
    }

    async fn apply(
        &self,
        conn: &mut sqlx::SqliteConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        Projection::<Sqlite>::apply(&self.inner, conn, event).await
    }

    async fn reset(&self, conn: &mut sqlx::SqliteConnection) -> sqlx::Result<()> {
        Projection::<Sqlite>::reset(&self.inner, conn).await
    }
}

/// A replica whose lease another took cannot commit: its batches roll back at the fence, and
/// the new holder applies each event once.
#[tokio::test]
async fn a_runner_whose_lease_was_taken_commits_nothing_and_the_holder_applies_each_event_once() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    let ttl = Duration::from_millis(200);
    let a = Leases::open(pool.clone(), "all", "replica-a".into(), ttl)
        .await
        .unwrap();
    let b = Leases::open(pool.clone(), "all", "replica-b".into(), ttl)
        .await
        .unwrap();
    let stale = a.try_acquire("projection:counting").await.unwrap().unwrap();
    let fresh = eventually("a's lease runs out and b takes it", async || {
        b.try_acquire("projection:counting").await.unwrap()
    })
    .await;
    assert_eq!(fresh.epoch, stale.epoch + 1);
    let head = append_message_events(store.as_ref(), 30, 5).await;

    let projection = Arc::new(Attempted {
        inner: CountingProjection::new("counting"),
        attempts: AtomicU32::new(0),
    });
    let quick = Backoff {
        first: Duration::from_millis(5),
        max: Duration::from_millis(20),
    };
    let late =
        ProjectionRunner::new(store.clone(), pool.clone(), projection.clone()).backoff(quick);
    late.fence(stale, ttl);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tried = async {
        eventually("a tried its batch twice", async || {
            (projection.attempts.load(Ordering::SeqCst) >= 2 * head as u32).then_some(())
        })
        .await;
        let _ = stop.send(());
    };
    let (ran, ()) = tokio::join!(
        late.run_until(async {
            let _ = stopped.await;
        }),
        tried
    );
    ran.unwrap();
    assert_eq!(*late.progress().borrow(), 0, "a moved its checkpoint");
    assert_eq!(
        projection.inner.counted_in_sqlite(&pool).await,
        Counted { rows: 0, total: 0 }
    );

    let holder = ProjectionRunner::new(store.clone(), pool.clone(), projection.clone());
    holder.fence(fresh, ttl);
    run_to(&holder, head).await;
    assert_eq!(
        projection.inner.counted_in_sqlite(&pool).await,
        Counted {
            rows: 30,
            total: 30
        }
    );
}

/// Reacts to `{"key": .., "n": ..}` events, keyed by `key`, noting the order it saw them in.
/// Its reaction to the first event of key `a` waits until the last of key `b` was reacted to:
/// only a runner that reacts to different keys at the same time gets past it at once.
#[derive(Default)]
struct KeyedReactions {
    seen: std::sync::Mutex<Vec<(String, u64)>>,
    b_done: tokio::sync::Notify,
    a_waited_in_vain: std::sync::atomic::AtomicBool,
}

fn key_and_n(event: &RecordedEvent) -> (String, u64) {
    let payload: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
    (
        payload["key"].as_str().unwrap().to_owned(),
        payload["n"].as_u64().unwrap(),
    )
}

#[async_trait::async_trait]
impl Projection<Sqlite> for KeyedReactions {
    fn name(&self) -> &str {
        "keyed"
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[]
    }

    fn reacts_to(&self, _: &RecordedEvent) -> bool {
        true
    }

    fn react_key(&self, event: &RecordedEvent) -> Option<String> {
        Some(key_and_n(event).0)
    }

    async fn react(&self, event: &RecordedEvent) -> Result<(), ApplyError> {
        let (key, n) = key_and_n(event);
        if (key.as_str(), n) == ("a", 1) {
            let b_done = self.b_done.notified();
            if self
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| k == "b")
                .count()
                < 3
                && tokio::time::timeout(Duration::from_secs(10), b_done)
                    .await
                    .is_err()
            {
                self.a_waited_in_vain.store(true, Ordering::SeqCst);
            }
        }
        self.seen.lock().unwrap().push((key.clone(), n));
        if (key.as_str(), n) == ("b", 3) {
            self.b_done.notify_waiters();
        }
        Ok(())
    }

    async fn apply(
        &self,
        _: &mut sqlx::SqliteConnection,
        _: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        Ok(())
    }

    async fn reset(&self, _: &mut sqlx::SqliteConnection) -> sqlx::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn events_of_different_keys_are_reacted_to_at_once_and_each_key_in_order() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    let payloads = [
        r#"{"key":"a","n":1}"#,
        r#"{"key":"b","n":1}"#,
        r#"{"key":"a","n":2}"#,
        r#"{"key":"b","n":2}"#,
        r#"{"key":"a","n":3}"#,
        r#"{"key":"b","n":3}"#,
    ];
    let head = *append_payloads(store.as_ref(), &payloads)
        .await
        .last()
        .unwrap();
    let projection = Arc::new(KeyedReactions::default());
    let runner = ProjectionRunner::new(store, pool, projection.clone());
    run_to(&runner, head).await;

    assert!(
        !projection.a_waited_in_vain.load(Ordering::SeqCst),
        "the first event of key a held back those of key b"
    );
    let seen = projection.seen.lock().unwrap().clone();
    for key in ["a", "b"] {
        let order: Vec<u64> = seen
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(order, [1, 2, 3], "key {key}'s events in log order");
    }
    // Key b went first while a's first event waited for it.
    assert_eq!(seen.last().unwrap().0, "a");
}

/// A projection that reads only `MessageRead` and notes every event it is handed.
#[derive(Default)]
struct ReadsOnlyReads {
    handed: std::sync::Mutex<Vec<(&'static str, String, u64)>>,
    reads: Option<&'static [&'static str]>,
}

#[async_trait::async_trait]
impl Projection<Sqlite> for ReadsOnlyReads {
    fn name(&self) -> &str {
        "reads_only_reads"
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[]
    }

    fn reads(&self) -> Option<&'static [&'static str]> {
        self.reads
    }

    fn reacts_to(&self, _: &RecordedEvent) -> bool {
        true
    }

    async fn react(&self, event: &RecordedEvent) -> Result<(), ApplyError> {
        let handed = ("react", event.event_type.clone(), event.position);
        self.handed.lock().unwrap().push(handed);
        Ok(())
    }

    async fn apply(
        &self,
        _: &mut sqlx::SqliteConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        // What it is handed must decode: the other types' payloads here do not.
        event.decode()?;
        let handed = ("apply", event.event_type.clone(), event.position);
        self.handed.lock().unwrap().push(handed);
        Ok(())
    }

    async fn reset(&self, _: &mut sqlx::SqliteConnection) -> sqlx::Result<()> {
        Ok(())
    }
}

/// A projection that names the types it reads is handed only those; its checkpoint still moves
/// past the others (whose payloads here would not even decode), and nothing is parked.
#[tokio::test]
async fn a_projection_is_handed_only_the_types_it_reads_and_moves_past_the_others() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    let location = LocationId::parse("loc1").unwrap();
    let read = serde_json::json!({
        "message_id": Uuid::now_v7(),
        "provider_message_id": "wamid.1",
    })
    .to_string();
    let mut expected = Vec::new();
    let mut head = 0;
    for round in 0..3 {
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Message, Uuid::now_v7());
        let events = vec![
            NewEvent::raw(
                "MessageDelivered",
                "not the payload of any event".to_owned(),
            ),
            NewEvent::raw("MessageRead", read.clone()),
            NewEvent::raw("Noted", format!("garbage {round}")),
        ];
        head = store
            .append(&stream, ExpectedVersion::NoStream, events)
            .await
            .unwrap()
            .position;
        expected.push(head - 1);
    }
    let projection = Arc::new(ReadsOnlyReads {
        reads: Some(&["MessageRead"]),
        ..Default::default()
    });
    let runner = quick(
        ProjectionRunner::new(store.clone(), pool.clone(), projection.clone()),
        2,
    );
    run_to(&runner, head).await;

    let handed = projection.handed.lock().unwrap().clone();
    for step in ["react", "apply"] {
        let of_step: Vec<u64> = handed
            .iter()
            .filter(|(s, _, _)| *s == step)
            .inspect(|(_, event_type, _)| assert_eq!(event_type, "MessageRead"))
            .map(|(_, _, position)| *position)
            .collect();
        assert_eq!(of_step, expected, "{step}: each MessageRead once, in order");
    }
    let parked = parked::list(&pool, true).await.unwrap();
    assert!(parked.is_empty(), "nothing parked: {parked:?}");
}

/// A type name that is no event type is a programming error, refused when the runner is built
/// (it would otherwise pass over every event of the type meant).
#[tokio::test]
#[should_panic(expected = "reads \"MessageReed\", which is no event type")]
async fn a_projection_reading_a_type_that_does_not_exist_is_refused_at_once() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    let projection = Arc::new(ReadsOnlyReads {
        reads: Some(&["MessageReed"]),
        ..Default::default()
    });
    let _ = ProjectionRunner::new(store, pool, projection);
}

/// A batch holding none of the types a read model reads changes nothing in it: its checkpoint
/// moves on at once for whoever waits on the runner's progress, but is committed at most once a
/// second (with the next batch it applies, or on its own), not once a batch: a read model
/// passing over a busy log does not take a transaction, and the file's one writer, per batch.
#[tokio::test]
async fn a_checkpoint_moved_past_other_types_only_is_committed_once_a_second_not_once_a_batch() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    let projection = Arc::new(ReadsOnlyReads {
        reads: Some(&["MessageRead"]),
        ..Default::default()
    });
    let runner = Arc::new(quick(
        ProjectionRunner::new(store.clone(), pool.clone(), projection),
        2,
    ));
    runner.prepare().await.unwrap();
    // Every commit of a checkpoint, counted by the read model's database.
    for sql in [
        "CREATE TABLE saves (position BIGINT NOT NULL)",
        "CREATE TRIGGER saved_new AFTER INSERT ON projection_checkpoints \
         BEGIN INSERT INTO saves VALUES (new.position); END",
        "CREATE TRIGGER saved AFTER UPDATE ON projection_checkpoints \
         BEGIN INSERT INTO saves VALUES (new.position); END",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let saves = async || -> usize {
        let saves: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM saves")
            .fetch_one(&pool)
            .await
            .unwrap();
        saves as usize
    };
    let stored = async || -> Option<i64> {
        sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
            .bind("reads_only_reads")
            .fetch_optional(&pool)
            .await
            .unwrap()
    };
    let mut progress = runner.progress();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let runner = runner.clone();
        async move {
            runner
                .run_until(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    let location = LocationId::parse("loc1").unwrap();
    let read =
        serde_json::json!({ "message_id": Uuid::now_v7(), "provider_message_id": "wamid.1" });
    let append = async |event: NewEvent| {
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Message, Uuid::now_v7());
        store
            .append(&stream, ExpectedVersion::NoStream, vec![event])
            .await
            .unwrap()
            .position
    };
    let applied = append(NewEvent::raw("MessageRead", read.to_string())).await;
    eventually("the first event applied", async || {
        (stored().await == Some(applied as i64)).then_some(())
    })
    .await;
    let before = saves().await;

    // Fifty events of another type, each appended once the last was passed over: fifty batches.
    let passing = std::time::Instant::now();
    let mut head = applied;
    for n in 0..50 {
        head = append(NewEvent::raw("Noted", format!("other {n}"))).await;
        tokio::time::timeout(Duration::from_secs(10), progress.wait_for(|p| *p >= head))
            .await
            .expect("the runner passes over the event")
            .unwrap();
    }
    let elapsed = passing.elapsed();
    let committed = saves().await - before;
    assert!(
        committed as u64 <= 1 + elapsed.as_secs(),
        "{committed} commits of the checkpoint for 50 batches of other types in {elapsed:?}"
    );
    // The held move is committed on its own within about a second.
    eventually("the held checkpoint committed", async || {
        (stored().await == Some(head as i64)).then_some(())
    })
    .await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(runner.prepare().await.unwrap(), head);
}

/// Applies a batch at once, noting each batch's size, in batches of up to 2,000 events.
#[derive(Default)]
struct AppliedTogether {
    batches: std::sync::Mutex<Vec<usize>>,
}

#[async_trait::async_trait]
impl Projection<Sqlite> for AppliedTogether {
    fn name(&self) -> &str {
        "applied_together"
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[]
    }

    async fn apply(
        &self,
        _: &mut sqlx::SqliteConnection,
        _: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        self.batches.lock().unwrap().push(1);
        Ok(())
    }

    async fn apply_together(
        &self,
        _: &mut sqlx::SqliteConnection,
        events: &[&RecordedEvent],
    ) -> Option<Result<(), ApplyError>> {
        self.batches.lock().unwrap().push(events.len());
        Some(Ok(()))
    }

    async fn reset(&self, _: &mut sqlx::SqliteConnection) -> sqlx::Result<()> {
        Ok(())
    }

    fn batch_size(&self) -> Option<usize> {
        Some(2_000)
    }
}

/// A projection that applies a batch together and names a bigger batch than the runner's is
/// handed batches of that size: a backlog of 5,000 events is three transactions, not ten.
#[tokio::test]
async fn a_projection_applying_batches_together_is_handed_the_batch_size_it_names() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    let stream = StreamId::for_uuid(
        LocationId::parse("loc1").unwrap(),
        AggregateKind::Message,
        Uuid::now_v7(),
    );
    let mut head = 0;
    for start in (0..5_000).step_by(500) {
        let batch = (start..start + 500)
            .map(|n| {
                let read = serde_json::json!({ "message_id": Uuid::now_v7(), "provider_message_id": n.to_string() });
                NewEvent::raw("MessageRead", read.to_string())
            })
            .collect();
        head = store
            .append(&stream, ExpectedVersion::Any, batch)
            .await
            .unwrap()
            .position;
    }
    let projection = Arc::new(AppliedTogether::default());
    let runner = ProjectionRunner::new(store, pool, projection.clone());
    run_to(&runner, head).await;
    let batches = projection.batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), 5_000, "{batches:?}");
    assert_eq!(batches, [2_000, 2_000, 1_000]);
}

/// One part of a stage reacting to `{"key": .., "n": ..}` events by key, noting what it saw.
struct Staged {
    name: String,
    part: Part,
    seen: std::sync::Mutex<Vec<(String, u64)>>,
}

impl Staged {
    fn new(part: Part) -> Arc<Self> {
        Arc::new(Self {
            name: part.name("stage"),
            part,
            seen: Default::default(),
        })
    }
}

#[async_trait::async_trait]
impl Projection<Sqlite> for Staged {
    fn name(&self) -> &str {
        &self.name
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[]
    }

    /// The stage's parts; before the stage ever ran, the work it took over from `legacy`.
    fn starts_where(&self) -> Vec<String> {
        vec![Part::siblings("stage"), "legacy".to_owned()]
    }

    fn reacts_to(&self, event: &RecordedEvent) -> bool {
        self.part.holds(&key_and_n(event).0)
    }

    fn react_key(&self, event: &RecordedEvent) -> Option<String> {
        Some(key_and_n(event).0)
    }

    async fn react(&self, event: &RecordedEvent) -> Result<(), ApplyError> {
        self.seen.lock().unwrap().push(key_and_n(event));
        Ok(())
    }

    async fn apply(
        &self,
        _: &mut sqlx::SqliteConnection,
        _: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        Ok(())
    }

    async fn reset(&self, _: &mut sqlx::SqliteConnection) -> sqlx::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_stage_split_into_parts_goes_on_where_it_was_each_key_in_one_part_in_order() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    let keys: Vec<String> = (0..24).map(|k| format!("contact-{k}")).collect();
    let wave = |ns: std::ops::RangeInclusive<u64>| -> Vec<String> {
        ns.flat_map(|n| {
            keys.iter()
                .map(move |key| format!(r#"{{"key":"{key}","n":{n}}}"#))
        })
        .collect()
    };
    let append = async |payloads: Vec<String>| {
        let payloads: Vec<&str> = payloads.iter().map(String::as_str).collect();
        *append_payloads(store.as_ref(), &payloads)
            .await
            .last()
            .unwrap()
    };

    // The work was `legacy`'s up to the first of the first wave's two rounds (an earlier
    // version did it); the stage, which never ran, takes it over from there.
    let taken_over = append(wave(1..=1)).await;
    record_checkpoint(&pool, "legacy", taken_over).await;
    let head = append(wave(2..=2)).await;
    let whole = Staged::new(Part::WHOLE);
    let runner = ProjectionRunner::new(store.clone(), pool.clone(), whole.clone());
    assert_eq!(runner.prepare().await.unwrap(), taken_over);
    run_to(&runner, head).await;
    let seen = whole.seen.lock().unwrap().clone();
    assert!(
        seen.len() == 24 && seen.iter().all(|(_, n)| *n == 2),
        "{seen:?}"
    );

    // Split in three, the stage goes on with the second wave only, not from the work it took
    // over once (set back to the beginning since, as a rebuild does).
    Sqlite::reset_checkpoint(&mut *pool.acquire().await.unwrap(), "legacy")
        .await
        .unwrap();
    let head = append(wave(3..=5)).await;
    let parts: Vec<Arc<Staged>> = Part::all(3).map(Staged::new).collect();
    let runners: Vec<_> = parts
        .iter()
        .map(|part| ProjectionRunner::new(store.clone(), pool.clone(), part.clone()))
        .collect();
    futures::future::join_all(runners.iter().map(|runner| run_to(runner, head))).await;

    let mut decided = Vec::new();
    for part in &parts {
        let seen = part.seen.lock().unwrap().clone();
        assert!(
            !seen.is_empty(),
            "{} decided nothing: the keys did not spread",
            part.name
        );
        for key in &keys {
            let order: Vec<u64> = seen
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, n)| *n)
                .collect();
            assert!(
                order.is_empty() || order == [3, 4, 5],
                "{key} in {}: {order:?}, not the second wave in log order",
                part.name
            );
        }
        decided.extend(seen);
    }
    decided.sort();
    let expected: Vec<(String, u64)> = {
        let mut all: Vec<_> = keys
            .iter()
            .flat_map(|key| (3..=5).map(move |n| (key.clone(), n)))
            .collect();
        all.sort();
        all
    };
    assert_eq!(
        decided, expected,
        "each event of the second wave once, by one part"
    );
}

/// Records `position` as the checkpoint of `name`, as an earlier run of it would have.
async fn record_checkpoint(pool: &Pool<Sqlite>, name: &str, position: u64) {
    let mut conn = pool.acquire().await.unwrap();
    Sqlite::create_checkpoint_table(&mut conn).await.unwrap();
    Sqlite::save_checkpoint(&mut conn, name, position)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_new_stage_with_nothing_to_take_over_starts_at_the_beginning_even_once_the_rest_ran() {
    let fixture = TestSqlite::new().unwrap();
    let (store, pool) = sqlite_pair(&fixture).await;
    // A new install: every read model of the process is prepared before any runs; the stage
    // finds nothing to take over.
    let stage = Staged::new(Part::WHOLE);
    let runner = ProjectionRunner::new(store.clone(), pool.clone(), stage.clone());
    assert_eq!(runner.prepare().await.unwrap(), 0);
    // The read model it would take over from runs first, through what is in the log.
    let payloads: Vec<String> = (1..=5)
        .map(|n| format!(r#"{{"key":"contact-{n}","n":{n}}}"#))
        .collect();
    let payloads: Vec<&str> = payloads.iter().map(String::as_str).collect();
    let head = *append_payloads(store.as_ref(), &payloads)
        .await
        .last()
        .unwrap();
    record_checkpoint(&pool, "legacy", head).await;

    // The stage runs (its run prepares again): it decides every event, none skipped.
    run_to(&runner, head).await;
    let mut seen: Vec<u64> = stage.seen.lock().unwrap().iter().map(|(_, n)| *n).collect();
    seen.sort();
    assert_eq!(seen, [1, 2, 3, 4, 5]);
}
