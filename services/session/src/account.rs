//! The account aggregate: pure `decide` and `evolve`.

use std::collections::HashSet;

use uuid::Uuid;
use whatsnap_events::{
    AccountAdded, AccountKind, AccountRemoved, AccountSettingsChanged, Event, TwilioCredentials,
};
use whatsnap_rpc::{ServiceError, ServiceResult};

/// The prefix of every account tag unless the deployment configures another.
pub const DEFAULT_TAG_PREFIX: &str = "whatsnap-account-";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Status {
    #[default]
    Added,
    Connected,
    Disconnected,
    Removed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
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
    pub status: Status,
    pub version: u64,
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
        }
        Event::AccountConnected(e) => {
            state.status = Status::Connected;
            if e.phone_number.is_some() {
                state.phone_number = e.phone_number.clone();
            }
        }
        Event::AccountDisconnected(_) => state.status = Status::Disconnected,
        Event::AccountRemoved(_) => state.status = Status::Removed,
        Event::AccountSettingsChanged(e) => {
            if let Some(twilio) = e.twilio_credentials() {
                state.twilio = Some(twilio);
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
    twilio: Option<TwilioCredentials>,
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
        twilio,
    }))
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
    fn given_an_added_account_when_removed_twice_then_the_second_is_refused() {
        let id = Uuid::now_v7();
        let added = decide_add(
            DEFAULT_TAG_PREFIX,
            id,
            AccountKind::Twilio,
            "Sales",
            None,
            None,
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
            Some(old.clone()),
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
            None,
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
            None,
            &HashSet::new(),
        );
        assert!(matches!(err, Err(ServiceError::InvalidArgument(_))));
    }
}
