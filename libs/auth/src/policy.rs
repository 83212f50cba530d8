//! The one table of what every RPC needs: whether it reads or writes, and where the location it
//! touches is found in its request. The authorization layer refuses an RPC that is not in it, and
//! a test checks that every RPC of the compiled contracts is, so a new RPC cannot go unchecked.

use std::collections::HashMap;

use prost::Message;
use prost_types::FileDescriptorSet;

use crate::caller::Access;

/// Where an RPC's location is, and who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The request's string field of this name holds the location; it must be given.
    Location(&'static str),
    /// As `Location`, but an empty field means "every location the caller may see": the
    /// handler returns only those.
    LocationOrMine(&'static str),
    /// The field holds a stream id, `<location>.<aggregate>.<id>`.
    Stream(&'static str),
    /// Any caller with a credential; the handler returns only the caller's locations.
    Mine,
    /// Agency-wide (no location): an admin of every location, or the services.
    Agency,
    /// Any caller with a credential; the answer holds no location's data (server reflection).
    Authenticated,
    /// No credential needed (health checks for probes).
    Open,
}

/// What one RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub access: Access,
    pub target: Target,
}

use Access::{Read, Write};
use Target::*;

const SESSION: &str = "whatsnap.session.v1.SessionService";
const CONTACTS: &str = "whatsnap.contacts.v1.ContactsService";
const ASSIGNMENT: &str = "whatsnap.assignment.v1.AssignmentService";
const EVENTS: &str = "whatsnap.events.v1.EventsService";
const GHL_SYNC: &str = "whatsnap.ghlsync.v1.GhlSyncService";
const OPERATIONS: &str = "whatsnap.operations.v1.OperationsService";
const TOKENS: &str = "whatsnap.tokens.v1.TokensService";
const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";

const LOC: Target = Location("location_id");

/// Every RPC whatsnap serves: (service, method, access, target).
pub const RULES: &[(&str, &str, Access, Target)] = &[
    (SESSION, "AddAccount", Write, LOC),
    (SESSION, "GetAccount", Read, LOC),
    (SESSION, "ListAccounts", Read, LocationOrMine("location_id")),
    (SESSION, "RemoveAccount", Write, LOC),
    (SESSION, "DisconnectAccount", Write, LOC),
    (SESSION, "UpdateAccountCredentials", Write, LOC),
    (SESSION, "RecordInboundMessage", Write, LOC),
    (SESSION, "RequestOutboundMessage", Write, LOC),
    (SESSION, "RecordDeliveryStatus", Write, LOC),
    (SESSION, "ConnectAccount", Write, LOC),
    (SESSION, "WatchAccount", Read, LOC),
    (SESSION, "RecordConnectorWebhook", Write, LOC),
    (SESSION, "SetPacing", Write, LOC),
    (SESSION, "RenameAccount", Write, LOC),
    (SESSION, "SetEngine", Write, LOC),
    (SESSION, "GetPairing", Read, LOC),
    (SESSION, "VerifyTwilioWebhook", Read, LOC),
    (CONTACTS, "GetContact", Read, LOC),
    (CONTACTS, "ListContacts", Read, LOC),
    (CONTACTS, "CountTags", Read, LOC),
    (CONTACTS, "ResolveRoute", Read, LOC),
    (CONTACTS, "TagContact", Write, LOC),
    (CONTACTS, "EraseContact", Write, LOC),
    (CONTACTS, "ApplyGhlTags", Write, LOC),
    (ASSIGNMENT, "GetAssignment", Read, LOC),
    (ASSIGNMENT, "SetRules", Write, LOC),
    (ASSIGNMENT, "GetRules", Read, LOC),
    (ASSIGNMENT, "ListUsers", Read, LOC),
    (ASSIGNMENT, "SetAvailability", Write, LOC),
    (ASSIGNMENT, "Explain", Read, LOC),
    (ASSIGNMENT, "Simulate", Read, LOC),
    (ASSIGNMENT, "Report", Read, LOC),
    (ASSIGNMENT, "Metrics", Read, Agency),
    (EVENTS, "ReadStream", Read, Stream("stream_id")),
    (EVENTS, "Tail", Read, Mine),
    (EVENTS, "ContactHistory", Read, LOC),
    (EVENTS, "Traffic", Read, LOC),
    (GHL_SYNC, "SyncStatus", Read, LOC),
    (GHL_SYNC, "RecordInstall", Write, LOC),
    (GHL_SYNC, "ConnectPrivateToken", Write, LOC),
    (GHL_SYNC, "BeginOAuth", Write, Agency),
    (GHL_SYNC, "CompleteOAuth", Write, Agency),
    (GHL_SYNC, "RetrySetAside", Write, LOC),
    (GHL_SYNC, "RecordContactWebhook", Write, LOC),
    (OPERATIONS, "ListParked", Read, Agency),
    (OPERATIONS, "RetryParked", Write, Agency),
    (OPERATIONS, "SkipParked", Write, Agency),
    (TOKENS, "CreateToken", Write, Agency),
    (TOKENS, "ListTokens", Read, Agency),
    (TOKENS, "RevokeToken", Write, Agency),
    (HEALTH, "Check", Read, Open),
    (HEALTH, "Watch", Read, Open),
    (REFLECTION, "ServerReflectionInfo", Read, Authenticated),
];

/// A rule ready for requests: its location field's number in the request message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolved {
    pub rule: Rule,
    pub field: Option<u32>,
}

