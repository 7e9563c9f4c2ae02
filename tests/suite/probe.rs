//! A rendered service with probe handlers (`tests/fixtures/probe.rs`, and those with
//! `#[event]` options in `tests/fixtures/options_probe.rs`) that record each run in a log
//! file, and [`Scenario`]: one test's names on the broker, its log, and processes of that
//! service.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::LazyLock,
    time::{Duration, Instant},
};

use template_tests::{
    Render, Rendered, ServiceProcess,
    amqp::{AMQP_URL, Broker, Names, total_messages_on},
    node::RabbitNode,
    repo_root,
};

/// The render with the probe handlers, and its binary.
pub static PROBE_SERVICE: LazyLock<(Rendered, PathBuf)> = LazyLock::new(|| {
    let rendered = Render::new("courier")
        .run()
        .unwrap_or_else(|failure| panic!("render failed:\n{}", failure.output));
    add_service_module(
        &rendered.dir,
        "probe",
        &repo_root().join("tests/fixtures/probe.rs"),
    );
    add_service_module(
        &rendered.dir,
        "options_probe",
        &repo_root().join("tests/fixtures/options_probe.rs"),
    );
    rendered
        .cargo(&["build", "--locked"])
        .assert_success("cargo build of the probe render");
    let binary = rendered.debug_binary();
    (rendered, binary)
});

/// Adds the service module `name` (its source at `source`) to the rendered project at
/// `project` the way the rendered `src/service/mod.rs` documents: the file, the module's
/// declaration, and a call of its `register` in the process's `register`. Nothing of the
/// example services is touched.
pub(crate) fn add_service_module(project: &Path, name: &str, source: &Path) {
    let services = project.join("src/service");
    std::fs::copy(source, services.join(format!("{name}.rs"))).unwrap();
    let registry = services.join("mod.rs");
    let original = std::fs::read_to_string(&registry).unwrap();
    let extension_point = "pub fn register(services: &mut Services) {\n";
    assert_eq!(
        original.matches(extension_point).count(),
        1,
        "src/service/mod.rs has no single `{}`, the documented place to add a service; \
         update this test:\n{original}",
        extension_point.trim_end()
    );
    let registered = original.replace(
        extension_point,
        &format!("{extension_point}    {name}::register(services);\n"),
    );
    // Declared after the other service modules.
    let mut lines: Vec<&str> = registered.lines().collect();
    let last_module = lines
        .iter()
        .rposition(|line| line.starts_with("mod ") && line.ends_with(';'))
        .expect("src/service/mod.rs declares its service modules with `mod <name>;`");
    let declaration = format!("mod {name};");
    lines.insert(last_module + 1, &declaration);
    std::fs::write(&registry, lines.join("\n") + "\n").unwrap();
}

/// The lines the probe handlers recorded.
pub struct ProbeLog {
    file: tempfile::NamedTempFile,
}

impl ProbeLog {
    pub fn new() -> Self {
        Self {
            file: tempfile::NamedTempFile::new().unwrap(),
        }
    }

    pub fn path(&self) -> String {
        self.file.path().display().to_string()
    }

    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.file.path())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How often each line was recorded.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for line in self.lines() {
            *counts.entry(line).or_default() += 1;
        }
        counts
    }

    pub async fn wait_for(&self, what: &str, done: impl Fn(&[String]) -> bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if done(&lines) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; recorded: {lines:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One test's names, log and broker connection; `start` runs another service process.
pub struct Scenario {
    pub names: Names,
    pub log: ProbeLog,
    pub broker: Broker,
    extra_env: Vec<(&'static str, String)>,
    /// The broker the scenario runs on: its URL and, for an extra node, its node name.
    amqp_url: String,
    node: Option<String>,
}

impl Scenario {
    /// A scenario on the shared broker.
    pub async fn new(extra_env: &[(&'static str, &str)]) -> Self {
        Self::with_broker(AMQP_URL, None, Vec::new(), extra_env).await
    }

    /// A scenario on an extra node (`node` must outlive it): services started by it connect
    /// there, and its broker handle and clean-up talk to that node.
    pub async fn on_node(node: &RabbitNode, extra_env: &[(&'static str, &str)]) -> Self {
        Self::with_broker(
            &node.amqp_url(),
            Some(node.name().to_owned()),
            node.env(),
            extra_env,
        )
        .await
    }

    async fn with_broker(
        amqp_url: &str,
        node: Option<String>,
        broker_env: Vec<(&'static str, String)>,
        extra_env: &[(&'static str, &str)],
    ) -> Self {
        // Build the probe service before opening the broker connection: the build takes
        // minutes, and a connection left idle that long misses its heartbeats and is dropped.
        tokio::task::spawn_blocking(|| LazyLock::force(&PROBE_SERVICE))
            .await
            .expect("the probe service builds");
        let mut env = broker_env;
        env.extend(
            extra_env
                .iter()
                .map(|(key, value)| (*key, (*value).to_owned())),
        );
        Self {
            names: Names::unique(),
            log: ProbeLog::new(),
            broker: Broker::connect_to(amqp_url).await,
            extra_env: env,
            amqp_url: amqp_url.to_owned(),
            node,
        }
    }

    /// Messages in `queue` on the scenario's broker, ready and unacknowledged.
    pub fn total_messages(&self, queue: &str) -> Option<u64> {
        total_messages_on(self.node.as_deref(), queue)
    }

    /// Starts a process of the probe service and waits until it consumes.
    pub async fn start(&self) -> ServiceProcess {
        self.start_binary(&PROBE_SERVICE.1).await
    }

    /// Starts a process of `binary` (a rendered service) on this scenario's names and waits
    /// until it consumes.
    pub async fn start_binary(&self, binary: &std::path::Path) -> ServiceProcess {
        self.start_binary_with(binary, &[]).await
    }

    /// Starts a process of the probe service with more variables than the scenario's.
    pub async fn start_with(&self, env: &[(&'static str, &str)]) -> ServiceProcess {
        self.start_binary_with(&PROBE_SERVICE.1, env).await
    }

    async fn start_binary_with(
        &self,
        binary: &std::path::Path,
        more_env: &[(&'static str, &str)],
    ) -> ServiceProcess {
        let mut env = self.names.env();
        env.push(("PROBE_LOG", self.log.path()));
        env.push(("PIPEFORCE_MESSAGING_RETRY_DELAY_MS", "10".to_owned()));
        env.extend(self.extra_env.iter().cloned());
        env.extend(
            more_env
                .iter()
                .map(|(key, value)| (*key, (*value).to_owned())),
        );
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut service = ServiceProcess::start(binary, &env);
        service
            .wait_for_status("/health/ready", 200, Duration::from_secs(30))
            .await;
        service
    }

    pub async fn publish(&self, routing_key: &str, body: serde_json::Value) {
        self.broker
            .publish_json(&self.names.exchange, routing_key, &body)
            .await;
    }

    /// Waits until the service queue holds nothing, ready or unacked.
    pub async fn wait_until_queue_is_empty(&self) {
        let queue = self.names.queue();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.total_messages(&queue) != Some(0) {
            assert!(Instant::now() < deadline, "{queue} did not empty");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Removes the test's queues and exchange even when the test fails half-way.
impl Drop for Scenario {
    fn drop(&mut self) {
        let names = self.names.clone();
        let amqp_url = self.amqp_url.clone();
        // Drop cannot await, and may run inside the test's runtime: use a thread of its own.
        let cleanup = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async { Broker::connect_to(&amqp_url).await.delete(&names).await });
        });
        let _ = cleanup.join();
    }
}
