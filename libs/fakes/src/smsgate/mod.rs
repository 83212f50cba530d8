//! A fake SMSGate (`capcom6/android-sms-gateway`), as `connectors.md` §3.1 and §6a describe it:
//! an Android phone's local server (routes at the root) or the public cloud (routes under
//! `/3rdparty/v1`, with `GET /devices`), behind HTTP Basic auth. It refuses what SMSGate
//! refuses — wrong credentials (401), a body without text or numbers (400), an id it holds
//! already (409), a webhook event it does not know or, on the cloud, a webhook URL that is not
//! https (400), an unknown message or webhook (404) — and posts webhooks from the phone as the
//! app does: one event per POST, `X-Timestamp` in unix seconds and `X-Signature` the lowercase
//! hex HMAC-SHA256 of body + timestamp under the app's signing key, retried on failure (up to
//! 15 tries, doubling from a base of 5 s, signed anew each time).
//!
//! Tests drive the phone: [`FakeSmsGate::receive`] (an SMS arrives), [`FakeSmsGate::ping`],
//! [`FakeSmsGate::deliver`] / [`FakeSmsGate::fail`] (the carrier's report); a text whatsnap
//! queues is sent by the phone at once (`sms:sent`) unless [`FakeSmsGate::hold_sends`] plays a
//! battery saver holding the app back; [`FakeSmsGate::go_offline`] makes the phone silent (its
//! local server stops answering, the cloud's `lastSeen` stops moving).

mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;

/// The events a webhook may be registered for (`smsgateway.WebhookEvent`).
pub const EVENTS: [&str; 8] = [
    "sms:received",
    "sms:sent",
    "sms:delivered",
    "sms:failed",
    "sms:data-received",
    "mms:received",
    "mms:downloaded",
    "system:ping",
];

/// Where the fake gateway runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeSmsGateMode {
    /// The app's server on the phone: routes at the root, `GET /health`.
    Local,
    /// The public cloud: routes under `/3rdparty/v1`, `GET /devices`; https webhooks only.
    Cloud,
}

/// How the phone misbehaves on a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeSmsGateFault {
    /// Takes the message (and sends it), then never answers: the client times out not knowing.
    AcceptThenHang,
}

/// A text the gateway took.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeSmsGateMessage {
    pub id: String,
    pub text: String,
    pub phone_numbers: Vec<String>,
    pub sim_number: Option<u8>,
    pub with_delivery_report: bool,
    /// `Pending`, `Processed`, `Sent`, `Delivered` or `Failed`.
    pub state: String,
    /// How many SMS parts the text goes out in.
    pub parts: u32,
    /// The request body as sent.
    pub body: Value,
}

/// A webhook registered on the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSmsGateWebhook {
    pub id: String,
    pub url: String,
    pub event: String,
    pub device_id: Option<String>,
}

/// One POST the phone made to a webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeSmsGateDelivery {
    pub event: String,
    pub url: String,
    pub body: Value,
    /// 1 for the first try.
    pub attempt: u32,
    /// What the webhook answered; `None` when it could not be reached.
    pub status: Option<u16>,
}

pub(crate) struct Inner {
    pub mode: FakeSmsGateMode,
    pub username: String,
    pub password: String,
    pub signing_key: String,
    pub device_id: String,
    pub webhooks: BTreeMap<String, FakeSmsGateWebhook>,
    pub messages: Vec<FakeSmsGateMessage>,
    pub deliveries: Vec<FakeSmsGateDelivery>,
    pub online: bool,
    pub last_seen: DateTime<Utc>,
    pub hold_sends: bool,
    pub fault: Option<FakeSmsGateFault>,
    pub retry_base: Duration,
    pub seq: u64,
}

impl Inner {
    pub(crate) fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub(crate) fn message_json(&self, message: &FakeSmsGateMessage) -> Value {
        json!({
            "id": message.id,
            "deviceId": self.device_id,
            "state": message.state,
            "isHashed": false,
            "isEncrypted": false,
            "recipients": message.phone_numbers.iter().map(|n| json!({
                "phoneNumber": n, "state": message.state,
            })).collect::<Vec<_>>(),
            "states": { message.state.clone(): Utc::now().to_rfc3339() },
        })
    }

