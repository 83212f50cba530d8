//! The GHL work of one replica hears the GHL queue move when the queue's read model, run by
//! another replica, commits a batch: a PostgreSQL notification, not its next poll.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;
use whatsnap_events::{
    AggregateKind, Event, EventMetadata, InboundMessageReceived, LocationId, NewEvent, StreamId,
};
use whatsnap_eventstore::projection::ProjectionRunner;
use whatsnap_eventstore::{EventStore, ExpectedVersion};
use whatsnap_ghl_sync::{PendingWork, queue_moves};
use whatsnap_testkit::{TestPostgres, TestSqlite};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_hears_the_ghl_queue_move_when_another_replica_applies_a_batch() {
    sqlx::any::install_default_drivers();
    let sqlite = TestSqlite::new().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(sqlite.store().await.unwrap());
    let postgres = TestPostgres::new().await.unwrap();
    let url = postgres.url_with_schema();

    // This replica's GHL work listens; it hears once that it listens (for anything missed).
    let mut moved = queue_moves(&url);
    tokio::time::timeout(Duration::from_secs(10), moved.wait_for(|ticks| *ticks >= 1))
        .await
        .expect("listening within 10 s")
        .unwrap();
    let heard = *moved.borrow_and_update();

    // The other replica runs the queue's read model.
    let db = sqlx::AnyPool::connect(&url).await.unwrap();
    let runner = Arc::new(ProjectionRunner::new(
        store.clone(),
        db,
        Arc::new(PendingWork::default()),
    ));
    runner.prepare().await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let runner = runner.clone();
        async move {
            runner
                .run_until(async move {
                    let _ = stopped.await;
                })
                .await
        }
    });

    // A text arrives: the read model queues it for GHL, and this replica hears of it.
    let location = LocationId::parse("locHeard").unwrap();
    let message_id = Uuid::now_v7();
    let text = Event::from(InboundMessageReceived {
        message_id,
        account_id: Uuid::now_v7(),
        provider_message_id: "SM1".into(),
        from: "+14155550100".into(),
        to: None,
        body: "hello".into(),
        sender_name: None,
        received_at: Utc::now(),
        attachments: Vec::new(),
        from_me: false,
        sender_lid: None,
    });
    let stream = StreamId::for_uuid(location, AggregateKind::Message, message_id);
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&text, EventMetadata::new_correlation())],
        )
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        moved.wait_for(|ticks| *ticks > heard),
    )
    .await
    .expect("the queue's move heard within 10 s")
    .unwrap();
    let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ghl_pending")
        .fetch_one(&postgres.pool)
        .await
        .unwrap();
    assert_eq!(queued, 1, "heard once the batch was committed");

    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}
