//! Chaos and soak: two replicas of the probe service share one queue while a publisher sends
//! 50,000 messages at a steady rate and the test breaks things under them: it closes every
//! broker connection of the service five times and SIGTERMs and restarts one replica. One
//! message in a hundred does not decode and one in a hundred fails for good.
//!
//! At the end every message was handled or sits in the dead-letter queue with its reason, and
//! anything that happened twice happened on a delivery RabbitMQ flagged as redelivered, i.e.
//! one that an interruption cut short, and there are few of those: at most
//! [`DUPLICATES_PER_CLOSE`] per forced close and replica. Run once on a classic and once on a
//! quorum queue; the figures are printed.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, PublisherConfirm,
    options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use nix::sys::signal::Signal;
use template_tests::{
    ServiceProcess,
    amqp::{self, DeadLetter},
    run, shared_target_lock,
};

use crate::probe::{PROBE_SERVICE, Scenario};

const MESSAGES: u64 = 40_000;
/// A rate this 2-core machine sustains with two replicas, the broker and the suite beside
/// them: at 2,000 msg/s the broker falls behind (it drains for 13 to 40 s after the last
/// publish), and then what a forced close repeats is no longer the service's lag. The acks
/// the service has sent wait unread in the broker (their messages first ran 100 to 450 ms
/// before the close, against a 5 ms ack cadence), up to the prefetch window: 110 duplicates
/// per close and replica at the default prefetch of 200, 29 at a prefetch of 50.
const PER_SECOND: u64 = 1_000;
/// Runs of a failing handler per delivery: the first and `PIPEFORCE_MESSAGING_MAX_RETRIES` (3).
pub(crate) const RUNS_PER_DELIVERY: usize = 4;

/// The most duplicate handler runs one forced close of a replica's connections may cause, on
/// average over the run: the deliveries handled but not yet acked when it happens, and those
/// lapin had read before the broker's close and ran before it saw the close. A whole prefetch
/// window (200) would mean acks lag far behind the handlers, as they once did. Measured at the
/// default prefetch: 3.7 and 9.4 per close and replica on a classic queue.
const DUPLICATES_PER_CLOSE: usize = 25;

/// Replicas running at any time.
const REPLICAS: usize = 2;

