//! The consumer: connects, declares the topology, consumes, settles, reconnects.
//!
//! One task owns the connections. Each delivery runs in its own task, at most `prefetch` at a
//! time (the broker sends no more until some are acked). A message is acked only after every
//! matching handler succeeded; a message that cannot be handled is first copied to the
//! dead-letter queue (confirmed) and only then acked, so a failure at any point leaves it in
//! one queue or the other. One task, the ack task (`acks`), sends every ack; nothing is ever
//! rejected. When the connection drops, the broker requeues every unacked message, and the
//! loop reconnects with back-off and declares everything again.
//!
//! A session has two connections with one life cycle: one to consume and ack, one (named
//! `<service>-publish`) for the [`Publisher`], so that consuming and acking go on while the
//! broker blocks publishers (a memory or disk alarm). The session ends, and both are closed,
//! when either fails or the service stops.
//!
//! Graceful shutdown: cancel the consumer so the broker stops delivering, let running handlers
//! finish (bounded by the shutdown timeout, which the whole shutdown keeps to), flush the
//! acks, close channel and connections. Messages that were prefetched but not started, and
//! those whose handlers did not finish, go back to the queue when the connection closes.

use std::{sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    tcp::OwnedTLSConfig,
    types::FieldTable,
    uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo},
};
use metrics::{Counter, Gauge, counter, gauge};
use secrecy::ExposeSecret;
use tokio::{sync::watch, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, error, field::Empty, info, info_span, warn};

use super::{
    Message, Publisher,
    acks::{Acks, Completion},
    dispatch::{Dispatcher, Outcome},
    topology,
};
use crate::{
    config::{BrokerAddress, MessagingConfig},
    health::Condition,
    telemetry::{self, metric},
};

/// Back-off between connection attempts: doubled after each failure, up to the maximum, plus
/// a random part of up to as much again, so replicas do not reconnect in lock-step.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Back-off between attempts to copy a message to a dead-letter queue that refuses it.
const DEAD_LETTER_RETRY_MIN: Duration = Duration::from_millis(500);
const DEAD_LETTER_RETRY_MAX: Duration = Duration::from_secs(30);

/// How long a completed delivery may wait for its ack to be coalesced with others.
const ACK_INTERVAL: Duration = Duration::from_millis(5);

/// How often the consumer checks that the publishing connection is still open.
const PUBLISH_CONNECTION_CHECK: Duration = Duration::from_millis(500);

/// The longest part of the shutdown timeout kept for flushing acks and closing.
const CLOSING_TIME: Duration = Duration::from_secs(1);

pub(crate) struct Consumer {
    pub(crate) config: MessagingConfig,
    pub(crate) service: String,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) publisher: Publisher,
    /// The current session's publishing connection, for the [`Publisher`].
    pub(crate) connection: watch::Sender<Option<Arc<Connection>>>,
    pub(crate) ready: Condition,
    pub(crate) shutdown_timeout: Duration,
}

/// How a session with one broker connection ended.
enum SessionEnd {
    /// Shut down on request; closing is to be done by `close_by`.
    Stopped { close_by: Instant },
    /// The connection failed; `consumed` says whether it got as far as consuming.
    Lost { error: String, consumed: bool },
}

/// A session's two connections.
struct Connections {
    consume: Arc<Connection>,
    publish: Option<Arc<Connection>>,
}

impl Connections {
    /// Closes both (and their channels), giving up at `until`; a broken one is skipped.
    async fn close(&self, until: Instant) {
        let closing = async {
            for connection in std::iter::once(&self.consume).chain(self.publish.as_ref()) {
                if connection.status().connected() {
                    let _ = connection.close(200, "session over".into()).await;
                }
            }
        };
        let _ = tokio::time::timeout_at(until, closing).await;
    }
}

