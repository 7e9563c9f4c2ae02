//! The service against a real RabbitMQ, found through the same `PIPEFORCE_MESSAGING_*`
//! variables the service reads (defaults: localhost:5672, guest/guest). Each test gets its own
//! service name and exchange, so tests never see each other's messages.

use std::time::Duration;

use pipeforce::{App, Config, Publisher, testing::delete_queue_and_exchange};
use reqwest::StatusCode;

use {{crate_name}}::{DEFAULTS, service};

/// A running service on its own queue and exchange, ready (consuming) before tests use it.
struct TestService {
    http: String,
    publisher: Publisher,
    config: Config,
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<Result<(), pipeforce::Error>>,
}

impl TestService {
    async fn spawn() -> Self {
        let unique = uuid_like();
        let overrides = [
            ("PIPEFORCE_HTTP_HOST".to_owned(), "127.0.0.1".to_owned()),
            ("PIPEFORCE_HTTP_PORT".to_owned(), "0".to_owned()),
            ("PIPEFORCE_SERVICE".to_owned(), format!("test-{unique}")),
            (
                "PIPEFORCE_MESSAGING_DEFAULT_TOPIC".to_owned(),
                format!("test.topic.{unique}"),
            ),
        ];
        let config = Config::from_vars(DEFAULTS, std::env::vars().chain(overrides))
            .expect("test configuration is valid");
        let app = App::build(config.clone(), service::register)
            .await
            .expect("app builds");
        let http = format!("http://{}", app.http_addr());
        let publisher = app.publisher();
        let readiness = app.readiness().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let running = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        tokio::time::timeout(Duration::from_secs(30), readiness.wait_until_ready())
            .await
            .expect("the service consumes within 30 s (is RabbitMQ running?)");
        Self {
            http,
            publisher,
            config,
            stop,
            running,
        }
    }

    /// Stops the service and removes its queue and exchange from the broker.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.running
            .await
            .unwrap()
            .expect("the service stops cleanly");
        delete_queue_and_exchange(&self.config)
            .await
            .expect("the test's queue and exchange are removed");
    }
}

/// Unique enough for names on a shared broker, without another dependency.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:x}-{}", std::process::id())
}

#[tokio::test]
async fn test_integration_readiness_answers_200_while_consuming() {
    let running = TestService::spawn().await;

    let response = reqwest::get(format!("{}/health/ready", running.http))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    running.stop().await;
}

#[tokio::test]
async fn test_integration_a_greeting_request_gets_its_reply() {
    let running = TestService::spawn().await;

    let reply: service::GreetingReply = running
        .publisher
        .request(
            concat!(env!("CARGO_PKG_NAME"), ".greeting"),
            &service::Greeting {
                name: "Ada".to_owned(),
            },
            Duration::from_secs(10),
        )
        .await
        .expect("a reply within 10 s");

    assert_eq!(reply.text, "Hello, Ada!");
    running.stop().await;
}

#[tokio::test]
async fn test_integration_a_posted_greeting_is_handled_and_counted() {
    let running = TestService::spawn().await;
    let client = reqwest::Client::new();

    let response = client
        .post(format!("{}/greetings", running.http))
        .json(&service::Greeting {
            name: "Grace".to_owned(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // The greeting travels through RabbitMQ to the handler, which records it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats: service::GreetingStats = client
            .get(format!("{}/greetings/stats", running.http))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats.greetings == 1 {
            assert_eq!(stats.last_name.as_deref(), Some("Grace"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not handled: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
}
