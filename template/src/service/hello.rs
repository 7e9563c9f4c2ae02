//! The first example: a handler that takes JSON into a type, and one that takes plain text.

use pipeforce::{Context, HandlerError, Services, event, service};
use serde::Deserialize;
use tracing::info;
use utoipa::ToSchema;

/// Says hello. A service holds what its handlers share; this one needs nothing.
pub struct HelloService;

/// The body of a hello event: `{"name": "Ada"}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Hello {
    pub name: String,
}

#[service]
impl HelloService {
    /// The JSON body is decoded into a [`Hello`]; a body that does not decode, or an error
    /// returned here, sends the message to the dead-letter queue.
    #[event("{{project-name}}.hello")]
    async fn hello(&self, hello: Hello) -> Result<(), HandlerError> {
        if hello.name.trim().is_empty() {
            return Err(HandlerError::reject("a hello needs a name"));
        }
        info!(name = %hello.name, "hello");
        Ok(())
    }

    /// Webhook callers send whatever they like: the body is taken as text.
    #[event("pipeforce.webhook.foo.*")]
    async fn webhook(&self, body: String, ctx: &Context) {
        info!(%body, routing_key = ctx.routing_key(), "webhook received");
    }
}

/// Adds the service to this process; `register` in `mod.rs` calls it.
pub fn register(services: &mut Services) {
    services.add(HelloService);
}
