//! Accounts as their connectors see them, and what a connector's report ([`ConnectorEvent`])
//! changes in the account's stream. Nothing here knows a platform: each kind lives in its own
//! connector crate, registered in [`whatsnap_connector::Connectors`].

use chrono::{DateTime, Utc};
use uuid::Uuid;
use whatsnap_connector::{AccountRef, ConnectorEvent, LinkCode};
use whatsnap_events::{
    AccountConnected, AccountDeliveryChanged, AccountDisconnected, Event, LocationId,
    PairingCodeIssued, QrCodeIssued,
};
use whatsnap_secrets::SecretKey;

use crate::account::{AccountState, Status};

/// Records that a connected account stopped delivering (`delivering` false), or delivers again.
pub(crate) async fn record_delivery(
    store: &dyn whatsnap_eventstore::EventStore,
    location: &LocationId,
    account_id: Uuid,
    delivering: bool,
    reason: &str,
) -> Result<(), whatsnap_eventstore::StoreError> {
    let stream = whatsnap_events::StreamId::for_uuid(
        location.clone(),
        whatsnap_events::AggregateKind::Account,
        account_id,
    );
    let event = Event::from(AccountDeliveryChanged {
        account_id,
        delivering,
        reason: reason.to_owned(),
    });
    tracing::warn!(%account_id, delivering, %reason, "account delivery changed");
    store
        .append(
            &stream,
            whatsnap_eventstore::ExpectedVersion::Any,
            vec![whatsnap_events::NewEvent::new(
                &event,
                whatsnap_events::EventMetadata::new_correlation(),
            )],
        )
        .await
        .map(drop)
}

/// The account as a connector needs it. `last_message_at` is not in the account's stream (a
/// message has its own): the supervisor looks it up in the read model when a link starts.
pub fn account_ref(
    location: &LocationId,
    state: &AccountState,
    secret_key: &SecretKey,
) -> Option<AccountRef> {
    let settings = match (&state.settings, &state.twilio) {
        (Some(settings), _) => settings.clone(),
        (None, Some(twilio)) => serde_json::to_value(twilio).ok()?,
        (None, None) => serde_json::Value::Object(Default::default()),
    };
    Some(AccountRef {
        location: location.clone(),
        account_id: state.account_id?,
        name: state.name.clone(),
        phone_number: state.phone_number.clone(),
        settings,
        secret_key: secret_key.clone(),
        last_message_at: None,
    })
}

