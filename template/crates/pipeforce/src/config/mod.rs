//! Service configuration, read once at start from environment variables: `PIPEFORCE_*`,
//! OpenTelemetry's `OTEL_*` and `RUST_LOG`.
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
//! - Secrets are [`SecretString`](secrecy::SecretString)s, redacted in `Debug` output, and
//!   their values never appear in an error message. A password inside a URL
//!   (`https://user:password@host`) is kept for the client that needs it but shows as `***` in
//!   `Display`, `Debug` and errors ([`masked_url`], [`masked`]), so logging the whole config is
//!   safe.
//!
//! # Layout
//! Each concern reads its own variables, each named once in a `variables!` list that drives
//! reading (envy) and the names in errors, and writes its part of the start-up line
//! (`Display`):
//! - this module: [`Config`], [`Defaults`], the service's identity and shutdown timeout, and
//!   [`ConfigError`];
//! - `http`: [`HttpConfig`]; `hub`: [`HubConfig`]; `messaging`: [`MessagingConfig`];
//!   `telemetry`: [`TelemetryConfig`];
//! - `read`: the `variables!` macro and the checker that collects every problem;
//! - `mask`: [`masked_url`] and [`masked`].

mod http;
mod hub;
mod mask;
mod messaging;
mod read;
mod telemetry;

use std::{ffi::OsStr, fmt, time::Duration};

use url::Url;

use crate::names::{DNS_LABEL_RULE, is_dns_label};

use self::read::{Checker, Environment, variables};
pub use self::{
    http::HttpConfig,
    hub::{HubAuth, HubConfig},
    mask::{masked, masked_url},
    messaging::{BrokerAddress, MessagingConfig, QueueType},
    telemetry::{LogFormat, OtlpExport, OtlpProtocol, TelemetryConfig},
};

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

variables! {
    /// The variables of the service itself.
    struct Vars in "PIPEFORCE_" {
        service, namespace, stage, domain, portal_url, shutdown_timeout_secs,
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
        let env = Environment::new(vars);
        let mut check = Checker::default();
        let config = Self::read(defaults, &env, &mut check);
        check.finish(config)
    }

    /// Reads every concern, in the order their problems are listed.
    fn read(defaults: Defaults, env: &Environment, check: &mut Checker) -> Self {
        let vars = Vars::read(env, check);
        let service = check.parse_with(
            &vars.service,
            defaults.service.to_owned(),
            DNS_LABEL_RULE,
            dns_label,
        );
        let namespace = check.parse_with(
            &vars.namespace,
            defaults.namespace.to_owned(),
            DNS_LABEL_RULE,
            dns_label,
        );
        let portal_url = check.http_url(&vars.portal_url);
        let http = HttpConfig::read(env, defaults.http_port, check);
        let hub = HubConfig::read(env, &namespace, check);
        let messaging = MessagingConfig::read(env, &service, check);
        let shutdown_timeout = check.seconds(&vars.shutdown_timeout_secs, 25, 1..=3600);
        let telemetry = TelemetryConfig::read(env, &service, check);
        Self {
            version: defaults.version.to_owned(),
            service,
            namespace,
            stage: vars.stage.optional(),
            domain: vars.domain.optional(),
            portal_url,
            http,
            hub,
            messaging,
            shutdown_timeout,
            telemetry,
        }
    }
}

/// PIPEFORCE names services and namespaces by Kubernetes' rules, so anything else is a typo.
fn dns_label(value: &str) -> Option<String> {
    is_dns_label(value).then(|| value.to_owned())
}

/// The effective configuration on one line, for the start-up log: each concern writes its
/// part. Secrets and the passwords in URLs show as `***`.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn or_unset(value: Option<&impl fmt::Display>) -> String {
            value.map_or_else(|| "(unset)".to_owned(), ToString::to_string)
        }
        write!(
            f,
            "service={} namespace={} stage={} domain={} portal_url={} {} {} {} \
             shutdown_timeout={}s {}",
            self.service,
            self.namespace,
            or_unset(self.stage.as_ref()),
            or_unset(self.domain.as_ref()),
            or_unset(self.portal_url.as_ref().map(masked_url).as_ref()),
            self.http,
            self.hub,
            self.messaging,
            self.shutdown_timeout.as_secs(),
            self.telemetry,
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

/// The configuration could not be read: every bad variable, with what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
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
mod test_support {
    use super::{Config, ConfigError, Defaults};

    pub(super) const DEFAULTS: Defaults = Defaults {
        service: "orders",
        namespace: "acme",
        http_port: 8080,
        version: "1.2.3",
    };

    pub(super) fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(DEFAULTS, vars.iter().copied())
    }

    pub(super) fn problem_variables(error: &ConfigError) -> Vec<&str> {
        error
            .problems()
            .iter()
            .map(|p| p.variable.as_str())
            .collect()
    }

    /// Asserts that `output` shows none of the passwords the tests put into URLs.
    pub(super) fn assert_no_password(output: &str) {
        for password in ["hub-pw-1", "portal-pw-2", "otel-pw-3", "mq-pw-4"] {
            assert!(!output.contains(password), "{password} shown: {output}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::OsStr,
        net::{IpAddr, Ipv4Addr},
        time::Duration,
    };

    use secrecy::ExposeSecret;

    use super::{
        BrokerAddress, Config, ConfigError, QueueType,
        test_support::{DEFAULTS, config, problem_variables},
    };
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
