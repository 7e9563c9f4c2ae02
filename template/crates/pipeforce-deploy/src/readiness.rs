//! `deploy service --wait-ready`: after the start, poll the service's public `/health/ready`
//! until it answers 200 or the time is up.
//!
//! A `service.start` that the hub accepted says only that Kubernetes was asked to run the
//! image; whether the image could be pulled, and whether the service reaches RabbitMQ, shows
//! only in the service's readiness. So the deploy waits for that, and reports the last answer
//! when it never comes.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use pipeforce::config::masked_url;
use reqwest::{StatusCode, redirect};
use tokio::time::Instant;
use url::Url;

use crate::Error;

/// The variable that gives `--service-url` when the flag is not given.
pub const SERVICE_URL_VAR: &str = "PIPEFORCE_SERVICE_URL";

/// The longest wait between two checks, however long `--poll-secs` grew.
const MAX_POLL: Duration = Duration::from_secs(10);

/// How long one check may take (less when the deadline is nearer).
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A not-ready answer that does not change is printed again after this long, as a sign of life.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How much of a not-ready answer's body is shown.
const BODY_EXCERPT_CHARS: usize = 300;

/// Where PIPEFORCE serves a service with an ingress: `https://<service>-<namespace>.pipeforce.net`.
pub fn public_url(service: &str, namespace: &str) -> Url {
    Url::parse(&format!("https://{service}-{namespace}.pipeforce.net/"))
        .expect("service and namespace are DNS labels, so this is a valid URL")
}

/// `<base>/health/ready`, keeping a path the base URL may have.
pub fn readiness_url(base: &Url) -> Url {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join("health/ready")
        .expect("a relative path joins any http(s) URL")
}

/// Polls `url` until it answers 200 or `timeout` has passed, printing what it hears. The
/// first check is made at once, the second after `poll`, and the waits grow by half each
/// time up to 10 s.
pub async fn wait_ready(url: &Url, timeout: Duration, poll: Duration) -> Result<(), Error> {
    let shown_url = masked_url(url);
    // A redirect is not readiness: it would lead to a login page that answers 200.
    let client = reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .user_agent(concat!("pipeforce-deploy/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| Error::Input(format!("cannot build an HTTP client: {error}")))?;
    let mut waits = ExponentialBuilder::default()
        .with_min_delay(poll)
        .with_max_delay(poll.max(MAX_POLL))
        .with_factor(1.5)
        .without_max_times()
        .build();
    println!(
        "waiting up to {} s for {shown_url} to answer 200",
        timeout.as_secs()
    );
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last_printed: Option<(String, Instant)> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let check_timeout = CHECK_TIMEOUT.min(remaining).max(Duration::from_secs(1));
        let answer = match check(&client, url, check_timeout).await {
            Ok(()) => {
                println!(
                    "{shown_url} answered 200 after {} s: the service is ready",
                    started.elapsed().as_secs()
                );
                return Ok(());
            }
            Err(answer) => answer,
        };
        let now = Instant::now();
        let due = match &last_printed {
            Some((printed, at)) => *printed != answer || now - *at >= PROGRESS_EVERY,
            None => true,
        };
        if due {
            println!(
                "  not ready after {} s: {answer}",
                (now - started).as_secs()
            );
            last_printed = Some((answer.clone(), now));
        }
        if now >= deadline {
            return Err(Error::NotReady {
                url: shown_url,
                timeout,
                last_answer: answer,
            });
        }
        let wait = waits.next().unwrap_or(MAX_POLL);
        tokio::time::sleep(wait.min(deadline - now)).await;
    }
}

/// One check: `Ok` on 200, else what the service answered or why it did not.
async fn check(client: &reqwest::Client, url: &Url, timeout: Duration) -> Result<(), String> {
    let response = client
        .get(url.clone())
        .timeout(timeout)
        .send()
        .await
        .map_err(|error| format!("no answer: {}", cause_chain(&error)))?;
    let status = response.status();
    if status == StatusCode::OK {
        return Ok(());
    }
    let body = match response.text().await {
        Ok(body) => excerpt(&body),
        Err(error) => format!("(body unreadable: {})", cause_chain(&error)),
    };
    Err(format!("{status}: {body}"))
}

/// The body on one line, shortened to [`BODY_EXCERPT_CHARS`] characters.
fn excerpt(body: &str) -> String {
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return "(empty body)".to_owned();
    }
    match one_line.char_indices().nth(BODY_EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}...", &one_line[..cut]),
        None => one_line,
    }
}

/// The error and its causes, `: `-separated (reqwest's own message omits the cause).
fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readiness_url_is_below_the_public_url_or_the_one_given() {
        assert_eq!(
            readiness_url(&public_url("orders", "acme")).as_str(),
            "https://orders-acme.pipeforce.net/health/ready"
        );
        for (base, expected) in [
            (
                "http://localhost:8080",
                "http://localhost:8080/health/ready",
            ),
            (
                "https://example.com/orders",
                "https://example.com/orders/health/ready",
            ),
            (
                "https://example.com/orders/",
                "https://example.com/orders/health/ready",
            ),
        ] {
            let base = Url::parse(base).unwrap();
            assert_eq!(readiness_url(&base).as_str(), expected, "{base}");
        }
    }

    #[test]
    fn excerpts_are_one_line_and_short() {
        assert_eq!(excerpt(""), "(empty body)");
        assert_eq!(
            excerpt("{\n  \"messaging\": \"DOWN\"\n}"),
            "{ \"messaging\": \"DOWN\" }"
        );
        let long = excerpt(&"é".repeat(1_000));
        assert_eq!(long.chars().count(), BODY_EXCERPT_CHARS + 3);
        assert!(long.ends_with("..."));
    }
}
