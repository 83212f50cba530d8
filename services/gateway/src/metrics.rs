//! `GET /metrics`: Prometheus metrics of how assignment performs (first-response times,
//! workload, reassignments, unassigned contacts), the figures of `whatsnap assignment report`
//! over the whole history, computed by the assignment service on each scrape.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::warn;
use whatsnap_auth::AuthedChannel as Channel;
use whatsnap_proto::assignment::v1 as assignment;

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Per-location figures: an agency admin's token (`authorization: Bearer …`, the Prometheus
/// scrape config's `authorization` section) is needed; the call to the assignment service
/// carries it, so the one authorization layer decides.
async fn metrics(
    State(assignment): State<Option<Channel>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some(credential) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| tonic::metadata::AsciiMetadataValue::try_from(v.as_bytes()).ok())
    else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "an admin API token is needed: authorization: Bearer <token>\n",
        )
            .into_response();
    };
    let Some(channel) = assignment else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the assignment service is not reachable from this gateway (run it here or give --assignment-url)\n",
        )
            .into_response();
    };
    let mut request = tonic::Request::new(assignment::MetricsRequest {});
    request.metadata_mut().insert("authorization", credential);
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
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            (StatusCode::UNAUTHORIZED, format!("{}\n", status.message())).into_response()
        }
        Err(status) if status.code() == tonic::Code::PermissionDenied => {
            (StatusCode::FORBIDDEN, format!("{}\n", status.message())).into_response()
        }
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
