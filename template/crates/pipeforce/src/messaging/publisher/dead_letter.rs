//! Copies of messages for the dead-letter queue.

use lapin::{
    BasicProperties,
    types::{AMQPValue, LongString},
};

use super::{Kind, Outgoing, PublishError, Publisher};
use crate::messaging::Message;

impl Publisher {
    /// Sends a copy of a message to the dead-letter queue, with why and where it failed in
    /// headers, and waits for the broker's confirm. The copy has no expiration, as with
    /// RabbitMQ's own dead-lettering (a dead letter waits until someone looks at it), and no
    /// user id, which would make RabbitMQ refuse it from the service's own user.
    pub(crate) async fn dead_letter(
        &self,
        queue: &str,
        message: &Message,
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
