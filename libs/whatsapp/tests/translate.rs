//! The adapter, fed the `whatsapp-rust` crate's own event values: given what the client reports,
//! then whatsnap hears the right thing.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use whatsapp_rust::Jid;
use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::types::events::{
    BatchOrigin, ClientOutdated, ConnectFailure, ConnectFailureReason, Connected, Disconnected,
    Event, InboundMessage, LoggedOut, LogoutMessage, MessageBatch, PairSuccess, PairingCode,
    PairingQrCode, PairingQrCodesExhausted, Receipt, TempBanReason, TemporaryBan,
};
use whatsapp_rust::types::message::{MessageInfo, MessageSource};
use whatsapp_rust::types::presence::ReceiptType;
use whatsapp_rust::wacore::net::DisconnectReason as TransportReason;
use whatsapp_rust::waproto::whatsapp as wa;
use whatsnap_connector::{
    ConnectorEvent, DisconnectReason, LinkCode, ObservedMessage, Peer, Receipt as Progress,
};
use whatsnap_whatsapp::{OwnIdentity, Translator};

fn jid(text: &str) -> Jid {
    text.parse().unwrap()
}

fn translator() -> Translator {
    Translator::new(OwnIdentity::default())
}

fn text(body: &str) -> wa::Message {
    wa::Message {
        conversation: Some(body.into()),
        ..Default::default()
    }
}

fn message(source: MessageSource, id: &str, push_name: &str, body: wa::Message) -> Event {
    let info = MessageInfo {
        source,
        id: id.into(),
        push_name: push_name.into(),
        timestamp: Utc.with_ymd_and_hms(2026, 12, 2, 10, 0, 0).unwrap(),
        ..Default::default()
    };
    let inbound = InboundMessage::builder()
        .message(Arc::new(body))
        .info(Arc::new(info))
        .build();
    Event::Messages(
        MessageBatch::builder()
            .messages(Arc::from(vec![inbound]))
            .origin(BatchOrigin::Live)
            .build(),
    )
}

fn from(sender: &str) -> MessageSource {
    let sender = jid(sender);
    MessageSource {
        chat: sender.to_non_ad(),
        sender,
        ..Default::default()
    }
}

fn only_message(events: Vec<ConnectorEvent>) -> ObservedMessage {
    match <[ConnectorEvent; 1]>::try_from(events) {
        Ok([ConnectorEvent::Message(message)]) => message,
        Ok(other) => panic!("not a message: {other:?}"),
        Err(events) => panic!("not one event: {events:?}"),
    }
}

fn disconnect_reason(events: Vec<ConnectorEvent>) -> (DisconnectReason, String) {
    match <[ConnectorEvent; 1]>::try_from(events) {
        Ok([ConnectorEvent::Disconnected { reason, detail }]) => (reason, detail),
        other => panic!("not one disconnection: {other:?}"),
    }
}

#[test]
fn each_qr_code_is_a_link_code_valid_as_long_as_the_client_says() {
    let mut translator = translator();
    for (code, secs) in [
        ("2@ref1,noise,identity,adv", 60),
        ("2@ref2,noise,identity,adv", 20),
    ] {
        let event = Event::PairingQrCode(
            PairingQrCode::builder()
                .code(code.to_owned())
                .timeout(Duration::from_secs(secs))
                .build(),
        );
        assert_eq!(
            translator.translate(&event),
            vec![ConnectorEvent::Linking(LinkCode::Qr {
                code: code.into(),
                valid_for: Duration::from_secs(secs),
            })]
        );
    }
}

#[test]
fn a_pairing_code_is_a_link_code_to_type_on_the_phone() {
    let event = Event::PairingCode(
        PairingCode::builder()
            .code("ABCD-EFGH".to_owned())
            .timeout(Duration::from_secs(180))
            .build(),
    );
    assert_eq!(
        translator().translate(&event),
        vec![ConnectorEvent::Linking(LinkCode::Pairing {
            code: "ABCD-EFGH".into(),
            valid_for: Duration::from_secs(180),
        })]
    );
}

#[test]
fn a_scan_connects_once_with_the_linked_number_and_a_loss_then_reconnects() {
    let mut translator = translator();
    let paired = Event::PairSuccess(
        PairSuccess::builder()
            .id(jid("15551234567:12@s.whatsapp.net"))
            .lid(jid("100000012345678:12@lid"))
            .business_name("Ana's Bakery".to_owned())
            .platform("android".to_owned())
            .build(),
    );
    let connected = ConnectorEvent::Connected {
        phone_number: Some("+15551234567".into()),
        display_name: Some("Ana's Bakery".into()),
    };
    assert_eq!(translator.translate(&paired), vec![connected.clone()]);
    // The client reconnects after pairing (stream error 515): still the same link.
    let open = Event::Connected(Connected::builder().build());
    assert_eq!(translator.translate(&open), vec![]);

    let lost = Event::Disconnected(
        Disconnected::builder()
            .reason(TransportReason::ReadError("connection reset".into()))
            .build(),
    );
    let (reason, detail) = disconnect_reason(translator.translate(&lost));
    assert_eq!(reason, DisconnectReason::ConnectionLost);
    assert!(detail.contains("connection reset"), "{detail}");
    assert!(reason.reconnects());

    assert_eq!(translator.translate(&open), vec![connected]);
}

