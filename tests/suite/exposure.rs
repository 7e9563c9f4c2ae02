//! What a running service needs and exposes: one listening socket, its HTTP port, and client
//! connections to the broker only (read from `/proc`, as `ss -tlnp` would); no root and no
//! writable filesystem.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use template_tests::{
    ServiceProcess,
    amqp::{Broker, Names},
};

use crate::{DEFAULT_BINARY, probe::Scenario};

/// A TCP socket of the process: local and remote port, and whether it listens.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Socket {
    listening: bool,
    local_port: u16,
    remote_port: u16,
}

/// The inodes of the sockets `pid` holds open.
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the process's fds")
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?.to_owned();
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

fn port(address: &str) -> u16 {
    let (_, port) = address.rsplit_once(':').expect("address:port");
    u16::from_str_radix(port, 16).expect("hex port")
}

/// The TCP and UDP sockets of `pid` (IPv4 and IPv6), from the kernel's tables.
fn sockets(pid: u32) -> (Vec<Socket>, usize) {
    let inodes = socket_inodes(pid);
    let owned = |table: &str| -> Vec<Vec<String>> {
        fs::read_to_string(format!("/proc/{pid}/net/{table}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().map(str::to_owned).collect())
            .filter(|fields: &Vec<String>| {
                fields
                    .get(9)
                    .and_then(|inode| inode.parse().ok())
                    .is_some_and(|inode: u64| inodes.contains(&inode))
            })
            .collect()
    };
    let mut tcp: Vec<Socket> = ["tcp", "tcp6"]
        .into_iter()
        .flat_map(owned)
        .map(|fields| Socket {
            listening: fields[3] == "0A",
            local_port: port(&fields[1]),
            remote_port: port(&fields[2]),
        })
        .collect();
    tcp.sort();
    let udp = ["udp", "udp6"].into_iter().flat_map(owned).count();
    (tcp, udp)
}

#[tokio::test]
async fn the_service_listens_on_its_http_port_only_and_connects_only_to_the_broker() {
    let scenario = Scenario::new(&[]).await;
    let service = scenario.start().await;
    let http_port: u16 = service
        .http
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap();
    // The readiness poll's connection closes after the poll; wait until the service has let
    // go of it, so that only the sockets it holds of its own accord are left.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (tcp, udp) = loop {
        let (tcp, udp) = sockets(service.pid());
        let accepted = |socket: &Socket| !socket.listening && socket.local_port == http_port;
        if !tcp.iter().any(accepted) {
            break (tcp, udp);
        }
        assert!(
            Instant::now() < deadline,
            "the service still holds the readiness poll's HTTP connection after 10 s: {tcp:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let listening: Vec<u16> = tcp
        .iter()
        .filter(|socket| socket.listening)
        .map(|socket| socket.local_port)
        .collect();
    assert_eq!(listening, [http_port], "{tcp:?}");
    let elsewhere: Vec<&Socket> = tcp
        .iter()
        .filter(|socket| !socket.listening)
        .filter(|socket| socket.remote_port != 5672)
        .collect();
    assert!(
        elsewhere.is_empty(),
        "unexpected connections: {elsewhere:?}"
    );
    assert!(
        tcp.iter().any(|socket| socket.remote_port == 5672),
        "the broker connection is seen: {tcp:?}"
    );
    assert_eq!(udp, 0, "no UDP sockets");
}

/// Runs the service with every mount read-only (in a mount namespace of its own) as the
/// distroless image's unprivileged user 65532, as `docker run --read-only --user 65532`
/// would: it must not need to write anything or be root.
const LOCKED_DOWN: &str = r#"#!/bin/sh
exec unshare --mount --propagation private sh -c '
  for target in $(awk "{ print \$2 }" /proc/self/mounts | grep -Ev "^/(proc|sys|dev)(/|$)"); do
    mount -o remount,ro,bind "$target" 2>/dev/null || true
  done
  for dir in / /tmp "$PWD"; do
    if touch "$dir/.pipeforce-rw-check" 2>/dev/null; then
      echo "locked-down: $dir is still writable" >&2
      exit 97
    fi
  done
  exec setpriv --reuid 65532 --regid 65532 --clear-groups "$0"
' "$SERVICE_BINARY"
"#;

#[tokio::test]
async fn the_service_runs_unprivileged_on_a_read_only_filesystem() {
    let names = Names::unique();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("locked-down");
    fs::write(&wrapper, LOCKED_DOWN).unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let binary = DEFAULT_BINARY.display().to_string();
    let mut env = names.env();
    env.push(("SERVICE_BINARY", binary));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let mut service = ServiceProcess::start(&wrapper, &env);
    service
        .wait_for_status("/health/ready", 200, Duration::from_secs(30))
        .await;
    let client = reqwest::Client::new();
    let posted = client
        .post(format!("{}/greetings", service.http))
        .json(&serde_json::json!({ "name": "Ada" }))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    service
        .wait_for_json(
            "/greetings/stats",
            |stats| stats["greetings"] == 1,
            Duration::from_secs(10),
        )
        .await;
    service.signal(Signal::SIGTERM);
    let status = service.wait_for_exit(Duration::from_secs(10)).await;
    Broker::connect().await.delete(&names).await;

    let logs = service.logs();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{logs}");
    assert!(!logs.contains("Read-only file system"), "{logs}");
    assert!(!logs.contains("ermission denied"), "{logs}");
}
