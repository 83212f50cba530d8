//! Read models that apply a batch of events together (a rebuild's thousands of events in a
//! few statements) leave exactly what applying the same events one at a time leaves: the
//! contacts' timelines (`whatsnap trace`) and the queue of work for GHL, on SQLite and on
//! PostgreSQL, over a log whose batches hold the cases that order decides (a message posted
//! before it is received, received twice, an erasure between a contact's messages, a status
//! whose message is in an earlier batch).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{Any, AnyConnection, AnyPool};
use uuid::Uuid;
use whatsnap_events::{
    AccountAdded, AccountConnected, AccountKind, AggregateKind, AssignmentSkipped, ContactCreated,
    ContactErased, ContactTagged, Event, EventMetadata, GhlContactLinked, GhlMessagePosted,
    GhlSyncFailed, InboundMessageReceived, LocationId, MessageDelivered, NewEvent,
    OutboundMessageRequested, PhoneNumber, RecordedEvent, StreamId, TagSource, contact_id_for,
};
use whatsnap_eventstore::projection::{ApplyError, Projection, ProjectionRunner};
use whatsnap_eventstore::{EventStore, ExpectedVersion};
use whatsnap_testkit::{TestPostgres, TestSqlite};

const LOCATION: &str = "locBatches";

/// The same projection, made to apply its events one at a time.
struct OneAtATime(Arc<dyn Projection<Any>>);

#[async_trait]
impl Projection<Any> for OneAtATime {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn migrations(&self) -> &'static [&'static str] {
        self.0.migrations()
    }

    fn reads(&self) -> Option<&'static [&'static str]> {
        self.0.reads()
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        self.0.apply(conn, event).await
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        self.0.reset(conn).await
    }
}

/// What the tests compare: each row of each table as one line, sorted.
async fn dump(pool: &AnyPool, queries: &[&str]) -> Vec<String> {
    let mut lines = Vec::new();
    for query in queries {
        let mut rows: Vec<String> = sqlx::query_scalar(query).fetch_all(pool).await.unwrap();
        assert!(!rows.is_empty(), "nothing in the read model for {query}");
        rows.sort();
        lines.push(format!("-- {query}"));
        lines.extend(rows);
    }
    lines
}

/// A location's log, appended a wave at a time: each wave is applied before the next is
/// appended, so that later waves find earlier ones in the read model, not in their batch.
struct Log {
    location: LocationId,
    account: Uuid,
    waves: Vec<Vec<(StreamId, Event)>>,
    /// The texts so far: each is dated by it, some earlier than the one before.
    texts: i64,
}

impl Log {
    fn new() -> Self {
        let mut log = Self {
            location: LocationId::parse(LOCATION).unwrap(),
            account: Uuid::now_v7(),
            waves: vec![Vec::new()],
            texts: 0,
        };
        log.push(
            AggregateKind::Account,
            log.account,
            AccountAdded {
                account_id: log.account,
                kind: AccountKind::Twilio,
                name: "Front desk".into(),
                tag: "whatsnap-account-front".into(),
                phone_number: Some("+15005550006".into()),
                twilio: None,
                engine: None,
                settings: None,
            },
        );
        log
    }

    fn next_wave(&mut self) {
        self.waves.push(Vec::new());
    }

    fn push(&mut self, kind: AggregateKind, id: Uuid, event: impl Into<Event>) {
        let stream = StreamId::for_uuid(self.location.clone(), kind, id);
        self.waves.last_mut().unwrap().push((stream, event.into()));
    }

    /// A contact created by its first text, with its account's tag: in one event, as the
    /// contacts stage creates one now, or (`created_then_tagged`) as it did before, with a
    /// `ContactTagged` after the creation.
    fn contact(&mut self, phone: &str, created_then_tagged: bool) -> Uuid {
        let contact_id = contact_id_for(&self.location, &PhoneNumber::parse(phone).unwrap());
        let tag = "whatsnap-account-front";
        self.push(
            AggregateKind::Contact,
            contact_id,
            ContactCreated {
                contact_id,
                phone: phone.into(),
                name: Some("Someone".into()),
                first_account_id: Some(self.account),
                platform: None,
                tag: (!created_then_tagged).then(|| tag.into()),
            },
        );
        if created_then_tagged {
            self.push(
                AggregateKind::Contact,
                contact_id,
                ContactTagged {
                    contact_id,
                    tag: tag.into(),
                    source: TagSource::Account,
                },
            );
        }
        self.push(
            AggregateKind::Assignment,
            contact_id,
            AssignmentSkipped {
                contact_id,
                account_id: Some(self.account),
                reason: "nobody is available".into(),
                candidates: Vec::new(),
                trigger: None,
            },
        );
        contact_id
    }

