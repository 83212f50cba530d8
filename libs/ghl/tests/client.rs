//! The GHL client against a stub of GHL that records what it is sent and answers as scripted:
//! each test gives the stub GHL's answers, makes a call as whatsnap would, then checks what GHL
//! would have seen and what the caller gets back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use tokio::time::Instant;
use whatsnap_events::LocationId;
use whatsnap_ghl::ratelimit::Exhausted;
use whatsnap_ghl::{
    ContactUpdate, ContactUpsert, DeliveryStatus, GhlClient, GhlConfig, GhlError, InboundMessage,
    MessageDirection, RateLimiter, RetryPolicy, StatusError, StatusUpdate, UserType,
};

const TOKEN: &str = "loc-access-token-1";

/// A request as the stub received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }

    fn query_pairs(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect()
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: body.to_string(),
    }
}

impl Reply {
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

#[derive(Default)]
struct Script {
    seen: Vec<Seen>,
    replies: VecDeque<Reply>,
    /// The answer once the scripted ones are used up.
    otherwise: Option<Reply>,
}

#[derive(Clone)]
struct StubGhl {
    base: String,
    script: Arc<Mutex<Script>>,
}

impl StubGhl {
    async fn start() -> Self {
        let script = Arc::new(Mutex::new(Script::default()));
        let app = Router::new().fallback(answer).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, script }
    }

    /// GHL answers these, in order.
    fn then(&self, reply: Reply) -> &Self {
        self.script.lock().unwrap().replies.push_back(reply);
        self
    }

    /// GHL answers this to everything after the scripted answers.
    fn always(&self, reply: Reply) {
        self.script.lock().unwrap().otherwise = Some(reply);
    }

    fn seen(&self) -> Vec<Seen> {
        self.script.lock().unwrap().seen.clone()
    }

    fn only_request(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "{seen:#?}");
        seen.into_iter().next().unwrap()
    }

    fn config(&self) -> GhlConfig {
        GhlConfig {
            api_base: self.base.clone(),
            client_id: Some("client-1".into()),
            client_secret: Some("client-secret-1".into()),
            redirect_uri: Some("https://whatsnap.example/ghl/oauth".into()),
            retry: RetryPolicy {
                attempts: 3,
                base_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(20),
            },
            ..GhlConfig::default()
        }
    }

    fn client(&self) -> (GhlClient, Arc<RateLimiter>) {
        self.client_with(self.config())
    }

    fn client_with(&self, config: GhlConfig) -> (GhlClient, Arc<RateLimiter>) {
        let limiter = Arc::new(RateLimiter::default());
        (GhlClient::new(config, limiter.clone()), limiter)
    }
}

async fn answer(
    State(script): State<Arc<Mutex<Script>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut script = script.lock().unwrap();
    script.seen.push(Seen {
        method,
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers,
        body,
    });
    let reply = script
        .replies
        .pop_front()
        .or_else(|| script.otherwise.clone())
        .unwrap_or_else(|| reply(599, json!({"message": "the test scripted no answer"})));
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap(),
        [("content-type", "application/json")],
        reply.body,
    )
        .into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

fn location() -> LocationId {
    LocationId::parse("ve9EPM428h8vShlRW1KT").unwrap()
}

fn contact_json(id: &str) -> Value {
    json!({
        "id": id, "locationId": "ve9EPM428h8vShlRW1KT", "phone": "+5511987654321",
        "firstName": "ana", "lastName": "souza", "name": "Ana Souza",
        "tags": ["whatsapp"], "assignedTo": "user-1", "dateAdded": "2021-07-02T05:18:26.704Z"
    })
}

fn status_update() -> StatusUpdate {
    StatusUpdate {
        status: DeliveryStatus::Delivered,
        error: None,
    }
}

fn not_yet_downstreamed() -> Reply {
    reply(
        403,
        json!({"statusCode": 403, "message": "No conversation provider found for this message"}),
    )
}

