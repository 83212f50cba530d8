//! The session service owns accounts — the messaging accounts connected to a GHL location —
//! and records the messages they receive. Commands arrive over gRPC (`whatsnap.session.v1`),
//! are decided against the account's own stream, and become events; the `session_accounts`
//! read model answers queries.

mod account;
mod outbound;
mod read_model;

use std::sync::Arc;

use chrono::Utc;
use tonic::{Request, Response, Status};
use tracing::instrument;
use uuid::Uuid;
use whatsnap_events::{
    AccountKind, AggregateKind, Attachment, Event, EventMetadata, InboundMessageReceived,
    LocationId, NewEvent, OutboundMessageRequested, StreamId, TwilioCredentials, contact_id_for,
    inbound_message_id_for, outbound_message_id_for,
};
use whatsnap_eventstore::{EventStore, ExpectedVersion, StoreError};
use whatsnap_proto::session::v1 as pb;
use whatsnap_rpc::{ReadDb, ServiceError, ServiceResult};
use whatsnap_secrets::SecretKey;
use whatsnap_twilio::{self as twilio, TwilioClient, TwilioError};

pub use account::{
    AccountState, DEFAULT_TAG_PREFIX, check_rotation, decide_add, decide_remove, decide_rotate,
    evolve, slug_tag,
};
pub use outbound::{OutboundQueue, OutboundState, SEND, SendWorker, decide_delivery_status};
pub use read_model::AccountsProjection;

/// What the session service is configured with.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Seals the credentials of accounts before they are stored.
    pub secret_key: SecretKey,
    /// The Twilio API (Twilio's own by default).
    pub twilio: TwilioClient,
    /// How many accounts, of all kinds, one location may have.
    pub max_accounts_per_location: usize,
    /// What every account tag starts with (`whatsnap-account-` by default).
    pub tag_prefix: String,
    /// Where Twilio reports the delivery status of what whatsnap sends: the gateway's public
    /// base URL. Without it, messages go out with no StatusCallback.
    pub status_callback_base: Option<String>,
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
}

impl Session {
    pub fn new(store: Arc<dyn EventStore>, db: ReadDb, config: SessionConfig) -> Self {
        Self { store, db, config }
    }

    /// Checks Twilio credentials and number with Twilio, and seals the token for storage.
    async fn twilio_credentials(
        &self,
        credentials: Option<pb::TwilioCredentials>,
        phone: Option<&str>,
    ) -> ServiceResult<TwilioCredentials> {
        let (Some(credentials), Some(phone)) = (credentials, phone) else {
            return Err(ServiceError::InvalidArgument(
                "a Twilio account needs its Account SID, Auth Token and phone number".into(),
            ));
        };
        let (sid, token) = (
            credentials.account_sid.trim(),
            credentials.auth_token.trim(),
        );
        if !sid.starts_with("AC") || sid.len() != 34 {
            return Err(ServiceError::InvalidArgument(format!(
                "{sid:?} is not a Twilio Account SID (AC followed by 32 characters)"
            )));
        }
        if token.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "the Twilio Auth Token is empty".into(),
            ));
        }
        self.config
            .twilio
            .verify(&twilio::Credentials::new(sid, token), phone)
            .await
            .map_err(|err| match err {
                TwilioError::Unavailable(reason) => ServiceError::Unavailable(format!(
                    "cannot check the account with Twilio: {reason}"
                )),
                refused => ServiceError::FailedPrecondition(refused.to_string()),
            })?;
        Ok(TwilioCredentials {
            account_sid: sid.to_owned(),
            auth_token: self.config.secret_key.seal(token),
        })
    }

    pub fn grpc(&self) -> pb::session_service_server::SessionServiceServer<Self> {
        pb::session_service_server::SessionServiceServer::new(self.clone())
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
            twilio: self.config.twilio.clone(),
            status_callback_base: self.config.status_callback_base.clone(),
            patience: self.config.send_patience,
            poll: std::time::Duration::from_millis(100),
        })
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
        let outcome = self
            .store
            .append(
                stream,
                ExpectedVersion::Exact(state.version),
                vec![NewEvent::new(event, metadata())],
            )
            .await?;
        Ok(evolve(state, event, outcome.version))
    }

    /// The account's state from its own stream; not found when it was never added.
    async fn load_account(
        &self,
        location: &LocationId,
        account_id: Uuid,
    ) -> ServiceResult<(StreamId, AccountState)> {
        let (stream, state) = read_account(self.store.as_ref(), location, account_id).await?;
        if state.account_id.is_none() {
            return Err(ServiceError::NotFound(format!(
                "no account {account_id} in location {location}"
            )));
        }
        Ok((stream, state))
    }
}

