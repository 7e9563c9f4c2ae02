//! [`Context`], what a handler can know about the message it handles.

use std::sync::Arc;

use lapin::{BasicProperties, types::FieldTable};

use super::{Message, Publisher, header_text};

/// What a handler can know about the message it handles, and how it can publish.
///
/// Take it as a reference parameter (`ctx: &Context`) after the body. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Context {
    message: Arc<Message>,
    publisher: Publisher,
}

impl Context {
    pub(crate) fn new(message: Arc<Message>, publisher: Publisher) -> Self {
        Self { message, publisher }
    }

    /// The routing key the message was published with.
    pub fn routing_key(&self) -> &str {
        &self.message.routing_key
    }

    /// The exchange the message was published to.
    pub fn exchange(&self) -> &str {
        &self.message.exchange
    }

    /// The raw body.
    pub fn body(&self) -> &[u8] {
        &self.message.body
    }

    /// The message's AMQP headers, if it has any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.message.properties.headers().as_ref()
    }

    /// One header as text, if it is present and a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_text(self.headers()?, name)
    }

    /// The `message_id` property.
    pub fn message_id(&self) -> Option<&str> {
        self.message
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str())
    }

    /// The `correlation_id` property.
    pub fn correlation_id(&self) -> Option<&str> {
        self.message
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str())
    }

    /// The `reply_to` property: set when the sender waits for an answer.
    pub fn reply_to(&self) -> Option<&str> {
        self.message
            .properties
            .reply_to()
            .as_ref()
            .map(|to| to.as_str())
    }

    /// Whether the broker delivered this message before (e.g. the service restarted while
    /// handling it): handlers with side effects may want to check for duplicates.
    pub fn redelivered(&self) -> bool {
        self.message.redelivered
    }

    /// All AMQP properties of the message.
    pub fn properties(&self) -> &BasicProperties {
        &self.message.properties
    }

    /// Publishes events and sends requests from inside the handler.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }
}
