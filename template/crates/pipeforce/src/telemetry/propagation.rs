//! W3C trace context (`traceparent`/`tracestate`) across process boundaries.
//!
//! Incoming message and HTTP headers are read so that the span of a consumed message or a
//! served request continues its caller's trace; outgoing messages and HTTP calls get the
//! current span's context written into their headers. HTTP headers go through
//! `opentelemetry-http`'s carriers (warp, hyper and reqwest share `http` 1.x header maps);
//! AMQP headers through [`amqp`], which reads them with the one AMQP header reader,
//! [`crate::messaging::header_text`].

use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
};
use opentelemetry_http::HeaderInjector;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Records the span's trace id in its `trace_id` field, so log lines inside it carry it.
pub(crate) fn record_trace_id(span: &Span) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
    }
}

/// Makes `span` a child of the trace context found in `carrier`, if there is one.
pub(crate) fn continue_trace(span: &Span, carrier: &dyn Extractor) {
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier));
    if parent.span().span_context().is_valid() {
        // Fails only when tracing is not installed (tests): the span stays a root then.
        let _ = span.set_parent(parent);
    }
}

/// Writes the current span's trace context into `carrier`.
pub(crate) fn inject_current(carrier: &mut dyn Injector) {
    let context = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, carrier);
    });
}

/// Writes the current span's trace context into outgoing HTTP request headers, so the called
/// service continues the trace.
pub fn inject_into_http_headers(headers: &mut warp::http::HeaderMap) {
    inject_current(&mut HeaderInjector(headers));
}

/// Trace context in AMQP message headers (W3C names, string values).
pub(crate) mod amqp {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use opentelemetry::propagation::{Extractor, Injector};

    use crate::messaging::header_text;

    /// Reads trace context from a message's headers, if it has any.
    pub(crate) struct Headers<'a>(pub(crate) Option<&'a FieldTable>);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            header_text(self.0?, key)
        }

        fn keys(&self) -> Vec<&str> {
            self.0
                .map(|headers| headers.inner().keys().map(|key| key.as_str()).collect())
                .unwrap_or_default()
        }
    }

    /// Writes trace context into an outgoing message's headers.
    pub(crate) struct HeadersMut<'a>(pub(crate) &'a mut FieldTable);

    impl Injector for HeadersMut<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0
                .insert(key.into(), AMQPValue::LongString(LongString::from(value)));
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldTable, ShortString};
    use opentelemetry::{
        Context,
        propagation::TextMapPropagator,
        trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState},
    };
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    fn remote_span() -> SpanContext {
        SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )
    }

    #[test]
    fn trace_context_written_into_amqp_headers_is_read_back() {
        let propagator = TraceContextPropagator::new();
        let sent = Context::new().with_remote_span_context(remote_span());
        let mut headers = FieldTable::default();

        propagator.inject_context(&sent, &mut amqp::HeadersMut(&mut headers));
        let received = propagator.extract(&amqp::Headers(Some(&headers)));

        assert_eq!(received.span().span_context(), &remote_span());
    }

    #[test]
    fn trace_context_is_read_from_a_short_string_header_and_absent_without_headers() {
        let propagator = TraceContextPropagator::new();
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::ShortString(ShortString::from(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )),
        );

        let received = propagator.extract(&amqp::Headers(Some(&headers)));
        let none = propagator.extract(&amqp::Headers(None));

        assert_eq!(received.span().span_context(), &remote_span());
        assert!(!none.span().span_context().is_valid());
    }
}
