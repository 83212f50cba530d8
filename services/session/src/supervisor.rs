//! The supervisor of session-based accounts (a linked WhatsApp device): it runs each account's
//! live link while the account wants one — a user asked to link it, or it was connected — and
//! records everything the link reports through the same path as an engine's webhook. A link
//! that ends for a reason whatsnap can recover from (the connection dropped, the engine was
//! unreachable) is started again after a pause with jitter, longer each time in a row; one that
//! ends for a reason only a user can fix (logged out from the phone, banned, QR codes not
//! scanned) stays stopped with that reason recorded. A removed account's link is stopped and its
//! device logged out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;
use whatsnap_connector::{
    AccountRef, Connector, ConnectorEvent, DisconnectReason, Ended, LinkMethod,
};
use whatsnap_events::LocationId;
use whatsnap_eventstore::projection::Backoff;
use whatsnap_rpc::ServiceError;

use crate::account::{AccountState, Status};
use crate::connection::account_ref;
use crate::{Session, read_model};

/// Runs the live links of a session's accounts.
pub struct Supervisor {
    session: Session,
    /// How often the accounts are looked at for links to start or stop.
    poll: Duration,
    /// The pause before a link is started again, by failures in a row.
    backoff: Backoff,
    /// How long a reply may go without a receipt before a link whose last replies all lack one
    /// is flagged as not delivering.
    receipt_patience: chrono::Duration,
}

