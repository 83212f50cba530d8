//! The dashboard's account pages in a real browser against a real `whatsnap`, signed in as a GHL
//! user of one location (through a page that plays GHL): adding a Twilio account whose token
//! Twilio refuses shows the error at the token field and adds nothing; a WhatsApp account's QR
//! code appears, is replaced as it rotates, and the page turns Connected when the phone scans
//! it, the list shows a disconnect by itself, and linking again from its settings shows a new
//! code (another number links with a pairing code instead); a Mac is added and waited for;
//! settings rename an account (its tag stays), change the pacing and remove it after saying
//! what happens to its contacts; and nothing of another location can be seen or changed,
//! whatever URL or form is sent. Screenshots of each page are saved under the
//! test's output folder (`target/tmp/dashboard/`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use whatsnap_dashboard::sso::{SharedSecret, seal_like_ghl};
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::browser::{Browser, ghl_page};
use whatsnap_testkit::{
    Channel, FakeBlueBubbles, FakeEvolution, FakeTwilio, FakeTwilioAccount, Whatsnap, eventually,
    free_port, http_request,
};

const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const SHARED_SECRET: &str = "the-apps-shared-secret";
const LOCATION_A: &str = "locAccountsA";
const LOCATION_B: &str = "locAccountsB";
const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
const TWILIO_TOKEN: &str = "the-right-auth-token";
const TWILIO_NUMBER: &str = "+15005550006";
const WHATSAPP_NUMBER: &str = "+5511987654321";
const LIMIT: &str = "5";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

fn output() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard")
}

/// whatsnap with the fake Evolution engine and the fake Twilio, and a browser.
struct Rig {
    evolution: FakeEvolution,
    mac: FakeBlueBubbles,
    _twilio: FakeTwilio,
    _data: tempfile::TempDir,
    whatsnap: Whatsnap,
    channel: Channel,
    http: SocketAddr,
    browser: Browser,
}

impl Rig {
    async fn start(log_name: &str) -> Self {
        let evolution = FakeEvolution::start().await.unwrap();
        let mac = FakeBlueBubbles::start().await.unwrap();
        let twilio = FakeTwilio::start().await.unwrap();
        twilio.add_account(FakeTwilioAccount {
            sid: TWILIO_SID.into(),
            auth_token: TWILIO_TOKEN.into(),
            status: "active".into(),
            numbers: vec![(TWILIO_NUMBER.into(), true)],
        });
        let data = tempfile::tempdir().unwrap();
        let (grpc, http) = (free_port(), free_port());
        let args: Vec<String> = [
            "--data-dir",
            data.path().to_str().unwrap(),
            "--secret-key",
            SECRET_KEY,
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--evolution-url",
            &evolution.base_url(),
            "--evolution-api-key",
            FakeEvolution::GLOBAL_API_KEY,
            "--whatsapp-engine",
            "evolution",
            "--twilio-base-url",
            &twilio.base_url(),
            "--max-accounts-per-location",
            LIMIT,
            "--bluebubbles-ping-interval",
            "0.3",
            "--ghl-shared-secret",
            SHARED_SECRET,
        ]
        .map(str::to_owned)
        .into();
        let whatsnap = Whatsnap::serve(binary(), &args, log_name).unwrap();
        let channel = whatsnap.channel().await;
        let browser = Browser::start(output()).await;
        Self {
            evolution,
            mac,
            _twilio: twilio,
            _data: data,
            whatsnap,
            channel,
            http: format!("127.0.0.1:{http}").parse().unwrap(),
            browser,
        }
    }

    fn dashboard(&self) -> String {
        format!("http://{}", self.http)
    }

    fn accounts_api(&self) -> session::session_service_client::SessionServiceClient<Channel> {
        session::session_service_client::SessionServiceClient::new(self.channel.clone())
    }

