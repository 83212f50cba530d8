//! A webhook is acknowledged only once it is recorded. While the service that records it is
//! down, GHL's webhooks are refused with 429 and Retry-After (the answer both of GHL's retry
//! policies retry) and Twilio's with 503 and Retry-After (Twilio's fallback and retries follow
//! a 5xx); when the service is back, the same webhook sent again is acted on, once.
//!
//! The services run as a distributed deployment does: only session and ghl-sync hold the secret
//! key that opens the tenants' credentials; the gateway and contacts have the personal data key
//! alone, and the gateway still checks Twilio's signatures (the session service does it).

use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::EncodePublicKey as _;
use serde_json::json;
use whatsnap_proto::contacts::v1 as contacts;
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::{
    FakeTwilio, FakeTwilioAccount, HttpReply, TestNats, TestPostgres, Whatsnap, distributed_args,
    eventually, free_port, http_request,
};

const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const LOCATION: &str = "locRetries";
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token-of-locretries";
const NUMBER: &str = "+15005550006";
const CUSTOMER: &str = "+14155550142";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// One whatsnap service (`target`) on a fixed gRPC port, so it can come back where the gateway
/// looks for it.
fn service(common: &[String], target: &str, grpc_port: u16) -> Whatsnap {
    let mut list = common.to_vec();
    list.extend(args(&[
        "--target",
        target,
        "--grpc-addr",
        &format!("127.0.0.1:{grpc_port}"),
    ]));
    Whatsnap::serve(binary(), &list, target).unwrap()
}

/// The personal data key derived from `secret_key`, as an operator gets it.
fn personal_data_key(secret_key: &str) -> String {
    let output = std::process::Command::new(binary())
        .args(["keys", "personal-data"])
        .env("WHATSNAP_SECRET_KEY", secret_key)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(key.len(), 44, "32 bytes, base64: {key}");
    assert_ne!(key, secret_key);
    key
}

