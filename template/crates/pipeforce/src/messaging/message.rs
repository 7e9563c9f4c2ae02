//! [`Message`], a message as the service received it, and [`header_text`], the one place
//! that reads an AMQP header.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};

/// A message as the service received it.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
    pub(crate) redelivered: bool,
}

impl Message {
    /// A message with `routing_key` and `body`, as if published to `exchange`.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body: body.into(),
            ..Self::default()
        }
    }

    /// The same message with these AMQP properties (headers, ids, content type, ...).
    pub fn with_properties(mut self, properties: BasicProperties) -> Self {
        self.properties = properties;
        self
    }
}

/// The header `name` of `headers` as text, if it is present and a string (AMQP has two
/// string types; publishers use either).
pub(crate) fn header_text<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a str> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
        AMQPValue::ShortString(value) => Some(value.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{LongString, ShortString};

    use super::*;

    #[test]
    fn header_text_reads_both_string_types_and_nothing_else() {
        let mut headers = FieldTable::default();
        headers.insert("long".into(), AMQPValue::LongString(LongString::from("a")));
        headers.insert(
            "short".into(),
            AMQPValue::ShortString(ShortString::from("b")),
        );
        headers.insert("number".into(), AMQPValue::LongLongInt(1));
        headers.insert(
            "not-utf8".into(),
            AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
        );

        assert_eq!(header_text(&headers, "long"), Some("a"));
        assert_eq!(header_text(&headers, "short"), Some("b"));
        assert_eq!(header_text(&headers, "number"), None, "not a string");
        assert_eq!(header_text(&headers, "not-utf8"), None, "not UTF-8");
        assert_eq!(header_text(&headers, "missing"), None);
    }
}
