//! The session service owns accounts — the messaging accounts connected to a GHL location —
//! and records the messages they receive. Commands arrive over gRPC (`whatsnap.session.v1`),
//! are decided against the account's own stream, and become events; the `session_accounts`
//! read model answers queries.

mod account;
mod alerts;
mod application;
mod connection;
mod outbound;
mod read_model;
mod supervisor;
mod watch;
mod writes;

use std::sync::Arc;

use chrono::Utc;
use tonic::{Request, Response, Status};
use tracing::instrument;
use uuid::Uuid;
use whatsnap_connector::{
    Connector, ConnectorError, ConnectorEvent, Connectors, NewAccount, ObservedMessage, Receipt,
    WebhookError, WebhookRequest,
};
use whatsnap_events::{
    AccountKind, AggregateKind, Attachment, ContactIdentityMerged, Event, EventMetadata,
    InboundMessageHeld, InboundMessageReceived, LocationId, NewEvent, OutboundMessageRequested,
    StreamId, TwilioCredentials, contact_id_for, inbound_message_id_for, outbound_message_id_for,
};
use whatsnap_eventstore::aggregate::Cache;
use whatsnap_eventstore::{Aggregates, EventStore, ExpectedVersion, Loaded, StoreError};
use whatsnap_proto::session::v1 as pb;
use whatsnap_rpc::{ReadDb, ServiceError, ServiceResult};
use whatsnap_secrets::SecretKey;

pub use account::{
    AccountState, Connection, DEFAULT_TAG_PREFIX, check_rotation, decide_add, decide_remove,
    decide_rotate, evolve, slug_tag,
};
pub use alerts::AlertQueue;
pub use application::Application;
pub use connection::{account_ref, decide_connection};
pub use outbound::{OutboundQueue, OutboundState, SendWorker, decide_delivery_status};
pub use read_model::AccountsProjection;
pub use supervisor::Supervisor;

/// What the session service is configured with.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Seals the credentials of accounts before they are stored.
    pub secret_key: SecretKey,
    /// The account kinds this deployment connects, by engine.
    pub connectors: Connectors,
    /// How many accounts, of all kinds, one location may have.
    pub max_accounts_per_location: usize,
    /// What every account tag starts with (`whatsnap-account-` by default).
    pub tag_prefix: String,
    /// Where files received with messages are kept, and the public URL the gateway serves them
    /// under (GHL fetches them there); without it, attachments an engine hands over as data
    /// are left out of the messages, with a note in their text.
    pub media: Option<(whatsnap_media::MediaStore, String)>,
    /// Where alerts about accounts go (a Slack-compatible incoming webhook); none without it.
    pub alert_webhook_url: Option<String>,
    /// How long a reply through a live link (WhatsApp) may go without a receipt: when the
    /// account's last replies sent longer ago all lack one, it is flagged as not delivering.
    pub receipt_patience: std::time::Duration,
    /// How long a reply is tried while its provider is unreachable before it is recorded as
    /// failed.
    pub send_patience: std::time::Duration,
}

/// The session service: its gRPC API and its read model.
#[derive(Clone)]
pub struct Session {
    store: Arc<dyn EventStore>,
    db: ReadDb,
    config: SessionConfig,
    /// Accounts as last loaded: a load reads only their events since, and while the follower
    /// runs a message's account is answered from memory.
    accounts: Arc<Cache<AccountState>>,
}

/// How many accounts the session service keeps loaded between calls.
const ACCOUNTS_KEPT: usize = 10_000;

impl Session {
    pub fn new(store: Arc<dyn EventStore>, db: ReadDb, config: SessionConfig) -> Self {
        let accounts = Arc::new(Cache::new(ACCOUNTS_KEPT));
        Self {
            store: Arc::new(writes::AccountWrites::new(store, accounts.clone())),
            db,
            config,
            accounts,
        }
    }

    /// Keeps the accounts loaded current from the log until `shutdown`, so that a message's
    /// account is answered from memory (see [`Reading::Followed`]).
    pub(crate) async fn follow_accounts(self, shutdown: impl Future<Output = ()>) {
        self.accounts
            .follow_until(self.store.as_ref(), AggregateKind::Account, shutdown)
            .await
    }

    /// How a new account connects: its connector checks what the user gave with the platform
    /// and gives the settings to store, secrets sealed.
    async fn connection(
        &self,
        account: &NewAccount,
        kind: AccountKind,
        request: &pb::AddAccountRequest,
    ) -> ServiceResult<Connection> {
        let connector = self
            .config
            .connectors
            .for_new(kind, &request.engine)
            .map_err(connector_error)?;
        let mut settings = match request.settings_json.trim() {
            "" => serde_json::Value::Object(Default::default()),
            json => serde_json::from_str::<serde_json::Value>(json)
                .ok()
                .filter(serde_json::Value::is_object)
                .ok_or_else(|| {
                    ServiceError::InvalidArgument("settings must be a JSON object".into())
                })?,
        };
        if let Some(twilio) = &request.twilio {
            settings["account_sid"] = twilio.account_sid.clone().into();
            settings["auth_token"] = twilio.auth_token.clone().into();
        }
        let stored = connector
            .check(account, settings, &self.config.secret_key)
            .await
            .map_err(connector_error)?;
        // Twilio's credentials stay where accounts added before the connector seam keep them:
        // the gateway checks Twilio's signatures with them, and rotation replaces them.
        if connector.engine() == whatsnap_twilio::connector::ENGINE {
            let twilio: TwilioCredentials = serde_json::from_value(stored)
                .map_err(|e| ServiceError::Internal(format!("twilio settings: {e}")))?;
            return Ok(Connection {
                engine: connector.engine().to_owned(),
                settings: None,
                twilio: Some(twilio),
            });
        }
        Ok(Connection {
            engine: connector.engine().to_owned(),
            settings: Some(stored),
            twilio: None,
        })
    }

