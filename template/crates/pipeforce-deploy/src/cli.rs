//! The command line of `deploy`, parsed with clap and checked whole before any hub call.
//!
//! Values given with `--env` may be secrets: no error message shows one, only its key.

use std::{collections::BTreeMap, ffi::OsString, process::ExitCode, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, error::ErrorKind};
use pipeforce::names::{DNS_LABEL_RULE, is_dns_label};
use url::Url;

use crate::{Target, image::IMAGE_PULL_SECRET_VAR, readiness::SERVICE_URL_VAR};

/// Deploys this service to PIPEFORCE, or runs a job with its image, through the hub.
#[derive(Debug, Parser)]
#[command(name = "deploy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What the command line asked for.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Starts (or updates) the service with the hub command service.start.
    Service(ServiceOptions),
    /// Starts the image as a job running --command with service.job.start.
    Job(JobOptions),
}

/// `deploy service`.
#[derive(Debug, Args)]
pub struct ServiceOptions {
    #[command(flatten)]
    pub image: ImageOptions,
    /// Number of instances.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(0..=1_000)
    )]
    pub replicas: u32,
    /// After the start, wait until the service's /health/ready answers 200; fail if it never
    /// does within --timeout-secs.
    #[arg(long = "wait-ready")]
    pub wait_ready: bool,
    /// Where --wait-ready finds the service [default: https://<service>-<namespace>.pipeforce.net].
    #[arg(long = "service-url", value_name = "URL", env = SERVICE_URL_VAR, value_parser = http_url)]
    service_url: Option<String>,
    /// How long --wait-ready waits at most, in seconds.
    #[arg(
        long = "timeout-secs",
        value_name = "S",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    timeout_secs: u64,
    /// Seconds before the second readiness check; the wait grows from there up to 10 s.
    #[arg(
        long = "poll-secs",
        value_name = "S",
        default_value_t = 2,
        value_parser = clap::value_parser!(u64).range(0..=3_600)
    )]
    poll_secs: u64,
}

impl ServiceOptions {
    /// `--service-url`, checked by its parser; `None` when not given or empty.
    pub fn service_url(&self) -> Option<Url> {
        self.service_url
            .as_deref()
            .and_then(|url| Url::parse(url).ok())
    }

    /// `--timeout-secs`.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// `--poll-secs`.
    pub fn poll(&self) -> Duration {
        Duration::from_secs(self.poll_secs)
    }
}

/// `deploy job`.
#[derive(Debug, Args)]
pub struct JobOptions {
    /// What the job runs, e.g. ./run-tests-integration.sh.
    #[arg(long, value_name = "CMD", value_parser = not_blank)]
    pub command: String,
    #[command(flatten)]
    pub image: ImageOptions,
    /// The job's name [default: <service>-<command>-<UTC time>-<random>].
    #[arg(long, value_name = "N", value_parser = job_name)]
    pub name: Option<String>,
    /// Wait until the job has finished, print its logs, fail if it failed.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits at most, in seconds.
    #[arg(
        long = "timeout-secs",
        value_name = "S",
        default_value_t = 1_800,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    timeout_secs: u64,
    /// Seconds between status checks while waiting.
    #[arg(
        long = "poll-secs",
        value_name = "S",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(0..=3_600)
    )]
    poll_secs: u64,
}

impl JobOptions {
    /// `--timeout-secs`.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// `--poll-secs`.
    pub fn poll(&self) -> Duration {
        Duration::from_secs(self.poll_secs)
    }
}

/// What both commands start: the image's tag and the container's environment.
#[derive(Debug, Args)]
pub struct ImageOptions {
    /// The image tag.
    #[arg(
        long,
        value_name = "T",
        env = "IMAGE_TAG",
        default_value = "latest",
        allow_hyphen_values = true,
        value_parser = image_tag
    )]
    pub tag: String,
    /// An environment variable for the container; repeat for more. Values are never shown.
    #[arg(long = "env", value_name = "KEY=VALUE", allow_hyphen_values = true)]
    env: Vec<String>,
    /// The Kubernetes secret in the namespace that holds the credentials of the image's
    /// registry (imagePullSecret); needed for a private registry other than PIPEFORCE's.
    #[arg(
        long = "image-pull-secret",
        value_name = "NAME",
        env = IMAGE_PULL_SECRET_VAR,
        value_parser = secret_name
    )]
    image_pull_secret: Option<String>,
}

impl ImageOptions {
    /// `--image-pull-secret`; `None` when not given or empty.
    pub fn image_pull_secret(&self) -> Option<&str> {
        self.image_pull_secret
            .as_deref()
            .filter(|name| !name.is_empty())
    }

