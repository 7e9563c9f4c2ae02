//! Service configuration, read once at start from `PIPEFORCE_*` environment variables.
//!
//! PIPEFORCE's `service.start` injects most of these variables into the container; run locally,
//! every one of them has a default that points at a broker on localhost. envy collects the raw
//! values, then each one is checked on its own, so a broken deployment gets *one* error listing
//! every bad variable with what was expected, instead of a fix-one-rerun loop.
//!
//! Rules that hold for every variable:
//! - Unknown `PIPEFORCE_*` variables are ignored: PIPEFORCE injects more than a service reads.
//! - An empty optional variable counts as unset. An empty variable that has a default is an
//!   error: it usually means a broken manifest, and silently using the default would hide it.
//! - Secrets are [`SecretString`]s, redacted in `Debug` output, and their values never appear in
//!   an error message. A password inside a URL (`https://user:password@host`) is kept for the
//!   client that needs it but shows as `***` in `Display`, `Debug` and errors ([`masked_url`],
//!   [`masked`]), so logging the whole config is safe.

use std::{
    ffi::OsStr,
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
    time::Duration,
};

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::names::{DNS_LABEL_RULE, is_dns_label};

/// Prefix of every variable the service reads.
pub const PREFIX: &str = "PIPEFORCE_";

/// Values chosen when the project was generated, used where the environment says nothing.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// The service name: the default for `PIPEFORCE_SERVICE`.
    pub service: &'static str,
    /// The PIPEFORCE namespace: the default for `PIPEFORCE_NAMESPACE`.
    pub namespace: &'static str,
    /// The HTTP port: the default for `PIPEFORCE_HTTP_PORT`.
    pub http_port: u16,
    /// The service's version (its crate's), shown in the API documents.
    pub version: &'static str,
}

/// The effective configuration of the service. `Debug` and `Display` mask secrets and the
/// passwords in URLs, so both are safe to log.
#[derive(Clone)]
pub struct Config {
    /// `PIPEFORCE_SERVICE`: the service name; it names the service's queue.
    pub service: String,
    /// The service's version, from [`Defaults::version`].
    pub version: String,
    /// `PIPEFORCE_NAMESPACE`: the PIPEFORCE namespace the service runs in.
    pub namespace: String,
    /// `PIPEFORCE_STAGE`: the stage PIPEFORCE reports (e.g. `dev`, `prod`); informational.
    pub stage: Option<String>,
    /// `PIPEFORCE_DOMAIN`: the domain of the PIPEFORCE instance; informational.
    pub domain: Option<String>,
    /// `PIPEFORCE_PORTAL_URL`: the portal of the namespace; informational.
    pub portal_url: Option<Url>,
    /// How the service serves HTTP.
    pub http: HttpConfig,
    /// How the service reaches the PIPEFORCE hub.
    pub hub: HubConfig,
    /// How the service reaches RabbitMQ.
    pub messaging: MessagingConfig,
    /// `PIPEFORCE_SHUTDOWN_TIMEOUT_SECS`: how long in-flight work may take to finish after
    /// SIGTERM before the service exits anyway (default 25, below Kubernetes' 30 s grace period).
    pub shutdown_timeout: Duration,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
}

/// How the service logs and where it sends traces. Traces follow OpenTelemetry's standard
/// variables, so the same settings work for every OpenTelemetry SDK in the cluster.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `PIPEFORCE_LOG_FORMAT`: `text` or `json`; default `json` inside Kubernetes
    /// (`KUBERNETES_SERVICE_HOST` is set), `text` elsewhere.
    pub log_format: LogFormat,
    /// Where spans go: set by `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (and not switched off by `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`). Unset:
    /// spans and trace ids still exist and propagate, but are not exported.
    pub otlp: Option<OtlpExport>,
    /// `OTEL_SERVICE_NAME`, else the PIPEFORCE service name.
    pub service_name: String,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`).
    pub sampler: Sampler,
}

/// The log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// An OTLP trace destination.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpExport {
    /// The full URL spans are sent to (for HTTP, with `/v1/traces` appended to a generic
    /// endpoint, as the OpenTelemetry specification says).
    pub endpoint: String,
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc`,
    /// `http/protobuf` (the default) or `http/json`.
    pub protocol: OtlpProtocol,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// gRPC, usually port 4317.
    Grpc,
    /// Protobuf over HTTP, usually port 4318.
    HttpProtobuf,
    /// JSON over HTTP, usually port 4318.
    HttpJson,
}

/// Which traces are recorded, as `OTEL_TRACES_SAMPLER` names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// `always_on`
    AlwaysOn,
    /// `always_off`
    AlwaysOff,
    /// `traceidratio`, with the ratio from `OTEL_TRACES_SAMPLER_ARG`
    TraceIdRatio(f64),
    /// `parentbased_always_on`: follow the caller's decision, record new traces.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`
    ParentBasedTraceIdRatio(f64),
}

/// The HTTP server's address.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `PIPEFORCE_HTTP_HOST`: the IP address to listen on (default `0.0.0.0`, every interface,
    /// which a container needs; use `127.0.0.1` to stay local).
    pub host: IpAddr,
    /// `PIPEFORCE_HTTP_PORT`: the port to listen on; `0` picks a free one (tests use that).
    pub port: u16,
}

/// Where the PIPEFORCE hub is and how to authenticate to it.
#[derive(Clone)]
pub struct HubConfig {
    /// `PIPEFORCE_HUB_URL`; else `http://PIPEFORCE_HUB_HOST:PIPEFORCE_HUB_PORT` when the host is
    /// set (port default 8080); else the in-cluster address
    /// `http://hub.<namespace>.svc.cluster.local:8080`.
    pub url: Url,
    /// `PIPEFORCE_SECRET`: the credentials for the hub, if any.
    pub auth: Option<HubAuth>,
    /// `PIPEFORCE_HUB_TIMEOUT_SECS`: how long one hub call may take (1 to 3600, default 30).
    pub timeout: Duration,
}

