//! The AsyncAPI 3.0 document of the service's message interface, served at `/asyncapi.json`.
//!
//! It is generated from what the service actually registered, so it cannot drift from the
//! code: one channel per binding pattern of every handler (a `receive` operation), one per
//! handler that publishes its result (`publish = "key"`, a `send` operation with the schema
//! of the value the handler returns) and one per declared publish, the topic exchange and the
//! service queue as AMQP bindings, and each body's JSON schema where its type derives
//! `utoipa::ToSchema` (the same schemas as the OpenAPI document). The other `#[event]`
//! options (`broadcast`, `retries`, `timeout_secs`, `concurrency`) are in the receiving
//! channel's description.

use serde_json::{Map, Value, json};

use super::{BodyDoc, Handler};
use crate::config::MessagingConfig;

/// A message type the service publishes, declared with
/// [`Services::publishes`](crate::Services::publishes).
#[derive(Debug, Clone)]
pub struct DeclaredPublish {
    /// The routing key it is published with.
    pub routing_key: String,
    /// What it is.
    pub body: BodyDoc,
}

/// What the document describes.
pub(crate) struct Interface<'a> {
    pub(crate) service: &'a str,
    pub(crate) version: &'a str,
    pub(crate) messaging: &'a MessagingConfig,
    pub(crate) handlers: &'a [Handler],
    pub(crate) publishes: &'a [DeclaredPublish],
}

/// The AsyncAPI 3.0 document.
pub(crate) fn document(interface: &Interface<'_>) -> Value {
    let messaging = interface.messaging;
    let mut parts = Parts::new(messaging);
    for handler in interface.handlers {
        parts.receive(handler, &messaging.queue);
    }
    for publish in interface.publishes {
        parts.send(publish);
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": interface.service,
            "version": interface.version,
            "description": format!(
                "Messages the PIPEFORCE service {} consumes from its queue `{}` and publishes \
                 to the topic exchange `{}`. Messages it cannot handle go to `{}` with the \
                 reason in the `x-pipeforce-error` header.",
                interface.service, messaging.queue, messaging.exchange, messaging.dead_letter_queue
            ),
        },
        "defaultContentType": "application/json",
        "servers": servers(messaging),
        "channels": parts.channels,
        "operations": parts.operations,
        "components": { "messages": parts.messages, "schemas": parts.schemas },
    })
}

/// The document's channels, operations, messages and schemas, collected handler by handler
/// and publish by publish.
struct Parts {
    /// The topic exchange, as every channel's AMQP binding names it.
    exchange: Value,
    channels: Map<String, Value>,
    operations: Map<String, Value>,
    messages: Map<String, Value>,
    schemas: Map<String, Value>,
}

impl Parts {
    fn new(messaging: &MessagingConfig) -> Self {
        let exchange = json!({
            "name": messaging.exchange,
            "type": "topic",
            "durable": true,
            "autoDelete": false,
            "vhost": messaging.vhost,
        });
        Self {
            exchange,
            channels: Map::new(),
            operations: Map::new(),
            messages: Map::new(),
            schemas: Map::new(),
        }
    }

    /// A `receive` operation on a channel of its own for each of `handler`'s patterns, and a
    /// `send` operation for the result it publishes, if it does.
    fn receive(&mut self, handler: &Handler, queue: &str) {
        let message = handler
            .body()
            .map(|body| add_message(&mut self.messages, &mut self.schemas, body));
        let description = receive_description(handler, queue);
        for (index, pattern) in handler.patterns().iter().enumerate() {
            let id = channel_id(handler.name(), index, handler.patterns().len());
            self.channels.insert(
                id.clone(),
                channel(
                    pattern.as_str(),
                    &description,
                    message.as_deref(),
                    &self.exchange,
                ),
            );
            self.operations.insert(
                id.clone(),
                operation("receive", &id, handler.name(), message.as_deref()),
            );
        }
        if let Some(publish) = &handler.options().publish {
            let message = add_message(&mut self.messages, &mut self.schemas, &publish.body);
            let id = format!("{}.publish", channel_id(handler.name(), 0, 1));
            self.channels.insert(
                id.clone(),
                channel(
                    publish.routing_key,
                    &format!(
                        "Published to the topic exchange by `{}` with the value it returns \
                         (`publish = \"{}\"`), confirmed before the message it handled is \
                         acked.",
                        handler.name(),
                        publish.routing_key
                    ),
                    Some(&message),
                    &self.exchange,
                ),
            );
            self.operations.insert(
                id.clone(),
                operation("send", &id, handler.name(), Some(&message)),
            );
        }
    }

