//! The account aggregate: pure `decide` and `evolve`.

use std::collections::HashSet;

use uuid::Uuid;
use whatsnap_events::{
    AccountAdded, AccountDisconnected, AccountKind, AccountLinkRequested, AccountRemoved,
    AccountSettingsChanged, Event, TwilioCredentials,
};
use whatsnap_rpc::{ServiceError, ServiceResult};

/// The prefix of every account tag unless the deployment configures another.
pub const DEFAULT_TAG_PREFIX: &str = "whatsnap-account-";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Status {
    #[default]
    Added,
    /// A user asked to link the device: QR or pairing codes are being shown.
    Linking,
    Connected,
    Disconnected,
    /// The device was unlinked: nothing reconnects until a user links it again.
    LoggedOut,
    Removed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Linking => "linking",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::LoggedOut => "logged_out",
            Self::Removed => "removed",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AccountState {
    pub account_id: Option<Uuid>,
    pub kind: Option<AccountKind>,
    pub name: String,
    pub tag: String,
    pub phone_number: Option<String>,
    /// A Twilio account's credentials, the Auth Token sealed.
    pub twilio: Option<TwilioCredentials>,
    /// The connector that drives the account; `None` in accounts added before engines were
    /// recorded (the platform's first engine).
    pub engine: Option<String>,
    /// The connector's own settings, secrets sealed.
    pub settings: Option<serde_json::Value>,
    pub status: Status,
    /// Why the account is not connected, as a stable name (`refused`, `logged_out`, …).
    pub cause: Option<String>,
    /// What the platform last said about the connection, in words.
    pub status_reason: Option<String>,
    /// The number a pairing code is for, when the user asked to link by pairing code.
    pub pairing_phone_number: Option<String>,
    /// Connected, but sends fail: why (the link may report open while WhatsApp delivers
    /// nothing).
    pub not_delivering: Option<String>,
    /// How fast the account sends, when set for it; otherwise its connector's default.
    pub pacing: Option<whatsnap_connector::Pacing>,
    /// The WhatsApp LIDs this account has learned the numbers of.
    pub identities: std::collections::HashMap<String, String>,
    pub version: u64,
}

impl AccountState {
    /// Whether the account's live link should be running: a user asked to link it, or it was
    /// connected and lost the connection for a reason whatsnap can recover from by itself.
    pub fn wants_link(&self) -> bool {
        match self.status {
            Status::Linking | Status::Connected => true,
            Status::Disconnected => self.cause.as_deref().is_none_or(|cause| {
                matches!(
                    cause,
                    "connection_lost"
                        | "phone_offline"
                        | "engine_unavailable"
                        | "device_offline"
                        | "not_delivering"
                )
            }),
            Status::Added | Status::LoggedOut | Status::Removed => false,
        }
    }
}

impl whatsnap_eventstore::Aggregate for AccountState {
    fn evolve(self, event: &Event, version: u64) -> Self {
        evolve(self, event, version)
    }
}

pub fn evolve(mut state: AccountState, event: &Event, version: u64) -> AccountState {
    state.version = version;
    match event {
        Event::AccountAdded(e) => {
            state.account_id = Some(e.account_id);
            state.kind = Some(e.kind);
            state.name = e.name.clone();
            state.tag = e.tag.clone();
            state.phone_number = e.phone_number.clone();
            state.twilio = e.twilio.clone();
            state.engine = e.engine.clone();
            state.settings = e.settings.clone();
        }
        _ if state.status == Status::Removed => {}
        Event::AccountLinkRequested(e) => {
            state.status = Status::Linking;
            state.cause = None;
            state.status_reason = None;
            state.pairing_phone_number = e.pairing_phone_number.clone();
        }
        Event::QrCodeIssued(_) | Event::PairingCodeIssued(_) => state.status = Status::Linking,
        Event::AccountConnected(e) => {
            state.status = Status::Connected;
            state.cause = None;
            state.status_reason = None;
            state.not_delivering = None;
            if e.phone_number.is_some() {
                state.phone_number = e.phone_number.clone();
            }
        }
        Event::AccountDisconnected(e) => {
            state.status = if e.logs_out() {
                Status::LoggedOut
            } else {
                Status::Disconnected
            };
            state.cause = e.cause.clone();
            state.status_reason = Some(e.reason.clone());
            state.not_delivering = None;
        }
        Event::ContactIdentityMerged(e) => {
            state.identities.insert(e.lid.clone(), e.phone.clone());
        }
        Event::AccountDeliveryChanged(e) => {
            state.not_delivering = (!e.delivering).then(|| e.reason.clone());
        }
        Event::AccountRemoved(_) => state.status = Status::Removed,
        Event::AccountSettingsChanged(e) => {
            if let Some(twilio) = e.twilio_credentials() {
                state.twilio = Some(twilio);
            }
            if let Some(pacing) = e.changes.get(PACING) {
                state.pacing = serde_json::from_value(pacing.clone()).ok();
            }
            if let Some(name) = e.changes.get(NAME).and_then(serde_json::Value::as_str) {
                state.name = name.to_owned();
            }
            // A new engine comes with its own settings, which replace the old engine's.
            if let Some(engine) = e.changes.get(ENGINE).and_then(serde_json::Value::as_str) {
                state.engine = Some(engine.to_owned());
                state.settings = e.changes.get(ENGINE_SETTINGS).cloned();
            }
            let others: serde_json::Map<_, _> = e
                .changes
                .iter()
                .filter(|(name, _)| {
                    ![
                        AccountSettingsChanged::TWILIO,
                        PACING,
                        NAME,
                        ENGINE,
                        ENGINE_SETTINGS,
                    ]
                    .contains(&name.as_str())
                })
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            if !others.is_empty() {
                let mut settings = match state.settings.take() {
                    Some(serde_json::Value::Object(map)) => map,
                    _ => serde_json::Map::new(),
                };
                settings.extend(others);
                state.settings = Some(serde_json::Value::Object(settings));
            }
        }
        _ => {}
    }
    state
}

/// `<prefix><slug>` (by default `whatsnap-account-<slug>`): lowercase letters and digits of the
/// name joined by `-`, with a number appended when another account of the location already has
/// the tag.
pub fn slug_tag(prefix: &str, name: &str, taken: &HashSet<String>) -> String {
    let slug = name
        .to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let slug = if slug.is_empty() {
        "account".to_owned()
    } else {
        slug
    };
    let base = format!("{prefix}{slug}");
    let mut tag = base.clone();
    let mut n = 2;
    while taken.contains(&tag) {
        tag = format!("{base}-{n}");
        n += 1;
    }
    tag
}

pub fn decide_add(
    prefix: &str,
    account_id: Uuid,
    kind: AccountKind,
    name: &str,
    phone_number: Option<String>,
    connection: Connection,
    taken_tags: &HashSet<String>,
) -> ServiceResult<Event> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ServiceError::InvalidArgument(
            "an account needs a name".into(),
        ));
    }
    if name.chars().count() > 100 {
        return Err(ServiceError::InvalidArgument(
            "an account name has at most 100 characters".into(),
        ));
    }
    Ok(Event::from(AccountAdded {
        account_id,
        kind,
        name: name.to_owned(),
        tag: slug_tag(prefix, name, taken_tags),
        phone_number,
        twilio: connection.twilio,
        engine: Some(connection.engine),
        settings: connection.settings,
    }))
}

