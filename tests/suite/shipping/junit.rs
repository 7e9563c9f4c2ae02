//! Reading the JUnit reports the run-tests scripts print.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{
    python,
    scripts::{Kind, TestId},
};

/// A JUnit report as the scripts print it.
#[derive(Debug)]
pub(super) struct Report {
    tests: usize,
    pub(super) failures: usize,
    skipped: usize,
    pub(super) cases: Vec<Case>,
}

#[derive(Debug, Clone)]
pub(super) struct Case {
    classname: String,
    pub(super) name: String,
    pub(super) failed: bool,
    pub(super) skipped: bool,
    /// The message of the failure or skip.
    pub(super) message: String,
    /// What the test printed.
    pub(super) out: String,
}

impl Report {
    /// The nextest tests in the report (the code-style case left out), as nextest names them;
    /// also checks that they are all of `kinds`.
    pub(super) fn tests(&self, kinds: &[Kind]) -> BTreeSet<TestId> {
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

    pub(super) fn code_style(&self) -> Option<&Case> {
        self.cases
            .iter()
            .find(|case| case.classname == "code-style")
    }

    pub(super) fn case(&self, name: &str) -> Option<&Case> {
        self.cases.iter().find(|case| case.name == name)
    }
}

/// Parses a JUnit report with Python's XML parser, which rejects a malformed one, and checks
/// that the totals of `<testsuites>` agree with its test cases.
pub(super) fn report(xml: &str) -> Report {
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
