//! Logs, traces and metrics.
//!
//! - **Logs** go through `tracing` to stderr, as text or JSON ([`LogFormat`]), filtered by
//!   `RUST_LOG` (default `info`), both read and checked with the rest of the [`Config`].
//!   Inside a message or an HTTP request every line carries the request's `trace_id`, a field
//!   of the span the framework opens for it.
//! - **Traces**: every consumed message, served request, publish and hub call is an
//!   OpenTelemetry span, named by the semantic conventions. W3C `traceparent`/`tracestate` are
//!   read from incoming message headers and HTTP headers and written into outgoing ones, so a
//!   handler that publishes or calls HTTP continues its caller's trace. Spans go to an OTLP
//!   endpoint when one is configured (Jaeger reads OTLP natively since 1.35; the old
//!   `opentelemetry-jaeger` crate is deprecated), in batches that are flushed on shutdown. A
//!   collector that is down or slow never slows the service: the batch queue is bounded, spans
//!   beyond it are dropped, and the failure is logged once per outage.
//! - **Metrics** are recorded with the `metrics` crate and served in Prometheus' text format
//!   at `GET /metrics` ([`metric`] lists them).

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::{
    KeyValue,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{self as sdk, SdkTracerProvider, SpanData, SpanExporter},
};
use tracing::{Span, info, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt, filter_fn},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

use crate::{
    Config, Error,
    config::{LogFormat, OtlpExport, masked},
};

/// Log targets that stay out of traces: the exporter's own HTTP/gRPC stack (exporting its own
/// spans would loop) and the AMQP client's internals.
const UNTRACED: &str =
    "h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,reqwest=off,lapin=off,amq_protocol=off";

/// The running telemetry. Dropping it flushes the spans still queued for export and the log
/// lines still queued for stderr.
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    _log_writer: tracing_appender::non_blocking::WorkerGuard,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(error) = self.tracer_provider.shutdown() {
            tracing::warn!(%error, "flushing traces on shutdown failed");
        }
    }
}

/// Installs logging, tracing and the metrics recorder for the process. Call once, from `main`,
/// inside the Tokio runtime, and keep the returned value until the end of `main`.
pub fn init(config: &Config) -> Result<Telemetry, Error> {
    let telemetry = &config.telemetry;
    let log_filter = EnvFilter::try_new(&telemetry.log_filter)
        .map_err(|error| Error::LogFilter(error.to_string()))?;
    // Handlers log on the hot path: a writer thread takes the lines and writes them in
    // batches, instead of a write system call per line on the handler's thread. It never
    // drops a line; a full queue makes the logger wait.
    let (writer, log_writer) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let logs = match telemetry.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .fmt_fields(TerseFields::Text)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_current_span(false)
            .with_span_list(true)
            .fmt_fields(TerseFields::Json)
            .boxed(),
    };

    let tracer_provider = tracer_provider(config)?;
    let tracer = tracer_provider.tracer("pipeforce");
    // Busy/idle timings, thread and source-location attributes cost time on every message and
    // tell little about a handler. Context activation would set OpenTelemetry's thread-local
    // context on every poll; propagation here reads the tracing span instead.
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_context_activation(false)
        .with_filter(
            EnvFilter::new(format!("info,{UNTRACED}"))
                // Log lines at info would become span events, a cost on every message for
                // what the logs hold anyway; warnings and errors are worth seeing in a trace.
                .and(filter_fn(|metadata| {
                    metadata.is_span() || *metadata.level() <= tracing::Level::WARN
                })),
        );
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // Fails only when a subscriber is installed already, e.g. by a test harness: keep that one.
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(log_filter))
        .with(traces)
        .try_init();
    match &telemetry.otlp {
        Some(otlp) => {
            info!(endpoint = masked(&otlp.endpoint), protocol = ?otlp.protocol, "exporting traces")
        }
        None => info!("no OTLP endpoint configured: traces are not exported"),
    }
    prometheus();
    Ok(Telemetry {
        tracer_provider,
        _log_writer: log_writer,
    })
}

fn tracer_provider(config: &Config) -> Result<SdkTracerProvider, Error> {
    let telemetry = &config.telemetry;
    // The resource builder adds OTEL_RESOURCE_ATTRIBUTES; the service name set on top is
    // OTEL_SERVICE_NAME when set, which wins as the specification says.
    let resource = Resource::builder()
        .with_attribute(KeyValue::new("service.namespace", config.namespace.clone()))
        .with_service_name(telemetry.service_name.clone())
        .build();
    // The builder reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG itself; the config has
    // checked them.
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(otlp) = &telemetry.otlp else {
        // No exporter: spans still get ids and propagate, they just go nowhere.
        return Ok(builder.build());
    };
    let exporter = ReportOnce {
        exporter: otlp_exporter(otlp)?,
        endpoint: masked(&otlp.endpoint),
        failing: AtomicBool::new(false),
    };
    // A service handling tens of thousands of messages a second fills the SDK's default queue
    // (2048 spans) between two exports; a larger queue and batches ride out bursts instead
    // of dropping spans. The OTEL_BSP_* variables still win.
    let mut batch = sdk::BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        batch = batch.with_max_queue_size(16_384);
    }
    if std::env::var_os("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").is_none() {
        batch = batch.with_max_export_batch_size(2_048);
    }
    let processor = sdk::BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch.build())
        .build();
    Ok(builder.with_span_processor(processor).build())
}

