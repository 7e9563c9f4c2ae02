//! What `#[service]` generates code against: [`Service`], [`Handler`], the [`Context`] a
//! handler may take, and [`HandlerError`], what it returns when it fails.
//!
//! A handler's body parameter decides how the message body is decoded:
//! - `String`: the body as UTF-8 text, whatever its content type (webhooks send plain text);
//! - `Vec<u8>`: the raw bytes;
//! - any other type: JSON, through `serde::Deserialize`.
//!
//! The macro picks the decoder with "autoref specialization" (see [`__private`]): the concrete
//! type is known where the generated code is compiled, so type aliases work too.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};

use super::{Publisher, pattern::Pattern};

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
    call: Box<Call>,
}

/// What a handler's body is, for the AsyncAPI document.
#[derive(Debug, Clone)]
pub struct BodyDoc {
    /// The Rust type, e.g. `Greeting`.
    pub type_name: &'static str,
    /// `application/json`, `text/plain` or `application/octet-stream`.
    pub content_type: &'static str,
    /// The JSON schema, when the type derives `utoipa::ToSchema`.
    pub schema: Option<SchemaDoc>,
}

/// A body type's schema, with the schemas it refers to.
#[derive(Clone)]
pub struct SchemaDoc {
    /// The schema's name (`ToSchema::name`).
    pub name: String,
    /// The schema.
    pub schema: utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
    /// The schemas it refers to, by name.
    pub references: Vec<(
        String,
        utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
    )>,
}

impl fmt::Debug for SchemaDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaDoc")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
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
            .finish_non_exhaustive()
    }
}

/// A message as the service received it.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
    pub(crate) redelivered: bool,
}

impl Message {
    /// A message with `routing_key` and `body`, as if published to `exchange`.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body: body.into(),
            ..Self::default()
        }
    }

    /// The same message with these AMQP properties (headers, ids, content type, ...).
    pub fn with_properties(mut self, properties: BasicProperties) -> Self {
        self.properties = properties;
        self
    }
}

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
        match self.headers()?.inner().get(name)? {
            AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
            AMQPValue::ShortString(value) => Some(value.as_str()),
            _ => None,
        }
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

/// The body does not fit the handler's parameter type: the message goes to the dead-letter
/// queue at once, retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    reason: String,
}

impl DecodeError {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// Why the body could not be decoded.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// Support for the code `#[service]` generates; not a public API.
#[doc(hidden)]
pub mod __private {
    use std::marker::PhantomData;

    use serde::{Serialize, de::DeserializeOwned};

    use super::{BodyDoc, DecodeError, HandlerError, SchemaDoc};

    /// Decodes a body into `T`. Call as `(&&Decode::<T>::new()).decode(body)`: method lookup
    /// tries `&Decode<T>` (the raw impls) before `Decode<T>` (the JSON impl), so `String` and
    /// `Vec<u8>` get their raw decoders although they are `Deserialize` too.
    pub struct Decode<T>(PhantomData<T>);

    impl<T> Decode<T> {
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            Self(PhantomData)
        }
    }

    pub trait DecodeRaw<T> {
        fn decode(&self, body: &[u8]) -> Result<T, DecodeError>;
    }

    impl DecodeRaw<String> for &Decode<String> {
        fn decode(&self, body: &[u8]) -> Result<String, DecodeError> {
            String::from_utf8(body.to_vec()).map_err(|error| DecodeError {
                reason: format!("the body is not UTF-8 text: {error}"),
            })
        }
    }

    impl DecodeRaw<Vec<u8>> for &Decode<Vec<u8>> {
        fn decode(&self, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
            Ok(body.to_vec())
        }
    }

    pub trait DecodeJson<T> {
        fn decode(&self, body: &[u8]) -> Result<T, DecodeError>;
    }

    impl<T: DeserializeOwned> DecodeJson<T> for Decode<T> {
        fn decode(&self, body: &[u8]) -> Result<T, DecodeError> {
            serde_json::from_slice(body).map_err(|error| DecodeError {
                reason: format!(
                    "the body is not the JSON the handler takes ({}): {error}",
                    std::any::type_name::<T>()
                ),
            })
        }
    }

    /// Encodes a handler's `Ok` value as its reply. Call as `(&&Reply(&value)).encode()`:
    /// `()` means "no reply", every other `Serialize` value is sent as JSON.
    pub struct Reply<'a, T>(pub &'a T);

    pub trait ReplyNone {
        fn encode(&self) -> Result<Option<Vec<u8>>, HandlerError>;
    }

    impl ReplyNone for &Reply<'_, ()> {
        fn encode(&self) -> Result<Option<Vec<u8>>, HandlerError> {
            Ok(None)
        }
    }

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

    /// Describes a body type for the AsyncAPI document. Call as
    /// `(&&&BodyOf::<T>::new()).doc()`: raw types first, then types with a schema
    /// (`utoipa::ToSchema`), then any other (JSON without a schema).
    pub struct BodyOf<T>(PhantomData<T>);

    impl<T> BodyOf<T> {
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            Self(PhantomData)
        }
    }

    pub trait BodyOfRaw {
        fn doc(&self) -> BodyDoc;
    }

    impl BodyOfRaw for &&BodyOf<String> {
        fn doc(&self) -> BodyDoc {
            BodyDoc {
                type_name: "String",
                content_type: "text/plain",
                schema: None,
            }
        }
    }

    impl BodyOfRaw for &&BodyOf<Vec<u8>> {
        fn doc(&self) -> BodyDoc {
            BodyDoc {
                type_name: "Vec<u8>",
                content_type: "application/octet-stream",
                schema: None,
            }
        }
    }

    pub trait BodyOfSchema {
        fn doc(&self) -> BodyDoc;
    }

    impl<T: utoipa::ToSchema + 'static> BodyOfSchema for &BodyOf<T> {
        fn doc(&self) -> BodyDoc {
            let mut references = Vec::new();
            T::schemas(&mut references);
            BodyDoc {
                type_name: short_type_name::<T>(),
                content_type: "application/json",
                schema: Some(SchemaDoc {
                    name: T::name().into_owned(),
                    schema: T::schema(),
                    references,
                }),
            }
        }
    }

    pub trait BodyOfJson {
        fn doc(&self) -> BodyDoc;
    }

    impl<T> BodyOfJson for BodyOf<T> {
        fn doc(&self) -> BodyDoc {
            BodyDoc {
                type_name: short_type_name::<T>(),
                content_type: "application/json",
                schema: None,
            }
        }
    }

    fn short_type_name<T>() -> &'static str {
        let full = std::any::type_name::<T>();
        let without_generics = full.split('<').next().unwrap_or(full);
        without_generics
            .rsplit("::")
            .next()
            .unwrap_or(without_generics)
    }

    /// Turns what a handler method returned into a [`super::HandlerResult`].
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
}
