//! The richer example: a service whose state its message handler and its HTTP endpoints share.
//!
//! `POST /greetings` publishes a greeting event. The `greeting` handler (of whichever instance
//! RabbitMQ hands the event to) counts it and, when the event was sent as a request, answers
//! with a [`GreetingReply`]. `GET /greetings/stats` shows what this instance has counted.

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicU64, Ordering},
};

use pipeforce::{
    HandlerError, Publisher, Services, event,
    http::{JsonBodyProblems, Problem, PublishProblems, json_body},
    service,
    warp::{self, Filter, Reply, http::StatusCode},
};
use serde::{Deserialize, Serialize};
use tracing::debug;
use utoipa::{OpenApi, ToSchema};

/// The routing key of greeting events: the handler listens on it and the endpoint publishes
/// with it, so it is written only here.
pub const GREETING_KEY: &str = concat!(env!("CARGO_PKG_NAME"), ".greeting");

/// Greets whoever sends a greeting, and remembers the greetings.
#[derive(Debug)]
pub struct GreetingService {
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

/// What the handler has recorded so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GreetingStats {
    /// Greetings handled by this instance.
    pub greetings: u64,
    /// The name of the latest greeting, if there was one.
    pub last_name: Option<String>,
}

/// Adds the service to this process: its handler, its endpoints, and the event it publishes.
pub fn register(services: &mut Services) {
    // One instance, shared: the handler records greetings, the endpoints read them.
    let service = Arc::new(GreetingService::new(services.publisher()));
    services
        .add_shared(Arc::clone(&service))
        .add_routes(routes(service), GreetingApi::openapi())
        .publishes::<Greeting>(GREETING_KEY);
}

impl GreetingService {
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
impl GreetingService {
    /// The JSON body is decoded into a [`Greeting`]. Sent as a request, the returned
    /// [`GreetingReply`] goes back to the sender.
    #[event(GREETING_KEY)]
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
pub struct GreetingApi;

/// The routes of [`GreetingApi`].
pub fn routes(
    service: Arc<GreetingService>,
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
        // What `json_body()` answers to a bad body, and a publish error becomes.
        JsonBodyProblems,
        PublishProblems
    )
)]
async fn post_greeting(
    service: Arc<GreetingService>,
    greeting: Greeting,
) -> Result<impl Reply, Problem> {
    if greeting.name.trim().is_empty() {
        return Err(Problem::invalid_field("name", "must not be empty"));
    }
    // A failed publish becomes a 503 problem saying why.
    service.publisher.publish(GREETING_KEY, &greeting).await?;
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
async fn get_stats(service: Arc<GreetingService>) -> impl Reply {
    warp::reply::json(&service.stats())
}

#[cfg(test)]
mod tests {
    use pipeforce::testing::TestBroker;
    use serde_json::json;

    use super::{GREETING_KEY, register};

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
            Some("GreetingService::greeting failed after 1 attempt: a greeting needs a name")
        );
    }
}
