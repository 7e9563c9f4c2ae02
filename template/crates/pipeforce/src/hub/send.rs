//! Sending a call: its span, the trace context, retries where they are safe, and reading
//! the answer.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::{
    Method, Request, StatusCode,
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE},
};
use tracing::{Instrument, Span, debug, field::Empty, info_span, warn};

use super::{HubClient, HubError, HubResponse, MAX_ERROR_BODY, MAX_RESPONSE_BODY, MAX_RETRY_DELAY};
use crate::config::masked_url;

impl HubClient {
    /// Sends a request, retrying where that is safe, and reads the answer. `call` names it in
    /// errors and logs (`POST /api/v3/pipeline`).
    ///
    /// Every hub call goes through here, in a client span (`otel.kind = client`) whose trace
    /// context goes out in the request's `traceparent` header (with the `service` feature), so
    /// the hub's side of the call joins the caller's trace.
    pub(super) async fn send(
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
        let request = self.prepare(&call, request)?;
        // A GET only reads: repeating it after a gateway error cannot do anything twice.
        let idempotent = request.method() == Method::GET;
        let mut delays = self.retry_delays();
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let result = self.http.execute(try_clone(&request, &call)?).await;
            // A connection that was never made is safe to retry, whatever the method.
            let retryable = match &result {
                Ok(response) => idempotent && is_gateway_error(response.status()),
                Err(error) => error.is_connect(),
            };
            if retryable && let Some(delay) = delays.next() {
                let reason = match &result {
                    Ok(response) => format!("answered {}", response.status()),
                    Err(error) => cause_chain(error),
                };
                warn!(
                    %call,
                    attempt = attempts,
                    retries = self.retries,
                    ?delay,
                    reason,
                    "hub call failed; retrying"
                );
                tokio::time::sleep(delay).await;
                continue;
            }
            return match result {
                Ok(response) => self.answer(call, response).await,
                Err(error) if error.is_connect() => Err(HubError::Connect {
                    call,
                    base: masked_url(&self.base),
                    attempts,
                    cause: cause_chain(&error),
                }),
                Err(error) => Err(self.transport_error(call, &error)),
            };
        }
    }

    /// The request with the headers every call carries: what it accepts, the credentials
    /// and the trace context.
    fn prepare(&self, call: &str, request: reqwest::RequestBuilder) -> Result<Request, HubError> {
        let mut request = request.header(ACCEPT, "application/json, text/plain;q=0.9, */*;q=0.8");
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let mut request = request.build().map_err(|error| HubError::Transport {
            call: call.to_owned(),
            cause: format!("cannot build the request: {}", cause_chain(&error)),
        })?;
        inject_trace_context(&mut request);
        Ok(request)
    }

    /// The waits before each retry: the retry delay, doubled each time up to
    /// [`MAX_RETRY_DELAY`], plus up to as much again at random so that many clients of a
    /// recovering hub do not retry in lock-step.
    fn retry_delays(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.retry_delay)
            .with_max_delay(MAX_RETRY_DELAY)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.retries as usize)
            .build()
    }

    /// The hub's answer: a [`HubResponse`] for 2xx, else [`HubError::Status`] with the body.
    async fn answer(
        &self,
        call: String,
        response: reqwest::Response,
    ) -> Result<HubResponse, HubError> {
        let status = response.status();
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
        Ok(HubResponse {
            call,
            status,
            content_type,
            body,
        })
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

/// A copy of `request` for one attempt. Bodies here are always bytes, which can be copied.
fn try_clone(request: &Request, call: &str) -> Result<Request, HubError> {
    request.try_clone().ok_or_else(|| HubError::Transport {
        call: call.to_owned(),
        cause: "the request body cannot be sent twice".to_owned(),
    })
}

/// The causes of a reqwest error, without the URL reqwest puts in its own message (it may hold
/// query parameters) and without repeating a cause.
pub(super) fn cause_chain(error: &reqwest::Error) -> String {
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

/// `502`, `503` and `504`: a gateway that could not reach the hub, or gave up waiting.
fn is_gateway_error(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
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
    use super::*;

    #[test]
    fn long_error_bodies_are_shortened_and_empty_ones_named() {
        assert_eq!(shortened("  "), "(empty body)");
        assert_eq!(shortened("not found"), "not found");
        let long = "é".repeat(MAX_ERROR_BODY + 10);
        let short = shortened(&long);
        assert!(short.starts_with(&"é".repeat(MAX_ERROR_BODY)));
        assert!(short.ends_with("… (20 more bytes)"), "{short}");
    }
}
