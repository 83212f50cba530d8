//! What the `whatsapp-rust` client reports, in whatsnap's terms: the crate's [`Event`]s become
//! [`ConnectorEvent`]s. Pure: no I/O, so the tests feed it the crate's own event values.
//!
//! Only one-to-one chats reach whatsnap: group chats, status broadcasts, broadcast lists and
//! channels (newsletters) are left out.

use base64::Engine as _;
use whatsapp_rust::download::Downloadable;
use whatsapp_rust::proto_helpers::MessageExt as _;
use whatsapp_rust::types::events::{ConnectFailureReason, Event, InboundMessage, Receipt};
use whatsapp_rust::types::presence::ReceiptType;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsapp_rust::{Jid, Server};
use whatsnap_connector::{
    ConnectorEvent, DisconnectReason, LinkCode, ObservedMessage, Peer, Receipt as Progress,
};
use whatsnap_events::Attachment;

/// The account's own identity, as the session last saw it: what `Connected` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnIdentity {
    /// The linked number in E.164.
    pub phone_number: Option<String>,
    /// The WhatsApp name (push name) or business name.
    pub display_name: Option<String>,
}

impl OwnIdentity {
    /// From the client's own JID and push name.
    pub fn from_jid(pn: Option<&Jid>, push_name: &str) -> Self {
        Self {
            phone_number: pn.and_then(phone_of),
            display_name: non_empty(push_name),
        }
    }
}

/// Turns the crate's events into whatsnap's, one session at a time. It remembers whether the
/// link is open, so pairing (`PairSuccess`, then the reconnect's `Connected`) reports one
/// `Connected`, and a `Connected` after a loss reports another.
#[derive(Debug, Default)]
pub struct Translator {
    own: OwnIdentity,
    connected: bool,
}

impl Translator {
    pub fn new(own: OwnIdentity) -> Self {
        Self {
            own,
            connected: false,
        }
    }

    /// Updates what `Connected` reports (the session reads it from the client as it connects).
    pub fn set_own(&mut self, own: OwnIdentity) {
        if own.phone_number.is_some() {
            self.own.phone_number = own.phone_number;
        }
        if own.display_name.is_some() {
            self.own.display_name = own.display_name;
        }
    }

    pub fn translate(&mut self, event: &Event) -> Vec<ConnectorEvent> {
        match event {
            Event::PairingQrCode(qr) => vec![ConnectorEvent::Linking(LinkCode::Qr {
                code: qr.code.clone(),
                valid_for: qr.timeout,
            })],
            Event::PairingCode(pairing) => vec![ConnectorEvent::Linking(LinkCode::Pairing {
                code: pairing.code.clone(),
                valid_for: pairing.timeout,
            })],
            Event::PairSuccess(paired) => {
                self.own.phone_number = phone_of(&paired.id).or(self.own.phone_number.take());
                if let Some(name) = non_empty(&paired.business_name) {
                    self.own.display_name = Some(name);
                }
                self.connected()
            }
            Event::Connected(_) => self.connected(),
            Event::PairError(failed) => self.disconnected(
                DisconnectReason::Refused,
                format!("whatsapp refused the link: {}", failed.error),
            ),
            Event::PairingCodeError(failed) => self.disconnected(
                DisconnectReason::Refused,
                format!("no pairing code: {}", failed.error),
            ),
            Event::PairingQrCodesExhausted(_) => self.disconnected(
                DisconnectReason::Refused,
                "no qr code was scanned before the codes ran out".into(),
            ),
            Event::ClientOutdated(_) => self.disconnected(
                DisconnectReason::ClientOutdated,
                "whatsapp refuses this client's version".into(),
            ),
            Event::LoggedOut(out) => {
                let reason = match out.reason {
                    ConnectFailureReason::AccountLocked | ConnectFailureReason::TempBanned => {
                        DisconnectReason::Banned
                    }
                    _ => DisconnectReason::LoggedOut,
                };
                let mut detail = format!("logged out by whatsapp ({:?})", out.reason);
                if let Some(message) = &out.logout_message {
                    for text in [&message.header, &message.subtext].into_iter().flatten() {
                        detail.push_str(": ");
                        detail.push_str(text);
                    }
                }
                self.disconnected(reason, detail)
            }
            Event::TemporaryBan(ban) => self.disconnected(
                DisconnectReason::Banned,
                format!(
                    "temporarily banned for {} s: {}",
                    ban.expire.num_seconds(),
                    ban.code
                ),
            ),
            Event::ConnectFailure(failure) => {
                let reason = match failure.reason {
                    reason if reason.should_reconnect() => DisconnectReason::ConnectionLost,
                    ConnectFailureReason::ClientOutdated | ConnectFailureReason::BadUserAgent => {
                        DisconnectReason::ClientOutdated
                    }
                    ConnectFailureReason::TempBanned => DisconnectReason::Banned,
                    _ => DisconnectReason::Refused,
                };
                let mut detail = format!("whatsapp refused the connection ({:?})", failure.reason);
                if let Some(message) = &failure.message {
                    detail.push_str(": ");
                    detail.push_str(message);
                }
                self.disconnected(reason, detail)
            }
            Event::StreamReplaced(_) => self.disconnected(
                DisconnectReason::ConnectionLost,
                "another connection of this device replaced this one".into(),
            ),
            Event::Disconnected(lost) => self.disconnected(
                DisconnectReason::ConnectionLost,
                format!("connection lost: {}", lost.reason),
            ),
            Event::Messages(batch) => batch
                .iter()
                .filter_map(observed)
                .map(ConnectorEvent::Message)
                .collect(),
            Event::Receipt(receipt) => receipts(receipt),
            _ => Vec::new(),
        }
    }

