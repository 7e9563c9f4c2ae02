//! An example service: a webhook handler taking plain text, a typed event that also answers
//! requests, and two HTTP endpoints sharing the service's state with the handlers.

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicU64, Ordering},
};

use pipeforce::{
    Context, HandlerError, Publisher, event,
    http::{Problem, json_body},
    service,
    warp::{self, Filter, Reply, http::StatusCode},
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};
use utoipa::{OpenApi, ToSchema};

/// The routing key of greeting events.
pub const GREETING_KEY: &str = concat!(env!("CARGO_PKG_NAME"), ".greeting");

/// Greets whoever sends a greeting, and remembers the greetings.
#[derive(Debug)]
pub struct HelloService {
    publisher: Publisher,
    greetings: AtomicU64,
    last_name: Mutex<Option<String>>,
}

/// The body of a greeting event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Greeting {
    /// Who to greet: not empty, not only whitespace.
    #[schema(example = "Ada", min_length = 1, pattern = r"\S")]
    pub name: String,
}

/// The answer to a greeting sent as a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GreetingReply {
    /// The greeting.
    pub text: String,
    /// How many greetings this instance has handled.
    pub greetings_so_far: u64,
}

/// What the handlers have recorded so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GreetingStats {
    /// Greetings handled by this instance.
    pub greetings: u64,
    /// The name of the latest greeting, if there was one.
    pub last_name: Option<String>,
}

impl HelloService {
    /// A service that publishes with `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        Self {
            publisher,
            greetings: AtomicU64::new(0),
            last_name: Mutex::new(None),
        }
    }

    fn stats(&self) -> GreetingStats {
        GreetingStats {
            greetings: self.greetings.load(Ordering::Relaxed),
            last_name: self
                .last_name
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
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
        *self
            .last_name
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(greeting.name.clone());
        // Per message: debug, so a busy service does not write a line per greeting.
        debug!(name = %greeting.name, greetings_so_far, "greeting");
        Ok(GreetingReply {
            text: format!("Hello, {}!", greeting.name),
            greetings_so_far,
        })
    }
}

/// The HTTP endpoints of the service, documented in `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    paths(post_greeting, get_stats),
    tags((name = "greetings", description = "Send greetings and see what was greeted"))
)]
pub struct HelloApi;

/// The routes of [`HelloApi`].
pub fn routes(
    service: Arc<HelloService>,
) -> impl Filter<Extract = (impl Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let with_service = warp::any().map(move || Arc::clone(&service));
    let post = warp::path!("greetings")
        .and(warp::post())
        .and(with_service.clone())
        .and(json_body())
        .then(post_greeting);
    let stats = warp::path!("greetings" / "stats")
        .and(warp::get())
        .and(with_service)
        .then(get_stats);
    post.or(stats)
}

/// Publishes a greeting event; the greeting handler (of any instance) picks it up.
#[utoipa::path(
    post,
    path = "/greetings",
    tag = "greetings",
    request_body = Greeting,
    responses(
        (status = 202, description = "The greeting event was published", body = Greeting),
        (status = 400, description = "The body is not a valid greeting", body = Problem,
            content_type = "application/problem+json"),
        (status = 411, description = "The body has no Content-Length", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "RabbitMQ did not take the event", body = Problem,
            content_type = "application/problem+json")
    )
)]
async fn post_greeting(
    service: Arc<HelloService>,
    greeting: Greeting,
) -> Result<impl Reply, Problem> {
    if greeting.name.trim().is_empty() {
        return Err(Problem::invalid_field("name", "must not be empty"));
    }
    service
        .publisher
        .publish(GREETING_KEY, &greeting)
        .await
        .map_err(|error| Problem::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string()))?;
    Ok(warp::reply::with_status(
        warp::reply::json(&greeting),
        StatusCode::ACCEPTED,
    ))
}

/// What the greeting handler of this instance has recorded.
#[utoipa::path(
    get,
    path = "/greetings/stats",
    tag = "greetings",
    responses((status = 200, description = "The greetings so far", body = GreetingStats))
)]
async fn get_stats(service: Arc<HelloService>) -> impl Reply {
    warp::reply::json(&service.stats())
}

#[cfg(test)]
mod tests {
    use pipeforce::testing::TestBroker;
    use serde_json::json;

    use super::GREETING_KEY;
    use crate::service::register;

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
            .deliver_json(GREETING_KEY, &json!({ "name": "Ada" }))
            .await;
        let delivered = broker
            .request_json(GREETING_KEY, &json!({ "name": "Grace" }))
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

        let delivered = broker.deliver(GREETING_KEY, "not json").await;

        let reason = delivered.dead_letter_reason().expect("dead-lettered");
        assert!(reason.starts_with("cannot decode the body"), "{reason}");
    }

    #[tokio::test]
    async fn a_greeting_without_a_name_is_rejected_without_retries() {
        let broker = TestBroker::new(register);

        let delivered = broker
            .deliver_json(GREETING_KEY, &json!({ "name": " " }))
            .await;

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
