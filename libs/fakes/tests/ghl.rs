//! The fake GHL behaves as ghl-api.md says GHL does, seen from a client over HTTP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::Verifier as _;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use serde_json::{Value, json};
use whatsnap_fakes::ghl::{FakeGhl, FakeGhlLimits, FakeGhlUser};

const LOCATION: &str = "ve9EPM428h8vShlRW1KT";
const OTHER_LOCATION: &str = "OtherLocation0000001";
const TOKEN: &str = "pit-test-token";
const CONTACTS_VERSION: &str = "2021-07-28";
const CONVERSATIONS_VERSION: &str = "2021-04-15";

struct Api {
    ghl: FakeGhl,
    http: reqwest::Client,
}

impl Api {
    async fn start() -> Self {
        let ghl = FakeGhl::start().await.unwrap();
        ghl.add_private_token(LOCATION, TOKEN);
        Self {
            ghl,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.ghl.base_url())
    }

    /// A request with the token and the Version the path's family needs.
    fn call(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let version = if path.starts_with("/conversations") {
            CONVERSATIONS_VERSION
        } else {
            CONTACTS_VERSION
        };
        self.http
            .request(method, self.url(path))
            .bearer_auth(TOKEN)
            .header("Version", version)
    }

    async fn upsert(&self, body: Value) -> (u16, Value) {
        answer(
            self.call(reqwest::Method::POST, "/contacts/upsert")
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn header(response: &reqwest::Response, name: &str) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// A webhook endpoint that records what it receives and answers 200.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<(axum::http::HeaderMap, bytes::Bytes)>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let received: Arc<Mutex<Vec<(axum::http::HeaderMap, bytes::Bytes)>>> = Arc::default();
        let sink = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: bytes::Bytes| async move {
                    sink.lock().unwrap().push((headers, body));
                    "ok"
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            received,
            _task: task,
        }
    }

    fn last(&self) -> (axum::http::HeaderMap, bytes::Bytes) {
        self.received
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a delivery")
    }
}

fn verifies(ghl: &FakeGhl, headers: &axum::http::HeaderMap, body: &[u8]) -> bool {
    let key = ed25519_dalek::VerifyingKey::from_public_key_pem(&ghl.ed25519_public_key_pem())
        .expect("the fake's public key is a PEM Ed25519 key");
    let Some(signature) = headers.get("x-ghl-signature") else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(signature.as_bytes()) else {
        return false;
    };
    ed25519_dalek::Signature::from_slice(&bytes)
        .is_ok_and(|signature| key.verify(body, &signature).is_ok())
}

#[tokio::test]
async fn the_version_header_is_required_and_differs_by_endpoint_family() {
    let api = Api::start().await;
    let search = format!("/contacts/search/duplicate?locationId={LOCATION}&number=%2B14155550123");

    let missing = api
        .http
        .get(api.url(&search))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let (status, body) = answer(missing).await;
    assert_eq!(status, 400);
    assert_eq!(body["statusCode"], 400);
    assert!(body["message"].as_str().unwrap().contains(CONTACTS_VERSION));

    // The conversations version is wrong for contacts…
    let wrong = api
        .http
        .get(api.url(&search))
        .bearer_auth(TOKEN)
        .header("Version", CONVERSATIONS_VERSION)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 400);

    // …and the contacts version wrong for conversations.
    let inbound = api
        .http
        .post(api.url("/conversations/messages/inbound"))
        .bearer_auth(TOKEN)
        .header("Version", CONTACTS_VERSION)
        .json(&json!({"type": "SMS", "contactId": "x", "message": "hi"}))
        .send()
        .await
        .unwrap();
    let (status, body) = answer(inbound).await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(CONVERSATIONS_VERSION)
    );

    let right = api
        .call(reqwest::Method::GET, &search)
        .send()
        .await
        .unwrap();
    let (status, body) = answer(right).await;
    assert_eq!((status, body), (200, json!({"contact": null})));
}

