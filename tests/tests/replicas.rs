//! Three replicas of every target against one JetStream and one PostgreSQL: the work (each
//! projection, each service's workers, the GHL work in four parts by location and the contacts
//! stage in six by contact) is spread over them, never done in two places at once;
//! texts reach GHL once each and in the order each customer wrote them, through a rolling
//! restart of every replica while they flow.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use whatsnap_testkit::{TestBackend, Whatsnap, eventually, eventually_within};
use whatsnap_tests::twilio_rig::{TwilioRig, text};

const LOCATION: &str = "locReplicas";
const CUSTOMERS: usize = 6;
/// The pieces of work of every target: eight projections (with no alert webhook, no alerts'
/// queue), the session's and the assignment's workers, the GHL work's four parts and the
/// contacts stage's six.
const WORK: usize = 20;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

/// The leases a replica holds, as its `/metrics` says.
async fn leases(http: SocketAddr) -> Option<BTreeSet<String>> {
    let bearer = format!("Bearer {}", whatsnap_testkit::ADMIN_TOKEN);
    let reply =
        whatsnap_testkit::http_request(http, "/metrics", &[("authorization", &bearer)], None)
            .await
            .ok()?;
    (reply.status == 200).then(|| {
        reply
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("whatsnap_lease_held{lease=\""))
            .filter_map(|l| l.split_once('"').map(|(lease, _)| lease.to_owned()))
            .collect()
    })
}

/// The leases of the contacts stage's parts (six on the distributed backend by default).
fn contact_parts(held: &BTreeSet<String>) -> usize {
    held.iter()
        .filter(|lease| lease.starts_with("projection:contacts_stage_"))
        .count()
}

/// The leases of the GHL work's parts (four by default).
fn ghl_parts(held: &BTreeSet<String>) -> usize {
    held.iter()
        .filter(|lease| lease.starts_with("workers:ghl-sync_"))
        .count()
}

/// Every replica's leases once the work is spread: all of it held, each replica some, none
/// one twice, and
/// the contacts stage (the contacts found or created for every message) is split over all of
/// them.
async fn spread(replicas: &[SocketAddr]) -> Vec<BTreeSet<String>> {
    eventually_within(
        Duration::from_secs(60),
        "the work spread over the replicas",
        async || {
            let mut held = Vec::new();
            for http in replicas {
                held.push(leases(*http).await?);
            }
            let all: Vec<&String> = held.iter().flatten().collect();
            let distinct: BTreeSet<&String> = all.iter().copied().collect();
            let parts = held.iter().map(contact_parts).sum::<usize>();
            let ghl = held.iter().map(ghl_parts).sum::<usize>();
            let spread = distinct.len() == all.len()
                && distinct.len() == WORK
                && (parts, ghl) == (6, 4)
                && held.iter().all(|h| {
                    // Each kind shared on its own: the work that is no part, and each split.
                    let whole = h.len() - contact_parts(h) - ghl_parts(h);
                    !h.is_empty()
                        && whole <= (WORK - parts - ghl).div_ceil(replicas.len())
                        && contact_parts(h) == parts.div_ceil(replicas.len())
                        && (1..=ghl.div_ceil(replicas.len())).contains(&ghl_parts(h))
                });
            spread.then_some(held)
        },
    )
    .await
}

