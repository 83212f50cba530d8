//! A WhatsApp number linked by QR code through an Evolution API server (the strict fake), end to
//! end against a real `whatsnap`: `whatsnap accounts connect` shows the QR code and replaces it
//! as it rotates; the phone scans it and the account is connected; a message becomes a tagged
//! GHL contact (once, however often Evolution delivers it); a GHL reply leaves through
//! `sendText` and GHL learns it was delivered and read; a message typed on the phone shows in
//! GHL as outbound and is never sent again; a sender named by LID is the contact of their
//! number; a file is served to GHL; the link drops and comes back.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use whatsnap_events::{AggregateKind, LocationId, PhoneNumber, StreamId, contact_id_for};
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::Channel;
use whatsnap_testkit::{
    AlertSink, ChildGuard, FakeEvolution, FakeEvolutionIncoming, FakeGhl, Whatsnap, eventually,
    free_port, http_get,
};

const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const LOCATION: &str = "locWhatsApp";
const PROVIDER: &str = "whatsnapProvider0001";
const OWN_NUMBER: &str = "+15550001111";
const ANA: &str = "+14155550100";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

struct Rig {
    ghl: FakeGhl,
    evolution: FakeEvolution,
    whatsnap: Whatsnap,
    channel: Channel,
    data: tempfile::TempDir,
    grpc: u16,
    http: u16,
}

impl Rig {
    async fn start() -> Self {
        Self::start_with(None, &[]).await
    }

