//! The local loop and the repository a user pushes: text logs are coloured only on a
//! terminal, `compose.yaml` and `.env.example` start what the service talks to and agree with
//! it, and Dependabot watches every kind of dependency the project has.
//!
//! No container image can be pulled here, so the compose file is checked against the Compose
//! specification's JSON schema, and its ports and `.env.example`'s values against what the
//! rendered service itself reads: its effective configuration, and spans arriving at the
//! in-test OTLP receiver. The schemas are kept in `tests/fixtures` (see its README); YAML is
//! read and validated with Python's `pyyaml` and `jsonschema`, which `ci/test` installs.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use template_tests::{
    Output, ServiceProcess,
    amqp::{Broker, Names},
    otlp::OtlpReceiver,
    repo_root, run, run_with_timeout,
};

use crate::{DEFAULT_BINARY, DEFAULT_RENDER};

const ESC: char = '\u{1b}';

/// An address no interface of this machine has (TEST-NET-1): binding the HTTP server to it
/// fails right after the service has logged its effective configuration, so the service
/// exits by itself without a broker, a port or a signal.
const UNBINDABLE_HOST: &str = "192.0.2.1";

/// Runs `program` (the rendered service, or a program that runs it) with text logs, until the
/// service exits because it cannot bind its HTTP address.
fn run_until_bind_fails(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_remove("NO_COLOR")
        .env("PIPEFORCE_LOG_FORMAT", "text")
        .env("PIPEFORCE_HTTP_HOST", UNBINDABLE_HOST)
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = run_with_timeout(&mut command, Duration::from_secs(60));
    assert!(
        !output.status.success(),
        "the service should fail to bind {UNBINDABLE_HOST}:\n{}\n{}",
        output.stdout,
        output.stderr
    );
    output
}

#[test]
fn text_logs_written_to_a_pipe_carry_no_colour_codes() {
    let binary = DEFAULT_BINARY.display().to_string();

    let output = run_until_bind_fails(&binary, &[], &[]);

    assert!(
        output.stderr.contains("effective configuration"),
        "{}",
        output.stderr
    );
    assert!(
        !output.stderr.contains(ESC),
        "stderr is a pipe, yet the log carries ANSI escape codes:\n{:?}",
        output.stderr
    );
}

/// `script` runs the service on a pseudo-terminal and copies what it prints to its stdout.
fn run_on_a_terminal(no_color: Option<&str>) -> String {
    let binary = DEFAULT_BINARY.display().to_string();
    let env: Vec<(&str, &str)> = no_color
        .map(|value| ("NO_COLOR", value))
        .into_iter()
        .collect();
    let output = run_until_bind_fails(
        "script",
        &["--quiet", "--return", "--command", &binary, "/dev/null"],
        &env,
    );
    assert!(
        output.stdout.contains("effective configuration"),
        "script should copy the terminal's output:\n{}\n{}",
        output.stdout,
        output.stderr
    );
    output.stdout
}

#[test]
fn text_logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    assert!(
        run_on_a_terminal(None).contains(ESC),
        "a terminal gets colour"
    );
    assert!(
        run_on_a_terminal(Some("")).contains(ESC),
        "an empty NO_COLOR does not count (https://no-color.org)"
    );
    let plain = run_on_a_terminal(Some("1"));
    assert!(!plain.contains(ESC), "NO_COLOR=1 is honoured:\n{plain:?}");
}

/// A YAML file of the render, as JSON.
fn yaml(relative: &str) -> Value {
    let output = run(Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\njson.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(DEFAULT_RENDER.dir.join(relative)));
    output.assert_success(&format!(
        "python3 with pyyaml (ci/test installs it) reading {relative}"
    ));
    serde_json::from_str(&output.stdout).expect("python printed JSON")
}

/// The errors of `document` against the JSON schema `fixture` (draft 7), one per line.
fn schema_errors(document: &Value, fixture: &str) -> Vec<String> {
    let schema = repo_root().join("tests/fixtures").join(fixture);
    let mut command = Command::new("python3");
    command
        .args([
            "-c",
            "import json, sys, jsonschema\n\
             schema = json.load(open(sys.argv[1]))\n\
             document = json.loads(sys.argv[2])\n\
             for error in jsonschema.Draft7Validator(schema).iter_errors(document):\n    \
                 print('/'.join(map(str, error.absolute_path)) + ': ' + error.message)",
        ])
        .arg(schema)
        .arg(document.to_string());
    let output = run(&mut command);
    output.assert_success("python3 with jsonschema (ci/test installs it)");
    output.stdout.lines().map(str::to_owned).collect()
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let compose = yaml("compose.yaml");

    let errors = schema_errors(&compose, "compose-spec.schema.json");

    assert!(errors.is_empty(), "compose.yaml:\n{}", errors.join("\n"));
    // The schema is really applied: a port of the wrong type is caught.
    let mut broken = compose.clone();
    broken["services"]["rabbitmq"]["ports"] = Value::from(5672);
    assert!(
        !schema_errors(&broken, "compose-spec.schema.json").is_empty(),
        "the schema should reject ports: 5672"
    );
}

