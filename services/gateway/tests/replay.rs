//! The GHL webhook replay guard kept in the read database: a webhook handled by one gateway is
//! a duplicate at another (two pools, as two processes open them) and after a restart, on the
//! embedded SQLite file and on PostgreSQL; ids and abandoned claims expire.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::any::AnyPoolOptions;
use whatsnap_gateway::{CLAIM_LEASE, Clock, ReplayGuard, Verdict};
use whatsnap_rpc::ReadDb;
use whatsnap_testkit::TestPostgres;

const WINDOW: Duration = Duration::from_secs(300);

/// A clock the test moves by hand.
#[derive(Clone)]
struct TestClock(Arc<Mutex<DateTime<Utc>>>);

impl TestClock {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Utc::now())))
    }
    fn clock(&self) -> Clock {
        let now = self.0.clone();
        Arc::new(move || *now.lock().unwrap())
    }
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += chrono::Duration::from_std(by).unwrap();
    }
    fn stamp(&self) -> serde_json::Value {
        json!(self.0.lock().unwrap().timestamp_millis())
    }
}

async fn pool(url: &str) -> ReadDb {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    AnyPoolOptions::new()
        .max_connections(2)
        // As the embedded backend does: writers of the one file take turns.
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    sqlx::Executor::execute(conn, "PRAGMA busy_timeout = 30000").await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .unwrap()
}

/// Two pools on one SQLite file: two gateway processes of an embedded deployment.
async fn sqlite_pair() -> (tempfile::TempDir, String, ReadDb, ReadDb) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("read.db").display());
    let (one, two) = (pool(&url).await, pool(&url).await);
    (dir, url, one, two)
}

async fn guard(db: &ReadDb, clock: &TestClock) -> ReplayGuard {
    ReplayGuard::open(db.clone(), WINDOW)
        .await
        .unwrap()
        .with_clock(clock.clock())
}

fn claimed(verdict: Verdict) -> whatsnap_gateway::Claim {
    match verdict {
        Verdict::Fresh(Some(claim)) => claim,
        other => panic!("not fresh with a claim: {other:?}"),
    }
}

/// GHL delivers the same webhook to two replicas at once and again later: it is acted on once.
async fn delivered_twice_acted_on_once(one: &ReadDb, two: &ReadDb, restarted: &ReadDb) {
    let clock = TestClock::new();
    let (a, b) = (guard(one, &clock).await, guard(two, &clock).await);
    let id = uuid::Uuid::new_v4().to_string();
    let stamp = clock.stamp();
    let (first, second) = tokio::join!(
        a.check(Some(&id), Some(&stamp)),
        b.check(Some(&id), Some(&stamp))
    );
    let claim = match (first, second) {
        (Verdict::Fresh(Some(claim)), Verdict::InFlight)
        | (Verdict::InFlight, Verdict::Fresh(Some(claim))) => claim,
        other => panic!("one replica acts, the other is told to come back: {other:?}"),
    };
    claim.handled().await;
    assert!(matches!(
        b.check(Some(&id), Some(&stamp)).await,
        Verdict::Duplicate
    ));
    assert!(matches!(
        a.check(Some(&id), Some(&stamp)).await,
        Verdict::Duplicate
    ));
    // A gateway started afresh on the same database knows it too.
    let c = guard(restarted, &clock).await;
    assert!(matches!(
        c.check(Some(&id), Some(&stamp)).await,
        Verdict::Duplicate
    ));
}

#[tokio::test]
async fn a_webhook_handled_by_one_embedded_gateway_is_a_duplicate_at_another_and_after_a_restart() {
    let (_dir, url, one, two) = sqlite_pair().await;
    let restarted = pool(&url).await;
    delivered_twice_acted_on_once(&one, &two, &restarted).await;
}

#[tokio::test]
async fn a_webhook_handled_by_one_distributed_gateway_is_a_duplicate_at_another_and_after_a_restart()
 {
    let pg = TestPostgres::new().await.unwrap();
    let url = pg.url_with_schema();
    let (one, two, restarted) = (pool(&url).await, pool(&url).await, pool(&url).await);
    delivered_twice_acted_on_once(&one, &two, &restarted).await;
}

#[tokio::test]
async fn a_webhook_without_a_readable_timestamp_or_outside_the_window_is_refused() {
    let (_dir, _url, one, _) = sqlite_pair().await;
    let clock = TestClock::new();
    let guard = guard(&one, &clock).await;
    assert!(matches!(
        guard.check(Some("w1"), None).await,
        Verdict::Unstamped(_)
    ));
    for garbled in [json!("yesterday"), json!(true), json!({"at": 1})] {
        assert!(matches!(
            guard.check(Some("w1"), Some(&garbled)).await,
            Verdict::Unstamped(_)
        ));
    }
    let old = json!((Utc::now() - chrono::Duration::minutes(10)).to_rfc3339());
    assert!(matches!(
        guard.check(Some("w1"), Some(&old)).await,
        Verdict::Stale(_)
    ));
    // None of them took the id: the genuine webhook goes through.
    let stamp = clock.stamp();
    claimed(guard.check(Some("w1"), Some(&stamp)).await)
        .handled()
        .await;
    assert!(matches!(
        guard.check(None, Some(&stamp)).await,
        Verdict::Fresh(None)
    ));
}

#[tokio::test]
async fn a_refused_webhook_is_not_seen_and_its_retry_goes_through() {
    let (_dir, _url, one, two) = sqlite_pair().await;
    let clock = TestClock::new();
    let (a, b) = (guard(&one, &clock).await, guard(&two, &clock).await);
    let stamp = clock.stamp();
    claimed(a.check(Some("w1"), Some(&stamp)).await)
        .release()
        .await;
    claimed(b.check(Some("w1"), Some(&stamp)).await)
        .handled()
        .await;
    assert!(matches!(
        a.check(Some("w1"), Some(&stamp)).await,
        Verdict::Duplicate
    ));
}

#[tokio::test]
async fn a_claim_left_by_a_gateway_that_died_lapses_and_seen_ids_expire() {
    let (_dir, _url, one, two) = sqlite_pair().await;
    let clock = TestClock::new();
    let (a, b) = (guard(&one, &clock).await, guard(&two, &clock).await);
    // The first gateway dies mid-request: its claim is neither settled nor released.
    std::mem::forget(claimed(a.check(Some("w1"), Some(&clock.stamp())).await));
    assert!(matches!(
        b.check(Some("w1"), Some(&clock.stamp())).await,
        Verdict::InFlight
    ));
    clock.advance(CLAIM_LEASE + Duration::from_secs(1));
    claimed(b.check(Some("w1"), Some(&clock.stamp())).await)
        .handled()
        .await;
    assert!(matches!(
        a.check(Some("w1"), Some(&clock.stamp())).await,
        Verdict::Duplicate
    ));
    // Past the window the id is forgotten (and its row deleted).
    clock.advance(WINDOW + Duration::from_secs(1));
    claimed(a.check(Some("w2"), Some(&clock.stamp())).await)
        .handled()
        .await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ghl_webhooks_seen")
        .fetch_one(&one)
        .await
        .unwrap();
    assert_eq!(left, 1, "only w2 is remembered");
    assert!(matches!(
        b.check(Some("w1"), Some(&clock.stamp())).await,
        Verdict::Fresh(Some(_))
    ));
}
