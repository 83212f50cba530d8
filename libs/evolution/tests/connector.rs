//! The Evolution engine behind whatsnap's seam, against the fake server: adding an account,
//! sending, finding a lost send, and a session's life — QR code, scan, the server going away,
//! the phone logging out — observed as the session service would.

mod common;

use std::time::Duration;

use common::{account_ref, new_account, secret_key};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use whatsnap_connector::{
    Connector, ConnectorError, ConnectorEvent, DisconnectReason, Ended, LinkCode, LinkMethod,
    Outgoing, Session,
};
use whatsnap_events::Attachment;
use whatsnap_evolution::{EvolutionConfig, EvolutionConnector, EvolutionSettings};
use whatsnap_fakes::FakeEvolution;
use whatsnap_fakes::evolution::SendFault;

/// Where whatsnap's gateway would be: nothing listens there, so these sessions see only what
/// they look at themselves.
const PUBLIC: &str = "http://127.0.0.1:9";

fn connector(fake: &FakeEvolution) -> EvolutionConnector {
    let mut config = EvolutionConfig::new(&fake.base_url(), FakeEvolution::GLOBAL_API_KEY, PUBLIC);
    config.poll_interval = Duration::from_millis(20);
    config.request_timeout = Duration::from_secs(5);
    EvolutionConnector::new(config).unwrap()
}

#[tokio::test]
async fn adding_an_account_creates_its_instance_and_seals_the_token() {
    let fake = FakeEvolution::start().await.unwrap();
    let connector = connector(&fake);
    let id = Uuid::now_v7();

    let settings = connector
        .check(&new_account(id), json!({}), &secret_key())
        .await
        .unwrap();

    let stored = EvolutionSettings::of(&settings).unwrap();
    let instance = fake
        .instance(&stored.instance_name)
        .expect("instance created");
    assert_eq!(instance.state, "close", "linking waits for the session");
    assert_eq!(
        secret_key().open(&stored.instance_token).unwrap().expose(),
        instance.token
    );
    assert!(!settings.to_string().contains(&instance.token));
    let webhook = instance.webhook.unwrap();
    assert_eq!(
        webhook.url,
        format!("{PUBLIC}/webhooks/evolution/LocEvolution0001/{id}")
    );
    assert!(webhook.base64 && !webhook.by_events);
    assert_eq!(connector.platform(), whatsnap_events::AccountKind::Whatsapp);
    assert_eq!(connector.engine(), "evolution");
}

