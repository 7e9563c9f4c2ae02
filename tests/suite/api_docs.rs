//! The HTTP API of a rendered service: its OpenAPI and AsyncAPI documents are valid and true to
//! the code, schemathesis finds nothing wrong, and client errors are JSON problem documents.
//!
//! Validation uses Python tools that `ci/test` installs: `jsonschema` with the AsyncAPI 3.0
//! JSON schema of `@asyncapi/specs` (kept in `tests/fixtures`), `openapi-spec-validator` and
//! `schemathesis`.

use std::{collections::BTreeSet, process::Command};

use reqwest::StatusCode;
use serde_json::Value;
use template_tests::{repo_root, run};

use crate::{DEFAULT_BINARY, probe::Scenario};

pub(crate) async fn document(http: &str, path: &str) -> Value {
    reqwest::get(format!("{http}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Validates `document` against the AsyncAPI 3.0 JSON schema; the errors, if any.
pub(crate) fn asyncapi_errors(document: &Value) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), document.to_string()).unwrap();
    let schema = repo_root().join("tests/fixtures/asyncapi-3.0.0.schema.json");
    let output = run(Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys, jsonschema\n\
         schema = json.load(open(sys.argv[1]))\n\
         document = json.load(open(sys.argv[2]))\n\
         for error in jsonschema.Draft7Validator(schema).iter_errors(document):\n    \
             print(list(error.path), error.message[:300])\n",
        )
        .arg(schema)
        .arg(file.path()));
    assert!(
        output.status.success(),
        "python3 with jsonschema (ci/test installs it): {}",
        output.stderr
    );
    output.stdout
}

fn operations(document: &Value) -> BTreeSet<(String, String)> {
    document["operations"]
        .as_object()
        .expect("operations")
        .iter()
        .map(|(id, operation)| (id.clone(), operation["action"].as_str().unwrap().to_owned()))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(id, action)| ((*id).to_owned(), (*action).to_owned()))
        .collect()
}

#[tokio::test]
async fn the_asyncapi_document_is_valid_and_lists_exactly_the_registered_handlers() {
    let scenario = Scenario::new(&[]).await;
    let service = scenario.start_binary(&DEFAULT_BINARY).await;

    let document = document(&service.http, "/asyncapi.json").await;

    assert_eq!(asyncapi_errors(&document), "", "valid AsyncAPI 3.0");
    assert_eq!(
        operations(&document),
        pairs(&[
            ("GreetingService.greeting", "receive"),
            ("HelloService.hello", "receive"),
            ("HelloService.webhook", "receive"),
            ("publish.orders.greeting", "send"),
        ])
    );
    let greeting = &document["channels"]["GreetingService.greeting"];
    assert_eq!(greeting["address"], "orders.greeting");
    assert_eq!(
        greeting["bindings"]["amqp"]["exchange"]["name"],
        scenario.names.exchange.as_str()
    );
    let payload = &document["components"]["schemas"]["Greeting"];
    assert_eq!(
        payload["required"],
        serde_json::json!(["name"]),
        "{payload}"
    );
}

#[tokio::test]
async fn a_second_service_shows_up_in_the_asyncapi_document() {
    let scenario = Scenario::new(&[]).await;
    let service = scenario.start().await;

    let document = document(&service.http, "/asyncapi.json").await;

    assert_eq!(asyncapi_errors(&document), "", "valid AsyncAPI 3.0");
    let ids = operations(&document);
    for handler in [
        "ProbeService.ok",
        "ProbeService.fail",
        "ProbeService.panics",
        "ProbeService.relay",
        "ProbeService.hub_call",
        "GreetingService.greeting",
        "HelloService.webhook",
    ] {
        assert!(
            ids.contains(&(handler.to_owned(), "receive".to_owned())),
            "{handler} in {ids:?}"
        );
    }
    assert_eq!(
        document["channels"]["ProbeService.multi_one"]["address"],
        "probe.multi.*"
    );
}

#[tokio::test]
async fn the_openapi_document_is_valid_openapi_3_1() {
    let scenario = Scenario::new(&[]).await;
    let service = scenario.start_binary(&DEFAULT_BINARY).await;

    let document = document(&service.http, "/openapi.json").await;

    assert_eq!(document["openapi"], "3.1.0");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), document.to_string()).unwrap();
    run(Command::new("python3")
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))\n",
        ])
        .arg(file.path()))
    .assert_success("openapi-spec-validator (ci/test installs it)");
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let scenario = Scenario::new(&[]).await;
    let service = scenario.start_binary(&DEFAULT_BINARY).await;

    let output = tokio::task::spawn_blocking({
        let url = format!("{}/openapi.json", service.http);
        move || {
            run(Command::new("schemathesis").args([
                "run",
                &url,
                "--checks",
                "all",
                "--max-examples",
                "100",
                "--generation-deterministic",
                "--request-timeout",
                "10",
            ]))
        }
    })
    .await
    .unwrap();

    assert!(
        output.status.success(),
        "schemathesis (ci/test installs it) found problems:\n{}\n{}",
        output.stdout,
        output.stderr
    );
    assert!(
        output.stdout.contains("No issues found"),
        "{}",
        output.stdout
    );
}

#[tokio::test]
async fn client_errors_are_json_problem_documents_with_their_status() {
    let scenario = Scenario::new(&[]).await;
    let service = scenario.start_binary(&DEFAULT_BINARY).await;
    let client = reqwest::Client::new();
    let greetings = format!("{}/greetings", service.http);
    // 413 is `http_abuse`'s: a client that sends a whole oversized body may see the
    // connection close before it reads the answer, a race this table should not run.

    let cases = [
        (
            client
                .post(&greetings)
                .header("content-type", "application/json")
                .body(r#"{"name": true}"#),
            StatusCode::BAD_REQUEST,
            "body field `name`",
        ),
        (
            client.get(format!("{}/nowhere", service.http)),
            StatusCode::NOT_FOUND,
            "no resource",
        ),
        (
            client.delete(&greetings),
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST",
        ),
        (
            client
                .post(&greetings)
                .header("content-type", "text/csv")
                .body("name\nAda"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "must be JSON",
        ),
    ];
    for (request, status, detail) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{status}"
        );
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert_eq!(response.headers()["allow"], "POST");
        }
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], status.as_u16());
        assert!(
            body["detail"].as_str().unwrap().contains(detail),
            "{status}: {body}"
        );
    }
}
