//! The decider against a real event store: decisions follow the rules in turn, a second decider
//! (a restart) decides nothing twice, the same log replayed into a fresh store decides the same,
//! and `simulate` tells which decisions other rules would change.

use std::sync::Arc;

use uuid::Uuid;
use whatsnap_assignment::decider::Decider;
use whatsnap_assignment::{engine, simulate};
use whatsnap_events::{
    AccountAdded, AccountKind, AggregateKind, AssignmentRulesChanged, ContactCreated, Event,
    EventMetadata, GhlUserSynced, LocationId, NewEvent, RecordedEvent, StreamId,
};
use whatsnap_eventstore::{EventStore, ExpectedVersion};
use whatsnap_testkit::{TestSqlite, eventually};

const CONTACTS: usize = 20;

fn location() -> LocationId {
    LocationId::parse("locDecider").unwrap()
}

async fn append(store: &dyn EventStore, stream: StreamId, event: Event) {
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::new(&event, EventMetadata::new_correlation())],
        )
        .await
        .unwrap();
}

/// An account with round-robin rules over `users`, the users, and `CONTACTS` new contacts.
async fn history(store: &dyn EventStore, account: Uuid, users: &[&str]) -> Vec<Uuid> {
    let location = location();
    append(
        store,
        StreamId::for_uuid(location.clone(), AggregateKind::Account, account),
        Event::from(AccountAdded {
            account_id: account,
            kind: AccountKind::Twilio,
            name: "Sales".into(),
            tag: "whatsnap-account-sales".into(),
            phone_number: None,
            twilio: None,
            engine: None,
            settings: None,
        }),
    )
    .await;
    for user in ["u_ana", "u_ben", "u_cleo"] {
        append(
            store,
            StreamId::new(location.clone(), AggregateKind::Ghl, "users").unwrap(),
            Event::from(GhlUserSynced {
                user_id: user.into(),
                name: user.into(),
                email: None,
                role: Some("user".into()),
                deleted: false,
            }),
        )
        .await;
    }
    append(
        store,
        StreamId::new(location.clone(), AggregateKind::Assignment, "rules").unwrap(),
        Event::from(AssignmentRulesChanged {
            account_id: Some(account),
            rules: serde_json::json!({"rules": [{"strategy": "round_robin", "users": users}]}),
        }),
    )
    .await;
    let mut contacts = Vec::new();
    for n in 0..CONTACTS {
        contacts.push(new_contact(store, account, n).await);
    }
    contacts
}

/// The `n`th new contact of `account`.
async fn new_contact(store: &dyn EventStore, account: Uuid, n: usize) -> Uuid {
    let location = location();
    let phone = whatsnap_events::PhoneNumber::parse(&format!("+1415555{n:04}")).unwrap();
    let contact_id = whatsnap_events::contact_id_for(&location, &phone);
    append(
        store,
        StreamId::for_uuid(location.clone(), AggregateKind::Contact, contact_id),
        Event::from(ContactCreated {
            contact_id,
            phone: format!("+1415555{n:04}"),
            name: None,
            first_account_id: Some(account),
            platform: Some(AccountKind::Twilio),
            tag: None,
        }),
    )
    .await;
    contact_id
}

async fn all(store: &dyn EventStore) -> Vec<RecordedEvent> {
    store.read_all(0, 100_000).await.unwrap()
}

/// Who each contact was assigned to, in the order of the contacts.
fn owners(events: &[RecordedEvent], contacts: &[Uuid]) -> Vec<String> {
    contacts
        .iter()
        .map(|contact| {
            events
                .iter()
                .filter_map(|e| match e.decode() {
                    Ok(Event::ContactAssigned(a)) if a.contact_id == *contact => Some(a.user_id),
                    _ => None,
                })
                .next()
                .unwrap_or_default()
        })
        .collect()
}

async fn decided(store: &Arc<dyn EventStore>, count: usize) -> Vec<RecordedEvent> {
    let store = store.clone();
    eventually(format!("{count} decisions"), async || {
        let events = all(store.as_ref()).await;
        let decisions = events
            .iter()
            .filter(|e| e.event_type == "ContactAssigned")
            .count();
        (decisions >= count).then_some(events)
    })
    .await
}

