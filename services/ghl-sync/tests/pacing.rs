//! GHL's pacing carried from one process's GHL worker to the next: a handover in the middle of
//! GHL's window goes on with that window, so GHL refuses nothing (a worker starting afresh
//! would send a whole window's requests on top of its predecessor's).

use std::time::Duration;

use whatsnap_events::Event;
use whatsnap_testkit::{FakeGhl, eventually, eventually_within};

mod common;

use common::{LOCATION, Rig, inbound};

#[tokio::test]
async fn the_worker_that_takes_over_goes_on_with_the_window_and_ghl_refuses_nothing() {
    let rig = Rig::start(None).await;
    // Connected by this process, whose worker goes first: its pacing counts the connection's
    // requests too.
    rig.connect(FakeGhl::COMPANY_ID).await;
    rig.contact_messages().await;
    let texts = 150;
    for n in 0..texts {
        let (stream, event) = inbound(&format!("SMpace{n:04}"), &format!("text {n}"));
        rig.append(stream, vec![Event::from(event)]).await;
    }

    // The first process's worker uses up GHL's window, then waits for it; it is stopped there.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn(rig.sync.worker().unwrap().run(async {
        let _ = stopped.await;
    }));
    eventually("a window's worth of requests at GHL", async || {
        (rig.ghl.requests().len() >= 100).then_some(())
    })
    .await;
    stop.send(()).unwrap();
    first.await.unwrap();
    let handed_over = rig.ghl.requests().len();

    // Another process's worker takes the work over and finishes it,
    let _next = tokio::spawn(rig.worker_of_another_process().run(std::future::pending()));
    let ghl_contact_id = eventually("the contact in GHL", async || {
        rig.ghl
            .contact_by_phone(LOCATION, common::PHONE)
            .map(|c| c.id)
    })
    .await;
    let posted = eventually_within(Duration::from_secs(60), "every text in GHL", async || {
        let posted: Vec<String> = rig
            .ghl
            .messages(&ghl_contact_id)
            .into_iter()
            .filter_map(|m| m.message)
            .collect();
        (posted.len() >= texts).then_some(posted)
    })
    .await;

    // without a request GHL refused: it waited for the window the first one had used.
    assert!(
        handed_over < 100 + texts,
        "the handover came before the work was done"
    );
    assert_eq!(rig.ghl.rate_limited_count(LOCATION), 0, "GHL answered 429");
    let expected: Vec<String> = (0..texts).map(|n| format!("text {n}")).collect();
    assert_eq!(posted, expected, "each text once, in order");

    // The first process, no longer doing the GHL work, tells the day's allowance as the worker
    // doing it saved it: every text was one request of it.
    eventually(
        "the allowance as the working replica saved it",
        async || {
            let left = rig.status().await.daily_requests_left;
            (left <= 200_000 - texts as u64).then_some(())
        },
    )
    .await;
}