/// Asserts that a webhook was refused so that its sender sends it again.
fn asked_to_retry(reply: &HttpReply, status: u16) {
    assert_eq!(reply.status, status, "{reply:?}");
    let after: u64 = reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {reply:?}"));
    assert!(after > 0, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_refused_while_a_service_is_down_are_acted_on_once_when_sent_again() {
    let nats = TestNats::new().await.unwrap();
    let pg = TestPostgres::new().await.unwrap();
    let twilio = FakeTwilio::start().await.unwrap();
    twilio.add_account(FakeTwilioAccount {
        sid: SID.into(),
        auth_token: TOKEN.into(),
        status: "active".into(),
        numbers: vec![(NUMBER.into(), true)],
    });
    // whatsnap trusts this key instead of GHL's own, which only GHL can sign with.
    let ghl = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let public_pem = ghl
        .verifying_key()
        .to_public_key_pem(Default::default())
        .unwrap();
    let personal = personal_data_key(SECRET_KEY);
    let mut common = args(&["--personal-data-key", &personal]);
    common.extend(distributed_args(&nats, &pg));
    common.extend(args(&["--twilio-base-url", &twilio.base_url()]));
    // Only the services that keep credentials get the key that opens them.
    let mut with_credentials = common.clone();
    with_credentials.extend(args(&["--secret-key", SECRET_KEY]));
    let (session_port, contacts_port, ghl_sync_port) = (free_port(), free_port(), free_port());
    let mut session_service = service(&with_credentials, "session", session_port);
    // The contacts and ghl-sync services are not running yet.
    let mut gateway_args = common.clone();
    gateway_args.extend(args(&[
        "--target",
        "gateway",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--session-url",
        &format!("http://127.0.0.1:{session_port}"),
        "--contacts-url",
        &format!("http://127.0.0.1:{contacts_port}"),
        "--ghl-sync-url",
        &format!("http://127.0.0.1:{ghl_sync_port}"),
        "--ghl-webhook-ed25519-key",
        &public_pem,
    ]));
    let gateway = Whatsnap::serve(binary(), &gateway_args, "gateway").unwrap();
    let http = gateway.http.unwrap();
    let channel = gateway.channel().await;
    let mut accounts = session::session_service_client::SessionServiceClient::new(channel.clone());
    let mut contacts_api =
        contacts::contacts_service_client::ContactsServiceClient::new(channel.clone());
    let mut events_api = events::events_service_client::EventsServiceClient::new(channel);
    let mut read_stream = async |stream_id: String| {
        events_api
            .read_stream(events::ReadStreamRequest {
                stream_id,
                from_version: 1,
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .events
    };

    let add = |name: &str| session::AddAccountRequest {
        location_id: LOCATION.into(),
        kind: session::AccountKind::Twilio as i32,
        name: name.into(),
        phone_number: NUMBER.into(),
        twilio: Some(session::TwilioCredentials {
            account_sid: SID.into(),
            auth_token: TOKEN.into(),
        }),
        ..Default::default()
    };
    let sales = accounts
        .add_account(add("Sales"))
        .await
        .unwrap()
        .into_inner();
    let support = accounts
        .add_account(add("Support"))
        .await
        .unwrap()
        .into_inner();

    // Twilio's inbound webhook, signed with the account's Auth Token.
    let twilio_path = format!("/webhooks/twilio/{LOCATION}/{}/inbound", sales.account_id);
    let twilio_url = format!("http://{http}{twilio_path}");
    let text = async |message_sid: &str| {
        let params: Vec<(String, String)> = [
            ("MessageSid", message_sid),
            ("AccountSid", SID),
            ("From", CUSTOMER),
            ("To", NUMBER),
            ("Body", "Hello"),
            ("NumMedia", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let signature = whatsnap_twilio::signature::sign(TOKEN, &twilio_url, &params);
        let form = serde_urlencoded::to_string(&params).unwrap();
        http_request(
            http,
            &twilio_path,
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Twilio-Signature", &signature),
            ],
            Some(form.as_bytes()),
        )
        .await
        .unwrap()
    };
    // A GHL webhook, signed over its body.
    let ghl_post = async |path: &str, body: &str| {
        let signature =
            base64::engine::general_purpose::STANDARD.encode(ghl.sign(body.as_bytes()).to_bytes());
        http_request(
            http,
            path,
            &[
                ("Content-Type", "application/json"),
                ("X-GHL-Signature", &signature),
            ],
            Some(body.as_bytes()),
        )
        .await
        .unwrap()
    };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };

    // The customer texts Sales; the session service records it.
    let first = text("SM20000000000000000000000000000001").await;
    assert_eq!(first.status, 200, "{first:?}");
    // A text signed with another token is refused by the gateway, which holds no Auth Token.
    let forged_params = [("MessageSid", "SM2000000000000000000000000000000f")];
    let forged_params: Vec<(String, String)> = forged_params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let forged = http_request(
        http,
        &twilio_path,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            (
                "X-Twilio-Signature",
                &whatsnap_twilio::signature::sign("not-the-token", &twilio_url, &forged_params),
            ),
        ],
        Some(
            serde_urlencoded::to_string(&forged_params)
                .unwrap()
                .as_bytes(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(forged.status, 403, "{forged:?}");
    let unknown = http_request(
        http,
        &format!("/webhooks/twilio/{LOCATION}/{}/inbound", uuid::Uuid::nil()),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"MessageSid=SM1"),
    )
    .await
    .unwrap();
    assert_eq!(unknown.status, 404, "{unknown:?}");

    // GHL moves the contact to Support and installs the app while the contacts and ghl-sync
    // services are down: both are refused with 429, so that GHL sends them again.
    let tag_update = json!({
        "type": "ContactTagUpdate", "locationId": LOCATION, "id": "ghlContact1",
        "phone": CUSTOMER, "tags": [sales.tag, support.tag],
        "webhookId": "wh-tags-1", "timestamp": now_ms(),
    })
    .to_string();
    let install = json!({
        "type": "INSTALL", "locationId": LOCATION, "companyId": "c1", "appId": "a1",
        "webhookId": "wh-install-1", "timestamp": now_ms(),
    })
    .to_string();
    asked_to_retry(&ghl_post("/webhooks/ghl", &tag_update).await, 429);
    asked_to_retry(&ghl_post("/webhooks/ghl", &install).await, 429);
    // The refused webhookId is not "seen": sent again, it is refused again, not dropped.
    asked_to_retry(&ghl_post("/webhooks/ghl", &tag_update).await, 429);

    // The services come back; the contact is known once contacts has read the log.
    let _contacts_service = service(&common, "contacts", contacts_port);
    let _ghl_sync_service = service(&with_credentials, "ghl-sync", ghl_sync_port);
    let contact = eventually("the contact, created from the text", async || {
        let request = contacts::GetContactRequest {
            location_id: LOCATION.into(),
            phone: CUSTOMER.into(),
        };
        contacts_api.get_contact(request).await.ok()
    })
    .await
    .into_inner();
    assert_eq!(contact.tags, [sales.tag.as_str()]);
    // The gateway, with the personal data key alone, reads what the log keeps sealed.
    let first_message = whatsnap_events::inbound_message_id_for(
        sales.account_id.parse().unwrap(),
        "SM20000000000000000000000000000001",
    );
    let recorded = read_stream(format!("{LOCATION}.message.{first_message}")).await;
    assert!(
        recorded[0].payload_json.contains(r#""body":"Hello""#),
        "{}",
        recorded[0].payload_json
    );

    // GHL's retries of the same webhooks (same webhookId) are acted on.
    let applied = eventually("the retried tag update is acted on", async || {
        let reply = ghl_post("/webhooks/ghl", &tag_update).await;
        (reply.status != 429).then_some(reply)
    })
    .await;
    assert_eq!(
        (applied.status, applied.body.as_str()),
        (200, "tags applied\n")
    );
    let installed = eventually("the retried install is acted on", async || {
        let reply = ghl_post("/webhooks/ghl", &install).await;
        (reply.status != 429).then_some(reply)
    })
    .await;
    assert_eq!(
        (installed.status, installed.body.as_str()),
        (200, "install recorded\n")
    );
    // And once: one more delivery of either is a duplicate.
    for webhook in [&tag_update, &install] {
        let again = ghl_post("/webhooks/ghl", webhook).await;
        assert_eq!(
            (again.status, again.body.as_str()),
            (200, "duplicate: already handled\n")
        );
    }
    let route = eventually("replies go to Support", async || {
        let request = contacts::ResolveRouteRequest {
            location_id: LOCATION.into(),
            phone: CUSTOMER.into(),
        };
        let route = contacts_api.resolve_route(request).await.ok()?.into_inner();
        (route.account_id == support.account_id).then_some(route)
    })
    .await;
    assert_eq!(route.tag, support.tag);
    let contact_stream = format!("{LOCATION}.contact.{}", contact.contact_id);
    // Created (with the Sales tag) by the text, tagged Support by GHL: the tag once.
    assert_eq!(read_stream(contact_stream).await.len(), 2);
    assert_eq!(
        read_stream(format!("{LOCATION}.ghl.install")).await.len(),
        1
    );

    // The session service goes down: a reply from GHL is refused with 429, a text from Twilio
    // with 503, each with Retry-After.
    session_service.kill().unwrap();
    let reply = json!({
        "contactId": "ghlContact1", "locationId": LOCATION, "messageId": "ghlReply1",
        "type": "SMS", "phone": CUSTOMER, "message": "We are open", "attachments": [],
    })
    .to_string();
    asked_to_retry(&ghl_post("/webhooks/ghl/delivery", &reply).await, 429);
    asked_to_retry(&text("SM20000000000000000000000000000002").await, 503);

    // Back, the same reply and the same text are recorded, once.
    let _session_service = service(&with_credentials, "session", session_port);
    let recorded = eventually("the retried reply is recorded", async || {
        let reply = ghl_post("/webhooks/ghl/delivery", &reply).await;
        (reply.status != 429).then_some(reply)
    })
    .await;
    assert_eq!(recorded.status, 200, "{recorded:?}");
    let recorded: serde_json::Value = serde_json::from_str(&recorded.body).unwrap();
    assert_eq!(recorded["duplicate"], false);
    let again = ghl_post("/webhooks/ghl/delivery", &reply).await;
    let again: serde_json::Value = serde_json::from_str(&again.body).unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["messageId"], recorded["messageId"]);
    let received = eventually("the retried text is recorded", async || {
        let reply = text("SM20000000000000000000000000000002").await;
        (reply.status != 503).then_some(reply)
    })
    .await;
    assert_eq!(received.status, 200, "{received:?}");
    assert_eq!(text("SM20000000000000000000000000000002").await.status, 200);
    let message_id = whatsnap_events::inbound_message_id_for(
        sales.account_id.parse().unwrap(),
        "SM20000000000000000000000000000002",
    );
    assert_eq!(
        read_stream(format!("{LOCATION}.message.{message_id}"))
            .await
            .len(),
        1,
        "the text is recorded once"
    );
}
