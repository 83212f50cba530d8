//! Evolution's webhooks, checked and read: bodies shaped field for field as Evolution 2.3.6
//! posts them (`webhook.controller.ts`, `whatsapp.baileys.service.ts`), then the same through
//! the fake server.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::Receiver;
use http::HeaderMap;
use serde_json::{Value, json};
use whatsnap_connector::{ConnectorEvent, DisconnectReason, LinkCode, Peer, Receipt};
use whatsnap_evolution::jwt::JwtError;
use whatsnap_evolution::webhook::parse_webhook_at;
use whatsnap_evolution::{
    CreateInstance, EvolutionClient, WebhookAuth, WebhookConfig, WebhookError, parse_webhook,
};
use whatsnap_fakes::evolution::{sign_jwt, sign_jwt_claims};
use whatsnap_fakes::{FakeEvolution, FakeEvolutionIncoming};

const INSTANCE: &str = "acme-1";
const TOKEN: &str = "7B6D1C64-0A51-4C1E-9D0B-3E9A4C5F2B11";
const JWT_KEY: &str = "whatsnap-jwt-key";

fn auth() -> WebhookAuth<'static> {
    WebhookAuth {
        instance_name: INSTANCE,
        api_key: TOKEN,
        jwt_key: Some(JWT_KEY),
    }
}

/// A webhook body as `WebhookController.emit` builds it.
fn body(event: &str, data: Value) -> Value {
    json!({
        "event": event,
        "instance": INSTANCE,
        "data": data,
        "destination": "https://whatsnap.example.com/webhooks/evolution/LocEvolution0001/0192",
        "date_time": "2026-12-02T12:00:00.000Z",
        "sender": "5511999990000@s.whatsapp.net",
        "server_url": "https://evolution.example.com",
        "apikey": TOKEN,
    })
}

fn read(body: &Value) -> Vec<ConnectorEvent> {
    parse_webhook(&HeaderMap::new(), body.to_string().as_bytes(), &auth()).unwrap()
}

fn one(body: &Value) -> ConnectorEvent {
    let mut events = read(body);
    assert_eq!(events.len(), 1, "{events:?}");
    events.remove(0)
}

fn message(event: ConnectorEvent) -> whatsnap_connector::ObservedMessage {
    match event {
        ConnectorEvent::Message(message) => message,
        other => panic!("not a message: {other:?}"),
    }
}

fn upsert(key: Value, message: Value, message_type: &str, push_name: &str) -> Value {
    body(
        "messages.upsert",
        json!({
            "key": key,
            "pushName": push_name,
            "status": "DELIVERY_ACK",
            "message": message,
            "contextInfo": null,
            "messageType": message_type,
            "messageTimestamp": 1_764_676_800,
            "instanceId": "3f1c0a5e-7d2b-4a69-9a0e-0f6c2b1d8e77",
            "source": "android",
        }),
    )
}

#[test]
fn each_qr_code_is_a_linking_code_valid_45_seconds() {
    let qr = body(
        "qrcode.updated",
        json!({ "qrcode": {
            "instance": INSTANCE, "pairingCode": null,
            "code": "2@Xk3v,bm9pc2U=,aWRlbnRpdHk=,YWR2", "base64": "data:image/png;base64,iVBORw0KGgo=",
        }}),
    );
    assert_eq!(
        one(&qr),
        ConnectorEvent::Linking(LinkCode::Qr {
            code: "2@Xk3v,bm9pc2U=,aWRlbnRpdHk=,YWR2".to_owned(),
            valid_for: Duration::from_secs(45),
        })
    );
    let pairing = body(
        "qrcode.updated",
        json!({ "qrcode": {
            "instance": INSTANCE, "pairingCode": "WZYEH1YY",
            "code": "2@Xk3v,bm9pc2U=,aWRlbnRpdHk=,YWR2", "base64": "data:image/png;base64,iVBORw0KGgo=",
        }}),
    );
    assert!(
        matches!(one(&pairing), ConnectorEvent::Linking(LinkCode::Pairing { code, .. }) if code == "WZYEH1YY")
    );
}

#[test]
fn when_the_codes_run_out_the_refused_connection_says_so() {
    let limit = body(
        "qrcode.updated",
        json!({ "message": "QR code limit reached, please login again", "statusCode": 500 }),
    );
    assert!(read(&limit).is_empty());
    let refused = body(
        "connection.update",
        json!({ "instance": INSTANCE, "state": "refused", "statusReason": 428 }),
    );
    assert!(matches!(
        one(&refused),
        ConnectorEvent::Disconnected {
            reason: DisconnectReason::Refused,
            ..
        }
    ));
}

