//! The figures of one machine, in one run: the raw event store (appends and reads per second),
//! then whatsnap on that same store — signed Twilio webhooks in, GHL posts out — and each
//! pipeline figure as a share of the raw store's; GHL's allowance used while one location's
//! backlog drains; a start with an unread backlog, a start with the log projected, and a
//! rebuild.
//!
//! `cargo bench -p whatsnap-tests --bench pipeline` runs the embedded backend; with
//! `WHATSNAP_TEST_NATS_URL` and `WHATSNAP_TEST_DATABASE_URL` set (as `.ci/run` sets them) the
//! distributed one too. `WHATSNAP_BENCH_MESSAGES` (default 2000), `WHATSNAP_BENCH_LOCATIONS`
//! (default 50: GHL allows each 10 requests/s, so the fake GHL's limits do not cap the run),
//! `WHATSNAP_BENCH_CONCURRENCY` (default 32 webhooks in flight) and `WHATSNAP_BENCH_BACKLOG`
//! (default 100000 events for the start-up figures) change the load.
//! `WHATSNAP_BENCH_ONLY=embedded` or `=distributed` runs one backend;
//! `WHATSNAP_BENCH_REBUILDS` (default 1) rebuilds that many times and keeps the median;
//! `WHATSNAP_BENCH_CATCH_UP_AFTER` sets the distributed processes' `--catch-up-after` (a number
//! above the backlog compares the shared pages with a consumer per read model), and
//! `WHATSNAP_BENCH_TAIL_EVENTS` sets `--tail-events` on both backends (0 compares the events
//! kept in memory for the subscriptions with each reading the log on its own).

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use whatsnap_events::{ApiTokenRevoked, Event, EventMetadata, NewEvent, StreamId};
use whatsnap_eventstore::{EventStore, ExpectedVersion};
use whatsnap_testkit::{TestBackend, Whatsnap, http_get};
use whatsnap_tests::twilio_rig::{TwilioRig, text};

const WRITERS: usize = 8;

/// Texts sent at once to one location for the figure of GHL's allowance used with a backlog.
const BACKLOG_TEXTS: usize = 400;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

