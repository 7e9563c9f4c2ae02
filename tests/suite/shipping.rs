//! Shipping a render: its Dockerfile, its run-tests scripts and its CI files.
//!
//! No Docker engine runs here, so the Dockerfile is linted (hadolint) and its build is
//! imitated: the instructions run outside Docker in the Dockerfile's order, one folder per
//! stage, `RUN` commands building into the shared target dir. The test stage's folder is then
//! the test image, where the scripts run the test archive with no cargo on PATH. The scripts
//! also run with cargo, on a copy with a failing test of each kind and a formatting mistake
//! added. The CI files are linted (actionlint) and read as YAML (PyYAML).
//!
//! `ci/test` installs what this needs: hadolint, shellcheck, actionlint, PyYAML, cargo-chef
//! and cargo-nextest.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::LazyLock,
};

use serde_json::Value;
use template_tests::{Output, Render, Rendered, run, shared_target_dir, shared_target_lock};

use crate::DEFAULT_RENDER;

/// The render that is built here, named apart from the default render so that its binaries
/// never replace the default render's in the shared target dir.
static SHIPPING: LazyLock<Rendered> = LazyLock::new(|| {
    Render::new("shipping")
        .run()
        .unwrap_or_else(|failure| panic!("render failed:\n{}", failure.output))
});

// ---------------------------------------------------------------------------------------------
// The Dockerfile

#[test]
fn the_dockerfile_passes_hadolint_with_no_findings() {
    let output = run(Command::new("hadolint")
        .args(["--no-color", "--failure-threshold", "style", "Dockerfile"])
        .current_dir(&DEFAULT_RENDER.dir));

    assert!(
        output.status.success() && output.stdout.trim().is_empty(),
        "hadolint findings:\n{}{}",
        output.stdout,
        output.stderr
    );
}

