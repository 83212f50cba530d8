//! The outbox against a real (embedded) event store and a scripted third party: what is
//! recorded is never called again, an intent without an outcome is reconciled before any new
//! call, and a call that certainly did not reach the third party is not reconciled.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use uuid::Uuid;
use whatsnap_effects::{Effect, EffectError, OpenIntent, Outbox, Performed, Recorded, Subject};
use whatsnap_events::{
    AggregateKind, EffectIntended, Event, EventMetadata, GhlMessagePosted, LocationId, NewEvent,
    StreamId,
};
use whatsnap_eventstore::{EventStore, ExpectedVersion};
use whatsnap_testkit::TestSqlite;

/// A third party that counts its calls and look-ups, answers as scripted.
#[derive(Default)]
struct Scripted {
    calls: AtomicUsize,
    lookups: AtomicUsize,
    /// What a look-up finds.
    has_it: Option<&'static str>,
    /// The call fails: `Some(true)` certainly unsent, `Some(false)` maybe sent.
    fails: Option<bool>,
}

#[async_trait]
impl Effect for Scripted {
    type Output = String;
    type Error = bool;

    fn recorded(&self, history: &[Recorded]) -> Option<String> {
        history.iter().find_map(|(_, e)| match e {
            Event::GhlMessagePosted(p) => Some(p.ghl_message_id.clone()),
            _ => None,
        })
    }

    fn settles(&self, event: &Event) -> bool {
        matches!(event, Event::GhlMessagePosted(_))
    }

    async fn reconcile(&self, _: &OpenIntent) -> Result<Option<String>, bool> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        Ok(self.has_it.map(str::to_owned))
    }

    async fn call(&self) -> Result<String, bool> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.fails {
            Some(unsent) => Err(unsent),
            None => Ok("ghlNew".into()),
        }
    }

    fn unsent(&self, error: &bool) -> bool {
        *error
    }

    fn outcome(&self, id: &String) -> Event {
        Event::from(GhlMessagePosted {
            message_id: Uuid::nil(),
            ghl_message_id: id.clone(),
            ghl_conversation_id: None,
        })
    }
}

struct Rig {
    _sqlite: TestSqlite,
    store: Arc<dyn EventStore>,
    outbox: Outbox,
    subject: Subject,
}

impl Rig {
    async fn new() -> Self {
        let sqlite = TestSqlite::new().unwrap();
        let store: Arc<dyn EventStore> = Arc::new(sqlite.store().await.unwrap());
        let location = LocationId::parse("locOutbox").unwrap();
        let message_id = Uuid::now_v7();
        let subject = Subject {
            stream: StreamId::for_uuid(location, AggregateKind::Message, message_id),
            operation: "ghl.post_message",
            subject_id: message_id,
            key: None,
            metadata: EventMetadata::new_correlation(),
        };
        Self {
            _sqlite: sqlite,
            outbox: Outbox::new(store.clone()),
            store,
            subject,
        }
    }

    async fn append(&self, event: Event) {
        self.store
            .append(
                &self.subject.stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(&event, EventMetadata::new_correlation())],
            )
            .await
            .unwrap();
    }

    async fn types(&self) -> Vec<String> {
        self.store
            .read_stream(&self.subject.stream, 1, usize::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    fn intent(&self) -> Event {
        Event::from(EffectIntended {
            operation: self.subject.operation.into(),
            subject_id: self.subject.subject_id,
            attempt: 1,
            key: None,
        })
    }
}

#[tokio::test]
async fn a_first_call_records_its_intent_before_and_its_outcome_after() {
    let rig = Rig::new().await;
    let third = Scripted::default();
    let done = rig.outbox.perform(&rig.subject, &third).await.unwrap();
    assert_eq!(done, Performed::Called("ghlNew".into()));
    assert_eq!(rig.types().await, ["EffectIntended", "GhlMessagePosted"]);
    assert_eq!(third.lookups.load(Ordering::SeqCst), 0);

    // Asked again, it calls nothing.
    let again = rig.outbox.perform(&rig.subject, &third).await.unwrap();
    assert_eq!(again, Performed::AlreadyDone("ghlNew".into()));
    assert_eq!(third.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_intent_without_an_outcome_found_at_the_third_party_is_recorded_not_called_again() {
    let rig = Rig::new().await;
    rig.append(rig.intent()).await;
    let third = Scripted {
        has_it: Some("ghlEarlier"),
        ..Scripted::default()
    };
    let done = rig.outbox.perform(&rig.subject, &third).await.unwrap();
    assert_eq!(done, Performed::Reconciled("ghlEarlier".into()));
    assert_eq!(third.calls.load(Ordering::SeqCst), 0);
    assert_eq!(rig.types().await, ["EffectIntended", "GhlMessagePosted"]);
}

#[tokio::test]
async fn an_intent_the_third_party_has_no_trace_of_is_called_under_the_same_intent() {
    let rig = Rig::new().await;
    rig.append(rig.intent()).await;
    let third = Scripted::default();
    let done = rig.outbox.perform(&rig.subject, &third).await.unwrap();
    assert_eq!(done, Performed::Called("ghlNew".into()));
    assert_eq!(third.lookups.load(Ordering::SeqCst), 1);
    assert_eq!(rig.types().await, ["EffectIntended", "GhlMessagePosted"]);
}

#[tokio::test]
async fn a_call_that_may_have_reached_the_third_party_is_looked_for_before_the_next_try() {
    let rig = Rig::new().await;
    let maybe_sent = Scripted {
        fails: Some(false),
        ..Scripted::default()
    };
    let err = rig
        .outbox
        .perform(&rig.subject, &maybe_sent)
        .await
        .unwrap_err();
    assert!(matches!(err, EffectError::Call(false)));
    // The next try (the call went through after all) finds it and calls nothing.
    let found = Scripted {
        has_it: Some("ghlTimedOut"),
        ..Scripted::default()
    };
    let done = rig.outbox.perform(&rig.subject, &found).await.unwrap();
    assert_eq!(done, Performed::Reconciled("ghlTimedOut".into()));
    assert_eq!(found.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_call_refused_outright_is_tried_again_without_a_look_up() {
    let rig = Rig::new().await;
    let refused = Scripted {
        fails: Some(true),
        ..Scripted::default()
    };
    assert!(rig.outbox.perform(&rig.subject, &refused).await.is_err());
    let third = Scripted::default();
    let done = rig.outbox.perform(&rig.subject, &third).await.unwrap();
    assert_eq!(done, Performed::Called("ghlNew".into()));
    assert_eq!(third.lookups.load(Ordering::SeqCst), 0);
    // One intent covered both tries.
    assert_eq!(rig.types().await, ["EffectIntended", "GhlMessagePosted"]);
}
