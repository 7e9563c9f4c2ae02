//! A broker node dies: two replicas of the probe service consume a quorum queue replicated on
//! a three-node RabbitMQ cluster while a publisher with confirms sends a steady stream, one
//! message in a hundred undecodable and one in a hundred failing for good. Mid-stream the test
//! `kill -9`s the node each replica is connected to (and starts it again), then the queue's
//! leader node, then restarts all three nodes one at a time.
//!
//! Asserted: every message was handled or dead-lettered with its reason; anything that ran
//! twice ran on a delivery RabbitMQ flagged as redelivered (or was sent twice by the test's
//! own publisher after a lost confirm); each replica whose node went away answered 503 on
//! `/health/ready`, then resumed consuming on another node and answered 200 again; a
//! `POST /greetings` during all this answered within the publish timeout, and every one
//! answered 202 reached the broker. Printed: failover time and duplicates per interruption.
//!
//! The cluster is three nodes of the test's own ([`RabbitCluster`]), not the shared node plus
//! two: the shared node serves the rest of the suite meanwhile, and `join_cluster` would reset
//! it. The nodes are stopped on drop, also when the test fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use template_tests::{
    ServiceProcess,
    amqp::{self, Broker, DeadLetter},
    node::{RabbitCluster, RabbitNode},
    shared_target_lock,
};

use crate::{
    chaos::{Kind, ONE_AT_A_TIME, RUNS_PER_DELIVERY, body, kind, now_micros},
    probe::{PROBE_SERVICE, Scenario},
};