/// The variables of `.env.example`: `NAME=value` lines, comments and blank lines skipped.
fn env_example() -> Vec<(String, String)> {
    DEFAULT_RENDER
        .read(".env.example")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!(".env.example: not NAME=value: {line}"));
            // Shells and Compose quote differently: plain values read the same in both.
            assert!(
                !value.contains(['"', '\'', ' ', '$']),
                ".env.example: {name} needs quoting, which shells and Compose read differently"
            );
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// Host port → container port of every port a compose service publishes.
fn published_ports(compose: &Value, service: &str) -> BTreeMap<u16, u16> {
    let ports = compose["services"][service]["ports"]
        .as_array()
        .unwrap_or_else(|| panic!("compose.yaml: {service} publishes no ports"));
    ports
        .iter()
        .map(|port| {
            let text = port
                .as_str()
                .expect("ports written as \"host:container\" text");
            let parts: Vec<&str> = text.split(':').collect();
            assert_eq!(
                parts.first(),
                Some(&"127.0.0.1"),
                "{service} publishes {text} beyond this machine: the broker's guest login with it"
            );
            let number = |part: &str| part.parse().unwrap_or_else(|_| panic!("port in {text}"));
            (number(parts[1]), number(parts[2]))
        })
        .collect()
}

/// The service's effective configuration, as it logs it at start, when `env` is all its
/// environment.
fn effective_configuration(env: &[(String, String)]) -> String {
    let mut command = Command::new(&*DEFAULT_BINARY);
    command
        .env_clear()
        .envs(env.iter().map(|(name, value)| (name, value)))
        .env("PIPEFORCE_HTTP_HOST", UNBINDABLE_HOST)
        .stdin(Stdio::null());
    let output = run_with_timeout(&mut command, Duration::from_secs(60));
    let marker = "effective configuration config=";
    output
        .stderr
        .lines()
        .find_map(|line| line.split_once(marker).map(|(_, config)| config.to_owned()))
        .unwrap_or_else(|| panic!("no effective configuration logged:\n{}", output.stderr))
}

#[test]
fn the_env_example_spells_out_the_services_defaults_and_the_composed_ports() {
    let compose = yaml("compose.yaml");
    let env = env_example();
    let value = |name: &str| {
        env.iter()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or_else(|| panic!(".env.example lacks {name}"))
    };
    let (exporting, defaults): (Vec<_>, Vec<_>) = env
        .iter()
        .cloned()
        .partition(|(name, _)| name.starts_with("OTEL_"));

    // Everything but the trace export is the service's own default, written out.
    assert_eq!(
        effective_configuration(&defaults),
        effective_configuration(&[]),
        ".env.example should only spell out defaults, besides the OTEL_ variables"
    );
    assert!(!exporting.is_empty(), ".env.example should export traces");

    // RabbitMQ: AMQP where the service connects, and the management UI.
    let rabbitmq = published_ports(&compose, "rabbitmq");
    let amqp_port: u16 = value("PIPEFORCE_MESSAGING_PORT").parse().expect("a port");
    assert_eq!(
        rabbitmq.get(&amqp_port),
        Some(&5672),
        "AMQP published on {amqp_port}"
    );
    assert_eq!(value("PIPEFORCE_MESSAGING_HOST"), "localhost");
    assert_eq!(rabbitmq.get(&15672), Some(&15672), "the management UI");
    assert!(
        compose["services"]["rabbitmq"]["image"]
            .as_str()
            .is_some_and(|image| image.contains("management")),
        "the management UI comes with RabbitMQ's -management image"
    );

    // Jaeger: the OTLP port the service sends to, for the protocol it speaks, and the UI.
    let jaeger = published_ports(&compose, "jaeger");
    let endpoint = url_port(value("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let otlp_port_in_jaeger = match value("OTEL_EXPORTER_OTLP_PROTOCOL") {
        "grpc" => 4317,
        "http/protobuf" | "http/json" => 4318,
        other => panic!("OTEL_EXPORTER_OTLP_PROTOCOL={other}"),
    };
    assert_eq!(
        jaeger.get(&endpoint),
        Some(&otlp_port_in_jaeger),
        "the OTLP endpoint's port reaches Jaeger's receiver for its protocol"
    );
    assert_eq!(jaeger.get(&16686), Some(&16686), "Jaeger's UI");
}

/// The port of an `http://host:port` URL.
fn url_port(url: &str) -> u16 {
    url.trim_end_matches('/')
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// Removes a test's queues and exchange from the shared broker, even when the test fails.
struct OnTheBroker(Names);

impl Drop for OnTheBroker {
    fn drop(&mut self) {
        let names = self.0.clone();
        // Drop cannot await, and runs inside the test's runtime: use a thread of its own.
        let cleanup = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async { Broker::connect().await.delete(&names).await });
        });
        let _ = cleanup.join();
    }
}

