//! The service's RabbitMQ credentials: forwarded from the deployer into the container.
//!
//! Nothing public says that `service.start` or `service.job.start` inject
//! `PIPEFORCE_MESSAGING_USERNAME` and `PIPEFORCE_MESSAGING_PASSWORD` (PIPEFORCE documents the
//! broker's address only), and without them the service logs in as `guest`, which RabbitMQ
//! refuses from other hosts by default. So the deployer passes them: given with `--env`, or
//! set in its own environment (e.g. from CI secrets). Their values are never printed.

use std::collections::BTreeMap;

/// The variable the service reads its RabbitMQ user from.
pub const USERNAME_VAR: &str = "PIPEFORCE_MESSAGING_USERNAME";
/// The variable the service reads its RabbitMQ password from.
pub const PASSWORD_VAR: &str = "PIPEFORCE_MESSAGING_PASSWORD";

/// How the service will log in to RabbitMQ.
#[derive(Debug, PartialEq, Eq)]
pub enum BrokerLogin {
    /// With the credentials forwarded into its environment.
    Forwarded,
    /// As `guest`, unless the cluster provides credentials.
    Guest,
}

impl BrokerLogin {
    /// What to tell the deployer before the hub is called, if anything.
    pub fn warning(&self) -> Option<String> {
        match self {
            Self::Forwarded => None,
            Self::Guest => Some(format!(
                "{USERNAME_VAR} and {PASSWORD_VAR} are not set, so the service will log in to \
                 RabbitMQ as guest unless the cluster provides credentials (RabbitMQ refuses \
                 guest from other hosts by default). To pass them, set both in this \
                 environment (in CI: from secrets), or give --env {USERNAME_VAR}=<user> \
                 --env {PASSWORD_VAR}=<password>"
            )),
        }
    }
}

/// Adds the deployer's broker credentials to the container's `env`, where `--env` did not
/// give them already. `deployer` reads the deployer's environment; an empty value counts as
/// unset (a CI secret that does not exist expands to nothing). Refuses one without the other:
/// the service would pair it with `guest`.
pub fn forward(
    env: &mut BTreeMap<String, String>,
    deployer: impl Fn(&str) -> Option<String>,
) -> Result<BrokerLogin, String> {
    for key in [USERNAME_VAR, PASSWORD_VAR] {
        if !env.contains_key(key)
            && let Some(value) = deployer(key).filter(|value| !value.is_empty())
        {
            env.insert(key.to_owned(), value);
        }
    }
    match (
        env.contains_key(USERNAME_VAR),
        env.contains_key(PASSWORD_VAR),
    ) {
        (true, true) => Ok(BrokerLogin::Forwarded),
        (false, false) => Ok(BrokerLogin::Guest),
        (true, false) => Err(one_without_the_other(USERNAME_VAR, PASSWORD_VAR)),
        (false, true) => Err(one_without_the_other(PASSWORD_VAR, USERNAME_VAR)),
    }
}

fn one_without_the_other(set: &str, missing: &str) -> String {
    format!(
        "{set} is set (in this environment or with --env) but {missing} is not: the service \
         needs both to log in to RabbitMQ; set both, or neither to let the cluster decide"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn the_deployers_credentials_are_added_unless_env_gave_them() {
        let deployer = |key: &str| Some(format!("deployer-{key}"));

        let mut given = env(&[("A", "1")]);
        assert_eq!(forward(&mut given, deployer), Ok(BrokerLogin::Forwarded));
        assert_eq!(given[USERNAME_VAR], "deployer-PIPEFORCE_MESSAGING_USERNAME");
        assert_eq!(given[PASSWORD_VAR], "deployer-PIPEFORCE_MESSAGING_PASSWORD");

        let mut given = env(&[(USERNAME_VAR, "cli-user"), (PASSWORD_VAR, "cli-pw")]);
        assert_eq!(forward(&mut given, deployer), Ok(BrokerLogin::Forwarded));
        assert_eq!(
            given,
            env(&[(USERNAME_VAR, "cli-user"), (PASSWORD_VAR, "cli-pw")])
        );
    }

    #[test]
    fn without_credentials_the_service_logs_in_as_guest_and_the_deployer_is_told() {
        let mut given = env(&[]);
        let empty = |_: &str| Some(String::new());

        let login = forward(&mut given, empty).unwrap();

        assert_eq!(login, BrokerLogin::Guest);
        assert!(given.is_empty());
        let warning = login.warning().unwrap();
        assert!(warning.contains("as guest"), "{warning}");
        assert!(
            warning.contains("--env PIPEFORCE_MESSAGING_USERNAME=<user>"),
            "{warning}"
        );
    }

    #[test]
    fn one_credential_without_the_other_is_refused_naming_both_and_no_value() {
        let mut given = env(&[(PASSWORD_VAR, "hunter2")]);

        let error = forward(&mut given, |_| None).unwrap_err();

        assert!(
            error.starts_with("PIPEFORCE_MESSAGING_PASSWORD is set"),
            "{error}"
        );
        assert!(
            error.contains("PIPEFORCE_MESSAGING_USERNAME is not"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    }
}
