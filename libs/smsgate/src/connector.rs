//! Android SMS accounts behind whatsnap's seam. An account is one phone running SMSGate, reached
//! one of three ways ([`Mode`]): the app's local server, the public cloud, or a private server.
//! [`Connector::check`] proves the credentials by registering whatsnap's webhooks (with ids of
//! its own, so registering again replaces them) and seals the credentials and the signing key;
//! [`Connector::send`] queues a text on the phone under whatsnap's message id;
//! [`Connector::find_sent`] reads that id back. The device's health is `crate::session`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whatsnap_connector::{
    AccountRef, Connector, ConnectorError, ConnectorEvent, NewAccount, Outgoing, Pairing, Receipt,
    SendError, Sent, Session, WebhookError as SeamWebhookError, WebhookRequest,
};
use whatsnap_events::{AccountKind, LocationId};
use whatsnap_secrets::{Sealed, SecretKey};

use crate::client::{
    CLOUD_URL, Credentials, SendMessage, SmsGateClient, SmsGateError, TextMessage, WEBHOOK_EVENTS,
    Webhook,
};
use crate::webhook::{self, MAX_BODY_BYTES, WebhookError};

/// The engine's name in events, settings, webhook URLs and the CLI.
pub const ENGINE: &str = "smsgate";

/// The operation name of a send in the log and in fail point names.
pub const SEND: &str = "smsgate.send";

/// What whatsnap tells a user to do about a phone that holds its texts back.
pub const BATTERY_ADVICE: &str = "turn off battery optimisation for SMSGate (Android Settings > \
     Apps > SMSGate > Battery > Unrestricted) and keep the app open";

/// How the deployment drives SMSGate phones.
#[derive(Debug, Clone)]
pub struct SmsGateConfig {
    /// The public cloud's API (`https://api.sms-gate.app/3rdparty/v1`), for accounts in cloud
    /// mode.
    pub cloud_url: String,
    /// Where the phone reaches whatsnap's gateway, e.g. `https://whatsnap.example.com`.
    pub public_url: String,
    /// How long a phone may stay silent (no webhook, no health answer, no `lastSeen`) before
    /// its account shows offline; and how long a text it took may wait to be sent before the
    /// account shows not delivering.
    pub patience: Duration,
    /// How often a session looks at the phone.
    pub poll_interval: Duration,
    /// How long one request to the gateway may take.
    pub request_timeout: Duration,
}

impl SmsGateConfig {
    pub fn new(public_url: &str) -> Self {
        Self {
            cloud_url: CLOUD_URL.to_owned(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            patience: Duration::from_secs(600),
            poll_interval: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// Where the account's gateway is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The app's own server on the phone (`http://<phone ip>:8080`).
    Local,
    /// SMSGate's public cloud.
    Cloud,
    /// A self-hosted `capcom6/sms-gateway`.
    Private,
}

impl Mode {
    fn parse(text: &str) -> Result<Self, ConnectorError> {
        match text.trim() {
            "local" => Ok(Self::Local),
            "cloud" => Ok(Self::Cloud),
            "private" => Ok(Self::Private),
            other => Err(ConnectorError::Invalid(format!(
                "mode {other:?}: SMSGate runs in local, cloud or private mode"
            ))),
        }
    }
}

/// The URL of an account's SMSGate webhook on whatsnap's gateway.
pub fn webhook_url(public_url: &str, location: &LocationId, account_id: Uuid) -> String {
    format!(
        "{}/webhooks/{ENGINE}/{location}/{account_id}",
        public_url.trim_end_matches('/')
    )
}

/// whatsnap's id of the account's webhook for `event`: the same every time, so registering
/// again replaces it.
pub fn webhook_id(account_id: Uuid, event: &str) -> String {
    format!(
        "whatsnap-{}-{}",
        account_id.simple(),
        event.replace(':', "-")
    )
}

/// What a user gives to add an account (`--setting NAME=VALUE`: every value may come as text).
/// No `Debug`: it holds the password and the signing key.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GivenSettings {
    mode: Option<String>,
    /// The phone's local server (local mode) or the private server's API.
    url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    signing_key: Option<String>,
    sim_number: Option<serde_json::Value>,
    device_id: Option<String>,
}

/// What an SMSGate account keeps in its settings (credentials and signing key sealed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsGateSettings {
    pub mode: Mode,
    /// The gateway's API base URL.
    pub url: String,
    pub username: Sealed,
    pub password: Sealed,
    pub signing_key: Sealed,
    /// The SIM texts leave from (1, 2, …), when not the phone's default.
    #[serde(default)]
    pub sim_number: Option<u8>,
    /// The device to send from, on a cloud or private account with several.
    #[serde(default)]
    pub device_id: Option<String>,
}

impl fmt::Debug for SmsGateSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmsGateSettings")
            .field("mode", &self.mode)
            .field("url", &self.url)
            .field("sim_number", &self.sim_number)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl SmsGateSettings {
    pub fn of(settings: &serde_json::Value) -> Result<Self, ConnectorError> {
        serde_json::from_value(settings.clone()).map_err(|e| {
            ConnectorError::Invalid(format!(
                "the account's SMSGate settings are unreadable: {e}"
            ))
        })
    }
}

/// What the sessions and the webhooks of one process know of each phone: when it was last
/// seen, and the texts it took that it has not reported on. A hint beside what the gateway
/// itself says (`/health`, `lastSeen`, `GET /messages/{id}`), which a restart loses.
#[derive(Debug, Default)]
pub(crate) struct Sightings {
    seen: HashMap<Uuid, DateTime<Utc>>,
    /// Per account: message id → when the phone took it.
    pending: HashMap<Uuid, BTreeMap<String, DateTime<Utc>>>,
}

impl Sightings {
    pub(crate) fn saw(&mut self, account_id: Uuid, at: DateTime<Utc>) {
        let seen = self.seen.entry(account_id).or_insert(at);
        *seen = (*seen).max(at);
    }

