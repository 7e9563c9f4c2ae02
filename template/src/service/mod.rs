//! The services of {{project-name}}: types whose `#[event]` methods handle messages and whose
//! routes serve HTTP.
//!
//! Write a service next to `hello.rs`, then add it to [`register`].

mod hello;

use std::sync::Arc;

pub use hello::{GREETING_KEY, Greeting, GreetingReply, GreetingStats, HelloApi, HelloService};
use pipeforce::Services;
use utoipa::OpenApi;

/// Registers every service of this process: its message handlers, its HTTP routes, and what
/// it publishes.
pub fn register(services: &mut Services) {
    // Shared: the handlers record greetings, the endpoints read them.
    let hello = Arc::new(HelloService::new(services.publisher()));
    services
        .add_shared(Arc::clone(&hello))
        .add_routes(hello::routes(hello), HelloApi::openapi())
        .publishes::<Greeting>(GREETING_KEY);
}