impl Consumer {
    /// Consumes until `stopping` fires, reconnecting as often as it takes.
    pub(crate) async fn run(self, stopping: CancellationToken) {
        // Every replica starting at the first address would put them all on one node.
        let addresses = shuffled(&self.config.addresses);
        let mut delays = reconnect_delays();
        let mut attempt = 0usize;
        while !stopping.is_cancelled() {
            let address = &addresses[attempt % addresses.len()];
            attempt += 1;
            match self.session(address, &stopping).await {
                SessionEnd::Stopped { .. } => break,
                SessionEnd::Lost { error, consumed } => {
                    self.ready.set(false);
                    if consumed {
                        delays = reconnect_delays();
                    }
                    let delay = delays.next().unwrap_or(RECONNECT_MAX);
                    if consumed {
                        warn!(%error, %address, "lost the connection to RabbitMQ; reconnecting");
                    } else {
                        error!(%error, %address, retry_in = ?delay, "cannot consume from RabbitMQ");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stopping.cancelled() => break,
                    }
                }
            }
        }
        self.ready.set(false);
    }

    /// One session: connects, consumes until the connection fails or the service stops, and
    /// always ends with both connections closed and the publisher's cleared.
    async fn session(&self, address: &BrokerAddress, stopping: &CancellationToken) -> SessionEnd {
        let consume = match connect(&self.config, address, &self.service).await {
            Ok(connection) => Arc::new(connection),
            Err(error) => {
                return SessionEnd::Lost {
                    error: error.to_string(),
                    consumed: false,
                };
            }
        };
        let mut connections = Connections {
            consume,
            publish: None,
        };
        let end = self.consume(address, &mut connections, stopping).await;
        self.connection.send_replace(None);
        match end {
            SessionEnd::Stopped { close_by } => {
                connections.close(close_by).await;
                info!("messaging stopped");
            }
            SessionEnd::Lost { .. } => connections.close(Instant::now() + CLOSING_TIME).await,
        }
        end
    }

