//! `deploy job`: starts the image as a job running `--command` with `service.job.start`,
//! under a new name for every run. With `--wait` it polls `service.job.status` until the job
//! has finished, prints `service.job.logs`, and fails if the job failed.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use pipeforce::{
    Config, HubClient,
    config::masked_url,
    names::{DNS_LABEL_MAX_LEN, is_dns_label},
};
use serde::Serialize;
use tokio::time::Instant;

use crate::{
    Error, Target,
    cli::JobOptions,
    container_env,
    job_status::{JobState, job_state, logs_text},
    names, shown,
};

/// The parameters of `service.job.start`. `imagePullSecret` is sent only when given: the
/// command's documentation lists it for `service.start` only.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobStart<'a> {
    name: &'a str,
    image: &'a str,
    command: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_pull_secret: Option<&'a str>,
}

/// Starts the job and, with `--wait`, follows it to its end.
pub async fn run(
    hub: &HubClient,
    config: &Config,
    target: &Target,
    options: JobOptions,
) -> Result<ExitCode, Error> {
    let image = format!("{}:{}", target.image, options.image.tag);
    let env = container_env(&options.image, &image)?;
    let pull_secret = options.image.image_pull_secret();
    let name = match &options.name {
        Some(name) => name.clone(),
        None => job_name(&config.service, &options.command, &unique_suffix()),
    };
    println!("starting job {name} in namespace {}", config.namespace);
    println!("  image:   {image}");
    println!("  pull:    secret {}", pull_secret.unwrap_or("(none)"));
    println!("  command: {}", options.command);
    println!("  env:     {}", names(&env));
    println!("  hub:     {}", masked_url(hub.base_url()));

    let answer = hub
        .run_command(
            "service.job.start",
            &JobStart {
                name: &name,
                image: &image,
                command: &options.command,
                env: &env,
                image_pull_secret: pull_secret,
            },
        )
        .await?;
    println!("the hub answered {}:\n{}", answer.status(), shown(&answer));
    println!("job: {name}");
    if !options.wait {
        return Ok(ExitCode::SUCCESS);
    }

    let state = wait_for_job(hub, &name, options.timeout(), options.poll()).await?;
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
) -> Result<JobState, Error> {
    let deadline = Instant::now() + timeout;
    let mut last_reported = String::new();
    loop {
        let answer = hub
            .get_command("service.job.status", &[("name", name)])
            .await?;
        let said = match job_state(&answer.text()) {
            JobState::Running(said) => said,
            finished => return Ok(finished),
        };
        // Printed when it changes, so a long wait shows progress without repeating itself.
        if said != last_reported {
            println!("job {name}: running (the hub says: {said})");
            last_reported = said;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::JobTimedOut {
                name: name.to_owned(),
                timeout,
            });
        }
        tokio::time::sleep(poll.min(deadline - now)).await;
    }
}

/// A job name PIPEFORCE accepts and that no earlier run used:
/// `<service>-<command stem>-<suffix>`, shortened to a DNS-1123 label.
fn job_name(service: &str, command: &str, suffix: &str) -> String {
    let program = command.split_whitespace().next().unwrap_or_default();
    let program = program.rsplit('/').next().unwrap_or_default();
    let stem = program.split_once('.').map_or(program, |(stem, _)| stem);
    // Lowercase words of letters and digits, joined by single dashes.
    let words: Vec<String> = stem
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let stem = if words.is_empty() {
        "job".to_owned()
    } else {
        words.join("-")
    };
    let mut prefix = format!("{service}-{stem}");
    prefix.truncate(DNS_LABEL_MAX_LEN - 1 - suffix.len());
    let name = format!("{}-{suffix}", prefix.trim_end_matches('-'));
    debug_assert!(is_dns_label(&name), "{name}");
    name
}

/// `YYYYMMDD-hhmmss-xxxx`: the UTC time and 16 random bits, so that two runs in the same
/// second still differ.
fn unique_suffix() -> String {
    let now = time::OffsetDateTime::now_utc();
    let random = uuid::Uuid::new_v4().as_u128() & 0xffff;
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}-{random:04x}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
