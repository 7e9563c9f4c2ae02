//! Throw-away RabbitMQ nodes beside the shared one, for tests that must change what a node does
//! (a lowered consumer timeout, a memory alarm, a node that dies) without disturbing the shared
//! node every other test uses; and clusters of them ([`RabbitCluster`]).
//!
//! A node runs the machine's own RabbitMQ under a name, ports and data dir of its own, with the
//! management plugin off, as the `rabbitmq` user (Debian's scripts switch to it, keeping the
//! environment, so every node has the same Erlang cookie and can join the others). It can be
//! killed (`kill -9`), stopped and started again on the same ports and data, and is stopped and
//! its data removed on drop, also when the test fails.

use std::{
    fs,
    net::TcpStream,
    os::unix::fs::{PermissionsExt, chown},
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tempfile::TempDir;

use crate::{Output, free_port, run};

/// One extra RabbitMQ node on 127.0.0.1, guest/guest.
pub struct RabbitNode {
    name: String,
    port: u16,
    /// The Erlang distribution port, kept across restarts like the AMQP port.
    dist_port: u16,
    dir: TempDir,
    /// Whether the node should be running: started and neither killed nor stopped since.
    running: AtomicBool,
}

impl RabbitNode {
    /// Starts a node; `conf` lines are appended to its `rabbitmq.conf` (e.g.
    /// `"consumer_timeout = 5000"`). Waits until it accepts connections.
    pub fn start(conf: &str) -> Self {
        Self::start_with(conf, "[].")
    }

    /// Like [`RabbitNode::start`], with an `advanced.config` too, for settings `rabbitmq.conf`
    /// cannot express (e.g. `[{rabbit, [{channel_tick_interval, 1000}]}].`).
    pub fn start_with(conf: &str, advanced_config: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("pf-test-{}@localhost", &id[..8]);
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("pipeforce-rabbit-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().to_owned();
        let path = path.as_path();
        fs::write(
            path.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n{conf}\n"),
        )
        .expect("write rabbitmq.conf");
        fs::write(path.join("advanced.config"), advanced_config).expect("write advanced.config");
        fs::write(path.join("enabled_plugins"), "[].").expect("write enabled_plugins");
        for sub in ["mnesia", "log"] {
            fs::create_dir(path.join(sub)).expect("create node dir");
        }
        give_to_rabbitmq(path);

        let node = Self {
            name,
            port,
            dist_port: free_port(),
            dir,
            running: AtomicBool::new(false),
        };
        node.launch();
        node
    }

    /// Starts the node's Erlang VM on its name, ports and data dir, and waits until it is up.
    fn launch(&self) {
        let path = self.dir.path();
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", path.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", path.join("log"))
            .env("RABBITMQ_CONFIG_FILE", path.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                path.join("advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                path.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", path.join("pid"))
            .status()
            .expect("rabbitmq-server runs");
        assert!(started.success(), "rabbitmq-server -detached: {started}");
        self.running.store(true, Ordering::SeqCst);
        self.wait_until_up(Duration::from_secs(90));
    }

    /// Starts a node stopped or killed before, on the same name, ports and data (so it comes
    /// back into its cluster), and waits until it is up.
    pub fn start_again(&self) {
        assert!(
            !self.running.load(Ordering::SeqCst),
            "{} runs already",
            self.name
        );
        self.launch();
    }

    /// Stops the node the orderly way (`rabbitmqctl stop`): clients get a connection.close.
    pub fn stop(&self) {
        if self.running.swap(false, Ordering::SeqCst) {
            // `stop` halts the Erlang VM and returns once it is gone.
            let _ = self.ctl(&["stop"]);
        }
    }

    /// Kills the node's Erlang VM with SIGKILL, as a crash or a lost machine would: no
    /// connection.close, no handing over. Returns once the process is gone, with the time
    /// the signal was sent (finding the process takes a second or two before that).
    pub fn kill(&self) -> SystemTime {
        let pid = self.os_pid();
        self.running.store(false, Ordering::SeqCst);
        let killed_at = SystemTime::now();
        nix::sys::signal::kill(pid, Signal::SIGKILL).expect("kill -9 the node");
        let deadline = Instant::now() + Duration::from_secs(10);
        // Signal 0 reports whether the process exists; a zombie counts until it is reaped.
        while nix::sys::signal::kill(pid, None).is_ok() && !is_zombie(pid) {
            assert!(Instant::now() < deadline, "{} survived kill -9", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        killed_at
    }

    /// The OS process id of the node's Erlang VM.
    pub fn os_pid(&self) -> Pid {
        let output = self.ctl(&["eval", "os:getpid()."]);
        output.assert_success("rabbitmqctl eval os:getpid()");
        let pid = output.stdout.trim().trim_matches('"');
        Pid::from_raw(
            pid.parse()
                .unwrap_or_else(|_| panic!("os:getpid() gave {pid:?}")),
        )
    }

    /// Makes the node a member of `seed`'s cluster (stop_app, join_cluster, start_app).
    pub fn join(&self, seed: &RabbitNode) {
        self.ctl(&["stop_app"])
            .assert_success(&format!("rabbitmqctl -n {} stop_app", self.name));
        self.ctl(&["join_cluster", seed.name()])
            .assert_success(&format!("{} join_cluster {}", self.name, seed.name()));
        self.ctl(&["start_app"])
            .assert_success(&format!("rabbitmqctl -n {} start_app", self.name));
        self.wait_until_up(Duration::from_secs(90));
    }

    /// The Erlang node name, e.g. `pf-test-1a2b3c4d@localhost`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The AMQP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The variables that point a service at this node.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PIPEFORCE_MESSAGING_HOST", "127.0.0.1".to_owned()),
            ("PIPEFORCE_MESSAGING_PORT", self.port.to_string()),
        ]
    }

    /// Runs `rabbitmqctl -n <node> <args>`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        run(Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.name])
            .args(args))
    }

    /// The node's log so far, for failure messages.
    pub fn log(&self) -> String {
        let log = self
            .dir
            .path()
            .join("log")
            .join(format!("{}.log", self.name));
        fs::read_to_string(log).unwrap_or_default()
    }

    fn wait_until_up(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let listening = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if listening && self.ctl(&["await_startup"]).status.success() {
                return;
            }
            if Instant::now() >= deadline {
                let log = self.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(30)..];
                panic!(
                    "RabbitMQ node {} did not start within {timeout:?}; its log ends:\n{}",
                    self.name,
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the process has exited and waits to be reaped (the node is no child of ours, so
/// it normally is reaped by init at once; this keeps [`RabbitNode::kill`] from waiting on it).
fn is_zombie(pid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// Several [`RabbitNode`]s joined into one RabbitMQ cluster; every node is stopped on drop,
/// side by side, also when the test fails.
pub struct RabbitCluster {
    pub nodes: Vec<RabbitNode>,
}

impl RabbitCluster {
    /// Starts `size` nodes at once (a node takes 10 to 40 s to start on a busy machine), then
    /// joins the others to the first, one by one.
    pub fn start(size: usize) -> Self {
        let nodes: Vec<RabbitNode> = std::thread::scope(|scope| {
            let starting: Vec<_> = (0..size)
                .map(|_| scope.spawn(|| RabbitNode::start("")))
                .collect();
            starting
                .into_iter()
                .map(|node| node.join().expect("a node starts"))
                .collect()
        });
        // Built before joining: should a join fail, dropping it stops every node.
        let cluster = Self { nodes };
        for node in &cluster.nodes[1..] {
            node.join(&cluster.nodes[0]);
        }
        cluster
    }

    /// `PIPEFORCE_MESSAGING_ADDRESSES` for the cluster: every node's address.
    pub fn addresses(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node listening on AMQP port `port`.
    pub fn node_on_port(&self, port: u16) -> Option<&RabbitNode> {
        self.nodes.iter().find(|node| node.port() == port)
    }

    /// The node named `name`.
    pub fn node_named(&self, name: &str) -> Option<&RabbitNode> {
        self.nodes.iter().find(|node| node.name() == name)
    }

    /// `rabbitmqctl <args>` on the first running node: a question any member can answer.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let node = self
            .nodes
            .iter()
            .find(|node| node.running.load(Ordering::SeqCst))
            .expect("a node of the cluster runs");
        node.ctl(args)
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        std::thread::scope(|scope| {
            for node in &self.nodes {
                scope.spawn(|| node.stop());
            }
        });
    }
}

/// Makes `dir` and everything in it the `rabbitmq` user's: the node runs as that user.
fn give_to_rabbitmq(dir: &Path) {
    let id = |flag: &str| -> u32 {
        let output = run(Command::new("id").args([flag, "rabbitmq"]));
        output
            .assert_success("id rabbitmq")
            .stdout
            .trim()
            .parse()
            .expect("numeric id")
    };
    let (uid, gid) = (id("-u"), id("-g"));
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        chown(&path, Some(uid), Some(gid)).expect("chown to rabbitmq");
        if path.is_dir() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
            for entry in fs::read_dir(&path).expect("read dir") {
                stack.push(entry.expect("dir entry").path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extra_node_runs_with_its_own_settings_and_is_gone_after_drop() {
        let node = RabbitNode::start_with(
            "consumer_timeout = 5000",
            "[{rabbit, [{channel_tick_interval, 1000}]}].",
        );
        let setting = |key: &str| {
            node.ctl(&["eval", &format!("application:get_env(rabbit, {key}).")])
                .assert_success("rabbitmqctl eval")
                .stdout
                .trim()
                .to_owned()
        };
        assert_eq!(setting("consumer_timeout"), "{ok,5000}");
        assert_eq!(setting("channel_tick_interval"), "{ok,1000}");
        let port = node.port();
        let name = node.name().to_owned();

        drop(node);

        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "{name} still listens"
        );
    }
}
