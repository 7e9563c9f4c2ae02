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
//! [`DEFAULT_RETRY_DELAY`], doubled each time, at most [`DEFAULT_RETRIES`] times; both can be
//! changed with [`HubClient::with_retries`] and [`HubClient::with_retry_delay`].
//!
//! The credentials never leave the `Authorization` header: the header value is marked
//! sensitive, `Debug` shows only the scheme (`Basic` or `Bearer`), and error messages and logs
//! name the method and path of the call, never the header, the query or the password of the
//! URL (shown as `***`).

use std::{borrow::Cow, fmt, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use reqwest::{
    Method, Request, StatusCode,
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue},
    redirect,
};
use secrecy::ExposeSecret;
use serde::{Serialize, Serializer, de::DeserializeOwned, ser::Error as _};
use tracing::{Instrument, Span, debug, field::Empty, info_span, warn};
use url::Url;

use crate::config::{HubAuth, HubConfig, masked_url};

/// Re-exported so that a service can build command parameters (`json!({...})`) and read
/// untyped answers ([`Value`]) without a dependency on `serde_json` of its own.
pub use serde_json::{Value, json};

/// How often a call that may be repeated is retried by default.
pub const DEFAULT_RETRIES: u32 = 3;

/// The wait before the first retry by default; it doubles for each further one.
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

/// Why a hub call failed. Messages name the call (`POST /api/v3/command:service.start`), never
/// the credentials.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The client could not be built from the configuration.
    #[error("cannot set up the hub client: {0}")]
    Setup(String),

    /// A command name that cannot be part of `/api/v3/command:<name>`.
    #[error(
        "{0:?} is not a hub command name: expected letters, digits, '.', '-' and '_', \
         e.g. service.start"
    )]
    InvalidCommand(String),

    /// The parameters or the pipeline could not be encoded.
    #[error("cannot encode the request body of {call} as JSON: {source}")]
    Encode {
        /// The call, e.g. `POST /api/v3/pipeline`.
        call: String,
        /// What serde_json said.
        source: serde_json::Error,
    },

    /// The hub answered with a status other than 2xx.
    #[error("the hub answered {call} with {status}: {body}")]
    Status {
        /// The call, e.g. `POST /api/v3/command:service.start`.
        call: String,
        /// The HTTP status.
        status: StatusCode,
        /// The body of the answer, as text, shortened to about 2000 characters.
        body: String,
    },

    /// No answer came within the configured timeout (`PIPEFORCE_HUB_TIMEOUT_SECS`). The hub
    /// may still have run the call.
    #[error("the hub did not answer {call} within {timeout:?} (PIPEFORCE_HUB_TIMEOUT_SECS)")]
    Timeout {
        /// The call.
        call: String,
        /// The configured timeout.
        timeout: Duration,
    },

    /// No connection to the hub could be made, on any attempt: the request never reached it.
    #[error("cannot connect to the hub at {base} for {call} ({attempts} attempts): {cause}")]
    Connect {
        /// The call.
        call: String,
        /// The hub's base URL, its password masked.
        base: String,
        /// How many times it was tried.
        attempts: u32,
        /// What the network stack said, e.g. `Connection refused (os error 111)`.
        cause: String,
    },

    /// The call failed on the way, after the connection was made (e.g. the connection was
    /// reset). The hub may have run it.
    #[error("{call} to the hub failed: {cause}")]
    Transport {
        /// The call.
        call: String,
        /// What went wrong.
        cause: String,
    },

    /// The answer is larger than [`MAX_RESPONSE_BODY`]; reading stopped there.
    #[error(
        "the hub's answer to {call} is larger than {} MiB, the most the client reads",
        MAX_RESPONSE_BODY >> 20
    )]
    TooLarge {
        /// The call.
        call: String,
    },

    /// The answer is not the JSON the caller expected.
    #[error("the hub's answer to {call} is not {expected}: {source}")]
    Decode {
        /// The call.
        call: String,
        /// What was expected, e.g. `JSON for orders::JobStatus`.
        expected: String,
        /// What serde_json said.
        source: serde_json::Error,
    },
}