    pub fn grpc(&self) -> pb::session_service_server::SessionServiceServer<Self> {
        pb::session_service_server::SessionServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_WEBHOOK_MESSAGE_BYTES)
    }

    /// The attachments of a message with every file the platform serves only to the account
    /// fetched by its connector (as data); one that will never be fetched is left out, with a
    /// note appended to `body`. Unavailable while the platform cannot be reached: the webhook
    /// is answered so that it comes again.
    async fn fetch_attachments(
        &self,
        location: &LocationId,
        account: &AccountState,
        attachments: &[Attachment],
        body: &mut String,
    ) -> ServiceResult<Vec<Attachment>> {
        if attachments.is_empty() {
            return Ok(Vec::new());
        }
        let (Ok(connector), Some(reference)) = (
            self.connector_of(account),
            account_ref(location, account, &self.config.secret_key),
        ) else {
            return Ok(attachments.to_vec());
        };
        let mut fetched = Vec::with_capacity(attachments.len());
        for attachment in attachments {
            match connector.fetch_attachment(&reference, attachment).await {
                Ok(attachment) => fetched.push(attachment),
                Err(ConnectorError::Unavailable(reason)) => {
                    return Err(ServiceError::Unavailable(reason));
                }
                Err(ConnectorError::Invalid(reason) | ConnectorError::Refused(reason)) => {
                    tracing::warn!(%location, %reason, "an attachment was left out");
                    let what = attachment.file_name.as_deref().unwrap_or("a file");
                    body.push_str(&format!("\n[{what} not shown: {reason}]"));
                }
            }
        }
        Ok(fetched)
    }

    /// The attachments of a message with every file an engine handed over as data kept in the
    /// media store and replaced by its URL; one that cannot be kept is left out, with a note
    /// appended to `body`.
    async fn host_attachments(
        &self,
        location: &LocationId,
        attachments: &[Attachment],
        body: &mut String,
    ) -> Vec<Attachment> {
        let mut hosted = Vec::with_capacity(attachments.len());
        for attachment in attachments {
            if !attachment.url.starts_with("data:") {
                hosted.push(attachment.clone());
                continue;
            }
            let kept = match &self.config.media {
                Some((store, public_url)) => store
                    .host(location, public_url, attachment.clone())
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("whatsnap has no public URL to serve files from".to_owned()),
            };
            match kept {
                Ok(attachment) => hosted.push(attachment),
                Err(reason) => {
                    tracing::warn!(%location, %reason, "an attachment was left out");
                    let what = attachment.file_name.as_deref().unwrap_or("a file");
                    body.push_str(&format!("\n[{what} not shown: {reason}]"));
                }
            }
        }
        hosted
    }

    pub fn projection(&self) -> Arc<AccountsProjection> {
        Arc::new(AccountsProjection)
    }

    /// The queue of routed replies, per account: a projection of its own.
    pub fn send_queue(&self) -> Arc<OutboundQueue> {
        Arc::new(OutboundQueue)
    }

    /// The worker that sends the queued replies, one task per account.
    pub fn send_worker(&self) -> Arc<SendWorker> {
        Arc::new(SendWorker {
            outbox: whatsnap_effects::Outbox::new(self.store.clone()),
            db: self.db.clone(),
            secret_key: self.config.secret_key.clone(),
            connectors: self.config.connectors.clone(),
            accounts: self.accounts.clone(),
            patience: self.config.send_patience,
            poll: std::time::Duration::from_millis(100),
        })
    }

    /// The queue of alerts to post: a projection of its own.
    pub fn alert_queue(&self) -> Option<Arc<alerts::AlertQueue>> {
        self.config
            .alert_webhook_url
            .as_ref()
            .map(|_| Arc::new(alerts::AlertQueue))
    }

    /// The worker that posts alerts about disconnected accounts and accounts that do not
    /// deliver, when the deployment has somewhere to send them.
    pub fn alerts(&self) -> Option<Arc<alerts::Alerts>> {
        let url = self.config.alert_webhook_url.clone()?;
        Some(Arc::new(alerts::Alerts {
            outbox: whatsnap_effects::Outbox::new(self.store.clone()),
            db: self.db.clone(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .ok()?,
            url,
        }))
    }

    /// The supervisor of the live links of session-based accounts (a linked WhatsApp device).
    pub fn supervisor(&self) -> Arc<Supervisor> {
        Arc::new(Supervisor::new(self.clone()))
    }

    /// Starts `stream` with `event`; `true` when the stream existed, so nothing was written
    /// (a provider or GHL delivering the same message again).
    async fn append_once(&self, stream: &StreamId, event: &Event) -> ServiceResult<bool> {
        let point = |stage: &str| {
            whatsnap_effects::failpoint::hit(&format!("session.{}.{stage}", event.event_type()));
        };
        point("before_append");
        let appended = self.append_new(stream, event).await;
        point("after_append");
        appended
    }

    async fn append_new(&self, stream: &StreamId, event: &Event) -> ServiceResult<bool> {
        match self
            .store
            .append(
                stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::new(event, metadata())],
            )
            .await
        {
            Ok(_) => Ok(false),
            Err(StoreError::WrongExpectedVersion { .. }) => Ok(true),
            Err(err) => Err(err.into()),
        }
    }

    /// Appends `event`, decided against the account as `state` holds it, at that version (a
    /// concurrent change is a conflict); the account as it then is.
    async fn append_decided(
        &self,
        stream: &StreamId,
        state: AccountState,
        event: &Event,
    ) -> ServiceResult<AccountState> {
        let version = state.version;
        let loaded = Aggregates::new(self.store.as_ref())
            .append(
                stream,
                Loaded { state, version },
                std::slice::from_ref(event),
                &metadata(),
            )
            .await?;
        Ok(loaded.state)
    }

    /// The account's state from its own stream; not found when it was never added.
    async fn load_account(
        &self,
        location: &LocationId,
        account_id: Uuid,
    ) -> ServiceResult<(StreamId, AccountState)> {
        self.account(location, account_id, Reading::Checked).await
    }

    /// The account a message is checked and recorded against, as the accounts' follower has
    /// read the log: from memory, without a read of the store, while it follows.
    async fn followed_account(
        &self,
        location: &LocationId,
        account_id: Uuid,
    ) -> ServiceResult<(StreamId, AccountState)> {
        self.account(location, account_id, Reading::Followed).await
    }

    async fn account(
        &self,
        location: &LocationId,
        account_id: Uuid,
        reading: Reading,
    ) -> ServiceResult<(StreamId, AccountState)> {
        let (stream, state) = read_account(
            self.store.as_ref(),
            &self.accounts,
            location,
            account_id,
            reading,
        )
        .await?;
        if state.account_id.is_none() {
            return Err(ServiceError::NotFound(format!(
                "no account {account_id} in location {location}"
            )));
        }
        Ok((stream, state))
    }
}

