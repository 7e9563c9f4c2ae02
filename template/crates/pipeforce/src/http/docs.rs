//! The API documents: OpenAPI 3.1 at `/openapi.json` (the framework's endpoints and every
//! service's, generated from their `#[utoipa::path]` annotations), Swagger UI at `/docs`
//! (vendored in `assets/swagger-ui`, so building needs no download), and the AsyncAPI 3.0
//! document of the message interface at `/asyncapi.json` (see `messaging::asyncapi`).

use std::sync::Arc;

use utoipa::{
    OpenApi,
    openapi::{self, InfoBuilder},
};
use warp::{
    Filter, Rejection, Reply,
    http::header::{CACHE_CONTROL, CONTENT_TYPE},
    reply::{self, Response},
};

use super::{Health, Problem};

/// The framework's own endpoints, documented like a service's.
#[derive(OpenApi)]
#[openapi(
    paths(live, ready, metrics, openapi_json, asyncapi_json),
    components(schemas(Health, Problem)),
    tags(
        (name = "health", description = "Liveness and readiness for Kubernetes"),
        (name = "operations", description = "Metrics and API documents")
    )
)]
struct FrameworkApi;

/// Liveness: answers while the process runs.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    responses((status = 200, description = "The process runs", body = Health))
)]
#[allow(dead_code)] // documents the route; the warp filter serves it
fn live() {}

/// Readiness: whether the service can do its work (it consumes from its queue).
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "Every readiness check is up", body = Health),
        (status = 503, description = "A check is down, e.g. no broker connection", body = Health)
    )
)]
#[allow(dead_code)]
fn ready() {}

/// The service's metrics, for Prometheus to scrape.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((
        status = 200,
        description = "Metrics in Prometheus' text format",
        content_type = "text/plain",
        body = String
    ))
)]
#[allow(dead_code)]
fn metrics() {}

/// This OpenAPI 3.1 document; Swagger UI shows it at `/docs`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This document", body = Object))
)]
#[allow(dead_code)]
fn openapi_json() {}

/// The AsyncAPI 3.0 document of the messages the service consumes and publishes.
#[utoipa::path(
    get,
    path = "/asyncapi.json",
    tag = "operations",
    responses((
        status = 200,
        description = "The AsyncAPI 3.0 document of the service's messages",
        body = Object
    ))
)]
#[allow(dead_code)]
fn asyncapi_json() {}

/// The service's OpenAPI document: the framework's endpoints and every service's.
pub(crate) fn openapi(
    title: &str,
    version: &str,
    services: Vec<openapi::OpenApi>,
) -> openapi::OpenApi {
    let mut document = FrameworkApi::openapi();
    for api in services {
        document.merge(api);
    }
    document.info = InfoBuilder::new()
        .title(title)
        .version(version)
        .description(Some(format!(
            "The HTTP API of the PIPEFORCE service {title}. Errors are RFC 9457 problem \
             documents; the message interface is described at /asyncapi.json."
        )))
        .build();
    document
}

/// `GET /openapi.json`, `GET /asyncapi.json` and Swagger UI at `GET /docs`.
pub(crate) fn routes(
    openapi: &openapi::OpenApi,
    asyncapi: &serde_json::Value,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let openapi: Arc<str> = serde_json::to_string(openapi)
        .expect("an OpenAPI document serializes")
        .into();
    let asyncapi: Arc<str> = asyncapi.to_string().into();

    let openapi_json = warp::path!("openapi.json")
        .and(warp::get())
        .map(move || json_document(&openapi));
    let asyncapi_json = warp::path!("asyncapi.json")
        .and(warp::get())
        .map(move || json_document(&asyncapi));
    let ui = warp::path!("docs")
        .and(warp::get())
        .map(|| asset(INDEX_HTML.as_bytes(), "text/html; charset=utf-8"));
    let bundle = warp::path!("docs" / "swagger-ui-bundle.js")
        .and(warp::get())
        .map(|| asset(SWAGGER_BUNDLE, "text/javascript; charset=utf-8"));
    let css = warp::path!("docs" / "swagger-ui.css")
        .and(warp::get())
        .map(|| asset(SWAGGER_CSS, "text/css; charset=utf-8"));
    let icon = warp::path!("docs" / "favicon-32x32.png")
        .and(warp::get())
        .map(|| asset(FAVICON, "image/png"));
    openapi_json
        .or(asyncapi_json)
        .unify()
        .or(ui)
        .unify()
        .or(bundle)
        .unify()
        .or(css)
        .unify()
        .or(icon)
        .unify()
}

/// The paths Swagger UI is served at, for naming requests by route.
pub(crate) const UI_PATHS: [&str; 4] = [
    "/docs",
    "/docs/swagger-ui-bundle.js",
    "/docs/swagger-ui.css",
    "/docs/favicon-32x32.png",
];

fn json_document(text: &Arc<str>) -> Response {
    reply::with_header(text.to_string(), CONTENT_TYPE, "application/json").into_response()
}

fn asset(bytes: &'static [u8], content_type: &'static str) -> Response {
    let reply = reply::with_header(bytes, CONTENT_TYPE, content_type);
    reply::with_header(reply, CACHE_CONTROL, "public, max-age=3600").into_response()
}

const SWAGGER_BUNDLE: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");
const FAVICON: &[u8] = include_bytes!("../../assets/swagger-ui/favicon-32x32.png");

const INDEX_HTML: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>API documentation</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>
    window.onload = () => {
      window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui" });
    };
  </script>
</body>
</html>
"##;
