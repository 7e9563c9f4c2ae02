//! The services of {{project-name}}: types whose `#[event]` methods handle messages.
//!
//! Write a service next to `hello.rs`, then add it to [`register`].

mod hello;

pub use hello::{Greeting, GreetingReply, HelloService};
use pipeforce::Services;

/// Registers every service of this process; adding a service is one line here.
pub fn register(services: &mut Services) {
    services.add(HelloService::default());
}
