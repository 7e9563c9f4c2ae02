//! What `#[service]` generates code against: [`Service`], [`Handler`], and what a handler
//! returns: [`HandlerResult`], with [`HandlerError`] when it fails.
//!
//! How a body becomes the handler's parameter is in `decode`; what a handler can read about
//! its message is its [`Context`](super::Context).

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use serde::Serialize;

use super::{BodyDoc, Context, DecodeError, options::HandlerOptions, pattern::Pattern};
/// A type whose methods handle messages: implemented by `#[service]` on an `impl` block.
pub trait Service: Send + Sync + 'static {
    /// One [`Handler`] per `#[event(...)]` method.
    fn handlers(self: Arc<Self>) -> Vec<Handler>;
}

/// What a handler's future resolves to: the reply body (JSON) if it has one, or why it failed.
pub type HandlerResult = Result<Option<Vec<u8>>, HandlerError>;

/// The future of one handler run.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

type Call = dyn Fn(Context) -> Result<HandlerFuture, DecodeError> + Send + Sync;

/// One `#[event]` method of a service, bound to its service instance.
pub struct Handler {
    name: &'static str,
    patterns: Vec<Pattern>,
    body: Option<BodyDoc>,
    /// What `#[event]` options say beyond the patterns (`options`).
    pub(super) options: HandlerOptions,
    call: Box<Call>,
}

impl Handler {
    /// A handler named `name` (e.g. `HelloService::greeting`) for `patterns`.
    ///
    /// `call` decodes the body (an error means the message cannot be handled at all) and
    /// returns the future that runs the method.
    ///
    /// # Panics
    ///
    /// If a pattern is malformed. `#[event]` rejects those at compile time, so generated code
    /// never panics here.
    pub fn new(
        name: &'static str,
        patterns: &[&str],
        call: impl Fn(Context) -> Result<HandlerFuture, DecodeError> + Send + Sync + 'static,
    ) -> Self {
        let patterns = patterns
            .iter()
            .map(|pattern| {
                Pattern::parse(pattern)
                    .unwrap_or_else(|error| panic!("{name}: invalid pattern {pattern:?}: {error}"))
            })
            .collect();
        Self {
            name,
            patterns,
            body: None,
            options: HandlerOptions::default(),
            call: Box::new(call),
        }
    }

    /// Describes the body the handler takes (`#[service]` calls this).
    pub fn with_body(mut self, body: BodyDoc) -> Self {
        self.body = Some(body);
        self
    }

    /// The body the handler takes, if it takes one.
    pub fn body(&self) -> Option<&BodyDoc> {
        self.body.as_ref()
    }

    /// `Service::method`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The routing-key patterns this handler is bound with.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether a message with `routing_key` is for this handler.
    pub fn matches(&self, routing_key: &str) -> bool {
        self.patterns
            .iter()
            .any(|pattern| pattern.matches(routing_key))
    }

    /// Decodes the body for this handler and starts it.
    pub(crate) fn start(&self, context: Context) -> Result<HandlerFuture, DecodeError> {
        (self.call)(context)
    }
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("name", &self.name)
            .field("patterns", &self.patterns)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Why a handler failed.
///
/// Any error type converts into it with `?`: such failures are retried (a few times, with
/// back-off) and then dead-lettered. [`HandlerError::reject`] skips the retries, for failures
/// that cannot heal, such as an invalid order.
pub struct HandlerError {
    message: String,
    retryable: bool,
}

impl HandlerError {
    /// A failure worth retrying, e.g. a timeout of a downstream call.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            retryable: true,
        }
    }

    /// A failure that retrying cannot fix: the message goes to the dead-letter queue at once.
    pub fn reject(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            retryable: false,
        }
    }

    /// What went wrong, with its causes.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

/// `?` on any error in a handler: the message is the error with its chain of causes.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut cause = error.source();
        while let Some(error) = cause {
            message.push_str(": ");
            message.push_str(&error.to_string());
            cause = error.source();
        }
        Self::new(message)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("message", &self.message)
            .field("retryable", &self.retryable)
            .finish()
    }
}

/// Encodes a handler's `Ok` value as its reply. Call as `(&&Reply(&value)).encode()`:
/// `()` means "no reply", every other `Serialize` value is sent as JSON.
#[doc(hidden)]
pub struct Reply<'a, T>(pub &'a T);

#[doc(hidden)]
pub trait ReplyNone {
    fn encode(&self) -> Result<Option<Vec<u8>>, HandlerError>;
}

impl ReplyNone for &Reply<'_, ()> {
    fn encode(&self) -> Result<Option<Vec<u8>>, HandlerError> {
        Ok(None)
    }
}

#[doc(hidden)]
pub trait ReplyJson {
    fn encode(&self) -> Result<Option<Vec<u8>>, HandlerError>;
}

impl<T: Serialize> ReplyJson for Reply<'_, T> {
    fn encode(&self) -> Result<Option<Vec<u8>>, HandlerError> {
        serde_json::to_vec(self.0)
            .map(Some)
            .map_err(|error| HandlerError::reject(format!("cannot encode the reply: {error}")))
    }
}

/// Turns what a handler method returned into a [`HandlerResult`].
#[doc(hidden)]
pub trait IntoHandlerResult<T> {
    fn into_handler_result(self) -> Result<T, HandlerError>;
}

impl<T, E: Into<HandlerError>> IntoHandlerResult<T> for Result<T, E> {
    fn into_handler_result(self) -> Result<T, HandlerError> {
        self.map_err(Into::into)
    }
}

impl IntoHandlerResult<()> for () {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        Ok(())
    }
}
