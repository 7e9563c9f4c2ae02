//! The test side of RabbitMQ: publish like PIPEFORCE would, look into queues, and break
//! connections on purpose. Every test uses names of its own ([`Names`]) on the shared broker
//! and removes them afterwards.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{
        BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::Value;

use crate::run;

/// The broker every test talks to.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Names of one test's service, exchange and dead-letter queue, unique on the broker.
#[derive(Debug, Clone)]
pub struct Names {
    /// `PIPEFORCE_SERVICE`; also the connection name RabbitMQ shows.
    pub service: String,
    /// `PIPEFORCE_MESSAGING_DEFAULT_TOPIC`.
    pub exchange: String,
    /// `PIPEFORCE_MESSAGING_DEFAULT_DLQ`.
    pub dead_letter_queue: String,
}

impl Names {
    pub fn unique() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let id = &id[..12];
        Self {
            service: format!("t-{id}"),
            exchange: format!("test.topic.{id}"),
            dead_letter_queue: format!("test.dlq.{id}"),
        }
    }

    /// The service's queue: `pipeforce.service.<service>`.
    pub fn queue(&self) -> String {
        format!("pipeforce.service.{}", self.service)
    }

    /// The variables that point a service at these names.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PIPEFORCE_SERVICE", self.service.clone()),
            ("PIPEFORCE_MESSAGING_DEFAULT_TOPIC", self.exchange.clone()),
            (
                "PIPEFORCE_MESSAGING_DEFAULT_DLQ",
                self.dead_letter_queue.clone(),
            ),
        ]
    }
}

/// A message as the test reads it back from a queue (dead letters, captures).
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub headers: FieldTable,
}

impl DeadLetter {
    /// A header's text.
    pub fn header(&self, name: &str) -> Option<String> {
        match self.headers.inner().get(name)? {
            AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into()),
            AMQPValue::ShortString(value) => Some(value.to_string()),
            _ => None,
        }
    }
}

/// A connection and a confirm-mode channel of the test's own.
pub struct Broker {
    connection: Connection,
    channel: Channel,
}

/// A connection of the tests' own, named `template-tests` so that closing a service's
/// connections ([`close_connections_named`]) never closes it.
pub async fn connect() -> Connection {
    connect_to(AMQP_URL).await
}

/// A connection of the tests' own to the broker at `url` (an extra node's, say).
pub async fn connect_to(url: &str) -> Connection {
    let properties = ConnectionProperties::default().with_connection_name("template-tests".into());
    Connection::connect(url, properties)
        .await
        .unwrap_or_else(|error| {
            panic!("RabbitMQ at {url} (ci/test starts the shared one): {error}")
        })
}

impl Broker {
    pub async fn connect() -> Self {
        Self::connect_to(AMQP_URL).await
    }

    /// A broker handle on the node at `url`.
    pub async fn connect_to(url: &str) -> Self {
        let connection = connect_to(url).await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Self {
            connection,
            channel,
        }
    }

