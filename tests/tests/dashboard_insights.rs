//! The dashboard's assignment, contacts, tags, insights and alerts pages in a real browser
//! (headless Chromium over WebDriver) against a real `whatsnap` with the fake Twilio and fake
//! GHL around it. Given a Twilio account in location A that a contact has texted, and another
//! location B, an operator of A signed in with their API token: edits the account's rules (a
//! bad rule typed as JSON names its field; with the forms, builds two rules with hours, a
//! holiday and capacity, sees the JSON follow and a bad value refused at its field, moves a
//! rule with the keyboard, previews over history, and saving stores what the JSON showed),
//! reads the contact's timeline with the reasons, its route and owner, sees the tags and the
//! insights' charts carry the message, sees the alerts with what to do, and can see nothing of
//! B however the URL is edited. Screenshots of each page go to `target/tmp/dashboard/`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fantoccini::{Client, Locator};
use whatsnap_proto::assignment::v1 as assignment;
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::ghlsync::v1 as ghlsync;
use whatsnap_proto::session::v1 as session;
use whatsnap_proto::tokens::v1 as tokens;
use whatsnap_testkit::browser::{browser, screenshot_dir};
use whatsnap_testkit::{
    Channel, FakeEvolution, FakeGhl, FakeGhlUser, FakeTwilio, FakeTwilioAccount, TwilioText,
    Whatsnap, eventually, http_request,
};

const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TWILIO_TOKEN: &str = "twilio-auth-token-of-the-agency";
const SALES: &str = "+15005550006";
const OTHER: &str = "+15005550007";
const LOCATION_A: &str = "locInsightsA";
const LOCATION_B: &str = "locInsightsB";
const CONTACT_A: &str = "+14155550123";
const CONTACT_B: &str = "+14155550188";
const PROVIDER: &str = "whatsnapProvider0001";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