/// How often the accounts' receipts are looked at.
const RECEIPT_CHECK: Duration = Duration::from_secs(5);

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Supervisor {
    pub fn new(session: Session) -> Self {
        Self {
            receipt_patience: chrono::Duration::from_std(session.config.receipt_patience)
                .unwrap_or(chrono::Duration::minutes(10)),
            session,
            poll: Duration::from_millis(500),
            backoff: Backoff {
                first: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
        }
    }

    /// Runs until `shutdown` resolves, then stops every link (without logging any device out).
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let engines: Vec<&str> = self
            .session
            .config
            .connectors
            .sessions()
            .map(|c| c.engine())
            .collect();
        if engines.is_empty() {
            shutdown.await;
            return;
        }
        let mut running: HashMap<Uuid, Running> = HashMap::new();
        let mut last_receipt_check = tokio::time::Instant::now();
        tokio::pin!(shutdown);
        loop {
            running.retain(|_, link| !link.task.is_finished());
            match self.session.release_known().await {
                Ok(0) => {}
                Ok(released) => info!(
                    released,
                    "held messages received: their senders' numbers are known"
                ),
                Err(err) => warn!(error = %err, "cannot look at the held messages"),
            }
            match read_model::linkable(&self.session.db, &engines).await {
                Ok(accounts) => {
                    let wanted: Vec<(LocationId, Uuid)> = accounts
                        .into_iter()
                        .filter_map(|(location, account)| {
                            Some((LocationId::parse(&location).ok()?, account.parse().ok()?))
                        })
                        .collect();
                    if last_receipt_check.elapsed() >= RECEIPT_CHECK {
                        last_receipt_check = tokio::time::Instant::now();
                        if let Err(err) = self
                            .session
                            .flag_silent_links(&wanted, self.receipt_patience)
                            .await
                        {
                            warn!(error = %err, "cannot look at the accounts' receipts");
                        }
                    }
                    for (location, account_id) in &wanted {
                        if running.contains_key(account_id) {
                            continue;
                        }
                        let stop = CancellationToken::new();
                        let task = tokio::spawn(self.clone().supervise(
                            location.clone(),
                            *account_id,
                            stop.clone(),
                        ));
                        running.insert(*account_id, Running { stop, task });
                    }
                    // A link no longer wanted (removed, logged out) stops; its task records
                    // why and logs a removed account's device out.
                    for (account_id, link) in &running {
                        if !wanted.iter().any(|(_, id)| id == account_id) {
                            link.stop.cancel();
                        }
                    }
                }
                Err(err) => warn!(error = %err, "cannot read the accounts to link"),
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.poll) => {}
            }
        }
        for link in running.values() {
            link.stop.cancel();
        }
        for (_, link) in running {
            let _ = link.task.await;
        }
    }

    /// One account's link, run again while the account wants it.
    async fn supervise(
        self: Arc<Self>,
        location: LocationId,
        account_id: Uuid,
        stop: CancellationToken,
    ) {
        let mut failures: u32 = 0;
        loop {
            let state = match self.session.load_account(&location, account_id).await {
                Ok((_, state)) => state,
                Err(err) => {
                    warn!(%account_id, error = %err, "cannot read the account to link");
                    failures += 1;
                    if self.pause(failures, &stop).await {
                        return;
                    }
                    continue;
                }
            };
            if state.status == Status::Removed {
                self.log_out(&location, &state).await;
                return;
            }
            if !state.wants_link() || stop.is_cancelled() {
                return;
            }
            let Some((connector, mut account)) = self.link_of(&location, &state) else {
                return;
            };
            // Looked up at every start, not kept: what the link recorded before it ended (or
            // before whatsnap stopped) is where the next one catches up from.
            account.last_message_at =
                match read_model::last_message_at(&self.session.db, account_id).await {
                    Ok(at) => at,
                    Err(err) => {
                        warn!(%account_id, error = %err, "cannot read the account's last message");
                        failures += 1;
                        if self.pause(failures, &stop).await {
                            return;
                        }
                        continue;
                    }
                };
            let method = match &state.pairing_phone_number {
                Some(number) if state.status == Status::Linking => LinkMethod::PairingCode {
                    phone_number: number.clone(),
                },
                _ => LinkMethod::Qr,
            };
            info!(%account_id, engine = connector.engine(), "link starting");
            let (ended, connected) = self
                .run_link(connector.as_ref(), &account, method, stop.child_token())
                .await;
            info!(%account_id, reason = %ended.reason, detail = %ended.detail, "link ended");
            // Removed or disconnected by a user meanwhile: the link's own account of its end
            // (a logout it was told of) is not news, and a removed account's device is logged
            // out.
            let now = self.session.load_account(&location, account_id).await;
            if let Ok((_, state)) = &now
                && state.status == Status::Removed
            {
                self.log_out(&location, state).await;
            }
            let unwanted = now.is_ok_and(|(_, state)| !state.wants_link());
            if stop.is_cancelled() || unwanted {
                return;
            }
            let report = ConnectorEvent::Disconnected {
                reason: ended.reason,
                detail: ended.detail.clone(),
            };
            if let Err(err) = self
                .session
                .record_connector_event(&location, account_id, &report)
                .await
            {
                warn!(%account_id, error = %err, "cannot record why the link ended");
            }
            if !ended.reason.reconnects() {
                return;
            }
            failures = if connected { 1 } else { failures + 1 };
            if self.pause(failures, &stop).await {
                return;
            }
        }
    }

    /// Runs the link once, recording what it reports in order; whether it connected.
    async fn run_link(
        &self,
        connector: &dyn Connector,
        account: &AccountRef,
        method: LinkMethod,
        stop: CancellationToken,
    ) -> (Ended, bool) {
        let Some(session) = connector.session() else {
            return (
                Ended {
                    reason: DisconnectReason::Stopped,
                    detail: "the engine keeps no live link".into(),
                },
                false,
            );
        };
        let (tx, mut rx) = mpsc::channel::<ConnectorEvent>(64);
        let link = session.run(account, method, tx, stop.clone());
        tokio::pin!(link);
        let mut connected = false;
        let mut ended = None;
        loop {
            tokio::select! {
                result = &mut link, if ended.is_none() => ended = Some(result),
                event = rx.recv() => match event {
                    Some(event) => {
                        connected |= matches!(event, ConnectorEvent::Connected { .. });
                        self.record(account, &event, &stop).await;
                    }
                    None => break,
                },
            }
        }
        let ended = match ended {
            Some(ended) => ended,
            None => link.await,
        };
        (ended, connected)
    }

    /// Records one report, trying again while the store or the read model cannot take it: a
    /// report is not dropped because whatsnap is briefly unwell. A receipt for a message
    /// whatsnap did not send (one typed on the phone) is of no use and is let go.
    async fn record(&self, account: &AccountRef, event: &ConnectorEvent, stop: &CancellationToken) {
        let mut failures = 0;
        loop {
            match self
                .session
                .record_connector_event(&account.location, account.account_id, event)
                .await
            {
                Ok(_) => return,
                Err(ServiceError::NotFound(reason)) => {
                    debug!(account_id = %account.account_id, %reason, "a report about nothing whatsnap knows is let go");
                    return;
                }
                Err(ServiceError::InvalidArgument(reason)) => {
                    warn!(account_id = %account.account_id, %reason, "the link reported something whatsnap cannot record");
                    return;
                }
                Err(err) => {
                    failures += 1;
                    warn!(account_id = %account.account_id, failures, error = %err, "cannot record what the link reported yet");
                    if self.pause(failures, stop).await {
                        warn!(account_id = %account.account_id, "stopping: a report of the link is not recorded");
                        return;
                    }
                }
            }
        }
    }

    fn link_of(
        &self,
        location: &LocationId,
        state: &AccountState,
    ) -> Option<(Arc<dyn Connector>, AccountRef)> {
        let connector = self.session.connector_of(state).ok()?;
        let account = account_ref(location, state, &self.session.config.secret_key)?;
        Some((connector, account))
    }

    async fn log_out(&self, location: &LocationId, state: &AccountState) {
        let Some((connector, account)) = self.link_of(location, state) else {
            return;
        };
        if let Some(session) = connector.session()
            && let Err(err) = session.logout(&account).await
        {
            warn!(account_id = %account.account_id, error = %err, "the removed account's device could not be logged out");
        }
    }

    /// Waits before the next start; `true` when stopped meanwhile.
    async fn pause(&self, failures: u32, stop: &CancellationToken) -> bool {
        tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(self.backoff.delay(failures)) => false,
        }
    }
}
