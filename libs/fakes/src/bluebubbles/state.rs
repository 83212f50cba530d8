//! What the fake Mac holds, how it serializes a message (`MessageSerializer`'s fields that
//! matter here), and how it posts webhooks: once, unsigned, to every webhook subscribed to the
//! event (or to `*`).

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};

use super::{FakeBbDelivery, FakeBbMessage};

pub(super) struct StoredWebhook {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
}

#[derive(Debug, Clone)]
pub(super) struct StoredMessage {
    pub row: i64,
    pub guid: String,
    pub chat_guid: String,
    pub text: String,
    pub from_me: bool,
    pub date_created: i64,
    pub date_delivered: Option<i64>,
    pub date_read: Option<i64>,
    pub temp_guid: Option<String>,
    /// (file name, MIME type).
    pub attachments: Vec<(String, String)>,
}

impl StoredMessage {
    pub fn public(&self) -> FakeBbMessage {
        FakeBbMessage {
            guid: self.guid.clone(),
            chat_guid: self.chat_guid.clone(),
            text: self.text.clone(),
            from_me: self.from_me,
            date_created: self.date_created,
            temp_guid: self.temp_guid.clone(),
            attachments: self.attachments.iter().map(|(n, _)| n.clone()).collect(),
        }
    }

    fn address(&self) -> &str {
        self.chat_guid.split_once(";-;").map_or("", |(_, a)| a)
    }

    fn service(&self) -> &str {
        self.chat_guid
            .split_once(';')
            .map_or("iMessage", |(s, _)| s)
    }

    /// The message as BlueBubbles serializes it; `with_chats` false for `updated-message`.
    /// A message from the Mac has no handle (`handleId` 0).
    pub fn json(&self, with_chats: bool) -> Value {
        let handle = (!self.from_me).then(|| {
            json!({"originalROWID": 1, "address": self.address(), "service": self.service(),
                   "country": "us", "uncanonicalizedId": null})
        });
        let mut message = json!({
            "originalROWID": self.row,
            "guid": self.guid,
            "text": self.text,
            "attributedBody": null,
            "handle": handle,
            "handleId": if self.from_me { 0 } else { 1 },
            "otherHandle": 0,
            "attachments": self.attachments.iter().enumerate().map(|(i, (name, mime))| json!({
                "originalROWID": i + 1, "guid": format!("{}-att-{i}", self.guid),
                "mimeType": mime, "transferName": name, "totalBytes": 0})).collect::<Vec<_>>(),
            "subject": null,
            "error": 0,
            "dateCreated": self.date_created,
            "dateRead": self.date_read,
            "dateDelivered": self.date_delivered,
            "isFromMe": self.from_me,
            "isArchived": false,
            "itemType": 0,
            "groupTitle": null,
            "groupActionType": 0,
            "balloonBundleId": null,
            "associatedMessageGuid": null,
            "associatedMessageType": null,
            "expressiveSendStyleId": null,
            "threadOriginatorGuid": null,
            "hasPayloadData": false,
        });
        if with_chats {
            message["chats"] = json!([{
                "originalROWID": 1, "guid": self.chat_guid, "style": 45,
                "chatIdentifier": self.address(), "isArchived": false, "displayName": ""}]);
        }
        message
    }
}

pub(super) struct Inner {
    pub version: String,
    pub reachable: bool,
    pub hang_next_send: bool,
    pub webhooks: Vec<StoredWebhook>,
    next_webhook: i64,
    pub chats: BTreeSet<String>,
    pub messages: Vec<StoredMessage>,
    /// `tempGuid`s of sends not answered yet (the server's `sendCache`).
    pub in_flight: HashSet<String>,
    pub deliveries: Vec<FakeBbDelivery>,
    /// How far (ms) the Mac's clock is ahead of the real one (behind when negative): what
    /// dates its messages.
    pub clock_offset_ms: i64,
}

impl Inner {
    pub fn new() -> Self {
        Self {
            version: "1.9.9".to_owned(),
            reachable: true,
            hang_next_send: false,
            webhooks: Vec::new(),
            next_webhook: 1,
            chats: BTreeSet::new(),
            messages: Vec::new(),
            in_flight: HashSet::new(),
            deliveries: Vec::new(),
            clock_offset_ms: 0,
        }
    }

    /// The Mac's time, ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() + self.clock_offset_ms
    }

    pub fn add_webhook(&mut self, url: &str, events: Vec<String>) -> Value {
        let id = self.next_webhook;
        self.next_webhook += 1;
        self.webhooks.push(StoredWebhook {
            id,
            url: url.to_owned(),
            events,
        });
        self.webhook_json(id)
    }

    pub fn webhook_json(&self, id: i64) -> Value {
        self.webhooks
            .iter()
            .find(|w| w.id == id)
            .map(|w| json!({"id": w.id, "url": w.url, "events": w.events, "created": "2026-12-02T12:00:00.000Z"}))
            .unwrap_or(Value::Null)
    }

    /// A new message in `chat` (made if new).
    pub fn store(
        &mut self,
        chat: &str,
        text: &str,
        from_me: bool,
        temp_guid: Option<String>,
        attachments: Vec<(String, String)>,
    ) -> StoredMessage {
        self.chats.insert(chat.to_owned());
        let row = self.messages.len() as i64 + 1;
        // Creation times strictly increase, as rows do.
        let now = self.now_ms();
        let date_created = self
            .messages
            .last()
            .map_or(now, |m| now.max(m.date_created + 1));
        let message = StoredMessage {
            row,
            guid: format!("{}", uuid::Uuid::now_v7()).to_uppercase(),
            chat_guid: chat.to_owned(),
            text: text.to_owned(),
            from_me,
            date_created,
            date_delivered: None,
            date_read: None,
            temp_guid,
            attachments,
        };
        self.messages.push(message.clone());
        message
    }
}

pub(super) fn webhook_body(kind: &str, data: Value) -> Value {
    json!({"type": kind, "data": data})
}

pub(super) fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

#[derive(Clone)]
pub(super) struct Shared(pub Arc<Mutex<Inner>>, pub reqwest::Client);

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().expect("fake bluebubbles lock")
    }

    /// Posts `body` to every webhook subscribed to its type, once each; what each answered.
    pub async fn post_all(&self, body: Value) -> Vec<Option<u16>> {
        let kind = body["type"].as_str().unwrap_or_default().to_owned();
        let urls: Vec<String> = {
            let inner = self.lock();
            if !inner.reachable {
                return Vec::new();
            }
            inner
                .webhooks
                .iter()
                .filter(|w| w.events.iter().any(|e| *e == kind || e == "*"))
                .map(|w| w.url.clone())
                .collect()
        };
        let mut answers = Vec::new();
        for url in urls {
            let status = self
                .1
                .post(&url)
                .json(&body)
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16());
            self.lock().deliveries.push(FakeBbDelivery {
                url,
                body: body.clone(),
                status,
            });
            answers.push(status);
        }
        answers
    }
}