#[tokio::test]
async fn an_existing_instance_is_used_with_its_own_key_and_a_wrong_key_is_refused() {
    let fake = FakeEvolution::start().await.unwrap();
    let connector = connector(&fake);
    let token = fake.add_instance("agency-7");

    let refused = connector
        .check(
            &new_account(Uuid::now_v7()),
            json!({ "instance_name": "agency-7", "api_key": "not-its-key" }),
            &secret_key(),
        )
        .await;
    assert!(
        matches!(refused, Err(ConnectorError::Refused(_))),
        "{refused:?}"
    );

    let settings = connector
        .check(
            &new_account(Uuid::now_v7()),
            json!({ "instance_name": "agency-7", "api_key": token }),
            &secret_key(),
        )
        .await
        .unwrap();
    let stored = EvolutionSettings::of(&settings).unwrap();
    assert_eq!(stored.instance_name, "agency-7");
    assert_eq!(
        secret_key().open(&stored.instance_token).unwrap().expose(),
        token
    );
    // A second account on the same instance would take its webhook from the first: refused
    // unless asked for.
    let second = connector
        .check(
            &new_account(Uuid::now_v7()),
            json!({ "instance_name": "agency-7" }),
            &secret_key(),
        )
        .await;
    assert!(
        matches!(second, Err(ConnectorError::Invalid(_))),
        "{second:?}"
    );
    // The global key reads the token when none is given.
    let settings = connector
        .check(
            &new_account(Uuid::now_v7()),
            json!({ "instance_name": "agency-7", "replace_webhook": true }),
            &secret_key(),
        )
        .await
        .unwrap();
    let stored = EvolutionSettings::of(&settings).unwrap();
    assert_eq!(
        secret_key().open(&stored.instance_token).unwrap().expose(),
        token
    );

    for bad in [
        json!({ "instance": "x" }),
        json!({ "instance_name": "a/b" }),
    ] {
        assert!(matches!(
            connector
                .check(&new_account(Uuid::now_v7()), bad, &secret_key())
                .await,
            Err(ConnectorError::Invalid(_))
        ));
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_when_adding_an_account() {
    let fake = FakeEvolution::start().await.unwrap();
    let connector = connector(&fake);
    fake.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let result = connector
            .check(&new_account(Uuid::now_v7()), json!({}), &secret_key())
            .await;
        match result {
            Err(ConnectorError::Unavailable(_)) => break,
            other if tokio::time::Instant::now() > deadline => panic!("{other:?}"),
            _ => tokio::task::yield_now().await,
        }
    }
}

/// An account whose instance is linked to `+5511999990000`.
async fn linked(
    fake: &FakeEvolution,
    connector: &EvolutionConnector,
) -> whatsnap_connector::AccountRef {
    let id = Uuid::now_v7();
    let settings = connector
        .check(&new_account(id), json!({}), &secret_key())
        .await
        .unwrap();
    let name = EvolutionSettings::of(&settings).unwrap().instance_name;
    connector.client().connect(&name, None).await.unwrap();
    fake.scan(&name, "+5511999990000", "Acme").await.unwrap();
    account_ref(id, settings)
}

fn outgoing(body: &str, attachments: Vec<Attachment>) -> Outgoing {
    Outgoing {
        message_id: Uuid::now_v7(),
        to: "+5511988887777".to_owned(),
        body: body.to_owned(),
        attachments,
        typing: Duration::ZERO,
    }
}

#[tokio::test]
async fn replies_leave_as_text_or_one_media_message_per_attachment() {
    let fake = FakeEvolution::start().await.unwrap();
    let connector = connector(&fake);
    let account = linked(&fake, &connector).await;

    let sent = connector
        .send(&account, &outgoing("We open at 9", vec![]))
        .await
        .unwrap();
    let recorded = fake.sent();
    assert_eq!(recorded[0].id, sent.provider_message_id);
    assert_eq!(recorded[0].body["number"], "5511988887777");
    assert_eq!(recorded[0].text(), Some("We open at 9"));

    let attachments = vec![
        Attachment {
            url: "https://files.example.com/menu.jpg".to_owned(),
            content_type: Some("image/jpeg".to_owned()),
            file_name: None,
        },
        Attachment {
            url: "data:application/pdf;base64,JVBERi0xLjQ=".to_owned(),
            content_type: Some("application/pdf".to_owned()),
            file_name: Some("prices.pdf".to_owned()),
        },
    ];
    let sent = connector
        .send(&account, &outgoing("Menu and prices", attachments))
        .await
        .unwrap();
    let recorded = fake.sent();
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[1].id, sent.provider_message_id);
    assert_eq!(recorded[1].body["mediatype"], "image");
    assert_eq!(
        recorded[1].body["media"],
        "https://files.example.com/menu.jpg"
    );
    assert_eq!(recorded[1].body["caption"], "Menu and prices");
    assert_eq!(recorded[2].body["mediatype"], "document");
    assert_eq!(recorded[2].body["media"], "JVBERi0xLjQ=");
    assert_eq!(recorded[2].body["fileName"], "prices.pdf");
    assert!(recorded[2].body.get("caption").is_none());

    fake.set_not_on_whatsapp("+5511900000000");
    let mut to_nobody = outgoing("hi", vec![]);
    to_nobody.to = "+5511900000000".to_owned();
    let refused = connector.send(&account, &to_nobody).await.unwrap_err();
    assert!(!refused.is_retryable(), "{refused:?}");
}

#[tokio::test]
async fn a_send_whose_answer_was_lost_is_found_and_an_unsent_one_is_not() {
    let fake = FakeEvolution::start().await.unwrap();
    let connector = connector(&fake);
    let account = linked(&fake, &connector).await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    let reply = outgoing("Your table is booked", vec![]);
    let sent = connector.send(&account, &reply).await.unwrap();

    let found = connector.find_sent(&account, &reply, since).await.unwrap();
    assert_eq!(found, Some(sent));
    let never = outgoing("Something never sent", vec![]);
    assert_eq!(
        connector.find_sent(&account, &never, since).await.unwrap(),
        None
    );

    // A photo without a caption is not mistaken for a text, nor a text for a photo.
    let photo = outgoing(
        "",
        vec![Attachment {
            url: "https://files.example.com/menu.jpg".to_owned(),
            content_type: Some("image/jpeg".to_owned()),
            file_name: None,
        }],
    );
    assert_eq!(
        connector.find_sent(&account, &photo, since).await.unwrap(),
        None
    );
    let sent_photo = connector.send(&account, &photo).await.unwrap();
    assert_eq!(
        connector.find_sent(&account, &photo, since).await.unwrap(),
        Some(sent_photo)
    );
    assert_eq!(
        connector
            .find_sent(&account, &outgoing("", vec![]), since)
            .await
            .unwrap(),
        None
    );
}