    /// A text from `phone`, received with id `message_id`.
    fn text(&mut self, phone: &str, message_id: Uuid, body: &str) {
        self.texts += 1;
        let received_at =
            chrono::DateTime::from_timestamp(1_796_000_000 + self.texts * 37 % 100, 0).unwrap();
        self.push(
            AggregateKind::Message,
            message_id,
            InboundMessageReceived {
                message_id,
                account_id: self.account,
                provider_message_id: format!("SM{}", message_id.simple()),
                from: phone.into(),
                to: Some("+15005550006".into()),
                body: body.into(),
                sender_name: None,
                received_at,
                attachments: Vec::new(),
                from_me: false,
                sender_lid: None,
            },
        );
    }

    fn posted(&mut self, message_id: Uuid) {
        self.push(
            AggregateKind::Message,
            message_id,
            GhlMessagePosted {
                message_id,
                ghl_message_id: format!("ghl-{}", message_id.simple()),
                ghl_conversation_id: Some("conv".into()),
            },
        );
    }

    async fn append_wave(&self, store: &dyn EventStore, wave: usize) -> u64 {
        let mut head = 0;
        for (stream, event) in &self.waves[wave] {
            head = store
                .append(
                    stream,
                    ExpectedVersion::Any,
                    vec![NewEvent::new(event, EventMetadata::new_correlation())],
                )
                .await
                .unwrap()
                .position;
        }
        head
    }
}

/// Three waves of a location's traffic, with the cases where order decides.
fn traffic() -> Log {
    let mut log = Log::new();
    let (ana, ben, cid) = ("+5511999990001", "+5511999990002", "+5511999990003");
    let ana_id = log.contact(ana, false);
    let ben_id = log.contact(ben, true);
    let mut messages = Vec::new();
    for n in 0..40 {
        let message_id = Uuid::now_v7();
        log.text(if n % 2 == 0 { ana } else { ben }, message_id, "hello");
        // Most are posted at once, some in a later wave.
        if n % 3 != 0 {
            log.posted(message_id);
        }
        messages.push(message_id);
    }
    // The account's own events between its messages.
    log.push(
        AggregateKind::Account,
        log.account,
        AccountConnected {
            account_id: log.account,
            phone_number: Some("+15005550007".into()),
            display_name: None,
        },
    );
    for n in 0..5 {
        let message_id = Uuid::now_v7();
        log.text(if n % 2 == 0 { ana } else { ben }, message_id, "again");
        log.posted(message_id);
    }
    log.push(
        AggregateKind::Ghl,
        ben_id,
        GhlContactLinked {
            contact_id: ben_id,
            ghl_contact_id: "ghlBen".into(),
            tags: Vec::new(),
            synced_through: 0,
            observed: None,
        },
    );
    let reply = Uuid::now_v7();
    log.push(
        AggregateKind::Message,
        reply,
        OutboundMessageRequested {
            message_id: reply,
            contact_id: ana_id,
            ghl_message_id: Some("ghlReply".into()),
            ghl_user_id: None,
            body: "on its way".into(),
            attachments: Vec::new(),
            to: Some(ana.into()),
            ghl_contact_id: None,
        },
    );

    log.next_wave();
    // Posted now, received in the wave before: their contacts come from the read model.
    for message_id in messages.iter().step_by(3) {
        log.posted(*message_id);
    }
    log.push(
        AggregateKind::Message,
        reply,
        MessageDelivered {
            message_id: reply,
            provider_message_id: Some("SMreply".into()),
        },
    );
    // Posted before it was received; received twice (queued again by the second).
    let early = Uuid::now_v7();
    log.posted(early);
    log.text(ben, early, "early");
    let twice = Uuid::now_v7();
    log.text(ben, twice, "twice");
    log.posted(twice);
    log.text(ben, twice, "twice");
    // A GHL failure given up on, naming a message of this batch.
    let failed = Uuid::now_v7();
    log.text(ana, failed, "will fail");
    log.push(
        AggregateKind::Message,
        failed,
        GhlSyncFailed {
            operation: "message".into(),
            subject_id: Some(failed),
            reason: "GHL refused it".into(),
            http_status: Some(422),
            attempt: 5,
            final_attempt: true,
        },
    );
    // Ana erased between her messages: those before show as erased, the one after does not.
    let before = Uuid::now_v7();
    log.text(ana, before, "before the erasure");
    log.push(
        AggregateKind::Contact,
        ana_id,
        ContactErased {
            contact_id: ana_id,
            requested_by: Some("dpo".into()),
        },
    );
    log.text(ana, Uuid::now_v7(), "after the erasure");

    log.next_wave();
    let cid_id = log.contact(cid, false);
    for _ in 0..30 {
        let message_id = Uuid::now_v7();
        log.text(cid, message_id, "more");
        log.posted(message_id);
    }
    log.push(
        AggregateKind::Contact,
        cid_id,
        ContactErased {
            contact_id: cid_id,
            requested_by: None,
        },
    );
    log
}

