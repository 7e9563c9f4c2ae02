//! The yardstick for `ci/bench`: the least a Rust service must do to drain a queue of JSON
//! greetings. It consumes `--count` messages from `--queue` with the prefetch the service uses,
//! decodes each body into a typed struct, acks every [`ACK_EVERY`] messages in one
//! `multiple` ack, and prints the rate from the first delivery to the last ack and the CPU
//! time (user and system) the process spent per message meanwhile:
//!
//!   bench_baseline --queue bench.baseline --count 100000 --prefetch 200
//!   rate_msgs_per_s=39000 seconds=2.56 messages=100000 cpu_us_per_msg=7.1

use std::{
    error::Error,
    process::ExitCode,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, Consumer,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use serde_json::Value;
use template_tests::{amqp::AMQP_URL, bench::CpuClock};

/// One `multiple` ack per this many deliveries, the batching a tuned consumer would use.
const ACK_EVERY: u64 = 50;
/// A queue holding fewer messages than `--count` must fail the run, not hang it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn Error + Send + Sync>;

/// The body the service's greeting handler takes.
struct Greeting {
    name: String,
    message: String,
}

impl Greeting {
    /// Typed decoding with the service's semantics (both fields required strings, unknown
    /// fields ignored). The tests crate has no serde derive, so this goes through a JSON map;
    /// the extra map costs well under a microsecond, against tens of microseconds per
    /// message of AMQP work.
    fn decode(body: &[u8]) -> Result<Self, BoxError> {
        let mut fields: serde_json::Map<String, Value> = serde_json::from_slice(body)?;
        let mut field = |key: &str| match fields.remove(key) {
            Some(Value::String(value)) => Ok(value),
            _ => Err(format!("field {key:?} is missing or not a string")),
        };
        Ok(Self {
            name: field("name")?,
            message: field("message")?,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_baseline: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let (queue, count, prefetch) = parse_args()?;
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bench_baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let cpu = CpuClock::start()?;
    // A service consumes in a task of its own, not in main: the baseline pays the same
    // scheduling cost.
    let elapsed = tokio::spawn(drain(channel, consumer, count)).await??;
    let cpu_us_per_msg = cpu.micros_since()? / count as f64;
    conn.close(200, "drained".into()).await?;
    let seconds = elapsed.as_secs_f64();
    println!(
        "rate_msgs_per_s={:.0} seconds={seconds:.3} messages={count} \
         cpu_us_per_msg={cpu_us_per_msg:.1}",
        count as f64 / seconds
    );
    Ok(())
}

/// Consumes `count` messages; returns the time from the first delivery to the last ack.
async fn drain(channel: Channel, mut consumer: Consumer, count: u64) -> Result<Duration, BoxError> {
    let mut first_delivery = None;
    let mut unacked = 0;
    let mut last_tag = 0;
    // Summed so that the decoded fields are used and the decoding cannot be optimized away.
    let mut decoded_bytes = 0;
    for received in 0..count {
        let delivery = tokio::time::timeout(IDLE_TIMEOUT, consumer.next())
            .await
            .map_err(|_| format!("no message for {IDLE_TIMEOUT:?} after {received} of {count}"))?
            .ok_or("the consumer was cancelled")??;
        first_delivery.get_or_insert_with(Instant::now);
        let greeting = Greeting::decode(&delivery.data)?;
        decoded_bytes += greeting.name.len() + greeting.message.len();
        last_tag = delivery.delivery_tag;
        unacked += 1;
        if unacked == ACK_EVERY {
            channel
                .basic_ack(last_tag, BasicAckOptions { multiple: true })
                .await?;
            unacked = 0;
        }
    }
    if unacked > 0 {
        channel
            .basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await?;
    }
    let elapsed = first_delivery.map_or(Duration::ZERO, |t| t.elapsed());
    eprintln!("bench_baseline: decoded {decoded_bytes} bytes of names and messages");
    Ok(elapsed)
}

fn parse_args() -> Result<(String, u64, u16), BoxError> {
    let usage = "usage: bench_baseline --queue Q --count N --prefetch P";
    let (mut queue, mut count, mut prefetch) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{usage}"))?;
        match flag.as_str() {
            "--queue" => queue = Some(value),
            "--count" => count = Some(value.parse().map_err(|e| format!("--count: {e}"))?),
            "--prefetch" => prefetch = Some(value.parse().map_err(|e| format!("--prefetch: {e}"))?),
            _ => return Err(format!("unknown argument {flag}\n{usage}").into()),
        }
    }
    match (queue, count, prefetch) {
        (Some(queue), Some(count), Some(prefetch)) if count > 0 => Ok((queue, count, prefetch)),
        _ => Err(usage.into()),
    }
}