    async fn consume(
        &self,
        address: &BrokerAddress,
        connections: &mut Connections,
        stopping: &CancellationToken,
    ) -> SessionEnd {
        let lost = |error: lapin::Error| SessionEnd::Lost {
            error: error.to_string(),
            consumed: false,
        };
        let publish_name = format!("{}-publish", self.service);
        match connect(&self.config, address, &publish_name).await {
            Ok(connection) => connections.publish = Some(Arc::new(connection)),
            Err(error) => return lost(error),
        }
        let connection = Arc::clone(&connections.consume);
        let channel = match self.prepare(&connection).await {
            Ok(channel) => channel,
            Err(error) => return lost(error),
        };
        let consumer_tag = format!("{}-{}", self.service, uuid::Uuid::new_v4().simple());
        let mut deliveries = match channel
            .basic_consume(
                self.config.queue.as_str().into(),
                consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(deliveries) => deliveries,
            Err(error) => return lost(error),
        };

        self.connection.send_replace(connections.publish.clone());
        self.ready.set(true);
        gauge!(metric::BROKER_CONNECTED).set(1.0);
        info!(
            %address,
            queue = %self.config.queue,
            prefetch = self.config.prefetch,
            "consuming"
        );

        let batch = usize::from(self.config.prefetch / 4).clamp(1, 50);
        let (acks, ack_task) = Acks::spawn(channel.clone(), batch, ACK_INTERVAL);
        let settle = Arc::new(Settle {
            in_flight: gauge!(metric::HANDLERS_IN_FLIGHT),
            dead_letter_failures: counter!(metric::DEAD_LETTER_FAILURES),
            dispatcher: Arc::clone(&self.dispatcher),
            publisher: self.publisher.clone(),
            connection: Arc::clone(&connection),
            channel: channel.clone(),
            acks,
            dead_letter_queue: self.config.dead_letter_queue.clone(),
            session_over: stopping.child_token(),
        });
        let in_flight = TaskTracker::new();
        // lapin's connection events go to one listener each, and the publisher may listen:
        // look at the status instead.
        let publish_connection = connections.publish.clone();
        let mut publish_check = tokio::time::interval(PUBLISH_CONNECTION_CHECK);
        let ended = loop {
            tokio::select! {
                biased;
                () = stopping.cancelled() => break None,
                _ = publish_check.tick() => {
                    if !publish_connection.as_ref().is_some_and(|c| c.status().connected()) {
                        break Some("the publishing connection was closed".to_owned());
                    }
                }
                delivery = deliveries.next() => match delivery {
                    Some(Ok(delivery)) => {
                        in_flight.spawn(Arc::clone(&settle).handle(delivery));
                    }
                    Some(Err(error)) => break Some(error.to_string()),
                    None => break Some(
                        "the broker cancelled the consumer (was the queue deleted?)".to_owned(),
                    ),
                },
            }
        };
        self.ready.set(false);
        gauge!(metric::BROKER_CONNECTED).set(0.0);
        if let Some(error) = ended {
            // RabbitMQ delivers everything unacked again, to this or another replica: stop
            // the retries of this session's deliveries rather than run them twice at once.
            settle.session_over.cancel();
            ack_task.finish().await;
            return SessionEnd::Lost {
                error,
                consumed: true,
            };
        }

        // Graceful shutdown, within the shutdown timeout: handlers get it all but the time
        // for flushing the acks and closing.
        let close_by = Instant::now() + self.shutdown_timeout;
        let handlers_until = close_by - (self.shutdown_timeout / 4).min(CLOSING_TIME);
        let cancel =
            channel.basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default());
        let _ = tokio::time::timeout_at(handlers_until, cancel).await;
        in_flight.close();
        let running = in_flight.len();
        if running > 0 {
            info!(running, "waiting for running handlers");
        }
        if tokio::time::timeout_at(handlers_until, in_flight.wait())
            .await
            .is_err()
        {
            warn!(
                timeout = ?self.shutdown_timeout,
                running = in_flight.len(),
                "handlers still running; their messages go back to the queue"
            );
        }
        // Handlers still running are left behind: what they complete from now on is not
        // acked, and closing the connection hands their messages back to the broker.
        settle.session_over.cancel();
        let _ = tokio::time::timeout_at(close_by, ack_task.finish()).await;
        SessionEnd::Stopped { close_by }
    }

    /// Opens the consuming channel and declares the topology.
    async fn prepare(&self, connection: &Connection) -> Result<Channel, lapin::Error> {
        let channel = connection.create_channel().await?;
        let patterns: Vec<&str> = self
            .dispatcher
            .handlers()
            .iter()
            .flat_map(|handler| handler.patterns().iter().map(|p| p.as_str()))
            .collect();
        topology::declare(connection, &channel, &self.config, &patterns).await?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        Ok(channel)
    }
}

/// Opens a connection to the broker at `address`, named `name` in RabbitMQ's management UI.
pub(crate) async fn connect(
    config: &MessagingConfig,
    address: &BrokerAddress,
    name: &str,
) -> Result<Connection, lapin::Error> {
    let uri = AMQPUri {
        scheme: if config.tls {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: config.username.clone(),
                password: config.password.expose_secret().to_owned(),
            },
            host: address.host.clone(),
            port: address.port,
        },
        vhost: config.vhost.clone(),
        query: AMQPQueryString {
            heartbeat: Some(30),
            connection_timeout: Some(10_000),
            ..AMQPQueryString::default()
        },
    };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: config.tls_ca_pem.clone(),
    };
    Connection::connect_uri_with_config(uri, properties, tls, lapin::runtime::default_runtime()?)
        .await
}

/// The addresses in a random order of this process's own.
fn shuffled(addresses: &[BrokerAddress]) -> Vec<BrokerAddress> {
    let mut shuffled = addresses.to_vec();
    fastrand::shuffle(&mut shuffled);
    shuffled
}