#[tokio::main]
async fn main() {
    let messages = setting("WHATSNAP_BENCH_MESSAGES", 2000);
    let locations = setting("WHATSNAP_BENCH_LOCATIONS", 50);
    let concurrency = setting("WHATSNAP_BENCH_CONCURRENCY", 32);
    let backlog = setting("WHATSNAP_BENCH_BACKLOG", 100_000);
    println!(
        "whatsnap pipeline benchmark: {messages} messages over {locations} locations, \
         {concurrency} webhooks in flight, {backlog} events of backlog; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let distributed = std::env::var_os(whatsnap_testkit::NATS_URL_VAR).is_some()
        && std::env::var_os(whatsnap_testkit::DATABASE_URL_VAR).is_some();
    let only = std::env::var("WHATSNAP_BENCH_ONLY").unwrap_or_default();
    let mut rows = Vec::new();
    if only != "distributed" {
        rows.push(run(false, messages, locations, concurrency, backlog).await);
    }
    if !distributed {
        println!("(distributed backend skipped: no WHATSNAP_TEST_NATS_URL/DATABASE_URL)");
    } else if only != "embedded" {
        rows.push(run(true, messages, locations, concurrency, backlog).await);
    }
    println!();
    println!(
        "| measured | {} |",
        rows.iter()
            .map(|r| r.backend)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(rows.len()));
    let figures: [(&str, Show); 16] = [
        ("raw appends/s, 8 writers", |f| {
            format!("{:.0}", f.raw_appends)
        }),
        ("raw reads/s", |f| format!("{:.0}", f.raw_reads)),
        ("webhooks accepted/s", |f| {
            format!(
                "{:.0} ({:.1}% of raw appends)",
                f.webhooks,
                100.0 * f.webhooks / f.raw_appends
            )
        }),
        ("webhook latency p50 / p99", |f| {
            format!(
                "{:.1} / {:.1} ms",
                f.p50.as_secs_f64() * 1e3,
                f.p99.as_secs_f64() * 1e3
            )
        }),
        ("messages/s, webhook → GHL post", |f| {
            format!(
                "{:.1} ({:.2}% of raw appends)",
                f.end_to_end,
                100.0 * f.end_to_end / f.raw_appends
            )
        }),
        ("GHL requests/s (allowance: 10/s per location)", |f| {
            format!(
                "{:.0} ({:.0}% of {} locations' allowance)",
                f.ghl_rate,
                f.ghl_share * 100.0,
                f.locations
            )
        }),
        ("GHL 429 responses", |f| format!("{}", f.ghl_429)),
        ("GHL allowance used by one location's backlog, 429s", |f| {
            format!("{:.0}%, {}", f.backlog_share * 100.0, f.backlog_429)
        }),
        ("events in the log after the run", |f| {
            format!("{}", f.log_events)
        }),
        ("/readyz after a start with the backlog", |f| {
            format!(
                "{} ms ({} events in the log)",
                f.ready_after.as_millis(),
                f.backlog_head
            )
        }),
        ("a new customer's text in GHL after that start", |f| {
            format!("{:.1} s", f.first_message_after.as_secs_f64())
        }),
        ("backlog projected after that start", |f| {
            format!("{:.1} s", f.caught_up_after.as_secs_f64())
        }),
        (
            "a new customer decided after a start with that log projected",
            |f| format!("{:.2} s", f.warm_decision_after.as_secs_f64()),
        ),
        ("… and its text in GHL", |f| {
            format!("{:.2} s", f.warm_message_after.as_secs_f64())
        }),
        ("rebuild of every read model", |f| {
            format!(
                "{:.0} events/s ({:.1}% of raw reads)",
                f.rebuild,
                100.0 * f.rebuild / f.raw_reads
            )
        }),
        ("RSS after the run", |f| format!("{} MiB", f.rss_kib / 1024)),
    ];
    for (name, show) in figures {
        println!(
            "| {name} | {} |",
            rows.iter().map(show).collect::<Vec<_>>().join(" | ")
        );
    }
}

/// How a row of the table shows one backend's figure.
type Show = fn(&Figures) -> String;

struct Figures {
    backend: &'static str,
    locations: usize,
    raw_appends: f64,
    raw_reads: f64,
    webhooks: f64,
    p50: Duration,
    p99: Duration,
    end_to_end: f64,
    ghl_rate: f64,
    ghl_share: f64,
    ghl_429: u64,
    backlog_share: f64,
    backlog_429: usize,
    log_events: u64,
    ready_after: Duration,
    first_message_after: Duration,
    caught_up_after: Duration,
    backlog_head: u64,
    warm_decision_after: Duration,
    warm_message_after: Duration,
    rebuild: f64,
    rss_kib: u64,
}

async fn run(
    distributed: bool,
    messages: usize,
    locations: usize,
    concurrency: usize,
    backlog: usize,
) -> Figures {
    let backend_name = if distributed {
        "distributed (JetStream + PostgreSQL)"
    } else {
        "embedded (SQLite)"
    };
    println!("\n== {backend_name}");
    let (raw_appends, raw_reads) = raw_bus(distributed).await;
    println!("raw: {raw_appends:.0} appends/s with {WRITERS} writers, {raw_reads:.0} reads/s");

    let mut backend = TestBackend::new(distributed).await;
    let tail: Option<usize> = std::env::var("WHATSNAP_BENCH_TAIL_EVENTS")
        .ok()
        .and_then(|t| t.parse().ok());
    if let TestBackend::Distributed(nats, _) = &mut backend {
        let after = std::env::var("WHATSNAP_BENCH_CATCH_UP_AFTER").ok();
        if let Some(after) = after.and_then(|a| a.parse().ok()) {
            nats.config.catch_up.after = after;
        }
        if let Some(tail) = tail {
            nats.config.catch_up.tail = tail;
        }
        println!(
            "catching up on shared pages after {}; the head's last {} events kept (0: a consumer each)",
            nats.config.catch_up.after, nats.config.catch_up.tail
        );
    }
    let rig = TwilioRig::start().await;
    let mut args = rig.serve_args(&backend);
    if let (TestBackend::Embedded(_), Some(tail)) = (&backend, tail) {
        args.extend(["--tail-events".to_owned(), tail.to_string()]);
    }
    let mut whatsnap = Whatsnap::serve(binary(), &args, "bench").unwrap();
    let channel = whatsnap.channel().await;
    let mut accounts = Vec::new();
    for n in 0..locations {
        let location = format!("locBench{n:03}");
        let account = rig.connect(channel.clone(), &location).await;
        accounts.push((location, account));
    }
    // A location of its own for the backlog figure, idle until then.
    let backlog_location = "locBenchBacklog".to_owned();
    let backlog_account = (
        backlog_location.clone(),
        rig.connect(channel.clone(), &backlog_location).await,
    );
    let http = whatsnap.http.unwrap();
    let head_before = head(&whatsnap).await;

    // Webhooks: `concurrency` senders, each text from one of ten customers of a location.
    let accounts = Arc::new(accounts);
    let started = Instant::now();
    let mut latencies = send_texts(http, accounts.clone(), messages, concurrency, "SM").await;
    let accepted = started.elapsed();
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let webhooks = messages as f64 / accepted.as_secs_f64();
    println!("{messages} webhooks accepted in {accepted:?}");

    let in_ghl = || -> usize { accounts.iter().map(|(l, _)| rig.messages_in(l)).sum() };
    let deadline = Instant::now() + Duration::from_secs(1800);
    while in_ghl() < messages {
        assert!(
            Instant::now() < deadline,
            "{} of {messages} in GHL after 30 min",
            in_ghl()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end_to_end_time = started.elapsed();
    let end_to_end = messages as f64 / end_to_end_time.as_secs_f64();
    println!("{messages} messages in GHL {end_to_end_time:?} after the first webhook");
    let metrics = scrape(http).await;
    let ghl_requests = metrics.sum("whatsnap_ghl_requests_total{");
    let ghl_429 = metrics.sum_where("whatsnap_ghl_requests_total{", "status=\"429\"") as u64;
    let ghl_rate = ghl_requests / end_to_end_time.as_secs_f64();

    // A backlog in one location: far more texts at once than GHL takes from it. How much of
    // GHL's allowance (100 requests in any 10 s) does whatsnap use while it drains, and does
    // GHL refuse any?
    let drained = Arc::new(vec![backlog_account]);
    let (location, _) = &drained[0];
    let since = std::time::SystemTime::now();
    send_texts(
        http,
        drained.clone(),
        BACKLOG_TEXTS,
        concurrency,
        "SMbacklog",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while rig.messages_in(location) < BACKLOG_TEXTS {
        assert!(
            Instant::now() < deadline,
            "the backlog did not drain in 10 min"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sent: Vec<std::time::SystemTime> = rig
        .ghl
        .requests()
        .into_iter()
        .filter(|r| r.location.as_deref() == Some(location.as_str()) && r.at >= since)
        .map(|r| r.at)
        .collect();
    sent.sort();
    let backlog_429 = rig.ghl.rate_limited_count(location);
    // GHL lets 100 requests through in any 10 s: with work always queued, the 1st, 101st, 201st
    // and 301st requests go 10 s apart at best. How close the drain came to that, over the
    // first three windows (the backlog needs more than 300 requests, so work stays queued):
    let cycles: Vec<f64> = [0, 100, 200, 300]
        .windows(2)
        .map(|w| {
            sent[w[1]]
                .duration_since(sent[w[0]])
                .unwrap_or_default()
                .as_secs_f64()
        })
        .collect();
    let backlog_share = 30.0 / cycles.iter().sum::<f64>();
    println!(
        "a backlog of {BACKLOG_TEXTS} texts in one location: {} GHL requests; every 100 of them {cycles:.2?} s apart ({:.0}% of GHL's allowance); {backlog_429} refused with 429",
        sent.len(),
        backlog_share * 100.0
    );
    let rss_kib = rss_kib(whatsnap.pid().unwrap());
    let log_events = head(&whatsnap).await;
    println!("{} events appended by the run", log_events - head_before);
    whatsnap.terminate().unwrap();

    // A backlog nobody has read, then a start: when does /readyz say it can take traffic?
    append_backlog(&backend, backlog).await;
    let restarted = Instant::now();
    let whatsnap = Whatsnap::serve(binary(), &args, "bench-restart").unwrap();
    let http = whatsnap.http.unwrap();
    loop {
        if let Ok((200, _)) = http_get(http, "/readyz").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready_after = restarted.elapsed();
    let backlog_head = head(&whatsnap).await;
    // A customer new to the location writes at once: when is the message in GHL?
    let (location, account) = &accounts[0];
    let before = rig.messages_in(location);
    let path = format!("/webhooks/twilio/{location}/{account}/inbound");
    let (status, answer) = text(
        http,
        &path,
        "SMfirstafterstart",
        "+14155559999",
        "after the start",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    while rig.messages_in(location) == before {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_message_after = restarted.elapsed();
    let (caught_up_after, _) = caught_up(http, restarted).await;
    let mut whatsnap = whatsnap;
    whatsnap.terminate().unwrap();
    println!(
        "ready {ready_after:?} after a start with {backlog} events of backlog; a new message in GHL {first_message_after:?} after it; caught up {caught_up_after:?} after it"
    );

    // The same log, every read model caught up and the decider's snapshot taken: a start as an
    // upgrade or a rescheduled pod makes it. When is a new customer decided and in GHL?
    let store = store_of(&backend).await;
    let warm_head = store.head_position().await.unwrap();
    let restarted = Instant::now();
    let whatsnap = Whatsnap::serve(binary(), &args, "bench-warm").unwrap();
    let http = whatsnap.http.unwrap();
    let before = rig.messages_in(location);
    let phone = "+14155559998";
    let (status, answer) = text(
        http,
        &path,
        "SMfirstafterwarmstart",
        phone,
        "after a warm start",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    let contact = whatsnap_events::contact_id_for(
        &whatsnap_events::LocationId::parse(location).unwrap(),
        &whatsnap_events::PhoneNumber::parse(phone).unwrap(),
    );
    let (mut warm_message_after, mut warm_decision_after) = (None, None);
    while warm_message_after.is_none() || warm_decision_after.is_none() {
        if warm_message_after.is_none() && rig.messages_in(location) > before {
            warm_message_after = Some(restarted.elapsed());
        }
        if warm_decision_after.is_none() && decided(store.as_ref(), warm_head, contact).await {
            warm_decision_after = Some(restarted.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (warm_message_after, warm_decision_after) =
        (warm_message_after.unwrap(), warm_decision_after.unwrap());
    let mut whatsnap = whatsnap;
    whatsnap.terminate().unwrap();
    drop(store);
    println!(
        "a start with {warm_head} events, all projected: a new customer decided {warm_decision_after:?} and in GHL {warm_message_after:?} after it"
    );

    // Every read model emptied, then replayed from the first event at the next start; as many
    // times as asked, the median kept.
    let mut rebuilds = Vec::new();
    for run in 1..=setting("WHATSNAP_BENCH_REBUILDS", 1).max(1) {
        let rebuilt_after = rebuild(&backend, &args, backlog_head).await;
        println!("  rebuild {run}: {rebuilt_after:?}");
        rebuilds.push(rebuilt_after);
    }
    rebuilds.sort();
    let rebuild = backlog_head as f64 / rebuilds[rebuilds.len() / 2].as_secs_f64();

    Figures {
        backend: backend_name,
        locations,
        raw_appends,
        raw_reads,
        webhooks,
        p50: percentile(0.50),
        p99: percentile(0.99),
        end_to_end,
        ghl_rate,
        ghl_share: ghl_rate / (locations as f64 * 10.0),
        ghl_429,
        backlog_share,
        backlog_429,
        log_events,
        ready_after,
        first_message_after,
        caught_up_after,
        backlog_head,
        warm_decision_after,
        warm_message_after,
        rebuild,
        rss_kib,
    }
}

/// `whatsnap rebuild all`, then a start: how long until every read model has applied the
/// `head` events of the log again.
async fn rebuild(backend: &TestBackend, args: &[String], head: u64) -> Duration {
    let mut rebuild_args = vec!["rebuild".to_owned(), "all".to_owned()];
    rebuild_args.extend(backend.args());
    let emptied = std::process::Command::new(binary())
        .args(&rebuild_args)
        .output()
        .unwrap();
    assert!(
        emptied.status.success(),
        "{}",
        String::from_utf8_lossy(&emptied.stderr)
    );
    let restarted = Instant::now();
    let mut whatsnap = Whatsnap::serve(binary(), args, "bench-rebuild").unwrap();
    let (rebuilt_after, each) = caught_up(whatsnap.http.unwrap(), restarted).await;
    // Stopped as an operator stops it: its leases let go, for the next start to take at once.
    whatsnap.terminate().unwrap();
    println!("every read model rebuilt from {head} events {rebuilt_after:?} after start");
    for (name, after) in each.iter().take(4) {
        println!("  {name} rebuilt {after:?} after start");
    }
    rebuilt_after
}

/// `count` signed Twilio texts, `concurrency` at a time, the nth from one of ten customers of
/// the nth location of `accounts`; each text's webhook latency.
async fn send_texts(
    http: SocketAddr,
    accounts: Arc<Vec<(String, String)>>,
    count: usize,
    concurrency: usize,
    sid_prefix: &'static str,
) -> Vec<Duration> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (accounts, next) = (accounts.clone(), next.clone());
        senders.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= count {
                    return latencies;
                }
                let (location, account) = &accounts[n % accounts.len()];
                let from = format!("+1415555{:04}", (n / accounts.len()) % 10);
                let sid = format!("{sid_prefix}{n:032}");
                let body = format!("benchmark text {n}");
                let path = format!("/webhooks/twilio/{location}/{account}/inbound");
                let sent = Instant::now();
                let (status, answer) = text(http, &path, &sid, &from, &body).await.unwrap();
                assert_eq!(status, 200, "{answer}");
                latencies.push(sent.elapsed());
            }
        });
    }
    let mut latencies = Vec::with_capacity(count);
    while let Some(done) = senders.join_next().await {
        latencies.extend(done.unwrap());
    }
    latencies
}

/// The raw store: 8 writers appending one event each per call for 3 s, then every event read
/// back in pages of 1000.
async fn raw_bus(distributed: bool) -> (f64, f64) {
    let (store, _keep): (Arc<dyn EventStore>, Box<dyn std::any::Any>) = match distributed {
        true => {
            let nats = whatsnap_testkit::TestNats::new().await.unwrap();
            (Arc::new(nats.store().await.unwrap()), Box::new(nats))
        }
        false => {
            let sqlite = whatsnap_testkit::TestSqlite::new().unwrap();
            (Arc::new(sqlite.store().await.unwrap()), Box::new(sqlite))
        }
    };
    let until = Instant::now() + Duration::from_secs(3);
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        writers.spawn(async move {
            let stream = token_stream(writer);
            let mut appended = 0u64;
            while Instant::now() < until {
                store
                    .append(&stream, ExpectedVersion::Any, vec![backlog_event()])
                    .await
                    .unwrap();
                appended += 1;
            }
            appended
        });
    }
    let mut appended = 0;
    while let Some(n) = writers.join_next().await {
        appended += n.unwrap();
    }
    let appends = appended as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (mut after, mut read) = (0, 0u64);
    loop {
        let page = store.read_all(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        read += page.len() as u64;
    }
    (appends, read as f64 / started.elapsed().as_secs_f64())
}

fn token_stream(n: usize) -> StreamId {
    whatsnap_auth::token_stream(&format!("{n:024x}")).unwrap()
}

/// An event every read model passes over: a token nobody holds, revoked.
fn backlog_event() -> NewEvent {
    let revoked = ApiTokenRevoked {
        token_id: "0".repeat(24),
        revoked_by: Some("benchmark".into()),
    };
    NewEvent::new(&Event::from(revoked), EventMetadata::new_correlation())
}

/// The event store whatsnap runs on, opened beside it.
async fn store_of(backend: &TestBackend) -> Arc<dyn EventStore> {
    match backend {
        TestBackend::Embedded(dir) => Arc::new(
            whatsnap_eventstore::sqlite::SqliteEventStore::open(
                &whatsnap_eventstore::sqlite::SqliteConfig::new(dir.path().join("whatsnap.db")),
            )
            .await
            .unwrap(),
        ),
        TestBackend::Distributed(nats, _) => Arc::new(nats.store().await.unwrap()),
    }
}

/// Whether the log after `after` holds an assignment decision about `contact`.
async fn decided(store: &dyn EventStore, after: u64, contact: uuid::Uuid) -> bool {
    let mut after = after;
    loop {
        let batch = store.read_all(after, 1000).await.unwrap();
        let Some(last) = batch.last() else {
            return false;
        };
        after = last.position;
        let found = batch.iter().any(|e| match e.event_type.as_str() {
            "ContactAssigned" | "AssignmentSkipped" => matches!(
                e.decode(),
                Ok(Event::ContactAssigned(whatsnap_events::ContactAssigned { contact_id, .. })
                    | Event::AssignmentSkipped(whatsnap_events::AssignmentSkipped { contact_id, .. }))
                    if contact_id == contact
            ),
            _ => false,
        });
        if found {
            return true;
        }
    }
}

async fn append_backlog(backend: &TestBackend, events: usize) {
    let store = store_of(backend).await;
    let stream = token_stream(WRITERS);
    for start in (0..events).step_by(500) {
        let batch = (start..events.min(start + 500))
            .map(|_| backlog_event())
            .collect();
        store
            .append(&stream, ExpectedVersion::Any, batch)
            .await
            .unwrap();
    }
}

/// How long after `since` every projection has applied the whole log, as `/readyz` tells, and
/// when each of them got there, the last first.
async fn caught_up(http: SocketAddr, since: Instant) -> (Duration, Vec<(String, Duration)>) {
    let mut done: Vec<(String, Duration)> = Vec::new();
    loop {
        if let Ok((200, body)) = http_get(http, "/readyz").await {
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            let lags = body["projections"].as_object().unwrap();
            for (name, projection) in lags {
                if projection["lag"] == 0 && !done.iter().any(|(n, _)| n == name) {
                    done.push((name.clone(), since.elapsed()));
                }
            }
            if !lags.is_empty() && lags.values().all(|p| p["lag"] == 0) {
                done.reverse();
                return (since.elapsed(), done);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn head(whatsnap: &Whatsnap) -> u64 {
    scrape(whatsnap.http.unwrap())
        .await
        .sum("whatsnap_log_head_position") as u64
}

/// `/metrics`, as (series, value) lines.
struct Scraped(Vec<(String, f64)>);

impl Scraped {
    fn sum(&self, prefix: &str) -> f64 {
        self.sum_where(prefix, "")
    }

    fn sum_where(&self, prefix: &str, containing: &str) -> f64 {
        self.0
            .iter()
            .filter(|(s, _)| s.starts_with(prefix) && s.contains(containing))
            .map(|(_, v)| v)
            .sum()
    }
}

async fn scrape(http: SocketAddr) -> Scraped {
    let bearer = format!("Bearer {}", whatsnap_testkit::ADMIN_TOKEN);
    let reply =
        whatsnap_testkit::http_request(http, "/metrics", &[("authorization", &bearer)], None)
            .await
            .unwrap();
    Scraped(
        reply
            .body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(s, v)| Some((s.to_owned(), v.parse().ok()?)))
            .collect(),
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
