//! Passwords in URLs, shown as `***` wherever a value is logged or quoted in an error.

use url::Url;

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

#[cfg(test)]
mod tests {
    use crate::config::test_support::{assert_no_password, config, problem_variables};

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
}
