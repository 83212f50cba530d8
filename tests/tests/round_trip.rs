//! The round trip, end to end, with the real binary against the fake GHL and the fake Twilio:
//! a text to a Twilio number becomes one GHL contact with the account's tag and one message in
//! its conversation; a reply from GHL leaves from the account the contact's tags name, and its
//! delivery comes back to GHL; GHL being down or rate limiting a location loses nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use whatsnap_proto::events::v1 as events;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::Channel;
use whatsnap_testkit::{
    FakeGhl, FakeTwilio, FakeTwilioAccount, TestBackend, TwilioText, Whatsnap, eventually,
    eventually_within, http_post,
};

const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token-of-the-agency";
const SALES: &str = "+15005550006";
const SUPPORT: &str = "+15005550007";
const PROVIDER: &str = "whatsnapProvider0001";
/// whatsnap as the fake GHL's marketplace app, for OAuth installs.
const OAUTH_APP: [&str; 6] = [
    "--ghl-client-id",
    FakeGhl::CLIENT_ID,
    "--ghl-client-secret",
    FakeGhl::CLIENT_SECRET,
    "--ghl-redirect-uri",
    "https://whatsnap.example.com/oauth/callback",
];

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The two ways whatsnap runs.
type Backend = TestBackend;

/// whatsnap with the fakes around it.
struct Rig {
    ghl: FakeGhl,
    twilio: FakeTwilio,
    whatsnap: Whatsnap,
    channel: Channel,
    http: SocketAddr,
    /// The backend's data, when the rig owns it: whatsnap opens new connections to its files as
    /// it goes, so they must outlive the process.
    backend: Option<Backend>,
}

impl Rig {
    async fn start(backend: &Backend, name: &str, extra: &[&str]) -> Self {
        let ghl = FakeGhl::start().await.unwrap();
        let twilio = FakeTwilio::start().await.unwrap();
        twilio.add_account(FakeTwilioAccount {
            sid: SID.into(),
            auth_token: TOKEN.into(),
            status: "active".into(),
            numbers: vec![(SALES.into(), true), (SUPPORT.into(), true)],
        });
        let mut list = backend.args();
        list.extend(args(&[
            "--secret-key",
            SECRET_KEY,
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--twilio-base-url",
            &twilio.base_url(),
            "--ghl-api-url",
            &ghl.base_url(),
            "--ghl-webhook-ed25519-key",
            &ghl.ed25519_public_key_pem(),
            "--ghl-conversation-provider-id",
            PROVIDER,
            "--ghl-max-backoff",
            "1",
            "--max-accounts-per-location",
            "3",
        ]));
        list.extend(args(extra));
        let whatsnap = Whatsnap::serve(binary(), &list, name).unwrap();
        let channel = whatsnap.channel().await;
        let http = whatsnap.http.unwrap();
        Self {
            ghl,
            twilio,
            whatsnap,
            channel,
            http,
            backend: None,
        }
    }

    fn delivery_url(&self) -> String {
        format!("http://{}/webhooks/ghl/delivery", self.http)
    }

    fn ghl_webhook_url(&self) -> String {
        format!("http://{}/webhooks/ghl", self.http)
    }

    /// Connects a location with a Private Integration Token the fake GHL knows.
    async fn connect(&self, location: &str) {
        let token = format!("pit-{location}-0000-0000");
        self.ghl.add_private_token(location, &token);
        ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(self.channel.clone())
            .connect_private_token(ghlsync::ConnectPrivateTokenRequest {
                location_id: location.into(),
                token,
                company_id: FakeGhl::COMPANY_ID.into(),
            })
            .await
            .unwrap();
    }

