//! Settlement at the edges: a dead-letter queue that refuses the copy, redeliveries, time
//! limits, panicking decoders, shutdown and the life cycle of the service's connections.
//! Each test runs the probe service (`tests/fixtures/probe.rs`) against the real broker.

use std::time::{Duration, Instant};

use lapin::{
    BasicProperties,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use nix::sys::signal::Signal;
use serde_json::json;
use template_tests::{
    ServiceProcess,
    amqp::{self, DeadLetter, total_messages},
    node::RabbitNode,
    run,
};

use crate::probe::Scenario;

#[tokio::test]
async fn a_deleted_dead_letter_queue_is_declared_again_and_gets_the_message() {
    let scenario = Scenario::new(&[("PIPEFORCE_MESSAGING_MAX_RETRIES", "0")]).await;
    let _service = scenario.start().await;
    let dead_letter_queue = &scenario.names.dead_letter_queue;
    let connection = amqp::connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            dead_letter_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the dead-letter queue");

    scenario
        .publish("probe.fail", json!({ "id": "gone" }))
        .await;

    let dead = wait_for_dead_letters(&scenario, Duration::from_secs(20)).await;
    assert_eq!(
        dead.header("x-pipeforce-error").as_deref(),
        Some("ProbeService::fail failed after 1 attempt: probe failure")
    );
    assert_eq!(
        dead.header("x-pipeforce-original-routing-key").as_deref(),
        Some("probe.fail")
    );
    scenario.wait_until_queue_is_empty().await;
}

#[tokio::test]
async fn a_full_dead_letter_queue_leaves_the_message_waiting_in_the_service_queue() {
    let scenario = Scenario::new(&[("PIPEFORCE_MESSAGING_MAX_RETRIES", "0")]).await;
    let dead_letter_queue = &scenario.names.dead_letter_queue;
    let connection = amqp::connect().await;
    let channel = connection.create_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    channel
        .queue_declare(
            dead_letter_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .expect("declare a dead-letter queue of one message");
    scenario
        .broker
        .publish("", dead_letter_queue, b"filler", BasicProperties::default())
        .await;
    let service = scenario.start().await;
    let queue = scenario.names.queue();

    scenario
        .publish("probe.fail", json!({ "id": "full" }))
        .await;

    // The copy is refused again and again; meanwhile the message must not leave its queue.
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead_letter_failures(&service).await < 2.0 && total_messages(&queue) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "no refused dead-letter copy was reported:\n{}",
            service.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        total_messages(&queue),
        Some(1),
        "the message waits in the service queue instead of being lost"
    );

    // Once the dead-letter queue has room, the copy goes through.
    let taken = scenario.broker.take_all(dead_letter_queue).await;
    assert_eq!(
        taken.len(),
        1,
        "only the filler was in the dead-letter queue"
    );
    let dead = wait_for_dead_letters(&scenario, Duration::from_secs(40)).await;
    let body: serde_json::Value = serde_json::from_slice(&dead.body).unwrap();
    assert_eq!(body["id"], "full");
    assert_eq!(
        dead.header("x-pipeforce-handler").as_deref(),
        Some("ProbeService::fail")
    );
    scenario.wait_until_queue_is_empty().await;
}

#[tokio::test]
async fn a_redelivered_message_runs_although_its_message_id_was_dead_lettered_before() {
    let scenario = Scenario::new(&[("PIPEFORCE_MESSAGING_MAX_RETRIES", "0")]).await;
    let mut service = scenario.start().await;
    let with_id = || {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("shared-id".into())
    };
    let exchange = &scenario.names.exchange;
    scenario
        .broker
        .publish(exchange, "probe.fail", br#"{"id":"a"}"#, with_id())
        .await;
    wait_for_dead_letters(&scenario, Duration::from_secs(15)).await;

    // Another message with the same id, cut short by a dropped connection while it runs.
    scenario
        .broker
        .publish(
            exchange,
            "probe.ok.slow",
            // Long enough to be cut short even when `rabbitmqctl` takes seconds.
            br#"{"id":"b","sleep_ms":6000}"#,
            with_id(),
        )
        .await;
    let queue = scenario.names.queue();
    scenario
        .broker
        .wait_until_delivered(&queue, Duration::from_secs(10))
        .await;
    let service_name = scenario.names.service.clone();
    let closed = tokio::task::spawn_blocking(move || close_service_connections(&service_name))
        .await
        .unwrap();
    assert!(
        closed >= 1,
        "the service's connections were found and closed"
    );
    service
        .wait_for_status("/health/ready", 200, Duration::from_secs(30))
        .await;

    scenario
        .log
        .wait_for(
            "the cut-short run and the redelivery's run",
            |lines| lines.iter().filter(|line| *line == "ok b").count() == 2,
            Duration::from_secs(40),
        )
        .await;
    scenario.wait_until_queue_is_empty().await;
}

#[tokio::test]
async fn a_body_whose_decoding_panics_is_dead_lettered_and_later_messages_are_acked() {
    let scenario = Scenario::new(&[]).await;
    let _service = scenario.start().await;

    scenario.publish("probe.explode", json!({})).await;
    let dead = wait_for_dead_letters(&scenario, Duration::from_secs(15)).await;
    scenario
        .publish("probe.ok.after", json!({ "id": "after" }))
        .await;

    let reason = dead.header("x-pipeforce-error").unwrap();
    assert!(
        reason.starts_with("cannot decode the body: decoding panicked: probe: decoding panicked"),
        "{reason}"
    );
    scenario
        .log
        .wait_for(
            "the next message is handled",
            |lines| lines == ["ok after"],
            Duration::from_secs(10),
        )
        .await;
    scenario.wait_until_queue_is_empty().await;
}

#[tokio::test]
async fn a_handler_past_its_time_limit_is_retried_then_dead_lettered_naming_the_limit() {
    let scenario = Scenario::new(&[
        ("PIPEFORCE_MESSAGING_HANDLER_TIMEOUT_SECS", "1"),
        ("PIPEFORCE_MESSAGING_MAX_RETRIES", "1"),
    ])
    .await;
    let _service = scenario.start().await;

    scenario
        .publish("probe.ok.slow", json!({ "id": "slow", "sleep_ms": 4000 }))
        .await;

    let dead = wait_for_dead_letters(&scenario, Duration::from_secs(15)).await;
    assert_eq!(
        dead.header("x-pipeforce-error").as_deref(),
        Some(
            "ProbeService::ok failed after 2 attempts: the handler did not finish within 1 s \
             (PIPEFORCE_MESSAGING_HANDLER_TIMEOUT_SECS)"
        )
    );
    scenario.wait_until_queue_is_empty().await;
    assert!(scenario.log.lines().is_empty(), "no run got to its end");
}

/// On a node with a 5 s consumer timeout, checked every second (RabbitMQ checks it on the
/// channel tick, every 60 s by default): retries that would run past it give way to
/// dead-lettering, instead of the broker closing the channel and the message starting over.
#[tokio::test]
async fn retries_that_cannot_finish_before_the_consumer_timeout_give_way_to_dead_lettering() {
    let node = tokio::task::spawn_blocking(|| {
        RabbitNode::start_with(
            "consumer_timeout = 5000",
            "[{rabbit, [{channel_tick_interval, 1000}]}].",
        )
    })
    .await
    .unwrap();
    let scenario = Scenario::on_node(
        &node,
        &[
            ("PIPEFORCE_MESSAGING_CONSUMER_TIMEOUT_SECS", "5"),
            ("PIPEFORCE_MESSAGING_HANDLER_TIMEOUT_SECS", "1"),
            ("PIPEFORCE_MESSAGING_MAX_RETRIES", "100"),
            ("PIPEFORCE_MESSAGING_RETRY_DELAY_MS", "1000"),
        ],
    )
    .await;
    let _service = scenario.start().await;

    scenario.publish("probe.fail", json!({ "id": "ct" })).await;

    let dead = wait_for_dead_letters(&scenario, Duration::from_secs(20)).await;
    let reason = dead.header("x-pipeforce-error").unwrap();
    assert!(
        reason.contains(
            "not retried, since another attempt could not finish before the broker's consumer \
             timeout"
        ),
        "{reason}"
    );
    assert_eq!(
        dead.header("x-pipeforce-redelivered"),
        None,
        "dead-lettered on its first delivery: {dead:?}"
    );
    scenario.wait_until_queue_is_empty().await;
}

#[tokio::test]
async fn shutdown_keeps_to_its_timeout_closes_the_connections_and_requeues_what_ran() {
    let scenario = Scenario::new(&[("PIPEFORCE_SHUTDOWN_TIMEOUT_SECS", "2")]).await;
    let mut service = scenario.start().await;
    scenario
        .publish("probe.ok.long", json!({ "id": "long", "sleep_ms": 60000 }))
        .await;
    let queue = scenario.names.queue();
    scenario
        .broker
        .wait_until_delivered(&queue, Duration::from_secs(10))
        .await;

    service.signal(Signal::SIGTERM);
    let asked = Instant::now();
    let status = service.wait_for_exit(Duration::from_secs(10)).await;
    let took = asked.elapsed();

    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", service.logs());
    assert!(
        took < Duration::from_millis(3500),
        "took {took:?} for a 2 s shutdown timeout:\n{}",
        service.logs()
    );
    assert!(
        service.logs().contains("messaging stopped"),
        "the connections were closed:\n{}",
        service.logs()
    );
    assert_eq!(
        scenario.broker.ready_count(&queue).await,
        1,
        "back in the queue"
    );
}

#[tokio::test]
async fn when_the_broker_cancels_the_consumer_the_session_ends_with_both_connections() {
    let scenario = Scenario::new(&[]).await;
    let mut service = scenario.start().await;
    let service_name = &scenario.names.service;
    let publish_name = format!("{service_name}-publish");
    assert_eq!(connections_named(service_name), 1);

    let connection = amqp::connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            scenario.names.queue().as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the service queue");
    service
        .wait_for_status("/health/ready", 503, Duration::from_secs(10))
        .await;
    service
        .wait_for_status("/health/ready", 200, Duration::from_secs(30))
        .await;

    // A publish from the service after the new session started.
    let relayed = scenario
        .broker
        .capture(&scenario.names.exchange, "probe.relayed")
        .await;
    scenario.publish("probe.relay", json!({ "id": "r" })).await;
    assert!(
        scenario
            .broker
            .take_one(&relayed, Duration::from_secs(15))
            .await
            .is_some(),
        "the relayed message arrived"
    );
    assert_eq!(
        connections_named(service_name),
        1,
        "no consuming connection of the old session stays open"
    );
    assert_eq!(
        connections_named(&publish_name),
        1,
        "one publishing connection, the new session's"
    );
}

/// Closes the service's consuming and publishing connections, listed at once and closed side
/// by side (one `rabbitmqctl` call takes a second or more), so that a new session's
/// connections are not closed too. Returns how many it closed.
pub fn close_service_connections(service: &str) -> usize {
    let output = run(std::process::Command::new("rabbitmqctl").args([
        "--silent",
        "list_connections",
        "pid",
        "client_properties",
    ]));
    let markers = [service.to_owned(), format!("{service}-publish")]
        .map(|name| format!("{{\"connection_name\",\"{name}\"}}"));
    let pids: Vec<String> = output
        .stdout
        .lines()
        .filter(|line| markers.iter().any(|marker| line.contains(marker.as_str())))
        .filter_map(|line| line.split_once('\t').map(|(pid, _)| pid.to_owned()))
        .collect();
    let closing: Vec<_> = pids
        .iter()
        .cloned()
        .map(|pid| {
            std::thread::spawn(move || {
                run(std::process::Command::new("rabbitmqctl").args([
                    "--silent",
                    "close_connection",
                    &pid,
                    "closed by the template's tests",
                ]))
                .assert_success("rabbitmqctl close_connection");
            })
        })
        .collect();
    for close in closing {
        close.join().expect("rabbitmqctl close_connection");
    }
    pids.len()
}

/// Open broker connections named `name`.
fn connections_named(name: &str) -> usize {
    let output = run(std::process::Command::new("rabbitmqctl").args([
        "--silent",
        "list_connections",
        "client_properties",
    ]));
    let marker = format!("{{\"connection_name\",\"{name}\"}}");
    output
        .stdout
        .lines()
        .filter(|line| line.contains(&marker))
        .count()
}

/// The service's `pipeforce_dead_letter_failures_total`, 0 while it is not reported.
async fn dead_letter_failures(service: &ServiceProcess) -> f64 {
    let Ok(response) = reqwest::get(format!("{}/metrics", service.http)).await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix("pipeforce_dead_letter_failures_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits for one message in the scenario's dead-letter queue (which may not exist for a while)
/// and takes it.
async fn wait_for_dead_letters(scenario: &Scenario, timeout: Duration) -> DeadLetter {
    let queue = &scenario.names.dead_letter_queue;
    let deadline = Instant::now() + timeout;
    while scenario.broker.ready_count(queue).await == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing reached {queue} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut taken = scenario.broker.take_all(queue).await;
    assert_eq!(taken.len(), 1, "one dead letter: {taken:?}");
    taken.remove(0)
}
