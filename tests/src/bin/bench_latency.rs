//! Request latency for `ci/bench`: sends greeting requests to a running service at a steady
//! rate over direct reply-to and times each one from the moment it was due to be published
//! to the moment its reply arrived (publish → handler done → reply received: the reply is one
//! more trip through the broker):
//!
//!   bench_latency --exchange pipeforce.topic.default --routing-key benchsvc.greeting \
//!       --rate 1000 --seconds 20 --warmup-seconds 3
//!   sent=20000 rate_msgs_per_s=1000.0 replies=20000 missing=0 wrong=0 p50_ms=0.91 ...
//!
//! Every request has a fixed slot (`start + i / rate`) and its latency counts from that slot,
//! not from when it really went out: a sender that falls behind (a stall here, the broker
//! pushing back) would otherwise hide exactly the waits that matter (coordinated omission).
//! `send_lag_*` shows how late the sends themselves were. Requests of the warm-up are sent
//! at the same rate but left out of the figures.

use std::{
    error::Error,
    process::ExitCode,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    options::{BasicConsumeOptions, BasicPublishOptions},
    types::FieldTable,
};
use serde_json::Value;
use template_tests::amqp::AMQP_URL;

/// RabbitMQ's pseudo-queue for direct reply-to: replies come back on the publishing channel.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// How long replies are awaited after the last request was due; later ones count as missing.
const GRACE: Duration = Duration::from_secs(5);

type BoxError = Box<dyn Error + Send + Sync>;

struct Args {
    exchange: String,
    routing_key: String,
    rate: u64,
    seconds: u64,
    warmup_seconds: u64,
}

/// When each request is due: request `i` at `start + i / rate`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    rate: u64,
    /// Requests `0..warmup` are the warm-up.
    warmup: u64,
    total: u64,
}

impl Schedule {
    fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_nanos(i * 1_000_000_000 / self.rate)
    }

    fn measured(&self) -> u64 {
        self.total - self.warmup
    }
}

/// What the sender saw of the measured requests.
struct Sent {
    /// How late each publish started, against its slot.
    lags: Vec<Duration>,
    /// When the first and the last measured request went out.
    first: Option<Instant>,
    last: Option<Instant>,
}

/// What came back for the measured requests.
#[derive(Default)]
struct Received {
    latencies: Vec<Duration>,
    /// Replies whose correlation id or body does not match a request of this run.
    wrong: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_latency: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let args = parse_args()?;
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    // Direct reply-to needs the consumer on the publishing channel before the first request.
    let replies = channel
        .basic_consume(
            REPLY_TO.into(),
            "bench_latency".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;

    let schedule = Schedule {
        // A little lead, so that the first slots are not already late.
        start: Instant::now() + Duration::from_millis(100),
        rate: args.rate,
        warmup: args.warmup_seconds * args.rate,
        total: (args.warmup_seconds + args.seconds) * args.rate,
    };
    let receiver = tokio::spawn(collect(replies, schedule));
    // tokio's timer ticks in whole milliseconds, as coarse as the slots at 1,000 msg/s; a
    // thread of its own sleeps to within tens of microseconds and keeps the runtime's two
    // workers free for the receiver and lapin.
    let handle = tokio::runtime::Handle::current();
    let sender = {
        let channel = channel.clone();
        std::thread::spawn(move || send_all(&handle, &channel, &args, schedule))
    };
    let sent = tokio::task::spawn_blocking(move || sender.join())
        .await?
        .map_err(|_| "the sender panicked")??;
    let received = receiver.await??;
    conn.close(200, "measured".into()).await?;
    report(schedule, sent, received)
}

/// Publishes every request of `schedule` at its slot (at once when the slot has passed).
fn send_all(
    handle: &tokio::runtime::Handle,
    channel: &Channel,
    args: &Args,
    schedule: Schedule,
) -> Result<Sent, BoxError> {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_reply_to(REPLY_TO.into());
    let mut sent = Sent {
        lags: Vec::with_capacity(usize::try_from(schedule.measured())?),
        first: None,
        last: None,
    };
    for i in 0..schedule.total {
        let due = schedule.due(i);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let now = Instant::now();
        if i >= schedule.warmup {
            sent.lags.push(now - due);
            sent.first.get_or_insert(now);
            sent.last = Some(now);
        }
        let body = serde_json::to_vec(&serde_json::json!({ "name": name(i) }))?;
        let properties = properties.clone().with_correlation_id(i.to_string().into());
        // No publisher confirms: the reply is the confirmation, and waiting for a confirm
        // would add a round trip the service never sees.
        handle.block_on(channel.basic_publish(
            args.exchange.as_str().into(),
            args.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        ))?;
    }
    Ok(sent)
}

/// Takes replies until every request has one or [`GRACE`] after the last slot.
async fn collect(mut replies: Consumer, schedule: Schedule) -> Result<Received, BoxError> {
    let deadline = tokio::time::Instant::from_std(schedule.due(schedule.total - 1) + GRACE);
    let mut seen = vec![false; usize::try_from(schedule.total)?];
    let mut outstanding = schedule.total;
    let mut received = Received::default();
    while outstanding > 0 {
        let Ok(next) = tokio::time::timeout_at(deadline, replies.next()).await else {
            break;
        };
        let reply = next.ok_or("the reply consumer was cancelled")??;
        let arrived = Instant::now();
        let id = reply
            .properties
            .correlation_id()
            .as_ref()
            .and_then(|id| id.as_str().parse::<u64>().ok())
            .filter(|&id| id < schedule.total);
        let Some(id) = id else {
            received.wrong += 1;
            continue;
        };
        let slot = &mut seen[usize::try_from(id)?];
        if *slot || !is_greeting_for(&reply.data, id) {
            received.wrong += 1;
            continue;
        }
        *slot = true;
        outstanding -= 1;
        if id >= schedule.warmup {
            received.latencies.push(arrived - schedule.due(id));
        }
    }
    Ok(received)
}

/// Whether `body` is the service's `GreetingReply` to request `id`.
fn is_greeting_for(body: &[u8], id: u64) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|reply| {
        reply["text"].as_str() == Some(format!("Hello, {}!", name(id)).as_str())
            && reply["greetings_so_far"].is_u64()
    })
}