/// The next event within 10 s.
async fn next(events: &mut mpsc::Receiver<ConnectorEvent>) -> ConnectorEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10 s")
        .expect("the session is running")
}

#[tokio::test]
async fn a_session_shows_each_qr_code_connects_on_scan_and_reports_the_server_gone_and_back() {
    let mut fake = FakeEvolution::start().await.unwrap();
    let connector = connector(&fake);
    let id = Uuid::now_v7();
    let settings = connector
        .check(&new_account(id), json!({}), &secret_key())
        .await
        .unwrap();
    let name = EvolutionSettings::of(&settings).unwrap().instance_name;
    let account = account_ref(id, settings);
    let (tx, mut events) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let session = {
        let connector = connector.clone();
        let stop = stop.clone();
        tokio::spawn(async move { connector.run(&account, LinkMethod::Qr, tx, stop).await })
    };

    let ConnectorEvent::Linking(LinkCode::Qr { code, valid_for }) = next(&mut events).await else {
        panic!("a session starts by showing a QR code");
    };
    assert_eq!(valid_for, Duration::from_secs(45));
    assert_eq!(
        fake.instance(&name).unwrap().qr_code.as_deref(),
        Some(code.as_str())
    );
    // The code rotates; the session follows it without the webhook.
    let rotated = fake.rotate_qr(&name).await.unwrap().unwrap();
    assert_ne!(rotated, code);
    assert_eq!(
        next(&mut events).await,
        ConnectorEvent::Linking(LinkCode::Qr {
            code: rotated,
            valid_for: Duration::from_secs(45),
        })
    );

    fake.scan(&name, "+5511999990000", "Acme Front Desk")
        .await
        .unwrap();
    assert_eq!(
        next(&mut events).await,
        ConnectorEvent::Connected {
            phone_number: Some("+5511999990000".to_owned()),
            display_name: Some("Acme Front Desk".to_owned()),
        }
    );

    fake.stop();
    assert!(matches!(
        next(&mut events).await,
        ConnectorEvent::Disconnected {
            reason: DisconnectReason::EngineUnavailable,
            ..
        }
    ));

    // Back, still linked: the session says so without a new scan.
    fake.restart().await.unwrap();
    assert_eq!(
        next(&mut events).await,
        ConnectorEvent::Connected {
            phone_number: Some("+5511999990000".to_owned()),
            display_name: Some("Acme Front Desk".to_owned()),
        }
    );

    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the session stops when asked")
        .unwrap();
    assert_eq!(ended.reason, DisconnectReason::Stopped);
}

#[tokio::test]
async fn a_session_ends_when_the_phone_logs_the_device_out() {
    let fake = FakeEvolution::start().await.unwrap();
    let connector = connector(&fake);
    let account = linked(&fake, &connector).await;
    let name = EvolutionSettings::of(&account.settings)
        .unwrap()
        .instance_name;
    let (tx, mut events) = mpsc::channel(16);
    let session = {
        let connector = connector.clone();
        let account = account.clone();
        tokio::spawn(async move {
            connector
                .run(&account, LinkMethod::Qr, tx, CancellationToken::new())
                .await
        })
    };
    assert!(matches!(
        next(&mut events).await,
        ConnectorEvent::Connected { .. }
    ));

    fake.disconnect(&name, 401).await.unwrap();
    assert!(matches!(
        next(&mut events).await,
        ConnectorEvent::Disconnected {
            reason: DisconnectReason::LoggedOut,
            ..
        }
    ));
    let Ended { reason, .. } = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the session ends")
        .unwrap();
    assert_eq!(reason, DisconnectReason::LoggedOut);
}

