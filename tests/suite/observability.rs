//! Traces and metrics of a rendered service: spans arrive at an OTLP receiver with the caller's
//! trace continued through AMQP and HTTP, a dead collector changes nothing, and `/metrics`
//! counts exactly what was sent.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::json;
use template_tests::otlp::OtlpReceiver;

use crate::probe::Scenario;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

/// Exports to `receiver` over the default protocol (OTLP/HTTP, protobuf), in batches every
/// 100 ms.
fn export_to(receiver: &OtlpReceiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
}

fn env<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect()
}

#[tokio::test]
async fn a_message_continues_its_publishers_trace_into_the_handlers_own_publish() {
    let receiver = OtlpReceiver::start().await;
    let settings = export_to(&receiver);
    let scenario = Scenario::new(&env(&settings)).await;
    let _service = scenario.start().await;
    let relayed = scenario
        .broker
        .capture(&scenario.names.exchange, "probe.relayed")
        .await;

    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(traceparent(TRACE, PARENT))),
    );
    let properties = BasicProperties::default()
        .with_headers(headers)
        .with_message_id("relay-1".into());
    scenario
        .broker
        .publish(
            &scenario.names.exchange,
            "probe.relay",
            json!({ "id": "r-1" }).to_string().as_bytes(),
            properties,
        )
        .await;

    let process = receiver
        .wait_for(
            "for the consumed message",
            |span| span.trace_id == TRACE && span.name.starts_with("process "),
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(
        process.parent_span_id, PARENT,
        "the publisher's span is the parent"
    );
    assert_eq!(process.name, format!("process {}", scenario.names.exchange));
    let attribute = |name: &str| process.attributes.get(name).map(String::as_str);
    assert_eq!(attribute("messaging.system"), Some("rabbitmq"));
    assert_eq!(
        attribute("messaging.rabbitmq.destination.routing_key"),
        Some("probe.relay")
    );
    assert_eq!(attribute("messaging.message.id"), Some("relay-1"));
    assert_eq!(attribute("pipeforce.handlers"), Some("ProbeService::relay"));
    assert_eq!(attribute("pipeforce.outcome"), Some("handled"));
    assert_eq!(
        process.resource.get("service.name"),
        Some(&scenario.names.service)
    );
    assert_eq!(
        process
            .resource
            .get("service.namespace")
            .map(String::as_str),
        Some("acme")
    );

    // The handler's publish is a child of the consume span, and the message carries the trace.
    let publish = receiver
        .wait_for(
            "for the handler's publish",
            |span| span.trace_id == TRACE && span.name.starts_with("publish "),
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(publish.parent_span_id, process.span_id);
    let message = scenario
        .broker
        .take_one(&relayed, Duration::from_secs(10))
        .await
        .expect("the relayed message");
    let carried = message.header("traceparent").expect("a traceparent header");
    assert!(
        carried.starts_with(&format!("00-{TRACE}-{}", publish.span_id)),
        "{carried}"
    );
}

/// A user endpoint's request is a span in its caller's trace, with a log line; probes and
/// scrapes, which come every few seconds, are neither, whatever headers they carry.
#[tokio::test]
async fn an_http_request_continues_its_callers_trace_and_probes_make_no_spans_or_logs() {
    let receiver = OtlpReceiver::start().await;
    let mut settings = export_to(&receiver);
    settings.push(("RUST_LOG", "info,pipeforce::http=debug".to_owned()));
    let scenario = Scenario::new(&env(&settings)).await;
    let service = scenario.start().await;
    let client = reqwest::Client::new();
    let probe_trace = "11111111111111111111111111111111";
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";

    for probe in ["/health/live", "/health/ready", "/metrics"] {
        let response = client
            .get(format!("{}{probe}", service.http))
            .header("traceparent", traceparent(probe_trace, parent))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{probe}");
    }
    let response = client
        .get(format!("{}/greetings/stats", service.http))
        .header("traceparent", traceparent(trace, parent))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Spans are exported in the order they end: a probe's span would come first.
    let span = receiver
        .wait_for(
            "for the request",
            |span| span.trace_id == trace,
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(span.name, "GET /greetings/stats");
    assert_eq!(span.parent_span_id, parent);
    assert_eq!(
        span.attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    assert_eq!(
        span.attributes.get("http.route").map(String::as_str),
        Some("/greetings/stats")
    );
    let http_spans: Vec<String> = receiver
        .spans()
        .into_iter()
        .filter(|span| span.attributes.contains_key("http.route"))
        .map(|span| span.name)
        .collect();
    assert_eq!(http_spans, ["GET /greetings/stats"], "probes make no span");
    let logs = service.logs();
    let served: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("served"))
        .collect();
    assert_eq!(
        served.len(),
        1,
        "one log line, the user endpoint's:\n{logs}"
    );
    assert!(served[0].contains("/greetings/stats"), "{logs}");
}

/// The SDK reads `OTEL_TRACES_SAMPLER` itself (the service's config only checks it):
/// `parentbased_always_off` continues a caller's sampled trace and records no new one.
#[tokio::test]
async fn the_sampler_named_in_otel_traces_sampler_decides_which_traces_are_recorded() {
    let receiver = OtlpReceiver::start().await;
    let mut settings = export_to(&receiver);
    settings.push(("OTEL_TRACES_SAMPLER", "parentbased_always_off".to_owned()));
    let scenario = Scenario::new(&env(&settings)).await;
    let service = scenario.start().await;
    let sampled = "5b8efff798038103d269b633813fc60c";
    let client = reqwest::Client::new();
    let stats = format!("{}/greetings/stats", service.http);

    // A new trace first, then the caller's: spans are exported in the order they end.
    let response = client.get(&stats).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .get(&stats)
        .header("traceparent", traceparent(sampled, PARENT))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    receiver
        .wait_for(
            "for the caller's trace",
            |span| span.trace_id == sampled,
            Duration::from_secs(15),
        )
        .await;
    let recorded: BTreeSet<String> = receiver
        .spans()
        .into_iter()
        .map(|span| span.trace_id)
        .collect();
    assert_eq!(recorded, BTreeSet::from([sampled.to_owned()]));
}

/// A collector that hangs up on every connection: each export fails as if nothing listened,
/// and the test can count the attempts, one connection each.
struct HangingUpCollector {
    endpoint: String,
    attempts: tokio::sync::watch::Receiver<usize>,
    accepting: tokio::task::JoinHandle<()>,
}

impl HangingUpCollector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (count, attempts) = tokio::sync::watch::channel(0);
        let accepting = tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                drop(connection);
                count.send_modify(|attempts| *attempts += 1);
            }
        });
        Self {
            endpoint,
            attempts,
            accepting,
        }
    }

    /// Waits until `count` export attempts have been made in all.
    async fn wait_for_attempts(&mut self, count: usize, timeout: Duration) -> Result<(), usize> {
        let reached = tokio::time::timeout(timeout, self.attempts.wait_for(|made| *made >= count))
            .await
            .is_ok_and(|waited| waited.is_ok());
        if reached {
            Ok(())
        } else {
            Err(*self.attempts.borrow())
        }
    }
}

