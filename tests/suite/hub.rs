//! The hub client and the `deploy` command of a rendered project, against a fake hub.
//!
//! The hub is the one part of PIPEFORCE the suite may fake: every test starts a wiremock
//! server that follows the contract of `PIPEFORCE.md` and checks each call (method, path,
//! `Authorization`, `Content-Type`, body). One render (`hubsvc`, own registry and port) is
//! built once with its `deploy` binary and a probe example that this file adds to it
//! (`tests/fixtures/hub_probe.rs`), which drives the parts of `pipeforce::hub` that `deploy`
//! does not use. Both run as processes, like a user runs them.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::LazyLock,
    time::Duration,
};

use serde_json::{Value, json};
use template_tests::{
    Output, Render, Rendered, free_port, is_dns_label, repo_root, run, shared_target_dir,
    shared_target_lock,
};
use wiremock::{
    Mock, MockServer, Request, ResponseTemplate,
    matchers::{body_json, body_partial_json, body_string, header, method, path, query_param},
};

/// The image the render deploys: `<registry>/<service>`.
const IMAGE: &str = "registry.example.com/team/hubsvc";

/// The render's HTTP port (not the default, so the test sees the answer reach `deploy`).
const HTTP_PORT: u16 = 9091;

/// The credentials most tests use.
const TOKEN: &str = "suite-token-7f3a9c";

/// The render, and its `deploy` and probe binaries, built once.
struct HubProject {
    deploy: PathBuf,
    probe: PathBuf,
    rendered: Rendered,
}

static HUB_PROJECT: LazyLock<HubProject> = LazyLock::new(|| {
    let rendered = Render::new("hubsvc")
        .define("registry", "registry.example.com/team")
        .define("http_port", &HTTP_PORT.to_string())
        .run()
        .unwrap_or_else(|failure| panic!("render failed:\n{}", failure.output));

    // The probe is an example of the service, a name no other render builds, so it can stay
    // in the shared target dir (`examples/` is where a project keeps such programs).
    std::fs::copy(
        repo_root().join("tests/fixtures/hub_probe.rs"),
        rendered.dir.join("examples/hub_probe.rs"),
    )
    .expect("copy the hub probe into the render");
    rendered
        .cargo(&["build", "--locked", "--example", "hub_probe"])
        .assert_success("cargo build of the hub probe");
    let probe = shared_target_dir().join("debug/examples/hub_probe");

    // Every render has a `deploy` binary, and all of them would land on one path of the shared
    // target dir: this one gets a target dir of its own. The deploy package builds only the
    // hub client, so that costs little.
    let deploy_target = shared_target_dir().join("hub-deploy");
    // Not the shared target dir, but a build all the same: the tests that measure (chaos,
    // cluster) hold the lock to keep builds off the CPU.
    let building = shared_target_lock();
    run(Command::new("cargo")
        .current_dir(&rendered.dir)
        .env("CARGO_TARGET_DIR", &deploy_target)
        .args([
            "build",
            "--locked",
            "-p",
            "hubsvc-deploy",
            "--bin",
            "deploy",
        ]))
    .assert_success("cargo build of deploy");
    drop(building);
    HubProject {
        deploy: deploy_target.join("debug/deploy"),
        probe,
        rendered,
    }
});

/// One run of `deploy` or the probe, with the environment of a service talking to `hub`.
struct Run {
    command: tokio::process::Command,
}

impl Run {
    fn deploy(hub: &str) -> Self {
        Self::new(&HUB_PROJECT.deploy, hub)
    }

    fn probe(hub: &str) -> Self {
        Self::new(&HUB_PROJECT.probe, hub)
    }

    fn new(program: &Path, hub: &str) -> Self {
        let mut command = tokio::process::Command::new(program);
        command
            .env("PIPEFORCE_HUB_URL", hub)
            .env("PIPEFORCE_SECRET", format!("Bearer {TOKEN}"))
            .env("PIPEFORCE_SERVICE", "hubsvc")
            .env("PIPEFORCE_NAMESPACE", "acme")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("IMAGE_TAG")
            .env_remove("PIPEFORCE_MESSAGING_USERNAME")
            .env_remove("PIPEFORCE_MESSAGING_PASSWORD")
            .env_remove("PIPEFORCE_IMAGE_PULL_SECRET")
            .env_remove("PIPEFORCE_SERVICE_URL")
            .env_remove("PIPEFORCE_HUB_TIMEOUT_SECS")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        Self { command }
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.command.env(key, value);
        self
    }

    fn env_remove(mut self, key: &str) -> Self {
        self.command.env_remove(key);
        self
    }