/// Credentials for the hub, parsed from `PIPEFORCE_SECRET`.
#[derive(Debug, Clone)]
pub enum HubAuth {
    /// `Basic <user>:<password>` (or the same base64-encoded, as in an `Authorization` header).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: SecretString,
    },
    /// `Bearer <token>`, or `Apitoken <token>` (PIPEFORCE sends API tokens as bearer tokens).
    Bearer(SecretString),
}

impl HubAuth {
    /// Parses `<scheme> <credentials>`; the scheme is case-insensitive. The error never holds
    /// the value: it is a secret.
    fn parse(secret: &str) -> Result<Self, &'static str> {
        use base64::{Engine, engine::general_purpose::STANDARD};

        const EXPECTED: &str = "`Basic <user>:<password>`, `Bearer <token>` or `Apitoken <token>`";
        let (scheme, credentials) = secret.trim().split_once(' ').ok_or(EXPECTED)?;
        let credentials = credentials.trim();
        if credentials.is_empty() {
            return Err(EXPECTED);
        }
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let plain = if credentials.contains(':') {
                    credentials.to_owned()
                } else {
                    STANDARD
                        .decode(credentials)
                        .ok()
                        .and_then(|bytes| String::from_utf8(bytes).ok())
                        .ok_or(EXPECTED)?
                };
                match plain.split_once(':') {
                    Some((username, password)) if !username.is_empty() => Ok(Self::Basic {
                        username: username.to_owned(),
                        password: SecretString::from(password.to_owned()),
                    }),
                    _ => Err(EXPECTED),
                }
            }
            "bearer" | "apitoken" => Ok(Self::Bearer(SecretString::from(credentials.to_owned()))),
            _ => Err(EXPECTED),
        }
    }
}

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

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env(defaults: Defaults) -> Result<Self, ConfigError> {
        Self::from_vars(defaults, std::env::vars_os())
    }

    /// Reads the configuration from the given variables, as if they were the environment.
    ///
    /// Tests use this instead of changing the process environment, which is shared by every
    /// test running in parallel.
    pub fn from_vars<K, V>(
        defaults: Defaults,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut check = Checker::default();
        let mut utf8_vars = Vec::new();
        let mut others = OtherVars::default();
        for (key, value) in vars {
            let Some(key) = key.as_ref().to_str() else {
                continue;
            };
            let ours = key.starts_with(PREFIX);
            if !ours && !others.wants(key) {
                continue;
            }
            let Some(value) = value.as_ref().to_str() else {
                check.report(key, "valid UTF-8 text", Found::NotUtf8);
                continue;
            };
            if ours {
                utf8_vars.push((key.to_owned(), value.to_owned()));
            } else {
                others.insert(key, value);
            }
        }
        let env: Env = envy::prefixed(PREFIX)
            .from_iter(utf8_vars)
            .map_err(|error| ConfigError::single("PIPEFORCE_*", error.to_string()))?;
        Self::check(defaults, env, others, check)
    }

    fn check(
        defaults: Defaults,
        env: Env,
        others: OtherVars,
        mut check: Checker,
    ) -> Result<Self, ConfigError> {
        let service = check.parse_with(
            "PIPEFORCE_SERVICE",
            env.service,
            defaults.service.to_owned(),
            DNS_LABEL_RULE,
            dns_label,
        );
        let namespace = check.parse_with(
            "PIPEFORCE_NAMESPACE",
            env.namespace,
            defaults.namespace.to_owned(),
            DNS_LABEL_RULE,
            dns_label,
        );
        let stage = optional(env.stage);
        let domain = optional(env.domain);
        let portal_url = check.http_url("PIPEFORCE_PORTAL_URL", env.portal_url);

        let http = HttpConfig {
            host: check.parse(
                "PIPEFORCE_HTTP_HOST",
                env.http_host,
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                "an IP address such as 0.0.0.0 or 127.0.0.1",
            ),
            port: check.parse(
                "PIPEFORCE_HTTP_PORT",
                env.http_port,
                defaults.http_port,
                "a port number from 0 to 65535 (0 picks a free port)",
            ),
        };

        let hub_url = check.http_url("PIPEFORCE_HUB_URL", env.hub_url);
        let hub_host = optional(env.hub_host);
        let hub_port = check.parse_with("PIPEFORCE_HUB_PORT", env.hub_port, 8080, PORT, port);
        let hub_url = match (hub_url, hub_host) {
            (Some(url), _) => url,
            (None, Some(host)) => match Url::parse(&format!("http://{host}:{hub_port}")) {
                Ok(url) if url.path() == "/" => url,
                _ => {
                    check.report(
                        "PIPEFORCE_HUB_HOST",
                        "a host name or IP address",
                        Found::Value(host),
                    );
                    in_cluster_hub_url(&namespace)
                }
            },
            (None, None) => in_cluster_hub_url(&namespace),
        };
        let auth = optional(env.secret).and_then(|secret| match HubAuth::parse(&secret) {
            Ok(auth) => Some(auth),
            Err(expected) => {
                check.report("PIPEFORCE_SECRET", expected, Found::Hidden);
                None
            }
        });
        let hub = HubConfig {
            url: hub_url,
            auth,
            timeout: check.parse_with(
                "PIPEFORCE_HUB_TIMEOUT_SECS",
                env.hub_timeout_secs,
                Duration::from_secs(30),
                "a whole number of seconds from 1 to 3600",
                seconds_1_to_3600,
            ),
        };

        let tls = check.parse_with(
            "PIPEFORCE_MESSAGING_TLS",
            env.messaging_tls,
            false,
            "true or false",
            boolean,
        );
        let host = check.text("PIPEFORCE_MESSAGING_HOST", env.messaging_host, "localhost");
        let default_port = if tls { 5671 } else { 5672 };
        let port = check.parse_with(
            "PIPEFORCE_MESSAGING_PORT",
            env.messaging_port,
            default_port,
            PORT,
            port,
        );
        let addresses = match optional(env.messaging_addresses) {
            None => vec![BrokerAddress { host, port }],
            Some(list) => broker_addresses(&list, tls, port).unwrap_or_else(|expected| {
                check.report(
                    "PIPEFORCE_MESSAGING_ADDRESSES",
                    expected,
                    Found::Value(list),
                );
                Vec::new()
            }),
        };
        let tls_ca_pem = optional(env.messaging_tls_ca_file).and_then(|path| {
            match std::fs::read_to_string(&path) {
                Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem),
                Ok(_) => {
                    check.report(
                        "PIPEFORCE_MESSAGING_TLS_CA_FILE",
                        "a PEM file holding CA certificates",
                        Found::Value(path),
                    );
                    None
                }
                Err(error) => {
                    check.report(
                        "PIPEFORCE_MESSAGING_TLS_CA_FILE",
                        &format!("a readable PEM file ({error})"),
                        Found::Value(path),
                    );
                    None
                }
            }
        });

        let messaging = MessagingConfig {
            addresses,
            vhost: check.text("PIPEFORCE_MESSAGING_VHOST", env.messaging_vhost, "/"),
            tls,
            tls_ca_pem,
            username: check.text(
                "PIPEFORCE_MESSAGING_USERNAME",
                env.messaging_username,
                "guest",
            ),
            password: SecretString::from(check.secret_text(
                "PIPEFORCE_MESSAGING_PASSWORD",
                env.messaging_password,
                "guest",
            )),
            exchange: match optional(env.messaging_default_topic) {
                Some(topic) => topic,
                None => optional(env.messaging_default_exchange)
                    .unwrap_or_else(|| "pipeforce.topic.default".to_owned()),
            },
            dead_letter_queue: check.text(
                "PIPEFORCE_MESSAGING_DEFAULT_DLQ",
                env.messaging_default_dlq,
                "pipeforce_default_dlq",
            ),
            queue: format!("pipeforce.service.{service}"),
            queue_type: check.parse_with(
                "PIPEFORCE_MESSAGING_QUEUE_TYPE",
                env.messaging_queue_type,
                QueueType::Classic,
                "classic or quorum",
                |value| match value {
                    "classic" => Some(QueueType::Classic),
                    "quorum" => Some(QueueType::Quorum),
                    _ => None,
                },
            ),
            prefetch: check.parse_with(
                "PIPEFORCE_MESSAGING_PREFETCH",
                env.messaging_prefetch,
                200,
                "a whole number from 1 to 65535",
                |value| value.parse().ok().filter(|n: &u16| *n > 0),
            ),
            max_retries: check.parse_with(
                "PIPEFORCE_MESSAGING_MAX_RETRIES",
                env.messaging_max_retries,
                3,
                "a whole number from 0 to 100",
                |value| value.parse().ok().filter(|n: &u32| *n <= 100),
            ),
            retry_delay: check.parse_with(
                "PIPEFORCE_MESSAGING_RETRY_DELAY_MS",
                env.messaging_retry_delay_ms,
                Duration::from_millis(200),
                "a whole number of milliseconds from 0 to 60000",
                |value| {
                    let millis: u64 = value.parse().ok()?;
                    (millis <= 60_000).then(|| Duration::from_millis(millis))
                },
            ),
            handler_timeout: check.parse_with(
                "PIPEFORCE_MESSAGING_HANDLER_TIMEOUT_SECS",
                env.messaging_handler_timeout_secs,
                Duration::from_secs(60),
                "a whole number of seconds from 1 to 3600",
                seconds_1_to_3600,
            ),
            consumer_timeout: check.parse_with(
                "PIPEFORCE_MESSAGING_CONSUMER_TIMEOUT_SECS",
                env.messaging_consumer_timeout_secs,
                Duration::from_secs(1800),
                "a whole number of seconds from 1 to 604800",
                |value| {
                    let secs: u64 = value.parse().ok()?;
                    (1..=604_800)
                        .contains(&secs)
                        .then(|| Duration::from_secs(secs))
                },
            ),
            publish_timeout: check.parse_with(
                "PIPEFORCE_MESSAGING_PUBLISH_TIMEOUT_SECS",
                env.messaging_publish_timeout_secs,
                Duration::from_secs(10),
                "a whole number of seconds from 1 to 3600",
                seconds_1_to_3600,
            ),
            delivery_limit: check.parse_with(
                "PIPEFORCE_MESSAGING_DELIVERY_LIMIT",
                env.messaging_delivery_limit,
                5,
                "a whole number from 1 to 1000",
                |value| value.parse().ok().filter(|n: &u32| (1..=1000).contains(n)),
            ),
        };

        let shutdown_timeout = check.parse_with(
            "PIPEFORCE_SHUTDOWN_TIMEOUT_SECS",
            env.shutdown_timeout_secs,
            Duration::from_secs(25),
            "a whole number of seconds from 1 to 3600",
            |value| {
                let secs: u64 = value.parse().ok()?;
                (1..=3600)
                    .contains(&secs)
                    .then(|| Duration::from_secs(secs))
            },
        );

        let telemetry = telemetry_config(&mut check, env.log_format, &others, &service);

        check.finish(Config {
            version: defaults.version.to_owned(),
            service,
            namespace,
            stage,
            domain,
            portal_url,
            http,
            hub,
            messaging,
            shutdown_timeout,
            telemetry,
        })
    }
}

