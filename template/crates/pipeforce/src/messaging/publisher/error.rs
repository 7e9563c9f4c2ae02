//! Why a publish or a request failed.

use std::time::Duration;

/// Why a publish failed. The message may not have reached the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The body could not be serialized to JSON.
    #[error("cannot encode the message as JSON: {0}")]
    Encode(#[from] serde_json::Error),
    /// No broker connection came up within the wait.
    #[error("not connected to RabbitMQ (waited {0:?})")]
    NotConnected(Duration),
    /// RabbitMQ blocks publishing on the connection: a memory or disk alarm is in effect.
    #[error(
        "RabbitMQ is blocking publishers (a memory or disk alarm is in effect); \
         try again once the alarm has cleared"
    )]
    Blocked,
    /// The broker did not confirm the message within the publish timeout.
    #[error("RabbitMQ did not confirm the message within {0:?}")]
    Timeout(Duration),
    /// The broker refused the message (negative publisher confirm).
    #[error("RabbitMQ did not accept the message (publisher confirm was negative)")]
    Nacked,
    /// A mandatory message matched no queue.
    #[error("no queue is bound for routing key {0:?}")]
    Unroutable(String),
    /// The channel or connection failed.
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Why a request got no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Sending the request failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// No reply within the timeout.
    #[error("no reply to {routing_key:?} within {timeout:?}")]
    Timeout {
        /// The request's routing key.
        routing_key: String,
        /// How long the request waited.
        timeout: Duration,
    },
    /// The reply was not the JSON the caller expects.
    #[error("the reply is not the expected JSON: {0}")]
    Decode(serde_json::Error),
}