#[tokio::test]
async fn a_session_whose_codes_run_out_ends_refused_and_pairing_codes_are_shown() {
    let fake = FakeEvolution::start().await.unwrap();
    fake.set_qrcode_limit(1);
    let connector = connector(&fake);
    let id = Uuid::now_v7();
    let settings = connector
        .check(&new_account(id), json!({}), &secret_key())
        .await
        .unwrap();
    let name = EvolutionSettings::of(&settings).unwrap().instance_name;
    let account = account_ref(id, settings);
    let (tx, mut events) = mpsc::channel(16);
    let session = {
        let connector = connector.clone();
        let account = account.clone();
        tokio::spawn(async move {
            connector
                .run(
                    &account,
                    LinkMethod::PairingCode {
                        phone_number: "+5511999990000".to_owned(),
                    },
                    tx,
                    CancellationToken::new(),
                )
                .await
        })
    };
    assert!(matches!(
        next(&mut events).await,
        ConnectorEvent::Linking(LinkCode::Pairing { .. })
    ));
    assert_eq!(fake.rotate_qr(&name).await.unwrap(), None);
    assert!(matches!(
        next(&mut events).await,
        ConnectorEvent::Disconnected {
            reason: DisconnectReason::Refused,
            ..
        }
    ));
    let ended = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.reason, DisconnectReason::Refused);
}

#[tokio::test]
async fn logging_out_unlinks_the_device_and_is_idempotent() {
    let fake = FakeEvolution::start().await.unwrap();
    let connector = connector(&fake);
    let account = linked(&fake, &connector).await;
    let name = EvolutionSettings::of(&account.settings)
        .unwrap()
        .instance_name;
    connector.logout(&account).await.unwrap();
    assert_eq!(fake.instance(&name).unwrap().state, "close");
    connector.logout(&account).await.unwrap();
}

#[tokio::test]
async fn webhooks_are_read_with_the_accounts_sealed_token() {
    let fake = FakeEvolution::start().await.unwrap();
    let connector = connector(&fake);
    let account = linked(&fake, &connector).await;
    let (name, token) = connector.webhook_secrets(&account).unwrap();
    let body = json!({
        "event": "connection.update", "instance": name, "apikey": token,
        "data": { "instance": name, "state": "close", "statusReason": 403 },
    });
    let events = connector
        .parse_webhook(
            &account,
            &http::HeaderMap::new(),
            body.to_string().as_bytes(),
        )
        .unwrap();
    assert!(matches!(
        &events[..],
        [ConnectorEvent::Disconnected {
            reason: DisconnectReason::Banned,
            ..
        }]
    ));
    let forged = json!({
        "event": "connection.update", "instance": name, "apikey": "guess",
        "data": { "instance": name, "state": "open" },
    });
    assert!(
        connector
            .parse_webhook(
                &account,
                &http::HeaderMap::new(),
                forged.to_string().as_bytes()
            )
            .is_err()
    );
}

#[tokio::test]
async fn a_send_that_timed_out_is_unknown_and_found_if_it_left() {
    let fake = FakeEvolution::start().await.unwrap();
    let mut config = EvolutionConfig::new(&fake.base_url(), FakeEvolution::GLOBAL_API_KEY, PUBLIC);
    config.request_timeout = Duration::from_millis(300);
    let connector = EvolutionConnector::new(config).unwrap();
    let account = linked(&fake, &connector).await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);

    fake.set_send_fault(Some(SendFault::Hang));
    let lost = outgoing("Sent into the void", vec![]);
    let error = connector.send(&account, &lost).await.unwrap_err();
    assert!(!error.certainly_unsent(), "{error:?}");
    fake.set_send_fault(None);
    assert_eq!(
        connector.find_sent(&account, &lost, since).await.unwrap(),
        None
    );

    fake.set_send_fault(Some(SendFault::AcceptThenHang));
    let taken = outgoing("Taken, answer lost", vec![]);
    let error = connector.send(&account, &taken).await.unwrap_err();
    assert!(!error.certainly_unsent(), "{error:?}");
    fake.set_send_fault(None);
    let found = connector.find_sent(&account, &taken, since).await.unwrap();
    assert_eq!(
        found.map(|s| s.provider_message_id),
        Some(fake.sent()[0].id.clone()),
        "the outbox finds the message instead of sending it twice"
    );
}

#[tokio::test]
async fn a_typing_delay_is_asked_of_evolution_before_each_send() {
    let fake = FakeEvolution::start().await.unwrap();
    let mut config = EvolutionConfig::new(&fake.base_url(), FakeEvolution::GLOBAL_API_KEY, PUBLIC);
    config.typing_delay = Duration::from_millis(1_200);
    let connector = EvolutionConnector::new(config).unwrap();
    let account = linked(&fake, &connector).await;
    connector
        .send(&account, &outgoing("hi", vec![]))
        .await
        .unwrap();
    assert_eq!(fake.sent()[0].body["delay"], 1_200);
}

