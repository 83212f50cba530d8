//! The client side: every gRPC call whatsnap makes (the CLI, the gateway's webhooks, the
//! gateway forwarding to services elsewhere) carries a bearer token.

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

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

/// A channel whose calls carry a token.
pub type AuthedChannel = InterceptedService<Channel, Bearer>;

pub fn authed(channel: Channel, token: Option<&str>) -> AuthedChannel {
    InterceptedService::new(channel, Bearer::new(token))
}