async fn add_twilio_account(
    channel: &Channel,
    location: &str,
    name: &str,
    number: &str,
) -> session::Account {
    session::session_service_client::SessionServiceClient::new(channel.clone())
        .add_account(session::AddAccountRequest {
            location_id: location.into(),
            kind: session::AccountKind::Twilio as i32,
            name: name.into(),
            phone_number: number.into(),
            twilio: Some(session::TwilioCredentials {
                account_sid: SID.into(),
                auth_token: TWILIO_TOKEN.into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// A text to `account` as Twilio delivers it, signed.
async fn text(http: SocketAddr, account: &session::Account, sid: &str, from: &str, body: &str) {
    let path = format!(
        "/webhooks/twilio/{}/{}/inbound",
        account.location_id, account.account_id
    );
    let (status, reply) = TwilioText {
        account_sid: SID,
        message_sid: sid,
        from,
        to: &account.phone_number,
        body,
        extra: &[("ProfileName", "Ana Lima")],
    }
    .post(http, &path, TWILIO_TOKEN)
    .await
    .unwrap();
    assert_eq!(status, 200, "{reply}");
}

/// The contact's timeline once it shows the event types in `wanted`.
async fn timeline_with(channel: &Channel, location: &str, phone: &str, wanted: &[&str]) {
    let mut client = events::events_service_client::EventsServiceClient::new(channel.clone());
    eventually(
        format!("the timeline of a contact shows {wanted:?}"),
        async || {
            let history = client
                .contact_history(events::ContactHistoryRequest {
                    location_id: location.into(),
                    phone: phone.into(),
                })
                .await
                .ok()?
                .into_inner();
            let types: Vec<String> = history
                .entries
                .iter()
                .filter_map(|e| e.event.as_ref().map(|e| e.event_type.clone()))
                .collect();
            wanted
                .iter()
                .all(|w| types.iter().any(|t| t == w))
                .then_some(())
        },
    )
    .await;
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

/// The element at `css`, once it is on the page.
async fn element(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("no {css} on the page: {err}"))
}

async fn text_of(client: &Client, css: &str) -> String {
    element(client, css).await.text().await.unwrap()
}

/// Waits until the element at `css` says `wanted`; its text.
async fn text_containing(client: &Client, css: &str, wanted: &str) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if text.contains(wanted) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never said {wanted:?}; last: {last:?}");
}

/// The value of the form control at `css`, once it is on the page.
async fn value_of(client: &Client, css: &str) -> String {
    element(client, css)
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default()
}

async fn attr(client: &Client, css: &str, name: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("no {css} on the page: {err}"))
        .attr(name)
        .await
        .unwrap()
        .unwrap_or_default()
}

/// Waits until the rules form has taken in the last edit (it may be drawn again meanwhile).
async fn settled(client: &Client) {
    for _ in 0..200 {
        let busy = client
            .execute(
                "var f = document.getElementById('rules-builder'); return f ? f.getAttribute('aria-busy') : null;",
                Vec::new(),
            )
            .await
            .unwrap();
        if busy.as_str() != Some("true") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the rules form never settled");
}

/// Types `text` into the field at `css`, once it is on the page.
async fn fill(client: &Client, css: &str, text: &str) {
    settled(client).await;
    element(client, css).await.send_keys(text).await.unwrap();
}

async fn click(client: &Client, css: &str) {
    settled(client).await;
    element(client, css).await.click().await.unwrap();
}

/// Presses Enter on the control at `css`, as a keyboard user does.
async fn press_enter(client: &Client, css: &str) {
    settled(client).await;
    element(client, css)
        .await
        .send_keys(&fantoccini::key::Key::Enter.to_string())
        .await
        .unwrap();
}

/// The id of the element with the keyboard focus (read in the page: the form is redrawn under
/// a reference held here).
async fn focused_id(client: &Client) -> String {
    client
        .execute(
            "return document.activeElement ? document.activeElement.id : '';",
            Vec::new(),
        )
        .await
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The rules document the JSON view shows.
async fn rules_shown(client: &Client) -> serde_json::Value {
    let text = value_of(client, "#rules_json").await;
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("the JSON view: {err}: {text}"))
}

async fn type_rules(client: &Client, json: &str) {
    let editor = client.find(Locator::Id("rules_json")).await.unwrap();
    editor.clear().await.unwrap();
    editor.send_keys(json).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_edits_rules_reads_a_timeline_and_insights_and_sees_nothing_of_another_location()
 {
    // Given whatsnap with the fake Twilio and GHL, a Twilio account in each location, and
    // location A's default rules.
    let ghl = FakeGhl::start().await.unwrap();
    let twilio = FakeTwilio::start().await.unwrap();
    twilio.add_account(FakeTwilioAccount {
        sid: SID.into(),
        auth_token: TWILIO_TOKEN.into(),
        status: "active".into(),
        numbers: vec![(SALES.into(), true), (OTHER.into(), true)],
    });
    for (id, name) in [("u_ana", "Ana Lima"), ("u_ben", "Ben Okafor")] {
        ghl.add_user(
            LOCATION_A,
            FakeGhlUser {
                id: id.into(),
                name: name.into(),
                email: format!("{id}@example.com"),
                role: "user".into(),
                deleted: false,
            },
        );
    }
    let evolution = FakeEvolution::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--data-dir",
        data.path().to_str().unwrap(),
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
        "--ghl-users-refresh",
        "1",
        "--ghl-webhook-ed25519-key",
        &ghl.ed25519_public_key_pem(),
        "--ghl-conversation-provider-id",
        PROVIDER,
        "--evolution-url",
        &evolution.base_url(),
        "--evolution-api-key",
        FakeEvolution::GLOBAL_API_KEY,
        "--whatsapp-engine",
        "evolution",
    ]
    .map(str::to_owned)
    .into();
    let whatsnap = Whatsnap::serve(binary(), &args, "dashboard-insights").unwrap();
    let channel = whatsnap.channel().await;
    let http = whatsnap.http.unwrap();
    let sales = add_twilio_account(&channel, LOCATION_A, "Sales A", SALES).await;
    let secret = add_twilio_account(&channel, LOCATION_B, "Secret B", OTHER).await;
    // A WhatsApp account of A that nobody has linked yet: an alert.
    session::session_service_client::SessionServiceClient::new(channel.clone())
        .add_account(session::AddAccountRequest {
            location_id: LOCATION_A.into(),
            kind: session::AccountKind::Whatsapp as i32,
            name: "Support WhatsApp".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // A is connected to GHL, whose users are Ana and Ben.
    let token = "pit-insights-0000-0000";
    ghl.add_private_token(LOCATION_A, token);
    ghlsync::ghl_sync_service_client::GhlSyncServiceClient::new(channel.clone())
        .connect_private_token(ghlsync::ConnectPrivateTokenRequest {
            location_id: LOCATION_A.into(),
            token: token.into(),
            company_id: FakeGhl::COMPANY_ID.into(),
        })
        .await
        .unwrap();
    let mut rules =
        assignment::assignment_service_client::AssignmentServiceClient::new(channel.clone());
    rules
        .clone()
        .set_rules(assignment::SetRulesRequest {
            location_id: LOCATION_A.into(),
            account_id: String::new(),
            rules_json: r#"{"rules":[{"strategy":"user","user":"u_ana"}]}"#.into(),
        })
        .await
        .unwrap();

    eventually("A's GHL users are known", async || {
        let users = rules
            .clone()
            .list_users(assignment::ListUsersRequest {
                location_id: LOCATION_A.into(),
            })
            .await
            .ok()?
            .into_inner()
            .users;
        (users.len() == 2).then_some(())
    })
    .await;

    // When a contact texts each account.
    text(
        http,
        &sales,
        "SM00000000000000000000000000000001",
        CONTACT_A,
        "hello A",
    )
    .await;
    text(
        http,
        &secret,
        "SM00000000000000000000000000000002",
        CONTACT_B,
        "hello B",
    )
    .await;
    timeline_with(
        &channel,
        LOCATION_A,
        CONTACT_A,
        &["InboundMessageReceived", "ContactCreated"],
    )
    .await;
    timeline_with(&channel, LOCATION_B, CONTACT_B, &["InboundMessageReceived"]).await;
    let mut contacts =
        whatsnap_proto::contacts::v1::contacts_service_client::ContactsServiceClient::new(
            channel.clone(),
        );
    eventually(
        "A's contacts list the contact with the account's tag",
        async || {
            let listed = contacts
                .list_contacts(whatsnap_proto::contacts::v1::ListContactsRequest {
                    location_id: LOCATION_A.into(),
                    limit: 10,
                    query: String::new(),
                })
                .await
                .ok()?
                .into_inner()
                .contacts;
            listed
                .iter()
                .any(|c| c.phone == CONTACT_A && c.tags.contains(&sales.tag))
                .then_some(())
        },
    )
    .await;
    eventually("the contact of A is assigned to Ana", async || {
        let explained = rules
            .clone()
            .explain(assignment::ExplainRequest {
                location_id: LOCATION_A.into(),
                phone: CONTACT_A.into(),
            })
            .await
            .ok()?
            .into_inner();
        explained
            .decisions
            .iter()
            .any(|d| d.user_id == "u_ana")
            .then_some(())
    })
    .await;

    // Ana replies from GHL; Twilio reports the reply undelivered.
    let ghl_contact = eventually("the contact of A is in GHL", async || {
        ghl.contacts(LOCATION_A).into_iter().next()
    })
    .await;
    let (_, status) = ghl
        .send_provider_outbound(
            &format!("http://{http}/webhooks/ghl/delivery"),
            LOCATION_A,
            &ghl_contact.id,
            "We are open until 6pm",
            Some("u_ana"),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let sent = eventually("the reply is sent through Twilio", async || {
        twilio.sent().into_iter().find(|m| m.to == CONTACT_A)
    })
    .await;
    assert_eq!(
        twilio
            .report_status(&sent.sid, "undelivered", Some(30003))
            .await
            .unwrap(),
        200
    );
    timeline_with(
        &channel,
        LOCATION_A,
        CONTACT_A,
        &["OutboundMessageSent", "MessageFailed"],
    )
    .await;

    // An operator of location A signs in with their API token.
    let issued = tokens::tokens_service_client::TokensServiceClient::new(channel.clone())
        .create_token(tokens::CreateTokenRequest {
            role: "operator".into(),
            locations: vec![LOCATION_A.into()],
            expires_in_seconds: 3600,
            name: "dashboard operator".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let dashboard = format!("http://{http}");
    let (_driver, client) = browser().await;
    // Tall enough for a whole page in each screenshot, as wide as GHL's iframe.
    client.set_window_size(1000, 1500).await.unwrap();
    client.goto(&format!("{dashboard}/app")).await.unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(&issued.secret)
        .await
        .unwrap();
    client
        .find(Locator::Css("form[action='/app/signin'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_containing(&client, "h1", "Accounts").await;

    // Assignment: a bad rule names its field as the CLI does; a good one previews, then saves.
    // As narrow as GHL's iframe, tall enough for the forms in one screenshot.
    client.set_window_size(900, 2600).await.unwrap();
    client
        .goto(&format!(
            "{dashboard}/app/assignment?location={LOCATION_A}&account={}",
            sales.account_id
        ))
        .await
        .unwrap();
    assert_eq!(text_of(&client, "h1").await, "Assignment");
    // The JSON view: a bad rule names its field as the CLI does, and the form, drawn from the
    // JSON, puts the refusal next to its input.
    type_rules(
        &client,
        r#"{"rules":[{"strategy":"round_robin","users":[]}]}"#,
    )
    .await;
    let refused = text_containing(&client, "#validation", "rules[0].users").await;
    assert!(refused.contains("needs at least one user"), "{refused}");
    text_containing(&client, "#field-error", "rules[0].users").await;
    assert_eq!(attr(&client, "#r0-users", "aria-invalid").await, "true");
    screenshot(&client, "assignment-invalid-rule").await;
    // A field the form has no input for: the form says which, and the JSON stays the editor.
    type_rules(
        &client,
        r#"{"rules":[{"strategy":"user","user":"u_ben","note":"vip"}]}"#,
    )
    .await;
    text_containing(&client, "#form-not-shown", "rules[0].note").await;
    type_rules(&client, r#"{"rules":[{"strategy":"user","user":"u_ben"}]}"#).await;
    assert_eq!(value_of(&client, "#r0-user").await, "u_ben");

    // The forms: rule 1 gives Twilio contacts to Ben during business hours (New York,
    // weekdays, Christmas off); rule 2, the fallback, shares the others between Ana (two turns)
    // and Ben, at most 3 open contacts each.
    fill(&client, "#f-time_zone", "America/New_York").await;
    for day in ["mon", "tue", "wed", "thu", "fri"] {
        fill(&client, &format!("#f-bh-{day}"), "09:00-17:00").await;
    }
    fill(&client, "#f-holidays", "2026-12-25").await;
    // The conditions start folded while none is set.
    click(&client, "#r0-when > summary").await;
    click(&client, "#r0 input[value='twilio']").await;
    click(&client, "#r0-hours option[value='business']").await;
    click(&client, "#add-rule").await;
    fill(&client, "#r1-users", "u_ana:2, u_ben").await;
    // A bad value typed in the form is refused at its field, with the CLI's path.
    fill(&client, "#f-max_open", "0").await;
    let refused = text_containing(&client, "#field-error", "capacity.max_open").await;
    assert!(
        refused.contains("must be a whole number of at least 1"),
        "{refused}"
    );
    assert_eq!(attr(&client, "#f-max_open", "aria-invalid").await, "true");
    text_containing(&client, "#validation", "capacity.max_open").await;
    screenshot(&client, "assignment-form-error").await;
    client
        .find(Locator::Css("#f-max_open"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    fill(&client, "#f-max_open", "3").await;
    text_containing(&client, "#validation", "valid: 2 rule(s)").await;
    // With the keyboard: the fallback moves up, then back down; the focus follows the rule.
    press_enter(&client, "#r1-up").await;
    eventually(
        "the fallback is rule 1, its Move down focused",
        async || {
            (focused_id(&client).await == "r0-down"
                && rules_shown(&client).await["rules"][0]["strategy"] == "round_robin")
                .then_some(())
        },
    )
    .await;
    press_enter(&client, "#r0-down").await;
    eventually(
        "the fallback is rule 2 again, its Move up focused",
        async || (focused_id(&client).await == "r1-up").then_some(()),
    )
    .await;
    let shown = eventually("the JSON view shows the form's rules", async || {
        let shown = rules_shown(&client).await;
        (shown["rules"][0]["strategy"] == "user" && shown["capacity"]["max_open"] == 3)
            .then_some(shown)
    })
    .await;
    let weekday = serde_json::json!(["09:00-17:00"]);
    assert_eq!(
        shown,
        serde_json::json!({
            "time_zone": "America/New_York",
            "business_hours": {"mon": weekday, "tue": weekday, "wed": weekday, "thu": weekday,
                               "fri": weekday},
            "holidays": ["2026-12-25"],
            "capacity": {"max_open": 3},
            "rules": [
                {"strategy": "user", "user": "u_ben",
                 "when": {"channels": ["twilio"], "hours": "business"}},
                {"strategy": "round_robin", "users": [{"user": "u_ana", "weight": 2}, "u_ben"]}
            ]
        })
    );
    screenshot(&client, "assignment-forms").await;

    // The preview replays the recorded decision against the rules shown; nothing is saved yet.
    client
        .find(Locator::Id("simulate"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let preview = text_containing(&client, "#preview", "replayed").await;
    assert!(preview.contains("1 decision(s)"), "{preview}");
    client
        .execute(
            "document.getElementById('preview').scrollIntoView()",
            Vec::new(),
        )
        .await
        .unwrap();
    screenshot(&client, "assignment-preview").await;
    client
        .find(Locator::Id("save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_containing(&client, "#saved", "Rules saved: version 1").await;
    let saved = eventually("GetRules answers the saved rules", async || {
        let saved = rules
            .clone()
            .get_rules(assignment::GetRulesRequest {
                location_id: LOCATION_A.into(),
                account_id: sales.account_id.clone(),
            })
            .await
            .ok()?
            .into_inner();
        (saved.version == 1).then_some(saved)
    })
    .await;
    let saved: serde_json::Value = serde_json::from_str(&saved.rules_json).unwrap();
    assert_eq!(saved, shown);
    // The page, loaded again, draws the saved rules in the form.
    assert_eq!(value_of(&client, "#r1-users").await, "u_ana:2, u_ben");
    assert_eq!(value_of(&client, "#f-holidays").await, "2026-12-25");
    // Narrower than GHL's iframe, the forms still fit: nothing scrolls sideways.
    client.set_window_size(600, 1500).await.unwrap();
    let overflow = client
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        overflow.as_i64(),
        Some(0),
        "the page scrolls sideways at 600px"
    );
    client.set_window_size(1000, 1500).await.unwrap();

    let csrf = client
        .find(Locator::Id("assignment"))
        .await
        .unwrap()
        .attr("data-csrf")
        .await
        .unwrap()
        .expect("the page carries its CSRF token");

    // Ben goes off: he takes no new contacts (SetAvailability), and his time zone is set.
    let ben = "#users-table tr[data-user='u_ben']";
    let click = async |css: String| {
        client
            .find(Locator::Css(&css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    };
    click(format!("{ben} summary")).await;
    click(format!("{ben} input[name='active']")).await;
    client
        .find(Locator::Css(&format!("{ben} input[name='time_zone']")))
        .await
        .unwrap()
        .send_keys("Europe/Madrid")
        .await
        .unwrap();
    click(format!("{ben} button[type='submit']")).await;
    // The users' read model takes it in shortly after the page has said it is saved.
    eventually("Ben is inactive and Ana is not", async || {
        let users = rules
            .clone()
            .list_users(assignment::ListUsersRequest {
                location_id: LOCATION_A.into(),
            })
            .await
            .ok()?
            .into_inner()
            .users;
        (users.iter().any(|u| u.user_id == "u_ben" && !u.active)
            && users.iter().any(|u| u.user_id == "u_ana" && u.active))
        .then_some(())
    })
    .await;
    client.refresh().await.unwrap();
    text_containing(&client, &format!("{ben} .status"), "inactive").await;
    // The form starts from what is set, so saving it again keeps it.
    let time_zone = client
        .find(Locator::Css(&format!("{ben} input[name='time_zone']")))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(time_zone.as_deref(), Some("Europe/Madrid"));

    // Contacts: found by part of the number; the timeline gives each event with its reason.
    client
        .goto(&format!(
            "{dashboard}/app/contacts?location={LOCATION_A}&q=555%200123"
        ))
        .await
        .unwrap();
    let list = text_of(&client, "#contacts").await;
    assert!(
        list.contains(CONTACT_A) && list.contains(&sales.tag),
        "{list}"
    );
    assert!(!list.contains(CONTACT_B), "{list}");
    screenshot(&client, "contacts-search").await;
    client
        .find(Locator::Css("#contacts a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let timeline = text_containing(&client, "#timeline", "InboundMessageReceived").await;
    assert!(
        timeline.contains(&format!("by account {}", sales.account_id)),
        "{timeline}"
    );
    assert!(
        timeline.contains("ContactCreated") && timeline.contains("first message reached account"),
        "{timeline}"
    );
    assert!(
        timeline.contains(&format!("tag {} added", sales.tag)),
        "{timeline}"
    );
    assert!(
        !timeline.contains("hello A"),
        "no message bodies on the timeline"
    );
    let route = text_of(&client, "#route").await;
    assert!(
        route.contains(&sales.tag) && route.contains("Because"),
        "{route}"
    );
    let owner = text_of(&client, "#owner").await;
    assert!(
        owner.contains("assigned to u_ana by rule"),
        "the owner and why: {owner}"
    );
    screenshot(&client, "contact-timeline").await;

    // Tags: the account's tag and the one contact that carries it.
    client
        .goto(&format!("{dashboard}/app/tags?location={LOCATION_A}"))
        .await
        .unwrap();
    let tags = text_of(&client, "#tags").await;
    assert!(tags.contains(&sales.tag), "{tags}");
    assert_eq!(text_of(&client, "#tags td.count").await, "1");
    screenshot(&client, "tags").await;
    // Moving the contact to the WhatsApp account moves its tag (TagContact).
    client
        .find(Locator::Id("move-phone"))
        .await
        .unwrap()
        .send_keys(CONTACT_A)
        .await
        .unwrap();
    let mut picked = false;
    for option in client
        .find_all(Locator::Css("#move-to option"))
        .await
        .unwrap()
    {
        if option.text().await.unwrap().contains("Support WhatsApp") {
            option.click().await.unwrap();
            picked = true;
        }
    }
    assert!(picked, "the WhatsApp account is a choice");
    client
        .find(Locator::Css("form[action='/app/contact/move'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_containing(&client, "p.ok", "Contact moved").await;
    let mut contacts =
        whatsnap_proto::contacts::v1::contacts_service_client::ContactsServiceClient::new(
            channel.clone(),
        );
    eventually(
        "the contact carries the WhatsApp account's tag only",
        async || {
            let tags = contacts
                .get_contact(whatsnap_proto::contacts::v1::GetContactRequest {
                    location_id: LOCATION_A.into(),
                    phone: CONTACT_A.into(),
                })
                .await
                .ok()?
                .into_inner()
                .tags;
            (tags
                .iter()
                .any(|t| t == "whatsnap-account-support-whatsapp")
                && !tags.contains(&sales.tag))
            .then_some(())
        },
    )
    .await;

    // Insights: the message is a point on the messages chart.
    client
        .goto(&format!(
            "{dashboard}/app/insights?location={LOCATION_A}&days=7"
        ))
        .await
        .unwrap();
    let point = client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#chart-messages svg g.point"))
        .await
        .unwrap();
    assert_eq!(
        point.attr("data-value").await.unwrap().as_deref(),
        Some("2"),
        "the text and the reply"
    );
    assert!(
        text_of(&client, "#chart-messages .legend")
            .await
            .contains("Sales A: 2")
    );
    let failure = client
        .find(Locator::Css("#chart-failures svg g.bar"))
        .await
        .expect("the undelivered reply is a bar");
    assert_eq!(
        failure.attr("data-value").await.unwrap().as_deref(),
        Some("1")
    );
    let reason = failure
        .attr("data-label")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(reason.contains("30003"), "{reason}");
    let workload = client
        .find(Locator::Css(
            "#chart-workload svg g.bar[data-label='u_ana']",
        ))
        .await
        .expect("Ana's workload is a bar");
    assert_eq!(
        workload.attr("data-value").await.unwrap().as_deref(),
        Some("1")
    );
    screenshot(&client, "insights").await;

    // Alerts: the WhatsApp account nobody linked, with what to do.
    client
        .goto(&format!("{dashboard}/app/alerts?location={LOCATION_A}"))
        .await
        .unwrap();
    let alerts = text_of(&client, "#alerts").await;
    assert!(
        alerts.contains("Support WhatsApp is not linked yet"),
        "{alerts}"
    );
    assert!(alerts.contains("What to do:"), "{alerts}");
    assert!(alerts.contains("Sales A is not delivering"), "{alerts}");
    assert!(
        !alerts.contains("Sales A is not linked"),
        "a Twilio number has nothing to link: {alerts}"
    );
    screenshot(&client, "alerts").await;

    // Nothing of B, whatever the URL says.
    client
        .goto(&format!(
            "{dashboard}/app/contact?location={LOCATION_B}&phone=%2B14155550188"
        ))
        .await
        .unwrap();
    assert_eq!(text_of(&client, "h1").await, "Not yours to see");
    assert!(!client.source().await.unwrap().contains("Secret B"));
    let cookie = client
        .get_named_cookie("whatsnap_session")
        .await
        .expect("the sign-in cookie is set");
    let cookie = format!("whatsnap_session={}", cookie.value());
    for path in [
        format!("/app/contacts?location={LOCATION_B}"),
        format!("/app/contact?location={LOCATION_B}&phone=%2B14155550188"),
        format!("/app/assignment?location={LOCATION_B}"),
        format!(
            "/app/assignment?location={LOCATION_B}&account={}",
            secret.account_id
        ),
        format!("/app/tags?location={LOCATION_B}"),
        format!("/app/insights?location={LOCATION_B}"),
        format!("/app/alerts?location={LOCATION_B}"),
    ] {
        let reply = http_request(http, &path, &[("Cookie", &cookie)], None)
            .await
            .unwrap();
        assert_eq!(reply.status, 403, "{path}");
        assert!(
            !reply.body.contains("Secret B") && !reply.body.contains(CONTACT_B),
            "{path}"
        );
    }
    // Their own page, with their cookie, answers.
    let own = http_request(
        http,
        &format!("/app/contacts?location={LOCATION_A}"),
        &[("Cookie", &cookie)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(own.status, 200);
    assert!(own.body.contains(CONTACT_A) && !own.body.contains(CONTACT_B));
    // Changing B's rules with A's sign-in is refused, even with A's CSRF token; so is a POST
    // for A without its CSRF token; a bad rule sent properly is refused with its field.
    let form = |location: &str, rules: &str, csrf: &str| {
        serde_urlencoded::to_string([
            ("location", location),
            ("account", ""),
            ("rules_json", rules),
            ("csrf", csrf),
        ])
        .unwrap()
    };
    let empty = r#"{"rules":[]}"#;
    let bad = r#"{"rules":[{"strategy":"team","team":"Sales"}]}"#;
    for (body, status, why) in [
        (form(LOCATION_B, empty, &csrf), 403, "another location"),
        (form(LOCATION_A, empty, ""), 403, "no CSRF token"),
        (
            form(LOCATION_A, empty, "forged"),
            403,
            "a forged CSRF token",
        ),
        (form(LOCATION_A, bad, &csrf), 422, "a rule without members"),
    ] {
        let reply = http_request(
            http,
            "/app/assignment/rules",
            &[
                ("Cookie", &cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Some(body.as_bytes()),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, status, "{why}");
        if status == 422 {
            assert!(reply.body.contains("rules[0].members"), "{}", reply.body);
        }
    }
    // The editor draws the form with the location's accounts: B's, never for A's sign-in.
    for (location, token, status, why) in [
        (LOCATION_B, csrf.as_str(), 403, "another location"),
        (LOCATION_A, "forged", 403, "a forged CSRF token"),
        (LOCATION_A, csrf.as_str(), 200, "A's own"),
    ] {
        let body = serde_json::json!({
            "location": location,
            "rules_json": r#"{"rules":[{"strategy":"user","user":"u_ana"}]}"#,
            "render": true,
        })
        .to_string();
        let reply = http_request(
            http,
            "/app/assignment/editor",
            &[
                ("Cookie", &cookie),
                ("Content-Type", "application/json"),
                ("X-CSRF-Token", token),
            ],
            Some(body.as_bytes()),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, status, "{why}: {}", reply.body);
        assert!(!reply.body.contains("Secret B"), "{why}: {}", reply.body);
        if status == 200 {
            assert!(reply.body.contains("Sales A"), "{}", reply.body);
        }
    }
    for location in [LOCATION_A, LOCATION_B] {
        let untouched = rules
            .get_rules(assignment::GetRulesRequest {
                location_id: location.into(),
                account_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(untouched.version <= 1, "{location}: nothing was saved");
        assert!(!untouched.rules_json.contains("[]"), "{location}");
    }

    client.close().await.unwrap();
    drop(whatsnap);
}