#[tokio::test]
async fn each_endpoint_family_gets_its_version_header_and_the_bearer() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(reply(200, json!({"contact": null})))
        .then(reply(
            200,
            json!({"success": true, "conversationId": "c1", "messageId": "m1", "message": "ok"}),
        ))
        .then(reply(200, json!({"users": [], "count": 0})))
        .then(reply(
            200,
            json!({"conversationId": "c1", "messageId": "m1", "status": "delivered"}),
        ));
    client
        .find_contact_by_phone(&location(), TOKEN, "+5511987654321")
        .await
        .unwrap();
    client
        .add_inbound_message(
            &location(),
            TOKEN,
            &InboundMessage {
                contact_id: "contact-1".into(),
                message: "hi".into(),
                alt_id: "wa-1".into(),
                ..InboundMessage::default()
            },
        )
        .await
        .unwrap();
    client
        .search_users(&location(), TOKEN, "company-1")
        .await
        .unwrap();
    client
        .update_message_status(&location(), TOKEN, "m1", &status_update(), Duration::ZERO)
        .await
        .unwrap();

    let seen = ghl.seen();
    let versions: Vec<_> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str(), s.header("version")))
        .collect();
    assert_eq!(
        versions,
        [
            ("GET", "/contacts/search/duplicate", Some("2021-07-28")),
            (
                "POST",
                "/conversations/messages/inbound",
                Some("2021-04-15")
            ),
            ("GET", "/users/search", Some("2021-07-28")),
            (
                "PUT",
                "/conversations/messages/m1/status",
                Some("2021-04-15")
            ),
        ]
    );
    for request in &seen {
        assert_eq!(
            request.header("authorization"),
            Some("Bearer loc-access-token-1")
        );
        assert_eq!(request.header("accept"), Some("application/json"));
    }
}

#[tokio::test]
async fn the_phone_search_encodes_the_plus_and_reads_the_contact() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(reply(200, json!({"contact": contact_json("contact-1")})))
        .then(reply(200, json!({"contact": null})));

    let found = client
        .find_contact_by_phone(&location(), TOKEN, "+5511987654321")
        .await
        .unwrap()
        .expect("a contact");
    assert_eq!(found.id, "contact-1");
    assert_eq!(found.name.as_deref(), Some("Ana Souza"));
    assert_eq!(found.tags, ["whatsapp"]);
    assert_eq!(found.assigned_to.as_deref(), Some("user-1"));
    assert_eq!(found.location_id.as_deref(), Some("ve9EPM428h8vShlRW1KT"));

    let none = client
        .find_contact_by_phone(&location(), TOKEN, "+15550001111")
        .await
        .unwrap();
    assert_eq!(none, None);

    let query = ghl.seen()[0].query.clone().unwrap();
    assert!(query.contains("number=%2B5511987654321"), "{query}");
    assert!(query.contains("locationId=ve9EPM428h8vShlRW1KT"), "{query}");
}

#[tokio::test]
async fn the_upsert_sends_ghls_field_names_and_omits_what_is_unknown() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(reply(
        200,
        json!({"new": true, "contact": contact_json("contact-1"), "traceId": "t"}),
    ))
    .then(reply(
        200,
        json!({"new": false, "contact": contact_json("contact-1"), "traceId": "t"}),
    ));

    let upserted = client
        .upsert_contact(
            &location(),
            TOKEN,
            &ContactUpsert {
                phone: "+5511987654321".into(),
                name: Some("Ana Maria Souza".into()),
                tags: vec!["whatsapp".into()],
                assigned_to: Some("user-1".into()),
                source: Some("whatsnap".into()),
            },
        )
        .await
        .unwrap();
    assert!(upserted.created);
    assert_eq!(upserted.contact.id, "contact-1");
    let bare = client
        .upsert_contact(
            &location(),
            TOKEN,
            &ContactUpsert {
                phone: "+5511987654321".into(),
                ..ContactUpsert::default()
            },
        )
        .await
        .unwrap();
    assert!(!bare.created);

    let seen = ghl.seen();
    assert_eq!(seen[0].path, "/contacts/upsert");
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    assert_eq!(
        seen[0].json(),
        json!({
            "locationId": "ve9EPM428h8vShlRW1KT",
            "phone": "+5511987654321",
            "name": "Ana Maria Souza",
            "firstName": "Ana",
            "lastName": "Maria Souza",
            "tags": ["whatsapp"],
            "assignedTo": "user-1",
            "source": "whatsnap",
        })
    );
    assert_eq!(
        seen[1].json(),
        json!({"locationId": "ve9EPM428h8vShlRW1KT", "phone": "+5511987654321"})
    );
}