    fn connected(&mut self) -> Vec<ConnectorEvent> {
        if std::mem::replace(&mut self.connected, true) {
            return Vec::new();
        }
        vec![ConnectorEvent::Connected {
            phone_number: self.own.phone_number.clone(),
            display_name: self.own.display_name.clone(),
        }]
    }

    fn disconnected(&mut self, reason: DisconnectReason, detail: String) -> Vec<ConnectorEvent> {
        self.connected = false;
        vec![ConnectorEvent::Disconnected { reason, detail }]
    }
}

fn non_empty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// `+<digits>` for a phone-number JID (`15551234567@s.whatsapp.net`, any device).
fn phone_of(jid: &Jid) -> Option<String> {
    let digits = jid.user.as_str();
    (matches!(jid.server, Server::Pn | Server::Hosted)
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit()))
    .then(|| format!("+{digits}"))
}

/// `<lid>@lid` for a LID JID, without the device.
fn lid_of(jid: &Jid) -> Option<String> {
    (matches!(jid.server, Server::Lid | Server::HostedLid) && !jid.user.is_empty())
        .then(|| format!("{}@lid", jid.user))
}

/// Whether a chat is one whatsnap bridges: a one-to-one chat with a person.
fn is_person(jid: &Jid) -> bool {
    matches!(
        jid.server,
        Server::Pn | Server::Lid | Server::Hosted | Server::HostedLid
    )
}

/// The peer named by a JID and its alternate form (a LID and a phone number, either way round).
fn peer(primary: &Jid, alternates: &[Option<&Jid>]) -> Peer {
    let mut peer = Peer {
        phone: phone_of(primary),
        lid: lid_of(primary),
    };
    for alternate in alternates.iter().flatten() {
        peer.phone = peer.phone.or_else(|| phone_of(alternate));
        peer.lid = peer.lid.or_else(|| lid_of(alternate));
    }
    peer
}

/// A message's text, or its media's caption.
pub fn text_of(message: &wa::Message) -> Option<&str> {
    message
        .text_content()
        .or_else(|| message.get_caption())
        .filter(|text| !text.is_empty())
}

/// A file a message carries, for the client to download.
pub struct InboundFile<'a> {
    pub media: &'a dyn Downloadable,
    /// Its MIME type without parameters (what a `data:` URL can carry).
    pub content_type: String,
    pub file_name: Option<String>,
}

impl InboundFile<'_> {
    /// Its bytes as the attachment whatsnap keeps: a `data:` URL, which the session service
    /// stores and serves to GHL.
    pub fn attachment(&self, bytes: &[u8]) -> Attachment {
        Attachment {
            url: format!(
                "data:{};base64,{}",
                self.content_type,
                base64::engine::general_purpose::STANDARD.encode(bytes)
            ),
            content_type: Some(self.content_type.clone()),
            file_name: self.file_name.clone(),
        }
    }
}

