//! TLS to the broker (`amqps`), against a RabbitMQ node of this module's own that has only a
//! TLS listener and a certificate signed by a private CA the test makes: the set-up
//! `PIPEFORCE_MESSAGING_TLS_CA_FILE` is for.
//!
//! The node runs beside the shared one on 127.0.0.1:5672 without touching it: it has its own
//! node name, listener and distribution ports, config, data and log folders, and Erlang
//! cookie, and it is stopped when the test ends, failed or not.

use std::{
    fs,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use template_tests::{ServiceProcess, amqp::Names, free_port, run_with_timeout};

use crate::probe::PROBE_SERVICE;

/// Where Debian's package keeps RabbitMQ's own scripts. The ones on PATH (`/usr/sbin`) are a
/// wrapper that runs them as the `rabbitmq` user when called by root, and that user cannot
/// read the test's temp folder.
const RABBITMQ_SCRIPTS: &str = "/usr/lib/rabbitmq/bin";

/// The service's log line when a connection attempt fails (see the consumer).
const CANNOT_CONSUME: &str = "cannot consume from RabbitMQ";

#[tokio::test]
async fn the_service_talks_amqps_to_a_broker_with_a_private_ca_and_refuses_other_certificates() {
    // Built before the node starts, so the node does not idle through a build.
    let binary = &PROBE_SERVICE.1;
    let broker = TlsBroker::start();
    let tls_env = |names: &Names, host: &str, ca_file: Option<&Path>| {
        let mut env = names.env();
        env.push(("PIPEFORCE_MESSAGING_TLS", "true".to_owned()));
        env.push(("PIPEFORCE_MESSAGING_HOST", host.to_owned()));
        env.push(("PIPEFORCE_MESSAGING_PORT", broker.port.to_string()));
        if let Some(ca_file) = ca_file {
            env.push((
                "PIPEFORCE_MESSAGING_TLS_CA_FILE",
                ca_file.display().to_string(),
            ));
        }
        env
    };
    let start = |env: &[(&'static str, String)]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ServiceProcess::start(binary, &env)
    };

    // Trusting the CA: the service consumes, and a greeting makes the round trip through the
    // broker (POST publishes it, the service's own handler counts it).
    let trusting_names = Names::unique();
    let mut trusting = start(&tls_env(
        &trusting_names,
        "localhost",
        Some(&broker.ca_file()),
    ));
    // Without the CA: the system's roots do not know it.
    let mut untrusting = start(&tls_env(&Names::unique(), "localhost", None));
    // The CA, but a name the certificate is not for: the name is checked too.
    let mut wrong_name = start(&tls_env(
        &Names::unique(),
        "127.0.0.2",
        Some(&broker.ca_file()),
    ));

    trusting
        .wait_for_status("/health/ready", 200, Duration::from_secs(30))
        .await;
    let client = reqwest::Client::new();
    let posted = client
        .post(format!("{}/greetings", trusting.http))
        .json(&json!({ "name": "over-tls" }))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202, "{}", trusting.logs());
    trusting
        .wait_for_json(
            "/greetings/stats",
            |stats| *stats == json!({ "greetings": 1, "last_name": "over-tls" }),
            Duration::from_secs(10),
        )
        .await;
    // The service names its connection after itself (a client property).
    let service_name = &trusting_names.service;
    let connections = broker.connections();
    let service_connection = connections
        .iter()
        .find(|c| c["client_properties"].to_string().contains(service_name))
        .unwrap_or_else(|| panic!("no connection of {service_name}: {connections:?}"));
    assert_eq!(service_connection["ssl"], true, "{service_connection}");

    for (service, problem) in [
        (&mut untrusting, "UnknownIssuer"),
        (&mut wrong_name, "certificate not valid for name"),
    ] {
        let logs = wait_for_log(service, CANNOT_CONSUME, Duration::from_secs(15)).await;
        let failure = logs
            .lines()
            .find(|line| line.contains(CANNOT_CONSUME))
            .unwrap();
        assert!(
            failure.contains("invalid peer certificate") && failure.contains(problem),
            "the log names the certificate problem ({problem}):\n{logs}"
        );
        assert!(!logs.contains("panicked"), "{logs}");
        service
            .wait_for_status("/health/ready", 503, Duration::from_secs(5))
            .await;
        service
            .wait_for_status("/health/live", 200, Duration::from_secs(5))
            .await;
    }
}

/// Polls the service's log until it contains `text`; returns the log.
async fn wait_for_log(service: &mut ServiceProcess, text: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let logs = service.logs();
        if logs.contains(text) {
            return logs;
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log within {timeout:?}:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A RabbitMQ node that listens only for amqps, on a free port, stopped on drop.
struct TlsBroker {
    /// `tls-<random>@localhost`
    node: String,
    /// The amqps port.
    port: u16,
    /// The node's files: certificates, config, data, logs and the Erlang cookie.
    dir: TempDir,
    /// `rabbitmq-server` in the foreground.
    server: Child,
}

impl TlsBroker {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rabbitmq-tls-")
            .tempdir()
            .expect("temp dir");
        let files = dir.path();
        write_certificates(files);
        let port = free_port();
        let config = format!(
            "listeners.tcp = none\n\
             listeners.ssl.default = {port}\n\
             ssl_options.cacertfile = {dir}/ca.pem\n\
             ssl_options.certfile = {dir}/server.pem\n\
             ssl_options.keyfile = {dir}/server.key\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n",
            dir = files.display()
        );
        fs::write(files.join("rabbitmq.conf"), config).unwrap();
        // No plugins: the management plugin would take the shared node's port 15672.
        fs::write(files.join("enabled_plugins"), "[].\n").unwrap();
        // Instead of /etc/rabbitmq/rabbitmq-env.conf, which names the shared node.
        fs::write(files.join("rabbitmq-env.conf"), "").unwrap();
        let log = fs::File::create(files.join("server.out")).unwrap();

        let node = format!(
            "tls-{}@localhost",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut command = Command::new(Path::new(RABBITMQ_SCRIPTS).join("rabbitmq-server"));
        node_env(&mut command, files);
        let server = command
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_CONFIG_FILE", files.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", files.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", files.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                files.join("enabled_plugins"),
            )
            // Else it is 25672 (AMQP port + 20000), the shared node's.
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {RABBITMQ_SCRIPTS}/rabbitmq-server: {e}"));
        let mut broker = Self {
            node,
            port,
            dir,
            server,
        };
        broker.wait_until_up(Duration::from_secs(60));
        broker
    }

    /// Waits for the TLS listener, then for the boot to finish.
    fn wait_until_up(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.server.try_wait() {
                panic!("rabbitmq-server exited ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "no TLS listener on port {} within {timeout:?}:\n{}",
                self.port,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let awaited = run_with_timeout(
            &mut self.rabbitmqctl(&["await_startup", "--timeout", "60"]),
            Duration::from_secs(70),
        );
        assert!(
            awaited.status.success(),
            "{}{}\n{}",
            awaited.stdout,
            awaited.stderr,
            self.logs()
        );
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `rabbitmqctl -n <node> <args>`, with the node's cookie.
    fn rabbitmqctl(&self, args: &[&str]) -> Command {
        let mut command = Command::new(Path::new(RABBITMQ_SCRIPTS).join("rabbitmqctl"));
        node_env(&mut command, self.dir.path());
        command.args(["-n", &self.node]).args(args);
        command
    }

    /// The node's client connections, as `rabbitmqctl list_connections` lists them.
    fn connections(&self) -> Vec<Value> {
        let listed = run_with_timeout(
            &mut self.rabbitmqctl(&[
                "--quiet",
                "list_connections",
                "client_properties",
                "ssl",
                "ssl_protocol",
                "--formatter",
                "json",
            ]),
            Duration::from_secs(30),
        );
        serde_json::from_str(&listed.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", listed.stdout, listed.stderr))
    }

    /// What the node printed and logged so far.
    fn logs(&self) -> String {
        let mut logs = fs::read_to_string(self.dir.path().join("server.out")).unwrap_or_default();
        let log = self
            .dir
            .path()
            .join("log")
            .join(format!("{}.log", self.node));
        logs.push_str(&fs::read_to_string(log).unwrap_or_default());
        logs
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        // `stop` halts the node; the foreground script exits with it. Killing the script
        // instead would leave the Erlang VM running.
        let stopped = self
            .rabbitmqctl(&["stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while stopped.is_ok() && Instant::now() < deadline {
            if let Ok(Some(_)) = self.server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The environment both the server and rabbitmqctl need to find the node's files.
fn node_env(command: &mut Command, files: &Path) {
    command
        // Erlang keeps its cookie in $HOME: a cookie of the node's own, in its folder.
        .env("HOME", files)
        .env("RABBITMQ_CONF_ENV_FILE", files.join("rabbitmq-env.conf"));
}

/// A CA (`ca.pem`) and a server certificate it signed for `localhost` and 127.0.0.1
/// (`server.pem`, `server.key`), in `dir`.
fn write_certificates(dir: &Path) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "template-tests private CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

    let mut server =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server_certificate = server.signed_by(&server_key, &ca).unwrap();

    fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    fs::write(dir.join("server.pem"), server_certificate.pem()).unwrap();
    fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
}
