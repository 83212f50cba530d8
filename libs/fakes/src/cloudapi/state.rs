//! What the fake Cloud API holds — numbers, media, what was sent, the customer service windows,
//! what it posted — and how it posts a webhook as Meta does: the `whatsapp_business_account`
//! envelope, `X-Hub-Signature-256` over the raw body with the app secret, and retries while
//! the callback does not answer 200.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{FakeCloudDelivery, FakeCloudSent, SendFault};

pub(crate) struct Number {
    pub id: String,
    pub waba_id: String,
    /// As Meta displays it: `+1 555-000-1111`.
    pub display: String,
    pub verified_name: String,
    pub token: String,
    pub app_secret: String,
    /// The callback URL saved in the app dashboard, once Meta's check of it passed.
    pub callback: Option<String>,
    /// Templates approved for the number: (name, language).
    pub templates: Vec<(String, String)>,
}

pub(crate) struct Media {
    pub number_id: String,
    pub mime_type: String,
    pub bytes: Vec<u8>,
}

pub(crate) struct Inner {
    pub base_url: String,
    pub numbers: BTreeMap<String, Number>,
    pub media: BTreeMap<String, Media>,
    pub sent: Vec<FakeCloudSent>,
    pub deliveries: Vec<FakeCloudDelivery>,
    /// When each customer last wrote to each number: (number id, wa_id).
    pub windows: HashMap<(String, String), DateTime<Utc>>,
    pub send_fault: Option<SendFault>,
    /// How many times an unanswered webhook is posted again, and the first pause.
    pub retries: u32,
    pub retry_base: Duration,
    pub seq: u64,
}

impl Inner {
    pub fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A new `wamid`, shaped like Meta's.
    pub fn wamid(&mut self) -> String {
        format!("wamid.FAKE{:016X}", self.next())
    }

    /// The number a bearer token may act for.
    pub fn number_of_token(&self, token: &str) -> Option<&Number> {
        self.numbers.values().find(|n| n.token == token)
    }

    /// Whether the customer wrote to the number in the last 24 hours.
    pub fn window_open(&self, number_id: &str, wa_id: &str) -> bool {
        self.windows
            .get(&(number_id.to_owned(), wa_id.to_owned()))
            .is_some_and(|at| Utc::now() - *at < chrono::Duration::hours(24))
    }
}

#[derive(Clone)]
pub(crate) struct Shared {
    inner: Arc<Mutex<Inner>>,
    client: reqwest::Client,
}

impl Shared {
    pub fn new(inner: Inner) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .user_agent("facebookexternalua")
                .build()?,
        })
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Posts one change of `field` about `number_id` to the number's callback; the first
    /// attempt's answer (`None`: not reachable, or no callback saved). An attempt not answered
    /// 200 is made again in the background, with doubling pauses.
    pub async fn deliver(&self, number_id: &str, field: &str, value: Value) -> Option<u16> {
        let (url, secret, waba) = self.with(|inner| {
            let number = inner.numbers.get(number_id)?;
            Some((
                number.callback.clone()?,
                number.app_secret.clone(),
                number.waba_id.clone(),
            ))
        })?;
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [{ "id": waba, "changes": [{ "value": value, "field": field }] }],
        })
        .to_string();
        let answered = self.post(&url, &secret, &body, 1).await;
        if answered != Some(200) {
            let shared = self.clone();
            tokio::spawn(async move { shared.retry(&url, &secret, &body).await });
        }
        answered
    }

    async fn retry(&self, url: &str, secret: &str, body: &str) {
        let (retries, mut pause) = self.with(|inner| (inner.retries, inner.retry_base));
        for attempt in 2..=retries + 1 {
            tokio::time::sleep(pause).await;
            pause *= 2;
            if self.post(url, secret, body, attempt).await == Some(200) {
                return;
            }
        }
    }

    /// One signed POST, recorded.
    pub async fn post(&self, url: &str, secret: &str, body: &str, attempt: u32) -> Option<u16> {
        let status = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sign(secret, body.as_bytes()))
            .body(body.to_owned())
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16());
        self.with(|inner| {
            inner.deliveries.push(FakeCloudDelivery {
                url: url.to_owned(),
                body: serde_json::from_str(body).unwrap_or(Value::Null),
                attempt,
                status,
            })
        });
        status
    }

    /// The `statuses[]` webhook of a sent message.
    pub async fn status(&self, wamid: &str, status: &str, errors: Option<Value>) -> Option<u16> {
        let (number_id, to, display) = self.with(|inner| {
            let sent = inner.sent.iter().find(|m| m.id == wamid)?;
            let number = inner.numbers.get(&sent.number_id)?;
            Some((
                sent.number_id.clone(),
                sent.to.clone(),
                number.display.clone(),
            ))
        })?;
        let mut item = json!({
            "id": wamid,
            "status": status,
            "timestamp": Utc::now().timestamp().to_string(),
            "recipient_id": to,
        });
        if let Some(errors) = errors {
            item["errors"] = errors;
        }
        let value = json!({
            "messaging_product": "whatsapp",
            "metadata": metadata(&display, &number_id),
            "statuses": [item],
        });
        self.deliver(&number_id, "messages", value).await
    }
}

/// `value.metadata` of a number's webhooks.
pub(crate) fn metadata(display: &str, number_id: &str) -> Value {
    let digits: String = display.chars().filter(char::is_ascii_digit).collect();
    json!({ "display_phone_number": digits, "phone_number_id": number_id })
}

/// `sha256=<hex HMAC-SHA256(app secret, body)>`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key size");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}
