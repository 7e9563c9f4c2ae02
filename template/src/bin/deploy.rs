//! Deploys this service to PIPEFORCE, or runs a one-off job with its image, through the hub.
//!
//! ```text
//! cargo run --bin deploy -- service [--tag T] [--replicas N] [--env KEY=VALUE ...]
//! cargo run --bin deploy -- job --command ./run-tests-integration.sh [--tag T] [--name N]
//!                               [--env KEY=VALUE ...] [--wait] [--timeout-secs S] [--poll-secs S]
//! ```
//!
//! It reads the same environment as the service (`PIPEFORCE_HUB_URL`, `PIPEFORCE_SECRET`,
//! `PIPEFORCE_SERVICE`, `PIPEFORCE_NAMESPACE`, `PIPEFORCE_HUB_TIMEOUT_SECS`, ...), so from a
//! laptop or a CI job set at least:
//!
//! ```sh
//! export PIPEFORCE_HUB_URL=https://hub-{{namespace}}.pipeforce.net
//! export PIPEFORCE_SECRET="Apitoken <token from iam.apitoken>"
//! ```
//!
//! - `service` starts (or updates) the service with the hub command `service.start`: `name`
//!   is the service name, `image` is [`IMAGE`] with the tag, `port` is the HTTP port the
//!   service listens on, `ingress` is the service name (PIPEFORCE then serves it at
//!   `https://<service>-<namespace>.pipeforce.net`), plus `replicas` and `env`.
//! - `job` starts the image as a job running `--command` (e.g. the integration tests) with
//!   `service.job.start`, under a new name for every run. With `--wait` it polls
//!   `service.job.status` until the job has finished, prints `service.job.logs`, and exits
//!   with 1 if the job failed.
//!
//! The tag is `--tag`, else the `IMAGE_TAG` variable (e.g. set by CI to the tag it pushed),
//! else `latest`. Values given with `--env` are sent to the hub but never printed: they may be
//! secrets.
//!
//! Each step is one hub command, called directly rather than as a one-command pipeline: a
//! start is `POST /api/v3/command:<name>` with the parameters as a JSON body, and the hub's
//! answer or error is that command's own. Starts are never retried once they reached the hub
//! (a second `service.job.start` would run the job twice). Status and logs only read, so they
//! are `GET` with query parameters, which the hub client retries on `502`/`503`/`504`.
//!
//! Exit status: 0 when done; 1 when the hub refused or could not be reached, the environment
//! is invalid, or the job failed; 2 when the command line is wrong.

