//! Test fixtures for whatsnap: each test gets its own JetStream stream (own name, own subject
//! prefix) and its own PostgreSQL schema, so tests run in parallel without seeing each other.
//!
//! The servers come from `WHATSNAP_TEST_NATS_URL` / `WHATSNAP_TEST_DATABASE_URL` when set (CI
//! sets them, `.ci/run` starts the servers); otherwise from containers started through
//! testcontainers when a Docker engine is reachable. With neither, a fixture fails with a message
//! that names both variables.

use std::path::Path;
use std::time::Duration;

mod alert_sink;
mod backend;
pub mod browser;
mod collector;
mod process;
mod twilio_text;
pub use alert_sink::AlertSink;
pub use backend::{TestBackend, distributed_args};
pub use collector::{ExportedSpan, FakeCollector};
pub use process::{
    ADMIN_TOKEN, Channel, ChildGuard, HttpReply, SERVICE_TOKEN, Whatsnap, channel_to, free_port,
    http_get, http_post, http_request,
};
pub use twilio_text::TwilioText;
// The fakes live in their own crate so `whatsnap serve --demo` can use them without
// testcontainers; tests keep reaching them here.
pub use whatsnap_fakes::bluebubbles::FakeBlueBubbles;
pub use whatsnap_fakes::evolution::{FakeEvolution, FakeEvolutionIncoming};
pub use whatsnap_fakes::ghl::{FakeGhl, FakeGhlLimits, FakeGhlUser};
pub use whatsnap_fakes::smsgate::{FakeSmsGate, FakeSmsGateFault};
pub use whatsnap_fakes::twilio::{FakeTwilio, FakeTwilioAccount, SentSms};
pub use whatsnap_fakes::{bluebubbles, cloudapi, evolution, ghl, smsgate, twilio};

use anyhow::Context as _;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testcontainers_modules::nats::{Nats, NatsServerCmd};
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};
use tokio::sync::OnceCell;
use uuid::Uuid;
use whatsnap_events::RecordedEvent;
use whatsnap_eventstore::jetstream::{CatchUp, JetStreamConfig, JetStreamEventStore};
use whatsnap_eventstore::projection::{ApplyError, Projection};
use whatsnap_eventstore::sqlite::{SqliteConfig, SqliteEventStore};

pub const NATS_URL_VAR: &str = "WHATSNAP_TEST_NATS_URL";
pub const DATABASE_URL_VAR: &str = "WHATSNAP_TEST_DATABASE_URL";
/// A NATS server older than 2.12 (Debian's 2.9), which the event store must refuse.
pub const OLD_NATS_URL_VAR: &str = "WHATSNAP_TEST_OLD_NATS_URL";

/// What every file directly in `dir` holds (an embedded data directory: the log, the read
/// models and their write-ahead logs), for a test that looks for what must not be stored.
pub fn stored_files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    std::fs::read_dir(dir)
        .expect("the data directory")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap_or_default();
            (path, bytes)
        })
        .collect()
}

/// Polls `attempt` every 50 ms until it yields a value — for what read models make true
/// eventually — and fails the test, naming `what`, after 30 s.
pub async fn eventually<T>(
    what: impl std::fmt::Display,
    attempt: impl AsyncFnMut() -> Option<T>,
) -> T {
    eventually_within(Duration::from_secs(30), what, attempt).await
}

/// As [`eventually`], for work that takes longer than 30 s (GHL's rate limits pace it).
pub async fn eventually_within<T>(
    limit: Duration,
    what: impl std::fmt::Display,
    mut attempt: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Appends `count` raw events to `store`, `per_stream` to a new message stream each, in one
/// append per stream; returns the position of the last.
pub async fn append_message_events(
    store: &dyn whatsnap_eventstore::EventStore,
    count: usize,
    per_stream: usize,
) -> u64 {
    use whatsnap_events::{AggregateKind, LocationId, NewEvent, StreamId};
    let location = LocationId::parse("loc1").expect("a valid location");
    let mut head = 0;
    for chunk in 0..count / per_stream {
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Message, Uuid::now_v7());
        let events = (0..per_stream)
            .map(|i| {
                NewEvent::raw(
                    "MessageDelivered",
                    format!("{{\"n\":{}}}", chunk * per_stream + i),
                )
            })
            .collect();
        head = store
            .append(
                &stream,
                whatsnap_eventstore::ExpectedVersion::NoStream,
                events,
            )
            .await
            .expect("appending test events")
            .position;
    }
    head
}

