//! The service's HTTP surface, exercised on a real instance bound to a free local port. These
//! tests need no broker: messaging points at a port where nothing listens.

use pipeforce::{App, Config};
use reqwest::StatusCode;
use serde_json::Value;

use {{crate_name}}::DEFAULTS;
use {{crate_name}}::service::{self, GREETING_KEY};

/// A running instance of the service and a client for it.
struct TestApp {
    address: String,
    client: reqwest::Client,
}

impl TestApp {
    async fn spawn() -> Self {
        let config = Config::from_vars(
            DEFAULTS,
            [
                ("PIPEFORCE_HTTP_HOST", "127.0.0.1"),
                ("PIPEFORCE_HTTP_PORT", "0"),
                ("PIPEFORCE_MESSAGING_HOST", "127.0.0.1"),
                ("PIPEFORCE_MESSAGING_PORT", "1"),
            ],
        )
        .expect("test configuration is valid");
        let app = App::build(config, service::register)
            .await
            .expect("app builds");
        let address = format!("http://{}", app.http_addr());
        // The stop trigger never fires: the app ends with the test's runtime.
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        Self {
            address,
            client: reqwest::Client::new(),
        }
    }

    async fn post_greeting(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}/greetings", self.address))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request is sent")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request is sent")
    }
}

#[tokio::test]
async fn liveness_answers_200() {
    let app = TestApp::spawn().await;

    let response = app.get("/health/live").await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "UP");
}

#[tokio::test]
async fn readiness_answers_503_while_the_broker_is_unreachable() {
    let app = TestApp::spawn().await;

    let response = app.get("/health/ready").await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "DOWN");
    assert_eq!(body["checks"]["messaging"], "DOWN");
}

#[tokio::test]
async fn an_unknown_path_gets_a_json_404_problem() {
    let app = TestApp::spawn().await;

    let response = app.get("/no/such/path").await;

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 404);
    assert_eq!(body["title"], "Not Found");
}

#[tokio::test]
async fn a_wrong_method_gets_a_json_405_problem() {
    let app = TestApp::spawn().await;

    let response = app
        .client
        .post(format!("{}/health/live", app.address))
        .send()
        .await
        .unwrap();

    assert_eq!(response.headers()["allow"], "GET");
    problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
}

/// The body of a problem response, after checking its content type and status.
async fn problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    body
}

#[tokio::test]
async fn a_body_with_a_wrong_field_gets_a_400_problem_naming_it() {
    let app = TestApp::spawn().await;

    let response = app
        .post_greeting("application/json", r#"{"name": 42}"#)
        .await;

    let body = problem(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["field"], "name");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("expected a string")
    );
}

#[tokio::test]
async fn a_body_without_a_required_field_gets_a_400_problem_naming_it() {
    let app = TestApp::spawn().await;

    let response = app.post_greeting("application/json", "{}").await;

    let body = problem(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["field"], "name");
}

#[tokio::test]
async fn malformed_json_gets_a_400_problem() {
    let app = TestApp::spawn().await;

    let response = app.post_greeting("application/json", "{\"name\":").await;

    problem(response, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn an_empty_name_gets_a_400_problem() {
    let app = TestApp::spawn().await;

    let response = app
        .post_greeting("application/json", r#"{"name": "  "}"#)
        .await;

    let body = problem(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["field"], "name");
}

#[tokio::test]
async fn a_body_that_is_not_json_gets_a_415_problem() {
    let app = TestApp::spawn().await;

    let response = app.post_greeting("text/plain", "Ada").await;

    problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_a_413_problem() {
    let app = TestApp::spawn().await;
    let name = "a".repeat(300 * 1024);

    let body = serde_json::json!({ "name": name }).to_string();

    let response = app.post_greeting("application/json", body).await;

    problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
}

#[tokio::test]
async fn the_openapi_document_lists_the_framework_and_service_endpoints() {
    let app = TestApp::spawn().await;

    let document: Value = app.get("/openapi.json").await.json().await.unwrap();

    assert_eq!(document["openapi"], "3.1.0");
    for path in [
        "/health/live",
        "/health/ready",
        "/metrics",
        "/greetings",
        "/greetings/stats",
    ] {
        assert!(document["paths"][path].is_object(), "{path} is documented");
    }
}

#[tokio::test]
async fn the_asyncapi_document_lists_every_handler_and_declared_publish() {
    let app = TestApp::spawn().await;

    let document: Value = app.get("/asyncapi.json").await.json().await.unwrap();

    assert_eq!(document["asyncapi"], "3.0.0");
    let operations = document["operations"].as_object().unwrap();
    let mut actions: Vec<(&str, &str)> = operations
        .iter()
        .map(|(id, operation)| (id.as_str(), operation["action"].as_str().unwrap()))
        .collect();
    actions.sort_unstable();
    let published = format!("publish.{}", GREETING_KEY);
    assert_eq!(
        actions,
        [
            ("GreetingService.greeting", "receive"),
            ("HelloService.hello", "receive"),
            ("HelloService.webhook", "receive"),
            (published.as_str(), "send"),
        ]
    );
}

#[tokio::test]
async fn swagger_ui_is_served_at_docs() {
    let app = TestApp::spawn().await;

    let page = app.get("/docs").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("/openapi.json"));
    let script = app.get("/docs/swagger-ui-bundle.js").await;
    assert_eq!(script.status(), StatusCode::OK);
}