    pub(crate) fn last_seen(&self, account_id: Uuid) -> Option<DateTime<Utc>> {
        self.seen.get(&account_id).copied()
    }

    pub(crate) fn took(&mut self, account_id: Uuid, message_id: &str, at: DateTime<Utc>) {
        self.pending
            .entry(account_id)
            .or_default()
            .entry(message_id.to_owned())
            .or_insert(at);
    }

    pub(crate) fn reported(&mut self, account_id: Uuid, message_id: &str) {
        if let Some(pending) = self.pending.get_mut(&account_id) {
            pending.remove(message_id);
        }
    }

    /// The texts the phone took before `before` and has not reported on.
    pub(crate) fn waiting_since(&self, account_id: Uuid, before: DateTime<Utc>) -> Vec<String> {
        self.pending
            .get(&account_id)
            .map(|pending| {
                pending
                    .iter()
                    .filter(|(_, at)| **at < before)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The SMSGate engine for Android SMS accounts.
#[derive(Debug, Clone)]
pub struct SmsGateConnector {
    pub(crate) config: SmsGateConfig,
    pub(crate) sightings: Arc<Mutex<Sightings>>,
}

impl SmsGateConnector {
    pub fn new(config: SmsGateConfig) -> Self {
        Self {
            config,
            sightings: Arc::default(),
        }
    }

    pub fn config(&self) -> &SmsGateConfig {
        &self.config
    }

    pub(crate) fn sightings(&self) -> std::sync::MutexGuard<'_, Sightings> {
        self.sightings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client of the account's gateway with its credentials, opened.
    pub(crate) fn client_of(
        &self,
        account: &AccountRef,
    ) -> Result<(SmsGateSettings, SmsGateClient), ConnectorError> {
        let settings = SmsGateSettings::of(&account.settings)?;
        let open = |sealed: &Sealed| {
            account
                .secret_key
                .open(sealed)
                .map(|opened| opened.expose().to_owned())
                .map_err(|e| ConnectorError::Invalid(e.to_string()))
        };
        let credentials = Credentials {
            username: open(&settings.username)?,
            password: open(&settings.password)?,
        };
        let client = SmsGateClient::new(&settings.url, credentials, self.config.request_timeout)
            .map_err(SmsGateError::into_connector_error)?;
        Ok((settings, client))
    }

    /// The webhooks whatsnap keeps on the account's gateway.
    pub(crate) fn webhooks_of(
        &self,
        location: &LocationId,
        account_id: Uuid,
        device_id: Option<&str>,
    ) -> Vec<Webhook> {
        let url = webhook_url(&self.config.public_url, location, account_id);
        WEBHOOK_EVENTS
            .iter()
            .map(|event| Webhook {
                id: webhook_id(account_id, event),
                url: url.clone(),
                event: (*event).to_owned(),
                device_id: device_id.map(str::to_owned),
            })
            .collect()
    }

    /// Registers every webhook of the account (again: the same ids replace the old ones).
    pub(crate) async fn register_webhooks(
        &self,
        client: &SmsGateClient,
        location: &LocationId,
        account_id: Uuid,
        device_id: Option<&str>,
    ) -> Result<(), SmsGateError> {
        for webhook in self.webhooks_of(location, account_id, device_id) {
            client.register_webhook(&webhook).await?;
        }
        Ok(())
    }

    /// The gateway's base URL for what the user gave.
    fn base_url(&self, mode: Mode, url: Option<&str>) -> Result<String, ConnectorError> {
        let url = url.map(str::trim).filter(|u| !u.is_empty());
        let checked = |url: &str| {
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(url.trim_end_matches('/').to_owned())
            } else {
                Err(ConnectorError::Invalid(format!(
                    "url {url:?} must start with http:// or https://"
                )))
            }
        };
        match (mode, url) {
            (Mode::Cloud, None) => Ok(self.config.cloud_url.clone()),
            (Mode::Cloud, Some(_)) => Err(ConnectorError::Invalid(
                "a cloud account takes no url: use mode=private for a server of your own".into(),
            )),
            (Mode::Local, None) => Err(ConnectorError::Invalid(
                "a local account needs the phone's address: url=http://<phone ip>:8080 (the \
                 app shows it under Local server)"
                    .into(),
            )),
            (Mode::Private, None) => Err(ConnectorError::Invalid(
                "a private account needs its server's API: url=https://sms.example.com/api/3rdparty/v1"
                    .into(),
            )),
            (_, Some(url)) => checked(url),
        }
    }

    /// Why the gateway could not be reached when an account was added, with what to check.
    fn unreachable(mode: Mode, error: SmsGateError) -> ConnectorError {
        let hint = match mode {
            Mode::Local => {
                "check that the phone is on, SMSGate's Local server is started, and whatsnap can \
                 reach the phone's address"
            }
            Mode::Cloud | Mode::Private => "check the server's address and try again",
        };
        match error.into_connector_error() {
            ConnectorError::Unavailable(reason) => {
                ConnectorError::Unavailable(format!("{reason}: {hint}"))
            }
            ConnectorError::Refused(reason) if reason.contains("https") => {
                ConnectorError::Refused(format!(
                    "{reason}: SMSGate posts webhooks only to https URLs (the phone also to \
                     http://127.0.0.1): give whatsnap an https --public-url"
                ))
            }
            other => other,
        }
    }
}

/// A text or a SIM number given as a setting.
fn sim_number(value: Option<&serde_json::Value>) -> Result<Option<u8>, ConnectorError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let number = match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match number {
        Some(n @ 1..=4) => Ok(Some(n as u8)),
        _ => Err(ConnectorError::Invalid(format!(
            "sim_number {value}: give the SIM slot, 1 or 2 (as SMSGate numbers them)"
        ))),
    }
}

/// The text of an SMS for a reply: files go as links (SMSGate sends no MMS).
pub fn sms_text(outgoing: &Outgoing) -> String {
    let mut text = outgoing.body.clone();
    for attachment in &outgoing.attachments {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&attachment.url);
    }
    text
}

fn required(value: Option<String>, name: &str, hint: &str) -> Result<String, ConnectorError> {
    value
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ConnectorError::Invalid(format!("{name} is missing: {hint}")))
}

#[async_trait]
impl Connector for SmsGateConnector {
    fn platform(&self) -> AccountKind {
        AccountKind::AndroidSms
    }

    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn send_operation(&self) -> &'static str {
        SEND
    }