impl Drop for HangingUpCollector {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

#[tokio::test]
async fn messages_are_handled_while_the_collector_is_unreachable_and_that_is_logged_once() {
    let mut collector = HangingUpCollector::start().await;
    let scenario = Scenario::new(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    let service = scenario.start().await;
    const COUNT: usize = 300;

    for i in 0..COUNT {
        scenario
            .publish("probe.ok.dark", json!({ "id": format!("d-{i}") }))
            .await;
    }

    scenario
        .log
        .wait_for(
            "every message is handled",
            |lines| lines.len() == COUNT,
            Duration::from_secs(30),
        )
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !service.logs().contains("cannot export traces") {
        assert!(std::time::Instant::now() < deadline, "{}", service.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Several more export rounds fail meanwhile, each a message's spans; still one line says so.
    let failed_before = *collector.attempts.borrow();
    for more in 1..=3 {
        scenario
            .publish("probe.ok.dark", json!({ "id": format!("more-{more}") }))
            .await;
        if let Err(made) = collector
            .wait_for_attempts(failed_before + more, Duration::from_secs(10))
            .await
        {
            panic!(
                "no export attempt for message more-{more} within 10 s ({made} attempts in \
                 all):\n{}",
                service.logs()
            );
        }
    }
    let logs = service.logs();
    assert_eq!(
        logs.matches("cannot export traces").count(),
        1,
        "logged once per outage:\n{logs}"
    );
}

/// One scrape of `/metrics`, parsed.
pub(crate) struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    pub(crate) async fn of(http: &str) -> Self {
        let text = reqwest::get(format!("{http}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        Self(prometheus_parse::Scrape::parse(lines).expect("Prometheus text format"))
    }

    /// The label sets of the samples whose metric name starts with `prefix` (a histogram's
    /// buckets, sum and count share one).
    pub(crate) fn label_sets(&self, prefix: &str) -> BTreeSet<String> {
        self.0
            .samples
            .iter()
            .filter(|sample| sample.metric.starts_with(prefix))
            .map(|sample| sample.labels.to_string())
            .collect()
    }

    /// The value of the sample `name{labels}`, 0 when it is not there (yet).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.0
            .samples
            .iter()
            .filter(|sample| sample.metric == name)
            .find(|sample| {
                wanted
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
            })
            .map_or(0.0, |sample| match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name} is not a plain value: {other:?}"),
            })
    }

    /// The `_count` of the histogram `name{labels}`.
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.0
            .samples
            .iter()
            .filter(|sample| sample.metric == name)
            .find(|sample| {
                wanted
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
            })
            .map_or(0.0, |sample| match &sample.value {
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0.0, |bucket| bucket.count)
                }
                other => panic!("{name} is not a histogram: {other:?}"),
            })
    }
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_exactly_what_was_sent() {
    let scenario = Scenario::new(&[("PIPEFORCE_MESSAGING_MAX_RETRIES", "1")]).await;
    let service = scenario.start().await;
    const HANDLED: usize = 7;
    const FAILING: usize = 2;
    const REQUESTS: usize = 5;
    let handled = [("handler", "ProbeService::ok"), ("outcome", "handled")];
    let stats = [
        ("method", "GET"),
        ("route", "/greetings/stats"),
        ("status", "200"),
    ];
    let before = Scrape::of(&service.http).await;
    assert_eq!(
        before.value("pipeforce_broker_connected", &[]),
        1.0,
        "connected"
    );

    for i in 0..HANDLED {
        scenario
            .publish("probe.ok.m", json!({ "id": format!("m-{i}") }))
            .await;
    }
    for i in 0..FAILING {
        scenario
            .publish("probe.fail", json!({ "id": format!("f-{i}") }))
            .await;
    }
    for _ in 0..REQUESTS {
        reqwest::get(format!("{}/greetings/stats", service.http))
            .await
            .unwrap();
        reqwest::get(format!("{}/health/live", service.http))
            .await
            .unwrap();
    }
    scenario
        .log
        .wait_for(
            "every message is handled",
            |lines| lines.len() == HANDLED + 2 * FAILING,
            Duration::from_secs(20),
        )
        .await;
    scenario.wait_until_queue_is_empty().await;
    let after = Scrape::of(&service.http).await;

    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(
        delta("pipeforce_messages_consumed_total", &handled),
        HANDLED as f64
    );
    assert_eq!(
        delta(
            "pipeforce_messages_consumed_total",
            &[
                ("handler", "ProbeService::fail"),
                ("outcome", "dead_lettered")
            ]
        ),
        FAILING as f64
    );
    assert_eq!(
        delta(
            "pipeforce_handler_retries_total",
            &[("handler", "ProbeService::fail")]
        ),
        FAILING as f64
    );
    assert_eq!(
        delta(
            "pipeforce_messages_dead_lettered_total",
            &[("reason", "handler_failed")]
        ),
        FAILING as f64
    );
    assert_eq!(
        delta(
            "pipeforce_messages_published_total",
            &[("kind", "dead_letter")]
        ),
        FAILING as f64
    );
    assert_eq!(
        after.histogram_count(
            "pipeforce_handler_duration_seconds",
            &[("handler", "ProbeService::ok")]
        ) - before.histogram_count(
            "pipeforce_handler_duration_seconds",
            &[("handler", "ProbeService::ok")]
        ),
        HANDLED as f64
    );
    assert_eq!(
        delta("pipeforce_http_requests_total", &stats),
        REQUESTS as f64
    );
    let timed = [("method", "GET"), ("route", "/greetings/stats")];
    assert_eq!(
        after.histogram_count("pipeforce_http_request_duration_seconds", &timed)
            - before.histogram_count("pipeforce_http_request_duration_seconds", &timed),
        REQUESTS as f64
    );
    let routes = after.label_sets("pipeforce_http_requests_total");
    assert!(
        !routes
            .iter()
            .any(|labels| labels.contains("/health/") || labels.contains("/metrics")),
        "probes and scrapes are not counted: {routes:?}"
    );
    assert_eq!(after.value("pipeforce_handlers_in_flight", &[]), 0.0);
}

