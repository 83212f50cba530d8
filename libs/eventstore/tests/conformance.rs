//! The event store's contract, written once and run against every backend (the macro at the
//! bottom instantiates each case for SQLite and for JetStream; the catch-up on shared pages is
//! run again with pages of a few events).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Barrier;
use uuid::Uuid;
use whatsnap_events::{
    AggregateKind, EventId, EventMetadata, LocationId, NewEvent, StreamId, TraceContext,
};
use whatsnap_eventstore::{EventStore, ExpectedVersion, StoreError, SubscribeFrom};
use whatsnap_testkit::{TestNats, TestSqlite};

/// A backend under test: opening it again is what a restarted process does.
#[async_trait]
trait Backend: Send + Sync + 'static {
    async fn open(&self) -> Arc<dyn EventStore>;
}

#[async_trait]
impl Backend for TestSqlite {
    async fn open(&self) -> Arc<dyn EventStore> {
        Arc::new(self.store().await.expect("sqlite store"))
    }
}

#[async_trait]
impl Backend for TestNats {
    async fn open(&self) -> Arc<dyn EventStore> {
        Arc::new(self.store().await.expect("jetstream store"))
    }
}

fn location() -> LocationId {
    LocationId::parse("loc1").unwrap()
}

fn new_stream() -> StreamId {
    StreamId::for_uuid(location(), AggregateKind::Contact, Uuid::now_v7())
}

/// An event of a type outside the catalogue, which may go on any kind of stream.
fn event(n: usize) -> NewEvent {
    NewEvent::raw("Noted", format!(r#"{{"n":{n}}}"#))
}

fn events(range: std::ops::Range<usize>) -> Vec<NewEvent> {
    range.map(event).collect()
}

fn wrong_version(err: &StoreError) -> (ExpectedVersion, u64) {
    match err {
        StoreError::WrongExpectedVersion {
            expected, actual, ..
        } => (*expected, *actual),
        other => panic!("expected a version conflict, got {other}"),
    }
}

async fn append_and_read_back_in_order(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = new_stream();
    let mut first = events(0..3);
    first[1].metadata = EventMetadata {
        correlation_id: Uuid::now_v7(),
        causation_id: Some(Uuid::now_v7()),
        trace: TraceContext {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: Some("congo=t61rcWkgMzE".into()),
        },
    };
    first[2].schema_version = 3;
    let outcome = store
        .append(&stream, ExpectedVersion::NoStream, first.clone())
        .await
        .unwrap();
    assert_eq!(outcome.version, 3);
    assert!(!outcome.already_stored);
    let outcome = store
        .append(&stream, ExpectedVersion::Exact(3), events(3..5))
        .await
        .unwrap();
    assert_eq!(outcome.version, 5);

    let read = store.read_stream(&stream, 1, 100).await.unwrap();
    assert_eq!(read.len(), 5);
    for (i, recorded) in read.iter().enumerate() {
        assert_eq!(recorded.version, i as u64 + 1);
        assert_eq!(recorded.stream, stream);
        assert_eq!(recorded.payload, format!(r#"{{"n":{i}}}"#).as_bytes());
    }
    assert!(read.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(read[4].position, outcome.position);
    for (stored, sent) in read.iter().zip(&first) {
        assert_eq!(stored.id, sent.id);
        assert_eq!(stored.event_type, sent.event_type);
        assert_eq!(stored.schema_version, sent.schema_version);
        assert_eq!(stored.metadata, sent.metadata);
        // Stores keep at least microseconds.
        let drift = (stored.occurred_at - sent.occurred_at)
            .num_microseconds()
            .unwrap();
        assert!(drift.abs() <= 1, "occurred_at drifted by {drift} µs");
    }

    let tail = store.read_stream(&stream, 4, 100).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.version).collect::<Vec<_>>(), [4, 5]);
    let limited = store.read_stream(&stream, 2, 2).await.unwrap();
    assert_eq!(
        limited.iter().map(|e| e.version).collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(
        store
            .read_stream(&new_stream(), 1, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_stale_expected_version_is_a_conflict_that_writes_nothing(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = new_stream();
    store
        .append(&stream, ExpectedVersion::NoStream, events(0..2))
        .await
        .unwrap();

    let err = store
        .append(&stream, ExpectedVersion::NoStream, events(2..3))
        .await
        .unwrap_err();
    assert_eq!(wrong_version(&err), (ExpectedVersion::NoStream, 2));
    let err = store
        .append(&stream, ExpectedVersion::Exact(1), events(3..5))
        .await
        .unwrap_err();
    assert_eq!(wrong_version(&err), (ExpectedVersion::Exact(1), 2));
    assert!(err.is_conflict());
    assert!(
        err.to_string()
            .contains("at version 2, the append expected version 1"),
        "{err}"
    );
    let err = store
        .append(&stream, ExpectedVersion::Exact(7), events(5..6))
        .await
        .unwrap_err();
    assert_eq!(wrong_version(&err), (ExpectedVersion::Exact(7), 2));
    let err = store
        .append(&new_stream(), ExpectedVersion::Exact(1), events(6..7))
        .await
        .unwrap_err();
    assert_eq!(wrong_version(&err), (ExpectedVersion::Exact(1), 0));

    assert_eq!(store.read_stream(&stream, 1, 100).await.unwrap().len(), 2);
}

async fn one_of_eight_concurrent_writers_wins_each_round(backend: &dyn Backend) {
    const WRITERS: usize = 8;
    const ROUNDS: u64 = 20;
    let stream = new_stream();
    let barrier = Arc::new(Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        // Each writer has its own connection, as separate processes would.
        let store = backend.open().await;
        let stream = stream.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            let mut conflicts = 0;
            for round in 0..ROUNDS {
                barrier.wait().await;
                let event = event(writer);
                let id = event.id;
                match store
                    .append(&stream, ExpectedVersion::Exact(round), vec![event])
                    .await
                {
                    Ok(outcome) => {
                        assert_eq!(outcome.version, round + 1);
                        won.push((round, id));
                    }
                    Err(err) => {
                        assert_eq!(
                            wrong_version(&err),
                            (ExpectedVersion::Exact(round), round + 1)
                        );
                        conflicts += 1;
                    }
                }
                // Everyone has tried before the next round starts.
                barrier.wait().await;
            }
            (won, conflicts)
        }));
    }
    let mut winners = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        let (won, lost) = task.await.unwrap();
        winners.extend(won);
        conflicts += lost;
    }
    winners.sort();
    assert_eq!(
        winners.iter().map(|(round, _)| *round).collect::<Vec<_>>(),
        (0..ROUNDS).collect::<Vec<_>>(),
        "exactly one winner per round"
    );
    assert_eq!(conflicts, (WRITERS as u64 - 1) * ROUNDS);
    let stored = backend
        .open()
        .await
        .read_stream(&stream, 1, 1000)
        .await
        .unwrap();
    assert_eq!(
        stored.iter().map(|e| e.id).collect::<Vec<_>>(),
        winners.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
        "the stream holds each winner once, in round order, and nothing else"
    );
}

/// Writers in one process share one store (whose appends may be committed together): each
/// round all race for the next version of one stream and append to a stream of their own.
/// One wins each race; the losers' conflicts cost no one else's append.
async fn writers_sharing_a_store_lose_only_their_own_conflicts(backend: &dyn Backend) {
    const WRITERS: usize = 8;
    const ROUNDS: u64 = 10;
    let store = backend.open().await;
    let contested = new_stream();
    let barrier = Arc::new(Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let (store, contested, barrier) = (store.clone(), contested.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let own = new_stream();
            let mut won = 0;
            for round in 0..ROUNDS {
                barrier.wait().await;
                let (race, mine) = tokio::join!(
                    store.append(
                        &contested,
                        ExpectedVersion::Exact(round),
                        vec![event(writer)]
                    ),
                    store.append(&own, ExpectedVersion::Exact(round), vec![event(writer)]),
                );
                match race {
                    Ok(outcome) => {
                        assert_eq!(outcome.version, round + 1);
                        won += 1;
                    }
                    Err(err) => assert_eq!(
                        wrong_version(&err),
                        (ExpectedVersion::Exact(round), round + 1)
                    ),
                }
                assert_eq!(
                    mine.unwrap().version,
                    round + 1,
                    "writer {writer}'s own stream"
                );
                barrier.wait().await;
            }
            (own, won)
        }));
    }
    let mut wins = 0;
    for task in tasks {
        let (own, won) = task.await.unwrap();
        wins += won;
        let stored = store.read_stream(&own, 1, 1000).await.unwrap();
        assert_eq!(stored.len() as u64, ROUNDS);
    }
    assert_eq!(wins, ROUNDS, "exactly one winner per round");
    let stored = store.read_stream(&contested, 1, 1000).await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=ROUNDS).collect::<Vec<_>>()
    );
}

