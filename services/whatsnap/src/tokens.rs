//! API tokens as a service: the gRPC API behind `whatsnap tokens create|list|revoke`, the read
//! model that lists them, and the first admin token of a deployment. The check of a presented
//! token is in `whatsnap-auth`, against the token's own stream.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Any, AnyConnection, Row};
use tonic::{Request, Response, Status};
use tracing::info;
use whatsnap_auth::{ApiToken, Caller, IssueError};
use whatsnap_events::{ApiTokenIssued, Event, RecordedEvent};
use whatsnap_eventstore::EventStore;
use whatsnap_eventstore::projection::{ApplyError, Projection};
use whatsnap_proto::tokens::v1 as pb;
use whatsnap_rpc::ReadDb;

pub struct Tokens {
    store: Arc<dyn EventStore>,
    db: ReadDb,
}

impl Tokens {
    pub fn new(store: Arc<dyn EventStore>, db: ReadDb) -> Self {
        Self { store, db }
    }

    pub fn grpc(self) -> pb::tokens_service_server::TokensServiceServer<Self> {
        pb::tokens_service_server::TokensServiceServer::new(self)
    }
}

fn status(err: IssueError) -> Status {
    match err {
        IssueError::Invalid(message) => Status::invalid_argument(message),
        err @ IssueError::NotFound(_) => Status::not_found(err.to_string()),
        err @ IssueError::Store(_) => Status::unavailable(err.to_string()),
    }
}

fn caller_id<T>(request: &Request<T>) -> Option<String> {
    request
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.token_id.clone())
}

fn to_pb(issued: &ApiTokenIssued, revoked: bool, issued_at: &str) -> pb::Token {
    pb::Token {
        token_id: issued.token_id.clone(),
        name: issued.name.clone(),
        role: issued.role.clone(),
        locations: issued.locations.clone(),
        expires_at: issued
            .expires_at
            .map(|at| at.to_rfc3339())
            .unwrap_or_default(),
        revoked,
        issued_at: issued_at.to_owned(),
    }
}

#[tonic::async_trait]
impl pb::tokens_service_server::TokensService for Tokens {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreatedToken>, Status> {
        let issued_by = caller_id(&request);
        let request = request.into_inner();
        let expires_at = match request.expires_in_seconds {
            0 => None,
            seconds => Some(
                Utc::now()
                    + chrono::Duration::seconds(i64::try_from(seconds).map_err(|_| {
                        Status::invalid_argument("expires_in_seconds is too large")
                    })?),
            ),
        };
        let token = ApiToken::generate();
        let issued = whatsnap_auth::issue(
            self.store.as_ref(),
            &token,
            ApiTokenIssued {
                token_id: String::new(),
                hash: String::new(),
                name: request.name,
                role: request.role,
                locations: request.locations,
                expires_at,
                issued_by,
            },
        )
        .await
        .map_err(status)?;
        info!(token_id = %issued.token_id, role = %issued.role, "api token issued");
        Ok(Response::new(pb::CreatedToken {
            token: Some(to_pb(&issued, false, &Utc::now().to_rfc3339())),
            secret: token.expose().to_owned(),
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let rows = sqlx::query(
            "SELECT token_id, name, role, locations, expires_at, revoked, issued_at \
             FROM api_tokens ORDER BY issued_at, token_id",
        )
        .fetch_all(&self.db)
        .await
        .map_err(|e| Status::unavailable(format!("api tokens cannot be read: {e}")))?;
        let tokens = rows
            .iter()
            .map(|row| pb::Token {
                token_id: row.get("token_id"),
                name: row.get("name"),
                role: row.get("role"),
                locations: serde_json::from_str(&row.get::<String, _>("locations"))
                    .unwrap_or_default(),
                expires_at: row
                    .get::<Option<String>, _>("expires_at")
                    .unwrap_or_default(),
                revoked: row.get::<i64, _>("revoked") != 0,
                issued_at: row.get("issued_at"),
            })
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let revoked_by = caller_id(&request);
        let token_id = request.into_inner().token_id;
        whatsnap_auth::revoke(self.store.as_ref(), &token_id, revoked_by)
            .await
            .map_err(status)?;
        info!(%token_id, "api token revoked");
        Ok(Response::new(pb::Token {
            token_id,
            revoked: true,
            ..Default::default()
        }))
    }
}

/// The tokens read model, for `tokens list` (hashes stay in the log).
pub struct TokensProjection;

#[async_trait]
impl Projection<Any> for TokensProjection {
    fn name(&self) -> &str {
        "api_tokens"
    }

    fn reads(&self) -> Option<&'static [&'static str]> {
        Some(&["ApiTokenIssued", "ApiTokenRevoked"])
    }

    fn migrations(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE api_tokens (token_id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, locations TEXT NOT NULL, expires_at TEXT, revoked BIGINT NOT NULL, issued_at TEXT NOT NULL)",
        ]
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        match event.decode()? {
            Event::ApiTokenIssued(issued) => record_issue(conn, &issued, event).await?,
            Event::ApiTokenRevoked(revoked) => revoke(conn, &[revoked.token_id]).await?,
            _ => {}
        }
        Ok(())
    }