#[test]
fn connection_changes_read_as_states_with_reasons() {
    let open = body(
        "connection.update",
        json!({
            "instance": INSTANCE, "wuid": "5511999990000@s.whatsapp.net",
            "profileName": "Acme Front Desk", "profilePictureUrl": "https://pps.whatsapp.net/v/t61/x.jpg",
            "state": "open", "statusReason": 200,
        }),
    );
    assert_eq!(
        one(&open),
        ConnectorEvent::Connected {
            phone_number: Some("+5511999990000".to_owned()),
            display_name: Some("Acme Front Desk".to_owned()),
        }
    );
    for (status, reason) in [
        (401, DisconnectReason::LoggedOut),
        (403, DisconnectReason::Banned),
        (428, DisconnectReason::Refused),
        (408, DisconnectReason::ConnectionLost),
        (440, DisconnectReason::ConnectionLost),
    ] {
        let close = body(
            "connection.update",
            json!({ "instance": INSTANCE, "state": "close", "statusReason": status }),
        );
        match one(&close) {
            ConnectorEvent::Disconnected {
                reason: got,
                detail,
            } => {
                assert_eq!(got, reason, "status {status}");
                assert!(detail.contains(&status.to_string()), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }
    let connecting = body(
        "connection.update",
        json!({ "instance": INSTANCE, "state": "connecting", "statusReason": 200 }),
    );
    assert!(read(&connecting).is_empty());
    assert!(matches!(
        one(&body("logout.instance", Value::Null)),
        ConnectorEvent::Disconnected {
            reason: DisconnectReason::LoggedOut,
            ..
        }
    ));
}

#[test]
fn a_text_from_a_phone_number_is_a_message_with_the_push_name() {
    let text = upsert(
        json!({
            "remoteJid": "5511988887777@s.whatsapp.net", "remoteJidAlt": "214365870921@lid",
            "fromMe": false, "id": "3EB0C767D26A8B4F1E2A", "addressingMode": "pn",
        }),
        json!({ "conversation": "Hi, is the shop open today?", "messageContextInfo": {} }),
        "conversation",
        "Maria Silva",
    );
    let message = message(one(&text));
    assert_eq!(message.provider_message_id, "3EB0C767D26A8B4F1E2A");
    assert_eq!(
        message.peer,
        Peer {
            phone: Some("+5511988887777".to_owned()),
            lid: Some("214365870921@lid".to_owned()),
        }
    );
    assert!(!message.from_me);
    assert_eq!(message.sender_name.as_deref(), Some("Maria Silva"));
    assert_eq!(message.body, "Hi, is the shop open today?");
    assert!(message.attachments.is_empty());
    assert_eq!(
        message.sent_at,
        DateTime::<Utc>::from_timestamp(1_764_676_800, 0).unwrap()
    );

    let extended = upsert(
        json!({ "remoteJid": "5511988887777@s.whatsapp.net", "fromMe": false, "id": "3EB0AA" }),
        json!({ "extendedTextMessage": { "text": "see https://example.com" } }),
        "extendedTextMessage",
        "Maria Silva",
    );
    assert_eq!(received(&extended).body, "see https://example.com");
}

#[test]
fn a_sender_known_by_lid_carries_the_phone_number_beside_it() {
    // Baileys 7: the other form in remoteJidAlt, addressingMode names remoteJid's.
    let lid = upsert(
        json!({
            "remoteJid": "214365870921@lid", "remoteJidAlt": "5511988887777@s.whatsapp.net",
            "fromMe": false, "id": "3EB0LID7", "addressingMode": "lid",
        }),
        json!({ "conversation": "hello from a lid" }),
        "conversation",
        "Maria Silva",
    );
    assert_eq!(
        message(one(&lid)).peer,
        Peer {
            phone: Some("+5511988887777".to_owned()),
            lid: Some("214365870921@lid".to_owned()),
        }
    );
    // Baileys 6: senderPn.
    let old = upsert(
        json!({
            "remoteJid": "214365870921@lid", "senderPn": "5511988887777@s.whatsapp.net",
            "fromMe": false, "id": "3EB0LID6",
        }),
        json!({ "conversation": "hello" }),
        "conversation",
        "Maria Silva",
    );
    assert_eq!(
        message(one(&old)).peer.phone.as_deref(),
        Some("+5511988887777")
    );
    // A LID alone is still a peer.
    let alone = upsert(
        json!({ "remoteJid": "214365870921@lid", "fromMe": false, "id": "3EB0LID0", "addressingMode": "lid" }),
        json!({ "conversation": "hello" }),
        "conversation",
        "Maria Silva",
    );
    assert_eq!(
        message(one(&alone)).peer,
        Peer {
            phone: None,
            lid: Some("214365870921@lid".to_owned()),
        }
    );
}

#[test]
fn media_arrives_as_data_urls_with_its_type_name_and_caption() {
    let image = upsert(
        json!({ "remoteJid": "5511988887777@s.whatsapp.net", "fromMe": false, "id": "3EB0IMG" }),
        json!({
            "imageMessage": {
                "url": "https://mmg.whatsapp.net/o1/v/t62.7118-24/f1/m233/x.enc",
                "mimetype": "image/jpeg", "caption": "the broken part",
                "fileSha256": "n5Yz", "fileLength": "48213", "height": 1280, "width": 960,
                "mediaKey": "a2V5", "directPath": "/o1/v/t62.7118-24/x.enc",
            },
            "base64": "/9j/4AAQSkZJRg==",
        }),
        "imageMessage",
        "Maria Silva",
    );
    let message = message(one(&image));
    assert_eq!(message.body, "the broken part");
    assert_eq!(message.attachments.len(), 1);
    assert_eq!(
        message.attachments[0].url,
        "data:image/jpeg;base64,/9j/4AAQSkZJRg=="
    );
    assert_eq!(
        message.attachments[0].content_type.as_deref(),
        Some("image/jpeg")
    );

    let document = upsert(
        json!({ "remoteJid": "5511988887777@s.whatsapp.net", "fromMe": false, "id": "3EB0DOC" }),
        json!({
            "documentMessage": {
                "url": "https://mmg.whatsapp.net/x.enc", "mimetype": "application/pdf",
                "title": "invoice", "fileName": "invoice-0042.pdf", "fileLength": "1024",
            },
            "base64": "JVBERi0xLjQ=",
        }),
        "documentMessage",
        "Maria Silva",
    );
    let document = received(&document);
    assert_eq!(document.body, "");
    assert_eq!(
        document.attachments[0].file_name.as_deref(),
        Some("invoice-0042.pdf")
    );

    let voice = upsert(
        json!({ "remoteJid": "5511988887777@s.whatsapp.net", "fromMe": false, "id": "3EB0PTT" }),
        json!({
            "audioMessage": { "url": "https://mmg.whatsapp.net/a.enc", "mimetype": "audio/ogg; codecs=opus", "seconds": 4, "ptt": true },
            "base64": "T2dnUw==",
        }),
        "audioMessage",
        "Maria Silva",
    );
    let voice = received(&voice);
    assert_eq!(voice.attachments[0].url, "data:audio/ogg;base64,T2dnUw==");
    assert_eq!(
        voice.attachments[0].content_type.as_deref(),
        Some("audio/ogg; codecs=opus")
    );

    // Media kept in S3 by Evolution arrives as its URL.
    let video = upsert(
        json!({ "remoteJid": "5511988887777@s.whatsapp.net", "fromMe": false, "id": "3EB0VID" }),
        json!({
            "videoMessage": { "mimetype": "video/mp4", "caption": "look" },
            "mediaUrl": "https://s3.example.com/evolution/video.mp4",
        }),
        "videoMessage",
        "Maria Silva",
    );
    assert_eq!(
        received(&video).attachments[0].url,
        "https://s3.example.com/evolution/video.mp4"
    );
}

fn received(body: &Value) -> whatsnap_connector::ObservedMessage {
    message(one(body))
}

#[test]
fn a_message_typed_on_the_phone_is_from_me_without_a_sender_name() {
    let typed = upsert(
        json!({ "remoteJid": "5511988887777@s.whatsapp.net", "fromMe": true, "id": "3EB0ME", "addressingMode": "pn" }),
        json!({ "conversation": "On my way" }),
        "conversation",
        "Acme Front Desk",
    );
    let message = message(one(&typed));
    assert!(message.from_me);
    assert_eq!(message.sender_name, None);
    assert_eq!(message.peer.phone.as_deref(), Some("+5511988887777"));
}

#[test]
fn groups_status_broadcasts_and_contentless_messages_are_ignored() {
    let group = upsert(
        json!({ "remoteJid": "120363041234567890@g.us", "participant": "5511988887777@s.whatsapp.net", "fromMe": false, "id": "3EB0GRP" }),
        json!({ "conversation": "hi all" }),
        "conversation",
        "Maria Silva",
    );
    assert!(read(&group).is_empty());
    let status = upsert(
        json!({ "remoteJid": "status@broadcast", "participant": "5511988887777@s.whatsapp.net", "fromMe": false, "id": "3EB0STS" }),
        json!({ "imageMessage": { "mimetype": "image/jpeg" }, "base64": "AAAA" }),
        "imageMessage",
        "Maria Silva",
    );
    assert!(read(&status).is_empty());
    let reaction = upsert(
        json!({ "remoteJid": "5511988887777@s.whatsapp.net", "fromMe": false, "id": "3EB0RCT" }),
        json!({ "reactionMessage": { "key": { "id": "3EB0ME" }, "text": "👍" } }),
        "reactionMessage",
        "Maria Silva",
    );
    assert!(read(&reaction).is_empty());
    let update = body(
        "messages.update",
        json!({ "keyId": "3EB0GRP2", "remoteJid": "120363041234567890@g.us", "fromMe": true, "status": "READ" }),
    );
    assert!(read(&update).is_empty());
}

#[test]
fn receipts_of_sent_messages_follow_their_status() {
    for (status, receipt) in [
        ("SERVER_ACK", Some(Receipt::Sent)),
        ("DELIVERY_ACK", Some(Receipt::Delivered)),
        ("READ", Some(Receipt::Read)),
        ("PLAYED", Some(Receipt::Read)),
        ("PENDING", None),
        ("DELETED", None),
    ] {
        let update = body(
            "messages.update",
            json!({
                "keyId": "3EB0SENT", "remoteJid": "5511988887777@s.whatsapp.net", "fromMe": true,
                "participant": null, "status": status,
                "instanceId": "3f1c0a5e-7d2b-4a69-9a0e-0f6c2b1d8e77", "messageId": "cmf0x1",
            }),
        );
        let expected: Vec<ConnectorEvent> = receipt
            .into_iter()
            .map(|receipt| ConnectorEvent::Receipt {
                provider_message_id: "3EB0SENT".to_owned(),
                receipt,
            })
            .collect();
        assert_eq!(read(&update), expected, "{status}");
    }
    let error = body(
        "messages.update",
        json!({ "keyId": "3EB0SENT", "remoteJid": "5511988887777@s.whatsapp.net", "fromMe": true, "status": "ERROR" }),
    );
    assert!(matches!(
        one(&error),
        ConnectorEvent::Receipt {
            receipt: Receipt::Failed { .. },
            ..
        }
    ));
    // The contact's own messages being read on the phone are not receipts.
    let theirs = body(
        "messages.update",
        json!({ "keyId": "3EB0C767", "remoteJid": "5511988887777@s.whatsapp.net", "fromMe": false, "status": "READ" }),
    );
    assert!(read(&theirs).is_empty());
}

#[test]
fn unknown_events_are_nothing_and_malformed_bodies_are_errors() {
    assert!(read(&body("contacts.update", json!([{ "remoteJid": "x" }]))).is_empty());
    assert!(read(&body("send.message", json!({ "key": { "id": "3EB0" } }))).is_empty());
    let malformed = parse_webhook(&HeaderMap::new(), b"{not json", &auth());
    assert!(matches!(malformed, Err(WebhookError::Malformed(_))));
    assert_eq!(malformed.unwrap_err().http_status(), 400);
    let keyless = body(
        "messages.upsert",
        json!({ "message": { "conversation": "hi" } }),
    );
    assert!(matches!(
        parse_webhook(&HeaderMap::new(), keyless.to_string().as_bytes(), &auth()),
        Err(WebhookError::Malformed(_))
    ));
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    headers
}

#[test]
fn webhooks_from_elsewhere_are_refused() {
    let now = Utc::now();
    let open = json!({ "instance": INSTANCE, "state": "open", "statusReason": 200, "wuid": "5511999990000@s.whatsapp.net" });
    let check = |headers: &HeaderMap, body: &Value| {
        parse_webhook_at(headers, body.to_string().as_bytes(), &auth(), now)
    };

    let mut wrong_key = body("connection.update", open.clone());
    wrong_key["apikey"] = json!("B0GUS-KEY");
    assert_eq!(
        check(&HeaderMap::new(), &wrong_key),
        Err(WebhookError::WrongApiKey)
    );

    let mut no_key = body("connection.update", open.clone());
    no_key["apikey"] = Value::Null;
    assert_eq!(
        check(&HeaderMap::new(), &no_key),
        Err(WebhookError::Unauthenticated)
    );
    assert_eq!(WebhookError::Unauthenticated.http_status(), 401);

    let mut elsewhere = body("connection.update", open.clone());
    elsewhere["instance"] = json!("someone-else");
    let refused = check(&HeaderMap::new(), &elsewhere).unwrap_err();
    assert!(matches!(refused, WebhookError::WrongInstance { .. }));
    assert_eq!(refused.http_status(), 404);

    // A JWT from Evolution's jwt_key stands in for the apikey…
    let signed = bearer(&sign_jwt(JWT_KEY, now.timestamp()));
    assert_eq!(check(&signed, &no_key).unwrap().len(), 1);
    // …but an expired or forged one is refused, even beside the right apikey.
    let expired = bearer(&sign_jwt(JWT_KEY, now.timestamp() - 3_600));
    assert!(matches!(
        check(&expired, &body("connection.update", open.clone())),
        Err(WebhookError::BadToken(JwtError::Expired(_)))
    ));
    let forged = bearer(&sign_jwt("guessed-key", now.timestamp()));
    assert_eq!(
        check(&forged, &body("connection.update", open.clone())),
        Err(WebhookError::BadToken(JwtError::BadSignature))
    );
    let login = bearer(&sign_jwt_claims(
        JWT_KEY,
        &json!({ "iat": now.timestamp(), "exp": now.timestamp() + 600, "app": "evolution", "action": "login" }),
    ));
    assert!(matches!(
        check(&login, &no_key),
        Err(WebhookError::BadToken(JwtError::WrongPurpose { .. }))
    ));
}

/// The fake posts what Evolution posts; whatsnap reads it, including a redelivery.
#[tokio::test]
async fn what_the_fake_posts_reads_back_as_the_phone_did_it() {
    let fake = FakeEvolution::start().await.unwrap();
    fake.set_expose_apikey(false);
    let mut receiver = Receiver::start().await;
    let client = EvolutionClient::new(&fake.base_url(), FakeEvolution::GLOBAL_API_KEY).unwrap();
    let created = client
        .create_instance(&CreateInstance {
            instance_name: INSTANCE.to_owned(),
            qrcode: true,
            number: None,
            token: None,
            webhook: Some(WebhookConfig::whatsnap(
                format!("{}/webhooks/evolution/loc/acct", receiver.base_url),
                Some(JWT_KEY),
            )),
        })
        .await
        .unwrap();
    let auth = WebhookAuth {
        instance_name: INSTANCE,
        api_key: &created.hash,
        jwt_key: Some(JWT_KEY),
    };
    let read = |posted: &common::Posted| parse_webhook(&posted.headers, &posted.body, &auth);

    let first = receiver.next_event("qrcode.updated").await;
    assert_eq!(
        first.json()["apikey"],
        Value::Null,
        "tokens are not exposed"
    );
    assert!(matches!(
        &read(&first).unwrap()[..],
        [ConnectorEvent::Linking(LinkCode::Qr { .. })]
    ));
    let rotated = fake.rotate_qr(INSTANCE).await.unwrap().unwrap();
    let second = read(&receiver.next_event("qrcode.updated").await).unwrap();
    assert!(
        matches!(&second[..], [ConnectorEvent::Linking(LinkCode::Qr { code, .. })] if *code == rotated)
    );

    fake.scan(INSTANCE, "+5511999990000", "Acme").await.unwrap();
    let connected = read(&receiver.next_event("connection.update").await).unwrap();
    // The `connecting` update at the start of linking reads as nothing; skip to `open`.
    let connected = if connected.is_empty() {
        read(&receiver.next_event("connection.update").await).unwrap()
    } else {
        connected
    };
    assert_eq!(
        connected,
        vec![ConnectorEvent::Connected {
            phone_number: Some("+5511999990000".to_owned()),
            display_name: Some("Acme".to_owned()),
        }]
    );

    let (id, status) = fake
        .receive(
            INSTANCE,
            FakeEvolutionIncoming::text("+5511988887777", "hello")
                .from_lid("214365870921", Some("+5511988887777"))
                .push_name("Maria"),
        )
        .await
        .unwrap();
    assert_eq!(status, Some(200));
    let received = read(&receiver.next_event("messages.upsert").await).unwrap();
    fake.redeliver_last(INSTANCE).await.unwrap();
    let again = read(&receiver.next_event("messages.upsert").await).unwrap();
    assert_eq!(received, again, "a redelivery reads the same, id and all");
    let ConnectorEvent::Message(message) = &received[0] else {
        panic!("{received:?}");
    };
    assert_eq!(message.provider_message_id, id);
    assert_eq!(message.peer.lid.as_deref(), Some("214365870921@lid"));
    assert_eq!(message.peer.phone.as_deref(), Some("+5511988887777"));
    assert_eq!(message.sender_name.as_deref(), Some("Maria"));

    fake.receive(
        INSTANCE,
        FakeEvolutionIncoming::text("+5511988887777", "a photo").media(
            "image",
            "image/jpeg",
            b"\xff\xd8\xff\xe0",
            None,
        ),
    )
    .await
    .unwrap();
    let photo = read(&receiver.next_event("messages.upsert").await).unwrap();
    let ConnectorEvent::Message(photo) = &photo[0] else {
        panic!("{photo:?}");
    };
    assert_eq!(photo.attachments[0].url, "data:image/jpeg;base64,/9j/4A==");

    fake.receive(
        INSTANCE,
        FakeEvolutionIncoming::text("+5511988887777", "in a group")
            .in_chat("120363041234567890@g.us"),
    )
    .await
    .unwrap();
    assert!(
        read(&receiver.next_event("messages.upsert").await)
            .unwrap()
            .is_empty()
    );

    let sent = client
        .send_text(
            INSTANCE,
            &whatsnap_evolution::SendText {
                number: "5511988887777".to_owned(),
                text: "we are open".to_owned(),
                delay: 0,
                link_preview: false,
            },
        )
        .await
        .unwrap();
    fake.mark_delivered(&sent.key.id).await.unwrap();
    fake.mark_read(&sent.key.id).await.unwrap();
    let delivered = read(&receiver.next_event("messages.update").await).unwrap();
    let read_receipt = read(&receiver.next_event("messages.update").await).unwrap();
    assert_eq!(
        [delivered, read_receipt].concat(),
        vec![
            ConnectorEvent::Receipt {
                provider_message_id: sent.key.id.clone(),
                receipt: Receipt::Delivered
            },
            ConnectorEvent::Receipt {
                provider_message_id: sent.key.id.clone(),
                receipt: Receipt::Read
            },
        ]
    );

    let (typed, _) = fake
        .type_on_phone(INSTANCE, "+5511988887777", "typed on the phone")
        .await
        .unwrap();
    let typed_events = read(&receiver.next_event("messages.upsert").await).unwrap();
    assert!(
        matches!(&typed_events[..], [ConnectorEvent::Message(m)] if m.from_me && m.provider_message_id == typed)
    );

    fake.disconnect(INSTANCE, 401).await.unwrap();
    let logged_out = read(&receiver.next_event("logout.instance").await).unwrap();
    assert!(matches!(
        &logged_out[..],
        [ConnectorEvent::Disconnected {
            reason: DisconnectReason::LoggedOut,
            ..
        }]
    ));
}

#[tokio::test]
async fn after_the_qr_code_limit_the_link_is_refused() {
    let fake = FakeEvolution::start().await.unwrap();
    fake.set_qrcode_limit(2);
    let mut receiver = Receiver::start().await;
    let token = fake.add_instance(INSTANCE);
    let client = EvolutionClient::new(&fake.base_url(), &token).unwrap();
    client
        .set_webhook(
            INSTANCE,
            &WebhookConfig::whatsnap(format!("{}/hook", receiver.base_url), None),
        )
        .await
        .unwrap();
    client.connect(INSTANCE, None).await.unwrap();
    assert!(fake.rotate_qr(INSTANCE).await.unwrap().is_some());
    assert_eq!(fake.rotate_qr(INSTANCE).await.unwrap(), None);
    let auth = WebhookAuth {
        instance_name: INSTANCE,
        api_key: &token,
        jwt_key: None,
    };
    let mut events = Vec::new();
    loop {
        let posted = receiver.next_event("connection.update").await;
        let read = parse_webhook(&posted.headers, &posted.body, &auth).unwrap();
        if !read.is_empty() {
            events.extend(read);
            break;
        }
    }
    assert!(matches!(
        &events[..],
        [ConnectorEvent::Disconnected {
            reason: DisconnectReason::Refused,
            ..
        }]
    ));
    assert_eq!(fake.instance(INSTANCE).unwrap().state, "close");
}
