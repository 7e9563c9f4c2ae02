//! Shipping a render: its Dockerfile, its run-tests scripts and its CI files, one module per
//! concern. `ci/test` installs what they need: hadolint, shellcheck, actionlint, PyYAML,
//! cargo-nextest and podman (the base images are made on first use, see `images.rs`).

mod ci_files;
mod dockerfile;
mod images;
mod junit;
mod scripts;

use std::{fs, path::Path, process::Command, sync::LazyLock};

use serde_json::Value;
use template_tests::{Render, Rendered, run};

/// The render that is built here, named apart from the default render so that its binaries
/// never replace the default render's in the shared target dir.
static SHIPPING: LazyLock<Rendered> = LazyLock::new(|| {
    Render::new("shipping")
        .run()
        .unwrap_or_else(|failure| panic!("render failed:\n{}", failure.output))
});

// Helpers more than one concern uses.

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
