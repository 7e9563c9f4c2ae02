//! A client for the PIPEFORCE hub's HTTP API (v3): run pipelines and commands.
//!
//! One [`HubClient`] holds one `reqwest::Client` (connection pool, rustls) built from
//! [`HubConfig`]: the base URL, the credentials of `PIPEFORCE_SECRET` and the per-call timeout
//! of `PIPEFORCE_HUB_TIMEOUT_SECS`. Cloning it is cheap, so build it once and hand out clones.
//!
//! - [`HubClient::run_pipeline_yaml`] and [`HubClient::run_pipeline`] post an ad-hoc pipeline
//!   to `/api/v3/pipeline`, as YAML or as JSON ([`Pipeline`] builds the JSON form).
//! - [`HubClient::run_command`] posts one command's parameters as JSON to
//!   `/api/v3/command:<name>`; [`HubClient::get_command`] sends them as query parameters with
//!   `GET`, for commands that only read.
//! - Every answer is a [`HubResponse`]: read it as typed JSON ([`HubResponse::json`]) or as
//!   text ([`HubResponse::text`]). A status other than 2xx is a [`HubError::Status`] that keeps
//!   the status and the body, because the hub explains its refusals there.
//!
//! An answer is read up to [`MAX_RESPONSE_BODY`] (16 MiB); a larger one is a
//! [`HubError::TooLarge`], and what came beyond the limit is never buffered.
//!
//! Retries only happen where they cannot run something twice. A call that never reached the
//! hub (the connection was refused or could not be made) is retried whatever its method. A
//! `502`, `503` or `504` answer is retried only for `GET`: a `POST` may have started the
//! pipeline behind a gateway that then gave up, and running it again could deploy or delete
//! twice. For the same reason a timeout is never retried. Retries wait
//! [`DEFAULT_RETRY_DELAY`], doubled each time, plus up to as much again at random, at most
//! [`DEFAULT_RETRIES`] times; both can be changed with [`HubClient::with_retries`] and
//! [`HubClient::with_retry_delay`].
//!
//! The credentials never leave the `Authorization` header: the header value is marked
//! sensitive, `Debug` shows only the scheme (`Basic` or `Bearer`), and error messages and logs
//! name the method and path of the call, never the header, the query or the password of the
//! URL (shown as `***`).

mod error;
mod pipeline;
mod response;
mod send;

use std::{fmt, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use reqwest::{
    Method,
    header::{CONTENT_TYPE, HeaderValue},
    redirect,
};
use secrecy::ExposeSecret;
use serde::Serialize;
use url::Url;

use self::send::cause_chain;
pub use self::{error::HubError, pipeline::Pipeline, response::HubResponse};
use crate::config::{HubAuth, HubConfig, masked_url};

/// Re-exported so that a service can build command parameters (`json!({...})`) and read
/// untyped answers ([`Value`]) without a dependency on `serde_json` of its own.
pub use serde_json::{Value, json};

/// How often a call that may be repeated is retried by default.
pub const DEFAULT_RETRIES: u32 = 3;

/// The wait before the first retry by default (before jitter); it doubles for each further
/// one.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(200);

/// The longest wait between two attempts, however many retries are configured.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// How long establishing a connection may take at most (less when the call timeout is shorter).
/// Inside the cluster the hub answers a connect in milliseconds; waiting the full call timeout
/// for a dead address only delays the retry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer the client reads, in bytes (16 MiB). Hub answers are JSON documents of
/// kilobytes; a larger one comes from a wrong URL or a runaway pipeline, and reading it whole
/// could exhaust the service's memory.
pub const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

/// How much of an error answer's body an error message keeps. Hub errors are short JSON or
/// text; an HTML error page of a proxy is not worth more than its beginning.
const MAX_ERROR_BODY: usize = 2_000;

/// Calls the PIPEFORCE hub. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct HubClient {
    http: reqwest::Client,
    /// The base URL as configured, used to build every request URL.
    base: Url,
    /// The `Authorization` header value, marked sensitive; `None` without `PIPEFORCE_SECRET`.
    authorization: Option<HeaderValue>,
    /// `Basic` or `Bearer`: all that `Debug` shows of the credentials.
    auth_scheme: Option<&'static str>,
    timeout: Duration,
    retries: u32,
    retry_delay: Duration,
}

