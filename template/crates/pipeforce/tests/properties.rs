//! Property tests of the framework's inputs: routing keys and patterns, message bodies and
//! headers, and the environment. Each runs hundreds of generated cases (`PROPTEST_CASES`
//! raises the number).

use std::collections::BTreeMap;

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use pipeforce::{
    Config, Defaults, HandlerError, event,
    messaging::{Message, Outcome, Pattern},
    service,
    testing::{TEST_EXCHANGE, TestBroker},
};
use proptest::prelude::*;
use serde::Deserialize;

/// RabbitMQ's topic matching, written the obvious recursive way, to check the real matcher
/// (a dynamic programme) against.
fn reference_matches(pattern: &[&str], key: &[&str]) -> bool {
    match (pattern.split_first(), key.split_first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some((&"#", rest)), _) => {
            (0..=key.len()).any(|skip| reference_matches(rest, &key[skip..]))
        }
        (Some(_), None) => false,
        (Some((&"*", rest)), Some((_, key_rest))) => reference_matches(rest, key_rest),
        (Some((word, rest)), Some((key_word, key_rest))) => {
            word == key_word && reference_matches(rest, key_rest)
        }
    }
}

fn words(text: &str) -> Vec<&str> {
    if text.is_empty() {
        Vec::new()
    } else {
        text.split('.').collect()
    }
}

/// Patterns from a small alphabet, so that keys match them often enough to matter.
fn pattern() -> impl Strategy<Value = String> {
    let word = prop::sample::select(vec!["a", "b", "ab", "*", "#"]);
    prop::collection::vec(word, 1..6).prop_map(|words| words.join("."))
}

/// Keys from the same alphabet, including empty words, wildcard characters and the empty key.
fn key() -> impl Strategy<Value = String> {
    let word = prop::sample::select(vec!["a", "b", "ab", "", "*", "#"]);
    prop::collection::vec(word, 0..7).prop_map(|words| words.join("."))
}

