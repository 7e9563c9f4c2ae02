//! The service's HTTP surface, exercised on a real instance bound to a free local port. These
//! tests need no broker: messaging points at a port where nothing listens.

use pipeforce::{App, Config};
use reqwest::StatusCode;
use serde_json::Value;

use {{crate_name}}::{DEFAULTS, service};

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

    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 405);
}