impl fmt::Debug for HubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("base_url", &masked_url(&self.base))
            .field("auth", &self.auth_scheme)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("retry_delay", &self.retry_delay)
            .finish()
    }
}

impl HubClient {
    /// Builds the client for the hub of `config`: its base URL, credentials and timeout.
    pub fn new(config: &HubConfig) -> Result<Self, HubError> {
        let base = config.url.clone();
        if base.cannot_be_a_base() {
            return Err(HubError::Setup(format!(
                "the hub URL {} cannot have a path (PIPEFORCE_HUB_URL)",
                masked_url(&base)
            )));
        }
        let (authorization, auth_scheme) = match &config.auth {
            None => (None, None),
            Some(auth) => {
                let (value, scheme) = authorization(auth)?;
                (Some(value), Some(scheme))
            }
        };
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(CONNECT_TIMEOUT))
            // A redirect would turn a POST into a GET and may drop the credentials; the hub API
            // does not redirect, so one means a wrong URL and is reported as such.
            .redirect(redirect::Policy::none())
            .user_agent(concat!("pipeforce-rust/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| HubError::Setup(cause_chain(&error)))?;
        Ok(Self {
            http,
            base,
            authorization,
            auth_scheme,
            timeout: config.timeout,
            retries: DEFAULT_RETRIES,
            retry_delay: DEFAULT_RETRY_DELAY,
        })
    }

    /// Sets how often a call is retried where retrying is safe (0: never).
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets the wait before the first retry; it doubles for each further one (at most 10 s),
    /// each with up to as much again at random.
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// The hub's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Runs an ad-hoc pipeline written in YAML: `POST /api/v3/pipeline` with
    /// `Content-Type: application/yaml`. Not retried once it reached the hub.
    pub async fn run_pipeline_yaml(&self, yaml: &str) -> Result<HubResponse, HubError> {
        let url = self.url("pipeline");
        let call = call(&Method::POST, &url);
        let request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/yaml")
            .body(yaml.to_owned());
        self.send(call, request).await
    }

    /// Runs an ad-hoc pipeline given as JSON, e.g. a [`Pipeline`]: `POST /api/v3/pipeline`.
    /// Not retried once it reached the hub.
    pub async fn run_pipeline<P: Serialize + ?Sized>(
        &self,
        pipeline: &P,
    ) -> Result<HubResponse, HubError> {
        self.post_json(self.url("pipeline"), pipeline).await
    }

    /// Runs the command `name` with `params` as its JSON body:
    /// `POST /api/v3/command:<name>`. Not retried once it reached the hub.
    pub async fn run_command<P: Serialize + ?Sized>(
        &self,
        name: &str,
        params: &P,
    ) -> Result<HubResponse, HubError> {
        self.post_json(self.url(&command_endpoint(name)?), params)
            .await
    }

    /// Runs the command `name` with `query` as its query parameters (anything that serializes
    /// to pairs: `&[("name", "x")]`, a map, a struct): `GET /api/v3/command:<name>`. Use it for
    /// commands that only read, such as `service.job.status`: a `GET` is also retried on
    /// `502`, `503` and `504`.
    pub async fn get_command<Q: Serialize + ?Sized>(
        &self,
        name: &str,
        query: &Q,
    ) -> Result<HubResponse, HubError> {
        let url = self.url(&command_endpoint(name)?);
        let call = call(&Method::GET, &url);
        let request = self.http.get(url).query(query);
        self.send(call, request).await
    }

    /// `<base>/api/v3/<endpoint>`, keeping any path the base URL has.
    fn url(&self, endpoint: &str) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        // `new` made sure the base URL can have path segments.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["api", "v3", endpoint]);
        }
        url
    }

    async fn post_json<T: Serialize + ?Sized>(
        &self,
        url: Url,
        body: &T,
    ) -> Result<HubResponse, HubError> {
        let call = call(&Method::POST, &url);
        let body = match serde_json::to_vec(body) {
            Ok(body) => body,
            Err(source) => return Err(HubError::Encode { call, source }),
        };
        let request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        self.send(call, request).await
    }
}

/// `POST /api/v3/pipeline`: how errors and logs name a call (no query: it may hold values).
fn call(method: &Method, url: &Url) -> String {
    format!("{method} {}", url.path())
}