    /// Publishes a persistent message and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let publish = async {
            self.channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties.with_delivery_mode(2),
                )
                .await?
                .await
        };
        let confirmation = tokio::time::timeout(Duration::from_secs(10), publish)
            .await
            .unwrap_or_else(|_| panic!("no publisher confirm for {routing_key:?} within 10 s"))
            .unwrap_or_else(|error| panic!("cannot publish {routing_key:?}: {error}"));
        assert!(
            matches!(confirmation, Confirmation::Ack(_)),
            "{confirmation:?}"
        );
    }

    /// Publishes `body` as JSON with a fresh message id.
    pub async fn publish_json(&self, exchange: &str, routing_key: &str, body: &Value) {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(uuid::Uuid::new_v4().to_string().into());
        self.publish(
            exchange,
            routing_key,
            body.to_string().as_bytes(),
            properties,
        )
        .await;
    }

    /// Sends a request and waits for its reply on direct reply-to; `None` after `timeout`.
    pub async fn request(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &Value,
        timeout: Duration,
    ) -> Option<Value> {
        // Direct reply-to needs the consumer on the channel that publishes.
        let channel = self.connection.create_channel().await.expect("channel");
        let mut replies = channel
            .basic_consume(
                "amq.rabbitmq.reply-to".into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume replies");
        let correlation_id = uuid::Uuid::new_v4().to_string();
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_reply_to("amq.rabbitmq.reply-to".into())
                    .with_correlation_id(correlation_id.as_str().into()),
            )
            .await
            .expect("publish request");
        let reply = tokio::time::timeout(timeout, replies.next())
            .await
            .ok()??
            .ok()?;
        assert_eq!(
            reply
                .properties
                .correlation_id()
                .as_ref()
                .map(|id| id.as_str()),
            Some(correlation_id.as_str())
        );
        let _ = channel.close(200, "done".into()).await;
        serde_json::from_slice(&reply.data).ok()
    }

    /// A queue of the test's own that receives what is published to `exchange` with keys
    /// matching `pattern`; deleted with the test's connection.
    pub async fn capture(&self, exchange: &str, pattern: &str) -> String {
        let queue = self
            .channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare a capture queue");
        self.channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                pattern.into(),
                lapin::options::QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the capture queue");
        queue.name().to_string()
    }

    /// Waits up to `timeout` for a message in `queue` and takes it.
    pub async fn take_one(&self, queue: &str, timeout: Duration) -> Option<DeadLetter> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(message) = self.take_all(queue).await.into_iter().next() {
                return Some(message);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ready messages in `queue` (not counting delivered, unacked ones); 0 if it is missing.
    pub async fn ready_count(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let count = declared.map_or(0, |queue| queue.message_count());
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        count
    }

    /// Waits until no message in `queue` is ready, so every one has been delivered to a
    /// consumer; panics after `timeout`.
    pub async fn wait_until_delivered(&self, queue: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let ready = self.ready_count(queue).await;
            if ready == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{ready} messages in {queue} still not delivered after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes every message out of `queue`.
    pub async fn take_all(&self, queue: &str) -> Vec<DeadLetter> {
        let mut taken = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            let delivery = message.delivery;
            taken.push(DeadLetter {
                body: delivery.data,
                headers: delivery.properties.headers().clone().unwrap_or_default(),
            });
        }
        taken
    }

    /// Removes a test's queues and exchange.
    pub async fn delete(&self, names: &Names) {
        for queue in [names.queue(), names.dead_letter_queue.clone()] {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self
            .channel
            .exchange_delete(
                names.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// Messages in `queue`, ready and unacknowledged, as RabbitMQ counts them.
pub fn total_messages(queue: &str) -> Option<u64> {
    total_messages_on(None, queue)
}

/// [`total_messages`] on the node named `node` (`None`: the shared one).
pub fn total_messages_on(node: Option<&str>, queue: &str) -> Option<u64> {
    let mut command = std::process::Command::new("rabbitmqctl");
    if let Some(node) = node {
        command.args(["-n", node]);
    }
    let output = run(command.args([
        "-q",
        "list_queues",
        "name",
        "messages",
        "--formatter",
        "json",
    ]));
    let queues: Value = serde_json::from_str(&output.stdout).ok()?;
    queues
        .as_array()?
        .iter()
        .find(|entry| entry["name"] == queue)
        .and_then(|entry| entry["messages"].as_u64())
}

/// Closes every broker connection named `name` (a service's connections carry its name), as
/// `rabbitmqctl close_all_connections` would, without disturbing other tests. Returns how
/// many it closed.
pub fn close_connections_named(name: &str) -> usize {
    let output = run(std::process::Command::new("rabbitmqctl").args([
        "--silent",
        "list_connections",
        "pid",
        "client_properties",
    ]));
    let marker = format!("{{\"connection_name\",\"{name}\"}}");
    let mut closed = 0;
    for line in output.stdout.lines().filter(|line| line.contains(&marker)) {
        let Some((pid, _)) = line.split_once('\t') else {
            continue;
        };
        run(std::process::Command::new("rabbitmqctl").args([
            "--silent",
            "close_connection",
            pid,
            "closed by the template's tests",
        ]))
        .assert_success("rabbitmqctl close_connection");
        closed += 1;
    }
    closed
}
