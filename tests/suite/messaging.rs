//! The messaging runtime of a rendered service, against the real RabbitMQ, through the probe
//! handlers of [`crate::probe`].

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::json;
use template_tests::{
    Render,
    amqp::{close_connections_named, total_messages},
    repo_root,
};

use crate::probe::{Scenario, add_service_module};

#[tokio::test]
async fn a_message_is_acked_only_after_its_handler_succeeded() {
    let scenario = Scenario::new(&[]).await;
    let mut first = scenario.start().await;
    scenario
        .publish("probe.ok.slow", json!({ "id": "slow-1", "sleep_ms": 3000 }))
        .await;
    // Delivered (no longer ready) but the handler still sleeps: kill the process hard.
    let queue = scenario.names.queue();
    scenario
        .broker
        .wait_until_delivered(&queue, Duration::from_secs(10))
        .await;
    first.signal(Signal::SIGKILL);
    first.wait_for_exit(Duration::from_secs(5)).await;
    assert!(
        scenario.log.lines().is_empty(),
        "the handler had not finished"
    );

    let _second = scenario.start().await;

    scenario
        .log
        .wait_for(
            "the redelivered message is handled",
            |lines| lines == ["ok slow-1"],
            Duration::from_secs(15),
        )
        .await;
    scenario.wait_until_queue_is_empty().await;
}

#[tokio::test]
async fn a_failing_handler_is_retried_then_dead_lettered_with_the_reason() {
    let scenario = Scenario::new(&[("PIPEFORCE_MESSAGING_MAX_RETRIES", "2")]).await;
    let _service = scenario.start().await;

    scenario.publish("probe.fail", json!({ "id": "f-1" })).await;

    scenario.wait_until_queue_is_empty().await;
    let dead = wait_for_dead_letters(&scenario, 1).await;
    assert_eq!(scenario.log.lines(), ["fail f-1", "fail f-1", "fail f-1"]);
    assert_eq!(
        dead[0].header("x-pipeforce-error").as_deref(),
        Some("ProbeService::fail failed after 3 attempts: probe failure")
    );
    assert_eq!(
        dead[0].header("x-pipeforce-handler").as_deref(),
        Some("ProbeService::fail")
    );
    assert_eq!(
        dead[0]
            .header("x-pipeforce-original-routing-key")
            .as_deref(),
        Some("probe.fail")
    );
    let body: serde_json::Value = serde_json::from_slice(&dead[0].body).unwrap();
    assert_eq!(body["id"], "f-1", "the dead letter keeps the body");
}

#[tokio::test]
async fn a_body_that_does_not_decode_is_dead_lettered_at_once() {
    let scenario = Scenario::new(&[]).await;
    let _service = scenario.start().await;

    scenario
        .broker
        .publish(
            &scenario.names.exchange,
            "probe.fail",
            b"{not json",
            Default::default(),
        )
        .await;

    let dead = wait_for_dead_letters(&scenario, 1).await;
    let reason = dead[0].header("x-pipeforce-error").unwrap();
    assert!(reason.starts_with("cannot decode the body"), "{reason}");
    assert!(scenario.log.lines().is_empty(), "the handler never ran");
}

