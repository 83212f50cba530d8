//! [`EmbeddedConnector`]: the `whatsapp-rust` client behind whatsnap's connector seam. One
//! [`Session::run`] per account drives a [`Bot`] whose device lives in [`SealedDeviceStore`];
//! sends go through the account's running client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;
use whatsapp_rust::bot::{Bot, EventDelivery};
use whatsapp_rust::pair_code::PairCodeOptions;
use whatsapp_rust::types::events::{Event, EventKind};
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::{Client, Jid};
use whatsnap_connector::{
    AccountRef, Connector, ConnectorError, ConnectorEvent, DisconnectReason, Ended, LinkMethod,
    NewAccount, Outgoing, Pacing, SendError, Sent, Session,
};
use whatsnap_events::{AccountKind, Attachment};
use whatsnap_secrets::{SecretError, SecretKey};

use crate::media;
use crate::network::{Network, SharedHttp, SharedTransport};
use crate::outbound;
use crate::run::{Lookups, drive};
use crate::store::SealedDeviceStore;
use crate::translate::{OwnIdentity, file_of};

/// The crate's events a session listens to; the client skips building the others.
const KINDS: &[EventKind] = &[
    EventKind::Connected,
    EventKind::Disconnected,
    EventKind::PairSuccess,
    EventKind::PairError,
    EventKind::LoggedOut,
    EventKind::PairingQrCode,
    EventKind::PairingCode,
    EventKind::PairingCodeError,
    EventKind::PairingCodeRefresh,
    EventKind::PairingQrCodesExhausted,
    EventKind::ClientOutdated,
    EventKind::Messages,
    EventKind::Receipt,
    EventKind::StreamReplaced,
    EventKind::TemporaryBan,
    EventKind::ConnectFailure,
];

/// The engine's name in events, settings and the CLI.
pub const ENGINE: &str = "embedded";

/// The name of a send in the log and in fail point names.
pub const SEND: &str = "embedded.send";

/// How many of the client's events may wait for the session before the client drops some
/// (the crate's ordered delivery never blocks its receive loop).
const EVENT_MAILBOX: usize = 4096;

/// How long downloading one received file may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a stopping client gets to flush its state before it is aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Tuning of the embedded engine.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// The largest attachment a reply may carry (WhatsApp itself refuses documents over 2 GB
    /// and media over 16 MB; whatsnap holds each attachment in memory to encrypt it).
    pub max_attachment_bytes: usize,
    /// How long fetching one attachment may take.
    pub attachment_timeout: Duration,
    /// How long a logout of an account without a live session waits for WhatsApp.
    pub logout_timeout: Duration,
    /// The largest file a received message may bring in (whatsnap's media store keeps 16 MB);
    /// a larger one arrives as a note of what came.
    pub max_inbound_file_bytes: u64,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            max_attachment_bytes: 64 * 1024 * 1024,
            attachment_timeout: Duration::from_secs(60),
            logout_timeout: Duration::from_secs(30),
            max_inbound_file_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Why the embedded engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the whatsapp device table: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the http client for attachments: {0}")]
    Http(#[from] reqwest::Error),
}

/// WhatsApp by QR code, in process, on the `whatsapp-rust` crate (engine `embedded`).
///
/// Not run against WhatsApp's servers where it was written (no internet there): the translation
/// of the crate's events and the device store are tested; the link itself is not.
pub struct EmbeddedConnector {
    db: sqlx::AnyPool,
    key: SecretKey,
    http: reqwest::Client,
    config: EmbeddedConfig,
    /// The running client of each account with a live session: what `send` goes through.
    live: Mutex<HashMap<Uuid, Arc<Client>>>,
    /// Where clients connect, when not to WhatsApp's servers.
    network: Option<Network>,
}

impl EmbeddedConnector {
    /// The connector over whatsnap's read database `db`, where each account's device is kept
    /// sealed with `key`; creates the device table when it is missing.
    pub async fn new(
        db: sqlx::AnyPool,
        key: SecretKey,
        config: EmbeddedConfig,
    ) -> Result<Self, StartError> {
        SealedDeviceStore::migrate(&db).await?;
        let http = media::http_client(config.attachment_timeout)?;
        Ok(Self {
            db,
            key,
            http,
            config,
            live: Mutex::new(HashMap::new()),
            network: None,
        })
    }

    /// Clients connect through `network` instead of to WhatsApp's servers (tests).
    pub fn with_network(mut self, network: Network) -> Self {
        self.network = Some(network);
        self
    }

    /// The store of an account's device.
    pub fn store(&self, account_id: Uuid) -> SealedDeviceStore {
        SealedDeviceStore::new(self.db.clone(), self.key.clone(), account_id)
    }

    /// Whether the account has a running session.
    pub fn is_live(&self, account_id: Uuid) -> bool {
        self.live_map().contains_key(&account_id)
    }

    fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Client>>> {
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn live_client(&self, account_id: Uuid) -> Option<Arc<Client>> {
        self.live_map().get(&account_id).cloned()
    }

    /// Forgets the account's client, if it is still this one (a newer run may have replaced it).
    fn retire(&self, account_id: Uuid, client: &Arc<Client>) {
        let mut live = self.live_map();
        if live
            .get(&account_id)
            .is_some_and(|current| Arc::ptr_eq(current, client))
        {
            live.remove(&account_id);
        }
    }
}

#[async_trait]
impl Connector for EmbeddedConnector {
    fn platform(&self) -> AccountKind {
        AccountKind::Whatsapp
    }

    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn send_operation(&self) -> &'static str {
        SEND
    }

    /// Nothing to check: the account has no credentials until its device is linked.
    async fn check(
        &self,
        _account: &NewAccount,
        _settings: serde_json::Value,
        _secret_key: &SecretKey,
    ) -> Result<serde_json::Value, ConnectorError> {
        Ok(serde_json::json!({}))
    }

    /// Sends the reply through the account's running session: the text alone, or each
    /// attachment (fetched from its URL and uploaded to WhatsApp's media servers) as its own
    /// message, the text as the first one's caption where WhatsApp shows one. The first
    /// message's id is the one receipts report. Every attachment is fetched and uploaded before
    /// anything is sent, so a failure there sends nothing.
    async fn send(&self, account: &AccountRef, outgoing: &Outgoing) -> Result<Sent, SendError> {
        let client = self.live_client(account.account_id).ok_or_else(|| {
            SendError::NotConnected("the whatsapp account has no running session".into())
        })?;
        if !client.is_logged_in() {
            return Err(SendError::NotConnected(
                "the whatsapp link of the account is not open".into(),
            ));
        }
        outbound::send(
            &client,
            &self.http,
            self.config.max_attachment_bytes,
            outgoing,
        )
        .await
    }

    async fn find_sent(
        &self,
        _account: &AccountRef,
        _outgoing: &Outgoing,
        _since: DateTime<Utc>,
    ) -> Result<Option<Sent>, SendError> {
        // WhatsApp offers no way to list what a device sent.
        Ok(None)
    }

    /// Unofficial clients that send fast, regular bursts are what WhatsApp bans first.
    fn default_pacing(&self) -> Pacing {
        Pacing::WHATSAPP
    }

    fn session(&self) -> Option<&dyn Session> {
        Some(self)
    }
}

/// What the session asks the account's client: the files messages carry, the numbers behind
/// LIDs.
struct ClientLookups {
    client: Arc<Client>,
    max_bytes: u64,
}

#[async_trait]
impl Lookups for ClientLookups {
    async fn phone_of(&self, lid: &str) -> Option<String> {
        let user = lid.strip_suffix("@lid")?;
        match self.client.get_lid_pn_entry(&Jid::lid(user)).await {
            Ok(Some(entry)) => {
                let digits = entry.phone_number.as_ref();
                (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| format!("+{digits}"))
            }
            Ok(None) => None,
            Err(err) => {
                warn!(error = %err, "the number behind a lid could not be looked up");
                None
            }
        }
    }

    async fn attachment(&self, message: &wa::Message) -> Option<Attachment> {
        let file = file_of(message)?;
        let length = file.media.file_length().unwrap_or(0);
        if length > self.max_bytes {
            warn!(length, "an inbound file is too large to keep");
            return None;
        }
        // Bounded: the session reports nothing else meanwhile, and a stop waits for it.
        match tokio::time::timeout(DOWNLOAD_TIMEOUT, self.client.download(file.media)).await {
            Ok(Ok(bytes)) => Some(file.attachment(&bytes)),
            Ok(Err(err)) => {
                warn!(error = %err, "an inbound file could not be downloaded");
                None
            }
            Err(_) => {
                warn!("an inbound file took too long to download");
                None
            }
        }
    }
}

