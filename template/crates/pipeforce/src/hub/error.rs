//! Why a hub call failed.

use std::time::Duration;

use reqwest::StatusCode;

use super::MAX_RESPONSE_BODY;

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
