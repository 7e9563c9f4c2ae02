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

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::{StreamExt, stream::BoxStream};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, Event,
    options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use metrics::{counter, gauge};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    sync::{oneshot, watch},
    time::{Instant, timeout_at},
};
use tracing::{Instrument, debug, field::Empty, info, info_span, warn};

use crate::{
    health::Condition,
    telemetry::{self, metric},
};

/// RabbitMQ's pseudo-queue for direct reply-to.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

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

/// A message as the publisher sent it (or, in tests, recorded it).
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The exchange, `""` for replies and dead letters sent straight to a queue.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// The body.
    pub body: Vec<u8>,
    /// The correlation id, set on requests and replies.
    pub correlation_id: Option<String>,
}

impl Published {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
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

    pub(crate) fn recording(exchange: &str) -> Self {
        Self::with_transport(exchange, "test", Transport::Recording(Recording::default()))
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

    /// Sends `body` as a request with `routing_key` and waits up to `timeout` for the reply,
    /// which a handler gives by returning a value.
    pub async fn request<T: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        routing_key: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<R, RequestError> {
        let body = serde_json::to_vec(body).map_err(PublishError::from)?;
        let reply = match &self.shared.transport {
            Transport::Broker(link) => {
                let correlation_id = uuid::Uuid::new_v4().to_string();
                let (sender, receiver) = oneshot::channel();
                let _waiting = PendingGuard::insert(&link.pending, &correlation_id, sender);
                let properties = self
                    .properties()
                    .with_correlation_id(correlation_id.as_str().into())
                    .with_reply_to(REPLY_TO.into());
                self.send(Outgoing {
                    kind: Kind::Request,
                    exchange: &self.shared.exchange,
                    routing_key,
                    body: &body,
                    properties,
                    mandatory: true,
                })
                .await?;
                tokio::time::timeout(timeout, receiver)
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Transport::Recording(recording) => {
                recording.request(&self.shared.exchange, routing_key, body)
            }
        };
        match reply {
            Some(reply) => serde_json::from_slice(&reply).map_err(RequestError::Decode),
            None => Err(RequestError::Timeout {
                routing_key: routing_key.to_owned(),
                timeout,
            }),
        }
    }

    /// Answers a request: `body` goes straight to the requester's reply queue.
    pub(crate) async fn reply(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let mut properties = self.properties();
        if let Some(id) = correlation_id {
            properties = properties.with_correlation_id(id.into());
        }
        let outgoing = Outgoing {
            kind: Kind::Reply,
            exchange: "",
            routing_key: reply_to,
            body,
            properties,
            mandatory: false,
        };
        self.send(outgoing).await
    }

    /// Sends a copy of a message to the dead-letter queue, with why and where it failed in
    /// headers, and waits for the broker's confirm. The copy has no expiration, as with
    /// RabbitMQ's own dead-lettering (a dead letter waits until someone looks at it), and no
    /// user id, which would make RabbitMQ refuse it from the service's own user.
    pub(crate) async fn dead_letter(
        &self,
        queue: &str,
        message: &super::Message,
        reason: &str,
        handler: Option<&str>,
    ) -> Result<(), PublishError> {
        let mut headers = message.properties.headers().clone().unwrap_or_default();
        let mut set = |name: &str, value: &str| {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        };
        set("x-pipeforce-error", reason);
        set("x-pipeforce-service", &self.shared.app_id);
        set("x-pipeforce-original-exchange", &message.exchange);
        set("x-pipeforce-original-routing-key", &message.routing_key);
        if let Some(handler) = handler {
            set("x-pipeforce-handler", handler);
        }
        // A redelivered message may have been dead-lettered already by a delivery whose ack
        // was lost with its connection: this marks the copy as a possible duplicate.
        if message.redelivered {
            set("x-pipeforce-redelivered", "true");
        }
        if let Some(expiration) = message.properties.expiration() {
            set("x-pipeforce-original-expiration", expiration.as_str());
        }
        if let Some(user_id) = message.properties.user_id() {
            set("x-pipeforce-original-user-id", user_id.as_str());
        }
        let properties = copyable(&message.properties)
            .with_headers(headers)
            .with_delivery_mode(2);
        let outgoing = Outgoing {
            kind: Kind::DeadLetter,
            exchange: "",
            routing_key: queue,
            body: &message.body,
            properties,
            mandatory: true,
        };
        self.send(outgoing).await
    }

    /// Everything published so far, in order (a recording publisher's only).
    pub(crate) fn recorded(&self) -> Vec<Published> {
        match &self.shared.transport {
            Transport::Recording(recording) => recording.lock().published.clone(),
            Transport::Broker(_) => Vec::new(),
        }
    }

    /// Makes a recording publisher answer requests matching `pattern` with `reply`.
    pub(crate) fn answer_requests(&self, pattern: super::Pattern, reply: Vec<u8>) {
        if let Transport::Recording(recording) = &self.shared.transport {
            recording.lock().answers.push((pattern, reply));
        }
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

/// Requests waiting for their reply, by correlation id.
type PendingReplies = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// The broker side: a confirm-mode channel on the current connection, opened on demand.
struct BrokerLink {
    connection: watch::Receiver<Option<Arc<Connection>>>,
    /// Set for a publisher with a connection of its own ([`Publisher::connect`]).
    _own_connection: Option<watch::Sender<Option<Arc<Connection>>>>,
    /// How long one publish may take, from waiting for a connection to the confirm.
    timeout: Duration,
    /// The open publish channel. Locked only to read or replace it, never across an await.
    current: Mutex<Option<Link>>,
    /// Held while a channel is opened, so that concurrent callers open one, not one each.
    /// Waiting for a connection happens before, without it: each caller waits its own
    /// timeout, not the sum of the callers' before it.
    opening: tokio::sync::Mutex<()>,
    pending: PendingReplies,
}

/// A publish channel and the connection it is on (whose status says whether it is blocked).
#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    channel: Channel,
}

impl BrokerLink {
    fn new(
        connection: watch::Receiver<Option<Arc<Connection>>>,
        own_connection: Option<watch::Sender<Option<Arc<Connection>>>>,
        timeout: Duration,
    ) -> Self {
        Self {
            connection,
            _own_connection: own_connection,
            timeout,
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            pending: Arc::default(),
        }
    }

    /// The open publish channel, if it still works.
    fn current(&self) -> Option<Link> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|link| link.channel.status().connected())
    }

    /// The publish channel, opened (with its reply consumer) when there is none or it broke.
    async fn link(&self, deadline: Instant) -> Result<Link, PublishError> {
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let not_connected = || PublishError::NotConnected(self.timeout);
        let mut updates = self.connection.clone();
        let connected = updates.wait_for(|c| c.as_ref().is_some_and(|c| c.status().connected()));
        let connection = timeout_at(deadline, connected)
            .await
            .map_err(|_| not_connected())?
            .map_err(|_| not_connected())?
            .clone()
            .ok_or_else(not_connected)?;
        if connection.status().blocked() {
            return Err(PublishError::Blocked);
        }

        let _opening = timeout_at(deadline, self.opening.lock())
            .await
            .map_err(|_| self.timed_out(&connection))?;
        // Another caller may have opened it while this one waited for the lock.
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let channel = timeout_at(deadline, self.open_channel(&connection))
            .await
            .map_err(|_| self.timed_out(&connection))??;
        let link = Link {
            connection,
            channel,
        };
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(link.clone());
        Ok(link)
    }

    /// Opens a confirm-mode channel and starts consuming the replies to its requests.
    async fn open_channel(&self, connection: &Connection) -> Result<Channel, PublishError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut replies = channel
            .basic_consume(
                REPLY_TO.into(),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let pending = Arc::clone(&self.pending);
        tokio::spawn(async move {
            while let Some(Ok(reply)) = replies.next().await {
                let Some(id) = reply.properties.correlation_id() else {
                    continue;
                };
                let waiting = pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(id.as_str());
                match waiting {
                    Some(sender) => {
                        let _ = sender.send(reply.data);
                    }
                    None => debug!(correlation_id = %id, "reply for a request that gave up"),
                }
            }
        });
        Ok(channel)
    }

    /// The error for a publish that ran out of time: a blocked connection explains it.
    fn timed_out(&self, connection: &Connection) -> PublishError {
        if connection.status().blocked() {
            PublishError::Blocked
        } else {
            PublishError::Timeout(self.timeout)
        }
    }

    async fn send(&self, outgoing: Outgoing<'_>) -> Result<(), PublishError> {
        let deadline = Instant::now() + self.timeout;
        let Link {
            connection,
            channel,
        } = self.link(deadline).await?;
        if connection.status().blocked() {
            return Err(PublishError::Blocked);
        }
        let confirmed = async {
            channel
                .basic_publish(
                    outgoing.exchange.into(),
                    outgoing.routing_key.into(),
                    BasicPublishOptions {
                        mandatory: outgoing.mandatory,
                        ..BasicPublishOptions::default()
                    },
                    outgoing.body,
                    outgoing.properties,
                )
                .await?
                .await
        };
        let confirmation = timeout_at(deadline, confirmed)
            .await
            .map_err(|_| self.timed_out(&connection))??;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => {
                Err(PublishError::Unroutable(outgoing.routing_key.to_owned()))
            }
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            Confirmation::NotRequested => {
                warn!("publish channel is not in confirm mode");
                Ok(())
            }
        }
    }
}