/// Why a client did not start: a device sealed with another key waits for a user (trying again
/// will not open it, and forgetting it could wipe a link a misconfigured replica cannot read);
/// anything else is the database, worth trying again.
fn not_started(err: &(dyn std::error::Error + 'static)) -> Ended {
    let mut source = Some(err);
    while let Some(cause) = source {
        if let Some(SecretError::WrongKey) = cause.downcast_ref::<SecretError>() {
            return Ended {
                reason: DisconnectReason::LoggedOut,
                detail: "the account's device is sealed with another secret key: restore \
                         WHATSNAP_SECRET_KEY, or log the account out and scan again"
                    .into(),
            };
        }
        source = cause.source();
    }
    Ended {
        reason: DisconnectReason::EngineUnavailable,
        detail: format!("the whatsapp client did not start: {err}"),
    }
}

fn own_identity(client: &Client) -> OwnIdentity {
    OwnIdentity::from_jid(client.pn().as_ref(), &client.push_name())
}

#[async_trait]
impl Session for EmbeddedConnector {
    async fn run(
        &self,
        account: &AccountRef,
        method: LinkMethod,
        events: mpsc::Sender<ConnectorEvent>,
        stop: CancellationToken,
    ) -> Ended {
        let account_id = account.account_id;
        let store = self.store(account_id);
        let (tx, rx) = mpsc::unbounded_channel::<Arc<Event>>();
        let pair_code = match &method {
            LinkMethod::PairingCode { phone_number } => Some(PairCodeOptions {
                phone_number: phone_number.trim_start_matches('+').to_owned(),
                ..PairCodeOptions::default()
            }),
            LinkMethod::Qr => None,
        };
        let refresh = pair_code.clone();
        let mut builder = Bot::builder()
            .with_backend(store.clone())
            .with_event_delivery(EventDelivery::Ordered {
                capacity: EVENT_MAILBOX,
            })
            // Old chats are not replayed into GHL.
            .skip_history_sync()
            .on_event_for(KINDS, move |event, client| {
                if let (Event::PairingCodeRefresh(_), Some(options)) = (&*event, &refresh) {
                    // The code expired unused: ask for the next one, as WhatsApp Web does.
                    let options = options.clone();
                    tokio::spawn(async move {
                        if let Err(err) = client.pair_with_code(options).await {
                            warn!(error = %err, "no new pairing code");
                        }
                    });
                }
                let tx = tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            });
        if let Some(network) = &self.network {
            builder = builder
                .with_transport_factory(SharedTransport(network.transport.clone()))
                .with_http_client(SharedHttp(network.http.clone()));
        }
        if let Some(options) = pair_code.clone() {
            builder = builder.with_pair_code(options);
        }
        let bot = match builder.build().await {
            Ok(bot) => bot,
            Err(err) => {
                warn!(account_id = %account_id, error = %err, "whatsapp client did not start");
                return not_started(&err);
            }
        };
        let client = bot.client();
        let mut handle = bot.spawn();
        self.live_map().insert(account_id, client.clone());
        info!(account_id = %account_id, "whatsapp session started");

        let lookups = ClientLookups {
            client: client.clone(),
            max_bytes: self.config.max_inbound_file_bytes,
        };
        let outcome = drive(
            rx,
            &mut handle,
            || own_identity(&client),
            &lookups,
            pair_code.is_some(),
            events,
            stop,
        )
        .await;
        let ended = outcome.ended;

        self.retire(account_id, &client);
        if !outcome.client_stopped {
            client.disconnect().await;
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut handle)
                .await
                .is_err()
            {
                warn!(account_id = %account_id, "whatsapp client did not stop in time; aborted");
                handle.abort();
            }
        }
        if outcome.forget_device {
            // Disconnecting again flushes what the client still holds (a no-op when it has
            // stopped), so nothing it writes later brings the logged-out device back.
            client.disconnect().await;
            if let Err(err) = store.forget().await {
                warn!(account_id = %account_id, error = %err, "could not forget a logged-out device");
            }
        }
        info!(account_id = %account_id, reason = %ended.reason, "whatsapp session ended");
        ended
    }

    /// Unlinks the device: through the running session, or by connecting once when there is
    /// none; then forgets its keys. When WhatsApp cannot be reached the keys are forgotten all
    /// the same, and the phone keeps listing the device until it is removed there.
    async fn logout(&self, account: &AccountRef) -> Result<(), ConnectorError> {
        let account_id = account.account_id;
        let store = self.store(account_id);
        let mut unreachable = None;
        if let Some(client) = self.live_client(account_id) {
            client.logout().await;
        } else if store
            .has_device()
            .await
            .map_err(|err| ConnectorError::Unavailable(format!("the device store: {err}")))?
        {
            unreachable = self.logout_offline(&store).await.err();
        }
        store
            .forget()
            .await
            .map_err(|err| ConnectorError::Unavailable(format!("the device store: {err}")))?;
        match unreachable {
            Some(detail) => Err(ConnectorError::Unavailable(format!(
                "the device's keys are forgotten, but whatsapp could not be told ({detail}): \
                 remove the device under Linked devices on the phone"
            ))),
            None => Ok(()),
        }
    }
}

impl EmbeddedConnector {
    /// Connects with the stored device just to unlink it.
    async fn logout_offline(&self, store: &SealedDeviceStore) -> Result<(), String> {
        let mut builder = Bot::builder()
            .with_backend(store.clone())
            .skip_history_sync();
        if let Some(network) = &self.network {
            builder = builder
                .with_transport_factory(SharedTransport(network.transport.clone()))
                .with_http_client(SharedHttp(network.http.clone()));
        }
        let bot = builder.build().await.map_err(|err| err.to_string())?;
        let client = bot.client();
        if client.pn().is_none() {
            // Never linked: there is nothing to tell WhatsApp. Stopped, so that nothing it
            // would still save outlives the forgetting.
            client.disconnect().await;
            return Ok(());
        }
        let handle = bot.spawn();
        let connected = client
            .wait_for_connected(self.config.logout_timeout)
            .await
            .map_err(|err| err.to_string());
        if connected.is_ok() {
            client.logout().await;
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, handle.shutdown())
            .await
            .is_err()
        {
            warn!("whatsapp client did not stop in time after a logout");
        }
        connected
    }
}
