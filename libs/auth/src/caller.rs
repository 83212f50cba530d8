//! A caller: the role its credential carries and the locations it may touch, and the one
//! decision of whether it may read or write a location.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use tonic::Status;
use whatsnap_events::LocationId;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The agency: reads and writes its locations (every one, or a named list); with every
    /// location, also the agency-wide API (tokens, parked events, metrics).
    Admin,
    /// A location's operator: reads and writes that one location.
    Operator,
    /// Reads its named locations, writes nothing.
    ReadOnly,
    /// whatsnap's own services calling each other; never a token people hold.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::ReadOnly => "read-only",
            Self::Service => "service",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    /// The roles a token can be issued with (never `service`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "operator" => Ok(Self::Operator),
            "read-only" | "readonly" | "read_only" => Ok(Self::ReadOnly),
            other => Err(format!(
                "unknown role {other:?}: use admin, operator or read-only"
            )),
        }
    }
}

/// The locations a caller may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locations {
    All,
    Only(BTreeSet<LocationId>),
}

/// Reads change nothing; writes record events or call third parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Who is calling, as the authorization layer found it; handlers that filter what they return
/// (the accounts of every location, the live tail) read it from the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The API token's id; `None` for the service credential.
    pub token_id: Option<String>,
    pub role: Role,
    pub locations: Locations,
}

impl Caller {
    /// whatsnap's own services.
    pub fn service() -> Self {
        Self {
            token_id: None,
            role: Role::Service,
            locations: Locations::All,
        }
    }

    /// Whether the caller may see `location`'s data.
    pub fn may_read(&self, location: &LocationId) -> bool {
        match &self.locations {
            Locations::All => true,
            Locations::Only(locations) => locations.contains(location),
        }
    }

    /// Whether it may `access` `location`: PERMISSION_DENIED, naming why, when not.
    pub fn check(&self, access: Access, location: &LocationId) -> Result<(), Status> {
        if access == Access::Write && self.role == Role::ReadOnly {
            return Err(Status::permission_denied(
                "a read-only token cannot change anything",
            ));
        }
        if !self.may_read(location) {
            return Err(Status::permission_denied(format!(
                "this token may not touch location {location}"
            )));
        }
        Ok(())
    }

    /// Whether it may use the agency-wide API: an admin of every location, or the services.
    pub fn check_agency(&self, access: Access) -> Result<(), Status> {
        match (self.role, &self.locations) {
            (Role::Admin | Role::Service, Locations::All) => Ok(()),
            (Role::ReadOnly, _) if access == Access::Write => Err(Status::permission_denied(
                "a read-only token cannot change anything",
            )),
            _ => Err(Status::permission_denied(
                "only an admin token of every location may do this",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(role: Role, locations: &[&str]) -> Caller {
        Caller {
            token_id: Some("t".into()),
            role,
            locations: Locations::Only(
                locations
                    .iter()
                    .map(|l| LocationId::parse(*l).unwrap())
                    .collect(),
            ),
        }
    }

    #[test]
    fn an_operator_writes_its_location_and_no_other() {
        let a = LocationId::parse("locA").unwrap();
        let b = LocationId::parse("locB").unwrap();
        let operator = only(Role::Operator, &["locA"]);
        assert!(operator.check(Access::Write, &a).is_ok());
        assert!(operator.check(Access::Read, &b).is_err());
        assert!(operator.check_agency(Access::Read).is_err());
    }

    #[test]
    fn a_read_only_token_reads_and_never_writes() {
        let a = LocationId::parse("locA").unwrap();
        let reader = only(Role::ReadOnly, &["locA"]);
        assert!(reader.check(Access::Read, &a).is_ok());
        assert!(reader.check(Access::Write, &a).is_err());
    }
}
