//! A projection process for the crash test: runs the counting projection over an event store
//! until it is killed.
//!
//! crash-projector sqlite <database-file> <pause-µs>
//! crash-projector jetstream <nats-url> <stream> <subject-prefix> <max-bytes> <database-url> <schema> <pause-µs>

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use whatsnap_eventstore::EventStore;
use whatsnap_eventstore::jetstream::{JetStreamConfig, JetStreamEventStore};
use whatsnap_eventstore::projection::ProjectionRunner;
use whatsnap_eventstore::sqlite::{SqliteConfig, SqliteEventStore};
use whatsnap_testkit::CountingProjection;

const NAME: &str = "crash";
const BATCH: usize = 25;

fn projection(pause_us: &str) -> anyhow::Result<Arc<CountingProjection>> {
    let mut projection = CountingProjection::new(NAME);
    projection.pause_per_event = Duration::from_micros(pause_us.parse().context("pause-µs")?);
    Ok(Arc::new(projection))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["sqlite", file, pause_us] => {
            let store: Arc<dyn EventStore> =
                Arc::new(SqliteEventStore::open(&SqliteConfig::new(file)).await?);
            let pool = SqlitePoolOptions::new()
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(file)
                        .busy_timeout(Duration::from_secs(10)),
                )
                .await?;
            ProjectionRunner::new(store, pool, projection(pause_us)?)
                .batch_size(BATCH)
                .run_until(std::future::pending())
                .await?;
        }
        [
            "jetstream",
            url,
            stream,
            prefix,
            max_bytes,
            database_url,
            schema,
            pause_us,
        ] => {
            let mut config = JetStreamConfig::new(url);
            config.stream_name = stream.into();
            config.subject_prefix = prefix.into();
            config.max_bytes = max_bytes.parse().context("max-bytes")?;
            let store: Arc<dyn EventStore> = Arc::new(JetStreamEventStore::connect(&config).await?);
            let options: PgConnectOptions = database_url.parse()?;
            let pool = PgPoolOptions::new()
                .connect_with(options.options([("search_path", schema)]))
                .await?;
            ProjectionRunner::new(store, pool, projection(pause_us)?)
                .batch_size(BATCH)
                .run_until(std::future::pending())
                .await?;
        }
        _ => bail!("usage: see the comment at the top of crash-projector.rs"),
    }
    Ok(())
}