    /// The `--env` variables, checked by [`parse`]: valid keys, none given twice.
    pub fn env(&self) -> BTreeMap<String, String> {
        self.env
            .iter()
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }

    /// Checks every `--env` pair; errors name the key at most, never the value.
    fn check_env(&self) -> Result<(), String> {
        let mut keys = Vec::new();
        for pair in &self.env {
            let Some((key, _)) = pair.split_once('=') else {
                return Err("--env expects KEY=VALUE (value not shown)".to_owned());
            };
            let valid = key.bytes().next().is_some_and(|b| !b.is_ascii_digit())
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !valid {
                return Err(format!(
                    "--env {key:?}: a variable name is letters, digits, '_', '-' and '.', \
                     not starting with a digit"
                ));
            }
            if keys.contains(&key) {
                return Err(format!("--env {key} is given twice"));
            }
            keys.push(key);
        }
        Ok(())
    }
}

/// Parses the command line (with the program name first). Help and wrong command lines are
/// printed as clap prints them, and the exit status to end with is returned instead.
pub fn parse(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    target: &Target,
) -> Result<Command, ExitCode> {
    try_parse(args, target).map_err(|error| {
        let _ = error.print();
        ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
    })
}

/// [`parse`], with the error returned rather than printed.
pub fn try_parse(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    target: &Target,
) -> Result<Command, clap::Error> {
    let mut command = Cli::command().after_help(format!(
        "This project: service {} in namespace {}, image {}:<tag>, port {}.\n\
         The hub and the credentials come from PIPEFORCE_HUB_URL and PIPEFORCE_SECRET.\n\
         PIPEFORCE_MESSAGING_USERNAME and PIPEFORCE_MESSAGING_PASSWORD, when set, are forwarded \
         into the container (never printed).",
        target.service, target.namespace, target.image, target.http_port
    ));
    let matches = command.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&matches).map_err(|error| error.with_cmd(&command))?;
    let image = match &cli.command {
        Command::Service(options) => &options.image,
        Command::Job(options) => &options.image,
    };
    image
        .check_env()
        .map_err(|message| command.error(ErrorKind::ValueValidation, message))?;
    Ok(cli.command)
}

/// A Docker image tag: letters, digits, `_`, `.` and `-`, not starting with `.` or `-`, at
/// most 128 characters.
fn image_tag(tag: &str) -> Result<String, String> {
    let valid = (1..=128).contains(&tag.len())
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(tag.to_owned())
    } else {
        Err(
            "not an image tag: at most 128 letters, digits, '_', '.' and '-', not starting \
             with '.' or '-'"
                .to_owned(),
        )
    }
}

