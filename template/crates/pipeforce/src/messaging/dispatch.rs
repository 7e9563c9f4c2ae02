//! From a message to an [`Outcome`]: which handlers it is for, decoding its body, running each
//! matching handler once, retrying failures with back-off.
//!
//! The consumer and the test harness share this code, so what a unit test sees is what the
//! service does; they differ only in how they settle the outcome with the broker.

use std::{
    any::Any,
    collections::{HashSet, VecDeque},
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures_util::FutureExt;
use metrics::{Counter, Histogram, counter, histogram};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Context, Handler, HandlerError, Message, Publisher};
use crate::telemetry::metric;

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every matching handler succeeded: acknowledge. Holds the replies handlers returned.
    Handled {
        /// The handlers that ran, in order.
        handlers: Vec<&'static str>,
        /// The JSON replies, one per handler that returned a value.
        replies: Vec<Vec<u8>>,
    },
    /// The message cannot be handled: move it to the dead-letter queue.
    DeadLettered {
        /// Why, as written into the `x-pipeforce-error` header.
        reason: String,
        /// The handler that failed, if one did.
        handler: Option<&'static str>,
    },
    /// The service is shutting down before it could finish: leave the message unsettled so
    /// the broker delivers it again.
    Abandoned,
}

/// How often and how soon failing handlers are run again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The wait before the first retry; doubled for each further one.
    pub first_delay: Duration,
}

impl RetryPolicy {
    fn delay(&self, retry: u32) -> Duration {
        self.first_delay
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
    }
}

/// The registered handlers and how to run them.
pub(crate) struct Dispatcher {
    handlers: Vec<Handler>,
    /// One entry per handler, same order.
    metrics: Vec<HandlerMetrics>,
    dead_letters: DeadLetterMetrics,
    publisher: Publisher,
    retry: RetryPolicy,
    dead_lettered: Mutex<RecentIds>,
}

/// Metric handles looked up once, not on every message: a lookup hashes the name and labels.
struct HandlerMetrics {
    handled: Counter,
    dead_lettered: Counter,
    abandoned: Counter,
    retries: Counter,
    duration: Histogram,
}

impl HandlerMetrics {
    fn new(handler: &'static str) -> Self {
        let consumed = |outcome: &'static str| counter!(metric::MESSAGES_CONSUMED, "handler" => handler, "outcome" => outcome);
        Self {
            handled: consumed("handled"),
            dead_lettered: consumed("dead_lettered"),
            abandoned: consumed("abandoned"),
            retries: counter!(metric::HANDLER_RETRIES, "handler" => handler),
            duration: histogram!(metric::HANDLER_DURATION, "handler" => handler),
        }
    }
}

struct DeadLetterMetrics {
    no_handler: Counter,
    no_handler_consumed: Counter,
    undecodable: Counter,
    handler_failed: Counter,
}

impl DeadLetterMetrics {
    fn new() -> Self {
        let reason =
            |reason: &'static str| counter!(metric::MESSAGES_DEAD_LETTERED, "reason" => reason);
        Self {
            no_handler: reason("no_handler"),
            no_handler_consumed: counter!(
                metric::MESSAGES_CONSUMED,
                "handler" => "none",
                "outcome" => "dead_lettered"
            ),
            undecodable: reason("undecodable"),
            handler_failed: reason("handler_failed"),
        }
    }
}

impl Dispatcher {
    pub(crate) fn new(handlers: Vec<Handler>, publisher: Publisher, retry: RetryPolicy) -> Self {
        Self {
            metrics: handlers
                .iter()
                .map(|handler| HandlerMetrics::new(handler.name()))
                .collect(),
            dead_letters: DeadLetterMetrics::new(),
            handlers,
            publisher,
            retry,
            dead_lettered: Mutex::new(RecentIds::with_capacity(10_000)),
        }
    }

    pub(crate) fn handlers(&self) -> &[Handler] {
        &self.handlers
    }

