//! A fake Evolution API v2 server (2.3.6 with Baileys 7), as `connectors.md` §2.2 and §6a
//! describe it and its source shows: the global `apikey` and per-instance tokens, checked after
//! the instance exists (404 first); instances created, connected, logged out and deleted; QR
//! codes that rotate (each said to last 45 s, up to a limit, then `refused`); sends recorded and
//! refused as Evolution refuses them (a body its JSON schema rejects, a number not on WhatsApp, a
//! closed link); webhooks delivered to each instance's URL with the instance token in `apikey`
//! and, when the webhook headers hold a `jwt_key`, an HS256 bearer token.
//!
//! Tests drive the phone's side: [`FakeEvolution::scan`] links the device,
//! [`FakeEvolution::receive`] and [`FakeEvolution::type_on_phone`] post `messages.upsert`,
//! [`FakeEvolution::mark_delivered`] / [`FakeEvolution::mark_read`] post `messages.update`,
//! [`FakeEvolution::disconnect`] closes the link. Time is the test's: a QR code rotates when
//! [`FakeEvolution::rotate_qr`] says so, not on a timer.
//!
//! Choices where Evolution's behaviour is not certain are marked in the code; the main one: a
//! send on a closed link answers 500 with Boom's `Connection Closed`.

mod phone;
mod server;
mod state;

pub use state::{sign_jwt, sign_jwt_claims};

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use serde_json::Value;
use tokio::net::TcpListener;

use state::{Inner, Instance, Shared};

/// The integrations Evolution knows (`wa.types.ts`).
pub const INTEGRATIONS: [&str; 3] = ["WHATSAPP-BAILEYS", "WHATSAPP-BUSINESS", "EVOLUTION"];

/// Evolution's default `QRCODE_LIMIT`.
pub const DEFAULT_QRCODE_LIMIT: u32 = 30;

/// How the fake misbehaves on sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFault {
    /// Never answers, and sends nothing: the client times out.
    Hang,
    /// Takes the message (it is sent and stored), then never answers: the client times out
    /// not knowing.
    AcceptThenHang,
}

/// An instance, as the fake holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeEvolutionInstance {
    pub id: String,
    pub name: String,
    /// Its API key (`hash` in the create answer).
    pub token: String,
    pub integration: String,
    /// `open`, `connecting` or `close`.
    pub state: String,
    /// The linked account's JID, once scanned.
    pub owner_jid: Option<String>,
    pub profile_name: Option<String>,
    pub webhook: Option<FakeEvolutionWebhook>,
    /// QR codes issued in the current linking attempt.
    pub qr_count: u32,
    /// The current QR code's payload.
    pub qr_code: Option<String>,
    pub pairing_code: Option<String>,
}

/// An instance's webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeEvolutionWebhook {
    pub enabled: bool,
    pub url: String,
    pub headers: serde_json::Map<String, Value>,
    pub by_events: bool,
    pub base64: bool,
    /// UPPER_SNAKE event names.
    pub events: Vec<String>,
}

/// A message the fake accepted through `sendText` or `sendMedia`.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeEvolutionSent {
    pub instance: String,
    /// `key.id`.
    pub id: String,
    /// The recipient's JID.
    pub remote_jid: String,
    /// `text` or `media`.
    pub kind: String,
    /// The request body as sent.
    pub body: Value,
}

impl FakeEvolutionSent {
    pub fn text(&self) -> Option<&str> {
        self.body
            .get("text")
            .or_else(|| self.body.get("caption"))
            .and_then(Value::as_str)
    }
}

/// One webhook POST the fake made.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeEvolutionDelivery {
    pub instance: String,
    /// Dotted lowercase, as in the body.
    pub event: String,
    pub url: String,
    pub body: Value,
    /// The `Authorization` header, when a `jwt_key` made one.
    pub authorization: Option<String>,
    /// What the webhook answered; `None` when it could not be reached.
    pub status: Option<u16>,
}

/// Who sends a message to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeSender {
    /// Known by phone number (E.164), optionally with its LID beside it.
    Phone { phone: String, lid: Option<String> },
    /// Known by LID (digits), optionally with the phone number beside it.
    Lid { lid: String, phone: Option<String> },
}

/// A medium attached to a received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeMedia {
    /// `image`, `video`, `audio` or `document`.
    pub kind: String,
    pub mimetype: String,
    pub data: Vec<u8>,
    pub file_name: Option<String>,
}

/// A message arriving on the phone, for [`FakeEvolution::receive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeEvolutionIncoming {
    pub from: FakeSender,
    pub push_name: Option<String>,
    pub text: Option<String>,
    pub media: Option<FakeMedia>,
    /// Write the other form of the sender as Baileys 6 did (`senderPn` / `senderLid`), not
    /// Baileys 7's `remoteJidAlt` and `addressingMode`.
    pub baileys6: bool,
    /// The chat it arrives in, when not the sender's own: a group (`…@g.us`) or
    /// `status@broadcast`.
    pub chat: Option<String>,
}

