//! Throughput of the event store on this machine, printed as a table:
//!
//!     WHATSNAP_BENCH_NATS_URL=nats://127.0.0.1:4333 cargo bench -p whatsnap-eventstore
//!
//! (`WHATSNAP_TEST_NATS_URL` is used when the bench variable is not set.) For each backend:
//! appends/s with one writer (each append awaited) and with 8 writers on different streams, and
//! catch-up reads/s through a subscription from the beginning. As the ceiling, the raw
//! JetStream publish rate of the same payloads with plain async-nats, 512 acks in flight; every
//! figure is also given as a ratio of it. The raw rate with one publish in flight is printed
//! beside it as the fair reference for a single writer that waits for each ack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::try_join_all;
use uuid::Uuid;
use whatsnap_events::{
    AggregateKind, Event, EventMetadata, InboundMessageReceived, LocationId, NewEvent, StreamId,
};
use whatsnap_eventstore::jetstream::{JetStreamConfig, JetStreamEventStore};
use whatsnap_eventstore::sqlite::{SqliteConfig, SqliteEventStore};
use whatsnap_eventstore::{EventStore, ExpectedVersion, SubscribeFrom};

const APPENDS: usize = 3_000;
const WRITERS: usize = 8;
const CATCH_UP: usize = 20_000;

fn payload_event() -> Event {
    Event::from(InboundMessageReceived {
        message_id: Uuid::now_v7(),
        account_id: Uuid::now_v7(),
        provider_message_id: "SM0123456789abcdef0123456789abcdef".into(),
        from: "+14155550100".into(),
        to: Some("+15005550006".into()),
        body: "Hi, is this open today?".into(),
        sender_name: Some("Ana Lima".into()),
        received_at: Utc::now(),
        attachments: Vec::new(),
        from_me: false,
        sender_lid: None,
    })
}

fn new_event(event: &Event) -> NewEvent {
    NewEvent::new(event, EventMetadata::new_correlation())
}

