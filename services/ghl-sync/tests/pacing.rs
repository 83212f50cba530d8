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

/// The GHL work split by location: each part takes up, saves and releases its own locations'
/// windows, so one part's worker stopping (and saving all it remembers) never overwrites the
/// windows of a location another part's worker is sending for now.
#[tokio::test]
async fn each_part_of_the_ghl_work_carries_its_own_locations_windows_only() {
    use whatsnap_events::LocationId;
    use whatsnap_eventstore::projection::Part;
    use whatsnap_ghl::ratelimit::{Limits, RateLimiter};
    use whatsnap_ghl_sync::pacing;

    sqlx::any::install_default_drivers();
    let file = whatsnap_testkit::TestSqlite::new().unwrap();
    let db = sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(&format!("sqlite://{}?mode=rwc", file.config.path.display()))
        .await
        .unwrap();
    let parts: Vec<Part> = Part::all(2).collect();
    // Two locations, one in each part.
    let locations: Vec<LocationId> = (0..100)
        .map(|n| LocationId::parse(format!("loc{n}")).unwrap())
        .collect();
    let of = |part: Part| {
        locations
            .iter()
            .find(|l| part.holds(l.as_str()))
            .unwrap()
            .clone()
    };
    let (first, second) = (of(parts[0]), of(parts[1]));

    // One process sends for both locations (it ran both parts), and saves part 1's windows.
    let earlier = RateLimiter::new(Limits::default());
    for _ in 0..30 {
        earlier.acquire(&first).await.unwrap();
        earlier.acquire(&second).await.unwrap();
    }
    pacing::take_up(&db, &earlier, parts[0]).await.unwrap();
    pacing::release(&db, &earlier, parts[0]).await.unwrap();
    let saved = |location: &LocationId| {
        let (db, location) = (db.clone(), location.clone());
        async move {
            pacing::daily_left(&db, &location, Limits::default())
                .await
                .map(|(left, _)| left)
        }
    };
    assert_eq!(saved(&first).await, Some(200_000 - 30));
    assert_eq!(
        saved(&second).await,
        None,
        "part 2's window saved by part 1"
    );

    // Part 2 runs in another process, which has sent 50 for its location since.
    let other = RateLimiter::new(Limits::default());
    pacing::take_up(&db, &other, parts[1]).await.unwrap();
    for _ in 0..50 {
        other.acquire(&second).await.unwrap();
    }
    pacing::save(&db, &other, parts[1], false).await.unwrap();
    assert_eq!(saved(&second).await, Some(200_000 - 50));
    // The first process stops its part 1 again, remembering part 2's location as it was: the
    // other process's window stays.
    pacing::take_up(&db, &earlier, parts[0]).await.unwrap();
    pacing::release(&db, &earlier, parts[0]).await.unwrap();
    assert_eq!(saved(&second).await, Some(200_000 - 50));
    assert_eq!(saved(&first).await, Some(200_000 - 30));

    // A process taking part 2 over goes on with the other's window, not part 1's.
    let next = RateLimiter::new(Limits::default());
    assert_eq!(pacing::take_up(&db, &next, parts[1]).await.unwrap(), 1);
    pacing::release(&db, &next, parts[1]).await.unwrap();
    assert_eq!(saved(&second).await, Some(200_000 - 50));
}
