//! The sealing store over a real SQLite event store: what the log holds, what readers see, and
//! what an erasure changes.

use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;
use whatsnap_events::{
    AggregateKind, Event, EventMetadata, InboundMessageReceived, LocationId, NewEvent, PhoneNumber,
    RecordedEvent, StreamId, contact_id_for,
};
use whatsnap_eventstore::sqlite::{SqliteConfig, SqliteEventStore};
use whatsnap_eventstore::{EventStore, ExpectedVersion, SubscribeFrom};
use whatsnap_pii::{ContactKeys, ERASED, SealingStore};
use whatsnap_secrets::SecretKey;

struct Given {
    _dir: tempfile::TempDir,
    raw: Arc<dyn EventStore>,
    sealing: SealingStore,
    keys: Arc<ContactKeys>,
    location: LocationId,
}

async fn given() -> Given {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("whatsnap.db");
    let raw: Arc<dyn EventStore> = Arc::new(
        SqliteEventStore::open(&SqliteConfig::new(&path))
            .await
            .unwrap(),
    );
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let master = SecretKey::from_base64(&SecretKey::generate_base64()).unwrap();
    let keys = Arc::new(ContactKeys::open(db, master).await.unwrap());
    Given {
        sealing: SealingStore::new(raw.clone(), keys.clone()),
        raw,
        keys,
        _dir: dir,
        location: LocationId::parse("loc").unwrap(),
    }
}

fn text(from: &str, body: &str) -> Event {
    Event::from(InboundMessageReceived {
        message_id: Uuid::now_v7(),
        account_id: Uuid::nil(),
        provider_message_id: Uuid::now_v7().to_string(),
        from: from.into(),
        to: Some("+15005550006".into()),
        body: body.into(),
        sender_name: Some("Ana Lima".into()),
        received_at: Utc::now(),
        attachments: Vec::new(),
        from_me: false,
        sender_lid: None,
    })
}

impl Given {
    async fn record(&self, store: &dyn EventStore, event: &Event) -> StreamId {
        let stream = StreamId::for_uuid(
            self.location.clone(),
            AggregateKind::Message,
            Uuid::now_v7(),
        );
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::new(event, EventMetadata::new_correlation())],
            )
            .await
            .unwrap();
        stream
    }

    fn contact(&self, phone: &str) -> Uuid {
        contact_id_for(&self.location, &PhoneNumber::parse(phone).unwrap())
    }
}