    /// A whatsnap whose process aborts at the fail point `failpoints` names, if any, started
    /// with `extra` flags.
    async fn start_with(failpoints: Option<&str>, extra: &[&str]) -> Self {
        let ghl = FakeGhl::start().await.unwrap();
        let evolution = FakeEvolution::start().await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let (grpc, http) = (free_port(), free_port());
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let whatsnap = launch(
            &ghl,
            &evolution,
            data.path(),
            (grpc, http),
            failpoints,
            &extra,
        );
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
            evolution,
            whatsnap,
            channel,
            data,
            grpc,
            http,
        }
    }

    /// whatsnap again, on the same data and addresses (after a crash or a stop).
    async fn restart(&mut self, failpoints: Option<&str>) {
        let _ = self.whatsnap.kill();
        self.whatsnap = launch(
            &self.ghl,
            &self.evolution,
            self.data.path(),
            (self.grpc, self.http),
            failpoints,
            &[],
        );
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

    /// A WhatsApp account of the location, on the deployment's engine (Evolution here).
    async fn add_whatsapp(&self, name: &str) -> session::Account {
        self.accounts()
            .add_account(session::AddAccountRequest {
                location_id: LOCATION.into(),
                kind: session::AccountKind::Whatsapp as i32,
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// No pacing for the account: the test's replies leave at once.
    async fn unpaced(&self, account: &session::Account) {
        self.accounts()
            .set_pacing(session::SetPacingRequest {
                location_id: LOCATION.into(),
                account_id: account.account_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// A WhatsApp account through Evolution, unpaced, showing its first QR code: the account
    /// and its Evolution instance.
    async fn linking(&self, name: &str) -> (session::Account, String) {
        let account = self.add_whatsapp(name).await;
        let instance = instance_of(&account.account_id);
        self.unpaced(&account).await;
        self.accounts()
            .connect_account(session::ConnectAccountRequest {
                location_id: LOCATION.into(),
                account_id: account.account_id.clone(),
                pairing_phone_number: String::new(),
            })
            .await
            .unwrap();
        eventually("a QR code shown", async || {
            self.evolution.instance(&instance)?.qr_code
        })
        .await;
        (account, instance)
    }

    fn delivery_url(&self) -> String {
        format!(
            "http://{}/webhooks/ghl/delivery",
            self.whatsnap.http.unwrap()
        )
    }
}

fn launch(
    ghl: &FakeGhl,
    evolution: &FakeEvolution,
    data: &Path,
    (grpc, http): (u16, u16),
    failpoints: Option<&str>,
    extra: &[String],
) -> Whatsnap {
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
        "--evolution-url",
        &evolution.base_url(),
        "--evolution-api-key",
        FakeEvolution::GLOBAL_API_KEY,
        "--whatsapp-engine",
        "evolution",
    ]
    .map(str::to_owned)
    .into_iter()
    .chain(extra.iter().cloned())
    .collect::<Vec<_>>();
    let env: Vec<(&str, String)> = failpoints
        .map(|points| ("WHATSNAP_FAILPOINTS", points.to_owned()))
        .into_iter()
        .collect();
    Whatsnap::serve_with_env(binary(), &args, &env, "whatsapp").unwrap()
}

async fn connect(whatsnap: &Whatsnap) -> Channel {
    whatsnap.channel().await
}

/// The instance whatsnap made for the account in the fake Evolution server.
fn instance_of(account_id: &str) -> String {
    format!("whatsnap-{}", account_id.replace('-', ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whatsapp_number_linked_by_qr_through_evolution_round_trips_with_ghl() {
    let rig = Rig::start().await;
    let account = rig.add_whatsapp("Front desk").await;
    assert_eq!(account.engine, "evolution");
    assert_eq!(account.tag, "whatsnap-account-front-desk");
    let instance = instance_of(&account.account_id);
    assert!(
        rig.evolution.instance(&instance).is_some(),
        "adding the account made its Evolution instance"
    );
    rig.unpaced(&account).await;

    // `whatsnap accounts connect` shows the QR code, and the next one as it rotates.
    let mut cli = ChildGuard::new(
        Command::new(binary())
            .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
            .args([
                "accounts",
                "connect",
                "--location",
                LOCATION,
                &account.account_id,
                "--timeout",
                "120",
                "--server",
                &rig.whatsnap.grpc_url(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let first = eventually("a QR code shown by Evolution", async || {
        rig.evolution.instance(&instance)?.qr_code
    })
    .await;
    let mut watch = rig
        .accounts()
        .watch_account(session::WatchAccountRequest {
            location_id: LOCATION.into(),
            account_id: account.account_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let now = watch.message().await.unwrap().unwrap();
    assert_eq!(now.account.unwrap().status, "linking");
    let rotated = rig.evolution.rotate_qr(&instance).await.unwrap().unwrap();
    assert_ne!(rotated, first, "a new code replaces the old");
    let shown = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let update = watch.message().await.unwrap().unwrap();
            if update.qr_code == rotated {
                return update;
            }
        }
    })
    .await
    .expect("the rotated code reaches the watcher");
    assert!(shown.code_expires_at_ms > chrono::Utc::now().timestamp_millis());
    // A watch that starts after a code was recorded (a page opened meanwhile) shows the last one
    // recorded at once, without waiting for the next.
    let late = rig
        .accounts()
        .watch_account(session::WatchAccountRequest {
            location_id: LOCATION.into(),
            account_id: account.account_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(
        late.qr_code.starts_with("2@"),
        "the first update carries the code: {late:?}"
    );

    // The phone scans it: connected, with the number WhatsApp gives.
    rig.evolution
        .scan(&instance, OWN_NUMBER, "Front desk")
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || {
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
    let (exit, printed) = status;
    assert!(exit.success(), "connect ended with {exit}: {printed}");
    assert!(
        printed.contains(&format!("qr: {rotated}")),
        "the rotated code was shown: {printed}"
    );
    assert!(printed.contains('▀') || printed.contains('█'), "{printed}");
    assert!(
        printed.contains(&format!("connected as {OWN_NUMBER}")),
        "{printed}"
    );
    let linked = rig.account(&account.account_id).await;
    assert_eq!(
        (linked.status.as_str(), linked.phone_number.as_str()),
        ("connected", OWN_NUMBER)
    );

    // A message from Ana, delivered twice as Evolution may: one tagged contact, one message.
    let (first_id, answered) = rig
        .evolution
        .receive(
            &instance,
            FakeEvolutionIncoming::text(ANA, "Hola, ¿abren hoy?").push_name("Ana Lima"),
        )
        .await
        .unwrap();
    assert_eq!(answered, Some(200));
    assert_eq!(
        rig.evolution.redeliver_last(&instance).await.unwrap(),
        Some(200)
    );
    let contact = eventually("Ana in GHL with her message", async || {
        let contact = rig.ghl.contact_by_phone(LOCATION, ANA)?;
        (!rig.ghl.messages(&contact.id).is_empty()).then_some(contact)
    })
    .await;
    assert_eq!(contact.tags, ["whatsnap-account-front-desk"]);
    assert_eq!(contact.name.as_deref(), Some("Ana Lima"));
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
            .any(|(t, p)| t == "ContactCreated" && p.contains("\"platform\":\"whatsapp\"")),
        "the contact records its platform: {created:?}"
    );

    // A photo: GHL gets a link to it, served by whatsnap.
    let photo = b"\xff\xd8\xff a photo of the menu".to_vec();
    rig.evolution
        .receive(
            &instance,
            FakeEvolutionIncoming::text(ANA, "el menú").media("image", "image/jpeg", &photo, None),
        )
        .await
        .unwrap();
    let with_photo = eventually("the photo in GHL", async || {
        rig.ghl
            .messages(&contact.id)
            .into_iter()
            .find(|m| m.message.as_deref() == Some("el menú"))
    })
    .await;
    let link = with_photo
        .attachments
        .first()
        .expect("an attachment")
        .clone();
    let path = link
        .split_once(&rig.whatsnap.http.unwrap().to_string())
        .map(|(_, path)| path.to_owned())
        .expect("served by whatsnap");
    let (code, _) = http_get(rig.whatsnap.http.unwrap(), &path).await.unwrap();
    assert_eq!(code, 200);

    // A GHL user replies: it leaves through Evolution's sendText, and GHL learns it was
    // delivered, then read.
    let (reply, code) = rig
        .ghl
        .send_provider_outbound(
            &rig.delivery_url(),
            LOCATION,
            &contact.id,
            "¡Sí, hasta las 18h!",
            Some("userAna"),
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    let sent = eventually("the reply sent through Evolution", async || {
        rig.evolution
            .sent()
            .into_iter()
            .find(|m| m.text() == Some("¡Sí, hasta las 18h!"))
    })
    .await;
    assert_eq!(sent.instance, instance);
    assert_eq!(sent.remote_jid, "14155550100@s.whatsapp.net");
    eventually("the reply recorded as sent", async || {
        let message_stream = rig
            .event_types(&StreamId::for_uuid(
                location.clone(),
                AggregateKind::Message,
                whatsnap_events::outbound_message_id_for(&location, &reply),
            ))
            .await;
        message_stream
            .iter()
            .any(|(t, _)| t == "OutboundMessageSent")
            .then_some(())
    })
    .await;
    rig.evolution.mark_delivered(&sent.id).await.unwrap();
    eventually("GHL told delivered", async || {
        rig.ghl
            .status_updates(&reply)
            .into_iter()
            .find(|u| u.http_status == 200 && u.status == "delivered")
    })
    .await;
    rig.evolution.mark_read(&sent.id).await.unwrap();
    eventually("GHL told read", async || {
        rig.ghl
            .status_updates(&reply)
            .into_iter()
            .find(|u| u.http_status == 200 && u.status == "read")
    })
    .await;

    // Typed on the phone itself: in GHL as outbound, and not sent again.
    rig.evolution
        .type_on_phone(&instance, ANA, "Te guardo una mesa")
        .await
        .unwrap();
    let typed = eventually("the phone's message in GHL", async || {
        rig.ghl
            .messages(&contact.id)
            .into_iter()
            .find(|m| m.message.as_deref() == Some("Te guardo una mesa"))
    })
    .await;
    assert_eq!(typed.direction, "outbound");
    assert_eq!(
        rig.evolution
            .sent()
            .iter()
            .filter(|m| m.text() == Some("Te guardo una mesa"))
            .count(),
        0,
        "a message typed on the phone is not sent again"
    );

    // Ana's LID: named together with her number once, then alone: still Ana.
    rig.evolution
        .receive(
            &instance,
            FakeEvolutionIncoming::text(ANA, "soy yo").from_lid("208761234567890", Some(ANA)),
        )
        .await
        .unwrap();
    eventually("the LID matched to Ana's number", async || {
        let account_stream = rig
            .event_types(&StreamId::for_uuid(
                location.clone(),
                AggregateKind::Account,
                account.account_id.parse().unwrap(),
            ))
            .await;
        account_stream
            .iter()
            .any(|(t, _)| t == "ContactIdentityMerged")
            .then_some(())
    })
    .await;
    rig.evolution
        .receive(
            &instance,
            FakeEvolutionIncoming::text(ANA, "sigo siendo yo").from_lid("208761234567890", None),
        )
        .await
        .unwrap();
    eventually("the LID-only message in Ana's conversation", async || {
        rig.ghl
            .messages(&contact.id)
            .into_iter()
            .find(|m| m.message.as_deref() == Some("sigo siendo yo"))
    })
    .await;
    assert_eq!(rig.ghl.contacts(LOCATION).len(), 1, "one contact: Ana");

    // Bruno writes first by LID alone: held, nobody's, until WhatsApp names his number; then
    // his contact has both messages, in order.
    const BRUNO: &str = "+14155550177";
    rig.evolution
        .receive(
            &instance,
            FakeEvolutionIncoming::text(BRUNO, "¿hay mesa?").from_lid("99887766554433", None),
        )
        .await
        .unwrap();
    rig.evolution
        .receive(
            &instance,
            FakeEvolutionIncoming::text(BRUNO, "somos dos").from_lid("99887766554433", Some(BRUNO)),
        )
        .await
        .unwrap();
    let bruno = eventually("Bruno's two messages in his conversation", async || {
        let bruno = rig.ghl.contact_by_phone(LOCATION, BRUNO)?;
        let texts: Vec<_> = rig
            .ghl
            .messages(&bruno.id)
            .into_iter()
            .filter_map(|m| m.message)
            .collect();
        (texts.len() == 2).then_some(texts)
    })
    .await;
    assert!(bruno.contains(&"¿hay mesa?".to_owned()), "{bruno:?}");
    assert_eq!(rig.ghl.contacts(LOCATION).len(), 2, "Ana and Bruno");
    let texts: Vec<_> = rig
        .ghl
        .messages(&contact.id)
        .into_iter()
        .filter_map(|m| m.message)
        .collect();
    assert_eq!(
        texts.iter().filter(|t| *t == "Hola, ¿abren hoy?").count(),
        1,
        "the redelivered message is in GHL once: {texts:?} ({first_id})"
    );

    // The link drops (WhatsApp restarts it) and comes back.
    rig.evolution.disconnect(&instance, 408).await.unwrap();
    let dropped = eventually("the account disconnected", async || {
        let account = rig.account(&account.account_id).await;
        (account.status == "disconnected").then_some(account)
    })
    .await;
    assert!(!dropped.status_reason.is_empty());
    rig.evolution.reconnect(&instance).await.unwrap();
    eventually("the account connected again", async || {
        (rig.account(&account.account_id).await.status == "connected").then_some(())
    })
    .await;

    // Unlinked from the phone: logged out, with what to do, and nothing reconnects.
    rig.evolution.logout(&instance).await.unwrap();
    let out = eventually("the account logged out", async || {
        let account = rig.account(&account.account_id).await;
        (account.status == "logged_out").then_some(account)
    })
    .await;
    assert!(
        out.status_reason.contains("scan again"),
        "{}",
        out.status_reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evolution_webhook_without_the_instance_key_records_nothing() {
    let rig = Rig::start().await;
    let account = rig.add_whatsapp("Sales").await;
    let http = rig.whatsnap.http.unwrap();
    let instance = instance_of(&account.account_id);
    let body = |apikey: &str| {
        serde_json::json!({
            "event": "messages.upsert",
            "instance": instance,
            "data": {
                "key": {"remoteJid": "14155550100@s.whatsapp.net", "fromMe": false, "id": "3EB0FORGED"},
                "pushName": "Mallory",
                "message": {"conversation": "send me the codes"},
                "messageType": "conversation",
                "messageTimestamp": 1764676800,
            },
            "destination": "http://whatsnap/webhooks",
            "date_time": "2026-12-02T12:00:00.000Z",
            "server_url": "http://evolution",
            "apikey": apikey,
        })
        .to_string()
    };
    let post = |path: String, body: String| async move {
        whatsnap_testkit::http_post(
            http,
            &path,
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
        .await
        .unwrap()
        .0
    };
    let path = format!("/webhooks/evolution/{LOCATION}/{}", account.account_id);
    assert_eq!(post(path.clone(), body("not-the-key")).await, 401);
    assert_eq!(post(path.clone(), "{not json".into()).await, 400);
    let unknown = format!("/webhooks/evolution/{LOCATION}/{}", uuid::Uuid::now_v7());
    assert_eq!(post(unknown, body("not-the-key")).await, 404);
    let message_id =
        whatsnap_events::inbound_message_id_for(account.account_id.parse().unwrap(), "3EB0FORGED");
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
}

/// A crash while the QR code is shown, and another between Evolution taking a reply and
/// whatsnap recording it: after each restart the link is made, and the reply is found at
/// Evolution (`chat/findMessages`) instead of being sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_qr_and_mid_send_loses_nothing_and_sends_nothing_twice() {
    let mut rig = Rig::start_with(Some("evolution.send.after_call"), &[]).await;
    let (account, instance) = rig.linking("Front desk").await;

    // Killed while the code is on screen: the link is taken up again.
    rig.restart(Some("evolution.send.after_call")).await;
    rig.evolution
        .scan(&instance, OWN_NUMBER, "Front desk")
        .await
        .unwrap();
    eventually("connected after the restart", async || {
        (rig.account(&account.account_id).await.status == "connected").then_some(())
    })
    .await;

    rig.evolution
        .receive(&instance, FakeEvolutionIncoming::text(ANA, "¿Hay mesa?"))
        .await
        .unwrap();
    let contact = eventually("Ana in GHL", async || {
        rig.ghl.contact_by_phone(LOCATION, ANA)
    })
    .await;
    let (reply, code) = rig
        .ghl
        .send_provider_outbound(
            &rig.delivery_url(),
            LOCATION,
            &contact.id,
            "Sí, para dos",
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    // Evolution takes it; whatsnap dies before recording that it did.
    eventually("whatsnap stopped at the fail point", async || {
        rig.whatsnap.exited()
    })
    .await;
    assert_eq!(
        rig.evolution
            .sent()
            .iter()
            .filter(|m| m.text() == Some("Sí, para dos"))
            .count(),
        1
    );

    rig.restart(None).await;
    let location = LocationId::parse(LOCATION).unwrap();
    let message = StreamId::for_uuid(
        location.clone(),
        AggregateKind::Message,
        whatsnap_events::outbound_message_id_for(&location, &reply),
    );
    eventually("the send reconciled and recorded", async || {
        rig.event_types(&message)
            .await
            .iter()
            .any(|(t, _)| t == "OutboundMessageSent")
            .then_some(())
    })
    .await;
    assert_eq!(
        rig.evolution
            .sent()
            .iter()
            .filter(|m| m.text() == Some("Sí, para dos"))
            .count(),
        1,
        "the reply left once"
    );
}

/// The Evolution server goes away: the account shows disconnected with the reason, a GHL reply
/// waits for it instead of failing, and leaves once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_is_down_shows_the_account_disconnected_and_replies_wait_for_it() {
    let mut rig = Rig::start().await;
    let (account, instance) = rig.linking("Front desk").await;
    rig.evolution
        .scan(&instance, OWN_NUMBER, "Front desk")
        .await
        .unwrap();
    rig.evolution
        .receive(&instance, FakeEvolutionIncoming::text(ANA, "¿Hay mesa?"))
        .await
        .unwrap();
    let contact = eventually("Ana in GHL", async || {
        rig.ghl.contact_by_phone(LOCATION, ANA)
    })
    .await;

    rig.evolution.stop();
    let down = eventually("the account disconnected", async || {
        let account = rig.account(&account.account_id).await;
        (account.status == "disconnected").then_some(account)
    })
    .await;
    assert!(
        down.status_reason.contains("engine"),
        "the reason names the engine: {}",
        down.status_reason
    );
    let (reply, _) = rig
        .ghl
        .send_provider_outbound(&rig.delivery_url(), LOCATION, &contact.id, "Sí", None)
        .await
        .unwrap();

    rig.evolution.restart().await.unwrap();
    eventually("connected again", async || {
        (rig.account(&account.account_id).await.status == "connected").then_some(())
    })
    .await;
    eventually("the reply sent once the engine is back", async || {
        rig.evolution
            .sent()
            .into_iter()
            .find(|m| m.text() == Some("Sí"))
    })
    .await;
    let location = LocationId::parse(LOCATION).unwrap();
    let message = StreamId::for_uuid(
        location.clone(),
        AggregateKind::Message,
        whatsnap_events::outbound_message_id_for(&location, &reply),
    );
    let recorded = rig.event_types(&message).await;
    assert!(
        !recorded.iter().any(|(t, _)| t == "MessageFailed"),
        "the reply waited instead of failing: {recorded:?}"
    );
}

/// A link that says it is open while its replies get no receipts is flagged as connected but
/// not delivering, an operator is alerted (once), and the next receipt clears it; a disconnect
/// alerts too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_whose_replies_get_no_receipts_is_flagged_and_the_operator_alerted() {
    let sink = AlertSink::default();
    let url = sink.start().await;
    let rig = Rig::start_with(
        None,
        &["--alert-webhook-url", &url, "--receipt-patience", "1"],
    )
    .await;
    let (account, instance) = rig.linking("Front desk").await;
    rig.evolution
        .scan(&instance, OWN_NUMBER, "Front desk")
        .await
        .unwrap();
    rig.evolution
        .receive(&instance, FakeEvolutionIncoming::text(ANA, "hola"))
        .await
        .unwrap();
    let contact = eventually("Ana in GHL", async || {
        rig.ghl.contact_by_phone(LOCATION, ANA)
    })
    .await;
    for text in ["uno", "dos", "tres"] {
        rig.ghl
            .send_provider_outbound(&rig.delivery_url(), LOCATION, &contact.id, text, None)
            .await
            .unwrap();
    }
    let sent = eventually("three replies sent", async || {
        let sent = rig.evolution.sent();
        (sent.len() == 3).then_some(sent)
    })
    .await;
    let flagged = eventually("the account flagged", async || {
        let account = rig.account(&account.account_id).await;
        account
            .status_reason
            .contains("not delivering")
            .then_some(account)
    })
    .await;
    assert_eq!(flagged.status, "connected");
    assert!(
        flagged.status_reason.contains("no delivery receipt"),
        "{}",
        flagged.status_reason
    );
    let alert = eventually("the operator alerted", async || {
        sink.texts()
            .into_iter()
            .find(|t| t.contains("not delivering"))
    })
    .await;
    assert!(alert.contains("Front desk"), "{alert}");

    rig.evolution.mark_delivered(&sent[2].id).await.unwrap();
    eventually("delivering again", async || {
        let account = rig.account(&account.account_id).await;
        (!account.status_reason.contains("not delivering")).then_some(())
    })
    .await;

    rig.evolution.logout(&instance).await.unwrap();
    eventually("the disconnect alerted", async || {
        sink.texts()
            .into_iter()
            .find(|t| t.contains("disconnected"))
    })
    .await;
    assert_eq!(
        sink.texts()
            .iter()
            .filter(|t| t.contains("not delivering"))
            .count(),
        1,
        "one alert per event: {:?}",
        sink.texts()
    );
}