/// Messages per second the publisher aims at: modest, three Erlang VMs share two cores.
const PER_SECOND: u64 = 300;
/// Messages sent between interruptions, so that each one hits a steady stream.
const BETWEEN_INTERRUPTIONS: u64 = 3 * PER_SECOND;
/// `PIPEFORCE_MESSAGING_PUBLISH_TIMEOUT_SECS` of the replicas.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);
/// What a failover should take at most: from the kill to the first message handled on the
/// new node. Printed, not asserted: a machine busy with the suite's builds stretches it.
const FAILOVER_TARGET: Duration = Duration::from_secs(5);
/// What a failover must take at most, busy machine or not.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// How often the readiness of each replica is sampled: well below the shortest reconnect
/// delay (200 ms), so no 503 goes unseen.
const READINESS_SAMPLING: Duration = Duration::from_millis(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::await_holding_lock,
    reason = "the guard keeps the suite's builds waiting; nothing here waits for one"
)]
async fn on_a_three_node_cluster_replicas_fail_over_and_nothing_is_lost() {
    // Arrange
    let _alone = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(|| LazyLock::force(&PROBE_SERVICE))
        .await
        .expect("the probe service builds");
    let cluster = tokio::task::block_in_place(|| RabbitCluster::start(3));
    // Failover times measure the service, not the suite's builds: keep those waiting.
    let _quiet = tokio::task::block_in_place(shared_target_lock);
    let addresses = cluster.addresses();
    let timeout_secs = PUBLISH_TIMEOUT.as_secs().to_string();
    let scenario = Scenario::on_node(
        &cluster.nodes[0],
        &[
            ("PIPEFORCE_MESSAGING_ADDRESSES", &addresses),
            ("PIPEFORCE_MESSAGING_QUEUE_TYPE", "quorum"),
            ("PIPEFORCE_MESSAGING_PUBLISH_TIMEOUT_SECS", &timeout_secs),
            ("PIPEFORCE_HUB_URL", "http://127.0.0.1:9"),
        ],
    )
    .await;
    let setup = amqp::connect_to(&cluster.nodes[0].amqp_url()).await;
    // The service uses a dead-letter queue that exists as it is: make it a replicated one.
    declare_quorum_queue(&setup, &scenario.names.dead_letter_queue).await;
    let replicas = [
        Replica::start(&scenario, "a").await,
        Replica::start(&scenario, "b").await,
    ];
    let greetings_queue = format!("test.greetings.{}", scenario.names.service);
    declare_quorum_queue(&setup, &greetings_queue).await;
    bind(
        &setup,
        &greetings_queue,
        &scenario.names.exchange,
        "courier.greeting",
    )
    .await;
    let _ = setup.close(200, "set up".into()).await;
    for queue in [
        scenario.names.queue(),
        scenario.names.dead_letter_queue.clone(),
    ] {
        let members = QueueState::of(&cluster, &queue).members;
        assert_eq!(
            members.len(),
            3,
            "{queue} is replicated on every node: {members:?}"
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let urls: Vec<String> = cluster.nodes.iter().map(RabbitNode::amqp_url).collect();
    let publisher = tokio::spawn(publish_until_stopped(
        urls.clone(),
        scenario.names.exchange.clone(),
        Arc::clone(&stop),
        Arc::clone(&sent),
    ));
    let greeters: Vec<_> = replicas
        .iter()
        .map(|replica| {
            tokio::spawn(greet_until_stopped(
                replica.clone_handle(),
                Arc::clone(&stop),
            ))
        })
        .collect();

    // Act
    let mut interruptions = Vec::new();
    let plan: Vec<Step> = vec![
        Step::KillNodeOf(0),
        Step::KillNodeOf(1),
        Step::KillLeader,
        Step::Restart(0),
        Step::Restart(1),
        Step::Restart(2),
    ];
    for step in plan {
        let until = sent.load(Ordering::Relaxed) + BETWEEN_INTERRUPTIONS;
        while sent.load(Ordering::Relaxed) < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        interruptions.push(interrupt(&cluster, &scenario, &replicas, step).await);
    }
    let until = sent.load(Ordering::Relaxed) + BETWEEN_INTERRUPTIONS;
    while sent.load(Ordering::Relaxed) < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let publishing = publisher.await.expect("the publisher finished");
    let mut greetings = Vec::new();
    for greeter in greeters {
        greetings.extend(greeter.await.expect("the greeter finished"));
    }

    // Every message handled or dead-lettered; the dead letters are collected as they come.
    let collector = Broker::connect_to(&urls[0]).await;
    let mut dead_letters: Vec<DeadLetter> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let outcome = loop {
        dead_letters.extend(collector.take_all(&scenario.names.dead_letter_queue).await);
        let outcome = Outcome::read(&scenario, &dead_letters, &publishing);
        if outcome.missing().is_empty() {
            break outcome;
        }
        assert!(
            Instant::now() < deadline,
            "not every message was handled or dead-lettered within 2 minutes:\n{}",
            outcome.missing_summary()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    scenario.wait_until_queue_is_empty().await;
    let captured: BTreeSet<String> = collector
        .take_all(&greetings_queue)
        .await
        .iter()
        .filter_map(|message| {
            let greeting: serde_json::Value = serde_json::from_slice(&message.body).ok()?;
            Some(greeting["name"].as_str()?.to_owned())
        })
        .collect();

    // Assert
    println!(
        "{}",
        outcome.figures(&interruptions, &replicas, &publishing, &greetings)
    );
    outcome.assert_nothing_lost();
    outcome.assert_duplicates_only_on_redelivery();
    for interruption in &interruptions {
        interruption.assert_replicas_failed_over(&outcome, &replicas);
    }
    assert_greetings_answered_in_time_and_accepted_only_when_confirmed(
        &greetings, &replicas, &captured,
    );
}

/// One thing the test breaks.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// `kill -9` the node replica `n` is connected to, then start it again.
    KillNodeOf(usize),
    /// `kill -9` the node that leads the service queue, then start it again.
    KillLeader,
    /// Stop node `n` the orderly way and start it again (one step of a rolling restart).
    Restart(usize),
}

/// What one step broke, and when.
struct Interruption {
    label: String,
    /// When the node was sent SIGKILL, or asked to stop.
    at_micros: u128,
    /// When the node's process was gone.
    gone_micros: u128,
    killed: bool,
    /// When the node was running again with every queue member online.
    back_micros: u128,
    node: String,
    /// The replicas that were connected to that node, and so had to move.
    moved: Vec<usize>,
    /// Where each moved replica was connected once it was ready again.
    moved_to: BTreeMap<usize, String>,
}

async fn interrupt(
    cluster: &RabbitCluster,
    scenario: &Scenario,
    replicas: &[Replica],
    step: Step,
) -> Interruption {
    let connected: Vec<String> = replicas
        .iter()
        .map(|replica| replica.connected_node(cluster))
        .collect();
    let (label, node) = match step {
        Step::KillNodeOf(n) => (
            format!("kill -9 the node of replica {}", replicas[n].name),
            cluster
                .node_named(&connected[n])
                .expect("a node of the cluster"),
        ),
        Step::KillLeader => {
            let queue = scenario.names.queue();
            let leader = tokio::task::block_in_place(|| QueueState::of(cluster, &queue).leader);
            (
                "kill -9 the queue's leader".to_owned(),
                cluster
                    .node_named(&leader)
                    .expect("the leader is a node of the cluster"),
            )
        }
        Step::Restart(n) => ("rolling restart".to_owned(), &cluster.nodes[n]),
    };
    let moved: Vec<usize> = (0..replicas.len())
        .filter(|&r| connected[r] == node.name())
        .collect();
    let asked_at = now_micros();
    let (at_micros, killed) = tokio::task::block_in_place(|| match step {
        Step::KillNodeOf(_) | Step::KillLeader => (micros(node.kill()), true),
        Step::Restart(_) => {
            node.stop();
            (asked_at, false)
        }
    });
    let gone_micros = now_micros();

    // The moved replicas come back on another node while this one is down.
    let mut moved_to = BTreeMap::new();
    for &r in &moved {
        replicas[r]
            .readiness
            .wait_until_back(at_micros, FAILOVER_LIMIT)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "{label} ({}): replica {} was not ready again within {FAILOVER_LIMIT:?}:\n{}",
                    node.name(),
                    replicas[r].name,
                    replicas[r].process.logs()
                )
            });
        moved_to.insert(r, replicas[r].connected_node(cluster));
    }
    tokio::task::block_in_place(|| node.start_again());
    for queue in [
        scenario.names.queue(),
        scenario.names.dead_letter_queue.clone(),
    ] {
        QueueState::wait_until_all_online(cluster, &queue).await;
    }
    Interruption {
        label,
        at_micros,
        gone_micros,
        killed,
        back_micros: now_micros(),
        node: node.name().to_owned(),
        moved,
        moved_to,
    }
}

