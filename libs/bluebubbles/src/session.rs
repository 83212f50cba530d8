//! An iMessage account's live link, as the session service's supervisor runs it. BlueBubbles
//! keeps no connection open to whatsnap and never retries a webhook (§6a), so the session
//! watches the Mac itself: it pings it every `ping_interval`; when it answers (at start, and
//! after every time it was unreachable) the session makes sure whatsnap's webhook is
//! registered on it, catches up with `POST /api/v1/message/query` on what was missed, and
//! reports the account connected; when it stops answering, it reports the Mac offline with the
//! reason, which alerts.

use async_trait::async_trait;
use chrono::Utc;
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

    /// Reports every message created since the last one seen (or the configured window when
    /// whatsnap just started): what webhooks missed while whatsnap or the Mac was away.
    /// Messages already recorded are recognised by their GUID downstream.
    async fn catch_up(&self) -> Result<(), BlueBubblesError> {
        let account_id = self.account.account_id;
        let window = chrono::Duration::from_std(self.connector.config().catch_up)
            .unwrap_or(chrono::Duration::days(1));
        let since = self
            .connector
            .seen_until
            .lock()
            .expect("seen_until lock")
            .get(&account_id)
            .copied()
            .unwrap_or_else(|| (Utc::now() - window).timestamp_millis());
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
        self.seen_until
            .lock()
            .expect("seen_until lock")
            .remove(&account.account_id);
        Ok(())
    }
}
