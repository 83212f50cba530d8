//! ghl-sync against the fake GHL, on the embedded store: given a location connected with a
//! Private Integration Token and its company id, when the assignment service decides a
//! contact's owner, then the GHL contact has that owner, and a later decision replaces it; the
//! location's GHL users are kept as events, appended only when something changed.

use std::time::Duration;

use tonic::Request;
use whatsnap_events::{AggregateKind, Event, GhlAssignmentApplied, GhlContactLinked, StreamId};
use whatsnap_ghl_sync::users;
use whatsnap_proto::ghlsync::v1 as pb;
use whatsnap_proto::ghlsync::v1::ghl_sync_service_server::GhlSyncService;
use whatsnap_testkit::{FakeGhl, eventually};

mod common;

use common::{LOCATION, PHONE, Rig, location, user};

#[tokio::test]
async fn a_worker_woken_by_its_read_model_carries_work_to_ghl_without_waiting_for_its_poll() {
    // Polling once an hour, the worker could only act in time because the read model woke it.
    let rig = Rig::start_with(
        Some(Duration::from_secs(600)),
        Duration::from_secs(3600),
        true,
    )
    .await;
    rig.connect(FakeGhl::COMPANY_ID).await;
    let contact_id = rig.contact_messages().await;
    rig.assign(contact_id, "userAna").await;
    eventually("the GHL contact owned by Ana", async || {
        rig.owner_in_ghl().await.filter(|o| o == "userAna")
    })
    .await;
    // A later decision, once the queue was empty, wakes it too.
    rig.assign(contact_id, "userBruno").await;
    eventually("the GHL contact owned by Bruno", async || {
        rig.owner_in_ghl().await.filter(|o| o == "userBruno")
    })
    .await;
}

#[tokio::test]
async fn the_decided_owner_becomes_the_ghl_contacts_owner_and_a_later_decision_replaces_it() {
    let rig = Rig::start(Some(Duration::from_secs(600))).await;
    rig.connect(FakeGhl::COMPANY_ID).await;

    // Given a contact whose owner is decided before it crossed to GHL,
    let contact_id = rig.contact_messages().await;
    rig.assign(contact_id, "userAna").await;

    // then GHL's contact has that owner, set as it was created,
    let owner = eventually("the GHL contact owned by Ana", async || {
        rig.owner_in_ghl().await.filter(|o| o == "userAna")
    })
    .await;
    assert_eq!(owner, "userAna");
    let upserts = rig.requests("POST", "/contacts/upsert");
    assert_eq!(upserts.len(), 1, "one contact created");
    assert_eq!(upserts[0].as_ref().unwrap()["assignedTo"], "userAna");
    // and the decision leaves the queue through GhlAssignmentApplied.
    eventually("no assignment pending", async || {
        (rig.pending_assignments().await == 0).then_some(())
    })
    .await;
    let ghl_stream = StreamId::new(
        location(),
        AggregateKind::Ghl,
        format!("contact-{contact_id}"),
    )
    .unwrap();
    let applied: Vec<String> = rig
        .events(&ghl_stream)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::GhlAssignmentApplied(a) => Some(a.user_id),
            _ => None,
        })
        .collect();
    assert_eq!(applied, ["userAna"]);

    // When the assignment service later decides Bruno, GHL's contact changes owner by PUT.
    rig.assign(contact_id, "userBruno").await;
    eventually("the GHL contact owned by Bruno", async || {
        rig.owner_in_ghl().await.filter(|o| o == "userBruno")
    })
    .await;
    let puts = rig.requests("PUT", "/contacts/");
    assert_eq!(
        puts.last().unwrap().as_ref().unwrap()["assignedTo"],
        "userBruno"
    );
    eventually("no assignment pending", async || {
        (rig.pending_assignments().await == 0).then_some(())
    })
    .await;
    assert_eq!(
        rig.requests("POST", "/contacts/upsert").len(),
        1,
        "the contact was not created again"
    );
}

