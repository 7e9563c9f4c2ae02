//! Log lines: text or JSON on stderr, written by a thread of their own, with only the fields
//! worth reading in a log. Text is coloured only on a terminal
//! ([`TelemetryConfig::colour_logs`]).
//!
//! The spans the framework opens carry OpenTelemetry attributes named by the semantic
//! conventions (`messaging.*`, `http.*`, ...). A trace wants them; a log line would repeat
//! them on every line. [`TerseFields`] keeps them out of the logs, and keeps three of them
//! under a short name.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{Layer, registry::LookupSpan};

use crate::config::{LogFormat, TelemetryConfig};

/// How many log lines may wait for the writer thread.
const LOG_QUEUE_LINES: usize = 8_192;

/// The log layer `telemetry` asks for, and the guard that flushes its writer thread when
/// dropped.
pub(super) fn layer<S>(
    telemetry: &TelemetryConfig,
) -> (Box<dyn Layer<S> + Send + Sync>, WorkerGuard)
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    // Handlers log on the hot path: a writer thread takes the lines and writes them in
    // batches, instead of a write system call per line on the handler's thread. It never
    // drops a line; a full queue makes the logger wait. The queue is allocated (and touched)
    // up front, 32 bytes a line: the default of 128,000 lines would be 4 MiB of resident
    // memory for bursts the writer thread drains in a moment.
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let layer = match telemetry.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            // The formatter's own default colours every line, wherever it goes.
            .with_ansi(telemetry.colour_logs(std::io::stderr().is_terminal()))
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
    (layer, guard)
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