    /// Runs with `args` and waits for the exit (at most 30 s).
    async fn args(mut self, args: &[&str]) -> Output {
        let output =
            tokio::time::timeout(Duration::from_secs(30), self.command.args(args).output())
                .await
                .unwrap_or_else(|_| panic!("{:?} did not finish within 30 s", self.command))
                .expect("the program runs");
        Output {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// The retries the hub client logged.
fn retries_logged(output: &Output) -> usize {
    output
        .stderr
        .lines()
        .filter(|line| line.contains("retrying"))
        .count()
}

/// Asserts that nothing the program printed holds `secret`.
fn assert_not_shown(output: &Output, secret: &str) {
    assert!(
        !output.stdout.contains(secret) && !output.stderr.contains(secret),
        "the secret was printed: {output:?}"
    );
}

fn json_body(request: &Request) -> Value {
    serde_json::from_slice(&request.body).expect("a JSON body")
}

/// The requests the hub received for `command`.
async fn calls_of(hub: &MockServer, command: &str) -> Vec<Request> {
    let wanted = format!("/api/v3/command:{command}");
    hub.received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|request| request.url.path() == wanted)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// deploy service

/// The deploy tool is the framework's (`crates/pipeforce-deploy`): the project keeps only a
/// main that names what it deploys, outside the user's `src/`.
#[test]
fn the_project_keeps_only_a_short_deploy_main_naming_its_image() {
    let dir = &HUB_PROJECT.rendered.dir;
    let main = std::fs::read_to_string(dir.join("deploy/src/main.rs")).expect("deploy's main");

    assert!(main.lines().count() <= 15, "{main}");
    assert!(main.contains(&format!("image: \"{IMAGE}\"")), "{main}");
    assert!(main.contains(&format!("http_port: {HTTP_PORT}")), "{main}");
    assert!(
        !dir.join("src/bin").exists(),
        "src/ holds only the user's code"
    );
}

#[tokio::test]
async fn deploy_service_starts_the_service_with_name_image_port_ingress_replicas_and_env() {
    // Arrange
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:service.start"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "name": "hubsvc",
            "image": format!("{IMAGE}:v1.2.3"),
            "port": HTTP_PORT,
            "ingress": "hubsvc",
            "replicas": 3,
            "env": { "FEATURE": "on", "DB_PASSWORD": "pa=ss" },
            // A re-deploy of a moving tag pulls what was pushed last.
            "imagePullPolicy": "Always",
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "status": "deployed" })))
        .expect(1)
        .mount(&hub)
        .await;

    // Act
    let output = Run::deploy(&hub.uri())
        .args(&[
            "service",
            "--tag",
            "v1.2.3",
            "--replicas=3",
            "--env",
            "FEATURE=on",
            "--env",
            "DB_PASSWORD=pa=ss",
        ])
        .await;

    // Assert
    output.assert_success("deploy service");
    assert!(output.stdout.contains("deployed"), "{output:?}");
    assert!(
        output.stdout.contains(&format!("{IMAGE}:v1.2.3")),
        "{output:?}"
    );
    assert!(
        output
            .stdout
            .contains("DB_PASSWORD, FEATURE (values not shown)"),
        "{output:?}"
    );
    assert_not_shown(&output, "pa=ss");
    assert_not_shown(&output, TOKEN);
}

