//! The service's HTTP surface, exercised on a real instance bound to a free local port. These
//! tests need no broker: messaging points at a port where nothing listens.

use pipeforce::testing::TestService;
use reqwest::StatusCode;
use serde_json::Value;

use {{crate_name}}::DEFAULTS;
use {{crate_name}}::service::{self, GREETING_KEY};

async fn spawn() -> TestService {
    TestService::spawn_without_broker(DEFAULTS, service::register).await
}

/// `POST /greetings` with this content type and body, as it is (not necessarily JSON).
async fn post_greeting(
    service: &TestService,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    service
        .client
        .post(service.url("/greetings"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request is sent")
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
async fn liveness_answers_200() {
    let service = spawn().await;

    let response = service.get("/health/live").await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "UP");
}

#[tokio::test]
async fn readiness_answers_503_while_the_broker_is_unreachable() {
    let service = spawn().await;

    let response = service.get("/health/ready").await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "DOWN");
    assert_eq!(body["checks"]["messaging"], "DOWN");
}

#[tokio::test]
async fn an_unknown_path_gets_a_json_404_problem() {
    let service = spawn().await;

    let response = service.get("/no/such/path").await;

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
    let service = spawn().await;

    let response = service
        .client
        .post(service.url("/health/live"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.headers()["allow"], "GET");
    problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
}

#[tokio::test]
async fn a_body_with_a_wrong_field_gets_a_400_problem_naming_it() {
    let service = spawn().await;

    let response = post_greeting(&service, "application/json", r#"{"name": 42}"#).await;

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
    let service = spawn().await;

    let response = post_greeting(&service, "application/json", "{}").await;

    let body = problem(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["field"], "name");
}

#[tokio::test]
async fn malformed_json_gets_a_400_problem() {
    let service = spawn().await;

    let response = post_greeting(&service, "application/json", "{\"name\":").await;

    problem(response, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn an_empty_name_gets_a_400_problem() {
    let service = spawn().await;

    let response = post_greeting(&service, "application/json", r#"{"name": "  "}"#).await;

    let body = problem(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["field"], "name");
}

#[tokio::test]
async fn a_body_that_is_not_json_gets_a_415_problem() {
    let service = spawn().await;

    let response = post_greeting(&service, "text/plain", "Ada").await;

    problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_a_413_problem() {
    let service = spawn().await;
    let name = "a".repeat(300 * 1024);

    let body = serde_json::json!({ "name": name }).to_string();

    let response = post_greeting(&service, "application/json", body).await;

    problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
}

#[tokio::test]
async fn the_openapi_document_lists_the_framework_and_service_endpoints() {
    let service = spawn().await;

    let document: Value = service.get("/openapi.json").await.json().await.unwrap();

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
    let service = spawn().await;

    let document: Value = service.get("/asyncapi.json").await.json().await.unwrap();

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
    let service = spawn().await;

    let page = service.get("/docs").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("/openapi.json"));
    let script = service.get("/docs/swagger-ui-bundle.js").await;
    assert_eq!(script.status(), StatusCode::OK);
}