#[tokio::test]
async fn calls_without_a_valid_token_get_401_and_other_locations_403() {
    let api = Api::start().await;
    let upsert = json!({"locationId": LOCATION, "phone": "+14155550123"});

    let none = api
        .http
        .post(api.url("/contacts/upsert"))
        .header("Version", CONTACTS_VERSION)
        .json(&upsert)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(none).await,
        (
            401,
            json!({"statusCode": 401, "message": "Invalid token: access token is invalid", "error": "Unauthorized"})
        )
    );
    let unknown = api
        .http
        .post(api.url("/contacts/upsert"))
        .bearer_auth("pit-nobody")
        .header("Version", CONTACTS_VERSION)
        .json(&upsert)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 401);

    let (status, body) = api
        .upsert(json!({"locationId": OTHER_LOCATION, "phone": "+14155550123"}))
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        body["message"],
        "The token does not have access to this location."
    );
    assert!(api.ghl.contacts(OTHER_LOCATION).is_empty());

    // A contact of another location cannot be read by id either.
    let theirs = api.ghl.add_contact(OTHER_LOCATION, "+14155550999", None);
    let read = api
        .call(reqwest::Method::GET, &format!("/contacts/{theirs}"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 403);
}

#[tokio::test]
async fn an_invalid_upsert_is_refused_with_422_and_recorded() {
    let api = Api::start().await;
    let (status, body) = api
        .upsert(json!({"phone": 14155550123_u64, "tags": "vip", "phoneNumber": "+1"}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"], "Unprocessable Entity");
    let messages: Vec<&str> = body["message"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "locationId: is required",
            "phone: must be string, not number",
            "phoneNumber: property should not exist",
            "tags: must be array, not string",
        ]
    );
    let violations = api.ghl.schema_violations();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].path, "/contacts/upsert");
    assert!(api.ghl.contacts(LOCATION).is_empty());
}