/// The file of a photo, video, voice note or audio, document or sticker.
pub fn file_of(message: &wa::Message) -> Option<InboundFile<'_>> {
    let base = message.get_base_message();
    let bare = |mimetype: Option<&str>, default: &str| {
        let mime = mimetype.unwrap_or(default);
        mime.split(';').next().unwrap_or(mime).trim().to_owned()
    };
    let (media, content_type, file_name): (&dyn Downloadable, String, Option<String>) =
        if let Some(m) = base.image_message.as_option() {
            (m, bare(m.mimetype.as_deref(), "image/jpeg"), None)
        } else if let Some(m) = base.video_message.as_option() {
            (m, bare(m.mimetype.as_deref(), "video/mp4"), None)
        } else if let Some(m) = base.audio_message.as_option() {
            (m, bare(m.mimetype.as_deref(), "audio/ogg"), None)
        } else if let Some(m) = base.document_message.as_option() {
            let name = m.file_name.clone().filter(|name| !name.is_empty());
            (
                m,
                bare(m.mimetype.as_deref(), "application/octet-stream"),
                name,
            )
        } else if let Some(m) = base.sticker_message.as_option() {
            (m, bare(m.mimetype.as_deref(), "image/webp"), None)
        } else {
            return None;
        };
    Some(InboundFile {
        media,
        content_type,
        file_name,
    })
}

/// What a message carries that whatsnap can show: its text or caption, or else a note of the
/// media it holds (replaced by the file itself when the session downloads it). `None` for what
/// is not a message to a person (reactions, protocol messages, polls, …).
fn body_of(message: &wa::Message) -> Option<String> {
    if let Some(text) = text_of(message) {
        return Some(text.to_owned());
    }
    let base = message.get_base_message();
    // Inbound media is not downloaded yet (the crate's `download` would do it): say what came.
    let note = if base.image_message.as_option().is_some() {
        "[image]".to_owned()
    } else if base.video_message.as_option().is_some() {
        "[video]".to_owned()
    } else if base.audio_message.as_option().is_some() {
        "[audio]".to_owned()
    } else if let Some(document) = base.document_message.as_option() {
        match document.file_name.as_deref() {
            Some(name) if !name.is_empty() => format!("[document: {name}]"),
            _ => "[document]".to_owned(),
        }
    } else if base.sticker_message.as_option().is_some() {
        "[sticker]".to_owned()
    } else if base.contact_message.as_option().is_some() {
        "[contact]".to_owned()
    } else if base.location_message.as_option().is_some() {
        "[location]".to_owned()
    } else {
        return None;
    };
    Some(note)
}

/// A message in a one-to-one chat, received or typed on the account's phone.
fn observed(inbound: &InboundMessage) -> Option<ObservedMessage> {
    let info = &inbound.info;
    let source = &info.source;
    if source.is_group || !is_person(&source.chat) {
        return None;
    }
    let body = body_of(&inbound.message)?;
    let peer = if source.is_from_me {
        // The chat is the recipient; its other form, if the server gave it.
        peer(
            &source.chat,
            &[
                source.recipient_alt.as_ref(),
                source.recipient.as_ref(),
                info.peer_recipient_pn.as_ref(),
            ],
        )
    } else {
        peer(
            &source.sender,
            &[source.sender_alt.as_ref(), Some(&source.chat)],
        )
    };
    Some(ObservedMessage {
        provider_message_id: info.id.clone(),
        peer,
        from_me: source.is_from_me,
        sender_name: if source.is_from_me {
            None
        } else {
            non_empty(&info.push_name)
        },
        body,
        attachments: Vec::new(),
        sent_at: info.timestamp,
    })
}

/// How far messages the account sent have got, from the peer's receipts.
fn receipts(receipt: &Receipt) -> Vec<ConnectorEvent> {
    if receipt.source.is_group || !is_person(&receipt.source.chat) {
        return Vec::new();
    }
    let progress = match &receipt.r#type {
        ReceiptType::Delivered => Progress::Delivered,
        ReceiptType::Read | ReceiptType::Played => Progress::Read,
        _ => return Vec::new(),
    };
    receipt
        .message_ids
        .iter()
        .map(|id| ConnectorEvent::Receipt {
            provider_message_id: id.clone(),
            receipt: progress.clone(),
        })
        .collect()
}
