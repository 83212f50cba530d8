//! The client side: every gRPC call whatsnap makes (the CLI, the gateway's webhooks, the
//! gateway forwarding to services elsewhere) carries a bearer token.

use tonic::body::Body;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tower::util::BoxCloneSyncService;

/// Adds `authorization: Bearer <token>` to calls that do not carry one already (a call the
/// gateway forwards keeps its caller's).
#[derive(Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    /// A bearer of `token`; none for an empty one (the server then refuses the call with
    /// UNAUTHENTICATED, saying why).
    pub fn new(token: Option<&str>) -> Self {
        Self(
            token
                .filter(|t| !t.trim().is_empty())
                .and_then(|t| MetadataValue::try_from(format!("Bearer {}", t.trim())).ok()),
        )
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0
            && !request.metadata().contains_key("authorization")
        {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Where a client's calls go: a connection to a gRPC server, or a gRPC server's services in
/// this very process (see [`authed_in_process`]).
/// Calls in process never fail as a transport does: their error type is the connection's.
pub type Transport =
    BoxCloneSyncService<http::Request<Body>, http::Response<Body>, tonic::transport::Error>;

/// A channel whose calls carry a token.
pub type AuthedChannel = InterceptedService<Transport, Bearer>;

/// Calls over `channel`, a connection to a gRPC server.
pub fn authed(channel: Channel, token: Option<&str>) -> AuthedChannel {
    InterceptedService::new(BoxCloneSyncService::new(channel), Bearer::new(token))
}

/// Calls handed to `server`, the services of this process with the layers its gRPC server puts
/// them behind: no connection, no HTTP/2, the same checks. The messages are still encoded, so
/// the services cannot tell such a call from one over the network.
pub fn authed_in_process(server: Transport, token: Option<&str>) -> AuthedChannel {
    InterceptedService::new(server, Bearer::new(token))
}
