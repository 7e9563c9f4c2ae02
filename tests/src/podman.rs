//! Real images: a render's Dockerfile built with podman and what it built run, through
//! `ci/podman`, so that the storage (kept between runs: base images, layer cache) and the
//! settings this machine needs have one owner, `ci/lib.sh`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::LazyLock,
    time::{Duration, Instant},
};

use crate::{Output, repo_root, run};

/// `ci/podman`: podman with the template's storage and settings.
pub fn podman() -> Command {
    Command::new(repo_root().join("ci").join("podman"))
}

/// Makes sure podman runs here and the base images the Dockerfile names exist: `ci/lib.sh`
/// makes them from Debian on first use (minutes) and keeps them. Panics, saying why, when
/// podman cannot run here: a test of images never passes without images.
pub fn ensure_base_images() {
    static READY: LazyLock<Result<(), String>> = LazyLock::new(|| {
        let output = run(Command::new("bash")
            .args(["-c", r#". "$0" && ensure_base_images"#])
            .arg(repo_root().join("ci").join("lib.sh")));
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "podman cannot build images here ({}):\n{}{}",
                output.status, output.stdout, output.stderr
            ))
        }
    });
    if let Err(why) = &*READY {
        panic!("{why}");
    }
}

/// One `podman build` that succeeded: what it printed, and how long it took.
#[derive(Debug)]
pub struct Build {
    /// Everything it printed: the steps and their output.
    pub log: String,
    pub elapsed: Duration,
}

impl Build {
    /// Whether the step whose instruction contains `instruction` came from the layer cache:
    /// podman prints `--> Using cache <id>` under such a step.
    pub fn cached(&self, instruction: &str) -> bool {
        let mut lines = self.log.lines();
        lines
            .by_ref()
            .find(|line| is_step(line) && line.contains(instruction))
            .unwrap_or_else(|| panic!("no build step with {instruction:?}:\n{}", self.log));
        // The step's own outcome is the first `-->` line under it: `--> Using cache <id>`,
        // or the new layer's `--> <id>`. Other stages' lines may follow it before any step
        // line does, cached ones among them.
        lines
            .take_while(|line| !is_step(line))
            .find(|line| line.starts_with("--> "))
            .is_some_and(|outcome| outcome.starts_with("--> Using cache"))
    }
}

/// A line where podman starts a step: `STEP 2/3: RUN ...`, in a multi-stage build prefixed
/// with the stage, `[1/8] STEP 2/3: RUN ...`.
fn is_step(line: &str) -> bool {
    let line = match line.strip_prefix('[') {
        Some(staged) => staged.split_once("] ").map_or("", |(_, rest)| rest),
        None => line,
    };
    line.starts_with("STEP ")
}