/// How an account is read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reading {
    /// Its events since the kept state read from the store: for a decision appended at the
    /// account's version, or a command's answer.
    Checked,
    /// As the accounts' follower has read the log (a moment behind at most), from memory: for
    /// a message checked, recorded or sent through its account, and a receipt it got.
    Followed,
}

/// The account's state from its own stream, as kept in `accounts` (see [`Reading`]); empty (no
/// `account_id`) when it was never added.
pub(crate) async fn read_account(
    store: &dyn EventStore,
    accounts: &Cache<AccountState>,
    location: &LocationId,
    account_id: Uuid,
    reading: Reading,
) -> ServiceResult<(StreamId, AccountState)> {
    let stream = StreamId::for_uuid(location.clone(), AggregateKind::Account, account_id);
    let aggregates = Aggregates::new(store);
    let loaded = match reading {
        Reading::Checked => accounts.load(&aggregates, &stream).await,
        Reading::Followed => accounts.current(&aggregates, &stream).await,
    };
    let loaded =
        loaded.map_err(|e| ServiceError::unloadable(format_args!("account {account_id}"), e))?;
    Ok((stream, loaded.state))
}

/// A message seen in a chat, with its files kept, before it is recorded.
struct Observed {
    message_id: Uuid,
    stream: StreamId,
    body: String,
    attachments: Vec<Attachment>,
}

/// The largest request the session service reads: an engine's webhook can carry a file as
/// base64 (16 MB, a third more encoded).
pub const MAX_WEBHOOK_MESSAGE_BYTES: usize = 24 * 1024 * 1024;

/// A command starts a correlation, in the trace of the call that carried it.
fn metadata() -> EventMetadata {
    EventMetadata::new_correlation().traced(whatsnap_telemetry::current())
}

fn to_pb(state: &AccountState, location: &LocationId) -> pb::Account {
    pb::Account {
        account_id: state
            .account_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        location_id: location.to_string(),
        kind: state.kind.map(read_model::kind_to_pb).unwrap_or_default() as i32,
        name: state.name.clone(),
        tag: state.tag.clone(),
        phone_number: state.phone_number.clone().unwrap_or_default(),
        status: state.status.as_str().to_owned(),
        engine: state.engine.clone().unwrap_or_default(),
        status_reason: match (&state.not_delivering, &state.status_reason) {
            (Some(stalled), _) => format!("connected but not delivering: {stalled}"),
            (None, reason) => reason.clone().unwrap_or_default(),
        },
        pacing: state
            .pacing
            .map_or_else(|| "the engine's default".to_owned(), |p| p.to_string()),
    }
}

/// A connector's refusal as the API's error.
fn connector_error(err: ConnectorError) -> ServiceError {
    match err {
        ConnectorError::Invalid(reason) => ServiceError::InvalidArgument(reason),
        ConnectorError::Refused(reason) => ServiceError::FailedPrecondition(reason),
        ConnectorError::Unavailable(reason) => ServiceError::Unavailable(reason),
    }
}

