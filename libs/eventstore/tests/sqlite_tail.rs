//! The embedded store hands its subscriptions the events it has just committed from memory:
//! exactly as the log holds them, in order, none twice, with the appends of another process on
//! the same file among them, and from the log itself when a subscription is further behind
//! than what is kept.

use whatsnap_events::{AggregateKind, RecordedEvent};
use whatsnap_eventstore::{EventStore, SubscribeFrom};
use whatsnap_testkit::{TestSqlite, append_accounts_and_contacts as append, read_through};

#[tokio::test]
async fn subscriptions_are_handed_the_log_as_stored_with_another_processs_appends_among_it() {
    let fixture = TestSqlite::new().unwrap();
    let here = fixture.store().await.unwrap();
    // Another process on the same file: a store of its own, with its own writer and memory.
    let there = fixture.store().await.unwrap();
    let mut every = here
        .subscribe("every", SubscribeFrom::AfterOwn(0))
        .await
        .unwrap();
    let mut contacts = here
        .subscribe_to("contacts", SubscribeFrom::AfterOwn(0), &["ContactCreated"])
        .await
        .unwrap();
    let mut watch = here
        .watch(AggregateKind::Account, 0)
        .await
        .unwrap()
        .expect("the embedded store watches");

    let writes = async {
        for _ in 0..5 {
            append(&here, 3).await;
            append(&there, 2).await;
        }
    };
    let (every, contacts, accounts, ()) = tokio::join!(
        read_through(&mut every, 25),
        read_through(&mut contacts, 25),
        read_through(&mut watch, 25),
        writes,
    );

    let log = here.read_all(0, 100).await.unwrap();
    assert_eq!(log.len(), 25);
    assert_eq!(
        every, log,
        "every event, as the log holds it, in order, once"
    );
    let of = |kind| -> Vec<RecordedEvent> {
        log.iter()
            .filter(|e| e.stream.kind() == kind)
            .cloned()
            .collect()
    };
    assert_eq!(contacts, of(AggregateKind::Contact));
    assert_eq!(accounts, of(AggregateKind::Account));
}

#[tokio::test]
async fn a_subscription_behind_what_is_kept_reads_the_log() {
    let mut fixture = TestSqlite::new().unwrap();
    fixture.config.tail = 4;
    let store = fixture.store().await.unwrap();
    let mut slow = store
        .subscribe_to("slow", SubscribeFrom::AfterOwn(0), &["ContactCreated"])
        .await
        .unwrap();
    append(&store, 2).await;
    assert_eq!(read_through(&mut slow, 2).await.len(), 1);

    // Fifty more while it reads nothing: only the last four are kept.
    append(&store, 50).await;
    let handed = read_through(&mut slow, 52).await;
    let log = store.read_all(2, 100).await.unwrap();
    let contacts: Vec<_> = log
        .into_iter()
        .filter(|e| e.event_type == "ContactCreated")
        .collect();
    assert_eq!(handed, contacts);
}