impl Interruption {
    /// Where a moved replica's failover time starts: at the kill; for an orderly stop, when
    /// the replica was first seen unready (the node closed its connections then, give or
    /// take one readiness sample), as `rabbitmqctl stop` takes a while to get there.
    fn failover_start(&self, down: &Span) -> u128 {
        if self.killed {
            self.at_micros
        } else {
            down.first_micros
        }
    }

    /// Each moved replica answered 503 after the interruption and 200 again, consumes from
    /// another node, and handled a message there; the failover took at most the limit.
    fn assert_replicas_failed_over(&self, outcome: &Outcome, replicas: &[Replica]) {
        for &r in &self.moved {
            let replica = &replicas[r];
            let down = replica
                .readiness
                .down_after(self.at_micros)
                .unwrap_or_else(|| {
                    panic!(
                        "{}: replica {} never answered 503",
                        self.label, replica.name
                    )
                });
            assert_eq!(
                down.status, 503,
                "{}: replica {} did not answer while it had no broker",
                self.label, replica.name
            );
            assert_ne!(
                self.moved_to[&r], self.node,
                "{}: replica {} still on the node that went away",
                self.label, replica.name
            );
            let failover = outcome
                .failover(&replica.name, self.failover_start(&down), down.last_micros)
                .unwrap_or_else(|| {
                    panic!(
                        "{}: replica {} handled nothing after it was ready again",
                        self.label, replica.name
                    )
                });
            assert!(
                failover <= FAILOVER_LIMIT,
                "{}: replica {} took {failover:?} to fail over",
                self.label,
                replica.name
            );
        }
    }
}

/// A replica of the probe service, and what the test sees of its readiness.
struct Replica {
    name: String,
    process: ServiceProcess,
    readiness: ReadinessWatch,
}

/// What a background task needs of a replica.
struct ReplicaHandle {
    name: String,
    http: String,
}

impl Replica {
    async fn start(scenario: &Scenario, name: &str) -> Self {
        let process = scenario.start_with(&[("PROBE_REPLICA", name)]).await;
        let readiness = ReadinessWatch::start(process.http.clone());
        Self {
            name: name.to_owned(),
            process,
            readiness,
        }
    }

    fn clone_handle(&self) -> ReplicaHandle {
        ReplicaHandle {
            name: self.name.clone(),
            http: self.process.http.clone(),
        }
    }