struct Cluster {
    args: Vec<String>,
    replicas: Vec<Whatsnap>,
    /// The gateways taking webhooks now, as a load balancer sees them.
    live: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Cluster {
    fn start(&mut self, n: usize) -> Whatsnap {
        Whatsnap::serve(binary(), &self.args, &format!("replica-{n}")).unwrap()
    }

    fn https(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|r| r.http.unwrap()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_work_keep_each_customers_order_and_survive_a_rolling_restart() {
    // A replica taking over a read model catches up on the shared pages (of eight events
    // here, from any backlog) before its consumer takes over.
    let backend = TestBackend::distributed_paged(8).await;
    let rig = TwilioRig::start().await;
    let mut args = rig.serve_args(&backend);
    args.extend(
        [
            "--lease-ttl",
            "2",
            "--contact-parts",
            "6",
            "--ghl-parts",
            "4",
        ]
        .map(str::to_owned),
    );
    let mut cluster = Cluster {
        args,
        replicas: Vec::new(),
        live: Arc::default(),
    };
    for n in 0..3 {
        let replica = cluster.start(n);
        cluster.replicas.push(replica);
    }
    *cluster.live.lock().unwrap() = cluster.https();
    let held = spread(&cluster.https()).await;
    eprintln!("leases per replica: {held:?}");

    // A location and its Twilio number, through any replica.
    let account = rig
        .connect(cluster.replicas[1].channel().await, LOCATION)
        .await;
    let path = format!("/webhooks/twilio/{LOCATION}/{account}/inbound");

    // Each customer writes in turn, each text after the last was taken, to whichever gateway
    // the balancer picks; a gateway that is going away is tried again elsewhere, as Twilio and
    // a load balancer do.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut customers = tokio::task::JoinSet::new();
    for customer in 0..CUSTOMERS {
        let (live, path, done) = (cluster.live.clone(), path.clone(), done.clone());
        customers.spawn(async move {
            let from = format!("+1415555{:04}", 3000 + customer);
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let sid = format!("SM{customer:02}{n:030}");
                let body = format!("customer {customer} text {n}");
                let mut attempt = 0;
                loop {
                    let gateways = live.lock().unwrap().clone();
                    let http = gateways[(customer + n + attempt) % gateways.len()];
                    match text(http, &path, &sid, &from, &body).await {
                        Ok((200, _)) => break,
                        Ok((status, body)) if status < 500 => {
                            panic!("a text was refused: {status} {body}")
                        }
                        _ => attempt += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (customer, n)
        });
    }

    // Meanwhile, every replica in turn stops (SIGTERM, as Kubernetes does) and a new one
    // takes its place, once the first texts have gone through.
    let in_ghl = || rig.messages_in(LOCATION);
    eventually("the first texts in GHL", async || {
        (in_ghl() >= 5).then_some(())
    })
    .await;
    for n in 0..3 {
        let old_http = cluster.replicas[n].http.unwrap();
        cluster.live.lock().unwrap().retain(|h| *h != old_http);
        assert!(cluster.replicas[n].terminate().unwrap().success());
        let replacement = cluster.start(3 + n);
        cluster.live.lock().unwrap().push(replacement.http.unwrap());
        cluster.replicas[n] = replacement;
        let before = in_ghl();
        eventually_within(Duration::from_secs(60), "texts flowing again", async || {
            (in_ghl() > before + 5).then_some(())
        })
        .await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let written: BTreeMap<usize, usize> = customers.join_all().await.into_iter().collect();
    let total: usize = written.values().sum();
    eprintln!("texts written during the rolling restart: {total} ({written:?})");
    eventually_within(Duration::from_secs(120), "every text in GHL", async || {
        (in_ghl() >= total).then_some(())
    })
    .await;
    // Each exactly once, each customer's in the order written.
    let contacts = rig.ghl.contacts(LOCATION);
    assert_eq!(contacts.len(), CUSTOMERS, "one GHL contact per customer");
    for contact in contacts {
        let phone = contact.phone.clone().unwrap();
        let customer = phone[phone.len() - 4..].parse::<usize>().unwrap() - 3000;
        let bodies: Vec<String> = rig
            .ghl
            .messages(&contact.id)
            .into_iter()
            .filter_map(|m| m.message)
            .collect();
        let written: Vec<String> = (0..written[&customer])
            .map(|n| format!("customer {customer} text {n}"))
            .collect();
        assert_eq!(
            bodies, written,
            "customer {customer}: lost, repeated or reordered"
        );
    }
    assert_eq!(in_ghl(), total);
    // GHL's pacing goes with the GHL work: the replica that takes it over goes on with the
    // windows the one that stopped saved, so no handover makes GHL refuse a request.
    assert_eq!(
        rig.ghl.rate_limited_count(LOCATION),
        0,
        "GHL requests refused with 429"
    );

    // The new replicas share the work again.
    let held = spread(&cluster.https()).await;
    eprintln!("leases per replica after the rolling restart: {held:?}");
}