/// What the test breaks, and when: after this many messages were sent. Counted in messages
/// rather than seconds so the breakages spread over the run however busy the machine is.
const PLAN: [(u64, Breakage); 6] = [
    (MESSAGES / 10, Breakage::CloseConnections),
    (MESSAGES / 4, Breakage::CloseConnections),
    (MESSAGES * 35 / 100, Breakage::RestartReplica),
    (MESSAGES / 2, Breakage::CloseConnections),
    (MESSAGES * 7 / 10, Breakage::CloseConnections),
    (MESSAGES * 85 / 100, Breakage::CloseConnections),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Breakage {
    CloseConnections,
    RestartReplica,
}

/// One chaos or cluster run at a time: two at once would only measure how the machine copes.
pub(crate) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_classic_queue_nothing_is_lost_under_fire() {
    chaos_run("classic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_quorum_queue_nothing_is_lost_under_fire() {
    chaos_run("quorum").await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Handled,
    Undecodable,
    FailsForGood,
}

pub(crate) fn kind(id: u64) -> Kind {
    match id % 100 {
        37 => Kind::Undecodable,
        71 => Kind::FailsForGood,
        _ => Kind::Handled,
    }
}

pub(crate) fn body(id: u64) -> Vec<u8> {
    match kind(id) {
        Kind::Handled => format!(r#"{{"id":{id}}}"#),
        Kind::Undecodable => format!(r#"{{"id":{id},"#),
        Kind::FailsForGood => format!(r#"{{"id":{id},"fail":true}}"#),
    }
    .into_bytes()
}

pub(crate) fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

#[expect(
    clippy::await_holding_lock,
    reason = "the guard keeps the suite's builds waiting; nothing here waits for one"
)]
async fn chaos_run(queue_type: &str) {
    let _alone = ONE_AT_A_TIME.lock().await;
    // Keep the suite's cargo builds off the CPU meanwhile: duplicates per close measure how
    // far acks lag behind handlers, and a machine busy compiling stretches every lag. The
    // probe service is built first: its build takes the same lock.
    tokio::task::spawn_blocking(|| LazyLock::force(&PROBE_SERVICE))
        .await
        .expect("the probe service builds");
    let _quiet = tokio::task::block_in_place(shared_target_lock);
    let user = BrokerUser::create();
    let token = format!("chaos-token-{}", uuid::Uuid::new_v4().simple());
    let secret = format!("Bearer {token}");
    let scenario = Scenario::new(&[
        ("PIPEFORCE_MESSAGING_QUEUE_TYPE", queue_type),
        ("PIPEFORCE_MESSAGING_USERNAME", &user.name),
        ("PIPEFORCE_MESSAGING_PASSWORD", &user.password),
        ("PIPEFORCE_SECRET", &secret),
        ("PIPEFORCE_HUB_URL", "http://127.0.0.1:9"),
    ])
    .await;

    let mut replicas = vec![
        scenario.start_with(&[("PROBE_REPLICA", "a")]).await,
        scenario.start_with(&[("PROBE_REPLICA", "b")]).await,
    ];
    let mut stopped = Vec::new();
    let dead_letters = DeadLetterWatch::start(&scenario.names.dead_letter_queue).await;

    // Publish on a task of its own, and break things on schedule meanwhile.
    let sent = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish_steadily(
        scenario.names.exchange.clone(),
        Arc::clone(&sent),
    ));
    // When each breakage had happened: the broker has closed the connections once
    // `rabbitmqctl` returns; a replica has stopped once it exits.
    let mut interruptions = Vec::new();
    for (after, breakage) in PLAN {
        while sent.load(Ordering::Relaxed) < after {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match breakage {
            Breakage::CloseConnections => {
                let sessions: Vec<usize> = replicas.iter().map(sessions_started).collect();
                close_connections_of(&user.name, &replicas, &sessions).await;
                interruptions.push(now_micros());
                assert!(
                    new_sessions_within(&replicas, &sessions, Duration::from_secs(60)).await,
                    "a replica did not consume again within 60 s of the forced close"
                );
            }
            Breakage::RestartReplica => {
                let mut replica = replicas.pop().expect("replica b runs");
                replica.signal(Signal::SIGTERM);
                let status = replica
                    .wait_for_exit(Duration::from_secs(40))
                    .await
                    .expect("the replica stops within its shutdown timeout");
                assert!(status.success(), "{status}\n{}", replica.logs());
                interruptions.push(now_micros());
                stopped.push(replica);
                replicas.push(scenario.start_with(&[("PROBE_REPLICA", "b2")]).await);
            }
        }
    }
    let publishing = publisher.await.expect("the publisher finished");
    let published_at = Instant::now();

    // Wait until every message is accounted for, then until the queue is empty.
    let deadline = published_at + Duration::from_secs(300);
    let mut outcome = Outcome::read(&scenario, &dead_letters);
    while !outcome.everything_accounted_for() {
        assert!(
            Instant::now() < deadline,
            "not every message was handled or dead-lettered within 5 minutes:\n{}",
            outcome.missing_summary()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        outcome = Outcome::read(&scenario, &dead_letters);
    }
    let drained_after = published_at.elapsed();
    scenario.wait_until_queue_is_empty().await;
    for replica in &mut replicas {
        replica.signal(Signal::SIGTERM);
    }
    for replica in &mut replicas {
        let status = replica.wait_for_exit(Duration::from_secs(40)).await;
        assert!(
            status.is_some_and(|status| status.success()),
            "{status:?}\n{}",
            replica.logs()
        );
    }
    stopped.append(&mut replicas);
    // Anything settled late (a last dead letter, a last run) is in by now.
    let outcome = Outcome::read(&scenario, &dead_letters);

    println!(
        "{}",
        outcome.figures(queue_type, publishing, drained_after, &interruptions)
    );
    outcome.assert_nothing_lost();
    outcome.assert_duplicates_only_on_redelivery();
    outcome.assert_no_handler_ran_after_dead_lettering();
    outcome.assert_every_replica_worked();
    outcome.assert_few_duplicates_per_close();
    assert_no_secret_in_logs(&stopped, &[&user.password, &token]);
}

/// Sends messages `0..MESSAGES` at `PER_SECOND`, counting them in `sent`, and returns how
/// long it took once the broker confirmed every one. Confirms are awaited on a task of their
/// own so that waiting for them does not slow the sending down.
async fn publish_steadily(exchange: String, sent: Arc<AtomicU64>) -> Duration {
    let connection = amqp::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let (confirms, mut to_await) = tokio::sync::mpsc::unbounded_channel::<PublisherConfirm>();
    let confirmed = tokio::spawn(async move {
        while let Some(confirm) = to_await.recv().await {
            let confirmation = confirm.await.expect("publisher confirm");
            assert!(confirmation.is_ack(), "the broker refused a message");
        }
    });

    const TICKS_PER_SECOND: u64 = 100;
    let per_tick = (PER_SECOND / TICKS_PER_SECOND) as usize;
    let mut ticks = tokio::time::interval(Duration::from_millis(1000 / TICKS_PER_SECOND));
    let started = Instant::now();
    let ids: Vec<u64> = (0..MESSAGES).collect();
    for batch in ids.chunks(per_tick) {
        ticks.tick().await;
        for &id in batch {
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(id.to_string().into())
                .with_delivery_mode(2);
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    "chaos.item".into(),
                    BasicPublishOptions::default(),
                    &body(id),
                    properties,
                )
                .await
                .expect("publish");
            confirms.send(confirm).expect("the confirm task runs");
        }
        sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
    drop(confirms);
    confirmed.await.expect("every message was confirmed");
    let took = started.elapsed();
    let _ = connection.close(200, "done".into()).await;
    took
}

/// Closes every connection of the service's broker user (both replicas, consuming and
/// publishing) with one `rabbitmqctl` call. Each call starts an Erlang VM: listing the
/// connections and closing them one by one would start five, and on two cores that starves
/// the broker for seconds, so that what is measured would be the harness, not the service.
async fn close_connections_of(user: &str, replicas: &[ServiceProcess], sessions: &[usize]) {
    for _ in 0..3 {
        let user = user.to_owned();
        let output = tokio::task::spawn_blocking(move || {
            run(std::process::Command::new("rabbitmqctl").args([
                "--silent",
                "close_all_user_connections",
                &user,
                "closed by the template's chaos test",
            ]))
        })
        .await
        .unwrap();
        if output.status.success() {
            return;
        }
        // A connection that ends by itself while RabbitMQ goes through the list (the service
        // closes its other connection as soon as one is gone) fails the command with
        // `noproc`, and the connections after it stay open: close again unless every
        // replica is back already.
        assert!(
            output.stderr.contains("noproc"),
            "rabbitmqctl close_all_user_connections failed:\n{}",
            output.stderr
        );
        if new_sessions_within(replicas, sessions, Duration::from_secs(3)).await {
            return;
        }
    }
}

/// How many broker sessions the replica has started (its "consuming" log lines).
fn sessions_started(replica: &ServiceProcess) -> usize {
    replica
        .logs()
        .lines()
        .filter(|line| line.contains(" consuming "))
        .count()
}

/// Whether every replica starts a session after `before` within `timeout`: the close
/// reached them and they are back.
async fn new_sessions_within(
    replicas: &[ServiceProcess],
    before: &[usize],
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while replicas
        .iter()
        .zip(before)
        .any(|(replica, before)| sessions_started(replica) <= *before)
    {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// A dead letter as the test saw it arrive.
#[derive(Debug, Clone)]
struct SeenDeadLetter {
    id: u64,
    reason: String,
    handler: Option<String>,
    redelivered: bool,
    at_micros: u128,
}

/// Takes every message out of the dead-letter queue as it arrives, noting when.
struct DeadLetterWatch {
    seen: Arc<Mutex<Vec<SeenDeadLetter>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DeadLetterWatch {
    async fn start(queue: &str) -> Self {
        let connection = amqp::connect().await;
        let channel = connection.create_channel().await.expect("channel");
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "chaos-dead-letters".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume the dead-letter queue (the service declared it)");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                let _connection = connection;
                while let Some(Ok(delivery)) = consumer.next().await {
                    let at_micros = now_micros();
                    let id = delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .and_then(|id| id.as_str().parse().ok())
                        .expect("every dead letter keeps its message id");
                    let letter = DeadLetter {
                        body: delivery.data,
                        headers: delivery.properties.headers().clone().unwrap_or_default(),
                    };
                    seen.lock().unwrap().push(SeenDeadLetter {
                        id,
                        reason: letter.header("x-pipeforce-error").unwrap_or_default(),
                        handler: letter.header("x-pipeforce-handler"),
                        redelivered: letter.header("x-pipeforce-redelivered").as_deref()
                            == Some("true"),
                        at_micros,
                    });
                }
            }
        });
        Self { seen, task }
    }
}

impl Drop for DeadLetterWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One run of the chaos handler, as the probe recorded it.
#[derive(Debug, Clone)]
struct Run {
    replica: String,
    redelivered: bool,
    at_micros: u128,
}

/// Everything recorded so far, by message id.
struct Outcome {
    runs: BTreeMap<u64, Vec<Run>>,
    dead_letters: BTreeMap<u64, Vec<SeenDeadLetter>>,
}

impl Outcome {
    fn read(scenario: &Scenario, watch: &DeadLetterWatch) -> Self {
        let mut runs: BTreeMap<u64, Vec<Run>> = BTreeMap::new();
        for line in scenario.log.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let ["chaos", id, replica, redelivered, at] = fields[..] else {
                panic!("unexpected probe line {line:?}");
            };
            runs.entry(id.parse().unwrap()).or_default().push(Run {
                replica: replica.to_owned(),
                redelivered: redelivered == "1",
                at_micros: at.parse().unwrap(),
            });
        }
        let mut dead_letters: BTreeMap<u64, Vec<SeenDeadLetter>> = BTreeMap::new();
        for letter in watch.seen.lock().unwrap().iter() {
            dead_letters
                .entry(letter.id)
                .or_default()
                .push(letter.clone());
        }
        Self { runs, dead_letters }
    }

    fn ids_of(kind_wanted: Kind) -> impl Iterator<Item = u64> {
        (0..MESSAGES).filter(move |&id| kind(id) == kind_wanted)
    }

    /// Handled messages with a successful run; the others with a dead letter.
    fn everything_accounted_for(&self) -> bool {
        self.missing().is_empty()
    }

    fn missing(&self) -> Vec<u64> {
        (0..MESSAGES)
            .filter(|id| match kind(*id) {
                Kind::Handled => !self.runs.contains_key(id),
                Kind::Undecodable | Kind::FailsForGood => !self.dead_letters.contains_key(id),
            })
            .collect()
    }

    fn missing_summary(&self) -> String {
        let missing = self.missing();
        format!(
            "{} missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        )
    }

    fn duplicate_runs(&self) -> usize {
        self.duplicates().map(|(_, extra_runs)| extra_runs).sum()
    }

    /// The handled messages that ran more than once: when each first ran, and how many runs
    /// it had after that.
    fn duplicates(&self) -> impl Iterator<Item = (u128, usize)> + '_ {
        Self::ids_of(Kind::Handled).filter_map(|id| {
            let runs = self.runs.get(&id).filter(|runs| runs.len() > 1)?;
            let first = runs.iter().map(|run| run.at_micros).min()?;
            Some((first, runs.len() - 1))
        })
    }

    /// For each interruption, how many duplicate runs had their first run between it and
    /// the one before: those it cut short before they were acked.
    fn duplicates_by_interruption(&self, interruptions: &[u128]) -> Vec<usize> {
        let mut counts = vec![0; interruptions.len() + 1];
        for (first, extra_runs) in self.duplicates() {
            counts[interruptions.partition_point(|at| *at <= first)] += extra_runs;
        }
        counts
    }

    /// For each interruption, the age (ms) of the duplicates it cut short, sorted: how long
    /// before it took effect each had first run. Acks flush every few milliseconds, so for
    /// older ones the ack was sent and the broker had not read it yet.
    fn duplicate_ages_by_interruption(&self, interruptions: &[u128]) -> Vec<Vec<f64>> {
        let mut ages = vec![Vec::new(); interruptions.len()];
        for (first, _) in self.duplicates() {
            let cut_by = interruptions.partition_point(|at| *at < first);
            if let Some(at) = interruptions.get(cut_by) {
                ages[cut_by].push((at - first) as f64 / 1e3);
            }
        }
        for ages in &mut ages {
            ages.sort_by(f64::total_cmp);
        }
        ages
    }

    fn duplicate_dead_letters(&self) -> usize {
        self.dead_letters
            .values()
            .map(|letters| letters.len() - 1)
            .sum()
    }

    /// Runs of a handler after its message had reached the dead-letter queue.
    fn runs_after_dead_lettering(&self) -> Vec<(u64, &Run)> {
        self.dead_letters
            .iter()
            .flat_map(|(id, letters)| {
                let first = letters.iter().map(|l| l.at_micros).min().unwrap();
                self.runs
                    .get(id)
                    .into_iter()
                    .flatten()
                    .filter(move |run| run.at_micros > first)
                    .map(move |run| (*id, run))
            })
            .collect()
    }

    fn runs_by_replica(&self) -> BTreeMap<&str, usize> {
        let mut by_replica = BTreeMap::new();
        for run in self.runs.values().flatten() {
            *by_replica.entry(run.replica.as_str()).or_default() += 1;
        }
        by_replica
    }

    fn figures(
        &self,
        queue_type: &str,
        publishing: Duration,
        drained_after: Duration,
        interruptions: &[u128],
    ) -> String {
        let count = |kind| Self::ids_of(kind).count();
        let dead = |kind| {
            Self::ids_of(kind)
                .filter(|id| self.dead_letters.contains_key(id))
                .count()
        };
        let failing_runs: usize = Self::ids_of(Kind::FailsForGood)
            .map(|id| self.runs.get(&id).map_or(0, Vec::len))
            .sum();
        let mut text = String::new();
        let _ = writeln!(text, "chaos run on a {queue_type} queue:");
        let _ = writeln!(
            text,
            "  published {MESSAGES} in {:.1} s ({:.0} msg/s, aiming at {PER_SECOND}), {} \
             interruptions (5 closes of all connections, 1 SIGTERM + restart)",
            publishing.as_secs_f64(),
            MESSAGES as f64 / publishing.as_secs_f64(),
            interruptions.len()
        );
        let _ = writeln!(
            text,
            "  handled {} of {} ({} duplicate runs, all redeliveries)",
            Self::ids_of(Kind::Handled)
                .filter(|id| self.runs.contains_key(id))
                .count(),
            count(Kind::Handled),
            self.duplicate_runs()
        );
        let _ = writeln!(
            text,
            "  dead-lettered {} of {} undecodable and {} of {} failing ({failing_runs} handler \
             runs), {} duplicate copies",
            dead(Kind::Undecodable),
            count(Kind::Undecodable),
            dead(Kind::FailsForGood),
            count(Kind::FailsForGood),
            self.duplicate_dead_letters()
        );
        let _ = writeln!(
            text,
            "  handler runs after dead-lettering: {}",
            self.runs_after_dead_lettering().len()
        );
        let _ = writeln!(
            text,
            "  duplicate runs per forced close and replica: {:.1} (at most {DUPLICATES_PER_CLOSE})",
            self.duplicate_runs() as f64 / (Self::forced_closes() * REPLICAS) as f64
        );
        let _ = writeln!(text, "  runs by replica: {:?}", self.runs_by_replica());
        let start = interruptions.first().copied().unwrap_or_default();
        let mut spans: BTreeMap<&str, (u128, u128)> = BTreeMap::new();
        for run in self.runs.values().flatten() {
            let span = spans
                .entry(run.replica.as_str())
                .or_insert((run.at_micros, run.at_micros));
            span.0 = span.0.min(run.at_micros);
            span.1 = span.1.max(run.at_micros);
        }
        let seconds = |at: u128| (at as f64 - start as f64) / 1e6;
        let _ = writeln!(
            text,
            "  runs by replica from/to (s after the first interruption): {:?}; interruptions at {:?}",
            spans
                .iter()
                .map(|(replica, (from, to))| format!(
                    "{replica} {:.1}/{:.1}",
                    seconds(*from),
                    seconds(*to)
                ))
                .collect::<Vec<_>>(),
            interruptions
                .iter()
                .map(|at| format!("{:.1}", seconds(*at)))
                .collect::<Vec<_>>()
        );
        let _ = writeln!(
            text,
            "  duplicate runs by the interruption that cut them short: {:?}",
            self.duplicates_by_interruption(interruptions)
        );
        let _ = writeln!(
            text,
            "  per interruption, duplicates and how long before it their first run was (ms, \
             median/max): {}",
            self.duplicate_ages_by_interruption(interruptions)
                .iter()
                .map(|ages| match ages[..] {
                    [] => "0".to_owned(),
                    _ => format!(
                        "{} ({:.0}/{:.0})",
                        ages.len(),
                        ages[ages.len() / 2],
                        ages[ages.len() - 1]
                    ),
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(text, "  lost: {}", self.missing().len());
        let _ = write!(
            text,
            "  drained {:.1} s after the last publish",
            drained_after.as_secs_f64()
        );
        text
    }

    fn assert_nothing_lost(&self) {
        assert!(self.missing().is_empty(), "{}", self.missing_summary());
        for id in Self::ids_of(Kind::Handled) {
            assert!(
                !self.dead_letters.contains_key(&id),
                "message {id} decodes and succeeds, yet was dead-lettered: {:?}",
                self.dead_letters[&id]
            );
        }
        for id in Self::ids_of(Kind::Undecodable) {
            assert!(
                !self.runs.contains_key(&id),
                "{id} does not decode, yet ran"
            );
            for letter in &self.dead_letters[&id] {
                assert!(
                    letter.reason.starts_with("cannot decode the body"),
                    "{id}: {letter:?}"
                );
            }
        }
        for id in Self::ids_of(Kind::FailsForGood) {
            for letter in &self.dead_letters[&id] {
                assert!(
                    letter.reason.contains("chaos: permanent failure")
                        && letter.handler.as_deref() == Some("ProbeService::chaos"),
                    "{id}: {letter:?}"
                );
            }
        }
    }

    /// A message is delivered more than once only when a delivery was cut short, and RabbitMQ
    /// flags every later delivery as redelivered: so at most one delivery of each message
    /// may be unflagged, and every extra dead-letter copy comes from a flagged one.
    fn assert_duplicates_only_on_redelivery(&self) {
        for (id, runs) in &self.runs {
            let first_deliveries = runs.iter().filter(|run| !run.redelivered).count();
            let limit = match kind(*id) {
                Kind::FailsForGood => RUNS_PER_DELIVERY,
                Kind::Handled | Kind::Undecodable => 1,
            };
            assert!(
                first_deliveries <= limit,
                "message {id} ran {first_deliveries} times on its first delivery: {runs:?}"
            );
            if kind(*id) == Kind::FailsForGood {
                let deliveries = 1 + runs.iter().filter(|run| run.redelivered).count();
                assert!(
                    runs.len() <= RUNS_PER_DELIVERY * deliveries,
                    "{id}: {runs:?}"
                );
            }
        }
        for (id, letters) in &self.dead_letters {
            let unflagged = letters.iter().filter(|letter| !letter.redelivered).count();
            assert!(
                unflagged <= 1,
                "message {id} was dead-lettered twice from first deliveries: {letters:?}"
            );
        }
    }

    fn forced_closes() -> usize {
        PLAN.iter()
            .filter(|(_, breakage)| *breakage == Breakage::CloseConnections)
            .count()
    }

    /// Duplicates, all of them redeliveries, stay within a few per forced close and replica:
    /// acks do not lag behind the handlers, and deliveries of a closed connection do not run.
    fn assert_few_duplicates_per_close(&self) {
        let bound = DUPLICATES_PER_CLOSE * Self::forced_closes() * REPLICAS;
        assert!(
            self.duplicate_runs() <= bound,
            "{} duplicate runs for {} forced closes of {REPLICAS} replicas; at most {bound}",
            self.duplicate_runs(),
            Self::forced_closes()
        );
    }

    /// Once a message is in the dead-letter queue its handler does not run again, except on
    /// a redelivery: when a connection drops between the dead-letter copy's confirm and the
    /// ack, RabbitMQ hands the message out again (at-least-once delivery).
    fn assert_no_handler_ran_after_dead_lettering(&self) {
        for (id, run) in self.runs_after_dead_lettering() {
            assert!(
                run.redelivered,
                "message {id} ran after it was dead-lettered, on a first delivery: {run:?}"
            );
        }
    }

    fn assert_every_replica_worked(&self) {
        let by_replica = self.runs_by_replica();
        for replica in ["a", "b", "b2"] {
            assert!(
                by_replica.get(replica).copied().unwrap_or(0) > 0,
                "replica {replica} handled nothing: {by_replica:?}"
            );
        }
    }
}

/// Every log line of every replica, checked for the secrets the run was given.
fn assert_no_secret_in_logs(replicas: &[ServiceProcess], secrets: &[&str]) {
    let mut lines = 0;
    for replica in replicas {
        let logs = replica.logs();
        assert!(
            logs.contains("dead-lettering message"),
            "the logs cover the error paths"
        );
        for line in logs.lines() {
            lines += 1;
            for secret in secrets {
                assert!(!line.contains(secret), "a secret in the logs: {line}");
            }
        }
    }
    println!("  no secret in {lines} log lines");
}

/// A RabbitMQ user of the run's own, so that the messaging password is one the logs could
/// not contain by chance; removed on drop.
/// A RabbitMQ user of the test's own on the shared node, deleted on drop.
pub(crate) struct BrokerUser {
    pub(crate) name: String,
    pub(crate) password: String,
}

impl BrokerUser {
    pub(crate) fn create() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let user = Self {
            name: format!("chaos-{}", &id[..8]),
            password: format!("pw-{}", &id[8..]),
        };
        rabbitmqctl(&["add_user", &user.name, &user.password]);
        rabbitmqctl(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]);
        user
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = run(std::process::Command::new("rabbitmqctl").args([
            "--silent",
            "delete_user",
            &self.name,
        ]));
    }
}

fn rabbitmqctl(args: &[&str]) {
    run(std::process::Command::new("rabbitmqctl")
        .arg("--silent")
        .args(args))
    .assert_success(&format!("rabbitmqctl {}", args.join(" ")));
}
