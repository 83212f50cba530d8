//! The five services as real `whatsnap` processes: given an account, when a message reaches it,
//! then the contacts service has a tagged contact, the assignment service has a decision, and
//! the gateway tells its history — whether everything runs in one embedded process or each
//! service in its own process on NATS JetStream and PostgreSQL. A service killed while messages
//! flow catches up when it comes back, and applies nothing twice.

use std::path::Path;
use std::time::{Duration, Instant};

use tonic::Code;
use whatsnap_events::{
    AggregateKind, Event, EventMetadata, GhlUserSynced, LocationId, NewEvent, StreamId,
};
use whatsnap_eventstore::{EventStore, ExpectedVersion};
use whatsnap_proto::assignment::v1 as assignment;
use whatsnap_proto::contacts::v1 as contacts;
use whatsnap_proto::events::v1 as events;
use whatsnap_proto::session::v1 as session;
use whatsnap_testkit::Channel;
use whatsnap_testkit::{
    FakeCollector, TestNats, TestPostgres, Whatsnap, distributed_args, eventually, free_port,
    http_get,
};

const LOCATION: &str = "loc1";
/// The key every process of the distributed setup shares.
const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_whatsnap-under-test"))
}

/// `whatsnap serve` on the embedded backend in `data`, on free ports.
fn embedded(data: &Path, env: &[(&str, String)], log_name: &str) -> Whatsnap {
    let data = data.to_str().unwrap();
    let list = args(&[
        "--data-dir",
        data,
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    Whatsnap::serve_with_env(binary(), &list, env, log_name).unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Clients of the gateway, the front door.
struct Api {
    session: session::session_service_client::SessionServiceClient<Channel>,
    contacts: contacts::contacts_service_client::ContactsServiceClient<Channel>,
    assignment: assignment::assignment_service_client::AssignmentServiceClient<Channel>,
    events: events::events_service_client::EventsServiceClient<Channel>,
}

impl Api {
    async fn connect(gateway: &Whatsnap) -> Self {
        let channel = gateway.channel().await;
        Self {
            session: session::session_service_client::SessionServiceClient::new(channel.clone()),
            contacts: contacts::contacts_service_client::ContactsServiceClient::new(
                channel.clone(),
            ),
            assignment: assignment::assignment_service_client::AssignmentServiceClient::new(
                channel.clone(),
            ),
            events: events::events_service_client::EventsServiceClient::new(channel),
        }
    }

    async fn add_account(&mut self, name: &str) -> session::Account {
        self.session
            .add_account(session::AddAccountRequest {
                location_id: LOCATION.into(),
                kind: session::AccountKind::Whatsapp as i32,
                name: name.into(),
                phone_number: "+1 415 555 0199".into(),
                twilio: None,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn receive(
        &mut self,
        account: &session::Account,
        provider_id: &str,
        from: &str,
    ) -> Result<session::RecordInboundMessageResponse, tonic::Status> {
        self.receive_traced(account, provider_id, from, None).await
    }

    /// Records a message as a webhook would, optionally within the caller's W3C trace.
    async fn receive_traced(
        &mut self,
        account: &session::Account,
        provider_id: &str,
        from: &str,
        traceparent: Option<&str>,
    ) -> Result<session::RecordInboundMessageResponse, tonic::Status> {
        let mut request = tonic::Request::new(session::RecordInboundMessageRequest {
            location_id: LOCATION.into(),
            account_id: account.account_id.clone(),
            provider_message_id: provider_id.into(),
            from: from.into(),
            body: "Hi, is this open today?".into(),
            sender_name: "Ana Lima".into(),
            attachments: Vec::new(),
        });
        if let Some(traceparent) = traceparent {
            request
                .metadata_mut()
                .insert("traceparent", traceparent.parse().unwrap());
        }
        self.session
            .record_inbound_message(request)
            .await
            .map(|r| r.into_inner())
    }

    /// Waits until the contacts read model has the contact with its account tag: its creation
    /// and its tag are one append but may reach the read model in two transactions.
    async fn contact(&mut self, phone: &str) -> contacts::Contact {
        let client = &mut self.contacts;
        eventually(format!("contact {phone} appears, tagged"), async || {
            let request = contacts::GetContactRequest {
                location_id: LOCATION.into(),
                phone: phone.into(),
            };
            match client.get_contact(request).await {
                Ok(contact) => Some(contact.into_inner()).filter(|c| !c.tags.is_empty()),
                // Over the location's API quota (the test polls hard): try again, as a client should.
                Err(status)
                    if matches!(
                        status.code(),
                        Code::NotFound | Code::Unavailable | Code::ResourceExhausted
                    ) =>
                {
                    None
                }
                Err(status) => panic!("get_contact: {status}"),
            }
        })
        .await
    }

    async fn assignment(&mut self, contact_id: &str) -> assignment::Assignment {
        let client = &mut self.assignment;
        eventually(
            format!("an assignment decision for {contact_id}"),
            async || {
                let request = assignment::GetAssignmentRequest {
                    location_id: LOCATION.into(),
                    contact_id: contact_id.into(),
                };
                client
                    .get_assignment(request)
                    .await
                    .ok()
                    .map(|d| d.into_inner())
            },
        )
        .await
    }

    async fn stream_len(&mut self, stream_id: String) -> usize {
        self.events
            .read_stream(events::ReadStreamRequest {
                stream_id,
                from_version: 1,
                limit: 100,
            })
            .await
            .unwrap()
            .into_inner()
            .events
            .len()
    }

    /// (event type, summary, traceparent) of every event that touched the contact.
    async fn history(&mut self, phone: &str) -> Vec<(String, String, String)> {
        let client = &mut self.events;
        eventually(format!("the history of {phone}"), async || {
            let request = events::ContactHistoryRequest {
                location_id: LOCATION.into(),
                phone: phone.into(),
            };
            let entries: Vec<_> = client
                .contact_history(request)
                .await
                .ok()?
                .into_inner()
                .entries
                .into_iter()
                .map(|e| {
                    let event = e.event.unwrap_or_default();
                    (event.event_type, e.summary, event.traceparent)
                })
                .collect();
            (entries.len() >= 3).then_some(entries)
        })
        .await
    }
}

/// Given an account, when a new number messages it (twice, the same webhook), then one contact
/// with the account's tag, one decision, and a history that says why.
async fn a_message_becomes_a_tagged_contact_with_a_history(api: &mut Api) {
    let account = api.add_account("Sales Line").await;
    assert_eq!(account.tag, "whatsnap-account-sales-line");
    // The webhook's request carries a W3C trace; everything it causes continues that trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let first = api
        .receive_traced(&account, "SM100", "+1 (415) 555-0100", Some(&traceparent))
        .await
        .unwrap();
    let again = api
        .receive(&account, "SM100", "+1 (415) 555-0100")
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.message_id, again.message_id);

    let contact = api.contact("+14155550100").await;
    assert_eq!(contact.phone, "+14155550100");
    assert_eq!(contact.name, "Ana Lima");
    assert_eq!(contact.tags, ["whatsnap-account-sales-line"]);

    let decision = api.assignment(&contact.contact_id).await;
    assert_eq!(decision.user_id, "");
    assert!(
        decision.reason.contains("no assignment rules"),
        "{}",
        decision.reason
    );

    let history = api.history("+14155550100").await;
    let types: Vec<_> = history.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "InboundMessageReceived",
            "ContactCreated",
            "AssignmentSkipped"
        ]
    );
    assert!(
        history[1].1.contains("tag whatsnap-account-"),
        "the creation does not show its tag: {history:?}"
    );
    assert!(history[2].1.contains("no assignment rules"), "{history:?}");
    for (event_type, _, traceparent) in &history {
        assert!(
            traceparent.contains(trace_id),
            "{event_type} was written outside the message's trace: {traceparent:?}"
        );
    }

    // A reply would leave from the account whose tag the contact carries; once that account is
    // removed, there is no route, and the reason says what to do.
    let route = api
        .contacts
        .resolve_route(contacts::ResolveRouteRequest {
            location_id: LOCATION.into(),
            phone: "+14155550100".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.account_id, account.account_id);
    assert_eq!(route.tag, "whatsnap-account-sales-line");

    // A tag added by hand moves the replies to that account; removed, they come back.
    let support = api.add_account("Support Line").await;
    let tag = |remove: bool| contacts::TagContactRequest {
        location_id: LOCATION.into(),
        phone: "+14155550100".into(),
        tag: support.tag.clone(),
        remove,
    };
    let tagged = api
        .contacts
        .tag_contact(tag(false))
        .await
        .unwrap()
        .into_inner();
    assert!(tagged.tags.contains(&support.tag), "{:?}", tagged.tags);
    let route_of = async |api: &mut Api| {
        let request = contacts::ResolveRouteRequest {
            location_id: LOCATION.into(),
            phone: "+14155550100".into(),
        };
        api.contacts
            .resolve_route(request)
            .await
            .ok()
            .map(|r| r.into_inner())
    };
    let moved = eventually("the route follows the new tag", async || {
        route_of(&mut *api)
            .await
            .filter(|r| r.account_id == support.account_id)
    })
    .await;
    assert!(
        moved.reason.contains("added most recently"),
        "{}",
        moved.reason
    );
    api.contacts.tag_contact(tag(true)).await.unwrap();
    eventually("the route comes back", async || {
        route_of(&mut *api)
            .await
            .filter(|r| r.account_id == account.account_id)
    })
    .await;
    let err = api
        .contacts
        .tag_contact(contacts::TagContactRequest {
            location_id: LOCATION.into(),
            phone: "+14155550111".into(),
            tag: "vip".into(),
            remove: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Bad input changes nothing and says what is wrong.
    let err = api.receive(&account, "SM101", "12345").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("country code"), "{}", err.message());
    let mut unknown = account.clone();
    unknown.account_id = "01a2086a-20c3-7705-8003-4b64ce7f8e21".into();
    let err = api
        .receive(&unknown, "SM102", "+14155550100")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    api.session
        .remove_account(session::RemoveAccountRequest {
            location_id: LOCATION.into(),
            account_id: account.account_id.clone(),
            reason: "number returned".into(),
        })
        .await
        .unwrap();
    let err = eventually("the removed account stops routing", async || {
        let request = contacts::ResolveRouteRequest {
            location_id: LOCATION.into(),
            phone: "+14155550100".into(),
        };
        api.contacts.resolve_route(request).await.err()
    })
    .await;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("removed accounts"),
        "{}",
        err.message()
    );
    let err = api
        .receive(&account, "SM103", "+14155550100")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_one_process_serves_every_service() {
    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut whatsnap = embedded(data.path(), &[], "embedded");
    let http = whatsnap.http.unwrap();
    loop {
        if let Ok((200, body)) = http_get(http, "/readyz").await {
            assert!(body.contains("\"ready\":true"), "{body}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not ready within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "embedded whatsnap ready {} ms after start",
        started.elapsed().as_millis()
    );
    assert_eq!(http_get(http, "/healthz").await.unwrap().0, 200);

    let mut api = Api::connect(&whatsnap).await;
    a_message_becomes_a_tagged_contact_with_a_history(&mut api).await;

    // Assignment rules are versioned: each change is kept, the latest applies.
    let set = |rules_json: &str| assignment::SetRulesRequest {
        location_id: LOCATION.into(),
        account_id: String::new(),
        rules_json: rules_json.into(),
    };
    let err = api
        .assignment
        .set_rules(set("{not json"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = api.assignment.set_rules(set("[1, 2]")).await.unwrap_err();
    assert!(
        err.message().contains("must be a JSON object"),
        "{}",
        err.message()
    );
    let err = api
        .assignment
        .set_rules(set(r#"{"rules":[{"strategy":"individual","user":"u1"}]}"#))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("rules[0].strategy"),
        "{}",
        err.message()
    );
    api.assignment
        .set_rules(set(r#"{"rules":[{"strategy":"user","user":"u1"}]}"#))
        .await
        .unwrap();
    let second = api
        .assignment
        .set_rules(set(
            r#"{"rules":[{"strategy":"round_robin","users":["u1","u2"]}]}"#,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.version, 2);
    let current = api
        .assignment
        .get_rules(assignment::GetRulesRequest {
            location_id: LOCATION.into(),
            account_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.version, 2);
    assert!(
        current.rules_json.contains("round_robin"),
        "{}",
        current.rules_json
    );

    // SIGTERM drains and exits cleanly; a restart finds everything.
    let status = whatsnap.terminate().unwrap();
    assert!(status.success(), "exit status {status}");
    let whatsnap = embedded(data.path(), &[], "embedded-restarted");
    let mut api = Api::connect(&whatsnap).await;
    assert_eq!(
        api.contact("+14155550100").await.tags,
        ["whatsnap-account-sales-line"]
    );
}

struct Cluster {
    common: Vec<String>,
    session: Whatsnap,
    contacts: Whatsnap,
    contacts_port: u16,
    _assignment: Whatsnap,
    _ghl_sync: Whatsnap,
    gateway: Whatsnap,
}

impl Cluster {
    fn start_target(common: &[String], target: &str, grpc_port: u16) -> Whatsnap {
        let mut list = common.to_vec();
        list.extend(args(&[
            "--target",
            target,
            "--grpc-addr",
            &format!("127.0.0.1:{grpc_port}"),
        ]));
        Whatsnap::serve(binary(), &list, target).unwrap()
    }

    async fn start(nats: &TestNats, pg: &TestPostgres) -> Self {
        let mut common = args(&["--secret-key", SECRET_KEY]);
        common.extend(distributed_args(nats, pg));
        let contacts_port = free_port();
        let session = Self::start_target(&common, "session", 0);
        let contacts = Self::start_target(&common, "contacts", contacts_port);
        let assignment = Self::start_target(&common, "assignment", 0);
        let ghl_sync = Self::start_target(&common, "ghl-sync", 0);
        let mut gateway_args = common.clone();
        gateway_args.extend(args(&[
            "--target",
            "gateway",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--session-url",
            &session.grpc_url(),
            "--contacts-url",
            &contacts.grpc_url(),
            "--assignment-url",
            &assignment.grpc_url(),
            "--ghl-sync-url",
            &ghl_sync.grpc_url(),
        ]));
        let gateway = Whatsnap::serve(binary(), &gateway_args, "gateway").unwrap();
        Self {
            common,
            session,
            contacts,
            contacts_port,
            _assignment: assignment,
            _ghl_sync: ghl_sync,
            gateway,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_one_process_per_service() {
    let nats = TestNats::new().await.unwrap();
    let pg = TestPostgres::new().await.unwrap();
    let mut cluster = Cluster::start(&nats, &pg).await;
    let mut api = Api::connect(&cluster.gateway).await;
    a_message_becomes_a_tagged_contact_with_a_history(&mut api).await;

    // Messages keep coming while the contacts service is killed and started again.
    let account = api.add_account("Support").await;
    const MESSAGES: usize = 60;
    let phone = |i: usize| format!("+1415555{:04}", 1000 + i);
    for i in 0..MESSAGES {
        if i == MESSAGES / 3 {
            cluster.contacts.kill().unwrap();
        }
        if i == 2 * MESSAGES / 3 {
            cluster.contacts =
                Cluster::start_target(&cluster.common, "contacts", cluster.contacts_port);
        }
        api.receive(&account, &format!("SM-flow-{i}"), &phone(i))
            .await
            .unwrap();
    }
    for i in 0..MESSAGES {
        let contact = api.contact(&phone(i)).await;
        assert_eq!(contact.tags, ["whatsnap-account-support"], "{}", phone(i));
        // Exactly once: each contact's stream holds its creation (with its tag), each decision
        // one event.
        let stream = format!("{LOCATION}.contact.{}", contact.contact_id);
        assert_eq!(api.stream_len(stream).await, 1, "contact {}", phone(i));
        api.assignment(&contact.contact_id).await;
        let decisions = format!("{LOCATION}.assignment.{}", contact.contact_id);
        assert_eq!(
            api.stream_len(decisions).await,
            1,
            "decisions of {}",
            phone(i)
        );
    }

    // The contacts service searches and counts on PostgreSQL: part of a number finds its one
    // contact among all, and every contact of the flow carries the account's tag.
    let found = api
        .contacts
        .list_contacts(contacts::ListContactsRequest {
            location_id: LOCATION.into(),
            limit: 0,
            query: "555 1005".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let phones: Vec<_> = found.contacts.iter().map(|c| c.phone.as_str()).collect();
    assert_eq!(phones, [phone(5).as_str()]);
    assert_eq!(found.total, MESSAGES as u64 + 1, "and the first contact");
    let counts = api
        .contacts
        .count_tags(contacts::CountTagsRequest {
            location_id: LOCATION.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let support = counts
        .tags
        .iter()
        .find(|t| t.tag == "whatsnap-account-support")
        .map(|t| t.contacts);
    assert_eq!(support, Some(MESSAGES as u64));
    // The first contact carries only the tag of an account removed since: no route.
    assert_eq!((counts.contacts, counts.untagged), (MESSAGES as u64 + 1, 1));

    // GHL users, as ghl-sync records them, are the assignment service's candidates; a user
    // deleted in GHL stays listed but inactive.
    let store = nats.store().await.unwrap();
    for (user_id, name, deleted) in [("u1ana", "Ana", false), ("u2bruno", "Bruno", true)] {
        let stream = StreamId::new(
            LocationId::parse(LOCATION).unwrap(),
            AggregateKind::Ghl,
            format!("user_{user_id}"),
        )
        .unwrap();
        let event = Event::from(GhlUserSynced {
            user_id: user_id.into(),
            name: name.into(),
            email: Some(format!("{user_id}@example.com")),
            role: Some("user".into()),
            deleted,
        });
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(&event, EventMetadata::new_correlation())],
            )
            .await
            .unwrap();
    }
    let users = eventually("both users listed", async || {
        let request = assignment::ListUsersRequest {
            location_id: LOCATION.into(),
        };
        let users = api
            .assignment
            .list_users(request)
            .await
            .ok()?
            .into_inner()
            .users;
        (users.len() == 2).then_some(users)
    })
    .await;
    let summary: Vec<_> = users.iter().map(|u| (u.name.as_str(), u.active)).collect();
    assert_eq!(summary, [("Ana", true), ("Bruno", false)]);

    // The gateway's readiness reflects its own projection, caught up.
    let http = cluster.gateway.http.unwrap();
    let (status, body) = http_get(http, "/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(cluster.session.terminate().unwrap().success());
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the spans of the call and of every handler it caused
/// reach the collector, in the caller's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_in_the_callers_trace() {
    let collector = FakeCollector::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut whatsnap = embedded(
        data.path(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())],
        "otlp",
    );
    let mut api = Api::connect(&whatsnap).await;
    let account = api.add_account("Traced").await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    api.receive_traced(
        &account,
        "SM-otlp",
        "+14155550142",
        Some(&format!("00-{trace_id}-b7ad6b7169203331-01")),
    )
    .await
    .unwrap();
    let contact = api.contact("+14155550142").await;
    api.assignment(&contact.contact_id).await;
    // SIGTERM flushes what is not exported yet.
    assert!(whatsnap.terminate().unwrap().success());

    let spans: Vec<_> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace_id)
        .collect();
    assert!(
        spans.iter().any(|s| s.name == "grpc"),
        "no gRPC span in the trace: {spans:?}"
    );
    let handled = spans.iter().filter(|s| s.name == "handle_event").count();
    assert!(
        handled >= 3,
        "handlers of the message's events not in its trace: {spans:?}"
    );
    assert!(
        spans.iter().all(|s| s.service_name == "whatsnap"),
        "{spans:?}"
    );
}

/// The embedded default under a burst: eight senders at once, every message becomes its contact,
/// nothing is refused for a busy database. (The location's API quota, which would refuse a
/// burst this fast once its 200 calls of headroom are spent, is raised out of the way: it is
/// tested on its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_takes_a_burst_from_concurrent_senders() {
    let data = tempfile::tempdir().unwrap();
    let quota = [("WHATSNAP_LOCATION_QUOTA", "10000".to_owned())];
    let whatsnap = embedded(data.path(), &quota, "burst");
    let mut api = Api::connect(&whatsnap).await;
    let account = api.add_account("Burst").await;
    const SENDERS: usize = 8;
    const EACH: usize = 40;
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let mut api = Api::connect(&whatsnap).await;
        let account = account.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let n = sender * EACH + i;
                api.receive(
                    &account,
                    &format!("SM-burst-{n}"),
                    &format!("+1415555{:04}", 2000 + n),
                )
                .await
                .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for n in 0..SENDERS * EACH {
        let contact = api.contact(&format!("+1415555{:04}", 2000 + n)).await;
        assert_eq!(contact.tags, ["whatsnap-account-burst"]);
    }
    let (status, body) = http_get(whatsnap.http.unwrap(), "/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
}

/// A process that starts with a backlog takes traffic at once: `/readyz` answers 200 while a
/// projection is thousands of events behind and says how far; the lag is on `/metrics`, at the
/// gateway and at the process's own metrics address, for an admin token only; it drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_a_backlog_is_ready_at_once_and_publishes_its_lag() {
    const BACKLOG: u64 = 5000;
    let data = tempfile::tempdir().unwrap();
    let store = whatsnap_eventstore::sqlite::SqliteEventStore::open(
        &whatsnap_eventstore::sqlite::SqliteConfig::new(data.path().join("whatsnap.db")),
    )
    .await
    .unwrap();
    // Events no read model has seen, which the tokens' read model (the one that reads them)
    // cannot apply until it is "fixed".
    let stream = whatsnap_auth::token_stream("0123456789abcdef01234567").unwrap();
    for _ in 0..BACKLOG / 500 {
        let batch = (0..500)
            .map(|_| {
                let revoked = whatsnap_events::ApiTokenRevoked {
                    token_id: "0123456789abcdef01234567".into(),
                    revoked_by: Some("backlog-marker".into()),
                };
                NewEvent::new(&Event::from(revoked), EventMetadata::new_correlation())
            })
            .collect();
        store
            .append(&stream, ExpectedVersion::Any, batch)
            .await
            .unwrap();
    }
    drop(store);

    let cured = data.path().join("cured");
    let metrics_port = free_port();
    let mut list = args(&[
        "--data-dir",
        data.path().to_str().unwrap(),
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--projection-attempts",
        "1000",
    ]);
    list.extend(args(&[
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]));
    let env = [
        (
            "WHATSNAP_FAILPOINT_POISON",
            "api_tokens:backlog-marker".to_owned(),
        ),
        (
            "WHATSNAP_FAILPOINT_POISON_CURED",
            cured.to_str().unwrap().to_owned(),
        ),
    ];
    let whatsnap = Whatsnap::serve_with_env(binary(), &list, &env, "backlog").unwrap();
    let http = whatsnap.http.unwrap();
    let lag = |body: &str| -> u64 {
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        body["projections"]["api_tokens"]["lag"].as_u64().unwrap()
    };
    let (status, body) = eventually("an answer from /readyz", async || {
        http_get(http, "/readyz").await.ok()
    })
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(lag(&body) >= BACKLOG, "{body}");

    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let bearer = format!("Bearer {}", whatsnap_testkit::ADMIN_TOKEN);
    let scrape = async |addr| {
        let reply =
            whatsnap_testkit::http_request(addr, "/metrics", &[("authorization", &bearer)], None)
                .await
                .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body
    };
    let tokens_lag = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(r#"whatsnap_projection_lag_events{projection="api_tokens"} "#)
            })
            .unwrap_or_else(|| panic!("no api_tokens lag in\n{text}"))
            .parse()
            .unwrap()
    };
    for addr in [http, metrics_addr] {
        let text = scrape(addr).await;
        assert!(tokens_lag(&text) >= BACKLOG as f64, "{text}");
        assert!(text.contains("\nwhatsnap_event_store_up 1\n"), "{text}");
        let unsigned = whatsnap_testkit::http_request(addr, "/metrics", &[], None)
            .await
            .unwrap();
        assert_eq!(unsigned.status, 401);
    }
    let (status, _) = http_get(metrics_addr, "/readyz").await.unwrap();
    assert_eq!(status, 200);

    // The fix is out: the read model catches up, and says so.
    std::fs::write(&cured, "").unwrap();
    whatsnap_testkit::eventually_within(
        Duration::from_secs(90),
        "the backlog drained",
        async || {
            let (_, body) = http_get(http, "/readyz").await.ok()?;
            (lag(&body) == 0).then_some(())
        },
    )
    .await;
    assert_eq!(tokens_lag(&scrape(metrics_addr).await), 0.0);
    // The assignment decider reads the log too: its lag is shown beside the read models'.
    whatsnap_testkit::eventually("the decider caught up", async || {
        let (_, body) = http_get(http, "/readyz").await.ok()?;
        let body: serde_json::Value = serde_json::from_str(&body).ok()?;
        (body["projections"]["assignment_decider"]["lag"].as_u64()? == 0).then_some(())
    })
    .await;
    let text = scrape(metrics_addr).await;
    assert!(
        text.contains("\nwhatsnap_projection_lag_events{projection=\"assignment_decider\"} 0\n"),
        "{text}"
    );
}
