//! A minimal OpenTelemetry collector: an OTLP/HTTP trace receiver (`http/protobuf`, the
//! service's default protocol) on a local port that keeps every span it gets, built on
//! `opentelemetry-proto`'s generated message types and a wiremock server.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{AnyValue, KeyValue, any_value::Value},
};
use prost::Message;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

/// A span as the receiver got it, ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, String>,
    /// The attributes of the resource (the service) that sent it.
    pub resource: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    count: Arc<std::sync::atomic::AtomicUsize>,
    /// Keep every span (tests), or only count them (benchmarks).
    keep: bool,
}

impl Respond for Collector {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let Ok(request) = ExportTraceServiceRequest::decode(request.body.as_slice()) else {
            return ResponseTemplate::new(400);
        };
        let count: usize = request
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.count
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        if self.keep {
            self.keep_spans(request);
        }
        ResponseTemplate::new(200).set_body_raw(
            ExportTraceServiceResponse::default().encode_to_vec(),
            "application/x-protobuf",
        )
    }
}

impl Collector {
    fn keep_spans(&self, request: ExportTraceServiceRequest) {
        let mut received = Vec::new();
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| attributes(&resource.attributes))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.push(ReceivedSpan {
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: attributes(&span.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|attribute| {
            let value = match attribute
                .value
                .as_ref()
                .and_then(|v: &AnyValue| v.value.as_ref())
            {
                Some(Value::StringValue(text)) => text.clone(),
                Some(Value::IntValue(number)) => number.to_string(),
                Some(Value::BoolValue(flag)) => flag.to_string(),
                Some(Value::DoubleValue(number)) => number.to_string(),
                other => format!("{other:?}"),
            };
            (attribute.key.clone(), value)
        })
        .collect()
}

/// The receiver; it stops when dropped.
pub struct OtlpReceiver {
    server: MockServer,
    collector: Collector,
}

impl OtlpReceiver {
    /// Starts on a free port, keeping every span.
    pub async fn start() -> Self {
        Self::listen(0, true).await
    }

    /// Starts on `port`, only counting the spans ([`OtlpReceiver::count`]).
    pub async fn start_counting(port: u16) -> Self {
        Self::listen(port, false).await
    }

    async fn listen(port: u16, keep: bool) -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
        // A benchmark sends hundreds of thousands of spans: keep none of the requests.
        let server = MockServer::builder()
            .listener(listener)
            .disable_request_recording()
            .start()
            .await;
        let collector = Collector {
            keep,
            ..Collector::default()
        };
        Mock::given(matchers::method("POST"))
            .and(matchers::path("/v1/traces"))
            .respond_with(collector.clone())
            .mount(&server)
            .await;
        Self { server, collector }
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT` (with the default protocol,
    /// `http/protobuf`).
    pub fn endpoint(&self) -> String {
        self.server.uri()
    }

    /// How many spans arrived so far.
    pub fn count(&self) -> usize {
        self.collector
            .count
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every span received so far (when started with [`OtlpReceiver::start`]).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collector.spans.lock().unwrap().clone()
    }

    /// Waits until a received span satisfies `wanted`, and returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        wanted: impl Fn(&ReceivedSpan) -> bool,
        timeout: Duration,
    ) -> ReceivedSpan {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(span) = self.spans().into_iter().find(&wanted) {
                return span;
            }
            assert!(
                Instant::now() < deadline,
                "no span {what} within {timeout:?}; received: {:#?}",
                self.spans()
                    .iter()
                    .map(|span| (&span.name, &span.trace_id, &span.attributes))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
