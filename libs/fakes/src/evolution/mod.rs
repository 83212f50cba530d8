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

mod server;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    Close,
    Connecting,
    Open,
}

impl LinkState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Close => "close",
            Self::Connecting => "connecting",
            Self::Open => "open",
        }
    }
}

pub(crate) struct Instance {
    pub id: String,
    pub name: String,
    pub token: String,
    pub integration: String,
    pub number: Option<String>,
    pub state: LinkState,
    pub owner_jid: Option<String>,
    pub profile_name: Option<String>,
    pub webhook: Option<FakeEvolutionWebhook>,
    pub qr_count: u32,
    pub qr_code: Option<String>,
    pub pairing_code: Option<String>,
    /// Messages as Evolution stores them (`findMessages` reads them).
    pub messages: Vec<Value>,
    /// Baileys' status code when Evolution gave up on the link.
    pub disconnection_reason: Option<u16>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl Instance {
    pub(crate) fn public(&self) -> FakeEvolutionInstance {
        FakeEvolutionInstance {
            id: self.id.clone(),
            name: self.name.clone(),
            token: self.token.clone(),
            integration: self.integration.clone(),
            state: self.state.as_str().to_owned(),
            owner_jid: self.owner_jid.clone(),
            profile_name: self.profile_name.clone(),
            webhook: self.webhook.clone(),
            qr_count: self.qr_count,
            qr_code: self.qr_code.clone(),
            pairing_code: self.pairing_code.clone(),
        }
    }

    /// The `connectionState` answer.
    pub(crate) fn state_json(&self) -> Value {
        json!({ "instance": { "instanceName": self.name, "state": self.state.as_str() } })
    }

    /// The `wa.QrCode` answer.
    pub(crate) fn qr_json(&self) -> Value {
        json!({
            "pairingCode": self.pairing_code,
            "code": self.qr_code,
            "base64": self.qr_code.as_ref().map(|code| qr_png_data_url(code)),
            "count": self.qr_count,
        })
    }

    /// A row of `fetchInstances`.
    pub(crate) fn row_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "connectionStatus": self.state.as_str(),
            "ownerJid": self.owner_jid,
            "profileName": self.profile_name,
            "profilePicUrl": null,
            "integration": self.integration,
            "number": self.number,
            "businessId": null,
            "token": self.token,
            "clientName": "evolution_exchange",
            "disconnectionReasonCode": self.disconnection_reason,
            "disconnectionObject": null,
            "disconnectionAt": null,
            "createdAt": self.created_at.to_rfc3339(),
            "updatedAt": self.created_at.to_rfc3339(),
            "Chatwoot": null, "Proxy": null, "Rabbitmq": null, "Nats": null, "Sqs": null,
            "Websocket": null, "Setting": null,
            "_count": { "Message": self.messages.len(), "Contact": 0, "Chat": 0 },
        })
    }

    /// A new QR code for this linking attempt.
    pub(crate) fn issue_qr(&mut self, seq: u64) {
        self.qr_count += 1;
        self.qr_code = Some(format!(
            "2@fake{seq:06}{},fakeNoiseKey{}=,fakeIdentityKey=,fakeAdvSecret=",
            self.qr_count, self.id
        ));
        self.pairing_code = self
            .number
            .as_ref()
            .map(|_| format!("{:04}{:04}", seq % 10_000, self.qr_count % 10_000));
    }
}

/// Not a real PNG: a data URL whose bytes name the code, which is all a test looks at.
fn qr_png_data_url(code: &str) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(code)
    )
}

pub(crate) struct Inner {
    pub global_key: String,
    pub instances: BTreeMap<String, Instance>,
    pub sent: Vec<FakeEvolutionSent>,
    pub deliveries: Vec<FakeEvolutionDelivery>,
    pub qrcode_limit: u32,
    /// `AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES`: the instance token goes in webhook bodies.
    pub expose_apikey: bool,
    pub not_on_whatsapp: HashSet<String>,
    pub fail_next_sends: usize,
    pub send_fault: Option<SendFault>,
    pub server_url: String,
    pub seq: u64,
}

impl Inner {
    pub(crate) fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A message id as WhatsApp Web makes them.
    pub(crate) fn message_id(&mut self) -> String {
        format!("3EB0{:016X}", self.next() * 7919 + 0xA1B2C3)
    }