#[tokio::test]
async fn a_hub_call_from_a_handler_continues_the_messages_trace() {
    use wiremock::{
        Mock, MockServer, ResponseTemplate,
        matchers::{method, path},
    };

    let receiver = OtlpReceiver::start().await;
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:log"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "ok": true })))
        .expect(1)
        .mount(&hub)
        .await;
    let mut settings = export_to(&receiver);
    settings.push(("PIPEFORCE_HUB_URL", hub.uri()));
    let scenario = Scenario::new(&env(&settings)).await;
    let _service = scenario.start().await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";

    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(traceparent(trace, PARENT))),
    );
    scenario
        .broker
        .publish(
            &scenario.names.exchange,
            "probe.hub",
            json!({ "id": "h-1" }).to_string().as_bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await;

    let call = receiver
        .wait_for(
            "for the hub call",
            |span| span.trace_id == trace && span.name == "POST",
            Duration::from_secs(15),
        )
        .await;
    let process = receiver
        .wait_for(
            "for the consumed message",
            |span| span.trace_id == trace && span.name.starts_with("process "),
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(call.parent_span_id, process.span_id);
    assert_eq!(
        call.attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    let requests = hub.received_requests().await.expect("recorded requests");
    let sent = requests[0]
        .headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .expect("the hub call carries a traceparent");
    assert!(
        sent.starts_with(&format!("00-{trace}-{}", call.span_id)),
        "{sent}"
    );
}
