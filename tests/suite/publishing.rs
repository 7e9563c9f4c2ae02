//! Publishing that never hangs and never loses what it copies, and the queue arguments that
//! keep a message which kills the service from crash-looping it.

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::{Value, json};
use template_tests::{ServiceProcess, amqp, free_port, node::RabbitNode, run};

use crate::{
    chaos::BrokerUser,
    probe::{PROBE_SERVICE, Scenario},
};

/// The probe service's binary, built once.
fn probe_binary() -> &'static std::path::Path {
    &LazyLock::force(&PROBE_SERVICE).1
}

/// A message published with a TTL keeps it in the service queue, but its dead-letter copy
/// must not expire: RabbitMQ's own dead-lettering removes the expiration, and so do we.
#[tokio::test]
async fn a_dead_letter_does_not_expire_with_the_message_ttl() {
    let scenario = Scenario::new(&[]).await;
    let _service = scenario.start().await;
    let dead_letter_queue = &scenario.names.dead_letter_queue;

    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_expiration("1000".into());
    scenario
        .broker
        .publish(
            &scenario.names.exchange,
            "probe.ok.ttl",
            b"not json",
            properties,
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while scenario.broker.ready_count(dead_letter_queue).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the poison message was not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The point of the test is the TTL running out: a twin with the same TTL, queued after
    // the dead letter in a queue of the test's own, must expire first.
    let twin_queue = scenario
        .broker
        .capture(
            &scenario.names.exchange,
            "ttl-twin.nothing-is-published-here",
        )
        .await;
    let twin_published = Instant::now();
    scenario
        .broker
        .publish(
            "",
            &twin_queue,
            b"twin",
            BasicProperties::default().with_expiration("1000".into()),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while scenario.broker.ready_count(&twin_queue).await != 0 {
        assert!(
            Instant::now() < deadline,
            "a message with a 1000 ms TTL did not expire within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        twin_published.elapsed() >= Duration::from_millis(1000),
        "the twin left its queue before its TTL ran out: it was never queued"
    );

    let dead_letter = scenario
        .broker
        .take_one(dead_letter_queue, Duration::from_secs(1))
        .await
        .expect("the dead letter expired in the dead-letter queue with the message's TTL");
    assert_eq!(
        dead_letter
            .header("x-pipeforce-original-expiration")
            .as_deref(),
        Some("1000")
    );
}

/// A message that names its publisher in `user_id` can still be dead-lettered by a service
/// logged in as another user: RabbitMQ refuses a publish whose `user_id` is not the
/// publishing user's, so the copy leaves it out and keeps it in a header.
#[tokio::test]
async fn a_message_with_another_users_id_is_dead_lettered_all_the_same() {
    let user = BrokerUser::create();
    let scenario = Scenario::new(&[
        ("PIPEFORCE_MESSAGING_USERNAME", &user.name),
        ("PIPEFORCE_MESSAGING_PASSWORD", &user.password),
    ])
    .await;
    let _service = scenario.start().await;

    // The test publishes as guest, so RabbitMQ accepts `user_id` guest from it.
    let properties = BasicProperties::default().with_user_id("guest".into());
    scenario
        .broker
        .publish(
            &scenario.names.exchange,
            "probe.fail",
            b"not json",
            properties,
        )
        .await;

    let dead_letter = scenario
        .broker
        .take_one(&scenario.names.dead_letter_queue, Duration::from_secs(15))
        .await
        .expect("the dead-letter copy of another user's message was refused");
    assert_eq!(
        dead_letter
            .header("x-pipeforce-original-user-id")
            .as_deref(),
        Some("guest")
    );
}

/// With the broker unreachable, concurrent publishes each give up after the publish timeout,
/// rather than one after the other.
#[tokio::test]
async fn concurrent_publishes_without_a_broker_each_fail_within_the_timeout() {
    let names = amqp::Names::unique();
    let closed_port = free_port().to_string();
    let mut env = names.env();
    env.push(("PIPEFORCE_MESSAGING_PORT", closed_port));
    env.push(("PIPEFORCE_MESSAGING_PUBLISH_TIMEOUT_SECS", "2".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut service = ServiceProcess::start(probe_binary(), &env);
    service
        .wait_for_status("/health/live", 200, Duration::from_secs(30))
        .await;

    let client = reqwest::Client::builder()
        // Bounds the test when publishes wait one after the other (5 × the wait).
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let started = Instant::now();
    let posts = (0..5).map(|n| {
        let request = client
            .post(format!("{}/greetings", service.http))
            .json(&json!({ "name": format!("caller {n}") }));
        async move {
            let status = request.send().await.map(|response| response.status());
            (status, started.elapsed())
        }
    });
    let results = futures_util::future::join_all(posts).await;

    for (status, elapsed) in &results {
        let status = status
            .as_ref()
            .unwrap_or_else(|error| panic!("no answer: {error}; all: {results:?}"));
        assert_eq!(status.as_u16(), 503, "{results:?}");
        // 2 s of publish timeout, plus generous margin; waiting in turn takes 5 × 2 s.
        assert!(
            *elapsed < Duration::from_secs(6),
            "a publish took {elapsed:?}: {results:?}"
        );
    }
}

/// The queue's arguments as `rabbitmqctl list_queues` shows them.
fn queue_arguments(queue: &str) -> Value {
    let output = run(std::process::Command::new("rabbitmqctl").args([
        "-q",
        "list_queues",
        "name",
        "arguments",
        "--formatter",
        "json",
    ]));
    let queues: Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|error| panic!("list_queues: {error}: {}", output.stdout));
    queues
        .as_array()
        .and_then(|queues| queues.iter().find(|entry| entry["name"] == queue))
        .map(|entry| entry["arguments"].clone())
        .unwrap_or_else(|| panic!("no queue {queue}: {}", output.stdout))
}

/// A message that aborts the process is redelivered when the service comes back. On a
/// quorum queue the delivery limit ends that: after a few deliveries RabbitMQ dead-letters it.
#[tokio::test]
async fn a_message_that_kills_the_service_is_dead_lettered_by_a_quorum_queue() {
    let binary = probe_binary();
    let scenario = Scenario::new(&[]).await;
    let mut env = scenario.names.env();
    env.push(("PROBE_LOG", scenario.log.path()));
    env.push(("PIPEFORCE_MESSAGING_QUEUE_TYPE", "quorum".to_owned()));
    env.push(("PIPEFORCE_MESSAGING_DELIVERY_LIMIT", "2".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut service = ServiceProcess::start(binary, &env);
    service
        .wait_for_status("/health/ready", 200, Duration::from_secs(30))
        .await;

    // rabbitmqctl lists each argument as `[name, type, value]`.
    let arguments = queue_arguments(&scenario.names.queue());
    for (name, value) in [
        ("x-delivery-limit", json!(2)),
        ("x-dead-letter-strategy", json!("at-least-once")),
        ("x-overflow", json!("reject-publish")),
        ("x-queue-type", json!("quorum")),
    ] {
        let set = arguments
            .as_array()
            .is_some_and(|all| all.iter().any(|a| a[0] == name && a[2] == value));
        assert!(set, "{name} = {value} in {arguments}");
    }

    scenario
        .publish("probe.abort", json!({ "id": "fatal" }))
        .await;
    let dead_letter_queue = &scenario.names.dead_letter_queue;
    let mut restarts = 0;
    loop {
        // Either the message kills this process, or the broker has dead-lettered it.
        let deadline = Instant::now() + Duration::from_secs(30);
        let dead_lettered = loop {
            if scenario.broker.ready_count(dead_letter_queue).await > 0 {
                break true;
            }
            if service
                .wait_for_exit(Duration::from_millis(50))
                .await
                .is_some()
            {
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "neither aborted nor dead-lettered:\n{}",
                service.logs()
            );
        };
        if dead_lettered {
            break;
        }
        restarts += 1;
        assert!(
            restarts <= 5,
            "still crash-looping after {restarts} restarts; runs: {:?}",
            scenario.log.lines()
        );
        // Not waiting for readiness: the redelivered message may kill it before.
        service = ServiceProcess::start(binary, &env);
    }
    let runs = scenario.log.lines();
    assert!(runs.len() <= 3, "runs past the delivery limit: {runs:?}");
}

/// A quorum queue an older version created without the delivery limit cannot be declared
/// with it (RabbitMQ refuses changed arguments): the service uses it as it is and says so.
#[tokio::test]
async fn an_older_quorum_queue_without_the_new_arguments_still_works() {
    let scenario = Scenario::new(&[("PIPEFORCE_MESSAGING_QUEUE_TYPE", "quorum")]).await;
    let connection = amqp::connect().await;
    let channel = connection.create_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    for (name, value) in [
        ("x-queue-type", "quorum"),
        ("x-dead-letter-exchange", ""),
        (
            "x-dead-letter-routing-key",
            scenario.names.dead_letter_queue.as_str(),
        ),
    ] {
        arguments.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    }
    channel
        .queue_declare(
            scenario.names.queue().as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .expect("declare the older queue");

    let service = scenario.start().await;
    scenario
        .publish("probe.ok.old", json!({ "id": "old-queue" }))
        .await;
    scenario
        .log
        .wait_for(
            "handled from the older queue",
            |lines| lines.iter().any(|line| line == "ok old-queue"),
            Duration::from_secs(10),
        )
        .await;
    let logs = service.logs();
    assert!(
        logs.contains("x-delivery-limit"),
        "no warning names the missing arguments:\n{logs}"
    );
}

/// While a memory alarm blocks publishers, a publishing endpoint answers 503 within the
/// publish timeout instead of hanging, `/health/ready` and `/metrics` show it, and messages
/// taken before go on being handled and acked; all of it resumes when the alarm clears.
#[tokio::test]
async fn a_blocked_broker_fails_publishes_in_time_and_recovers() {
    let node = RabbitNode::start("");
    let scenario =
        Scenario::on_node(&node, &[("PIPEFORCE_MESSAGING_PUBLISH_TIMEOUT_SECS", "3")]).await;
    let service = scenario.start().await;
    for n in 0..3 {
        let id = format!("before-{n}");
        // Long enough to be still running when the alarm has blocked publishing.
        let body = json!({ "id": id, "sleep_ms": 10_000 });
        scenario.publish("probe.ok.slow", body).await;
    }

    node.ctl(&["set_vm_memory_high_watermark", "0"]);
    let client = reqwest::Client::builder()
        // Bounds the test when a publish hangs, as it did before the publish timeout.
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let greetings = format!("{}/greetings", service.http);
    let started = Instant::now();
    let response = client
        .post(&greetings)
        .json(&json!({ "name": "Ada" }))
        .send()
        .await
        .expect("POST /greetings answers while the broker blocks publishers");
    let elapsed = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    let problem: Value = response.json().await.unwrap();
    println!("blocked publish answered after {elapsed:?}: {problem}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("blocking publishers"),
        "{problem}"
    );

    let health = service
        .wait_for_json(
            "/health/ready",
            |body| body["checks"]["publishing"] == "DOWN",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        health["status"], "UP",
        "blocked publishing does not make it unready"
    );
    let metrics = client
        .get(format!("{}/metrics", service.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line == "pipeforce_broker_blocked 1"),
        "{metrics}"
    );
    // Consuming and acking go on: the publish connection is the blocked one.
    assert!(
        scenario.log.lines().is_empty(),
        "the handlers finished before the alarm took effect: nothing shows acks while blocked"
    );
    scenario
        .log
        .wait_for(
            "messages taken before the alarm are handled",
            |lines| (0..3).all(|n| lines.contains(&format!("ok before-{n}"))),
            Duration::from_secs(20),
        )
        .await;
    scenario.wait_until_queue_is_empty().await;

    node.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    service
        .wait_for_json(
            "/health/ready",
            |body| body["checks"]["publishing"] == "UP",
            Duration::from_secs(30),
        )
        .await;
    let response = client
        .post(&greetings)
        .json(&json!({ "name": "Grace" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
}