#[tonic::async_trait]
impl pb::session_service_server::SessionService for Session {
    #[instrument(skip_all, fields(location_id = %request.get_ref().location_id))]
    async fn add_account(
        &self,
        request: Request<pb::AddAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let kind = read_model::kind_from_pb(request.kind)?;
        let live = read_model::live_accounts(&self.db, &location)
            .await
            .map_err(ServiceError::from)?;
        if live >= self.config.max_accounts_per_location {
            return Err(ServiceError::FailedPrecondition(format!(
                "location {location} already has {live} accounts, the most it may have: remove one first"
            ))
            .into());
        }
        let taken = read_model::tags_in_location(&self.db, &location)
            .await
            .map_err(ServiceError::from)?;
        let phone = match request.phone_number.trim() {
            "" => None,
            number => Some(whatsnap_rpc::phone(number)?.to_string()),
        };
        let account_id = Uuid::now_v7();
        let new = NewAccount {
            location: location.clone(),
            account_id,
            name: request.name.trim().to_owned(),
            phone_number: phone.clone(),
        };
        let connection = self.connection(&new, kind, &request).await?;
        let event = decide_add(
            &self.config.tag_prefix,
            account_id,
            kind,
            &request.name,
            phone,
            connection,
            &taken,
        )?;
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Account, account_id);
        let mut state = evolve(AccountState::default(), &event, 1);
        let mut events = vec![event];
        // A device account (a phone, a Mac) links from the moment it is added: its session waits
        // for the device to be seen.
        if self.pairs_device(&location, &state) {
            let link = account::decide_link(&state, account_id, None)?;
            state = evolve(state, &link, 2);
            events.push(link);
        }
        // An account reached through an API alone (no device, no link) reports itself, e.g.
        // connected, as soon as its settings passed the check.
        for event in self.added_events(&location, account_id, &state) {
            state = evolve(state, &event, events.len() as u64 + 1);
            events.push(event);
        }
        self.store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                events
                    .iter()
                    .map(|e| NewEvent::new(e, metadata()))
                    .collect(),
            )
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(to_pb(&state, &location)))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        let (_, state) = self.load_account(&location, account_id).await?;
        Ok(Response::new(to_pb(&state, &location)))
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        // Every location means every one the caller may see (the authorization layer put the
        // caller in the request).
        let caller = request.extensions().get::<whatsnap_auth::Caller>().cloned();
        let request = request.into_inner();
        let location = match request.location_id.as_str() {
            "" => None,
            value => Some(whatsnap_rpc::location(value)?),
        };
        let accounts = read_model::list(&self.db, location.as_ref())
            .await
            .map_err(ServiceError::from)?
            .into_iter()
            .filter(|account| {
                whatsnap_events::LocationId::parse(account.location_id.as_str())
                    .is_ok_and(|l| caller.as_ref().is_some_and(|c| c.may_read(&l)))
            })
            .collect();
        Ok(Response::new(pb::ListAccountsResponse {
            accounts,
            max_accounts_per_location: u32::try_from(self.config.max_accounts_per_location)
                .unwrap_or(u32::MAX),
        }))
    }

    #[instrument(skip_all, fields(location_id = %request.get_ref().location_id, account_id = %request.get_ref().account_id))]
    async fn remove_account(
        &self,
        request: Request<pb::RemoveAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        let (stream, state) = self.load_account(&location, account_id).await?;
        let event = decide_remove(&state, account_id, &request.reason)?;
        let account = self.append_decided(&stream, state, &event).await?;
        Ok(Response::new(to_pb(&account, &location)))
    }

    #[instrument(skip_all, fields(location_id = %request.get_ref().location_id, account_id = %request.get_ref().account_id))]
    async fn disconnect_account(
        &self,
        request: Request<pb::DisconnectAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        let (stream, state) = self.load_account(&location, account_id).await?;
        let connector = self.connector_of(&state)?;
        let Some(link) = connector.session() else {
            return Err(ServiceError::FailedPrecondition(format!(
                "{} accounts ({}) keep no link to disconnect: remove the account instead",
                state.kind.map_or("these", AccountKind::as_str),
                connector.engine()
            ))
            .into());
        };
        let event = account::decide_disconnect(&state, account_id)?;
        let reference = account_ref(&location, &state, &self.config.secret_key);
        let account = self.append_decided(&stream, state, &event).await?;
        // Recorded first: the supervisor stops the link and nothing starts it again. Logging
        // the device out may be tried again safely (a second logout finds nothing to do).
        if let Some(reference) = reference
            && let Err(err) = link.logout(&reference).await
        {
            tracing::warn!(%location, %account_id, error = %err, "the disconnected account's device could not be logged out");
        }
        tracing::info!(%location, %account_id, engine = connector.engine(), "account disconnected by a user");
        Ok(Response::new(to_pb(&account, &location)))
    }

    #[instrument(skip_all, fields(location_id = %request.get_ref().location_id, account_id = %request.get_ref().account_id))]
    async fn update_account_credentials(
        &self,
        request: Request<pb::UpdateAccountCredentialsRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        let (stream, state) = self.load_account(&location, account_id).await?;
        let account_sid = check_rotation(&state, account_id)?;
        // Checked with Twilio exactly as when the account was added: a token Twilio refuses,
        // or one that no longer owns the number, changes nothing.
        let new = NewAccount {
            location: location.clone(),
            account_id,
            name: state.name.clone(),
            phone_number: state.phone_number.clone(),
        };
        let check = pb::AddAccountRequest {
            kind: pb::AccountKind::Twilio as i32,
            engine: state.engine.clone().unwrap_or_default(),
            twilio: Some(pb::TwilioCredentials {
                account_sid,
                auth_token: request.auth_token,
            }),
            ..Default::default()
        };
        let credentials = self
            .connection(&new, AccountKind::Twilio, &check)
            .await?
            .twilio
            .ok_or_else(|| ServiceError::Internal("twilio credentials were not kept".into()))?;
        let event = decide_rotate(&state, account_id, credentials)?;
        let account = self.append_decided(&stream, state, &event).await?;
        tracing::info!(%location, %account_id, "twilio credentials rotated");
        Ok(Response::new(to_pb(&account, &location)))
    }

    #[instrument(skip_all, fields(location_id = %request.get_ref().location_id, account_id = %request.get_ref().account_id))]
    async fn record_inbound_message(
        &self,
        request: Request<pb::RecordInboundMessageRequest>,
    ) -> Result<Response<pb::RecordInboundMessageResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        let from = whatsnap_rpc::phone(&request.from)?;
        if request.provider_message_id.trim().is_empty() {
            return Err(
                ServiceError::InvalidArgument("provider_message_id is empty".into()).into(),
            );
        }
        let (_, account) = self.followed_account(&location, account_id).await?;
        if account.status == account::Status::Removed {
            return Err(ServiceError::FailedPrecondition(format!(
                "account {account_id} was removed"
            ))
            .into());
        }
        // The message's stream is named by the provider's id: a redelivered webhook finds it
        // already written.
        let message_id = inbound_message_id_for(account_id, &request.provider_message_id);
        let stream = StreamId::for_uuid(location, AggregateKind::Message, message_id);
        let event = Event::from(InboundMessageReceived {
            message_id,
            account_id,
            provider_message_id: request.provider_message_id,
            from: from.to_string(),
            to: account.phone_number.clone(),
            body: request.body,
            sender_name: Some(request.sender_name).filter(|n| !n.trim().is_empty()),
            received_at: Utc::now(),
            attachments: request
                .attachments
                .into_iter()
                .filter(|a| !a.url.trim().is_empty())
                .map(|a| Attachment {
                    url: a.url,
                    content_type: Some(a.content_type).filter(|c| !c.is_empty()),
                    file_name: None,
                })
                .collect(),
            from_me: false,
            sender_lid: None,
        });
        let duplicate = self.append_once(&stream, &event).await?;
        Ok(Response::new(pb::RecordInboundMessageResponse {
            message_id: message_id.to_string(),
            duplicate,
        }))
    }

    #[instrument(skip_all, fields(location_id = %request.get_ref().location_id, ghl_message_id = %request.get_ref().ghl_message_id))]
    async fn request_outbound_message(
        &self,
        request: Request<pb::RequestOutboundMessageRequest>,
    ) -> Result<Response<pb::RequestOutboundMessageResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let ghl_message_id = request.ghl_message_id.trim();
        if ghl_message_id.is_empty() || ghl_message_id.len() > 128 {
            return Err(ServiceError::InvalidArgument(
                "a reply needs GHL's messageId (1 to 128 characters)".into(),
            )
            .into());
        }
        let phone = whatsnap_rpc::phone(&request.phone)?;
        let message_id = outbound_message_id_for(&location, ghl_message_id);
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Message, message_id);
        let non_empty = |s: String| Some(s).filter(|s| !s.trim().is_empty());
        let event = Event::from(OutboundMessageRequested {
            message_id,
            contact_id: contact_id_for(&location, &phone),
            ghl_message_id: Some(ghl_message_id.to_owned()),
            ghl_user_id: non_empty(request.ghl_user_id),
            body: request.body,
            attachments: request
                .attachment_urls
                .into_iter()
                .map(|url| Attachment {
                    url,
                    content_type: None,
                    file_name: None,
                })
                .collect(),
            to: Some(phone.to_string()),
            ghl_contact_id: non_empty(request.ghl_contact_id),
        });
        let duplicate = self.append_once(&stream, &event).await?;
        Ok(Response::new(pb::RequestOutboundMessageResponse {
            message_id: message_id.to_string(),
            duplicate,
        }))
    }

    #[instrument(skip_all, fields(location_id = %request.get_ref().location_id, message_id = %request.get_ref().message_id))]
    async fn record_delivery_status(
        &self,
        request: Request<pb::RecordDeliveryStatusRequest>,
    ) -> Result<Response<pb::RecordDeliveryStatusResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        let message_id = whatsnap_rpc::uuid("message id", &request.message_id)?;
        let status: whatsnap_twilio::webhook::MessageStatus =
            request
                .status
                .parse()
                .map_err(|e: whatsnap_twilio::webhook::WebhookError| {
                    ServiceError::InvalidArgument(e.to_string())
                })?;
        let error_code = Some(request.error_code).filter(|code| *code != 0);
        let Some(receipt) = whatsnap_twilio::connector::receipt(status, error_code) else {
            return Ok(Response::new(pb::RecordDeliveryStatusResponse {
                changed: false,
            }));
        };
        let changed = self
            .record_receipt(
                &location,
                account_id,
                message_id,
                &request.provider_message_id,
                &receipt,
            )
            .await?;
        Ok(Response::new(pb::RecordDeliveryStatusResponse { changed }))
    }

    type WatchAccountStream = watch::AccountUpdates;

    #[instrument(skip_all, fields(location_id = %request.get_ref().location_id, account_id = %request.get_ref().account_id))]
    async fn watch_account(
        &self,
        request: Request<pb::WatchAccountRequest>,
    ) -> Result<Response<Self::WatchAccountStream>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        self.load_account(&location, account_id).await?;
        Ok(Response::new(watch::updates(
            self.store.clone(),
            location,
            account_id,
        )))
    }

    #[instrument(skip_all, fields(location_id = %request.get_ref().location_id, account_id = %request.get_ref().account_id))]
    async fn connect_account(
        &self,
        request: Request<pb::ConnectAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        let pairing = match request.pairing_phone_number.trim() {
            "" => None,
            number => Some(whatsnap_rpc::phone(number)?.to_string()),
        };
        let (stream, state) = self.load_account(&location, account_id).await?;
        let connector = self.connector_of(&state)?;
        if connector.session().is_none() {
            return Err(ServiceError::FailedPrecondition(format!(
                "{} accounts ({}) are connected when they are added: there is nothing to link",
                state.kind.map_or("these", AccountKind::as_str),
                connector.engine()
            ))
            .into());
        }
        let event = account::decide_link(&state, account_id, pairing)?;
        let account = self.append_decided(&stream, state, &event).await?;
        tracing::info!(%location, %account_id, engine = connector.engine(), "linking requested");
        Ok(Response::new(to_pb(&account, &location)))
    }

    #[instrument(skip_all, fields(location_id = %request.get_ref().location_id, account_id = %request.get_ref().account_id))]
    async fn set_pacing(
        &self,
        request: Request<pb::SetPacingRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        let (stream, state) = self.load_account(&location, account_id).await?;
        let millis = |ms: u32| std::time::Duration::from_millis(ms.into());
        let pacing = whatsnap_connector::Pacing {
            interval: millis(request.interval_ms),
            jitter: millis(request.jitter_ms),
            typing: millis(request.typing_ms),
        };
        let event = account::decide_pacing(&state, account_id, pacing)?;
        let account = self.append_decided(&stream, state, &event).await?;
        tracing::info!(%location, %account_id, %pacing, "pacing set");
        Ok(Response::new(to_pb(&account, &location)))
    }

    #[instrument(skip_all, fields(location_id = %request.get_ref().location_id, account_id = %request.get_ref().account_id))]
    async fn rename_account(
        &self,
        request: Request<pb::RenameAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        let (stream, state) = self.load_account(&location, account_id).await?;
        let event = account::decide_rename(&state, account_id, &request.name)?;
        let account = self.append_decided(&stream, state, &event).await?;
        tracing::info!(%location, %account_id, "account renamed");
        Ok(Response::new(to_pb(&account, &location)))
    }

    #[instrument(skip_all, fields(location_id = %request.get_ref().location_id, account_id = %request.get_ref().account_id, engine = %request.get_ref().engine))]
    async fn set_engine(
        &self,
        request: Request<pb::SetEngineRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        let engine = request.engine.trim();
        if engine.is_empty() {
            return Err(ServiceError::InvalidArgument("name the engine to move to".into()).into());
        }
        let (stream, state) = self.load_account(&location, account_id).await?;
        account::check_engine_change(&state, account_id, engine)?;
        let kind = state
            .kind
            .ok_or_else(|| ServiceError::FailedPrecondition("the account has no kind".into()))?;
        let new = self
            .config
            .connectors
            .for_new(kind, engine)
            .map_err(connector_error)?;
        if new.session().is_none() {
            return Err(ServiceError::FailedPrecondition(format!(
                "the {engine} engine keeps no link of its own to move an account to: add the \
                 number as a new {engine} account"
            ))
            .into());
        }
        let added = NewAccount {
            location: location.clone(),
            account_id,
            name: state.name.clone(),
            phone_number: state.phone_number.clone(),
        };
        let settings = new
            .check(&added, serde_json::json!({}), &self.config.secret_key)
            .await
            .map_err(connector_error)?;
        // The old engine's device is logged out (again, if it was): a second logout finds
        // nothing to do.
        if let (Ok(old), Some(reference)) = (
            self.connector_of(&state),
            account_ref(&location, &state, &self.config.secret_key),
        ) && let Some(link) = old.session()
            && let Err(err) = link.logout(&reference).await
        {
            tracing::warn!(%location, %account_id, error = %err, "the device on the old engine could not be logged out");
        }
        let event = account::engine_changed(account_id, new.engine(), settings);
        let account = self.append_decided(&stream, state, &event).await?;
        tracing::info!(%location, %account_id, engine = new.engine(), "account moved to another engine");
        Ok(Response::new(to_pb(&account, &location)))
    }

    #[instrument(skip_all, fields(location_id = %request.get_ref().location_id, account_id = %request.get_ref().account_id, engine = %request.get_ref().engine))]
    async fn record_connector_webhook(
        &self,
        request: Request<pb::ConnectorWebhookRequest>,
    ) -> Result<Response<pb::ConnectorWebhookResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        let not_found = || {
            ServiceError::NotFound(format!(
                "no {} account {account_id} in location {location}",
                request.engine
            ))
        };
        let (_, state) = self
            .load_account(&location, account_id)
            .await
            .map_err(|_| not_found())?;
        let connector = self.connector_of(&state)?;
        if connector.engine() != request.engine {
            return Err(not_found().into());
        }
        let mut headers = http::HeaderMap::new();
        for (name, value) in &request.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        let reference =
            account_ref(&location, &state, &self.config.secret_key).ok_or_else(not_found)?;
        let webhook = WebhookRequest {
            headers: &headers,
            query: &request.query,
            body: &request.body,
        };
        if request.method.eq_ignore_ascii_case("GET") {
            let reply = connector
                .verify_webhook(&reference, &webhook)
                .map_err(webhook_error)?;
            return Ok(Response::new(pb::ConnectorWebhookResponse {
                reply,
                ..Default::default()
            }));
        }
        let events = connector
            .webhook(&reference, &webhook)
            .map_err(webhook_error)?;
        let mut duplicates = 0;
        for event in &events {
            match self
                .record_connector_event(&location, account_id, event)
                .await
            {
                Ok(true) => {}
                Ok(false) => duplicates += 1,
                // A receipt for a message whatsnap did not send (sent by another app on the
                // same number) is let go, as the supervisor does: a platform that retries
                // refused webhooks (Meta, for days) would otherwise post it again and again.
                Err(ServiceError::NotFound(reason))
                    if matches!(event, ConnectorEvent::Receipt { .. }) =>
                {
                    tracing::info!(%location, %account_id, %reason, "a receipt for a message whatsnap did not send is let go");
                    duplicates += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Response::new(pb::ConnectorWebhookResponse {
            events: events.len() as u32,
            duplicates,
            reply: String::new(),
        }))
    }

    async fn get_pairing(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::DevicePairing>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        let (_, state) = self.load_account(&location, account_id).await?;
        let connector = self.connector_of(&state)?;
        let pairing = account_ref(&location, &state, &self.config.secret_key)
            .and_then(|account| connector.pairing(&account))
            .ok_or_else(|| {
                ServiceError::FailedPrecondition(format!(
                    "{} accounts ({}) have no device to pair",
                    state.kind.map_or("these", AccountKind::as_str),
                    connector.engine()
                ))
            })?;
        Ok(Response::new(pb::DevicePairing {
            steps: pairing.steps,
            webhook_url: pairing.webhook_url.unwrap_or_default(),
            secret: pairing.secret.unwrap_or_default(),
        }))
    }

    async fn verify_twilio_webhook(
        &self,
        request: Request<pb::VerifyTwilioWebhookRequest>,
    ) -> Result<Response<pb::VerifyTwilioWebhookResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let account_id = whatsnap_rpc::uuid("account id", &request.account_id)?;
        let (_, state) = self.followed_account(&location, account_id).await?;
        let account = match (
            state.kind,
            account_ref(&location, &state, &self.config.secret_key),
        ) {
            (Some(AccountKind::Twilio), Some(account)) => account,
            _ => {
                return Err(ServiceError::NotFound(format!(
                    "no Twilio account {account_id} in location {location}"
                ))
                .into());
            }
        };
        let params: Vec<(String, String)> = request
            .params
            .into_iter()
            .map(|param| (param.name, param.value))
            .collect();
        let signature = Some(request.signature.as_str()).filter(|given| !given.is_empty());
        let verdict =
            whatsnap_twilio::connector::verify_webhook(&account, &request.url, &params, signature);
        let refused = match verdict {
            Ok(()) => None,
            Err(WebhookError::Unreadable(reason)) => {
                return Err(ServiceError::Internal(reason).into());
            }
            Err(refused) => Some(refused.to_string()),
        };
        Ok(Response::new(pb::VerifyTwilioWebhookResponse {
            valid: refused.is_none(),
            reason: refused.unwrap_or_default(),
        }))
    }
}