    /// The node this replica's broker connections lead to. RabbitMQ names the connections of
    /// both replicas alike (after the service), so ask the process: the remote port of its
    /// established TCP connections is the AMQP port of one node.
    fn connected_node(&self, cluster: &RabbitCluster) -> String {
        let http_port: u16 = self
            .process
            .http
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let nodes: BTreeSet<String> = tcp_connections(self.process.pid())
            .into_iter()
            .filter(|(local, _)| *local != http_port)
            .map(|(_, remote)| remote)
            .filter_map(|port| cluster.node_on_port(port))
            .map(|node| node.name().to_owned())
            .collect();
        assert_eq!(
            nodes.len(),
            1,
            "replica {} should be connected to one node: {nodes:?}",
            self.name
        );
        nodes.into_iter().next().unwrap()
    }
}

/// The local and remote ports of the established TCP connections of process `pid`, from
/// `/proc`.
fn tcp_connections(pid: u32) -> Vec<(u16, u16)> {
    let sockets: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the replica's file descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            const ESTABLISHED: &str = "01";
            if fields.len() > 9 && fields[3] == ESTABLISHED && sockets.contains(fields[9]) {
                let port = |address: &str| {
                    let hex = address.rsplit(':').next().unwrap();
                    u16::from_str_radix(hex, 16).expect("a hex port")
                };
                ports.push((port(fields[1]), port(fields[2])));
            }
        }
    }
    ports
}

/// A span of samples of `/health/ready` that gave the same status.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// 200, 503, or 0 when there was no answer.
    status: u16,
    first_micros: u128,
    last_micros: u128,
}

/// Samples a replica's `/health/ready` every [`READINESS_SAMPLING`] in the background.
struct ReadinessWatch {
    spans: Arc<Mutex<Vec<Span>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadinessWatch {
    fn start(http: String) -> Self {
        let spans = Arc::new(Mutex::new(Vec::<Span>::new()));
        let task = tokio::spawn({
            let spans = Arc::clone(&spans);
            async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .unwrap();
                let url = format!("{http}/health/ready");
                loop {
                    let status = match client.get(&url).send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    let now = now_micros();
                    {
                        let mut spans = spans.lock().unwrap();
                        match spans.last_mut() {
                            Some(span) if span.status == status => span.last_micros = now,
                            _ => spans.push(Span {
                                status,
                                first_micros: now,
                                last_micros: now,
                            }),
                        }
                    }
                    tokio::time::sleep(READINESS_SAMPLING).await;
                }
            }
        });
        Self { spans, task }
    }

    /// The first span of 503s (or no answers) that ended after `at`.
    fn down_after(&self, at: u128) -> Option<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .find(|span| span.status != 200 && span.last_micros > at)
            .copied()
    }

    /// The first span of 200s after the first span of 503s after `at`.
    fn back_after(&self, at: u128) -> Option<Span> {
        let down = self.down_after(at)?;
        self.spans
            .lock()
            .unwrap()
            .iter()
            .find(|span| span.status == 200 && span.first_micros > down.last_micros)
            .copied()
    }

    /// Waits until the replica answered 503 after `at` and 200 after that.
    async fn wait_until_back(&self, at: u128, timeout: Duration) -> Option<Span> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(back) = self.back_after(at) {
                return Some(back);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(READINESS_SAMPLING).await;
        }
    }
}

impl Drop for ReadinessWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What `rabbitmqctl list_queues` says of a quorum queue.
struct QueueState {
    leader: String,
    members: Vec<String>,
    online: Vec<String>,
}