#[tokio::test]
async fn deploy_service_takes_the_tag_from_image_tag_else_latest() {
    let hub = MockServer::start().await;
    for tag in ["sha-5e1f00d", "latest"] {
        Mock::given(method("POST"))
            .and(path("/api/v3/command:service.start"))
            .and(body_partial_json(
                json!({ "image": format!("{IMAGE}:{tag}"), "replicas": 1 }),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
            .expect(1)
            .mount(&hub)
            .await;
    }

    let from_variable = Run::deploy(&hub.uri())
        .env("IMAGE_TAG", "sha-5e1f00d")
        .args(&["service"])
        .await;
    let by_default = Run::deploy(&hub.uri()).args(&["service"]).await;

    from_variable.assert_success("deploy service with IMAGE_TAG");
    by_default.assert_success("deploy service without a tag");
}

#[tokio::test]
async fn every_form_of_pipeforce_secret_becomes_the_right_authorization_header() {
    // (PIPEFORCE_SECRET, Authorization header, what is secret in it)
    let cases = [
        (
            "Basic alice:s3cret-pw",
            "Basic YWxpY2U6czNjcmV0LXB3",
            "s3cret-pw",
        ),
        (
            "Basic YWxpY2U6czNjcmV0LXB3",
            "Basic YWxpY2U6czNjcmV0LXB3",
            "s3cret-pw",
        ),
        ("Bearer bearer-tok-1", "Bearer bearer-tok-1", "bearer-tok-1"),
        ("Apitoken api-tok-2", "Bearer api-tok-2", "api-tok-2"),
    ];
    for (secret, authorization, hidden) in cases {
        let hub = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/api/v3/command:service.start"))
            .and(header("authorization", authorization))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .named(format!("service.start with {authorization}"))
            .mount(&hub)
            .await;

        let output = Run::deploy(&hub.uri())
            .env("PIPEFORCE_SECRET", secret)
            .args(&["service"])
            .await;

        assert_eq!(output.status.code(), Some(0), "{secret}: {output:?}");
        assert_not_shown(&output, hidden);
        hub.verify().await;
    }
}

// ---------------------------------------------------------------------------------------------
// broker credentials

const BROKER_USER: &str = "svc-user-91c";
const BROKER_PASSWORD: &str = "broker-pw-5d2e";

/// The deployer's broker credentials land in the container's `env`, for both commands, and
/// no value is printed.
#[tokio::test]
async fn broker_credentials_of_the_deployer_are_forwarded_into_env_and_never_printed() {
    let hub = MockServer::start().await;
    let forwarded = json!({ "env": {
        "PIPEFORCE_MESSAGING_USERNAME": BROKER_USER,
        "PIPEFORCE_MESSAGING_PASSWORD": BROKER_PASSWORD,
    }});
    for command in ["service.start", "service.job.start"] {
        Mock::given(method("POST"))
            .and(path(format!("/api/v3/command:{command}")))
            .and(body_partial_json(&forwarded))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .named(command)
            .mount(&hub)
            .await;
    }

    for args in [&["service"][..], &["job", "--command", "./run.sh"][..]] {
        let output = Run::deploy(&hub.uri())
            .env("PIPEFORCE_MESSAGING_USERNAME", BROKER_USER)
            .env("PIPEFORCE_MESSAGING_PASSWORD", BROKER_PASSWORD)
            .args(args)
            .await;

        output.assert_success(&format!("deploy {args:?}"));
        assert!(
            output.stdout.contains(
                "PIPEFORCE_MESSAGING_PASSWORD, PIPEFORCE_MESSAGING_USERNAME (values not shown)"
            ),
            "{output:?}"
        );
        assert!(!output.stderr.contains("as guest"), "{output:?}");
        assert_not_shown(&output, BROKER_USER);
        assert_not_shown(&output, BROKER_PASSWORD);
    }
}

#[tokio::test]
async fn broker_credentials_given_with_env_win_over_the_deployers() {
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:service.start"))
        .and(body_partial_json(json!({ "env": {
            "PIPEFORCE_MESSAGING_USERNAME": BROKER_USER,
            "PIPEFORCE_MESSAGING_PASSWORD": "given-pw-77",
        }})))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&hub)
        .await;

    let output = Run::deploy(&hub.uri())
        .env("PIPEFORCE_MESSAGING_USERNAME", BROKER_USER)
        .env("PIPEFORCE_MESSAGING_PASSWORD", BROKER_PASSWORD)
        .args(&[
            "service",
            "--env",
            "PIPEFORCE_MESSAGING_PASSWORD=given-pw-77",
        ])
        .await;

    output.assert_success("deploy service --env PIPEFORCE_MESSAGING_PASSWORD=...");
    assert_not_shown(&output, "given-pw-77");
}

/// Without credentials the deployer learns, before the hub is called, that the service will
/// log in as guest and how to pass them; the deploy goes on, since the cluster may provide
/// them.
#[tokio::test]
async fn without_broker_credentials_deploy_says_first_that_the_service_logs_in_as_guest() {
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:service.start"))
        .respond_with(ResponseTemplate::new(500).set_body_string("hub down"))
        .expect(1)
        .mount(&hub)
        .await;

    // An empty value is what a CI secret that does not exist expands to.
    let output = Run::deploy(&hub.uri())
        .env("PIPEFORCE_MESSAGING_PASSWORD", "")
        .args(&["service"])
        .await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let warning = output
        .stderr
        .find(
            "warning: PIPEFORCE_MESSAGING_USERNAME and PIPEFORCE_MESSAGING_PASSWORD are not \
             set, so the service will log in to RabbitMQ as guest unless the cluster provides \
             credentials",
        )
        .unwrap_or_else(|| panic!("no warning: {output:?}"));
    let refusal = output.stderr.find("hub down").expect("the hub's answer");
    assert!(warning < refusal, "warned after the hub call: {output:?}");
    assert!(
        output
            .stderr
            .contains("--env PIPEFORCE_MESSAGING_USERNAME=<user> --env PIPEFORCE_MESSAGING_PASSWORD=<password>"),
        "{output:?}"
    );
    let calls = calls_of(&hub, "service.start").await;
    assert_eq!(json_body(&calls[0]).get("env"), None);
}

#[tokio::test]
async fn one_broker_credential_without_the_other_is_refused_before_any_call() {
    let hub = MockServer::start().await;

    let from_environment = Run::deploy(&hub.uri())
        .env("PIPEFORCE_MESSAGING_PASSWORD", BROKER_PASSWORD)
        .args(&["service"])
        .await;
    let from_env_flag = Run::deploy(&hub.uri())
        .args(&[
            "job",
            "--command",
            "./run.sh",
            "--env",
            &format!("PIPEFORCE_MESSAGING_USERNAME={BROKER_USER}"),
        ])
        .await;

    for (output, set, missing) in [
        (&from_environment, "PASSWORD", "USERNAME"),
        (&from_env_flag, "USERNAME", "PASSWORD"),
    ] {
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert!(
            output.stderr.contains(&format!(
                "error: PIPEFORCE_MESSAGING_{set} is set (in this environment or with --env) \
                 but PIPEFORCE_MESSAGING_{missing} is not"
            )),
            "{output:?}"
        );
        assert_not_shown(output, BROKER_PASSWORD);
        assert_not_shown(output, BROKER_USER);
    }
    assert!(hub.received_requests().await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// pulling the image

#[tokio::test]
async fn an_image_pull_secret_is_sent_from_the_flag_or_the_environment() {
    let hub = MockServer::start().await;
    for (command, secret) in [
        ("service.start", "team-registry"),
        ("service.job.start", "ci-registry.creds"),
    ] {
        Mock::given(method("POST"))
            .and(path(format!("/api/v3/command:{command}")))
            .and(body_partial_json(json!({ "imagePullSecret": secret })))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .named(command)
            .mount(&hub)
            .await;
    }

    let from_flag = Run::deploy(&hub.uri())
        .args(&["service", "--image-pull-secret", "team-registry"])
        .await;
    let from_variable = Run::deploy(&hub.uri())
        .env("PIPEFORCE_IMAGE_PULL_SECRET", "ci-registry.creds")
        .args(&["job", "--command", "./run.sh"])
        .await;

    for output in [&from_flag, &from_variable] {
        output.assert_success("deploy with a pull secret");
        assert!(
            !output.stderr.contains("no pull secret is given"),
            "{output:?}"
        );
    }
    assert!(
        from_flag
            .stdout
            .contains("pull:     Always, secret team-registry"),
        "{from_flag:?}"
    );
}

/// The render's image is in a registry of its own (registry.example.com): without a pull
/// secret the deployer is warned why the service may never start, and the deploy goes on
/// (a public image needs none).
#[tokio::test]
async fn an_image_outside_pipeforces_registry_without_a_pull_secret_gets_a_warning() {
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:service.start"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&hub)
        .await;

    let output = Run::deploy(&hub.uri()).args(&["service"]).await;

    output.assert_success("deploy service without a pull secret");
    assert!(
        output.stderr.contains(&format!(
            "warning: the image {IMAGE}:latest is not in PIPEFORCE's registry \
             (us-east1-docker.pkg.dev/pipeforce/...) and no pull secret is given"
        )),
        "{output:?}"
    );
    assert!(
        output
            .stderr
            .contains("--image-pull-secret NAME or PIPEFORCE_IMAGE_PULL_SECRET"),
        "{output:?}"
    );
    let body = json_body(&calls_of(&hub, "service.start").await[0]);
    assert_eq!(body.get("imagePullSecret"), None, "{body}");
    assert_eq!(body["imagePullPolicy"], "Always", "{body}");
}

// ---------------------------------------------------------------------------------------------
// deploy service --wait-ready

/// A hub that accepts `service.start` once.
async fn accepting_hub() -> MockServer {
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:service.start"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "status": "deployed" })))
        .expect(1)
        .mount(&hub)
        .await;
    hub
}

async fn readiness_checks(service: &MockServer) -> usize {
    service
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|request| request.method.as_str() == "GET" && request.url.path() == "/health/ready")
        .count()
}

#[tokio::test]
async fn wait_ready_polls_the_service_until_it_answers_200() {
    // Arrange: a service that is not ready for its first two checks.
    let hub = accepting_hub().await;
    let service = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/health/ready"))
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_string("{\n  \"status\": \"DOWN\",\n  \"messaging\": \"DOWN\"\n}"),
        )
        .up_to_n_times(2)
        .mount(&service)
        .await;
    Mock::given(method("GET"))
        .and(path("/health/ready"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"status":"UP"}"#))
        .mount(&service)
        .await;

    // Act
    let output = Run::deploy(&hub.uri())
        .args(&[
            "service",
            "--wait-ready",
            "--service-url",
            &service.uri(),
            "--poll-secs",
            "0",
        ])
        .await;

    // Assert
    output.assert_success("deploy service --wait-ready");
    assert_eq!(readiness_checks(&service).await, 3);
    let ready_url = format!("{}/health/ready", service.uri());
    for expected in [
        format!("waiting up to 300 s for {ready_url} to answer 200"),
        r#"503 Service Unavailable: { "status": "DOWN", "messaging": "DOWN" }"#.to_owned(),
        format!("{ready_url} answered 200"),
    ] {
        assert!(output.stdout.contains(&expected), "{expected}: {output:?}");
    }
    // An unchanged answer is printed once, not at every check.
    assert_eq!(
        output.stdout.matches("not ready after").count(),
        1,
        "{output:?}"
    );
}

#[tokio::test]
async fn wait_ready_fails_with_the_last_answer_when_the_service_never_becomes_ready() {
    let hub = accepting_hub().await;
    let service = MockServer::start().await;
    // Under a path, given by the variable this time.
    Mock::given(method("GET"))
        .and(path("/hubsvc/health/ready"))
        .respond_with(ResponseTemplate::new(503).set_body_string(r#"{"messaging":"DOWN"}"#))
        .mount(&service)
        .await;

    let output = Run::deploy(&hub.uri())
        .env(
            "PIPEFORCE_SERVICE_URL",
            &format!("{}/hubsvc", service.uri()),
        )
        .args(&[
            "service",
            "--wait-ready",
            "--timeout-secs",
            "1",
            "--poll-secs",
            "1",
        ])
        .await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        output.stderr.contains(&format!(
            "error: the service did not become ready within 1 s (--timeout-secs); the last \
             answer of {}/hubsvc/health/ready was 503 Service Unavailable: {{\"messaging\":\"DOWN\"}}",
            service.uri()
        )),
        "{output:?}"
    );
    assert!(
        output.stderr.contains("hint: the hub accepted the start"),
        "{output:?}"
    );
}

#[tokio::test]
async fn wait_ready_reports_why_a_service_that_cannot_be_reached_never_answered() {
    let hub = accepting_hub().await;
    let closed = format!("http://127.0.0.1:{}", free_port());

    let output = Run::deploy(&hub.uri())
        .args(&[
            "service",
            "--wait-ready",
            "--service-url",
            &closed,
            "--timeout-secs",
            "1",
            "--poll-secs",
            "1",
        ])
        .await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        output.stderr.contains(&format!(
            "the last answer of {closed}/health/ready was no answer: error sending request"
        )),
        "{output:?}"
    );
    assert!(output.stderr.contains("Connection refused"), "{output:?}");
}

// ---------------------------------------------------------------------------------------------
// deploy job

/// Mounts `service.job.start`, then `service.job.status` answering `statuses` in turn (the
/// last one for good), and `service.job.logs` answering `logs` once (if given).
async fn fake_job(hub: &MockServer, statuses: &[Value], logs: Option<&str>) {
    Mock::given(method("POST"))
        .and(path("/api/v3/command:service.job.start"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/json"))
        .and(body_partial_json(json!({
            "image": format!("{IMAGE}:it-42"),
            "command": "./run-tests-integration.sh",
            "env": { "SUITE": "1" },
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "started": true })))
        .expect(1)
        .mount(hub)
        .await;
    let (last, earlier) = statuses.split_last().expect("a status");
    for status in earlier {
        Mock::given(method("GET"))
            .and(path("/api/v3/command:service.job.status"))
            .respond_with(ResponseTemplate::new(200).set_body_json(status))
            .up_to_n_times(1)
            .mount(hub)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/api/v3/command:service.job.status"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(last))
        .mount(hub)
        .await;
    if let Some(logs) = logs {
        Mock::given(method("GET"))
            .and(path("/api/v3/command:service.job.logs"))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_string(logs))
            .expect(1)
            .mount(hub)
            .await;
    }
}

async fn deploy_job_and_wait(hub: &MockServer) -> Output {
    Run::deploy(&hub.uri())
        .args(&[
            "job",
            "--command",
            "./run-tests-integration.sh",
            "--tag",
            "it-42",
            "--env",
            "SUITE=1",
            "--wait",
            "--poll-secs",
            "0",
        ])
        .await
}

/// The job name `deploy` gave `service.job.start`, after checking that every status and logs
/// call asked about that job.
async fn started_job_name(hub: &MockServer) -> String {
    let starts = calls_of(hub, "service.job.start").await;
    assert_eq!(starts.len(), 1);
    let name = json_body(&starts[0])["name"]
        .as_str()
        .expect("a job name")
        .to_owned();
    for command in ["service.job.status", "service.job.logs"] {
        for call in calls_of(hub, command).await {
            let asked: Vec<_> = call.url.query_pairs().collect();
            assert_eq!(asked.len(), 1, "{command}: {}", call.url);
            assert_eq!(asked[0].0, "name", "{command}: {}", call.url);
            assert_eq!(asked[0].1, name, "{command}: {}", call.url);
        }
    }
    name
}

#[tokio::test]
async fn deploy_job_starts_a_uniquely_named_job_waits_for_it_and_prints_its_logs() {
    // Arrange
    let hub = MockServer::start().await;
    let statuses = [
        json!({ "status": "Running" }),
        json!({ "status": "Succeeded" }),
    ];
    fake_job(&hub, &statuses, Some("12 integration tests passed")).await;

    // Act
    let output = deploy_job_and_wait(&hub).await;

    // Assert
    output.assert_success("deploy job --wait");
    let name = started_job_name(&hub).await;
    assert!(name.starts_with("hubsvc-run-tests-integration-"), "{name}");
    assert!(is_dns_label(&name), "{name}");
    assert_eq!(calls_of(&hub, "service.job.status").await.len(), 2);
    assert!(
        output.stdout.contains(&format!("job: {name}")),
        "{output:?}"
    );
    assert!(
        output.stdout.contains(&format!(
            r#"job {name}: running (the hub says: {{"status":"Running"}})"#
        )),
        "{output:?}"
    );
    assert!(
        output.stdout.contains("12 integration tests passed"),
        "{output:?}"
    );
    assert!(output.stdout.contains("succeeded"), "{output:?}");
}

#[tokio::test]
async fn a_failed_job_prints_its_logs_and_makes_deploy_fail() {
    let hub = MockServer::start().await;
    fake_job(
        &hub,
        &[json!({ "phase": "Failed" })],
        Some("assertion failed: orders == 2"),
    )
    .await;

    let output = deploy_job_and_wait(&hub).await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let name = started_job_name(&hub).await;
    assert!(
        output.stdout.contains("assertion failed: orders == 2"),
        "{output:?}"
    );
    assert!(
        output.stderr.contains(&format!("job {name} failed")),
        "{output:?}"
    );
}

#[tokio::test]
async fn waiting_for_a_job_gives_up_after_the_timeout() {
    let hub = MockServer::start().await;
    fake_job(&hub, &[json!({ "status": "Pending" })], None).await;

    let output = Run::deploy(&hub.uri())
        .args(&[
            "job",
            "--command",
            "./run-tests-integration.sh",
            "--tag",
            "it-42",
            "--env",
            "SUITE=1",
            "--wait",
            "--timeout-secs",
            "1",
            "--poll-secs",
            "1",
        ])
        .await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let name = started_job_name(&hub).await;
    assert!(
        output
            .stderr
            .contains(&format!("job {name} did not finish within 1 s")),
        "{output:?}"
    );
    assert!(calls_of(&hub, "service.job.logs").await.is_empty());
}

#[tokio::test]
async fn each_job_run_gets_a_new_valid_name() {
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:service.job.start"))
        .respond_with(ResponseTemplate::new(200))
        .expect(2)
        .mount(&hub)
        .await;

    for _ in 0..2 {
        Run::deploy(&hub.uri())
            .args(&["job", "--command", "./run-tests-integration.sh"])
            .await
            .assert_success("deploy job");
    }

    let names: Vec<String> = calls_of(&hub, "service.job.start")
        .await
        .iter()
        .map(|call| json_body(call)["name"].as_str().unwrap().to_owned())
        .collect();
    assert_ne!(names[0], names[1]);
    assert!(names.iter().all(|name| is_dns_label(name)), "{names:?}");
}

// ---------------------------------------------------------------------------------------------
// errors

#[tokio::test]
async fn a_401_is_reported_with_status_body_and_path_but_never_the_secret() {
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:service.start"))
        .respond_with(ResponseTemplate::new(401).set_body_string("token expired"))
        .expect(1)
        .mount(&hub)
        .await;

    let output = Run::deploy(&hub.uri()).args(&["service"]).await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        output.stderr.contains(
            "the hub answered POST /api/v3/command:service.start with 401 Unauthorized: \
             token expired"
        ),
        "{output:?}"
    );
    assert_not_shown(&output, TOKEN);
}

#[tokio::test]
async fn a_401_without_pipeforce_secret_comes_with_a_hint_to_set_it() {
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:service.start"))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&hub)
        .await;

    let output = Run::deploy(&hub.uri())
        .env_remove("PIPEFORCE_SECRET")
        .args(&["service"])
        .await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        output.stderr.contains("401 Unauthorized: (empty body)"),
        "{output:?}"
    );
    assert!(
        output.stderr.contains("hint: PIPEFORCE_SECRET is not set"),
        "{output:?}"
    );
    let calls = calls_of(&hub, "service.start").await;
    assert!(!calls[0].headers.contains_key("authorization"));
}

#[tokio::test]
async fn a_500_on_a_start_is_reported_with_status_and_body_and_not_retried() {
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:service.job.start"))
        .respond_with(
            ResponseTemplate::new(500).set_body_json(json!({ "error": "image not found" })),
        )
        .expect(1)
        .mount(&hub)
        .await;

    let output = Run::deploy(&hub.uri())
        .args(&["job", "--command", "./run.sh", "--wait"])
        .await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        output.stderr.contains("500 Internal Server Error"),
        "{output:?}"
    );
    assert!(output.stderr.contains("image not found"), "{output:?}");
    assert!(
        output
            .stderr
            .contains("POST /api/v3/command:service.job.start"),
        "{output:?}"
    );
    assert_eq!(retries_logged(&output), 0, "{output:?}");
}

#[tokio::test]
async fn a_hub_slower_than_the_timeout_is_reported_as_a_timeout_and_not_retried() {
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:service.start"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .expect(1)
        .mount(&hub)
        .await;

    let output = Run::deploy(&hub.uri())
        .env("PIPEFORCE_HUB_TIMEOUT_SECS", "1")
        .args(&["service"])
        .await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        output
            .stderr
            .contains("the hub did not answer POST /api/v3/command:service.start within 1s"),
        "{output:?}"
    );
    assert_eq!(retries_logged(&output), 0, "{output:?}");
}

