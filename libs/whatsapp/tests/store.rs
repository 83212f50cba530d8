//! The device store in whatsnap's own database, on SQLite and PostgreSQL: it answers as the
//! crate's own in-memory backend does, it keeps a device across a reopening of the database (a
//! restart, another replica), accounts never see each other's keys, and nothing is stored in
//! clear.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use uuid::Uuid;
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::store::traits::{
    AppStateSyncKey, Backend, DeviceInfo, DeviceListRecord, DeviceStore, LidPnMappingEntry,
    MsgSecretEntry, ProtocolStore, SignalStore, TcTokenEntry,
};
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::store::InMemoryBackend;
use whatsnap_secrets::SecretKey;
use whatsnap_testkit::TestPostgres;
use whatsnap_whatsapp::SealedDeviceStore;

fn key() -> SecretKey {
    SecretKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap()
}

async fn connect(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap()
}

async fn migrated(url: &str) -> AnyPool {
    let db = connect(url).await;
    SealedDeviceStore::migrate(&db).await.unwrap();
    // Twice: every start runs it.
    SealedDeviceStore::migrate(&db).await.unwrap();
    db
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

fn lid_entry(lid: &str, phone: &str) -> LidPnMappingEntry {
    LidPnMappingEntry {
        lid: lid.into(),
        phone_number: phone.into(),
        created_at: 1_700_000_000,
        updated_at: 1_700_000_000,
        learning_source: "usync".into(),
    }
}

fn msg_secret(id: &str, secret: u8, expires_at: i64, message_ts: i64) -> MsgSecretEntry {
    MsgSecretEntry {
        chat: Arc::from("15557654321@s.whatsapp.net"),
        sender: Arc::from("15557654321@s.whatsapp.net"),
        msg_id: Arc::from(id),
        secret: [secret; 32],
        expires_at,
        message_ts,
    }
}

/// What a backend answered, in order.
#[derive(Default)]
struct Said(Vec<String>);

impl Said {
    fn say(&mut self, what: &str, answer: String) {
        self.0.push(format!("{what}: {answer}"));
    }
}

/// Identities and sessions.
async fn identities_and_sessions(store: &dyn Backend, said: &mut Said) {
    store.put_identity("15557654321.0", [1; 32]).await.unwrap();
    store
        .put_identities_batch(&[(Arc::from("100000099887766_1.0"), [2; 32])])
        .await
        .unwrap();
    said.say(
        "identity",
        format!("{:?}", store.load_identity("15557654321.0").await.unwrap()),
    );
    said.say(
        "identity lid",
        format!(
            "{:?}",
            store.load_identity("100000099887766_1.0").await.unwrap()
        ),
    );
    said.say(
        "no identity",
        format!("{:?}", store.load_identity("nobody.0").await.unwrap()),
    );
    store.delete_identity("15557654321.0").await.unwrap();
    said.say(
        "deleted identity",
        format!("{:?}", store.load_identity("15557654321.0").await.unwrap()),
    );

    store
        .put_session("15557654321.0", b"session one")
        .await
        .unwrap();
    store
        .put_sessions_batch(&[
            (
                Arc::from("15557654321.1"),
                Bytes::from_static(b"session two"),
            ),
            (
                Arc::from("15557654321.0"),
                Bytes::from_static(b"session one, ratcheted"),
            ),
        ])
        .await
        .unwrap();
    said.say(
        "session",
        format!("{:?}", store.get_session("15557654321.0").await.unwrap()),
    );
    said.say(
        "has session",
        format!("{:?}", store.has_session("15557654321.1").await.unwrap()),
    );
    store.delete_session("15557654321.1").await.unwrap();
    said.say(
        "deleted session",
        format!("{:?}", store.has_session("15557654321.1").await.unwrap()),
    );
}

/// Pre-keys, signed pre-keys and sender keys.
async fn pre_keys(store: &dyn Backend, said: &mut Said) {
    said.say(
        "no pre-keys",
        format!("{}", store.get_max_prekey_id().await.unwrap()),
    );
    store
        .store_prekeys_batch(
            &[
                (1, Bytes::from_static(b"pk1")),
                (2, Bytes::from_static(b"pk2")),
                (812, Bytes::from_static(b"pk812")),
            ],
            false,
        )
        .await
        .unwrap();
    store.store_prekey(3, b"pk3", true).await.unwrap();
    store.mark_prekeys_uploaded(&[1, 9]).await.unwrap();
    said.say(
        "pre-key",
        format!("{:?}", store.load_prekey(812).await.unwrap()),
    );
    said.say(
        "unmarked stays absent",
        format!("{:?}", store.load_prekey(9).await.unwrap()),
    );
    said.say(
        "pre-keys",
        format!(
            "{:?}",
            sorted(store.load_prekeys_batch(&[1, 2, 4]).await.unwrap())
        ),
    );
    said.say(
        "max pre-key",
        format!("{}", store.get_max_prekey_id().await.unwrap()),
    );
    store.remove_prekey(812).await.unwrap();
    said.say(
        "max after removal",
        format!("{}", store.get_max_prekey_id().await.unwrap()),
    );

    store.store_signed_prekey(1, b"spk1").await.unwrap();
    store.store_signed_prekey(2, b"spk2").await.unwrap();
    store.remove_signed_prekey(1).await.unwrap();
    said.say(
        "signed",
        format!("{:?}", store.load_signed_prekey(2).await.unwrap()),
    );
    said.say(
        "all signed",
        format!(
            "{:?}",
            sorted(store.load_all_signed_prekeys().await.unwrap())
        ),
    );

    store
        .put_sender_key("120363021033254949@g.us::15557654321.0", b"sk")
        .await
        .unwrap();
    said.say(
        "sender key",
        format!(
            "{:?}",
            store
                .get_sender_key("120363021033254949@g.us::15557654321.0")
                .await
                .unwrap()
        ),
    );
    store
        .delete_sender_key("120363021033254949@g.us::15557654321.0")
        .await
        .unwrap();
    said.say(
        "deleted sender key",
        format!(
            "{:?}",
            store
                .get_sender_key("120363021033254949@g.us::15557654321.0")
                .await
                .unwrap()
        ),
    );
}

/// App state: sync keys, versions, mutation MACs.
async fn app_state(store: &dyn Backend, said: &mut Said) {
    said.say(
        "no sync key",
        format!("{:?}", store.get_latest_sync_key_id().await.unwrap()),
    );
    for (id, data) in [(b"key-1", 1u8), (b"key-2", 2), (b"key-0", 0)] {
        let key = AppStateSyncKey {
            key_data: vec![data; 32],
            fingerprint: vec![data],
            timestamp: 1_700_000_000 + i64::from(data),
        };
        store.set_sync_key(id, key).await.unwrap();
    }
    said.say(
        "sync key",
        format!("{:?}", store.get_sync_key(b"key-2").await.unwrap()),
    );
    said.say(
        "latest sync key",
        format!("{:?}", store.get_latest_sync_key_id().await.unwrap()),
    );
    said.say(
        "no version",
        format!(
            "{:?}",
            store.get_version("regular_high").await.unwrap().version
        ),
    );
    let mut state = HashState {
        version: 7,
        ..HashState::default()
    };
    state.hash[0] = 9;
    state.index_value_map.insert("idx".into(), vec![1, 2, 3]);
    store.set_version("regular_high", state).await.unwrap();
    said.say(
        "version",
        format!("{:?}", store.get_version("regular_high").await.unwrap()),
    );
    let macs = |n: u8| AppStateMutationMAC {
        index_mac: vec![n; 32],
        value_mac: vec![n + 100; 32],
    };
    store
        .put_mutation_macs("regular_high", 7, &[macs(1), macs(2), macs(3)])
        .await
        .unwrap();
    store
        .put_mutation_macs("regular_low", 3, &[macs(1)])
        .await
        .unwrap();
    said.say(
        "mac",
        format!(
            "{:?}",
            store
                .get_mutation_mac("regular_high", &[2; 32])
                .await
                .unwrap()
        ),
    );
    store
        .delete_mutation_macs("regular_high", &[vec![2; 32]])
        .await
        .unwrap();
    let found = store
        .get_mutation_macs("regular_high", &[[1; 32], [2; 32], [3; 32]])
        .await
        .unwrap();
    said.say("macs", format!("{:?}", sorted(found.into_iter().collect())));
    store.clear_mutation_macs("regular_high").await.unwrap();
    said.say(
        "cleared",
        format!(
            "{:?}",
            store
                .get_mutation_mac("regular_high", &[1; 32])
                .await
                .unwrap()
        ),
    );
    said.say(
        "other collection",
        format!(
            "{:?}",
            store
                .get_mutation_mac("regular_low", &[1; 32])
                .await
                .unwrap()
        ),
    );
}

/// Protocol state.
async fn protocol(store: &dyn Backend, said: &mut Said) {
    let group = "120363021033254949@g.us";
    let other = "120363000000000001@g.us";
    store
        .set_sender_key_status(
            group,
            &[
                ("15557654321:1@s.whatsapp.net", true),
                ("15550000000:0@s.whatsapp.net", false),
            ],
        )
        .await
        .unwrap();
    store
        .set_sender_key_status(other, &[("15557654321:1@s.whatsapp.net", true)])
        .await
        .unwrap();
    store
        .set_sender_key_status(group, &[("15550000000:0@s.whatsapp.net", true)])
        .await
        .unwrap();
    said.say(
        "skd",
        format!(
            "{:?}",
            sorted(store.get_sender_key_devices(group).await.unwrap())
        ),
    );
    store
        .delete_sender_key_device_rows(&["15557654321:1@s.whatsapp.net"])
        .await
        .unwrap();
    said.say(
        "skd after device removal",
        format!(
            "{:?}",
            sorted(store.get_sender_key_devices(group).await.unwrap())
        ),
    );
    said.say(
        "skd other",
        format!(
            "{:?}",
            sorted(store.get_sender_key_devices(other).await.unwrap())
        ),
    );
    store.clear_sender_key_devices(group).await.unwrap();
    said.say(
        "skd cleared",
        format!("{:?}", store.get_sender_key_devices(group).await.unwrap()),
    );
    store
        .set_sender_key_status(other, &[("15550000000:0@s.whatsapp.net", false)])
        .await
        .unwrap();
    store.clear_all_sender_key_devices().await.unwrap();
    said.say(
        "skd all cleared",
        format!("{:?}", store.get_sender_key_devices(other).await.unwrap()),
    );

    store
        .put_lid_mapping(&lid_entry("100000011111111", "15557654321"))
        .await
        .unwrap();
    store
        .put_lid_mappings(&[
            lid_entry("100000022222222", "15557654321"),
            lid_entry("100000033333333", "15550000000"),
        ])
        .await
        .unwrap();
    said.say(
        "lid",
        format!(
            "{:?}",
            store.get_lid_mapping("100000011111111").await.unwrap()
        ),
    );
    said.say(
        "pn",
        format!(
            "{:?}",
            store
                .get_pn_mapping("15557654321")
                .await
                .unwrap()
                .map(|e| e.lid)
        ),
    );
    said.say(
        "no pn",
        format!("{:?}", store.get_pn_mapping("15559999999").await.unwrap()),
    );
    let mut all: Vec<String> = store
        .get_all_lid_mappings()
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{}>{}", e.lid, e.phone_number))
        .collect();
    all.sort();
    said.say("all lids", format!("{all:?}"));

    store
        .save_base_key("15557654321.0", "M1", b"base")
        .await
        .unwrap();
    said.say(
        "same base key",
        format!(
            "{:?}",
            store
                .has_same_base_key("15557654321.0", "M1", b"base")
                .await
                .unwrap()
        ),
    );
    said.say(
        "other base key",
        format!(
            "{:?}",
            store
                .has_same_base_key("15557654321.0", "M1", b"other")
                .await
                .unwrap()
        ),
    );
    store.delete_base_key("15557654321.0", "M1").await.unwrap();
    said.say(
        "deleted base key",
        format!(
            "{:?}",
            store
                .has_same_base_key("15557654321.0", "M1", b"base")
                .await
                .unwrap()
        ),
    );

    let record = DeviceListRecord {
        user: "15557654321".into(),
        devices: vec![
            DeviceInfo::new(0, None),
            DeviceInfo::new(3, Some(1)).with_hosting(true),
        ],
        timestamp: 1_700_000_100,
        phash: Some("2:abc".into()),
        raw_id: Some(42),
    };
    store.update_device_lists(vec![record]).await.unwrap();
    said.say(
        "devices",
        format!("{:?}", store.get_devices("15557654321").await.unwrap()),
    );
    store.delete_devices("15557654321").await.unwrap();
    said.say(
        "deleted devices",
        format!("{:?}", store.get_devices("15557654321").await.unwrap()),
    );

    store.put_group_metadata(group, b"meta").await.unwrap();
    said.say(
        "group meta",
        format!("{:?}", store.get_group_metadata(group).await.unwrap()),
    );
    store.delete_group_metadata(group).await.unwrap();
    said.say(
        "deleted group meta",
        format!("{:?}", store.get_group_metadata(group).await.unwrap()),
    );

    let token = |token: &[u8], at: i64, sender: Option<i64>| TcTokenEntry {
        token: token.to_vec(),
        token_timestamp: at,
        sender_timestamp: sender,
    };
    store
        .put_tc_token("a@lid", &token(b"t", 100, None))
        .await
        .unwrap();
    store
        .put_tc_token("b@lid", &token(b"t", 500, None))
        .await
        .unwrap();
    store
        .put_tc_token("c@lid", &token(b"", 100, Some(600)))
        .await
        .unwrap();
    store
        .put_tc_token("d@lid", &token(b"", 100, Some(100)))
        .await
        .unwrap();
    store
        .touch_tc_token_sender_timestamp("b@lid", 50)
        .await
        .unwrap();
    store
        .store_received_tc_token("a@lid", b"older", 50)
        .await
        .unwrap();
    said.say(
        "tc token",
        format!("{:?}", store.get_tc_token("b@lid").await.unwrap()),
    );
    said.say(
        "kept fresher token",
        format!("{:?}", store.get_tc_token("a@lid").await.unwrap()),
    );
    said.say(
        "tc jids",
        format!("{:?}", sorted(store.get_all_tc_token_jids().await.unwrap())),
    );
    said.say(
        "expired tc",
        format!(
            "{}",
            store.delete_expired_tc_tokens(200, 200).await.unwrap()
        ),
    );
    said.say(
        "tc jids left",
        format!("{:?}", sorted(store.get_all_tc_token_jids().await.unwrap())),
    );
    store.delete_tc_token("b@lid").await.unwrap();
    said.say(
        "tc deleted",
        format!("{:?}", store.get_tc_token("b@lid").await.unwrap()),
    );

    store
        .store_sent_message("15557654321@s.whatsapp.net", "3EB0A", b"payload")
        .await
        .unwrap();
    store
        .store_sent_message("15557654321@s.whatsapp.net", "3EB0B", b"payload b")
        .await
        .unwrap();
    said.say(
        "take",
        format!(
            "{:?}",
            store
                .take_sent_message("15557654321@s.whatsapp.net", "3EB0A")
                .await
                .unwrap()
        ),
    );
    said.say(
        "taken",
        format!(
            "{:?}",
            store
                .take_sent_message("15557654321@s.whatsapp.net", "3EB0A")
                .await
                .unwrap()
        ),
    );
    let now = chrono::Utc::now().timestamp();
    said.say(
        "sent kept",
        format!(
            "{}",
            store
                .delete_expired_sent_messages(now - 3600)
                .await
                .unwrap()
        ),
    );
    said.say(
        "sent expired",
        format!(
            "{}",
            store
                .delete_expired_sent_messages(now + 3600)
                .await
                .unwrap()
        ),
    );

    store
        .store_pending_inbound("c@s.whatsapp.net", "s@s.whatsapp.net", "I1", b"inbound")
        .await
        .unwrap();
    said.say(
        "pending",
        format!(
            "{:?}",
            store
                .get_pending_inbound("c@s.whatsapp.net", "s@s.whatsapp.net", "I1")
                .await
                .unwrap()
        ),
    );
    store
        .delete_pending_inbound("c@s.whatsapp.net", "s@s.whatsapp.net", "I1")
        .await
        .unwrap();
    said.say(
        "pending gone",
        format!(
            "{:?}",
            store
                .get_pending_inbound("c@s.whatsapp.net", "s@s.whatsapp.net", "I1")
                .await
                .unwrap()
        ),
    );
}

/// Message secrets: later deadlines and message times win on a rewrite.
async fn msg_secrets(store: &dyn Backend, said: &mut Said) {
    let written = store
        .put_msg_secrets(vec![
            msg_secret("NEVER", 1, 0, 10),
            msg_secret("OLD", 2, 1_000, 20),
            msg_secret("NEW", 3, 5_000, 0),
            msg_secret("NEW", 4, 2_000, 30),
        ])
        .await
        .unwrap();
    said.say("secrets written", format!("{written}"));
    store
        .put_msg_secret(
            "15557654321@s.whatsapp.net",
            "15557654321@s.whatsapp.net",
            "NEVER",
            &[5; 32],
        )
        .await
        .unwrap();
    for id in ["NEVER", "OLD", "NEW"] {
        let got = store
            .get_msg_secret_with_ts(
                "15557654321@s.whatsapp.net",
                "15557654321@s.whatsapp.net",
                id,
            )
            .await
            .unwrap();
        said.say(id, format!("{got:?}"));
    }
    said.say(
        "secrets expired",
        format!("{}", store.delete_expired_msg_secrets(2_000).await.unwrap()),
    );
    for id in ["NEVER", "OLD", "NEW"] {
        let got = store
            .get_msg_secret(
                "15557654321@s.whatsapp.net",
                "15557654321@s.whatsapp.net",
                id,
            )
            .await
            .unwrap();
        said.say(id, format!("{}", got.is_some()));
    }
}

/// The device.
async fn device(store: &dyn Backend, said: &mut Said) {
    said.say(
        "device exists",
        format!("{}", store.exists().await.unwrap()),
    );
    store.create().await.unwrap();
    said.say(
        "device created",
        format!("{}", store.exists().await.unwrap()),
    );
    let mut device = store.load().await.unwrap().expect("a created device loads");
    device.push_name = "Ana".into();
    device.pn = Some("15551234567@s.whatsapp.net".parse().unwrap());
    store.save(&device).await.unwrap();
    let loaded = store.load().await.unwrap().unwrap();
    said.say(
        "device",
        format!(
            "{} {:?}",
            loaded.push_name,
            loaded.pn.map(|pn| pn.to_string())
        ),
    );
}

/// Runs the same operations on a backend and says what each answered: two backends that
/// answer alike behave alike for the client.
async fn exercise(store: &dyn Backend) -> Vec<String> {
    let mut said = Said::default();
    identities_and_sessions(store, &mut said).await;
    pre_keys(store, &mut said).await;
    app_state(store, &mut said).await;
    protocol(store, &mut said).await;
    msg_secrets(store, &mut said).await;
    device(store, &mut said).await;
    said.0
}

async fn answers_as_the_crate_s_own_backend(db: AnyPool) {
    let expected = exercise(&InMemoryBackend::new()).await;
    let store = SealedDeviceStore::new(db, key(), Uuid::now_v7());
    let answered = exercise(&store).await;
    for (expected, answered) in expected.iter().zip(&answered) {
        assert_eq!(answered, expected);
    }
    assert_eq!(answered.len(), expected.len());
}

/// Given a device linked on one connection to the database, when the database is opened again
/// (a restart, another replica), then the same device, keys and sessions are there; another
/// account sees none of them; and the table holds nothing in clear.
async fn resumes_after_reopening_and_keeps_accounts_apart(url: &str) {
    let ana = Uuid::now_v7();
    let bruno = Uuid::now_v7();
    let first = migrated(url).await;
    let store = SealedDeviceStore::new(first.clone(), key(), ana);
    store.create().await.unwrap();
    let mut device = store.load().await.unwrap().unwrap();
    device.pn = Some("15551234567:12@s.whatsapp.net".parse().unwrap());
    device.push_name = "Ana".into();
    store.save(&device).await.unwrap();
    store
        .put_session("15557654321.0", b"secret session state")
        .await
        .unwrap();
    store.put_identity("15557654321.0", [9; 32]).await.unwrap();
    store
        .put_lid_mapping(&lid_entry("100000011111111", "15557654321"))
        .await
        .unwrap();
    first.close().await;

    let again = connect(url).await;
    let resumed = SealedDeviceStore::new(again.clone(), key(), ana);
    assert!(resumed.has_device().await.unwrap());
    // Creating again (a second replica starting) keeps the linked device.
    resumed.create().await.unwrap();
    let loaded = resumed.load().await.unwrap().unwrap();
    assert_eq!(loaded.pn, device.pn);
    assert_eq!(
        loaded.device_props.os.as_deref(),
        Some(whatsapp_rust::wacore::store::Device::default_os()),
        "a loaded device registers with the crate's device properties"
    );
    assert_eq!(loaded.registration_id, device.registration_id);
    assert_eq!(
        loaded.identity_key.public_key,
        device.identity_key.public_key
    );
    assert_eq!(loaded.noise_key.public_key, device.noise_key.public_key);
    assert_eq!(loaded.adv_secret_key, device.adv_secret_key);
    assert_eq!(
        resumed
            .get_session("15557654321.0")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"secret session state"[..])
    );
    assert_eq!(
        resumed.load_identity("15557654321.0").await.unwrap(),
        Some([9; 32])
    );

    let other = SealedDeviceStore::new(again.clone(), key(), bruno);
    assert!(!other.has_device().await.unwrap());
    assert_eq!(other.load().await.unwrap().map(|d| d.pn), None);
    assert_eq!(other.get_session("15557654321.0").await.unwrap(), None);
    assert_eq!(other.load_identity("15557654321.0").await.unwrap(), None);
    assert!(other.get_all_lid_mappings().await.unwrap().is_empty());
    other.forget().await.unwrap();
    assert!(
        resumed.has_device().await.unwrap(),
        "forgetting one account leaves the other"
    );

    let values: Vec<String> =
        sqlx::query_scalar("SELECT value FROM whatsapp_device_store WHERE account_id = $1")
            .bind(ana.to_string())
            .fetch_all(&again)
            .await
            .unwrap();
    assert!(values.len() >= 4);
    let session_in_clear = STANDARD.encode(b"secret session state");
    for value in &values {
        assert!(value.starts_with("v1:"), "sealed: {value}");
        assert!(!value.contains(&session_in_clear) && !value.contains("Ana"));
    }

    let wrong_key = SecretKey::from_base64(&STANDARD.encode([8u8; 32])).unwrap();
    let thief = SealedDeviceStore::new(again.clone(), wrong_key, ana);
    assert!(
        thief.get_session("15557654321.0").await.is_err(),
        "another key opens nothing"
    );

    resumed.forget().await.unwrap();
    assert!(!resumed.has_device().await.unwrap());
    assert_eq!(resumed.get_session("15557654321.0").await.unwrap(), None);
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("whatsnap.db").display()
    )
}

