//! The HTTP server's routes: the framework's (health, metrics, API documents) and the
//! services', with errors as problem documents and every request instrumented.
//!
//! - `GET /health/live`: 200 while the process runs.
//! - `GET /health/ready`: 200 when every [`Readiness`] condition holds, else 503; the body
//!   lists each condition.
//! - `GET /metrics`: the metrics in Prometheus' text format.
//! - `GET /openapi.json`, `GET /docs`, `GET /asyncapi.json`: see [`docs`].
//!
//! Errors are RFC 9457 problem documents ([`Problem`]), so clients get JSON for a wrong path,
//! method, content type or body just as for a failing endpoint. Every request except a
//! successful `GET` of the health and metrics endpoints (what probes and scrapers send, every
//! few seconds) is a span named `<METHOD> <route>` that continues the caller's trace
//! (`traceparent`), and is counted and timed by method, route and status. Both labels are bounded whatever clients send: a path
//! that matches no route is `unmatched`, a method outside the standard ones `_OTHER`.
//!
//! # Adding endpoints
//! A service builds a warp filter per endpoint, documents it with `#[utoipa::path]`, and
//! registers both with [`Services::add_routes`](crate::Services::add_routes). Take JSON bodies
//! with [`json_body`]; return `Result<impl Reply, Problem>`.

pub mod docs;
mod problem;
mod server;

use std::{collections::BTreeMap, convert::Infallible, sync::Arc};

use metrics::{counter, histogram};
use opentelemetry_http::HeaderExtractor;
use serde::Serialize;
use tracing::{Span, debug, field::Empty, info_span};
use utoipa::ToSchema;
use warp::{
    Filter, Rejection, Reply,
    filters::BoxedFilter,
    http::{Method, StatusCode},
    reply::{self, Response},
};

pub use problem::{
    DEFAULT_BODY_LIMIT, JsonBodyProblems, Problem, PublishProblems, json_body, json_body_with_limit,
};
pub use server::HEADER_READ_TIMEOUT;
pub(crate) use server::serve;

use crate::{
    health::Readiness,
    telemetry::{self, Metrics, metric},
};

/// A service's endpoints: one boxed warp filter answering with a response.
pub type Routes = BoxedFilter<(Response,)>;

/// Everything the HTTP server serves.
pub(crate) struct Endpoints {
    pub(crate) readiness: Readiness,
    pub(crate) metrics: Metrics,
    pub(crate) services: Vec<Routes>,
    pub(crate) openapi: utoipa::openapi::OpenApi,
    pub(crate) asyncapi: serde_json::Value,
}

/// The routes of the service, with every rejection answered as a problem document and every
/// request traced and measured.
pub(crate) fn routes(
    endpoints: Endpoints,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let mut documented: Vec<(String, Vec<String>)> = endpoints
        .openapi
        .paths
        .paths
        .iter()
        .map(|(path, item)| (path.clone(), methods(item)))
        .collect();
    documented.extend(
        docs::UI_PATHS
            .iter()
            .map(|path| ((*path).to_owned(), vec!["GET".to_owned()])),
    );
    let templates = Arc::new(RouteTemplates::new(documented));

    // Kubernetes probes and Prometheus scrapes hit these every few seconds on every pod: they
    // are answered first and bare, without a span, trace context, metrics or log line, which
    // would cost more than the answer and tell nothing.
    let probes = health(endpoints.readiness)
        .or(metrics(endpoints.metrics))
        .unify();

    let mut routes: Routes = docs::routes(&endpoints.openapi, &endpoints.asyncapi).boxed();
    for service_routes in endpoints.services {
        routes = routes.or(service_routes).unify().boxed();
    }
    let routes = routes
        .or(method_not_allowed(Arc::clone(&templates)))
        .unify()
        .recover(problem::recover)
        .unify();
    probes.or(instrument(routes, templates)).unify()
}

/// The HTTP methods a documented path item has operations for.
fn methods(item: &utoipa::openapi::PathItem) -> Vec<String> {
    [
        ("GET", item.get.is_some()),
        ("PUT", item.put.is_some()),
        ("POST", item.post.is_some()),
        ("DELETE", item.delete.is_some()),
        ("OPTIONS", item.options.is_some()),
        ("HEAD", item.head.is_some()),
        ("PATCH", item.patch.is_some()),
        ("TRACE", item.trace.is_some()),
    ]
    .into_iter()
    .filter(|(_, present)| *present)
    .map(|(method, _)| method.to_owned())
    .collect()
}

/// Answers a known path with a method it does not serve: 405 with the `Allow` header RFC 9110
/// asks for. It runs after the real routes, so it only sees what they turned down.
fn method_not_allowed(
    templates: Arc<RouteTemplates>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::path::full().and(warp::method()).and_then(
        move |path: warp::path::FullPath, method: warp::http::Method| {
            let allowed = templates
                .allowed(path.as_str())
                .map(|methods| methods.join(", "));
            async move {
                match allowed {
                    Some(allow) if !allow.split(", ").any(|m| m == method.as_str()) => {
                        let problem = Problem::new(
                            StatusCode::METHOD_NOT_ALLOWED,
                            format!("{method} is not allowed here; use {allow}"),
                        );
                        Ok(
                            reply::with_header(problem, warp::http::header::ALLOW, allow)
                                .into_response(),
                        )
                    }
                    _ => Err(warp::reject::not_found()),
                }
            }
        },
    )
}

