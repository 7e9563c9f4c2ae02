//! Fills a queue for `ci/bench`: publishes `--count` persistent JSON greetings of about 200
//! bytes, either to `--exchange` with `--routing-key` (the way PIPEFORCE sends events) or, with
//! `--queue`, straight to that queue through the default exchange (declared durable first).
//!
//!   bench_prefill --exchange pipeforce.topic.default --routing-key benchsvc.greeting --count 100000
//!   bench_prefill --queue bench.baseline --count 100000

use std::{error::Error, process::ExitCode, time::Instant};

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
};
use template_tests::amqp::AMQP_URL;

/// Messages in flight before waiting for the broker's confirms: large enough to keep the
/// broker busy, small enough that a rejected batch is noticed early.
const CONFIRM_BATCH: u64 = 10_000;
/// The size `ci/bench` promises for each body.
const BODY_BYTES: usize = 200;

type BoxError = Box<dyn Error + Send + Sync>;

struct Args {
    exchange: String,
    routing_key: String,
    count: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_prefill: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let args = parse_args()?;
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    // Publishing to the default exchange needs the queue to exist, or every message is lost.
    if args.exchange.is_empty() {
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let queue = args.routing_key.as_str().into();
        channel
            .queue_declare(queue, options, FieldTable::default())
            .await?;
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    // mandatory: a message no queue takes comes back instead of vanishing, so a missing
    // binding fails the prefill rather than the benchmark.
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let filler = filler();
    let started = Instant::now();
    for i in 0..args.count {
        let body = greeting(i, &filler);
        // The returned confirm is dropped on purpose: wait_for_confirms awaits them in bulk.
        channel
            .basic_publish(
                args.exchange.as_str().into(),
                args.routing_key.as_str().into(),
                options,
                &body,
                properties.clone(),
            )
            .await?;
        if (i + 1) % CONFIRM_BATCH == 0 || i + 1 == args.count {
            let returned = channel.wait_for_confirms().await?;
            if !returned.is_empty() {
                return Err(format!(
                    "{} messages were unroutable: nothing is bound to {:?} on exchange {:?}",
                    returned.len(),
                    args.routing_key,
                    args.exchange
                )
                .into());
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    conn.close(200, "prefilled".into()).await?;
    println!(
        "published={} seconds={seconds:.2} rate_msgs_per_s={:.0}",
        args.count,
        args.count as f64 / seconds
    );
    Ok(())
}
/// A greeting like the service's handler takes, unique per `i`. `filler` pads it to
/// [`BODY_BYTES`].
fn greeting(i: u64, filler: &str) -> Vec<u8> {
    let body = serde_json::json!({ "name": name(i), "message": filler });
    serde_json::to_vec(&body).expect("a JSON object of strings serializes")
}

/// Fixed width up to 10 million messages, so every body has the same size.
fn name(i: u64) -> String {
    format!("bench-{i:07}")
}

fn filler() -> String {
    let bare = serde_json::json!({ "name": name(0), "message": "" }).to_string();
    "Hello from the PIPEFORCE benchmark. "
        .chars()
        .cycle()
        .take(BODY_BYTES.saturating_sub(bare.len()))
        .collect()
}

fn parse_args() -> Result<Args, BoxError> {
    let usage = "usage: bench_prefill (--exchange X --routing-key K | --queue Q) --count N";
    let (mut exchange, mut routing_key, mut queue, mut count) = (None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{usage}"))?;
        match flag.as_str() {
            "--exchange" => exchange = Some(value),
            "--routing-key" => routing_key = Some(value),
            "--queue" => queue = Some(value),
            "--count" => count = Some(value.parse().map_err(|e| format!("--count: {e}"))?),
            _ => return Err(format!("unknown argument {flag}\n{usage}").into()),
        }
    }
    let count = count.ok_or(usage)?;
    match (exchange, routing_key, queue) {
        // The default exchange ("") routes by queue name.
        (None, None, Some(queue)) => Ok(Args {
            exchange: String::new(),
            routing_key: queue,
            count,
        }),
        (Some(exchange), Some(routing_key), None) if !exchange.is_empty() => Ok(Args {
            exchange,
            routing_key,
            count,
        }),
        _ => Err(usage.into()),
    }
}
