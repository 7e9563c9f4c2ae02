//! The HTTP routes every service has, the JSON form of HTTP errors, and the instrumentation
//! of every request.
//!
//! - `GET /health/live`: 200 while the process runs.
//! - `GET /health/ready`: 200 when every [`Readiness`] condition holds, else 503; the body
//!   lists each condition.
//! - `GET /metrics`: the metrics in Prometheus' text format.
//!
//! Errors are RFC 9457 problem documents (`application/problem+json`), so clients get JSON
//! for a wrong path or method just as for a failing endpoint. Every request is a span named
//! `<METHOD> <route>` that continues the caller's trace (`traceparent`), and is counted and
//! timed by route and status.

use std::{convert::Infallible, sync::Arc};

use metrics::{counter, histogram};
use serde::Serialize;
use serde_json::json;
use tracing::{Span, debug, field::Empty, info_span};
use warp::{
    Filter, Rejection, Reply,
    http::StatusCode,
    reply::{self, Response},
};

use crate::{
    health::Readiness,
    telemetry::{self, metric},
};

/// The routes of the service: health checks and metrics, with every rejection answered as a
/// problem document, every request traced and measured.
pub fn routes(
    readiness: Readiness,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let templates = Arc::new(RouteTemplates::new([
        "/health/live",
        "/health/ready",
        "/metrics",
    ]));
    let routes = health(readiness)
        .or(metrics())
        .unify()
        .recover(recover)
        .unify();
    instrument(routes, templates)
}

/// Wraps `routes` in a span per request and records the request metrics when it is done.
fn instrument<F>(
    routes: F,
    templates: Arc<RouteTemplates>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static
where
    F: Filter<Extract = (Box<dyn Reply>,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let span_templates = Arc::clone(&templates);
    routes
        .with(warp::log::custom(move |info| {
            record_request(&templates, &info)
        }))
        .with(warp::trace(move |info| {
            request_span(&span_templates, &info)
        }))
        .map(Reply::into_response)
}

fn request_span(templates: &RouteTemplates, info: &warp::trace::Info<'_>) -> Span {
    let method = info.method();
    let route = templates.find(info.path());
    // Log lines show method, route and trace id; the semantic-convention attributes go to
    // the trace only.
    let span = info_span!(
        target: "pipeforce::http",
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route,
        http.response.status_code = Empty,
        url.path = info.path(),
        method = %method,
        route,
        trace_id = Empty,
    );
    telemetry::continue_trace(&span, &telemetry::http::Headers(info.request_headers()));
    telemetry::record_trace_id(&span);
    span
}

/// Runs inside the request's span when the response is ready.
fn record_request(templates: &RouteTemplates, info: &warp::log::Info<'_>) {
    let route = templates.find(info.path());
    let status = info.status().as_u16();
    let method = info.method().to_string();
    counter!(
        metric::HTTP_REQUESTS,
        "method" => method.clone(),
        "route" => route.to_owned(),
        "status" => status.to_string()
    )
    .increment(1);
    histogram!(metric::HTTP_REQUEST_DURATION, "method" => method, "route" => route.to_owned())
        .record(info.elapsed().as_secs_f64());
    let span = Span::current();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    debug!(status, elapsed = ?info.elapsed(), "served");
}

/// The route templates of the service, to name spans and label metrics by route rather than
/// by path (which would give a series per id).
#[derive(Debug, Default)]
pub struct RouteTemplates {
    templates: Vec<String>,
}

impl RouteTemplates {
    /// Templates like `/greetings/{name}`: a `{...}` segment matches any one segment.
    pub fn new<S: Into<String>>(templates: impl IntoIterator<Item = S>) -> Self {
        Self {
            templates: templates.into_iter().map(Into::into).collect(),
        }
    }

    /// The first template matching `path`, or `unmatched`.
    pub fn find(&self, path: &str) -> &str {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        self.templates
            .iter()
            .find(|template| {
                let parts: Vec<&str> = template.trim_matches('/').split('/').collect();
                parts.len() == segments.len()
                    && parts.iter().zip(&segments).all(|(part, segment)| {
                        part == segment || (part.starts_with('{') && part.ends_with('}'))
                    })
            })
            .map_or("unmatched", String::as_str)
    }
}

fn metrics()
-> impl Filter<Extract = (Box<dyn Reply>,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::path!("metrics").and(warp::get()).map(|| {
        let text = telemetry::prometheus().render();
        Box::new(reply::with_header(
            text,
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8",
        )) as Box<dyn Reply>
    })
}

fn health(
    readiness: Readiness,
) -> impl Filter<Extract = (Box<dyn Reply>,), Error = Rejection> + Clone + Send + Sync + 'static {
    let live = warp::path!("health" / "live")
        .and(warp::get())
        .map(|| Box::new(reply::json(&json!({ "status": "UP" }))) as Box<dyn Reply>);

    let ready = warp::path!("health" / "ready")
        .and(warp::get())
        .map(move || {
            let (ready, conditions) = readiness.report();
            let (status, code) = if ready {
                ("UP", StatusCode::OK)
            } else {
                ("DOWN", StatusCode::SERVICE_UNAVAILABLE)
            };
            let conditions = conditions
                .into_iter()
                .map(|(name, ready)| (name, if ready { "UP" } else { "DOWN" }))
                .collect::<std::collections::BTreeMap<_, _>>();
            let body = reply::json(&json!({ "status": status, "checks": conditions }));
            Box::new(reply::with_status(body, code)) as Box<dyn Reply>
        });

    live.or(ready).unify()
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// `about:blank`: the status code says it all.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The status code's reason phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What exactly went wrong with this request.
    pub detail: String,
}

