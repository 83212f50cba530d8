//! The REST client against the fake Evolution server: what works, and what Evolution refuses,
//! read as whatsnap's errors.

mod common;

use common::Receiver;
use whatsnap_evolution::{
    ConnectAnswer, CreateInstance, EvolutionClient, EvolutionError, LinkState, MediaType,
    SendMedia, SendText, WebhookConfig,
};
use whatsnap_fakes::FakeEvolution;

fn client(fake: &FakeEvolution) -> EvolutionClient {
    EvolutionClient::new(&fake.base_url(), FakeEvolution::GLOBAL_API_KEY).unwrap()
}

fn create(name: &str, webhook_url: &str) -> CreateInstance {
    CreateInstance {
        instance_name: name.to_owned(),
        qrcode: false,
        number: None,
        token: None,
        webhook: Some(WebhookConfig::whatsnap(webhook_url, None)),
    }
}

fn text(to: &str, text: &str) -> SendText {
    SendText {
        number: to.to_owned(),
        text: text.to_owned(),
        delay: 0,
        link_preview: false,
    }
}

#[tokio::test]
async fn an_instance_is_created_linked_by_qr_code_and_reports_to_its_webhook() {
    let fake = FakeEvolution::start().await.unwrap();
    let mut receiver = Receiver::start().await;
    let client = client(&fake);
    let url = format!("{}/webhooks/evolution/loc/acct", receiver.base_url);

    let created = client
        .create_instance(&create("acme-1", &url))
        .await
        .unwrap();
    assert_eq!(created.instance.instance_name, "acme-1");
    assert_eq!(fake.instance("acme-1").unwrap().token, created.hash);
    assert_eq!(
        client.connection_state("acme-1").await.unwrap(),
        LinkState::Close
    );

    let ConnectAnswer::Linking(qr) = client.connect("acme-1", None).await.unwrap() else {
        panic!("a closed instance answers a QR code");
    };
    assert_eq!(qr.count, Some(1));
    assert!(qr.code.as_deref().is_some_and(|c| !c.is_empty()));
    assert!(qr.base64.unwrap().starts_with("data:image/png;base64,"));
    assert_eq!(
        client.connection_state("acme-1").await.unwrap(),
        LinkState::Connecting
    );
    let posted = receiver.next_event("qrcode.updated").await;
    assert_eq!(posted.path, "/webhooks/evolution/loc/acct");
    assert_eq!(posted.json()["data"]["qrcode"]["code"], qr.code.unwrap());
    assert_eq!(posted.json()["apikey"], created.hash);

    fake.scan("acme-1", "+5511999990000", "Acme Front Desk")
        .await
        .unwrap();
    assert_eq!(
        client.connect("acme-1", None).await.unwrap(),
        ConnectAnswer::Open
    );
    let listed = client.find_instance("acme-1").await.unwrap().unwrap();
    assert_eq!(
        listed.owner_jid.as_deref(),
        Some("5511999990000@s.whatsapp.net")
    );
    assert_eq!(listed.profile_name.as_deref(), Some("Acme Front Desk"));
    let webhook = client.find_webhook("acme-1").await.unwrap().unwrap();
    assert_eq!(webhook.url, url);
    assert_eq!(webhook.webhook_base64, Some(true));
    assert_eq!(
        webhook.events.unwrap(),
        whatsnap_evolution::client::WEBHOOK_EVENTS
    );
}

#[tokio::test]
async fn a_pairing_code_is_issued_for_a_phone_number() {
    let fake = FakeEvolution::start().await.unwrap();
    let client = client(&fake);
    client
        .create_instance(&create("acme-2", "http://127.0.0.1:9/none"))
        .await
        .unwrap();
    let ConnectAnswer::Linking(qr) = client
        .connect("acme-2", Some("5511999990000"))
        .await
        .unwrap()
    else {
        panic!("a closed instance answers a code");
    };
    assert!(qr.pairing_code.is_some_and(|c| c.len() == 8));
}

#[tokio::test]
async fn evolution_refuses_bad_keys_unknown_instances_and_taken_names() {
    let fake = FakeEvolution::start().await.unwrap();
    let client = client(&fake);
    let token = fake.add_instance("taken");

    // 404 comes before the key is looked at.
    let stranger = client.with_key("not-a-key");
    assert!(matches!(
        stranger.connection_state("nobody").await,
        Err(EvolutionError::NotFound(reason)) if reason.contains("\"nobody\" instance does not exist")
    ));
    assert!(matches!(
        stranger.connection_state("taken").await,
        Err(EvolutionError::Unauthorized(_))
    ));
    // The instance's own token opens it, but cannot create instances.
    let owner = client.with_key(&token);
    assert_eq!(
        owner.connection_state("taken").await.unwrap(),
        LinkState::Close
    );
    assert!(matches!(
        owner.create_instance(&create("new-one", "http://x")).await,
        Err(EvolutionError::Unauthorized(_))
    ));
    assert!(matches!(
        client.create_instance(&create("taken", "http://x")).await,
        Err(EvolutionError::Refused { http_status: 403, reason }) if reason.contains("already in use")
    ));
    assert!(client.find_instance("nobody").await.unwrap().is_none());
    // Logging out an instance that is not connected is refused.
    assert!(matches!(
        client.logout("taken").await,
        Err(EvolutionError::Refused {
            http_status: 400,
            ..
        })
    ));
}

