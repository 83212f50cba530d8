//! `GET /metrics`: Prometheus metrics of how assignment performs (first-response times,
//! workload, reassignments, unassigned contacts), the figures of `whatsnap assignment report`
//! over the whole history, computed by the assignment service on each scrape.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tonic::transport::Channel;
use tracing::warn;
use whatsnap_proto::assignment::v1 as assignment;

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(assignment): State<Option<Channel>>) -> Response {
    let Some(channel) = assignment else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the assignment service is not reachable from this gateway (run it here or give --assignment-url)\n",
        )
            .into_response();
    };
    let mut request = tonic::Request::new(assignment::MetricsRequest {});
    whatsnap_telemetry::inject(&mut request);
    match assignment::assignment_service_client::AssignmentServiceClient::new(channel)
        .metrics(request)
        .await
    {
        Ok(metrics) => (
            [(header::CONTENT_TYPE, TEXT_FORMAT)],
            metrics.into_inner().text,
        )
            .into_response(),
        Err(status) => {
            warn!(code = ?status.code(), message = status.message(), "assignment metrics unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("assignment metrics unavailable: {}\n", status.message()),
            )
                .into_response()
        }
    }
}

/// The `/metrics` route, answered from the assignment service behind `assignment`.
pub fn routes(assignment: Option<Channel>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(assignment)
}