async fn appending_the_same_event_ids_twice_stores_them_once(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = new_stream();
    let batch = events(0..2);
    let first = store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    let again = store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert!(again.already_stored);
    assert_eq!(
        (again.version, again.position),
        (first.version, first.position)
    );

    let single = vec![event(2)];
    store
        .append(&stream, ExpectedVersion::Exact(2), single.clone())
        .await
        .unwrap();
    let again = store
        .append(&stream, ExpectedVersion::Exact(2), single.clone())
        .await
        .unwrap();
    assert!(again.already_stored);
    assert_eq!(again.version, 3);

    let any = vec![event(3)];
    store
        .append(&stream, ExpectedVersion::Any, any.clone())
        .await
        .unwrap();
    let again = store
        .append(&stream, ExpectedVersion::Any, any.clone())
        .await
        .unwrap();
    assert!(again.already_stored);
    assert_eq!(again.version, 4);

    let any_batch = events(4..6);
    store
        .append(&stream, ExpectedVersion::Any, any_batch.clone())
        .await
        .unwrap();
    let again = store
        .append(&stream, ExpectedVersion::Any, any_batch)
        .await
        .unwrap();
    assert!(again.already_stored);
    assert_eq!(again.version, 6);

    // Half a retry is neither a retry nor a new append.
    let mixed = vec![single[0].clone(), event(9)];
    let err = store
        .append(&stream, ExpectedVersion::Exact(2), mixed)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PartiallyStored { .. }), "{err}");

    let stored = store.read_stream(&stream, 1, 100).await.unwrap();
    assert_eq!(stored.len(), 6);
    let ids: HashSet<_> = stored.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 6);
}