#[tokio::test]
async fn messages_are_sent_once_linked_and_refusals_say_why() {
    let fake = FakeEvolution::start().await.unwrap();
    let client = client(&fake);
    fake.add_instance("acme-3");

    // Not linked yet: nothing leaves, and the outbox knows it.
    client.connect("acme-3", None).await.unwrap();
    let closed = client
        .send_text("acme-3", &text("5511988887777", "hello"))
        .await
        .unwrap_err();
    assert!(
        closed.clone().into_send_error().certainly_unsent(),
        "{closed:?}"
    );
    assert!(closed.into_send_error().is_retryable());

    fake.scan("acme-3", "+5511999990000", "Acme").await.unwrap();
    let sent = client
        .send_text("acme-3", &text("5511988887777", "hello"))
        .await
        .unwrap();
    assert!(sent.key.from_me);
    assert_eq!(
        sent.key.remote_jid.as_deref(),
        Some("5511988887777@s.whatsapp.net")
    );
    let recorded = fake.sent();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].id, sent.key.id);
    assert_eq!(recorded[0].text(), Some("hello"));

    let media = client
        .send_media(
            "acme-3",
            &SendMedia {
                number: "5511988887777".to_owned(),
                mediatype: MediaType::Document,
                media: "https://files.example.com/quote.pdf".to_owned(),
                mimetype: Some("application/pdf".to_owned()),
                file_name: Some("quote.pdf".to_owned()),
                caption: Some("your quote".to_owned()),
                delay: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(fake.sent()[1].id, media.key.id);
    assert_eq!(fake.sent()[1].body["mediatype"], "document");

    fake.set_not_on_whatsapp("+5511900000000");
    let refused = client
        .send_text("acme-3", &text("5511900000000", "hello"))
        .await
        .unwrap_err()
        .into_send_error();
    assert!(!refused.is_retryable());
    assert!(
        refused
            .to_string()
            .contains("5••••••••••00 is not on WhatsApp"),
        "{refused}"
    );

    fake.fail_next_sends(1);
    let failed = client
        .send_text("acme-3", &text("5511988887777", "again"))
        .await
        .unwrap_err()
        .into_send_error();
    assert!(!failed.certainly_unsent(), "a 5xx may come after the send");

    let now = chrono::Utc::now();
    let found = client
        .find_sent_messages(
            "acme-3",
            "5511988887777@s.whatsapp.net",
            now - chrono::Duration::minutes(5),
            now + chrono::Duration::minutes(1),
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    assert!(
        found
            .iter()
            .any(|m| m.key.id == sent.key.id && m.text() == Some("hello"))
    );
    assert!(found.iter().any(|m| m.text() == Some("your quote")));
}

#[tokio::test]
async fn instances_are_logged_out_and_deleted() {
    let fake = FakeEvolution::start().await.unwrap();
    let client = client(&fake);
    fake.add_instance("acme-4");
    client.connect("acme-4", None).await.unwrap();
    fake.scan("acme-4", "+5511999990000", "Acme").await.unwrap();
    client.logout("acme-4").await.unwrap();
    assert_eq!(
        client.connection_state("acme-4").await.unwrap(),
        LinkState::Close
    );
    client.delete_instance("acme-4").await.unwrap();
    assert!(fake.instance("acme-4").is_none());
    assert!(matches!(
        client.connection_state("acme-4").await,
        Err(EvolutionError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_server_that_is_gone_is_not_connected() {
    let fake = FakeEvolution::start().await.unwrap();
    let client = client(&fake);
    fake.add_instance("acme-5");
    fake.stop();
    // The listener closes at once; poll until the client sees it (no fixed sleep).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match client.connection_state("acme-5").await {
            Err(EvolutionError::NotConnected(_)) => break,
            other if tokio::time::Instant::now() > deadline => {
                panic!("the server still answers: {other:?}")
            }
            _ => tokio::task::yield_now().await,
        }
    }
    let error = client
        .send_text("acme-5", &text("5511988887777", "hi"))
        .await
        .unwrap_err()
        .into_send_error();
    assert!(error.certainly_unsent());
}
