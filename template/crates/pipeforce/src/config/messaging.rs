//! `PIPEFORCE_MESSAGING_*`: where RabbitMQ is, and how the service consumes from it.

use std::{fmt, time::Duration};

use secrecy::SecretString;

use super::read::{Checker, Environment, PORT, port, variables};

/// Where RabbitMQ is, and how the service consumes from it.
#[derive(Debug, Clone)]
pub struct MessagingConfig {
    /// The brokers to connect to, tried in order: `PIPEFORCE_MESSAGING_ADDRESSES`
    /// (`host[:port],host[:port]`, for a cluster), else `PIPEFORCE_MESSAGING_HOST` (default
    /// `localhost`) and `PIPEFORCE_MESSAGING_PORT` (default 5672, or 5671 with TLS).
    pub addresses: Vec<BrokerAddress>,
    /// `PIPEFORCE_MESSAGING_VHOST`: the virtual host (default `/`).
    pub vhost: String,
    /// `PIPEFORCE_MESSAGING_TLS`: connect with TLS (`amqps`); `true` or `false` (default).
    pub tls: bool,
    /// `PIPEFORCE_MESSAGING_TLS_CA_FILE`: a PEM file of CA certificates to trust besides the
    /// system's, for a broker with a private CA. Read at start.
    pub tls_ca_pem: Option<String>,
    /// `PIPEFORCE_MESSAGING_USERNAME` (default `guest`).
    pub username: String,
    /// `PIPEFORCE_MESSAGING_PASSWORD` (default `guest`).
    pub password: SecretString,
    /// The topic exchange: `PIPEFORCE_MESSAGING_DEFAULT_TOPIC`, else
    /// `PIPEFORCE_MESSAGING_DEFAULT_EXCHANGE`, else `pipeforce.topic.default`.
    pub exchange: String,
    /// `PIPEFORCE_MESSAGING_DEFAULT_DLQ`: where messages go that cannot be handled
    /// (default `pipeforce_default_dlq`).
    pub dead_letter_queue: String,
    /// The service's own queue: `pipeforce.service.<service>`.
    pub queue: String,
    /// `PIPEFORCE_MESSAGING_QUEUE_TYPE`: `classic` (default) or `quorum`, used when the
    /// queue is created.
    pub queue_type: QueueType,
    /// `PIPEFORCE_MESSAGING_PREFETCH`: how many messages the service handles at once
    /// (1 to 65535, default 200).
    pub prefetch: u16,
    /// `PIPEFORCE_MESSAGING_MAX_RETRIES`: how often a failing handler is retried before its
    /// message is dead-lettered (0 to 100, default 3).
    pub max_retries: u32,
    /// `PIPEFORCE_MESSAGING_RETRY_DELAY_MS`: the wait before the first retry, doubled for each
    /// further one (0 to 60000, default 200), up to 60 s, each with a random part of up to as
    /// much again.
    pub retry_delay: Duration,
    /// `PIPEFORCE_MESSAGING_HANDLER_TIMEOUT_SECS`: how long one handler run may take (1 to
    /// 3600, default 60); a run past it counts as a failure, retried and then dead-lettered.
    pub handler_timeout: Duration,
    /// `PIPEFORCE_MESSAGING_CONSUMER_TIMEOUT_SECS`: the broker's `consumer_timeout` (1 to
    /// 604800, default 1800, RabbitMQ's default). RabbitMQ closes the channel of a delivery
    /// unacked for that long and the message starts over; so a failing message is
    /// dead-lettered instead of retried when the next retry could not end before it. Set it
    /// to the broker's value.
    pub consumer_timeout: Duration,
    /// `PIPEFORCE_MESSAGING_PUBLISH_TIMEOUT_SECS`: how long a publish (events, requests,
    /// replies, dead-letter copies) waits for a connection and the broker's confirm before it
    /// fails (1 to 3600, default 10). Bounds the wait while RabbitMQ blocks publishers.
    pub publish_timeout: Duration,
    /// `PIPEFORCE_MESSAGING_DELIVERY_LIMIT`: how often a quorum queue delivers a message
    /// again (after the service died holding it) before RabbitMQ dead-letters it (1 to 1000,
    /// default 5). Set when the queue is created; classic queues have no such limit.
    pub delivery_limit: u32,
}

/// One broker of [`MessagingConfig::addresses`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The RabbitMQ queue type of the service's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// A classic queue: the default, the fastest on a single node.
    Classic,
    /// A quorum queue: replicated across a cluster, survives the loss of a node.
    Quorum,
}

