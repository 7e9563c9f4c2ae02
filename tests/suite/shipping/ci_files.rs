//! The CI files: the GitHub workflow passes actionlint, and both it and the GitLab file
//! (read as YAML with PyYAML) run every stage and log in to the image's registry.

use std::{fs, path::Path, process::Command};

use serde_json::Value;
use template_tests::{Render, run};

use super::python;
use crate::DEFAULT_RENDER;

#[test]
fn the_github_workflow_passes_actionlint_and_runs_every_stage() {
    let output = run(Command::new("actionlint")
        .arg(".github/workflows/ci.yml")
        .current_dir(&DEFAULT_RENDER.dir));
    output.assert_success("actionlint");

    let text = DEFAULT_RENDER.read(".github/workflows/ci.yml");
    assert!(
        text.contains("${{ github.sha }}"),
        "GitHub expressions survive Liquid"
    );
    let workflow = yaml(&DEFAULT_RENDER.dir.join(".github/workflows/ci.yml"));
    assert_eq!(
        workflow["env"]["IMAGE"],
        "us-east1-docker.pkg.dev/pipeforce/acme/orders"
    );
    assert_eq!(workflow["env"]["REGISTRY"], "us-east1-docker.pkg.dev");
    let jobs = &workflow["jobs"];
    let job_names: Vec<&str> = jobs
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for job in [
        "fmt",
        "clippy",
        "deny",
        "unit",
        "integration",
        "image",
        "deploy",
    ] {
        assert!(job_names.contains(&job), "no job {job}: {job_names:?}");
    }
    let runs = |job: &str| -> String {
        jobs[job]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|step| step["run"].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(runs("fmt").contains("cargo fmt --all --check"));
    assert!(
        runs("clippy").contains("cargo clippy --locked --workspace --all-targets -- -D warnings")
    );
    assert!(runs("unit").contains("./run-tests-unit.sh"));
    assert!(runs("integration").contains("./run-tests-integration.sh"));
    assert!(
        jobs["integration"]["services"]["rabbitmq"]["image"]
            .as_str()
            .is_some_and(|image| image.starts_with("rabbitmq:")),
        "RabbitMQ runs beside the integration tests"
    );
    // Cargo is cached: the toolchain action caches unless told not to.
    for job in ["clippy", "unit", "integration", "deploy"] {
        let toolchain = jobs[job]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|step| {
                step["uses"]
                    .as_str()
                    .is_some_and(|uses| uses.starts_with("actions-rust-lang/setup-rust-toolchain@"))
            })
            .unwrap_or_else(|| panic!("{job}: no toolchain step"));
        assert_ne!(
            toolchain["with"]["cache"],
            Value::Bool(false),
            "{job} caches cargo"
        );
    }
    // Images and deployment happen on pushes to main only, after every test.
    let on_main = "github.event_name == 'push' && github.ref == 'refs/heads/main'";
    assert_eq!(jobs["image"]["if"], on_main);
    assert_eq!(jobs["deploy"]["needs"], "image");
    let image_job = serde_json::to_string(&jobs["image"]).unwrap();
    for expected in [
        "secrets.REGISTRY_USERNAME",
        "secrets.REGISTRY_PASSWORD",
        "target\":\"runtime",
        "target\":\"test",
    ] {
        assert!(
            image_job.contains(expected),
            "image job lacks {expected}: {image_job}"
        );
    }
    let deploy = jobs["deploy"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| {
            step["run"]
                .as_str()
                .is_some_and(|run| run.contains("deploy/Cargo.toml"))
        })
        .expect("a deploy step");
    assert_eq!(
        deploy["run"],
        "cargo run --locked --manifest-path deploy/Cargo.toml -- service --wait-ready"
    );
    assert_eq!(deploy["env"]["IMAGE_TAG"], "${{ github.sha }}");
    // The hub's and the broker's credentials come from secrets; the broker's go on into the
    // service's container.
    for secret in [
        "PIPEFORCE_SECRET",
        "PIPEFORCE_MESSAGING_USERNAME",
        "PIPEFORCE_MESSAGING_PASSWORD",
    ] {
        assert_eq!(
            deploy["env"][secret],
            format!("${{{{ secrets.{secret} }}}}"),
            "{secret}"
        );
    }
    for variable in ["PIPEFORCE_IMAGE_PULL_SECRET", "PIPEFORCE_SERVICE_URL"] {
        assert_eq!(
            deploy["env"][variable],
            format!("${{{{ vars.{variable} }}}}"),
            "{variable}"
        );
    }
    // In an environment: its secrets go to this job only, and GitHub shows the service's URL.
    assert_eq!(jobs["deploy"]["environment"]["name"], "pipeforce");
    assert_eq!(
        jobs["deploy"]["environment"]["url"],
        "${{ vars.PIPEFORCE_SERVICE_URL || env.PUBLIC_SERVICE_URL }}"
    );
    assert_eq!(
        workflow["env"]["PUBLIC_SERVICE_URL"],
        "https://orders-acme.pipeforce.net"
    );
    // The tests never see the deployment's broker credentials.
    let integration = serde_json::to_string(&jobs["integration"]).unwrap();
    assert!(!integration.contains("secrets."), "{integration}");
}

