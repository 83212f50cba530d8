//! One bad event never takes whatsnap down. Given the contacts service in its own process,
//! with a projection that fails on some messages (a `failpoints` fault standing in for a bug),
//! when such messages arrive through the Twilio webhook, then they are parked and the gateway
//! and the contacts service go on: a later message still becomes a contact. The operator sees
//! them in `whatsnap status`, retries one after the fix and skips the other, through the gateway
//! while the contacts process does the work.

use std::path::Path;
use std::process::Command;

use whatsnap_proto::contacts::v1 as contacts;
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::{
    FakeTwilio, FakeTwilioAccount, TestNats, TestPostgres, Whatsnap, distributed_args, eventually,
    http_post,
};

const LOCATION: &str = "loc1";
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token-of-loc1";
const NUMBER: &str = "+15005550006";
const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// What makes a message poison to the contacts projection.
const MARKER: &str = "POISON-PILL";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Runs `whatsnap <args> --server <gateway>`; returns (success, stdout, stderr).
fn cli(gateway: &Whatsnap, list: &[&str]) -> (bool, String, String) {
    let output = Command::new(binary())
        .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
        .args(list)
        .args(["--server", &gateway.grpc_url()])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The (projection, position) of each row `whatsnap parked list` prints.
fn listed(out: &str) -> Vec<(String, u64, String)> {
    out.lines()
        .skip(1)
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let projection = words.next()?.to_owned();
            let position = words.next()?.parse().ok()?;
            let event_type = words.next()?.to_owned();
            Some((projection, position, event_type))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_parked_while_the_edge_and_the_other_services_keep_working() {
    let twilio = FakeTwilio::start().await.unwrap();
    twilio.add_account(FakeTwilioAccount {
        sid: SID.into(),
        auth_token: TOKEN.into(),
        status: "active".into(),
        numbers: vec![(NUMBER.into(), true)],
    });
    let nats = TestNats::new().await.unwrap();
    let pg = TestPostgres::new().await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let cured = scratch.path().join("cured");
    let mut common = args(&["--secret-key", SECRET_KEY]);
    common.extend(distributed_args(&nats, &pg));
    let mut contacts_args = common.clone();
    contacts_args.extend(args(&[
        "--target",
        "contacts",
        "--grpc-addr",
        "127.0.0.1:0",
        "--projection-attempts",
        "2",
    ]));
    let contacts_process = Whatsnap::serve_with_env(
        binary(),
        &contacts_args,
        &[
            (
                "WHATSNAP_FAILPOINT_POISON",
                format!("contacts_stage:{MARKER}"),
            ),
            (
                "WHATSNAP_FAILPOINT_POISON_CURED",
                cured.to_str().unwrap().to_owned(),
            ),
        ],
        "parked-contacts",
    )
    .unwrap();
    let mut gateway_args = common.clone();
    gateway_args.extend(args(&[
        "--target",
        "gateway,session",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--twilio-base-url",
        &twilio.base_url(),
        "--contacts-url",
        &contacts_process.grpc_url(),
    ]));
    let gateway = Whatsnap::serve(binary(), &gateway_args, "parked-gateway").unwrap();
    let channel = gateway.channel().await;
    let contacts_api =
        contacts::contacts_service_client::ContactsServiceClient::new(channel.clone());
    let mut events_api = events::events_service_client::EventsServiceClient::new(channel.clone());
    let account = session::session_service_client::SessionServiceClient::new(channel)
        .add_account(session::AddAccountRequest {
            location_id: LOCATION.into(),
            kind: session::AccountKind::Twilio as i32,
            name: "Sales".into(),
            phone_number: NUMBER.into(),
            twilio: Some(session::TwilioCredentials {
                account_sid: SID.into(),
                auth_token: TOKEN.into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let http = gateway.http.unwrap();
    let path = format!("/webhooks/twilio/{LOCATION}/{}/inbound", account.account_id);
    let url = format!("http://{http}{path}");
    let sms = async |sid: &str, from: &str, body: &str| {
        let params: Vec<(String, String)> = [
            ("MessageSid", sid),
            ("SmsSid", sid),
            ("AccountSid", SID),
            ("From", from),
            ("To", NUMBER),
            ("Body", body),
            ("NumMedia", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let signature = whatsnap_twilio::signature::sign(TOKEN, &url, &params);
        let (status, body) = http_post(
            http,
            &path,
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Twilio-Signature", &signature),
            ],
            Some(serde_urlencoded::to_string(&params).unwrap().as_bytes()),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
    };
    let contact_of = async |phone: &str| {
        let request = contacts::GetContactRequest {
            location_id: LOCATION.into(),
            phone: phone.into(),
        };
        contacts_api
            .clone()
            .get_contact(request)
            .await
            .ok()
            .map(|c| c.into_inner())
            .filter(|c| !c.tags.is_empty())
    };

    // Two poison messages, then an ordinary one.
    sms(
        "SM00000000000000000000000000000001",
        "+14155550101",
        &format!("{MARKER} first"),
    )
    .await;
    sms(
        "SM00000000000000000000000000000002",
        "+14155550102",
        &format!("{MARKER} second"),
    )
    .await;
    sms(
        "SM00000000000000000000000000000003",
        "+14155550103",
        "Hi, is this open today?",
    )
    .await;

    // The contacts service went on past them: the ordinary message became a tagged contact.
    let contact = eventually(
        "the message after the poison ones becomes a contact",
        async || contact_of("+14155550103").await,
    )
    .await;
    assert_eq!(contact.tags, ["whatsnap-account-sales"]);

    // The operator sees both, through the gateway (the ordinary message, another contact's,
    // may be decided while the poison ones are still being tried).
    let (out, parked) = eventually("both poison messages parked", async || {
        let (ok, out, err) = cli(&gateway, &["parked", "list"]);
        assert!(ok, "{err}");
        let parked = listed(&out);
        (parked.len() == 2).then_some((out, parked))
    })
    .await;
    for (projection, _, event_type) in &parked {
        assert_eq!(
            (projection.as_str(), event_type.as_str()),
            ("contacts_stage", "InboundMessageReceived"),
            "{out}"
        );
    }
    assert!(out.contains("failpoint: this event is poison"), "{out}");
    let (first, second) = (parked[0].1.to_string(), parked[1].1.to_string());
    let (ok, status, err) = cli(&gateway, &["status"]);
    assert!(ok, "{err}");
    assert!(status.contains("2 parked event(s)"), "{status}");
    assert!(
        status.contains(&format!("whatsnap parked retry contacts_stage {first}")),
        "{status}"
    );
    assert!(
        status.contains(&format!("whatsnap parked skip contacts_stage {second}")),
        "{status}"
    );

    // A retry before the fix fails again; the event stays parked.
    let (ok, out, err) = cli(&gateway, &["parked", "retry", "contacts_stage", &first]);
    assert!(!ok, "{out}");
    assert!(err.contains("failed again and stays parked"), "{err}");

    // The second is skipped; after the fix the first is retried and applied.
    let (ok, out, err) = cli(
        &gateway,
        &["parked", "skip", "contacts_stage", &second, "--by", "ops"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("skipped"), "{out}");
    std::fs::write(&cured, "").unwrap();
    let (ok, out, err) = cli(
        &gateway,
        &["parked", "retry", "contacts_stage", &first, "--by", "ops"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("retried and applied"), "{out}");

    let (ok, out, err) = cli(&gateway, &["status"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "no parked events");
    let (ok, out, _) = cli(&gateway, &["parked", "list", "--all"]);
    assert!(ok);
    assert!(
        out.contains(" retried ") && out.contains(" skipped "),
        "{out}"
    );

    // Unknown events and projections are named as such.
    let (ok, _, err) = cli(&gateway, &["parked", "skip", "contacts_stage", "999999"]);
    assert!(!ok);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    assert!(err.contains("no parked event at position 999999"), "{err}");
    let (ok, _, err) = cli(&gateway, &["parked", "retry", "nonesuch", &first]);
    assert!(!ok);
    assert!(err.contains("no projection named \"nonesuch\""), "{err}");

    // The log tells the story, in the location's operations stream.
    let told = events_api
        .read_stream(events::ReadStreamRequest {
            stream_id: format!("{LOCATION}.operations.contacts_stage"),
            from_version: 1,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let mut types: Vec<_> = told.events.iter().map(|e| e.event_type.as_str()).collect();
    types.sort();
    assert_eq!(
        types,
        [
            "ParkedEventResolved",
            "ParkedEventResolved",
            "ProjectionEventParked",
            "ProjectionEventParked"
        ]
    );
    let resolutions: Vec<_> = told
        .events
        .iter()
        .filter(|e| e.event_type == "ParkedEventResolved")
        .map(|e| e.payload_json.clone())
        .collect();
    assert!(
        resolutions.iter().any(|p| p.contains("\"skipped\""))
            && resolutions.iter().any(|p| p.contains("\"retried\"")),
        "{resolutions:?}"
    );

    // And messages keep becoming contacts.
    sms(
        "SM00000000000000000000000000000004",
        "+14155550104",
        "Still there?",
    )
    .await;
    eventually("a later message becomes a contact", async || {
        contact_of("+14155550104").await
    })
    .await;
}
