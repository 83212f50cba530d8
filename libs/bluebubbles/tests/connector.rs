//! The connector against the strict fake Mac: adding a Mac, sending into the contact's chat,
//! finding a send whose answer was lost, the webhook's secret, and the session's webhook
//! registration, catch-up (from the last message recorded), offline report and logout.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use whatsnap_bluebubbles::{BlueBubblesConfig, BlueBubblesConnector};
use whatsnap_connector::{
    AccountRef, Connector, ConnectorError, ConnectorEvent, DisconnectReason, LinkMethod,
    NewAccount, Outgoing, WebhookError, WebhookRequest,
};
use whatsnap_events::LocationId;
use whatsnap_fakes::FakeBlueBubbles;
use whatsnap_secrets::SecretKey;

const ANA: &str = "+14155550100";

fn connector() -> BlueBubblesConnector {
    let mut config = BlueBubblesConfig::new("https://whatsnap.example.com");
    config.request_timeout = Duration::from_secs(1);
    config.ping_interval = Duration::from_millis(100);
    BlueBubblesConnector::new(config)
}

fn key() -> SecretKey {
    SecretKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
}

fn new_account() -> NewAccount {
    NewAccount {
        location: LocationId::parse("locMac").unwrap(),
        account_id: Uuid::now_v7(),
        name: "Front desk".into(),
        phone_number: None,
    }
}

async fn added(connector: &BlueBubblesConnector, mac: &FakeBlueBubbles) -> AccountRef {
    let new = new_account();
    let settings = connector
        .check(
            &new,
            serde_json::json!({"server_url": mac.base_url(), "password": FakeBlueBubbles::PASSWORD}),
            &key(),
        )
        .await
        .unwrap();
    assert!(
        !settings.to_string().contains(FakeBlueBubbles::PASSWORD),
        "the password is sealed"
    );
    AccountRef {
        location: new.location,
        account_id: new.account_id,
        name: new.name,
        phone_number: None,
        settings,
        secret_key: key(),
        last_message_at: None,
    }
}

fn outgoing(text: &str) -> Outgoing {
    Outgoing {
        message_id: Uuid::now_v7(),
        to: ANA.into(),
        body: text.into(),
        attachments: Vec::new(),
        typing: Duration::ZERO,
    }
}

#[tokio::test]
async fn a_mac_is_checked_when_added() {
    let mac = FakeBlueBubbles::start().await.unwrap();
    let connector = connector();
    let given =
        |password: &str| serde_json::json!({"server_url": mac.base_url(), "password": password});
    let wrong = connector
        .check(&new_account(), given("nope"), &key())
        .await
        .unwrap_err();
    assert!(
        matches!(&wrong, ConnectorError::Refused(r) if r.contains("password")),
        "{wrong:?}"
    );
    mac.set_version("1.7.4");
    let old = connector
        .check(&new_account(), given(FakeBlueBubbles::PASSWORD), &key())
        .await
        .unwrap_err();
    assert!(old.to_string().contains("1.7.4"), "{old}");
    let missing = connector
        .check(&new_account(), serde_json::json!({"password": "x"}), &key())
        .await
        .unwrap_err();
    assert!(matches!(missing, ConnectorError::Invalid(_)));
}

