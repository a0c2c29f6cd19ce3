//! Logs and traces. Logs: `tracing` events on stderr, human-readable or JSON,
//! filtered by `RUST_LOG` (default `info,sqlx=warn`). Traces: when the
//! standard `OTEL_EXPORTER_OTLP_*` variables name an endpoint, spans go there
//! over OTLP/HTTP, with W3C trace context taken from incoming requests.
//!
//! The spans exdaas makes for requests and shard writes are at DEBUG level:
//! the log filter leaves them out, so without an exporter they are never
//! created; with one, a filter of their own lets them through to it alone.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{redact_url, LogFormat, TraceExport};

/// The target of the spans made for export: `exdaas::trace::http` for
/// requests, `exdaas::trace::store` for shard writes.
pub const TRACE_TARGET: &str = "exdaas::trace";

/// What must be flushed before the process exits.
#[must_use = "call shutdown() before exiting, or the last spans are lost"]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    /// Writes the buffered log lines when dropped.
    _logs: tracing_appender::non_blocking::WorkerGuard,
}

impl Telemetry {
    /// Whether spans are exported (and so worth creating).
    pub fn exports_traces(&self) -> bool {
        self.traces.is_some()
    }

    /// Sends the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.traces {
            // The exporter's own thread does the sending; wait for it off the runtime.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = flushed {
                eprintln!("exdaas: flushing traces at exit failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber, and the OTLP exporter when `traces` says
/// so. Call once, first thing after reading the settings.
///
/// Log lines go to stderr through a thread of their own, so a slow reader
/// (a full pipe, a stalled `docker logs`) never blocks a runtime thread;
/// past 128,000 waiting lines, new ones are dropped rather than waited for.
/// Colour only when stderr is a terminal and `NO_COLOR` is not set: files,
/// `docker logs` and Kubernetes get plain text.
pub fn init(format: LogFormat, traces: &TraceExport) -> Telemetry {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(colour)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    };
    let provider = match traces {
        TraceExport::Off => None,
        TraceExport::Otlp { endpoint } => match tracer_provider() {
            Ok(provider) => Some(provider),
            Err(e) => {
                // The endpoint may carry credentials; the headers
                // (OTEL_EXPORTER_OTLP_HEADERS) are never shown.
                let shown = redact_url(endpoint);
                let e = e.to_string().replace(endpoint.as_str(), &shown);
                eprintln!("exdaas: cannot export traces to {shown}: {e}; going on without");
                None
            }
        },
    };
    let spans = provider.as_ref().map(|provider| {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("exdaas"))
            .with_filter(Targets::new().with_target(TRACE_TARGET, tracing::Level::DEBUG))
    });
    if let Err(e) = tracing_subscriber::registry().with(logs).with(spans).try_init() {
        eprintln!("exdaas: logging was already set up: {e}");
    }
    if let TraceExport::Otlp { endpoint } = traces {
        if provider.is_some() {
            tracing::info!(endpoint = %redact_url(endpoint), "exporting traces over OTLP/HTTP");
        }
    }
    Telemetry {
        traces: provider,
        _logs: guard,
    }
}

/// The SDK reads the endpoint, headers, timeout, sampler (`OTEL_TRACES_SAMPLER`)
/// and resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) itself.
fn tracer_provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
    let mut resource = opentelemetry_sdk::Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("exdaas");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Makes `span` a child of the caller's trace, when `carrier` (a request's
/// headers, as the HTTP layer reads them) holds one.
pub fn continue_trace(span: &tracing::Span, carrier: &dyn opentelemetry::propagation::Extractor) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(carrier));
    let _ = span.set_parent(parent);
}

/// Names `span` in the exported trace (e.g. `GET /v1/collections/{collection}`),
/// once its route is known: after the span started, `otel.name` no longer can.
pub fn rename(span: &tracing::Span, name: String) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    span.context().span().update_name(name);
}
