//! The crash suite: a real `whatsnap` killed at every named fail point of every effect (before
//! its intent is recorded, before the call, after the call, after its outcome is recorded), on
//! both backends, then started again on the same data while the providers deliver again what
//! was not acknowledged. What the fake GHL and the fake Twilio received is then compared with
//! what was sent: nothing lost, nothing twice.
//!
//! One tenant's outage: a Twilio account that never answers delays only its own replies.
//!
//! And the scenario a user saw: 200 signed Twilio webhooks to one location, `SIGKILL` half-way,
//! a restart, Twilio's retries. `WHATSNAP_CRASH_RUNS=20` plays it twenty times in a row (the
//! long form, see the README); CI plays it once per backend.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::Channel;
use whatsnap_testkit::{
    FakeGhl, FakeTwilio, FakeTwilioAccount, TestBackend, TwilioText, Whatsnap, eventually_within,
    free_port,
};

const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token-of-the-agency";
const SALES: &str = "+15005550006";
const LOCATION: &str = "locCrash";
const PROVIDER: &str = "whatsnapProvider0001";
/// The customer the reply goes to; the other two only write.
const CUSTOMERS: [&str; 3] = ["+14155550100", "+14155550101", "+14155550102"];
const REPLY: &str = "Yes, until 6pm";
/// How long one step may take before the test says which one hung.
const PATIENCE: Duration = Duration::from_secs(60);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

/// The fakes, the data and the addresses that outlive one `whatsnap` process.
struct World {
    backend: TestBackend,
    ghl: FakeGhl,
    twilio: FakeTwilio,
    grpc: SocketAddr,
    http: SocketAddr,
}

/// The process died: the step has to be played again after a restart.
#[derive(Debug)]
struct Died;