#[tokio::test]
async fn a_reply_goes_into_the_contacts_chat_and_a_lost_answer_is_found() {
    let mac = FakeBlueBubbles::start().await.unwrap();
    let connector = connector();
    let account = added(&connector, &mac).await;
    mac.receive_sms(ANA, "hi").await;
    let reply = outgoing("hello back");
    let sent = connector.send(&account, &reply).await.unwrap();
    let on_mac = mac.sent().pop().unwrap();
    assert_eq!(on_mac.chat_guid, format!("SMS;-;{ANA}"));
    assert_eq!(on_mac.temp_guid, Some(reply.message_id.to_string()));
    assert_eq!(sent.provider_message_id, on_mac.guid);

    mac.accept_then_hang_next_send();
    let lost = outgoing("are you there?");
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let error = connector.send(&account, &lost).await.unwrap_err();
    assert!(!error.certainly_unsent(), "{error:?}");
    let found = connector.find_sent(&account, &lost, since).await.unwrap();
    assert_eq!(
        found.map(|s| s.provider_message_id),
        Some(mac.sent().pop().unwrap().guid)
    );
    assert_eq!(
        connector
            .find_sent(&account, &outgoing("never sent"), since)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn the_session_catches_up_from_the_last_message_recorded_however_old() {
    let mac = FakeBlueBubbles::start().await.unwrap();
    let mut config = BlueBubblesConfig::new("https://whatsnap.example.com");
    config.request_timeout = Duration::from_secs(1);
    // The window of an account that has recorded nothing: the messages below are older.
    config.catch_up = Duration::from_secs(60);
    let connector = BlueBubblesConnector::new(config);
    let mut account = added(&connector, &mac).await;
    let now = chrono::Utc::now();
    mac.set_clock(now - chrono::Duration::hours(6));
    mac.receive(ANA, "long before").await;
    mac.set_clock(now - chrono::Duration::hours(5));
    let (recorded, _) = mac.receive(ANA, "the last one recorded").await;
    mac.set_clock(now - chrono::Duration::hours(2));
    let (missed, _) = mac.receive(ANA, "while whatsnap was down").await;
    account.last_message_at = Some(now - chrono::Duration::hours(5));

    let (tx, mut rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let run = {
        let stop = stop.clone();
        tokio::spawn(async move {
            connector
                .session()
                .unwrap()
                .run(&account, LinkMethod::Qr, tx, stop)
                .await
        })
    };
    let mut reported = Vec::new();
    loop {
        match rx.recv().await.unwrap() {
            ConnectorEvent::Connected { .. } => break,
            ConnectorEvent::Message(m) => reported.push(m.provider_message_id),
            other => panic!("{other:?}"),
        }
    }
    // The last one recorded is read again (downstream knows its GUID); nothing before it.
    assert_eq!(reported, [recorded, missed]);
    stop.cancel();
    assert_eq!(run.await.unwrap().reason, DisconnectReason::Stopped);
}

#[tokio::test]
async fn the_session_registers_the_webhook_catches_up_and_reports_the_mac_offline() {
    let mac = FakeBlueBubbles::start().await.unwrap();
    let connector = connector();
    let account = added(&connector, &mac).await;
    let (missed, _) = mac.receive(ANA, "sent before whatsnap looked").await;
    let (tx, mut rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let run = {
        let (account, stop) = (account.clone(), stop.clone());
        tokio::spawn(async move {
            let ended = connector
                .session()
                .unwrap()
                .run(&account, LinkMethod::Qr, tx, stop)
                .await;
            (connector, ended)
        })
    };
    let first = rx.recv().await.unwrap();
    assert!(
        matches!(&first, ConnectorEvent::Message(m) if m.provider_message_id == missed),
        "{first:?}"
    );
    assert!(matches!(
        rx.recv().await.unwrap(),
        ConnectorEvent::Connected { .. }
    ));
    let hooks = mac.webhooks();
    assert_eq!(hooks.len(), 1);

    // A webhook is taken with the registered URL's secret only.
    let headers = http::HeaderMap::new();
    let query = hooks[0].split_once('?').unwrap().1.to_owned();
    let body = br#"{"type":"typing-indicator","data":{"display":true,"guid":"iMessage;-;+1"}}"#;

    mac.set_reachable(false);
    let offline = rx.recv().await.unwrap();
    assert!(
        matches!(
            &offline,
            ConnectorEvent::Disconnected {
                reason: DisconnectReason::DeviceOffline,
                ..
            }
        ),
        "{offline:?}"
    );
    mac.set_reachable(true);
    // The catch-up starts at the last message seen (included: a message of the same
    // millisecond is not lost), which downstream recognises by its GUID.
    loop {
        match rx.recv().await.unwrap() {
            ConnectorEvent::Connected { .. } => break,
            ConnectorEvent::Message(m) => assert_eq!(m.provider_message_id, missed),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(mac.webhooks().len(), 1, "registered once");
    stop.cancel();
    let (connector, ended) = run.await.unwrap();
    assert_eq!(ended.reason, DisconnectReason::Stopped);

    assert_eq!(
        connector
            .webhook(
                &account,
                &WebhookRequest {
                    headers: &headers,
                    query: &query,
                    body
                }
            )
            .unwrap(),
        []
    );
    for forged in ["", "secret=guess"] {
        assert!(matches!(
            connector.webhook(
                &account,
                &WebhookRequest {
                    headers: &headers,
                    query: forged,
                    body
                }
            ),
            Err(WebhookError::Unauthenticated(_))
        ));
    }
    assert!(matches!(
        connector.webhook(
            &account,
            &WebhookRequest {
                headers: &headers,
                query: &query,
                body: b"[1"
            }
        ),
        Err(WebhookError::Malformed(_))
    ));

    connector.session().unwrap().logout(&account).await.unwrap();
    assert!(mac.webhooks().is_empty());
}
