//! A successful answer of the hub.

use std::{borrow::Cow, fmt};

use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use super::HubError;

/// A successful (2xx) answer of the hub.
#[derive(Clone)]
pub struct HubResponse {
    pub(super) call: String,
    pub(super) status: StatusCode,
    pub(super) content_type: Option<String>,
    pub(super) body: Vec<u8>,
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

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