#[tokio::test]
async fn a_panicking_handler_is_treated_like_a_failing_one() {
    let scenario = Scenario::new(&[("PIPEFORCE_MESSAGING_MAX_RETRIES", "1")]).await;
    let service = scenario.start().await;

    scenario
        .publish("probe.panic", json!({ "id": "p-1" }))
        .await;
    let dead = wait_for_dead_letters(&scenario, 1).await;
    // The service lives on and keeps handling messages.
    scenario
        .publish("probe.ok.after", json!({ "id": "after" }))
        .await;
    scenario
        .log
        .wait_for(
            "the next message is handled",
            |lines| lines.iter().any(|line| line == "ok after"),
            Duration::from_secs(10),
        )
        .await;

    let reason = dead[0].header("x-pipeforce-error").unwrap();
    assert!(
        reason.contains("after 2 attempts: the handler panicked: probe panic"),
        "{reason}"
    );
    assert_eq!(scenario.log.counts()["panic p-1"], 2);
    assert!(
        reqwest::get(format!("{}/health/live", service.http))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_message_matching_two_handlers_runs_each_once_and_is_settled_once() {
    let scenario = Scenario::new(&[]).await;
    let _service = scenario.start().await;

    scenario
        .publish("probe.multi.x", json!({ "id": "m-1" }))
        .await;

    scenario
        .log
        .wait_for(
            "both handlers ran",
            |lines| lines.len() == 2,
            Duration::from_secs(10),
        )
        .await;
    scenario.wait_until_queue_is_empty().await;
    let counts = scenario.log.counts();
    assert_eq!(counts.get("multi-one m-1"), Some(&1));
    assert_eq!(counts.get("multi-many m-1"), Some(&1));
    assert_eq!(
        scenario
            .broker
            .ready_count(&scenario.names.dead_letter_queue)
            .await,
        0
    );
}

#[tokio::test]
async fn a_dropped_connection_is_reestablished_and_no_message_is_lost() {
    let scenario = Scenario::new(&[]).await;
    let mut service = scenario.start().await;
    const COUNT: usize = 400;

    for i in 0..COUNT / 2 {
        scenario
            .publish(
                "probe.ok.n",
                json!({ "id": format!("n-{i}"), "sleep_ms": 5 }),
            )
            .await;
    }
    // Only the consuming connection: the service ends its publishing one with it.
    let closed = close_connections_named(&scenario.names.service);
    assert!(closed >= 1, "the service's connection was found and closed");
    service
        .wait_for_status("/health/ready", 503, Duration::from_secs(5))
        .await;
    for i in COUNT / 2..COUNT {
        scenario
            .publish(
                "probe.ok.n",
                json!({ "id": format!("n-{i}"), "sleep_ms": 5 }),
            )
            .await;
    }
    service
        .wait_for_status("/health/ready", 200, Duration::from_secs(30))
        .await;

    scenario
        .log
        .wait_for(
            "every message is handled",
            |lines| lines.iter().collect::<BTreeSet<_>>().len() == COUNT,
            Duration::from_secs(60),
        )
        .await;
    scenario.wait_until_queue_is_empty().await;
    let handled: BTreeSet<String> = scenario.log.lines().into_iter().collect();
    let expected: BTreeSet<String> = (0..COUNT).map(|i| format!("ok n-{i}")).collect();
    assert_eq!(handled, expected);
    assert_eq!(
        scenario
            .broker
            .ready_count(&scenario.names.dead_letter_queue)
            .await,
        0
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_handlers_finish_and_loses_nothing() {
    let scenario = Scenario::new(&[]).await;
    let mut service = scenario.start().await;
    const COUNT: usize = 40;
    for i in 0..COUNT {
        scenario
            .publish(
                "probe.ok.t",
                json!({ "id": format!("t-{i}"), "sleep_ms": 800 }),
            )
            .await;
    }
    let queue = scenario.names.queue();
    scenario
        .broker
        .wait_until_delivered(&queue, Duration::from_secs(10))
        .await;

    service.signal(Signal::SIGTERM);
    let status = service.wait_for_exit(Duration::from_secs(10)).await;

    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", service.logs());
    let handled = scenario.log.lines().len();
    let left = total_messages(&queue).unwrap() as usize;
    assert_eq!(handled, COUNT, "every in-flight handler finished");
    assert_eq!(left, 0, "and every one was acked before exit");
}

#[tokio::test]
async fn a_request_gets_its_reply_and_an_unanswered_one_times_out() {
    let scenario = Scenario::new(&[]).await;
    let _service = scenario.start().await;

    // From outside: the example greeting answers requests.
    let reply = scenario
        .broker
        .request(
            &scenario.names.exchange,
            "courier.greeting",
            &json!({ "name": "Ada" }),
            Duration::from_secs(10),
        )
        .await
        .expect("a reply");
    assert_eq!(reply["text"], "Hello, Ada!");

    // From inside a handler, through the service's own publisher.
    scenario.publish("probe.ask", json!({ "id": "q-1" })).await;
    scenario
        .log
        .wait_for(
            "both requests finished",
            |lines| lines.len() >= 3,
            Duration::from_secs(15),
        )
        .await;
    let lines = scenario.log.lines();
    assert!(
        lines.contains(&"ask-reply Hello, q-1!".to_owned()),
        "{lines:?}"
    );
    assert!(lines.contains(&"ask-timeout q-1".to_owned()), "{lines:?}");
}

pub(crate) async fn wait_for_dead_letters(
    scenario: &Scenario,
    count: usize,
) -> Vec<template_tests::amqp::DeadLetter> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut dead = Vec::new();
    while dead.len() < count {
        assert!(Instant::now() < deadline, "got {} dead letters", dead.len());
        dead.extend(
            scenario
                .broker
                .take_all(&scenario.names.dead_letter_queue)
                .await,
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    dead
}

#[test]
fn a_malformed_pattern_is_a_compile_error_naming_the_pattern_and_the_rule() {
    let rendered = Render::new("broken")
        .run()
        .unwrap_or_else(|failure| panic!("render failed:\n{}", failure.output));
    add_service_module(
        &rendered.dir,
        "malformed",
        &repo_root().join("tests/fixtures/malformed_pattern.rs"),
    );

    let output = rendered.cargo(&["check", "--locked", "--message-format", "short"]);

    assert!(!output.status.success(), "a malformed pattern compiled");
    let errors = &output.stderr;
    assert!(
        errors.contains(r#"invalid routing-key pattern "pipeforce..webhook": words are separated by single dots"#),
        "{errors}"
    );
    assert!(errors.contains("src/service/malformed.rs"), "{errors}");
}

#[tokio::test]
async fn a_quorum_queue_is_used_when_configured() {
    let scenario = Scenario::new(&[("PIPEFORCE_MESSAGING_QUEUE_TYPE", "quorum")]).await;
    let _service = scenario.start().await;

    scenario.publish("probe.ok.q", json!({ "id": "q-1" })).await;

    scenario
        .log
        .wait_for(
            "handled",
            |lines| lines == ["ok q-1"],
            Duration::from_secs(10),
        )
        .await;
    let output = template_tests::run(std::process::Command::new("rabbitmqctl").args([
        "--silent",
        "list_queues",
        "name",
        "type",
    ]));
    let queue = scenario.names.queue();
    let line = output
        .stdout
        .lines()
        .find(|line| line.starts_with(&format!("{queue}\t")))
        .unwrap_or_else(|| panic!("{queue} is listed:\n{}", output.stdout));
    assert!(line.ends_with("quorum"), "{line}");
}

/// The service offers RabbitMQ 16 KiB frames (lapin's buffers grow with the frame size): a
/// body far larger than a frame is consumed whole, and published whole by the service.
#[tokio::test]
async fn bodies_many_frames_long_are_consumed_and_published_whole() {
    let scenario = Scenario::new(&[]).await;
    let service = scenario.start().await;

    let padding = "p".repeat(300 * 1024);
    scenario
        .publish(
            "probe.ok.large",
            json!({ "id": "large-1", "padding": padding }),
        )
        .await;
    scenario
        .log
        .wait_for(
            "the large message is handled",
            |lines| lines == ["ok large-1"],
            Duration::from_secs(15),
        )
        .await;

    // POST /greetings publishes the greeting; the service's own handler consumes it.
    let name = "n".repeat(200 * 1024);
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/greetings", service.http))
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stats: serde_json::Value = client
            .get(format!("{}/greetings/stats", service.http))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["greetings"] == 1 {
            assert_eq!(stats["last_name"].as_str().map(str::len), Some(name.len()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the greeting was not handled: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    scenario.wait_until_queue_is_empty().await;
}