async fn read_all_returns_every_stream_in_append_order(backend: &dyn Backend) {
    let store = backend.open().await;
    let start = store.head_position().await.unwrap();
    let streams = [new_stream(), new_stream(), new_stream()];
    let mut appended = Vec::new();
    for round in 0..4u64 {
        for (i, stream) in streams.iter().enumerate() {
            // Interleaved subjects, each with an exact expectation, alternating single events
            // and batches (nats-server #7361 validated the wrong subject here).
            let batch = if i == 1 { events(0..2) } else { events(0..1) };
            let expected = if round == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(round * batch.len() as u64)
            };
            appended.extend(batch.iter().map(|e| e.id));
            store.append(stream, expected, batch).await.unwrap();
        }
    }
    let all = store.read_all(start, 1000).await.unwrap();
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), appended);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(
        store.head_position().await.unwrap(),
        all.last().unwrap().position
    );

    let after_third = all[2].position;
    let rest = store.read_all(after_third, 1000).await.unwrap();
    assert_eq!(rest.len(), all.len() - 3);
    assert_eq!(rest[0].id, all[3].id);
    let page = store.read_all(start, 5).await.unwrap();
    assert_eq!(page.len(), 5);
    assert!(
        store
            .read_all(all.last().unwrap().position, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_catch_up_subscription_sees_events_from_before_and_after_it_started(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let stream = new_stream();
    let before = events(0..5);
    store
        .append(&stream, ExpectedVersion::NoStream, before.clone())
        .await
        .unwrap();
    let mut subscription = store
        .subscribe("catch_up", SubscribeFrom::Checkpoint)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(subscription.next().await.unwrap());
    }

    let writer = backend.open().await;
    let after = events(5..10);
    let appended = after.clone();
    let stream_for_writer = stream.clone();
    tokio::spawn(async move {
        for (i, event) in appended.into_iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            writer
                .append(
                    &stream_for_writer,
                    ExpectedVersion::Exact(5 + i as u64),
                    vec![event],
                )
                .await
                .unwrap();
        }
    });
    for _ in 0..5 {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("a live event arrives")
            .unwrap();
        seen.push(event);
    }
    let expected: Vec<_> = before.iter().chain(&after).map(|e| e.id).collect();
    assert_eq!(seen.iter().map(|e| e.id).collect::<Vec<_>>(), expected);
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
}

async fn a_durable_checkpoint_survives_a_restart_of_the_subscriber(backend: &dyn Backend) {
    let stream = new_stream();
    let appended = events(0..10);
    {
        let store = backend.open().await;
        store
            .append(&stream, ExpectedVersion::NoStream, appended.clone())
            .await
            .unwrap();
        let mut subscription = store
            .subscribe("durable", SubscribeFrom::Checkpoint)
            .await
            .unwrap();
        let mut handled = Vec::new();
        for _ in 0..4 {
            handled.push(subscription.next().await.unwrap());
        }
        // Two more were received but not handled: they must come again.
        subscription.next().await.unwrap();
        subscription.next().await.unwrap();
        subscription.checkpoint(handled[3].position).await.unwrap();
    }

    // A new process: a new store and a new subscription of the same name.
    let store = backend.open().await;
    let mut subscription = store
        .subscribe("durable", SubscribeFrom::Checkpoint)
        .await
        .unwrap();
    let mut rest = Vec::new();
    for _ in 0..6 {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("resumes at once")
            .unwrap();
        rest.push(event.id);
    }
    assert_eq!(rest, appended[4..].iter().map(|e| e.id).collect::<Vec<_>>());

    // Replay from zero on demand.
    let mut replay = store
        .subscribe("durable", SubscribeFrom::After(0))
        .await
        .unwrap();
    assert_eq!(replay.next().await.unwrap().id, appended[0].id);
}

/// A subscription to some types hands over every event of them, in order, and says how far it
/// has read past the others: to the head once only other types follow. It hands over no other
/// type.
async fn a_subscription_to_some_types_reads_past_the_others(backend: &dyn Backend) {
    const WANTED: &[&str] = &["ContactCreated"];
    let store = backend.open().await;
    let stream = new_stream();
    let mut appended = Vec::new();
    for n in 0..30 {
        let mut event = event(n);
        if n % 10 == 3 {
            event.event_type = "ContactCreated".into();
        }
        appended.push(event);
    }
    store
        .append(&stream, ExpectedVersion::NoStream, appended.clone())
        .await
        .unwrap();
    let head = store.head_position().await.unwrap();
    let mut subscription = store
        .subscribe_to("some_types", SubscribeFrom::After(0), WANTED)
        .await
        .unwrap();
    let handed = read_to_head(&mut subscription, head).await;
    assert!(
        handed.iter().all(|e| e.event_type == "ContactCreated"),
        "handed over other types too"
    );
    let wanted: Vec<_> = handed
        .iter()
        .filter(|e| WANTED.contains(&e.event_type.as_str()))
        .map(|e| e.id)
        .collect();
    let expected: Vec<_> = appended
        .iter()
        .filter(|e| e.event_type == "ContactCreated")
        .map(|e| e.id)
        .collect();
    assert_eq!(wanted, expected);

    // A live event of the type comes through; one of another type moves only the scan.
    let live = event(99);
    store
        .append(&stream, ExpectedVersion::Exact(30), vec![live])
        .await
        .unwrap();
    let mut created = event(100);
    created.event_type = "ContactCreated".into();
    store
        .append(&stream, ExpectedVersion::Exact(31), vec![created.clone()])
        .await
        .unwrap();
    let head = store.head_position().await.unwrap();
    let mut next = None;
    while subscription.scanned() < head {
        let batch = tokio::time::timeout(Duration::from_secs(10), subscription.next_batch(10))
            .await
            .expect("a live event arrives")
            .unwrap();
        next = next.or(batch
            .into_iter()
            .find(|e| WANTED.contains(&e.event_type.as_str())));
    }
    assert_eq!(next.map(|e| e.id), Some(created.id));
}