#[tokio::test]
async fn upsert_dedupes_on_phone_and_its_tags_replace_all() {
    let api = Api::start().await;
    let (status, first) = api
        .upsert(json!({"locationId": LOCATION, "phone": "+1 415-555-0123", "name": "Ada", "tags": ["a", "b"]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(first["new"], true);
    assert_eq!(first["contact"]["phone"], "+14155550123");
    let (_, second) = api
        .upsert(json!({"locationId": LOCATION, "phone": "+14155550123", "tags": ["c"]}))
        .await;
    assert_eq!(second["new"], false);
    assert_eq!(second["contact"]["id"], first["contact"]["id"]);
    assert_eq!(second["contact"]["tags"], json!(["c"]));
    assert_eq!(api.ghl.contacts(LOCATION).len(), 1);

    let id = first["contact"]["id"].as_str().unwrap();
    let added = api
        .call(reqwest::Method::POST, &format!("/contacts/{id}/tags"))
        .json(&json!({"tags": ["d", "c"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(added).await, (201, json!({"tags": ["c", "d"]})));
    let removed = api
        .call(reqwest::Method::DELETE, &format!("/contacts/{id}/tags"))
        .json(&json!({"tags": ["c"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(removed).await, (200, json!({"tags": ["d"]})));

    let assigned = api
        .call(reqwest::Method::PUT, &format!("/contacts/{id}"))
        .json(&json!({"assignedTo": "user1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(assigned.status().as_u16(), 200);
    let contact = api.ghl.contact_by_phone(LOCATION, "+14155550123").unwrap();
    assert_eq!(contact.assigned_to.as_deref(), Some("user1"));
    assert_eq!(contact.tags, ["d"]);

    // An unencoded `+` arrives as a space: GHL finds nothing, and neither does the fake.
    let unencoded = api
        .call(
            reqwest::Method::GET,
            &format!("/contacts/search/duplicate?locationId={LOCATION}&number=+14155550123"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer(unencoded).await.1, json!({"contact": null}));
    let encoded = api
        .call(
            reqwest::Method::GET,
            &format!("/contacts/search/duplicate?locationId={LOCATION}&number=%2B14155550123"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer(encoded).await.1["contact"]["id"], id);
    assert!(api.ghl.schema_violations().is_empty());
}

#[tokio::test]
async fn the_101st_request_in_ten_seconds_is_rate_limited() {
    let api = Api::start().await;
    let search = format!("/contacts/search/duplicate?locationId={LOCATION}&number=%2B1");
    for n in 1..=100_u64 {
        let response = api
            .call(reqwest::Method::GET, &search)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "request {n}");
        assert_eq!(header(&response, "x-ratelimit-remaining"), Some(100 - n));
        assert_eq!(header(&response, "x-ratelimit-max"), Some(100));
        assert_eq!(
            header(&response, "x-ratelimit-interval-milliseconds"),
            Some(10_000)
        );
        assert_eq!(header(&response, "x-ratelimit-limit-daily"), Some(200_000));
        assert_eq!(
            header(&response, "x-ratelimit-daily-remaining"),
            Some(200_000 - n)
        );
    }
    let refused = api
        .call(reqwest::Method::GET, &search)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(header(&refused, "x-ratelimit-remaining"), Some(0));
    assert!(header(&refused, "retry-after").is_some_and(|s| (1..=10).contains(&s)));
    assert_eq!(api.ghl.rate_limited_count(LOCATION), 1);

    // Another location has its own budget.
    api.ghl.add_private_token(OTHER_LOCATION, "pit-other");
    let other = api
        .http
        .get(api.url(&format!(
            "/contacts/search/duplicate?locationId={OTHER_LOCATION}"
        )))
        .bearer_auth("pit-other")
        .header("Version", CONTACTS_VERSION)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 200);
    assert_eq!(api.ghl.rate_limited_count(OTHER_LOCATION), 0);
}

#[tokio::test]
async fn a_location_limit_and_window_can_be_set() {
    let api = Api::start().await;
    api.ghl.limit_location(
        LOCATION,
        FakeGhlLimits {
            burst_max: 2,
            burst_window: Duration::from_millis(300),
            daily_max: 3,
        },
    );
    let search = format!("/contacts/search/duplicate?locationId={LOCATION}");
    let status = async || {
        api.call(reqwest::Method::GET, &search)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        (status().await, status().await, status().await),
        (200, 200, 429)
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    // The window has slid, but the day's three are almost spent.
    assert_eq!((status().await, status().await), (200, 429));
    assert_eq!(api.ghl.rate_limited_count(LOCATION), 2);
}

async fn exchange(api: &Api, form: &[(&str, &str)]) -> (u16, Value) {
    answer(
        api.http
            .post(api.url("/oauth/token"))
            .form(form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn refresh_tokens_are_single_use_and_access_tokens_expire() {
    let api = Api::start().await;
    let redirect = api
        .ghl
        .authorize_redirect("https://whatsnap.test/oauth/callback", LOCATION);
    let code = redirect.split("code=").nth(1).unwrap().to_owned();
    let base = [
        ("client_id", FakeGhl::CLIENT_ID),
        ("client_secret", FakeGhl::CLIENT_SECRET),
    ];
    let (status, tokens) = exchange(
        &api,
        &[
            base[0],
            base[1],
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("user_type", "Location"),
            ("redirect_uri", "https://whatsnap.test/oauth/callback"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["userType"], "Location");
    assert_eq!(tokens["locationId"], LOCATION);
    assert_eq!(tokens["companyId"], FakeGhl::COMPANY_ID);
    assert_eq!(tokens["userId"], FakeGhl::INSTALLER_USER_ID);
    assert_eq!(tokens["expires_in"], 86_399);

    // A code works once.
    let (status, again) = exchange(
        &api,
        &[
            base[0],
            base[1],
            ("grant_type", "authorization_code"),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(
        (status, again["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    let access = tokens["access_token"].as_str().unwrap();
    let search = format!("/contacts/search/duplicate?locationId={LOCATION}");
    let with = |token: &str| {
        api.http
            .get(api.url(&search))
            .bearer_auth(token)
            .header("Version", CONTACTS_VERSION)
            .send()
    };
    assert_eq!(with(access).await.unwrap().status().as_u16(), 200);

    let old_refresh = tokens["refresh_token"].as_str().unwrap();
    let refresh = |token: &str| {
        let form = [
            base[0],
            base[1],
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("user_type", "Location"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        exchange_owned(&api, form)
    };
    let (status, renewed) = refresh(old_refresh).await;
    assert_eq!(status, 200);
    assert_ne!(renewed["refresh_token"], tokens["refresh_token"]);
    let (status, reused) = refresh(old_refresh).await;
    assert_eq!(status, 400);
    assert_eq!(reused["error"], "invalid_grant");
    let (status, _) = refresh(renewed["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 200);

    api.ghl.expire_access_tokens();
    assert_eq!(with(access).await.unwrap().status().as_u16(), 401);
    // Private Integration Tokens do not expire.
    assert_eq!(with(TOKEN).await.unwrap().status().as_u16(), 200);

    let (status, _) = exchange(
        &api,
        &[
            ("client_id", FakeGhl::CLIENT_ID),
            ("client_secret", "wrong"),
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
        ],
    )
    .await;
    assert_eq!(status, 401);
}

async fn exchange_owned(api: &Api, form: [(String, String); 5]) -> (u16, Value) {
    answer(
        api.http
            .post(api.url("/oauth/token"))
            .form(&form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn short_lived_access_tokens_expire_by_themselves() {
    let api = Api::start().await;
    api.ghl
        .set_access_token_lifetime(Duration::from_millis(200));
    let code = api.ghl.issue_code(LOCATION);
    let (_, tokens) = exchange(
        &api,
        &[
            ("client_id", FakeGhl::CLIENT_ID),
            ("client_secret", FakeGhl::CLIENT_SECRET),
            ("grant_type", "authorization_code"),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(tokens["expires_in"], 0);
    let get = || {
        api.http
            .get(api.url(&format!("/contacts/search/duplicate?locationId={LOCATION}")))
            .bearer_auth(tokens["access_token"].as_str().unwrap())
            .header("Version", CONTACTS_VERSION)
            .send()
    };
    assert_eq!(get().await.unwrap().status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(get().await.unwrap().status().as_u16(), 401);
}

#[tokio::test]
async fn an_agency_token_gets_location_tokens_but_no_contacts() {
    let api = Api::start().await;
    let code = api.ghl.issue_company_code(FakeGhl::COMPANY_ID);
    let (_, agency) = exchange(
        &api,
        &[
            ("client_id", FakeGhl::CLIENT_ID),
            ("client_secret", FakeGhl::CLIENT_SECRET),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("user_type", "Company"),
        ],
    )
    .await;
    assert_eq!(agency["userType"], "Company");
    let agency_token = agency["access_token"].as_str().unwrap();
    let direct = api
        .http
        .get(api.url(&format!("/contacts/search/duplicate?locationId={LOCATION}")))
        .bearer_auth(agency_token)
        .header("Version", CONTACTS_VERSION)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status().as_u16(), 401);

    let location = api
        .http
        .post(api.url("/oauth/locationToken"))
        .bearer_auth(agency_token)
        .header("Version", CONTACTS_VERSION)
        .form(&[("companyId", FakeGhl::COMPANY_ID), ("locationId", LOCATION)])
        .send()
        .await
        .unwrap();
    let (status, location) = answer(location).await;
    assert_eq!(status, 200, "{location}");
    assert_eq!(location["locationId"], LOCATION);
    let through = api
        .http
        .get(api.url(&format!("/contacts/search/duplicate?locationId={LOCATION}")))
        .bearer_auth(location["access_token"].as_str().unwrap())
        .header("Version", CONTACTS_VERSION)
        .send()
        .await
        .unwrap();
    assert_eq!(through.status().as_u16(), 200);
}

#[tokio::test]
async fn users_search_needs_a_company_and_lists_the_location_users() {
    let api = Api::start().await;
    api.ghl.add_user(
        LOCATION,
        FakeGhlUser {
            id: "user1".into(),
            name: "Grace Hopper".into(),
            email: "grace@example.com".into(),
            role: "admin".into(),
            deleted: false,
        },
    );
    let without = api
        .call(
            reqwest::Method::GET,
            &format!("/users/search?locationId={LOCATION}"),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = answer(without).await;
    assert_eq!(
        (status, &body["message"]),
        (422, &json!(["companyId: is required"]))
    );
    assert_eq!(api.ghl.schema_violations().len(), 1);

    let listed = api
        .call(
            reqwest::Method::GET,
            &format!(
                "/users/search?companyId={}&locationId={LOCATION}",
                FakeGhl::COMPANY_ID
            ),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = answer(listed).await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 1);
    assert_eq!(body["users"][0]["id"], "user1");
    assert_eq!(body["users"][0]["firstName"], "Grace");
    assert_eq!(body["users"][0]["roles"]["role"], "admin");
}

#[tokio::test]
async fn inbound_messages_need_a_contact_and_default_to_outbound() {
    let api = Api::start().await;
    let inbound = |body: Value| {
        api.call(reqwest::Method::POST, "/conversations/messages/inbound")
            .json(&body)
            .send()
    };
    let nobody = inbound(json!({"type": "SMS", "contactId": "nobody", "message": "hi"}))
        .await
        .unwrap();
    assert_eq!(nobody.status().as_u16(), 400);

    let contact = api.ghl.add_contact(LOCATION, "+14155550123", Some("Ada"));
    let (status, first) = answer(
        inbound(json!({
            "type": "SMS", "contactId": contact, "message": "hello", "altId": "wa-1",
            "direction": "inbound", "conversationProviderId": "provider1",
        }))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["success"], true);
    assert_eq!(first["contactId"], contact.as_str());
    let (_, second) = answer(
        inbound(json!({"type": "SMS", "contactId": contact, "message": "typed on the phone"}))
            .await
            .unwrap(),
    )
    .await;
    // One conversation per contact.
    assert_eq!(second["conversationId"], first["conversationId"]);
    let messages = api.ghl.messages(&contact);
    let seen: Vec<(&str, &str, Option<&str>)> = messages
        .iter()
        .map(|m| {
            (
                m.direction.as_str(),
                m.message.as_deref().unwrap(),
                m.alt_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("inbound", "hello", Some("wa-1")),
            ("outbound", "typed on the phone", None)
        ]
    );
    assert_eq!(
        messages[0].conversation_provider_id.as_deref(),
        Some("provider1")
    );
    assert!(api.ghl.schema_violations().is_empty());
}

#[tokio::test]
async fn status_updates_are_refused_until_ghl_has_downstreamed_the_message() {
    let api = Api::start().await;
    api.ghl.set_downstream_delay(Duration::from_millis(400));
    let receiver = Receiver::start().await;
    let contact = api.ghl.add_contact(LOCATION, "+14155550123", None);
    let (message_id, delivered) = api
        .ghl
        .send_provider_outbound(
            &receiver.url,
            LOCATION,
            &contact,
            "hi from GHL",
            Some("user1"),
        )
        .await
        .unwrap();
    assert_eq!(delivered, 200);

    let update = |status: &'static str| {
        api.call(
            reqwest::Method::PUT,
            &format!("/conversations/messages/{message_id}/status"),
        )
        .json(&json!({"status": status}))
        .send()
    };
    let (status, early) = answer(update("delivered").await.unwrap()).await;
    assert_eq!(
        (status, early),
        (
            403,
            json!({"statusCode": 403, "message": "No conversation provider found for this message"})
        )
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (status, later) = answer(update("delivered").await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(later["messageId"], message_id.as_str());
    assert_eq!(later["status"], "delivered");

    let accepted = api.ghl.status_updates(&message_id);
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].status, "delivered");
    assert_eq!(api.ghl.status_attempts(&message_id).len(), 2);
    assert_eq!(
        api.ghl.message(&message_id).unwrap().status.as_deref(),
        Some("delivered")
    );

    let (status, _) = answer(
        api.call(reqwest::Method::PUT, "/conversations/messages/nope/status")
            .json(&json!({"status": "read"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = answer(update("sent").await.unwrap()).await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn a_provider_outbound_message_is_signed_over_its_raw_body() {
    let api = Api::start().await;
    let receiver = Receiver::start().await;
    let contact = api.ghl.add_contact(LOCATION, "+14155550123", None);
    let (message_id, _) = api
        .ghl
        .send_provider_outbound(&receiver.url, LOCATION, &contact, "hello", Some("user1"))
        .await
        .unwrap();
    let (headers, body) = receiver.last();
    assert!(verifies(&api.ghl, &headers, &body));
    let mut tampered = body.to_vec();
    tampered[2] ^= 1;
    assert!(!verifies(&api.ghl, &headers, &tampered));

    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        payload,
        json!({
            "contactId": contact, "locationId": LOCATION, "messageId": message_id,
            "type": "SMS", "phone": "+14155550123", "message": "hello",
            "attachments": [], "userId": "user1",
        })
    );
    assert_eq!(api.ghl.messages(&contact)[0].direction, "outbound");

    // Forgeries carry whatever signature the test chooses.
    api.ghl
        .post_with_signature(&receiver.url, b"{}", Some("N/A"))
        .await
        .unwrap();
    let (headers, body) = receiver.last();
    assert!(!verifies(&api.ghl, &headers, &body));
}

#[tokio::test]
async fn contact_tag_updates_carry_the_full_list_and_a_webhook_id() {
    let api = Api::start().await;
    let receiver = Receiver::start().await;
    let contact = api
        .ghl
        .add_contact(LOCATION, "+14155550123", Some("Ada Lovelace"));
    api.ghl.set_tags(&contact, &["sales", "vip"]).unwrap();
    let status = api
        .ghl
        .send_contact_tag_update(&receiver.url, &contact)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (headers, body) = receiver.last();
    assert!(verifies(&api.ghl, &headers, &body));
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["type"], "ContactTagUpdate");
    assert_eq!(payload["id"], contact.as_str());
    assert_eq!(payload["locationId"], LOCATION);
    assert_eq!(payload["phone"], "+14155550123");
    assert_eq!(payload["tags"], json!(["sales", "vip"]));
    assert!(
        payload["webhookId"]
            .as_str()
            .is_some_and(|id| id.len() == 36)
    );
    assert!(chrono_like(payload["timestamp"].as_str().unwrap()));

    api.ghl
        .send_install(&receiver.url, LOCATION, FakeGhl::COMPANY_ID)
        .await
        .unwrap();
    let (headers, body) = receiver.last();
    assert!(verifies(&api.ghl, &headers, &body));
    let install: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (
            &install["type"],
            &install["locationId"],
            &install["companyId"]
        ),
        (
            &json!("INSTALL"),
            &json!(LOCATION),
            &json!(FakeGhl::COMPANY_ID)
        )
    );
    api.ghl
        .send_uninstall(&receiver.url, LOCATION, FakeGhl::COMPANY_ID)
        .await
        .unwrap();
    let uninstall: Value = serde_json::from_slice(&receiver.last().1).unwrap();
    assert_eq!(uninstall["type"], "UNINSTALL");
    assert_eq!(uninstall["locationId"], LOCATION);
}

fn chrono_like(timestamp: &str) -> bool {
    timestamp.len() >= 20 && timestamp.as_bytes()[10] == b'T' && timestamp.ends_with('Z')
}

#[tokio::test]
async fn injected_failures_answer_before_anything_else() {
    let api = Api::start().await;
    let search = format!("/contacts/search/duplicate?locationId={LOCATION}");
    let status = async || {
        api.call(reqwest::Method::GET, &search)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    api.ghl.fail_next(2, 503);
    assert_eq!(
        (status().await, status().await, status().await),
        (503, 503, 200)
    );

    api.ghl.set_down(true);
    let down = api
        .call(reqwest::Method::GET, &search)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(down).await,
        (
            500,
            json!({"statusCode": 500, "message": "Internal Server Error"})
        )
    );
    api.ghl.set_down(false);

    api.ghl.fail_location(LOCATION, 429);
    assert_eq!(status().await, 429);
    api.ghl.clear_failures();
    assert_eq!(status().await, 200);

    api.ghl.set_latency(Duration::from_millis(300));
    let timed_out = api
        .call(reqwest::Method::GET, &search)
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(timed_out.is_err_and(|e| e.is_timeout()));
    let recorded = api.ghl.requests();
    assert!(recorded.iter().any(|r| r.status == 503));
    assert_eq!(recorded[0].query_param("locationId"), Some(LOCATION));
}
