//! The JetStream store refuses to run where its guarantees would silently not hold.

use std::time::Duration;

use async_nats::jetstream::stream;
use whatsnap_eventstore::StoreError;
use whatsnap_eventstore::jetstream::{JetStreamConfig, JetStreamEventStore};
use whatsnap_testkit::TestNats;

#[tokio::test]
async fn a_stream_without_atomic_batches_or_immutability_is_refused() {
    let fixture = TestNats::new().await.unwrap();
    let client = async_nats::connect(&fixture.config.url).await.unwrap();
    // Someone created the stream by hand, with the defaults.
    async_nats::jetstream::new(client)
        .create_stream(stream::Config {
            name: fixture.config.stream_name.clone(),
            subjects: vec![format!("{}.>", fixture.config.subject_prefix)],
            ..Default::default()
        })
        .await
        .unwrap();

    let err = fixture.store().await.err().expect("the store must refuse");
    let err = err.downcast::<StoreError>().unwrap();
    let message = err.to_string();
    assert!(matches!(err, StoreError::Unsupported(_)), "{message}");
    for setting in [
        "allow_atomic_publish",
        "deny_delete",
        "deny_purge",
        "discard",
    ] {
        assert!(
            message.contains(setting),
            "{setting} not named in: {message}"
        );
    }
}

/// Debian's NATS 2.9 accepts the batch and expected-sequence headers and ignores them.
#[tokio::test]
async fn a_nats_server_older_than_2_12_is_refused() {
    let url = whatsnap_testkit::old_nats_url().await.unwrap();
    let err = JetStreamEventStore::connect(&JetStreamConfig::new(url))
        .await
        .err()
        .expect("the store must refuse an old server");
    assert!(matches!(err, StoreError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("2.12 or newer"), "{err}");
}

/// A subscription to some types is sent only the streams of the kinds that may hold them: the
/// server passes over a thousand events of another kind without sending one.
#[tokio::test]
async fn the_server_sends_a_subscription_only_the_kinds_of_stream_it_reads() {
    use whatsnap_events::{AggregateKind, LocationId, NewEvent, StreamId};
    use whatsnap_eventstore::{EventStore, ExpectedVersion, SubscribeFrom};

    let fixture = TestNats::new().await.unwrap();
    let store = fixture.store().await.unwrap();
    let location = LocationId::parse("loc1").unwrap();
    let account = StreamId::for_uuid(
        location.clone(),
        AggregateKind::Account,
        uuid::Uuid::now_v7(),
    );
    for _ in 0..2 {
        let connected = (0..500)
            .map(|_| NewEvent::raw("AccountConnected", "{}"))
            .collect();
        store
            .append(&account, ExpectedVersion::Any, connected)
            .await
            .unwrap();
    }
    let contact = StreamId::for_uuid(location, AggregateKind::Contact, uuid::Uuid::now_v7());
    let created = NewEvent::raw("ContactCreated", "{}");
    store
        .append(&contact, ExpectedVersion::NoStream, vec![created.clone()])
        .await
        .unwrap();

    let mut subscription = store
        .subscribe_to("created", SubscribeFrom::After(0), &["ContactCreated"])
        .await
        .unwrap();
    let first = subscription.next().await.unwrap();
    assert_eq!(first.id, created.id);
    assert_eq!(first.position, 1001);

    let client = async_nats::connect(&fixture.config.url).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream(&fixture.config.stream_name)
        .await
        .unwrap();
    let consumer = stream.consumer_info("created").await.unwrap();
    assert_eq!(
        consumer.delivered.consumer_sequence, 1,
        "the server sent {} messages for one event",
        consumer.delivered.consumer_sequence
    );
}

/// Subscribers far behind that keep their own checkpoints (the read models of a process after a
/// rebuild) read the backlog once between them, a page per batch direct get, even when one of
/// them is slower than the pages kept allow (the others keep pace with it), and their
/// consumers are sent only what follows: not the whole log once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_far_behind_read_the_backlog_once_between_them() {
    use futures::StreamExt;
    use whatsnap_events::{AggregateKind, LocationId, NewEvent, StreamId};
    use whatsnap_eventstore::jetstream::CatchUp;
    use whatsnap_eventstore::{EventStore, ExpectedVersion, SubscribeFrom};

    const SEVERAL: &[&str] = &["ContactCreated", "AccountConnected"];
    let mut fixture = TestNats::new().await.unwrap();
    fixture.config.catch_up = CatchUp {
        after: 100,
        page: 100,
        pages_kept: 4,
        ..CatchUp::default()
    };
    let store = fixture.store().await.unwrap();
    let location = LocationId::parse("loc1").unwrap();
    for (kind, event_type) in [
        (AggregateKind::Account, "AccountConnected"),
        (AggregateKind::Contact, "ContactCreated"),
    ] {
        let stream = StreamId::for_uuid(location.clone(), kind, uuid::Uuid::now_v7());
        let events = (0..500).map(|_| NewEvent::raw(event_type, "{}")).collect();
        store
            .append(&stream, ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }

    // Every batch direct get the store asks for, counted up to a marker sent after the reads.
    let subject = format!("$JS.API.DIRECT.GET.{}", fixture.config.stream_name);
    let spy = async_nats::connect(&fixture.config.url).await.unwrap();
    let mut requests = spy.subscribe(subject.clone()).await.unwrap();
    spy.flush().await.unwrap();

    let read = |name: &'static str, pause: Duration| {
        let store = store.clone();
        async move {
            let mut subscription = store
                .subscribe_to(name, SubscribeFrom::AfterOwn(0), SEVERAL)
                .await
                .unwrap();
            let mut handed = 0;
            while subscription.scanned() < 1000 {
                handed += subscription.next_batch(64).await.unwrap().len();
                // A read model that takes its time to apply each batch.
                tokio::time::sleep(pause).await;
            }
            handed
        }
    };
    let (a, b, c) = tokio::join!(
        read("first", Duration::ZERO),
        read("second", Duration::ZERO),
        read("third", Duration::from_millis(10)),
    );
    assert_eq!((a, b, c), (1000, 1000, 1000), "every event to each");

    spy.publish(subject, "marker".into()).await.unwrap();
    let mut asked = 0;
    while let Some(request) = requests.next().await {
        if request.payload.as_ref() == b"marker" {
            break;
        }
        asked += 1;
    }
    assert_eq!(asked, 10, "ten pages of a hundred, each asked for once");

    let stream = async_nats::jetstream::new(spy)
        .get_stream(&fixture.config.stream_name)
        .await
        .unwrap();
    for name in ["first", "second", "third"] {
        let consumer = stream.consumer_info(name).await;
        let sent = consumer.map_or(0, |c| c.delivered.consumer_sequence);
        assert_eq!(
            sent, 0,
            "the server sent {name} {sent} messages of the backlog"
        );
    }
}