    async fn list(&self, location: &str) -> Vec<session::Account> {
        self.accounts_api()
            .list_accounts(session::ListAccountsRequest {
                location_id: location.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .accounts
    }

    async fn account(&self, location: &str, id: &str) -> session::Account {
        self.accounts_api()
            .get_account(session::GetAccountRequest {
                location_id: location.into(),
                account_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn add_whatsapp(&self, location: &str, name: &str) -> session::Account {
        self.accounts_api()
            .add_account(session::AddAccountRequest {
                location_id: location.into(),
                kind: session::AccountKind::Whatsapp as i32,
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Signs the browser in as a GHL user of `location`, inside the page that plays GHL, then
    /// leaves it on the dashboard itself.
    async fn sign_in(&self, location: &str) {
        let context = serde_json::json!({
            "userId": "ghlUserAna", "companyId": "companyX", "role": "user", "type": "location",
            "activeLocation": location, "userName": "Ana Lima", "email": "ana@example.com",
        });
        let payload = seal_like_ghl(
            &SharedSecret::new(SHARED_SECRET),
            &context.to_string(),
            *b"saltsalt",
        );
        let ghl = ghl_page(&self.dashboard(), payload).await;
        let client = &self.browser.client;
        client
            .goto(&format!("http://127.0.0.1:{ghl}/"))
            .await
            .unwrap();
        client.enter_frame(0).await.unwrap();
        assert_eq!(self.browser.text_of("h1").await, "Accounts");
        client.enter_parent_frame().await.unwrap();
    }

    async fn open(&self, path: &str) {
        self.browser
            .client
            .goto(&format!("{}{path}", self.dashboard()))
            .await
            .unwrap();
    }

    /// A plain request as the signed-in browser: a GET, or a form POST of `form`.
    async fn request(
        &self,
        path: &str,
        form: Option<&[(&str, &str)]>,
    ) -> whatsnap_testkit::HttpReply {
        let cookie = self.browser.session_cookie().await;
        let body = form.map(|form| serde_urlencoded::to_string(form).unwrap());
        let mut headers = vec![("Cookie", cookie.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/x-www-form-urlencoded"));
        }
        http_request(
            self.http,
            path,
            &headers,
            body.as_deref().map(str::as_bytes),
        )
        .await
        .unwrap()
    }

    /// The CSRF token of the signed-in browser's forms, as a page gives it.
    async fn csrf(&self) -> String {
        self.browser
            .find("input[name=csrf]")
            .await
            .attr("value")
            .await
            .unwrap()
            .expect("forms carry the token")
    }
}

/// The instance whatsnap made for the account in the fake Evolution server.
fn instance_of(account_id: &str) -> String {
    format!("whatsnap-{}", account_id.replace('-', ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_account_refused_by_twilio_shows_why_at_its_field_and_adds_nothing() {
    let rig = Rig::start("dashboard-twilio").await;
    let browser = &rig.browser;
    rig.sign_in(LOCATION_A).await;
    rig.open(&format!("/app/accounts?location={LOCATION_A}"))
        .await;
    browser
        .wait_for_text("#account-count", "0 of 5 accounts", |text| {
            text == "0 of 5 accounts"
        })
        .await;
    browser.click("#add-account").await;
    browser
        .wait_for_text("h1", "the Add account page", |t| t == "Add account")
        .await;
    browser.screenshot("add-account").await;
    browser.click("#add-twilio").await;

    // A token Twilio refuses: the error is at the token field, and nothing is added.
    browser.fill("#name", "Front desk").await;
    browser.fill("#account_sid", TWILIO_SID).await;
    browser.fill("#auth_token", "not-the-token").await;
    browser.fill("#phone_number", TWILIO_NUMBER).await;
    browser.click("button[type=submit]").await;
    let error = browser.text_of("#auth_token-error").await;
    assert!(error.contains("Auth Token"), "{error}");
    for other in ["#account_sid-error", "#phone_number-error", "#name-error"] {
        assert!(
            browser
                .client
                .find(fantoccini::Locator::Css(other))
                .await
                .is_err(),
            "only the token is marked wrong, not {other}"
        );
    }
    assert_eq!(
        browser
            .find("#auth_token")
            .await
            .attr("aria-invalid")
            .await
            .unwrap()
            .as_deref(),
        Some("true")
    );
    assert!(
        !browser
            .client
            .source()
            .await
            .unwrap()
            .contains("not-the-token"),
        "the token typed is not sent back"
    );
    browser.screenshot("add-twilio-field-error").await;
    assert!(rig.list(LOCATION_A).await.is_empty(), "nothing was added");

    // A number the Twilio account does not own: the error is at the number.
    browser.fill("#auth_token", TWILIO_TOKEN).await;
    browser.fill("#phone_number", "+15005550009").await;
    browser.click("button[type=submit]").await;
    let error = browser.text_of("#phone_number-error").await;
    assert!(
        error.contains("does not own the number +15005550009"),
        "{error}"
    );
    assert!(rig.list(LOCATION_A).await.is_empty(), "nothing was added");

    // Right: the account is added and listed, connected.
    browser.fill("#auth_token", TWILIO_TOKEN).await;
    browser.fill("#phone_number", TWILIO_NUMBER).await;
    browser.click("button[type=submit]").await;
    let table = browser
        .wait_for_text("table", "the account listed", |text| {
            text.contains("Front desk")
        })
        .await;
    assert!(table.contains("whatsnap-account-front-desk"), "{table}");
    browser
        .wait_for_text("#account-count", "1 of 5 accounts", |text| {
            text == "1 of 5 accounts"
        })
        .await;
    let listed = rig.list(LOCATION_A).await;
    assert_eq!(listed.len(), 1);
    let account = listed[0].clone();

    // Settings: the pacing changes.
    browser.click("tr[data-account] a").await;
    browser
        .wait_for_text("h1", "the Front desk page", |t| t == "Front desk")
        .await;
    assert_eq!(
        browser.text_of("#account-tag").await,
        "whatsnap-account-front-desk"
    );
    browser.screenshot("account-settings").await;

    // Renamed: the name changes, the tag stays.
    browser.fill("#name", "Reception").await;
    browser.click("#save-name").await;
    browser
        .wait_for_text("#notice", "the rename told", |t| {
            t == "Renamed. The tag stays as it was."
        })
        .await;
    assert_eq!(browser.text_of("h1").await, "Reception");
    let renamed = rig.account(LOCATION_A, &account.account_id).await;
    assert_eq!(
        (renamed.name.as_str(), renamed.tag.as_str()),
        ("Reception", "whatsnap-account-front-desk")
    );
    browser.fill("#interval_seconds", "3").await;
    browser.fill("#jitter_seconds", "1").await;
    browser.fill("#typing_seconds", "0.5").await;
    browser.click("#save-pacing").await;
    browser
        .wait_for_text("#notice", "the pacing saved", |t| t == "Pacing saved.")
        .await;
    let paced = "3.0 s apart (+ up to 1.0 s), typing 0.5 s";
    assert_eq!(browser.text_of("#pacing-now").await, paced);
    assert_eq!(
        rig.account(LOCATION_A, &account.account_id).await.pacing,
        paced
    );

    // Remove, after a confirmation that says what happens to the contacts and their tag.
    browser.click("#remove").await;
    let consequences = browser.text_of("#consequences").await;
    assert!(
        consequences.contains("Its contacts stay in GHL"),
        "{consequences}"
    );
    assert!(
        consequences.contains("keep the tag whatsnap-account-front-desk"),
        "{consequences}"
    );
    browser.screenshot("remove-account-confirmation").await;
    assert_eq!(
        rig.account(LOCATION_A, &account.account_id).await.status,
        account.status,
        "opening the confirmation removes nothing"
    );
    browser.click("#confirm-remove").await;
    browser
        .wait_for_text("#account-count", "0 of 5 accounts", |text| {
            text == "0 of 5 accounts"
        })
        .await;
    assert_eq!(browser.text_of(".empty").await, "No accounts yet.");
    assert!(
        !browser.client.source().await.unwrap().contains("Reception"),
        "a removed account is not listed"
    );
    assert_eq!(
        rig.account(LOCATION_A, &account.account_id).await.status,
        "removed"
    );
    rig.browser.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whatsapp_qr_shows_rotates_and_turns_connected_when_scanned_and_a_disconnect_shows_live()
{
    let rig = Rig::start("dashboard-whatsapp").await;
    let browser = &rig.browser;
    rig.sign_in(LOCATION_A).await;
    rig.open(&format!("/app/accounts/new?location={LOCATION_A}"))
        .await;
    browser.click("#add-whatsapp").await;
    browser.fill("#name", "Sales").await;
    browser.screenshot("add-whatsapp").await;
    browser.click("button[type=submit]").await;

    // The linking page shows the QR code WhatsApp gave, drawn as an image.
    assert_eq!(browser.text_of("h1").await, "Link Sales");
    // The page's address names the account.
    let url = browser.client.current_url().await.unwrap();
    let account_id = url
        .path()
        .strip_prefix("/app/accounts/")
        .and_then(|rest| rest.strip_suffix("/link"))
        .unwrap_or_else(|| panic!("not a linking page: {url}"))
        .to_owned();
    let instance = instance_of(&account_id);
    let first = eventually("a QR code issued by Evolution", async || {
        rig.evolution.instance(&instance)?.qr_code
    })
    .await;
    browser
        .wait_for_attr("#qr", "data-qr", "the first QR code shown", |shown| {
            shown == first
        })
        .await;
    browser.find("#qr svg").await;
    browser.screenshot("link-whatsapp-qr").await;

    // It rotates: the new code replaces the old on the page by itself.
    let rotated = rig.evolution.rotate_qr(&instance).await.unwrap().unwrap();
    assert_ne!(rotated, first);
    browser
        .wait_for_attr("#qr", "data-qr", "the rotated QR code shown", |shown| {
            shown == rotated
        })
        .await;

    // The phone scans it: the page turns Connected by itself.
    rig.evolution
        .scan(&instance, WHATSAPP_NUMBER, "Sales")
        .await
        .unwrap();
    browser
        .wait_for_text("#account-status", "the page shows Connected", |text| {
            text == "Connected"
        })
        .await;
    assert!(
        browser
            .find("#connected")
            .await
            .is_displayed()
            .await
            .unwrap()
    );
    assert!(!browser.find("#qr").await.is_displayed().await.unwrap());
    browser.screenshot("link-whatsapp-connected").await;

    // The list shows it connected, then the disconnect, by itself.
    rig.open(&format!("/app/accounts?location={LOCATION_A}"))
        .await;
    let row = format!("tr[data-account=\"{account_id}\"] [data-field=status]");
    browser
        .wait_for_text(&row, "the list shows it connected", |text| {
            text == "Connected"
        })
        .await;
    rig.evolution.disconnect(&instance, 401).await.unwrap();
    browser
        .wait_for_text(&row, "the list shows the disconnect", |text| {
            text == "Logged out"
        })
        .await;
    browser.screenshot("accounts-live-disconnect").await;

    // Linked again from its settings: a new QR code.
    rig.open(&format!("/app/accounts/{account_id}?location={LOCATION_A}"))
        .await;
    browser.click("#reconnect").await;
    browser
        .wait_for_text("h1", "the Link Sales page", |t| t == "Link Sales")
        .await;
    let again = eventually("a new QR code after the logout", async || {
        rig.evolution
            .instance(&instance)?
            .qr_code
            .filter(|code| *code != rotated)
    })
    .await;
    browser
        .wait_for_attr("#qr", "data-qr", "the new QR code shown", |shown| {
            shown == again
        })
        .await;

    // Scanned again, then disconnected from its settings without being removed: the device is
    // logged out at the engine, the account stays (same tag) and shows Logged out, and it can
    // be linked again.
    rig.evolution
        .scan(&instance, WHATSAPP_NUMBER, "Sales")
        .await
        .unwrap();
    browser
        .wait_for_text("#account-status", "connected again", |text| {
            text == "Connected"
        })
        .await;
    rig.open(&format!("/app/accounts/{account_id}?location={LOCATION_A}"))
        .await;
    browser.click("#disconnect").await;
    browser
        .wait_for_text("#notice", "the disconnect told", |t| {
            t.starts_with("Disconnected")
        })
        .await;
    browser
        .wait_for_text("#account-status", "the account logged out", |t| {
            t == "Logged out"
        })
        .await;
    assert_eq!(
        rig.evolution.instance(&instance).unwrap().state,
        "close",
        "the engine logged the device out"
    );
    let kept = rig.account(LOCATION_A, &account_id).await;
    assert_eq!(
        (kept.status.as_str(), kept.tag.as_str()),
        ("logged_out", "whatsnap-account-sales")
    );
    browser.screenshot("account-disconnected").await;

    // Disconnected, it can move to the other engine and back, keeping its id and tag.
    for engine in ["embedded", "evolution"] {
        browser
            .find("#engine")
            .await
            .select_by_value(engine)
            .await
            .unwrap();
        browser.click("#save-engine").await;
        browser
            .wait_for_text("#notice", "the move told", |t| t.starts_with("Moved"))
            .await;
        browser
            .wait_for_text("#engine-now", "the engine shown", |t| t == engine)
            .await;
        let moved = rig.account(LOCATION_A, &account_id).await;
        assert_eq!(
            (moved.engine.as_str(), moved.tag.as_str()),
            (engine, "whatsnap-account-sales")
        );
    }
    browser.click("#reconnect").await;
    browser
        .wait_for_text("h1", "the Link Sales page", |t| t == "Link Sales")
        .await;
    rig.open(&format!("/app/accounts?location={LOCATION_A}"))
        .await;

    // Another number, linked with a pairing code typed on the phone instead of a QR code.
    browser.click("#add-account").await;
    browser.click("#add-whatsapp").await;
    browser.fill("#name", "Support").await;
    browser.fill("#pairing_phone", WHATSAPP_NUMBER).await;
    browser.click("button[type=submit]").await;
    browser
        .wait_for_text("h1", "the Link Support page", |t| t == "Link Support")
        .await;
    let url = browser.client.current_url().await.unwrap();
    let support = url
        .path()
        .strip_prefix("/app/accounts/")
        .and_then(|rest| rest.strip_suffix("/link"))
        .unwrap_or_else(|| panic!("not a linking page: {url}"))
        .to_owned();
    let code = eventually("a pairing code issued by Evolution", async || {
        rig.evolution.instance(&instance_of(&support))?.pairing_code
    })
    .await;
    browser
        .wait_for_text("#pairing-code", "the pairing code shown", |shown| {
            shown == code
        })
        .await;
    browser.screenshot("link-whatsapp-pairing-code").await;
    rig.browser.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_is_added_with_its_servers_settings_and_the_page_waits_until_it_is_seen() {
    let rig = Rig::start("dashboard-mac").await;
    let browser = &rig.browser;
    rig.sign_in(LOCATION_A).await;
    rig.open(&format!("/app/accounts/new?location={LOCATION_A}"))
        .await;
    browser.click("#add-mac").await;

    // A wrong password: the Mac refuses it, and nothing is added.
    browser.fill("#name", "Front desk Mac").await;
    browser.fill("#url", &rig.mac.base_url()).await;
    browser.fill("#password", "not-the-password").await;
    browser.click("button[type=submit]").await;
    let error = browser.text_of("#form-error").await;
    assert!(error.starts_with("Nothing was added"), "{error}");
    browser.screenshot("add-mac-refused").await;
    assert!(rig.list(LOCATION_A).await.is_empty());

    // The right one: the pairing page, which turns Connected once whatsnap hears from the Mac.
    browser.fill("#password", FakeBlueBubbles::PASSWORD).await;
    browser.click("button[type=submit]").await;
    browser
        .wait_for_text("h1", "the Link Front desk Mac page", |t| {
            t == "Link Front desk Mac"
        })
        .await;
    assert!(
        browser
            .client
            .source()
            .await
            .unwrap()
            .contains("Pair the device"),
        "the pairing steps are shown"
    );
    browser
        .wait_for_text("#account-status", "the Mac seen", |text| {
            text == "Connected"
        })
        .await;
    browser.screenshot("link-mac-connected").await;
    rig.browser.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_of_one_location_cannot_see_or_change_another_locations_accounts() {
    let rig = Rig::start("dashboard-isolation").await;
    let own = rig.add_whatsapp(LOCATION_A, "Sales A").await;
    let theirs = rig.add_whatsapp(LOCATION_B, "Secret B").await;
    // As B's pages and the stream of B's account show it, before anything is tried.
    let before = eventually("B's account listed", async || {
        let listed = rig.list(LOCATION_B).await;
        (!listed.is_empty()).then_some(listed)
    })
    .await;
    let theirs_before = rig.account(LOCATION_B, &theirs.account_id).await;
    rig.sign_in(LOCATION_A).await;
    rig.open(&format!(
        "/app/accounts/{}?location={LOCATION_A}",
        own.account_id
    ))
    .await;
    assert_eq!(rig.browser.text_of("h1").await, "Sales A");
    let csrf = rig.csrf().await;

    // Editing the URL to B's account, in the browser: refused, nothing of B shown.
    rig.open(&format!(
        "/app/accounts/{}?location={LOCATION_B}",
        theirs.account_id
    ))
    .await;
    assert_eq!(rig.browser.text_of("h1").await, "Not yours to see");
    assert!(
        !rig.browser
            .client
            .source()
            .await
            .unwrap()
            .contains("Secret B")
    );
    rig.browser
        .screenshot("account-of-another-location-refused")
        .await;

    // Every page, with B's location or with A's location and B's account.
    let b = &theirs.account_id;
    for location in [LOCATION_B, LOCATION_A] {
        for page in ["", "/link", "/remove", "/events"] {
            let path = format!("/app/accounts/{b}{page}?location={location}");
            let reply = rig.request(&path, None).await;
            assert_eq!(reply.status, 403, "{path}");
            assert!(!reply.body.contains("Secret B"), "{path}");
        }
    }
    for path in [
        format!("/app/accounts?location={LOCATION_B}"),
        format!("/app/accounts/events?location={LOCATION_B}"),
        format!("/app/accounts/new?location={LOCATION_B}"),
        format!("/app/accounts/new/whatsapp?location={LOCATION_B}"),
        format!("/app/accounts/new/twilio?location={LOCATION_B}"),
        format!("/app/accounts/new/device?location={LOCATION_B}&kind=mac"),
    ] {
        assert_eq!(rig.request(&path, None).await.status, 403, "{path}");
    }

    // Every action, with a valid form token of A's sign-in: refused, nothing changes.
    for location in [LOCATION_B, LOCATION_A] {
        for (action, extra) in [
            ("remove", ("reason", "")),
            ("pacing", ("interval_seconds", "9")),
            ("rename", ("name", "Hijacked")),
            ("connect", ("pairing_phone", "")),
            ("credentials", ("auth_token", "x")),
        ] {
            let path = format!("/app/accounts/{b}/{action}");
            let form = [("location", location), ("csrf", csrf.as_str()), extra];
            let reply = rig.request(&path, Some(&form)).await;
            assert_eq!(reply.status, 403, "{path} as {location}");
        }
    }
    for kind in ["whatsapp", "twilio", "device"] {
        let path = format!("/app/accounts/new/{kind}");
        let form = [
            ("location", LOCATION_B),
            ("csrf", csrf.as_str()),
            ("name", "Intruder"),
            ("account_sid", TWILIO_SID),
            ("auth_token", TWILIO_TOKEN),
            ("phone_number", TWILIO_NUMBER),
        ];
        assert_eq!(rig.request(&path, Some(&form)).await.status, 403, "{path}");
    }

    // A form without this sign-in's token (a page of another site posting it) is refused too,
    // for the viewer's own account.
    let path = format!("/app/accounts/{}/remove", own.account_id);
    for token in ["", "forged"] {
        let form = [("location", LOCATION_A), ("csrf", token)];
        assert_eq!(rig.request(&path, Some(&form)).await.status, 403);
    }

    // Nothing changed: B's account is as it was, A's is still there, and no account was added.
    assert_eq!(rig.list(LOCATION_B).await, before);
    assert_eq!(
        rig.account(LOCATION_B, &theirs.account_id).await,
        theirs_before
    );
    assert_eq!(
        rig.account(LOCATION_A, &own.account_id).await.status,
        own.status
    );
    assert_eq!(rig.list(LOCATION_A).await.len(), 1);

    // The token does work on the viewer's own account, so the refusals above were the scope's.
    let form = [
        ("location", LOCATION_A),
        ("csrf", csrf.as_str()),
        ("interval_seconds", "2"),
    ];
    let reply = rig
        .request(
            &format!("/app/accounts/{}/pacing", own.account_id),
            Some(&form),
        )
        .await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    assert!(
        rig.account(LOCATION_A, &own.account_id)
            .await
            .pacing
            .starts_with("2.0 s apart"),
    );
    drop(rig.whatsnap);
}

/// The dashboard's live-update streams open and not yet ended, from `/metrics`.
async fn open_live_streams(rig: &Rig) -> i64 {
    let bearer = format!("Bearer {}", whatsnap_testkit::ADMIN_TOKEN);
    let metrics = http_request(rig.http, "/metrics", &[("authorization", &bearer)], None)
        .await
        .unwrap()
        .body;
    let value = |name: &str| -> i64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as i64
    };
    value("whatsnap_dashboard_live_streams_opened_total")
        - value("whatsnap_dashboard_live_streams_closed_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_left_behind_let_go_of_their_live_streams_so_a_click_is_answered_at_once() {
    let rig = Rig::start("dashboard-streams").await;
    rig.sign_in(LOCATION_A).await;
    // More live pages, one after the other, than a browser keeps connections to one host (6).
    for _ in 0..8 {
        rig.open(&format!("/app/accounts?location={LOCATION_A}"))
            .await;
        rig.browser.find("[data-live]").await;
    }
    // Only the page on screen keeps a stream: the others were let go as they were left.
    eventually("the streams of the pages left behind ended", async || {
        let open = open_live_streams(&rig).await;
        (open <= 1).then_some(open)
    })
    .await;
    // And the browser still has connections for what the viewer does next.
    rig.open(&format!("/app/accounts/new?location={LOCATION_A}"))
        .await;
    rig.browser.click("#add-whatsapp").await;
    assert!(
        rig.browser
            .find("button[type=submit]")
            .await
            .is_displayed()
            .await
            .unwrap()
    );
}
