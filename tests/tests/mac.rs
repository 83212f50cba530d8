//! iMessage through the user's Mac (BlueBubbles Server, the strict fake), end to end against a
//! real `whatsnap`: `whatsnap accounts add --kind mac` checks the Mac, prints the steps and
//! waits until the Mac is seen; whatsnap registers its webhook on the Mac (and removes it with
//! the account); a message becomes a tagged GHL contact (once, however often it is posted); a
//! GHL reply leaves through the Mac into the chat the contact uses (iMessage or SMS), its echo
//! is not shown twice, and GHL learns it was delivered and read; a message typed on the Mac
//! shows in GHL as outbound; forged, malformed and huge webhooks are refused; a Mac that goes
//! silent shows offline and alerts; what arrived while whatsnap was down is caught up once,
//! from the last message recorded however long the outage; a Mac that drops mid-send does not
//! send twice.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use whatsnap_events::{AggregateKind, LocationId, PhoneNumber, StreamId, contact_id_for};
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::Channel;
use whatsnap_testkit::{
    AlertSink, ChildGuard, FakeBlueBubbles, FakeGhl, Whatsnap, eventually, free_port, http_post,
};

const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const LOCATION: &str = "locMac";
const PROVIDER: &str = "whatsnapProvider0001";
const ANA: &str = "+14155550100";
const BOB: &str = "+14155550111";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

struct Rig {
    ghl: FakeGhl,
    mac: FakeBlueBubbles,
    whatsnap: Whatsnap,
    channel: Channel,
    data: tempfile::TempDir,
    ports: (u16, u16),
    extra: Vec<String>,
}

impl Rig {
    /// The texts of a GHL conversation with their directions, once it has at least `count`.
    async fn ghl_texts(&self, contact_id: &str, count: usize, what: &str) -> Vec<(String, String)> {
        eventually(what, async || {
            let texts: Vec<_> = self
                .ghl
                .messages(contact_id)
                .into_iter()
                .filter_map(|m| Some((m.message?, m.direction)))
                .collect();
            (texts.len() >= count).then_some(texts)
        })
        .await
    }

