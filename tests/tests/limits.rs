//! The bounds a caller meets on a real `whatsnap serve`: a location over its request quota is
//! told to come back (and no other location is), a page of the log holds at most the page size,
//! the log follows only so many tails at once, and a simulation looks back only so far.

use std::path::Path;

use tonic::Code;
use whatsnap_proto::assignment::v1 as assignment;
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::Channel;
use whatsnap_testkit::{Whatsnap, eventually};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

async fn serve_with_small_limits(data: &Path) -> (Whatsnap, Channel) {
    let whatsnap = Whatsnap::serve(
        binary(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            // Three calls per location, and next to no refill while the test runs.
            "--location-burst",
            "3",
            "--location-quota",
            "0.001",
            "--max-page",
            "2",
            "--max-tails",
            "1",
            "--max-simulate-days",
            "1",
        ]
        .map(str::to_owned),
        "limits",
    )
    .unwrap();
    let channel = whatsnap.channel().await;
    (whatsnap, channel)
}

fn list(location: &str) -> session::ListAccountsRequest {
    session::ListAccountsRequest {
        location_id: location.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_over_its_quota_is_told_when_to_come_back_and_others_are_not_held() {
    let data = tempfile::tempdir().unwrap();
    let (_whatsnap, channel) = serve_with_small_limits(data.path()).await;
    let mut sessions = session::session_service_client::SessionServiceClient::new(channel);
    for _ in 0..3 {
        sessions.list_accounts(list("busy-location")).await.unwrap();
    }
    let refused = sessions
        .list_accounts(list("busy-location"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("busy-location is over its request quota"),
        "{}",
        refused.message()
    );
    let retry_after: u64 = refused
        .metadata()
        .get("retry-after")
        .expect("a retry hint")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    // Another location has its own quota.
    sessions
        .list_accounts(list("quiet-location"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_tails_and_simulations_are_bounded() {
    let data = tempfile::tempdir().unwrap();
    let (_whatsnap, channel) = serve_with_small_limits(data.path()).await;
    let mut sessions = session::session_service_client::SessionServiceClient::new(channel.clone());
    let mut log = events::events_service_client::EventsServiceClient::new(channel.clone());

    // An account with three events: a page of ten holds two.
    let account = sessions
        .add_account(session::AddAccountRequest {
            location_id: "paged-location".into(),
            kind: session::AccountKind::Whatsapp as i32,
            name: "Front".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for interval_ms in [1000, 2000] {
        sessions
            .set_pacing(session::SetPacingRequest {
                location_id: "paged-location".into(),
                account_id: account.account_id.clone(),
                interval_ms,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let stream_id = format!("paged-location.account.{}", account.account_id);
    let page = |from_version| events::ReadStreamRequest {
        stream_id: stream_id.clone(),
        from_version,
        limit: 10,
    };
    let first = log.read_stream(page(1)).await.unwrap().into_inner().events;
    assert_eq!(first.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    let next = log.read_stream(page(3)).await.unwrap().into_inner().events;
    assert_eq!(next.iter().map(|e| e.version).collect::<Vec<_>>(), [3]);

    // One tail at a time: a second is refused until the first goes.
    let following = log
        .tail(events::TailRequest::default())
        .await
        .unwrap()
        .into_inner();
    let refused = log.tail(events::TailRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    drop(following);
    eventually(
        "a tail is allowed again once the first has gone",
        async || log.tail(events::TailRequest::default()).await.ok(),
    )
    .await;

    // A simulation looks back at most one day.
    let mut assignments =
        assignment::assignment_service_client::AssignmentServiceClient::new(channel);
    let simulate = |since_seconds| assignment::SimulateRequest {
        location_id: "simulated-location".into(),
        rules_json: r#"{"rules": []}"#.into(),
        since_seconds,
        ..Default::default()
    };
    let refused = assignments
        .simulate(simulate(2 * 86_400))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("at most 1 days"),
        "{}",
        refused.message()
    );
    assignments.simulate(simulate(3600)).await.unwrap();
}
