//! Tokens as the log records them: issued, then perhaps revoked, each in its own stream named by
//! the token's id. A presented token is checked against its own stream, read as the call comes
//! in, so a revocation holds at once in every process, with no read model to lag behind.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tonic::Status;
use tracing::warn;
use whatsnap_events::{ApiTokenIssued, ApiTokenRevoked, Event, EventMetadata, LocationId};
use whatsnap_eventstore::EventStore;
use whatsnap_eventstore::aggregate::{Aggregate, AggregateError, Aggregates};

use crate::caller::{Caller, Locations, Role};
use crate::token::{ApiToken, TokenHash, token_stream};

/// A token's stream, folded.
#[derive(Debug, Clone, Default)]
pub struct TokenState {
    pub issued: Option<ApiTokenIssued>,
    pub revoked: bool,
}

impl Aggregate for TokenState {
    fn evolve(mut self, event: &Event, _version: u64) -> Self {
        match event {
            Event::ApiTokenIssued(issued) => self.issued = Some(issued.clone()),
            Event::ApiTokenRevoked(_) => self.revoked = true,
            _ => {}
        }
        self
    }
}

impl TokenState {
    /// The caller this token makes, when it still opens anything at `now`.
    fn caller(&self, now: DateTime<Utc>) -> Result<Caller, Status> {
        let issued = self
            .issued
            .as_ref()
            .ok_or_else(|| Status::unauthenticated("unknown API token"))?;
        if self.revoked {
            return Err(Status::unauthenticated("this API token was revoked"));
        }
        if issued.expires_at.is_some_and(|at| at <= now) {
            return Err(Status::unauthenticated("this API token has expired"));
        }
        let role = issued
            .role
            .parse::<Role>()
            .map_err(|_| Status::unauthenticated("this API token has an unknown role"))?;
        let locations = match issued.locations.is_empty() {
            true if role == Role::Admin => Locations::All,
            _ => Locations::Only(
                issued
                    .locations
                    .iter()
                    .filter_map(|l| LocationId::parse(l.as_str()).ok())
                    .collect::<BTreeSet<_>>(),
            ),
        };
        Ok(Caller {
            token_id: Some(issued.token_id.clone()),
            role,
            locations,
        })
    }
}

/// Finds the caller behind a presented credential.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn EventStore>,
    service: Option<TokenHash>,
}

impl Authenticator {
    /// Checks API tokens against `store`; `service` is the deployment's service token.
    pub fn new(store: Arc<dyn EventStore>, service: Option<&ApiToken>) -> Self {
        Self {
            store,
            service: service.map(ApiToken::hash),
        }
    }

    /// The caller of a bearer `credential`; UNAUTHENTICATED for one that is malformed, unknown,
    /// revoked or expired.
    pub async fn caller(&self, credential: &str) -> Result<Caller, Status> {
        let token = ApiToken::parse(credential)
            .map_err(|e| Status::unauthenticated(format!("not an API token: {e}")))?;
        let hash = token.hash();
        if self.service.as_ref().is_some_and(|s| s.matches(&hash)) {
            return Ok(Caller::service());
        }
        let stream = token_stream(&hash.id()).expect("a hash makes a valid id");
        let loaded = Aggregates::new(self.store.as_ref())
            .load::<TokenState>(&stream)
            .await
            .map_err(|err| {
                warn!(error = %err, "api tokens cannot be read");
                Status::unavailable("API tokens cannot be read now; try again")
            })?;
        // Ids are a prefix of the hash: the whole hash must match too.
        match &loaded.state.issued {
            Some(issued) if TokenHash::from_hex(issued.hash.clone()).matches(&hash) => {}
            _ => return Err(Status::unauthenticated("unknown API token")),
        }
        loaded.state.caller(Utc::now())
    }
}

/// Why a token was not issued or revoked.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    Invalid(String),
    #[error("no API token {0}")]
    NotFound(String),
    #[error("API tokens cannot be recorded: {0}")]
    Store(String),
}

/// Records `issued` as the issue of `token` (its id and hash are filled in); issuing the same
/// token again changes nothing.
pub async fn issue(
    store: &dyn EventStore,
    token: &ApiToken,
    mut issued: ApiTokenIssued,
) -> Result<ApiTokenIssued, IssueError> {
    let hash = token.hash();
    issued.token_id = hash.id();
    issued.hash = hash.as_str().to_owned();
    let role: Role = issued.role.parse().map_err(IssueError::Invalid)?;
    match (role, issued.locations.len()) {
        (Role::Operator, 1) | (Role::Admin, _) | (Role::ReadOnly, 1..) => {}
        (Role::Operator, _) => {
            return Err(IssueError::Invalid(
                "an operator token is for exactly one location (--location)".into(),
            ));
        }
        _ => {
            return Err(IssueError::Invalid(
                "a read-only token names its locations (--location, repeatable)".into(),
            ));
        }
    }
    for location in &issued.locations {
        LocationId::parse(location.as_str()).map_err(|e| IssueError::Invalid(e.to_string()))?;
    }
    let stream = token_stream(&issued.token_id).expect("a hash makes a valid id");
    let event = Event::ApiTokenIssued(issued.clone());
    Aggregates::new(store)
        .update::<TokenState, IssueError, _>(&stream, &EventMetadata::new_correlation(), |state| {
            match state.issued {
                Some(_) => Ok(vec![]),
                None => Ok(vec![event.clone()]),
            }
        })
        .await
        .map_err(not_updated)?;
    Ok(issued)
}

/// Records the revocation of token `token_id`; revoking it again changes nothing.
pub async fn revoke(
    store: &dyn EventStore,
    token_id: &str,
    revoked_by: Option<String>,
) -> Result<(), IssueError> {
    let stream = token_stream(token_id).ok_or_else(|| IssueError::NotFound(token_id.to_owned()))?;
    let event = Event::ApiTokenRevoked(ApiTokenRevoked {
        token_id: token_id.to_owned(),
        revoked_by,
    });
    Aggregates::new(store)
        .update::<TokenState, IssueError, _>(&stream, &EventMetadata::new_correlation(), |state| {
            match (&state.issued, state.revoked) {
                (None, _) => Err(IssueError::NotFound(token_id.to_owned())),
                (Some(_), true) => Ok(vec![]),
                (Some(_), false) => Ok(vec![event.clone()]),
            }
        })
        .await
        .map_err(not_updated)?;
    Ok(())
}

fn not_updated(err: AggregateError<IssueError>) -> IssueError {
    match err {
        AggregateError::Rejected(err) => err,
        other => IssueError::Store(other.to_string()),
    }
}
