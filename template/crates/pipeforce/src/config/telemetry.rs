//! `PIPEFORCE_LOG_FORMAT`, `RUST_LOG` and OpenTelemetry's standard `OTEL_*` variables: how the
//! service logs and where it sends traces.
//!
//! The OpenTelemetry SDK reads its own variables when [`crate::telemetry`] sets it up
//! (`OTEL_TRACES_SAMPLER`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! ...), but it ignores a bad value with a warning nobody sees. So the ones a typo would
//! silently change are only checked here, to fail at start with the other bad variables.

use std::fmt;

use tracing_subscriber::EnvFilter;

use super::{
    masked,
    read::{Checker, Environment, variables},
};

/// How the service logs and where it sends traces. Traces follow OpenTelemetry's standard
/// variables, so the same settings work for every OpenTelemetry SDK in the cluster.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `PIPEFORCE_LOG_FORMAT`: `text` or `json`; default `json` inside Kubernetes
    /// (`KUBERNETES_SERVICE_HOST` is set), `text` elsewhere.
    pub log_format: LogFormat,
    /// `RUST_LOG`: which log lines are written, as `tracing`'s `EnvFilter` directives
    /// (default `info`, without warp's per-request lines).
    pub log_filter: String,
    /// Where spans go: set by `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (and not switched off by `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`). Unset:
    /// spans and trace ids still exist and propagate, but are not exported.
    pub otlp: Option<OtlpExport>,
    /// `OTEL_SERVICE_NAME`, else the PIPEFORCE service name.
    pub service_name: String,
    /// `NO_COLOR` (<https://no-color.org>): set and not blank, text logs carry no colour
    /// codes even on a terminal.
    pub no_color: bool,
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
    /// `http/protobuf` (the default) or `http/json`. It picks the exporter's transport, so it
    /// is read here rather than left to the exporter.
    pub protocol: OtlpProtocol,
    /// The variable that chose [`OtlpExport::protocol`], for errors about it; `None` when it
    /// is the default.
    pub protocol_variable: Option<String>,
}

/// OTLP's transports. The configuration names them without the exporter crate, which only a
/// running service links (the deploy tool reads the same configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `grpc`
    Grpc,
    /// `http/protobuf`
    HttpBinary,
    /// `http/json`
    HttpJson,
}

/// The protocols by their names in the OTLP variables. The exporter's own default differs
/// from the specification's `http/protobuf` when JSON is compiled in, so it is always set.
const PROTOCOLS: [(&str, OtlpProtocol); 3] = [
    ("grpc", OtlpProtocol::Grpc),
    ("http/protobuf", OtlpProtocol::HttpBinary),
    ("http/json", OtlpProtocol::HttpJson),
];

/// The samplers `OTEL_TRACES_SAMPLER` may name, and whether each takes a ratio.
const SAMPLERS: [(&str, bool); 6] = [
    ("always_on", false),
    ("always_off", false),
    ("traceidratio", true),
    ("parentbased_always_on", false),
    ("parentbased_always_off", false),
    ("parentbased_traceidratio", true),
];

const DEFAULT_LOG_FILTER: &str = "info,warp::filters::trace=off";

variables! {
    /// The variables [`TelemetryConfig`] is read from, and the ones only checked here.
    struct Vars in "" {
        pipeforce_log_format,
        kubernetes_service_host,
        rust_log,
        otel_exporter_otlp_endpoint,
        otel_exporter_otlp_traces_endpoint,
        otel_exporter_otlp_protocol,
        otel_exporter_otlp_traces_protocol,
        otel_sdk_disabled,
        otel_traces_exporter,
        otel_service_name,
        otel_traces_sampler,
        otel_traces_sampler_arg,
        no_color,
    }
}