    /// The device as the cloud lists it.
    pub(crate) fn device_json(&self) -> Value {
        let last_seen = if self.online {
            Utc::now()
        } else {
            self.last_seen
        };
        json!({
            "id": self.device_id,
            "name": "Pixel 7",
            "createdAt": "2026-01-05T10:00:00Z",
            "updatedAt": last_seen.to_rfc3339(),
            "lastSeen": last_seen.to_rfc3339(),
        })
    }
}

#[derive(Clone)]
pub(crate) struct Shared {
    inner: Arc<Mutex<Inner>>,
    client: reqwest::Client,
}

impl Shared {
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("fake smsgate lock"))
    }

    /// Posts `event` with `payload` to every webhook registered for it, as the phone does; the
    /// first try's answer per webhook (retries go on in the background).
    pub(crate) async fn emit(&self, event: &str, payload: Value) -> Vec<Option<u16>> {
        let (hooks, device) = self.with(|inner| {
            let hooks: Vec<FakeSmsGateWebhook> = inner
                .webhooks
                .values()
                .filter(|w| w.event == event)
                .cloned()
                .collect();
            (hooks, inner.device_id.clone())
        });
        let mut answers = Vec::new();
        for hook in hooks {
            let seq = self.with(Inner::next);
            let body = json!({
                "id": format!("evt{seq:08}"),
                "webhookId": hook.id,
                "deviceId": device,
                "event": event,
                "payload": payload,
            });
            answers.push(self.post_with_retries(&hook.url, event, body).await);
        }
        answers
    }

    /// Posts one body, then retries it in the background while it fails.
    pub(crate) async fn post_with_retries(
        &self,
        url: &str,
        event: &str,
        body: Value,
    ) -> Option<u16> {
        let first = self.post(url, event, &body, 1).await;
        if !first.is_some_and(|s| (200..300).contains(&s)) {
            let shared = self.clone();
            let (url, event) = (url.to_owned(), event.to_owned());
            tokio::spawn(async move {
                let base = shared.with(|inner| inner.retry_base);
                for attempt in 2..=15u32 {
                    tokio::time::sleep(base * 2u32.pow((attempt - 2).min(10))).await;
                    let status = shared.post(&url, &event, &body, attempt).await;
                    if status.is_some_and(|s| (200..300).contains(&s)) {
                        return;
                    }
                }
            });
        }
        first
    }

    /// One signed POST, recorded.
    pub(crate) async fn post(
        &self,
        url: &str,
        event: &str,
        body: &Value,
        attempt: u32,
    ) -> Option<u16> {
        let raw = serde_json::to_vec(body).expect("json");
        let key = self.with(|inner| inner.signing_key.clone());
        let timestamp = Utc::now().timestamp().to_string();
        let status = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("x-timestamp", &timestamp)
            .header("x-signature", sign(&key, &raw, &timestamp))
            .body(raw)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16());
        self.with(|inner| {
            inner.deliveries.push(FakeSmsGateDelivery {
                event: event.to_owned(),
                url: url.to_owned(),
                body: body.clone(),
                attempt,
                status,
            })
        });
        status
    }

    /// The phone sends a text it took: `sms:sent`, unless a battery saver holds it back.
    pub(crate) fn send_later(&self, id: String) {
        let shared = self.clone();
        tokio::spawn(async move {
            let Some((number, parts)) = shared.with(|inner| {
                if inner.hold_sends {
                    return None;
                }
                let message = inner.messages.iter_mut().find(|m| m.id == id)?;
                message.state = "Sent".to_owned();
                Some((message.phone_numbers.first()?.clone(), message.parts))
            }) else {
                return;
            };
            shared
                .emit(
                    "sms:sent",
                    json!({
                        "messageId": id, "phoneNumber": number, "partsCount": parts,
                        "sentAt": Utc::now().to_rfc3339(),
                    }),
                )
                .await;
        });
    }
}

