//! The options of `#[event(...)]` beside its patterns: `publish = "key"`, `retries = N`,
//! `timeout_secs = N`, `broadcast` and `concurrency = N`.
//!
//! `#[service]` checks them at compile time and hands them to the [`Handler`] once, when the
//! service is registered; dispatching reads them from there. A handler without options has
//! the defaults, which change nothing: the service-wide settings apply, it consumes from the
//! shared queue, and it runs as often at once as the prefetch allows.

use std::{sync::Arc, time::Duration};

use serde::Serialize;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::{BodyDoc, Context, Handler, HandlerError, PublishError, pattern::Pattern};

/// One handler's `#[event]` options; the default is a handler without options.
#[derive(Debug, Clone, Default)]
pub(crate) struct HandlerOptions {
    /// `publish = "key"`: where the handler's `Ok` value is published, and what it is.
    pub(crate) publish: Option<PublishedResult>,
    /// `retries = N`: retries after the first attempt, instead of the service-wide count.
    pub(crate) retries: Option<u32>,
    /// `timeout_secs = N`: the limit of one run, instead of the service-wide one.
    pub(crate) timeout: Option<Duration>,
    /// `broadcast`: every replica gets each message, on a queue of its own.
    pub(crate) broadcast: bool,
    /// `concurrency = N`: at most N runs of this handler at once in this replica.
    pub(crate) concurrency: Option<ConcurrencyLimit>,
}

/// Where a handler's result is published (`publish = "key"`), for the AsyncAPI document.
#[derive(Debug, Clone)]
pub(crate) struct PublishedResult {
    pub(crate) routing_key: &'static str,
    pub(crate) body: BodyDoc,
}

/// At most `limit` runs of one handler at a time. Waiting runs take turns first come, first
/// served.
#[derive(Debug, Clone)]
pub(crate) struct ConcurrencyLimit {
    limit: usize,
    turns: Arc<Semaphore>,
}

impl ConcurrencyLimit {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            turns: Arc::new(Semaphore::new(limit)),
        }
    }

    /// How many runs may go on at once.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Waits for a turn; the run holds it until the permit is dropped.
    pub(crate) async fn turn(&self) -> SemaphorePermit<'_> {
        self.turns
            .acquire()
            .await
            .expect("the semaphore of a concurrency limit is never closed")
    }
}

/// The options `#[service]` sets from `#[event(...)]`: the builder methods are called once per
/// handler when the service is registered.
impl Handler {
    /// `publish = "key"`: the handler's `Ok` value (described by `body`) is published with
    /// `routing_key`.
    ///
    /// # Panics
    ///
    /// If `routing_key` is not a routing key (a malformed key, or one with `*` or `#`).
    /// `#[event]` rejects literal keys at compile time; a constant is checked here, when the
    /// service is registered.
    pub fn with_publish(mut self, routing_key: &'static str, body: BodyDoc) -> Self {
        if let Err(error) = check_routing_key(routing_key) {
            panic!(
                "{}: invalid publish key {routing_key:?}: {error}",
                self.name()
            );
        }
        self.options.publish = Some(PublishedResult { routing_key, body });
        self
    }

    /// `retries = N`: overrides `PIPEFORCE_MESSAGING_MAX_RETRIES` for this handler.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.options.retries = Some(retries);
        self
    }

    /// `timeout_secs = N`: overrides `PIPEFORCE_MESSAGING_HANDLER_TIMEOUT_SECS` for this
    /// handler.
    pub fn with_timeout_secs(mut self, seconds: u64) -> Self {
        self.options.timeout = Some(Duration::from_secs(seconds));
        self
    }

    /// `broadcast`: every running replica gets each message.
    pub fn with_broadcast(mut self) -> Self {
        self.options.broadcast = true;
        self
    }

    /// `concurrency = N`: at most `limit` runs of this handler at once per replica.
    ///
    /// # Panics
    ///
    /// If `limit` is 0 (`#[event]` rejects that at compile time).
    pub fn with_concurrency(mut self, limit: usize) -> Self {
        assert!(limit > 0, "{}: concurrency must be at least 1", self.name());
        self.options.concurrency = Some(ConcurrencyLimit::new(limit));
        self
    }

    /// The routing key the handler's result is published with (`publish = "key"`), if any.
    pub fn publishes_result_to(&self) -> Option<&'static str> {
        self.options
            .publish
            .as_ref()
            .map(|publish| publish.routing_key)
    }

    /// Whether every replica gets each message (`broadcast`).
    pub fn is_broadcast(&self) -> bool {
        self.options.broadcast
    }

    /// How many runs of this handler may go on at once per replica (`concurrency = N`), if
    /// limited.
    pub fn concurrency(&self) -> Option<usize> {
        self.options
            .concurrency
            .as_ref()
            .map(ConcurrencyLimit::limit)
    }

    /// The retries after the first attempt, if `retries = N` overrides the service's.
    pub fn retries(&self) -> Option<u32> {
        self.options.retries
    }

    /// The limit of one run, if `timeout_secs = N` overrides the service's.
    pub fn timeout(&self) -> Option<Duration> {
        self.options.timeout
    }

    pub(crate) fn options(&self) -> &HandlerOptions {
        &self.options
    }
}

/// A routing key to publish with: a valid pattern without wildcards.
pub(crate) fn check_routing_key(key: &str) -> Result<(), String> {
    Pattern::parse(key).map_err(|error| error.to_string())?;
    if key.split('.').any(|word| word == "*" || word == "#") {
        return Err("a routing key to publish with has no `*` or `#` wildcards".to_owned());
    }
    Ok(())
}

/// `publish = "key"`: publishes the handler's `Ok` value in the handler's run, so that a
/// publish that fails is a failure of the handler (retried, then dead-lettered), and the
/// message is acked only after the broker confirmed the result.
#[doc(hidden)]
pub async fn publish_result<T: Serialize + ?Sized>(
    context: &Context,
    routing_key: &str,
    value: &T,
) -> Result<(), HandlerError> {
    context
        .publisher()
        .publish(routing_key, value)
        .await
        .map_err(|error| {
            let reason = format!("cannot publish the result to {routing_key:?}: {error}");
            match error {
                // Another attempt encodes the same value the same way.
                PublishError::Encode(_) => HandlerError::reject(reason),
                _ => HandlerError::new(reason),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_key_is_a_routing_key_without_wildcards() {
        assert_eq!(check_routing_key("invoices.requested"), Ok(()));
        assert!(check_routing_key("invoices.*").is_err());
        assert!(check_routing_key("invoices.#").is_err());
        assert!(check_routing_key("invoices..requested").is_err());
    }
}
