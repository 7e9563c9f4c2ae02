//! Messaging over RabbitMQ: `#[event]` handlers on the topic exchange, publishing and
//! request/reply.
//!
//! # Layout
//! - [`pattern`]: RabbitMQ's routing-key matching (`*` one word, `#` zero or more).
//! - `handler`: what `#[service]` generates against: [`Service`], [`Handler`], [`Context`],
//!   [`HandlerError`], body decoding and replies.
//! - `dispatch`: from a message to an [`Outcome`]: matching, decoding, running, retrying.
//! - `consumer`: the connection, the topology (`topology`), consuming, settling, reconnecting.
//! - `acks`: coalescing acks into `multiple=true` runs.
//! - `publisher`: [`Publisher`], with publisher confirms and direct reply-to.
//!
//! # Guarantees
//! - A message is acked only after every matching handler succeeded.
//! - A failing, panicking or overrunning handler is retried `PIPEFORCE_MESSAGING_MAX_RETRIES`
//!   times with doubling, capped, jittered delays, then the message is dead-lettered with the
//!   error in the `x-pipeforce-error` header; sooner when another retry could not finish
//!   before the broker's consumer timeout. A body that does not decode (or whose decoder
//!   panics) is dead-lettered at once.
//! - A message leaves the queue only when its handlers succeeded or the dead-letter queue
//!   confirmed its copy; nothing is rejected, requeued in a loop, or acked twice.
//! - A message matching several handlers runs each of them once and is settled once.

mod acks;
pub mod asyncapi;
mod consumer;
mod dispatch;
mod handler;
pub mod pattern;
mod publisher;
mod topology;

pub(crate) use consumer::{Consumer, connect};
pub(crate) use dispatch::{Dispatcher, TimeLimits};
pub use dispatch::{Outcome, RetryPolicy};
#[doc(hidden)]
pub use handler::__private;
pub use handler::{
    BodyDoc, Context, DecodeError, Handler, HandlerError, HandlerFuture, HandlerResult, Message,
    SchemaDoc, Service,
};
pub use pattern::{Pattern, PatternError};
pub use pipeforce_macros::{event, service};
pub use publisher::{PublishError, Published, Publisher, RequestError};
