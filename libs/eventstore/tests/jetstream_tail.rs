//! The subscriptions of a process that keep their own checkpoint follow the head of the log
//! through one consumer between them, each handed the events of its types in order, none
//! twice; one that falls behind what the process keeps of the head catches up on the pages.

use whatsnap_events::RecordedEvent;
use whatsnap_eventstore::jetstream::CatchUp;
use whatsnap_eventstore::{EventStore, StoreError, SubscribeFrom};
use whatsnap_testkit::{TestNats, append_accounts_and_contacts as append, read_through};

const SEVERAL: &[&str] = &["ContactCreated", "AccountConnected"];
const CONTACTS: &[&str] = &["ContactCreated"];

fn positions(handed: &[RecordedEvent]) -> Vec<u64> {
    handed.iter().map(|event| event.position).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_keeping_their_own_checkpoint_follow_the_head_through_one_consumer() {
    let fixture = TestNats::new().await.unwrap();
    let store = fixture.store().await.unwrap();
    let subscribe = async |name: &str, only: Option<&'static [&'static str]>| match only {
        Some(only) => store
            .subscribe_to(name, SubscribeFrom::AfterOwn(0), only)
            .await
            .unwrap(),
        None => store
            .subscribe(name, SubscribeFrom::AfterOwn(0))
            .await
            .unwrap(),
    };
    let mut several = subscribe("several", Some(SEVERAL)).await;
    let mut contacts = subscribe("contacts", Some(CONTACTS)).await;
    let mut every = subscribe("every", None).await;

    // Read while the log grows.
    let (several, contacts, every, ()) = tokio::join!(
        read_through(&mut several, 300),
        read_through(&mut contacts, 300),
        read_through(&mut every, 300),
        append(&store, 300),
    );
    assert_eq!(positions(&several), (1..=300).collect::<Vec<_>>());
    assert_eq!(positions(&every), (1..=300).collect::<Vec<_>>());
    assert_eq!(
        positions(&contacts),
        (1..=150).map(|n| 2 * n).collect::<Vec<_>>()
    );
    assert!(contacts.iter().all(|e| e.event_type == "ContactCreated"));

    // One that starts later, half way through what is kept, is handed what follows.
    let mut late = store
        .subscribe("late", SubscribeFrom::AfterOwn(250))
        .await
        .unwrap();
    let late = read_through(&mut late, 300).await;
    assert_eq!(positions(&late), (251..=300).collect::<Vec<_>>());

    let client = async_nats::connect(&fixture.config.url).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(&fixture.config.stream_name)
        .await
        .unwrap();
    let consumers = stream.info().await.unwrap().state.consumer_count;
    assert_eq!(consumers, 1, "four subscriptions, one consumer of the head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_behind_what_is_kept_of_the_head_catches_up_on_the_pages() {
    let mut fixture = TestNats::new().await.unwrap();
    // Pages of ten events; the last four messages of the head kept.
    fixture.config.catch_up = CatchUp {
        after: 0,
        page: 10,
        pages_kept: 2,
        tail: 4,
    };
    let store = fixture.store().await.unwrap();
    let mut fast = store
        .subscribe("fast", SubscribeFrom::AfterOwn(0))
        .await
        .unwrap();
    let mut slow = store
        .subscribe_to("slow", SubscribeFrom::AfterOwn(0), SEVERAL)
        .await
        .unwrap();
    append(&store, 5).await;
    assert_eq!(
        positions(&read_through(&mut fast, 5).await),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        positions(&read_through(&mut slow, 5).await),
        [1, 2, 3, 4, 5]
    );

    // The slow one reads nothing while 200 more arrive: the head kept moves past it.
    append(&store, 200).await;
    let fast = read_through(&mut fast, 205).await;
    assert_eq!(positions(&fast), (6..=205).collect::<Vec<_>>());
    let slow = read_through(&mut slow, 205).await;
    assert_eq!(positions(&slow), (6..=205).collect::<Vec<_>>());

    // One starting just before what is kept (201 to 205) reads the gap, then the rest.
    let mut near = store
        .subscribe("near", SubscribeFrom::AfterOwn(199))
        .await
        .unwrap();
    let near = read_through(&mut near, 205).await;
    assert_eq!(positions(&near), (200..=205).collect::<Vec<_>>());
}

/// A message that does not decode stops only the subscriptions of its type, after the events
/// before it, whether they take it from the pages or from the head kept in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_that_does_not_decode_stops_only_the_subscriptions_of_its_type() {
    for paged in [false, true] {
        let fixture = match paged {
            true => TestNats::paged(2).await.unwrap(),
            false => TestNats::new().await.unwrap(),
        };
        let store = fixture.store().await.unwrap();
        append(&store, 3).await;
        // A contact's creation someone wrote by hand, with its type and nothing else.
        let client = async_nats::connect(&fixture.config.url).await.unwrap();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Whatsnap-Event-Type", "ContactCreated");
        let subject = format!(
            "{}.loc1.contact.{}",
            fixture.config.subject_prefix,
            uuid::Uuid::now_v7()
        );
        async_nats::jetstream::new(client)
            .publish_with_headers(subject, headers, "not an event".into())
            .await
            .unwrap()
            .await
            .unwrap();
        append(&store, 3).await;

        let mut accounts = store
            .subscribe_to(
                "accounts",
                SubscribeFrom::AfterOwn(0),
                &["AccountConnected"],
            )
            .await
            .unwrap();
        assert_eq!(
            positions(&read_through(&mut accounts, 7).await),
            [1, 3, 5, 7]
        );
        let mut contacts = store
            .subscribe_to("contacts", SubscribeFrom::AfterOwn(0), CONTACTS)
            .await
            .unwrap();
        let mut handed = Vec::new();
        let err = loop {
            match contacts.next_batch(64).await {
                Ok(batch) => handed.extend(batch),
                Err(err) => break err,
            }
        };
        assert_eq!(positions(&handed), [2], "paged: {paged}");
        assert!(
            matches!(err, StoreError::Corrupt { position: 4, .. }),
            "paged: {paged}: {err}"
        );
    }
}