    /// A `send` operation on a channel of its own for a declared publish.
    fn send(&mut self, publish: &DeclaredPublish) {
        let message = add_message(&mut self.messages, &mut self.schemas, &publish.body);
        let id = format!("publish.{}", sanitize(&publish.routing_key));
        self.channels.insert(
            id.clone(),
            channel(
                &publish.routing_key,
                "Published by the service to the topic exchange.",
                Some(&message),
                &self.exchange,
            ),
        );
        self.operations.insert(
            id.clone(),
            operation("send", &id, &publish.routing_key, Some(&message)),
        );
    }
}

/// Where `handler`'s messages come from, and what its `#[event]` options change.
fn receive_description(handler: &Handler, queue: &str) -> String {
    let options = handler.options();
    let mut description = if options.broadcast {
        format!(
            "Broadcast: bound to a queue of each running replica (server-named, exclusive, \
             auto-delete), so every replica gets each message; messages sent while no replica \
             runs are not kept. Handled by `{}`.",
            handler.name()
        )
    } else {
        format!(
            "Bound to the service queue `{queue}`; handled by `{}`.",
            handler.name()
        )
    };
    if let Some(retries) = options.retries {
        description.push_str(&format!(" Retries after a failure: {retries} (`retries`)."));
    }
    if let Some(timeout) = options.timeout {
        description.push_str(&format!(
            " Time limit per run: {} s (`timeout_secs`).",
            timeout.as_secs()
        ));
    }
    if let Some(limit) = &options.concurrency {
        description.push_str(&format!(
            " Runs at once per replica: at most {} (`concurrency`).",
            limit.limit()
        ));
    }
    description
}

/// One server per broker address.
fn servers(messaging: &MessagingConfig) -> Map<String, Value> {
    messaging
        .addresses
        .iter()
        .enumerate()
        .map(|(index, address)| {
            let name = if index == 0 {
                "rabbitmq".to_owned()
            } else {
                format!("rabbitmq-{index}")
            };
            let server = json!({
                "host": address.to_string(),
                "protocol": if messaging.tls { "amqps" } else { "amqp" },
                "protocolVersion": "0.9.1",
                "description": format!("RabbitMQ, virtual host `{}`", messaging.vhost),
            });
            (name, server)
        })
        .collect()
}

fn channel(address: &str, description: &str, message: Option<&str>, exchange: &Value) -> Value {
    let mut messages = Map::new();
    if let Some(name) = message {
        messages.insert(
            name.to_owned(),
            json!({ "$ref": format!("#/components/messages/{name}") }),
        );
    }
    json!({
        "address": address,
        "description": description,
        "messages": messages,
        "bindings": {
            "amqp": { "is": "routingKey", "exchange": exchange, "bindingVersion": "0.3.0" }
        },
    })
}

fn operation(action: &str, channel: &str, summary: &str, message: Option<&str>) -> Value {
    let messages: Vec<Value> = message
        .map(|name| json!({ "$ref": format!("#/channels/{channel}/messages/{name}") }))
        .into_iter()
        .collect();
    json!({
        "action": action,
        "channel": { "$ref": format!("#/channels/{channel}") },
        "summary": summary,
        "messages": messages,
    })
}

/// Adds the message (and its schemas) to the components; returns its name.
fn add_message(
    messages: &mut Map<String, Value>,
    schemas: &mut Map<String, Value>,
    body: &BodyDoc,
) -> String {
    let name = sanitize(body.type_name);
    let payload = match &body.schema {
        Some(schema) => {
            for (reference, referenced) in &schema.references {
                schemas.insert(sanitize(reference), to_value(referenced));
            }
            schemas.insert(sanitize(&schema.name), to_value(&schema.schema));
            json!({ "$ref": format!("#/components/schemas/{}", sanitize(&schema.name)) })
        }
        None if body.content_type == "application/json" => json!({}),
        None => json!({ "type": "string" }),
    };
    messages.insert(
        name.clone(),
        json!({
            "name": name,
            "title": body.type_name,
            "contentType": body.content_type,
            "payload": payload,
        }),
    );
    name
}

fn to_value(schema: &impl serde::Serialize) -> Value {
    serde_json::to_value(schema).unwrap_or(Value::Null)
}

/// AsyncAPI ids and component names allow letters, digits, `.`, `_` and `-` only.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `HelloService.greeting`, with `.2` etc. for a handler's further patterns.
fn channel_id(handler: &str, index: usize, count: usize) -> String {
    let base = sanitize(&handler.replace("::", "."));
    if count == 1 {
        base
    } else {
        format!("{base}.{}", index + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_only_the_characters_asyncapi_allows() {
        assert_eq!(sanitize("Vec<u8>"), "Vec_u8_");
        assert_eq!(
            channel_id("HelloService::greeting", 0, 1),
            "HelloService.greeting"
        );
        assert_eq!(
            channel_id("HelloService::greeting", 1, 2),
            "HelloService.greeting.2"
        );
    }
}
