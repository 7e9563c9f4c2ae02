//! The yardstick of `ci/bench`'s consume-and-publish pipeline: the least a Rust program must do
//! to handle each queued greeting by publishing one event with a publisher confirm, the way an
//! enrichment step in a PIPEFORCE workflow does.
//!
//! `sink` declares the durable queue that takes the published events, bound to `--exchange`
//! with `--routing-key` (the service's run and the baseline's publish there), and exits:
//!
//!   bench_pipeline sink --queue bench.sink --exchange bench.topic --routing-key benchsvc.enriched
//!
//! `drain` consumes `--count` messages from `--queue` with `--prefetch`, decodes each, publishes
//! an event for it on a confirm-mode channel of a second connection (as the service publishes),
//! and acks a delivery once its event is confirmed, every [`ACK_EVERY`] in one `multiple` ack.
//! Confirms are pipelined: publishing goes on while earlier confirms are outstanding. It prints
//! the rate from the first delivery to the last ack, the publish-to-confirm latency
//! distribution, and the CPU time this process spent per message meanwhile:
//!
//!   bench_pipeline drain --queue bench.in --count 100000 --prefetch 200 \
//!       --exchange bench.topic --routing-key benchsvc.enriched
//!   rate_msgs_per_s=21000 seconds=4.76 messages=100000 confirm_p50_ms=1.2 ... cpu_us_per_msg=14.1

use std::{
    collections::VecDeque,
    error::Error,
    pin::Pin,
    process::ExitCode,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{DeliveryTag, FieldTable},
};
use serde_json::Value;
use template_tests::{amqp::AMQP_URL, bench::CpuClock};

/// One `multiple` ack per this many confirmed deliveries.
const ACK_EVERY: u64 = 50;
/// A queue holding fewer messages than `--count` must fail the run, not hang it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn Error + Send + Sync>;