/// The non-`PIPEFORCE_*` variables the service reads: OpenTelemetry's and Kubernetes'.
#[derive(Default)]
struct OtherVars(std::collections::HashMap<String, String>);

impl OtherVars {
    const NAMES: [&'static str; 9] = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_SERVICE_NAME",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
    ];

    fn wants(&self, key: &str) -> bool {
        Self::NAMES.contains(&key) || key == "KUBERNETES_SERVICE_HOST"
    }

    fn insert(&mut self, key: &str, value: &str) {
        self.0.insert(key.to_owned(), value.to_owned());
    }

    /// The variable's value, if set and not blank.
    fn get(&self, key: &str) -> Option<String> {
        optional(self.0.get(key).cloned())
    }
}

fn telemetry_config(
    check: &mut Checker,
    log_format: Option<String>,
    others: &OtherVars,
    service: &str,
) -> TelemetryConfig {
    let in_kubernetes = others.get("KUBERNETES_SERVICE_HOST").is_some();
    let log_format = check.parse_with(
        "PIPEFORCE_LOG_FORMAT",
        log_format,
        if in_kubernetes {
            LogFormat::Json
        } else {
            LogFormat::Text
        },
        "text or json",
        |value| match value {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        },
    );

    let (protocol_variable, protocol) = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|name| others.get(name).map(|value| (name, Some(value))))
    .unwrap_or(("OTEL_EXPORTER_OTLP_PROTOCOL", None));
    let protocol = check.parse_with(
        protocol_variable,
        protocol,
        OtlpProtocol::HttpProtobuf,
        "grpc, http/protobuf or http/json",
        |value| match value {
            "grpc" => Some(OtlpProtocol::Grpc),
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            "http/json" => Some(OtlpProtocol::HttpJson),
            _ => None,
        },
    );
    let disabled = others
        .get("OTEL_SDK_DISABLED")
        .is_some_and(|value| value.eq_ignore_ascii_case("true"))
        || others.get("OTEL_TRACES_EXPORTER").as_deref() == Some("none");
    let endpoint = match (
        others.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        others.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(endpoint), _) => Some(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint, false)),
        (None, Some(endpoint)) => Some(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint, true)),
        (None, None) => None,
    };
    let otlp = endpoint
        .filter(|_| !disabled)
        .and_then(|(variable, endpoint, generic)| {
            let url = check.http_url(variable, Some(endpoint))?;
            let mut endpoint = url.as_str().trim_end_matches('/').to_owned();
            if generic && protocol != OtlpProtocol::Grpc {
                endpoint.push_str("/v1/traces");
            }
            Some(OtlpExport { endpoint, protocol })
        });

    let mut ratio = |name: &str| {
        let argument = others.get("OTEL_TRACES_SAMPLER_ARG");
        check.parse_with(
            "OTEL_TRACES_SAMPLER_ARG",
            argument,
            1.0,
            &format!("a ratio from 0.0 to 1.0 for {name}"),
            |value| {
                value
                    .parse()
                    .ok()
                    .filter(|ratio: &f64| (0.0..=1.0).contains(ratio))
            },
        )
    };
    let sampler = match others.get("OTEL_TRACES_SAMPLER").as_deref() {
        None | Some("parentbased_always_on") => Sampler::ParentBasedAlwaysOn,
        Some("always_on") => Sampler::AlwaysOn,
        Some("always_off") => Sampler::AlwaysOff,
        Some("parentbased_always_off") => Sampler::ParentBasedAlwaysOff,
        Some("traceidratio") => Sampler::TraceIdRatio(ratio("traceidratio")),
        Some("parentbased_traceidratio") => {
            Sampler::ParentBasedTraceIdRatio(ratio("parentbased_traceidratio"))
        }
        Some(_) => Sampler::ParentBasedAlwaysOn,
    };
    if let Some(other) = others.get("OTEL_TRACES_SAMPLER").filter(|name| {
        ![
            "always_on",
            "always_off",
            "traceidratio",
            "parentbased_always_on",
            "parentbased_always_off",
            "parentbased_traceidratio",
        ]
        .contains(&name.as_str())
    }) {
        check.report(
            "OTEL_TRACES_SAMPLER",
            "always_on, always_off, traceidratio, parentbased_always_on, \
             parentbased_always_off or parentbased_traceidratio",
            Found::Value(other),
        );
    }

    TelemetryConfig {
        log_format,
        otlp,
        service_name: others
            .get("OTEL_SERVICE_NAME")
            .unwrap_or_else(|| service.to_owned()),
        sampler,
    }
}