#[test]
fn the_service_image_is_built_locked_and_runs_unprivileged_on_a_minimal_base() {
    let dockerfile = DEFAULT_RENDER.read("Dockerfile");
    let instructions = instructions(&dockerfile);
    let stages: Vec<(&str, &str)> = instructions
        .iter()
        .filter(|(keyword, _)| keyword == "FROM")
        .map(|(_, args)| from(args))
        .collect();
    let runtime = stage_instructions(&instructions, "runtime");

    // Dependencies are cooked in a stage of their own, before the code is copied in.
    assert_eq!(
        stages.iter().map(|(_, name)| *name).collect::<Vec<_>>(),
        [
            "chef",
            "planner",
            "dependencies",
            "builder",
            "nextest",
            "test-builder",
            "test",
            "runtime"
        ],
        "stages"
    );
    for (base, _) in &stages {
        if base.starts_with("rust:") {
            assert!(
                base.starts_with("rust:1.95-"),
                "pinned to Rust 1.95: {base}"
            );
        }
    }
    assert!(
        dockerfile.contains("RUN cargo build --release --locked --bin orders\n"),
        "{dockerfile}"
    );
    // The service image is the default target, on distroless cc: no shell, no OpenSSL.
    assert_eq!(
        stages.last().map(|(base, _)| *base),
        Some("gcr.io/distroless/cc-debian13:nonroot")
    );
    for expected in [
        ("USER", "65532:65532"),
        ("EXPOSE", "8080"),
        ("ENTRYPOINT", r#"["/usr/local/bin/orders"]"#),
        (
            "COPY",
            "--from=builder /app/target/release/orders /usr/local/bin/orders",
        ),
    ] {
        assert!(
            runtime.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "runtime stage lacks {expected:?}: {runtime:?}"
        );
    }
    let labels = runtime
        .iter()
        .filter(|(keyword, _)| keyword == "LABEL")
        .map(|(_, args)| args.as_str())
        .collect::<String>();
    for label in [
        r#"io.pipeforce.service="orders""#,
        r#"io.pipeforce.namespace="acme""#,
        r#"org.opencontainers.image.source="${SOURCE}""#,
        r#"org.opencontainers.image.version="${VERSION}""#,
    ] {
        assert!(labels.contains(label), "no label {label}: {labels}");
    }
    // rustls, not OpenSSL: nothing to install in the runtime image.
    let lock = DEFAULT_RENDER.read("Cargo.lock");
    assert!(
        !lock.contains("name = \"openssl-sys\""),
        "openssl-sys is in Cargo.lock"
    );

    let ignored: Vec<String> = DEFAULT_RENDER
        .read(".dockerignore")
        .lines()
        .map(str::to_owned)
        .collect();
    for kept_out in ["target/", ".git/"] {
        assert!(ignored.iter().any(|line| line == kept_out), "{ignored:?}");
    }
    assert!(
        !ignored.iter().any(|line| line.starts_with("tests")),
        "the test image needs tests/"
    );
}

/// The Dockerfile's instructions run outside Docker, stage after stage, as `docker build`
/// would run them for both targets; the service binary is the real one, and the test image
/// runs each script's tests from the archive without cargo.
#[test]
fn the_dockerfile_builds_the_service_and_a_test_image_that_needs_no_cargo() {
    let work = tempfile::Builder::new()
        .prefix("pipeforce-docker-")
        .tempdir()
        .unwrap();
    let images = imitate_docker_build(&SHIPPING, work.path());

    // The service image holds the service itself, not cargo-chef's placeholder: the real one
    // refuses a bad port by name.
    let runtime = &images["runtime"];
    let output = run(Command::new(runtime.join("usr/local/bin/shipping"))
        .env("PIPEFORCE_HTTP_PORT", "not-a-port")
        .env("PIPEFORCE_MESSAGING_PORT", "1"));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stderr.contains("PIPEFORCE_HTTP_PORT"), "{output:?}");

    // The test image: the scripts find no cargo and run the archive with cargo-nextest.
    let image = &images["test"];
    let app = image.join("app");
    assert!(app.join("tests.tar.zst").is_file(), "no test archive");
    let listed = listed_tests(
        Command::new("cargo")
            .args(["nextest", "list", "--archive-file"])
            .arg(app.join("tests.tar.zst"))
            .arg("--workspace-remap")
            .arg(&app),
        &app,
    );
    let path = format!(
        "{}:{}",
        image.join("usr/local/bin").display(),
        image_tools(work.path()).display()
    );
    for (script, kinds) in SCRIPTS {
        let output = run(Command::new(app.join(format!("run-tests-{script}.sh")))
            .current_dir(&app)
            .env_clear()
            .env("PATH", &path)
            .env("HOME", work.path()));
        output.assert_success(&format!("run-tests-{script}.sh in the test image"));
        assert!(
            output.stderr.contains("code style: skipped") || script == "performance",
            "{}",
            output.stderr
        );

        let report = report(&output.stdout);
        assert_eq!(report.failures, 0, "{script}: {report:?}");
        assert_eq!(
            report.tests(kinds),
            expected_tests(&listed, kinds),
            "{script}: tests run"
        );
        if script != "performance" {
            let style = report.code_style().expect("a code-style test case");
            assert!(style.skipped, "{style:?}");
            assert!(style.message.contains("no Rust toolchain"), "{style:?}");
        }
        if kinds.contains(&Kind::Performance) {
            let measured = report
                .case("test_performance_greeting_throughput")
                .expect("the performance example ran");
            assert!(measured.out.contains("messages/s"), "{measured:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run-tests scripts

#[test]
fn every_rendered_script_is_executable_and_passes_shellcheck() {
    let scripts: Vec<PathBuf> = DEFAULT_RENDER
        .files()
        .into_iter()
        .filter(|file| file.extension().is_some_and(|ext| ext == "sh"))
        .collect();
    for script in [
        "run-tests-unit.sh",
        "run-tests-integration.sh",
        "run-tests-performance.sh",
        "run-tests-all.sh",
        "scripts/upgrade-template.sh",
    ] {
        assert!(
            scripts.contains(&PathBuf::from(script)),
            "{script} in {scripts:?}"
        );
    }
    for script in &scripts {
        let mode = fs::metadata(DEFAULT_RENDER.dir.join(script))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o111,
            0o111,
            "{} is not executable",
            script.display()
        );
    }

    let output = run(Command::new("shellcheck")
        .args(&scripts)
        .current_dir(&DEFAULT_RENDER.dir));

    output.assert_success("shellcheck");
}

/// In a checkout the unit script builds with cargo, checks the code style and passes.
#[test]
fn the_unit_script_passes_and_checks_the_code_style_in_a_checkout() {
    let output = run_script(&SHIPPING.dir, "unit");

    output.assert_success("run-tests-unit.sh");
    let report = report(&output.stdout);
    let kept = fs::read_to_string(SHIPPING.dir.join("target/test-results/junit-unit.xml")).unwrap();
    assert_eq!(
        output.stdout, kept,
        "stdout is the report it keeps, and nothing else"
    );
    let style = report.code_style().expect("a code-style test case");
    assert!(!style.failed && !style.skipped, "{style:?}");
    assert!(style.out.contains("cargo clippy"), "{style:?}");
}

/// A copy with one failing test of each kind, one of them in a module, and a formatting
/// mistake: every script fails, names what failed, and runs exactly the tests of its kinds.
#[test]
fn each_run_tests_script_fails_on_a_failing_test_and_runs_only_its_kinds() {
    let copy = tempfile::Builder::new()
        .prefix("pipeforce-failing-")
        .tempdir()
        .unwrap();
    let project = copy.path().join("shipping");
    // Without target/: other tests run scripts in the render, which write there meanwhile.
    copy_context(&SHIPPING.dir, &project);
    // Not rustfmt's layout on purpose: the code-style case must fail too.
    fs::write(
        project.join("tests/deliberately_failing.rs"),
        r#"#[test]
fn a_deliberately_failing_unit_test() { panic!("DELIBERATE unit failure") }

mod nested {
    #[test]
    fn test_integration_deliberately_failing() { panic!("DELIBERATE integration failure") }
}

#[test]
fn test_performance_deliberately_failing() { panic!("DELIBERATE performance failure") }
"#,
    )
    .unwrap();
    let listed = {
        let _alone = shared_target_lock();
        listed_tests(
            Command::new("cargo")
                .args(["nextest", "list", "--workspace", "--locked"])
                .env("CARGO_TARGET_DIR", shared_target_dir()),
            &project,
        )
    };
    let failing = BTreeMap::from([
        (Kind::Unit, "a_deliberately_failing_unit_test"),
        (
            Kind::Integration,
            "nested::test_integration_deliberately_failing",
        ),
        (Kind::Performance, "test_performance_deliberately_failing"),
    ]);

    for (script, kinds) in SCRIPTS {
        let output = run_script(&project, script);

        assert!(
            !output.status.success(),
            "run-tests-{script}.sh passed:\n{}",
            output.stderr
        );
        let report = report(&output.stdout);
        let kept =
            fs::read_to_string(project.join(format!("target/test-results/junit-{script}.xml")))
                .unwrap();
        assert_eq!(output.stdout, kept, "{script}: stdout is the kept report");
        assert_eq!(
            report.tests(kinds),
            expected_tests(&listed, kinds),
            "{script}: tests run"
        );

        let mut expected_failures: BTreeSet<String> =
            kinds.iter().map(|kind| failing[kind].to_owned()).collect();
        if script != "performance" {
            expected_failures.insert("code_style".to_owned());
        }
        let failed: BTreeSet<String> = report
            .cases
            .iter()
            .filter(|case| case.failed)
            .map(|case| case.name.clone())
            .collect();
        assert_eq!(failed, expected_failures, "{script}: failed test cases");
        assert_eq!(
            report.failures,
            expected_failures.len(),
            "{script}: failures in the totals"
        );
        for case in report
            .cases
            .iter()
            .filter(|case| case.failed && case.name != "code_style")
        {
            assert!(case.out.contains("DELIBERATE"), "{script}: {case:?}");
        }
        if let Some(style) = report.code_style() {
            assert!(
                style.message.contains("cargo fmt --all --check"),
                "{style:?}"
            );
            assert!(
                !style.message.contains("clippy"),
                "clippy passed: {style:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CI files

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
        "cargo run --locked --manifest-path deploy/Cargo.toml -- service"
    );
    assert_eq!(
        deploy["env"]["PIPEFORCE_SECRET"],
        "${{ secrets.PIPEFORCE_SECRET }}"
    );
    assert_eq!(deploy["env"]["IMAGE_TAG"], "${{ github.sha }}");
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
            "cargo run --locked --manifest-path deploy/Cargo.toml -- service",
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

// ---------------------------------------------------------------------------------------------
// Test kinds and reports

/// A test's kind, by the convention of PIPEFORCE's Python template: by its function's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Unit,
    Integration,
    Performance,
}

impl Kind {
    fn of(test: &str) -> Self {
        let function = test.rsplit("::").next().unwrap_or(test);
        if function.starts_with("test_integration_") {
            Kind::Integration
        } else if function.starts_with("test_performance_") {
            Kind::Performance
        } else {
            Kind::Unit
        }
    }
}

/// Each script and the kinds of tests it runs.
const SCRIPTS: [(&str, &[Kind]); 4] = [
    ("unit", &[Kind::Unit]),
    ("integration", &[Kind::Unit, Kind::Integration]),
    ("performance", &[Kind::Performance]),
    ("all", &[Kind::Unit, Kind::Integration, Kind::Performance]),
];

/// A test, as nextest names it in a report: binary id (`classname`) and test name.
type TestId = (String, String);

/// Every test nextest would run, listed by `command` (a `cargo nextest list`) in `dir`.
fn listed_tests(command: &mut Command, dir: &Path) -> BTreeSet<TestId> {
    let output = run(command.args(["--message-format", "json"]).current_dir(dir));
    output.assert_success("cargo nextest list");
    let listing: Value = serde_json::from_str(&output.stdout).expect("nextest's JSON listing");
    let mut tests = BTreeSet::new();
    for (binary, suite) in listing["rust-suites"].as_object().expect("rust-suites") {
        for (name, case) in suite["testcases"].as_object().expect("testcases") {
            if case["ignored"] != Value::Bool(true) {
                tests.insert((binary.clone(), name.clone()));
            }
        }
    }
    assert!(!tests.is_empty(), "nextest listed no tests");
    tests
}

fn expected_tests(listed: &BTreeSet<TestId>, kinds: &[Kind]) -> BTreeSet<TestId> {
    listed
        .iter()
        .filter(|(_, name)| kinds.contains(&Kind::of(name)))
        .cloned()
        .collect()
}

/// A JUnit report as the scripts print it.
#[derive(Debug)]
struct Report {
    tests: usize,
    failures: usize,
    skipped: usize,
    cases: Vec<Case>,
}

#[derive(Debug, Clone)]
struct Case {
    classname: String,
    name: String,
    failed: bool,
    skipped: bool,
    /// The message of the failure or skip.
    message: String,
    /// What the test printed.
    out: String,
}

impl Report {
    /// The nextest tests in the report (the code-style case left out), as nextest names them;
    /// also checks that they are all of `kinds`.
    fn tests(&self, kinds: &[Kind]) -> BTreeSet<TestId> {
        self.cases
            .iter()
            .filter(|case| case.classname != "code-style")
            .inspect(|case| {
                assert!(
                    kinds.contains(&Kind::of(&case.name)),
                    "{} {} ran, but it is not of {kinds:?}",
                    case.classname,
                    case.name
                );
            })
            .map(|case| (case.classname.clone(), case.name.clone()))
            .collect()
    }

    fn code_style(&self) -> Option<&Case> {
        self.cases
            .iter()
            .find(|case| case.classname == "code-style")
    }

    fn case(&self, name: &str) -> Option<&Case> {
        self.cases.iter().find(|case| case.name == name)
    }
}

/// Parses a JUnit report with Python's XML parser, which rejects a malformed one, and checks
/// that the totals of `<testsuites>` agree with its test cases.
fn report(xml: &str) -> Report {
    const READ_JUNIT: &str = r#"
import json, sys
import xml.etree.ElementTree as ET
root = ET.fromstring(sys.stdin.buffer.read())
assert root.tag == "testsuites", root.tag
cases = []
for case in root.iter("testcase"):
    failure, skipped = case.find("failure"), case.find("skipped")
    said = failure if failure is not None else skipped
    cases.append({
        "classname": case.get("classname"), "name": case.get("name"),
        "failed": failure is not None, "skipped": skipped is not None,
        "message": "" if said is None else said.get("message") or "",
        "out": "".join(case.findtext(tag) or "" for tag in ("system-out", "system-err")),
    })
totals = {key: int(root.get(key, "0")) for key in ("tests", "failures", "skipped")}
print(json.dumps({"totals": totals, "cases": cases}))
"#;
    let parsed = python(READ_JUNIT, xml);
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let cases: Vec<Case> = parsed["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| Case {
            classname: text(&case["classname"]),
            name: text(&case["name"]),
            failed: case["failed"] == Value::Bool(true),
            skipped: case["skipped"] == Value::Bool(true),
            message: text(&case["message"]),
            out: text(&case["out"]),
        })
        .collect();
    let total = |key: &str| parsed["totals"][key].as_u64().unwrap() as usize;
    let report = Report {
        tests: total("tests"),
        failures: total("failures"),
        skipped: total("skipped"),
        cases,
    };
    assert_eq!(
        report.tests,
        report.cases.len(),
        "tests in the totals: {report:?}"
    );
    assert_eq!(
        report.failures,
        report.cases.iter().filter(|case| case.failed).count(),
        "failures in the totals: {report:?}"
    );
    assert_eq!(
        report.skipped,
        report.cases.iter().filter(|case| case.skipped).count(),
        "skipped in the totals: {report:?}"
    );
    report
}

/// Runs `run-tests-<kind>.sh` of a checkout, with cargo and the shared target dir.
fn run_script(project: &Path, kind: &str) -> Output {
    let _alone = shared_target_lock();
    run(Command::new(project.join(format!("run-tests-{kind}.sh")))
        .current_dir(project)
        .env("CARGO_TARGET_DIR", shared_target_dir())
        .env_remove("CODE_STYLE_CHECK")
        .env_remove("TEST_RESULTS_DIR")
        .env_remove("CARGO_TERM_COLOR"))
}

// ---------------------------------------------------------------------------------------------
// Helpers: Python, YAML, copies

/// Runs a Python script with `input` on stdin and parses the JSON it prints.
fn python(script: &str, input: &str) -> Value {
    use std::io::Write;

    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "python failed: {}\n--- input\n{input}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python printed JSON")
}

/// A YAML file as JSON, read with PyYAML.
fn yaml(path: &Path) -> Value {
    python(
        "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        &fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
}

/// Copies a folder with `cp -a`, which keeps modes and times as `docker build`'s COPY does.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    run(Command::new("cp").arg("-a").arg(from.join(".")).arg(to)).assert_success("cp -a");
}

/// Copies the build context of `project` into `to`: everything but what .dockerignore keeps
/// out of it that a project folder here can hold, build output and version control (the test
/// about the Dockerfile checks that .dockerignore lists them).
fn copy_context(project: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(project).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "target" || entry.file_name() == ".git" {
            continue;
        }
        run(Command::new("cp").arg("-a").arg(entry.path()).arg(to)).assert_success("cp -a");
    }
}

// ---------------------------------------------------------------------------------------------
// Imitating `docker build`

/// The instructions of a Dockerfile: (keyword, arguments), comments dropped and continued
/// lines joined.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let (keyword, args) = pending.split_once(' ').unwrap_or((&pending, ""));
        instructions.push((keyword.to_uppercase(), args.trim().to_owned()));
        pending.clear();
    }
    instructions
}

