//! The recording publisher of unit tests ([`crate::testing`]): it keeps what is published
//! instead of sending it, and answers requests with canned replies.

use std::sync::{Mutex, PoisonError};

use super::{Outgoing, Publisher, Transport};
use crate::messaging::Pattern;

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
    pub(crate) fn recording(exchange: &str) -> Self {
        Self::with_transport(exchange, "test", Transport::Recording(Recording::default()))
    }
    /// Everything published so far, in order (a recording publisher's only).
    pub(crate) fn recorded(&self) -> Vec<Published> {
        match &self.shared.transport {
            Transport::Recording(recording) => recording.lock().published.clone(),
            Transport::Broker(_) => Vec::new(),
        }
    }

    /// Makes a recording publisher answer requests matching `pattern` with `reply`.
    pub(crate) fn answer_requests(&self, pattern: Pattern, reply: Vec<u8>) {
        if let Transport::Recording(recording) = &self.shared.transport {
            recording.lock().answers.push((pattern, reply));
        }
    }
}

/// The test side: what was published, and canned answers for requests.
#[derive(Default)]
pub(super) struct Recording {
    state: Mutex<RecordingState>,
}

#[derive(Default)]
struct RecordingState {
    published: Vec<Published>,
    answers: Vec<(Pattern, Vec<u8>)>,
}

impl Recording {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecordingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn record(&self, outgoing: &Outgoing<'_>) {
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

    pub(super) fn request(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Vec<u8>,
    ) -> Option<Vec<u8>> {
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