#[tokio::test]
async fn the_env_example_starts_a_service_whose_traces_reach_the_otlp_receiver() {
    // The .env.example values, with the OTLP endpoint's port moved to the in-test receiver
    // (Jaeger cannot run here), the HTTP port left to the test's process helper, and the
    // service's names made unique on the shared broker.
    let receiver = OtlpReceiver::start().await;
    let names = OnTheBroker(Names::unique());
    let receiver_port = url_port(&receiver.endpoint());
    let mut env: Vec<(String, String)> = env_example()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("PIPEFORCE_HTTP_"))
        .map(|(name, value)| match name.as_str() {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => {
                let port = url_port(&value);
                let moved = value.replace(&format!(":{port}"), &format!(":{receiver_port}"));
                (name, moved)
            }
            _ => (name, value),
        })
        .collect();
    env.extend(
        names
            .0
            .env()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value)),
    );
    env.push(("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()));
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();

    let mut service = ServiceProcess::start(&DEFAULT_BINARY, &env);
    service
        .wait_for_status("/health/ready", 200, Duration::from_secs(30))
        .await;
    let greeted = reqwest::Client::new()
        .post(format!("{}/greetings", service.http))
        .json(&serde_json::json!({ "name": "Ada" }))
        .send()
        .await
        .expect("POST /greetings");
    assert!(greeted.status().is_success(), "{}", service.logs());

    let span = receiver
        .wait_for(
            "of the greeting request",
            |span| span.name == "POST /greetings",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(span.name, "POST /greetings");
}

#[test]
fn dependabot_watches_cargo_actions_and_docker_images_where_they_are() {
    let dependabot = yaml(".github/dependabot.yml");

    let errors = schema_errors(&dependabot, "dependabot-2.0.schema.json");

    assert!(errors.is_empty(), "dependabot.yml:\n{}", errors.join("\n"));
    let updates = dependabot["updates"].as_array().expect("updates");
    let project = &DEFAULT_RENDER.dir;
    // What each ecosystem reads in a directory it is pointed at.
    let manifests = [
        ("cargo", "Cargo.toml"),
        ("github-actions", ".github/workflows"),
        ("docker", "Dockerfile"),
        ("docker-compose", "compose.yaml"),
    ];
    for (ecosystem, manifest) in manifests {
        let update = updates
            .iter()
            .find(|update| update["package-ecosystem"] == ecosystem)
            .unwrap_or_else(|| panic!("dependabot.yml has no {ecosystem} entry"));
        let directory = update["directory"]
            .as_str()
            .unwrap_or_else(|| panic!("{ecosystem}: one directory"));
        let dir = project.join(directory.trim_start_matches('/'));
        assert!(
            dir.join(manifest).exists(),
            "{ecosystem}: {directory} holds no {manifest}"
        );
        assert_eq!(update["schedule"]["interval"], "weekly", "{ecosystem}");
    }
}

#[test]
fn the_readme_runs_it_locally_with_the_compose_file_and_the_env_example() {
    let readme = DEFAULT_RENDER.read("README.md");
    let local = readme
        .split("## Run it locally")
        .nth(1)
        .and_then(|section| section.split("\n## ").next())
        .expect("a section \"Run it locally\"");

    for step in [
        "docker compose up",
        ".env.example",
        "cargo run",
        "16686",
        "15672",
    ] {
        assert!(local.contains(step), "\"Run it locally\" lacks {step}");
    }
    assert!(
        readme.contains("Renovate"),
        "GitLab users are told what replaces Dependabot"
    );
}
