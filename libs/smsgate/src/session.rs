//! A phone's health, as the session service's supervisor runs it: whatsnap keeps its webhooks
//! registered on the gateway, then looks at the phone every poll — the local server's
//! `GET /health`, or the cloud's `GET /devices` `lastSeen` — beside what the webhooks showed
//! (any signed webhook, `system:ping` among them). A phone seen within the patience is
//! connected; one silent for longer is offline (`phone_offline`, with the battery-saver advice),
//! until it is seen again. Texts the phone took and has not sent (no `sms:sent`, and
//! `GET /messages/{id}` still pending) for longer than the patience flag the account as
//! connected but not delivering, until they leave.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use whatsnap_connector::{
    AccountRef, ConnectorError, ConnectorEvent, DisconnectReason, Ended, LinkMethod, Session,
};

use crate::client::{SmsGateClient, SmsGateError};
use crate::connector::{BATTERY_ADVICE, Mode, SmsGateConnector, SmsGateSettings, webhook_id};

/// What the session last told the supervisor about the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shown {
    Nothing,
    Online,
    Offline,
}

/// What to report about the phone, given when it was last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Quiet,
    Online,
    Offline(String),
}

/// Decides what the phone's last sighting means, as of `now`: `watching_since` is when this
/// session started (a phone never seen is offline once the patience has passed since then).
pub(crate) fn judge(
    shown: Shown,
    last_seen: Option<DateTime<Utc>>,
    watching_since: DateTime<Utc>,
    now: DateTime<Utc>,
    patience: chrono::Duration,
) -> Verdict {
    let online = last_seen.is_some_and(|at| now - at <= patience);
    match (online, shown) {
        (true, Shown::Online) => Verdict::Quiet,
        (true, _) => Verdict::Online,
        (false, Shown::Offline) => Verdict::Quiet,
        (false, Shown::Nothing) if now - watching_since <= patience => Verdict::Quiet,
        (false, _) => {
            let silent = match last_seen {
                Some(at) => format!(
                    "the phone was last seen {} s ago",
                    (now - at).num_seconds().max(0)
                ),
                None => format!(
                    "the phone has not been seen for {} s",
                    (now - watching_since).num_seconds().max(0)
                ),
            };
            Verdict::Offline(format!(
                "{silent} (SMSGate stays silent longer than {} s): check the phone is on and \
                 online, and {BATTERY_ADVICE}",
                patience.num_seconds()
            ))
        }
    }
}

struct Watch<'a> {
    connector: &'a SmsGateConnector,
    account: &'a AccountRef,
    settings: SmsGateSettings,
    client: SmsGateClient,
    events: mpsc::Sender<ConnectorEvent>,
    shown: Shown,
    registered: bool,
    not_delivering: bool,
    since: DateTime<Utc>,
}

impl Watch<'_> {
    async fn emit(&self, event: ConnectorEvent) {
        let _ = self.events.send(event).await;
    }

    fn patience(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.connector.config.patience)
            .unwrap_or(chrono::Duration::minutes(10))
    }

    /// One look at the phone: `Err` when the session ends.
    async fn step(&mut self) -> Result<(), Ended> {
        if !self.registered {
            match self
                .connector
                .register_webhooks(
                    &self.client,
                    &self.account.location,
                    self.account.account_id,
                    self.settings.device_id.as_deref(),
                )
                .await
            {
                Ok(()) => self.registered = true,
                Err(SmsGateError::Unauthorized) => {
                    return Err(self
                        .end(
                            DisconnectReason::Refused,
                            "SMSGate refused the username and password: add the account \
                             again with the ones the app shows now"
                                .to_owned(),
                        )
                        .await);
                }
                Err(error) => {
                    debug!(account_id = %self.account.account_id, %error, "webhooks not registered yet")
                }
            }
        }
        let polled = self.look().await;
        let now = Utc::now();
        let last_seen = {
            let mut sightings = self.connector.sightings();
            if let Some(at) = polled {
                sightings.saw(self.account.account_id, at);
            }
            sightings.last_seen(self.account.account_id)
        };
        match judge(self.shown, last_seen, self.since, now, self.patience()) {
            Verdict::Quiet => {}
            Verdict::Online => {
                self.shown = Shown::Online;
                self.emit(ConnectorEvent::Connected {
                    phone_number: None,
                    display_name: None,
                })
                .await;
            }
            Verdict::Offline(detail) => {
                warn!(account_id = %self.account.account_id, "the phone is silent");
                self.shown = Shown::Offline;
                self.emit(ConnectorEvent::Disconnected {
                    reason: DisconnectReason::PhoneOffline,
                    detail,
                })
                .await;
            }
        }
        if self.shown == Shown::Online {
            self.check_sending(now).await;
        }
        Ok(())
    }

    /// When the gateway last saw the phone: now, if the phone's own server answers; the
    /// cloud's `lastSeen` otherwise. `None` when it cannot say.
    async fn look(&self) -> Option<DateTime<Utc>> {
        match self.settings.mode {
            Mode::Local => self.client.health().await.ok().map(|_| Utc::now()),
            Mode::Cloud | Mode::Private => {
                let devices = self.client.devices().await.ok()?;
                devices
                    .into_iter()
                    .filter(|d| {
                        self.settings
                            .device_id
                            .as_ref()
                            .is_none_or(|wanted| &d.id == wanted)
                    })
                    .filter_map(|d| d.last_seen)
                    .max()
            }
        }
    }

    /// Flags the account when texts the phone took wait longer than the patience, and clears
    /// it once they have left.
    async fn check_sending(&mut self, now: DateTime<Utc>) {
        let account_id = self.account.account_id;
        let waiting = self
            .connector
            .sightings()
            .waiting_since(account_id, now - self.patience());
        let mut stuck = 0;
        for id in waiting {
            match self.client.message(&id).await {
                Ok(state) if !state.left_the_phone() => stuck += 1,
                // Sent (a webhook missed), failed, or gone: not waiting any more.
                Ok(_) | Err(SmsGateError::NotFound(_)) => {
                    self.connector.sightings().reported(account_id, &id);
                }
                Err(_) => stuck += 1,
            }
        }
        if stuck > 0 && !self.not_delivering {
            self.not_delivering = true;
            let detail = format!(
                "{stuck} text(s) the phone took more than {} s ago have not been sent: {BATTERY_ADVICE}",
                self.patience().num_seconds()
            );
            self.emit(ConnectorEvent::Delivery {
                delivering: false,
                detail,
            })
            .await;
        } else if stuck == 0 && self.not_delivering {
            self.not_delivering = false;
            self.emit(ConnectorEvent::Delivery {
                delivering: true,
                detail: "the phone sends the texts it took".to_owned(),
            })
            .await;
        }
    }

    async fn end(&self, reason: DisconnectReason, detail: String) -> Ended {
        self.emit(ConnectorEvent::Disconnected {
            reason,
            detail: detail.clone(),
        })
        .await;
        Ended { reason, detail }
    }
}

