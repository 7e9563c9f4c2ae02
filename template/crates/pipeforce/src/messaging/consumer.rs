//! The consumer: connects, declares the topology, consumes, settles, reconnects.
//!
//! One task owns the connection. Each delivery runs in its own task, at most `prefetch` at a
//! time (the broker sends no more until some are acked). A message is acked only after every
//! matching handler succeeded; a message that cannot be handled is first copied to the
//! dead-letter queue (confirmed) and only then acked, so a failure at any point leaves it in
//! one queue or the other. When the connection drops, the broker requeues every unacked
//! message, and the loop reconnects with back-off and declares everything again.
//!
//! Graceful shutdown: cancel the consumer so the broker stops delivering, let running handlers
//! finish (bounded by the shutdown timeout), flush the acks, close channel and connection.
//! Messages that were prefetched but not started go back to the queue when the channel closes.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
        BasicRejectOptions,
    },
    tcp::OwnedTLSConfig,
    types::FieldTable,
    uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo},
};
use metrics::{Gauge, gauge};
use secrecy::ExposeSecret;
use tokio::sync::watch;
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

/// Back-off between connection attempts: doubled after each failure, up to the maximum.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// How long a completed delivery may wait for its ack to be coalesced with others.
const ACK_INTERVAL: Duration = Duration::from_millis(5);

pub(crate) struct Consumer {
    pub(crate) config: MessagingConfig,
    pub(crate) service: String,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) publisher: Publisher,
    pub(crate) connection: watch::Sender<Option<Arc<Connection>>>,
    pub(crate) ready: Condition,
    pub(crate) shutdown_timeout: Duration,
}

/// How a session with one broker connection ended.
enum SessionEnd {
    /// Shut down on request.
    Stopped,
    /// The connection failed; `consumed` says whether it got as far as consuming.
    Lost { error: String, consumed: bool },
}

impl Consumer {
    /// Consumes until `stopping` fires, reconnecting as often as it takes.
    pub(crate) async fn run(self, stopping: CancellationToken) {
        let addresses = &self.config.addresses;
        let mut delay = RECONNECT_MIN;
        let mut attempt = 0usize;
        while !stopping.is_cancelled() {
            let address = &addresses[attempt % addresses.len()];
            attempt += 1;
            match self.session(address, &stopping).await {
                SessionEnd::Stopped => break,
                SessionEnd::Lost { error, consumed } => {
                    self.ready.set(false);
                    self.connection.send_replace(None);
                    if consumed {
                        delay = RECONNECT_MIN;
                        warn!(%error, %address, "lost the connection to RabbitMQ; reconnecting");
                    } else {
                        error!(%error, %address, retry_in = ?delay, "cannot consume from RabbitMQ");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stopping.cancelled() => break,
                    }
                    delay = (delay * 2).min(RECONNECT_MAX);
                }
            }
        }
        self.ready.set(false);
    }

    async fn session(&self, address: &BrokerAddress, stopping: &CancellationToken) -> SessionEnd {
        let lost = |error: lapin::Error| SessionEnd::Lost {
            error: error.to_string(),
            consumed: false,
        };
        let connection = match connect(&self.config, address, &self.service).await {
            Ok(connection) => Arc::new(connection),
            Err(error) => return lost(error),
        };
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

        self.connection.send_replace(Some(Arc::clone(&connection)));
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
            dispatcher: Arc::clone(&self.dispatcher),
            publisher: self.publisher.clone(),
            channel: channel.clone(),
            acks,
            dead_letter_queue: self.config.dead_letter_queue.clone(),
            session_over: stopping.child_token(),
        });
        let in_flight = TaskTracker::new();
        let ended = loop {
            tokio::select! {
                biased;
                () = stopping.cancelled() => break None,
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
            return SessionEnd::Lost {
                error,
                consumed: true,
            };
        }

        // Graceful shutdown.
        let _ = channel
            .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
            .await;
        in_flight.close();
        let running = in_flight.len();
        if running > 0 {
            info!(running, "waiting for running handlers");
        }
        if tokio::time::timeout(self.shutdown_timeout, in_flight.wait())
            .await
            .is_err()
        {
            warn!(
                timeout = ?self.shutdown_timeout,
                "handlers still running; their messages stay in the queue"
            );
        }
        drop(settle);
        ack_task.finish().await;
        let _ = channel.close(200, "service stopping".into()).await;
        let _ = connection.close(200, "service stopping".into()).await;
        self.connection.send_replace(None);
        info!("messaging stopped");
        SessionEnd::Stopped
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

/// What every delivery task of one session shares.
struct Settle {
    in_flight: Gauge,
    dispatcher: Arc<Dispatcher>,
    publisher: Publisher,
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
        if !self.channel.status().connected() {
            // Received before the connection dropped, and no longer ackable: RabbitMQ
            // delivers it again, so running its handlers now would run them twice.
            debug!(tag, "skipping a delivery of a closed channel");
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
        let completion = self
            .dispatch_and_settle(tag, message)
            .instrument(span)
            .await;
        self.in_flight.decrement(1.0);
        self.acks.complete(tag, completion);
    }

    async fn dispatch_and_settle(&self, tag: u64, message: Arc<Message>) -> Completion {
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
            Outcome::DeadLettered { .. } if !self.channel.status().connected() => {
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
                self.dead_letter(&message, tag, &reason, handler).await;
                Completion::Settled
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

    /// Copies the message to the dead-letter queue, then acks it; if the copy fails, rejects
    /// it so that the broker dead-letters it through the queue's arguments instead.
    async fn dead_letter(
        &self,
        message: &Message,
        tag: u64,
        reason: &str,
        handler: Option<&'static str>,
    ) {
        warn!(
            routing_key = %message.routing_key,
            handler,
            reason,
            queue = %self.dead_letter_queue,
            "dead-lettering message"
        );
        match self
            .publisher
            .dead_letter(&self.dead_letter_queue, message, reason, handler)
            .await
        {
            Ok(()) => {
                self.dispatcher.remember_dead_lettered(message);
                let _ = self
                    .channel
                    .basic_ack(tag, BasicAckOptions { multiple: false })
                    .await;
            }
            Err(error) => {
                error!(%error, "cannot copy to the dead-letter queue; rejecting instead");
                let _ = self
                    .channel
                    .basic_reject(tag, BasicRejectOptions { requeue: false })
                    .await;
            }
        }
    }
}
