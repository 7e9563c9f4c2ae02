//! HTTP errors as RFC 9457 problem documents, and JSON request bodies that fail with one.
//!
//! Every error the service answers is `application/problem+json`:
//! `{"type":"about:blank","title":"Bad Request","status":400,"detail":"...","field":"name"}`.
//! A client mistake gets its 4xx status and a detail that says what to fix (for a body field,
//! which one); only the service's own failures are 5xx.

use std::{collections::BTreeMap, convert::Infallible};

use serde::{Serialize, de::DeserializeOwned};
use utoipa::{
    ToSchema,
    openapi::{ContentBuilder, Ref, RefOr, Response as ApiResponse, ResponseBuilder},
};
use warp::{
    Filter, Rejection, Reply,
    http::{StatusCode, header::CONTENT_TYPE},
    reject::Reject,
    reply::{self, Response},
};

use crate::messaging::PublishError;

/// The largest JSON body [`json_body`] accepts: 256 KiB.
pub const DEFAULT_BODY_LIMIT: u64 = 256 * 1024;

/// An RFC 9457 problem document. Return it from an endpoint (`Result<T, Problem>` is a reply)
/// or reject with it (`warp::reject::custom(problem)`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "about:blank",
    "title": "Bad Request",
    "status": 400,
    "detail": "body field `name`: invalid type: integer `1`, expected a string",
    "field": "name"
}))]
pub struct Problem {
    /// `about:blank`: the status code says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status code's reason phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What exactly went wrong with this request.
    pub detail: String,
    /// The body field the problem is about, when it is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    /// A problem with the given status and detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
        }
    }

    /// A `400 Bad Request` about one field of the request body.
    pub fn invalid_field(field: &str, detail: impl Into<String>) -> Self {
        let detail = format!("body field `{field}`: {}", detail.into());
        Self {
            field: Some(field.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, detail)
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl Reject for Problem {}

/// A publish that failed is the service's own trouble, and usually passing: `503 Service
/// Unavailable`, saying why (RabbitMQ unreachable, blocking publishers, not confirming in
/// time, refusing the message). Only a body that cannot be encoded is a `500`.
impl From<PublishError> for Problem {
    fn from(error: PublishError) -> Self {
        let status = match error {
            PublishError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, format!("cannot publish the message: {error}"))
    }
}

/// The problem responses [`json_body`] answers with (400, 411, 413, 415), for the
/// `responses(...)` of an endpoint's `#[utoipa::path]`:
/// `responses((status = 202, body = Order), JsonBodyProblems)`.
pub struct JsonBodyProblems;

impl utoipa::IntoResponses for JsonBodyProblems {
    fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
        problem_responses(&[
            (
                StatusCode::BAD_REQUEST,
                "The body is malformed JSON or a field is invalid (`field` names it)",
            ),
            (
                StatusCode::LENGTH_REQUIRED,
                "The body has no Content-Length",
            ),
            (StatusCode::PAYLOAD_TOO_LARGE, "The body is too large"),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "The body is not JSON"),
        ])
    }
}

/// The problem response a failed publish becomes (503, see `From<PublishError> for
/// Problem`), for the `responses(...)` of an endpoint that publishes.
pub struct PublishProblems;

impl utoipa::IntoResponses for PublishProblems {
    fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
        problem_responses(&[(
            StatusCode::SERVICE_UNAVAILABLE,
            "RabbitMQ did not take the message",
        )])
    }
}

/// Responses with a [`Problem`] body (`application/problem+json`), one per status.
fn problem_responses(statuses: &[(StatusCode, &str)]) -> BTreeMap<String, RefOr<ApiResponse>> {
    statuses
        .iter()
        .map(|(status, description)| {
            // `Problem` is among the framework's documented schemas (see `docs.rs`).
            let body = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build();
            let response = ResponseBuilder::new()
                .description(*description)
                .content("application/problem+json", body)
                .build();
            (status.as_str().to_owned(), RefOr::T(response))
        })
        .collect()
}

impl Reply for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = reply::with_header(reply::json(&self), CONTENT_TYPE, "application/problem+json");
        reply::with_status(body, status).into_response()
    }
}