impl HubError {
    /// The HTTP status of a [`HubError::Status`].
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A successful (2xx) answer of the hub.
#[derive(Clone)]
pub struct HubResponse {
    call: String,
    status: StatusCode,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl fmt::Debug for HubResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubResponse")
            .field("call", &self.call)
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("body", &self.text())
            .finish()
    }
}

impl HubResponse {
    /// The HTTP status (2xx).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `Content-Type` of the answer, e.g. `application/json`, if it had one.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// The body as it came.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text; bytes that are not UTF-8 become `�`.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body decoded from JSON into `R` ([`Value`] takes any JSON).
    pub fn json<R: DeserializeOwned>(&self) -> Result<R, HubError> {
        serde_json::from_slice(&self.body).map_err(|source| HubError::Decode {
            call: self.call.clone(),
            expected: format!("JSON for {}", std::any::type_name::<R>()),
            source,
        })
    }
}

/// A pipeline in PIPEFORCE's JSON form, `{"pipeline": [{"<command>": {params}}, ...]}`, built
/// one command at a time:
///
/// ```
/// use pipeforce::hub::{Pipeline, json};
///
/// let pipeline = Pipeline::new()
///     .command("service.start", json!({ "name": "orders", "image": "orders:1.0" }))
///     .command("log", json!({ "message": "started" }));
/// assert_eq!(pipeline.len(), 2);
/// ```
///
/// Parameters may be any `Serialize` value. One that cannot be encoded as JSON makes the
/// pipeline fail to encode when it is run, with [`HubError::Encode`].
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    steps: Vec<(String, Value)>,
    encode_error: Option<String>,
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the command `name` with `params` (use `json!({})` for none).
    pub fn command(mut self, name: &str, params: impl Serialize) -> Self {
        match serde_json::to_value(params) {
            Ok(params) => self.steps.push((name.to_owned(), params)),
            Err(error) => {
                self.encode_error
                    .get_or_insert_with(|| format!("parameters of {name}: {error}"));
            }
        }
        self
    }

    /// How many commands the pipeline has.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether the pipeline has no command.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl Serialize for Pipeline {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};

        /// One step: a map with the command's name as its only key.
        struct Step<'a>(&'a str, &'a Value);
        impl Serialize for Step<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(self.0, self.1)?;
                map.end()
            }
        }
        struct Steps<'a>(&'a [(String, Value)]);
        impl Serialize for Steps<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
                for (name, params) in self.0 {
                    seq.serialize_element(&Step(name, params))?;
                }
                seq.end()
            }
        }

        if let Some(error) = &self.encode_error {
            return Err(S::Error::custom(error));
        }
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("pipeline", &Steps(&self.steps))?;
        map.end()
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

    /// Sets the wait before the first retry; it doubles for each further one (at most 10 s).
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

    /// Sends a request, retrying where that is safe, and reads the answer. `call` names it in
    /// errors and logs (`POST /api/v3/pipeline`).
    ///
    /// Every hub call goes through here, in a client span (`otel.kind = client`) whose trace
    /// context goes out in the request's `traceparent` header (with the `service` feature), so
    /// the hub's side of the call joins the caller's trace.
    async fn send(
        &self,
        call: String,
        request: reqwest::RequestBuilder,
    ) -> Result<HubResponse, HubError> {
        let method = call.split(' ').next().unwrap_or("HTTP").to_owned();
        let span = info_span!(
            target: "pipeforce::hub",
            "hub call",
            otel.name = method.as_str(),
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = method.as_str(),
            server.address = self.base.host_str().unwrap_or_default(),
            server.port = self.base.port_or_known_default(),
            url.path = call.split(' ').nth(1).unwrap_or_default(),
            http.response.status_code = Empty,
            call = call.as_str(),
        );
        async move {
            let result = self.send_in_span(call, request).await;
            let span = Span::current();
            match &result {
                Ok(response) => {
                    span.record("http.response.status_code", response.status.as_u16());
                }
                Err(error) => {
                    if let Some(status) = error.status() {
                        span.record("http.response.status_code", status.as_u16());
                    }
                    span.record("otel.status_code", "ERROR");
                }
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn send_in_span(
        &self,
        call: String,
        request: reqwest::RequestBuilder,
    ) -> Result<HubResponse, HubError> {
        let mut request = request.header(ACCEPT, "application/json, text/plain;q=0.9, */*;q=0.8");
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let mut request = match request.build() {
            Ok(request) => request,
            Err(error) => {
                return Err(HubError::Transport {
                    call,
                    cause: format!("cannot build the request: {}", cause_chain(&error)),
                });
            }
        };
        inject_trace_context(&mut request);
        // A GET only reads: repeating it after a gateway error cannot do anything twice.
        let idempotent = request.method() == Method::GET;

        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let retry_left = attempt <= self.retries;
            let result = match try_clone(&request, &call) {
                Ok(request) => self.http.execute(request).await,
                Err(error) => return Err(error),
            };
            let response = match result {
                Ok(response) => response,
                Err(error) if error.is_connect() && retry_left => {
                    self.wait_before_retry(&call, attempt, &cause_chain(&error))
                        .await;
                    continue;
                }
                Err(error) if error.is_connect() => {
                    return Err(HubError::Connect {
                        call,
                        base: masked_url(&self.base),
                        attempts: attempt,
                        cause: cause_chain(&error),
                    });
                }
                Err(error) => return Err(self.transport_error(call, &error)),
            };

            let status = response.status();
            let gateway_error = matches!(
                status,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            );
            if gateway_error && idempotent && retry_left {
                self.wait_before_retry(&call, attempt, &format!("answered {status}"))
                    .await;
                continue;
            }
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let body = self.read_body(&call, response).await?;
            debug!(%call, %status, bytes = body.len(), "hub answered");
            if !status.is_success() {
                return Err(HubError::Status {
                    call,
                    status,
                    body: shortened(&String::from_utf8_lossy(&body)),
                });
            }
            return Ok(HubResponse {
                call,
                status,
                content_type,
                body,
            });
        }
    }

    /// Reads the body of `response` chunk by chunk, refusing it as soon as it grows past
    /// [`MAX_RESPONSE_BODY`], so a huge answer is never held whole.
    async fn read_body(
        &self,
        call: &str,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, HubError> {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| self.transport_error(call.to_owned(), &error))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BODY {
                return Err(HubError::TooLarge {
                    call: call.to_owned(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Logs the retry and waits `retry_delay * 2^(attempt - 1)`, at most [`MAX_RETRY_DELAY`].
    async fn wait_before_retry(&self, call: &str, attempt: u32, reason: &str) {
        let factor = 2u32.saturating_pow(attempt - 1);
        let delay = self.retry_delay.saturating_mul(factor).min(MAX_RETRY_DELAY);
        warn!(
            %call,
            attempt,
            retries = self.retries,
            ?delay,
            reason,
            "hub call failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }

    fn transport_error(&self, call: String, error: &reqwest::Error) -> HubError {
        if error.is_timeout() {
            HubError::Timeout {
                call,
                timeout: self.timeout,
            }
        } else {
            HubError::Transport {
                call,
                cause: cause_chain(error),
            }
        }
    }
}

/// Puts the current trace context into the request's `traceparent` header, so the hub's side
/// of the call joins the caller's trace. Without the `service` feature there is no
/// OpenTelemetry, so there is no context to carry.
fn inject_trace_context(request: &mut Request) {
    #[cfg(feature = "service")]
    crate::telemetry::inject_into_http_headers(request.headers_mut());
    #[cfg(not(feature = "service"))]
    let _ = request;
}

/// `POST /api/v3/pipeline`: how errors and logs name a call (no query: it may hold values).
fn call(method: &Method, url: &Url) -> String {
    format!("{method} {}", url.path())
}

/// A copy of `request` for one attempt. Bodies here are always bytes, which can be copied.
fn try_clone(request: &Request, call: &str) -> Result<Request, HubError> {
    request.try_clone().ok_or_else(|| HubError::Transport {
        call: call.to_owned(),
        cause: "the request body cannot be sent twice".to_owned(),
    })
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

/// The causes of a reqwest error, without the URL reqwest puts in its own message (it may hold
/// query parameters) and without repeating a cause.
fn cause_chain(error: &reqwest::Error) -> String {
    let mut causes: Vec<String> = Vec::new();
    let mut current = std::error::Error::source(error);
    while let Some(cause) = current {
        let text = cause.to_string();
        if !causes.iter().any(|seen| seen.contains(&text)) {
            causes.push(text);
        }
        current = cause.source();
    }
    if causes.is_empty() {
        // No deeper cause: reqwest's own message, for which the URL is not needed.
        let mut own = error.to_string();
        if let Some(url) = error.url()
            && let Some(start) = own.find(&format!(" for url ({url})"))
        {
            own.truncate(start);
        }
        causes.push(own);
    }
    causes.join(": ")
}

/// `body`, cut after [`MAX_ERROR_BODY`] characters; `(empty body)` when there is nothing.
fn shortened(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return "(empty body)".to_owned();
    }
    match body.char_indices().nth(MAX_ERROR_BODY) {
        None => body.to_owned(),
        Some((cut, _)) => format!("{}… ({} more bytes)", &body[..cut], body.len() - cut),
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

    #[test]
    fn a_pipeline_serializes_to_the_hubs_json_form() {
        let pipeline = Pipeline::new()
            .command("service.start", json!({ "name": "orders" }))
            .command("log", json!({ "message": "done" }));

        let encoded = serde_json::to_value(&pipeline).unwrap();

        assert_eq!(
            encoded,
            json!({ "pipeline": [
                { "service.start": { "name": "orders" } },
                { "log": { "message": "done" } },
            ]})
        );
    }

    #[test]
    fn a_pipeline_with_unencodable_params_fails_to_encode_naming_the_command() {
        let mut params = std::collections::HashMap::new();
        params.insert(vec![1u8], "keys must be strings");

        let pipeline = Pipeline::new().command("data.put", params);
        let error = serde_json::to_string(&pipeline).unwrap_err();

        assert!(error.to_string().contains("data.put"), "{error}");
    }

    #[test]
    fn long_error_bodies_are_shortened_and_empty_ones_named() {
        assert_eq!(shortened("  "), "(empty body)");
        assert_eq!(shortened("not found"), "not found");
        let long = "é".repeat(MAX_ERROR_BODY + 10);
        let short = shortened(&long);
        assert!(short.starts_with(&"é".repeat(MAX_ERROR_BODY)));
        assert!(short.ends_with("… (20 more bytes)"), "{short}");
    }

    #[test]
    fn json_answers_decode_and_a_wrong_shape_names_the_expected_type() {
        let response = HubResponse {
            call: "POST /api/v3/command:x".to_owned(),
            status: StatusCode::OK,
            content_type: Some("application/json".to_owned()),
            body: br#"{"id": 7}"#.to_vec(),
        };
        assert_eq!(response.json::<Value>().unwrap(), json!({ "id": 7 }));
        assert_eq!(response.text(), r#"{"id": 7}"#);

        let error = response.json::<Vec<u32>>().unwrap_err().to_string();
        assert!(error.contains("POST /api/v3/command:x"), "{error}");
        assert!(error.contains("JSON for alloc::vec::Vec<u32>"), "{error}");
    }
}
