//! Routing conformance: the template's in-process pattern matcher routes every key exactly as
//! RabbitMQ's topic exchange does.
//!
//! Each case binds its pattern to a scratch queue on a scratch topic exchange, publishes its key
//! (mandatory, with publisher confirms) and looks whether the message arrived; the same case is
//! then asked of `Pattern::matches`. Both must give the expected answer, which is what the broker
//! does.

use std::{fmt::Write as _, future::Future, time::Duration};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind, options::*,
    types::FieldTable,
};

use template_tests::amqp::AMQP_URL;

#[path = "../../template/crates/pipeforce/src/messaging/pattern.rs"]
#[allow(dead_code)]
mod pattern;

/// How long any single broker operation may take before the test gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// One row of the table: does `key` match `pattern`?
struct Case {
    pattern: &'static str,
    key: String,
    expected: bool,
    why: &'static str,
}

fn case(pattern: &'static str, key: impl Into<String>, expected: bool, why: &'static str) -> Case {
    Case {
        pattern,
        key: key.into(),
        expected,
        why,
    }
}

fn cases() -> Vec<Case> {
    // 127 one-letter words: 253 bytes, close to the 255 bytes AMQP allows for a key.
    let long_key = vec!["a"; 127].join(".");
    let long_key_ending_in_z = format!("{}.z", vec!["a"; 126].join("."));
    vec![
        // literals
        case("a.b", "a.b", true, "a literal matches itself"),
        case(
            "a.b",
            "a.bb",
            false,
            "a literal word matches only the whole word",
        ),
        case(
            "a.b",
            "a.b.c",
            false,
            "a literal pattern does not match a longer key",
        ),
        case(
            "a.b.c",
            "a.b",
            false,
            "a literal pattern does not match a shorter key",
        ),
        case("a.b", "b.a", false, "word order matters"),
        case(
            "orders.created",
            "Orders.created",
            false,
            "matching is case-sensitive",
        ),
        case(
            "Orders.Created",
            "Orders.Created",
            true,
            "uppercase literals match themselves",
        ),
        // `*`: exactly one word
        case("a.*", "a.b", true, "`*` matches one word"),
        case("a.*", "a", false, "`*` does not match zero words"),
        case("a.*", "a.b.c", false, "`*` does not match two words"),
        case("*.b.*", "a.b.c", true, "`*` on both sides of a literal"),
        case("*", "a", true, "`*` alone matches a one-word key"),
        case("*", "a.b", false, "`*` alone does not match two words"),
        case("*.*", "a.b", true, "two `*` match two words"),
        case("*.*", "a", false, "two `*` do not match one word"),
        // `#`: zero or more words, anywhere
        case("#", "a", true, "`#` alone matches one word"),
        case("#", "a.b.c.d", true, "`#` alone matches many words"),
        case("a.#", "a", true, "`#` at the end matches zero words"),
        case("a.#", "a.b", true, "`#` at the end matches one word"),
        case("a.#", "a.b.c.d", true, "`#` at the end matches many words"),
        case(
            "a.#",
            "b.a",
            false,
            "`#` at the end keeps the prefix literal",
        ),
        case("#.c", "c", true, "`#` at the start matches zero words"),
        case("#.c", "a.b.c", true, "`#` at the start matches many words"),
        case(
            "#.c",
            "c.a",
            false,
            "`#` at the start keeps the suffix literal",
        ),
        case("a.#.c", "a.c", true, "`#` in the middle matches zero words"),
        case("a.#.c", "a.b.c", true, "`#` in the middle matches one word"),
        case(
            "a.#.c",
            "a.b.b.b.c",
            true,
            "`#` in the middle matches many words",
        ),
        case(
            "a.#.c",
            "a.b.d",
            false,
            "`#` in the middle keeps the last word literal",
        ),
        case("#.b.#", "b", true, "`#` on both sides, both empty"),
        case("#.b.#", "a.b.c", true, "`#` on both sides, both one word"),
        case(
            "#.b.#",
            "a.c",
            false,
            "`#` on both sides still needs the literal",
        ),
        case(
            "#.b.#.c",
            "a.b.x.y.c",
            true,
            "two `#` with literals between them",
        ),
        case(
            "#.b.#.c",
            "c.b",
            false,
            "two `#` keep the literals in order",
        ),
        // `#` combined with `#` and `*`
        case("#.#", "a", true, "`#.#` matches one word"),
        case("#.#", "a.b.c", true, "`#.#` matches many words"),
        case(
            "a.#.#.b",
            "a.b",
            true,
            "adjacent `#` may both match zero words",
        ),
        case("*.#", "a", true, "`*.#` matches one word"),
        case("*.#", "a.b.c", true, "`*.#` matches many words"),
        case("#.*", "a", true, "`#.*` matches one word"),
        case("#.*", "a.b.c", true, "`#.*` matches many words"),
        case("#.*.#", "a.b", true, "`*` between two `#`"),
        case(
            "a.*.#",
            "a",
            false,
            "`*.#` after a literal needs at least one more word",
        ),
        case(
            "a.*.#",
            "a.b.c",
            true,
            "`*.#` after a literal takes the rest",
        ),
        case("#.a.*", "x.a", false, "`*` after `#.a` needs one more word"),
        case(
            "#.a.*",
            "a.a.b",
            true,
            "`#` backtracks over repeated literals",
        ),
        // the empty key: zero words
        case("#", "", true, "`#` matches the empty key"),
        case("#.#", "", true, "`#.#` matches the empty key"),
        case("*", "", false, "`*` does not match the empty key"),
        case(
            "*.#",
            "",
            false,
            "`*.#` needs a word, the empty key has none",
        ),
        case(
            "#.*",
            "",
            false,
            "`#.*` needs a word, the empty key has none",
        ),
        case("a.#", "", false, "a literal does not match the empty key"),
        // keys with empty words
        case(
            "a.*.b",
            "a..b",
            true,
            "`*` matches an empty word in the middle",
        ),
        case("a.b", "a..b", false, "an empty word is still a word"),
        case("a.#.b", "a..b", true, "`#` matches an empty word"),
        case("*.a", ".a", true, "`*` matches a leading empty word"),
        case("a", ".a", false, "a leading dot adds a word"),
        case("a.*", "a.", true, "`*` matches a trailing empty word"),
        case("a", "a.", false, "a trailing dot adds a word"),
        case("a.#", "a.", true, "`#` matches a trailing empty word"),
        case("*", ".", false, "a lone dot is two empty words"),
        case("*.*", ".", true, "`*.*` matches two empty words"),
        case("#", "..", true, "`#` matches three empty words"),
        // keys that contain `*` or `#` literally, or other characters a pattern cannot have
        case(
            "a.*",
            "a.#",
            true,
            "`#` in a key is an ordinary word for `*`",
        ),
        case(
            "a.*",
            "a.*",
            true,
            "`*` in a key is an ordinary word for `*`",
        ),
        case("a.b", "a.*", false, "`*` in a key does not match a literal"),
        case("a.b", "a.#", false, "`#` in a key does not match a literal"),
        case("a", "#", false, "a key of `#` is not a wildcard"),
        case("*", "#", true, "a key of `#` is one word"),
        case(
            "*",
            "a*b",
            true,
            "`*` inside a key word is an ordinary character",
        ),
        case(
            "*.c",
            "a b.c",
            true,
            "a space in a key is an ordinary character",
        ),
        case("*", "é", true, "a non-ASCII key word is one word"),
        // longer keys
        case("a.b.c.d.e.f.g.h", "a.b.c.d.e.f.g.h", true, "eight literals"),
        case("a.#.h", "a.b.c.d.e.f.g.h", true, "`#` spans six words"),
        case("*.*.*.*.*.*.*.*", "a.b.c.d.e.f.g.h", true, "eight `*`"),
        case(
            "*.*.*.*.*.*.*",
            "a.b.c.d.e.f.g.h",
            false,
            "seven `*` do not match eight words",
        ),
        case("#", long_key.clone(), true, "`#` matches a 253-byte key"),
        case(
            "#.z",
            long_key.clone(),
            false,
            "`#.z` needs the last of 127 words to be z",
        ),
        case(
            "#.z",
            long_key_ending_in_z,
            true,
            "`#.z` finds z after 126 words",
        ),
        case(
            "a.#.a.#.a",
            long_key,
            true,
            "three literals spread over 127 words",
        ),
        // patterns in the style of the Python template
        case(
            "pipeforce.webhook.foo.*",
            "pipeforce.webhook.foo.bar",
            true,
            "webhook: one event word",
        ),
        case(
            "pipeforce.webhook.foo.*",
            "pipeforce.webhook.foo",
            false,
            "webhook: no event word",
        ),
        case(
            "pipeforce.webhook.foo.*",
            "pipeforce.webhook.foo.bar.baz",
            false,
            "webhook: two event words",
        ),
        case(
            "pipeforce.webhook.foo.*",
            "pipeforce.webhook.food.bar",
            false,
            "webhook: another webhook",
        ),
        case(
            "pipeforce.event.workflow.#",
            "pipeforce.event.workflow",
            true,
            "workflow events: the bare key",
        ),
        case(
            "pipeforce.event.workflow.#",
            "pipeforce.event.workflow.started",
            true,
            "workflow events: one word",
        ),
        case(
            "pipeforce.event.workflow.#",
            "pipeforce.event.workflow.step.done",
            true,
            "workflow events: two words",
        ),
        case(
            "pipeforce.event.workflow.#",
            "pipeforce.event.workflows.started",
            false,
            "workflow events: another prefix",
        ),
        case(
            "webhook.#",
            "webhook",
            true,
            "short webhook prefix: the bare key",
        ),
        case(
            "webhook.#",
            "webhook.github.push",
            true,
            "short webhook prefix: many words",
        ),
        case(
            "webhook.#",
            "pipeforce.webhook.x",
            false,
            "short webhook prefix is anchored at the start",
        ),
    ]
}

