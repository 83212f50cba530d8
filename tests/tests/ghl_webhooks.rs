//! GHL's webhooks at the gateway: a signed ContactTagUpdate that gives a contact another
//! account's tag moves its replies to that account; anything unsigned changes nothing.

use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::EncodePublicKey as _;
use serde_json::json;
use whatsnap_proto::contacts::v1 as contacts;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::ghlsync::v1::ghl_sync_service_client::GhlSyncServiceClient as GhlSyncClient;
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::Channel;
use whatsnap_testkit::{Whatsnap, eventually, http_post};

const LOCATION: &str = "ve9EPM428h8vShlRW1KT";
const PHONE: &str = "+14155550123";

/// Waits until a reply to the contact would leave from `account_id`.
async fn route_to(
    client: &mut contacts::contacts_service_client::ContactsServiceClient<Channel>,
    account_id: &str,
) -> contacts::Route {
    eventually(format!("the route goes to {account_id}"), async || {
        let request = contacts::ResolveRouteRequest {
            location_id: LOCATION.into(),
            phone: PHONE.into(),
        };
        let route = client.resolve_route(request).await.ok()?.into_inner();
        (route.account_id == account_id).then_some(route)
    })
    .await
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_contact_tag_update_moves_the_route_and_forgeries_are_refused() {
    // whatsnap trusts this key instead of GHL's own, which only GHL can sign with.
    let ghl = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let public_pem = ghl
        .verifying_key()
        .to_public_key_pem(Default::default())
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let whatsnap = Whatsnap::serve(
        binary(),
        &[
            "--data-dir",
            data.path().to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--ghl-webhook-ed25519-key",
            &public_pem,
            "--ghl-app-id",
            "a1",
            "--ghl-conversation-provider-id",
            "cp1",
        ]
        .map(str::to_owned),
        "ghl-webhooks",
    )
    .unwrap();
    let channel = whatsnap.channel().await;
    let mut accounts = session::session_service_client::SessionServiceClient::new(channel.clone());
    let mut contacts_api = contacts::contacts_service_client::ContactsServiceClient::new(channel);
    let add = |name: &str| session::AddAccountRequest {
        location_id: LOCATION.into(),
        kind: session::AccountKind::Whatsapp as i32,
        name: name.into(),
        phone_number: String::new(),
        twilio: None,
        ..Default::default()
    };
    let first = accounts
        .add_account(add("Front"))
        .await
        .unwrap()
        .into_inner();
    let second = accounts
        .add_account(add("Back"))
        .await
        .unwrap()
        .into_inner();
    accounts
        .record_inbound_message(session::RecordInboundMessageRequest {
            location_id: LOCATION.into(),
            account_id: first.account_id.clone(),
            provider_message_id: "wamid.1".into(),
            from: PHONE.into(),
            body: "hello".into(),
            sender_name: String::new(),
            attachments: Vec::new(),
        })
        .await
        .unwrap();
    route_to(&mut contacts_api, &first.account_id).await;

    let http = whatsnap.http.unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let update = json!({
        "type": "ContactTagUpdate",
        "locationId": LOCATION,
        "id": "seD4PfOuKoVMLkEZqohJ",
        "phone": PHONE,
        "tags": [first.tag, second.tag, "vip"],
        "webhookId": "9f1c2d3e",
        "timestamp": now_ms,
    })
    .to_string();
    let sign =
        |body: &[u8]| base64::engine::general_purpose::STANDARD.encode(ghl.sign(body).to_bytes());
    let post = async |signature: Option<String>, body: &[u8]| {
        let mut headers = vec![("Content-Type", "application/json".to_owned())];
        if let Some(signature) = signature {
            headers.push(("X-GHL-Signature", signature));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http_post(http, "/webhooks/ghl", &headers, Some(body))
            .await
            .unwrap()
    };

    // Forged, unsigned and garbled updates change nothing.
    let forged = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng).sign(update.as_bytes());
    let forged = base64::engine::general_purpose::STANDARD.encode(forged.to_bytes());
    assert_eq!(post(Some(forged), update.as_bytes()).await.0, 401);
    assert_eq!(post(None, update.as_bytes()).await.0, 401);
    assert_eq!(post(Some(sign(b"{not json")), b"{not json").await.0, 400);
    let unchanged = contacts_api
        .get_contact(contacts::GetContactRequest {
            location_id: LOCATION.into(),
            phone: PHONE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged.tags, [first.tag.as_str()]);

    // A signed update from ten minutes ago is a replay.
    let stale = json!({
        "type": "ContactTagUpdate", "locationId": LOCATION, "id": "seD4PfOuKoVMLkEZqohJ",
        "phone": PHONE, "tags": [], "webhookId": "0ld", "timestamp": now_ms - 600_000,
    })
    .to_string();
    let (status, body) = post(Some(sign(stale.as_bytes())), stale.as_bytes()).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("more than the 300 s allowed"), "{body}");
    // One without a timestamp cannot be told from a replay.
    let unstamped = json!({
        "type": "ContactTagUpdate", "locationId": LOCATION, "id": "seD4PfOuKoVMLkEZqohJ",
        "phone": PHONE, "tags": [], "webhookId": "no-stamp",
    })
    .to_string();
    let (status, body) = post(Some(sign(unstamped.as_bytes())), unstamped.as_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no timestamp"), "{body}");

    // The signed update: the Back account's tag is new, so replies go there now.
    let (status, body) = post(Some(sign(update.as_bytes())), update.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(Some(sign(update.as_bytes())), update.as_bytes()).await;
    assert_eq!((status, body.trim()), (200, "duplicate: already handled"));
    let route = route_to(&mut contacts_api, &second.account_id).await;
    assert!(
        route.reason.contains("added most recently"),
        "{}",
        route.reason
    );

    // What whatsnap does not act on is acknowledged, so that GHL does not retry it.
    let stranger = json!({"type": "ContactTagUpdate", "locationId": LOCATION, "phone": "+14155550999", "tags": ["x"], "timestamp": now_ms}).to_string();
    let (status, body) = post(Some(sign(stranger.as_bytes())), stranger.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ignored"), "{body}");
    let unknown =
        json!({"type": "NoteCreate", "locationId": LOCATION, "timestamp": now_ms}).to_string();
    let (status, body) = post(Some(sign(unknown.as_bytes())), unknown.as_bytes()).await;
    assert_eq!((status, body.starts_with("ignored")), (200, true), "{body}");

    // INSTALL and UNINSTALL are recorded; the pending work says whether GHL can be reached.
    let waiting = async |ghl_sync: &mut GhlSyncClient<Channel>, installed: bool| {
        eventually(format!("installed = {installed} is seen"), async || {
            let request = ghlsync::SyncStatusRequest {
                location_id: LOCATION.into(),
            };
            let status = ghl_sync.sync_status(request).await.ok()?.into_inner();
            let not_installed = status.waiting_because.contains("has not installed");
            (status.pending_contact_upserts > 0 && not_installed != installed).then_some(status)
        })
        .await
    };
    let mut ghl_sync = GhlSyncClient::new(whatsnap.channel().await);
    waiting(&mut ghl_sync, false).await;

    // Another app's install, and a tag update for another conversation provider, reach the
    // same URL: acknowledged, and nothing recorded.
    let connection_events = async || {
        let mut events =
            whatsnap_proto::events::v1::events_service_client::EventsServiceClient::new(
                whatsnap.channel().await,
            );
        let request = whatsnap_proto::events::v1::ReadStreamRequest {
            stream_id: format!("{LOCATION}.ghl.install"),
            ..Default::default()
        };
        events
            .read_stream(request)
            .await
            .unwrap()
            .into_inner()
            .events
            .len()
    };
    let before = connection_events().await;
    let theirs = json!({"type": "INSTALL", "locationId": LOCATION, "companyId": "c1", "appId": "a2", "webhookId": "other-app", "timestamp": now_ms}).to_string();
    let (status, body) = post(Some(sign(theirs.as_bytes())), theirs.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "ignored: for another GHL app (a2)\n");
    let other_provider = json!({
        "type": "ContactTagUpdate", "locationId": LOCATION, "id": "seD4PfOuKoVMLkEZqohJ",
        "phone": PHONE, "tags": [], "conversationProviderId": "cp2", "timestamp": now_ms,
    })
    .to_string();
    let (status, body) = post(
        Some(sign(other_provider.as_bytes())),
        other_provider.as_bytes(),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ignored: for another conversation provider (cp2)\n")
    );
    assert_eq!(connection_events().await, before, "nothing recorded");
    waiting(&mut ghl_sync, false).await;

    let install =
        json!({"type": "INSTALL", "locationId": LOCATION, "companyId": "c1", "appId": "a1", "timestamp": now_ms})
            .to_string();
    let (status, body) = post(Some(sign(install.as_bytes())), install.as_bytes()).await;
    assert_eq!((status, body.as_str()), (200, "install recorded\n"));
    waiting(&mut ghl_sync, true).await;
    let uninstall =
        json!({"type": "UNINSTALL", "locationId": LOCATION, "appId": "a1", "timestamp": now_ms})
            .to_string();
    for _ in 0..2 {
        let (status, body) = post(Some(sign(uninstall.as_bytes())), uninstall.as_bytes()).await;
        assert_eq!((status, body.as_str()), (200, "uninstall recorded\n"));
    }
    waiting(&mut ghl_sync, false).await;
}
