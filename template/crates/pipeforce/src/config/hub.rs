//! `PIPEFORCE_HUB_*` and `PIPEFORCE_SECRET`: where the PIPEFORCE hub is and how to
//! authenticate to it.

use std::{fmt, time::Duration};

use secrecy::SecretString;
use url::Url;

use super::{
    masked_url,
    read::{Checker, Environment, PORT, port, variables},
};

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

variables! {
    /// The variables [`HubConfig`] is read from.
    struct Vars in "PIPEFORCE_" { hub_url, hub_host, hub_port, hub_timeout_secs, secret }
}

impl HubConfig {
    pub(super) fn read(env: &Environment, namespace: &str, check: &mut Checker) -> Self {
        let vars = Vars::read(env, check);
        let url = check.http_url(&vars.hub_url);
        let port = check.parse_with(&vars.hub_port, 8080, PORT, port);
        let url = url
            .or_else(|| check.optional(&vars.hub_host, |host| url_of_host(host, port)))
            .unwrap_or_else(|| in_cluster_url(namespace));
        Self {
            url,
            auth: check.optional_secret(&vars.secret, HubAuth::parse),
            timeout: check.seconds(&vars.hub_timeout_secs, 30, 1..=3600),
        }
    }
}

fn url_of_host(host: &str, port: u16) -> Result<Url, &'static str> {
    match Url::parse(&format!("http://{host}:{port}")) {
        Ok(url) if url.path() == "/" => Ok(url),
        _ => Err("a host name or IP address"),
    }
}

fn in_cluster_url(namespace: &str) -> Url {
    // The namespace is a DNS label by now, or already reported; either way the URL parses.
    Url::parse(&format!("http://hub.{namespace}.svc.cluster.local:8080"))
        .unwrap_or_else(|_| Url::parse("http://hub.invalid:8080").expect("a valid literal URL"))
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

/// Its part of the start-up line: the URL's password and the credentials masked.
impl fmt::Display for HubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = match &self.auth {
            None => "(unset)",
            Some(HubAuth::Basic { .. }) => "Basic ***",
            Some(HubAuth::Bearer(_)) => "Bearer ***",
        };
        write!(f, "hub_url={} hub_secret={secret}", masked_url(&self.url))
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

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::HubAuth;
    use crate::config::test_support::config;

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
    fn the_hub_secret_is_parsed_in_each_documented_form() {
        let auth = |secret: &str| {
            config(&[("PIPEFORCE_SECRET", secret)])
                .map(|config| config.hub.auth)
                .map_err(|error| error.to_string())
        };

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
}