/// PIPEFORCE names services and namespaces by Kubernetes' rules, so anything else is a typo.
fn dns_label(value: &str) -> Option<String> {
    is_dns_label(value).then(|| value.to_owned())
}

fn boolean(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
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

fn seconds_1_to_3600(value: &str) -> Option<Duration> {
    let secs: u64 = value.parse().ok()?;
    (1..=3600)
        .contains(&secs)
        .then(|| Duration::from_secs(secs))
}

const PORT: &str = "a port number from 1 to 65535";

fn port(value: &str) -> Option<u16> {
    value.parse().ok().filter(|port| *port != 0)
}

/// The effective configuration on one line, for the start-up log. Secrets and the passwords
/// in URLs show as `***`.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn or_unset(value: Option<&impl fmt::Display>) -> String {
            value.map_or_else(|| "(unset)".to_owned(), ToString::to_string)
        }
        let messaging = &self.messaging;
        write!(
            f,
            "service={} namespace={} stage={} domain={} portal_url={} http={}:{} \
             hub_url={} hub_secret={} messaging={}@{} vhost={} tls={} messaging_password=*** \
             exchange={} queue={} queue_type={} dead_letter_queue={} prefetch={} \
             max_retries={} retry_delay={}ms handler_timeout={}s consumer_timeout={}s \
             publish_timeout={}s delivery_limit={} shutdown_timeout={}s log_format={:?} traces={}",
            self.service,
            self.namespace,
            or_unset(self.stage.as_ref()),
            or_unset(self.domain.as_ref()),
            or_unset(self.portal_url.as_ref().map(masked_url).as_ref()),
            self.http.host,
            self.http.port,
            masked_url(&self.hub.url),
            match &self.hub.auth {
                None => "(unset)",
                Some(HubAuth::Basic { .. }) => "Basic ***",
                Some(HubAuth::Bearer(_)) => "Bearer ***",
            },
            messaging.username,
            messaging
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            messaging.vhost,
            messaging.tls,
            messaging.exchange,
            messaging.queue,
            messaging.queue_type.as_str(),
            messaging.dead_letter_queue,
            messaging.prefetch,
            messaging.max_retries,
            messaging.retry_delay.as_millis(),
            messaging.handler_timeout.as_secs(),
            messaging.consumer_timeout.as_secs(),
            messaging.publish_timeout.as_secs(),
            messaging.delivery_limit,
            self.shutdown_timeout.as_secs(),
            self.telemetry.log_format,
            self.telemetry.otlp.as_ref().map_or_else(
                || "(not exported)".to_owned(),
                |otlp| format!("{} ({:?})", masked(&otlp.endpoint), otlp.protocol)
            ),
        )
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("service", &self.service)
            .field("version", &self.version)
            .field("namespace", &self.namespace)
            .field("stage", &self.stage)
            .field("domain", &self.domain)
            .field("portal_url", &self.portal_url.as_ref().map(masked_url))
            .field("http", &self.http)
            .field("hub", &self.hub)
            .field("messaging", &self.messaging)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("telemetry", &self.telemetry)
            .finish()
    }
}