/// A Kubernetes secret's name: a DNS-1123 subdomain, i.e. lowercase letters, digits, '-' and
/// '.', starting and ending with a letter or digit, at most 253 characters. Empty stands for
/// none: a CI variable that is not defined expands to nothing.
fn secret_name(name: &str) -> Result<String, String> {
    let valid = name.is_empty()
        || name.len() <= 253
            && name.split('.').all(|part| {
                !part.is_empty()
                    && !part.starts_with('-')
                    && !part.ends_with('-')
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
    if valid {
        Ok(name.to_owned())
    } else {
        Err(
            "not a Kubernetes secret name: at most 253 lowercase letters, digits, '-' and '.', \
             starting and ending with a letter or digit, e.g. my-registry"
                .to_owned(),
        )
    }
}

/// An `http://` or `https://` URL without a query or fragment: the service's base address.
/// Empty stands for the default, as for [`secret_name`].
fn http_url(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Ok(String::new());
    }
    let url = Url::parse(text).map_err(|error| format!("not a URL ({error})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("not an http:// or https:// URL with a host".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the service's base URL cannot have a query or a fragment".to_owned());
    }
    Ok(text.to_owned())
}

fn job_name(name: &str) -> Result<String, String> {
    if is_dns_label(name) {
        Ok(name.to_owned())
    } else {
        Err(format!("not a valid job name: expected {DNS_LABEL_RULE}"))
    }
}

fn not_blank(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Target = Target {
        image: "registry.example.com/acme/orders",
        service: "orders",
        namespace: "acme",
        http_port: 8080,
    };

    fn parsed(line: &str) -> Result<Command, clap::Error> {
        try_parse(
            std::iter::once("deploy").chain(line.split_whitespace()),
            &TARGET,
        )
    }

    #[test]
    fn service_options_have_defaults_and_take_both_flag_forms() {
        let Ok(Command::Service(options)) = parsed("service") else {
            panic!("service not parsed");
        };
        assert_eq!(options.replicas, 1);
        assert!(options.image.env().is_empty());

        let Ok(Command::Service(options)) =
            parsed("service --tag=v1.2 --replicas 3 --env A=1 --env=B=x=y")
        else {
            panic!("service not parsed");
        };
        assert_eq!(options.image.tag, "v1.2");
        assert_eq!(options.replicas, 3);
        let env = BTreeMap::from([
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "x=y".to_owned()),
        ]);
        assert_eq!(options.image.env(), env);
    }

    #[test]
    fn wait_ready_has_defaults_and_empty_values_stand_for_none() {
        let Ok(Command::Service(options)) = parsed("service") else {
            panic!("service not parsed");
        };
        assert!(!options.wait_ready);
        assert_eq!(options.service_url(), None);
        assert_eq!(options.image.image_pull_secret(), None);
        assert_eq!(options.timeout(), Duration::from_secs(300));
        assert_eq!(options.poll(), Duration::from_secs(2));

        let Ok(Command::Service(options)) = parsed(
            "service --wait-ready --service-url http://localhost:8080/x --image-pull-secret \
             reg.creds-1 --timeout-secs 60 --poll-secs 0",
        ) else {
            panic!("service not parsed");
        };
        assert!(options.wait_ready);
        assert_eq!(
            options.service_url().map(String::from).as_deref(),
            Some("http://localhost:8080/x")
        );
        assert_eq!(options.image.image_pull_secret(), Some("reg.creds-1"));
        assert_eq!(options.timeout(), Duration::from_secs(60));

        // What an undefined CI variable gives.
        let Ok(Command::Service(options)) = parsed("service --service-url= --image-pull-secret=")
        else {
            panic!("service not parsed");
        };
        assert_eq!(options.service_url(), None);
        assert_eq!(options.image.image_pull_secret(), None);
    }

    #[test]
    fn job_options_have_defaults() {
        let Ok(Command::Job(job)) = parsed("job --command ./run-tests-integration.sh --wait")
        else {
            panic!("job not parsed");
        };
        assert_eq!(job.command, "./run-tests-integration.sh");
        assert!(job.wait);
        assert_eq!(job.name, None);
        assert_eq!(job.timeout(), Duration::from_secs(1800));
        assert_eq!(job.poll(), Duration::from_secs(5));
    }

    #[test]
    fn bad_command_lines_are_refused_with_a_reason_and_exit_status_2() {
        for (line, expected) in [
            // Nothing at all: the whole help, on stderr.
            ("", "Commands:"),
            ("ship", "unrecognized subcommand 'ship'"),
            (
                "service --replicas many",
                "invalid value 'many' for '--replicas <N>'",
            ),
            ("service --replicas 1001", "1001 is not in 0..=1000"),
            (
                "service --replicas",
                "a value is required for '--replicas <N>'",
            ),
            ("service --command x", "unexpected argument '--command'"),
            ("service --env NOEQUALS", "--env expects KEY=VALUE"),
            ("service --env 1A=x", "--env \"1A\""),
            ("service --env A=1 --env A=2", "--env A is given twice"),
            ("service --tag -x", "not an image tag"),
            (
                "service --image-pull-secret=-creds",
                "not a Kubernetes secret name",
            ),
            (
                "service --image-pull-secret a..b",
                "not a Kubernetes secret name",
            ),
            (
                "service --service-url localhost:8080",
                "not an http:// or https:// URL",
            ),
            (
                "service --service-url https://x.example/?a=1",
                "cannot have a query",
            ),
            (
                "job --command x --wait-ready",
                "unexpected argument '--wait-ready'",
            ),
            ("job", "--command <CMD>"),
            ("job --command x --name Bad_Name", "not a valid job name"),
            (
                "job --command x --wait=yes",
                "unexpected value 'yes' for '--wait'",
            ),
            ("job --command x --timeout-secs 0", "0 is not in 1..=86400"),
        ] {
            let error = parsed(line).expect_err(line).to_string();
            assert!(error.contains(expected), "{line:?}: {error}");
            // clap's way: the mistake, then where to read more.
            assert!(error.contains("--help"), "{line:?}: {error}");
            assert_eq!(parsed(line).unwrap_err().exit_code(), 2, "{line:?}");
        }
    }

    #[test]
    fn env_values_never_appear_in_errors() {
        for line in ["service --env hunter2", "service --env 1hunter=hunter2"] {
            let error = parsed(line).unwrap_err().to_string();
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn help_names_what_this_project_deploys() {
        let help = parsed("--help").unwrap_err();
        assert_eq!(help.exit_code(), 0);
        let text = help.to_string();
        assert!(
            text.contains(
                "service orders in namespace acme, image registry.example.com/acme/orders:<tag>, \
                 port 8080"
            ),
            "{text}"
        );
    }
}
