//! From a message to an [`Outcome`]: which handlers it is for, decoding its body, running each
//! matching handler once, retrying failures with back-off.
//!
//! The consumer and the test harness share this code, so what a unit test sees is what the
//! service does; they differ only in how they settle the outcome with the broker.

use std::{any::Any, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::FutureExt;
use metrics::{Counter, Histogram, counter, histogram};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Context, DecodeError, Handler, HandlerError, HandlerFuture, Message, Publisher};
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
    /// The wait before the first retry; doubled for each further one, up to
    /// [`RetryPolicy::MAX_DELAY`], plus a random part of up to as much again so that replicas
    /// retrying the same failure do not hit a recovering dependency in lock-step.
    pub first_delay: Duration,
}

impl RetryPolicy {
    /// The longest wait between two runs, before jitter.
    pub const MAX_DELAY: Duration = Duration::from_secs(60);

    /// The waits before each retry, in order, with jitter.
    fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(Self::MAX_DELAY)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.max_retries as usize)
            .build()
    }
}

/// How long a delivery may take, or `None` for no limit (unit tests).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TimeLimits {
    /// One handler run: a run past it counts as a retryable failure.
    pub(crate) handler: Option<Duration>,
    /// The broker's `consumer_timeout`: a delivery still unacked after it makes RabbitMQ close
    /// the channel, and the message starts over. A delivery is dead-lettered rather than
    /// retried when the next retry could not finish before it (minus a margin).
    pub(crate) consumer: Option<Duration>,
}

impl TimeLimits {
    /// What is kept free of retries before the consumer timeout: for the dead-letter copy,
    /// the ack, and a clock that runs a little differently on the broker.
    fn margin(consumer_timeout: Duration) -> Duration {
        (consumer_timeout / 10).min(Duration::from_secs(60))
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
    limits: TimeLimits,
}

/// One handler's runs of one message.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    handler: &'a Handler,
    metrics: &'a HandlerMetrics,
    context: &'a Context,
    /// When the message arrived: retries must end before the broker's consumer timeout.
    delivered: Instant,
    stopping: &'a CancellationToken,
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
            limits: TimeLimits::default(),
        }
    }

    /// The same dispatcher with time limits for handler runs and deliveries.
    pub(crate) fn with_limits(mut self, limits: TimeLimits) -> Self {
        self.limits = limits;
        self
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
        let delivered = Instant::now();
        let matching = match self.matching(&message.routing_key) {
            Ok(matching) => matching,
            Err(outcome) => return outcome,
        };
        let context = Context::new(Arc::clone(&message), self.publisher.clone());
        // Decode for every handler before running any, so an undecodable message runs none.
        let mut runs = Vec::with_capacity(matching.len());
        for (handler, metrics) in matching {
            match self.start(handler, metrics, &context) {
                Ok(run) => runs.push((handler, metrics, run)),
                Err(outcome) => return outcome,
            }
        }
        let mut handlers = Vec::with_capacity(runs.len());
        let mut replies = Vec::new();
        for (handler, metrics, first_run) in runs {
            let attempt = Attempt {
                handler,
                metrics,
                context: &context,
                delivered,
                stopping,
            };
            match self.run_with_retries(attempt, first_run).await {
                Ok(reply) => {
                    handlers.push(handler.name());
                    replies.extend(reply);
                }
                Err(outcome) => return outcome,
            }
        }
        Outcome::Handled { handlers, replies }
    }

    /// The handlers for `routing_key`, in registration order; none is a dead letter.
    fn matching(&self, routing_key: &str) -> Result<Vec<(&Handler, &HandlerMetrics)>, Outcome> {
        let matching: Vec<_> = self
            .handlers
            .iter()
            .zip(&self.metrics)
            .filter(|(handler, _)| handler.matches(routing_key))
            .collect();
        if matching.is_empty() {
            self.dead_letters.no_handler.increment(1);
            self.dead_letters.no_handler_consumed.increment(1);
            return Err(Outcome::DeadLettered {
                reason: format!(
                    "no handler matches routing key {routing_key:?} (was a handler removed \
                     while its binding stayed?)"
                ),
                handler: None,
            });
        }
        Ok(matching)
    }

    /// Decodes the body for `handler` and starts it; a body it cannot decode is a dead letter.
    fn start(
        &self,
        handler: &Handler,
        metrics: &HandlerMetrics,
        context: &Context,
    ) -> Result<HandlerFuture, Outcome> {
        decode_and_start(handler, context).map_err(|error| {
            self.dead_letters.undecodable.increment(1);
            metrics.dead_lettered.increment(1);
            Outcome::DeadLettered {
                reason: format!("cannot decode the body: {error}"),
                handler: Some(handler.name()),
            }
        })
    }

    /// Runs one handler until it succeeds (its reply, if any), or gives up: a dead letter once
    /// the error is not retryable, the retries are spent or the next one would outlive the
    /// consumer timeout; abandoned when `stopping` fires while waiting to retry.
    async fn run_with_retries(
        &self,
        attempt: Attempt<'_>,
        first_run: HandlerFuture,
    ) -> Result<Option<Vec<u8>>, Outcome> {
        let Attempt {
            handler, metrics, ..
        } = attempt;
        // Held through the retries: with `concurrency = 1`, a failing message is settled
        // before the handler's next one starts.
        let _turn = match &handler.options().concurrency {
            Some(limit) => tokio::select! {
                turn = limit.turn() => Some(turn),
                () = attempt.stopping.cancelled() => {
                    metrics.abandoned.increment(1);
                    return Err(Outcome::Abandoned);
                }
            },
            None => None,
        };
        let mut run = first_run;
        let mut delays = self.retry_policy(handler).delays();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let started = Instant::now();
            let result = self.run(handler, run).await;
            metrics.duration.record(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(reply) => {
                    metrics.handled.increment(1);
                    return Ok(reply);
                }
                Err(error) => error,
            };
            let failed = || {
                self.dead_letters.handler_failed.increment(1);
                metrics.dead_lettered.increment(1);
                format!(
                    "{} failed after {attempts} attempt{}: {error}",
                    handler.name(),
                    if attempts == 1 { "" } else { "s" }
                )
            };
            let dead_letter = |reason| Outcome::DeadLettered {
                reason,
                handler: Some(handler.name()),
            };
            let Some(delay) = delays.next().filter(|_| error.is_retryable()) else {
                return Err(dead_letter(failed()));
            };
            if !self.retry_fits(attempt.delivered, delay, self.run_limit(handler)) {
                return Err(dead_letter(format!(
                    "{}; not retried, since another attempt could not finish before the \
                     broker's consumer timeout (PIPEFORCE_MESSAGING_CONSUMER_TIMEOUT_SECS)",
                    failed()
                )));
            }
            metrics.retries.increment(1);
            warn!(
                handler = handler.name(),
                routing_key = %attempt.context.routing_key(),
                retry = attempts,
                ?delay,
                error = %error,
                "handler failed; retrying"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = attempt.stopping.cancelled() => {
                    metrics.abandoned.increment(1);
                    return Err(Outcome::Abandoned);
                }
            }
            run = self.start(handler, metrics, attempt.context)?;
        }
    }

    /// The retry policy of `handler`: the service's, or its own count (`retries = N`).
    fn retry_policy(&self, handler: &Handler) -> RetryPolicy {
        match handler.options().retries {
            Some(max_retries) => RetryPolicy {
                max_retries,
                ..self.retry
            },
            None => self.retry,
        }
    }

    /// The time limit of one run of `handler`: its own (`timeout_secs = N`) or the service's.
    fn run_limit(&self, handler: &Handler) -> Option<Duration> {
        handler.options().timeout.or(self.limits.handler)
    }

    /// One handler run, within the handler time limit; a panic or overrun is a failure.
    async fn run(
        &self,
        handler: &Handler,
        run: HandlerFuture,
    ) -> Result<Option<Vec<u8>>, HandlerError> {
        let guarded = AssertUnwindSafe(run).catch_unwind();
        let result = match self.run_limit(handler) {
            Some(limit) => tokio::time::timeout(limit, guarded).await.map_err(|_| {
                let setting = if handler.options().timeout.is_some() {
                    "timeout_secs of its #[event]"
                } else {
                    "PIPEFORCE_MESSAGING_HANDLER_TIMEOUT_SECS"
                };
                HandlerError::new(format!(
                    "the handler did not finish within {} s ({setting})",
                    limit.as_secs()
                ))
            })?,
            None => guarded.await,
        };
        result.unwrap_or_else(|panic| {
            Err(HandlerError::new(format!(
                "the handler panicked: {}",
                panic_text(&*panic)
            )))
        })
    }

    /// Whether a retry after `delay` (and its run, up to `run_limit`) can end before the
    /// broker's consumer timeout, for a message delivered at `delivered`.
    fn retry_fits(&self, delivered: Instant, delay: Duration, run_limit: Option<Duration>) -> bool {
        let Some(consumer_timeout) = self.limits.consumer else {
            return true;
        };
        let deadline = delivered + consumer_timeout - TimeLimits::margin(consumer_timeout);
        Instant::now() + delay + run_limit.unwrap_or_default() <= deadline
    }
}