use std::{
    collections::BTreeMap,
    error::Error,
    hash::{BuildHasher, Hasher},
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use pipeforce::{
    Config, HubClient, HubError,
    config::masked_url,
    hub::{HubResponse, Value},
    telemetry,
};
use serde::Serialize;

use {{crate_name}}::DEFAULTS;

/// The image this project builds, without a tag.
const IMAGE: &str = "{{image}}";

/// The usage text; [`usage`] adds what this project deploys.
const USAGE: &str = "\
Deploys this service to PIPEFORCE, or runs a job with its image, through the hub.

Usage:
  deploy service [--tag T] [--replicas N] [--env KEY=VALUE ...]
  deploy job --command CMD [--tag T] [--name N] [--env KEY=VALUE ...]
             [--wait] [--timeout-secs S] [--poll-secs S]

Options:
  --tag T           image tag (default: $IMAGE_TAG, else latest)
  --env KEY=VALUE   environment variable for the container; repeat for more
  --replicas N      service: number of instances (default 1)
  --command CMD     job: what the job runs, e.g. ./run-tests-integration.sh
  --name N          job: the job's name (default: <service>-<command>-<UTC time>-<random>)
  --wait            job: wait until it has finished, print its logs, fail if it failed
  --timeout-secs S  job: how long --wait waits at most (default 1800)
  --poll-secs S     job: seconds between status checks while waiting (default 5)

The hub and the credentials come from PIPEFORCE_HUB_URL and PIPEFORCE_SECRET.
";

fn usage() -> String {
    format!(
        "{USAGE}\nThis project: service {} in namespace {}, image {IMAGE}:<tag>, port {}.\n",
        DEFAULTS.service, DEFAULTS.namespace, DEFAULTS.http_port
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = match parse(std::env::args().skip(1)) {
        Ok(Some(command)) => command,
        Ok(None) => {
            print!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{}", usage());
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_env(DEFAULTS) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Logs (e.g. the hub client's retries) go to stderr; what the command did goes to stdout.
    let _telemetry = match telemetry::init(&config) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match HubClient::new(&config.hub) {
        Ok(hub) => match command {
            Command::Service(options) => deploy_service(&hub, &config, options).await,
            Command::Job(options) => run_job(&hub, &config, options).await,
        },
        Err(error) => Err(error.into()),
    };
    result.unwrap_or_else(|error| {
        eprintln!("error: {error}");
        if let Some(hint) = error
            .downcast_ref::<HubError>()
            .and_then(|error| hint(error, &config))
        {
            eprintln!("hint: {hint}");
        }
        ExitCode::FAILURE
    })
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

/// What the command line asked for.
#[derive(Debug, PartialEq)]
enum Command {
    Service(ServiceOptions),
    Job(JobOptions),
}

#[derive(Debug, PartialEq)]
struct ServiceOptions {
    tag: String,
    replicas: u32,
    env: BTreeMap<String, String>,
}

#[derive(Debug, PartialEq)]
struct JobOptions {
    command: String,
    tag: String,
    name: Option<String>,
    env: BTreeMap<String, String>,
    wait: bool,
    timeout: Duration,
    poll: Duration,
}

/// The parameters of `service.start`.
#[derive(Serialize)]
struct ServiceStart<'a> {
    name: &'a str,
    image: &'a str,
    port: u16,
    ingress: &'a str,
    replicas: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: &'a BTreeMap<String, String>,
}

/// The parameters of `service.job.start`.
#[derive(Serialize)]
struct JobStart<'a> {
    name: &'a str,
    image: &'a str,
    command: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: &'a BTreeMap<String, String>,
}

async fn deploy_service(
    hub: &HubClient,
    config: &Config,
    options: ServiceOptions,
) -> Result<ExitCode, Box<dyn Error>> {
    let image = format!("{IMAGE}:{}", options.tag);
    let service = &config.service;
    println!(
        "starting service {service} in namespace {}",
        config.namespace
    );
    println!("  image:    {image}");
    println!("  port:     {}", DEFAULTS.http_port);
    println!("  replicas: {}", options.replicas);
    println!("  env:      {}", names(&options.env));
    println!("  hub:      {}", masked_url(hub.base_url()));

    let answer = hub
        .run_command(
            "service.start",
            &ServiceStart {
                name: service,
                image: &image,
                port: DEFAULTS.http_port,
                ingress: service,
                replicas: options.replicas,
                env: &options.env,
            },
        )
        .await?;

    println!("the hub answered {}:\n{}", answer.status(), shown(&answer));
    println!(
        "once running: https://{service}-{}.pipeforce.net",
        config.namespace
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_job(
    hub: &HubClient,
    config: &Config,
    options: JobOptions,
) -> Result<ExitCode, Box<dyn Error>> {
    let image = format!("{IMAGE}:{}", options.tag);
    let name = match options.name {
        Some(name) => name,
        None => job_name(&config.service, &options.command, &unique_suffix()),
    };
    println!("starting job {name} in namespace {}", config.namespace);
    println!("  image:   {image}");
    println!("  command: {}", options.command);
    println!("  env:     {}", names(&options.env));
    println!("  hub:     {}", masked_url(hub.base_url()));

    let answer = hub
        .run_command(
            "service.job.start",
            &JobStart {
                name: &name,
                image: &image,
                command: &options.command,
                env: &options.env,
            },
        )
        .await?;
    println!("the hub answered {}:\n{}", answer.status(), shown(&answer));
    println!("job: {name}");
    if !options.wait {
        return Ok(ExitCode::SUCCESS);
    }

    let state = wait_for_job(hub, &name, options.timeout, options.poll).await?;
    match hub
        .get_command("service.job.logs", &[("name", name.as_str())])
        .await
    {
        Ok(logs) => println!(
            "--- logs of job {name}\n{}\n--- end of logs",
            logs_text(&logs.text())
        ),
        // The job's outcome is known; missing logs should not hide it.
        Err(error) => eprintln!("cannot fetch the logs of job {name}: {error}"),
    }
    if state == JobState::Succeeded {
        println!("job {name} succeeded");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("job {name} failed");
        Ok(ExitCode::FAILURE)
    }
}

/// Polls `service.job.status` until the job has finished or `timeout` has passed. The first
/// check is made at once; each change of what the hub reports is printed.
async fn wait_for_job(
    hub: &HubClient,
    name: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<JobState, Box<dyn Error>> {
    let deadline = Instant::now() + timeout;
    let mut last_reported = String::new();
    loop {
        let answer = hub
            .get_command("service.job.status", &[("name", name)])
            .await?;
        let state = job_state(&answer.text());
        let said = match &state {
            JobState::Running(said) => said,
            finished => return Ok(finished.clone()),
        };
        // Printed when it changes, so a long wait shows progress without repeating itself.
        if *said != last_reported {
            println!("job {name}: running (the hub says: {said})");
            last_reported = said.clone();
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "job {name} did not finish within {} s (--timeout-secs); it may still be \
                 running: stop it with the hub command service.job.stop",
                timeout.as_secs()
            )
            .into());
        }
        tokio::time::sleep(poll.min(deadline - now)).await;
    }
}

/// How far a job is, as read from a `service.job.status` answer.
#[derive(Debug, Clone, PartialEq)]
enum JobState {
    Succeeded,
    Failed,
    /// Not finished, or not recognisably so: what the hub said, shortened.
    Running(String),
}

/// Reads a `service.job.status` answer liberally, because its shape is not documented: a word
/// (`Succeeded`, `completed`, `FAILED`, `running`, ...), or JSON whose `status`, `state`,
/// `phase` or `result` holds such a word (nested objects too), Kubernetes job counters
/// (`succeeded`, `failed`, `active`), Kubernetes conditions (`Complete`/`Failed` = `True`), or
/// an `exitCode`. A failure anywhere wins over a success; anything else is still running.
fn job_state(answer: &str) -> JobState {
    let (signals, said) = match answer.parse::<Value>() {
        Ok(value) => {
            let mut signals = Vec::new();
            collect_signals(&value, &mut signals);
            (signals, value.to_string())
        }
        Err(_) => {
            let text = answer.trim().to_owned();
            let signals = text
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter_map(word_state)
                .collect();
            (signals, text)
        }
    };
    if signals.contains(&Finished::Failed) {
        JobState::Failed
    } else if signals.contains(&Finished::Succeeded) {
        JobState::Succeeded
    } else {
        JobState::Running(shortened(&said, 200))
    }
}

#[derive(Debug, PartialEq)]
enum Finished {
    Succeeded,
    Failed,
}

fn collect_signals(value: &Value, signals: &mut Vec<Finished>) {
    match value {
        Value::String(word) => signals.extend(word_state(word)),
        Value::Array(items) => items.iter().for_each(|item| collect_signals(item, signals)),
        Value::Object(fields) => {
            let field = |wanted: &str| {
                fields
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(wanted))
                    .map(|(_, value)| value)
            };
            let count = |wanted: &str| match field(wanted) {
                Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
                Some(Value::Bool(true)) => 1,
                _ => 0,
            };
            for key in ["status", "state", "phase", "result", "job", "data"] {
                if let Some(value) = field(key) {
                    collect_signals(value, signals);
                }
            }
            // Kubernetes Job status: counters of pods, and conditions.
            if count("active") == 0 {
                if count("failed") > 0 {
                    signals.push(Finished::Failed);
                } else if count("succeeded") > 0 {
                    signals.push(Finished::Succeeded);
                }
            }
            if let Some(Value::Array(conditions)) = field("conditions") {
                for condition in conditions {
                    let is_true = condition
                        .get("status")
                        .and_then(Value::as_str)
                        .is_some_and(|status| status.eq_ignore_ascii_case("true"));
                    match condition.get("type").and_then(Value::as_str) {
                        Some("Complete" | "SuccessCriteriaMet") if is_true => {
                            signals.push(Finished::Succeeded);
                        }
                        Some("Failed" | "FailureTarget") if is_true => {
                            signals.push(Finished::Failed);
                        }
                        _ => {}
                    }
                }
            }
            let exit_code = field("exitCode").or_else(|| field("exit_code"));
            if let Some(code) = exit_code.and_then(Value::as_i64) {
                signals.push(if code == 0 {
                    Finished::Succeeded
                } else {
                    Finished::Failed
                });
            }
        }
        _ => {}
    }
}

/// Whether one word says that a job has finished, and how.
fn word_state(word: &str) -> Option<Finished> {
    match word.trim().to_ascii_lowercase().as_str() {
        "succeeded" | "success" | "successful" | "completed" | "complete" | "done" | "passed" => {
            Some(Finished::Succeeded)
        }
        "failed"
        | "failure"
        | "error"
        | "errored"
        | "crashed"
        | "cancelled"
        | "canceled"
        | "aborted"
        | "killed"
        | "backofflimitexceeded"
        | "deadlineexceeded" => Some(Finished::Failed),
        _ => None,
    }
}

/// The text of a `service.job.logs` answer: a JSON string or a `logs`/`log`/`output` field is
/// unwrapped, a JSON list of lines joined, anything else shown as it came.
fn logs_text(answer: &str) -> String {
    let Ok(value) = answer.parse::<Value>() else {
        return answer.to_owned();
    };
    let lines = |value: &Value| match value {
        Value::String(text) => Some(text.clone()),
        Value::Array(items) if items.iter().all(Value::is_string) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    };
    lines(&value)
        .or_else(|| {
            ["logs", "log", "output"]
                .iter()
                .find_map(|key| value.get(key).and_then(lines))
        })
        .unwrap_or_else(|| format!("{value:#}"))
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

fn shortened(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A job name PIPEFORCE accepts and that no earlier run used:
/// `<service>-<command stem>-<suffix>`, shortened to a DNS-1123 label (at most 63 characters).
fn job_name(service: &str, command: &str, suffix: &str) -> String {
    let program = command.split_whitespace().next().unwrap_or_default();
    let program = program.rsplit('/').next().unwrap_or_default();
    let stem = program.split_once('.').map_or(program, |(stem, _)| stem);
    let mut stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while stem.contains("--") {
        stem = stem.replace("--", "-");
    }
    let stem = match stem.trim_matches('-') {
        "" => "job",
        stem => stem,
    };
    let mut prefix = format!("{service}-{stem}");
    prefix.truncate(63 - 1 - suffix.len());
    format!("{}-{suffix}", prefix.trim_end_matches('-'))
}

/// `YYYYMMDD-hhmmss-xxxx`: the UTC time and 16 random bits, so that two runs in the same
/// second still differ.
fn unique_suffix() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (year, month, day, hour, minute, second) = utc(now.as_secs());
    // std's hasher keys are random per process: hashing the time with them gives random bits
    // without a dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(now.subsec_nanos());
    let random = hasher.finish() & 0xffff;
    format!("{year:04}{month:02}{day:02}-{hour:02}{minute:02}{second:02}-{random:04x}")
}

/// The UTC calendar date and time of a Unix timestamp (Howard Hinnant's `civil_from_days`).
fn utc(timestamp: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = timestamp / 86_400;
    let seconds = timestamp % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (
        year,
        month,
        day,
        seconds / 3_600,
        seconds % 3_600 / 60,
        seconds % 60,
    )
}

/// Parses the command line (without the program name). `Ok(None)` asks for the usage text.
fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Command>, String> {
    parse_with(args, std::env::var("IMAGE_TAG").ok())
}

/// [`parse`], with the value of `IMAGE_TAG` given (tests do not touch the environment).
fn parse_with(
    args: impl IntoIterator<Item = String>,
    image_tag: Option<String>,
) -> Result<Option<Command>, String> {
    let mut args = args.into_iter();
    let what = match args.next().as_deref() {
        None => return Err("say what to deploy: `service` or `job`".to_owned()),
        Some("-h" | "--help" | "help") => return Ok(None),
        Some(what @ ("service" | "job")) => what.to_owned(),
        Some(other) => {
            return Err(format!(
                "unknown command {other:?}: expected `service` or `job`"
            ));
        }
    };
    let is_job = what == "job";

    let mut tag = None;
    let mut env = BTreeMap::new();
    let mut replicas = 1;
    let mut command = None;
    let mut name = None;
    let mut wait = false;
    let mut timeout_secs = 1_800;
    let mut poll_secs = 5;
    while let Some(arg) = args.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--tag" => tag = Some(value()?),
            "--env" => {
                let (key, value) = env_pair(&value()?)?;
                if env.insert(key.clone(), value).is_some() {
                    return Err(format!("--env {key} is given twice"));
                }
            }
            "--replicas" if !is_job => {
                replicas = number(flag, &value()?, 0, 1_000)?;
            }
            "--command" if is_job => {
                let given = value()?;
                if given.trim().is_empty() {
                    return Err("--command must not be empty".to_owned());
                }
                command = Some(given);
            }
            "--name" if is_job => {
                let given = value()?;
                if !is_dns_label(&given) {
                    return Err(format!(
                        "--name {given:?} is not a valid job name: at most 63 lowercase \
                         letters, digits and '-', starting with a letter and ending with a \
                         letter or digit"
                    ));
                }
                name = Some(given);
            }
            "--wait" if is_job => {
                if inline.is_some() {
                    return Err("--wait takes no value".to_owned());
                }
                wait = true;
            }
            "--timeout-secs" if is_job => {
                timeout_secs = number(flag, &value()?, 1, 86_400)?;
            }
            "--poll-secs" if is_job => poll_secs = number(flag, &value()?, 0, 3_600)?,
            _ => return Err(format!("unknown option {flag:?} for `deploy {what}`")),
        }
    }

    let tag = match (tag, image_tag.filter(|tag| !tag.trim().is_empty())) {
        (Some(tag), _) => checked_tag(&tag, "--tag")?,
        (None, Some(tag)) => checked_tag(&tag, "IMAGE_TAG")?,
        (None, None) => "latest".to_owned(),
    };
    if !is_job {
        return Ok(Some(Command::Service(ServiceOptions {
            tag,
            replicas,
            env,
        })));
    }
    let command = command.ok_or("deploy job needs --command, e.g. ./run-tests-integration.sh")?;
    Ok(Some(Command::Job(JobOptions {
        command,
        tag,
        name,
        env,
        wait,
        timeout: Duration::from_secs(timeout_secs.into()),
        poll: Duration::from_secs(poll_secs.into()),
    })))
}

/// `KEY=VALUE`, with a key Kubernetes accepts as an environment variable name. Errors show the
/// key at most, never the value.
fn env_pair(pair: &str) -> Result<(String, String), String> {
    let Some((key, value)) = pair.split_once('=') else {
        return Err("--env expects KEY=VALUE (value not shown)".to_owned());
    };
    let valid = key.bytes().next().is_some_and(|b| !b.is_ascii_digit())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !valid {
        return Err(format!(
            "--env {key:?}: a variable name is letters, digits, '_', '-' and '.', not \
             starting with a digit"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// A Docker image tag: letters, digits, `_`, `.` and `-`, not starting with `.` or `-`, at
/// most 128 characters.
fn checked_tag(tag: &str, source: &str) -> Result<String, String> {
    let valid = (1..=128).contains(&tag.len())
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(tag.to_owned())
    } else {
        Err(format!(
            "{source} {tag:?} is not an image tag: at most 128 letters, digits, '_', '.' and \
             '-', not starting with '.' or '-'"
        ))
    }
}

fn number(flag: &str, value: &str, min: u32, max: u32) -> Result<u32, String> {
    value
        .parse()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("{flag} expects a whole number from {min} to {max}, got {value:?}"))
}

fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn service_options_have_defaults_and_take_both_flag_forms() {
        let parsed = parse_with(args("service"), None).unwrap();
        assert_eq!(
            parsed,
            Some(Command::Service(ServiceOptions {
                tag: "latest".to_owned(),
                replicas: 1,
                env: BTreeMap::new(),
            }))
        );

        let parsed = parse_with(
            args("service --tag=v1.2 --replicas 3 --env A=1 --env=B=x=y"),
            Some("ignored".to_owned()),
        )
        .unwrap();
        let env = BTreeMap::from([
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "x=y".to_owned()),
        ]);
        assert_eq!(
            parsed,
            Some(Command::Service(ServiceOptions {
                tag: "v1.2".to_owned(),
                replicas: 3,
                env,
            }))
        );
    }

    #[test]
    fn the_tag_comes_from_image_tag_when_not_given() {
        let Ok(Some(Command::Job(job))) = parse_with(
            args("job --command ./run-tests-integration.sh --wait"),
            Some("sha-1234".to_owned()),
        ) else {
            panic!("job not parsed");
        };
        assert_eq!(job.tag, "sha-1234");
        assert!(job.wait);
        assert_eq!(job.timeout, Duration::from_secs(1800));
        assert_eq!(job.poll, Duration::from_secs(5));
    }

    #[test]
    fn bad_command_lines_are_refused_with_a_reason() {
        for (line, expected) in [
            ("", "say what to deploy"),
            ("ship", "unknown command"),
            (
                "service --replicas many",
                "--replicas expects a whole number",
            ),
            ("service --replicas", "--replicas needs a value"),
            ("service --command x", "unknown option \"--command\""),
            ("service --env NOEQUALS", "--env expects KEY=VALUE"),
            ("service --env 1A=x", "--env \"1A\""),
            ("service --env A=1 --env A=2", "--env A is given twice"),
            ("service --tag -x", "is not an image tag"),
            ("job", "needs --command"),
            ("job --command x --name Bad_Name", "not a valid job name"),
            ("job --command x --wait=yes", "--wait takes no value"),
            ("job --command x --timeout-secs 0", "--timeout-secs expects"),
        ] {
            let error = parse_with(args(line), None).unwrap_err();
            assert!(error.contains(expected), "{line:?}: {error}");
        }
    }

    #[test]
    fn env_values_never_appear_in_errors() {
        let error = parse_with(args("service --env hunter2"), None).unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn job_names_are_dns_labels_made_of_service_command_and_suffix() {
        let suffix = "20250102-030405-beef";
        assert_eq!(
            job_name("orders", "./run-tests-integration.sh --fast", suffix),
            "orders-run-tests-integration-20250102-030405-beef"
        );
        assert_eq!(
            job_name("orders", "/bin/My_Script", suffix),
            "orders-my-script-20250102-030405-beef"
        );
        assert_eq!(
            job_name("orders", "./.sh", suffix),
            "orders-job-20250102-030405-beef"
        );

        let long = job_name(&"s".repeat(63), "./run-tests-integration.sh", suffix);
        assert_eq!(long.len(), 63);
        assert!(is_dns_label(&long), "{long}");
        assert!(long.ends_with(suffix));

        let cut_at_dash = job_name(&format!("{}-x", "a".repeat(40)), "run", suffix);
        assert!(is_dns_label(&cut_at_dash), "{cut_at_dash}");
    }

    #[test]
    fn unique_suffixes_differ_and_keep_names_valid() {
        let (first, second) = (unique_suffix(), unique_suffix());
        assert_ne!(first, second);
        assert_eq!(first.len(), 20, "{first}");
        assert!(is_dns_label(&job_name("orders", "run", &first)));
    }

    #[test]
    fn utc_dates_are_computed_from_unix_time() {
        assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(utc(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(utc(4_107_542_399), (2100, 2, 28, 23, 59, 59));
    }

    #[test]
    fn job_states_are_read_from_words_fields_counters_conditions_and_exit_codes() {
        let running = |said: &str| JobState::Running(said.to_owned());
        for (answer, expected) in [
            ("Succeeded", JobState::Succeeded),
            ("job finished: COMPLETED", JobState::Succeeded),
            ("FAILED", JobState::Failed),
            ("running", running("running")),
            (r#""Completed""#, JobState::Succeeded),
            (
                r#"{"status": "Running"}"#,
                running(r#"{"status":"Running"}"#),
            ),
            (r#"{"status": "succeeded"}"#, JobState::Succeeded),
            (r#"{"state": "Error", "message": "x"}"#, JobState::Failed),
            (r#"{"phase": "Failed"}"#, JobState::Failed),
            (r#"{"result": {"status": "done"}}"#, JobState::Succeeded),
            (
                r#"{"status": {"active": 1}}"#,
                running(r#"{"status":{"active":1}}"#),
            ),
            (r#"{"status": {"succeeded": 1}}"#, JobState::Succeeded),
            (r#"{"active": 0, "failed": 2}"#, JobState::Failed),
            (
                r#"{"active": 1, "failed": 1}"#,
                running(r#"{"active":1,"failed":1}"#),
            ),
            (
                r#"{"conditions": [{"type": "Complete", "status": "True"}]}"#,
                JobState::Succeeded,
            ),
            (
                r#"{"conditions": [{"type": "Failed", "status": "True"}]}"#,
                JobState::Failed,
            ),
            (
                r#"{"status": "Completed", "exitCode": 3}"#,
                JobState::Failed,
            ),
            (r#"{"exitCode": 0}"#, JobState::Succeeded),
            ("", running("")),
        ] {
            assert_eq!(job_state(answer), expected, "{answer}");
        }
    }

    #[test]
    fn logs_are_unwrapped_from_the_usual_shapes() {
        assert_eq!(logs_text("plain\nlines"), "plain\nlines");
        assert_eq!(logs_text(r#""a\nb""#), "a\nb");
        assert_eq!(logs_text(r#"["a", "b"]"#), "a\nb");
        assert_eq!(logs_text(r#"{"logs": "a\nb"}"#), "a\nb");
        assert_eq!(logs_text(r#"{"output": ["a", "b"]}"#), "a\nb");
        assert_eq!(logs_text(r#"{"other": 1}"#), "{\n  \"other\": 1\n}");
    }
}
