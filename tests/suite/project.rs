//! The default render as a project: style, lints, its own tests, and the service binary.
//!
//! The processes started here point messaging at a port where nothing listens: these tests
//! are about start-up, HTTP and shutdown, and must leave nothing on the shared broker.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use template_tests::{ServiceProcess, run_with_timeout, shared_target_dir, shared_target_lock};

use crate::{DEFAULT_BINARY, DEFAULT_RENDER};

/// Messaging pointed at a port where nothing listens.
const NO_BROKER: &[(&str, &str)] = &[("PIPEFORCE_MESSAGING_PORT", "1")];

#[test]
fn the_rendered_project_is_formatted() {
    DEFAULT_RENDER
        .cargo(&["fmt", "--all", "--check"])
        .assert_success("cargo fmt --check");
}

#[test]
fn the_rendered_project_is_clippy_clean() {
    DEFAULT_RENDER
        .cargo(&[
            "clippy",
            "--locked",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .assert_success("cargo clippy -D warnings");
}

#[test]
fn the_rendered_project_passes_its_own_tests() {
    let output = DEFAULT_RENDER.cargo(&["test", "--locked"]);
    output.assert_success("cargo test");
    assert!(
        output.stdout.contains("test result: ok"),
        "no test ran:\n{}",
        output.stdout
    );
}

/// The first example a newcomer reads is the README's "Write a service" snippet, and it is the
/// file that compiles (the project's own tests build it): the two cannot drift apart.
#[test]
fn the_first_example_is_the_readme_snippet_and_reads_in_a_minute() {
    let readme = DEFAULT_RENDER.read("README.md");
    let hello = DEFAULT_RENDER.read("src/service/hello.rs");

    let snippet = first_rust_block_of_section(&readme, "## Write a service");

    assert_eq!(
        snippet, hello,
        "the README's \"Write a service\" snippet and src/service/hello.rs differ"
    );
    let lines = hello.lines().count();
    assert!(
        lines <= 40,
        "src/service/hello.rs has {lines} lines, more than 40"
    );
}

/// The body of the first ```` ```rust ```` block after the heading `section` in `markdown`.
fn first_rust_block_of_section(markdown: &str, section: &str) -> String {
    let (_, after_heading) = markdown
        .split_once(&format!("\n{section}\n"))
        .unwrap_or_else(|| panic!("the README has no section {section:?}"));
    let (_, block) = after_heading
        .split_once("```rust\n")
        .unwrap_or_else(|| panic!("{section:?} has no ```rust block"));
    let (body, _) = block
        .split_once("\n```\n")
        .unwrap_or_else(|| panic!("the ```rust block of {section:?} is not closed"));
    format!("{body}\n")
}

#[tokio::test]
async fn the_service_starts_answers_liveness_and_stops_cleanly_on_sigterm() {
    let mut service = ServiceProcess::start(&DEFAULT_BINARY, NO_BROKER);
    service
        .wait_for_status("/health/live", 200, Duration::from_secs(30))
        .await;

    service.signal(Signal::SIGTERM);
    let asked = Instant::now();
    let status = service.wait_for_exit(Duration::from_secs(5)).await;

    let logs = service.logs();
    let status = status.unwrap_or_else(|| panic!("still running 5 s after SIGTERM:\n{logs}"));
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert!(logs.contains("received SIGTERM"), "{logs}");
}

#[tokio::test]
async fn the_service_stops_cleanly_on_sigint() {
    let mut service = ServiceProcess::start(&DEFAULT_BINARY, NO_BROKER);
    service
        .wait_for_status("/health/live", 200, Duration::from_secs(30))
        .await;

    service.signal(Signal::SIGINT);

    let status = service.wait_for_exit(Duration::from_secs(5)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", service.logs());
}

#[test]
fn an_invalid_variable_stops_start_up_with_a_message_naming_it() {
    let output = run_with_timeout(
        std::process::Command::new(&*DEFAULT_BINARY)
            .env("PIPEFORCE_HTTP_PORT", "abc")
            .env("PIPEFORCE_MESSAGING_PORT", "")
            .env("PIPEFORCE_HUB_URL", "not a url")
            .env("RUST_BACKTRACE", "1"),
        Duration::from_secs(10),
    );

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = &output.stderr;
    assert!(
        stderr.contains("3 environment variables to fix"),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"PIPEFORCE_HTTP_PORT: expected a port number"#),
        "{stderr}"
    );
    assert!(stderr.contains(r#"got "abc""#), "{stderr}");
    assert!(stderr.contains("PIPEFORCE_MESSAGING_PORT"), "{stderr}");
    assert!(stderr.contains("PIPEFORCE_HUB_URL"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
}

/// `cargo run`, as the README and `ci/demo` say, starts the service, not the deploy tool.
#[test]
fn cargo_run_starts_the_service() {
    let project = &DEFAULT_RENDER.dir;
    let _alone = shared_target_lock();
    let output = run_with_timeout(
        std::process::Command::new("cargo")
            .current_dir(project)
            .env("CARGO_TARGET_DIR", shared_target_dir())
            .env("PIPEFORCE_HTTP_PORT", "abc")
            .args(["run", "--locked", "--quiet"]),
        Duration::from_secs(1200),
    );

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        output
            .stderr
            .contains("PIPEFORCE_HTTP_PORT: expected a port number"),
        "{}",
        output.stderr
    );
}

#[test]
fn unknown_pipeforce_variables_do_not_break_start_up() {
    let output = run_with_timeout(
        std::process::Command::new(&*DEFAULT_BINARY)
            .env("PIPEFORCE_SOMETHING_NEW", "x")
            .env("PIPEFORCE_HTTP_PORT", "abc"),
        Duration::from_secs(10),
    );

    // Only the bad port is reported.
    assert!(
        output.stderr.contains("1 environment variable to fix"),
        "{output:?}"
    );
}

#[tokio::test]
async fn the_effective_configuration_is_logged_with_secrets_masked() {
    let mut service = ServiceProcess::start(
        &DEFAULT_BINARY,
        &[
            ("PIPEFORCE_MESSAGING_PORT", "1"),
            ("PIPEFORCE_MESSAGING_PASSWORD", "hunter2-password"),
            ("PIPEFORCE_SECRET", "Bearer hunter2-token"),
        ],
    );
    service
        .wait_for_status("/health/live", 200, Duration::from_secs(30))
        .await;

    let logs = service.logs();
    assert!(logs.contains("effective configuration"), "{logs}");
    assert!(logs.contains("messaging_password=***"), "{logs}");
    assert!(logs.contains("hub_secret=Bearer ***"), "{logs}");
    assert!(!logs.contains("hunter2"), "{logs}");
}

#[test]
fn a_taken_port_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();

    let output = run_with_timeout(
        std::process::Command::new(&*DEFAULT_BINARY)
            .env("PIPEFORCE_HTTP_HOST", "127.0.0.1")
            .env("PIPEFORCE_HTTP_PORT", &port),
        Duration::from_secs(10),
    );

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        output
            .stderr
            .contains(&format!("cannot listen for HTTP on 127.0.0.1:{port}")),
        "{}",
        output.stderr
    );
    assert!(output.stderr.contains("caused by"), "{}", output.stderr);
}

/// The gRPC exporter is behind the `otlp-grpc` feature, off in a render: a service configured
/// for gRPC says what to do instead of starting without traces.
#[test]
fn otlp_over_grpc_without_the_feature_stops_start_up_naming_variable_and_feature() {
    for variable in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        let output = run_with_timeout(
            std::process::Command::new(&*DEFAULT_BINARY)
                .env("PIPEFORCE_HTTP_HOST", "127.0.0.1")
                .env("PIPEFORCE_HTTP_PORT", "0")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
                .env(variable, "grpc"),
            Duration::from_secs(10),
        );

        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = &output.stderr;
        assert!(stderr.contains(&format!("{variable}=grpc")), "{stderr}");
        assert!(stderr.contains("`otlp-grpc` feature"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Licenses, duplicate crate versions and sources, as `deny.toml` sets them. Advisories need
/// the RustSec database from GitHub, out of reach here: the rendered CI checks them.
#[test]
fn the_rendered_project_passes_cargo_deny() {
    DEFAULT_RENDER
        .cargo(&["deny", "--locked", "check", "licenses", "bans", "sources"])
        .assert_success("cargo deny check licenses bans sources (ci/test installs cargo-deny)");
}
