//! The embedded engine as the session service sees it, with no network: a session runs, owns
//! the account's device in the database, refuses sends until the link is open, and stops when
//! told.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use whatsapp_rust::anyhow;
use whatsapp_rust::async_channel::Receiver;
use whatsapp_rust::http::{HttpClient, HttpRequest, HttpResponse};
use whatsapp_rust::transport::{Transport, TransportEvent, TransportFactory};
use whatsnap_connector::{
    AccountRef, Connector, DisconnectReason, LinkMethod, NewAccount, Outgoing, Pacing, SendError,
};
use whatsnap_events::{AccountKind, Attachment, LocationId};
use whatsnap_secrets::SecretKey;
use whatsnap_whatsapp::{EmbeddedConfig, EmbeddedConnector, Network};

/// A network where nothing answers.
struct Unreachable;

#[async_trait]
impl TransportFactory for Unreachable {
    async fn create_transport(
        &self,
    ) -> anyhow::Result<(Arc<dyn Transport>, Receiver<TransportEvent>)> {
        Err(anyhow::anyhow!("no network in this test"))
    }
}

#[async_trait]
impl HttpClient for Unreachable {
    async fn execute(&self, _request: HttpRequest) -> anyhow::Result<HttpResponse> {
        Err(anyhow::anyhow!("no network in this test"))
    }
}

fn key() -> SecretKey {
    SecretKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap()
}

async fn database(dir: &tempfile::TempDir) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(4)
        .connect(&format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("whatsnap.db").display()
        ))
        .await
        .unwrap()
}

async fn connector(db: AnyPool) -> EmbeddedConnector {
    EmbeddedConnector::new(db, key(), EmbeddedConfig::default())
        .await
        .unwrap()
        .with_network(Network {
            transport: Arc::new(Unreachable),
            http: Arc::new(Unreachable),
        })
}

fn account() -> AccountRef {
    AccountRef {
        location: LocationId::parse("loc1").unwrap(),
        account_id: Uuid::now_v7(),
        name: "Front desk".into(),
        phone_number: None,
        settings: serde_json::json!({}),
        secret_key: key(),
        last_message_at: None,
    }
}

fn reply(to: &str) -> Outgoing {
    Outgoing {
        message_id: Uuid::now_v7(),
        to: to.into(),
        body: "we open at 9".into(),
        attachments: vec![],
        typing: Duration::ZERO,
    }
}

#[tokio::test]
async fn an_embedded_account_needs_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let connector = connector(database(&dir).await).await;
    assert_eq!(connector.platform(), AccountKind::Whatsapp);
    assert_eq!(connector.engine(), "embedded");
    assert_eq!(connector.send_operation(), "embedded.send");
    assert_eq!(connector.default_pacing(), Pacing::WHATSAPP);
    assert!(connector.session().is_some());
    let account = account();
    let new = NewAccount {
        location: account.location.clone(),
        account_id: account.account_id,
        name: account.name.clone(),
        phone_number: None,
    };
    let settings = connector
        .check(&new, serde_json::json!({}), &key())
        .await
        .unwrap();
    assert_eq!(settings, serde_json::json!({}));
}

#[tokio::test]
async fn a_reply_without_a_running_session_is_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let connector = connector(database(&dir).await).await;
    let err = connector
        .send(&account(), &reply("+15557654321"))
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::NotConnected(_)), "{err:?}");
    assert!(err.certainly_unsent() && err.is_retryable());
}

/// Given an account whose session runs but cannot reach WhatsApp, replies wait (not sent,
/// retryable); when whatsnap stops the session, it ends as stopped, the client is gone, and the
/// device it created stays in the database for the next run.
#[tokio::test]
async fn a_running_session_owns_the_device_and_stops_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir).await;
    let connector = Arc::new(connector(db.clone()).await);
    let account = account();
    let (events, mut heard) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let run = {
        let connector = connector.clone();
        let account = account.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            connector
                .session()
                .unwrap()
                .run(&account, LinkMethod::Qr, events, stop)
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !connector.is_live(account.account_id) {
        assert!(tokio::time::Instant::now() < deadline, "the session starts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        connector
            .store(account.account_id)
            .has_device()
            .await
            .unwrap(),
        "the session created the account's device in the database"
    );
    let device = connector
        .store(account.account_id)
        .load_device()
        .await
        .unwrap()
        .unwrap();

    let err = connector
        .send(&account, &reply("+15557654321"))
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::NotConnected(_)), "{err:?}");
    let mut with_attachment = reply("+15557654321");
    with_attachment.attachments.push(Attachment {
        url: "http://127.0.0.1:9/menu.pdf".into(),
        content_type: Some("application/pdf".into()),
        file_name: None,
    });
    assert!(matches!(
        connector.send(&account, &with_attachment).await,
        Err(SendError::NotConnected(_))
    ));

    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the session stops in time")
        .unwrap();
    assert_eq!(ended.reason, DisconnectReason::Stopped);
    assert!(!connector.is_live(account.account_id));
    assert!(
        heard.try_recv().is_err(),
        "nothing was reported without a network"
    );
    let kept = connector
        .store(account.account_id)
        .load_device()
        .await
        .unwrap()
        .expect("the device outlives the session");
    assert_eq!(kept.registration_id, device.registration_id);
    assert_eq!(kept.identity_key.public_key, device.identity_key.public_key);

    // Logging out an account that never linked forgets its device; nothing to tell WhatsApp.
    connector.session().unwrap().logout(&account).await.unwrap();
    assert!(
        !connector
            .store(account.account_id)
            .has_device()
            .await
            .unwrap()
    );
}

/// Given an account whose device was sealed under another secret key (a replica started with
/// the wrong `WHATSNAP_SECRET_KEY`), its session ends at once waiting for a user, and the
/// device is left as it was for the right key.
#[tokio::test]
async fn a_device_sealed_with_another_key_is_left_alone_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir).await;
    let account = account();
    let right = connector(db.clone()).await;
    right
        .store(account.account_id)
        .create_device()
        .await
        .unwrap();
    let other_key = SecretKey::from_base64(&STANDARD.encode([9u8; 32])).unwrap();
    let wrong = EmbeddedConnector::new(db.clone(), other_key, EmbeddedConfig::default())
        .await
        .unwrap()
        .with_network(Network {
            transport: Arc::new(Unreachable),
            http: Arc::new(Unreachable),
        });
    let (events, _heard) = mpsc::channel(16);
    let ended = tokio::time::timeout(
        Duration::from_secs(20),
        wrong
            .session()
            .unwrap()
            .run(&account, LinkMethod::Qr, events, CancellationToken::new()),
    )
    .await
    .expect("the session ends at once");
    assert_eq!(ended.reason, DisconnectReason::LoggedOut);
    assert!(
        ended.detail.contains("WHATSNAP_SECRET_KEY"),
        "{}",
        ended.detail
    );
    assert!(!ended.reason.reconnects(), "no retrying in a loop");
    assert!(
        right
            .store(account.account_id)
            .load_device()
            .await
            .unwrap()
            .is_some(),
        "the right key still opens the device"
    );
}

#[tokio::test]
async fn a_reply_to_something_else_than_a_phone_number_is_refused() {
    for bad in ["15557654321@s.whatsapp.net", "+1 555 765", "+123", ""] {
        let err = whatsnap_whatsapp::recipient(bad).unwrap_err();
        assert!(matches!(err, SendError::Refused { .. }), "{bad}: {err:?}");
    }
    assert_eq!(
        whatsnap_whatsapp::recipient("+15557654321")
            .unwrap()
            .to_string(),
        "15557654321@s.whatsapp.net"
    );
}