/// The `Authorization` header for `auth`, marked sensitive, and its scheme.
fn authorization(auth: &HubAuth) -> Result<(HeaderValue, &'static str), HubError> {
    let (value, scheme) = match auth {
        HubAuth::Basic { username, password } => {
            let credentials = format!("{username}:{}", password.expose_secret());
            (format!("Basic {}", STANDARD.encode(credentials)), "Basic")
        }
        HubAuth::Bearer(token) => (format!("Bearer {}", token.expose_secret()), "Bearer"),
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        HubError::Setup(
            "PIPEFORCE_SECRET holds characters an HTTP header cannot carry (value not shown)"
                .to_owned(),
        )
    })?;
    value.set_sensitive(true);
    Ok((value, scheme))
}

/// `command:<name>`, after checking that `name` is a plain command name: it becomes part of
/// the URL path, so `/`, `?`, `..` and the like must not get through.
fn command_endpoint(name: &str) -> Result<String, HubError> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if valid {
        Ok(format!("command:{name}"))
    } else {
        Err(HubError::InvalidCommand(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn config(url: &str, auth: Option<HubAuth>) -> HubConfig {
        HubConfig {
            url: Url::parse(url).unwrap(),
            auth,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn urls_keep_the_base_path_and_add_the_endpoint() {
        for (base, expected) in [
            ("http://hub:8080", "http://hub:8080/api/v3/pipeline"),
            ("http://hub:8080/", "http://hub:8080/api/v3/pipeline"),
            (
                "https://example.com/hub",
                "https://example.com/hub/api/v3/pipeline",
            ),
            (
                "https://example.com/hub/?x=1",
                "https://example.com/hub/api/v3/pipeline",
            ),
        ] {
            let client = HubClient::new(&config(base, None)).unwrap();
            assert_eq!(client.url("pipeline").as_str(), expected, "base {base}");
        }
        let client = HubClient::new(&config("http://hub", None)).unwrap();
        let endpoint = command_endpoint("service.job.status").unwrap();
        assert_eq!(
            client.url(&endpoint).path(),
            "/api/v3/command:service.job.status"
        );
    }

    #[test]
    fn command_names_that_could_change_the_path_are_refused() {
        for name in ["", "../pipeline", "a/b", "a?b=c", ".", "..", "a b", "a#b"] {
            assert!(
                matches!(command_endpoint(name), Err(HubError::InvalidCommand(_))),
                "{name:?} was accepted"
            );
        }
        assert!(command_endpoint("service.start").is_ok());
        assert!(command_endpoint("iam.apitoken_v2-x").is_ok());
    }

    #[test]
    fn basic_and_bearer_credentials_become_sensitive_headers() {
        let basic = HubAuth::Basic {
            username: "alice".to_owned(),
            password: SecretString::from("s3cret"),
        };
        let (value, scheme) = authorization(&basic).unwrap();
        assert_eq!(scheme, "Basic");
        assert_eq!(value, "Basic YWxpY2U6czNjcmV0");
        assert!(value.is_sensitive());

        let bearer = HubAuth::Bearer(SecretString::from("tok-123"));
        let (value, scheme) = authorization(&bearer).unwrap();
        assert_eq!(scheme, "Bearer");
        assert_eq!(value, "Bearer tok-123");
        assert!(value.is_sensitive());
    }

    #[test]
    fn debug_shows_the_scheme_but_never_the_credentials() {
        let auth = HubAuth::Bearer(SecretString::from("tok-very-secret"));
        let client = HubClient::new(&config("http://user:pw@hub:8080", Some(auth))).unwrap();

        let debug = format!("{client:?}");

        assert!(debug.contains("Bearer"), "{debug}");
        assert!(debug.contains("http://user:***@hub:8080/"), "{debug}");
        assert!(!debug.contains("tok-very-secret"), "{debug}");
        assert!(!debug.contains("pw"), "{debug}");
    }

    #[test]
    fn a_header_that_cannot_carry_the_secret_is_a_setup_error_without_the_secret() {
        let auth = HubAuth::Bearer(SecretString::from("line\nbreak"));
        let error = HubClient::new(&config("http://hub", Some(auth))).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("PIPEFORCE_SECRET"), "{message}");
        assert!(!message.contains("line"), "{message}");
    }
}
