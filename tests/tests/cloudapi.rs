//! A WhatsApp Business number on Meta's official Cloud API (the strict fake), end to end against
//! a real `whatsnap`: `whatsnap accounts add --kind whatsapp --engine cloud` checks the number
//! with the Graph API, shows the callback URL and verify token, and the account is connected at
//! once; Meta's check of the URL passes with the token and fails without it. A customer's
//! message becomes a tagged GHL contact (once, however often Meta posts it), a photo is fetched
//! with the token and served to GHL, a GHL reply leaves through the Cloud API and GHL learns it
//! was delivered and read, a message typed in the WhatsApp Business app shows as outbound; a
//! free-form reply after 24 hours fails to GHL saying a template is needed, and a `/template`
//! reply goes out as one. Forged, malformed and huge webhooks are refused and record nothing;
//! a Graph API that is down delays a reply, one that takes it and never answers is reported
//! failed rather than sent twice.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use whatsnap_events::{AggregateKind, LocationId, PhoneNumber, StreamId, contact_id_for};
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::Channel;
use whatsnap_testkit::cloudapi::{FakeCloudApi, FakeCloudMedia, FakeCloudNumber, SendFault};
use whatsnap_testkit::{FakeGhl, Whatsnap, eventually, free_port, http_get, http_request};

const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const LOCATION: &str = "locCloudApi";
const PROVIDER: &str = "whatsnapProvider0001";
const OWN_NUMBER: &str = "+15550002222";
const ANA: &str = "+14155550100";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

struct Rig {
    ghl: FakeGhl,
    meta: FakeCloudApi,
    number: FakeCloudNumber,
    whatsnap: Whatsnap,
    channel: Channel,
    _data: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    async fn start_with(extra: &[&str]) -> Self {
        let ghl = FakeGhl::start().await.unwrap();
        let meta = FakeCloudApi::start().await.unwrap();
        meta.set_retries(3, Duration::from_millis(300));
        let number = meta.add_number("+1 555-000-2222", "Front Desk Co");
        let data = tempfile::tempdir().unwrap();
        let (grpc, http) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let args = [
            "--data-dir",
            data.path().to_str().unwrap(),
            "--secret-key",
            SECRET_KEY,
            "--grpc-addr",
            &grpc,
            "--http-addr",
            &http,
            "--ghl-api-url",
            &ghl.base_url(),
            "--ghl-webhook-ed25519-key",
            &ghl.ed25519_public_key_pem(),
            "--ghl-conversation-provider-id",
            PROVIDER,
            "--ghl-max-backoff",
            "1",
            "--cloud-graph-url",
            &meta.base_url(),
            "--cloud-timeout",
            "2",
            "--send-patience",
            "30",
        ]
        .map(str::to_owned)
        .into_iter()
        .chain(extra.iter().map(|s| (*s).to_owned()))
        .collect::<Vec<_>>();
        let whatsnap = Whatsnap::serve(binary(), &args, "cloudapi").unwrap();
        let channel = whatsnap.channel().await;
        let token = format!("pit-{LOCATION}-0000-0000");
        ghl.add_private_token(LOCATION, &token);
        ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(channel.clone())
            .connect_private_token(ghlsync::ConnectPrivateTokenRequest {
                location_id: LOCATION.into(),
                token,
                company_id: FakeGhl::COMPANY_ID.into(),
            })
            .await
            .unwrap();
        Self {
            ghl,
            meta,
            number,
            whatsnap,
            channel,
            _data: data,
        }
    }

    fn accounts(&self) -> session::session_service_client::SessionServiceClient<Channel> {
        session::session_service_client::SessionServiceClient::new(self.channel.clone())
    }

    fn settings(&self) -> String {
        serde_json::json!({
            "phone_number_id": self.number.phone_number_id,
            "access_token": self.number.access_token,
            "app_secret": self.number.app_secret,
        })
        .to_string()
    }