/// Decodes the body for `handler` and starts it; a decoder that panics (a hand-written
/// `Deserialize`) is an undecodable body, not a delivery that never completes.
fn decode_and_start(handler: &Handler, context: &Context) -> Result<HandlerFuture, DecodeError> {
    std::panic::catch_unwind(AssertUnwindSafe(|| handler.start(context.clone()))).unwrap_or_else(
        |panic| {
            Err(DecodeError::new(format!(
                "decoding panicked: {}",
                panic_text(&*panic)
            )))
        },
    )
}

fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-text payload")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_cap_with_jitter_and_stop_after_the_last_retry() {
        let policy = RetryPolicy {
            max_retries: 12,
            first_delay: Duration::from_secs(1),
        };
        let delays: Vec<Duration> = policy.delays().collect();
        assert_eq!(delays.len(), 12);
        for (retry, delay) in delays.iter().enumerate() {
            let base =
                (Duration::from_secs(1) * 2u32.pow(retry as u32)).min(RetryPolicy::MAX_DELAY);
            assert!(
                base <= *delay && *delay <= base * 2,
                "retry {retry}: {delay:?} is not within {base:?} and twice that"
            );
        }
        let other: Vec<Duration> = policy.delays().collect();
        assert_ne!(delays, other, "each message gets delays of its own");
    }

    #[test]
    fn a_retry_that_cannot_finish_before_the_consumer_timeout_is_not_made() {
        let dispatcher = Dispatcher::new(
            Vec::new(),
            Publisher::recording("test"),
            RetryPolicy {
                max_retries: 3,
                first_delay: Duration::ZERO,
            },
        )
        .with_limits(TimeLimits {
            handler: Some(Duration::from_secs(60)),
            consumer: Some(Duration::from_secs(1800)),
        });
        let now = Instant::now();
        let run_limit = dispatcher.limits.handler;
        assert!(dispatcher.retry_fits(now, Duration::from_secs(60), run_limit));
        // 1800 s minus the 60 s margin leaves 1740 s: 1700 s in, 60 s of delay and 60 s of
        // run do not fit.
        let long_ago = now.checked_sub(Duration::from_secs(1700)).unwrap();
        assert!(!dispatcher.retry_fits(long_ago, Duration::ZERO, run_limit));
    }
}