/// How an account is connected, as its connector checked it.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// The connector's engine name.
    pub engine: String,
    /// The connector's settings, secrets sealed.
    pub settings: Option<serde_json::Value>,
    /// A Twilio account's credentials, kept where accounts added before the connector seam
    /// keep them (the gateway and rotation read them there).
    pub twilio: Option<TwilioCredentials>,
}

pub fn decide_remove(state: &AccountState, account_id: Uuid, reason: &str) -> ServiceResult<Event> {
    if state.account_id.is_none() {
        return Err(ServiceError::NotFound(format!("no account {account_id}")));
    }
    if state.status == Status::Removed {
        return Err(ServiceError::FailedPrecondition(format!(
            "account {account_id} is already removed"
        )));
    }
    Ok(Event::from(AccountRemoved {
        account_id,
        reason: Some(reason.trim().to_owned()).filter(|r| !r.is_empty()),
    }))
}

/// The setting that holds the engine an account was moved to; [`ENGINE_SETTINGS`] holds that
/// engine's settings for it.
pub const ENGINE: &str = "engine";
pub const ENGINE_SETTINGS: &str = "engine_settings";

/// Whether an account may move to `engine`: it exists, is not removed, is not on it already,
/// and its link is not running (a linked or linking account is disconnected first).
pub fn check_engine_change(
    state: &AccountState,
    account_id: Uuid,
    engine: &str,
) -> ServiceResult<()> {
    if state.account_id.is_none() {
        return Err(ServiceError::NotFound(format!("no account {account_id}")));
    }
    if state.status == Status::Removed {
        return Err(ServiceError::FailedPrecondition(format!(
            "account {account_id} was removed"
        )));
    }
    if state.engine.as_deref() == Some(engine) {
        return Err(ServiceError::FailedPrecondition(format!(
            "account {account_id} is on the {engine} engine already"
        )));
    }
    if state.wants_link() {
        return Err(ServiceError::FailedPrecondition(format!(
            "account {account_id} is {}: disconnect it first, then move it to {engine} and \
             link it again",
            state.status.as_str()
        )));
    }
    Ok(())
}