/// How long an echo of a send may wait for the send's answer: longer than a send that times
/// out and is then found again at the provider.
const ECHO_PATIENCE: std::time::Duration = std::time::Duration::from_secs(45);

/// A refused webhook, as the gateway answers it.
fn webhook_error(err: WebhookError) -> ServiceError {
    match err {
        WebhookError::Unauthenticated(reason) => ServiceError::Unauthenticated(reason),
        WebhookError::Malformed(reason) => ServiceError::InvalidArgument(reason),
        WebhookError::WrongAccount(reason) | WebhookError::NotExpected(reason) => {
            ServiceError::NotFound(reason)
        }
        WebhookError::Unreadable(reason) => ServiceError::Internal(reason),
    }
}

impl Session {
    /// What the connector of a just-added account reports at once, as the account's events.
    fn added_events(
        &self,
        location: &LocationId,
        account_id: Uuid,
        state: &AccountState,
    ) -> Vec<Event> {
        let (Ok(connector), Some(account)) = (
            self.connector_of(state),
            account_ref(location, state, &self.config.secret_key),
        ) else {
            return Vec::new();
        };
        let mut state = state.clone();
        let mut events = Vec::new();
        for reported in connector.added(&account) {
            if let Some(event) = decide_connection(&state, account_id, &reported, Utc::now()) {
                let version = state.version + 1;
                state = evolve(state, &event, version);
                events.push(event);
            }
        }
        events
    }

