//! A fake BlueBubbles Server (1.9.9) on a Mac, as `connectors.md` §4 and §6a describe it and
//! its source shows: the password in the query (`password`, or its aliases `guid` and
//! `token`; 401 without it), the `{status, message, data, error}` envelope, webhooks listed,
//! added (events checked against the server's list) and deleted, chats looked up by GUID,
//! AppleScript sends that need a `tempGuid` and refuse one still in flight, multipart
//! attachment sends, and the message query whatsnap catches up with.
//!
//! What the Mac does is posted to every registered webhook, unsigned, once: BlueBubbles never
//! retries. The echo of a send (`new-message`, `isFromMe`, no `tempGuid`) is posted **before**
//! the send is answered, as the real server may (§6a); `updated-message` carries no `chats`.
//!
//! Tests drive the Mac's side: [`FakeBlueBubbles::receive`] (a contact texts the Mac),
//! [`FakeBlueBubbles::type_on_mac`], [`FakeBlueBubbles::mark_delivered`] /
//! [`FakeBlueBubbles::mark_read`], [`FakeBlueBubbles::set_reachable`] (the Mac asleep: requests
//! hang, as packets to a sleeping Mac do), [`FakeBlueBubbles::accept_then_hang_next_send`] (the
//! Mac sends, then the answer never comes), [`FakeBlueBubbles::set_clock`] (the Mac's time,
//! which dates its messages).

mod server;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::net::TcpListener;

use state::{Inner, StoredMessage};

/// A message the fake holds: received, typed on the Mac, or sent through the API.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeBbMessage {
    pub guid: String,
    pub chat_guid: String,
    pub text: String,
    pub from_me: bool,
    /// ms since the epoch.
    pub date_created: i64,
    /// The `tempGuid` of an API send.
    pub temp_guid: Option<String>,
    /// File names of its attachments.
    pub attachments: Vec<String>,
}

/// One webhook POST the fake made.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeBbDelivery {
    pub url: String,
    pub body: Value,
    /// What whatsnap answered; `None` when it could not be reached.
    pub status: Option<u16>,
}

/// A fake BlueBubbles server on a loopback port.
#[derive(Clone)]
pub struct FakeBlueBubbles {
    addr: SocketAddr,
    shared: state::Shared,
}

impl FakeBlueBubbles {
    /// The server password.
    pub const PASSWORD: &'static str = "mac-server-password";

    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = state::Shared(Arc::new(Mutex::new(Inner::new())), state::client());
        let app = server::router(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { addr, shared })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The version `server/info` reports (1.9.9 unless set).
    pub fn set_version(&self, version: &str) {
        self.shared.lock().version = version.to_owned();
    }

    /// The Mac asleep or off the network (`false`): every request hangs until the client gives
    /// up, and nothing is posted. Back (`true`): it answers again.
    pub fn set_reachable(&self, reachable: bool) {
        self.shared.lock().reachable = reachable;
    }

    /// Sets the Mac's clock to `now` (it runs on from there): the messages it stores from
    /// then on are dated by it, so a test can make a message older than whatsnap's catch-up
    /// window without waiting. Dates still increase with each message, as rows do.
    pub fn set_clock(&self, now: chrono::DateTime<chrono::Utc>) {
        self.shared.lock().clock_offset_ms =
            now.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    }

    /// The next send is made (stored and echoed), and then never answered.
    pub fn accept_then_hang_next_send(&self) {
        self.shared.lock().hang_next_send = true;
    }

    /// The registered webhook URLs.
    pub fn webhooks(&self) -> Vec<String> {
        self.shared
            .lock()
            .webhooks
            .iter()
            .map(|w| w.url.clone())
            .collect()
    }

    /// Every message sent through the API, in order.
    pub fn sent(&self) -> Vec<FakeBbMessage> {
        self.shared
            .lock()
            .messages
            .iter()
            .filter(|m| m.temp_guid.is_some())
            .map(StoredMessage::public)
            .collect()
    }

    /// Every webhook POST made, in order.
    pub fn deliveries(&self) -> Vec<FakeBbDelivery> {
        self.shared.lock().deliveries.clone()
    }

    /// The contact at `from` (E.164) sends `text` over iMessage: the chat `iMessage;-;from` is
    /// made if new, and `new-message` posted. Gives the message's GUID and what each webhook
    /// answered.
    pub async fn receive(&self, from: &str, text: &str) -> (String, Vec<Option<u16>>) {
        self.add_message("iMessage", from, text, false).await
    }

    /// As [`Self::receive`], over SMS (a contact without iMessage, through the iPhone's Text
    /// Message Forwarding): the chat is `SMS;-;from`.
    pub async fn receive_sms(&self, from: &str, text: &str) -> (String, Vec<Option<u16>>) {
        self.add_message("SMS", from, text, false).await
    }

    /// The user types `text` to `to` in Messages on the Mac (or the iPhone): `new-message` with
    /// `isFromMe`, in the contact's existing chat (iMessage unless only an SMS chat exists).
    pub async fn type_on_mac(&self, to: &str, text: &str) -> (String, Vec<Option<u16>>) {
        let service = {
            let inner = self.shared.lock();
            if !inner.chats.contains(&format!("iMessage;-;{to}"))
                && inner.chats.contains(&format!("SMS;-;{to}"))
            {
                "SMS"
            } else {
                "iMessage"
            }
        };
        self.add_message(service, to, text, true).await
    }

    async fn add_message(
        &self,
        service: &str,
        address: &str,
        text: &str,
        from_me: bool,
    ) -> (String, Vec<Option<u16>>) {
        let chat = format!("{service};-;{address}");
        let message = self
            .shared
            .lock()
            .store(&chat, text, from_me, None, Vec::new());
        let body = state::webhook_body("new-message", message.json(true));
        let guid = message.guid.clone();
        (guid, self.shared.post_all(body).await)
    }

    /// The recipient's device got a message the Mac sent: `updated-message`, no `chats`.
    pub async fn mark_delivered(&self, guid: &str) -> Vec<Option<u16>> {
        self.update(guid, false).await
    }

    /// The recipient read it.
    pub async fn mark_read(&self, guid: &str) -> Vec<Option<u16>> {
        self.update(guid, true).await
    }

    async fn update(&self, guid: &str, read: bool) -> Vec<Option<u16>> {
        let json = {
            let mut inner = self.shared.lock();
            let now = inner.now_ms();
            let Some(message) = inner.messages.iter_mut().find(|m| m.guid == guid) else {
                return Vec::new();
            };
            message.date_delivered.get_or_insert(now);
            if read {
                message.date_read = Some(now);
            }
            message.json(false)
        };
        self.shared
            .post_all(state::webhook_body("updated-message", json))
            .await
    }

    /// Posts the last webhook body again, as a replayed request would.
    pub async fn repost_last(&self) -> Vec<Option<u16>> {
        let Some(last) = self.shared.lock().deliveries.last().cloned() else {
            return Vec::new();
        };
        self.shared.post_all(last.body).await
    }
}
