//! An iMessage account's live link, as the session service's supervisor runs it. BlueBubbles
//! keeps no connection open to whatsnap and never retries a webhook (§6a), so the session
//! watches the Mac itself: it pings it every `ping_interval`; when it answers (at start, and
//! after every time it was unreachable) the session makes sure whatsnap's webhook is
//! registered on it, catches up with `POST /api/v1/message/query` on what was missed, and
//! reports the account connected; when it stops answering, it reports the Mac offline with the
//! reason, which alerts.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use whatsnap_connector::{
    AccountRef, ConnectorError, ConnectorEvent, DisconnectReason, Ended, LinkMethod, Session,
};

use crate::client::{BlueBubblesClient, BlueBubblesError, MessageQuery};
use crate::connector::{BlueBubblesConnector, Opened, webhook_path};

/// How many messages one catch-up query asks for (BlueBubbles' most).
const PAGE: u32 = 1000;

/// How far (ms) before the last message recorded a catch-up starts: a message whose webhook
/// was lost while a slightly later one's was recorded, or one dated by whatsnap's clock because
/// the Mac gave no date, is not missed. What it reads again is recognised by its GUID.
const RECORDED_OVERLAP_MS: i64 = 60_000;

/// Where a catch-up starts (ms, included): the later of the last message this process saw and
/// the last one recorded when the link started (less [`RECORDED_OVERLAP_MS`]), so an outage of
/// whatsnap of any length loses nothing; `window` back from `now` only for an account that has
/// recorded no message yet.
fn catch_up_from(
    seen: Option<i64>,
    recorded: Option<DateTime<Utc>>,
    window: Duration,
    now: DateTime<Utc>,
) -> i64 {
    let recorded = recorded.map(|at| at.timestamp_millis() - RECORDED_OVERLAP_MS);
    let since = match (seen, recorded) {
        (Some(seen), Some(recorded)) => seen.max(recorded),
        (Some(since), None) | (None, Some(since)) => since,
        (None, None) => {
            let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::days(1));
            (now - window).timestamp_millis()
        }
    };
    since.max(0)
}

/// What the session last told the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Nothing,
    Connected,
    Offline,
}

struct Watch<'a> {
    connector: &'a BlueBubblesConnector,
    account: &'a AccountRef,
    opened: Opened,
    events: mpsc::Sender<ConnectorEvent>,
    shown: Shown,
}