/// [`RULES`] by request path (`/<package>.<Service>/<Method>`).
#[derive(Debug, Clone)]
pub struct Policy {
    rules: HashMap<String, Resolved>,
}

/// Why the table does not fit the compiled contracts.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the authorization table names {0}, which the compiled contracts do not have")]
    UnknownRpc(String),
    #[error(
        "the authorization table reads field {field} of {rpc}'s request, which has no such field"
    )]
    UnknownField { rpc: String, field: &'static str },
}

impl Policy {
    /// The table, with the field numbers of whatsnap's compiled contracts.
    pub fn whatsnap() -> Result<Self, PolicyError> {
        let inputs = request_fields();
        let mut rules = HashMap::new();
        for (service, method, access, target) in RULES {
            let path = format!("/{service}/{method}");
            let field =
                match target {
                    Location(name) | LocationOrMine(name) | Stream(name) => {
                        let fields = inputs
                            .get(&path)
                            .ok_or_else(|| PolicyError::UnknownRpc(path.clone()))?;
                        let number = fields.get(*name).copied().ok_or_else(|| {
                            PolicyError::UnknownField {
                                rpc: path.clone(),
                                field: name,
                            }
                        })?;
                        Some(number)
                    }
                    _ => None,
                };
            let rule = Rule {
                access: *access,
                target: *target,
            };
            rules.insert(path, Resolved { rule, field });
        }
        Ok(Self { rules })
    }

    pub(crate) fn resolve(&self, path: &str) -> Option<Resolved> {
        self.rules.get(path).copied()
    }

    /// The rule of the RPC at `path`, if the table has one.
    pub fn rule(&self, path: &str) -> Option<Rule> {
        self.resolve(path).map(|r| r.rule)
    }

    /// The number of the request field the RPC at `path` names its location (or stream) in.
    pub fn location_field(&self, path: &str) -> Option<u32> {
        self.resolve(path).and_then(|r| r.field)
    }
}

/// One RPC of the compiled contracts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rpc {
    /// `/<package>.<Service>/<Method>`.
    pub path: String,
    /// Whether it answers with a stream.
    pub server_streaming: bool,
}

/// Every RPC of whatsnap's compiled contracts.
pub fn whatsnap_rpcs() -> Vec<Rpc> {
    let set = FileDescriptorSet::decode(whatsnap_proto::FILE_DESCRIPTOR_SET)
        .expect("the compiled descriptors decode");
    let mut rpcs = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                rpcs.push(Rpc {
                    path: format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    server_streaming: method.server_streaming(),
                });
            }
        }
    }
    rpcs.sort_by(|a, b| a.path.cmp(&b.path));
    rpcs
}

/// For every RPC path of the compiled contracts, its request message's fields by name.
fn request_fields() -> HashMap<String, HashMap<String, u32>> {
    let set = FileDescriptorSet::decode(whatsnap_proto::FILE_DESCRIPTOR_SET)
        .expect("the compiled descriptors decode");
    let mut messages = HashMap::new();
    for file in &set.file {
        let package = file.package();
        for message in &file.message_type {
            let fields: HashMap<String, u32> = message
                .field
                .iter()
                .map(|f| (f.name().to_owned(), f.number() as u32))
                .collect();
            messages.insert(format!(".{package}.{}", message.name()), fields);
        }
    }
    let mut rpcs = HashMap::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                let fields = messages
                    .get(method.input_type())
                    .cloned()
                    .unwrap_or_default();
                rpcs.insert(path, fields);
            }
        }
    }
    rpcs
}

/// The string in field `number` of an encoded protobuf message; empty when absent. `None` when
/// the message does not decode.
pub(crate) fn string_field(mut message: &[u8], number: u32) -> Option<String> {
    let mut found = String::new();
    while !message.is_empty() {
        let key = varint(&mut message)?;
        let (field, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => {
                varint(&mut message)?;
            }
            1 => message = message.get(8..)?,
            5 => message = message.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut message)?).ok()?;
                let value = message.get(..len)?;
                if field == number {
                    // The last occurrence wins, as in protobuf's own decoding.
                    found = String::from_utf8(value.to_vec()).ok()?;
                }
                message = &message[len..];
            }
            _ => return None,
        }
    }
    Some(found)
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use whatsnap_proto::session::v1 as session;

    #[test]
    fn the_location_is_read_from_an_encoded_request() {
        let request = session::ConnectorWebhookRequest {
            engine: "evolution".into(),
            location_id: "locB".into(),
            account_id: "acc".into(),
            body: vec![1, 2, 3],
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        assert_eq!(string_field(&bytes, 2).as_deref(), Some("locB"));
        assert_eq!(string_field(&[], 1).as_deref(), Some(""));
        assert_eq!(string_field(&[0x0a, 0x05, b'a'], 1), None);
    }
}