/// Appends `count` raw events, each to a new stream of its own: an `AccountConnected` on an
/// account stream, then a `ContactCreated` on a contact stream, in turn.
pub async fn append_accounts_and_contacts(
    store: &dyn whatsnap_eventstore::EventStore,
    count: usize,
) {
    use whatsnap_events::{AggregateKind, LocationId, NewEvent, StreamId};
    let location = LocationId::parse("loc1").expect("a valid location");
    for n in 0..count {
        let (kind, event_type) = match n % 2 {
            0 => (AggregateKind::Account, "AccountConnected"),
            _ => (AggregateKind::Contact, "ContactCreated"),
        };
        let stream = StreamId::for_uuid(location.clone(), kind, Uuid::now_v7());
        let event = NewEvent::raw(event_type, format!("{{\"n\":{n}}}"));
        store
            .append(
                &stream,
                whatsnap_eventstore::ExpectedVersion::NoStream,
                vec![event],
            )
            .await
            .expect("appending test events");
    }
}

/// What `subscription` hands over, in batches of up to 64, until it has read the log through
/// `head` (within 30 s), checked to come in order of position, none twice.
pub async fn read_through(
    subscription: &mut whatsnap_eventstore::Subscription,
    head: u64,
) -> Vec<whatsnap_events::RecordedEvent> {
    let mut handed = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while subscription.scanned() < head {
            let batch = subscription.next_batch(64).await.expect("a batch");
            handed.extend(batch);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} read the log through {head}", subscription.name()));
    assert!(
        handed.windows(2).all(|w| w[0].position < w[1].position),
        "{} was handed events out of order or twice",
        subscription.name()
    );
    handed
}

/// A read model in a SQLite database of its own, in memory, with `events` applied by
/// `projection`: one at a time (`Projection::apply`), or `together` as one batch
/// (`Projection::apply_together`), to show that both leave the same rows.
pub async fn applied_in_memory(
    projection: &dyn Projection<sqlx::Any>,
    events: &[RecordedEvent],
    together: bool,
) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let db = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .expect("an in-memory SQLite database");
    for migration in projection.migrations() {
        sqlx::raw_sql(migration)
            .execute(&db)
            .await
            .expect("the read model's migration");
    }
    let mut conn = db.acquire().await.expect("its one connection");
    if together {
        let batch: Vec<&RecordedEvent> = events.iter().collect();
        let applied = projection.apply_together(&mut conn, &batch).await;
        applied
            .expect("the read model applies batches together")
            .expect("the batch applies");
    } else {
        for event in events {
            projection
                .apply(&mut conn, event)
                .await
                .expect("the event applies");
        }
    }
    db
}

/// A short unique token for names of streams, prefixes and schemas.
pub fn unique_token() -> String {
    Uuid::now_v7().simple().to_string()
}

struct Started<I: testcontainers_modules::testcontainers::Image> {
    url: String,
    // Kept alive for the whole test process; the reaper removes it afterwards.
    _container: ContainerAsync<I>,
}

static NATS_CONTAINER: OnceCell<Started<Nats>> = OnceCell::const_new();
static POSTGRES_CONTAINER: OnceCell<Started<Postgres>> = OnceCell::const_new();
static OLD_NATS_CONTAINER: OnceCell<Started<Nats>> = OnceCell::const_new();

/// The server named by `var`, or else one container of `image` for the whole test process,
/// reached at `url(host port of container_port)`.
async fn server<I>(
    var: &str,
    what: &str,
    cell: &'static OnceCell<Started<I>>,
    image: impl FnOnce() -> testcontainers_modules::testcontainers::ContainerRequest<I>,
    container_port: u16,
    url: impl FnOnce(u16) -> String,
) -> anyhow::Result<String>
where
    I: testcontainers_modules::testcontainers::Image,
{
    if let Ok(url) = std::env::var(var) {
        return Ok(url);
    }
    let started = cell
        .get_or_try_init(|| async {
            let container = image().start().await.map_err(|err| {
                anyhow::anyhow!(
                    "no {what} for tests: set {var} (see DEVELOPERS.md; `bash .ci/run` starts \
                     one), or make a Docker engine reachable for testcontainers ({err})"
                )
            })?;
            let port = container.get_host_port_ipv4(container_port).await?;
            anyhow::Ok(Started {
                url: url(port),
                _container: container,
            })
        })
        .await?;
    Ok(started.url.clone())
}

