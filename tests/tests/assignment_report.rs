//! How assignment performs, as an operator reads it: given a location whose history is
//! scripted with known times (a contact writes at t and Ana replies from GHL at t+5 min), when
//! the real binary serves that history, then `whatsnap assignment report --json` and the
//! gateway's `GET /metrics` tell the same figures: first-response times per user and per
//! account, open contacts per user, reassignments by cause and unassigned contacts by reason.

use std::path::Path;
use std::process::Command;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use uuid::Uuid;
use whatsnap_events::{
    AggregateKind, AssignmentSkipped, ContactAssigned, Event, EventMetadata,
    InboundMessageReceived, LocationId, NewEvent, OutboundMessageRequested, PhoneNumber, StreamId,
    contact_id_for,
};
use whatsnap_eventstore::sqlite::{SqliteConfig, SqliteEventStore};
use whatsnap_eventstore::{EventStore, ExpectedVersion};
use whatsnap_testkit::{Whatsnap, eventually, http_request};

const LOCATION: &str = "locReportE2e";
const ACCOUNT: Uuid = Uuid::from_u128(0x5a1e5);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

/// A location's history written straight into the embedded store, each event at its time.
struct Script {
    store: SqliteEventStore,
    location: LocationId,
    start: DateTime<Utc>,
}

impl Script {
    fn contact(&self, phone: &str) -> Uuid {
        contact_id_for(&self.location, &PhoneNumber::parse(phone).unwrap())
    }

    /// Appends `event` to `stream` as if it happened `minutes` after the start.
    async fn at(&self, minutes: i64, kind: AggregateKind, subject: Uuid, event: impl Into<Event>) {
        let mut new = NewEvent::new(&event.into(), EventMetadata::new_correlation());
        new.occurred_at = self.start + Duration::minutes(minutes);
        let stream = StreamId::for_uuid(self.location.clone(), kind, subject);
        self.store
            .append(&stream, ExpectedVersion::Any, vec![new])
            .await
            .unwrap();
    }

    async fn inbound(&self, minutes: i64, phone: &str) {
        let event = InboundMessageReceived {
            message_id: Uuid::now_v7(),
            account_id: ACCOUNT,
            provider_message_id: format!("SM{}{minutes}", &phone[1..]),
            from: phone.into(),
            to: None,
            body: "hello".into(),
            sender_name: None,
            received_at: self.start + Duration::minutes(minutes),
            attachments: Vec::new(),
            from_me: false,
            sender_lid: None,
        };
        self.at(minutes, AggregateKind::Message, event.message_id, event)
            .await;
    }

    async fn reply(&self, minutes: i64, phone: &str, user: &str) {
        let contact_id = self.contact(phone);
        let event = OutboundMessageRequested {
            message_id: Uuid::now_v7(),
            contact_id,
            ghl_message_id: None,
            ghl_user_id: Some(user.into()),
            body: "hi".into(),
            attachments: Vec::new(),
            to: None,
            ghl_contact_id: None,
        };
        self.at(minutes, AggregateKind::Message, event.message_id, event)
            .await;
    }

    async fn assign(&self, minutes: i64, phone: &str, user: &str, trigger: &str) {
        let contact_id = self.contact(phone);
        let event = ContactAssigned {
            contact_id,
            account_id: Some(ACCOUNT),
            user_id: user.into(),
            rule: "round_robin#1".into(),
            reason: "scripted".into(),
            candidates: Vec::new(),
            trigger: Some(trigger.into()),
        };
        self.at(minutes, AggregateKind::Assignment, contact_id, event)
            .await;
    }
}