/// Awaits `future`, failing the test with `what` when it errs or takes too long.
async fn step<T, E: std::fmt::Debug>(what: &str, future: impl Future<Output = Result<T, E>>) -> T {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(Ok(value)) => value,
        Ok(Err(error)) => panic!("{what} failed: {error:?}"),
        Err(_) => panic!("{what} took longer than {STEP_TIMEOUT:?}"),
    }
}

/// Whether RabbitMQ routes `key` through a binding with `pattern`, asked of a fresh topic
/// exchange with one queue; both are deleted again.
async fn broker_routes(channel: &Channel, pattern: &str, key: &str) -> bool {
    let id = uuid::Uuid::new_v4();
    let exchange = format!("template-tests.routing.{id}");
    let queue = format!("template-tests.routing.{id}");
    let what = |step: &str| format!("{step} for pattern {pattern:?}, key {key:?}");

    step(
        &what("exchange.declare"),
        channel.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    step(
        &what("queue.declare"),
        channel.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    step(
        &what("queue.bind"),
        channel.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;

    let confirm = step(
        &what("basic.publish"),
        channel.basic_publish(
            exchange.as_str().into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            id.as_bytes(),
            BasicProperties::default(),
        ),
    )
    .await;
    // The ack comes once the exchange has routed the message and every queue it was routed to
    // holds it; with `mandatory` an unroutable message is returned before that ack.
    let confirmation = step(&what("publisher confirm"), confirm).await;
    assert!(
        confirmation.is_ack(),
        "{}: {confirmation:?}",
        what("publisher confirm")
    );
    let returned = confirmation.take_message().is_some();

    let got = step(
        &what("basic.get"),
        channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }),
    )
    .await;
    let arrived = match got {
        Some(message) => {
            assert_eq!(
                message.delivery.data,
                id.as_bytes(),
                "{}: a foreign message",
                what("basic.get")
            );
            true
        }
        None => false,
    };
    assert_ne!(
        arrived,
        returned,
        "{}: the broker both {} the message and {} it",
        what("routing"),
        if arrived {
            "delivered"
        } else {
            "did not deliver"
        },
        if returned {
            "returned"
        } else {
            "did not return"
        },
    );

    step(
        &what("queue.delete"),
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
    )
    .await;
    step(
        &what("exchange.delete"),
        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
    )
    .await;
    arrived
}

#[tokio::test]
async fn the_matcher_routes_every_key_exactly_as_rabbitmq_does() {
    let cases = cases();
    assert!(
        cases.len() >= 40,
        "the table has only {} cases",
        cases.len()
    );

    let connection = step(
        "connecting to RabbitMQ at 127.0.0.1:5672",
        Connection::connect(AMQP_URL, ConnectionProperties::default()),
    )
    .await;
    let channel = step("channel.open", connection.create_channel()).await;
    step(
        "confirm.select",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await;

    let mut mismatches = String::new();
    for case in &cases {
        let parsed = pattern::Pattern::parse(case.pattern).unwrap_or_else(|error| {
            panic!(
                "the table's pattern {:?} is rejected: {error}",
                case.pattern
            )
        });
        let matcher = parsed.matches(&case.key);
        let broker = broker_routes(&channel, case.pattern, &case.key).await;
        if broker != case.expected || matcher != case.expected {
            writeln!(
                mismatches,
                "  pattern {:?}, key {:?} ({}): expected {}, broker {broker}, matcher {matcher}",
                case.pattern, case.key, case.why, case.expected
            )
            .unwrap();
        }
    }

    step(
        "connection.close",
        connection.close(200, "routing conformance done".into()),
    )
    .await;
    assert!(
        mismatches.is_empty(),
        "routing disagrees with the table:\n{mismatches}"
    );
}
