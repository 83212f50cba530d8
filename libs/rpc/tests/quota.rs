//! Per-location quotas: each location has its own bucket, refilled with time (tokio's paused
//! clock here); the layer charges every method of the API whose request names a location,
//! refuses the call over quota before the service sees it, and hands the rest on intact.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use prost::Message as _;
use tonic::body::Body;
use tower::{Layer as _, Service as _, ServiceExt as _};
use whatsnap_proto::contacts::v1::GetContactRequest;
use whatsnap_rpc::quota::{
    LocatedMethods, LocationQuotaLayer, LocationQuotas, Quota, string_field,
};

const GET_CONTACT: &str = "/whatsnap.contacts.v1.ContactsService/GetContact";

fn quota() -> Quota {
    Quota {
        per_second: 1.0,
        burst: 3,
    }
}

#[tokio::test(start_paused = true)]
async fn each_location_has_its_own_bucket_that_refills_with_time() {
    let quotas = LocationQuotas::new(quota());
    for _ in 0..3 {
        quotas.take("a").unwrap();
    }
    let wait = quotas.take("a").unwrap_err();
    assert_eq!(wait, Duration::from_secs(1));
    quotas.take("b").unwrap();
    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(quotas.take("a").is_err());
    tokio::time::advance(Duration::from_millis(1)).await;
    quotas.take("a").unwrap();
    // Refills never exceed the burst.
    tokio::time::advance(Duration::from_secs(3600)).await;
    for _ in 0..3 {
        quotas.take("a").unwrap();
    }
    assert!(quotas.take("a").is_err());
}

#[test]
fn every_method_whose_request_names_a_location_is_known() {
    let methods =
        LocatedMethods::from_descriptor_sets(&[whatsnap_proto::FILE_DESCRIPTOR_SET]).unwrap();
    // Every service's requests but the log's ReadStream/Tail and the operator's name one.
    assert!(methods.len() >= 30, "{} methods", methods.len());
    let message = GetContactRequest {
        location_id: "loc-1".into(),
        phone: "+14155550100".into(),
    }
    .encode_to_vec();
    assert_eq!(string_field(&message, 1).as_deref(), Some("loc-1"));
    assert_eq!(string_field(&message, 9), None);
    assert_eq!(
        string_field(&[0xff, 0xff, 0xff], 1),
        None,
        "garbage reads as none"
    );
}

/// A gRPC request for `path` carrying `message`, framed as on the wire.
fn grpc_request(path: &str, message: &[u8]) -> http::Request<Body> {
    let mut framed = vec![0];
    framed.extend((message.len() as u32).to_be_bytes());
    framed.extend(message);
    http::Request::builder()
        .method("POST")
        .uri(format!("http://whatsnap{path}"))
        .header("content-type", "application/grpc")
        .body(Body::new(http_body_util::Full::new(Bytes::from(framed))))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn calls_over_a_locations_quota_are_refused_before_the_service_and_others_pass_intact() {
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let inner = tower::service_fn(move |request: http::Request<Body>| {
        let counter = counter.clone();
        async move {
            if request.uri().path() == GET_CONTACT {
                // The service reads the request as it was sent.
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let message = GetContactRequest::decode(&body[5..]).unwrap();
                assert!(message.location_id.starts_with("loc-"));
                counter.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        }
    });
    let layer = LocationQuotaLayer::new(
        Arc::new(LocationQuotas::new(quota())),
        LocatedMethods::from_descriptor_sets(&[whatsnap_proto::FILE_DESCRIPTOR_SET]).unwrap(),
    );
    let mut service = layer.layer(inner);
    let call = |location: &str| {
        let message = GetContactRequest {
            location_id: location.into(),
            phone: "+14155550100".into(),
        };
        grpc_request(GET_CONTACT, &message.encode_to_vec())
    };
    for _ in 0..3 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(call("loc-1"))
            .await
            .unwrap();
        assert!(response.headers().get("grpc-status").is_none());
    }
    let refused = service
        .ready()
        .await
        .unwrap()
        .call(call("loc-1"))
        .await
        .unwrap();
    let status = tonic::Status::from_header_map(refused.headers()).unwrap();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        served.load(Ordering::SeqCst),
        3,
        "the refused call never reached the service"
    );
    service
        .ready()
        .await
        .unwrap()
        .call(call("loc-2"))
        .await
        .unwrap();
    // A method without a location (health, reflection) is never charged.
    for _ in 0..10 {
        let health = grpc_request("/grpc.health.v1.Health/Check", &[]);
        let response = service.ready().await.unwrap().call(health).await.unwrap();
        assert!(response.headers().get("grpc-status").is_none());
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    service
        .ready()
        .await
        .unwrap()
        .call(call("loc-1"))
        .await
        .unwrap();
    assert_eq!(served.load(Ordering::SeqCst), 5);
}

/// A read database on PostgreSQL, as a distributed gateway replica opens it.
async fn postgres_pool(pg: &whatsnap_testkit::TestPostgres) -> whatsnap_rpc::ReadDb {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(&pg.url_with_schema())
        .await
        .unwrap()
}

/// On the distributed backend every gateway replica charges the same bucket: two replicas
/// together get a location's burst once, not once each; another location is not held back; and
/// the bucket refills on the database's clock, never beyond the burst.
#[tokio::test]
async fn gateway_replicas_share_a_location_s_bucket() {
    use whatsnap_rpc::quota::{Quotas as _, SharedQuotas};
    let pg = whatsnap_testkit::TestPostgres::new().await.unwrap();
    // One call per 100 s: nothing refills while the test runs.
    let quota = Quota {
        per_second: 0.01,
        burst: 3,
    };
    let first = SharedQuotas::open(postgres_pool(&pg).await, quota)
        .await
        .unwrap();
    let second = SharedQuotas::open(postgres_pool(&pg).await, quota)
        .await
        .unwrap();
    first.charge("a").await.unwrap();
    second.charge("a").await.unwrap();
    first.charge("a").await.unwrap();
    let wait = second.charge("a").await.unwrap_err();
    assert!(
        wait > Duration::from_secs(90) && wait <= Duration::from_secs(100),
        "{wait:?}"
    );
    assert!(first.charge("a").await.is_err());
    second.charge("b").await.unwrap();

    // 250 s later by the database's clock: two calls are back (the third is still 50 s away).
    let earlier = |seconds: u32| {
        format!(
            "UPDATE api_location_quotas SET at = at - interval '{seconds} seconds' WHERE location_id = 'a'"
        )
    };
    sqlx::query(&earlier(250)).execute(&pg.pool).await.unwrap();
    first.charge("a").await.unwrap();
    second.charge("a").await.unwrap();
    assert!(first.charge("a").await.is_err());
    // A day later: the burst, and no more.
    sqlx::query(&earlier(86_400))
        .execute(&pg.pool)
        .await
        .unwrap();
    for _ in 0..3 {
        second.charge("a").await.unwrap();
    }
    assert!(first.charge("a").await.is_err());
}