/// Every event of the types asked for, read up to the head, and how far the subscription got.
async fn read_to_head(
    subscription: &mut whatsnap_eventstore::Subscription,
    head: u64,
) -> Vec<whatsnap_events::RecordedEvent> {
    let mut handed = Vec::new();
    while subscription.scanned() < head {
        let batch = tokio::time::timeout(Duration::from_secs(10), subscription.next_batch(2))
            .await
            .expect("the subscription reads on to the head")
            .unwrap();
        handed.extend(batch);
    }
    assert_eq!(subscription.scanned(), head);
    handed
}

/// Streams of a kind that holds none of the types asked for are passed over too (JetStream's
/// server does not even send them): the subscription hands over every event of its types and
/// reads on to the head when only such streams follow, from the start, from a position, from
/// its checkpoint, and live.
async fn a_subscription_reads_past_the_kinds_of_stream_that_hold_none_of_its_types(
    backend: &dyn Backend,
) {
    const WANTED: &[&str] = &["ContactCreated"];
    let store = backend.open().await;
    let contact = new_stream();
    let account = StreamId::for_uuid(location(), AggregateKind::Account, Uuid::now_v7());
    let connected = |n: usize| NewEvent::raw("AccountConnected", format!(r#"{{"n":{n}}}"#));
    let mut created = Vec::new();
    for round in 0..5 {
        let mut event = event(round);
        event.event_type = "ContactCreated".into();
        created.push(event.id);
        store
            .append(&contact, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
        let others = (0..20).map(connected).collect();
        store
            .append(&account, ExpectedVersion::Any, others)
            .await
            .unwrap();
    }
    let head = store.head_position().await.unwrap();
    let ids = |events: &[whatsnap_events::RecordedEvent]| -> Vec<_> {
        events.iter().map(|e| e.id).collect()
    };

    let mut from_start = store
        .subscribe_to("kinds", SubscribeFrom::After(0), WANTED)
        .await
        .unwrap();
    let handed = read_to_head(&mut from_start, head).await;
    assert_eq!(ids(&handed), created, "from the start");
    from_start.checkpoint(handed[1].position).await.unwrap();
    drop(from_start);

    let mut from_third = store
        .subscribe_to(
            "kinds_mid",
            SubscribeFrom::After(handed[2].position),
            WANTED,
        )
        .await
        .unwrap();
    assert_eq!(
        ids(&read_to_head(&mut from_third, head).await),
        created[3..],
        "from the third"
    );

    let mut resumed = store
        .subscribe_to("kinds", SubscribeFrom::Checkpoint, WANTED)
        .await
        .unwrap();
    assert_eq!(
        ids(&read_to_head(&mut resumed, head).await),
        created[2..],
        "from the checkpoint"
    );

    // Live: only other kinds follow, and the scan still reaches the new head.
    store
        .append(
            &account,
            ExpectedVersion::Any,
            (20..30).map(connected).collect(),
        )
        .await
        .unwrap();
    let head = store.head_position().await.unwrap();
    assert!(read_to_head(&mut resumed, head).await.is_empty());
}

/// A subscriber that keeps its own checkpoint is handed, from where it says, every event of
/// its types in order and nothing else, whether it reads every kind of stream, several or
/// one, and while others catch up beside it (JetStream's store catches such a subscriber up on
/// pages of the log its subscriptions share: the `jetstream_paged` cases read pages of four);
/// then live events, and again from where it says after a restart.
async fn a_subscriber_keeping_its_own_checkpoint_is_handed_its_events_from_where_it_says(
    backend: &dyn Backend,
) {
    const SEVERAL: &[&str] = &["ContactCreated", "AccountConnected"];
    const ONE: &[&str] = &["ContactCreated"];
    let store = backend.open().await;
    let contact = new_stream();
    let account = StreamId::for_uuid(location(), AggregateKind::Account, Uuid::now_v7());
    let typed = |event_type: &str, n: usize| NewEvent::raw(event_type, format!(r#"{{"n":{n}}}"#));
    let mut appended = 0;
    for round in 0..7 {
        let on_contact = vec![typed("ContactCreated", round), event(round)];
        let on_account = vec![typed("AccountConnected", round), event(100 + round)];
        for (stream, batch) in [(&contact, on_contact), (&account, on_account)] {
            appended += batch.len();
            store
                .append(stream, ExpectedVersion::Any, batch)
                .await
                .unwrap();
        }
    }
    let head = store.head_position().await.unwrap();
    let stored = store.read_all(0, 100).await.unwrap();
    let position_of = |n: usize| stored[n].position;
    let expected = |stored: &[whatsnap_events::RecordedEvent], types: Option<&[&str]>, after| {
        stored
            .iter()
            .filter(|e| e.position > after)
            .filter(|e| types.is_none_or(|t| t.contains(&e.event_type.as_str())))
            .map(|e| e.id)
            .collect::<Vec<EventId>>()
    };
    let ids = |events: Vec<whatsnap_events::RecordedEvent>| -> Vec<EventId> {
        events.into_iter().map(|e| e.id).collect()
    };
    assert_eq!(stored.len(), appended);

    let (every, several, one, late) = tokio::join!(
        store.subscribe("own_every", SubscribeFrom::AfterOwn(0)),
        store.subscribe_to("own_several", SubscribeFrom::AfterOwn(0), SEVERAL),
        store.subscribe_to("own_one", SubscribeFrom::AfterOwn(0), ONE),
        store.subscribe_to("own_late", SubscribeFrom::AfterOwn(position_of(9)), SEVERAL),
    );
    let (mut every, mut several, mut one, mut late) = (
        every.unwrap(),
        several.unwrap(),
        one.unwrap(),
        late.unwrap(),
    );
    let (every_got, several_got, one_got, late_got) = tokio::join!(
        read_every(&mut every, head),
        read_to_head(&mut several, head),
        read_to_head(&mut one, head),
        read_to_head(&mut late, head),
    );
    assert_eq!(ids(every_got), expected(&stored, None, 0), "every type");
    let several_expected = expected(&stored, Some(SEVERAL), 0);
    assert_eq!(ids(several_got), several_expected, "several kinds");
    assert_eq!(ids(one_got), expected(&stored, Some(ONE), 0), "one kind");
    let from_tenth = expected(&stored, Some(SEVERAL), position_of(9));
    assert_eq!(ids(late_got), from_tenth, "from a position");

    // Live: each is handed what follows.
    let live = vec![typed("ContactCreated", 50), event(50)];
    store
        .append(&contact, ExpectedVersion::Any, live)
        .await
        .unwrap();
    let before = head;
    let head = store.head_position().await.unwrap();
    let stored = store.read_all(0, 100).await.unwrap();
    let live_every = expected(&stored, None, before);
    assert_eq!(ids(read_every(&mut every, head).await), live_every);
    for subscription in [&mut several, &mut one] {
        let handed = read_to_head(subscription, head).await;
        assert_eq!(ids(handed), expected(&stored, Some(ONE), before), "live");
    }

    // A restart from a position the subscriber kept: nothing before it, nothing missed.
    drop(several);
    let kept = position_of(17);
    let mut again = store
        .subscribe_to("own_several", SubscribeFrom::AfterOwn(kept), SEVERAL)
        .await
        .unwrap();
    assert_eq!(
        ids(read_to_head(&mut again, head).await),
        expected(&stored, Some(SEVERAL), kept),
        "after a restart"
    );
}

/// Every event up to the head from a subscription handing over every type.
async fn read_every(
    subscription: &mut whatsnap_eventstore::Subscription,
    head: u64,
) -> Vec<whatsnap_events::RecordedEvent> {
    let mut handed: Vec<whatsnap_events::RecordedEvent> = Vec::new();
    while handed.last().is_none_or(|e| e.position < head) {
        let batch = tokio::time::timeout(Duration::from_secs(10), subscription.next_batch(3))
            .await
            .expect("the subscription reads on to the head")
            .unwrap();
        handed.extend(batch);
    }
    handed
}

/// A watch of one kind of stream hands over the events of those streams appended after its
/// start, in order, and none of another kind; it keeps no checkpoint, so a second watch of the
/// same kind starts where it is told, not where the first one got to.
/// Reading one kind of stream hands over its streams' events only, in position order, a page
/// at a time, and nothing once none is left after the position given.
async fn reading_one_kind_of_stream_passes_over_the_others(backend: &dyn Backend) {
    let store = backend.open().await;
    let mut assignments = Vec::new();
    for round in 0..4 {
        let other = new_stream();
        store
            .append(&other, ExpectedVersion::NoStream, events(0..3))
            .await
            .unwrap();
        let assignment = StreamId::for_uuid(location(), AggregateKind::Assignment, Uuid::now_v7());
        let appended = store
            .append(
                &assignment,
                ExpectedVersion::NoStream,
                events(round..round + 2),
            )
            .await
            .unwrap();
        assignments.extend([appended.position - 1, appended.position]);
    }
    let positions = |events: &[whatsnap_events::RecordedEvent]| -> Vec<u64> {
        for event in events {
            assert_eq!(event.stream.kind(), AggregateKind::Assignment, "{event:?}");
        }
        events.iter().map(|e| e.position).collect()
    };
    let first = store
        .read_kind(AggregateKind::Assignment, 0, 3)
        .await
        .unwrap();
    assert_eq!(positions(&first), assignments[..3]);
    let rest = store
        .read_kind(AggregateKind::Assignment, first[2].position, 100)
        .await
        .unwrap();
    assert_eq!(positions(&rest), assignments[3..]);
    let none = store
        .read_kind(AggregateKind::Assignment, *assignments.last().unwrap(), 100)
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
}

async fn a_watch_sees_the_streams_of_its_kind_only(backend: &dyn Backend) {
    let store = backend.open().await;
    let account = || StreamId::for_uuid(location(), AggregateKind::Account, Uuid::now_v7());
    let before = account();
    store
        .append(&before, ExpectedVersion::NoStream, events(0..2))
        .await
        .unwrap();
    let start = store.head_position().await.unwrap();
    let Some(mut watch) = store.watch(AggregateKind::Account, start).await.unwrap() else {
        panic!("both backends watch");
    };
    let contact = new_stream();
    let (first, second) = (account(), account());
    store
        .append(&contact, ExpectedVersion::NoStream, events(10..13))
        .await
        .unwrap();
    store
        .append(&first, ExpectedVersion::NoStream, events(20..21))
        .await
        .unwrap();
    store
        .append(&contact, ExpectedVersion::Exact(3), events(13..14))
        .await
        .unwrap();
    store
        .append(&second, ExpectedVersion::NoStream, events(21..22))
        .await
        .unwrap();
    store
        .append(&before, ExpectedVersion::Exact(2), events(3..4))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.next_batch(10))
            .await
            .expect("the watch hands over what was appended")
            .unwrap();
        seen.extend(batch.into_iter().map(|e| (e.stream, e.version)));
    }
    assert_eq!(
        seen,
        [(first.clone(), 1), (second.clone(), 1), (before.clone(), 3)],
        "the accounts' events after the start, in order, and nothing else"
    );
    watch
        .checkpoint(store.head_position().await.unwrap())
        .await
        .unwrap();
    drop(watch);

    let Some(mut again) = store.watch(AggregateKind::Account, start).await.unwrap() else {
        unreachable!("watched above");
    };
    let batch = tokio::time::timeout(Duration::from_secs(10), again.next_batch(10))
        .await
        .expect("a new watch starts where it is told")
        .unwrap();
    assert_eq!((batch[0].stream.clone(), batch[0].version), (first, 1));
}

/// The version a stream is at, as a cache keeps it (the test events do not decode).
#[derive(Debug, Default, Clone)]
struct Versions;

impl whatsnap_eventstore::Aggregate for Versions {
    const SKIPS_UNDECODABLE: bool = true;

    fn evolve(self, _: &whatsnap_events::Event, _: u64) -> Self {
        self
    }
}

/// A store that counts the stream reads it is asked for.
struct CountingReads {
    inner: Arc<dyn EventStore>,
    reads: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl EventStore for CountingReads {
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
    ) -> whatsnap_eventstore::Result<Vec<whatsnap_events::RecordedEvent>> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.read_stream(stream, from_version, limit).await
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> whatsnap_eventstore::Result<Vec<whatsnap_events::RecordedEvent>> {
        self.inner.read_all(after, limit).await
    }

    async fn head_position(&self) -> whatsnap_eventstore::Result<u64> {
        self.inner.head_position().await
    }

    async fn subscribe(
        &self,
        name: &str,
        from: SubscribeFrom,
    ) -> whatsnap_eventstore::Result<whatsnap_eventstore::Subscription> {
        self.inner.subscribe(name, from).await
    }

    async fn watch(
        &self,
        kind: AggregateKind,
        after: u64,
    ) -> whatsnap_eventstore::Result<Option<whatsnap_eventstore::Subscription>> {
        self.inner.watch(kind, after).await
    }
}

/// A cache that follows the log answers a kept stream from memory, with no read of the
/// store, and a change another writer appends reaches it; a stream it is told was written
/// is read again at once; stopped, it reads the store again.
async fn a_followed_cache_answers_from_memory_and_sees_other_writers(backend: &dyn Backend) {
    use whatsnap_eventstore::aggregate::{Aggregates, Cache};
    let store = Arc::new(CountingReads {
        inner: backend.open().await,
        reads: Default::default(),
    });
    let reads = || store.reads.load(std::sync::atomic::Ordering::SeqCst);
    let other_writer = backend.open().await;
    let stream = StreamId::for_uuid(location(), AggregateKind::Account, Uuid::now_v7());
    store
        .append(&stream, ExpectedVersion::NoStream, events(0..2))
        .await
        .unwrap();
    let cache = Arc::new(Cache::<Versions>::new(100));
    let follower = tokio::spawn({
        let (cache, store) = (cache.clone(), store.clone());
        async move { cache.follow(store.as_ref(), AggregateKind::Account).await }
    });
    whatsnap_testkit::eventually("the follower watches the log", async || {
        cache.is_following().then_some(())
    })
    .await;
    let aggregates = Aggregates::new(store.as_ref());

    assert_eq!(
        cache.current(&aggregates, &stream).await.unwrap().version,
        2
    );
    let after_first = reads();
    assert!(after_first > 0, "a stream not kept yet is read");
    for _ in 0..5 {
        assert_eq!(
            cache.current(&aggregates, &stream).await.unwrap().version,
            2
        );
    }
    assert_eq!(reads(), after_first, "a kept stream was read again");

    other_writer
        .append(&stream, ExpectedVersion::Exact(2), events(2..3))
        .await
        .unwrap();
    whatsnap_testkit::eventually(
        "the other writer's event reaches the kept state",
        async || (cache.current(&aggregates, &stream).await.unwrap().version == 3).then_some(()),
    )
    .await;
    assert_eq!(reads(), after_first, "the change was read from the store");

    // A writer that tells the cache what it wrote reads its own change at once.
    store
        .append(&stream, ExpectedVersion::Exact(3), events(3..4))
        .await
        .unwrap();
    cache.forget(&stream);
    assert_eq!(
        cache.current(&aggregates, &stream).await.unwrap().version,
        4
    );

    follower.abort();
    let _ = follower.await;
    // `load` always asks the store, followed or not.
    cache.load(&aggregates, &stream).await.unwrap();
    assert!(reads() > after_first);
}

/// The version a stream's decodable events brought it to.
#[derive(Debug, Default, Clone)]
struct LastVersion(u64);

impl whatsnap_eventstore::Aggregate for LastVersion {
    fn evolve(self, _: &whatsnap_events::Event, version: u64) -> Self {
        Self(version)
    }
}

/// A decision made in log order (an event's handler at the event's position) on a followed
/// stream: a new stream is created with no read; once the follower has read the log past the
/// position, a kept stream is decided from memory, another writer's change included; past
/// what the follower has read, the store is read.
async fn a_decision_in_log_order_is_made_from_memory_once_the_follower_has_read_that_far(
    backend: &dyn Backend,
) {
    use whatsnap_eventstore::aggregate::{Aggregates, Cache};
    let store = Arc::new(CountingReads {
        inner: backend.open().await,
        reads: Default::default(),
    });
    let reads = || store.reads.load(std::sync::atomic::Ordering::SeqCst);
    let other_writer = backend.open().await;
    let cache = Arc::new(Cache::<LastVersion>::new(100));
    let follower = tokio::spawn({
        let (cache, store) = (cache.clone(), store.clone());
        async move { cache.follow(store.as_ref(), AggregateKind::Contact).await }
    });
    whatsnap_testkit::eventually("the follower watches the log", async || {
        cache.followed_through()
    })
    .await;
    let aggregates = Aggregates::new(store.as_ref());
    let metadata = EventMetadata::new_correlation();
    let decodable = || {
        whatsnap_events::Event::from(whatsnap_events::ContactErased {
            contact_id: Uuid::nil(),
            requested_by: None,
        })
    };
    let stream = StreamId::for_uuid(location(), AggregateKind::Contact, Uuid::now_v7());
    let mut decided_on = Vec::new();
    // The message at `position` creates the stream, or finds it there: nothing to do.
    let mut decide_at = async |position: u64| {
        let mut decide = |state: &LastVersion| {
            decided_on.push(state.0);
            Ok::<_, String>(match state.0 {
                0 => vec![decodable()],
                _ => vec![],
            })
        };
        cache
            .update_at(&aggregates, &stream, position, &metadata, &mut decide)
            .await
            .unwrap()
    };

    let message_at = store.head_position().await.unwrap() + 1;
    let created = decide_at(message_at).await;
    assert_eq!((created.loaded.version, created.appended), (1, 1));
    assert_eq!(reads(), 0, "a new stream is created without a read");

    let written_at = store.head_position().await.unwrap();
    other_writer
        .append(
            &stream,
            ExpectedVersion::Exact(1),
            vec![whatsnap_events::NewEvent::new(
                &decodable(),
                EventMetadata::new_correlation(),
            )],
        )
        .await
        .unwrap();
    let next_message_at = store.head_position().await.unwrap() + 1;
    whatsnap_testkit::eventually("the follower reads the other writer's change", async || {
        cache
            .followed_through()
            .filter(|through| *through + 1 >= next_message_at)
    })
    .await;
    assert!(written_at < next_message_at);
    let nothing = decide_at(next_message_at).await;
    assert_eq!((nothing.loaded.version, nothing.appended), (2, 0));
    assert_eq!(
        reads(),
        0,
        "decided from memory, the other writer's change in it"
    );

    // A message further on than the follower has read: the stream is read.
    decide_at(next_message_at + 1_000).await;
    assert_eq!(reads(), 1);
    assert_eq!(decided_on, [0, 2, 2, 2]);

    follower.abort();
    let _ = follower.await;
}

async fn a_multi_event_append_is_all_or_nothing(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = new_stream();
    store
        .append(&stream, ExpectedVersion::NoStream, events(0..3))
        .await
        .unwrap();

    // Refused batches store none of their events.
    let stale = store
        .append(&stream, ExpectedVersion::Exact(1), events(3..6))
        .await
        .unwrap_err();
    assert!(stale.is_conflict());
    let elsewhere = new_stream();
    let taken = event(7);
    store
        .append(&elsewhere, ExpectedVersion::NoStream, vec![taken.clone()])
        .await
        .unwrap();
    let mut reuses_an_id = events(8..11);
    reuses_an_id[2] = taken;
    let err = store
        .append(&stream, ExpectedVersion::Exact(3), reuses_an_id)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::PartiallyStored { .. } | StoreError::InvalidAppend { .. }
        ),
        "{err}"
    );
    let mut twice = events(11..13);
    twice[1].id = twice[0].id;
    let err = store
        .append(&stream, ExpectedVersion::Exact(3), twice)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidAppend { .. }), "{err}");
    assert!(
        store
            .append(&stream, ExpectedVersion::Any, Vec::new())
            .await
            .is_err()
    );
    assert_eq!(store.read_stream(&stream, 1, 100).await.unwrap().len(), 3);

    // A reader never sees part of a batch.
    const BATCH: usize = 50;
    let reader_store = backend.open().await;
    let watched = new_stream();
    let reader_stream = watched.clone();
    let reader = tokio::spawn(async move {
        let mut observed = HashSet::new();
        loop {
            let len = reader_store
                .read_stream(&reader_stream, 1, 10_000)
                .await
                .unwrap()
                .len();
            observed.insert(len);
            if len == BATCH * 10 {
                return observed;
            }
            tokio::task::yield_now().await;
        }
    });
    for round in 0..10u64 {
        let expected = ExpectedVersion::Exact(round * BATCH as u64);
        store
            .append(&watched, expected, events(0..BATCH))
            .await
            .unwrap();
    }
    let observed = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(
        observed.iter().all(|len| len % BATCH == 0),
        "a reader saw a partial batch: {observed:?}"
    );
    let stored = store.read_stream(&watched, 1, 10_000).await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=(BATCH as u64 * 10)).collect::<Vec<_>>()
    );
}