    /// The POST a webhook event makes, when the instance's webhook wants it: URL, body, JWT.
    pub(crate) fn webhook_post(
        &mut self,
        instance: &str,
        event: &str,
        data: Value,
    ) -> Option<(String, Value, Option<String>)> {
        let expose = self.expose_apikey;
        let server_url = self.server_url.clone();
        let instance = self.instances.get(instance)?;
        let webhook = instance.webhook.as_ref().filter(|w| w.enabled)?;
        let upper = event.replace(['.', '-'], "_").to_uppercase();
        if !webhook.events.is_empty() && !webhook.events.contains(&upper) {
            return None;
        }
        let url = if webhook.by_events {
            format!("{}/{}", webhook.url, upper.replace('_', "-").to_lowercase())
        } else {
            webhook.url.clone()
        };
        let authorization = webhook
            .headers
            .get("jwt_key")
            .and_then(Value::as_str)
            .map(|key| format!("Bearer {}", sign_jwt(key, chrono::Utc::now().timestamp())));
        let mut body = json!({
            "event": event,
            "instance": instance.name,
            "data": data,
            "destination": webhook.url,
            "date_time": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            "server_url": server_url,
            "apikey": if expose { Value::String(instance.token.clone()) } else { Value::Null },
        });
        // `sender` is absent until the instance has been open once.
        if let Some(owner) = &instance.owner_jid {
            body["sender"] = json!(owner);
        }
        Some((url, body, authorization))
    }
}

/// An HS256 JWT as Evolution makes it for webhooks (`jsonwebtoken.sign`, key as UTF-8).
pub fn sign_jwt(key: &str, iat: i64) -> String {
    sign_jwt_claims(
        key,
        &json!({ "iat": iat, "exp": iat + 600, "app": "evolution", "action": "webhook" }),
    )
}

/// An HS256 JWT of any claims, for tests of refusals.
pub fn sign_jwt_claims(key: &str, claims: &Value) -> String {
    use hmac::Mac as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64.encode(claims.to_string());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(format!("{header}.{payload}").as_bytes());
    let signature = b64.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{signature}")
}

#[derive(Clone)]
pub(crate) struct Shared {
    inner: Arc<Mutex<Inner>>,
    client: reqwest::Client,
}

