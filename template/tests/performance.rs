//! Performance tests (`test_performance_*`, run by `run-tests-performance.sh`): they measure
//! and report, and assert only what must hold on any machine. A wall-clock limit would fail on
//! a busy CI runner and pass on a fast laptop, so the numbers are printed for people (and kept
//! in the JUnit report) instead of being asserted.

use std::time::{Duration, Instant};

use pipeforce::testing::TestBroker;

use {{crate_name}}::service::{self, GREETING_KEY};

/// How many greetings go through: enough for a stable rate, little enough for a debug build.
const GREETINGS: usize = 20_000;

/// The rate at which `GreetingService::greeting` answers requests, through the same matching,
/// decoding, handler and reply encoding the service runs, without a broker: the cost of the
/// service's own code per message, one message at a time.
#[tokio::test]
async fn test_performance_greeting_throughput() {
    // Arrange
    let broker = TestBroker::new(service::register);
    let greeting = service::Greeting {
        name: "Ada".to_owned(),
    };
    let mut latencies = Vec::with_capacity(GREETINGS);
    let mut last_reply = None;

    // Act
    let started = Instant::now();
    for _ in 0..GREETINGS {
        let sent = Instant::now();
        let delivered = broker.request_json(GREETING_KEY, &greeting).await;
        latencies.push(sent.elapsed());
        last_reply = delivered.replies().pop();
    }
    let elapsed = started.elapsed();

    // Assert: every greeting was handled, so the rate is the rate of real work.
    let reply: service::GreetingReply =
        serde_json::from_value(last_reply.expect("the last greeting was answered")).unwrap();
    assert_eq!(reply.text, "Hello, Ada!");
    assert_eq!(reply.greetings_so_far, GREETINGS as u64);

    latencies.sort_unstable();
    let rate = GREETINGS as f64 / elapsed.as_secs_f64();
    // Debug and release builds differ by an order of magnitude here: say which one this was.
    let build = if cfg!(debug_assertions) {
        "unoptimised build"
    } else {
        "optimised build"
    };
    println!(
        "greeting throughput: {rate:.0} messages/s ({GREETINGS} requests in {:.3} s, one at a \
         time, {build}); latency p50 {}, p99 {}, max {}",
        elapsed.as_secs_f64(),
        micros(percentile(&latencies, 50)),
        micros(percentile(&latencies, 99)),
        micros(latencies[latencies.len() - 1]),
    );
}

/// The `p`th percentile of sorted, non-empty `latencies`.
fn percentile(latencies: &[Duration], p: usize) -> Duration {
    latencies[(latencies.len() * p / 100).min(latencies.len() - 1)]
}

fn micros(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}
