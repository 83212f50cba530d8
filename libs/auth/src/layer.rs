//! The authorization layer every gRPC server runs: the caller's credential, then the RPC's rule
//! from [`crate::policy`], then the location the request names, all before a service sees it.

use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Full};
use tonic::Status;
use tonic::body::Body;
use whatsnap_events::{LocationId, StreamId};

use crate::caller::{Access, Caller, Role};
use crate::policy::{Policy, Resolved, Target, string_field};
use crate::tokens::Authenticator;

/// The tower layer: put it on a tonic server with `Server::builder().layer(...)`.
#[derive(Clone)]
pub struct Authorization {
    policy: Arc<Policy>,
    authenticator: Authenticator,
}

impl Authorization {
    pub fn new(policy: Policy, authenticator: Authenticator) -> Self {
        Self {
            policy: Arc::new(policy),
            authenticator,
        }
    }

    /// The request, with its [`Caller`] in its extensions, if the caller may make it.
    async fn admit(&self, request: http::Request<Body>) -> Result<http::Request<Body>, Status> {
        let path = request.uri().path().to_owned();
        let Some(Resolved { rule, field }) = self.policy.resolve(&path) else {
            return Err(Status::permission_denied(format!(
                "{path} is not in whatsnap's authorization table"
            )));
        };
        if rule.target == Target::Open {
            return Ok(request);
        }
        let caller = self
            .authenticator
            .caller(bearer(request.headers())?)
            .await?;
        let (mut parts, body) = request.into_parts();
        let body = match (rule.target, field) {
            (Target::Agency, _) => {
                caller.check_agency(rule.access)?;
                body
            }
            (_, Some(number)) => {
                let bytes = body
                    .collect()
                    .await
                    .map_err(|_| Status::cancelled("the request did not arrive whole"))?
                    .to_bytes();
                if let Some(location) = location(&bytes, number, rule.target)? {
                    caller.check(rule.access, &location)?;
                } else {
                    no_write_for_readers(&caller, rule.access)?;
                }
                Body::new(Full::new(bytes))
            }
            _ => {
                no_write_for_readers(&caller, rule.access)?;
                body
            }
        };
        // whatsnap's own services (the gateway's webhooks, the workers) are not charged to a
        // location's API quota: that is for the people and programs calling the API.
        if caller.role == Role::Service {
            parts.extensions.insert(whatsnap_rpc::quota::Unmetered);
        }
        parts.extensions.insert(caller);
        Ok(http::Request::from_parts(parts, body))
    }
}

fn no_write_for_readers(caller: &Caller, access: Access) -> Result<(), Status> {
    match (caller.role, access) {
        (Role::ReadOnly, Access::Write) => Err(Status::permission_denied(
            "a read-only token cannot change anything",
        )),
        _ => Ok(()),
    }
}

/// The token of `authorization: Bearer <token>`; UNAUTHENTICATED without one.
fn bearer(headers: &http::HeaderMap) -> Result<&str, Status> {
    let missing = || {
        Status::unauthenticated(
            "no API token: send `authorization: Bearer <token>` (whatsnap tokens --help)",
        )
    };
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    match scheme.eq_ignore_ascii_case("bearer") {
        true => Ok(token.trim()),
        false => Err(missing()),
    }
}

/// The location a gRPC request names in field `number`; `None` for an empty field where the
/// rule lets it mean "the caller's own".
fn location(frame: &[u8], number: u32, target: Target) -> Result<Option<LocationId>, Status> {
    let malformed = || Status::invalid_argument("the request is not one uncompressed gRPC message");
    let (&compressed, rest) = frame.split_first().ok_or_else(malformed)?;
    let length = rest
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(malformed)?;
    let message = rest.get(4..4 + length).ok_or_else(malformed)?;
    if compressed != 0 {
        return Err(malformed());
    }
    let value = string_field(message, number).ok_or_else(malformed)?;
    match (target, value.is_empty()) {
        (Target::LocationOrMine(_), true) => Ok(None),
        (Target::Stream(_), _) => value
            .parse::<StreamId>()
            .map(|stream| Some(stream.location().clone()))
            .map_err(|e| Status::invalid_argument(e.to_string())),
        (_, true) => Err(Status::invalid_argument("location_id is required")),
        (_, false) => LocationId::parse(value)
            .map(Some)
            .map_err(|e| Status::invalid_argument(e.to_string())),
    }
}

impl<S> tower::Layer<S> for Authorization {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            authorization: self.clone(),
        }
    }
}

/// A service behind the [`Authorization`] layer.
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    authorization: Authorization,
}

impl<S, ResBody> tower::Service<http::Request<Body>> for Authorize<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone is the one that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authorization = self.authorization.clone();
        Box::pin(async move {
            match authorization.admit(request).await {
                Ok(request) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
