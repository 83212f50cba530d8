//! The effect discipline in ghl-sync, against the fake GHL: work whose outcome the log records
//! is never done again, whatever the read model says; an intent without an outcome is looked
//! for at GHL before anything is posted again.

use whatsnap_events::{
    AggregateKind, EffectIntended, Event, GhlContactLinked, GhlMessagePosted,
    InboundMessageReceived, RecordedEvent, StreamId,
};
use whatsnap_testkit::{FakeGhl, eventually};

mod common;

use common::{LOCATION, PHONE, Rig, inbound, location};

fn posted_bodies(rig: &Rig, ghl_contact_id: &str) -> Vec<String> {
    rig.ghl
        .messages(ghl_contact_id)
        .into_iter()
        .filter_map(|m| m.message)
        .collect()
}

async fn ghl_events(rig: &Rig, stream: &StreamId) -> Vec<RecordedEvent> {
    rig.store.read_stream(stream, 1, usize::MAX).await.unwrap()
}

/// The projection has queued both messages, then stops (a restart, the read model behind the
/// log): the worker must take what the log says, not what the read model says.
async fn two_messages_queued_then_projection_stopped(
    rig: &Rig,
) -> (String, [(StreamId, InboundMessageReceived); 2]) {
    rig.connect(FakeGhl::COMPANY_ID).await;
    let contact_id = rig.contact_messages().await;
    let first = inbound("SMfirst", "first, already in GHL");
    let second = inbound("SMsecond", "second, still to post");
    for (stream, event) in [&first, &second] {
        rig.append(stream.clone(), vec![Event::from(event.clone())])
            .await;
    }
    eventually("both messages queued", async || {
        let pending = rig.status().await.pending_messages;
        (pending == 2).then_some(())
    })
    .await;
    rig.tasks[0].abort();
    // The GHL contact exists, linked in the log (the read model never saw the link).
    let ghl_contact_id = rig.ghl.add_contact(LOCATION, PHONE, Some("Maria Silva"));
    let link = GhlContactLinked {
        contact_id,
        ghl_contact_id: ghl_contact_id.clone(),
        tags: vec!["sales".into()],
        synced_through: u64::MAX,
        observed: None,
    };
    let contact_stream = StreamId::new(
        location(),
        AggregateKind::Ghl,
        format!("contact-{contact_id}"),
    )
    .unwrap();
    rig.append(contact_stream, vec![link.into()]).await;
    (ghl_contact_id, [first, second])
}

#[tokio::test]
async fn a_message_the_log_records_as_posted_is_not_posted_again_while_the_read_model_lags() {
    let rig = Rig::start(None).await;
    let (ghl_contact_id, [(first_stream, first), _]) =
        two_messages_queued_then_projection_stopped(&rig).await;
    // The first message's post is in the log (posted before a restart).
    let posted = GhlMessagePosted {
        message_id: first.message_id,
        ghl_message_id: "ghlMsgEarlier".into(),
        ghl_conversation_id: Some("ghlConvEarlier".into()),
    };
    rig.append(first_stream, vec![posted.into()]).await;

    // When the worker starts with the read model still listing both,
    let worker = rig.sync.worker().unwrap();
    let _task = tokio::spawn(worker.run(std::future::pending()));

    // then the second message crosses, after the first in queue order,
    eventually("the second message in GHL", async || {
        (posted_bodies(&rig, &ghl_contact_id).len() == 1).then_some(())
    })
    .await;
    // and the first was not posted again, nor was the contact created twice.
    assert_eq!(
        posted_bodies(&rig, &ghl_contact_id),
        vec!["second, still to post"]
    );
    assert!(rig.requests("POST", "/contacts/upsert").is_empty());
}

