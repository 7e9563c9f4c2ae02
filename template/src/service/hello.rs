//! An example service: a webhook handler taking plain text, and a typed event that also
//! answers requests.

use std::sync::atomic::{AtomicU64, Ordering};

use pipeforce::{Context, HandlerError, event, service};
use serde::{Deserialize, Serialize};
use tracing::info;

/// Greets whoever sends a greeting, and counts the greetings.
#[derive(Debug, Default)]
pub struct HelloService {
    greetings: AtomicU64,
}

/// The body of a greeting event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Greeting {
    /// Who to greet.
    pub name: String,
}

/// The answer to a greeting sent as a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GreetingReply {
    /// The greeting.
    pub text: String,
    /// How many greetings this instance has handled.
    pub greetings_so_far: u64,
}

#[service]
impl HelloService {
    /// Webhooks whose event key starts with `pipeforce.webhook.foo.`. The body is taken as
    /// text: webhook callers send whatever they like (the trigger example sends plain text).
    #[event("pipeforce.webhook.foo.*")]
    async fn webhook(&self, body: String, ctx: &Context) {
        info!(%body, message_id = ctx.message_id(), "webhook received");
    }

    /// A typed event: the JSON body is decoded into a [`Greeting`]. Sent as a request, the
    /// returned [`GreetingReply`] goes back to the sender.
    #[event("{{project-name}}.greeting")]
    async fn greeting(&self, greeting: Greeting) -> Result<GreetingReply, HandlerError> {
        if greeting.name.trim().is_empty() {
            // Retrying cannot add a name: dead-letter at once.
            return Err(HandlerError::reject("a greeting needs a name"));
        }
        let greetings_so_far = self.greetings.fetch_add(1, Ordering::Relaxed) + 1;
        info!(name = %greeting.name, greetings_so_far, "greeting");
        Ok(GreetingReply {
            text: format!("Hello, {}!", greeting.name),
            greetings_so_far,
        })
    }
}

#[cfg(test)]
mod tests {
    use pipeforce::testing::TestBroker;
    use serde_json::json;

    use crate::service::register;

    const GREETING: &str = concat!(env!("CARGO_PKG_NAME"), ".greeting");

    #[tokio::test]
    async fn a_plain_text_webhook_is_handled() {
        let broker = TestBroker::new(register);

        let delivered = broker
            .deliver("pipeforce.webhook.foo.hoho", "bodyOfWebhook")
            .await;

        assert_eq!(delivered.handlers(), ["HelloService::webhook"]);
    }

    #[tokio::test]
    async fn a_greeting_request_is_answered_with_the_running_count() {
        let broker = TestBroker::new(register);

        broker
            .deliver_json(GREETING, &json!({ "name": "Ada" }))
            .await;
        let delivered = broker
            .request_json(GREETING, &json!({ "name": "Grace" }))
            .await;

        assert!(delivered.is_handled());
        assert_eq!(
            delivered.replies(),
            [json!({ "text": "Hello, Grace!", "greetings_so_far": 2 })]
        );
    }

    #[tokio::test]
    async fn a_greeting_that_is_not_json_is_dead_lettered_at_once() {
        let broker = TestBroker::new(register);

        let delivered = broker.deliver(GREETING, "not json").await;

        let reason = delivered.dead_letter_reason().expect("dead-lettered");
        assert!(reason.starts_with("cannot decode the body"), "{reason}");
    }

    #[tokio::test]
    async fn a_greeting_without_a_name_is_rejected_without_retries() {
        let broker = TestBroker::new(register);

        let delivered = broker.deliver_json(GREETING, &json!({ "name": " " })).await;

        assert_eq!(
            delivered.dead_letter_reason(),
            Some("HelloService::greeting failed after 1 attempt: a greeting needs a name")
        );
    }

    #[tokio::test]
    async fn a_key_no_handler_binds_is_dead_lettered() {
        let broker = TestBroker::new(register);

        let delivered = broker.deliver("pipeforce.webhook.bar.x", "{}").await;

        assert!(delivered.dead_letter_reason().is_some());
    }
}
