//! A Twilio number connected to whatsnap: adding it checks the credentials with Twilio and
//! keeps the Auth Token sealed; a signed inbound SMS becomes a tagged contact, once however
//! often Twilio delivers it; a webhook that is not Twilio's changes nothing.

use std::path::Path;

use tonic::Code;
use whatsnap_events::inbound_message_id_for;
use whatsnap_proto::contacts::v1 as contacts;
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::{FakeTwilio, FakeTwilioAccount, Whatsnap, eventually, http_post};

const LOCATION: &str = "loc1";
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token-of-loc1";
const NUMBER: &str = "+15005550006";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

fn add(name: &str, token: &str, number: &str) -> session::AddAccountRequest {
    session::AddAccountRequest {
        location_id: LOCATION.into(),
        kind: session::AccountKind::Twilio as i32,
        name: name.into(),
        phone_number: number.into(),
        twilio: Some(session::TwilioCredentials {
            account_sid: SID.into(),
            auth_token: token.into(),
        }),
        ..Default::default()
    }
}

fn inbound_params(message_sid: &str, from: &str) -> Vec<(String, String)> {
    [
        ("MessageSid", message_sid),
        ("SmsSid", message_sid),
        ("AccountSid", SID),
        ("From", from),
        ("To", NUMBER),
        ("Body", "Hi, is this open today?"),
        ("NumMedia", "0"),
        ("NumSegments", "1"),
        ("FromCountry", "US"),
        ("ApiVersion", "2010-04-01"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The fake Twilio, holding the location's account and number, and `whatsnap serve` on a new
/// data directory calling it, with `extra` flags.
async fn serve_with_twilio(
    extra: &[&str],
    log_name: &str,
) -> (FakeTwilio, tempfile::TempDir, Whatsnap) {
    let twilio = FakeTwilio::start().await.unwrap();
    twilio.add_account(FakeTwilioAccount {
        sid: SID.into(),
        auth_token: TOKEN.into(),
        status: "active".into(),
        numbers: vec![(NUMBER.into(), true)],
    });
    let data = tempfile::tempdir().unwrap();
    let base_url = twilio.base_url();
    let mut args = vec![
        "--data-dir",
        data.path().to_str().unwrap(),
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--twilio-base-url",
        &base_url,
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    let whatsnap = Whatsnap::serve(binary(), &args, log_name).unwrap();
    (twilio, data, whatsnap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_twilio_sms_becomes_one_tagged_contact_and_forgeries_change_nothing() {
    let (_twilio, data, whatsnap) =
        serve_with_twilio(&["--max-accounts-per-location", "2"], "twilio").await;
    let channel = whatsnap.channel().await;
    let mut accounts = session::session_service_client::SessionServiceClient::new(channel.clone());
    let mut contacts_api =
        contacts::contacts_service_client::ContactsServiceClient::new(channel.clone());
    let mut events_api = events::events_service_client::EventsServiceClient::new(channel);

    // Adding: Twilio says what is wrong, and whatsnap passes it on.
    let err = accounts
        .add_account(add("Sales", "wrong-token", NUMBER))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("Account SID or Auth Token"),
        "{}",
        err.message()
    );
    let err = accounts
        .add_account(add("Sales", TOKEN, "+15005550009"))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("does not own the number +15005550009"),
        "{}",
        err.message()
    );
    let account = accounts
        .add_account(add("Sales", TOKEN, NUMBER))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.tag, "whatsnap-account-sales");
    // The token is stored sealed: it is in none of the data directory's files.
    for (file, bytes) in whatsnap_testkit::stored_files(data.path()) {
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "the Auth Token is stored in clear in {}",
            file.display()
        );
    }

    let http = whatsnap.http.unwrap();
    let path = format!("/webhooks/twilio/{LOCATION}/{}/inbound", account.account_id);
    let url = format!("http://{http}{path}");
    let form = |params: &[(String, String)]| serde_urlencoded::to_string(params).unwrap();
    let post = |signature: Option<String>, body: String| {
        let path = path.clone();
        async move {
            let mut headers = vec![(
                "Content-Type",
                "application/x-www-form-urlencoded".to_owned(),
            )];
            if let Some(signature) = signature {
                headers.push(("X-Twilio-Signature", signature));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http_post(http, &path, &headers, Some(body.as_bytes()))
                .await
                .unwrap()
        }
    };

    // Forgeries first: nothing may come of them.
    let params = inbound_params("SM00000000000000000000000000000001", "+14155550100");
    let forged = whatsnap_twilio::signature::sign("not-the-token", &url, &params);
    assert_eq!(post(Some(forged), form(&params)).await.0, 403);
    assert_eq!(post(None, form(&params)).await.0, 403);
    let mut tampered = params.clone();
    tampered[5].1 = "Send me your password".into();
    let signed = whatsnap_twilio::signature::sign(TOKEN, &url, &params);
    assert_eq!(post(Some(signed.clone()), form(&tampered)).await.0, 403);
    let other = format!("/webhooks/twilio/{LOCATION}/01a2086a-20c3-7705-8003-4b64ce7f8e21/inbound");
    let (status, _) = http_post(
        http,
        &other,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Twilio-Signature", &signed),
        ],
        Some(form(&params).as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(status, 404);
    let (status, body) = http_post(
        http,
        &path,
        &[
            ("Content-Type", "application/json"),
            ("X-Twilio-Signature", &signed),
        ],
        Some(br#"{"MessageSid":"SM1"}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    let no_sender: Vec<_> = params
        .iter()
        .filter(|(k, _)| k != "From")
        .cloned()
        .collect();
    let signed_no_sender = whatsnap_twilio::signature::sign(TOKEN, &url, &no_sender);
    let (status, body) = post(Some(signed_no_sender), form(&no_sender)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no From parameter"), "{body}");
    let huge = format!("Body={}", "x".repeat(200 * 1024));
    assert_eq!(post(Some(signed.clone()), huge).await.0, 413);
    let message_id = inbound_message_id_for(account.account_id.parse().unwrap(), &params[0].1);
    let message_stream = format!("{LOCATION}.message.{message_id}");
    let read = |stream: String| events::ReadStreamRequest {
        stream_id: stream,
        from_version: 1,
        limit: 10,
    };
    let stored = events_api
        .read_stream(read(message_stream.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        stored.events.is_empty(),
        "a refused webhook wrote {:?}",
        stored.events
    );

    // The real thing, delivered three times as Twilio may.
    for _ in 0..3 {
        let (status, body) = post(Some(signed.clone()), form(&params)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("<Response></Response>"), "{body}");
    }
    let contact = eventually("a tagged contact from the webhook", async || {
        let request = contacts::GetContactRequest {
            location_id: LOCATION.into(),
            phone: "+14155550100".into(),
        };
        let contact = contacts_api.get_contact(request).await.ok()?.into_inner();
        (!contact.tags.is_empty()).then_some(contact)
    })
    .await;
    assert_eq!(contact.tags, ["whatsnap-account-sales"]);
    let stored = events_api
        .read_stream(read(message_stream))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stored.events.len(),
        1,
        "the message was recorded more than once"
    );
    assert_eq!(stored.events[0].event_type, "InboundMessageReceived");
    let contact_stream = format!("{LOCATION}.contact.{}", contact.contact_id);
    let created = events_api
        .read_stream(read(contact_stream))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        created
            .events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["ContactCreated"],
        "a new contact is one event, its account's tag in it"
    );

    // The location's account limit holds.
    accounts
        .add_account(session::AddAccountRequest {
            location_id: LOCATION.into(),
            kind: session::AccountKind::Whatsapp as i32,
            name: "Second".into(),
            phone_number: String::new(),
            twilio: None,
            ..Default::default()
        })
        .await
        .unwrap();
    // The limit counts the accounts the read model has: wait for the second to be in it.
    eventually("the second account is listed", async || {
        let request = session::ListAccountsRequest {
            location_id: LOCATION.into(),
        };
        let listed = accounts.list_accounts(request).await.ok()?.into_inner();
        (listed.accounts.len() == 2).then_some(())
    })
    .await;
    let err = accounts
        .add_account(session::AddAccountRequest {
            location_id: LOCATION.into(),
            kind: session::AccountKind::Whatsapp as i32,
            name: "Third".into(),
            phone_number: String::new(),
            twilio: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("the most it may have"),
        "{}",
        err.message()
    );
}

/// A location's API quota bounds its API callers, not its customers: a burst of signed texts,
/// many times the quota, is taken whole, and the location's callers still have every call
/// the quota had left them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_texts_is_not_charged_to_the_location_api_quota() {
    const TEXTS: usize = 60;
    const BURST: usize = 4;
    // Four calls, and next to no refill while the test runs.
    let burst = BURST.to_string();
    let quota = ["--location-burst", &burst, "--location-quota", "0.001"];
    let (_twilio, _data, whatsnap) = serve_with_twilio(&quota, "twilio-burst").await;
    let mut accounts =
        session::session_service_client::SessionServiceClient::new(whatsnap.channel().await);
    // One call of the four.
    let account = accounts
        .add_account(add("Sales", TOKEN, NUMBER))
        .await
        .unwrap()
        .into_inner();

    let http = whatsnap.http.unwrap();
    let path = format!("/webhooks/twilio/{LOCATION}/{}/inbound", account.account_id);
    let url = format!("http://{http}{path}");
    let text = move |n: usize| {
        let params = inbound_params(&format!("SM{n:032x}"), &format!("+1415555{:04}", 3000 + n));
        let signature = whatsnap_twilio::signature::sign(TOKEN, &url, &params);
        let body = serde_urlencoded::to_string(&params).unwrap();
        let path = path.clone();
        async move {
            let headers = [
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Twilio-Signature", signature.as_str()),
            ];
            http_post(http, &path, &headers, Some(body.as_bytes()))
                .await
                .unwrap()
        }
    };
    // The account is found by the webhooks once it is in the read model.
    eventually("the first text is taken", async || {
        (text(0).await.0 == 200).then_some(())
    })
    .await;
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..6 {
        let text = text.clone();
        senders.spawn(async move {
            let mut statuses = Vec::new();
            for n in (1..TEXTS).filter(|n| n % 6 == sender) {
                statuses.push((n, text(n).await));
            }
            statuses
        });
    }
    while let Some(statuses) = senders.join_next().await {
        for (n, (status, body)) in statuses.unwrap() {
            assert_eq!(status, 200, "text {n}: {body}");
        }
    }

    // The three calls the quota had left are there, and no more.
    let list = || session::ListAccountsRequest {
        location_id: LOCATION.into(),
    };
    for _ in 1..BURST {
        accounts.list_accounts(list()).await.unwrap();
    }
    let refused = accounts.list_accounts(list()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
}