/// Extracts a JSON body of type `T`, at most [`DEFAULT_BODY_LIMIT`] bytes. See
/// [`json_body_with_limit`].
pub fn json_body<T: DeserializeOwned + Send>()
-> impl Filter<Extract = (T,), Error = Rejection> + Clone + Send + Sync + 'static {
    json_body_with_limit(DEFAULT_BODY_LIMIT)
}

/// Extracts a JSON body of type `T` of at most `limit` bytes. It rejects with a problem:
/// 415 unless `Content-Type` is JSON, 411 without a `Content-Length`, 413 above the limit, 400
/// for malformed JSON or a field of the wrong type, naming the field.
pub fn json_body_with_limit<T: DeserializeOwned + Send>(
    limit: u64,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::header::optional::<String>("content-type")
        .and_then(|content_type: Option<String>| async move {
            let json = content_type.as_deref().is_some_and(is_json);
            if json {
                Ok(())
            } else {
                let detail = format!(
                    "the body must be JSON (Content-Type: application/json), got {}",
                    content_type.as_deref().unwrap_or("no Content-Type")
                );
                Err(warp::reject::custom(Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    detail,
                )))
            }
        })
        .untuple_one()
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::bytes())
        .and_then(|body: hyper::body::Bytes| async move {
            let mut decoder = serde_json::Deserializer::from_slice(&body);
            let value = serde_path_to_error::deserialize(&mut decoder)
                .map_err(|error| warp::reject::custom(body_problem(&error)))?;
            decoder.end().map_err(|error| {
                let detail = format!("the body is not valid: {error}");
                warp::reject::custom(Problem::new(StatusCode::BAD_REQUEST, detail))
            })?;
            Ok::<T, Rejection>(value)
        })
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

fn body_problem(error: &serde_path_to_error::Error<serde_json::Error>) -> Problem {
    let path = error.path().to_string();
    let inner = error.inner();
    if path == "." || path.is_empty() {
        // Syntax errors and a missing top-level field have no path; serde names the field in
        // its message ("missing field `name`").
        let field = missing_field(&inner.to_string());
        let mut problem = Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid: {inner}"),
        );
        problem.field = field;
        problem
    } else {
        Problem::invalid_field(&path, inner.to_string())
    }
}

/// The field of serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// Turns warp's rejections into problem documents with the matching status.
pub(crate) async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    use warp::reject::{
        InvalidHeader, InvalidQuery, LengthRequired, MethodNotAllowed, MissingHeader,
        PayloadTooLarge, UnsupportedMediaType,
    };

    let problem = if let Some(problem) = rejection.find::<Problem>() {
        problem.clone()
    } else if rejection.is_not_found() {
        Problem::new(StatusCode::NOT_FOUND, "no resource at this path")
    } else if let Some(error) = rejection.find::<warp::body::BodyDeserializeError>() {
        Problem::new(StatusCode::BAD_REQUEST, error.to_string())
    } else if let Some(error) = rejection.find::<InvalidQuery>() {
        Problem::new(StatusCode::BAD_REQUEST, error.to_string())
    } else if let Some(error) = rejection.find::<InvalidHeader>() {
        Problem::new(StatusCode::BAD_REQUEST, error.to_string())
    } else if let Some(error) = rejection.find::<MissingHeader>() {
        Problem::new(StatusCode::BAD_REQUEST, error.to_string())
    } else if rejection.find::<LengthRequired>().is_some() {
        Problem::new(
            StatusCode::LENGTH_REQUIRED,
            "send the body with a Content-Length header",
        )
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is larger than this endpoint accepts",
        )
    } else if let Some(error) = rejection.find::<UnsupportedMediaType>() {
        Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, error.to_string())
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "this method is not allowed at this path",
        )
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    };
    Ok(problem.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("Application/JSON"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/jsonx"));
    }

    #[test]
    fn a_failed_publish_is_a_503_saying_why() {
        let problem = Problem::from(PublishError::Blocked);
        assert_eq!(problem.status, 503);
        assert!(
            problem.detail.contains("blocking publishers"),
            "{}",
            problem.detail
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        assert_eq!(
            missing_field("missing field `name` at line 1 column 2"),
            Some("name".to_owned())
        );
        assert_eq!(missing_field("expected value"), None);
    }
}