#[tokio::test]
async fn contacts_are_assigned_and_tagged_at_their_own_paths() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(reply(
        200,
        json!({"succeded": true, "contact": contact_json("contact-1")}),
    ))
    .then(reply(201, json!({"tags": ["whatsapp", "vip"]})))
    .then(reply(200, json!({"tags": ["whatsapp"]})));

    let updated = client
        .update_contact(
            &location(),
            TOKEN,
            "contact-1",
            &ContactUpdate {
                name: None,
                assigned_to: Some("user-2".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.id, "contact-1");
    let tags = client
        .add_tags(&location(), TOKEN, "contact-1", &["vip".into()])
        .await
        .unwrap();
    assert_eq!(tags, ["whatsapp", "vip"]);
    let tags = client
        .remove_tags(&location(), TOKEN, "contact-1", &["vip".into()])
        .await
        .unwrap();
    assert_eq!(tags, ["whatsapp"]);

    let seen = ghl.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("PUT", "/contacts/contact-1")
    );
    assert_eq!(seen[0].json(), json!({"assignedTo": "user-2"}));
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("POST", "/contacts/contact-1/tags")
    );
    assert_eq!(seen[1].json(), json!({"tags": ["vip"]}));
    assert_eq!(
        (seen[2].method.as_str(), seen[2].path.as_str()),
        ("DELETE", "/contacts/contact-1/tags")
    );
    assert_eq!(seen[2].json(), json!({"tags": ["vip"]}));
    assert!(
        seen.iter()
            .all(|s| s.header("version") == Some("2021-07-28"))
    );
}

#[tokio::test]
async fn users_are_read_page_after_page_until_all_are_in() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    let page = |from: usize, to: usize| {
        let users: Vec<Value> = (from..to)
            .map(|i| {
                json!({
                    "id": format!("user-{i}"), "firstName": "User", "lastName": i.to_string(),
                    "email": format!("u{i}@example.com"),
                    "roles": {"type": "account", "role": if i == 0 { "admin" } else { "user" }},
                    "deleted": i == 26,
                })
            })
            .collect();
        reply(200, json!({"users": users, "count": 27}))
    };
    ghl.then(page(0, 25)).then(page(25, 27));

    let users = client
        .search_users(&location(), TOKEN, "company-1")
        .await
        .unwrap();
    assert_eq!(users.len(), 27);
    assert_eq!(users[0].name, "User 0");
    assert_eq!(users[0].role.as_deref(), Some("admin"));
    assert_eq!(users[0].email.as_deref(), Some("u0@example.com"));
    assert!(users[26].deleted && !users[25].deleted);

    let seen = ghl.seen();
    assert_eq!(seen.len(), 2);
    let pairs = seen[1].query_pairs();
    for expected in [
        ("companyId", "company-1"),
        ("locationId", "ve9EPM428h8vShlRW1KT"),
        ("skip", "25"),
        ("limit", "25"),
    ] {
        assert!(
            pairs
                .iter()
                .any(|(k, v)| (k.as_str(), v.as_str()) == expected),
            "{expected:?} in {pairs:?}"
        );
    }
}

