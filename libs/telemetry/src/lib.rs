//! Logs and traces for whatsnap. [`init`] installs `tracing` with JSON logs when stderr is not a
//! terminal, and OpenTelemetry spans — exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set. The W3C trace context of the current span travels on every gRPC call ([`grpc_span`],
//! [`inject`]) and in every event's envelope ([`current`], [`event_span`]), so the work one
//! inbound message causes is one trace across services.

pub mod metrics;

use std::collections::HashMap;
use std::io::IsTerminal;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use whatsnap_events::{RecordedEvent, TraceContext};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the tracer provider alive; dropping it flushes the spans not yet exported.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs logging and tracing for `service_name`. `RUST_LOG` filters (default `info`).
pub fn init(service_name: &str) -> Result<Telemetry, TelemetryError> {
    let mut provider = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name.to_owned())
            .build(),
    );
    // Spans exist (and trace ids propagate) either way; they leave the process only to a
    // collector that was asked for.
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok();
    if let Some(endpoint) = &endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|source| TelemetryError::Exporter {
                endpoint: endpoint.clone(),
                source,
            })?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer("whatsnap");

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,async_nats=warn,h2=warn".into());
    // People read a terminal; log shippers read everything else.
    let logs = if std::io::stderr().is_terminal() {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed()
    };
    // One filter for both layers, in front of them. Not a filter per layer: those keep what
    // they decided in a thread-local between a library's check of a level (sqlx checks one
    // after every query) and the next span, and a span now and then came out disabled for
    // both layers: no log fields, and outside the caller's trace.
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    if let Some(endpoint) = endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

/// The trace context of the current span, for an event's envelope or an outgoing call.
pub fn current() -> TraceContext {
    let context = Span::current().context();
    if !context.span().span_context().is_valid() {
        return TraceContext::default();
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    TraceContext {
        traceparent: carrier.remove("traceparent"),
        tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
    }
}

fn set_parent(span: &Span, trace: &TraceContext) {
    let Some(traceparent) = &trace.traceparent else {
        return;
    };
    let mut carrier = HashMap::from([("traceparent".to_owned(), traceparent.clone())]);
    if let Some(tracestate) = &trace.tracestate {
        carrier.insert("tracestate".to_owned(), tracestate.clone());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    if let Err(error) = span.set_parent(parent) {
        // Should not happen for a span just made; if it does, the trace breaks here.
        tracing::warn!(%error, %traceparent, "trace context not continued");
    }
}

/// The span of an incoming gRPC call, a child of the caller's trace when it sent one
/// (tonic's `Server::trace_fn`).
pub fn grpc_span<B>(request: &http::Request<B>) -> Span {
    let span = tracing::info_span!("grpc", path = %request.uri().path());
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    set_parent(
        &span,
        &TraceContext {
            traceparent: header("traceparent"),
            tracestate: header("tracestate"),
        },
    );
    span
}

/// Puts the current trace context on an outgoing gRPC request.
pub fn inject<T>(request: &mut tonic::Request<T>) {
    let trace = current();
    for (key, value) in [
        ("traceparent", trace.traceparent),
        ("tracestate", trace.tracestate),
    ] {
        if let Some(value) = value.and_then(|v| v.parse().ok()) {
            request.metadata_mut().insert(key, value);
        }
    }
}

/// The span in which a service handles a stored event: a child of the trace that wrote it.
pub fn event_span(projection: &str, event: &RecordedEvent) -> Span {
    let span = tracing::info_span!(
        "handle_event",
        projection,
        event_type = %event.event_type,
        position = event.position,
        stream = %event.stream,
        event_id = %event.id,
    );
    set_parent(&span, &event.metadata.trace);
    span
}
