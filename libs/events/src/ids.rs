use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is longer than {max} characters")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error("{what} {value:?} may only hold ASCII letters, digits, '-' and '_'")]
    BadCharacter { what: &'static str, value: String },
    #[error("stream id {value:?} is not of the form <location>.<aggregate>.<id>")]
    BadStreamId { value: String },
    #[error("unknown aggregate kind {value:?}")]
    UnknownAggregate { value: String },
    #[error("event id {value:?} is not a UUID")]
    BadEventId { value: String },
}

/// Identifiers become NATS subject tokens, so they are held to the safe subset: no `.`, `*`,
/// `>` or whitespace, which a subject would misread.
fn check_token(what: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            what,
            value: value.to_owned(),
            max,
        });
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(IdError::BadCharacter {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// A GHL location (sub-account) id: the tenant every event belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LocationId(String);

impl LocationId {
    pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        check_token("location id", &value, 64)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where what belongs to the whole agency rather than one location is kept (API tokens).
    /// GHL's location ids never start with `_`.
    pub fn agency() -> Self {
        Self("_agency".to_owned())
    }
}

impl TryFrom<String> for LocationId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<LocationId> for String {
    fn from(value: LocationId) -> Self {
        value.0
    }
}

impl fmt::Display for LocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The globally unique id of one event, a UUID v7 so that ids sort by creation time. It doubles
/// as the idempotency key of an append: the same id appended twice is stored once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for EventId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| IdError::BadEventId {
                value: s.to_owned(),
            })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The kinds of aggregate whose history is a stream. Each has one owning service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateKind {
    /// A connected messaging account (session).
    Account,
    /// A contact and its tags (contacts).
    Contact,
    /// One inbound or outbound message and its delivery (session).
    Message,
    /// The assignment rules of an account or location, and the decisions taken (assignment).
    Assignment,
    /// A location's GHL installation, tokens and synchronisation state (ghl-sync).
    Ghl,
    /// What happened to the system itself rather than to the business: events a projection
    /// parked and how an operator resolved them (one stream per location and projection).
    Operations,
    /// An API token: issued, then perhaps revoked (one stream per token, in the agency's
    /// [`LocationId::agency`] location).
    ApiToken,
}

impl AggregateKind {
    pub const ALL: [AggregateKind; 7] = [
        Self::Account,
        Self::Contact,
        Self::Message,
        Self::Assignment,
        Self::Ghl,
        Self::Operations,
        Self::ApiToken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Contact => "contact",
            Self::Message => "message",
            Self::Assignment => "assignment",
            Self::Ghl => "ghl",
            Self::Operations => "operations",
            Self::ApiToken => "api_token",
        }
    }
}

impl FromStr for AggregateKind {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| IdError::UnknownAggregate {
                value: s.to_owned(),
            })
    }
}

impl fmt::Display for AggregateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of one aggregate's stream: `<location>.<aggregate>.<id>`. On JetStream it is the
/// subject after the store's prefix; in SQLite it is stored as this text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId {
    location: LocationId,
    kind: AggregateKind,
    id: String,
}

impl StreamId {
    pub fn new(
        location: LocationId,
        kind: AggregateKind,
        id: impl Into<String>,
    ) -> Result<Self, IdError> {
        let id = id.into();
        check_token("aggregate id", &id, 128)?;
        Ok(Self { location, kind, id })
    }

    /// The stream of an aggregate identified by a UUID, the usual case.
    pub fn for_uuid(location: LocationId, kind: AggregateKind, id: Uuid) -> Self {
        Self {
            location,
            kind,
            id: id.to_string(),
        }
    }

    pub fn location(&self) -> &LocationId {
        &self.location
    }

    pub fn kind(&self) -> AggregateKind {
        self.kind
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl FromStr for StreamId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('.');
        let (Some(location), Some(kind), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdError::BadStreamId {
                value: s.to_owned(),
            });
        };
        Self::new(LocationId::parse(location)?, kind.parse()?, id)
    }
}

impl TryFrom<String> for StreamId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.to_string()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.location, self.kind, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_round_trips_through_its_text_form() {
        let location = LocationId::parse("ve9EPM428h8vShlRW1KT").unwrap();
        let stream = StreamId::for_uuid(location, AggregateKind::Contact, Uuid::now_v7());
        let text = stream.to_string();
        assert_eq!(text.parse::<StreamId>().unwrap(), stream);
    }

    #[test]
    fn identifiers_that_would_break_a_subject_are_refused() {
        for bad in ["", "a.b", "a*", "a>", "a b", "tab\t"] {
            assert!(LocationId::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let location = LocationId::parse("loc").unwrap();
        assert!(StreamId::new(location, AggregateKind::Account, "x.y").is_err());
        assert!("loc.nope.1".parse::<StreamId>().is_err());
        assert!("loc.contact".parse::<StreamId>().is_err());
        assert!("loc.contact.1.2".parse::<StreamId>().is_err());
    }

    #[test]
    fn event_ids_are_time_ordered() {
        let first = EventId::new();
        let second = EventId::new();
        assert!(first < second);
        assert_eq!(first.as_uuid().get_version_num(), 7);
    }
}