    async fn check(
        &self,
        account: &NewAccount,
        settings: serde_json::Value,
        secret_key: &SecretKey,
    ) -> Result<serde_json::Value, ConnectorError> {
        let given: GivenSettings = serde_json::from_value(settings).map_err(|e| {
            ConnectorError::Invalid(format!(
                "SMSGate settings are mode, url, username, password, signing_key, sim_number \
                 and device_id: {e}"
            ))
        })?;
        let mode = Mode::parse(given.mode.as_deref().unwrap_or("cloud"))?;
        let url = self.base_url(mode, given.url.as_deref())?;
        let where_shown = match mode {
            Mode::Local => "the app shows it under Local server",
            Mode::Cloud | Mode::Private => "the app shows it under Cloud server",
        };
        let username = required(given.username, "username", where_shown)?;
        let password = required(given.password, "password", where_shown)?;
        let signing_key = required(
            given.signing_key,
            "signing_key",
            "the app shows it under Settings > Webhooks > Signing Key",
        )?;
        let sim_number = sim_number(given.sim_number.as_ref())?;
        let device_id = given.device_id.filter(|d| !d.trim().is_empty());
        let client = SmsGateClient::new(
            &url,
            Credentials {
                username: username.clone(),
                password: password.clone(),
            },
            self.config.request_timeout,
        )
        .map_err(SmsGateError::into_connector_error)?;
        if mode != Mode::Local {
            let devices = client
                .devices()
                .await
                .map_err(|e| Self::unreachable(mode, e))?;
            match &device_id {
                Some(id) if !devices.iter().any(|d| &d.id == id) => {
                    return Err(ConnectorError::Invalid(format!(
                        "this SMSGate account has no device {id}"
                    )));
                }
                None if devices.is_empty() => {
                    return Err(ConnectorError::Refused(
                        "no phone is signed in to this SMSGate account yet: open SMSGate on \
                         the phone, turn on Cloud server and sign in with these credentials"
                            .into(),
                    ));
                }
                _ => {}
            }
        }
        self.register_webhooks(
            &client,
            &account.location,
            account.account_id,
            device_id.as_deref(),
        )
        .await
        .map_err(|e| Self::unreachable(mode, e))?;
        let settings = SmsGateSettings {
            mode,
            url,
            username: secret_key.seal(&username),
            password: secret_key.seal(&password),
            signing_key: secret_key.seal(&signing_key),
            sim_number,
            device_id,
        };
        Ok(serde_json::to_value(settings).expect("settings serialize"))
    }