#[tokio::test]
async fn an_inbound_message_is_posted_as_sms_with_its_direction() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(reply(
        200,
        json!({"success": true, "conversationId": "conv-1", "messageId": "msg-1", "message": "ok"}),
    ))
    .then(reply(
        200,
        json!({"success": true, "conversationId": "conv-1", "messageId": "msg-2", "message": "ok"}),
    ));

    let posted = client
        .add_inbound_message(
            &location(),
            TOKEN,
            &InboundMessage {
                contact_id: "contact-1".into(),
                conversation_provider_id: Some("provider-1".into()),
                message: "Is the shop open?".into(),
                attachments: vec!["https://media.example/1.jpg".into()],
                alt_id: "wamid.1".into(),
                direction: MessageDirection::Inbound,
                date: Some(Utc.with_ymd_and_hms(2026, 3, 1, 12, 30, 0).unwrap()),
            },
        )
        .await
        .unwrap();
    assert_eq!(posted.conversation_id, "conv-1");
    assert_eq!(posted.message_id, "msg-1");
    client
        .add_inbound_message(
            &location(),
            TOKEN,
            &InboundMessage {
                contact_id: "contact-1".into(),
                message: "typed on the phone".into(),
                alt_id: "wamid.2".into(),
                direction: MessageDirection::Outbound,
                ..InboundMessage::default()
            },
        )
        .await
        .unwrap();

    let seen = ghl.seen();
    assert_eq!(
        seen[0].json(),
        json!({
            "type": "SMS",
            "contactId": "contact-1",
            "conversationProviderId": "provider-1",
            "message": "Is the shop open?",
            "attachments": ["https://media.example/1.jpg"],
            "altId": "wamid.1",
            "direction": "inbound",
            "date": "2026-03-01T12:30:00.000Z",
        })
    );
    assert_eq!(
        seen[1].json(),
        json!({
            "type": "SMS",
            "contactId": "contact-1",
            "message": "typed on the phone",
            "altId": "wamid.2",
            "direction": "outbound",
        })
    );
}

#[tokio::test]
async fn a_message_accepted_without_a_message_id_is_an_error() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(Reply {
        status: 201,
        headers: Vec::new(),
        body: String::new(),
    })
    .then(reply(201, json!({"success": true})));
    let message = InboundMessage {
        contact_id: "contact-1".into(),
        message: "hi".into(),
        alt_id: "wamid.1".into(),
        ..InboundMessage::default()
    };
    for _ in 0..2 {
        let err = client
            .add_inbound_message(&location(), TOKEN, &message)
            .await
            .unwrap_err();
        assert!(matches!(err, GhlError::Protocol(_)), "{err:?}");
        assert!(!err.is_retryable());
    }
    assert_eq!(ghl.seen().len(), 2, "neither was retried");
}

#[tokio::test]
async fn a_message_post_that_fails_with_a_5xx_is_not_repeated_inside_the_call() {
    // GHL may have added the message before failing: whether to post again is the outbox's
    // to decide, after looking for it. A 429 (nothing was done) is still waited out.
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(reply(502, json!({"message": "Bad Gateway"})))
        .then(reply(429, json!({"message": "Too many requests"})))
        .then(reply(
            200,
            json!({"success": true, "conversationId": "conv-1", "messageId": "msg-1", "message": "ok"}),
        ));
    let message = InboundMessage {
        contact_id: "contact-1".into(),
        message: "hi".into(),
        alt_id: "wamid.1".into(),
        ..InboundMessage::default()
    };
    let err = client
        .add_inbound_message(&location(), TOKEN, &message)
        .await
        .unwrap_err();
    assert!(
        matches!(err, GhlError::Server { status: 502, .. }),
        "{err:?}"
    );
    assert!(!err.certainly_unsent());
    assert_eq!(ghl.seen().len(), 1, "not repeated");
    let posted = client
        .add_inbound_message(&location(), TOKEN, &message)
        .await
        .unwrap();
    assert_eq!(posted.message_id, "msg-1");
    assert_eq!(ghl.seen().len(), 3, "the 429 was waited out");
}

