//! The typed payloads of every event whatsnap writes. Field rules are in the crate docs: add
//! fields with a default, never change one in place.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::DecodeError;
use crate::ids::AggregateKind;
use crate::upcast;

/// The messaging platforms an account can be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// WhatsApp, linked as a device by QR code.
    Whatsapp,
    /// SMS through the user's own Android phone running the SMS gateway app.
    AndroidSms,
    /// iMessage/SMS through the user's Mac running BlueBubbles.
    Imessage,
    /// SMS through a Twilio number.
    Twilio,
}

impl AccountKind {
    pub const ALL: [AccountKind; 4] = [
        Self::Whatsapp,
        Self::AndroidSms,
        Self::Imessage,
        Self::Twilio,
    ];

    /// The name used in events, read models and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Whatsapp => "whatsapp",
            Self::AndroidSms => "android_sms",
            Self::Imessage => "imessage",
            Self::Twilio => "twilio",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// A file sent along with a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub url: String,
    pub content_type: Option<String>,
    pub file_name: Option<String>,
}

/// Where a tag on a contact came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagSource {
    /// Added because the contact messaged (or was messaged from) an account.
    Account,
    /// Changed by a user or workflow in GHL (ContactTagUpdate webhook).
    Ghl,
    /// Changed through whatsnap's own API or dashboard.
    Manual,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountAdded {
    pub account_id: Uuid,
    pub kind: AccountKind,
    pub name: String,
    /// The tag put on every contact of this account, e.g. `whatsnap-account-sales`.
    pub tag: String,
    pub phone_number: Option<String>,
    /// The API credentials of a Twilio account (added after the first schema; absent for other
    /// kinds and in payloads written before).
    #[serde(default)]
    pub twilio: Option<TwilioCredentials>,
    /// The connector that drives the account, e.g. `twilio`, `evolution`, `embedded` (added
    /// after the first schema; `None` in payloads written before: the platform's first engine).
    #[serde(default)]
    pub engine: Option<String>,
    /// The connector's own settings, secrets sealed (added after the first schema; `None`
    /// before, and for connectors that need none). Only the connector reads them.
    #[serde(default)]
    pub settings: Option<serde_json::Value>,
}

/// A Twilio account's credentials, the Auth Token sealed under the deployment's secret key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwilioCredentials {
    pub account_sid: String,
    pub auth_token: whatsnap_secrets::Sealed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QrCodeIssued {
    pub account_id: Uuid,
    pub qr_code: String,
    pub expires_at: DateTime<Utc>,
}

/// A device-linking code to type on the phone (WhatsApp's pairing code), the alternative to a QR
/// code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingCodeIssued {
    pub account_id: Uuid,
    pub code: String,
    pub expires_at: DateTime<Utc>,
}

/// A user asked to link (or re-link) a session-based account: its connector starts and shows
/// QR codes, or a pairing code for `pairing_phone_number`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLinkRequested {
    pub account_id: Uuid,
    /// E.164; `None`: link by QR code.
    pub pairing_phone_number: Option<String>,
    pub requested_by: Option<String>,
}

/// A WhatsApp sender's two names were found to be one person: their LID (`…@lid`) and their
/// phone number. Messages from either are the same contact's. Recorded in the stream of the
/// account that learned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactIdentityMerged {
    pub account_id: Uuid,
    /// The LID, e.g. `123456789012345@lid`.
    pub lid: String,
    /// E.164.
    pub phone: String,
    /// How whatsnap learned it, e.g. "WhatsApp sent message 3EB0… from +1… with LID 1…@lid".
    pub reason: String,
}

/// A connected account stopped delivering (its link reports open while sends fail), or
/// delivers again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDeliveryChanged {
    pub account_id: Uuid,
    pub delivering: bool,
    /// What shows it, in words.
    pub reason: String,
}

