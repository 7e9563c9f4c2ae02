//! The services of {{project-name}}: types whose `#[event]` methods handle messages and whose
//! routes serve HTTP.
//!
//! Each service lives in a module of its own with a `pub fn register(services: &mut Services)`
//! that adds it. To add a service, write `src/service/<name>.rs` with such a function, declare
//! the module below and call its `register` in [`register`]: one line each.

mod greetings;
mod hello;

pub use greetings::{GREETING_KEY, Greeting, GreetingReply, GreetingService, GreetingStats};
pub use hello::{Hello, HelloService};
use pipeforce::Services;

/// Registers every service of this process: its message handlers, its HTTP routes, and what
/// it publishes. `main` and the tests call this.
pub fn register(services: &mut Services) {
    hello::register(services);
    greetings::register(services);
}

#[cfg(test)]
mod tests {
    use pipeforce::testing::TestBroker;
    use serde_json::json;

    use super::register;

    const HELLO_KEY: &str = "{{project-name}}.hello";

    #[tokio::test]
    async fn a_plain_text_webhook_is_handled() {
        let broker = TestBroker::new(register);

        let delivered = broker
            .deliver("pipeforce.webhook.foo.hoho", "bodyOfWebhook")
            .await;

        assert_eq!(delivered.handlers(), ["HelloService::webhook"]);
    }

    #[tokio::test]
    async fn a_hello_is_handled() {
        let broker = TestBroker::new(register);

        let delivered = broker
            .deliver_json(HELLO_KEY, &json!({ "name": "Ada" }))
            .await;

        assert_eq!(delivered.handlers(), ["HelloService::hello"]);
    }

    #[tokio::test]
    async fn a_hello_without_a_name_is_rejected_without_retries() {
        let broker = TestBroker::new(register);

        let delivered = broker.deliver_json(HELLO_KEY, &json!({ "name": "" })).await;

        assert_eq!(
            delivered.dead_letter_reason(),
            Some("HelloService::hello failed after 1 attempt: a hello needs a name")
        );
    }

    #[tokio::test]
    async fn a_key_no_handler_binds_is_dead_lettered() {
        let broker = TestBroker::new(register);

        let delivered = broker.deliver("pipeforce.webhook.bar.x", "{}").await;

        assert!(delivered.dead_letter_reason().is_some());
    }
}