impl TelemetryConfig {
    pub(super) fn read(env: &Environment, service: &str, check: &mut Checker) -> Self {
        let vars = Vars::read(env, check);
        let in_kubernetes = vars.kubernetes_service_host.is_set();
        let log_format = check.choice(
            &vars.pipeforce_log_format,
            if in_kubernetes {
                LogFormat::Json
            } else {
                LogFormat::Text
            },
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        );
        let log_filter = check
            .optional(&vars.rust_log, |directives| {
                EnvFilter::try_new(directives)
                    .map(|_| directives.to_owned())
                    .map_err(|error| {
                        format!("a log filter such as `info` or `info,lapin=warn` ({error})")
                    })
            })
            .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_owned());
        let otlp = otlp_export(&vars, check);
        check_sampler(&vars, check);
        Self {
            log_format,
            log_filter,
            otlp,
            service_name: vars
                .otel_service_name
                .optional()
                .unwrap_or_else(|| service.to_owned()),
            no_color: vars.no_color.optional().is_some(),
        }
    }

    /// Whether log lines are coloured: text only, and only for a terminal. A file or a pipe
    /// gets no escape codes, which would garble it for every reader but a terminal.
    pub fn colour_logs(&self, stderr_is_terminal: bool) -> bool {
        self.log_format == LogFormat::Text && stderr_is_terminal && !self.no_color
    }
}

/// The trace-specific variables win over the generic ones; only a generic endpoint gets the
/// signal's path appended (for HTTP), as the specification says.
fn otlp_export(vars: &Vars, check: &mut Checker) -> Option<OtlpExport> {
    let protocol_var = if vars.otel_exporter_otlp_traces_protocol.is_set() {
        &vars.otel_exporter_otlp_traces_protocol
    } else {
        &vars.otel_exporter_otlp_protocol
    };
    let chosen = check.optional_choice(protocol_var, &PROTOCOLS);
    let protocol_variable = chosen.map(|_| protocol_var.name().to_owned());
    let protocol = chosen.unwrap_or(OtlpProtocol::HttpBinary);
    let disabled = vars
        .otel_sdk_disabled
        .optional()
        .is_some_and(|value| value.eq_ignore_ascii_case("true"))
        || vars.otel_traces_exporter.optional().as_deref() == Some("none");
    if disabled {
        return None;
    }
    let (endpoint, generic) = if vars.otel_exporter_otlp_traces_endpoint.is_set() {
        (&vars.otel_exporter_otlp_traces_endpoint, false)
    } else {
        (&vars.otel_exporter_otlp_endpoint, true)
    };
    let url = check.http_url(endpoint)?;
    let mut endpoint = url.as_str().trim_end_matches('/').to_owned();
    if generic && protocol != OtlpProtocol::Grpc {
        endpoint.push_str("/v1/traces");
    }
    Some(OtlpExport {
        endpoint,
        protocol,
        protocol_variable,
    })
}

/// The SDK picks the sampler from these variables itself; a bad value is only an error here.
fn check_sampler(vars: &Vars, check: &mut Checker) {
    let takes_ratio = check
        .optional_choice(&vars.otel_traces_sampler, &SAMPLERS)
        .unwrap_or(false);
    if takes_ratio {
        check.optional(&vars.otel_traces_sampler_arg, |value| {
            value
                .parse()
                .ok()
                .filter(|ratio: &f64| (0.0..=1.0).contains(ratio))
                .ok_or("a ratio from 0.0 to 1.0, the share of new traces to record")
        });
    }
}

/// The name of `protocol` in the OTLP variables.
fn protocol_name(protocol: OtlpProtocol) -> &'static str {
    PROTOCOLS
        .iter()
        .find(|(_, known)| *known == protocol)
        .map_or("?", |(name, _)| name)
}

/// Its part of the start-up line; a password in the endpoint shows as `***`.
impl fmt::Display for TelemetryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "log_format={:?} log_filter={} traces=",
            self.log_format, self.log_filter
        )?;
        match &self.otlp {
            None => f.write_str("(not exported)"),
            Some(otlp) => write!(
                f,
                "{} ({})",
                masked(&otlp.endpoint),
                protocol_name(otlp.protocol)
            ),
        }
    }
}