/// `FROM <base> AS <name>` as (base, name).
fn from(args: &str) -> (&str, &str) {
    let words: Vec<&str> = args.split_whitespace().collect();
    match words[..] {
        [base, r#as, name] if r#as.eq_ignore_ascii_case("as") => (base, name),
        _ => panic!("every stage is named: FROM {args}"),
    }
}

/// The instructions of one stage (without its FROM).
fn stage_instructions(instructions: &[(String, String)], stage: &str) -> Vec<(String, String)> {
    let mut current = None;
    instructions
        .iter()
        .filter(|(keyword, args)| {
            if keyword == "FROM" {
                current = Some(from(args).1.to_owned());
                return false;
            }
            current.as_deref() == Some(stage)
        })
        .cloned()
        .collect()
}

/// Runs the render's Dockerfile without Docker, in its order, and returns each stage's
/// root folder. A stage's folder stands for its image's `/`, with the work dir at `app/`:
/// - `FROM <stage>` copies that stage's folder; `FROM <image>` starts empty;
/// - `COPY . .` copies the build context; `COPY --from=<stage>` copies from that stage's
///   folder, except what a stage's `cargo install` put in `/usr/local/cargo/bin` (taken from
///   PATH, where `ci/test` installed it), `/etc` (taken from this machine), and
///   `/app/target` (the shared target dir every build here goes to);
/// - `RUN` runs in the stage's `app/` with the shared target dir, except `cargo install`,
///   whose tools `ci/test` installed;
/// - anything that only describes the image (ARG, LABEL, USER, ...) is skipped.
///
/// An instruction it does not know fails the test: teach it rather than skip it.
fn imitate_docker_build(render: &Rendered, work: &Path) -> BTreeMap<String, PathBuf> {
    let context = work.join("context");
    copy_context(&render.dir, &context);
    let mut stages: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut current = PathBuf::new();
    for (keyword, args) in instructions(&render.read("Dockerfile")) {
        match keyword.as_str() {
            "FROM" => {
                let (base, name) = from(&args);
                current = work.join("stages").join(name);
                match stages.get(base) {
                    Some(parent) => copy_tree(parent, &current),
                    None => fs::create_dir_all(current.join("app")).unwrap(),
                }
                stages.insert(name.to_owned(), current.clone());
            }
            "WORKDIR" => assert_eq!(args, "/app", "the imitation puts every work dir at app/"),
            "COPY" => {
                let words: Vec<&str> = args.split_whitespace().collect();
                match words[..] {
                    [".", "."] => copy_tree(&context, &current.join("app")),
                    [from_stage, source, destination] if from_stage.starts_with("--from=") => {
                        let stage = &stages[from_stage.trim_start_matches("--from=")];
                        let source = image_source(stage, source);
                        let mut destination = if let Some(absolute) = destination.strip_prefix('/')
                        {
                            current.join(absolute)
                        } else {
                            current.join("app").join(destination)
                        };
                        if destination.to_string_lossy().ends_with('/') || destination.is_dir() {
                            fs::create_dir_all(&destination).unwrap();
                            destination.push(source.file_name().unwrap());
                        }
                        fs::create_dir_all(destination.parent().unwrap()).unwrap();
                        fs::copy(&source, &destination).unwrap_or_else(|e| {
                            panic!(
                                "COPY {args}: {} -> {}: {e}",
                                source.display(),
                                destination.display()
                            )
                        });
                    }
                    _ => panic!("the imitation does not know COPY {args}"),
                }
            }
            "RUN" if args.starts_with("cargo install ") => {}
            "RUN" => {
                let _alone = shared_target_lock();
                run(Command::new("sh")
                    .args(["-c", &args])
                    .current_dir(current.join("app"))
                    .env("CARGO_TARGET_DIR", shared_target_dir()))
                .assert_success(&format!("RUN {args}"));
            }
            "ARG" | "LABEL" | "EXPOSE" | "USER" | "CMD" | "ENTRYPOINT" | "ENV" => {}
            _ => panic!("the imitation does not know {keyword} {args}"),
        }
    }
    stages
}

/// A folder with this machine's copies of the programs the scripts may use in the test image,
/// and nothing else: no cargo. Each is in debian:trixie-slim (bash, coreutils, grep, sed,
/// mawk); a script that needs more fails here, and the image must then provide it.
fn image_tools(work: &Path) -> PathBuf {
    const TOOLS: &[&str] = &[
        "bash", "awk", "cat", "cp", "dirname", "grep", "mkdir", "mktemp", "mv", "rm", "sed",
        "sleep", "tee", "timeout", "tr",
    ];
    let bin = work.join("image-tools");
    fs::create_dir_all(&bin).unwrap();
    for tool in TOOLS {
        std::os::unix::fs::symlink(host_program(tool), bin.join(tool)).unwrap();
    }
    bin
}

/// Where `program` is on this machine's PATH.
fn host_program(program: &str) -> PathBuf {
    let found = run(Command::new("sh").args(["-c", &format!("command -v {program}")]));
    found.assert_success(&format!("{program} on PATH"));
    PathBuf::from(found.stdout.trim())
}

/// Where the file a `COPY --from` takes from `stage` is here.
fn image_source(stage: &Path, path: &str) -> PathBuf {
    if let Some(built) = path.strip_prefix("/app/target/") {
        shared_target_dir().join(built)
    } else if let Some(tool) = path.strip_prefix("/usr/local/cargo/bin/") {
        host_program(tool)
    } else if path.starts_with("/etc/") {
        PathBuf::from(path)
    } else {
        stage.join(path.trim_start_matches('/'))
    }
}
