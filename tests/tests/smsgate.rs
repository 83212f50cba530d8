//! SMS through a person's own Android phone running SMSGate (the strict fake), end to end
//! against a real `whatsnap`: `whatsnap accounts add --kind android` registers whatsnap's
//! webhooks on the phone, prints the pairing steps and waits until the phone is seen; a text
//! becomes a tagged GHL contact (once, however often the phone posts it), the same person as on
//! WhatsApp; a GHL reply leaves through the phone under whatsnap's id, in parts when long, and
//! its delivery or failure reaches GHL; forged, stale, malformed and huge webhooks are refused
//! and record nothing; a phone that goes silent shows offline with the battery-saver advice and
//! alerts the operator; texts the phone holds back flag the account as not delivering; a phone
//! that drops mid-send sends the reply once; removing the account removes the webhooks.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use whatsnap_events::{AggregateKind, LocationId, PhoneNumber, StreamId, contact_id_for};
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::Channel;
use whatsnap_testkit::{
    ChildGuard, FakeEvolution, FakeEvolutionIncoming, FakeGhl, FakeSmsGate, FakeSmsGateFault,
    Whatsnap, eventually, free_port, http_post, smsgate,
};

const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const LOCATION: &str = "locAndroid";
const PROVIDER: &str = "whatsnapProvider0001";
const ANA: &str = "+14155550100";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

struct Rig {
    ghl: FakeGhl,
    phone: FakeSmsGate,
    cloud: FakeSmsGate,
    evolution: FakeEvolution,
    whatsnap: Whatsnap,
    channel: Channel,
    _data: tempfile::TempDir,
}

