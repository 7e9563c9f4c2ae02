//! A bounded cargo-fuzz (libFuzzer) run of the rendered service's message path:
//! `fuzz/fuzz_targets/decode_message.rs` feeds arbitrary bodies to the registered handlers.
//!
//! cargo-fuzz passes nightly-only flags to rustc; `RUSTC_BOOTSTRAP=1` lets the stable
//! toolchain accept them. No sanitizer: the framework and the service are safe Rust, and
//! libFuzzer's coverage guidance works without one.

use std::{process::Command, time::Duration};

use template_tests::{run_with_timeout, shared_target_dir, shared_target_lock};

use crate::DEFAULT_RENDER;

#[test]
fn the_message_path_survives_a_bounded_fuzzing_run() {
    let target = shared_target_dir().with_file_name("fuzz");
    let project = &DEFAULT_RENDER.dir;
    // Building and fuzzing keep both cores busy: held like a build in the shared target dir,
    // so that the tests that measure (chaos, cluster) do not run beside it.
    let _busy = shared_target_lock();
    let output = run_with_timeout(
        Command::new("cargo")
            .current_dir(project)
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_DIR", &target)
            .args(["fuzz", "run", "decode_message", "--sanitizer", "none", "--"])
            .args(["-max_total_time=30", "-rss_limit_mb=2048"]),
        Duration::from_secs(1500),
    );

    assert!(
        output.status.success(),
        "cargo fuzz (ci/test installs it) failed or found a crash:\n{}\n{}",
        output.stdout,
        output
            .stderr
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let runs = output
        .stderr
        .lines()
        .find_map(|line| {
            line.strip_prefix("Done ")?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .expect("libFuzzer reports its runs");
    assert!(runs > 10_000, "only {runs} runs");
}