impl QueueType {
    /// The value of the `x-queue-type` queue argument.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

variables! {
    /// The variables [`MessagingConfig`] is read from.
    struct Vars in "PIPEFORCE_MESSAGING_" {
        addresses, host, port, tls, tls_ca_file, vhost, username, password,
        default_topic, default_exchange, default_dlq, queue_type, prefetch, max_retries,
        retry_delay_ms, handler_timeout_secs, consumer_timeout_secs, publish_timeout_secs,
        delivery_limit,
    }
}

impl MessagingConfig {
    pub(super) fn read(env: &Environment, service: &str, check: &mut Checker) -> Self {
        let vars = Vars::read(env, check);
        let tls = check.parse_with(&vars.tls, false, "true or false", boolean);
        Self {
            addresses: addresses(&vars, tls, check),
            tls_ca_pem: check.optional(&vars.tls_ca_file, read_ca_file),
            vhost: check.text(&vars.vhost, "/"),
            tls,
            username: check.text(&vars.username, "guest"),
            password: SecretString::from(check.secret_text(&vars.password, "guest")),
            exchange: vars
                .default_topic
                .optional()
                .or_else(|| vars.default_exchange.optional())
                .unwrap_or_else(|| "pipeforce.topic.default".to_owned()),
            dead_letter_queue: check.text(&vars.default_dlq, "pipeforce_default_dlq"),
            queue: format!("pipeforce.service.{service}"),
            queue_type: check.choice(
                &vars.queue_type,
                QueueType::Classic,
                &[
                    ("classic", QueueType::Classic),
                    ("quorum", QueueType::Quorum),
                ],
            ),
            prefetch: check.number(&vars.prefetch, 200, 1..=65535),
            max_retries: check.number(&vars.max_retries, 3, 0..=100),
            retry_delay: check.millis(&vars.retry_delay_ms, 200, 0..=60_000),
            handler_timeout: check.seconds(&vars.handler_timeout_secs, 60, 1..=3600),
            consumer_timeout: check.seconds(&vars.consumer_timeout_secs, 1800, 1..=604_800),
            publish_timeout: check.seconds(&vars.publish_timeout_secs, 10, 1..=3600),
            delivery_limit: check.number(&vars.delivery_limit, 5, 1..=1000),
        }
    }
}

fn boolean(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// The brokers: the list in `PIPEFORCE_MESSAGING_ADDRESSES`, else host and port. The host and
/// the port are checked either way, and the port is the list's default port.
fn addresses(vars: &Vars, tls: bool, check: &mut Checker) -> Vec<BrokerAddress> {
    let host = check.text(&vars.host, "localhost");
    let port = check.parse_with(&vars.port, if tls { 5671 } else { 5672 }, PORT, port);
    let list = check.optional(&vars.addresses, |list| broker_addresses(list, tls, port));
    list.unwrap_or_else(|| vec![BrokerAddress { host, port }])
}

/// `host[:port],host[:port]`; a missing port is `default_port`. An entry may be written as
/// a URL, `amqp://host[:port]` (`amqps://` with TLS), as long as it holds no credentials:
/// those have variables of their own, which apply to every broker. The error is what was
/// expected.
fn broker_addresses(
    list: &str,
    tls: bool,
    default_port: u16,
) -> Result<Vec<BrokerAddress>, &'static str> {
    const EXPECTED: &str =
        "a comma-separated list of host[:port], e.g. rabbit-0:5672,rabbit-1:5672";
    let scheme = if tls { "amqps://" } else { "amqp://" };
    list.split(',')
        .map(|entry| {
            let entry = entry.trim();
            if entry.contains('@') {
                return Err("host[:port] entries without credentials (set \
                     PIPEFORCE_MESSAGING_USERNAME and PIPEFORCE_MESSAGING_PASSWORD)");
            }
            let entry = match entry.strip_prefix(scheme) {
                Some(address) => address,
                None if !entry.contains("://") => entry,
                None if tls => {
                    return Err("host[:port] or amqps://host[:port] entries \
                         (PIPEFORCE_MESSAGING_TLS is true)");
                }
                None => {
                    return Err("host[:port] or amqp://host[:port] entries \
                         (amqps:// needs PIPEFORCE_MESSAGING_TLS=true)");
                }
            };
            let (host, port) = match entry.rsplit_once(':') {
                Some((host, port)) => (host, self::port(port).ok_or(EXPECTED)?),
                None => (entry, default_port),
            };
            let valid_host = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if valid_host {
                Ok(BrokerAddress {
                    host: host.to_owned(),
                    port,
                })
            } else {
                Err(EXPECTED)
            }
        })
        .collect()
}

/// The CA certificates in the PEM file at `path`.
fn read_ca_file(path: &str) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Ok(pem),
        Ok(_) => Err("a PEM file holding CA certificates".to_owned()),
        Err(error) => Err(format!("a readable PEM file ({error})")),
    }
}