#[test]
fn a_resumed_link_connects_with_the_number_the_client_knows() {
    let mut translator = translator();
    translator.set_own(OwnIdentity::from_jid(
        Some(&jid("447700900123:3@s.whatsapp.net")),
        "Ana",
    ));
    assert_eq!(
        translator.translate(&Event::Connected(Connected::builder().build())),
        vec![ConnectorEvent::Connected {
            phone_number: Some("+447700900123".into()),
            display_name: Some("Ana".into()),
        }]
    );
}

#[test]
fn the_end_of_a_link_says_why_in_terms_a_user_can_act_on() {
    let cases = [
        (
            Event::PairingQrCodesExhausted(
                PairingQrCodesExhausted::builder()
                    .disconnected(true)
                    .build(),
            ),
            DisconnectReason::Refused,
        ),
        (
            Event::ClientOutdated(ClientOutdated::builder().build()),
            DisconnectReason::ClientOutdated,
        ),
        (
            Event::LoggedOut(
                LoggedOut::builder()
                    .on_connect(false)
                    .reason(ConnectFailureReason::LoggedOut)
                    .build(),
            ),
            DisconnectReason::LoggedOut,
        ),
        (
            Event::TemporaryBan(
                TemporaryBan::builder()
                    .code(TempBanReason::SentToTooManyPeople)
                    .expire(chrono::Duration::hours(24))
                    .build(),
            ),
            DisconnectReason::Banned,
        ),
        (
            Event::ConnectFailure(
                ConnectFailure::builder()
                    .reason(ConnectFailureReason::ServiceUnavailable)
                    .build(),
            ),
            DisconnectReason::ConnectionLost,
        ),
        (
            Event::ConnectFailure(
                ConnectFailure::builder()
                    .reason(ConnectFailureReason::CatInvalid)
                    .build(),
            ),
            DisconnectReason::Refused,
        ),
    ];
    for (event, expected) in cases {
        let (reason, detail) = disconnect_reason(translator().translate(&event));
        assert_eq!(reason, expected, "{event:?}: {detail}");
        assert!(!detail.is_empty());
    }
}

#[test]
fn a_locked_account_is_banned_with_whatsapps_own_words() {
    let event = Event::LoggedOut(
        LoggedOut::builder()
            .on_connect(true)
            .reason(ConnectFailureReason::AccountLocked)
            .logout_message(
                LogoutMessage::builder()
                    .header("This account can no longer use WhatsApp".to_owned())
                    .build(),
            )
            .build(),
    );
    let (reason, detail) = disconnect_reason(translator().translate(&event));
    assert_eq!(reason, DisconnectReason::Banned);
    assert!(
        detail.contains("can no longer use WhatsApp"),
        "the detail keeps what WhatsApp said: {detail}"
    );
    assert!(!reason.reconnects());
}

#[test]
fn a_message_from_a_phone_number_names_the_sender_by_number_and_push_name() {
    let event = message(
        from("15557654321:2@s.whatsapp.net"),
        "3EB0A1",
        "Bruno",
        text("hi, are you open today?"),
    );
    assert_eq!(
        only_message(translator().translate(&event)),
        ObservedMessage {
            provider_message_id: "3EB0A1".into(),
            peer: Peer {
                phone: Some("+15557654321".into()),
                lid: None,
            },
            from_me: false,
            sender_name: Some("Bruno".into()),
            body: "hi, are you open today?".into(),
            attachments: vec![],
            sent_at: Utc.with_ymd_and_hms(2026, 12, 2, 10, 0, 0).unwrap(),
        }
    );
}

#[test]
fn a_sender_known_by_lid_carries_the_phone_number_the_server_gave_beside_it() {
    let mut source = from("100000099887766@lid");
    source.sender_alt = Some(jid("15557654321@s.whatsapp.net"));
    let observed = only_message(translator().translate(&message(source, "M2", "Bruno", text("x"))));
    assert_eq!(
        observed.peer,
        Peer {
            phone: Some("+15557654321".into()),
            lid: Some("100000099887766@lid".into()),
        }
    );

    // Without the alternate, the LID alone.
    let observed = only_message(translator().translate(&message(
        from("100000099887766@lid"),
        "M3",
        "",
        text("y"),
    )));
    assert_eq!(
        observed.peer,
        Peer {
            phone: None,
            lid: Some("100000099887766@lid".into()),
        }
    );
    assert_eq!(observed.sender_name, None);
}

