//! The JetStream store refuses to run where its guarantees would silently not hold.

use async_nats::jetstream::stream;
use whatsnap_eventstore::StoreError;
use whatsnap_eventstore::jetstream::{JetStreamConfig, JetStreamEventStore};
use whatsnap_testkit::TestNats;

#[tokio::test]
async fn a_stream_without_atomic_batches_or_immutability_is_refused() {
    let fixture = TestNats::new().await.unwrap();
    let client = async_nats::connect(&fixture.config.url).await.unwrap();
    // Someone created the stream by hand, with the defaults.
    async_nats::jetstream::new(client)
        .create_stream(stream::Config {
            name: fixture.config.stream_name.clone(),
            subjects: vec![format!("{}.>", fixture.config.subject_prefix)],
            ..Default::default()
        })
        .await
        .unwrap();

    let err = fixture.store().await.err().expect("the store must refuse");
    let err = err.downcast::<StoreError>().unwrap();
    let message = err.to_string();
    assert!(matches!(err, StoreError::Unsupported(_)), "{message}");
    for setting in [
        "allow_atomic_publish",
        "deny_delete",
        "deny_purge",
        "discard",
    ] {
        assert!(
            message.contains(setting),
            "{setting} not named in: {message}"
        );
    }
}

/// Debian's NATS 2.9 accepts the batch and expected-sequence headers and ignores them.
#[tokio::test]
async fn a_nats_server_older_than_2_12_is_refused() {
    let url = whatsnap_testkit::old_nats_url().await.unwrap();
    let err = JetStreamEventStore::connect(&JetStreamConfig::new(url))
        .await
        .err()
        .expect("the store must refuse an old server");
    assert!(matches!(err, StoreError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("2.12 or newer"), "{err}");
}
