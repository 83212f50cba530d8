use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalogue::Event;
use crate::ids::{EventId, LocationId, StreamId};
use crate::upcast;

/// The W3C trace context (`traceparent`, `tracestate`) of the work that produced an event, so
/// that one inbound message is one trace across every service that handles it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Why an event was written: the correlation id is shared by everything one external request
/// caused; the causation id is the event (or command) that directly caused this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    #[serde(default)]
    pub trace: TraceContext,
}

impl EventMetadata {
    /// Metadata for the first event of a new piece of work: it correlates with itself.
    pub fn new_correlation() -> Self {
        Self {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            trace: TraceContext::default(),
        }
    }

    /// The same metadata in the trace `trace`, when it names one (an untraced caller keeps the
    /// trace it had).
    pub fn traced(mut self, trace: TraceContext) -> Self {
        if trace.traceparent.is_some() {
            self.trace = trace;
        }
        self
    }

    /// Metadata for an event caused by `cause`: same correlation and trace, `cause` as causation.
    pub fn caused_by(cause: &RecordedEvent) -> Self {
        Self {
            correlation_id: cause.metadata.correlation_id,
            causation_id: Some(cause.id.as_uuid()),
            trace: cause.metadata.trace.clone(),
        }
    }
}

/// An event on its way into the store. The stream, version and position are given by the append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: EventId,
    pub event_type: String,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub metadata: EventMetadata,
    /// The serde JSON encoding of the payload.
    pub payload: Bytes,
}

impl NewEvent {
    /// Encodes a catalogue event with a fresh id, stamped now.
    pub fn new(event: &Event, metadata: EventMetadata) -> Self {
        Self {
            id: EventId::new(),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            occurred_at: Utc::now(),
            metadata,
            payload: event.encode(),
        }
    }

    /// An event of any type with a raw payload; for stores and tests that do not care what the
    /// payload means.
    pub fn raw(event_type: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            id: EventId::new(),
            event_type: event_type.into(),
            schema_version: 1,
            occurred_at: Utc::now(),
            metadata: EventMetadata::new_correlation(),
            payload: payload.into(),
        }
    }
}

/// An event as stored: the envelope with its place in its stream and in the whole log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub id: EventId,
    pub stream: StreamId,
    /// 1 for the first event of a stream, then 2, 3, … without gaps.
    pub version: u64,
    /// The event's place in the whole log; increases with every event but may have gaps.
    pub position: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub metadata: EventMetadata,
    pub payload: Bytes,
}

impl RecordedEvent {
    pub fn location_id(&self) -> &LocationId {
        self.stream.location()
    }

    /// Decodes the payload into the catalogue, upcasting an older schema version first.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        Event::decode(&self.event_type, self.schema_version, &self.payload)
    }
}

/// Why a stored payload could not be turned into a catalogue event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {event_type:?}")]
    UnknownType { event_type: String },
    #[error(
        "{event_type} schema version {found} is newer than this build knows (up to {known}); upgrade this service"
    )]
    FutureVersion {
        event_type: String,
        found: u32,
        known: u32,
    },
    #[error("{event_type} v{schema_version} payload does not decode: {source}")]
    Payload {
        event_type: String,
        schema_version: u32,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Upcast(#[from] upcast::UpcastError),
}
