//! Per-location request quotas on the gRPC API: a token bucket per location, refilled at a
//! steady rate up to a burst, and one tower layer ([`LocationQuotaLayer`]) in front of every
//! service of the process that charges each call to the location it names. A call over its
//! location's quota is refused with `ResourceExhausted`, a `retry-after` (seconds) in its
//! metadata and the wait in its message, and never reaches the service.
//!
//! The layer finds a call's location without knowing the service: the file descriptor set of
//! the API tells, for each method, the field number of its request's `location_id`, and the
//! field is read from the request's bytes. A new RPC whose request has a `location_id` is
//! counted with no change here; one without (the health check, reflection, an operator
//! command across locations) is not. Client-streaming methods are passed through unread.
//!
//! On the embedded backend the buckets live in the process ([`LocationQuotas`], a hand-written
//! bucket over tokio's clock, so tests drive it with paused time). On the distributed backend
//! they are rows of the PostgreSQL read database ([`SharedQuotas`]), taken from in one
//! statement on the database's clock, so every gateway replica charges the same bucket and a
//! location gets its quota however many replicas serve it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use prost::Message as _;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;

/// How many calls a location may make: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            per_second: 50.0,
            burst: 200,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every location this process has served.
#[derive(Debug)]
pub struct LocationQuotas {
    quota: Quota,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets kept before full ones (locations idle long enough to have refilled) are dropped.
const KEPT_BUCKETS: usize = 10_000;

impl LocationQuotas {
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            buckets: Mutex::default(),
        }
    }

    /// Takes one call from `location`'s bucket, or says how long until one is there.
    pub fn take(&self, location: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let burst = f64::from(self.quota.burst.max(1));
        let rate = self.quota.per_second.max(f64::MIN_POSITIVE);
        let mut buckets = self.buckets.lock().expect("quota lock");
        if buckets.len() >= KEPT_BUCKETS {
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(location.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refilled = now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refilled).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

/// Where the layer takes a location's calls from.
#[async_trait::async_trait]
pub trait Quotas: Send + Sync + std::fmt::Debug {
    /// Takes one call from `location`'s bucket, or says how long until one is there.
    async fn charge(&self, location: &str) -> Result<(), Duration>;
}

#[async_trait::async_trait]
impl Quotas for LocationQuotas {
    async fn charge(&self, location: &str) -> Result<(), Duration> {
        self.take(location)
    }
}

/// Buckets every process shares, in PostgreSQL: one row per location, refilled and taken from
/// in one statement on the database's clock (so the replicas' clocks do not matter). While the
/// database cannot answer, calls are charged to this process's own buckets instead: a quota
/// protects the services, it is no reason to refuse every call.
#[derive(Debug)]
pub struct SharedQuotas {
    quota: Quota,
    db: crate::ReadDb,
    /// This process's buckets, for when the database fails.
    fallback: LocationQuotas,
    /// Whether the calls are counted by `fallback` now (said once per outage in the log).
    degraded: std::sync::atomic::AtomicBool,
}

const CREATE_SHARED: &str = "CREATE TABLE IF NOT EXISTS api_location_quotas (\
     location_id TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, at TIMESTAMPTZ NOT NULL)";

/// Refills the bucket to now, at most to the burst, and takes one call if one is there; a row
/// comes back only when the call was taken.
const TAKE_SHARED: &str = "INSERT INTO api_location_quotas AS q (location_id, tokens, at) \
     VALUES ($1, $2 - 1, now()) ON CONFLICT (location_id) DO UPDATE SET \
     tokens = LEAST($2, q.tokens + EXTRACT(EPOCH FROM now() - q.at)::float8 * $3) - 1, at = now() \
     WHERE LEAST($2, q.tokens + EXTRACT(EPOCH FROM now() - q.at)::float8 * $3) >= 1 \
     RETURNING tokens";

/// How many calls the bucket holds now (after its refill), for the wait of a refused call.
const PEEK_SHARED: &str = "SELECT LEAST($2, tokens + EXTRACT(EPOCH FROM now() - at)::float8 * $3) \
     FROM api_location_quotas WHERE location_id = $1";

impl SharedQuotas {
    /// The shared buckets in `db` (PostgreSQL), created if need be.
    pub async fn open(db: crate::ReadDb, quota: Quota) -> sqlx::Result<Self> {
        sqlx::query(CREATE_SHARED).execute(&db).await?;
        Ok(Self {
            quota,
            db,
            fallback: LocationQuotas::new(quota),
            degraded: Default::default(),
        })
    }

    async fn try_charge(&self, location: &str) -> sqlx::Result<Result<(), Duration>> {
        let burst = f64::from(self.quota.burst.max(1));
        let rate = self.quota.per_second.max(f64::MIN_POSITIVE);
        let taken: Option<f64> = sqlx::query_scalar(TAKE_SHARED)
            .bind(location)
            .bind(burst)
            .bind(rate)
            .fetch_optional(&self.db)
            .await?;
        if taken.is_some() {
            return Ok(Ok(()));
        }
        let held: Option<f64> = sqlx::query_scalar(PEEK_SHARED)
            .bind(location)
            .bind(burst)
            .bind(rate)
            .fetch_optional(&self.db)
            .await?;
        let missing = (1.0 - held.unwrap_or(0.0)).max(0.0);
        Ok(Err(Duration::from_secs_f64(missing / rate)))
    }
}

#[async_trait::async_trait]
impl Quotas for SharedQuotas {
    async fn charge(&self, location: &str) -> Result<(), Duration> {
        use std::sync::atomic::Ordering;
        match self.try_charge(location).await {
            Ok(charged) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("shared request quotas answer again");
                }
                charged
            }
            Err(err) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %err, "shared request quotas unavailable; this process counts calls itself until they answer");
                }
                self.fallback.take(location)
            }
        }
    }
}