/// The signature SMSGate puts on a webhook body sent at `timestamp`.
pub fn sign(key: &str, body: &[u8], timestamp: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key");
    mac.update(body);
    mac.update(timestamp.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How many SMS parts a text takes: GSM-7 (160, or 153 a part) for plain text, UCS-2 (70, or
/// 67 a part) for anything else.
pub fn sms_parts(text: &str) -> u32 {
    let gsm = text
        .chars()
        .all(|c| c.is_ascii_graphic() || c == ' ' || c == '\n' || c == '\r');
    let (single, part) = if gsm { (160, 153) } else { (70, 67) };
    let units = if gsm {
        text.chars().count()
    } else {
        text.encode_utf16().count()
    };
    if units <= single {
        1
    } else {
        units.div_ceil(part) as u32
    }
}

/// A running fake SMSGate on 127.0.0.1; stops when dropped.
pub struct FakeSmsGate {
    addr: SocketAddr,
    shared: Shared,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSmsGate {
    pub const USERNAME: &'static str = "7GHKQ2";
    pub const PASSWORD: &'static str = "fake-smsgate-password";
    pub const SIGNING_KEY: &'static str = "fake-smsgate-signing-key";
    pub const DEVICE_ID: &'static str = "dev-fake-pixel-7";

    /// The phone's local server.
    pub async fn start_local() -> anyhow::Result<Self> {
        Self::start(FakeSmsGateMode::Local).await
    }

    /// The public cloud with one signed-in phone.
    pub async fn start_cloud() -> anyhow::Result<Self> {
        Self::start(FakeSmsGateMode::Cloud).await
    }

    async fn start(mode: FakeSmsGateMode) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                mode,
                username: Self::USERNAME.to_owned(),
                password: Self::PASSWORD.to_owned(),
                signing_key: Self::SIGNING_KEY.to_owned(),
                device_id: Self::DEVICE_ID.to_owned(),
                webhooks: BTreeMap::new(),
                messages: Vec::new(),
                deliveries: Vec::new(),
                online: true,
                last_seen: Utc::now(),
                hold_sends: false,
                fault: None,
                retry_base: Duration::from_secs(5),
                seq: 0,
            })),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        let (shutdown, task) = serve(listener, &shared);
        Ok(Self {
            addr,
            shared,
            shutdown,
            task,
        })
    }

    /// The API's base URL, as an account is given it.
    pub fn base_url(&self) -> String {
        match self.shared.with(|inner| inner.mode) {
            FakeSmsGateMode::Local => format!("http://{}", self.addr),
            FakeSmsGateMode::Cloud => format!("http://{}/3rdparty/v1", self.addr),
        }
    }

    // ---- configuration ------------------------------------------------------------------

    /// The first pause before a failed webhook is tried again (5 s in the app).
    pub fn set_retry_base(&self, base: Duration) {
        self.shared.with(|inner| inner.retry_base = base);
    }

    /// A battery saver holds the app back: texts are taken (202) but stay `Pending`.
    pub fn hold_sends(&self, hold: bool) {
        self.shared.with(|inner| inner.hold_sends = hold);
        if !hold {
            let pending: Vec<String> = self.shared.with(|inner| {
                inner
                    .messages
                    .iter()
                    .filter(|m| m.state == "Pending")
                    .map(|m| m.id.clone())
                    .collect()
            });
            for id in pending {
                self.shared.send_later(id);
            }
        }
    }

    /// Makes the next sends misbehave (`None`: behave again).
    pub fn set_fault(&self, fault: Option<FakeSmsGateFault>) {
        self.shared.with(|inner| inner.fault = fault);
    }

    /// The phone goes silent: its local server stops answering (the listener closes), the
    /// cloud's `lastSeen` stops moving.
    pub fn go_offline(&self) {
        let mode = self.shared.with(|inner| {
            inner.online = false;
            inner.last_seen = Utc::now();
            inner.mode
        });
        if mode == FakeSmsGateMode::Local {
            let _ = self.shutdown.send(true);
        }
    }

    /// The phone is back, with everything it held.
    pub async fn come_online(&mut self) -> anyhow::Result<()> {
        let mode = self.shared.with(|inner| {
            inner.online = true;
            inner.mode
        });
        if mode == FakeSmsGateMode::Local {
            let listener = TcpListener::bind(self.addr).await?;
            let (shutdown, task) = serve(listener, &self.shared);
            self.task.abort();
            self.shutdown = shutdown;
            self.task = task;
        }
        Ok(())
    }

    // ---- the phone ----------------------------------------------------------------------

    /// An SMS from `from` (E.164) arrives on SIM `sim`: `sms:received` to each webhook for it;
    /// the message id and the first try's answers.
    pub async fn receive(&self, from: &str, text: &str, sim: u8) -> (String, Vec<Option<u16>>) {
        let seq = self.shared.with(Inner::next);
        let id = format!("rcv{seq:08}");
        let answers = self
            .shared
            .emit(
                "sms:received",
                json!({
                    "messageId": id, "message": text, "phoneNumber": from, "sender": from,
                    "simNumber": sim, "receivedAt": Utc::now().to_rfc3339(),
                }),
            )
            .await;
        (id, answers)
    }

    /// Posts the last delivery again, signed anew (the app retrying it).
    pub async fn redeliver_last(&self) -> Option<u16> {
        let last = self.shared.with(|inner| inner.deliveries.last().cloned())?;
        self.shared
            .post(&last.url, &last.event, &last.body, last.attempt + 1)
            .await
    }

    /// `system:ping`, as the app sends it at its ping interval.
    pub async fn ping(&self) -> Vec<Option<u16>> {
        self.shared
            .emit("system:ping", json!({ "health": { "status": "pass" } }))
            .await
    }

    /// The carrier reports the text delivered: `sms:delivered`.
    pub async fn deliver(&self, id: &str) -> Vec<Option<u16>> {
        let number = self.set_state(id, "Delivered");
        self.shared
            .emit(
                "sms:delivered",
                json!({ "messageId": id, "phoneNumber": number, "deliveredAt": Utc::now().to_rfc3339() }),
            )
            .await
    }

    /// The phone could not send the text: `sms:failed` with the reason.
    pub async fn fail(&self, id: &str, reason: &str) -> Vec<Option<u16>> {
        let number = self.set_state(id, "Failed");
        self.shared
            .emit(
                "sms:failed",
                json!({ "messageId": id, "phoneNumber": number, "reason": reason, "failedAt": Utc::now().to_rfc3339() }),
            )
            .await
    }

    fn set_state(&self, id: &str, state: &str) -> String {
        self.shared.with(|inner| {
            inner
                .messages
                .iter_mut()
                .find(|m| m.id == id)
                .map(|m| {
                    m.state = state.to_owned();
                    m.phone_numbers.first().cloned().unwrap_or_default()
                })
                .unwrap_or_default()
        })
    }

    // ---- what happened ------------------------------------------------------------------

    pub fn messages(&self) -> Vec<FakeSmsGateMessage> {
        self.shared.with(|inner| inner.messages.clone())
    }

    pub fn webhooks(&self) -> Vec<FakeSmsGateWebhook> {
        self.shared
            .with(|inner| inner.webhooks.values().cloned().collect())
    }

    pub fn deliveries(&self) -> Vec<FakeSmsGateDelivery> {
        self.shared.with(|inner| inner.deliveries.clone())
    }
}

fn serve(
    listener: TcpListener,
    shared: &Shared,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (shutdown, mut stopped) = tokio::sync::watch::channel(false);
    let app = server::router(shared.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
            .await;
    });
    (shutdown, task)
}

impl Drop for FakeSmsGate {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_go_in_parts() {
        assert_eq!(sms_parts("hello"), 1);
        assert_eq!(sms_parts(&"a".repeat(160)), 1);
        assert_eq!(sms_parts(&"a".repeat(161)), 2);
        assert_eq!(sms_parts(&"a".repeat(307)), 3);
        assert_eq!(sms_parts(&"é".repeat(70)), 1);
        assert_eq!(sms_parts(&"é".repeat(71)), 2);
    }
}
