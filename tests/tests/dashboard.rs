//! The dashboard in a real browser (Debian's headless Chromium, driven over WebDriver by
//! chromedriver) against a real `whatsnap`: opened inside a page that plays GHL — it embeds the
//! dashboard in an iframe and answers `REQUEST_USER_DATA` with a user context encrypted with the
//! app's Shared Secret, as GHL does — a user of location A is signed in and sees A's accounts
//! only; editing the URL to location B shows nothing of B. Screenshots of each page are saved
//! under the test's output folder (`target/tmp/dashboard/`).

use std::path::Path;
use std::time::Duration;

use fantoccini::{Client, Locator};
use whatsnap_dashboard::sso::{SharedSecret, seal_like_ghl};
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::Channel;
use whatsnap_testkit::browser::{browser, screenshot_dir};
use whatsnap_testkit::{FakeEvolution, Whatsnap, free_port, http_request};

const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const SHARED_SECRET: &str = "the-apps-shared-secret";
const LOCATION_A: &str = "locDashboardA";
const LOCATION_B: &str = "locDashboardB";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

/// A page that plays GHL: it embeds the dashboard and answers its request for the user's
/// context with `payload`.
async fn ghl_page(dashboard: &str, payload: String) -> u16 {
    let html = format!(
        r#"<!doctype html><html><head><title>GHL (fake)</title></head>
<body style="margin:0;font-family:sans-serif">
<div style="background:#111827;color:#fff;padding:8px 12px">GHL sub-account · Custom page</div>
<iframe id="app" src="{dashboard}/app" style="border:0;width:100%;height:700px"></iframe>
<script>
window.addEventListener("message", function (event) {{
  if (event.data && event.data.message === "REQUEST_USER_DATA") {{
    event.source.postMessage({{ message: "REQUEST_USER_DATA_RESPONSE", payload: {payload:?} }}, "*");
  }}
}});
</script></body></html>"#
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

async fn add_account(channel: &Channel, location: &str, name: &str) -> session::Account {
    session::session_service_client::SessionServiceClient::new(channel.clone())
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

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("no {css} on the page: {err}"))
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ghl_user_signed_in_by_ghl_sees_their_locations_accounts_and_nothing_of_another() {
    let evolution = FakeEvolution::start().await.unwrap();
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
        "--ghl-shared-secret",
        SHARED_SECRET,
    ]
    .map(str::to_owned)
    .into();
    let whatsnap = Whatsnap::serve(binary(), &args, "dashboard").unwrap();
    let channel = whatsnap.channel().await;
    add_account(&channel, LOCATION_A, "Sales A").await;
    add_account(&channel, LOCATION_B, "Secret B").await;
    let dashboard = format!("http://127.0.0.1:{http}");

    // Outside GHL and not signed in: the sign-in page, whatever page is asked for.
    let (_driver, client) = browser().await;
    client
        .goto(&format!("{dashboard}/app/accounts?location={LOCATION_B}"))
        .await
        .unwrap();
    assert_eq!(text_of(&client, "h1").await, "Sign in");
    screenshot(&client, "sign-in").await;

    // Inside GHL, as a user of location A.
    let context = serde_json::json!({
        "userId": "ghlUserAna", "companyId": "companyX", "role": "user", "type": "location",
        "activeLocation": LOCATION_A, "userName": "Ana Lima", "email": "ana@example.com",
    });
    let payload = seal_like_ghl(
        &SharedSecret::new(SHARED_SECRET),
        &context.to_string(),
        *b"saltsalt",
    );
    let ghl = ghl_page(&dashboard, payload).await;
    client
        .goto(&format!("http://127.0.0.1:{ghl}/"))
        .await
        .unwrap();
    client.enter_frame(0).await.unwrap();
    let table = text_of(&client, "table").await;
    assert!(table.contains("Sales A"), "{table}");
    assert!(table.contains("whatsnap-account-sales-a"), "{table}");
    assert!(!table.contains("Secret B"), "{table}");
    assert!(
        text_of(&client, ".who").await.contains("Ana Lima"),
        "the page greets the GHL user"
    );
    client.enter_parent_frame().await.unwrap();
    screenshot(&client, "accounts-inside-ghl").await;

    // Editing the URL to location B shows nothing of B, in the browser and to a plain request
    // with the same cookie.
    client
        .goto(&format!("{dashboard}/app/accounts?location={LOCATION_B}"))
        .await
        .unwrap();
    assert_eq!(text_of(&client, "h1").await, "Not yours to see");
    let source = client.source().await.unwrap();
    assert!(!source.contains("Secret B"));
    screenshot(&client, "another-location-refused").await;
    let cookie = client
        .get_named_cookie("whatsnap_session")
        .await
        .expect("the sign-in cookie is set");
    assert_eq!(cookie.http_only(), Some(true), "scripts cannot read it");
    let header = format!("whatsnap_session={}", cookie.value());
    let addr = format!("127.0.0.1:{http}").parse().unwrap();
    let refused = http_request(
        addr,
        &format!("/app/accounts?location={LOCATION_B}"),
        &[("Cookie", &header)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 403);
    assert!(!refused.body.contains("Secret B"));
    let own = http_request(addr, "/app/accounts", &[("Cookie", &header)], None)
        .await
        .unwrap();
    assert_eq!(own.status, 200);
    assert!(own.body.contains("Sales A") && !own.body.contains("Secret B"));

    // A context encrypted with another secret signs nobody in.
    let forged = seal_like_ghl(
        &SharedSecret::new("not-the-secret"),
        &context.to_string(),
        *b"saltsalt",
    );
    let body = serde_json::json!({ "payload": forged }).to_string();
    let refused = http_request(
        addr,
        "/app/sso",
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 401);
    assert!(refused.header("set-cookie").is_none());

    client.close().await.unwrap();
    drop(whatsnap);
}