/// Follows whether RabbitMQ blocks publishing on the connection the publisher is handed, for
/// the log, the `pipeforce_broker_blocked` gauge and the `publishing` check of
/// `/health/ready`.
///
/// The check does not make the instance unready: a resource alarm blocks publishers on every
/// node of the cluster, so every replica is blocked alike and none would serve better.
/// Taking them all out of the load balancer would turn the clear 503 problem of a publishing
/// endpoint into connection errors, and also stop the endpoints that do not publish, while
/// consuming goes on either way.
async fn follow_blocking(
    mut connections: watch::Receiver<Option<Arc<Connection>>>,
    publishing: Condition,
) {
    let show = |blocked: bool| {
        publishing.set(!blocked);
        gauge!(metric::BROKER_BLOCKED).set(if blocked { 1.0 } else { 0.0 });
    };
    loop {
        // Listen first, then read the status: a notice in between is not missed.
        let (mut events, blocked): (BoxStream<'static, Event>, bool) =
            match connections.borrow_and_update().as_ref() {
                Some(connection) => (
                    connection.events_listener().boxed(),
                    connection.status().blocked(),
                ),
                None => (futures_util::stream::pending().boxed(), false),
            };
        show(blocked);
        loop {
            tokio::select! {
                changed = connections.changed() => match changed {
                    Ok(()) => break,
                    Err(_) => return,
                },
                Some(event) = events.next() => match event {
                    Event::ConnectionBlocked(reason) => {
                        warn!(%reason, "RabbitMQ blocks publishing; publishes fail until it stops");
                        show(true);
                    }
                    Event::ConnectionUnblocked => {
                        info!("RabbitMQ accepts publishes again");
                        show(false);
                    }
                    _ => {}
                },
            }
        }
    }
}

/// What a copy of a message may carry of its `properties`: all but the expiration, so that it
/// does not expire where it waits, and the user id, which RabbitMQ accepts only from the user
/// it names (lapin has no way to unset one field).
fn copyable(properties: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default();
    macro_rules! keep {
        ($($field:ident => $with:ident),* $(,)?) => {
            $(if let Some(value) = properties.$field().clone() {
                copy = copy.$with(value);
            })*
        };
    }
    keep!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    copy
}

/// Removes a request's entry from the pending replies however the request ends.
struct PendingGuard<'a> {
    pending: &'a PendingReplies,
    correlation_id: String,
}

