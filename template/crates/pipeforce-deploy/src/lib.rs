//! # pipeforce-deploy: deploys a service to PIPEFORCE, or runs a job with its image
//!
//! A project's `deploy` binary is a few lines that name the image and call [`main`]:
//!
//! ```text
//! cargo run --bin deploy -- service [--tag T] [--replicas N] [--env KEY=VALUE ...]
//!                                   [--image-pull-secret NAME] [--wait-ready [--service-url URL]
//!                                   [--timeout-secs S] [--poll-secs S]]
//! cargo run --bin deploy -- job --command ./run-tests-integration.sh [--tag T] [--name N]
//!                               [--env KEY=VALUE ...] [--image-pull-secret NAME]
//!                               [--wait] [--timeout-secs S] [--poll-secs S]
//! ```
//!
//! It reads the same environment as the service (`PIPEFORCE_HUB_URL`, `PIPEFORCE_SECRET`,
//! `PIPEFORCE_SERVICE`, `PIPEFORCE_NAMESPACE`, `PIPEFORCE_HUB_TIMEOUT_SECS`, ...) through
//! [`pipeforce::Config`] (but for `PIPEFORCE_MESSAGING_USERNAME` and `..._PASSWORD`, which it
//! forwards to the container), and calls the hub with [`pipeforce::HubClient`]. It is built on
//! `pipeforce` without its `service` feature: posting a JSON body needs neither the broker
//! client, nor the HTTP server, nor OpenTelemetry, and the tool builds in a fraction of the
//! service's time.
//!
//! - `service` starts (or updates) the service with the hub command `service.start`
//!   ([`service`]), and with `--wait-ready` waits until it is ready ([`readiness`]).
//! - `job` starts the image as a job with `service.job.start` under a new name for every run,
//!   and with `--wait` follows it to its end ([`job`]).
//!
//! Each step is one hub command, called directly rather than as a one-command pipeline: a
//! start is `POST /api/v3/command:<name>` with the parameters as a JSON body, and the hub's
//! answer or error is that command's own. Starts are never retried once they reached the hub
//! (a second `service.job.start` would run the job twice). Status and logs only read, so they
//! are `GET` with query parameters, which the hub client retries on `502`/`503`/`504`.
//!
//! Exit status: 0 when done; 1 when the hub refused or could not be reached, the environment
//! is invalid, or the job failed; 2 when the command line is wrong.
//!
//! # Layout
//! - [`cli`]: the command line (clap), checked before anything is called.
//! - [`broker_login`]: the RabbitMQ credentials forwarded into the container.
//! - [`image`]: the pull secret and pull policy.
//! - [`service`]: `deploy service`.
//! - [`readiness`]: `deploy service --wait-ready`.
//! - [`job`]: `deploy job`: the job's name, its start, the wait and the logs.
//! - [`job_status`]: reading the hub's answers about a job, whose shape is not documented.

pub mod broker_login;
pub mod cli;
pub mod image;
pub mod job;
pub mod job_status;
pub mod readiness;
pub mod service;

use std::{collections::BTreeMap, process::ExitCode};

use pipeforce::{Config, Defaults, HubClient, HubError, hub::HubResponse, hub::Value};

use crate::cli::{Command, ImageOptions};

/// What a project deploys. Its `deploy` binary names it once and hands it to [`main`].
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The image the project builds, without a tag, e.g.
    /// `us-east1-docker.pkg.dev/pipeforce/acme/orders`.
    pub image: &'static str,
    /// The service name, where `PIPEFORCE_SERVICE` is not set.
    pub service: &'static str,
    /// The namespace, where `PIPEFORCE_NAMESPACE` is not set.
    pub namespace: &'static str,
    /// The port the service listens on in its container.
    pub http_port: u16,
}

/// The whole `deploy` program: reads the command line and the environment, calls the hub,
/// and says how it went in the exit status.
pub fn main(target: Target) -> ExitCode {
    let command = match cli::parse(std::env::args_os(), &target) {
        Ok(command) => command,
        // Help, the version, or a wrong command line (exit status 2), as clap prints them.
        Err(exit) => return exit,
    };
    let defaults = Defaults {
        service: target.service,
        namespace: target.namespace,
        http_port: target.http_port,
        version: env!("CARGO_PKG_VERSION"),
    };
    // The broker credentials are the container's, forwarded as they are (an empty one, as
    // from a CI secret that does not exist, counts as unset), not the deploy tool's own.
    let own_environment = std::env::vars_os()
        .filter(|(key, _)| key != broker_login::USERNAME_VAR && key != broker_login::PASSWORD_VAR);
    let config = match Config::from_vars(defaults, own_environment) {
        Ok(config) => config,
        Err(error) => return fail(&error),
    };
    // Logs (e.g. the hub client's retries) go to stderr; what the command did goes to stdout.
    if let Err(error) = init_logging(&config) {
        return fail(&error);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the async runtime: {error}")),
    };
    let hub = match HubClient::new(&config.hub) {
        Ok(hub) => hub,
        Err(error) => return fail(&error),
    };
    let result = runtime.block_on(async {
        match command {
            Command::Service(options) => service::deploy(&hub, &config, &target, options).await,
            Command::Job(options) => job::run(&hub, &config, &target, options).await,
        }
    });
    result.unwrap_or_else(|error| {
        eprintln!("error: {error}");
        let advice = match &error {
            Error::Hub(error) => hint(error, &config),
            Error::NotReady { .. } => Some(
                "the hub accepted the start, so look at the service's log in PIPEFORCE: a \
                 service that cannot pull its image (see --image-pull-secret) or log in to \
                 RabbitMQ (see PIPEFORCE_MESSAGING_USERNAME) never becomes ready"
                    .to_owned(),
            ),
            Error::JobTimedOut { .. } | Error::Input(_) => None,
        };
        if let Some(advice) = advice {
            eprintln!("hint: {advice}");
        }
        ExitCode::FAILURE
    })
}

