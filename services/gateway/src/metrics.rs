//! `GET /metrics`: the process's Prometheus metrics (log head, projection lag, GHL allowance,
//! queue depths, latencies; see `whatsnap_telemetry::metrics`) and, when the assignment service
//! is reachable, how assignment performs (first-response times, workload, reassignments,
//! unassigned contacts), computed by that service on each scrape.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::warn;
use whatsnap_auth::Access;
use whatsnap_auth::AuthedChannel as Channel;
use whatsnap_auth::Authenticator;
use whatsnap_proto::assignment::v1 as assignment;
use whatsnap_telemetry::metrics::TEXT_FORMAT;

/// Who may scrape, and where the assignment figures come from.
#[derive(Clone)]
pub struct MetricsConfig {
    pub tokens: Authenticator,
    /// The assignment service; without it `/metrics` holds the process's metrics alone.
    pub assignment: Option<Channel>,
}

/// The figures name every location: an admin token of every location is needed
/// (`authorization: Bearer …`, the Prometheus scrape config's `authorization` section).
async fn metrics(State(config): State<MetricsConfig>, headers: axum::http::HeaderMap) -> Response {
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(credential) = credential else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "an admin API token is needed: authorization: Bearer <token>\n",
        )
            .into_response();
    };
    let caller = match config.tokens.caller(credential.trim()).await {
        Ok(caller) => caller,
        Err(status) if status.code() == tonic::Code::Unavailable => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", status.message()),
            )
                .into_response();
        }
        Err(status) => {
            return (StatusCode::UNAUTHORIZED, format!("{}\n", status.message())).into_response();
        }
    };
    if let Err(status) = caller.check_agency(Access::Read) {
        return (StatusCode::FORBIDDEN, format!("{}\n", status.message())).into_response();
    }
    let mut text = whatsnap_telemetry::metrics::global().render().await;
    if let Some(channel) = config.assignment {
        match assignment_metrics(channel, credential).await {
            Ok(figures) => text.push_str(&figures),
            Err(status) => {
                warn!(code = ?status.code(), message = status.message(), "assignment metrics unavailable");
                text.push_str(&format!(
                    "# assignment metrics unavailable: {}\n",
                    status.message().replace('\n', " ")
                ));
            }
        }
    }
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response()
}

/// The assignment service's figures; the call carries the scraper's token, so the one
/// authorization layer decides there too.
async fn assignment_metrics(channel: Channel, credential: &str) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(assignment::MetricsRequest {});
    let value = format!("Bearer {credential}")
        .parse()
        .map_err(|_| tonic::Status::unauthenticated("the token is not valid ASCII"))?;
    request.metadata_mut().insert("authorization", value);
    whatsnap_telemetry::inject(&mut request);
    let reply = assignment::assignment_service_client::AssignmentServiceClient::new(channel)
        .metrics(request)
        .await?;
    Ok(reply.into_inner().text)
}

/// The `/metrics` route.
pub fn routes(config: MetricsConfig) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(config)
}