/// Its part of the start-up line; the password shows as `***`.
impl fmt::Display for MessagingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addresses: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        write!(
            f,
            "messaging={}@{} vhost={} tls={} messaging_password=*** exchange={} queue={} \
             queue_type={} dead_letter_queue={} prefetch={} max_retries={} retry_delay={}ms \
             handler_timeout={}s consumer_timeout={}s publish_timeout={}s delivery_limit={}",
            self.username,
            addresses.join(","),
            self.vhost,
            self.tls,
            self.exchange,
            self.queue,
            self.queue_type.as_str(),
            self.dead_letter_queue,
            self.prefetch,
            self.max_retries,
            self.retry_delay.as_millis(),
            self.handler_timeout.as_secs(),
            self.consumer_timeout.as_secs(),
            self.publish_timeout.as_secs(),
            self.delivery_limit,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::{assert_no_password, config, problem_variables};

    #[test]
    fn the_topic_variable_wins_over_the_exchange_variable() {
        let config = config(&[
            ("PIPEFORCE_MESSAGING_DEFAULT_TOPIC", "from.topic"),
            ("PIPEFORCE_MESSAGING_DEFAULT_EXCHANGE", "from.exchange"),
        ])
        .unwrap();

        assert_eq!(config.messaging.exchange, "from.topic");
    }
    #[test]
    fn a_cluster_is_a_list_of_addresses_with_default_ports() {
        let config = config(&[
            ("PIPEFORCE_MESSAGING_ADDRESSES", "rabbit-0:5673, rabbit-1"),
            ("PIPEFORCE_MESSAGING_TLS", "true"),
        ])
        .unwrap();

        let addresses: Vec<String> = config
            .messaging
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addresses, ["rabbit-0:5673", "rabbit-1:5671"]);
    }
    #[test]
    fn messaging_tuning_values_are_range_checked() {
        let error = config(&[
            ("PIPEFORCE_MESSAGING_PREFETCH", "0"),
            ("PIPEFORCE_MESSAGING_MAX_RETRIES", "101"),
            ("PIPEFORCE_MESSAGING_QUEUE_TYPE", "stream"),
            ("PIPEFORCE_MESSAGING_TLS", "maybe"),
            ("PIPEFORCE_MESSAGING_ADDRESSES", "a:1,:2"),
            ("PIPEFORCE_MESSAGING_TLS_CA_FILE", "/does/not/exist.pem"),
        ])
        .unwrap_err();

        let mut variables = problem_variables(&error);
        variables.sort_unstable();
        assert_eq!(
            variables,
            [
                "PIPEFORCE_MESSAGING_ADDRESSES",
                "PIPEFORCE_MESSAGING_MAX_RETRIES",
                "PIPEFORCE_MESSAGING_PREFETCH",
                "PIPEFORCE_MESSAGING_QUEUE_TYPE",
                "PIPEFORCE_MESSAGING_TLS",
                "PIPEFORCE_MESSAGING_TLS_CA_FILE",
            ]
        );
    }
    #[test]
    fn messaging_time_limits_default_to_rabbitmqs_and_are_range_checked() {
        let defaults = config(&[]).unwrap().messaging;
        assert_eq!(defaults.handler_timeout, Duration::from_secs(60));
        assert_eq!(defaults.consumer_timeout, Duration::from_secs(1800));

        let error = config(&[
            ("PIPEFORCE_MESSAGING_HANDLER_TIMEOUT_SECS", "0"),
            ("PIPEFORCE_MESSAGING_CONSUMER_TIMEOUT_SECS", "30m"),
        ])
        .unwrap_err();
        let mut variables = problem_variables(&error);
        variables.sort_unstable();
        assert_eq!(
            variables,
            [
                "PIPEFORCE_MESSAGING_CONSUMER_TIMEOUT_SECS",
                "PIPEFORCE_MESSAGING_HANDLER_TIMEOUT_SECS",
            ]
        );
    }
    #[test]
    fn broker_urls_give_host_and_port_but_credentials_belong_in_their_own_variables() {
        let addresses = |list: &str, tls: &str| {
            config(&[
                ("PIPEFORCE_MESSAGING_ADDRESSES", list),
                ("PIPEFORCE_MESSAGING_TLS", tls),
            ])
            .map(|config| {
                config
                    .messaging
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            })
            .map_err(|error| error.to_string())
        };

        assert_eq!(
            addresses("amqp://rabbit-0:5673, amqp://rabbit-1", "false").unwrap(),
            ["rabbit-0:5673", "rabbit-1:5672"]
        );
        assert_eq!(
            addresses("amqps://rabbit-0", "true").unwrap(),
            ["rabbit-0:5671"]
        );

        let error = addresses("amqp://mq-user:mq-pw-4@rabbit:5672", "false").unwrap_err();
        assert_no_password(&error);
        assert!(
            error.contains(
                "PIPEFORCE_MESSAGING_ADDRESSES: expected host[:port] entries without credentials \
                 (set PIPEFORCE_MESSAGING_USERNAME and PIPEFORCE_MESSAGING_PASSWORD)"
            ),
            "{error}"
        );

        let error = addresses("amqps://rabbit", "false").unwrap_err();
        assert!(error.contains("PIPEFORCE_MESSAGING_TLS=true"), "{error}");
    }
}
