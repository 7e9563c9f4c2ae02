//! Pipelines in PIPEFORCE's JSON form.

use serde::{Serialize, Serializer, ser::Error as _};
use serde_json::Value;

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
}
