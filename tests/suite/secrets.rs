//! Secrets and labels of the default render's service: credentials pasted into URLs never
//! reach its output, and what clients send cannot grow its metrics without bound.
//!
//! The service's messaging points at a port where nothing listens: these tests are about
//! start-up, logs and HTTP, and leave nothing on the shared broker.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use template_tests::{ServiceProcess, free_port, run_with_timeout};

use crate::{DEFAULT_BINARY, observability::Scrape};

/// The passwords the tests put into URLs: none may appear in any output.
const PASSWORDS: [&str; 4] = ["hub-pw-1", "portal-pw-2", "otel-pw-3", "mq-pw-4"];

fn assert_no_password(output: &str) {
    for password in PASSWORDS {
        assert!(
            !output.contains(password),
            "{password} was printed:\n{output}"
        );
    }
}

/// Waits until the service has logged `text`; panics with the logs after 30 s.
async fn wait_for_log(service: &ServiceProcess, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !service.logs().contains(text) {
        assert!(
            Instant::now() < deadline,
            "{text:?} not logged within 30 s:\n{}",
            service.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn passwords_in_urls_never_reach_the_logs_of_a_running_service() {
    // Nothing listens there, so the exporter fails and says where it tried to export to.
    let collector = format!("http://otel-user:otel-pw-3@127.0.0.1:{}", free_port());
    let mut service = ServiceProcess::start(
        &DEFAULT_BINARY,
        &[
            ("PIPEFORCE_MESSAGING_PORT", "1"),
            ("PIPEFORCE_HUB_URL", "https://hub-user:hub-pw-1@hub.example"),
            (
                "PIPEFORCE_PORTAL_URL",
                "https://portal-user:portal-pw-2@portal.example",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    service
        .wait_for_status("/health/live", 200, Duration::from_secs(30))
        .await;
    // Probes make no span: a request to one of the service's own endpoints does.
    reqwest::get(format!("{}/greetings/stats", service.http))
        .await
        .expect("GET /greetings/stats");
    wait_for_log(&service, "cannot export traces").await;

    let logs = service.logs();
    assert!(
        logs.contains("hub_url=https://hub-user:***@hub.example/"),
        "{logs}"
    );
    assert!(logs.contains("http://otel-user:***@127.0.0.1:"), "{logs}");
    assert_no_password(&logs);
}

#[test]
fn passwords_in_invalid_urls_never_reach_the_start_up_error() {
    let output = run_with_timeout(
        std::process::Command::new(&*DEFAULT_BINARY)
            .env("PIPEFORCE_HUB_URL", "ftp://hub-user:hub-pw-1@hub.example")
            .env("PIPEFORCE_PORTAL_URL", "portal-user:portal-pw-2@portal")
            .env(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "otel-user:otel-pw-3@jaeger:4318",
            )
            .env(
                "PIPEFORCE_MESSAGING_ADDRESSES",
                "amqp://mq-user:mq-pw-4@rabbit:5672",
            ),
        Duration::from_secs(10),
    );

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = &output.stderr;
    assert!(
        stderr.contains("4 environment variables to fix"),
        "{stderr}"
    );
    assert!(
        stderr.contains("set PIPEFORCE_MESSAGING_USERNAME and PIPEFORCE_MESSAGING_PASSWORD"),
        "{stderr}"
    );
    assert!(
        stderr.contains("amqp://mq-user:***@rabbit:5672"),
        "{stderr}"
    );
    assert_no_password(&output.stdout);
    assert_no_password(stderr);
}

/// The label sets of the HTTP metrics on `/metrics`.
async fn http_series(service: &ServiceProcess) -> BTreeSet<String> {
    Scrape::of(&service.http)
        .await
        .label_sets("pipeforce_http_")
}

#[tokio::test]
async fn made_up_methods_and_paths_add_one_metric_series_each_at_most() {
    let mut service = ServiceProcess::start(&DEFAULT_BINARY, &[("PIPEFORCE_MESSAGING_PORT", "1")]);
    service
        .wait_for_status("/health/live", 200, Duration::from_secs(30))
        .await;
    // The first scrape's own series shows from the second one on.
    http_series(&service).await;
    let before = http_series(&service).await;

    let client = reqwest::Client::new();
    for n in 0..50 {
        let made_up = reqwest::Method::from_bytes(format!("MADEUP{n}").as_bytes()).unwrap();
        client
            .request(made_up, format!("{}/health/live", service.http))
            .send()
            .await
            .unwrap();
        client
            .get(format!("{}/made-up/{n}", service.http))
            .send()
            .await
            .unwrap();
    }

    let after = http_series(&service).await;
    let added: Vec<&String> = after.difference(&before).collect();
    // For the made-up methods one label set of the counter (with the status) and one of the
    // histogram, the same for the paths.
    assert!(
        added.len() <= 4,
        "{} label sets added:\n{added:#?}",
        added.len()
    );
}