impl QueueState {
    fn of(cluster: &RabbitCluster, queue: &str) -> Self {
        let output = cluster.ctl(&[
            "list_queues",
            "name",
            "leader",
            "members",
            "online",
            "--formatter",
            "json",
        ]);
        output.assert_success("rabbitmqctl list_queues");
        let queues: serde_json::Value =
            serde_json::from_str(&output.stdout).expect("list_queues gives JSON");
        let entry = queues
            .as_array()
            .and_then(|queues| queues.iter().find(|entry| entry["name"] == queue))
            .unwrap_or_else(|| panic!("{queue} is not in {queues}"));
        let names = |key: &str| -> Vec<String> {
            entry[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect()
        };
        Self {
            leader: entry["leader"].as_str().unwrap_or_default().to_owned(),
            members: names("members"),
            online: names("online"),
        }
    }

    /// Waits until every member of `queue` is online again (after a node came back).
    async fn wait_until_all_online(cluster: &RabbitCluster, queue: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = tokio::task::block_in_place(|| Self::of(cluster, queue));
            if state.online.len() == state.members.len() && !state.leader.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{queue}: members {:?}, online {:?}, after 60 s",
                state.members,
                state.online
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn declare_quorum_queue(connection: &Connection, queue: &str) {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .unwrap_or_else(|error| panic!("declare the quorum queue {queue}: {error}"));
}

async fn bind(connection: &Connection, queue: &str, exchange: &str, pattern: &str) {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|error| panic!("bind {queue} to {exchange}: {error}"));
}

/// What the test's publisher did.
struct Publishing {
    /// Messages `0..sent` were sent, and each was confirmed.
    sent: u64,
    /// Messages sent again after their confirm did not come (the connection's node went
    /// away): the first copy may have arrived too, so they may run twice without a flag.
    resent: BTreeSet<u64>,
    /// How often the publisher had to connect to another node.
    reconnects: usize,
    took: Duration,
}

/// Sends messages `0, 1, ...` at [`PER_SECOND`] until `stop`, counting them in `sent` once
/// confirmed. A message whose confirm does not come is sent again on a connection to the next
/// node, as any publisher that wants at-least-once must.
async fn publish_until_stopped(
    urls: Vec<String>,
    exchange: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Publishing {
    const TICK: Duration = Duration::from_millis(50);
    let per_tick = PER_SECOND * TICK.as_millis() as u64 / 1000;
    let mut node = 0;
    let (mut connection, mut channel) = open_publishing_channel(&urls, &mut node).await;
    let mut resent = BTreeSet::new();
    let mut reconnects = 0;
    let mut ticks = tokio::time::interval(TICK);
    let started = Instant::now();
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let mut batch: Vec<u64> = (next..next + per_tick).collect();
        next += per_tick;
        loop {
            let unconfirmed = publish_confirmed(&channel, &exchange, &batch).await;
            if unconfirmed.is_empty() {
                break;
            }
            resent.extend(&unconfirmed);
            batch = unconfirmed;
            let _ = connection.close(200, "moving to another node".into()).await;
            node += 1;
            (connection, channel) = open_publishing_channel(&urls, &mut node).await;
            reconnects += 1;
        }
        sent.store(next, Ordering::Relaxed);
    }
    let _ = connection.close(200, "done".into()).await;
    Publishing {
        sent: next,
        resent,
        reconnects,
        took: started.elapsed(),
    }
}

/// A confirm-mode channel on the first node from `urls[*node]` on that takes a connection.
async fn open_publishing_channel(urls: &[String], node: &mut usize) -> (Connection, Channel) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url = &urls[*node % urls.len()];
        let properties =
            lapin::ConnectionProperties::default().with_connection_name("template-tests".into());
        let connecting = Connection::connect(url, properties);
        if let Ok(Ok(connection)) = tokio::time::timeout(Duration::from_secs(5), connecting).await
            && let Ok(channel) = connection.create_channel().await
            && channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .is_ok()
        {
            return (connection, channel);
        }
        assert!(Instant::now() < deadline, "no node takes a connection");
        *node += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `ids` and waits for their confirms; returns those not positively confirmed
/// within 5 s.
async fn publish_confirmed(channel: &Channel, exchange: &str, ids: &[u64]) -> Vec<u64> {
    let mut confirms = Vec::new();
    let mut unconfirmed = Vec::new();
    for (index, &id) in ids.iter().enumerate() {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(id.to_string().into())
            .with_delivery_mode(2);
        let published = channel
            .basic_publish(
                exchange.into(),
                "chaos.item".into(),
                BasicPublishOptions::default(),
                &body(id),
                properties,
            )
            .await;
        match published {
            Ok(confirm) => confirms.push((id, confirm)),
            Err(_) => {
                unconfirmed.extend(&ids[index..]);
                break;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for (id, confirm) in confirms {
        match tokio::time::timeout_at(deadline, confirm).await {
            Ok(Ok(Confirmation::Ack(_))) => {}
            _ => unconfirmed.push(id),
        }
    }
    unconfirmed.sort_unstable();
    unconfirmed
}

/// One `POST /greetings` and how it went.
#[derive(Debug)]
struct Greeting {
    replica: String,
    name: String,
    at_micros: u128,
    took: Duration,
    /// The HTTP status, or why there was none.
    outcome: Result<u16, String>,
}

/// Posts a greeting to the replica every 100 ms until `stop`, one at a time.
async fn greet_until_stopped(replica: ReplicaHandle, stop: Arc<AtomicBool>) -> Vec<Greeting> {
    // Room beyond the publish timeout, so that a hang shows as a slow answer, not an error.
    let client = reqwest::Client::builder()
        .timeout(PUBLISH_TIMEOUT * 4)
        .build()
        .unwrap();
    let url = format!("{}/greetings", replica.http);
    let mut greetings = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let name = format!("{}-{}", replica.name, greetings.len());
        let started = Instant::now();
        let at_micros = now_micros();
        let outcome = client
            .post(&url)
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .map(|response| response.status().as_u16())
            .map_err(|error| error.to_string());
        greetings.push(Greeting {
            replica: replica.name.clone(),
            name,
            at_micros,
            took: started.elapsed(),
            outcome,
        });
    }
    greetings
}

/// The greetings posted to a replica while it had no broker: a span of 503s on its
/// `/health/ready` overlaps the time the post took.
fn while_unready<'a>(greetings: &'a [Greeting], replicas: &[Replica]) -> Vec<&'a Greeting> {
    greetings
        .iter()
        .filter(|greeting| {
            let replica = replicas
                .iter()
                .find(|replica| replica.name == greeting.replica)
                .expect("a replica of the test");
            let until = greeting.at_micros + greeting.took.as_micros();
            replica.readiness.spans.lock().unwrap().iter().any(|span| {
                span.status != 200
                    && span.first_micros <= until
                    && span.last_micros >= greeting.at_micros
            })
        })
        .collect()
}

/// Every `POST /greetings` answered within the publish timeout (and a little for HTTP on a
/// busy machine), with 202 or 503; and every greeting answered 202 is in the capture queue,
/// i.e. the broker had it.
fn assert_greetings_answered_in_time_and_accepted_only_when_confirmed(
    greetings: &[Greeting],
    replicas: &[Replica],
    captured: &BTreeSet<String>,
) {
    let during_failovers = while_unready(greetings, replicas);
    assert!(
        !during_failovers.is_empty(),
        "no POST /greetings was answered while its replica had no broker"
    );
    let limit = PUBLISH_TIMEOUT + Duration::from_secs(2);
    for greeting in greetings {
        assert!(
            matches!(greeting.outcome, Ok(202 | 503)),
            "POST /greetings to replica {}: {greeting:?}",
            greeting.replica
        );
        assert!(
            greeting.took <= limit,
            "answered after {limit:?}: {greeting:?}"
        );
        if greeting.outcome == Ok(202) {
            assert!(
                captured.contains(&greeting.name),
                "answered 202 yet never reached the broker: {greeting:?}"
            );
        }
    }
}

/// One run of the chaos handler, as the probe recorded it.
#[derive(Debug, Clone)]
struct Run {
    replica: String,
    redelivered: bool,
    at_micros: u128,
}

/// A dead letter as the test took it from the dead-letter queue.
#[derive(Debug, Clone)]
struct SeenDeadLetter {
    reason: String,
    handler: Option<String>,
    redelivered: bool,
}

/// Everything recorded, by message id.
struct Outcome {
    sent: u64,
    resent: BTreeSet<u64>,
    runs: BTreeMap<u64, Vec<Run>>,
    dead_letters: BTreeMap<u64, Vec<SeenDeadLetter>>,
}

impl Outcome {
    fn read(scenario: &Scenario, dead_letters: &[DeadLetter], publishing: &Publishing) -> Self {
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
        let mut letters: BTreeMap<u64, Vec<SeenDeadLetter>> = BTreeMap::new();
        for letter in dead_letters {
            letters
                .entry(id_of(&letter.body))
                .or_default()
                .push(SeenDeadLetter {
                    reason: letter.header("x-pipeforce-error").unwrap_or_default(),
                    handler: letter.header("x-pipeforce-handler"),
                    redelivered: letter.header("x-pipeforce-redelivered").as_deref()
                        == Some("true"),
                });
        }
        Self {
            sent: publishing.sent,
            resent: publishing.resent.clone(),
            runs,
            dead_letters: letters,
        }
    }

    fn ids_of(&self, wanted: Kind) -> impl Iterator<Item = u64> {
        (0..self.sent).filter(move |&id| kind(id) == wanted)
    }

    fn missing(&self) -> Vec<u64> {
        (0..self.sent)
            .filter(|id| match kind(*id) {
                Kind::Handled => !self.runs.contains_key(id),
                Kind::Undecodable | Kind::FailsForGood => !self.dead_letters.contains_key(id),
            })
            .collect()
    }

    fn missing_summary(&self) -> String {
        let missing = self.missing();
        format!(
            "{} of {} missing, e.g. {:?}",
            missing.len(),
            self.sent,
            &missing[..missing.len().min(20)]
        )
    }

    /// The time from `from` (a kill) to the first run of `replica` after `down_until` (the
    /// last time it answered 503): its first message handled on the new node.
    fn failover(&self, replica: &str, from: u128, down_until: u128) -> Option<Duration> {
        let first = self
            .runs
            .values()
            .flatten()
            .filter(|run| run.replica == replica && run.at_micros > down_until)
            .map(|run| run.at_micros)
            .min()?;
        Some(Duration::from_micros(first.saturating_sub(from) as u64))
    }

    /// The longest time between `from` and `to` in which no replica handled anything.
    fn longest_pause(&self, from: u128, to: u128) -> Duration {
        let mut times: Vec<u128> = self
            .runs
            .values()
            .flatten()
            .map(|run| run.at_micros)
            .filter(|at| (from..=to).contains(at))
            .collect();
        times.push(from);
        times.push(to);
        times.sort_unstable();
        let longest = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        Duration::from_micros(longest as u64)
    }

    /// Duplicate runs of handled messages, by the interruption that cut their first run
    /// short: the first one whose node was gone after it (index `len` is "none").
    fn duplicates_by_interruption(&self, interruptions: &[Interruption]) -> Vec<usize> {
        let mut counts = vec![0; interruptions.len() + 1];
        for id in self.ids_of(Kind::Handled) {
            let Some(runs) = self.runs.get(&id).filter(|runs| runs.len() > 1) else {
                continue;
            };
            let first = runs.iter().map(|run| run.at_micros).min().unwrap();
            let cut_by = interruptions.partition_point(|i| i.gone_micros <= first);
            counts[cut_by] += runs.len() - 1;
        }
        counts
    }

    fn duplicate_runs(&self) -> usize {
        self.ids_of(Kind::Handled)
            .map(|id| {
                self.runs
                    .get(&id)
                    .map_or(0, |runs| runs.len().saturating_sub(1))
            })
            .sum()
    }

    fn figures(
        &self,
        interruptions: &[Interruption],
        replicas: &[Replica],
        publishing: &Publishing,
        greetings: &[Greeting],
    ) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "cluster run (3 nodes, quorum queues, 2 replicas):");
        let _ = writeln!(
            text,
            "  published {} in {:.1} s ({:.0} msg/s, aiming at {PER_SECOND}); the publisher moved \
             {} times and sent {} again after a lost confirm",
            self.sent,
            publishing.took.as_secs_f64(),
            self.sent as f64 / publishing.took.as_secs_f64(),
            publishing.reconnects,
            publishing.resent.len()
        );
        let _ = writeln!(
            text,
            "  handled {} of {} ({} duplicate runs); dead-lettered {} undecodable and {} failing; \
             lost {}",
            self.ids_of(Kind::Handled)
                .filter(|id| self.runs.contains_key(id))
                .count(),
            self.ids_of(Kind::Handled).count(),
            self.duplicate_runs(),
            self.ids_of(Kind::Undecodable)
                .filter(|id| self.dead_letters.contains_key(id))
                .count(),
            self.ids_of(Kind::FailsForGood)
                .filter(|id| self.dead_letters.contains_key(id))
                .count(),
            self.missing().len()
        );
        let duplicates = self.duplicates_by_interruption(interruptions);
        for (index, interruption) in interruptions.iter().enumerate() {
            let moved: Vec<String> = interruption
                .moved
                .iter()
                .map(|&r| {
                    let replica = &replicas[r];
                    let down = replica.readiness.down_after(interruption.at_micros);
                    let failover = down.and_then(|down| {
                        let from = interruption.failover_start(&down);
                        self.failover(&replica.name, from, down.last_micros)
                    });
                    let failover = failover.map_or("-".to_owned(), |took| {
                        let over = if took <= FAILOVER_TARGET {
                            ""
                        } else {
                            ", over 5 s"
                        };
                        format!("{:.2} s{over}", took.as_secs_f64())
                    });
                    let not_ready = down.map_or(0.0, |down| {
                        (down.last_micros - down.first_micros) as f64 / 1e3
                    });
                    format!(
                        "replica {} to {} in {failover} (503 for {not_ready:.0} ms)",
                        replica.name, interruption.moved_to[&r],
                    )
                })
                .collect();
            let pause = self.longest_pause(
                interruption.at_micros,
                interruption.gone_micros + 10_000_000,
            );
            let _ = writeln!(
                text,
                "  {}. {} ({}): {}; longest pause in handling {:.2} s; {} duplicate runs; node \
                 back and queues online {:.0} s after",
                index + 1,
                interruption.label,
                interruption.node,
                if moved.is_empty() {
                    "no replica connected there".to_owned()
                } else {
                    let from = if interruption.killed {
                        "the kill"
                    } else {
                        "the close"
                    };
                    format!(
                        "failed over (from {from} to the first message handled) {}",
                        moved.join(", ")
                    )
                },
                pause.as_secs_f64(),
                duplicates[index],
                (interruption.back_micros - interruption.at_micros) as f64 / 1e6,
            );
        }
        let _ = writeln!(
            text,
            "  duplicate runs after the last interruption: {}",
            duplicates[interruptions.len()]
        );
        let count = |wanted: fn(&Result<u16, String>) -> bool| {
            greetings.iter().filter(|g| wanted(&g.outcome)).count()
        };
        let slowest = greetings.iter().map(|g| g.took).max().unwrap_or_default();
        let during_failovers = while_unready(greetings, replicas);
        let _ = write!(
            text,
            "  POST /greetings: {} answered 202, {} answered 503, {} other; slowest {:.2} s \
             (publish timeout {PUBLISH_TIMEOUT:?}); {} while the replica had no broker, {} of \
             them answered 202",
            count(|o| *o == Ok(202)),
            count(|o| *o == Ok(503)),
            count(|o| !matches!(o, Ok(202 | 503))),
            slowest.as_secs_f64(),
            during_failovers.len(),
            during_failovers
                .iter()
                .filter(|g| g.outcome == Ok(202))
                .count()
        );
        text
    }