    /// Handles `message`: every matching handler runs once (in registration order) and, if it
    /// fails, is retried per the policy. Stops early with [`Outcome::Abandoned`] when `stopping`
    /// fires between attempts.
    pub(crate) async fn dispatch(
        &self,
        message: Arc<Message>,
        stopping: &CancellationToken,
    ) -> Outcome {
        if message.redelivered && self.was_dead_lettered(&message) {
            // Dead-lettered, but the ack was lost with the connection: settle it again
            // without running handlers a second time.
            return Outcome::Handled {
                handlers: Vec::new(),
                replies: Vec::new(),
            };
        }
        let matching: Vec<(&Handler, &HandlerMetrics)> = self
            .handlers
            .iter()
            .zip(&self.metrics)
            .filter(|(handler, _)| handler.matches(&message.routing_key))
            .collect();
        if matching.is_empty() {
            self.dead_letters.no_handler.increment(1);
            self.dead_letters.no_handler_consumed.increment(1);
            return Outcome::DeadLettered {
                reason: format!(
                    "no handler matches routing key {:?} (was a handler removed while its \
                     binding stayed?)",
                    message.routing_key
                ),
                handler: None,
            };
        }

        let context = Context::new(Arc::clone(&message), self.publisher.clone());
        // Decode for every handler before running any, so an undecodable message runs none.
        let mut runs = Vec::with_capacity(matching.len());
        for (handler, metrics) in matching {
            match handler.start(context.clone()) {
                Ok(run) => runs.push((handler, metrics, run)),
                Err(error) => {
                    self.dead_letters.undecodable.increment(1);
                    metrics.dead_lettered.increment(1);
                    return Outcome::DeadLettered {
                        reason: format!("cannot decode the body: {error}"),
                        handler: Some(handler.name()),
                    };
                }
            }
        }

        let mut handlers = Vec::with_capacity(runs.len());
        let mut replies = Vec::new();
        for (handler, metrics, first_run) in runs {
            let mut run = first_run;
            let mut retry = 0;
            loop {
                let started = Instant::now();
                let result = AssertUnwindSafe(run)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| Err(HandlerError::new(panic_message(&*panic))));
                metrics.duration.record(started.elapsed().as_secs_f64());
                let error = match result {
                    Ok(reply) => {
                        metrics.handled.increment(1);
                        handlers.push(handler.name());
                        replies.extend(reply);
                        break;
                    }
                    Err(error) => error,
                };
                if !error.is_retryable() || retry >= self.retry.max_retries {
                    self.dead_letters.handler_failed.increment(1);
                    metrics.dead_lettered.increment(1);
                    let attempts = retry + 1;
                    return Outcome::DeadLettered {
                        reason: format!(
                            "{} failed after {attempts} attempt{}: {error}",
                            handler.name(),
                            if attempts == 1 { "" } else { "s" }
                        ),
                        handler: Some(handler.name()),
                    };
                }
                retry += 1;
                metrics.retries.increment(1);
                let delay = self.retry.delay(retry);
                warn!(
                    handler = handler.name(),
                    routing_key = %message.routing_key,
                    retry,
                    ?delay,
                    error = %error,
                    "handler failed; retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stopping.cancelled() => {
                        metrics.abandoned.increment(1);
                        return Outcome::Abandoned;
                    }
                }
                run = match handler.start(context.clone()) {
                    Ok(run) => run,
                    Err(error) => {
                        self.dead_letters.undecodable.increment(1);
                        metrics.dead_lettered.increment(1);
                        return Outcome::DeadLettered {
                            reason: format!("cannot decode the body: {error}"),
                            handler: Some(handler.name()),
                        };
                    }
                };
            }
        }
        Outcome::Handled { handlers, replies }
    }

    /// Remembers that `message` went to the dead-letter queue, in case its ack gets lost.
    pub(crate) fn remember_dead_lettered(&self, message: &Message) {
        if let Some(id) = message.properties.message_id() {
            self.dead_lettered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id.as_str());
        }
    }

    fn was_dead_lettered(&self, message: &Message) -> bool {
        message.properties.message_id().as_ref().is_some_and(|id| {
            self.dead_lettered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(id.as_str())
        })
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-text payload");
    format!("the handler panicked: {text}")
}

/// The most recent ids, up to a capacity; the oldest are forgotten first.
struct RecentIds {
    order: VecDeque<String>,
    ids: HashSet<String>,
    capacity: usize,
}

impl RecentIds {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            order: VecDeque::with_capacity(capacity),
            ids: HashSet::with_capacity(capacity),
            capacity,
        }
    }

    fn insert(&mut self, id: &str) {
        if self.ids.contains(id) {
            return;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.order.push_back(id.to_owned());
        self.ids.insert(id.to_owned());
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double() {
        let policy = RetryPolicy {
            max_retries: 3,
            first_delay: Duration::from_millis(100),
        };
        assert_eq!(policy.delay(1), Duration::from_millis(100));
        assert_eq!(policy.delay(2), Duration::from_millis(200));
        assert_eq!(policy.delay(3), Duration::from_millis(400));
    }

    #[test]
    fn recent_ids_forget_the_oldest_first() {
        let mut ids = RecentIds::with_capacity(2);
        ids.insert("a");
        ids.insert("b");
        ids.insert("c");
        assert!(!ids.contains("a"));
        assert!(ids.contains("b") && ids.contains("c"));
    }
}