/// Applies `log` wave by wave with `projection` (together) and with the same projection one
/// event at a time, each into its own read-model database; returns the two dumps.
async fn both_ways(
    projection: Arc<dyn Projection<Any>>,
    databases: [AnyPool; 2],
    queries: &[&str],
) -> (Vec<String>, Vec<String>) {
    let sqlite = TestSqlite::new().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(sqlite.store().await.unwrap());
    let log = traffic();
    let [together, one_at_a_time] = databases;
    let runners = [
        Arc::new(ProjectionRunner::new(
            store.clone(),
            together.clone(),
            projection.clone(),
        )),
        Arc::new(ProjectionRunner::new(
            store.clone(),
            one_at_a_time.clone(),
            Arc::new(OneAtATime(projection)),
        )),
    ];
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for runner in &runners {
        let runner = runner.clone();
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            runner.run_until(stop).await.unwrap();
        }));
    }
    for wave in 0..log.waves.len() {
        let head = log.append_wave(store.as_ref(), wave).await;
        for runner in &runners {
            let mut progress = runner.progress();
            progress.wait_for(|at| *at >= head).await.unwrap();
        }
    }
    stop.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    (
        dump(&together, queries).await,
        dump(&one_at_a_time, queries).await,
    )
}

const TIMELINE: &[&str] = &[
    "SELECT contact_id || '|' || CAST(position AS TEXT) || '|' || event_type || '|' || summary FROM contact_timeline",
    "SELECT message_id || '|' || contact_id FROM timeline_messages",
];

const GHL_QUEUE: &[&str] = &[
    "SELECT kind || '|' || subject_id || '|' || location_id || '|' || CAST(position AS TEXT) FROM ghl_pending",
    "SELECT message_id || '|' || contact_id || '|' || direction || '|' || body || '|' || attachments || '|' || at || '|' || COALESCE(ghl_message_id, '-') || '|' || COALESCE(status, '-') FROM ghl_messages",
    "SELECT contact_id || '|' || phone || '|' || COALESCE(name, '-') || '|' || tags || '|' || COALESCE(ghl_contact_id, '-') FROM ghl_contacts",
    "SELECT kind || '|' || subject_id || '|' || reason FROM ghl_set_aside",
];

async fn sqlite_pair() -> ([AnyPool; 2], [TestSqlite; 2]) {
    sqlx::any::install_default_drivers();
    let files = [TestSqlite::new().unwrap(), TestSqlite::new().unwrap()];
    let mut pools = Vec::new();
    for file in &files {
        let url = format!("sqlite://{}?mode=rwc", file.config.path.display());
        pools.push(AnyPool::connect(&url).await.unwrap());
    }
    (pools.try_into().unwrap(), files)
}