    /// Whether the account has a device to pair, whose session then waits for it.
    fn pairs_device(&self, location: &LocationId, state: &AccountState) -> bool {
        let Ok(connector) = self.connector_of(state) else {
            return false;
        };
        connector.session().is_some()
            && account_ref(location, state, &self.config.secret_key)
                .is_some_and(|account| connector.pairing(&account).is_some())
    }

    /// The connector that drives the account.
    fn connector_of(&self, state: &AccountState) -> ServiceResult<Arc<dyn Connector>> {
        let kind = state
            .kind
            .ok_or_else(|| ServiceError::FailedPrecondition("the account has no kind".into()))?;
        self.config
            .connectors
            .for_account(kind, state.engine.as_deref())
            .ok_or_else(|| {
                ServiceError::FailedPrecondition(format!(
                    "this deployment does not run the {} engine of this account",
                    state.engine.as_deref().unwrap_or(kind.as_str())
                ))
            })
    }

    /// Records what a connector reported about an account: a code, a state, a message seen in
    /// one of its chats, a receipt. `false` when it was recorded before (a redelivery) or
    /// changes nothing.
    pub async fn record_connector_event(
        &self,
        location: &LocationId,
        account_id: Uuid,
        event: &ConnectorEvent,
    ) -> ServiceResult<bool> {
        match event {
            ConnectorEvent::Message(message) => {
                self.record_observed(location, account_id, message).await
            }
            ConnectorEvent::Receipt {
                provider_message_id,
                receipt,
            } => {
                let Some(message_id) = self.sent_message(account_id, provider_message_id).await?
                else {
                    // Not a reply whatsnap sent (one typed on the phone, say), or one whose
                    // send is still not recorded after the wait above.
                    return Err(ServiceError::NotFound(format!(
                        "no message sent as {provider_message_id} from account {account_id}"
                    )));
                };
                self.record_receipt(
                    location,
                    account_id,
                    message_id,
                    provider_message_id,
                    receipt,
                )
                .await
            }
            _ => {
                let stream =
                    StreamId::for_uuid(location.clone(), AggregateKind::Account, account_id);
                let updated = Aggregates::new(self.store.as_ref())
                    .update(&stream, &metadata(), |state: &AccountState| {
                        if state.account_id.is_none() {
                            return Err(ServiceError::NotFound(format!(
                                "no account {account_id} in location {location}"
                            )));
                        }
                        Ok(Vec::from_iter(decide_connection(
                            state,
                            account_id,
                            event,
                            Utc::now(),
                        )))
                    })
                    .await
                    .map_err(|e| {
                        ServiceError::not_updated(format_args!("account {account_id}"), e)
                    })?;
                Ok(updated.appended > 0)
            }
        }
    }

