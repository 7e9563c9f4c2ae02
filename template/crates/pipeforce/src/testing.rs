//! Testing handlers without a broker.
//!
//! [`TestBroker`] delivers a message by routing key through the same matching, decoding,
//! retrying and dead-lettering code the service runs, and reports the [`Outcome`] and what
//! the handlers published. Publishing is recorded, not sent; requests made by handlers get the
//! answers registered with [`TestBroker::answer_requests`].
//!
//! ```ignore
//! let broker = TestBroker::new(my_service::register);
//! let delivered = broker.deliver_json("orders.created", &order).await;
//! assert!(delivered.is_handled());
//! ```

use std::{sync::Arc, time::Duration};

use lapin::BasicProperties;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    Config,
    messaging::{Dispatcher, Message, Outcome, Pattern, Published, Publisher, RetryPolicy},
    services::Services,
};

/// The exchange test messages claim to come from.
pub const TEST_EXCHANGE: &str = "pipeforce.topic.default";

/// An in-process stand-in for RabbitMQ, for unit tests of handlers.
pub struct TestBroker {
    dispatcher: Dispatcher,
    publisher: Publisher,
    never_stopping: CancellationToken,
}

impl TestBroker {
    /// Registers the services the way the service's `main` does, with the default retry count
    /// but no waiting between retries.
    pub fn new(register: impl FnOnce(&mut Services)) -> Self {
        Self::with_retries(register, 3)
    }

    /// Like [`TestBroker::new`], with `max_retries` retries for failing handlers.
    pub fn with_retries(register: impl FnOnce(&mut Services), max_retries: u32) -> Self {
        let publisher = Publisher::recording(TEST_EXCHANGE);
        let mut services = Services::new(publisher.clone(), test_hub());
        register(&mut services);
        let retry = RetryPolicy {
            max_retries,
            first_delay: Duration::ZERO,
        };
        Self {
            dispatcher: Dispatcher::new(
                services.into_registered().handlers,
                publisher.clone(),
                retry,
            ),
            publisher,
            never_stopping: CancellationToken::new(),
        }
    }

    /// Delivers `body` as it is (text, bytes) with `routing_key`.
    pub async fn deliver(&self, routing_key: &str, body: impl Into<Vec<u8>>) -> Delivered {
        self.deliver_message(Message::new(TEST_EXCHANGE, routing_key, body))
            .await
    }

    /// Delivers `body` as JSON with `routing_key`.
    pub async fn deliver_json<T: Serialize + ?Sized>(
        &self,
        routing_key: &str,
        body: &T,
    ) -> Delivered {
        let body = serde_json::to_vec(body).expect("test body serializes to JSON");
        let properties = BasicProperties::default().with_content_type("application/json".into());
        self.deliver_message(
            Message::new(TEST_EXCHANGE, routing_key, body).with_properties(properties),
        )
        .await
    }

    /// Delivers `body` as JSON with `routing_key` as a request: with `reply_to` and a
    /// correlation id set, so handlers' return values come back in [`Delivered::replies`].
    pub async fn request_json<T: Serialize + ?Sized>(
        &self,
        routing_key: &str,
        body: &T,
    ) -> Delivered {
        let body = serde_json::to_vec(body).expect("test body serializes to JSON");
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_correlation_id("test-request".into());
        self.deliver_message(
            Message::new(TEST_EXCHANGE, routing_key, body).with_properties(properties),
        )
        .await
    }

    /// Delivers a message with its properties (headers, ids, `reply_to`, ...).
    pub async fn deliver_message(&self, message: Message) -> Delivered {
        let before = self.publisher.recorded().len();
        let outcome = self
            .dispatcher
            .dispatch(Arc::new(message), &self.never_stopping)
            .await;
        let published = self.publisher.recorded().split_off(before);
        Delivered { outcome, published }
    }

    /// Answers requests whose routing key matches `pattern` with `reply` (as JSON).
    ///
    /// # Panics
    ///
    /// If `pattern` is not a valid routing-key pattern.
    pub fn answer_requests<T: Serialize + ?Sized>(&self, pattern: &str, reply: &T) {
        let pattern = Pattern::parse(pattern).expect("a valid routing-key pattern");
        let reply = serde_json::to_vec(reply).expect("reply serializes to JSON");
        self.publisher.answer_requests(pattern, reply);
    }
}

/// A hub client for unit tests: it points at a local address where nothing listens, so a
/// handler that calls the hub in a unit test fails fast instead of reaching a real hub.
fn test_hub() -> crate::hub::HubClient {
    let config = crate::config::HubConfig {
        url: url::Url::parse("http://127.0.0.1:9").expect("a valid literal URL"),
        auth: None,
        timeout: Duration::from_secs(1),
    };
    crate::hub::HubClient::new(&config)
        .expect("a hub client without credentials builds")
        .with_retries(0)
}

/// What became of one delivered message.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// Handled, dead-lettered (and why), or abandoned.
    pub outcome: Outcome,
    /// What the handlers published (events and requests), in order.
    pub published: Vec<Published>,
}

impl Delivered {
    /// Whether every matching handler succeeded, so the message would be acked.
    pub fn is_handled(&self) -> bool {
        matches!(self.outcome, Outcome::Handled { .. })
    }

    /// The handlers that ran successfully.
    pub fn handlers(&self) -> &[&'static str] {
        match &self.outcome {
            Outcome::Handled { handlers, .. } => handlers,
            _ => &[],
        }
    }

    /// Why the message would go to the dead-letter queue, if it would.
    pub fn dead_letter_reason(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::DeadLettered { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// The replies the handlers returned, parsed as JSON (only requests get replies, see
    /// [`TestBroker::request_json`]).
    pub fn replies(&self) -> Vec<serde_json::Value> {
        match &self.outcome {
            Outcome::Handled { replies, .. } => replies
                .iter()
                .map(|reply| serde_json::from_slice(reply).unwrap_or(serde_json::Value::Null))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Deletes the service's queue and exchange from the broker: for integration tests that gave
/// them unique names, so that test runs leave nothing behind on a shared broker.
pub async fn delete_queue_and_exchange(config: &Config) -> Result<(), lapin::Error> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

    let messaging = &config.messaging;
    let address = &messaging.addresses[0];
    let connection = crate::messaging::connect(messaging, address, &config.service).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(
            messaging.queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await?;
    channel
        .exchange_delete(
            messaging.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await?;
    connection.close(200, "test done".into()).await
}