impl fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubConfig")
            .field("url", &masked_url(&self.url))
            .field("auth", &self.auth)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl fmt::Debug for OtlpExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpExport")
            .field("endpoint", &masked(&self.endpoint))
            .field("protocol", &self.protocol)
            .finish()
    }
}

/// `url` for logs and messages, with its password shown as `***`
/// (`https://user:***@host/`). A user name without a password is masked whole: it is often a
/// token.
pub fn masked_url(url: &Url) -> String {
    let mut url = url.clone();
    // Setting either fails only for URLs that cannot have credentials, and so have none.
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    } else if !url.username().is_empty() {
        let _ = url.set_username("***");
    }
    url.into()
}

/// `text` with credentials masked as by [`masked_url`], for text that need not parse as a
/// URL: a bad variable's value, or a list of addresses. In each entry (entries are separated
/// by commas or white space) everything before the last `@` and after the scheme's `://` is
/// user info, and its part after the first `:` is the password.
pub fn masked(text: &str) -> String {
    let separator = |c: char| c == ',' || c.is_whitespace();
    text.split_inclusive(separator)
        .map(|piece| {
            let entry = piece.trim_end_matches(separator);
            let separators = &piece[entry.len()..];
            let Some(at) = entry.rfind('@') else {
                return piece.to_owned();
            };
            let start = entry[..at].find("://").map_or(0, |scheme| scheme + 3);
            let user_info = match entry[start..at].split_once(':') {
                Some((user, _password)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{}{user_info}{}{separators}", &entry[..start], &entry[at..])
        })
        .collect()
}

fn in_cluster_hub_url(namespace: &str) -> Url {
    // The namespace is a DNS label by now, or already reported; either way the URL parses.
    Url::parse(&format!("http://hub.{namespace}.svc.cluster.local:8080"))
        .unwrap_or_else(|_| Url::parse("http://hub.invalid:8080").expect("a valid literal URL"))
}

/// The raw variables, as envy finds them (`PIPEFORCE_` stripped, lowercased).
#[derive(Deserialize)]
struct Env {
    service: Option<String>,
    namespace: Option<String>,
    stage: Option<String>,
    domain: Option<String>,
    portal_url: Option<String>,
    http_host: Option<String>,
    http_port: Option<String>,
    hub_url: Option<String>,
    hub_host: Option<String>,
    hub_port: Option<String>,
    hub_timeout_secs: Option<String>,
    secret: Option<String>,
    messaging_addresses: Option<String>,
    messaging_host: Option<String>,
    messaging_port: Option<String>,
    messaging_vhost: Option<String>,
    messaging_tls: Option<String>,
    messaging_tls_ca_file: Option<String>,
    messaging_queue_type: Option<String>,
    messaging_prefetch: Option<String>,
    messaging_max_retries: Option<String>,
    messaging_retry_delay_ms: Option<String>,
    messaging_handler_timeout_secs: Option<String>,
    messaging_consumer_timeout_secs: Option<String>,
    messaging_publish_timeout_secs: Option<String>,
    messaging_delivery_limit: Option<String>,
    messaging_username: Option<String>,
    messaging_password: Option<String>,
    messaging_default_topic: Option<String>,
    messaging_default_exchange: Option<String>,
    messaging_default_dlq: Option<String>,
    shutdown_timeout_secs: Option<String>,
    log_format: Option<String>,
}

/// An optional variable: set and not blank.
fn optional(raw: Option<String>) -> Option<String> {
    raw.filter(|value| !value.trim().is_empty())
}

/// Collects every problem instead of stopping at the first.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn report(&mut self, variable: &str, expected: &str, found: Found) {
        // Any value may hold a URL with a password pasted into it.
        let found = match found {
            Found::Value(value) => Found::Value(masked(&value)),
            other => other,
        };
        self.problems.push(Problem {
            variable: variable.to_owned(),
            expected: expected.to_owned(),
            found,
        });
    }

    /// A text variable with a default: unset means the default, empty is an error.
    fn text(&mut self, variable: &str, raw: Option<String>, default: &str) -> String {
        match raw {
            None => default.to_owned(),
            Some(value) if value.trim().is_empty() => {
                self.report(variable, "a non-empty value", Found::Empty);
                default.to_owned()
            }
            Some(value) => value,
        }
    }

    /// Like [`Checker::text`], but the value is never shown in an error.
    fn secret_text(&mut self, variable: &str, raw: Option<String>, default: &str) -> String {
        match raw {
            Some(value) if value.is_empty() => {
                self.report(variable, "a non-empty value", Found::Empty);
                default.to_owned()
            }
            Some(value) => value,
            None => default.to_owned(),
        }
    }

    /// A typed variable with a default: unset means the default, anything unparsable (including
    /// an empty value) is an error.
    fn parse<T: FromStr>(
        &mut self,
        variable: &str,
        raw: Option<String>,
        default: T,
        expected: &str,
    ) -> T {
        self.parse_with(variable, raw, default, expected, |value| value.parse().ok())
    }

    /// Like [`Checker::parse`], with a parser that says `None` for a bad value.
    fn parse_with<T>(
        &mut self,
        variable: &str,
        raw: Option<String>,
        default: T,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> T {
        let Some(value) = raw else { return default };
        if value.is_empty() {
            self.report(variable, expected, Found::Empty);
            return default;
        }
        parse(&value).unwrap_or_else(|| {
            self.report(variable, expected, Found::Value(value));
            default
        })
    }

    /// An optional absolute `http` or `https` URL.
    fn http_url(&mut self, variable: &str, raw: Option<String>) -> Option<Url> {
        let value = optional(raw)?;
        match Url::parse(&value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
            _ => {
                self.report(
                    variable,
                    "an http:// or https:// URL, e.g. https://hub-acme.pipeforce.net",
                    Found::Value(value),
                );
                None
            }
        }
    }

    fn finish(self, config: Config) -> Result<Config, ConfigError> {
        if self.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

/// The configuration could not be read: every bad variable, with what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    fn single(variable: &str, expected: String) -> Self {
        Self {
            problems: vec![Problem {
                variable: variable.to_owned(),
                expected,
                found: Found::Unreadable,
            }],
        }
    }

    /// What is wrong, one entry per variable.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let noun = if count == 1 { "variable" } else { "variables" };
        write!(
            f,
            "invalid configuration: {count} environment {noun} to fix"
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// One bad variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The variable's name, e.g. `PIPEFORCE_HTTP_PORT`.
    pub variable: String,
    /// What the variable must hold.
    pub expected: String,
    found: Found,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: expected {}, ", self.variable, self.expected)?;
        match &self.found {
            Found::Value(value) => write!(f, "got {value:?}"),
            Found::Empty => f.write_str("got an empty value"),
            Found::NotUtf8 => f.write_str("got bytes that are not UTF-8"),
            Found::Unreadable => f.write_str("could not read the environment"),
            Found::Hidden => f.write_str("got something else (the value is secret, not shown)"),
        }
    }
}

/// What a bad variable held. Secrets are only ever reported as `Empty`, `NotUtf8` or `Hidden`;
/// a `Value` has its passwords masked (see [`masked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Value(String),
    Empty,
    NotUtf8,
    Unreadable,
    Hidden,
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const DEFAULTS: Defaults = Defaults {
        service: "orders",
        namespace: "acme",
        http_port: 8080,
        version: "1.2.3",
    };

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(DEFAULTS, vars.iter().copied())
    }

    fn problem_variables(error: &ConfigError) -> Vec<&str> {
        error
            .problems()
            .iter()
            .map(|p| p.variable.as_str())
            .collect()
    }

    #[test]
    fn an_empty_environment_gives_the_generated_defaults() {
        let config = config(&[]).unwrap();

        assert_eq!(config.service, "orders");
        assert_eq!(config.namespace, "acme");
        assert_eq!(config.http.port, 8080);
        assert_eq!(config.http.host, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(
            config.hub.url.as_str(),
            "http://hub.acme.svc.cluster.local:8080/"
        );
        assert_eq!(
            config.messaging.addresses,
            [BrokerAddress {
                host: "localhost".to_owned(),
                port: 5672
            }]
        );
        assert_eq!(config.messaging.vhost, "/");
        assert!(!config.messaging.tls);
        assert_eq!(config.messaging.queue, "pipeforce.service.orders");
        assert_eq!(config.messaging.queue_type, QueueType::Classic);
        assert_eq!(config.messaging.prefetch, 200);
        assert_eq!(config.messaging.max_retries, 3);
        assert_eq!(config.messaging.publish_timeout, Duration::from_secs(10));
        assert_eq!(config.messaging.delivery_limit, 5);
        assert_eq!(config.messaging.exchange, "pipeforce.topic.default");
        assert_eq!(config.messaging.dead_letter_queue, "pipeforce_default_dlq");
        assert_eq!(config.shutdown_timeout, Duration::from_secs(25));
    }

    #[test]
    fn injected_variables_override_the_defaults() {
        let config = config(&[
            ("PIPEFORCE_SERVICE", "billing"),
            ("PIPEFORCE_NAMESPACE", "prod"),
            ("PIPEFORCE_HTTP_PORT", "9000"),
            ("PIPEFORCE_HUB_URL", "https://hub-prod.pipeforce.net"),
            ("PIPEFORCE_MESSAGING_HOST", "rabbit"),
            (
                "PIPEFORCE_MESSAGING_DEFAULT_EXCHANGE",
                "pipeforce.default.topic",
            ),
            ("PIPEFORCE_MESSAGING_PASSWORD", "s3cret"),
        ])
        .unwrap();

        assert_eq!(config.service, "billing");
        assert_eq!(config.namespace, "prod");
        assert_eq!(config.http.port, 9000);
        assert_eq!(config.hub.url.as_str(), "https://hub-prod.pipeforce.net/");
        assert_eq!(config.messaging.addresses[0].host, "rabbit");
        assert_eq!(config.messaging.queue, "pipeforce.service.billing");
        assert_eq!(config.messaging.exchange, "pipeforce.default.topic");
        assert_eq!(config.messaging.password.expose_secret(), "s3cret");
    }

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
    fn the_hub_url_is_built_from_host_and_port_when_no_url_is_set() {
        let config = config(&[
            ("PIPEFORCE_HUB_HOST", "hub.local"),
            ("PIPEFORCE_HUB_PORT", "9999"),
        ])
        .unwrap();

        assert_eq!(config.hub.url.as_str(), "http://hub.local:9999/");
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
    fn the_hub_secret_is_parsed_in_each_documented_form() {
        let auth = |secret: &str| {
            config(&[("PIPEFORCE_SECRET", secret)])
                .map(|config| config.hub.auth)
                .map_err(|error| error.to_string())
        };
        use secrecy::ExposeSecret;

        match auth("Basic ada:s3cr:et").unwrap() {
            Some(HubAuth::Basic { username, password }) => {
                assert_eq!(username, "ada");
                assert_eq!(password.expose_secret(), "s3cr:et");
            }
            other => panic!("{other:?}"),
        }
        // base64 of "ada:pw", as in an Authorization header
        assert!(matches!(
            auth("basic YWRhOnB3"),
            Ok(Some(HubAuth::Basic { username, .. })) if username == "ada"
        ));
        assert!(matches!(
            auth("Bearer t0ken"),
            Ok(Some(HubAuth::Bearer(token))) if token.expose_secret() == "t0ken"
        ));
        assert!(matches!(
            auth("Apitoken t0ken"),
            Ok(Some(HubAuth::Bearer(token))) if token.expose_secret() == "t0ken"
        ));

        let malformed = [
            ("t0ken-without-scheme", "t0ken-without-scheme"),
            ("Digest abc123secret", "abc123secret"),
            ("Bearer ", "Bearer  "),
            ("Basic nocolon!", "nocolon!"),
        ];
        for (secret, secret_part) in malformed {
            let error = auth(secret).unwrap_err();
            assert!(
                error.contains("PIPEFORCE_SECRET: expected `Basic"),
                "{error}"
            );
            assert!(
                !error.contains(secret_part),
                "the secret is not echoed: {error}"
            );
        }
    }

    #[test]
    fn traces_are_exported_only_when_an_otlp_endpoint_is_set() {
        let parsed = config(&[]).unwrap();
        assert_eq!(parsed.telemetry.otlp, None);
        assert_eq!(parsed.telemetry.service_name, "orders");
        assert_eq!(parsed.telemetry.sampler, Sampler::ParentBasedAlwaysOn);
        assert_eq!(parsed.telemetry.log_format, LogFormat::Text);

        let parsed = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318/")]).unwrap();
        assert_eq!(
            parsed.telemetry.otlp,
            Some(OtlpExport {
                endpoint: "http://jaeger:4318/v1/traces".to_owned(),
                protocol: OtlpProtocol::HttpProtobuf,
            })
        );

        let parsed = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "orders-blue"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ])
        .unwrap();
        let otlp = parsed.telemetry.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://jaeger:4317");
        assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(parsed.telemetry.service_name, "orders-blue");
        assert_eq!(
            parsed.telemetry.sampler,
            Sampler::ParentBasedTraceIdRatio(0.25)
        );
        assert_eq!(
            parsed.telemetry.log_format,
            LogFormat::Json,
            "in Kubernetes"
        );

        let parsed = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .unwrap();
        assert_eq!(parsed.telemetry.otlp, None, "switched off");
    }

    #[test]
    fn bad_telemetry_variables_are_named() {
        let error = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("PIPEFORCE_LOG_FORMAT", "xml"),
        ])
        .unwrap_err();

        let mut variables = problem_variables(&error);
        variables.sort_unstable();
        assert_eq!(
            variables,
            [
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "OTEL_TRACES_SAMPLER",
                "PIPEFORCE_LOG_FORMAT",
            ]
        );
    }

    #[test]
    fn every_bad_variable_is_reported_at_once() {
        let error = config(&[
            ("PIPEFORCE_HTTP_PORT", "abc"),
            ("PIPEFORCE_MESSAGING_PORT", "70000"),
            ("PIPEFORCE_HUB_URL", "ftp://hub"),
            ("PIPEFORCE_SERVICE", ""),
            ("PIPEFORCE_NAMESPACE", "Acme Corp"),
            ("PIPEFORCE_SHUTDOWN_TIMEOUT_SECS", "0"),
        ])
        .unwrap_err();

        assert_eq!(
            problem_variables(&error),
            [
                "PIPEFORCE_SERVICE",
                "PIPEFORCE_NAMESPACE",
                "PIPEFORCE_HTTP_PORT",
                "PIPEFORCE_HUB_URL",
                "PIPEFORCE_MESSAGING_PORT",
                "PIPEFORCE_SHUTDOWN_TIMEOUT_SECS",
            ]
        );
        let message = error.to_string();
        assert!(message.starts_with("invalid configuration: 6 environment variables to fix"));
        assert!(
            message.contains("PIPEFORCE_HTTP_PORT: expected a port number"),
            "{message}"
        );
        assert!(message.contains("got \"abc\""), "{message}");
    }

    #[test]
    fn unknown_pipeforce_variables_and_other_variables_are_ignored() {
        let config = config(&[
            ("PIPEFORCE_SOMETHING_NEW", "whatever"),
            ("HOME", "/root"),
            ("PIPEFORCE_STAGE", "dev"),
        ])
        .unwrap();

        assert_eq!(config.stage.as_deref(), Some("dev"));
    }

    #[test]
    fn empty_optional_variables_count_as_unset() {
        let config = config(&[("PIPEFORCE_HUB_URL", ""), ("PIPEFORCE_DOMAIN", " ")]).unwrap();

        assert_eq!(config.domain, None);
        assert_eq!(
            config.hub.url.as_str(),
            "http://hub.acme.svc.cluster.local:8080/"
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug_output_and_never_echoed_in_errors() {
        let config = config(&[
            ("PIPEFORCE_MESSAGING_PASSWORD", "hunter2-password"),
            ("PIPEFORCE_SECRET", "Bearer hunter2-token"),
        ])
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let display = config.to_string();
        assert!(!display.contains("hunter2"), "{display}");
        assert!(display.contains("hub_secret=Bearer ***"), "{display}");

        let error = config_error_for_empty_password();
        assert!(!error.to_string().contains("hunter2"));
    }

    fn config_error_for_empty_password() -> ConfigError {
        config(&[("PIPEFORCE_MESSAGING_PASSWORD", "")]).unwrap_err()
    }

    /// Asserts that `output` shows none of the passwords the tests put into URLs.
    fn assert_no_password(output: &str) {
        for password in ["hub-pw-1", "portal-pw-2", "otel-pw-3", "mq-pw-4"] {
            assert!(!output.contains(password), "{password} shown: {output}");
        }
    }

    #[test]
    fn passwords_in_urls_are_masked_in_the_effective_configuration_and_debug_output() {
        for otlp_variable in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            let config = config(&[
                ("PIPEFORCE_HUB_URL", "https://hub-user:hub-pw-1@hub.example"),
                (
                    "PIPEFORCE_PORTAL_URL",
                    "https://portal-user:portal-pw-2@portal.example",
                ),
                (otlp_variable, "http://otel-user:otel-pw-3@jaeger:4318"),
            ])
            .unwrap();

            let display = config.to_string();
            assert_no_password(&display);
            assert!(
                display.contains("hub_url=https://hub-user:***@hub.example/"),
                "{display}"
            );
            assert!(
                display.contains("portal_url=https://portal-user:***@portal.example/"),
                "{display}"
            );
            assert!(
                display.contains("traces=http://otel-user:***@jaeger:4318"),
                "{display}"
            );
            assert_no_password(&format!("{config:?}"));
            // The clients still get the credentials.
            assert_eq!(config.hub.url.password(), Some("hub-pw-1"));
            let otlp = config.telemetry.otlp.unwrap();
            assert!(otlp.endpoint.contains("otel-pw-3"));
        }
    }

    #[test]
    fn passwords_in_bad_values_are_masked_in_errors() {
        for otlp_variable in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            let error = config(&[
                ("PIPEFORCE_HUB_URL", "ftp://hub-user:hub-pw-1@hub.example"),
                // Not URLs at all, but credentials all the same.
                ("PIPEFORCE_PORTAL_URL", "portal-user:portal-pw-2@portal"),
                (otlp_variable, "otel-user:otel-pw-3@jaeger:4318"),
                (
                    "PIPEFORCE_MESSAGING_ADDRESSES",
                    "rabbit-0, amqp://mq-user:mq-pw-4@rabbit-1:5672",
                ),
            ])
            .unwrap_err();

            let mut variables = problem_variables(&error);
            variables.sort_unstable();
            assert_eq!(
                variables,
                [
                    otlp_variable,
                    "PIPEFORCE_HUB_URL",
                    "PIPEFORCE_MESSAGING_ADDRESSES",
                    "PIPEFORCE_PORTAL_URL",
                ]
            );
            let message = error.to_string();
            assert_no_password(&message);
            assert_no_password(&format!("{error:?}"));
            for masked in [
                "ftp://hub-user:***@hub.example",
                "portal-user:***@portal",
                "otel-user:***@jaeger:4318",
                "rabbit-0, amqp://mq-user:***@rabbit-1:5672",
            ] {
                assert!(message.contains(masked), "{masked} missing: {message}");
            }
        }
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

    #[cfg(unix)]
    #[test]
    fn a_value_that_is_not_utf8_is_reported_by_name() {
        use std::os::unix::ffi::OsStrExt;

        let vars = [(
            OsStr::new("PIPEFORCE_NAMESPACE"),
            OsStr::from_bytes(&[0x66, 0xff]),
        )];
        let error = Config::from_vars(DEFAULTS, vars).unwrap_err();

        assert_eq!(problem_variables(&error), ["PIPEFORCE_NAMESPACE"]);
        assert!(error.to_string().contains("not UTF-8"));
    }
}
