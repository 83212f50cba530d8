//! What the fake holds — instances, what was sent, what was posted — and how it posts a webhook
//! as Evolution does (`WebhookController.emit`): the body, the `apikey`, the JWT of a `jwt_key`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    FakeEvolutionDelivery, FakeEvolutionInstance, FakeEvolutionSent, FakeEvolutionWebhook,
    SendFault,
};

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
    /// `connectionState` answers `close` this many more times, whatever the state.
    pub closed_looks: u32,
    /// `connectionState` calls answered.
    pub state_looks: u64,
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
    pub(crate) fn new(inner: Inner) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()?,
        })
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("fake evolution lock"))
    }

    /// Posts `event` to the instance's webhook, if it wants it, and records the delivery.
    pub(crate) async fn deliver(&self, instance: &str, event: &str, data: Value) -> Option<u16> {
        let (url, body, authorization) =
            self.with(|inner| inner.webhook_post(instance, event, data))?;
        self.post(instance, event, url, body, authorization).await
    }

    pub(crate) async fn post(
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