    /// The number as a Cloud API account, through the gRPC API.
    async fn add(&self, name: &str) -> session::Account {
        self.accounts()
            .add_account(session::AddAccountRequest {
                location_id: LOCATION.into(),
                kind: session::AccountKind::Whatsapp as i32,
                name: name.into(),
                engine: "cloud".into(),
                settings_json: self.settings(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn pairing(&self, account: &session::Account) -> session::DevicePairing {
        self.accounts()
            .get_pairing(session::GetAccountRequest {
                location_id: LOCATION.into(),
                account_id: account.account_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// A connected account whose callback Meta verified and saved.
    async fn subscribed(&self, name: &str) -> session::Account {
        let account = self.add(name).await;
        let pairing = self.pairing(&account).await;
        self.meta
            .subscribe(
                &self.number.phone_number_id,
                &pairing.webhook_url,
                &pairing.secret,
            )
            .await
            .unwrap();
        account
    }

    async fn event_types(&self, stream: &StreamId) -> Vec<(String, String)> {
        events::events_service_client::EventsServiceClient::new(self.channel.clone())
            .read_stream(events::ReadStreamRequest {
                stream_id: stream.to_string(),
                from_version: 1,
                limit: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .events
            .into_iter()
            .map(|e| (e.event_type, e.payload_json))
            .collect()
    }

    fn delivery_url(&self) -> String {
        format!(
            "http://{}/webhooks/ghl/delivery",
            self.whatsnap.http.unwrap()
        )
    }

    /// Ana writes, and shows in GHL: her contact.
    async fn ana_writes(&self, text: &str) -> whatsnap_testkit::ghl::FakeGhlContact {
        let (_, answered) = self
            .meta
            .receive(&self.number.phone_number_id, ANA, "Ana Lima", text)
            .await;
        assert_eq!(answered, Some(200));
        eventually("Ana in GHL with her message", async || {
            let contact = self.ghl.contact_by_phone(LOCATION, ANA)?;
            self.ghl
                .messages(&contact.id)
                .iter()
                .any(|m| m.message.as_deref() == Some(text))
                .then_some(contact)
        })
        .await
    }

    /// A GHL user replies to the contact; GHL's message id.
    async fn reply(&self, contact_id: &str, text: &str) -> String {
        let (reply, code) = self
            .ghl
            .send_provider_outbound(&self.delivery_url(), LOCATION, contact_id, text, None)
            .await
            .unwrap();
        assert_eq!(code, 200);
        reply
    }

    async fn ghl_told(&self, reply: &str, status: &str) -> whatsnap_testkit::ghl::StatusUpdate {
        eventually(format!("GHL told {status}"), async || {
            self.ghl
                .status_updates(reply)
                .into_iter()
                .find(|u| u.http_status == 200 && u.status == status)
        })
        .await
    }
}

/// `/webhooks/cloud/{location}/{account}` with a query.
fn callback_path(account: &session::Account, query: &str) -> String {
    format!("/webhooks/cloud/{LOCATION}/{}?{query}", account.account_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_api_number_is_added_verified_by_meta_and_round_trips_with_ghl() {
    let rig = Rig::start().await;

    // `whatsnap accounts add` checks the number with Meta, prints what to enter in the app
    // dashboard, and returns: the account is connected already.
    let added = Command::new(binary())
        .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
        .args([
            "accounts",
            "add",
            "--location",
            LOCATION,
            "--kind",
            "whatsapp",
            "--engine",
            "cloud",
            "--name",
            "Front desk",
            "--setting",
            &format!("phone_number_id={}", rig.number.phone_number_id),
            "--setting",
            &format!("access_token={}", rig.number.access_token),
            "--setting",
            &format!("app_secret={}", rig.number.app_secret),
            "--timeout",
            "20",
            "--server",
            &rig.whatsnap.grpc_url(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&added.stdout).into_owned();
    assert!(
        added.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let account = eventually("the account listed", async || {
        rig.accounts()
            .list_accounts(session::ListAccountsRequest {
                location_id: LOCATION.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .accounts
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        (
            account.engine.as_str(),
            account.status.as_str(),
            account.phone_number.as_str()
        ),
        ("cloud", "connected", OWN_NUMBER),
        "connected with the number Meta displays"
    );
    let pairing = rig.pairing(&account).await;
    assert!(
        pairing.webhook_url.ends_with(&format!(
            "/webhooks/cloud/{LOCATION}/{}",
            account.account_id
        )),
        "{}",
        pairing.webhook_url
    );
    assert!(printed.contains(&pairing.webhook_url), "{printed}");
    assert!(printed.contains(&pairing.secret), "{printed}");
    assert!(printed.contains("Verify and save"), "{printed}");
    assert!(
        !printed.contains(&rig.number.access_token) && !printed.contains(&rig.number.app_secret),
        "secrets are not shown back: {printed}"
    );

    // Meta's check of the URL: refused with another token, passed with the account's.
    let http = rig.whatsnap.http.unwrap();
    let (code, _) = http_get(
        http,
        &callback_path(
            &account,
            "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=guess",
        ),
    )
    .await
    .unwrap();
    assert_eq!(code, 401);
    assert!(
        rig.meta
            .subscribe(&rig.number.phone_number_id, &pairing.webhook_url, "guess")
            .await
            .is_err()
    );
    rig.meta
        .subscribe(
            &rig.number.phone_number_id,
            &pairing.webhook_url,
            &pairing.secret,
        )
        .await
        .unwrap();

    // Ana writes, and Meta posts it twice: one tagged contact with one message.
    let contact = rig.ana_writes("Hola, ¿abren hoy?").await;
    assert_eq!(rig.meta.redeliver_last().await, Some(200));
    assert_eq!(contact.tags, ["whatsnap-account-front-desk"]);
    assert_eq!(contact.name.as_deref(), Some("Ana Lima"));
    let location = LocationId::parse(LOCATION).unwrap();
    let ana = PhoneNumber::parse(ANA).unwrap();
    let created = rig
        .event_types(&StreamId::for_uuid(
            location.clone(),
            AggregateKind::Contact,
            contact_id_for(&location, &ana),
        ))
        .await;
    assert!(
        created
            .iter()
            .any(|(t, p)| t == "ContactCreated" && p.contains("\"platform\":\"whatsapp\"")),
        "the contact records its platform: {created:?}"
    );
    // Meta is answered once the webhook is recorded: its message's stream holds it once.
    let first_id = rig.meta.deliveries()[0]
        .body
        .pointer("/entry/0/changes/0/value/messages/0/id")
        .and_then(|id| id.as_str())
        .map(str::to_owned)
        .unwrap();
    let received = rig
        .event_types(&StreamId::for_uuid(
            location.clone(),
            AggregateKind::Message,
            whatsnap_events::inbound_message_id_for(account.account_id.parse().unwrap(), &first_id),
        ))
        .await;
    assert_eq!(
        received
            .iter()
            .filter(|(t, _)| t == "InboundMessageReceived")
            .count(),
        1,
        "a redelivered webhook is recorded once: {received:?}"
    );

    // A photo: fetched from Meta with the token, served to GHL by whatsnap.
    let photo = b"\x89PNG the menu".to_vec();
    rig.meta
        .receive_media(
            &rig.number.phone_number_id,
            ANA,
            "Ana Lima",
            FakeCloudMedia {
                kind: "image".into(),
                mime_type: "image/png".into(),
                bytes: photo.clone(),
                file_name: None,
            },
            Some("el menú"),
        )
        .await;
    let with_photo = eventually("the photo in GHL", async || {
        rig.ghl
            .messages(&contact.id)
            .into_iter()
            .find(|m| m.message.as_deref() == Some("el menú"))
    })
    .await;
    let link = with_photo.attachments.first().expect("an attachment");
    let path = link
        .split_once(&http.to_string())
        .map(|(_, path)| path.to_owned())
        .expect("served by whatsnap");
    assert_eq!(
        rig.ghl
            .messages(&contact.id)
            .iter()
            .filter(|m| m.message.as_deref() == Some("Hola, ¿abren hoy?"))
            .count(),
        1,
        "GHL got the redelivered message once (the photo came after it)"
    );
    let served = http_request(http, &path, &[], None).await.unwrap();
    assert_eq!(
        (served.status, served.header("content-type")),
        (200, Some("image/png"))
    );

    // A GHL user replies: it leaves through the Cloud API; GHL learns delivered, then read.
    let reply = rig.reply(&contact.id, "¡Sí, hasta las 18h!").await;
    let sent = eventually("the reply sent through the Cloud API", async || {
        rig.meta
            .sent()
            .into_iter()
            .find(|m| m.text() == Some("¡Sí, hasta las 18h!"))
    })
    .await;
    assert_eq!(
        (sent.to.as_str(), sent.kind.as_str()),
        ("14155550100", "text")
    );
    eventually("the reply recorded as sent", async || {
        rig.event_types(&StreamId::for_uuid(
            location.clone(),
            AggregateKind::Message,
            whatsnap_events::outbound_message_id_for(&location, &reply),
        ))
        .await
        .iter()
        .any(|(t, _)| t == "OutboundMessageSent")
        .then_some(())
    })
    .await;
    assert_eq!(rig.meta.mark_delivered(&sent.id).await, Some(200));
    rig.ghl_told(&reply, "delivered").await;
    assert_eq!(rig.meta.mark_read(&sent.id).await, Some(200));
    rig.ghl_told(&reply, "read").await;

    // Typed in the WhatsApp Business app on the same number: in GHL as outbound, not sent.
    let (_, answered) = rig
        .meta
        .type_on_app(&rig.number.phone_number_id, ANA, "Te guardo una mesa")
        .await;
    assert_eq!(answered, Some(200));
    let typed = eventually("the app's message in GHL", async || {
        rig.ghl
            .messages(&contact.id)
            .into_iter()
            .find(|m| m.message.as_deref() == Some("Te guardo una mesa"))
    })
    .await;
    assert_eq!(typed.direction, "outbound");
    assert!(
        rig.meta
            .sent()
            .iter()
            .all(|m| m.text() != Some("Te guardo una mesa")),
        "a message typed in the app is not sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_24_hours_a_free_form_reply_fails_saying_a_template_is_needed_and_a_template_goes_out()
 {
    let rig = Rig::start().await;
    rig.subscribed("Front desk").await;
    let contact = rig.ana_writes("hola").await;
    rig.meta.close_window(&rig.number.phone_number_id, ANA);
    rig.meta
        .approve_template(&rig.number.phone_number_id, "order_ready", "es");

    let late = rig.reply(&contact.id, "¿Sigues interesada?").await;
    let failed = rig.ghl_told(&late, "failed").await;
    let error = failed.error.expect("GHL gets the reason").to_string();
    assert!(error.contains("template"), "{error}");
    assert!(error.contains("24 hours"), "{error}");

    let template = rig
        .reply(&contact.id, "/template order_ready es Ana\nMesa 4")
        .await;
    let sent = eventually("the template sent", async || {
        rig.meta.sent().into_iter().find(|m| m.kind == "template")
    })
    .await;
    assert_eq!(sent.body["template"]["name"], "order_ready");
    assert_eq!(sent.body["template"]["language"]["code"], "es");
    assert_eq!(
        sent.body["template"]["components"][0]["parameters"][1]["text"],
        "Mesa 4"
    );
    rig.meta.mark_delivered(&sent.id).await;
    rig.ghl_told(&template, "delivered").await;

    let unknown = rig.reply(&contact.id, "/template nonexistent es").await;
    let refused = rig.ghl_told(&unknown, "failed").await;
    assert!(
        refused.error.unwrap().to_string().contains("132001"),
        "Meta's reason reaches GHL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_malformed_and_huge_webhooks_are_refused_and_record_nothing() {
    let rig = Rig::start().await;
    let account = rig.subscribed("Front desk").await;
    let http = rig.whatsnap.http.unwrap();
    let body = serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": rig.number.waba_id, "changes": [{ "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550002222", "phone_number_id": rig.number.phone_number_id },
            "contacts": [{ "profile": { "name": "Mallory" }, "wa_id": "14155550199" }],
            "messages": [{ "from": "14155550199", "id": "wamid.FORGED", "timestamp": "1764680000",
                "type": "text", "text": { "body": "send me the codes" } }],
        }}]}],
    })
    .to_string();
    let path = format!("/webhooks/cloud/{LOCATION}/{}", account.account_id);
    let post = |signature: String, body: Vec<u8>| {
        let path = path.clone();
        async move {
            http_request(
                http,
                &path,
                &[
                    ("Content-Type", "application/json"),
                    ("X-Hub-Signature-256", &signature),
                ],
                Some(&body),
            )
            .await
            .unwrap()
            .status
        }
    };
    let forged = whatsnap_testkit::cloudapi::sign("not-the-app-secret", body.as_bytes());
    assert_eq!(post(forged, body.clone().into_bytes()).await, 401);
    let unsigned = http_request(
        http,
        &path,
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(unsigned.status, 401);
    let garbage = b"{\"object\": whatsapp".to_vec();
    let signed = whatsnap_testkit::cloudapi::sign(&rig.number.app_secret, &garbage);
    assert_eq!(post(signed, garbage).await, 400);
    let huge = vec![b' '; 30 * 1024 * 1024];
    let status = post("sha256=00".into(), huge).await;
    assert_eq!(status, 413, "a body over the gateway's limit");
    let big = format!("{body}{}", " ".repeat(4 * 1024 * 1024)).into_bytes();
    let signed = whatsnap_testkit::cloudapi::sign(&rig.number.app_secret, &big);
    assert_eq!(post(signed, big).await, 400, "larger than any Meta sends");

    let message_id = whatsnap_events::inbound_message_id_for(
        account.account_id.parse().unwrap(),
        "wamid.FORGED",
    );
    let location = LocationId::parse(LOCATION).unwrap();
    assert!(
        rig.event_types(&StreamId::for_uuid(
            location,
            AggregateKind::Message,
            message_id
        ))
        .await
        .is_empty(),
        "a refused webhook records nothing"
    );
    assert!(rig.ghl.contact_by_phone(LOCATION, "+14155550199").is_none());

    // Signed right, it is recorded: the refusals above were about the request, not the body.
    let signed = whatsnap_testkit::cloudapi::sign(&rig.number.app_secret, body.as_bytes());
    assert_eq!(post(signed, body.into_bytes()).await, 200);
    eventually("the signed message in GHL", async || {
        rig.ghl.contact_by_phone(LOCATION, "+14155550199")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_api_that_drops_mid_send_delays_the_reply_and_never_sends_it_twice() {
    let mut rig = Rig::start().await;
    rig.subscribed("Front desk").await;
    let contact = rig.ana_writes("hola").await;

    // Down: the reply waits, and leaves once when Meta is back.
    rig.meta.stop();
    let waiting = rig.reply(&contact.id, "¿Mesa para dos?").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.meta.restart().await.unwrap();
    let sent = eventually("the reply sent once Meta is back", async || {
        rig.meta
            .sent()
            .into_iter()
            .find(|m| m.text() == Some("¿Mesa para dos?"))
    })
    .await;
    rig.meta.mark_delivered(&sent.id).await;
    rig.ghl_told(&waiting, "delivered").await;

    // Taken, then no answer: it may have left, and the Cloud API cannot say; it is reported
    // failed, never sent a second time.
    rig.meta.set_send_fault(Some(SendFault::AcceptThenHang));
    let lost = rig.reply(&contact.id, "Te llamo luego").await;
    let failed = rig.ghl_told(&lost, "failed").await;
    assert!(
        failed.error.unwrap().to_string().contains("not sent again"),
        "the reason says why"
    );
    rig.meta.set_send_fault(None);
    assert_eq!(
        rig.meta
            .sent()
            .iter()
            .filter(|m| m.text() == Some("Te llamo luego"))
            .count(),
        1,
        "sent once"
    );
    assert_eq!(
        rig.meta
            .sent()
            .iter()
            .filter(|m| m.text() == Some("¿Mesa para dos?"))
            .count(),
        1,
        "sent once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_or_number_id_adds_nothing() {
    let rig = Rig::start().await;
    let refused = rig
        .accounts()
        .add_account(session::AddAccountRequest {
            location_id: LOCATION.into(),
            kind: session::AccountKind::Whatsapp as i32,
            name: "Front desk".into(),
            engine: "cloud".into(),
            settings_json: serde_json::json!({
                "phone_number_id": rig.number.phone_number_id,
                "access_token": "EAAG-not-a-token",
                "app_secret": rig.number.app_secret,
            })
            .to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("access token"),
        "{}",
        refused.message()
    );
    let other = rig.meta.add_number("+1 555-000-3333", "Other");
    let refused = rig
        .accounts()
        .add_account(session::AddAccountRequest {
            location_id: LOCATION.into(),
            kind: session::AccountKind::Whatsapp as i32,
            name: "Front desk".into(),
            engine: "cloud".into(),
            settings_json: serde_json::json!({
                "phone_number_id": other.phone_number_id,
                "access_token": rig.number.access_token,
                "app_secret": rig.number.app_secret,
            })
            .to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().contains(&other.phone_number_id),
        "{}",
        refused.message()
    );
    let missing = rig
        .accounts()
        .add_account(session::AddAccountRequest {
            location_id: LOCATION.into(),
            kind: session::AccountKind::Whatsapp as i32,
            name: "Front desk".into(),
            engine: "cloud".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    assert!(
        rig.accounts()
            .list_accounts(session::ListAccountsRequest {
                location_id: LOCATION.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .accounts
            .is_empty()
    );
}
