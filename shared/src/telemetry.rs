//! Logs and traces. Logs are JSON lines on stdout. Traces always exist (so
//! every log line of a message carries the upload's trace id, and the id
//! travels through the queues); they are exported over OTLP only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the tracer provider alive; `shutdown` flushes pending spans.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("flushing traces failed: {err}");
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON lines on stdout, for log pipelines (the services).
    Json,
    /// Short human lines on stderr, warnings and up unless `RUST_LOG` says
    /// otherwise (interactive commands such as `imagetag up`).
    Human,
}

/// Installs the global subscriber with JSON logs. Call once, first thing in
/// `main`.
pub fn init(service: &'static str) -> Telemetry {
    init_with(service, LogFormat::Json)
}

pub fn init_with(service: &'static str, format: LogFormat) -> Telemetry {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let exporter_error = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                builder = builder.with_batch_exporter(exporter);
                None
            }
            Err(err) => Some(err.to_string()),
        }
    } else {
        None
    };
    let provider = builder.build();
    let tracer = provider.tracer(service);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let default_filter = match format {
        LogFormat::Json => "info,aws_smithy_runtime=warn,aws_config=warn,hyper=warn",
        LogFormat::Human => "warn",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_target(true)
    });
    let human = (format == LogFormat::Human).then(|| {
        tracing_subscriber::fmt::layer()
            .compact()
            .with_target(false)
            .with_writer(std::io::stderr)
    });
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(human)
        .with(tracing_opentelemetry::layer().with_tracer(tracer));
    if let Err(err) = registry.try_init() {
        eprintln!("a tracing subscriber was already installed: {err}");
    }
    if let Some(err) = exporter_error {
        tracing::error!(error = %err, "OTLP exporter could not be built; traces are not exported");
    }
    Telemetry { provider }
}

/// The W3C trace context of `span`, as message attributes.
pub fn inject(span: &Span) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    // An empty `tracestate` is valid W3C but SQS refuses empty attributes.
    carrier.retain(|_, value: &mut String| !value.is_empty());
    carrier
}

/// Makes `span` a child of the trace described by message attributes.
pub fn adopt(span: &Span, attributes: &HashMap<String, String>) {
    let parent = TraceContextPropagator::new().extract(attributes);
    if parent.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed (unit tests).
        let _ = span.set_parent(parent);
    }
}

/// The trace id of `span` in hex, or empty when it has none.
pub fn trace_id(span: &Span) -> String {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span_context.trace_id().to_string()
    } else {
        String::new()
    }
}