async fn bad_requests_are_refused_with_a_reason(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = new_stream();
    let err = store
        .append(&stream, ExpectedVersion::Any, Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no events"), "{err}");
    let err = store
        .append(&stream, ExpectedVersion::Any, events(0..1001))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 1000"), "{err}");
    let err = store
        .subscribe("has.dots", SubscribeFrom::Checkpoint)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, StoreError::InvalidSubscriptionName { .. }),
        "{err}"
    );
    // An event of a type the catalogue places on another kind of stream.
    let mut misplaced = event(0);
    misplaced.event_type = "AccountConnected".into();
    let err = store
        .append(&stream, ExpectedVersion::Any, vec![event(1), misplaced])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidAppend { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("AccountConnected events go on account streams, not on contact ones"),
        "{err}"
    );
    assert!(store.read_stream(&stream, 1, 10).await.unwrap().is_empty());
}

async fn a_subscription_checkpoint_never_moves_backwards(backend: &dyn Backend) {
    let stream = new_stream();
    let appended = events(0..6);
    {
        let store = backend.open().await;
        store
            .append(&stream, ExpectedVersion::NoStream, appended.clone())
            .await
            .unwrap();
        let mut subscription = store
            .subscribe("forward", SubscribeFrom::Checkpoint)
            .await
            .unwrap();
        let mut handled = Vec::new();
        for _ in 0..4 {
            handled.push(subscription.next().await.unwrap().position);
        }
        subscription.checkpoint(handled[3]).await.unwrap();
        // A late checkpoint of an earlier position, e.g. for a redelivered event.
        subscription.checkpoint(handled[1]).await.unwrap();
    }

    let store = backend.open().await;
    let mut subscription = store
        .subscribe("forward", SubscribeFrom::Checkpoint)
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("resumes at once")
        .unwrap();
    assert_eq!(
        next.id, appended[4].id,
        "resumed at position {}",
        next.position
    );
}