/// What a connector's report about the connection changes in the account's stream: a code to
/// show, a state that differs from the recorded one. Messages and receipts are not the account's
/// (they go to their message's stream), and a removed account records nothing more.
pub fn decide_connection(
    state: &AccountState,
    account_id: Uuid,
    event: &ConnectorEvent,
    now: DateTime<Utc>,
) -> Option<Event> {
    if state.status == Status::Removed {
        return None;
    }
    let until = |valid_for: &std::time::Duration| {
        now + chrono::Duration::from_std(*valid_for).unwrap_or(chrono::Duration::seconds(60))
    };
    match event {
        // A code issued before the scan, reported after it: the link is made.
        ConnectorEvent::Linking(_) if state.status == Status::Connected => None,
        ConnectorEvent::Linking(LinkCode::Qr { code, valid_for }) => {
            Some(Event::from(QrCodeIssued {
                account_id,
                qr_code: code.clone(),
                expires_at: until(valid_for),
            }))
        }
        ConnectorEvent::Linking(LinkCode::Pairing { code, valid_for }) => {
            Some(Event::from(PairingCodeIssued {
                account_id,
                code: code.clone(),
                expires_at: until(valid_for),
            }))
        }
        ConnectorEvent::Connected {
            phone_number,
            display_name,
        } => {
            let same_number = phone_number.is_none() || *phone_number == state.phone_number;
            (state.status != Status::Connected || !same_number).then(|| {
                Event::from(AccountConnected {
                    account_id,
                    phone_number: phone_number.clone(),
                    display_name: display_name.clone(),
                })
            })
        }
        ConnectorEvent::Disconnected { reason, detail } => {
            let cause = reason.as_str();
            let already = matches!(state.status, Status::Disconnected | Status::LoggedOut)
                && state.cause.as_deref() == Some(cause);
            // A user disconnected it: the engine's own report of that logout is not news.
            let disconnected_by_user = state.status == Status::LoggedOut
                && state.cause.as_deref() == Some(AccountDisconnected::BY_USER);
            let never_linked = state.status == Status::Added;
            // A link being made drops and comes back while the codes are shown: only a reason
            // that ends it (codes ran out, refused, banned) is news.
            let linking_goes_on = state.status == Status::Linking && reason.reconnects();
            (!already && !disconnected_by_user && !never_linked && !linking_goes_on).then(|| {
                Event::from(AccountDisconnected {
                    account_id,
                    reason: if detail.is_empty() {
                        reason.advice().to_owned()
                    } else {
                        format!("{detail}; {}", reason.advice())
                    },
                    cause: Some(cause.to_owned()),
                })
            })
        }
        ConnectorEvent::Delivery { delivering, detail } => {
            let flagged = state.not_delivering.is_some();
            (state.status == Status::Connected && flagged == *delivering).then(|| {
                Event::from(AccountDeliveryChanged {
                    account_id,
                    delivering: *delivering,
                    reason: detail.clone(),
                })
            })
        }
        ConnectorEvent::Message(_) | ConnectorEvent::Receipt { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use whatsnap_connector::DisconnectReason;
    use whatsnap_events::AccountLinkRequested;

    use super::*;
    use crate::account::evolve;

    fn linking() -> (Uuid, AccountState) {
        let id = Uuid::now_v7();
        let requested = Event::from(AccountLinkRequested {
            account_id: id,
            pairing_phone_number: None,
            requested_by: None,
        });
        let state = AccountState {
            account_id: Some(id),
            ..Default::default()
        };
        (id, evolve(state, &requested, 2))
    }

    #[test]
    fn each_qr_code_is_recorded_with_the_time_it_expires() {
        let (id, state) = linking();
        let now = Utc::now();
        let event = ConnectorEvent::Linking(LinkCode::Qr {
            code: "2@abc".into(),
            valid_for: Duration::from_secs(60),
        });
        let Some(Event::QrCodeIssued(issued)) = decide_connection(&state, id, &event, now) else {
            panic!("a QR code is recorded");
        };
        assert_eq!(issued.qr_code, "2@abc");
        assert_eq!(issued.expires_at, now + chrono::Duration::seconds(60));
    }

    #[test]
    fn a_code_reported_after_the_scan_leaves_the_account_connected() {
        let (id, state) = linking();
        let now = Utc::now();
        let open = ConnectorEvent::Connected {
            phone_number: None,
            display_name: None,
        };
        let connected = decide_connection(&state, id, &open, now).unwrap();
        let state = evolve(state, &connected, 3);
        let late = ConnectorEvent::Linking(LinkCode::Qr {
            code: "2@late".into(),
            valid_for: Duration::from_secs(45),
        });
        assert_eq!(decide_connection(&state, id, &late, now), None);
    }

    #[test]
    fn a_state_the_account_is_already_in_records_nothing() {
        let (id, state) = linking();
        let now = Utc::now();
        let open = ConnectorEvent::Connected {
            phone_number: Some("+15550001111".into()),
            display_name: None,
        };
        let connected = decide_connection(&state, id, &open, now).expect("connected");
        let state = evolve(state, &connected, 3);
        assert_eq!(state.status, Status::Connected);
        assert_eq!(decide_connection(&state, id, &open, now), None);

        let lost = ConnectorEvent::Disconnected {
            reason: DisconnectReason::LoggedOut,
            detail: "unlinked from the phone".into(),
        };
        let Some(disconnected) = decide_connection(&state, id, &lost, now) else {
            panic!("a disconnection is recorded");
        };
        let state = evolve(state, &disconnected, 4);
        assert_eq!(state.status, Status::LoggedOut);
        assert!(!state.wants_link(), "a logged-out device waits for a user");
        assert!(
            state
                .status_reason
                .as_deref()
                .is_some_and(|r| r.contains("scan again")),
            "{:?}",
            state.status_reason
        );
        assert_eq!(decide_connection(&state, id, &lost, now), None);
    }

    #[test]
    fn a_connected_link_that_stops_delivering_is_flagged_once_and_cleared_once() {
        let (id, state) = linking();
        let now = Utc::now();
        let stuck = ConnectorEvent::Delivery {
            delivering: false,
            detail: "2 texts not sent by the phone".into(),
        };
        assert_eq!(
            decide_connection(&state, id, &stuck, now),
            None,
            "an account not connected yet is not flagged"
        );
        let open = ConnectorEvent::Connected {
            phone_number: None,
            display_name: None,
        };
        let connected = decide_connection(&state, id, &open, now).unwrap();
        let state = evolve(state, &connected, 3);
        let flagged = decide_connection(&state, id, &stuck, now).expect("flagged");
        let state = evolve(state, &flagged, 4);
        assert_eq!(
            state.not_delivering.as_deref(),
            Some("2 texts not sent by the phone")
        );
        assert_eq!(decide_connection(&state, id, &stuck, now), None, "once");
        let flowing = ConnectorEvent::Delivery {
            delivering: true,
            detail: "the phone sent them".into(),
        };
        let cleared = decide_connection(&state, id, &flowing, now).expect("cleared");
        let state = evolve(state, &cleared, 5);
        assert_eq!(state.not_delivering, None);
        assert_eq!(decide_connection(&state, id, &flowing, now), None);
    }

    #[test]
    fn a_lost_connection_is_one_whatsnap_recovers_from_by_itself() {
        let (id, state) = linking();
        let now = Utc::now();
        let lost = ConnectorEvent::Disconnected {
            reason: DisconnectReason::EngineUnavailable,
            detail: String::new(),
        };
        assert_eq!(
            decide_connection(&state, id, &lost, now),
            None,
            "while codes are shown, a drop the link recovers from is not news"
        );
        let open = ConnectorEvent::Connected {
            phone_number: None,
            display_name: None,
        };
        let connected = decide_connection(&state, id, &open, now).unwrap();
        let state = evolve(state, &connected, 3);
        let event = decide_connection(&state, id, &lost, now).unwrap();
        let state = evolve(state, &event, 4);
        assert_eq!(state.status, Status::Disconnected);
        assert!(state.wants_link());
        let refused = ConnectorEvent::Disconnected {
            reason: DisconnectReason::Refused,
            detail: "QR codes ran out".into(),
        };
        let event = decide_connection(&state, id, &refused, now).unwrap();
        assert!(!evolve(state, &event, 5).wants_link());
    }
}
