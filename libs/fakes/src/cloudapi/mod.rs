//! A fake WhatsApp Cloud API (Meta's Graph API for WhatsApp Business numbers), as
//! `connectors.md` §2.3 and Meta's reference describe it: numbers with their access token and
//! app secret; `GET /{version}/{id}` for a number's record or a received medium's (its download
//! URL needs the same token); `POST /{version}/{phone-number-id}/messages` for text, media
//! links and approved templates, refused as Graph refuses (a bad or missing token, another
//! number's id, a body without `messaging_product`, a missing `text.body`, an unknown
//! template). Free-form messages outside the 24-hour customer service window are taken and
//! then fail with a `statuses[]` webhook carrying 131047, as Meta does.
//!
//! Webhooks: the app dashboard's "Verify and save" ([`FakeCloudApi::subscribe`]) checks the
//! callback URL with `hub.mode=subscribe`, `hub.challenge` and `hub.verify_token`; afterwards
//! every notification is posted there signed `X-Hub-Signature-256` with the app secret, and
//! posted again (doubling pauses) while it is not answered 200. Tests play the customer and
//! the number's owner: [`FakeCloudApi::receive`], [`FakeCloudApi::type_on_app`] (the WhatsApp
//! Business app on the same number: `smb_message_echoes`), [`FakeCloudApi::mark_delivered`],
//! [`FakeCloudApi::mark_read`], [`FakeCloudApi::close_window`].
//!
//! The Cloud API has no idempotency key on sends and no way to list what a number sent; the
//! fake has neither.

mod server;
mod state;

pub use state::sign;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use state::{Inner, Media, Number, Shared, metadata};

/// How the fake misbehaves on sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFault {
    /// Never answers, and sends nothing.
    Hang,
    /// Takes the message (it leaves, and its statuses follow), then never answers.
    AcceptThenHang,
}

/// A number the fake serves, with what its owner holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCloudNumber {
    pub phone_number_id: String,
    pub waba_id: String,
    /// As Meta displays it, e.g. `+1 555-000-1111`.
    pub display_phone_number: String,
    pub access_token: String,
    pub app_secret: String,
}

/// A message the fake took through `/messages`.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeCloudSent {
    /// Its `wamid`.
    pub id: String,
    pub number_id: String,
    /// The recipient's digits.
    pub to: String,
    /// `text`, `image`, `document`, `template`, …
    pub kind: String,
    /// The request body as sent.
    pub body: Value,
}

impl FakeCloudSent {
    /// The text, or a medium's caption.
    pub fn text(&self) -> Option<&str> {
        self.body
            .pointer("/text/body")
            .or_else(|| self.body.get(&self.kind).and_then(|m| m.get("caption")))
            .and_then(Value::as_str)
    }
}

/// One webhook POST the fake made.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeCloudDelivery {
    pub url: String,
    pub body: Value,
    /// 1 for the first try.
    pub attempt: u32,
    /// What the callback answered; `None` when it could not be reached.
    pub status: Option<u16>,
}

/// A file a customer sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCloudMedia {
    /// `image`, `video`, `audio`, `document` or `sticker`.
    pub kind: String,
    pub mime_type: String,
    pub bytes: Vec<u8>,
    pub file_name: Option<String>,
}