#[tokio::test]
async fn a_posted_message_is_found_in_the_contacts_conversations_by_its_text_and_date() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    let at = Utc.with_ymd_and_hms(2026, 12, 2, 9, 30, 0).unwrap();
    let listed = |id: &str, body: &str, date: &str| {
        json!({"id": id, "type": 2, "messageType": "TYPE_SMS", "locationId": "loc", "contactId": "contact-1",
               "conversationId": "conv-1", "dateAdded": date, "body": body, "direction": "inbound",
               "contentType": "text/plain"})
    };
    ghl.then(reply(
        200,
        json!({"conversations": [{"id": "conv-1"}], "total": 1}),
    ))
    .then(reply(
        200,
        json!({"lastMessageId": "m2", "nextPage": true, "messages": [
            listed("m3", "hi", "2026-12-02T09:31:00.000Z"),
            listed("m2", "other", "2026-12-02T09:30:00.000Z"),
        ]}),
    ))
    .then(reply(
        200,
        json!({"lastMessageId": "m1", "nextPage": false, "messages": [
            listed("m1", "hi", "2026-12-02T09:30:00.000Z"),
        ]}),
    ));
    let message = InboundMessage {
        contact_id: "contact-1".into(),
        message: "hi".into(),
        alt_id: "wamid.1".into(),
        date: Some(at),
        ..InboundMessage::default()
    };
    let found = client
        .find_inbound_message(&location(), TOKEN, &message, 5)
        .await
        .unwrap();
    assert_eq!(
        found.map(|f| (f.conversation_id, f.message_id)),
        Some(("conv-1".into(), "m1".into()))
    );
    let seen = ghl.seen();
    assert_eq!(seen[0].path, "/conversations/search");
    assert!(
        seen[0]
            .query_pairs()
            .contains(&("contactId".into(), "contact-1".into()))
    );
    assert_eq!(seen[1].path, "/conversations/conv-1/messages");
    assert!(
        seen[2]
            .query_pairs()
            .contains(&("lastMessageId".into(), "m2".into()))
    );
}

#[tokio::test]
async fn a_server_error_is_retried_and_the_call_succeeds() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(reply(502, json!({"message": "Bad Gateway"})))
        .then(reply(
            500,
            json!({"statusCode": 500, "message": "Internal"}),
        ))
        .then(reply(201, json!({"tags": ["vip"]})));

    let tags = client
        .add_tags(&location(), TOKEN, "contact-1", &["vip".into()])
        .await
        .unwrap();
    assert_eq!(tags, ["vip"]);
    assert_eq!(ghl.seen().len(), 3);
}

#[tokio::test]
async fn server_errors_end_as_server_after_the_attempts() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.always(reply(503, json!({"message": "try later"})));

    let err = client
        .add_tags(&location(), TOKEN, "contact-1", &["vip".into()])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        GhlError::Server {
            status: 503,
            message: "try later".into()
        }
    );
    assert!(err.is_retryable());
    assert_eq!(ghl.seen().len(), 3, "the policy allows 3 attempts");
}

#[tokio::test]
async fn ghl_being_unreachable_is_unavailable_after_the_attempts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let config = GhlConfig {
        api_base: base,
        retry: RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        },
        ..GhlConfig::default()
    };
    let client = GhlClient::new(config, Arc::new(RateLimiter::default()));
    let err = client
        .find_contact_by_phone(&location(), TOKEN, "+5511987654321")
        .await
        .unwrap_err();
    assert!(matches!(err, GhlError::Unavailable(_)), "{err:?}");
    assert!(
        !err.to_string().contains("5511987654321"),
        "the phone number stays out of the error: {err}"
    );
}