    async fn start(extra: &[&str]) -> Self {
        let ghl = FakeGhl::start().await.unwrap();
        let mac = FakeBlueBubbles::start().await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let ports = (free_port(), free_port());
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let whatsnap = launch(&ghl, data.path(), ports, &extra);
        let channel = connect(&whatsnap).await;
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
            mac,
            whatsnap,
            channel,
            data,
            ports,
            extra,
        }
    }

    /// whatsnap stopped (killed), as when its host is down.
    fn stop(&mut self) {
        let _ = self.whatsnap.kill();
    }

    /// whatsnap again, on the same data and addresses.
    async fn restart(&mut self) {
        let _ = self.whatsnap.kill();
        self.whatsnap = launch(&self.ghl, self.data.path(), self.ports, &self.extra);
        self.channel = connect(&self.whatsnap).await;
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

    async fn add_mac(
        &self,
        name: &str,
        server_url: &str,
        password: &str,
    ) -> Result<session::Account, tonic::Status> {
        self.accounts()
            .add_account(session::AddAccountRequest {
                location_id: LOCATION.into(),
                kind: session::AccountKind::Imessage as i32,
                name: name.into(),
                settings_json: serde_json::json!({"server_url": server_url, "password": password})
                    .to_string(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// An iMessage account on the fake Mac, connected and unpaced.
    async fn connected_mac(&self, name: &str) -> session::Account {
        let account = self
            .add_mac(name, &self.mac.base_url(), FakeBlueBubbles::PASSWORD)
            .await
            .unwrap();
        self.accounts()
            .set_pacing(session::SetPacingRequest {
                location_id: LOCATION.into(),
                account_id: account.account_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        eventually("the Mac seen", async || {
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

    /// The events recorded for a message the Mac reported as `guid`.
    async fn observed(&self, account_id: &str, guid: &str) -> Vec<(String, String)> {
        let location = LocationId::parse(LOCATION).unwrap();
        let id = whatsnap_events::inbound_message_id_for(account_id.parse().unwrap(), guid);
        self.event_types(&StreamId::for_uuid(location, AggregateKind::Message, id))
            .await
    }

    async fn reply_sent(&self, reply: &str) {
        let location = LocationId::parse(LOCATION).unwrap();
        eventually("the reply recorded as sent", async || {
            let stream = StreamId::for_uuid(
                location.clone(),
                AggregateKind::Message,
                whatsnap_events::outbound_message_id_for(&location, reply),
            );
            self.event_types(&stream)
                .await
                .iter()
                .any(|(t, _)| t == "OutboundMessageSent")
                .then_some(())
        })
        .await;
    }

    fn delivery_url(&self) -> String {
        format!(
            "http://{}/webhooks/ghl/delivery",
            self.whatsnap.http.unwrap()
        )
    }

    /// The path and query whatsnap registered on the Mac for its webhook.
    fn webhook_path(&self) -> String {
        let url = self.mac.webhooks().pop().expect("a webhook registered");
        let http = self.whatsnap.http.unwrap().to_string();
        url.split_once(&http).unwrap().1.to_owned()
    }
}

fn launch(ghl: &FakeGhl, data: &Path, (grpc, http): (u16, u16), extra: &[String]) -> Whatsnap {
    let (grpc, http) = (format!("127.0.0.1:{grpc}"), format!("127.0.0.1:{http}"));
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
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
        "--bluebubbles-ping-interval",
        "0.3",
        "--bluebubbles-timeout",
        "2",
    ]
    .map(str::to_owned)
    .into_iter()
    .chain(extra.iter().cloned())
    .collect::<Vec<_>>();
    Whatsnap::serve(binary(), &args, "mac").unwrap()
}

async fn connect(whatsnap: &Whatsnap) -> Channel {
    whatsnap.channel().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_added_and_paired_round_trips_imessages_with_ghl() {
    let rig = Rig::start(&[]).await;

    // `whatsnap accounts add --kind mac` checks the Mac, prints the steps and waits for it.
    let cli = ChildGuard::new(
        Command::new(binary())
            .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
            .args([
                "accounts",
                "add",
                "--location",
                LOCATION,
                "--kind",
                "mac",
                "--name",
                "Front desk",
                "--setting",
                &format!("server_url={}", rig.mac.base_url()),
                "--setting",
                &format!("password={}", FakeBlueBubbles::PASSWORD),
                "--timeout",
                "60",
                "--server",
                &rig.whatsnap.grpc_url(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (exit, printed) = tokio::task::spawn_blocking(move || {
        let mut cli = cli;
        let status = cli.child_mut().wait().unwrap();
        let mut out = String::new();
        cli.child_mut()
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        (status, out)
    })
    .await
    .unwrap();
    assert!(exit.success(), "accounts add ended with {exit}: {printed}");
    assert!(printed.contains("BlueBubbles Server"), "{printed}");
    assert!(printed.contains("connected"), "{printed}");
    assert!(
        !printed.contains(FakeBlueBubbles::PASSWORD),
        "the password is not printed: {printed}"
    );
    // The list is a read model: it shows the account connected once it has caught up.
    let account = eventually("the account listed as connected", async || {
        rig.accounts()
            .list_accounts(session::ListAccountsRequest {
                location_id: LOCATION.into(),
            })
            .await
            .ok()?
            .into_inner()
            .accounts
            .pop()
            .filter(|account| account.status == "connected")
    })
    .await;
    assert_eq!(account.engine, "bluebubbles");
    let hooks = rig.mac.webhooks();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert!(
        hooks[0].contains(&format!(
            "/webhooks/bluebubbles/{LOCATION}/{}?secret=",
            account.account_id
        )),
        "{hooks:?}"
    );
    rig.accounts()
        .set_pacing(session::SetPacingRequest {
            location_id: LOCATION.into(),
            account_id: account.account_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Ana texts the Mac; the webhook is posted twice: one tagged contact, one message.
    let (_, answered) = rig.mac.receive(ANA, "Are you open today?").await;
    assert_eq!(answered, [Some(200)]);
    assert_eq!(rig.mac.repost_last().await, [Some(200)]);
    let contact = eventually("Ana in GHL with her message", async || {
        let contact = rig.ghl.contact_by_phone(LOCATION, ANA)?;
        (!rig.ghl.messages(&contact.id).is_empty()).then_some(contact)
    })
    .await;
    assert_eq!(contact.tags, ["whatsnap-account-front-desk"]);
    assert_eq!(rig.ghl.messages(&contact.id).len(), 1);
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
            .any(|(t, p)| t == "ContactCreated" && p.contains("\"platform\":\"imessage\"")),
        "the contact records its platform: {created:?}"
    );

    // A GHL user replies: it leaves through the Mac into Ana's iMessage chat; its echo, posted
    // before the send is answered, is not taken for a message typed on the Mac.
    let (reply, code) = rig
        .ghl
        .send_provider_outbound(
            &rig.delivery_url(),
            LOCATION,
            &contact.id,
            "Yes, until 6pm!",
            Some("userAna"),
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    let sent = eventually("the reply sent by the Mac", async || {
        rig.mac
            .sent()
            .into_iter()
            .find(|m| m.text == "Yes, until 6pm!")
    })
    .await;
    assert_eq!(sent.chat_guid, format!("iMessage;-;{ANA}"));
    rig.reply_sent(&reply).await;
    eventually("the echo posted", async || {
        rig.mac
            .deliveries()
            .iter()
            .any(|d| d.body["data"]["guid"] == sent.guid.as_str() && d.status.is_some())
            .then_some(())
    })
    .await;
    assert_eq!(
        rig.observed(&account.account_id, &sent.guid).await,
        [],
        "the echo of whatsnap's own reply is not recorded as typed on the Mac"
    );

    rig.mac.mark_delivered(&sent.guid).await;
    eventually("GHL told delivered", async || {
        rig.ghl
            .status_updates(&reply)
            .into_iter()
            .find(|u| u.http_status == 200 && u.status == "delivered")
    })
    .await;
    rig.mac.mark_read(&sent.guid).await;
    eventually("GHL told read", async || {
        rig.ghl
            .status_updates(&reply)
            .into_iter()
            .find(|u| u.http_status == 200 && u.status == "read")
    })
    .await;

    // Typed on the Mac: outbound in GHL, and not sent again.
    rig.mac.type_on_mac(ANA, "See you at 5").await;
    let typed = eventually("the Mac's message in GHL", async || {
        rig.ghl
            .messages(&contact.id)
            .into_iter()
            .find(|m| m.message.as_deref() == Some("See you at 5"))
    })
    .await;
    assert_eq!(typed.direction, "outbound");
    assert!(rig.mac.sent().iter().all(|m| m.text != "See you at 5"));
    assert_eq!(
        rig.ghl
            .messages(&contact.id)
            .iter()
            .filter(|m| m.message.as_deref() == Some("Yes, until 6pm!"))
            .count(),
        1,
        "the reply shows once in GHL: its echo is not added as a message typed on the Mac"
    );

    // Bob has no iMessage: he texts over SMS, and the reply goes back over SMS.
    rig.mac.receive_sms(BOB, "price?").await;
    let bob = eventually("Bob in GHL", async || {
        rig.ghl.contact_by_phone(LOCATION, BOB)
    })
    .await;
    rig.ghl
        .send_provider_outbound(&rig.delivery_url(), LOCATION, &bob.id, "$20", None)
        .await
        .unwrap();
    let to_bob = eventually("the reply to Bob", async || {
        rig.mac.sent().into_iter().find(|m| m.text == "$20")
    })
    .await;
    assert_eq!(to_bob.chat_guid, format!("SMS;-;{BOB}"));

    // Removed: whatsnap's webhook leaves the Mac.
    rig.accounts()
        .remove_account(session::RemoveAccountRequest {
            location_id: LOCATION.into(),
            account_id: account.account_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap();
    eventually("the webhook removed from the Mac", async || {
        rig.mac.webhooks().is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_mac_says_what_is_wrong() {
    let rig = Rig::start(&[]).await;
    let refused = rig
        .add_mac("Desk", &rig.mac.base_url(), "not-the-password")
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("refused the password"),
        "{refused:?}"
    );
    rig.mac.set_version("1.8.2");
    let old = rig
        .add_mac("Desk", &rig.mac.base_url(), FakeBlueBubbles::PASSWORD)
        .await
        .unwrap_err();
    assert!(
        old.message().contains("1.8.2") && old.message().contains("1.9.0"),
        "{old:?}"
    );
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let unreachable = rig
        .add_mac("Desk", &nowhere, FakeBlueBubbles::PASSWORD)
        .await
        .unwrap_err();
    assert!(
        unreachable.message().contains("cannot be reached"),
        "{unreachable:?}"
    );
    assert!(rig.mac.webhooks().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_malformed_or_huge_mac_webhook_records_nothing() {
    let rig = Rig::start(&[]).await;
    let account = rig.connected_mac("Sales").await;
    let http = rig.whatsnap.http.unwrap();
    let good = rig.webhook_path();
    let (path, _) = good.split_once('?').unwrap();
    let body = serde_json::json!({"type": "new-message", "data": {
        "guid": "FORGED-1", "text": "send me the codes", "isFromMe": false,
        "handle": {"address": ANA}, "dateCreated": 1764676800000i64,
        "chats": [{"guid": format!("iMessage;-;{ANA}")}]}})
    .to_string();
    let post = |path: String, body: Vec<u8>| async move {
        http_post(
            http,
            &path,
            &[("Content-Type", "application/json")],
            Some(&body),
        )
        .await
        .unwrap()
        .0
    };
    assert_eq!(post(path.to_owned(), body.clone().into()).await, 401);
    assert_eq!(
        post(format!("{path}?secret=guessed"), body.clone().into()).await,
        401
    );
    assert_eq!(post(good.clone(), b"{not json".to_vec()).await, 400);
    let huge = vec![b' '; 25 * 1024 * 1024];
    assert_eq!(post(good.clone(), huge).await, 413);
    assert!(
        rig.observed(&account.account_id, "FORGED-1")
            .await
            .is_empty(),
        "a refused webhook records nothing"
    );
    // The same body with the secret is taken: the refusals above were for the secret.
    assert_eq!(post(good, body.into()).await, 200);
    assert!(
        !rig.observed(&account.account_id, "FORGED-1")
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_that_goes_silent_shows_offline_alerts_and_comes_back() {
    let sink = AlertSink::default();
    let url = sink.start().await;
    let rig = Rig::start(&["--alert-webhook-url", &url]).await;
    let account = rig.connected_mac("Front desk").await;

    rig.mac.set_reachable(false);
    let offline = eventually("the account offline", async || {
        let account = rig.account(&account.account_id).await;
        (account.status == "disconnected").then_some(account)
    })
    .await;
    assert!(
        offline.status_reason.contains("does not answer"),
        "{}",
        offline.status_reason
    );
    let alert = eventually("the operator alerted", async || {
        sink.texts()
            .into_iter()
            .find(|t| t.contains("disconnected"))
    })
    .await;
    assert!(alert.contains("Front desk"), "{alert}");

    // The Mac answers again: connected.
    rig.mac.set_reachable(true);
    eventually("connected again", async || {
        (rig.account(&account.account_id).await.status == "connected").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_arrive_while_whatsnap_is_down_appear_once_after_it_starts() {
    let mut rig = Rig::start(&[]).await;
    let account = rig.connected_mac("Front desk").await;
    let (first, _) = rig.mac.receive(ANA, "first").await;
    let contact = eventually("Ana in GHL", async || {
        rig.ghl.contact_by_phone(LOCATION, ANA)
    })
    .await;

    rig.stop();
    let (_, answered) = rig.mac.receive(ANA, "while you were down").await;
    assert_eq!(answered, [None], "nobody took the webhook");
    rig.mac.type_on_mac(ANA, "typed meanwhile").await;
    rig.restart().await;

    let texts = rig.ghl_texts(&contact.id, 3, "both caught up in GHL").await;
    assert!(
        texts.contains(&("while you were down".into(), "inbound".into())),
        "{texts:?}"
    );
    assert!(
        texts.contains(&("typed meanwhile".into(), "outbound".into())),
        "{texts:?}"
    );
    assert_eq!(
        texts.iter().filter(|(t, _)| t == "first").count(),
        1,
        "what was recorded before is not recorded again: {texts:?}"
    );
    assert_eq!(
        rig.observed(&account.account_id, &first)
            .await
            .iter()
            .filter(|(t, _)| t == "InboundMessageReceived")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_long_outage_whatsnap_catches_up_from_the_last_message_it_recorded() {
    // A Mac that has recorded no message would be asked for one minute back only: the
    // messages below are hours old, dated by the Mac's clock.
    let mut rig = Rig::start(&["--bluebubbles-catch-up", "60"]).await;
    let account = rig.connected_mac("Front desk").await;
    let now = chrono::Utc::now();
    rig.mac.set_clock(now - chrono::Duration::hours(3));
    let (first, _) = rig.mac.receive(ANA, "three hours ago").await;
    let contact = eventually("Ana in GHL with her message", async || {
        let contact = rig.ghl.contact_by_phone(LOCATION, ANA)?;
        (!rig.ghl.messages(&contact.id).is_empty()).then_some(contact)
    })
    .await;

    // whatsnap is down while the Mac gets a message and its user types one, two hours ago:
    // before the window, after the last message recorded.
    rig.stop();
    rig.mac.set_clock(now - chrono::Duration::hours(2));
    let (missed, answered) = rig.mac.receive(ANA, "two hours ago").await;
    assert_eq!(answered, [None], "nobody took the webhook");
    let (typed, _) = rig.mac.type_on_mac(ANA, "typed two hours ago").await;
    rig.restart().await;

    let texts = rig.ghl_texts(&contact.id, 3, "both caught up in GHL").await;
    for (text, direction) in [
        ("three hours ago", "inbound"),
        ("two hours ago", "inbound"),
        ("typed two hours ago", "outbound"),
    ] {
        assert_eq!(
            texts
                .iter()
                .filter(|(t, d)| t == text && d == direction)
                .count(),
            1,
            "{text:?} in GHL once: {texts:?}"
        );
    }
    assert_eq!(texts.len(), 3, "{texts:?}");
    for guid in [&first, &missed, &typed] {
        assert_eq!(
            rig.observed(&account.account_id, guid)
                .await
                .iter()
                .filter(|(t, _)| t == "InboundMessageReceived")
                .count(),
            1,
            "recorded once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_that_drops_mid_send_does_not_send_twice() {
    let rig = Rig::start(&[]).await;
    let account = rig.connected_mac("Front desk").await;
    rig.mac.receive(ANA, "hi").await;
    let contact = eventually("Ana in GHL", async || {
        rig.ghl.contact_by_phone(LOCATION, ANA)
    })
    .await;

    rig.mac.accept_then_hang_next_send();
    let (reply, _) = rig
        .ghl
        .send_provider_outbound(
            &rig.delivery_url(),
            LOCATION,
            &contact.id,
            "on my way",
            None,
        )
        .await
        .unwrap();
    rig.reply_sent(&reply).await;
    let sent: Vec<_> = rig
        .mac
        .sent()
        .into_iter()
        .filter(|m| m.text == "on my way")
        .collect();
    assert_eq!(sent.len(), 1, "found on the Mac, not sent again: {sent:?}");
    assert_eq!(
        rig.observed(&account.account_id, &sent[0].guid).await,
        [],
        "its echo is not shown as typed on the Mac"
    );
    rig.mac.mark_delivered(&sent[0].guid).await;
    eventually("GHL told delivered", async || {
        rig.ghl
            .status_updates(&reply)
            .into_iter()
            .find(|u| u.status == "delivered")
    })
    .await;
}
