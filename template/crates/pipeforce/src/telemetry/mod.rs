//! Logs, traces and metrics.
//!
//! - **Logs** go through `tracing` to stderr, as text or JSON ([`LogFormat`]), filtered by
//!   `RUST_LOG` (default `info`), both read and checked with the rest of the [`Config`].
//!   Inside a message or an HTTP request every line carries the request's `trace_id`, a field
//!   of the span the framework opens for it.
//! - **Traces**: every consumed message, served request, publish and hub call is an
//!   OpenTelemetry span, named by the semantic conventions, exported over OTLP when an
//!   endpoint is configured. W3C `traceparent`/`tracestate` are read from incoming message and
//!   HTTP headers and written into outgoing ones, so a handler that publishes or calls HTTP
//!   continues its caller's trace.
//! - **Metrics** are recorded with the `metrics` crate and served in Prometheus' text format
//!   at `GET /metrics` ([`metric`] lists them).
//!
//! # Layout
//! - [`init`] (here): installs logging and tracing for the process.
//! - `logs`: the log layer and its terse field formatter.
//! - `traces`: the tracer provider, the OTLP exporter and the OpenTelemetry layer.
//! - `metrics`: the Prometheus recorder ([`Metrics`]) and the metric names ([`metric`]).
//! - `propagation`: trace context in and out of AMQP and HTTP headers.
//!
//! [`LogFormat`]: crate::config::LogFormat

mod logs;
mod metrics;
mod propagation;
mod traces;

use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::info;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

pub use self::metrics::{Metrics, metric};
pub use self::propagation::inject_into_http_headers;
pub(crate) use self::propagation::{amqp, continue_trace, inject_current, record_trace_id};
use crate::{Config, Error, config::masked};

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

/// Installs logging and tracing for the process. Call once, from `main`, inside the Tokio
/// runtime, and keep the returned value until the end of `main`. (The metrics recorder is
/// installed by [`App::build`](crate::App::build), which serves it.)
pub fn init(config: &Config) -> Result<Telemetry, Error> {
    let telemetry = &config.telemetry;
    let log_filter = EnvFilter::try_new(&telemetry.log_filter)
        .map_err(|error| Error::LogFilter(error.to_string()))?;
    let (logs, log_writer) = logs::layer(telemetry);
    let tracer_provider = traces::provider(config)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // Fails only when a subscriber is installed already, e.g. by a test harness: keep that one.
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(log_filter))
        .with(traces::layer(&tracer_provider))
        .try_init();
    match &telemetry.otlp {
        Some(otlp) => {
            info!(endpoint = masked(&otlp.endpoint), protocol = ?otlp.protocol, "exporting traces")
        }
        None => info!("no OTLP endpoint configured: traces are not exported"),
    }
    Ok(Telemetry {
        tracer_provider,
        _log_writer: log_writer,
    })
}
