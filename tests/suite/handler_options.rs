//! The `#[event]` options against the real broker, through the option handlers of
//! `tests/fixtures/options_probe.rs`, and the options that make no sense as compile errors.

use std::{collections::BTreeMap, time::Duration};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::json;
use template_tests::{Render, otlp::OtlpReceiver, repo_root};

use crate::{
    api_docs,
    probe::{Scenario, add_service_module},
};

#[tokio::test]
async fn two_replicas_both_get_each_broadcast_and_share_the_ordinary_messages() {
    let scenario = Scenario::new(&[]).await;
    let _a = scenario.start_with(&[("PROBE_REPLICA", "a")]).await;
    let _b = scenario.start_with(&[("PROBE_REPLICA", "b")]).await;

    for id in 0..10 {
        scenario
            .publish("options.broadcast", json!({ "id": id.to_string() }))
            .await;
    }
    for id in 0..20 {
        scenario
            .publish("options.shared", json!({ "id": id.to_string() }))
            .await;
    }

    let broadcasts =
        |lines: &[String]| lines.iter().filter(|l| l.starts_with("broadcast ")).count();
    let shared = |lines: &[String]| lines.iter().filter(|l| l.starts_with("shared ")).count();
    scenario
        .log
        .wait_for(
            "10 broadcasts in each replica and the 20 ordinary messages",
            |lines| broadcasts(lines) >= 20 && shared(lines) >= 20,
            Duration::from_secs(20),
        )
        .await;
    scenario.wait_until_queue_is_empty().await;
    let counts = scenario.log.counts();
    for id in 0..10 {
        for replica in ["a", "b"] {
            assert_eq!(
                counts.get(&format!("broadcast {replica} {id}")),
                Some(&1),
                "broadcast {id} in replica {replica}: {counts:?}"
            );
        }
    }
    let mut handled_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in scenario.log.lines() {
        if let Some(rest) = line.strip_prefix("shared ") {
            let (replica, id) = rest.split_once(' ').unwrap();
            handled_by
                .entry(id.to_owned())
                .or_default()
                .push(replica.to_owned());
        }
    }
    assert_eq!(handled_by.len(), 20, "{handled_by:?}");
    assert!(
        handled_by.values().all(|replicas| replicas.len() == 1),
        "each ordinary message runs once: {handled_by:?}"
    );
    for replica in ["a", "b"] {
        assert!(
            handled_by.values().any(|replicas| replicas[0] == replica),
            "replica {replica} took a share: {handled_by:?}"
        );
    }
}

#[tokio::test]
async fn a_result_is_published_with_the_callers_trace_id() {
    const TRACE: &str = "5cf92f3577b34da6a3ce929d0e0e4737";
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let scenario = Scenario::new(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    let _service = scenario.start_with(&[("PROBE_REPLICA", "a")]).await;
    let published = scenario
        .broker
        .capture(&scenario.names.exchange, "options.published")
        .await;

    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(format!("00-{TRACE}-00f067aa0ba902b7-01"))),
    );
    scenario
        .broker
        .publish(
            &scenario.names.exchange,
            "options.publish",
            json!({ "id": "p-1" }).to_string().as_bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await;

    let message = scenario
        .broker
        .take_one(&published, Duration::from_secs(15))
        .await
        .expect("the published result");
    let body: serde_json::Value = serde_json::from_slice(&message.body).unwrap();
    assert_eq!(body, json!({ "id": "p-1", "replica": "a" }));
    let carried = message.header("traceparent").expect("a traceparent header");
    assert!(carried.starts_with(&format!("00-{TRACE}-")), "{carried}");
    scenario.wait_until_queue_is_empty().await;
}

#[tokio::test]
async fn a_concurrency_of_one_never_runs_two_at_once_under_a_burst() {
    let scenario = Scenario::new(&[("PIPEFORCE_MESSAGING_PREFETCH", "50")]).await;
    let _service = scenario.start().await;

    for id in 0..30 {
        scenario
            .publish(
                "options.serial",
                json!({ "id": id.to_string(), "sleep_ms": 10 }),
            )
            .await;
    }

    scenario
        .log
        .wait_for(
            "every run ended",
            |lines| {
                lines
                    .iter()
                    .filter(|l| l.starts_with("serial-end "))
                    .count()
                    == 30
            },
            Duration::from_secs(30),
        )
        .await;
    let lines = scenario.log.lines();
    // Starts and ends alternate: no run starts before the one before it ended.
    for pair in lines.chunks(2) {
        let start = pair[0].strip_prefix("serial-start ");
        let end = pair
            .get(1)
            .and_then(|line| line.strip_prefix("serial-end "));
        assert!(
            start.is_some() && start == end,
            "two runs overlap at {pair:?}: {lines:?}"
        );
    }
    scenario.wait_until_queue_is_empty().await;
}