/// The refusal of a call over its location's quota.
pub fn exhausted(location: &str, wait: Duration) -> Status {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut status = Status::resource_exhausted(format!(
        "location {location} is over its request quota: try again in {seconds} s"
    ));
    status.metadata_mut().insert(
        "retry-after",
        seconds
            .to_string()
            .parse()
            .expect("digits are valid metadata"),
    );
    status
}

/// For each gRPC path (`/package.Service/Method`), the field number of its request's
/// `location_id`; methods without one, and client-streaming ones, are absent.
#[derive(Debug, Clone, Default)]
pub struct LocatedMethods(Arc<HashMap<String, u32>>);

impl LocatedMethods {
    /// Reads the methods of every service in encoded file descriptor sets.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut located = HashMap::new();
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(*set)?;
            let mut location_fields = HashMap::new();
            for file in &set.file {
                for message in &file.message_type {
                    let field = message
                        .field
                        .iter()
                        .find(|f| f.name() == "location_id")
                        .map(|f| f.number() as u32);
                    if let Some(number) = field {
                        location_fields
                            .insert(format!(".{}.{}", file.package(), message.name()), number);
                    }
                }
            }
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        if method.client_streaming() {
                            continue;
                        }
                        if let Some(number) = location_fields.get(method.input_type()) {
                            let path =
                                format!("/{}.{}/{}", file.package(), service.name(), method.name());
                            located.insert(path, *number);
                        }
                    }
                }
            }
        }
        Ok(Self(Arc::new(located)))
    }

    fn field_of(&self, path: &str) -> Option<u32> {
        self.0.get(path).copied()
    }

    /// How many methods name a location.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The string in field `number` of a protobuf message, if it is there and is UTF-8.
pub fn string_field(mut message: &[u8], number: u32) -> Option<String> {
    while !message.is_empty() {
        let key = prost::encoding::decode_varint(&mut message).ok()?;
        let (field, wire_type) = ((key >> 3) as u32, key & 7);
        let skip = match wire_type {
            0 => {
                prost::encoding::decode_varint(&mut message).ok()?;
                0
            }
            1 => 8,
            2 => {
                let len =
                    usize::try_from(prost::encoding::decode_varint(&mut message).ok()?).ok()?;
                if field == number {
                    let value = message.get(..len)?;
                    return String::from_utf8(value.to_vec()).ok();
                }
                len
            }
            5 => 4,
            _ => return None,
        };
        message = message.get(skip..)?;
    }
    None
}

/// The first message of a gRPC request body (uncompressed), or `None`.
fn first_message(body: &[u8]) -> Option<&[u8]> {
    let (&compressed, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    (compressed == 0).then(|| rest.get(4..4 + len)).flatten()
}

/// The largest request body read for its location; a bigger one is refused. Engines' webhooks
/// carry received files inline (up to the gateway's 24 MiB), so this is above that.
const MAX_READ_BYTES: usize = 32 * 1024 * 1024 + 5;

/// Marks a request that no location's quota is charged for (whatsnap's own services calling
/// each other), set in its extensions by the authorization layer in front of the quotas.
#[derive(Debug, Clone, Copy)]
pub struct Unmetered;

/// Charges every call that names a location to that location's quota.
#[derive(Debug, Clone)]
pub struct LocationQuotaLayer {
    quotas: Arc<dyn Quotas>,
    methods: LocatedMethods,
}

impl LocationQuotaLayer {
    pub fn new(quotas: Arc<dyn Quotas>, methods: LocatedMethods) -> Self {
        Self { quotas, methods }
    }
}

impl<S> tower::Layer<S> for LocationQuotaLayer {
    type Service = LocationQuota<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LocationQuota {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LocationQuota<S> {
    inner: S,
    layer: LocationQuotaLayer,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for LocationQuota<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(field) = self
            .layer
            .methods
            .field_of(request.uri().path())
            .filter(|_| request.extensions().get::<Unmetered>().is_none())
        else {
            return Box::pin(self.inner.call(request));
        };
        // The service that was made ready answers this call; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let quotas = self.layer.quotas.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes: Bytes = match http_body_util::Limited::new(body, MAX_READ_BYTES)
                .collect()
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    let status = Status::resource_exhausted("the request is too large to read");
                    return Ok(status.into_http());
                }
            };
            let location = first_message(&bytes).and_then(|m| string_field(m, field));
            if let Some(location) = location.filter(|l| !l.is_empty())
                && let Err(wait) = quotas.charge(&location).await
            {
                tracing::debug!(%location, wait_ms = wait.as_millis() as u64, "request over the location's quota");
                return Ok(exhausted(&location, wait).into_http());
            }
            let request =
                http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)));
            inner.call(request).await
        })
    }
}