/// Runs `whatsnap <args> --server <server>` and returns its standard output.
fn cli(server: &Whatsnap, args: &[&str]) -> String {
    let output = Command::new(binary())
        .env("WHATSNAP_TOKEN", whatsnap_testkit::ADMIN_TOKEN)
        .args(args)
        .args(["--server", &server.grpc_url()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_and_the_metrics_tell_the_figures_of_a_scripted_history() {
    let data = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(&SqliteConfig::new(data.path().join("whatsnap.db")))
        .await
        .unwrap();
    // An hour ago: every figure falls inside `--since 7d`; `--since 30m` sees only the
    // unassigned contact of t+40.
    let script = Script {
        store,
        location: LocationId::parse(LOCATION).unwrap(),
        start: Utc::now() - Duration::hours(1),
    };
    // Ana's contact writes at t and again at t+1; she replies at t+5 min: 300 s.
    script.inbound(0, "+14155550301").await;
    script
        .assign(0, "+14155550301", "uAna", "new_contact")
        .await;
    script.inbound(1, "+14155550301").await;
    script.reply(5, "+14155550301", "uAna").await;
    // Ben's contact writes at t+10 and he replies at t+12: 120 s.
    script.inbound(10, "+14155550302").await;
    script
        .assign(10, "+14155550302", "uBen", "new_contact")
        .await;
    script.reply(12, "+14155550302", "uBen").await;
    // Ben's contact writes again and he stays silent: it goes to Ana at t+20.
    script.inbound(14, "+14155550302").await;
    script
        .assign(20, "+14155550302", "uAna", "owner_silent")
        .await;
    // Nobody can take a third contact, at t+40.
    script.inbound(40, "+14155550303").await;
    let skipped = AssignmentSkipped {
        contact_id: script.contact("+14155550303"),
        account_id: Some(ACCOUNT),
        reason: "no rule yielded an available user".into(),
        candidates: Vec::new(),
        trigger: Some("new_contact".into()),
    };
    let third = script.contact("+14155550303");
    script
        .at(40, AggregateKind::Assignment, third, skipped)
        .await;
    let start = script.start;
    drop(script);

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
        "assignment-report",
    )
    .unwrap();

    let report: serde_json::Value = serde_json::from_str(&cli(
        &whatsnap,
        &[
            "assignment",
            "report",
            "--location",
            LOCATION,
            "--since",
            "7d",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(
        report,
        json!({
            "first_response_by_user": [
                { "id": "uAna", "first_responses": 1, "average_first_response_seconds": 300 },
                { "id": "uBen", "first_responses": 1, "average_first_response_seconds": 120 },
            ],
            "first_response_by_account": [
                { "id": ACCOUNT.to_string(), "first_responses": 2,
                  "average_first_response_seconds": 210 },
            ],
            "open_contacts_by_user": { "uAna": 2 },
            "reassignments_by_cause": { "owner did not reply in time": 1 },
            "unassigned_by_reason": { "no rule yielded an available user": 1 },
        })
    );

    // The last 30 minutes saw no first response and no reassignment; ownership and the
    // unassigned contact are as of now.
    let recent: serde_json::Value = serde_json::from_str(&cli(
        &whatsnap,
        &[
            "assignment",
            "report",
            "--location",
            LOCATION,
            "--since",
            "30m",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(recent["first_response_by_user"], json!([]));
    assert_eq!(recent["reassignments_by_cause"], json!({}));
    assert_eq!(recent["open_contacts_by_user"], json!({ "uAna": 2 }));
    assert_eq!(
        recent["unassigned_by_reason"],
        json!({ "no rule yielded an available user": 1 })
    );

    // Prometheus scrapes the same figures over the whole history.
    let http = whatsnap.http.unwrap();
    let scrape = async || {
        let reply = http_request(
            http,
            "/metrics",
            &[(
                "authorization",
                &format!("Bearer {}", whatsnap_testkit::ADMIN_TOKEN),
            )],
            None,
        )
        .await
        .ok()?;
        (reply.status == 200).then_some(reply)
    };
    let scraped = eventually("the gateway serves /metrics", scrape).await;
    assert_eq!(
        scraped.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let samples: Vec<&str> = scraped
        .body
        .lines()
        .filter(|l| l.starts_with("whatsnap_assignment_"))
        .filter(|l| l.contains(&format!("location=\"{LOCATION}\"")))
        .collect();
    let account = ACCOUNT;
    let location = LOCATION;
    assert_eq!(
        samples,
        [
            format!(
                r#"whatsnap_assignment_user_first_response_seconds_sum{{location="{location}",user="uAna"}} 300"#
            ),
            format!(
                r#"whatsnap_assignment_user_first_response_seconds_count{{location="{location}",user="uAna"}} 1"#
            ),
            format!(
                r#"whatsnap_assignment_user_first_response_seconds_sum{{location="{location}",user="uBen"}} 120"#
            ),
            format!(
                r#"whatsnap_assignment_user_first_response_seconds_count{{location="{location}",user="uBen"}} 1"#
            ),
            format!(
                r#"whatsnap_assignment_account_first_response_seconds_sum{{location="{location}",account="{account}"}} 420"#
            ),
            format!(
                r#"whatsnap_assignment_account_first_response_seconds_count{{location="{location}",account="{account}"}} 2"#
            ),
            format!(r#"whatsnap_assignment_open_contacts{{location="{location}",user="uAna"}} 2"#),
            format!(
                r#"whatsnap_assignment_reassignments_total{{location="{location}",cause="owner did not reply in time"}} 1"#
            ),
            format!(
                r#"whatsnap_assignment_unassigned_contacts{{location="{location}",reason="no rule yielded an available user"}} 1"#
            ),
        ]
    );
    // What happens after a scrape is counted at the next one, on top of what was counted.
    let script = Script {
        store: SqliteEventStore::open(&SqliteConfig::new(data.path().join("whatsnap.db")))
            .await
            .unwrap(),
        location: LocationId::parse(LOCATION).unwrap(),
        start,
    };
    script.inbound(50, "+14155550009").await;
    script.reply(53, "+14155550009", "uBen").await;
    let later = eventually("the next scrape counts Ben's second reply", async || {
        let reply = scrape().await?;
        let counted = format!(
            r#"whatsnap_assignment_user_first_response_seconds_count{{location="{location}",user="uBen"}} 2"#
        );
        reply.body.lines().any(|l| l == counted).then_some(reply)
    })
    .await;
    for sample in [
        format!(
            r#"whatsnap_assignment_user_first_response_seconds_sum{{location="{location}",user="uBen"}} 300"#
        ),
        format!(
            r#"whatsnap_assignment_account_first_response_seconds_sum{{location="{location}",account="{account}"}} 600"#
        ),
        format!(
            r#"whatsnap_assignment_account_first_response_seconds_count{{location="{location}",account="{account}"}} 3"#
        ),
        format!(r#"whatsnap_assignment_open_contacts{{location="{location}",user="uAna"}} 2"#),
    ] {
        assert!(
            later.body.lines().any(|l| l == sample),
            "{sample} in\n{}",
            later.body
        );
    }
    for (name, kind) in [
        ("whatsnap_assignment_user_first_response_seconds", "summary"),
        ("whatsnap_assignment_open_contacts", "gauge"),
        ("whatsnap_assignment_reassignments_total", "counter"),
        ("whatsnap_assignment_unassigned_contacts", "gauge"),
    ] {
        assert!(
            scraped
                .body
                .lines()
                .any(|l| l == format!("# TYPE {name} {kind}")),
            "{}",
            scraped.body
        );
    }
}