/// The move of an account to `engine`, with the settings that engine's check gave.
pub fn engine_changed(account_id: Uuid, engine: &str, settings: serde_json::Value) -> Event {
    let mut changes = serde_json::Map::new();
    changes.insert(ENGINE.into(), engine.into());
    changes.insert(ENGINE_SETTINGS.into(), settings);
    Event::from(AccountSettingsChanged {
        account_id,
        changes,
    })
}

/// A user's disconnect of a linked account: recorded as a logout, so that nothing reconnects
/// it until it is linked again.
pub fn decide_disconnect(state: &AccountState, account_id: Uuid) -> ServiceResult<Event> {
    if state.account_id.is_none() {
        return Err(ServiceError::NotFound(format!("no account {account_id}")));
    }
    match state.status {
        Status::Removed => Err(ServiceError::FailedPrecondition(format!(
            "account {account_id} was removed"
        ))),
        Status::LoggedOut => Err(ServiceError::FailedPrecondition(format!(
            "account {account_id} is already logged out: link it again to connect it"
        ))),
        _ => Ok(Event::from(AccountDisconnected {
            account_id,
            reason: "disconnected in whatsnap: link it again for a new code".into(),
            cause: Some(AccountDisconnected::BY_USER.into()),
        })),
    }
}

/// The setting that holds an account's pacing (a [`whatsnap_connector::Pacing`]).
pub const PACING: &str = "pacing";

/// The most an account may be made to wait between sends, or to show "typing…".
const MAX_PACING: std::time::Duration = std::time::Duration::from_secs(600);

/// The setting that holds the account's name, when it was renamed.
pub const NAME: &str = "name";

/// A new name for the account; its tag stays (contacts carry it and replies are routed by it).
pub fn decide_rename(state: &AccountState, account_id: Uuid, name: &str) -> ServiceResult<Event> {
    if state.account_id.is_none() {
        return Err(ServiceError::NotFound(format!("no account {account_id}")));
    }
    if state.status == Status::Removed {
        return Err(ServiceError::FailedPrecondition(format!(
            "account {account_id} was removed"
        )));
    }
    let name = name.trim();
    if name.is_empty() {
        return Err(ServiceError::InvalidArgument("the name is empty".into()));
    }
    if name.chars().count() > 100 {
        return Err(ServiceError::InvalidArgument(
            "a name is at most 100 characters".into(),
        ));
    }
    let mut changes = serde_json::Map::new();
    changes.insert(NAME.to_owned(), name.into());
    Ok(Event::from(AccountSettingsChanged {
        account_id,
        changes,
    }))
}

/// A change of how fast the account sends.
pub fn decide_pacing(
    state: &AccountState,
    account_id: Uuid,
    pacing: whatsnap_connector::Pacing,
) -> ServiceResult<Event> {
    if state.account_id.is_none() {
        return Err(ServiceError::NotFound(format!("no account {account_id}")));
    }
    if state.status == Status::Removed {
        return Err(ServiceError::FailedPrecondition(format!(
            "account {account_id} was removed"
        )));
    }
    if [pacing.interval, pacing.jitter, pacing.typing]
        .iter()
        .any(|d| *d > MAX_PACING)
    {
        return Err(ServiceError::InvalidArgument(
            "an interval, jitter or typing time is at most 600 s".into(),
        ));
    }
    let mut changes = serde_json::Map::new();
    changes.insert(
        PACING.to_owned(),
        serde_json::to_value(pacing).expect("pacing serialises"),
    );
    Ok(Event::from(AccountSettingsChanged {
        account_id,
        changes,
    }))
}