proptest! {
    #[test]
    fn the_matcher_agrees_with_the_reference(pattern in pattern(), key in key()) {
        let parsed = Pattern::parse(&pattern).unwrap();
        prop_assert_eq!(
            parsed.matches(&key),
            reference_matches(&words(&pattern), &words(&key)),
            "pattern {:?} key {:?}", pattern, key
        );
    }

    #[test]
    fn any_text_either_parses_as_a_pattern_or_gets_a_reason(text in any::<String>()) {
        match Pattern::parse(&text) {
            Ok(pattern) => prop_assert_eq!(pattern.as_str(), text.as_str()),
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Order {
    #[allow(dead_code)]
    id: u64,
}

#[derive(Default)]
struct Probe;

#[service]
impl Probe {
    #[event("typed.#")]
    async fn typed(&self, _order: Order) {}

    #[event("text.#")]
    async fn text(&self, _text: String) {}

    #[event("raw.#")]
    async fn raw(&self, _bytes: Vec<u8>) {}

    #[event("failing.#")]
    async fn failing(&self, _bytes: Vec<u8>) -> Result<(), HandlerError> {
        Err(HandlerError::new("always"))
    }
}

fn header_value() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        any::<Vec<u8>>().prop_map(|bytes| AMQPValue::LongString(LongString::from(bytes))),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<bool>().prop_map(AMQPValue::Boolean),
        Just(AMQPValue::Void),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever bytes and headers arrive, dispatching ends in one outcome: handled or
    /// dead-lettered with a reason. Never a panic, never "abandoned" (that is for shutdown).
    #[test]
    fn any_body_and_headers_end_handled_or_dead_lettered(
        prefix in prop::sample::select(vec!["typed", "text", "raw", "failing", "nobody"]),
        rest in key(),
        body in any::<Vec<u8>>(),
        headers in prop::collection::btree_map("[a-z-]{1,12}", header_value(), 0..4),
        traceparent in any::<String>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let broker = TestBroker::with_retries(|services| { services.add(Probe); }, 1);
        let mut table = FieldTable::default();
        for (name, value) in headers {
            table.insert(name.as_str().into(), value);
        }
        table.insert("traceparent".into(), AMQPValue::LongString(LongString::from(traceparent)));
        let routing_key = if rest.is_empty() { prefix.to_owned() } else { format!("{prefix}.{rest}") };
        let message = Message::new(TEST_EXCHANGE, routing_key.as_str(), body.clone())
            .with_properties(BasicProperties::default().with_headers(table));

        let delivered = runtime.block_on(broker.deliver_message(message));

        match (prefix, &delivered.outcome) {
            ("raw", Outcome::Handled { .. }) => {}
            ("text", outcome) => prop_assert_eq!(
                matches!(outcome, Outcome::Handled { .. }),
                std::str::from_utf8(&body).is_ok()
            ),
            ("typed", outcome) => prop_assert_eq!(
                matches!(outcome, Outcome::Handled { .. }),
                serde_json::from_slice::<Order>(&body).is_ok()
            ),
            (_, Outcome::DeadLettered { reason, .. }) => prop_assert!(!reason.is_empty()),
            (prefix, outcome) => prop_assert!(false, "{} ended {:?}", prefix, outcome),
        }
    }
}

const DEFAULTS: Defaults = Defaults {
    service: "orders",
    namespace: "acme",
    http_port: 8080,
    version: "0.1.0",
};

/// The variables the service reads, and the unknown one that must not matter.
const VARIABLES: [&str; 18] = [
    "PIPEFORCE_SERVICE",
    "PIPEFORCE_NAMESPACE",
    "PIPEFORCE_HTTP_PORT",
    "PIPEFORCE_HTTP_HOST",
    "PIPEFORCE_HUB_URL",
    "PIPEFORCE_SECRET",
    "PIPEFORCE_MESSAGING_PORT",
    "PIPEFORCE_MESSAGING_ADDRESSES",
    "PIPEFORCE_MESSAGING_PREFETCH",
    "PIPEFORCE_MESSAGING_QUEUE_TYPE",
    "PIPEFORCE_MESSAGING_TLS",
    "PIPEFORCE_SHUTDOWN_TIMEOUT_SECS",
    "PIPEFORCE_LOG_FORMAT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "RUST_LOG",
    "PIPEFORCE_SOMETHING_UNKNOWN",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,6}",
        Just(String::new()),
        Just("-1".to_owned()),
        Just("http://hub:8080".to_owned()),
        Just("Bearer t".to_owned()),
        Just("quorum".to_owned()),
        Just("parentbased_traceidratio".to_owned()),
        Just("0.5".to_owned()),
    ]
}

proptest! {
    /// Any environment gives a configuration or an error whose every line names a variable
    /// that was set; reading it never panics.
    #[test]
    fn any_environment_gives_a_config_or_an_error_naming_the_variables(
        env in prop::collection::btree_map(prop::sample::select(&VARIABLES[..]), value(), 0..8),
    ) {
        let env: BTreeMap<&str, String> = env;
        match Config::from_vars(DEFAULTS, env.iter().map(|(k, v)| (*k, v.as_str()))) {
            Ok(_) => {}
            Err(error) => {
                prop_assert!(!error.problems().is_empty());
                for problem in error.problems() {
                    prop_assert!(env.contains_key(problem.variable.as_str()), "{}", problem.variable);
                }
            }
        }
    }
}

proptest! {
    /// A malformed secret is reported by name, and no part of it shows in the error.
    #[test]
    fn a_malformed_secret_is_named_but_never_shown(
        scheme in prop::sample::select(vec!["", "Basic", "Digest", "Token", "bearer:"]),
        token in "[A-Za-z0-9+/=]{0,20}",
    ) {
        let secret = format!("{scheme} s3cr3t-{token}");
        let result = Config::from_vars(DEFAULTS, [("PIPEFORCE_SECRET", secret.as_str())]);
        if let Err(error) = result {
            prop_assert!(error.to_string().contains("PIPEFORCE_SECRET"));
            prop_assert!(!error.to_string().contains("s3cr3t"), "{}", error);
        }
    }
}
