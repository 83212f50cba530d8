//! What the Evolution tests share: a webhook receiver standing in for whatsnap's gateway, and an
//! account as the session service would hand it over.

#![allow(dead_code)]

use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use tokio::sync::mpsc;
use uuid::Uuid;
use whatsnap_connector::{AccountRef, NewAccount};
use whatsnap_events::LocationId;
use whatsnap_secrets::SecretKey;

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Posted {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Posted {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON webhook body")
    }
}

/// A webhook receiver on loopback that answers 200 and hands over what it got.
pub struct Receiver {
    pub base_url: String,
    posted: mpsc::UnboundedReceiver<Posted>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Self {
        let (tx, posted) = mpsc::unbounded_channel();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Posted {
                        path: uri.path().to_owned(),
                        headers,
                        body,
                    });
                    "ok"
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base_url,
            posted,
            task,
        }
    }

    /// The next POST whose body's `event` is `event`, skipping others; fails after 10 s.
    pub async fn next_event(&mut self, event: &str) -> Posted {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let posted = tokio::time::timeout_at(deadline, self.posted.recv())
                .await
                .unwrap_or_else(|_| panic!("no {event} webhook within 10 s"))
                .expect("the receiver is running");
            if posted.json()["event"] == event {
                return posted;
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn secret_key() -> SecretKey {
    SecretKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
}

pub fn location() -> LocationId {
    LocationId::parse("LocEvolution0001").unwrap()
}

pub fn new_account(account_id: Uuid) -> NewAccount {
    NewAccount {
        location: location(),
        account_id,
        name: "Front desk WhatsApp".to_owned(),
        phone_number: None,
    }
}

pub fn account_ref(account_id: Uuid, settings: serde_json::Value) -> AccountRef {
    AccountRef {
        location: location(),
        account_id,
        name: "Front desk WhatsApp".to_owned(),
        phone_number: None,
        settings,
        secret_key: secret_key(),
        last_message_at: None,
    }
}
