//! The HTTP edge's limits, with tokio's paused clock: a request not answered within the timeout
//! gets a 503 (which Twilio and engines retry), and no more than `concurrency` requests are
//! handled at once, the others waiting their turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use tower::ServiceExt as _;
use whatsnap_gateway::{HttpLimits, limited};

fn request(path: &str) -> Request<Body> {
    Request::post(path).body(Body::empty()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_request_that_takes_too_long_is_answered_503() {
    let routes = Router::new()
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "done"
            }),
        )
        .route("/fast", post(|| async { "done" }));
    let limits = HttpLimits {
        timeout: Duration::from_secs(30),
        concurrency: 8,
    };
    let app = limited(routes, limits);
    let started = tokio::time::Instant::now();
    let slow = app.clone().oneshot(request("/slow")).await.unwrap();
    assert_eq!(slow.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    let fast = app.oneshot(request("/fast")).await.unwrap();
    assert_eq!(fast.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn no_more_requests_than_the_limit_are_handled_at_once() {
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (counting, highest) = (now.clone(), most.clone());
    let routes = Router::new().route(
        "/work",
        post(move || {
            let (now, most) = (counting.clone(), highest.clone());
            async move {
                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(at_once, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                "done"
            }
        }),
    );
    let app = limited(
        routes,
        HttpLimits {
            timeout: Duration::from_secs(30),
            concurrency: 2,
        },
    );
    let started = tokio::time::Instant::now();
    let replies =
        futures::future::join_all((0..6).map(|_| app.clone().oneshot(request("/work")))).await;
    for reply in replies {
        assert_eq!(reply.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(most.load(Ordering::SeqCst), 2);
    // Six one-second requests, two at a time.
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}
