//! The fake Evolution API refuses what Evolution 2.3.6 refuses, in Evolution's words and shape,
//! seen from a client over HTTP; and it posts webhooks the way Evolution does.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use whatsnap_fakes::FakeEvolution;

const GLOBAL: &str = FakeEvolution::GLOBAL_API_KEY;

async fn call(
    method: reqwest::Method,
    url: String,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(key) = key {
        request = request.header("apikey", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn shape(status: u16, error: &str, message: Value) -> Value {
    json!({ "status": status, "error": error, "response": { "message": message } })
}

#[tokio::test]
async fn the_instance_must_exist_before_the_key_is_looked_at() {
    let fake = FakeEvolution::start().await.unwrap();
    let token = fake.add_instance("acme");
    let url = |path: &str| format!("{}{path}", fake.base_url());

    let (status, body) = call(
        reqwest::Method::GET,
        url("/instance/connectionState/ghost"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        shape(
            404,
            "Not Found",
            json!(["The \"ghost\" instance does not exist"])
        )
    );

    for key in [None, Some("wrong")] {
        let (status, body) = call(
            reqwest::Method::GET,
            url("/instance/connectionState/acme"),
            key,
            None,
        )
        .await;
        assert_eq!(status, 401);
        assert_eq!(body, shape(401, "Unauthorized", json!("Unauthorized")));
    }
    for key in [GLOBAL, token.as_str()] {
        let (status, body) = call(
            reqwest::Method::GET,
            url("/instance/connectionState/acme"),
            Some(key),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({ "instance": { "instanceName": "acme", "state": "close" } })
        );
    }

    // A body that is not JSON is refused before anything else, by express' parser.
    let response = reqwest::Client::new()
        .post(url("/message/sendText/ghost"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "Internal Server Error");
    assert!(
        body["response"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Unexpected token")
    );

    let (status, body) = call(reqwest::Method::GET, url("/nowhere"), Some(GLOBAL), None).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        shape(404, "Not Found", json!(["Cannot GET /nowhere"]))
    );
}

#[tokio::test]
async fn creating_needs_the_global_key_a_free_name_and_a_known_integration() {
    let fake = FakeEvolution::start().await.unwrap();
    let token = fake.add_instance("taken");
    let url = format!("{}/instance/create", fake.base_url());
    let create = |name: &str| json!({ "instanceName": name, "integration": "WHATSAPP-BAILEYS", "qrcode": false });

    let (status, body) = call(
        reqwest::Method::POST,
        url.clone(),
        Some(GLOBAL),
        Some(create("taken")),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            403,
            shape(
                403,
                "Forbidden",
                json!(["This name \"taken\" is already in use."])
            )
        )
    );
    let (status, _) = call(
        reqwest::Method::POST,
        url.clone(),
        Some(&token),
        Some(create("fresh")),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = call(
        reqwest::Method::POST,
        url.clone(),
        Some(GLOBAL),
        Some(json!({ "instanceName": "fresh", "integration": "WHATSAPP-WEB" })),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            400,
            shape(400, "Bad Request", json!(["Invalid integration"]))
        )
    );
    let (status, body) = call(
        reqwest::Method::POST,
        url.clone(),
        Some(GLOBAL),
        Some(
            json!({ "instanceName": "fresh", "integration": "WHATSAPP-BAILEYS", "qrcode": "yes" }),
        ),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            400,
            shape(
                400,
                "Bad Request",
                json!([["qrcode is not of a type(s) boolean"]])
            )
        )
    );

    let (status, body) = call(
        reqwest::Method::POST,
        url,
        Some(GLOBAL),
        Some(json!({ "instanceName": "fresh", "integration": "WHATSAPP-BAILEYS", "qrcode": true, "token": "my-token" })),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(body["hash"], "my-token");
    assert_eq!(body["instance"]["instanceName"], "fresh");
    assert_eq!(body["instance"]["status"], "connecting");
    assert_eq!(body["qrcode"]["count"], 1);
    assert!(
        body["qrcode"]["code"]
            .as_str()
            .is_some_and(|c| c.starts_with("2@"))
    );
}

#[tokio::test]
async fn sends_are_refused_as_evolution_refuses_them() {
    let fake = FakeEvolution::start().await.unwrap();
    let token = fake.add_instance("acme");
    let url = |path: &str| format!("{}{path}/acme", fake.base_url());
    let send = |body: Value| {
        call(
            reqwest::Method::POST,
            url("/message/sendText"),
            Some(&token),
            Some(body),
        )
    };

    let (status, body) = send(json!({ "number": 5511988887777u64 })).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        shape(
            400,
            "Bad Request",
            json!([["Invalid format", "instance requires property \"text\""]])
        )
    );
    let (status, body) = send(json!({ "number": "5511988887777", "text": "   " })).await;
    assert_eq!(
        (status, body),
        (400, shape(400, "Bad Request", json!(["Text is required"])))
    );
    let (status, body) = send(json!({ "number": "5511988887777", "text": "hi" })).await;
    assert_eq!(
        (status, body),
        (
            500,
            shape(500, "Internal Server Error", json!("Connection Closed"))
        ),
        "nothing leaves a closed link"
    );

    fake.rotate_qr("acme").await.unwrap_err();
    call(
        reqwest::Method::GET,
        url("/instance/connect"),
        Some(&token),
        None,
    )
    .await;
    fake.scan("acme", "+5511999990000", "Acme").await.unwrap();
    fake.set_not_on_whatsapp("+5511900000000");
    let (status, body) = send(json!({ "number": "5511900000000", "text": "hi" })).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["response"]["message"],
        json!([{ "exists": false, "jid": "5511900000000@s.whatsapp.net", "number": "5511900000000" }])
    );

    let media = |body: Value| {
        call(
            reqwest::Method::POST,
            url("/message/sendMedia"),
            Some(&token),
            Some(body),
        )
    };
    let (status, body) = media(json!({ "number": "5511988887777", "mediatype": "sticker", "media": "https://x.example/a.webp" })).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["response"]["message"],
        json!([["mediatype is not one of enum values: image,document,video,audio"]])
    );
    let (status, body) = media(
        json!({ "number": "5511988887777", "mediatype": "document", "media": "JVBERi0xLjQ=" }),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            400,
            shape(
                400,
                "Bad Request",
                json!(["For base64 the file name must be informed."])
            )
        )
    );
    let (status, body) =
        media(json!({ "number": "5511988887777", "mediatype": "image", "media": "not media" }))
            .await;
    assert_eq!(
        (status, body),
        (
            400,
            shape(
                400,
                "Bad Request",
                json!(["Owned media must be a url or base64"])
            )
        )
    );
    assert!(
        fake.sent().is_empty(),
        "nothing refused was recorded as sent"
    );

    let (status, body) =
        send(json!({ "number": "5511988887777", "text": "hi", "delay": 0, "linkPreview": false }))
            .await;
    assert_eq!(status, 201);
    assert_eq!(body["key"]["fromMe"], true);
    assert_eq!(body["key"]["remoteJid"], "5511988887777@s.whatsapp.net");
    assert_eq!(body["status"], "PENDING");
    assert_eq!(body["message"]["conversation"], "hi");
    assert_eq!(fake.sent()[0].id, body["key"]["id"]);
}