impl FakeEvolutionIncoming {
    /// A text from a phone number (E.164).
    pub fn text(from: &str, text: &str) -> Self {
        Self {
            from: FakeSender::Phone {
                phone: from.to_owned(),
                lid: None,
            },
            push_name: None,
            text: Some(text.to_owned()),
            media: None,
            baileys6: false,
            chat: None,
        }
    }

    pub fn push_name(mut self, name: &str) -> Self {
        self.push_name = Some(name.to_owned());
        self
    }

    /// The sender is known by LID (digits, without `@lid`), with its phone beside it or not.
    pub fn from_lid(mut self, lid: &str, phone: Option<&str>) -> Self {
        self.from = FakeSender::Lid {
            lid: lid.to_owned(),
            phone: phone.map(str::to_owned),
        };
        self
    }

    /// The sender is known by phone, with its LID beside it.
    pub fn with_lid(mut self, lid: &str) -> Self {
        if let FakeSender::Phone { lid: l, .. } = &mut self.from {
            *l = Some(lid.to_owned());
        }
        self
    }

    pub fn baileys6(mut self) -> Self {
        self.baileys6 = true;
        self
    }

    pub fn in_chat(mut self, jid: &str) -> Self {
        self.chat = Some(jid.to_owned());
        self
    }

    /// Attaches a medium; the text becomes its caption.
    pub fn media(
        mut self,
        kind: &str,
        mimetype: &str,
        data: &[u8],
        file_name: Option<&str>,
    ) -> Self {
        self.media = Some(FakeMedia {
            kind: kind.to_owned(),
            mimetype: mimetype.to_owned(),
            data: data.to_vec(),
            file_name: file_name.map(str::to_owned),
        });
        self
    }
}

/// A running fake Evolution API on 127.0.0.1; stops when dropped or [`FakeEvolution::stop`]ped.
pub struct FakeEvolution {
    addr: SocketAddr,
    shared: Shared,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeEvolution {
    /// The global API key (`AUTHENTICATION_API_KEY`) the fake accepts.
    pub const GLOBAL_API_KEY: &'static str = "fake-evolution-global-key";

    /// Starts the fake on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Shared::new(Inner {
            global_key: Self::GLOBAL_API_KEY.to_owned(),
            instances: BTreeMap::new(),
            sent: Vec::new(),
            deliveries: Vec::new(),
            qrcode_limit: DEFAULT_QRCODE_LIMIT,
            expose_apikey: true,
            not_on_whatsapp: HashSet::new(),
            fail_next_sends: 0,
            send_fault: None,
            server_url: format!("http://{addr}"),
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

    /// Starts answering again on the same address, with everything it held (as Evolution
    /// restarting with its database).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let listener = TcpListener::bind(self.addr).await?;
        let (shutdown, task) = serve(listener, &self.shared);
        self.task.abort();
        self.shutdown = shutdown;
        self.task = task;
        Ok(())
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops answering: the listener closes and idle connections are dropped, so clients see
    /// the server gone.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    // ---- configuration ------------------------------------------------------------------

    /// `QRCODE_LIMIT`: how many QR codes one linking attempt issues before `refused`.
    pub fn set_qrcode_limit(&self, limit: u32) {
        self.shared.with(|inner| inner.qrcode_limit = limit);
    }

    /// `AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES` (true in Evolution's `.env.example`): without
    /// it webhook bodies carry `apikey: null`.
    pub fn set_expose_apikey(&self, expose: bool) {
        self.shared.with(|inner| inner.expose_apikey = expose);
    }

    /// `number` (E.164 or digits) has no WhatsApp account: sends to it are refused.
    pub fn set_not_on_whatsapp(&self, number: &str) {
        let digits = number.trim_start_matches('+').to_owned();
        self.shared
            .with(|inner| inner.not_on_whatsapp.insert(digits));
    }

    /// The next `count` sends fail with HTTP 500 after nothing was sent.
    pub fn fail_next_sends(&self, count: usize) {
        self.shared.with(|inner| inner.fail_next_sends = count);
    }

    /// Makes every send misbehave (`None`: behave again).
    pub fn set_send_fault(&self, fault: Option<SendFault>) {
        self.shared.with(|inner| inner.send_fault = fault);
    }

    /// Creates an instance directly (as if made earlier by someone else); returns its token.
    pub fn add_instance(&self, name: &str) -> String {
        self.shared.with(|inner| {
            let seq = inner.next();
            let token = format!("FAKE-TOKEN-{seq:08}-{}", name.to_uppercase());
            inner.instances.insert(
                name.to_owned(),
                server::new_instance(seq, name, &token, "WHATSAPP-BAILEYS", None),
            );
            token
        })
    }

    // ---- what happened ------------------------------------------------------------------

    pub fn instance(&self, name: &str) -> Option<FakeEvolutionInstance> {
        self.shared
            .with(|inner| inner.instances.get(name).map(Instance::public))
    }

    pub fn sent(&self) -> Vec<FakeEvolutionSent> {
        self.shared.with(|inner| inner.sent.clone())
    }

    pub fn deliveries(&self) -> Vec<FakeEvolutionDelivery> {
        self.shared.with(|inner| inner.deliveries.clone())
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

impl Drop for FakeEvolution {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}