#[tokio::test]
async fn a_429_is_waited_out_and_ghls_headers_hold_back_the_next_request() {
    let ghl = StubGhl::start().await;
    let mut config = ghl.config();
    config.retry.max_delay = Duration::from_secs(2);
    let (client, limiter) = ghl.client_with(config);
    ghl.then(reply(429, json!({"message": "Too many requests"})).header("retry-after", "1"))
        .then(
            reply(201, json!({"tags": ["vip"]}))
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-max", "100"),
        );

    let started = Instant::now();
    client
        .add_tags(&location(), TOKEN, "contact-1", &["vip".into()])
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(ghl.seen().len(), 2);
    match limiter.try_acquire(&location()) {
        Err(Exhausted::Wait(wait)) => assert!(wait > Duration::from_secs(9), "{wait:?}"),
        other => panic!("GHL said the window is used up, yet {other:?}"),
    }
}

#[tokio::test]
async fn a_429_beyond_the_attempts_is_rate_limited_and_blocks_the_location() {
    let ghl = StubGhl::start().await;
    let (client, limiter) = ghl.client();
    ghl.always(reply(429, json!({"message": "Too many requests"})).header("retry-after", "30"));

    let err = client
        .add_tags(&location(), TOKEN, "contact-1", &["vip".into()])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        GhlError::RateLimited {
            retry_after: Some(Duration::from_secs(30))
        }
    );
    assert_eq!(
        ghl.seen().len(),
        1,
        "30 s is too long to wait inside the call"
    );
    assert!(matches!(
        limiter.try_acquire(&location()),
        Err(Exhausted::Wait(wait)) if wait > Duration::from_secs(29)
    ));
}

#[tokio::test]
async fn a_401_is_unauthorized_at_once() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.always(reply(
        401,
        json!({"statusCode": 401, "message": "Invalid token: access token is invalid", "error": "Unauthorized"}),
    ));

    let err = client
        .upsert_contact(
            &location(),
            TOKEN,
            &ContactUpsert {
                phone: "+5511987654321".into(),
                ..ContactUpsert::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        GhlError::Unauthorized {
            message: "Invalid token: access token is invalid".into()
        }
    );
    assert_eq!(err.http_status(), Some(401));
    assert_eq!(ghl.seen().len(), 1, "not retried");
}

#[tokio::test]
async fn other_refusals_are_final_with_ghls_words() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(reply(
        422,
        json!({"statusCode": 422, "message": ["phone must be valid", "tags must be an array"], "error": "Unprocessable Entity"}),
    ))
    .then(reply(
        403,
        json!({"statusCode": 403, "message": "The token is not authorized for this scope."}),
    ));

    let err = client
        .add_tags(&location(), TOKEN, "contact-1", &["vip".into()])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        GhlError::Refused {
            status: 422,
            message: "phone must be valid; tags must be an array".into()
        }
    );
    let err = client
        .add_tags(&location(), TOKEN, "contact-1", &["vip".into()])
        .await
        .unwrap_err();
    assert!(matches!(err, GhlError::Forbidden { .. }), "{err:?}");
    assert_eq!(ghl.seen().len(), 2);
}

