//! ghl-sync on replicas: workers of different processes, each doing the GHL work of its own
//! locations, share their agency's token; one of them renews it, once.

use std::time::Duration;

use whatsnap_events::{Event, GhlInstalled, GhlTokenKind, GhlTokensIssued, LocationId};
use whatsnap_eventstore::lease::Leases;
use whatsnap_eventstore::projection::Part;
use whatsnap_ghl_sync::{GhlSync, connection};
use whatsnap_secrets::SecretKey;
use whatsnap_testkit::{FakeGhl, eventually};

mod common;

use common::{PHONE, Rig, SECRET_KEY, worker_config};

/// A location of each of the two parts of the GHL work.
fn one_location_per_part() -> [LocationId; 2] {
    let parts: [Part; 2] = Part::all(2).collect::<Vec<_>>().try_into().unwrap();
    parts.map(|part| {
        let name = (0..)
            .map(|n| format!("locReplica{n}"))
            .find(|name| part.holds(name))
            .expect("some name is in each part");
        LocationId::parse(name).unwrap()
    })
}

#[tokio::test]
async fn replicas_whose_locations_share_an_agency_refresh_its_token_once() {
    let rig = Rig::start(None).await;
    let key = SecretKey::from_base64(SECRET_KEY).unwrap();
    // The agency installed the app; its token is about to expire.
    let grant = worker_config(&rig.ghl, Duration::from_millis(20), None)
        .client
        .exchange_code(&rig.ghl.issue_company_code(FakeGhl::COMPANY_ID))
        .await
        .unwrap();
    let agency = GhlTokensIssued {
        kind: GhlTokenKind::Oauth,
        access_token: key.seal(&grant.access_token),
        refresh_token: grant.refresh_token.as_deref().map(|t| key.seal(t)),
        expires_at: Some(chrono::Utc::now() + chrono::Duration::minutes(1)),
        user_type: "Company".into(),
        company_id: Some(FakeGhl::COMPANY_ID.into()),
        scope: grant.scope.clone(),
    };
    rig.append(
        connection::company_stream(FakeGhl::COMPANY_ID).unwrap(),
        vec![Event::from(agency)],
    )
    .await;
    // Two of its locations installed it, and a customer of each wrote.
    let locations = one_location_per_part();
    for location in &locations {
        let installed = GhlInstalled {
            company_id: Some(FakeGhl::COMPANY_ID.into()),
            install_type: "Location".into(),
            scopes: Vec::new(),
        };
        rig.append(connection::stream(location), vec![Event::from(installed)])
            .await;
        rig.contact_messages_at(location).await;
    }
    // Each call to GHL takes a while: both replicas find the agency's token about to expire
    // before either has renewed it.
    rig.ghl.set_latency(Duration::from_millis(200));

    // Two replicas, each with one part of the GHL work.
    let ttl = Duration::from_secs(10);
    let mut tasks = Vec::new();
    for (replica, part) in ["a", "b"].into_iter().zip(Part::all(2)) {
        let leases = Leases::open(rig.db.clone(), "ghl-sync", replica.into(), ttl)
            .await
            .unwrap();
        let mut config = worker_config(&rig.ghl, Duration::from_millis(20), None);
        config.replicas = Some(leases);
        let worker = GhlSync::new(rig.store.clone(), rig.db.clone())
            .with_client(config)
            .worker()
            .unwrap();
        tasks.push(tokio::spawn(
            worker.run_part(part, std::future::pending::<()>()),
        ));
    }

    eventually("each location's contact in GHL", async || {
        locations
            .iter()
            .all(|location| rig.ghl.contact_by_phone(location.as_str(), PHONE).is_some())
            .then_some(())
    })
    .await;
    for task in &tasks {
        task.abort();
    }
    let tokens: Vec<(String, u16)> = rig
        .ghl
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/oauth/"))
        .map(|r| {
            let grant = r.body.as_ref().and_then(|b| b.get("grant_type").cloned());
            let what = match grant.as_ref().and_then(|g| g.as_str()) {
                Some(grant) => grant.to_owned(),
                None => r.path.clone(),
            };
            (what, r.status)
        })
        .collect();
    assert_eq!(
        tokens,
        [
            ("authorization_code".to_owned(), 200),
            ("refresh_token".to_owned(), 200),
            ("/oauth/locationToken".to_owned(), 200),
            ("/oauth/locationToken".to_owned(), 200),
        ],
        "the agency's token renewed once, by one replica, and each location's made from it"
    );
}