fn nats_image(tag: &str) -> testcontainers_modules::testcontainers::ContainerRequest<Nats> {
    Nats::default()
        .with_cmd(&NatsServerCmd::default().with_jetstream())
        .with_tag(tag)
}

/// The URL of a NATS server (>= 2.12, JetStream enabled) for tests.
pub async fn nats_url() -> anyhow::Result<String> {
    server(
        NATS_URL_VAR,
        "NATS server",
        &NATS_CONTAINER,
        || nats_image("2.12-alpine"),
        4222,
        |port| format!("nats://127.0.0.1:{port}"),
    )
    .await
}

/// The URL of a NATS 2.9 server with JetStream, to show that the store refuses it.
pub async fn old_nats_url() -> anyhow::Result<String> {
    server(
        OLD_NATS_URL_VAR,
        "NATS 2.9 server",
        &OLD_NATS_CONTAINER,
        || nats_image("2.9.10"),
        4222,
        |port| format!("nats://127.0.0.1:{port}"),
    )
    .await
}

/// The URL of a PostgreSQL database for tests.
pub async fn database_url() -> anyhow::Result<String> {
    server(
        DATABASE_URL_VAR,
        "PostgreSQL server",
        &POSTGRES_CONTAINER,
        || Postgres::default().with_tag("17-alpine"),
        5432,
        |port| format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres"),
    )
    .await
}

/// A JetStream event store on a stream of its own, deleted when the fixture is dropped.
pub struct TestNats {
    pub config: JetStreamConfig,
}

impl TestNats {
    pub async fn new() -> anyhow::Result<Self> {
        let url = nats_url().await?;
        let token = unique_token();
        let mut config = JetStreamConfig::new(url);
        config.stream_name = format!("T{token}");
        config.subject_prefix = format!("t{token}");
        Ok(Self { config })
    }

    /// A fixture whose subscribers keeping their own checkpoint catch up on the shared pages of
    /// `page` events from any backlog, so that tests see that path with a few events.
    pub async fn paged(page: u64) -> anyhow::Result<Self> {
        let mut fixture = Self::new().await?;
        fixture.config.catch_up = CatchUp {
            after: 0,
            page,
            pages_kept: 2,
            // Two pages of the head kept: subscribers fall behind it within a test.
            tail: 2 * page as usize,
        };
        Ok(fixture)
    }

    /// A store on this fixture's stream (creating the stream on first use).
    pub async fn store(&self) -> anyhow::Result<JetStreamEventStore> {
        JetStreamEventStore::connect(&self.config)
            .await
            .with_context(|| format!("event store on {}", self.config.url))
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let url = self.config.url.clone();
        let stream = self.config.stream_name.clone();
        // Drop cannot await, and the test's runtime may be shutting down: clean up on a thread.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = async_nats::connect(&url).await?;
                // deny_delete/deny_purge forbid deleting events, not deleting the stream.
                let _ = async_nats::jetstream::new(client)
                    .delete_stream(&stream)
                    .await;
                anyhow::Ok(())
            })
        })
        .join();
    }
}

/// A PostgreSQL schema of its own, with a pool whose connections use it; dropped with the
/// fixture.
pub struct TestPostgres {
    pub url: String,
    pub schema: String,
    pub pool: PgPool,
}

impl TestPostgres {
    pub async fn new() -> anyhow::Result<Self> {
        let url = database_url().await?;
        let schema = format!("t_{}", unique_token());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .with_context(|| format!("connecting to {DATABASE_URL_VAR}"))?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await?;
        admin.close().await;
        let pool = Self::connect(&url, &schema).await?;
        Ok(Self { url, schema, pool })
    }

    /// A new pool on this fixture's schema (what a separate process would open).
    pub async fn connect(url: &str, schema: &str) -> anyhow::Result<PgPool> {
        let options: PgConnectOptions = url.parse()?;
        let options = options.options([("search_path", schema)]);
        Ok(PgPoolOptions::new()
            .max_connections(5)
            .connect_with(options)
            .await?)
    }

