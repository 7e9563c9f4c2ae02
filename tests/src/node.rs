//! Throw-away RabbitMQ nodes beside the shared one, for tests that must change what a node does
//! (a lowered consumer timeout, a memory alarm, a node that dies) without disturbing the shared
//! node every other test uses.
//!
//! A node runs the machine's own RabbitMQ under a name, ports and data dir of its own, with the
//! management plugin off, as the `rabbitmq` user (Debian's scripts switch to it, keeping the
//! environment). It is stopped and its data removed on drop, also when the test fails.

use std::{
    fs,
    net::TcpStream,
    os::unix::fs::{PermissionsExt, chown},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{Output, free_port, run};

/// One extra RabbitMQ node on 127.0.0.1, guest/guest.
pub struct RabbitNode {
    name: String,
    port: u16,
    dir: TempDir,
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

        let node = Self { name, port, dir };
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
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
        node.wait_until_up(Duration::from_secs(60));
        node
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
        // `stop` halts the Erlang VM and returns once it is gone.
        let _ = self.ctl(&["stop"]);
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
