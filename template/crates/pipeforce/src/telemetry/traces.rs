//! Traces: the OpenTelemetry tracer provider, its optional OTLP exporter, and the layer that
//! turns `tracing` spans into OpenTelemetry spans.
//!
//! Spans go to an OTLP endpoint when one is configured (Jaeger reads OTLP natively since 1.35;
//! the old `opentelemetry-jaeger` crate is deprecated), in batches that are flushed on
//! shutdown. A collector that is down or slow never slows the service: the batch queue is
//! bounded, spans beyond it are dropped, and the failure is logged once per outage
//! ([`ReportOnce`]). Without an endpoint spans still get ids and propagate.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{self as sdk, SdkTracerProvider, SpanData, SpanExporter},
};
use tracing::{Subscriber, info, warn};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt, filter_fn},
    registry::LookupSpan,
};

use crate::{
    Config, Error,
    config::{OtlpExport, OtlpProtocol, masked},
};

/// Log targets that stay out of traces: the exporter's own HTTP/gRPC stack (exporting its own
/// spans would loop) and the AMQP client's internals.
const UNTRACED: &str =
    "h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,reqwest=off,lapin=off,amq_protocol=off";

/// The layer that makes OpenTelemetry spans of `tracing` spans, exported by `provider`.
pub(super) fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    // Busy/idle timings, thread and source-location attributes cost time on every message and
    // tell little about a handler. Context activation would set OpenTelemetry's thread-local
    // context on every poll; propagation here reads the tracing span instead.
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("pipeforce"))
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
        )
}

/// The tracer provider for `config`: the service's resource, its sampler, and a batching
/// OTLP exporter when an endpoint is configured.
pub(super) fn provider(config: &Config) -> Result<SdkTracerProvider, Error> {
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
        return Ok(builder.build());
    };
    let exporter = ReportOnce {
        exporter: otlp_exporter(otlp)?,
        endpoint: masked(&otlp.endpoint),
        failing: AtomicBool::new(false),
    };
    // A service handling tens of thousands of messages a second fills the SDK's default queue
    // (2048 spans) between two exports; a larger queue and batches ride out bursts instead
    // of dropping spans. A full batch is exported at once, so the queue needs room for what
    // arrives during one export, not for the schedule delay: four batches. It is allocated
    // and touched up front, about 360 bytes a span, so each further batch of room would be
    // 0.7 MiB of resident memory. The OTEL_BSP_* variables still win.
    let mut batch = sdk::BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        batch = batch.with_max_queue_size(8_192);
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
    match otlp.protocol {
        OtlpProtocol::Grpc => grpc_exporter(otlp),
        protocol => {
            let protocol = if protocol == OtlpProtocol::HttpJson {
                opentelemetry_otlp::Protocol::HttpJson
            } else {
                opentelemetry_otlp::Protocol::HttpBinary
            };
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

fn exporter_error(error: opentelemetry_otlp::ExporterBuildError) -> Error {
    // The error may quote the endpoint.
    Error::Telemetry(masked(&format!("cannot set up the OTLP exporter: {error}")))
}

/// The gRPC exporter (tonic), which needs the Tokio runtime this runs in.
#[cfg(feature = "otlp-grpc")]
fn grpc_exporter(otlp: &OtlpExport) -> Result<opentelemetry_otlp::SpanExporter, Error> {
    opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&otlp.endpoint)
        .build()
        .map_err(exporter_error)
}

/// http/protobuf is the default, so the gRPC stack (tonic, h2) is compiled only with the
/// `otlp-grpc` feature: without it, asking for gRPC stops the service at start rather than
/// leaving it without traces.
#[cfg(not(feature = "otlp-grpc"))]
fn grpc_exporter(otlp: &OtlpExport) -> Result<opentelemetry_otlp::SpanExporter, Error> {
    let variable = otlp
        .protocol_variable
        .as_deref()
        .unwrap_or("OTEL_EXPORTER_OTLP_PROTOCOL");
    Err(Error::Telemetry(format!(
        "{variable}=grpc asks for the OTLP/gRPC exporter, but this service was built without \
         the `otlp-grpc` feature: add features = [\"otlp-grpc\"] to the pipeforce dependency \
         in Cargo.toml, or set {variable}=http/protobuf and the collector's OTLP/HTTP port \
         (4318)"
    )))
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