    /// The message whatsnap sent through the account as `provider_message_id`, waiting a few
    /// seconds for the read model: a receipt can come right behind the send.
    async fn sent_message(
        &self,
        account_id: Uuid,
        provider_message_id: &str,
    ) -> ServiceResult<Option<Uuid>> {
        for _ in 0..50 {
            if let Some(found) =
                read_model::sent_message(&self.db, account_id, provider_message_id).await?
            {
                return Ok(Some(found));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(None)
    }

    /// Whether a message seen as typed on the account's own device is whatsnap's own send,
    /// echoed. The echo may come before the send's answer (BlueBubbles, §6a): while the account
    /// has a reply in flight, it is waited for (up to [`ECHO_PATIENCE`]) before the message is
    /// taken for one typed on the device.
    async fn own_send(&self, account_id: Uuid, provider_message_id: &str) -> ServiceResult<bool> {
        let deadline = tokio::time::Instant::now() + ECHO_PATIENCE;
        loop {
            if read_model::sent_message(&self.db, account_id, provider_message_id)
                .await?
                .is_some()
            {
                return Ok(true);
            }
            if !read_model::sending(&self.db, account_id).await? {
                // The send may have been recorded between the two looks.
                return Ok(
                    read_model::sent_message(&self.db, account_id, provider_message_id)
                        .await?
                        .is_some(),
                );
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A message seen in one of the account's chats, in its own stream named by the platform's
    /// id: a redelivery finds it written. A WhatsApp sender named by LID and number at once
    /// teaches whatsnap that both are one person ([`ContactIdentityMerged`]); one named only by
    /// a LID whose number is not known yet is held until it is.
    async fn record_observed(
        &self,
        location: &LocationId,
        account_id: Uuid,
        message: &ObservedMessage,
    ) -> ServiceResult<bool> {
        // A redelivery (a webhook posted again, a catch-up reading again what was recorded) is
        // recognised first: an echo of whatsnap's own reply is never recorded, so this does not
        // wait for a send's answer as the check below may.
        let message_id = inbound_message_id_for(account_id, &message.provider_message_id);
        let recorded = StreamId::for_uuid(location.clone(), AggregateKind::Message, message_id);
        if !self.store.read_stream(&recorded, 1, 1).await?.is_empty() {
            return Ok(false);
        }
        if message.from_me
            && self
                .own_send(account_id, &message.provider_message_id)
                .await?
        {
            // whatsnap's own reply, echoed by the engine: GHL has it already.
            return Ok(false);
        }
        let (stream, account) = self.followed_account(location, account_id).await?;
        if account.status == account::Status::Removed {
            return Err(ServiceError::FailedPrecondition(format!(
                "account {account_id} was removed"
            )));
        }
        let lid = message.peer.lid.as_deref();
        let phone = match (message.peer.phone.as_deref(), lid) {
            (Some(phone), Some(lid)) => {
                let phone = whatsnap_rpc::phone(phone)?.to_string();
                if account.identities.get(lid) != Some(&phone) {
                    self.learn_identity(location, &stream, account_id, lid, &phone, message)
                        .await?;
                }
                phone
            }
            (Some(phone), None) => whatsnap_rpc::phone(phone)?.to_string(),
            (None, Some(lid)) => {
                // Learned by this account (its own stream, never behind), else by another
                // account of the location.
                let known = match account.identities.get(lid) {
                    Some(phone) => Some(phone.clone()),
                    None => read_model::phone_of_lid(&self.db, location, lid)
                        .await
                        .map_err(ServiceError::from)?,
                };
                match known {
                    Some(phone) => phone,
                    None => return self.hold(location, &account, lid, message).await,
                }
            }
            (None, None) => {
                return Err(ServiceError::InvalidArgument(format!(
                    "message {} names no sender",
                    message.provider_message_id
                )));
            }
        };
        let Some(Observed {
            message_id,
            stream,
            body,
            attachments,
        }) = self.observed(location, &account, message).await?
        else {
            return Ok(false);
        };
        let event = Event::from(InboundMessageReceived {
            message_id,
            account_id,
            provider_message_id: message.provider_message_id.clone(),
            from: phone,
            to: account.phone_number.clone(),
            body,
            sender_name: message.sender_name.clone().filter(|n| !n.trim().is_empty()),
            received_at: message.sent_at,
            attachments,
            from_me: message.from_me,
            sender_lid: lid.map(str::to_owned),
        });
        Ok(!self.append_once(&stream, &event).await?)
    }

    /// A message seen in a chat, ready to record: its stream (named by the platform's id), its
    /// files kept in the media store. `None` when the stream has it already (a redelivery,
    /// whose files are not kept a second time).
    async fn observed(
        &self,
        location: &LocationId,
        account: &AccountState,
        message: &ObservedMessage,
    ) -> ServiceResult<Option<Observed>> {
        let account_id = account.account_id.ok_or_else(|| {
            ServiceError::FailedPrecondition("a message for an account never added".into())
        })?;
        let message_id = inbound_message_id_for(account_id, &message.provider_message_id);
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Message, message_id);
        if !self.store.read_stream(&stream, 1, 1).await?.is_empty() {
            return Ok(None);
        }
        let mut body = message.body.clone();
        let fetched = self
            .fetch_attachments(location, account, &message.attachments, &mut body)
            .await?;
        let attachments = self.host_attachments(location, &fetched, &mut body).await;
        Ok(Some(Observed {
            message_id,
            stream,
            body,
            attachments,
        }))
    }

    /// Records that `lid` and `phone` are one sender, and lets go of the messages held for that
    /// LID.
    async fn learn_identity(
        &self,
        location: &LocationId,
        stream: &StreamId,
        account_id: Uuid,
        lid: &str,
        phone: &str,
        message: &ObservedMessage,
    ) -> ServiceResult<()> {
        let merged = Event::from(ContactIdentityMerged {
            account_id,
            lid: lid.to_owned(),
            phone: phone.to_owned(),
            reason: format!(
                "WhatsApp sent message {} from {phone} with LID {lid}",
                message.provider_message_id
            ),
        });
        self.store
            .append(
                stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(&merged, metadata())],
            )
            .await?;
        tracing::info!(%location, %account_id, "a WhatsApp LID was matched to a phone number");
        for held in read_model::held_for(&self.db, location, lid)
            .await
            .map_err(ServiceError::from)?
        {
            self.release(location, held, phone).await?;
        }
        Ok(())
    }

    /// Holds a message from a sender known only by `lid` until WhatsApp names their number.
    async fn hold(
        &self,
        location: &LocationId,
        account: &AccountState,
        lid: &str,
        message: &ObservedMessage,
    ) -> ServiceResult<bool> {
        let account_id = account.account_id.unwrap_or_default();
        let Some(Observed {
            message_id,
            stream,
            body,
            attachments,
        }) = self.observed(location, account, message).await?
        else {
            return Ok(false);
        };
        let event = Event::from(InboundMessageHeld {
            message_id,
            account_id,
            provider_message_id: message.provider_message_id.clone(),
            sender_lid: lid.to_owned(),
            body,
            sender_name: message.sender_name.clone(),
            received_at: message.sent_at,
            attachments,
            from_me: message.from_me,
        });
        tracing::info!(%location, %account_id, %message_id, "a message from a sender known only by a WhatsApp LID is held until their number is known");
        Ok(!self.append_once(&stream, &event).await?)
    }

    /// Lets go of every held message whose sender's number is now known (learned by another
    /// account, or while the message was being held).
    pub(crate) async fn release_known(&self) -> ServiceResult<usize> {
        let known = read_model::held_with_known_number(&self.db)
            .await
            .map_err(ServiceError::from)?;
        for (location, message_id, phone) in &known {
            self.release(location, *message_id, phone).await?;
        }
        Ok(known.len())
    }

    /// A held message, now that its sender's number is known: received, from `phone`.
    async fn release(
        &self,
        location: &LocationId,
        message_id: Uuid,
        phone: &str,
    ) -> ServiceResult<()> {
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Message, message_id);
        let history = self.store.read_stream(&stream, 1, usize::MAX).await?;
        let Some(Ok(Event::InboundMessageHeld(held))) = history.first().map(|e| e.decode()) else {
            return Ok(());
        };
        if history.len() > 1 {
            return Ok(());
        }
        let (_, account) = self.load_account(location, held.account_id).await?;
        let received = Event::from(InboundMessageReceived {
            message_id,
            account_id: held.account_id,
            provider_message_id: held.provider_message_id,
            from: phone.to_owned(),
            to: account.phone_number,
            body: held.body,
            sender_name: held.sender_name.filter(|n| !n.trim().is_empty()),
            received_at: held.received_at,
            attachments: held.attachments,
            from_me: held.from_me,
            sender_lid: Some(held.sender_lid),
        });
        match self
            .store
            .append(
                &stream,
                ExpectedVersion::Exact(1),
                vec![NewEvent::new(&received, metadata())],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::WrongExpectedVersion { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// A provider's receipt for a message whatsnap sent: final states and reads, each once.
    async fn record_receipt(
        &self,
        location: &LocationId,
        account_id: Uuid,
        message_id: Uuid,
        provider_message_id: &str,
        receipt: &Receipt,
    ) -> ServiceResult<bool> {
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Message, message_id);
        let updated = Aggregates::new(self.store.as_ref())
            .update(&stream, &metadata(), |state: &OutboundState| {
                decide_delivery_status(state, message_id, account_id, provider_message_id, receipt)
                    .map(Vec::from_iter)
                    .map_err(ServiceError::NotFound)
            })
            .await
            .map_err(|e| ServiceError::not_updated(format_args!("message {message_id}"), e))?;
        if updated.appended > 0 {
            self.receipts_came(location, account_id).await?;
        }
        Ok(updated.appended > 0)
    }

    /// A receipt came: an account flagged as not delivering delivers again.
    async fn receipts_came(&self, location: &LocationId, account_id: Uuid) -> ServiceResult<()> {
        let (_, account) = self.followed_account(location, account_id).await?;
        if account.not_delivering.is_some() {
            connection::record_delivery(
                self.store.as_ref(),
                location,
                account_id,
                true,
                "a delivery receipt came",
            )
            .await?;
        }
        Ok(())
    }

    /// Flags each connected account with a live link whose last replies, sent more than
    /// `patience` ago, all lack a receipt: its link says open while WhatsApp delivers nothing.
    pub(crate) async fn flag_silent_links(
        &self,
        accounts: &[(LocationId, Uuid)],
        patience: chrono::Duration,
    ) -> ServiceResult<()> {
        const LAST: i64 = 3;
        let before = Utc::now() - patience;
        for (location, account_id) in accounts {
            if !read_model::unanswered_sends(&self.db, *account_id, before, LAST).await? {
                continue;
            }
            let (_, account) = self.load_account(location, *account_id).await?;
            if account.status != account::Status::Connected || account.not_delivering.is_some() {
                continue;
            }
            let reason = format!(
                "the last {LAST} replies, sent more than {} s ago, have no delivery receipt",
                patience.num_seconds()
            );
            connection::record_delivery(self.store.as_ref(), location, *account_id, false, &reason)
                .await?;
        }
        Ok(())
    }
}