fn run(store: &Arc<dyn EventStore>) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let decider = Decider::new(store.clone());
    tokio::spawn(async move {
        decider
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_take_turns_survive_restarts_and_replay_the_same() {
    let sqlite = TestSqlite::new().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(sqlite.store().await.unwrap());
    let account = Uuid::now_v7();
    let contacts = history(store.as_ref(), account, &["u_ana", "u_ben"]).await;

    let stop = run(&store);
    let events = decided(&store, CONTACTS).await;
    let first = owners(&events, &contacts);
    let expected: Vec<String> = (0..CONTACTS)
        .map(|n| if n % 2 == 0 { "u_ana" } else { "u_ben" }.to_owned())
        .collect();
    assert_eq!(first, expected, "round-robin takes turns");
    let _ = stop.send(());

    // A restart reads the whole log again and decides nothing twice: once it has decided a
    // contact that came after them (it reads the log in order), the old ones were seen.
    let stop = run(&store);
    let latecomer = new_contact(store.as_ref(), account, CONTACTS).await;
    let recorded = decided(&store, CONTACTS + 1).await;
    assert_eq!(
        recorded
            .iter()
            .filter(|e| e.event_type == "ContactAssigned")
            .count(),
        CONTACTS + 1,
        "a restart decided again"
    );
    let _ = stop.send(());
    // The rest of the story is about the first contacts only.
    let latecomer_streams = [
        StreamId::for_uuid(location(), AggregateKind::Contact, latecomer),
        StreamId::for_uuid(location(), AggregateKind::Assignment, latecomer),
    ];
    let again: Vec<RecordedEvent> = recorded
        .iter()
        .filter(|e| !latecomer_streams.contains(&e.stream))
        .cloned()
        .collect();

    // The same inputs in a fresh store give the same decisions.
    let fresh = TestSqlite::new().unwrap();
    let replay: Arc<dyn EventStore> = Arc::new(fresh.store().await.unwrap());
    for event in again.iter().filter(|e| e.event_type != "ContactAssigned") {
        let decoded = event.decode().unwrap();
        append(replay.as_ref(), event.stream.clone(), decoded).await;
    }
    let stop = run(&replay);
    let replayed = decided(&replay, CONTACTS).await;
    assert_eq!(
        owners(&replayed, &contacts),
        first,
        "a replay decided differently"
    );
    let _ = stop.send(());

    // Simulating a third user in the rotation changes exactly the turns that move to her.
    let rules = engine::parse_rules(&serde_json::json!({
        "rules": [{"strategy": "round_robin", "users": ["u_ana", "u_ben", "u_cleo"]}]
    }))
    .unwrap();
    let simulated = simulate::simulate(&again, &location(), Some(account), rules, None);
    assert_eq!(simulated.decisions, CONTACTS as u64);
    let counts: Vec<(String, (u64, u64))> = simulated.per_user.clone().into_iter().collect();
    assert_eq!(
        counts,
        [
            ("u_ana".to_owned(), (10, 7)),
            ("u_ben".to_owned(), (10, 7)),
            ("u_cleo".to_owned(), (0, 6)),
        ]
    );
    // Turns: recorded a b a b a b …, simulated a b c a b c …: positions differ where they do.
    let expected_changes = (0..CONTACTS)
        .filter(|n| {
            let recorded = if n % 2 == 0 { "u_ana" } else { "u_ben" };
            let simulated = ["u_ana", "u_ben", "u_cleo"][n % 3];
            recorded != simulated
        })
        .count();
    assert_eq!(simulated.changes.len(), expected_changes);
    assert!(
        simulated
            .changes
            .iter()
            .all(|c| c.trigger == "ContactCreated")
    );
    // The simulation touched nothing.
    assert_eq!(all(store.as_ref()).await.len(), recorded.len());
}

/// An owner who has not answered within the account's limit loses the contact to the next
/// available user; a reply in time keeps it.
#[tokio::test]
async fn a_silent_owner_is_replaced_and_one_who_replied_is_not() {
    use whatsnap_assignment::model::LocationModel;
    use whatsnap_events::{ContactAssigned, InboundMessageReceived, OutboundMessageRequested};
    let sqlite = TestSqlite::new().unwrap();
    let store = sqlite.store().await.unwrap();
    let location = location();
    let account = Uuid::now_v7();
    history(&store, account, &["u_ana"]).await;
    append(
        &store,
        StreamId::new(location.clone(), AggregateKind::Assignment, "rules").unwrap(),
        Event::from(AssignmentRulesChanged {
            account_id: Some(account),
            rules: serde_json::json!({
                "reassign_after_silence_minutes": 5,
                "rules": [{"strategy": "user", "user": "u_ana", "backup": ["u_ben"]}]
            }),
        }),
    )
    .await;
    let events = all(&store).await;
    let contacts: Vec<Uuid> = events
        .iter()
        .filter_map(|e| match e.decode() {
            Ok(Event::ContactCreated(c)) => Some(c.contact_id),
            _ => None,
        })
        .take(2)
        .collect();
    for (n, contact_id) in contacts.iter().enumerate() {
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Assignment, *contact_id);
        append(
            &store,
            stream,
            Event::from(ContactAssigned {
                contact_id: *contact_id,
                account_id: Some(account),
                user_id: "u_ana".into(),
                rule: "user#1".into(),
                reason: "the rule names u_ana".into(),
                candidates: vec![],
                trigger: None,
            }),
        )
        .await;
        let message = Uuid::now_v7();
        append(
            &store,
            StreamId::for_uuid(location.clone(), AggregateKind::Message, message),
            Event::from(InboundMessageReceived {
                message_id: message,
                account_id: account,
                provider_message_id: format!("SM{n}"),
                from: format!("+1415555{n:04}"),
                to: None,
                body: "anyone there?".into(),
                sender_name: None,
                received_at: chrono::Utc::now(),
                attachments: vec![],
                from_me: false,
                sender_lid: None,
            }),
        )
        .await;
    }
    // Ana answers the second contact only.
    let reply = Uuid::now_v7();
    append(
        &store,
        StreamId::for_uuid(location.clone(), AggregateKind::Message, reply),
        Event::from(OutboundMessageRequested {
            message_id: reply,
            contact_id: contacts[1],
            ghl_message_id: Some("g1".into()),
            ghl_user_id: Some("u_ana".into()),
            body: "yes!".into(),
            attachments: vec![],
            to: None,
            ghl_contact_id: None,
        }),
    )
    .await;
    let mut model = LocationModel::default();
    for recorded in all(&store).await {
        model.ingest(&recorded, &recorded.decode().unwrap(), None);
    }
    let now = chrono::Utc::now();
    assert!(
        model.silent(now + chrono::Duration::minutes(4)).is_empty(),
        "within the limit"
    );
    let silent = model.silent(now + chrono::Duration::minutes(6));
    assert_eq!(silent.len(), 1, "only the unanswered contact: {silent:?}");
    let situation = &silent[0].situation;
    assert_eq!(situation.contact_id, contacts[0]);
    match model.decide(situation) {
        engine::Decision::Assign {
            user_id, reason, ..
        } => {
            assert_eq!(user_id.as_str(), "u_ben");
            assert!(reason.contains("has not replied"), "{reason}");
        }
        other => panic!("expected u_ben, got {other:?}"),
    }
}

/// Adds an account of `kind` to the location.
async fn account(store: &dyn EventStore, account: Uuid, kind: AccountKind, name: &str) {
    append(
        store,
        StreamId::for_uuid(location(), AggregateKind::Account, account),
        Event::from(AccountAdded {
            account_id: account,
            kind,
            name: name.into(),
            tag: format!("whatsnap-account-{name}"),
            phone_number: None,
            twilio: None,
            engine: None,
            settings: None,
        }),
    )
    .await;
}

/// A message from the `n`th contact's phone to `account`.
async fn message(store: &dyn EventStore, account: Uuid, n: usize) {
    let message_id = Uuid::now_v7();
    append(
        store,
        StreamId::for_uuid(location(), AggregateKind::Message, message_id),
        Event::from(whatsnap_events::InboundMessageReceived {
            message_id,
            account_id: account,
            provider_message_id: Uuid::now_v7().to_string(),
            from: format!("+1415555{n:04}"),
            to: None,
            body: "hello".into(),
            sender_name: None,
            received_at: chrono::Utc::now(),
            attachments: Vec::new(),
            from_me: false,
            sender_lid: None,
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_channel_a_contact_has_an_owner_on_whatsapp_and_another_on_sms() {
    let sqlite = TestSqlite::new().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(sqlite.store().await.unwrap());
    let (whatsapp, whatsapp_2, sms) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    account(store.as_ref(), whatsapp, AccountKind::Whatsapp, "wa").await;
    account(store.as_ref(), whatsapp_2, AccountKind::Whatsapp, "wa2").await;
    account(store.as_ref(), sms, AccountKind::Twilio, "sms").await;
    for user in ["u_ana", "u_ben"] {
        append(
            store.as_ref(),
            StreamId::new(location(), AggregateKind::Ghl, "users").unwrap(),
            Event::from(GhlUserSynced {
                user_id: user.into(),
                name: user.into(),
                email: None,
                role: Some("user".into()),
                deleted: false,
            }),
        )
        .await;
    }
    append(
        store.as_ref(),
        StreamId::new(location(), AggregateKind::Assignment, "rules_location").unwrap(),
        Event::from(AssignmentRulesChanged {
            account_id: None,
            rules: serde_json::json!({ "multi_touch": "per_channel",
                "rules": [ { "strategy": "round_robin", "users": ["u_ana", "u_ben"] } ] }),
        }),
    )
    .await;
    let stop = run(&store);

    // The contact writes on WhatsApp (Ana), then on the Twilio number (Ben: another channel),
    // then on a second WhatsApp account (Ana keeps it: same channel, nothing to record).
    let contact = new_contact_of(store.as_ref(), whatsapp, 0).await;
    decided(&store, 1).await;
    message(store.as_ref(), sms, 0).await;
    decided(&store, 2).await;
    message(store.as_ref(), whatsapp_2, 0).await;
    // A later contact's decision shows the decider went past that message.
    let later = new_contact_of(store.as_ref(), sms, 1).await;
    let events = decided(&store, 3).await;
    let _ = stop.send(());

    let decisions: Vec<(Option<Uuid>, String)> = events
        .iter()
        .filter_map(|e| match e.decode() {
            Ok(Event::ContactAssigned(a)) if a.contact_id == contact => {
                Some((a.account_id, a.user_id))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        decisions,
        [
            (Some(whatsapp), "u_ana".to_owned()),
            (Some(sms), "u_ben".to_owned())
        ]
    );
    assert_eq!(owners(&events, &[later]), ["u_ana"]);
}

/// The `n`th new contact, created by its first message, to `account`.
async fn new_contact_of(store: &dyn EventStore, account: Uuid, n: usize) -> Uuid {
    message(store, account, n).await;
    new_contact(store, account, n).await
}

/// The event store, watched: the positions every read of the log started after.
struct Watched {
    inner: Arc<dyn EventStore>,
    reads_after: std::sync::Mutex<Vec<u64>>,
}

#[async_trait::async_trait]
impl EventStore for Watched {
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
    ) -> whatsnap_eventstore::Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream, from_version, limit).await
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
    ) -> whatsnap_eventstore::Result<Vec<RecordedEvent>> {
        self.reads_after.lock().unwrap().push(after);
        self.inner.read_all(after, limit).await
    }

    async fn head_position(&self) -> whatsnap_eventstore::Result<u64> {
        self.inner.head_position().await
    }

    async fn subscribe(
        &self,
        name: &str,
        from: whatsnap_eventstore::SubscribeFrom,
    ) -> whatsnap_eventstore::Result<whatsnap_eventstore::Subscription> {
        if let whatsnap_eventstore::SubscribeFrom::AfterOwn(after) = from {
            self.reads_after.lock().unwrap().push(after);
        }
        self.inner.subscribe(name, from).await
    }
}

/// A read database in `dir`, as the embedded backend opens one.
async fn read_db(dir: &std::path::Path) -> whatsnap_rpc::ReadDb {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=rwc", dir.join("read.db").display());
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap()
}

/// A decider with its snapshots in `db`, run until the sender is used; the handle ends once
/// it has stopped (and saved its snapshot).
fn run_with_snapshots(
    store: Arc<dyn EventStore>,
    db: &whatsnap_rpc::ReadDb,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let decider = Decider::new(store).snapshots(whatsnap_assignment::snapshot::Snapshots::new(
        db.clone(),
        "assignment_decider",
    ));
    let handle = tokio::spawn(async move {
        decider
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, handle)
}

/// A restart starts from the snapshot taken when the decider stopped: it reads only the log
/// after it, and decides as if it had read the whole log (the rotation goes on where it was,
/// nothing is decided twice). A snapshot ahead of the log it is given is passed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_the_log_only_after_its_snapshot_and_decides_the_same() {
    let sqlite = TestSqlite::new().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(sqlite.store().await.unwrap());
    let db = read_db(sqlite.dir.path()).await;
    let account = Uuid::now_v7();
    history(store.as_ref(), account, &["u_ana", "u_ben"]).await;
    // An odd number of decisions: the next turn is u_ben's, where a fresh model would say u_ana.
    new_contact(store.as_ref(), account, CONTACTS).await;
    let history_end = store.head_position().await.unwrap();

    let (stop, stopped) = run_with_snapshots(store.clone(), &db);
    decided(&store, CONTACTS + 1).await;
    let _ = stop.send(());
    stopped.await.unwrap();
    // The decider may stop before it has read back all of its own decisions: its snapshot is
    // where its model was, at least past the history it decided on.
    let head = store.head_position().await.unwrap();
    let snapshot_at =
        whatsnap_assignment::snapshot::Snapshots::new(db.clone(), "assignment_decider")
            .load(head)
            .await
            .expect("the stop saved a snapshot")
            .position;
    assert!(
        snapshot_at >= history_end,
        "the snapshot at {snapshot_at} is short of the history it decided on (up to {history_end})"
    );

    let watched = Arc::new(Watched {
        inner: store.clone(),
        reads_after: Default::default(),
    });
    let (stop, stopped) = run_with_snapshots(watched.clone(), &db);
    let latecomer = new_contact(store.as_ref(), account, CONTACTS + 1).await;
    let events = decided(&store, CONTACTS + 2).await;
    let _ = stop.send(());
    stopped.await.unwrap();
    assert_eq!(
        owners(&events, &[latecomer]),
        ["u_ben"],
        "the rotation did not go on from the snapshot"
    );
    let decisions = events
        .iter()
        .filter(|e| e.event_type == "ContactAssigned")
        .count();
    assert_eq!(decisions, CONTACTS + 2, "a restart decided again");
    let reads_after = watched.reads_after.lock().unwrap().clone();
    assert!(!reads_after.is_empty());
    assert!(
        reads_after.iter().all(|after| *after >= snapshot_at),
        "the restart read the log from {reads_after:?}, the snapshot is at {snapshot_at}"
    );

    // A new, empty log beside the old database: the snapshot is ahead of it, and passed over.
    let fresh = TestSqlite::new().unwrap();
    let new_log: Arc<dyn EventStore> = Arc::new(fresh.store().await.unwrap());
    let contacts = history(new_log.as_ref(), account, &["u_ana", "u_ben"]).await;
    let (stop, stopped) = run_with_snapshots(new_log.clone(), &db);
    let events = decided(&new_log, CONTACTS).await;
    let _ = stop.send(());
    stopped.await.unwrap();
    assert_eq!(owners(&events, &contacts[..2]), ["u_ana", "u_ben"]);
}