/// An operator was alerted about an account (the deployment's alert webhook accepted it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountAlertSent {
    pub account_id: Uuid,
    /// The event the alert is about.
    pub about_event_id: Uuid,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountConnected {
    pub account_id: Uuid,
    pub phone_number: Option<String>,
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDisconnected {
    pub account_id: Uuid,
    /// What happened, in words.
    pub reason: String,
    /// Why, as a stable name: `connection_lost`, `phone_offline`, `client_outdated`,
    /// `refused`, `banned`, `logged_out`, `engine_unavailable`, `stopped`, `not_delivering`
    /// (added after the first schema; `None` before).
    #[serde(default)]
    pub cause: Option<String>,
}

impl AccountDisconnected {
    /// The cause of a disconnect a user asked for in whatsnap (the dashboard's Disconnect,
    /// `whatsnap accounts disconnect`): the device is logged out, and linking again shows a new
    /// code.
    pub const BY_USER: &'static str = "disconnected_by_user";

    /// Whether the device is logged out (from the phone, or by a user in whatsnap): nothing
    /// reconnects it until it is linked again.
    pub fn logs_out(&self) -> bool {
        matches!(self.cause.as_deref(), Some("logged_out" | Self::BY_USER))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRemoved {
    pub account_id: Uuid,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountSettingsChanged {
    pub account_id: Uuid,
    /// Only the settings that changed, by name, with their new value.
    pub changes: serde_json::Map<String, serde_json::Value>,
}

impl AccountSettingsChanged {
    /// The setting that holds a Twilio account's credentials (a [`TwilioCredentials`], the
    /// Auth Token sealed), changed when they are rotated.
    pub const TWILIO: &'static str = "twilio";

    /// A Twilio account's new credentials.
    pub fn twilio(account_id: Uuid, credentials: &TwilioCredentials) -> Self {
        let mut changes = serde_json::Map::new();
        changes.insert(
            Self::TWILIO.to_owned(),
            serde_json::to_value(credentials).expect("credentials serialise"),
        );
        Self {
            account_id,
            changes,
        }
    }

    /// The Twilio credentials this change sets, when it sets them.
    pub fn twilio_credentials(&self) -> Option<TwilioCredentials> {
        serde_json::from_value(self.changes.get(Self::TWILIO)?.clone()).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessageReceived {
    pub message_id: Uuid,
    pub account_id: Uuid,
    /// The provider's own id for the message; the dedupe key of a redelivered webhook.
    pub provider_message_id: String,
    /// The sender in E.164.
    pub from: String,
    pub to: Option<String>,
    pub body: String,
    /// The sender's name as the platform shows it, when it does.
    pub sender_name: Option<String>,
    pub received_at: DateTime<Utc>,
    /// Added after the first schema: payloads written without it decode with no attachments.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// Typed on the account's own phone (or another linked device), not received: shown in
    /// GHL as outbound, never sent again (added after the first schema; false before).
    #[serde(default)]
    pub from_me: bool,
    /// The sender's WhatsApp LID (`…@lid`), when the platform named them by it (added after
    /// the first schema).
    #[serde(default)]
    pub sender_lid: Option<String>,
}

/// A message from a WhatsApp sender known so far only by their LID: held, not yet anyone's,
/// until WhatsApp names their number ([`ContactIdentityMerged`]); then an
/// [`InboundMessageReceived`] follows in the same stream, with the number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessageHeld {
    pub message_id: Uuid,
    pub account_id: Uuid,
    pub provider_message_id: String,
    /// The LID, e.g. `123456789012345@lid`.
    pub sender_lid: String,
    pub body: String,
    pub sender_name: Option<String>,
    pub received_at: DateTime<Utc>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub from_me: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessageRequested {
    pub message_id: Uuid,
    pub contact_id: Uuid,
    /// GHL's id of the message, to report its status back.
    pub ghl_message_id: Option<String>,
    /// The GHL user who sent it, when a user (not a workflow) did.
    pub ghl_user_id: Option<String>,
    pub body: String,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// The recipient as GHL gave it, in E.164 (added after the first schema).
    #[serde(default)]
    pub to: Option<String>,
    /// GHL's id of the contact the reply is for (added after the first schema).
    #[serde(default)]
    pub ghl_contact_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessageRouted {
    pub message_id: Uuid,
    pub contact_id: Uuid,
    pub account_id: Uuid,
    /// The account tag on the contact that chose the route.
    pub tag: String,
    /// The recipient in E.164.
    pub to: String,
    /// Why this account was chosen, in words for `whatsnap trace`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundRouteFailed {
    pub message_id: Uuid,
    pub contact_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessageSent {
    pub message_id: Uuid,
    pub account_id: Uuid,
    pub provider_message_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDelivered {
    pub message_id: Uuid,
    pub provider_message_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRead {
    pub message_id: Uuid,
    pub provider_message_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFailed {
    pub message_id: Uuid,
    /// A reason a GHL user can act on, e.g. "the recipient opted out (Twilio 21610)".
    pub reason: String,
    pub provider_error_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactCreated {
    pub contact_id: Uuid,
    /// E.164.
    pub phone: String,
    pub name: Option<String>,
    /// The account the contact first reached, when it was created by an inbound message.
    pub first_account_id: Option<Uuid>,
    pub platform: Option<AccountKind>,
    /// The tag the contact was created with (its first account's tag, source
    /// [`TagSource::Account`]): what a [`ContactTagged`] right after this event would add,
    /// carried here so that a new contact is one append. `None` for a contact created without
    /// one, and for those created before this field existed (a `ContactTagged` follows each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl ContactCreated {
    /// The tag added with the creation, as the `ContactTagged` it stands for.
    pub fn tagged(&self) -> Option<ContactTagged> {
        self.tag.as_ref().map(|tag| ContactTagged {
            contact_id: self.contact_id,
            tag: tag.clone(),
            source: TagSource::Account,
        })
    }
}

/// An operator erased the contact's personal data: its key was destroyed, so its phone, name
/// and messages read as erased from now on, in every replay too, and nothing more of it
/// crosses to GHL. Carries no personal data itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactErased {
    pub contact_id: Uuid,
    /// Who asked, for the trace.
    pub requested_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactTagged {
    pub contact_id: Uuid,
    pub tag: String,
    pub source: TagSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactUntagged {
    pub contact_id: Uuid,
    pub tag: String,
    pub source: TagSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignmentRulesChanged {
    /// The account the rules belong to; `None` for the location's default rules.
    pub account_id: Option<Uuid>,
    /// The rules as the assignment service defines them.
    pub rules: serde_json::Value,
}

/// One user the assignment engine looked at, and what it concluded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateConsidered {
    pub user_id: String,
    /// `None` for the user chosen; otherwise why the user was passed over.
    pub passed_over: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactAssigned {
    pub contact_id: Uuid,
    pub account_id: Option<Uuid>,
    pub user_id: String,
    /// The rule that chose the user, e.g. `round_robin#2`.
    pub rule: String,
    pub reason: String,
    #[serde(default)]
    pub candidates: Vec<CandidateConsidered>,
    /// What asked for the decision: `new_contact`, `returning_contact`, `account_tag` or
    /// `owner_silent` (added after the first schema; `None` in decisions written before).
    #[serde(default)]
    pub trigger: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentSkipped {
    pub contact_id: Uuid,
    pub account_id: Option<Uuid>,
    pub reason: String,
    #[serde(default)]
    pub candidates: Vec<CandidateConsidered>,
    /// What asked for the decision: `new_contact`, `returning_contact`, `account_tag` or
    /// `owner_silent` (added after the first schema; `None` in decisions written before).
    #[serde(default)]
    pub trigger: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhlInstalled {
    pub company_id: Option<String>,
    /// `Location` or `Company`, as GHL's INSTALL webhook says.
    pub install_type: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A GHL user of the location as GHL last reported it; the candidates of assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhlUserSynced {
    pub user_id: String,
    pub name: String,
    pub email: Option<String>,
    /// GHL's role, e.g. `admin` or `user`.
    pub role: Option<String>,
    /// Deleted or deactivated in GHL: never assigned again.
    #[serde(default)]
    pub deleted: bool,
}

/// The location uninstalled the whatsnap app in GHL: nothing more crosses to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhlUninstalled {
    pub app_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhlContactLinked {
    pub contact_id: Uuid,
    pub ghl_contact_id: String,
    /// The tags whatsnap has put on the GHL contact (added after the first schema).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The contact is in step with GHL up to this event position (added after the first
    /// schema; 0 in links written before).
    #[serde(default)]
    pub synced_through: u64,
    /// What GHL held of the contact when this link found or created it there (added after
    /// the first schema; `None` in links written before, and when a linked contact only got
    /// tags).
    #[serde(default)]
    pub observed: Option<GhlContactObservation>,
}

/// What GHL knew of a contact when whatsnap first linked it: the assignment engine reads it
/// (the source for `when.sources`, the owner a contact had in GHL before whatsnap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhlContactObservation {
    /// GHL had the contact before whatsnap looked (found by phone, not created).
    pub existed_before: bool,
    /// GHL's `source`, e.g. `Google Ads Campaign`.
    pub source: Option<String>,
    /// GHL's `assignedTo`: the user who owned the contact.
    pub assigned_to: Option<String>,
    /// GHL's `dateAdded`.
    pub date_added: Option<DateTime<Utc>>,
}

/// How whatsnap authenticates to GHL for a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GhlTokenKind {
    /// A marketplace install: an access token refreshed with a rotating refresh token.
    Oauth,
    /// A Private Integration Token: static, rotated by hand.
    PrivateIntegration,
}

/// Tokens for a location's GHL API calls, sealed under the deployment's secret key. A refresh
/// appends a new one; the newest wins, and the used refresh token is never used again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhlTokensIssued {
    pub kind: GhlTokenKind,
    pub access_token: whatsnap_secrets::Sealed,
    pub refresh_token: Option<whatsnap_secrets::Sealed>,
    /// When the access token stops working; `None` for a Private Integration Token.
    pub expires_at: Option<DateTime<Utc>>,
    /// `Location` or `Company`.
    pub user_type: String,
    pub company_id: Option<String>,
    pub scope: Option<String>,
}

/// ghl-sync set the GHL contact's owner (`assignedTo`) to the assignment decision's user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhlAssignmentApplied {
    pub contact_id: Uuid,
    pub ghl_contact_id: String,
    pub user_id: String,
}

/// A GHL user changed the contact's owner (`assignedTo`) in GHL, as a contact webhook told;
/// recorded by ghl-sync, read by assignment as the current owner (per the location's `manual`
/// policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactOwnerChangedInGhl {
    pub contact_id: Uuid,
    pub ghl_contact_id: String,
    /// The new owner; `None`: unassigned in GHL.
    pub user_id: Option<String>,
    /// Who GHL showed before, as whatsnap knew it.
    pub previous: Option<String>,
}

/// The contact's source (GHL's `source`, e.g. `Google Ads Campaign`) changed in GHL after
/// whatsnap linked it, as a contact webhook told; recorded by ghl-sync, read by assignment for
/// the rules' `when.sources` from the next decision on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactSourceChangedInGhl {
    pub contact_id: Uuid,
    pub ghl_contact_id: String,
    /// The new source.
    pub source: Option<String>,
    /// The source whatsnap knew before (from its look-up in GHL or an earlier webhook).
    pub previous: Option<String>,
}

/// A period a user is away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwayPeriod {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// When a GHL user can take new contacts, as set through whatsnap's API. Each change replaces
/// the whole availability of the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAvailabilityChanged {
    pub user_id: String,
    /// IANA time zone of the working hours, e.g. `Europe/Madrid`.
    pub time_zone: Option<String>,
    /// Working hours by day (`mon` … `sun`), each a list of `HH:MM-HH:MM`; empty: any time.
    #[serde(default)]
    pub working_hours: std::collections::BTreeMap<String, Vec<String>>,
    pub out_of_office: Option<AwayPeriod>,
    /// Deactivated in whatsnap: never assigned while false.
    pub active: bool,
}

/// GHL accepted the final delivery status of a message it asked whatsnap to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhlStatusReported {
    pub message_id: Uuid,
    pub ghl_message_id: String,
    /// `delivered`, `failed` or `read`.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhlMessagePosted {
    pub message_id: Uuid,
    pub ghl_message_id: String,
    pub ghl_conversation_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhlSyncFailed {
    /// What was being synchronised, e.g. `contact_upsert`, `post_inbound_message`.
    pub operation: String,
    /// The whatsnap id of the contact or message concerned.
    pub subject_id: Option<Uuid>,
    pub reason: String,
    pub http_status: Option<u16>,
    pub attempt: u32,
    /// Whether ghl-sync gave up; otherwise it will try again.
    pub final_attempt: bool,
}

/// An effect on the outside world (a call to GHL, Twilio, a device) is about to be made. Appended
/// to the subject's stream before the call; the call's outcome follows it in the same stream. An
/// intent with no outcome after a restart is reconciled with the third party before any retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectIntended {
    /// What is done, e.g. `ghl.post_message` or `twilio.send`.
    pub operation: String,
    /// The whatsnap id of the message or contact the effect is for.
    pub subject_id: Uuid,
    /// Which try this is (1 for the first).
    pub attempt: u32,
    /// What identifies the call at the third party, for reconciling (e.g. the `altId`, or the
    /// sender and recipient of a text).
    #[serde(default)]
    pub key: Option<String>,
}

/// An operator asked for work that ghl-sync set aside to be tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhlSyncRetryRequested {
    pub operation: String,
    pub subject_id: Uuid,
    /// Who asked, for the trace.
    pub requested_by: Option<String>,
}

/// A projection set an event aside after it kept failing; the rest of the log goes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionEventParked {
    pub projection: String,
    /// The position of the parked event in the log.
    pub position: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub reason: String,
    pub attempts: u32,
}

/// An operator dealt with a parked event: `retried` (applied again, successfully) or `skipped`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEventResolved {
    pub projection: String,
    pub position: u64,
    /// `retried` or `skipped`.
    pub action: String,
    pub requested_by: Option<String>,
}

/// An API token was issued: who may call whatsnap's API with it, where, and until when. Only the
/// token's SHA-256 is kept; the token itself was shown once, to whoever asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenIssued {
    /// The token's id, derived from its hash; what `tokens list` and `tokens revoke` show.
    pub token_id: String,
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// A name for people, e.g. "front desk laptop".
    pub name: String,
    /// `admin`, `operator` or `read-only`.
    pub role: String,
    /// The locations it may touch; empty for an admin of every location.
    pub locations: Vec<String>,
    /// When it stops working; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// The token id of whoever issued it; `None` for the first admin token.
    pub issued_by: Option<String>,
}

/// An API token was revoked: it no longer opens anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRevoked {
    pub token_id: String,
    /// The token id of whoever revoked it.
    pub revoked_by: Option<String>,
}

macro_rules! catalogue {
    ($($variant:ident => $version:literal on $kinds:tt),* $(,)?) => {
        /// Every event whatsnap writes, by type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event {
            $($variant($variant),)*
        }

        impl Event {
            /// Every event type with its current schema version.
            pub const TYPES: &'static [(&'static str, u32)] = &[$((stringify!($variant), $version),)*];

            /// The kinds of stream `event_type` may be appended to; `None` for a type that may go
            /// on any stream, or that is no event type. The store refuses an append of a type to
            /// another kind, so a reader of some types may read only those kinds' streams.
            pub fn kinds(event_type: &str) -> Option<&'static [AggregateKind]> {
                match event_type {
                    $(stringify!($variant) => catalogue!(@kinds $kinds),)*
                    _ => None,
                }
            }

            /// The current schema version of `event_type`, or `None` when it is no event type.
            pub fn current_version(event_type: &str) -> Option<u32> {
                Self::TYPES
                    .iter()
                    .find(|(known, _)| *known == event_type)
                    .map(|(_, version)| *version)
            }

            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($variant),)*
                }
            }

            pub fn schema_version(&self) -> u32 {
                match self {
                    $(Self::$variant(_) => $version,)*
                }
            }

            pub fn encode(&self) -> Bytes {
                let json = match self {
                    $(Self::$variant(payload) => serde_json::to_vec(payload),)*
                };
                // Serialising these plain structs into a Vec cannot fail: no maps with non-string
                // keys, no failing Serialize impls.
                Bytes::from(json.expect("event payloads always serialise"))
            }

            /// Decodes a stored payload of `event_type` written at `schema_version`.
            pub fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
                match event_type {
                    $(stringify!($variant) => decode_as::<$variant>(event_type, schema_version, $version, payload).map(Self::$variant),)*
                    _ => Err(DecodeError::UnknownType { event_type: event_type.to_owned() }),
                }
            }
        }

        $(
            impl From<$variant> for Event {
                fn from(payload: $variant) -> Self {
                    Self::$variant(payload)
                }
            }
        )*
    };
    (@kinds any) => { None };
    (@kinds [$($kind:ident),+]) => { Some(&[$(AggregateKind::$kind),+]) };
}