impl Rig {
    /// whatsnap with a phone (local server), SMSGate's cloud and an Evolution server, patient
    /// with a silent phone for 3 s, giving up a request to the phone after 2 s; `extra` flags.
    async fn start(extra: &[&str]) -> Self {
        let ghl = FakeGhl::start().await.unwrap();
        let phone = FakeSmsGate::start_local().await.unwrap();
        phone.set_retry_base(std::time::Duration::from_millis(200));
        let cloud = FakeSmsGate::start_cloud().await.unwrap();
        let evolution = FakeEvolution::start().await.unwrap();
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
            "--evolution-url",
            &evolution.base_url(),
            "--evolution-api-key",
            FakeEvolution::GLOBAL_API_KEY,
            "--whatsapp-engine",
            "evolution",
            "--smsgate-cloud-url",
            &cloud.base_url(),
            "--smsgate-patience",
            "3",
            "--smsgate-poll",
            "0.2",
            "--smsgate-timeout",
            "2",
        ]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned())
        .collect::<Vec<_>>();
        let whatsnap = Whatsnap::serve_with_env(binary(), &args, &[], "smsgate").unwrap();
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
            phone,
            cloud,
            evolution,
            whatsnap,
            channel,
            _data: data,
        }
    }

    fn http(&self) -> SocketAddr {
        self.whatsnap.http.unwrap()
    }

    fn accounts(&self) -> session::session_service_client::SessionServiceClient<Channel> {
        session::session_service_client::SessionServiceClient::new(self.channel.clone())
    }

    async fn account(&self, account_id: &str) -> session::Account {
        self.accounts()
            .get_account(session::GetAccountRequest {
                location_id: LOCATION.into(),
                account_id: account_id.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// The settings of an account on the phone's local server.
    fn local_settings(&self) -> Vec<(String, String)> {
        [
            ("mode", "local".to_owned()),
            ("url", self.phone.base_url()),
            ("username", FakeSmsGate::USERNAME.to_owned()),
            ("password", FakeSmsGate::PASSWORD.to_owned()),
            ("signing_key", FakeSmsGate::SIGNING_KEY.to_owned()),
            ("sim_number", "1".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .to_vec()
    }

    /// An Android account on the phone, added over gRPC, once the phone is seen.
    async fn add_phone(&self, name: &str) -> session::Account {
        let settings: serde_json::Map<String, serde_json::Value> = self
            .local_settings()
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect();
        let account = self
            .accounts()
            .add_account(session::AddAccountRequest {
                location_id: LOCATION.into(),
                kind: session::AccountKind::AndroidSms as i32,
                name: name.into(),
                settings_json: serde_json::Value::Object(settings).to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        eventually("the phone seen", async || {
            (self.account(&account.account_id).await.status == "connected").then_some(())
        })
        .await;
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
        format!("http://{}/webhooks/ghl/delivery", self.http())
    }

    /// Ana texts the phone and is in GHL: her contact id.
    async fn ana_texts(&self, text: &str) -> String {
        self.phone.receive(ANA, text, 1).await;
        eventually("Ana in GHL with her text", async || {
            let contact = self.ghl.contact_by_phone(LOCATION, ANA)?;
            self.ghl
                .messages(&contact.id)
                .iter()
                .any(|m| m.message.as_deref() == Some(text))
                .then_some(contact.id)
        })
        .await
    }

    /// A GHL user replies to `contact`: GHL's message id.
    async fn reply(&self, contact: &str, text: &str) -> String {
        let (reply, code) = self
            .ghl
            .send_provider_outbound(&self.delivery_url(), LOCATION, contact, text, None)
            .await
            .unwrap();
        assert_eq!(code, 200);
        reply
    }

    /// The text the phone took for `text`.
    async fn taken(&self, text: &str) -> whatsnap_testkit::smsgate::FakeSmsGateMessage {
        eventually(format!("{text:?} taken by the phone"), async || {
            self.phone.messages().into_iter().find(|m| m.text == text)
        })
        .await
    }
}

/// A webhook path of an account.
fn webhook_path(account_id: &str) -> String {
    format!("/webhooks/smsgate/{LOCATION}/{account_id}")
}

/// Posts `body` to the account's webhook as the phone would, signed with `key` at `at`.
async fn post_signed(
    http: SocketAddr,
    account_id: &str,
    body: &[u8],
    key: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> u16 {
    let timestamp = at.timestamp().to_string();
    let signature = smsgate::sign(key, body, &timestamp);
    http_post(
        http,
        &webhook_path(account_id),
        &[
            ("content-type", "application/json"),
            ("x-timestamp", &timestamp),
            ("x-signature", &signature),
        ],
        Some(body),
    )
    .await
    .unwrap()
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_android_phone_round_trips_sms_with_ghl() {
    let rig = Rig::start(&[]).await;

    // `whatsnap accounts add --kind android` pairs the phone and waits until it is seen.
    let mut args: Vec<String> = [
        "accounts",
        "add",
        "--location",
        LOCATION,
        "--kind",
        "android",
        "--name",
        "Shop phone",
        "--timeout",
        "60",
        "--server",
        &rig.whatsnap.grpc_url(),
    ]
    .map(str::to_owned)
    .to_vec();
    for (name, value) in rig.local_settings() {
        args.push("--setting".into());
        args.push(format!("{name}={value}"));
    }
    let mut cli = ChildGuard::new(
        Command::new(binary())
            .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (exit, printed) = tokio::task::spawn_blocking(move || {
        let status = cli.child_mut().wait().unwrap();
        let mut out = String::new();
        cli.child_mut()
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let mut err = String::new();
        cli.child_mut()
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, format!("{out}{err}"))
    })
    .await
    .unwrap();
    assert!(exit.success(), "accounts add ended with {exit}: {printed}");
    assert!(printed.contains("battery optimisation"), "{printed}");
    let account = rig
        .accounts()
        .list_accounts(session::ListAccountsRequest {
            location_id: LOCATION.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .accounts
        .into_iter()
        .find(|a| a.name == "Shop phone")
        .expect("the account");
    assert!(
        printed.contains(&webhook_path(&account.account_id)),
        "{printed}"
    );
    let account = rig.account(&account.account_id).await;
    assert_eq!(
        (account.status.as_str(), account.engine.as_str()),
        ("connected", "smsgate")
    );
    let hooks = rig.phone.webhooks();
    let mut events: Vec<_> = hooks.iter().map(|w| w.event.as_str()).collect();
    events.sort_unstable();
    assert_eq!(
        events,
        [
            "mms:received",
            "sms:delivered",
            "sms:failed",
            "sms:received",
            "sms:sent",
            "system:ping"
        ]
    );
    assert!(
        hooks.iter().all(|w| w.id.starts_with("whatsnap-")
            && w.url.ends_with(&webhook_path(&account.account_id)))
    );

    // Ana texts; the phone posts it twice (a retry): one tagged contact, one message.
    let (_, answers) = rig.phone.receive(ANA, "Hi, are you open today?", 1).await;
    assert_eq!(answers, [Some(200)]);
    assert_eq!(rig.phone.redeliver_last().await, Some(200));
    let contact = eventually("Ana in GHL with her text", async || {
        let contact = rig.ghl.contact_by_phone(LOCATION, ANA)?;
        (!rig.ghl.messages(&contact.id).is_empty()).then_some(contact)
    })
    .await;
    assert_eq!(contact.tags, ["whatsnap-account-shop-phone"]);
    let location = LocationId::parse(LOCATION).unwrap();
    let ana = PhoneNumber::parse(ANA).unwrap();
    let contact_stream = StreamId::for_uuid(
        location.clone(),
        AggregateKind::Contact,
        contact_id_for(&location, &ana),
    );
    let created = rig.event_types(&contact_stream).await;
    assert!(
        created
            .iter()
            .any(|(t, p)| t == "ContactCreated" && p.contains("\"platform\":\"android_sms\"")),
        "the contact records its platform: {created:?}"
    );

    // A text on the phone's other SIM belongs to another account.
    rig.phone.receive(ANA, "wrong sim", 2).await;

    // A GHL reply leaves through the phone under whatsnap's id, with a delivery report, from
    // the account's SIM; the phone sends it and the carrier reports it delivered.
    let reply = rig.reply(&contact.id, "Yes, until 6pm!").await;
    let sent = rig.taken("Yes, until 6pm!").await;
    let message_id = whatsnap_events::outbound_message_id_for(&location, &reply);
    assert_eq!(sent.id, message_id.to_string());
    assert_eq!(sent.phone_numbers, [ANA]);
    assert_eq!(sent.sim_number, Some(1));
    assert!(sent.with_delivery_report);
    let message_stream = StreamId::for_uuid(location.clone(), AggregateKind::Message, message_id);
    eventually("the reply recorded as sent", async || {
        rig.event_types(&message_stream)
            .await
            .iter()
            .any(|(t, _)| t == "OutboundMessageSent")
            .then_some(())
    })
    .await;
    rig.phone.deliver(&sent.id).await;
    eventually("GHL told delivered", async || {
        rig.ghl
            .status_updates(&reply)
            .into_iter()
            .find(|u| u.http_status == 200 && u.status == "delivered")
    })
    .await;

    // A long reply goes as one text in parts; the phone cannot send it: GHL hears why.
    let long = "Our opening hours this week: ".to_owned() + &"Mon-Fri 9-18, Sat 10-14. ".repeat(12);
    let reply = rig.reply(&contact.id, &long).await;
    let sent = rig.taken(&long).await;
    assert!(sent.parts >= 2, "{} parts", sent.parts);
    rig.phone.fail(&sent.id, "RESULT_ERROR_NO_SERVICE").await;
    let failed = eventually("GHL told failed", async || {
        rig.ghl
            .status_updates(&reply)
            .into_iter()
            .find(|u| u.http_status == 200 && u.status == "failed")
    })
    .await;
    assert!(
        failed
            .error
            .as_ref()
            .is_some_and(|e| e.to_string().contains("RESULT_ERROR_NO_SERVICE")),
        "{:?}",
        failed.error
    );

    // Ana also writes on WhatsApp: the same contact, with both accounts' tags.
    let whatsapp = rig
        .accounts()
        .add_account(session::AddAccountRequest {
            location_id: LOCATION.into(),
            kind: session::AccountKind::Whatsapp as i32,
            name: "Front desk".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    rig.accounts()
        .connect_account(session::ConnectAccountRequest {
            location_id: LOCATION.into(),
            account_id: whatsapp.account_id.clone(),
            pairing_phone_number: String::new(),
        })
        .await
        .unwrap();
    let instance = format!("whatsnap-{}", whatsapp.account_id.replace('-', ""));
    eventually("a QR code shown", async || {
        rig.evolution.instance(&instance)?.qr_code
    })
    .await;
    rig.evolution
        .scan(&instance, "+15550001111", "Front desk")
        .await
        .unwrap();
    rig.evolution
        .receive(
            &instance,
            FakeEvolutionIncoming::text(ANA, "also on WhatsApp"),
        )
        .await
        .unwrap();
    let tagged = eventually("Ana tagged with both accounts", async || {
        let contact = rig.ghl.contact_by_phone(LOCATION, ANA)?;
        (contact.tags.len() == 2).then_some(contact)
    })
    .await;
    assert_eq!(tagged.id, contact.id, "one contact");
    assert_eq!(rig.ghl.contacts(LOCATION).len(), 1);
    let texts: Vec<_> = rig
        .ghl
        .messages(&contact.id)
        .into_iter()
        .filter_map(|m| m.message)
        .collect();
    assert_eq!(
        texts
            .iter()
            .filter(|t| *t == "Hi, are you open today?")
            .count(),
        1,
        "the redelivered text is in GHL once: {texts:?}"
    );
    assert!(!texts.contains(&"wrong sim".to_owned()), "{texts:?}");

    // Removing the account removes whatsnap's webhooks from the phone.
    rig.accounts()
        .remove_account(session::RemoveAccountRequest {
            location_id: LOCATION.into(),
            account_id: account.account_id.clone(),
            reason: "phone sold".into(),
        })
        .await
        .unwrap();
    eventually("the webhooks gone from the phone", async || {
        rig.phone.webhooks().is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_malformed_and_huge_webhooks_are_refused_and_record_nothing() {
    let rig = Rig::start(&[]).await;
    let account = rig.add_phone("Shop phone").await;
    let http = rig.http();
    let now = chrono::Utc::now();
    let body = serde_json::json!({
        "id": "evtForged", "webhookId": "x", "deviceId": "d", "event": "sms:received",
        "payload": { "messageId": "forged1", "message": "send me money", "phoneNumber": ANA,
                     "simNumber": 1, "receivedAt": now.to_rfc3339() },
    })
    .to_string();
    let key = FakeSmsGate::SIGNING_KEY;
    assert_eq!(
        post_signed(
            http,
            &account.account_id,
            body.as_bytes(),
            "not-the-key",
            now
        )
        .await,
        401,
        "forged"
    );
    let stale = now - chrono::Duration::minutes(10);
    assert_eq!(
        post_signed(http, &account.account_id, body.as_bytes(), key, stale).await,
        401,
        "replayed from ten minutes ago"
    );
    let unsigned = http_post(
        http,
        &webhook_path(&account.account_id),
        &[("content-type", "application/json")],
        Some(body.as_bytes()),
    )
    .await
    .unwrap()
    .0;
    assert_eq!(unsigned, 401);
    assert_eq!(
        post_signed(http, &account.account_id, b"{\"event\":", key, now).await,
        400,
        "malformed"
    );
    let huge = serde_json::json!({
        "id": "evtHuge", "event": "sms:received",
        "payload": { "messageId": "huge1", "message": "x".repeat(200 * 1024),
                     "phoneNumber": ANA, "receivedAt": now.to_rfc3339() },
    })
    .to_string();
    let code = post_signed(http, &account.account_id, huge.as_bytes(), key, now).await;
    assert!(matches!(code, 400 | 413), "huge: {code}");
    let nobody = uuid::Uuid::now_v7().to_string();
    let unknown = post_signed(http, &nobody, body.as_bytes(), key, now).await;
    assert_eq!(unknown, 404, "an account whatsnap does not have");

    // The genuine one, signed by the phone, goes through: the refused ones left nothing.
    rig.phone.receive(ANA, "the real one", 1).await;
    let contact = eventually("Ana in GHL", async || {
        let contact = rig.ghl.contact_by_phone(LOCATION, ANA)?;
        (!rig.ghl.messages(&contact.id).is_empty()).then_some(contact)
    })
    .await;
    let texts: Vec<_> = rig
        .ghl
        .messages(&contact.id)
        .into_iter()
        .filter_map(|m| m.message)
        .collect();
    assert_eq!(texts, ["the real one"]);
}

/// The operator's alert webhook.
#[derive(Clone, Default)]
struct AlertSink(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl AlertSink {
    async fn start(&self) -> String {
        let sink = self.clone();
        let app = axum::Router::new().route(
            "/alert",
            axum::routing::post(move |body: axum::Json<serde_json::Value>| async move {
                let text = body["text"].as_str().unwrap_or_default().to_owned();
                sink.0.lock().unwrap().push(text);
                "ok"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/alert")
    }

    fn find(&self, what: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.contains(what))
            .cloned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_holds_texts_back_or_goes_silent_is_shown_and_the_operator_alerted() {
    let sink = AlertSink::default();
    let url = sink.start().await;
    let mut rig = Rig::start(&["--alert-webhook-url", &url]).await;
    let account = rig.add_phone("Shop phone").await;
    let contact = rig.ana_texts("hello").await;

    // A battery saver holds the app back: the phone takes the text and does not send it.
    rig.phone.hold_sends(true);
    rig.reply(&contact, "held back").await;
    rig.taken("held back").await;
    let flagged = eventually("the account flagged as not delivering", async || {
        let account = rig.account(&account.account_id).await;
        account
            .status_reason
            .contains("not delivering")
            .then_some(account)
    })
    .await;
    assert_eq!(flagged.status, "connected");
    assert!(
        flagged.status_reason.contains("battery optimisation"),
        "{}",
        flagged.status_reason
    );
    let alert = eventually("the operator alerted", async || sink.find("not delivering")).await;
    assert!(alert.contains("Shop phone"), "{alert}");
    rig.phone.hold_sends(false);
    eventually("delivering again once the phone sends", async || {
        let account = rig.account(&account.account_id).await;
        (!account.status_reason.contains("not delivering")).then_some(())
    })
    .await;

    // The phone goes silent: offline, with the advice, and an alert; back when seen again.
    rig.phone.go_offline();
    let offline = eventually("the account offline", async || {
        let account = rig.account(&account.account_id).await;
        (account.status == "disconnected").then_some(account)
    })
    .await;
    assert!(
        offline.status_reason.contains("battery optimisation")
            && offline.status_reason.contains("last seen"),
        "{}",
        offline.status_reason
    );
    let alert = eventually("the disconnect alerted", async || sink.find("disconnected")).await;
    assert!(alert.contains("Shop phone"), "{alert}");
    rig.phone.come_online().await.unwrap();
    eventually("connected again", async || {
        (rig.account(&account.account_id).await.status == "connected").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_drops_mid_send_sends_the_reply_once() {
    let rig = Rig::start(&[]).await;
    rig.add_phone("Shop phone").await;
    let contact = rig.ana_texts("hello").await;
    // The phone takes the text and the answer never comes back: whatsnap gives up after 2 s
    // not knowing, reads the id back, and records it sent.
    rig.phone.set_fault(Some(FakeSmsGateFault::AcceptThenHang));
    let reply = rig.reply(&contact, "only once please").await;
    let location = LocationId::parse(LOCATION).unwrap();
    let message_id = whatsnap_events::outbound_message_id_for(&location, &reply);
    let stream = StreamId::for_uuid(location, AggregateKind::Message, message_id);
    let history = eventually("the reply recorded as sent", async || {
        let history = rig.event_types(&stream).await;
        history
            .iter()
            .any(|(t, _)| t == "OutboundMessageSent")
            .then_some(history)
    })
    .await;
    assert!(
        history.iter().any(|(t, _)| t == "EffectIntended"),
        "through the outbox: {history:?}"
    );
    rig.phone.set_fault(None);
    let taken: Vec<_> = rig
        .phone
        .messages()
        .into_iter()
        .filter(|m| m.text == "only once please")
        .collect();
    assert_eq!(taken.len(), 1, "sent once");
    rig.phone.deliver(&taken[0].id).await;
    eventually("GHL told delivered", async || {
        rig.ghl
            .status_updates(&reply)
            .into_iter()
            .find(|u| u.status == "delivered")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_takes_only_https_webhooks_and_bad_settings_are_refused_clearly() {
    let rig = Rig::start(&[]).await;
    let add = |settings: serde_json::Value| {
        let mut accounts = rig.accounts();
        async move {
            accounts
                .add_account(session::AddAccountRequest {
                    location_id: LOCATION.into(),
                    kind: session::AccountKind::AndroidSms as i32,
                    name: "Cloud phone".into(),
                    settings_json: settings.to_string(),
                    ..Default::default()
                })
                .await
        }
    };
    let refused = add(serde_json::json!({
        "mode": "cloud", "username": FakeSmsGate::USERNAME, "password": FakeSmsGate::PASSWORD,
        "signing_key": FakeSmsGate::SIGNING_KEY,
    }))
    .await
    .unwrap_err();
    assert!(
        refused.message().contains("https"),
        "whatsnap's URL here is http: {}",
        refused.message()
    );
    let refused = add(serde_json::json!({
        "mode": "cloud", "username": FakeSmsGate::USERNAME, "password": "wrong",
        "signing_key": FakeSmsGate::SIGNING_KEY,
    }))
    .await
    .unwrap_err();
    assert!(
        refused.message().contains("username and password"),
        "{}",
        refused.message()
    );
    let refused = add(serde_json::json!({
        "mode": "local", "url": rig.phone.base_url(), "username": FakeSmsGate::USERNAME,
        "password": FakeSmsGate::PASSWORD,
    }))
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("Signing Key"),
        "{}",
        refused.message()
    );
    assert!(rig.cloud.webhooks().is_empty() && rig.phone.webhooks().is_empty());
    let listed = rig
        .accounts()
        .list_accounts(session::ListAccountsRequest {
            location_id: LOCATION.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .accounts;
    assert!(listed.is_empty(), "nothing added: {listed:?}");
}