#[tokio::test]
async fn on_sqlite_the_store_answers_as_the_crate_s_own_backend() {
    let dir = tempfile::tempdir().unwrap();
    answers_as_the_crate_s_own_backend(migrated(&sqlite_url(&dir)).await).await;
}

#[tokio::test]
async fn on_sqlite_a_device_resumes_after_a_restart_and_accounts_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    resumes_after_reopening_and_keeps_accounts_apart(&sqlite_url(&dir)).await;
}

#[tokio::test]
async fn on_postgresql_the_store_answers_as_the_crate_s_own_backend() {
    let pg = TestPostgres::new().await.unwrap();
    answers_as_the_crate_s_own_backend(migrated(&pg.url_with_schema()).await).await;
}

#[tokio::test]
async fn replicas_starting_together_all_find_the_table() {
    let pg = TestPostgres::new().await.unwrap();
    let url = pg.url_with_schema();
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let db = connect(&url).await;
                SealedDeviceStore::migrate(&db).await
            })
        })
        .collect();
    for start in starts {
        start.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn on_postgresql_a_device_resumes_on_another_replica_and_accounts_stay_apart() {
    let pg = TestPostgres::new().await.unwrap();
    resumes_after_reopening_and_keeps_accounts_apart(&pg.url_with_schema()).await;
}
