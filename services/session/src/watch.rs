//! `WatchAccount`: the account as it is, then every code and state change as the account's
//! stream records it — what `whatsnap accounts connect` and the dashboard show while a device
//! is linked.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;
use whatsnap_events::{AggregateKind, Event, LocationId, StreamId};
use whatsnap_eventstore::EventStore;
use whatsnap_proto::session::v1 as pb;

use crate::account::{AccountState, Status as AccountStatus, evolve};

pub type AccountUpdates = Pin<Box<dyn Stream<Item = Result<pb::AccountUpdate, Status>> + Send>>;

/// How often the account's stream is read for what is new.
const POLL: Duration = Duration::from_millis(200);

/// The updates of one account, until the watcher goes away or the account is removed.
pub fn updates(
    store: Arc<dyn EventStore>,
    location: LocationId,
    account_id: Uuid,
) -> AccountUpdates {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let stream = StreamId::for_uuid(location.clone(), AggregateKind::Account, account_id);
        let mut state = AccountState::default();
        let mut first = true;
        // The last code issued while reading the account's history: the first update shows it
        // when it still works, so a watcher that starts after the code was issued (a page
        // opened right after linking began) shows it without waiting for the next.
        let mut last_code: Option<Event> = None;
        loop {
            let read = store
                .read_stream(&stream, state.version + 1, usize::MAX)
                .await;
            let events = match read {
                Ok(events) => events,
                Err(err) => {
                    let _ = tx.send(Err(Status::unavailable(err.to_string()))).await;
                    return;
                }
            };
            let mut updates = Vec::new();
            for recorded in &events {
                let Ok(event) = recorded.decode() else {
                    continue;
                };
                state = evolve(state, &event, recorded.version);
                if !first {
                    updates.push(update(&state, &location, Some(&event)));
                } else if matches!(event, Event::QrCodeIssued(_) | Event::PairingCodeIssued(_)) {
                    last_code = Some(event);
                }
            }
            if first {
                let code = last_code
                    .take()
                    .filter(|code| state.status == AccountStatus::Linking && still_valid(code));
                updates.push(update(&state, &location, code.as_ref()));
                first = false;
            }
            for update in updates {
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
            }
            if state.status == AccountStatus::Removed {
                return;
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(POLL) => {}
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Whether a code has not expired yet.
fn still_valid(code: &Event) -> bool {
    let expires_at = match code {
        Event::QrCodeIssued(e) => e.expires_at,
        Event::PairingCodeIssued(e) => e.expires_at,
        _ => return false,
    };
    expires_at > chrono::Utc::now()
}

fn update(state: &AccountState, location: &LocationId, event: Option<&Event>) -> pb::AccountUpdate {
    let (qr_code, pairing_code, expires_at) = match event {
        Some(Event::QrCodeIssued(e)) => (e.qr_code.clone(), String::new(), Some(e.expires_at)),
        Some(Event::PairingCodeIssued(e)) => (String::new(), e.code.clone(), Some(e.expires_at)),
        _ => (String::new(), String::new(), None),
    };
    pb::AccountUpdate {
        account: Some(crate::to_pb(state, location)),
        qr_code,
        pairing_code,
        code_expires_at_ms: expires_at.map_or(0, |at| at.timestamp_millis()),
    }
}