#[test]
fn the_gitlab_file_parses_with_the_same_stages() {
    let pipeline = yaml(&DEFAULT_RENDER.dir.join(".gitlab-ci.yml"));

    assert_eq!(
        pipeline["stages"],
        serde_json::json!(["check", "test", "image", "deploy"])
    );
    assert_eq!(
        pipeline["variables"]["IMAGE"],
        "us-east1-docker.pkg.dev/pipeforce/acme/orders"
    );
    for (job, stage, command) in [
        ("fmt", "check", "cargo fmt --all --check"),
        (
            "clippy",
            "check",
            "cargo clippy --locked --workspace --all-targets -- -D warnings",
        ),
        (
            "deny",
            "check",
            "cargo deny --locked check advisories licenses bans sources",
        ),
        ("unit", "test", "./run-tests-unit.sh"),
        ("integration", "test", "./run-tests-integration.sh"),
        (
            "image",
            "image",
            "docker buildx build --push --target runtime",
        ),
        (
            "deploy",
            "deploy",
            "cargo run --locked --manifest-path deploy/Cargo.toml -- service --wait-ready",
        ),
    ] {
        assert_eq!(pipeline[job]["stage"], stage, "{job}");
        let script = serde_json::to_string(&pipeline[job]["script"]).unwrap();
        assert!(
            script.contains(command),
            "{job} does not run {command}: {script}"
        );
    }
    assert_eq!(pipeline["integration"]["services"][0]["alias"], "rabbitmq");
    assert_eq!(
        pipeline["integration"]["variables"]["PIPEFORCE_MESSAGING_HOST"],
        "rabbitmq"
    );
    assert!(
        pipeline[".rust"]["cache"]["paths"]
            .as_array()
            .is_some_and(|paths| !paths.is_empty())
    );
    let image = serde_json::to_string(&pipeline["image"]).unwrap();
    for expected in [
        "$REGISTRY_USERNAME",
        "$REGISTRY_PASSWORD",
        "--target test",
        "$CI_DEFAULT_BRANCH",
    ] {
        assert!(
            image.contains(expected),
            "image job lacks {expected}: {image}"
        );
    }
    assert!(
        serde_json::to_string(&pipeline["deploy"]["rules"])
            .unwrap()
            .contains("$CI_DEFAULT_BRANCH"),
        "deploys from the default branch only"
    );
    // In the environment the credentials are scoped to, so the tests never get them.
    assert_eq!(pipeline["deploy"]["environment"]["name"], "pipeforce");
    assert_eq!(
        pipeline["deploy"]["environment"]["url"],
        "$PUBLIC_SERVICE_URL"
    );
    assert_eq!(
        pipeline["variables"]["PUBLIC_SERVICE_URL"],
        "https://orders-acme.pipeforce.net"
    );
    assert_eq!(pipeline["integration"]["environment"], Value::Null);
}

/// Both CI files log in to the registry the image lives in, whatever `-d registry=` said.
#[test]
fn the_ci_files_log_in_to_the_registry_of_the_image() {
    for (registry, host) in [
        ("ghcr.io/acme", "ghcr.io"),
        (
            "registry.example.com:5000/team",
            "registry.example.com:5000",
        ),
        ("localhost:5000", "localhost:5000"),
        ("acme", "docker.io"),
    ] {
        let rendered = Render::new("orders")
            .define("registry", registry)
            .define("http_port", "9090")
            .run()
            .unwrap_or_else(|failure| panic!("{registry}: {}", failure.output));

        let workflow = yaml(&rendered.dir.join(".github/workflows/ci.yml"));
        let pipeline = yaml(&rendered.dir.join(".gitlab-ci.yml"));
        assert_eq!(workflow["env"]["REGISTRY"], host, "{registry}");
        assert_eq!(pipeline["variables"]["REGISTRY"], host, "{registry}");
        assert_eq!(workflow["env"]["IMAGE"], format!("{registry}/orders"));
        run(Command::new("actionlint")
            .arg(".github/workflows/ci.yml")
            .current_dir(&rendered.dir))
        .assert_success(&format!("actionlint with registry {registry}"));
        let dockerfile = rendered.read("Dockerfile");
        assert!(dockerfile.contains("\nEXPOSE 9090\n"), "{dockerfile}");
    }
}

/// A YAML file as JSON, read with PyYAML.
fn yaml(path: &Path) -> Value {
    python(
        "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        &fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
}