#[tokio::test]
async fn an_intent_without_an_outcome_is_found_at_ghl_and_recorded_without_posting_again() {
    let rig = Rig::start(None).await;
    let (ghl_contact_id, [(first_stream, first), (second_stream, _)]) =
        two_messages_queued_then_projection_stopped(&rig).await;
    // The first message was posted to GHL, but the process died before recording it: the log
    // holds the intent only.
    let message_at = first.received_at;
    let intent = EffectIntended {
        operation: "ghl.post_message".into(),
        subject_id: first.message_id,
        attempt: 1,
        key: Some(first.message_id.to_string()),
    };
    rig.append(first_stream.clone(), vec![intent.into()]).await;
    let ghl_message = rig
        .ghl
        .post_inbound_message(&ghl_contact_id, &first.body, message_at)
        .unwrap();

    let worker = rig.sync.worker().unwrap();
    let _task = tokio::spawn(worker.run(std::future::pending()));

    // Then the second crosses,
    eventually("the second message in GHL", async || {
        (posted_bodies(&rig, &ghl_contact_id).len() == 2).then_some(())
    })
    .await;
    // the first is in GHL once, and its post is recorded with GHL's id, found by looking.
    assert_eq!(
        posted_bodies(&rig, &ghl_contact_id),
        vec!["first, already in GHL", "second, still to post"]
    );
    let recorded: Vec<Event> = ghl_events(&rig, &first_stream)
        .await
        .iter()
        .map(|e| e.decode().unwrap())
        .collect();
    assert!(
        recorded
            .iter()
            .any(|e| matches!(e, Event::GhlMessagePosted(p) if p.ghl_message_id == ghl_message)),
        "{recorded:?}"
    );
    // The second had its intent recorded before its post, its outcome after.
    let second = eventually("the second post recorded", async || {
        let types: Vec<String> = ghl_events(&rig, &second_stream)
            .await
            .iter()
            .map(|e| e.event_type.clone())
            .collect();
        (types.len() == 3).then_some(types)
    })
    .await;
    assert_eq!(
        second,
        [
            "InboundMessageReceived",
            "EffectIntended",
            "GhlMessagePosted"
        ]
    );
}

#[tokio::test]
async fn a_message_ghl_keeps_refusing_is_set_aside_the_rest_moves_on_and_a_retry_posts_it() {
    use tonic::Request;
    use whatsnap_proto::ghlsync::v1 as pb;
    use whatsnap_proto::ghlsync::v1::ghl_sync_service_server::GhlSyncService;

    let rig = Rig::start(Some(std::time::Duration::from_secs(600))).await;
    rig.connect(FakeGhl::COMPANY_ID).await;
    rig.contact_messages().await;
    rig.ghl.refuse_messages_containing(Some(("refused", 403)));
    let (refused_stream, refused) = inbound("SMrefused", "one GHL refused");
    let (fine_stream, _) = inbound("SMfine", "one GHL takes");
    for (stream, event) in [
        (refused_stream, Event::from(refused.clone())),
        (
            fine_stream,
            Event::from(inbound("SMfine", "one GHL takes").1),
        ),
    ] {
        rig.append(stream, vec![event]).await;
    }

    // The message behind the refused one crosses,
    let contact = eventually("the second message in GHL", async || {
        let contact = rig.ghl.contact_by_phone(LOCATION, PHONE)?;
        (posted_bodies(&rig, &contact.id) == ["one GHL takes"]).then_some(contact)
    })
    .await;
    // and `ghl status` shows the refused one set aside, with GHL's answer.
    let status = eventually("the refused message set aside", async || {
        let status = rig.status().await;
        (!status.set_aside.is_empty() && status.pending_messages == 0).then_some(status)
    })
    .await;
    assert_eq!(status.set_aside.len(), 1, "{:?}", status.set_aside);
    let item = &status.set_aside[0];
    assert_eq!(item.kind, "message");
    assert_eq!(item.subject_id, refused.message_id.to_string());
    assert_eq!(item.http_status, 403);
    assert!(item.reason.contains("403"), "{}", item.reason);

    // Once GHL takes it, an operator's retry posts it, and nothing is set aside any more.
    rig.ghl.refuse_messages_containing(None);
    let retried = rig
        .sync
        .retry_set_aside(Request::new(pb::RetrySetAsideRequest {
            location_id: LOCATION.into(),
            kind: String::new(),
            subject_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.requeued, 1);
    eventually("the retried message in GHL", async || {
        (posted_bodies(&rig, &contact.id).len() == 2).then_some(())
    })
    .await;
    let mut bodies = posted_bodies(&rig, &contact.id);
    bodies.sort();
    assert_eq!(bodies, ["one GHL refused", "one GHL takes"]);
    eventually("nothing set aside or waiting", async || {
        let status = rig.status().await;
        (status.set_aside.is_empty() && status.pending_messages == 0).then_some(())
    })
    .await;
    // A retry of something that is not set aside says so.
    let missing = rig
        .sync
        .retry_set_aside(Request::new(pb::RetrySetAsideRequest {
            location_id: LOCATION.into(),
            kind: "message".into(),
            subject_id: refused.message_id.to_string(),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}
