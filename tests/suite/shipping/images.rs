//! The rendered Dockerfile built for real, with podman on base images made from Debian
//! (`ci/lib.sh`), and both images run: the service hardened against the local RabbitMQ, the
//! test image's scripts with no Rust toolchain in it. Builds run in containers with their own
//! target dir, so nothing here takes the shared target dir's lock. Figures (sizes, build
//! times) are printed: see them with `--nocapture`.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::json;
use tempfile::TempDir;
use template_tests::{
    ServiceProcess,
    amqp::{Broker, Names},
    podman::{self, Build},
};

use super::{
    SHIPPING, copy_context,
    junit::report,
    scripts::{Kind, TestId, expected_tests},
};

/// Where the suite tags what it builds.
const REPOSITORY: &str = "localhost/pipeforce-template-suite/shipping";

/// Both images of the shipping render, tagged apart from other runs of the suite that may
/// share the storage. Left tagged at exit (what they hold is the next run's layer cache anyway)
/// and untagged by a run a day later.
struct Images {
    service: String,
    tests: String,
    /// The build context, kept for the rebuild after a change to the code.
    context: TempDir,
}

/// One test for all of it, so that the builds (minutes from cold) hold one test thread, not
/// every thread while the others wait for them: the rest of the suite goes on beside it.
#[tokio::test]
async fn the_rendered_dockerfile_builds_both_images_and_they_work_as_documented() {
    let images = build_images();
    the_service_image_holds_no_shell_and_no_package_manager(&images);
    the_service_image_runs_hardened_answers_a_greeting_and_stops_on_sigterm(&images).await;
    the_test_image_runs_the_tests_without_a_rust_toolchain(&images);
    a_change_to_the_code_rebuilds_on_the_cached_dependency_layer(&images);
}

fn build_images() -> Images {
    let started = Instant::now();
    podman::ensure_base_images();
    println!("base images ready after {:.0?}", started.elapsed());
    let context = tempfile::Builder::new()
        .prefix("pipeforce-image-")
        .tempdir()
        .unwrap();
    copy_context(&SHIPPING.dir, context.path());
    podman::remove_stale_images(REPOSITORY);
    let service = podman::run_tag(REPOSITORY);
    let images = Images {
        tests: format!("{service}-tests"),
        service,
        context,
    };
    for (target, tag) in [("runtime", &images.service), ("test", &images.tests)] {
        let build = podman::build(images.context.path(), target, tag);
        println!(
            "image {target}: built in {:.0?}, {} MB",
            build.elapsed,
            podman::image_size(tag) / 1_000_000
        );
    }
    images
}

/// Run as a cluster runs it, against the local RabbitMQ.
async fn the_service_image_runs_hardened_answers_a_greeting_and_stops_on_sigterm(images: &Images) {
    let names = Names::unique();
    let container = podman::ContainerName(format!("pipeforce-{}", names.service));
    let dir = tempfile::tempdir().unwrap();
    let script = podman::hardened_run_script(
        dir.path(),
        &images.service,
        &container.0,
        &[
            "PIPEFORCE_HTTP_HOST",
            "PIPEFORCE_HTTP_PORT",
            "RUST_LOG",
            "NO_COLOR",
            "PIPEFORCE_SERVICE",
            "PIPEFORCE_MESSAGING_DEFAULT_TOPIC",
            "PIPEFORCE_MESSAGING_DEFAULT_DLQ",
        ],
    );
    let env = names.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let broker = Broker::connect().await;

    let mut service = ServiceProcess::start(&script, &env);
    service
        .wait_for_status("/health/ready", 200, Duration::from_secs(60))
        .await;
    let reply = broker
        .request(
            &names.exchange,
            "shipping.greeting",
            &json!({ "name": "Ada" }),
            Duration::from_secs(10),
        )
        .await;
    service.signal(Signal::SIGTERM);
    let status = service.wait_for_exit(Duration::from_secs(15)).await;
    let logs = service.logs();
    drop(service);
    drop(container);
    broker.delete(&names).await;

    assert_eq!(
        reply.as_ref().map(|reply| &reply["text"]),
        Some(&json!("Hello, Ada!")),
        "{logs}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{logs}");
}