    async fn send(&self, account: &AccountRef, outgoing: &Outgoing) -> Result<Sent, SendError> {
        let refused = |e: ConnectorError| SendError::Refused {
            reason: e.to_string(),
            code: None,
        };
        let (settings, client) = self.client_of(account).map_err(refused)?;
        let id = outgoing.message_id.to_string();
        let message = SendMessage {
            id: id.clone(),
            text_message: TextMessage {
                text: sms_text(outgoing),
            },
            phone_numbers: vec![outgoing.to.clone()],
            sim_number: settings.sim_number,
            with_delivery_report: true,
            device_id: settings.device_id.clone(),
        };
        let taken = match client.send(&message).await {
            Ok(state) => state.id,
            // The phone has this id already: an earlier try whose answer was lost.
            Err(SmsGateError::Conflict(_)) => {
                client
                    .message(&id)
                    .await
                    .map_err(SmsGateError::into_send_error)?
                    .id
            }
            Err(error) => return Err(error.into_send_error()),
        };
        self.sightings()
            .took(account.account_id, &taken, Utc::now());
        Ok(Sent {
            provider_message_id: taken,
        })
    }

    async fn find_sent(
        &self,
        account: &AccountRef,
        outgoing: &Outgoing,
        _since: DateTime<Utc>,
    ) -> Result<Option<Sent>, SendError> {
        let (_, client) = self.client_of(account).map_err(|e| SendError::Refused {
            reason: e.to_string(),
            code: None,
        })?;
        match client.message(&outgoing.message_id.to_string()).await {
            Ok(state) => Ok(Some(Sent {
                provider_message_id: state.id,
            })),
            Err(SmsGateError::NotFound(_)) => Ok(None),
            Err(error) => Err(error.into_send_error()),
        }
    }

    fn webhook(
        &self,
        account: &AccountRef,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<ConnectorEvent>, SeamWebhookError> {
        if request.body.len() > MAX_BODY_BYTES {
            return Err(SeamWebhookError::Malformed(format!(
                "an SMSGate webhook is at most {} KiB",
                MAX_BODY_BYTES / 1024
            )));
        }
        let settings = SmsGateSettings::of(&account.settings)
            .map_err(|e| SeamWebhookError::Unreadable(e.to_string()))?;
        let key = account
            .secret_key
            .open(&settings.signing_key)
            .map_err(|e| SeamWebhookError::Unreadable(e.to_string()))?;
        let now = Utc::now();
        webhook::verify(key.expose(), request.headers, request.body, now).map_err(refusal)?;
        let reported = webhook::parse(request.body, settings.sim_number).map_err(refusal)?;
        let mut sightings = self.sightings();
        sightings.saw(account.account_id, now);
        if let Some(ConnectorEvent::Receipt {
            provider_message_id,
            receipt: Receipt::Sent | Receipt::Delivered | Receipt::Failed { .. },
        }) = &reported.event
        {
            sightings.reported(account.account_id, provider_message_id);
        }
        Ok(reported.event.into_iter().collect())
    }

    fn pairing(&self, account: &AccountRef) -> Option<Pairing> {
        let settings = SmsGateSettings::of(&account.settings).ok()?;
        let url = webhook_url(
            &self.config.public_url,
            &account.location,
            account.account_id,
        );
        let server = match settings.mode {
            Mode::Local => format!(
                "In SMSGate, keep \"Local server\" on; whatsnap reaches the phone at {}",
                settings.url
            ),
            Mode::Cloud => {
                "In SMSGate, keep \"Cloud server\" on and signed in with the username and \
                 password you gave whatsnap"
                    .to_owned()
            }
            Mode::Private => format!(
                "In SMSGate, keep \"Cloud server\" on, pointed at your server {}",
                settings.url
            ),
        };
        Some(Pairing {
            steps: vec![
                "Install SMSGate (capcom6/android-sms-gateway) on the Android phone and give it \
                 the SMS permissions it asks for"
                    .to_owned(),
                server,
                format!(
                    "On the phone, {BATTERY_ADVICE}: otherwise Android stops it while the \
                     screen is off and texts wait"
                ),
                format!(
                    "Nothing to type for webhooks: whatsnap registered its own ({}) to {url}, \
                     checked with the app's signing key (Settings > Webhooks > Signing Key)",
                    WEBHOOK_EVENTS.join(", ")
                ),
                "Keep SMSGate running: the account shows connected as soon as the phone is seen"
                    .to_owned(),
            ],
            webhook_url: Some(url),
            secret: None,
        })
    }

    fn session(&self) -> Option<&dyn Session> {
        Some(self)
    }
}

fn refusal(error: WebhookError) -> SeamWebhookError {
    match error {
        WebhookError::Unauthenticated(reason) => SeamWebhookError::Unauthenticated(reason),
        WebhookError::Malformed(reason) => SeamWebhookError::Malformed(reason),
    }
}

#[cfg(test)]
mod tests {
    use whatsnap_events::Attachment;

