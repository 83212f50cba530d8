//! The ghl-sync service carries everything to GoHighLevel. It keeps, per location, the work
//! that must cross — contacts to create and tag, inbound messages to post, delivery statuses
//! to report — as a read model ([`read_model`]), and a [`worker`] drains it through the GHL
//! client, one task per location, paced by GHL's per-location rate limits. It also holds each
//! location's connection ([`connection`]): the app install, and the OAuth or Private
//! Integration tokens, sealed. It keeps each connected location's GHL users as events
//! ([`users`]), the candidates of assignment, and sets a contact's owner (`assignedTo`) in GHL
//! when the assignment service decides one.

mod application;
pub mod connection;
pub mod effects;
pub mod oauth_state;
pub mod owners;
pub mod pacing;
mod queue_moves;
pub mod read_model;
pub mod users;
pub mod worker;

use std::sync::Arc;

use sqlx::Row;
use tonic::{Request, Response, Status};
use whatsnap_events::{
    Event, EventMetadata, GhlInstalled, GhlSyncRetryRequested, GhlTokenKind, GhlTokensIssued,
    GhlUninstalled, LocationId, NewEvent,
};
use whatsnap_eventstore::{Aggregates, EventStore, ExpectedVersion, Loaded};
use whatsnap_proto::ghlsync::v1 as pb;
use whatsnap_rpc::{ReadDb, ServiceError};

pub use application::Application;
pub use queue_moves::queue_moves;
pub use read_model::PendingWork;
pub use worker::{Worker, WorkerConfig};

/// How often the worker looks at its queue when the queue's notifications wake it (see
/// [`GhlSync::hears_queue_moves`]): only for what a lost connection missed.
pub const HEARD_POLL: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone)]
pub struct GhlSync {
    store: Arc<dyn EventStore>,
    db: ReadDb,
    /// The GHL client and what seals tokens; without it, work waits and connecting is refused.
    config: Option<WorkerConfig>,
    /// The contacts' keys, which seal what the queue keeps of a person.
    keys: Option<Arc<whatsnap_pii::ContactKeys>>,
    /// The states of the installs whatsnap started.
    states: oauth_state::OAuthStates,
    /// Whether an OAuth redirect without a state (an install started in GHL's marketplace, not
    /// by whatsnap) connects its location.
    installs_without_state: bool,
}

impl GhlSync {
    pub fn new(store: Arc<dyn EventStore>, db: ReadDb) -> Self {
        Self {
            states: oauth_state::OAuthStates::new(db.clone()),
            store,
            db,
            config: None,
            keys: None,
            installs_without_state: false,
        }
    }

    /// Whether an OAuth redirect without a state connects its location: for apps listed in
    /// GHL's marketplace, whose installs GHL starts (off: only installs whatsnap started do).
    pub fn with_installs_without_state(mut self, accept: bool) -> Self {
        self.installs_without_state = accept;
        self
    }

