//! Decoding a message body into a handler's body parameter.
//!
//! The parameter's type decides how:
//! - `String`: the body as UTF-8 text, whatever its content type (webhooks send plain text);
//! - `Vec<u8>`: the raw bytes;
//! - any other type: JSON, through `serde::Deserialize`.
//!
//! `#[service]` picks the decoder with "autoref specialization": the concrete type is known
//! where the generated code is compiled, so type aliases work too.

use std::{fmt, marker::PhantomData};

use serde::de::DeserializeOwned;

/// The body does not fit the handler's parameter type: the message goes to the dead-letter
/// queue at once, retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    reason: String,
}

impl DecodeError {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// Why the body could not be decoded.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a body into `T`. Call as `(&&Decode::<T>::new()).decode(body)`: method lookup
/// tries `&Decode<T>` (the raw impls) before `Decode<T>` (the JSON impl), so `String` and
/// `Vec<u8>` get their raw decoders although they are `Deserialize` too.
pub struct Decode<T>(PhantomData<T>);

impl<T> Decode<T> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

pub trait DecodeRaw<T> {
    fn decode(&self, body: &[u8]) -> Result<T, DecodeError>;
}

impl DecodeRaw<String> for &Decode<String> {
    fn decode(&self, body: &[u8]) -> Result<String, DecodeError> {
        String::from_utf8(body.to_vec())
            .map_err(|error| DecodeError::new(format!("the body is not UTF-8 text: {error}")))
    }
}

impl DecodeRaw<Vec<u8>> for &Decode<Vec<u8>> {
    fn decode(&self, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
        Ok(body.to_vec())
    }
}

pub trait DecodeJson<T> {
    fn decode(&self, body: &[u8]) -> Result<T, DecodeError>;
}

impl<T: DeserializeOwned> DecodeJson<T> for Decode<T> {
    fn decode(&self, body: &[u8]) -> Result<T, DecodeError> {
        serde_json::from_slice(body).map_err(|error| {
            DecodeError::new(format!(
                "the body is not the JSON the handler takes ({}): {error}",
                std::any::type_name::<T>()
            ))
        })
    }
}
