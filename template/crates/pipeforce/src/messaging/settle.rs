//! Settling one delivery: run its handlers, then ack it, or copy it to the dead-letter queue
//! and then ack it, or leave it to the broker when its session is over.
//!
//! Every delivery runs in a task of its own ([`Settle::handle`]), in a span that continues
//! the publisher's trace. What it completes goes to the ack task (`acks`), the one sender of
//! acks; nothing is ever rejected. A delivery whose session is over (the connection dropped,
//! or the service stopped and gave up waiting) is abandoned: RabbitMQ delivers it again.

use std::{sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::{Channel, Connection, message::Delivery};
use metrics::{Counter, Gauge, counter, gauge};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, field::Empty, info_span, warn};

use super::{
    Message, Publisher,
    acks::{Acks, Completion},
    dispatch::{Dispatcher, Outcome},
    topology,
};
use crate::telemetry::{self, metric};

/// Back-off between attempts to copy a message to a dead-letter queue that refuses it.
const DEAD_LETTER_RETRY_MIN: Duration = Duration::from_millis(500);
const DEAD_LETTER_RETRY_MAX: Duration = Duration::from_secs(30);

/// What every delivery task of one session shares.
pub(super) struct Settle {
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
    /// The settling side of a session consuming on `channel` of `connection`; its retries
    /// end when `session_over` is cancelled.
    pub(super) fn new(
        dispatcher: Arc<Dispatcher>,
        publisher: Publisher,
        dead_letter_queue: String,
        connection: Arc<Connection>,
        channel: Channel,
        acks: Acks,
        session_over: CancellationToken,
    ) -> Self {
        Self {
            in_flight: gauge!(metric::HANDLERS_IN_FLIGHT),
            dead_letter_failures: counter!(metric::DEAD_LETTER_FAILURES),
            dispatcher,
            publisher,
            connection,
            channel,
            acks,
            dead_letter_queue,
            session_over,
        }
    }

    /// Handles one delivery and settles it, in a span that continues the publisher's trace.
    pub(super) async fn handle(self: Arc<Self>, delivery: Delivery) {
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