// ---------------------------------------------------------------------------------------------
// retries

#[tokio::test]
async fn a_503_on_a_get_is_retried_up_to_the_limit() {
    let hub = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v3/command:service.job.status"))
        .and(query_param("name", "orders-it-1"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(503).set_body_string("hub is restarting"))
        .expect(3)
        .mount(&hub)
        .await;

    let output = Run::probe(&hub.uri())
        .args(&[
            "--retries",
            "2",
            "--retry-delay-ms",
            "10",
            "get",
            "service.job.status",
            "name=orders-it-1",
        ])
        .await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(retries_logged(&output), 2, "{output:?}");
    assert!(
        output
            .stderr
            .contains("503 Service Unavailable: hub is restarting"),
        "{output:?}"
    );
    assert_not_shown(&output, TOKEN);
}

#[tokio::test]
async fn a_get_that_meets_a_502_then_an_answer_succeeds() {
    let hub = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v3/command:service.job.logs"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .expect(1)
        .mount(&hub)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v3/command:service.job.logs"))
        .and(query_param("name", "job-1"))
        .respond_with(ResponseTemplate::new(200).set_body_string("all green"))
        .expect(1)
        .mount(&hub)
        .await;

    let output = Run::probe(&hub.uri())
        .args(&[
            "--retry-delay-ms",
            "10",
            "get",
            "service.job.logs",
            "name=job-1",
        ])
        .await;

    output.assert_success("probe get");
    assert_eq!(retries_logged(&output), 1, "{output:?}");
    assert!(output.stdout.contains("body=all green"), "{output:?}");
}

#[tokio::test]
async fn a_503_on_a_post_is_not_retried() {
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:service.start"))
        .respond_with(ResponseTemplate::new(503).set_body_string("try later"))
        .expect(1)
        .mount(&hub)
        .await;

    let output = Run::deploy(&hub.uri()).args(&["service"]).await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(retries_logged(&output), 0, "{output:?}");
    assert!(
        output.stderr.contains("503 Service Unavailable: try later"),
        "{output:?}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_reported() {
    let closed = format!("http://127.0.0.1:{}", free_port());

    let output = Run::deploy(&closed).args(&["service"]).await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    // The default: 3 retries after the first attempt.
    assert_eq!(retries_logged(&output), 3, "{output:?}");
    assert!(
        output.stderr.contains(&format!(
            "cannot connect to the hub at {closed}/ for POST /api/v3/command:service.start \
             (4 attempts)"
        )),
        "{output:?}"
    );
    assert_not_shown(&output, TOKEN);
}

// ---------------------------------------------------------------------------------------------
// pipelines and answers, through the probe

#[tokio::test]
async fn a_yaml_pipeline_is_posted_as_application_yaml() {
    let yaml = "pipeline:\n  - log:\n      message: hello\n";
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/pipeline"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/yaml"))
        .and(body_string(yaml))
        .respond_with(ResponseTemplate::new(200).set_body_raw("hello", "text/plain"))
        .expect(1)
        .mount(&hub)
        .await;

    let output = Run::probe(&hub.uri()).args(&["yaml", yaml]).await;

    output.assert_success("probe yaml");
    assert!(
        output
            .stdout
            .contains("status=200\ncontent-type=text/plain\nbody=hello"),
        "{output:?}"
    );
}