fn body(event: &RecordedEvent) -> (String, String, Option<String>) {
    match event.decode().unwrap() {
        Event::InboundMessageReceived(e) => (e.from, e.body, e.sender_name),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_message_is_sealed_in_the_log_and_open_to_readers_until_its_contact_is_erased() {
    let given = given().await;
    let ana = given
        .record(&given.sealing, &text("+14155550123", "the blue sofa"))
        .await;
    let ben = given
        .record(&given.sealing, &text("+14155550177", "on Saturday"))
        .await;

    let stored = given.raw.read_all(0, 10).await.unwrap();
    for event in &stored {
        let raw = String::from_utf8_lossy(&event.payload);
        for clear in [
            "4155550123",
            "4155550177",
            "blue sofa",
            "Saturday",
            "Ana Lima",
        ] {
            assert!(!raw.contains(clear), "{clear} in {raw}");
        }
        assert!(
            raw.contains("+15005550006"),
            "the account's own number stays"
        );
    }
    let read = given.sealing.read_stream(&ana, 1, 10).await.unwrap();
    assert_eq!(
        body(&read[0]),
        (
            "+14155550123".into(),
            "the blue sofa".into(),
            Some("Ana Lima".into())
        )
    );

    given
        .keys
        .erase(&given.location, given.contact("+14155550123"))
        .await
        .unwrap();
    let read = given.sealing.read_stream(&ana, 1, 10).await.unwrap();
    assert_eq!(
        body(&read[0]),
        (ERASED.into(), ERASED.into(), Some(ERASED.into()))
    );
    let other = given.sealing.read_stream(&ben, 1, 10).await.unwrap();
    assert_eq!(body(&other[0]).1, "on Saturday", "other contacts untouched");
    // A replay from zero sees the same.
    let mut subscription = given
        .sealing
        .subscribe("replay", SubscribeFrom::After(0))
        .await
        .unwrap();
    let replayed = subscription.next_batch(10).await.unwrap();
    let bodies: Vec<String> = replayed.iter().map(|e| body(e).1).collect();
    assert_eq!(bodies, [ERASED, "on Saturday"]);

    // What an erased contact sends later is not kept either.
    let later = given
        .record(&given.sealing, &text("+14155550123", "hello again"))
        .await;
    let raw = given.raw.read_stream(&later, 1, 1).await.unwrap();
    assert!(!String::from_utf8_lossy(&raw[0].payload).contains("hello again"));
    assert_eq!(
        body(&given.sealing.read_stream(&later, 1, 1).await.unwrap()[0]).1,
        ERASED
    );
}

#[tokio::test]
async fn events_written_before_sealing_read_as_they_are() {
    let given = given().await;
    let old = given
        .record(given.raw.as_ref(), &text("+14155550123", "from before"))
        .await;
    let read = given.sealing.read_stream(&old, 1, 1).await.unwrap();
    assert_eq!(body(&read[0]).1, "from before");
}

/// Keys an older whatsnap sealed under the secret key itself are moved under the personal data
/// key by a process that holds both; a process given the personal data key alone (the gateway)
/// then opens what they sealed, and until then says which key it would need.
#[tokio::test]
async fn keys_sealed_under_the_secret_key_are_resealed_under_the_personal_data_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("whatsnap.db");
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    let secret = SecretKey::from_base64(&SecretKey::generate_base64()).unwrap();
    let location = LocationId::parse("loc").unwrap();
    // More contacts than one page of the re-sealing, one of them erased.
    let contacts: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    let before = ContactKeys::open(db.clone(), secret.clone()).await.unwrap();
    for contact in &contacts {
        before.for_sealing(&location, *contact).await.unwrap();
    }
    let sealed = before
        .seal_text(&location, contacts[7], "Ana Lima")
        .await
        .unwrap();
    before.erase(&location, contacts[3]).await.unwrap();

    let personal = secret.personal_data();
    let gateway = ContactKeys::open(db.clone(), personal.clone())
        .await
        .unwrap();
    let refused = gateway
        .open_text(&location, &sealed)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("WHATSNAP_SECRET_KEY"), "{refused}");

    let session = ContactKeys::open(db.clone(), personal.clone())
        .await
        .unwrap();
    assert_eq!(session.reseal_from(&secret).await.unwrap(), 19);
    assert_eq!(session.reseal_from(&secret).await.unwrap(), 0, "once");

    let gateway = ContactKeys::open(db, personal).await.unwrap();
    assert_eq!(
        gateway.open_text(&location, &sealed).await.unwrap(),
        "Ana Lima"
    );
    let erased = gateway
        .seal_text(&location, contacts[3], "Bruno")
        .await
        .unwrap();
    assert_eq!(erased, ERASED);
    // A key made from now on is sealed under the personal data key.
    let new_contact = Uuid::now_v7();
    let text = gateway
        .seal_text(&location, new_contact, "Carla")
        .await
        .unwrap();
    assert_eq!(text, "Carla", "no key yet: seal_text never makes one");
    gateway.for_sealing(&location, new_contact).await.unwrap();
    assert_eq!(session.reseal_from(&secret).await.unwrap(), 0);
}

#[tokio::test]
async fn a_key_made_by_one_process_opens_what_it_sealed_in_another() {
    let dir = tempfile::tempdir().unwrap();
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("keys.db").display()
    ))
    .await
    .unwrap();
    let master = SecretKey::generate_base64();
    let open = async || {
        ContactKeys::open(db.clone(), SecretKey::from_base64(&master).unwrap())
            .await
            .unwrap()
    };
    let (gateway, reader) = (open().await, open().await);
    let location = LocationId::parse("loc").unwrap();
    let contact = Uuid::now_v7();
    gateway.for_sealing(&location, contact).await.unwrap();
    let sealed = gateway
        .seal_text(&location, contact, "the blue sofa")
        .await
        .unwrap();
    assert_ne!(sealed, "the blue sofa");
    assert_eq!(
        reader.open_text(&location, &sealed).await.unwrap(),
        "the blue sofa"
    );
    // The other process, asking for the contact's key to seal with, finds the same one.
    reader.for_sealing(&location, contact).await.unwrap();
    let again = reader
        .seal_text(&location, contact, "on Saturday")
        .await
        .unwrap();
    assert_eq!(
        gateway.open_text(&location, &again).await.unwrap(),
        "on Saturday"
    );
}