fn the_service_image_holds_no_shell_and_no_package_manager(images: &Images) {
    let files = podman::image_files(&images.service);
    assert!(
        files.iter().any(|file| file == "usr/local/bin/shipping"),
        "no service binary in {files:?}"
    );
    let programs: Vec<&String> = files
        .iter()
        .filter(|file| {
            let name = file.rsplit('/').next().unwrap_or(file);
            [
                "sh", "bash", "dash", "busybox", "apt", "apt-get", "dpkg", "apk",
            ]
            .contains(&name)
        })
        .collect();
    assert!(programs.is_empty(), "the service image holds {programs:?}");
    println!(
        "service image: {} MB",
        podman::image_size(&images.service) / 1_000_000
    );
}

/// The scripts run the archived tests with the image's own nextest; each JUnit report lists
/// exactly the tests of its kinds that nextest lists in the archive.
fn the_test_image_runs_the_tests_without_a_rust_toolchain(images: &Images) {
    let toolchain = podman::run_in(
        &images.tests,
        &[],
        &[
            "bash",
            "-c",
            "for tool in cargo rustc rustup; do command -v $tool; done; echo searched",
        ],
    );
    assert_eq!(
        toolchain.stdout.trim(),
        "searched",
        "a Rust toolchain in the test image: {toolchain:?}"
    );
    let listed = listed_in_image(&images.tests);

    for (script, kinds) in [
        ("unit", &[Kind::Unit][..]),
        ("integration", &[Kind::Unit, Kind::Integration]),
        ("performance", &[Kind::Performance]),
    ] {
        let output = podman::run_in(&images.tests, &[], &[&format!("./run-tests-{script}.sh")]);
        output.assert_success(&format!("run-tests-{script}.sh in the test image"));
        let report = report(&output.stdout);
        assert_eq!(report.failures, 0, "{script}: {report:?}");
        assert_eq!(
            report.tests(kinds),
            expected_tests(&listed, kinds),
            "{script}: tests run"
        );
        if script == "performance" {
            let measured = report
                .case("test_performance_greeting_throughput")
                .expect("the performance example ran");
            assert!(measured.out.contains("messages/s"), "{measured:?}");
        } else {
            let style = report.code_style().expect("a code-style test case");
            assert!(style.skipped, "{style:?}");
            assert!(style.message.contains("no Rust toolchain"), "{style:?}");
        }
    }
    println!(
        "test image: {} MB",
        podman::image_size(&images.tests) / 1_000_000
    );
}

/// A change to the code only rebuilds the code: the dependencies' layer comes from the cache.
fn a_change_to_the_code_rebuilds_on_the_cached_dependency_layer(images: &Images) {
    let context = tempfile::tempdir().unwrap();
    copy_context(images.context.path(), context.path());
    // Unique, so that the edited code is never in the cache from an earlier run.
    let mark = uuid::Uuid::new_v4().simple().to_string();
    append(
        &context.path().join("src/service/hello.rs"),
        &format!("\n// Edited by the suite: {mark}\n"),
    );
    let tag = podman::run_tag(REPOSITORY);

    let build: Build = podman::build(context.path(), "runtime", &tag);
    podman::remove_image(&tag);
    println!(
        "image runtime, after a change to src/service/hello.rs: built in {:.0?}",
        build.elapsed
    );
    assert!(
        build.cached("cargo chef cook --release"),
        "the dependencies were built again:\n{}",
        build.log
    );
    assert!(
        !build.cached("cargo build --release"),
        "the changed code was not built:\n{}",
        build.log
    );
}

/// The tests nextest finds in the test image's archive, listed by the image's own nextest.
fn listed_in_image(image: &str) -> std::collections::BTreeSet<TestId> {
    let output = podman::run_in(
        image,
        &[],
        &[
            "cargo-nextest",
            "nextest",
            "list",
            "--archive-file",
            "tests.tar.zst",
            "--workspace-remap",
            ".",
            "--message-format",
            "json",
        ],
    );
    output.assert_success("cargo-nextest list in the test image");
    super::scripts::parse_listing(&output.stdout)
}

fn append(file: &Path, text: &str) {
    let mut content = fs::read_to_string(file).unwrap();
    content.push_str(text);
    fs::write(file, content).unwrap();
}
