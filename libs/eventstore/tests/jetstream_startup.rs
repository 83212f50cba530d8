//! The JetStream store refuses to run where its guarantees would silently not hold.

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
