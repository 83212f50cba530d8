//! An Evolution account's live link, as the session service's supervisor runs it: make sure the
//! instance exists and reports to whatsnap, ask it to connect, then watch it. Evolution also
//! posts everything through the webhook; the session's own look at the state is what notices
//! a server that went away, and it follows the QR codes as they rotate even when Evolution
//! cannot reach whatsnap's webhook (a laptop behind NAT).
//!
//! A code may therefore be reported twice, once here and once by the webhook: a consumer
//! keeps the last code it showed and skips a repeat.

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use whatsnap_connector::{
    AccountRef, ConnectorError, ConnectorEvent, DisconnectReason, Ended, LinkCode, LinkMethod,
    Session,
};

use crate::client::{ConnectAnswer, EvolutionError, LinkState, QrCode};
use crate::connector::{EvolutionConnector, EvolutionSettings, number_of};
use crate::webhook::{QR_VALIDITY, close_reason, phone_of_jid};

/// How many looks in a row must find the link closed before the session ends: Evolution closes
/// a link for a moment when it reconnects by itself (WhatsApp's "restart required" right after
/// a scan, a dropped connection), and one look may fall in that moment.
const CLOSED_LOOKS_TO_END: u32 = 2;

/// What the session last told the supervisor about the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Nothing,
    Linking,
    Open,
    Unreachable,
}

/// One running session of one instance.
struct Watch<'a> {
    connector: &'a EvolutionConnector,
    account: &'a AccountRef,
    name: String,
    /// The instance's token, opened from the account's settings.
    token: String,
    method: LinkMethod,
    events: mpsc::Sender<ConnectorEvent>,
    shown: Shown,
    /// The last code reported, so that a code is reported once however often it is seen.
    last_code: Option<String>,
    /// Looks in a row that found the link closed.
    closed_looks: u32,
}

/// The code to show for an answer of `connect`: the pairing code when there is one.
fn link_code(qr: QrCode) -> Option<LinkCode> {
    match (qr.pairing_code, qr.code) {
        (Some(code), _) if !code.is_empty() => Some(LinkCode::Pairing {
            code,
            valid_for: QR_VALIDITY,
        }),
        (_, Some(code)) if !code.is_empty() => Some(LinkCode::Qr {
            code,
            valid_for: QR_VALIDITY,
        }),
        // Evolution had no code yet: it comes with `qrcode.updated`, or at the next look.
        _ => None,
    }
}

