//! The consumer: connects, declares the topology, consumes, reconnects.
//!
//! One task owns the connections. Each delivery runs in its own task (`settle`), at most
//! `prefetch` at a time (the broker sends no more until some are acked). A message is acked only after every
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
//! With `broadcast` handlers, the session also consumes from a queue of this replica's own
//! (`broadcast`), on the same channel: their deliveries are settled like the others, by a
//! dispatcher of the broadcast handlers only.
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
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    tcp::OwnedTLSConfig,
    types::FieldTable,
    uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo},
};
use metrics::gauge;
use secrecy::ExposeSecret;
use tokio::{sync::watch, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, warn};

use super::{
    Publisher,
    acks::Acks,
    broadcast::{self, Broadcast},
    dispatch::Dispatcher,
    settle::Settle,
    topology,
};
use crate::{
    config::{BrokerAddress, MessagingConfig},
    health::Condition,
    telemetry::metric,
};

/// Back-off between connection attempts: doubled after each failure, up to the maximum, plus
/// a random part of up to as much again, so replicas do not reconnect in lock-step.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

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
    /// The `broadcast` handlers, consumed from a queue of this replica's own; `None` when
    /// there are none.
    pub(crate) broadcast: Option<Arc<Dispatcher>>,
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
        let (channel, consumer_tag, deliveries) = match self.start_consuming(&connection).await {
            Ok(started) => started,
            Err(error) => return lost(error),
        };
        let broadcast_consumer = match &self.broadcast {
            Some(dispatcher) => {
                match broadcast::consume(&channel, &self.config, dispatcher, &consumer_tag).await {
                    Ok(consumer) => Some(consumer),
                    Err(error) => return lost(error),
                }
            }
            None => None,
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
        let session_over = stopping.child_token();
        let settle_with = |dispatcher: &Arc<Dispatcher>| {
            Arc::new(Settle::new(
                Arc::clone(dispatcher),
                self.publisher.clone(),
                self.config.dead_letter_queue.clone(),
                Arc::clone(&connection),
                channel.clone(),
                acks.clone(),
                session_over.clone(),
            ))
        };
        let settle = settle_with(&self.dispatcher);
        let (broadcast_tag, broadcast) = match (broadcast_consumer, &self.broadcast) {
            (Some((tag, deliveries)), Some(dispatcher)) => (
                Some(tag),
                Some(Broadcast {
                    deliveries,
                    settle: settle_with(dispatcher),
                }),
            ),
            _ => (None, None),
        };
        let in_flight = TaskTracker::new();
        let ended = receive(
            deliveries,
            &settle,
            broadcast,
            &in_flight,
            connections.publish.clone(),
            stopping,
        )
        .await;
        self.ready.set(false);
        gauge!(metric::BROKER_CONNECTED).set(0.0);
        if let Some(error) = ended {
            // RabbitMQ delivers everything unacked again, to this or another replica: stop
            // the retries of this session's deliveries rather than run them twice at once.
            session_over.cancel();
            ack_task.finish().await;
            return SessionEnd::Lost {
                error,
                consumed: true,
            };
        }
        let close_by = Instant::now() + self.shutdown_timeout;
        if let Some(tag) = &broadcast_tag {
            let cancel = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
            let _ = tokio::time::timeout_at(close_by, cancel).await;
        }
        self.stop_handlers(&channel, &consumer_tag, &in_flight, close_by)
            .await;
        // Handlers still running are left behind: what they complete from now on is not
        // acked, and closing the connection hands their messages back to the broker.
        session_over.cancel();
        let _ = tokio::time::timeout_at(close_by, ack_task.finish()).await;
        SessionEnd::Stopped { close_by }
    }

    /// Opens the consuming channel, declares the topology and starts consuming, under a
    /// consumer tag of this session's own.
    async fn start_consuming(
        &self,
        connection: &Connection,
    ) -> Result<(Channel, String, lapin::Consumer), lapin::Error> {
        let channel = self.prepare(connection).await?;
        let consumer_tag = format!("{}-{}", self.service, uuid::Uuid::new_v4().simple());
        let deliveries = channel
            .basic_consume(
                self.config.queue.as_str().into(),
                consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer_tag, deliveries))
    }

    /// The graceful part of a shutdown, within the shutdown timeout that ends at `close_by`:
    /// cancels the consumer and waits for the running handlers, which get it all but the
    /// time for flushing the acks and closing.
    async fn stop_handlers(
        &self,
        channel: &Channel,
        consumer_tag: &str,
        in_flight: &TaskTracker,
        close_by: Instant,
    ) {
        let handlers_until = close_by - (self.shutdown_timeout / 4).min(CLOSING_TIME);
        let cancel = channel.basic_cancel(consumer_tag.into(), BasicCancelOptions::default());
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

/// The largest AMQP frame the service offers; the broker's own limit wins if lower. lapin
/// keeps a receive and a send buffer of 32 frames per connection, allocated and zeroed at
/// connect: with RabbitMQ's default of 128 KiB that was 8 MiB per connection, 16 MiB of an
/// idle service's memory with its two. Bodies larger than a frame are split over several, as
/// with any frame size.
const FRAME_MAX: u32 = 16 * 1024;

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
            frame_max: Some(FRAME_MAX),
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

/// Hands each delivery to a task of its own until the service stops (`None`) or the session
/// fails (`Some` with why).
async fn receive(
    mut deliveries: lapin::Consumer,
    settle: &Arc<Settle>,
    mut broadcast: Option<Broadcast>,
    in_flight: &TaskTracker,
    publish_connection: Option<Arc<Connection>>,
    stopping: &CancellationToken,
) -> Option<String> {
    // lapin's connection events go to one listener each, and the publisher may listen:
    // look at the status instead.
    let mut publish_check = tokio::time::interval(PUBLISH_CONNECTION_CHECK);
    loop {
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
                    in_flight.spawn(Arc::clone(settle).handle(delivery));
                }
                Some(Err(error)) => break Some(error.to_string()),
                None => break Some(
                    "the broker cancelled the consumer (was the queue deleted?)".to_owned(),
                ),
            },
            delivery = broadcast::next(&mut broadcast) => match delivery {
                Some(Ok((delivery, settle))) => {
                    in_flight.spawn(settle.handle(delivery));
                }
                Some(Err(error)) => break Some(error.to_string()),
                None => break Some(
                    "the broker cancelled the broadcast consumer (was its queue deleted?)"
                        .to_owned(),
                ),
            },
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