    /// This schema's database URL, for a child process.
    pub fn url_with_schema(&self) -> String {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}options=-c%20search_path%3D{}",
            self.url, self.schema
        )
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let url = self.url.clone();
        let schema = self.schema.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&pool)
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
    }
}

/// An embedded store in a temporary directory, removed with the fixture.
pub struct TestSqlite {
    pub dir: tempfile::TempDir,
    pub config: SqliteConfig,
}

impl TestSqlite {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("whatsnap-test-")
            .tempdir()?;
        let config = SqliteConfig::new(dir.path().join("whatsnap.db"));
        Ok(Self { dir, config })
    }

    pub async fn store(&self) -> anyhow::Result<SqliteEventStore> {
        Ok(SqliteEventStore::open(&self.config).await?)
    }
}

/// A read model whose effect is countable: every applied event inserts a row keyed by its id
/// (a second application would violate the key) and adds one to a total, so "each event exactly
/// once" is `total == rows == events`.
pub struct CountingProjection {
    pub name: String,
    /// Time spent inside the transaction per event, to widen the window for a crash.
    pub pause_per_event: Duration,
    /// The event types it counts; every type when `None`.
    pub reads: Option<&'static [&'static str]>,
}

impl CountingProjection {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            pause_per_event: Duration::ZERO,
            reads: None,
        }
    }

    /// Counts only events of `types` (the runner passes over the others, such as the
    /// announcements it appends itself).
    pub fn reading(mut self, types: &'static [&'static str]) -> Self {
        self.reads = Some(types);
        self
    }
}

/// What a [`CountingProjection`] has recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub rows: i64,
    pub total: i64,
}

macro_rules! counting_projection_for {
    ($db:ty, $counted:ident) => {
        #[async_trait::async_trait]
        impl Projection<$db> for CountingProjection {
            fn name(&self) -> &str {
                &self.name
            }

            fn reads(&self) -> Option<&'static [&'static str]> {
                self.reads
            }

            fn migrations(&self) -> &'static [&'static str] {
                &["CREATE TABLE counted_events (event_id TEXT PRIMARY KEY, position BIGINT NOT NULL); \
                   CREATE TABLE counted_totals (projection TEXT PRIMARY KEY, total BIGINT NOT NULL)"]
            }

            async fn apply(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                event: &RecordedEvent,
            ) -> Result<(), ApplyError> {
                if event.payload.as_ref() == b"poison" {
                    return Err("poison event".into());
                }
                sqlx::query("INSERT INTO counted_events (event_id, position) VALUES ($1, $2)")
                    .bind(event.id.to_string())
                    .bind(event.position as i64)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(
                    "INSERT INTO counted_totals (projection, total) VALUES ($1, 1) \
                     ON CONFLICT (projection) DO UPDATE SET total = counted_totals.total + 1",
                )
                    .bind(&self.name)
                    .execute(&mut *conn)
                    .await?;
                if !self.pause_per_event.is_zero() {
                    tokio::time::sleep(self.pause_per_event).await;
                }
                Ok(())
            }

            async fn reset(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
            ) -> sqlx::Result<()> {
                sqlx::query("DELETE FROM counted_events")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("UPDATE counted_totals SET total = 0 WHERE projection = $1")
                    .bind(&self.name)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
        }

        impl CountingProjection {
            /// What the read model holds now; zero before the first run created its tables.
            pub async fn $counted(&self, pool: &sqlx::Pool<$db>) -> Counted {
                let rows: Option<i64> = sqlx::query_scalar("SELECT COUNT(*) FROM counted_events")
                    .fetch_one(pool)
                    .await
                    .ok();
                let total: Option<i64> =
                    sqlx::query_scalar("SELECT total FROM counted_totals WHERE projection = $1")
                        .bind(&self.name)
                        .fetch_optional(pool)
                        .await
                        .ok()
                        .flatten();
                Counted {
                    rows: rows.unwrap_or(0),
                    total: total.unwrap_or(0),
                }
            }
        }
    };
}

counting_projection_for!(sqlx::Postgres, counted_in_postgres);
counting_projection_for!(sqlx::Sqlite, counted_in_sqlite);