fn otlp_exporter(otlp: &OtlpExport) -> Result<opentelemetry_otlp::SpanExporter, Error> {
    let exporter_error = |error: opentelemetry_otlp::ExporterBuildError| {
        // The error may quote the endpoint.
        Error::Telemetry(masked(&format!("cannot set up the OTLP exporter: {error}")))
    };
    match otlp.protocol {
        // tonic needs the Tokio runtime this runs in.
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&otlp.endpoint)
            .build()
            .map_err(exporter_error),
        protocol => {
            let endpoint = otlp.endpoint.clone();
            // The HTTP exporter runs a blocking client on the batch thread, and a blocking
            // client must not be created on a Tokio worker: build it on a thread of its own.
            std::thread::spawn(move || {
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(protocol)
                    .with_endpoint(endpoint)
                    .build()
                    .map_err(exporter_error)
            })
            .join()
            .map_err(|_| Error::Telemetry("building the OTLP exporter panicked".to_owned()))?
        }
    }
}

/// Formats span and event fields for logs, leaving out the fields that are for traces only:
/// `otel.*` steer the OpenTelemetry layer, and the semantic-convention attributes
/// (`messaging.*`, `http.*`, `url.*`, `server.*`, `pipeforce.*`) would repeat on every log line.
#[derive(Clone, Copy)]
enum TerseFields {
    Text,
    /// A JSON object, as the JSON formatter expects span fields to be.
    Json,
}

fn for_traces_only(field: &str) -> bool {
    [
        "otel.",
        "messaging.",
        "http.",
        "url.",
        "server.",
        "pipeforce.",
    ]
    .iter()
    .any(|prefix| field.starts_with(prefix))
}

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for TerseFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = TerseVisitor {
            format: *self,
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        if matches!(self, Self::Json) {
            visitor.result = visitor.writer.write_char('{');
        }
        fields.record(&mut visitor);
        if matches!(self, Self::Json) && visitor.result.is_ok() {
            visitor.result = visitor.writer.write_char('}');
        }
        visitor.result
    }
}

struct TerseVisitor<'a, 'writer> {
    format: TerseFields,
    writer: &'a mut tracing_subscriber::fmt::format::Writer<'writer>,
    first: bool,
    result: std::fmt::Result,
}

/// Trace attributes worth a place on every log line, under a shorter name.
fn log_name(field: &str) -> Option<&str> {
    match field {
        "messaging.rabbitmq.destination.routing_key" => Some("routing_key"),
        "http.request.method" => Some("method"),
        "http.route" => Some("route"),
        other if for_traces_only(other) => None,
        other => Some(other),
    }
}

impl TerseVisitor<'_, '_> {
    fn write(&mut self, field: &tracing::field::Field, value: std::fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        let Some(name) = log_name(field.name()) else {
            return;
        };
        let first = std::mem::replace(&mut self.first, false);
        self.result = match self.format {
            TerseFields::Text if name == "message" => {
                write!(self.writer, "{}{value}", if first { "" } else { " " })
            }
            TerseFields::Text => {
                write!(
                    self.writer,
                    "{}{name}={value}",
                    if first { "" } else { " " }
                )
            }
            TerseFields::Json => write!(
                self.writer,
                "{}{}:{}",
                if first { "" } else { "," },
                serde_json::Value::from(name),
                serde_json::Value::from(value.to_string())
            ),
        };
    }
}

