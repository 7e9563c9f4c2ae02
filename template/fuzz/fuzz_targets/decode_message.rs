//! Feeds arbitrary messages to the service's registered handlers, through the same matching,
//! decoding, retrying and dead-lettering code the consumer runs: whatever arrives must end
//! handled or dead-lettered with a reason, and never panic.
//!
//! The first byte picks a routing key, the rest is the body.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pipeforce::{messaging::Outcome, testing::TestBroker};

use {{crate_name}}::service::{self, GREETING_KEY};

const KEYS: [&str; 5] = [
    GREETING_KEY,
    "pipeforce.webhook.foo.hoho",
    "pipeforce.webhook.foo",
    "pipeforce.webhook.foo.a.b",
    "",
];

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
});

static BROKER: LazyLock<TestBroker> = LazyLock::new(|| TestBroker::new(service::register));

fuzz_target!(|input: &[u8]| {
    let Some((selector, body)) = input.split_first() else {
        return;
    };
    let key = KEYS[usize::from(*selector) % KEYS.len()];
    let delivered = RUNTIME.block_on(BROKER.deliver(key, body.to_vec()));
    match delivered.outcome {
        Outcome::Handled { .. } => {}
        Outcome::DeadLettered { reason, .. } => assert!(!reason.is_empty()),
        Outcome::Abandoned => panic!("abandoned outside a shutdown"),
    }
});
