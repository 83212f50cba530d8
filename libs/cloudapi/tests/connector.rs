//! The Cloud API connector against the strict fake: an account's settings checked and sealed,
//! Meta's URL check answered only with the account's token, a signed webhook read and a forged
//! one refused, a customer's photo fetched with the token, replies and templates sent.

use std::time::Duration;

use uuid::Uuid;
use whatsnap_cloudapi::{CloudConfig, CloudConnector, CloudSettings, sign};
use whatsnap_connector::{
    AccountRef, Connector, ConnectorError, ConnectorEvent, NewAccount, Outgoing, SendError,
    WebhookError, WebhookRequest,
};
use whatsnap_events::{Attachment, LocationId};
use whatsnap_fakes::cloudapi::{FakeCloudApi, FakeCloudNumber};
use whatsnap_secrets::SecretKey;

fn key() -> SecretKey {
    SecretKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
}

fn connector(meta: &FakeCloudApi) -> CloudConnector {
    CloudConnector::new(
        CloudConfig {
            graph_url: meta.base_url(),
            version: FakeCloudApi::VERSION.into(),
            timeout: Duration::from_secs(5),
        },
        Some("https://whatsnap.example.com".into()),
    )
    .unwrap()
}

fn new_account(phone: Option<&str>) -> NewAccount {
    NewAccount {
        location: LocationId::parse("loc1").unwrap(),
        account_id: Uuid::now_v7(),
        name: "Front desk".into(),
        phone_number: phone.map(str::to_owned),
    }
}

fn given(number: &FakeCloudNumber) -> serde_json::Value {
    serde_json::json!({
        "phone_number_id": number.phone_number_id,
        "access_token": number.access_token,
        "app_secret": number.app_secret,
    })
}

async fn account(meta: &FakeCloudApi, number: &FakeCloudNumber) -> AccountRef {
    let new = new_account(None);
    let settings = connector(meta)
        .check(&new, given(number), &key())
        .await
        .unwrap();
    AccountRef {
        location: new.location,
        account_id: new.account_id,
        name: new.name,
        phone_number: Some("+15550001111".into()),
        settings,
        secret_key: key(),
        last_message_at: None,
    }
}

fn outgoing(body: &str) -> Outgoing {
    Outgoing {
        message_id: Uuid::now_v7(),
        to: "+14155550100".into(),
        body: body.into(),
        attachments: Vec::new(),
        typing: Duration::ZERO,
    }
}

#[tokio::test]
async fn a_number_is_checked_with_meta_and_kept_with_its_secrets_sealed() {
    let meta = FakeCloudApi::start().await.unwrap();
    let number = meta.add_number("+1 555-000-1111", "Front Desk Co");
    let cloud = connector(&meta);
    let stored = cloud
        .check(&new_account(Some("+15550001111")), given(&number), &key())
        .await
        .unwrap();
    let text = stored.to_string();
    assert!(!text.contains(&number.access_token) && !text.contains(&number.app_secret));
    let settings = CloudSettings::of(&stored).unwrap();
    assert_eq!(settings.display_phone_number, "+15550001111");

    let bad_token = serde_json::json!({
        "phone_number_id": number.phone_number_id, "access_token": "EAAGnope", "app_secret": "s",
    });
    assert!(matches!(
        cloud.check(&new_account(None), bad_token, &key()).await,
        Err(ConnectorError::Refused(reason)) if reason.contains("access token")
    ));
    assert!(matches!(
        cloud
            .check(&new_account(Some("+15559999999")), given(&number), &key())
            .await,
        Err(ConnectorError::Refused(reason)) if reason.contains("+15559999999")
    ));
    assert!(matches!(
        cloud
            .check(&new_account(None), serde_json::json!({}), &key())
            .await,
        Err(ConnectorError::Invalid(_))
    ));
    meta.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(
        cloud
            .check(&new_account(None), given(&number), &key())
            .await,
        Err(ConnectorError::Unavailable(_))
    ));
}

#[tokio::test]
async fn meta_checks_the_url_with_the_accounts_verify_token_and_connected_at_once() {
    let meta = FakeCloudApi::start().await.unwrap();
    let number = meta.add_number("+1 555-000-1111", "Front Desk Co");
    let account = account(&meta, &number).await;
    let cloud = connector(&meta);
    let pairing = cloud.pairing(&account).unwrap();
    let token = pairing.secret.clone().unwrap();
    assert_eq!(
        pairing.webhook_url.as_deref(),
        Some(
            format!(
                "https://whatsnap.example.com/webhooks/cloud/loc1/{}",
                account.account_id
            )
            .as_str()
        )
    );
    let headers = http::HeaderMap::new();
    let check = |query: String| {
        let request = WebhookRequest {
            headers: &headers,
            query: &query,
            body: b"",
        };
        cloud.verify_webhook(&account, &request)
    };
    assert_eq!(
        check(format!(
            "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={token}"
        )),
        Ok("1158201444".to_owned())
    );
    assert!(matches!(
        check("hub.mode=subscribe&hub.challenge=1&hub.verify_token=guess".into()),
        Err(WebhookError::Unauthenticated(_))
    ));
    assert!(
        check(format!(
            "hub.mode=unsubscribe&hub.challenge=1&hub.verify_token={token}"
        ))
        .is_err()
    );
    assert_eq!(
        cloud.added(&account),
        [ConnectorEvent::Connected {
            phone_number: Some("+15550001111".into()),
            display_name: Some("Front Desk Co".into()),
        }]
    );
}