/// A user's request to link (or re-link) a session-based account's device.
pub fn decide_link(
    state: &AccountState,
    account_id: Uuid,
    pairing_phone_number: Option<String>,
) -> ServiceResult<Event> {
    if state.account_id.is_none() {
        return Err(ServiceError::NotFound(format!("no account {account_id}")));
    }
    match state.status {
        Status::Removed => Err(ServiceError::FailedPrecondition(format!(
            "account {account_id} was removed"
        ))),
        Status::Connected => Err(ServiceError::FailedPrecondition(format!(
            "account {account_id} is already connected{}",
            state
                .phone_number
                .as_ref()
                .map(|n| format!(" as {n}"))
                .unwrap_or_default()
        ))),
        _ => Ok(Event::from(AccountLinkRequested {
            account_id,
            pairing_phone_number,
            requested_by: None,
        })),
    }
}

/// Who may have their Twilio credentials rotated: an account that exists, is not removed and
/// is a Twilio account. Gives the Account SID the new token goes with.
pub fn check_rotation(state: &AccountState, account_id: Uuid) -> ServiceResult<String> {
    if state.account_id.is_none() {
        return Err(ServiceError::NotFound(format!("no account {account_id}")));
    }
    if state.status == Status::Removed {
        return Err(ServiceError::FailedPrecondition(format!(
            "account {account_id} was removed"
        )));
    }
    match (&state.kind, &state.twilio) {
        (Some(AccountKind::Twilio), Some(twilio)) => Ok(twilio.account_sid.clone()),
        _ => Err(ServiceError::FailedPrecondition(format!(
            "account {account_id} is not a Twilio account: it has no credentials to rotate"
        ))),
    }
}