#[tokio::test]
async fn users_are_recorded_when_they_change_and_only_then() {
    let rig = Rig::start(Some(Duration::from_millis(100))).await;
    rig.ghl
        .add_user(LOCATION, user("userAna", "Ana Lima", false));
    rig.ghl
        .add_user(LOCATION, user("userBruno", "Bruno Souza", false));
    rig.connect(FakeGhl::COMPANY_ID).await;
    let stream = users::stream(&location());

    let synced = eventually("both users recorded", async || {
        let events = rig.events(&stream).await;
        (events.len() == 2).then_some(events)
    })
    .await;
    let names: Vec<_> = synced
        .iter()
        .filter_map(|e| match e {
            Event::GhlUserSynced(u) => Some((u.user_id.as_str(), u.deleted)),
            _ => None,
        })
        .collect();
    assert_eq!(names, [("userAna", false), ("userBruno", false)]);

    // Listings that change nothing append nothing.
    let searches = rig.requests("GET", "/users/search").len();
    eventually("three more listings", async || {
        (rig.requests("GET", "/users/search").len() >= searches + 3).then_some(())
    })
    .await;
    assert_eq!(rig.events(&stream).await.len(), 2);

    // Bruno deleted in GHL is recorded once, as deleted.
    rig.ghl
        .add_user(LOCATION, user("userBruno", "Bruno Souza", true));
    let last = eventually("Bruno recorded deleted", async || {
        let events = rig.events(&stream).await;
        (events.len() == 3).then(|| events[2].clone())
    })
    .await;
    assert!(matches!(last, Event::GhlUserSynced(u) if u.user_id == "userBruno" && u.deleted));
    let searches = rig.requests("GET", "/users/search").len();
    eventually("two more listings", async || {
        (rig.requests("GET", "/users/search").len() >= searches + 2).then_some(())
    })
    .await;
    assert_eq!(rig.events(&stream).await.len(), 3);
}

#[tokio::test]
async fn without_a_company_id_users_are_not_listed_but_contacts_still_cross() {
    let rig = Rig::start(Some(Duration::from_millis(100))).await;
    rig.ghl
        .add_user(LOCATION, user("userAna", "Ana Lima", false));
    rig.connect("").await;
    rig.contact_messages().await;
    eventually("the contact in GHL", async || {
        rig.ghl.contact_by_phone(LOCATION, PHONE)
    })
    .await;
    // A location connected with its company id is listed every round: two listings of it mean
    // the worker has been through the users of every connected location since.
    const OTHER: &str = "locAssignOther";
    rig.connect_location(OTHER, "companyOther").await;
    let other_listings = || {
        rig.ghl
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.starts_with("/users/search"))
            .filter(|r| r.location.as_deref() == Some(OTHER))
            .count()
    };
    eventually("two listings of the other location's users", async || {
        (other_listings() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        rig.requests("GET", "/users/search").len(),
        other_listings(),
        "the location without a company id was listed"
    );
    assert!(rig.events(&users::stream(&location())).await.is_empty());
}

#[tokio::test]
async fn a_company_id_that_is_not_one_word_is_refused() {
    let rig = Rig::start(Some(Duration::from_secs(600))).await;
    rig.ghl.add_private_token(LOCATION, "pit-x");
    let request = pb::ConnectPrivateTokenRequest {
        location_id: LOCATION.into(),
        token: "pit-x".into(),
        company_id: "not a company".into(),
    };
    let status = rig
        .sync
        .connect_private_token(Request::new(request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn an_applied_assignment_leaves_the_queue_unless_a_later_decision_chose_another_user() {
    let rig = Rig::start(None).await;
    let contact_id = rig.contact_messages().await;
    let ghl_stream = StreamId::new(
        location(),
        AggregateKind::Ghl,
        format!("contact-{contact_id}"),
    )
    .unwrap();
    let applied = |user_id: &str| -> Event {
        GhlAssignmentApplied {
            contact_id,
            ghl_contact_id: "ghlContact1".into(),
            user_id: user_id.into(),
        }
        .into()
    };
    rig.assign(contact_id, "userAna").await;
    eventually("Ana's assignment queued", async || {
        (rig.pending_assignments().await == 1).then_some(())
    })
    .await;
    rig.append(ghl_stream.clone(), vec![applied("userAna")])
        .await;
    eventually("Ana's assignment applied", async || {
        (rig.pending_assignments().await == 0).then_some(())
    })
    .await;

    // Bruno is decided while a worker still applies Ana: Ana's application does not settle
    // Bruno's decision. (The link after it marks when the projection has read that far.)
    rig.assign(contact_id, "userBruno").await;
    let link = GhlContactLinked {
        contact_id,
        ghl_contact_id: "ghlContact1".into(),
        tags: vec!["sales".into()],
        synced_through: 0,
        observed: None,
    };
    rig.append(ghl_stream, vec![applied("userAna"), link.into()])
        .await;
    eventually("the link projected", async || {
        (rig.status().await.pending_contact_upserts == 0).then_some(())
    })
    .await;
    assert_eq!(rig.pending_assignments().await, 1);
}