#[tokio::test]
async fn a_signed_webhook_is_read_a_forged_one_refused_and_a_photo_fetched_with_the_token() {
    let meta = FakeCloudApi::start().await.unwrap();
    let number = meta.add_number("+1 555-000-1111", "Front Desk Co");
    let account = account(&meta, &number).await;
    let cloud = connector(&meta);
    // A photo Meta holds, as a webhook would name it.
    let body = serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": number.waba_id, "changes": [{ "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550001111", "phone_number_id": number.phone_number_id },
            "messages": [{ "from": "14155550100", "id": "wamid.P", "timestamp": "1764680000",
                "type": "image", "image": { "id": "123", "mime_type": "image/png" } }],
        }}]}],
    })
    .to_string();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-hub-signature-256",
        sign("forged", body.as_bytes()).parse().unwrap(),
    );
    assert!(matches!(
        cloud.webhook(&account, &WebhookRequest::new(&headers, body.as_bytes())),
        Err(WebhookError::Unauthenticated(_))
    ));
    headers.insert(
        "x-hub-signature-256",
        sign(&number.app_secret, body.as_bytes()).parse().unwrap(),
    );
    let events = cloud
        .webhook(&account, &WebhookRequest::new(&headers, body.as_bytes()))
        .unwrap();
    let [ConnectorEvent::Message(photo)] = events.as_slice() else {
        panic!("{events:?}")
    };
    // The fake does not hold media 123: fetching it is refused for good, not retried.
    assert!(matches!(
        cloud
            .fetch_attachment(&account, &photo.attachments[0])
            .await,
        Err(ConnectorError::Refused(_))
    ));
    // An attachment that is not a Meta medium is left as it is.
    let link = Attachment {
        url: "https://cdn.example.com/a.png".into(),
        content_type: None,
        file_name: None,
    };
    assert_eq!(cloud.fetch_attachment(&account, &link).await.unwrap(), link);
}

#[tokio::test]
async fn replies_leave_as_text_media_and_templates_and_meta_refusals_say_why() {
    let meta = FakeCloudApi::start().await.unwrap();
    let number = meta.add_number("+1 555-000-1111", "Front Desk Co");
    let account = account(&meta, &number).await;
    let cloud = connector(&meta);
    let sent = cloud.send(&account, &outgoing("Hola Ana")).await.unwrap();
    assert!(sent.provider_message_id.starts_with("wamid."));
    let mut photo = outgoing("el menú");
    photo.attachments.push(Attachment {
        url: "https://files.example.com/menu.jpg".into(),
        content_type: Some("image/jpeg".into()),
        file_name: None,
    });
    cloud.send(&account, &photo).await.unwrap();
    let recorded = meta.sent();
    assert_eq!(recorded[0].text(), Some("Hola Ana"));
    assert_eq!(
        (recorded[1].kind.as_str(), recorded[1].text()),
        ("image", Some("el menú"))
    );

    let unknown = cloud
        .send(&account, &outgoing("/template order_ready en_US Ana"))
        .await
        .unwrap_err();
    assert!(
        matches!(&unknown, SendError::Refused { code: Some(code), .. } if code == "132001"),
        "{unknown:?}"
    );
    meta.approve_template(&number.phone_number_id, "order_ready", "en_US");
    cloud
        .send(&account, &outgoing("/template order_ready en_US Ana"))
        .await
        .unwrap();
    assert_eq!(meta.sent().last().unwrap().kind, "template");
    assert!(matches!(
        cloud.send(&account, &outgoing("/template Bad")).await,
        Err(SendError::Refused { reason, .. }) if reason.contains("/template <name> <language>")
    ));

    // Nothing to look a lost send up with: reported, never sent again.
    let lost = cloud
        .find_sent(&account, &outgoing("Hola Ana"), chrono::Utc::now())
        .await
        .unwrap_err();
    assert!(lost.certainly_unsent() && !lost.is_retryable(), "{lost:?}");

    meta.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(
        cloud.send(&account, &outgoing("¿Sigues ahí?")).await,
        Err(SendError::NotConnected(_))
    ));
}