/// The kinds of stream that may hold an event of any of `types`; `None` when one of them may go
/// on any stream (or is no event type), so that every stream must be read to find them.
pub fn kinds_holding(types: &[&str]) -> Option<Vec<AggregateKind>> {
    let mut kinds = Vec::new();
    for event_type in types {
        for kind in Event::kinds(event_type)? {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
    }
    kinds.sort();
    Some(kinds)
}

// Each type with its schema version and the kinds of stream it is appended to (`any`: every
// kind, as an effect's intent goes on its subject's stream, whatever that is).
catalogue! {
    AccountAdded => 1 on [Account],
    QrCodeIssued => 1 on [Account],
    PairingCodeIssued => 1 on [Account],
    AccountLinkRequested => 1 on [Account],
    ContactIdentityMerged => 1 on [Account],
    AccountDeliveryChanged => 1 on [Account],
    AccountAlertSent => 1 on [Account],
    AccountConnected => 1 on [Account],
    AccountDisconnected => 1 on [Account],
    AccountRemoved => 1 on [Account],
    AccountSettingsChanged => 1 on [Account],
    InboundMessageReceived => 1 on [Message],
    InboundMessageHeld => 1 on [Message],
    OutboundMessageRequested => 1 on [Message],
    OutboundMessageRouted => 1 on [Message],
    OutboundRouteFailed => 1 on [Message],
    OutboundMessageSent => 1 on [Message],
    MessageDelivered => 1 on [Message],
    MessageRead => 1 on [Message],
    MessageFailed => 1 on [Message],
    ContactCreated => 1 on [Contact],
    ContactTagged => 1 on [Contact],
    ContactUntagged => 1 on [Contact],
    ContactErased => 1 on [Contact],
    AssignmentRulesChanged => 1 on [Assignment],
    ContactAssigned => 1 on [Assignment],
    AssignmentSkipped => 1 on [Assignment],
    GhlInstalled => 1 on [Ghl],
    GhlUninstalled => 1 on [Ghl],
    GhlUserSynced => 1 on [Ghl],
    GhlContactLinked => 1 on [Ghl],
    GhlMessagePosted => 1 on [Message],
    GhlSyncFailed => 1 on [Ghl, Message],
    GhlTokensIssued => 1 on [Ghl],
    GhlStatusReported => 1 on [Message],
    GhlAssignmentApplied => 1 on [Ghl],
    ContactOwnerChangedInGhl => 1 on [Ghl],
    ContactSourceChangedInGhl => 1 on [Ghl],
    UserAvailabilityChanged => 1 on [Assignment],
    EffectIntended => 1 on any,
    GhlSyncRetryRequested => 1 on [Ghl, Message],
    ProjectionEventParked => 1 on [Operations],
    ParkedEventResolved => 1 on [Operations],
    ApiTokenIssued => 1 on [ApiToken],
    ApiTokenRevoked => 1 on [ApiToken],
}

fn decode_as<T: serde::de::DeserializeOwned>(
    event_type: &str,
    stored: u32,
    current: u32,
    payload: &[u8],
) -> Result<T, DecodeError> {
    let payload_error = |source| DecodeError::Payload {
        event_type: event_type.to_owned(),
        schema_version: stored,
        source,
    };
    if stored > current {
        return Err(DecodeError::FutureVersion {
            event_type: event_type.to_owned(),
            found: stored,
            known: current,
        });
    }
    if stored == current {
        return serde_json::from_slice(payload).map_err(payload_error);
    }
    let value = upcast::upcast_with(upcast::UPCASTERS, event_type, stored, current, payload)?;
    serde_json::from_value(value).map_err(payload_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kinds_holding_some_types_are_known_only_when_each_type_keeps_to_its_kinds() {
        assert_eq!(
            kinds_holding(&["ApiTokenIssued", "ApiTokenRevoked"]),
            Some(vec![AggregateKind::ApiToken])
        );
        assert_eq!(
            kinds_holding(&["GhlSyncFailed", "MessageRead", "ContactCreated"]),
            Some(vec![
                AggregateKind::Contact,
                AggregateKind::Message,
                AggregateKind::Ghl
            ])
        );
        // An effect's intent goes on its subject's stream, whatever kind that is.
        assert_eq!(kinds_holding(&["MessageRead", "EffectIntended"]), None);
        assert_eq!(kinds_holding(&["MessageRead", "NoSuchType"]), None);
        for (event_type, _) in Event::TYPES {
            assert!(
                *event_type == "EffectIntended" || Event::kinds(event_type).is_some(),
                "{event_type} names no kind of stream"
            );
        }
    }

    #[test]
    fn an_event_round_trips_through_its_encoding() {
        let event = Event::from(ContactTagged {
            contact_id: Uuid::now_v7(),
            tag: "whatsnap-account-sales".into(),
            source: TagSource::Account,
        });
        let decoded =
            Event::decode(event.event_type(), event.schema_version(), &event.encode()).unwrap();
        assert_eq!(decoded, event);
    }

    #[test]
    fn unknown_types_and_future_versions_are_refused_with_a_reason() {
        let err = Event::decode("Nope", 1, b"{}").unwrap_err();
        assert_eq!(err.to_string(), "unknown event type \"Nope\"");
        let err = Event::decode("ContactTagged", 9, b"{}").unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::FutureVersion {
                    found: 9,
                    known: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_payload_missing_a_required_field_names_the_field() {
        let err = Event::decode("ContactTagged", 1, br#"{"tag":"x","source":"ghl"}"#).unwrap_err();
        assert!(err.to_string().contains("contact_id"), "{err}");
    }
}