impl<'a> PendingGuard<'a> {
    fn insert(
        pending: &'a PendingReplies,
        correlation_id: &str,
        sender: oneshot::Sender<Vec<u8>>,
    ) -> Self {
        pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(correlation_id.to_owned(), sender);
        Self {
            pending,
            correlation_id: correlation_id.to_owned(),
        }
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.correlation_id);
    }
}

/// The test side: what was published, and canned answers for requests.
#[derive(Default)]
struct Recording {
    state: Mutex<RecordingState>,
}

#[derive(Default)]
struct RecordingState {
    published: Vec<Published>,
    answers: Vec<(super::Pattern, Vec<u8>)>,
}

impl Recording {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecordingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, outgoing: &Outgoing<'_>) {
        self.lock().published.push(Published {
            exchange: outgoing.exchange.to_owned(),
            routing_key: outgoing.routing_key.to_owned(),
            body: outgoing.body.to_vec(),
            correlation_id: outgoing
                .properties
                .correlation_id()
                .as_ref()
                .map(|id| id.to_string()),
        });
    }

    fn request(&self, exchange: &str, routing_key: &str, body: Vec<u8>) -> Option<Vec<u8>> {
        let mut state = self.lock();
        state.published.push(Published {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            body,
            correlation_id: None,
        });
        state
            .answers
            .iter()
            .find(|(pattern, _)| pattern.matches(routing_key))
            .map(|(_, reply)| reply.clone())
    }
}