fn report(schedule: Schedule, mut sent: Sent, mut received: Received) -> Result<(), BoxError> {
    let measured = schedule.measured();
    let replies = received.latencies.len() as u64;
    let rate = match (sent.first, sent.last) {
        (Some(first), Some(last)) if last > first => {
            (measured - 1) as f64 / (last - first).as_secs_f64()
        }
        _ => 0.0,
    };
    received.latencies.sort_unstable();
    sent.lags.sort_unstable();
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    let latency = |p| percentile(&received.latencies, p).map_or_else(|| "-".into(), ms);
    let lag = |p| percentile(&sent.lags, p).map_or_else(|| "-".into(), ms);
    println!(
        "sent={measured} rate_msgs_per_s={rate:.1} replies={replies} missing={} wrong={} \
         p50_ms={} p90_ms={} p99_ms={} max_ms={} send_lag_p50_ms={} send_lag_p99_ms={}",
        measured - replies,
        received.wrong,
        latency(50.0),
        latency(90.0),
        latency(99.0),
        latency(100.0),
        lag(50.0),
        lag(99.0),
    );
    if replies == 0 {
        return Err("no reply came back: is the service consuming?".into());
    }
    Ok(())
}

/// The nearest-rank percentile `p` (0 to 100) of `sorted`.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// Unique per request, so a reply is checked against the request it answers.
fn name(i: u64) -> String {
    format!("bench-{i:07}")
}

fn parse_args() -> Result<Args, BoxError> {
    let usage = "usage: bench_latency --exchange X --routing-key K [--rate MSGS_PER_S] \
                 [--seconds S] [--warmup-seconds S]";
    let mut args = Args {
        exchange: String::new(),
        routing_key: String::new(),
        rate: 1000,
        seconds: 20,
        warmup_seconds: 3,
    };
    let number = |flag: &str, value: &str| -> Result<u64, BoxError> {
        value.parse().map_err(|e| format!("{flag}: {e}").into())
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{usage}"))?;
        match flag.as_str() {
            "--exchange" => args.exchange = value,
            "--routing-key" => args.routing_key = value,
            "--rate" => args.rate = number(&flag, &value)?,
            "--seconds" => args.seconds = number(&flag, &value)?,
            "--warmup-seconds" => args.warmup_seconds = number(&flag, &value)?,
            _ => return Err(format!("unknown argument {flag}\n{usage}").into()),
        }
    }
    // Two measured requests at least: the rate needs a first and a last one.
    if args.exchange.is_empty()
        || args.routing_key.is_empty()
        || args.rate == 0
        || args.seconds * args.rate < 2
    {
        return Err(usage.into());
    }
    Ok(args)
}
