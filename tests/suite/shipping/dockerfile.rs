//! The Dockerfile as text: hadolint finds nothing, the stages, the pinned toolchain, the
//! locked build, the unprivileged minimal runtime image and its labels, and `.dockerignore`.
//! (`images.rs` builds and runs it.)

use std::process::Command;

use template_tests::run;

use crate::DEFAULT_RENDER;

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
    let builder = stage_instructions(&instructions, "builder");
    assert!(
        builder.iter().any(|(keyword, args)| keyword == "RUN"
            && args.ends_with(" cargo build --release --locked --bin orders")),
        "{builder:?}"
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