impl Shared {
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("fake evolution lock"))
    }

    /// Posts `event` to the instance's webhook, if it wants it, and records the delivery.
    pub(crate) async fn deliver(&self, instance: &str, event: &str, data: Value) -> Option<u16> {
        let (url, body, authorization) =
            self.with(|inner| inner.webhook_post(instance, event, data))?;
        self.post(instance, event, url, body, authorization).await
    }

    async fn post(
        &self,
        instance: &str,
        event: &str,
        url: String,
        body: Value,
        authorization: Option<String>,
    ) -> Option<u16> {
        let mut request = self.client.post(&url).json(&body);
        if let Some(auth) = &authorization {
            request = request.header("authorization", auth);
        }
        let status = request.send().await.ok().map(|r| r.status().as_u16());
        self.with(|inner| {
            inner.deliveries.push(FakeEvolutionDelivery {
                instance: instance.to_owned(),
                event: event.to_owned(),
                url,
                body,
                authorization,
                status,
            })
        });
        status
    }

    /// Delivers in the background, as Evolution does for what an API call sets off.
    pub(crate) fn deliver_later(&self, instance: &str, events: Vec<(&'static str, Value)>) {
        let shared = self.clone();
        let instance = instance.to_owned();
        tokio::spawn(async move {
            for (event, data) in events {
                shared.deliver(&instance, event, data).await;
            }
        });
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
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
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
            })),
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
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

    // ---- the phone's side ---------------------------------------------------------------

    fn instance_state(&self, name: &str) -> anyhow::Result<LinkState> {
        self.shared
            .with(|inner| inner.instances.get(name).map(|i| i.state))
            .ok_or_else(|| anyhow::anyhow!("no instance {name}"))
    }

    /// The current QR code's time is up: the next one is issued and posted
    /// (`qrcode.updated`); after `QRCODE_LIMIT` codes, the limit message and
    /// `connection.update` `refused` are posted instead and the instance closes. Returns the
    /// new code, or `None` once refused.
    pub async fn rotate_qr(&self, instance: &str) -> anyhow::Result<Option<String>> {
        if self.instance_state(instance)? != LinkState::Connecting {
            anyhow::bail!("instance {instance} is not linking");
        }
        let issued = self.shared.with(|inner| {
            let limit = inner.qrcode_limit;
            let seq = inner.next();
            let i = inner.instances.get_mut(instance).expect("checked above");
            if i.qr_count >= limit {
                i.state = LinkState::Close;
                i.qr_code = None;
                i.pairing_code = None;
                None
            } else {
                i.issue_qr(seq);
                Some((i.qr_code.clone(), i.qr_json()))
            }
        });
        match issued {
            Some((code, qr)) => {
                self.shared
                    .deliver(instance, "qrcode.updated", qr_webhook_data(instance, &qr))
                    .await;
                Ok(code)
            }
            None => {
                self.shared
                    .deliver(
                        instance,
                        "qrcode.updated",
                        json!({ "message": "QR code limit reached, please login again", "statusCode": 500 }),
                    )
                    .await;
                self.shared
                    .deliver(
                        instance,
                        "connection.update",
                        json!({
                            "instance": instance, "state": "refused", "statusReason": 428,
                            "wuid": null, "profileName": null, "profilePictureUrl": null,
                        }),
                    )
                    .await;
                Ok(None)
            }
        }
    }

    /// The phone with `phone` (E.164) scans the current QR code: the link opens and
    /// `connection.update` `open` is posted. Returns what the webhook answered.
    pub async fn scan(
        &self,
        instance: &str,
        phone: &str,
        profile_name: &str,
    ) -> anyhow::Result<Option<u16>> {
        if self.instance_state(instance)? != LinkState::Connecting {
            anyhow::bail!("instance {instance} shows no QR code to scan");
        }
        let wuid = format!("{}@s.whatsapp.net", phone.trim_start_matches('+'));
        self.shared.with(|inner| {
            let i = inner.instances.get_mut(instance).expect("checked above");
            i.state = LinkState::Open;
            i.disconnection_reason = None;
            i.owner_jid = Some(wuid.clone());
            i.profile_name = Some(profile_name.to_owned());
            i.qr_code = None;
            i.pairing_code = None;
            i.qr_count = 0;
        });
        Ok(self
            .shared
            .deliver(
                instance,
                "connection.update",
                json!({
                    "instance": instance, "wuid": wuid, "profileName": profile_name,
                    "profilePictureUrl": null, "state": "open", "statusReason": 200,
                }),
            )
            .await)
    }

    /// WhatsApp closes the link with Baileys' `statusReason`. For the codes Evolution does not
    /// reconnect after (401 logged out, 403 forbidden, 402, 406) it posts `logout.instance` and
    /// `connection.update` `close`; for the others it reconnects by itself, which shows as
    /// `connecting` (see [`FakeEvolution::reconnect`]).
    pub async fn disconnect(&self, instance: &str, status_reason: u16) -> anyhow::Result<()> {
        if self.instance_state(instance)? != LinkState::Open {
            anyhow::bail!("instance {instance} is not open");
        }
        let terminal = matches!(status_reason, 401 | 402 | 403 | 406);
        self.shared.with(|inner| {
            let i = inner.instances.get_mut(instance).expect("checked above");
            i.state = if terminal {
                i.disconnection_reason = Some(status_reason);
                LinkState::Close
            } else {
                LinkState::Connecting
            };
        });
        if terminal {
            self.shared
                .deliver(instance, "logout.instance", Value::Null)
                .await;
            self.shared
                .deliver(
                    instance,
                    "connection.update",
                    json!({ "instance": instance, "state": "close", "statusReason": status_reason }),
                )
                .await;
        } else {
            self.shared
                .deliver(
                    instance,
                    "connection.update",
                    json!({ "instance": instance, "state": "connecting", "statusReason": 200 }),
                )
                .await;
        }
        Ok(())
    }

    /// A link Evolution was reconnecting opens again.
    pub async fn reconnect(&self, instance: &str) -> anyhow::Result<Option<u16>> {
        let (wuid, name) = self
            .shared
            .with(|inner| {
                let i = inner.instances.get_mut(instance)?;
                i.state = LinkState::Open;
                Some((i.owner_jid.clone(), i.profile_name.clone()))
            })
            .ok_or_else(|| anyhow::anyhow!("no instance {instance}"))?;
        Ok(self
            .shared
            .deliver(
                instance,
                "connection.update",
                json!({
                    "instance": instance, "wuid": wuid, "profileName": name,
                    "profilePictureUrl": null, "state": "open", "statusReason": 200,
                }),
            )
            .await)
    }

    /// The device is unlinked from the phone (as a logout through the API does).
    pub async fn logout(&self, instance: &str) -> anyhow::Result<()> {
        self.disconnect(instance, 401).await
    }

    /// A message arrives: `messages.upsert` is posted. Returns its id and what the webhook
    /// answered.
    pub async fn receive(
        &self,
        instance: &str,
        incoming: FakeEvolutionIncoming,
    ) -> anyhow::Result<(String, Option<u16>)> {
        if self.instance_state(instance)? != LinkState::Open {
            anyhow::bail!("instance {instance} is not open");
        }
        let (id, data) = self.shared.with(|inner| {
            let id = inner.message_id();
            let i = inner.instances.get_mut(instance).expect("checked above");
            let base64 = i.webhook.as_ref().is_some_and(|w| w.base64);
            let data = server::received_message(i, &id, &incoming, base64);
            (id, data)
        });
        Ok((
            id,
            self.shared.deliver(instance, "messages.upsert", data).await,
        ))
    }

    /// The account's owner types `text` to `to` (E.164) on the phone: `messages.upsert` with
    /// `key.fromMe` is posted. Returns its id and what the webhook answered.
    pub async fn type_on_phone(
        &self,
        instance: &str,
        to: &str,
        text: &str,
    ) -> anyhow::Result<(String, Option<u16>)> {
        if self.instance_state(instance)? != LinkState::Open {
            anyhow::bail!("instance {instance} is not open");
        }
        let (id, data) = self.shared.with(|inner| {
            let id = inner.message_id();
            let i = inner.instances.get_mut(instance).expect("checked above");
            let data = server::typed_message(i, &id, to, text);
            (id, data)
        });
        Ok((
            id,
            self.shared.deliver(instance, "messages.upsert", data).await,
        ))
    }

    /// A sent message reached the recipient's phone: `messages.update` `DELIVERY_ACK`.
    pub async fn mark_delivered(&self, message_id: &str) -> anyhow::Result<Option<u16>> {
        self.update_status(message_id, "DELIVERY_ACK").await
    }

    /// The recipient read a sent message: `messages.update` `READ`.
    pub async fn mark_read(&self, message_id: &str) -> anyhow::Result<Option<u16>> {
        self.update_status(message_id, "READ").await
    }

    /// Posts `messages.update` with `status` (`SERVER_ACK`, `DELIVERY_ACK`, `READ`, `PLAYED`,
    /// `ERROR`) for a message the fake sent.
    pub async fn update_status(
        &self,
        message_id: &str,
        status: &str,
    ) -> anyhow::Result<Option<u16>> {
        let found = self.shared.with(|inner| {
            let sent = inner.sent.iter().find(|s| s.id == message_id)?.clone();
            let instance_id = inner.instances.get(&sent.instance)?.id.clone();
            Some((sent, instance_id))
        });
        let Some((sent, instance_id)) = found else {
            anyhow::bail!("no message {message_id} was sent");
        };
        Ok(self
            .shared
            .deliver(
                &sent.instance,
                "messages.update",
                json!({
                    "keyId": sent.id,
                    "remoteJid": sent.remote_jid,
                    "fromMe": true,
                    "participant": null,
                    "status": status,
                    "instanceId": instance_id,
                    "messageId": format!("cm{}", sent.id.to_lowercase()),
                }),
            )
            .await)
    }

    /// Posts the instance's last webhook body again, as Evolution's retries do.
    pub async fn redeliver_last(&self, instance: &str) -> anyhow::Result<Option<u16>> {
        let last = self.shared.with(|inner| {
            inner
                .deliveries
                .iter()
                .rev()
                .find(|d| d.instance == instance)
                .cloned()
        });
        let Some(last) = last else {
            anyhow::bail!("nothing was delivered for {instance}");
        };
        Ok(self
            .shared
            .post(
                instance,
                &last.event,
                last.url,
                last.body,
                last.authorization,
            )
            .await)
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

/// `qrcode.updated`'s `data`.
pub(crate) fn qr_webhook_data(instance: &str, qr: &Value) -> Value {
    json!({
        "qrcode": {
            "instance": instance,
            "pairingCode": qr["pairingCode"],
            "code": qr["code"],
            "base64": qr["base64"],
        }
    })
}

impl Drop for FakeEvolution {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}
