//! Publishing events and sending requests.
//!
//! Every publish goes to the topic exchange as persistent JSON and waits for the broker's
//! publisher confirm: `Ok` means RabbitMQ has taken responsibility for the message. A request
//! uses RabbitMQ's direct reply-to: the reply comes back on the channel that sent the request,
//! matched by correlation id.
//!
//! The [`Publisher`] is a handle that outlives connections: it opens its channel on whatever
//! connection the consumer side currently hands it. Every publish is bounded by the publish
//! timeout (`PIPEFORCE_MESSAGING_PUBLISH_TIMEOUT_SECS`), waiting for a connection while the
//! service reconnects included, so a caller gets an error instead of hanging: while the
//! broker is unreachable, and while it blocks publishers (a memory or disk alarm makes
//! RabbitMQ stop reading from publishing connections, so no confirm comes). While the
//! connection is known to be blocked, a publish fails at once. In unit tests
//! ([`crate::testing`]) it records instead of sending.
//!
//! # Layout
//! - this module: [`Publisher`], publishing events, and what every publish goes through
//!   (properties, trace context, span and metrics).
//! - `link`: the broker side: the publish channel, publisher confirms, the timeout.
//! - `blocking`: following whether RabbitMQ blocks publishers.
//! - `requests`: requests and replies over direct reply-to.
//! - `dead_letter`: copies for the dead-letter queue.
//! - `recording`: the recording publisher of unit tests.
//! - `error`: [`PublishError`] and [`RequestError`].

mod blocking;
mod dead_letter;
mod error;
mod link;
mod recording;
mod requests;

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lapin::{BasicProperties, Connection};
use metrics::counter;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{Instrument, debug, field::Empty, info_span};

pub use error::{PublishError, RequestError};
pub use recording::Published;

use self::{blocking::follow_blocking, link::BrokerLink, recording::Recording};
use crate::{
    health::Condition,
    telemetry::{self, metric},
};

/// Publishes events and sends requests to the service's topic exchange. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

struct Shared {
    exchange: String,
    app_id: String,
    transport: Transport,
}

enum Transport {
    Broker(BrokerLink),
    Recording(Recording),
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("exchange", &self.shared.exchange)
            .finish_non_exhaustive()
    }
}
impl Publisher {
    /// A publisher on the connections `connection` hands it; each publish gives up after
    /// `timeout`. `publishing` shows whether the broker blocks them.
    pub(crate) fn for_broker(
        exchange: &str,
        app_id: &str,
        connection: watch::Receiver<Option<Arc<Connection>>>,
        timeout: Duration,
        publishing: Condition,
    ) -> Self {
        tokio::spawn(follow_blocking(connection.clone(), publishing));
        let link = BrokerLink::new(connection, None, timeout);
        Self::with_transport(exchange, app_id, Transport::Broker(link))
    }

    /// A publisher with a connection of its own, for programs that publish but do not consume
    /// (scripts, tests). It tries the configured brokers in order and does not reconnect;
    /// each publish gives up after `PIPEFORCE_MESSAGING_PUBLISH_TIMEOUT_SECS`.
    pub async fn connect(config: &crate::Config) -> Result<Self, PublishError> {
        let messaging = &config.messaging;
        let mut last_error = None;
        for address in &messaging.addresses {
            match super::consumer::connect(messaging, address, &config.service).await {
                Ok(connection) => {
                    let (owner, connection) = watch::channel(Some(Arc::new(connection)));
                    let link = BrokerLink::new(connection, Some(owner), messaging.publish_timeout);
                    return Ok(Self::with_transport(
                        &messaging.exchange,
                        &config.service,
                        Transport::Broker(link),
                    ));
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.map_or(
            PublishError::NotConnected(Duration::ZERO),
            PublishError::Amqp,
        ))
    }
    fn with_transport(exchange: &str, app_id: &str, transport: Transport) -> Self {
        Self {
            shared: Arc::new(Shared {
                exchange: exchange.to_owned(),
                app_id: app_id.to_owned(),
                transport,
            }),
        }
    }

    /// The topic exchange this publisher sends to.
    pub fn exchange(&self) -> &str {
        &self.shared.exchange
    }

    /// Publishes `body` as JSON with `routing_key` and waits until the broker confirms it.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        routing_key: &str,
        body: &T,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(body)?;
        let outgoing = Outgoing {
            kind: Kind::Event,
            exchange: &self.shared.exchange,
            routing_key,
            body: &body,
            properties: self.properties(),
            mandatory: false,
        };
        self.send(outgoing).await
    }

    /// Publishes `text` as a plain-text (`text/plain`) message with `routing_key`, confirmed like
    /// [`Publisher::publish`].
    pub async fn publish_text(&self, routing_key: &str, text: &str) -> Result<(), PublishError> {
        let outgoing = Outgoing {
            kind: Kind::Event,
            exchange: &self.shared.exchange,
            routing_key,
            body: text.as_bytes(),
            properties: self.properties().with_content_type("text/plain".into()),
            mandatory: false,
        };
        self.send(outgoing).await
    }

    fn properties(&self) -> BasicProperties {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_timestamp(timestamp)
            .with_app_id(self.shared.app_id.as_str().into())
    }

    async fn send(&self, outgoing: Outgoing<'_>) -> Result<(), PublishError> {
        let link = match &self.shared.transport {
            Transport::Broker(link) => link,
            Transport::Recording(recording) => {
                recording.record(&outgoing);
                return Ok(());
            }
        };
        let kind = outgoing.kind.as_str();
        let destination = if outgoing.exchange.is_empty() {
            outgoing.routing_key
        } else {
            outgoing.exchange
        };
        let span = info_span!(
            target: "pipeforce::messaging",
            "publish",
            otel.name = %format_args!("publish {destination}"),
            otel.kind = "producer",
            otel.status_code = Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "send",
            messaging.destination.name = outgoing.exchange,
            messaging.rabbitmq.destination.routing_key = outgoing.routing_key,
            messaging.message.id = outgoing.properties.message_id().as_ref().map(|id| id.as_str()),
            pipeforce.publish.kind = kind,
        );
        async move {
            let mut outgoing = outgoing;
            let mut headers = outgoing.properties.headers().clone().unwrap_or_default();
            telemetry::inject_current(&mut telemetry::amqp::HeadersMut(&mut headers));
            outgoing.properties = outgoing.properties.with_headers(headers);
            let result = link.send(outgoing).await;
            match &result {
                Ok(()) => counter!(metric::MESSAGES_PUBLISHED, "kind" => kind).increment(1),
                Err(error) => {
                    counter!(metric::PUBLISH_FAILURES, "kind" => kind).increment(1);
                    tracing::Span::current().record("otel.status_code", "ERROR");
                    debug!(%error, "publish failed");
                }
            }
            result
        }
        .instrument(span)
        .await
    }
}

/// One message on its way out.
struct Outgoing<'a> {
    kind: Kind,
    exchange: &'a str,
    routing_key: &'a str,
    body: &'a [u8],
    properties: BasicProperties,
    mandatory: bool,
}

/// What a publish is for, as metrics and spans tell it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Event,
    Request,
    Reply,
    DeadLetter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Request => "request",
            Self::Reply => "reply",
            Self::DeadLetter => "dead_letter",
        }
    }
}