macro_rules! conformance {
    ($backend:ident, $fixture:expr) => {
        mod $backend {
            use super::*;

            macro_rules! case {
                ($case:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $case() {
                        let fixture = $fixture;
                        super::$case(&fixture).await;
                    }
                };
            }

            case!(append_and_read_back_in_order);
            case!(a_stale_expected_version_is_a_conflict_that_writes_nothing);
            case!(one_of_eight_concurrent_writers_wins_each_round);
            case!(writers_sharing_a_store_lose_only_their_own_conflicts);
            case!(appending_the_same_event_ids_twice_stores_them_once);
            case!(read_all_returns_every_stream_in_append_order);
            case!(a_catch_up_subscription_sees_events_from_before_and_after_it_started);
            case!(a_subscription_to_some_types_reads_past_the_others);
            case!(a_subscription_reads_past_the_kinds_of_stream_that_hold_none_of_its_types);
            case!(a_subscriber_keeping_its_own_checkpoint_is_handed_its_events_from_where_it_says);
            case!(a_durable_checkpoint_survives_a_restart_of_the_subscriber);
            case!(a_subscription_checkpoint_never_moves_backwards);
            case!(a_watch_sees_the_streams_of_its_kind_only);
            case!(reading_one_kind_of_stream_passes_over_the_others);
            case!(a_followed_cache_answers_from_memory_and_sees_other_writers);
            case!(a_decision_in_log_order_is_made_from_memory_once_the_follower_has_read_that_far);
            case!(a_multi_event_append_is_all_or_nothing);
            case!(bad_requests_are_refused_with_a_reason);
        }
    };
}

