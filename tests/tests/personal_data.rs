//! Personal data end to end, with the real binary against the fake GHL and the fake Twilio:
//! a full round trip logged at `debug` leaves no phone number, message or token in the logs;
//! the log keeps bodies and numbers sealed; an erased contact reads as `[erased]` in `trace`,
//! the GHL sync read model and a rebuild of the read models, nothing more of it goes to GHL,
//! and other contacts are untouched.

use std::path::Path;
use std::process::Command;

use whatsnap_events::{LocationId, PhoneNumber, contact_id_for};
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::Channel;
use whatsnap_testkit::{
    FakeGhl, FakeTwilio, FakeTwilioAccount, TestBackend, TwilioText, Whatsnap, eventually, http_get,
};

const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token-of-the-agency";
const SALES: &str = "+15005550006";
const PROVIDER: &str = "whatsnapProvider0001";
const LOCATION: &str = "locPersonal";

/// A customer: their number, name and what they write.
struct Customer {
    phone: &'static str,
    name: &'static str,
    text: &'static str,
}

const ANA: Customer = Customer {
    phone: "+14155550123",
    name: "Ana Lima",
    text: "Is the blue velvet sofa still available?",
};
const BEN: Customer = Customer {
    phone: "+14155550177",
    name: "Ben Okafor",
    text: "Could you deliver on Saturday morning?",
};
const REPLY: &str = "Yes, the velvet one is in the showroom";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

/// whatsnap with the fakes around it.
struct Rig {
    ghl: FakeGhl,
    twilio: FakeTwilio,
    whatsnap: Whatsnap,
    channel: Channel,
    account: session::Account,
    pit: String,
}

impl Rig {
    fn serve_args(backend: &TestBackend, ghl: &FakeGhl, twilio: &FakeTwilio) -> Vec<String> {
        let mut list = backend.args();
        list.extend(
            [
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
            ]
            .map(str::to_owned),
        );
        list
    }

    async fn serve(backend: &TestBackend, ghl: &FakeGhl, twilio: &FakeTwilio) -> Whatsnap {
        Whatsnap::serve_with_env(
            binary(),
            &Self::serve_args(backend, ghl, twilio),
            &[("RUST_LOG", "debug".to_owned())],
            "personal-data",
        )
        .unwrap()
    }