/// Why a deploy failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hub call failed.
    #[error(transparent)]
    Hub(#[from] HubError),

    /// `--wait` gave up on a job that may still be running.
    #[error(
        "job {name} did not finish within {} s (--timeout-secs); it may still be running: \
         stop it with the hub command service.job.stop",
        .timeout.as_secs()
    )]
    JobTimedOut {
        /// The job's name.
        name: String,
        /// `--timeout-secs`.
        timeout: std::time::Duration,
    },

    /// `--wait-ready` gave up on a service that never answered 200.
    #[error(
        "the service did not become ready within {} s (--timeout-secs); the last answer of \
         {url} was {last_answer}",
        .timeout.as_secs()
    )]
    NotReady {
        /// The readiness URL, with any password masked.
        url: String,
        /// `--timeout-secs`.
        timeout: std::time::Duration,
        /// The status and an excerpt of the body, or why there was no answer.
        last_answer: String,
    },

    /// The input is wrong in a way found only after parsing, e.g. in the environment.
    #[error("{0}")]
    Input(String),
}

/// The container's environment: the `--env` variables and the deployer's broker credentials.
/// Warns (on stderr, before any hub call) about a login as guest and an image that may not be
/// pulled.
fn container_env(options: &ImageOptions, image: &str) -> Result<BTreeMap<String, String>, Error> {
    let mut env = options.env();
    let login =
        broker_login::forward(&mut env, |key| std::env::var(key).ok()).map_err(Error::Input)?;
    let warnings = [
        login.warning(),
        image::pull_warning(image, options.image_pull_secret()),
    ];
    for warning in warnings.into_iter().flatten() {
        eprintln!("warning: {warning}");
    }
    Ok(env)
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}

/// Plain text logs on stderr, filtered by `RUST_LOG` (default `info`), coloured as the
/// service's would be (only on a terminal, never with `NO_COLOR`).
fn init_logging(config: &Config) -> Result<(), String> {
    use std::io::IsTerminal;

    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) => tracing_subscriber::EnvFilter::try_new(&directives).map_err(|error| {
            format!(
                "RUST_LOG is not a valid log filter (e.g. `info` or `info,reqwest=warn`): {error}"
            )
        })?,
        Err(_) => tracing_subscriber::EnvFilter::new("info"),
    };
    let colours = config
        .telemetry
        .colour_logs(std::io::stderr().is_terminal());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours)
        .try_init()
        .map_err(|error| format!("cannot set up logging: {error}"))
}

/// What to check when a hub call failed in one of the two usual ways of a first try.
fn hint(error: &HubError, config: &Config) -> Option<String> {
    let in_cluster = config
        .hub
        .url
        .host_str()
        .is_some_and(|host| host.ends_with(".svc.cluster.local"));
    match error {
        HubError::Connect { .. } if in_cluster => Some(format!(
            "PIPEFORCE_HUB_URL is not set, so the hub's address inside the cluster was used; \
             from elsewhere set it, e.g. PIPEFORCE_HUB_URL=https://hub-{}.pipeforce.net",
            config.namespace
        )),
        HubError::Status { status, .. } if status.as_u16() == 401 && config.hub.auth.is_none() => {
            Some(
                "PIPEFORCE_SECRET is not set; set it to `Apitoken <token>`, `Bearer <token>` \
                 or `Basic <user>:<password>`"
                    .to_owned(),
            )
        }
        _ => None,
    }
}

/// An answer for people: JSON pretty-printed, anything else as it came.
fn shown(answer: &HubResponse) -> String {
    let text = answer.text();
    match text.parse::<Value>() {
        Ok(value) => format!("{value:#}"),
        Err(_) => text.into_owned(),
    }
}

/// The names of the `--env` variables; their values may be secrets and are not shown.
fn names(env: &BTreeMap<String, String>) -> String {
    if env.is_empty() {
        "(none)".to_owned()
    } else {
        let names: Vec<&str> = env.keys().map(String::as_str).collect();
        format!("{} (values not shown)", names.join(", "))
    }
}