#[tokio::test]
async fn a_status_update_waits_until_ghl_knows_the_message() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(not_yet_downstreamed())
        .then(not_yet_downstreamed())
        .then(not_yet_downstreamed())
        .then(not_yet_downstreamed())
        .then(reply(
            200,
            json!({"conversationId": "c1", "messageId": "m1", "status": "failed"}),
        ));

    client
        .update_message_status(
            &location(),
            TOKEN,
            "m1",
            &StatusUpdate {
                status: DeliveryStatus::Failed,
                error: Some(StatusError {
                    code: "30005".into(),
                    message: "the number does not exist".into(),
                }),
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap();

    let seen = ghl.seen();
    assert_eq!(
        seen.len(),
        5,
        "four 403s waited out, more than the 3 attempts"
    );
    assert_eq!(
        seen[4].json(),
        json!({
            "status": "failed",
            "error": {"code": "30005", "type": "saas", "message": "the number does not exist"},
        })
    );
}

#[tokio::test]
async fn a_status_update_gives_up_after_its_patience() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.always(not_yet_downstreamed());

    let started = Instant::now();
    let err = client
        .update_message_status(
            &location(),
            TOKEN,
            "m1",
            &status_update(),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        err,
        GhlError::Refused {
            status: 403,
            message: "No conversation provider found for this message".into()
        }
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(ghl.seen().len() > 3, "retried for the whole patience");

    // Without patience, the first 403 is the answer.
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.always(not_yet_downstreamed());
    let err = client
        .update_message_status(&location(), TOKEN, "m1", &status_update(), Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(403));
    assert_eq!(ghl.seen().len(), 1);
}

#[tokio::test]
async fn refresh_returns_the_new_refresh_token() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(reply(
        200,
        json!({
            "access_token": "access-2", "token_type": "Bearer", "expires_in": 86399,
            "refresh_token": "refresh-2", "scope": "contacts.write users.readonly",
            "userType": "Location", "locationId": "ve9EPM428h8vShlRW1KT",
            "companyId": "company-1", "userId": "user-1"
        }),
    ));

    let grant = client
        .refresh("refresh-1", UserType::Location)
        .await
        .unwrap();
    assert_eq!(grant.access_token, "access-2");
    assert_eq!(grant.refresh_token.as_deref(), Some("refresh-2"));
    assert_eq!(grant.expires_in, Some(86399));
    assert_eq!(grant.user_type.as_deref(), Some("Location"));
    assert_eq!(grant.location_id.as_deref(), Some("ve9EPM428h8vShlRW1KT"));
    assert_eq!(grant.company_id.as_deref(), Some("company-1"));
    assert_eq!(grant.user_id.as_deref(), Some("user-1"));

    let request = ghl.only_request();
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/oauth/token")
    );
    assert_eq!(request.header("version"), None, "/oauth/token takes none");
    assert_eq!(request.header("authorization"), None);
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let mut form = request.form();
    form.sort();
    assert_eq!(
        form,
        [
            ("client_id".into(), "client-1".into()),
            ("client_secret".into(), "client-secret-1".into()),
            ("grant_type".into(), "refresh_token".into()),
            ("refresh_token".into(), "refresh-1".into()),
            ("user_type".into(), "Location".into()),
        ]
    );
}

#[tokio::test]
async fn a_code_is_exchanged_for_location_tokens() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(reply(
        200,
        json!({"access_token": "access-1", "refresh_token": "refresh-1", "expires_in": 86399,
               "userType": "Location", "locationId": "ve9EPM428h8vShlRW1KT", "userId": "user-1"}),
    ))
    .then(reply(
        400,
        json!({"error": "invalid_grant", "error_description": "Invalid grant: code is invalid"}),
    ));

    let grant = client.exchange_code("code-1").await.unwrap();
    assert_eq!(grant.access_token, "access-1");
    let err = client.exchange_code("code-1").await.unwrap_err();
    assert_eq!(
        err,
        GhlError::Refused {
            status: 400,
            message: "Invalid grant: code is invalid".into()
        }
    );

    let form = ghl.seen()[0].form();
    for expected in [
        ("grant_type", "authorization_code"),
        ("code", "code-1"),
        ("user_type", "Location"),
        ("redirect_uri", "https://whatsnap.example/ghl/oauth"),
    ] {
        assert!(
            form.iter()
                .any(|(k, v)| (k.as_str(), v.as_str()) == expected),
            "{expected:?} in {form:?}"
        );
    }
}

#[tokio::test]
async fn oauth_without_client_credentials_is_not_configured() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client_with(GhlConfig {
        api_base: ghl.base.clone(),
        ..GhlConfig::default()
    });
    assert!(matches!(
        client.exchange_code("code-1").await,
        Err(GhlError::NotConfigured(_))
    ));
    assert!(matches!(
        client.authorize_url(None),
        Err(GhlError::NotConfigured(_))
    ));
    assert!(ghl.seen().is_empty());
}