#[derive(Default)]
struct Args {
    command: String,
    queue: String,
    exchange: String,
    routing_key: String,
    count: u64,
    prefetch: u16,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_pipeline: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let args = parse_args()?;
    let consuming = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let channel = consuming.create_channel().await?;
    if args.command == "sink" {
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(args.queue.as_str().into(), options, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                args.queue.as_str().into(),
                args.exchange.as_str().into(),
                args.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        consuming.close(200, "declared".into()).await?;
        return Ok(());
    }
    channel
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let publishing = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let publish_channel = publishing.create_channel().await?;
    publish_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            args.queue.as_str().into(),
            "bench_pipeline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let cpu = CpuClock::start()?;
    let count = args.count;
    // In a task of its own, as a service consumes: the baseline pays the same scheduling.
    let drained = tokio::spawn(drain(channel, publish_channel, consumer, args)).await??;
    let cpu_us_per_msg = cpu.micros_since()? / count as f64;
    consuming.close(200, "drained".into()).await?;
    publishing.close(200, "drained".into()).await?;
    let seconds = drained.elapsed.as_secs_f64();
    let mut latencies = drained.confirm_latencies;
    latencies.sort_unstable();
    let ms = |q: f64| {
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1000.0
    };
    println!(
        "rate_msgs_per_s={:.0} seconds={seconds:.3} messages={count} confirm_p50_ms={:.2} \
         confirm_p90_ms={:.2} confirm_p99_ms={:.2} confirm_max_ms={:.2} cpu_us_per_msg={cpu_us_per_msg:.1}",
        count as f64 / seconds,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(1.0),
    );
    Ok(())
}

struct Drained {
    /// From the first delivery to the last ack.
    elapsed: Duration,
    /// From each publish to its confirm.
    confirm_latencies: Vec<Duration>,
}

/// An event published for a delivery, waiting for its confirm.
struct InFlight {
    tag: DeliveryTag,
    published: Instant,
    confirm: Pin<Box<PublisherConfirm>>,
}

/// Consumes `args.count` messages, publishing an event for each; a delivery is acked once its
/// event is confirmed. The broker confirms in publish order on one channel, so the oldest
/// outstanding confirm is always the next one to await.
async fn drain(
    channel: Channel,
    publish_channel: Channel,
    mut consumer: lapin::Consumer,
    args: Args,
) -> Result<Drained, BoxError> {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let mut first_delivery = None;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut confirm_latencies = Vec::with_capacity(args.count as usize);
    let (mut received, mut unacked) = (0, 0);
    while (confirm_latencies.len() as u64) < args.count {
        tokio::select! {
            // Confirms first: they free prefetch slots.
            biased;
            confirmation = async { in_flight.front_mut().expect("checked").confirm.as_mut().await },
                if !in_flight.is_empty() =>
            {
                let done = in_flight.pop_front().expect("checked");
                match confirmation? {
                    Confirmation::Ack(None) | Confirmation::NotRequested => {}
                    other => return Err(format!("publish not confirmed: {other:?}").into()),
                }
                confirm_latencies.push(done.published.elapsed());
                unacked += 1;
                if unacked == ACK_EVERY || confirm_latencies.len() as u64 == args.count {
                    channel
                        .basic_ack(done.tag, BasicAckOptions { multiple: true })
                        .await?;
                    unacked = 0;
                }
            }
            delivery = tokio::time::timeout(IDLE_TIMEOUT, consumer.next()), if received < args.count => {
                let delivery = delivery
                    .map_err(|_| format!("no message for {IDLE_TIMEOUT:?} after {received} of {}", args.count))?
                    .ok_or("the consumer was cancelled")??;
                first_delivery.get_or_insert_with(Instant::now);
                received += 1;
                let event = enrich(&delivery.data)?;
                let published = Instant::now();
                let confirm = publish_channel
                    .basic_publish(
                        args.exchange.as_str().into(),
                        args.routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &event,
                        properties.clone(),
                    )
                    .await?;
                in_flight.push_back(InFlight {
                    tag: delivery.delivery_tag,
                    published,
                    confirm: Box::pin(confirm),
                });
            }
        }
    }
    Ok(Drained {
        elapsed: first_delivery.map_or(Duration::ZERO, |t| t.elapsed()),
        confirm_latencies,
    })
}

/// The event for a greeting: its name, decoded, with a field added, encoded again.
fn enrich(body: &[u8]) -> Result<Vec<u8>, BoxError> {
    let mut fields: serde_json::Map<String, Value> = serde_json::from_slice(body)?;
    let Some(Value::String(name)) = fields.remove("name") else {
        return Err("field \"name\" is missing or not a string".into());
    };
    let event = serde_json::json!({ "name": name, "greeted": true });
    Ok(serde_json::to_vec(&event)?)
}

fn parse_args() -> Result<Args, BoxError> {
    let usage = "usage: bench_pipeline sink --queue Q --exchange X --routing-key K\n       \
                 bench_pipeline drain --queue Q --count N --prefetch P --exchange X --routing-key K";
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        command: args.next().unwrap_or_default(),
        ..Args::default()
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{usage}"))?;
        match flag.as_str() {
            "--queue" => parsed.queue = value,
            "--exchange" => parsed.exchange = value,
            "--routing-key" => parsed.routing_key = value,
            "--count" => parsed.count = value.parse().map_err(|e| format!("--count: {e}"))?,
            "--prefetch" => {
                parsed.prefetch = value.parse().map_err(|e| format!("--prefetch: {e}"))?;
            }
            _ => return Err(format!("unknown argument {flag}\n{usage}").into()),
        }
    }
    let named = !parsed.queue.is_empty() && !parsed.exchange.is_empty();
    match parsed.command.as_str() {
        "sink" if named => Ok(parsed),
        "drain" if named && parsed.count > 0 && parsed.prefetch > 0 => Ok(parsed),
        _ => Err(usage.into()),
    }
}