/// The rotation of a Twilio account's credentials, once Twilio accepted them.
pub fn decide_rotate(
    state: &AccountState,
    account_id: Uuid,
    credentials: TwilioCredentials,
) -> ServiceResult<Event> {
    let account_sid = check_rotation(state, account_id)?;
    if credentials.account_sid != account_sid {
        return Err(ServiceError::InvalidArgument(format!(
            "the new credentials are for Twilio account {}, not {account_sid}",
            credentials.account_sid
        )));
    }
    Ok(Event::from(AccountSettingsChanged::twilio(
        account_id,
        &credentials,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_slugs_of_the_name_and_unique_in_the_location() {
        let mut taken = HashSet::new();
        assert_eq!(
            slug_tag(DEFAULT_TAG_PREFIX, "Sales Line (SP)", &taken),
            "whatsnap-account-sales-line-sp"
        );
        taken.insert("whatsnap-account-sales".to_owned());
        assert_eq!(
            slug_tag(DEFAULT_TAG_PREFIX, "Sales", &taken),
            "whatsnap-account-sales-2"
        );
        taken.insert("whatsnap-account-sales-2".to_owned());
        assert_eq!(
            slug_tag(DEFAULT_TAG_PREFIX, "SALES", &taken),
            "whatsnap-account-sales-3"
        );
        assert_eq!(
            slug_tag(DEFAULT_TAG_PREFIX, "☎☎", &taken),
            "whatsnap-account-account"
        );
    }

    #[test]
    fn a_configured_prefix_replaces_the_default() {
        assert_eq!(
            slug_tag("acme-line-", "Sales", &HashSet::new()),
            "acme-line-sales"
        );
    }

    #[test]
    fn an_account_moves_engine_only_unlinked_and_then_carries_the_new_engines_settings() {
        let id = Uuid::now_v7();
        let mut state = AccountState {
            account_id: Some(id),
            engine: Some("evolution".into()),
            settings: Some(serde_json::json!({"instance_name": "old"})),
            status: Status::Connected,
            ..Default::default()
        };
        let refused = check_engine_change(&state, id, "embedded").unwrap_err();
        assert!(
            refused.to_string().contains("disconnect it first"),
            "{refused}"
        );
        state.status = Status::LoggedOut;
        assert!(
            check_engine_change(&state, id, "evolution").is_err(),
            "already on it"
        );
        check_engine_change(&state, id, "embedded").unwrap();
        let moved = evolve(
            state,
            &engine_changed(id, "embedded", serde_json::json!({})),
            2,
        );
        assert_eq!(moved.engine.as_deref(), Some("embedded"));
        assert_eq!(
            moved.settings,
            Some(serde_json::json!({})),
            "the old settings are gone"
        );
        assert_eq!(moved.status, Status::LoggedOut);
    }

    #[test]
    fn given_an_added_account_when_removed_twice_then_the_second_is_refused() {
        let id = Uuid::now_v7();
        let added = decide_add(
            DEFAULT_TAG_PREFIX,
            id,
            AccountKind::Twilio,
            "Sales",
            None,
            Connection::default(),
            &HashSet::new(),
        )
        .unwrap();
        let state = evolve(AccountState::default(), &added, 1);
        let removed = decide_remove(&state, id, "closed").unwrap();
        let state = evolve(state, &removed, 2);
        assert_eq!(state.status, Status::Removed);
        assert!(matches!(
            decide_remove(&state, id, ""),
            Err(ServiceError::FailedPrecondition(_))
        ));
    }

    #[test]
    fn given_an_account_when_renamed_then_its_name_changes_and_its_tag_stays() {
        let id = Uuid::now_v7();
        let added = decide_add(
            DEFAULT_TAG_PREFIX,
            id,
            AccountKind::Whatsapp,
            "Sales",
            None,
            Connection::default(),
            &HashSet::new(),
        )
        .unwrap();
        let state = evolve(AccountState::default(), &added, 1);
        let renamed = decide_rename(&state, id, "  Sales Brazil ").unwrap();
        let state = evolve(state, &renamed, 2);
        assert_eq!(state.name, "Sales Brazil");
        assert_eq!(state.tag, "whatsnap-account-sales");
        assert_eq!(state.settings, None, "the name is not an engine setting");
        assert!(matches!(
            decide_rename(&state, id, " "),
            Err(ServiceError::InvalidArgument(_))
        ));
        let removed = decide_remove(&state, id, "").unwrap();
        let state = evolve(state, &removed, 3);
        assert!(matches!(
            decide_rename(&state, id, "Again"),
            Err(ServiceError::FailedPrecondition(_))
        ));
    }

    fn sealed(token: &str) -> whatsnap_secrets::Sealed {
        whatsnap_secrets::SecretKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
            .unwrap()
            .seal(token)
    }

    #[test]
    fn given_a_twilio_account_when_its_credentials_rotate_then_it_keeps_its_id_and_tag() {
        let id = Uuid::now_v7();
        let old = TwilioCredentials {
            account_sid: "AC0123456789abcdef0123456789abcdef".into(),
            auth_token: sealed("old"),
        };
        let added = decide_add(
            DEFAULT_TAG_PREFIX,
            id,
            AccountKind::Twilio,
            "Sales",
            Some("+15005550006".into()),
            Connection {
                engine: "twilio".into(),
                settings: None,
                twilio: Some(old.clone()),
            },
            &HashSet::new(),
        )
        .unwrap();
        let state = evolve(AccountState::default(), &added, 1);
        let new = TwilioCredentials {
            auth_token: sealed("new"),
            ..old.clone()
        };
        let rotated = decide_rotate(&state, id, new.clone()).unwrap();
        let state = evolve(state, &rotated, 2);
        assert_eq!(state.twilio, Some(new));
        assert_eq!(
            (state.account_id, state.tag.as_str(), state.version),
            (Some(id), "whatsnap-account-sales", 2)
        );

        let other_account = TwilioCredentials {
            account_sid: "AC99999999999999999999999999999999".into(),
            ..old
        };
        assert!(matches!(
            decide_rotate(&state, id, other_account),
            Err(ServiceError::InvalidArgument(_))
        ));
        let removed = decide_remove(&state, id, "").unwrap();
        let state = evolve(state, &removed, 3);
        assert!(matches!(
            check_rotation(&state, id),
            Err(ServiceError::FailedPrecondition(_))
        ));
    }

    #[test]
    fn an_account_that_is_not_twilio_has_no_credentials_to_rotate() {
        let id = Uuid::now_v7();
        let added = decide_add(
            DEFAULT_TAG_PREFIX,
            id,
            AccountKind::Whatsapp,
            "Front",
            None,
            Connection::default(),
            &HashSet::new(),
        )
        .unwrap();
        let state = evolve(AccountState::default(), &added, 1);
        assert!(matches!(
            check_rotation(&state, id),
            Err(ServiceError::FailedPrecondition(_))
        ));
        assert!(matches!(
            check_rotation(&AccountState::default(), id),
            Err(ServiceError::NotFound(_))
        ));
    }

    #[test]
    fn an_account_without_a_name_is_refused() {
        let err = decide_add(
            DEFAULT_TAG_PREFIX,
            Uuid::now_v7(),
            AccountKind::Whatsapp,
            "  ",
            None,
            Connection::default(),
            &HashSet::new(),
        );
        assert!(matches!(err, Err(ServiceError::InvalidArgument(_))));
    }
}