#[tokio::test]
async fn a_pipeline_built_with_the_helper_is_posted_as_json_in_the_hubs_form() {
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/pipeline"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({ "pipeline": [
            { "service.start": { "name": "a", "replicas": 2 } },
            { "log": { "message": "done" } },
        ]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "result": 1 })))
        .expect(1)
        .mount(&hub)
        .await;

    let output = Run::probe(&hub.uri())
        .args(&[
            "pipeline",
            "service.start",
            r#"{"name":"a","replicas":2}"#,
            "log",
            r#"{"message":"done"}"#,
        ])
        .await;

    output.assert_success("probe pipeline");
    assert!(output.stdout.contains(r#"body={"result":1}"#), "{output:?}");
}

#[tokio::test]
async fn typed_answers_decode_and_a_wrong_shape_is_an_error_naming_the_expected_type() {
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:probe.good"))
        .and(body_json(json!({ "x": 1 })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 7, "ok": true })))
        .mount(&hub)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v3/command:probe.bad"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>login</html>"))
        .mount(&hub)
        .await;

    let good = Run::probe(&hub.uri())
        .args(&["typed", "probe.good", r#"{"x":1}"#])
        .await;
    let bad = Run::probe(&hub.uri())
        .args(&["typed", "probe.bad", "{}"])
        .await;

    good.assert_success("probe typed");
    assert!(
        good.stdout.contains("Answer { id: 7, ok: true }"),
        "{good:?}"
    );
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(
        bad.stderr.contains(
            "the hub's answer to POST /api/v3/command:probe.bad is not JSON for \
             hub_probe::Answer"
        ),
        "{bad:?}"
    );
}

#[tokio::test]
async fn an_answer_over_16_mib_is_an_error_naming_the_limit_and_the_call() {
    const LIMIT: usize = 16 * 1024 * 1024;
    /// A JSON answer of exactly `size` bytes that decodes as the probe's `Answer`.
    fn answer_of(size: usize) -> String {
        let (head, tail) = (r#"{"id":1,"ok":true,"pad":""#, r#""}"#);
        format!("{head}{}{tail}", "x".repeat(size - head.len() - tail.len()))
    }
    let hub = MockServer::start().await;
    for (command, size) in [("probe.at_limit", LIMIT), ("probe.over_limit", LIMIT + 1)] {
        Mock::given(method("POST"))
            .and(path(format!("/api/v3/command:{command}")))
            .respond_with(ResponseTemplate::new(200).set_body_string(answer_of(size)))
            .mount(&hub)
            .await;
    }

    let at_limit = Run::probe(&hub.uri())
        .args(&["typed", "probe.at_limit", "{}"])
        .await;
    let over_limit = Run::probe(&hub.uri())
        .args(&["typed", "probe.over_limit", "{}"])
        .await;

    at_limit.assert_success("probe typed at the limit");
    assert!(
        at_limit.stdout.contains("Answer { id: 1, ok: true }"),
        "{at_limit:?}"
    );
    assert_eq!(over_limit.status.code(), Some(1), "{over_limit:?}");
    assert!(
        over_limit.stderr.contains(
            "the hub's answer to POST /api/v3/command:probe.over_limit is larger than 16 MiB"
        ),
        "{over_limit:?}"
    );
}

#[tokio::test]
async fn a_password_in_the_hub_url_is_never_printed() {
    let hub = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("broken"))
        .mount(&hub)
        .await;
    let with_password = |base: &str| base.replacen("http://", "http://hub-user:hub-pw-1@", 1);
    let closed = format!("http://127.0.0.1:{}", free_port());

    for base in [hub.uri(), closed] {
        let url = with_password(&base);
        let debug = Run::probe(&url).args(&["debug"]).await;
        let call = Run::probe(&url)
            .args(&["--retries", "0", "command", "probe.x", "{}"])
            .await;
        let deploy = Run::deploy(&url).args(&["service"]).await;

        debug.assert_success("probe debug");
        assert!(debug.stdout.contains("hub-user:***@"), "{debug:?}");
        assert!(deploy.stdout.contains("hub-user:***@"), "{deploy:?}");
        for output in [&debug, &call, &deploy] {
            assert_not_shown(output, "hub-pw-1");
        }
        assert_eq!(call.status.code(), Some(1), "{call:?}");
        assert_eq!(deploy.status.code(), Some(1), "{deploy:?}");
    }
}

#[tokio::test]
async fn the_client_debug_output_names_the_scheme_but_not_the_secret() {
    let output = Run::probe("http://hub.example:8080").args(&["debug"]).await;

    output.assert_success("probe debug");
    assert!(output.stdout.contains("HubClient"), "{output:?}");
    assert!(output.stdout.contains("Bearer"), "{output:?}");
    assert!(
        output.stdout.contains("http://hub.example:8080/"),
        "{output:?}"
    );
    assert_not_shown(&output, TOKEN);
}

// ---------------------------------------------------------------------------------------------
// bad environment and command lines

#[tokio::test]
async fn a_malformed_secret_stops_deploy_before_any_call_naming_the_variable_not_the_value() {
    let hub = MockServer::start().await;

    let output = Run::deploy(&hub.uri())
        .env("PIPEFORCE_SECRET", "Token hunter2-secret")
        .args(&["service"])
        .await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stderr.contains("PIPEFORCE_SECRET"), "{output:?}");
    assert_not_shown(&output, "hunter2-secret");
    assert!(hub.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_hub_url_that_is_not_http_stops_deploy_naming_the_variable() {
    let output = Run::deploy("ftp://hub.example").args(&["service"]).await;

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stderr.contains("PIPEFORCE_HUB_URL"), "{output:?}");
    assert!(
        output.stderr.contains("an http:// or https:// URL"),
        "{output:?}"
    );
}

#[tokio::test]
async fn a_wrong_command_line_exits_with_2_and_says_what_is_wrong() {
    let hub = MockServer::start().await;
    for (args, expected) in [
        (&[][..], "Commands:"),
        (&["ship"][..], "unrecognized subcommand 'ship'"),
        (
            &["job", "--wait"][..],
            "required arguments were not provided",
        ),
        (
            &["service", "--replicas", "two"][..],
            "invalid value 'two' for '--replicas <N>'",
        ),
        (
            &["service", "--image-pull-secret", "Team_Registry"][..],
            "invalid value 'Team_Registry' for '--image-pull-secret <NAME>': not a Kubernetes \
             secret name",
        ),
        (
            &[
                "service",
                "--wait-ready",
                "--service-url",
                "ftp://svc.example",
            ][..],
            "invalid value 'ftp://svc.example' for '--service-url <URL>': not an http:// or \
             https:// URL",
        ),
        (
            &["service", "--service-url", "svc.example"][..],
            "invalid value 'svc.example' for '--service-url <URL>': not a URL",
        ),
        (
            &["service", "--wait-ready", "--timeout-secs", "0"][..],
            "0 is not in 1..=86400",
        ),
    ] {
        let output = Run::deploy(&hub.uri()).args(args).await;

        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        assert!(output.stderr.contains(expected), "{args:?}: {output:?}");
        assert!(output.stderr.contains("--help"), "{args:?}: {output:?}");
    }
    let help = Run::deploy(&hub.uri()).args(&["--help"]).await;
    help.assert_success("deploy --help");
    assert!(
        help.stdout
            .contains(&format!("image {IMAGE}:<tag>, port {HTTP_PORT}"))
    );
    assert!(hub.received_requests().await.unwrap().is_empty());
}
