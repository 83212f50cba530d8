//! What every whatsnap gRPC server shares: [`ServiceError`], the one mapping from what went
//! wrong to a gRPC status; parsing of ids and phone numbers in requests; the read-model database
//! ([`ReadDb`]), which is SQLite in the embedded setup and PostgreSQL in the distributed one; and
//! the protobuf form of a stored event; per-location request quotas ([`quota`]).

pub mod quota;

use tonic::{Code, Status};
use tracing::error;
use uuid::Uuid;
use whatsnap_events::{LocationId, PhoneNumber, RecordedEvent};
use whatsnap_eventstore::{AggregateError, LoadError, StoreError};

/// The read models of every service: `sqlx::Any` over SQLite or PostgreSQL. Their SQL keeps to
/// what both understand (`$n` placeholders, `ON CONFLICT`, `BIGINT`, `TEXT`).
pub type ReadDb = sqlx::AnyPool;

/// What a service call can fail with; each kind has one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Conflict(String),
    /// A third party (Twilio, GHL) could not be reached; worth trying again.
    #[error("{0}")]
    Unavailable(String),
    /// The caller did not prove who it is (a webhook without a valid key or signature).
    #[error("{0}")]
    Unauthenticated(String),
    /// A fault of whatsnap's own, not the caller's.
    #[error("{0}")]
    Internal(String),
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("read model: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        let code = match &err {
            ServiceError::InvalidArgument(_) => Code::InvalidArgument,
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::AlreadyExists(_) => Code::AlreadyExists,
            ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServiceError::Conflict(_) => Code::Aborted,
            ServiceError::Unavailable(_) => Code::Unavailable,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::Internal(_) => {
                error!(error = %err, "internal error");
                Code::Internal
            }
            ServiceError::Store(e) if e.is_conflict() => Code::Aborted,
            ServiceError::Store(StoreError::InvalidAppend { .. }) => Code::InvalidArgument,
            ServiceError::Store(_) | ServiceError::Database(_) => {
                error!(error = %err, "internal error");
                Code::Unavailable
            }
        };
        Status::new(code, err.to_string())
    }
}

impl ServiceError {
    /// A stream that could not be folded; `what` names its aggregate ("account …").
    pub fn unloadable(what: impl std::fmt::Display, err: LoadError) -> Self {
        match err {
            LoadError::Store(err) => err.into(),
            LoadError::Undecodable(err) => Self::FailedPrecondition(format!("{what}: {err}")),
        }
    }

    /// An update of an aggregate that did not happen: a refusal as decided, and a stream that
    /// kept changing as unavailable (worth trying again); `what` names the aggregate.
    pub fn not_updated(what: impl std::fmt::Display, err: AggregateError<ServiceError>) -> Self {
        match err {
            AggregateError::Rejected(err) => err,
            AggregateError::Load(err) => Self::unloadable(what, err),
            AggregateError::Store(err) => err.into(),
            AggregateError::KeptChanging { .. } => {
                Self::Unavailable(format!("{what} kept changing; try again"))
            }
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

pub fn location(value: &str) -> ServiceResult<LocationId> {
    LocationId::parse(value).map_err(|e| ServiceError::InvalidArgument(e.to_string()))
}

pub fn uuid(what: &str, value: &str) -> ServiceResult<Uuid> {
    Uuid::parse_str(value)
        .map_err(|_| ServiceError::InvalidArgument(format!("{what} {value:?} is not a UUID")))
}

pub fn phone(value: &str) -> ServiceResult<PhoneNumber> {
    PhoneNumber::parse(value).map_err(|e| ServiceError::InvalidArgument(e.to_string()))
}

/// The payload of a stored event as JSON text, for people and for the CLI.
pub fn payload_json(event: &RecordedEvent) -> String {
    match serde_json::from_slice::<serde_json::Value>(&event.payload) {
        Ok(value) => value.to_string(),
        Err(_) => String::from_utf8_lossy(&event.payload).into_owned(),
    }
}