impl fmt::Debug for OtlpExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpExport")
            .field("endpoint", &masked(&self.endpoint))
            .field("protocol", &self.protocol)
            .field("protocol_variable", &self.protocol_variable)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{LogFormat, OtlpExport, OtlpProtocol};
    use crate::config::test_support::{config, problem_variables};

    #[test]
    fn traces_are_exported_only_when_an_otlp_endpoint_is_set() {
        let parsed = config(&[]).unwrap();
        assert_eq!(parsed.telemetry.otlp, None);
        assert_eq!(parsed.telemetry.service_name, "orders");
        assert_eq!(parsed.telemetry.log_format, LogFormat::Text);

        let parsed = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318/")]).unwrap();
        assert_eq!(
            parsed.telemetry.otlp,
            Some(OtlpExport {
                endpoint: "http://jaeger:4318/v1/traces".to_owned(),
                protocol: OtlpProtocol::HttpBinary,
                protocol_variable: None,
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
        assert_eq!(
            otlp.protocol_variable.as_deref(),
            Some("OTEL_EXPORTER_OTLP_PROTOCOL")
        );
        assert_eq!(parsed.telemetry.service_name, "orders-blue");
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
    fn the_trace_specific_protocol_wins_and_a_bad_one_is_named() {
        let parsed = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ])
        .unwrap();
        assert!(
            parsed
                .to_string()
                .ends_with("traces=http://jaeger:4318/v1/traces (http/json)"),
            "{parsed}"
        );
        let otlp = parsed.telemetry.otlp.unwrap();
        assert_eq!(otlp.protocol, OtlpProtocol::HttpJson);
        assert_eq!(
            otlp.protocol_variable.as_deref(),
            Some("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        );
        assert_eq!(otlp.endpoint, "http://jaeger:4318/v1/traces");

        let error = config(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http"),
        ])
        .unwrap_err();
        assert_eq!(
            error.problems()[0].to_string(),
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: expected grpc, http/protobuf or http/json, \
             got \"http\""
        );
    }

    #[test]
    fn a_ratio_sampler_needs_a_ratio_and_other_samplers_ignore_it() {
        let ratio = |sampler: &str, ratio: &str| {
            config(&[
                ("OTEL_TRACES_SAMPLER", sampler),
                ("OTEL_TRACES_SAMPLER_ARG", ratio),
            ])
            .map(|_| ())
            .map_err(|error| error.to_string())
        };

        assert_eq!(ratio("traceidratio", "0.25"), Ok(()));
        assert_eq!(ratio("parentbased_traceidratio", "1"), Ok(()));
        assert_eq!(ratio("always_on", "plenty"), Ok(()), "not a ratio sampler");
        for bad in ["1.5", "-0.1", "half"] {
            let error = ratio("parentbased_traceidratio", bad).unwrap_err();
            assert!(
                error.contains("OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0.0 to 1.0"),
                "{error}"
            );
        }
    }

    #[test]
    fn rust_log_is_checked_with_the_other_variables() {
        let filter = |directives: &str| {
            config(&[("RUST_LOG", directives)])
                .map(|config| config.telemetry.log_filter)
                .map_err(|error| problem_variables(&error).join(","))
        };

        assert_eq!(
            config(&[]).unwrap().telemetry.log_filter,
            "info,warp::filters::trace=off"
        );
        assert_eq!(
            filter("debug,lapin=warn"),
            Ok("debug,lapin=warn".to_owned())
        );
        assert_eq!(filter("info,lapin=loud"), Err("RUST_LOG".to_owned()));
        let error = config(&[("RUST_LOG", "info,lapin=loud")]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("RUST_LOG: expected a log filter such as `info`"),
            "{error}"
        );
    }

    #[test]
    fn text_logs_are_coloured_only_on_a_terminal_and_never_with_no_color() {
        let colour = |vars: &[(&str, &str)], stderr_is_terminal| {
            config(vars)
                .unwrap()
                .telemetry
                .colour_logs(stderr_is_terminal)
        };

        assert!(colour(&[], true), "a terminal");
        assert!(!colour(&[], false), "a file or a pipe");
        assert!(!colour(&[("NO_COLOR", "1")], true), "NO_COLOR set");
        assert!(
            colour(&[("NO_COLOR", "")], true),
            "an empty NO_COLOR does not count"
        );
        assert!(
            !colour(&[("PIPEFORCE_LOG_FORMAT", "json")], true),
            "JSON is for collectors"
        );
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
}