/// A running fake Cloud API on 127.0.0.1; stops when dropped or [`FakeCloudApi::stop`]ped.
pub struct FakeCloudApi {
    addr: SocketAddr,
    shared: Shared,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeCloudApi {
    /// The Graph API version the fake's examples use (any `vN.M` is served).
    pub const VERSION: &'static str = "v24.0";

    /// Starts the fake on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Shared::new(Inner {
            base_url: format!("http://{addr}"),
            numbers: BTreeMap::new(),
            media: BTreeMap::new(),
            sent: Vec::new(),
            deliveries: Vec::new(),
            windows: HashMap::new(),
            send_fault: None,
            retries: 5,
            retry_base: Duration::from_millis(500),
            seq: 0,
        })?;
        let (shutdown, task) = serve(listener, &shared);
        Ok(Self {
            addr,
            shared,
            shutdown,
            task,
        })
    }

    /// Starts answering again on the same address, with everything it held.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let listener = TcpListener::bind(self.addr).await?;
        let (shutdown, task) = serve(listener, &self.shared);
        self.task.abort();
        self.shutdown = shutdown;
        self.task = task;
        Ok(())
    }

    /// What `--cloud-graph-url` points at.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops answering: the listener closes, so clients see the Graph API gone.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    // ---- configuration ------------------------------------------------------------------

    /// A WhatsApp Business number displayed as `display` (e.g. `+1 555-000-1111`).
    pub fn add_number(&self, display: &str, verified_name: &str) -> FakeCloudNumber {
        self.shared.with(|inner| {
            let seq = inner.next();
            let number = Number {
                id: format!("1065403522{seq:05}"),
                waba_id: format!("1022901293{seq:05}"),
                display: display.to_owned(),
                verified_name: verified_name.to_owned(),
                token: format!("EAAGfake{seq:04}Token{}", "x".repeat(40)),
                app_secret: format!("{seq:04}fakeappsecret0000000000000000"),
                callback: None,
                templates: Vec::new(),
            };
            let public = FakeCloudNumber {
                phone_number_id: number.id.clone(),
                waba_id: number.waba_id.clone(),
                display_phone_number: number.display.clone(),
                access_token: number.token.clone(),
                app_secret: number.app_secret.clone(),
            };
            inner.numbers.insert(number.id.clone(), number);
            public
        })
    }

    /// A template approved for the number, in `language` (e.g. `en_US`).
    pub fn approve_template(&self, number_id: &str, name: &str, language: &str) {
        self.shared.with(|inner| {
            if let Some(number) = inner.numbers.get_mut(number_id) {
                number
                    .templates
                    .push((name.to_owned(), language.to_owned()));
            }
        });
    }

    /// Makes every send misbehave (`None`: behave again).
    pub fn set_send_fault(&self, fault: Option<SendFault>) {
        self.shared.with(|inner| inner.send_fault = fault);
    }

    /// How often, and after what first pause, an unanswered webhook is posted again.
    pub fn set_retries(&self, retries: u32, first_pause: Duration) {
        self.shared.with(|inner| {
            inner.retries = retries;
            inner.retry_base = first_pause;
        });
    }

    /// The customer (E.164) last wrote more than 24 hours ago.
    pub fn close_window(&self, number_id: &str, customer: &str) {
        let wa_id = customer.trim_start_matches('+').to_owned();
        self.shared.with(|inner| {
            inner.windows.insert(
                (number_id.to_owned(), wa_id),
                Utc::now() - chrono::Duration::hours(25),
            )
        });
    }

    /// "Verify and save" in the app dashboard: Meta checks `callback` with a challenge and the
    /// verify token, and keeps it only when the challenge comes back with 200.
    pub async fn subscribe(
        &self,
        number_id: &str,
        callback: &str,
        verify_token: &str,
    ) -> anyhow::Result<()> {
        let challenge = format!("{}", 1_000_000_000 + self.shared.with(|i| i.next()));
        let answer = self
            .shared
            .client()
            .get(callback)
            .query(&[
                ("hub.mode", "subscribe"),
                ("hub.challenge", challenge.as_str()),
                ("hub.verify_token", verify_token),
            ])
            .send()
            .await?;
        let status = answer.status();
        let text = answer.text().await?;
        if !status.is_success() || text != challenge {
            anyhow::bail!(
                "the callback URL or verify token couldn't be validated: answered {status} {text:?}"
            );
        }
        self.shared.with(|inner| {
            if let Some(number) = inner.numbers.get_mut(number_id) {
                number.callback = Some(callback.to_owned());
            }
        });
        Ok(())
    }

    // ---- the customer and the owner -----------------------------------------------------

    /// A customer (E.164) writes to the number (opening the service window): its `wamid` and
    /// what the callback answered the first time.
    pub async fn receive(
        &self,
        number_id: &str,
        from: &str,
        name: &str,
        text: &str,
    ) -> (String, Option<u16>) {
        let message = json!({ "type": "text", "text": { "body": text } });
        self.post_message(number_id, from, name, message).await
    }

    /// A customer sends a file, `caption` with it.
    pub async fn receive_media(
        &self,
        number_id: &str,
        from: &str,
        name: &str,
        media: FakeCloudMedia,
        caption: Option<&str>,
    ) -> (String, Option<u16>) {
        let media_id = self.shared.with(|inner| {
            let id = format!("{}", 900_000_000 + inner.next());
            inner.media.insert(
                id.clone(),
                Media {
                    number_id: number_id.to_owned(),
                    mime_type: media.mime_type.clone(),
                    bytes: media.bytes.clone(),
                },
            );
            id
        });
        let mut part = json!({ "id": media_id, "mime_type": media.mime_type, "sha256": "fake" });
        if let Some(caption) = caption {
            part["caption"] = caption.into();
        }
        if let Some(name) = &media.file_name {
            part["filename"] = name.clone().into();
        }
        let mut message = json!({ "type": media.kind });
        message[&media.kind] = part;
        self.post_message(number_id, from, name, message).await
    }

    async fn post_message(
        &self,
        number_id: &str,
        from: &str,
        name: &str,
        mut message: Value,
    ) -> (String, Option<u16>) {
        let wa_id = from.trim_start_matches('+').to_owned();
        let (wamid, display) = self.shared.with(|inner| {
            inner
                .windows
                .insert((number_id.to_owned(), wa_id.clone()), Utc::now());
            let display = inner
                .numbers
                .get(number_id)
                .map(|n| n.display.clone())
                .unwrap_or_default();
            (inner.wamid(), display)
        });
        message["from"] = wa_id.clone().into();
        message["id"] = wamid.clone().into();
        message["timestamp"] = Utc::now().timestamp().to_string().into();
        let value = json!({
            "messaging_product": "whatsapp",
            "metadata": metadata(&display, number_id),
            "contacts": [{ "profile": { "name": name }, "wa_id": wa_id }],
            "messages": [message],
        });
        let answered = self.shared.deliver(number_id, "messages", value).await;
        (wamid, answered)
    }

    /// The owner types a message in the WhatsApp Business app on the same number.
    pub async fn type_on_app(
        &self,
        number_id: &str,
        to: &str,
        text: &str,
    ) -> (String, Option<u16>) {
        let (wamid, display) = self.shared.with(|inner| {
            let display = inner
                .numbers
                .get(number_id)
                .map(|n| n.display.clone())
                .unwrap_or_default();
            (inner.wamid(), display)
        });
        let digits: String = display.chars().filter(char::is_ascii_digit).collect();
        let value = json!({
            "messaging_product": "whatsapp",
            "metadata": metadata(&display, number_id),
            "message_echoes": [{
                "from": digits,
                "to": to.trim_start_matches('+'),
                "id": wamid,
                "timestamp": Utc::now().timestamp().to_string(),
                "type": "text",
                "text": { "body": text },
            }],
        });
        let answered = self
            .shared
            .deliver(number_id, "smb_message_echoes", value)
            .await;
        (wamid, answered)
    }

    /// The recipient's phone got the message.
    pub async fn mark_delivered(&self, wamid: &str) -> Option<u16> {
        self.shared.status(wamid, "delivered", None).await
    }

    /// The recipient read it.
    pub async fn mark_read(&self, wamid: &str) -> Option<u16> {
        self.shared.status(wamid, "read", None).await
    }

    /// Posts the last delivery's body again, as a retry of Meta's would.
    pub async fn redeliver_last(&self) -> Option<u16> {
        let last = self.shared.with(|inner| inner.deliveries.last().cloned())?;
        let secret = self.shared.with(|inner| {
            inner
                .numbers
                .values()
                .find(|n| n.callback.as_deref() == Some(last.url.as_str()))
                .map(|n| n.app_secret.clone())
        })?;
        self.shared
            .post(&last.url, &secret, &last.body.to_string(), last.attempt + 1)
            .await
    }

    // ---- what happened ------------------------------------------------------------------

    pub fn sent(&self) -> Vec<FakeCloudSent> {
        self.shared.with(|inner| inner.sent.clone())
    }

    pub fn deliveries(&self) -> Vec<FakeCloudDelivery> {
        self.shared.with(|inner| inner.deliveries.clone())
    }

    /// The callback URL saved for the number, once verified.
    pub fn callback(&self, number_id: &str) -> Option<String> {
        self.shared
            .with(|inner| inner.numbers.get(number_id)?.callback.clone())
    }
}

/// Serves the fake's routes on `listener` until the returned sender says stop.
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

impl Drop for FakeCloudApi {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}