/// Wraps `routes` in a span per request and records the request metrics when it is done.
fn instrument<F>(
    routes: F,
    templates: Arc<RouteTemplates>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
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

/// Methods outside [`KNOWN_METHODS`] are all labelled this way, as OpenTelemetry's semantic
/// conventions say for `http.request.method`: the client picks the method, and each new value
/// would be a new metric series.
const OTHER_METHOD: &str = "_OTHER";

/// The methods of RFC 9110 and PATCH (RFC 5789): the ones labelled by name.
const KNOWN_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// The method as metrics and spans name it: a known one as is, any other as [`OTHER_METHOD`].
fn method_label(method: &Method) -> &str {
    if KNOWN_METHODS.contains(method) {
        method.as_str()
    } else {
        OTHER_METHOD
    }
}

fn request_span(templates: &RouteTemplates, info: &warp::trace::Info<'_>) -> Span {
    let method = method_label(info.method());
    let route = templates.find(info.path());
    // The semantic conventions name a span of an unknown method `HTTP <route>`.
    let name_method = if method == OTHER_METHOD {
        "HTTP"
    } else {
        method
    };
    // The fields are the trace's attributes; log lines show method, route and trace id of
    // them (see `telemetry`).
    let span = info_span!(
        target: "pipeforce::http",
        "request",
        otel.name = %format_args!("{name_method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.request.method_original = Empty,
        http.route = route,
        http.response.status_code = Empty,
        url.path = info.path(),
        trace_id = Empty,
    );
    if method == OTHER_METHOD {
        span.record("http.request.method_original", info.method().as_str());
    }
    telemetry::continue_trace(&span, &HeaderExtractor(info.request_headers()));
    telemetry::record_trace_id(&span);
    span
}

/// Runs inside the request's span when the response is ready.
fn record_request(templates: &RouteTemplates, info: &warp::log::Info<'_>) {
    let route = templates.find(info.path());
    let status = info.status().as_u16();
    let method = method_label(info.method()).to_owned();
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

/// The route templates of the service with their methods: to name spans and label metrics by
/// route rather than by path (which would give a series per id), and to answer 405s.
#[derive(Debug, Default)]
pub struct RouteTemplates {
    templates: Vec<(String, Vec<String>)>,
}

impl RouteTemplates {
    /// Templates like `/greetings/{name}` with their methods: a `{...}` segment matches any
    /// one segment.
    pub fn new(templates: Vec<(String, Vec<String>)>) -> Self {
        Self { templates }
    }

    fn matching(&self, path: &str) -> Option<&(String, Vec<String>)> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        self.templates.iter().find(|(template, _)| {
            let parts: Vec<&str> = template.trim_matches('/').split('/').collect();
            parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(part, segment)| {
                    part == segment || (part.starts_with('{') && part.ends_with('}'))
                })
        })
    }

    /// The first template matching `path`, or `unmatched`.
    pub fn find(&self, path: &str) -> &str {
        self.matching(path)
            .map_or("unmatched", |(template, _)| template.as_str())
    }

    /// The methods served at `path`, if it is a known route.
    pub fn allowed(&self, path: &str) -> Option<&[String]> {
        self.matching(path).map(|(_, methods)| methods.as_slice())
    }
}

fn metrics(
    metrics: Metrics,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::path!("metrics").and(warp::get()).map(move || {
        let text = metrics.render();
        reply::with_header(
            text,
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .into_response()
    })
}

/// The body of both health endpoints.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({ "status": "UP", "checks": { "messaging": "UP" } }))]
pub struct Health {
    /// `UP` or `DOWN`.
    pub status: &'static str,
    /// Each readiness check by name, `UP` or `DOWN` (empty for liveness).
    pub checks: BTreeMap<&'static str, &'static str>,
}

fn up_or_down(up: bool) -> &'static str {
    if up { "UP" } else { "DOWN" }
}

fn health(
    readiness: Readiness,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let live = warp::path!("health" / "live").and(warp::get()).map(|| {
        let health = Health {
            status: "UP",
            checks: BTreeMap::new(),
        };
        reply::json(&health).into_response()
    });

    let ready = warp::path!("health" / "ready")
        .and(warp::get())
        .map(move || {
            let (ready, conditions) = readiness.report();
            let health = Health {
                status: up_or_down(ready),
                checks: conditions
                    .into_iter()
                    .map(|(name, up)| (name, up_or_down(up)))
                    .collect(),
            };
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply::with_status(reply::json(&health), code).into_response()
        });

    live.or(ready).unify()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_named_by_their_route_template() {
        let get = || vec!["GET".to_owned()];
        let templates = RouteTemplates::new(vec![
            ("/health/live".to_owned(), get()),
            ("/greetings/{name}".to_owned(), get()),
            ("/greetings".to_owned(), vec!["POST".to_owned()]),
        ]);

        assert_eq!(templates.find("/health/live"), "/health/live");
        assert_eq!(templates.find("/greetings/ada"), "/greetings/{name}");
        assert_eq!(templates.find("/greetings"), "/greetings");
        assert_eq!(templates.find("/greetings/ada/x"), "unmatched");
        assert_eq!(templates.find("/"), "unmatched");
        assert_eq!(
            templates.allowed("/greetings"),
            Some(&["POST".to_owned()][..])
        );
        assert_eq!(templates.allowed("/nowhere"), None);
    }

    #[test]
    fn methods_outside_the_standard_set_share_one_label() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let made_up = Method::from_bytes(b"MADEUP").unwrap();
        assert_eq!(method_label(&made_up), "_OTHER");
    }
}
