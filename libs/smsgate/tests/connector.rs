//! The SMSGate engine behind whatsnap's seam, against the fake phone: adding an account,
//! sending once under whatsnap's id, reading the phone's signed webhooks, and a session's
//! life — the phone seen, silent, seen again — observed as the session service would.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use whatsnap_connector::{
    AccountRef, Connector, ConnectorError, ConnectorEvent, DisconnectReason, LinkMethod,
    NewAccount, Outgoing, Receipt, Session, WebhookError, WebhookRequest,
};
use whatsnap_events::LocationId;
use whatsnap_fakes::FakeSmsGate;
use whatsnap_secrets::SecretKey;
use whatsnap_smsgate::{SmsGateConfig, SmsGateConnector, SmsGateSettings};

fn secret_key() -> SecretKey {
    SecretKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
}

fn location() -> LocationId {
    LocationId::parse("LocAndroid0001").unwrap()
}

fn account_ref(account_id: Uuid, settings: serde_json::Value) -> AccountRef {
    AccountRef {
        location: location(),
        account_id,
        name: "Shop phone".to_owned(),
        phone_number: None,
        settings,
        secret_key: secret_key(),
        last_message_at: None,
    }
}

/// A receiver standing in for whatsnap's gateway: hands over each POST's headers and body.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((headers, body));
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

fn connector(public_url: &str) -> SmsGateConnector {
    let mut config = SmsGateConfig::new(public_url);
    config.patience = Duration::from_millis(400);
    config.poll_interval = Duration::from_millis(20);
    config.request_timeout = Duration::from_secs(2);
    SmsGateConnector::new(config)
}

/// An account on the fake phone, added: its reference.
async fn added(connector: &SmsGateConnector, phone: &FakeSmsGate) -> AccountRef {
    let id = Uuid::now_v7();
    let settings = connector
        .check(
            &NewAccount {
                location: location(),
                account_id: id,
                name: "Shop phone".into(),
                phone_number: None,
            },
            json!({
                "mode": "local", "url": phone.base_url(), "username": FakeSmsGate::USERNAME,
                "password": FakeSmsGate::PASSWORD, "signing_key": FakeSmsGate::SIGNING_KEY,
                "sim_number": "2",
            }),
            &secret_key(),
        )
        .await
        .unwrap();
    account_ref(id, settings)
}

fn outgoing(text: &str) -> Outgoing {
    Outgoing {
        message_id: Uuid::now_v7(),
        to: "+14155550100".into(),
        body: text.into(),
        attachments: Vec::new(),
        typing: Duration::ZERO,
    }
}