    /// With the contacts' keys: the queue keeps phones, names and texts sealed.
    pub fn with_contact_keys(mut self, keys: Arc<whatsnap_pii::ContactKeys>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// With the GHL client: the worker can run, and locations can connect.
    pub fn with_client(mut self, config: WorkerConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// The worker that drains the queue, when a client is configured.
    pub fn worker(&self) -> Option<Arc<Worker>> {
        self.config.clone().map(|mut config| {
            config.contact_keys = self.keys.clone();
            Arc::new(Worker::new(self.store.clone(), self.db.clone(), config))
        })
    }

    /// Lets the worker look at its queue as soon as the queue's read model, kept by this
    /// process, moves.
    pub fn queue_moves_with(&mut self, progress: tokio::sync::watch::Receiver<u64>) {
        if let Some(config) = self.config.as_mut() {
            config.queue_moved = Some(progress);
        }
    }

    /// Lets the worker look at its queue as soon as the queue's read model moves, whichever
    /// replica keeps it: it listens to the read model's notifications in the PostgreSQL
    /// database at `url` (see [`queue_moves`]), and polls only every [`HEARD_POLL`] for what a
    /// lost connection missed.
    pub fn hears_queue_moves(&mut self, url: &str) {
        if let Some(config) = self.config.as_mut() {
            config.queue_moved = Some(queue_moves(url));
            config.poll = HEARD_POLL;
        }
    }

    /// Shares the renewal of tokens with the other replicas of ghl-sync through `leases`: one
    /// replica at a time refreshes a connection's tokens.
    pub fn share_tokens_with(
        &mut self,
        leases: Arc<whatsnap_eventstore::lease::Leases<sqlx::Any>>,
    ) {
        if let Some(config) = self.config.as_mut() {
            config.replicas = Some(leases);
        }
    }

    fn configured(&self) -> Result<&WorkerConfig, ServiceError> {
        self.config.as_ref().ok_or_else(|| {
            ServiceError::FailedPrecondition("this ghl-sync runs without a GHL client".into())
        })
    }

    /// Appends tokens for a location (and its install, when OAuth brought it).
    async fn connect(
        &self,
        location: &LocationId,
        tokens: GhlTokensIssued,
        installed_by_oauth: bool,
    ) -> Result<(), ServiceError> {
        let stream = connection::stream(location);
        let state = connection::load(self.store.as_ref(), &stream).await?;
        let mut events = Vec::new();
        if installed_by_oauth && !state.installed {
            events.push(Event::from(GhlInstalled {
                company_id: tokens.company_id.clone(),
                install_type: tokens.user_type.clone(),
                scopes: tokens
                    .scope
                    .as_deref()
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
            }));
        }
        events.push(Event::from(tokens));
        let metadata = EventMetadata::new_correlation().traced(whatsnap_telemetry::current());
        let version = state.version;
        Aggregates::new(self.store.as_ref())
            .append(&stream, Loaded { state, version }, &events, &metadata)
            .await?;
        Ok(())
    }

    pub fn grpc(&self) -> pb::ghl_sync_service_server::GhlSyncServiceServer<Self> {
        pb::ghl_sync_service_server::GhlSyncServiceServer::new(self.clone())
    }

    pub fn projection(&self) -> Arc<PendingWork> {
        Arc::new(PendingWork::new(self.keys.clone()))
    }
}

#[tonic::async_trait]
impl pb::ghl_sync_service_server::GhlSyncService for GhlSync {
    async fn record_install(
        &self,
        request: Request<pb::RecordInstallRequest>,
    ) -> Result<Response<pb::RecordInstallResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        if let Some(ours) = self.config.as_ref().and_then(|c| c.app_id.as_deref())
            && !request.app_id.is_empty()
            && request.app_id != ours
        {
            return Err(ServiceError::InvalidArgument(format!(
                "the install is for another GHL app ({}), not whatsnap's",
                request.app_id
            ))
            .into());
        }
        let stream = connection::stream(&location);
        let state = connection::load(self.store.as_ref(), &stream).await?;
        if state.installed == request.installed {
            return Ok(Response::new(pb::RecordInstallResponse { changed: false }));
        }
        let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
        let event = if request.installed {
            Event::from(GhlInstalled {
                company_id: non_empty(request.company_id),
                install_type: "Location".into(),
                scopes: Vec::new(),
            })
        } else {
            Event::from(GhlUninstalled {
                app_id: non_empty(request.app_id),
            })
        };
        let metadata = EventMetadata::new_correlation().traced(whatsnap_telemetry::current());
        let version = state.version;
        Aggregates::new(self.store.as_ref())
            .append(&stream, Loaded { state, version }, &[event], &metadata)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::RecordInstallResponse { changed: true }))
    }

    async fn record_contact_webhook(
        &self,
        request: Request<pb::RecordContactWebhookRequest>,
    ) -> Result<Response<pb::RecordContactWebhookResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let recorded = owners::record(
            self.store.as_ref(),
            owners::ContactWebhook {
                location: &location,
                phone: &request.phone,
                ghl_contact_id: &request.ghl_contact_id,
                assigned_to: Some(request.assigned_to.as_str()),
                source: Some(request.source.as_str()),
            },
        )
        .await?;
        Ok(Response::new(pb::RecordContactWebhookResponse {
            owner_changed: recorded.owner_changed,
            source_changed: recorded.source_changed,
        }))
    }

    async fn sync_status(
        &self,
        request: Request<pb::SyncStatusRequest>,
    ) -> Result<Response<pb::SyncStatusResponse>, Status> {
        let location = whatsnap_rpc::location(&request.into_inner().location_id)?;
        let count = |kind: &'static str| {
            let db = self.db.clone();
            let location = location.to_string();
            async move {
                sqlx::query(
                    "SELECT COUNT(*) AS n FROM ghl_pending WHERE location_id = $1 AND kind = $2",
                )
                .bind(location)
                .bind(kind)
                .fetch_one(&db)
                .await
                .map(|row| row.get::<i64, _>("n") as u64)
            }
        };
        let contacts = count(read_model::CONTACT)
            .await
            .map_err(ServiceError::from)?;
        let messages = count(read_model::MESSAGE)
            .await
            .map_err(ServiceError::from)?;
        let statuses = count(read_model::STATUS)
            .await
            .map_err(ServiceError::from)?;
        let assignments = count(read_model::ASSIGN)
            .await
            .map_err(ServiceError::from)?;
        let connection: Option<String> =
            sqlx::query("SELECT kind FROM ghl_connections WHERE location_id = $1")
                .bind(location.to_string())
                .fetch_optional(&self.db)
                .await
                .map_err(ServiceError::from)?
                .map(|row| row.get("kind"));
        let installed = sqlx::query("SELECT location_id FROM ghl_installs WHERE location_id = $1")
            .bind(location.to_string())
            .fetch_optional(&self.db)
            .await
            .map_err(ServiceError::from)?
            .is_some();
        let waiting_because = match (
            contacts + messages + statuses + assignments,
            &connection,
            installed,
        ) {
            (0, _, _) => String::new(),
            (_, None, false) => format!(
                "location {location} has not installed the whatsnap app in GHL (or connect it with `whatsnap ghl connect`)"
            ),
            (_, None, true) => format!(
                "location {location} installed the whatsnap app, but whatsnap holds no token for it yet: finish the install through /oauth/start"
            ),
            (_, Some(_), _) if self.config.is_none() => {
                "this ghl-sync runs without a GHL client".to_owned()
            }
            _ => String::new(),
        };
        let set_aside = sqlx::query(
            "SELECT kind, subject_id, reason, http_status FROM ghl_set_aside WHERE location_id = $1 \
             ORDER BY kind, subject_id",
        )
        .bind(location.to_string())
        .fetch_all(&self.db)
        .await
        .map_err(ServiceError::from)?
        .iter()
        .map(|row| pb::SetAsideItem {
            kind: row.get("kind"),
            subject_id: row.get("subject_id"),
            reason: row.get("reason"),
            http_status: row.get::<Option<i64>, _>("http_status").unwrap_or(0) as u32,
        })
        .collect();
        let queued = contacts + messages + statuses + assignments;
        // This replica's count if it does the GHL work, else what the replica that does it
        // saved last: the lower is the nearer to GHL's.
        let (daily_left, resets_in) = match &self.config {
            Some(config) => {
                let limiter = config.client.limiter();
                let here = limiter.daily_left(&location);
                match pacing::daily_left(&self.db, &location, limiter.limits()).await {
                    Some(saved) if saved.0 < here.0 => saved,
                    _ => here,
                }
            }
            None => (0, std::time::Duration::ZERO),
        };
        // A contact takes up to three requests (look-up, create, tags); the rest one each.
        let needed = contacts * 3 + messages + statuses + assignments;
        let allowance_warning = if self.config.is_some() && needed > u64::from(daily_left) {
            format!(
                "{queued} items need about {needed} GHL requests, but only {daily_left} are left of today's allowance: the rest waits until it resets in {} min",
                resets_in.as_secs() / 60
            )
        } else {
            String::new()
        };
        Ok(Response::new(pb::SyncStatusResponse {
            pending_contact_upserts: contacts,
            pending_messages: messages,
            waiting_because,
            pending_statuses: statuses,
            connection: connection.unwrap_or_default(),
            pending_assignments: assignments,
            set_aside,
            daily_requests_left: u64::from(daily_left),
            allowance_warning,
        }))
    }

    async fn retry_set_aside(
        &self,
        request: Request<pb::RetrySetAsideRequest>,
    ) -> Result<Response<pb::RetrySetAsideResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let (kind, subject) = (request.kind.trim(), request.subject_id.trim());
        let rows = sqlx::query(
            "SELECT kind, subject_id FROM ghl_set_aside WHERE location_id = $1 \
             AND ($2 = '' OR kind = $2) AND ($3 = '' OR subject_id = $3)",
        )
        .bind(location.to_string())
        .bind(kind)
        .bind(subject)
        .fetch_all(&self.db)
        .await
        .map_err(ServiceError::from)?;
        if rows.is_empty() && !(kind.is_empty() && subject.is_empty()) {
            return Err(ServiceError::NotFound(format!(
                "nothing of kind {kind:?} for {subject:?} is set aside in location {location}: see `whatsnap ghl status`"
            ))
            .into());
        }
        let mut requeued = 0;
        for row in rows {
            let kind: String = row.get("kind");
            let Ok(subject_id) = row.get::<String, _>("subject_id").parse::<uuid::Uuid>() else {
                continue;
            };
            let event = Event::from(GhlSyncRetryRequested {
                operation: kind.clone(),
                subject_id,
                requested_by: Some("whatsnap ghl retry".into()),
            });
            self.store
                .append(
                    &worker::subject_stream(&location, &kind, subject_id),
                    ExpectedVersion::Any,
                    vec![NewEvent::new(&event, EventMetadata::new_correlation())],
                )
                .await
                .map_err(ServiceError::from)?;
            requeued += 1;
        }
        Ok(Response::new(pb::RetrySetAsideResponse { requeued }))
    }

    async fn connect_private_token(
        &self,
        request: Request<pb::ConnectPrivateTokenRequest>,
    ) -> Result<Response<pb::ConnectResponse>, Status> {
        let request = request.into_inner();
        let location = whatsnap_rpc::location(&request.location_id)?;
        let token = request.token.trim();
        if token.is_empty() || token.len() > 4096 || token.chars().any(char::is_whitespace) {
            return Err(ServiceError::InvalidArgument(
                "a Private Integration Token is one word (it usually starts with pit-)".into(),
            )
            .into());
        }
        let company_id = request.company_id.trim();
        let id_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if company_id.len() > 100 || !company_id.chars().all(id_char) {
            return Err(ServiceError::InvalidArgument(
                "a GHL company id is one word of letters and digits, as GHL shows it".into(),
            )
            .into());
        }
        let config = self.configured()?;
        let tokens = GhlTokensIssued {
            kind: GhlTokenKind::PrivateIntegration,
            access_token: config.secret_key.seal(token),
            refresh_token: None,
            expires_at: None,
            user_type: "Location".into(),
            company_id: Some(company_id.to_owned()).filter(|c| !c.is_empty()),
            scope: None,
        };
        self.connect(&location, tokens, false).await?;
        Ok(Response::new(pb::ConnectResponse {
            location_id: location.to_string(),
            kind: "private_integration".into(),
            company_id: String::new(),
        }))
    }

    async fn begin_o_auth(
        &self,
        request: Request<pb::BeginOAuthRequest>,
    ) -> Result<Response<pb::BeginOAuthResponse>, Status> {
        // Who starts it: the caller's token, or whom the dashboard names when it asks with the
        // service credential.
        let caller = request
            .extensions()
            .get::<whatsnap_auth::Caller>()
            .and_then(|c| c.token_id.clone());
        let named = request.into_inner().started_by;
        let started_by = match (caller, named.trim()) {
            (Some(token), _) => format!("token {token}"),
            (None, "") => "whatsnap".to_owned(),
            (None, named) => named.to_owned(),
        };
        let config = self.configured()?;
        let state = self
            .states
            .issue(&started_by, chrono::Utc::now())
            .await
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        let url = config
            .client
            .authorize_url(Some(&state))
            .map_err(|e| ServiceError::FailedPrecondition(e.to_string()))?;
        tracing::info!(%started_by, "GHL install started");
        Ok(Response::new(pb::BeginOAuthResponse {
            authorize_url: url,
            expires_in_seconds: oauth_state::LIFETIME.as_secs(),
        }))
    }

    async fn complete_o_auth(
        &self,
        request: Request<pb::CompleteOAuthRequest>,
    ) -> Result<Response<pb::ConnectResponse>, Status> {
        let pb::CompleteOAuthRequest { code, state } = request.into_inner();
        if code.trim().is_empty() {
            return Err(
                ServiceError::InvalidArgument("the OAuth redirect carried no code".into()).into(),
            );
        }
        let config = self.configured()?;
        // The state first: a redirect whatsnap did not ask for costs no call to GHL.
        if state.trim().is_empty() {
            if !self.installs_without_state {
                return Err(ServiceError::InvalidArgument(
                    "this install was not started by whatsnap (GHL's redirect carried no state): \
                     start it with `whatsnap ghl install-url` or Install in the dashboard, or \
                     run with --ghl-installs-without-state to accept installs started in GHL's \
                     marketplace"
                        .into(),
                )
                .into());
            }
            tracing::info!("GHL install without a state accepted (--ghl-installs-without-state)");
        } else {
            let started_by = self
                .states
                .redeem(&state, chrono::Utc::now())
                .await
                .map_err(|e| match e {
                    oauth_state::StateError::Unknown => {
                        ServiceError::InvalidArgument(e.to_string())
                    }
                    oauth_state::StateError::Database(_) => {
                        ServiceError::Unavailable(e.to_string())
                    }
                })?;
            tracing::info!(%started_by, "GHL install's state redeemed");
        }
        let grant = config
            .client
            .exchange_code(code.trim())
            .await
            .map_err(|e| match e {
                whatsnap_ghl::client::GhlError::Refused { message, .. }
                | whatsnap_ghl::client::GhlError::Unauthorized { message } => {
                    ServiceError::InvalidArgument(format!("GHL refused the code: {message}"))
                }
                other if other.is_retryable() => ServiceError::Unavailable(other.to_string()),
                other => ServiceError::FailedPrecondition(other.to_string()),
            })?;
        let sealed = |t: &str| config.secret_key.seal(t);
        let Some(location) = grant.location_id.as_deref() else {
            // An agency install: its token makes each location's as the location installs.
            let Some(company) = grant.company_id.clone() else {
                return Err(ServiceError::FailedPrecondition(
                    "GHL granted a token for neither a location nor a company".into(),
                )
                .into());
            };
            let stream = connection::company_stream(&company).ok_or_else(|| {
                ServiceError::FailedPrecondition(format!("{company:?} is not a GHL company id"))
            })?;
            let tokens = GhlTokensIssued {
                kind: GhlTokenKind::Oauth,
                access_token: sealed(&grant.access_token),
                refresh_token: grant.refresh_token.as_deref().map(sealed),
                expires_at: grant
                    .expires_in
                    .map(|s| chrono::Utc::now() + chrono::Duration::seconds(s as i64)),
                user_type: "Company".into(),
                company_id: Some(company.clone()),
                scope: grant.scope.clone(),
            };
            let metadata = EventMetadata::new_correlation().traced(whatsnap_telemetry::current());
            self.store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![NewEvent::new(&Event::from(tokens), metadata)],
                )
                .await
                .map_err(ServiceError::from)?;
            tracing::info!(company_id = %company, "agency connected to GHL by OAuth");
            return Ok(Response::new(pb::ConnectResponse {
                location_id: String::new(),
                kind: "oauth_agency".into(),
                company_id: company,
            }));
        };
        let location = whatsnap_rpc::location(location)?;
        let tokens = GhlTokensIssued {
            kind: GhlTokenKind::Oauth,
            access_token: config.secret_key.seal(&grant.access_token),
            refresh_token: grant
                .refresh_token
                .as_deref()
                .map(|t| config.secret_key.seal(t)),
            expires_at: grant
                .expires_in
                .map(|s| chrono::Utc::now() + chrono::Duration::seconds(s as i64)),
            user_type: grant.user_type.clone().unwrap_or_else(|| "Location".into()),
            company_id: grant.company_id.clone(),
            scope: grant.scope.clone(),
        };
        self.connect(&location, tokens, true).await?;
        tracing::info!(%location, "location connected to GHL by OAuth");
        Ok(Response::new(pb::ConnectResponse {
            location_id: location.to_string(),
            kind: "oauth".into(),
            company_id: grant.company_id.clone().unwrap_or_default(),
        }))
    }
}