async fn postgres_pair() -> ([AnyPool; 2], [TestPostgres; 2]) {
    sqlx::any::install_default_drivers();
    let schemas = [
        TestPostgres::new().await.unwrap(),
        TestPostgres::new().await.unwrap(),
    ];
    let mut pools = Vec::new();
    for schema in &schemas {
        pools.push(AnyPool::connect(&schema.url_with_schema()).await.unwrap());
    }
    (pools.try_into().unwrap(), schemas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_applied_in_batches_is_the_timeline_applied_event_by_event_sqlite() {
    let (pools, _files) = sqlite_pair().await;
    let projection = Arc::new(whatsnap_gateway::TimelineProjection);
    let (together, one_by_one) = both_ways(projection, pools, TIMELINE).await;
    assert_eq!(together, one_by_one);
    let erased = together
        .iter()
        .filter(|l| l.contains("message received from [erased]"))
        .count();
    assert!(
        erased > 20,
        "the erasure did not reach the timeline: {together:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_applied_in_batches_is_the_timeline_applied_event_by_event_postgres() {
    let (pools, _schemas) = postgres_pair().await;
    let projection = Arc::new(whatsnap_gateway::TimelineProjection);
    let (together, one_by_one) = both_ways(projection, pools, TIMELINE).await;
    assert_eq!(together, one_by_one);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ghl_queue_applied_in_batches_is_the_queue_applied_event_by_event_sqlite() {
    let (pools, _files) = sqlite_pair().await;
    let projection = Arc::new(whatsnap_ghl_sync::PendingWork::default());
    let (together, one_by_one) = both_ways(projection, pools, GHL_QUEUE).await;
    assert_eq!(together, one_by_one);
    // Still queued: the text posted before it was received, the one received again after it
    // was posted, and Ana's text after her erasure; not the one given up on.
    let queued: Vec<_> = together
        .iter()
        .filter(|l| l.starts_with("message|") && l.contains(&format!("|{LOCATION}|")))
        .collect();
    assert_eq!(queued.len(), 3, "{together:#?}");
    // Each contact carries its account's tag, whether its creation carried it (Ana, Cid) or a
    // `ContactTagged` after it did (Ben).
    let tagged = together
        .iter()
        .filter(|l| l.contains(r#"|["whatsnap-account-front"]|"#))
        .count();
    assert_eq!(tagged, 3, "{together:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ghl_queue_applied_in_batches_is_the_queue_applied_event_by_event_postgres() {
    let (pools, _schemas) = postgres_pair().await;
    let projection = Arc::new(whatsnap_ghl_sync::PendingWork::default());
    let (together, one_by_one) = both_ways(projection, pools, GHL_QUEUE).await;
    assert_eq!(together, one_by_one);
}

const TRAFFIC: &[&str] = &[
    "SELECT location_id || '|' || account_id || '|' || day || '|' || CAST(received AS TEXT) || '|' || CAST(sent AS TEXT) || '|' || CAST(failed AS TEXT) FROM traffic_daily",
];

const ACCOUNTS: &[&str] = &[
    "SELECT account_id || '|' || status || '|' || COALESCE(phone_number, '-') || '|' || COALESCE(CAST(last_message_at_ms AS TEXT), '-') FROM session_accounts",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_counted_in_batches_is_traffic_counted_event_by_event_sqlite() {
    let (pools, _files) = sqlite_pair().await;
    let projection = Arc::new(whatsnap_gateway::TrafficProjection);
    let (together, one_by_one) = both_ways(projection, pools, TRAFFIC).await;
    assert_eq!(together, one_by_one);
    // Every text of the log is counted once, on its account's row.
    let received: i64 = together[1..]
        .iter()
        .map(|row| row.split('|').nth(3).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(received, traffic().texts, "{together:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_counted_in_batches_is_traffic_counted_event_by_event_postgres() {
    let (pools, _schemas) = postgres_pair().await;
    let projection = Arc::new(whatsnap_gateway::TrafficProjection);
    let (together, one_by_one) = both_ways(projection, pools, TRAFFIC).await;
    assert_eq!(together, one_by_one);
}

/// The latest of the log's texts, as `last_message_at_ms` holds it.
fn latest_text_ms(log: &Log) -> i64 {
    log.waves
        .iter()
        .flatten()
        .filter_map(|(_, event)| match event {
            Event::InboundMessageReceived(e) => Some(e.received_at.timestamp_millis()),
            _ => None,
        })
        .max()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_applied_in_batches_are_accounts_applied_event_by_event_sqlite() {
    let (pools, _files) = sqlite_pair().await;
    let projection = Arc::new(whatsnap_session::AccountsProjection);
    let (together, one_by_one) = both_ways(projection, pools, ACCOUNTS).await;
    assert_eq!(together, one_by_one);
    // The account connected with its number; its last message the latest of the texts' dates,
    // which are not in the log's order.
    let expected = format!("|connected|+15005550007|{}", latest_text_ms(&traffic()));
    assert!(together[1].ends_with(&expected), "{together:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_applied_in_batches_are_accounts_applied_event_by_event_postgres() {
    let (pools, _schemas) = postgres_pair().await;
    let projection = Arc::new(whatsnap_session::AccountsProjection);
    let (together, one_by_one) = both_ways(projection, pools, ACCOUNTS).await;
    assert_eq!(together, one_by_one);
}