impl Watch<'_> {
    async fn emit(&self, event: ConnectorEvent) {
        // A closed channel ends the session at the next turn of the loop.
        let _ = self.events.send(event).await;
    }

    /// One look at the link: `Err` when the session ends.
    async fn step(&mut self) -> Result<(), Ended> {
        let looked = match self.shown {
            // (Re)start: the server may also have restarted and lost the instance.
            Shown::Nothing | Shown::Unreachable => self.start_linking().await,
            Shown::Linking | Shown::Open => {
                match self.connector.client().connection_state(&self.name).await {
                    Ok(state) => return self.on_state(state).await,
                    Err(error) => Err(error),
                }
            }
        };
        match looked {
            Ok(()) => Ok(()),
            Err(error) => self.on_error(error).await,
        }
    }

    /// Connects the instance (creating it, or pointing its webhook at whatsnap) and shows the
    /// code it answers.
    /// An instance deleted on the server is made again with the account's token, so that the
    /// webhooks it posts still prove themselves.
    async fn start_linking(&mut self) -> Result<(), EvolutionError> {
        let webhook = self
            .connector
            .webhook_for(&self.account.location, self.account.account_id);
        self.connector
            .ensure_instance(&self.name, Some(self.token.as_str()), &webhook, false)
            .await?;
        self.connect().await
    }

    /// `connect`: starts linking a closed instance, answers the current code of a linking one.
    async fn connect(&mut self) -> Result<(), EvolutionError> {
        let number = match &self.method {
            LinkMethod::PairingCode { phone_number } => Some(number_of(phone_number)),
            LinkMethod::Qr => None,
        };
        match self
            .connector
            .client()
            .connect(&self.name, number.as_deref())
            .await?
        {
            ConnectAnswer::Open => self.report_open().await,
            ConnectAnswer::Linking(qr) => {
                self.shown = Shown::Linking;
                if let Some(code) = link_code(qr) {
                    let text = match &code {
                        LinkCode::Qr { code, .. } | LinkCode::Pairing { code, .. } => code.clone(),
                    };
                    if self.last_code.as_ref() != Some(&text) {
                        self.last_code = Some(text);
                        self.emit(ConnectorEvent::Linking(code)).await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn report_open(&mut self) {
        let found = self
            .connector
            .client()
            .find_instance(&self.name)
            .await
            .ok()
            .flatten();
        self.shown = Shown::Open;
        self.last_code = None;
        self.emit(ConnectorEvent::Connected {
            phone_number: found
                .as_ref()
                .and_then(|i| i.owner_jid.as_deref())
                .and_then(phone_of_jid),
            display_name: found.and_then(|i| i.profile_name),
        })
        .await;
    }

    async fn on_state(&mut self, state: LinkState) -> Result<(), Ended> {
        debug!(instance = %self.name, ?state, shown = ?self.shown, "evolution link state");
        if matches!(state, LinkState::Close | LinkState::Refused) {
            self.closed_looks += 1;
            if self.closed_looks < CLOSED_LOOKS_TO_END {
                return Ok(());
            }
        } else {
            self.closed_looks = 0;
        }
        match (self.shown, state) {
            (Shown::Open, LinkState::Open | LinkState::Connecting) => Ok(()),
            (_, LinkState::Open) => {
                self.report_open().await;
                Ok(())
            }
            // Still linking: follow the code as it rotates.
            (_, LinkState::Connecting) => match self.connect().await {
                Ok(()) => Ok(()),
                Err(error) => self.on_error(error).await,
            },
            (Shown::Open, LinkState::Close | LinkState::Refused) => {
                // Evolution records why it gave up on the link (Baileys' status code).
                let code = self
                    .connector
                    .client()
                    .find_instance(&self.name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|i| i.disconnection_reason_code);
                let (reason, what) = close_reason(code);
                let detail = match code {
                    Some(code) => format!("{what} (status {code})"),
                    None => what.to_owned(),
                };
                Err(self.end(reason, detail).await)
            }
            (_, LinkState::Close | LinkState::Refused) => Err(self
                .end(
                    DisconnectReason::Refused,
                    "no QR code was scanned before evolution's codes ran out".to_owned(),
                )
                .await),
        }
    }

    async fn on_error(&mut self, error: EvolutionError) -> Result<(), Ended> {
        match error {
            EvolutionError::NotConnected(reason) | EvolutionError::Unavailable { reason, .. } => {
                if self.shown != Shown::Unreachable {
                    warn!(instance = %self.name, %reason, "evolution cannot be reached");
                    self.shown = Shown::Unreachable;
                    self.emit(ConnectorEvent::Disconnected {
                        reason: DisconnectReason::EngineUnavailable,
                        detail: format!("evolution cannot be reached: {reason}"),
                    })
                    .await;
                }
                Ok(())
            }
            EvolutionError::NotFound(_) if self.shown == Shown::Open => {
                let detail = format!("the evolution instance {} was deleted", self.name);
                Err(self.end(DisconnectReason::LoggedOut, detail).await)
            }
            // Deleted while linking: make it again.
            EvolutionError::NotFound(_) => {
                self.shown = Shown::Nothing;
                Ok(())
            }
            error => {
                let detail = format!("evolution refused the session: {error}");
                Err(self.end(DisconnectReason::Refused, detail).await)
            }
        }
    }

    /// Reports that the link closed for `reason`, and ends the session with it.
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
impl Session for EvolutionConnector {
    async fn run(
        &self,
        account: &AccountRef,
        method: LinkMethod,
        events: mpsc::Sender<ConnectorEvent>,
        stop: CancellationToken,
    ) -> Ended {
        let (name, token) = match self.webhook_secrets(account) {
            Ok(secrets) => secrets,
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
            name,
            token,
            method,
            events,
            shown: Shown::Nothing,
            last_code: None,
            closed_looks: 0,
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
                () = tokio::time::sleep(self.config().poll_interval) => {}
            }
        }
        Ended {
            reason: DisconnectReason::Stopped,
            detail: "whatsnap stopped the session".to_owned(),
        }
    }

    async fn logout(&self, account: &AccountRef) -> Result<(), ConnectorError> {
        let settings = EvolutionSettings::of(&account.settings)?;
        match self.client().logout(&settings.instance_name).await {
            // Not connected (400) or gone (404): nothing is linked.
            Ok(())
            | Err(EvolutionError::NotFound(_))
            | Err(EvolutionError::Refused {
                http_status: 400, ..
            }) => Ok(()),
            Err(error) => Err(error.into_connector_error()),
        }
    }
}