#[tokio::test]
async fn retries_of_a_handler_override_the_service_wide_count() {
    let scenario = Scenario::new(&[("PIPEFORCE_MESSAGING_MAX_RETRIES", "4")]).await;
    let _service = scenario.start().await;

    scenario
        .publish("options.retry_once", json!({ "id": "r-1" }))
        .await;

    let dead = crate::messaging::wait_for_dead_letters(&scenario, 1).await;
    assert_eq!(
        dead[0].header("x-pipeforce-error").as_deref(),
        Some("OptionsProbe::retry_once failed after 2 attempts: options probe failure")
    );
    assert_eq!(scenario.log.lines(), ["retry-once r-1", "retry-once r-1"]);
}

#[test]
fn options_that_make_no_sense_are_compile_errors_naming_the_option() {
    let rendered = Render::new("unsure")
        .run()
        .unwrap_or_else(|failure| panic!("render failed:\n{}", failure.output));
    add_service_module(
        &rendered.dir,
        "bad_options",
        &repo_root().join("tests/fixtures/bad_options.rs"),
    );

    let output = rendered.cargo(&["check", "--locked", "--message-format", "short"]);

    assert!(!output.status.success(), "nonsense options compiled");
    let errors = &output.stderr;
    for expected in [
        "`publish` publishes the handler's `Ok` value: the handler must return `Result<T, E>` \
         with a serializable `T` other than `()`; it returns `Result<(), _>`",
        "`concurrency` must be at least 1: with 0 the handler would never run",
        "unknown #[event] option `retry`; the options are: publish = \"key\", retries = N, \
         timeout_secs = N, broadcast, concurrency = N",
        "`publish`: invalid routing key \"invoices.*\": a routing key to publish with has no \
         `*` or `#` wildcards",
    ] {
        assert!(errors.contains(expected), "{expected}\nnot in:\n{errors}");
    }
    assert!(errors.contains("src/service/bad_options.rs"), "{errors}");
}

#[tokio::test]
async fn the_asyncapi_document_shows_every_option_and_stays_valid() {
    let scenario = Scenario::new(&[]).await;
    let service = scenario.start().await;

    let document = api_docs::document(&service.http, "/asyncapi.json").await;

    assert_eq!(
        api_docs::asyncapi_errors(&document),
        "",
        "valid AsyncAPI 3.0"
    );
    let operation = &document["operations"]["OptionsProbe.publish.publish"];
    assert_eq!(operation["action"], "send", "{operation}");
    let channel = &document["channels"]["OptionsProbe.publish.publish"];
    assert_eq!(channel["address"], "options.published");
    let message = channel["messages"]["Echo"]["$ref"].as_str().unwrap();
    assert_eq!(message, "#/components/messages/Echo");
    assert_eq!(
        document["components"]["messages"]["Echo"]["payload"]["$ref"], "#/components/schemas/Echo",
        "the published value's schema, derived from the code"
    );
    let description = |id: &str| {
        document["channels"][id]["description"]
            .as_str()
            .unwrap_or_else(|| panic!("channel {id}"))
            .to_owned()
    };
    assert!(
        description("OptionsProbe.broadcast").contains(
            "every replica gets each message; messages sent while no replica runs are not kept"
        ),
        "{}",
        description("OptionsProbe.broadcast")
    );
    let retry_once = description("OptionsProbe.retry_once");
    assert!(
        retry_once.contains("Retries after a failure: 1 (`retries`).")
            && retry_once.contains("Time limit per run: 5 s (`timeout_secs`)."),
        "{retry_once}"
    );
    let serial = description("OptionsProbe.serial");
    assert!(
        serial.contains("Runs at once per replica: at most 1 (`concurrency`)."),
        "{serial}"
    );
}
