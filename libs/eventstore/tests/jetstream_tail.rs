//! The subscriptions of a process that keep their own checkpoint follow the head of the log
//! through one consumer between them, each handed the events of its types in order, none
//! twice; one that falls behind what the process keeps of the head catches up on the pages.

use std::time::Duration;

use whatsnap_events::{AggregateKind, LocationId, NewEvent, StreamId};
use whatsnap_eventstore::jetstream::{CatchUp, JetStreamEventStore};
use whatsnap_eventstore::{EventStore, ExpectedVersion, SubscribeFrom, Subscription};
use whatsnap_testkit::TestNats;

const SEVERAL: &[&str] = &["ContactCreated", "AccountConnected"];
const CONTACTS: &[&str] = &["ContactCreated"];

/// Appends `count` events, each to a stream of its own: accounts and contacts in turn.
async fn append(store: &JetStreamEventStore, count: usize) {
    let location = LocationId::parse("loc1").unwrap();
    for n in 0..count {
        let (kind, event_type) = match n % 2 {
            0 => (AggregateKind::Account, "AccountConnected"),
            _ => (AggregateKind::Contact, "ContactCreated"),
        };
        let stream = StreamId::for_uuid(location.clone(), kind, uuid::Uuid::now_v7());
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::raw(event_type, "{}")],
            )
            .await
            .unwrap();
    }
}

/// The positions and types `subscription` hands over until it has read the log through
/// `head`, checked to rise without a gap among those of its types.
async fn read_through(subscription: &mut Subscription, head: u64) -> Vec<(u64, String)> {
    let mut handed = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while subscription.scanned() < head {
            let batch = subscription.next_batch(64).await.unwrap();
            handed.extend(batch.into_iter().map(|e| (e.position, e.event_type)));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} read the log through {head}", subscription.name()));
    assert!(
        handed.windows(2).all(|w| w[0].0 < w[1].0),
        "{} was handed events out of order or twice",
        subscription.name()
    );
    handed
}

fn positions(handed: &[(u64, String)]) -> Vec<u64> {
    handed.iter().map(|(position, _)| *position).collect()
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
        contacts,
        (1..=150)
            .map(|n| (2 * n, "ContactCreated".to_owned()))
            .collect::<Vec<_>>()
    );

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
