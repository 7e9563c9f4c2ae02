//! The service against a real RabbitMQ, found through the same `PIPEFORCE_MESSAGING_*`
//! variables the service reads (defaults: localhost:5672, guest/guest). Each test runs the
//! service with names of its own on the broker, so tests never see each other's messages.

use std::time::Duration;

use pipeforce::testing::{TestService, eventually};
use reqwest::StatusCode;

use {{crate_name}}::DEFAULTS;
use {{crate_name}}::service::{self, GREETING_KEY};

#[tokio::test]
async fn test_integration_readiness_answers_200_while_consuming() {
    let service = TestService::spawn(DEFAULTS, service::register).await;

    let response = service.get("/health/ready").await;

    assert_eq!(response.status(), StatusCode::OK);
    service.stop().await;
}

#[tokio::test]
async fn test_integration_a_greeting_request_gets_its_reply() {
    let service = TestService::spawn(DEFAULTS, service::register).await;
    let greeting = service::Greeting {
        name: "Ada".to_owned(),
    };

    let reply: service::GreetingReply = service
        .publisher
        .request(GREETING_KEY, &greeting, Duration::from_secs(10))
        .await
        .expect("a reply within 10 s");

    assert_eq!(reply.text, "Hello, Ada!");
    service.stop().await;
}

#[tokio::test]
async fn test_integration_a_posted_greeting_is_handled_and_counted() {
    let service = TestService::spawn(DEFAULTS, service::register).await;
    let greeting = service::Greeting {
        name: "Grace".to_owned(),
    };

    let response = service.post_json("/greetings", &greeting).await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // The greeting travels through RabbitMQ to the handler, which records it.
    let stats = eventually(
        "the greeting is counted",
        Duration::from_secs(10),
        || async {
            let stats: service::GreetingStats = service.get_json("/greetings/stats").await;
            if stats.greetings == 1 {
                Ok(stats)
            } else {
                Err(stats)
            }
        },
    )
    .await;
    assert_eq!(stats.last_name.as_deref(), Some("Grace"));
    service.stop().await;
}
