//! Imitating `docker build`, since no Docker engine runs here: the instructions run outside
//! Docker in the Dockerfile's order, one folder per stage, `RUN` commands building into the
//! shared target dir. The test stage's folder is then the test image, where the scripts run
//! the test archive with no cargo on PATH. This module goes away once real images are built.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use template_tests::{Rendered, run, shared_target_dir, shared_target_lock};

use super::{
    SHIPPING, copy_context,
    dockerfile::{from, instructions},
    junit::report,
    scripts::{Kind, SCRIPTS, expected_tests, listed_tests},
};

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

/// Copies a folder with `cp -a`, which keeps modes and times as `docker build`'s COPY does.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    run(Command::new("cp").arg("-a").arg(from.join(".")).arg(to)).assert_success("cp -a");
}