conformance!(sqlite, TestSqlite::new().unwrap());
conformance!(jetstream, TestNats::new().await.unwrap());

/// JetStream catching every subscriber that keeps its own checkpoint up on pages of four events
/// (the other cases do not subscribe so).
mod jetstream_paged {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_subscriber_keeping_its_own_checkpoint_is_handed_its_events_from_where_it_says() {
        let fixture = TestNats::paged(4).await.unwrap();
        super::a_subscriber_keeping_its_own_checkpoint_is_handed_its_events_from_where_it_says(
            &fixture,
        )
        .await;
    }
}

/// SQLite keeps no checkpoint of its own for a subscriber that keeps its own (a read model, the
/// assignment decider): each would be a synced write of the log's file per batch, which the
/// log's appends would wait behind. A subscriber that leaves its checkpoint to the store still
/// has it kept.
#[tokio::test]
async fn sqlite_writes_no_checkpoint_for_a_subscriber_keeping_its_own() {
    let fixture = TestSqlite::new().unwrap();
    let store = fixture.store().await.unwrap();
    store
        .append(&new_stream(), ExpectedVersion::NoStream, events(0..3))
        .await
        .unwrap();
    let mut own = store
        .subscribe("own", SubscribeFrom::AfterOwn(0))
        .await
        .unwrap();
    let mut left = store
        .subscribe("left", SubscribeFrom::After(0))
        .await
        .unwrap();
    for subscription in [&mut own, &mut left] {
        let batch = subscription.next_batch(10).await.unwrap();
        assert_eq!(batch.len(), 3);
        subscription.checkpoint(batch[2].position).await.unwrap();
    }
    let log = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(&fixture.config.path),
    )
    .await
    .unwrap();
    let kept: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, position FROM subscription_checkpoints")
            .fetch_all(&log)
            .await
            .unwrap();
    assert_eq!(kept, [("left".to_owned(), 3)]);
}
