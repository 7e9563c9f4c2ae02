//! The HTTP routes every service has, and the JSON form of HTTP errors.
//!
//! - `GET /health/live`: 200 while the process runs.
//! - `GET /health/ready`: 200 when every [`Readiness`] condition holds, else 503; the body
//!   lists each condition.
//!
//! Errors are RFC 9457 problem documents (`application/problem+json`), so clients get JSON
//! for a wrong path or method just as for a failing endpoint.

use std::convert::Infallible;

use serde::Serialize;
use serde_json::json;
use warp::{
    Filter, Rejection, Reply,
    http::StatusCode,
    reply::{self, Response},
};

use crate::health::Readiness;

/// The routes of the service: health checks, with every rejection answered as a problem
/// document.
pub fn routes(
    readiness: Readiness,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    health(readiness)
        .recover(recover)
        .unify()
        .map(|reply: Box<dyn Reply>| reply.into_response())
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