#[tokio::test]
async fn an_instance_reporting_elsewhere_or_linked_to_another_number_is_not_taken_over() {
    let fake = FakeEvolution::start().await.unwrap();
    let connector = connector(&fake);
    fake.add_instance("agency-n8n");
    connector
        .client()
        .set_webhook(
            "agency-n8n",
            &whatsnap_evolution::WebhookConfig::whatsnap("https://n8n.example.com/hook", None),
        )
        .await
        .unwrap();
    let refused = connector
        .check(
            &new_account(Uuid::now_v7()),
            json!({ "instance_name": "agency-n8n" }),
            &secret_key(),
        )
        .await;
    assert!(
        matches!(&refused, Err(ConnectorError::Invalid(reason)) if reason.contains("https://n8n.example.com/hook")),
        "{refused:?}"
    );
    assert_eq!(
        fake.instance("agency-n8n").unwrap().webhook.unwrap().url,
        "https://n8n.example.com/hook",
        "the other webhook is left alone"
    );
    let id = Uuid::now_v7();
    connector
        .check(
            &new_account(id),
            json!({ "instance_name": "agency-n8n", "replace_webhook": true }),
            &secret_key(),
        )
        .await
        .unwrap();
    assert_eq!(
        fake.instance("agency-n8n").unwrap().webhook.unwrap().url,
        format!("{PUBLIC}/webhooks/evolution/LocEvolution0001/{id}")
    );

    let account = linked(&fake, &connector).await;
    let name = EvolutionSettings::of(&account.settings)
        .unwrap()
        .instance_name;
    let mut other_number = new_account(Uuid::now_v7());
    other_number.phone_number = Some("+5511911112222".to_owned());
    let refused = connector
        .check(
            &other_number,
            json!({ "instance_name": name, "replace_webhook": true }),
            &secret_key(),
        )
        .await;
    assert!(
        matches!(&refused, Err(ConnectorError::Refused(reason)) if reason.contains("+5511999990000")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_link_closed_for_a_moment_while_evolution_reconnects_does_not_end_the_session() {
    let fake = FakeEvolution::start().await.unwrap();
    let connector = connector(&fake);
    let account = linked(&fake, &connector).await;
    let name = EvolutionSettings::of(&account.settings)
        .unwrap()
        .instance_name;
    let (tx, mut events) = mpsc::channel(16);
    let session = {
        let connector = connector.clone();
        let account = account.clone();
        tokio::spawn(async move {
            connector
                .run(&account, LinkMethod::Qr, tx, CancellationToken::new())
                .await
        })
    };
    assert!(matches!(
        next(&mut events).await,
        ConnectorEvent::Connected { .. }
    ));

    fake.blink(&name).unwrap();
    // Wait until the session has seen the blink and looked twice more: a session that took the
    // blink for a close would have ended at the blink.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen_at = None;
    loop {
        let (looks, pending) = fake.state_looks(&name);
        if !pending {
            let at = *seen_at.get_or_insert(looks);
            if looks >= at + 2 {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session stopped looking after the blink"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(events.try_recv().is_err(), "the blink was not reported");
    assert!(!session.is_finished());
    // The next thing the session reports is the real close.
    fake.disconnect(&name, 401).await.unwrap();
    assert!(matches!(
        next(&mut events).await,
        ConnectorEvent::Disconnected {
            reason: DisconnectReason::LoggedOut,
            ..
        }
    ));
    let ended = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.reason, DisconnectReason::LoggedOut);
}

#[tokio::test]
async fn an_instance_deleted_on_the_server_is_made_again_with_the_accounts_token() {
    let fake = FakeEvolution::start().await.unwrap();
    let connector = connector(&fake);
    let id = Uuid::now_v7();
    let settings = connector
        .check(&new_account(id), json!({}), &secret_key())
        .await
        .unwrap();
    let account = account_ref(id, settings);
    let (name, token) = connector.webhook_secrets(&account).unwrap();
    connector.client().delete_instance(&name).await.unwrap();

    let (tx, mut events) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let session = {
        let connector = connector.clone();
        let stop = stop.clone();
        tokio::spawn(async move { connector.run(&account, LinkMethod::Qr, tx, stop).await })
    };
    assert!(matches!(
        next(&mut events).await,
        ConnectorEvent::Linking(LinkCode::Qr { .. })
    ));
    let remade = fake.instance(&name).expect("the instance is made again");
    assert_eq!(remade.token, token, "webhooks keep proving themselves");
    stop.cancel();
    session.await.unwrap();
}
