//! The rhai hooks: every rule rejects its bad inputs with its message, edge-valid inputs pass,
//! and the answers reach the rendered files.

use std::process::Command;

use template_tests::{Render, repo_root, run, staged_template};

/// A render that must fail, and fragments its message must contain.
struct Rejected {
    render: Render,
    expected: &'static [&'static str],
    why: &'static str,
}

fn rejected(render: Render, expected: &'static [&'static str], why: &'static str) -> Rejected {
    Rejected {
        render,
        expected,
        why,
    }
}

const LABEL_RULE: &str = "must be a DNS-1123 label";

fn a(n: usize) -> String {
    "a".repeat(n)
}

#[test]
fn every_rule_rejects_its_bad_inputs_with_its_message() {
    let long_name = Box::leak(a(64).into_boxed_str());
    let cases = vec![
        // service name: DNS-1123 label
        rejected(
            Render::new("Orders"),
            &[
                r#"service name "Orders""#,
                r#"contains "O""#,
                LABEL_RULE,
                "Example of a valid service name: orders",
            ],
            "uppercase",
        ),
        rejected(
            Render::new(""),
            &[r#"service name """#, "it is empty"],
            "empty",
        ),
        rejected(
            Render::new("1orders"),
            &["does not start with a letter"],
            "leading digit",
        ),
        rejected(
            Render::new("-orders"),
            &["does not start with a letter"],
            "leading dash",
        ),
        rejected(Render::new("orders-"), &["ends with '-'"], "trailing dash"),
        rejected(
            Render::new(long_name),
            &["it has 64 characters, at most 63"],
            "64 characters",
        ),
        rejected(
            Render::new("my_service"),
            &[r#"contains "_""#],
            "underscore",
        ),
        rejected(Render::new("my.service"), &[r#"contains ".""#], "dot"),
        rejected(
            Render::new("order--service"),
            &[r#"contains "--""#, "two '-' in a row"],
            "double dash",
        ),
        // injection attempts fail the same rule
        rejected(Render::new("my service"), &[r#"contains " ""#], "space"),
        rejected(Render::new("a\"b"), &[r#"contains "\"""#], "double quote"),
        rejected(Render::new("a'b"), &[r#"contains "'""#], "single quote"),
        rejected(
            Render::new("a\nb"),
            &[r#""a\nb""#, r#"contains "\n""#],
            "newline",
        ),
        rejected(Render::new("a/b"), &[r#"contains "/""#], "slash"),
        rejected(Render::new("a{{b}}"), &[r#"contains "{""#], "liquid braces"),
        rejected(Render::new("a$b"), &[r#"contains "$""#], "dollar"),
        rejected(Render::new("a;rm"), &[r#"contains ";""#], "semicolon"),
        // service name: names that would not build
        rejected(Render::new("fn"), &["it is a Rust keyword"], "keyword"),
        rejected(
            Render::new("self"),
            &["it is a Rust keyword"],
            "keyword self",
        ),
        rejected(
            Render::new("pipeforce"),
            &["already has a crate or binary of that name"],
            "framework crate",
        ),
        rejected(
            Render::new("build"),
            &["cargo reserves it"],
            "cargo target dir name",
        ),
        rejected(
            Render::new("test"),
            &["cargo reserves it"],
            "built-in crate",
        ),
        // namespace: DNS-1123 label
        rejected(
            Render::new("orders").namespace("Acme"),
            &[
                r#"namespace "Acme""#,
                r#"contains "A""#,
                LABEL_RULE,
                "Example of a valid namespace: acme",
            ],
            "uppercase namespace",
        ),
        rejected(
            Render::new("orders").namespace(""),
            &[r#"namespace """#, "it is empty"],
            "empty namespace",
        ),
        rejected(
            Render::new("orders").namespace("9acme"),
            &["does not start with a letter"],
            "namespace leading digit",
        ),
        rejected(
            Render::new("orders").namespace("acme-"),
            &["ends with '-'"],
            "namespace trailing dash",
        ),
        rejected(
            Render::new("o").namespace(long_name),
            &["it has 64 characters"],
            "namespace 64 characters",
        ),
        rejected(
            Render::new("orders").namespace("{{x}}"),
            &[r#"contains "{""#],
            "namespace liquid",
        ),
        rejected(
            Render::new("orders").namespace("a$b"),
            &[r#"contains "$""#],
            "namespace dollar",
        ),
        rejected(
            Render::new("orders").namespace("a/b"),
            &[r#"contains "/""#],
            "namespace slash",
        ),
        rejected(
            Render::new("orders").namespace("a b"),
            &[r#"contains " ""#],
            "namespace space",
        ),
        rejected(
            Render::new("orders").namespace("a'b"),
            &[r#"contains "'""#],
            "namespace quote",
        ),
        // the ingress host label <service>-<namespace>
        rejected(
            Render::new(&a(32)).namespace(&a(31)),
            &["too long together", "has 64 characters", "at most 63"],
            "ingress label 64",
        ),
        rejected(
            Render::new(&a(63)).namespace("b"),
            &["too long together", "has 65 characters"],
            "63-character name passes its own rule, then fails the pair",
        ),
        // registry
        rejected(
            Render::new("orders").define("registry", "https://ghcr.io/acme"),
            &[
                r#"registry "https://ghcr.io/acme""#,
                "it has a scheme",
                "Example of a valid registry",
            ],
            "scheme",
        ),
        rejected(
            Render::new("orders").define("registry", "Ghcr.io"),
            &[r#"contains "G""#],
            "uppercase host",
        ),
        rejected(
            Render::new("orders").define("registry", "ghcr.io/"),
            &["empty path component"],
            "trailing slash",
        ),
        rejected(
            Render::new("orders").define("registry", "ghcr.io//acme"),
            &["empty path component"],
            "double slash",
        ),
        rejected(
            Render::new("orders").define("registry", "ghcr.io/Acme"),
            &[r#"contains "A""#],
            "uppercase path",
        ),
        rejected(
            Render::new("orders").define("registry", "ghcr.io:99999"),
            &["not a number from 1 to 65535"],
            "port out of range",
        ),
        rejected(
            Render::new("orders").define("registry", "ghcr.io:abc"),
            &["not a number from 1 to 65535"],
            "port not a number",
        ),
        rejected(
            Render::new("orders").define("registry", "ghcr.io/a b"),
            &[r#"contains " ""#],
            "space in path",
        ),
        rejected(
            Render::new("orders").define("registry", "ghcr.io/{{x}}"),
            &[r#"contains "{""#],
            "liquid in path",
        ),
        rejected(
            Render::new("orders").define("registry", "-ghcr.io"),
            &["starts or ends with '-'"],
            "host label dash",
        ),
        // http_port
        rejected(
            Render::new("orders").define("http_port", "0"),
            &[
                r#"http_port "0""#,
                "from 1 to 65535",
                "Example of a valid http_port: 8080",
            ],
            "port 0",
        ),
        rejected(
            Render::new("orders").define("http_port", "65536"),
            &["from 1 to 65535"],
            "port too big",
        ),
        rejected(
            Render::new("orders").define("http_port", "80a"),
            &["from 1 to 65535"],
            "port not a number",
        ),
        // what .pipeforce-template.toml records for scripts/upgrade-template.sh
        rejected(
            Render::new("orders").define("template_revision", "main"),
            &[
                r#"template_revision "main" is not valid"#,
                "must be a commit id",
            ],
            "revision is a branch",
        ),
        rejected(
            Render::new("orders").define("template_source", "https://x/\"y\""),
            &[r#"template_source "https://x/\"y\"" is not valid"#],
            "source with quotes",
        ),
    ];

    let mut failures = Vec::new();
    for case in cases {
        match case.render.run() {
            Ok(_) => failures.push(format!("{}: accepted {:?}", case.why, case.render)),
            Err(failure) => {
                for fragment in case.expected {
                    if !failure.output.contains(fragment) {
                        failures.push(format!(
                            "{}: message lacks {fragment:?}:\n{}",
                            case.why, failure.output
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn edge_valid_answers_are_accepted() {
    let cases = [
        (Render::new("a").namespace("b"), "single letters"),
        (Render::new("a1").namespace("n2-3"), "digits"),
        (
            Render::new("order-service-2").namespace("acme-prod"),
            "dashes inside",
        ),
        (
            Render::new(&a(31)).namespace(&a(31)),
            "ingress label of exactly 63",
        ),
        (
            Render::new("o").namespace(&a(61)),
            "long namespace within the pair limit",
        ),
        (
            Render::new("tokio-worker").namespace("acme"),
            "reserved word as a part",
        ),
        (
            Render::new("orders").define("http_port", "65535"),
            "highest port",
        ),
        (
            Render::new("orders").define("registry", "localhost:5000"),
            "host and port",
        ),
        (
            Render::new("orders").define(
                "registry",
                "registry.example.com:5000/team/sub_group.x-y__z",
            ),
            "every path separator",
        ),
    ];
    for (render, why) in cases {
        if let Err(failure) = render.run() {
            panic!("{why}: {render:?} was rejected:\n{}", failure.output);
        }
    }
}

#[test]
fn the_image_name_defaults_to_pipeforce_s_registry_for_the_namespace() {
    let rendered = Render::new("billing").namespace("acme").run().unwrap();

    assert!(
        rendered
            .read("README.md")
            .contains("us-east1-docker.pkg.dev/pipeforce/acme/billing")
    );
}

#[test]
fn a_custom_registry_and_port_reach_the_rendered_files() {
    let rendered = Render::new("billing")
        .namespace("acme")
        .define("registry", "ghcr.io/acme-corp")
        .define("http_port", "9090")
        .run()
        .unwrap();

    let readme = rendered.read("README.md");
    assert!(readme.contains("ghcr.io/acme-corp/billing"), "{readme}");
    // PIPEFORCE's registry is still named where the README explains pull secrets, but no
    // image of this service points there.
    assert!(
        !readme.contains("us-east1-docker.pkg.dev/pipeforce/acme"),
        "{readme}"
    );
    assert!(rendered.read("src/lib.rs").contains("http_port: 9090"));
}

/// A reserved name that the hook misses would only show up as a build failure for the one user
/// who picks it; this keeps the list in step with the manifests.
#[test]
fn every_crate_name_the_workspace_uses_is_rejected_as_a_service_name() {
    let template = repo_root().join("template");
    let manifest: toml::Table = std::fs::read_to_string(template.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let mut names: Vec<String> = ["dependencies", "dev-dependencies"]
        .iter()
        .filter_map(|table| manifest.get(*table).and_then(|t| t.as_table()))
        .flat_map(|table| table.keys().cloned())
        .collect();
    for member in std::fs::read_dir(template.join("crates")).unwrap() {
        let member: toml::Table =
            std::fs::read_to_string(member.unwrap().path().join("Cargo.toml"))
                .unwrap()
                .parse()
                .unwrap();
        names.push(member["package"]["name"].as_str().unwrap().to_owned());
    }
    if let Ok(bins) = std::fs::read_dir(template.join("src/bin")) {
        for bin in bins {
            let path = bin.unwrap().path();
            names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    // Names with '_' cannot be service names anyway.
    names.retain(|name| !name.contains('_'));
    assert!(names.len() >= 4, "found the manifests' names: {names:?}");

    for name in names {
        let failure = match Render::new(&name).run() {
            Ok(_) => panic!("service name {name:?} was accepted, but the workspace uses it"),
            Err(failure) => failure,
        };
        assert!(
            failure.output.contains("so the project would not build"),
            "{name}: {}",
            failure.output
        );
    }
}

#[test]
fn the_interactive_path_asks_exactly_two_questions() {
    let destination = tempfile::tempdir().unwrap();
    let generate = format!(
        "cargo generate --path '{}' template --vcs none",
        staged_template().display()
    );
    // `script` gives cargo-generate the terminal its prompts need; the answers come from stdin.
    let mut child = Command::new("script")
        .args(["-qec", &generate, "/dev/null"])
        .current_dir(destination.path())
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"shop\nacme\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);

    assert!(
        output.status.success(),
        "interactive render failed:\n{printed}"
    );
    let mut questions: Vec<String> = printed
        .lines()
        .filter_map(|line| line.split_once("🤷").map(|(_, rest)| rest.to_owned()))
        .map(|question| strip_ansi(&question))
        .map(|question| {
            question
                .split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect();
    questions.dedup(); // the terminal redraws a prompt once it is answered
    assert_eq!(
        questions,
        [
            "Project Name",
            "PIPEFORCE namespace (lowercase letters, digits and '-', e.g. acme)"
        ],
        "{printed}"
    );
    let lib = std::fs::read_to_string(destination.path().join("shop/src/lib.rs")).unwrap();
    assert!(lib.contains(r#"namespace: "acme""#), "{lib}");
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // skip to the end of the escape sequence: a letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn the_git_form_renders_the_same_template() {
    // A throwaway git repository of the template's files stands in for the GitHub URL.
    let repository = tempfile::tempdir().unwrap();
    for entry in ["cargo-generate.toml", "hooks", "template"] {
        run(Command::new("cp")
            .arg("-R")
            .arg(staged_template().join(entry))
            .arg(repository.path()))
        .assert_success("copy");
    }
    let git = |args: &[&str]| {
        run(Command::new("git")
            .current_dir(repository.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args))
        .assert_success("git");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "template"]);
    let destination = tempfile::tempdir().unwrap();

    run(Command::new("cargo")
        .env("RUST_BACKTRACE", "0")
        .args(["generate", "--git"])
        .arg(format!("file://{}", repository.path().display()))
        .args(["template", "--name", "orders", "--silent", "--vcs", "none"])
        .args(["-d", "namespace=acme", "--destination"])
        .arg(destination.path()))
    .assert_success("cargo generate --git");

    let lib = std::fs::read_to_string(destination.path().join("orders/src/lib.rs")).unwrap();
    assert!(lib.contains(r#"service: "orders""#), "{lib}");
}

/// The hooks' rules written again in Rust, as the specification the generated cases are
/// judged by.
mod spec {
    use template_tests::is_dns_label as dns_label;

    /// The reserved names, read from the `reserved_reason` lists of hooks/rules.rhai.
    pub fn reserved() -> Vec<String> {
        let rules =
            std::fs::read_to_string(template_tests::repo_root().join("hooks/rules.rhai")).unwrap();
        let start = rules
            .find("fn reserved_reason")
            .expect("reserved_reason in rules.rhai");
        let body = &rules[start..];
        let body = &body[..body.find("\n}\n").unwrap()];
        body.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .filter(|word| dns_label(word))
            .collect()
    }

    pub fn accepts(name: &str, namespace: &str, reserved: &[String]) -> bool {
        dns_label(name)
            && !name.contains("--")
            && dns_label(namespace)
            && !reserved.iter().any(|word| word == name)
            && name.len() + 1 + namespace.len() <= 63
    }
}

/// A small deterministic generator: the cases are the same on every run.
struct Cases(u64);

impl Cases {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A well-formed label of `length` characters: a letter, then letters, digits and
    /// single '-', ending with a letter or digit.
    fn label(&mut self, length: usize) -> String {
        let mut label = String::new();
        while label.len() < length {
            let last = label.chars().last();
            let pick = self.below(36);
            let c = match pick {
                _ if label.is_empty() => char::from(b'a' + self.below(26) as u8),
                0..26 => char::from(b'a' + pick as u8),
                26..33 => char::from(b'0' + (pick - 26) as u8),
                _ if last == Some('-') || label.len() + 1 == length => 'x',
                _ => '-',
            };
            label.push(c);
        }
        label
    }

    /// A name: well-formed three times in four, otherwise broken in one of many ways.
    fn name(&mut self, reserved: &[String]) -> String {
        let length = match self.below(4) {
            0 => 1 + self.below(3),
            1 => 25 + self.below(40),
            _ => 2 + self.below(20),
        };
        let mut name = self.label(length);
        match self.below(16) {
            0 => reserved[self.below(reserved.len())].clone(),
            1 => format!("{}{name}", self.below(10)),
            2 => format!("{name}-"),
            3 => name.replacen('-', "--", 1) + "--a",
            4 => {
                let broken = ['A', '_', ' ', '.', '/', '{', '$', '\'', '"', '\n', 'é', '*'];
                let at = self.below(name.len() + 1);
                name.insert(at, broken[self.below(broken.len())]);
                name
            }
            5 if self.below(3) == 0 => String::new(),
            _ => name,
        }
    }
}

#[test]
fn generated_answers_are_accepted_exactly_when_the_rules_allow_them() {
    let reserved = spec::reserved();
    assert!(reserved.len() > 50, "read the reserved names: {reserved:?}");
    let mut cases = Cases(0x9e37_79b9_7f4a_7c15);
    let mut accepted = Vec::new();
    let mut rejected = 0;
    let mut mistakes = Vec::new();

    for _ in 0..120 {
        let name = cases.name(&reserved);
        let namespace = cases.name(&reserved);
        let expected = spec::accepts(&name, &namespace, &reserved);
        match (expected, Render::new(&name).namespace(&namespace).run()) {
            (true, Ok(rendered)) => {
                // The manifest of an accepted name is one cargo reads.
                rendered
                    .cargo(&[
                        "metadata",
                        "--format-version",
                        "1",
                        "--no-deps",
                        "--offline",
                    ])
                    .assert_success(&format!("cargo metadata for {name:?}"));
                accepted.push((name, namespace));
            }
            (false, Err(_)) => rejected += 1,
            (true, Err(failure)) => mistakes.push(format!(
                "rejected {name:?} / {namespace:?}:\n{}",
                failure.output
            )),
            (false, Ok(_)) => mistakes.push(format!("accepted {name:?} / {namespace:?}")),
        }
    }

    assert!(mistakes.is_empty(), "{}", mistakes.join("\n"));
    assert!(
        accepted.len() >= 30 && rejected >= 30,
        "the generator covers both sides: {} accepted, {rejected} rejected",
        accepted.len()
    );
}

/// The longest name the rules allow (with a one-letter namespace) renders into a project that
/// compiles and is formatted: names appear in code, where their length could matter.
#[test]
fn the_longest_allowed_name_renders_a_project_that_builds_and_is_formatted() {
    let name = format!("a{}00", "0-".repeat(29));
    assert_eq!(name.len() + "-n".len(), 63, "the ingress label limit");
    let rendered = Render::new(&name).namespace("n").run().unwrap();

    rendered
        .cargo(&["fmt", "--all", "--check"])
        .assert_success("cargo fmt --check");
    rendered
        .cargo(&["check", "--locked", "--all-targets"])
        .assert_success("cargo check");
}