    async fn add_account(&self, location: &str, name: &str, number: &str) -> session::Account {
        session::session_service_client::SessionServiceClient::new(self.channel.clone())
            .add_account(session::AddAccountRequest {
                location_id: location.into(),
                kind: session::AccountKind::Twilio as i32,
                name: name.into(),
                phone_number: number.into(),
                twilio: Some(session::TwilioCredentials {
                    account_sid: SID.into(),
                    auth_token: TOKEN.into(),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Delivers a text to an account as Twilio does: a signed form. Returns the HTTP status.
    async fn text(
        &self,
        location: &str,
        account: &session::Account,
        message_sid: &str,
        from: &str,
        body: &str,
    ) -> u16 {
        self.text_with(location, account, message_sid, from, body, &[])
            .await
    }

    /// As [`Rig::text`], with more of Twilio's parameters (e.g. `ProfileName`).
    async fn text_with(
        &self,
        location: &str,
        account: &session::Account,
        message_sid: &str,
        from: &str,
        body: &str,
        extra: &[(&str, &str)],
    ) -> u16 {
        self.text_signed_with(TOKEN, location, account, message_sid, from, body, extra)
            .await
    }

    /// As [`Rig::text_with`], signed with `token` (Twilio signs with the account's current Auth
    /// Token).
    #[allow(clippy::too_many_arguments)]
    async fn text_signed_with(
        &self,
        token: &str,
        location: &str,
        account: &session::Account,
        message_sid: &str,
        from: &str,
        body: &str,
        extra: &[(&str, &str)],
    ) -> u16 {
        let path = format!("/webhooks/twilio/{location}/{}/inbound", account.account_id);
        let text = TwilioText {
            account_sid: SID,
            message_sid,
            from,
            to: &account.phone_number,
            body,
            extra,
        };
        let (status, body) = text.post(self.http, &path, token).await.unwrap();
        assert!(status == 200 || status >= 400, "{status} {body}");
        status
    }

    async fn events_of(&self, stream: String) -> Vec<String> {
        events::events_service_client::EventsServiceClient::new(self.channel.clone())
            .read_stream(events::ReadStreamRequest {
                stream_id: stream,
                from_version: 1,
                limit: 100,
            })
            .await
            .unwrap()
            .into_inner()
            .events
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }
}

/// The one sent SMS of the fake Twilio to `to` beyond the first `skip`.
async fn sent_to(rig: &Rig, to: &str, count: usize) -> Vec<whatsnap_testkit::SentSms> {
    eventually(&format!("{count} SMS sent to {to}"), async || {
        let sent: Vec<_> = rig
            .twilio
            .sent()
            .into_iter()
            .filter(|m| m.to == to)
            .collect();
        (sent.len() >= count).then_some(sent)
    })
    .await
}

/// The accepted status GHL last received for its message.
async fn ghl_status(
    rig: &Rig,
    ghl_message_id: &str,
    wanted: &str,
) -> whatsnap_testkit::ghl::StatusUpdate {
    eventually(
        &format!("GHL told {wanted} for {ghl_message_id}"),
        async || {
            rig.ghl
                .status_updates(ghl_message_id)
                .into_iter()
                .rfind(|u| u.http_status == 200 && u.status == wanted)
        },
    )
    .await
}

async fn round_trip(backend: Backend, name: &str) {
    const LOCATION: &str = "locRoundTrip";
    const CUSTOMER: &str = "+14155550100";
    let rig = Rig::start(&backend, name, &[]).await;
    rig.connect(LOCATION).await;
    let sales = rig.add_account(LOCATION, "Sales", SALES).await;
    let support = rig.add_account(LOCATION, "Support", SUPPORT).await;
    assert_eq!(sales.tag, "whatsnap-account-sales");
    assert_eq!(support.tag, "whatsnap-account-support");

    // A text from a new number, delivered three times as Twilio may; the sender's name comes
    // with it when the platform shows one.
    for _ in 0..3 {
        let status = rig
            .text_with(
                LOCATION,
                &sales,
                "SM10000000000000000000000000000001",
                CUSTOMER,
                "Are you open today?",
                &[("ProfileName", "Ana Lima")],
            )
            .await;
        assert_eq!(status, 200);
    }
    let contact = eventually("the contact in GHL with its message", async || {
        let contact = rig.ghl.contact_by_phone(LOCATION, CUSTOMER)?;
        (!rig.ghl.messages(&contact.id).is_empty()).then_some(contact)
    })
    .await;
    assert_eq!(contact.tags, ["whatsnap-account-sales"]);
    assert_eq!(contact.phone.as_deref(), Some(CUSTOMER));
    assert_eq!(contact.name.as_deref(), Some("Ana Lima"));
    // A later text from the same customer reaches GHL after anything the three deliveries
    // caused (a contact's messages go in order): once it is there, a duplicate would show.
    let status = rig
        .text(
            LOCATION,
            &sales,
            "SM10000000000000000000000000000003",
            CUSTOMER,
            "Thanks!",
        )
        .await;
    assert_eq!(status, 200);
    let messages = eventually("the later text in the conversation", async || {
        let messages = rig.ghl.messages(&contact.id);
        messages
            .iter()
            .any(|m| m.message.as_deref() == Some("Thanks!"))
            .then_some(messages)
    })
    .await;
    assert_eq!(rig.ghl.contacts(LOCATION).len(), 1, "one contact in GHL");
    let bodies: Vec<_> = messages.iter().map(|m| m.message.as_deref()).collect();
    assert_eq!(
        bodies,
        [Some("Are you open today?"), Some("Thanks!")],
        "each text once in the conversation: {messages:?}"
    );
    let inbound = &messages[0];
    assert_eq!(inbound.message.as_deref(), Some("Are you open today?"));
    assert_eq!(inbound.direction, "inbound");
    assert_eq!(inbound.message_type, "SMS");
    assert_eq!(inbound.conversation_provider_id.as_deref(), Some(PROVIDER));
    assert!(
        inbound.alt_id.is_some(),
        "whatsnap's message id goes as altId"
    );

    // A GHL user replies: it leaves from the Sales number, and GHL learns it was delivered.
    let (reply, status) = rig
        .ghl
        .send_provider_outbound(
            &rig.delivery_url(),
            LOCATION,
            &contact.id,
            "Yes, until 6pm",
            Some("userAna"),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let sent = sent_to(&rig, CUSTOMER, 1).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].from, SALES);
    assert_eq!(sent[0].body, "Yes, until 6pm");
    assert!(
        sent[0].status_callback.is_some(),
        "sent with a StatusCallback"
    );
    assert_eq!(
        rig.twilio
            .report_status(&sent[0].sid, "delivered", None)
            .await
            .unwrap(),
        200
    );
    ghl_status(&rig, &reply, "delivered").await;
    // GHL delivering the same reply again sends nothing more.
    let repeated = serde_json::json!({
        "contactId": contact.id, "locationId": LOCATION, "messageId": reply, "type": "SMS",
        "phone": CUSTOMER, "message": "Yes, until 6pm", "attachments": [], "userId": "userAna",
    });
    let again = rig
        .ghl
        .post_signed(&rig.delivery_url(), repeated.to_string().as_bytes())
        .await
        .unwrap();
    assert_eq!(again, 200);

    // A GHL user puts the Support tag on the contact: the next reply leaves from Support, and
    // a failure Twilio reports reaches GHL with Twilio's reason.
    let status = rig
        .ghl
        .set_tags_and_notify(
            &rig.ghl_webhook_url(),
            &contact.id,
            &["whatsnap-account-sales", "whatsnap-account-support"],
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (second, _) = rig
        .ghl
        .send_provider_outbound(
            &rig.delivery_url(),
            LOCATION,
            &contact.id,
            "Support here",
            None,
        )
        .await
        .unwrap();
    let sent = sent_to(&rig, CUSTOMER, 2).await;
    assert_eq!(
        sent.len(),
        2,
        "the repeated Delivery URL call sent nothing: {sent:?}"
    );
    assert_eq!(sent[1].from, SUPPORT);
    rig.twilio
        .report_status(&sent[1].sid, "undelivered", Some(30003))
        .await
        .unwrap();
    let failed = ghl_status(&rig, &second, "failed").await;
    let error = failed
        .error
        .expect("a failure carries its reason")
        .to_string();
    assert!(
        error.contains("unreachable") && error.contains("30003"),
        "{error}"
    );

    // A picture (MMS) reaches the conversation as an attachment.
    let picture = "https://api.twilio.com/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/MM1/Media/ME1";
    let status = rig
        .text_with(
            LOCATION,
            &sales,
            "MM10000000000000000000000000000001",
            CUSTOMER,
            "",
            &[
                ("NumMedia", "1"),
                ("MediaUrl0", picture),
                ("MediaContentType0", "image/jpeg"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    let with_picture = eventually("the picture in the conversation", async || {
        rig.ghl
            .messages(&contact.id)
            .into_iter()
            .find(|m| !m.attachments.is_empty())
    })
    .await;
    assert_eq!(with_picture.attachments, [picture]);

    // Bad input changes nothing.
    let before = rig.twilio.sent().len();
    let body = br#"{"contactId":"x","locationId":"locRoundTrip","messageId":"forged1","type":"SMS","phone":"+14155550100","message":"pay now"}"#;
    let forged = rig
        .ghl
        .post_with_signature(&rig.delivery_url(), body, Some("bm90IGEgc2lnbmF0dXJl"))
        .await
        .unwrap();
    assert_eq!(forged, 401);
    let (unsigned, _) = http_post(
        rig.http,
        "/webhooks/ghl/delivery",
        &[("Content-Type", "application/json")],
        Some(body),
    )
    .await
    .unwrap();
    assert_eq!(unsigned, 401);
    let malformed = rig
        .ghl
        .post_signed(&rig.delivery_url(), b"{not json")
        .await
        .unwrap();
    assert_eq!(malformed, 400);
    let unknown = rig
        .text(
            LOCATION,
            &session::Account {
                account_id: "01a2086a-20c3-7705-8003-4b64ce7f8e21".into(),
                ..sales.clone()
            },
            "SM10000000000000000000000000000002",
            CUSTOMER,
            "hi",
        )
        .await;
    assert_eq!(unknown, 404);
    let forged_stream = format!(
        "{LOCATION}.message.{}",
        whatsnap_events::outbound_message_id_for(
            &whatsnap_events::LocationId::parse(LOCATION).unwrap(),
            "forged1"
        )
    );
    assert!(
        rig.events_of(forged_stream).await.is_empty(),
        "a forged reply was recorded"
    );

    // A reply to a contact whatsnap never heard from, and one to a contact whose account tags
    // were all removed in GHL, fail in GHL with a reason a user can act on.
    let stranger = rig
        .ghl
        .add_contact(LOCATION, "+14155550199", Some("Stranger"));
    let (to_stranger, _) = rig
        .ghl
        .send_provider_outbound(&rig.delivery_url(), LOCATION, &stranger, "Hello?", None)
        .await
        .unwrap();
    let failed = ghl_status(&rig, &to_stranger, "failed").await;
    assert!(failed.error.unwrap().to_string().contains("never messaged"));
    rig.ghl
        .set_tags_and_notify(&rig.ghl_webhook_url(), &contact.id, &["vip"])
        .await
        .unwrap();
    let (untagged, _) = rig
        .ghl
        .send_provider_outbound(
            &rig.delivery_url(),
            LOCATION,
            &contact.id,
            "Still there?",
            None,
        )
        .await
        .unwrap();
    let failed = ghl_status(&rig, &untagged, "failed").await;
    assert!(
        failed
            .error
            .unwrap()
            .to_string()
            .contains("no whatsnap account tag")
    );
    assert_eq!(rig.twilio.sent().len(), before, "nothing more was sent");

    assert!(
        rig.ghl.schema_violations().is_empty(),
        "{:?}",
        rig.ghl.schema_violations()
    );
    assert_eq!(rig.ghl.rate_limited_count(LOCATION), 0);
    drop(rig.whatsnap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_embedded() {
    round_trip(Backend::embedded().await, "round-trip-embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_distributed() {
    round_trip(Backend::distributed().await, "round-trip-distributed").await;
}

/// An operator rotates a Twilio account's Auth Token: a token Twilio refuses changes nothing;
/// the one it accepts applies at once (webhooks signed with the old token are refused, replies
/// leave with the new one), and the account keeps its id, tag and contacts.
async fn rotating_credentials(backend: Backend, name: &str) {
    const LOCATION: &str = "locRotate";
    const CUSTOMER: &str = "+14155550170";
    const NEW_TOKEN: &str = "twilio-auth-token-rotated-0001";
    let rig = Rig::start(&backend, name, &[]).await;
    rig.connect(LOCATION).await;
    let sales = rig.add_account(LOCATION, "Sales", SALES).await;
    assert_eq!(
        rig.text(
            LOCATION,
            &sales,
            "SM30000000000000000000000000000001",
            CUSTOMER,
            "Hi"
        )
        .await,
        200
    );
    let contact = eventually("the contact in GHL", async || {
        rig.ghl.contact_by_phone(LOCATION, CUSTOMER)
    })
    .await;
    let account_stream = format!("{LOCATION}.account.{}", sales.account_id);

    // `whatsnap accounts rotate-credentials`, the token on standard input (out of the shell's
    // history); returns (success, stdout, stderr).
    let rotate = |token: &str| {
        use std::io::Write as _;
        let mut child = std::process::Command::new(binary())
            .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
            .args([
                "accounts",
                "rotate-credentials",
                "--location",
                LOCATION,
                "--account",
                &sales.account_id,
                "--server",
                &rig.whatsnap.grpc_url(),
            ])
            .env_remove("TWILIO_AUTH_TOKEN")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    // A token Twilio does not know is refused with Twilio's reason, and changes nothing.
    let (ok, out, err) = rotate("not-the-new-token");
    assert!(!ok, "{out}");
    assert!(
        err.starts_with("error: ") && err.contains("Account SID or Auth Token"),
        "{err}"
    );
    assert_eq!(
        rig.events_of(account_stream.clone()).await,
        ["AccountAdded"]
    );
    assert_eq!(
        rig.text(
            LOCATION,
            &sales,
            "SM30000000000000000000000000000002",
            CUSTOMER,
            "Still me"
        )
        .await,
        200
    );

    // The token is rotated in Twilio (the old one stops working there), then in whatsnap.
    rig.twilio.add_account(FakeTwilioAccount {
        sid: SID.into(),
        auth_token: NEW_TOKEN.into(),
        status: "active".into(),
        numbers: vec![(SALES.into(), true), (SUPPORT.into(), true)],
    });
    let (ok, out, err) = rotate(NEW_TOKEN);
    assert!(ok, "{err}");
    assert!(
        out.contains("twilio credentials rotated")
            && out.contains(&sales.account_id)
            && out.contains("whatsnap-account-sales"),
        "{out}"
    );
    assert_eq!(
        rig.events_of(account_stream).await,
        ["AccountAdded", "AccountSettingsChanged"]
    );

    // Webhooks: signed with the old token, refused; with the new one, accepted.
    let old = rig
        .text(
            LOCATION,
            &sales,
            "SM30000000000000000000000000000003",
            CUSTOMER,
            "Old",
        )
        .await;
    assert_eq!(old, 403, "a webhook signed with the old token was accepted");
    let new = rig
        .text_signed_with(
            NEW_TOKEN,
            LOCATION,
            &sales,
            "SM30000000000000000000000000000004",
            CUSTOMER,
            "New",
            &[],
        )
        .await;
    assert_eq!(new, 200);
    eventually("the text signed with the new token in GHL", async || {
        rig.ghl
            .messages(&contact.id)
            .iter()
            .any(|m| m.message.as_deref() == Some("New"))
            .then_some(())
    })
    .await;

    // A reply leaves through Twilio with the new token (the fake takes no other now), from
    // the same account, and Twilio's status callback, signed with it, is taken.
    let (reply, status) = rig
        .ghl
        .send_provider_outbound(&rig.delivery_url(), LOCATION, &contact.id, "Hello!", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let sent = sent_to(&rig, CUSTOMER, 1).await;
    assert_eq!(
        (sent[0].from.as_str(), sent[0].body.as_str()),
        (SALES, "Hello!")
    );
    assert_eq!(
        rig.twilio
            .report_status(&sent[0].sid, "delivered", None)
            .await
            .unwrap(),
        200
    );
    ghl_status(&rig, &reply, "delivered").await;

    // The account is the same account: id, tag, contacts.
    let account = session::session_service_client::SessionServiceClient::new(rig.channel.clone())
        .get_account(session::GetAccountRequest {
            location_id: LOCATION.into(),
            account_id: sales.account_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (account.account_id.as_str(), account.tag.as_str()),
        (sales.account_id.as_str(), "whatsnap-account-sales")
    );
    assert_eq!(
        rig.ghl.contact_by_phone(LOCATION, CUSTOMER).unwrap().tags,
        ["whatsnap-account-sales"]
    );
    // The token is in no log.
    let log = std::fs::read_to_string(&rig.whatsnap.log).unwrap();
    assert!(!log.contains(NEW_TOKEN), "the new Auth Token is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_twilio_credentials_apply_at_once_embedded() {
    rotating_credentials(Backend::embedded().await, "rotate-embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_twilio_credentials_apply_at_once_distributed() {
    rotating_credentials(Backend::distributed().await, "rotate-distributed").await;
}

/// GHL fails every call for a while: the messages wait, and when GHL is back each arrives
/// once, in the order each contact sent them.
async fn ghl_down_then_back(backend: Backend, name: &str) {
    const LOCATION: &str = "locOutage";
    let rig = Rig::start(&backend, name, &[]).await;
    rig.connect(LOCATION).await;
    let sales = rig.add_account(LOCATION, "Sales", SALES).await;
    rig.ghl.set_down(true);
    let customers = [
        "+14155550101",
        "+14155550102",
        "+14155550103",
        "+14155550104",
    ];
    for n in 0..24 {
        let from = customers[n % customers.len()];
        let status = rig
            .text(
                LOCATION,
                &sales,
                &format!("SM2{n:031}"),
                from,
                &format!("message {n}"),
            )
            .await;
        assert_eq!(status, 200);
    }
    // GHL answers 500 to every try meanwhile; whatsnap keeps trying, and nothing gets in.
    eventually("whatsnap tried GHL again after being refused", async || {
        (rig.ghl
            .requests()
            .iter()
            .filter(|r| r.status == 500)
            .count()
            >= 3)
            .then_some(())
    })
    .await;
    assert!(rig.ghl.contacts(LOCATION).is_empty());
    rig.ghl.set_down(false);
    for (index, customer) in customers.iter().enumerate() {
        let contact = eventually(&format!("{customer}'s six messages"), async || {
            let contact = rig.ghl.contact_by_phone(LOCATION, customer)?;
            (rig.ghl.messages(&contact.id).len() >= 6).then_some(contact)
        })
        .await;
        let bodies: Vec<String> = rig
            .ghl
            .messages(&contact.id)
            .into_iter()
            .filter_map(|m| m.message)
            .collect();
        let expected: Vec<String> = (0..24)
            .filter(|n| n % customers.len() == index)
            .map(|n| format!("message {n}"))
            .collect();
        assert_eq!(bodies, expected, "each once, in order");
    }
    assert_eq!(rig.ghl.contacts(LOCATION).len(), customers.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghl_down_then_back_loses_nothing_and_keeps_order_embedded() {
    ghl_down_then_back(Backend::embedded().await, "ghl-outage-embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghl_down_then_back_loses_nothing_and_keeps_order_distributed() {
    ghl_down_then_back(Backend::distributed().await, "ghl-outage-distributed").await;
}

/// 1,000 texts across three locations while GHL rate limits one of them: the other two flow
/// meanwhile, whatsnap's own pacing provokes no 429, and every message arrives exactly once.
async fn a_thousand_messages(backend: Backend, name: &str) {
    let locations = ["locBusyA", "locBusyB", "locThrottled"];
    let rig = Rig::start(&backend, name, &[]).await;
    let mut accounts = HashMap::new();
    for location in locations {
        rig.connect(location).await;
        accounts.insert(location, rig.add_account(location, "Sales", SALES).await);
    }
    // GHL answers 429 to everything for the throttled location until told otherwise.
    rig.ghl.fail_location("locThrottled", 429);
    let mut per_location = HashMap::new();
    for n in 0..1000 {
        let location = locations[n % 3];
        let from = format!("+1415555{:04}", 200 + (n / 3) % 10);
        let status = rig
            .text(
                location,
                &accounts[location],
                &format!("SM3{n:031}"),
                &from,
                &format!("text {n}"),
            )
            .await;
        assert_eq!(status, 200);
        *per_location.entry(location).or_insert(0usize) += 1;
    }
    let count = |location: &str| -> usize {
        rig.ghl
            .contacts(location)
            .iter()
            .map(|c| rig.ghl.messages(&c.id).len())
            .sum()
    };
    for location in ["locBusyA", "locBusyB"] {
        eventually_within(
            Duration::from_secs(240),
            &format!("all of {location}'s messages in GHL"),
            async || (count(location) >= per_location[location]).then_some(()),
        )
        .await;
        assert_eq!(count(location), per_location[location], "each exactly once");
        assert_eq!(
            rig.ghl.rate_limited_count(location),
            0,
            "whatsnap's pacing provoked a 429"
        );
    }
    assert_eq!(
        count("locThrottled"),
        0,
        "the throttled location got nothing through"
    );
    rig.ghl.clear_failures();
    eventually_within(
        Duration::from_secs(240),
        "the throttled location catches up",
        async || (count("locThrottled") >= per_location["locThrottled"]).then_some(()),
    )
    .await;
    assert_eq!(count("locThrottled"), per_location["locThrottled"]);
    assert!(rig.ghl.schema_violations().is_empty());

    // An operator sees the same on /metrics: the 429s of the throttled location and none of
    // the others, what each location used of its allowance, every webhook timed, and how far
    // each projection is behind the log.
    // A post is on /metrics once its outcome is recorded, a moment after GHL has the message;
    // one whose answer was lost (a timeout under load) was found at GHL by reconciliation.
    let posted = r#"whatsnap_effect_duration_seconds_count{operation="ghl.post_message",outcome="#;
    let metrics = eventually("every post's outcome on /metrics", async || {
        let metrics = Metrics::scrape(rig.http).await;
        let crossed = metrics.sum(&format!(r#"{posted}"called"}}"#))
            + metrics.sum(&format!(r#"{posted}"reconciled"}}"#));
        (crossed >= 1000.0).then_some(metrics)
    })
    .await;
    assert!(
        metrics.value(r#"whatsnap_ghl_requests_total{location="locThrottled",status="429"}"#)
            >= 1.0
    );
    for location in ["locBusyA", "locBusyB"] {
        assert_eq!(
            metrics.sum(&format!(
                r#"whatsnap_ghl_requests_total{{location="{location}",status="429"}}"#
            )),
            0.0
        );
        let today = metrics.value(&format!(
            r#"whatsnap_ghl_daily_used{{location="{location}"}}"#
        ));
        assert!(
            today >= per_location[location] as f64,
            "{location} used {today} requests"
        );
        let window = metrics.value(&format!(
            r#"whatsnap_ghl_burst_used{{location="{location}"}}"#
        ));
        assert!(
            window <= metrics.value("whatsnap_ghl_burst_limit"),
            "{window}"
        );
    }
    assert_eq!(
        metrics.value(r#"whatsnap_webhook_duration_seconds_count{route="/webhooks/twilio/{location}/{account}/inbound",status="2xx"}"#),
        1000.0
    );
    assert!(metrics.value("whatsnap_log_head_position") > 1000.0);
    let lags = metrics.series("whatsnap_projection_lag_events{");
    assert!(lags.len() >= 5, "{lags:?}");
}

/// What `GET /metrics` answered an admin token: each sample line's name and labels, and value.
struct Metrics(Vec<(String, f64)>);

impl Metrics {
    async fn scrape(http: SocketAddr) -> Self {
        let bearer = format!("Bearer {}", whatsnap_testkit::ADMIN_TOKEN);
        let reply =
            whatsnap_testkit::http_request(http, "/metrics", &[("authorization", &bearer)], None)
                .await
                .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        Self(
            reply
                .body
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.rsplit_once(' '))
                .map(|(series, value)| (series.to_owned(), value.parse().unwrap()))
                .collect(),
        )
    }

    /// The series that start with `prefix`.
    fn series(&self, prefix: &str) -> Vec<&(String, f64)> {
        self.0
            .iter()
            .filter(|(s, _)| s.starts_with(prefix))
            .collect()
    }

    /// The value of `series`, which must be there.
    fn value(&self, series: &str) -> f64 {
        let found = self.0.iter().find(|(s, _)| s == series);
        found
            .unwrap_or_else(|| panic!("no {series} in {:#?}", self.0))
            .1
    }

    /// The value of `series`, 0 when it is not there.
    fn sum(&self, series: &str) -> f64 {
        self.0
            .iter()
            .filter(|(s, _)| s == series)
            .map(|(_, v)| v)
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_across_three_locations_with_one_rate_limited_embedded() {
    a_thousand_messages(Backend::embedded().await, "thousand-embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_across_three_locations_with_one_rate_limited_distributed() {
    a_thousand_messages(Backend::distributed().await, "thousand-distributed").await;
}

/// A location installs whatsnap through GHL's OAuth: the redirect's code becomes sealed tokens,
/// messages cross with them, and when GHL stops taking the access token whatsnap refreshes it,
/// storing the new refresh token, and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth_install_connects_the_location_and_tokens_are_refreshed() {
    const LOCATION: &str = "locOAuth";
    let backend = Backend::embedded().await;
    let rig = Rig::start(&backend, "oauth", &OAUTH_APP).await;
    let sales = rig.add_account(LOCATION, "Sales", SALES).await;

    // Installs start in the dashboard, where an agency admin is signed in.
    let (status, body) = whatsnap_testkit::http_get(rig.http, "/oauth/start")
        .await
        .unwrap();
    assert!(status == 303 || status == 307, "{status} {body}");
    // A redirect without a code, and a code GHL never issued, connect nothing.
    let (status, _) = whatsnap_testkit::http_get(rig.http, "/oauth/callback?error=access_denied")
        .await
        .unwrap();
    assert_eq!(status, 400);

    // An admin starts the install: GHL's location chooser, with whatsnap's client id and a
    // state only this install's redirect carries.
    let mut ghl_sync =
        whatsnap_proto::ghlsync::v1::ghl_sync_service_client::GhlSyncServiceClient::new(
            rig.channel.clone(),
        );
    let started = ghl_sync
        .begin_o_auth(whatsnap_proto::ghlsync::v1::BeginOAuthRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        started.authorize_url.contains(FakeGhl::CLIENT_ID)
            && started.authorize_url.contains("state="),
        "{}",
        started.authorize_url
    );
    let redirect = rig.ghl.approve_install(&started.authorize_url, LOCATION);
    let query = redirect.split_once('?').unwrap().1;
    let state = query
        .split('&')
        .find_map(|p| p.strip_prefix("state="))
        .unwrap();

    // A stranger's redirect — a real code with no state, or with a state whatsnap never gave —
    // connects nothing, and costs no call to GHL (CSRF: their code in a victim's browser).
    let strangers = rig
        .ghl
        .authorize_redirect("https://whatsnap.example.com/oauth/callback", LOCATION);
    let strangers = strangers.split_once('?').unwrap().1.to_owned();
    let exchanges = || {
        rig.ghl
            .requests()
            .into_iter()
            .filter(|r| r.path == "/oauth/token")
            .count()
    };
    for forged in [
        strangers.clone(),
        format!("{strangers}&state=made-up-by-a-stranger"),
    ] {
        let (status, body) =
            whatsnap_testkit::http_get(rig.http, &format!("/oauth/callback?{forged}"))
                .await
                .unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("not started by whatsnap"), "{body}");
    }
    assert_eq!(exchanges(), 0, "a refused redirect reached GHL");
    let (status, body) = whatsnap_testkit::http_get(
        rig.http,
        &format!("/oauth/callback?code=made-up&state={state}"),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");

    // The state was spent on the made-up code: the install starts again, and its redirect
    // connects the location, once.
    let started = ghl_sync
        .begin_o_auth(whatsnap_proto::ghlsync::v1::BeginOAuthRequest::default())
        .await
        .unwrap()
        .into_inner();
    let redirect = rig.ghl.approve_install(&started.authorize_url, LOCATION);
    let query = redirect.split_once('?').unwrap().1;
    let (status, body) = whatsnap_testkit::http_get(rig.http, &format!("/oauth/callback?{query}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(LOCATION), "{body}");
    let (status, body) = whatsnap_testkit::http_get(rig.http, &format!("/oauth/callback?{query}"))
        .await
        .unwrap();
    assert_eq!(status, 400, "the same redirect twice: {body}");

    rig.text(
        LOCATION,
        &sales,
        "SM40000000000000000000000000000001",
        "+14155550140",
        "first",
    )
    .await;
    let contact = eventually("the first message in GHL", async || {
        let contact = rig.ghl.contact_by_phone(LOCATION, "+14155550140")?;
        (rig.ghl.messages(&contact.id).len() == 1).then_some(contact)
    })
    .await;

    // GHL expires the access token: the next call gets a 401, whatsnap refreshes and retries.
    rig.ghl.expire_access_tokens();
    rig.text(
        LOCATION,
        &sales,
        "SM40000000000000000000000000000002",
        "+14155550140",
        "second",
    )
    .await;
    eventually("the second message in GHL", async || {
        (rig.ghl.messages(&contact.id).len() == 2).then_some(())
    })
    .await;
    let refreshes: Vec<_> = rig
        .ghl
        .requests()
        .into_iter()
        .filter(|r| r.path == "/oauth/token" && r.status == 200)
        .filter_map(|r| r.body?.get("grant_type")?.as_str().map(str::to_owned))
        .collect();
    assert_eq!(refreshes, ["authorization_code", "refresh_token"]);
    // And again: the rotated refresh token was kept (GHL refuses a spent one).
    rig.ghl.expire_access_tokens();
    rig.text(
        LOCATION,
        &sales,
        "SM40000000000000000000000000000003",
        "+14155550140",
        "third",
    )
    .await;
    eventually("the third message in GHL", async || {
        (rig.ghl.messages(&contact.id).len() == 3).then_some(())
    })
    .await;
    // The tokens are sealed at rest.
    let Backend::Embedded(dir) = &backend else {
        unreachable!()
    };
    let last_token = rig
        .ghl
        .requests()
        .into_iter()
        .rev()
        .find_map(|r| r.authorization)
        .unwrap();
    let token = last_token.trim_start_matches("Bearer ");
    for (file, bytes) in whatsnap_testkit::stored_files(dir.path()) {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "a GHL token is stored in clear in {}",
            file.display()
        );
    }
}

/// A new contact texts an account whose rule names one user: the GHL contact is assigned to
/// her. With her out of office, the next new contact goes to the backup user, and the trace
/// says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_contact_is_assigned_in_ghl_and_the_backup_covers_time_away() {
    use whatsnap_proto::assignment::v1 as assignment;
    const LOCATION: &str = "locAssign";
    let backend = Backend::embedded().await;
    let rig = Rig::start(&backend, "assignment", &[]).await;
    for (id, name) in [("uAna", "Ana"), ("uBen", "Ben")] {
        rig.ghl.add_user(
            LOCATION,
            whatsnap_testkit::FakeGhlUser {
                id: id.into(),
                name: name.into(),
                email: format!("{}@example.com", name.to_lowercase()),
                role: "user".into(),
                deleted: false,
            },
        );
    }
    rig.connect(LOCATION).await;
    let sales = rig.add_account(LOCATION, "Sales", SALES).await;
    let mut api =
        assignment::assignment_service_client::AssignmentServiceClient::new(rig.channel.clone());
    eventually("GHL's users in whatsnap", async || {
        let request = assignment::ListUsersRequest {
            location_id: LOCATION.into(),
        };
        let users = api
            .clone()
            .list_users(request)
            .await
            .ok()?
            .into_inner()
            .users;
        (users.len() == 2).then_some(())
    })
    .await;
    let bad = api
        .set_rules(assignment::SetRulesRequest {
            location_id: LOCATION.into(),
            account_id: sales.account_id.clone(),
            rules_json: r#"{"rules":[{"strategy":"user"}]}"#.into(),
        })
        .await
        .unwrap_err();
    assert!(bad.message().contains("rules[0]"), "{}", bad.message());
    api.set_rules(assignment::SetRulesRequest {
        location_id: LOCATION.into(),
        account_id: sales.account_id.clone(),
        rules_json: r#"{"rules":[{"strategy":"user","user":"uAna","backup":["uBen"]}]}"#.into(),
    })
    .await
    .unwrap();

    rig.text(
        LOCATION,
        &sales,
        "SM50000000000000000000000000000001",
        "+14155550160",
        "hello",
    )
    .await;
    eventually("the first contact assigned to Ana in GHL", async || {
        let contact = rig.ghl.contact_by_phone(LOCATION, "+14155550160")?;
        (contact.assigned_to.as_deref() == Some("uAna")).then_some(())
    })
    .await;

    let now = chrono::Utc::now();
    let rfc3339 = |at: chrono::DateTime<chrono::Utc>| at.to_rfc3339();
    api.set_availability(assignment::SetAvailabilityRequest {
        location_id: LOCATION.into(),
        user_id: "uAna".into(),
        out_of_office_from: rfc3339(now - chrono::Duration::hours(1)),
        out_of_office_until: rfc3339(now + chrono::Duration::days(1)),
        active: true,
        ..Default::default()
    })
    .await
    .unwrap();
    // `assignment users` shows Ana away until her return, Ben not.
    let listed = eventually("Ana listed as away", async || {
        let users = api
            .clone()
            .list_users(assignment::ListUsersRequest {
                location_id: LOCATION.into(),
            })
            .await
            .ok()?
            .into_inner()
            .users;
        users
            .iter()
            .any(|u| u.user_id == "uAna" && !u.away_until.is_empty())
            .then_some(users)
    })
    .await;
    let ben = listed.iter().find(|u| u.user_id == "uBen").unwrap();
    assert_eq!(ben.away_until, "", "Ben is not away");
    rig.text(
        LOCATION,
        &sales,
        "SM50000000000000000000000000000002",
        "+14155550161",
        "hi there",
    )
    .await;
    eventually("the second contact assigned to Ben in GHL", async || {
        let contact = rig.ghl.contact_by_phone(LOCATION, "+14155550161")?;
        (contact.assigned_to.as_deref() == Some("uBen")).then_some(())
    })
    .await;
    let explained = api
        .explain(assignment::ExplainRequest {
            location_id: LOCATION.into(),
            phone: "+14155550161".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let decision = &explained.decisions[0];
    assert_eq!(decision.user_id, "uBen");
    assert!(
        decision.reason.contains("out of office"),
        "{}",
        decision.reason
    );
    let ana = decision
        .candidates
        .iter()
        .find(|c| c.user_id == "uAna")
        .unwrap();
    assert!(
        ana.passed_over.starts_with("out of office until"),
        "{}",
        ana.passed_over
    );
    // The trace is a projection: it shows the decision once it has read that far.
    let assigned = eventually("the decision in the contact's trace", async || {
        events::events_service_client::EventsServiceClient::new(rig.channel.clone())
            .contact_history(events::ContactHistoryRequest {
                location_id: LOCATION.into(),
                phone: "+14155550161".into(),
            })
            .await
            .ok()?
            .into_inner()
            .entries
            .into_iter()
            .find(|e| {
                e.event
                    .as_ref()
                    .is_some_and(|e| e.event_type == "ContactAssigned")
            })
    })
    .await;
    assert!(
        assigned.summary.contains("uBen") && assigned.summary.contains("out of office"),
        "{}",
        assigned.summary
    );
    // What if Ben alone had taken every contact? One decision changes, and nothing is written.
    let before = rig
        .events_of(format!("{LOCATION}.assignment.{}", explained.contact_id))
        .await;
    let simulated = api
        .simulate(assignment::SimulateRequest {
            location_id: LOCATION.into(),
            account_id: sales.account_id.clone(),
            rules_json: r#"{"rules":[{"strategy":"user","user":"uBen"}]}"#.into(),
            since_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(simulated.decisions, 2);
    assert_eq!(simulated.changes.len(), 1, "{:?}", simulated.changes);
    let change = &simulated.changes[0];
    assert_eq!(
        (
            change.recorded_user_id.as_str(),
            change.simulated_user_id.as_str()
        ),
        ("uAna", "uBen")
    );
    let counts: Vec<_> = simulated
        .per_user
        .iter()
        .map(|c| (c.user_id.as_str(), c.recorded, c.simulated))
        .collect();
    assert_eq!(counts, [("uAna", 1, 0), ("uBen", 1, 2)]);
    assert_eq!(
        rig.events_of(format!("{LOCATION}.assignment.{}", explained.contact_id))
            .await,
        before
    );

    // The same through the CLI.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(binary())
            .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
            .args(args)
            .args(["--server", &rig.whatsnap.grpc_url()])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let explained = cli(&[
        "assignment",
        "explain",
        "+14155550161",
        "--location",
        LOCATION,
    ]);
    assert!(
        explained.contains("assigned to uBen by user#1"),
        "{explained}"
    );
    assert!(
        explained.contains("uAna") && explained.contains("passed over: out of office until"),
        "{explained}"
    );
    let rules = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        rules.path(),
        r#"{"rules":[{"strategy":"user","user":"uBen"}]}"#,
    )
    .unwrap();
    let simulated = cli(&[
        "assignment",
        "simulate",
        "--location",
        LOCATION,
        "--account",
        &sales.account_id,
        "--rules",
        rules.path().to_str().unwrap(),
        "--since",
        "7d",
    ]);
    assert!(
        simulated.contains("2 decisions replayed, 1 would change"),
        "{simulated}"
    );
    assert!(simulated.contains("uAna -> uBen"), "{simulated}");

    // The first contact keeps Ana: she owns it while away and is not replaced until it returns.
    assert_eq!(
        rig.ghl
            .contact_by_phone(LOCATION, "+14155550160")
            .unwrap()
            .assigned_to
            .as_deref(),
        Some("uAna")
    );
}

/// An agency installs whatsnap for its locations: the agency's code becomes the agency's
/// tokens, and a location's INSTALL webhook then gets the location its own token, made from the
/// agency's, with which its messages cross.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agency_install_connects_each_location_as_it_installs() {
    const LOCATION: &str = "locAgencyChild";
    let backend = Backend::embedded().await;
    // Agency installs start in GHL's marketplace, so their redirect carries no state.
    let mut app = OAUTH_APP.to_vec();
    app.push("--ghl-installs-without-state");
    let rig = Rig::start(&backend, "agency", &app).await;
    let sales = rig.add_account(LOCATION, "Sales", SALES).await;
    let code = rig.ghl.issue_company_code(FakeGhl::COMPANY_ID);
    let (status, body) =
        whatsnap_testkit::http_get(rig.http, &format!("/oauth/callback?code={code}"))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("agency") && body.contains(FakeGhl::COMPANY_ID),
        "{body}"
    );

    rig.text(
        LOCATION,
        &sales,
        "SM60000000000000000000000000000001",
        "+14155550170",
        "hola",
    )
    .await;
    // Not installed on the location yet: the message waits, and says why.
    let mut ghl_sync =
        ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(rig.channel.clone());
    let waiting = eventually("the message waiting for the install", async || {
        let status = ghl_sync
            .sync_status(ghlsync::SyncStatusRequest {
                location_id: LOCATION.into(),
            })
            .await
            .ok()?
            .into_inner();
        (status.pending_messages > 0).then_some(status)
    })
    .await;
    assert!(
        waiting.waiting_because.contains("has not installed"),
        "{}",
        waiting.waiting_because
    );

    let status = rig
        .ghl
        .send_install(&rig.ghl_webhook_url(), LOCATION, FakeGhl::COMPANY_ID)
        .await
        .unwrap();
    assert_eq!(status, 200);
    eventually(
        "the message in GHL through the location's token",
        async || {
            let contact = rig.ghl.contact_by_phone(LOCATION, "+14155550170")?;
            (rig.ghl.messages(&contact.id).len() == 1).then_some(())
        },
    )
    .await;
    let made: Vec<_> = rig
        .ghl
        .requests()
        .into_iter()
        .filter(|r| r.path == "/oauth/locationToken" && r.status == 200)
        .collect();
    assert_eq!(made.len(), 1, "one location token made from the agency's");
}

/// A rig whose location has these GHL users, connected, with its Sales account; returns the
/// assignment API once whatsnap lists the users.
async fn assignment_rig(
    name: &str,
    location: &str,
    users: &[&str],
) -> (
    Rig,
    session::Account,
    whatsnap_proto::assignment::v1::assignment_service_client::AssignmentServiceClient<Channel>,
) {
    use whatsnap_proto::assignment::v1 as assignment;
    let backend = Backend::embedded().await;
    let mut rig = Rig::start(&backend, name, &[]).await;
    rig.backend = Some(backend);
    for id in users {
        rig.ghl.add_user(
            location,
            whatsnap_testkit::FakeGhlUser {
                id: (*id).into(),
                name: id.trim_start_matches('u').into(),
                email: format!("{}@example.com", id.to_lowercase()),
                role: "user".into(),
                deleted: false,
            },
        );
    }
    rig.connect(location).await;
    let sales = rig.add_account(location, "Sales", SALES).await;
    let api =
        assignment::assignment_service_client::AssignmentServiceClient::new(rig.channel.clone());
    eventually("GHL's users in whatsnap", async || {
        let request = assignment::ListUsersRequest {
            location_id: location.into(),
        };
        let listed = api.clone().list_users(request).await.ok()?.into_inner();
        (listed.users.len() == users.len()).then_some(())
    })
    .await;
    (rig, sales, api)
}

async fn set_rules(
    api: &whatsnap_proto::assignment::v1::assignment_service_client::AssignmentServiceClient<
        Channel,
    >,
    location: &str,
    account: &session::Account,
    rules: serde_json::Value,
) {
    api.clone()
        .set_rules(whatsnap_proto::assignment::v1::SetRulesRequest {
            location_id: location.into(),
            account_id: account.account_id.clone(),
            rules_json: rules.to_string(),
        })
        .await
        .unwrap();
}

/// The contact's decisions once there are `count` of them, newest last.
async fn decisions(
    api: &whatsnap_proto::assignment::v1::assignment_service_client::AssignmentServiceClient<
        Channel,
    >,
    location: &str,
    phone: &str,
    count: usize,
) -> Vec<whatsnap_proto::assignment::v1::Decision> {
    eventually(&format!("{count} decisions for the contact"), async || {
        let explained = api
            .clone()
            .explain(whatsnap_proto::assignment::v1::ExplainRequest {
                location_id: location.into(),
                phone: phone.into(),
            })
            .await
            .ok()?
            .into_inner();
        (explained.decisions.len() >= count).then_some(explained.decisions)
    })
    .await
}

#[tokio::test]
async fn a_contact_owned_in_ghl_before_whatsnap_keeps_its_owner_and_a_new_one_follows_its_source() {
    const LOCATION: &str = "locGhlKnows";
    let (rig, sales, api) =
        assignment_rig("ghl-knows", LOCATION, &["uSenior", "uAna", "uBen"]).await;
    set_rules(
        &api,
        LOCATION,
        &sales,
        serde_json::json!({ "rules": [
            { "strategy": "user", "user": "uSenior",
              "when": { "sources": ["Google Ads Campaign"] } },
            { "strategy": "user", "user": "uAna" }
        ] }),
    )
    .await;
    // Ben owned this one in GHL before it ever wrote; the other came from the same ad campaign
    // and nobody owns it yet.
    let owned = rig.ghl.add_contact_with(
        LOCATION,
        serde_json::json!({ "phone": "+14155550170", "source": "Google Ads Campaign",
                            "assignedTo": "uBen" }),
    );
    let from_ad = rig.ghl.add_contact_with(
        LOCATION,
        serde_json::json!({ "phone": "+14155550171", "source": "Google Ads Campaign" }),
    );

    rig.text(
        LOCATION,
        &sales,
        "SM70000000000000000000000000000001",
        "+14155550171",
        "I saw your ad",
    )
    .await;
    eventually(
        "the ad's contact assigned to the senior rep in GHL",
        async || {
            let contact = rig.ghl.contact(&from_ad)?;
            (contact.assigned_to.as_deref() == Some("uSenior")).then_some(())
        },
    )
    .await;
    let decided = decisions(&api, LOCATION, "+14155550171", 1).await;
    assert_eq!(decided[0].rule, "user#1");
    assert_eq!(decided[0].trigger, "new_contact");

    rig.text(
        LOCATION,
        &sales,
        "SM70000000000000000000000000000002",
        "+14155550170",
        "hello again",
    )
    .await;
    let decided = decisions(&api, LOCATION, "+14155550170", 1).await;
    assert_eq!(decided[0].user_id, "uBen");
    assert_eq!(decided[0].rule, "ghl_owner");
    assert!(
        decided[0].reason.contains("owner in GHL before whatsnap"),
        "{}",
        decided[0].reason
    );
    let contact = rig.ghl.contact(&owned).unwrap();
    assert_eq!(contact.assigned_to.as_deref(), Some("uBen"));
    assert_eq!(
        rig.ghl.contacts(LOCATION).len(),
        2,
        "whatsnap linked GHL's contacts instead of making new ones"
    );

    // A Support account with its own rules decides its own contact; simulating the Sales
    // account's rules counts Sales' two decisions only.
    let support = rig.add_account(LOCATION, "Support", SUPPORT).await;
    set_rules(
        &api,
        LOCATION,
        &support,
        serde_json::json!({ "rules": [ { "strategy": "user", "user": "uAna" } ] }),
    )
    .await;
    rig.text(
        LOCATION,
        &support,
        "SM70000000000000000000000000000003",
        "+14155550172",
        "help",
    )
    .await;
    decisions(&api, LOCATION, "+14155550172", 1).await;
    let simulated = api
        .clone()
        .simulate(whatsnap_proto::assignment::v1::SimulateRequest {
            location_id: LOCATION.into(),
            account_id: sales.account_id.clone(),
            rules_json: r#"{"rules":[{"strategy":"user","user":"uAna"}]}"#.into(),
            since_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(simulated.decisions, 2, "{simulated:?}");
}

#[tokio::test]
async fn a_reassignment_made_in_ghl_is_respected_and_under_override_replaced_and_written_back() {
    const LOCATION: &str = "locManual";
    const PHONE: &str = "+14155550180";
    let (rig, sales, api) = assignment_rig("manual", LOCATION, &["uAna", "uBen", "uCleo"]).await;
    let rules = |manual: &str| serde_json::json!({ "manual": manual, "rules": [ { "strategy": "user", "user": "uAna" } ] });
    set_rules(&api, LOCATION, &sales, rules("respect")).await;
    rig.text(
        LOCATION,
        &sales,
        "SM80000000000000000000000000000001",
        PHONE,
        "hello",
    )
    .await;
    let ghl_id = eventually("the contact assigned to Ana in GHL", async || {
        let contact = rig.ghl.contact_by_phone(LOCATION, PHONE)?;
        (contact.assigned_to.as_deref() == Some("uAna")).then_some(contact.id)
    })
    .await;

    // ghl-sync has recorded setting Ana (so GHL's next change is not mistaken for it).
    let contact_id = whatsnap_events::contact_id_for(
        &whatsnap_events::LocationId::parse(LOCATION).unwrap(),
        &whatsnap_events::PhoneNumber::parse(PHONE).unwrap(),
    );
    let ghl_stream = format!("{LOCATION}.ghl.contact-{contact_id}");
    eventually("ghl-sync records Ana set in GHL", async || {
        let events = rig.events_of(ghl_stream.clone()).await;
        events
            .iter()
            .any(|e| e == "GhlAssignmentApplied")
            .then_some(())
    })
    .await;

    // A GHL user gives the contact to Ben by hand; GHL tells whatsnap with a signed webhook.
    let status = rig
        .ghl
        .reassign_and_notify(&rig.ghl_webhook_url(), &ghl_id, Some("uBen"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    rig.text(
        LOCATION,
        &sales,
        "SM80000000000000000000000000000002",
        PHONE,
        "are you there?",
    )
    .await;
    let decided = decisions(&api, LOCATION, PHONE, 2).await;
    let latest = decided.last().unwrap();
    assert_eq!(latest.user_id, "uBen");
    assert_eq!(
        latest.reason,
        "reassigned to uBen by hand in GHL (manual: respect)"
    );
    assert_eq!(latest.trigger, "returning_contact");
    assert_eq!(
        rig.ghl.contact(&ghl_id).unwrap().assigned_to.as_deref(),
        Some("uBen")
    );

    // Under `override` the rules' owner (Ben, whatsnap's latest) is kept over a reassignment
    // to Cleo made in GHL, written back to GHL, and the decision says why.
    set_rules(&api, LOCATION, &sales, rules("override")).await;
    let status = rig
        .ghl
        .reassign_and_notify(&rig.ghl_webhook_url(), &ghl_id, Some("uCleo"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    rig.text(
        LOCATION,
        &sales,
        "SM80000000000000000000000000000003",
        PHONE,
        "hello?",
    )
    .await;
    let decided = decisions(&api, LOCATION, PHONE, 3).await;
    let latest = decided.last().unwrap();
    assert_eq!(latest.user_id, "uBen");
    assert!(
        latest
            .reason
            .ends_with("GHL shows uCleo: written back; overrides reassigned to uCleo by hand in GHL (manual: override)"),
        "{}",
        latest.reason
    );
    eventually("Ben written back as the owner in GHL", async || {
        let contact = rig.ghl.contact(&ghl_id)?;
        (contact.assigned_to.as_deref() == Some("uBen")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_owner_changed_in_ghl_seen_in_a_tag_update_is_respected() {
    const LOCATION: &str = "locTagOwner";
    const PHONE: &str = "+14155550190";
    let (rig, sales, api) = assignment_rig("tag-owner", LOCATION, &["uAna", "uBen"]).await;
    set_rules(
        &api,
        LOCATION,
        &sales,
        serde_json::json!({ "rules": [ { "strategy": "user", "user": "uAna" } ] }),
    )
    .await;
    rig.text(
        LOCATION,
        &sales,
        "SM90000000000000000000000000000001",
        PHONE,
        "hello",
    )
    .await;
    let contact_id = whatsnap_events::contact_id_for(
        &whatsnap_events::LocationId::parse(LOCATION).unwrap(),
        &whatsnap_events::PhoneNumber::parse(PHONE).unwrap(),
    );
    let ghl_stream = format!("{LOCATION}.ghl.contact-{contact_id}");
    eventually("ghl-sync records Ana set in GHL", async || {
        let events = rig.events_of(ghl_stream.clone()).await;
        events
            .iter()
            .any(|e| e == "GhlAssignmentApplied")
            .then_some(())
    })
    .await;
    let ghl_id = rig.ghl.contact_by_phone(LOCATION, PHONE).unwrap().id;

    // A GHL user gives the contact to Ben and tags it; GHL's ContactTagUpdate carries both.
    rig.ghl.set_assigned_to(&ghl_id, Some("uBen")).unwrap();
    let status = rig
        .ghl
        .set_tags_and_notify(&rig.ghl_webhook_url(), &ghl_id, &["vip"])
        .await
        .unwrap();
    assert_eq!(status, 200);
    rig.text(
        LOCATION,
        &sales,
        "SM90000000000000000000000000000002",
        PHONE,
        "still there?",
    )
    .await;
    let decided = decisions(&api, LOCATION, PHONE, 2).await;
    let latest = decided.last().unwrap();
    assert_eq!(latest.user_id, "uBen");
    assert_eq!(
        latest.reason,
        "reassigned to uBen by hand in GHL (manual: respect)"
    );
}

#[tokio::test]
async fn a_team_takes_contacts_in_turn_and_its_lead_the_overflow() {
    use whatsnap_proto::assignment::v1 as assignment;
    const LOCATION: &str = "locTeam";
    let (rig, sales, api) = assignment_rig("team", LOCATION, &["uAna", "uBen", "uLead"]).await;
    set_rules(
        &api,
        LOCATION,
        &sales,
        serde_json::json!({ "rules": [
            { "strategy": "team", "team": "Sales", "members": ["uAna", "uBen"], "lead": "uLead" }
        ] }),
    )
    .await;
    let owner_in_ghl = async |phone: &str, user: &str| {
        eventually(format!("{phone} assigned to {user} in GHL"), async || {
            let contact = rig.ghl.contact_by_phone(LOCATION, phone)?;
            (contact.assigned_to.as_deref() == Some(user)).then_some(())
        })
        .await
    };
    rig.text(
        LOCATION,
        &sales,
        "SMa0000000000000000000000000000001",
        "+14155550201",
        "one",
    )
    .await;
    owner_in_ghl("+14155550201", "uAna").await;
    rig.text(
        LOCATION,
        &sales,
        "SMa0000000000000000000000000000002",
        "+14155550202",
        "two",
    )
    .await;
    owner_in_ghl("+14155550202", "uBen").await;

    // Both members are off: the lead takes the next contact.
    for member in ["uAna", "uBen"] {
        api.clone()
            .set_availability(assignment::SetAvailabilityRequest {
                location_id: LOCATION.into(),
                user_id: member.into(),
                active: false,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    rig.text(
        LOCATION,
        &sales,
        "SMa0000000000000000000000000000003",
        "+14155550203",
        "three",
    )
    .await;
    owner_in_ghl("+14155550203", "uLead").await;
    let decided = decisions(&api, LOCATION, "+14155550203", 1).await;
    assert!(
        decided[0].reason.starts_with("lead of Sales, as overflow"),
        "{}",
        decided[0].reason
    );

    // The report's workload: one open contact each, nobody left unassigned.
    let report = api
        .clone()
        .report(assignment::ReportRequest {
            location_id: LOCATION.into(),
            since_seconds: 7 * 24 * 3600,
        })
        .await
        .unwrap()
        .into_inner();
    let open: Vec<(&str, u64)> = report
        .open_contacts
        .iter()
        .map(|c| (c.key.as_str(), c.count))
        .collect();
    assert_eq!(open, [("uAna", 1), ("uBen", 1), ("uLead", 1)]);
    assert!(report.unassigned.is_empty(), "{:?}", report.unassigned);
}

/// The GHL stream of a contact (ghl-sync's link, and what GHL's webhooks told of it).
fn ghl_stream_of(location: &str, phone: &str) -> String {
    let contact_id = whatsnap_events::contact_id_for(
        &whatsnap_events::LocationId::parse(location).unwrap(),
        &whatsnap_events::PhoneNumber::parse(phone).unwrap(),
    );
    format!("{location}.ghl.contact-{contact_id}")
}

#[tokio::test]
async fn a_source_changed_in_ghl_is_read_by_the_next_decision() {
    const LOCATION: &str = "locSourceChange";
    const PHONE: &str = "+14155550210";
    let (rig, sales, api) = assignment_rig("source-change", LOCATION, &["uSenior"]).await;
    set_rules(
        &api,
        LOCATION,
        &sales,
        serde_json::json!({ "rules": [
            { "strategy": "user", "user": "uSenior",
              "when": { "sources": ["Google Ads Campaign"] } }
        ] }),
    )
    .await;
    // A contact whatsnap created in GHL has the source `whatsnap`: no rule takes it, and
    // explain says why.
    rig.text(
        LOCATION,
        &sales,
        "SMb0000000000000000000000000000001",
        PHONE,
        "hello",
    )
    .await;
    let decided = decisions(&api, LOCATION, PHONE, 1).await;
    assert_eq!(decided[0].rule, "none");
    assert!(
        decided[0]
            .reason
            .contains("user#1 does not apply: source is `whatsnap`"),
        "{}",
        decided[0].reason
    );

    // A GHL user (or a form) sets the contact's source; GHL tells whatsnap in a ContactUpdate.
    let ghl_id = rig.ghl.contact_by_phone(LOCATION, PHONE).unwrap().id;
    rig.ghl
        .set_source(&ghl_id, Some("Google Ads Campaign"))
        .unwrap();
    let status = rig
        .ghl
        .send_contact_webhook(&rig.ghl_webhook_url(), "ContactUpdate", &ghl_id)
        .await
        .unwrap();
    assert_eq!(status, 200);
    // GHL's retry, or a later webhook that tells the same source, records nothing more.
    let status = rig
        .ghl
        .send_contact_webhook(&rig.ghl_webhook_url(), "ContactUpdate", &ghl_id)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let events = rig.events_of(ghl_stream_of(LOCATION, PHONE)).await;
    let changes = events
        .iter()
        .filter(|e| *e == "ContactSourceChangedInGhl")
        .count();
    assert_eq!(changes, 1, "{events:?}");

    // The contact's next message is decided by the source rule.
    rig.text(
        LOCATION,
        &sales,
        "SMb0000000000000000000000000000002",
        PHONE,
        "still there?",
    )
    .await;
    let decided = decisions(&api, LOCATION, PHONE, 2).await;
    let latest = decided.last().unwrap();
    assert_eq!(
        (latest.user_id.as_str(), latest.rule.as_str()),
        ("uSenior", "user#1")
    );
    assert_eq!(latest.trigger, "returning_contact");
    eventually(
        "the contact assigned to the senior rep in GHL",
        async || {
            let contact = rig.ghl.contact(&ghl_id)?;
            (contact.assigned_to.as_deref() == Some("uSenior")).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn an_owner_removed_by_hand_in_ghl_is_respected_and_under_override_set_again() {
    use whatsnap_proto::assignment::v1 as assignment;
    const LOCATION: &str = "locUnassigned";
    const PHONE: &str = "+14155550220";
    let (rig, sales, api) = assignment_rig("unassigned", LOCATION, &["uAna", "uBen"]).await;
    let rules = |manual: &str| serde_json::json!({ "manual": manual, "rules": [ { "strategy": "user", "user": "uAna" } ] });
    set_rules(&api, LOCATION, &sales, rules("respect")).await;
    rig.text(
        LOCATION,
        &sales,
        "SMc0000000000000000000000000000001",
        PHONE,
        "hello",
    )
    .await;
    let ghl_id = eventually("the contact assigned to Ana in GHL", async || {
        let contact = rig.ghl.contact_by_phone(LOCATION, PHONE)?;
        (contact.assigned_to.as_deref() == Some("uAna")).then_some(contact.id)
    })
    .await;
    eventually("ghl-sync records Ana set in GHL", async || {
        let events = rig.events_of(ghl_stream_of(LOCATION, PHONE)).await;
        events
            .iter()
            .any(|e| e == "GhlAssignmentApplied")
            .then_some(())
    })
    .await;

    // A GHL user removes the contact's owner by hand; GHL tells whatsnap with a signed webhook.
    let status = rig
        .ghl
        .reassign_and_notify(&rig.ghl_webhook_url(), &ghl_id, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    rig.text(
        LOCATION,
        &sales,
        "SMc0000000000000000000000000000002",
        PHONE,
        "anyone?",
    )
    .await;
    let decided = decisions(&api, LOCATION, PHONE, 2).await;
    let latest = decided.last().unwrap();
    assert_eq!(
        (latest.user_id.as_str(), latest.rule.as_str()),
        ("", "none")
    );
    assert_eq!(
        latest.reason,
        "owner removed by hand in GHL (manual: respect): left without an owner until a GHL \
         user assigns one; uAna is not assigned again"
    );
    assert_eq!(latest.trigger, "returning_contact");
    // A decision that assigns nobody sends nothing to GHL: the contact stays unassigned there.
    assert_eq!(rig.ghl.contact(&ghl_id).unwrap().assigned_to, None);
    // The report no longer counts the contact as Ana's, and tells why it is unassigned.
    let report = api
        .clone()
        .report(assignment::ReportRequest {
            location_id: LOCATION.into(),
            since_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        report.open_contacts.is_empty(),
        "{:?}",
        report.open_contacts
    );
    assert_eq!(report.unassigned.len(), 1, "{:?}", report.unassigned);
    assert_eq!(report.unassigned[0].key, latest.reason);

    // Under `override` the rules decide again: Ana is still valid, so she is set in GHL again,
    // and the decision names the conflict.
    set_rules(&api, LOCATION, &sales, rules("override")).await;
    rig.text(
        LOCATION,
        &sales,
        "SMc0000000000000000000000000000003",
        PHONE,
        "hello?",
    )
    .await;
    let decided = decisions(&api, LOCATION, PHONE, 3).await;
    let latest = decided.last().unwrap();
    assert_eq!(
        (latest.user_id.as_str(), latest.rule.as_str()),
        ("uAna", "current_owner")
    );
    assert!(
        latest.reason.ends_with(
            "GHL shows nobody: written back; overrides owner removed by hand in GHL \
             (manual: override)"
        ),
        "{}",
        latest.reason
    );
    eventually("Ana set in GHL again", async || {
        let contact = rig.ghl.contact(&ghl_id)?;
        (contact.assigned_to.as_deref() == Some("uAna")).then_some(())
    })
    .await;
}