    /// whatsnap with a connected location and a Twilio account.
    async fn start(backend: &TestBackend) -> Self {
        let ghl = FakeGhl::start().await.unwrap();
        let twilio = FakeTwilio::start().await.unwrap();
        twilio.add_account(FakeTwilioAccount {
            sid: SID.into(),
            auth_token: TOKEN.into(),
            status: "active".into(),
            numbers: vec![(SALES.into(), true)],
        });
        let whatsnap = Self::serve(backend, &ghl, &twilio).await;
        let channel = channel(&whatsnap).await;
        let pit = format!("pit-{LOCATION}-7f3a-91c2");
        ghl.add_private_token(LOCATION, &pit);
        ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(channel.clone())
            .connect_private_token(ghlsync::ConnectPrivateTokenRequest {
                location_id: LOCATION.into(),
                token: pit.clone(),
                company_id: FakeGhl::COMPANY_ID.into(),
            })
            .await
            .unwrap();
        let account = session::session_service_client::SessionServiceClient::new(channel.clone())
            .add_account(session::AddAccountRequest {
                location_id: LOCATION.into(),
                kind: session::AccountKind::Twilio as i32,
                name: "Sales".into(),
                phone_number: SALES.into(),
                twilio: Some(session::TwilioCredentials {
                    account_sid: SID.into(),
                    auth_token: TOKEN.into(),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        Self {
            ghl,
            twilio,
            whatsnap,
            channel,
            account,
            pit,
        }
    }

    /// The same whatsnap started again on the same data.
    async fn restart(&mut self, backend: &TestBackend) {
        self.whatsnap = Self::serve(backend, &self.ghl, &self.twilio).await;
        self.channel = channel(&self.whatsnap).await;
    }

    /// `customer` texts the Sales number (signed as Twilio signs), with `text`.
    async fn text(&self, customer: &Customer, sid: &str, text: &str) {
        let path = format!(
            "/webhooks/twilio/{LOCATION}/{}/inbound",
            self.account.account_id
        );
        let form = TwilioText {
            account_sid: SID,
            message_sid: sid,
            from: customer.phone,
            to: SALES,
            body: text,
            extra: &[("ProfileName", customer.name)],
        };
        let (status, body) = form
            .post(self.whatsnap.http.unwrap(), &path, TOKEN)
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }

    /// The customer's GHL contact once `count` of their messages are in its conversation.
    async fn in_ghl(&self, customer: &Customer, count: usize) -> String {
        eventually(
            format!("{count} messages of {} in GHL", customer.name),
            async || {
                let contact = self.ghl.contact_by_phone(LOCATION, customer.phone)?;
                (self.ghl.messages(&contact.id).len() >= count).then_some(contact.id)
            },
        )
        .await
    }

    /// A GHL user replies to the contact; waits until Twilio sent it and GHL knows it was
    /// delivered.
    async fn reply(&self, ghl_contact: &str, customer: &Customer) {
        let delivery = format!(
            "http://{}/webhooks/ghl/delivery",
            self.whatsnap.http.unwrap()
        );
        let (ghl_message, status) = self
            .ghl
            .send_provider_outbound(&delivery, LOCATION, ghl_contact, REPLY, Some("userAna"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let sent = eventually("the reply sent by Twilio", async || {
            self.twilio
                .sent()
                .into_iter()
                .find(|m| m.to == customer.phone)
        })
        .await;
        assert_eq!(sent.body, REPLY);
        self.twilio
            .report_status(&sent.sid, "delivered", None)
            .await
            .unwrap();
        eventually("GHL told the reply was delivered", async || {
            self.ghl
                .status_updates(&ghl_message)
                .into_iter()
                .find(|u| u.status == "delivered")
        })
        .await;
    }

    /// Runs `whatsnap <args> --server <this one>`; returns (success, stdout + stderr).
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(binary())
            .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
            .args(args)
            .args(["--server", &self.whatsnap.grpc_url()])
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    /// The contact's history as `trace` reads it: each summary with its event's payload.
    async fn history(&self, customer: &Customer) -> String {
        let history = events::events_service_client::EventsServiceClient::new(self.channel.clone())
            .contact_history(events::ContactHistoryRequest {
                location_id: LOCATION.into(),
                phone: customer.phone.into(),
            })
            .await;
        // Not there yet while a read model is rebuilt.
        let Ok(history) = history else {
            return String::new();
        };
        history
            .into_inner()
            .entries
            .iter()
            .map(|entry| {
                let payload = entry.event.as_ref().map(|e| e.payload_json.as_str());
                format!("{} {}\n", entry.summary, payload.unwrap_or_default())
            })
            .collect()
    }
}

async fn channel(whatsnap: &Whatsnap) -> Channel {
    whatsnap.channel().await
}

/// The ways a value may be written in a log line: as it is, JSON-escaped, and for a number
/// its digits alone, without its country code, and in local groups.
fn written_forms(value: &str) -> Vec<String> {
    let mut forms = vec![value.to_owned()];
    let json = serde_json::to_string(value).unwrap();
    forms.push(json.trim_matches('"').to_owned());
    let digits: String = value.chars().filter(char::is_ascii_digit).collect();
    if value.starts_with('+') && digits.len() >= 10 {
        let national = &digits[digits.len() - 10..];
        forms.push(digits.clone());
        forms.push(national.to_owned());
        forms.push(format!("{}-{}", &national[3..6], &national[6..]));
        forms.push(format!("{} {}", &national[3..6], &national[6..]));
        forms.push(format!("%2B{digits}"));
    }
    forms
}

fn assert_absent(haystack: &str, what: &str, values: &[&str]) {
    for value in values {
        for form in written_forms(value) {
            if let Some(at) = haystack.find(&form) {
                let from = haystack[..at]
                    .char_indices()
                    .rev()
                    .nth(200)
                    .map_or(0, |(i, _)| i);
                let context: String = haystack[from..].chars().take(400).collect();
                panic!("{form:?} is in {what}: …{context}…");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_logged_at_debug_logs_no_number_message_or_token() {
    let backend = TestBackend::embedded().await;
    let mut rig = Rig::start(&backend).await;
    rig.text(&ANA, "SM20000000000000000000000000000001", ANA.text)
        .await;
    let contact = rig.in_ghl(&ANA, 1).await;
    let in_ghl = rig.ghl.contact_by_phone(LOCATION, ANA.phone).unwrap();
    assert_eq!(in_ghl.name.as_deref(), Some(ANA.name));
    assert_eq!(
        rig.ghl.messages(&contact)[0].message.as_deref(),
        Some(ANA.text)
    );
    rig.reply(&contact, &ANA).await;
    // A number that is not one, refused: the refusal does not quote it either.
    let (ok, out) = rig.cli(&["contacts", "show", "+1 415 555 01", "--location", LOCATION]);
    assert!(!ok && out.contains("not a valid phone number"), "{out}");
    assert!(!out.contains("555 01"), "{out}");

    rig.whatsnap.terminate().unwrap();
    let log = std::fs::read_to_string(&rig.whatsnap.log).unwrap();
    assert!(
        log.contains("DEBUG") && log.contains("message in GHL"),
        "the log is at debug and covers the round trip"
    );
    assert_absent(&log, "the log", &[ANA.phone, ANA.name, ANA.text, REPLY]);
    assert_absent(&log, "the log", &[TOKEN, &rig.pit, SECRET_KEY]);
}

/// The ids of a customer's messages and contact in the embedded read models, and what the GHL
/// sync read model keeps of them.
async fn ghl_read_model(db: &Path, customer: &Customer) -> (Vec<String>, Vec<String>) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let location = LocationId::parse(LOCATION).unwrap();
    let contact_id =
        contact_id_for(&location, &PhoneNumber::parse(customer.phone).unwrap()).to_string();
    let phones: Vec<String> = sqlx::query_scalar(
        "SELECT phone || ' ' || COALESCE(name, '') FROM ghl_contacts WHERE contact_id = $1",
    )
    .bind(&contact_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let bodies: Vec<String> = sqlx::query_scalar(
        "SELECT body || ' ' || attachments FROM ghl_messages WHERE contact_id = $1 AND direction = 'inbound'",
    )
    .bind(&contact_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    (phones, bodies)
}

/// Ben's phone, name and messages are in the GHL read model, sealed.
fn assert_sealed(contact: &[String], bodies: &[String]) {
    assert_eq!(contact.len(), 1);
    for kept in contact.iter().chain(bodies) {
        assert!(kept.starts_with("pii1:"), "{kept}");
    }
    let kept = format!("{contact:?}{bodies:?}");
    assert_absent(
        &kept,
        "the GHL read model",
        &[BEN.phone, BEN.name, BEN.text],
    );
}

/// Every payload in the embedded log, as stored.
async fn stored_log(db: &Path) -> String {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM events")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    payloads
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned() + "\n")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_contact_reads_as_erased_everywhere_and_others_do_not() {
    let backend = TestBackend::embedded().await;
    let TestBackend::Embedded(dir) = &backend else {
        unreachable!()
    };
    let (db, read_models) = (
        dir.path().join("whatsnap.db"),
        dir.path().join("read-models.db"),
    );
    let mut rig = Rig::start(&backend).await;
    rig.text(&ANA, "SM30000000000000000000000000000001", ANA.text)
        .await;
    rig.text(&BEN, "SM30000000000000000000000000000002", BEN.text)
        .await;
    let ana_in_ghl = rig.in_ghl(&ANA, 1).await;
    let ben_in_ghl = rig.in_ghl(&BEN, 1).await;
    rig.reply(&ana_in_ghl, &ANA).await;

    // The log holds neither customer's number, name or words in clear.
    let stored = stored_log(&db).await;
    assert_absent(
        &stored,
        "the stored log",
        &[ANA.phone, ANA.name, ANA.text, REPLY],
    );
    assert_absent(&stored, "the stored log", &[BEN.phone, BEN.name, BEN.text]);
    assert!(rig.history(&ANA).await.contains(ANA.text), "opened on read");

    // Erased once; asking again changes nothing; a contact never seen is refused.
    let (ok, out) = rig.cli(&["contacts", "erase", ANA.phone, "--location", LOCATION]);
    assert!(ok && out.contains("erased"), "{out}");
    let (ok, out) = rig.cli(&["contacts", "erase", ANA.phone, "--location", LOCATION]);
    assert!(ok && out.contains("already erased"), "{out}");
    let (ok, out) = rig.cli(&["contacts", "erase", "+14155550188", "--location", LOCATION]);
    assert!(!ok && out.contains("no contact"), "{out}");

    // trace: what happened stays, whose it was does not. The trace is a read model, so the
    // erasure shows once the gateway has read the event.
    let trace = eventually("the erasure in Ana's trace", async || {
        let (ok, trace) = rig.cli(&["trace", ANA.phone, "--location", LOCATION]);
        (ok && trace.contains("personal data erased")).then_some(trace)
    })
    .await;
    let history = rig.history(&ANA).await;
    assert!(history.contains("[erased]"), "{history}");
    assert_absent(
        &format!("{trace}{history}"),
        "the trace",
        &[ANA.phone, ANA.name, ANA.text, REPLY],
    );
    assert!(rig.history(&BEN).await.contains(BEN.text), "Ben untouched");

    // The GHL sync read model keeps Ben sealed, and forgets Ana.
    let (contact, bodies) = eventually("Ana erased in the GHL read model", async || {
        let (contact, bodies) = ghl_read_model(&read_models, &ANA).await;
        bodies
            .iter()
            .all(|b| b.starts_with("[erased]"))
            .then_some((contact, bodies))
    })
    .await;
    assert_eq!(contact, ["[erased] "]);
    assert_eq!(bodies.len(), 1);
    let (ben, ben_bodies) = eventually("Ben in the GHL read model", async || {
        let (ben, bodies) = ghl_read_model(&read_models, &BEN).await;
        (!ben.is_empty() && !bodies.is_empty()).then_some((ben, bodies))
    })
    .await;
    assert_sealed(&ben, &ben_bodies);

    // Ana writes again: nothing of it goes to GHL. Ben's later text arrives after it would
    // have (one queue per location, in order).
    let ana_before = rig.ghl.messages(&ana_in_ghl).len();
    rig.text(&ANA, "SM30000000000000000000000000000003", "one more thing")
        .await;
    rig.text(&BEN, "SM30000000000000000000000000000004", "thanks!")
        .await;
    rig.in_ghl(&BEN, 2).await;
    assert_eq!(rig.ghl.messages(&ana_in_ghl).len(), ana_before);
    assert_eq!(rig.ghl.messages(&ben_in_ghl).len(), 2);

    // Every read model rebuilt from the log: Ana stays erased, Ben comes back whole, and the
    // reply already sent is not sent again by the rebuilt queue of replies.
    let replies_sent = rig.twilio.sent().len();
    rig.whatsnap.terminate().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let rebuilt = Command::new(binary())
        .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
        .args(["rebuild", "all", "--data-dir", data_dir])
        .output()
        .unwrap();
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert!(
        String::from_utf8_lossy(&rebuilt.stdout).contains("outbound_queue: emptied"),
        "{}",
        String::from_utf8_lossy(&rebuilt.stdout)
    );
    rig.restart(&backend).await;
    eventually("the queue of replies rebuilt", async || {
        let (_, body) = http_get(rig.whatsnap.http.unwrap(), "/readyz").await.ok()?;
        let body: serde_json::Value = serde_json::from_str(&body).ok()?;
        (body["projections"]["outbound_queue"]["lag"].as_u64()? == 0).then_some(())
    })
    .await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", read_models.display()))
        .await
        .unwrap();
    let count = async |table: &str| -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(
        count("outbound_queue").await,
        0,
        "the sent reply queued again"
    );
    assert_eq!(count("sent_messages").await, 1, "the sent reply not known");
    pool.close().await;
    assert_eq!(rig.twilio.sent().len(), replies_sent, "a reply sent again");
    let (ben, ben_bodies) = eventually("Ben's messages back in the read model", async || {
        let (ben, bodies) = ghl_read_model(&read_models, &BEN).await;
        (bodies.len() == 2).then_some((ben, bodies))
    })
    .await;
    assert_sealed(&ben, &ben_bodies);
    let (ana, ana_bodies) = ghl_read_model(&read_models, &ANA).await;
    assert_eq!(ana, ["[erased] "]);
    assert!(
        ana_bodies.iter().all(|b| b.starts_with("[erased]")),
        "{ana_bodies:?}"
    );
    eventually("Ana shown as erased by contacts show", async || {
        let (ok, shown) = rig.cli(&["contacts", "show", ANA.phone, "--location", LOCATION]);
        assert_absent(&shown, "contacts show", &[ANA.phone, ANA.name]);
        (ok && shown.contains("phone     [erased]")).then_some(())
    })
    .await;
    let history = eventually("Ana's trace rebuilt", async || {
        let history = rig.history(&ANA).await;
        history.contains("personal data erased").then_some(history)
    })
    .await;
    assert_absent(
        &history,
        "the rebuilt trace",
        &[ANA.phone, ANA.name, ANA.text, REPLY],
    );
    assert!(rig.history(&BEN).await.contains(BEN.text));
    assert_eq!(
        rig.ghl.messages(&ana_in_ghl).len(),
        ana_before,
        "nothing more for Ana"
    );
}
