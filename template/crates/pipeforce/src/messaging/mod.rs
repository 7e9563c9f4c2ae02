//! Messaging over RabbitMQ: `#[event]` handlers on the topic exchange, publishing and
//! request/reply.
//!
//! # Layout
//! - [`pattern`]: RabbitMQ's routing-key matching (`*` one word, `#` zero or more).
//! - `handler`: what `#[service]` generates against: [`Service`], [`Handler`],
//!   [`HandlerError`] and replies.
//! - `options`: the `#[event]` options beside the patterns (`publish`, `retries`,
//!   `timeout_secs`, `broadcast`, `concurrency`), kept in each [`Handler`].
//! - `message`: [`Message`] as received, and reading its headers.
//! - `context`: [`Context`], what a handler can read about its message and how it publishes.
//! - `decode`: a body into the handler's parameter type (text, bytes or JSON).
//! - [`asyncapi`]: the AsyncAPI document, from the handlers' bodies (`body_doc`).
//! - `dispatch`: from a message to an [`Outcome`]: matching, decoding, running, retrying.
//! - `consumer`: the connections, the topology (`topology`), consuming, reconnecting;
//!   `broadcast`: the queue of this replica's own for `broadcast` handlers.
//! - `settle`: one delivery from receiving to settling: dispatch, replies, dead letters.
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
mod body_doc;
mod broadcast;
mod consumer;
mod context;
mod decode;
mod dispatch;
mod handler;
mod message;
mod options;
pub mod pattern;
mod publisher;
mod settle;
mod topology;

pub use body_doc::{BodyDoc, SchemaDoc};
pub(crate) use consumer::{Consumer, connect};
pub use context::Context;
pub use decode::DecodeError;
pub(crate) use dispatch::{Dispatcher, TimeLimits};
pub use dispatch::{Outcome, RetryPolicy};
pub use handler::{Handler, HandlerError, HandlerFuture, HandlerResult, Service};
pub use message::Message;
pub(crate) use message::header_text;
pub use pattern::{Pattern, PatternError};
pub use pipeforce_macros::{event, service};
pub use publisher::{PublishError, Published, Publisher, RequestError};

/// Support for the code `#[service]` generates; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use super::{
        body_doc::{BodyOf, BodyOfJson, BodyOfRaw, BodyOfSchema},
        decode::{Decode, DecodeJson, DecodeRaw},
        handler::{IntoHandlerResult, Reply, ReplyJson, ReplyNone},
        options::publish_result,
    };
}