    use super::*;

    fn connector() -> SmsGateConnector {
        SmsGateConnector::new(SmsGateConfig::new("https://whatsnap.example.com/"))
    }

    #[test]
    fn webhooks_have_ids_of_whatsnaps_own_and_point_at_the_account() {
        let account = Uuid::nil();
        let location = LocationId::parse("loc1").unwrap();
        let hooks = connector().webhooks_of(&location, account, None);
        assert_eq!(hooks.len(), 6);
        assert_eq!(
            hooks[0].url,
            format!("https://whatsnap.example.com/webhooks/smsgate/loc1/{account}")
        );
        assert_eq!(
            hooks[0].id,
            "whatsnap-00000000000000000000000000000000-sms-received"
        );
        let again = connector().webhooks_of(&location, account, None);
        assert_eq!(hooks, again, "the same ids every time");
    }

    #[test]
    fn each_mode_finds_its_gateway() {
        let c = connector();
        assert_eq!(c.base_url(Mode::Cloud, None).unwrap(), CLOUD_URL);
        assert!(c.base_url(Mode::Cloud, Some("https://x")).is_err());
        assert!(c.base_url(Mode::Local, None).is_err());
        assert_eq!(
            c.base_url(Mode::Local, Some("http://192.168.1.20:8080/"))
                .unwrap(),
            "http://192.168.1.20:8080"
        );
        assert!(c.base_url(Mode::Private, Some("sms.example.com")).is_err());
        assert!(Mode::parse("usb").is_err());
    }

    #[test]
    fn a_sim_is_a_slot_number_given_as_text_or_number() {
        assert_eq!(sim_number(Some(&"2".into())).unwrap(), Some(2));
        assert_eq!(sim_number(Some(&serde_json::json!(1))).unwrap(), Some(1));
        assert!(sim_number(Some(&"0".into())).is_err());
        assert!(sim_number(Some(&"two".into())).is_err());
        assert_eq!(sim_number(None).unwrap(), None);
    }

    #[test]
    fn files_travel_as_links_in_the_text() {
        let outgoing = Outgoing {
            message_id: Uuid::nil(),
            to: "+14155550100".into(),
            body: "Your quote".into(),
            attachments: vec![Attachment {
                url: "https://files.example.com/q.pdf".into(),
                content_type: None,
                file_name: None,
            }],
            typing: Duration::ZERO,
        };
        assert_eq!(
            sms_text(&outgoing),
            "Your quote\nhttps://files.example.com/q.pdf"
        );
    }

    #[test]
    fn texts_wait_until_the_phone_reports_on_them() {
        let mut sightings = Sightings::default();
        let account = Uuid::now_v7();
        let t0 = Utc::now();
        sightings.took(account, "m1", t0);
        sightings.took(account, "m2", t0 + chrono::Duration::seconds(10));
        let later = t0 + chrono::Duration::seconds(5);
        assert_eq!(sightings.waiting_since(account, later), ["m1"]);
        sightings.reported(account, "m1");
        assert!(sightings.waiting_since(account, later).is_empty());
        sightings.saw(account, t0);
        sightings.saw(account, t0 - chrono::Duration::seconds(1));
        assert_eq!(sightings.last_seen(account), Some(t0), "never goes back");
    }
}