    /// A batch's revocations in one statement per few hundred tokens, after its issues: a
    /// token's revocation follows its issue in the log, so this leaves what applying them one
    /// at a time would. A rebuild of a log with many revocations is a few statements per batch
    /// instead of one per event.
    async fn apply_together(
        &self,
        conn: &mut AnyConnection,
        events: &[&RecordedEvent],
    ) -> Option<Result<(), ApplyError>> {
        Some(self.revoke_together(conn, events).await)
    }

    async fn reset(&self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM api_tokens")
            .execute(&mut *conn)
            .await
            .map(drop)
    }

    /// A rebuild's revocations, [`BATCH`] to a transaction.
    fn batch_size(&self) -> Option<usize> {
        Some(BATCH)
    }
}

/// The most events of one transaction: a rebuild's revocations in a few statements each.
const BATCH: usize = 5_000;

impl TokensProjection {
    async fn revoke_together(
        &self,
        conn: &mut AnyConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ApplyError> {
        let mut revoked = std::collections::BTreeSet::new();
        for event in events {
            match event.decode()? {
                Event::ApiTokenIssued(issued) => record_issue(conn, &issued, event).await?,
                Event::ApiTokenRevoked(revocation) => {
                    revoked.insert(revocation.token_id);
                }
                _ => {}
            }
        }
        revoke(conn, &revoked.into_iter().collect::<Vec<_>>()).await
    }
}

/// A token issued, in the read model (once: issuing again changes nothing).
async fn record_issue(
    conn: &mut AnyConnection,
    issued: &ApiTokenIssued,
    event: &RecordedEvent,
) -> Result<(), ApplyError> {
    sqlx::query(
        "INSERT INTO api_tokens (token_id, name, role, locations, expires_at, revoked, issued_at) \
         VALUES ($1, $2, $3, $4, $5, 0, $6) ON CONFLICT (token_id) DO NOTHING",
    )
    .bind(&issued.token_id)
    .bind(&issued.name)
    .bind(&issued.role)
    .bind(serde_json::to_string(&issued.locations)?)
    .bind(issued.expires_at.map(|at: DateTime<Utc>| at.to_rfc3339()))
    .bind(event.occurred_at.to_rfc3339())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// `tokens` marked revoked, many to a statement.
async fn revoke(conn: &mut AnyConnection, tokens: &[String]) -> Result<(), ApplyError> {
    const REVOKE: &str = "UPDATE api_tokens SET revoked = 1 WHERE token_id IN";
    Ok(whatsnap_eventstore::rows::execute_in(conn, REVOKE, tokens).await?)
}

/// Where the embedded setup keeps its first admin token and its service token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
pub const SERVICE_TOKEN_FILE: &str = "service-token";

/// Records `token` as an admin token of every location, unless it already is.
pub async fn record_admin(store: &dyn EventStore, token: &ApiToken) -> anyhow::Result<()> {
    whatsnap_auth::issue(
        store,
        token,
        ApiTokenIssued {
            token_id: String::new(),
            hash: String::new(),
            name: "first admin".into(),
            role: "admin".into(),
            locations: vec![],
            expires_at: None,
            issued_by: None,
        },
    )
    .await
    .map(drop)
    .map_err(|e| anyhow::anyhow!("recording the first admin token: {e}"))
}

/// The token in `path`, or a new one written there (mode 0600) when there is none.
pub fn load_or_create(path: &Path) -> anyhow::Result<(ApiToken, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = ApiToken::parse(&text)
                .with_context(|| format!("{} does not hold an API token", path.display()))?;
            Ok((token, false))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let token = ApiToken::generate();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(format!("{}\n", token.expose()).as_bytes())?;
            file.sync_all()?;
            Ok((token, true))
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}