/// Builds `target` of the Dockerfile in `context` as `tag`, with the layer cache and without
/// pulling anything; panics with the build's output when it fails.
pub fn build(context: &Path, target: &str, tag: &str) -> Build {
    let start = Instant::now();
    // One stream, so that each step's lines stay under it. At the lowest priority: a cold
    // build compiles for many minutes beside tests that measure the broker (chaos, cluster),
    // and the build's containers inherit it.
    let output = run(Command::new("sh")
        .args(["-c", r#"exec nice -n 19 "$0" "$@" 2>&1"#])
        .arg(repo_root().join("ci").join("podman"))
        .args([
            "build",
            "--pull=never",
            "--layers",
            "--target",
            target,
            "--tag",
            tag,
        ])
        .arg(context));
    let elapsed = start.elapsed();
    output.assert_success(&format!("podman build --target {target}"));
    Build {
        log: output.stdout,
        elapsed,
    }
}

/// The size of an image, as podman counts it (uncompressed).
pub fn image_size(tag: &str) -> u64 {
    let output = run(podman().args(["image", "inspect", "--format", "{{.Size}}", tag]));
    output.assert_success("podman image inspect");
    output.stdout.trim().parse().expect("a size in bytes")
}

/// Every path in an image's filesystem, as `usr/bin/…` (folders end in `/`).
pub fn image_files(tag: &str) -> Vec<String> {
    let container = format!("pipeforce-files-{}", uuid::Uuid::new_v4().simple());
    run(podman().args(["create", "--pull=never", "--name", &container, tag]))
        .assert_success("podman create");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("filesystem.tar");
    let exported = run(podman()
        .args(["export", "--output"])
        .arg(&archive)
        .arg(&container));
    run(podman().args(["rm", "--force", &container]));
    exported.assert_success("podman export");
    let listing = run(Command::new("tar").arg("-tf").arg(&archive));
    listing.assert_success("tar -tf");
    listing
        .stdout
        .lines()
        .map(|path| path.trim_start_matches("./").to_owned())
        .collect()
}

/// Runs `command` in a fresh container of `image` with the host's network, as an unprivileged
/// user, and returns what it printed.
pub fn run_in(image: &str, options: &[&str], command: &[&str]) -> Output {
    run(podman()
        .args(["run", "--rm", "--pull=never", "--network", "host"])
        .args(options)
        .arg(image)
        .args(command))
}

/// Removes an image's tag; its layers stay in the cache for the next build.
pub fn remove_image(tag: &str) {
    run(podman().args(["rmi", "--force", tag]));
}

/// A script that runs `image` in the foreground, hardened as a cluster would run it: read-only
/// root filesystem, no capabilities, no privilege escalation, user 65532, the host's network
/// (for RabbitMQ on 127.0.0.1), and the given variables taken from the script's environment.
/// `podman run` forwards the signals it gets to the service and exits with its status, so the
/// script stands in for the service binary (see `ServiceProcess`). `name` names the container
/// (see [`ContainerName`]).
pub fn hardened_run_script(dir: &Path, image: &str, name: &str, variables: &[&str]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;

    let mut script = format!(
        "#!/bin/sh\nexec '{}' run --rm --pull=never --name '{name}' --read-only --cap-drop ALL \\\n    \
         --security-opt no-new-privileges --user 65532 --network host",
        repo_root().join("ci").join("podman").display()
    );
    for variable in variables {
        script.push_str(&format!(" \\\n    --env {variable}"));
    }
    script.push_str(&format!(" \\\n    '{image}'\n"));
    let path = dir.join("run-image");
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A container's name; the container is removed on drop, if it is still there (its
/// `podman run` was killed, or the test failed before it stopped).
pub struct ContainerName(pub String);

impl Drop for ContainerName {
    fn drop(&mut self) {
        run(podman().args(["rm", "--force", "--ignore", &self.0]));
    }
}

/// A tag for an image the suite builds into `repository`, unique to this run and saying when
/// it was made: `<repository>:<unix seconds>-<random>`.
pub fn run_tag(repository: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{repository}:{now}-{}", &random[..8])
}

/// Untags what earlier runs left in `repository` ([`run_tag`]s more than a day old), by tag:
/// an image itself may be older than its tag (a build all from the cache), and layers another
/// image or the cache uses stay.
pub fn remove_stale_images(repository: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tags = run(podman().args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        &format!("reference={repository}"),
    ]));
    for tag in tags.stdout.split_whitespace() {
        let made: Option<u64> = tag
            .rsplit(':')
            .next()
            .and_then(|tag| tag.split('-').next())
            .and_then(|seconds| seconds.parse().ok());
        if made.is_some_and(|made| made + 24 * 3600 < now) {
            run(podman().args(["untag", tag, tag]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps as podman 4.3 printed them for the rendered Dockerfile.
    const LOG: &str = "\
[1/8] STEP 1/3: FROM rust:1.95-slim-trixie AS chef
[1/8] STEP 2/3: RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked     cargo install cargo-chef --version 0.1.78 --locked
--> Using cache 6f1c0a2b
[3/8] STEP 3/3: RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked     cargo chef cook --release --locked --recipe-path recipe.json
--> Using cache 9d2e4f10
[4/8] STEP 3/3: RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked     cargo build --release --locked --bin shipping
   Compiling shipping v0.1.0 (/app)
--> 0b77a4f0
";

    /// The same step built, as podman printed it with the last stage's cached steps
    /// interleaved after it (the binary did not change, so its COPY came from the cache).
    const INTERLEAVED: &str = "\
[4/8] STEP 3/3: RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked     cargo build --release --locked --bin shipping
   Compiling shipping v0.1.0 (/app)
    Finished `release` profile [optimized] target(s) in 1m 57s
--> 05cdaa137db
--> Using cache 732ac30f41df
--> 732ac30f41d
[8/8] STEP 7/9: EXPOSE 8080
";

    #[test]
    fn a_built_step_is_not_taken_for_cached_by_another_stage_printed_after_it() {
        let build = Build {
            log: INTERLEAVED.to_owned(),
            elapsed: Duration::ZERO,
        };
        assert!(!build.cached("cargo build --release"));
    }

    #[test]
    fn a_step_is_cached_when_podman_says_so_under_it() {
        let build = Build {
            log: LOG.to_owned(),
            elapsed: Duration::ZERO,
        };
        assert!(build.cached("cargo install cargo-chef"));
        assert!(build.cached("cargo chef cook --release"));
        assert!(!build.cached("cargo build --release"));
    }
}