/// The waits between connection attempts, with jitter.
fn reconnect_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(RECONNECT_MIN)
        .with_max_delay(RECONNECT_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

/// What every delivery task of one session shares.
struct Settle {
    in_flight: Gauge,
    dead_letter_failures: Counter,
    dispatcher: Arc<Dispatcher>,
    publisher: Publisher,
    /// The consuming connection, to declare a missing dead-letter queue again.
    connection: Arc<Connection>,
    channel: Channel,
    acks: Acks,
    dead_letter_queue: String,
    /// Cancelled when the service stops or the session's connection is lost: a handler
    /// waiting to retry gives up, since its delivery can no longer be settled.
    session_over: CancellationToken,
}

impl Settle {
    /// Handles one delivery and settles it, in a span that continues the publisher's trace.
    async fn handle(self: Arc<Self>, delivery: Delivery) {
        let tag = delivery.delivery_tag;
        if !self.session_is_live() {
            // Received before the connection dropped, and no longer ackable: RabbitMQ
            // delivers it again, so running its handlers now would run them twice.
            debug!(tag, "skipping a delivery of a session that is over");
            return;
        }
        let message = Arc::new(Message {
            exchange: delivery.exchange.into(),
            routing_key: delivery.routing_key.into(),
            body: delivery.data,
            properties: delivery.properties,
            redelivered: delivery.redelivered,
        });
        // The fields are the trace's attributes; log lines show the routing key and the
        // trace id of them (see `telemetry`).
        let span = info_span!(
            target: "pipeforce::messaging",
            "message",
            otel.name = %format_args!("process {}", message.exchange),
            otel.kind = "consumer",
            otel.status_code = Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.destination.name = message.exchange.as_str(),
            messaging.rabbitmq.destination.routing_key = message.routing_key.as_str(),
            messaging.message.id = message.properties.message_id().as_ref().map(|id| id.as_str()),
            pipeforce.handlers = Empty,
            pipeforce.outcome = Empty,
            error.message = Empty,
            trace_id = Empty,
        );
        let headers = message.properties.headers().as_ref();
        telemetry::continue_trace(&span, &telemetry::amqp::Headers(headers));
        telemetry::record_trace_id(&span);

        self.in_flight.increment(1.0);
        let completion = self.dispatch_and_settle(message).instrument(span).await;
        self.in_flight.decrement(1.0);
        self.acks.complete(tag, completion);
    }

    /// Whether this session's deliveries can still be acked. Checked before running one:
    /// lapin updates the channel's status only when its own task gets to run, after the
    /// deliveries it had read before the close.
    fn session_is_live(&self) -> bool {
        !self.session_over.is_cancelled()
            && self.channel.status().connected()
            && self.connection.status().connected()
    }

    async fn dispatch_and_settle(&self, message: Arc<Message>) -> Completion {
        let outcome = self
            .dispatcher
            .dispatch(Arc::clone(&message), &self.session_over)
            .await;
        let span = tracing::Span::current();
        match outcome {
            Outcome::Handled { handlers, replies } => {
                span.record("pipeforce.handlers", handlers.join(","));
                span.record("pipeforce.outcome", "handled");
                self.send_replies(&message, replies).await;
                Completion::Ack
            }
            Outcome::DeadLettered { .. } if !self.session_is_live() => {
                // The connection dropped while the handler ran: this delivery can no longer
                // be acked and RabbitMQ delivers the message again. Copying it to the
                // dead-letter queue now would leave a duplicate there once the redelivery
                // dead-letters it too.
                span.record("pipeforce.outcome", "abandoned");
                Completion::Abandoned
            }
            Outcome::DeadLettered { reason, handler } => {
                span.record("pipeforce.handlers", handler);
                span.record("pipeforce.outcome", "dead_lettered");
                span.record("error.message", reason.as_str());
                span.record("otel.status_code", "ERROR");
                self.dead_letter(&message, &reason, handler).await
            }
            Outcome::Abandoned => {
                span.record("pipeforce.outcome", "abandoned");
                Completion::Abandoned
            }
        }
    }

    async fn send_replies(&self, message: &Message, replies: Vec<Vec<u8>>) {
        let Some(reply_to) = message.properties.reply_to() else {
            return;
        };
        let correlation_id = message
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str());
        for reply in replies {
            if let Err(error) = self
                .publisher
                .reply(reply_to.as_str(), correlation_id, &reply)
                .await
            {
                warn!(%error, routing_key = %message.routing_key, "cannot send the reply");
            }
        }
    }

    /// Copies the message to the dead-letter queue; once the broker confirmed the copy, the
    /// delivery is to be acked. A copy the broker refuses (the queue was deleted, or is full
    /// and rejects publishes) is tried again with back-off, after declaring the queue again,
    /// for as long as the session lasts: the message stays unacked meanwhile, and if the
    /// session ends first, RabbitMQ delivers it again. Rejecting it would hand it to the
    /// queue's own dead-lettering, which drops what the same queue refuses.
    async fn dead_letter(
        &self,
        message: &Message,
        reason: &str,
        handler: Option<&'static str>,
    ) -> Completion {
        warn!(
            routing_key = %message.routing_key,
            handler,
            reason,
            queue = %self.dead_letter_queue,
            "dead-lettering message"
        );
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(DEAD_LETTER_RETRY_MIN)
            .with_max_delay(DEAD_LETTER_RETRY_MAX)
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let copied = self
                .publisher
                .dead_letter(&self.dead_letter_queue, message, reason, handler)
                .await;
            let Err(error) = copied else {
                return Completion::Ack;
            };
            self.dead_letter_failures.increment(1);
            let retry_in = delays.next().unwrap_or(DEAD_LETTER_RETRY_MAX);
            error!(
                %error,
                queue = %self.dead_letter_queue,
                ?retry_in,
                "cannot copy to the dead-letter queue; the message stays unacked until it can"
            );
            // In case it was deleted.
            let declared =
                topology::declare_dead_letter_queue(&self.connection, &self.dead_letter_queue);
            if let Err(error) = declared.await {
                warn!(%error, queue = %self.dead_letter_queue, "cannot declare the dead-letter queue");
            }
            tokio::select! {
                () = tokio::time::sleep(retry_in) => {}
                () = self.session_over.cancelled() => return Completion::Abandoned,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn addresses(count: u16) -> Vec<BrokerAddress> {
        (0..count)
            .map(|port| BrokerAddress {
                host: "rabbit".to_owned(),
                port,
            })
            .collect()
    }

    #[test]
    fn each_process_tries_the_addresses_in_an_order_of_its_own() {
        let given = addresses(8);
        let orders: BTreeSet<Vec<u16>> = (0..10)
            .map(|_| {
                let shuffled = shuffled(&given);
                let mut sorted = shuffled.clone();
                sorted.sort_by_key(|address| address.port);
                assert_eq!(sorted, given, "a permutation of the given addresses");
                shuffled.iter().map(|address| address.port).collect()
            })
            .collect();
        // 8! orders: ten draws that all agree would be a broken shuffle.
        assert!(orders.len() > 1, "{orders:?}");
    }

    #[test]
    fn reconnect_delays_grow_to_the_maximum_with_jitter() {
        let first: Vec<Duration> = reconnect_delays().take(20).collect();
        let mut base = RECONNECT_MIN;
        for delay in &first {
            assert!(
                base <= *delay && *delay <= base * 2,
                "{delay:?} is not within {base:?} and twice that"
            );
            base = (base * 2).min(RECONNECT_MAX);
        }
        let second: Vec<Duration> = reconnect_delays().take(20).collect();
        assert_ne!(first, second, "replicas do not reconnect in lock-step");
    }
}