#[test]
fn a_message_typed_on_the_phone_is_from_me_and_names_the_recipient() {
    let source = MessageSource {
        chat: jid("15557654321@s.whatsapp.net"),
        sender: jid("15551234567:0@s.whatsapp.net"),
        is_from_me: true,
        recipient_alt: Some(jid("100000099887766@lid")),
        ..Default::default()
    };
    let observed = only_message(translator().translate(&message(
        source,
        "3EB0FF",
        "Ana",
        text("see you at 5"),
    )));
    assert!(observed.from_me);
    assert_eq!(
        observed.peer,
        Peer {
            phone: Some("+15557654321".into()),
            lid: Some("100000099887766@lid".into()),
        }
    );
    assert_eq!(
        observed.sender_name, None,
        "the push name is the account's own"
    );
    assert_eq!(observed.body, "see you at 5");
}

#[test]
fn the_body_is_the_text_or_caption_or_says_what_media_came() {
    let extended = wa::Message {
        extended_text_message: MessageField::some(wa::message::ExtendedTextMessage {
            text: Some("see https://example.com".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let captioned = wa::Message {
        image_message: MessageField::some(wa::message::ImageMessage {
            caption: Some("the cake".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let document = wa::Message {
        document_message: MessageField::some(wa::message::DocumentMessage {
            file_name: Some("menu.pdf".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let voice = wa::Message {
        audio_message: MessageField::some(wa::message::AudioMessage::default()),
        ..Default::default()
    };
    let ephemeral = wa::Message {
        ephemeral_message: MessageField::some(wa::message::FutureProofMessage {
            message: MessageField::some(text("disappearing")),
        }),
        ..Default::default()
    };
    for (body, expected) in [
        (extended, "see https://example.com"),
        (captioned, "the cake"),
        (document, "[document: menu.pdf]"),
        (voice, "[audio]"),
        (ephemeral, "disappearing"),
    ] {
        let event = message(from("15557654321@s.whatsapp.net"), "M", "", body);
        assert_eq!(only_message(translator().translate(&event)).body, expected);
    }
}

#[test]
fn groups_status_broadcasts_channels_and_reactions_are_ignored() {
    let group = MessageSource {
        chat: jid("120363021033254949@g.us"),
        sender: jid("15557654321@s.whatsapp.net"),
        is_group: true,
        ..Default::default()
    };
    let status = MessageSource {
        chat: jid("status@broadcast"),
        sender: jid("15557654321@s.whatsapp.net"),
        ..Default::default()
    };
    let channel = MessageSource {
        chat: jid("120363000000000000@newsletter"),
        sender: jid("120363000000000000@newsletter"),
        ..Default::default()
    };
    for source in [group, status, channel] {
        let event = message(source, "G1", "Bruno", text("hello all"));
        assert_eq!(translator().translate(&event), vec![]);
    }
    let reaction = wa::Message {
        reaction_message: MessageField::some(wa::message::ReactionMessage {
            text: Some("👍".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let event = message(from("15557654321@s.whatsapp.net"), "R1", "Bruno", reaction);
    assert_eq!(translator().translate(&event), vec![]);
}

fn receipt(source: MessageSource, kind: ReceiptType, ids: &[&str]) -> Event {
    Event::Receipt(
        Receipt::builder()
            .source(source)
            .message_ids(ids.iter().map(|id| (*id).to_owned()).collect())
            .timestamp(Utc::now())
            .r#type(kind)
            .offline(false)
            .build(),
    )
}

#[test]
fn the_peers_receipts_report_delivered_and_read_for_each_message() {
    let peer = from("15557654321@s.whatsapp.net");
    let delivered = receipt(peer.clone(), ReceiptType::Delivered, &["A", "B"]);
    assert_eq!(
        translator().translate(&delivered),
        vec![
            ConnectorEvent::Receipt {
                provider_message_id: "A".into(),
                receipt: Progress::Delivered,
            },
            ConnectorEvent::Receipt {
                provider_message_id: "B".into(),
                receipt: Progress::Delivered,
            },
        ]
    );
    for kind in [ReceiptType::Read, ReceiptType::Played] {
        assert_eq!(
            translator().translate(&receipt(peer.clone(), kind, &["A"])),
            vec![ConnectorEvent::Receipt {
                provider_message_id: "A".into(),
                receipt: Progress::Read,
            }]
        );
    }
    // The account's own devices reading, and receipts in groups, are not the peer's.
    assert_eq!(
        translator().translate(&receipt(peer, ReceiptType::ReadSelf, &["A"])),
        vec![]
    );
    let group = MessageSource {
        chat: jid("120363021033254949@g.us"),
        sender: jid("15557654321@s.whatsapp.net"),
        is_group: true,
        ..Default::default()
    };
    assert_eq!(
        translator().translate(&receipt(group, ReceiptType::Read, &["A"])),
        vec![]
    );
}