#[tokio::test]
async fn a_location_token_is_made_from_the_agency_token() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(reply(
        200,
        json!({"access_token": "loc-token", "token_type": "Bearer", "expires_in": 86399,
               "scope": "contacts.write", "locationId": "ve9EPM428h8vShlRW1KT", "userId": "user-1"}),
    ));

    let grant = client
        .location_token("agency-token", "company-1", &location())
        .await
        .unwrap();
    assert_eq!(grant.access_token, "loc-token");
    assert_eq!(grant.refresh_token, None);

    let request = ghl.only_request();
    assert_eq!(request.path, "/oauth/locationToken");
    assert_eq!(request.header("version"), Some("2021-07-28"));
    assert_eq!(request.header("authorization"), Some("Bearer agency-token"));
    let mut form = request.form();
    form.sort();
    assert_eq!(
        form,
        [
            ("companyId".into(), "company-1".into()),
            ("locationId".into(), "ve9EPM428h8vShlRW1KT".into()),
        ]
    );
}

#[tokio::test]
async fn tokens_never_show_in_debug_output() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client();
    ghl.then(reply(
        200,
        json!({"access_token": "secret-access-xyz", "refresh_token": "secret-refresh-xyz",
               "userType": "Location", "locationId": "ve9EPM428h8vShlRW1KT", "userId": "u"}),
    ));
    let grant = client
        .refresh("refresh-1", UserType::Location)
        .await
        .unwrap();
    let shown = format!("{grant:?} {grant:#?}");
    assert!(!shown.contains("secret-access-xyz"), "{shown}");
    assert!(!shown.contains("secret-refresh-xyz"), "{shown}");
    assert!(shown.contains("ve9EPM428h8vShlRW1KT"), "{shown}");
    let shown = format!("{client:?}");
    assert!(!shown.contains("client-secret-1"), "{shown}");
}

#[tokio::test]
async fn the_authorize_url_asks_for_the_scopes_space_separated() {
    let ghl = StubGhl::start().await;
    let (client, _) = ghl.client_with(GhlConfig {
        scopes: vec![
            "conversations/message.write".into(),
            "contacts.readonly".into(),
            "users.readonly".into(),
        ],
        ..ghl.config()
    });

    let url = client.authorize_url(Some("state+1/2")).unwrap();
    assert!(
        url.starts_with("https://marketplace.gohighlevel.com/v2/oauth/chooselocation?"),
        "{url}"
    );
    assert!(
        url.contains("scope=conversations%2Fmessage.write%20contacts.readonly%20users.readonly"),
        "{url}"
    );
    assert!(!url.contains('+'), "{url}");
    let parsed = url::Url::parse(&url).unwrap();
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    assert_eq!(
        pairs,
        [
            ("response_type".into(), "code".into()),
            (
                "redirect_uri".into(),
                "https://whatsnap.example/ghl/oauth".into()
            ),
            ("client_id".into(), "client-1".into()),
            (
                "scope".into(),
                "conversations/message.write contacts.readonly users.readonly".into()
            ),
            ("state".into(), "state+1/2".into()),
        ]
    );
    let without_state = client.authorize_url(None).unwrap();
    assert!(!without_state.contains("state="), "{without_state}");
}

#[test]
fn the_default_configuration_is_production() {
    let config = GhlConfig::default();
    assert_eq!(config.api_base, "https://services.leadconnectorhq.com");
    assert_eq!(
        config.marketplace_base,
        "https://marketplace.gohighlevel.com"
    );
    assert_eq!(config.request_timeout, Duration::from_secs(15));
    for scope in [
        "conversations/message.write",
        "contacts.write",
        "contacts.readonly",
        "users.readonly",
    ] {
        assert!(config.scopes.iter().any(|s| s == scope), "{scope}");
    }
}