impl Problem {
    /// A problem with the given status and detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }
}

impl Reply for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = reply::json(&self);
        let body = reply::with_header(body, "content-type", "application/problem+json");
        reply::with_status(body, status).into_response()
    }
}

/// Turns warp's rejections into problem documents with the matching status.
async fn recover(rejection: Rejection) -> Result<Box<dyn Reply>, Infallible> {
    use warp::reject::{
        InvalidHeader, InvalidQuery, LengthRequired, MethodNotAllowed, MissingHeader,
        PayloadTooLarge, UnsupportedMediaType,
    };

    let problem = if rejection.is_not_found() {
        Problem::new(StatusCode::NOT_FOUND, "no resource at this path")
    } else if let Some(error) = rejection.find::<warp::body::BodyDeserializeError>() {
        Problem::new(StatusCode::BAD_REQUEST, error.to_string())
    } else if let Some(error) = rejection.find::<InvalidQuery>() {
        Problem::new(StatusCode::BAD_REQUEST, error.to_string())
    } else if let Some(error) = rejection.find::<InvalidHeader>() {
        Problem::new(StatusCode::BAD_REQUEST, error.to_string())
    } else if let Some(error) = rejection.find::<MissingHeader>() {
        Problem::new(StatusCode::BAD_REQUEST, error.to_string())
    } else if let Some(error) = rejection.find::<LengthRequired>() {
        Problem::new(StatusCode::LENGTH_REQUIRED, error.to_string())
    } else if let Some(error) = rejection.find::<PayloadTooLarge>() {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, error.to_string())
    } else if let Some(error) = rejection.find::<UnsupportedMediaType>() {
        Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, error.to_string())
    } else if let Some(error) = rejection.find::<MethodNotAllowed>() {
        Problem::new(StatusCode::METHOD_NOT_ALLOWED, error.to_string())
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    };
    Ok(Box::new(problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_named_by_their_route_template() {
        let templates = RouteTemplates::new(["/health/live", "/greetings/{name}", "/greetings"]);

        assert_eq!(templates.find("/health/live"), "/health/live");
        assert_eq!(templates.find("/greetings/ada"), "/greetings/{name}");
        assert_eq!(templates.find("/greetings"), "/greetings");
        assert_eq!(templates.find("/greetings/ada/x"), "unmatched");
        assert_eq!(templates.find("/"), "unmatched");
    }
}
