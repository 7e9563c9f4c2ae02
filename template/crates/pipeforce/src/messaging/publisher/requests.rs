//! Requests and replies over RabbitMQ's direct reply-to: a request waits for the reply with
//! its correlation id, which comes back on the channel that sent the request.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures_util::StreamExt;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::oneshot;
use tracing::debug;

use super::{Kind, Outgoing, PublishError, Publisher, RequestError, Transport};

/// RabbitMQ's pseudo-queue for direct reply-to.
pub(super) const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Requests waiting for their reply, by correlation id.
pub(super) type PendingReplies = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

impl Publisher {
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
}

/// Hands each reply that comes back on a publish channel to the request waiting for it.
pub(super) async fn route_replies(mut replies: lapin::Consumer, pending: PendingReplies) {
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