impl Watch<'_> {
    async fn emit(&self, event: ConnectorEvent) {
        // A closed channel ends the session at the next turn of the loop.
        let _ = self.events.send(event).await;
    }

    fn client(&self) -> &BlueBubblesClient {
        &self.opened.client
    }

    /// One look at the Mac: `Err` when the session ends.
    async fn step(&mut self) -> Result<(), Ended> {
        let looked = match self.client().ping().await {
            Ok(()) if self.shown == Shown::Connected => Ok(()),
            Ok(()) => self.come_online().await,
            Err(error) => Err(error),
        };
        match looked {
            Ok(()) => Ok(()),
            Err(BlueBubblesError::Unauthorized(reason)) => Err(self
                .end(
                    DisconnectReason::Refused,
                    format!(
                        "the Mac's BlueBubbles server refused the password ({reason}): add the \
                         account again with the new password"
                    ),
                )
                .await),
            Err(error) => {
                if self.shown != Shown::Offline {
                    warn!(account_id = %self.account.account_id, %error, "the mac is offline");
                    self.shown = Shown::Offline;
                    self.emit(ConnectorEvent::Disconnected {
                        reason: DisconnectReason::DeviceOffline,
                        detail: format!("the Mac's BlueBubbles server does not answer: {error}"),
                    })
                    .await;
                }
                Ok(())
            }
        }
    }

    /// The Mac answers: webhook registered, what was missed caught up, connected.
    async fn come_online(&mut self) -> Result<(), BlueBubblesError> {
        self.ensure_webhook().await?;
        self.catch_up().await?;
        let info = self.client().server_info().await.ok();
        info!(account_id = %self.account.account_id, "the mac is online");
        self.shown = Shown::Connected;
        self.emit(ConnectorEvent::Connected {
            phone_number: None,
            display_name: info.and_then(|i| i.detected_imessage),
        })
        .await;
        Ok(())
    }

    /// Registers whatsnap's webhook unless the server has it; removes this account's webhooks
    /// that carry another secret (an older registration).
    async fn ensure_webhook(&self) -> Result<(), BlueBubblesError> {
        let wanted = self.connector.webhook_url(
            &self.account.location,
            self.account.account_id,
            &self.opened.webhook_secret,
        );
        let path = webhook_path(&self.account.location, self.account.account_id);
        let mut present = false;
        for webhook in self.client().webhooks().await? {
            if webhook.url == wanted {
                present = true;
            } else if webhook.url.contains(&format!("{path}?")) {
                self.client().delete_webhook(webhook.id).await?;
            }
        }
        if !present {
            self.client().add_webhook(&wanted).await?;
            info!(account_id = %self.account.account_id, "webhook registered on the mac");
        }
        Ok(())
    }

    /// Reports every message created since the last one whatsnap recorded or this process saw:
    /// what webhooks missed while whatsnap or the Mac was away. Messages already recorded are
    /// recognised by their GUID downstream.
    async fn catch_up(&self) -> Result<(), BlueBubblesError> {
        let account_id = self.account.account_id;
        let seen = self.connector.seen_until().get(&account_id).copied();
        let since = catch_up_from(
            seen,
            self.account.last_message_at,
            self.connector.config().catch_up,
            Utc::now(),
        );
        let mut offset = 0;
        let mut reported = 0;
        loop {
            let page = self
                .client()
                .query_messages(&MessageQuery {
                    chat_guid: None,
                    after: Some(since),
                    with: vec![
                        "chat".to_owned(),
                        "handle".to_owned(),
                        "attachment".to_owned(),
                    ],
                    sort: "ASC",
                    offset,
                    limit: PAGE,
                })
                .await?;
            let full = page.len() == PAGE as usize;
            for message in page {
                if let Some(created) = message.date_created {
                    self.connector.saw(account_id, created);
                }
                if let Some(observed) = message.observed() {
                    reported += 1;
                    self.emit(ConnectorEvent::Message(observed)).await;
                }
            }
            if !full {
                break;
            }
            offset += PAGE;
        }
        if reported > 0 {
            info!(%account_id, reported, "caught up with the mac");
        }
        Ok(())
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
impl Session for BlueBubblesConnector {
    async fn run(
        &self,
        account: &AccountRef,
        _method: LinkMethod,
        events: mpsc::Sender<ConnectorEvent>,
        stop: CancellationToken,
    ) -> Ended {
        let opened = match self.open(account) {
            Ok(opened) => opened,
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
            opened,
            events,
            shown: Shown::Nothing,
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
                () = tokio::time::sleep(self.config().ping_interval) => {}
            }
        }
        Ended {
            reason: DisconnectReason::Stopped,
            detail: "whatsnap stopped watching the Mac".to_owned(),
        }
    }

    /// Removes this account's webhooks from the Mac (the account is removed).
    async fn logout(&self, account: &AccountRef) -> Result<(), ConnectorError> {
        let opened = self.open(account)?;
        let path = webhook_path(&account.location, account.account_id);
        let webhooks = opened
            .client
            .webhooks()
            .await
            .map_err(BlueBubblesError::into_connector_error)?;
        for webhook in webhooks {
            if webhook.url.contains(&format!("{path}?")) {
                opened
                    .client
                    .delete_webhook(webhook.id)
                    .await
                    .map_err(BlueBubblesError::into_connector_error)?;
            }
        }
        self.seen_until().remove(&account.account_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    #[test]
    fn a_restart_catches_up_from_the_last_message_recorded_however_long_ago() {
        let now = at(1_800_000_000_000);
        let week_ago = now - chrono::Duration::days(7);
        assert_eq!(
            catch_up_from(None, Some(week_ago), DAY, now),
            week_ago.timestamp_millis() - RECORDED_OVERLAP_MS,
            "the window does not cut a longer outage short"
        );
    }

    #[test]
    fn a_later_message_seen_since_the_start_moves_the_catch_up_on() {
        let now = at(1_800_000_000_000);
        let recorded = now - chrono::Duration::hours(2);
        let seen = (now - chrono::Duration::minutes(5)).timestamp_millis();
        assert_eq!(catch_up_from(Some(seen), Some(recorded), DAY, now), seen);
        let earlier = (recorded - chrono::Duration::hours(1)).timestamp_millis();
        assert_eq!(
            catch_up_from(Some(earlier), Some(recorded), DAY, now),
            recorded.timestamp_millis() - RECORDED_OVERLAP_MS
        );
    }

    #[test]
    fn an_account_that_recorded_nothing_catches_up_over_the_window() {
        let now = at(1_800_000_000_000);
        assert_eq!(
            catch_up_from(None, None, Duration::from_secs(60), now),
            now.timestamp_millis() - 60_000
        );
    }
}