fn stream() -> StreamId {
    StreamId::for_uuid(
        LocationId::parse("bench").unwrap(),
        AggregateKind::Message,
        Uuid::now_v7(),
    )
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// One writer, one event per append, each awaited, on one stream with exact expectations.
async fn sequential_appends(store: &dyn EventStore, event: &Event) -> f64 {
    let stream = stream();
    let started = Instant::now();
    for version in 0..APPENDS as u64 {
        store
            .append(
                &stream,
                ExpectedVersion::Exact(version),
                vec![new_event(event)],
            )
            .await
            .unwrap();
    }
    rate(APPENDS, started.elapsed())
}

/// Eight writers, each on its own stream, each append awaited.
async fn concurrent_appends(store: Arc<dyn EventStore>, event: &Event) -> f64 {
    let started = Instant::now();
    let per_writer = APPENDS / WRITERS;
    try_join_all((0..WRITERS).map(|_| {
        let store = store.clone();
        let event = event.clone();
        tokio::spawn(async move {
            let stream = stream();
            for version in 0..per_writer as u64 {
                store
                    .append(
                        &stream,
                        ExpectedVersion::Exact(version),
                        vec![new_event(&event)],
                    )
                    .await
                    .unwrap();
            }
        })
    }))
    .await
    .unwrap();
    rate(per_writer * WRITERS, started.elapsed())
}

/// Stores `CATCH_UP` events (in batches, not timed), then times a new subscription reading them.
async fn catch_up_reads(store: &dyn EventStore, event: &Event) -> f64 {
    let start = store.head_position().await.unwrap();
    for _ in 0..CATCH_UP / 500 {
        let events = (0..500).map(|_| new_event(event)).collect();
        store
            .append(&stream(), ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
    let name = format!("bench{}", Uuid::now_v7().simple());
    let started = Instant::now();
    let mut subscription = store
        .subscribe(&name, SubscribeFrom::After(start))
        .await
        .unwrap();
    let mut read = 0;
    while read < CATCH_UP {
        read += subscription.next_batch(1000).await.unwrap().len();
    }
    rate(read, started.elapsed())
}

/// The ceiling: the same payloads published with plain async-nats, `in_flight` acks pending.
async fn raw_publish(url: &str, event: &Event, in_flight: usize) -> f64 {
    let client = async_nats::connect(url).await.unwrap();
    let context = async_nats::jetstream::new(client);
    let name = format!("BENCHRAW{}", Uuid::now_v7().simple());
    context
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let payload = event.encode();
    let count = if in_flight == 1 { APPENDS } else { APPENDS * 4 };
    let started = Instant::now();
    let mut acks = Vec::with_capacity(in_flight);
    for i in 0..count {
        acks.push(
            context
                .publish(format!("{name}.{}", i % 100), payload.clone())
                .await
                .unwrap(),
        );
        if acks.len() == in_flight {
            try_join_all(acks.drain(..).map(|ack| ack.into_future()))
                .await
                .unwrap();
        }
    }
    try_join_all(acks.drain(..).map(|ack| ack.into_future()))
        .await
        .unwrap();
    let result = rate(count, started.elapsed());
    context.delete_stream(&name).await.unwrap();
    result
}

fn line(what: &str, per_second: f64, ceiling: f64) {
    eprintln!(
        "{what:<48} {per_second:>10.0}/s   {:>6.1}% of ceiling",
        100.0 * per_second / ceiling
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing to run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(url) = std::env::var("WHATSNAP_BENCH_NATS_URL")
        .or_else(|_| std::env::var("WHATSNAP_TEST_NATS_URL"))
        .ok()
    else {
        eprintln!("set WHATSNAP_BENCH_NATS_URL to a NATS >= 2.12 server with JetStream");
        std::process::exit(2);
    };
    let event = payload_event();
    eprintln!(
        "payload: {} ({} bytes of JSON), {APPENDS} appends, {WRITERS} writers, {CATCH_UP} events caught up",
        event.event_type(),
        event.encode().len()
    );

    let ceiling = raw_publish(&url, &event, 512).await;
    let raw_one = raw_publish(&url, &event, 1).await;

    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn EventStore> = Arc::new(
        SqliteEventStore::open(&SqliteConfig::new(dir.path().join("bench.db")))
            .await
            .unwrap(),
    );
    let sqlite_seq = sequential_appends(sqlite.as_ref(), &event).await;
    let sqlite_par = concurrent_appends(sqlite.clone(), &event).await;
    let sqlite_read = catch_up_reads(sqlite.as_ref(), &event).await;

    let mut config = JetStreamConfig::new(&url);
    config.stream_name = format!("BENCH{}", Uuid::now_v7().simple());
    config.subject_prefix = config.stream_name.to_lowercase();
    let jetstream: Arc<dyn EventStore> =
        Arc::new(JetStreamEventStore::connect(&config).await.unwrap());
    let js_seq = sequential_appends(jetstream.as_ref(), &event).await;
    let js_par = concurrent_appends(jetstream.clone(), &event).await;
    let js_read = catch_up_reads(jetstream.as_ref(), &event).await;
    let client = async_nats::connect(&url).await.unwrap();
    async_nats::jetstream::new(client)
        .delete_stream(&config.stream_name)
        .await
        .unwrap();

    eprintln!();
    eprintln!(
        "{:<48} {:>10.0}/s   (ceiling)",
        "raw JetStream publish, async-nats, 512 in flight", ceiling
    );
    line("raw JetStream publish, 1 in flight", raw_one, ceiling);
    line("sqlite: appends, 1 writer", sqlite_seq, ceiling);
    line("sqlite: appends, 8 writers", sqlite_par, ceiling);
    line("sqlite: catch-up subscription reads", sqlite_read, ceiling);
    line("jetstream: appends, 1 writer", js_seq, ceiling);
    line("jetstream: appends, 8 writers", js_par, ceiling);
    line("jetstream: catch-up subscription reads", js_read, ceiling);
}