#[tokio::test]
async fn adding_an_account_registers_the_webhooks_once_and_seals_the_secrets() {
    let phone = FakeSmsGate::start_local().await.unwrap();
    let connector = connector("http://127.0.0.1:9");
    let account = added(&connector, &phone).await;
    let stored = SmsGateSettings::of(&account.settings).unwrap();
    assert_eq!(stored.sim_number, Some(2));
    let shown = account.settings.to_string();
    assert!(!shown.contains(FakeSmsGate::PASSWORD) && !shown.contains(FakeSmsGate::SIGNING_KEY));
    assert_eq!(phone.webhooks().len(), 6);

    // The session registers them again: the same ids, still six.
    let (events, _rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let run = connector.run(&account, LinkMethod::Qr, events, stop.clone());
    tokio::select! {
        _ = run => panic!("the session ended"),
        () = tokio::time::sleep(Duration::from_millis(200)) => {}
    }
    assert_eq!(phone.webhooks().len(), 6);

    connector.logout(&account).await.unwrap();
    assert!(phone.webhooks().is_empty(), "removed with the account");

    let wrong = connector
        .check(
            &NewAccount {
                location: location(),
                account_id: Uuid::now_v7(),
                name: "x".into(),
                phone_number: None,
            },
            json!({ "mode": "local", "url": phone.base_url(), "username": "u",
                    "password": "wrong", "signing_key": "k" }),
            &secret_key(),
        )
        .await
        .unwrap_err();
    assert!(matches!(wrong, ConnectorError::Refused(_)), "{wrong:?}");
}

#[tokio::test]
async fn a_reply_is_sent_once_under_whatsnaps_id_and_found_again() {
    let phone = FakeSmsGate::start_local().await.unwrap();
    let connector = connector("http://127.0.0.1:9");
    let account = added(&connector, &phone).await;
    let reply = outgoing("See you at 5");
    let sent = connector.send(&account, &reply).await.unwrap();
    assert_eq!(sent.provider_message_id, reply.message_id.to_string());
    // Sent again (an answer lost): the phone refuses the id (409), whatsnap reads it back.
    let again = connector.send(&account, &reply).await.unwrap();
    assert_eq!(again, sent);
    let taken = phone.messages();
    assert_eq!(taken.len(), 1, "sent once");
    assert_eq!(taken[0].sim_number, Some(2));
    let since = chrono::Utc::now() - chrono::Duration::minutes(1);
    assert_eq!(
        connector.find_sent(&account, &reply, since).await.unwrap(),
        Some(sent)
    );
    let never = outgoing("never sent");
    assert_eq!(
        connector.find_sent(&account, &never, since).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn the_phones_signed_webhooks_are_read_and_a_tampered_one_is_refused() {
    let phone = FakeSmsGate::start_local().await.unwrap();
    let (url, mut posted) = receiver().await;
    let connector = connector(&url);
    let account = added(&connector, &phone).await;
    phone.receive("+14155550100", "Hello shop", 2).await;
    let (headers, body) = posted.recv().await.unwrap();
    let events = connector
        .webhook(&account, &WebhookRequest::new(&headers, &body))
        .unwrap();
    let [ConnectorEvent::Message(message)] = events.as_slice() else {
        panic!("one message: {events:?}");
    };
    assert_eq!(message.body, "Hello shop");
    assert_eq!(message.peer.phone.as_deref(), Some("+14155550100"));

    let tampered = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("Hello shop", "Send money");
    let refused = connector
        .webhook(
            &account,
            &WebhookRequest::new(&headers, tampered.as_bytes()),
        )
        .unwrap_err();
    assert!(
        matches!(refused, WebhookError::Unauthenticated(_)),
        "{refused:?}"
    );

    let reply = outgoing("Hi!");
    connector.send(&account, &reply).await.unwrap();
    let (headers, body) = posted.recv().await.unwrap();
    assert_eq!(
        connector
            .webhook(&account, &WebhookRequest::new(&headers, &body))
            .unwrap(),
        [ConnectorEvent::Receipt {
            provider_message_id: reply.message_id.to_string(),
            receipt: Receipt::Sent,
        }]
    );
}

#[tokio::test]
async fn a_session_sees_the_phone_go_silent_and_come_back() {
    let mut phone = FakeSmsGate::start_local().await.unwrap();
    let connector = connector("http://127.0.0.1:9");
    let account = added(&connector, &phone).await;
    let (tx, mut events) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let session = {
        let connector = connector.clone();
        let account = account.clone();
        let stop = stop.clone();
        tokio::spawn(async move { connector.run(&account, LinkMethod::Qr, tx, stop).await })
    };
    assert!(matches!(
        events.recv().await,
        Some(ConnectorEvent::Connected { .. })
    ));
    phone.go_offline();
    let Some(ConnectorEvent::Disconnected { reason, detail }) = events.recv().await else {
        panic!("offline");
    };
    assert_eq!(reason, DisconnectReason::PhoneOffline);
    assert!(detail.contains("battery optimisation"), "{detail}");
    phone.come_online().await.unwrap();
    assert!(matches!(
        events.recv().await,
        Some(ConnectorEvent::Connected { .. })
    ));
    stop.cancel();
    assert_eq!(session.await.unwrap().reason, DisconnectReason::Stopped);
}
