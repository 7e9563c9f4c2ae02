//! The `run-tests-*.sh` scripts: executable and clean under shellcheck, and with cargo in a
//! checkout each runs exactly the tests of its kinds (chosen by name, as PIPEFORCE's Python
//! template does), prints the JUnit report it keeps, and fails on a failing test or a
//! formatting mistake.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use template_tests::{Output, run, shared_target_dir, shared_target_lock};

use super::{SHIPPING, copy_context, junit::report};
use crate::DEFAULT_RENDER;

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

/// A test's kind, by the convention of PIPEFORCE's Python template: by its function's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    Unit,
    Integration,
    Performance,
}

impl Kind {
    pub(super) fn of(test: &str) -> Self {
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
pub(super) const SCRIPTS: [(&str, &[Kind]); 4] = [
    ("unit", &[Kind::Unit]),
    ("integration", &[Kind::Unit, Kind::Integration]),
    ("performance", &[Kind::Performance]),
    ("all", &[Kind::Unit, Kind::Integration, Kind::Performance]),
];

/// A test, as nextest names it in a report: binary id (`classname`) and test name.
pub(super) type TestId = (String, String);

/// Every test nextest would run, listed by `command` (a `cargo nextest list`) in `dir`.
pub(super) fn listed_tests(command: &mut Command, dir: &Path) -> BTreeSet<TestId> {
    let output = run(command.args(["--message-format", "json"]).current_dir(dir));
    output.assert_success("cargo nextest list");
    parse_listing(&output.stdout)
}

/// The tests, not ignored, in nextest's JSON listing (`--message-format json`).
pub(super) fn parse_listing(json: &str) -> BTreeSet<TestId> {
    let listing: Value = serde_json::from_str(json).expect("nextest's JSON listing");
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

pub(super) fn expected_tests(listed: &BTreeSet<TestId>, kinds: &[Kind]) -> BTreeSet<TestId> {
    listed
        .iter()
        .filter(|(_, name)| kinds.contains(&Kind::of(name)))
        .cloned()
        .collect()
}