/// The account's state from its own stream; empty (no `account_id`) when it was never added.
pub(crate) async fn read_account(
    store: &dyn EventStore,
    location: &LocationId,
    account_id: Uuid,
) -> ServiceResult<(StreamId, AccountState)> {
    let stream = StreamId::for_uuid(location.clone(), AggregateKind::Account, account_id);
    let mut state = AccountState::default();
    for event in store.read_stream(&stream, 1, usize::MAX).await? {
        let decoded = event
            .decode()
            .map_err(|e| ServiceError::FailedPrecondition(format!("account {account_id}: {e}")))?;
        state = evolve(state, &decoded, event.version);
    }
    Ok((stream, state))
}

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
        let twilio = match kind {
            AccountKind::Twilio => Some(
                self.twilio_credentials(request.twilio, phone.as_deref())
                    .await?,
            ),
            _ => None,
        };
        let account_id = Uuid::now_v7();
        let event = decide_add(
            &self.config.tag_prefix,
            account_id,
            kind,
            &request.name,
            phone,
            twilio,
            &taken,
        )?;
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Account, account_id);
        let outcome = self
            .store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::new(&event, metadata())],
            )
            .await
            .map_err(ServiceError::from)?;
        let state = evolve(AccountState::default(), &event, outcome.version);
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
        let request = request.into_inner();
        let location = match request.location_id.as_str() {
            "" => None,
            value => Some(whatsnap_rpc::location(value)?),
        };
        let accounts = read_model::list(&self.db, location.as_ref())
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListAccountsResponse { accounts }))
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
        let credentials = self
            .twilio_credentials(
                Some(pb::TwilioCredentials {
                    account_sid,
                    auth_token: request.auth_token,
                }),
                state.phone_number.as_deref(),
            )
            .await?;
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
        let (_, account) = self.load_account(&location, account_id).await?;
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
        let stream = StreamId::for_uuid(location, AggregateKind::Message, message_id);
        for _ in 0..5 {
            let history = self
                .store
                .read_stream(&stream, 1, usize::MAX)
                .await
                .map_err(ServiceError::from)?;
            let state = OutboundState::from_history(&history)
                .map_err(|e| ServiceError::FailedPrecondition(e.to_string()))?;
            let decided = decide_delivery_status(
                &state,
                message_id,
                account_id,
                &request.provider_message_id,
                status,
                error_code,
            )
            .map_err(ServiceError::NotFound)?;
            let Some(event) = decided else {
                return Ok(Response::new(pb::RecordDeliveryStatusResponse {
                    changed: false,
                }));
            };
            match self
                .store
                .append(
                    &stream,
                    ExpectedVersion::Exact(state.version),
                    vec![NewEvent::new(&event, metadata())],
                )
                .await
            {
                Ok(_) => {
                    return Ok(Response::new(pb::RecordDeliveryStatusResponse {
                        changed: true,
                    }));
                }
                Err(StoreError::WrongExpectedVersion { .. }) => continue,
                Err(err) => return Err(ServiceError::from(err).into()),
            }
        }
        Err(
            ServiceError::Unavailable(format!("message {message_id} kept changing; try again"))
                .into(),
        )
    }
}