    fn assert_nothing_lost(&self) {
        assert!(self.missing().is_empty(), "{}", self.missing_summary());
        for id in self.ids_of(Kind::Handled) {
            assert!(
                !self.dead_letters.contains_key(&id),
                "message {id} decodes and succeeds, yet was dead-lettered: {:?}",
                self.dead_letters[&id]
            );
        }
        for id in self.ids_of(Kind::Undecodable) {
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
        for id in self.ids_of(Kind::FailsForGood) {
            for letter in &self.dead_letters[&id] {
                assert!(
                    letter.reason.contains("chaos: permanent failure")
                        && letter.handler.as_deref() == Some("ProbeService::chaos"),
                    "{id}: {letter:?}"
                );
            }
        }
    }

    /// A message runs more than once only when a delivery was cut short, and RabbitMQ flags
    /// every later delivery as redelivered; or when the test itself sent it twice.
    fn assert_duplicates_only_on_redelivery(&self) {
        for (id, runs) in &self.runs {
            let copies = if self.resent.contains(id) { 2 } else { 1 };
            let first_deliveries = runs.iter().filter(|run| !run.redelivered).count();
            let runs_per_delivery = match kind(*id) {
                Kind::FailsForGood => RUNS_PER_DELIVERY,
                Kind::Handled | Kind::Undecodable => 1,
            };
            assert!(
                first_deliveries <= runs_per_delivery * copies,
                "message {id} ran {first_deliveries} times on first deliveries ({copies} \
                 sent): {runs:?}"
            );
        }
        for (id, letters) in &self.dead_letters {
            let copies = if self.resent.contains(id) { 2 } else { 1 };
            let unflagged = letters.iter().filter(|letter| !letter.redelivered).count();
            assert!(
                unflagged <= copies,
                "message {id} was dead-lettered {unflagged} times from first deliveries \
                 ({copies} sent): {letters:?}"
            );
        }
    }
}

/// The id in a chaos body: every one starts `{"id":<id>`, decodable or not.
fn id_of(body: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(body);
    let digits: String = text
        .strip_prefix(r#"{"id":"#)
        .unwrap_or_else(|| panic!("not a chaos body: {text}"))
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("a numeric id")
}

fn micros(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).unwrap().as_micros()
}