#[async_trait]
impl Session for SmsGateConnector {
    async fn run(
        &self,
        account: &AccountRef,
        _method: LinkMethod,
        events: mpsc::Sender<ConnectorEvent>,
        stop: CancellationToken,
    ) -> Ended {
        let (settings, client) = match self.client_of(account) {
            Ok(found) => found,
            Err(error) => {
                return Ended {
                    reason: DisconnectReason::Refused,
                    detail: error.to_string(),
                };
            }
        };
        let mut watch = Watch {
            connector: self,
            account,
            settings,
            client,
            events,
            shown: Shown::Nothing,
            registered: false,
            not_delivering: false,
            since: Utc::now(),
        };
        loop {
            let step = tokio::select! {
                () = stop.cancelled() => break,
                step = watch.step() => step,
            };
            if let Err(ended) = step {
                return ended;
            }
            if watch.events.is_closed() {
                break;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        Ended {
            reason: DisconnectReason::Stopped,
            detail: "whatsnap stopped watching the phone".to_owned(),
        }
    }

    /// Removes whatsnap's webhooks from the gateway: the phone stops posting for a removed
    /// account.
    async fn logout(&self, account: &AccountRef) -> Result<(), ConnectorError> {
        let (_, client) = self.client_of(account)?;
        for event in crate::client::WEBHOOK_EVENTS {
            client
                .delete_webhook(&webhook_id(account.account_id, event))
                .await
                .map_err(SmsGateError::into_connector_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: chrono::Duration = chrono::Duration::seconds(60);

    #[test]
    fn a_phone_seen_within_the_patience_is_online_once() {
        let now = Utc::now();
        let seen = Some(now - chrono::Duration::seconds(5));
        assert_eq!(
            judge(Shown::Nothing, seen, now, now, PATIENCE),
            Verdict::Online
        );
        assert_eq!(
            judge(Shown::Online, seen, now, now, PATIENCE),
            Verdict::Quiet
        );
        assert_eq!(
            judge(Shown::Offline, seen, now, now, PATIENCE),
            Verdict::Online,
            "seen again"
        );
    }

    #[test]
    fn a_silent_phone_is_offline_with_the_battery_advice() {
        let now = Utc::now();
        let seen = Some(now - chrono::Duration::seconds(61));
        let Verdict::Offline(detail) = judge(Shown::Online, seen, now, now, PATIENCE) else {
            panic!("offline");
        };
        assert!(detail.contains("last seen 61 s ago"), "{detail}");
        assert!(detail.contains("battery optimisation"), "{detail}");
        assert_eq!(
            judge(Shown::Offline, seen, now, now, PATIENCE),
            Verdict::Quiet,
            "said once"
        );
    }

    #[test]
    fn a_phone_never_seen_is_given_the_patience_before_it_is_offline() {
        let start = Utc::now();
        assert_eq!(
            judge(Shown::Nothing, None, start, start + PATIENCE, PATIENCE),
            Verdict::Quiet
        );
        let later = start + PATIENCE + chrono::Duration::seconds(1);
        assert!(matches!(
            judge(Shown::Nothing, None, start, later, PATIENCE),
            Verdict::Offline(detail) if detail.contains("not been seen for 61 s")
        ));
    }
}