impl World {
    async fn new(distributed: bool) -> Self {
        let ghl = FakeGhl::start().await.unwrap();
        let twilio = FakeTwilio::start().await.unwrap();
        twilio.add_account(FakeTwilioAccount {
            sid: SID.into(),
            auth_token: TOKEN.into(),
            status: "active".into(),
            numbers: vec![(SALES.into(), true)],
        });
        let localhost = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            // After a crash, the distributed read models catch up on the shared pages (of eight
            // events here, from any backlog) before their consumers take over.
            backend: match distributed {
                true => TestBackend::distributed_paged(8).await,
                false => TestBackend::embedded().await,
            },
            ghl,
            twilio,
            grpc: localhost(free_port()),
            http: localhost(free_port()),
        }
    }

    /// `whatsnap serve` on the world's data and ports; `failpoints` armed when given.
    fn start(&self, failpoints: Option<&str>, name: &str) -> Whatsnap {
        self.start_with(failpoints, &[], name)
    }

    fn start_with(&self, failpoints: Option<&str>, extra: &[&str], name: &str) -> Whatsnap {
        let mut args = self.backend.args();
        let (grpc, http) = (self.grpc.to_string(), self.http.to_string());
        let public = format!("http://{}", self.http);
        let (ghl, twilio, key) = (
            self.ghl.base_url(),
            self.twilio.base_url(),
            self.ghl.ed25519_public_key_pem(),
        );
        args.extend(
            [
                "--secret-key",
                SECRET_KEY,
                "--grpc-addr",
                &grpc,
                "--http-addr",
                &http,
                "--public-url",
                &public,
                "--twilio-base-url",
                &twilio,
                "--ghl-api-url",
                &ghl,
                "--ghl-webhook-ed25519-key",
                &key,
                "--ghl-conversation-provider-id",
                PROVIDER,
                "--ghl-max-backoff",
                "1",
            ]
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned()),
        );
        let env: Vec<(&str, String)> = failpoints
            .map(|points| ("WHATSNAP_FAILPOINTS", points.to_owned()))
            .into_iter()
            .collect();
        Whatsnap::serve_with_env(binary(), &args, &env, name).unwrap()
    }

    async fn channel(&self) -> Channel {
        whatsnap_testkit::channel_to(self.grpc, whatsnap_testkit::ADMIN_TOKEN).await
    }

    /// The location connected and its Sales account added: done once, before any crash.
    async fn set_up(&self) -> session::Account {
        self.set_up_location(LOCATION, SID, TOKEN, SALES).await
    }

    /// `location` connected to GHL, with a Twilio account of `sid` on `number`.
    async fn set_up_location(
        &self,
        location: &str,
        sid: &str,
        token: &str,
        number: &str,
    ) -> session::Account {
        self.connect_private_token(location).await;
        self.add_account(location, sid, token, number).await
    }

    async fn connect_private_token(&self, location: &str) {
        let channel = self.channel().await;
        let pit = format!("pit-{location}-0000-0000");
        self.ghl.add_private_token(location, &pit);
        ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(channel.clone())
            .connect_private_token(ghlsync::ConnectPrivateTokenRequest {
                location_id: location.into(),
                token: pit,
                company_id: FakeGhl::COMPANY_ID.into(),
            })
            .await
            .unwrap();
    }

    async fn add_account(
        &self,
        location: &str,
        sid: &str,
        token: &str,
        number: &str,
    ) -> session::Account {
        session::session_service_client::SessionServiceClient::new(self.channel().await)
            .add_account(session::AddAccountRequest {
                location_id: location.into(),
                kind: session::AccountKind::Twilio as i32,
                name: "Sales".into(),
                phone_number: number.into(),
                twilio: Some(session::TwilioCredentials {
                    account_sid: sid.into(),
                    auth_token: token.into(),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Delivers a text as Twilio does; `Err` when nothing acknowledged it (Twilio retries).
    async fn text(
        &self,
        account: &session::Account,
        message_sid: &str,
        from: &str,
        body: &str,
    ) -> Result<(), Died> {
        self.text_as((SID, TOKEN), account, message_sid, from, body)
            .await
    }

    /// As [`World::text`], to an account of the Twilio account `sid` with `token`.
    async fn text_as(
        &self,
        (sid, token): (&str, &str),
        account: &session::Account,
        message_sid: &str,
        from: &str,
        body: &str,
    ) -> Result<(), Died> {
        let path = format!(
            "/webhooks/twilio/{}/{}/inbound",
            account.location_id, account.account_id
        );
        let text = TwilioText {
            account_sid: sid,
            message_sid,
            from,
            to: &account.phone_number,
            body,
            extra: &[],
        };
        match text.post(self.http, &path, token).await {
            Ok((200, _)) => Ok(()),
            _ => Err(Died),
        }
    }

    /// The GHL messages of each customer's contact, by text.
    fn ghl_messages(&self) -> HashMap<String, Vec<String>> {
        CUSTOMERS
            .iter()
            .filter_map(|phone| {
                let contact = self.ghl.contact_by_phone(LOCATION, phone)?;
                let texts = self
                    .ghl
                    .messages(&contact.id)
                    .into_iter()
                    .filter(|m| m.direction == "inbound")
                    .filter_map(|m| m.message)
                    .collect();
                Some(((*phone).to_owned(), texts))
            })
            .collect()
    }
}

/// Waits for `check` while the process lives: `Err(Died)` as soon as it has exited.
async fn until<T>(
    whatsnap: &mut Whatsnap,
    what: &str,
    check: impl AsyncFn() -> Option<T>,
) -> Result<T, Died> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(found) = check().await {
            return Ok(found);
        }
        if whatsnap.exited().is_some() {
            return Err(Died);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {PATIENCE:?} for {what}; log: {}",
            std::fs::read_to_string(&whatsnap.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the customers write: two texts each.
fn texts() -> Vec<(String, &'static str, String)> {
    CUSTOMERS
        .iter()
        .enumerate()
        .flat_map(|(c, phone)| {
            (0..2).map(move |n| {
                (
                    format!("SM{c:016}{n:016}"),
                    *phone,
                    format!("text {n} from customer {c}"),
                )
            })
        })
        .collect()
}

/// The whole story, from the top; every step may be played again after a crash, as the
/// providers would deliver again what was not acknowledged.
async fn play(
    world: &World,
    whatsnap: &mut Whatsnap,
    account: &session::Account,
    reply: &mut Option<serde_json::Value>,
) -> Result<(), Died> {
    for (sid, from, body) in texts() {
        world.text(account, &sid, from, &body).await?;
    }
    let customer = CUSTOMERS[0];
    let contact = until(whatsnap, "the customers' texts in GHL", async || {
        let all = world.ghl_messages();
        (all.len() == CUSTOMERS.len() && all.values().all(|texts| texts.len() >= 2))
            .then(|| world.ghl.contact_by_phone(LOCATION, customer))
            .flatten()
    })
    .await?;
    // A GHL user replies; GHL delivers it again until acknowledged.
    let payload = match reply {
        Some(payload) => payload.clone(),
        None => {
            let delivered = world
                .ghl
                .send_provider_outbound(
                    &format!("http://{}/webhooks/ghl/delivery", world.http),
                    LOCATION,
                    &contact.id,
                    REPLY,
                    Some("userAna"),
                )
                .await;
            let status = delivered.as_ref().map_or(0, |(_, status)| *status);
            // GHL holds the message whether or not its delivery was answered.
            let id = world
                .ghl
                .messages(&contact.id)
                .into_iter()
                .rfind(|m| m.direction == "outbound" && m.message.as_deref() == Some(REPLY))
                .expect("GHL keeps the reply")
                .id;
            let payload = serde_json::json!({
                "contactId": contact.id, "locationId": LOCATION, "messageId": id,
                "type": "SMS", "phone": customer, "message": REPLY, "attachments": [],
                "userId": "userAna",
            });
            *reply = Some(payload.clone());
            if status != 200 {
                return Err(Died);
            }
            payload
        }
    };
    let delivery = format!("http://{}/webhooks/ghl/delivery", world.http);
    match world
        .ghl
        .post_signed(&delivery, payload.to_string().as_bytes())
        .await
    {
        Ok(200) => {}
        _ => return Err(Died),
    }
    let sent = until(whatsnap, "the reply sent by Twilio", async || {
        world.twilio.sent().into_iter().find(|m| m.to == customer)
    })
    .await?;
    match world
        .twilio
        .report_status(&sent.sid, "delivered", None)
        .await
    {
        Ok(200) => {}
        _ => return Err(Died),
    }
    let ghl_message_id = payload["messageId"].as_str().unwrap().to_owned();
    until(whatsnap, "GHL told the reply was delivered", async || {
        world
            .ghl
            .status_updates(&ghl_message_id)
            .into_iter()
            .find(|u| u.http_status == 200 && u.status == "delivered")
    })
    .await?;
    Ok(())
}

/// Kills whatsnap at `point`, starts it again, plays the story to its end, and compares what
/// the fakes received with what was sent.
async fn crash_at(point: &str, distributed: bool) {
    let world = World::new(distributed).await;
    let name = format!("crash-{point}");
    let mut first = world.start(Some(point), &name);
    let account = world.set_up().await;
    let mut reply = None;
    // The story stops where the process died (or, at the last effect's final points, may just
    // have ended as it dies).
    let _ = play(&world, &mut first, &account, &mut reply).await;
    let what = format!("the fail point {point} to end the process");
    let status = eventually_within(PATIENCE, what, async || first.exited()).await;
    assert!(!status.success(), "{point}: {status:?}");
    drop(first);

    let mut second = world.start(None, &format!("{name}-again"));
    play(&world, &mut second, &account, &mut reply)
        .await
        .unwrap_or_else(|Died| panic!("whatsnap died again after {point}"));

    // Every text once in GHL, one contact per customer, one reply sent.
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for (_, from, body) in texts() {
        expected.entry(from.to_owned()).or_default().push(body);
    }
    let mut received = world.ghl_messages();
    for texts in received.values_mut() {
        texts.sort();
    }
    assert_eq!(received, expected, "{point}: the texts in GHL");
    assert_eq!(
        world.ghl.contacts(LOCATION).len(),
        CUSTOMERS.len(),
        "{point}: one GHL contact per customer"
    );
    let replies: Vec<_> = world
        .twilio
        .sent()
        .into_iter()
        .filter(|m| m.body == REPLY)
        .collect();
    assert_eq!(
        replies.len(),
        1,
        "{point}: the reply sent once: {replies:?}"
    );
    assert!(
        world.ghl.schema_violations().is_empty(),
        "{:?}",
        world.ghl.schema_violations()
    );
}

/// Every fail point of every effect, and around the appends that record what a provider or
/// GHL delivered (the webhook is not acknowledged: it comes again).
fn points() -> Vec<String> {
    let operations = [
        "ghl.contact",
        "ghl.post_message",
        "twilio.send",
        "ghl.status",
    ];
    let appends = ["InboundMessageReceived", "OutboundMessageRequested"];
    operations
        .iter()
        .flat_map(|op| {
            whatsnap_effects::failpoint::STAGES
                .iter()
                .map(move |stage| format!("{op}.{stage}"))
        })
        .chain(appends.iter().flat_map(|event| {
            ["before_append", "after_append"]
                .iter()
                .map(move |stage| format!("session.{event}.{stage}"))
        }))
        .collect()
}

async fn every_point(distributed: bool) {
    for point in points() {
        crash_at(&point, distributed).await;
    }
}

#[tokio::test]
async fn a_crash_at_any_effect_loses_nothing_and_repeats_nothing_embedded() {
    every_point(false).await;
}

#[tokio::test]
async fn a_crash_at_any_effect_loses_nothing_and_repeats_nothing_distributed() {
    every_point(true).await;
}

/// 200 texts, 8 at a time; `SIGKILL` once the 100th is acknowledged; a restart; Twilio
/// delivering again whatever was not acknowledged. Every text in GHL exactly once.
async fn two_hundred_texts_and_a_sigkill(distributed: bool, run: usize) {
    const TOTAL: usize = 200;
    let world = World::new(distributed).await;
    let mut first = world.start(None, &format!("sigkill-{run}"));
    let account = world.set_up().await;
    let customer = |n: usize| format!("+1415556{:04}", n % 20);
    let body = |n: usize| format!("message {n:03}");
    let sid = |n: usize| format!("SM{n:032}");
    let acknowledged = std::sync::Mutex::new(std::collections::HashSet::new());
    let killed = tokio::sync::Notify::new();
    let kill_at = TOTAL / 2;
    {
        use futures::StreamExt;
        let deliver = futures::stream::iter(0..TOTAL)
            .map(|n| {
                let (world, account, acknowledged, killed) =
                    (&world, &account, &acknowledged, &killed);
                let (from, text, message_sid) = (customer(n), body(n), sid(n));
                async move {
                    if world
                        .text(account, &message_sid, &from, &text)
                        .await
                        .is_ok()
                    {
                        let mut acked = acknowledged.lock().unwrap();
                        acked.insert(n);
                        if acked.len() == kill_at {
                            killed.notify_one();
                        }
                    }
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<()>>();
        tokio::select! {
            _ = deliver => panic!("all {TOTAL} delivered before the kill"),
            () = killed.notified() => first.kill().unwrap(),
        }
    }
    drop(first);
    let _second = world.start(None, &format!("sigkill-{run}-again"));
    // Twilio delivers again what was not acknowledged (and some that were).
    for n in 0..TOTAL {
        if !acknowledged.lock().unwrap().contains(&n) || n % 10 == 0 {
            world
                .text(&account, &sid(n), &customer(n), &body(n))
                .await
                .unwrap();
        }
    }
    let expected: usize = TOTAL;
    let all = eventually_within(Duration::from_secs(120), "every text in GHL", async || {
        let contacts = world.ghl.contacts(LOCATION);
        let texts: Vec<String> = contacts
            .iter()
            .flat_map(|c| world.ghl.messages(&c.id))
            .filter_map(|m| m.message)
            .collect();
        (texts.len() >= expected).then_some(texts)
    })
    .await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for text in &all {
        *counts.entry(text.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "run {run}: posted more than once: {twice:?}"
    );
    assert_eq!(all.len(), TOTAL, "run {run}");
    assert_eq!(world.ghl.contacts(LOCATION).len(), 20, "run {run}");
}

/// How many times the SIGKILL scenario is played: `WHATSNAP_CRASH_RUNS`, 1 by default.
fn runs() -> usize {
    std::env::var("WHATSNAP_CRASH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
}

#[tokio::test]
async fn two_hundred_texts_and_a_sigkill_half_way_embedded() {
    for run in 0..runs() {
        two_hundred_texts_and_a_sigkill(false, run).await;
    }
}

#[tokio::test]
async fn two_hundred_texts_and_a_sigkill_half_way_distributed() {
    for run in 0..runs() {
        two_hundred_texts_and_a_sigkill(true, run).await;
    }
}

/// One Twilio account that never answers holds back its own replies only: another location's
/// reply leaves meanwhile. When that account takes a send but its answer never comes, the
/// send is found in the account's message list and recorded: sent once.
async fn one_account_times_out(distributed: bool) {
    const SLOW_SID: &str = "AC99999999999999999999999999999999";
    const SLOW_TOKEN: &str = "twilio-auth-token-of-the-slow-one";
    const SLOW_NUMBER: &str = "+15005550009";
    const OTHER: &str = "locOther";
    let world = World::new(distributed).await;
    world.twilio.add_account(FakeTwilioAccount {
        sid: SLOW_SID.into(),
        auth_token: SLOW_TOKEN.into(),
        status: "active".into(),
        numbers: vec![(SLOW_NUMBER.into(), true)],
    });
    let _whatsnap = world.start_with(
        None,
        &["--twilio-timeout", "1", "--send-patience", "600"],
        "one-account-times-out",
    );
    let slow = world
        .set_up_location(OTHER, SLOW_SID, SLOW_TOKEN, SLOW_NUMBER)
        .await;
    let fine = world.set_up().await;
    let (slow_customer, fine_customer) = ("+14155550190", "+14155550191");
    world
        .text_as(
            (SLOW_SID, SLOW_TOKEN),
            &slow,
            "SMslow",
            slow_customer,
            "hello",
        )
        .await
        .unwrap();
    world
        .text(&fine, "SMfine", fine_customer, "hello")
        .await
        .unwrap();
    let contact_of = |location: &'static str, phone: &'static str| {
        let world = &world;
        async move {
            eventually_within(PATIENCE, format!("{phone} in GHL"), async || {
                world.ghl.contact_by_phone(location, phone)
            })
            .await
        }
    };
    let (slow_contact, fine_contact) = (
        contact_of(OTHER, slow_customer).await,
        contact_of(LOCATION, fine_customer).await,
    );
    world
        .twilio
        .set_send_fault(SLOW_SID, Some(whatsnap_testkit::twilio::SendFault::Hang));
    let delivery = format!("http://{}/webhooks/ghl/delivery", world.http);
    // The slow account's reply is asked for first, then the other location's.
    let (_, status) = world
        .ghl
        .send_provider_outbound(&delivery, OTHER, &slow_contact.id, "slow reply", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (_, status) = world
        .ghl
        .send_provider_outbound(&delivery, LOCATION, &fine_contact.id, "fine reply", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let sent_bodies =
        || -> Vec<String> { world.twilio.sent().into_iter().map(|m| m.body).collect() };
    eventually_within(PATIENCE, "the other location's reply sent", async || {
        sent_bodies()
            .contains(&"fine reply".to_owned())
            .then_some(())
    })
    .await;
    assert!(!sent_bodies().contains(&"slow reply".to_owned()));

    // Twilio now takes the slow account's sends but never answers: the send whose answer
    // was lost is found in the account's list and recorded, not sent again.
    world.twilio.set_send_fault(
        SLOW_SID,
        Some(whatsnap_testkit::twilio::SendFault::AcceptThenHang),
    );
    let channel = world.channel().await;
    let recorded = eventually_within(PATIENCE, "the slow reply recorded as sent", async || {
        let sent = world
            .twilio
            .sent()
            .into_iter()
            .find(|m| m.body == "slow reply")?;
        let events = whatsnap_proto::events::v1::events_service_client::EventsServiceClient::new(
            channel.clone(),
        )
        .read_stream(whatsnap_proto::events::v1::ReadStreamRequest {
            stream_id: format!(
                "{OTHER}.message.{}",
                sent.status_callback
                    .as_deref()
                    .and_then(|c| c.split("message=").nth(1))
                    .unwrap_or_default()
            ),
            from_version: 1,
            limit: 100,
        })
        .await
        .ok()?
        .into_inner()
        .events;
        events
            .iter()
            .any(|e| e.event_type == "OutboundMessageSent")
            .then_some(sent)
    })
    .await;
    let slow_sends: Vec<_> = world
        .twilio
        .sent()
        .into_iter()
        .filter(|m| m.body == "slow reply")
        .collect();
    assert_eq!(slow_sends.len(), 1, "sent once: {slow_sends:?}");
    assert_eq!(recorded.from, SLOW_NUMBER);
}

#[tokio::test]
async fn one_twilio_account_timing_out_delays_only_its_own_replies_embedded() {
    one_account_times_out(false).await;
}

#[tokio::test]
async fn one_twilio_account_timing_out_delays_only_its_own_replies_distributed() {
    one_account_times_out(true).await;
}

/// The location installs the app with OAuth; GHL expires its access token; whatsnap dies just
/// before refreshing it, or just after storing the rotated tokens. Started again, it goes on
/// with the tokens it holds: no reinstall, and the rotated refresh token works at the next
/// expiry.
async fn crash_around_a_refresh(point: &str, distributed: bool) {
    const OAUTH_APP: [&str; 6] = [
        "--ghl-client-id",
        FakeGhl::CLIENT_ID,
        "--ghl-client-secret",
        FakeGhl::CLIENT_SECRET,
        "--ghl-redirect-uri",
        "https://whatsnap.example.com/oauth/callback",
    ];
    let world = World::new(distributed).await;
    let name = format!("refresh-{point}");
    let mut first = world.start_with(Some(point), &OAUTH_APP, &name);
    let account = world.add_account(LOCATION, SID, TOKEN, SALES).await;
    let started =
        ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(world.channel().await)
            .begin_o_auth(ghlsync::BeginOAuthRequest::default())
            .await
            .unwrap()
            .into_inner();
    let redirect = world.ghl.approve_install(&started.authorize_url, LOCATION);
    let query = redirect.split_once('?').unwrap().1;
    let (status, body) =
        whatsnap_testkit::http_get(world.http, &format!("/oauth/callback?{query}"))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    let customer = CUSTOMERS[0];
    let in_ghl = |count: usize| {
        let world = &world;
        async move {
            let contact = world.ghl.contact_by_phone(LOCATION, customer)?;
            (world.ghl.messages(&contact.id).len() >= count).then_some(())
        }
    };
    world
        .text(&account, "SMrefresh1", customer, "first")
        .await
        .unwrap();
    until(&mut first, "the first text in GHL", async || {
        in_ghl(1).await
    })
    .await
    .unwrap();

    // GHL expires the token: the next call refreshes it, and the process dies at `point`.
    world.ghl.expire_access_tokens();
    let _ = world.text(&account, "SMrefresh2", customer, "second").await;
    let what = format!("the fail point {point} to end the process");
    eventually_within(PATIENCE, what, async || first.exited()).await;
    drop(first);

    let _second = world.start_with(None, &OAUTH_APP, &format!("{name}-again"));
    world
        .text(&account, "SMrefresh2", customer, "second")
        .await
        .unwrap();
    eventually_within(PATIENCE, "the second text in GHL", async || in_ghl(2).await).await;
    world.ghl.expire_access_tokens();
    world
        .text(&account, "SMrefresh3", customer, "third")
        .await
        .unwrap();
    eventually_within(PATIENCE, "the third text in GHL", async || in_ghl(3).await).await;
    let grants: Vec<String> = world
        .ghl
        .requests()
        .into_iter()
        .filter(|r| r.path == "/oauth/token")
        .map(|r| {
            let grant = r
                .body
                .as_ref()
                .and_then(|b| b.get("grant_type")?.as_str().map(str::to_owned));
            format!("{} {}", grant.unwrap_or_default(), r.status)
        })
        .collect();
    // No refresh token was spent twice, and none was refused.
    assert!(
        grants.iter().all(|g| g.ends_with(" 200")),
        "{point}: {grants:?}"
    );
    let contact = world.ghl.contact_by_phone(LOCATION, customer).unwrap();
    let mut texts: Vec<String> = world
        .ghl
        .messages(&contact.id)
        .into_iter()
        .filter_map(|m| m.message)
        .collect();
    texts.sort();
    assert_eq!(texts, ["first", "second", "third"], "{point}");
}

#[tokio::test]
async fn a_crash_around_a_token_refresh_never_needs_a_reinstall() {
    for distributed in [false, true] {
        for point in ["ghl.refresh.before_call", "ghl.refresh.after_outcome"] {
            crash_around_a_refresh(point, distributed).await;
        }
    }
}
