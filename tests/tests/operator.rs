//! What an operator sees: the CLI against a running whatsnap, the gRPC health service and server
//! reflection.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use whatsnap_testkit::{ChildGuard, Whatsnap};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

/// Runs a CLI command against `server`; returns (success, stdout, stderr).
fn cli(server: &Whatsnap, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(binary())
        .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
        .args(args)
        .args(["--server", &server.grpc_url()])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Retries a CLI command until its output contains `expected` (read models are eventually
/// consistent).
fn cli_until(server: &Whatsnap, args: &[&str], expected: &str) -> String {
    let server = server.grpc_url();
    let args: Vec<&str> = args.iter().copied().chain(["--server", &server]).collect();
    run_until(&args, expected, Duration::from_secs(30))
}

/// Runs `whatsnap <args>` until it succeeds and prints `expected`, for at most `limit`.
fn run_until(args: &[&str], expected: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let output = Command::new(binary())
            .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
            .args(args)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() && out.contains(expected) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} never printed {expected:?}: {out}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_adds_an_account_records_a_message_and_traces_the_contact() {
    let data = tempfile::tempdir().unwrap();
    let whatsnap = Whatsnap::serve(
        binary(),
        &[
            "--data-dir".to_owned(),
            data.path().to_str().unwrap().to_owned(),
            "--grpc-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--http-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
        ],
        "operator",
    )
    .unwrap();

    let (ok, out, err) = cli(
        &whatsnap,
        &[
            "accounts",
            "add",
            "--location",
            "loc1",
            "--kind",
            "whatsapp",
            "--name",
            "Front Desk",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("whatsnap-account-front-desk"), "{out}");
    let account_id = out.split_whitespace().next().unwrap().to_owned();
    let listed = cli_until(
        &whatsnap,
        &["accounts", "list", "--location", "loc1"],
        &account_id,
    );
    assert!(
        listed.contains("whatsapp") && listed.contains("added"),
        "{listed}"
    );

    let (ok, out, err) = cli(
        &whatsnap,
        &[
            "messages",
            "receive",
            "--location",
            "loc1",
            "--account",
            &account_id,
            "--from",
            "+55 11 99999-0000",
            "--name",
            "Bia",
            "--body",
            "Oi",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("message "), "{out}");

    let shown = cli_until(
        &whatsnap,
        &["contacts", "show", "+5511999990000", "--location", "loc1"],
        "whatsnap-account-front-desk",
    );
    assert!(shown.contains("Bia"), "{shown}");
    let trace = cli_until(
        &whatsnap,
        &["trace", "+5511999990000", "--location", "loc1"],
        "left unassigned",
    );
    for expected in [
        "InboundMessageReceived",
        "ContactCreated",
        "tag whatsnap-account-front-desk added (Account)",
        "AssignmentSkipped",
    ] {
        assert!(
            trace.contains(expected),
            "{expected} missing from:\n{trace}"
        );
    }

    let (ok, out, err) = cli(
        &whatsnap,
        &["contacts", "route", "+5511999990000", "--location", "loc1"],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&account_id) && out.contains("whatsnap-account-front-desk"),
        "{out}"
    );
    let (ok, out, err) = cli(
        &whatsnap,
        &[
            "contacts",
            "tag",
            "+5511999990000",
            "vip",
            "--location",
            "loc1",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("vip") && out.contains("whatsnap-account-front-desk"),
        "{out}"
    );

    // Mistakes get one clear line and a failing exit status.
    let (ok, out, err) = cli(
        &whatsnap,
        &["contacts", "show", "99999", "--location", "loc1"],
    );
    assert!(!ok, "{out}");
    assert!(
        err.starts_with("error: ") && err.contains("country code"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &whatsnap,
        &["accounts", "remove", "--location", "loc1", "not-an-id"],
    );
    assert!(!ok);
    assert!(err.contains("not a UUID"), "{err}");

    // Health and reflection, as Kubernetes probes and grpcurl use them.
    let health_and_reflection = check_health_and_reflection(&whatsnap);
    health_and_reflection.await;

    // A read model rebuilt from zero while its service is stopped comes back the same.
    let mut whatsnap = whatsnap;
    assert!(whatsnap.terminate().unwrap().success());
    let data_dir = data.path().to_str().unwrap();
    let output = Command::new(binary())
        .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
        .args(["rebuild", "contacts", "--data-dir", data_dir])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.contains("contacts: emptied"), "{out}");
    let file = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(data.path().join("read-models.db")),
        )
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts")
        .fetch_one(&file)
        .await
        .unwrap();
    assert_eq!(rows, 0, "the read model was not emptied");
    file.close().await;
    let output = Command::new(binary())
        .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
        .args(["rebuild", "nope", "--data-dir", data_dir])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no read model named \"nope\""));
    let whatsnap = Whatsnap::serve(
        binary(),
        &[
            "--data-dir".to_owned(),
            data_dir.to_owned(),
            "--grpc-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--http-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
        ],
        "operator-rebuilt",
    )
    .unwrap();
    let shown = cli_until(
        &whatsnap,
        &["contacts", "show", "+5511999990000", "--location", "loc1"],
        "whatsnap-account-front-desk",
    );
    assert!(shown.contains("Bia"), "{shown}");
}

async fn check_health_and_reflection(whatsnap: &Whatsnap) {
    let channel = whatsnap.channel().await;
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "whatsnap.session.v1.SessionService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream_once(request))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in [
        "whatsnap.session.v1.SessionService",
        "whatsnap.contacts.v1.ContactsService",
        "whatsnap.assignment.v1.AssignmentService",
        "whatsnap.events.v1.EventsService",
        "whatsnap.ghlsync.v1.GhlSyncService",
    ] {
        assert!(names.contains(&service), "{service} not in {names:?}");
    }
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl futures::Stream<Item = T> {
    futures::stream::iter([item])
}

/// `whatsnap serve --demo` on a bare machine: the round trip plays against the built-in fakes —
/// Twilio, then a WhatsApp account linked by a QR code printed in the terminal — and afterwards
/// `whatsnap trace` tells the contact's story, reply and delivery included.
#[test]
fn the_demo_plays_the_round_trip_and_the_trace_tells_it() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    // Killed when the test ends, passed or failed.
    let mut child = ChildGuard::new(
        Command::new(binary())
            .env("WHATSNAP_ADMIN_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
            .args([
                "serve",
                "--demo",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (lines, received) = std::sync::mpsc::channel();
    let stdout = child.child_mut().stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut story = Vec::new();
    let mut grpc = None;
    while !story
        .last()
        .is_some_and(|l: &String| l.starts_with("demo: done"))
    {
        let line = received
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!("the demo stopped short; it printed:\n{}", story.join("\n"))
            });
        if let Some(addr) = line.strip_prefix("gRPC listening on ") {
            grpc = Some(addr.trim().to_owned());
        }
        story.push(line);
    }
    let story = story.join("\n");
    for step in [
        "texted +15005550006",
        "tagged [\"whatsnap-account-demo-line\"]",
        "Twilio sent it from +15005550006",
        "GHL was told the reply was delivered",
        "scan this with WhatsApp",
        "connected as +5511912345678",
        "tagged [\"whatsnap-account-demo-whatsapp\"]",
        "it left through WhatsApp",
        "Bia read it, and GHL was told so",
    ] {
        assert!(story.contains(step), "{step:?} missing from:\n{story}");
    }
    // The demo prints its last line once GHL has answered; the store records that answer right
    // after, so the trace is read until it tells it.
    let server = format!("http://{}", grpc.unwrap());
    let trace_args = [
        "trace",
        "+14155550123",
        "--location",
        "demoLocation",
        "--server",
        &server,
    ];
    let trace = run_until(&trace_args, "GhlStatusReported", Duration::from_secs(60));
    for event in [
        "ContactCreated",
        "OutboundMessageRouted",
        "OutboundMessageSent",
        "GhlStatusReported",
    ] {
        assert!(
            trace.contains(event),
            "{event} missing from the trace:\n{trace}"
        );
    }
    // The demo leaves nothing in the directory it ran in.
    assert!(
        child
            .signal(nix::sys::signal::Signal::SIGTERM)
            .unwrap()
            .success()
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