/// A receiver that hands over each body it gets, with its Authorization header.
async fn receiver() -> (
    String,
    mpsc::UnboundedReceiver<(String, Option<String>, Value)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let _ = tx.send((
                    uri.path().to_owned(),
                    auth,
                    serde_json::from_slice(&body).unwrap(),
                ));
                "ok"
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

async fn next_event(
    rx: &mut mpsc::UnboundedReceiver<(String, Option<String>, Value)>,
    event: &str,
) -> (String, Option<String>, Value) {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a webhook within 10 s")
            .unwrap();
        if got.2["event"] == event {
            return got;
        }
    }
}

#[tokio::test]
async fn webhooks_carry_the_instance_token_or_a_jwt_and_go_where_configured() {
    let fake = FakeEvolution::start().await.unwrap();
    let token = fake.add_instance("acme");
    let (url, mut rx) = receiver().await;
    let set = |webhook: Value| {
        call(
            reqwest::Method::POST,
            format!("{}/webhook/set/acme", fake.base_url()),
            Some(&token),
            Some(json!({ "webhook": webhook })),
        )
    };
    let (status, body) = set(json!({ "url": url })).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["response"]["message"],
        json!([["instance requires property \"enabled\""]])
    );

    let (status, body) =
        set(json!({ "enabled": true, "url": url, "events": ["MESSAGE_UPSERT"] })).await;
    assert_eq!(status, 400);
    assert!(
        body["response"]["message"][0][0]
            .as_str()
            .is_some_and(|m| m
                .starts_with("webhook.events[0] is not one of enum values: APPLICATION_STARTUP,")),
        "{body}"
    );

    let (status, _) = set(json!({
        "enabled": true, "url": format!("{url}/hook"), "byEvents": true, "base64": true,
        "headers": { "jwt_key": "the-jwt-key" }, "events": ["QRCODE_UPDATED", "CONNECTION_UPDATE"],
    }))
    .await;
    assert_eq!(status, 201);
    call(
        reqwest::Method::GET,
        format!("{}/instance/connect/acme", fake.base_url()),
        Some(&token),
        None,
    )
    .await;
    let (path, auth, body) = next_event(&mut rx, "qrcode.updated").await;
    assert_eq!(path, "/hook/qrcode-updated", "byEvents appends the event");
    let jwt = auth.unwrap();
    assert!(jwt.starts_with("Bearer ey"), "{jwt}");
    assert_eq!(body["apikey"], token);
    assert_eq!(body["instance"], "acme");
    assert!(
        body.get("sender").is_none(),
        "no sender before the first open"
    );
    assert!(body["data"]["qrcode"]["code"].is_string());

    fake.scan("acme", "+5511999990000", "Acme").await.unwrap();
    let (_, _, open) = next_event(&mut rx, "connection.update").await;
    let open = if open["data"]["state"] == "connecting" {
        next_event(&mut rx, "connection.update").await.2
    } else {
        open
    };
    assert_eq!(open["data"]["state"], "open");
    assert_eq!(open["data"]["wuid"], "5511999990000@s.whatsapp.net");
    assert_eq!(open["sender"], "5511999990000@s.whatsapp.net");

    // Not subscribed: messages are not posted.
    let (_, status) = fake
        .receive(
            "acme",
            whatsnap_fakes::FakeEvolutionIncoming::text("+5511988887777", "hi"),
        )
        .await
        .unwrap();
    assert_eq!(status, None);
    assert_eq!(fake.redeliver_last("acme").await.unwrap(), Some(200));
    let (_, _, again) = next_event(&mut rx, "connection.update").await;
    assert_eq!(again, open, "a redelivery is the same body");
}