impl tracing::field::Visit for TerseVisitor<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.write(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

/// Wraps the exporter so that an unreachable or failing collector is logged once per outage,
/// not once per batch.
#[derive(Debug)]
struct ReportOnce<E> {
    exporter: E,
    /// The endpoint for the log, password masked.
    endpoint: String,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for ReportOnce<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.exporter.export(batch).await;
        match &result {
            Err(error) if !self.failing.swap(true, Ordering::Relaxed) => warn!(
                endpoint = %self.endpoint,
                // The exporter's error may quote the endpoint.
                error = masked(&error.to_string()),
                "cannot export traces; dropping spans until the collector answers again"
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                info!(endpoint = %self.endpoint, "exporting traces again");
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter.set_resource(resource);
    }
}

/// The Prometheus recorder for the process, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ])
            .expect("the bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder (a test harness's) keeps its place; /metrics then stays empty.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The metrics the framework records (Prometheus names).
pub mod metric {
    /// Counter: messages consumed, by `handler` and `outcome` (`handled`, `dead_lettered`,
    /// `abandoned`). A message matching two handlers counts once for each.
    pub const MESSAGES_CONSUMED: &str = "pipeforce_messages_consumed_total";
    /// Histogram: seconds one handler run took, by `handler`.
    pub const HANDLER_DURATION: &str = "pipeforce_handler_duration_seconds";
    /// Counter: retries of failed handler runs, by `handler`.
    pub const HANDLER_RETRIES: &str = "pipeforce_handler_retries_total";
    /// Counter: messages sent to the dead-letter queue, by `reason` (`undecodable`,
    /// `handler_failed`, `no_handler`).
    pub const MESSAGES_DEAD_LETTERED: &str = "pipeforce_messages_dead_lettered_total";
    /// Counter: copies to the dead-letter queue the broker refused (the queue is missing or
    /// full); each is retried, its message waits unacked meanwhile.
    pub const DEAD_LETTER_FAILURES: &str = "pipeforce_dead_letter_failures_total";
    /// Gauge: handler runs in progress.
    pub const HANDLERS_IN_FLIGHT: &str = "pipeforce_handlers_in_flight";
    /// Counter: messages published and confirmed, by `kind` (`event`, `request`, `reply`,
    /// `dead_letter`).
    pub const MESSAGES_PUBLISHED: &str = "pipeforce_messages_published_total";
    /// Counter: publishes that failed, by `kind`.
    pub const PUBLISH_FAILURES: &str = "pipeforce_publish_failures_total";
    /// Gauge: 1 while the service consumes from RabbitMQ, else 0.
    pub const BROKER_CONNECTED: &str = "pipeforce_broker_connected";
    /// Gauge: 1 while RabbitMQ blocks the service's publishing (a memory or disk alarm),
    /// else 0.
    pub const BROKER_BLOCKED: &str = "pipeforce_broker_blocked";
    /// Counter: HTTP requests served, by `method`, `route` and `status`. `method` is `_OTHER`
    /// for a method outside the standard ones and `route` is `unmatched` for a path outside
    /// the routes, so clients cannot add series.
    pub const HTTP_REQUESTS: &str = "pipeforce_http_requests_total";
    /// Histogram: seconds to serve an HTTP request, by `method` and `route`.
    pub const HTTP_REQUEST_DURATION: &str = "pipeforce_http_request_duration_seconds";
}

/// Records the span's trace id in its `trace_id` field, so log lines inside it carry it.
pub(crate) fn record_trace_id(span: &Span) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
    }
}

/// Makes `span` a child of the trace context found in `carrier`, if there is one.
pub(crate) fn continue_trace(span: &Span, carrier: &dyn Extractor) {
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier));
    if parent.span().span_context().is_valid() {
        // Fails only when tracing is not installed (tests): the span stays a root then.
        let _ = span.set_parent(parent);
    }
}

/// Writes the current span's trace context into `carrier`.
pub(crate) fn inject_current(carrier: &mut dyn Injector) {
    let context = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, carrier);
    });
}

/// Writes the current span's trace context into outgoing HTTP request headers, so the called
/// service continues the trace.
pub fn inject_into_http_headers(headers: &mut warp::http::HeaderMap) {
    inject_current(&mut http::HeadersMut(headers));
}

/// Trace context in AMQP message headers (W3C names, string values).
pub(crate) mod amqp {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use opentelemetry::propagation::{Extractor, Injector};

    pub(crate) struct Headers<'a>(pub(crate) Option<&'a FieldTable>);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match self.0?.inner().get(key)? {
                AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
                AMQPValue::ShortString(value) => Some(value.as_str()),
                _ => None,
            }
        }

        fn keys(&self) -> Vec<&str> {
            self.0
                .map(|headers| headers.inner().keys().map(|key| key.as_str()).collect())
                .unwrap_or_default()
        }
    }

    pub(crate) struct HeadersMut<'a>(pub(crate) &'a mut FieldTable);

    impl Injector for HeadersMut<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0
                .insert(key.into(), AMQPValue::LongString(LongString::from(value)));
        }
    }
}

/// Trace context in HTTP headers.
pub(crate) mod http {
    use opentelemetry::propagation::{Extractor, Injector};
    use warp::http::{HeaderMap, HeaderName, HeaderValue};

    pub(crate) struct Headers<'a>(pub(crate) &'a HeaderMap);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key)?.to_str().ok()
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(HeaderName::as_str).collect()
        }
    }

    pub(crate) struct HeadersMut<'a>(pub(crate) &'a mut HeaderMap);

    impl Injector for HeadersMut<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(key.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }
}
